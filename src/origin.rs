//! Which web pages may open a WebSocket to us: the `Origin` check.
//!
//! Browsers send `Origin` on every WebSocket upgrade, and a page cannot
//! forge it; other clients usually send none and can send anything. So the
//! check keeps other sites' pages from using a visitor's browser (and its
//! cookies or network position) against us; it does not authenticate.

use std::fmt;

/// One entry of `--allowed-origins`.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Pattern {
    /// `https`, say; `None` matches any scheme.
    scheme: Option<Box<str>>,
    /// The host, lower-case; with `wildcard`, the suffix after `*.`.
    host: Box<str>,
    /// Whether the entry was `*.host`: any subdomain, not the host itself.
    wildcard: bool,
    /// The port as written, if any; `None` matches only an origin that
    /// names no port (the scheme's default).
    port: Option<Box<str>>,
}

/// The origins allowed to connect, and whether one is required.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OriginPolicy {
    patterns: Vec<Pattern>,
    require: bool,
}

/// An `--allowed-origins` entry that is not an origin or pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadPattern(pub String);

impl fmt::Display for BadPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{:?} is not an origin (try https://app.example.com or *.example.com)",
            self.0
        )
    }
}

impl std::error::Error for BadPattern {}

/// Why an upgrade's origin was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OriginError {
    /// `--require-origin` is set and the request has no `Origin`.
    Missing,
    /// The `Origin` matches no allowed pattern.
    NotAllowed,
}

impl OriginError {
    /// The body of the 403 response.
    pub const fn reason(self) -> &'static str {
        match self {
            OriginError::Missing => "an Origin header is required",
            OriginError::NotAllowed => "origin not allowed",
        }
    }
}

impl OriginPolicy {
    /// A policy from `--allowed-origins` entries, each an origin
    /// (`https://chat.example.com`, `http://localhost:3000`) or a pattern
    /// with `*.` before the host (`https://*.example.com`, `*.example.com`,
    /// any scheme). No entries allow every origin. With `require`, a
    /// request without `Origin` is refused.
    ///
    /// # Errors
    ///
    /// The first entry that is neither.
    pub fn new<S: AsRef<str>>(entries: &[S], require: bool) -> Result<Self, BadPattern> {
        let patterns = entries
            .iter()
            .map(|e| parse_pattern(e.as_ref()).ok_or_else(|| BadPattern(e.as_ref().into())))
            .collect::<Result<_, _>>()?;
        Ok(OriginPolicy { patterns, require })
    }

    /// Checks a request's `Origin` value, `None` when it has none.
    ///
    /// # Errors
    ///
    /// When the origin is missing and required, or matches no pattern.
    pub fn check(&self, origin: Option<&[u8]>) -> Result<(), OriginError> {
        let Some(origin) = origin else {
            return if self.require {
                Err(OriginError::Missing)
            } else {
                Ok(())
            };
        };
        if self.patterns.is_empty() {
            return Ok(());
        }
        // An origin that does not parse (`null` from a sandboxed page or a
        // file: URL, say) matches nothing.
        let parsed = std::str::from_utf8(origin)
            .ok()
            .and_then(|o| split_origin(o.trim()));
        let Some((scheme, host, port)) = parsed else {
            return Err(OriginError::NotAllowed);
        };
        let host = host.to_ascii_lowercase();
        let allowed = self.patterns.iter().any(|p| {
            p.scheme
                .as_deref()
                .map_or(true, |s| s.eq_ignore_ascii_case(scheme))
                && p.port.as_deref() == port
                && if p.wildcard {
                    host.strip_suffix(&*p.host)
                        .is_some_and(|sub| !sub.is_empty())
                } else {
                    *host == *p.host
                }
        });
        if allowed {
            Ok(())
        } else {
            Err(OriginError::NotAllowed)
        }
    }
}

/// RFC 6454 6.1: an origin serialises as `scheme "://" host [ ":" port ]`.
fn split_origin(s: &str) -> Option<(&str, &str, Option<&str>)> {
    let (scheme, rest) = s.split_once("://")?;
    if scheme.is_empty() {
        return None;
    }
    let (host, port) = split_host_port(rest)?;
    Some((scheme, host, port))
}

/// `host [ ":" port ]`, with no path.
fn split_host_port(s: &str) -> Option<(&str, Option<&str>)> {
    if s.is_empty() || s.contains('/') {
        return None;
    }
    // An IPv6 host is bracketed and holds colons of its own.
    let (host, port) = match s.rfind(':') {
        Some(i) if !s[i..].contains(']') => (&s[..i], Some(&s[i + 1..])),
        _ => (s, None),
    };
    let bad_port = port.is_some_and(|p| p.is_empty() || !p.bytes().all(|b| b.is_ascii_digit()));
    if host.is_empty() || bad_port {
        return None;
    }
    Some((host, port))
}

fn parse_pattern(entry: &str) -> Option<Pattern> {
    let entry = entry.trim();
    let (scheme, host, port) = match entry.split_once("://") {
        Some(_) => {
            let (s, h, p) = split_origin(entry)?;
            (Some(s), h, p)
        }
        None => {
            let (h, p) = split_host_port(entry)?;
            (None, h, p)
        }
    };
    let (wildcard, host) = match host.strip_prefix("*.") {
        Some(rest) => (true, rest),
        None => (false, host),
    };
    if host.is_empty() || host.contains('*') {
        return None;
    }
    Some(Pattern {
        scheme: scheme.map(|s| s.to_ascii_lowercase().into()),
        host: if wildcard {
            format!(".{}", host.to_ascii_lowercase()).into()
        } else {
            host.to_ascii_lowercase().into()
        },
        wildcard,
        port: port.map(Into::into),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(p: &OriginPolicy, o: &str) -> Result<(), OriginError> {
        p.check(Some(o.as_bytes()))
    }

    #[test]
    fn exact_and_subdomain_patterns() {
        let p = OriginPolicy::new(
            &[
                "https://chat.example.com",
                "*.example.org",
                "http://localhost:3000",
            ],
            false,
        )
        .unwrap();
        assert_eq!(check(&p, "https://chat.example.com"), Ok(()));
        assert_eq!(check(&p, "HTTPS://Chat.Example.COM"), Ok(()));
        assert_eq!(
            check(&p, "http://chat.example.com"),
            Err(OriginError::NotAllowed)
        );
        assert_eq!(
            check(&p, "https://chat.example.com:8443"),
            Err(OriginError::NotAllowed)
        );
        assert_eq!(check(&p, "https://evil.com"), Err(OriginError::NotAllowed));
        assert_eq!(check(&p, "https://a.example.org"), Ok(()));
        assert_eq!(check(&p, "http://a.b.example.org"), Ok(()));
        assert_eq!(
            check(&p, "https://example.org"),
            Err(OriginError::NotAllowed)
        );
        assert_eq!(
            check(&p, "https://badexample.org"),
            Err(OriginError::NotAllowed)
        );
        assert_eq!(
            check(&p, "https://example.org.evil.com"),
            Err(OriginError::NotAllowed)
        );
        assert_eq!(check(&p, "http://localhost:3000"), Ok(()));
        assert_eq!(
            check(&p, "http://localhost:3001"),
            Err(OriginError::NotAllowed)
        );
        assert_eq!(check(&p, "null"), Err(OriginError::NotAllowed));
        assert_eq!(p.check(None), Ok(()), "non-browser clients");
    }

    #[test]
    fn require_and_allow_all() {
        let p = OriginPolicy::new::<&str>(&[], true).unwrap();
        assert_eq!(p.check(None), Err(OriginError::Missing));
        assert_eq!(check(&p, "https://anything.example"), Ok(()));
        assert_eq!(OriginPolicy::default().check(None), Ok(()));
    }

    #[test]
    fn bad_entries_are_refused() {
        for bad in [
            "",
            "https://",
            "*.",
            "a*.example.com",
            "https://x/path",
            "x:port",
        ] {
            assert!(OriginPolicy::new(&[bad], false).is_err(), "{bad:?}");
        }
        assert!(OriginPolicy::new(&["https://[::1]:8080", "example.com:8080"], false).is_ok());
    }
}
