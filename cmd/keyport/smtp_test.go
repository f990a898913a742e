package main

import (
	"context"
	"net"
	"strings"
	"testing"
	"time"
)

// TestAnSMTPServerThatStopsAnsweringDoesNotHoldTheSenderForEver: the
// server accepts the connection and never greets; Send gives up when the
// exchange's time is over instead of waiting for ever (it runs after the
// answer, and keyport's shutdown waits for it).
func TestAnSMTPServerThatStopsAnsweringDoesNotHoldTheSenderForEver(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	held := make(chan net.Conn, 1)
	go func() {
		if c, err := ln.Accept(); err == nil {
			held <- c // accepted, and never a word
		}
	}()
	defer func() {
		select {
		case c := <-held:
			c.Close()
		default:
		}
	}()
	m, err := newSMTPMailer("smtp://" + ln.Addr().String() + "?from=keyport@example.com")
	if err != nil {
		t.Fatal(err)
	}
	old := smtpExchangeTimeout
	smtpExchangeTimeout = 300 * time.Millisecond
	defer func() { smtpExchangeTimeout = old }()
	done := make(chan error, 1)
	go func() { done <- m.Send(context.Background(), "a@bank.example", "s", "b") }()
	select {
	case err := <-done:
		if err == nil || !strings.Contains(err.Error(), "timeout") {
			t.Fatalf("Send to a silent server: %v; want a timeout", err)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("Send to a silent server still waits after 20 s")
	}
}
