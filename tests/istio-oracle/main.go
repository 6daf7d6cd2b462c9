// Command oracle serves Istio's own sidecar injection handler, built the way
// istiod builds it, so that tests/differential.rs can compare meshrev with it.
//
//	oracle --charts DIR --port N [--hub H --tag T]
//	oracle --injector-dir DIR --revision R --tls-dir TLS --port N
//	oracle render --charts DIR --revision R --hub H --tag T [--revision-tag T]...
//
// DIR is a copy of an Istio release's manifests/ (charts/ and profiles/), e.g.
// ../shared/conformance/istio/1.30.3/chart: the injection templates, values and
// mesh config are rendered from it, so the answers are that release's (the Go
// code is the module's, see go.mod). Endpoints on 127.0.0.1:N (plain HTTP):
//
//	POST /inject     Istio's handler: AdmissionReview in, AdmissionReview out
//	POST /roundtrip  a Pod in, the same Pod as Go (and so the API server)
//	                 serializes it out: Istio's patch is computed against that
//
// With --injector-dir the templates, values and mesh config are not rendered but read
// from files config, values and mesh in DIR (the data of an installed revision's
// istio-sidecar-injector-<rev> and istio-<rev> ConfigMaps), so the handler injects what
// that revision's istiod would. With --tls-dir it serves HTTPS with a certificate for
// 127.0.0.1 whose CA it writes to TLS/ca.crt (for a webhook's caBundle).
//
// "render" prints, as multi-document YAML sorted by kind, namespace and name, what
// `istioctl install --revision R --set hub=H --set tag=T` renders from the charts in
// DIR (profile default's istiod alone: Deployment, Service, ConfigMaps, webhooks, RBAC),
// plus the istio-revision-tag-<tag> MutatingWebhookConfiguration of each --revision-tag,
// as `istioctl tag generate` renders it (the chart's revision-tags template).
//
// Prints "ready 127.0.0.1:PORT" on stdout once it serves (--port 0 picks a free port). With MESHREV_WATCH_STDIN=1 it exits
// when its stdin reaches EOF (its parent is gone), as tests/k8s does.
// Built by tests/istio-oracle/build.sh into target/istio-oracle/oracle.
package main

import (
	"crypto/tls"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"

	corev1 "k8s.io/api/core/v1"

	"istio.io/istio/operator/pkg/render"
	"istio.io/istio/pilot/pkg/features"
	"istio.io/istio/pilot/pkg/model"
	"istio.io/istio/pkg/config/mesh"
	"istio.io/istio/pkg/config/mesh/meshwatcher"
	"istio.io/istio/pkg/kube/inject"
	"istio.io/istio/pkg/kube/multicluster"
)

func main() {
	if len(os.Args) > 1 && os.Args[1] == "render" {
		renderMain(os.Args[2:])
		return
	}
	charts := flag.String("charts", "", "an Istio release's manifests/ directory (charts/, profiles/)")
	port := flag.Int("port", 0, "port to listen on (127.0.0.1); 0 picks a free one")
	hub := flag.String("hub", "docker.io/istio", "proxy image hub")
	tag := flag.String("tag", "1.30.3", "proxy image tag")
	injectorDir := flag.String("injector-dir", "", "read config, values and mesh from this directory instead of rendering the charts")
	revision := flag.String("revision", "", "the revision this injector serves (with --injector-dir)")
	tlsDir := flag.String("tls-dir", "", "serve HTTPS with a generated certificate; its CA goes to DIR/ca.crt")
	flag.Parse()
	if os.Getenv("MESHREV_WATCH_STDIN") == "1" {
		go func() {
			_, _ = io.Copy(io.Discard, os.Stdin)
			log.Printf("oracle: stdin closed (parent gone), exiting")
			os.Exit(0)
		}()
	}
	if _, err := os.Stat(filepath.Join(*charts, "charts")); *injectorDir == "" && (*charts == "" || err != nil) {
		log.Fatalf("oracle: --charts %q is not an Istio manifests/ directory (needs charts/ and profiles/)", *charts)
	}

	// Native sidecars unconditionally, as meshrev's 1.30 default when it sees no nodes.
	// (Auto would look at the nodes' kubelet versions; with none it gives classic sidecars.)
	features.EnableNativeSidecars = features.NativeSidecarModeEnabled

	var config, values, meshText string
	if *injectorDir != "" {
		read := func(name string) string {
			b, err := os.ReadFile(filepath.Join(*injectorDir, name))
			check(err)
			return string(b)
		}
		config, values, meshText = read("config"), read("values"), read("mesh")
	} else {
		config, values, meshText = renderInjectorConfig(*charts, *hub, *tag)
	}
	dir, err := os.MkdirTemp("", "istio-oracle")
	check(err)
	defer os.RemoveAll(dir)
	configFile, valuesFile := filepath.Join(dir, "config"), filepath.Join(dir, "values")
	check(os.WriteFile(configFile, []byte(config), 0o644))
	check(os.WriteFile(valuesFile, []byte(values), 0o644))
	watcher, err := inject.NewFileWatcher(configFile, valuesFile)
	check(err)

	// The mesh config as istiod reads it: the release's defaults overlaid by the istio ConfigMap.
	meshConfig, err := mesh.ApplyMeshConfig(meshText, mesh.DefaultMeshConfig())
	check(err)
	env := &model.Environment{Watcher: meshwatcher.NewTestWatcher(meshConfig)}
	// istiod always has ProxyConfigs in its push context; without them the handler would
	// use Istio's built-in proxy defaults instead of the mesh's defaultConfig.
	env.SetPushContext(&model.PushContext{
		ProxyConfigs: model.GetProxyConfigs(model.NewFakeStore(), meshConfig),
	})

	mux := http.NewServeMux()
	_, err = inject.NewWebhook(inject.WebhookParameters{
		Watcher:      watcher,
		Env:          env,
		Mux:          mux,
		Revision:     *revision,
		MultiCluster: multicluster.NewFakeController(),
	})
	check(err)
	mux.HandleFunc("/roundtrip", roundtrip)

	ln, err := net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", *port))
	check(err)
	// With --port 0 the kernel picks a free port: say which (no race with other processes).
	if *tlsDir != "" {
		certPEM, keyPEM := selfSigned(*tlsDir)
		cert, err := tls.X509KeyPair(certPEM, keyPEM)
		check(err)
		ln = tls.NewListener(ln, &tls.Config{Certificates: []tls.Certificate{cert}, NextProtos: []string{"http/1.1"}})
	}
	fmt.Println("ready", ln.Addr().String())
	// One log line per injection request, written before Istio's handler answers, so a test
	// can count which injector a pod went through (tests/e2e_adopt.rs).
	var calls atomic.Int64
	log.Fatal(http.Serve(ln, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if strings.HasPrefix(r.URL.Path, "/inject") {
			fmt.Fprintf(os.Stderr, "oracle: /inject request %d\n", calls.Add(1))
		}
		mux.ServeHTTP(w, r)
	})))
}

// renderInjectorConfig renders the charts as Istio's own injection tests do and returns
// the istio-sidecar-injector ConfigMap's config and values and the istio ConfigMap's mesh.
func renderInjectorConfig(charts, hub, tag string) (config, values, meshText string) {
	sets := []string{
		"installPackagePath=" + charts, "profile=empty", "components.pilot.enabled=true",
		"hub=" + hub, "tag=" + tag,
	}
	sets2, _, err := render.GenerateManifest(nil, sets, false, nil, nil)
	check(err)
	for _, set := range sets2 {
		for _, m := range set.Manifests {
			if m.GetKind() != "ConfigMap" {
				continue
			}
			data, _ := m.Object["data"].(map[string]any)
			switch m.GetName() {
			case "istio-sidecar-injector":
				config, _ = data["config"].(string)
				values, _ = data["values"].(string)
			case "istio":
				meshText, _ = data["mesh"].(string)
			}
		}
	}
	if config == "" || values == "" || meshText == "" {
		log.Fatalf("oracle: the charts in %s rendered no injector or mesh ConfigMap", charts)
	}
	return config, values, meshText
}

// roundtrip answers with the posted Pod as Go serializes it.
func roundtrip(w http.ResponseWriter, r *http.Request) {
	var pod corev1.Pod
	if err := json.NewDecoder(r.Body).Decode(&pod); err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(&pod)
}

func check(err error) {
	if err != nil {
		log.Fatalf("oracle: %v", err)
	}
}
