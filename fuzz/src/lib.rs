//! Helpers shared by the fuzz targets: ways to cut a stream into pieces,
//! a client-side frame encoder, an in-memory transport for the connection
//! engine, and an independent reader of what the server writes.
//!
//! Everything here is written against RFC 6455 directly rather than with
//! roomcast's own encoder or parser, so that a target compares roomcast
//! with a second implementation instead of with itself.

use std::io::{self, IoSlice, Read, Write};

use roomcast::conn::Transport;

/// Piece sizes to cut a stream of `len` bytes into: the whole stream, a
/// byte at a time, and a pseudo-random mix seeded from the stream itself
/// (so a crash reproduces from its input alone).
pub fn cut_plans(data: &[u8], len: usize) -> Vec<Vec<usize>> {
    let mut plans = vec![vec![len], vec![1; len]];
    let mut rng = SplitMix(fnv1a(data));
    let mut random = Vec::new();
    let mut left = len;
    while left > 0 {
        // Mostly short pieces, which land on header and code point
        // boundaries, with an occasional long one.
        let n = match rng.next_u64() % 8 {
            0 => 1 + (rng.next_u64() as usize % 300),
            _ => 1 + (rng.next_u64() as usize % 5),
        }
        .min(left);
        random.push(n);
        left -= n;
    }
    plans.push(random);
    plans
}

/// FNV-1a over `data`: a cheap, stable seed.
pub fn fnv1a(data: &[u8]) -> u64 {
    data.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// SplitMix64, for cut points.
pub struct SplitMix(pub u64);

impl SplitMix {
    /// The next 64 bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
}

/// Encodes one client frame as RFC 6455 5.2 lays it out: `b0` is the
/// whole first byte (FIN, RSV, opcode), `key` the mask if any. The payload
/// length uses the shortest form.
pub fn client_frame(b0: u8, key: Option<[u8; 4]>, payload: &[u8]) -> Vec<u8> {
    let mut out = vec![b0];
    let mask_bit = if key.is_some() { 0x80 } else { 0 };
    let len = payload.len();
    if len < 126 {
        out.push(mask_bit | len as u8);
    } else if len <= 0xFFFF {
        out.push(mask_bit | 126);
        out.extend_from_slice(&(len as u16).to_be_bytes());
    } else {
        out.push(mask_bit | 127);
        out.extend_from_slice(&(len as u64).to_be_bytes());
    }
    match key {
        Some(key) => {
            out.extend_from_slice(&key);
            out.extend(payload.iter().enumerate().map(|(i, b)| b ^ key[i % 4]));
        }
        None => out.extend_from_slice(payload),
    }
    out
}

/// One frame as the server wrote it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerFrame {
    /// The first header byte: FIN, RSV and opcode.
    pub b0: u8,
    /// The payload.
    pub payload: Vec<u8>,
}

impl ServerFrame {
    /// The opcode.
    pub fn opcode(&self) -> u8 {
        self.b0 & 0x0F
    }
}

/// Splits what a server wrote into frames, checking each against what
/// RFC 6455 asks of a server: no mask (5.1), no reserved bits or opcodes
/// (5.2), the shortest length form (5.2), control frames unfragmented and
/// at most 125 bytes (5.5), nothing after a close (5.5.1). Returns the
/// frames and how many bytes they took; a frame cut short at the end is
/// left for the next call.
///
/// # Panics
///
/// On any violation: that is the bug the target looks for.
pub fn read_server_frames(bytes: &[u8]) -> (Vec<ServerFrame>, usize) {
    let mut frames = Vec::new();
    let mut at = 0;
    loop {
        let rest = &bytes[at..];
        if rest.len() < 2 {
            break;
        }
        let (b0, b1) = (rest[0], rest[1]);
        assert_eq!(b0 & 0x70, 0, "server frame with RSV bits: {b0:#x}");
        assert_eq!(b1 & 0x80, 0, "masked server frame");
        let (len, head) = match b1 & 0x7F {
            126 => {
                if rest.len() < 4 {
                    break;
                }
                let len = u64::from(u16::from_be_bytes([rest[2], rest[3]]));
                assert!(len >= 126, "16-bit length form for {len} bytes");
                (len, 4)
            }
            127 => {
                if rest.len() < 10 {
                    break;
                }
                let len = u64::from_be_bytes(rest[2..10].try_into().unwrap());
                assert!(len > 0xFFFF, "64-bit length form for {len} bytes");
                (len, 10)
            }
            n => (u64::from(n), 2),
        };
        let opcode = b0 & 0x0F;
        assert!(
            matches!(opcode, 0x0..=0x2 | 0x8..=0xA),
            "reserved opcode {opcode:#x} from the server"
        );
        // roomcast never fragments what it sends, so every frame, data or
        // control, has FIN set and none is a continuation.
        assert!(b0 & 0x80 != 0, "fragmented frame from the server");
        assert_ne!(opcode, 0x0, "continuation frame from the server");
        if opcode & 0x8 != 0 {
            assert!(len <= 125, "control frame of {len} bytes from the server");
        }
        let end = head + len as usize;
        if rest.len() < end {
            break;
        }
        frames.push(ServerFrame {
            b0,
            payload: rest[head..end].to_vec(),
        });
        at += end;
    }
    if let Some(i) = frames.iter().position(|f| f.opcode() == 0x8) {
        assert_eq!(i + 1, frames.len(), "frames after a close");
        assert_eq!(at, bytes.len(), "bytes after a close");
        check_close_payload_sent(&frames[i].payload);
    }
    (frames, at)
}

/// A close frame the server sends: empty, or a code that may be sent and
/// a UTF-8 reason (RFC 6455 5.5.1, 7.4.1).
pub fn check_close_payload_sent(payload: &[u8]) {
    match payload {
        [] => {}
        [_] => panic!("one-byte close payload from the server"),
        [hi, lo, reason @ ..] => {
            let code = u16::from_be_bytes([*hi, *lo]);
            assert!(rfc_code_may_be_sent(code), "server sent close code {code}");
            assert!(
                std::str::from_utf8(reason).is_ok(),
                "server close reason is not UTF-8"
            );
        }
    }
}

/// RFC 6455 7.4.1 and 7.4.2, with the codes IANA registered since
/// (1012-1014): whether `code` may appear in a close frame.
pub fn rfc_code_may_be_sent(code: u16) -> bool {
    match code {
        0..=999 => false,
        // 1004 reserved; 1005, 1006 and 1015 MUST NOT be sent.
        1004 | 1005 | 1006 | 1015 => false,
        1000..=1014 => true,
        // Reserved for future versions of the protocol.
        1016..=2999 => false,
        // Libraries and frameworks; private use.
        3000..=4999 => true,
        _ => false,
    }
}

/// An in-memory socket: reads would block, writes are recorded up to a
/// budget (`room`), beyond which they would block.
#[derive(Debug, Default)]
pub struct MemSocket {
    /// Everything written so far and not yet taken.
    pub written: Vec<u8>,
    /// Bytes the socket takes before it would block.
    pub room: usize,
    /// Set when the sending half was shut down.
    pub shut: bool,
}

impl Read for MemSocket {
    fn read(&mut self, _: &mut [u8]) -> io::Result<usize> {
        Err(io::ErrorKind::WouldBlock.into())
    }
}

impl Write for MemSocket {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        assert!(!self.shut, "write after shutdown");
        if self.room == 0 {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        let n = buf.len().min(self.room);
        self.room -= n;
        self.written.extend_from_slice(&buf[..n]);
        Ok(n)
    }

    fn write_vectored(&mut self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        let mut total = 0;
        for buf in bufs {
            match self.write(buf) {
                Ok(n) => {
                    total += n;
                    if n < buf.len() {
                        break;
                    }
                }
                Err(e) if total == 0 => return Err(e),
                Err(_) => break,
            }
        }
        Ok(total)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Transport for MemSocket {
    fn shutdown_write(&mut self) -> io::Result<()> {
        self.shut = true;
        Ok(())
    }
}

/// A valid upgrade request for `path` (RFC 6455 4.1), with the RFC's
/// sample key and a trace header, so that traced log lines are built.
pub fn upgrade_request(path: &str) -> Vec<u8> {
    format!(
        "GET {path} HTTP/1.1\r\nHost: fuzz\r\nUpgrade: websocket\r\n\
         Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
         X-Cloud-Trace-Context: 105445aa7843bc8bf206b12000100000/1;o=1\r\n\
         Sec-WebSocket-Version: 13\r\n\r\n"
    )
    .into_bytes()
}

/// Where the HTTP response head in `bytes` ends, if it has.
pub fn response_head_end(bytes: &[u8]) -> Option<usize> {
    bytes
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|i| i + 4)
}
