//! roomcast: a WebSocket chat-room server on a hand-rolled mio event loop.
//!
//! Layers, from the wire inwards: the shell (`server`, `config`, `log`,
//! `cloudrun`) owns the poller, sockets, signals and clock; the connection
//! layer (`conn`, `outq`, `lifetime`, `probes`) runs each peer's state
//! machine; the protocol layer (`http`, `frame`, `mask`, `utf8`, `close`,
//! `trace`) parses and encodes bytes and nothing else; the app (`chat`,
//! `rooms`) speaks the JSON chat protocol; the `backplane` shares rooms
//! between instances through Redis. Beside the connection layer, the gate
//! (`gate`, `auth`, `origin`, `limits`) decides who may connect and how
//! much each may send, and `metrics` and `ledger` count what happened.

#![forbid(unsafe_code)]
#![deny(missing_docs)]

pub mod assets;
pub mod auth;
pub mod backplane;
pub mod chat;
pub mod clock;
pub mod close;
pub mod cloudrun;
pub mod config;
pub mod conn;
pub mod frame;
pub mod gate;
pub mod http;
pub mod ledger;
pub mod lifetime;
pub mod limits;
pub mod log;
pub mod mask;
pub mod metrics;
pub mod origin;
pub mod outq;
pub mod probes;
pub mod rooms;
pub mod server;
pub mod slab;
pub mod trace;
pub mod utf8;
