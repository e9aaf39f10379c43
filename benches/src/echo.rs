//! `echo`: connections that each keep a fixed number of messages in flight.

use std::collections::VecDeque;
use std::io;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use mio::{Events, Poll};

use crate::net::{self, Read_, Target};
use crate::report::{Report, Window};
use crate::wire::{self, BINARY, TEXT};

/// What to send.
#[derive(Debug, Clone)]
pub struct Load {
    /// Connections.
    pub connections: usize,
    /// Messages in flight per connection.
    pub depth: usize,
    /// Payload bytes per message.
    pub size: usize,
    /// Binary frames instead of text.
    pub binary: bool,
    /// Stop after this many replies instead of after the window, sending no
    /// more than that: a fixed amount of work, for instruction counts.
    pub count: Option<u64>,
}

/// Runs the echo load and reports rates and round trips.
///
/// # Errors
///
/// When setup fails or a connection closes during the run.
pub fn run(target: &Target, load: &Load, window: &mut Window) -> io::Result<Report> {
    let mut poll = Poll::new()?;
    let mut clients = net::establish(
        &mut poll,
        target,
        load.connections,
        256,
        Duration::from_secs(30),
    )?;
    let opcode = if load.binary { BINARY } else { TEXT };
    let frame = wire::masked_frame(opcode, &vec![b'x'; load.size]);
    let frame_len = frame.len();
    // depth + 1 copies: a write may start anywhere in the first frame and
    // covers at most `depth` frames.
    let pattern = frame.repeat(load.depth + 1);
    let mut pending = vec![load.depth * frame_len; clients.len()];
    // Messages that may still be sent, under --count.
    let mut budget = load.count.map_or(u64::MAX, |n| {
        n.saturating_sub((load.depth * clients.len()) as u64)
    });
    let mut offset = vec![0usize; clients.len()];
    let start = Instant::now();
    let mut sent: Vec<VecDeque<Instant>> = (0..clients.len())
        .map(|_| std::iter::repeat(start).take(load.depth).collect())
        .collect();
    for c in &mut clients {
        c.writable = true;
    }
    let mut rtt = Histogram::<u64>::new(3).expect("3 significant digits is valid");
    let mut events = Events::with_capacity(1024);
    let mut buf = vec![0u8; 256 * 1024];
    let mut received: u64 = 0;
    let mut dirty: Vec<usize> = (0..clients.len()).collect();
    window.begin()?;
    loop {
        let done = match load.count {
            Some(n) => received >= n,
            None => window.tick(received)?,
        };
        if done {
            break;
        }
        for i in dirty.drain(..) {
            let c = &mut clients[i];
            if pending[i] > 0 && c.writable {
                let from = offset[i];
                let n = c.write_some(&pattern[from..from + pending[i]])?;
                pending[i] -= n;
                offset[i] = (from + n) % frame_len;
            }
        }
        poll.poll(&mut events, Some(Duration::from_millis(50)))?;
        let now = Instant::now();
        let measuring = window.measuring() || load.count.is_some();
        for event in events.iter() {
            let i = event.token().0;
            let c = &mut clients[i];
            if event.is_writable() {
                c.writable = true;
            }
            if event.is_readable() {
                let mut got = 0usize;
                loop {
                    match c.read(&mut buf) {
                        Read_::Bytes(n) => {
                            c.reader.feed(&buf[..n], 0, |f| {
                                if f.opcode == TEXT || f.opcode == BINARY {
                                    got += 1;
                                }
                            });
                            // A short read emptied the socket; epoll (edge-triggered)
                            // reports the next arrival, so the read that would say
                            // WouldBlock is saved, as servers do.
                            if n < buf.len() {
                                break;
                            }
                        }
                        Read_::Empty => break,
                        Read_::Closed => {
                            return Err(io::Error::new(
                                io::ErrorKind::ConnectionReset,
                                format!("connection {i} closed during the run"),
                            ))
                        }
                    }
                }
                for _ in 0..got {
                    let t = sent[i].pop_front().unwrap_or(now);
                    if measuring {
                        let _ = rtt.record(now.duration_since(t).as_nanos() as u64);
                    }
                    sent[i].push_back(now);
                }
                let resend = (got as u64).min(budget);
                budget -= resend;
                pending[i] += resend as usize * frame_len;
                received += got as u64;
            }
            dirty.push(i);
        }
    }
    let m = window.finish(received)?;
    let mut r = Report::new("echo");
    r.field("connections", load.connections as f64);
    r.field("depth", load.depth as f64);
    r.field("size_bytes", load.size as f64);
    r.field("msgs_per_s", m.rate());
    r.field("mb_per_s", m.rate() * load.size as f64 / 1e6);
    r.field("rtt_p50_us", rtt.value_at_quantile(0.5) as f64 / 1e3);
    r.field("rtt_p99_us", rtt.value_at_quantile(0.99) as f64 / 1e3);
    r.field("rtt_p999_us", rtt.value_at_quantile(0.999) as f64 / 1e3);
    m.cpu_fields(&mut r, "msg");
    Ok(r)
}
