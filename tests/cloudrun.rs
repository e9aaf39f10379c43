//! Checks what running on Cloud Run asks of roomcast: connections end at their maximum age
//! with a `reconnect` notice and a 1001 close, the deployment's names from `K_SERVICE`,
//! `K_REVISION` and `K_CONFIGURATION` reach the health report and the start-up line, and an
//! upgrade request's `X-Cloud-Trace-Context` reaches that connection's log lines.

mod common;

use common::*;
use std::io::Write as _;
use std::time::{Duration, Instant};

#[test]
fn a_chat_connection_is_asked_to_reconnect_at_its_maximum_age() {
    let server = start(&["--max-connection-age", "2s"]);
    let connecting = Instant::now();
    let mut a = Client::chat(&server);
    let mut b = Client::chat(&server);
    a.join("aging");
    b.join("aging");
    assert_eq!(a.recv_json(STEP)["type"], "user_joined");

    // Each age lies within 1.8 s and 2.2 s of its connection's start; the timers run every
    // 250 ms, and the machine may be slow, hence the slack above the range but not below it.
    let mut notices = Vec::new();
    for c in [&mut a, &mut b] {
        let deadline = Instant::now() + Duration::from_millis(2200) + STEP;
        let notice = loop {
            let got = c.recv_json(left(deadline));
            // The other client's goodbye may come first.
            if got["type"] != "user_left" {
                break got;
            }
        };
        notices.push((connecting.elapsed(), notice));
        assert_eq!(c.expect_close(STEP), 1001);
        c.expect_closed(STEP);
    }
    for (elapsed, notice) in notices {
        assert_eq!(notice, json!({"type": "reconnect", "reason": "max-age"}));
        assert!(
            elapsed >= Duration::from_millis(1800),
            "asked to reconnect after {elapsed:?}, before 90 % of the age"
        );
    }
    server.wait_health("connectedClients", json!(0), STEP);
}

#[test]
fn the_maximum_age_comes_from_the_environment_and_applies_to_echo() {
    let server = ServerBuilder::new().env("MAX_CONNECTION_AGE", "1s").spawn();
    let connecting = Instant::now();
    let mut c = Client::plain(&server, "/echo");
    assert_eq!(c.expect_close(Duration::from_millis(1100) + STEP), 1001);
    assert!(connecting.elapsed() >= Duration::from_millis(900));
    c.expect_closed(STEP);
}

#[test]
fn the_default_maximum_age_keeps_connections_open() {
    let server = start(&[]);
    let mut c = RawWs::chat(server.addr);
    c.expect_quiet_open(Duration::from_secs(1));
    let listening = server.wait_log(STEP, |v| v["message"] == "listening");
    // 54 minutes: plus 10 %, still under Cloud Run's longest request timeout of 60.
    assert_eq!(listening["maxConnectionAgeSeconds"], 54 * 60);
}

#[test]
fn the_deployment_is_named_in_the_health_report_and_the_start_up_line() {
    let server = ServerBuilder::new()
        .env("K_SERVICE", "chat")
        .env("K_REVISION", "chat-00042-xyz")
        .env("K_CONFIGURATION", "chat-config")
        .spawn();
    let h = server.health();
    assert_eq!(h["service"], "chat", "{h}");
    assert_eq!(h["revision"], "chat-00042-xyz", "{h}");
    assert_eq!(h["configuration"], "chat-config", "{h}");
    assert_eq!(h["instance"], "chat-00042-xyz", "{h}");
    let listening = server.wait_log(STEP, |v| v["message"] == "listening");
    assert_eq!(listening["service"], "chat");
    assert_eq!(listening["revision"], "chat-00042-xyz");
    assert_eq!(listening["configuration"], "chat-config");

    let local = start(&[]);
    let h = local.health();
    for key in ["service", "revision", "configuration"] {
        assert_eq!(h[key], Value::Null, "{key} off Cloud Run: {h}");
    }
}

const TRACE: &str = "105445aa7843bc8bf206b12000100000";

/// The `connection opened` log lines so far, oldest first.
fn opened_lines(server: &Server) -> Vec<Value> {
    server
        .stdout_lines()
        .iter()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|v| v["message"] == "connection opened")
        .collect()
}

/// Opens a chat WebSocket whose upgrade request carries `X-Cloud-Trace-Context: value`, and
/// returns it with its `connection opened` log line. Callers open one connection at a time,
/// so that line is the first one after those logged before.
fn connect_traced(server: &Server, value: &str) -> (RawWs, Value) {
    let before = opened_lines(server).len();
    let mut stream = tcp_connect(server.addr);
    let key = new_key();
    let request = upgrade_request("/", &key).replacen(
        "\r\n\r\n",
        &format!("\r\nX-Cloud-Trace-Context: {value}\r\n\r\n"),
        1,
    );
    stream.write_all(request.as_bytes()).unwrap();
    let mut buf = Vec::new();
    let resp = read_response_head(&mut stream, &mut buf);
    assert_switching(&resp, &key);
    let mut ws = RawWs::from_parts(stream, buf);
    assert_eq!(ws.expect_frame(STEP).json()["type"], "connected");
    let deadline = Instant::now() + STEP;
    loop {
        if let Some(line) = opened_lines(server).into_iter().nth(before) {
            return (ws, line);
        }
        assert!(Instant::now() < deadline, "no connection opened line");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn a_trace_header_puts_the_trace_on_that_connections_log_lines() {
    let server = start(&["--log-level", "debug", "--project-id", "my-project"]);
    let (mut ws, opened) = connect_traced(&server, &format!("{TRACE}/123;o=1"));
    let trace = format!("projects/my-project/traces/{TRACE}");
    assert_eq!(
        opened["logging.googleapis.com/trace"],
        trace.as_str(),
        "{opened}"
    );
    assert_eq!(opened["logging.googleapis.com/spanId"], "000000000000007b");
    assert_eq!(opened["logging.googleapis.com/trace_sampled"], true);
    let conn = opened["conn"].clone();

    // A later line about the same connection: a protocol error (an unmasked frame).
    ws.send_raw(&encode_frame(FIN | OP_TEXT, b"x", false));
    assert_eq!(ws.expect_close(STEP), 1002);
    let line = server.wait_log(STEP, |v| {
        v["message"] == "closing on protocol error" && v["conn"] == conn
    });
    assert_eq!(
        line["logging.googleapis.com/trace"],
        trace.as_str(),
        "{line}"
    );
}

#[test]
fn the_project_can_come_from_google_cloud_project() {
    let server = ServerBuilder::new()
        .args(&["--log-level", "debug"])
        .env("GOOGLE_CLOUD_PROJECT", "env-project")
        .spawn();
    let (_ws, opened) = connect_traced(&server, &format!("{TRACE}/1"));
    assert_eq!(
        opened["logging.googleapis.com/trace"],
        format!("projects/env-project/traces/{TRACE}").as_str(),
        "{opened}"
    );
    assert_eq!(opened["logging.googleapis.com/trace_sampled"], false);
}

#[test]
fn malformed_trace_headers_are_ignored() {
    let server = start(&["--log-level", "debug", "--project-id", "p"]);
    for bad in [
        TRACE.to_owned(),
        format!("{TRACE}/1;o=7"),
        format!("{TRACE}x/1;o=1"),
        format!("{TRACE}/abc;o=1"),
        "00000000000000000000000000000000/1;o=1".to_owned(),
        "projects/evil/traces/1".to_owned(),
    ] {
        let (ws, opened) = connect_traced(&server, &bad);
        for field in [
            "logging.googleapis.com/trace",
            "logging.googleapis.com/spanId",
            "logging.googleapis.com/trace_sampled",
        ] {
            assert!(opened.get(field).is_none(), "{bad:?} gave {opened}");
        }
        drop(ws);
    }
}

#[test]
fn without_a_project_no_trace_is_logged() {
    let server = start(&["--log-level", "debug"]);
    let (_ws, opened) = connect_traced(&server, &format!("{TRACE}/1;o=1"));
    assert!(
        opened.get("logging.googleapis.com/trace").is_none(),
        "{opened}"
    );
}
