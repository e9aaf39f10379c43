//! Where the server runs: the names Cloud Run (and Knative) give it through
//! the environment, and the Google Cloud project its logs belong to.
//!
//! Cloud Run sets `K_SERVICE`, `K_REVISION` and `K_CONFIGURATION` in every
//! container; Cloud Logging also attaches them to each line as resource
//! labels, so they are logged once, at start, and reported by `GET /`.

use serde_json::Value;

use crate::trace::TraceContext;

/// The deployment's names, each absent when not running on Cloud Run.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Deployment {
    /// The service (`K_SERVICE`).
    pub service: Option<Box<str>>,
    /// The revision (`K_REVISION`).
    pub revision: Option<Box<str>>,
    /// The configuration that made the revision (`K_CONFIGURATION`).
    pub configuration: Option<Box<str>>,
    /// The Google Cloud project, which names traces in log lines.
    pub project_id: Option<Box<str>>,
}

impl Deployment {
    /// Log fields naming the service, revision and configuration, for those
    /// that are set.
    pub fn log_fields(&self) -> Vec<(&'static str, Value)> {
        [
            ("service", &self.service),
            ("revision", &self.revision),
            ("configuration", &self.configuration),
        ]
        .into_iter()
        .filter_map(|(k, v)| Some((k, Value::from(v.as_deref()?))))
        .collect()
    }

    /// The log fields that tie a connection's lines to `trace`, or none
    /// when no project is known: Cloud Logging needs the project in the
    /// trace's name.
    pub fn trace_fields(&self, trace: &TraceContext) -> Vec<(&'static str, Value)> {
        match &self.project_id {
            Some(project) => trace.log_fields(project).into(),
            None => Vec::new(),
        }
    }
}
