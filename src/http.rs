//! HTTP/1.1 request parsing and the RFC 6455 4.2 opening handshake.
//!
//! Sans-IO: [`parse_request`] takes the bytes received so far and says
//! whether they hold a whole request head, need more, or are malformed.
//! Nothing is copied: the request borrows from the input.

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use sha1::{Digest, Sha1};
use std::fmt;

/// The largest request head accepted, in bytes. Browsers send well under
/// 2 KiB; a head that grows past this without ending is answered 431, which
/// also bounds what a slow client can make us buffer.
pub const MAX_HEAD_BYTES: usize = 8 * 1024;

/// The most header fields a request may carry.
pub const MAX_HEADERS: usize = 64;

/// RFC 6455 1.3: the GUID appended to the client's key.
const WEBSOCKET_GUID: &str = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

/// A parsed request head. Everything borrows from the bytes parsed.
#[derive(Debug)]
pub struct Request<'a> {
    /// The method, such as `GET`.
    pub method: &'a str,
    /// The path, without the query.
    pub path: &'a str,
    /// The query string after `?`, if any.
    pub query: Option<&'a str>,
    /// 0 for HTTP/1.0, 1 for HTTP/1.1.
    pub minor_version: u8,
    headers: [(&'a str, &'a [u8]); MAX_HEADERS],
    header_count: usize,
}

/// Why a request was refused. Each maps to one status code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HttpError {
    /// The request line is not `METHOD SP /target SP HTTP/1.x`.
    BadRequestLine,
    /// A header line is malformed (no colon, space before it, folded).
    BadHeader,
    /// No `Host` field in an HTTP/1.1 request, or more than one.
    BadHost,
    /// An HTTP major version other than 1.
    VersionNotSupported,
    /// An upgrade request that announces a body.
    UpgradeWithBody,
    /// A GET or HEAD request that announces a body.
    UnexpectedBody,
    /// A `Content-Length` that is not one decimal number, or several that
    /// disagree (RFC 9112 6.3).
    BadContentLength,
    /// A plain request with `Transfer-Encoding`: no body is read, so none
    /// may be framed.
    TransferEncoding,
    /// A field that the upgrade reads, and that may appear once, appears
    /// more than once; the reason names it.
    Repeated(&'static str),
    /// The head is longer than [`MAX_HEAD_BYTES`] or has more than
    /// [`MAX_HEADERS`] fields.
    HeadTooLarge,
    /// Only GET can be upgraded or served.
    MethodNotAllowed,
    /// A plain request for a path that serves nothing.
    NotFound,
    /// An upgrade over HTTP/1.0 (RFC 6455 4.1 needs 1.1).
    UpgradeNeedsHttp11,
    /// `Upgrade` does not name `websocket`.
    NotWebSocketUpgrade,
    /// `Connection` does not contain the `upgrade` token.
    MissingConnectionUpgrade,
    /// No `Sec-WebSocket-Key`, or more than one.
    MissingKey,
    /// The key is not 16 bytes in base64.
    BadKey,
    /// No `Sec-WebSocket-Version`.
    MissingVersion,
    /// A version other than 13.
    UnsupportedVersion,
}

impl HttpError {
    /// The status code to answer with.
    pub const fn status(self) -> u16 {
        match self {
            HttpError::HeadTooLarge => 431,
            HttpError::MethodNotAllowed => 405,
            HttpError::VersionNotSupported => 505,
            HttpError::NotFound => 404,
            HttpError::UnsupportedVersion => 426,
            _ => 400,
        }
    }

    /// Why, in a few words: the body of the error response.
    pub const fn reason(self) -> &'static str {
        match self {
            HttpError::BadRequestLine => "malformed request line",
            HttpError::BadHeader => "malformed header field",
            HttpError::BadHost => "exactly one Host header is required",
            HttpError::VersionNotSupported => "only HTTP/1.x is supported",
            HttpError::UpgradeWithBody => "an upgrade request must not have a body",
            HttpError::UnexpectedBody => "a GET or HEAD request must not have a body",
            HttpError::BadContentLength => "Content-Length must be one decimal number",
            HttpError::TransferEncoding => "Transfer-Encoding is not accepted",
            HttpError::Repeated(reason) => reason,
            HttpError::HeadTooLarge => "request header fields too large",
            HttpError::MethodNotAllowed => "only GET and HEAD are allowed",
            HttpError::NotFound => "not found",
            HttpError::UpgradeNeedsHttp11 => "websocket upgrade needs HTTP/1.1",
            HttpError::NotWebSocketUpgrade => "Upgrade header must be websocket",
            HttpError::MissingConnectionUpgrade => "Connection header must contain upgrade",
            HttpError::MissingKey => "exactly one Sec-WebSocket-Key is required",
            HttpError::BadKey => "Sec-WebSocket-Key must be 16 bytes in base64",
            HttpError::MissingVersion => "Sec-WebSocket-Version is required",
            HttpError::UnsupportedVersion => "only Sec-WebSocket-Version 13 is supported",
        }
    }
}

impl fmt::Display for HttpError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.reason())
    }
}

impl std::error::Error for HttpError {}

impl<'a> Request<'a> {
    /// All header fields in order, names as sent.
    pub fn headers(&self) -> impl Iterator<Item = (&'a str, &'a [u8])> + '_ {
        self.headers[..self.header_count].iter().copied()
    }

    /// The value of the first field named `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&'a [u8]> {
        self.headers()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v)
    }

    /// Whether any field named `name` has `token` in its comma-separated
    /// value (case-insensitive), as `Connection: keep-alive, Upgrade` does.
    pub fn has_token(&self, name: &str, token: &str) -> bool {
        self.headers()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .flat_map(|(_, v)| v.split(|&b| b == b','))
            .any(|t| t.trim_ascii().eq_ignore_ascii_case(token.as_bytes()))
    }

    /// Whether the client asks for a WebSocket at all: an `Upgrade` field
    /// or a `Sec-WebSocket-Key` says so. Such a request is answered 400 or
    /// 426 when malformed, never as a plain HTTP request.
    pub fn wants_websocket(&self) -> bool {
        self.header("upgrade").is_some() || self.header("sec-websocket-key").is_some()
    }
}

/// Parses a request head from the start of `buf`.
///
/// Returns `Ok(None)` while the head is unfinished, or `Ok(Some((request,
/// used)))` with the bytes it took; bytes after the head (a first WebSocket
/// frame, say) are left to the caller. Lines may end in CRLF or a bare LF.
///
/// # Errors
///
/// A malformed request line or header, or a head over [`MAX_HEAD_BYTES`].
pub fn parse_request(buf: &[u8]) -> Result<Option<(Request<'_>, usize)>, HttpError> {
    // RFC 9112 2.2: a server SHOULD ignore empty lines before the request
    // line.
    let end = buf.len().min(MAX_HEAD_BYTES);
    let blank = leading_blank_lines(&buf[..end]);
    let window = &buf[blank..end];
    let Some(used) = find_head_end(window) else {
        if buf.len() >= MAX_HEAD_BYTES {
            return Err(HttpError::HeadTooLarge);
        }
        // An unfinished request line can be refused early: it is better to
        // answer a stray protocol at once than to wait for the timeout.
        check_partial_request_line(&buf[blank..])?;
        return Ok(None);
    };
    let head = &window[..used];
    let used = blank + used;
    let mut lines = head
        .split(|&b| b == b'\n')
        .map(|l| l.strip_suffix(b"\r").unwrap_or(l));
    let request_line = lines.next().ok_or(HttpError::BadRequestLine)?;
    let (method, target, minor_version) = parse_request_line(request_line)?;
    let (path, query) = match target.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (target, None),
    };
    let mut request = Request {
        method,
        path,
        query,
        minor_version,
        headers: [("", &[]); MAX_HEADERS],
        header_count: 0,
    };
    for line in lines {
        if line.is_empty() {
            break;
        }
        if request.header_count == MAX_HEADERS {
            return Err(HttpError::HeadTooLarge);
        }
        request.headers[request.header_count] = parse_header_line(line)?;
        request.header_count += 1;
    }
    // RFC 9112 3.2: an HTTP/1.1 request without a Host field, or with more
    // than one, MUST be answered 400.
    let hosts = request
        .headers()
        .filter(|(n, _)| n.eq_ignore_ascii_case("host"))
        .count();
    if hosts > 1 || (hosts == 0 && request.minor_version >= 1) {
        return Err(HttpError::BadHost);
    }
    Ok(Some((request, used)))
}

/// Like [`parse_request`] for a head that grows across reads: `seen` is how
/// much of `buf` an earlier call already found unfinished. Only the new
/// bytes are searched for the end of the head, so a client that sends its
/// request a byte at a time costs linear, not quadratic, work.
///
/// # Errors
///
/// As [`parse_request`].
pub fn parse_request_more(
    buf: &[u8],
    seen: usize,
) -> Result<Option<(Request<'_>, usize)>, HttpError> {
    // The blank line that ends the head may have begun up to three bytes
    // before the new ones ("\r\n\r" + "\n").
    let from = seen.saturating_sub(3).min(buf.len());
    if buf.len() < MAX_HEAD_BYTES && find_head_end(&buf[from..]).is_none() {
        let blank = leading_blank_lines(buf);
        check_partial_request_line(&buf[blank..])?;
        return Ok(None);
    }
    parse_request(buf)
}

/// How many CR and LF bytes `buf` starts with.
fn leading_blank_lines(buf: &[u8]) -> usize {
    buf.iter()
        .take_while(|&&b| b == b'\r' || b == b'\n')
        .count()
}

/// Where the head ends: just past the blank line.
fn find_head_end(buf: &[u8]) -> Option<usize> {
    let mut from = 0;
    while let Some(i) = buf[from..].iter().position(|&b| b == b'\n') {
        let nl = from + i;
        let rest = &buf[nl + 1..];
        if rest.first() == Some(&b'\n') {
            return Some(nl + 2);
        }
        if rest.starts_with(b"\r\n") {
            return Some(nl + 3);
        }
        from = nl + 1;
    }
    None
}

/// RFC 9110 5.6.2: the characters of a token (method, field name).
fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// The longest method name waited for before an unfinished request line is
/// refused. The registered methods are all far shorter.
const MAX_METHOD_LEN: usize = 32;

fn check_partial_request_line(buf: &[u8]) -> Result<(), HttpError> {
    let buf = &buf[..buf.len().min(MAX_METHOD_LEN + 1)];
    let method_end = buf.iter().position(|&b| !is_tchar(b)).unwrap_or(buf.len());
    match buf.get(method_end) {
        None if method_end <= MAX_METHOD_LEN => Ok(()),
        Some(b' ') if method_end > 0 => Ok(()),
        _ => Err(HttpError::BadRequestLine),
    }
}

fn parse_request_line(line: &[u8]) -> Result<(&str, &str, u8), HttpError> {
    let line = std::str::from_utf8(line).map_err(|_| HttpError::BadRequestLine)?;
    let mut parts = line.split(' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(HttpError::BadRequestLine);
    };
    if method.is_empty() || !method.bytes().all(is_tchar) {
        return Err(HttpError::BadRequestLine);
    }
    let minor_version = match version.strip_prefix("HTTP/").map(str::as_bytes) {
        Some(b"1.0") => 0,
        // RFC 9110 2.5: a later 1.x minor version is answered as 1.1.
        Some([b'1', b'.', d]) if d.is_ascii_digit() => 1,
        Some([major, b'.', d]) if major.is_ascii_digit() && d.is_ascii_digit() => {
            return Err(HttpError::VersionNotSupported)
        }
        _ => return Err(HttpError::BadRequestLine),
    };
    let target = origin_form(target).ok_or(HttpError::BadRequestLine)?;
    if target.bytes().any(|b| b.is_ascii_control()) {
        return Err(HttpError::BadRequestLine);
    }
    Ok((method, target, minor_version))
}

/// The origin-form of a request target: `/path?query`. The absolute form
/// (`http://host/path`, RFC 9112 3.2.2) is cut to its path.
fn origin_form(target: &str) -> Option<&str> {
    if target.starts_with('/') {
        return Some(target);
    }
    let rest = target
        .strip_prefix("http://")
        .or_else(|| target.strip_prefix("https://"))?;
    Some(rest.find('/').map_or("/", |i| &rest[i..]))
}

fn parse_header_line(line: &[u8]) -> Result<(&str, &[u8]), HttpError> {
    let colon = line
        .iter()
        .position(|&b| b == b':')
        .ok_or(HttpError::BadHeader)?;
    let name = &line[..colon];
    // RFC 9112 5.1: no whitespace between the name and the colon; RFC 9112
    // 5.2: obsolete line folding is rejected with 400 (a folded line starts
    // with whitespace and so fails the token check too).
    if name.is_empty() || !name.iter().all(|&b| is_tchar(b)) {
        return Err(HttpError::BadHeader);
    }
    let value = line[colon + 1..].trim_ascii();
    if value.iter().any(|&b| b == 0 || b == b'\r') {
        return Err(HttpError::BadHeader);
    }
    let name = std::str::from_utf8(name).expect("tchars are ASCII");
    Ok((name, value))
}

/// Fields the upgrade reads one value of, and the reason given when a
/// request repeats one. Taking the first of two would let the client pick
/// which one a check sees when a proxy in front checked the other: an
/// origin, a token, or a version. `Host` and `Sec-WebSocket-Key` are
/// refused in their own words ([`HttpError::BadHost`],
/// [`HttpError::MissingKey`]).
const SINGLE_FIELDS: [(&str, &str); 4] = [
    ("origin", "more than one Origin header"),
    ("authorization", "more than one Authorization header"),
    (
        "x-cloud-trace-context",
        "more than one X-Cloud-Trace-Context header",
    ),
    (
        "sec-websocket-version",
        "more than one Sec-WebSocket-Version header",
    ),
];

/// Checks how a plain (not upgrade) request frames a body (RFC 9112 6.3).
/// No body is ever read: the answer is written and the connection closed.
///
/// # Errors
///
/// [`HttpError::TransferEncoding`] for any `Transfer-Encoding`,
/// [`HttpError::BadContentLength`] for a length that is not a number or
/// lengths that disagree, and [`HttpError::UnexpectedBody`] for a GET or
/// HEAD that announces content. RFC 9110 9.3.1 gives content in a GET no
/// meaning and notes that servers may refuse it as a smuggling attempt;
/// refusing it (rather than answering and discarding the body) keeps one
/// rule for every request here, upgrades included: a request has no body.
/// Other methods are left to routing, which answers them 405.
pub fn check_plain_body(req: &Request<'_>) -> Result<(), HttpError> {
    if req.header("transfer-encoding").is_some() {
        return Err(HttpError::TransferEncoding);
    }
    let length = content_length(req)?;
    if length.unwrap_or(0) > 0 && matches!(req.method, "GET" | "HEAD") {
        return Err(HttpError::UnexpectedBody);
    }
    Ok(())
}

/// The request's `Content-Length`, if it has one. RFC 9112 6.3 item 5: the
/// value is a decimal number; repeated fields, or a comma-separated list,
/// are accepted only when every value is the same number.
///
/// # Errors
///
/// [`HttpError::BadContentLength`] for an empty value, a character other
/// than a digit, a number over `u64`, or two different numbers.
pub fn content_length(req: &Request<'_>) -> Result<Option<u64>, HttpError> {
    let mut length = None;
    let values = req
        .headers()
        .filter(|(n, _)| n.eq_ignore_ascii_case("content-length"))
        .flat_map(|(_, v)| v.split(|&b| b == b','));
    for value in values {
        let value = trim_ows(value);
        if value.is_empty() || !value.iter().all(u8::is_ascii_digit) {
            return Err(HttpError::BadContentLength);
        }
        let n = std::str::from_utf8(value)
            .ok()
            .and_then(|v| v.parse::<u64>().ok())
            .ok_or(HttpError::BadContentLength)?;
        if length.is_some_and(|l| l != n) {
            return Err(HttpError::BadContentLength);
        }
        length = Some(n);
    }
    Ok(length)
}

/// `value` without the optional whitespace (RFC 9110 5.6.3: spaces and
/// tabs) around it.
fn trim_ows(value: &[u8]) -> &[u8] {
    let ows = |b: &u8| *b == b' ' || *b == b'\t';
    let start = value.iter().position(|b| !ows(b)).unwrap_or(value.len());
    let end = value.iter().rposition(|b| !ows(b)).map_or(start, |i| i + 1);
    &value[start..end]
}

/// A WebSocket upgrade that passed every check of RFC 6455 4.2.1.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Upgrade {
    /// The `Sec-WebSocket-Accept` value to answer with.
    pub accept: [u8; 28],
}

/// Checks a request that asks for a WebSocket (RFC 6455 4.2.1).
///
/// # Errors
///
/// The first requirement the request fails; 426 for a version other than
/// 13, 405 for a method other than GET, 400 for the rest, a field of
/// [`SINGLE_FIELDS`] sent twice among them.
pub fn check_upgrade(req: &Request<'_>) -> Result<Upgrade, HttpError> {
    if req.method != "GET" {
        return Err(HttpError::MethodNotAllowed);
    }
    if req.minor_version < 1 {
        return Err(HttpError::UpgradeNeedsHttp11);
    }
    if !req.has_token("upgrade", "websocket") {
        return Err(HttpError::NotWebSocketUpgrade);
    }
    if !req.has_token("connection", "upgrade") {
        return Err(HttpError::MissingConnectionUpgrade);
    }
    // Bytes after the head are WebSocket frames; a body would be read as
    // frames, so a request that announces one is refused.
    let announces_body = req.headers().any(|(n, v)| {
        n.eq_ignore_ascii_case("transfer-encoding")
            || (n.eq_ignore_ascii_case("content-length") && v.trim_ascii() != b"0")
    });
    if announces_body {
        return Err(HttpError::UpgradeWithBody);
    }
    for (name, reason) in SINGLE_FIELDS {
        let mut fields = req.headers().filter(|(n, _)| n.eq_ignore_ascii_case(name));
        if fields.nth(1).is_some() {
            return Err(HttpError::Repeated(reason));
        }
    }
    let mut keys = req
        .headers()
        .filter(|(n, _)| n.eq_ignore_ascii_case("sec-websocket-key"));
    let (Some((_, key)), None) = (keys.next(), keys.next()) else {
        return Err(HttpError::MissingKey);
    };
    // RFC 6455 4.1: the key is a randomly selected 16-byte value,
    // base64-encoded: 24 characters.
    let mut decoded = [0u8; 18];
    match BASE64.decode_slice(key, &mut decoded) {
        Ok(16) if key.len() == 24 => {}
        _ => return Err(HttpError::BadKey),
    }
    match req.header("sec-websocket-version") {
        None => return Err(HttpError::MissingVersion),
        Some(v) if v != b"13" => return Err(HttpError::UnsupportedVersion),
        Some(_) => {}
    }
    Ok(Upgrade {
        accept: accept_key(key),
    })
}

/// RFC 6455 4.2.2: base64(SHA-1(key + GUID)).
pub fn accept_key(key: &[u8]) -> [u8; 28] {
    let mut sha = Sha1::new();
    sha.update(key);
    sha.update(WEBSOCKET_GUID.as_bytes());
    let mut out = [0u8; 28];
    let n = BASE64
        .encode_slice(sha.finalize(), &mut out)
        .expect("a 20-byte digest encodes to exactly 28 characters");
    debug_assert_eq!(n, 28);
    out
}

/// The 101 response that completes an upgrade.
pub fn write_switching_protocols(out: &mut Vec<u8>, upgrade: &Upgrade) {
    out.extend_from_slice(
        b"HTTP/1.1 101 Switching Protocols\r\n\
          Upgrade: websocket\r\n\
          Connection: Upgrade\r\n\
          Server: roomcast\r\n\
          Sec-WebSocket-Accept: ",
    );
    out.extend_from_slice(&upgrade.accept);
    out.extend_from_slice(b"\r\n\r\n");
}

/// A complete response that closes the connection after it.
pub fn write_response(
    out: &mut Vec<u8>,
    status: u16,
    content_type: &str,
    extra_headers: &[(&str, &str)],
    body: &[u8],
) {
    use std::io::Write as _;
    // Writing to a Vec cannot fail.
    let _ = write!(
        out,
        "HTTP/1.1 {status} {}\r\nServer: roomcast\r\nContent-Type: {content_type}\r\n\
         Content-Length: {}\r\nCache-Control: no-store\r\nConnection: close\r\n",
        status_text(status),
        body.len()
    );
    for (name, value) in extra_headers {
        let _ = write!(out, "{name}: {value}\r\n");
    }
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(body);
}

/// Cuts the body off the response written at `out[start..]`, keeping its
/// head and `Content-Length`: the answer to a HEAD request (RFC 9110 9.3.2:
/// the server MUST NOT send content in the response to HEAD).
pub fn strip_body(out: &mut Vec<u8>, start: usize) {
    if let Some(end) = out[start..].windows(4).position(|w| w == b"\r\n\r\n") {
        out.truncate(start + end + 4);
    }
}

/// The response to a refused request: the status and a one-line body.
pub fn write_error(out: &mut Vec<u8>, err: HttpError) {
    let extra: &[(&str, &str)] = match err {
        // RFC 6455 4.4: say which versions we speak.
        HttpError::UnsupportedVersion => &[("Sec-WebSocket-Version", "13")],
        HttpError::MethodNotAllowed => &[("Allow", "GET, HEAD")],
        _ => &[],
    };
    let body = format!("{}\n", err.reason());
    write_response(
        out,
        err.status(),
        "text/plain; charset=utf-8",
        extra,
        body.as_bytes(),
    );
}

fn status_text(status: u16) -> &'static str {
    match status {
        200 => "OK",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        426 => "Upgrade Required",
        429 => "Too Many Requests",
        431 => "Request Header Fields Too Large",
        503 => "Service Unavailable",
        505 => "HTTP Version Not Supported",
        _ => "Error",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = "GET /chat?x=1 HTTP/1.1\r\nHost: server.example.com\r\n\
        Upgrade: websocket\r\nConnection: keep-alive, Upgrade\r\n\
        Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n";

    fn upgrade_of(raw: &str) -> Result<Upgrade, HttpError> {
        let (req, _) = parse_request(raw.as_bytes())?.expect("complete head");
        check_upgrade(&req)
    }

    #[test]
    fn rfc_accept_key_example() {
        // RFC 6455 1.3.
        assert_eq!(
            &accept_key(b"dGhlIHNhbXBsZSBub25jZQ=="),
            b"s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
    }

    #[test]
    fn parses_a_browser_upgrade() {
        let (req, used) = parse_request(GOOD.as_bytes()).unwrap().unwrap();
        assert_eq!(used, GOOD.len());
        assert_eq!(
            (req.method, req.path, req.query),
            ("GET", "/chat", Some("x=1"))
        );
        assert!(req.has_token("connection", "upgrade"));
        assert_eq!(req.header("HOST"), Some(&b"server.example.com"[..]));
        assert!(upgrade_of(GOOD).is_ok());
    }

    #[test]
    fn every_prefix_is_partial() {
        for cut in 0..GOOD.len() {
            assert!(
                parse_request(&GOOD.as_bytes()[..cut]).unwrap().is_none(),
                "cut {cut}"
            );
        }
    }

    #[test]
    fn bytes_after_the_head_are_left() {
        let mut raw = GOOD.as_bytes().to_vec();
        raw.extend_from_slice(&[0x81, 0x80, 1, 2, 3, 4]);
        let (_, used) = parse_request(&raw).unwrap().unwrap();
        assert_eq!(used, GOOD.len());
    }

    #[test]
    fn bare_lf_lines_are_accepted() {
        let raw = GOOD.replace("\r\n", "\n");
        assert!(upgrade_of(&raw).is_ok());
    }

    #[test]
    fn refusals_have_the_right_status() {
        let cases: &[(&str, &str, u16)] = &[
            ("GET /chat", "POST /chat", 405),
            ("Sec-WebSocket-Version: 13", "Sec-WebSocket-Version: 8", 426),
            ("Sec-WebSocket-Version: 13\r\n", "", 400),
            ("Upgrade: websocket", "Upgrade: h2c", 400),
            ("keep-alive, Upgrade", "keep-alive", 400),
            ("dGhlIHNhbXBsZSBub25jZQ==", "dGhlIHNhbXBsZQ==", 400),
            ("dGhlIHNhbXBsZSBub25jZQ==", "not base64 at all!!!!!!!", 400),
            ("HTTP/1.1\r\nHost", "HTTP/1.0\r\nHost", 400),
            ("Host:", "Host :", 400),
            ("GET /chat", "GET chat", 400),
        ];
        for (from, to, status) in cases {
            let raw = GOOD.replacen(from, to, 1);
            let got = parse_request(raw.as_bytes()).and_then(|r| {
                let (req, _) = r.expect("complete");
                check_upgrade(&req)
            });
            assert_eq!(got.map_err(HttpError::status), Err(*status), "{to}");
        }
    }

    #[test]
    fn duplicate_keys_are_refused() {
        let raw = GOOD.replacen(
            "\r\n\r\n",
            "\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
            1,
        );
        assert_eq!(upgrade_of(&raw), Err(HttpError::MissingKey));
    }

    #[test]
    fn host_is_required_once() {
        let no_host = GOOD.replacen("Host: server.example.com\r\n", "", 1);
        assert_eq!(
            parse_request(no_host.as_bytes()).unwrap_err(),
            HttpError::BadHost
        );
        let two = GOOD.replacen("Host: server.example.com\r\n", "Host: a\r\nhost: b\r\n", 1);
        assert_eq!(
            parse_request(two.as_bytes()).unwrap_err(),
            HttpError::BadHost
        );
        assert!(parse_request(b"GET / HTTP/1.0\r\n\r\n").unwrap().is_some());
    }

    #[test]
    fn a_flood_of_blank_lines_is_431_not_a_panic() {
        let raw = vec![b'\n'; MAX_HEAD_BYTES + 800];
        assert_eq!(parse_request(&raw).unwrap_err(), HttpError::HeadTooLarge);
        assert_eq!(
            parse_request_more(&raw, 5).unwrap_err(),
            HttpError::HeadTooLarge
        );
    }

    #[test]
    fn resumed_parsing_agrees_with_parsing_whole() {
        let raw = GOOD.as_bytes();
        for step in [1, 2, 3, 7] {
            let mut seen = 0;
            let mut end = 0;
            let result = loop {
                end = (end + step).min(raw.len());
                match parse_request_more(&raw[..end], seen).unwrap() {
                    Some((req, used)) => break (req.path.to_owned(), used),
                    None => seen = end,
                }
            };
            assert_eq!(result, ("/chat".to_owned(), raw.len()), "step {step}");
        }
        assert_eq!(
            parse_request_more(b"\x16\x03", 1).unwrap_err(),
            HttpError::BadRequestLine
        );
    }

    #[test]
    fn leading_blank_lines_are_skipped() {
        let raw = format!("\r\n\r\n{GOOD}");
        let (req, used) = parse_request(raw.as_bytes()).unwrap().unwrap();
        assert_eq!((req.path, used), ("/chat", raw.len()));
    }

    #[test]
    fn versions() {
        let v12 = GOOD.replacen("HTTP/1.1", "HTTP/1.2", 1);
        assert_eq!(
            parse_request(v12.as_bytes())
                .unwrap()
                .unwrap()
                .0
                .minor_version,
            1
        );
        let v2 = GOOD.replacen("HTTP/1.1", "HTTP/2.0", 1);
        assert_eq!(parse_request(v2.as_bytes()).unwrap_err().status(), 505);
        let junk = GOOD.replacen("HTTP/1.1", "HTTX/1.1", 1);
        assert_eq!(
            parse_request(junk.as_bytes()).unwrap_err(),
            HttpError::BadRequestLine
        );
    }

    #[test]
    fn an_upgrade_with_a_body_is_refused() {
        for field in [
            "Content-Length: 10",
            "Transfer-Encoding: chunked",
            // Every field counts, not the first: a proxy may honour another.
            "Content-Length: 0\r\nContent-Length: 10",
        ] {
            let raw = GOOD.replacen("\r\n\r\n", &format!("\r\n{field}\r\n\r\n"), 1);
            assert_eq!(upgrade_of(&raw), Err(HttpError::UpgradeWithBody), "{field}");
        }
        let zero = GOOD.replacen("\r\n\r\n", "\r\nContent-Length: 0\r\n\r\n", 1);
        assert!(upgrade_of(&zero).is_ok());
    }

    #[test]
    fn a_repeated_single_field_is_refused_with_its_name() {
        for (field, value) in [
            ("Origin", "https://a.example"),
            ("Authorization", "Bearer x.y.z"),
            (
                "X-Cloud-Trace-Context",
                "105445aa7843bc8bf206b12000100000/1;o=1",
            ),
            ("Sec-WebSocket-Version", "13"),
        ] {
            let base = GOOD.replacen("Sec-WebSocket-Version: 13\r\n", "", 1);
            let add =
                |raw: &str, line: &str| raw.replacen("\r\n\r\n", &format!("\r\n{line}\r\n\r\n"), 1);
            let mut once = add(&base, &format!("{field}: {value}"));
            if field != "Sec-WebSocket-Version" {
                once = add(&once, "Sec-WebSocket-Version: 13");
            }
            assert!(upgrade_of(&once).is_ok(), "{field} once");
            // The same value again, or another in another case: either
            // way it is the same field twice.
            let same = add(&once, &format!("{field}: {value}"));
            assert_eq!(
                upgrade_of(&same).map_err(HttpError::reason),
                upgrade_of(&add(
                    &once,
                    &format!("{}: {value}x", field.to_ascii_lowercase())
                ))
                .map_err(HttpError::reason),
                "{field}"
            );
            let twice = same;
            let err = upgrade_of(&twice).unwrap_err();
            assert_eq!(err.status(), 400, "{field}");
            assert!(err.reason().contains(field), "{field}: {}", err.reason());
        }
    }

    fn plain(extra: &str) -> Result<(), HttpError> {
        plain_with("GET", extra)
    }

    fn plain_with(method: &str, extra: &str) -> Result<(), HttpError> {
        let raw = format!("{method} /metrics HTTP/1.1\r\nHost: x\r\n{extra}\r\n");
        let (req, _) = parse_request(raw.as_bytes()).unwrap().unwrap();
        check_plain_body(&req)
    }

    #[test]
    fn plain_requests_frame_no_body() {
        assert_eq!(plain(""), Ok(()));
        assert_eq!(plain("Content-Length: 0\r\n"), Ok(()));
        assert_eq!(plain("Content-Length: 0\r\ncontent-length: 0\r\n"), Ok(()));
        assert_eq!(plain("Content-Length: 0, 0\r\n"), Ok(()));
        for bad in [
            "Content-Length: abc\r\n",
            "Content-Length: -1\r\n",
            "Content-Length: +5\r\n",
            "Content-Length:\r\n",
            "Content-Length: 0x10\r\n",
            "Content-Length: 99999999999999999999999\r\n",
            "Content-Length: 0\r\nContent-Length: 5\r\n",
            "Content-Length: 0, 5\r\n",
            "Content-Length: 0,\r\n",
        ] {
            assert_eq!(plain(bad), Err(HttpError::BadContentLength), "{bad}");
        }
        for te in [
            "Transfer-Encoding: chunked\r\n",
            "Transfer-Encoding: identity\r\n",
            "Content-Length: 0\r\nTransfer-Encoding: chunked\r\n",
        ] {
            assert_eq!(plain(te), Err(HttpError::TransferEncoding), "{te}");
        }
        assert_eq!(
            plain("Content-Length: 5\r\n"),
            Err(HttpError::UnexpectedBody)
        );
        assert_eq!(
            plain_with("HEAD", "Content-Length: 5\r\n"),
            Err(HttpError::UnexpectedBody)
        );
        // Another method with a body is left to routing, which answers 405.
        assert_eq!(plain_with("POST", "Content-Length: 5\r\n"), Ok(()));
        assert_eq!(
            plain_with("POST", "Content-Length: x\r\n"),
            Err(HttpError::BadContentLength)
        );
    }

    #[test]
    fn content_length_agrees_with_itself_or_is_refused() {
        let length = |extra: &str| {
            let raw = format!("GET / HTTP/1.1\r\nHost: x\r\n{extra}\r\n");
            let (req, _) = parse_request(raw.as_bytes()).unwrap().unwrap();
            content_length(&req)
        };
        assert_eq!(length(""), Ok(None));
        assert_eq!(length("Content-Length: 007\r\n"), Ok(Some(7)));
        assert_eq!(length("Content-Length: 7 ,\t7\r\n"), Ok(Some(7)));
        // Only spaces and tabs surround a list element.
        assert_eq!(
            length("Content-Length: 7,\x0c7\r\n"),
            Err(HttpError::BadContentLength)
        );
        assert_eq!(
            length("Content-Length: 7\r\nContent-Length: 07\r\n"),
            Ok(Some(7))
        );
        assert_eq!(
            length("Content-Length: 18446744073709551615\r\n"),
            Ok(Some(u64::MAX))
        );
        assert_eq!(
            length("Content-Length: 18446744073709551616\r\n"),
            Err(HttpError::BadContentLength)
        );
    }

    #[test]
    fn folded_header_is_refused() {
        let raw = GOOD.replacen("Host: server.example.com\r\n", "Host: a\r\n b\r\n", 1);
        assert_eq!(upgrade_of(&raw), Err(HttpError::BadHeader));
    }

    #[test]
    fn oversized_head_is_431_even_unfinished() {
        let mut raw = b"GET / HTTP/1.1\r\nX-Big: ".to_vec();
        raw.resize(MAX_HEAD_BYTES + 10, b'a');
        assert_eq!(parse_request(&raw).unwrap_err(), HttpError::HeadTooLarge);
        let many: String = (0..=MAX_HEADERS).map(|i| format!("X-{i}: v\r\n")).collect();
        let raw = format!("GET / HTTP/1.1\r\n{many}\r\n");
        assert_eq!(
            parse_request(raw.as_bytes()).unwrap_err(),
            HttpError::HeadTooLarge
        );
    }

    #[test]
    fn garbage_is_refused_before_the_head_ends() {
        assert_eq!(
            parse_request(b"\x16\x03\x01\x02").unwrap_err(),
            HttpError::BadRequestLine
        );
        assert_eq!(
            parse_request(b" GET").unwrap_err(),
            HttpError::BadRequestLine
        );
        assert!(parse_request(b"GE").unwrap().is_none());
    }

    #[test]
    fn absolute_form_targets_are_cut_to_the_path() {
        let raw = GOOD.replacen("/chat?x=1", "http://example.com/room", 1);
        let (req, _) = parse_request(raw.as_bytes()).unwrap().unwrap();
        assert_eq!(req.path, "/room");
    }

    #[test]
    fn error_responses_say_why() {
        let mut out = Vec::new();
        write_error(&mut out, HttpError::UnsupportedVersion);
        let text = String::from_utf8(out).unwrap();
        assert!(text.starts_with("HTTP/1.1 426 Upgrade Required\r\n"));
        assert!(text.contains("\r\nSec-WebSocket-Version: 13\r\n"));
        assert!(text.ends_with("\r\n\r\nonly Sec-WebSocket-Version 13 is supported\n"));
    }
}
