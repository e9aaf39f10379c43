//! Checks the RFC 6455 opening handshake over raw TCP: accepted variants, the error status for
//! each kind of bad request, requests split into tiny segments, a frame riding in the same
//! write as the request, and the handshake timeout.

mod common;

use common::*;
use std::io::Write;
use std::time::{Duration, Instant};

/// Builds a request from a request line and header lines.
fn request(line: &str, headers: &[&str]) -> String {
    let mut req = format!("{line}\r\n");
    for h in headers {
        req.push_str(h);
        req.push_str("\r\n");
    }
    req.push_str("\r\n");
    req
}

/// After a successful upgrade on /echo, a text frame must come back.
fn assert_echoes(ws: &mut RawWs) {
    ws.send(OP_TEXT, b"ping-through");
    let f = ws.expect_frame(STEP);
    assert_eq!(
        (f.opcode, f.payload.as_slice()),
        (OP_TEXT, &b"ping-through"[..])
    );
}

#[test]
fn rfc_sample_key_gets_rfc_sample_accept() {
    let server = start(&[]);
    let key = "dGhlIHNhbXBsZSBub25jZQ==";
    let mut stream = tcp_connect(server.addr);
    stream
        .write_all(upgrade_request("/echo", key).as_bytes())
        .unwrap();
    let mut buf = Vec::new();
    let resp = read_response_head(&mut stream, &mut buf);
    assert_eq!(resp.status, 101);
    assert_eq!(
        resp.header("sec-websocket-accept"),
        Some("s3pPLMBiTxaQ9kYGzzhZRbK+xOo=")
    );
}

#[test]
fn accepted_handshake_variants() {
    let server = start(&[]);
    let variants: &[(&str, &[&str])] = &[
        ("plain", &["Upgrade: websocket", "Connection: Upgrade"]),
        (
            "token list",
            &["Upgrade: websocket", "Connection: keep-alive, Upgrade"],
        ),
        (
            "lowercase token",
            &["Upgrade: websocket", "Connection: upgrade"],
        ),
        (
            "mixed-case values",
            &["Upgrade: WebSocket", "Connection: keep-alive,UPGRADE"],
        ),
        (
            "lowercase names",
            &["upgrade: websocket", "connection: Upgrade"],
        ),
    ];
    for (name, hdrs) in variants {
        let key = new_key();
        let (k, v) = (
            format!("Sec-WebSocket-Key: {key}"),
            "Sec-WebSocket-Version: 13",
        );
        let mut headers = vec!["Host: localhost"];
        headers.extend_from_slice(hdrs);
        headers.extend_from_slice(&[&k, v]);
        let mut stream = tcp_connect(server.addr);
        stream
            .write_all(request("GET /echo HTTP/1.1", &headers).as_bytes())
            .unwrap();
        let mut buf = Vec::new();
        let resp = read_response_head(&mut stream, &mut buf);
        assert_eq!(resp.status, 101, "variant {name}: {resp:?}");
        assert_switching(&resp, &key);
        assert_echoes(&mut RawWs::from_parts(stream, buf));
    }
}

#[test]
fn bad_handshakes_get_the_right_status() {
    let server = start(&[]);
    let key = format!("Sec-WebSocket-Key: {}", new_key());
    let key = key.as_str();
    let (h, up, conn) = ("Host: x", "Upgrade: websocket", "Connection: Upgrade");
    let v13 = "Sec-WebSocket-Version: 13";
    let get = |headers: &[&str]| request("GET / HTTP/1.1", headers);
    let with_key = |k: &str| get(&[h, up, conn, &format!("Sec-WebSocket-Key: {k}"), v13]);
    let cases: Vec<(&str, String, u16)> = vec![
        (
            "version 8",
            get(&[h, up, conn, key, "Sec-WebSocket-Version: 8"]),
            426,
        ),
        (
            "version 14",
            get(&[h, up, conn, key, "Sec-WebSocket-Version: 14"]),
            426,
        ),
        ("missing key", get(&[h, up, conn, v13]), 400),
        ("short key", with_key("abc"), 400),
        ("15-byte key", with_key("AAAAAAAAAAAAAAAAAAAA"), 400),
        ("17-byte key", with_key("AAAAAAAAAAAAAAAAAAAAAAA="), 400),
        ("non-base64 key", with_key("!!!!!!!!!!!!!!!!!!!!!!=="), 400),
        (
            "upgrade h2c",
            get(&[h, "Upgrade: h2c", conn, key, v13]),
            400,
        ),
        (
            "connection without upgrade",
            get(&[h, up, "Connection: keep-alive", key, v13]),
            400,
        ),
        ("no connection header", get(&[h, up, key, v13]), 400),
        (
            "HTTP/1.0 upgrade",
            request("GET / HTTP/1.0", &[h, up, conn, key, v13]),
            400,
        ),
        ("garbage request line", "HELLO\r\n\r\n".to_owned(), 400),
        (
            "binary junk",
            "\x16\x03\x01\x02\x00\x01\x7c\x03\r\n\r\n".to_owned(),
            400,
        ),
        (
            "POST upgrade",
            request("POST / HTTP/1.1", &[h, up, conn, key, v13]),
            405,
        ),
        (
            "POST plain",
            request("POST /echo HTTP/1.1", &[h, "Content-Length: 0"]),
            405,
        ),
        (
            "PUT",
            request("PUT / HTTP/1.1", &[h, "Content-Length: 0"]),
            405,
        ),
        ("DELETE", request("DELETE /x HTTP/1.1", &[h]), 405),
        // RFC 9112 3.2: exactly one Host in an HTTP/1.1 request.
        ("no Host", get(&[up, conn, key, v13]), 400),
        ("two Hosts", get(&[h, "Host: y", up, conn, key, v13]), 400),
        ("plain GET without Host", get(&[]), 400),
        (
            "HTTP/2.0",
            request("GET / HTTP/2.0", &[h, up, conn, key, v13]),
            505,
        ),
        (
            "upgrade with a body",
            get(&[h, up, conn, key, v13, "Content-Length: 5"]),
            400,
        ),
        (
            "chunked upgrade",
            get(&[h, up, conn, key, v13, "Transfer-Encoding: chunked"]),
            400,
        ),
    ];
    let origin = "Origin: https://a.example";
    let trace = "X-Cloud-Trace-Context: 105445aa7843bc8bf206b12000100000/1;o=1";
    let bearer = "Authorization: Bearer a.b.c";
    let two_keys = format!("Sec-WebSocket-Key: {}", new_key());
    // A field the upgrade reads once, sent twice: refused, not resolved
    // by taking the first. The body names the field.
    let repeated: Vec<(&str, String, &str)> = vec![
        (
            "two Origins",
            get(&[h, up, conn, key, v13, origin, "Origin: https://b.example"]),
            "Origin",
        ),
        (
            "two Authorizations",
            get(&[h, up, conn, key, v13, bearer, bearer]),
            "Authorization",
        ),
        (
            "two trace contexts",
            get(&[h, up, conn, key, v13, trace, trace]),
            "X-Cloud-Trace-Context",
        ),
        (
            "two versions",
            get(&[h, up, conn, key, v13, "sec-websocket-version: 13"]),
            "Sec-WebSocket-Version",
        ),
        (
            "two keys",
            get(&[h, up, conn, key, &two_keys, v13]),
            "Sec-WebSocket-Key",
        ),
        (
            "two Hosts",
            get(&[h, "host: x", up, conn, key, v13]),
            "Host",
        ),
    ];
    for (name, req, field) in &repeated {
        let ex = http_exchange(server.addr, req.as_bytes());
        assert_eq!(ex.resp.status, 400, "{name}: {:?}", ex.resp);
        assert!(ex.resp.body_text().contains(field), "{name}: {:?}", ex.resp);
        assert_error_response(name, &ex);
    }
    for (name, req, want) in &cases {
        let ex = http_exchange(server.addr, req.as_bytes());
        assert_eq!(ex.resp.status, *want, "{name}: {:?}", ex.resp);
        assert_error_response(name, &ex);
        if *want == 426 {
            assert_eq!(
                ex.resp.header("sec-websocket-version"),
                Some("13"),
                "{name}"
            );
        }
    }
    // None of those became a WebSocket connection.
    assert_eq!(server.health()["connectedClients"], 0);
}

fn assert_error_response(name: &str, ex: &Exchange) {
    let body = ex.resp.body_text();
    assert!(!body.trim().is_empty(), "{name}: empty body");
    assert!(
        body.len() < 1024,
        "{name}: body is not short: {} bytes",
        body.len()
    );
    let conn = ex.resp.header("connection").unwrap_or_default();
    assert!(
        conn.eq_ignore_ascii_case("close"),
        "{name}: Connection: {conn:?}"
    );
    assert!(ex.closed, "{name}: server kept the connection open");
}

#[test]
fn oversized_request_head_is_431() {
    let server = start(&[]);
    let pad = "a".repeat(9 * 1024);
    let req = request(
        "GET / HTTP/1.1",
        &[
            "Host: x",
            "Upgrade: websocket",
            "Connection: Upgrade",
            &format!("X-Pad: {pad}"),
        ],
    );
    let ex = http_exchange(server.addr, req.as_bytes());
    assert_eq!(ex.resp.status, 431, "{:?}", ex.resp);
    assert_error_response("431", &ex);
}

#[test]
fn handshake_in_tiny_segments_still_upgrades() {
    let server = start(&[]);
    let key = new_key();
    let mut stream = tcp_connect(server.addr);
    trickle(&mut stream, upgrade_request("/echo", &key).as_bytes()).expect("trickle");
    let mut buf = Vec::new();
    let resp = read_response_head(&mut stream, &mut buf);
    assert_switching(&resp, &key);
    let mut ws = RawWs::from_parts(stream, buf);
    // Frames may be split just as finely.
    trickle(&mut ws.stream, &masked(OP_TEXT, b"slow frame")).expect("trickle");
    let f = ws.expect_frame(STEP);
    assert_eq!(
        (f.opcode, f.payload.as_slice()),
        (OP_TEXT, &b"slow frame"[..])
    );
}

#[test]
fn frame_in_same_write_as_handshake_is_processed() {
    let server = start(&[]);
    let mut first = masked(OP_TEXT, b"early bird");
    first.extend_from_slice(&masked(OP_BINARY, &[0, 1, 2, 255]));
    let mut ws = RawWs::connect_with(server.addr, "/echo", &first);
    let f = ws.expect_frame(STEP);
    assert_eq!(
        (f.opcode, f.payload.as_slice()),
        (OP_TEXT, &b"early bird"[..])
    );
    let f = ws.expect_frame(STEP);
    assert_eq!(
        (f.opcode, f.payload.as_slice()),
        (OP_BINARY, &[0u8, 1, 2, 255][..])
    );
}

#[test]
fn chat_join_in_same_write_as_handshake_is_processed() {
    let server = start(&[]);
    let join = masked(OP_TEXT, br#"{"type":"join","roomId":"early"}"#);
    let mut ws = RawWs::connect_with(server.addr, "/", &join);
    assert_eq!(ws.expect_frame(STEP).json()["type"], "connected");
    let joined = ws.expect_frame(STEP).json();
    assert_eq!(
        joined,
        json!({"type": "joined", "roomId": "early", "userCount": 1})
    );
}

/// Asserts the server drops `stream` within 5 s, but not before `min` after `since`.
fn assert_dropped_between(stream: &mut std::net::TcpStream, since: Instant, min: Duration) {
    let mut junk = Vec::new();
    let end = read_until_closed(stream, &mut junk, Duration::from_secs(5));
    let took = since.elapsed();
    assert_ne!(end, End::TimedOut, "still open after {took:?}");
    assert!(took >= min, "dropped too early, after {took:?}");
}

#[test]
fn incomplete_handshake_is_dropped_after_timeout() {
    let server = start(&["--handshake-timeout", "1s"]);
    let started = Instant::now();
    let mut partial = tcp_connect(server.addr);
    partial
        .write_all(b"GET /echo HTTP/1.1\r\nHost: x\r\nUpgrade: websock")
        .unwrap();
    let mut silent = tcp_connect(server.addr);
    assert_dropped_between(&mut partial, started, Duration::from_millis(900));
    assert_dropped_between(&mut silent, started, Duration::from_millis(900));
    assert!(started.elapsed() < Duration::from_secs(5));
}

#[test]
fn handshake_finished_in_time_is_not_dropped() {
    let server = start(&["--handshake-timeout", "1s"]);
    let key = new_key();
    let req = upgrade_request("/echo", &key);
    let (head, tail) = req.split_at(20);
    let mut stream = tcp_connect(server.addr);
    stream.write_all(head.as_bytes()).unwrap();
    std::thread::sleep(Duration::from_millis(500));
    stream.write_all(tail.as_bytes()).unwrap();
    let mut buf = Vec::new();
    assert_switching(&read_response_head(&mut stream, &mut buf), &key);
    // The handshake timeout must not apply to the WebSocket that follows.
    std::thread::sleep(Duration::from_millis(1200));
    assert_echoes(&mut RawWs::from_parts(stream, buf));
}
