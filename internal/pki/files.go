package pki

import "path/filepath"

// Where certificates live in a directory, as `leasehold certs` writes them
// and every runner of a local cluster reads them: the CA as ca.pem and
// ca-key.pem, each certificate as <role>-<name>.pem and <role>-<name>-key.pem.

// CAFiles returns the paths of the CA's certificate and key in dir.
func CAFiles(dir string) (cert, key string) {
	return filepath.Join(dir, "ca.pem"), filepath.Join(dir, "ca-key.pem")
}

// CertFiles returns the paths of id's certificate and key in dir.
func CertFiles(dir string, id Identity) (cert, key string) {
	base := filepath.Join(dir, id.Role.String()+"-"+id.Name)
	return base + ".pem", base + "-key.pem"
}
