//! Connections: opening them from many source addresses, upgrading them,
//! and moving bytes without blocking.

use std::io::{self, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::time::{Duration, Instant};

use mio::net::TcpStream;
use mio::{Events, Interest, Poll, Token};
use socket2::{Domain, Socket, Type};

use crate::wire::{self, FrameReader};

/// Where and how to connect.
#[derive(Debug, Clone)]
pub struct Target {
    /// The server's address.
    pub addr: SocketAddr,
    /// The request path.
    pub path: String,
    /// Plain TCP: no upgrade; the server echoes bytes.
    pub raw_tcp: bool,
    /// Source addresses 127.0.0.1 up to 127.0.0.`sources` are used in turn,
    /// so that many connections (or many short ones) do not run out of
    /// ephemeral ports. Only for a loopback target.
    pub sources: u8,
}

/// Where a client is in its setup.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// TCP connect in progress.
    Connecting,
    /// Upgrade request sent, response head not complete.
    Upgrading,
    /// Ready for frames.
    Open,
    /// Closed, by either side or by a failure.
    Done,
}

/// One connection of the generator.
pub struct Client {
    /// The socket.
    pub sock: TcpStream,
    /// Where it is in its setup.
    pub phase: Phase,
    /// The response head, while it arrives.
    head: Vec<u8>,
    /// The reply stream's frame walker.
    pub reader: FrameReader,
    /// Bytes to write, and how many of them are written.
    pub out: Vec<u8>,
    out_pos: usize,
    /// Cleared when a write would block, set again by a writable event.
    pub writable: bool,
}

/// What a read found.
pub enum Read_ {
    /// This many bytes, at the start of the buffer.
    Bytes(usize),
    /// Nothing more for now.
    Empty,
    /// End of stream or a failure.
    Closed,
}

impl Client {
    /// Starts connecting to `target` from the source address for `index`.
    ///
    /// # Errors
    ///
    /// When the socket cannot be made or bound, or connect fails at once.
    pub fn connect(target: &Target, index: usize) -> io::Result<Client> {
        let socket = Socket::new(Domain::IPV4, Type::STREAM, None)?;
        socket.set_nonblocking(true)?;
        socket.set_tcp_nodelay(true)?;
        if target.addr.ip().is_loopback() && target.sources > 1 {
            let last = 1 + (index % usize::from(target.sources)) as u8;
            let source = SocketAddrV4::new(Ipv4Addr::new(127, 0, 0, last), 0);
            socket.bind(&SocketAddr::V4(source).into())?;
        }
        match socket.connect(&target.addr.into()) {
            Ok(()) => {}
            Err(e) if e.raw_os_error() == Some(libc_einprogress()) => {}
            Err(e) => return Err(e),
        }
        let sock = TcpStream::from_std(std::net::TcpStream::from(socket));
        Ok(Client {
            sock,
            phase: Phase::Connecting,
            head: Vec::new(),
            reader: FrameReader::default(),
            out: Vec::new(),
            out_pos: 0,
            writable: false,
        })
    }

    /// Queues `bytes` behind anything not yet written.
    pub fn queue(&mut self, bytes: &[u8]) {
        if self.out_pos == self.out.len() {
            self.out.clear();
            self.out_pos = 0;
        }
        self.out.extend_from_slice(bytes);
    }

    /// Writes queued bytes until done or the socket would block.
    ///
    /// # Errors
    ///
    /// A write failure other than `WouldBlock`.
    pub fn flush(&mut self) -> io::Result<()> {
        while self.writable && self.out_pos < self.out.len() {
            match self.sock.write(&self.out[self.out_pos..]) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => self.out_pos += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => self.writable = false,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// Writes `bytes` directly, returning how many the socket took.
    ///
    /// # Errors
    ///
    /// A write failure other than `WouldBlock`.
    pub fn write_some(&mut self, bytes: &[u8]) -> io::Result<usize> {
        let mut done = 0;
        while self.writable && done < bytes.len() {
            match self.sock.write(&bytes[done..]) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => done += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => self.writable = false,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(done)
    }

    /// One read into `buf`.
    pub fn read(&mut self, buf: &mut [u8]) -> Read_ {
        loop {
            return match self.sock.read(buf) {
                Ok(0) => Read_::Closed,
                Ok(n) => Read_::Bytes(n),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => Read_::Empty,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => Read_::Closed,
            };
        }
    }

    /// Advances the setup on a writable event: a finished connect sends the
    /// upgrade request (or, for plain TCP, makes the client open).
    ///
    /// # Errors
    ///
    /// When the connect failed.
    pub fn on_writable(&mut self, target: &Target, request: &[u8]) -> io::Result<()> {
        self.writable = true;
        if self.phase == Phase::Connecting {
            if let Some(e) = self.sock.take_error()? {
                return Err(e);
            }
            // A writable event also comes with a refused connect; the peer
            // address tells them apart.
            self.sock.peer_addr()?;
            if target.raw_tcp {
                self.phase = Phase::Open;
            } else {
                self.queue(request);
                self.phase = Phase::Upgrading;
            }
        }
        self.flush()
    }

    /// Takes response-head bytes while upgrading. Returns the bytes that
    /// followed the head, if the head is now complete.
    ///
    /// # Errors
    ///
    /// When the server refused the upgrade.
    pub fn on_head_bytes<'a>(&mut self, bytes: &'a [u8]) -> io::Result<Option<&'a [u8]>> {
        let seen = self.head.len();
        self.head.extend_from_slice(bytes);
        let Some(end) = wire::head_end(&self.head) else {
            return Ok(None);
        };
        if !wire::is_switching(&self.head) {
            let line = self.head.split(|&b| b == b'\r').next().unwrap_or_default();
            return Err(io::Error::other(format!(
                "upgrade refused: {}",
                String::from_utf8_lossy(line)
            )));
        }
        self.head = Vec::new();
        self.phase = Phase::Open;
        Ok(Some(&bytes[end - seen..]))
    }
}

fn libc_einprogress() -> i32 {
    // EINPROGRESS on Linux, the only platform `/proc` figures exist for.
    115
}

/// Opens `n` connections and upgrades them, at most `parallel` connecting
/// at once, registering client `i` under token `i`. Frames that arrive
/// during setup (a greeting) are read and dropped.
///
/// # Errors
///
/// The first connection that fails, or a setup slower than `deadline`.
pub fn establish(
    poll: &mut Poll,
    target: &Target,
    n: usize,
    parallel: usize,
    deadline: Duration,
) -> io::Result<Vec<Client>> {
    let request = wire::upgrade_request(&target.addr.to_string(), &target.path);
    let mut clients: Vec<Client> = Vec::with_capacity(n);
    let mut events = Events::with_capacity(1024);
    let mut buf = vec![0u8; 64 * 1024];
    let mut open = 0;
    let started = Instant::now();
    while open < n {
        while clients.len() < n && clients.len() - open < parallel {
            let i = clients.len();
            let mut c = Client::connect(target, i)?;
            poll.registry().register(
                &mut c.sock,
                Token(i),
                Interest::READABLE | Interest::WRITABLE,
            )?;
            clients.push(c);
        }
        if started.elapsed() > deadline {
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("only {open} of {n} connections upgraded in {deadline:?}"),
            ));
        }
        poll.poll(&mut events, Some(Duration::from_millis(100)))?;
        for event in events.iter() {
            let c = &mut clients[event.token().0];
            let was_open = c.phase == Phase::Open;
            if event.is_writable() {
                c.on_writable(target, &request)?;
            }
            if c.phase != Phase::Connecting {
                loop {
                    match c.read(&mut buf) {
                        Read_::Bytes(len) => {
                            let bytes = &buf[..len];
                            let frames = match c.phase {
                                Phase::Upgrading => c.on_head_bytes(bytes)?,
                                _ => Some(bytes),
                            };
                            if let Some(frames) = frames {
                                c.reader.feed(frames, 0, |_| {});
                            }
                        }
                        Read_::Empty => break,
                        Read_::Closed => {
                            return Err(io::Error::new(
                                io::ErrorKind::ConnectionReset,
                                "server closed a connection during setup",
                            ))
                        }
                    }
                }
            }
            if !was_open && c.phase == Phase::Open {
                open += 1;
            }
        }
    }
    Ok(clients)
}
