//! The admission gate: who may open a WebSocket, checked on the upgrade
//! request after it parsed and before the 101 is sent.
//!
//! Checks run cheapest and least revealing first: the origin (403), then
//! the token (401), then capacity (503 or 429), so that a page from a
//! foreign site learns nothing about tokens and an unauthenticated client
//! cannot use up the per-address allowance of an authenticated one.

use std::net::IpAddr;

use crate::auth::{AuthError, Identity, Verifier};
use crate::http::{self, Request};
use crate::limits::{self, Admission, RateLimit};
use crate::metrics::Refusal;
use crate::origin::{OriginError, OriginPolicy};

/// Everything the gate enforces.
#[derive(Debug, Clone)]
pub struct Policy {
    /// Connection, room and rate limits.
    pub admission: Admission,
    /// The token check, when `--auth-secret` is set.
    pub auth: Option<Verifier>,
    /// The `Origin` check.
    pub origins: OriginPolicy,
}

impl Policy {
    /// No auth, any origin, and limits too high to matter: what the
    /// engine's own tests run with.
    pub fn permissive() -> Self {
        Policy {
            admission: Admission {
                max_connections: usize::MAX,
                max_per_ip: usize::MAX,
                trust_proxy: false,
                max_rooms: usize::MAX,
                max_room_members: usize::MAX,
                rate: RateLimit {
                    per_second: u32::MAX,
                    burst: u32::MAX,
                    close_after: u64::MAX,
                },
            },
            auth: None,
            origins: OriginPolicy::default(),
        }
    }

    /// Checks the origin and the token of an upgrade request at
    /// `unix_secs`. Returns the token's identity, if auth is on.
    ///
    /// # Errors
    ///
    /// The first check that failed.
    pub fn check(&self, req: &Request<'_>, unix_secs: u64) -> Result<Option<Identity>, Denied> {
        self.origins
            .check(req.header("origin"))
            .map_err(Denied::Origin)?;
        match &self.auth {
            None => Ok(None),
            Some(v) => v
                .check_request(req, unix_secs)
                .map(Some)
                .map_err(Denied::Auth),
        }
    }

    /// The address `req` comes from, arriving over TCP from `peer`.
    pub fn client_ip(&self, req: &Request<'_>, peer: IpAddr) -> IpAddr {
        limits::client_ip(
            peer,
            req.header("x-forwarded-for"),
            self.admission.trust_proxy,
        )
    }
}

/// Why the gate refused an upgrade.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Denied {
    /// 403: the origin is not allowed.
    Origin(OriginError),
    /// 401: the token is missing or invalid.
    Auth(AuthError),
    /// 503: `--max-connections` reached.
    Full,
    /// 429: `--max-connections-per-ip` reached for this address.
    PerIp,
}

impl Denied {
    /// The status code.
    pub const fn status(self) -> u16 {
        match self {
            Denied::Origin(_) => 403,
            Denied::Auth(_) => 401,
            Denied::Full => 503,
            Denied::PerIp => 429,
        }
    }

    /// The one-line body.
    pub const fn reason(self) -> &'static str {
        match self {
            Denied::Origin(e) => e.reason(),
            Denied::Auth(e) => e.reason(),
            Denied::Full => "server at its connection limit; retry later",
            Denied::PerIp => "too many connections from this address",
        }
    }

    /// The handshake-failure label it is counted under.
    pub const fn refusal(self) -> Refusal {
        match self {
            Denied::Origin(_) => Refusal::Origin,
            Denied::Auth(_) => Refusal::Auth,
            Denied::Full | Denied::PerIp => Refusal::Limit,
        }
    }

    /// Writes the whole response.
    pub fn write(self, out: &mut Vec<u8>) {
        let headers: &[(&str, &str)] = match self {
            // RFC 6750 3: a 401 for a bearer token names the scheme.
            Denied::Auth(_) => &[("WWW-Authenticate", "Bearer")],
            // RFC 9110 15.6.4 and RFC 6585 4: say when to come back.
            Denied::Full | Denied::PerIp => &[("Retry-After", limits::RETRY_AFTER_SECS)],
            Denied::Origin(_) => &[],
        };
        let body = format!("{}\n", self.reason());
        http::write_response(
            out,
            self.status(),
            "text/plain; charset=utf-8",
            headers,
            body.as_bytes(),
        );
    }
}
