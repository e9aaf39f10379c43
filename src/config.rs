//! Command-line flags and their environment variables.

use std::time::Duration;

use std::ffi::OsString;

use clap::builder::BoolishValueParser;
use clap::{Command, CommandFactory, FromArgMatches, Parser};

use crate::auth::Verifier;
use crate::backplane::Settings;
use crate::cloudrun::Deployment;
use crate::conn::Limits;
use crate::gate::Policy;
use crate::limits::{Admission, RateLimit};
use crate::log::Level;
use crate::origin::OriginPolicy;

/// roomcast: a WebSocket chat-room server.
///
/// Every flag can also be set through the environment variable shown.
#[derive(Debug, Clone, Parser)]
#[command(name = "roomcast", version, about, long_about = None)]
pub struct Config {
    /// Address to listen on.
    #[arg(long, env = "HOST", default_value = "0.0.0.0")]
    pub host: String,

    /// Port to listen on (0 picks a free one, logged at start).
    #[arg(long, env = "PORT", default_value_t = 8080)]
    pub port: u16,

    /// Name of this instance, sent to clients and in the health report
    /// (Cloud Run sets K_REVISION).
    #[arg(long, env = "K_REVISION", default_value = "local")]
    pub instance_id: String,

    /// Largest chat message accepted, in bytes; larger ones close with 1009.
    #[arg(long, env = "MAX_MESSAGE_SIZE", default_value_t = 1 << 20, value_parser = positive)]
    pub max_message_size: usize,

    /// Largest message accepted on /echo, in bytes.
    #[arg(long, env = "ECHO_MAX_MESSAGE_SIZE", default_value_t = 16 << 20, value_parser = positive)]
    pub echo_max_message_size: usize,

    /// Unsent bytes a connection may have queued before it is closed with
    /// 1008 (it is not reading what it is sent).
    #[arg(long, env = "MAX_QUEUED_BYTES", default_value_t = 4 << 20, value_parser = positive)]
    pub max_queued_bytes: usize,

    /// How often to ping each client; one silent for two intervals is
    /// dropped.
    #[arg(long, env = "PING_INTERVAL", default_value = "30s", value_parser = duration)]
    pub ping_interval: Duration,

    /// Time a client has to complete its upgrade request.
    #[arg(long, env = "HANDSHAKE_TIMEOUT", default_value = "10s", value_parser = duration)]
    pub handshake_timeout: Duration,

    /// Time a peer has to answer a close frame and close TCP.
    #[arg(long, env = "CLOSE_TIMEOUT", default_value = "5s", value_parser = duration)]
    pub close_timeout: Duration,

    /// On SIGTERM, how long to wait for clients to close before exiting
    /// (Cloud Run sends SIGKILL 10 s after SIGTERM).
    #[arg(long, env = "DRAIN_TIMEOUT", default_value = "8s", value_parser = duration)]
    pub drain_timeout: Duration,

    /// Age at which a WebSocket is asked to reconnect and closed with 1001;
    /// each connection's age is spread by up to 10 % either way. The default
    /// plus 10 % stays under Cloud Run's longest request timeout, 60m.
    #[arg(long, env = "MAX_CONNECTION_AGE", default_value = "54m", value_parser = duration)]
    pub max_connection_age: Duration,

    /// Cloud Run service name, shown in the health report and the start-up
    /// log line.
    #[arg(long, env = "K_SERVICE")]
    pub service: Option<String>,

    /// Cloud Run revision name, shown in the health report and the start-up
    /// log line.
    #[arg(long, env = "K_REVISION")]
    pub revision: Option<String>,

    /// Cloud Run configuration name, shown in the health report and the
    /// start-up log line.
    #[arg(long, env = "K_CONFIGURATION")]
    pub configuration: Option<String>,

    /// Google Cloud project: a connection whose upgrade request carried
    /// X-Cloud-Trace-Context logs its trace as projects/ID/traces/TRACE.
    #[arg(long, env = "GOOGLE_CLOUD_PROJECT")]
    pub project_id: Option<String>,

    /// Redis URL (redis://[:password@]host[:port][/db]) through which
    /// instances share rooms; unset, this instance serves its rooms alone.
    #[arg(long, env = "REDIS_URL")]
    pub redis_url: Option<String>,

    /// With --redis-url: how long an instance's members outlive its last
    /// heartbeat in Redis before the other instances announce them as left.
    #[arg(long, env = "PRESENCE_EXPIRY", default_value = "30s", value_parser = duration)]
    pub presence_expiry: Duration,

    /// Lowest log level written: debug, info, warning or error.
    #[arg(long, env = "LOG_LEVEL", default_value = "info", value_parser = level)]
    pub log_level: Level,

    /// Connections held at once, handshakes included; more are answered
    /// 503 (the open-file limit must allow this many sockets).
    #[arg(long, env = "MAX_CONNECTIONS", default_value_t = 10_000, value_parser = positive)]
    pub max_connections: usize,

    /// Open WebSockets from one client address; more are answered 429.
    #[arg(long, env = "MAX_CONNECTIONS_PER_IP", default_value_t = 256, value_parser = positive)]
    pub max_connections_per_ip: usize,

    /// Take the client address from the right-most X-Forwarded-For entry,
    /// the one the proxy in front (Cloud Run's) appended.
    #[arg(long, env = "TRUST_PROXY", value_parser = BoolishValueParser::new())]
    pub trust_proxy: bool,

    /// Rooms at once; a join that would create another gets an error.
    #[arg(long, env = "MAX_ROOMS", default_value_t = 10_000, value_parser = positive)]
    pub max_rooms: usize,

    /// Members of one room; joins beyond get an error.
    #[arg(long, env = "MAX_ROOM_MEMBERS", default_value_t = 1_000, value_parser = positive)]
    pub max_room_members: usize,

    /// Chat messages per second a connection may send on average.
    #[arg(long, env = "RATE_LIMIT", default_value_t = 20, value_parser = positive_u32)]
    pub rate_limit: u32,

    /// Chat messages a connection may send back to back.
    #[arg(long, env = "RATE_BURST", default_value_t = 40, value_parser = positive_u32)]
    pub rate_burst: u32,

    /// A client over the rate limit, without a 1 s pause, this long is
    /// closed with 1008.
    #[arg(long, env = "RATE_LIMIT_CLOSE_AFTER", default_value = "10s", value_parser = duration)]
    pub rate_limit_close_after: Duration,

    /// Require an HS256 JWT signed with this secret on every upgrade
    /// (Authorization: Bearer, or a token query parameter).
    #[arg(long, env = "AUTH_SECRET", hide_env_values = true, value_parser = secret)]
    pub auth_secret: Option<String>,

    /// Origins allowed to connect, comma-separated:
    /// https://chat.example.com, https://*.example.com, *.example.com.
    /// Unset: any.
    #[arg(long, env = "ALLOWED_ORIGINS", value_delimiter = ',', value_parser = origin)]
    pub allowed_origins: Vec<String>,

    /// Refuse upgrades that carry no Origin header (non-browser clients).
    #[arg(long, env = "REQUIRE_ORIGIN", value_parser = BoolishValueParser::new())]
    pub require_origin: bool,
}

impl Config {
    /// The flags in `std::env::args` and the environment; on an error or
    /// `--help`, prints clap's message and exits. See [`Config::try_load_from`].
    pub fn load() -> Config {
        Config::try_load_from(std::env::args_os()).unwrap_or_else(|e| e.exit())
    }

    /// The flags in `args` (the program's name first) and the environment.
    /// An environment variable set to the empty string counts as unset, so
    /// the default applies: deployment tools often write `NAME=` for a
    /// setting they leave out, and an empty `AUTH_SECRET`, `REDIS_URL` or
    /// `ALLOWED_ORIGINS` would otherwise stop the start, and an empty
    /// number or duration fail to parse. An empty value given as a flag
    /// is still taken as written (and `--auth-secret ""` refused).
    ///
    /// # Errors
    ///
    /// clap's error for a flag or variable that does not parse.
    pub fn try_load_from<I, T>(args: I) -> Result<Config, clap::Error>
    where
        I: IntoIterator<Item = T>,
        T: Into<OsString> + Clone,
    {
        let mut cmd = command_without_empty_env();
        let matches = cmd.try_get_matches_from_mut(args)?;
        Config::from_arg_matches(&matches).map_err(|e| e.format(&mut cmd))
    }

    /// The backplane's settings, when a Redis URL is configured.
    pub fn backplane(&self) -> Option<Settings> {
        Some(Settings {
            url: self.redis_url.clone()?,
            expiry: self.presence_expiry,
            instance_id: self.instance_id.clone(),
        })
    }

    /// The limits the connection layer enforces, in bytes and milliseconds.
    pub fn limits(&self) -> Limits {
        Limits {
            max_message: self.max_message_size,
            echo_max_message: self.echo_max_message_size,
            max_queued: self.max_queued_bytes,
            handshake_timeout: millis(self.handshake_timeout),
            close_timeout: millis(self.close_timeout),
            ping_interval: millis(self.ping_interval),
            max_age: millis(self.max_connection_age),
        }
    }

    /// Where the server runs, as the flags and environment say.
    pub fn deployment(&self) -> Deployment {
        let name = |s: &Option<String>| s.as_deref().filter(|s| !s.is_empty()).map(Box::from);
        Deployment {
            service: name(&self.service),
            revision: name(&self.revision),
            configuration: name(&self.configuration),
            project_id: name(&self.project_id),
        }
    }
}

impl Config {
    /// Who may connect, and how much each may do.
    pub fn policy(&self) -> Policy {
        Policy {
            admission: Admission {
                max_connections: self.max_connections,
                max_per_ip: self.max_connections_per_ip,
                trust_proxy: self.trust_proxy,
                max_rooms: self.max_rooms,
                max_room_members: self.max_room_members,
                rate: RateLimit {
                    per_second: self.rate_limit,
                    burst: self.rate_burst,
                    close_after: millis(self.rate_limit_close_after),
                },
            },
            auth: self
                .auth_secret
                .as_ref()
                .map(|s| Verifier::new(s.as_bytes())),
            origins: OriginPolicy::new(&self.allowed_origins, self.require_origin)
                .expect("each entry was checked as it was parsed"),
        }
    }
}

/// The command line parser, with the environment variables that are set
/// but empty no longer read.
fn command_without_empty_env() -> Command {
    let mut cmd = Config::command();
    let empty: Vec<clap::Id> = cmd
        .get_arguments()
        .filter(|a| {
            a.get_env()
                .and_then(std::env::var_os)
                .is_some_and(|v| v.is_empty())
        })
        .map(|a| a.get_id().clone())
        .collect();
    for id in empty {
        cmd = cmd.mut_arg(id, |a| a.env(None::<&'static str>));
    }
    cmd
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

fn positive(s: &str) -> Result<usize, String> {
    match s.parse::<usize>() {
        Ok(0) => Err("must be at least 1".into()),
        Ok(n) => Ok(n),
        Err(e) => Err(e.to_string()),
    }
}

fn positive_u32(s: &str) -> Result<u32, String> {
    positive(s).and_then(|n| u32::try_from(n).map_err(|e| e.to_string()))
}

/// An empty secret would make every token signed with an empty key valid:
/// a misconfiguration, refused at start rather than served.
fn secret(s: &str) -> Result<String, String> {
    if s.is_empty() {
        return Err("must not be empty".into());
    }
    Ok(s.to_string())
}

fn origin(s: &str) -> Result<String, String> {
    OriginPolicy::new(&[s], false).map_err(|e| e.to_string())?;
    Ok(s.to_string())
}

fn duration(s: &str) -> Result<Duration, String> {
    let d = humantime::parse_duration(s).map_err(|e| format!("{e} (try 30s or 500ms)"))?;
    if d.is_zero() {
        return Err("must be longer than zero".into());
    }
    Ok(d)
}

fn level(s: &str) -> Result<Level, String> {
    Level::parse(s).ok_or_else(|| "expected debug, info, warning or error".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every environment variable a flag reads.
    fn variables() -> Vec<OsString> {
        Config::command()
            .get_arguments()
            .filter_map(|a| a.get_env().map(ToOwned::to_owned))
            .collect()
    }

    // The only test here that touches the environment: tests of one
    // binary may run as threads of one process.
    #[test]
    fn an_empty_environment_variable_is_unset() {
        let names = variables();
        for name in &names {
            std::env::remove_var(name);
        }
        let defaults = Config::try_load_from(["roomcast"]).expect("defaults parse");
        for name in &names {
            std::env::set_var(name, "");
        }
        let all_empty = Config::try_load_from(["roomcast"]);
        // Set variables are still read, flags still win, and an empty flag
        // is still refused.
        std::env::set_var("PORT", "1234");
        std::env::set_var("MAX_ROOMS", "7");
        let some_set = Config::try_load_from(["roomcast", "--max-rooms", "9"]);
        let empty_flag = Config::try_load_from(["roomcast", "--auth-secret", ""]);
        for name in &names {
            std::env::remove_var(name);
        }

        let all_empty = all_empty.expect("empty variables count as unset");
        assert_eq!(format!("{all_empty:?}"), format!("{defaults:?}"));
        assert_eq!(all_empty.auth_secret, None);
        assert_eq!(all_empty.redis_url, None);
        assert!(all_empty.allowed_origins.is_empty());
        assert_eq!(all_empty.instance_id, "local");
        let some_set = some_set.expect("parses");
        assert_eq!((some_set.port, some_set.max_rooms), (1234, 9));
        assert!(empty_flag.is_err());
    }
}
