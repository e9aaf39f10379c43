//! `handshakes`: a fixed number of clients that each connect, upgrade,
//! close with a close frame, and start over.

use std::io;
use std::time::Duration;

use mio::{Events, Interest, Poll, Token};

use crate::net::{Client, Phase, Read_, Target};
use crate::report::{Report, Window};
use crate::wire::{self, CLOSE};

/// Runs `concurrency` clients in a loop of connect, upgrade, close; with
/// `count`, until that many handshakes have ended (the clients still in
/// flight are dropped then, at most `concurrency`).
///
/// # Errors
///
/// When the poller fails, or no connection can be made at all.
pub fn run(
    target: &Target,
    concurrency: usize,
    count: Option<u64>,
    window: &mut Window,
) -> io::Result<Report> {
    let mut poll = Poll::new()?;
    let request = wire::upgrade_request(&target.addr.to_string(), &target.path);
    let close = wire::close_frame();
    let mut next_index = 0usize;
    let mut start = |poll: &mut Poll, slot: usize| -> io::Result<Client> {
        next_index += 1;
        let mut c = Client::connect(target, next_index)?;
        poll.registry().register(
            &mut c.sock,
            Token(slot),
            Interest::READABLE | Interest::WRITABLE,
        )?;
        Ok(c)
    };
    let mut slots = Vec::with_capacity(concurrency);
    for slot in 0..concurrency {
        slots.push(start(&mut poll, slot)?);
    }
    let mut events = Events::with_capacity(1024);
    let mut buf = vec![0u8; 16 * 1024];
    let mut completed: u64 = 0;
    let mut failed: u64 = 0;
    window.begin()?;
    loop {
        let done = match count {
            Some(n) => completed + failed >= n,
            None => window.tick(completed)?,
        };
        if done {
            break;
        }
        poll.poll(&mut events, Some(Duration::from_millis(50)))?;
        for event in events.iter() {
            let slot = event.token().0;
            let c = &mut slots[slot];
            let mut outcome = Ok(false);
            if event.is_writable() {
                if let Err(e) = c.on_writable(target, &request) {
                    outcome = Err(e);
                }
            }
            if outcome.is_ok() && c.phase != Phase::Connecting {
                outcome = step(c, &mut buf, &close);
            }
            match outcome {
                Ok(false) => continue,
                Ok(true) => completed += 1,
                Err(_) => failed += 1,
            }
            slots[slot] = start(&mut poll, slot)?;
        }
    }
    let m = window.finish(completed)?;
    let mut r = Report::new("handshakes");
    r.field("concurrency", concurrency as f64);
    r.field("handshakes_per_s", m.rate());
    r.field("failed", failed as f64);
    m.cpu_fields(&mut r, "handshake");
    Ok(r)
}

/// Reads what arrived; answers the upgrade with a close frame. Returns true
/// once the server has answered the close or ended the stream.
fn step(c: &mut Client, buf: &mut [u8], close: &[u8]) -> io::Result<bool> {
    loop {
        match c.read(buf) {
            Read_::Bytes(n) => {
                let bytes = &buf[..n];
                let frames = if c.phase == Phase::Upgrading {
                    match c.on_head_bytes(bytes)? {
                        Some(rest) => {
                            c.queue(close);
                            c.flush()?;
                            rest
                        }
                        None => continue,
                    }
                } else {
                    bytes
                };
                let mut closed = false;
                c.reader.feed(frames, 0, |f| closed |= f.opcode == CLOSE);
                if closed {
                    c.phase = Phase::Done;
                    return Ok(true);
                }
            }
            Read_::Empty => return Ok(false),
            Read_::Closed if c.phase == Phase::Open => return Ok(true),
            Read_::Closed => return Err(io::ErrorKind::ConnectionReset.into()),
        }
    }
}
