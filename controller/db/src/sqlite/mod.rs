//! The SQLite backend (ipyparallel's `SQLiteDB`).
//!
//! A file (`SQLiteDB.location`/`SQLiteDB.filename`, default `<profile>/tasks.db`) holding one
//! table per session (`_<hub session>`) unless `SQLiteDB.table` names one; naming the table is
//! how a restarted controller (`--reuse`) sees the earlier session's tasks. A table of the
//! same name with another schema (e.g. written by Python's SQLiteDB, whose buffers are pickles)
//! is left alone and `<table>_1`, `<table>_2`, … are tried.
//!
//! Writes go to a writer thread (module `writer`) and are committed in batched transactions, so the
//! hub's thread never waits on the disk; reads combine the committed rows with the overlay of
//! pending writes and always see every write made through this handle. The file is in WAL mode
//! so reads and the writer's commits do not block each other.

mod codec;
mod writer;

use rusqlite::{params_from_iter, Connection, OpenFlags, OptionalExtension};
use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::mpsc::{self, Sender};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use crate::config::{Backend, DbConfig};
use crate::error::DbError;
use crate::query::Query;
use crate::record::{Field, Stream, TaskRecord};
use crate::TaskDb;
use codec::{create_table_sql, decl_type, from_sql, ident, where_clause};
use writer::{Msg, Op, OpKind, Overlay, Shared};

/// The SQLite backend. See the module docs.
pub struct SqliteDb {
    path: PathBuf,
    table: String,
    read: Connection,
    shared: Arc<Shared>,
    tx: Option<Sender<Msg>>,
    writer: Option<JoinHandle<()>>,
    next_seq: u64,
    max_backlog: u64,
}

/// Default most bytes of uncommitted buffers before writes wait for the disk. Below it the
/// routing thread never waits; above it, memory stays bounded (buffers live on disk) at the
/// price of waiting for the writer.
pub const DEFAULT_MAX_BACKLOG: u64 = 128 << 20;

impl std::fmt::Debug for SqliteDb {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteDb")
            .field("path", &self.path)
            .field("table", &self.table)
            .finish_non_exhaustive()
    }
}

fn connect(path: &Path) -> Result<Connection, rusqlite::Error> {
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_WRITE
            | OpenFlags::SQLITE_OPEN_CREATE
            | OpenFlags::SQLITE_OPEN_NO_MUTEX
            | OpenFlags::SQLITE_OPEN_URI,
    )?;
    conn.busy_timeout(Duration::from_secs(30))?;
    // WAL lets reads proceed during commits; NORMAL syncs at checkpoints, not every commit.
    // (On file systems without shared memory WAL is refused and the default journal is kept.)
    // Large pages: task buffers are often megabytes, and 4 KiB pages mean long overflow
    // chains. Only takes effect on a new, empty file (before WAL is switched on).
    conn.execute_batch("PRAGMA page_size=65536")?;
    let _: String = conn.query_row("PRAGMA journal_mode=WAL", [], |r| r.get(0))?;
    conn.execute_batch("PRAGMA synchronous=NORMAL")?;
    Ok(conn)
}

/// Does `table` exist with exactly our columns and types? `None` if it does not exist.
fn table_matches(conn: &Connection, table: &str) -> Result<Option<bool>, rusqlite::Error> {
    let mut st = conn.prepare(&format!("PRAGMA table_info({})", ident(table)))?;
    let cols: Vec<(String, String)> = st
        .query_map([], |r| Ok((r.get::<_, String>(1)?, r.get::<_, String>(2)?)))?
        .collect::<Result<_, _>>()?;
    if cols.is_empty() {
        return Ok(None);
    }
    let ours: Vec<(String, String)> = Field::ALL
        .iter()
        .map(|&f| (f.name().to_string(), decl_type(f).to_string()))
        .collect();
    // SQLite reports some declared types upper-cased (`msg_id text PRIMARY KEY` → `TEXT`).
    let same = cols.len() == ours.len()
        && cols
            .iter()
            .zip(&ours)
            .all(|(a, b)| a.0 == b.0 && a.1.eq_ignore_ascii_case(&b.1));
    Ok(Some(same))
}

impl SqliteDb {
    /// Open (creating if needed) the file and table the configuration names, and start the
    /// writer thread.
    pub fn open(cfg: &DbConfig) -> Result<SqliteDb, DbError> {
        let dir = cfg
            .sqlite
            .location
            .clone()
            .or_else(|| cfg.profile_dir.clone())
            .unwrap_or_else(|| PathBuf::from("."));
        let path = dir.join(&cfg.sqlite.filename);
        let table = match &cfg.sqlite.table {
            Some(t) if !t.is_empty() => t.clone(),
            _ => format!("_{}", cfg.session.replace('-', "_")),
        };
        SqliteDb::open_path(&path, &table)
    }

    /// Open `table` in the file at `path`.
    pub fn open_path(path: &Path, table: &str) -> Result<SqliteDb, DbError> {
        let err = |source| DbError::Sqlite {
            path: path.display().to_string(),
            source,
        };
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|source| DbError::Io {
                path: dir.display().to_string(),
                source,
            })?;
        }
        let wconn = connect(path).map_err(err)?;
        let mut name = table.to_string();
        let mut i = 0;
        while table_matches(&wconn, &name).map_err(err)? == Some(false) {
            i += 1;
            let next = format!("{table}_{i}");
            tracing::warn!(table = %name, next = %next, "task table exists with another schema; trying the next name");
            name = next;
        }
        wconn
            .execute_batch(&format!(
                "{};\nCREATE INDEX IF NOT EXISTS {} ON {} (submitted);\n\
                 CREATE TABLE IF NOT EXISTS rpar_meta (tbl text PRIMARY KEY, seq integer NOT NULL);",
                create_table_sql(&name),
                ident(&format!("{name}_submitted")),
                ident(&name),
            ))
            .map_err(err)?;
        let seq: i64 = wconn
            .query_row("SELECT seq FROM rpar_meta WHERE tbl = ?", [&name], |r| {
                r.get(0)
            })
            .optional()
            .map_err(err)?
            .unwrap_or(0);
        let read = connect(path).map_err(err)?;
        let shared = Arc::new(Shared::default());
        let (tx, rx) = mpsc::channel();
        let writer = {
            let (table, shared) = (name.clone(), shared.clone());
            std::thread::Builder::new()
                .name("taskdb-writer".into())
                .spawn(move || writer::run(wconn, table, shared, rx))
                .map_err(|source| DbError::Io {
                    path: path.display().to_string(),
                    source,
                })?
        };
        tracing::info!(path = %path.display(), table = %name, "SQLite task database open");
        Ok(SqliteDb {
            path: path.to_path_buf(),
            table: name,
            read,
            shared,
            tx: Some(tx),
            writer: Some(writer),
            next_seq: seq.max(0) as u64 + 1,
            max_backlog: DEFAULT_MAX_BACKLOG,
        })
    }

    /// Most bytes of buffers and output kept in memory waiting for the disk (default 1 GiB).
    /// Writes never wait for the disk below this; past it they wait until the writer catches
    /// up, so a disk much slower than the task stream costs throughput instead of memory.
    pub fn set_max_backlog(&mut self, bytes: u64) {
        self.max_backlog = bytes.max(1);
    }

    /// Bytes of buffers and output not yet committed.
    pub fn backlog(&self) -> u64 {
        *self
            .shared
            .backlog
            .lock()
            .unwrap_or_else(|e| e.into_inner())
    }

    /// The table in use (after any `_N` renaming).
    pub fn table(&self) -> &str {
        &self.table
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn sql_err(&self, source: rusqlite::Error) -> DbError {
        DbError::Sqlite {
            path: self.path.display().to_string(),
            source,
        }
    }

    fn send(&mut self, msg_id: &str, kind: OpKind) -> Result<(), DbError> {
        let tx = self
            .tx
            .as_ref()
            .ok_or_else(|| DbError::WriterStopped("the database is closed".into()))?;
        let op = Arc::new(Op {
            seq: self.next_seq,
            msg_id: msg_id.to_string(),
            kind,
        });
        self.next_seq += 1;
        self.wait_for_room(op.weight());
        self.shared
            .overlay()
            .entry(op.msg_id.clone())
            .or_default()
            .push(op.clone());
        tx.send(Msg::Op(op))
            .map_err(|_| DbError::WriterStopped("the writer thread has exited".into()))
    }

    /// Account for `weight` more bytes in flight; past the limit, wait for the writer (the
    /// writer always drains, so this only waits while it is making progress).
    fn wait_for_room(&self, weight: u64) {
        let mut b = self
            .shared
            .backlog
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if *b > 0 && *b + weight > self.max_backlog {
            tracing::warn!(
                backlog = *b,
                limit = self.max_backlog,
                "the disk is behind the task stream: waiting for the task database writer"
            );
            while *b > 0 && *b + weight > self.max_backlog {
                let (g, timeout) = self
                    .shared
                    .drained
                    .wait_timeout(b, Duration::from_secs(1))
                    .unwrap_or_else(|e| e.into_inner());
                b = g;
                if timeout.timed_out() && !matches!(&self.writer, Some(h) if !h.is_finished()) {
                    break;
                }
            }
        }
        *b += weight;
    }

    /// Read committed rows matching `sql_where` (with `cols`), plus the committed base rows of
    /// every overlay id, and merge in the overlay: returns `(rowid-ish order key, record)`.
    fn read_merged(
        &self,
        sql_where: &str,
        params: Vec<rusqlite::types::Value>,
        cols: &[Field],
    ) -> Result<Vec<TaskRecord>, DbError> {
        // 1. Snapshot the overlay *before* reading the committed state.
        let overlay: Overlay = self.shared.overlay().clone();
        // 2. One read transaction: the committed sequence number and the rows agree.
        let tx = self
            .read
            .unchecked_transaction()
            .map_err(|e| self.sql_err(e))?;
        let committed: u64 = tx
            .query_row(
                "SELECT seq FROM rpar_meta WHERE tbl = ?",
                [&self.table],
                |r| r.get::<_, i64>(0),
            )
            .optional()
            .map_err(|e| self.sql_err(e))?
            .unwrap_or(0)
            .max(0) as u64;
        let pending: HashMap<&str, Vec<&Arc<Op>>> = overlay
            .iter()
            .filter_map(|(id, ops)| {
                let newer: Vec<&Arc<Op>> = ops.iter().filter(|o| o.seq > committed).collect();
                (!newer.is_empty()).then_some((id.as_str(), newer))
            })
            .collect();
        let t = ident(&self.table);
        let mut out: Vec<(i64, u64, TaskRecord)> = Vec::new();
        {
            let names: Vec<&str> = cols.iter().map(|f| f.name()).collect();
            let sql = format!(
                "SELECT rowid, {} FROM {t} WHERE {sql_where} ORDER BY rowid",
                names.join(", ")
            );
            let mut st = tx.prepare(&sql).map_err(|e| self.sql_err(e))?;
            let mut rows = st
                .query(params_from_iter(params))
                .map_err(|e| self.sql_err(e))?;
            while let Some(row) = rows.next().map_err(|e| self.sql_err(e))? {
                let rowid: i64 = row.get(0).map_err(|e| self.sql_err(e))?;
                let rec = decode_row(row, cols)?;
                if rec
                    .msg_id
                    .as_deref()
                    .is_some_and(|id| pending.contains_key(id))
                {
                    continue;
                }
                out.push((rowid, 0, rec));
            }
        }
        if !pending.is_empty() {
            let names: Vec<&str> = Field::ALL.iter().map(|f| f.name()).collect();
            let sql = format!(
                "SELECT rowid, {} FROM {t} WHERE msg_id = ?",
                names.join(", ")
            );
            let mut st = tx.prepare(&sql).map_err(|e| self.sql_err(e))?;
            for (id, ops) in &pending {
                let base = st
                    .query_row([id], |row| {
                        Ok((row.get::<_, i64>(0)?, decode_row(row, Field::ALL)))
                    })
                    .optional()
                    .map_err(|e| self.sql_err(e))?;
                let (mut order, mut rec) = match base {
                    Some((rowid, rec)) => ((rowid, 0), Some(rec?)),
                    None => ((i64::MAX, 0), None),
                };
                for op in ops {
                    if matches!(op.kind, OpKind::Drop) {
                        order = (i64::MAX, 0);
                    } else if order.0 == i64::MAX && order.1 == 0 {
                        order.1 = op.seq;
                    }
                    op.apply(&mut rec);
                }
                if let Some(rec) = rec {
                    out.push((order.0, order.1, rec));
                }
            }
        }
        drop(tx);
        out.sort_by_key(|(rowid, seq, _)| (*rowid, *seq));
        Ok(out.into_iter().map(|(_, _, r)| r).collect())
    }
}

fn decode_row(row: &rusqlite::Row<'_>, cols: &[Field]) -> Result<TaskRecord, DbError> {
    let mut rec = TaskRecord::default();
    for (i, &f) in cols.iter().enumerate() {
        let v = row.get_ref(i + 1).map_err(|e| DbError::Corrupt {
            msg_id: rec.msg_id.clone().unwrap_or_default(),
            reason: e.to_string(),
        })?;
        from_sql(&mut rec, f, v)?;
    }
    Ok(rec)
}

impl TaskDb for SqliteDb {
    fn backend(&self) -> Backend {
        Backend::Sqlite
    }

    fn add_record(&mut self, rec: TaskRecord) -> Result<(), DbError> {
        let id = rec.msg_id.clone().ok_or(DbError::MissingMsgId)?;
        self.send(&id, OpKind::Merge(Box::new(rec)))
    }

    fn update_record(&mut self, msg_id: &str, patch: TaskRecord) -> Result<(), DbError> {
        self.send(msg_id, OpKind::Merge(Box::new(patch)))
    }

    fn append_stream(&mut self, msg_id: &str, stream: Stream, text: &str) -> Result<(), DbError> {
        self.send(msg_id, OpKind::Append(stream, text.to_string()))
    }

    fn get_record(&self, msg_id: &str) -> Result<TaskRecord, DbError> {
        self.find_records(&Query::msg_ids(&[msg_id]), None)?
            .pop()
            .ok_or_else(|| DbError::NotFound(msg_id.to_string()))
    }

    fn get_records(&self, msg_ids: &[String]) -> Result<Vec<Result<TaskRecord, DbError>>, DbError> {
        let mut found: HashMap<String, TaskRecord> = self
            .find_records(&Query::msg_ids(msg_ids), None)?
            .into_iter()
            .filter_map(|r| Some((r.msg_id.clone()?, r)))
            .collect();
        let mut uses: HashMap<&str, usize> = HashMap::new();
        for id in msg_ids {
            *uses.entry(id.as_str()).or_default() += 1;
        }
        Ok(msg_ids
            .iter()
            .map(|id| {
                let left = uses.get_mut(id.as_str()).map(|n| {
                    *n -= 1;
                    *n
                });
                // The last use of an id takes the record; earlier duplicates get copies.
                let rec = if left == Some(0) {
                    found.remove(id)
                } else {
                    found.get(id).cloned()
                };
                rec.ok_or_else(|| DbError::NotFound(id.clone()))
            })
            .collect())
    }

    fn find_records(
        &self,
        query: &Query,
        keys: Option<&[Field]>,
    ) -> Result<Vec<TaskRecord>, DbError> {
        // Columns: msg_id, what the caller wants, and what the query tests.
        let mut cols = vec![Field::MsgId];
        let wanted: Vec<Field> = keys.map_or_else(|| Field::ALL.to_vec(), <[Field]>::to_vec);
        for f in wanted.into_iter().chain(query.fields()) {
            if !cols.contains(&f) {
                cols.push(f);
            }
        }
        let (w, params) = where_clause(query);
        Ok(query.select(self.read_merged(&w, params, &cols)?, keys))
    }

    fn get_history(&self) -> Result<Vec<String>, DbError> {
        let q = Query::parse(&serde_json::json!({"submitted": {"$ne": null}}))?;
        let mut recs = self.find_records(&q, Some(&[Field::Submitted]))?;
        recs.sort_by_key(|r| r.submitted);
        Ok(recs.into_iter().filter_map(|r| r.msg_id).collect())
    }

    fn drop_record(&mut self, msg_id: &str) -> Result<bool, DbError> {
        let exists = !self
            .find_records(&Query::msg_ids(&[msg_id]), Some(&[]))?
            .is_empty();
        if exists {
            self.send(msg_id, OpKind::Drop)?;
        }
        Ok(exists)
    }

    fn drop_matching_records(&mut self, query: &Query) -> Result<usize, DbError> {
        let keys: Vec<Field> = query.fields();
        let ids: HashSet<String> = self
            .find_records(query, Some(&keys))?
            .into_iter()
            .filter_map(|r| r.msg_id)
            .collect();
        for id in &ids {
            self.send(id, OpKind::Drop)?;
        }
        Ok(ids.len())
    }

    fn backlog_bytes(&self) -> u64 {
        self.backlog()
    }

    fn flush(&mut self) -> Result<(), DbError> {
        let tx = self
            .tx
            .as_ref()
            .ok_or_else(|| DbError::WriterStopped("the database is closed".into()))?;
        let (rtx, rrx) = mpsc::channel();
        tx.send(Msg::Flush(rtx))
            .map_err(|_| DbError::WriterStopped("the writer thread has exited".into()))?;
        rrx.recv()
            .map_err(|_| DbError::WriterStopped("the writer thread has exited".into()))?
            .map_err(DbError::WriterStopped)?;
        let failed = self
            .shared
            .failure
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        match failed {
            Some(e) => Err(DbError::WriterStopped(format!(
                "an earlier write failed: {e}"
            ))),
            None => Ok(()),
        }
    }

    fn close(&mut self) -> Result<(), DbError> {
        let result = if self.tx.is_some() {
            self.flush()
        } else {
            Ok(())
        };
        if let Some(tx) = self.tx.take() {
            let _ = tx.send(Msg::Close);
        }
        if let Some(h) = self.writer.take() {
            if h.join().is_err() {
                tracing::error!("the task database writer thread panicked");
            }
        }
        result
    }
}

impl Drop for SqliteDb {
    fn drop(&mut self) {
        if let Err(e) = self.close() {
            tracing::error!(error = %e, "closing the SQLite task database");
        }
    }
}

#[cfg(test)]
#[allow(clippy::field_reassign_with_default)]
mod tests;
