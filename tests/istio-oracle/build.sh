#!/usr/bin/env bash
# Builds Istio's own injection webhook (see main.go) into $REPO/target/istio-oracle/oracle,
# the reference that tests/differential.rs compares meshrev with.
#
#   tests/istio-oracle/build.sh           build if missing or older than *.go/go.mod/go.sum
#   tests/istio-oracle/build.sh --force   always rebuild
#
# Env: MESHREV_ORACLE_BIN overrides the output path. Go's normal caches (GOCACHE,
# GOMODCACHE) are used, so a rebuild on a fresh clone is a cache hit. Needs only the Go
# toolchain (>= the go directive in go.mod, 1.26.0). The charts it serves (Istio 1.30.3's)
# are read at run time from ../shared/conformance/istio/1.30.3/chart, not built in.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
OUT=${MESHREV_ORACLE_BIN:-$REPO/target/istio-oracle/oracle}

cd "$HERE"

need_go() {
  # Find a Go toolchain: PATH first, then the usual install location.
  if ! command -v go >/dev/null 2>&1; then
    if [ -x /usr/local/go/bin/go ]; then
      export PATH=/usr/local/go/bin:$PATH
    else
      echo "build.sh: no Go toolchain found (need go >= 1.26.0 on PATH or in /usr/local/go)" >&2
      exit 1
    fi
  fi
  # Never let `go` download another toolchain (no network for that here).
  export GOTOOLCHAIN=local
}

up_to_date() {
  [ -x "$OUT" ] || return 1
  local f
  for f in *.go go.mod go.sum; do
    [ "$OUT" -nt "$f" ] || return 1
  done
}

case "${1:-}" in
  --force) FORCE=1 ;;
  "") FORCE=0 ;;
  *) echo "usage: $0 [--force]" >&2; exit 2 ;;
esac

if [ "$FORCE" = 0 ] && up_to_date; then
  echo "build.sh: $OUT is up to date"
  exit 0
fi

need_go
mkdir -p "$(dirname "$OUT")"
start=$(date +%s)
echo "build.sh: building $OUT (first build takes minutes; later builds use Go's build cache)"
# -trimpath makes the cache entries independent of the checkout path, so a
# fresh clone elsewhere hits the cache; -s -w shrinks the binary and the link.
go build -trimpath -ldflags='-s -w' -o "$OUT.tmp.$$" .
mv -f "$OUT.tmp.$$" "$OUT"
echo "build.sh: built $OUT ($(du -h "$OUT" | cut -f1)) in $(( $(date +%s) - start ))s"
