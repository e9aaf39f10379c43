//! Maximum connection age: when each WebSocket is asked to reconnect.
//!
//! Cloud Run ends every request, a WebSocket included, at its request
//! timeout (at most 60 minutes). Rather than have connections cut without a
//! word, roomcast ends each one itself a little earlier, with a message that
//! tells the client to reconnect. Were every connection given the same age,
//! clients that connected together (after a deploy, say) would all
//! reconnect together too; so each connection's age is drawn uniformly from
//! the configured age plus or minus [`SPREAD_PERCENT`].

/// How far, in percent of the configured age, one connection's age may lie
/// from it in either direction.
pub const SPREAD_PERCENT: u64 = 10;

/// The age, in milliseconds, of a connection whose draw was `random`:
/// uniform over `age - 10 %` to `age + 10 %` (both ends included, up to the
/// rounding of a tenth) when `random` is uniform over `u64`.
pub fn spread(age: u64, random: u64) -> u64 {
    let delta = age / (100 / SPREAD_PERCENT);
    let low = age - delta;
    let width = u128::from(delta) * 2 + 1;
    // Multiply-and-shift maps `random` onto 0..width without the bias of a
    // modulo large enough to matter (at most one part in 2^64 / width).
    let offset = (u128::from(random) * width) >> 64;
    // offset < width <= 2 * delta + 1, so low + offset <= age + delta.
    low.saturating_add(offset as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ends_of_the_range() {
        assert_eq!(spread(1000, 0), 900);
        assert_eq!(spread(1000, u64::MAX), 1100);
        assert_eq!(spread(1000, u64::MAX / 2), 1000);
        assert_eq!(spread(0, u64::MAX), 0);
        assert_eq!(spread(u64::MAX, u64::MAX), u64::MAX);
    }

    #[test]
    fn draws_stay_within_ten_percent_and_fill_the_range() {
        let age = 3_300_000;
        let mut rng = crate::clock::IdRng::new();
        let mut buckets = [0u32; 10];
        for _ in 0..100_000 {
            let a = spread(age, rng.next_u64());
            assert!((2_970_000..=3_630_000).contains(&a), "{a}");
            buckets[((a - 2_970_000) * 10 / 660_001) as usize] += 1;
        }
        // 10,000 expected per tenth of the range; a uniform draw strays
        // from that by more than 1,000 with negligible probability.
        for (i, n) in buckets.iter().enumerate() {
            assert!((9_000..=11_000).contains(n), "bucket {i}: {n}");
        }
    }
}
