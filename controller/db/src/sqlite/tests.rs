//! SQLite backend tests: the shared conformance suite on a temp file, persistence across
//! reopen, reads of writes the writer has not committed yet, schema clashes.

use super::*;
use crate::conformance;
use serde_json::json;
use std::sync::atomic::{AtomicUsize, Ordering};

fn tmp() -> tempfile::TempDir {
    tempfile::tempdir().expect("temp dir")
}

fn count_committed(path: &Path, table: &str) -> i64 {
    let c = Connection::open(path).unwrap();
    c.query_row(&format!("SELECT count(*) FROM {}", ident(table)), [], |r| {
        r.get(0)
    })
    .unwrap()
}

#[test]
fn conformance_suite() {
    let dir = tmp();
    let n = AtomicUsize::new(0);
    conformance::run_all(&mut || {
        let t = format!("t{}", n.fetch_add(1, Ordering::SeqCst));
        Box::new(SqliteDb::open_path(&dir.path().join("tasks.db"), &t).unwrap())
    });
}

#[test]
fn conformance_after_commit() {
    // Same suite, but every read goes to committed rows (flush after each write would be
    // ideal; closing and reopening between phases is covered by `persists_across_reopen`).
    let dir = tmp();
    let n = AtomicUsize::new(0);
    conformance::run_all(&mut || {
        let t = format!("c{}", n.fetch_add(1, Ordering::SeqCst));
        Box::new(FlushingDb(
            SqliteDb::open_path(&dir.path().join("tasks.db"), &t).unwrap(),
        ))
    });
}

/// Flushes after every write, so reads see the committed rows, not the overlay.
struct FlushingDb(SqliteDb);

impl TaskDb for FlushingDb {
    fn backend(&self) -> Backend {
        self.0.backend()
    }
    fn add_record(&mut self, rec: TaskRecord) -> Result<(), DbError> {
        self.0.add_record(rec)?;
        self.0.flush()
    }
    fn update_record(&mut self, id: &str, p: TaskRecord) -> Result<(), DbError> {
        self.0.update_record(id, p)?;
        self.0.flush()
    }
    fn append_stream(&mut self, id: &str, s: Stream, t: &str) -> Result<(), DbError> {
        self.0.append_stream(id, s, t)?;
        self.0.flush()
    }
    fn get_record(&self, id: &str) -> Result<TaskRecord, DbError> {
        assert!(self.0.shared.overlay().is_empty());
        self.0.get_record(id)
    }
    fn find_records(&self, q: &Query, k: Option<&[Field]>) -> Result<Vec<TaskRecord>, DbError> {
        assert!(self.0.shared.overlay().is_empty());
        self.0.find_records(q, k)
    }
    fn get_history(&self) -> Result<Vec<String>, DbError> {
        self.0.get_history()
    }
    fn drop_record(&mut self, id: &str) -> Result<bool, DbError> {
        let r = self.0.drop_record(id)?;
        self.0.flush()?;
        Ok(r)
    }
    fn drop_matching_records(&mut self, q: &Query) -> Result<usize, DbError> {
        let r = self.0.drop_matching_records(q)?;
        self.0.flush()?;
        Ok(r)
    }
    fn flush(&mut self) -> Result<(), DbError> {
        self.0.flush()
    }
    fn close(&mut self) -> Result<(), DbError> {
        self.0.close()
    }
}

#[test]
fn persists_across_reopen() {
    let dir = tmp();
    let cfg = DbConfig {
        backend: Backend::Sqlite,
        session: "s-1".into(),
        profile_dir: Some(dir.path().to_path_buf()),
        sqlite: crate::config::SqliteConfig {
            table: Some("keep".into()),
            ..Default::default()
        },
        ..Default::default()
    };
    {
        let mut db = crate::open(&cfg).unwrap();
        let mut r = TaskRecord::new("old");
        r.submitted = rpar_core::ids::parse_iso("2026-01-01T00:00:00Z");
        r.result_buffers = Some(vec![b"result".to_vec()]);
        r.result_content = Some(json!({"status": "ok"}));
        db.add_record(r).unwrap();
        db.append_stream("old", Stream::Stdout, "printed").unwrap();
        db.close().unwrap();
    }
    let mut db = crate::open(&cfg).unwrap();
    assert!(dir.path().join("tasks.db").exists());
    let r = db.get_record("old").unwrap();
    assert_eq!(r.stdout.as_deref(), Some("printed"));
    assert_eq!(r.result_buffers, Some(vec![b"result".to_vec()]));
    assert_eq!(r.result_content, Some(json!({"status": "ok"})));
    assert_eq!(db.get_history().unwrap(), vec!["old"]);
    // New writes after the reopen continue the sequence and are seen.
    db.append_stream("old", Stream::Stdout, "+more").unwrap();
    assert_eq!(
        db.get_record("old").unwrap().stdout.as_deref(),
        Some("printed+more")
    );
    db.close().unwrap();

    // Without a table name, each session gets its own table.
    let fresh = DbConfig {
        sqlite: Default::default(),
        ..cfg.clone()
    };
    let db = SqliteDb::open(&fresh).unwrap();
    assert_eq!(db.table(), "_s_1");
    assert!(matches!(db.get_record("old"), Err(DbError::NotFound(_))));
}

#[test]
fn reads_see_uncommitted_writes() {
    let dir = tmp();
    let path = dir.path().join("tasks.db");
    let mut db = SqliteDb::open_path(&path, "t").unwrap();
    db.add_record(TaskRecord::new("gone")).unwrap();
    db.flush().unwrap();

    // Hold the writer: everything below stays in the overlay.
    let (release, stalled) = mpsc::channel();
    db.tx.as_ref().unwrap().send(Msg::Stall(stalled)).unwrap();
    let mut r = TaskRecord::new("a");
    r.submitted = rpar_core::ids::parse_iso("2026-01-01T00:00:00Z");
    r.buffers = Some(vec![vec![9; 10]]);
    db.add_record(r).unwrap();
    db.append_stream("a", Stream::Stdout, "x").unwrap();
    db.append_stream("a", Stream::Stdout, "y").unwrap();
    db.append_stream("b", Stream::Stderr, "iopub first")
        .unwrap();
    assert!(db.drop_record("gone").unwrap());

    assert_eq!(
        count_committed(&path, "t"),
        1,
        "nothing new is committed yet"
    );
    assert_eq!(db.get_record("a").unwrap().stdout.as_deref(), Some("xy"));
    assert_eq!(db.get_record("a").unwrap().buffers, Some(vec![vec![9; 10]]));
    assert!(matches!(db.get_record("gone"), Err(DbError::NotFound(_))));
    let q = Query::parse(&json!({"stderr": {"$glob": "iopub*"}})).unwrap();
    assert_eq!(db.find_records(&q, Some(&[])).unwrap().len(), 1);
    assert_eq!(db.get_history().unwrap(), vec!["a"]);

    release.send(()).unwrap();
    db.flush().unwrap();
    assert!(db.shared.overlay().is_empty());
    assert_eq!(count_committed(&path, "t"), 2);
    assert_eq!(db.get_record("a").unwrap().stdout.as_deref(), Some("xy"));
}

#[test]
fn appends_are_never_doubled_while_the_writer_commits() {
    // Reads race the writer's commits; each must see every append exactly once.
    let dir = tmp();
    let mut db = SqliteDb::open_path(&dir.path().join("tasks.db"), "t").unwrap();
    for i in 0..1500 {
        db.append_stream("m", Stream::Stdout, "x").unwrap();
        if i % 3 == 0 {
            let got = db.get_record("m").unwrap().stdout.unwrap_or_default();
            assert_eq!(got.len(), i + 1, "after {} appends", i + 1);
        }
    }
    db.close().unwrap();
}

#[test]
fn foreign_schema_gets_a_suffixed_table() {
    let dir = tmp();
    let path = dir.path().join("tasks.db");
    {
        // ipyparallel's own schema (pickled `bufs blob`): not ours.
        let c = Connection::open(&path).unwrap();
        c.execute_batch(
            "CREATE TABLE \"tasks\" (msg_id text PRIMARY KEY, header dict text, metadata dict text, \
             content dict text, buffers bufs blob, submitted timestamp, client_uuid text, \
             engine_uuid text, started timestamp, completed timestamp, resubmitted text, \
             received timestamp, result_header dict text, result_metadata dict text, \
             result_content dict text, result_buffers bufs blob, queue text, execute_input text, \
             execute_result text, error text, stdout text, stderr text, label text);
             CREATE TABLE \"tasks_1\" (x int);",
        )
        .unwrap();
    }
    let mut db = SqliteDb::open_path(&path, "tasks").unwrap();
    assert_eq!(db.table(), "tasks_2");
    db.add_record(TaskRecord::new("z")).unwrap();
    db.close().unwrap();
    // Reopening finds our table again under the same suffix.
    let db = SqliteDb::open_path(&path, "tasks").unwrap();
    assert_eq!(db.table(), "tasks_2");
    assert!(db.get_record("z").is_ok());
}

#[test]
fn writes_after_close_fail_cleanly() {
    let dir = tmp();
    let mut db = SqliteDb::open_path(&dir.path().join("tasks.db"), "t").unwrap();
    db.close().unwrap();
    assert!(matches!(
        db.add_record(TaskRecord::new("a")),
        Err(DbError::WriterStopped(_))
    ));
    assert!(matches!(db.flush(), Err(DbError::WriterStopped(_))));
}

#[test]
fn a_batch_folds_each_record_like_the_memory_db() {
    // Queue a tricky sequence while the writer is held, so it lands in one transaction, then
    // compare the committed rows (after a reopen) with the memory backend given the same ops.
    let dir = tmp();
    let path = dir.path().join("tasks.db");
    let mut sql = SqliteDb::open_path(&path, "t").unwrap();
    let mut mem = crate::MemoryDb::default();
    sql.add_record(TaskRecord::new("pre")).unwrap();
    sql.append_stream("pre", Stream::Stdout, "old;").unwrap();
    sql.flush().unwrap();
    mem.add_record(TaskRecord::new("pre")).unwrap();
    mem.append_stream("pre", Stream::Stdout, "old;").unwrap();

    let (release, stalled) = mpsc::channel();
    sql.tx.as_ref().unwrap().send(Msg::Stall(stalled)).unwrap();
    let dbs: [&mut dyn TaskDb; 2] = [&mut sql, &mut mem];
    for db in dbs {
        let mut req = TaskRecord::new("a");
        req.buffers = Some(vec![vec![1; 1000]]);
        req.submitted = rpar_core::ids::parse_iso("2026-01-01T00:00:00Z");
        db.append_stream("a", Stream::Stdout, "early;").unwrap();
        db.add_record(req).unwrap();
        db.append_stream("a", Stream::Stdout, "1;").unwrap();
        let mut done = TaskRecord::default();
        done.completed = rpar_core::ids::parse_iso("2026-01-01T00:00:01Z");
        done.result_buffers = Some(vec![vec![2; 10]]);
        db.update_record("a", done).unwrap();
        db.append_stream("a", Stream::Stderr, "e").unwrap();
        // Append, set, append: the set replaces the first append; the last lands after it.
        db.append_stream("pre", Stream::Stdout, "lost;").unwrap();
        let mut set = TaskRecord::default();
        set.stdout = Some("reset;".into());
        db.update_record("pre", set).unwrap();
        db.append_stream("pre", Stream::Stdout, "after").unwrap();
        // Drop and re-create within the batch.
        db.add_record(TaskRecord::new("b")).unwrap();
        db.drop_record("b").unwrap();
        db.append_stream("b", Stream::Stderr, "reborn").unwrap();
        // Drop only.
        db.add_record(TaskRecord::new("c")).unwrap();
        db.drop_record("c").unwrap();
    }
    release.send(()).unwrap();
    sql.close().unwrap();
    let sql = SqliteDb::open_path(&path, "t").unwrap();
    let all = |db: &dyn TaskDb| db.find_records(&Query::all(), None).unwrap();
    let (got, want) = (all(&sql), all(&mem));
    assert_eq!(got.len(), 3, "{got:?}");
    let by_id =
        |v: &[TaskRecord], id: &str| v.iter().find(|r| r.msg_id.as_deref() == Some(id)).cloned();
    for id in ["a", "b", "pre"] {
        assert_eq!(by_id(&got, id), by_id(&want, id), "record {id}");
    }
    let a = by_id(&got, "a").unwrap();
    assert_eq!(a.stdout.as_deref(), Some("early;1;"));
    assert_eq!(
        by_id(&got, "pre").unwrap().stdout.as_deref(),
        Some("reset;after")
    );
    assert!(by_id(&got, "c").is_none());
}

#[test]
fn backlog_is_bounded_and_drains() {
    let dir = tmp();
    let mut db = SqliteDb::open_path(&dir.path().join("tasks.db"), "t").unwrap();
    db.set_max_backlog(3_000_000);
    let (release, stalled) = mpsc::channel();
    db.tx.as_ref().unwrap().send(Msg::Stall(stalled)).unwrap();
    let big = |i: usize| {
        let mut r = TaskRecord::new(format!("m{i}"));
        r.buffers = Some(vec![vec![0; 1_000_000]]);
        r
    };
    for i in 0..3 {
        db.add_record(big(i)).unwrap();
    }
    assert_eq!(db.backlog(), 3_000_000);
    // The next write must wait for the writer: release it from another thread later.
    let t0 = std::time::Instant::now();
    let releaser = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(300));
        release.send(()).unwrap();
    });
    db.add_record(big(3)).unwrap();
    assert!(
        t0.elapsed() >= Duration::from_millis(250),
        "{:?}",
        t0.elapsed()
    );
    releaser.join().unwrap();
    db.flush().unwrap();
    assert_eq!(db.backlog(), 0);
    assert_eq!(db.find_records(&Query::all(), Some(&[])).unwrap().len(), 4);
}
