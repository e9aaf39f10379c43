//! Wall-clock formatting and identifiers: the little time and randomness
//! the chat protocol needs, without a dependency for either.

use std::fmt;
use std::hash::{BuildHasher, Hasher};
use std::time::{SystemTime, UNIX_EPOCH};

/// Milliseconds since the Unix epoch, now.
pub fn unix_millis() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// An instant formatted as ISO 8601 UTC with milliseconds:
/// `2026-12-03T15:28:46.123Z`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timestamp(pub u64);

impl Timestamp {
    /// The current time.
    pub fn now() -> Self {
        Timestamp(unix_millis())
    }
}

impl fmt::Display for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let millis = self.0 % 1000;
        let secs = self.0 / 1000;
        let (days, rem) = (secs / 86_400, secs % 86_400);
        let (year, month, day) = civil_from_days(days as i64);
        write!(
            f,
            "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{millis:03}Z",
            rem / 3600,
            rem / 60 % 60,
            rem % 60
        )
    }
}

impl serde::Serialize for Timestamp {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// Days since 1970-01-01 to a proleptic Gregorian date, after Howard
/// Hinnant's `civil_from_days`.
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

/// A small non-cryptographic generator (SplitMix64) for identifiers, seeded
/// from the standard library's per-process random hash keys.
pub struct IdRng(u64);

impl Default for IdRng {
    fn default() -> Self {
        IdRng::new()
    }
}

impl IdRng {
    /// A generator seeded from the operating system's randomness.
    pub fn new() -> Self {
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u64(unix_millis());
        IdRng(h.finish())
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
}

/// A client identifier, `client-<ms>-<9 base-36 characters>`, stored as two
/// numbers and formatted when sent, so a connection holds no string for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientId {
    millis: u64,
    random: u64,
}

/// 36^9: nine base-36 digits.
const RANDOM_SPACE: u64 = 101_559_956_668_416;

impl ClientId {
    /// A fresh identifier for a client connecting now.
    pub fn generate(rng: &mut IdRng) -> Self {
        ClientId {
            millis: unix_millis(),
            random: rng.next_u64() % RANDOM_SPACE,
        }
    }

    /// Reads an identifier as [`fmt::Display`] writes it (another
    /// instance's member, say); `None` if `s` is not one.
    pub fn parse(s: &str) -> Option<Self> {
        let rest = s.strip_prefix("client-")?;
        let (millis, digits) = rest.split_once('-')?;
        if digits.len() != 9 || millis.is_empty() || !millis.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        let millis = millis.parse().ok()?;
        let mut random = 0u64;
        for b in digits.bytes() {
            let d = match b {
                b'0'..=b'9' => b - b'0',
                b'a'..=b'z' => b - b'a' + 10,
                _ => return None,
            };
            random = random * 36 + u64::from(d);
        }
        Some(ClientId { millis, random })
    }
}

impl fmt::Display for ClientId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut digits = [b'0'; 9];
        let mut n = self.random;
        for d in digits.iter_mut().rev() {
            *d = b"0123456789abcdefghijklmnopqrstuvwxyz"[(n % 36) as usize];
            n /= 36;
        }
        let digits = std::str::from_utf8(&digits).expect("base-36 digits are ASCII");
        write!(f, "client-{}-{digits}", self.millis)
    }
}

impl serde::Serialize for ClientId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_known_instants() {
        assert_eq!(Timestamp(0).to_string(), "1970-01-01T00:00:00.000Z");
        assert_eq!(
            Timestamp(1_764_775_726_123).to_string(),
            "2025-12-03T15:28:46.123Z"
        );
        // 2000-02-29 (a leap day in a century year divisible by 400).
        assert_eq!(
            Timestamp(951_782_400_000).to_string(),
            "2000-02-29T00:00:00.000Z"
        );
        assert_eq!(
            Timestamp(4_102_444_799_999).to_string(),
            "2099-12-31T23:59:59.999Z"
        );
    }

    #[test]
    fn client_ids_have_the_documented_shape() {
        let mut rng = IdRng::new();
        let a = ClientId::generate(&mut rng).to_string();
        let b = ClientId::generate(&mut rng).to_string();
        assert_ne!(a, b);
        let parts: Vec<&str> = a.split('-').collect();
        assert_eq!(parts.len(), 3);
        assert_eq!(parts[0], "client");
        assert!(parts[1].parse::<u64>().unwrap() > 1_700_000_000_000);
        assert_eq!(parts[2].len(), 9);
        assert_eq!(ClientId::parse(&a).map(|c| c.to_string()), Some(a.clone()));
        for bad in [
            "client-1-abc",
            "client--000000000",
            "x-1-000000000",
            "client-1-00000000A",
        ] {
            assert_eq!(ClientId::parse(bad), None, "{bad}");
        }
        assert!(parts[2]
            .bytes()
            .all(|c| c.is_ascii_digit() || c.is_ascii_lowercase()));
    }
}
