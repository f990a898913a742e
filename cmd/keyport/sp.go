package main

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/http"
	"os"
	"strings"
	"time"

	"github.com/keyport/keyport"
	"github.com/keyport/keyport/gp"
	"github.com/keyport/keyport/keywrap"
)

// cmdSPKeygen makes the provider's RSA-3072 wrapping key pair: PREFIX.pem
// (private, mode 0600) and PREFIX.pub.pem (to register with keyport).
func cmdSPKeygen(args []string) error {
	fs := flag.NewFlagSet("keyport sp keygen", flag.ContinueOnError)
	out := fs.String("out", "sp", "file prefix: writes PREFIX.pem and PREFIX.pub.pem")
	bits := fs.Int("bits", 3072, "RSA modulus size: 3072 or 4096")
	if err := parseArgs(fs, args); err != nil {
		return err
	}
	if *bits != 3072 && *bits != 4096 {
		return exitError{2, errors.New("--bits must be 3072 or 4096")}
	}
	k, err := rsa.GenerateKey(rand.Reader, *bits)
	if err != nil {
		return err
	}
	priv, err := x509.MarshalPKCS8PrivateKey(k)
	if err != nil {
		return err
	}
	pub, _ := x509.MarshalPKIXPublicKey(&k.PublicKey)
	for _, f := range []struct {
		path string
		typ  string
		der  []byte
		mode os.FileMode
	}{{*out + ".pem", "PRIVATE KEY", priv, 0o600}, {*out + ".pub.pem", "PUBLIC KEY", pub, 0o644}} {
		fh, err := os.OpenFile(f.path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, f.mode)
		if err != nil {
			return fmt.Errorf("%w (keygen never overwrites a key file)", err)
		}
		if err := pem.Encode(fh, &pem.Block{Type: f.typ, Bytes: f.der}); err != nil {
			fh.Close()
			return err
		}
		if err := fh.Close(); err != nil {
			return err
		}
	}
	sum := sha256.Sum256(pub)
	fmt.Fprintf(stdout, "wrote %s.pem (private, keep it) and %s.pub.pem (register it)\nSHA-256 fingerprint %s\n", *out, *out, hex.EncodeToString(sum[:]))
	return nil
}

// UnwrappedKeys is what `sp unwrap` prints: the provider's first keys in the
// clear, for the provider's own HSM or script builder.
type UnwrappedKeys struct {
	EID             keyport.EID                 `json:"eid"`
	AID             keyport.AID                 `json:"aid"`
	KVN             int                         `json:"kvn"`
	SequenceCounter int                         `json:"sequence_counter"`
	Keys            map[keyport.KeyUsage]string `json:"keys"`
	KCV             map[keyport.KeyUsage]string `json:"kcv"`
}

func cmdSPUnwrap(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet("keyport sp unwrap", flag.ContinueOnError)
	keyPath := fs.String("key", "", "the provider's private key (PEM) the package is wrapped to")
	jwksSrc := fs.String("jwks", "", "receipt keys: a JWKS file, or the portal's base URL (fetches /.well-known/jwks.json)")
	out := fs.String("out", "", "write the keys here (mode 0600) instead of standard output")
	if err := parseArgs(fs, args); err != nil {
		return err
	}
	pkgPath := fs.Arg(0)
	if fs.NArg() != 1 || *keyPath == "" || *jwksSrc == "" {
		return exitError{2, errors.New("usage: keyport sp unwrap PACKAGE --key sp.pem --jwks URL|FILE [--out FILE]")}
	}
	pkgData, err := os.ReadFile(pkgPath)
	if err != nil {
		return err
	}
	set, err := loadJWKS(ctx, *jwksSrc)
	if err != nil {
		return err
	}
	priv, err := loadPrivateKey(*keyPath)
	if err != nil {
		return err
	}
	keys, err := unwrapPackage(pkgData, set, priv)
	if err != nil {
		return err
	}
	b, _ := json.MarshalIndent(keys, "", "  ")
	b = append(b, '\n')
	if *out == "" {
		_, err = stdout.Write(b)
		return err
	}
	// The first keys in the clear: a new file only, never one that exists
	// (or a link planted where it is to be).
	return writeNewSecret(*out, b)
}

// unwrapPackage verifies a key package and unwraps its keys with the
// provider's private key, checking each key against its KCV.
func unwrapPackage(pkgData []byte, set keyport.JWKS, priv *rsa.PrivateKey) (*UnwrappedKeys, error) {
	p, err := keyport.VerifyKeyPackage(pkgData, set)
	if err != nil {
		return nil, err
	}
	return unwrapKeys(p, priv)
}

// unwrapKeys unwraps a package's keys with the provider's private key and
// checks each against the package's KCV.
func unwrapKeys(p *keyport.KeyPackage, priv *rsa.PrivateKey) (*UnwrappedKeys, error) {
	pub, _ := x509.MarshalPKIXPublicKey(&priv.PublicKey)
	sum := sha256.Sum256(pub)
	if hex.EncodeToString(sum[:]) != p.Wrapping.PublicKeySHA256 {
		return nil, fmt.Errorf("the package is wrapped to key %s, not to this private key (%x)", p.Wrapping.PublicKeySHA256, sum)
	}
	u := &UnwrappedKeys{EID: p.EID, AID: p.AID, KVN: p.KVN, SequenceCounter: p.SequenceCounter,
		Keys: map[keyport.KeyUsage]string{}, KCV: map[keyport.KeyUsage]string{}}
	hash, err := keywrap.ParseOAEPHash(string(p.Wrapping.OAEPHash))
	if err != nil {
		return nil, err
	}
	for _, k := range p.Keys {
		key, err := keywrap.UnwrapRSAAES(priv, k.Wrapped, hash)
		if err != nil {
			return nil, fmt.Errorf("unwrap %s key: %w", k.Usage, err)
		}
		kcv, err := gp.KCV(key)
		if err != nil {
			return nil, err
		}
		if !strings.EqualFold(hex.EncodeToString(kcv), k.KCV) {
			return nil, fmt.Errorf("%s key: KCV %X does not match the package's %s", k.Usage, kcv, k.KCV)
		}
		u.Keys[k.Usage] = strings.ToUpper(hex.EncodeToString(key))
		u.KCV[k.Usage] = k.KCV
	}
	return u, nil
}

func loadPrivateKey(path string) (*rsa.PrivateKey, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	blk, _ := pem.Decode(b)
	if blk == nil {
		return nil, fmt.Errorf("%s: no PEM block", path)
	}
	if k, err := x509.ParsePKCS1PrivateKey(blk.Bytes); err == nil {
		return k, nil
	}
	k, err := x509.ParsePKCS8PrivateKey(blk.Bytes)
	if err != nil {
		return nil, fmt.Errorf("%s: not an RSA private key", path)
	}
	rk, ok := k.(*rsa.PrivateKey)
	if !ok {
		return nil, fmt.Errorf("%s: not an RSA private key", path)
	}
	return rk, nil
}

func loadJWKS(ctx context.Context, src string) (keyport.JWKS, error) {
	var set keyport.JWKS
	var data []byte
	if strings.HasPrefix(src, "http://") || strings.HasPrefix(src, "https://") {
		url := strings.TrimSuffix(src, "/")
		if !strings.HasSuffix(url, "/.well-known/jwks.json") {
			url += "/.well-known/jwks.json"
		}
		ctx, cancel := context.WithTimeout(ctx, 15*time.Second)
		defer cancel()
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			return set, err
		}
		defer resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			return set, fmt.Errorf("GET %s: %s", url, resp.Status)
		}
		if data, err = io.ReadAll(io.LimitReader(resp.Body, 1<<20)); err != nil {
			return set, err
		}
	} else {
		var err error
		if data, err = os.ReadFile(src); err != nil {
			return set, err
		}
	}
	if err := json.NewDecoder(bytes.NewReader(data)).Decode(&set); err != nil || len(set.Keys) == 0 {
		return set, fmt.Errorf("%s is not a JWKS with keys", src)
	}
	return set, nil
}

func pemPublic(pub *rsa.PublicKey) []byte {
	der, _ := x509.MarshalPKIXPublicKey(pub)
	return pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der})
}
