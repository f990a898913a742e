//go:build !linux

package vcard

import "net"

// setQuickAck does nothing: TCP_QUICKACK exists only on Linux.
func setQuickAck(net.Conn) {}
