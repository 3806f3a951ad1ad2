package pki

import (
	"crypto"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"errors"
	"fmt"
)

// Sign signs data with the Source's current private key and returns the
// signature and the certificate chain (DER, leaf first) that a receiver
// checks it with (VerifySigned). It is for messages that travel outside a
// TLS connection, such as gossip, whose sender must still be known by its
// certificate. ECDSA and RSA keys sign a SHA-256 digest; Ed25519 signs
// data itself.
func (s *Source) Sign(data []byte) (chain [][]byte, sig []byte, err error) {
	m := s.material()
	signer, ok := m.cert.PrivateKey.(crypto.Signer)
	if !ok {
		return nil, nil, fmt.Errorf("pki: the key of %s cannot sign (%T)", s.files[0], m.cert.PrivateKey)
	}
	if _, ok := signer.(ed25519.PrivateKey); ok {
		sig, err = signer.Sign(rand.Reader, data, crypto.Hash(0))
	} else {
		digest := sha256.Sum256(data)
		sig, err = signer.Sign(rand.Reader, digest[:], crypto.SHA256)
	}
	if err != nil {
		return nil, nil, fmt.Errorf("pki: sign: %w", err)
	}
	return m.cert.Certificate, sig, nil
}

// VerifySigned checks that sig is a signature of data by the leaf of chain
// (as Sign returns them), that the leaf verifies against the Source's
// current CA bundle, and returns the identity it carries. The caller
// decides whether that identity may say what data says.
func (s *Source) VerifySigned(chain [][]byte, data, sig []byte) (Identity, error) {
	if len(chain) == 0 {
		return Identity{}, errors.New("pki: a signed message without a certificate")
	}
	leaf, err := x509.ParseCertificate(chain[0])
	if err != nil {
		return Identity{}, fmt.Errorf("pki: signer's certificate: %w", err)
	}
	inter := x509.NewCertPool()
	for _, der := range chain[1:] {
		c, err := x509.ParseCertificate(der)
		if err != nil {
			return Identity{}, fmt.Errorf("pki: signer's chain: %w", err)
		}
		inter.AddCert(c)
	}
	m := s.material()
	if _, err := leaf.Verify(x509.VerifyOptions{Roots: m.pool, Intermediates: inter,
		KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny}}); err != nil {
		return Identity{}, fmt.Errorf("pki: signer's certificate: %w", err)
	}
	var algo x509.SignatureAlgorithm
	switch leaf.PublicKeyAlgorithm {
	case x509.ECDSA:
		algo = x509.ECDSAWithSHA256
	case x509.RSA:
		algo = x509.SHA256WithRSA
	case x509.Ed25519:
		algo = x509.PureEd25519
	default:
		return Identity{}, fmt.Errorf("pki: signer's key type %v is not supported", leaf.PublicKeyAlgorithm)
	}
	if err := leaf.CheckSignature(algo, data, sig); err != nil {
		return Identity{}, fmt.Errorf("pki: bad signature: %w", err)
	}
	return IdentityOf(leaf)
}
