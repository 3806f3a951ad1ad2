package pki_test

import (
	"bytes"
	"strings"
	"testing"

	"github.com/leasehold/leasehold/internal/pki/pkitest"
)

// TestSignedMessageNamesItsSigner: a message signed with one node's
// certificate verifies as that node's, and verification fails on a changed
// message, a changed signature, a chain of another CA, and no chain.
func TestSignedMessageNamesItsSigner(t *testing.T) {
	d := pkitest.New(t)
	n1 := d.Source(pkitest.Node("n1"))
	n2 := d.Source(pkitest.Node("n2"))
	msg := []byte(`R{"id":"n2","from":"n1","term":7}`)
	chain, sig, err := n1.Sign(msg)
	if err != nil {
		t.Fatal(err)
	}
	id, err := n2.VerifySigned(chain, msg, sig)
	if err != nil || id != pkitest.Node("n1") {
		t.Fatalf("VerifySigned = %v, %v; want node/n1", id, err)
	}

	other := pkitest.New(t).Source(pkitest.Node("n1"))
	ochain, osig, err := other.Sign(msg)
	if err != nil {
		t.Fatal(err)
	}
	badSig := bytes.Clone(sig)
	badSig[len(badSig)-1] ^= 1
	for _, tc := range []struct {
		name       string
		chain      [][]byte
		data, sig  []byte
		wantSubstr string
	}{
		{"changed message", chain, []byte(`R{"id":"n3","from":"n1","term":7}`), sig, "bad signature"},
		{"changed signature", chain, msg, badSig, "bad signature"},
		{"another CA", ochain, msg, osig, "signer's certificate"},
		{"no chain", nil, msg, sig, "without a certificate"},
	} {
		if id, err := n2.VerifySigned(tc.chain, tc.data, tc.sig); err == nil || !strings.Contains(err.Error(), tc.wantSubstr) {
			t.Errorf("%s: VerifySigned = %v, %v; want an error with %q", tc.name, id, err, tc.wantSubstr)
		}
	}
}
