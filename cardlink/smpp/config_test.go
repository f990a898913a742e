package smpp

import (
	"fmt"
	"strings"
	"testing"
	"time"
)

func TestParseURLReadsAccountAddressAndLimits(t *testing.T) {
	c, err := ParseURL("smpp://ota:pa%3Ass@smsc.example:2776?source=12345&window=4&rate=2.5&enquire_link=5s&dest_ton=0x01")
	if err != nil {
		t.Fatal(err)
	}
	if c.SystemID != "ota" || c.Password != "pa:ss" || c.Addr != "smsc.example:2776" || c.Source != "12345" ||
		c.Window != 4 || c.Rate != 2.5 || c.EnquireLink != 5*time.Second || c.DestTON != 1 || c.DestNPI != 1 {
		t.Fatalf("%#v", c)
	}
	if c, err := ParseURL("smpp://ota:pw@smsc.example"); err != nil || c.Addr != "smsc.example:2775" || c.Window != DefaultWindow {
		t.Fatalf("defaults: %+v %v", c, err)
	}
}

func TestParseURLErrorsNeverShowThePassword(t *testing.T) {
	const pw = "S3cr%7Bt"
	for _, u := range []string{
		"smpp://ota:" + pw + "@smsc.example:99999",
		"smpp://ota:" + pw + "@smsc.example:27x5",
		"smpp://ota:" + pw + "@smsc.example?bogus=1",
		"smpp://ota:" + pw + "@smsc.example?window=0",
		"smpp://ota:" + pw + "%zz@smsc.example",
		"http://ota:" + pw + "@smsc.example",
		"smpp://:" + pw + "@smsc.example",
		"smpp://ota:S3cr%7Bt9chars@smsc.example",
		"smpp://ota:" + pw + "@smsc.example/path",
		"smpp://ota:" + pw + "@smsc.example?window=1&window=2",
		"smpp://ota:" + pw + "@[::1",
	} {
		_, err := ParseURL(u)
		if err == nil {
			t.Errorf("%s accepted", u)
			continue
		}
		if strings.Contains(err.Error(), "S3cr") {
			t.Errorf("error shows the password: %v", err)
		}
	}
}

func TestConfigStringRedactsThePassword(t *testing.T) {
	c, err := ParseURL("smpp://ota:Hunter22@127.0.0.1:2775?source=1234")
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range []string{c.String(), fmt.Sprintf("%v|%+v|%#v|%s", c, c, c, c), c.LogValue().String()} {
		if strings.Contains(s, "Hunter22") || !strings.Contains(s, "ota:xxxxx@127.0.0.1:2775") {
			t.Errorf("%q", s)
		}
	}
}
