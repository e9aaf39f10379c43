//! roomcast-bench: a single-threaded load generator for WebSocket servers.
//!
//! One thread, one mio poller, pre-encoded masked frames, and replies read
//! by walking frame headers in a shared buffer. It reports what the client
//! sees (rates, latencies) and, given the server's PID, what the server
//! spent: CPU time from `/proc/PID/stat` per message, RSS per connection
//! from `/proc/PID/status`.
//!
//!     roomcast-bench --port 8080 --server-pid PID echo --depth 16
//!     roomcast-bench --port 8080 --server-pid PID broadcast --members 1000
//!     roomcast-bench --port 8080 --server-pid PID handshakes
//!     roomcast-bench --port 8080 --server-pid PID idle --connections 19000

mod broadcast;
mod echo;
mod handshakes;
mod idle;
mod net;
mod procstat;
mod report;
mod wire;

use std::net::{IpAddr, SocketAddr};
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};

use crate::net::Target;
use crate::procstat::Server;
use crate::report::Window;

#[derive(Parser)]
#[command(about = "Load generator for roomcast and other WebSocket servers")]
struct Cli {
    /// Server address.
    #[arg(long, default_value = "127.0.0.1")]
    host: IpAddr,
    /// Server port.
    #[arg(long, default_value_t = 8080)]
    port: u16,
    /// Request path; defaults to /echo for echo and handshakes, / otherwise.
    #[arg(long)]
    path: Option<String>,
    /// Speak plain TCP: no upgrade, replies are the bytes sent (for a TCP
    /// echo server, the protocol-free floor).
    #[arg(long)]
    raw_tcp: bool,
    /// The server's process ID, to charge its CPU time and read its RSS.
    #[arg(long)]
    server_pid: Option<u32>,
    /// Warm-up before the measured window.
    #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
    warmup: Duration,
    /// Length of the measured window.
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    duration: Duration,
    /// Source addresses 127.0.0.1..=127.0.0.N used in turn (loopback only).
    #[arg(long, default_value_t = 64)]
    sources: u8,
    #[command(subcommand)]
    mode: Mode,
}

#[derive(Subcommand)]
enum Mode {
    /// Echo round trips: C connections, P messages in flight each.
    Echo {
        /// Connections.
        #[arg(short = 'c', long, default_value_t = 100)]
        connections: usize,
        /// Messages in flight per connection.
        #[arg(short = 'p', long, default_value_t = 1)]
        depth: usize,
        /// Payload bytes.
        #[arg(short = 's', long, default_value_t = 32)]
        size: usize,
        /// Send binary frames instead of text.
        #[arg(long)]
        binary: bool,
        /// Stop after this many messages in all (no warm-up, no window):
        /// a fixed amount of work, for counting instructions.
        #[arg(long)]
        count: Option<u64>,
    },
    /// One room: M members, K of them publishing.
    Broadcast {
        /// Room members.
        #[arg(short = 'm', long, default_value_t = 1000)]
        members: usize,
        /// Publishers among the members.
        #[arg(short = 'k', long, default_value_t = 1)]
        publishers: usize,
        /// Messages in flight per publisher.
        #[arg(short = 'p', long, default_value_t = 16)]
        depth: usize,
        /// Bytes of padding in each message's text.
        #[arg(short = 's', long, default_value_t = 32)]
        size: usize,
        /// How members join and what they receive.
        #[arg(long, value_enum, default_value = "chat")]
        protocol: broadcast::Protocol,
        /// Publish this many messages in all, then wait for every delivery
        /// (no warm-up, no window): a fixed amount of work, for counting
        /// instructions.
        #[arg(long)]
        count: Option<u64>,
    },
    /// Connect, upgrade, close, over and over.
    Handshakes {
        /// Clients doing so at once.
        #[arg(short = 'c', long, default_value_t = 50)]
        concurrency: usize,
        /// Stop after this many handshakes (no warm-up, no window): a fixed
        /// amount of work, for counting instructions.
        #[arg(long)]
        count: Option<u64>,
    },
    /// N idle connections; the server's RSS per connection.
    Idle {
        /// Connections to hold open.
        #[arg(short = 'n', long, default_value_t = 10_000)]
        connections: usize,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // Large idle runs need a descriptor per connection; take what the hard
    // limit allows.
    let _ = rlimit::increase_nofile_limit(u64::MAX);
    let default_path = match cli.mode {
        Mode::Echo { .. } | Mode::Handshakes { .. } => "/echo",
        Mode::Broadcast { .. } | Mode::Idle { .. } => "/",
    };
    let target = Target {
        addr: SocketAddr::new(cli.host, cli.port),
        path: cli.path.clone().unwrap_or_else(|| default_path.to_owned()),
        raw_tcp: cli.raw_tcp,
        sources: cli.sources.max(1),
    };
    let server = cli.server_pid.map(Server::new);
    let mut window = Window::new(cli.warmup, cli.duration, server);
    let result = match cli.mode {
        Mode::Echo {
            connections,
            depth,
            size,
            binary,
            count,
        } => echo::run(
            &target,
            &echo::Load {
                connections,
                depth: depth.max(1),
                size,
                binary,
                count,
            },
            &mut window,
        ),
        Mode::Broadcast {
            members,
            publishers,
            depth,
            size,
            protocol,
            count,
        } => broadcast::run(
            &target,
            &broadcast::Load {
                members,
                publishers,
                depth: depth.max(1),
                size,
                protocol,
                count,
            },
            &mut window,
        ),
        Mode::Handshakes { concurrency, count } => {
            handshakes::run(&target, concurrency, count, &mut window)
        }
        Mode::Idle { connections } => idle::run(&target, connections, window.server()),
    };
    match result {
        Ok(report) => {
            println!("{}", report.render());
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("roomcast-bench: {e}");
            ExitCode::FAILURE
        }
    }
}
