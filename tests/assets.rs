//! Checks the embedded browser files over real TCP: `/client.js`, `/client.d.ts` and `/chat`
//! with their types and caching headers, `HEAD`, 304 and 405, and that a WebSocket upgrade on
//! `/chat` is still a chat connection.

mod common;

use common::*;
use std::io::Write;

const FILES: [(&str, &str, &str); 3] = [
    (
        "/client.js",
        "text/javascript; charset=utf-8",
        "web/client.js",
    ),
    (
        "/client.d.ts",
        "text/plain; charset=utf-8",
        "web/client.d.ts",
    ),
    ("/chat", "text/html; charset=utf-8", "web/chat.html"),
];

fn repo_file(path: &str) -> Vec<u8> {
    let full = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(path);
    std::fs::read(&full).unwrap_or_else(|e| panic!("{}: {e}", full.display()))
}

#[test]
fn files_are_served_as_in_the_repository_with_their_headers() {
    let server = start(&[]);
    for (path, content_type, file) in FILES {
        let ex = http_exchange(
            server.addr,
            format!("GET {path}?v=1 HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes(),
        );
        let resp = &ex.resp;
        assert_eq!(resp.status, 200, "{path}");
        assert_eq!(resp.header("content-type"), Some(content_type), "{path}");
        assert_eq!(resp.header("x-content-type-options"), Some("nosniff"));
        assert_eq!(resp.header("cache-control"), Some("no-cache"));
        assert!(resp.header("etag").is_some_and(|e| e.len() == 18));
        assert!(resp.body == repo_file(file), "{path} differs from {file}");
        assert!(ex.closed, "{path}: connection left open");
    }
    let page = http_get(server.addr, "/chat");
    let csp = page.header("content-security-policy").unwrap_or_default();
    assert!(csp.contains("default-src 'self'"), "{csp}");
}

#[test]
fn head_answers_the_headers_only() {
    let server = start(&[]);
    let mut stream = tcp_connect(server.addr);
    stream
        .write_all(b"HEAD /client.js HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let mut buf = Vec::new();
    let resp = read_response_head(&mut stream, &mut buf);
    assert_eq!(resp.status, 200);
    let len: usize = resp.header("content-length").unwrap().parse().unwrap();
    assert_eq!(len, repo_file("web/client.js").len());
    let end = read_until_closed(&mut stream, &mut buf, STEP);
    assert_ne!(end, End::TimedOut);
    assert!(buf.is_empty(), "HEAD got a body of {} bytes", buf.len());
}

#[test]
fn a_current_etag_is_answered_304_without_a_body() {
    let server = start(&[]);
    let etag = http_get(server.addr, "/chat")
        .header("etag")
        .unwrap()
        .to_owned();
    let req = format!("GET /chat HTTP/1.1\r\nHost: x\r\nIf-None-Match: {etag}\r\n\r\n");
    let ex = http_exchange(server.addr, req.as_bytes());
    assert_eq!(ex.resp.status, 304);
    assert_eq!(ex.resp.header("etag"), Some(etag.as_str()));
    assert!(ex.resp.body.is_empty());
    let stale = "GET /chat HTTP/1.1\r\nHost: x\r\nIf-None-Match: \"0000000000000000\"\r\n\r\n";
    assert_eq!(
        http_exchange(server.addr, stale.as_bytes()).resp.status,
        200
    );
}

#[test]
fn other_methods_are_405_with_get_and_head_allowed() {
    let server = start(&[]);
    let ex = http_exchange(server.addr, b"POST /chat HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_eq!(ex.resp.status, 405);
    assert_eq!(ex.resp.header("allow"), Some("GET, HEAD"));
    let ex = http_exchange(server.addr, b"DELETE / HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_eq!(ex.resp.status, 405);
    assert_eq!(ex.resp.header("allow"), Some("GET, HEAD"));
}

#[test]
fn an_upgrade_on_the_page_path_is_a_chat_connection() {
    let server = start(&[]);
    let mut client = Client::chat_at(&server, "/chat");
    let joined = client.join("page");
    assert_eq!(joined["userCount"], 1, "{joined}");
}
