package kubetest

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/hex"
	"encoding/pem"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"

	"github.com/weft-net/weft/etcd/etcdtest"
)

// files are what the API server reads at start; Restart reuses them, so
// clients keep trusting its certificate and their tokens stay valid.
type files struct {
	ca, cert, key string // serving certificate and its CA
	tokens        string // --token-auth-file
	adminToken    string
	saKey, saPub  string // ServiceAccount token signing key pair
}

func writeFiles(dir string, addr netip.Addr) (files, error) {
	tlsDir := filepath.Join(dir, "tls")
	if err := os.Mkdir(tlsDir, 0o700); err != nil {
		return files{}, fmt.Errorf("write API server files: %w", err)
	}
	// etcdtest's CA and server certificate serve the API server as well.
	tf, err := etcdtest.WriteTLSFiles(tlsDir, addr.String(), "localhost")
	if err != nil {
		return files{}, fmt.Errorf("write API server certificate: %w", err)
	}
	f := files{
		ca:     tf.CA,
		cert:   tf.ServerCert,
		key:    tf.ServerKey,
		tokens: filepath.Join(dir, "tokens.csv"),
		saKey:  filepath.Join(dir, "sa.key"),
		saPub:  filepath.Join(dir, "sa.pub"),
	}

	tok := make([]byte, 16)
	if _, err := rand.Read(tok); err != nil {
		return f, fmt.Errorf("generate admin token: %w", err)
	}
	f.adminToken = hex.EncodeToString(tok)
	// token,user,uid,groups: system:masters passes every authorizer.
	line := f.adminToken + ",kubetest-admin,kubetest-admin,system:masters\n"
	if err := os.WriteFile(f.tokens, []byte(line), 0o600); err != nil {
		return f, fmt.Errorf("write token file: %w", err)
	}

	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return f, fmt.Errorf("generate ServiceAccount signing key: %w", err)
	}
	priv, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return f, fmt.Errorf("encode ServiceAccount signing key: %w", err)
	}
	pub, err := x509.MarshalPKIXPublicKey(&key.PublicKey)
	if err != nil {
		return f, fmt.Errorf("encode ServiceAccount public key: %w", err)
	}
	if err := writePEM(f.saKey, "PRIVATE KEY", priv); err != nil {
		return f, err
	}
	return f, writePEM(f.saPub, "PUBLIC KEY", pub)
}

func writePEM(name, typ string, der []byte) error {
	b := pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der})
	if err := os.WriteFile(name, b, 0o600); err != nil {
		return fmt.Errorf("write %s: %w", name, err)
	}
	return nil
}
