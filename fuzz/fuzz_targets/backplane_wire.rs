//! Arbitrary bytes into the backplane's envelope decoder: what a Redis
//! channel delivers from other instances (or from anyone who can publish
//! to it).
//!
//! Checks: no panic; `origin` agrees with `decode`; an envelope that
//! decodes is made of exactly the parts its kind allows (a UTF-8 origin
//! without a newline; `J`/`L` a decimal count and a client id; `S` and `G`
//! JSON of the documented shapes); and every decoded envelope encodes back
//! to bytes that decode to the same envelope.

#![no_main]

use libfuzzer_sys::fuzz_target;
use roomcast::backplane::wire::{self, kind, Body};

fuzz_target!(|data: &[u8]| {
    let Some(env) = wire::decode(data) else {
        return;
    };
    assert_eq!(wire::origin(data), Some(env.origin.as_bytes()));
    assert!(!env.origin.contains('\n'));
    let kind_byte = data[0];
    let body = &data[1 + env.origin.len() + 1..];
    let mut again = Vec::new();
    match &env.body {
        Body::Message(json) => {
            assert_eq!(kind_byte, kind::MESSAGE);
            assert_eq!(*json, body);
            wire::encode(&mut again, kind::MESSAGE, env.origin, json);
        }
        Body::Joined { client, count } | Body::Left { client, count } => {
            assert!(kind_byte == kind::JOINED || kind_byte == kind::LEFT);
            let text = std::str::from_utf8(body).expect("decoded as text");
            let (n, c) = text.split_once(' ').expect("decoded as count and id");
            assert_eq!((n.parse::<u32>().ok(), c), (Some(*count), *client));
            // The count is what it says, not what a lenient parse makes it.
            assert!(!n.is_empty());
            let canonical = wire::presence_body(*count, client);
            wire::encode(&mut again, kind_byte, env.origin, canonical.as_bytes());
        }
        Body::Sync(rooms) => {
            assert_eq!(kind_byte, kind::SYNC);
            let json = serde_json::to_vec(rooms).expect("serialises");
            wire::encode(&mut again, kind::SYNC, env.origin, &json);
        }
        Body::Gone(pairs) => {
            assert_eq!(kind_byte, kind::GONE);
            let flat: Vec<&str> = pairs
                .iter()
                .flat_map(|(c, r)| [c.as_str(), r.as_str()])
                .collect();
            let json = serde_json::to_vec(&flat).expect("serialises");
            wire::encode(&mut again, kind::GONE, env.origin, &json);
        }
        Body::Heartbeat => {
            assert_eq!(kind_byte, kind::HEARTBEAT);
            wire::encode(&mut again, kind::HEARTBEAT, env.origin, body);
        }
    }
    assert_eq!(
        wire::decode(&again),
        Some(env),
        "{:?}",
        String::from_utf8_lossy(&again)
    );
});
