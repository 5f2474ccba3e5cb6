//! The no-op task database (ipyparallel's `NoDB`, `--nodb`): keeps the hub's memory flat by
//! storing nothing. Writes succeed and vanish; every read fails with [`DbError::NoData`],
//! whose message says how to enable a database.

use crate::config::Backend;
use crate::error::DbError;
use crate::query::Query;
use crate::record::{Field, Stream, TaskRecord};
use crate::TaskDb;

/// The no-op backend.
#[derive(Debug, Default, Clone, Copy)]
pub struct NoDb;

impl TaskDb for NoDb {
    fn backend(&self) -> Backend {
        Backend::No
    }

    fn add_record(&mut self, _rec: TaskRecord) -> Result<(), DbError> {
        Ok(())
    }

    fn update_record(&mut self, _msg_id: &str, _patch: TaskRecord) -> Result<(), DbError> {
        Ok(())
    }

    fn add_raw(&mut self, _w: crate::RawWrite) -> Result<(), DbError> {
        Ok(())
    }

    fn update_raw(&mut self, _msg_id: &str, _w: crate::RawWrite) -> Result<(), DbError> {
        Ok(())
    }

    fn append_stream(&mut self, _id: &str, _s: Stream, _text: &str) -> Result<(), DbError> {
        Ok(())
    }

    fn get_record(&self, _msg_id: &str) -> Result<TaskRecord, DbError> {
        Err(DbError::NoData)
    }

    fn get_records(&self, _ids: &[String]) -> Result<Vec<Result<TaskRecord, DbError>>, DbError> {
        Err(DbError::NoData)
    }

    fn find_records(
        &self,
        _q: &Query,
        _keys: Option<&[Field]>,
    ) -> Result<Vec<TaskRecord>, DbError> {
        Err(DbError::NoData)
    }

    fn get_history(&self) -> Result<Vec<String>, DbError> {
        Err(DbError::NoData)
    }

    fn drop_record(&mut self, _msg_id: &str) -> Result<bool, DbError> {
        Ok(false)
    }

    fn drop_matching_records(&mut self, _q: &Query) -> Result<usize, DbError> {
        Ok(0)
    }

    fn flush(&mut self) -> Result<(), DbError> {
        Ok(())
    }

    fn close(&mut self) -> Result<(), DbError> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stores_nothing_and_says_how_to_enable_a_db() {
        let mut db = NoDb;
        db.add_record(TaskRecord::new("a")).unwrap();
        db.append_stream("a", Stream::Stdout, "x").unwrap();
        let e = db.get_record("a").unwrap_err();
        assert!(matches!(e, DbError::NoData));
        let msg = e.to_string();
        assert!(
            msg.contains("--dictdb") && msg.contains("--sqlitedb"),
            "{msg}"
        );
        assert!(msg.contains("db_class"), "{msg}");
        assert_eq!(e.python_ename(), "KeyError");
        assert!(matches!(
            db.find_records(&Query::all(), None),
            Err(DbError::NoData)
        ));
        assert!(matches!(db.get_history(), Err(DbError::NoData)));
        assert!(matches!(
            db.get_records(&["a".into()]),
            Err(DbError::NoData)
        ));
        assert_eq!(db.drop_matching_records(&Query::all()).unwrap(), 0);
    }
}
