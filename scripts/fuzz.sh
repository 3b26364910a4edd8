#!/usr/bin/env bash
# Builds Hone's libFuzzer targets (fuzz/, over crates/hone-fuzz) and runs each from its committed
# seeds: `scripts/fuzz.sh [SECONDS_PER_TARGET] [TARGET...]` (default 20 s, every target).
#
# Stable Rust, no cargo-fuzz needed: the coverage instrumentation cargo-fuzz adds (`cargo fuzz
# build -s none`), set here directly. No sanitizer: Hone's parsers are safe Rust, so what is looked
# for is a panic, an abort (a failed allocation among them), a hang past -timeout or a memory
# growth past -rss_limit_mb; debug assertions are on, so an integer overflow in a length or offset
# read from a file is a finding too. `cargo fuzz run TARGET` works on the same folder with a
# nightly toolchain or RUSTC_BOOTSTRAP=1 (address sanitizer).
#
# A finding stops its target with the input saved as fuzz/artifacts/TARGET/crash-… (or timeout-,
# oom-); fix it, move the input to fuzz/regressions/TARGET/ (crates/hone-fuzz's tests replay it on
# every `cargo test`, and each fuzzing run starts with them, under its memory limit) and run again. New coverage-increasing inputs go to target/fuzz/corpus/TARGET,
# outside the repository.
set -euo pipefail
cd "$(dirname "$0")/.."
seconds="${1:-20}"
# A fixed seed makes CI's short runs repeat the same mutations (FUZZ_SEED=0: a random one).
seed="${FUZZ_SEED:-1}"
shift || true
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
    targets=($(sed -n 's/^name = "\(.*\)"$/\1/p' fuzz/Cargo.toml | grep -v '^hone-fuzz-targets$'))
fi
triple="$(rustc -vV | sed -n 's/^host: //p')"
export RUSTFLAGS="-Cpasses=sancov-module -Cllvm-args=-sanitizer-coverage-level=4 \
-Cllvm-args=-sanitizer-coverage-inline-8bit-counters -Cllvm-args=-sanitizer-coverage-pc-table \
-Cllvm-args=-sanitizer-coverage-trace-compares -Cllvm-args=-sanitizer-coverage-stack-depth \
-Cllvm-args=-simplifycfg-branch-fold-threshold=0 --cfg fuzzing -Cdebug-assertions"
# --target keeps RUSTFLAGS off build scripts and proc macros, as cargo-fuzz does.
cargo build --release --manifest-path fuzz/Cargo.toml --target "$triple" \
    --target-dir target/fuzz/build --bins
bin="target/fuzz/build/$triple/release"
for target in "${targets[@]}"; do
    corpus="target/fuzz/corpus/$target"
    mkdir -p "$corpus" "fuzz/artifacts/$target"
    log="target/fuzz/$target.log"
    echo "== fuzz $target: ${seconds} s"
    status=0
    regressions=()
    [ -d "fuzz/regressions/$target" ] && regressions=("fuzz/regressions/$target")
    "$bin/$target" "$corpus" "fuzz/seeds/$target" "${regressions[@]}" \
        -dict=fuzz/hone.dict -seed="$seed" -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 \
        -max_len=262144 -artifact_prefix="fuzz/artifacts/$target/" -print_final_stats=1 \
        >"$log" 2>&1 || status=$?
    grep -E '^(#[0-9]+ +DONE|stat::number_of_executed_units|stat::peak_rss_mb|INFO: seed corpus)' \
        "$log" || true
    if [ "$status" -ne 0 ]; then
        tail -n 40 "$log"
        echo "fuzz $target: a finding (exit $status), input saved under fuzz/artifacts/$target/"
        exit 1
    fi
done
