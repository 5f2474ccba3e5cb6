//! What the hub writes into the task database as messages pass (reference §7.2), and the
//! database backend it was configured with. Database errors are logged, never fatal: a task's
//! routing does not depend on its record.
//!
//! Big buffers (from [`SHARE_MIN`] bytes) are not copied into the record on the routing path:
//! the record is written without them and they wait here, shared with the frames on their way
//! out (and the scheduler, for a task's request), until nothing else holds them; then
//! [`Records::settle`] moves them into the record. Small ones are copied at once.
//!
//! A message's header, metadata and content go into the record as the bytes of their frames
//! ([`RawWrite`]); only the few fields the record indexes (dates, label, engine) are read here.

use super::monitor::Outcome;
use super::pick::{pick, RequestHeader};
use super::SHARE_MIN;
use rpar_core::ids::parse_iso;
use rpar_core::wire::{buffers_len, SharedBuffers, WireMessage};
use rpar_taskdb::{Field, RawWrite, Stream, TaskDb, TaskRecord};
use serde_json::Value;
use std::collections::VecDeque;
use std::sync::Arc;
use tracing::debug;

/// The configured backend.
pub type Db = Box<dyn TaskDb + Send>;

pub struct Records {
    pub db: Db,
    /// Big buffers waiting to go into their records: (msg_id, which field, buffers).
    waiting: VecDeque<(String, Part, SharedBuffers)>,
}

/// Which buffers of a record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Part {
    Request,
    Result,
}

/// Most waiting buffers looked at per [`Records::settle`] (the rest wait for the next one).
const SETTLE_BATCH: usize = 64;

/// Most buffers waiting at once; past this the oldest are copied into their records.
const MAX_WAITING: usize = 4096;

fn now() -> chrono::DateTime<chrono::Utc> {
    chrono::Utc::now()
}

impl Records {
    pub fn new(db: Db) -> Records {
        Records {
            db,
            waiting: VecDeque::new(),
        }
    }

    /// The buffers for a record's `part`: a copy when they are small; when big, `None` (the
    /// record is written without them) and they wait for [`Records::settle`].
    fn keep(&mut self, msg_id: &str, part: Part, buffers: &SharedBuffers) -> Option<Vec<Vec<u8>>> {
        if buffers_len(buffers) < SHARE_MIN {
            return Some(buffers.to_vec());
        }
        self.waiting
            .push_back((msg_id.to_string(), part, buffers.clone()));
        None
    }

    /// Move waiting buffers that nothing else holds any more into their records. With `force`
    /// (a query is about to read records), all of them, copying those still held.
    pub fn settle(&mut self, force: bool) {
        if self.waiting.is_empty() {
            return;
        }
        let n = if force {
            self.waiting.len()
        } else {
            self.waiting.len().min(SETTLE_BATCH)
        };
        for _ in 0..n {
            let Some((msg_id, part, b)) = self.waiting.pop_front() else {
                break;
            };
            if force || Arc::strong_count(&b) == 1 {
                self.write_buffers(&msg_id, part, b);
            } else {
                self.waiting.push_back((msg_id, part, b));
            }
        }
        while self.waiting.len() > MAX_WAITING {
            if let Some((msg_id, part, b)) = self.waiting.pop_front() {
                self.write_buffers(&msg_id, part, b);
            }
        }
    }

    /// How many buffers wait for their records.
    #[cfg(test)]
    pub fn waiting_len(&self) -> usize {
        self.waiting.len()
    }

    fn write_buffers(&mut self, msg_id: &str, part: Part, b: SharedBuffers) {
        let b = Arc::unwrap_or_clone(b);
        let upd = match part {
            Part::Request => TaskRecord {
                buffers: Some(b),
                ..Default::default()
            },
            Part::Result => TaskRecord {
                result_buffers: Some(b),
                ..Default::default()
            },
        };
        if let Err(e) = self.db.update_record(msg_id, upd) {
            debug!(msg_id, error = %e, "recording buffers");
        }
    }

    /// A request seen on its way to an engine (`in` / `intask`). `h` is what the caller read of
    /// the request's header ([`super::pick::request_header`]); the header frame itself goes
    /// into the record. `buffers` are the request's (not in `msg`). `label`: the metadata's
    /// `label` if the caller has read it.
    pub fn request(
        &mut self,
        h: RequestHeader,
        msg: &WireMessage,
        buffers: &SharedBuffers,
        queue: &str,
        engine_uuid: Option<&str>,
        label: Option<Option<String>>,
    ) {
        let label = label.unwrap_or_else(|| {
            let [label] = pick(&msg.metadata, ["label"]);
            label
        });
        let submitted = parse_iso(&h.date).or_else(|| Some(now()));
        let msg_id = h.msg_id;
        let buffers = self.keep(&msg_id, Part::Request, buffers);
        let rec = TaskRecord {
            msg_id: Some(msg_id),
            buffers,
            submitted,
            client_uuid: Some(h.session),
            engine_uuid: engine_uuid.map(str::to_string),
            queue: Some(queue.to_string()),
            label,
            ..Default::default()
        };
        let mut w = RawWrite::new(rec);
        w.push_json(Field::Header, msg.header.clone());
        w.push_json(Field::Metadata, msg.metadata.clone());
        w.push_json(Field::Content, msg.content.clone());
        if let Err(e) = self.db.add_raw(w) {
            debug!(error = %e, "recording request");
        }
    }

    /// A task was placed on an engine (`tracktask`).
    pub fn assigned(&mut self, msg_id: &str, engine_uuid: &str) {
        if let Err(e) = self.db.set_engine(msg_id, engine_uuid) {
            debug!(msg_id, error = %e, "recording assignment");
        }
    }

    /// A final reply (`out` / `outtask`), its buffers (not in `reply`) apart. Returns how the
    /// task finished.
    pub fn result(
        &mut self,
        msg_id: &str,
        reply: &WireMessage,
        buffers: &SharedBuffers,
        engine_uuid: Option<&str>,
        read: Option<[Option<String>; 2]>,
    ) -> Outcome {
        let (mut upd, outcome) = result_patch(reply, engine_uuid, read.clone());
        upd.rec.result_buffers = self.keep(msg_id, Part::Result, buffers);
        let big = upd.rec.result_buffers.is_none();
        match self.db.update_raw(msg_id, upd) {
            Err(e) if e.is_missing() => {
                // a reply for a request this controller never saw (sent before a restart):
                // recorded from what the reply says of its request
                let parent = reply.parent_value().ok();
                let field = |k: &str| {
                    parent
                        .as_ref()
                        .and_then(|p| p.get(k))
                        .and_then(Value::as_str)
                        .map(str::to_string)
                };
                let mut rec = result_patch(reply, engine_uuid, read).0;
                rec.rec = TaskRecord {
                    msg_id: Some(msg_id.to_string()),
                    submitted: field("date").as_deref().and_then(parse_iso),
                    client_uuid: field("session"),
                    header: parent.clone(),
                    // big buffers are waiting already, and go into this record
                    result_buffers: (!big).then(|| buffers.to_vec()),
                    ..rec.rec
                };
                if let Err(e) = self.db.add_raw(rec) {
                    debug!(msg_id, error = %e, "recording the result of an unknown request");
                }
            }
            Err(e) => debug!(msg_id, error = %e, "recording result"),
            Ok(()) => {}
        }
        outcome
    }
}

/// The record update a final reply makes, and how the task finished. `read`: the metadata's
/// `started` and `engine` if the caller has read them ([`super::pick::reply_metadata`]).
fn result_patch(
    reply: &WireMessage,
    engine_uuid: Option<&str>,
    read: Option<[Option<String>; 2]>,
) -> (RawWrite, Outcome) {
    let [date] = pick(&reply.header, ["date"]);
    let [started, engine] = read.unwrap_or_else(|| pick(&reply.metadata, ["started", "engine"]));
    let [status, ename, evalue] = pick(&reply.content, ["status", "ename", "evalue"]);
    let outcome = Outcome::of_fields(status.as_deref(), ename.as_deref(), evalue.as_deref());
    let upd = TaskRecord {
        result_buffers: None,
        received: Some(now()),
        started: started.as_deref().and_then(parse_iso),
        completed: date.as_deref().and_then(parse_iso).or_else(|| Some(now())),
        engine_uuid: engine_uuid.map(str::to_string).or(engine),
        ..Default::default()
    };
    let mut w = RawWrite::new(upd);
    w.push_json(Field::ResultHeader, reply.header.clone());
    w.push_json(Field::ResultMetadata, reply.metadata.clone());
    w.push_json(Field::ResultContent, reply.content.clone());
    (w, outcome)
}

impl Records {
    /// Output of a task, from IOPub.
    pub fn iopub(&mut self, msg_id: &str, msg_type: &str, content: &Value) {
        let res = match msg_type {
            "stream" => {
                let name = content
                    .get("name")
                    .and_then(Value::as_str)
                    .unwrap_or("stdout");
                let text = content.get("text").and_then(Value::as_str).unwrap_or("");
                match Stream::from_name(name) {
                    Some(s) => self.db.append_stream(msg_id, s, text),
                    None => Ok(()),
                }
            }
            "error" => self.db.update_record(
                msg_id,
                TaskRecord {
                    error: Some(content.clone()),
                    ..Default::default()
                },
            ),
            "execute_input" => self.db.update_record(
                msg_id,
                TaskRecord {
                    execute_input: content
                        .get("code")
                        .and_then(Value::as_str)
                        .map(str::to_string),
                    ..Default::default()
                },
            ),
            "execute_result" | "display_data" => self.db.update_record(
                msg_id,
                TaskRecord {
                    execute_result: Some(content.clone()),
                    ..Default::default()
                },
            ),
            _ => Ok(()),
        };
        if let Err(e) = res {
            debug!(msg_id, error = %e, "recording output");
        }
    }

    /// A direct request stranded on an engine that died: completed with an EngineError.
    pub fn engine_died(&mut self, msg_id: &str, engine_uuid: &str, content: Value) {
        let upd = TaskRecord {
            result_content: Some(content),
            result_header: Some(
                serde_json::json!({"engine": engine_uuid, "date": rpar_core::ids::now_iso()}),
            ),
            result_buffers: Some(Vec::new()),
            completed: Some(now()),
            received: Some(now()),
            engine_uuid: Some(engine_uuid.to_string()),
            ..Default::default()
        };
        if let Err(e) = self.db.update_record(msg_id, upd) {
            debug!(msg_id, error = %e, "recording stranded request");
        }
    }
}
