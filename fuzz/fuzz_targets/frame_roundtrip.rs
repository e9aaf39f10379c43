//! Structure-aware: arbitrary frames (any opcode, FIN, mask or none, empty
//! to 64-bit-length payloads, now and then reserved bits or a reserved
//! opcode) are encoded, then decoded.
//!
//! Checks: roomcast's header encoder writes exactly the RFC 6455 5.2
//! layout an independent encoder writes, and `parse_header` gives back
//! every field, masked or not; a stream of such client frames, cut into
//! arbitrary pieces, decodes to exactly what a plain reference model of
//! RFC 6455 5.4, 5.5 and 8.1 says: the same messages (fragments joined),
//! the same control frames, the same errors, in the same order.

#![no_main]

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use roomcast::frame::{
    encode_header, parse_header, write_frame, Decoder, Event, FrameError, MessageKind, OpCode,
    Payload,
};
use roomcast_fuzz::client_frame;

#[derive(Arbitrary, Debug, Clone, Copy, PartialEq, Eq)]
enum Op {
    Continuation,
    Text,
    Binary,
    Close,
    Ping,
    Pong,
}

impl Op {
    fn opcode(self) -> OpCode {
        match self {
            Op::Continuation => OpCode::Continuation,
            Op::Text => OpCode::Text,
            Op::Binary => OpCode::Binary,
            Op::Close => OpCode::Close,
            Op::Ping => OpCode::Ping,
            Op::Pong => OpCode::Pong,
        }
    }
}

#[derive(Arbitrary, Debug)]
enum Body {
    Bytes(Vec<u8>),
    Text(String),
    /// Long payloads, for the 16- and 64-bit length forms.
    Repeat {
        byte: u8,
        len: u32,
    },
}

#[derive(Arbitrary, Debug)]
struct FrameSpec {
    fin: bool,
    op: Op,
    mask: Option<[u8; 4]>,
    /// 0-239: a well-formed header; 240-247: RSV bits set; 248-255: a
    /// reserved opcode instead of `op`.
    oddity: u8,
    body: Body,
}

#[derive(Arbitrary, Debug)]
struct Input {
    limit: u16,
    frames: Vec<FrameSpec>,
    /// Piece sizes the stream is cut into, cycled; none means whole.
    cuts: Vec<u8>,
}

/// What the decoder reports, owned.
#[derive(Debug, PartialEq, Eq)]
enum Seen {
    Message(MessageKind, Vec<u8>),
    Ping(Vec<u8>),
    Pong(Vec<u8>),
    Close(Vec<u8>),
    Error(FrameError),
}

/// Whether `bytes` can no longer be the start of valid UTF-8.
fn definitely_invalid(bytes: &[u8]) -> bool {
    matches!(std::str::from_utf8(bytes), Err(e) if e.error_len().is_some())
}

/// RFC 6455 as a list of rules, one frame at a time.
struct Model {
    max: usize,
    assembling: Option<(MessageKind, Vec<u8>)>,
    seen: Vec<Seen>,
}

impl Model {
    fn fail(&mut self, e: FrameError) {
        self.assembling = None;
        self.seen.push(Seen::Error(e));
    }

    fn frame(&mut self, b0: u8, masked: bool, payload: &[u8]) {
        let fin = b0 & 0x80 != 0;
        let opcode = b0 & 0x0F;
        // 5.2: RSV bits MUST be 0 with no extension; reserved opcodes fail.
        if b0 & 0x70 != 0 {
            return self.fail(FrameError::ReservedBits);
        }
        if matches!(opcode, 0x3..=0x7 | 0xB..=0xF) {
            return self.fail(FrameError::ReservedOpcode(opcode));
        }
        let control = opcode & 0x8 != 0;
        // 5.5: control frames are not fragmented and carry <= 125 bytes.
        if control && !fin {
            return self.fail(FrameError::FragmentedControl);
        }
        if control && payload.len() > 125 {
            return self.fail(FrameError::ControlTooBig);
        }
        // 5.1: a client frame is masked.
        if !masked {
            return self.fail(FrameError::Unmasked);
        }
        match opcode {
            0x8 => self.seen.push(Seen::Close(payload.to_vec())),
            0x9 => self.seen.push(Seen::Ping(payload.to_vec())),
            0xA => self.seen.push(Seen::Pong(payload.to_vec())),
            0x1 | 0x2 => {
                // 5.4: no new message inside a fragmented one.
                if self.assembling.is_some() {
                    return self.fail(FrameError::ExpectedContinuation);
                }
                if payload.len() > self.max {
                    return self.fail(FrameError::MessageTooBig);
                }
                let kind = if opcode == 0x1 {
                    MessageKind::Text
                } else {
                    MessageKind::Binary
                };
                self.assembling = Some((kind, Vec::new()));
                self.data(fin, payload);
            }
            _ => {
                let Some((_, so_far)) = &self.assembling else {
                    return self.fail(FrameError::UnexpectedContinuation);
                };
                if so_far.len() + payload.len() > self.max {
                    return self.fail(FrameError::MessageTooBig);
                }
                self.data(fin, payload);
            }
        }
    }

    fn data(&mut self, fin: bool, payload: &[u8]) {
        let (kind, so_far) = self.assembling.as_mut().expect("checked by the caller");
        so_far.extend_from_slice(payload);
        let text = *kind == MessageKind::Text;
        // 8.1: fail at the first fragment that makes the text invalid, and
        // at the end if it stops inside a code point.
        if text && definitely_invalid(so_far) {
            return self.fail(FrameError::InvalidUtf8);
        }
        if fin {
            let (kind, bytes) = self.assembling.take().expect("just used");
            if text && std::str::from_utf8(&bytes).is_err() {
                return self.fail(FrameError::InvalidUtf8);
            }
            self.seen.push(Seen::Message(kind, bytes));
        }
    }
}

/// Encodes `payload` with roomcast's encoder and checks it against the
/// independent one, then parses the header back, masked and not.
fn check_header_round_trip(b0: u8, op: Op, payload: &[u8], key: [u8; 4]) {
    let fin = b0 & 0x80 != 0;
    let reference = client_frame(b0, None, payload);
    let mut header = [0u8; 10];
    let n = encode_header(&mut header, fin, op.opcode(), payload.len());
    if b0 & 0x70 == 0 && b0 & 0x0F == op.opcode() as u8 {
        assert_eq!(
            &header[..n],
            &reference[..n],
            "header for {} bytes",
            payload.len()
        );
        if fin {
            let mut written = Vec::new();
            write_frame(&mut written, op.opcode(), payload);
            assert_eq!(written, reference);
        }
    }
    for (frame, mask) in [
        (reference, None),
        (client_frame(b0, Some(key), payload), Some(key)),
    ] {
        let head_len = frame.len() - payload.len();
        // A header is never judged before it is whole.
        for cut in 0..head_len {
            assert_eq!(parse_header(&frame[..cut]), Ok(None));
        }
        match parse_header(&frame) {
            Ok(Some(h)) => {
                assert_eq!(h.fin, fin);
                assert_eq!(h.opcode as u8, b0 & 0x0F);
                assert_eq!(h.mask, mask);
                assert_eq!(h.payload_len, payload.len() as u64);
                assert_eq!(h.header_len, head_len);
            }
            Ok(None) => panic!("a whole header reported unfinished"),
            Err(e) => {
                // Only headers the model also refuses.
                let mut model = Model {
                    max: usize::MAX,
                    assembling: None,
                    seen: Vec::new(),
                };
                model.frame(b0, true, &payload[..payload.len().min(126)]);
                assert_eq!(model.seen, vec![Seen::Error(e)]);
            }
        }
    }
}

fn decode_all(stream: &[u8], cuts: &[u8], max: usize) -> Vec<Seen> {
    let mut decoder = Decoder::new(max);
    let mut seen = Vec::new();
    let mut sizes = cuts.iter().map(|&c| usize::from(c).max(1)).cycle();
    let mut at = 0;
    while at < stream.len() {
        let n = sizes.next().unwrap_or(stream.len()).min(stream.len() - at);
        let mut piece = stream[at..at + n].to_vec();
        at += n;
        let mut pos = 0;
        loop {
            let event = match decoder.decode(&mut piece, &mut pos) {
                Ok(None) => break,
                Ok(Some(event)) => event,
                Err(e) => {
                    seen.push(Seen::Error(e));
                    continue;
                }
            };
            seen.push(match event {
                Event::Message { kind, payload } => {
                    let bytes = match payload {
                        Payload::Input(range) => piece[range].to_vec(),
                        Payload::Assembled => decoder.take_message(),
                    };
                    Seen::Message(kind, bytes)
                }
                Event::Ping(p) => Seen::Ping(decoder.control_payload(&piece, &p).to_vec()),
                Event::Pong(p) => Seen::Pong(decoder.control_payload(&piece, &p).to_vec()),
                Event::Close(p) => Seen::Close(decoder.control_payload(&piece, &p).to_vec()),
            });
        }
        assert_eq!(pos, piece.len());
    }
    seen
}

/// Encoded bytes one input may make, so that long payloads stay cheap.
const MAX_STREAM: usize = 1 << 20;

fuzz_target!(|input: Input| {
    let max = match input.limit % 4 {
        0 => usize::from(input.limit),
        1 => 125,
        2 => 70_000,
        _ => usize::from(input.limit % 300),
    };
    let mut model = Model {
        max,
        assembling: None,
        seen: Vec::new(),
    };
    let mut stream = Vec::new();
    for spec in &input.frames {
        let payload = match &spec.body {
            Body::Bytes(b) => b.clone(),
            Body::Text(s) => s.as_bytes().to_vec(),
            Body::Repeat { byte, len } => vec![*byte; *len as usize % 70_001],
        };
        if stream.len() + payload.len() > MAX_STREAM {
            break;
        }
        let opcode = match spec.oddity {
            248..=255 => [0x3, 0x4, 0x5, 0x7, 0xB, 0xC, 0xE, 0xF][usize::from(spec.oddity - 248)],
            _ => spec.op.opcode() as u8,
        };
        let rsv = match spec.oddity {
            240..=247 => ((spec.oddity - 240) | 1) << 4 & 0x70,
            _ => 0,
        };
        let b0 = (u8::from(spec.fin) << 7) | rsv | opcode;
        check_header_round_trip(b0, spec.op, &payload, spec.mask.unwrap_or([1, 2, 3, 4]));
        model.frame(b0, spec.mask.is_some(), &payload);
        stream.extend(client_frame(b0, spec.mask, &payload));
    }
    assert_eq!(decode_all(&stream, &input.cuts, max), model.seen);
});
