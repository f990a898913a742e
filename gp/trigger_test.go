package gp

import (
	"bytes"
	"net/netip"
	"testing"
)

func TestTriggerEncodesWhatTheParserAndOpenChannelRead(t *testing.T) {
	addr := netip.MustParseAddrPort("127.0.0.1:8443")
	conn, err := TCPConnection(addr)
	if err != nil {
		t.Fatal(err)
	}
	// PROTOCOLS.md §3.2's parameters with port 20FB and 127.0.0.1 (the
	// example the vcard tests use).
	if want := unhex(t, "35070201030402000339020578"+"3C030220FB"+"3E05217F000001"); !bytes.Equal(conn, want) {
		t.Fatalf("connection %X, want %X", conn, want)
	}
	sec, err := PSKSecurity("keypor", 0x01, 0x01)
	if err != nil {
		t.Fatal(err)
	}
	trig := AdminTrigger{Connection: conn, Security: sec, Host: []byte("h"), AgentID: []byte("a"), URI: []byte("/u")}
	b := trig.Bytes()
	got, err := ParseAdminTrigger(b)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got.Connection, conn) || !bytes.Equal(got.Security, unhex(t, "066B6579706F72020101")) ||
		string(got.Host) != "h" || string(got.AgentID) != "a" || string(got.URI) != "/u" || got.Retry != nil {
		t.Fatalf("parsed %+v", got)
	}
	oc, err := OpenChannel(1, got.Connection)
	if err != nil {
		t.Fatal(err)
	}
	back, err := ChannelAddress(oc.Objects)
	if err != nil || back != addr {
		t.Fatalf("ChannelAddress = %v, %v; want %v", back, err, addr)
	}
	v6 := netip.MustParseAddrPort("[2001:db8::1]:443")
	c6, err := TCPConnection(v6)
	if err != nil {
		t.Fatal(err)
	}
	if back, err := ChannelAddress(c6); err != nil || back != v6 {
		t.Fatalf("IPv6: %v, %v", back, err)
	}
}

func TestChannelAddressRefusesWhatIsNoTCPAddress(t *testing.T) {
	for name, objs := range map[string]string{
		"no port":     "3E05217F000001",
		"no address":  "3C030220FB",
		"UDP":         "3C030120FB3E05217F000001",
		"port 0":      "3C03020000" + "3E05217F000001",
		"short IPv4":  "3C030220FB3E04217F0000",
		"bad TLV":     "3C05",
		"domain name": "3C030220FB3E03090102",
	} {
		if a, err := ChannelAddress(unhex(t, objs)); err == nil {
			t.Errorf("%s: %v accepted", name, a)
		}
	}
	if _, err := TCPConnection(netip.AddrPortFrom(netip.MustParseAddr("10.0.0.1"), 0)); err == nil {
		t.Error("port 0 accepted")
	}
	if _, err := PSKSecurity("", 1, 1); err == nil {
		t.Error("an empty PSK identity accepted")
	}
}

func FuzzChannelAddress(f *testing.F) {
	f.Add(unhex(f, "35070201030402000339020578"+"3C030220FB"+"3E05217F000001"))
	f.Add(unhex(f, "3C030201BB3E1157200100000DB8000000000000000000000001"))
	f.Fuzz(func(t *testing.T, b []byte) {
		a, err := ChannelAddress(b)
		if err != nil {
			return
		}
		c, err := TCPConnection(a)
		if err != nil {
			t.Fatalf("%X: address %v does not encode: %v", b, a, err)
		}
		if back, err := ChannelAddress(c); err != nil || back != a {
			t.Fatalf("%X: %v re-read as %v, %v", b, a, back, err)
		}
	})
}
