//! A connection's queue of bytes the kernel has not taken yet.
//!
//! Replies meant for one connection are appended to an owned buffer; a
//! broadcast frame is shared by every member as one reference-counted
//! buffer, so queueing it on a member copies a pointer, not the frame.

use std::collections::VecDeque;
use std::io::{self, IoSlice, Write};
use std::rc::Rc;

/// One run of queued bytes.
enum Segment {
    /// Bytes for this connection only; later replies are appended to it.
    Owned(Vec<u8>),
    /// A frame shared with other connections.
    Shared(Rc<[u8]>),
}

impl Segment {
    fn bytes(&self) -> &[u8] {
        match self {
            Segment::Owned(v) => v,
            Segment::Shared(s) => s,
        }
    }
}

/// Segments an empty queue keeps room for: a few chat messages between
/// two writes.
const KEEP_SEGMENTS: usize = 8;

/// An owned segment stops taking appended replies at this size, and a
/// segment already partly written takes none: either would keep bytes that
/// were written alive until the whole segment is, and a peer that reads at
/// just the pace we write would then pin memory without bound. It also
/// bounds what a slow consumer's close must wait behind.
const OWNED_SEGMENT_CAP: usize = 64 * 1024;

/// An owned buffer up to this capacity outlives the bytes written from it,
/// until [`OutQueue::release_excess`] finds the connection idle: room for a
/// 64 KiB frame, or a read's worth of echoed 1 KiB frames. Freed and grown
/// again on every write, such a buffer cost a page fault per 4 KiB when the
/// allocator returned it to the system in between, which doubled the CPU
/// per message of a 1 KiB echo at depth 16 in some runs. The price: a
/// connection that was written to in the last tick may hold up to this
/// much more than it has queued.
const KEEP_OWNED: usize = 128 * 1024;

/// The most buffers one `writev` is given.
const MAX_IOVECS: usize = 64;

/// A queue of at most this many segments is written from a list this long.
const FEW_IOVECS: usize = 8;

/// Bytes waiting to be written, in order.
///
/// The queue's state lives in a box that exists only while the connection
/// has something queued or was recently busy: an idle connection carries one
/// null pointer for it, 8 bytes instead of 56.
#[derive(Default)]
pub struct OutQueue {
    queue: Option<Box<Queue>>,
}

/// The state behind a busy connection's [`OutQueue`].
#[derive(Default)]
struct Queue {
    segments: VecDeque<Segment>,
    /// How much of the front segment is already written.
    front_written: usize,
    /// Bytes queued and not yet written.
    len: usize,
    /// Set when bytes are queued; cleared by [`OutQueue::release_excess`].
    used: bool,
    /// Times the queue was written empty since it was last found idle by
    /// [`OutQueue::release_excess`], saturating.
    emptied: u8,
}

impl OutQueue {
    /// An empty queue; it allocates only when bytes are queued.
    pub fn new() -> Self {
        OutQueue::default()
    }

    #[inline]
    fn busy(&mut self) -> &mut Queue {
        self.queue.get_or_insert_with(Box::default)
    }

    /// Bytes waiting.
    pub fn len(&self) -> usize {
        self.queue.as_ref().map_or(0, |q| q.len)
    }

    /// Whether nothing is waiting.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Queues a copy of `bytes`, appending to the last owned segment when
    /// there is one.
    pub fn push_bytes(&mut self, bytes: &[u8]) {
        self.busy().push_bytes(bytes);
    }

    /// Queues what `write` appends to the owned tail buffer, and returns
    /// what `write` returns.
    pub fn push_with<R>(&mut self, write: impl FnOnce(&mut Vec<u8>) -> R) -> R {
        self.busy().push_with(write)
    }

    /// Queues a frame shared with other connections, without copying it.
    #[inline]
    pub fn push_shared(&mut self, frame: &Rc<[u8]>) {
        self.busy().push_shared(frame);
    }

    /// Drops everything not yet written; returns how many bytes that was.
    pub fn discard_unsent(&mut self) -> usize {
        self.queue.as_mut().map_or(0, |q| q.discard_unsent())
    }

    /// Writes as much as `out` takes; `Ok(true)` once nothing is left.
    ///
    /// # Errors
    ///
    /// Any write error other than `WouldBlock` and `Interrupted`.
    pub fn flush_to(&mut self, out: &mut impl Write) -> io::Result<bool> {
        match &mut self.queue {
            None => Ok(true),
            Some(q) => q.flush_to(out),
        }
    }

    /// Writes `head` and then `body` straight to `out` when nothing is
    /// queued before them, and queues a copy of whatever `out` does not
    /// take; behind queued bytes, queues a copy of both. Returns how many
    /// bytes were written.
    ///
    /// For large replies, which the socket mostly takes whole: the copy into
    /// the queue is saved, and the bytes go out while they are still in the
    /// cache. A write error, like a full socket, queues everything; the
    /// next [`OutQueue::flush_to`] meets it again and reports it.
    #[inline]
    pub fn write_through(&mut self, out: &mut impl Write, head: &[u8], body: &[u8]) -> usize {
        let written = if self.is_empty() {
            let result = if head.is_empty() {
                out.write(body)
            } else {
                out.write_vectored(&[IoSlice::new(head), IoSlice::new(body)])
            };
            result.unwrap_or_default()
        } else {
            0
        };
        if written < head.len() + body.len() {
            let queue = self.busy();
            if written < head.len() {
                queue.push_bytes(&head[written..]);
            }
            queue.push_bytes(&body[written.saturating_sub(head.len())..]);
        }
        written
    }

    /// Frees everything an empty queue holds, at once.
    pub fn release_all(&mut self) {
        if self.is_empty() {
            self.queue = None;
        }
    }

    /// Frees what an empty queue holds: its segment list when it grew in a
    /// burst or nothing was queued since the last call, and the whole state
    /// once it is back to that of a new queue. Called periodically.
    pub fn release_excess(&mut self) {
        if let Some(q) = &mut self.queue {
            q.release_excess();
            if q.is_empty() && q.segments.capacity() == 0 && !q.used && q.emptied == 0 {
                self.queue = None;
            }
        }
    }
}

impl Queue {
    /// Whether nothing is waiting.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Queues a copy of `bytes`.
    pub fn push_bytes(&mut self, bytes: &[u8]) {
        self.owned_tail().extend_from_slice(bytes);
        self.len += bytes.len();
        self.used = true;
    }

    /// Lets `write` append straight into the queue's owned tail, then
    /// counts what it appended.
    pub fn push_with<R>(&mut self, write: impl FnOnce(&mut Vec<u8>) -> R) -> R {
        let tail = self.owned_tail();
        let before = tail.len();
        let result = write(tail);
        let added = tail.len() - before;
        self.len += added;
        self.used = true;
        result
    }

    /// Queues a shared frame without copying it.
    #[inline]
    pub fn push_shared(&mut self, frame: &Rc<[u8]>) {
        if frame.is_empty() {
            return;
        }
        self.len += frame.len();
        self.used = true;
        self.segments.push_back(Segment::Shared(Rc::clone(frame)));
    }

    /// Drops every queued segment that no byte of has been written, keeping
    /// the partly written front so the peer never sees half a frame.
    /// Returns how many bytes were dropped.
    pub fn discard_unsent(&mut self) -> usize {
        let keep = usize::from(self.front_written > 0).min(self.segments.len());
        let dropped: usize = self.segments.drain(keep..).map(|s| s.bytes().len()).sum();
        self.len -= dropped;
        dropped
    }

    /// Writes as much as `out` takes, with as few system calls as it can.
    ///
    /// Returns `Ok(true)` when the queue is empty afterwards, `Ok(false)`
    /// when the writer would block.
    ///
    /// # Errors
    ///
    /// Any write error other than `WouldBlock` and `Interrupted`.
    pub fn flush_to(&mut self, out: &mut impl Write) -> io::Result<bool> {
        while !self.is_empty() {
            if self.segments.len() == 1 {
                // One run of bytes, the usual case for a reply or a
                // broadcast frame: no buffer list to build.
                let seg = self.segments.front().expect("the queue is not empty");
                match out.write(&seg.bytes()[self.front_written..]) {
                    Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                    Ok(n) => self.consume(n),
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => return Err(e),
                }
                continue;
            }
            // A few frames between two writes is the usual broadcast case:
            // a short list is cheaper to set up than a full one.
            let written = if self.segments.len() <= FEW_IOVECS {
                self.write_vectored::<FEW_IOVECS>(out)
            } else {
                self.write_vectored::<MAX_IOVECS>(out)
            };
            match written {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => self.consume(n),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(true)
    }

    /// One `writev` of the first `N` segments at most.
    fn write_vectored<const N: usize>(&self, out: &mut impl Write) -> io::Result<usize> {
        let mut slices = [IoSlice::new(&[]); N];
        let mut count = 0;
        for (slice, seg) in slices.iter_mut().zip(&self.segments) {
            let skip = if count == 0 { self.front_written } else { 0 };
            *slice = IoSlice::new(&seg.bytes()[skip..]);
            count += 1;
        }
        out.write_vectored(&slices[..count])
    }

    /// Frees the segment list of an empty queue that grew in a burst, or
    /// that nothing was queued on since the last call. Called periodically:
    /// a busy connection keeps a small list, so that queueing a broadcast
    /// frame on it allocates nothing in the steady state, while an idle one
    /// holds no heap memory for its queue at all.
    pub fn release_excess(&mut self) {
        let idle = !std::mem::take(&mut self.used);
        if idle {
            self.emptied = 0;
        }
        if self.is_empty() && (idle || self.segments.capacity() > KEEP_SEGMENTS) {
            self.segments = VecDeque::new();
        }
    }

    #[inline]
    fn consume(&mut self, n: usize) {
        if n == self.len && self.segments.len() == 1 {
            self.consume_last();
        } else {
            self.consume_some(n);
        }
    }

    #[inline(never)]
    fn consume_some(&mut self, mut n: usize) {
        while n > 0 {
            let front = self.segments.front().expect("consumed bytes were queued");
            let left = front.bytes().len() - self.front_written;
            if n < left {
                self.front_written += n;
                self.len -= n;
                return;
            }
            if self.segments.len() == 1 {
                // The last segment, written to its end.
                return self.consume_last();
            }
            n -= left;
            self.len -= left;
            self.front_written = 0;
            self.segments.pop_front();
        }
    }

    /// Everything was written, and it was one segment: the usual end of a
    /// reply's or a broadcast frame's write, settled without the general
    /// walk of [`Queue::consume`], to the same effect.
    #[inline(always)]
    fn consume_last(&mut self) {
        self.len = 0;
        self.front_written = 0;
        match self.segments.front_mut() {
            // The last owned buffer, if small, is kept for the next replies
            // of a busy connection: an echo would otherwise allocate and
            // free one per write. Not on the first write after an idle
            // period, so that a connection that says one thing (the
            // handshake, say) and falls silent keeps nothing: freed at once,
            // its buffer is the next connection's, where one held until the
            // timer would scatter the heap.
            Some(Segment::Owned(v)) if v.capacity() <= KEEP_OWNED && self.emptied > 0 => v.clear(),
            _ => self.segments.clear(),
        }
        self.emptied = self.emptied.saturating_add(1);
    }

    fn owned_tail(&mut self) -> &mut Vec<u8> {
        let front_in_flight = self.segments.len() == 1 && self.front_written > 0;
        let reusable = match self.segments.back() {
            Some(Segment::Owned(v)) => v.len() < OWNED_SEGMENT_CAP && !front_in_flight,
            _ => false,
        };
        if !reusable {
            self.segments.push_back(Segment::Owned(Vec::new()));
        }
        match self.segments.back_mut() {
            Some(Segment::Owned(v)) => v,
            _ => unreachable!("an owned tail was just ensured"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A writer that takes at most `limit` bytes per call, then blocks once
    /// `budget` is spent.
    struct Trickle {
        got: Vec<u8>,
        limit: usize,
        budget: usize,
    }

    impl Write for Trickle {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            if self.budget == 0 {
                return Err(io::ErrorKind::WouldBlock.into());
            }
            let n = buf.len().min(self.limit).min(self.budget);
            self.got.extend_from_slice(&buf[..n]);
            self.budget -= n;
            Ok(n)
        }
        fn write_vectored(&mut self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
            let mut room = self.limit.min(self.budget);
            if room == 0 {
                return Err(io::ErrorKind::WouldBlock.into());
            }
            let mut total = 0;
            for buf in bufs {
                let n = buf.len().min(room);
                self.got.extend_from_slice(&buf[..n]);
                room -= n;
                total += n;
            }
            self.budget -= total;
            Ok(total)
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn keeps_order_across_partial_writes() {
        let shared: Rc<[u8]> = Rc::from(&b"SHARED"[..]);
        let mut q = OutQueue::new();
        q.push_bytes(b"one");
        q.push_bytes(b"two");
        q.push_shared(&shared);
        q.push_bytes(b"three");
        assert_eq!(q.len(), 17);
        let mut w = Trickle {
            got: Vec::new(),
            limit: 4,
            budget: 10,
        };
        assert!(!q.flush_to(&mut w).unwrap());
        assert_eq!(q.len(), 7);
        w.budget = 100;
        assert!(q.flush_to(&mut w).unwrap());
        assert_eq!(w.got, b"onetwoSHAREDthree");
    }

    #[test]
    fn write_through_queues_what_the_socket_does_not_take_in_order() {
        // A writer that takes everything, one that takes part of the head
        // only, one that takes nothing; then bytes already queued.
        for (limit, budget, queued_before) in [
            (usize::MAX, usize::MAX, false),
            (2, usize::MAX, false),
            (9, 9, false),
            (1, 0, false),
            (usize::MAX, usize::MAX, true),
        ] {
            let mut q = OutQueue::new();
            let mut w = Trickle {
                got: Vec::new(),
                limit,
                budget,
            };
            if queued_before {
                q.push_bytes(b"before|");
            }
            let written = q.write_through(&mut w, b"head|", b"body");
            assert_eq!(written, w.got.len());
            assert_eq!(q.len() + written, 9 + if queued_before { 7 } else { 0 });
            if queued_before {
                assert_eq!(written, 0, "nothing jumps the queue");
            }
            w.budget = usize::MAX;
            w.limit = usize::MAX;
            assert!(q.flush_to(&mut w).unwrap());
            let expected: &[u8] = if queued_before {
                b"before|head|body"
            } else {
                b"head|body"
            };
            assert_eq!(w.got, expected, "limit {limit}, budget {budget}");
        }
    }

    #[test]
    fn discard_keeps_the_partly_written_front() {
        let mut q = OutQueue::new();
        let shared: Rc<[u8]> = Rc::from(&b"abcdef"[..]);
        q.push_shared(&shared);
        q.push_shared(&shared);
        q.push_bytes(b"tail");
        let mut w = Trickle {
            got: Vec::new(),
            limit: 100,
            budget: 2,
        };
        assert!(!q.flush_to(&mut w).unwrap());
        assert_eq!(q.discard_unsent(), 10);
        q.push_bytes(b"CLOSE");
        w.budget = 100;
        assert!(q.flush_to(&mut w).unwrap());
        assert_eq!(w.got, b"abcdefCLOSE");
    }

    #[test]
    fn written_bytes_are_freed_while_the_peer_keeps_pace() {
        // Each round the writer takes a little less than was queued, so the
        // queue never empties; memory must still follow what is unsent.
        let mut q = OutQueue::new();
        let mut w = Trickle {
            got: Vec::new(),
            limit: usize::MAX,
            budget: 0,
        };
        let reply = [7u8; 100];
        for _ in 0..10_000 {
            q.push_bytes(&reply);
            w.budget = 99;
            assert!(!q.flush_to(&mut w).unwrap());
        }
        assert_eq!(w.got.len(), 990_000);
        let held: usize = q
            .queue
            .as_ref()
            .map_or(0, |q| q.segments.iter().map(|s| s.bytes().len()).sum());
        assert!(
            held < q.len() + OWNED_SEGMENT_CAP + 100,
            "held {held}, unsent {}",
            q.len()
        );
    }

    #[test]
    fn a_slow_consumers_backlog_of_replies_is_dropped() {
        let mut q = OutQueue::new();
        let mut w = Trickle {
            got: Vec::new(),
            limit: usize::MAX,
            budget: 10,
        };
        for _ in 0..10_000 {
            q.push_bytes(&[1u8; 78]);
        }
        assert!(!q.flush_to(&mut w).unwrap());
        let dropped = q.discard_unsent();
        let kept = q.len();
        assert!(
            kept <= OWNED_SEGMENT_CAP + 78,
            "kept {kept} of {}",
            kept + dropped
        );
    }

    #[test]
    fn an_idle_queue_lets_go_of_its_segment_list() {
        let mut q = OutQueue::new();
        let shared: Rc<[u8]> = Rc::from(&b"frame"[..]);
        q.push_shared(&shared);
        let mut w = Trickle {
            got: Vec::new(),
            limit: usize::MAX,
            budget: usize::MAX,
        };
        assert!(q.flush_to(&mut w).unwrap());
        q.release_excess();
        assert!(
            q.queue.as_ref().map_or(0, |q| q.segments.capacity()) > 0,
            "used since the last call: kept"
        );
        q.release_excess();
        assert_eq!(
            q.queue.as_ref().map_or(0, |q| q.segments.capacity()),
            0,
            "idle for a whole period: freed"
        );
        assert!(q.queue.is_none(), "and the whole state with it");
    }

    #[test]
    fn a_busy_connections_large_reply_buffer_is_reused_until_it_goes_idle() {
        let tail_capacity = |q: &OutQueue| match q.queue.as_ref().and_then(|q| q.segments.front()) {
            Some(Segment::Owned(v)) => v.capacity(),
            _ => 0,
        };
        let mut q = OutQueue::new();
        let mut w = Trickle {
            got: Vec::new(),
            limit: usize::MAX,
            budget: usize::MAX,
        };
        let reply = vec![b'x'; 64 * 1024 + 10];
        // The first write after a quiet spell keeps nothing; from the
        // second on, the buffer stays for the next reply.
        for round in 0..3 {
            q.push_bytes(&reply);
            assert!(q.flush_to(&mut w).unwrap());
            let kept = tail_capacity(&q);
            if round == 0 {
                assert_eq!(kept, 0, "a single reply after a quiet spell keeps nothing");
            } else {
                assert!(kept >= reply.len(), "round {round}: kept {kept}");
            }
        }
        let front = |q: &OutQueue| {
            let queue = q.queue.as_ref().expect("busy");
            queue.segments.front().map(|s| s.bytes().as_ptr())
        };
        let before = front(&q);
        q.push_bytes(&reply);
        let after = front(&q);
        assert_eq!(
            before, after,
            "the next reply is written into the same buffer"
        );
        assert!(q.flush_to(&mut w).unwrap());
        q.release_excess();
        q.release_excess();
        assert!(q.queue.is_none(), "idle for a whole period: freed");
    }

    #[test]
    fn discard_with_nothing_written_drops_all() {
        let mut q = OutQueue::new();
        q.push_bytes(b"abc");
        assert_eq!(q.discard_unsent(), 3);
        assert!(q.is_empty());
    }
}
