//! Shared helpers: spawn the real `roomcast` binary on a free port and talk to it through
//! tungstenite clients, hand-built raw WebSocket frames and raw HTTP over `TcpStream`.
//!
//! Every wait here takes a timeout, so a broken server makes a test fail, never hang.

// Each test binary uses a different subset of these helpers.
#![allow(dead_code)]

use std::io::{self, BufRead, BufReader, ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
pub use serde_json::{json, Value};
use sha1::{Digest, Sha1};
use tungstenite::{Message, WebSocket};

/// How long one step that should happen "at once" may take. Generous so a loaded CI machine
/// does not flake, short so a broken server fails fast.
pub const STEP: Duration = Duration::from_secs(3);

/// Environment variables the server reads; cleared so the caller's environment cannot leak in.
const SERVER_ENV: &[&str] = &[
    "HOST",
    "PORT",
    "K_REVISION",
    "MAX_MESSAGE_SIZE",
    "ECHO_MAX_MESSAGE_SIZE",
    "MAX_QUEUED_BYTES",
    "PING_INTERVAL",
    "HANDSHAKE_TIMEOUT",
    "CLOSE_TIMEOUT",
    "DRAIN_TIMEOUT",
    "LOG_LEVEL",
    "MAX_CONNECTIONS",
    "MAX_CONNECTIONS_PER_IP",
    "TRUST_PROXY",
    "MAX_ROOMS",
    "MAX_ROOM_MEMBERS",
    "RATE_LIMIT",
    "RATE_BURST",
    "RATE_LIMIT_CLOSE_AFTER",
    "AUTH_SECRET",
    "ALLOWED_ORIGINS",
    "REQUIRE_ORIGIN",
    "MAX_CONNECTION_AGE",
    "K_SERVICE",
    "K_CONFIGURATION",
    "GOOGLE_CLOUD_PROJECT",
    "REDIS_URL",
    "PRESENCE_EXPIRY",
];

/// Settings every test server starts with, before the test's own: tests send as fast as they
/// can and all connect from 127.0.0.1, so the message rate limit and the per-address limit are
/// lifted (the tests of those limits set them with flags, which take precedence).
const TEST_ENV: &[(&str, &str)] = &[
    ("RATE_LIMIT", "1000000"),
    ("RATE_BURST", "1000000"),
    ("MAX_CONNECTIONS_PER_IP", "1000000"),
];

pub const BIN: &str = env!("CARGO_BIN_EXE_roomcast");

// ---------------------------------------------------------------------------------------------
// Server process
// ---------------------------------------------------------------------------------------------

/// A running server. Killed (and reaped) on drop.
pub struct Server {
    child: Child,
    pub addr: SocketAddr,
    stdout: Arc<Mutex<Vec<String>>>,
    stderr: Arc<Mutex<Vec<String>>>,
}

pub struct ServerBuilder {
    args: Vec<String>,
    envs: Vec<(String, String)>,
    listen_flags: bool,
}

/// Starts a server on 127.0.0.1 with a free port and the given extra flags.
pub fn start(args: &[&str]) -> Server {
    ServerBuilder::new().args(args).spawn()
}

impl Default for ServerBuilder {
    fn default() -> Self {
        Self::new()
    }
}

impl ServerBuilder {
    pub fn new() -> Self {
        ServerBuilder {
            args: Vec::new(),
            envs: Vec::new(),
            listen_flags: true,
        }
    }

    pub fn args(mut self, args: &[&str]) -> Self {
        self.args.extend(args.iter().map(|a| a.to_string()));
        self
    }

    pub fn env(mut self, key: &str, value: &str) -> Self {
        self.envs.push((key.to_owned(), value.to_owned()));
        self
    }

    /// Take host and port from HOST/PORT instead of `--host`/`--port`.
    pub fn listen_from_env(mut self) -> Self {
        self.listen_flags = false;
        self.env("HOST", "127.0.0.1").env("PORT", "0")
    }

    pub fn spawn(self) -> Server {
        let mut cmd = Command::new(BIN);
        for var in SERVER_ENV {
            cmd.env_remove(var);
        }
        cmd.envs(TEST_ENV.iter().copied());
        if self.listen_flags {
            cmd.args(["--host", "127.0.0.1", "--port", "0"]);
        }
        cmd.args(&self.args)
            .envs(self.envs.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("spawn roomcast");

        let (tx, rx) = mpsc::channel();
        let stdout = collect_lines(child.stdout.take().unwrap(), Some(tx));
        let stderr = collect_lines(child.stderr.take().unwrap(), None);

        // The server picks its port; it tells us in the "listening" log line.
        let deadline = Instant::now() + Duration::from_secs(15);
        let addr = loop {
            match rx.recv_timeout(left(deadline)) {
                Ok(line) => {
                    if let Some(addr) = listening_address(&line) {
                        break addr;
                    }
                }
                Err(e) => {
                    let _ = child.kill();
                    let status = child.wait();
                    thread::sleep(Duration::from_millis(100)); // let the readers catch up
                    panic!(
                        "server never logged \"listening\" ({e:?}, exit {status:?})\n\
                         stdout: {:?}\nstderr: {:?}",
                        stdout.lock().unwrap(),
                        stderr.lock().unwrap()
                    );
                }
            }
        };
        Server {
            child,
            addr,
            stdout,
            stderr,
        }
    }
}

/// Drains a pipe line by line in the background (a full pipe would block the server), keeping
/// every line and optionally forwarding it.
fn collect_lines<R: Read + Send + 'static>(
    pipe: R,
    forward: Option<mpsc::Sender<String>>,
) -> Arc<Mutex<Vec<String>>> {
    let lines = Arc::new(Mutex::new(Vec::new()));
    let store = Arc::clone(&lines);
    thread::spawn(move || {
        for line in BufReader::new(pipe).lines() {
            let Ok(line) = line else { break };
            store.lock().unwrap().push(line.clone());
            if let Some(tx) = &forward {
                let _ = tx.send(line);
            }
        }
    });
    lines
}

fn listening_address(line: &str) -> Option<SocketAddr> {
    let v: Value = serde_json::from_str(line).ok()?;
    if v["message"] != "listening" {
        return None;
    }
    v["address"].as_str()?.parse().ok()
}

impl Server {
    pub fn url(&self, path: &str) -> String {
        format!("ws://{}{}", self.addr, path)
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    pub fn signal(&self, sig: libc::c_int) {
        // SAFETY: kill(2) on our own child's pid has no memory-safety preconditions.
        let rc = unsafe { libc::kill(self.pid(), sig) };
        assert_eq!(rc, 0, "kill({}, {sig}) failed", self.pid());
    }

    /// Waits for the process to exit; `None` if it is still running after `timeout`.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            thread::sleep(Duration::from_millis(10));
        }
    }

    pub fn stdout_lines(&self) -> Vec<String> {
        self.stdout.lock().unwrap().clone()
    }

    pub fn stderr_lines(&self) -> Vec<String> {
        self.stderr.lock().unwrap().clone()
    }

    /// Waits for a JSON log line for which `pred` holds and returns it.
    pub fn wait_log(&self, timeout: Duration, pred: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + timeout;
        loop {
            let found = self
                .stdout_lines()
                .iter()
                .filter_map(|l| serde_json::from_str::<Value>(l).ok())
                .find(|v| pred(v));
            if let Some(v) = found {
                return v;
            }
            assert!(
                Instant::now() < deadline,
                "no such log line within {timeout:?}; stdout: {:#?}",
                self.stdout_lines()
            );
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// `GET /`, asserting a 200 JSON answer; returns the parsed body.
    pub fn health(&self) -> Value {
        let resp = http_get(self.addr, "/");
        assert_eq!(
            resp.status,
            200,
            "GET / status; body {:?}",
            resp.body_text()
        );
        serde_json::from_slice(&resp.body)
            .unwrap_or_else(|e| panic!("GET / body is not JSON ({e}): {:?}", resp.body_text()))
    }

    /// Polls `GET /` until `field` equals `want`; panics with the last body after `timeout`.
    pub fn wait_health(&self, field: &str, want: Value, timeout: Duration) -> Value {
        let deadline = Instant::now() + timeout;
        loop {
            let h = self.health();
            if h[field] == want {
                return h;
            }
            assert!(
                Instant::now() < deadline,
                "health {field} never became {want}; last: {h}"
            );
            thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs the binary to completion with `args` (no default flags), killing it after `timeout`.
/// Returns (exit status or None if it had to be killed, stdout, stderr).
pub fn run_binary(args: &[&str], timeout: Duration) -> (Option<ExitStatus>, String, String) {
    let mut cmd = Command::new(BIN);
    for var in SERVER_ENV {
        cmd.env_remove(var);
    }
    let mut child = cmd
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn roomcast");
    let out = collect_lines(child.stdout.take().unwrap(), None);
    let err = collect_lines(child.stderr.take().unwrap(), None);
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(s) = child.try_wait().expect("try_wait") {
            break Some(s);
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        thread::sleep(Duration::from_millis(10));
    };
    thread::sleep(Duration::from_millis(100)); // the readers see EOF right after exit
    let join = |l: &Arc<Mutex<Vec<String>>>| l.lock().unwrap().join("\n");
    (status, join(&out), join(&err))
}

// ---------------------------------------------------------------------------------------------
// Time
// ---------------------------------------------------------------------------------------------

pub fn left(deadline: Instant) -> Duration {
    deadline.saturating_duration_since(Instant::now())
}

pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// Parses exactly `YYYY-MM-DDTHH:MM:SS.mmmZ` into milliseconds since the epoch.
pub fn parse_timestamp(s: &str) -> Option<i64> {
    let b = s.as_bytes();
    if b.len() != 24 {
        return None;
    }
    for (i, &c) in b.iter().enumerate() {
        let want = match i {
            4 | 7 => b'-',
            10 => b'T',
            13 | 16 => b':',
            19 => b'.',
            23 => b'Z',
            _ => 0,
        };
        let ok = if want == 0 {
            c.is_ascii_digit()
        } else {
            c == want
        };
        if !ok {
            return None;
        }
    }
    let n = |r: std::ops::Range<usize>| s[r].parse::<i64>().unwrap();
    let (mo, d, h, mi, se) = (n(5..7), n(8..10), n(11..13), n(14..16), n(17..19));
    if !(1..=12).contains(&mo) || !(1..=31).contains(&d) || h > 23 || mi > 59 || se > 60 {
        return None;
    }
    let days = days_from_civil(n(0..4), mo, d);
    Some(((days * 24 + h) * 60 + mi) * 60_000 + se * 1000 + n(20..23))
}

/// A timestamp must have the exact shape and be within a few seconds of now.
pub fn assert_timestamp(v: &Value) {
    let s = v
        .as_str()
        .unwrap_or_else(|| panic!("timestamp is not a string: {v}"));
    let ms = parse_timestamp(s).unwrap_or_else(|| panic!("bad timestamp shape: {s:?}"));
    let skew = (ms - now_ms()).abs();
    assert!(skew < 5_000, "timestamp {s:?} is {skew} ms away from now");
}

// ---------------------------------------------------------------------------------------------
// JSON
// ---------------------------------------------------------------------------------------------

pub fn sorted_keys(v: &Value) -> Vec<String> {
    let obj = v
        .as_object()
        .unwrap_or_else(|| panic!("not an object: {v}"));
    let mut keys: Vec<String> = obj.keys().cloned().collect();
    keys.sort();
    keys
}

pub fn assert_keys(v: &Value, expected: &[&str]) {
    let mut want: Vec<String> = expected.iter().map(|k| k.to_string()).collect();
    want.sort();
    assert_eq!(sorted_keys(v), want, "keys of {v}");
}

/// `client-<ms since epoch>-<random alphanumerics>`, the ms close to now.
pub fn assert_client_id(id: &str) {
    let rest = id
        .strip_prefix("client-")
        .unwrap_or_else(|| panic!("clientId {id:?}"));
    let (ms, random) = rest
        .split_once('-')
        .unwrap_or_else(|| panic!("clientId {id:?}"));
    let ms: i64 = ms
        .parse()
        .unwrap_or_else(|_| panic!("clientId {id:?}: ms part"));
    assert!(
        (ms - now_ms()).abs() < 10_000,
        "clientId {id:?}: ms part is not now"
    );
    assert!(
        !random.is_empty() && random.bytes().all(|c| c.is_ascii_alphanumeric()),
        "clientId {id:?}: random part"
    );
}

// ---------------------------------------------------------------------------------------------
// tungstenite client
// ---------------------------------------------------------------------------------------------

pub fn tcp_connect(addr: SocketAddr) -> TcpStream {
    let stream = TcpStream::connect_timeout(&addr, STEP).expect("connect");
    stream.set_nodelay(true).unwrap();
    stream.set_read_timeout(Some(STEP)).unwrap();
    // A server that stops reading must fail the test, not block it forever.
    stream
        .set_write_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    stream
}

pub fn ws_connect(addr: SocketAddr, path: &str) -> WebSocket<TcpStream> {
    let url = format!("ws://{addr}{path}");
    let (ws, resp) = tungstenite::client(url.as_str(), tcp_connect(addr))
        .unwrap_or_else(|e| panic!("WebSocket handshake to {url} failed: {e}"));
    assert_eq!(resp.status().as_u16(), 101);
    ws
}

/// What one read produced.
#[derive(Debug)]
pub enum Got {
    Msg(Message),
    TimedOut,
    Failed(tungstenite::Error),
}

/// A tungstenite client. For chat paths, `id` is the clientId from the greeting.
pub struct Client {
    pub ws: WebSocket<TcpStream>,
    pub id: String,
}

impl Client {
    /// Connects to the chat protocol at `/` and consumes the `connected` greeting.
    pub fn chat(server: &Server) -> Client {
        Self::chat_at(server, "/")
    }

    pub fn chat_at(server: &Server, path: &str) -> Client {
        let mut c = Client {
            ws: ws_connect(server.addr, path),
            id: String::new(),
        };
        let hello = c.recv_json(STEP);
        assert_eq!(hello["type"], "connected", "greeting: {hello}");
        c.id = hello["clientId"].as_str().expect("clientId").to_owned();
        c
    }

    /// Connects without expecting a greeting (e.g. `/echo`).
    pub fn plain(server: &Server, path: &str) -> Client {
        Client {
            ws: ws_connect(server.addr, path),
            id: String::new(),
        }
    }

    pub fn send(&mut self, msg: Message) {
        self.ws.send(msg).expect("send");
    }

    pub fn send_text(&mut self, text: &str) {
        self.send(Message::text(text));
    }

    pub fn send_json(&mut self, v: &Value) {
        self.send_text(&v.to_string());
    }

    /// One read, of any message kind, waiting at most until `deadline`.
    pub fn read_by(&mut self, deadline: Instant) -> Got {
        let wait = left(deadline).max(Duration::from_millis(1));
        self.ws.get_ref().set_read_timeout(Some(wait)).unwrap();
        match self.ws.read() {
            Ok(m) => Got::Msg(m),
            Err(tungstenite::Error::Io(e))
                if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) =>
            {
                Got::TimedOut
            }
            Err(e) => Got::Failed(e),
        }
    }

    /// The next text or binary message, skipping pings and pongs.
    pub fn recv_data(&mut self, timeout: Duration) -> Message {
        let deadline = Instant::now() + timeout;
        loop {
            match self.read_by(deadline) {
                Got::Msg(Message::Ping(_) | Message::Pong(_)) => continue,
                Got::Msg(m @ (Message::Text(_) | Message::Binary(_))) => return m,
                other => panic!("expected a data message, got {other:?}"),
            }
        }
    }

    /// The next message, which must be a JSON text frame.
    pub fn recv_json(&mut self, timeout: Duration) -> Value {
        match self.recv_data(timeout) {
            Message::Text(t) => serde_json::from_str(t.as_str())
                .unwrap_or_else(|e| panic!("server sent invalid JSON ({e}): {:?}", t.as_str())),
            other => panic!("expected a JSON text frame, got {other:?}"),
        }
    }

    /// Waits for a close frame (pings skipped, data is an error) and returns its code.
    pub fn expect_close(&mut self, timeout: Duration) -> u16 {
        let deadline = Instant::now() + timeout;
        loop {
            match self.read_by(deadline) {
                Got::Msg(Message::Ping(_) | Message::Pong(_)) => continue,
                Got::Msg(Message::Close(Some(f))) => return f.code.into(),
                other => panic!("expected a close frame, got {other:?}"),
            }
        }
    }

    /// During a closing handshake: keep reading (so tungstenite sends its close reply),
    /// skipping control frames, and require the server to then close the TCP connection.
    pub fn expect_closed(&mut self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            match self.read_by(deadline) {
                Got::Msg(Message::Close(_) | Message::Ping(_) | Message::Pong(_)) => continue,
                Got::Failed(tungstenite::Error::ConnectionClosed) => return,
                other => panic!("expected the server to close TCP, got {other:?}"),
            }
        }
    }

    /// Sends a join and returns the `joined` reply.
    pub fn join(&mut self, room: &str) -> Value {
        self.send_json(&json!({"type": "join", "roomId": room}));
        let reply = self.recv_json(STEP);
        assert_eq!(reply["type"], "joined", "reply to join {room:?}: {reply}");
        reply
    }
}

// ---------------------------------------------------------------------------------------------
// Raw HTTP
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Default)]
pub struct HttpResponse {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl HttpResponse {
    /// The first header of that name (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn body_text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// How a read loop ended.
#[derive(Debug, PartialEq, Eq)]
pub enum End {
    Eof,
    Reset,
    TimedOut,
}

/// Reads more bytes into `buf`. `Ok(n)` with n > 0, or how the stream ended.
pub fn read_more(stream: &mut TcpStream, buf: &mut Vec<u8>, deadline: Instant) -> Result<(), End> {
    let wait = left(deadline);
    if wait.is_zero() {
        return Err(End::TimedOut);
    }
    stream.set_read_timeout(Some(wait)).unwrap();
    let mut chunk = [0u8; 16 * 1024];
    match stream.read(&mut chunk) {
        Ok(0) => Err(End::Eof),
        Ok(n) => {
            buf.extend_from_slice(&chunk[..n]);
            Ok(())
        }
        Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
            Err(End::TimedOut)
        }
        Err(e) if e.kind() == ErrorKind::Interrupted => Ok(()),
        Err(_) => Err(End::Reset),
    }
}

/// Reads until the peer closes, appending to `buf`.
pub fn read_until_closed(stream: &mut TcpStream, buf: &mut Vec<u8>, timeout: Duration) -> End {
    let deadline = Instant::now() + timeout;
    loop {
        if let Err(end) = read_more(stream, buf, deadline) {
            return end;
        }
    }
}

fn find_head_end(buf: &[u8]) -> Option<usize> {
    buf.windows(4).position(|w| w == b"\r\n\r\n").map(|p| p + 4)
}

fn parse_head(head: &[u8]) -> HttpResponse {
    let text = std::str::from_utf8(head).expect("response head is not UTF-8");
    let mut lines = text.split("\r\n");
    let status_line = lines.next().unwrap();
    let mut parts = status_line.splitn(3, ' ');
    let version = parts.next().unwrap();
    assert_eq!(version, "HTTP/1.1", "status line {status_line:?}");
    let status = parts.next().and_then(|s| s.parse().ok());
    let status = status.unwrap_or_else(|| panic!("status line {status_line:?}"));
    let headers = lines
        .filter(|l| !l.is_empty())
        .map(|l| {
            let (k, v) = l
                .split_once(':')
                .unwrap_or_else(|| panic!("header line {l:?}"));
            (k.to_owned(), v.trim().to_owned())
        })
        .collect();
    HttpResponse {
        status,
        headers,
        body: Vec::new(),
    }
}

/// Reads one response head; bytes after it stay in `buf`.
pub fn read_response_head(stream: &mut TcpStream, buf: &mut Vec<u8>) -> HttpResponse {
    let deadline = Instant::now() + STEP;
    loop {
        if let Some(end) = find_head_end(buf) {
            let resp = parse_head(&buf[..end]);
            buf.drain(..end);
            return resp;
        }
        if let Err(end) = read_more(stream, buf, deadline) {
            panic!(
                "no complete response head ({end:?}); got {:?}",
                String::from_utf8_lossy(buf)
            );
        }
    }
}

/// A whole response and whether the server closed the connection after it.
#[derive(Debug)]
pub struct Exchange {
    pub resp: HttpResponse,
    pub closed: bool,
}

/// Sends `request` as is and reads the response: the body by Content-Length, else up to EOF.
pub fn http_exchange(addr: SocketAddr, request: &[u8]) -> Exchange {
    let mut stream = tcp_connect(addr);
    // The server may answer and close before reading all of a bad request; a failed write
    // is fine as long as the answer arrives.
    let _ = stream.write_all(request);
    let mut buf = Vec::new();
    let mut resp = read_response_head(&mut stream, &mut buf);
    let closed = match resp.header("content-length") {
        Some(len) => {
            let len: usize = len.parse().expect("Content-Length");
            let deadline = Instant::now() + STEP;
            while buf.len() < len {
                if let Err(end) = read_more(&mut stream, &mut buf, deadline) {
                    panic!(
                        "body ended early ({end:?}) after {:?}",
                        String::from_utf8_lossy(&buf)
                    );
                }
            }
            resp.body = buf.drain(..len).collect();
            let end = read_until_closed(&mut stream, &mut buf, STEP);
            assert!(
                buf.is_empty(),
                "bytes after the body: {:?}",
                String::from_utf8_lossy(&buf)
            );
            end != End::TimedOut
        }
        None => {
            let end = read_until_closed(&mut stream, &mut buf, STEP);
            resp.body = buf;
            end != End::TimedOut
        }
    };
    Exchange { resp, closed }
}

pub fn http_get(addr: SocketAddr, path: &str) -> HttpResponse {
    let req = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    http_exchange(addr, req.as_bytes()).resp
}

// ---------------------------------------------------------------------------------------------
// Raw WebSocket
// ---------------------------------------------------------------------------------------------

pub const OP_CONT: u8 = 0x0;
pub const OP_TEXT: u8 = 0x1;
pub const OP_BINARY: u8 = 0x2;
pub const OP_CLOSE: u8 = 0x8;
pub const OP_PING: u8 = 0x9;
pub const OP_PONG: u8 = 0xA;

pub const FIN: u8 = 0x80;
const MASK_KEY: [u8; 4] = [0x37, 0xfa, 0x21, 0x3d];

/// 16 bytes that differ per call, base64-encoded: a fresh `Sec-WebSocket-Key`.
pub fn new_key() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let t = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64;
    let mut bytes = [0u8; 16];
    bytes[..8].copy_from_slice(&t.to_le_bytes());
    bytes[8..].copy_from_slice(&(n ^ 0x9e37_79b9_7f4a_7c15).to_le_bytes());
    BASE64.encode(bytes)
}

/// RFC 6455 4.2.2: base64(SHA-1(key + GUID)).
pub fn accept_for(key: &str) -> String {
    let mut h = Sha1::new();
    h.update(key.as_bytes());
    h.update(b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11");
    BASE64.encode(h.finalize())
}

pub fn upgrade_request(path: &str, key: &str) -> String {
    format!(
        "GET {path} HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\n\
         Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
}

/// Asserts a 101 answer to a handshake made with `key`.
pub fn assert_switching(resp: &HttpResponse, key: &str) {
    assert_eq!(resp.status, 101, "handshake answer: {resp:?}");
    let upgrade = resp.header("upgrade").unwrap_or_default();
    assert!(
        upgrade.eq_ignore_ascii_case("websocket"),
        "Upgrade: {upgrade:?}"
    );
    let connection = resp.header("connection").unwrap_or_default();
    assert!(
        connection
            .split(',')
            .any(|t| t.trim().eq_ignore_ascii_case("upgrade")),
        "Connection: {connection:?}"
    );
    assert_eq!(
        resp.header("sec-websocket-accept"),
        Some(accept_for(key).as_str())
    );
}

/// A client frame: `first` is FIN | RSV | opcode; masked with a fixed key when `mask`.
pub fn encode_frame(first: u8, payload: &[u8], mask: bool) -> Vec<u8> {
    let mut out = frame_header(first, payload.len() as u64, mask);
    out.extend(
        payload
            .iter()
            .enumerate()
            .map(|(i, b)| if mask { b ^ MASK_KEY[i % 4] } else { *b }),
    );
    out
}

/// Only the header of a client frame declaring `len` payload bytes.
pub fn frame_header(first: u8, len: u64, mask: bool) -> Vec<u8> {
    let mask_bit = if mask { 0x80 } else { 0 };
    let mut out = vec![first];
    if len < 126 {
        out.push(mask_bit | len as u8);
    } else if len <= 0xffff {
        out.push(mask_bit | 126);
        out.extend_from_slice(&(len as u16).to_be_bytes());
    } else {
        out.push(mask_bit | 127);
        out.extend_from_slice(&len.to_be_bytes());
    }
    if mask {
        out.extend_from_slice(&MASK_KEY);
    }
    out
}

/// A masked, final client frame.
pub fn masked(opcode: u8, payload: &[u8]) -> Vec<u8> {
    encode_frame(FIN | opcode, payload, true)
}

pub fn close_payload(code: u16, reason: &str) -> Vec<u8> {
    let mut p = code.to_be_bytes().to_vec();
    p.extend_from_slice(reason.as_bytes());
    p
}

/// A frame received from the server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    pub fin: bool,
    pub rsv: u8,
    pub opcode: u8,
    pub payload: Vec<u8>,
}

impl Frame {
    pub fn close_code(&self) -> u16 {
        assert_eq!(self.opcode, OP_CLOSE, "not a close frame: {self:?}");
        assert!(
            self.payload.len() >= 2,
            "close frame without a code: {self:?}"
        );
        u16::from_be_bytes([self.payload[0], self.payload[1]])
    }

    pub fn json(&self) -> Value {
        assert_eq!(self.opcode, OP_TEXT, "not a text frame: {self:?}");
        serde_json::from_slice(&self.payload).expect("server sent invalid JSON")
    }
}

/// Takes one complete server frame off the front of `buf`, if there is one.
fn take_frame(buf: &mut Vec<u8>) -> Option<Frame> {
    if buf.len() < 2 {
        return None;
    }
    assert_eq!(buf[1] & 0x80, 0, "server frames must not be masked");
    let (len, mut at) = match buf[1] & 0x7f {
        126 if buf.len() >= 4 => (u16::from_be_bytes([buf[2], buf[3]]) as usize, 4),
        127 if buf.len() >= 10 => (
            u64::from_be_bytes(buf[2..10].try_into().unwrap()) as usize,
            10,
        ),
        126 | 127 => return None,
        n => (n as usize, 2),
    };
    if buf.len() < at + len {
        return None;
    }
    let frame = Frame {
        fin: buf[0] & 0x80 != 0,
        rsv: (buf[0] >> 4) & 0x7,
        opcode: buf[0] & 0x0f,
        payload: buf[at..at + len].to_vec(),
    };
    at += len;
    buf.drain(..at);
    Some(frame)
}

/// A WebSocket spoken by hand over TCP, for frame-level tests.
pub struct RawWs {
    pub stream: TcpStream,
    buf: Vec<u8>,
}

impl RawWs {
    /// Handshakes on `path`, sending `first_bytes` in the same write as the request.
    pub fn connect_with(addr: SocketAddr, path: &str, first_bytes: &[u8]) -> RawWs {
        let mut stream = tcp_connect(addr);
        let key = new_key();
        let mut req = upgrade_request(path, &key).into_bytes();
        req.extend_from_slice(first_bytes);
        stream.write_all(&req).expect("write handshake");
        let mut buf = Vec::new();
        let resp = read_response_head(&mut stream, &mut buf);
        assert_switching(&resp, &key);
        RawWs { stream, buf }
    }

    pub fn connect(addr: SocketAddr, path: &str) -> RawWs {
        Self::connect_with(addr, path, &[])
    }

    /// Wraps a stream whose handshake was done by the caller; `buf` holds bytes read past it.
    pub fn from_parts(stream: TcpStream, buf: Vec<u8>) -> RawWs {
        RawWs { stream, buf }
    }

    /// Connects to a chat path and consumes the `connected` greeting.
    pub fn chat(addr: SocketAddr) -> RawWs {
        let mut ws = Self::connect(addr, "/");
        let hello = ws.expect_frame(STEP).json();
        assert_eq!(hello["type"], "connected", "greeting {hello}");
        ws
    }

    pub fn send_raw(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).expect("write");
    }

    /// Sends one masked, final frame.
    pub fn send(&mut self, opcode: u8, payload: &[u8]) {
        self.send_raw(&masked(opcode, payload));
    }

    pub fn read_frame(&mut self, timeout: Duration) -> Result<Frame, End> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(frame) = take_frame(&mut self.buf) {
                return Ok(frame);
            }
            read_more(&mut self.stream, &mut self.buf, deadline)?;
        }
    }

    pub fn expect_frame(&mut self, timeout: Duration) -> Frame {
        self.read_frame(timeout)
            .unwrap_or_else(|end| panic!("expected a frame, got {end:?}"))
    }

    /// The next frame must be a close; returns its code.
    pub fn expect_close(&mut self, timeout: Duration) -> u16 {
        let f = self.expect_frame(timeout);
        assert_eq!(f.opcode, OP_CLOSE, "expected a close frame, got {f:?}");
        f.close_code()
    }

    /// The server must close the TCP connection within `timeout`, sending nothing more.
    pub fn expect_eof(&mut self, timeout: Duration) {
        let mut rest = std::mem::take(&mut self.buf);
        let end = read_until_closed(&mut self.stream, &mut rest, timeout);
        assert!(rest.is_empty(), "bytes before EOF: {rest:?}");
        assert_ne!(end, End::TimedOut, "server kept the TCP connection open");
    }

    /// Asserts that nothing arrives and the connection stays open for `dur`.
    pub fn expect_quiet_open(&mut self, dur: Duration) {
        let got = self.read_frame(dur);
        assert_eq!(
            got,
            Err(End::TimedOut),
            "expected an open, quiet connection"
        );
    }
}

/// Writes `bytes` a few at a time with pauses so the server sees many small TCP segments.
pub fn trickle(stream: &mut TcpStream, bytes: &[u8]) -> io::Result<()> {
    let mut sizes = [1usize, 3, 2].iter().cycle();
    let mut rest = bytes;
    while !rest.is_empty() {
        let n = (*sizes.next().unwrap()).min(rest.len());
        stream.write_all(&rest[..n])?;
        stream.flush()?;
        rest = &rest[n..];
        thread::sleep(Duration::from_millis(2));
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Upgrades with extra header fields, and /metrics
// ---------------------------------------------------------------------------------------------

/// An upgrade request for `path` with `extra` header fields.
pub fn upgrade_request_with(path: &str, key: &str, extra: &[(&str, &str)]) -> String {
    let mut req = upgrade_request(path, key);
    req.truncate(req.len() - 2);
    for (name, value) in extra {
        req.push_str(&format!("{name}: {value}\r\n"));
    }
    req.push_str("\r\n");
    req
}

/// Sends an upgrade with `extra` fields. On 101 returns the open connection; otherwise the
/// whole response (the server closes after it).
pub fn try_upgrade(
    addr: SocketAddr,
    path: &str,
    extra: &[(&str, &str)],
) -> Result<RawWs, HttpResponse> {
    let key = new_key();
    let req = upgrade_request_with(path, &key, extra);
    let mut stream = tcp_connect(addr);
    stream.write_all(req.as_bytes()).expect("send upgrade");
    let mut buf = Vec::new();
    let mut resp = read_response_head(&mut stream, &mut buf);
    if resp.status == 101 {
        assert_switching(&resp, &key);
        return Ok(RawWs::from_parts(stream, buf));
    }
    let len: usize = resp
        .header("content-length")
        .map_or(0, |l| l.parse().expect("Content-Length"));
    let deadline = Instant::now() + STEP;
    while buf.len() < len {
        read_more(&mut stream, &mut buf, deadline).expect("response body");
    }
    resp.body = buf.drain(..len).collect();
    Err(resp)
}

/// Polls `/metrics` until the sample `name` (labels included, as written) reads `want`,
/// failing after `within`.
pub fn wait_metric(server: &Server, name: &str, want: f64, within: Duration) {
    let deadline = Instant::now() + within;
    loop {
        let got = scrape(server.addr).get(name).copied();
        if got == Some(want) {
            return;
        }
        assert!(Instant::now() < deadline, "{name} is {got:?}, not {want}");
        thread::sleep(Duration::from_millis(20));
    }
}

/// Scrapes `/metrics` and returns each sample line's value by its name and labels, as
/// written (`name{label="v"}`).
pub fn scrape(addr: SocketAddr) -> std::collections::HashMap<String, f64> {
    let resp = http_get(addr, "/metrics");
    assert_eq!(resp.status, 200);
    assert!(resp
        .header("content-type")
        .is_some_and(|t| t.starts_with("text/plain; version=0.0.4")));
    resp.body_text()
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .map(|l| {
            let (name, value) = l.rsplit_once(' ').expect("sample line");
            (name.to_owned(), value.parse().expect("sample value"))
        })
        .collect()
}
