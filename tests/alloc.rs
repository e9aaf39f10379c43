//! Checks that a room broadcast allocates nothing per member: after warm-up,
//! one chat message to a room of 10 and to a room of 10,000 performs the same
//! small number of allocations. The message goes the whole way through the
//! engine: frame decoding, the chat app, the room table, every member's write
//! queue and the flush to a transport that takes every byte.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::io::{self, IoSlice, Read, Write};

use roomcast::conn::{Engine, Limits, Transport};
use roomcast::slab::Key;

/// Counts the allocations (and reallocations) made by the thread that set
/// `COUNTING`, so that the test harness's other threads are not counted.
struct Counting;

thread_local! {
    static COUNTING: Cell<bool> = const { Cell::new(false) };
    static ALLOCATIONS: Cell<usize> = const { Cell::new(0) };
    /// Bytes the sinks on this thread have taken.
    static WRITTEN: Cell<usize> = const { Cell::new(0) };
}

fn note_allocation() {
    // `try_with`: during thread teardown the slots may be gone.
    let _ = COUNTING.try_with(|counting| {
        if counting.get() {
            let _ = ALLOCATIONS.try_with(|n| n.set(n.get() + 1));
        }
    });
}

// SAFETY: every method forwards to the system allocator with the caller's
// own arguments, so `System`'s guarantees are passed on unchanged; the
// bookkeeping touches only const-initialised thread-locals, which never
// allocate.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        note_allocation();
        // SAFETY: the caller upholds `alloc`'s contract, which `System`
        // shares.
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        note_allocation();
        // SAFETY: as for `alloc`.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` came from this allocator, that is from `System`,
        // with this layout.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        note_allocation();
        // SAFETY: `ptr` came from `System` with `layout`; the caller upholds
        // the rest of `realloc`'s contract.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// Allocations made by `f` on this thread.
fn allocations_in(f: impl FnOnce()) -> usize {
    ALLOCATIONS.with(|n| n.set(0));
    COUNTING.with(|c| c.set(true));
    f();
    COUNTING.with(|c| c.set(false));
    ALLOCATIONS.with(|n| n.get())
}

/// A socket that takes every byte and keeps none, counting them in
/// `WRITTEN`.
struct Sink;

fn took(n: usize) -> io::Result<usize> {
    WRITTEN.with(|w| w.set(w.get() + n));
    Ok(n)
}

impl Read for Sink {
    fn read(&mut self, _: &mut [u8]) -> io::Result<usize> {
        Err(io::ErrorKind::WouldBlock.into())
    }
}

impl Write for Sink {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        took(buf.len())
    }
    fn write_vectored(&mut self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        took(bufs.iter().map(|b| b.len()).sum())
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

const UPGRADE: &[u8] = b"GET /chat HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n\
    Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
    Sec-WebSocket-Version: 13\r\n\r\n";

/// A masked client text frame.
fn masked(payload: &[u8]) -> Vec<u8> {
    assert!(payload.len() < 126);
    let key = [0x37, 0xfa, 0x21, 0x3d];
    let mut out = vec![0x81, 0x80 | payload.len() as u8];
    out.extend_from_slice(&key);
    out.extend(payload.iter().enumerate().map(|(i, b)| b ^ key[i & 3]));
    out
}

/// An engine with one room of `members` open chat connections; returns
/// the engine and one member's key.
fn room_of(members: usize) -> (Engine<Sink>, Key) {
    let limits = Limits {
        max_message: 1 << 20,
        echo_max_message: 1 << 20,
        max_queued: 1 << 22,
        handshake_timeout: 10_000,
        close_timeout: 5_000,
        ping_interval: 30_000,
        max_age: 3_600_000,
    };
    let mut engine = Engine::new(limits, "alloc-test");
    let join = masked(br#"{"type":"join","roomId":"r"}"#);
    let mut first = None;
    for i in 0..members {
        let key = engine.accept(Sink, 0);
        let mut bytes = UPGRADE.to_vec();
        bytes.extend_from_slice(&join);
        engine.on_input(key, &mut bytes, 0);
        // Every join notifies the whole room; flushing in batches keeps
        // setting up a large room quick.
        if i % 64 == 63 {
            engine.flush(0);
        }
        first.get_or_insert(key);
    }
    engine.flush(0);
    assert_eq!(engine.open_connections(), members);
    assert_eq!(engine.chat().rooms().len(), 1);
    (engine, first.expect("at least one member"))
}

/// Allocations of one broadcast from `from`, after `warm_up` earlier ones.
fn broadcast_allocations(engine: &mut Engine<Sink>, from: Key, warm_up: usize) -> usize {
    let message = masked(br#"{"type":"message","text":"hello, room"}"#);
    // The engine unmasks in place, so each send gets a fresh copy, made
    // outside the counted section.
    let mut input = message.clone();
    for _ in 0..warm_up {
        input.copy_from_slice(&message);
        engine.on_input(from, &mut input, 1);
        engine.flush(1);
    }
    input.copy_from_slice(&message);
    WRITTEN.with(|w| w.set(0));
    let count = allocations_in(|| {
        engine.on_input(from, &mut input, 2);
        engine.flush(2);
    });
    for key in engine.keys() {
        let queued = engine.peer(key).map_or(0, |p| p.conn.queued());
        assert_eq!(queued, 0, "every member's queue was written out");
    }
    // Every member, the sender too, was written the same frame: a header
    // and the JSON around the text, with the sender's and room's names.
    let members = engine.open_connections();
    let written = WRITTEN.with(Cell::get);
    assert_eq!(written % members, 0, "{written} bytes to {members} members");
    let frame = written / members;
    assert!(
        (2 + r#"{"type":"message","text":"hello, room"}"#.len()..512).contains(&frame),
        "each member was written {frame} bytes"
    );
    count
}

#[test]
fn a_broadcast_allocates_nothing_per_member() {
    let (mut small, from_small) = room_of(10);
    let (mut large, from_large) = room_of(10_000);
    let in_small = broadcast_allocations(&mut small, from_small, 3);
    let in_large = broadcast_allocations(&mut large, from_large, 3);
    eprintln!("allocations per broadcast: room of 10: {in_small}, room of 10,000: {in_large}");
    assert_eq!(
        in_small, in_large,
        "a room of 10,000 must cost the allocations a room of 10 does"
    );
    // The shared frame itself; anything more is a regression to look at.
    assert!(
        in_large <= 2,
        "one broadcast made {in_large} allocations; expected at most 2"
    );
    // The counter counts: building a room allocates.
    assert!(allocations_in(|| drop(room_of(2))) > 0);
}
