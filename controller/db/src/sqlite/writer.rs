//! The SQLite writer thread and the overlay of not-yet-committed writes.
//!
//! The hub's thread never touches the disk on a write: it records the operation in the overlay
//! and sends it down a channel. The writer drains whatever is queued, applies it in one
//! transaction together with the new "committed up to" sequence number (table `rpar_meta`),
//! commits, and only then removes those operations from the overlay. A reader snapshots the
//! overlay first, then reads the committed sequence number and the rows in one read
//! transaction, and replays only the overlay operations newer than that number: every write is
//! seen exactly once (appends are never doubled), whatever the writer did meanwhile.

use rusqlite::types::Value as SqlValue;
use rusqlite::{params_from_iter, Connection};
use std::collections::HashMap;
use std::sync::mpsc::{Receiver, Sender};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};

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
    /// Bytes this write keeps in memory until it is committed (its buffers and text).
    pub fn weight(&self) -> u64 {
        match &self.kind {
            OpKind::Merge(p) => {
                p.buffer_bytes() as u64
                    + p.stdout.as_ref().map_or(0, |s| s.len() as u64)
                    + p.stderr.as_ref().map_or(0, |s| s.len() as u64)
            }
            OpKind::Append(_, t) => t.len() as u64,
            OpKind::Drop => 0,
        }
    }

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
    /// Bytes of buffers and text waiting to be committed.
    pub backlog: Mutex<u64>,
    /// Signalled when the backlog shrinks.
    pub drained: Condvar,
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
    let mut trimmer = crate::trim::Trimmer::new();
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
                    drop(ov);
                    let freed: u64 = batch.iter().map(|o| o.weight()).sum();
                    let mut b = shared.backlog.lock().unwrap_or_else(|e| e.into_inner());
                    *b = b.saturating_sub(freed);
                    drop(b);
                    shared.drained.notify_all();
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
        if result.is_ok() {
            let freed: u64 = batch.iter().map(|o| o.weight()).sum();
            // The overlay no longer holds these ops: dropping the batch frees their buffers.
            drop(batch);
            trimmer.freed(freed);
        }
    }
    tracing::debug!("task database writer stopped");
}

/// What one batch does to one record, folded from its operations in order, so a record that
/// was submitted and completed within a batch is written once (SQLite rewrites a whole row,
/// megabyte buffers included, on every update).
#[derive(Default)]
struct Folded<'a> {
    /// Delete the row first (a drop was followed by new writes, or stands alone).
    delete: bool,
    /// Write a row (insert or update) after the optional delete.
    upsert: bool,
    /// Fields to set; borrowed from the ops when a single op sets them.
    set: Vec<(Field, &'a TaskRecord)>,
    /// Text to append to stdout / stderr after the fields are set.
    append: [String; 2],
}

impl<'a> Folded<'a> {
    fn add(&mut self, op: &'a Op) {
        match &op.kind {
            OpKind::Merge(patch) => {
                self.upsert = true;
                for &f in Field::ALL {
                    if f == Field::MsgId || !is_set(patch, f) {
                        continue;
                    }
                    self.set.retain(|(g, _)| *g != f);
                    self.set.push((f, patch));
                    // A set stdout/stderr replaces what earlier appends in this batch added.
                    match f {
                        Field::Stdout => self.append[0].clear(),
                        Field::Stderr => self.append[1].clear(),
                        _ => {}
                    }
                }
            }
            OpKind::Append(s, text) => {
                self.upsert = true;
                let i = match s {
                    Stream::Stdout => 0,
                    Stream::Stderr => 1,
                };
                self.append[i].push_str(text);
            }
            OpKind::Drop => {
                *self = Folded {
                    delete: true,
                    ..Default::default()
                };
            }
        }
    }
}

fn commit(conn: &mut Connection, table: &str, batch: &[Arc<Op>]) -> Result<(), String> {
    // Fold per record, keeping the order in which records first appear (new rows get rowids
    // in that order).
    let mut order: Vec<&str> = Vec::new();
    let mut folded: HashMap<&str, Folded<'_>> = HashMap::new();
    for op in batch {
        let f = folded.entry(op.msg_id.as_str()).or_insert_with(|| {
            order.push(op.msg_id.as_str());
            Folded::default()
        });
        f.add(op);
    }
    let tx = conn.transaction().map_err(|e| e.to_string())?;
    let t = ident(table);
    let e = |e: rusqlite::Error| e.to_string();
    for id in order {
        let Some(f) = folded.get(id) else { continue };
        if f.delete {
            tx.prepare_cached(&format!("DELETE FROM {t} WHERE msg_id = ?"))
                .and_then(|mut st| st.execute([id]))
                .map_err(e)?;
        }
        if !f.upsert {
            continue;
        }
        let mut names: Vec<&str> = vec!["msg_id"];
        let mut values = vec![SqlValue::Text(id.to_string())];
        let mut updates: Vec<String> = Vec::new();
        for (field, rec) in &f.set {
            let n = field.name();
            names.push(n);
            values.push(to_sql(rec, *field));
            updates.push(format!("{n} = excluded.{n}"));
        }
        for (i, field) in [Field::Stdout, Field::Stderr].into_iter().enumerate() {
            if f.append[i].is_empty() {
                continue;
            }
            let n = field.name();
            if let Some(pos) = names.iter().position(|x| *x == n) {
                // Set and appended in this batch: the set value already sits in `values`.
                if let SqlValue::Text(s) = &mut values[pos] {
                    s.push_str(&f.append[i]);
                }
            } else {
                names.push(n);
                values.push(SqlValue::Text(f.append[i].clone()));
                updates.push(format!("{n} = COALESCE({n}, '') || excluded.{n}"));
            }
        }
        let qs = vec!["?"; names.len()].join(", ");
        let sql = if updates.is_empty() {
            format!("INSERT INTO {t} (msg_id) VALUES (?) ON CONFLICT(msg_id) DO NOTHING")
        } else {
            format!(
                "INSERT INTO {t} ({}) VALUES ({qs}) ON CONFLICT(msg_id) DO UPDATE SET {}",
                names.join(", "),
                updates.join(", ")
            )
        };
        tx.prepare_cached(&sql)
            .and_then(|mut st| st.execute(params_from_iter(values)))
            .map_err(e)?;
    }
    let upto = batch.iter().map(|o| o.seq).max().unwrap_or(0);
    tx.prepare_cached(
        "INSERT INTO rpar_meta (tbl, seq) VALUES (?, ?) ON CONFLICT(tbl) DO UPDATE SET seq = excluded.seq",
    )
    .and_then(|mut st| st.execute((table, upto as i64)))
    .map_err(e)?;
    tx.commit().map_err(e)
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
