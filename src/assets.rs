//! The browser client and the chat page, compiled into the binary.
//!
//! `GET /client.js` is the reconnecting client (an ES module), `GET
//! /client.d.ts` its typings, and `GET /chat` a small chat page built on
//! it. The files live in `web/` and are embedded with `include_bytes!`, so
//! the binary serves them with nothing on disk.
//!
//! Each answer carries an `ETag` computed at compile time and `Cache-Control:
//! no-cache`: browsers keep a copy but ask each time whether it is still
//! current, which costs a 304 and no body, and a new release is picked up
//! at the next load. `HEAD` is answered like `GET` without the body.
//!
//! LIMITATION: no compression; a first load of the chat page moves about
//! 30 KiB (page and client) where gzip would move about 10 KiB.

use crate::http::{self, Request};

/// One embedded file and how it is served.
#[derive(Debug)]
pub struct Asset {
    /// The request path that serves it.
    pub path: &'static str,
    /// `Content-Type`, charset included.
    pub content_type: &'static str,
    /// The file itself.
    pub body: &'static [u8],
    /// A strong validator of `body`: its FNV-1a hash, fixed at compile time.
    pub etag: u64,
    /// Response headers beyond the common ones.
    pub extra_headers: &'static [(&'static str, &'static str)],
}

/// What the chat page may load and talk to: its own origin only (plus its
/// inline style and script), over HTTP and WebSocket. `ws:` and `wss:` are
/// listed because some browsers do not count a WebSocket to the page's own
/// host as `'self'`.
const CHAT_PAGE_POLICY: &str = "default-src 'self'; script-src 'self' 'unsafe-inline'; \
     style-src 'self' 'unsafe-inline'; connect-src 'self' ws: wss:; img-src 'self' data:; \
     base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

const CLIENT_JS: &[u8] = include_bytes!("../web/client.js");
const CLIENT_DTS: &[u8] = include_bytes!("../web/client.d.ts");
const CHAT_HTML: &[u8] = include_bytes!("../web/chat.html");

/// Every file served, by path.
pub const ASSETS: [Asset; 3] = [
    Asset {
        path: "/client.js",
        content_type: "text/javascript; charset=utf-8",
        body: CLIENT_JS,
        etag: fnv1a(CLIENT_JS),
        extra_headers: &[],
    },
    Asset {
        path: "/client.d.ts",
        // TypeScript has no registered media type; as text it is readable
        // in a browser tab, and nosniff keeps it from being run.
        content_type: "text/plain; charset=utf-8",
        body: CLIENT_DTS,
        etag: fnv1a(CLIENT_DTS),
        extra_headers: &[],
    },
    Asset {
        path: "/chat",
        content_type: "text/html; charset=utf-8",
        body: CHAT_HTML,
        etag: fnv1a(CHAT_HTML),
        extra_headers: &[
            ("Content-Security-Policy", CHAT_PAGE_POLICY),
            ("Referrer-Policy", "no-referrer"),
        ],
    },
];

/// How a request for an embedded file is answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reply {
    /// 200 with the file; without the body for `HEAD`.
    Full {
        /// The file.
        asset: &'static Asset,
        /// Whether the request was `HEAD`.
        head: bool,
    },
    /// 304: the client's copy, named in `If-None-Match`, is current.
    NotModified(&'static Asset),
    /// 405: a method other than `GET` or `HEAD`.
    MethodNotAllowed,
}

impl PartialEq for Asset {
    fn eq(&self, other: &Self) -> bool {
        self.path == other.path
    }
}

impl Eq for Asset {}

/// The embedded file at `path`, if there is one.
pub fn find(path: &str) -> Option<&'static Asset> {
    ASSETS.iter().find(|a| a.path == path)
}

/// Answers a plain (not upgrade) request, or `None` when its path is not
/// an embedded file.
pub fn route(req: &Request<'_>) -> Option<Reply> {
    let asset = find(req.path)?;
    let head = match req.method {
        "GET" => false,
        "HEAD" => true,
        _ => return Some(Reply::MethodNotAllowed),
    };
    // RFC 9110 13.1.2: If-None-Match uses the weak comparison, and a
    // server MUST respond 304 to a GET or HEAD whose condition is false.
    if req
        .header("if-none-match")
        .is_some_and(|v| etag_listed(v, asset.etag))
    {
        return Some(Reply::NotModified(asset));
    }
    Some(Reply::Full { asset, head })
}

impl Reply {
    /// Appends the whole response. The connection is closed after it, as
    /// after every plain response.
    pub fn write(self, out: &mut Vec<u8>) {
        match self {
            Reply::Full { asset, head } => {
                write_head(out, "200 OK", asset, Some(asset.body.len()));
                if !head {
                    out.extend_from_slice(asset.body);
                }
            }
            // RFC 9110 15.4.5: a 304 carries the validators and caching
            // fields a 200 would have, and never a body.
            Reply::NotModified(asset) => write_head(out, "304 Not Modified", asset, None),
            Reply::MethodNotAllowed => http::write_response(
                out,
                405,
                "text/plain; charset=utf-8",
                &[("Allow", "GET, HEAD")],
                b"only GET and HEAD are allowed\n",
            ),
        }
    }
}

fn write_head(out: &mut Vec<u8>, status: &str, asset: &Asset, length: Option<usize>) {
    use std::io::Write as _;
    // Writing to a Vec cannot fail; the results are ignored for that reason.
    let _ = write!(
        out,
        "HTTP/1.1 {status}\r\nServer: roomcast\r\nContent-Type: {}\r\n",
        asset.content_type
    );
    if let Some(len) = length {
        let _ = write!(out, "Content-Length: {len}\r\n");
    }
    let _ = write!(
        out,
        "Cache-Control: no-cache\r\nETag: \"{:016x}\"\r\n\
         X-Content-Type-Options: nosniff\r\nConnection: close\r\n",
        asset.etag
    );
    for (name, value) in asset.extra_headers {
        let _ = write!(out, "{name}: {value}\r\n");
    }
    out.extend_from_slice(b"\r\n");
}

/// Whether an `If-None-Match` value names `etag`: `*`, or a comma-separated
/// list of entity tags compared weakly (a `W/` prefix is ignored).
fn etag_listed(value: &[u8], etag: u64) -> bool {
    let mut quoted = [0u8; 18];
    quoted[0] = b'"';
    quoted[17] = b'"';
    for (i, slot) in quoted[1..17].iter_mut().enumerate() {
        let nibble = (etag >> (60 - 4 * i)) & 0xf;
        *slot = b"0123456789abcdef"[nibble as usize];
    }
    let value = value.trim_ascii();
    value == b"*"
        || value.split(|&b| b == b',').any(|tag| {
            let tag = tag.trim_ascii();
            let tag = tag.strip_prefix(b"W/").unwrap_or(tag);
            tag == quoted
        })
}

/// 64-bit FNV-1a: a cheap, stable hash, enough to tell two releases of a
/// file apart (it is not meant to resist anyone crafting a collision).
const fn fnv1a(bytes: &[u8]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    let mut i = 0;
    while i < bytes.len() {
        hash ^= bytes[i] as u64;
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
        i += 1;
    }
    hash
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(raw: &str) -> Option<Reply> {
        let (req, _) = http::parse_request(raw.as_bytes())
            .expect("a well-formed request")
            .expect("a whole request");
        route(&req)
    }

    fn text(reply: Reply) -> String {
        let mut out = Vec::new();
        reply.write(&mut out);
        String::from_utf8(out).expect("the embedded files are UTF-8")
    }

    #[test]
    fn fnv1a_matches_the_published_vectors() {
        assert_eq!(fnv1a(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a(b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(fnv1a(b"foobar"), 0x8594_4171_f739_67e8);
    }

    #[test]
    fn get_serves_the_file_with_its_headers() {
        let reply = request("GET /client.js HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
        let text = text(reply);
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{head}");
        assert!(head.contains("\r\nContent-Type: text/javascript; charset=utf-8\r\n"));
        assert!(head.contains(&format!("\r\nContent-Length: {}\r\n", CLIENT_JS.len())));
        assert!(head.contains("\r\nX-Content-Type-Options: nosniff\r\n"));
        assert!(head.contains("\r\nCache-Control: no-cache\r\n"));
        assert!(body.contains("export class RoomcastClient"));
    }

    #[test]
    fn head_sends_the_length_but_no_body() {
        let text = text(request("HEAD /chat HTTP/1.1\r\nHost: x\r\n\r\n").unwrap());
        assert!(text.starts_with("HTTP/1.1 200 OK\r\n"));
        assert!(text.contains(&format!("\r\nContent-Length: {}\r\n", CHAT_HTML.len())));
        assert!(text.contains("\r\nContent-Security-Policy: "));
        assert!(text.ends_with("\r\n\r\n"), "{text}");
    }

    #[test]
    fn a_current_etag_gets_304_and_a_stale_one_the_file() {
        let etag = format!("\"{:016x}\"", find("/client.d.ts").unwrap().etag);
        for value in [
            etag.clone(),
            format!("W/{etag}"),
            format!("\"x\", {etag}"),
            "*".into(),
        ] {
            let raw =
                format!("GET /client.d.ts HTTP/1.1\r\nHost: x\r\nIf-None-Match: {value}\r\n\r\n");
            let text = text(request(&raw).unwrap());
            assert!(text.starts_with("HTTP/1.1 304 "), "{value}: {text}");
            assert!(text.contains(&format!("\r\nETag: {etag}\r\n")));
            assert!(!text.contains("Content-Length"));
            assert!(text.ends_with("\r\n\r\n"));
        }
        let raw = "GET /client.d.ts HTTP/1.1\r\nHost: x\r\nIf-None-Match: \"0\"\r\n\r\n";
        assert!(text(request(raw).unwrap()).starts_with("HTTP/1.1 200 "));
    }

    #[test]
    fn other_methods_get_405_and_other_paths_pass() {
        let text = text(request("POST /chat HTTP/1.1\r\nHost: x\r\n\r\n").unwrap());
        assert!(text.starts_with("HTTP/1.1 405 "), "{text}");
        assert!(text.contains("\r\nAllow: GET, HEAD\r\n"));
        assert_eq!(request("GET /chat/ HTTP/1.1\r\nHost: x\r\n\r\n"), None);
        assert_eq!(
            request("GET /client.js.map HTTP/1.1\r\nHost: x\r\n\r\n"),
            None
        );
    }
}
