//! Checks the probes: `/healthz` answers 200 while the process runs, `/readyz` 200 until a
//! shutdown signal and 503 while the server drains its clients, when new WebSocket clients
//! are refused with 503 too.

mod common;

use common::*;
use std::time::Duration;

fn probe(server: &Server, path: &str) -> (u16, Value) {
    let resp = http_get(server.addr, path);
    let body = serde_json::from_slice(&resp.body)
        .unwrap_or_else(|e| panic!("{path}: body is not JSON ({e}): {:?}", resp.body_text()));
    (resp.status, body)
}

#[test]
fn probes_answer_while_serving() {
    let server = start(&[]);
    assert_eq!(
        probe(&server, "/healthz"),
        (200, json!({"status": "alive"}))
    );
    assert_eq!(probe(&server, "/readyz"), (200, json!({"status": "ready"})));
    let ex = http_exchange(server.addr, b"POST /readyz HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_eq!(ex.resp.status, 405, "only GET and HEAD are served");
}

#[test]
fn readyz_is_503_while_draining_and_healthz_stays_200() {
    let mut server = start(&["--drain-timeout", "10s"]);
    // A client that never answers the close keeps the drain going.
    let mut silent = RawWs::chat(server.addr);
    server.signal(libc::SIGTERM);
    assert_eq!(silent.expect_frame(STEP).json()["type"], "server_shutdown");
    assert_eq!(silent.expect_close(STEP), 1001);

    assert_eq!(
        probe(&server, "/readyz"),
        (503, json!({"status": "draining"}))
    );
    assert_eq!(
        probe(&server, "/healthz"),
        (200, json!({"status": "alive"}))
    );
    let key = new_key();
    let ex = http_exchange(server.addr, upgrade_request("/", &key).as_bytes());
    assert_eq!(ex.resp.status, 503, "a new client while draining");
    assert!(ex.closed);
    assert!(
        server.wait_exit(Duration::from_millis(200)).is_none(),
        "still draining"
    );

    // The client answers; with no WebSocket left the drain is over, probes or not.
    silent.send(OP_CLOSE, &1001u16.to_be_bytes());
    silent.expect_eof(STEP);
    let status = server
        .wait_exit(STEP)
        .expect("exit once the last client closed");
    assert_eq!(status.code(), Some(0));
}
