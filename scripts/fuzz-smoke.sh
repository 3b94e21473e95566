#!/usr/bin/env bash
# A short fuzzing run of every cargo-fuzz target (libFuzzer + AddressSanitizer), from the seed
# corpus in fuzz/seeds/<target>. cargo-fuzz is installed (pinned) into target/tools on first
# use; its nightly-only compiler flags are enabled on the stable toolchain with RUSTC_BOOTSTRAP.
# Usage: scripts/fuzz-smoke.sh [seconds per target, default 10] [target...]
# A crash fails the run and leaves its input in fuzz/artifacts/<target>/.
set -euo pipefail
cd "$(dirname "$0")/.."

SECONDS_PER_TARGET="${1:-10}"
shift || true
TOOLS="$PWD/target/tools"
CARGO_FUZZ_VERSION=0.13.2
if ! "$TOOLS/bin/cargo-fuzz" --version 2>/dev/null | grep -q "$CARGO_FUZZ_VERSION"; then
  cargo install cargo-fuzz --locked --version "$CARGO_FUZZ_VERSION" --root "$TOOLS" --quiet
fi
export PATH="$TOOLS/bin:$PATH" RUSTC_BOOTSTRAP=1

cd fuzz
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
  mapfile -t targets < <(cargo fuzz list)
fi
cargo fuzz build --release
for t in "${targets[@]}"; do
  mkdir -p "corpus/$t"
  seeds=()
  [ -d "seeds/$t" ] && seeds=("seeds/$t")
  echo "-- fuzz $t (${SECONDS_PER_TARGET}s)"
  log="$(mktemp)"
  if ! cargo fuzz run --release "$t" "corpus/$t" "${seeds[@]}" -- \
    -max_total_time="$SECONDS_PER_TARGET" -max_len=65536 -rss_limit_mb=2048 -print_final_stats=1 >"$log" 2>&1; then
    tail -n 60 "$log" >&2
    echo "!!! fuzz target $t failed; crashing inputs are in fuzz/artifacts/$t/" >&2
    rm -f "$log"
    exit 1
  fi
  grep -E "^stat::number_of_executed_units" "$log" || true
  rm -f "$log"
done
