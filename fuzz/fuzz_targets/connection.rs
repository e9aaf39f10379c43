//! Whole connections: the engine after a valid handshake, driven by
//! arbitrary bytes or by arbitrary but mostly valid traffic.
//!
//! The first input byte picks the mode. Even: raw mode, one connection
//! (chat or echo, by the next bit) takes the rest of the input as bytes,
//! in pseudo-random reads. Odd: structure-aware mode, the rest of the input
//! is a script of steps for several connections: reads of frame sequences
//! built from parts (fragments, pings, pongs, closes with any code, chat
//! messages, bad opcodes, reserved bits, unmasked frames, long payloads)
//! cut into arbitrary reads, raw bytes, clock ticks, stalled and resumed
//! sockets, hang-ups, new connections and a shutdown.
//!
//! Checks: no panic or hang; every byte written is a valid server frame
//! after one 101 head, and nothing follows a close; the count of open
//! connections and the rooms agree with the connections' phases; and in
//! the end, with the clock run past every deadline, every connection has
//! been closed and removed and every room is gone.

#![no_main]

use arbitrary::{Arbitrary, Unstructured};
use libfuzzer_sys::fuzz_target;
use roomcast::cloudrun::Deployment;
use roomcast::conn::{Engine, Limits, Phase, Readable};
use roomcast::slab::Key;
use roomcast_fuzz::{
    client_frame, cut_plans, read_server_frames, response_head_end, upgrade_request, MemSocket,
};

fn limits() -> Limits {
    Limits {
        max_message: 1000,
        echo_max_message: 2000,
        max_queued: 3000,
        handshake_timeout: 10_000,
        close_timeout: 5_000,
        ping_interval: 30_000,
        max_age: 90_000,
    }
}

#[derive(Arbitrary, Debug, Clone, Copy)]
enum Kind {
    Text,
    Binary,
    Continuation,
    Ping,
    Pong,
    Close,
}

#[derive(Arbitrary, Debug)]
enum Body {
    Join(u8),
    Message(String),
    Leave,
    Json(String),
    Bytes(Vec<u8>),
    Long { byte: u8, len: u16 },
    CloseCode { code: u16, reason: String },
}

#[derive(Arbitrary, Debug)]
struct FrameSpec {
    kind: Kind,
    fin: bool,
    key: [u8; 4],
    /// 0-243: a well-formed frame; 244-247 unmasked; 248-251 RSV bits;
    /// 252-255 a reserved opcode.
    oddity: u8,
    body: Body,
}

impl FrameSpec {
    fn encode(&self, out: &mut Vec<u8>) {
        let payload = match &self.body {
            Body::Join(room) => {
                format!(r#"{{"type":"join","roomId":"r{}"}}"#, room % 4).into_bytes()
            }
            Body::Message(text) => serde_json::json!({ "type": "message", "text": text })
                .to_string()
                .into_bytes(),
            Body::Leave => br#"{"type":"leave"}"#.to_vec(),
            Body::Json(s) => s.as_bytes().to_vec(),
            Body::Bytes(b) => b.clone(),
            Body::Long { byte, len } => vec![*byte; usize::from(*len)],
            Body::CloseCode { code, reason } => {
                let mut p = code.to_be_bytes().to_vec();
                p.extend_from_slice(reason.as_bytes());
                p
            }
        };
        let opcode = match self.kind {
            Kind::Continuation => 0x0,
            Kind::Text => 0x1,
            Kind::Binary => 0x2,
            Kind::Close => 0x8,
            Kind::Ping => 0x9,
            Kind::Pong => 0xA,
        };
        let (opcode, rsv, key) = match self.oddity {
            244..=247 => (opcode, 0, None),
            248..=251 => (opcode, 0x10 << (self.oddity % 3), Some(self.key)),
            252..=255 => (
                [0x3, 0x7, 0xB, 0xF][usize::from(self.oddity % 4)],
                0,
                Some(self.key),
            ),
            _ => (opcode, 0, Some(self.key)),
        };
        let b0 = (u8::from(self.fin) << 7) | rsv | opcode;
        out.extend(client_frame(b0, key, &payload));
    }
}

#[derive(Arbitrary, Debug)]
enum Step {
    /// Frames from one connection, cut into reads of the given sizes.
    Send {
        conn: u8,
        frames: Vec<FrameSpec>,
        cuts: Vec<u8>,
    },
    /// Arbitrary bytes from one connection.
    Raw { conn: u8, bytes: Vec<u8> },
    /// The clock moves on and the timers run.
    Tick { ms: u16 },
    /// A connection's socket stops taking bytes.
    Stall { conn: u8 },
    /// A connection's socket takes `room` more bytes and says so.
    Writable { conn: u8, room: u16 },
    /// The peer closes TCP.
    Hangup { conn: u8 },
    /// A new client upgrades.
    Connect { echo: bool },
    /// SIGTERM.
    Shutdown,
}

/// One connection as the test sees it: its key and what it was sent.
struct Client {
    key: Key,
    /// Bytes written and not yet read as whole frames.
    pending: Vec<u8>,
    head_seen: bool,
    close_seen: bool,
    /// Connected during a shutdown: answered 503, never upgraded.
    refused: bool,
}

struct World {
    engine: Engine<MemSocket>,
    clients: Vec<Client>,
    now: u64,
}

/// Cap on the bytes one step sends, so that a script stays cheap.
const MAX_SEND: usize = 256 * 1024;

/// Cap on connections, so that a script stays cheap.
const MAX_CLIENTS: usize = 6;

impl World {
    fn new() -> Self {
        World {
            engine: Engine::new(limits(), "fuzz").with_deployment(Deployment {
                service: Some("svc".into()),
                revision: None,
                configuration: None,
                project_id: Some("proj".into()),
            }),
            clients: Vec::new(),
            now: 0,
        }
    }

    fn connect(&mut self, path: &str) {
        if self.clients.len() >= MAX_CLIENTS {
            return;
        }
        let key = self.engine.accept(
            MemSocket {
                room: 1 << 20,
                ..MemSocket::default()
            },
            self.now,
        );
        let refused = self.engine.is_shutting_down();
        self.clients.push(Client {
            key,
            pending: Vec::new(),
            head_seen: false,
            close_seen: false,
            refused,
        });
        self.input(key, &mut upgrade_request(path));
        let phase = self.engine.peer(key).map(|p| p.conn.phase());
        if refused {
            // Draining: new clients are sent elsewhere.
            assert!(matches!(phase, Some(Phase::Lingering) | None), "{phase:?}");
        } else {
            assert_eq!(phase, Some(Phase::Open), "a valid upgrade opens it");
        }
    }

    fn client(&self, conn: u8) -> Option<Key> {
        if self.clients.is_empty() {
            return None;
        }
        Some(self.clients[usize::from(conn) % self.clients.len()].key)
    }

    /// A read, as the shell does it: not while the connection is over its
    /// queue bound, and followed by a flush and the removal of what is
    /// doomed.
    fn input(&mut self, key: Key, bytes: &mut [u8]) {
        if !matches!(self.engine.reader(key), Readable::Socket(_)) {
            return;
        }
        self.engine.on_input(key, bytes, self.now);
        self.settle();
    }

    fn settle(&mut self) {
        self.engine.flush(self.now);
        self.collect();
        loop {
            let doomed = self.engine.take_doomed(256);
            if doomed.is_empty() {
                break;
            }
            for key in doomed {
                assert!(self.engine.remove(key).is_some(), "doomed twice");
                self.clients.retain(|c| c.key != key);
            }
        }
        self.check();
    }

    /// Reads what every connection was sent, checking it as it goes.
    fn collect(&mut self) {
        for c in &mut self.clients {
            let Some(peer) = self.engine.peer_mut(c.key) else {
                continue;
            };
            let fresh = std::mem::take(&mut peer.socket.written);
            if fresh.is_empty() {
                continue;
            }
            assert!(!c.close_seen, "bytes after a close frame");
            c.pending.extend(fresh);
            if c.refused {
                if !c.head_seen {
                    if response_head_end(&c.pending).is_none() {
                        continue;
                    }
                    assert!(c.pending.starts_with(b"HTTP/1.1 503 "));
                    c.head_seen = true;
                }
                c.pending.clear();
                continue;
            }
            if !c.head_seen {
                let Some(end) = response_head_end(&c.pending) else {
                    continue;
                };

                assert!(
                    c.pending
                        .starts_with(b"HTTP/1.1 101 Switching Protocols\r\n"),
                    "{}",
                    String::from_utf8_lossy(&c.pending[..end])
                );
                c.pending.drain(..end);
                c.head_seen = true;
            }
            let (frames, used) = read_server_frames(&c.pending);
            c.pending.drain(..used);
            if frames.iter().any(|f| f.opcode() == 0x8) {
                assert!(c.pending.is_empty(), "bytes after a close frame");
                c.close_seen = true;
            }
        }
    }

    fn check(&self) {
        let open = self
            .clients
            .iter()
            .filter(|c| self.engine.peer(c.key).map(|p| p.conn.phase()) == Some(Phase::Open))
            .count();
        assert_eq!(self.engine.open_connections(), open);
        assert_eq!(self.engine.len(), self.clients.len());
        // A room exists while it has members, and only open connections
        // are members.
        assert!(self.engine.chat().rooms().len() <= open);
    }

    fn step(&mut self, step: Step) {
        match step {
            Step::Send { conn, frames, cuts } => {
                let Some(key) = self.client(conn) else { return };
                let mut bytes = Vec::new();
                for f in &frames {
                    if bytes.len() > MAX_SEND {
                        break;
                    }
                    f.encode(&mut bytes);
                }
                let mut sizes = cuts.iter().map(|&c| usize::from(c).max(1)).cycle();
                let mut at = 0;
                while at < bytes.len() {
                    let n = sizes.next().unwrap_or(bytes.len()).min(bytes.len() - at);
                    let mut piece = bytes[at..at + n].to_vec();
                    at += n;
                    self.input(key, &mut piece);
                }
            }
            Step::Raw { conn, mut bytes } => {
                if let Some(key) = self.client(conn) {
                    self.input(key, &mut bytes);
                }
            }
            Step::Tick { ms } => {
                self.now += u64::from(ms);
                self.engine.tick(self.now);
                self.settle();
            }
            Step::Stall { conn } => {
                if let Some(key) = self.client(conn) {
                    self.engine.peer_mut(key).expect("live").socket.room = 0;
                }
            }
            Step::Writable { conn, room } => {
                if let Some(key) = self.client(conn) {
                    self.engine.peer_mut(key).expect("live").socket.room += usize::from(room);
                    self.engine.on_writable(key);
                    self.settle();
                }
            }
            Step::Hangup { conn } => {
                if let Some(key) = self.client(conn) {
                    self.engine.on_hangup(key);
                    self.settle();
                }
            }
            Step::Connect { echo } => self.connect(if echo { "/echo" } else { "/room" }),
            Step::Shutdown => {
                if !self.engine.is_shutting_down() {
                    self.engine.begin_shutdown(self.now);
                    self.settle();
                }
            }
        }
    }

    /// Runs the clock past every deadline, with sockets that take
    /// everything: nothing may be left.
    fn finish(&mut self) {
        for c in &self.clients {
            if let Some(peer) = self.engine.peer_mut(c.key) {
                peer.socket.room = usize::MAX;
            }
        }
        for key in self.clients.iter().map(|c| c.key).collect::<Vec<_>>() {
            self.engine.on_writable(key);
        }
        self.settle();
        let l = limits();
        for _ in 0..4 {
            self.now += l
                .ping_interval
                .max(l.close_timeout)
                .max(l.handshake_timeout);
            self.engine.tick(self.now);
            self.settle();
        }
        assert!(self.engine.is_empty(), "connections left behind");
        assert_eq!(self.engine.open_connections(), 0);
        assert!(self.engine.chat().rooms().is_empty(), "rooms left behind");
    }
}

fuzz_target!(|data: &[u8]| {
    // Every log line is built, so that logging untrusted fields is fuzzed
    // too; run with -close_fd_mask=1 to drop them (scripts/fuzz.sh does).
    roomcast::log::set_level(roomcast::log::Level::Debug);
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let mut world = World::new();
    if mode & 1 == 0 {
        let path = if mode & 2 == 0 { "/" } else { "/echo" };
        world.connect(path);
        let key = world.clients[0].key;
        let plans = cut_plans(rest, rest.len());
        let mut at = 0;
        for n in &plans[2] {
            let mut piece = rest[at..at + n].to_vec();
            at += n;
            world.input(key, &mut piece);
        }
    } else {
        world.connect("/");
        world.connect(if mode & 2 == 0 { "/" } else { "/echo" });
        let mut u = Unstructured::new(rest);
        let mut steps = 0;
        while !u.is_empty() && steps < 64 {
            let Ok(step) = Step::arbitrary(&mut u) else {
                break;
            };
            world.step(step);
            steps += 1;
        }
    }
    world.finish();
});
