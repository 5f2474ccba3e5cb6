//! The SQLite writer thread and the overlay of not-yet-committed writes.
//!
//! The hub's thread never touches the disk on a write: it records the operation in the overlay
//! and sends it down a channel. The writer drains whatever is queued, applies it in one
//! transaction together with the new "committed up to" sequence number (table `rpar_meta`),
//! commits, and only then removes those operations from the overlay. A reader snapshots the
//! overlay first, then reads the committed sequence number and the rows in one read
//! transaction, and replays only the overlay operations newer than that number: every write is
//! seen exactly once (appends are never doubled), whatever the writer did meanwhile.

use rusqlite::{params_from_iter, Connection};
use std::collections::HashMap;
use std::sync::mpsc::{Receiver, Sender};
use std::sync::{Arc, Mutex, MutexGuard};

use super::codec::{ident, to_sql};
use crate::record::{Field, Stream, TaskRecord};

/// One write.
#[derive(Debug)]
pub enum OpKind {
    Merge(Box<TaskRecord>),
    Append(Stream, String),
    Drop,
}

/// A write with its sequence number.
#[derive(Debug)]
pub struct Op {
    pub seq: u64,
    pub msg_id: String,
    pub kind: OpKind,
}

impl Op {
    /// Replay the write on an in-memory copy of the record (`None` = no record).
    pub fn apply(&self, rec: &mut Option<TaskRecord>) {
        match &self.kind {
            OpKind::Merge(patch) => {
                let r = rec.get_or_insert_with(|| TaskRecord::new(self.msg_id.clone()));
                r.merge((**patch).clone());
                r.msg_id = Some(self.msg_id.clone());
            }
            OpKind::Append(s, text) => rec
                .get_or_insert_with(|| TaskRecord::new(self.msg_id.clone()))
                .append_stream(*s, text),
            OpKind::Drop => *rec = None,
        }
    }
}

/// Uncommitted writes by msg_id, in order.
pub type Overlay = HashMap<String, Vec<Arc<Op>>>;

/// State shared between the DB handle and its writer.
#[derive(Debug, Default)]
pub struct Shared {
    pub overlay: Mutex<Overlay>,
    /// The last write failure, reported by `flush`.
    pub failure: Mutex<Option<String>>,
}

impl Shared {
    pub fn overlay(&self) -> MutexGuard<'_, Overlay> {
        // A panic while holding the lock cannot leave the map half-updated in a way that
        // matters more than losing the overlay would; keep going.
        self.overlay.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn set_failure(&self, msg: Option<String>) {
        *self.failure.lock().unwrap_or_else(|e| e.into_inner()) = msg;
    }
}

/// Messages to the writer.
pub enum Msg {
    Op(Arc<Op>),
    /// Reply once everything sent before is committed (or failed).
    Flush(Sender<Result<(), String>>),
    /// Hold the writer until the sender is dropped or sends (tests of overlay reads).
    #[cfg(test)]
    Stall(Receiver<()>),
    Close,
}

/// Most operations per transaction.
const MAX_BATCH: usize = 4096;

/// The writer loop; returns when told to close or when the handle is dropped.
pub fn run(mut conn: Connection, table: String, shared: Arc<Shared>, rx: Receiver<Msg>) {
    let span = tracing::info_span!("taskdb-writer", table = %table);
    let _g = span.enter();
    let mut open = true;
    while open {
        let Ok(first) = rx.recv() else { break };
        let mut batch: Vec<Arc<Op>> = Vec::new();
        let mut flushes = Vec::new();
        let mut next = Some(first);
        while let Some(msg) = next.take() {
            match msg {
                Msg::Op(op) => batch.push(op),
                Msg::Flush(reply) => flushes.push(reply),
                #[cfg(test)]
                Msg::Stall(release) => {
                    let _ = release.recv();
                }
                Msg::Close => {
                    open = false;
                    break;
                }
            }
            if batch.len() >= MAX_BATCH {
                break;
            }
            next = rx.try_recv().ok();
        }
        let result = if batch.is_empty() {
            Ok(())
        } else {
            commit(&mut conn, &table, &batch)
        };
        match &result {
            Ok(()) => {
                if !batch.is_empty() {
                    let upto = batch.iter().map(|o| o.seq).max().unwrap_or(0);
                    let mut ov = shared.overlay();
                    for op in &batch {
                        if let Some(ops) = ov.get_mut(&op.msg_id) {
                            ops.retain(|o| o.seq > upto);
                            if ops.is_empty() {
                                ov.remove(&op.msg_id);
                            }
                        }
                    }
                    tracing::trace!(ops = batch.len(), upto, "committed task records");
                }
            }
            Err(e) => {
                // The writes stay in the overlay, so this session still sees them.
                tracing::error!(error = %e, ops = batch.len(), "writing task records failed");
                shared.set_failure(Some(e.clone()));
            }
        }
        for f in flushes {
            let _ = f.send(result.clone());
        }
    }
    tracing::debug!("task database writer stopped");
}

fn commit(conn: &mut Connection, table: &str, batch: &[Arc<Op>]) -> Result<(), String> {
    let tx = conn.transaction().map_err(|e| e.to_string())?;
    let t = ident(table);
    for op in batch {
        match &op.kind {
            OpKind::Merge(patch) => {
                let mut cols = vec![Field::MsgId];
                cols.extend(
                    Field::ALL
                        .iter()
                        .copied()
                        .filter(|&f| f != Field::MsgId && is_set(patch, f)),
                );
                let names: Vec<&str> = cols.iter().map(|f| f.name()).collect();
                let qs = vec!["?"; cols.len()].join(", ");
                let updates: Vec<String> = names[1..]
                    .iter()
                    .map(|n| format!("{n} = excluded.{n}"))
                    .collect();
                let sql = if updates.is_empty() {
                    format!("INSERT INTO {t} (msg_id) VALUES (?) ON CONFLICT(msg_id) DO NOTHING")
                } else {
                    format!(
                        "INSERT INTO {t} ({}) VALUES ({qs}) ON CONFLICT(msg_id) DO UPDATE SET {}",
                        names.join(", "),
                        updates.join(", ")
                    )
                };
                let mut values = vec![rusqlite::types::Value::Text(op.msg_id.clone())];
                values.extend(cols[1..].iter().map(|&f| to_sql(patch, f)));
                tx.prepare_cached(&sql)
                    .and_then(|mut st| st.execute(params_from_iter(values)))
                    .map_err(|e| e.to_string())?;
            }
            OpKind::Append(stream, text) => {
                let c = stream.field().name();
                let sql = format!(
                    "INSERT INTO {t} (msg_id, {c}) VALUES (?, ?) ON CONFLICT(msg_id) \
                     DO UPDATE SET {c} = COALESCE({c}, '') || excluded.{c}"
                );
                tx.prepare_cached(&sql)
                    .and_then(|mut st| st.execute((&op.msg_id, text)))
                    .map_err(|e| e.to_string())?;
            }
            OpKind::Drop => {
                tx.prepare_cached(&format!("DELETE FROM {t} WHERE msg_id = ?"))
                    .and_then(|mut st| st.execute([&op.msg_id]))
                    .map_err(|e| e.to_string())?;
            }
        }
    }
    let upto = batch.iter().map(|o| o.seq).max().unwrap_or(0);
    tx.prepare_cached("INSERT INTO rpar_meta (tbl, seq) VALUES (?, ?) ON CONFLICT(tbl) DO UPDATE SET seq = excluded.seq")
        .and_then(|mut st| st.execute((table, upto as i64)))
        .map_err(|e| e.to_string())?;
    tx.commit().map_err(|e| e.to_string())
}

/// Is the field set in a patch? (A set-but-empty buffer list still counts: it is written as
/// NULL, which is how it reads back.)
fn is_set(r: &TaskRecord, f: Field) -> bool {
    match f {
        Field::Buffers => r.buffers.is_some(),
        Field::ResultBuffers => r.result_buffers.is_some(),
        Field::Stdout => r.stdout.is_some(),
        Field::Stderr => r.stderr.is_some(),
        _ => !matches!(r.get(f), crate::record::FieldRef::Null),
    }
}
