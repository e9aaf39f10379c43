//! One connection's account: what went each way and how it ended, for the
//! metrics and the one log line written when it is removed.

use serde_json::Value;

/// Who ended a WebSocket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Closer {
    /// The client sent the first close frame.
    Client,
    /// We sent the first close frame, or dropped a silent peer.
    Server,
    /// The TCP connection ended, or failed, with no close frame.
    Error,
}

impl Closer {
    /// The `closedBy` field.
    pub const fn label(self) -> &'static str {
        match self {
            Closer::Client => "client",
            Closer::Server => "server",
            Closer::Error => "error",
        }
    }
}

/// RFC 6455 7.1.5: the code that stands for a connection closed with no
/// close frame. It is never sent, only reported.
pub const ABNORMAL: u16 = 1006;

/// A connection's traffic and ending.
#[derive(Debug, Clone)]
pub struct Ledger {
    /// When it was accepted, in engine milliseconds.
    pub opened_at: u64,
    /// Data messages received. A `u32` to keep idle connections small; it
    /// saturates, so past 4,294,967,295 messages the log line understates.
    pub messages_in: u32,
    /// Data messages queued to it; a `u32`, saturating, as `messages_in`.
    pub messages_out: u32,
    /// Bytes read from it, request head included.
    pub bytes_in: u64,
    /// Bytes written to it, response head included.
    pub bytes_out: u64,
    /// The first close code and who sent it; later ones do not change it.
    end: Option<(u16, Closer)>,
}

impl Ledger {
    /// An empty ledger for a connection accepted at `now`.
    pub fn new(now: u64) -> Self {
        Ledger {
            opened_at: now,
            messages_in: 0,
            messages_out: 0,
            bytes_in: 0,
            bytes_out: 0,
            end: None,
        }
    }

    /// Counts one data message received.
    pub fn message_in(&mut self) {
        self.messages_in = self.messages_in.saturating_add(1);
    }

    /// Counts `n` data messages received and as many queued to it.
    pub fn echoed(&mut self, n: u32) {
        self.messages_in = self.messages_in.saturating_add(n);
        self.messages_out = self.messages_out.saturating_add(n);
    }

    /// Counts one data message queued to it.
    pub fn message_out(&mut self) {
        self.messages_out(1);
    }

    /// Counts `n` data messages queued to it.
    pub fn messages_out(&mut self, n: u32) {
        self.messages_out = self.messages_out.saturating_add(n);
    }

    /// Records how the connection ended, unless that is already known.
    pub fn ended(&mut self, code: u16, by: Closer) {
        self.end.get_or_insert((code, by));
    }

    /// The close code it ended with; [`ABNORMAL`] if none was exchanged.
    pub fn code(&self) -> u16 {
        self.end.map_or(ABNORMAL, |(code, _)| code)
    }

    /// Who ended it; a connection with no recorded end failed.
    pub fn closer(&self) -> Closer {
        self.end.map_or(Closer::Error, |(_, by)| by)
    }

    /// The end-of-connection log fields, as of `now`, for a connection on
    /// `route`. Callers add their own (connection key, trace, client and
    /// room, whatever else a line should carry).
    pub fn end_fields(&self, now: u64, route: &'static str) -> Vec<(&'static str, Value)> {
        vec![
            ("route", route.into()),
            ("durationMs", now.saturating_sub(self.opened_at).into()),
            ("messagesIn", self.messages_in.into()),
            ("messagesOut", self.messages_out.into()),
            ("bytesIn", self.bytes_in.into()),
            ("bytesOut", self.bytes_out.into()),
            ("code", self.code().into()),
            ("closedBy", self.closer().label().into()),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_ending_sticks() {
        let mut l = Ledger::new(10);
        assert_eq!((l.code(), l.closer()), (ABNORMAL, Closer::Error));
        l.ended(1008, Closer::Server);
        l.ended(1000, Closer::Client);
        assert_eq!((l.code(), l.closer()), (1008, Closer::Server));
        let fields = l.end_fields(35, "chat");
        assert!(fields.contains(&("durationMs", 25.into())));
        assert!(fields.contains(&("closedBy", "server".into())));
    }
}
