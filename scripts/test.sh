#!/usr/bin/env bash
# Run roomcast's whole test suite: the one command for developers and CI.
#
#   scripts/test.sh
#
# Works on a fresh Debian/Ubuntu machine with a Rust toolchain and Node.js
# 20+: it sets up what else it needs (a Python venv with kosoku and
# websockets under target/venv, binutils' readelf, glibc's static libraries,
# Debian's chromium, the npm packages of web/, redis-server) and then runs,
# stopping at the first failure:
#
#   1. cargo fmt --check
#   2. cargo clippy (every crate and target, warnings are errors)
#   3. the Rust tests (cargo nextest if installed, else cargo test) + doctests
#   4. the static release build (scripts/build-static.sh), the one the
#      Dockerfile ships
#   5. scripts/empty_root.py: that binary is static and serves a chat
#      session from an empty root directory, as in a FROM scratch image
#   6. every fuzz target for FUZZ_SECONDS (default 20) each (scripts/fuzz.sh;
#      installs cargo-fuzz and a C++ compiler if missing)
#   7. the browser client's tests against that binary: unit (node --test),
#      typings (tsc), Node.js, and the chat page in headless Chromium
#   8. a soak test (scripts/soak.py): two rounds of 10 s of 5,000 mixed
#      clients against that binary
#   9. the Autobahn conformance cases 1-10 against that binary
#
# Setup steps are `ensure_*` functions (ensure_python_venv,
# ensure_redis_server, ...) called from main.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
REPO_ROOT=$(pwd)

VENV_DIR="$REPO_ROOT/target/venv"
KOSOKU_VERSION="0.1.0"
WEBSOCKETS_VERSION="15.0.1"
WEB_DIR="$REPO_ROOT/web"
CHROMIUM_BIN="/usr/bin/chromium"

# ---------------------------------------------------------------- helpers

CURRENT_STEP="setup"
SUITE_START=$SECONDS

# Each section header says how long the run has taken so far (bash's
# SECONDS counts from the script's start).
section() {
    CURRENT_STEP="$*"
    printf '\n==> %s  [%dm%02ds]\n' "$*" $((SECONDS / 60)) $((SECONDS % 60))
}

# An EXIT trap (rather than ERR) also sees failures inside functions.
on_exit() {
    local status=$?
    if [ "$status" -ne 0 ]; then
        printf '\n==> FAILED: %s (exit status %d, after %ds)\n' \
            "$CURRENT_STEP" "$status" "$((SECONDS - SUITE_START))" >&2
    fi
}
trap on_exit EXIT

is_root() { [ "$(id -u)" -eq 0 ]; }

# Install Debian packages; only possible as root (CI and the dev machines run
# as root). Otherwise print the command for the user and fail.
apt_install() {
    if is_root && command -v apt-get >/dev/null 2>&1; then
        echo "installing with apt-get: $*"
        if [ -z "${APT_UPDATED:-}" ]; then
            DEBIAN_FRONTEND=noninteractive apt-get update -qq
            APT_UPDATED=1
        fi
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@"
    else
        echo "error: missing system packages; install them with:" >&2
        echo "    sudo apt-get install $*" >&2
        return 1
    fi
}

# ---------------------------------------------------------------- setup

# A venv under target/ (gitignored, removed by `cargo clean`) holding kosoku,
# the Autobahn fuzzing client used by scripts/autobahn.py, and websockets, the
# client library of scripts/soak.py and of scripts/empty_root.py.
ensure_python_venv() {
    section "python venv ($VENV_DIR, kosoku==$KOSOKU_VERSION, websockets==$WEBSOCKETS_VERSION)"
    local py="$VENV_DIR/bin/python"

    if [ -x "$py" ] && "$py" -c 'import sys; from importlib.metadata import version
sys.exit(version("kosoku") != sys.argv[1] or version("websockets") != sys.argv[2])' \
        "$KOSOKU_VERSION" "$WEBSOCKETS_VERSION" 2>/dev/null; then
        echo "kosoku $KOSOKU_VERSION and websockets $WEBSOCKETS_VERSION already installed"
        return 0
    fi

    if ! command -v python3 >/dev/null 2>&1; then
        apt_install python3 python3-venv
    fi
    if [ ! -x "$py" ]; then
        rm -rf "$VENV_DIR" # a half-made venv (e.g. from a failed ensurepip)
        mkdir -p "$(dirname "$VENV_DIR")"
        # Debian splits ensurepip into python3-venv; without it venv fails.
        if ! python3 -m venv "$VENV_DIR"; then
            rm -rf "$VENV_DIR"
            echo "python3 -m venv failed; python3-venv is probably missing"
            apt_install python3-venv
            # python3-venv serves Debian's own python3; a python3 earlier on
            # PATH (pyenv, /usr/local) may still lack ensurepip.
            python3 -m venv "$VENV_DIR" || {
                rm -rf "$VENV_DIR"
                /usr/bin/python3 -m venv "$VENV_DIR"
            }
        fi
    fi
    "$py" -m pip install --quiet --disable-pip-version-check \
        "kosoku==$KOSOKU_VERSION" "websockets==$WEBSOCKETS_VERSION"
    echo "installed kosoku $KOSOKU_VERSION and websockets $WEBSOCKETS_VERSION"
}

# What the static build and its check need: glibc's static libraries
# (libc6-dev), readelf (binutils), ldd (libc-bin) and chroot (coreutils).
ensure_static_toolchain() {
    section "static build tools"
    local missing=()
    command -v readelf >/dev/null 2>&1 || missing+=(binutils)
    # gcc prints the bare name back when it has no such file.
    local libc_a
    libc_a=$(cc -print-file-name=libc.a 2>/dev/null || echo libc.a)
    [ "$libc_a" != "libc.a" ] || missing+=(libc6-dev)
    if [ "${#missing[@]}" -gt 0 ]; then
        apt_install "${missing[@]}"
    fi
    echo "readelf: $(command -v readelf); libc.a: $(cc -print-file-name=libc.a)"
}

# redis-server, which the backplane tests (tests/backplane.rs) start on free
# ports. Those tests fail without it; they are never skipped in CI.
ensure_redis_server() {
    section "redis-server"
    if command -v redis-server >/dev/null 2>&1; then
        redis-server --version
        return 0
    fi
    apt_install redis-server
    # Debian's package may also start a system service on port 6379; the tests
    # use their own servers and do not need it.
    redis-server --version
}

node_major() { node -p 'process.versions.node.split(".")[0]' 2>/dev/null || echo 0; }

# Node.js 20+ and npm run the client's tests (playwright-core needs 20).
ensure_node() {
    section "node.js"
    if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then
        apt_install nodejs npm
    fi
    if [ "$(node_major)" -lt 20 ]; then
        echo "error: Node.js 20 or newer is needed, found $(node --version)" >&2
        return 1
    fi
    echo "node $(node --version), npm $(npm --version)"
}

# Debian's Chromium for the browser tests; playwright-core drives it and
# never downloads a browser of its own.
ensure_chromium() {
    section "chromium ($CHROMIUM_BIN)"
    if [ ! -x "$CHROMIUM_BIN" ]; then
        apt_install chromium
    fi
    "$CHROMIUM_BIN" --version
}

# The packages pinned in web/package-lock.json (ws and its types,
# playwright-core, typescript), installed into web/node_modules.
ensure_npm_packages() {
    section "npm ci (web/)"
    (cd "$WEB_DIR" && npm ci --no-audit --no-fund)
}

# cargo-fuzz, and the C++ compiler it builds libFuzzer with. Fuzzing
# needs nightly features; scripts/fuzz.sh uses nightly when rustup has
# it, else stable with RUSTC_BOOTSTRAP=1, so no toolchain is installed.
ensure_fuzz_tools() {
    section "fuzz tools (cargo-fuzz, C++ compiler)"
    if ! command -v c++ >/dev/null 2>&1; then
        apt_install g++
    fi
    if cargo fuzz --version >/dev/null 2>&1; then
        cargo fuzz --version
    else
        cargo install cargo-fuzz --locked
    fi
}

# ---------------------------------------------------------------- checks

# The client's tests against the binary at $1 (an absolute path).
run_client_tests() {
    local bin="$1"
    cd "$WEB_DIR"

    section "client unit tests (node --test)"
    node --test test/unit.test.js

    section "client typings (tsc)"
    node_modules/.bin/tsc -p test/tsconfig.json

    section "client in Node.js against the release binary (ws package)"
    ROOMCAST_BIN="$bin" node --test test/node-client.test.js

    section "client in Node.js against the release binary (Node's WebSocket)"
    local flags=()
    # Node 22 has a global WebSocket; Node 20 needs the flag.
    if [ "$(node_major)" -lt 22 ]; then
        flags=(--experimental-websocket)
    fi
    ROOMCAST_BIN="$bin" ROOMCAST_TEST_WEBSOCKET=global \
        node "${flags[@]}" --test test/node-client.test.js

    section "chat page in headless Chromium against the release binary"
    ROOMCAST_BIN="$bin" CHROMIUM_BIN="$CHROMIUM_BIN" node --test test/browser.test.js
    echo "screenshots: target/browser/chat.png, target/browser/chat-reconnecting.png"

    cd "$REPO_ROOT"
}

run_rust_tests() {
    if cargo nextest --version >/dev/null 2>&1; then
        section "cargo nextest run"
        # --no-tests=warn: an empty test set is not an error here (the
        # Autobahn run below still tests the server).
        cargo nextest run --all-targets --no-tests=warn
        section "cargo test --doc"
        cargo test --doc
    else
        section "cargo test"
        cargo test --all-targets
        # --all-targets leaves doctests out
        section "cargo test --doc"
        cargo test --doc
    fi
}

main() {
    ensure_python_venv
    ensure_static_toolchain
    ensure_node
    ensure_chromium
    ensure_npm_packages
    ensure_redis_server

    section "cargo fmt --check"
    cargo fmt --all -- --check
    cargo fmt --manifest-path fuzz/Cargo.toml -- --check

    section "cargo clippy"
    cargo clippy --workspace --all-targets -- -D warnings

    run_rust_tests

    section "static release build (scripts/build-static.sh)"
    local binary
    binary=$(scripts/build-static.sh | tail -n 1)

    section "empty root ($binary)"
    "$VENV_DIR/bin/python" scripts/empty_root.py --binary "$binary"

    ensure_fuzz_tools
    section "fuzz (every target, ${FUZZ_SECONDS:-20}s each)"
    "$REPO_ROOT/scripts/fuzz.sh" "${FUZZ_SECONDS:-20}"

    run_client_tests "$REPO_ROOT/$binary"

    section "soak (2 rounds of 10 s, 5,000 connections, against $binary)"
    "$VENV_DIR/bin/python" scripts/soak.py --binary "$binary" --duration 20

    section "autobahn (cases 1-10 against $binary)"
    # Keep this last: its final line (`autobahn: N passed, M failed`) should
    # close the output.
    "$VENV_DIR/bin/python" scripts/autobahn.py --binary "$binary"
}

main "$@"
