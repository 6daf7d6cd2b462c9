#!/usr/bin/env bash
# Builds `promtool` (github.com/prometheus/prometheus/cmd/promtool, the version go.mod pins as
# a `tool`) into $REPO/target/tools/promtool, for `promtool test rules` of the alert rules
# (tests/alert_rules.rs).
#
#   tests/promtool/build.sh            build if missing or older than go.mod/go.sum
#   tests/promtool/build.sh --force    always rebuild
#
# Env: MESHREV_PROMTOOL_BIN overrides the output path. The largest Go build of the tests
# after the control plane: about 7 minutes cold on 2 busy cores, seconds with Go's cache.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
OUT=${MESHREV_PROMTOOL_BIN:-$REPO/target/tools/promtool}
# shellcheck source=../go-tool.sh
. "$HERE/../go-tool.sh"

force_arg "$@"

need_go
cd "$HERE"
# The version promtool reports, as Prometheus' release build sets it (module v0.X.Y is
# Prometheus 3.X.Y: v0.316.0 is 3.16.0).
mv=$(go list -m -f '{{.Version}}' github.com/prometheus/prometheus)
n=${mv#v0.}; n=${n%%.*}
version="$((10#$n / 100)).$((10#$n % 100)).${mv##*.}"
ldflags="-X github.com/prometheus/common/version.Version=$version -X github.com/prometheus/common/version.Revision=$mv"
go_tool_build "$HERE" "$OUT" "$FORCE" github.com/prometheus/prometheus/cmd/promtool "$ldflags"
