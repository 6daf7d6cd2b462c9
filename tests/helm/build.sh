#!/usr/bin/env bash
# Builds `helm` (helm.sh/helm/v3, the version go.mod pins) into $REPO/target/tools/helm, for
# `helm lint` / `helm template` of charts/meshrev in CI and for tests/chart.rs.
#
#   tests/helm/build.sh            build if missing or older than go.mod/go.sum
#   tests/helm/build.sh --force    always rebuild
#
# Env: MESHREV_HELM_BIN overrides the output path. Needs only the Go toolchain; Go's build
# and module caches make a rebuild on a fresh clone a cache hit.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
OUT=${MESHREV_HELM_BIN:-$REPO/target/tools/helm}
PKG=helm.sh/helm/v3/cmd/helm

cd "$HERE"
case "${1:-}" in
  --force) FORCE=1 ;;
  "") FORCE=0 ;;
  *) echo "usage: $0 [--force]" >&2; exit 2 ;;
esac

if [ "$FORCE" = 0 ] && [ -x "$OUT" ] && [ "$OUT" -nt go.mod ] && [ "$OUT" -nt go.sum ]; then
  echo "build.sh: $OUT is up to date"
  exit 0
fi
if ! command -v go >/dev/null 2>&1; then
  if [ -x /usr/local/go/bin/go ]; then
    export PATH=/usr/local/go/bin:$PATH
  else
    echo "tests/helm/build.sh: no Go toolchain found (need go >= 1.26.0 on PATH or in /usr/local/go)" >&2
    exit 1
  fi
fi
export GOTOOLCHAIN=local
mkdir -p "$(dirname "$OUT")"
start=$(date +%s)
echo "build.sh: building $OUT from $PKG (go.mod's version; about 3 minutes cold on 2 cores)"
# As helm's Makefile links it: its version, and the Kubernetes version `helm template` and
# `helm lint` assume (client-go v0.X.Y -> 1.X), instead of the v1.20 a plain build assumes.
version=$(go list -m -f '{{.Version}}' helm.sh/helm/v3)
k8s_minor=$(go list -m -f '{{.Version}}' k8s.io/client-go | cut -d. -f2)
ldflags="-s -w -X helm.sh/helm/v3/internal/version.version=$version"
for p in helm.sh/helm/v3/pkg/lint/rules helm.sh/helm/v3/pkg/chartutil; do
  ldflags="$ldflags -X $p.k8sVersionMajor=1 -X $p.k8sVersionMinor=$k8s_minor"
done
go build -trimpath -ldflags="$ldflags" -o "$OUT.tmp.$$" "$PKG"
mv -f "$OUT.tmp.$$" "$OUT"
echo "build.sh: built $OUT ($(du -h "$OUT" | cut -f1)) in $(( $(date +%s) - start ))s"
