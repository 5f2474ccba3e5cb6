//! Typed errors of the task database: lookups, queries, configuration and backend failures.
//!
//! The hub turns these into `hub_error`/error replies; [`DbError::python_ename`] gives the
//! exception class name ipyparallel would have raised, so clients see familiar `ename`s.

use crate::record::FieldKind;

/// What went wrong parsing or checking a mongo-style query.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum QueryError {
    #[error("the query must be a JSON object of {{field: value}} tests, got {0}")]
    NotAnObject(String),
    #[error("unknown record field {0:?} in query")]
    UnknownField(String),
    #[error("unsupported query operator {op:?} on field {field:?}")]
    UnknownOperator { field: String, op: String },
    #[error("operator {op} is not supported on {field:?} ({kind:?} field)")]
    OperatorNotForField {
        field: String,
        op: &'static str,
        kind: FieldKind,
    },
    #[error("bad value for {op} on field {field:?}: {reason}")]
    BadValue {
        field: String,
        op: &'static str,
        reason: String,
    },
    #[error("field {field:?} mixes operators ($…) and plain keys in one test")]
    MixedOperators { field: String },
}

/// Any task-database failure.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DbError {
    #[error("No such msg_id {0:?}")]
    NotFound(String),
    #[error("Record {0:?} has been culled for size")]
    Culled(String),
    #[error(
        "NoDB backend doesn't store any data. Start the controller with a task database \
         (--dictdb or --sqlitedb, or c.IPController.db_class = 'DictDB' / 'SQLiteDB') \
         to enable history, db_query, resubmission and result persistence."
    )]
    NoData,
    #[error("bad query: {0}")]
    Query(#[from] QueryError),
    #[error("unknown record key {0:?}")]
    UnknownKey(String),
    #[error("bad value for record field {field:?}: expected {expected:?}")]
    BadFieldValue {
        field: &'static str,
        expected: FieldKind,
    },
    #[error("bad record: {0}")]
    BadRecord(&'static str),
    #[error("record has no msg_id")]
    MissingMsgId,
    #[error("unknown task database {0:?}: expected DictDB, SQLiteDB, MongoDB or NoDB (optionally as 'ipyparallel.controller.<module>.<Class>')")]
    UnknownBackend(String),
    #[error("bad task database option {name}={value:?}: {reason}")]
    BadOption {
        name: &'static str,
        value: String,
        reason: String,
    },
    #[error("the {0} backend is not compiled into this build: rebuild with `cargo build --release -p rpar-controller --features {1}`")]
    NotCompiled(&'static str, &'static str),
    #[cfg(feature = "sqlite")]
    #[error("SQLite task database {path}: {source}")]
    Sqlite {
        path: String,
        #[source]
        source: rusqlite::Error,
    },
    #[error("stored record {msg_id:?} is corrupt: {reason}")]
    Corrupt { msg_id: String, reason: String },
    #[error("the task database writer thread has stopped: {0}")]
    WriterStopped(String),
    #[cfg(feature = "mongodb")]
    #[error("MongoDB task database: {0}")]
    Mongo(#[from] mongodb::error::Error),
    #[error("I/O error on {path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
}

impl DbError {
    /// The Python exception class ipyparallel raises for the same failure (for `ename` in
    /// error replies): lookups are `KeyError`, bad values `ValueError`, the rest `RuntimeError`.
    pub fn python_ename(&self) -> &'static str {
        match self {
            DbError::NotFound(_)
            | DbError::Culled(_)
            | DbError::NoData
            | DbError::UnknownKey(_)
            | DbError::Query(_) => "KeyError",
            DbError::BadFieldValue { .. } | DbError::BadRecord(_) | DbError::MissingMsgId => {
                "ValueError"
            }
            _ => "RuntimeError",
        }
    }

    /// True for "this id is not in the database" (never stored, dropped, or culled).
    pub fn is_missing(&self) -> bool {
        matches!(self, DbError::NotFound(_) | DbError::Culled(_))
    }
}
