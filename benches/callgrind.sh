#!/usr/bin/env bash
# User-space instructions per echoed 32 B message, or per broadcast
# delivery, counted by callgrind.
#
#   benches/callgrind.sh [DEPTH] [SMALL] [LARGE]
#   benches/callgrind.sh broadcast [SMALL] [LARGE]
#   benches/callgrind.sh handshakes [SMALL] [LARGE]
#
# Runs the server (the `profiling` build: release with symbols) under
# valgrind twice, echoing SMALL and then LARGE messages over 100 connections
# with DEPTH in flight each, and prints (Ir(LARGE) - Ir(SMALL)) / (LARGE -
# SMALL): startup, handshakes and shutdown cancel out.
#
# `broadcast` has one publisher in a chat room of 1,000 members send SMALL
# and then LARGE messages (32 bytes of text, 16 in flight), and prints the
# instructions per delivery: the same difference over 1,000 times as many.
#
# `handshakes` has 10 clients at a time connect to /echo, upgrade, close
# with a close frame and start over, SMALL and then LARGE times, and
# prints the instructions per handshake.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
if [ "${1:-}" = broadcast ]; then
    MODE=broadcast
    MEMBERS=1000
    SMALL=${2:-200}
    LARGE=${3:-600}
    # As benches/compare.py: limits that guard a public deployment opened
    # up for a load from one address; and pings far apart, as the members
    # do not answer them and setting up 1,000 under valgrind takes minutes.
    SERVER_ARGS=(--max-connections 20000 --max-connections-per-ip 20000
        --max-room-members 100000 --rate-limit 1000000000 --rate-burst 1000000000
        --ping-interval 3600s)
elif [ "${1:-}" = handshakes ]; then
    MODE=handshakes
    SMALL=${2:-1000}
    LARGE=${3:-3000}
    SERVER_ARGS=(--max-connections-per-ip 20000)
else
    MODE=echo
    DEPTH=${1:-16}
    SMALL=${2:-20000}
    LARGE=${3:-60000}
    SERVER_ARGS=()
fi
OUT=target/callgrind
mkdir -p "$OUT"
cargo build --profile profiling --bin roomcast
cargo build --release -p roomcast-bench

port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

instructions() {
    local count=$1 port pid file
    port=$(port)
    if [ "$MODE" != echo ]; then
        file="$OUT/callgrind.$MODE.$count.out"
    else
        file="$OUT/callgrind.d$DEPTH.$count.out"
    fi
    valgrind --tool=callgrind --callgrind-out-file="$file" \
        target/profiling/roomcast --host 127.0.0.1 --port "$port" --log-level warning \
        "${SERVER_ARGS[@]}" >/dev/null 2>"$OUT/valgrind.log" &
    pid=$!
    for _ in $(seq 100); do
        if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then break; fi
        sleep 0.2
    done
    if [ "$MODE" = broadcast ]; then
        target/release/roomcast-bench --port "$port" broadcast -m "$MEMBERS" -k 1 -p 16 \
            -s 32 --count "$count" >/dev/null
    elif [ "$MODE" = handshakes ]; then
        target/release/roomcast-bench --port "$port" handshakes -c 10 --count "$count" >/dev/null
    else
        target/release/roomcast-bench --port "$port" echo -c 100 -p "$DEPTH" -s 32 \
            --count "$count" >/dev/null
    fi
    kill -TERM "$pid"
    wait "$pid" || true
    # The summary line holds the total of every event; Ir comes first.
    awk '/^summary:/ {print $2}' "$file"
}

small=$(instructions "$SMALL")
large=$(instructions "$LARGE")
if [ "$MODE" = handshakes ]; then
    echo "handshakes: Ir($SMALL)=$small Ir($LARGE)=$large"
    echo "instructions per handshake: $(( (large - small) / (LARGE - SMALL) ))"
elif [ "$MODE" = broadcast ]; then
    echo "broadcast to $MEMBERS: Ir($SMALL)=$small Ir($LARGE)=$large"
    echo "instructions per broadcast delivery (chat, $MEMBERS members):" \
        "$(( (large - small) / ((LARGE - SMALL) * MEMBERS) ))"
else
    echo "depth $DEPTH: Ir($SMALL)=$small Ir($LARGE)=$large"
    echo "instructions per echoed 32 B message at depth $DEPTH:" \
        "$(( (large - small) / (LARGE - SMALL) ))"
fi
