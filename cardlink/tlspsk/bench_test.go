package tlspsk_test

import (
	"context"
	"io"
	"strconv"
	"testing"

	"github.com/keyport/keyport/cardlink/tlspsk"
)

// echoServer serves TLS-PSK echo sessions on loopback until the benchmark
// ends and returns the address.
func echoServer(b *testing.B) string {
	b.Helper()
	ln, err := tlspsk.Listen("tcp", "127.0.0.1:0", serverConfig())
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				buf := make([]byte, 4096)
				for {
					n, err := c.Read(buf)
					if err != nil {
						return
					}
					if _, err := c.Write(buf[:n]); err != nil {
						return
					}
				}
			}()
		}
	}()
	return ln.Addr().String()
}

// session runs one full admin session: TCP connect, TLS-PSK handshake,
// one small request and its answer, close_notify.
func session(b *testing.B, addr string, req, resp []byte) {
	c, err := tlspsk.Dial(context.Background(), "tcp", addr, clientConfig())
	if err != nil {
		b.Fatal(err)
	}
	if _, err := c.Write(req); err != nil {
		b.Fatal(err)
	}
	if _, err := io.ReadFull(c, resp); err != nil {
		b.Fatal(err)
	}
	c.Close()
}

func BenchmarkHandshake(b *testing.B) {
	addr := echoServer(b)
	req := []byte("POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n")
	resp := make([]byte, len(req))
	b.ReportAllocs()
	for b.Loop() {
		session(b, addr, req, resp)
	}
}

func BenchmarkHandshakeParallel(b *testing.B) {
	addr := echoServer(b)
	req := []byte("POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n")
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		resp := make([]byte, len(req))
		for pb.Next() {
			session(b, addr, req, resp)
		}
	})
}

func BenchmarkRoundTrip(b *testing.B) {
	for _, size := range []int{64, 1024} {
		b.Run(byteSize(size), func(b *testing.B) {
			addr := echoServer(b)
			c, err := tlspsk.Dial(context.Background(), "tcp", addr, clientConfig())
			if err != nil {
				b.Fatal(err)
			}
			defer c.Close()
			req := make([]byte, size)
			resp := make([]byte, size)
			b.SetBytes(int64(size))
			b.ReportAllocs()
			for b.Loop() {
				if _, err := c.Write(req); err != nil {
					b.Fatal(err)
				}
				if _, err := io.ReadFull(c, resp); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

func byteSize(n int) string {
	if n >= 1024 {
		return strconv.Itoa(n/1024) + "KiB"
	}
	return strconv.Itoa(n) + "B"
}
