//! Checks who may connect: HS256 tokens made by the independent `jsonwebtoken` crate, every
//! 401 reason over raw TCP, `sub` as `userId`, the `rooms` claim, and the `Origin` check.

mod common;

use common::*;
use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
use tungstenite::client::IntoClientRequest;
use tungstenite::http::HeaderValue;

const SECRET: &str = "correct horse battery staple";

fn unix_now() -> i64 {
    now_ms() / 1000
}

fn token(claims: Value) -> String {
    sign(claims, SECRET, Algorithm::HS256)
}

fn sign(claims: Value, secret: &str, alg: Algorithm) -> String {
    encode(
        &Header::new(alg),
        &claims,
        &EncodingKey::from_secret(secret.as_bytes()),
    )
    .expect("encode token")
}

fn auth_server() -> Server {
    start(&["--auth-secret", SECRET])
}

/// Expects a 401 whose body names `reason`.
fn assert_401(resp: Result<RawWs, HttpResponse>, reason: &str) {
    let resp = resp.err().expect("upgrade must be refused");
    assert_eq!(resp.status, 401, "body {:?}", resp.body_text());
    assert_eq!(resp.body_text(), format!("{reason}\n"));
    assert_eq!(resp.header("www-authenticate"), Some("Bearer"));
}

fn bearer(t: &str) -> String {
    format!("Bearer {t}")
}

/// A tungstenite chat client carrying `token` in the Authorization header.
fn client_with_token(server: &Server, t: &str) -> Client {
    let mut req = server.url("/").into_client_request().unwrap();
    req.headers_mut()
        .insert("Authorization", HeaderValue::from_str(&bearer(t)).unwrap());
    let (ws, resp) = tungstenite::client(req, tcp_connect(server.addr)).expect("handshake");
    assert_eq!(resp.status().as_u16(), 101);
    let mut c = Client {
        ws,
        id: String::new(),
    };
    let hello = c.recv_json(STEP);
    c.id = hello["clientId"].as_str().unwrap().to_owned();
    c
}

#[test]
fn every_bad_token_is_refused_before_the_upgrade() {
    let server = auth_server();
    let addr = server.addr;
    let exp = unix_now() + 600;

    assert_401(try_upgrade(addr, "/", &[]), "missing token");
    assert_401(
        try_upgrade(addr, "/", &[("Authorization", "Basic dXNlcjpwYXNz")]),
        "missing token",
    );
    assert_401(
        try_upgrade(addr, "/", &[("Authorization", "Bearer not-a-jwt")]),
        "malformed token",
    );
    let wrong_key = sign(json!({"exp": exp}), "another secret", Algorithm::HS256);
    assert_401(
        try_upgrade(addr, "/", &[("Authorization", &bearer(&wrong_key))]),
        "bad signature",
    );
    let expired = token(json!({"exp": unix_now() - 3600}));
    assert_401(
        try_upgrade(addr, "/", &[("Authorization", &bearer(&expired))]),
        "token expired",
    );
    let early = token(json!({"exp": exp, "nbf": unix_now() + 3600}));
    assert_401(
        try_upgrade(addr, "/", &[("Authorization", &bearer(&early))]),
        "token not yet valid",
    );
    let no_exp = token(json!({"sub": "ann"}));
    assert_401(
        try_upgrade(addr, "/", &[("Authorization", &bearer(&no_exp))]),
        "malformed token: exp is required",
    );
    // HS512 with the right secret: a valid token, of an algorithm we do not take.
    let hs512 = sign(json!({"exp": exp}), SECRET, Algorithm::HS512);
    assert_401(
        try_upgrade(addr, "/", &[("Authorization", &bearer(&hs512))]),
        "malformed token: alg must be HS256",
    );
    // alg "none" with an empty signature: the classic forgery.
    let b64 = |s: &str| {
        use base64::Engine as _;
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s)
    };
    let unsigned = format!(
        "{}.{}.",
        b64(r#"{"alg":"none","typ":"JWT"}"#),
        b64(&json!({"exp": exp, "sub": "admin"}).to_string())
    );
    assert_401(
        try_upgrade(addr, "/", &[("Authorization", &bearer(&unsigned))]),
        "malformed token: alg must be HS256",
    );
    // In the query string, the same checks apply.
    assert_401(
        try_upgrade(addr, &format!("/?token={expired}"), &[]),
        "token expired",
    );
    assert_401(
        try_upgrade(addr, &format!("/echo?token={wrong_key}"), &[]),
        "bad signature",
    );

    let m = scrape(addr);
    assert_eq!(
        m["roomcast_handshake_failures_total{reason=\"auth\"}"],
        11.0
    );
    assert_eq!(m["roomcast_websockets_opened_total"], 0.0);
}

#[test]
fn a_valid_token_in_the_header_or_query_opens_and_sub_is_the_user_id() {
    let server = auth_server();
    let exp = unix_now() + 600;
    let mut ann = client_with_token(&server, &token(json!({"exp": exp, "sub": "ann"})));
    ann.join("r");

    // The query parameter, for browsers; tungstenite as the client.
    let url = server.url(&format!(
        "/?x=1&token={}",
        token(json!({"exp": exp, "sub": "bob"}))
    ));
    let (ws, _) = tungstenite::client(url.as_str(), tcp_connect(server.addr)).expect("upgrade");
    let mut bob = Client {
        ws,
        id: String::new(),
    };
    assert_eq!(bob.recv_json(STEP)["type"], "connected");
    bob.join("r");

    let joined = ann.recv_json(STEP);
    assert_eq!(joined["type"], "user_joined");
    assert_eq!(joined["userId"], "bob");

    bob.send_json(&json!({"type": "message", "text": "hi"}));
    for c in [&mut ann, &mut bob] {
        let m = c.recv_json(STEP);
        assert_eq!(m["type"], "message");
        assert_eq!(m["userId"], "bob");
        assert_eq!(m["text"], "hi");
    }

    // Without sub there is no userId.
    let mut anon = client_with_token(&server, &token(json!({"exp": exp})));
    anon.join("r");
    let joined = ann.recv_json(STEP);
    assert_eq!(joined["type"], "user_joined");
    assert!(joined.get("userId").is_none(), "{joined}");
}

#[test]
fn the_rooms_claim_limits_joins() {
    let server = auth_server();
    let t = token(json!({"exp": unix_now() + 600, "sub": "cy", "rooms": ["lobby", "team-*"]}));
    let mut c = client_with_token(&server, &t);
    c.join("lobby");
    c.join("team-red");
    c.send_json(&json!({"type": "join", "roomId": "admin"}));
    let reply = c.recv_json(STEP);
    assert_eq!(
        reply,
        json!({"type": "error", "message": "Not allowed to join this room"})
    );
    c.send_json(&json!({"type": "join", "roomId": "team"}));
    assert_eq!(c.recv_json(STEP)["type"], "error");
    // Still in team-red: a message goes there.
    c.send_json(&json!({"type": "message", "text": "x"}));
    assert_eq!(c.recv_json(STEP)["roomId"], "team-red");
}

#[test]
fn origins_outside_the_list_get_403() {
    let server = start(&[
        "--allowed-origins",
        "https://chat.example.com,*.example.org",
    ]);
    let addr = server.addr;
    for origin in [
        "https://evil.example.com",
        "http://chat.example.com",
        "https://example.org",
        "https://example.org.evil.net",
        "null",
    ] {
        let resp = try_upgrade(addr, "/", &[("Origin", origin)])
            .err()
            .expect(origin);
        assert_eq!(resp.status, 403, "{origin}");
        assert_eq!(resp.body_text(), "origin not allowed\n");
    }
    for origin in ["https://chat.example.com", "https://a.b.example.org"] {
        assert!(
            try_upgrade(addr, "/", &[("Origin", origin)]).is_ok(),
            "{origin}"
        );
    }
    assert!(
        try_upgrade(addr, "/", &[]).is_ok(),
        "no Origin: not a browser"
    );
    assert_eq!(
        scrape(addr)["roomcast_handshake_failures_total{reason=\"origin\"}"],
        5.0
    );

    let strict = start(&[
        "--allowed-origins",
        "https://chat.example.com",
        "--require-origin",
    ]);
    let resp = try_upgrade(strict.addr, "/", &[]).err().expect("no Origin");
    assert_eq!(resp.status, 403);
    assert_eq!(resp.body_text(), "an Origin header is required\n");
    assert!(try_upgrade(strict.addr, "/", &[("Origin", "https://chat.example.com")]).is_ok());
}

#[test]
fn origin_is_checked_before_the_token() {
    let server = start(&[
        "--auth-secret",
        SECRET,
        "--allowed-origins",
        "https://a.example",
    ]);
    let resp = try_upgrade(server.addr, "/", &[("Origin", "https://b.example")])
        .err()
        .expect("refused");
    assert_eq!(resp.status, 403);
}

#[test]
fn a_second_origin_or_token_is_refused_not_ignored() {
    let server = start(&[
        "--auth-secret",
        SECRET,
        "--allowed-origins",
        "https://a.example",
    ]);
    let good = bearer(&token(json!({"exp": unix_now() + 600})));
    let origin = ("Origin", "https://a.example");
    assert!(try_upgrade(server.addr, "/", &[origin, ("Authorization", &good)]).is_ok());
    // A proxy that checks the last field and a server that took the first
    // would each see an answer the other never checked.
    for (extra, field) in [
        (
            [("Origin", "https://b.example"), ("Authorization", &good)],
            "Origin",
        ),
        (
            [("Authorization", &good), ("Authorization", "Bearer forged")],
            "Authorization",
        ),
    ] {
        let mut fields = vec![origin];
        fields.extend_from_slice(&extra);
        let resp = try_upgrade(server.addr, "/", &fields)
            .err()
            .unwrap_or_else(|| panic!("two {field} fields opened a WebSocket"));
        assert_eq!(resp.status, 400, "{field}");
        assert_eq!(resp.body_text(), format!("more than one {field} header\n"));
    }
    // The query's token, twice: neither is taken.
    let t = token(json!({"exp": unix_now() + 600}));
    assert!(try_upgrade(server.addr, &format!("/?token={t}"), &[origin]).is_ok());
    let twice = format!("/?token={t}&token=forged");
    assert_401(
        try_upgrade(server.addr, &twice, &[origin]),
        "more than one token query parameter",
    );
    // A header and a query that disagree: neither is taken. The same token
    // in both is no contradiction.
    let other = token(json!({"exp": unix_now() + 601}));
    let t_bearer = bearer(&t);
    let header = ("Authorization", t_bearer.as_str());
    assert_401(
        try_upgrade(server.addr, &format!("/?token={other}"), &[origin, header]),
        "different tokens in the Authorization header and the query",
    );
    assert!(try_upgrade(server.addr, &format!("/?token={t}"), &[origin, header]).is_ok());
}

#[test]
fn an_empty_secret_is_refused_at_start() {
    let (status, _, stderr) = run_binary(&["--auth-secret", ""], STEP);
    assert_eq!(status.and_then(|s| s.code()), Some(2), "{stderr}");
    assert!(stderr.contains("must not be empty"), "{stderr}");
}
