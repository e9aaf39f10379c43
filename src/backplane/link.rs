//! The backplane's two threads and their Redis connections.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use redis::{Connection, Pipeline, RedisResult};

use super::wire::{self, kind};
use super::{Command, Event, NodeCounts, Shared};
use crate::clock::IdRng;
use crate::log;

/// Time to open a connection to Redis.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// Time one request to Redis may take before the connection counts as
/// lost: long enough for a busy server, short enough that a dead one is
/// noticed well inside a presence expiry.
const IO_TIMEOUT: Duration = Duration::from_secs(5);

/// First wait before reconnecting; it doubles per failure up to
/// [`MAX_BACKOFF`], with up to half of it added at random so that many
/// instances do not reconnect in step.
const FIRST_BACKOFF: Duration = Duration::from_millis(100);

/// Longest wait between reconnection attempts: cross-instance delivery
/// resumes within this (plus connecting) of Redis coming back.
const MAX_BACKOFF: Duration = Duration::from_secs(2);

/// Commands written to Redis in one pipeline.
const BATCH: usize = 1024;

/// Reaps a node whose heartbeat expired, once: whoever removes it from the
/// live set takes its members, deletes its presence and announces it gone
/// (`G`, in the gone node's name), all in one atomic step.
///
/// KEYS: heartbeat, live set, members, counts. ARGV: node, nodes channel.
const REAP_SCRIPT: &str = r"
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
if redis.call('SREM', KEYS[2], ARGV[1]) == 0 then return 0 end
local members = redis.call('HGETALL', KEYS[3])
redis.call('DEL', KEYS[3], KEYS[4])
redis.call('PUBLISH', ARGV[2], 'G' .. ARGV[1] .. '\n' .. cjson.encode(members))
return 1
";

/// What both threads need.
pub(super) struct Context {
    pub client: redis::Client,
    pub node: Arc<str>,
    pub expiry: Duration,
    pub shared: Arc<Shared>,
}

impl Context {
    /// How often the heartbeat is renewed: three chances per expiry.
    fn beat(&self) -> Duration {
        (self.expiry / 3).max(Duration::from_millis(50))
    }

    fn connect(&self) -> RedisResult<Connection> {
        let con = self.client.get_connection_with_timeout(CONNECT_TIMEOUT)?;
        con.set_read_timeout(Some(IO_TIMEOUT))?;
        con.set_write_timeout(Some(IO_TIMEOUT))?;
        Ok(con)
    }
}

/// Starts the publisher and the subscriber.
pub(super) fn spawn(
    ctx: Context,
    commands: Receiver<Command>,
    events: SyncSender<Event>,
    waker: mio::Waker,
) -> std::io::Result<()> {
    let ctx = Arc::new(ctx);
    let publisher = ctx.clone();
    thread::Builder::new()
        .name("backplane-pub".into())
        .spawn(move || Publisher::new(&publisher).run(&commands))?;
    thread::Builder::new()
        .name("backplane-sub".into())
        .spawn(move || subscribe(&ctx, &events, &waker))?;
    Ok(())
}

/// Reconnection delays.
struct Backoff {
    next: Duration,
    rng: IdRng,
}

impl Backoff {
    fn new() -> Self {
        Backoff {
            next: FIRST_BACKOFF,
            rng: IdRng::new(),
        }
    }

    fn reset(&mut self) {
        self.next = FIRST_BACKOFF;
    }

    /// The wait before the next attempt.
    fn wait(&mut self) -> Duration {
        let base = self.next;
        self.next = (self.next * 2).min(MAX_BACKOFF);
        let half = base.as_millis() as u64 / 2;
        base + Duration::from_millis(self.rng.next_u64() % (half + 1))
    }
}

/// Logs a lost or refused connection once per outage.
fn report_down(role: &str, was_up: &mut bool, first: &mut bool, err: &redis::RedisError) {
    if *was_up || *first {
        log::warning(
            "backplane: Redis unreachable; serving local rooms only, retrying",
            &[("role", role.into()), ("error", err.to_string().into())],
        );
    }
    *was_up = false;
    *first = false;
}

/// The publisher: this node's messages and presence, heartbeats, reaping.
struct Publisher<'a> {
    ctx: &'a Context,
    /// This node's members (clientId to room) and rooms (name to count),
    /// as the loop last said: written to Redis whole on every reconnect.
    members: HashMap<String, Box<str>>,
    counts: HashMap<Box<str>, u32>,
    pipe: Pipeline,
    buf: Vec<u8>,
}

/// How a connected session ended.
enum End {
    Stopped,
    Lost(redis::RedisError),
}

impl<'a> Publisher<'a> {
    fn new(ctx: &'a Context) -> Self {
        Publisher {
            ctx,
            members: HashMap::new(),
            counts: HashMap::new(),
            pipe: redis::pipe(),
            buf: Vec::new(),
        }
    }

    fn run(&mut self, commands: &Receiver<Command>) {
        let mut backoff = Backoff::new();
        let (mut up, mut first) = (false, true);
        loop {
            let session = self.ctx.connect().and_then(|mut con| {
                self.register(&mut con)?;
                Ok(con)
            });
            match session {
                Ok(mut con) => {
                    backoff.reset();
                    self.ctx.shared.publisher_up.store(true, Ordering::Relaxed);
                    let dropped = self.ctx.shared.dropped.swap(0, Ordering::Relaxed);
                    log::info(
                        "backplane: connected",
                        &[
                            ("role", "publisher".into()),
                            ("node", self.ctx.node.to_string().into()),
                            ("droppedMessages", dropped.into()),
                        ],
                    );
                    up = true;
                    let end = self.serve(&mut con, commands);
                    self.ctx.shared.publisher_up.store(false, Ordering::Relaxed);
                    match end {
                        End::Stopped => return,
                        End::Lost(e) => report_down("publisher", &mut up, &mut first, &e),
                    }
                }
                Err(e) => report_down("publisher", &mut up, &mut first, &e),
            }
            // Keep taking commands while away: presence is noted for the
            // next registration; messages cannot be delivered and go.
            let until = Instant::now() + backoff.wait();
            loop {
                let wait = until.saturating_duration_since(Instant::now());
                match commands.recv_timeout(wait) {
                    Ok(Command::Stop(done)) => {
                        let _ = done.send(());
                        return;
                    }
                    Ok(command) => {
                        if let Command::Publish { .. } = command {
                            self.ctx.shared.queued.fetch_sub(1, Ordering::Relaxed);
                            self.ctx.shared.dropped.fetch_add(1, Ordering::Relaxed);
                        }
                        self.note(&command);
                    }
                    Err(RecvTimeoutError::Timeout) => break,
                    Err(RecvTimeoutError::Disconnected) => return,
                }
            }
        }
    }

    /// Runs a connected session until the connection fails or a stop.
    fn serve(&mut self, con: &mut Connection, commands: &Receiver<Command>) -> End {
        let beat = self.ctx.beat();
        let mut next_beat = Instant::now() + beat;
        let losses = &self.ctx.shared.subscriber_losses;
        let mut seen_losses = losses.load(Ordering::SeqCst);
        loop {
            let wait = next_beat.saturating_duration_since(Instant::now());
            let mut stop = None;
            match commands.recv_timeout(wait) {
                Ok(command) => {
                    self.pipe.clear();
                    let mut next = Some(command);
                    let (mut n, mut messages) = (0, 0);
                    while let Some(command) = next.take() {
                        if let Command::Stop(done) = command {
                            stop = Some(done);
                            break;
                        }
                        if let Command::Publish { .. } = command {
                            messages += 1;
                        }
                        self.add(&command);
                        n += 1;
                        if n < BATCH {
                            next = commands.try_recv().ok();
                        }
                    }
                    // When the subscriber lost Redis, this connection most
                    // likely died with it, and a write on a dead socket can
                    // seem to succeed: reconnect before writing.
                    if losses.load(Ordering::SeqCst) != seen_losses {
                        seen_losses = losses.load(Ordering::SeqCst);
                        match self.ctx.connect() {
                            Ok(fresh) => *con = fresh,
                            Err(e) => {
                                self.ctx
                                    .shared
                                    .dropped
                                    .fetch_add(messages, Ordering::Relaxed);
                                return End::Lost(e);
                            }
                        }
                        if let Err(e) = self.register(con) {
                            self.ctx
                                .shared
                                .dropped
                                .fetch_add(messages, Ordering::Relaxed);
                            return End::Lost(e);
                        }
                    }
                    // LIMITATION: a batch whose write fails is dropped, not
                    // retried: Redis may have run part of it, and a retry
                    // could deliver messages twice.
                    if n > 0 {
                        if let Err(e) = self.pipe.exec(con) {
                            self.ctx
                                .shared
                                .dropped
                                .fetch_add(messages, Ordering::Relaxed);
                            return End::Lost(e);
                        }
                    }
                }
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => return End::Stopped,
            }
            if let Some(done) = stop {
                if let Err(e) = self.deregister(con) {
                    log::warning(
                        "backplane: could not deregister",
                        &[("error", e.to_string().into())],
                    );
                }
                let _ = done.send(());
                return End::Stopped;
            }
            if Instant::now() >= next_beat {
                next_beat = Instant::now() + beat;
                if let Err(e) = self.heartbeat(con).and_then(|()| self.reap(con)) {
                    return End::Lost(e);
                }
            }
        }
    }

    /// Updates the presence mirror for `command`.
    fn note(&mut self, command: &Command) {
        match command {
            Command::Joined {
                room,
                client,
                count,
            } => {
                self.members.insert(client.to_string(), room.clone());
                self.counts.insert(room.clone(), *count);
            }
            Command::Left {
                room,
                client,
                count,
            } => {
                self.members.remove(&client.to_string());
                if *count == 0 {
                    self.counts.remove(room);
                } else {
                    self.counts.insert(room.clone(), *count);
                }
            }
            Command::Publish { .. } | Command::Stop(_) => {}
        }
    }

    /// Adds `command` to the pipeline.
    fn add(&mut self, command: &Command) {
        self.note(command);
        let node = &*self.ctx.node;
        self.buf.clear();
        match command {
            Command::Publish { room, json } => {
                self.ctx.shared.queued.fetch_sub(1, Ordering::Relaxed);
                wire::encode(&mut self.buf, kind::MESSAGE, node, json);
                self.pipe
                    .cmd("PUBLISH")
                    .arg(wire::room_channel(room))
                    .arg(&self.buf)
                    .ignore();
            }
            Command::Joined {
                room,
                client,
                count,
            }
            | Command::Left {
                room,
                client,
                count,
            } => {
                let joined = matches!(command, Command::Joined { .. });
                let client = client.to_string();
                if joined {
                    self.pipe
                        .cmd("HSET")
                        .arg(wire::members_key(node))
                        .arg(&client)
                        .arg(&**room)
                        .ignore();
                } else {
                    self.pipe
                        .cmd("HDEL")
                        .arg(wire::members_key(node))
                        .arg(&client)
                        .ignore();
                }
                if *count == 0 {
                    self.pipe
                        .cmd("HDEL")
                        .arg(wire::counts_key(node))
                        .arg(&**room)
                        .ignore();
                } else {
                    self.pipe
                        .cmd("HSET")
                        .arg(wire::counts_key(node))
                        .arg(&**room)
                        .arg(*count)
                        .ignore();
                }
                let k = if joined { kind::JOINED } else { kind::LEFT };
                let body = wire::presence_body(*count, &client);
                wire::encode(&mut self.buf, k, node, body.as_bytes());
                self.pipe
                    .cmd("PUBLISH")
                    .arg(wire::room_channel(room))
                    .arg(&self.buf)
                    .ignore();
            }
            Command::Stop(_) => {}
        }
    }

    /// Writes this node's whole presence, replacing whatever Redis had,
    /// and tells the others its counts (`S`).
    fn register(&mut self, con: &mut Connection) -> RedisResult<()> {
        let node = &*self.ctx.node;
        let mut pipe = redis::pipe();
        pipe.atomic();
        pipe.cmd("DEL")
            .arg(wire::members_key(node))
            .arg(wire::counts_key(node))
            .ignore();
        if !self.members.is_empty() {
            let mut hset = redis::cmd("HSET");
            hset.arg(wire::members_key(node));
            for (client, room) in &self.members {
                hset.arg(client).arg(&**room);
            }
            pipe.add_command(hset).ignore();
        }
        if !self.counts.is_empty() {
            let mut hset = redis::cmd("HSET");
            hset.arg(wire::counts_key(node));
            for (room, count) in &self.counts {
                hset.arg(&**room).arg(*count);
            }
            pipe.add_command(hset).ignore();
        }
        pipe.cmd("SADD").arg(wire::LIVE_SET).arg(node).ignore();
        pipe.cmd("SET")
            .arg(wire::heartbeat_key(node))
            .arg(1)
            .arg("PX")
            .arg(expiry_millis(self.ctx.expiry))
            .ignore();
        let rooms: Vec<(&str, u32)> = self.counts.iter().map(|(r, &c)| (&**r, c)).collect();
        let body = serde_json::to_vec(&rooms).expect("serialising to a Vec cannot fail");
        let mut payload = Vec::new();
        wire::encode(&mut payload, kind::SYNC, node, &body);
        pipe.cmd("PUBLISH")
            .arg(wire::NODES_CHANNEL)
            .arg(payload)
            .ignore();
        pipe.exec(con)
    }

    /// Renews the heartbeat; registers afresh if this node was missing
    /// from the live set (Redis lost its data, or took this node for dead
    /// while it could not reach Redis).
    fn heartbeat(&mut self, con: &mut Connection) -> RedisResult<()> {
        let node = &*self.ctx.node;
        let mut beat = Vec::new();
        wire::encode(&mut beat, kind::HEARTBEAT, node, b"");
        let (added,): (u32,) = redis::pipe()
            .cmd("SET")
            .arg(wire::heartbeat_key(node))
            .arg(1)
            .arg("PX")
            .arg(expiry_millis(self.ctx.expiry))
            .ignore()
            .cmd("SADD")
            .arg(wire::LIVE_SET)
            .arg(node)
            .cmd("PUBLISH")
            .arg(wire::NODES_CHANNEL)
            .arg(beat)
            .ignore()
            .query(con)?;
        if added == 1 {
            log::warning(
                "backplane: this node's presence was gone from Redis; registering again",
                &[("node", node.into())],
            );
            self.register(con)?;
        }
        Ok(())
    }

    /// Finds nodes whose heartbeat expired and reaps them.
    fn reap(&mut self, con: &mut Connection) -> RedisResult<()> {
        let nodes: Vec<String> = redis::cmd("SMEMBERS").arg(wire::LIVE_SET).query(con)?;
        let others: Vec<&String> = nodes.iter().filter(|n| **n != *self.ctx.node).collect();
        if others.is_empty() {
            return Ok(());
        }
        let mut pipe = redis::pipe();
        for node in &others {
            pipe.cmd("EXISTS").arg(wire::heartbeat_key(node));
        }
        let alive: Vec<bool> = pipe.query(con)?;
        for (node, alive) in others.into_iter().zip(alive) {
            if alive {
                continue;
            }
            let reaped: i64 = redis::cmd("EVAL")
                .arg(REAP_SCRIPT)
                .arg(4)
                .arg(wire::heartbeat_key(node))
                .arg(wire::LIVE_SET)
                .arg(wire::members_key(node))
                .arg(wire::counts_key(node))
                .arg(node)
                .arg(wire::NODES_CHANNEL)
                .query(con)?;
            if reaped == 1 {
                log::info(
                    "backplane: reaped a node whose heartbeat expired",
                    &[("node", node.as_str().into())],
                );
            }
        }
        Ok(())
    }

    /// Removes this node's presence and announces its remaining members as
    /// left, at shutdown.
    fn deregister(&mut self, con: &mut Connection) -> RedisResult<()> {
        let node = &*self.ctx.node;
        let mut flat = Vec::with_capacity(self.members.len() * 2);
        for (client, room) in &self.members {
            flat.push(client.as_str());
            flat.push(&**room);
        }
        let body = serde_json::to_vec(&flat).expect("serialising to a Vec cannot fail");
        let mut payload = Vec::new();
        wire::encode(&mut payload, kind::GONE, node, &body);
        redis::pipe()
            .atomic()
            .cmd("DEL")
            .arg(wire::heartbeat_key(node))
            .arg(wire::members_key(node))
            .arg(wire::counts_key(node))
            .ignore()
            .cmd("SREM")
            .arg(wire::LIVE_SET)
            .arg(node)
            .ignore()
            .cmd("PUBLISH")
            .arg(wire::NODES_CHANNEL)
            .arg(payload)
            .ignore()
            .exec(con)
    }
}

fn expiry_millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX).max(1)
}

/// The subscriber: runs sessions until the loop is gone.
fn subscribe(ctx: &Context, events: &SyncSender<Event>, waker: &mio::Waker) {
    let mut backoff = Backoff::new();
    let (mut up, mut first) = (false, true);
    loop {
        match subscription(ctx, events, waker, &mut backoff, &mut up) {
            Ok(()) => return,
            Err(e) => {
                ctx.shared.subscriber_up.store(false, Ordering::Relaxed);
                ctx.shared.subscriber_losses.fetch_add(1, Ordering::SeqCst);
                report_down("subscriber", &mut up, &mut first, &e);
            }
        }
        thread::sleep(backoff.wait());
    }
}

/// Hands `event` to the loop, waking it unless a wake-up is pending.
/// False when the loop is gone.
fn deliver(ctx: &Context, events: &SyncSender<Event>, waker: &mio::Waker, event: Event) -> bool {
    if events.send(event).is_err() {
        return false;
    }
    if !ctx.shared.wake_pending.swap(true, Ordering::SeqCst) {
        // A failed wake-up (the poller is gone) means the loop is ending.
        let _ = waker.wake();
    }
    true
}

/// One subscription: subscribe, read the others' counts, then pass on
/// what arrives until the connection fails. `Ok` when the loop is gone.
fn subscription(
    ctx: &Context,
    events: &SyncSender<Event>,
    waker: &mio::Waker,
    backoff: &mut Backoff,
    up: &mut bool,
) -> RedisResult<()> {
    let mut con = ctx.connect()?;
    let mut query = ctx.connect()?;
    let mut pubsub = con.as_pubsub();
    pubsub.psubscribe(wire::ROOM_PATTERN)?;
    pubsub.subscribe(wire::NODES_CHANNEL)?;
    // Subscribed first, read second: news published in between arrives
    // both in the snapshot and on the channel, and counts are absolute, so
    // applying it twice is harmless; none is missed.
    let snapshot = read_counts(ctx, &mut query)?;
    drop(query);
    if !deliver(ctx, events, waker, Event::Snapshot(snapshot)) {
        return Ok(());
    }
    // Every node publishes a heartbeat each beat, so silence for a whole
    // expiry means the connection is dead though TCP has not said so.
    pubsub.set_read_timeout(Some(ctx.expiry.max(IO_TIMEOUT)))?;
    backoff.reset();
    ctx.shared.subscriber_up.store(true, Ordering::Relaxed);
    *up = true;
    log::info(
        "backplane: connected",
        &[
            ("role", "subscriber".into()),
            ("node", ctx.node.to_string().into()),
        ],
    );
    let node = ctx.node.as_bytes();
    loop {
        let msg = pubsub.get_message()?;
        let payload = msg.get_payload_bytes();
        if wire::origin(payload) == Some(node) {
            // Our own: local members had it from the loop directly.
            continue;
        }
        let channel = msg.get_channel_name();
        let event = if let Some(room) = channel.strip_prefix(wire::ROOM_PREFIX) {
            Event::Room {
                room: room.into(),
                payload: payload.to_vec(),
            }
        } else if channel == wire::NODES_CHANNEL {
            Event::Nodes {
                payload: payload.to_vec(),
            }
        } else {
            continue;
        };
        if !deliver(ctx, events, waker, event) {
            return Ok(());
        }
    }
}

/// Every other live node's room counts.
fn read_counts(ctx: &Context, con: &mut Connection) -> RedisResult<NodeCounts> {
    let nodes: Vec<String> = redis::cmd("SMEMBERS").arg(wire::LIVE_SET).query(con)?;
    let nodes: Vec<String> = nodes.into_iter().filter(|n| **n != *ctx.node).collect();
    if nodes.is_empty() {
        return Ok(Vec::new());
    }
    let mut pipe = redis::pipe();
    for node in &nodes {
        pipe.cmd("HGETALL").arg(wire::counts_key(node));
    }
    let counts: Vec<HashMap<String, u32>> = pipe.query(con)?;
    Ok(nodes
        .into_iter()
        .zip(counts)
        .map(|(node, rooms)| (node, rooms.into_iter().collect()))
        .collect())
}
