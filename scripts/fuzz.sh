#!/usr/bin/env bash
# Runs every fuzz target in fuzz/ (or those named) for a bounded time each.
#
#   scripts/fuzz.sh                  # every target, 60 s each
#   FUZZ_SECONDS=300 scripts/fuzz.sh checkpoint_trainer
#
# Needs a nightly toolchain (cargo-fuzz builds with sanitizers) and cargo-fuzz, which it
# installs with `cargo install cargo-fuzz` when missing. New inputs go to fuzz/corpus/<target>
# (ignored by git), crashes to fuzz/artifacts/<target>; the committed seeds in
# fuzz/seeds/<target> are read, never written. Exits non-zero when a target fails or when
# the tools are missing.
set -euo pipefail

cd "$(dirname "$0")/.."
seconds="${FUZZ_SECONDS:-60}"
# A single allocation above this is a crash: the readers never allocate more than the input
# holds (inputs are at most max_len bytes; a gzip IDX file may expand 1032-fold).
malloc_limit_mb="${FUZZ_MALLOC_LIMIT_MB:-128}"
max_len="${FUZZ_MAX_LEN:-65536}"

if ! rustup toolchain list 2>/dev/null | grep -q '^nightly'; then
    echo "fuzz.sh: cargo-fuzz needs a nightly Rust toolchain and none is installed." >&2
    echo "fuzz.sh: install one with 'rustup toolchain install nightly', then run this again." >&2
    exit 2
fi
if ! cargo +nightly fuzz --version >/dev/null 2>&1; then
    echo "fuzz.sh: installing cargo-fuzz"
    if ! cargo install cargo-fuzz; then
        echo "fuzz.sh: 'cargo install cargo-fuzz' failed; cannot fuzz." >&2
        exit 2
    fi
fi

if [ "$#" -gt 0 ]; then
    targets=("$@")
else
    mapfile -t targets < <(cargo +nightly fuzz list)
fi

failed=()
for target in "${targets[@]}"; do
    corpus="fuzz/corpus/$target"
    mkdir -p "$corpus"
    seeds=()
    [ -d "fuzz/seeds/$target" ] && seeds=("fuzz/seeds/$target")
    echo "fuzz.sh: $target for ${seconds}s"
    if ! cargo +nightly fuzz run "$target" "$corpus" "${seeds[@]}" -- \
        -max_total_time="$seconds" -max_len="$max_len" \
        -malloc_limit_mb="$malloc_limit_mb" -rss_limit_mb=2048 -print_final_stats=1; then
        failed+=("$target")
    fi
done

if [ "${#failed[@]}" -gt 0 ]; then
    echo "fuzz.sh: FAILED: ${failed[*]} (inputs in fuzz/artifacts/)" >&2
    exit 1
fi
echo "fuzz.sh: ${#targets[@]} target(s) ran ${seconds}s each without a failure"
