//! The incremental UTF-8 validator against `std::str::from_utf8`, on the
//! same bytes fed whole, a byte at a time and in pseudo-random pieces.
//!
//! Checks, for every piece: the validator fails exactly when the bytes so
//! far can no longer begin valid UTF-8 (RFC 6455 8.1 asks to fail at once,
//! not at the end of the message); `is_complete` is true exactly when the
//! bytes so far are valid UTF-8 on their own; after a `reset` the same
//! validator judges a second stream as a new one would.

#![no_main]

use libfuzzer_sys::fuzz_target;
use roomcast::utf8::Utf8Validator;
use roomcast_fuzz::cut_plans;

/// std's verdict on a prefix: valid, a valid prefix cut inside a code
/// point, or invalid.
#[derive(Debug, PartialEq, Eq)]
enum Verdict {
    Valid,
    Unfinished,
    Invalid,
}

fn std_verdict(bytes: &[u8]) -> Verdict {
    match std::str::from_utf8(bytes) {
        Ok(_) => Verdict::Valid,
        Err(e) if e.error_len().is_none() => Verdict::Unfinished,
        Err(_) => Verdict::Invalid,
    }
}

/// Feeds `data` in `plan`'s pieces, checking after each one.
fn check(v: &mut Utf8Validator, data: &[u8], plan: &[usize]) {
    let mut end = 0;
    for &n in plan {
        let result = v.feed(&data[end..end + n]);
        end += n;
        let want = std_verdict(&data[..end]);
        match result {
            Err(_) => {
                assert_eq!(want, Verdict::Invalid, "failed early at {end}");
                return;
            }
            Ok(()) => {
                assert_ne!(want, Verdict::Invalid, "missed the error by {end}");
                assert_eq!(v.is_complete(), want == Verdict::Valid, "at {end}");
            }
        }
    }
}

fuzz_target!(|data: &[u8]| {
    for plan in cut_plans(data, data.len()) {
        let mut v = Utf8Validator::new();
        check(&mut v, data, &plan);
        // Reused after a reset, whatever state the first run left it in,
        // it starts over.
        v.reset();
        assert!(v.is_complete());
        check(&mut v, data, &plan);
    }
    // A reset in the middle of an unfinished code point forgets it.
    let mut v = Utf8Validator::new();
    let _ = v.feed(data);
    v.reset();
    check(&mut v, data, &[data.len()]);
});
