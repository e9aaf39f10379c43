//! Micro-benchmarks of roomcast's hot paths, through its public API.
//!
//!     cargo bench -p roomcast-bench --bench micro

use std::hint::black_box;
use std::io::{self, IoSlice, Read, Write};

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};

use roomcast::conn::{Engine, Limits, Transport};
use roomcast::frame::{parse_header, write_frame, OpCode};
use roomcast::http::{accept_key, check_upgrade, parse_request};
use roomcast::mask::{apply_mask, unmask_ascii};
use roomcast::slab::Key;
use roomcast::utf8::Utf8Validator;

const KEY: [u8; 4] = [0x37, 0xfa, 0x21, 0x3d];

fn masked(payload: &[u8]) -> Vec<u8> {
    assert!(payload.len() < 126);
    let mut out = vec![0x81, 0x80 | payload.len() as u8];
    out.extend_from_slice(&KEY);
    out.extend(payload.iter().enumerate().map(|(i, b)| b ^ KEY[i & 3]));
    out
}

fn frame_header(c: &mut Criterion) {
    let small = masked(&[b'x'; 32]);
    let mut medium = vec![0x82, 0x80 | 126, 0x04, 0x00];
    medium.extend_from_slice(&KEY);
    c.bench_function("frame header parse (7-bit length)", |b| {
        b.iter(|| parse_header(black_box(&small)))
    });
    c.bench_function("frame header parse (16-bit length)", |b| {
        b.iter(|| parse_header(black_box(&medium)))
    });
}

fn unmask(c: &mut Criterion) {
    let mut group = c.benchmark_group("unmask");
    for size in [32usize, 1024, 64 * 1024] {
        let mut data = vec![0x5au8; size];
        group.throughput(Throughput::Bytes(size as u64));
        group.bench_function(format!("{size} B"), |b| {
            b.iter(|| apply_mask(black_box(&mut data), KEY, 0))
        });
        // What a text frame's payload costs: unmasking and the UTF-8 check
        // of ASCII text, in one pass.
        group.bench_function(format!("{size} B, with ASCII check"), |b| {
            b.iter(|| unmask_ascii(black_box(&mut data), KEY, 0))
        });
    }
    group.finish();
}

fn utf8(c: &mut Criterion) {
    let mut group = c.benchmark_group("utf8 validation");
    let ascii = "hello, room ".repeat(86).into_bytes();
    let mixed = "grüße, 世界 🙂 ".repeat(50).into_bytes();
    for (name, text) in [("1 KiB ascii", &ascii), ("1 KiB mixed", &mixed)] {
        group.throughput(Throughput::Bytes(text.len() as u64));
        group.bench_function(name, |b| {
            b.iter(|| {
                let mut v = Utf8Validator::new();
                let fed = v.feed(black_box(text));
                (fed, v.is_complete())
            })
        });
    }
    group.finish();
}

fn encode(c: &mut Criterion) {
    let mut out = Vec::with_capacity(4096);
    let payload = [b'x'; 32];
    c.bench_function("frame encode 32 B", |b| {
        b.iter(|| {
            out.clear();
            write_frame(&mut out, OpCode::Text, black_box(&payload));
        })
    });
}

const UPGRADE: &[u8] = b"GET /chat HTTP/1.1\r\nHost: example.com\r\nUpgrade: websocket\r\n\
    Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
    Sec-WebSocket-Version: 13\r\nUser-Agent: bench\r\n\r\n";

fn handshake(c: &mut Criterion) {
    c.bench_function("handshake parse + check", |b| {
        b.iter(|| {
            let (req, used) = parse_request(black_box(UPGRADE))
                .expect("valid")
                .expect("complete");
            (check_upgrade(&req).is_ok(), used)
        })
    });
    c.bench_function("handshake accept key", |b| {
        b.iter(|| accept_key(black_box(b"dGhlIHNhbXBsZSBub25jZQ==")))
    });
}

/// A socket that takes every byte and keeps none.
struct Sink;

impl Read for Sink {
    fn read(&mut self, _: &mut [u8]) -> io::Result<usize> {
        Err(io::ErrorKind::WouldBlock.into())
    }
}

impl Write for Sink {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        Ok(buf.len())
    }
    fn write_vectored(&mut self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        Ok(bufs.iter().map(|b| b.len()).sum())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Transport for Sink {
    fn shutdown_write(&mut self) -> io::Result<()> {
        Ok(())
    }
}

fn room(members: usize) -> (Engine<Sink>, Key) {
    let limits = Limits {
        max_message: 1 << 20,
        echo_max_message: 1 << 20,
        max_queued: 1 << 22,
        handshake_timeout: 10_000,
        close_timeout: 5_000,
        ping_interval: 30_000,
        max_age: 3_600_000,
    };
    let mut engine = Engine::new(limits, "bench");
    let join = masked(br#"{"type":"join","roomId":"r"}"#);
    let mut first = None;
    for _ in 0..members {
        let key = engine.accept(Sink, 0);
        let mut bytes = UPGRADE.to_vec();
        bytes.extend_from_slice(&join);
        engine.on_input(key, &mut bytes, 0);
        engine.flush(0);
        first.get_or_insert(key);
    }
    (engine, first.expect("members > 0"))
}

fn broadcast(c: &mut Criterion) {
    let (mut engine, from) = room(1000);
    let message = masked(br#"{"type":"message","text":"hello, room"}"#);
    let mut group = c.benchmark_group("broadcast");
    group.throughput(Throughput::Elements(1000));
    group.bench_function("1 message to 1,000 members (decode, queue, writev)", |b| {
        b.iter_batched_ref(
            || message.clone(),
            |input| {
                engine.on_input(from, input, 1);
                engine.flush(1);
            },
            BatchSize::SmallInput,
        )
    });
    group.finish();
}

criterion_group!(
    benches,
    frame_header,
    unmask,
    utf8,
    encode,
    handshake,
    broadcast
);
criterion_main!(benches);
