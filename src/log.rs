//! Structured logs: one JSON object per line on stdout, the format Cloud
//! Logging reads (`severity`, `message`, then any fields).
//!
//! Each line is built whole and written with one call, so lines from
//! different places never interleave. Nothing is logged per message at the
//! default level.

use std::io::Write as _;
use std::sync::atomic::{AtomicU8, Ordering};

use serde_json::{Map, Value};

use crate::clock::Timestamp;

/// How much to log.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    /// Per-connection detail.
    Debug = 0,
    /// Lifecycle events.
    Info = 1,
    /// Peer faults, degraded operation.
    Warning = 2,
    /// Our own failures.
    Error = 3,
}

impl Level {
    /// Parses `debug`, `info`, `warning` (or `warn`) and `error`, in any case.
    pub fn parse(s: &str) -> Option<Level> {
        Some(match s.to_ascii_lowercase().as_str() {
            "debug" => Level::Debug,
            "info" => Level::Info,
            "warning" | "warn" => Level::Warning,
            "error" => Level::Error,
            _ => return None,
        })
    }

    fn severity(self) -> &'static str {
        match self {
            Level::Debug => "DEBUG",
            Level::Info => "INFO",
            Level::Warning => "WARNING",
            Level::Error => "ERROR",
        }
    }
}

static THRESHOLD: AtomicU8 = AtomicU8::new(Level::Info as u8);

/// Sets the lowest level written.
pub fn set_level(level: Level) {
    THRESHOLD.store(level as u8, Ordering::Relaxed);
}

/// Whether lines at `level` are written.
pub fn enabled(level: Level) -> bool {
    level as u8 >= THRESHOLD.load(Ordering::Relaxed)
}

/// Writes one line at `level` with `message` and `fields`.
pub fn log(level: Level, message: &str, fields: &[(&str, Value)]) {
    if !enabled(level) {
        return;
    }
    let mut line = Map::new();
    line.insert("severity".into(), level.severity().into());
    line.insert("message".into(), message.into());
    line.insert("time".into(), Timestamp::now().to_string().into());
    for (k, v) in fields {
        line.insert((*k).into(), v.clone());
    }
    let mut text = Value::Object(line).to_string();
    text.push('\n');
    // A log line that cannot be written (stdout closed) is dropped: there is
    // nowhere better to report it.
    let _ = std::io::stdout().lock().write_all(text.as_bytes());
}

/// Debugging detail: odd but legal peer behaviour, protocol errors.
pub fn debug(message: &str, fields: &[(&str, Value)]) {
    log(Level::Debug, message, fields);
}

/// Lifecycle events.
pub fn info(message: &str, fields: &[(&str, Value)]) {
    log(Level::Info, message, fields);
}

/// Peer faults and degraded operation.
pub fn warning(message: &str, fields: &[(&str, Value)]) {
    log(Level::Warning, message, fields);
}

/// Our own failures.
pub fn error(message: &str, fields: &[(&str, Value)]) {
    log(Level::Error, message, fields);
}
