package tlspsk_test

import (
	"context"
	"io"
	"net"
	"sync"
	"testing"

	"github.com/keyport/keyport/cardlink/tlspsk"
)

// recordCounter is a net.Conn that parses the TLS record headers (RFC 5246
// §6.2.1: type, version, 2-byte length) of everything written through it.
type recordCounter struct {
	net.Conn
	mu      sync.Mutex
	pending []byte
	appData []int // lengths of application_data (23) records
}

func (r *recordCounter) Write(p []byte) (int, error) {
	r.mu.Lock()
	r.pending = append(r.pending, p...)
	for len(r.pending) >= 5 {
		n := int(r.pending[3])<<8 | int(r.pending[4])
		if len(r.pending) < 5+n {
			break
		}
		if r.pending[0] == 23 {
			r.appData = append(r.appData, n)
		}
		r.pending = r.pending[5+n:]
	}
	r.mu.Unlock()
	return r.Conn.Write(p)
}

func (r *recordCounter) takeAppData() []int {
	r.mu.Lock()
	defer r.mu.Unlock()
	got := r.appData
	r.appData = nil
	return got
}

func TestEachWriteUpTo16KiBIsExactlyOneTLSRecord(t *testing.T) {
	for _, ver := range versions {
		t.Run(ver.name, func(t *testing.T) {
			sc, cc := tcpPair(t)
			counter := &recordCounter{Conn: sc}
			srv := tlspsk.Server(counter, legacyServerConfig())
			ccfg := legacyClientConfig()
			ccfg.MinVersion, ccfg.MaxVersion = ver.v, ver.v
			cli := tlspsk.Client(cc, ccfg)
			defer srv.Close()
			defer cli.Close()
			errc := make(chan error, 1)
			go func() { errc <- srv.Handshake(context.Background()) }()
			if err := cli.Handshake(context.Background()); err != nil {
				t.Fatal(err)
			}
			if err := <-errc; err != nil {
				t.Fatal(err)
			}
			counter.takeAppData()

			for _, tc := range []struct{ size, records int }{
				{1, 1}, {100, 1}, {1400, 1}, {16384, 1}, {16385, 2}, {40000, 3},
			} {
				msg := make([]byte, tc.size)
				go srv.Write(msg)
				if _, err := io.ReadFull(cli, msg); err != nil {
					t.Fatal(err)
				}
				if got := counter.takeAppData(); len(got) != tc.records {
					// TLS 1.0 with empty fragments on would show a 0-byte
					// record before each one.
					t.Errorf("Write(%d bytes) sent %d application records %v, want %d", tc.size, len(got), got, tc.records)
				}
			}
		})
	}
}
