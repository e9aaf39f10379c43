//! RFC 6455 5.3 payload masking.
//!
//! Every byte of a client frame's payload is XORed with one byte of a 4-byte
//! key, cycling. The same operation masks and unmasks. A payload that arrives
//! in pieces is unmasked piece by piece, so each call takes the offset of its
//! first byte within the frame's payload.

use std::mem::take;

/// XORs `data` in place with `key`, as if `data` began `offset` bytes into
/// the frame's payload.
///
/// Works sixteen bytes at a time, then eight, four and one; the compiler
/// keeps the wide steps in vector registers, so this runs near memory speed
/// without `unsafe`, and a short chat message costs a handful of
/// instructions rather than a vectorized loop's setup.
#[inline]
pub fn apply_mask(data: &mut [u8], key: [u8; 4], offset: usize) {
    let key = rotate(u32::from_ne_bytes(key), offset);
    let wide = u64::from(key) | (u64::from(key) << 32);
    let widest = u128::from(wide) | (u128::from(wide) << 64);
    let mut blocks = data.chunks_exact_mut(16);
    for block in &mut blocks {
        let bytes: &mut [u8; 16] = block.try_into().expect("chunks_exact gives 16 bytes");
        *bytes = (u128::from_ne_bytes(*bytes) ^ widest).to_ne_bytes();
    }
    // Under 16 bytes are left; every step below takes a multiple of 4, so
    // the key stays in phase.
    let mut rest = blocks.into_remainder();
    if rest.len() >= 8 {
        let (word, tail) = take(&mut rest)
            .split_first_chunk_mut::<8>()
            .expect("8 bytes");
        *word = (u64::from_ne_bytes(*word) ^ wide).to_ne_bytes();
        rest = tail;
    }
    if rest.len() >= 4 {
        let (word, tail) = take(&mut rest)
            .split_first_chunk_mut::<4>()
            .expect("4 bytes");
        *word = (u32::from_ne_bytes(*word) ^ key).to_ne_bytes();
        rest = tail;
    }
    let key = key.to_ne_bytes();
    for (byte, k) in rest.iter_mut().zip(key) {
        *byte ^= k;
    }
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
