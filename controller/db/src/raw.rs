//! Record writes whose JSON fields are still the bytes of their wire frames: the hub's path
//! for every request and reply ([`TaskDb::add_raw`], [`TaskDb::update_raw`]).
//!
//! A task's header, metadata and content are rarely read back, so a backend that can keep the
//! bytes (the memory DB) parses them only when a query or a read needs them; the others parse
//! them on the way in ([`RawWrite::into_record`]), as before. Either way a field reads as the
//! hub's eager parse made it: a frame parses as [`WireMessage::parse_part`] parses it (an
//! empty frame is `{}`), and one that does not parse sets nothing.
//!
//! [`TaskDb::add_raw`]: crate::TaskDb::add_raw
//! [`TaskDb::update_raw`]: crate::TaskDb::update_raw

use crate::record::{Field, FieldKind, FieldValue, TaskRecord};
use rpar_core::wire::WireMessage;
use serde_json::Value;

/// A record write: typed fields in `rec`, JSON fields as frame bytes in `json`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RawWrite {
    /// The fields already typed (msg_id, dates, uuids, buffers…).
    pub rec: TaskRecord,
    /// JSON fields as their frames' bytes; each is set only if it parses.
    pub json: Vec<(Field, Vec<u8>)>,
}

impl RawWrite {
    /// A write of `rec`, with no raw fields yet.
    pub fn new(rec: TaskRecord) -> RawWrite {
        RawWrite {
            rec,
            json: Vec::with_capacity(3),
        }
    }

    /// Add JSON field `field` as the bytes of its frame (a field that is not of the JSON kind
    /// is ignored).
    pub fn with_json(mut self, field: Field, bytes: Vec<u8>) -> RawWrite {
        self.push_json(field, bytes);
        self
    }

    /// [`RawWrite::with_json`] in place (a write is about a kilobyte: not moved per field).
    pub fn push_json(&mut self, field: Field, bytes: Vec<u8>) {
        if field.kind() == FieldKind::Json {
            self.json.push((field, bytes));
        }
    }

    /// The same write with every JSON field parsed: what backends that store values get.
    pub fn into_record(self) -> TaskRecord {
        let mut rec = self.rec;
        for (f, b) in self.json {
            if let Some(v) = parse(f, &b) {
                // cannot fail: `f` is a JSON field (`with_json`)
                let _ = rec.set(f, Some(FieldValue::Json(v)));
            }
        }
        rec
    }
}

/// A raw JSON field's value: `None` when its frame does not parse.
pub(crate) fn parse(field: Field, bytes: &[u8]) -> Option<Value> {
    WireMessage::parse_part(field.name(), bytes).ok()
}

/// The slot of a JSON field in a record (`None` for other kinds).
pub(crate) fn json_slot(rec: &mut TaskRecord, field: Field) -> Option<&mut Option<Value>> {
    Some(match field {
        Field::Header => &mut rec.header,
        Field::Metadata => &mut rec.metadata,
        Field::Content => &mut rec.content,
        Field::ResultHeader => &mut rec.result_header,
        Field::ResultMetadata => &mut rec.result_metadata,
        Field::ResultContent => &mut rec.result_content,
        Field::ExecuteResult => &mut rec.execute_result,
        Field::Error => &mut rec.error,
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn into_record_parses_as_the_wire_does() {
        let w = RawWrite::new(TaskRecord::new("m"))
            .with_json(Field::Header, br#"{"msg_id": "m", "n": 1}"#.to_vec())
            .with_json(Field::Metadata, Vec::new())
            .with_json(Field::Content, b"{not json".to_vec())
            .with_json(Field::Queue, b"\"ignored\"".to_vec());
        assert_eq!(w.json.len(), 3);
        let r = w.into_record();
        assert_eq!(r.header, Some(json!({"msg_id": "m", "n": 1})));
        assert_eq!(r.metadata, Some(json!({})));
        assert_eq!(r.content, None);
        assert_eq!(r.queue, None);
    }
}
