package hsm

import (
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
)

const softhsm = "/usr/lib/softhsm/libsofthsm2.so"

func TestParseURIAcceptsValidURIs(t *testing.T) {
	tests := []struct {
		name string
		in   string
		want URI
	}{
		{"token and pin file", "pkcs11:token=keyport?module-path=" + softhsm + "&pin-source=file:/run/pin",
			URI{Token: "keyport", ModulePath: softhsm, PINSource: "/run/pin"}},
		{"file URI with empty authority", "pkcs11:token=keyport?module-path=" + softhsm + "&pin-source=file:///run/pin",
			URI{Token: "keyport", ModulePath: softhsm, PINSource: "/run/pin"}},
		{"file URI with localhost", "pkcs11:token=keyport?module-path=" + softhsm + "&pin-source=file://localhost/run/pin",
			URI{Token: "keyport", ModulePath: softhsm, PINSource: "/run/pin"}},
		// Found by FuzzParseURI: "//run" would be written back as the host "run".
		{"pin file path with doubled slashes", "pkcs11:token=keyport?module-path=" + softhsm + "&pin-source=file:////run//x/../pin",
			URI{Token: "keyport", ModulePath: softhsm, PINSource: "/run/pin"}},
		{"slot id and pin value", "pkcs11:slot-id=1558003430?module-path=" + softhsm + "&pin-value=1234",
			URI{SlotID: 1558003430, HasSlotID: true, ModulePath: softhsm, PINValue: "1234"}},
		{"all token attributes", "pkcs11:token=k;serial=03b1;manufacturer=SoftHSM%20project;model=SoftHSM%20v2?module-path=" + softhsm + "&pin-value=1",
			URI{Token: "k", Serial: "03b1", Manufacturer: "SoftHSM project", Model: "SoftHSM v2", ModulePath: softhsm, PINValue: "1"}},
		{"percent-decoding of a label and a PIN", "pkcs11:token=my%20token%3Bx?module-path=" + softhsm + "&pin-value=a%26b%3Dc+d",
			URI{Token: "my token;x", ModulePath: softhsm, PINValue: "a&b=c+d"}},
		{"upper-case scheme", "PKCS11:token=k?module-path=" + softhsm + "&pin-value=1",
			URI{Token: "k", ModulePath: softhsm, PINValue: "1"}},
		{"query order does not matter", "pkcs11:token=k?pin-value=1&module-path=" + softhsm,
			URI{Token: "k", ModulePath: softhsm, PINValue: "1"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := ParseURI(tt.in)
			if err != nil {
				t.Fatalf("ParseURI: %v", err)
			}
			if !reflect.DeepEqual(*got, tt.want) {
				t.Fatalf("got %+v, want %+v", *got, tt.want)
			}
		})
	}
}

func TestParseURIRejectsInvalidURIsWithExactMessages(t *testing.T) {
	q := "?module-path=" + softhsm + "&pin-value=1"
	tests := []struct {
		name, in, want string
	}{
		{"wrong scheme", "pkcs12:token=k" + q, `pkcs11 uri: must start with "pkcs11:"`},
		{"token and slot-id", "pkcs11:token=k;slot-id=1" + q, "pkcs11 uri: 'token' and 'slot-id' are mutually exclusive"},
		{"serial and slot-id", "pkcs11:serial=k;slot-id=1" + q, "pkcs11 uri: 'serial' and 'slot-id' are mutually exclusive"},
		{"no token selector", "pkcs11:model=x" + q, "pkcs11 uri: one of 'token', 'serial' or 'slot-id' is required"},
		{"unknown path attribute", "pkcs11:token=k;colour=red" + q, `pkcs11 uri: unknown path attribute "colour"`},
		{"unknown query attribute", "pkcs11:token=k" + q + "&x-vendor=1", `pkcs11 uri: unknown query attribute "x-vendor"`},
		{"unsupported RFC attribute", "pkcs11:token=k;object=receipt" + q, `pkcs11 uri: attribute "object" is not supported by keyport`},
		{"missing module path", "pkcs11:token=k?pin-value=1", "pkcs11 uri: missing 'module-path' (the PKCS#11 module, e.g. /usr/lib/softhsm/libsofthsm2.so)"},
		{"relative module path", "pkcs11:token=k?module-path=libsofthsm2.so&pin-value=1", "pkcs11 uri: 'module-path' must be an absolute path"},
		{"missing PIN", "pkcs11:token=k?module-path=" + softhsm, "pkcs11 uri: missing PIN: set 'pin-source=file:/path' or 'pin-value'"},
		{"two PINs", "pkcs11:token=k" + q + "&pin-source=file:/p", "pkcs11 uri: 'pin-source' and 'pin-value' are mutually exclusive"},
		{"pin-source not a file", "pkcs11:token=k?module-path=" + softhsm + "&pin-source=https://x/pin", "pkcs11 uri: 'pin-source' must be a file: URI (file:/path/to/pin)"},
		{"pin-source on a remote host", "pkcs11:token=k?module-path=" + softhsm + "&pin-source=file://h/pin", "pkcs11 uri: 'pin-source' must name a local file"},
		{"duplicate attribute", "pkcs11:token=k;token=j" + q, `pkcs11 uri: attribute "token" appears more than once`},
		{"bad percent-encoding", "pkcs11:token=k%2" + q, `pkcs11 uri: attribute "token": bad percent-encoding (need '%' and two hex digits)`},
		{"empty value", "pkcs11:token=" + q, `pkcs11 uri: attribute "token" is empty`},
		{"attribute without '='", "pkcs11:token" + q, `pkcs11 uri: attribute "token" has no '='`},
		{"trailing separator", "pkcs11:token=k;" + q, "pkcs11 uri: empty attribute (doubled or trailing separator)"},
		{"negative slot id", "pkcs11:slot-id=-1" + q, "pkcs11 uri: 'slot-id' must be a decimal number"},
		{"label too long", "pkcs11:token=" + strings.Repeat("a", 33) + q, `pkcs11 uri: "token" is longer than the 32 bytes PKCS#11 allows`},
		{"query attribute in the path", "pkcs11:token=k;module-path=" + softhsm + "?pin-value=1", `pkcs11 uri: "module-path" is a query attribute: put it after '?'`},
		{"empty query", "pkcs11:token=k?", "pkcs11 uri: empty query after '?'"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := ParseURI(tt.in)
			if err == nil {
				t.Fatalf("ParseURI(%q) succeeded", tt.in)
			}
			if err.Error() != tt.want {
				t.Fatalf("error\n got %q\nwant %q", err, tt.want)
			}
		})
	}
}

func TestURIStringRedactsThePINValue(t *testing.T) {
	u, err := ParseURI("pkcs11:token=k?module-path=" + softhsm + "&pin-value=s3cret")
	if err != nil {
		t.Fatal(err)
	}
	if s := u.String(); strings.Contains(s, "s3cret") || !strings.Contains(s, "pin-value=REDACTED") {
		t.Fatalf("String() = %q", s)
	}
}

func TestURIPINReadsTheFileWithoutItsLineEnding(t *testing.T) {
	p := filepath.Join(t.TempDir(), "pin")
	if err := os.WriteFile(p, []byte("12 34\r\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	u := &URI{PINSource: p}
	pin, err := u.PIN()
	if err != nil || pin != "12 34" {
		t.Fatalf("PIN() = %q, %v", pin, err)
	}
}

func TestURIPINFailsOnAnEmptyFileWithoutShowingContent(t *testing.T) {
	p := filepath.Join(t.TempDir(), "pin")
	os.WriteFile(p, []byte("\n"), 0o600)
	if _, err := (&URI{PINSource: p}).PIN(); err == nil {
		t.Fatal("empty PIN file accepted")
	}
}

// FuzzParseURI checks that ParseURI never panics, that what it accepts is
// valid, and that the canonical encoding parses back to the same URI.
func FuzzParseURI(f *testing.F) {
	for _, s := range []string{
		"pkcs11:token=keyport?module-path=/usr/lib/softhsm/libsofthsm2.so&pin-source=file:/run/pin",
		"pkcs11:slot-id=3?module-path=/m.so&pin-value=1234",
		"pkcs11:token=a%20b;serial=1;model=m;manufacturer=x?module-path=/m.so&pin-value=%00",
		"pkcs11:",
		"pkcs11:token=k;token=k",
		"pkcs11:token=%zz",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		u, err := ParseURI(s)
		if err != nil {
			if !strings.HasPrefix(err.Error(), "pkcs11 uri: ") {
				t.Fatalf("error without prefix: %v", err)
			}
			return
		}
		if err := u.validate(); err != nil {
			t.Fatalf("accepted an invalid URI: %v", err)
		}
		again, err := ParseURI(u.encode(true))
		if err != nil {
			t.Fatalf("canonical form %q does not parse: %v", u.encode(true), err)
		}
		if !reflect.DeepEqual(u, again) {
			t.Fatalf("round trip changed the URI:\n%+v\n%+v", u, again)
		}
	})
}
