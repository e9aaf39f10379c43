#!/usr/bin/env python3
"""Soak test: thousands of concurrent clients of mixed behaviour against one roomcast.

    target/venv/bin/python scripts/soak.py --binary target/release/roomcast
    target/venv/bin/python scripts/soak.py --binary ... --duration 20   # the CI form

Starts the binary on a free loopback port and runs --rounds rounds (2) of this mix, all
at once, splitting --duration seconds of traffic (60) between them: --connections (5,000)
chatters and idle clients, connected throughout, and about 9 % more misbehaving ones
that come and go on top, so that the server holds at least --connections at its peak:

  chatters    in --rooms rooms, each sending a numbered message every few seconds
  idle        connected and silent
  stalled     join a busy room and ask for large echoes, but never read
  slowloris   send a request head a few bytes at a time and never finish it
  garbage     TLS bytes instead of HTTP, or an unmasked frame after a good upgrade
  flooders    send chat messages far over the rate limit
  churn       connect, join, leave and disconnect, over and over

The clients use the `websockets` package (an independent implementation) for the
WebSocket side and plain sockets for the misbehaving ones. The run fails unless:

  * the server held at least --connections connections at its peak;
  * every chatter received every message of every chatter in its room, in order;
  * the server's peak RSS stayed under --rss-bound-mib;
  * once each round's clients have gone, the server holds as many file descriptors as
    before the first, and its RSS after the last round is within --leak-tolerance-kib
    of that after the first (the same load again must not leave more behind);
  * its gauges (connections, rooms, members, queued bytes) are back to zero;
  * /metrics agrees with what the clients counted: upgrades, closes by code, handshake
    failures by reason, slow consumers, rate-limit refusals, broadcast fan-out.

Everything is bounded: a client count, a duration, and a deadline on every wait.
"""

import argparse
import asyncio
import ctypes
import json
import os
import random
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time

import websockets

SERVER_FLAGS = [
    "--max-connections", "8000",
    "--max-connections-per-ip", "8000",
    "--close-timeout", "2s",
    "--max-queued-bytes", "262144",
    "--rate-limit-close-after", "3s",
    "--log-level", "info",
]

CHAT_INTERVAL = 5.0  # seconds between a chatter's messages
STALLED_ECHO_BYTES = 128 * 1024


def log(*args):
    print("soak:", *args, flush=True)


# ------------------------------------------------------------------ server process

def die_with_parent():
    """In the child: the kernel kills the server if this script dies first, however."""
    PR_SET_PDEATHSIG = 1
    ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


class Server:
    def __init__(self, binary):
        self.out = tempfile.TemporaryFile()
        self.proc = subprocess.Popen(
            [binary, "--host", "127.0.0.1", "--port", "0", *SERVER_FLAGS],
            stdout=self.out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            preexec_fn=die_with_parent,
        )
        deadline = time.monotonic() + 15
        while True:
            self.out.seek(0)
            for line in self.out.read().decode(errors="replace").splitlines():
                try:
                    v = json.loads(line)
                except ValueError:
                    continue
                if v.get("message") == "listening":
                    host, port = v["address"].rsplit(":", 1)
                    self.addr = (host, int(port))
                    return
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise SystemExit("server did not start")
            time.sleep(0.05)

    def status(self, field):
        with open(f"/proc/{self.proc.pid}/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) * 1024
        return 0

    def fds(self):
        return len(os.listdir(f"/proc/{self.proc.pid}/fd"))

    def stop(self):
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()

    def log_lines(self):
        self.out.seek(0)
        return self.out.read().decode(errors="replace").splitlines()


async def scrape(addr):
    reader, writer = await asyncio.open_connection(*addr)
    writer.write(b"GET /metrics HTTP/1.1\r\nHost: soak\r\n\r\n")
    data = await asyncio.wait_for(reader.read(), 10)
    writer.close()
    head, _, body = data.partition(b"\r\n\r\n")
    if not head.startswith(b"HTTP/1.1 200"):
        raise AssertionError(f"/metrics answered {head[:40]!r}")
    metrics = {}
    for line in body.decode().splitlines():
        if line and not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            metrics[name] = float(value)
    return metrics


# ------------------------------------------------------------------ raw WebSocket bits

def masked_frame(opcode, payload):
    mask = os.urandom(4)
    n = len(payload)
    if n < 126:
        head = struct.pack("!BB", 0x80 | opcode, 0x80 | n)
    elif n < 65536:
        head = struct.pack("!BBH", 0x80 | opcode, 0x80 | 126, n)
    else:
        head = struct.pack("!BBQ", 0x80 | opcode, 0x80 | 127, n)
    # XOR as one big integer: a byte-at-a-time loop would cost the client more CPU than
    # the server spends on the whole test.
    key = (mask * (n // 4 + 1))[:n]
    body = (int.from_bytes(payload, "big") ^ int.from_bytes(key, "big")).to_bytes(n, "big")
    return head + mask + body


def upgrade_request():
    key = "dGhlIHNhbXBsZSBub25jZQ=="
    return (
        "GET / HTTP/1.1\r\nHost: soak\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
    ).encode()


# Handshakes in flight at once. Thousands of connects at once overflow the listen
# backlog, and the kernel's retransmission backoff then delays a request by seconds:
# a test of the client's kernel, not of the server.
HANDSHAKES = None


async def raw_socket(addr, first, rcvbuf=None):
    """Connects and sends `first`, within the handshake allowance."""
    loop = asyncio.get_running_loop()
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    if rcvbuf:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    sock.setblocking(False)
    async with HANDSHAKES:
        await loop.sock_connect(sock, addr)
        await loop.sock_sendall(sock, first)
    return sock


async def recv_until(sock, pred, timeout):
    """Reads until pred(data) or EOF; returns (data, eof)."""
    loop = asyncio.get_running_loop()
    data = b""
    deadline = loop.time() + timeout
    while not pred(data):
        left = deadline - loop.time()
        if left <= 0:
            return data, False
        try:
            chunk = await asyncio.wait_for(loop.sock_recv(sock, 65536), left)
        except asyncio.TimeoutError:  # before OSError: TimeoutError is one
            return data, False
        except (ConnectionError, OSError):
            return data, True
        if not chunk:
            return data, True
        data += chunk
    return data, False


# ------------------------------------------------------------------ behaviours

class Counts:
    def __init__(self):
        self.upgrades = 0
        self.close_1000 = 0
        self.slowloris = 0
        self.garbage_http = 0
        self.garbage_ws = 0
        self.flood_closed = 0
        self.flood_delivered = 0
        self.flood_refused = 0
        self.stalled_cut = 0
        self.chat_sent = 0
        self.churn_cycles = 0
        self.failures = []


async def ws_connect(addr):
    async with HANDSHAKES:
        return await websockets.connect(
            f"ws://{addr[0]}:{addr[1]}/", compression=None, ping_interval=None,
            open_timeout=30, close_timeout=10, max_size=1 << 20,
        )


async def chatter(addr, c, idx, room, roommates, ready, go, stop, received, sent):
    async with await ws_connect(addr) as ws:
        c.upgrades += 1
        json.loads(await ws.recv())  # connected
        await ws.send(json.dumps({"type": "join", "roomId": room}))
        ready.release()

        async def reader():
            async for raw in ws:
                m = json.loads(raw)
                if m.get("type") != "message":
                    continue
                text = m["text"]
                if not text.startswith("c"):
                    continue
                sender, seq = text[1:].split(":")
                received.setdefault(int(sender), []).append(int(seq))

        task = asyncio.create_task(reader())
        await go.wait()
        await asyncio.sleep(random.uniform(0, CHAT_INTERVAL))
        seq = 0
        while not stop.is_set():
            await ws.send(json.dumps({"type": "message", "text": f"c{idx}:{seq}"}))
            seq += 1
            c.chat_sent += 1
            try:
                await asyncio.wait_for(stop.wait(), CHAT_INTERVAL)
            except asyncio.TimeoutError:
                pass
        sent[idx] = seq
        # Stay until every roommate's last message has arrived (or a deadline passes,
        # and the check counts what is missing).
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if all(j in sent and len(received.get(j, ())) >= sent[j] for j in roommates):
                break
            await asyncio.sleep(0.2)
        await ws.close()
        await task
        c.close_1000 += 1


async def idle(addr, c, stop):
    async with await ws_connect(addr) as ws:
        c.upgrades += 1
        await ws.recv()
        await stop.wait()
        await ws.close()
        c.close_1000 += 1


async def churn(addr, c, rooms, stop):
    while not stop.is_set():
        t = time.monotonic()
        try:
            ws = await ws_connect(addr)
        except Exception as e:
            raise AssertionError(f"handshake failed after {time.monotonic() - t:.2f}s: {e!r}")
        async with ws:
            c.upgrades += 1
            await ws.recv()
            room = f"churn-{random.randrange(rooms)}"
            await ws.send(json.dumps({"type": "join", "roomId": room}))
            await ws.send(json.dumps({"type": "leave"}))
            await ws.close()
        c.close_1000 += 1
        c.churn_cycles += 1
        await asyncio.sleep(random.uniform(0.1, 1.0))


async def stalled(addr, c, room, stop):
    """Joins a chatters' room and asks for large echoes it never reads."""
    loop = asyncio.get_running_loop()
    sock = await raw_socket(addr, upgrade_request(), rcvbuf=4096)
    try:
        c.upgrades += 1
        join = json.dumps({"type": "join", "roomId": room}).encode()
        await loop.sock_sendall(sock, masked_frame(1, join))
        request = masked_frame(1, json.dumps(["x" * STALLED_ECHO_BYTES]).encode())
        # Not bound to the traffic phase: it goes on until the server cuts it off.
        while True:
            await asyncio.wait_for(loop.sock_sendall(sock, request), 30)
            await asyncio.sleep(0.1)
    except asyncio.TimeoutError:  # before OSError: TimeoutError is one
        c.failures.append("a stalled reader was never cut off")
    except (ConnectionError, OSError):
        c.stalled_cut += 1
    finally:
        sock.close()


async def slowloris(addr, c, stop):
    loop = asyncio.get_running_loop()
    while not stop.is_set():
        sock = await raw_socket(addr, b"GET / HTTP/1.1\r\nHost: soak\r\n")
        try:
            ended = False
            for i in range(60):
                _, eof = await recv_until(sock, lambda d: False, 0.5)
                if eof:
                    ended = True
                    break
                await loop.sock_sendall(sock, f"X-{i}: y\r\n".encode())
        except (ConnectionError, OSError):
            ended = True
        finally:
            sock.close()
        if not ended:
            c.failures.append("a slowloris head was never timed out")
            return
        c.slowloris += 1


async def garbage(addr, c, stop):
    loop = asyncio.get_running_loop()
    while not stop.is_set():
        tls = random.random() < 0.5
        first = b"\x16\x03\x01" + os.urandom(300) if tls else upgrade_request()
        sock = await raw_socket(addr, first)
        try:
            if tls:
                data, _ = await recv_until(sock, lambda d: b"\r\n\r\n" in d, 10)
                if not data.startswith(b"HTTP/1.1 400"):
                    c.failures.append(f"garbage got {data[:30]!r}")
                    return
                c.garbage_http += 1
            else:
                data, _ = await recv_until(sock, lambda d: b"\r\n\r\n" in d, 10)
                if not data.startswith(b"HTTP/1.1 101"):
                    c.failures.append(f"upgrade got {data[:30]!r}")
                    return
                c.upgrades += 1
                rest = data.split(b"\r\n\r\n", 1)[1]
                await loop.sock_sendall(sock, b"\x81\x05hello")  # unmasked: 1002
                # The greeting (short JSON, no 0x88 byte in it), then the close frame.

                def has_close(d):
                    i = (rest + d).find(b"\x88")
                    return i >= 0 and len(rest + d) >= i + 4

                data, _ = await recv_until(sock, has_close, 10)
                frames = rest + data
                i = frames.find(b"\x88")
                code = struct.unpack("!H", frames[i + 2:i + 4])[0] if has_close(data) else None
                if code != 1002:
                    c.failures.append(f"unmasked frame closed with {code}")
                    return
                c.garbage_ws += 1
        except (ConnectionError, OSError) as e:
            c.failures.append(f"garbage client: {e!r}")
            return
        finally:
            sock.close()
        await asyncio.sleep(random.uniform(0.05, 0.3))


async def flooder(addr, c, idx, stop):
    while not stop.is_set():
        async with await ws_connect(addr) as ws:
            c.upgrades += 1
            await ws.recv()
            await ws.send(json.dumps({"type": "join", "roomId": f"flood-{idx}"}))

            async def send():
                # Bursts of ten, ten times a second: over the rate however late the
                # client's own loop runs.
                try:
                    while True:
                        for _ in range(10):
                            await ws.send('{"type":"message","text":"f"}')
                        await asyncio.sleep(0.1)
                except websockets.ConnectionClosed:
                    pass

            task = asyncio.create_task(send())
            delivered = refused = 0
            try:
                async for raw in ws:
                    if raw.startswith('{"type":"message"'):
                        delivered += 1
                    elif raw == '{"type":"error","message":"Rate limit exceeded"}':
                        refused += 1
            except websockets.ConnectionClosed:
                pass
            await task
            code = ws.close_code
        if code != 1008:
            c.failures.append(f"flooder closed with {code}")
            return
        c.flood_closed += 1
        c.flood_delivered += delivered
        c.flood_refused += refused
        await asyncio.sleep(random.uniform(0.5, 1.5))


# ------------------------------------------------------------------ the run

def make_mix(n):
    """n steady clients (chatters and idle ones), connected from the ramp to the end,
    and the misbehaving ones on top, which come and go."""
    mix = {
        "chatters": n // 5,
        "stalled": max(1, n // 100),
        "slowloris": max(1, n // 50),
        "garbage": max(1, n // 100),
        "flooders": max(1, n // 100),
        "churn": max(1, n // 25),
    }
    mix["idle"] = n - mix["chatters"]
    return mix


async def run(args, server):
    """Runs --rounds rounds of traffic against one server; returns what each saw."""
    global HANDSHAKES
    HANDSHAKES = asyncio.Semaphore(64)
    c = Counts()
    mix = make_mix(args.connections)
    log("mix", mix)
    before = {"fds": server.fds(), "rss": server.status("VmRSS")}
    log(f"server before: {before['fds']} fds, RSS {before['rss'] / 2**20:.1f} MiB")
    rounds = []
    for r in range(args.rounds):
        rounds.append(await one_round(args, server, c, mix, before["fds"]))
        log(f"round {r + 1}: server RSS {rounds[-1]['rss'] / 2**20:.1f} MiB, "
            f"{rounds[-1]['fds']} fds once its clients had gone")
    return c, mix, before, rounds


async def one_round(args, server, c, mix, baseline_fds):
    addr = server.addr
    upgrades_before = c.upgrades
    rooms = [f"room-{i}" for i in range(args.rooms)]
    stop = asyncio.Event()
    go = asyncio.Event()
    ready = asyncio.Semaphore(0)
    received = [dict() for _ in range(mix["chatters"])]
    sent = {}
    tasks = []

    async def gated(coro_fn, *a):
        try:
            await coro_fn(*a)
        except Exception as e:  # every failure is reported, none is silent
            c.failures.append(f"{coro_fn.__name__}: {e!r}")

    async def spawn(coro_fn, *a):
        tasks.append(asyncio.create_task(gated(coro_fn, *a)))
        if len(tasks) % 50 == 0:
            await asyncio.sleep(0.05)

    t0 = time.monotonic()
    for i in range(mix["chatters"]):
        mates = range(i % args.rooms, mix["chatters"], args.rooms)
        await spawn(chatter, addr, c, i, rooms[i % args.rooms], mates, ready, go, stop,
                    received[i], sent)
    for _ in range(mix["idle"]):
        await spawn(idle, addr, c, stop)
    for _ in range(mix["chatters"]):
        # Generous: on a machine shared with builds, connecting 5,000 clients took a minute.
        await asyncio.wait_for(ready.acquire(), 300)
    log(f"{mix['chatters']} chatters and {mix['idle']} idle ramping, "
        f"chatters joined after {time.monotonic() - t0:.1f}s")
    go.set()
    for i in range(mix["stalled"]):
        await spawn(stalled, addr, c, rooms[i % args.rooms], stop)
    for _ in range(mix["slowloris"]):
        await spawn(slowloris, addr, c, stop)
    for _ in range(mix["garbage"]):
        await spawn(garbage, addr, c, stop)
    for i in range(mix["flooders"]):
        await spawn(flooder, addr, c, i, stop)
    for _ in range(mix["churn"]):
        await spawn(churn, addr, c, args.rooms, stop)

    duration = args.duration / args.rounds
    peak_conns = 0
    scrape_secs = []
    t_go = time.monotonic()
    while time.monotonic() - t_go < duration:
        await asyncio.sleep(1)
        m = await scrape(addr)
        peak_conns = max(peak_conns, m["roomcast_connections"])
        # Timed by curl, when there is one: this script's own loop is too busy to time it.
        if shutil.which("curl"):
            proc = await asyncio.create_subprocess_exec(
                "curl", "-sf", "-o", "/dev/null", "-w", "%{time_total}",
                f"http://{addr[0]}:{addr[1]}/metrics", stdout=subprocess.PIPE)
            out, _ = await proc.communicate()
            if proc.returncode == 0:
                scrape_secs.append(float(out))
    log(f"traffic for {duration:.0f}s; peak connections {peak_conns:.0f}; stopping")
    stop.set()
    done, pending = await asyncio.wait(tasks, timeout=180)
    if pending:
        c.failures.append(f"{len(pending)} clients did not finish")
        for t in pending:
            t.cancel()

    # Every chatter got every message of its room's chatters, its own included, in order.
    expected = lost = disorder = 0
    for i, got in enumerate(received):
        for j in range(i % args.rooms, mix["chatters"], args.rooms):
            want = sent.get(j, 0)
            seqs = got.get(j, [])
            expected += want
            lost += max(0, want - len(seqs))
            if seqs != list(range(len(seqs))):
                disorder += 1

    # Counters are final once no client is left; the gauges are read from a scrape that
    # finds itself alone.
    deadline = time.monotonic() + 60
    while True:
        m = await scrape(addr)
        if m["roomcast_connections"] <= 1 or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.2)
    fds = server.fds()
    while fds != baseline_fds and time.monotonic() < deadline:
        await asyncio.sleep(0.2)
        fds = server.fds()
    return {
        "metrics": m, "expected": expected, "lost": lost, "disorder": disorder,
        "peak_conns": peak_conns, "fds": fds, "rss": server.status("VmRSS"),
        "upgrades": c.upgrades - upgrades_before, "scrape_secs": scrape_secs,
    }


def check(args, server, result):
    c, mix, before, rounds = result
    failures = list(c.failures)
    m = rounds[-1]["metrics"]

    def expect(what, got, want):
        if got != want:
            failures.append(f"{what}: {got} != {want}")

    expected = sum(r["expected"] for r in rounds)
    lost = sum(r["lost"] for r in rounds)
    disorder = sum(r["disorder"] for r in rounds)
    if lost or disorder:
        failures.append(f"chatters lost {lost} of {expected} messages; {disorder} out of order")

    rss_peak = server.status("VmHWM")
    bound = args.rss_bound_mib * 2**20
    if rss_peak > bound:
        failures.append(f"peak RSS {rss_peak / 2**20:.1f} MiB over {args.rss_bound_mib} MiB")
    for i, r in enumerate(rounds):
        expect(f"fds after round {i + 1}", r["fds"], before["fds"])
    # A leak grows with use: the same load again must not leave more memory behind than
    # the first round did, beyond the allocator's slack.
    growth = rounds[-1]["rss"] - rounds[0]["rss"]
    if len(rounds) > 1 and growth > args.leak_tolerance_kib * 1024:
        failures.append(f"RSS after the last round is {growth / 1024:.0f} KiB above the "
                        f"first's (tolerance {args.leak_tolerance_kib} KiB)")
    for gauge in ("roomcast_websockets", "roomcast_rooms", "roomcast_room_members",
                  "roomcast_queued_bytes"):
        expect(gauge, m[gauge], 0)
    expect("connections after (this scrape)", m["roomcast_connections"], 1)

    def closed(code):
        return m.get(f'roomcast_websockets_closed_total{{code="{code}"}}', 0)

    def failed(reason):
        return m[f'roomcast_handshake_failures_total{{reason="{reason}"}}']

    expect("upgrades", m["roomcast_websockets_opened_total"], c.upgrades)
    all_closed = sum(v for k, v in m.items() if k.startswith("roomcast_websockets_closed_total"))
    expect("closes counted", all_closed, c.upgrades)
    expect("closes 1000", closed(1000), c.close_1000)
    expect("closes 1002", closed(1002), c.garbage_ws)
    expect("closes 1008", closed(1008), c.flood_closed + c.stalled_cut)
    expect("slow consumers", m["roomcast_slow_consumers_closed_total"], c.stalled_cut)
    expect("stalled readers cut off", c.stalled_cut, mix["stalled"] * args.rounds)
    expect("timeouts", failed("timeout"), c.slowloris)
    expect("bad requests", failed("bad_request"), c.garbage_http)
    expect("rate-limit closes", m["roomcast_rate_limit_closed_total"], c.flood_closed)
    # Each flooder's last message is dropped too, by closing it, with no error reply.
    expect("rate-limited messages", m["roomcast_rate_limited_messages_total"],
           c.flood_refused + c.flood_closed)
    expect("broadcasts", m["roomcast_broadcast_fanout_count"], c.chat_sent + c.flood_delivered)
    per_room = mix["chatters"] // args.rooms
    # Stalled readers sat in chatters' rooms until they were cut off, so a broadcast
    # reached per_room members, or one more.
    fanout_sum = m["roomcast_broadcast_fanout_sum"]
    low = c.chat_sent * per_room + c.flood_delivered
    high = c.chat_sent * (per_room + 1) + c.flood_delivered
    if not low <= fanout_sum <= high:
        failures.append(f"fan-out sum {fanout_sum} outside [{low}, {high}]")
    for reason in ("version", "auth", "origin", "limit"):
        expect(f"{reason} failures", failed(reason), 0)

    peak_conns = max(r["peak_conns"] for r in rounds)
    if peak_conns < args.connections:
        failures.append(f"peak connections {peak_conns:.0f} under --connections {args.connections}")
    log(f"clients: {c.upgrades} upgrades, {c.chat_sent} chat messages, "
        f"{c.churn_cycles} churn cycles, {c.slowloris} slowloris heads timed out, "
        f"{c.garbage_http}+{c.garbage_ws} garbage, {c.flood_closed} flooders closed "
        f"({c.flood_refused} refused), {c.stalled_cut} stalled readers cut off")
    log(f"peak connections {peak_conns:.0f}; messages expected by chatters {expected}, "
        f"lost {lost}, out of order {disorder}")
    rss_after = ", ".join(f"{r['rss'] / 2**20:.1f}" for r in rounds)
    log(f"server RSS: before {before['rss'] / 2**20:.1f} MiB, peak {rss_peak / 2**20:.1f} MiB "
        f"(bound {args.rss_bound_mib} MiB), after each round {rss_after} MiB "
        f"(growth {growth / 1024:.0f} KiB over {rounds[-1]['upgrades']} WebSockets in the "
        f"last round)")
    scrapes = sorted(t for r in rounds for t in r["scrape_secs"])
    if scrapes:
        log(f"/metrics under load, timed by curl: {len(scrapes)} scrapes, median "
            f"{scrapes[len(scrapes) // 2] * 1000:.1f} ms, slowest {scrapes[-1] * 1000:.1f} ms")
    fds_after = ", ".join(str(r["fds"]) for r in rounds)
    log(f"server fds: before {before['fds']}, after each round {fds_after}")
    buckets = sorted(
        (float(k.split('"')[1]), v) for k, v in m.items()
        if k.startswith("roomcast_loop_iteration_seconds_bucket") and "+Inf" not in k)
    total = m["roomcast_loop_iteration_seconds_count"]
    slowest = next((f"{le} s" for le, v in buckets if v == total), "over 1 s")
    over = {le: total - v for le, v in buckets if le >= 0.01}
    log(f"server loop: {total:.0f} iterations, all within {slowest}; "
        f"iterations over 10/50/100/250 ms: {over.get(0.01, 0):.0f}/{over.get(0.05, 0):.0f}/"
        f"{over.get(0.1, 0):.0f}/{over.get(0.25, 0):.0f}")
    return failures


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--binary", default="target/release/roomcast")
    p.add_argument("--duration", type=float, default=60,
                   help="seconds of traffic, split evenly between the rounds")
    p.add_argument("--rounds", type=int, default=2,
                   help="runs of the whole mix against the same server (2: a leak check)")
    # Allocator slack measured between rounds was a few hundred KiB; a leak of 256 bytes
    # per WebSocket would add 2 MiB over a round's ~8,000.
    p.add_argument("--leak-tolerance-kib", type=int, default=1024)
    p.add_argument("--connections", type=int, default=5000)
    p.add_argument("--rooms", type=int, default=50)
    # About 20 MiB was measured at 5,000 connections, most of it the stalled readers' queues
    # (256 KiB bound plus one 128 KiB echo each). 64 MiB leaves room for that to vary; the
    # leak checks proper are the fd count and the gauges after the run.
    p.add_argument("--rss-bound-mib", type=int, default=64)
    args = p.parse_args()

    import resource
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    need = args.connections + 2000
    if soft < need:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(need, hard), hard))
        if hard < need:
            raise SystemExit(f"open-file limit {hard} is too low for {args.connections} clients")

    # A SIGTERM (a CI timeout, say) unwinds through the finally below, which stops the
    # server; the death signal above covers a SIGKILL.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit("soak: terminated"))
    server = Server(args.binary)
    try:
        result = asyncio.run(run(args, server))
        failures = check(args, server, result)
    finally:
        server.stop()
    errors = [l for l in server.log_lines() if '"ERROR"' in l]
    if errors:
        failures.append(f"server logged errors: {errors[:3]}")
    if failures:
        for f in failures:
            log("FAIL", f)
        sys.exit(1)
    log("passed")


if __name__ == "__main__":
    main()
