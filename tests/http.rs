//! Checks the plain-HTTP side and configuration: `GET /` health JSON, 404 for other paths,
//! flags and their environment variables, `--help`, and the JSON log lines on stdout.

mod common;

use common::*;
use std::time::Duration;

fn assert_json_content_type(resp: &HttpResponse) {
    let ct = resp.header("content-type").unwrap_or_default();
    let mime = ct.split(';').next().unwrap().trim();
    assert!(
        mime.eq_ignore_ascii_case("application/json"),
        "Content-Type: {ct:?}"
    );
}

#[test]
fn health_reports_status_instance_and_zero_counts() {
    let server = start(&["--instance-id", "health-1"]);
    let resp = http_get(server.addr, "/");
    assert_eq!(resp.status, 200);
    assert_json_content_type(&resp);
    let body: Value = serde_json::from_slice(&resp.body).expect("JSON body");
    assert_eq!(body["status"], "healthy");
    assert_eq!(body["connectedClients"], 0);
    assert_eq!(body["instance"], "health-1");
    assert_eq!(body["rooms"], 0);
}

#[test]
fn health_counts_open_websockets_and_rooms() {
    let server = start(&[]);
    let mut a = Client::chat(&server);
    let mut b = Client::chat(&server);
    let _echo = Client::plain(&server, "/echo");
    a.join("one");
    b.join("two");
    // Every join was answered, so the server has registered all three connections.
    let h = server.health();
    assert_eq!(h["connectedClients"], 3, "{h}");
    assert_eq!(h["rooms"], 2, "{h}");

    b.join("one");
    let h = server.health();
    assert_eq!(h["rooms"], 1, "room two emptied when b moved: {h}");
}

#[test]
fn other_plain_paths_are_404_and_closed() {
    let server = start(&[]);
    for path in ["/nope", "/echo", "/room/abc", "/favicon.ico"] {
        let req = format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n");
        let ex = http_exchange(server.addr, req.as_bytes());
        assert_eq!(ex.resp.status, 404, "GET {path}");
        assert!(!ex.resp.body.is_empty(), "GET {path}: empty body");
        assert_eq!(ex.resp.header("connection"), Some("close"), "GET {path}");
        assert!(ex.closed, "GET {path}: connection left open");
    }
}

/// Sends `request` over raw TCP; returns the response head, every byte
/// after it up to the close, and whether the server closed.
fn raw_exchange(addr: std::net::SocketAddr, request: &[u8]) -> (HttpResponse, String, bool) {
    use std::io::Write;
    let mut stream = tcp_connect(addr);
    // The server may answer and close before reading everything sent.
    let _ = stream.write_all(request);
    let mut buf = Vec::new();
    let resp = read_response_head(&mut stream, &mut buf);
    let end = read_until_closed(&mut stream, &mut buf, STEP);
    (
        resp,
        String::from_utf8_lossy(&buf).into_owned(),
        end != End::TimedOut,
    )
}

#[test]
fn plain_requests_that_frame_a_body_are_400() {
    let server = start(&[]);
    for path in ["/", "/metrics", "/healthz", "/readyz", "/client.js"] {
        for method in ["GET", "HEAD"] {
            let ok = format!("{method} {path} HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n");
            let (resp, _, _) = raw_exchange(server.addr, ok.as_bytes());
            assert_eq!(resp.status, 200, "{method} {path} with Content-Length: 0");
            for (framing, reason) in [
                ("Content-Length: five\r\n", "Content-Length"),
                (
                    "Content-Length: 5\r\nContent-Length: 6\r\n",
                    "Content-Length",
                ),
                ("Content-Length: 5, 6\r\n", "Content-Length"),
                ("Content-Length: -1\r\n", "Content-Length"),
                ("Transfer-Encoding: chunked\r\n", "Transfer-Encoding"),
                (
                    "Transfer-Encoding: chunked\r\nContent-Length: 0\r\n",
                    "Transfer-Encoding",
                ),
                // A body GET does not read: refused rather than left unread.
                ("Content-Length: 16\r\n", "body"),
            ] {
                let req = format!(
                    "{method} {path} HTTP/1.1\r\nHost: x\r\n{framing}\r\nGET / HTTP/1.1\r\n\r\n"
                );
                let (resp, body, closed) = raw_exchange(server.addr, req.as_bytes());
                let what = format!("{method} {path} with {framing:?}");
                assert_eq!(resp.status, 400, "{what}: {body}");
                assert!(closed, "{what}: connection left open");
                // One answer only: the bytes after the head were not
                // taken for a second request.
                assert!(!body.contains("HTTP/1.1"), "{what}: {body}");
                if method == "GET" {
                    assert!(body.contains(reason), "{what}: {body}");
                } else {
                    assert!(body.is_empty(), "{what}: a body after HEAD");
                }
            }
        }
    }
}

#[test]
fn host_port_and_instance_come_from_the_environment() {
    let server = ServerBuilder::new()
        .listen_from_env()
        .env("K_REVISION", "rev-42")
        .spawn();
    assert!(
        server.addr.ip().is_loopback(),
        "HOST=127.0.0.1 ignored: {}",
        server.addr
    );
    assert_ne!(server.addr.port(), 0);
    assert_eq!(server.health()["instance"], "rev-42");
}

#[test]
fn empty_environment_variables_count_as_unset() {
    let mut builder = ServerBuilder::new();
    for name in [
        "AUTH_SECRET",
        "ALLOWED_ORIGINS",
        "REQUIRE_ORIGIN",
        "REDIS_URL",
        "PRESENCE_EXPIRY",
        "TRUST_PROXY",
        "K_SERVICE",
        "K_REVISION",
        "GOOGLE_CLOUD_PROJECT",
        "LOG_LEVEL",
        "MAX_CONNECTIONS",
        "MAX_ROOMS",
        "PING_INTERVAL",
    ] {
        builder = builder.env(name, "");
    }
    let server = builder.spawn();
    let health = server.health();
    assert_eq!(health["instance"], "local", "{health}");
    assert_eq!(health["service"], Value::Null, "{health}");
    assert!(health.get("backplane").is_none(), "no Redis: {health}");
    // No token required, any origin allowed.
    let ws = try_upgrade(server.addr, "/", &[("Origin", "https://any.example")]);
    assert!(ws.is_ok(), "{:?}", ws.err());
}

#[test]
fn flags_override_the_environment() {
    let server = ServerBuilder::new()
        .env("K_REVISION", "from-env")
        .args(&["--instance-id", "flag"])
        .spawn();
    assert_eq!(server.health()["instance"], "flag");
}

#[test]
fn default_instance_is_local() {
    let server = start(&[]);
    assert_eq!(server.health()["instance"], "local");
    let mut c = Client::plain(&server, "/");
    let hello = c.recv_json(STEP);
    assert_eq!(hello["instanceId"], "local");
}

#[test]
fn help_lists_every_flag() {
    let (status, out, err) = run_binary(&["--help"], Duration::from_secs(5));
    let status = status.expect("--help did not exit");
    assert!(status.success(), "--help exit {status:?}; stderr {err}");
    for flag in [
        "--host",
        "--port",
        "--instance-id",
        "--max-message-size",
        "--echo-max-message-size",
        "--max-queued-bytes",
        "--ping-interval",
        "--handshake-timeout",
        "--close-timeout",
        "--drain-timeout",
        "--max-connection-age",
        "--service",
        "--revision",
        "--configuration",
        "--project-id",
        "--log-level",
    ] {
        assert!(out.contains(flag), "--help does not mention {flag}:\n{out}");
    }
}

#[test]
fn bad_flag_values_fail_to_start() {
    let cases: &[&[&str]] = &[
        &["--port", "notaport"],
        &["--ping-interval", "soon"],
        &["--max-message-size", "-5"],
        &["--max-connection-age", "0s"],
        &["--no-such-flag"],
    ];
    for args in cases {
        let mut all = vec!["--host", "127.0.0.1", "--port", "0"];
        all.extend_from_slice(args);
        let (status, _, _) = run_binary(&all, Duration::from_secs(5));
        let status = status.unwrap_or_else(|| panic!("{args:?}: server started anyway"));
        assert!(!status.success(), "{args:?}: exit {status:?}");
    }
}

#[test]
fn logs_are_one_json_object_per_line() {
    let server = start(&[]);
    let mut c = Client::chat(&server);
    c.join("logs");
    c.send_text("not json");
    c.recv_json(STEP);
    drop(c);
    let _ = server.health();

    let lines = server.stdout_lines();
    let listening: Vec<Value> = lines
        .iter()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|v| v["message"] == "listening")
        .collect();
    assert_eq!(listening.len(), 1, "{lines:#?}");
    assert_eq!(listening[0]["severity"], "INFO");
    assert_eq!(listening[0]["address"], server.addr.to_string());
    for line in &lines {
        let v: Value = serde_json::from_str(line)
            .unwrap_or_else(|e| panic!("stdout line is not JSON ({e}): {line:?}"));
        assert!(v["severity"].is_string(), "no severity: {line}");
        assert!(v["message"].is_string(), "no message: {line}");
    }
}
