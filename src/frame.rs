//! RFC 6455 5 framing: a header parser, a streaming decoder for client frames
//! and an encoder for server frames.
//!
//! The decoder is sans-IO. It works on a mutable slice of freshly read bytes
//! and unmasks payloads in place. A message that lies whole in that slice is
//! handed back as a range of it, copied nowhere; only a message split across
//! reads or fragments is assembled in the decoder's own buffer. An unfinished
//! header (at most 14 bytes) or control payload (at most 125) is all else the
//! decoder keeps between reads.

use std::fmt;
use std::ops::Range;

use crate::close::CloseCode;
use crate::mask::{apply_mask, unmask_ascii, unmask_short_ascii};
use crate::utf8::Utf8Validator;

/// RFC 6455 5.5: control frames carry at most 125 bytes of payload.
pub const MAX_CONTROL_PAYLOAD: usize = 125;

/// A frame's opcode (RFC 6455 5.2). Reserved opcodes are rejected when the
/// header is parsed, so they have no variant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpCode {
    /// 0x0: a later fragment of a message.
    Continuation = 0x0,
    /// 0x1: the first frame of a text message.
    Text = 0x1,
    /// 0x2: the first frame of a binary message.
    Binary = 0x2,
    /// 0x8: close.
    Close = 0x8,
    /// 0x9: ping.
    Ping = 0x9,
    /// 0xA: pong.
    Pong = 0xA,
}

impl OpCode {
    fn from_bits(bits: u8) -> Option<OpCode> {
        Some(match bits {
            0x0 => OpCode::Continuation,
            0x1 => OpCode::Text,
            0x2 => OpCode::Binary,
            0x8 => OpCode::Close,
            0x9 => OpCode::Ping,
            0xA => OpCode::Pong,
            _ => return None,
        })
    }

    /// Whether this is a control opcode (RFC 6455 5.5).
    pub const fn is_control(self) -> bool {
        (self as u8) & 0x8 != 0
    }
}

/// A parsed frame header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameHeader {
    /// Whether this is the last frame of its message.
    pub fin: bool,
    /// The frame's opcode.
    pub opcode: OpCode,
    /// The masking key, for masked frames.
    pub mask: Option<[u8; 4]>,
    /// The payload length as declared.
    pub payload_len: u64,
    /// How many bytes the header took on the wire.
    pub header_len: usize,
}

/// One violation of RFC 6455 by the peer, or of our limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrameError {
    /// RSV1-3 set with no extension negotiated (5.2).
    ReservedBits,
    /// Opcode 0x3-0x7 or 0xB-0xF (5.2).
    ReservedOpcode(u8),
    /// A client frame without a mask (5.1).
    Unmasked,
    /// A control frame with FIN clear (5.5).
    FragmentedControl,
    /// A control frame with more than 125 bytes of payload (5.5).
    ControlTooBig,
    /// A 64-bit length with its most significant bit set (5.2).
    LengthOverflow,
    /// A continuation frame with no message to continue (5.4).
    UnexpectedContinuation,
    /// A new data frame while a fragmented message is unfinished (5.4).
    ExpectedContinuation,
    /// A message longer than the connection's limit (7.4.1, 1009).
    MessageTooBig,
    /// A text message that is not UTF-8 (8.1).
    InvalidUtf8,
}

impl FrameError {
    /// The close code this violation is answered with (RFC 6455 7.4.1).
    pub const fn close_code(self) -> CloseCode {
        match self {
            FrameError::MessageTooBig => CloseCode::TooBig,
            FrameError::InvalidUtf8 => CloseCode::InvalidPayload,
            _ => CloseCode::Protocol,
        }
    }

    /// A short reason, sent as the close frame's reason.
    pub const fn reason(self) -> &'static str {
        match self {
            FrameError::ReservedBits => "reserved bits set",
            FrameError::ReservedOpcode(_) => "reserved opcode",
            FrameError::Unmasked => "client frame not masked",
            FrameError::FragmentedControl => "fragmented control frame",
            FrameError::ControlTooBig => "control frame too long",
            FrameError::LengthOverflow => "frame length overflows",
            FrameError::UnexpectedContinuation => "continuation without a message",
            FrameError::ExpectedContinuation => "expected a continuation frame",
            FrameError::MessageTooBig => "message too big",
            FrameError::InvalidUtf8 => "invalid UTF-8 in text",
        }
    }
}

impl fmt::Display for FrameError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.reason())
    }
}

impl std::error::Error for FrameError {}

/// Parses a frame header from the start of `buf`.
///
/// Returns `Ok(None)` when `buf` is too short to hold the whole header; no
/// input is consumed in that case. A header is at most 14 bytes, so waiting
/// for all of it before judging it costs nothing.
///
/// # Errors
///
/// Reserved bits, reserved opcodes, malformed control frames and oversized
/// 64-bit lengths.
pub fn parse_header(buf: &[u8]) -> Result<Option<FrameHeader>, FrameError> {
    split_header(buf).map(|raw| check_header(&raw)).transpose()
}

/// A header's fields as they are on the wire, before any rule is checked.
#[derive(Debug, Clone, Copy)]
struct RawHeader {
    b0: u8,
    payload_len: u64,
    mask: Option<[u8; 4]>,
    header_len: usize,
}

/// Cuts a whole header from the start of `buf`, or says it is unfinished.
fn split_header(buf: &[u8]) -> Option<RawHeader> {
    let [b0, b1, ..] = *buf else { return None };
    let header_len = header_len(b1);
    if buf.len() < header_len {
        return None;
    }
    let (payload_len, key_at) = match b1 & 0x7F {
        126 => (u64::from(u16::from_be_bytes([buf[2], buf[3]])), 4),
        127 => {
            let len = buf[2..10].try_into().expect("8 bytes checked above");
            (u64::from_be_bytes(len), 10)
        }
        n => (u64::from(n), 2),
    };
    let mask = (b1 & 0x80 != 0).then(|| {
        buf[key_at..key_at + 4]
            .try_into()
            .expect("4 bytes checked above")
    });
    Some(RawHeader {
        b0,
        payload_len,
        mask,
        header_len,
    })
}

/// Applies RFC 6455 5.2 and 5.5 to a header.
fn check_header(raw: &RawHeader) -> Result<FrameHeader, FrameError> {
    let b0 = raw.b0;
    if b0 & 0x70 != 0 {
        return Err(FrameError::ReservedBits);
    }
    let opcode = OpCode::from_bits(b0 & 0x0F).ok_or(FrameError::ReservedOpcode(b0 & 0x0F))?;
    let fin = b0 & 0x80 != 0;
    // RFC 6455 5.2: the most significant bit of a 64-bit length MUST be 0.
    if raw.payload_len >> 63 != 0 {
        return Err(FrameError::LengthOverflow);
    }
    if opcode.is_control() {
        // RFC 6455 5.5: control frames MUST have a payload length of 125
        // bytes or less and MUST NOT be fragmented.
        if !fin {
            return Err(FrameError::FragmentedControl);
        }
        if raw.payload_len > 125 {
            return Err(FrameError::ControlTooBig);
        }
    }
    Ok(FrameHeader {
        fin,
        opcode,
        mask: raw.mask,
        payload_len: raw.payload_len,
        header_len: raw.header_len,
    })
}

/// The whole header length implied by the second header byte.
const fn header_len(b1: u8) -> usize {
    let ext = match b1 & 0x7F {
        126 => 2,
        127 => 8,
        _ => 0,
    };
    let key = if b1 & 0x80 != 0 { 4 } else { 0 };
    2 + ext + key
}

/// Encodes a server frame header (never masked) into `out`, returning the
/// number of bytes used.
pub fn encode_header(out: &mut [u8; 10], fin: bool, opcode: OpCode, len: usize) -> usize {
    out[0] = (u8::from(fin) << 7) | opcode as u8;
    if len < 126 {
        out[1] = len as u8;
        2
    } else if len <= usize::from(u16::MAX) {
        out[1] = 126;
        out[2..4].copy_from_slice(&(len as u16).to_be_bytes());
        4
    } else {
        out[1] = 127;
        out[2..10].copy_from_slice(&(len as u64).to_be_bytes());
        10
    }
}

/// Makes the payload at `buf[payload]` a complete, unfragmented server
/// frame where it lies, by writing the header into the bytes just before
/// it, and returns where the frame starts; `None`, changing nothing, when
/// that would reach below `floor`.
///
/// A client frame's header is longer than a server frame's for the same
/// payload by at least its 4-byte masking key, so an echo reply always fits
/// in its request when the whole request frame is in `buf`.
#[inline]
pub fn frame_in_place(
    buf: &mut [u8],
    payload: Range<usize>,
    floor: usize,
    opcode: OpCode,
) -> Option<usize> {
    let len = payload.len();
    if len < 126 {
        // The usual case: a two-byte header.
        let start = payload.start.checked_sub(2).filter(|&s| s >= floor)?;
        buf[start] = 0x80 | opcode as u8;
        buf[start + 1] = len as u8;
        return Some(start);
    }
    let mut header = [0u8; 10];
    let n = encode_header(&mut header, true, opcode, len);
    let start = payload.start.checked_sub(n).filter(|&s| s >= floor)?;
    buf[start..payload.start].copy_from_slice(&header[..n]);
    Some(start)
}

/// Appends one complete, unfragmented server frame to `out`.
#[inline(always)]
pub fn write_frame(out: &mut Vec<u8>, opcode: OpCode, payload: &[u8]) {
    let len = payload.len();
    if len < 126 {
        // The usual chat or echo frame: a two-byte header of known size
        // costs two stores, not a copy of a variable-length slice.
        out.reserve(2 + len);
        out.extend_from_slice(&[0x80 | opcode as u8, len as u8]);
        out.extend_from_slice(payload);
    } else {
        write_long_frame(out, opcode, payload);
    }
}

/// [`write_frame`] for a payload of 126 bytes or more.
#[inline(never)]
fn write_long_frame(out: &mut Vec<u8>, opcode: OpCode, payload: &[u8]) {
    let mut header = [0u8; 10];
    let n = encode_header(&mut header, true, opcode, payload.len());
    out.reserve(n + payload.len());
    out.extend_from_slice(&header[..n]);
    out.extend_from_slice(payload);
}

/// Appends a close frame carrying `code` and `reason` to `out`.
///
/// The reason is cut, on a character boundary, to fit the 123 bytes a close
/// payload leaves for it.
pub fn write_close(out: &mut Vec<u8>, code: CloseCode, reason: &str) {
    let mut end = reason.len().min(MAX_CONTROL_PAYLOAD - 2);
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    let mut payload = [0u8; MAX_CONTROL_PAYLOAD];
    payload[..2].copy_from_slice(&code.as_u16().to_be_bytes());
    payload[2..2 + end].copy_from_slice(&reason.as_bytes()[..end]);
    write_frame(out, OpCode::Close, &payload[..2 + end]);
}

/// A data message's kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MessageKind {
    /// UTF-8 text.
    Text,
    /// Arbitrary bytes.
    Binary,
}

impl MessageKind {
    /// The opcode that starts a message of this kind.
    pub const fn opcode(self) -> OpCode {
        match self {
            MessageKind::Text => OpCode::Text,
            MessageKind::Binary => OpCode::Binary,
        }
    }
}

/// Where a complete message's or control frame's payload is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Payload {
    /// In the input slice the decoder was given, unmasked, at this range.
    Input(Range<usize>),
    /// In the decoder, as the frame came in pieces: take a message with
    /// [`Decoder::take_message`], read a control payload with
    /// [`Decoder::control_payload`].
    Assembled,
}

/// What the decoder found. Payloads are told by where they are, not
/// copied: the event is a few words, cheap to hand back once per message.
#[derive(Debug)]
pub enum Event {
    /// A complete data message; text is already checked to be UTF-8.
    Message {
        /// Text or binary.
        kind: MessageKind,
        /// Where the payload is.
        payload: Payload,
    },
    /// A ping, to be answered with a pong carrying the same payload.
    Ping(Payload),
    /// A pong.
    Pong(Payload),
    /// A close frame; its payload is not yet validated (see `close.rs`).
    Close(Payload),
}

#[derive(Debug, Clone, Copy)]
enum State {
    /// Waiting for (the rest of) a frame header.
    Header,
    /// Discarding the rest of a frame that was refused, so that the frames
    /// after it (above all the peer's answer to our close) still parse.
    Skip { remaining: u64 },
    /// After a length that cannot be right nothing that follows can be
    /// framed; all further input is discarded.
    Broken,
    /// Inside a frame's payload.
    Payload {
        opcode: OpCode,
        fin: bool,
        key: [u8; 4],
        remaining: u64,
        /// Where in the masking key the next payload byte falls: the
        /// payload offset modulo 4, all that unmasking needs of it. A byte,
        /// so that the decoder of every idle connection is 8 bytes smaller.
        offset: u8,
    },
}

/// Bytes a decoder keeps between reads: a null pointer until the first byte,
/// so that the decoder of an idle connection is 8 bytes per buffer rather
/// than a 24-byte empty vector.
// The box is the point: eight bytes per buffer instead of 24.
#[allow(clippy::box_collection)]
#[derive(Debug, Default)]
struct Spill(Option<Box<Vec<u8>>>);

impl Spill {
    fn vec(&mut self) -> &mut Vec<u8> {
        self.0.get_or_insert_with(Box::default)
    }

    fn extend_from_slice(&mut self, bytes: &[u8]) {
        if !bytes.is_empty() {
            self.vec().extend_from_slice(bytes);
        }
    }

    fn push(&mut self, byte: u8) {
        self.vec().push(byte);
    }

    /// Empties it, keeping its capacity for the next bytes.
    fn clear(&mut self) {
        if let Some(v) = &mut self.0 {
            v.clear();
        }
    }

    fn capacity(&self) -> usize {
        self.0.as_ref().map_or(0, |v| v.capacity())
    }

    /// The bytes, leaving it unallocated.
    fn take(&mut self) -> Vec<u8> {
        self.0.take().map(|b| *b).unwrap_or_default()
    }
}

impl std::ops::Deref for Spill {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        self.0.as_deref().map_or(&[], Vec::as_slice)
    }
}

/// Streaming decoder for the frames one client sends.
///
/// Feed it each read's bytes with [`Decoder::decode`]; it returns one event
/// at a time and keeps only what an unfinished frame needs.
#[derive(Debug)]
pub struct Decoder {
    state: State,
    /// An unfinished header, or the payload of a control frame that came in
    /// pieces: unfinished, or reported and held until the next call.
    partial: Spill,
    /// Set while `partial` holds a reported control frame's payload.
    holding_control: bool,
    /// The kind of the data message being assembled, if one is.
    assembling: Option<MessageKind>,
    /// The message being assembled: fragments so far, or a frame split
    /// across reads.
    message: Spill,
    utf8: Utf8Validator,
    /// The largest data message accepted, in bytes.
    /// A `u32`, 8 bytes less per connection: a limit above 4 GiB is taken
    /// as 4 GiB - 1.
    max_message: u32,
}

impl Decoder {
    /// A decoder that accepts data messages of up to `max_message` bytes.
    pub fn new(max_message: usize) -> Self {
        Decoder {
            state: State::Header,
            partial: Spill::default(),
            holding_control: false,
            assembling: None,
            message: Spill::default(),
            utf8: Utf8Validator::new(),
            max_message: u32::try_from(max_message).unwrap_or(u32::MAX),
        }
    }

    /// Heap bytes this decoder holds.
    pub fn buffered_capacity(&self) -> usize {
        self.partial.capacity() + self.message.capacity()
    }

    /// Takes the payload of the message just reported as
    /// [`Payload::Assembled`]. The decoder keeps no buffer after it: an
    /// idle connection holds none.
    pub fn take_message(&mut self) -> Vec<u8> {
        self.message.take()
    }

    /// The payload of the control frame just reported, whether it lies in
    /// `input` (the slice that call was given) or in the decoder.
    pub fn control_payload<'a>(&'a self, input: &'a [u8], payload: &Payload) -> &'a [u8] {
        match payload {
            Payload::Input(range) => &input[range.clone()],
            Payload::Assembled => &self.partial,
        }
    }

    /// Decodes from `input[*pos..]`, advancing `*pos` past what it used.
    ///
    /// Returns `Ok(None)` once all input is used, with any unfinished frame
    /// kept for the next call. Unmasks payloads in place, which is why the
    /// input is mutable.
    ///
    /// # Errors
    ///
    /// A violation; the connection must then be closed with the error's
    /// close code. Calls after it skip the refused frame and go on finding
    /// frames (the peer's close, above all) where the stream still allows.
    #[inline]
    pub fn decode(
        &mut self,
        input: &mut [u8],
        pos: &mut usize,
    ) -> Result<Option<Event>, FrameError> {
        // No state is changed by no input: nothing that a call leaves
        // behind waits for anything but more bytes.
        if *pos == input.len() {
            return Ok(None);
        }
        if let Some(found) = self.short_message(input, pos) {
            return found;
        }
        self.decode_frames(input, pos)
    }

    /// [`Decoder::decode`] beyond its fast paths: the general state machine.
    #[inline(never)]
    fn decode_frames(
        &mut self,
        input: &mut [u8],
        pos: &mut usize,
    ) -> Result<Option<Event>, FrameError> {
        loop {
            match self.state {
                State::Header => {
                    let Some(raw) = self.read_header(input, pos) else {
                        return Ok(None);
                    };
                    let header = match check_header(&raw) {
                        Ok(header) => header,
                        // A length that cannot be trusted leaves nothing
                        // to skip by; any other refused frame is skipped.
                        Err(e @ FrameError::LengthOverflow) => {
                            return Err(self.fail(e, State::Broken));
                        }
                        Err(e) => {
                            let skip = State::Skip {
                                remaining: raw.payload_len,
                            };
                            return Err(self.fail(e, skip));
                        }
                    };
                    if let Some(event) = self.start_frame(header, input, pos)? {
                        return Ok(Some(event));
                    }
                }
                State::Skip { remaining } => {
                    let n = remaining.min((input.len() - *pos) as u64);
                    *pos += n as usize;
                    if remaining > n {
                        self.state = State::Skip {
                            remaining: remaining - n,
                        };
                        return Ok(None);
                    }
                    self.state = State::Header;
                }
                State::Broken => {
                    *pos = input.len();
                    return Ok(None);
                }
                State::Payload {
                    opcode,
                    fin,
                    key,
                    remaining,
                    offset,
                } => {
                    let available = input.len() - *pos;
                    let n = remaining.min(available as u64) as usize;
                    let chunk = &mut input[*pos..*pos + n];
                    *pos += n;
                    let ascii = unmask_ascii(chunk, key, usize::from(offset));
                    let remaining = remaining - n as u64;
                    if opcode.is_control() {
                        self.partial.extend_from_slice(chunk);
                    } else {
                        // ASCII after a whole code point leaves the
                        // validator as it was.
                        if self.assembling == Some(MessageKind::Text)
                            && !(ascii && self.utf8.is_complete())
                            && self.utf8.feed(chunk).is_err()
                        {
                            let skip = State::Skip { remaining };
                            return Err(self.fail(FrameError::InvalidUtf8, skip));
                        }
                        self.message.extend_from_slice(chunk);
                    }
                    if remaining > 0 {
                        let offset = ((usize::from(offset) + n) & 3) as u8;
                        self.state = State::Payload {
                            opcode,
                            fin,
                            key,
                            remaining,
                            offset,
                        };
                        return Ok(None);
                    }
                    self.state = State::Header;
                    if opcode.is_control() {
                        // Held in `partial` until the next call.
                        self.holding_control = true;
                        return Ok(Some(control_event(opcode, Payload::Assembled)));
                    }
                    if fin {
                        return self.finish_assembled().map(Some);
                    }
                }
            }
        }
    }

    /// The common case, settled without the general state machine: a whole
    /// single-frame text or binary message under 126 bytes at `input[*pos..]`,
    /// with no frame or message in progress. `None` leaves everything to
    /// the general path; anything else is what [`Decoder::decode`] returns.
    #[inline(always)]
    fn short_message(
        &mut self,
        input: &mut [u8],
        pos: &mut usize,
    ) -> Option<Result<Option<Event>, FrameError>> {
        if !matches!(self.state, State::Header)
            || self.assembling.is_some()
            || !self.partial.is_empty()
        {
            return None;
        }
        let &[b0, b1, k0, k1, k2, k3, ..] = &input[*pos..] else {
            return None;
        };
        // FIN set, no reserved bits, text or binary; masked, 7-bit length.
        let kind = match b0 {
            0x81 => MessageKind::Text,
            0x82 => MessageKind::Binary,
            _ => return None,
        };
        let len = usize::from(b1 ^ 0x80);
        let start = *pos + 6;
        if len >= 126 || input.len() - start < len || len as u64 > u64::from(self.max_message) {
            return None;
        }
        let range = start..start + len;
        *pos = range.end;
        let payload = &mut input[range.clone()];
        let ascii = unmask_short_ascii(payload, [k0, k1, k2, k3], 0);
        if kind == MessageKind::Text && !ascii && std::str::from_utf8(payload).is_err() {
            return Some(Err(self.fail(FrameError::InvalidUtf8, State::Header)));
        }
        Some(Ok(Some(Event::Message {
            kind,
            payload: Payload::Input(range),
        })))
    }

    /// Reads a whole header, from `input` or from what earlier reads left.
    fn read_header(&mut self, input: &[u8], pos: &mut usize) -> Option<RawHeader> {
        let available = &input[*pos..];
        if self.partial.is_empty() || self.release_control() {
            if let Some(header) = split_header(available) {
                *pos += header.header_len;
                return Some(header);
            }
            // Less than a whole header: at most 13 bytes are kept.
            self.partial.extend_from_slice(available);
            *pos = input.len();
            return None;
        }
        // Complete the header byte by byte from what we kept: it is at most
        // 14 bytes, and this path runs only for headers split across reads.
        let mut used = 0;
        loop {
            if let Some(header) = split_header(&self.partial) {
                self.partial.clear();
                *pos += used;
                return Some(header);
            }
            let Some(&byte) = available.get(used) else {
                *pos += used;
                return None;
            };
            self.partial.push(byte);
            used += 1;
        }
    }

    /// Drops a control payload held since the last call; true if that
    /// leaves no partial header.
    fn release_control(&mut self) -> bool {
        if !self.holding_control {
            return false;
        }
        self.holding_control = false;
        self.partial.clear();
        true
    }

    /// Checks a new frame against the message in progress, and returns its
    /// event at once when the whole frame is already in `input`.
    fn start_frame(
        &mut self,
        header: FrameHeader,
        input: &mut [u8],
        pos: &mut usize,
    ) -> Result<Option<Event>, FrameError> {
        let len = header.payload_len;
        let skip = State::Skip { remaining: len };
        // RFC 6455 5.1: the server MUST close the connection upon receiving
        // a frame that is not masked.
        let Some(key) = header.mask else {
            return Err(self.fail(FrameError::Unmasked, skip));
        };
        let available = (input.len() - *pos) as u64;
        match header.opcode {
            OpCode::Text | OpCode::Binary => {
                // RFC 6455 5.4: fragments of one message are not interleaved
                // with another message's.
                if self.assembling.is_some() {
                    return Err(self.fail(FrameError::ExpectedContinuation, skip));
                }
                if len > u64::from(self.max_message) {
                    return Err(self.fail(FrameError::MessageTooBig, skip));
                }
                let kind = if header.opcode == OpCode::Text {
                    MessageKind::Text
                } else {
                    MessageKind::Binary
                };
                if header.fin && len <= available {
                    // The common case: a whole message in one read.
                    let range = *pos..*pos + len as usize;
                    *pos = range.end;
                    let ascii = unmask_ascii(&mut input[range.clone()], key, 0);
                    if kind == MessageKind::Text
                        && !ascii
                        && std::str::from_utf8(&input[range.clone()]).is_err()
                    {
                        return Err(self.fail(FrameError::InvalidUtf8, State::Header));
                    }
                    return Ok(Some(Event::Message {
                        kind,
                        payload: Payload::Input(range),
                    }));
                }
                self.assembling = Some(kind);
                self.utf8.reset();
                self.message.clear();
            }
            OpCode::Continuation => {
                if self.assembling.is_none() {
                    return Err(self.fail(FrameError::UnexpectedContinuation, skip));
                }
                if len > (self.max_message as usize - self.message.len()) as u64 {
                    return Err(self.fail(FrameError::MessageTooBig, skip));
                }
            }
            OpCode::Close | OpCode::Ping | OpCode::Pong => {
                if len <= available {
                    let range = *pos..*pos + len as usize;
                    *pos = range.end;
                    apply_mask(&mut input[range.clone()], key, 0);
                    return Ok(Some(control_event(header.opcode, Payload::Input(range))));
                }
            }
        }
        self.state = State::Payload {
            opcode: header.opcode,
            fin: header.fin,
            key,
            remaining: len,
            offset: 0,
        };
        Ok(None)
    }

    /// Records a violation: the message in progress is dropped, and the
    /// decoder goes on in `next`, which skips whatever of the refused frame
    /// is still to come. The caller closes the connection; the decoder only
    /// keeps reading well enough to find the peer's close frame.
    fn fail(&mut self, err: FrameError, next: State) -> FrameError {
        self.state = next;
        self.assembling = None;
        self.message = Spill::default();
        self.partial = Spill::default();
        self.holding_control = false;
        err
    }

    /// Ends the assembled message.
    fn finish_assembled(&mut self) -> Result<Event, FrameError> {
        let kind = self
            .assembling
            .take()
            .expect("a data frame runs only inside a message");
        // RFC 6455 8.1: the whole message must be valid UTF-8, so it may
        // not end inside a code point.
        if kind == MessageKind::Text && !self.utf8.is_complete() {
            return Err(self.fail(FrameError::InvalidUtf8, State::Header));
        }
        Ok(Event::Message {
            kind,
            payload: Payload::Assembled,
        })
    }
}

fn control_event(opcode: OpCode, payload: Payload) -> Event {
    match opcode {
        OpCode::Ping => Event::Ping(payload),
        OpCode::Pong => Event::Pong(payload),
        _ => Event::Close(payload),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Builds a masked client frame.
    fn client_frame(fin: bool, opcode: u8, payload: &[u8]) -> Vec<u8> {
        let key = [0xA1, 0xB2, 0xC3, 0xD4];
        let mut out = vec![(u8::from(fin) << 7) | opcode];
        let len = payload.len();
        if len < 126 {
            out.push(0x80 | len as u8);
        } else if len <= 0xFFFF {
            out.push(0x80 | 126);
            out.extend_from_slice(&(len as u16).to_be_bytes());
        } else {
            out.push(0x80 | 127);
            out.extend_from_slice(&(len as u64).to_be_bytes());
        }
        out.extend_from_slice(&key);
        let mut body = payload.to_vec();
        apply_mask(&mut body, key, 0);
        out.extend_from_slice(&body);
        out
    }

    /// Feeds `stream` split into the given piece sizes; returns each event as
    /// (label, bytes), or the error.
    fn run(
        stream: &[u8],
        pieces: &[usize],
        max: usize,
    ) -> Result<Vec<(String, Vec<u8>)>, FrameError> {
        let mut d = Decoder::new(max);
        let mut out = Vec::new();
        let mut rest = stream.to_vec();
        let mut sizes = pieces.iter().copied().cycle();
        while !rest.is_empty() {
            let n = sizes.next().unwrap_or(rest.len()).clamp(1, rest.len());
            let mut piece: Vec<u8> = rest.drain(..n).collect();
            let mut pos = 0;
            while let Some(ev) = d.decode(&mut piece, &mut pos)? {
                out.push(match ev {
                    Event::Message { kind, payload } => {
                        let bytes = match payload {
                            Payload::Input(r) => piece[r].to_vec(),
                            Payload::Assembled => d.take_message(),
                        };
                        (format!("{kind:?}"), bytes)
                    }
                    Event::Ping(p) => ("ping".into(), d.control_payload(&piece, &p).to_vec()),
                    Event::Pong(p) => ("pong".into(), d.control_payload(&piece, &p).to_vec()),
                    Event::Close(p) => ("close".into(), d.control_payload(&piece, &p).to_vec()),
                });
            }
            assert_eq!(pos, piece.len(), "decoder must use all input");
        }
        Ok(out)
    }

    #[test]
    fn rfc_examples_parse() {
        // RFC 6455 5.7: a single-frame masked text message "Hello".
        let frame = [
            0x81, 0x85, 0x37, 0xfa, 0x21, 0x3d, 0x7f, 0x9f, 0x4d, 0x51, 0x58,
        ];
        let events = run(&frame, &[frame.len()], 1024).unwrap();
        assert_eq!(events, vec![("Text".into(), b"Hello".to_vec())]);
        // RFC 6455 5.7: 256 bytes in one unmasked binary frame has a 16-bit length.
        let h = parse_header(&[0x82, 0x7E, 0x01, 0x00]).unwrap().unwrap();
        assert_eq!((h.payload_len, h.header_len, h.mask), (256, 4, None));
        // And 64 KiB has a 64-bit length.
        let h = parse_header(&[0x82, 0x7F, 0, 0, 0, 0, 0, 1, 0, 0])
            .unwrap()
            .unwrap();
        assert_eq!((h.payload_len, h.header_len), (65536, 10));
    }

    #[test]
    fn header_needs_all_its_bytes() {
        let frame = client_frame(true, 1, &[b'x'; 300]);
        for cut in 0..8 {
            assert_eq!(parse_header(&frame[..cut]), Ok(None), "cut {cut}");
        }
        assert!(parse_header(&frame[..8]).unwrap().is_some());
    }

    #[test]
    fn same_events_however_split() {
        let mut stream = Vec::new();
        stream.extend(client_frame(true, 1, b"hello"));
        stream.extend(client_frame(false, 1, "κό".as_bytes()));
        stream.extend(client_frame(true, 9, b"ping!"));
        stream.extend(client_frame(false, 0, "σμ".as_bytes()));
        stream.extend(client_frame(true, 0, "ε".as_bytes()));
        stream.extend(client_frame(true, 2, &vec![7u8; 70_000]));
        stream.extend(client_frame(true, 2, &[]));
        stream.extend(client_frame(true, 8, &[0x03, 0xE8]));
        let whole = run(&stream, &[stream.len()], 1 << 20).unwrap();
        assert_eq!(whole.len(), 6);
        assert_eq!(whole[2], ("Text".into(), "κόσμε".as_bytes().to_vec()));
        assert_eq!(whole[1], ("ping".into(), b"ping!".to_vec()));
        for pieces in [&[1][..], &[2], &[3, 7], &[13], &[1000, 1]] {
            assert_eq!(
                run(&stream, pieces, 1 << 20).unwrap(),
                whole,
                "pieces {pieces:?}"
            );
        }
    }

    #[test]
    fn length_forms() {
        for len in [0, 125, 126, 65535, 65536, 200_000] {
            let payload = vec![b'a'; len];
            let events = run(&client_frame(true, 1, &payload), &[4096], 1 << 20).unwrap();
            assert_eq!(events, vec![("Text".into(), payload)], "len {len}");
        }
    }

    #[test]
    fn violations_map_to_close_codes() {
        let unmasked = [0x81, 0x01, b'a'];
        assert_eq!(run(&unmasked, &[3], 100), Err(FrameError::Unmasked));
        let mut rsv = client_frame(true, 1, b"a");
        rsv[0] |= 0x40;
        assert_eq!(run(&rsv, &[9], 100), Err(FrameError::ReservedBits));
        assert_eq!(
            run(&client_frame(true, 3, b""), &[9], 100),
            Err(FrameError::ReservedOpcode(3))
        );
        assert_eq!(
            run(&client_frame(false, 9, b""), &[9], 100),
            Err(FrameError::FragmentedControl)
        );
        assert_eq!(
            run(&client_frame(true, 9, &[0; 126]), &[200], 100),
            Err(FrameError::ControlTooBig)
        );
        assert_eq!(
            run(&client_frame(true, 0, b"a"), &[9], 100),
            Err(FrameError::UnexpectedContinuation)
        );
        let mut two_starts = client_frame(false, 1, b"a");
        two_starts.extend(client_frame(true, 1, b"b"));
        assert_eq!(
            run(&two_starts, &[100], 100),
            Err(FrameError::ExpectedContinuation)
        );
        let huge = [0x82, 0xFF, 0x80, 0, 0, 0, 0, 0, 0, 0, 1, 2, 3, 4];
        assert_eq!(run(&huge, &[14], 100), Err(FrameError::LengthOverflow));
        assert_eq!(FrameError::LengthOverflow.close_code(), CloseCode::Protocol);
    }

    #[test]
    fn declared_length_over_limit_fails_before_payload_arrives() {
        // A header that claims 1 GiB: rejected from the header alone, so
        // nothing is allocated for it.
        let mut header = vec![0x82, 0xFF];
        header.extend_from_slice(&(1u64 << 30).to_be_bytes());
        header.extend_from_slice(&[1, 2, 3, 4]);
        let mut d = Decoder::new(1 << 20);
        let mut pos = 0;
        assert_eq!(
            d.decode(&mut header, &mut pos).unwrap_err(),
            FrameError::MessageTooBig
        );
        assert_eq!(d.buffered_capacity(), 0);
        assert_eq!(FrameError::MessageTooBig.close_code(), CloseCode::TooBig);
    }

    #[test]
    fn fragments_count_toward_the_limit() {
        let mut stream = client_frame(false, 2, &[0; 60]);
        stream.extend(client_frame(true, 0, &[0; 60]));
        assert_eq!(run(&stream, &[1000], 100), Err(FrameError::MessageTooBig));
        assert_eq!(run(&stream, &[1000], 120).unwrap().len(), 1);
    }

    #[test]
    fn invalid_utf8_fails_at_the_first_bad_fragment() {
        // The bad fragment is followed by an unfinished frame that never
        // completes; the error must come anyway.
        let mut stream = client_frame(false, 1, "κόσμε".as_bytes());
        stream.extend(client_frame(false, 0, b"\xf4\x90\x80\x80"));
        stream.extend(&client_frame(true, 0, b"more")[..3]);
        assert_eq!(
            run(&stream, &[stream.len()], 100),
            Err(FrameError::InvalidUtf8)
        );
        // Whole-frame fast path, too.
        assert_eq!(
            run(&client_frame(true, 1, b"\xff"), &[10], 100),
            Err(FrameError::InvalidUtf8)
        );
        // A message may not end inside a code point.
        let mut cut = client_frame(false, 1, b"\xe2\x82");
        cut.extend(client_frame(true, 0, b""));
        assert_eq!(run(&cut, &[100], 100), Err(FrameError::InvalidUtf8));
    }

    #[test]
    fn after_a_refused_frame_the_peers_close_is_still_found() {
        // A frame refused from its header alone, whose payload still
        // arrives; then the client's close. Split every way, the decoder
        // reports the error, skips the payload and finds the close.
        let mut stream = client_frame(true, 2, &[0x61; 300]);
        let close = client_frame(true, 8, &1000u16.to_be_bytes());
        stream.extend_from_slice(&close);
        for cut in 1..stream.len() {
            let mut d = Decoder::new(100);
            let (mut a, mut b) = (stream[..cut].to_vec(), stream[cut..].to_vec());
            let mut pos = 0;
            let mut seen = Vec::new();
            for piece in [&mut a, &mut b] {
                pos = 0;
                loop {
                    match d.decode(piece, &mut pos) {
                        Ok(Some(Event::Close(p))) => {
                            let bytes = d.control_payload(piece, &p);
                            seen.push(format!("close {bytes:x?}"));
                        }
                        Ok(Some(other)) => panic!("{other:?}"),
                        Ok(None) => break,
                        Err(e) => seen.push(format!("{e:?}")),
                    }
                }
            }
            assert_eq!(pos, b.len());
            assert_eq!(
                seen,
                vec!["MessageTooBig".to_string(), "close [3, e8]".into()],
                "cut {cut}"
            );
        }
        // Invalid UTF-8 found mid-frame: the rest of that frame is skipped.
        let mut stream = client_frame(true, 1, b"ok\xffmore bytes here");
        stream.extend_from_slice(&close);
        let mut d = Decoder::new(100);
        let (mut a, mut b) = (stream[..4].to_vec(), stream[4..].to_vec());
        let mut pos = 0;
        assert!(d.decode(&mut a, &mut pos).unwrap().is_none());
        pos = 0;
        assert_eq!(
            d.decode(&mut b, &mut pos).unwrap_err(),
            FrameError::InvalidUtf8
        );
        assert!(matches!(
            d.decode(&mut b, &mut pos),
            Ok(Some(Event::Close(_)))
        ));
    }

    #[test]
    fn a_frame_refused_for_its_header_is_skipped_whole() {
        let close = client_frame(true, 8, &[]);
        let mut rsv = client_frame(true, 1, b"payload");
        rsv[0] |= 0x20;
        let mut opcode = client_frame(true, 0xB, b"payload");
        opcode.extend_from_slice(&close);
        rsv.extend_from_slice(&close);
        for mut stream in [rsv, opcode] {
            let mut d = Decoder::new(100);
            let mut pos = 0;
            assert!(d.decode(&mut stream, &mut pos).is_err());
            assert!(matches!(
                d.decode(&mut stream, &mut pos),
                Ok(Some(Event::Close(_)))
            ));
        }
    }

    #[test]
    fn after_an_impossible_length_all_input_is_discarded() {
        let mut d = Decoder::new(100);
        let mut bad = vec![0x82, 0xFF, 0x80, 0, 0, 0, 0, 0, 0, 0, 1, 2, 3, 4];
        bad.extend(client_frame(true, 8, &[]));
        let mut pos = 0;
        assert_eq!(
            d.decode(&mut bad, &mut pos).unwrap_err(),
            FrameError::LengthOverflow
        );
        assert!(d.decode(&mut bad, &mut pos).unwrap().is_none());
        assert_eq!(pos, bad.len());
    }

    #[test]
    fn binary_is_not_utf8_checked() {
        let events = run(&client_frame(true, 2, b"\xff\xfe"), &[1], 100).unwrap();
        assert_eq!(events, vec![("Binary".into(), b"\xff\xfe".to_vec())]);
    }

    #[test]
    fn encoder_length_forms_round_trip() {
        for len in [0usize, 125, 126, 65535, 65536] {
            let mut out = Vec::new();
            write_frame(&mut out, OpCode::Binary, &vec![1; len]);
            let h = parse_header(&out).unwrap().unwrap();
            assert_eq!(h.payload_len as usize, len);
            assert_eq!(h.header_len + len, out.len());
            assert_eq!(h.mask, None);
        }
    }

    #[test]
    fn a_frame_made_in_place_is_the_frame_write_frame_encodes() {
        for len in [0usize, 1, 125, 126, 65535, 65536] {
            let payload: Vec<u8> = (0..len).map(|i| i as u8).collect();
            let request = client_frame(true, 0x2, &payload);
            let mut buf = request.clone();
            let at = buf.len() - len;
            apply_mask(&mut buf[at..], request[at - 4..at].try_into().unwrap(), 0);
            let start = frame_in_place(&mut buf, at..at + len, 0, OpCode::Binary).unwrap();
            let mut expected = Vec::new();
            write_frame(&mut expected, OpCode::Binary, &payload);
            assert_eq!(&buf[start..], expected, "len {len}");
            // Not below the floor: the bytes there are taken.
            let mut untouched = request.clone();
            assert_eq!(
                frame_in_place(&mut untouched, at..at + len, start + 1, OpCode::Binary),
                None
            );
            assert_eq!(untouched, request);
        }
        // A payload at the start of the buffer, its header in an earlier
        // read, has no room before it.
        assert_eq!(frame_in_place(&mut [0; 4], 1..4, 0, OpCode::Text), None);
    }

    #[test]
    fn close_reason_is_cut_on_a_char_boundary() {
        let mut out = Vec::new();
        write_close(&mut out, CloseCode::GoingAway, &"é".repeat(100));
        let h = parse_header(&out).unwrap().unwrap();
        assert!(h.payload_len <= 125);
        let reason = &out[h.header_len + 2..];
        assert!(std::str::from_utf8(reason).is_ok());
        assert_eq!(&out[h.header_len..h.header_len + 2], &1001u16.to_be_bytes());
    }
}
