package vcard_test

import (
	"bytes"
	"context"
	"encoding/binary"
	"io"
	"net"
	"testing"
	"time"

	"github.com/keyport/keyport/cardlink/vcard"
)

// fakeVPCD plays the reader side of the vpcd protocol on a listener.
type fakeVPCD struct {
	t    *testing.T
	conn net.Conn
}

func (f *fakeVPCD) send(payload []byte) {
	f.t.Helper()
	msg := binary.BigEndian.AppendUint16(nil, uint16(len(payload)))
	if _, err := f.conn.Write(append(msg, payload...)); err != nil {
		f.t.Fatal(err)
	}
}

func (f *fakeVPCD) recv() []byte {
	f.t.Helper()
	f.conn.SetReadDeadline(time.Now().Add(5 * time.Second))
	var hdr [2]byte
	if _, err := io.ReadFull(f.conn, hdr[:]); err != nil {
		f.t.Fatal(err)
	}
	b := make([]byte, binary.BigEndian.Uint16(hdr[:]))
	if _, err := io.ReadFull(f.conn, b); err != nil {
		f.t.Fatal(err)
	}
	return b
}

func accept(t *testing.T, l net.Listener) *fakeVPCD {
	t.Helper()
	l.(*net.TCPListener).SetDeadline(time.Now().Add(10 * time.Second))
	c, err := l.Accept()
	if err != nil {
		t.Fatal(err)
	}
	return &fakeVPCD{t: t, conn: c}
}

func TestServeSpeaksVPCDAndReconnectsAfterADrop(t *testing.T) {
	// Reserve a port, then close it: Serve must keep retrying until the
	// "driver" comes up.
	l0, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l0.Addr().String()
	l0.Close()

	card := newCard(t, vcard.Config{})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- vcard.Serve(ctx, card, addr) }()
	time.Sleep(150 * time.Millisecond)

	l, err := net.Listen("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	v := accept(t, l)
	v.send([]byte{4}) // get ATR
	if atr := v.recv(); !bytes.Equal(atr, card.ATR()) {
		t.Fatalf("ATR %X, want %X", atr, card.ATR())
	}
	v.send([]byte{1}) // power on: no answer expected
	v.send(h("00A4040008A000000151000000"))
	if r := v.recv(); !bytes.HasSuffix(r, []byte{0x90, 0x00}) {
		t.Fatalf("SELECT: %X", r)
	}
	v.conn.Close() // vpcd drops the card

	v = accept(t, l)
	v.send(h("00A4040007A0000001519999"))
	if r := v.recv(); !bytes.Equal(r, []byte{0x6A, 0x82}) {
		t.Fatalf("SELECT unknown after reconnect: %X", r)
	}
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("Serve returned %v after cancel, want nil", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Serve did not stop on cancel")
	}
}

func TestMainRequiresAStateFile(t *testing.T) {
	if err := vcard.Main(context.Background(), nil); err == nil {
		t.Fatal("Main without --state succeeded")
	}
	if err := vcard.Main(context.Background(), []string{"--state", "x", "extra"}); err == nil {
		t.Fatal("Main with a stray argument succeeded")
	}
}
