#!/usr/bin/env bash
# Builds the test control plane (etcd + kube-apiserver + kube-controller-manager
# in one multi-call binary, see main.go) into $REPO/target/k8s/kube.
#
#   tests/k8s/build.sh                    build if missing or older than *.go/go.mod/go.sum
#   tests/k8s/build.sh --force            always rebuild
#   tests/k8s/build.sh update-deps [V]    regenerate go.mod/go.sum for k8s.io/kubernetes vV
#                                         (default: the version go.mod requires now)
#
# Env: MESHREV_KUBE_BIN overrides the output path. Go's normal caches (GOCACHE,
# GOMODCACHE) are used, so a rebuild on a fresh clone of the repo is a cache hit.
# Needs only the Go toolchain (>= the go directive in go.mod, 1.26.0): the
# harness generates its keys and certificates with this binary (`kube gen-certs`),
# so no openssl or other apt package is required.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
OUT=${MESHREV_KUBE_BIN:-$REPO/target/k8s/kube}

cd "$HERE"
# shellcheck source=../go-tool.sh
. "$HERE/../go-tool.sh"

update_deps() {
  need_go
  local v=${1:-}
  if [ -z "$v" ]; then
    v=$(go list -m -f '{{.Version}}' k8s.io/kubernetes)
    v=${v#v}
  fi
  v=${v#v}
  local staging=v0.${v#1.}
  local gomod
  gomod=$(go mod download -json "k8s.io/kubernetes@v$v" | sed -n 's/.*"GoMod": "\(.*\)".*/\1/p')
  [ -f "$gomod" ] || { echo "update-deps: cannot download k8s.io/kubernetes@v$v" >&2; exit 1; }
  # Drop old replaces of k8s.io modules, then add one per staging module of this release.
  for m in $(go mod edit -json | sed -n 's/.*"Path": "\(k8s\.io\/[^"]*\)".*/\1/p' | sort -u); do
    go mod edit -dropreplace="$m" 2>/dev/null || true
  done
  local n=0
  for m in $(sed -n 's|^[[:space:]]*\(k8s\.io/[^ ]*\) => \./staging/.*|\1|p' "$gomod"); do
    go mod edit -replace="$m=$m@$staging"
    n=$((n + 1))
  done
  echo "update-deps: k8s.io/kubernetes v$v, $n staging modules replaced by $staging"
  go mod edit -require="k8s.io/kubernetes@v$v"
  go get "go.etcd.io/etcd/server/v3@$(sed -n 's|^[[:space:]]*go\.etcd\.io/etcd/server/v3 \(v[^ ]*\).*|\1|p' "$gomod")"
  go mod tidy
}

case "${1:-}" in
  update-deps) shift; update_deps "$@"; exit 0 ;;
  --force) FORCE=1 ;;
  "") FORCE=0 ;;
  *) echo "usage: $0 [--force | update-deps [VERSION]]" >&2; exit 2 ;;
esac

go_tool_build "$HERE" "$OUT" "$FORCE"
