//! roomcast: a WebSocket chat-room server on a hand-rolled mio event loop.
//!
//! Layers, from the wire inwards: the shell (`server`, `config`, `log`,
//! `cloudrun`) owns the poller, sockets, signals and clock; the connection
//! layer (`conn`, `outq`, `lifetime`, `probes`) runs each peer's state
//! machine; the protocol layer (`http`, `frame`, `mask`, `utf8`, `close`,
//! `trace`) parses and encodes bytes and nothing else; the app (`chat`,
//! `rooms`) speaks the JSON chat protocol; the `backplane` shares rooms
//! between instances through Redis.

#![forbid(unsafe_code)]
#![deny(missing_docs)]

pub mod assets;
pub mod backplane;
pub mod chat;
pub mod clock;
pub mod close;
pub mod cloudrun;
pub mod config;
pub mod conn;
pub mod frame;
pub mod http;
pub mod lifetime;
pub mod log;
pub mod mask;
pub mod outq;
pub mod probes;
pub mod rooms;
pub mod server;
pub mod slab;
pub mod trace;
pub mod utf8;
