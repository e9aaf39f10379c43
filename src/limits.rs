//! Admission and fairness: how many may connect, from where, and how fast
//! each may talk.
//!
//! Pure bookkeeping, no sockets and no clock: time arrives as `now`, in
//! milliseconds on a monotonic clock, as everywhere in the engine.

use std::collections::HashMap;
use std::net::IpAddr;

/// The admission limits the engine enforces.
#[derive(Debug, Clone)]
pub struct Admission {
    /// Connections of any phase; the next one is answered 503.
    pub max_connections: usize,
    /// Open WebSockets from one client address; the next upgrade is
    /// answered 429.
    pub max_per_ip: usize,
    /// Whether the client address is taken from `X-Forwarded-For`.
    pub trust_proxy: bool,
    /// Rooms with members; a join that would create one more gets an error.
    pub max_rooms: usize,
    /// Members of one room; a join beyond gets an error.
    pub max_room_members: usize,
    /// The per-connection message rate limit.
    pub rate: RateLimit,
}

/// The seconds a refused client is asked to wait, in `Retry-After`.
pub const RETRY_AFTER_SECS: &str = "5";

impl Admission {
    /// Whether a new connection must be refused: `current` are already
    /// held, of any phase.
    pub fn is_full(&self, current: usize) -> bool {
        current >= self.max_connections
    }
}

/// A token bucket's settings: `per_second` messages on average, `burst` at
/// once, and how long a client may go on exceeding it before it is closed.
#[derive(Debug, Clone, Copy)]
pub struct RateLimit {
    /// Tokens added per second.
    pub per_second: u32,
    /// The bucket's size: messages allowed back to back.
    pub burst: u32,
    /// A client refused without a pause longer than [`STREAK_GAP_MS`] for
    /// this long, in milliseconds, is closed with 1008.
    pub close_after: u64,
}

/// A pause in refusals longer than this ends a client's streak of
/// exceeding its rate.
pub const STREAK_GAP_MS: u64 = 1_000;

/// What the bucket says of one message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Within the rate: handle it.
    Allow,
    /// Over the rate: drop it and tell the client.
    Drop,
    /// Over the rate for too long: close the connection.
    Close,
}

/// One connection's token bucket. Tokens are counted in thousandths, so a
/// rate of `r` per second refills `r` thousandths per millisecond, exactly.
#[derive(Debug, Clone, Copy)]
pub struct TokenBucket {
    milli_tokens: u64,
    last_refill: u64,
    /// When the current streak of refusals began, and the last refusal.
    streak: Option<(u64, u64)>,
}

impl TokenBucket {
    /// A full bucket.
    pub fn new(limit: &RateLimit, now: u64) -> Self {
        TokenBucket {
            milli_tokens: u64::from(limit.burst) * 1000,
            last_refill: now,
            streak: None,
        }
    }

    /// Takes a token for one message at `now`.
    pub fn take(&mut self, limit: &RateLimit, now: u64) -> Verdict {
        let elapsed = now.saturating_sub(self.last_refill);
        self.last_refill = self.last_refill.max(now);
        let capacity = u64::from(limit.burst) * 1000;
        self.milli_tokens = self
            .milli_tokens
            .saturating_add(elapsed.saturating_mul(u64::from(limit.per_second)))
            .min(capacity);
        if self.milli_tokens >= 1000 {
            self.milli_tokens -= 1000;
            return Verdict::Allow;
        }
        let start = match self.streak {
            Some((start, last)) if now.saturating_sub(last) <= STREAK_GAP_MS => start,
            _ => now,
        };
        self.streak = Some((start, now));
        if now.saturating_sub(start) >= limit.close_after {
            Verdict::Close
        } else {
            Verdict::Drop
        }
    }
}

/// Open WebSockets per client address.
#[derive(Debug, Default)]
pub struct PerIp {
    counts: HashMap<IpAddr, u32>,
}

impl PerIp {
    /// Counts one more connection from `ip` unless it already has `max`.
    /// Returns whether it was counted.
    pub fn try_add(&mut self, ip: IpAddr, max: usize) -> bool {
        let n = self.counts.entry(ip).or_insert(0);
        if *n as usize >= max {
            if *n == 0 {
                self.counts.remove(&ip);
            }
            return false;
        }
        *n += 1;
        true
    }

    /// Forgets one connection from `ip`.
    pub fn remove(&mut self, ip: IpAddr) {
        if let Some(n) = self.counts.get_mut(&ip) {
            *n -= 1;
            if *n == 0 {
                self.counts.remove(&ip);
            }
        }
    }

    /// Connections counted for `ip`.
    pub fn count(&self, ip: IpAddr) -> usize {
        self.counts.get(&ip).map_or(0, |&n| n as usize)
    }
}

/// The address a request comes from. With `trust_proxy`, the right-most
/// entry of the last `X-Forwarded-For` field: the one the trusted proxy in
/// front of us appended (Cloud Run's front end appends the address it saw).
/// Entries to the left of it were written by the client or by proxies we
/// know nothing of, and are ignored. Without `trust_proxy`, or when that
/// entry is not an address, the TCP peer's address.
pub fn client_ip(peer: IpAddr, forwarded_for: Option<&[u8]>, trust_proxy: bool) -> IpAddr {
    if !trust_proxy {
        return peer;
    }
    forwarded_for
        .and_then(|v| v.rsplit(|&b| b == b',').next())
        .and_then(|entry| std::str::from_utf8(entry.trim_ascii()).ok())
        .and_then(|entry| entry.parse().ok())
        .unwrap_or(peer)
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMIT: RateLimit = RateLimit {
        per_second: 10,
        burst: 3,
        close_after: 5_000,
    };

    #[test]
    fn bucket_allows_a_burst_then_the_rate() {
        let mut b = TokenBucket::new(&LIMIT, 0);
        for _ in 0..3 {
            assert_eq!(b.take(&LIMIT, 0), Verdict::Allow);
        }
        assert_eq!(b.take(&LIMIT, 0), Verdict::Drop);
        assert_eq!(b.take(&LIMIT, 99), Verdict::Drop);
        assert_eq!(b.take(&LIMIT, 100), Verdict::Allow, "one token per 100 ms");
        assert_eq!(b.take(&LIMIT, 100), Verdict::Drop);
        assert_eq!(b.take(&LIMIT, 10_000), Verdict::Allow);
        assert_eq!(b.take(&LIMIT, 10_000), Verdict::Allow);
        assert_eq!(b.take(&LIMIT, 10_000), Verdict::Allow);
        assert_eq!(b.take(&LIMIT, 10_000), Verdict::Drop, "never above burst");
    }

    #[test]
    fn a_sustained_flood_is_closed_a_pause_resets_the_streak() {
        let mut b = TokenBucket::new(&LIMIT, 0);
        let mut verdicts = Vec::new();
        // 1000 messages a second for six seconds.
        for t in 0..6_000 {
            verdicts.push((t, b.take(&LIMIT, t)));
        }
        let first_close = verdicts.iter().find(|(_, v)| *v == Verdict::Close);
        // The burst lasts three messages; the streak starts at the fourth.
        assert_eq!(first_close.map(|(t, _)| *t), Some(5_003));

        let mut b = TokenBucket::new(&LIMIT, 0);
        // Floods of 3 s with 2 s pauses: never closed.
        for round in 0..5u64 {
            for t in 0..3_000 {
                assert_ne!(b.take(&LIMIT, round * 5_000 + t), Verdict::Close);
            }
        }
    }

    #[test]
    fn per_ip_counts_and_forgets() {
        let mut p = PerIp::default();
        let ip: IpAddr = "10.0.0.1".parse().unwrap();
        assert!(p.try_add(ip, 2));
        assert!(p.try_add(ip, 2));
        assert!(!p.try_add(ip, 2));
        p.remove(ip);
        assert!(p.try_add(ip, 2));
        p.remove(ip);
        p.remove(ip);
        assert_eq!(p.count(ip), 0);
        assert!(p.counts.is_empty());
        assert!(!p.try_add(ip, 0));
        assert!(p.counts.is_empty());
    }

    #[test]
    fn forwarded_for_is_read_only_when_trusted_and_from_the_right() {
        let peer: IpAddr = "127.0.0.1".parse().unwrap();
        let xff = Some(&b"1.1.1.1, 203.0.113.9"[..]);
        assert_eq!(client_ip(peer, xff, false), peer);
        assert_eq!(
            client_ip(peer, xff, true),
            "203.0.113.9".parse::<IpAddr>().unwrap()
        );
        assert_eq!(
            client_ip(peer, Some(b"2001:db8::1"), true),
            "2001:db8::1".parse::<IpAddr>().unwrap()
        );
        assert_eq!(client_ip(peer, Some(b"1.1.1.1, junk"), true), peer);
        assert_eq!(client_ip(peer, None, true), peer);
    }

    #[test]
    fn full_at_the_limit() {
        let a = Admission {
            max_connections: 100,
            max_per_ip: 1,
            trust_proxy: false,
            max_rooms: 1,
            max_room_members: 1,
            rate: LIMIT,
        };
        assert!(!a.is_full(99));
        assert!(a.is_full(100));
    }
}
