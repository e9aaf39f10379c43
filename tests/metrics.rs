//! Checks `/metrics` against known traffic made with tungstenite and raw TCP, and the one
//! JSON log line written when each WebSocket ends.

mod common;

use common::*;
use std::thread;
use std::time::{Duration, Instant};
use tungstenite::protocol::frame::coding::CloseCode;
use tungstenite::protocol::CloseFrame;

fn close_normally(c: &mut Client) {
    c.ws.close(Some(CloseFrame {
        code: CloseCode::Normal,
        reason: "".into(),
    }))
    .unwrap();
    // Whatever the room still sends comes before the server's close reply.
    let deadline = Instant::now() + STEP;
    loop {
        match c.read_by(deadline) {
            Got::Msg(_) => {}
            Got::Failed(tungstenite::Error::ConnectionClosed) => return,
            other => panic!("expected the server to close TCP, got {other:?}"),
        }
    }
}

#[test]
fn counters_agree_with_the_traffic() {
    let server = start(&[]);
    let mut a = Client::chat(&server);
    let mut b = Client::chat(&server);
    a.join("m");
    b.join("m");
    assert_eq!(a.recv_json(STEP)["type"], "user_joined");
    for i in 0..3 {
        a.send_json(&json!({"type": "message", "text": i.to_string()}));
    }
    b.send_json(&json!({"type": "message", "text": "b"}));
    for c in [&mut a, &mut b] {
        for _ in 0..4 {
            assert_eq!(c.recv_json(STEP)["type"], "message");
        }
    }
    let mut echo = Client::plain(&server, "/echo");
    echo.send_text("one");
    echo.send_text("two");
    echo.recv_data(STEP);
    echo.recv_data(STEP);

    // One refused for its version, one for garbage.
    let key = new_key();
    let v12 = upgrade_request("/", &key).replace("Version: 13", "Version: 12");
    assert_eq!(http_exchange(server.addr, v12.as_bytes()).resp.status, 426);
    assert_eq!(
        http_exchange(server.addr, b"\x16\x03\x01\x02\x00")
            .resp
            .status,
        400
    );
    // A plain request for a missing path is no handshake failure.
    assert_eq!(http_get(server.addr, "/nothing").status, 404);

    let during = scrape(server.addr);
    assert_eq!(during["roomcast_websockets"], 3.0);
    assert_eq!(during["roomcast_rooms"], 1.0);
    assert_eq!(during["roomcast_room_members"], 2.0);

    close_normally(&mut a);
    close_normally(&mut b);
    close_normally(&mut echo);
    let deadline = Instant::now() + STEP;
    let m = loop {
        let m = scrape(server.addr);
        if m["roomcast_websockets_closed_total{code=\"1000\"}"] == 3.0 {
            break m;
        }
        assert!(Instant::now() < deadline, "closes not counted: {m:?}");
        thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(m["roomcast_websockets_opened_total"], 3.0);
    assert_eq!(m["roomcast_websockets"], 0.0);
    assert_eq!(m["roomcast_rooms"], 0.0);
    assert_eq!(m["roomcast_room_members"], 0.0);
    // 2 joins + 4 chat messages + 2 echo messages.
    assert_eq!(m["roomcast_messages_received_total"], 8.0);
    // Chat: 2 connected, 2 joined, 1 user_joined, 4 messages to 2 members, 1 user_left
    // when a went; echo: 2.
    assert_eq!(m["roomcast_messages_sent_total"], 16.0);
    assert_eq!(m["roomcast_broadcast_fanout_count"], 4.0);
    assert_eq!(m["roomcast_broadcast_fanout_sum"], 8.0);
    assert_eq!(m["roomcast_broadcast_fanout_bucket{le=\"1\"}"], 0.0);
    assert_eq!(m["roomcast_broadcast_fanout_bucket{le=\"2\"}"], 4.0);
    assert_eq!(
        m["roomcast_handshake_failures_total{reason=\"version\"}"],
        1.0
    );
    assert_eq!(
        m["roomcast_handshake_failures_total{reason=\"bad_request\"}"],
        1.0
    );
    assert_eq!(m["roomcast_handshake_failures_total{reason=\"auth\"}"], 0.0);
    assert_eq!(m["roomcast_slow_consumers_closed_total"], 0.0);
    // This scrape's own connection, and perhaps the last one's, still lingering.
    assert!(m["roomcast_connections"] >= 1.0);
    // 3 upgrades, 2 refusals, the 404, and every scrape so far.
    assert!(m["roomcast_connections_accepted_total"] >= 7.0);
    assert!(m["roomcast_received_bytes_total"] > 0.0);
    assert!(m["roomcast_sent_bytes_total"] > 0.0);
    assert!(m["roomcast_loop_iteration_seconds_count"] > 0.0);
    assert!(m["process_resident_memory_bytes"] > 1e6);
    assert!(m["process_open_fds"] >= 3.0);
    assert_eq!(m["roomcast_queued_bytes"], 0.0);
}

#[test]
fn each_websocket_end_is_one_log_line() {
    let server = start(&[]);
    let mut a = Client::chat(&server);
    let mut b = Client::chat(&server);
    a.join("logroom");
    b.join("logroom");
    a.recv_json(STEP);
    a.send_json(&json!({"type": "message", "text": "hello"}));
    a.recv_json(STEP);
    b.recv_json(STEP);
    close_normally(&mut a);
    // b goes without a close frame.
    let b_id = b.id.clone();
    drop(b);

    let ends = |server: &Server| -> Vec<Value> {
        server
            .stdout_lines()
            .iter()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .filter(|v| v["message"] == "connection closed")
            .collect()
    };
    let deadline = Instant::now() + STEP;
    while ends(&server).len() < 2 {
        assert!(Instant::now() < deadline, "end lines: {:?}", ends(&server));
        thread::sleep(Duration::from_millis(20));
    }
    let lines = ends(&server);
    assert_eq!(lines.len(), 2);
    let a_line = lines
        .iter()
        .find(|v| v["clientId"] == a.id)
        .expect("a's line");
    assert_eq!(a_line["severity"], "INFO");
    assert_eq!(a_line["room"], "logroom");
    assert_eq!(a_line["route"], "chat");
    assert_eq!(a_line["messagesIn"], 2, "join and message");
    // connected, joined, user_joined (b), its own message.
    assert_eq!(a_line["messagesOut"], 4);
    assert_eq!(a_line["code"], 1000);
    assert_eq!(a_line["closedBy"], "client");
    assert!(
        a_line["bytesIn"].as_u64().unwrap() > 200,
        "request head included"
    );
    assert!(
        a_line["bytesOut"].as_u64().unwrap() > 129,
        "101 response included"
    );
    assert!(a_line["durationMs"].is_u64());
    let b_line = lines
        .iter()
        .find(|v| v["clientId"] == b_id)
        .expect("b's line");
    assert_eq!(b_line["code"], 1006);
    assert_eq!(b_line["closedBy"], "error");
    assert_eq!(b_line["room"], "logroom");

    // A close the server starts is the server's.
    let server = start(&["--max-message-size", "10"]);
    let mut c = Client::chat(&server);
    c.send_text(&"x".repeat(20));
    assert_eq!(c.expect_close(STEP), 1009);
    c.expect_closed(STEP);
    let deadline = Instant::now() + STEP;
    loop {
        if let Some(line) = ends(&server).first() {
            assert_eq!(line["code"], 1009);
            assert_eq!(line["closedBy"], "server");
            break;
        }
        assert!(Instant::now() < deadline);
        thread::sleep(Duration::from_millis(20));
    }
}
