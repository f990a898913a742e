package tlspsk_test

import (
	"runtime"
	"sync"
	"testing"
	"time"

	"github.com/keyport/keyport/cardlink/tlspsk"
)

// waitLive polls the live-session counter, letting runtime cleanups run.
func waitLive(want int64) int64 {
	deadline := time.Now().Add(5 * time.Second)
	for {
		got := tlspsk.LiveSessions()
		if got <= want || time.Now().After(deadline) {
			return got
		}
		runtime.GC()
		time.Sleep(10 * time.Millisecond)
	}
}

func TestOpeningAndClosing2000ConnectionsFreesEveryOpenSSLObject(t *testing.T) {
	base := waitLive(0)
	const total, parallel = 2000, 20
	var wg sync.WaitGroup
	sem := make(chan struct{}, parallel)
	for i := 0; i < total; i++ {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			srv, cli, serr, cerr := handshakePair(t, serverConfig(), clientConfig())
			if serr != nil || cerr != nil {
				t.Errorf("handshake: %v / %v", serr, cerr)
			}
			cli.Write([]byte("x"))
			srv.Read(make([]byte, 1))
			cli.Close()
			srv.Close()
		}()
	}
	wg.Wait()
	// Close frees synchronously: no GC needed to get back to the base.
	if got := tlspsk.LiveSessions(); got != base {
		t.Fatalf("%d OpenSSL sessions alive after closing %d connections, want %d", got, total, base)
	}
}

func TestFailedHandshakesFreeTheirOpenSSLObjectsOnClose(t *testing.T) {
	base := tlspsk.LiveSessions()
	ccfg := clientConfig()
	ccfg.Identity = "unknown"
	for i := 0; i < 50; i++ {
		srv, cli, _, _ := handshakePair(t, serverConfig(), ccfg)
		srv.Close()
		cli.Close()
	}
	if got := tlspsk.LiveSessions(); got != base {
		t.Fatalf("%d sessions alive, want %d", got, base)
	}
}

func TestConnDroppedWithoutCloseIsFreedByTheRuntimeCleanup(t *testing.T) {
	base := waitLive(0)
	func() {
		for i := 0; i < 20; i++ {
			srv, cli, serr, cerr := handshakePair(t, serverConfig(), clientConfig())
			if serr != nil || cerr != nil {
				t.Fatalf("handshake: %v / %v", serr, cerr)
			}
			// Close only the sockets: the Conns are dropped as they are.
			srv.NetConn().Close()
			cli.NetConn().Close()
		}
	}()
	if got := waitLive(base); got != base {
		t.Fatalf("%d sessions alive after GC, want %d", got, base)
	}
}

func Test200ConcurrentSessionsExchangeData(t *testing.T) {
	const n = 200
	base := tlspsk.LiveSessions()
	var wg sync.WaitGroup
	for i := 0; i < n; i++ {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			srv, cli, serr, cerr := handshakePair(t, serverConfig(), clientConfig())
			defer srv.Close()
			defer cli.Close()
			if serr != nil || cerr != nil {
				t.Errorf("session %d handshake: %v / %v", i, serr, cerr)
				return
			}
			// Reads and Writes from separate goroutines on one Conn.
			done := make(chan struct{})
			go func() {
				defer close(done)
				buf := make([]byte, 64)
				for j := 0; j < 10; j++ {
					n, err := srv.Read(buf)
					if err != nil {
						t.Errorf("session %d server read: %v", i, err)
						return
					}
					if _, err := srv.Write(buf[:n]); err != nil {
						t.Errorf("session %d server write: %v", i, err)
						return
					}
				}
			}()
			buf := make([]byte, 64)
			for j := 0; j < 10; j++ {
				msg := []byte{byte(i), byte(j)}
				if _, err := cli.Write(msg); err != nil {
					t.Errorf("session %d client write: %v", i, err)
					return
				}
				n, err := cli.Read(buf)
				if err != nil || n != 2 || buf[0] != byte(i) || buf[1] != byte(j) {
					t.Errorf("session %d echo %x, %v", i, buf[:n], err)
					return
				}
			}
			<-done
		}(i)
	}
	wg.Wait()
	if got := tlspsk.LiveSessions(); got != base {
		t.Fatalf("%d sessions alive, want %d", got, base)
	}
}
