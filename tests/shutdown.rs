//! Checks graceful shutdown on SIGTERM: in-flight messages are delivered, then every client
//! gets `server_shutdown` and a 1001 close, and the process exits 0 within the drain timeout;
//! a second signal during the drain exits at once.

mod common;

use common::*;
use std::time::{Duration, Instant};

/// Reads the shutdown notice, the 1001 close and the end of the connection, then lets go of
/// the socket as a real client would (the server waits for our side of TCP to close too).
fn expect_shutdown(mut c: Client) {
    assert_eq!(c.recv_json(STEP), json!({"type": "server_shutdown"}));
    assert_eq!(c.expect_close(STEP), 1001);
    c.expect_closed(STEP);
}

fn assert_exit_0_within(server: &mut Server, since: Instant, limit: Duration) {
    let status = server.wait_exit(limit.saturating_sub(since.elapsed()));
    let status = status.unwrap_or_else(|| panic!("still running {:?} after SIGTERM", limit));
    assert_eq!(status.code(), Some(0), "exit status {status:?}");
}

#[test]
fn sigterm_delivers_in_flight_message_then_closes_1001_and_exits_0() {
    let mut server = start(&["--drain-timeout", "3s"]);
    let mut c1 = Client::chat(&server);
    let mut c2 = Client::chat(&server);
    c1.join("s");
    c2.join("s");
    assert_eq!(c1.recv_json(STEP)["type"], "user_joined");

    c1.send_json(&json!({"type": "message", "text": "last words"}));
    server.signal(libc::SIGTERM);
    let signalled = Instant::now();

    let got = c2.recv_json(STEP);
    assert_eq!(
        (&got["type"], &got["text"]),
        (&json!("message"), &json!("last words")),
        "{got}"
    );
    expect_shutdown(c2);
    assert_eq!(c1.recv_json(STEP)["text"], "last words");
    expect_shutdown(c1);
    assert_exit_0_within(&mut server, signalled, Duration::from_secs(4));
}

#[test]
fn echo_clients_are_closed_with_1001_too() {
    let mut server = start(&["--drain-timeout", "3s"]);
    let mut c = Client::plain(&server, "/echo");
    server.signal(libc::SIGTERM);
    let signalled = Instant::now();
    assert_eq!(c.expect_close(STEP), 1001);
    c.expect_closed(STEP);
    drop(c);
    assert_exit_0_within(&mut server, signalled, Duration::from_secs(4));
}

#[test]
fn exit_is_prompt_once_every_client_has_closed() {
    // The drain timeout is an upper bound: with nobody left there is nothing to wait for.
    let mut server = start(&["--drain-timeout", "10s"]);
    let clients = [Client::chat(&server), Client::chat(&server)];
    server.signal(libc::SIGTERM);
    let signalled = Instant::now();
    for c in clients {
        expect_shutdown(c);
    }
    assert_exit_0_within(&mut server, signalled, Duration::from_millis(1500));
}

#[test]
fn client_that_never_answers_close_does_not_block_exit() {
    let mut server = start(&["--drain-timeout", "3s"]);
    let mut silent = RawWs::chat(server.addr);
    let polite = Client::chat(&server);
    server.signal(libc::SIGTERM);
    let signalled = Instant::now();
    expect_shutdown(polite);
    assert_exit_0_within(&mut server, signalled, Duration::from_secs(4));
    // What the silent client was sent is still in its socket buffer.
    assert_eq!(
        silent.expect_frame(STEP).json(),
        json!({"type": "server_shutdown"})
    );
    assert_eq!(silent.expect_close(STEP), 1001);
    silent.expect_eof(STEP);
}

#[test]
fn second_signal_during_drain_exits_at_once() {
    for second in [libc::SIGINT, libc::SIGTERM] {
        let mut server = start(&["--drain-timeout", "10s"]);
        let mut silent = RawWs::chat(server.addr);
        server.signal(libc::SIGTERM);
        // Seeing the close proves the drain started; not answering it keeps the drain going.
        assert_eq!(silent.expect_frame(STEP).json()["type"], "server_shutdown");
        assert_eq!(silent.expect_close(STEP), 1001);
        assert!(
            server.wait_exit(Duration::from_millis(300)).is_none(),
            "drain did not wait"
        );
        server.signal(second);
        let status = server.wait_exit(Duration::from_secs(1));
        assert!(
            status.is_some(),
            "signal {second} during the drain did not exit within 1 s"
        );
    }
}
