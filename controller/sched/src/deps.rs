//! Time (`after`) and location (`follow`) dependencies of load-balanced tasks.
//!
//! A dependency is a set of task msg_ids plus three flags (ipyparallel's `Dependency`):
//! `all` (every id must be done, or any one), `success` (successes count), `failure` (failures
//! count). Clients send either a plain list of msg_ids (all/success/!failure) or a dict
//! `{"dependencies": [...], "all": bool, "success": bool, "failure": bool}`.
//!
//! Inside the scheduler msg_ids are interned to task sequence numbers ([`TaskSeq`]) at submission,
//! so checks are integer lookups. An id the scheduler has never seen cannot be interned: the
//! caller answers `InvalidDependency` for it.

use crate::errors::MetadataError;
use serde_json::Value;

/// Interned task id: the order in which the scheduler first saw the msg_id.
pub type TaskSeq = u64;

/// How a finished task ended, as far as dependencies are concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Success,
    Failure,
}

/// A dependency as the client wrote it, msg_ids still as text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParsedDependency {
    pub ids: Vec<String>,
    pub all: bool,
    pub success: bool,
    pub failure: bool,
}

impl ParsedDependency {
    /// Parse `after`/`follow` metadata. `null`/absent/empty list mean "no dependency".
    /// A single string is accepted as a one-element list (as the Python constructor does).
    pub fn parse(key: &'static str, v: Option<&Value>) -> Result<Self, MetadataError> {
        let mut dep = ParsedDependency {
            ids: Vec::new(),
            all: true,
            success: true,
            failure: false,
        };
        let list = match v {
            None | Some(Value::Null) => return Ok(dep),
            Some(Value::Object(map)) => {
                for (flag, slot) in [
                    ("all", &mut dep.all),
                    ("success", &mut dep.success),
                    ("failure", &mut dep.failure),
                ] {
                    match map.get(flag) {
                        None | Some(Value::Null) => {}
                        Some(Value::Bool(b)) => *slot = *b,
                        Some(other) => {
                            return Err(MetadataError::WrongType {
                                key,
                                expected: "a boolean `all`/`success`/`failure`",
                                got: type_name(other),
                            })
                        }
                    }
                }
                if !dep.success && !dep.failure {
                    return Err(MetadataError::Invalid {
                        key,
                        why: "must depend on at least one of successes or failures".into(),
                    });
                }
                match map.get("dependencies") {
                    None | Some(Value::Null) => return Ok(dep),
                    Some(l) => l,
                }
            }
            Some(l) => l,
        };
        match list {
            Value::String(s) => dep.ids.push(s.clone()),
            Value::Array(items) => {
                for it in items {
                    match it {
                        Value::String(s) => dep.ids.push(s.clone()),
                        other => {
                            return Err(MetadataError::WrongType {
                                key,
                                expected: "a list of msg_id strings",
                                got: type_name(other),
                            })
                        }
                    }
                }
            }
            other => {
                return Err(MetadataError::WrongType {
                    key,
                    expected: "a list of msg_ids or a dependency dict",
                    got: type_name(other),
                })
            }
        }
        dep.ids.sort();
        dep.ids.dedup();
        Ok(dep)
    }
}

/// A dependency over interned task ids.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Dependency {
    pub ids: Vec<TaskSeq>,
    pub all: bool,
    pub success: bool,
    pub failure: bool,
}

impl Dependency {
    /// The empty (always met) dependency.
    pub fn met() -> Self {
        Dependency {
            ids: Vec::new(),
            all: true,
            success: true,
            failure: false,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }

    /// Does an outcome count towards meeting this dependency?
    pub fn counts(&self, o: Outcome) -> bool {
        match o {
            Outcome::Success => self.success,
            Outcome::Failure => self.failure,
        }
    }

    /// Met, given where each id stands (`None`: not finished, or finished in a way that does not
    /// count for this check, as decided by `status`).
    pub fn check(&self, mut status: impl FnMut(TaskSeq) -> Option<Outcome>) -> bool {
        if self.ids.is_empty() {
            return true;
        }
        let mut hit = |id| status(id).is_some_and(|o| self.counts(o));
        if self.all {
            self.ids.iter().all(|&id| hit(id))
        } else {
            self.ids.iter().any(|&id| hit(id))
        }
    }

    /// Can never be met any more: with `all`, one id finished the wrong way; with any, all did.
    pub fn unreachable(&self, mut status: impl FnMut(TaskSeq) -> Option<Outcome>) -> bool {
        if self.ids.is_empty() {
            return false;
        }
        let mut wrong = |id| status(id).is_some_and(|o| !self.counts(o));
        if self.all {
            self.ids.iter().any(|&id| wrong(id))
        } else {
            self.ids.iter().all(|&id| wrong(id))
        }
    }
}

/// A short JSON type name for error messages.
pub(crate) fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "a dict",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn st(id: TaskSeq) -> Option<Outcome> {
        // even: success, odd: failure, >= 100: not done
        if id >= 100 {
            None
        } else if id & 1 == 0 {
            Some(Outcome::Success)
        } else {
            Some(Outcome::Failure)
        }
    }

    fn dep(ids: &[u64], all: bool, success: bool, failure: bool) -> Dependency {
        Dependency {
            ids: ids.to_vec(),
            all,
            success,
            failure,
        }
    }

    #[test]
    fn check_and_unreachable_match_python_semantics() {
        // all, success only
        assert!(dep(&[0, 2], true, true, false).check(st));
        assert!(!dep(&[0, 1], true, true, false).check(st));
        assert!(dep(&[0, 1], true, true, false).unreachable(st));
        assert!(!dep(&[0, 100], true, true, false).unreachable(st));
        // any, success only
        assert!(dep(&[1, 2], false, true, false).check(st));
        assert!(!dep(&[1, 3], false, true, false).check(st));
        assert!(dep(&[1, 3], false, true, false).unreachable(st));
        assert!(!dep(&[1, 100], false, true, false).unreachable(st));
        // failure only
        assert!(dep(&[1, 3], true, false, true).check(st));
        assert!(dep(&[1, 2], true, false, true).unreachable(st));
        // both
        assert!(dep(&[1, 2], true, true, true).check(st));
        assert!(!dep(&[1, 2], true, true, true).unreachable(st));
        assert!(!dep(&[1, 100], true, true, true).check(st));
        // empty
        assert!(Dependency::met().check(st));
        assert!(!Dependency::met().unreachable(st));
    }

    #[test]
    fn parse_forms() {
        let d = ParsedDependency::parse("after", Some(&json!(["b", "a", "a"]))).unwrap();
        assert_eq!(d.ids, vec!["a", "b"]);
        assert!(d.all && d.success && !d.failure);
        let d = ParsedDependency::parse(
            "follow",
            Some(&json!({"dependencies": ["x"], "all": false, "success": false, "failure": true})),
        )
        .unwrap();
        assert_eq!(d.ids, vec!["x"]);
        assert!(!d.all && !d.success && d.failure);
        let d = ParsedDependency::parse("after", Some(&json!("single"))).unwrap();
        assert_eq!(d.ids, vec!["single"]);
        assert!(ParsedDependency::parse("after", None)
            .unwrap()
            .ids
            .is_empty());
        assert!(ParsedDependency::parse("after", Some(&Value::Null))
            .unwrap()
            .ids
            .is_empty());
    }

    #[test]
    fn parse_rejects_wrong_types() {
        assert!(ParsedDependency::parse("after", Some(&json!(5))).is_err());
        assert!(ParsedDependency::parse("after", Some(&json!([1, 2]))).is_err());
        assert!(ParsedDependency::parse(
            "after",
            Some(&json!({"dependencies": ["a"], "all": "yes"}))
        )
        .is_err());
        assert!(ParsedDependency::parse(
            "after",
            Some(&json!({"dependencies": ["a"], "success": false, "failure": false}))
        )
        .is_err());
    }
}
