package ace_test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/base64"
	"encoding/binary"
	"encoding/json"
	"encoding/pem"
	"errors"
	"io"
	"net"
	"os"
	"testing"

	"github.com/keyport/keyport/cardlink/agent/ace"
	"github.com/keyport/keyport/cardlink/vcard"
	"github.com/keyport/keyport/gp"
)

// fuzzCertDER is the fixed app certificate of the fuzz corpus
// (testdata/app.pem), so that saved inputs keep their meaning.
func fuzzCertDER(t testing.TB) []byte {
	b, err := os.ReadFile("testdata/app.pem")
	if err != nil {
		t.Fatal(err)
	}
	blk, _ := pem.Decode(b)
	if blk == nil {
		t.Fatal("testdata/app.pem holds no PEM block")
	}
	return blk.Bytes
}

func frame(payload string) []byte {
	return append(binary.BigEndian.AppendUint32(nil, uint32(len(payload))), payload...)
}

// FuzzParseAppRequest reads frames from an arbitrary byte stream and parses
// each as a request: it must never panic, and what it accepts must be
// well-formed (an open has a 5..16-byte AID and a certificate that parses).
func FuzzParseAppRequest(f *testing.F) {
	der := fuzzCertDER(f)
	cert := base64.StdEncoding.EncodeToString(der)
	pemText, _ := os.ReadFile("testdata/app.pem")
	for _, s := range [][]byte{
		frame(`{"op":"open","cert":"` + cert + `","aid":"F0010203040501"}`),
		frame(`{"op":"open","cert":` + string(mustJSON(string(pemText))) + `,"aid":"F0010203040501","package":"com.example"}`),
		append(frame(`{"op":"transmit","apdu":"80CA9F7F00"}`), frame(`{"op":"close"}`)...),
		frame(`{"op":"close","apdu":"00"}`),
		frame(`not json`),
		{0, 0, 0, 0},
		{0xFF, 0xFF, 0xFF, 0xFF, '{'},
		append(frame(`{"op":"close"}`), 0, 0, 0, 9, '{'),
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, in []byte) {
		r := bytes.NewReader(in)
		for {
			b, err := ace.ReadFrame(r)
			if err != nil {
				if len(b) != 0 {
					t.Fatalf("ReadFrame returned %d bytes with %v", len(b), err)
				}
				return
			}
			if len(b) == 0 || len(b) > ace.MaxFrame {
				t.Fatalf("frame of %d bytes accepted", len(b))
			}
			req, err := ace.ParseRequest(b)
			if err != nil {
				if err.Error() == "" {
					t.Fatal("empty error message")
				}
				continue
			}
			switch req.Op {
			case ace.OpOpen:
				if len(req.AID) < 5 || len(req.AID) > 16 || len(req.CertDER) == 0 {
					t.Fatalf("open accepted with AID %X, %d-byte cert", req.AID, len(req.CertDER))
				}
			case ace.OpTransmit:
				if req.APDU == nil {
					t.Fatal("transmit accepted without an APDU")
				}
			case ace.OpClose:
			default:
				t.Fatalf("op %q accepted", req.Op)
			}
		}
	})
}

func mustJSON(s string) []byte {
	b, _ := json.Marshal(s)
	return b
}

// FuzzEnforcerSession runs an app session against an enforcer whose
// secure element is a virtual module (in memory) with an SSD and a rule
// for the corpus certificate, granting GET DATA only. The input is a
// sequence of request payloads, each preceded by a 2-byte length, sent as
// frames; each must get one well-formed reply, and when the app hangs up
// the enforcer must have closed every logical channel it opened.
func FuzzEnforcerSession(f *testing.F) {
	der := fuzzCertDER(f)
	cert := base64.StdEncoding.EncodeToString(der)
	seq := func(reqs ...string) []byte {
		var out []byte
		for _, r := range reqs {
			out = binary.BigEndian.AppendUint16(out, uint16(len(r)))
			out = append(out, r...)
		}
		return out
	}
	open := `{"op":"open","cert":"` + cert + `","aid":"F0010203040501"}`
	for _, s := range [][]byte{
		seq(open, `{"op":"transmit","apdu":"80CA9F7F00"}`, `{"op":"close"}`),
		seq(open, `{"op":"transmit","apdu":"0070000001"}`, `{"op":"transmit","apdu":"00A4040008A000000151000000"}`, `{"op":"transmit","apdu":"80F2400002"}`),
		seq(open, open, `{"op":"transmit","apdu":"81CA006600"}`, `{"op":"transmit","apdu":"C1CA9F7F00"}`),
		seq(`{"op":"open","cert":"`+cert+`","aid":"A00000015141434C00"}`, `{"op":"transmit","apdu":"80CAFF4000"}`),
		seq(`{"op":"transmit","apdu":"80CA"}`, `{"op":"close"}`, `{"op":"x"}`),
		seq(open, `{"op":"transmit","apdu":"80CA9F7F"}`, `{"op":"close"}`, open),
	} {
		f.Add(s)
	}
	h256 := sha256.Sum256(der)
	// One module for all inputs: the rule lets the app send GET DATA only,
	// and the enforcer's own commands change no persistent state, so a
	// reset (closing every channel) brings it back to where it started.
	var card *vcard.Card
	f.Fuzz(func(t *testing.T, in []byte) {
		if card == nil {
			card = fuzzCard(t, gp.AccessRule{AID: h("F0010203040501"), DeviceAppID: h256[:], APDU: h("80CA0000" + "FFFF0000")})
		}
		card.Reset()
		tx := gp.ChannelFunc(func(_ context.Context, b []byte) ([]byte, error) { return card.Process(b), nil })
		enf := ace.NewEnforcer(tx, nil)
		cli, srv := net.Pipe()
		done := make(chan struct{})
		go func() { defer close(done); enf.ServeConn(context.Background(), srv) }()
		for len(in) >= 2 {
			n := min(int(binary.BigEndian.Uint16(in)), len(in)-2)
			payload := in[2 : 2+n]
			in = in[2+n:]
			if n == 0 || n > ace.MaxFrame {
				continue
			}
			if _, err := cli.Write(append(binary.BigEndian.AppendUint32(nil, uint32(n)), payload...)); err != nil {
				t.Fatal(err)
			}
			b, err := ace.ReadFrame(cli)
			if err != nil {
				t.Fatalf("no reply to %q: %v", payload, err)
			}
			var rep ace.Reply
			if err := jsonUnmarshal(b, &rep); err != nil {
				t.Fatalf("reply %q: %v", b, err)
			}
			if !rep.OK && (rep.Code == "" || rep.Error == "") {
				t.Fatalf("refusal without code or message: %q", b)
			}
		}
		cli.Close()
		<-done
		if n, err := gp.ParseManageChannelOpen(mustResponse(t, card.Process(gp.ManageChannelOpen().Bytes()))); err != nil || n != 1 {
			t.Fatalf("after the session the card opens channel %d (%v): the enforcer left channels open", n, err)
		}
	})
}

// fuzzCard is a virtual module with the SSD F0010203040501 and rules,
// managed through its Process as the issuer would (SCP03, default keys).
func fuzzCard(t *testing.T, rules ...gp.AccessRule) *vcard.Card {
	card, err := vcard.New(vcard.DefaultEID, vcard.Config{})
	if err != nil {
		t.Fatal(err)
	}
	tx := gp.ChannelFunc(func(_ context.Context, b []byte) ([]byte, error) { return card.Process(b), nil })
	ctx := context.Background()
	session := func(aid []byte) *gp.Host {
		host := gp.NewHost(tx)
		if _, found, err := host.Select(ctx, aid); err != nil || !found {
			t.Fatalf("SELECT %X: %v %v", aid, found, err)
		}
		hs, _ := gp.NewHostSession(gp.KeySet{KVN: vcard.DefaultKVN, ENC: gp.AESKey(vcard.DefaultKey), MAC: gp.AESKey(vcard.DefaultKey)}, nil)
		if _, err := host.InitializeUpdate(ctx, hs); err != nil {
			t.Fatal(err)
		}
		if err := host.ExternalAuthenticate(ctx, 0x03); err != nil {
			t.Fatal(err)
		}
		return host
	}
	isd := session(vcard.ISDAID)
	params := gp.InstallParams{AppSpecific: gp.SCPParam(0x03, 0x70)}.Bytes()
	if _, err := isd.SendOK(ctx, gp.InstallForInstallCmd(h("A0000001515350"), h("A000000151535041"), h("F0010203040501"),
		gp.PrivSecurityDomain|gp.PrivAuthorizedManagement, params, true)); err != nil {
		t.Fatal(err)
	}
	aram := session(vcard.ARAMAID)
	for _, r := range rules {
		if _, err := aram.SendOK(ctx, gp.StoreAccessRule(r)); err != nil {
			t.Fatal(err)
		}
	}
	return card
}

func mustResponse(t *testing.T, b []byte) gp.Response {
	r, err := gp.ParseResponse(b)
	if err != nil {
		t.Fatal(err)
	}
	return r
}

func jsonUnmarshal(b []byte, v *ace.Reply) error {
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return err
	}
	if _, err := dec.Token(); !errors.Is(err, io.EOF) {
		return errors.New("data after the reply")
	}
	return nil
}

// TestFuzzSessionSetupGrantsTheCorpusCertificate checks that the fuzz
// targets' module and certificate do reach the relay: the corpus app opens,
// GET DATA passes its filter, GET STATUS does not.
func TestFuzzSessionSetupGrantsTheCorpusCertificate(t *testing.T) {
	der := fuzzCertDER(t)
	h256 := sha256.Sum256(der)
	card := fuzzCard(t, gp.AccessRule{AID: h("F0010203040501"), DeviceAppID: h256[:], APDU: h("80CA0000" + "FFFF0000")})
	enf := ace.NewEnforcer(gp.ChannelFunc(func(_ context.Context, b []byte) ([]byte, error) { return card.Process(b), nil }), nil)
	cli, srv := net.Pipe()
	go enf.ServeConn(context.Background(), srv)
	defer cli.Close()
	c := ace.NewAppClient(cli)
	if rep, err := c.Open(der, h("F0010203040501"), ""); err != nil || rep.Channel != 1 {
		t.Fatalf("open: %+v %v", rep, err)
	}
	if r, err := c.Transmit(h("80CA9F7F00")); err != nil || !bytes.HasSuffix(r, h("9000")) {
		t.Fatalf("GET DATA: %X %v", r, err)
	}
	if _, err := c.Transmit(h("80F2400002")); err == nil {
		t.Fatal("GET STATUS passed a GET DATA filter")
	}
}
