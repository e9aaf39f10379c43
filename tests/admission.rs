//! Checks the admission limits and the message rate limit with real clients: 503 and
//! Retry-After past `--max-connections`, 429 past `--max-connections-per-ip` (and which
//! X-Forwarded-For entry counts with `--trust-proxy`), join errors past `--max-rooms` and
//! `--max-room-members`, and the token bucket's error replies and 1008 close.

mod common;

use common::*;
use std::thread;
use std::time::{Duration, Instant};

fn upgrade_status(server: &Server, extra: &[(&str, &str)]) -> (u16, Option<RawWs>) {
    match try_upgrade(server.addr, "/", extra) {
        Ok(ws) => (101, Some(ws)),
        Err(resp) => (resp.status, None),
    }
}

#[test]
fn past_max_connections_is_503_with_retry_after() {
    let server = start(&["--max-connections", "3"]);
    let mut clients: Vec<Client> = (0..3).map(|_| Client::chat(&server)).collect();
    // Full: an upgrade is refused, but probes and scrapes are still answered, so a full
    // server is not taken for a dead one.
    let err = try_upgrade(server.addr, "/", &[]).err().expect("full");
    assert_eq!(err.status, 503);
    assert_eq!(err.header("retry-after"), Some("5"));
    assert!(err.body_text().contains("connection limit"));
    assert_eq!(http_get(server.addr, "/healthz").status, 200);
    assert_eq!(http_get(server.addr, "/metrics").status, 200);

    // Past the limit and the probes' room (64), a connection is answered before it says
    // anything. Idle connections count: they are sockets held.
    let idle: Vec<_> = (0..64).map(|_| tcp_connect(server.addr)).collect();
    let mut late = tcp_connect(server.addr);
    let mut buf = Vec::new();
    let resp = read_response_head(&mut late, &mut buf);
    assert_eq!(resp.status, 503);
    assert_eq!(resp.header("retry-after"), Some("5"));
    drop((idle, late));

    // One leaves: there is room again.
    let mut gone = clients.pop().unwrap();
    gone.ws.close(None).unwrap();
    gone.expect_closed(STEP);
    // Refused and plain connections linger until their clients close them, so the place
    // frees up soon, not at once.
    let deadline = Instant::now() + STEP;
    let _back = loop {
        match try_upgrade(server.addr, "/", &[]) {
            Ok(ws) => break ws,
            Err(resp) => assert_eq!(resp.status, 503),
        }
        assert!(Instant::now() < deadline, "no room after a client left");
        thread::sleep(Duration::from_millis(20));
    };
    drop(clients);
    drop(_back);
    // Once they are gone a scrape gets through, and shows the refusals so far: the two
    // above and the polls' (all under "limit").
    let deadline = Instant::now() + STEP;
    while http_get(server.addr, "/metrics").status != 200 {
        assert!(Instant::now() < deadline, "still full");
        thread::sleep(Duration::from_millis(20));
    }
    assert!(scrape(server.addr)["roomcast_handshake_failures_total{reason=\"limit\"}"] >= 2.0);
}

#[test]
fn per_address_limit_uses_the_peer_or_the_trusted_forwarded_entry() {
    let server = start(&["--max-connections-per-ip", "2"]);
    let a = upgrade_status(&server, &[]);
    let b = upgrade_status(&server, &[("X-Forwarded-For", "198.51.100.1")]);
    assert_eq!((a.0, b.0), (101, 101));
    // Not trusted: X-Forwarded-For changes nothing, all of these are 127.0.0.1.
    let (status, _) = upgrade_status(&server, &[("X-Forwarded-For", "198.51.100.2")]);
    assert_eq!(status, 429);
    let err = try_upgrade(server.addr, "/", &[]).err().unwrap();
    assert_eq!(err.header("retry-after"), Some("5"));
    assert_eq!(err.body_text(), "too many connections from this address\n");
    drop((a, b));

    let proxied = start(&["--max-connections-per-ip", "2", "--trust-proxy"]);
    let xff = |v: &'static str| [("X-Forwarded-For", v)];
    let keep: Vec<_> = ["203.0.113.7", "10.9.9.9, 203.0.113.7"]
        .into_iter()
        .map(|v| {
            let (status, ws) = upgrade_status(&proxied, &xff(v));
            assert_eq!(status, 101, "{v}");
            ws
        })
        .collect();
    // The right-most entry is the one the proxy added; what the client wrote before it
    // cannot dodge the limit.
    assert_eq!(upgrade_status(&proxied, &xff("203.0.113.7")).0, 429);
    assert_eq!(
        upgrade_status(&proxied, &xff("1.1.1.1, 203.0.113.7")).0,
        429
    );
    assert_eq!(
        upgrade_status(&proxied, &xff("203.0.113.7, 1.1.1.1")).0,
        101
    );
    // A proxy may append its own field rather than extend the client's: the last field
    // counts, so a field the client wrote first cannot dodge the limit either.
    let two_fields = [
        ("X-Forwarded-For", "192.0.2.55"),
        ("X-Forwarded-For", "203.0.113.7"),
    ];
    assert_eq!(upgrade_status(&proxied, &two_fields).0, 429);
    // No header: the TCP peer, which has none counted yet.
    assert_eq!(upgrade_status(&proxied, &[]).0, 101);
    drop(keep);
}

#[test]
fn room_limits_answer_joins_with_errors() {
    let server = start(&["--max-rooms", "2", "--max-room-members", "2"]);
    let mut a = Client::chat(&server);
    let mut b = Client::chat(&server);
    let mut c = Client::chat(&server);
    a.join("one");
    b.join("two");
    c.send_json(&json!({"type": "join", "roomId": "three"}));
    assert_eq!(
        c.recv_json(STEP),
        json!({"type": "error", "message": "Too many rooms"})
    );
    c.join("one");
    let mut d = Client::chat(&server);
    d.send_json(&json!({"type": "join", "roomId": "one"}));
    assert_eq!(
        d.recv_json(STEP),
        json!({"type": "error", "message": "Room is full"})
    );
    // The refused client is in no room; the full room's members heard nothing of it.
    d.send_json(&json!({"type": "message", "text": "x"}));
    assert_eq!(d.recv_json(STEP)["message"], "Join a room first");
    assert_eq!(a.recv_json(STEP)["type"], "user_joined"); // c
    a.send_json(&json!({"type": "message", "text": "m"}));
    assert_eq!(a.recv_json(STEP)["text"], "m");
    assert_eq!(c.recv_json(STEP)["text"], "m");
    // Leaving frees a place.
    c.send_json(&json!({"type": "leave"}));
    assert_eq!(c.recv_json(STEP)["type"], "left");
    d.join("one");
    assert_eq!(scrape(server.addr)["roomcast_joins_refused_total"], 2.0);
}

#[test]
fn over_the_rate_messages_are_dropped_and_a_flood_is_closed_1008() {
    let server = start(&[
        "--rate-limit",
        "5",
        "--rate-burst",
        "5",
        "--rate-limit-close-after",
        "2s",
    ]);
    let mut c = Client::chat(&server);
    let mut other = Client::chat(&server);
    c.join("r");
    other.join("r");
    assert_eq!(c.recv_json(STEP)["type"], "user_joined");

    // The join used one token; the burst leaves four messages.
    for i in 0..10 {
        c.send_json(&json!({"type": "message", "text": i.to_string()}));
    }
    let (mut delivered, mut refused) = (Vec::new(), 0);
    for _ in 0..10 {
        let v = c.recv_json(STEP);
        match v["type"].as_str() {
            Some("message") => delivered.push(v["text"].as_str().unwrap().to_owned()),
            Some("error") => {
                assert_eq!(
                    v,
                    json!({"type": "error", "message": "Rate limit exceeded"})
                );
                refused += 1;
            }
            _ => panic!("unexpected {v}"),
        }
    }
    assert_eq!(delivered, ["0", "1", "2", "3"], "the first four, in order");
    assert_eq!(refused, 6);
    for want in ["0", "1", "2", "3"] {
        assert_eq!(
            other.recv_json(STEP)["text"],
            want,
            "dropped ones reach nobody"
        );
    }

    // Keep flooding: closed with 1008 about two seconds in.
    let started = Instant::now();
    let code = loop {
        assert!(started.elapsed() < Duration::from_secs(10), "never closed");
        c.ws.send(tungstenite::Message::text(
            r#"{"type":"message","text":"f"}"#,
        ))
        .ok();
        match c.read_by(Instant::now() + Duration::from_millis(20)) {
            Got::Msg(tungstenite::Message::Close(Some(f))) => break u16::from(f.code),
            Got::Msg(_) | Got::TimedOut => {}
            Got::Failed(e) => panic!("connection failed before a close frame: {e}"),
        }
    };
    assert_eq!(code, 1008);
    assert!(started.elapsed() >= Duration::from_millis(1500));
    wait_metric(&server, "roomcast_rate_limit_closed_total", 1.0, STEP);
    // The other member is told, and nothing of the flood beyond the rate reached it.
    let deadline = Instant::now() + STEP;
    loop {
        let v = other.recv_json(left(deadline));
        if v["type"] == "user_left" {
            break;
        }
        assert_eq!(v["text"], "f");
    }
}

#[test]
fn readyz_says_near_capacity_from_ninety_percent() {
    let server = start(&["--max-connections", "10"]);
    let mut clients: Vec<Client> = (0..7).map(|_| Client::chat(&server)).collect();
    // The probe's own connection is the eighth: 80%.
    let resp = http_get(server.addr, "/readyz");
    assert_eq!(
        (resp.status, resp.body_text()),
        (200, r#"{"status":"ready"}"#.into())
    );
    clients.push(Client::chat(&server));
    // This probe is the ninth connection (the tenth if the last one lingers): 90% or more.
    let deadline = Instant::now() + STEP;
    loop {
        let resp = http_get(server.addr, "/readyz");
        if resp.status == 503 {
            assert_eq!(resp.body_text(), r#"{"status":"near capacity"}"#);
            break;
        }
        assert!(Instant::now() < deadline, "never near capacity");
        thread::sleep(Duration::from_millis(20));
    }
    // Near capacity is advice to the load balancer: an upgrade still succeeds, once the
    // probes' connections (which count too) have gone.
    let deadline = Instant::now() + STEP;
    let _ninth = loop {
        match try_upgrade(server.addr, "/", &[]) {
            Ok(ws) => break ws,
            Err(resp) => assert_eq!(resp.status, 503, "{}", resp.body_text()),
        }
        assert!(
            Instant::now() < deadline,
            "the ninth client was never let in"
        );
        thread::sleep(Duration::from_millis(20));
    };
}
