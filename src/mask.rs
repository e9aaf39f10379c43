//! RFC 6455 5.3 payload masking.
//!
//! Every byte of a client frame's payload is XORed with one byte of a 4-byte
//! key, cycling. The same operation masks and unmasks. A payload that arrives
//! in pieces is unmasked piece by piece, so each call takes the offset of its
//! first byte within the frame's payload.

/// XORs `data` in place with `key`, as if `data` began `offset` bytes into
/// the frame's payload.
///
/// Works eight bytes at a time; the compiler turns the loop into vector
/// instructions, so this runs near memory speed without `unsafe`.
#[inline]
pub fn apply_mask(data: &mut [u8], key: [u8; 4], offset: usize) {
    let key = rotate(u32::from_ne_bytes(key), offset);
    let wide = u64::from(key) | (u64::from(key) << 32);
    let mut words = data.chunks_exact_mut(8);
    for word in &mut words {
        let bytes: &mut [u8; 8] = word.try_into().expect("chunks_exact gives 8 bytes");
        *bytes = (u64::from_ne_bytes(*bytes) ^ wide).to_ne_bytes();
    }
    let key = key.to_ne_bytes();
    for (i, byte) in words.into_remainder().iter_mut().enumerate() {
        *byte ^= key[i & 3];
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
