//! Checks the JSON chat protocol end to end with tungstenite clients: greeting, join/leave
//! notices and user counts, room broadcast and isolation, echo of other JSON, and the error
//! replies for invalid input (after which the connection must still work).
//!
//! "Nothing else was sent" is checked by ordering, not by sleeping: each connection's frames
//! arrive in order, so if a later, expected message is the next one read, nothing unwanted
//! was queued before it.

mod common;

use common::*;
use tungstenite::Message;

fn error_reply(message: &str) -> Value {
    json!({"type": "error", "message": message})
}

/// Sends a chat message and returns the sender's own copy, checking its exact shape.
fn say(c: &mut Client, room: &str, text: &str) -> Value {
    c.send_json(&json!({"type": "message", "text": text}));
    let got = c.recv_json(STEP);
    assert_message(&got, &c.id.clone(), room, text);
    got
}

fn assert_message(got: &Value, from: &str, room: &str, text: &str) {
    assert_keys(got, &["type", "clientId", "roomId", "text", "timestamp"]);
    assert_eq!(got["type"], "message", "{got}");
    assert_eq!(got["clientId"], from, "{got}");
    assert_eq!(got["roomId"], room, "{got}");
    assert_eq!(got["text"], text, "{got}");
    assert_timestamp(&got["timestamp"]);
}

fn user_joined(id: &str, room: &str, count: u64) -> Value {
    json!({"type": "user_joined", "clientId": id, "roomId": room, "userCount": count})
}

fn user_left(id: &str, room: &str, count: u64) -> Value {
    json!({"type": "user_left", "clientId": id, "roomId": room, "userCount": count})
}

#[test]
fn greeting_has_exact_shape_and_unique_ids() {
    let server = start(&["--instance-id", "chat-7"]);
    let mut ids = Vec::new();
    for path in ["/", "/room/abc", "/chat?x=1"] {
        let mut c = Client::plain(&server, path);
        let hello = c.recv_json(STEP);
        assert_keys(&hello, &["type", "clientId", "instanceId"]);
        assert_eq!(hello["type"], "connected");
        assert_eq!(hello["instanceId"], "chat-7");
        let id = hello["clientId"].as_str().unwrap().to_owned();
        assert_client_id(&id);
        ids.push(id);
    }
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), 3, "clientIds repeat: {ids:?}");
}

#[test]
fn join_replies_joined_and_notifies_members() {
    let server = start(&[]);
    let mut a = Client::chat(&server);
    let mut b = Client::chat(&server);
    let mut c = Client::chat(&server);
    assert_eq!(
        a.join("r"),
        json!({"type": "joined", "roomId": "r", "userCount": 1})
    );
    assert_eq!(
        b.join("r"),
        json!({"type": "joined", "roomId": "r", "userCount": 2})
    );
    assert_eq!(a.recv_json(STEP), user_joined(&b.id, "r", 2));
    assert_eq!(
        c.join("r"),
        json!({"type": "joined", "roomId": "r", "userCount": 3})
    );
    assert_eq!(a.recv_json(STEP), user_joined(&c.id, "r", 3));
    assert_eq!(b.recv_json(STEP), user_joined(&c.id, "r", 3));
}

#[test]
fn rejoining_the_same_room_replies_again_without_a_second_notice() {
    let server = start(&[]);
    let mut a = Client::chat(&server);
    let mut b = Client::chat(&server);
    a.join("r");
    b.join("r");
    assert_eq!(a.recv_json(STEP), user_joined(&b.id, "r", 2));
    assert_eq!(
        b.join("r"),
        json!({"type": "joined", "roomId": "r", "userCount": 2})
    );
    // If a second user_joined had been sent, a would read it before this message.
    say(&mut b, "r", "after rejoin");
    assert_message(&a.recv_json(STEP), &b.id, "r", "after rejoin");
}

#[test]
fn joining_another_room_leaves_the_first() {
    let server = start(&[]);
    let mut a = Client::chat(&server);
    let mut b = Client::chat(&server);
    a.join("r1");
    b.join("r1");
    a.recv_json(STEP); // user_joined b
    assert_eq!(
        a.join("r2"),
        json!({"type": "joined", "roomId": "r2", "userCount": 1})
    );
    assert_eq!(b.recv_json(STEP), user_left(&a.id, "r1", 1));
    assert_eq!(server.health()["rooms"], 2);

    // b's message in r1 must not reach a, now in r2.
    say(&mut b, "r1", "r1 only");
    say(&mut a, "r2", "r2 only");
    assert_eq!(server.health()["rooms"], 2);
}

#[test]
fn message_reaches_everyone_in_the_room_including_sender() {
    let server = start(&[]);
    let mut clients: Vec<Client> = (0..3).map(|_| Client::chat(&server)).collect();
    for (i, c) in clients.iter_mut().enumerate() {
        assert_eq!(c.join("room-1")["userCount"], i as u64 + 1);
    }
    // Drain the user_joined notices: a got two, b one.
    for (i, c) in clients.iter_mut().enumerate() {
        for _ in i + 1..3 {
            assert_eq!(c.recv_json(STEP)["type"], "user_joined");
        }
    }
    let sender = clients[1].id.clone();
    clients[1].send_json(&json!({"type": "message", "text": "hi ✓ \"quoted\""}));
    for c in &mut clients {
        assert_message(&c.recv_json(STEP), &sender, "room-1", "hi ✓ \"quoted\"");
    }
}

#[test]
fn rooms_are_isolated() {
    let server = start(&[]);
    let (mut a1, mut a2, mut b1) = (
        Client::chat(&server),
        Client::chat(&server),
        Client::chat(&server),
    );
    a1.join("A");
    a2.join("A");
    b1.join("B");
    a1.recv_json(STEP); // user_joined a2
    say(&mut a1, "A", "for A");
    assert_message(&a2.recv_json(STEP), &a1.id, "A", "for A");
    // a1's message was already fanned out; b1's own message must be the next thing it reads.
    say(&mut b1, "B", "for B");
    say(&mut a2, "A", "A again");
    assert_message(&a1.recv_json(STEP), &a2.id, "A", "A again");
}

#[test]
fn message_outside_a_room_is_an_error() {
    let server = start(&[]);
    let mut a = Client::chat(&server);
    a.send_json(&json!({"type": "message", "text": "hello?"}));
    assert_eq!(a.recv_json(STEP), error_reply("Join a room first"));
    a.join("r");
    say(&mut a, "r", "now it works");
}

#[test]
fn leave_notifies_and_errors_when_not_in_a_room() {
    let server = start(&[]);
    let mut a = Client::chat(&server);
    let mut b = Client::chat(&server);
    a.send_json(&json!({"type": "leave"}));
    assert_eq!(a.recv_json(STEP), error_reply("Not in a room"));
    a.join("r");
    b.join("r");
    a.recv_json(STEP); // user_joined b
    a.send_json(&json!({"type": "leave"}));
    assert_eq!(a.recv_json(STEP), json!({"type": "left", "roomId": "r"}));
    assert_eq!(b.recv_json(STEP), user_left(&a.id, "r", 1));
    a.send_json(&json!({"type": "leave"}));
    assert_eq!(a.recv_json(STEP), error_reply("Not in a room"));
    a.send_json(&json!({"type": "message", "text": "x"}));
    assert_eq!(a.recv_json(STEP), error_reply("Join a room first"));
    // b is alone now; a's leaving must not have dropped b.
    say(&mut b, "r", "still here");
}

#[test]
fn disconnect_counts_as_leave_and_empty_rooms_disappear() {
    let server = start(&[]);
    let mut a = Client::chat(&server);
    let mut b = Client::chat(&server);
    let mut c = Client::chat(&server);
    a.join("r");
    b.join("r");
    c.join("r");
    assert_eq!(server.health()["rooms"], 1);
    assert_eq!(a.recv_json(STEP), user_joined(&b.id, "r", 2));
    assert_eq!(a.recv_json(STEP), user_joined(&c.id, "r", 3));
    assert_eq!(b.recv_json(STEP), user_joined(&c.id, "r", 3));

    // a closes cleanly.
    a.ws.close(None).expect("close");
    assert_eq!(b.recv_json(STEP), user_left(&a.id, "r", 2));
    a.expect_closed(STEP);

    // c just vanishes: TCP shut down without a closing handshake.
    c.ws.get_ref().shutdown(std::net::Shutdown::Both).unwrap();
    assert_eq!(b.recv_json(STEP), user_left(&c.id, "r", 1));

    b.send_json(&json!({"type": "leave"}));
    assert_eq!(b.recv_json(STEP), json!({"type": "left", "roomId": "r"}));
    let h = server.health();
    assert_eq!(h["rooms"], 0, "{h}");
    server.wait_health("connectedClients", json!(1), STEP);
}

/// A client that connects, joins, speaks and hangs up in one burst: the
/// request, its frames and the FIN often arrive in one readiness event, and
/// the hang-up must be seen then, not at the next ping timeout. Many rounds,
/// because the burst only sometimes lands in a single event.
#[test]
fn connect_speak_and_hang_up_in_one_burst_is_a_leave() {
    let server = start(&[]);
    let mut b = Client::chat(&server);
    b.join("r");
    let mut burst = masked(OP_TEXT, br#"{"type":"join","roomId":"r"}"#);
    burst.extend(masked(OP_TEXT, br#"{"type":"message","text":"bye"}"#));
    for round in 0..60 {
        let mut stream = tcp_connect(server.addr);
        let mut bytes = upgrade_request("/", &new_key()).into_bytes();
        bytes.extend_from_slice(&burst);
        std::io::Write::write_all(&mut stream, &bytes).unwrap();
        stream.shutdown(std::net::Shutdown::Write).unwrap();
        let joined = b.recv_json(STEP);
        assert_eq!(joined["type"], "user_joined", "round {round}");
        let id = joined["clientId"].as_str().unwrap().to_owned();
        let said = b.recv_json(STEP);
        assert_eq!(said["text"], "bye", "round {round}");
        assert_eq!(b.recv_json(STEP), user_left(&id, "r", 1), "round {round}");
    }
    server.wait_health("connectedClients", json!(1), STEP);
}

#[test]
fn other_json_is_echoed_unchanged() {
    let server = start(&[]);
    let mut a = Client::chat(&server);
    let cases = [
        "42",
        "-1.5e3",
        "\"s\"",
        "[1,2]",
        "null",
        "true",
        "{}",
        r#"{"type":"unknown","x":[1,{"y":null}]}"#,
        r#"{"hello":"world","n":12345678901234567}"#,
        r#"{"type":"JOIN","roomId":"r"}"#,
        r#"{"type":"héllo ✓","nested":{"a":{"b":[true,false]}}}"#,
        "  {\"spaced\" : [ 1 , 2 ] }  ",
    ];
    for raw in cases {
        a.send_text(raw);
        let got = a.recv_json(STEP);
        let want: Value = serde_json::from_str(raw).unwrap();
        assert_keys(&got, &["type", "originalMessage", "timestamp"]);
        assert_eq!(got["type"], "echo", "for {raw}: {got}");
        assert_eq!(got["originalMessage"], want, "for {raw}");
        assert_timestamp(&got["timestamp"]);
    }
}

#[test]
fn invalid_json_is_an_error_and_the_connection_stays() {
    let server = start(&[]);
    let mut a = Client::chat(&server);
    for raw in [
        "{",
        "hello",
        "",
        "{\"type\":\"join\",}",
        "[1,2",
        "nul",
        "{'a':1}",
    ] {
        a.send_text(raw);
        assert_eq!(
            a.recv_json(STEP),
            error_reply("Invalid JSON"),
            "for {raw:?}"
        );
    }
    a.join("still-open");
}

#[test]
fn join_with_bad_room_id_is_an_error_naming_the_field() {
    let server = start(&[]);
    let mut a = Client::chat(&server);
    let bad = [
        json!({"type": "join"}),
        json!({"type": "join", "roomId": ""}),
        json!({"type": "join", "roomId": 5}),
        json!({"type": "join", "roomId": null}),
        json!({"type": "join", "roomId": ["r"]}),
        json!({"type": "join", "roomId": "a".repeat(257)}),
        json!({"type": "join", "roomId": "é".repeat(129)}), // 129 chars but 258 bytes
    ];
    for msg in &bad {
        a.send_json(msg);
        let got = a.recv_json(STEP);
        assert_keys(&got, &["type", "message"]);
        assert_eq!(got["type"], "error", "for {msg}");
        let text = got["message"].as_str().unwrap();
        assert!(
            text.contains("roomId"),
            "error for {msg} does not name roomId: {text:?}"
        );
    }
    // None of them joined anything.
    a.send_json(&json!({"type": "message", "text": "x"}));
    assert_eq!(a.recv_json(STEP), error_reply("Join a room first"));
    // 256 bytes is still fine, in either spelling.
    for room in ["a".repeat(256), "é".repeat(128)] {
        let want = json!({"type": "joined", "roomId": room, "userCount": 1});
        assert_eq!(a.join(&room), want);
    }
}

#[test]
fn message_with_non_string_text_is_an_error_naming_the_field() {
    let server = start(&[]);
    let mut a = Client::chat(&server);
    let mut b = Client::chat(&server);
    a.join("r");
    b.join("r");
    a.recv_json(STEP); // user_joined b
    for text in [json!(42), json!(true), json!({"t": "x"}), json!(["x"])] {
        let msg = json!({"type": "message", "text": text});
        a.send_json(&msg);
        let got = a.recv_json(STEP);
        assert_keys(&got, &["type", "message"]);
        assert_eq!(got["type"], "error", "for {msg}");
        let m = got["message"].as_str().unwrap();
        assert!(
            m.contains("text"),
            "error for {msg} does not name text: {m:?}"
        );
    }
    // Nothing was broadcast: b's next message is this one.
    say(&mut a, "r", "valid");
    assert_message(&b.recv_json(STEP), &a.id, "r", "valid");
}

#[test]
fn binary_frames_are_parsed_like_text() {
    let server = start(&[]);
    let mut a = Client::chat(&server);
    a.send(Message::binary(
        br#"{"type":"join","roomId":"bin"}"#.to_vec(),
    ));
    assert_eq!(
        a.recv_json(STEP),
        json!({"type": "joined", "roomId": "bin", "userCount": 1})
    );
    a.send(Message::binary(
        br#"{"type":"message","text":"raw"}"#.to_vec(),
    ));
    assert_message(&a.recv_json(STEP), &a.id.clone(), "bin", "raw");
    a.send(Message::binary(b"{oops".to_vec()));
    assert_eq!(a.recv_json(STEP), error_reply("Invalid JSON"));
    a.send(Message::binary(b"[true]".to_vec()));
    assert_eq!(a.recv_json(STEP)["originalMessage"], json!([true]));
}

#[test]
fn user_count_follows_joins_and_leaves() {
    let server = start(&[]);
    let mut a = Client::chat(&server);
    let mut b = Client::chat(&server);
    let mut c = Client::chat(&server);
    a.join("count");
    b.join("count");
    c.join("elsewhere");
    a.recv_json(STEP); // user_joined b
    assert_eq!(c.join("count")["userCount"], 3);
    for member in [&mut a, &mut b] {
        assert_eq!(member.recv_json(STEP), user_joined(&c.id, "count", 3));
    }
    b.send_json(&json!({"type": "leave"}));
    assert_eq!(
        b.recv_json(STEP),
        json!({"type": "left", "roomId": "count"})
    );
    for member in [&mut a, &mut c] {
        assert_eq!(member.recv_json(STEP), user_left(&b.id, "count", 2));
    }
    assert_eq!(b.join("count")["userCount"], 3);
    for member in [&mut a, &mut c] {
        assert_eq!(member.recv_json(STEP), user_joined(&b.id, "count", 3));
    }
}

#[test]
fn a_reads_messages_control_frames_and_close_keep_their_order() {
    let server = start(&[]);
    let mut b = Client::chat(&server);
    b.join("r");
    let mut a = RawWs::chat(server.addr);
    a.send(OP_TEXT, br#"{"type":"join","roomId":"r"}"#);
    assert_eq!(a.expect_frame(STEP).json()["type"], "joined");
    let a_id = b.recv_json(STEP)["clientId"].as_str().unwrap().to_owned();
    // One write, so that the server reads it whole: messages, which go out
    // to the room together, around a ping, a JSON echo, an error and a
    // close, each of which must come after the messages before it.
    let mut burst = Vec::new();
    for frame in [
        (OP_TEXT, &br#"{"type":"message","text":"1"}"#[..]),
        (OP_TEXT, br#"{"type":"message","text":"2"}"#),
        (OP_PING, b"p"),
        (OP_TEXT, br#"{"type":"message","text":"3"}"#),
        (OP_TEXT, br#"{"type":"other"}"#),
        (OP_TEXT, br#"{"type":"message","text":"4"}"#),
        (OP_TEXT, br#"{"type":"message"}"#),
        (OP_TEXT, br#"{"type":"message","text":"5"}"#),
        (OP_CLOSE, &1000u16.to_be_bytes()),
    ] {
        burst.extend(masked(frame.0, frame.1));
    }
    a.send_raw(&burst);
    let mut to_a = Vec::new();
    loop {
        let f = a.expect_frame(STEP);
        to_a.push(match f.opcode {
            OP_PONG => format!("pong {}", String::from_utf8_lossy(&f.payload)),
            OP_CLOSE => format!("close {}", f.close_code()),
            _ => {
                let v = f.json();
                match v["type"].as_str() {
                    Some("message") => format!("message {}", v["text"].as_str().unwrap()),
                    _ => v["type"].as_str().unwrap().to_owned(),
                }
            }
        });
        if f.opcode == OP_CLOSE {
            break;
        }
    }
    assert_eq!(
        to_a,
        [
            "message 1",
            "message 2",
            "pong p",
            "message 3",
            "echo",
            "message 4",
            "error",
            "message 5",
            "close 1000"
        ]
    );
    for text in ["1", "2", "3", "4", "5"] {
        assert_message(&b.recv_json(STEP), &a_id, "r", text);
    }
    assert_eq!(b.recv_json(STEP), user_left(&a_id, "r", 1));
}
