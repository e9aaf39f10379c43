//! Benchmark of rooms across instances: deliveries per second and delivery
//! latency (p50, p99) for one room whose members are spread over three
//! roomcast instances sharing it through Redis, against the same room on
//! one instance (alone, and with the backplane on).
//!
//! ```sh
//! cargo build --release
//! cargo run --release --example backplane_bench -- [--members 30] [--messages 30000] [--rate 2000]
//! cargo run --release --example backplane_bench -- --subscriptions
//! ```
//!
//! Needs `redis-server` on the PATH and the release binary at
//! `target/release/roomcast` (or `ROOMCAST_BIN`). Members read in their own
//! threads; three senders, one per instance, send `--messages` in all:
//! first as fast as they can (throughput), then `--rate` per second in all
//! (latency, measured from send to receipt by every member but the
//! senders). `--subscriptions` instead measures what Redis does for a
//! pattern subscription against one subscription per room.

use std::io::{BufRead, BufReader};
use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Barrier};
use std::thread;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tungstenite::{Message, WebSocket};

struct Args {
    members: usize,
    messages: usize,
    rate: usize,
    subscriptions: bool,
}

fn args() -> Args {
    let mut a = Args {
        members: 30,
        messages: 30_000,
        rate: 2_000,
        subscriptions: false,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().and_then(|v| v.parse().ok()).expect("a number");
        match flag.as_str() {
            "--members" => a.members = value(),
            "--messages" => a.messages = value(),
            "--rate" => a.rate = value(),
            "--subscriptions" => a.subscriptions = true,
            other => panic!("unknown flag {other}"),
        }
    }
    a
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A child process killed on drop.
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start_redis() -> (Proc, String) {
    let port = free_port();
    let child = Command::new("redis-server")
        .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
        .args(["--save", "", "--appendonly", "no"])
        .stdout(Stdio::null())
        .spawn()
        .expect("redis-server on the PATH");
    let url = format!("redis://127.0.0.1:{port}/");
    let client = redis::Client::open(url.as_str()).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while client
        .get_connection()
        .and_then(|mut c| redis::cmd("PING").query::<String>(&mut c))
        .is_err()
    {
        assert!(Instant::now() < deadline, "redis-server never answered");
        thread::sleep(Duration::from_millis(20));
    }
    (Proc(child), url)
}

fn start_roomcast(redis: Option<&str>) -> (Proc, String) {
    let bin = std::env::var("ROOMCAST_BIN").unwrap_or_else(|_| "target/release/roomcast".into());
    let mut cmd = Command::new(bin);
    cmd.args(["--host", "127.0.0.1", "--port", "0"])
        .args(["--max-queued-bytes", "268435456"])
        .env_remove("REDIS_URL")
        .stdout(Stdio::piped());
    if let Some(url) = redis {
        cmd.args(["--redis-url", url]);
    }
    let mut child = cmd
        .spawn()
        .expect("roomcast binary (cargo build --release)");
    let out = BufReader::new(child.stdout.take().unwrap());
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        let mut sent = false;
        for line in out.lines().map_while(Result::ok) {
            if !sent {
                let v: Value = serde_json::from_str(&line).unwrap_or(Value::Null);
                if v["message"] == "listening" {
                    let _ = tx.send(v["address"].as_str().unwrap().to_owned());
                    sent = true;
                }
            }
        }
    });
    let addr = rx.recv_timeout(Duration::from_secs(10)).expect("listening");
    (Proc(child), addr)
}

fn connect(addr: &str) -> WebSocket<TcpStream> {
    let stream = TcpStream::connect(addr).unwrap();
    stream.set_nodelay(true).unwrap();
    let (mut ws, _) = tungstenite::client(format!("ws://{addr}/"), stream).unwrap();
    read_json(&mut ws); // connected
    ws
}

fn read_json(ws: &mut WebSocket<TcpStream>) -> Value {
    loop {
        match ws.read().expect("read") {
            Message::Text(t) => return serde_json::from_str(t.as_str()).unwrap(),
            Message::Ping(_) | Message::Pong(_) => {}
            other => panic!("unexpected {other:?}"),
        }
    }
}

/// Joins `room` and re-joins until the room's size is `want` everywhere
/// this member can tell.
fn join(ws: &mut WebSocket<TcpStream>, want: u64) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        ws.send(Message::text(r#"{"type":"join","roomId":"bench"}"#))
            .unwrap();
        loop {
            let v = read_json(ws);
            if v["type"] == "joined" {
                if v["userCount"] == want {
                    return;
                }
                break;
            }
        }
        assert!(Instant::now() < deadline, "room never reached {want}");
        thread::sleep(Duration::from_millis(20));
    }
}

fn percentile(sorted: &[u64], p: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let i = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[i]
}

struct Outcome {
    deliveries_per_sec: f64,
    p50_us: u64,
    p99_us: u64,
    max_us: u64,
}

/// One scenario: `addrs` are the instances; members are spread over them
/// round-robin and sender `i` is on instance `i % addrs.len()`.
fn scenario(addrs: &[String], a: &Args) -> Outcome {
    const SENDERS: usize = 3;
    let total = (a.members + SENDERS) as u64;
    let base = Instant::now();
    let mut members: Vec<WebSocket<TcpStream>> = (0..a.members)
        .map(|i| connect(&addrs[i % addrs.len()]))
        .collect();
    let mut senders: Vec<WebSocket<TcpStream>> = (0..SENDERS)
        .map(|i| connect(&addrs[i % addrs.len()]))
        .collect();
    for ws in members.iter_mut().chain(senders.iter_mut()) {
        ws.send(Message::text(r#"{"type":"join","roomId":"bench"}"#))
            .unwrap();
    }
    for ws in members.iter_mut().chain(senders.iter_mut()) {
        join(ws, total);
    }
    let per_sender = a.messages / SENDERS;
    let expected = per_sender * SENDERS;
    // Two phases: flat out, then paced.
    let start = Arc::new(Barrier::new(a.members + SENDERS + 1));
    let readers: Vec<_> = members
        .into_iter()
        .map(|mut ws| {
            let start = start.clone();
            thread::spawn(move || {
                // A run that loses messages fails instead of hanging.
                ws.get_ref()
                    .set_read_timeout(Some(Duration::from_secs(60)))
                    .unwrap();
                let mut lat = Vec::with_capacity(expected);
                let mut last = Duration::ZERO;
                for phase in 0..2 {
                    start.wait();
                    let mut got = 0;
                    while got < expected {
                        let v = match ws.read() {
                            Ok(Message::Text(t)) => {
                                serde_json::from_str::<Value>(t.as_str()).unwrap()
                            }
                            Ok(_) => continue,
                            Err(e) => panic!("phase {phase}: {got} of {expected}: {e}"),
                        };
                        if v["type"] != "message" {
                            continue;
                        }
                        got += 1;
                        let now = base.elapsed();
                        if phase == 0 {
                            last = now;
                        } else {
                            let sent: u64 = v["text"].as_str().unwrap().parse().unwrap();
                            lat.push(now.as_micros() as u64 - sent);
                        }
                    }
                }
                (last, lat)
            })
        })
        .collect();
    let pace = Duration::from_secs_f64(SENDERS as f64 / a.rate as f64);
    let writers: Vec<_> = senders
        .into_iter()
        .map(|mut ws| {
            let start = start.clone();
            thread::spawn(move || {
                let mut begun = Duration::ZERO;
                for phase in 0..2 {
                    start.wait();
                    if phase == 0 {
                        begun = base.elapsed();
                    }
                    let t0 = Instant::now();
                    for n in 0..per_sender {
                        if phase == 1 {
                            let due = t0 + pace * n as u32;
                            if let Some(d) = due.checked_duration_since(Instant::now()) {
                                thread::sleep(d);
                            }
                        }
                        let text = base.elapsed().as_micros().to_string();
                        let msg = json!({"type": "message", "text": text}).to_string();
                        ws.send(Message::text(msg)).unwrap();
                        // Senders are members too: read what arrived.
                        if n % 8 == 7 {
                            drain(&mut ws);
                        }
                    }
                    ws.flush().unwrap();
                }
                drain(&mut ws);
                (begun, ws)
            })
        })
        .collect();
    start.wait();
    // Phase 1 begins when every reader has finished phase 0.
    start.wait();
    // The senders stay connected until every member has read everything:
    // closing a socket with unread input resets it, and the server could
    // lose the sender's last messages with it.
    let (begun, senders): (Vec<Duration>, Vec<_>) =
        writers.into_iter().map(|w| w.join().unwrap()).unzip();
    let begun = begun.into_iter().min().unwrap();
    let mut last = Duration::ZERO;
    let mut lat = Vec::new();
    for r in readers {
        let (l, mut v) = r.join().unwrap();
        last = last.max(l);
        lat.append(&mut v);
    }
    drop(senders);
    lat.sort_unstable();
    let deliveries = (expected * a.members) as f64;
    Outcome {
        deliveries_per_sec: deliveries / (last - begun).as_secs_f64(),
        p50_us: percentile(&lat, 0.5),
        p99_us: percentile(&lat, 0.99),
        max_us: lat.last().copied().unwrap_or(0),
    }
}

/// Reads whatever has arrived without waiting.
fn drain(ws: &mut WebSocket<TcpStream>) {
    ws.get_mut().set_nonblocking(true).unwrap();
    loop {
        match ws.read() {
            Ok(_) => {}
            Err(tungstenite::Error::Io(e)) if e.kind() == std::io::ErrorKind::WouldBlock => break,
            Err(e) => panic!("sender read: {e}"),
        }
    }
    ws.get_mut().set_nonblocking(false).unwrap();
}

fn report(name: &str, o: &Outcome) {
    println!(
        "{name:<34} {:>12.0} deliveries/s   latency p50 {:>7} us  p99 {:>7} us  max {:>7} us",
        o.deliveries_per_sec, o.p50_us, o.p99_us, o.max_us
    );
}

fn rooms_bench(a: &Args) {
    let (_redis, url) = start_redis();
    {
        let (_s, addr) = start_roomcast(None);
        report("1 instance, no Redis", &scenario(&[addr], a));
    }
    {
        let (_s, addr) = start_roomcast(Some(&url));
        report("1 instance, backplane on", &scenario(&[addr], a));
    }
    {
        let servers: Vec<(Proc, String)> = (0..3).map(|_| start_roomcast(Some(&url))).collect();
        let addrs: Vec<String> = servers.iter().map(|(_, a)| a.clone()).collect();
        report("3 instances through Redis", &scenario(&addrs, a));
    }
}

/// Three subscriber connections, each standing for an instance that
/// serves a third of `ROOMS` rooms; one publisher sends `MESSAGES` spread
/// over all rooms. With a pattern subscription every subscriber receives
/// every message; with per-room subscriptions each gets only its rooms'.
fn subscriptions_bench() {
    const ROOMS: usize = 300;
    const MESSAGES: usize = 300_000;
    const PAYLOAD: usize = 150;
    for pattern in [true, false] {
        let (_redis, url) = start_redis();
        let client = redis::Client::open(url.as_str()).unwrap();
        let ready = Arc::new(Barrier::new(4));
        let subs: Vec<_> = (0..3)
            .map(|i| {
                let client = client.clone();
                let ready = ready.clone();
                thread::spawn(move || {
                    let mut con = client.get_connection().unwrap();
                    let mut ps = con.as_pubsub();
                    let t = Instant::now();
                    if pattern {
                        ps.psubscribe("roomcast:room:*").unwrap();
                    } else {
                        for r in (0..ROOMS).filter(|r| r % 3 == i) {
                            ps.subscribe(format!("roomcast:room:{r}")).unwrap();
                        }
                    }
                    let subscribe_time = t.elapsed();
                    ps.subscribe("end").unwrap();
                    ready.wait();
                    let mut n = 0u64;
                    loop {
                        let m = ps.get_message().unwrap();
                        if m.get_channel_name() == "end" {
                            return (n, subscribe_time);
                        }
                        n += 1;
                    }
                })
            })
            .collect();
        ready.wait();
        let mut con = client.get_connection().unwrap();
        let payload = vec![b'x'; PAYLOAD];
        let t = Instant::now();
        for chunk in (0..MESSAGES).collect::<Vec<_>>().chunks(1000) {
            let mut pipe = redis::pipe();
            for &m in chunk {
                pipe.cmd("PUBLISH")
                    .arg(format!("roomcast:room:{}", m % ROOMS))
                    .arg(&payload)
                    .ignore();
            }
            pipe.exec(&mut con).unwrap();
        }
        let publish = t.elapsed();
        redis::cmd("PUBLISH")
            .arg("end")
            .arg("")
            .exec(&mut con)
            .unwrap();
        let results: Vec<(u64, Duration)> = subs.into_iter().map(|s| s.join().unwrap()).collect();
        let drained = t.elapsed();
        let received: u64 = results.iter().map(|r| r.0).sum();
        let sub_time = results.iter().map(|r| r.1).max().unwrap();
        println!(
            "{:<26} publish {:>8.0} msg/s  all received after {:>6.0} ms  \
             messages sent to instances {:>7} ({} per publish)  subscribing {:>6.1} ms \
             ({:.1} us per subscription)",
            if pattern {
                "pattern (PSUBSCRIBE)"
            } else {
                "one SUBSCRIBE per room"
            },
            MESSAGES as f64 / publish.as_secs_f64(),
            drained.as_secs_f64() * 1000.0,
            received,
            received as f64 / MESSAGES as f64,
            sub_time.as_secs_f64() * 1000.0,
            sub_time.as_secs_f64() * 1e6 / if pattern { 1.0 } else { (ROOMS / 3) as f64 },
        );
    }
}

fn main() {
    let a = args();
    if a.subscriptions {
        subscriptions_bench();
    } else {
        println!(
            "one room: {} members + 3 senders, {} messages (flat out), then {} msg/s (latency)",
            a.members, a.messages, a.rate
        );
        rooms_bench(&a);
    }
}
