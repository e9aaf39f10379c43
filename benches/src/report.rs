//! The measured window of a run, and how results are printed.

use std::fmt::Write as _;
use std::io;
use std::time::{Duration, Instant};

use crate::procstat::Server;

/// A warm-up, then the measured window: counts and the server's CPU time
/// are taken at both ends of the window.
pub struct Window {
    warmup: Duration,
    duration: Duration,
    server: Option<Server>,
    started: Instant,
    /// Count, time and server CPU when the measured window opened.
    opened: Option<(u64, Instant, Option<f64>)>,
    /// Server CPU at [`Window::begin`], for runs that end before the
    /// warm-up does (fixed-count runs).
    begun_cpu: Option<f64>,
}

/// What the measured window saw.
pub struct Measured {
    /// Events (messages, deliveries, handshakes) in the window.
    pub count: u64,
    /// Length of the window, seconds.
    pub secs: f64,
    /// Server CPU seconds spent in the window, when a server PID was given.
    pub cpu: Option<f64>,
}

impl Window {
    /// A window of `duration` after `warmup`, charging `server`'s CPU.
    pub fn new(warmup: Duration, duration: Duration, server: Option<Server>) -> Self {
        Window {
            warmup,
            duration,
            server,
            started: Instant::now(),
            opened: None,
            begun_cpu: None,
        }
    }

    /// The server being measured, if any.
    pub fn server(&self) -> Option<Server> {
        self.server
    }

    /// Starts the clock: the warm-up begins now.
    ///
    /// # Errors
    ///
    /// When the server's CPU time cannot be read.
    pub fn begin(&mut self) -> io::Result<()> {
        self.begun_cpu = self.server.map(|s| s.cpu_seconds()).transpose()?;
        self.started = Instant::now();
        self.opened = None;
        Ok(())
    }

    /// Called often with the running count; opens the window when the
    /// warm-up ends and returns true once the window is over.
    ///
    /// # Errors
    ///
    /// When the server's CPU time cannot be read.
    pub fn tick(&mut self, count: u64) -> io::Result<bool> {
        let elapsed = self.started.elapsed();
        if self.opened.is_none() && elapsed >= self.warmup {
            let cpu = self.server.map(|s| s.cpu_seconds()).transpose()?;
            self.opened = Some((count, Instant::now(), cpu));
        }
        Ok(elapsed >= self.warmup + self.duration)
    }

    /// Whether the measured window is open.
    pub fn measuring(&self) -> bool {
        self.opened.is_some()
    }

    /// Closes the window.
    ///
    /// # Errors
    ///
    /// When the server's CPU time cannot be read.
    pub fn finish(&mut self, count: u64) -> io::Result<Measured> {
        let cpu_end = self.server.map(|s| s.cpu_seconds()).transpose()?;
        // A run that ended before its warm-up did is measured whole.
        let (count0, t0, cpu0) = self.opened.unwrap_or((0, self.started, self.begun_cpu));
        Ok(Measured {
            count: count - count0,
            secs: t0.elapsed().as_secs_f64(),
            cpu: cpu_end.zip(cpu0).map(|(b, a)| b - a),
        })
    }
}

impl Measured {
    /// Events per second.
    pub fn rate(&self) -> f64 {
        self.count as f64 / self.secs
    }

    /// Adds the server's CPU figures: seconds, share of one core, and
    /// microseconds per `unit`.
    pub fn cpu_fields(&self, r: &mut Report, unit: &str) {
        r.field("count", self.count as f64);
        r.field("seconds", self.secs);
        if let Some(cpu) = self.cpu {
            r.field("server_cpu_s", cpu);
            r.field("server_core_share", cpu / self.secs);
            r.field(
                &format!("cpu_us_per_{unit}"),
                cpu * 1e6 / self.count.max(1) as f64,
            );
        } else {
            r.note("no --server-pid: server CPU not measured");
        }
    }
}

/// Named figures of one run, printed for people and as one `RESULT` line
/// for scripts.
pub struct Report {
    mode: &'static str,
    fields: Vec<(String, f64)>,
    notes: Vec<String>,
}

impl Report {
    /// An empty report for `mode`.
    pub fn new(mode: &'static str) -> Self {
        Report {
            mode,
            fields: Vec::new(),
            notes: Vec::new(),
        }
    }

    /// Adds a figure.
    pub fn field(&mut self, name: &str, value: f64) {
        self.fields.push((name.to_owned(), value));
    }

    /// Adds a remark printed with the figures.
    pub fn note(&mut self, text: &str) {
        self.notes.push(text.to_owned());
    }

    /// The report as text: one figure per line, then the `RESULT` line.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(out, "mode: {}", self.mode);
        for (name, value) in &self.fields {
            let _ = writeln!(out, "  {name:<20} {}", human(*value));
        }
        for note in &self.notes {
            let _ = writeln!(out, "  note: {note}");
        }
        let _ = write!(out, "RESULT mode={}", self.mode);
        for (name, value) in &self.fields {
            let _ = write!(out, " {name}={value}");
        }
        out
    }
}

fn human(v: f64) -> String {
    if v == v.trunc() && v.abs() < 1e15 {
        format!("{v:.0}")
    } else if v.abs() >= 100.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.3}")
    }
}
