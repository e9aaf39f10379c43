//! Who may connect: HS256 JSON Web Tokens (RFC 7519) on the upgrade.
//!
//! Only HS256 is accepted, whatever the token's header asks for: a verifier
//! that lets the token pick its algorithm can be told `none` or tricked
//! into using the secret as a public key. The signature is checked, in
//! constant time, before the claims are parsed, so nothing an unsigned
//! token says reaches the rest of the server.

use std::fmt;

use base64::engine::general_purpose::URL_SAFE_NO_PAD as BASE64URL;
use base64::Engine as _;
use hmac::{Hmac, Mac};
use serde::de::DeserializeOwned;
use serde::Deserialize;
use sha2::Sha256;

use crate::http::Request;

/// Clock skew tolerated on `exp` and `nbf`, in seconds: the issuer's
/// clock and ours may differ a little, not more.
pub const LEEWAY_SECS: u64 = 30;

/// The longest token accepted, in bytes. The request head is capped at
/// 8 KiB anyway; this keeps decoding buffers small.
const MAX_TOKEN_BYTES: usize = 4096;

/// The longest `sub` accepted, in bytes; it is shown to other clients.
pub const MAX_SUB_BYTES: usize = 256;

/// Why a token was refused. Each is answered 401 with [`AuthError::reason`]
/// as the body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthError {
    /// No `Authorization: Bearer` field and no `token` query parameter.
    Missing,
    /// Not three base64url parts, or a part is not the JSON it must be.
    Malformed,
    /// The header names an algorithm other than HS256 (`none` included).
    UnsupportedAlgorithm,
    /// The signature does not match the secret.
    BadSignature,
    /// No `exp` claim: every token must expire.
    NoExpiry,
    /// `exp` has passed, beyond the leeway.
    Expired,
    /// `nbf` is still ahead, beyond the leeway.
    NotYetValid,
    /// More than one `token` query parameter: which one a proxy in front
    /// checked is unknown, so neither is taken.
    RepeatedToken,
    /// A bearer token and a different `token` query parameter: as above,
    /// which one a proxy checked is unknown, so neither is taken.
    ConflictingTokens,
}

impl AuthError {
    /// The body of the 401 response.
    pub const fn reason(self) -> &'static str {
        match self {
            AuthError::Missing => "missing token",
            AuthError::Malformed => "malformed token",
            AuthError::UnsupportedAlgorithm => "malformed token: alg must be HS256",
            AuthError::BadSignature => "bad signature",
            AuthError::NoExpiry => "malformed token: exp is required",
            AuthError::Expired => "token expired",
            AuthError::NotYetValid => "token not yet valid",
            AuthError::RepeatedToken => "more than one token query parameter",
            AuthError::ConflictingTokens => {
                "different tokens in the Authorization header and the query"
            }
        }
    }
}

impl fmt::Display for AuthError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.reason())
    }
}

impl std::error::Error for AuthError {}

/// What a valid token says about its bearer.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Identity {
    /// The `sub` claim, shown to others as `userId`.
    pub user_id: Option<Box<str>>,
    /// The rooms the bearer may join; `None` means any.
    pub rooms: Option<RoomGrant>,
}

impl Identity {
    /// Whether the bearer may join `room`.
    pub fn may_join(&self, room: &str) -> bool {
        self.rooms.as_ref().map_or(true, |g| g.allows(room))
    }
}

/// The `rooms` claim: room names, and prefixes written with a final `*`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RoomGrant {
    names: Vec<Box<str>>,
    prefixes: Vec<Box<str>>,
}

impl RoomGrant {
    /// Reads the claim's entries: `"lobby"` allows that room, `"team-*"`
    /// every room starting `team-`, and `"*"` every room.
    pub fn new<S: AsRef<str>>(entries: &[S]) -> Self {
        let mut grant = RoomGrant::default();
        for e in entries {
            match e.as_ref().strip_suffix('*') {
                Some(prefix) => grant.prefixes.push(prefix.into()),
                None => grant.names.push(e.as_ref().into()),
            }
        }
        grant
    }

    /// Whether `room` is one of the names or starts with a prefix.
    pub fn allows(&self, room: &str) -> bool {
        self.names.iter().any(|n| **n == *room)
            || self.prefixes.iter().any(|p| room.starts_with(&**p))
    }
}

/// Checks tokens against one shared secret.
#[derive(Clone)]
pub struct Verifier {
    /// Keyed once; cloned per token, which copies the prepared pads and
    /// skips hashing the key again.
    mac: Hmac<Sha256>,
}

impl fmt::Debug for Verifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Verifier { .. }")
    }
}

#[derive(Deserialize)]
struct Header {
    alg: Option<String>,
}

#[derive(Deserialize)]
struct Claims {
    exp: Option<f64>,
    nbf: Option<f64>,
    sub: Option<String>,
    rooms: Option<Vec<String>>,
}

impl Verifier {
    /// A verifier for tokens signed with `secret`.
    pub fn new(secret: &[u8]) -> Self {
        Verifier {
            // HMAC takes keys of any length (RFC 2104 2).
            mac: Hmac::new_from_slice(secret).expect("HMAC accepts keys of any length"),
        }
    }

    /// Checks the token `request` carries, at `now_secs` (Unix time).
    ///
    /// # Errors
    ///
    /// Which check the token failed, in the order they run: present,
    /// well-formed, HS256, signature, `exp`, `nbf`.
    pub fn check_request(
        &self,
        request: &Request<'_>,
        now_secs: u64,
    ) -> Result<Identity, AuthError> {
        let token = token_in(request)?.ok_or(AuthError::Missing)?;
        self.verify(token, now_secs)
    }

    /// Checks one compact-serialised token at `now_secs` (Unix time).
    ///
    /// # Errors
    ///
    /// As [`Verifier::check_request`], less `Missing`.
    pub fn verify(&self, token: &[u8], now_secs: u64) -> Result<Identity, AuthError> {
        if token.len() > MAX_TOKEN_BYTES {
            return Err(AuthError::Malformed);
        }
        let mut parts = token.split(|&b| b == b'.');
        let (Some(header), Some(payload), Some(signature), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(AuthError::Malformed);
        };
        let header = BASE64URL.decode(header).map_err(|_| AuthError::Malformed)?;
        let header: Header = json_object(&header)?;
        // RFC 8725 3.1: use only the algorithm configured, never the one
        // the token names.
        if header.alg.as_deref() != Some("HS256") {
            return Err(AuthError::UnsupportedAlgorithm);
        }
        let signature = BASE64URL
            .decode(signature)
            .map_err(|_| AuthError::Malformed)?;
        let signed = &token[..token.len() - signature_len(token)];
        let mut mac = self.mac.clone();
        mac.update(signed);
        // verify_slice compares in constant time, so the time taken says
        // nothing about how many leading bytes of a forged MAC were right.
        mac.verify_slice(&signature)
            .map_err(|_| AuthError::BadSignature)?;
        let claims = BASE64URL
            .decode(payload)
            .map_err(|_| AuthError::Malformed)?;
        let claims: Claims = json_object(&claims)?;
        let now = now_secs as f64;
        let leeway = LEEWAY_SECS as f64;
        let exp = claims.exp.ok_or(AuthError::NoExpiry)?;
        // RFC 7519 4.1.4: the token MUST NOT be accepted on or after exp.
        if now >= exp + leeway {
            return Err(AuthError::Expired);
        }
        // RFC 7519 4.1.5: nor before nbf.
        if claims.nbf.is_some_and(|nbf| now + leeway < nbf) {
            return Err(AuthError::NotYetValid);
        }
        if claims.sub.as_ref().is_some_and(|s| s.len() > MAX_SUB_BYTES) {
            return Err(AuthError::Malformed);
        }
        Ok(Identity {
            user_id: claims.sub.map(String::into_boxed_str),
            rooms: claims.rooms.as_deref().map(RoomGrant::new),
        })
    }
}

/// Reads a JOSE header or a claims set, which RFC 7519 7.2 (steps 3 and 10)
/// requires to be a JSON object, and JSON is UTF-8 (RFC 8259 8.1).
///
/// Read straight into a derived struct, a JSON array would pass as well,
/// field by field, and the fields it does not keep would be skipped without
/// reading their strings: bytes that are not UTF-8, or a lone surrogate
/// escape (`"\ud800"`, whose meaning RFC 8259 8.2 leaves unpredictable).
/// So the text is read whole as a `Value`, which refuses both, must be an
/// object, and the fields are taken from it. A name given twice counts
/// with its last value, as RFC 7515 4 allows.
fn json_object<T: DeserializeOwned>(json: &[u8]) -> Result<T, AuthError> {
    let whole: serde_json::Value =
        serde_json::from_slice(json).map_err(|_| AuthError::Malformed)?;
    if !whole.is_object() {
        return Err(AuthError::Malformed);
    }
    T::deserialize(whole).map_err(|_| AuthError::Malformed)
}

/// Bytes of the last part of `token`, after its final dot.
fn signature_len(token: &[u8]) -> usize {
    token.iter().rev().take_while(|&&b| b != b'.').count() + 1
}

/// The token a request carries, in `Authorization: Bearer <token>` or in
/// the `token` query parameter (browsers cannot set headers on a
/// WebSocket). Tokens are base64url and dots, which a query never needs to
/// percent-encode, so the parameter is taken as it is.
///
/// # Errors
///
/// [`AuthError::RepeatedToken`] when the query names `token` twice,
/// whether or not the header carries one, and
/// [`AuthError::ConflictingTokens`] when the header and the query carry
/// different tokens.
pub fn token_in<'a>(request: &Request<'a>) -> Result<Option<&'a [u8]>, AuthError> {
    let mut in_query = request
        .query
        .into_iter()
        .flat_map(|q| q.split('&'))
        .filter_map(|pair| pair.strip_prefix("token="));
    let from_query = in_query.next();
    if in_query.next().is_some() {
        return Err(AuthError::RepeatedToken);
    }
    let bearer = request.header("authorization").and_then(|v| {
        let v = v.trim_ascii();
        let (scheme, rest) = v.split_at(v.iter().position(|&b| b == b' ')?);
        // RFC 9110 11.1: the scheme is case-insensitive.
        scheme
            .eq_ignore_ascii_case(b"bearer")
            .then(|| rest.trim_ascii())
    });
    let bearer = bearer.filter(|t| !t.is_empty());
    let from_query = from_query.filter(|t| !t.is_empty()).map(str::as_bytes);
    match (bearer, from_query) {
        (Some(h), Some(q)) if h != q => Err(AuthError::ConflictingTokens),
        (h, q) => Ok(h.or(q)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::parse_request;

    fn b64(s: &str) -> String {
        BASE64URL.encode(s)
    }

    fn sign(secret: &[u8], header: &str, claims: &str) -> String {
        let signed = format!("{}.{}", b64(header), b64(claims));
        let mut mac = Hmac::<Sha256>::new_from_slice(secret).unwrap();
        mac.update(signed.as_bytes());
        let sig = BASE64URL.encode(mac.finalize().into_bytes());
        format!("{signed}.{sig}")
    }

    const HS256: &str = r#"{"alg":"HS256","typ":"JWT"}"#;

    #[test]
    fn rfc7515_appendix_a1_key_verifies_its_example() {
        // RFC 7515 A.1: the example HS256 token and key; its exp has
        // passed, so at its own time it is valid and later it is expired.
        let key = BASE64URL
            .decode(concat!(
                "AyM1SysPpbyDfgZld3umj1qzKObwVMkoqQ-EstJQLr_T-1qS0gZH75aKtMN3Yj0i",
                "PS4hcgUuTwjAzZr1Z9CAow",
            ))
            .unwrap();
        let token = "eyJ0eXAiOiJKV1QiLA0KICJhbGciOiJIUzI1NiJ9.\
            eyJpc3MiOiJqb2UiLA0KICJleHAiOjEzMDA4MTkzODAsDQogImh0dHA6Ly9leGFt\
            cGxlLmNvbS9pc19yb290Ijp0cnVlfQ.\
            dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk";
        let v = Verifier::new(&key);
        assert_eq!(
            v.verify(token.as_bytes(), 1_300_819_000),
            Ok(Identity::default())
        );
        assert_eq!(
            v.verify(token.as_bytes(), 1_300_819_380 + 30),
            Err(AuthError::Expired)
        );
        assert_eq!(
            Verifier::new(b"other").verify(token.as_bytes(), 0),
            Err(AuthError::BadSignature)
        );
    }

    #[test]
    fn a_header_or_claims_set_that_is_an_array_is_malformed() {
        // Found by the token fuzz target: serde's derived structs also read
        // a JSON array field by field, so `[2000,null,"ann",null]` passed as
        // claims with an exp, and `["HS256"]` as a header.
        let v = Verifier::new(b"s3cret");
        let claims = sign(b"s3cret", HS256, r#"[2000,null,"ann",null]"#);
        assert_eq!(v.verify(claims.as_bytes(), 1000), Err(AuthError::Malformed));
        let header = sign(b"s3cret", r#" ["HS256"]"#, r#"{"exp":2000}"#);
        assert_eq!(v.verify(header.as_bytes(), 1000), Err(AuthError::Malformed));
        let spaced = sign(b"s3cret", r#" {"alg":"HS256"}"#, "\n{\"exp\":2000}");
        assert!(v.verify(spaced.as_bytes(), 1000).is_ok());
    }

    #[test]
    fn an_ignored_field_that_is_not_utf8_or_has_a_lone_surrogate_is_malformed() {
        // Found by the token fuzz target: serde_json skips a field it does
        // not keep without checking its bytes, so a header with `"typ"`
        // holding 0xFF passed, though it is not JSON (RFC 8259 8.1).
        let sign_bytes = |header: &[u8], claims: &[u8]| {
            let signed = format!("{}.{}", BASE64URL.encode(header), BASE64URL.encode(claims));
            let mut mac = Hmac::<Sha256>::new_from_slice(b"s3cret").unwrap();
            mac.update(signed.as_bytes());
            format!("{signed}.{}", BASE64URL.encode(mac.finalize().into_bytes()))
        };
        let v = Verifier::new(b"s3cret");
        let header = sign_bytes(
            b"{\"alg\":\"HS256\",\"typ\":\"Z\xff\xffW\"}",
            b"{\"exp\":2000}",
        );
        assert_eq!(v.verify(header.as_bytes(), 1000), Err(AuthError::Malformed));
        let claims = sign_bytes(HS256.as_bytes(), b"{\"exp\":2000,\"iss\":\"\xe4\xe4\"}");
        assert_eq!(v.verify(claims.as_bytes(), 1000), Err(AuthError::Malformed));
        // Found by the same target next: a lone surrogate escape in a field
        // roomcast ignores was skipped unread.
        let surrogate = sign_bytes(br#"{"alg":"HS256","typ":"JWT\ud800"}"#, b"{\"exp\":2000}");
        assert_eq!(
            v.verify(surrogate.as_bytes(), 1000),
            Err(AuthError::Malformed)
        );
        let fine = sign_bytes(
            HS256.as_bytes(),
            "{\"exp\":2000,\"iss\":\"é\\ud83d\\ude00\"}".as_bytes(),
        );
        assert!(v.verify(fine.as_bytes(), 1000).is_ok());
    }

    #[test]
    fn every_refusal() {
        let v = Verifier::new(b"s3cret");
        let good = sign(
            b"s3cret",
            HS256,
            r#"{"exp":2000,"sub":"ann","rooms":["a","t-*"]}"#,
        );
        let id = v.verify(good.as_bytes(), 1000).unwrap();
        assert_eq!(id.user_id.as_deref(), Some("ann"));
        assert!(id.may_join("a") && id.may_join("t-1") && id.may_join("t-"));
        assert!(!id.may_join("b") && !id.may_join("ab"));

        let cases = [
            (
                sign(b"s3cret", r#"{"alg":"none"}"#, r#"{"exp":2000}"#),
                AuthError::UnsupportedAlgorithm,
            ),
            (
                sign(b"s3cret", r#"{"alg":"HS512"}"#, r#"{"exp":2000}"#),
                AuthError::UnsupportedAlgorithm,
            ),
            (
                sign(b"s3cret", r#"{"typ":"JWT"}"#, r#"{"exp":2000}"#),
                AuthError::UnsupportedAlgorithm,
            ),
            (
                sign(b"wrong", HS256, r#"{"exp":2000}"#),
                AuthError::BadSignature,
            ),
            (
                sign(b"s3cret", HS256, r#"{"sub":"x"}"#),
                AuthError::NoExpiry,
            ),
            (
                sign(b"s3cret", HS256, r#"{"exp":"soon"}"#),
                AuthError::Malformed,
            ),
            (sign(b"s3cret", HS256, r#"not json"#), AuthError::Malformed),
            (sign(b"s3cret", HS256, r#"{"exp":969}"#), AuthError::Expired),
            (
                sign(b"s3cret", HS256, r#"{"exp":2000,"nbf":1031}"#),
                AuthError::NotYetValid,
            ),
            ("a.b".to_string(), AuthError::Malformed),
            ("a.b.c.d".to_string(), AuthError::Malformed),
            ("!!.e30.e30".to_string(), AuthError::Malformed),
        ];
        for (token, want) in cases {
            assert_eq!(v.verify(token.as_bytes(), 1000), Err(want), "{token}");
        }
        // Within the leeway either side.
        for claims in [r#"{"exp":971}"#, r#"{"exp":2000,"nbf":1030}"#] {
            let t = sign(b"s3cret", HS256, claims);
            assert!(v.verify(t.as_bytes(), 1000).is_ok(), "{claims}");
        }
        // A flipped signature bit.
        let mut bad = good.clone().into_bytes();
        let last = bad.len() - 2;
        bad[last] = if bad[last] == b'A' { b'B' } else { b'A' };
        assert_eq!(v.verify(&bad, 1000), Err(AuthError::BadSignature));
    }

    #[test]
    fn token_from_header_or_query() {
        let req = |s: &'static str| parse_request(s.as_bytes()).unwrap().unwrap().0;
        let r = req("GET /?a=1&token=abc HTTP/1.1\r\nHost: x\r\n\r\n");
        assert_eq!(token_in(&r), Ok(Some(&b"abc"[..])));
        let r = req("GET /?token=h HTTP/1.1\r\nHost: x\r\nAuthorization: bearer  h \r\n\r\n");
        assert_eq!(token_in(&r), Ok(Some(&b"h"[..])));
        let r = req("GET /?token= HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer h\r\n\r\n");
        assert_eq!(token_in(&r), Ok(Some(&b"h"[..])));
        let r = req("GET /?tokens=q HTTP/1.1\r\nHost: x\r\nAuthorization: Basic h\r\n\r\n");
        assert_eq!(token_in(&r), Ok(None));
        let r = req("GET / HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer\r\n\r\n");
        assert_eq!(token_in(&r), Ok(None));
    }

    #[test]
    fn a_repeated_token_parameter_is_refused() {
        let req = |s: &'static str| parse_request(s.as_bytes()).unwrap().unwrap().0;
        for raw in [
            "GET /?token=a&token=b HTTP/1.1\r\nHost: x\r\n\r\n",
            "GET /?token=a&x=1&token=a HTTP/1.1\r\nHost: x\r\n\r\n",
            "GET /?token=&token=b HTTP/1.1\r\nHost: x\r\n\r\n",
            "GET /?token=a&token=b HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer h\r\n\r\n",
        ] {
            assert_eq!(token_in(&req(raw)), Err(AuthError::RepeatedToken), "{raw}");
        }
        let v = Verifier::new(b"k");
        let r = req("GET /?token=a&token=b HTTP/1.1\r\nHost: x\r\n\r\n");
        assert_eq!(v.check_request(&r, 0), Err(AuthError::RepeatedToken));
    }

    #[test]
    fn different_tokens_in_header_and_query_are_refused() {
        let req = |s: &'static str| parse_request(s.as_bytes()).unwrap().unwrap().0;
        let r = req("GET /?token=q HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer h\r\n\r\n");
        assert_eq!(token_in(&r), Err(AuthError::ConflictingTokens));
        let v = Verifier::new(b"k");
        assert_eq!(v.check_request(&r, 0), Err(AuthError::ConflictingTokens));
    }
}
