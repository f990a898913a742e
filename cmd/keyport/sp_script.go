package main

import (
	"context"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"os"

	"github.com/keyport/keyport"
	"github.com/keyport/keyport/keywrap"
)

// NewKeysFile is what `sp script` writes for the provider's second keys:
// each key RSA-AES-wrapped (the key package's layout) to the provider's own
// public key, so that they never rest on disk in clear.
type NewKeysFile struct {
	EID             keyport.EID                 `json:"eid"`
	AID             keyport.AID                 `json:"aid"`
	KVN             int                         `json:"kvn"`
	OAEPHash        keyport.OAEPHash            `json:"oaep_hash"`
	PublicKeySHA256 string                      `json:"public_key_sha256"`
	Wrapped         map[keyport.KeyUsage][]byte `json:"wrapped"` // base64 in JSON
	KCV             map[keyport.KeyUsage]string `json:"kcv"`
}

// cmdSPScript builds the provider's second-key script (flow 7) from its key
// package, its new keys and the sequence counter keyport reports.
func cmdSPScript(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet("keyport sp script", flag.ContinueOnError)
	pkgPath := fs.String("package", "", "the key package downloaded after the claim")
	keyPath := fs.String("key", "", "the provider's private key (PEM) the package is wrapped to")
	jwksSrc := fs.String("jwks", "", "receipt keys to verify the package: a JWKS file or the portal's URL (recommended)")
	newKeysPath := fs.String("new-keys", "", "the new keys: a file written by an earlier --generate, or JSON {\"keys\":{\"enc\":hex,\"mac\":hex,\"dek\":hex}}")
	generate := fs.Bool("generate", false, "generate random AES-128 second keys")
	counter := fs.Int("counter", -1, "the domain's sequence counter as keyport reports it (GET /api/v1/domains/{eid}/{aid})")
	newKVN := fs.Int("new-kvn", 0x31, "key version number of the new keys: 0x31 is hex, as keyport shows KVNs; without 0x the number is decimal")
	out := fs.String("out", "", "write the script (the POST body) here instead of standard output")
	keysOut := fs.String("new-keys-out", "", "where --generate writes the new keys, wrapped to your public key (default <eid>-<aid>.keys.json)")
	submitURL := fs.String("submit", "", "submit the script to the portal at this URL (e.g. http://localhost:8080) with the API token of --token-file; the counter and --jwks then default to the portal's")
	tokenFile := fs.String("token-file", "", "with --submit: file holding your API token")
	rotate := fs.Bool("rotate", false, "build a rotation of a PERSONALIZED domain (or of an ASSIGNED one from the pending KVN of an unproven second-key script): from the keys of --current-keys (a file --generate wrote) to the next KVN")
	currentPath := fs.String("current-keys", "", "with --rotate: the domain's current keys, a file an earlier --generate wrote")
	if err := parseArgs(fs, args); err != nil {
		return err
	}
	if *rotate {
		return spRotate(*keyPath, *currentPath, *newKeysPath, *generate, *counter, *out, *keysOut)
	}
	if *pkgPath == "" || *keyPath == "" || (*counter < 0 && *submitURL == "") || (*newKeysPath == "") == !*generate {
		return exitError{2, errors.New("usage: keyport sp script --package P --key sp.pem (--new-keys FILE | --generate) (--counter N | --submit URL --token-file F) [--jwks URL|FILE] [--out FILE]")}
	}
	var portal *portalClient
	if *submitURL != "" {
		var err error
		if portal, err = newPortalClient(*submitURL, *tokenFile, "--submit"); err != nil {
			return err
		}
		if *jwksSrc == "" {
			*jwksSrc = portal.base
		}
	}
	pkgData, err := os.ReadFile(*pkgPath)
	if err != nil {
		return err
	}
	priv, err := loadPrivateKey(*keyPath)
	if err != nil {
		return err
	}
	var first *UnwrappedKeys
	if *jwksSrc != "" {
		set, err := loadJWKS(ctx, *jwksSrc)
		if err != nil {
			return err
		}
		first, err = unwrapPackage(pkgData, set, priv)
		if err != nil {
			return err
		}
	} else {
		fmt.Fprintln(stderr, "keyport sp script: warning: no --jwks, the package's signature is not checked (its KCVs are)")
		if first, err = unwrapUnverified(pkgData, priv); err != nil {
			return err
		}
	}
	second, err := secondKeys(*newKeysPath, *generate, priv)
	if err != nil {
		return err
	}
	firstKeys, err := hexKeys(first.Keys)
	if err != nil {
		return err
	}
	if *counter < 0 {
		if *counter, err = portal.counter(ctx, first.EID, first.AID); err != nil {
			return err
		}
	}
	req, err := keyport.SecondKeyScript(first.AID, first.KVN, *counter, *newKVN, firstKeys, second)
	if err != nil {
		return err
	}
	if *generate {
		path := *keysOut
		if path == "" {
			path = fmt.Sprintf("%s-%s.keys.json", first.EID, first.AID)
		}
		if err := writeNewKeys(path, first, *newKVN, second, &priv.PublicKey, req.Expect.KCV); err != nil {
			return err
		}
		fmt.Fprintf(stderr, "new keys (KVN 0x%02X) wrapped to your public key in %s\n", *newKVN, path)
	}
	b, _ := json.MarshalIndent(req, "", "  ")
	b = append(b, '\n')
	if portal != nil {
		if *out != "" {
			if err := os.WriteFile(*out, b, 0o644); err != nil {
				return err
			}
		}
		job, err := portal.submit(ctx, first.EID, first.AID, b)
		if err != nil {
			return err
		}
		fmt.Fprintf(stdout, "script for %s %s (counter %d) submitted: job %s %s\nfollow it in the portal: %s/portal/jobs/%s\n",
			first.EID, first.AID, *counter, job.ID, job.State, portal.base, job.ID)
		return nil
	}
	return writeScript(req, *out)
}

// spRotate builds a rotation script (keyport.RotateScript): the current
// keys and their KVN, EID and AID come from a keys file --generate wrote,
// the next keys from --new-keys or --generate (written, wrapped, to
// <eid>-<aid>-<kvn>.keys.json by default).
func spRotate(keyPath, currentPath, newKeysPath string, generate bool, counter int, out, keysOut string) error {
	if keyPath == "" || currentPath == "" || counter < 0 || (newKeysPath == "") == !generate {
		return exitError{2, errors.New("usage: keyport sp script --rotate --key sp.pem --current-keys FILE (--new-keys FILE | --generate) --counter N [--out FILE]")}
	}
	priv, err := loadPrivateKey(keyPath)
	if err != nil {
		return err
	}
	b, err := os.ReadFile(currentPath)
	if err != nil {
		return err
	}
	var cur NewKeysFile
	if err := json.Unmarshal(b, &cur); err != nil || cur.KVN == 0 || cur.EID == "" || cur.AID == "" {
		return fmt.Errorf("%s: not a keys file written by `keyport sp script --generate` (eid, aid, kvn, wrapped keys)", currentPath)
	}
	current, err := secondKeys(currentPath, false, priv)
	if err != nil {
		return err
	}
	next, err := secondKeys(newKeysPath, generate, priv)
	if err != nil {
		return err
	}
	req, err := keyport.RotateScript(cur.AID, cur.KVN, counter, current, next)
	if err != nil {
		return err
	}
	if generate {
		path := keysOut
		if path == "" {
			path = fmt.Sprintf("%s-%s-%02X.keys.json", cur.EID, cur.AID, cur.KVN+1)
		}
		first := &UnwrappedKeys{EID: cur.EID, AID: cur.AID}
		if err := writeNewKeys(path, first, cur.KVN+1, next, &priv.PublicKey, req.Expect.KCV); err != nil {
			return err
		}
		fmt.Fprintf(stderr, "next keys (KVN 0x%02X) wrapped to your public key in %s\n", cur.KVN+1, path)
	}
	return writeScript(req, out)
}

func writeScript(req keyport.ScriptRequest, out string) error {
	b, _ := json.MarshalIndent(req, "", "  ")
	b = append(b, '\n')
	if out == "" {
		_, err := stdout.Write(b)
		return err
	}
	return os.WriteFile(out, b, 0o644)
}

// unwrapUnverified unwraps a key package without its signature, checking
// each key against the package's KCV.
func unwrapUnverified(pkgData []byte, priv *rsa.PrivateKey) (*UnwrappedKeys, error) {
	var j keyport.JWS
	if err := json.Unmarshal(pkgData, &j); err != nil {
		return nil, fmt.Errorf("the package is not a flattened JWS: %w", err)
	}
	payload, err := base64.RawURLEncoding.DecodeString(j.Payload)
	if err != nil {
		return nil, errors.New("the package payload is not base64url")
	}
	var p keyport.KeyPackage
	if err := json.Unmarshal(payload, &p); err != nil || len(p.Keys) == 0 {
		return nil, errors.New("the package payload is not a key package")
	}
	return unwrapKeys(&p, priv)
}

func hexKeys(m map[keyport.KeyUsage]string) (map[keyport.KeyUsage][]byte, error) {
	out := map[keyport.KeyUsage][]byte{}
	for _, u := range keyport.Usages {
		b, err := hex.DecodeString(m[u])
		if err != nil || len(b) == 0 {
			return nil, fmt.Errorf("the %s key is missing or not hex", u)
		}
		out[u] = b
	}
	return out, nil
}

// secondKeys generates the new keys or reads them: a NewKeysFile (unwrapped
// with the provider's key) or clear hex keys {"keys":{…}}.
func secondKeys(path string, generate bool, priv *rsa.PrivateKey) (map[keyport.KeyUsage][]byte, error) {
	if generate {
		out := map[keyport.KeyUsage][]byte{}
		for _, u := range keyport.Usages {
			k := make([]byte, 16)
			if _, err := rand.Read(k); err != nil {
				return nil, err
			}
			out[u] = k
		}
		return out, nil
	}
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	var f struct {
		Keys     map[keyport.KeyUsage]string `json:"keys"`
		Wrapped  map[keyport.KeyUsage][]byte `json:"wrapped"`
		OAEPHash keyport.OAEPHash            `json:"oaep_hash"`
	}
	if err := json.Unmarshal(b, &f); err != nil {
		return nil, fmt.Errorf("%s: not a keys file: %w", path, err)
	}
	if len(f.Wrapped) > 0 {
		hash, err := keywrap.ParseOAEPHash(string(f.OAEPHash))
		if err != nil {
			return nil, fmt.Errorf("%s: %w", path, err)
		}
		out := map[keyport.KeyUsage][]byte{}
		for _, u := range keyport.Usages {
			k, err := keywrap.UnwrapRSAAES(priv, f.Wrapped[u], hash)
			if err != nil {
				return nil, fmt.Errorf("%s: unwrap %s key: %w", path, u, err)
			}
			out[u] = k
		}
		return out, nil
	}
	return hexKeys(f.Keys)
}

func writeNewKeys(path string, first *UnwrappedKeys, kvn int, keys map[keyport.KeyUsage][]byte, pub *rsa.PublicKey, kcv map[keyport.KeyUsage]string) error {
	der, _ := x509.MarshalPKIXPublicKey(pub)
	sum := sha256.Sum256(der)
	f := NewKeysFile{EID: first.EID, AID: first.AID, KVN: kvn, OAEPHash: keyport.OAEPSHA256,
		PublicKeySHA256: hex.EncodeToString(sum[:]), Wrapped: map[keyport.KeyUsage][]byte{}, KCV: kcv}
	hash, err := keywrap.ParseOAEPHash(string(f.OAEPHash))
	if err != nil {
		return err
	}
	for _, u := range keyport.Usages {
		w, err := keywrap.WrapRSAAES(pub, keys[u], hash)
		if err != nil {
			return err
		}
		f.Wrapped[u] = w
	}
	b, _ := json.MarshalIndent(f, "", "  ")
	return writeNewSecret(path, append(b, '\n'))
}
