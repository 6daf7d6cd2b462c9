#!/usr/bin/env bash
# Builds `helm` (helm.sh/helm/v3, the version go.mod pins as a `tool`) into
# $REPO/target/tools/helm, for `helm lint` / `helm template` of charts/meshrev in .ci/run,
# tests/chart.rs and tests/e2e_chart.rs.
#
#   tests/helm/build.sh            build if missing or older than go.mod/go.sum
#   tests/helm/build.sh --force    always rebuild
#
# Env: MESHREV_HELM_BIN overrides the output path. About 2 minutes cold on 2 cores.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
OUT=${MESHREV_HELM_BIN:-$REPO/target/tools/helm}
# shellcheck source=../go-tool.sh
. "$HERE/../go-tool.sh"

force_arg "$@"

need_go
cd "$HERE"
# As helm's Makefile links it: its version, and the Kubernetes version `helm template` and
# `helm lint` assume (client-go v0.X.Y -> 1.X) instead of the v1.20 a plain build assumes.
version=$(go list -m -f '{{.Version}}' helm.sh/helm/v3)
k8s_minor=$(go list -m -f '{{.Version}}' k8s.io/client-go | cut -d. -f2)
ldflags="-X helm.sh/helm/v3/internal/version.version=$version"
for p in helm.sh/helm/v3/pkg/lint/rules helm.sh/helm/v3/pkg/chartutil; do
  ldflags="$ldflags -X $p.k8sVersionMajor=1 -X $p.k8sVersionMinor=$k8s_minor"
done
go_tool_build "$HERE" "$OUT" "$FORCE" helm.sh/helm/v3/cmd/helm "$ldflags"
