//! `idle`: many open connections that say nothing; the server's resident
//! memory per connection.

use std::io;
use std::thread;
use std::time::Duration;

use mio::Poll;

use crate::net::{self, Target};
use crate::procstat::Server;
use crate::report::Report;

/// Connections opened before the baseline is read, so that what a server
/// allocates on its first connection (buffers, tables) is not charged to
/// the idle ones.
const WARM: usize = 100;

/// Opens `connections` idle connections and reads the server's RSS.
///
/// # Errors
///
/// When setup fails, or without a server PID to read.
pub fn run(target: &Target, connections: usize, server: Option<Server>) -> io::Result<Report> {
    let server = server.ok_or_else(|| io::Error::other("idle needs --server-pid"))?;
    let mut poll = Poll::new()?;
    let warm = net::establish(&mut poll, target, WARM, 256, Duration::from_secs(30))?;
    thread::sleep(Duration::from_secs(1));
    let before = server.rss_bytes()?;
    let anon_before = server.rss_anon_bytes()?;
    let mut poll_many = Poll::new()?;
    let many = net::establish(
        &mut poll_many,
        target,
        connections,
        512,
        Duration::from_secs(300),
    )?;
    // Let the server finish writing greetings and settle its queues.
    thread::sleep(Duration::from_secs(2));
    let after = server.rss_bytes()?;
    let anon_after = server.rss_anon_bytes()?;
    let mut r = Report::new("idle");
    r.field("connections", many.len() as f64);
    r.field("rss_before_kib", before as f64 / 1024.0);
    r.field("rss_after_kib", after as f64 / 1024.0);
    r.field(
        "rss_bytes_per_conn",
        after.saturating_sub(before) as f64 / many.len() as f64,
    );
    r.field(
        "anon_bytes_per_conn",
        anon_after.saturating_sub(anon_before) as f64 / many.len() as f64,
    );
    drop(warm);
    Ok(r)
}
