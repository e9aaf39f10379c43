//! What the generator puts on the wire and how it reads replies.
//!
//! Requests are encoded once, up front, as masked client frames. Replies are
//! read straight out of the shared read buffer: the reader walks frame
//! headers and counts payload bytes, and copies a payload only when the
//! caller wants its bytes and it is split across reads.

/// The masking key of every frame the generator sends. A fixed key is as
/// valid as a random one (RFC 6455 5.3 asks clients for unpredictable keys to
/// protect proxies; there are none on loopback) and keeps frames pre-encoded.
pub const MASK_KEY: [u8; 4] = [0x37, 0xfa, 0x21, 0x3d];

/// A masked client frame with the FIN bit set.
pub fn masked_frame(opcode: u8, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(payload.len() + 14);
    out.push(0x80 | opcode);
    match payload.len() {
        n if n < 126 => out.push(0x80 | n as u8),
        n if n <= usize::from(u16::MAX) => {
            out.push(0x80 | 126);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            out.push(0x80 | 127);
            out.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    out.extend_from_slice(&MASK_KEY);
    out.extend(payload.iter().enumerate().map(|(i, b)| b ^ MASK_KEY[i & 3]));
    out
}

/// The opcode of a text frame.
pub const TEXT: u8 = 0x1;
/// The opcode of a binary frame.
pub const BINARY: u8 = 0x2;
/// The opcode of a close frame.
pub const CLOSE: u8 = 0x8;

/// A close frame with status 1000.
pub fn close_frame() -> Vec<u8> {
    masked_frame(CLOSE, &1000u16.to_be_bytes())
}

/// An upgrade request for `path` on `host`.
pub fn upgrade_request(host: &str, path: &str) -> Vec<u8> {
    format!(
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\n\
         Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
         Sec-WebSocket-Version: 13\r\n\r\n"
    )
    .into_bytes()
}

/// Where a response head ends, if it has arrived: the index just past the
/// blank line.
pub fn head_end(buf: &[u8]) -> Option<usize> {
    memchr::memmem::find(buf, b"\r\n\r\n").map(|i| i + 4)
}

/// Whether a response head accepts the upgrade.
pub fn is_switching(head: &[u8]) -> bool {
    head.starts_with(b"HTTP/1.1 101")
}

/// A complete reply frame, as handed to the caller.
pub struct Frame<'a> {
    /// The opcode of the frame.
    pub opcode: u8,
    /// The payload, when the caller asked for payloads of this size; still
    /// masked if the server echoed a masked frame verbatim.
    pub payload: Option<&'a [u8]>,
}

/// Walks the frames of one connection's reply stream.
#[derive(Default)]
pub struct FrameReader {
    /// An unfinished header.
    header: [u8; 14],
    header_len: usize,
    /// Payload bytes of the current frame not yet seen; `None` between
    /// frames.
    remaining: Option<u64>,
    opcode: u8,
    /// The current frame's payload so far, when it is wanted and split.
    partial: Vec<u8>,
    /// Whether the current frame's payload is being collected.
    collecting: bool,
}

impl FrameReader {
    /// Feeds the next bytes read, calling `on_frame` for each frame that
    /// ends in them. Payloads of at most `want_payload` bytes are handed
    /// over; larger ones are only counted.
    pub fn feed(&mut self, mut buf: &[u8], want_payload: usize, mut on_frame: impl FnMut(Frame)) {
        while !buf.is_empty() {
            let Some(remaining) = self.remaining else {
                // Gather a header: 2 bytes, then whatever its length field
                // and mask bit say.
                let need = if self.header_len < 2 {
                    2
                } else {
                    header_len(&self.header)
                };
                if self.header_len == 0 && buf.len() >= 2 && buf.len() >= header_len(buf) {
                    let n = header_len(buf);
                    self.start(&buf[..n]);
                    buf = &buf[n..];
                    // A whole payload in this read goes to the caller as is.
                    let len = self.remaining.unwrap_or(0);
                    if len <= buf.len() as u64 {
                        let len = len as usize;
                        let payload = (len <= want_payload).then(|| &buf[..len]);
                        on_frame(Frame {
                            opcode: self.opcode,
                            payload,
                        });
                        self.remaining = None;
                        buf = &buf[len..];
                        continue;
                    }
                    self.collecting = len as usize <= want_payload;
                    self.partial.clear();
                    continue;
                }
                let take = (need - self.header_len).min(buf.len());
                self.header[self.header_len..self.header_len + take].copy_from_slice(&buf[..take]);
                self.header_len += take;
                buf = &buf[take..];
                if self.header_len >= 2 && self.header_len == header_len(&self.header) {
                    let header = self.header;
                    self.start(&header[..self.header_len]);
                    self.header_len = 0;
                    let len = self.remaining.unwrap_or(0);
                    self.collecting = len as usize <= want_payload;
                    self.partial.clear();
                    if len == 0 {
                        self.finish(&mut on_frame);
                    }
                }
                continue;
            };
            let take = remaining.min(buf.len() as u64) as usize;
            if self.collecting {
                self.partial.extend_from_slice(&buf[..take]);
            }
            buf = &buf[take..];
            let left = remaining - take as u64;
            self.remaining = Some(left);
            if left == 0 {
                self.finish(&mut on_frame);
            }
        }
    }

    fn start(&mut self, header: &[u8]) {
        self.opcode = header[0] & 0x0f;
        let len = match header[1] & 0x7f {
            126 => u64::from(u16::from_be_bytes([header[2], header[3]])),
            127 => u64::from_be_bytes(header[2..10].try_into().expect("8 bytes")),
            n => u64::from(n),
        };
        self.remaining = Some(len);
    }

    fn finish(&mut self, on_frame: &mut impl FnMut(Frame)) {
        let payload = self.collecting.then_some(&self.partial[..]);
        on_frame(Frame {
            opcode: self.opcode,
            payload,
        });
        self.remaining = None;
        self.collecting = false;
    }
}

/// The length of the header that starts `buf` (at least 2 bytes long).
fn header_len(buf: &[u8]) -> usize {
    let masked = if buf[1] & 0x80 != 0 { 4 } else { 0 };
    let ext = match buf[1] & 0x7f {
        126 => 2,
        127 => 8,
        _ => 0,
    };
    2 + ext + masked
}

#[cfg(test)]
mod tests {
    use super::*;

    fn server_frame(opcode: u8, payload: &[u8]) -> Vec<u8> {
        let mut f = masked_frame(opcode, payload);
        // Unmasked: drop the mask bit and key, unmask the payload.
        let hl = header_len(&f);
        f[1] &= 0x7f;
        let body: Vec<u8> = f[hl..]
            .iter()
            .enumerate()
            .map(|(i, b)| b ^ MASK_KEY[i & 3])
            .collect();
        f.truncate(hl - 4);
        f.extend(body);
        f
    }

    #[test]
    fn frames_split_anywhere_are_found_whole() {
        let mut stream = Vec::new();
        let big = vec![b'a'; 70_000];
        let payloads: [&[u8]; 4] = [b"", b"hello", &[b'x'; 300], &big];
        for p in payloads {
            stream.extend(server_frame(TEXT, p));
        }
        stream.extend(masked_frame(BINARY, b"masked echo"));
        for cut in [1, 2, 3, 7, 13, 100, 1000, 65536] {
            let mut reader = FrameReader::default();
            let mut got = Vec::new();
            for chunk in stream.chunks(cut) {
                reader.feed(chunk, 1024, |f| {
                    got.push((f.opcode, f.payload.map(|p| p.len())));
                });
            }
            assert_eq!(
                got,
                vec![
                    (TEXT, Some(0)),
                    (TEXT, Some(5)),
                    (TEXT, Some(300)),
                    (TEXT, None),
                    (BINARY, Some(11)),
                ],
                "chunks of {cut}"
            );
        }
    }

    #[test]
    fn payloads_are_handed_over_intact() {
        let stream = server_frame(TEXT, b"{\"text\":\"1:2:3\"}");
        for cut in 1..stream.len() {
            let mut reader = FrameReader::default();
            let mut got = Vec::new();
            for chunk in stream.chunks(cut) {
                reader.feed(chunk, 64, |f| got.push(f.payload.unwrap().to_vec()));
            }
            assert_eq!(got, vec![b"{\"text\":\"1:2:3\"}".to_vec()]);
        }
    }
}
