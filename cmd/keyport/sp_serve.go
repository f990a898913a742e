package main

import (
	"context"
	"crypto/sha256"
	"crypto/tls"
	"encoding/hex"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/keyport/keyport"
	"github.com/keyport/keyport/gp"
)

// Bounds of `keyport sp serve`.
const (
	maxRelaySessions = 32
	relaySessionTTL  = 2 * time.Minute
)

// cmdSPServe is `keyport sp serve`: it plays the provider's server of the
// live data path (keyport.DataReadSession, the relay protocol in relay.go).
// Each session the provider's app (`keyport app relay`) opens reads data
// objects --dgi..(--count) from the domain in an SCP03 session at level 33
// under the provider's keys, which stay in this process; what a session
// read goes to --data-out/<session>.bin (mode 0600), and the log gives its
// size and SHA-256 only.
func cmdSPServe(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet("keyport sp serve", flag.ContinueOnError)
	kf := bindKeysFlags(fs)
	listen := fs.String("listen", "127.0.0.1:8443", "HTTPS address to listen on")
	certFile := fs.String("tls-cert", "", "the server's TLS certificate chain (PEM)")
	keyFile := fs.String("tls-key", "", "the server's TLS private key (PEM)")
	dgiS := fs.String("dgi", "0101", "the first data object to read (DGI in hex)")
	count := fs.Int("count", 1, "how many consecutive data objects each session reads")
	dataOut := fs.String("data-out", "", "directory for what each session read (<session>.bin, mode 0600); nothing is kept without it")
	if err := parseArgs(fs, args); err != nil {
		return err
	}
	if *certFile == "" || *keyFile == "" {
		return exitError{2, errors.New("usage: keyport sp serve --keys K [--key sp.pem] --tls-cert C --tls-key K [--listen ADDR] [--dgi 0101 --count N] [--data-out DIR]")}
	}
	pk, err := kf.load()
	if err != nil {
		return err
	}
	first, err := parseDGI(*dgiS)
	if err != nil {
		return err
	}
	if *count < 1 || *count > keyport.MaxRelayAPDUs-1 || int(first)+*count-1 > int(gp.DataObjectLast) {
		return exitError{2, fmt.Errorf("--count %d: 1 to %d objects per session", *count, keyport.MaxRelayAPDUs-1)}
	}
	var dgis []uint16
	for i := range *count {
		dgis = append(dgis, first+uint16(i))
	}
	cert, err := tls.LoadX509KeyPair(*certFile, *keyFile)
	if err != nil {
		return fmt.Errorf("--tls-cert/--tls-key: %w", err)
	}
	l, err := net.Listen("tcp", *listen)
	if err != nil {
		return err
	}
	log := slog.New(slog.NewTextHandler(stderr, nil))
	rs := &relayServer{pk: pk, dgis: dgis, dataOut: *dataOut, log: log, sessions: map[string]*relaySession{}}
	srv := &http.Server{Handler: rs, ReadHeaderTimeout: 10 * time.Second, ReadTimeout: 30 * time.Second, WriteTimeout: 30 * time.Second,
		TLSConfig: &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12}, ErrorLog: slog.NewLogLogger(log.Handler(), slog.LevelWarn)}
	log.Info("sp serve listening", "url", "https://"+l.Addr().String()+"/v1/relay", "aid", pk.AID, "dgi", keyport.DGIRange(dgis))
	done := make(chan error, 1)
	go func() { done <- srv.ServeTLS(l, "", "") }()
	select {
	case err := <-done:
		return err
	case <-ctx.Done():
	}
	sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	srv.Shutdown(sctx)
	return nil
}

// relayServer serves the relay protocol's POST /v1/relay.
type relayServer struct {
	pk      *providerKeys
	dgis    []uint16
	dataOut string
	log     *slog.Logger

	mu       sync.Mutex
	sessions map[string]*relaySession
}

type relaySession struct {
	s       *keyport.DataReadSession
	expires time.Time
}

func relayError(w http.ResponseWriter, code int, session string, err error) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	json.NewEncoder(w).Encode(keyport.RelayReply{Session: session, Error: err.Error()})
}

func (rs *relayServer) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.URL.Path != "/v1/relay" {
		relayError(w, http.StatusNotFound, "", errors.New("the relay is POST /v1/relay"))
		return
	}
	if r.Method != http.MethodPost {
		w.Header().Set("Allow", http.MethodPost)
		relayError(w, http.StatusMethodNotAllowed, "", errors.New("POST only"))
		return
	}
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, keyport.MaxRelayBody))
	if err != nil {
		relayError(w, http.StatusRequestEntityTooLarge, "", fmt.Errorf("the body is larger than %d bytes", keyport.MaxRelayBody))
		return
	}
	req, resps, err := keyport.ParseRelayRequest(body)
	if err != nil {
		relayError(w, http.StatusBadRequest, "", err)
		return
	}
	id, sess, err := rs.session(req.Session)
	if err != nil {
		code := http.StatusNotFound
		if req.Session == "" {
			code = http.StatusServiceUnavailable
		}
		relayError(w, code, req.Session, err)
		return
	}
	cmds, done, err := sess.s.Next(resps)
	if err != nil || done {
		rs.end(id)
	}
	if err != nil {
		rs.log.Warn("relay session failed", "session", id, "err", err)
		relayError(w, http.StatusUnprocessableEntity, id, err)
		return
	}
	rep := keyport.RelayReply{Session: id}
	if done {
		data := sess.s.Data()
		sum := sha256.Sum256(data)
		rep.Done = true
		rep.Result = fmt.Sprintf("read %d bytes from DGI %s of %s", len(data), keyport.DGIRange(rs.dgis), rs.pk.AID)
		if rs.dataOut != "" {
			if err := os.WriteFile(filepath.Join(rs.dataOut, id+".bin"), data, 0o600); err != nil {
				rs.log.Error("keeping what the session read", "session", id, "err", err)
				relayError(w, http.StatusInternalServerError, id, errors.New("the server could not keep the data"))
				return
			}
		}
		rs.log.Info("relay session read the data", "session", id, "bytes", len(data), "sha256", hex.EncodeToString(sum[:]))
	}
	for _, c := range cmds {
		rep.APDUs = append(rep.APDUs, strings.ToUpper(hex.EncodeToString(c.Bytes())))
	}
	w.Header().Set("Content-Type", "application/json")
	json.NewEncoder(w).Encode(rep)
}

// session returns session id, or a new one for "".
func (rs *relayServer) session(id string) (string, *relaySession, error) {
	rs.mu.Lock()
	defer rs.mu.Unlock()
	now := time.Now()
	for k, s := range rs.sessions {
		if now.After(s.expires) {
			delete(rs.sessions, k)
		}
	}
	if id != "" {
		s, ok := rs.sessions[id]
		if !ok {
			return "", nil, fmt.Errorf("no session %q (ended or expired; start again with an empty session)", id)
		}
		return id, s, nil
	}
	if len(rs.sessions) >= maxRelaySessions {
		return "", nil, fmt.Errorf("%d sessions are open; try again later", maxRelaySessions)
	}
	s, err := keyport.NewDataReadSession(rs.pk.keySet(), rs.pk.AID, rs.dgis)
	if err != nil {
		return "", nil, err
	}
	id = keyport.NewID("rs")
	rs.sessions[id] = &relaySession{s: s, expires: now.Add(relaySessionTTL)}
	return id, rs.sessions[id], nil
}

func (rs *relayServer) end(id string) {
	rs.mu.Lock()
	delete(rs.sessions, id)
	rs.mu.Unlock()
}
