//! Rooms across instances: three roomcast processes sharing rooms through
//! a real `redis-server` each test starts on a free port. Checks delivery
//! exactly once, per-sender order, global counts and notices, a killed
//! instance's members announced as left, and Redis going away and coming
//! back (or missing at start) without local rooms ever stopping.
//!
//! `redis-server` must be installed (`scripts/test.sh` installs it). These
//! tests fail without it; for local development only,
//! `ROOMCAST_SKIP_REDIS_TESTS=1` turns that into a skip, except under CI.

mod common;

use std::collections::{HashMap, HashSet};
use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use common::*;
use tungstenite::Message;

/// Presence expiry for these tests: short, so a killed instance is noticed
/// quickly, and long enough that a busy machine renews heartbeats in time.
const EXPIRY: &str = "3s";

/// How long cross-instance news may take to show here. Generous: these
/// tests check behaviour, not speed.
const SPREAD: Duration = Duration::from_secs(15);

/// A `redis-server` process on a free port, killed on drop.
struct Redis {
    child: Option<Child>,
    port: u16,
}

/// Whether redis-server can be run; panics when it cannot and skipping is
/// not allowed.
fn redis_available() -> bool {
    let found = Command::new("redis-server")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if found {
        return true;
    }
    let ci = std::env::var_os("CI").is_some_and(|v| !v.is_empty());
    let skip = std::env::var("ROOMCAST_SKIP_REDIS_TESTS").is_ok_and(|v| v == "1");
    if skip && !ci {
        eprintln!("redis-server not found; skipped (ROOMCAST_SKIP_REDIS_TESTS=1)");
        return false;
    }
    panic!(
        "redis-server not found: install it (apt-get install redis-server) or run \
         scripts/test.sh, which does"
    );
}

fn free_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind a free port");
    l.local_addr().unwrap().port()
}

impl Redis {
    fn start() -> Redis {
        Redis::start_on(free_port())
    }

    fn start_on(port: u16) -> Redis {
        let child = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no", "--loglevel", "warning"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn redis-server");
        let deadline = Instant::now() + Duration::from_secs(10);
        let client = redis::Client::open(format!("redis://127.0.0.1:{port}/")).unwrap();
        loop {
            let pong = client
                .get_connection_with_timeout(Duration::from_millis(200))
                .and_then(|mut c| redis::cmd("PING").query::<String>(&mut c));
            if pong.is_ok() {
                break;
            }
            assert!(Instant::now() < deadline, "redis-server never answered");
            thread::sleep(Duration::from_millis(20));
        }
        Redis {
            child: Some(child),
            port,
        }
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.kill();
    }
}

fn instance(url: &str, name: &str) -> Server {
    ServerBuilder::new()
        .args(&[
            "--redis-url",
            url,
            "--instance-id",
            name,
            "--presence-expiry",
            EXPIRY,
        ])
        .spawn()
}

/// `n` instances on `redis`, each connected to it.
fn cluster(redis: &Redis, n: usize) -> Vec<Server> {
    let servers: Vec<Server> = (0..n)
        .map(|i| instance(&redis.url(), &format!("node{i}")))
        .collect();
    for s in &servers {
        s.wait_health("backplane", json!("connected"), SPREAD);
    }
    servers
}

/// The next message of `kind`, skipping others; `None` at the deadline.
fn next_of(c: &mut Client, kind: &str, deadline: Instant) -> Option<Value> {
    loop {
        match c.read_by(deadline) {
            Got::Msg(Message::Text(t)) => {
                let v: Value = serde_json::from_str(t.as_str()).expect("JSON");
                if v["type"] == kind {
                    return Some(v);
                }
            }
            Got::Msg(Message::Ping(_) | Message::Pong(_)) => {}
            Got::TimedOut => return None,
            other => panic!("unexpected {other:?}"),
        }
    }
}

fn expect_next(c: &mut Client, kind: &str) -> Value {
    next_of(c, kind, Instant::now() + SPREAD)
        .unwrap_or_else(|| panic!("no {kind} within {SPREAD:?}"))
}

/// Re-joins the room `c` is in until `joined` reports `want` members (a
/// re-join tells nobody), failing after [`SPREAD`].
fn wait_count(c: &mut Client, room: &str, want: u64) {
    let deadline = Instant::now() + SPREAD;
    let mut last = Value::Null;
    while Instant::now() < deadline {
        c.send_json(&json!({"type": "join", "roomId": room}));
        last = expect_next(c, "joined");
        if last["userCount"] == want {
            return;
        }
        thread::sleep(Duration::from_millis(50));
    }
    panic!("userCount of {room} never became {want}; last joined: {last}");
}

/// Reads messages until one says `text`.
fn expect_text(c: &mut Client, text: &str) {
    let deadline = Instant::now() + SPREAD;
    while let Some(m) = next_of(c, "message", deadline) {
        if m["text"] == text {
            return;
        }
    }
    panic!("no message {text:?} within {SPREAD:?}");
}

fn say(c: &mut Client, text: &str) {
    c.send_json(&json!({"type": "message", "text": text}));
}

#[test]
fn messages_reach_every_instance_exactly_once() {
    if !redis_available() {
        return;
    }
    let redis = Redis::start();
    let servers = cluster(&redis, 3);
    let mut clients: Vec<Client> = (0..6).map(|i| Client::chat(&servers[i % 3])).collect();
    for c in &mut clients {
        c.join("r");
    }
    for (i, c) in clients.iter_mut().enumerate() {
        say(c, &format!("from-{i}"));
    }
    for (i, c) in clients.iter_mut().enumerate() {
        let mut got = HashMap::new();
        for _ in 0..6 {
            let m = expect_next(c, "message");
            assert_eq!(m["roomId"], "r");
            assert_timestamp(&m["timestamp"]);
            *got.entry(m["text"].as_str().unwrap().to_owned())
                .or_insert(0) += 1;
        }
        let want: HashMap<String, i32> = (0..6).map(|j| (format!("from-{j}"), 1)).collect();
        assert_eq!(got, want, "client {i}");
    }
    // Anything more would be a second copy.
    let quiet = Instant::now() + Duration::from_millis(700);
    for (i, c) in clients.iter_mut().enumerate() {
        assert_eq!(next_of(c, "message", quiet), None, "client {i} got a copy");
    }
}

#[test]
fn each_senders_order_holds_across_instances() {
    if !redis_available() {
        return;
    }
    const EACH: usize = 300;
    let redis = Redis::start();
    let servers = cluster(&redis, 3);
    let mut senders: Vec<Client> = servers.iter().map(Client::chat).collect();
    let mut readers: Vec<Client> = servers.iter().map(Client::chat).collect();
    for c in senders.iter_mut().chain(readers.iter_mut()) {
        c.join("order");
    }
    let ids: Vec<String> = senders.iter().map(|c| c.id.clone()).collect();
    let threads: Vec<_> = senders
        .into_iter()
        .enumerate()
        .map(|(s, mut c)| {
            thread::spawn(move || {
                for n in 0..EACH {
                    say(&mut c, &format!("{s}:{n}"));
                }
                c
            })
        })
        .collect();
    // Senders are members too: everyone checks the order it saw.
    readers.extend(threads.into_iter().map(|t| t.join().unwrap()));
    for (r, c) in readers.iter_mut().enumerate() {
        let mut next = [0usize; 3];
        for _ in 0..3 * EACH {
            let m = expect_next(c, "message");
            let text = m["text"].as_str().unwrap();
            let (s, n) = text.split_once(':').unwrap();
            let (s, n): (usize, usize) = (s.parse().unwrap(), n.parse().unwrap());
            assert_eq!(m["clientId"], ids[s].as_str());
            assert_eq!(n, next[s], "client {r}: sender {s} out of order");
            next[s] += 1;
        }
        assert_eq!(next, [EACH; 3]);
    }
}

#[test]
fn counts_and_notices_span_instances() {
    if !redis_available() {
        return;
    }
    let redis = Redis::start();
    let servers = cluster(&redis, 3);
    let mut a = Client::chat(&servers[0]);
    let mut b = Client::chat(&servers[1]);
    let mut c = Client::chat(&servers[2]);

    assert_eq!(a.join("c")["userCount"], 1);
    b.join("c");
    let notice = expect_next(&mut a, "user_joined");
    assert_eq!(
        notice,
        json!({"type": "user_joined", "clientId": b.id, "roomId": "c", "userCount": 2})
    );
    // b's own count may predate node0's news by a moment; it converges.
    wait_count(&mut b, "c", 2);

    c.join("c");
    for x in [&mut a, &mut b] {
        let notice = expect_next(x, "user_joined");
        assert_eq!(
            notice,
            json!({"type": "user_joined", "clientId": c.id, "roomId": "c", "userCount": 3})
        );
    }
    wait_count(&mut c, "c", 3);

    c.send_json(&json!({"type": "leave"}));
    assert_eq!(expect_next(&mut c, "left")["roomId"], "c");
    for x in [&mut a, &mut b] {
        let notice = expect_next(x, "user_left");
        assert_eq!(
            notice,
            json!({"type": "user_left", "clientId": c.id, "roomId": "c", "userCount": 2})
        );
    }

    let b_id = b.id.clone();
    drop(b);
    let notice = expect_next(&mut a, "user_left");
    assert_eq!(
        notice,
        json!({"type": "user_left", "clientId": b_id, "roomId": "c", "userCount": 1})
    );
    wait_count(&mut a, "c", 1);
}

#[test]
fn a_killed_instances_members_are_announced_as_left() {
    if !redis_available() {
        return;
    }
    let redis = Redis::start();
    let mut servers = cluster(&redis, 3);
    let mut a = Client::chat(&servers[0]);
    let mut b = Client::chat(&servers[1]);
    let mut k1 = Client::chat(&servers[2]);
    let mut k2 = Client::chat(&servers[2]);
    a.join("k");
    b.join("k");
    k1.join("k");
    k2.join("k");
    let doomed: HashSet<String> = [k1.id.clone(), k2.id.clone()].into();
    // Once a has heard of both, every instance has their presence.
    let mut seen = HashSet::new();
    while seen.len() < 3 {
        seen.insert(expect_next(&mut a, "user_joined")["clientId"].clone());
    }
    wait_count(&mut b, "k", 4);

    servers[2].signal(libc::SIGKILL);
    servers[2]
        .wait_exit(Duration::from_secs(5))
        .expect("killed");
    for x in [&mut a, &mut b] {
        let mut gone = HashSet::new();
        let mut counts = Vec::new();
        while gone.len() < 2 {
            let notice = expect_next(x, "user_left");
            assert_eq!(notice["roomId"], "k");
            gone.insert(notice["clientId"].as_str().unwrap().to_owned());
            counts.push(notice["userCount"].as_u64().unwrap());
        }
        assert_eq!(gone, doomed);
        assert_eq!(counts, [3, 2]);
    }
    wait_count(&mut a, "k", 2);
    // Life goes on between the survivors.
    say(&mut a, "still here");
    expect_text(&mut b, "still here");
}

#[test]
fn redis_restarted_local_rooms_never_stop_and_delivery_resumes() {
    if !redis_available() {
        return;
    }
    let mut redis = Redis::start();
    let port = redis.port;
    let servers = cluster(&redis, 3);
    let mut a1 = Client::chat(&servers[0]);
    let mut a2 = Client::chat(&servers[0]);
    let mut b = Client::chat(&servers[1]);
    let mut c = Client::chat(&servers[2]);
    for x in [&mut a1, &mut a2, &mut b, &mut c] {
        x.join("x");
    }
    say(&mut a1, "before");
    for x in [&mut a2, &mut b, &mut c] {
        expect_text(x, "before");
    }

    redis.kill();
    for s in &servers {
        s.wait_health("backplane", json!("degraded"), SPREAD);
    }
    // Local delivery does not wait for Redis.
    say(&mut a1, "while away");
    expect_text(&mut a2, "while away");
    let joined = a2.join("y");
    assert_eq!(joined["userCount"], 1);
    a2.join("x");

    let _redis = Redis::start_on(port);
    for s in &servers {
        s.wait_health("backplane", json!("connected"), SPREAD);
    }
    // Messages sent while Redis was away are gone; new ones get through.
    let deadline = Instant::now() + SPREAD;
    let mut n = 0;
    loop {
        say(&mut a1, &format!("after-{n}"));
        n += 1;
        let got = next_of(
            &mut b,
            "message",
            Instant::now() + Duration::from_millis(300),
        );
        if got.is_some_and(|m| m["text"].as_str().unwrap().starts_with("after-")) {
            break;
        }
        assert!(Instant::now() < deadline, "delivery never resumed");
    }
    say(&mut c, "from c");
    expect_text(&mut a2, "from c");
    // Presence was written afresh: all four are counted again.
    wait_count(&mut b, "x", 4);
}

#[test]
fn redis_absent_at_start_serves_locally_then_recovers() {
    if !redis_available() {
        return;
    }
    let port = free_port();
    let url = format!("redis://127.0.0.1:{port}/");
    let servers: Vec<Server> = (0..3).map(|i| instance(&url, &format!("n{i}"))).collect();
    for s in &servers {
        let h = s.health();
        assert_eq!(h["status"], "healthy");
        assert_eq!(h["backplane"], "degraded");
    }
    let mut a1 = Client::chat(&servers[0]);
    let mut a2 = Client::chat(&servers[0]);
    a1.join("z");
    assert_eq!(a2.join("z")["userCount"], 2);
    say(&mut a1, "local");
    expect_text(&mut a2, "local");
    let warned = servers[0]
        .stdout_lines()
        .iter()
        .any(|l| l.contains("WARNING") && l.contains("Redis unreachable"));
    assert!(warned, "no warning logged: {:?}", servers[0].stdout_lines());

    let _redis = Redis::start_on(port);
    for s in &servers {
        s.wait_health("backplane", json!("connected"), SPREAD);
    }
    let mut b = Client::chat(&servers[1]);
    let mut c = Client::chat(&servers[2]);
    b.join("z");
    c.join("z");
    wait_count(&mut b, "z", 4);
    wait_count(&mut c, "z", 4);
    say(&mut b, "across");
    for x in [&mut a1, &mut a2, &mut c] {
        expect_text(x, "across");
    }
}

#[test]
fn a_stopped_instance_says_goodbye_at_once() {
    if !redis_available() {
        return;
    }
    let redis = Redis::start();
    let servers = cluster(&redis, 2);
    // A long expiry: the notices below cannot come from the reaper.
    let mut leaving = ServerBuilder::new()
        .args(&["--redis-url", &redis.url(), "--presence-expiry", "5m"])
        .spawn();
    leaving.wait_health("backplane", json!("connected"), SPREAD);
    let mut a = Client::chat(&servers[0]);
    let mut b = Client::chat(&servers[1]);
    let mut z = Client::chat(&leaving);
    a.join("bye");
    b.join("bye");
    // Heard before z joins: b's and z's joins go through different
    // instances' publishers, so their order at a is otherwise a race.
    assert_eq!(
        expect_next(&mut a, "user_joined")["clientId"],
        b.id.as_str()
    );
    z.join("bye");
    assert_eq!(
        expect_next(&mut a, "user_joined")["clientId"],
        z.id.as_str()
    );
    wait_count(&mut b, "bye", 3);

    let z_id = z.id.clone();
    leaving.signal(libc::SIGTERM);
    assert_eq!(
        expect_next(&mut z, "server_shutdown")["type"],
        "server_shutdown"
    );
    drop(z);
    leaving.wait_exit(SPREAD).expect("exits after draining");
    for x in [&mut a, &mut b] {
        let notice = expect_next(x, "user_left");
        assert_eq!(
            notice,
            json!({"type": "user_left", "clientId": z_id, "roomId": "bye", "userCount": 2})
        );
    }
    wait_count(&mut a, "bye", 2);
    let quiet = Instant::now() + Duration::from_millis(500);
    assert_eq!(next_of(&mut a, "user_left", quiet), None, "told twice");
}

#[test]
fn a_malformed_redis_url_stops_the_start_with_a_reason() {
    let (status, out, _) = run_binary(
        &[
            "--port",
            "0",
            "--host",
            "127.0.0.1",
            "--redis-url",
            "not a url",
        ],
        Duration::from_secs(10),
    );
    assert_eq!(status.and_then(|s| s.code()), Some(1), "{out}");
    assert!(
        out.contains("cannot start") && out.contains("bad Redis URL"),
        "{out}"
    );
}

#[test]
fn a_malformed_message_from_redis_reaches_no_member() {
    if !redis_available() {
        return;
    }
    let redis = Redis::start();
    let servers = cluster(&redis, 1);
    let mut a = Client::chat(&servers[0]);
    a.join("garbage");
    let client = redis::Client::open(redis.url()).unwrap();
    let mut conn = client.get_connection().unwrap();
    let mut publish = |payload: &[u8]| {
        redis::cmd("PUBLISH")
            .arg("roomcast:room:garbage")
            .arg(payload)
            .query::<i64>(&mut conn)
            .unwrap();
    };
    // Not UTF-8: as a text frame it would make every member fail the
    // connection (RFC 6455 5.6); not JSON: not what the protocol promises.
    publish(b"Mintruder\n\xff\xfe{}");
    publish(b"Mintruder\n{\"text\":\"\xff\"}");
    publish(b"Mintruder\n{\"type\":\"message\",");
    let good = json!({"type": "message", "clientId": "client-1-abcdefghi", "roomId": "garbage",
        "text": "after", "timestamp": "2026-01-01T00:00:00.000Z"});
    publish(format!("Mintruder\n{good}").as_bytes());
    // next_of fails on a frame that is not UTF-8 or not JSON.
    let m = expect_next(&mut a, "message");
    assert_eq!(m, good);
}

/// A server on `listener` that answers every read with a three-element
/// array, whatever was asked: no real Redis does that. Stops when `stop`
/// is set.
fn nonsense_redis(
    listener: TcpListener,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> thread::JoinHandle<()> {
    use std::io::{Read, Write};
    use std::sync::atomic::Ordering;
    listener.set_nonblocking(true).unwrap();
    thread::spawn(move || {
        let reply = b"*3\r\n$7\r\nmessage\r\n$14\r\nroomcast:nodes\r\n$1\r\nx\r\n".repeat(64);
        while !stop.load(Ordering::Relaxed) {
            let Ok((mut s, _)) = listener.accept() else {
                thread::sleep(Duration::from_millis(10));
                continue;
            };
            s.set_read_timeout(Some(Duration::from_millis(300)))
                .unwrap();
            let mut buf = [0u8; 4096];
            while let Ok(1..) = s.read(&mut buf) {
                if s.write_all(&reply).is_err() {
                    break;
                }
            }
        }
    })
}

#[test]
fn nonsense_from_redis_does_not_stop_the_backplane_for_good() {
    if !redis_available() {
        return;
    }
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let fake = nonsense_redis(listener, stop.clone());
    let server = instance(&format!("redis://127.0.0.1:{port}/"), "node0");
    // The Redis client panics on a transaction's reply shorter than the
    // transaction: the panic is logged, and must cost only that connection.
    server.wait_log(SPREAD, |l| l["message"] == "panic");
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    fake.join().unwrap();
    let _redis = Redis::start_on(port);
    server.wait_health("backplane", json!("connected"), SPREAD);
    let mut a = Client::chat(&server);
    a.join("after");
}

/// Publishes `payload` on `channel` of the Redis at `url`, as anything with
/// access to it can.
fn publish(url: &str, channel: &str, payload: &[u8]) {
    let client = redis::Client::open(url).unwrap();
    let mut conn = client.get_connection().unwrap();
    redis::cmd("PUBLISH")
        .arg(channel)
        .arg(payload)
        .query::<i64>(&mut conn)
        .unwrap();
}

#[test]
fn counts_from_redis_are_bounded() {
    if !redis_available() {
        return;
    }
    let redis = Redis::start();
    let server = ServerBuilder::new()
        .args(&[
            "--redis-url",
            &redis.url(),
            "--instance-id",
            "node0",
            "--max-room-members",
            "5",
        ])
        .spawn();
    server.wait_health("backplane", json!("connected"), SPREAD);
    let mut a = Client::chat(&server);
    a.join("big");

    // One instance cannot hold more than --max-room-members in a room.
    let who = "client-1-000000001";
    publish(
        &redis.url(),
        "roomcast:room:big",
        format!("Jintruder\n4000000000 {who}").as_bytes(),
    );
    let notice = expect_next(&mut a, "user_joined");
    assert_eq!(notice["clientId"], who);
    assert_eq!(notice["userCount"], 1 + 5, "{notice}");
    server.wait_log(SPREAD, |l| {
        l["severity"] == "WARNING" && l["count"] == 4_000_000_000u64 && l["limit"] == 5
    });

    // A flood of rooms fills the table; news of one more pair is dropped,
    // and the server goes on.
    let rooms: Vec<Value> = (0..100_000).map(|i| json!([format!("f{i}"), 1])).collect();
    let sync = format!("Sflood\n{}", Value::from(rooms));
    publish(&redis.url(), "roomcast:nodes", sync.as_bytes());
    server.wait_log(SPREAD, |l| {
        l["severity"] == "WARNING" && l["entries"] == 100_000
    });
    let late = "client-1-000000002";
    publish(
        &redis.url(),
        "roomcast:room:big",
        format!("Jlate\n1 {late}").as_bytes(),
    );
    let notice = expect_next(&mut a, "user_joined");
    assert_eq!(notice["clientId"], late);
    assert_eq!(
        notice["userCount"],
        1 + 5,
        "the late pair is not counted: {notice}"
    );
    // The counts already held are still kept up to date.
    publish(
        &redis.url(),
        "roomcast:room:big",
        format!("Lintruder\n2 {who}").as_bytes(),
    );
    let notice = expect_next(&mut a, "user_left");
    assert_eq!(notice["userCount"], 1 + 2, "{notice}");
    assert_eq!(server.health()["status"], "healthy");

    // A name no room can have is dropped too; /metrics counts all three:
    // the capped count, the flood's last room and the late pair, the name.
    let long = "r".repeat(257);
    publish(
        &redis.url(),
        "roomcast:nodes",
        format!("Slong\n[[\"{long}\",1]]").as_bytes(),
    );
    let name = "roomcast_backplane_counts_distrusted_total";
    for (action, want) in [
        ("dropped_bad_name", 1.0),
        ("capped", 1.0),
        ("dropped_table_full", 2.0),
    ] {
        wait_metric(
            &server,
            &format!("{name}{{action=\"{action}\"}}"),
            want,
            SPREAD,
        );
    }
}
