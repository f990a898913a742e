package vcard

import (
	"net"
	"syscall"
)

// setQuickAck enables TCP_QUICKACK (Linux tcp(7), option 12) on conn so the
// kernel acknowledges vpcd's first segment at once instead of delaying it.
func setQuickAck(conn net.Conn) {
	tc, ok := conn.(*net.TCPConn)
	if !ok {
		return
	}
	raw, err := tc.SyscallConn()
	if err != nil {
		return
	}
	_ = raw.Control(func(fd uintptr) {
		_ = syscall.SetsockoptInt(int(fd), syscall.IPPROTO_TCP, syscall.TCP_QUICKACK, 1)
	})
}
