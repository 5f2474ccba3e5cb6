//! One record as the memory DB holds it: its typed fields, and the JSON fields still as the
//! bytes of their frames ([`RawWrite`]), parsed only when a read or a query needs them.
//!
//! A JSON field is in one place at a time: parsed in `rec`, or raw (and unset in `rec`).

use crate::query::Query;
use crate::raw::{json_slot, parse, RawWrite};
use crate::record::{Field, FieldKind, Stream, TaskRecord};

#[derive(Debug, Clone, Default)]
pub(super) struct Stored {
    pub(super) rec: TaskRecord,
    raw: Vec<(Field, Vec<u8>)>,
}

impl Stored {
    pub(super) fn new(rec: TaskRecord) -> Stored {
        Stored {
            rec,
            raw: Vec::new(),
        }
    }

    /// A new record from a raw write: its JSON fields stay raw.
    pub(super) fn from_raw(w: RawWrite) -> Stored {
        let mut s = Stored::new(w.rec);
        for (f, b) in w.json {
            s.put_raw(f, b);
        }
        s
    }

    /// Merge `patch` (as [`TaskRecord::merge`]): a JSON field it sets replaces a raw one.
    pub(super) fn merge(&mut self, mut patch: TaskRecord) {
        self.raw
            .retain(|(f, _)| json_slot(&mut patch, *f).is_none_or(|v| v.is_none()));
        self.rec.merge(patch);
    }

    /// Merge a raw write: its typed fields as [`Stored::merge`], each raw field as an eager
    /// parse would (a frame that does not parse leaves the field as it was).
    pub(super) fn merge_raw(&mut self, w: RawWrite) {
        self.merge(w.rec);
        for (f, b) in w.json {
            self.put_raw(f, b);
        }
    }

    fn put_raw(&mut self, f: Field, b: Vec<u8>) {
        let raw_held = self.raw.iter().any(|(g, _)| *g == f);
        let Some(slot) = json_slot(&mut self.rec, f) else {
            return;
        };
        if slot.is_none() && !raw_held {
            // nothing to keep if it does not parse: it stays raw
            self.raw.push((f, b));
        } else if let Some(v) = parse(f, &b) {
            // a value is there already: replaced only by one that parses
            *slot = Some(v);
            self.raw.retain(|(g, _)| *g != f);
        }
    }

    pub(super) fn append_stream(&mut self, stream: Stream, text: &str) {
        self.rec.append_stream(stream, text);
    }

    /// The whole record, raw fields parsed.
    pub(super) fn full(&self) -> TaskRecord {
        let mut r = self.rec.clone();
        self.fill(&mut r, None);
        r
    }

    /// Parse the raw fields (those in `keys`, or all) into `r`.
    fn fill(&self, r: &mut TaskRecord, keys: Option<&[Field]>) {
        for (f, b) in &self.raw {
            if keys.is_some_and(|k| !k.contains(f)) {
                continue;
            }
            if let Some(slot) = json_slot(r, *f) {
                *slot = parse(*f, b);
            }
        }
    }

    /// [`TaskRecord::project`] of the whole record.
    pub(super) fn project(&self, keys: Option<&[Field]>) -> TaskRecord {
        match keys {
            None => self.full(),
            Some(k) => {
                let mut r = self.rec.project(Some(k));
                self.fill(&mut r, Some(k));
                r
            }
        }
    }

    /// [`Query::matches`] of the whole record (raw fields parsed only if the query reads one).
    pub(super) fn matches(&self, q: &Query) -> bool {
        let reads_raw = !self.raw.is_empty()
            && q.clauses.iter().any(|c| {
                c.path.field.kind() == FieldKind::Json
                    && self.raw.iter().any(|(f, _)| *f == c.path.field)
            });
        if reads_raw {
            q.matches(&self.full())
        } else {
            q.matches(&self.rec)
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::error::DbError;
    use crate::query::Query;
    use crate::raw::{json_slot, RawWrite};
    use crate::record::{Field, FieldKind, Stream, TaskRecord};
    use crate::{Backend, MemoryDb, TaskDb};
    use serde_json::json;

    /// The memory DB written only through the raw path: every JSON field set in a write goes
    /// in as its serialized bytes.
    struct RawOnly(MemoryDb);

    fn split(mut rec: TaskRecord) -> RawWrite {
        let mut w = RawWrite::new(TaskRecord::default());
        for &f in Field::ALL {
            if f.kind() != FieldKind::Json {
                continue;
            }
            if let Some(v) = json_slot(&mut rec, f).and_then(Option::take) {
                w = w.with_json(f, serde_json::to_vec(&v).unwrap());
            }
        }
        w.rec = rec;
        w
    }

    impl TaskDb for RawOnly {
        fn backend(&self) -> Backend {
            self.0.backend()
        }
        fn add_record(&mut self, rec: TaskRecord) -> Result<(), DbError> {
            self.0.add_raw(split(rec))
        }
        fn update_record(&mut self, msg_id: &str, patch: TaskRecord) -> Result<(), DbError> {
            self.0.update_raw(msg_id, split(patch))
        }
        fn append_stream(&mut self, id: &str, s: Stream, text: &str) -> Result<(), DbError> {
            self.0.append_stream(id, s, text)
        }
        fn get_record(&self, msg_id: &str) -> Result<TaskRecord, DbError> {
            self.0.get_record(msg_id)
        }
        fn find_records(
            &self,
            q: &Query,
            keys: Option<&[Field]>,
        ) -> Result<Vec<TaskRecord>, DbError> {
            self.0.find_records(q, keys)
        }
        fn get_history(&self) -> Result<Vec<String>, DbError> {
            self.0.get_history()
        }
        fn drop_record(&mut self, msg_id: &str) -> Result<bool, DbError> {
            self.0.drop_record(msg_id)
        }
        fn drop_matching_records(&mut self, q: &Query) -> Result<usize, DbError> {
            self.0.drop_matching_records(q)
        }
        fn flush(&mut self) -> Result<(), DbError> {
            self.0.flush()
        }
        fn close(&mut self) -> Result<(), DbError> {
            self.0.close()
        }
    }

    #[test]
    fn conformance_through_raw_writes() {
        crate::conformance::run_all(&mut || Box::new(RawOnly(MemoryDb::default())));
    }

    #[test]
    fn raw_fields_read_as_parsed_ones() {
        let mut db = MemoryDb::default();
        let w = RawWrite::new(TaskRecord::new("m"))
            .with_json(
                Field::Header,
                br#"{"msg_type": "apply_request", "n": 2}"#.to_vec(),
            )
            .with_json(Field::Metadata, Vec::new())
            .with_json(Field::Content, b"not json".to_vec());
        db.add_raw(w).unwrap();
        let r = db.get_record("m").unwrap();
        assert_eq!(r.header, Some(json!({"msg_type": "apply_request", "n": 2})));
        assert_eq!(r.metadata, Some(json!({})));
        assert_eq!(r.content, None);
        let q = Query::parse(&json!({"header.n": {"$gt": 1}})).unwrap();
        let found = db.find_records(&q, Some(&[Field::Header])).unwrap();
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].header, r.header);
        assert_eq!(found[0].metadata, None);
        let q = Query::parse(&json!({"header.n": 1})).unwrap();
        assert!(db.find_records(&q, None).unwrap().is_empty());
    }

    #[test]
    fn raw_writes_merge_as_eager_ones() {
        let mut db = MemoryDb::default();
        let mut rec = TaskRecord::new("m");
        rec.header = Some(json!({"a": 1}));
        db.add_record(rec).unwrap();
        // a frame that does not parse leaves a value as it was; one that parses replaces it
        let bad = RawWrite::new(TaskRecord::default()).with_json(Field::Header, b"{".to_vec());
        db.update_raw("m", bad).unwrap();
        assert_eq!(db.get_record("m").unwrap().header, Some(json!({"a": 1})));
        let good = RawWrite::new(TaskRecord::default()).with_json(Field::Header, b"[2]".to_vec());
        db.update_raw("m", good).unwrap();
        assert_eq!(db.get_record("m").unwrap().header, Some(json!([2])));
        // a raw field replaced by a parsed one, and by a second raw one
        let w = RawWrite::new(TaskRecord::default()).with_json(Field::Content, b"{}".to_vec());
        db.update_raw("m", w).unwrap();
        let w = RawWrite::new(TaskRecord::default()).with_json(Field::Content, b"x".to_vec());
        db.update_raw("m", w).unwrap();
        assert_eq!(db.get_record("m").unwrap().content, Some(json!({})));
        let w = RawWrite::new(TaskRecord::default()).with_json(Field::Content, b"3".to_vec());
        db.update_raw("m", w).unwrap();
        assert_eq!(db.get_record("m").unwrap().content, Some(json!(3)));
        let patch = TaskRecord {
            content: Some(json!("set")),
            ..Default::default()
        };
        db.update_record("m", patch).unwrap();
        assert_eq!(db.get_record("m").unwrap().content, Some(json!("set")));
    }
}
