#!/usr/bin/env bash
# Runs every fuzz target in fuzz/ (cargo-fuzz, libFuzzer) for SECONDS each (default 20), from
# the seed corpora in fuzz/corpus/ (left untouched: new inputs go to a temporary corpus).
# A crash stops the run; its input is in fuzz/artifacts/<target>/ and becomes a regression
# test. A longer run: scripts/fuzz.sh 3600, or one target: scripts/fuzz.sh 600 s3_listing.
# Needs a nightly toolchain and cargo-fuzz (scripts/setup-test.sh installs cargo-fuzz when a
# nightly toolchain is there); says so and exits 0 when they are missing.
set -euo pipefail
cd "$(dirname "$0")/../fuzz"
seconds=${1:-20}
shift || true
if ! cargo +nightly fuzz --version >/dev/null 2>&1; then
  echo "fuzz: no nightly toolchain with cargo-fuzz here; the fuzz targets were not run"
  exit 0
fi
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
  mapfile -t targets < <(cargo +nightly fuzz list)
fi
cargo +nightly fuzz build
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
for t in "${targets[@]}"; do
  mkdir -p "$work/$t"
  log="$work/$t.log"
  if ! cargo +nightly fuzz run "$t" "$work/$t" "corpus/$t" -- \
    -max_total_time="$seconds" -max_len=65536 -rss_limit_mb=2048 -print_final_stats=1 >"$log" 2>&1; then
    tail -40 "$log"
    echo "fuzz: $t found a failure; the input is in fuzz/artifacts/$t/"
    exit 1
  fi
  runs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | grep -o '[0-9]*$' || echo "?")
  echo "fuzz: $t: $runs runs in ${seconds} s, no failure"
done
