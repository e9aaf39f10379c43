//! Bearer tokens (HS256 JSON Web Tokens) and the request fields that carry
//! them, into the verifier.
//!
//! The first byte picks the input's shape:
//! - `0`: the rest is a token as it came.
//! - `1`: the rest is a JOSE header and claims, split at the first NUL
//!   byte, which the target encodes and signs with the right secret, so the
//!   fuzzer reaches the claim checks behind the signature.
//! - `2`: the rest is a request head, from which the token is taken.
//!
//! Checks: nothing panics; a token is accepted only if its signature is
//! the HMAC-SHA256 of its first two parts under the secret (computed here
//! with the `hmac` crate), its header names HS256, and its claims, read
//! here with `serde_json::Value`, hold a numeric `exp` still ahead and any
//! `nbf` already passed (30 s of leeway each way); the accepted `sub` is
//! the claims' own; a correctly signed token is never refused for its
//! signature, and one with a byte of its signature changed is never
//! accepted; a token taken from a request is non-empty and appears in it.

#![no_main]

use base64::engine::general_purpose::URL_SAFE_NO_PAD as BASE64URL;
use base64::Engine as _;
use hmac::{Hmac, Mac};
use libfuzzer_sys::fuzz_target;
use roomcast::auth::{token_in, AuthError, Identity, Verifier, LEEWAY_SECS};
use roomcast::http::parse_request;
use serde_json::Value;
use sha2::Sha256;

const SECRET: &[u8] = b"fuzz-secret";
/// The time the tokens are checked at: 2023-11-14.
const NOW: u64 = 1_700_000_000;

fn mac_of(signed: &[u8]) -> Vec<u8> {
    let mut mac = Hmac::<Sha256>::new_from_slice(SECRET).expect("any key length");
    mac.update(signed);
    mac.finalize().into_bytes().to_vec()
}

/// Asserts what an accepted token must have been.
fn check_accepted(token: &[u8], id: &Identity) {
    let parts: Vec<&[u8]> = token.split(|&b| b == b'.').collect();
    assert_eq!(parts.len(), 3, "accepted a token without three parts");
    let signed = &token[..parts[0].len() + 1 + parts[1].len()];
    let signature = BASE64URL
        .decode(parts[2])
        .expect("accepted signature is base64url");
    assert_eq!(
        signature,
        mac_of(signed),
        "accepted a token with a wrong signature"
    );
    let header: Value = serde_json::from_slice(&BASE64URL.decode(parts[0]).unwrap())
        .expect("accepted header is JSON");
    assert_eq!(header["alg"], "HS256", "accepted a token not naming HS256");
    let claims: Value = serde_json::from_slice(&BASE64URL.decode(parts[1]).unwrap())
        .expect("accepted claims are JSON");
    let leeway = LEEWAY_SECS as f64;
    let exp = claims["exp"]
        .as_f64()
        .expect("accepted a token without a numeric exp");
    assert!((NOW as f64) < exp + leeway, "accepted an expired token");
    if let Some(nbf) = claims.get("nbf").filter(|v| !v.is_null()) {
        let nbf = nbf.as_f64().expect("accepted a non-numeric nbf");
        assert!(
            nbf <= NOW as f64 + leeway,
            "accepted a token before its nbf"
        );
    }
    assert_eq!(
        id.user_id.as_deref(),
        claims.get("sub").and_then(Value::as_str),
        "userId is not the token's sub"
    );
}

fn verify(verifier: &Verifier, token: &[u8]) -> Result<Identity, AuthError> {
    let result = verifier.verify(token, NOW);
    if let Ok(id) = &result {
        check_accepted(token, id);
    }
    result
}

fuzz_target!(|data: &[u8]| {
    let Some((&shape, rest)) = data.split_first() else {
        return;
    };
    let verifier = Verifier::new(SECRET);
    match shape % 3 {
        0 => {
            let _ = verify(&verifier, rest);
        }
        1 => {
            let (header, claims) = match rest.iter().position(|&b| b == 0) {
                Some(i) => (&rest[..i], &rest[i + 1..]),
                None => (rest, &[][..]),
            };
            let mut token = format!("{}.{}", BASE64URL.encode(header), BASE64URL.encode(claims));
            let signature = mac_of(token.as_bytes());
            token.push('.');
            token.push_str(&BASE64URL.encode(&signature));
            let result = verify(&verifier, token.as_bytes());
            assert_ne!(
                result,
                Err(AuthError::BadSignature),
                "refused a right signature"
            );
            let mut forged = signature;
            let at = data.len() % forged.len();
            forged[at] ^= 1 << (data.len() % 8);
            let cut = token.rfind('.').unwrap();
            let forged = format!("{}.{}", &token[..cut], BASE64URL.encode(&forged));
            assert!(
                verify(&verifier, forged.as_bytes()).is_err(),
                "accepted a forged signature"
            );
        }
        _ => {
            let Ok(Some((request, _))) = parse_request(rest) else {
                return;
            };
            if let Ok(Some(token)) = token_in(&request) {
                assert!(!token.is_empty(), "an empty token was taken");
                assert!(
                    rest.windows(token.len()).any(|w| w == token),
                    "a token not in the request was taken"
                );
            }
            if let Ok(id) = verifier.check_request(&request, NOW) {
                let token = token_in(&request).unwrap().unwrap();
                check_accepted(token, &id);
            }
        }
    }
});
