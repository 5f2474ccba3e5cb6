//! Errors of the schedulers and the `apply_reply` error content they synthesize.
//!
//! Scheduler-made failures reach the client as an `apply_reply` whose content is what
//! ipyparallel's `error.wrap_exception()` produces: `status`, `ename`, `evalue`, `traceback`
//! (a list of lines; the client joins them) and an **empty** `engine_info`. An empty
//! `engine_info` tells the client not to wait for IOPub output of the task, which never comes.
//! The client turns the content into `RemoteError(ename, evalue, ...)`; its tests match on `ename`.

use serde_json::{json, Value};
use thiserror::Error;

/// A client's request metadata that the scheduler cannot use.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum MetadataError {
    #[error("metadata `{key}` must be {expected}, got {got}")]
    WrongType {
        key: &'static str,
        expected: &'static str,
        got: &'static str,
    },
    #[error("metadata `{key}` is invalid: {why}")]
    Invalid { key: &'static str, why: String },
}

impl MetadataError {
    /// The exception name the client sees: dependency problems are `InvalidDependency`,
    /// anything else a `TypeError`/`ValueError` as Python would have raised.
    pub fn ename(&self) -> &'static str {
        match self {
            MetadataError::WrongType { key, .. } | MetadataError::Invalid { key, .. }
                if *key == "after" || *key == "follow" =>
            {
                "InvalidDependency"
            }
            MetadataError::WrongType { .. } => "TypeError",
            MetadataError::Invalid { .. } => "ValueError",
        }
    }
}

/// Why the scheduler failed a task itself; each maps to an ipyparallel exception class.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SchedFailure {
    /// Depends on itself or on an id this scheduler never saw.
    InvalidDependency(String),
    /// Can never be met (dependency failed the wrong way, follow split across engines,
    /// every allowed engine blacklisted, targets gone).
    ImpossibleDependency(String),
    /// Still waiting when its `timeout` ran out.
    TaskTimeout(String),
    /// The engine running it died (after the grace period).
    EngineError(String),
    /// Request metadata had the wrong shape.
    BadMetadata(MetadataError),
}

impl SchedFailure {
    pub fn ename(&self) -> &'static str {
        match self {
            SchedFailure::InvalidDependency(_) => "InvalidDependency",
            SchedFailure::ImpossibleDependency(_) => "ImpossibleDependency",
            SchedFailure::TaskTimeout(_) => "TaskTimeout",
            SchedFailure::EngineError(_) => "EngineError",
            SchedFailure::BadMetadata(e) => e.ename(),
        }
    }

    pub fn evalue(&self) -> String {
        match self {
            SchedFailure::InvalidDependency(s)
            | SchedFailure::ImpossibleDependency(s)
            | SchedFailure::TaskTimeout(s)
            | SchedFailure::EngineError(s) => s.clone(),
            SchedFailure::BadMetadata(e) => e.to_string(),
        }
    }

    /// The reply content, shaped like `error.wrap_exception()` with empty `engine_info`.
    pub fn content(&self) -> Value {
        error_content(self.ename(), &self.evalue())
    }
}

/// `wrap_exception()`-shaped content for an exception raised by the controller's scheduler.
pub fn error_content(ename: &str, evalue: &str) -> Value {
    rpar_core::msg::error_content(ename, evalue, "the rpar-controller scheduler", json!({}))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_shape() {
        let c = SchedFailure::TaskTimeout("waited 1s".into()).content();
        assert_eq!(c["status"], "error");
        assert_eq!(c["ename"], "TaskTimeout");
        assert_eq!(c["evalue"], "waited 1s");
        assert_eq!(c["engine_info"], json!({}));
        let tb = c["traceback"].as_array().unwrap();
        assert!(tb
            .last()
            .unwrap()
            .as_str()
            .unwrap()
            .contains("ipyparallel.error.TaskTimeout"));
    }

    #[test]
    fn metadata_error_names() {
        let e = MetadataError::WrongType {
            key: "after",
            expected: "x",
            got: "y",
        };
        assert_eq!(e.ename(), "InvalidDependency");
        let e = MetadataError::WrongType {
            key: "timeout",
            expected: "x",
            got: "y",
        };
        assert_eq!(e.ename(), "TypeError");
    }
}
