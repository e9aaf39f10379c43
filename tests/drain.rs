//! Checks graceful shutdown under load: 1,000 chat clients in rooms of ten, each having just
//! sent five messages that the server has not read yet, then SIGTERM. Every client must get
//! every message of its room, then `server_shutdown` and a 1001 close, whether the clients
//! answer the close (the server then exits as soon as they have) or not (it exits at the
//! drain deadline).
//!
//! The times are printed; `cargo test --release --test drain -- --nocapture` shows them for
//! the release build. The assertions on them leave wide slack for a loaded machine.

mod common;

use common::*;
use std::collections::BTreeSet;
use std::sync::Mutex;
use std::thread;
use std::time::{Duration, Instant};
use tungstenite::Message;

const CLIENTS: usize = 1000;
const ROOM_SIZE: usize = 10;
const MESSAGES_EACH: usize = 5;

/// The two tests hold 2,000 sockets each (both ends) and time the server: one at a time.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

/// Lets this process, and the servers it starts, open enough sockets.
fn raise_fd_limit(want: u64) {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the struct we pass and nothing else.
    assert_eq!(unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) }, 0);
    if lim.rlim_cur >= want {
        return;
    }
    // Raising the hard limit needs root (CI runs as root); the soft one never does.
    lim.rlim_cur = want;
    lim.rlim_max = lim.rlim_max.max(want);
    // SAFETY: setrlimit only reads the struct we pass.
    let rc = unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lim) };
    assert_eq!(
        rc, 0,
        "cannot raise the open-file limit to {want}; run `ulimit -n {want}` first"
    );
}

fn text_of(client: usize, n: usize) -> String {
    format!("m-{client}-{n}")
}

/// The texts client `i` must receive: every message of every member of its room.
fn expected_for(i: usize) -> BTreeSet<String> {
    let room = i / ROOM_SIZE;
    (room * ROOM_SIZE..(room + 1) * ROOM_SIZE)
        .flat_map(|j| (0..MESSAGES_EACH).map(move |n| text_of(j, n)))
        .collect()
}

/// Connects the clients, puts them in rooms, has each send its messages and then sends
/// SIGTERM, all while the server is stopped: so at the signal every message is still unread
/// in the server's sockets. Returns the clients and when the server was let go on.
fn crowd_then_sigterm(server: &Server) -> (Vec<Client>, Instant) {
    let mut clients: Vec<Client> = (0..CLIENTS).map(|_| Client::chat(server)).collect();
    for (i, c) in clients.iter_mut().enumerate() {
        c.join(&format!("room-{}", i / ROOM_SIZE));
    }
    server.signal(libc::SIGSTOP);
    for n in 0..MESSAGES_EACH {
        for (i, c) in clients.iter_mut().enumerate() {
            c.send_json(&json!({"type": "message", "text": text_of(i, n)}));
        }
    }
    server.signal(libc::SIGTERM);
    let signalled = Instant::now();
    server.signal(libc::SIGCONT);
    (clients, signalled)
}

/// Reads what client `i` was sent, up to and including the close frame; checks that every
/// message of its room came before `server_shutdown`, then the close with 1001.
fn read_to_close(i: usize, c: &mut Client) {
    let mut texts = BTreeSet::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    let code = loop {
        match c.read_by(deadline) {
            Got::Msg(Message::Text(t)) => {
                let v: Value = serde_json::from_str(t.as_str()).unwrap();
                match v["type"].as_str() {
                    Some("message") => {
                        let fresh = texts.insert(v["text"].as_str().unwrap().to_owned());
                        assert!(fresh, "client {i}: {v} twice");
                    }
                    Some("user_joined") => {}
                    Some("server_shutdown") => {
                        assert_eq!(texts, expected_for(i), "client {i}: messages lost");
                    }
                    _ => panic!("client {i}: unexpected {v}"),
                }
            }
            Got::Msg(Message::Ping(_) | Message::Pong(_)) => {}
            Got::Msg(Message::Close(Some(f))) => break u16::from(f.code),
            other => panic!("client {i}: expected messages then a close, got {other:?}"),
        }
    };
    assert_eq!(code, 1001, "client {i}");
    assert_eq!(texts, expected_for(i), "client {i}: no server_shutdown");
}

/// The server's own measure, from its `shutdown complete` line.
fn drain_millis(server: &Server) -> Value {
    let line = server.wait_log(STEP, |v| v["message"] == "shutdown complete");
    line["drainMillis"].clone()
}

#[test]
fn thousand_clients_that_answer_the_close_let_the_server_exit_at_once() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    raise_fd_limit(8192);
    // A deadline far beyond the expected exit: reaching it would fail the test.
    let mut server = start(&["--drain-timeout", "60s", "--close-timeout", "60s"]);
    let (mut clients, signalled) = crowd_then_sigterm(&server);
    // Four readers, as a client library would read many sockets at once.
    let chunk = CLIENTS.div_ceil(4);
    thread::scope(|s| {
        for (n, part) in clients.chunks_mut(chunk).enumerate() {
            s.spawn(move || {
                for (k, c) in part.iter_mut().enumerate() {
                    read_to_close(n * chunk + k, c);
                    // Sends the close reply tungstenite queued on reading the close.
                    c.ws.flush().unwrap();
                }
                for c in part.iter_mut() {
                    c.expect_closed(STEP);
                }
            });
        }
    });
    let status = server
        .wait_exit(Duration::from_secs(20))
        .expect("still running 20 s after SIGTERM");
    let took = signalled.elapsed();
    assert_eq!(status.code(), Some(0));
    println!(
        "drain: {CLIENTS} clients answering the close: SIGTERM to exit {} ms \
         (server's drainMillis {})",
        took.as_millis(),
        drain_millis(&server)
    );
    // The goal is under 2 s; the bound is wide for a loaded machine, and still far from
    // the 60 s deadline, so it shows the exit came from the clients' answers.
    assert!(took < Duration::from_secs(10), "took {took:?}");
}

#[test]
fn thousand_clients_that_never_answer_hold_the_server_until_the_drain_deadline() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    raise_fd_limit(8192);
    // The close timeout outlasts the drain, so the drain deadline is what ends it.
    let mut server = start(&["--drain-timeout", "3s", "--close-timeout", "60s"]);
    let (mut clients, signalled) = crowd_then_sigterm(&server);
    let status = server
        .wait_exit(Duration::from_secs(15))
        .expect("still running 15 s after SIGTERM");
    let took = signalled.elapsed();
    assert_eq!(status.code(), Some(0));
    println!(
        "drain: {CLIENTS} clients not answering, --drain-timeout 3s: SIGTERM to exit {} ms \
         (server's drainMillis {})",
        took.as_millis(),
        drain_millis(&server)
    );
    assert!(
        took >= Duration::from_secs(3),
        "exited before the deadline: {took:?}"
    );
    assert!(took < Duration::from_secs(8), "took {took:?}");
    // Everything was written before the exit: it waits in each client's socket.
    for (i, c) in clients.iter_mut().enumerate() {
        read_to_close(i, c);
    }
}
