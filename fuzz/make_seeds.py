#!/usr/bin/env python3
"""Writes the checked-in seed corpora under fuzz/seeds/<target>/.

Run from anywhere: python3 fuzz/make_seeds.py. The seeds are small, valid
or nearly valid inputs that show each target the input layout it expects;
the fuzzer finds the rest. Re-running rewrites the same files.
"""

import os
import struct

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "seeds")

UPGRADE = (
    b"GET /chat HTTP/1.1\r\nHost: example.com\r\nUpgrade: websocket\r\n"
    b"Connection: keep-alive, Upgrade\r\n"
    b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
)


def frame(b0, payload, key=b"\x37\xfa\x21\x3d"):
    """A client frame; key None means unmasked."""
    n = len(payload)
    mask = 0x80 if key is not None else 0
    if n < 126:
        head = bytes([b0, mask | n])
    elif n <= 0xFFFF:
        head = bytes([b0, mask | 126]) + struct.pack(">H", n)
    else:
        head = bytes([b0, mask | 127]) + struct.pack(">Q", n)
    if key is None:
        return head + payload
    body = bytes(b ^ key[i % 4] for i, b in enumerate(payload))
    return head + key + body


def write(target, name, data):
    d = os.path.join(ROOT, target)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)


def handshake():
    write("handshake", "upgrade", UPGRADE)
    write("handshake", "upgrade-lf", UPGRADE.replace(b"\r\n", b"\n"))
    write("handshake", "upgrade-echo-with-frame",
          UPGRADE.replace(b"/chat", b"/echo") + frame(0x81, b"hi"))
    write("handshake", "health", b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    write("handshake", "http10", b"GET /x HTTP/1.0\r\n\r\n")
    write("handshake", "version-8", UPGRADE.replace(b"Version: 13", b"Version: 8"))
    write("handshake", "post", UPGRADE.replace(b"GET", b"POST"))
    write("handshake", "absolute", UPGRADE.replace(b"/chat", b"http://h/chat"))
    write("handshake", "blank-lines", b"\r\n\n" + UPGRADE)
    write("handshake", "traced", UPGRADE.replace(
        b"Host:", b"X-Cloud-Trace-Context: 105445aa7843bc8bf206b12000100000/42;o=1\r\nHost:"))
    write("handshake", "asset", b"GET /client.js HTTP/1.1\r\nHost: x\r\n"
          b"If-None-Match: W/\"0123456789abcdef\", *\r\n\r\n")
    write("handshake", "head", b"HEAD /chat HTTP/1.1\r\nHost: x\r\n\r\n")
    write("handshake", "head-elsewhere", b"HEAD /cs-Vehat HTTP/1.1\r\nHost: x\r\n\r\n")
    write("handshake", "probe", b"GET /readyz HTTP/1.1\r\nHost: x\r\n\r\n")
    write("handshake", "metrics", b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
    write("handshake", "tls", b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03")
    write("handshake", "two-origins", UPGRADE.replace(
        b"Host:", b"Origin: https://a.example\r\norigin: https://b.example\r\nHost:"))
    write("handshake", "plain-lengths", b"GET /healthz HTTP/1.1\r\nHost: x\r\n"
          b"Content-Length: 0\r\nContent-Length: 0, 00\r\n\r\n")
    write("handshake", "plain-chunked", b"GET / HTTP/1.1\r\nHost: x\r\n"
          b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n")


def frames():
    stream = (
        frame(0x81, b"Hello")
        + frame(0x01, "κό".encode())
        + frame(0x89, b"ping")
        + frame(0x80, "σμε".encode())
        + frame(0x82, bytes(300))
        + frame(0x8A, b"")
        + frame(0x88, struct.pack(">H", 1000) + b"bye")
    )
    # The first byte picks the message limit (index 6: 1000 bytes).
    write("frame", "mixed", b"\x06" + stream)
    write("frame", "small-limit", b"\x03" + stream)
    write("frame", "unmasked", b"\x06" + frame(0x81, b"x", key=None) + frame(0x88, b""))
    write("frame", "rsv-then-close", b"\x06" + frame(0xC1, b"x") + frame(0x88, b""))
    write("frame", "bad-utf8", b"\x06" + frame(0x01, b"ok\xf4") + frame(0x80, b"\x90\x80\x80"))


def utf8():
    write("utf8", "greek", "κόσμε".encode())
    write("utf8", "mixed", "a€b𝄞c\u00e9".encode())
    write("utf8", "surrogate", b"\xed\xa0\x80")
    write("utf8", "overlong", b"\xc0\xaf\xe0\x80\xaf")
    write("utf8", "too-high", b"\xf4\x90\x80\x80")
    write("utf8", "cut", b"ab\xf0\x9d")


def close_payload():
    # The first byte picks the route (bit 0) and where the frame is cut.
    write("close_payload", "empty", b"\x00")
    write("close_payload", "normal", b"\x01" + struct.pack(">H", 1000))
    write("close_payload", "reason", b"\x08" + struct.pack(">H", 4000) + "ok κ".encode())
    write("close_payload", "one-byte", b"\x00\x03")
    write("close_payload", "reserved", b"\x00" + struct.pack(">H", 1005))
    write("close_payload", "bad-reason", b"\x00" + struct.pack(">H", 1000) + b"\xff")
    write("close_payload", "too-long", b"\x00" + struct.pack(">H", 1000) + b"x" * 124)


def chat():
    sep = b"\xff"
    msgs = [
        b"\x00" + b'{"type":"join","roomId":"lobby"}',
        b"\x01" + b'{"type":"join","roomId":"lobby"}',
        b"\x00" + b'{"type":"message","text":"hi \\u00e9"}',
        b"\x02" + b'{"type":"message","text":"nobody"}',
        b"\x01" + b'{"type":"leave"}',
        b"\x02" + b'{"type":"ping","n":[1,2.5e3,null,true]}',
        b"\x00" + b'{"type":"join","roomId":1}',
        b"\x00" + b'{"type":"join","roomId":"\\ud800"}',
        b"\x01" + b'{"type":"join","type":"leave"}',
        b"\x02" + b"not json",
        b"\xf0",
    ]
    write("chat", "session", sep.join(msgs))
    write("chat", "array", b"\x00[1,{\"a\":\"b\"}]")
    # Inputs behind the bugs the target found, kept as seeds.
    write("chat", "lone-surrogate-text", b"\xff".join([
        b'\x00{"type":"join","roomId":"r"}',
        b'\x01{"type":"join","roomId":"r"}',
        b'\x00{"type":"message","text":"\\ud800"}',
    ]))
    write("chat", "bad-utf8-ignored-field", b'\x00{"x":"\xc0\xaf","type":"leave"}')


def connection():
    # Raw mode (even first byte): bytes after the handshake of one chat
    # connection.
    stream = (
        frame(0x81, b'{"type":"join","roomId":"r"}')
        + frame(0x01, b'{"type":"mess')
        + frame(0x89, b"p")
        + frame(0x80, b'age","text":"hi"}')
        + frame(0x88, struct.pack(">H", 1001))
    )
    write("connection", "raw-chat", b"\x00" + stream)
    write("connection", "raw-echo", b"\x02" + frame(0x82, bytes(range(200))) + frame(0x88, b""))
    write("connection", "raw-bad", b"\x00" + frame(0x81, b"\xff") + frame(0x88, b""))
    # Structured mode (odd first byte): an `arbitrary` script; any bytes
    # make some script, and these start it off.
    write("connection", "script-a", b"\x01" + bytes(range(64)))
    write("connection", "script-b", b"\x03" + bytes(range(255, 0, -3)))


def backplane_wire():
    write("backplane_wire", "message", b'Mrev-1-ab\n{"type":"message","text":"hi"}')
    write("backplane_wire", "joined", b"Jrev-1-ab\n3 client-1700000000000-abc123xyz")
    write("backplane_wire", "left", b"Lnode\n0 client-1-x")
    write("backplane_wire", "sync", b'Snode\n[["lobby",2],["a b",1]]')
    write("backplane_wire", "gone", b'Gnode\n["c1","r\\/1","c2","r2"]')
    write("backplane_wire", "gone-empty", b"Gnode\n{}")
    write("backplane_wire", "heartbeat", b"Hnode\n")


def token():
    # Shape 1: a header and claims, which the target signs.
    hs256 = b'{"alg":"HS256","typ":"JWT"}'
    write("token", "signed", b"\x01" + hs256 + b'\x00{"exp":1800000000,"sub":"ann","rooms":["lobby","team-*"]}')
    write("token", "signed-nbf", b"\x01" + hs256 + b'\x00{"exp":1800000000,"nbf":1699999990}')
    write("token", "signed-expired", b"\x01" + hs256 + b'\x00{"exp":1699999970.5}')
    write("token", "signed-no-exp", b"\x01" + hs256 + b'\x00{"sub":"ann"}')
    write("token", "signed-array", b"\x01" + hs256 + b'\x00[1800000000,null,"ann",null]')
    write("token", "alg-none", b'\x01{"alg":"none"}\x00{"exp":1800000000}')
    # Shape 0: a token as it came (RFC 7515 A.1's example, another key).
    write("token", "raw", b"\x00eyJ0eXAiOiJKV1QiLA0KICJhbGciOiJIUzI1NiJ9."
          b"eyJpc3MiOiJqb2UiLA0KICJleHAiOjEzMDA4MTkzODAsDQogImh0dHA6Ly9leGFtcGxlLmNvbS9pc19yb290Ijp0cnVlfQ."
          b"dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk")
    # Shape 2: request heads carrying tokens.
    write("token", "request-both", b"\x02GET /?room=a&token=aa.bb.cc HTTP/1.1\r\nHost: x\r\n"
          b"Authorization: Bearer aa.bb.cc\r\n\r\n")
    write("token", "request-twice", b"\x02GET /?token=a&token=b HTTP/1.1\r\nHost: x\r\n\r\n")


def main():
    backplane_wire()
    token()
    handshake()
    frames()
    utf8()
    close_payload()
    chat()
    connection()
    # frame_roundtrip's input is an `arbitrary` structure: a few byte
    # strings get it started.
    write("frame_roundtrip", "a", bytes(range(32)))
    write("frame_roundtrip", "b", b"\x01\x00" + b"hello world" * 4)


if __name__ == "__main__":
    main()
