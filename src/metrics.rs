//! Counters for `GET /metrics`, in the Prometheus text format (0.0.4).
//!
//! Everything here is a plain integer bumped by the single-threaded loop:
//! no atomics, no locks, no allocation when counting. Gauges that the
//! engine already knows (connections, rooms, queued bytes) are read at
//! scrape time instead of being tracked, and the process figures come from
//! `/proc` then too, so a scrape costs one pass over the connections and
//! two small reads, and counting costs nothing measurable.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use crate::backplane::Distrusted;

/// Why an upgrade (or a request that failed to parse) was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// A malformed request or upgrade: 400, 405, 431, 505.
    BadRequest,
    /// A `Sec-WebSocket-Version` other than 13: 426.
    Version,
    /// A missing or invalid token: 401.
    Auth,
    /// An origin not allowed: 403.
    Origin,
    /// Over a connection limit: 503 or 429.
    Limit,
    /// No complete request within the handshake timeout.
    Timeout,
}

impl Refusal {
    const ALL: [Refusal; 6] = [
        Refusal::BadRequest,
        Refusal::Version,
        Refusal::Auth,
        Refusal::Origin,
        Refusal::Limit,
        Refusal::Timeout,
    ];

    /// The `reason` label.
    pub const fn label(self) -> &'static str {
        match self {
            Refusal::BadRequest => "bad_request",
            Refusal::Version => "version",
            Refusal::Auth => "auth",
            Refusal::Origin => "origin",
            Refusal::Limit => "limit",
            Refusal::Timeout => "timeout",
        }
    }
}

/// A histogram with fixed upper bounds; observing allocates nothing.
#[derive(Debug, Clone)]
pub struct Histogram {
    bounds: &'static [u64],
    /// One count per bound, plus one for `+Inf`; not cumulative.
    counts: Box<[u64]>,
    sum: u64,
    count: u64,
}

impl Histogram {
    /// An empty histogram with `bounds`, which must ascend.
    pub fn new(bounds: &'static [u64]) -> Self {
        debug_assert!(bounds.windows(2).all(|w| w[0] < w[1]));
        Histogram {
            bounds,
            counts: vec![0; bounds.len() + 1].into_boxed_slice(),
            sum: 0,
            count: 0,
        }
    }

    /// Counts one observation of `value`.
    pub fn observe(&mut self, value: u64) {
        let i = self
            .bounds
            .iter()
            .position(|&b| value <= b)
            .unwrap_or(self.bounds.len());
        self.counts[i] += 1;
        self.sum = self.sum.wrapping_add(value);
        self.count += 1;
    }

    /// Observations so far.
    pub fn count(&self) -> u64 {
        self.count
    }

    /// The sum of the observed values.
    pub fn sum(&self) -> u64 {
        self.sum
    }

    fn render(&self, out: &mut String, name: &str, help: &str, scale: f64) {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
        let mut cumulative = 0;
        for (bound, n) in self.bounds.iter().zip(self.counts.iter()) {
            cumulative += n;
            let le = *bound as f64 / scale;
            let _ = writeln!(out, "{name}_bucket{{le=\"{le}\"}} {cumulative}");
        }
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {}", self.count);
        let _ = writeln!(out, "{name}_sum {}", self.sum as f64 / scale);
        let _ = writeln!(out, "{name}_count {}", self.count);
    }
}

/// Members reached per chat message broadcast.
pub const FANOUT_BOUNDS: &[u64] = &[1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000];

/// Event-loop iteration time, in microseconds (rendered in seconds).
pub const LOOP_BOUNDS_US: &[u64] = &[
    50, 100, 250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 1_000_000,
];

/// The counters the engine and the loop bump.
#[derive(Debug, Clone)]
pub struct Metrics {
    /// TCP connections accepted.
    pub accepted: u64,
    /// Upgrades completed.
    pub upgraded: u64,
    /// WebSockets ended, by the close code they ended with (1006 when no
    /// close frame was exchanged).
    pub closed_by_code: BTreeMap<u16, u64>,
    refusals: [u64; Refusal::ALL.len()],
    /// Data messages received.
    pub messages_in: u64,
    /// Bytes read from sockets, HTTP included.
    pub bytes_in: u64,
    /// Data messages queued to clients.
    pub messages_out: u64,
    /// Bytes written to sockets, HTTP included.
    pub bytes_out: u64,
    /// Connections closed for not reading their queue.
    pub slow_consumers_closed: u64,
    /// Messages dropped by the rate limit.
    pub rate_limited: u64,
    /// Connections closed for exceeding the rate limit for too long.
    pub rate_limit_closed: u64,
    /// Event-loop iteration time.
    pub loop_time: Histogram,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            accepted: 0,
            upgraded: 0,
            closed_by_code: BTreeMap::new(),
            refusals: [0; Refusal::ALL.len()],
            messages_in: 0,
            bytes_in: 0,
            messages_out: 0,
            bytes_out: 0,
            slow_consumers_closed: 0,
            rate_limited: 0,
            rate_limit_closed: 0,
            loop_time: Histogram::new(LOOP_BOUNDS_US),
        }
    }
}

/// What is read, not counted, at scrape time.
#[derive(Debug, Clone, Copy)]
pub struct Gauges<'a> {
    /// Connections of any phase.
    pub connections: usize,
    /// Open WebSockets.
    pub websockets: usize,
    /// Rooms with members.
    pub rooms: usize,
    /// Connections in a room.
    pub members: usize,
    /// Bytes queued and not yet written, over all connections.
    pub queued_bytes: usize,
    /// Whether a shutdown is draining the server.
    pub draining: bool,
    /// Members per chat message broadcast.
    pub fanout: &'a Histogram,
    /// Joins refused by a room limit or a token's `rooms` claim (a
    /// counter the app keeps).
    pub joins_refused: u64,
    /// Other instances' member counts not taken as they came (counters
    /// the backplane keeps).
    pub remote_distrusted: Distrusted,
}

impl Metrics {
    /// Counts one refused handshake.
    pub fn refused(&mut self, why: Refusal) {
        self.refusals[why as usize] += 1;
    }

    /// Refused handshakes so far for `why`.
    pub fn refusals(&self, why: Refusal) -> u64 {
        self.refusals[why as usize]
    }

    /// Counts one WebSocket that ended with `code`.
    pub fn closed(&mut self, code: u16) {
        *self.closed_by_code.entry(code).or_insert(0) += 1;
    }

    /// The exposition: every counter, the gauges, and the process figures.
    pub fn render(&self, g: &Gauges<'_>) -> String {
        let mut out = String::with_capacity(8 * 1024);
        let mut scalar = |name: &str, kind: &str, help: &str, value: u64| {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}"
            );
        };
        scalar(
            "roomcast_connections",
            "gauge",
            "Connections of any phase, handshakes included.",
            g.connections as u64,
        );
        scalar(
            "roomcast_websockets",
            "gauge",
            "Open WebSocket connections.",
            g.websockets as u64,
        );
        scalar(
            "roomcast_connections_accepted_total",
            "counter",
            "TCP connections accepted.",
            self.accepted,
        );
        scalar(
            "roomcast_websockets_opened_total",
            "counter",
            "WebSocket upgrades completed.",
            self.upgraded,
        );
        scalar(
            "roomcast_rooms",
            "gauge",
            "Rooms with members.",
            g.rooms as u64,
        );
        scalar(
            "roomcast_room_members",
            "gauge",
            "Connections in a room.",
            g.members as u64,
        );
        scalar(
            "roomcast_messages_received_total",
            "counter",
            "WebSocket data messages received.",
            self.messages_in,
        );
        scalar(
            "roomcast_received_bytes_total",
            "counter",
            "Bytes read from sockets, HTTP included.",
            self.bytes_in,
        );
        scalar(
            "roomcast_messages_sent_total",
            "counter",
            "WebSocket data messages queued to clients.",
            self.messages_out,
        );
        scalar(
            "roomcast_sent_bytes_total",
            "counter",
            "Bytes written to sockets, HTTP included.",
            self.bytes_out,
        );
        scalar(
            "roomcast_queued_bytes",
            "gauge",
            "Bytes queued for writing and not yet written.",
            g.queued_bytes as u64,
        );
        scalar(
            "roomcast_slow_consumers_closed_total",
            "counter",
            "Connections closed because their write queue passed its bound.",
            self.slow_consumers_closed,
        );
        scalar(
            "roomcast_rate_limited_messages_total",
            "counter",
            "Messages dropped by the per-connection rate limit.",
            self.rate_limited,
        );
        scalar(
            "roomcast_rate_limit_closed_total",
            "counter",
            "Connections closed for exceeding the rate limit too long.",
            self.rate_limit_closed,
        );
        scalar(
            "roomcast_joins_refused_total",
            "counter",
            "Joins refused by a room limit or a token's rooms claim.",
            g.joins_refused,
        );
        scalar(
            "roomcast_draining",
            "gauge",
            "1 while a shutdown drains connections.",
            u64::from(g.draining),
        );
        let process = ProcessStats::read();
        scalar(
            "process_resident_memory_bytes",
            "gauge",
            "Resident set size, from /proc/self/status.",
            process.rss_bytes,
        );
        scalar(
            "process_open_fds",
            "gauge",
            "Open file descriptors, from /proc/self/fd.",
            process.open_fds,
        );

        let name = "roomcast_websockets_closed_total";
        let _ = writeln!(
            out,
            "# HELP {name} WebSockets ended, by close code (1006: no close frame).\n\
             # TYPE {name} counter"
        );
        for (code, n) in &self.closed_by_code {
            let _ = writeln!(out, "{name}{{code=\"{code}\"}} {n}");
        }
        let name = "roomcast_handshake_failures_total";
        let _ = writeln!(
            out,
            "# HELP {name} Refused or abandoned handshakes, by reason.\n# TYPE {name} counter"
        );
        for why in Refusal::ALL {
            let n = self.refusals(why);
            let _ = writeln!(out, "{name}{{reason=\"{}\"}} {n}", why.label());
        }
        let name = "roomcast_backplane_counts_distrusted_total";
        let _ = writeln!(
            out,
            "# HELP {name} Other instances' member counts not taken as sent: capped at \
             the room member limit, or dropped for an impossible name or a full table.\n\
             # TYPE {name} counter"
        );
        let d = g.remote_distrusted;
        for (action, n) in [
            ("capped", d.capped),
            ("dropped_bad_name", d.bad_name),
            ("dropped_table_full", d.table_full),
        ] {
            let _ = writeln!(out, "{name}{{action=\"{action}\"}} {n}");
        }
        g.fanout.render(
            &mut out,
            "roomcast_broadcast_fanout",
            "Members reached per chat message broadcast.",
            1.0,
        );
        self.loop_time.render(
            &mut out,
            "roomcast_loop_iteration_seconds",
            "Time the event loop spends per iteration, polling excluded.",
            1e6,
        );
        out
    }
}

/// The process's memory and descriptors, as Linux reports them.
#[derive(Debug, Clone, Copy, Default)]
pub struct ProcessStats {
    /// Resident set size in bytes; 0 where `/proc` is missing.
    pub rss_bytes: u64,
    /// Open file descriptors; 0 where `/proc` is missing.
    pub open_fds: u64,
}

impl ProcessStats {
    /// Reads `/proc/self`.
    pub fn read() -> Self {
        let rss_kib = std::fs::read_to_string("/proc/self/status")
            .ok()
            .and_then(|s| {
                s.lines()
                    .find_map(|l| l.strip_prefix("VmRSS:"))
                    .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            })
            .unwrap_or(0);
        // The listing's own directory handle is one of the entries.
        let open_fds = std::fs::read_dir("/proc/self/fd")
            .map(|d| d.count().saturating_sub(1) as u64)
            .unwrap_or(0);
        ProcessStats {
            rss_bytes: rss_kib * 1024,
            open_fds,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets_are_cumulative() {
        let mut h = Histogram::new(&[1, 5, 10]);
        for v in [0, 1, 3, 10, 11, 500] {
            h.observe(v);
        }
        let mut out = String::new();
        h.render(&mut out, "x", "help", 1.0);
        assert!(out.contains("x_bucket{le=\"1\"} 2\n"), "{out}");
        assert!(out.contains("x_bucket{le=\"5\"} 3\n"));
        assert!(out.contains("x_bucket{le=\"10\"} 4\n"));
        assert!(out.contains("x_bucket{le=\"+Inf\"} 6\n"));
        assert!(out.contains("x_sum 525\n"));
        assert!(out.contains("x_count 6\n"));
    }

    #[test]
    fn render_has_every_family_once() {
        let mut m = Metrics::default();
        m.refused(Refusal::Auth);
        m.closed(1000);
        m.closed(1000);
        m.loop_time.observe(1500);
        let fanout = Histogram::new(FANOUT_BOUNDS);
        let text = m.render(&Gauges {
            connections: 3,
            websockets: 2,
            rooms: 1,
            members: 2,
            queued_bytes: 7,
            draining: false,
            fanout: &fanout,
            joins_refused: 0,
            remote_distrusted: Distrusted {
                capped: 4,
                ..Distrusted::default()
            },
        });
        assert!(text.contains("roomcast_backplane_counts_distrusted_total{action=\"capped\"} 4\n"));
        assert!(text.contains("roomcast_handshake_failures_total{reason=\"auth\"} 1\n"));
        assert!(text.contains("roomcast_websockets_closed_total{code=\"1000\"} 2\n"));
        assert!(text.contains("roomcast_loop_iteration_seconds_bucket{le=\"0.0025\"} 1\n"));
        assert!(text.contains("roomcast_queued_bytes 7\n"));
        for line in text.lines().filter(|l| l.starts_with("# TYPE")) {
            let name = line.split(' ').nth(2).unwrap();
            let n = text.matches(&format!("# TYPE {name} ")).count();
            assert_eq!(n, 1, "{name}");
        }
        assert!(ProcessStats::read().open_fds > 0);
    }
}
