//! Cloud Trace context: the `X-Cloud-Trace-Context` request header, and the
//! log fields that tie a connection's log lines to its trace.
//!
//! Google's load balancers and Cloud Run's front end add the header to each
//! request they forward, in the form `TRACE_ID/SPAN_ID;o=OPTIONS`. Cloud
//! Logging groups lines whose `logging.googleapis.com/trace` field names the
//! same trace as `projects/PROJECT_ID/traces/TRACE_ID`.
//!
//! The header is parsed strictly: anything that is not exactly that form is
//! ignored, as if it had not been sent, so a client cannot put arbitrary
//! text in our log lines through it.

use serde_json::Value;

/// The field Cloud Logging reads the trace from.
pub const TRACE_FIELD: &str = "logging.googleapis.com/trace";
/// The field Cloud Logging reads the span from: 16 hexadecimal digits.
pub const SPAN_FIELD: &str = "logging.googleapis.com/spanId";
/// The field Cloud Logging reads the sampling decision from.
pub const SAMPLED_FIELD: &str = "logging.googleapis.com/trace_sampled";

/// A parsed `X-Cloud-Trace-Context` value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TraceContext {
    /// The trace: 128 bits, never zero.
    pub trace_id: u128,
    /// The span the request belongs to.
    pub span_id: u64,
    /// `o=1`: the request is being traced.
    pub sampled: bool,
}

impl TraceContext {
    /// Parses a header value of the form `TRACE_ID/SPAN_ID;o=OPTIONS`:
    /// TRACE_ID is 32 hexadecimal digits (not all zero), SPAN_ID a decimal
    /// number that fits in 64 bits, OPTIONS `0` or `1`. The `;o=OPTIONS`
    /// part may be left out, as Google's documentation allows; it then
    /// means "not sampled". Returns `None` for anything else.
    pub fn parse(value: &[u8]) -> Option<TraceContext> {
        let value = std::str::from_utf8(value).ok()?;
        let (trace, rest) = value.split_once('/')?;
        let (span, options) = match rest.split_once(';') {
            Some((span, options)) => (span, Some(options)),
            None => (rest, None),
        };
        if trace.len() != 32 || !trace.bytes().all(|b| b.is_ascii_hexdigit()) {
            return None;
        }
        let trace_id = u128::from_str_radix(trace, 16).ok()?;
        // W3C Trace Context 3.2.2.3: an all-zero trace id is invalid.
        if trace_id == 0 {
            return None;
        }
        // from_str accepts a leading '+', which the header does not.
        if span.is_empty() || span.len() > 20 || !span.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        let span_id = span.parse::<u64>().ok()?;
        let sampled = match options {
            None => false,
            Some("o=0") => false,
            Some("o=1") => true,
            Some(_) => return None,
        };
        Some(TraceContext {
            trace_id,
            span_id,
            sampled,
        })
    }

    /// The log fields that tie a line to this trace in `project`: the trace
    /// as Cloud Logging names it, the span in hexadecimal, and whether the
    /// request was sampled.
    pub fn log_fields(&self, project: &str) -> [(&'static str, Value); 3] {
        [
            (
                TRACE_FIELD,
                format!("projects/{project}/traces/{:032x}", self.trace_id).into(),
            ),
            (SPAN_FIELD, format!("{:016x}", self.span_id).into()),
            (SAMPLED_FIELD, self.sampled.into()),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Option<TraceContext> {
        TraceContext::parse(s.as_bytes())
    }

    #[test]
    fn the_documented_form() {
        let t = parse("105445aa7843bc8bf206b12000100000/1;o=1").unwrap();
        assert_eq!(t.trace_id, 0x105445aa7843bc8bf206b12000100000);
        assert_eq!(t.span_id, 1);
        assert!(t.sampled);
        let t = parse("105445aa7843bc8bf206b12000100000/18446744073709551615;o=0").unwrap();
        assert_eq!(t.span_id, u64::MAX);
        assert!(!t.sampled);
        let t = parse("105445AA7843BC8BF206B12000100000/7").unwrap();
        assert_eq!(t.trace_id, 0x105445aa7843bc8bf206b12000100000);
        assert!(!t.sampled);
    }

    #[test]
    fn anything_else_is_ignored() {
        for bad in [
            "",
            "/",
            "105445aa7843bc8bf206b12000100000",
            "105445aa7843bc8bf206b12000100000/",
            "105445aa7843bc8bf206b12000100000/;o=1",
            "105445aa7843bc8bf206b1200010000/1;o=1",
            "105445aa7843bc8bf206b120001000000/1;o=1",
            "105445aa7843bc8bf206b1200010000g/1;o=1",
            "00000000000000000000000000000000/1;o=1",
            "105445aa7843bc8bf206b12000100000/+1;o=1",
            "105445aa7843bc8bf206b12000100000/-1;o=1",
            "105445aa7843bc8bf206b12000100000/0x1;o=1",
            "105445aa7843bc8bf206b12000100000/18446744073709551616;o=1",
            "105445aa7843bc8bf206b12000100000/1;o=2",
            "105445aa7843bc8bf206b12000100000/1;o=",
            "105445aa7843bc8bf206b12000100000/1;",
            "105445aa7843bc8bf206b12000100000/1;o=1;x",
            "105445aa7843bc8bf206b12000100000/1 ;o=1",
            " 105445aa7843bc8bf206b12000100000/1;o=1",
            "105445aa7843bc8bf206b12000100000/1/2;o=1",
            "+05445aa7843bc8bf206b12000100000/1;o=1",
        ] {
            assert_eq!(parse(bad), None, "{bad:?}");
        }
        assert_eq!(
            TraceContext::parse(b"105445aa7843bc8bf206b12000100000/1;o=\xff"),
            None
        );
    }

    #[test]
    fn fields_in_the_form_cloud_logging_reads() {
        let t = parse("105445aa7843bc8bf206b12000100000/255;o=1").unwrap();
        let [trace, span, sampled] = t.log_fields("my-project");
        assert_eq!(
            trace,
            (
                TRACE_FIELD,
                "projects/my-project/traces/105445aa7843bc8bf206b12000100000".into()
            )
        );
        assert_eq!(span, (SPAN_FIELD, "00000000000000ff".into()));
        assert_eq!(sampled, (SAMPLED_FIELD, true.into()));
    }
}
