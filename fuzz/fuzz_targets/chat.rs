//! JSON-ish messages from three clients into the chat app.
//!
//! Input: segments separated by 0xFF (a byte no JSON text contains). A
//! segment's first byte says who acts: below 0xF0 it is client `b % 3`
//! sending the rest of the segment as a message; from 0xF0 it is client
//! `b % 3` disconnecting and a new client taking its place.
//!
//! Checks: no panic; every message gets exactly one reply to its sender,
//! of a type the protocol allows; every frame sent is a valid server text
//! frame holding a JSON object with a `type`; bytes that are not JSON get
//! `Invalid JSON` and JSON never does; an echo carries the message exactly
//! as written; a chat message reaches every member of the room; the room
//! table and the members' positions in it stay consistent.

#![no_main]

use std::rc::Rc;

use libfuzzer_sys::fuzz_target;
use roomcast::chat::{Chat, Member, Outbox, MAX_ROOM_ID_BYTES};
use roomcast::slab::{Key, Slab};
use roomcast_fuzz::read_server_frames;
use serde_json::value::RawValue;
use serde_json::Value;

/// Members and what each was sent since the last look.
#[derive(Default)]
struct Table {
    slab: Slab<(Member, Vec<Vec<u8>>)>,
}

impl Table {
    fn record(&mut self, to: Key, bytes: &[u8], messages: usize) {
        let (frames, used) = read_server_frames(bytes);
        assert_eq!(
            (frames.len(), used),
            (messages, bytes.len()),
            "whole frames, as many as said"
        );
        let entry = self.slab.get_mut(to).expect("sent only to live members");
        for frame in frames {
            assert_eq!(frame.opcode(), 0x1, "the chat sends text frames");
            entry.1.push(frame.payload);
        }
    }

    fn take(&mut self, who: Key) -> Vec<Vec<u8>> {
        std::mem::take(&mut self.slab.get_mut(who).expect("live").1)
    }
}

impl Outbox for Table {
    fn send(&mut self, to: Key, frame: &[u8]) {
        self.record(to, frame, 1);
    }

    fn send_shared(&mut self, to: Key, frames: &Rc<[u8]>, messages: u32) {
        self.record(to, frames, messages as usize);
    }

    fn member(&mut self, who: Key) -> Option<&mut Member> {
        self.slab.get_mut(who).map(|(m, _)| m)
    }
}

/// A frame's JSON. Only an echo may hold JSON that serde_json refuses:
/// the sender's own message as written, lone surrogate escapes included
/// (RFC 8259 8.2 allows them in the grammar; strict parsers refuse them).
fn parse(payload: &[u8]) -> Value {
    let v: Value = match serde_json::from_slice(payload) {
        Ok(v) => v,
        Err(e) => {
            #[derive(serde::Deserialize)]
            struct Lenient<'a> {
                #[serde(rename = "type")]
                kind: String,
                #[serde(rename = "originalMessage", borrow)]
                _original: &'a RawValue,
            }
            match serde_json::from_slice::<Lenient<'_>>(payload) {
                Ok(echo) if echo.kind == "echo" => serde_json::json!({ "type": "echo" }),
                _ => panic!(
                    "the server sent invalid JSON ({e}): {}",
                    String::from_utf8_lossy(payload)
                ),
            }
        }
    };
    assert!(v["type"].is_string(), "no type: {v}");
    v
}

/// Every member's position points back at it, and rooms hold nobody else.
fn check_rooms(chat: &Chat, table: &Table) {
    let mut members = 0;
    for (key, (member, _)) in table.slab.iter() {
        let Some(at) = member.membership else {
            continue;
        };
        members += 1;
        let room = chat.rooms().get(at.room).expect("a member's room exists");
        assert_eq!(room.members.get(at.position as usize), Some(&key));
        assert!(!room.name.is_empty() && room.name.len() <= MAX_ROOM_ID_BYTES);
    }
    let in_rooms: usize = table
        .slab
        .iter()
        .filter_map(|(_, (m, _))| m.membership.map(|at| at.room))
        .collect::<std::collections::HashSet<_>>()
        .iter()
        .map(|&r| chat.rooms().get(r).map_or(0, |room| room.members.len()))
        .sum();
    assert_eq!(in_rooms, members);
    assert!(chat.rooms().len() <= members);
}

fn connect(chat: &mut Chat, table: &mut Table) -> Key {
    let key = table.slab.insert((chat.new_member(), Vec::new()));
    chat.on_open(table, key);
    let hello = table.take(key);
    assert_eq!(hello.len(), 1);
    assert_eq!(parse(&hello[0])["type"], "connected");
    key
}

/// JSON's own whitespace (RFC 8259 2).
fn trim_json_ws(bytes: &[u8]) -> &[u8] {
    let ws = |b: &u8| matches!(b, b' ' | b'\t' | b'\n' | b'\r');
    let start = bytes.iter().position(|b| !ws(b)).unwrap_or(bytes.len());
    let end = bytes.iter().rposition(|b| !ws(b)).map_or(start, |i| i + 1);
    &bytes[start..end]
}

fn on_message(chat: &mut Chat, table: &mut Table, who: Key, payload: &[u8]) {
    let room_before = table.slab.get(who).and_then(|(m, _)| m.membership);
    // One message per read: the engine settles the batch after each.
    chat.on_message(table, who, payload);
    chat.settle(table);
    let replies = table.take(who);
    assert_eq!(
        replies.len(),
        1,
        "one reply to {:?}",
        String::from_utf8_lossy(payload)
    );
    let reply = parse(&replies[0]);
    let kind = reply["type"].as_str().expect("checked");
    // RFC 8259 8.1: JSON text is UTF-8. serde_json skips strings it does
    // not keep without checking them, hence the separate check.
    let is_json = std::str::from_utf8(payload).is_ok()
        && serde_json::from_slice::<serde::de::IgnoredAny>(payload).is_ok();
    let invalid_json = kind == "error" && reply["message"] == "Invalid JSON";
    assert_eq!(
        invalid_json,
        !is_json,
        "{reply} for {:?}",
        String::from_utf8_lossy(payload)
    );
    match kind {
        "joined" => {
            let at = table.slab.get(who).unwrap().0.membership.expect("joined");
            let room = chat.rooms().get(at.room).expect("joined a room");
            assert_eq!(reply["roomId"], *room.name);
            assert_eq!(reply["userCount"], room.members.len());
        }
        "left" => {
            assert!(room_before.is_some());
            assert!(table.slab.get(who).unwrap().0.membership.is_none());
        }
        "message" => {
            // Everyone else in the room got the very same frame.
            let at = room_before.expect("only members send messages");
            let room = chat.rooms().get(at.room).expect("the sender's room");
            let members = room.members.clone();
            for other in members.into_iter().filter(|&k| k != who) {
                assert_eq!(table.take(other), replies, "room member missed a message");
            }
            assert!(reply["text"].is_string());
        }
        "echo" => {
            #[derive(serde::Deserialize)]
            struct Echo<'a> {
                #[serde(rename = "originalMessage", borrow)]
                original: &'a RawValue,
            }
            let echo: Echo<'_> = serde_json::from_slice(&replies[0]).expect("an echo");
            assert_eq!(echo.original.get().as_bytes(), trim_json_ws(payload));
        }
        "error" => assert!(reply["message"].is_string()),
        other => panic!("reply of type {other}"),
    }
}

fuzz_target!(|data: &[u8]| {
    let mut chat = Chat::new("fuzz");
    let mut table = Table::default();
    let mut clients: Vec<Key> = (0..3).map(|_| connect(&mut chat, &mut table)).collect();
    for segment in data.split(|&b| b == 0xFF) {
        let Some((&op, payload)) = segment.split_first() else {
            continue;
        };
        let slot = usize::from(op) % clients.len();
        let who = clients[slot];
        if op >= 0xF0 {
            chat.on_close(&mut table, who);
            table.slab.remove(who);
            clients[slot] = connect(&mut chat, &mut table);
        } else {
            on_message(&mut chat, &mut table, who, payload);
        }
        // Notices to the others are checked only for shape.
        for &k in &clients {
            for frame in table.take(k) {
                parse(&frame);
            }
        }
        check_rooms(&chat, &table);
    }
});
