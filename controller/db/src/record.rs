//! Task records: the 23 fields every backend stores (protocol §7.3), partial records used as
//! updates ("merge only the fields that are set"), and the JSON form the Python client parses.
//!
//! One type serves as both the stored record and the update patch: every field is optional,
//! `None` meaning "not set" (stored as null). Merging copies the fields that are set.

use chrono::{DateTime, Utc};
use rpar_core::ids::{iso, parse_iso};
use serde_json::{Map, Value};
use std::fmt;
use std::str::FromStr;

use crate::error::DbError;

/// What kind of value a record field holds; decides how queries compare it and how backends
/// store it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FieldKind {
    /// Plain text (ids, queue name, stdout…).
    Text,
    /// A UTC timestamp, ISO-8601 on the wire.
    Date,
    /// Any JSON value (headers, metadata, content, IOPub payloads).
    Json,
    /// A list of binary buffers.
    Buffers,
}

macro_rules! fields {
    ($( $var:ident = $name:literal : $kind:ident ),* $(,)?) => {
        /// A task record field, named as ipyparallel names it.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub enum Field { $( $var ),* }

        impl Field {
            /// Every field, in the SQLite column order of ipyparallel's schema.
            pub const ALL: &'static [Field] = &[ $( Field::$var ),* ];

            /// The field's name (also its SQLite column and Mongo key).
            pub fn name(self) -> &'static str {
                match self { $( Field::$var => $name ),* }
            }

            /// The kind of value the field holds.
            pub fn kind(self) -> FieldKind {
                match self { $( Field::$var => FieldKind::$kind ),* }
            }
        }

        impl FromStr for Field {
            type Err = DbError;
            fn from_str(s: &str) -> Result<Self, DbError> {
                match s {
                    $( $name => Ok(Field::$var), )*
                    _ => Err(DbError::UnknownKey(s.to_string())),
                }
            }
        }
    };
}

fields! {
    MsgId = "msg_id": Text,
    Header = "header": Json,
    Metadata = "metadata": Json,
    Content = "content": Json,
    Buffers = "buffers": Buffers,
    Submitted = "submitted": Date,
    ClientUuid = "client_uuid": Text,
    EngineUuid = "engine_uuid": Text,
    Started = "started": Date,
    Completed = "completed": Date,
    Resubmitted = "resubmitted": Text,
    Received = "received": Date,
    ResultHeader = "result_header": Json,
    ResultMetadata = "result_metadata": Json,
    ResultContent = "result_content": Json,
    ResultBuffers = "result_buffers": Buffers,
    Queue = "queue": Text,
    ExecuteInput = "execute_input": Text,
    ExecuteResult = "execute_result": Json,
    Error = "error": Json,
    Stdout = "stdout": Text,
    Stderr = "stderr": Text,
    Label = "label": Text,
}

impl fmt::Display for Field {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Which IOPub stream text goes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    Stdout,
    Stderr,
}

impl Stream {
    /// `content.name` of an IOPub `stream` message → stream; `None` for other names.
    pub fn from_name(name: &str) -> Option<Stream> {
        match name {
            "stdout" => Some(Stream::Stdout),
            "stderr" => Some(Stream::Stderr),
            _ => None,
        }
    }

    /// The record field the stream is kept in.
    pub fn field(self) -> Field {
        match self {
            Stream::Stdout => Field::Stdout,
            Stream::Stderr => Field::Stderr,
        }
    }
}

/// A borrowed view of one field's value, used by the query engine.
#[derive(Debug, Clone, Copy)]
pub enum FieldRef<'a> {
    Null,
    Text(&'a str),
    Date(DateTime<Utc>),
    Json(&'a Value),
    Buffers(&'a [Vec<u8>]),
}

/// One task record, or a partial record used as an update. `None` = not set / null.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TaskRecord {
    pub msg_id: Option<String>,
    pub header: Option<Value>,
    pub metadata: Option<Value>,
    pub content: Option<Value>,
    pub buffers: Option<Vec<Vec<u8>>>,
    pub submitted: Option<DateTime<Utc>>,
    pub client_uuid: Option<String>,
    pub engine_uuid: Option<String>,
    pub started: Option<DateTime<Utc>>,
    pub completed: Option<DateTime<Utc>>,
    pub resubmitted: Option<String>,
    pub received: Option<DateTime<Utc>>,
    pub result_header: Option<Value>,
    pub result_metadata: Option<Value>,
    pub result_content: Option<Value>,
    pub result_buffers: Option<Vec<Vec<u8>>>,
    pub queue: Option<String>,
    pub execute_input: Option<String>,
    pub execute_result: Option<Value>,
    pub error: Option<Value>,
    pub stdout: Option<String>,
    pub stderr: Option<String>,
    pub label: Option<String>,
}

/// A field's owned value, for generic get/set by [`Field`] (backends decoding rows).
#[derive(Debug, Clone, PartialEq)]
pub enum FieldValue {
    Text(String),
    Date(DateTime<Utc>),
    Json(Value),
    Buffers(Vec<Vec<u8>>),
}

impl TaskRecord {
    /// An empty record for `msg_id`.
    pub fn new(msg_id: impl Into<String>) -> Self {
        TaskRecord {
            msg_id: Some(msg_id.into()),
            ..Default::default()
        }
    }

    /// Copy every field that is set in `patch` over this record (stdout/stderr are replaced,
    /// not appended: see [`TaskRecord::append_stream`]).
    pub fn merge(&mut self, patch: TaskRecord) {
        macro_rules! m {
            ($($f:ident),*) => { $( if patch.$f.is_some() { self.$f = patch.$f; } )* };
        }
        m!(
            msg_id,
            header,
            metadata,
            content,
            buffers,
            submitted,
            client_uuid,
            engine_uuid,
            started,
            completed,
            resubmitted,
            received,
            result_header,
            result_metadata,
            result_content,
            result_buffers,
            queue,
            execute_input,
            execute_result,
            error,
            stdout,
            stderr,
            label
        );
    }

    /// Append IOPub stream text.
    pub fn append_stream(&mut self, stream: Stream, text: &str) {
        let slot = match stream {
            Stream::Stdout => &mut self.stdout,
            Stream::Stderr => &mut self.stderr,
        };
        slot.get_or_insert_with(String::new).push_str(text);
    }

    /// Total bytes in `buffers` and `result_buffers` (what the memory DB's size limit counts).
    pub fn buffer_bytes(&self) -> usize {
        let sum = |b: &Option<Vec<Vec<u8>>>| b.iter().flatten().map(Vec::len).sum::<usize>();
        sum(&self.buffers) + sum(&self.result_buffers)
    }

    /// Borrow a field's value. `stdout`/`stderr` read as `""` when unset, as ipyparallel's
    /// records start with empty strings there.
    pub fn get(&self, field: Field) -> FieldRef<'_> {
        fn t(v: &Option<String>) -> FieldRef<'_> {
            v.as_deref().map_or(FieldRef::Null, FieldRef::Text)
        }
        fn d(v: &Option<DateTime<Utc>>) -> FieldRef<'_> {
            v.map_or(FieldRef::Null, FieldRef::Date)
        }
        fn j(v: &Option<Value>) -> FieldRef<'_> {
            match v {
                None | Some(Value::Null) => FieldRef::Null,
                Some(v) => FieldRef::Json(v),
            }
        }
        // An empty buffer list reads as null (SQLite stores it as NULL, as ipyparallel does).
        fn b(v: &Option<Vec<Vec<u8>>>) -> FieldRef<'_> {
            match v.as_deref() {
                None | Some([]) => FieldRef::Null,
                Some(bufs) => FieldRef::Buffers(bufs),
            }
        }
        match field {
            Field::MsgId => t(&self.msg_id),
            Field::Header => j(&self.header),
            Field::Metadata => j(&self.metadata),
            Field::Content => j(&self.content),
            Field::Buffers => b(&self.buffers),
            Field::Submitted => d(&self.submitted),
            Field::ClientUuid => t(&self.client_uuid),
            Field::EngineUuid => t(&self.engine_uuid),
            Field::Started => d(&self.started),
            Field::Completed => d(&self.completed),
            Field::Resubmitted => t(&self.resubmitted),
            Field::Received => d(&self.received),
            Field::ResultHeader => j(&self.result_header),
            Field::ResultMetadata => j(&self.result_metadata),
            Field::ResultContent => j(&self.result_content),
            Field::ResultBuffers => b(&self.result_buffers),
            Field::Queue => t(&self.queue),
            Field::ExecuteInput => t(&self.execute_input),
            Field::ExecuteResult => j(&self.execute_result),
            Field::Error => j(&self.error),
            Field::Stdout => FieldRef::Text(self.stdout.as_deref().unwrap_or("")),
            Field::Stderr => FieldRef::Text(self.stderr.as_deref().unwrap_or("")),
            Field::Label => t(&self.label),
        }
    }

    /// Set (or clear, with `None`) a field from an owned value. A value of the wrong kind is an
    /// error naming the field.
    pub fn set(&mut self, field: Field, value: Option<FieldValue>) -> Result<(), DbError> {
        let bad = || DbError::BadFieldValue {
            field: field.name(),
            expected: field.kind(),
        };
        macro_rules! put {
            ($slot:expr, $variant:ident) => {
                match value {
                    None => {
                        $slot = None;
                        Ok(())
                    }
                    Some(FieldValue::$variant(v)) => {
                        $slot = Some(v);
                        Ok(())
                    }
                    Some(_) => Err(bad()),
                }
            };
        }
        match field {
            Field::MsgId => put!(self.msg_id, Text),
            Field::Header => put!(self.header, Json),
            Field::Metadata => put!(self.metadata, Json),
            Field::Content => put!(self.content, Json),
            Field::Buffers => put!(self.buffers, Buffers),
            Field::Submitted => put!(self.submitted, Date),
            Field::ClientUuid => put!(self.client_uuid, Text),
            Field::EngineUuid => put!(self.engine_uuid, Text),
            Field::Started => put!(self.started, Date),
            Field::Completed => put!(self.completed, Date),
            Field::Resubmitted => put!(self.resubmitted, Text),
            Field::Received => put!(self.received, Date),
            Field::ResultHeader => put!(self.result_header, Json),
            Field::ResultMetadata => put!(self.result_metadata, Json),
            Field::ResultContent => put!(self.result_content, Json),
            Field::ResultBuffers => put!(self.result_buffers, Buffers),
            Field::Queue => put!(self.queue, Text),
            Field::ExecuteInput => put!(self.execute_input, Text),
            Field::ExecuteResult => put!(self.execute_result, Json),
            Field::Error => put!(self.error, Json),
            Field::Stdout => put!(self.stdout, Text),
            Field::Stderr => put!(self.stderr, Text),
            Field::Label => put!(self.label, Text),
        }
    }

    /// Take a field's value out of the record (leaving it unset).
    pub fn take(&mut self, field: Field) -> Option<FieldValue> {
        match field {
            Field::MsgId => self.msg_id.take().map(FieldValue::Text),
            Field::Header => self.header.take().map(FieldValue::Json),
            Field::Metadata => self.metadata.take().map(FieldValue::Json),
            Field::Content => self.content.take().map(FieldValue::Json),
            Field::Buffers => self.buffers.take().map(FieldValue::Buffers),
            Field::Submitted => self.submitted.take().map(FieldValue::Date),
            Field::ClientUuid => self.client_uuid.take().map(FieldValue::Text),
            Field::EngineUuid => self.engine_uuid.take().map(FieldValue::Text),
            Field::Started => self.started.take().map(FieldValue::Date),
            Field::Completed => self.completed.take().map(FieldValue::Date),
            Field::Resubmitted => self.resubmitted.take().map(FieldValue::Text),
            Field::Received => self.received.take().map(FieldValue::Date),
            Field::ResultHeader => self.result_header.take().map(FieldValue::Json),
            Field::ResultMetadata => self.result_metadata.take().map(FieldValue::Json),
            Field::ResultContent => self.result_content.take().map(FieldValue::Json),
            Field::ResultBuffers => self.result_buffers.take().map(FieldValue::Buffers),
            Field::Queue => self.queue.take().map(FieldValue::Text),
            Field::ExecuteInput => self.execute_input.take().map(FieldValue::Text),
            Field::ExecuteResult => self.execute_result.take().map(FieldValue::Json),
            Field::Error => self.error.take().map(FieldValue::Json),
            Field::Stdout => self.stdout.take().map(FieldValue::Text),
            Field::Stderr => self.stderr.take().map(FieldValue::Text),
            Field::Label => self.label.take().map(FieldValue::Text),
        }
    }

    /// A copy holding only `fields` (plus `msg_id`), cloning nothing else. `None` = all fields.
    pub fn project(&self, fields: Option<&[Field]>) -> TaskRecord {
        match fields {
            None => self.clone(),
            Some(fields) => {
                let mut out = TaskRecord {
                    msg_id: self.msg_id.clone(),
                    ..Default::default()
                };
                for &f in fields {
                    // `get`/`set` would copy stdout's "" default in; clone the slot instead.
                    let v = self.clone_field(f);
                    // Cannot fail: the value comes from the same field.
                    let _ = out.set(f, v);
                }
                out
            }
        }
    }

    fn clone_field(&self, field: Field) -> Option<FieldValue> {
        match self.get(field) {
            FieldRef::Null => match field {
                Field::Buffers => self.buffers.clone().map(FieldValue::Buffers),
                Field::ResultBuffers => self.result_buffers.clone().map(FieldValue::Buffers),
                _ => None,
            },
            FieldRef::Text(s) => match field {
                Field::Stdout if self.stdout.is_none() => None,
                Field::Stderr if self.stderr.is_none() => None,
                _ => Some(FieldValue::Text(s.to_string())),
            },
            FieldRef::Date(d) => Some(FieldValue::Date(d)),
            FieldRef::Json(v) => Some(FieldValue::Json(v.clone())),
            FieldRef::Buffers(b) => Some(FieldValue::Buffers(b.to_vec())),
        }
    }

    /// The JSON the client sees for one field: dates as ISO strings with `Z`, unset as null,
    /// stdout/stderr as `""` when unset. Buffers have no JSON form (they travel as frames) and
    /// render as null.
    pub fn field_json(&self, field: Field) -> Value {
        match self.get(field) {
            FieldRef::Null => Value::Null,
            FieldRef::Text(s) => Value::String(s.to_string()),
            FieldRef::Date(d) => Value::String(iso(d)),
            FieldRef::Json(v) => v.clone(),
            FieldRef::Buffers(_) => Value::Null,
        }
    }

    /// The record as a JSON object with the given keys (msg_id first, always), or every field
    /// except the two buffer lists when `keys` is `None`.
    pub fn to_json(&self, keys: Option<&[Field]>) -> Value {
        let mut m = Map::new();
        m.insert("msg_id".into(), self.field_json(Field::MsgId));
        match keys {
            None => {
                for &f in Field::ALL {
                    if !matches!(f.kind(), FieldKind::Buffers) && f != Field::MsgId {
                        m.insert(f.name().into(), self.field_json(f));
                    }
                }
            }
            Some(keys) => {
                for &f in keys {
                    if !matches!(f.kind(), FieldKind::Buffers) && f != Field::MsgId {
                        m.insert(f.name().into(), self.field_json(f));
                    }
                }
            }
        }
        Value::Object(m)
    }

    /// Build a (partial) record from a JSON object keyed by field names: dates as ISO strings,
    /// buffers are not accepted here. Unknown keys are an error. Meant for tests and tools.
    pub fn from_json(v: &Value) -> Result<TaskRecord, DbError> {
        let obj = v
            .as_object()
            .ok_or(DbError::BadRecord("not a JSON object"))?;
        let mut rec = TaskRecord::default();
        for (k, v) in obj {
            let f: Field = k.parse()?;
            let bad = || DbError::BadFieldValue {
                field: f.name(),
                expected: f.kind(),
            };
            let value = match (f.kind(), v) {
                (_, Value::Null) => None,
                (FieldKind::Text, Value::String(s)) => Some(FieldValue::Text(s.clone())),
                (FieldKind::Date, Value::String(s)) => {
                    Some(FieldValue::Date(parse_iso(s).ok_or_else(bad)?))
                }
                (FieldKind::Json, v) => Some(FieldValue::Json(v.clone())),
                _ => return Err(bad()),
            };
            rec.set(f, value)?;
        }
        Ok(rec)
    }
}

/// Parse a `keys` list from a `db_request` into fields. `msg_id` need not be listed (it is
/// always returned); duplicates are dropped; an unknown name is [`DbError::UnknownKey`].
pub fn parse_keys(keys: &Value) -> Result<Option<Vec<Field>>, DbError> {
    match keys {
        Value::Null => Ok(None),
        Value::Array(items) => {
            let mut out: Vec<Field> = Vec::with_capacity(items.len());
            for item in items {
                let name = item
                    .as_str()
                    .ok_or_else(|| DbError::UnknownKey(item.to_string()))?;
                let f: Field = name.parse()?;
                if !out.contains(&f) {
                    out.push(f);
                }
            }
            Ok(Some(out))
        }
        other => Err(DbError::UnknownKey(other.to_string())),
    }
}

#[cfg(test)]
#[allow(clippy::field_reassign_with_default)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn field_names_round_trip() {
        assert_eq!(Field::ALL.len(), 23);
        for &f in Field::ALL {
            assert_eq!(f.name().parse::<Field>().unwrap(), f);
        }
        assert!(matches!(
            "bogus".parse::<Field>(),
            Err(DbError::UnknownKey(k)) if k == "bogus"
        ));
    }

    #[test]
    fn merge_only_set_fields() {
        let mut r = TaskRecord::new("a");
        r.queue = Some("task".into());
        r.stdout = Some("hi".into());
        let mut p = TaskRecord::default();
        p.engine_uuid = Some("e".into());
        r.merge(p);
        assert_eq!(r.queue.as_deref(), Some("task"));
        assert_eq!(r.engine_uuid.as_deref(), Some("e"));
        assert_eq!(r.stdout.as_deref(), Some("hi"));
        assert_eq!(r.msg_id.as_deref(), Some("a"));
    }

    #[test]
    fn json_shape() {
        let mut r = TaskRecord::new("a");
        r.submitted = parse_iso("2026-01-02T03:04:05.000006Z");
        r.buffers = Some(vec![b"x".to_vec()]);
        let all = r.to_json(None);
        let o = all.as_object().unwrap();
        assert_eq!(o.len(), 21);
        assert!(!o.contains_key("buffers") && !o.contains_key("result_buffers"));
        assert_eq!(o["submitted"], json!("2026-01-02T03:04:05.000006Z"));
        assert_eq!(o["stdout"], json!(""));
        assert_eq!(o["completed"], Value::Null);
        let some = r.to_json(Some(&[Field::Queue, Field::Buffers]));
        assert_eq!(some, json!({"msg_id": "a", "queue": null}));
    }

    #[test]
    fn from_json_and_keys() {
        let r = TaskRecord::from_json(&json!({"msg_id": "m", "completed": "2026-01-02T03:04:05Z",
            "header": {"a": 1}}))
        .unwrap();
        assert_eq!(r.header, Some(json!({"a": 1})));
        assert!(r.completed.is_some());
        assert!(TaskRecord::from_json(&json!({"completed": "soon"})).is_err());
        assert!(TaskRecord::from_json(&json!({"nope": 1})).is_err());
        assert_eq!(
            parse_keys(&json!(["header", "header", "buffers"])).unwrap(),
            Some(vec![Field::Header, Field::Buffers])
        );
        assert!(parse_keys(&json!(["hdr"])).is_err());
        assert_eq!(parse_keys(&Value::Null).unwrap(), None);
    }

    #[test]
    fn projection_clones_only_selected() {
        let mut r = TaskRecord::new("a");
        r.buffers = Some(vec![vec![0; 10]]);
        r.result_buffers = Some(vec![vec![1; 3]]);
        r.label = Some("l".into());
        let p = r.project(Some(&[Field::ResultBuffers]));
        assert_eq!(p.buffers, None);
        assert_eq!(p.result_buffers, Some(vec![vec![1; 3]]));
        assert_eq!(p.label, None);
        assert_eq!(p.msg_id.as_deref(), Some("a"));
        assert_eq!(p.stdout, None);
        assert_eq!(r.buffer_bytes(), 13);
    }
}
