package cardlink_test

import (
	"bufio"
	"bytes"
	"errors"
	"io"
	"net/http"
	"strings"
	"testing"

	"github.com/keyport/keyport/cardlink"
)

func read(t *testing.T, raw string) (*cardlink.AdminRequest, error) {
	t.Helper()
	return cardlink.ReadAdminRequest(bufio.NewReader(strings.NewReader(raw)))
}

func TestReadAdminRequestTakesTheRealTracesChunkedAnswer(t *testing.T) {
	// vectors/ram_http.json: POST /Download?req=1, status ok, chunked AF8023026A880000.
	raw := "POST /Download?req=1 HTTP/1.1\r\nHost: localhost\r\nX-Admin-Protocol: globalplatform-remote-admin/1.0\r\n" +
		"X-Admin-From: //se-id/eid/1\r\nX-Admin-Script-Status: ok\r\n" +
		"Content-Type: application/vnd.globalplatform.card-content-mgt-response;version=1.0\r\n" +
		"Transfer-Encoding: chunked\r\n\r\n8\r\n\xAF\x80\x23\x02\x6A\x88\x00\x00\r\n0\r\n\r\n"
	r, err := read(t, raw)
	if err != nil || r.URI != "/Download?req=1" || r.ScriptStatus != "ok" || r.From != "//se-id/eid/1" ||
		!bytes.Equal(r.Body, []byte{0xAF, 0x80, 0x23, 0x02, 0x6A, 0x88, 0x00, 0x00}) {
		t.Fatalf("%+v %v", r, err)
	}
}

func TestReadAdminRequestTakesAContentLengthBodyAndAResume(t *testing.T) {
	raw := "POST /x?req=2 HTTP/1.1\r\nHost: h\r\nX-Admin-Protocol: globalplatform-remote-admin/1.0\r\nX-Admin-Resume: true\r\n" +
		"X-Admin-Script-Status: ok\r\nContent-Type: application/vnd.globalplatform.card-content-mgt-response; version=1.0\r\n" +
		"Content-Length: 10\r\n\r\n\xAB\x08\x80\x01\x01\x23\x03\x01\x90\x00"
	r, err := read(t, raw)
	if err != nil || !r.Resume || len(r.Body) != 10 {
		t.Fatalf("%+v %v", r, err)
	}
}

func TestReadAdminRequestReturnsEOFBetweenRequests(t *testing.T) {
	if _, err := read(t, ""); !errors.Is(err, io.EOF) {
		t.Fatalf("%v", err)
	}
}

func TestReadAdminRequestRefusesAnUnknownResumeValue(t *testing.T) {
	_, err := read(t, "POST / HTTP/1.1\r\nHost: h\r\nX-Admin-Protocol: globalplatform-remote-admin/1.0\r\nX-Admin-Resume: maybe\r\n\r\n")
	var re *cardlink.RequestError
	if !errors.As(err, &re) || re.Status != http.StatusBadRequest {
		t.Fatalf("%v", err)
	}
}

func TestAdminResponse204IsTheProtocolHeaderAndNothingElse(t *testing.T) {
	got := string(cardlink.AdminResponse{Status: 204}.Bytes())
	if got != "HTTP/1.1 204 No Content\r\nX-Admin-Protocol: globalplatform-remote-admin/1.0\r\n\r\n" {
		t.Fatalf("%q", got)
	}
}

func TestAdminResponseWithAScriptCarriesNextURITargetAndContentLength(t *testing.T) {
	body := []byte{0xAE, 0x80, 0x22, 0x05, 0x80, 0xCA, 0x00, 0x85, 0x00, 0x00, 0x00}
	got := string(cardlink.AdminResponse{Status: 200, NextURI: "/Download?req=1", Target: "//aid/A000000151/53504101", Body: body}.Bytes())
	want := "HTTP/1.1 200 OK\r\nX-Admin-Protocol: globalplatform-remote-admin/1.0\r\nX-Admin-Next-URI: /Download?req=1\r\n" +
		"X-Admin-Targeted-Application: //aid/A000000151/53504101\r\n" +
		"Content-Type: application/vnd.globalplatform.card-content-mgt;version=1.0\r\nContent-Length: 11\r\n\r\n" + string(body)
	if got != want {
		t.Fatalf("%q", got)
	}
}

func TestAdminResponseChunkedCutsTheBodyIn100ByteChunks(t *testing.T) {
	body := bytes.Repeat([]byte{0x5A}, 250)
	resp, err := http.ReadResponse(bufio.NewReader(bytes.NewReader(cardlink.AdminResponse{Status: 200, Body: body, Chunked: true}.Bytes())), nil)
	if err != nil {
		t.Fatal(err)
	}
	got, _ := io.ReadAll(resp.Body)
	raw := string(cardlink.AdminResponse{Status: 200, Body: body, Chunked: true}.Bytes())
	if !bytes.Equal(got, body) || strings.Count(raw, "\r\n64\r\n") != 2 || !strings.Contains(raw, "\r\n32\r\n") {
		t.Fatalf("chunked body: %d bytes back; %q", len(got), raw[:120])
	}
}

func FuzzReadAdminRequest(f *testing.F) {
	f.Add([]byte("POST /server/adminagent?cmd=1 HTTP/1.1\r\nHost: h\r\nX-Admin-Protocol: globalplatform-remote-admin/1.0\r\n\r\n"))
	f.Add([]byte("POST /Download?req=1 HTTP/1.1\r\nHost: h\r\nX-Admin-Protocol: globalplatform-remote-admin/1.0\r\nX-Admin-Script-Status: ok\r\n" +
		"Content-Type: application/vnd.globalplatform.card-content-mgt-response;version=1.0\r\nTransfer-Encoding: chunked\r\n\r\n8\r\n\xAF\x80\x23\x02\x6A\x88\x00\x00\r\n0\r\n\r\n"))
	f.Add([]byte("GET / HTTP/1.1\r\n\r\n"))
	f.Fuzz(func(t *testing.T, raw []byte) {
		r, err := cardlink.ReadAdminRequest(bufio.NewReader(bytes.NewReader(raw)))
		if err != nil {
			return
		}
		if len(r.Body) > 0 && r.ScriptStatus == "" {
			t.Fatalf("a body without a script status got through: %+v", r)
		}
		if len(r.Body) > cardlink.MaxBody {
			t.Fatalf("body of %d bytes", len(r.Body))
		}
	})
}
