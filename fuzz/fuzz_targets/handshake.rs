//! Arbitrary request bytes into the HTTP/1.1 upgrade parser, whole and in
//! pieces, and into a connection engine.
//!
//! Checks: no panic or hang; resumed parsing (`parse_request_more`) agrees
//! with parsing the same prefix whole; a request that is accepted satisfies
//! every requirement of RFC 6455 4.2.1, checked here independently, and its
//! 101 response (read back with `httparse`) carries the right
//! `Sec-WebSocket-Accept`; every refusal is a well-formed response with the
//! status the error names; the engine answers exactly what the parser
//! decided, and after a 101 only valid server frames follow. Every header
//! value also goes through the `X-Cloud-Trace-Context` parser, whose
//! answers are checked against its grammar.

#![no_main]

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use libfuzzer_sys::fuzz_target;
use roomcast::assets;
use roomcast::cloudrun::Deployment;
use roomcast::conn::{Engine, Limits, Phase};
use roomcast::http::{self, HttpError, Request};
use roomcast::trace::TraceContext;
use roomcast_fuzz::{cut_plans, read_server_frames, response_head_end, MemSocket};
use sha1::{Digest, Sha1};

/// What a parse came to, owned so that two parses can be compared.
#[derive(Debug, PartialEq, Eq)]
enum Outcome {
    Partial,
    Refused(HttpError),
    Parsed {
        used: usize,
        method: String,
        path: String,
        query: Option<String>,
        minor_version: u8,
        headers: Vec<(String, Vec<u8>)>,
    },
}

fn outcome(parsed: Result<Option<(Request<'_>, usize)>, HttpError>) -> Outcome {
    match parsed {
        Ok(None) => Outcome::Partial,
        Err(e) => Outcome::Refused(e),
        Ok(Some((req, used))) => Outcome::Parsed {
            used,
            method: req.method.to_owned(),
            path: req.path.to_owned(),
            query: req.query.map(str::to_owned),
            minor_version: req.minor_version,
            headers: req
                .headers()
                .map(|(n, v)| (n.to_owned(), v.to_vec()))
                .collect(),
        },
    }
}

/// Whether a comma-separated field named `name` lists `token`.
fn lists_token(headers: &[(String, Vec<u8>)], name: &str, token: &str) -> bool {
    headers
        .iter()
        .filter(|(n, _)| n.eq_ignore_ascii_case(name))
        .flat_map(|(_, v)| v.split(|&b| b == b','))
        .any(|t| {
            let t = t.trim_ascii();
            t.eq_ignore_ascii_case(token.as_bytes())
        })
}

fn values<'h>(headers: &'h [(String, Vec<u8>)], name: &str) -> Vec<&'h [u8]> {
    headers
        .iter()
        .filter(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_slice())
        .collect()
}

/// Every `Content-Length` value, fields and comma-separated list elements
/// alike, or `None` when one is not a decimal number (RFC 9110 8.6) that
/// fits 64 bits. List elements are separated by optional whitespace:
/// spaces and tabs (RFC 9110 5.6.3).
fn content_lengths(headers: &[(String, Vec<u8>)]) -> Option<Vec<u64>> {
    let mut lengths = Vec::new();
    for value in values(headers, "content-length") {
        for element in value.split(|&b| b == b',') {
            let element = std::str::from_utf8(element).ok()?.trim_matches([' ', '\t']);
            if element.is_empty() {
                return None;
            }
            let mut n = 0u64;
            for b in element.bytes() {
                let digit = char::from(b).to_digit(10)?;
                n = n.checked_mul(10)?.checked_add(u64::from(digit))?;
            }
            lengths.push(n);
        }
    }
    Some(lengths)
}

/// RFC 6455 4.2.2 step 5: base64(SHA-1(key + GUID)).
fn expected_accept(key: &[u8]) -> String {
    let mut sha = Sha1::new();
    sha.update(key);
    sha.update(b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11");
    BASE64.encode(sha.finalize())
}

/// Reads a response head with `httparse`; returns the status and headers.
fn read_response(bytes: &[u8]) -> (u16, Vec<(String, Vec<u8>)>, usize) {
    let mut fields = [httparse::EMPTY_HEADER; 16];
    let mut resp = httparse::Response::new(&mut fields);
    let used = match resp.parse(bytes) {
        Ok(httparse::Status::Complete(n)) => n,
        other => panic!("response does not parse: {other:?}: {bytes:?}"),
    };
    assert_eq!(resp.version, Some(1), "responses are HTTP/1.1");
    let headers = resp
        .headers
        .iter()
        .map(|h| (h.name.to_owned(), h.value.to_vec()))
        .collect();
    (
        resp.code.expect("a complete response has a code"),
        headers,
        used,
    )
}

/// The statuses the server may answer a request that parsed with.
fn owed_status(parsed: &Outcome, req: &Request<'_>) -> &'static [u16] {
    let Outcome::Parsed { headers, .. } = parsed else {
        unreachable!("only parsed requests are judged");
    };
    let wants_ws =
        !values(headers, "upgrade").is_empty() || !values(headers, "sec-websocket-key").is_empty();
    if !wants_ws {
        // RFC 9112 6.3: a plain request may not frame a body the server
        // does not read: no Transfer-Encoding, a Content-Length that is
        // one decimal number, and none but 0 on GET or HEAD.
        if !values(headers, "transfer-encoding").is_empty() {
            return &[400];
        }
        let lengths = match content_lengths(headers) {
            Some(lengths) => lengths,
            None => return &[400],
        };
        if lengths.windows(2).any(|w| w[0] != w[1]) {
            return &[400];
        }
        let body = lengths.first().is_some_and(|&n| n > 0);
        if body && matches!(req.method, "GET" | "HEAD") {
            return &[400];
        }
        // Plain requests: the embedded client files (GET and HEAD, 304
        // when If-None-Match names the file), the health report, the
        // probes, the metrics, or nothing.
        if assets::find(req.path).is_some() {
            return match req.method {
                "GET" | "HEAD" => &[200, 304],
                _ => &[405],
            };
        }
        return match (req.method, req.path) {
            ("GET" | "HEAD", "/" | "/healthz" | "/readyz" | "/metrics") => &[200],
            ("GET" | "HEAD", _) => &[404],
            _ => &[405],
        };
    }
    match http::check_upgrade(req) {
        Ok(upgrade) => {
            check_accepted(parsed);
            let mut out = Vec::new();
            http::write_switching_protocols(&mut out, &upgrade);
            check_101(&out, parsed);
            &[101]
        }
        Err(e) => {
            let mut out = Vec::new();
            http::write_error(&mut out, e);
            check_refusal(&out, e.status());
            match e.status() {
                400 => &[400],
                404 => &[404],
                405 => &[405],
                426 => &[426],
                431 => &[431],
                505 => &[505],
                other => panic!("status {other} for a refused upgrade"),
            }
        }
    }
}

/// Every requirement of RFC 6455 4.2.1, checked on the parsed fields.
fn check_accepted(parsed: &Outcome) {
    let Outcome::Parsed {
        method,
        minor_version,
        headers,
        ..
    } = parsed
    else {
        unreachable!();
    };
    // 1. An HTTP/1.1 or higher GET request.
    assert_eq!(method, "GET");
    assert!(*minor_version >= 1);
    // 2. A Host header field (RFC 9112 3.2: exactly one).
    assert_eq!(values(headers, "host").len(), 1);
    // 3. Upgrade containing "websocket"; 4. Connection containing
    // "Upgrade".
    assert!(lists_token(headers, "upgrade", "websocket"));
    assert!(lists_token(headers, "connection", "upgrade"));
    // 5. A Sec-WebSocket-Key that decodes to 16 bytes.
    let keys = values(headers, "sec-websocket-key");
    assert_eq!(keys.len(), 1);
    let decoded = BASE64.decode(keys[0]).expect("accepted key is base64");
    assert_eq!(decoded.len(), 16);
    // 6. Sec-WebSocket-Version 13, once (RFC 6455 11.3.5).
    assert_eq!(values(headers, "sec-websocket-version"), vec![&b"13"[..]]);
    // The other fields the upgrade reads one value of appear at most
    // once: two could each be seen by a different party.
    for name in ["origin", "authorization", "x-cloud-trace-context"] {
        assert!(values(headers, name).len() <= 1, "two {name} accepted");
    }
    // No body may follow: what follows the head is frames.
    assert!(values(headers, "transfer-encoding").is_empty());
    for length in values(headers, "content-length") {
        assert_eq!(length.trim_ascii(), b"0");
    }
}

/// A 101 that completes the handshake (RFC 6455 4.2.2 step 5).
fn check_101(out: &[u8], parsed: &Outcome) {
    let Outcome::Parsed { headers, .. } = parsed else {
        unreachable!();
    };
    let (status, resp_headers, used) = read_response(out);
    assert_eq!((status, used), (101, out.len()));
    assert!(lists_token(&resp_headers, "upgrade", "websocket"));
    assert!(lists_token(&resp_headers, "connection", "upgrade"));
    let key = values(headers, "sec-websocket-key")[0];
    let accept = values(&resp_headers, "sec-websocket-accept");
    assert_eq!(accept, vec![expected_accept(key).as_bytes()]);
}

/// A refusal: the status, a body as long as it says, and a close.
fn check_refusal(out: &[u8], status: u16) {
    check_plain(out, &[status], false);
}

/// A plain response: one of the statuses, a close, and a body as long as
/// `Content-Length` says, or none at all after a HEAD or in a 304 (RFC
/// 9110 9.3.2, 15.4.5).
fn check_plain(out: &[u8], allowed: &[u16], head: bool) {
    let (got, headers, used) = read_response(out);
    assert!(allowed.contains(&got), "{got} not in {allowed:?}");
    assert!(lists_token(&headers, "connection", "close"));
    if got == 304 || head {
        assert_eq!(used, out.len(), "a body after HEAD or in a 304");
        return;
    }
    let length = values(&headers, "content-length");
    assert_eq!(length.len(), 1);
    let length: usize = std::str::from_utf8(length[0]).unwrap().parse().unwrap();
    assert_eq!(used + length, out.len());
}

/// Feeds `data` to parse_request_more in pieces, comparing each answer with
/// a fresh parse of the same prefix where the answer changes. Returns where
/// the head was decided (or `None` if it never was) and the outcome.
fn parse_in_pieces(data: &[u8], plan: &[usize]) -> (usize, Outcome) {
    let mut seen = 0;
    let mut end = 0;
    for &n in plan {
        end += n;
        let resumed = outcome(http::parse_request_more(&data[..end], seen));
        if resumed != Outcome::Partial {
            let fresh = outcome(http::parse_request(&data[..end]));
            assert_eq!(resumed, fresh, "resumed at {seen}, prefix {end}");
            // The bytes before this piece were unfinished, parsed whole too.
            if seen > 0 {
                assert_eq!(
                    outcome(http::parse_request(&data[..seen])),
                    Outcome::Partial
                );
            }
            return (end, resumed);
        }
        seen = end;
    }
    assert_eq!(outcome(http::parse_request(&data[..end])), Outcome::Partial);
    (end, Outcome::Partial)
}

/// A deployment with a project, so that trace headers are kept and logged.
fn deployment() -> Deployment {
    Deployment {
        service: Some("svc".into()),
        revision: Some("rev".into()),
        configuration: None,
        project_id: Some("proj".into()),
    }
}

/// `TraceContext::parse` accepts exactly `TRACE_ID/SPAN_ID[;o=0|1]`, the
/// trace 32 hex digits (not all zero) and the span a decimal `u64`:
/// whatever it accepts prints back to the same text, up to the case of the
/// hex digits and leading zeros of the span.
fn check_trace(value: &[u8]) {
    let Some(t) = TraceContext::parse(value) else {
        return;
    };
    let text = std::str::from_utf8(value).expect("accepted values are UTF-8");
    let (trace, rest) = text.split_once('/').expect("accepted values have a /");
    assert_eq!(trace.len(), 32);
    assert_eq!(u128::from_str_radix(trace, 16).ok(), Some(t.trace_id));
    assert_ne!(t.trace_id, 0);
    let (span, options) = rest.split_once(';').unwrap_or((rest, ""));
    assert!(!span.is_empty() && span.bytes().all(|b| b.is_ascii_digit()));
    assert_eq!(span.parse::<u64>().ok(), Some(t.span_id));
    match options {
        "" | "o=0" => assert!(!t.sampled),
        "o=1" => assert!(t.sampled),
        other => panic!("options {other:?} accepted"),
    }
    assert_eq!(rest.contains(';'), !options.is_empty());
    for (_, v) in t.log_fields("proj") {
        assert!(v.is_string() || v.is_boolean());
    }
}

fn limits() -> Limits {
    Limits {
        max_message: 1 << 16,
        echo_max_message: 1 << 16,
        max_queued: 1 << 20,
        handshake_timeout: 10_000,
        close_timeout: 5_000,
        ping_interval: 30_000,
        max_age: 3_600_000,
    }
}

fuzz_target!(|data: &[u8]| {
    // Every log line is built, so that logging untrusted fields is fuzzed
    // too; run with -close_fd_mask=1 to drop them (scripts/fuzz.sh does).
    roomcast::log::set_level(roomcast::log::Level::Debug);
    let whole = outcome(http::parse_request(data));
    if let Outcome::Parsed { used, headers, .. } = &whole {
        assert!(*used <= data.len());
        assert!(headers.len() <= http::MAX_HEADERS);
    }
    if let Ok(Some((req, _))) = http::parse_request(data) {
        owed_status(&whole, &req);
        for (_, value) in req.headers() {
            check_trace(value);
        }
    }

    // A byte at a time is quadratic in the checks above; the other plans
    // cover resumption.
    let plans = cut_plans(data, data.len());
    for (i, plan) in plans.iter().enumerate() {
        if i == 1 && data.len() > 512 {
            continue;
        }
        let (decided_at, decided) = parse_in_pieces(data, plan);

        // The engine, fed the same pieces, answers as the parser decided.
        let mut engine: Engine<MemSocket> =
            Engine::new(limits(), "fuzz").with_deployment(deployment());
        let key = engine.accept(
            MemSocket {
                room: usize::MAX,
                ..MemSocket::default()
            },
            0,
        );
        let mut fed = 0;
        for &n in plan {
            let mut piece = data[fed..fed + n].to_vec();
            fed += n;
            engine.on_input(key, &mut piece, 0);
            engine.flush(0);
        }
        let peer = engine.peer(key).expect("nothing removes it");
        let written = &peer.socket.written;
        let Outcome::Parsed { .. } = decided else {
            match decided {
                Outcome::Partial => {
                    assert!(written.is_empty());
                    assert_eq!(peer.conn.phase(), Phase::Handshake);
                }
                Outcome::Refused(e) => {
                    check_refusal(written, e.status());
                    assert_eq!(peer.conn.phase(), Phase::Lingering);
                }
                Outcome::Parsed { .. } => unreachable!(),
            }
            continue;
        };
        let (req, _) = http::parse_request(&data[..decided_at])
            .expect("parsed above")
            .expect("parsed above");
        let allowed = owed_status(&decided, &req);
        let head = response_head_end(written).expect("a response was written");
        let (got, _, _) = read_response(&written[..head]);
        assert!(allowed.contains(&got), "{got} not in {allowed:?}");
        if got == 101 {
            // Whatever the bytes after the head were, only valid frames
            // answer them.
            let (_, used) = read_server_frames(&written[head..]);
            assert_eq!(used, written.len() - head);
        } else {
            assert_eq!(peer.conn.phase(), Phase::Lingering);
            check_plain(written, allowed, req.method == "HEAD");
        }
    }
});
