//! What the hub writes into the task database as messages pass (reference §7.2), and the
//! database backend it was configured with. Database errors are logged, never fatal: a task's
//! routing does not depend on its record.

use super::monitor::Outcome;
use rpar_core::ids::parse_iso;
use rpar_core::wire::WireMessage;
use rpar_core::Header;
use rpar_taskdb::{Stream, TaskDb, TaskRecord};
use serde_json::Value;
use tracing::debug;

/// The configured backend.
pub type Db = Box<dyn TaskDb + Send>;

pub struct Records {
    pub db: Db,
}

fn now() -> chrono::DateTime<chrono::Utc> {
    chrono::Utc::now()
}

impl Records {
    pub fn new(db: Db) -> Records {
        Records { db }
    }

    /// A request seen on its way to an engine (`in` / `intask`). `h` is the request's header
    /// and `value` the same header as JSON ([`Header::parse_with_value`]: parsed once by the
    /// caller); the value goes into the record as it is.
    pub fn request(
        &mut self,
        h: Header,
        value: Value,
        msg: &WireMessage,
        queue: &str,
        engine_uuid: Option<&str>,
    ) {
        let metadata = msg.metadata_value().ok();
        let label = metadata
            .as_ref()
            .and_then(|m| m.get("label"))
            .and_then(Value::as_str)
            .map(str::to_string);
        let submitted = parse_iso(&h.date).or_else(|| Some(now()));
        let msg_id = h.msg_id;
        let rec = TaskRecord {
            msg_id: Some(msg_id.clone()),
            header: Some(value),
            metadata,
            content: msg.content_value().ok(),
            buffers: Some(msg.buffers.clone()),
            submitted,
            client_uuid: Some(h.session),
            engine_uuid: engine_uuid.map(str::to_string),
            queue: Some(queue.to_string()),
            label,
            ..Default::default()
        };
        if let Err(e) = self.db.add_record(rec) {
            debug!(%msg_id, error = %e, "recording request");
        }
    }

    /// A task was placed on an engine (`tracktask`).
    pub fn assigned(&mut self, msg_id: &str, engine_uuid: &str) {
        let upd = TaskRecord {
            engine_uuid: Some(engine_uuid.to_string()),
            ..Default::default()
        };
        if let Err(e) = self.db.update_record(msg_id, upd) {
            debug!(msg_id, error = %e, "recording assignment");
        }
    }

    /// A final reply (`out` / `outtask`). Returns how the task finished.
    pub fn result(
        &mut self,
        msg_id: &str,
        reply: &WireMessage,
        engine_uuid: Option<&str>,
    ) -> Outcome {
        let (upd, outcome) = result_patch(reply, engine_uuid);
        match self.db.update_record(msg_id, upd) {
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
                let rec = TaskRecord {
                    msg_id: Some(msg_id.to_string()),
                    submitted: field("date").as_deref().and_then(parse_iso),
                    client_uuid: field("session"),
                    header: parent.clone(),
                    ..result_patch(reply, engine_uuid).0
                };
                if let Err(e) = self.db.add_record(rec) {
                    debug!(msg_id, error = %e, "recording the result of an unknown request");
                }
            }
            Err(e) => debug!(msg_id, error = %e, "recording result"),
            Ok(()) => {}
        }
        outcome
    }
}

/// The record update a final reply makes, and how the task finished.
fn result_patch(reply: &WireMessage, engine_uuid: Option<&str>) -> (TaskRecord, Outcome) {
    let result_header = reply.header_value().ok();
    let result_metadata = reply.metadata_value().ok();
    let result_content = reply.content_value().ok();
    let outcome = Outcome::of_content(result_content.as_ref());
    let started = result_metadata
        .as_ref()
        .and_then(|m| m.get("started"))
        .and_then(Value::as_str)
        .and_then(parse_iso);
    let completed = result_header
        .as_ref()
        .and_then(|h| h.get("date"))
        .and_then(Value::as_str)
        .and_then(parse_iso);
    let engine = engine_uuid.map(str::to_string).or_else(|| {
        result_metadata
            .as_ref()
            .and_then(|m| m.get("engine"))
            .and_then(Value::as_str)
            .map(str::to_string)
    });
    let upd = TaskRecord {
        result_header,
        result_metadata,
        result_content,
        result_buffers: Some(reply.buffers.clone()),
        received: Some(now()),
        started,
        completed: completed.or_else(|| Some(now())),
        engine_uuid: engine,
        ..Default::default()
    };
    (upd, outcome)
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
