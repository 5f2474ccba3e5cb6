//! Shaping records into the hub's replies (protocol §6): the `db_reply` content with its
//! buffers, and one `result_request` RESULT entry with its result buffers.
//!
//! Both take records by value so buffers move into the reply frames without copying.

use serde_json::{json, Map, Value};

use crate::record::{Field, TaskRecord};

/// `db_reply` content plus the message buffers, in the order the client re-links them.
///
/// * `keys == None`: every field except `buffers`/`result_buffers`, which are dropped;
///   `buffer_lens` and `result_buffer_lens` are null.
/// * `keys` listing `buffers` and/or `result_buffers`: those are left out of each record and
///   appended as frames in record order (for each record its `buffers`, then its
///   `result_buffers`), with their counts in `buffer_lens` / `result_buffer_lens`.
/// * `msg_id` is always present; dates are ISO strings with `Z`.
pub fn db_reply(records: Vec<TaskRecord>, keys: Option<&[Field]>) -> (Value, Vec<Vec<u8>>) {
    let want = |f: Field| keys.is_some_and(|k| k.contains(&f));
    let (want_bufs, want_rbufs) = (want(Field::Buffers), want(Field::ResultBuffers));
    let mut buffer_lens = want_bufs.then(Vec::new);
    let mut result_buffer_lens = want_rbufs.then(Vec::new);
    let mut frames = Vec::new();
    let mut out = Vec::with_capacity(records.len());
    for mut rec in records {
        out.push(rec.to_json(keys));
        if let Some(lens) = buffer_lens.as_mut() {
            let b = rec.buffers.take().unwrap_or_default();
            lens.push(b.len());
            frames.extend(b);
        }
        if let Some(lens) = result_buffer_lens.as_mut() {
            let b = rec.result_buffers.take().unwrap_or_default();
            lens.push(b.len());
            frames.extend(b);
        }
    }
    let content = json!({
        "status": "ok",
        "records": out,
        "buffer_lens": buffer_lens,
        "result_buffer_lens": result_buffer_lens,
    });
    (content, frames)
}

/// One RESULT entry of a `result_reply` and the record's result buffers:
/// `{header, metadata, result_metadata, result_header, result_content, received,
///   io: {execute_input, execute_result, error, stdout, stderr}}`.
pub fn result_entry(mut rec: TaskRecord) -> (Value, Vec<Vec<u8>>) {
    let mut io = Map::new();
    for f in [
        Field::ExecuteInput,
        Field::ExecuteResult,
        Field::Error,
        Field::Stdout,
        Field::Stderr,
    ] {
        io.insert(f.name().into(), rec.field_json(f));
    }
    let mut c = Map::new();
    for f in [
        Field::Header,
        Field::Metadata,
        Field::ResultMetadata,
        Field::ResultHeader,
        Field::ResultContent,
        Field::Received,
    ] {
        c.insert(f.name().into(), rec.field_json(f));
    }
    c.insert("io".into(), Value::Object(io));
    (
        Value::Object(c),
        rec.result_buffers.take().unwrap_or_default(),
    )
}

/// `history_reply` content for a history list.
pub fn history_reply(history: Vec<String>) -> Value {
    json!({"status": "ok", "history": history})
}

#[cfg(test)]
mod tests {
    use super::*;
    use rpar_core::ids::parse_iso;

    fn rec(id: &str, bufs: &[&[u8]], rbufs: &[&[u8]]) -> TaskRecord {
        let mut r = TaskRecord::new(id);
        r.buffers = Some(bufs.iter().map(|b| b.to_vec()).collect());
        r.result_buffers = Some(rbufs.iter().map(|b| b.to_vec()).collect());
        r.header = Some(json!({"msg_id": id}));
        r.submitted = parse_iso("2026-11-24T07:08:29.504717Z");
        r
    }

    #[test]
    fn keys_none_drops_buffers() {
        let (c, frames) = db_reply(vec![rec("a", &[b"x"], &[b"y"])], None);
        assert!(frames.is_empty());
        assert_eq!(c["buffer_lens"], Value::Null);
        assert_eq!(c["result_buffer_lens"], Value::Null);
        assert_eq!(c["status"], "ok");
        let r = c["records"][0].as_object().unwrap();
        assert_eq!(r.len(), 21);
        assert!(!r.contains_key("buffers") && !r.contains_key("result_buffers"));
        assert_eq!(r["submitted"], "2026-11-24T07:08:29.504717Z");
        assert_eq!(r["stdout"], "");
    }

    #[test]
    fn buffer_order_and_lens() {
        // As observed: keys=['buffers','result_buffers','header'] for two records gave
        // 5 frames with buffer_lens=[2,2], result_buffer_lens=[1,0].
        let recs = vec![
            rec("a", &[b"a0", b"a1"], &[b"ar"]),
            rec("b", &[b"b0", b"b1"], &[]),
        ];
        let keys = [Field::Buffers, Field::ResultBuffers, Field::Header];
        let (c, frames) = db_reply(recs, Some(&keys));
        assert_eq!(c["buffer_lens"], json!([2, 2]));
        assert_eq!(c["result_buffer_lens"], json!([1, 0]));
        let f: Vec<&[u8]> = frames.iter().map(Vec::as_slice).collect();
        assert_eq!(f, vec![&b"a0"[..], b"a1", b"ar", b"b0", b"b1"]);
        assert_eq!(
            c["records"][1],
            json!({"msg_id": "b", "header": {"msg_id": "b"}})
        );
    }

    #[test]
    fn only_result_buffers_requested() {
        let recs = vec![rec("a", &[b"a0"], &[b"r0", b"r1"])];
        let (c, frames) = db_reply(recs, Some(&[Field::ResultBuffers]));
        assert_eq!(c["buffer_lens"], Value::Null);
        assert_eq!(c["result_buffer_lens"], json!([2]));
        assert_eq!(frames, vec![b"r0".to_vec(), b"r1".to_vec()]);
        assert_eq!(c["records"][0], json!({"msg_id": "a"}));
    }

    #[test]
    fn missing_buffers_count_zero() {
        let mut r = TaskRecord::new("a");
        r.buffers = None;
        let (c, frames) = db_reply(vec![r], Some(&[Field::Buffers]));
        assert_eq!(c["buffer_lens"], json!([0]));
        assert!(frames.is_empty());
    }

    #[test]
    fn result_rendering() {
        let mut r = rec("a", &[b"in"], &[b"out"]);
        r.result_content = Some(json!({"status": "ok"}));
        r.received = parse_iso("2026-11-24T07:08:29.561225Z");
        r.stdout = Some("hello\n".into());
        r.execute_input = Some("1+1".into());
        let (c, bufs) = result_entry(r);
        assert_eq!(bufs, vec![b"out".to_vec()]);
        assert_eq!(
            c,
            json!({"header": {"msg_id": "a"}, "metadata": null, "result_metadata": null,
                "result_header": null, "result_content": {"status": "ok"},
                "received": "2026-11-24T07:08:29.561225Z",
                "io": {"execute_input": "1+1", "execute_result": null, "error": null,
                       "stdout": "hello\n", "stderr": ""}})
        );
        assert_eq!(
            history_reply(vec!["a".into()]),
            json!({"status": "ok", "history": ["a"]})
        );
    }
}
