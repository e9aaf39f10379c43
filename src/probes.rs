//! Health probes: `/healthz` says the process is alive, `/readyz` whether it
//! should be sent new clients.
//!
//! Liveness is answered by the event loop itself, so a 200 proves the loop
//! turns; nothing else is checked, since restarting the process would fix
//! nothing else. Readiness is one function of the server's state, so every
//! reason to turn clients away is decided in one place.

use serde::Serialize;

/// Path of the liveness probe.
pub const LIVENESS_PATH: &str = "/healthz";
/// Path of the readiness probe.
pub const READINESS_PATH: &str = "/readyz";

/// What readiness is decided from: a snapshot of the server's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Load {
    /// A shutdown signal arrived: the server is draining its clients.
    pub draining: bool,
    /// Open WebSocket connections.
    pub open_connections: usize,
}

/// Whether the server takes new clients, and if not, why.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Readiness {
    /// New clients are welcome.
    Ready,
    /// Shutting down: existing clients are being closed, new ones refused.
    Draining,
}

impl Readiness {
    /// The status code `/readyz` answers with.
    pub const fn status(self) -> u16 {
        match self {
            Readiness::Ready => 200,
            Readiness::Draining => 503,
        }
    }

    /// The word `/readyz` reports as its `status`.
    pub const fn reason(self) -> &'static str {
        match self {
            Readiness::Ready => "ready",
            Readiness::Draining => "draining",
        }
    }

    /// Whether new WebSocket clients are accepted.
    pub const fn accepts_clients(self) -> bool {
        matches!(self, Readiness::Ready)
    }
}

/// Decides readiness. Each reason to refuse new clients is one check here,
/// the most pressing first.
pub fn readiness(load: &Load) -> Readiness {
    if load.draining {
        return Readiness::Draining;
    }
    Readiness::Ready
}

#[derive(Serialize)]
struct ProbeBody<'a> {
    status: &'a str,
}

/// The JSON body of a probe answer: `{"status":"..."}`.
pub fn body(status: &str) -> String {
    serde_json::to_string(&ProbeBody { status }).expect("a struct of one string serialises")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ready_until_draining() {
        let mut load = Load {
            draining: false,
            open_connections: 10,
        };
        assert_eq!(readiness(&load), Readiness::Ready);
        assert_eq!(readiness(&load).status(), 200);
        load.draining = true;
        assert_eq!(readiness(&load), Readiness::Draining);
        assert_eq!(readiness(&load).status(), 503);
        assert!(!readiness(&load).accepts_clients());
        assert_eq!(body(readiness(&load).reason()), r#"{"status":"draining"}"#);
    }
}
