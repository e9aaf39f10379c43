//! Arbitrary bytes into the frame decoder, fed whole, a byte at a time and
//! in pseudo-random pieces.
//!
//! Checks: no panic or hang; the decoder uses all input; the events
//! (messages, control frames and errors, in order) are the same however
//! the stream is split; text messages are UTF-8; no message passes the
//! limit; the decoder's buffers stay within the limit.
//!
//! Input: the first byte picks the message limit, the rest is the stream.

#![no_main]

use libfuzzer_sys::fuzz_target;
use roomcast::frame::{Decoder, Event, FrameError, MessageKind, Payload};
use roomcast_fuzz::cut_plans;

/// Message limits to try, small ones so that they are reached.
const LIMITS: [usize; 8] = [0, 1, 2, 16, 125, 126, 1000, 70_000];

#[derive(Debug, PartialEq, Eq)]
enum Seen {
    Message(MessageKind, Vec<u8>),
    Ping(Vec<u8>),
    Pong(Vec<u8>),
    Close(Vec<u8>),
    Error(FrameError),
}

fn run(stream: &[u8], plan: &[usize], max: usize) -> Vec<Seen> {
    let mut decoder = Decoder::new(max);
    let mut seen = Vec::new();
    let mut at = 0;
    for &n in plan {
        let mut piece = stream[at..at + n].to_vec();
        at += n;
        let mut pos = 0;
        loop {
            let before = pos;
            let event = match decoder.decode(&mut piece, &mut pos) {
                Ok(None) => break,
                Ok(Some(event)) => event,
                Err(e) => {
                    seen.push(Seen::Error(e));
                    continue;
                }
            };
            assert!(before <= pos && pos <= piece.len());
            seen.push(match event {
                Event::Message { kind, payload } => {
                    let bytes = match payload {
                        Payload::Input(range) => {
                            assert!(range.end <= pos, "message range past what was used");
                            piece[range].to_vec()
                        }
                        Payload::Assembled => decoder.take_message(),
                    };
                    assert!(bytes.len() <= max, "message of {} over {max}", bytes.len());
                    if kind == MessageKind::Text {
                        assert!(std::str::from_utf8(&bytes).is_ok(), "text not UTF-8");
                    }
                    Seen::Message(kind, bytes)
                }
                Event::Ping(p) => Seen::Ping(decoder.control_payload(&piece, &p).to_vec()),
                Event::Pong(p) => Seen::Pong(decoder.control_payload(&piece, &p).to_vec()),
                Event::Close(p) => Seen::Close(decoder.control_payload(&piece, &p).to_vec()),
            });
        }
        assert_eq!(pos, piece.len(), "the decoder uses all input");
        // The assembly buffer may grow to twice what it holds, as a Vec
        // does; a control payload or header adds at most 125 bytes more.
        let held = decoder.buffered_capacity();
        assert!(
            held <= 2 * max + 512,
            "decoder holds {held} bytes, limit {max}"
        );
    }
    seen
}

fuzz_target!(|data: &[u8]| {
    let Some((&pick, stream)) = data.split_first() else {
        return;
    };
    let max = LIMITS[usize::from(pick) % LIMITS.len()];
    let plans = cut_plans(stream, stream.len());
    let whole = run(stream, &plans[0], max);
    for plan in &plans[1..] {
        assert_eq!(run(stream, plan, max), whole, "plan {plan:?}");
    }
});
