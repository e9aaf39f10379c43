//! The shell: the mio loop, sockets, signals and the clock.
//!
//! Everything that decides anything lives in the connection layer
//! (`conn.rs`); this file only moves bytes between sockets and the engine,
//! in the steps mio's contract asks for: poll, drain each readable socket
//! until it would block, write what the engine queued, run the timers.

use std::io::{self, Read};
use std::net::{SocketAddr, ToSocketAddrs};
use std::panic::{self, AssertUnwindSafe};
use std::time::{Duration, Instant};

use mio::net::{TcpListener, TcpStream};
use mio::{Events, Interest, Poll, Token};
use signal_hook::consts::{SIGINT, SIGTERM};
use signal_hook_mio::v1_0::Signals;

use crate::backplane::Backplane;
use crate::config::Config;
use crate::conn::{Engine, Readable};
use crate::log;
use crate::slab::Key;

/// Tokens outside the key space: a slab index is never `u32::MAX`.
const LISTENER: Token = Token(u32::MAX as usize);
const SIGNALS: Token = Token((1 << 32) | u32::MAX as usize);
const BACKPLANE: Token = Token((2 << 32) | u32::MAX as usize);

/// Backplane events handled per loop turn, so a flood from Redis cannot
/// starve the sockets.
const BACKPLANE_EVENTS_PER_TURN: usize = 4096;

/// At shutdown, how long to wait for Redis to take this instance's
/// deregistration.
const BACKPLANE_STOP_TIMEOUT: Duration = Duration::from_secs(1);

/// The shared read buffer. A read fills it at most once per call, so this
/// also sets how much one connection reads before the next gets a turn.
/// Room for a few 64 KiB frames: a large message that arrives whole is
/// unmasked and answered where it lies, while one split across reads is
/// copied together first. One buffer serves every connection, so its size
/// costs nothing per connection.
const READ_BUFFER: usize = 256 * 1024;

/// Reads per readiness event before the connection waits for the next
/// loop iteration, so one fast sender cannot starve the rest.
const READS_PER_TURN: usize = 16;

/// Connections closed per loop turn. Closing a socket costs the kernel some
/// microseconds; thousands expiring at once (an attack's half-open
/// handshakes, say) are closed in batches with other work between them.
const REMOVALS_PER_TURN: usize = 256;

/// How often the timers run. Deadlines are met to within this.
const TICK: Duration = Duration::from_millis(250);

/// A bound, running server. Create it with [`Server::bind`], then
/// [`Server::run`] it until shutdown.
pub struct Server {
    poll: Poll,
    listener: TcpListener,
    signals: Signals,
    engine: Engine<TcpStream>,
    read_buf: Vec<u8>,
    started: Instant,
    drain_timeout: Duration,
    /// Connections that used up their reads for this turn, and whether the
    /// poller had seen them hang up.
    unfinished_reads: Vec<(Key, bool)>,
    /// Set when accept failed for lack of file descriptors: retried on the
    /// next tick, since an edge-triggered listener will not say so again.
    accept_backlog: bool,
    /// Set when backplane events were left for the next turn.
    backplane_backlog: bool,
}

impl Server {
    /// Binds the listener and installs the signal handlers.
    ///
    /// # Errors
    ///
    /// When the address does not resolve or cannot be bound, or the poller
    /// cannot be created.
    pub fn bind(config: &Config) -> io::Result<Server> {
        let addr = resolve(&config.host, config.port)?;
        let poll = Poll::new()?;
        let mut listener = TcpListener::bind(addr)?;
        poll.registry()
            .register(&mut listener, LISTENER, Interest::READABLE)?;
        let mut signals = Signals::new([SIGTERM, SIGINT])?;
        poll.registry()
            .register(&mut signals, SIGNALS, Interest::READABLE)?;
        let mut engine = Engine::new(config.limits(), &config.instance_id)
            .with_deployment(config.deployment())
            .with_policy(config.policy());
        if let Some(settings) = config.backplane() {
            let waker = mio::Waker::new(poll.registry(), BACKPLANE)?;
            let backplane = Backplane::start(&settings, waker)
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
            log::info("backplane: starting", &[("node", backplane.node().into())]);
            engine.chat_mut().attach_backplane(backplane);
        }
        Ok(Server {
            poll,
            listener,
            signals,
            engine,
            read_buf: vec![0; READ_BUFFER],
            started: Instant::now(),
            drain_timeout: config.drain_timeout,
            unfinished_reads: Vec::new(),
            accept_backlog: false,
            backplane_backlog: false,
        })
    }

    /// The address the listener is bound to.
    ///
    /// # Errors
    ///
    /// As the OS reports.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    fn now(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }

    /// Runs until a signal asks for shutdown and the drain completes.
    ///
    /// # Errors
    ///
    /// Only when polling itself fails.
    pub fn run(mut self) -> io::Result<()> {
        let mut events = Events::with_capacity(1024);
        let tick = TICK.as_millis() as u64;
        let mut next_tick = self.now() + tick;
        let drain_millis = u64::try_from(self.drain_timeout.as_millis()).unwrap_or(u64::MAX);
        // When the drain started and when it must end.
        let mut drain: Option<(u64, u64)> = None;
        loop {
            let now = self.now();
            // A drain ends at its deadline, not at the tick after it.
            let wake = drain.map_or(next_tick, |(_, deadline)| next_tick.min(deadline));
            let timeout = if self.unfinished_reads.is_empty()
                && !self.engine.has_pending_work()
                && !self.backplane_backlog
            {
                Duration::from_millis(wake.saturating_sub(now))
            } else {
                Duration::ZERO
            };
            match self.poll.poll(&mut events, Some(timeout)) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
            let busy_since = Instant::now();
            let now = self.now();
            for (key, closing) in std::mem::take(&mut self.unfinished_reads) {
                self.read_from(key, now, closing);
            }
            for event in events.iter() {
                match event.token() {
                    LISTENER => self.accept_all(now),
                    // Only a wake-up: events are taken below, every turn.
                    BACKPLANE => {}
                    SIGNALS => {
                        if self.on_signals(now) && drain.is_none() {
                            drain = Some((now, now.saturating_add(drain_millis)));
                        }
                    }
                    token => {
                        let key = Key::from_usize(token.0);
                        if event.is_writable() {
                            self.engine.on_writable(key);
                        }
                        let closed = event.is_read_closed() || event.is_error();
                        if event.is_readable() || closed {
                            self.read_from(key, now, closed);
                        }
                    }
                }
            }
            self.backplane_backlog = self.engine.pump_backplane(BACKPLANE_EVENTS_PER_TURN);
            if now >= next_tick {
                next_tick = now + tick;
                self.engine.tick(now);
                if self.accept_backlog {
                    self.accept_all(now);
                }
            }
            self.settle(now);
            let busy = busy_since.elapsed().as_micros();
            self.engine
                .metrics_mut()
                .loop_time
                .observe(u64::try_from(busy).unwrap_or(u64::MAX));
            if let Some((started, deadline)) = drain {
                // Plain HTTP requests (probes asking /readyz) are not waited
                // for: they are answered at once, and the drain is for
                // clients.
                if self.engine.websockets() == 0 || now >= deadline {
                    log::info(
                        "shutdown complete",
                        &[
                            ("unfinishedConnections", self.engine.len().into()),
                            ("drainMillis", (now - started).into()),
                        ],
                    );
                    self.engine
                        .chat_mut()
                        .stop_backplane(BACKPLANE_STOP_TIMEOUT);
                    return Ok(());
                }
            }
        }
    }

    /// Writes what the engine queued and removes the connections it is done
    /// with, until neither leaves more work (a removal can queue notices),
    /// or a full batch of removals leaves the rest for the next turn.
    fn settle(&mut self, now: u64) {
        loop {
            self.engine.flush(now);
            let doomed = self.engine.take_doomed(REMOVALS_PER_TURN);
            if doomed.is_empty() {
                return;
            }
            let batch_full = doomed.len() == REMOVALS_PER_TURN;
            for key in doomed {
                if let Some(mut socket) = self.engine.remove(key) {
                    // Closing the socket would remove it from epoll too;
                    // deregistering first is mio's documented contract.
                    let _ = self.poll.registry().deregister(&mut socket);
                }
            }
            if batch_full {
                self.engine.flush(now);
                return;
            }
        }
    }

    fn accept_all(&mut self, now: u64) {
        self.accept_backlog = false;
        loop {
            match self.listener.accept() {
                Ok((socket, addr)) => {
                    // Chat frames are small and latency-sensitive.
                    let _ = socket.set_nodelay(true);
                    let key = self.engine.accept_from(socket, addr.ip(), now);
                    let peer = self.engine.peer_mut(key).expect("just accepted");
                    let registered = self.poll.registry().register(
                        &mut peer.socket,
                        Token(key.to_usize()),
                        Interest::READABLE | Interest::WRITABLE,
                    );
                    if let Err(e) = registered {
                        log::error(
                            "cannot register a connection",
                            &[("error", e.to_string().into())],
                        );
                        self.engine.remove(key);
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                // A client that gave up before we accepted it: try the next.
                Err(e)
                    if e.kind() == io::ErrorKind::Interrupted
                        || e.kind() == io::ErrorKind::ConnectionAborted => {}
                Err(e) => {
                    // Typically EMFILE: out of file descriptors. The pending
                    // connections wait in the backlog until the next tick.
                    log::warning("accept failed", &[("error", e.to_string().into())]);
                    self.accept_backlog = true;
                    return;
                }
            }
        }
    }

    /// Reads from `key` until it would block, the peer hangs up, or its
    /// turn's reads are used up. `closing` says the poller saw the peer
    /// close its side: then reading goes on to the end of the stream.
    fn read_from(&mut self, key: Key, now: u64, closing: bool) {
        for _ in 0..READS_PER_TURN {
            let socket = match self.engine.reader(key) {
                Readable::Socket(socket) => socket,
                // Read on once the flush has written, or closed, it.
                Readable::Paused => break,
                Readable::Gone => return,
            };
            match socket.read(&mut self.read_buf) {
                Ok(0) => return self.engine.on_hangup(key),
                Ok(n) => {
                    let input = &mut self.read_buf[..n];
                    let engine = &mut self.engine;
                    // A bug in handling one connection's input must not take
                    // down every other connection: that connection alone is
                    // closed with 1011.
                    let handled = panic::catch_unwind(AssertUnwindSafe(|| {
                        engine.on_input(key, input, now);
                    }));
                    if handled.is_err() {
                        log::error(
                            "bug: handling input panicked",
                            &[("conn", key.to_usize().into())],
                        );
                        let engine = &mut self.engine;
                        let closed = panic::catch_unwind(AssertUnwindSafe(|| {
                            engine.fail_internal(key, now)
                        }));
                        if closed.is_err() {
                            if let Some(mut socket) = self.engine.evict(key) {
                                let _ = self.poll.registry().deregister(&mut socket);
                            }
                        }
                        return;
                    }
                    // A short read emptied the socket. Linux's edge-triggered
                    // epoll reports any byte that arrives later as a new
                    // event, so the read that would say WouldBlock is saved.
                    // Not so for a FIN that came in the same event as the
                    // data: that one is read now or never seen.
                    if n < self.read_buf.len() && !closing {
                        return;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return self.engine.on_hangup(key),
            }
        }
        self.unfinished_reads.push((key, closing));
    }

    /// Handles pending signals. Returns true when a shutdown starts now.
    fn on_signals(&mut self, now: u64) -> bool {
        let mut starts = false;
        for signal in self.signals.pending() {
            if self.engine.is_shutting_down() || starts {
                log::warning(
                    "second signal: exiting without draining",
                    &[
                        ("signal", signal.into()),
                        ("unfinishedConnections", self.engine.len().into()),
                    ],
                );
                std::process::exit(1);
            }
            log::info(
                "shutting down",
                &[
                    ("signal", signal.into()),
                    ("connections", self.engine.len().into()),
                ],
            );
            // The listener stays open while draining: readiness probes get a
            // 503 that says so, and new WebSocket clients a 503 too.
            //
            // Whatever clients sent before the signal is still handled:
            // read every socket once before telling them goodbye.
            for key in self.engine.keys() {
                self.read_from(key, now, false);
            }
            self.engine.begin_shutdown(now);
            starts = true;
        }
        starts
    }
}

// LIMITATION: the static build (scripts/build-static.sh, the image) cannot
// resolve a host name, as glibc's name service modules are shared
// libraries; there HOST must be an address, or start fails with a lookup
// error. An address is parsed without any lookup.
fn resolve(host: &str, port: u16) -> io::Result<SocketAddr> {
    (host, port).to_socket_addrs()?.next().ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{host} resolves to no address"),
        )
    })
}
