#!/usr/bin/env python3
"""Prove that the static build runs where a FROM scratch image runs it.

    python scripts/empty_root.py --binary target/x86_64-unknown-linux-gnu/release/roomcast

Checks, in order, failing at the first that does not hold:

1. The binary is static: `readelf -d` finds no dynamic section, and `ldd`
   says it is not a dynamic executable.
2. It is under 3 MB.
3. Copied alone into an empty directory that becomes its root (chroot as
   root, else a user namespace via `unshare`), run as user 65532 as the image
   runs it, with only PORT and HOST in its environment, it serves: /healthz
   and /readyz answer, and two `websockets` clients (an independent
   implementation) hold a chat session in a room.
4. On SIGTERM both clients get `server_shutdown` and a 1001 close, and the
   process exits 0.

Needs the `websockets` package (scripts/test.sh installs it in target/venv).
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

try:
    from websockets.exceptions import ConnectionClosed
    from websockets.sync.client import connect
except ImportError as exc:  # pragma: no cover - depends on the environment
    sys.exit(
        f"empty_root: cannot import websockets ({exc}); install it with "
        "`pip install websockets` (scripts/test.sh does this in target/venv)"
    )

MAX_BYTES = 3_000_000
# The image's user: not root, and named by number, as there is no
# /etc/passwd in an empty root.
UID = 65532
STEP = 5.0  # seconds one step may take


def fail(message: str) -> None:
    sys.exit(f"empty_root: FAILED: {message}")


def check_static(binary: Path) -> None:
    readelf = subprocess.run(
        ["readelf", "-d", str(binary)], capture_output=True, text=True, check=True
    )
    if "There is no dynamic section" not in readelf.stdout:
        fail(f"readelf -d found a dynamic section:\n{readelf.stdout}")
    # ldd exits 1 for a static executable, saying so on stdout or stderr.
    ldd = subprocess.run(["ldd", str(binary)], capture_output=True, text=True)
    said = (ldd.stdout + ldd.stderr).strip()
    if "not a dynamic executable" not in said:
        fail(f"ldd: {said!r}")
    print(f"static: readelf -d: no dynamic section; ldd: {said}")


def check_size(binary: Path) -> None:
    size = binary.stat().st_size
    print(f"size: {size} bytes ({size / 1_000_000:.2f} MB)")
    if size >= MAX_BYTES:
        fail(f"{size} bytes is not under {MAX_BYTES}")


def tool(name: str) -> str:
    # Found here, as the server's environment holds no PATH.
    path = shutil.which(name) or shutil.which(name, path="/usr/sbin:/sbin:/usr/bin:/bin")
    if path is None:
        fail(f"{name} not found (Debian's coreutils and util-linux provide it)")
    return path


def jail_command(root: Path) -> list[str]:
    """How to run /roomcast with `root` as the root directory, as UID."""
    if os.geteuid() == 0:
        return [tool("chroot"), f"--userspec={UID}:{UID}", str(root), "/roomcast"]
    # Unprivileged: a user namespace in which we are root may chroot; the
    # server then runs as that namespace's root, our own user outside it.
    return [
        tool("unshare"),
        "--user",
        "--map-root-user",
        tool("chroot"),
        str(root),
        "/roomcast",
    ]


def check_jailed(pid: int, root: Path) -> None:
    """The process (chroot execs the server in its own place) sees `root` as
    its root directory and, when we are root, runs as UID."""
    seen = os.readlink(f"/proc/{pid}/root")
    if Path(seen) != root:
        fail(f"the server's root is {seen}, not {root}")
    if os.geteuid() == 0:
        status = Path(f"/proc/{pid}/status").read_text()
        uids = next(l for l in status.splitlines() if l.startswith("Uid:")).split()[1:]
        if any(int(u) != UID for u in uids):
            fail(f"the server runs as uids {uids}, not {UID}")
        print(f"jail: root directory {seen}, uid {UID}")
    else:
        print(f"jail: root directory {seen}, in a user namespace")


class Server:
    """The binary in its empty root, its stdout collected line by line."""

    def __init__(self, root: Path) -> None:
        self.proc = subprocess.Popen(
            jail_command(root),
            env={"PORT": "0", "HOST": "127.0.0.1"},
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.lines: list[str] = []
        self.stderr = ""
        self.listening = threading.Event()
        self.port = 0
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line.rstrip("\n"))
            try:
                entry = json.loads(line)
            except ValueError:
                continue
            if entry.get("message") == "listening":
                self.port = int(entry["address"].rsplit(":", 1)[1])
                self.listening.set()

    def wait_listening(self) -> None:
        if not self.listening.wait(STEP):
            self.proc.kill()
            _, err = self.proc.communicate()
            fail(f"never logged 'listening'; stdout {self.lines}, stderr {err!r}")


def get(port: int, path: str) -> tuple[int, dict]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=STEP)
    conn.request("GET", path)
    resp = conn.getresponse()
    body = json.loads(resp.read())
    conn.close()
    return resp.status, body


def recv_json(ws, want_type: str) -> dict:
    msg = json.loads(ws.recv(timeout=STEP))
    if msg.get("type") != want_type:
        fail(f"expected {want_type!r}, got {msg}")
    return msg


def chat_session(port: int) -> tuple:
    url = f"ws://127.0.0.1:{port}/"
    alice = connect(url, open_timeout=STEP)
    bob = connect(url, open_timeout=STEP)
    for ws in (alice, bob):
        recv_json(ws, "connected")
    alice.send(json.dumps({"type": "join", "roomId": "scratch"}))
    recv_json(alice, "joined")
    bob.send(json.dumps({"type": "join", "roomId": "scratch"}))
    if recv_json(bob, "joined")["userCount"] != 2:
        fail("bob's join did not count alice")
    recv_json(alice, "user_joined")
    alice.send(json.dumps({"type": "message", "text": "from an empty root"}))
    for ws in (alice, bob):
        if recv_json(ws, "message")["text"] != "from an empty root":
            fail("the message came back changed")
    print("chat: two websockets clients joined a room and exchanged a message")
    return alice, bob


def expect_shutdown(ws) -> None:
    recv_json(ws, "server_shutdown")
    try:
        ws.recv(timeout=STEP)
    except ConnectionClosed as closed:
        if closed.rcvd is None or closed.rcvd.code != 1001:
            fail(f"closed with {closed.rcvd}, not 1001")
        return
    fail("no close after server_shutdown")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--binary", type=Path, required=True)
    args = parser.parse_args()
    binary = args.binary.resolve()
    if not binary.is_file():
        fail(f"{binary} does not exist; build it with scripts/build-static.sh")

    check_static(binary)
    check_size(binary)

    root = Path(tempfile.mkdtemp(prefix="roomcast-root-"))
    try:
        # Readable by the unprivileged user the server runs as.
        root.chmod(0o755)
        shutil.copy2(binary, root / "roomcast")
        print(f"root: {sorted(p.name for p in root.iterdir())} and nothing else")
        server = Server(root)
        server.wait_listening()
        check_jailed(server.proc.pid, root)
        port = server.port
        for path, want in [("/healthz", (200, "alive")), ("/readyz", (200, "ready"))]:
            status, body = get(port, path)
            if (status, body.get("status")) != want:
                fail(f"GET {path}: {status} {body}")
        print("probes: /healthz 200 alive, /readyz 200 ready")
        alice, bob = chat_session(port)
        started = time.monotonic()
        server.proc.send_signal(signal.SIGTERM)
        for ws in (alice, bob):
            expect_shutdown(ws)
        try:
            code = server.proc.wait(timeout=STEP)
        except subprocess.TimeoutExpired:
            server.proc.kill()
            fail("still running after SIGTERM and both clients closed")
        if code != 0:
            fail(f"exit status {code}; stdout {server.lines}")
        took = time.monotonic() - started
        print(f"shutdown: server_shutdown, 1001 close, exit 0 after {took:.2f} s")
    finally:
        shutil.rmtree(root, ignore_errors=True)
    print("empty_root: passed")


if __name__ == "__main__":
    main()
