//! Checks keepalive: the server pings every `--ping-interval`, a client that answers stays
//! connected, and a peer that stays silent for two intervals is dropped (and counted as gone).

mod common;

use common::*;
use std::time::{Duration, Instant};
use tungstenite::Message;

/// Reads for `dur`, letting tungstenite answer pings; returns how many pings came.
fn count_pings(c: &mut Client, dur: Duration) -> usize {
    let deadline = Instant::now() + dur;
    let mut pings = 0;
    loop {
        match c.read_by(deadline) {
            Got::Msg(Message::Ping(_)) => pings += 1,
            Got::TimedOut if Instant::now() >= deadline => return pings,
            Got::TimedOut => continue,
            other => panic!("while waiting for pings: {other:?}"),
        }
    }
}

#[test]
fn pings_flow_and_an_answering_client_stays() {
    let server = start(&["--ping-interval", "300ms"]);
    let mut c = Client::chat(&server);
    c.join("k");
    // 2 s is over six intervals: several pings, and long enough that a client whose pongs
    // were ignored would have been dropped. The timers run every 250 ms, so a 300 ms
    // interval pings about every 500 ms, the first up to 550 ms after the upgrade.
    let pings = count_pings(&mut c, Duration::from_millis(2000));
    assert!(pings >= 3, "only {pings} pings in 2 s at a 300 ms interval");
    c.send_json(&json!({"type": "message", "text": "still here"}));
    assert_eq!(c.recv_json(STEP)["text"], "still here");
    assert_eq!(server.health()["connectedClients"], 1);
}

#[test]
fn ping_interval_comes_from_the_environment() {
    // Not shorter: a client that cannot answer within two intervals is
    // dropped, and a loaded test machine can stall this thread for 400 ms.
    let server = ServerBuilder::new().env("PING_INTERVAL", "500ms").spawn();
    let mut c = Client::plain(&server, "/echo");
    let pings = count_pings(&mut c, Duration::from_millis(2500));
    assert!(
        pings >= 2,
        "only {pings} pings in 2.5 s at a 500 ms interval"
    );
}

#[test]
fn silent_peer_is_dropped_and_counted_as_left() {
    let server = start(&["--ping-interval", "300ms"]);
    let mut watcher = Client::chat(&server);
    watcher.join("k");

    let mut silent = RawWs::connect(server.addr, "/");
    let hello = silent.expect_frame(STEP).json();
    let silent_id = hello["clientId"].as_str().expect("clientId").to_owned();
    silent.send(OP_TEXT, br#"{"type":"join","roomId":"k"}"#);
    let last_heard = Instant::now();
    // From here on the raw client neither reads nor answers pings.
    let notice = watcher.recv_json(STEP);
    assert_eq!(notice["type"], "user_joined");
    assert_eq!(notice["clientId"], silent_id);
    assert_eq!(server.health()["connectedClients"], 2);

    let gone = watcher.recv_json(Duration::from_millis(2500));
    let took = last_heard.elapsed();
    let want = json!({"type": "user_left", "clientId": silent_id, "roomId": "k", "userCount": 1});
    assert_eq!(gone, want);
    assert!(
        took >= Duration::from_millis(300),
        "dropped after only {took:?}"
    );
    server.wait_health("connectedClients", json!(1), STEP);

    // The watcher, which answered every ping, is still fine.
    watcher.send_json(&json!({"type": "message", "text": "alone"}));
    assert_eq!(watcher.recv_json(STEP)["text"], "alone");
}
