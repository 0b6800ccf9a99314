#!/usr/bin/env bash
# Runs every cargo-fuzz target in fuzz/ for a bounded time and prints the executions per target.
#
#   scripts/fuzz.sh            # 60 s per target
#   scripts/fuzz.sh 300        # 300 s per target
#   scripts/fuzz.sh 60 flat    # only the target `flat`
#
# Targets (fuzz/fuzz_targets/): notifications (the keyevent subscriber's RESP2 parser), flat
# (the in-place MessagePack reader against the general decoder), decode (alert and execution log
# values, the alert row in RowBinary), log_rows (the rows of an execution log value and of a
# stream payload), rdb (the replication source's RDB and DUMP parser). Each starts from fuzz/seeds/TARGET and grows fuzz/corpus/TARGET (kept between
# runs, not committed); a crash leaves its input in fuzz/artifacts/TARGET and the script exits 1
# after running the other targets. Reproduce one with
#   cargo +nightly fuzz run TARGET fuzz/artifacts/TARGET/crash-...
#
# Needs cargo-fuzz (`cargo install cargo-fuzz`) and a nightly toolchain (the sanitizer flags are
# nightly-only); without one it sets RUSTC_BOOTSTRAP=1 on the stable compiler instead.
# FUZZ_SANITIZER picks the sanitizer (address by default; none runs about twice as fast).
# The fuzz crate is a workspace of its own: the project's `cargo build`/`cargo test` never build it.
set -euo pipefail

SECS=${1:-60}
ONLY=${2:-}
cd "$(dirname "$0")/.."
case "$SECS" in '' | *[!0-9]*) echo "usage: $0 [seconds per target] [target]" >&2; exit 2 ;; esac
command -v cargo-fuzz >/dev/null || { echo "cargo-fuzz is missing: cargo install cargo-fuzz" >&2; exit 2; }

if rustup run nightly rustc --version >/dev/null 2>&1; then
    FUZZ=(cargo +nightly fuzz)
else
    echo "no nightly toolchain: using stable with RUSTC_BOOTSTRAP=1" >&2
    export RUSTC_BOOTSTRAP=1
    FUZZ=(cargo fuzz)
fi
SANITIZER=${FUZZ_SANITIZER:-address}

targets=$("${FUZZ[@]}" list)
[ -z "$ONLY" ] || targets=$ONLY
"${FUZZ[@]}" build --sanitizer "$SANITIZER" $ONLY >&2

logs=$(mktemp -d)
trap 'rm -rf "$logs"' EXIT
failed=0
summary=()
for t in $targets; do
    mkdir -p "fuzz/corpus/$t" "fuzz/seeds/$t"
    echo "--- $t: $SECS s" >&2
    code=0
    "${FUZZ[@]}" run --sanitizer "$SANITIZER" "$t" "fuzz/corpus/$t" "fuzz/seeds/$t" -- \
        -max_total_time="$SECS" -timeout=10 -print_final_stats=1 >"$logs/$t" 2>&1 || code=$?
    execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$logs/$t" | tail -1)
    rate=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$logs/$t" | tail -1)
    cov=$(grep -oE 'cov: [0-9]+' "$logs/$t" | tail -1 | cut -d' ' -f2)
    corpus=$(find "fuzz/corpus/$t" -type f | wc -l)
    if [ "$code" = 0 ]; then
        result="no crash"
    else
        failed=1
        crash=$(sed -n 's/.*Test unit written to \(\S*\).*/\1/p' "$logs/$t" | tail -1)
        result="CRASH (exit $code) ${crash:-see below}"
        tail -40 "$logs/$t" >&2
    fi
    summary+=("$(printf '%-14s %12s executions %8s/s  coverage %6s  corpus %6s  %s' \
        "$t" "${execs:-?}" "${rate:-?}" "${cov:-?}" "$corpus" "$result")")
done
echo
printf '%s\n' "${summary[@]}"
exit "$failed"
