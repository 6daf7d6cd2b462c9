// Command kube is a multi-call binary holding a minimal Kubernetes control
// plane for meshrev's end-to-end tests (see tests/support/cluster.rs).
//
//	kube etcd --data-dir DIR --client-port P --peer-port P
//	kube kube-apiserver [kube-apiserver flags...]
//	kube kube-controller-manager [kube-controller-manager flags...]
//	kube gen-certs --dir DIR     writes ca.crt, serving.crt/.key (IP SAN 127.0.0.1),
//	                             sa.key/sa.pub (service-account signing key pair)
//
// With MESHREV_WATCH_STDIN=1 in the environment, a component stops (as on
// SIGTERM, then hard after 5s) once its stdin reaches EOF, i.e. when the
// process that spawned it with a stdin pipe has exited, however it exited.
//
// One component runs per process: genericapiserver.SetupSignalContext panics
// when called twice, and the components register global flags/metrics.
// Built by tests/k8s/build.sh into target/k8s/kube.
package main

import (
	"flag"
	"fmt"
	"io"
	"log"
	"net/url"
	"os"
	"os/signal"
	"path/filepath"
	"syscall"
	"time"
	_ "time/tzdata" // for CronJob time zone support, as upstream

	"github.com/spf13/cobra"
	"go.etcd.io/etcd/server/v3/embed"
	"k8s.io/component-base/cli"
	_ "k8s.io/component-base/logs/json/register"          // JSON log format, as upstream
	_ "k8s.io/component-base/metrics/prometheus/clientgo" // client-go metrics, as upstream
	_ "k8s.io/component-base/metrics/prometheus/version"  // version metric, as upstream
	apiserver "k8s.io/kubernetes/cmd/kube-apiserver/app"
	controllermanager "k8s.io/kubernetes/cmd/kube-controller-manager/app"
)

func usage() {
	fmt.Fprintf(os.Stderr, "usage: %s etcd|kube-apiserver|kube-controller-manager [flags...]\n", filepath.Base(os.Args[0]))
	os.Exit(2)
}

func main() {
	if len(os.Args) < 2 {
		usage()
	}
	sub, args := os.Args[1], os.Args[2:]
	if os.Getenv("MESHREV_WATCH_STDIN") == "1" {
		go watchStdin()
	}
	switch sub {
	case "gen-certs":
		os.Exit(runGenCerts(args))
	case "etcd":
		os.Exit(runEtcd(args))
	case "kube-apiserver":
		os.Exit(runCobra(apiserver.NewAPIServerCommand(), args))
	case "kube-controller-manager":
		os.Exit(runCobra(controllermanager.NewControllerManagerCommand(), args))
	default:
		usage()
	}
}

// watchStdin blocks until stdin reaches EOF (or fails), then asks this process
// to stop gracefully with SIGTERM and exits hard if that takes over 5s.
func watchStdin() {
	_, _ = io.Copy(io.Discard, os.Stdin)
	log.Printf("kube: stdin closed (parent gone), stopping")
	_ = syscall.Kill(os.Getpid(), syscall.SIGTERM)
	time.Sleep(5 * time.Second)
	log.Printf("kube: still running 5s after SIGTERM, exiting")
	os.Exit(1)
}

// runCobra runs an upstream component command as its own main would, but
// with the arguments after the sub-command name.
func runCobra(cmd *cobra.Command, args []string) int {
	cmd.SetArgs(args)
	return cli.Run(cmd)
}

// runEtcd runs a single-member embedded etcd on loopback until SIGTERM/SIGINT.
func runEtcd(args []string) int {
	fs := flag.NewFlagSet("etcd", flag.ExitOnError)
	dataDir := fs.String("data-dir", "", "etcd data directory (required)")
	clientPort := fs.Int("client-port", 2379, "client port on 127.0.0.1")
	peerPort := fs.Int("peer-port", 2380, "peer port on 127.0.0.1")
	logLevel := fs.String("log-level", "warn", "etcd log level (debug, info, warn, error)")
	_ = fs.Parse(args)
	if *dataDir == "" {
		fmt.Fprintln(os.Stderr, "etcd: --data-dir is required")
		return 2
	}

	cfg := embed.NewConfig()
	cfg.Name = "meshrev-test"
	cfg.Dir = *dataDir
	cfg.UnsafeNoFsync = true
	cfg.LogLevel = *logLevel
	cfg.LogOutputs = []string{"stderr"}
	clientURL := url.URL{Scheme: "http", Host: fmt.Sprintf("127.0.0.1:%d", *clientPort)}
	peerURL := url.URL{Scheme: "http", Host: fmt.Sprintf("127.0.0.1:%d", *peerPort)}
	cfg.ListenClientUrls = []url.URL{clientURL}
	cfg.AdvertiseClientUrls = []url.URL{clientURL}
	cfg.ListenPeerUrls = []url.URL{peerURL}
	cfg.AdvertisePeerUrls = []url.URL{peerURL}
	cfg.ListenMetricsUrls = nil
	cfg.InitialCluster = cfg.InitialClusterFromName(cfg.Name)

	e, err := embed.StartEtcd(cfg)
	if err != nil {
		log.Printf("etcd: start: %v", err)
		return 1
	}
	defer e.Close()

	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, syscall.SIGTERM, syscall.SIGINT)

	select {
	case <-e.Server.ReadyNotify():
		log.Printf("etcd: ready, serving clients on %s", clientURL.String())
	case <-time.After(60 * time.Second):
		e.Server.Stop()
		log.Printf("etcd: not ready after 60s")
		return 1
	case s := <-sigs:
		log.Printf("etcd: %v before ready, stopping", s)
		return 0
	}

	select {
	case err := <-e.Err():
		log.Printf("etcd: %v", err)
		return 1
	case s := <-sigs:
		log.Printf("etcd: %v, stopping", s)
		return 0
	}
}
