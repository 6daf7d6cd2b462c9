package main

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"flag"
	"fmt"
	"log"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"time"

	"istio.io/istio/operator/pkg/manifest"
	"istio.io/istio/operator/pkg/render"
)

type multiFlag []string

func (m *multiFlag) String() string     { return strings.Join(*m, ",") }
func (m *multiFlag) Set(v string) error { *m = append(*m, v); return nil }

// renderMain prints one revision's istiod objects and its revision-tag webhooks.
func renderMain(args []string) {
	fs := flag.NewFlagSet("render", flag.ExitOnError)
	charts := fs.String("charts", "", "an Istio release's manifests/ directory (charts/, profiles/)")
	revision := fs.String("revision", "", "the revision name (empty: the default revision)")
	hub := fs.String("hub", "docker.io/istio", "image hub")
	tag := fs.String("tag", "", "image tag")
	var tags multiFlag
	fs.Var(&tags, "revision-tag", "a revision tag pointing at this revision (repeatable)")
	check(fs.Parse(args))
	if _, err := os.Stat(filepath.Join(*charts, "charts")); *charts == "" || err != nil {
		log.Fatalf("oracle render: --charts %q is not an Istio manifests/ directory", *charts)
	}
	if *tag == "" {
		log.Fatalf("oracle render: --tag is required")
	}
	sets := []string{
		"installPackagePath=" + *charts, "profile=default",
		// istiod only: no ingress gateway (its Deployment would wait for a sidecar), no
		// CRDs (the base chart; the test API server serves no Istio kinds).
		"components.ingressGateways[0].enabled=false", "components.base.enabled=false",
		"hub=" + *hub, "tag=" + *tag, "revision=" + *revision,
	}
	for i, t := range tags {
		sets = append(sets, fmt.Sprintf("values.revisionTags[%d]=%s", i, t))
	}
	mss, _, err := render.GenerateManifest(nil, sets, false, nil, nil)
	check(err)
	var all []manifest.Manifest
	for _, ms := range mss {
		all = append(all, ms.Manifests...)
	}
	key := func(m manifest.Manifest) string {
		return m.GetKind() + "/" + m.GetNamespace() + "/" + m.GetName()
	}
	sort.SliceStable(all, func(i, j int) bool { return key(all[i]) < key(all[j]) })
	for _, m := range all {
		fmt.Println("---")
		fmt.Print(strings.TrimRight(m.Content, "\n"), "\n")
	}
}

// selfSigned writes DIR/ca.crt (the serving certificate itself, self-signed, IP SAN
// 127.0.0.1) and returns the certificate and key PEM.
func selfSigned(dir string) (certPEM, keyPEM []byte) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	check(err)
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(time.Now().UnixNano()),
		Subject:               pkix.Name{CommonName: "istio-oracle"},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(24 * time.Hour),
		IPAddresses:           []net.IP{net.ParseIP("127.0.0.1")},
		KeyUsage:              x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	check(err)
	kder, err := x509.MarshalECPrivateKey(key)
	check(err)
	certPEM = pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
	keyPEM = pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kder})
	check(os.MkdirAll(dir, 0o755))
	check(os.WriteFile(filepath.Join(dir, "ca.crt"), certPEM, 0o644))
	return certPEM, keyPEM
}
