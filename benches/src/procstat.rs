//! What the server process costs, read from `/proc`.

use std::fs;
use std::io;

/// Linux reports `/proc/PID/stat` times in USER_HZ, which is 100 on every
/// architecture the kernel supports today (it is fixed by the ABI, unlike
/// the kernel's internal HZ).
const USER_HZ: f64 = 100.0;

/// The server process being measured.
#[derive(Debug, Clone, Copy)]
pub struct Server {
    pid: u32,
}

impl Server {
    /// The process `pid`.
    pub fn new(pid: u32) -> Self {
        Server { pid }
    }

    /// User plus system CPU time of all its threads so far, in seconds.
    ///
    /// # Errors
    ///
    /// When the process is gone or its stat line cannot be read.
    pub fn cpu_seconds(&self) -> io::Result<f64> {
        let stat = fs::read_to_string(format!("/proc/{}/stat", self.pid))?;
        // The command name is in parentheses and may hold spaces; fields
        // are counted from the last ')'. utime and stime are fields 14 and
        // 15 of proc(5), so the 12th and 13th after the name.
        let after = stat
            .rfind(')')
            .map(|i| &stat[i + 1..])
            .ok_or_else(|| io::Error::other("malformed stat"))?;
        let mut fields = after.split_whitespace().skip(11);
        let mut next = || -> io::Result<f64> {
            fields
                .next()
                .and_then(|f| f.parse::<u64>().ok())
                .map(|ticks| ticks as f64 / USER_HZ)
                .ok_or_else(|| io::Error::other("malformed stat"))
        };
        Ok(next()? + next()?)
    }

    /// The resident set size, in bytes (`VmRSS` of `/proc/PID/status`).
    ///
    /// # Errors
    ///
    /// When the process is gone or reports no `VmRSS`.
    pub fn rss_bytes(&self) -> io::Result<u64> {
        self.status_kib("VmRSS:").map(|kib| kib * 1024)
    }

    /// The anonymous part of the resident set (`RssAnon`): heap and stacks,
    /// without the pages of the executable and libraries, which a server
    /// touches more of as it runs more code, whatever its connections.
    ///
    /// # Errors
    ///
    /// When the process is gone or reports no `RssAnon`.
    pub fn rss_anon_bytes(&self) -> io::Result<u64> {
        self.status_kib("RssAnon:").map(|kib| kib * 1024)
    }

    fn status_kib(&self, field: &str) -> io::Result<u64> {
        let status = fs::read_to_string(format!("/proc/{}/status", self.pid))?;
        status
            .lines()
            .find_map(|l| l.strip_prefix(field))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .ok_or_else(|| io::Error::other(format!("no {field} in status")))
    }
}
