//! rpar-taskdb: the controller's task database (protocol §6, §7).
//!
//! The hub records every request, result and IOPub output here and answers `result_request`,
//! `history_request`, `db_request`, `purge_request` and `resubmit_request` from it.
//!
//! # API summary (what the hub calls)
//!
//! * Open: [`open`]`(&DbConfig) -> Box<dyn TaskDb + Send>`; choose the backend with
//!   `"DictDB".parse::<Backend>()` (also `dictdb`, `NoDB`, `SQLiteDB`, `sqlitedb`, `MongoDB`,
//!   and full class paths like `ipyparallel.controller.sqlitedb.SQLiteDB`). Set
//!   [`DbConfig::session`] (default SQLite table) and [`DbConfig::profile_dir`] (default SQLite
//!   location).
//! * Write (never blocks on disk for SQLite: a writer thread commits in batches):
//!   - [`TaskDb::add_record`]`(rec)`: insert, or merge into an existing record (IOPub may come
//!     first);
//!   - [`TaskDb::update_record`]`(msg_id, patch)`: merge the fields set in `patch`, creating the
//!     record if absent;
//!   - [`TaskDb::add_raw`] / [`TaskDb::update_raw`]: the same with the JSON fields still
//!     frame bytes ([`RawWrite`]; the hub's path, parsed only when read by the memory DB);
//!   - [`TaskDb::append_stream`]`(msg_id, Stream::Stdout, text)`;
//!   - [`TaskDb::drop_record`], [`TaskDb::drop_matching_records`] (purge);
//!   - [`TaskDb::flush`] (wait until durable), [`TaskDb::close`].
//! * Read: [`TaskDb::get_record`] (errors [`DbError::NotFound`] vs [`DbError::Culled`]),
//!   [`TaskDb::get_records`], [`TaskDb::find_records`]`(&Query, keys)`, [`TaskDb::get_history`].
//! * Queries: [`Query::parse`]`(&content["query"])` (typed [`QueryError`]s),
//!   [`parse_keys`]`(&content["keys"])`, [`Query::msg_ids`].
//! * Replies: [`db_reply`]`(records, keys) -> (content, buffers)`,
//!   [`result_entry`]`(record) -> (RESULT json, result_buffers)`, [`history_reply`].
//!   Errors carry [`DbError::python_ename`] for `wrap_exception`-style error contents.
//!
//! Typical `db_request` handling:
//!
//! ```
//! # use rpar_taskdb::*;
//! # use serde_json::json;
//! let mut db = open(&DbConfig::default()).unwrap();
//! db.add_record(TaskRecord::new("m1")).unwrap();
//! let content = json!({"query": {"msg_id": {"$glob": "m*"}}, "keys": ["buffers"]});
//! let query = Query::parse(&content["query"]).unwrap();
//! let keys = parse_keys(&content["keys"]).unwrap();
//! let records = db.find_records(&query, keys.as_deref()).unwrap();
//! let (reply, frames) = db_reply(records, keys.as_deref());
//! assert_eq!(reply["buffer_lens"], json!([0]));
//! # let _ = frames;
//! ```
//!
//! # Backends
//!
//! * [`MemoryDb`] (`DictDB`, the default): bounded by `record_limit` (1024) and `size_limit`
//!   (192 MiB of buffers; ipyparallel: 1 GiB); past either it culls `cull_fraction` (0.1) of the oldest *completed*
//!   records (pending ones are never culled), and remembers culled ids.
//! * [`NoDb`] (`NoDB`): stores nothing; reads fail with [`DbError::NoData`].
//! * `SqliteDb` (`SQLiteDB`, cargo feature `sqlite`, on by default): a file in the profile dir,
//!   writes batched on a writer thread with an in-memory overlay so reads see every write; a
//!   record's writes within one batch are folded into one row write. Writes wait for the disk
//!   only when more than `SqliteDb::set_max_backlog` (128 MiB) of buffers are uncommitted.
//! * `MongoDb` (`MongoDB`, cargo feature `mongodb`, off by default): collection
//!   `task_records`. Its tests need a server: they run against `RPAR_TEST_MONGODB_URL` when set
//!   and are skipped otherwise (`cargo test -p rpar-taskdb --features mongodb`).
//!
//! Memory: records own their buffers (no copies are kept); after large frees (culls, purges,
//! SQLite commits) glibc is asked to return free pages to the OS. The memory DB holds up to
//! `size_limit` of buffers by design.

pub mod config;
pub mod error;
pub mod glob;
pub mod memory;
#[cfg(feature = "mongodb")]
pub mod mongo;
pub mod nodb;
pub mod query;
pub mod raw;
pub mod record;
pub mod reply;
#[cfg(feature = "sqlite")]
pub mod sqlite;
mod trim;

#[cfg(test)]
#[allow(clippy::field_reassign_with_default)]
mod conformance;

pub use config::{open, Backend, DbConfig, MongoConfig, SqliteConfig};
pub use error::{DbError, QueryError};
pub use memory::MemoryDb;
#[cfg(feature = "mongodb")]
pub use mongo::MongoDb;
pub use nodb::NoDb;
pub use query::Query;
pub use raw::RawWrite;
pub use record::{parse_keys, Field, FieldKind, Stream, TaskRecord};
pub use reply::{db_reply, history_reply, result_entry};
#[cfg(feature = "sqlite")]
pub use sqlite::SqliteDb;

/// The task database as the hub sees it. Object-safe: the hub holds a `Box<dyn TaskDb + Send>`.
///
/// Writes merge: setting a field never clears the others. Reads return owned copies.
pub trait TaskDb: Send {
    /// The backend's ipyparallel class name (`DictDB`, `NoDB`, `SQLiteDB`, `MongoDB`).
    fn backend(&self) -> Backend;

    /// Store a record; if one with the same `msg_id` exists, merge the fields set in `rec`
    /// into it. `rec.msg_id` must be set.
    fn add_record(&mut self, rec: TaskRecord) -> Result<(), DbError>;

    /// Merge the fields set in `patch` into record `msg_id`, creating it if absent.
    fn update_record(&mut self, msg_id: &str, patch: TaskRecord) -> Result<(), DbError>;

    /// [`TaskDb::add_record`] for a write whose JSON fields are still frame bytes
    /// ([`RawWrite`]). By default they are parsed first; the memory DB keeps the bytes and
    /// parses them only when a read or a query needs them.
    fn add_raw(&mut self, w: RawWrite) -> Result<(), DbError> {
        self.add_record(w.into_record())
    }

    /// [`TaskDb::update_record`] for a [`RawWrite`] (its `rec.msg_id` is not used).
    fn update_raw(&mut self, msg_id: &str, w: RawWrite) -> Result<(), DbError> {
        self.update_record(msg_id, w.into_record())
    }

    /// Set record `msg_id`'s `engine_uuid` (a task placed on an engine): as an
    /// [`TaskDb::update_record`] of that one field, which it is by default; the memory DB sets
    /// the field in place.
    fn set_engine(&mut self, msg_id: &str, engine_uuid: &str) -> Result<(), DbError> {
        let patch = TaskRecord {
            engine_uuid: Some(engine_uuid.to_string()),
            ..Default::default()
        };
        self.update_record(msg_id, patch)
    }

    /// Append IOPub stream text to the record's stdout/stderr, creating the record if absent.
    fn append_stream(&mut self, msg_id: &str, stream: Stream, text: &str) -> Result<(), DbError>;

    /// One record. [`DbError::NotFound`] if never stored or dropped, [`DbError::Culled`] if the
    /// memory DB culled it for its limits.
    fn get_record(&self, msg_id: &str) -> Result<TaskRecord, DbError>;

    /// Several records: one result per id, in the order given. The outer error is for the
    /// backend as a whole (e.g. [`DbError::NoData`]).
    fn get_records(&self, msg_ids: &[String]) -> Result<Vec<Result<TaskRecord, DbError>>, DbError> {
        Ok(msg_ids.iter().map(|id| self.get_record(id)).collect())
    }

    /// Records matching `query`, in insertion order; with `keys`, each holds only those fields
    /// and `msg_id` (the rest unset), so unrequested buffers are never copied.
    fn find_records(
        &self,
        query: &Query,
        keys: Option<&[Field]>,
    ) -> Result<Vec<TaskRecord>, DbError>;

    /// msg_ids of every record with `submitted` set, oldest first.
    fn get_history(&self) -> Result<Vec<String>, DbError>;

    /// Remove one record; `Ok(false)` if there was none.
    fn drop_record(&mut self, msg_id: &str) -> Result<bool, DbError>;

    /// Remove every record matching `query`; returns how many.
    fn drop_matching_records(&mut self, query: &Query) -> Result<usize, DbError>;

    /// Wait until every write so far is durable (a no-op for memory backends).
    fn flush(&mut self) -> Result<(), DbError>;

    /// Bytes written and not yet durable (the status views' DB backlog; 0 for memory backends).
    fn backlog_bytes(&self) -> u64 {
        0
    }

    /// Flush and release the backend (stop writer threads, close files). Further calls may
    /// fail.
    fn close(&mut self) -> Result<(), DbError>;
}
