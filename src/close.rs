//! RFC 6455 7.4 close codes and close-frame payloads.

use crate::utf8::Utf8Validator;

/// A close status code roomcast sends. Each names the reason it is used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u16)]
pub enum CloseCode {
    /// 1001: the server is going away (shutdown, maximum age).
    GoingAway = 1001,
    /// 1002: the peer broke the framing rules.
    Protocol = 1002,
    /// 1007: a text message or close reason was not valid UTF-8.
    InvalidPayload = 1007,
    /// 1008: the peer broke a policy (it stopped reading, for example).
    Policy = 1008,
    /// 1009: a message was larger than the configured limit.
    TooBig = 1009,
    /// 1011: the server hit a condition it did not expect.
    Internal = 1011,
}

impl CloseCode {
    /// The code as it goes on the wire.
    pub const fn as_u16(self) -> u16 {
        self as u16
    }
}

/// What a received close frame asks of us.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PeerClose {
    /// An empty close: reply with an empty close.
    Empty,
    /// A valid code (and UTF-8 reason): echo the code back, as RFC 6455 5.5.1
    /// suggests.
    Code(u16),
}

/// Why a received close payload is invalid, and the code to fail with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BadClose {
    /// A one-byte payload cannot hold a code (RFC 6455 5.5.1).
    Truncated,
    /// A code that may not be sent on the wire (RFC 6455 7.4.1, 7.4.2).
    ReservedCode(u16),
    /// The reason is not UTF-8 (RFC 6455 5.5.1).
    InvalidReason,
}

impl BadClose {
    /// The code to close the connection with.
    pub const fn close_code(self) -> CloseCode {
        match self {
            BadClose::Truncated | BadClose::ReservedCode(_) => CloseCode::Protocol,
            BadClose::InvalidReason => CloseCode::InvalidPayload,
        }
    }
}

/// Whether a peer may send `code` in a close frame.
///
/// RFC 6455 7.4.1 defines 1000-1003 and 1007-1011; IANA has since registered
/// 1012-1014. 1004 is reserved, and 1005, 1006 and 1015 must never appear on
/// the wire. 3000-3999 are for libraries and frameworks, 4000-4999 private.
pub const fn is_valid_code(code: u16) -> bool {
    matches!(code, 1000..=1003 | 1007..=1014 | 3000..=4999)
}

/// Checks a received close frame's payload.
///
/// # Errors
///
/// Returns the violation, which maps to the code to fail with.
pub fn parse_close_payload(payload: &[u8]) -> Result<PeerClose, BadClose> {
    match payload {
        [] => Ok(PeerClose::Empty),
        [_] => Err(BadClose::Truncated),
        [hi, lo, reason @ ..] => {
            let code = u16::from_be_bytes([*hi, *lo]);
            if !is_valid_code(code) {
                return Err(BadClose::ReservedCode(code));
            }
            let mut v = Utf8Validator::new();
            if v.feed(reason).is_err() || !v.is_complete() {
                return Err(BadClose::InvalidReason);
            }
            Ok(PeerClose::Code(code))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_close_is_allowed() {
        assert_eq!(parse_close_payload(&[]), Ok(PeerClose::Empty));
    }

    #[test]
    fn one_byte_is_a_protocol_error() {
        assert_eq!(parse_close_payload(&[3]), Err(BadClose::Truncated));
        assert_eq!(BadClose::Truncated.close_code(), CloseCode::Protocol);
    }

    #[test]
    fn autobahn_valid_codes_are_echoed() {
        for code in [
            1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 3000, 3999, 4000, 4999,
        ] {
            let p = code_payload(code, b"ok");
            assert_eq!(parse_close_payload(&p), Ok(PeerClose::Code(code)), "{code}");
        }
    }

    #[test]
    fn autobahn_invalid_codes_are_protocol_errors() {
        for code in [
            0, 999, 1004, 1005, 1006, 1015, 1016, 1100, 2000, 2999, 5000, 65535,
        ] {
            let p = code_payload(code, b"");
            assert_eq!(
                parse_close_payload(&p),
                Err(BadClose::ReservedCode(code)),
                "{code}"
            );
        }
    }

    #[test]
    fn reason_must_be_utf8() {
        let p = code_payload(
            1000,
            b"\xce\xba\xe1\xbd\xb9\xcf\x83\xce\xbc\xce\xb5\xed\xa0\x80",
        );
        assert_eq!(parse_close_payload(&p), Err(BadClose::InvalidReason));
        assert_eq!(
            BadClose::InvalidReason.close_code(),
            CloseCode::InvalidPayload
        );
        let cut = code_payload(1000, b"\xe2\x82");
        assert_eq!(parse_close_payload(&cut), Err(BadClose::InvalidReason));
    }

    fn code_payload(code: u16, reason: &[u8]) -> Vec<u8> {
        let mut p = code.to_be_bytes().to_vec();
        p.extend_from_slice(reason);
        p
    }
}
