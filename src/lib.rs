//! roomcast: a WebSocket chat-room server on a hand-rolled mio event loop.

pub mod close;
pub mod frame;
pub mod http;
pub mod mask;
pub mod utf8;
