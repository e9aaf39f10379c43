//! `broadcast`: one room of members; some of them publish, all receive.
//!
//! Each publisher keeps `depth` messages in flight: a message counts as
//! done for its publisher when the publisher receives it back as a member.
//! The message text carries the publisher's number and the send time, so
//! every member's copy yields a delivery latency.

use std::io;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use memchr::memmem;
use mio::{Events, Poll};

use crate::net::{self, Client, Read_, Target};
use crate::report::{Report, Window};
use crate::wire::{self, BINARY, TEXT};

/// How members join and what the server sends them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Protocol {
    /// roomcast's chat protocol: members send `join`, publishers send
    /// `message`, members receive `message` objects.
    Chat,
    /// Every connection is a member from the start and frames are
    /// broadcast verbatim (the reference servers' broadcast modes).
    Raw,
}

/// What to run.
#[derive(Debug, Clone)]
pub struct Load {
    /// Room members, publishers included.
    pub members: usize,
    /// Members that publish.
    pub publishers: usize,
    /// Messages in flight per publisher.
    pub depth: usize,
    /// Bytes of padding in each message's text.
    pub size: usize,
    /// The protocol.
    pub protocol: Protocol,
    /// Publish this many messages in all, then wait for every delivery (no
    /// warm-up, no window): a fixed amount of work, for instruction counts.
    pub count: Option<u64>,
}

/// Largest reply payload inspected; messages are far smaller.
const WANT_PAYLOAD: usize = 4096;

/// Runs the broadcast load.
///
/// # Errors
///
/// When setup fails or a member is disconnected.
pub fn run(target: &Target, load: &Load, window: &mut Window) -> io::Result<Report> {
    let mut poll = Poll::new()?;
    let mut clients = net::establish(&mut poll, target, load.members, 256, secs(60))?;
    let mut events = Events::with_capacity(1024);
    let mut buf = vec![0u8; 256 * 1024];
    if load.protocol == Protocol::Chat {
        join_all(&mut poll, &mut clients, &mut events, &mut buf)?;
    }
    quiet(&mut poll, &mut clients, &mut events, &mut buf)?;

    let base = Instant::now();
    let pad = "x".repeat(load.size);
    let message = |publisher: usize| {
        let ns = base.elapsed().as_nanos() as u64;
        let json = format!(r#"{{"type":"message","text":"{publisher} {ns} {pad}"}}"#);
        wire::masked_frame(TEXT, json.as_bytes())
    };
    let publishers = load.publishers.min(clients.len());
    let limit = load.count.unwrap_or(u64::MAX);
    let mut outstanding = vec![0usize; publishers];
    let mut published: u64 = 0;
    for (p, c) in clients.iter_mut().take(publishers).enumerate() {
        while outstanding[p] < load.depth && published < limit {
            c.queue(&message(p));
            outstanding[p] += 1;
            published += 1;
        }
        c.flush()?;
    }
    // A counted run may be under an instruction counter, many times slower.
    let drain_for = secs(if load.count.is_some() { 300 } else { 10 });
    let finder = memmem::Finder::new(br#""text":""#);
    let mut latency = Histogram::<u64>::new(3).expect("3 significant digits is valid");
    let mut delivered: u64 = 0;
    let mut publishing = true;
    let mut drain_deadline = None;
    window.begin()?;
    loop {
        let enough = match load.count {
            Some(n) => published >= n,
            None => window.tick(delivered)?,
        };
        if publishing && enough {
            publishing = false;
            drain_deadline = Some(Instant::now() + drain_for);
        }
        let expected = published * clients.len() as u64;
        if !publishing
            && (delivered >= expected || drain_deadline.is_some_and(|d| Instant::now() > d))
        {
            break;
        }
        poll.poll(&mut events, Some(Duration::from_millis(50)))?;
        let now_ns = base.elapsed().as_nanos() as u64;
        let measuring = publishing && (window.measuring() || load.count.is_some());
        for event in events.iter() {
            let i = event.token().0;
            let c = &mut clients[i];
            if event.is_writable() {
                c.writable = true;
            }
            let mut own = 0usize;
            if event.is_readable() {
                loop {
                    match c.read(&mut buf) {
                        Read_::Bytes(n) => {
                            c.reader.feed(&buf[..n], WANT_PAYLOAD, |f| {
                                if f.opcode != TEXT && f.opcode != BINARY {
                                    return;
                                }
                                let Some(sent) = f.payload.and_then(|p| stamp(&finder, p)) else {
                                    return;
                                };
                                delivered += 1;
                                if sent.0 == i {
                                    own += 1;
                                }
                                if measuring {
                                    let _ = latency.record(now_ns.saturating_sub(sent.1));
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
                                format!("member {i} was disconnected during the run"),
                            ))
                        }
                    }
                }
            }
            if i < publishers {
                outstanding[i] -= own.min(outstanding[i]);
                while publishing && outstanding[i] < load.depth && published < limit {
                    c.queue(&message(i));
                    outstanding[i] += 1;
                    published += 1;
                }
            }
            c.flush()?;
        }
    }
    let m = window.finish(delivered)?;
    let expected = published * clients.len() as u64;
    let mut r = Report::new("broadcast");
    r.field("members", clients.len() as f64);
    r.field("publishers", publishers as f64);
    r.field("depth", load.depth as f64);
    r.field("deliveries_per_s", m.rate());
    r.field(
        "latency_p50_us",
        latency.value_at_quantile(0.5) as f64 / 1e3,
    );
    r.field(
        "latency_p99_us",
        latency.value_at_quantile(0.99) as f64 / 1e3,
    );
    r.field("published", published as f64);
    r.field("lost", expected.saturating_sub(delivered) as f64);
    m.cpu_fields(&mut r, "delivery");
    Ok(r)
}

/// Publisher number and send time from a message's text.
fn stamp(finder: &memmem::Finder<'_>, payload: &[u8]) -> Option<(usize, u64)> {
    let at = finder.find(payload)? + 8;
    let mut fields = payload[at..].splitn(3, |&b| b == b' ');
    let publisher = parse(fields.next()?)?;
    let ns = parse(fields.next()?)?;
    Some((publisher as usize, ns))
}

fn parse(digits: &[u8]) -> Option<u64> {
    if digits.is_empty() {
        return None;
    }
    digits.iter().try_fold(0u64, |acc, &d| {
        d.is_ascii_digit().then(|| acc * 10 + u64::from(d - b'0'))
    })
}

fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

/// Sends every member `join` and waits until each has its `joined`.
fn join_all(
    poll: &mut Poll,
    clients: &mut [Client],
    events: &mut Events,
    buf: &mut [u8],
) -> io::Result<()> {
    let join = wire::masked_frame(TEXT, br#"{"type":"join","roomId":"bench"}"#);
    let mut joined = vec![false; clients.len()];
    let mut missing = clients.len();
    for c in clients.iter_mut() {
        c.writable = true;
        c.queue(&join);
        c.flush()?;
    }
    let finder = memmem::Finder::new(br#""type":"joined""#);
    let deadline = Instant::now() + secs(120);
    while missing > 0 {
        if Instant::now() > deadline {
            return Err(io::Error::other(format!("{missing} members never joined")));
        }
        poll.poll(events, Some(Duration::from_millis(100)))?;
        for event in events.iter() {
            let i = event.token().0;
            let c = &mut clients[i];
            if event.is_writable() {
                c.writable = true;
                c.flush()?;
            }
            let mut got = false;
            drain(c, buf, |p| got |= finder.find(p).is_some())?;
            if got && !joined[i] {
                joined[i] = true;
                missing -= 1;
            }
        }
    }
    Ok(())
}

/// Reads and drops until nothing has arrived for half a second: the join
/// notices of a large room take a while.
fn quiet(
    poll: &mut Poll,
    clients: &mut [Client],
    events: &mut Events,
    buf: &mut [u8],
) -> io::Result<()> {
    let mut last = Instant::now();
    while last.elapsed() < Duration::from_millis(500) {
        poll.poll(events, Some(Duration::from_millis(100)))?;
        for event in events.iter() {
            let c = &mut clients[event.token().0];
            if event.is_writable() {
                c.writable = true;
            }
            drain(c, buf, |_| {})?;
            last = Instant::now();
        }
    }
    Ok(())
}

/// Reads `c` until it would block, handing each small payload to `each`.
fn drain(c: &mut Client, buf: &mut [u8], mut each: impl FnMut(&[u8])) -> io::Result<()> {
    loop {
        match c.read(buf) {
            Read_::Bytes(n) => c.reader.feed(&buf[..n], WANT_PAYLOAD, |f| {
                if let Some(p) = f.payload {
                    each(p);
                }
            }),
            Read_::Empty => return Ok(()),
            Read_::Closed => {
                return Err(io::Error::new(
                    io::ErrorKind::ConnectionReset,
                    "a member was disconnected during setup",
                ))
            }
        }
    }
}
