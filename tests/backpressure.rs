//! Checks that a reader that stops reading is cut off (close 1008 once its unsent queue
//! passes `--max-queued-bytes`) without slowing or losing messages for the rest of its room.

mod common;

use common::*;
use std::thread;
use std::time::{Duration, Instant};
use tungstenite::Message;

const ROOM: &str = "slow";
/// 2000 messages of ~16 KiB: ~32 MiB, far more than the slow reader's socket buffers plus the
/// 256 KiB queue bound, so the server must drop it.
const COUNT: usize = 2000;

fn text_for(i: usize) -> String {
    format!("{i:06}:{}", "x".repeat(16 * 1024))
}

fn is_left(v: &Value, who: &str) -> bool {
    v["type"] == "user_left" && v["clientId"] == who && v["roomId"] == ROOM
}

/// Reads the room's traffic until all `COUNT` messages from `from` arrived in order and
/// `slow` was reported gone. Anything else is an error.
fn read_all(c: &mut Client, from: &str, slow: &str, deadline: Instant) {
    let (mut next, mut saw_left) = (0, false);
    while next < COUNT || !saw_left {
        assert!(
            Instant::now() < deadline,
            "reader has {next}/{COUNT}, left seen: {saw_left}"
        );
        let v = c.recv_json(left(deadline));
        if is_left(&v, slow) {
            assert!(!saw_left, "user_left twice");
            saw_left = true;
            continue;
        }
        assert_eq!(v["type"], "message", "unexpected {}", v["type"]);
        assert_eq!(v["clientId"], from);
        assert_eq!(
            v["text"].as_str(),
            Some(text_for(next).as_str()),
            "message {next} lost"
        );
        next += 1;
    }
}

#[test]
fn slow_reader_is_cut_off_and_others_lose_nothing() {
    let server = start(&["--max-queued-bytes", "262144", "--close-timeout", "2s"]);
    let deadline = Instant::now() + Duration::from_secs(30);

    let mut slow = Client::chat(&server);
    slow.join(ROOM);
    let mut sender = Client::chat(&server);
    sender.join(ROOM);
    let mut reader = Client::chat(&server);
    reader.join(ROOM);
    assert_eq!(sender.recv_json(STEP)["type"], "user_joined"); // the reader
    let (slow_id, sender_id) = (slow.id.clone(), sender.id.clone());

    // The reader is handed back when done so that it stays connected.
    let reader_thread = thread::spawn(move || {
        read_all(&mut reader, &sender_id, &slow_id, deadline);
        reader
    });

    // The sender reads its own copy of each message before sending the next, so its own
    // queue never grows; the slow reader's queue grows by every message.
    let mut sender_saw_left = false;
    for i in 0..COUNT {
        assert!(Instant::now() < deadline, "sent only {i}/{COUNT}");
        sender.send(Message::text(
            json!({"type": "message", "text": text_for(i)}).to_string(),
        ));
        loop {
            let v = sender.recv_json(STEP);
            if is_left(&v, &slow.id) {
                sender_saw_left = true;
                continue;
            }
            assert_eq!(v["clientId"], sender.id);
            assert_eq!(
                v["text"].as_str(),
                Some(text_for(i).as_str()),
                "sender's copy {i}"
            );
            break;
        }
    }
    if !sender_saw_left {
        let v = sender.recv_json(left(deadline));
        assert!(
            is_left(&v, &slow.id),
            "sender expected user_left for the slow reader: {v}"
        );
    }
    let _reader = reader_thread
        .join()
        .expect("reader saw every message and the slow reader leave");

    // Only now does the slow reader look at its socket: notices, a gapless prefix of the
    // messages, then a 1008 close or the end of the connection.
    let (mut next, mut notices) = (0, 0);
    let ended = loop {
        match slow.read_by(deadline) {
            Got::Msg(Message::Text(t)) => {
                let v: Value = serde_json::from_str(t.as_str()).expect("JSON");
                if v["type"] == "user_joined" {
                    assert_eq!(next, 0, "notice after messages");
                    notices += 1;
                    continue;
                }
                assert_eq!(
                    v["text"].as_str(),
                    Some(text_for(next).as_str()),
                    "slow got a gap"
                );
                next += 1;
            }
            Got::Msg(Message::Close(Some(f))) => break format!("close {}", u16::from(f.code)),
            Got::Failed(tungstenite::Error::ConnectionClosed)
            | Got::Failed(tungstenite::Error::Protocol(
                tungstenite::error::ProtocolError::ResetWithoutClosingHandshake,
            )) => break "eof".to_owned(),
            Got::Failed(tungstenite::Error::Io(e))
                if e.kind() == std::io::ErrorKind::ConnectionReset =>
            {
                break "reset".to_owned()
            }
            other => panic!("slow reader after {next} messages: {other:?}"),
        }
    };
    assert!(
        ended == "close 1008" || ended == "eof" || ended == "reset",
        "ended with {ended}"
    );
    eprintln!("slow reader: {next} messages, then {ended}");
    assert_eq!(notices, 2, "user_joined notices for sender and reader");
    assert!(
        (1..COUNT).contains(&next),
        "slow reader got {next} of {COUNT} messages"
    );

    let h = server.wait_health("connectedClients", json!(2), STEP);
    assert_eq!(h["rooms"], 1);
}
