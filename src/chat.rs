//! The chat protocol: JSON messages over WebSocket, rooms and broadcast.
//!
//! The app parses each message once, updates the room table, serialises
//! its reply once and frames it once. A broadcast frame is one shared
//! buffer queued on every member, so fan-out costs no allocation per member.

use std::borrow::Cow;
use std::rc::Rc;

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use crate::auth::Identity;
use crate::backplane::wire::{self, Body};
use crate::backplane::{Backplane, Distrusted, Event, RemoteCounts};
use crate::clock::{ClientId, IdRng, Timestamp};
use crate::frame::{encode_header, OpCode};
use crate::metrics::{Histogram, FANOUT_BOUNDS};
use crate::rooms::{Membership, Rooms};
use crate::slab::Key;

/// The longest room name accepted, in bytes.
pub const MAX_ROOM_ID_BYTES: usize = 256;

/// What the chat app keeps per connection.
#[derive(Debug, Clone)]
pub struct Member {
    /// The identifier others see.
    pub client_id: ClientId,
    /// The room the connection is in, if any.
    pub membership: Option<Membership>,
    /// The room it joined last, kept after it leaves, for the log.
    /// Boxed twice so that the field is one thin pointer: 8 bytes less on
    /// every connection, for a name only the end-of-connection log reads.
    #[allow(clippy::redundant_allocation)]
    pub last_room: Option<Box<Box<str>>>,
    /// What its token said, when auth is on.
    pub identity: Option<Rc<Identity>>,
}

/// Limits on the room table.
#[derive(Debug, Clone, Copy)]
pub struct RoomLimits {
    /// Rooms with members; a join that would create one more is refused.
    pub max_rooms: usize,
    /// Members in one room; a join beyond is refused.
    pub max_members: usize,
}

/// How the app reaches connections: the connection table implements this.
pub trait Outbox {
    /// Queues a copy of `frame` on `to`.
    fn send(&mut self, to: Key, frame: &[u8]);
    /// Queues shared frames on `to` without copying them: `messages`
    /// frames, one after another.
    fn send_shared(&mut self, to: Key, frames: &Rc<[u8]>, messages: u32);
    /// The chat state of connection `who`, if it is an open chat connection.
    fn member(&mut self, who: Key) -> Option<&mut Member>;
}

/// Every message the server sends, as it appears on the wire.
#[derive(Serialize)]
#[serde(
    tag = "type",
    rename_all = "snake_case",
    rename_all_fields = "camelCase"
)]
enum Outgoing<'a> {
    Connected {
        client_id: ClientId,
        instance_id: &'a str,
    },
    Joined {
        room_id: &'a str,
        user_count: usize,
    },
    UserJoined {
        client_id: ClientId,
        #[serde(skip_serializing_if = "Option::is_none")]
        user_id: Option<&'a str>,
        room_id: &'a str,
        user_count: usize,
    },
    Left {
        room_id: &'a str,
    },
    UserLeft {
        client_id: ClientId,
        room_id: &'a str,
        user_count: usize,
    },
    Message {
        client_id: ClientId,
        #[serde(skip_serializing_if = "Option::is_none")]
        user_id: Option<&'a str>,
        room_id: &'a str,
        text: &'a RawValue,
        timestamp: Timestamp,
    },
    Echo {
        original_message: &'a RawValue,
        timestamp: Timestamp,
    },
    Error {
        message: &'a str,
    },
    ServerShutdown,
    Reconnect {
        reason: &'a str,
    },
}

/// The fields of an incoming object that the protocol looks at, kept raw
/// so that each is checked, and reported, on its own.
#[derive(Deserialize)]
struct Incoming<'a> {
    #[serde(rename = "type", borrow, default)]
    kind: Option<&'a RawValue>,
    #[serde(rename = "roomId", borrow, default)]
    room_id: Option<&'a RawValue>,
    #[serde(borrow, default)]
    text: Option<&'a RawValue>,
}

/// The chat application: the room table and the encoder's scratch space.
pub struct Chat {
    rooms: Rooms,
    instance_id: Box<str>,
    rng: IdRng,
    /// Serialised frames are built here: ten bytes left for the header,
    /// then the JSON. Reused, so replies allocate only in the queue.
    scratch: Vec<u8>,
    /// Set during shutdown: leaving rooms then notifies nobody.
    quiet: bool,
    limits: RoomLimits,
    /// Members reached per `message` broadcast.
    fanout: Histogram,
    /// Joins refused by a room limit or a token's `rooms` claim.
    joins_refused: u64,
    /// Rooms shared with other instances, when configured.
    backplane: Option<Backplane>,
    /// The other instances' member counts, per room.
    remote: RemoteCounts,
    /// `message` broadcasts not yet queued on the members of their room.
    batch: Batch,
}

/// Broadcasts to one room, gathered so that a sender's messages in one
/// read reach each member as one shared buffer, written with one system
/// call, rather than as a buffer and an entry in its queue each.
///
/// Only `message` adds to it. Everything else that sends anything first
/// queues the batch with [`Chat::settle`], as the engine does when it has
/// handled a read and before it sends a frame of its own, so that nothing
/// overtakes a broadcast made before it.
#[derive(Default)]
struct Batch {
    /// The room the frames are for; `None` when the batch is empty.
    room: Option<Key>,
    /// Whole frames, one after another.
    frames: Vec<u8>,
    /// How many.
    count: u32,
}

/// A batch buffer that grew past this is freed once queued, so that one
/// read of large messages does not hold its size for good.
const BATCH_KEEP: usize = 16 * 1024;

/// Room space left before the JSON for the longest frame header.
const HEADER_ROOM: usize = 10;

impl Chat {
    /// An app with no rooms, naming itself `instance_id` to clients.
    pub fn new(instance_id: &str) -> Self {
        Chat {
            rooms: Rooms::new(),
            instance_id: instance_id.into(),
            rng: IdRng::new(),
            scratch: Vec::with_capacity(4096),
            quiet: false,
            limits: RoomLimits {
                max_rooms: usize::MAX,
                max_members: usize::MAX,
            },
            fanout: Histogram::new(FANOUT_BOUNDS),
            joins_refused: 0,
            backplane: None,
            remote: RemoteCounts::new(),
            batch: Batch::default(),
        }
    }

    /// Shares rooms with other instances through `backplane` from now on.
    pub fn attach_backplane(&mut self, backplane: Backplane) {
        self.backplane = Some(backplane);
    }

    /// `Some("connected")` or `Some("degraded")` with a backplane, `None`
    /// without one.
    pub fn backplane_status(&self) -> Option<&'static str> {
        let backplane = self.backplane.as_ref()?;
        Some(if backplane.is_connected() {
            "connected"
        } else {
            "degraded"
        })
    }

    /// Handles up to `max` events from the backplane. Returns true when
    /// more are waiting.
    pub fn pump_backplane(&mut self, out: &mut impl Outbox, max: usize) -> bool {
        let Some(backplane) = &self.backplane else {
            return false;
        };
        backplane.rearm();
        self.settle(out);
        for _ in 0..max {
            let Some(event) = self.backplane.as_ref().and_then(Backplane::next_event) else {
                return false;
            };
            self.on_remote(out, event);
        }
        true
    }

    /// Deregisters from the backplane, if any, waiting at most `timeout`.
    pub fn stop_backplane(&mut self, timeout: std::time::Duration) {
        if let Some(backplane) = self.backplane.take() {
            backplane.stop(timeout);
        }
    }

    /// Sets the room limits; joins already made stand.
    pub fn set_limits(&mut self, limits: RoomLimits) {
        self.limits = limits;
        // Every instance of a deployment runs with the same limits, so no
        // other one truthfully holds more members in a room either.
        self.remote.set_ceiling(limits.max_members);
    }

    /// Members reached per `message` broadcast.
    pub fn fanout(&self) -> &Histogram {
        &self.fanout
    }

    /// Joins refused so far by a room limit or a token's `rooms` claim.
    pub fn joins_refused(&self) -> u64 {
        self.joins_refused
    }

    /// Other instances' counts not taken as they came, so far.
    pub fn remote_distrusted(&self) -> Distrusted {
        self.remote.distrusted()
    }

    /// The room table.
    pub fn rooms(&self) -> &Rooms {
        &self.rooms
    }

    /// The per-connection state for a new chat connection.
    pub fn new_member(&mut self) -> Member {
        Member {
            client_id: ClientId::generate(&mut self.rng),
            membership: None,
            last_room: None,
            identity: None,
        }
    }

    /// Greets a new connection.
    pub fn on_open(&mut self, out: &mut impl Outbox, who: Key) {
        self.settle(out);
        let Some(member) = out.member(who) else {
            return;
        };
        let msg = Outgoing::Connected {
            client_id: member.client_id,
            instance_id: &self.instance_id,
        };
        let frame = encode(&mut self.scratch, &msg);
        out.send(who, frame);
    }

    /// Handles one complete message from `who`.
    pub fn on_message(&mut self, out: &mut impl Outbox, who: Key, payload: &[u8]) {
        // RFC 8259 8.1: JSON text is UTF-8. Text frames were checked by the
        // decoder, binary frames were not, and serde_json checks only the
        // strings it keeps: invalid bytes in a field the protocol ignores
        // would pass. So the whole payload is checked here, once, and
        // parsed as a str, which serde_json does not check again.
        let Ok(payload) = std::str::from_utf8(payload) else {
            return self.reply_error(out, who, "Invalid JSON");
        };
        // An object, as every protocol message is, is parsed once, straight
        // into the fields the protocol reads; other JSON, and anything that
        // fails, takes the second look that decides how to answer it.
        if payload.trim_ascii_start().starts_with('{') {
            if let Ok(fields) = serde_json::from_str::<Incoming<'_>>(payload) {
                let kind = fields
                    .kind
                    .and_then(|k| serde_json::from_str::<Cow<'_, str>>(k.get()).ok());
                return match kind.as_deref() {
                    Some("join") => self.join(out, who, fields.room_id),
                    Some("message") => self.message(out, who, fields.text),
                    Some("leave") => self.leave(out, who),
                    _ => self.echo_payload(out, who, payload),
                };
            }
        }
        match serde_json::from_str::<&RawValue>(payload) {
            Err(_) => self.reply_error(out, who, "Invalid JSON"),
            // Valid JSON that serde refuses as an object of these fields:
            // in practice a duplicated key.
            Ok(raw) if raw.get().starts_with('{') => {
                self.reply_error(out, who, "Invalid message: duplicate field")
            }
            Ok(raw) => self.echo(out, who, raw),
        }
    }

    /// Takes `who` out of its room, telling the others unless shutting down.
    pub fn on_close(&mut self, out: &mut impl Outbox, who: Key) {
        self.leave_room(out, who);
    }

    /// From now on, leaving rooms tells nobody: at shutdown every client is
    /// told once, by `server_shutdown`.
    pub fn go_quiet(&mut self) {
        self.quiet = true;
    }

    /// The `server_shutdown` frame.
    pub fn shutdown_frame(&mut self) -> &[u8] {
        encode(&mut self.scratch, &Outgoing::ServerShutdown)
    }

    /// The `{"type":"reconnect","reason":...}` frame: the server is about to
    /// close the connection and the client should connect again.
    pub fn reconnect_frame(&mut self, reason: &str) -> &[u8] {
        encode(&mut self.scratch, &Outgoing::Reconnect { reason })
    }

    fn join(&mut self, out: &mut impl Outbox, who: Key, room_id: Option<&RawValue>) {
        self.settle(out);
        let name = match room_id.map(|r| serde_json::from_str::<Cow<'_, str>>(r.get())) {
            None => return self.reply_error(out, who, "roomId is required"),
            // A JSON string that does not decode: a lone surrogate escape.
            Some(Err(_)) if room_id.is_some_and(|r| r.get().starts_with('"')) => {
                return self.reply_error(out, who, "roomId must be valid Unicode");
            }
            Some(Err(_)) => return self.reply_error(out, who, "roomId must be a string"),
            Some(Ok(name)) => name,
        };
        if name.is_empty() {
            return self.reply_error(out, who, "roomId must not be empty");
        }
        if name.len() > MAX_ROOM_ID_BYTES {
            return self.reply_error(out, who, "roomId must be at most 256 bytes");
        }
        let Some(member) = out.member(who) else {
            return;
        };
        let client_id = member.client_id;
        let identity = member.identity.clone();
        let current = member.membership.and_then(|m| self.rooms.get(m.room));
        if let Some(room) = current.filter(|r| *r.name == *name) {
            let user_count = room.members.len() + self.remote.total(&name);
            let msg = Outgoing::Joined {
                room_id: &name,
                user_count,
            };
            return out.send(who, encode(&mut self.scratch, &msg));
        }
        if let Some(refusal) = self.join_refusal(identity.as_deref(), &name) {
            self.joins_refused += 1;
            return self.reply_error(out, who, refusal);
        }
        if current.is_some() {
            self.leave_room(out, who);
        }
        let at = self.rooms.join(&name, who);
        if let Some(member) = out.member(who) {
            member.membership = Some(at);
            member.last_room = Some(Box::new(name.as_ref().into()));
        }
        let room = self.rooms.get(at.room).expect("just joined");
        if let Some(backplane) = &self.backplane {
            backplane.joined(&name, client_id, room.members.len());
        }
        let user_count = room.members.len() + self.remote.total(&name);
        let joined = Outgoing::Joined {
            room_id: &name,
            user_count,
        };
        out.send(who, encode(&mut self.scratch, &joined));
        let notice = Outgoing::UserJoined {
            client_id,
            user_id: identity.as_ref().and_then(|i| i.user_id.as_deref()),
            room_id: &name,
            user_count,
        };
        let frame: Rc<[u8]> = Rc::from(encode(&mut self.scratch, &notice));
        for &member in room.members.iter().filter(|&&m| m != who) {
            out.send_shared(member, &frame, 1);
        }
    }

    fn message(&mut self, out: &mut impl Outbox, who: Key, text: Option<&RawValue>) {
        let text = match text {
            None => return self.reply_error(out, who, "text is required"),
            Some(t) if !t.get().starts_with('"') => {
                return self.reply_error(out, who, "text must be a string");
            }
            // RFC 8259 8.2: a lone surrogate escape (`"\ud800"`) is JSON by
            // the grammar but not Unicode, and strict parsers refuse it;
            // forwarded as written it would break every member's client.
            Some(t) if t.get().contains("\\u") && !is_unicode_string(t) => {
                return self.reply_error(out, who, "text must be valid Unicode");
            }
            Some(t) => t,
        };
        let Some(member) = out.member(who) else {
            return;
        };
        let client_id = member.client_id;
        let identity = member.identity.clone();
        let Some(at) = member
            .membership
            .filter(|m| self.rooms.get(m.room).is_some())
        else {
            return self.reply_error(out, who, "Join a room first");
        };
        if self.batch.room != Some(at.room) {
            self.settle(out);
            self.batch.room = Some(at.room);
        }
        let room = self.rooms.get(at.room).expect("checked above");
        // The text is forwarded as the sender wrote it: it is already a
        // valid JSON string, so it needs no unescaping and re-escaping.
        let msg = Outgoing::Message {
            client_id,
            user_id: identity.as_ref().and_then(|i| i.user_id.as_deref()),
            room_id: &room.name,
            text,
            timestamp: Timestamp::now(),
        };
        self.batch
            .frames
            .extend_from_slice(encode(&mut self.scratch, &msg));
        self.batch.count += 1;
        self.fanout.observe(room.members.len() as u64);
        if let Some(backplane) = &self.backplane {
            backplane.publish(&room.name, &self.scratch[HEADER_ROOM..]);
        }
    }

    /// Queues the gathered broadcasts on their room's members (see
    /// [`Batch`]), as one shared buffer.
    #[inline]
    pub fn settle(&mut self, out: &mut impl Outbox) {
        // Inlined so that the usual case, nothing gathered, costs a compare
        // and no call.
        if let Some(room) = self.batch.room.take() {
            self.queue_batch(out, room);
        }
    }

    /// [`Chat::settle`]'s work, when there is a batch for `room`.
    fn queue_batch(&mut self, out: &mut impl Outbox, room: Key) {
        let frames: Rc<[u8]> = Rc::from(self.batch.frames.as_slice());
        let count = std::mem::take(&mut self.batch.count);
        if self.batch.frames.capacity() > BATCH_KEEP {
            self.batch.frames = Vec::new();
        } else {
            self.batch.frames.clear();
        }
        if let Some(room) = self.rooms.get(room) {
            for &member in &room.members {
                out.send_shared(member, &frames, count);
            }
        }
    }

    /// Why `name` may not be joined, if it may not: the token's `rooms`
    /// claim, then the room limits. The caller is in no room of that name.
    fn join_refusal(&self, identity: Option<&Identity>, name: &str) -> Option<&'static str> {
        if identity.is_some_and(|i| !i.may_join(name)) {
            return Some("Not allowed to join this room");
        }
        match self.rooms.find(name).and_then(|k| self.rooms.get(k)) {
            Some(room) if room.members.len() >= self.limits.max_members => Some("Room is full"),
            Some(_) => None,
            None if self.rooms.len() >= self.limits.max_rooms => Some("Too many rooms"),
            None => None,
        }
    }

    /// Answers `who` with an error message.
    pub fn send_error(&mut self, out: &mut impl Outbox, who: Key, message: &str) {
        self.reply_error(out, who, message);
    }

    fn leave(&mut self, out: &mut impl Outbox, who: Key) {
        self.settle(out);
        let Some(at) = out.member(who).and_then(|m| m.membership) else {
            return self.reply_error(out, who, "Not in a room");
        };
        let name = self
            .rooms
            .get(at.room)
            .map(|r| r.name.clone())
            .unwrap_or_default();
        self.leave_room(out, who);
        let msg = Outgoing::Left { room_id: &name };
        out.send(who, encode(&mut self.scratch, &msg));
    }

    /// Removes `who` from its room, fixing the position of the member moved
    /// into its place, and tells the rest.
    fn leave_room(&mut self, out: &mut impl Outbox, who: Key) {
        self.settle(out);
        let Some(member) = out.member(who) else {
            return;
        };
        let Some(at) = member.membership.take() else {
            return;
        };
        let client_id = member.client_id;
        if let (Some(backplane), Some(room)) = (&self.backplane, self.rooms.get(at.room)) {
            // Told even at shutdown: the other instances' members stay.
            backplane.left(&room.name, client_id, room.members.len() - 1);
        }
        let left = self.rooms.leave(at);
        if let Some((moved, position)) = left.moved {
            if let Some(m) = out.member(moved).and_then(|m| m.membership.as_mut()) {
                m.position = position;
            }
        }
        if left.remaining == 0 || self.quiet {
            return;
        }
        let room = self
            .rooms
            .get(at.room)
            .expect("a room with members remains");
        let notice = Outgoing::UserLeft {
            client_id,
            room_id: &room.name,
            user_count: left.remaining + self.remote.total(&room.name),
        };
        let frame: Rc<[u8]> = Rc::from(encode(&mut self.scratch, &notice));
        for &member in &room.members {
            out.send_shared(member, &frame, 1);
        }
    }

    /// Handles news from another instance.
    fn on_remote(&mut self, out: &mut impl Outbox, event: Event) {
        match event {
            Event::Room { room, payload } => {
                let Some(envelope) = wire::decode(&payload) else {
                    return;
                };
                match envelope.body {
                    Body::Message(json) => self.remote_message(out, &room, json),
                    Body::Joined { client, count } => {
                        self.remote.set(&room, envelope.origin, count);
                        self.remote_presence(out, &room, client, true);
                    }
                    Body::Left { client, count } => {
                        self.remote.set(&room, envelope.origin, count);
                        self.remote_presence(out, &room, client, false);
                    }
                    Body::Sync(_) | Body::Gone(_) | Body::Heartbeat => {}
                }
            }
            Event::Nodes { payload } => {
                let Some(envelope) = wire::decode(&payload) else {
                    return;
                };
                match envelope.body {
                    Body::Sync(rooms) => self.remote.replace_node(envelope.origin, &rooms),
                    Body::Gone(members) => {
                        for (client, room) in &members {
                            self.remote.decrement(room, envelope.origin);
                            self.remote_presence(out, room, client, false);
                        }
                        self.remote.remove_node(envelope.origin);
                    }
                    Body::Message(_)
                    | Body::Joined { .. }
                    | Body::Left { .. }
                    | Body::Heartbeat => {}
                }
            }
            Event::Snapshot(table) => self.remote.replace_all(&table),
        }
    }

    /// Frames a message from another instance once and queues it on every
    /// local member of `room`, as a local broadcast is.
    fn remote_message(&mut self, out: &mut impl Outbox, room: &str, json: &[u8]) {
        let Some(room) = self.rooms.find(room).and_then(|k| self.rooms.get(k)) else {
            return;
        };
        // RFC 6455 5.6: "text" data MUST be UTF-8, and members expect JSON.
        // Another instance only publishes both, but anything with access to
        // Redis can publish on the channel; what is neither is dropped.
        let Ok(text) = std::str::from_utf8(json) else {
            return;
        };
        if serde_json::from_str::<serde::de::IgnoredAny>(text).is_err() {
            return;
        }
        let frame: Rc<[u8]> = Rc::from(frame_json(&mut self.scratch, json));
        for &member in &room.members {
            out.send_shared(member, &frame, 1);
        }
    }

    /// Tells the local members of `room` that `client`, elsewhere, joined
    /// or left, with the room's size across instances.
    fn remote_presence(&mut self, out: &mut impl Outbox, room: &str, client: &str, joined: bool) {
        let Some(room) = self.rooms.find(room).and_then(|k| self.rooms.get(k)) else {
            return;
        };
        let Some(client_id) = ClientId::parse(client) else {
            return;
        };
        let room_id = &*room.name;
        let user_count = room.members.len() + self.remote.total(room_id);
        let notice = if joined {
            // LIMITATION: the backplane's presence events carry no user id,
            // so a token holder joining on another instance is announced
            // here without `userId` (its messages do carry it).
            Outgoing::UserJoined {
                client_id,
                user_id: None,
                room_id,
                user_count,
            }
        } else {
            Outgoing::UserLeft {
                client_id,
                room_id,
                user_count,
            }
        };
        let frame: Rc<[u8]> = Rc::from(encode(&mut self.scratch, &notice));
        for &member in &room.members {
            out.send_shared(member, &frame, 1);
        }
    }

    /// Echoes a payload already known to be valid JSON.
    fn echo_payload(&mut self, out: &mut impl Outbox, who: Key, payload: &str) {
        match serde_json::from_str::<&RawValue>(payload) {
            Ok(raw) => self.echo(out, who, raw),
            Err(_) => self.reply_error(out, who, "Invalid JSON"),
        }
    }

    fn echo(&mut self, out: &mut impl Outbox, who: Key, original: &RawValue) {
        self.settle(out);
        let msg = Outgoing::Echo {
            original_message: original,
            timestamp: Timestamp::now(),
        };
        out.send(who, encode(&mut self.scratch, &msg));
    }

    fn reply_error(&mut self, out: &mut impl Outbox, who: Key, message: &str) {
        self.settle(out);
        out.send(who, encode(&mut self.scratch, &Outgoing::Error { message }));
    }
}

/// Whether a raw JSON string decodes to Unicode: no lone surrogate escape.
fn is_unicode_string(raw: &RawValue) -> bool {
    serde_json::from_str::<Cow<'_, str>>(raw.get()).is_ok()
}

/// Serialises `msg` and frames it as one text frame, in `scratch`. The
/// JSON alone is left at `scratch[HEADER_ROOM..]`.
fn encode<'s>(scratch: &'s mut Vec<u8>, msg: &Outgoing<'_>) -> &'s [u8] {
    scratch.clear();
    scratch.resize(HEADER_ROOM, 0);
    serde_json::to_writer(&mut *scratch, msg).expect("serialising to a Vec cannot fail");
    frame_scratch(scratch)
}

/// Frames JSON serialised elsewhere as one text frame, in `scratch`.
fn frame_json<'s>(scratch: &'s mut Vec<u8>, json: &[u8]) -> &'s [u8] {
    scratch.clear();
    scratch.resize(HEADER_ROOM, 0);
    scratch.extend_from_slice(json);
    frame_scratch(scratch)
}

/// Writes the header for the JSON at `scratch[HEADER_ROOM..]` just before
/// it and returns the frame.
fn frame_scratch(scratch: &mut [u8]) -> &[u8] {
    let len = scratch.len() - HEADER_ROOM;
    let mut header = [0u8; 10];
    let n = encode_header(&mut header, true, OpCode::Text, len);
    let start = HEADER_ROOM - n;
    scratch[start..HEADER_ROOM].copy_from_slice(&header[..n]);
    &scratch[start..]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame::parse_header;
    use crate::slab::Slab;
    use serde_json::{json, Value};

    /// A connection table with nothing but chat state and received frames.
    #[derive(Default)]
    struct Table {
        slab: Slab<(Member, Vec<Value>)>,
        /// Shared buffers queued, and the messages in them.
        shared: Vec<u32>,
    }

    impl Outbox for Table {
        fn send(&mut self, to: Key, frame: &[u8]) {
            let h = parse_header(frame).unwrap().unwrap();
            assert_eq!(h.opcode, OpCode::Text);
            let v = serde_json::from_slice(&frame[h.header_len..]).unwrap();
            self.slab.get_mut(to).unwrap().1.push(v);
        }
        fn send_shared(&mut self, to: Key, frames: &Rc<[u8]>, messages: u32) {
            self.shared.push(messages);
            let mut rest = &frames[..];
            for _ in 0..messages {
                let h = parse_header(rest).unwrap().unwrap();
                let len = h.header_len + h.payload_len as usize;
                self.send(to, &rest[..len]);
                rest = &rest[len..];
            }
            assert!(rest.is_empty(), "{messages} frames and no more");
        }
        fn member(&mut self, who: Key) -> Option<&mut Member> {
            self.slab.get_mut(who).map(|(m, _)| m)
        }
    }

    fn connect(chat: &mut Chat, t: &mut Table) -> Key {
        let k = t.slab.insert((chat.new_member(), Vec::new()));
        chat.on_open(t, k);
        k
    }

    fn take(t: &mut Table, k: Key) -> Vec<Value> {
        std::mem::take(&mut t.slab.get_mut(k).unwrap().1)
    }

    /// Sends `v` from `k` as a read of its own: the engine settles the
    /// chat's batch after each read.
    fn send(chat: &mut Chat, t: &mut Table, k: Key, v: Value) {
        chat.on_message(t, k, v.to_string().as_bytes());
        chat.settle(t);
    }

    #[test]
    fn join_message_leave_flow() {
        let mut chat = Chat::new("rev-1");
        let mut t = Table::default();
        let a = connect(&mut chat, &mut t);
        let b = connect(&mut chat, &mut t);
        let hello = take(&mut t, a);
        assert_eq!(hello[0]["type"], "connected");
        assert_eq!(hello[0]["instanceId"], "rev-1");
        let b_id = take(&mut t, b)[0]["clientId"].clone();

        send(&mut chat, &mut t, a, json!({"type": "join", "roomId": "r"}));
        send(&mut chat, &mut t, b, json!({"type": "join", "roomId": "r"}));
        assert_eq!(
            take(&mut t, b),
            vec![json!({"type":"joined","roomId":"r","userCount":2})]
        );
        let a_got = take(&mut t, a);
        assert_eq!(
            a_got[1],
            json!({"type":"user_joined","clientId":b_id,"roomId":"r","userCount":2})
        );

        send(
            &mut chat,
            &mut t,
            b,
            json!({"type": "message", "text": "hi \"there\""}),
        );
        for k in [a, b] {
            let m = take(&mut t, k).remove(0);
            assert_eq!(m["text"], "hi \"there\"");
            assert_eq!(m["clientId"], b_id);
            assert_eq!(m["roomId"], "r");
        }

        send(&mut chat, &mut t, b, json!({"type": "leave"}));
        assert_eq!(take(&mut t, b), vec![json!({"type":"left","roomId":"r"})]);
        assert_eq!(
            take(&mut t, a),
            vec![json!({"type":"user_left","clientId":b_id,"roomId":"r","userCount":1})]
        );
    }

    #[test]
    fn a_reads_broadcasts_reach_each_member_as_one_buffer_in_order() {
        let mut chat = Chat::new("x");
        let mut t = Table::default();
        let (a, b) = (connect(&mut chat, &mut t), connect(&mut chat, &mut t));
        for k in [a, b] {
            send(&mut chat, &mut t, k, json!({"type": "join", "roomId": "r"}));
        }
        take(&mut t, a);
        take(&mut t, b);
        t.shared.clear();
        // One read from `a`: two messages, a mistake, one more message.
        chat.on_message(&mut t, a, br#"{"type":"message","text":"1"}"#);
        chat.on_message(&mut t, a, br#"{"type":"message","text":"2"}"#);
        assert!(t.shared.is_empty(), "gathered until something else is sent");
        chat.on_message(&mut t, a, br#"{"type":"message"}"#);
        chat.on_message(&mut t, a, br#"{"type":"message","text":"3"}"#);
        chat.settle(&mut t);
        let texts = |v: Vec<Value>| -> Vec<String> {
            v.iter()
                .map(|m| m["text"].as_str().unwrap_or("error").to_owned())
                .collect()
        };
        // The error to `a` waits for the broadcasts before it.
        assert_eq!(texts(take(&mut t, a)), ["1", "2", "error", "3"]);
        assert_eq!(texts(take(&mut t, b)), ["1", "2", "3"]);
        // Two buffers per member: "1" and "2" together, then "3".
        assert_eq!(t.shared, [2, 2, 1, 1]);
        // Leaving settles first: the others see the message, then the exit.
        chat.on_message(&mut t, a, br#"{"type":"message","text":"4"}"#);
        chat.on_message(&mut t, a, br#"{"type":"leave"}"#);
        let to_b = take(&mut t, b);
        assert_eq!(to_b[0]["text"], "4");
        assert_eq!(to_b[1]["type"], "user_left");
        let to_a = take(&mut t, a);
        assert_eq!(
            (&to_a[0]["text"], &to_a[1]["type"]),
            (&json!("4"), &json!("left"))
        );
    }

    #[test]
    fn rejoining_the_same_room_is_idempotent() {
        let mut chat = Chat::new("x");
        let mut t = Table::default();
        let a = connect(&mut chat, &mut t);
        let b = connect(&mut chat, &mut t);
        send(&mut chat, &mut t, a, json!({"type": "join", "roomId": "r"}));
        send(&mut chat, &mut t, b, json!({"type": "join", "roomId": "r"}));
        take(&mut t, a);
        send(&mut chat, &mut t, b, json!({"type": "join", "roomId": "r"}));
        assert_eq!(
            take(&mut t, b).last(),
            Some(&json!({"type":"joined","roomId":"r","userCount":2}))
        );
        assert!(take(&mut t, a).is_empty());
    }

    #[test]
    fn field_errors_name_the_field() {
        let mut chat = Chat::new("x");
        let mut t = Table::default();
        let a = connect(&mut chat, &mut t);
        take(&mut t, a);
        let long = "r".repeat(257);
        for (msg, field) in [
            (json!({"type": "join"}), "roomId"),
            (json!({"type": "join", "roomId": ""}), "roomId"),
            (json!({"type": "join", "roomId": 5}), "roomId"),
            (json!({"type": "join", "roomId": long}), "roomId"),
            (json!({"type": "message", "text": 5}), "text"),
            (json!({"type": "message"}), "text"),
        ] {
            send(&mut chat, &mut t, a, msg.clone());
            let reply = take(&mut t, a).remove(0);
            assert_eq!(reply["type"], "error", "{msg}");
            assert!(
                reply["message"].as_str().unwrap().contains(field),
                "{msg}: {reply}"
            );
        }
        chat.on_message(&mut t, a, br#"{"type":"join","roomId":"\ud800"}"#);
        let reply = take(&mut t, a).remove(0);
        assert_eq!(reply["message"], "roomId must be valid Unicode");
        // Found by the chat fuzz target: a lone surrogate in a message's
        // text was forwarded as written, and strict JSON parsers (serde_json
        // among them) refuse what every member of the room then received.
        send(&mut chat, &mut t, a, json!({"type": "join", "roomId": "r"}));
        take(&mut t, a);
        for text in [r#""\ud800""#, r#""a\uDFFFb""#, r#""\ud83d\u0041""#] {
            let msg = format!(r#"{{"type":"message","text":{text}}}"#);
            chat.on_message(&mut t, a, msg.as_bytes());
            let reply = take(&mut t, a).remove(0);
            assert_eq!(reply["message"], "text must be valid Unicode", "{text}");
        }
        // A surrogate pair, and a backslash before a `u`, are fine.
        chat.on_message(
            &mut t,
            a,
            br#"{"type":"message","text":"\ud83d\ude00 \\u"}"#,
        );
        chat.settle(&mut t);
        assert_eq!(take(&mut t, a)[0]["text"], "\u{1F600} \\u");
        send(&mut chat, &mut t, a, json!({"type": "leave"}));
        take(&mut t, a);
        send(
            &mut chat,
            &mut t,
            a,
            json!({"type": "join", "roomId": "r".repeat(256)}),
        );
        assert_eq!(take(&mut t, a)[0]["type"], "joined");
    }

    #[test]
    fn other_json_is_echoed_unchanged_and_bad_json_is_an_error() {
        let mut chat = Chat::new("x");
        let mut t = Table::default();
        let a = connect(&mut chat, &mut t);
        take(&mut t, a);
        for raw in [
            "42",
            "\"s\"",
            "[1, {\"b\": 2}]",
            "null",
            "{\"type\":\"ping\",\"z\":1,\"a\":2}",
        ] {
            chat.on_message(&mut t, a, raw.as_bytes());
            let reply = take(&mut t, a).remove(0);
            assert_eq!(reply["type"], "echo");
            assert_eq!(
                reply["originalMessage"],
                serde_json::from_str::<Value>(raw).unwrap()
            );
        }
        for raw in ["{", "nope", "\u{0}", "{\"a\":1}x"] {
            chat.on_message(&mut t, a, raw.as_bytes());
            assert_eq!(
                take(&mut t, a),
                vec![json!({"type":"error","message":"Invalid JSON"})]
            );
        }
        // Binary frames are not UTF-8 checked by the framing layer; bytes
        // that are not UTF-8 never reach a text frame of ours.
        for raw in [
            &b"{\"x\":\"\xff\"}"[..],
            b"{\"type\":\"message\",\"text\":\"\xff\"}",
            b"\"\xff\"",
            // Found by the chat fuzz target: bad bytes in a field the
            // protocol ignores went unchecked, and the command was obeyed.
            b"{\"x\":\"\xff\",\"type\":\"leave\"}",
            b"{\"type\":\"join\",\"roomId\":\"r\",\"pad\":[\"\xc0\xaf\"]}",
        ] {
            chat.on_message(&mut t, a, raw);
            assert_eq!(
                take(&mut t, a),
                vec![json!({"type":"error","message":"Invalid JSON"})]
            );
        }
        chat.on_message(&mut t, a, br#"{"type":"message","text":"t"}"#);
        assert_eq!(
            take(&mut t, a),
            vec![json!({"type":"error","message":"Join a room first"})]
        );
        chat.on_message(&mut t, a, br#"{"type":"leave"}"#);
        assert_eq!(
            take(&mut t, a),
            vec![json!({"type":"error","message":"Not in a room"})]
        );
    }

    #[test]
    fn echo_keeps_key_order_and_spelling() {
        let mut chat = Chat::new("x");
        let mut t = Table::default();
        let a = connect(&mut chat, &mut t);
        take(&mut t, a);
        let k = t.slab.insert((chat.new_member(), Vec::new()));
        // Check the raw bytes: the original is embedded exactly as sent.
        struct Raw(Vec<u8>);
        let mut raw = Raw(Vec::new());
        impl Outbox for Raw {
            fn send(&mut self, _: Key, frame: &[u8]) {
                self.0 = frame.to_vec();
            }
            fn send_shared(&mut self, _: Key, _: &Rc<[u8]>, _: u32) {}
            fn member(&mut self, _: Key) -> Option<&mut Member> {
                None
            }
        }
        chat.on_message(&mut raw, k, br#"{"z":1,"a":"\u0041"}"#);
        let text = String::from_utf8_lossy(&raw.0).into_owned();
        assert!(
            text.contains(r#""originalMessage":{"z":1,"a":"\u0041"}"#),
            "{text}"
        );
    }

    fn envelope(kind: u8, origin: &str, body: &str) -> Vec<u8> {
        let mut v = Vec::new();
        wire::encode(&mut v, kind, origin, body.as_bytes());
        v
    }

    fn room_event(room: &str, payload: Vec<u8>) -> Event {
        Event::Room {
            room: room.into(),
            payload,
        }
    }

    #[test]
    fn news_from_other_instances_reaches_local_members_with_global_counts() {
        use crate::backplane::wire::kind;
        let mut chat = Chat::new("x");
        let mut t = Table::default();
        let a = connect(&mut chat, &mut t);
        let b = connect(&mut chat, &mut t);
        send(&mut chat, &mut t, a, json!({"type": "join", "roomId": "r"}));
        send(&mut chat, &mut t, b, json!({"type": "join", "roomId": "r"}));
        take(&mut t, a);
        take(&mut t, b);

        let msg = concat!(
            r#"{"type":"message","clientId":"client-1-000000001","roomId":"r","#,
            r#""text":"hi","timestamp":"2026-12-03T15:28:46.123Z"}"#
        );
        chat.on_remote(&mut t, room_event("r", envelope(kind::MESSAGE, "n2", msg)));
        let want: Value = serde_json::from_str(msg).unwrap();
        assert_eq!(take(&mut t, a), vec![want.clone()]);
        assert_eq!(take(&mut t, b), vec![want]);
        // A room with no local members: nothing to do, nothing sent.
        chat.on_remote(&mut t, room_event("q", envelope(kind::MESSAGE, "n2", msg)));
        assert!(take(&mut t, a).is_empty());

        let c1 = "client-1-000000001";
        chat.on_remote(
            &mut t,
            room_event("r", envelope(kind::JOINED, "n2", &format!("1 {c1}"))),
        );
        assert_eq!(
            take(&mut t, a),
            vec![json!({"type":"user_joined","clientId":c1,"roomId":"r","userCount":3})]
        );
        let c = connect(&mut chat, &mut t);
        send(&mut chat, &mut t, c, json!({"type": "join", "roomId": "r"}));
        assert_eq!(take(&mut t, c)[1]["userCount"], 4);

        // A node gone with two members: both announced, counts falling.
        let sync = r#"[["r",2],["q",1]]"#;
        chat.on_remote(
            &mut t,
            Event::Nodes {
                payload: envelope(kind::SYNC, "n3", sync),
            },
        );
        take(&mut t, a);
        let gone =
            r#"["client-2-000000002","r","client-3-000000003","r","client-4-000000004","q"]"#;
        chat.on_remote(
            &mut t,
            Event::Nodes {
                payload: envelope(kind::GONE, "n3", gone),
            },
        );
        let got = take(&mut t, a);
        let counts: Vec<&Value> = got.iter().map(|v| &v["userCount"]).collect();
        assert_eq!(counts, [&json!(5), &json!(4)]);
        assert_eq!(got[0]["clientId"], "client-2-000000002");

        chat.on_remote(
            &mut t,
            room_event("r", envelope(kind::LEFT, "n2", &format!("0 {c1}"))),
        );
        assert_eq!(
            take(&mut t, b).last(),
            Some(&json!({"type":"user_left","clientId":c1,"roomId":"r","userCount":3}))
        );
        take(&mut t, a);
        // A snapshot replaces what was known.
        chat.on_remote(
            &mut t,
            Event::Snapshot(vec![("n9".into(), vec![("r".into(), 7)])]),
        );
        send(&mut chat, &mut t, a, json!({"type": "join", "roomId": "r"}));
        assert_eq!(take(&mut t, a)[0]["userCount"], 10);
    }

    #[test]
    fn another_instances_count_is_held_to_the_room_limit() {
        use crate::backplane::wire::kind;
        let mut chat = Chat::new("x");
        chat.set_limits(RoomLimits {
            max_rooms: 10,
            max_members: 5,
        });
        let mut t = Table::default();
        let a = connect(&mut chat, &mut t);
        send(&mut chat, &mut t, a, json!({"type": "join", "roomId": "r"}));
        take(&mut t, a);
        let c1 = "client-1-000000001";
        let joined = format!("{} {c1}", u32::MAX);
        chat.on_remote(
            &mut t,
            room_event("r", envelope(kind::JOINED, "n2", &joined)),
        );
        assert_eq!(
            take(&mut t, a),
            vec![json!({"type":"user_joined","clientId":c1,"roomId":"r","userCount":6})]
        );
        let sync = format!(r#"[["r",{}]]"#, u32::MAX);
        chat.on_remote(
            &mut t,
            Event::Nodes {
                payload: envelope(kind::SYNC, "n3", &sync),
            },
        );
        send(&mut chat, &mut t, a, json!({"type": "join", "roomId": "r"}));
        assert_eq!(take(&mut t, a)[0]["userCount"], 11);
    }

    #[test]
    fn leaving_fixes_the_moved_members_position() {
        let mut chat = Chat::new("x");
        let mut t = Table::default();
        let ks: Vec<Key> = (0..4).map(|_| connect(&mut chat, &mut t)).collect();
        for &k in &ks {
            send(&mut chat, &mut t, k, json!({"type": "join", "roomId": "r"}));
        }
        chat.on_close(&mut t, ks[0]);
        chat.on_close(&mut t, ks[2]);
        for &k in &ks {
            take(&mut t, k);
        }
        send(&mut chat, &mut t, ks[3], json!({"type": "leave"}));
        assert_eq!(take(&mut t, ks[1])[0]["userCount"], 1);
        send(&mut chat, &mut t, ks[1], json!({"type": "leave"}));
        assert!(chat.rooms().is_empty());
    }
}
