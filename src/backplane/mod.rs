//! The backplane: rooms shared between instances through Redis.
//!
//! Two threads own the Redis connections, so the event loop never waits on
//! Redis. The publisher takes [`Command`]s from the loop in order, on one
//! connection, so one sender's messages reach Redis, and every other
//! instance, in the order they were sent; it also keeps this node's
//! presence (its heartbeat key, members and per-room counts) and finds
//! nodes whose heartbeat expired. The subscriber holds one pattern
//! subscription to every room plus the nodes channel and hands what it
//! hears to the loop as [`Event`]s, waking it through a `mio::Waker`; it
//! drops this node's own publications, so local members, who got a
//! message locally, never get it twice.
//!
//! Both threads reconnect with capped backoff. While either is away the
//! backplane reports itself degraded and the loop goes on serving local
//! rooms; messages published meanwhile are dropped (counted and logged),
//! and presence is written afresh on reconnect.

mod counts;
mod link;
pub mod wire;

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::Arc;
use std::time::Duration;

pub use counts::{Distrusted, RemoteCounts};

use crate::clock::{ClientId, IdRng};

/// Messages the loop may have handed to the publisher and not yet seen
/// written. Past this (Redis slower than the rooms' traffic), further
/// messages are dropped rather than queued without bound; presence changes
/// are always queued, as they are one per join or leave.
pub const MAX_QUEUED_MESSAGES: usize = 65_536;

/// Events the subscriber may have handed the loop and the loop not yet
/// taken. When the loop falls this far behind, the subscriber stops
/// reading, Redis buffers for it, and past Redis's own limit for
/// subscribers (`client-output-buffer-limit pubsub`) drops the connection,
/// which the subscriber then re-establishes: memory stays bounded here and
/// the messages in between are lost.
pub const MAX_QUEUED_EVENTS: usize = 65_536;

/// What the loop asks of the publisher.
#[derive(Debug)]
pub enum Command {
    /// Publish a chat message's JSON to the room's other instances.
    Publish {
        /// The room.
        room: Box<str>,
        /// The `message` JSON as local members got it, without framing.
        json: Vec<u8>,
    },
    /// A local member joined `room`; this node now has `count` there.
    Joined {
        /// The room.
        room: Box<str>,
        /// The member.
        client: ClientId,
        /// This node's members in the room.
        count: u32,
    },
    /// A local member left `room`; this node has `count` left there.
    Left {
        /// The room.
        room: Box<str>,
        /// The member.
        client: ClientId,
        /// This node's members left in the room.
        count: u32,
    },
    /// Deregister and stop; the sender is told when done.
    Stop(Sender<()>),
}

/// What the subscriber hands the loop.
#[derive(Debug)]
pub enum Event {
    /// An envelope published on a room's channel by another node.
    Room {
        /// The room, from the channel name.
        room: Box<str>,
        /// The envelope ([`wire::decode`]).
        payload: Vec<u8>,
    },
    /// An envelope published on the nodes channel.
    Nodes {
        /// The envelope ([`wire::decode`]).
        payload: Vec<u8>,
    },
    /// Every other live node's room counts, read after (re)subscribing.
    Snapshot(NodeCounts),
}

/// Nodes and their rooms' member counts: `(node, [(room, count)])`.
pub type NodeCounts = Vec<(String, Vec<(String, u32)>)>;

/// State shared by the loop and the two threads.
struct Shared {
    publisher_up: AtomicBool,
    subscriber_up: AtomicBool,
    /// Set by a thread that woke the loop, cleared by the loop before it
    /// drains events: one wake-up per batch rather than per event.
    wake_pending: AtomicBool,
    /// Publish commands queued and not yet taken by the publisher.
    queued: AtomicUsize,
    /// Messages dropped since the last report.
    dropped: AtomicU64,
    /// Subscriber sessions lost so far: the publisher reconnects when this
    /// moves, as its own connection most likely died too.
    subscriber_losses: AtomicU64,
}

/// Settings for [`Backplane::start`].
#[derive(Debug, Clone)]
pub struct Settings {
    /// The Redis URL, `redis://[user:password@]host[:port][/db]`.
    pub url: String,
    /// How long a node's presence outlives its last heartbeat.
    pub expiry: Duration,
    /// The instance's name, the readable part of the node id.
    pub instance_id: String,
}

/// The loop's handle on the backplane.
pub struct Backplane {
    node: Arc<str>,
    commands: Sender<Command>,
    events: Receiver<Event>,
    shared: Arc<Shared>,
}

impl Backplane {
    /// Starts the publisher and subscriber threads; `waker` wakes the loop
    /// when events arrive. Redis need not be reachable yet.
    ///
    /// # Errors
    ///
    /// When the URL does not parse, or a thread cannot be started.
    pub fn start(settings: &Settings, waker: mio::Waker) -> Result<Backplane, String> {
        let client = redis::Client::open(settings.url.as_str())
            .map_err(|e| format!("bad Redis URL: {e}"))?;
        let node: Arc<str> = node_id(&settings.instance_id).into();
        let shared = Arc::new(Shared {
            publisher_up: AtomicBool::new(false),
            subscriber_up: AtomicBool::new(false),
            wake_pending: AtomicBool::new(false),
            queued: AtomicUsize::new(0),
            dropped: AtomicU64::new(0),
            subscriber_losses: AtomicU64::new(0),
        });
        let (commands, command_rx) = mpsc::channel();
        let (event_tx, events) = mpsc::sync_channel(MAX_QUEUED_EVENTS);
        let ctx = link::Context {
            client,
            node: node.clone(),
            expiry: settings.expiry,
            shared: shared.clone(),
        };
        link::spawn(ctx, command_rx, event_tx, waker).map_err(|e| e.to_string())?;
        Ok(Backplane {
            node,
            commands,
            events,
            shared,
        })
    }

    /// This process's node id: the instance id and random bits, unique even
    /// among instances of one Cloud Run revision.
    pub fn node(&self) -> &str {
        &self.node
    }

    /// Whether both connections to Redis are up.
    pub fn is_connected(&self) -> bool {
        self.shared.publisher_up.load(Ordering::Relaxed)
            && self.shared.subscriber_up.load(Ordering::Relaxed)
    }

    /// Hands a chat message in `room` to the other instances.
    pub fn publish(&self, room: &str, json: &[u8]) {
        if self.shared.queued.load(Ordering::Relaxed) >= MAX_QUEUED_MESSAGES {
            self.shared.dropped.fetch_add(1, Ordering::Relaxed);
            return;
        }
        self.shared.queued.fetch_add(1, Ordering::Relaxed);
        self.send(Command::Publish {
            room: room.into(),
            json: json.to_vec(),
        });
    }

    /// Tells the other instances `client` joined `room`, where this node
    /// now has `count` members.
    pub fn joined(&self, room: &str, client: ClientId, count: usize) {
        self.send(Command::Joined {
            room: room.into(),
            client,
            count: saturate(count),
        });
    }

    /// Tells the other instances `client` left `room`, where this node has
    /// `count` members left.
    pub fn left(&self, room: &str, client: ClientId, count: usize) {
        self.send(Command::Left {
            room: room.into(),
            client,
            count: saturate(count),
        });
    }

    fn send(&self, command: Command) {
        // The publisher runs until told to stop, so this fails only after
        // a panic in it, which was logged; the loop keeps serving locally.
        let _ = self.commands.send(command);
    }

    /// Arms the wake-up for events that arrive from now on; call before
    /// draining with [`Backplane::next_event`].
    pub fn rearm(&self) {
        self.shared.wake_pending.store(false, Ordering::SeqCst);
    }

    /// The next event, if one is waiting.
    pub fn next_event(&self) -> Option<Event> {
        self.events.try_recv().ok()
    }

    /// Deregisters this node, so the others announce its remaining
    /// members as left at once, and stops the publisher. Waits at most
    /// `timeout` for Redis.
    pub fn stop(&self, timeout: Duration) {
        let (done, wait) = mpsc::channel();
        self.send(Command::Stop(done));
        let _ = wait.recv_timeout(timeout);
    }
}

fn saturate(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

/// The longest node id [`node_id`] makes: 64 bytes of instance id, a dash
/// and 16 hex digits.
pub(crate) const MAX_NODE_ID_BYTES: usize = 64 + 1 + 16;

/// `<instance id>-<16 hex digits>`, with characters other than ASCII
/// letters, digits, `.`, `_` and `-` in the instance id replaced by `_`,
/// as the id is written into key names and envelope headers.
fn node_id(instance_id: &str) -> String {
    let name: String = instance_id
        .chars()
        .take(64)
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') {
                c
            } else {
                '_'
            }
        })
        .collect();
    format!("{name}-{:016x}", IdRng::new().next_u64())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_ids_are_unique_and_safe() {
        let a = node_id("rev 1\n");
        let b = node_id("rev 1\n");
        assert_ne!(a, b);
        assert!(a.starts_with("rev_1_-"), "{a}");
        assert!(!a.contains('\n'));
        let longest = node_id(&"\u{e9}".repeat(100));
        assert_eq!(longest.len(), MAX_NODE_ID_BYTES);
    }
}
