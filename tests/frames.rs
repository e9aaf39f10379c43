//! Checks RFC 6455 framing with hand-built frames: echo of text and binary, ping/pong,
//! fragmentation, the close codes for protocol errors (1002, 1007, 1009) and the closing
//! handshake in both directions.

mod common;

use common::*;
use std::time::{Duration, Instant};
use tungstenite::Message;

/// Opens a fresh /echo connection, sends `bytes` and expects a close with `code`, after which
/// the server must close TCP once we answer.
fn expect_close_for(server: &Server, what: &str, bytes: &[u8], code: u16) {
    let mut ws = RawWs::connect(server.addr, "/echo");
    ws.send_raw(bytes);
    let f = ws
        .read_frame(STEP)
        .unwrap_or_else(|e| panic!("{what}: no close frame ({e:?})"));
    assert_eq!(f.opcode, OP_CLOSE, "{what}: expected close, got {f:?}");
    assert_eq!(f.close_code(), code, "{what}: close code");
    // Answering may fail if the server already closed; the EOF check is what matters.
    let _ = std::io::Write::write_all(&mut ws.stream, &masked(OP_CLOSE, &close_payload(code, "")));
    ws.expect_eof(STEP);
}

#[test]
fn echo_returns_text_and_binary_verbatim() {
    let server = start(&[]);
    let mut c = Client::plain(&server, "/echo");
    let big: Vec<u8> = (0..70_000u32).map(|i| (i * 7 % 251) as u8).collect();
    let medium = "é".repeat(100); // 200 bytes: the 16-bit length form
    let messages = vec![
        Message::text("hello"),
        Message::text(""),
        Message::text(medium),
        Message::text("{\"type\":\"join\",\"roomId\":\"r\"}"), // no chat protocol on /echo
        Message::binary(vec![0u8, 255, 1, 254]),
        Message::binary(big), // the 64-bit length form
    ];
    for m in messages {
        c.send(m.clone());
        assert_eq!(c.recv_data(STEP), m);
    }
}

#[test]
fn ping_is_answered_with_pong_of_same_payload() {
    let server = start(&[]);
    let mut ws = RawWs::connect(server.addr, "/echo");
    for payload in [&b"abc"[..], b"", &[7u8; 125][..]] {
        ws.send(OP_PING, payload);
        let f = ws.expect_frame(STEP);
        assert_eq!(
            (f.fin, f.opcode, f.payload.as_slice()),
            (true, OP_PONG, payload)
        );
    }
}

#[test]
fn unmasked_client_frame_is_closed_with_1002() {
    let server = start(&[]);
    expect_close_for(
        &server,
        "unmasked",
        &encode_frame(FIN | OP_TEXT, b"hi", false),
        1002,
    );
}

#[test]
fn reserved_opcodes_are_closed_with_1002() {
    let server = start(&[]);
    for op in [0x3u8, 0x7, 0xB, 0xF] {
        expect_close_for(&server, &format!("opcode {op:#x}"), &masked(op, b"x"), 1002);
    }
}

#[test]
fn rsv_bits_are_closed_with_1002() {
    let server = start(&[]);
    for rsv in [0x40u8, 0x20, 0x10] {
        let frame = encode_frame(FIN | rsv | OP_TEXT, b"x", true);
        expect_close_for(&server, &format!("rsv {rsv:#x}"), &frame, 1002);
    }
}

#[test]
fn continuation_without_start_is_closed_with_1002() {
    let server = start(&[]);
    expect_close_for(&server, "lone continuation", &masked(OP_CONT, b"x"), 1002);
}

#[test]
fn invalid_utf8_text_is_closed_with_1007() {
    let server = start(&[]);
    expect_close_for(&server, "0xff", &masked(OP_TEXT, &[b'o', b'k', 0xff]), 1007);
    expect_close_for(
        &server,
        "truncated é",
        &masked(OP_TEXT, &[b'a', 0xc3, 0x28]),
        1007,
    );
    // The bad byte is in the second fragment; the first alone is fine.
    let mut split = encode_frame(OP_TEXT, &[0xe2, 0x82], true);
    split.extend(encode_frame(FIN | OP_CONT, &[0x28], true));
    expect_close_for(&server, "split sequence", &split, 1007);
    // Long text, checked a block at a time: one bad byte at the end of
    // 64 KiB of ASCII, in one frame, and in the second half of a frame
    // whose halves arrive apart.
    let mut long = vec![b'a'; 65_536];
    long[65_535] = 0xff;
    expect_close_for(&server, "bad last byte", &masked(OP_TEXT, &long), 1007);
    let frame = masked(OP_TEXT, &long);
    let mut ws = RawWs::connect(server.addr, "/echo");
    ws.send_raw(&frame[..30_000]);
    std::thread::sleep(Duration::from_millis(50));
    ws.send_raw(&frame[30_000..]);
    assert_eq!(ws.expect_close(STEP), 1007, "bad byte in a later read");
}

/// Large replies are written as soon as they are decoded and small ones
/// gathered: sent together without waiting, they still come back whole
/// and in order.
#[test]
fn large_and_small_echoes_come_back_in_order() {
    let server = start(&[]);
    let mut c = Client::plain(&server, "/echo");
    let mut sent = Vec::new();
    for round in 0..8u32 {
        sent.push(Message::text(format!("small {round}")));
        sent.push(Message::text(format!("{round} {}", "é".repeat(50_000))));
        sent.push(Message::binary(vec![round as u8; 65_536]));
        sent.push(Message::text("x".repeat(20_000 + round as usize)));
        sent.push(Message::binary(vec![round as u8; 3]));
    }
    for m in &sent {
        c.send(m.clone());
    }
    for (i, m) in sent.iter().enumerate() {
        assert_eq!(&c.recv_data(STEP), m, "message {i}");
    }
}

#[test]
fn oversized_message_is_closed_with_1009_without_waiting_for_payload() {
    let server = start(&["--max-message-size", "1000"]);
    let mut ws = RawWs::chat(server.addr);
    // Only the header: the server must decide from the declared length.
    ws.send_raw(&frame_header(FIN | OP_TEXT, 2000, true));
    assert_eq!(ws.expect_close(STEP), 1009);
}

/// A client that keeps sending the payload of a frame refused for its size
/// must still get a clean close: its close reply, after that payload, is
/// found, and TCP ends with FIN, not a reset.
#[test]
fn rest_of_a_refused_frame_is_skipped_and_the_close_reply_found() {
    let server = start(&["--max-message-size", "1000", "--close-timeout", "10s"]);
    let mut ws = RawWs::chat(server.addr);
    let frame = encode_frame(FIN | OP_BINARY, &[b'a'; 3000], true);
    let (header, payload) = frame.split_at(8);
    ws.send_raw(header);
    assert_eq!(ws.expect_close(STEP), 1009);
    for chunk in payload.chunks(700) {
        ws.send_raw(chunk);
        std::thread::sleep(Duration::from_millis(20));
    }
    ws.send_raw(&masked(OP_CLOSE, &close_payload(1009, "")));
    let started = Instant::now();
    let mut rest = Vec::new();
    let end = read_until_closed(&mut ws.stream, &mut rest, STEP);
    assert_eq!(end, End::Eof, "the server must close cleanly, not reset");
    assert!(rest.is_empty(), "nothing after the close: {rest:?}");
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "closed at once, not at the timeout"
    );
}

#[test]
fn message_at_the_limit_is_accepted() {
    let server = start(&["--max-message-size", "1000"]);
    let mut c = Client::chat(&server);
    let text = format!("\"{}\"", "a".repeat(998)); // a JSON string of exactly 1000 bytes
    c.send_text(&text);
    let reply = c.recv_json(STEP);
    assert_eq!(reply["type"], "echo");
    assert_eq!(reply["originalMessage"], Value::String("a".repeat(998)));
}

#[test]
fn oversized_fragmented_message_is_closed_with_1009() {
    let server = start(&["--max-message-size", "1000"]);
    let mut ws = RawWs::chat(server.addr);
    ws.send_raw(&encode_frame(OP_TEXT, &[b' '; 600], true));
    ws.send_raw(&encode_frame(FIN | OP_CONT, &[b' '; 600], true));
    assert_eq!(ws.expect_close(STEP), 1009);
}

#[test]
fn max_message_size_comes_from_the_environment() {
    let server = ServerBuilder::new().env("MAX_MESSAGE_SIZE", "1000").spawn();
    let mut ws = RawWs::chat(server.addr);
    ws.send_raw(&frame_header(FIN | OP_BINARY, 1001, true));
    assert_eq!(ws.expect_close(STEP), 1009);
}

#[test]
fn echo_has_its_own_size_limit() {
    // The chat limit does not apply to /echo ...
    let server = start(&["--max-message-size", "1000"]);
    let mut c = Client::plain(&server, "/echo");
    let big = Message::binary(vec![9u8; 5000]);
    c.send(big.clone());
    assert_eq!(c.recv_data(STEP), big);
    // ... which has its own.
    let server = start(&["--echo-max-message-size", "1000"]);
    let mut ws = RawWs::connect(server.addr, "/echo");
    ws.send_raw(&frame_header(FIN | OP_BINARY, 2000, true));
    assert_eq!(ws.expect_close(STEP), 1009);
}

#[test]
fn fragmented_message_with_ping_in_between() {
    let server = start(&[]);
    let mut ws = RawWs::connect(server.addr, "/echo");
    let mut bytes = encode_frame(OP_TEXT, b"Hel", true);
    bytes.extend(masked(OP_PING, b"mid"));
    bytes.extend(encode_frame(OP_CONT, b"lo, ", true));
    bytes.extend(encode_frame(FIN | OP_CONT, "wörld".as_bytes(), true));
    ws.send_raw(&bytes);
    let mut got = [ws.expect_frame(STEP), ws.expect_frame(STEP)];
    got.sort_by_key(|f| f.opcode);
    let text = Frame {
        fin: true,
        rsv: 0,
        opcode: OP_TEXT,
        payload: "Hello, wörld".into(),
    };
    let pong = Frame {
        fin: true,
        rsv: 0,
        opcode: OP_PONG,
        payload: b"mid".to_vec(),
    };
    assert_eq!(got, [text, pong]);
}

#[test]
fn client_close_is_answered_with_close_then_eof() {
    let server = start(&[]);
    let mut ws = RawWs::connect(server.addr, "/echo");
    ws.send(OP_CLOSE, &close_payload(1000, "bye"));
    assert_eq!(ws.expect_close(STEP), 1000);
    ws.expect_eof(STEP);
}

#[test]
fn server_waits_for_close_reply_then_closes_tcp() {
    let server = start(&[]);
    let mut ws = RawWs::connect(server.addr, "/echo");
    ws.send(OP_TEXT, &[0xff]);
    assert_eq!(ws.expect_close(STEP), 1007);
    // The server sent its close and now waits for ours (close timeout is 5 s by default).
    ws.expect_quiet_open(Duration::from_millis(300));
    ws.send(OP_CLOSE, &close_payload(1007, ""));
    ws.expect_eof(Duration::from_secs(1));
}

#[test]
fn unanswered_close_is_dropped_after_close_timeout() {
    let server = start(&["--close-timeout", "1s"]);
    let mut ws = RawWs::connect(server.addr, "/echo");
    ws.send(OP_TEXT, &[0xff]);
    assert_eq!(ws.expect_close(STEP), 1007);
    let sent = Instant::now();
    ws.expect_eof(Duration::from_secs(4));
    let took = sent.elapsed();
    assert!(
        took >= Duration::from_millis(800),
        "dropped after {took:?}, before close timeout"
    );
}
