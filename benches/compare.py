#!/usr/bin/env python3
"""Runs the same loads against roomcast and the reference servers.

    benches/compare.py                   # everything, 5 runs each
    benches/compare.py --runs 3 --only echo32-d16 broadcast

Builds roomcast and the load generator, copies the reference servers to
target/peers (their folder is read-only) and builds them there: the Rust
ones with cargo, the Node one with `npm ci`. Each run starts a fresh server
pinned to CPU 0 with taskset and runs the generator pinned to CPU 1; the
table shows the median of the runs for every figure, and the ratios of
roomcast's figures to the plain TCP echo server's and to Node's.

The reference servers are looked for in --peers, else $ROOMCAST_PEERS,
else ../shared/peers beside the repository. Without them only roomcast is
measured, and the script says so.
"""

import argparse
import datetime
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RELEASE = os.path.join(REPO, "target", "release")
PEERS_BUILD = os.path.join(REPO, "target", "peers")

# The loads. Each names the generator arguments and which figure is the
# headline rate and the CPU cost.
BENCHMARKS = {
    "echo32-d16": {
        "mode": ["echo", "-c", "100", "-p", "16", "-s", "32"],
        "servers": ["roomcast", "raw-tcp", "tungstenite", "fastwebsockets", "node"],
        "rate": "msgs_per_s",
        "cpu": "cpu_us_per_msg",
    },
    "echo32-d1": {
        "mode": ["echo", "-c", "100", "-p", "1", "-s", "32"],
        "servers": ["roomcast", "raw-tcp", "tungstenite", "fastwebsockets", "node"],
        "rate": "msgs_per_s",
        "cpu": "cpu_us_per_msg",
    },
    "echo1k-d16": {
        "mode": ["echo", "-c", "100", "-p", "16", "-s", "1024"],
        "servers": ["roomcast", "raw-tcp", "tungstenite", "fastwebsockets", "node"],
        "rate": "msgs_per_s",
        "cpu": "cpu_us_per_msg",
    },
    "echo64k-d1": {
        "mode": ["echo", "-c", "100", "-p", "1", "-s", "65536"],
        "servers": ["roomcast", "raw-tcp", "tungstenite", "fastwebsockets", "node"],
        "rate": "mb_per_s",
        "cpu": "cpu_us_per_msg",
    },
    "broadcast": {
        "mode": ["broadcast", "-m", "1000", "-k", "1", "-p", "16"],
        "servers": ["roomcast", "tungstenite", "node"],
        "rate": "deliveries_per_s",
        "cpu": "cpu_us_per_delivery",
    },
    "handshakes": {
        "mode": ["handshakes", "-c", "50"],
        "servers": ["roomcast", "tungstenite", "fastwebsockets", "node"],
        "rate": "handshakes_per_s",
        "cpu": "cpu_us_per_handshake",
    },
    "idle": {
        "mode": ["idle", "-n", "19000"],
        "servers": ["roomcast", "raw-tcp", "tungstenite", "fastwebsockets", "node"],
        "rate": None,
        "cpu": None,
    },
}

# Figures shown per benchmark, in order.
COLUMNS = {
    "echo": ["msgs_per_s", "mb_per_s", "cpu_us_per_msg", "server_core_share",
             "rtt_p50_us", "rtt_p99_us", "rtt_p999_us"],
    "broadcast": ["deliveries_per_s", "cpu_us_per_delivery", "server_core_share",
                  "latency_p50_us", "latency_p99_us", "lost"],
    "handshakes": ["handshakes_per_s", "cpu_us_per_handshake", "server_core_share",
                   "failed"],
    "idle": ["connections", "rss_bytes_per_conn", "anon_bytes_per_conn"],
}


def log(*args):
    print(*args, file=sys.stderr, flush=True)


def run(cmd, cwd=None, env=None):
    log("+", " ".join(cmd))
    subprocess.run(cmd, cwd=cwd, env=env, check=True)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def find_peers(flag):
    for candidate in [flag, os.environ.get("ROOMCAST_PEERS"),
                      os.path.join(REPO, "..", "shared", "peers")]:
        if candidate and os.path.isfile(os.path.join(candidate, "Cargo.toml")):
            return os.path.abspath(candidate)
    return None


def build(peers, skip_build):
    if not skip_build:
        run(["cargo", "build", "--release", "--workspace"], cwd=REPO)
    if peers is None:
        return
    if not skip_build or not os.path.isdir(PEERS_BUILD):
        # A fresh copy each time, keeping the build directories.
        os.makedirs(PEERS_BUILD, exist_ok=True)
        shutil.copytree(peers, PEERS_BUILD, dirs_exist_ok=True,
                        ignore=shutil.ignore_patterns("target", "node_modules"))
        run(["cargo", "build", "--release"], cwd=PEERS_BUILD)
        run(["npm", "ci", "--no-audit", "--no-fund"], cwd=os.path.join(PEERS_BUILD, "node-ws"))


def server_command(name, bench, port):
    """The command line and environment that start `name` for `bench`."""
    env = dict(os.environ, HOST="127.0.0.1", PORT=str(port))
    peer_bin = os.path.join(PEERS_BUILD, "target", "release")
    if name == "roomcast":
        # The admission and rate limits guard a public deployment; a load
        # test from one machine would trip them, so they are opened up.
        limits = ["--max-connections", "20000", "--max-connections-per-ip", "20000",
                  "--max-room-members", "100000", "--rate-limit", "1000000000",
                  "--rate-burst", "1000000000"]
        return [os.path.join(RELEASE, "roomcast"), "--host", "127.0.0.1",
                "--port", str(port), "--log-level", "warning"] + limits, env, []
    if name == "raw-tcp":
        return [os.path.join(peer_bin, "raw-tcp-echo"), str(port)], env, ["--raw-tcp"]
    if name == "tungstenite":
        mode = "broadcast" if bench == "broadcast" else "echo"
        return [os.path.join(peer_bin, "peer-tungstenite"), mode, str(port)], env, []
    if name == "fastwebsockets":
        return [os.path.join(peer_bin, "peer-fastwebsockets"), str(port)], env, []
    if name == "node":
        if bench != "broadcast" and bench != "idle":
            env["ECHO_RAW"] = "1"
        return ["node", os.path.join(PEERS_BUILD, "node-ws", "server.js")], env, []
    raise ValueError(name)


def wait_listening(port, proc, timeout=60.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError("server did not start listening")


def one_run(name, bench, args):
    port = free_port()
    cmd, env, extra = server_command(name, bench, port)
    spec = BENCHMARKS[bench]
    server = subprocess.Popen(["taskset", "-c", args.server_cpu] + cmd, env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        try:
            wait_listening(port, server)
        except RuntimeError as e:
            log(f"  {name} {bench}: {e}")
            return None
        # The first connection above was not a WebSocket; give the server a
        # moment to drop it before measuring.
        time.sleep(0.3)
        gen = ["taskset", "-c", args.load_cpu, os.path.join(RELEASE, "roomcast-bench"),
               "--port", str(port), "--server-pid", str(server.pid),
               "--warmup", args.warmup, "--duration", args.duration] + extra
        if name == "roomcast" and bench == "idle":
            gen += ["--path", "/"]
        mode = list(spec["mode"])
        if name == "tungstenite" and bench == "broadcast":
            # Its room is every connection, with frames sent on verbatim.
            mode += ["--protocol", "raw"]
        out = subprocess.run(gen + mode, capture_output=True, text=True,
                             timeout=600)
        if out.returncode != 0:
            log(f"  {name} {bench}: generator failed: {out.stderr.strip()}")
            return None
        line = next(l for l in out.stdout.splitlines() if l.startswith("RESULT "))
        fields = dict(kv.split("=", 1) for kv in line.split()[1:])
        return {k: float(v) for k, v in fields.items() if k != "mode"}
    finally:
        server.terminate()
        try:
            server.wait(timeout=10)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()


def median_of(runs):
    keys = set().union(*(r.keys() for r in runs))
    return {k: statistics.median(r[k] for r in runs if k in r) for k in sorted(keys)}


def fmt(v):
    if v is None:
        return "-"
    if abs(v) >= 1e6:
        return f"{v / 1e6:.2f} M"
    if abs(v) >= 1e4:
        return f"{v / 1e3:.1f} k"
    if abs(v) >= 100:
        return f"{v:.0f}"
    return f"{v:.3g}"


def table(bench, medians):
    spec = BENCHMARKS[bench]
    cols = COLUMNS[spec["mode"][0]]
    lines = [f"### {bench}: `roomcast-bench {' '.join(spec['mode'])}`", ""]
    head = ["server"] + cols
    ratios = []
    if spec["rate"]:
        ratios = [f"{spec['rate']} vs TCP", f"{spec['cpu']} vs TCP",
                  f"{spec['rate']} vs Node"]
    elif bench == "idle":
        ratios = ["bytes/conn vs Node"]
    lines.append("| " + " | ".join(head + ratios) + " |")
    lines.append("|" + "---|" * (len(head) + len(ratios)))
    tcp = medians.get("raw-tcp")
    node = medians.get("node")
    for name, m in medians.items():
        row = [name] + [fmt(m.get(c)) for c in cols]

        def ratio(ref, key):
            if not ref or not ref.get(key) or m.get(key) is None:
                return "-"
            return f"{m[key] / ref[key]:.2f}x"

        if spec["rate"]:
            row += [ratio(tcp, spec["rate"]), ratio(tcp, spec["cpu"]),
                    ratio(node, spec["rate"])]
        elif bench == "idle":
            row += [ratio(node, "rss_bytes_per_conn")]
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def main():
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--peers", help="the reference servers' folder")
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--warmup", default="1s")
    p.add_argument("--duration", default="3s")
    p.add_argument("--only", nargs="*", choices=sorted(BENCHMARKS), help="benchmarks to run")
    p.add_argument("--servers", nargs="*", help="servers to run (default: all found)")
    p.add_argument("--server-cpu", default="0")
    p.add_argument("--load-cpu", default="1")
    p.add_argument("--skip-build", action="store_true")
    p.add_argument("--json", help="also write every run's figures here")
    args = p.parse_args()
    # Stopped by a signal, still stop the server of the current run.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))

    peers = find_peers(args.peers)
    if peers is None:
        log("NOTE: reference servers not found (--peers, $ROOMCAST_PEERS or "
            "../shared/peers); measuring roomcast alone, with no ratios.")
    build(peers, args.skip_build)
    log(f"fd limit: {subprocess.run(['sh', '-c', 'ulimit -n'], capture_output=True, text=True).stdout.strip()}")

    results = {}
    for bench in args.only or list(BENCHMARKS):
        servers = BENCHMARKS[bench]["servers"]
        if peers is None:
            servers = ["roomcast"]
        if args.servers:
            servers = [s for s in servers if s in args.servers]
        results[bench] = {}
        for name in servers:
            runs = []
            for i in range(args.runs):
                r = one_run(name, bench, args)
                log(f"  {bench} {name} run {i + 1}: {r}")
                if r is not None:
                    runs.append(r)
            results[bench][name] = runs
    date = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    print(f"# roomcast comparison, {date}: median of {args.runs} runs, "
          f"server on CPU {args.server_cpu}, generator on CPU {args.load_cpu}, "
          f"{args.warmup} warm-up + {args.duration} measured\n")
    for bench, per_server in results.items():
        medians = {n: median_of(r) for n, r in per_server.items() if r}
        print(table(bench, medians))
        missing = [n for n, r in per_server.items() if not r]
        if missing:
            print(f"\n(no successful run: {', '.join(missing)})")
        print()
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"date": date, "results": results}, f, indent=1)


if __name__ == "__main__":
    main()
