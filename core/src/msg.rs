//! Message headers and a builder that stamps and signs outgoing messages.
//!
//! Every process has one Session-like [`MessageBuilder`]: a session id (for engines, the engine
//! uuid), a user name and a counter. msg_ids take jupyter_client's `<session>_<pid>_<n>` form.
//! A reply reuses the request's raw header bytes as its parent, unchanged.

use crate::ids::{new_id, now_iso, username};
use crate::wire::{Signer, WireMessage};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::sync::atomic::{AtomicU64, Ordering};

/// The protocol version every message claims (jupyter_client 8.x sends "5.4").
pub const PROTOCOL_VERSION: &str = "5.4";

/// A message header. Unknown fields are kept in `extra` so headers round-trip.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct Header {
    #[serde(default)]
    pub msg_id: String,
    #[serde(default)]
    pub msg_type: String,
    #[serde(default)]
    pub username: String,
    #[serde(default)]
    pub session: String,
    #[serde(default)]
    pub date: String,
    #[serde(default)]
    pub version: String,
    #[serde(flatten)]
    pub extra: serde_json::Map<String, Value>,
}

impl Header {
    /// Parse a header frame once into the typed header and its JSON value (a task record keeps
    /// the value as the client sent it).
    pub fn parse_with_value(bytes: &[u8]) -> Result<(Header, Value), crate::WireError> {
        let bad = |e: serde_json::Error| crate::WireError::BadJson {
            part: "header",
            err: e.to_string(),
        };
        let value: Value = serde_json::from_slice(bytes).map_err(bad)?;
        let header = Header::deserialize(&value).map_err(bad)?;
        Ok((header, value))
    }

    pub fn parse(bytes: &[u8]) -> Result<Header, crate::WireError> {
        serde_json::from_slice(bytes).map_err(|e| crate::WireError::BadJson {
            part: "header",
            err: e.to_string(),
        })
    }
}

/// `msg_id` of a raw header (or parent header) frame: a non-empty string, or `None` (no such
/// field, not a string, empty, or the frame is not a JSON object).
///
/// Cheaper than parsing the whole frame: other fields are skipped, not built.
pub fn msg_id_of(raw: &[u8]) -> Option<String> {
    #[derive(Deserialize)]
    struct Only<'a> {
        #[serde(borrow, default)]
        msg_id: Option<std::borrow::Cow<'a, str>>,
    }
    let id = match serde_json::from_slice::<Only>(raw) {
        Ok(o) => o.msg_id.map(|c| c.into_owned()),
        // a non-string msg_id, a duplicate key, not an object: let the general parser decide
        Err(_) => match serde_json::from_slice::<Value>(raw).ok()?.get("msg_id")? {
            Value::String(s) => Some(s.clone()),
            _ => None,
        },
    }?;
    (!id.is_empty()).then_some(id)
}

/// Parse a JSON frame into `T` (a struct listing the few fields a caller reads), skipping the
/// rest of the frame without building it. `None` when `T` does not fit; callers then fall back
/// to a full [`Value`] parse so that odd frames (duplicate keys, wrong types) behave as before.
pub fn parse_fields<'a, T: Deserialize<'a>>(raw: &'a [u8]) -> Option<T> {
    serde_json::from_slice(raw).ok()
}

/// Deserialize a field as `Some(value)`, keeping an explicit JSON `null` as `Some(Value::Null)`
/// (serde's default maps `null` to `None`). For `#[serde(default, deserialize_with = ...)]`.
pub fn keep_null<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Value>, D::Error> {
    Value::deserialize(d).map(Some)
}

/// Builds signed messages on behalf of one session.
#[derive(Debug)]
pub struct MessageBuilder {
    session: String,
    username: String,
    pid: u32,
    counter: AtomicU64,
}

impl MessageBuilder {
    /// A builder with a fresh random session id.
    pub fn new() -> Self {
        Self::with_session(new_id())
    }

    /// A builder for a given session id (engines: the engine uuid).
    pub fn with_session(session: String) -> Self {
        MessageBuilder {
            session,
            username: username(),
            pid: std::process::id(),
            counter: AtomicU64::new(0),
        }
    }

    pub fn session(&self) -> &str {
        &self.session
    }

    /// A fresh msg_id: `<session>_<pid>_<n>`.
    pub fn next_msg_id(&self) -> String {
        let n = self.counter.fetch_add(1, Ordering::Relaxed);
        format!("{}_{}_{}", self.session, self.pid, n)
    }

    /// A header for a new message of `msg_type`, serialized.
    pub fn header_bytes(&self, msg_type: &str) -> Vec<u8> {
        self.header_bytes_with_id(msg_type, &self.next_msg_id())
    }

    /// A header with a given msg_id (broadcast derives ids from the original).
    pub fn header_bytes_with_id(&self, msg_type: &str, msg_id: &str) -> Vec<u8> {
        let h = Header {
            msg_id: msg_id.to_string(),
            msg_type: msg_type.to_string(),
            username: self.username.clone(),
            session: self.session.clone(),
            date: now_iso(),
            version: PROTOCOL_VERSION.to_string(),
            extra: Default::default(),
        };
        serde_json::to_vec(&h).unwrap_or_default()
    }

    /// Build and sign a message. `parent` is the raw parent header (`b"{}"` for none).
    /// The arguments are exactly the parts of a message (as jupyter_client's `Session.send`).
    #[allow(clippy::too_many_arguments)]
    pub fn build(
        &self,
        signer: &Signer,
        idents: Vec<Vec<u8>>,
        msg_type: &str,
        parent: &[u8],
        metadata: &Value,
        content: &Value,
        buffers: Vec<Vec<u8>>,
    ) -> WireMessage {
        let mut m = WireMessage {
            idents,
            signature: Vec::new(),
            header: self.header_bytes(msg_type),
            parent: if parent.is_empty() {
                b"{}".to_vec()
            } else {
                parent.to_vec()
            },
            metadata: serde_json::to_vec(metadata).unwrap_or_else(|_| b"{}".to_vec()),
            content: serde_json::to_vec(content).unwrap_or_else(|_| b"{}".to_vec()),
            buffers,
        };
        signer.sign_message(&mut m);
        m
    }
}

impl Default for MessageBuilder {
    fn default() -> Self {
        Self::new()
    }
}

/// The exception classes of `ipyparallel.error`, named with their module in tracebacks.
const IPP_ERRORS: &[&str] = &[
    "InvalidDependency",
    "ImpossibleDependency",
    "DependencyTimeout",
    "UnmetDependency",
    "TaskTimeout",
    "TaskAborted",
    "TaskRejected",
    "EngineError",
    "NoEnginesRegistered",
];

/// An error reply's content in the shape of ipyparallel's `error.wrap_exception()`: `status`,
/// `ename`, `evalue`, `traceback` (lines ending in a newline, as `traceback.format_exception`
/// gives them; the client joins them) and `engine_info`. An empty `engine_info` (`{}`) tells the
/// client not to wait for output of the task from any engine. `raised_by` names the part of
/// rpar that raised it, in the traceback.
pub fn error_content(ename: &str, evalue: &str, raised_by: &str, engine_info: Value) -> Value {
    let module = if IPP_ERRORS.contains(&ename) {
        "ipyparallel.error."
    } else {
        ""
    };
    let last = if evalue.is_empty() {
        format!("{module}{ename}\n")
    } else {
        format!("{module}{ename}: {evalue}\n")
    };
    serde_json::json!({
        "status": "error",
        "ename": ename,
        "evalue": evalue,
        "traceback": [
            "Traceback (most recent call last):\n",
            format!("  raised by {raised_by}\n"),
            last,
        ],
        "engine_info": engine_info,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_content_is_wrap_exception_shaped() {
        let c = error_content(
            "TaskTimeout",
            "waited 1s",
            "the scheduler",
            serde_json::json!({}),
        );
        assert_eq!(c["status"], "error");
        assert_eq!(c["ename"], "TaskTimeout");
        assert_eq!(c["evalue"], "waited 1s");
        assert_eq!(c["engine_info"], serde_json::json!({}));
        let tb: Vec<&str> = c["traceback"]
            .as_array()
            .unwrap()
            .iter()
            .map(|l| l.as_str().unwrap())
            .collect();
        assert_eq!(tb[1], "  raised by the scheduler\n");
        assert_eq!(tb[2], "ipyparallel.error.TaskTimeout: waited 1s\n");
        let k = error_content("KeyError", "'x'", "rpar-controller", serde_json::json!({}));
        assert_eq!(k["traceback"][2], "KeyError: 'x'\n");
    }
    use serde_json::json;

    #[test]
    fn build_signs_and_stamps() {
        let b = MessageBuilder::with_session("sess".into());
        let mut signer = Signer::new(b"k");
        let m = b.build(
            &signer,
            vec![b"id".to_vec()],
            "connection_reply",
            b"{}",
            &json!({}),
            &json!({"status": "ok"}),
            vec![],
        );
        let h = Header::parse(&m.header).unwrap();
        assert_eq!(h.msg_type, "connection_reply");
        assert_eq!(h.session, "sess");
        assert_eq!(h.version, "5.4");
        assert!(h.msg_id.starts_with("sess_"));
        assert!(h.date.ends_with('Z'));
        signer.verify(&m).unwrap();
        assert_ne!(b.next_msg_id(), b.next_msg_id());
    }

    #[test]
    fn msg_id_of_reads_only_a_string_id() {
        assert_eq!(
            msg_id_of(br#"{"a":{"b":[1,2]},"msg_id":"x1","c":null}"#).as_deref(),
            Some("x1")
        );
        assert_eq!(msg_id_of(br#"{"msg_id":"a\u0041"}"#).as_deref(), Some("aA"));
        assert_eq!(msg_id_of(br#"{"msg_id":""}"#), None);
        assert_eq!(msg_id_of(br#"{"msg_id":3}"#), None);
        assert_eq!(
            msg_id_of(br#"{"msg_id":"a","msg_id":"b"}"#).as_deref(),
            Some("b")
        );
        assert_eq!(msg_id_of(b"[]"), None);
        assert_eq!(msg_id_of(b"{nope"), None);
        assert_eq!(msg_id_of(b""), None);
    }

    #[test]
    fn parse_with_value_gives_both_views() {
        let raw = br#"{"msg_id":"m","msg_type":"apply_request","session":"s","date":"d","x":1}"#;
        let (h, v) = Header::parse_with_value(raw).unwrap();
        assert_eq!((h.msg_id.as_str(), h.session.as_str()), ("m", "s"));
        assert_eq!(v["x"], 1);
        assert!(Header::parse_with_value(br#"{"msg_id": 5}"#).is_err());
        assert!(Header::parse_with_value(b"[1]").is_err());
    }

    #[test]
    fn header_keeps_unknown_fields() {
        let raw = br#"{"msg_id":"m","msg_type":"t","username":"u","session":"s","date":"d","version":"5.4","subshell_id":null}"#;
        let h = Header::parse(raw).unwrap();
        assert!(h.extra.contains_key("subshell_id"));
    }
}
