//! Arbitrary close payloads, judged directly and sent to a live connection.
//!
//! Checks: `parse_close_payload` gives exactly the answer RFC 6455 5.5.1
//! and 7.4 give, computed here independently; and an open connection that
//! receives a close frame with that payload answers exactly as the RFC
//! asks: an empty close for an empty one, the peer's code echoed for a
//! valid one, 1002 for a one-byte payload, a code that may not be sent or
//! a payload over 125 bytes, 1007 for a reason that is not UTF-8; then it
//! writes nothing more and closes TCP.

#![no_main]

use libfuzzer_sys::fuzz_target;
use roomcast::close::{parse_close_payload, BadClose, CloseCode, PeerClose};
use roomcast::conn::{Engine, Limits, Phase};
use roomcast_fuzz::{
    client_frame, read_server_frames, response_head_end, rfc_code_may_be_sent, upgrade_request,
    MemSocket,
};

/// The RFC's answer to a close payload: the close code to send back, or
/// `None` for an empty close.
fn rfc_answer(payload: &[u8]) -> Option<u16> {
    if payload.len() > 125 {
        // 5.5: a control frame carries at most 125 bytes.
        return Some(1002);
    }
    match payload {
        [] => None,
        // 5.5.1: a body starts with a two-byte code.
        [_] => Some(1002),
        [hi, lo, reason @ ..] => {
            let code = u16::from_be_bytes([*hi, *lo]);
            if !rfc_code_may_be_sent(code) {
                Some(1002)
            } else if std::str::from_utf8(reason).is_err() {
                // 5.5.1 and 8.1: the reason is UTF-8, or the payload is
                // invalid data: 1007.
                Some(1007)
            } else {
                // 5.5.1: echo the status code received.
                Some(code)
            }
        }
    }
}

fn limits() -> Limits {
    Limits {
        max_message: 1000,
        echo_max_message: 1000,
        max_queued: 1 << 16,
        handshake_timeout: 10_000,
        close_timeout: 5_000,
        ping_interval: 30_000,
        max_age: 3_600_000,
    }
}

fuzz_target!(|data: &[u8]| {
    // Every log line is built, so that logging untrusted fields is fuzzed
    // too; run with -close_fd_mask=1 to drop them (scripts/fuzz.sh does).
    roomcast::log::set_level(roomcast::log::Level::Debug);
    let Some((&pick, payload)) = data.split_first() else {
        return;
    };
    let want = rfc_answer(payload);

    if payload.len() <= 125 {
        let got = parse_close_payload(payload);
        match (got, want) {
            (Ok(PeerClose::Empty), None) => {}
            (Ok(PeerClose::Code(code)), Some(want)) => assert_eq!(code, want),
            (Err(bad), Some(want)) => {
                assert_eq!(bad.close_code().as_u16(), want);
                let expected_kind = match bad {
                    BadClose::Truncated => payload.len() == 1,
                    BadClose::ReservedCode(c) => {
                        payload.len() >= 2 && u16::from_be_bytes([payload[0], payload[1]]) == c
                    }
                    BadClose::InvalidReason => want == CloseCode::InvalidPayload.as_u16(),
                };
                assert!(expected_kind, "{bad:?} for {payload:?}");
            }
            (got, want) => panic!("{payload:?}: got {got:?}, RFC says {want:?}"),
        }
    }

    // The same close on a live connection, chat or echo, cut in two.
    let path = if pick & 1 == 0 { "/" } else { "/echo" };
    let mut engine: Engine<MemSocket> = Engine::new(limits(), "fuzz");
    let key = engine.accept(
        MemSocket {
            room: usize::MAX,
            ..MemSocket::default()
        },
        0,
    );
    engine.on_input(key, &mut upgrade_request(path), 0);
    engine.flush(0);
    let mut head = std::mem::take(&mut engine.peer_mut(key).unwrap().socket.written);
    let end = response_head_end(&head).expect("101 written");
    assert!(head.starts_with(b"HTTP/1.1 101 "));
    head.drain(..end);
    let (greeting, _) = read_server_frames(&head);
    assert_eq!(greeting.len(), usize::from(path == "/"));

    let frame = client_frame(0x88, Some([pick, 0x5A, 0xA5, !pick]), payload);
    let cut = usize::from(pick >> 1) % (frame.len() + 1);
    let (a, b) = frame.split_at(cut);
    engine.on_input(key, &mut a.to_vec(), 1);
    engine.on_input(key, &mut b.to_vec(), 1);
    engine.flush(1);

    let peer = engine.peer(key).expect("not yet removed");
    let (frames, used) = read_server_frames(&peer.socket.written);
    assert_eq!(used, peer.socket.written.len());
    assert_eq!(frames.len(), 1, "exactly one close answers a close");
    let answer = &frames[0].payload;
    assert_eq!(frames[0].opcode(), 0x8);
    let valid_close = payload.len() <= 125 && parse_close_payload(payload).is_ok();
    match want {
        None => assert!(answer.is_empty()),
        Some(code) => {
            assert!(answer.len() >= 2);
            assert_eq!(u16::from_be_bytes([answer[0], answer[1]]), code);
            if valid_close {
                assert_eq!(answer.len(), 2, "an echoed code carries no reason");
            }
        }
    }
    // A close frame, valid or not, completes the close handshake; a frame
    // too long to be a close is a protocol error, and we wait for the
    // peer's close.
    let phase = if payload.len() > 125 {
        Phase::Closing
    } else {
        Phase::Finished
    };
    assert_eq!(peer.conn.phase(), phase);
    assert_eq!(engine.open_connections(), 0);
});
