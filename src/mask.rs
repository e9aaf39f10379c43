//! RFC 6455 5.3 payload masking.
//!
//! Every byte of a client frame's payload is XORed with one byte of a 4-byte
//! key, cycling. The same operation masks and unmasks. A payload that arrives
//! in pieces is unmasked piece by piece, so each call takes the offset of its
//! first byte within the frame's payload.

use std::mem::take;

/// XORs `data` in place with `key`, as if `data` began `offset` bytes into
/// the frame's payload.
#[inline]
pub fn apply_mask(data: &mut [u8], key: [u8; 4], offset: usize) {
    mask_and_or(data, key, offset);
}

/// [`apply_mask`] for a payload of a few dozen bytes, also telling whether
/// every unmasked byte is ASCII, for a handful of instructions more.
#[inline]
pub fn unmask_short_ascii(data: &mut [u8], key: [u8; 4], offset: usize) -> bool {
    mask_and_or(data, key, offset) & u128::from_ne_bytes([0x80; 16]) == 0
}

/// Unmasks `data` and returns the OR of its unmasked bytes, folded into
/// sixteen byte lanes.
///
/// Works sixteen bytes at a time, then eight, four and one; the compiler
/// keeps the wide steps in vector registers, so this runs near memory speed
/// without `unsafe`, and a short chat message costs a handful of
/// instructions rather than a vectorized loop's setup. Where the OR is not
/// used, the compiler drops it.
#[inline(always)]
fn mask_and_or(data: &mut [u8], key: [u8; 4], offset: usize) -> u128 {
    let key = rotate(u32::from_ne_bytes(key), offset);
    let wide = u64::from(key) | (u64::from(key) << 32);
    let widest = u128::from(wide) | (u128::from(wide) << 64);
    let mut seen = 0u128;
    let mut blocks = data.chunks_exact_mut(16);
    for block in &mut blocks {
        let bytes: &mut [u8; 16] = block.try_into().expect("chunks_exact gives 16 bytes");
        let plain = u128::from_ne_bytes(*bytes) ^ widest;
        *bytes = plain.to_ne_bytes();
        seen |= plain;
    }
    // Under 16 bytes are left; every step below takes a multiple of 4, so
    // the key stays in phase.
    let mut rest = blocks.into_remainder();
    if rest.len() >= 8 {
        let (word, tail) = take(&mut rest)
            .split_first_chunk_mut::<8>()
            .expect("8 bytes");
        let plain = u64::from_ne_bytes(*word) ^ wide;
        *word = plain.to_ne_bytes();
        seen |= u128::from(plain);
        rest = tail;
    }
    if rest.len() >= 4 {
        let (word, tail) = take(&mut rest)
            .split_first_chunk_mut::<4>()
            .expect("4 bytes");
        let plain = u32::from_ne_bytes(*word) ^ key;
        *word = plain.to_ne_bytes();
        seen |= u128::from(plain);
        rest = tail;
    }
    let key = key.to_ne_bytes();
    for (byte, k) in rest.iter_mut().zip(key) {
        *byte ^= k;
        seen |= u128::from(*byte);
    }
    seen
}

/// Bytes per step of [`unmask_ascii`]: four vector registers' worth.
const BLOCK: usize = 64;

/// [`apply_mask`], also telling whether every unmasked byte is ASCII: the
/// check of a text message's UTF-8 then costs nothing more for ASCII text.
///
/// For payloads of a few hundred bytes and more. Written as plain loops
/// over whole blocks, which the compiler turns into vector XORs and ORs; a
/// short payload is cheaper through [`unmask_short_ascii`].
pub fn unmask_ascii(data: &mut [u8], key: [u8; 4], offset: usize) -> bool {
    let turned = rotate(u32::from_ne_bytes(key), offset).to_ne_bytes();
    let pattern: [u8; BLOCK] = std::array::from_fn(|i| turned[i & 3]);
    let mut seen = [0u8; BLOCK];
    let mut blocks = data.chunks_exact_mut(BLOCK);
    for block in &mut blocks {
        for ((byte, k), s) in block.iter_mut().zip(&pattern).zip(&mut seen) {
            *byte ^= k;
            *s |= *byte;
        }
    }
    // The rest starts a whole number of blocks, so of keys, after `data`.
    let rest_ascii = unmask_short_ascii(blocks.into_remainder(), key, offset);
    rest_ascii && seen.iter().fold(0, |all, s| all | s) < 0x80
}

/// The key, in memory order, as seen by a byte `offset` bytes into the
/// payload: its bytes moved `offset % 4` places towards the front.
fn rotate(key: u32, offset: usize) -> u32 {
    let bits = (offset as u32 & 3) * 8;
    if cfg!(target_endian = "little") {
        key.rotate_right(bits)
    } else {
        key.rotate_left(bits)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bytewise(data: &mut [u8], key: [u8; 4], offset: usize) {
        for (i, b) in data.iter_mut().enumerate() {
            *b ^= key[(offset + i) & 3];
        }
    }

    #[test]
    fn rfc_example_hello() {
        // RFC 6455 5.7: "Hello" masked with 37 fa 21 3d.
        let mut data = [0x7f, 0x9f, 0x4d, 0x51, 0x58];
        apply_mask(&mut data, [0x37, 0xfa, 0x21, 0x3d], 0);
        assert_eq!(&data, b"Hello");
    }

    #[test]
    fn matches_bytewise_for_all_lengths_and_offsets() {
        let key = [0x12, 0x34, 0x56, 0x78];
        for len in 0..70 {
            for offset in 0..8 {
                let original: Vec<u8> = (0..len as u8).map(|b| b.wrapping_mul(31)).collect();
                let mut fast = original.clone();
                let mut slow = original.clone();
                apply_mask(&mut fast, key, offset);
                bytewise(&mut slow, key, offset);
                assert_eq!(fast, slow, "len {len} offset {offset}");
            }
        }
    }

    #[test]
    fn the_ascii_checks_unmask_as_apply_mask_and_find_any_high_byte() {
        let key = [0x12, 0x34, 0x56, 0x78];
        for len in (0..300usize).chain([4096, 65_539]) {
            for offset in 0..4 {
                let plain: Vec<u8> = (0..len).map(|i| b'a' + (i % 26) as u8).collect();
                let mut masked = plain.clone();
                bytewise(&mut masked, key, offset);
                let mut fast = masked.clone();
                assert!(unmask_ascii(&mut fast, key, offset), "len {len}");
                assert_eq!(fast, plain, "len {len} offset {offset}");
                let mut short = masked.clone();
                assert!(unmask_short_ascii(&mut short, key, offset), "len {len}");
                assert_eq!(short, plain, "len {len} offset {offset}");
                // One byte with its high bit set, anywhere, is found.
                for at in [0, len / 2, len.saturating_sub(1)]
                    .into_iter()
                    .filter(|&a| a < len)
                {
                    let mut high = plain.clone();
                    high[at] = 0xc3;
                    let mut data = high.clone();
                    bytewise(&mut data, key, offset);
                    let mut short = data.clone();
                    assert!(!unmask_ascii(&mut data, key, offset), "len {len} at {at}");
                    assert_eq!(data, high);
                    assert!(!unmask_short_ascii(&mut short, key, offset));
                    assert_eq!(short, high);
                }
            }
        }
    }

    #[test]
    fn split_payload_unmasks_like_whole() {
        let key = [9, 8, 7, 6];
        let original: Vec<u8> = (0..100u8).collect();
        let mut whole = original.clone();
        apply_mask(&mut whole, key, 0);
        for cut in 0..original.len() {
            let mut parts = original.clone();
            let (a, b) = parts.split_at_mut(cut);
            apply_mask(a, key, 0);
            apply_mask(b, key, cut);
            assert_eq!(parts, whole, "cut at {cut}");
        }
    }
}
