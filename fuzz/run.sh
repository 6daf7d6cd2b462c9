#!/usr/bin/env bash
# Fuzzes every cargo-fuzz target for SECONDS each (default 60): `fuzz/run.sh 300`.
# Installs what it needs (the nightly toolchain, cargo-fuzz). Each target starts from its
# committed seeds in fuzz/corpus/<target>/ (new inputs found land there too, git-ignored).
# A crash, a panic, a leak or an input slower than 10 s fails the run; the input is kept
# in fuzz/artifacts/<target>/ (with the log of the last run) — make it a regression test,
# and commit it as fuzz/corpus/<target>/regress-<what>.
# FUZZ_SEED=N makes the mutations repeatable (CI sets it, so that CI is not flaky); unset,
# every run explores differently. FUZZ_TARGETS="a b" runs only those targets.
set -euo pipefail
secs=${1:-60}
cd "$(dirname "$0")"
export PATH="$HOME/.cargo/bin:$PATH"

rustup toolchain list | grep -q '^nightly' || rustup toolchain install nightly --profile minimal
cargo +nightly fuzz --version >/dev/null 2>&1 || cargo install cargo-fuzz --locked

cargo +nightly fuzz build
status=0
summary=""
for t in ${FUZZ_TARGETS:-$(cargo +nightly fuzz list)}; do
  mkdir -p "corpus/$t" "artifacts/$t"
  log="artifacts/$t/last-run.log"
  if cargo +nightly fuzz run "$t" "corpus/$t" -- \
      -max_total_time="$secs" -timeout=10 -rss_limit_mb=2048 -max_len=16384 \
      -print_final_stats=1 -seed="${FUZZ_SEED:-0}" >"$log" 2>&1; then
    result=ok
  else
    result=FAILED
    status=1
    grep -E -A4 "panicked|ERROR: libFuzzer|SUMMARY|Test unit written|Failing input" "$log" | grep -v '^\s*[0-9]*: \|^\s*at ' | cut -c1-400
  fi
  runs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | grep -o '[0-9]*$' || echo "?")
  summary+="$t: $result, $runs execs in ${secs}s, corpus $(ls "corpus/$t" | wc -l) inputs"$'\n'
done
printf '%s' "$summary"
exit $status
