#!/usr/bin/env bash
# User-space instructions per echoed 32 B message, counted by callgrind.
#
#   benches/callgrind.sh [DEPTH] [SMALL] [LARGE]
#
# Runs the server (the `profiling` build: release with symbols) under
# valgrind twice, echoing SMALL and then LARGE messages over 100 connections
# with DEPTH in flight each, and prints (Ir(LARGE) - Ir(SMALL)) / (LARGE -
# SMALL): startup, handshakes and shutdown cancel out.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
DEPTH=${1:-16}
SMALL=${2:-20000}
LARGE=${3:-60000}
OUT=target/callgrind
mkdir -p "$OUT"
cargo build --profile profiling --bin roomcast
cargo build --release -p roomcast-bench

port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

instructions() {
    local count=$1 port pid file
    port=$(port)
    file="$OUT/callgrind.d$DEPTH.$count.out"
    valgrind --tool=callgrind --callgrind-out-file="$file" \
        target/profiling/roomcast --host 127.0.0.1 --port "$port" --log-level warning \
        >/dev/null 2>"$OUT/valgrind.log" &
    pid=$!
    for _ in $(seq 100); do
        if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then break; fi
        sleep 0.2
    done
    target/release/roomcast-bench --port "$port" echo -c 100 -p "$DEPTH" -s 32 \
        --count "$count" >/dev/null
    kill -TERM "$pid"
    wait "$pid" || true
    # The summary line holds the total of every event; Ir comes first.
    awk '/^summary:/ {print $2}' "$file"
}

small=$(instructions "$SMALL")
large=$(instructions "$LARGE")
echo "depth $DEPTH: Ir($SMALL)=$small Ir($LARGE)=$large"
echo "instructions per echoed 32 B message at depth $DEPTH:" \
    "$(( (large - small) / (LARGE - SMALL) ))"
