#!/usr/bin/env bash
# Run roomcast's fuzz targets (fuzz/, cargo-fuzz and libFuzzer) for a
# bounded time each.
#
#   scripts/fuzz.sh [SECONDS] [TARGET...]     # default: 20 s, every target
#
# Each target reads its checked-in seeds (fuzz/seeds/TARGET) and its
# generated corpus (fuzz/corpus/TARGET, not in git), writes new inputs to
# the latter, and uses the dictionary fuzz/dict/roomcast.dict. The script
# stops at the first target that crashes, hangs (one input over 30 s,
# generous for loaded machines), leaks or runs out of memory; libFuzzer
# then prints the input's path under fuzz/artifacts/TARGET. FUZZING.md
# says what to do next.
#
# Needs cargo-fuzz (`cargo install cargo-fuzz --locked`) and a C++
# compiler. Uses the nightly toolchain when rustup has one, otherwise the
# stable one with RUSTC_BOOTSTRAP=1, which lets stable accept the unstable
# flags (-Zsanitizer=address) that cargo-fuzz passes.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

seconds=${1:-20}
shift || true
if [ "$#" -gt 0 ]; then
    targets=("$@")
else
    targets=(handshake frame frame_roundtrip utf8 close_payload chat connection backplane_wire token)
fi

if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "error: cargo-fuzz is missing; install it with:" >&2
    echo "    cargo install cargo-fuzz --locked" >&2
    exit 1
fi

if rustup toolchain list 2>/dev/null | grep -q '^nightly'; then
    fuzz=(cargo +nightly fuzz)
else
    fuzz=(env RUSTC_BOOTSTRAP=1 cargo fuzz)
fi

# One build for every target, so the time limits below are fuzzing time.
"${fuzz[@]}" build

for target in "${targets[@]}"; do
    # Request heads run up to 8 KiB, past libFuzzer's default 4 KiB limit.
    max_len=4096
    [ "$target" = handshake ] && max_len=9000
    mkdir -p "fuzz/corpus/$target"
    echo "==> fuzz $target for ${seconds}s"
    "${fuzz[@]}" run "$target" "fuzz/corpus/$target" "fuzz/seeds/$target" -- \
        -max_total_time="$seconds" -timeout=30 -max_len="$max_len" \
        -dict=fuzz/dict/roomcast.dict -print_final_stats=1 \
        -close_fd_mask=1
done
