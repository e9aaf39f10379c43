#!/usr/bin/env bash
# Build roomcast as one fully static, stripped executable: no dynamic section,
# no loader, nothing to find at run time, so it runs in an empty root
# directory (a FROM scratch image). Used by scripts/test.sh and the
# Dockerfile alike, so the binary tested is the binary shipped.
#
#   scripts/build-static.sh [extra cargo flags]
#
# Prints the binary's path on its last line.
#
# glibc is linked statically (crt-static). The relocation model is static
# too: otherwise the result is a static-pie, which still carries a dynamic
# section for relocating itself. The target is named explicitly so these
# flags reach only roomcast and its libraries, not the build scripts and
# procedural macros that cargo builds for the host (those cannot be static).
# The release profile in Cargo.toml already strips the symbols.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

TARGET="${ROOMCAST_TARGET:-x86_64-unknown-linux-gnu}"

RUSTFLAGS="${RUSTFLAGS:-} -C target-feature=+crt-static -C relocation-model=static" \
    cargo build --release --locked --target "$TARGET" --bin roomcast "$@" >&2

echo "target/$TARGET/release/roomcast"
