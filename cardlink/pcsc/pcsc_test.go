package pcsc_test

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"io"
	"net"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/keyport/keyport/cardlink/pcsc"
	"github.com/keyport/keyport/cardlink/pcsctest"
	"github.com/keyport/keyport/cardlink/vcard"
)

func TestMain(m *testing.M) {
	pcsctest.MaybeRunCard()
	os.Exit(m.Run())
}

var ctx = context.Background()

var selectISD = []byte{0x00, 0xA4, 0x04, 0x00, 0x08, 0xA0, 0x00, 0x00, 0x01, 0x51, 0x00, 0x00, 0x00, 0x00}

// scriptedCard is a card on the vpcd wire protocol (2-byte length, then a
// 1-byte control code or an APDU) that answers APDUs with answer. It lets a
// test play card behaviours the virtual module does not have (61xx, 6Cxx).
// lock()() holds the card between APDUs, for reading what answer recorded.
func scriptedCard(t *testing.T, env *pcsctest.Env, answer func(apdu []byte) []byte) (lock func() func()) {
	t.Helper()
	var mu sync.Mutex
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		for ctx.Err() == nil {
			conn, err := (&net.Dialer{}).DialContext(ctx, "tcp", env.VPCDAddr)
			if err != nil {
				time.Sleep(20 * time.Millisecond)
				continue
			}
			go func() { <-ctx.Done(); conn.Close() }()
			for {
				var n [2]byte
				if _, err := io.ReadFull(conn, n[:]); err != nil {
					break
				}
				msg := make([]byte, binary.BigEndian.Uint16(n[:]))
				if _, err := io.ReadFull(conn, msg); err != nil {
					break
				}
				var out []byte
				switch {
				case len(msg) == 1 && msg[0] == 4: // get ATR
					out = []byte{0x3B, 0x80, 0x80, 0x01, 0x01}
				case len(msg) == 1: // power on/off, reset: no answer
					continue
				default:
					mu.Lock()
					out = answer(msg)
					mu.Unlock()
				}
				hdr := binary.BigEndian.AppendUint16(nil, uint16(len(out)))
				if _, err := conn.Write(append(hdr, out...)); err != nil {
					break
				}
			}
			conn.Close()
		}
	}()
	t.Cleanup(func() { cancel(); <-done })
	env.WaitCard(t, true)
	return func() func() { mu.Lock(); return mu.Unlock }
}

func TestReadersListsTheVirtualReader(t *testing.T) {
	env := pcsctest.Start(t, pcsctest.Options{})
	names, err := pcsc.Readers()
	if err != nil {
		t.Fatal(err)
	}
	for _, n := range names {
		if n == env.Reader {
			return
		}
	}
	t.Fatalf("Readers() = %q, want %q among them", names, env.Reader)
}

func TestOpenNamesTheMissingReaderOrCard(t *testing.T) {
	env := pcsctest.Start(t, pcsctest.Options{Timeout: 5 * time.Second})
	if _, err := pcsc.Open(ctx, "No Such Reader"); !errors.Is(err, pcsc.ErrNoReader) {
		t.Errorf("unknown reader: %v, want ErrNoReader", err)
	}
	if _, err := pcsc.Open(ctx, env.Reader); !errors.Is(err, pcsc.ErrNoCard) {
		t.Errorf("empty reader: %v, want ErrNoCard", err)
	}
}

func TestOpenRefusesANameThatStartsSeveralReaders(t *testing.T) {
	env := pcsctest.Start(t, pcsctest.Options{})
	card, _ := vcard.New(vcard.DefaultEID, vcard.Config{})
	env.StartCard(t, card)
	// vpcd offers two slots, "… 00 00" and "… 00 01".
	if _, err := pcsc.Open(ctx, pcsctest.FriendlyName); !errors.Is(err, pcsc.ErrNoReader) {
		t.Fatalf("ambiguous %q: %v, want ErrNoReader", pcsctest.FriendlyName, err)
	}
	r, err := pcsc.Open(ctx, env.Reader)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	if r.Name() != env.Reader {
		t.Fatalf("opened %q, want %q", r.Name(), env.Reader)
	}
	rsp, err := r.Transmit(ctx, selectISD)
	if err != nil || !bytes.HasSuffix(rsp, []byte{0x90, 0x00}) {
		t.Fatalf("SELECT ISD: %X %v", rsp, err)
	}
}

func TestTransmitCollectsA61xxAnswerWithGetResponse(t *testing.T) {
	env := pcsctest.Start(t, pcsctest.Options{})
	body := bytes.Repeat([]byte{0xAB}, 300)
	var gets int
	lock := scriptedCard(t, env, func(apdu []byte) []byte {
		switch apdu[1] {
		case 0xCA: // first part, then 61xx
			return append(append([]byte{}, body[:100]...), 0x61, 0xC8)
		case 0xC0:
			gets++
			if gets == 1 {
				return append(append([]byte{}, body[100:200]...), 0x61, 0x64)
			}
			return append(append([]byte{}, body[200:]...), 0x90, 0x00)
		}
		return []byte{0x6D, 0x00}
	})
	r, err := pcsc.Open(ctx, env.Reader)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	rsp, err := r.Transmit(ctx, []byte{0x80, 0xCA, 0x9F, 0x7F, 0x00})
	if err != nil {
		t.Fatal(err)
	}
	defer lock()()
	if !bytes.Equal(rsp, append(append([]byte{}, body...), 0x90, 0x00)) || gets != 2 {
		t.Fatalf("got %d bytes after %d GET RESPONSE: %X", len(rsp), gets, rsp)
	}
}

func TestTransmitSendsTheCommandAgainWithTheLeA6CxxAsksFor(t *testing.T) {
	env := pcsctest.Start(t, pcsctest.Options{})
	var seen [][]byte
	lock := scriptedCard(t, env, func(apdu []byte) []byte {
		seen = append(seen, append([]byte(nil), apdu...))
		if apdu[len(apdu)-1] != 0x03 {
			return []byte{0x6C, 0x03}
		}
		return []byte{1, 2, 3, 0x90, 0x00}
	})
	r, err := pcsc.Open(ctx, env.Reader)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	rsp, err := r.Transmit(ctx, []byte{0x80, 0xCA, 0x00, 0x42, 0x00})
	if err != nil {
		t.Fatal(err)
	}
	defer lock()()
	if !bytes.Equal(rsp, []byte{1, 2, 3, 0x90, 0x00}) || len(seen) != 2 || !bytes.Equal(seen[1], []byte{0x80, 0xCA, 0x00, 0x42, 0x03}) {
		t.Fatalf("answer %X after commands %X", rsp, seen)
	}
}

func TestTransmitReconnectsOnceAfterTheModuleWasPulledAndPutBack(t *testing.T) {
	env := pcsctest.Start(t, pcsctest.Options{})
	state := filepath.Join(t.TempDir(), "module.json")
	proc := env.StartCardProcess(t, state, vcard.DefaultEID, 0)
	r, err := pcsc.Open(ctx, env.Reader)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	if rsp, err := r.Transmit(ctx, selectISD); err != nil || !bytes.HasSuffix(rsp, []byte{0x90, 0x00}) {
		t.Fatalf("SELECT ISD: %X %v", rsp, err)
	}
	proc.Kill()
	env.WaitCard(t, false)
	if _, err := r.Transmit(ctx, selectISD); !errors.Is(err, pcsc.ErrNoCard) {
		t.Fatalf("module pulled: %v, want ErrNoCard", err)
	}
	env.StartCardProcess(t, state, vcard.DefaultEID, 0)
	if rsp, err := r.Transmit(ctx, selectISD); err != nil || !bytes.HasSuffix(rsp, []byte{0x90, 0x00}) {
		t.Fatalf("SELECT ISD after the module came back: %X %v", rsp, err)
	}
}
