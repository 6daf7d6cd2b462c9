#!/usr/bin/env bash
# Builds `promtool` (github.com/prometheus/prometheus, the version go.mod pins) into
# $REPO/target/tools/promtool, for `promtool test rules` of the alert rules (tests/alert_rules.rs).
#
#   tests/promtool/build.sh            build if missing or older than go.mod/go.sum
#   tests/promtool/build.sh --force    always rebuild
#
# Env: MESHREV_PROMTOOL_BIN overrides the output path. Needs only the Go toolchain; Go's build
# and module caches make a rebuild on a fresh clone a cache hit.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
OUT=${MESHREV_PROMTOOL_BIN:-$REPO/target/tools/promtool}
PKG=github.com/prometheus/prometheus/cmd/promtool

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
    echo "tests/promtool/build.sh: no Go toolchain found (need go >= 1.26.0 on PATH or in /usr/local/go)" >&2
    exit 1
  fi
fi
export GOTOOLCHAIN=local
mkdir -p "$(dirname "$OUT")"
start=$(date +%s)
echo "build.sh: building $OUT from $PKG (go.mod's version; about 7 minutes cold on 2 busy cores)"
# The version promtool reports, as Prometheus' release build sets it (module v0.X.Y is
# Prometheus 3.X.Y).
mv=$(go list -m -f '{{.Version}}' github.com/prometheus/prometheus)
n=${mv#v0.}; n=${n%%.*}
version="$((10#$n / 100)).$((10#$n % 100)).${mv##*.}"
ldflags="-s -w -X github.com/prometheus/common/version.Version=$version -X github.com/prometheus/common/version.Revision=$mv"
go build -trimpath -ldflags="$ldflags" -o "$OUT.tmp.$$" "$PKG"
mv -f "$OUT.tmp.$$" "$OUT"
echo "build.sh: built $OUT ($(du -h "$OUT" | cut -f1)) in $(( $(date +%s) - start ))s"
