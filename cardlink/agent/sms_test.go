package agent_test

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/keyport/keyport/cardlink/agent"
)

const handsetLine = `{"data":"00a815","data_coding":246,"message_id":"1-1","protocol_id":127,"to":"4915200000017","udh":[{"data":"010201","iei":0},{"data":"","iei":112}]}`

func TestParseHandsetLineRebuildsTheUserDataHeader(t *testing.T) {
	to, m, err := agent.ParseHandsetLine([]byte(handsetLine))
	if err != nil {
		t.Fatal(err)
	}
	want := []byte{0x07, 0x00, 0x03, 0x01, 0x02, 0x01, 0x70, 0x00, 0x00, 0xA8, 0x15}
	if to != "4915200000017" || m.PID != 0x7F || m.DCS != 0xF6 || !bytes.Equal(m.UserData, want) {
		t.Fatalf("%s %+v, want user data %X", to, m, want)
	}
	for _, bad := range []string{`{`, `{"to":"1","udh":[],"data":""}`, `{"to":"1","udh":[{"iei":300,"data":""}],"data":""}`,
		`{"to":"1","udh":[{"iei":112,"data":"zz"}],"data":""}`, `{"to":"1","udh":[{"iei":112,"data":""}],"data":"0"}`,
		`{"to":"1","protocol_id":256,"udh":[{"iei":112,"data":""}],"data":""}`} {
		if _, _, err := agent.ParseHandsetLine([]byte(bad)); err == nil {
			t.Errorf("%s accepted", bad)
		}
	}
}

// The handset file is followed from its end as it grows; lines for other
// handsets are passed over.
func TestHandsetFileYieldsTheHandsetsNewMessages(t *testing.T) {
	path := filepath.Join(t.TempDir(), "handset.jsonl")
	old := bytes.Replace([]byte(handsetLine), []byte(`"1-1"`), []byte(`"0-0"`), 1)
	if err := os.WriteFile(path, append(old, '\n'), 0o600); err != nil {
		t.Fatal(err)
	}
	src := &agent.HandsetFile{Path: path, MSISDN: "4915200000017", Poll: 5 * time.Millisecond}
	// A first Next opens the file at its end and finds nothing new.
	short, cancel := context.WithTimeout(context.Background(), 30*time.Millisecond)
	if _, err := src.Next(short); err == nil {
		t.Fatal("the message from before the agent started was delivered")
	}
	cancel()
	f, err := os.OpenFile(path, os.O_APPEND|os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	other := bytes.Replace([]byte(handsetLine), []byte("4915200000017"), []byte("4915200000099"), 1)
	mine := bytes.Replace([]byte(handsetLine), []byte(`"00a815"`), []byte(`"01"`), 1)
	f.Write(append(append(other, '\n'), append(mine, '\n')...))
	f.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	m, err := src.Next(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if m.UserData[len(m.UserData)-1] != 0x01 || len(m.UserData) != 9 {
		t.Fatalf("got %X, want the new message for this handset", m.UserData)
	}
}

func FuzzParseHandsetLine(f *testing.F) {
	f.Add([]byte(handsetLine))
	f.Add([]byte(`{"to":"1","udh":[{"iei":112,"data":""}],"data":""}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		_, m, err := agent.ParseHandsetLine(b)
		if err != nil {
			return
		}
		if len(m.UserData) < 3 || int(m.UserData[0])+1 > len(m.UserData) {
			t.Fatalf("%s: user data %X has no whole header", b, m.UserData)
		}
	})
}
