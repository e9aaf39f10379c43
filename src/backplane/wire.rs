//! What the backplane writes to Redis: key and channel names, and the
//! envelopes published on the channels.
//!
//! Every payload starts with one byte naming its kind, then the id of the
//! node it comes from, a newline, and a body:
//!
//! | kind | channel | body |
//! |---|---|---|
//! | `M` | the room's | the `message` JSON exactly as the origin's members got it |
//! | `J`, `L` | the room's | `<origin's member count in the room> <clientId>` |
//! | `S` | nodes | JSON `[[room, count], ...]`: all of the origin's rooms |
//! | `G` | nodes | JSON `[clientId, room, ...]` (or `{}`): the members of a node that is gone |
//! | `H` | nodes | empty: a heartbeat, so a silent subscription can be told from a dead one |
//!
//! `G` is published by whoever found the node gone (a Lua script in
//! Redis, or the node itself on shutdown), but names the gone node as its
//! origin.

/// Prefix of every room channel; the room's name follows it.
pub const ROOM_PREFIX: &str = "roomcast:room:";

/// The pattern every instance subscribes to: all rooms.
pub const ROOM_PATTERN: &str = "roomcast:room:*";

/// The channel for node-wide news: `S`, `G` and `H` envelopes.
pub const NODES_CHANNEL: &str = "roomcast:nodes";

/// The set of node ids that registered and were not yet found gone.
pub const LIVE_SET: &str = "roomcast:live";

/// A node's heartbeat key; it expires when the node stops renewing it.
pub fn heartbeat_key(node: &str) -> String {
    format!("roomcast:hb:{node}")
}

/// A node's members: a hash from clientId to room name.
pub fn members_key(node: &str) -> String {
    format!("roomcast:members:{node}")
}

/// A node's rooms: a hash from room name to its member count there.
pub fn counts_key(node: &str) -> String {
    format!("roomcast:counts:{node}")
}

/// The channel of room `room`.
pub fn room_channel(room: &str) -> String {
    format!("{ROOM_PREFIX}{room}")
}

/// Kind bytes, as in the table above.
pub mod kind {
    /// A chat message.
    pub const MESSAGE: u8 = b'M';
    /// A member joined.
    pub const JOINED: u8 = b'J';
    /// A member left.
    pub const LEFT: u8 = b'L';
    /// A node's full room counts.
    pub const SYNC: u8 = b'S';
    /// A node is gone; its members left.
    pub const GONE: u8 = b'G';
    /// A node is alive.
    pub const HEARTBEAT: u8 = b'H';
}

/// Appends an envelope of `kind` from `origin` with `body` to `buf`.
pub fn encode(buf: &mut Vec<u8>, kind: u8, origin: &str, body: &[u8]) {
    buf.push(kind);
    buf.extend_from_slice(origin.as_bytes());
    buf.push(b'\n');
    buf.extend_from_slice(body);
}

/// The body of a `J` or `L` envelope.
pub fn presence_body(count: u32, client: impl std::fmt::Display) -> String {
    format!("{count} {client}")
}

/// A decoded envelope.
#[derive(Debug, PartialEq, Eq)]
pub struct Envelope<'a> {
    /// The node the news is about (for all but `G`, the sender).
    pub origin: &'a str,
    /// What it says.
    pub body: Body<'a>,
}

/// The body of an envelope.
#[derive(Debug, PartialEq, Eq)]
pub enum Body<'a> {
    /// `M`: the message JSON, ready to frame.
    Message(&'a [u8]),
    /// `J`: `client` joined; the origin now has `count` members in the room.
    Joined {
        /// The member's clientId.
        client: &'a str,
        /// The origin's members in the room, the new one included.
        count: u32,
    },
    /// `L`: `client` left; the origin now has `count` members in the room.
    Left {
        /// The member's clientId.
        client: &'a str,
        /// The origin's members left in the room.
        count: u32,
    },
    /// `S`: the origin's member count in each of its rooms.
    Sync(Vec<(String, u32)>),
    /// `G`: the origin is gone; these (clientId, room) pairs left.
    Gone(Vec<(String, String)>),
    /// `H`: the origin is alive.
    Heartbeat,
}

/// The origin node id of `payload`, without decoding the rest.
pub fn origin(payload: &[u8]) -> Option<&[u8]> {
    let rest = payload.get(1..)?;
    let end = rest.iter().position(|&b| b == b'\n')?;
    Some(&rest[..end])
}

/// Decodes `payload`; `None` when it is not an envelope of a known kind.
pub fn decode(payload: &[u8]) -> Option<Envelope<'_>> {
    let (&kind, rest) = payload.split_first()?;
    let end = rest.iter().position(|&b| b == b'\n')?;
    let origin = std::str::from_utf8(&rest[..end]).ok()?;
    let body = &rest[end + 1..];
    let body = match kind {
        kind::MESSAGE => Body::Message(body),
        kind::JOINED | kind::LEFT => {
            let text = std::str::from_utf8(body).ok()?;
            let (count, client) = text.split_once(' ')?;
            let count = count.parse().ok()?;
            if kind == kind::JOINED {
                Body::Joined { client, count }
            } else {
                Body::Left { client, count }
            }
        }
        kind::SYNC => Body::Sync(serde_json::from_slice(body).ok()?),
        kind::GONE => {
            // Lua's cjson writes an empty table as an object.
            if body == b"{}" {
                Body::Gone(Vec::new())
            } else {
                let flat: Vec<String> = serde_json::from_slice(body).ok()?;
                if flat.len() % 2 != 0 {
                    return None;
                }
                let mut pairs = Vec::with_capacity(flat.len() / 2);
                let mut it = flat.into_iter();
                while let (Some(client), Some(room)) = (it.next(), it.next()) {
                    pairs.push((client, room));
                }
                Body::Gone(pairs)
            }
        }
        kind::HEARTBEAT => Body::Heartbeat,
        _ => return None,
    };
    Some(Envelope { origin, body })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn envelope(kind: u8, origin: &str, body: &[u8]) -> Vec<u8> {
        let mut v = Vec::new();
        encode(&mut v, kind, origin, body);
        v
    }

    #[test]
    fn round_trips() {
        let m = envelope(kind::MESSAGE, "rev-1-ab", br#"{"type":"message"}"#);
        assert_eq!(origin(&m), Some(&b"rev-1-ab"[..]));
        assert_eq!(
            decode(&m).unwrap().body,
            Body::Message(br#"{"type":"message"}"#)
        );
        let body = presence_body(3, "client-1-abc");
        let j = envelope(kind::JOINED, "n", body.as_bytes());
        assert_eq!(
            decode(&j).unwrap(),
            Envelope {
                origin: "n",
                body: Body::Joined {
                    client: "client-1-abc",
                    count: 3
                }
            }
        );
        let s = envelope(kind::SYNC, "n", br#"[["a b",2],["\n",1]]"#);
        assert_eq!(
            decode(&s).unwrap().body,
            Body::Sync(vec![("a b".into(), 2), ("\n".into(), 1)])
        );
        let g = envelope(kind::GONE, "n", br#"["c1","r\/1","c2","r2"]"#);
        assert_eq!(
            decode(&g).unwrap().body,
            Body::Gone(vec![
                ("c1".into(), "r/1".into()),
                ("c2".into(), "r2".into())
            ])
        );
        let g = envelope(kind::GONE, "n", b"{}");
        assert_eq!(decode(&g).unwrap().body, Body::Gone(Vec::new()));
    }

    #[test]
    fn refuses_what_is_not_an_envelope() {
        for bad in [
            &b""[..],
            b"M",
            b"Mno-newline",
            b"Xn\nbody",
            b"Jn\nnot-a-count c",
            b"Jn\n3",
            b"Gn\n[\"odd\"]",
            b"Sn\n{",
        ] {
            assert_eq!(decode(bad), None, "{:?}", String::from_utf8_lossy(bad));
        }
    }
}
