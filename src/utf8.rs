//! Incremental UTF-8 validation for text messages that arrive in pieces.
//!
//! RFC 6455 8.1 asks an endpoint to fail the connection as soon as it sees
//! invalid UTF-8 in a text message, not when the message ends. A fragment may
//! end in the middle of a code point, so the validator carries at most three
//! bytes of an unfinished code point from one call to the next. The heavy
//! lifting is `std::str::from_utf8`, which rejects a prefix as soon as it can
//! no longer start a valid code point (`\xF4\x90` fails at once, for example).

/// Why validation failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InvalidUtf8;

/// Validates a byte stream fed in arbitrary pieces.
#[derive(Debug, Default, Clone)]
pub struct Utf8Validator {
    /// The bytes of a code point whose end has not arrived yet.
    carry: [u8; 4],
    carry_len: u8,
}

impl Utf8Validator {
    /// A validator at the start of a stream.
    pub const fn new() -> Self {
        Utf8Validator {
            carry: [0; 4],
            carry_len: 0,
        }
    }

    /// Feeds the next piece of the stream.
    ///
    /// # Errors
    ///
    /// Fails as soon as the stream so far cannot be the prefix of valid UTF-8.
    pub fn feed(&mut self, mut input: &[u8]) -> Result<(), InvalidUtf8> {
        // Most text is ASCII, which a word-at-a-time scan settles for a
        // fraction of what the general validator costs on short messages.
        if self.carry_len == 0 && input.is_ascii() {
            return Ok(());
        }
        if self.carry_len > 0 {
            let have = usize::from(self.carry_len);
            let take = input.len().min(4 - have);
            let mut joined = self.carry;
            joined[have..have + take].copy_from_slice(&input[..take]);
            let joined = &joined[..have + take];
            match std::str::from_utf8(joined) {
                Ok(_) => {
                    self.carry_len = 0;
                    input = &input[take..];
                }
                Err(e) if e.valid_up_to() >= have => {
                    // The carried code point is complete; what follows it is
                    // validated below together with the rest of the input.
                    self.carry_len = 0;
                    input = &input[e.valid_up_to() - have..];
                }
                Err(e) if e.error_len().is_none() => {
                    // Still unfinished, and `take` was all the input there was.
                    self.carry[..joined.len()].copy_from_slice(joined);
                    self.carry_len = joined.len() as u8;
                    return Ok(());
                }
                Err(_) => return Err(InvalidUtf8),
            }
        }
        match std::str::from_utf8(input) {
            Ok(_) => Ok(()),
            Err(e) if e.error_len().is_none() => {
                let tail = &input[e.valid_up_to()..];
                self.carry[..tail.len()].copy_from_slice(tail);
                self.carry_len = tail.len() as u8;
                Ok(())
            }
            Err(_) => Err(InvalidUtf8),
        }
    }

    /// Whether the stream so far ends on a code point boundary, which it
    /// must when the message ends.
    pub fn is_complete(&self) -> bool {
        self.carry_len == 0
    }

    /// Forgets everything, ready for a new stream.
    pub fn reset(&mut self) {
        self.carry_len = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn split_agrees_with_std(bytes: &[u8]) {
        let expected = std::str::from_utf8(bytes).is_ok();
        for cut_a in 0..=bytes.len() {
            for cut_b in cut_a..=bytes.len() {
                let mut v = Utf8Validator::new();
                let ok = v.feed(&bytes[..cut_a]).is_ok()
                    && v.feed(&bytes[cut_a..cut_b]).is_ok()
                    && v.feed(&bytes[cut_b..]).is_ok()
                    && v.is_complete();
                assert_eq!(ok, expected, "{bytes:x?} cut {cut_a}/{cut_b}");
            }
        }
    }

    #[test]
    fn agrees_with_std_however_split() {
        let samples: &[&[u8]] = &[
            b"",
            b"hello",
            "κόσμε".as_bytes(),
            "a€b𝄞c".as_bytes(),
            b"\xf4\x8f\xbf\xbf",
            b"\xf4\x90\x80\x80",
            b"\xed\xa0\x80",
            b"\xc0\xaf",
            b"\xe0\x80\xaf",
            b"ab\xf0\x9d",
            b"\xff",
            b"\xce\xba\xe1\xbd\xb9\xcf\x83\xce\xbc\xce\xb5\xed\xa0\x80edited",
        ];
        for s in samples {
            split_agrees_with_std(s);
        }
    }

    #[test]
    fn fails_at_first_bad_piece() {
        // Autobahn 6.4.1: the second piece makes the stream invalid, and the
        // validator must say so before the third arrives.
        let mut v = Utf8Validator::new();
        assert!(v.feed("κόσμε".as_bytes()).is_ok());
        assert_eq!(v.feed(b"\xf4\x90\x80\x80"), Err(InvalidUtf8));
    }

    #[test]
    fn detects_bad_continuation_one_byte_at_a_time() {
        let mut v = Utf8Validator::new();
        assert!(v.feed(b"\xf4").is_ok());
        assert_eq!(v.feed(b"\x90"), Err(InvalidUtf8));
    }

    #[test]
    fn unfinished_code_point_is_not_complete() {
        let mut v = Utf8Validator::new();
        assert!(v.feed(b"\xe2\x82").is_ok());
        assert!(!v.is_complete());
        assert!(v.feed(b"\xac").is_ok());
        assert!(v.is_complete());
    }
}
