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
# shellcheck source=../go-tool.sh
. "$HERE/../go-tool.sh"

force_arg "$@"

go_tool_build "$HERE" "$OUT" "$FORCE"
