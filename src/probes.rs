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
    /// Connections of any phase, what `--max-connections` counts.
    pub connections: usize,
    /// `--max-connections`.
    pub max_connections: usize,
}

/// Whether the server takes new clients, and if not, why.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Readiness {
    /// New clients are welcome.
    Ready,
    /// Shutting down: existing clients are being closed, new ones refused.
    Draining,
    /// Close to `--max-connections`: new clients are still accepted up to
    /// it, but are better sent to another instance.
    NearCapacity,
}

impl Readiness {
    /// The status code `/readyz` answers with.
    pub const fn status(self) -> u16 {
        match self {
            Readiness::Ready => 200,
            Readiness::Draining | Readiness::NearCapacity => 503,
        }
    }

    /// The word `/readyz` reports as its `status`.
    pub const fn reason(self) -> &'static str {
        match self {
            Readiness::Ready => "ready",
            Readiness::Draining => "draining",
            Readiness::NearCapacity => "near capacity",
        }
    }

    /// Whether new WebSocket clients are accepted (up to the limits).
    pub const fn accepts_clients(self) -> bool {
        matches!(self, Readiness::Ready | Readiness::NearCapacity)
    }
}

/// Decides readiness. Each reason to refuse new clients is one check here,
/// the most pressing first.
pub fn readiness(load: &Load) -> Readiness {
    if load.draining {
        return Readiness::Draining;
    }
    if near_capacity(load.connections, load.max_connections) {
        return Readiness::NearCapacity;
    }
    Readiness::Ready
}

/// The share of `--max-connections`, in percent, from which the server
/// reports itself not ready, so a load balancer sends new clients elsewhere
/// before they would be refused.
pub const NEAR_CAPACITY_PERCENT: usize = 90;

/// Whether `connections` are at or above [`NEAR_CAPACITY_PERCENT`] of
/// `max`.
pub fn near_capacity(connections: usize, max: usize) -> bool {
    connections.saturating_mul(100) >= max.saturating_mul(NEAR_CAPACITY_PERCENT)
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
            connections: 10,
            max_connections: 100,
        };
        assert_eq!(readiness(&load), Readiness::Ready);
        assert_eq!(readiness(&load).status(), 200);
        load.draining = true;
        assert_eq!(readiness(&load), Readiness::Draining);
        assert_eq!(readiness(&load).status(), 503);
        assert!(!readiness(&load).accepts_clients());
        assert_eq!(body(readiness(&load).reason()), r#"{"status":"draining"}"#);
    }

    #[test]
    fn not_ready_from_ninety_percent_of_the_connection_limit() {
        let mut load = Load {
            draining: false,
            open_connections: 0,
            connections: 89,
            max_connections: 100,
        };
        assert_eq!(readiness(&load), Readiness::Ready);
        load.connections = 90;
        assert_eq!(readiness(&load), Readiness::NearCapacity);
        assert_eq!(readiness(&load).status(), 503);
        assert!(readiness(&load).accepts_clients(), "until the limit itself");
        assert_eq!(
            body(readiness(&load).reason()),
            r#"{"status":"near capacity"}"#
        );
        load.draining = true;
        assert_eq!(readiness(&load), Readiness::Draining);
        assert!(!near_capacity(0, usize::MAX));
    }
}
