# Shared by the scripts that build the Go programs the tests run (tests/k8s/build.sh,
# tests/istio-oracle/build.sh, …): find the Go toolchain, and build a module's main package
# into target/ only when it is missing or older than its sources. Source it, don't run it.
#
#   go_tool_build DIR OUT FORCE [PKG [LDFLAGS]]
#                                 build DIR's main package (or PKG, e.g. a `tool` of DIR's
#                                 go.mod) into OUT (FORCE=1: always), with LDFLAGS added
#   force_arg "$@"                FORCE from the script's argument (none or --force)
#
# Go's normal caches (GOCACHE, GOMODCACHE) are used, so a rebuild on a fresh clone is a
# cache hit. Needs only the Go toolchain (>= the go directive in DIR/go.mod).

need_go() {
  # Find a Go toolchain: PATH first, then the usual install location.
  if ! command -v go >/dev/null 2>&1; then
    if [ -x /usr/local/go/bin/go ]; then
      export PATH=/usr/local/go/bin:$PATH
    else
      echo "build: no Go toolchain found (need go >= 1.26.0 on PATH or in /usr/local/go)" >&2
      exit 1
    fi
  fi
  # Never let `go` download another toolchain (no network for that here).
  export GOTOOLCHAIN=local
}

go_tool_build() {
  local dir=$1 out=$2 force=${3:-0} pkg=${4:-.} ldflags=${5:-}
  if [ "$force" = 0 ] && [ -x "$out" ]; then
    local f fresh=1
    for f in "$dir"/*.go "$dir"/go.mod "$dir"/go.sum; do
      [ "$out" -nt "$f" ] || fresh=0
    done
    if [ "$fresh" = 1 ]; then
      echo "build: $out is up to date"
      return 0
    fi
  fi
  need_go
  mkdir -p "$(dirname "$out")"
  local start
  start=$(date +%s)
  echo "build: building $out (the first build takes minutes; later builds use Go's build cache)"
  # -trimpath makes the cache entries independent of the checkout path, so a fresh clone
  # elsewhere hits the cache; -s -w shrinks the binary and the link.
  (cd "$dir" && go build -trimpath -ldflags="-s -w $ldflags" -o "$out.tmp.$$" "$pkg")
  mv -f "$out.tmp.$$" "$out"
  echo "build: built $out ($(du -h "$out" | cut -f1)) in $(( $(date +%s) - start ))s"
}

# Sets FORCE from a build script's only argument: none (0) or --force (1).
force_arg() {
  case "${1:-}" in
    --force) FORCE=1 ;;
    "") FORCE=0 ;;
    *) echo "usage: $0 [--force]" >&2; exit 2 ;;
  esac
}
