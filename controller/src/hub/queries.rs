//! Client queries answered by the hub on its ROUTER (reference §6): queue_request,
//! result_request, history_request, db_request, purge_request, resubmit_request. Every reply
//! has `parent = request` (the client matches on `parent_header.msg_id`); failures are error
//! contents in ipyparallel's shape, with the reply's usual msg_type.

use super::{Effect, Hub, HUB_RESUBMIT_IDENT};
use crate::errors::wrap;
use rpar_core::wire::{SharedBuffers, WireMessage};
use rpar_taskdb::{DbError, Query, TaskRecord};
use serde_json::{json, Value};
use std::collections::BTreeSet;
use std::time::Instant;

/// The string msg_ids of a request's `content.msg_ids` list (anything else is ignored).
fn msg_ids(content: &Value) -> Vec<String> {
    content
        .get("msg_ids")
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(|v| v.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

impl Hub {
    /// Engine ids named by `targets` (ints or uuid strings; null = all registered).
    fn validate_targets(&self, targets: &Value) -> Result<Vec<u32>, (String, String)> {
        let all: Vec<u32> = self.registered().map(|e| e.id).collect();
        let list = match targets {
            Value::Null => {
                if all.is_empty() {
                    return Err(("IndexError".into(), "No Engines Registered".into()));
                }
                return Ok(all);
            }
            Value::Array(a) => a.clone(),
            one => vec![one.clone()],
        };
        if list.is_empty() {
            return Err(("IndexError".into(), "No Engines Registered".into()));
        }
        let mut out = Vec::new();
        for t in list {
            let id = match &t {
                Value::Number(_) => super::engine_id(&t).filter(|i| all.contains(i)),
                Value::String(s) => self.engine_id_of(s.as_bytes()),
                _ => None,
            };
            match id {
                Some(i) => out.push(i),
                None => return Err(("IndexError".into(), format!("No Such Engine: {t}"))),
            }
        }
        Ok(out)
    }

    pub(super) fn queue_request(
        &mut self,
        msg: &WireMessage,
        content: &Value,
        out: &mut Vec<Effect>,
    ) {
        let targets = match self.validate_targets(content.get("targets").unwrap_or(&Value::Null)) {
            Ok(t) => t,
            Err((en, ev)) => return self.reply_error(msg, "hub_error", &en, &ev, out),
        };
        let verbose = content
            .get("verbose")
            .and_then(Value::as_bool)
            .unwrap_or(false);
        let mut c = serde_json::Map::new();
        c.insert("status".into(), json!("ok"));
        let sorted = |s: Option<&foldhash::HashSet<String>>| -> Vec<String> {
            let mut v: Vec<String> = s.map(|s| s.iter().cloned().collect()).unwrap_or_default();
            v.sort();
            v
        };
        for t in targets {
            let queue = sorted(self.ledger.mux_pending.get(&t));
            let tasks = self
                .ledger
                .tasks_on
                .get(&t)
                .map(|s| s.sorted())
                .unwrap_or_default();
            let entry = if verbose {
                let completed = self.ledger.completed_on(t);
                json!({"queue": queue, "completed": completed, "tasks": tasks})
            } else {
                let completed = self.ledger.completed_count(t);
                json!({"queue": queue.len(), "completed": completed, "tasks": tasks.len()})
            };
            c.insert(t.to_string(), entry);
        }
        let unassigned = self.ledger.unassigned.sorted();
        c.insert(
            "unassigned".into(),
            if verbose {
                json!(unassigned)
            } else {
                json!(unassigned.len())
            },
        );
        self.reply(msg, "queue_reply", Value::Object(c), vec![], out);
    }

    pub(super) fn result_request(
        &mut self,
        msg: &WireMessage,
        content: &Value,
        out: &mut Vec<Effect>,
    ) {
        let ids: BTreeSet<String> = msg_ids(content).into_iter().collect();
        let status_only = content
            .get("status_only")
            .and_then(Value::as_bool)
            .unwrap_or(false);
        let mut pending = Vec::new();
        let mut completed = Vec::new();
        let mut c = serde_json::Map::new();
        let mut buffers = Vec::new();
        for id in &ids {
            if self.ledger.pending.contains(id) {
                pending.push(id.clone());
                continue;
            }
            if status_only && self.ledger.is_completed(id) {
                completed.push(id.clone());
                continue;
            }
            match self.records.db.get_record(id) {
                Ok(rec) if rec.completed.is_some() => {
                    completed.push(id.clone());
                    if !status_only {
                        let (v, bufs) = rpar_taskdb::result_entry(rec);
                        c.insert(id.clone(), v);
                        buffers.extend(bufs);
                    }
                }
                Ok(_) => pending.push(id.clone()),
                Err(e) => {
                    let ev = if e.is_missing() {
                        format!("No such message: {id}")
                    } else {
                        e.to_string()
                    };
                    return self.reply(
                        msg,
                        "result_reply",
                        wrap(e.python_ename(), &ev),
                        vec![],
                        out,
                    );
                }
            }
        }
        c.insert("status".into(), json!("ok"));
        c.insert("pending".into(), json!(pending));
        c.insert("completed".into(), json!(completed));
        self.reply(msg, "result_reply", Value::Object(c), buffers, out);
    }

    pub(super) fn history_request(&mut self, msg: &WireMessage, out: &mut Vec<Effect>) {
        match self.records.db.get_history() {
            Ok(h) => self.reply(
                msg,
                "history_reply",
                json!({"status": "ok", "history": h}),
                vec![],
                out,
            ),
            Err(e) => self.reply(
                msg,
                "history_reply",
                wrap(e.python_ename(), &e.to_string()),
                vec![],
                out,
            ),
        }
    }

    pub(super) fn db_request(&mut self, msg: &WireMessage, content: &Value, out: &mut Vec<Effect>) {
        let empty = json!({});
        let query = match Query::parse(content.get("query").unwrap_or(&empty)) {
            Ok(q) => q,
            Err(e) => {
                return self.reply(
                    msg,
                    "db_reply",
                    wrap("KeyError", &e.to_string()),
                    vec![],
                    out,
                )
            }
        };
        let keys = match rpar_taskdb::parse_keys(content.get("keys").unwrap_or(&Value::Null)) {
            Ok(k) => k,
            Err(e) => {
                return self.reply(
                    msg,
                    "db_reply",
                    wrap(e.python_ename(), &e.to_string()),
                    vec![],
                    out,
                )
            }
        };
        match self.records.db.find_records(&query, keys.as_deref()) {
            Ok(records) => {
                let (c, bufs) = rpar_taskdb::db_reply(records, keys.as_deref());
                self.reply(msg, "db_reply", c, bufs, out)
            }
            Err(e) => self.reply(
                msg,
                "db_reply",
                wrap(e.python_ename(), &e.to_string()),
                vec![],
                out,
            ),
        }
    }

    pub(super) fn purge_request(
        &mut self,
        msg: &WireMessage,
        content: &Value,
        out: &mut Vec<Effect>,
    ) {
        let reply = self.purge(content);
        let c = match reply {
            Ok(()) => json!({"status": "ok"}),
            Err((en, ev)) => wrap(&en, &ev),
        };
        self.reply(msg, "purge_reply", c, vec![], out);
    }

    fn purge(&mut self, content: &Value) -> Result<(), (String, String)> {
        let db_err = |e: DbError| (e.python_ename().to_string(), e.to_string());
        let q = |v: Value| Query::parse(&v).map_err(|e| ("KeyError".to_string(), e.to_string()));
        match content.get("msg_ids") {
            Some(Value::String(s)) if s == "all" => {
                self.records
                    .db
                    .drop_matching_records(&q(json!({"completed": {"$ne": null}}))?)
                    .map_err(db_err)?;
                self.ledger.purge_all();
                return Ok(());
            }
            Some(Value::Array(_)) => {
                let ids = msg_ids(content);
                if let Some(p) = ids.iter().find(|m| self.ledger.pending.contains(m)) {
                    return Err(("IndexError".into(), format!("msg pending: '{p}'")));
                }
                if !ids.is_empty() {
                    self.records
                        .db
                        .drop_matching_records(&q(json!({"msg_id": {"$in": ids}}))?)
                        .map_err(db_err)?;
                    self.ledger.purge_ids(&ids);
                }
            }
            _ => {}
        }
        let eids: Vec<Value> = content
            .get("engine_ids")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        for v in eids {
            let found = super::engine_id(&v).and_then(|eid| {
                let uuid = self.ids.get(&eid).and_then(|u| self.engines.get(u))?;
                Some((eid, uuid.uuid.clone()))
            });
            let Some((eid, uuid)) = found else {
                return Err(("IndexError".into(), format!("No such engine: {v}")));
            };
            self.records
                .db
                .drop_matching_records(&q(
                    json!({"engine_uuid": uuid, "completed": {"$ne": null}}),
                )?)
                .map_err(db_err)?;
            self.ledger.purge_engine(eid);
        }
        Ok(())
    }

    pub(super) fn resubmit_request(
        &mut self,
        msg: &WireMessage,
        content: &Value,
        now: Instant,
        out: &mut Vec<Effect>,
    ) {
        let ids = msg_ids(content);
        let mut records: Vec<TaskRecord> = Vec::new();
        let mut missing = Vec::new();
        for id in &ids {
            match self.records.db.get_record(id) {
                Ok(r) if r.header.is_some() => records.push(r),
                Ok(_) => missing.push(id.clone()),
                Err(e) if e.is_missing() => missing.push(id.clone()),
                Err(e) => {
                    return self.reply(
                        msg,
                        "resubmit_reply",
                        wrap(e.python_ename(), &e.to_string()),
                        vec![],
                        out,
                    )
                }
            }
        }
        if !missing.is_empty() {
            let ev = format!("No such msg(s): {missing:?}");
            return self.reply(msg, "resubmit_reply", wrap("KeyError", &ev), vec![], out);
        }
        let mut resubmitted = serde_json::Map::new();
        let mut to_submit = Vec::new();
        for rec in records {
            let (Some(old_id), Some(mut header)) = (rec.msg_id.clone(), rec.header.clone()) else {
                continue;
            };
            let parent = serde_json::to_vec(&header).unwrap_or_default();
            let new_id = self.builder.next_msg_id();
            if let Some(h) = header.as_object_mut() {
                h.insert("msg_id".into(), json!(new_id));
                h.insert("date".into(), json!(rpar_core::ids::now_iso()));
            }
            let mut m = WireMessage {
                idents: vec![HUB_RESUBMIT_IDENT.to_vec()],
                signature: Vec::new(),
                header: serde_json::to_vec(&header).unwrap_or_default(),
                parent,
                metadata: b"{}".to_vec(),
                content: serde_json::to_vec(&rec.content.clone().unwrap_or_else(|| json!({})))
                    .unwrap_or_default(),
                buffers: rec.buffers.clone().unwrap_or_default(),
            };
            self.signer.sign_message(&mut m);
            // the new record keeps the original client's session, submitted from the old header
            if let Ok(h) = super::pick::request_header(&m.header) {
                let buffers = SharedBuffers::new(m.buffers.clone());
                self.records.request(h, &m, &buffers, "task", None, None);
            }
            resubmitted.insert(old_id.clone(), json!(new_id));
            to_submit.push((old_id, new_id, m));
        }
        self.reply(
            msg,
            "resubmit_reply",
            json!({"status": "ok", "resubmitted": resubmitted}),
            vec![],
            out,
        );
        for (old_id, new_id, m) in to_submit {
            let upd = TaskRecord {
                resubmitted: Some(new_id),
                ..Default::default()
            };
            if let Err(e) = self.records.db.update_record(&old_id, upd) {
                tracing::debug!(msg_id = %old_id, error = %e, "recording resubmission");
            }
            self.on_task_request(m, now, out);
        }
    }
}
