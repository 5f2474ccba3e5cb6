//! A backend-independent test suite: every backend's tests call [`run_all`] with a factory of
//! fresh, empty databases, so the memory, SQLite and MongoDB backends are held to the same
//! semantics (merging, lookups, history, purge, every query operator, key selection).

use serde_json::{json, Value};
use std::collections::BTreeSet;

use crate::error::DbError;
use crate::query::Query;
use crate::record::{parse_keys, Field, Stream, TaskRecord};
use crate::TaskDb;
use rpar_core::ids::parse_iso;

pub type Factory<'a> = dyn FnMut() -> Box<dyn TaskDb> + 'a;

/// Run every check, each on a fresh database.
pub fn run_all(make: &mut Factory<'_>) {
    merge_and_lookup(make().as_mut());
    history_and_drop(make().as_mut());
    operators(make().as_mut());
    key_selection(make().as_mut());
    round_trips(make().as_mut());
}

fn t(sec: u32) -> Option<chrono::DateTime<chrono::Utc>> {
    parse_iso(&format!("2026-01-01T00:00:{sec:02}.000100Z"))
}

/// The request part of a record, as the hub writes it when a request is seen.
fn request(id: &str, sec: u32) -> TaskRecord {
    let mut r = TaskRecord::new(id);
    r.header =
        Some(json!({"msg_id": id, "msg_type": "apply_request", "date": "2026-01-01T00:00:00Z"}));
    r.metadata = Some(json!({}));
    r.content = Some(json!({}));
    r.buffers = Some(vec![b"arg".to_vec()]);
    r.submitted = t(sec);
    r.client_uuid = Some("client".into());
    r.queue = Some("task".into());
    r
}

fn merge_and_lookup(db: &mut dyn TaskDb) {
    // IOPub first: the record exists before its request.
    db.append_stream("m1", Stream::Stdout, "hel").unwrap();
    db.append_stream("m1", Stream::Stdout, "lo").unwrap();
    db.add_record(request("m1", 1)).unwrap();
    let r = db.get_record("m1").unwrap();
    assert_eq!(
        r.stdout.as_deref(),
        Some("hello"),
        "stream kept through the request merge"
    );
    assert_eq!(r.queue.as_deref(), Some("task"));
    assert_eq!(r.submitted, t(1));
    assert_eq!(r.buffers, Some(vec![b"arg".to_vec()]));

    // Result: merge only what is set.
    let mut res = TaskRecord::default();
    res.completed = t(2);
    res.engine_uuid = Some("eng".into());
    res.result_buffers = Some(vec![b"r0".to_vec(), vec![]]);
    db.update_record("m1", res).unwrap();
    db.append_stream("m1", Stream::Stderr, "warn").unwrap();
    let r = db.get_record("m1").unwrap();
    assert_eq!(r.completed, t(2));
    assert_eq!(r.queue.as_deref(), Some("task"));
    assert_eq!(r.result_buffers, Some(vec![b"r0".to_vec(), vec![]]));
    assert_eq!(r.stderr.as_deref(), Some("warn"));
    assert_eq!(r.stdout.as_deref(), Some("hello"));

    // update of an absent record creates it.
    let mut p = TaskRecord::default();
    p.engine_uuid = Some("e".into());
    db.update_record("m2", p).unwrap();
    assert_eq!(db.get_record("m2").unwrap().msg_id.as_deref(), Some("m2"));

    assert!(matches!(db.get_record("nope"), Err(DbError::NotFound(id)) if id == "nope"));
    assert!(matches!(
        db.add_record(TaskRecord::default()),
        Err(DbError::MissingMsgId)
    ));

    let got = db
        .get_records(&["m2".into(), "nope".into(), "m1".into()])
        .unwrap();
    assert_eq!(got.len(), 3);
    assert_eq!(got[0].as_ref().unwrap().msg_id.as_deref(), Some("m2"));
    assert!(matches!(got[1], Err(DbError::NotFound(_))));
    assert_eq!(got[2].as_ref().unwrap().msg_id.as_deref(), Some("m1"));
    db.close().unwrap();
}

fn history_and_drop(db: &mut dyn TaskDb) {
    db.add_record(request("late", 9)).unwrap();
    db.add_record(request("early", 1)).unwrap();
    db.append_stream("orphan", Stream::Stdout, "x").unwrap();
    db.add_record(request("mid", 5)).unwrap();
    assert_eq!(db.get_history().unwrap(), vec!["early", "mid", "late"]);

    assert!(db.drop_record("mid").unwrap());
    assert!(!db.drop_record("mid").unwrap());
    assert!(matches!(db.get_record("mid"), Err(DbError::NotFound(_))));
    assert_eq!(db.get_history().unwrap(), vec!["early", "late"]);

    let mut done = TaskRecord::default();
    done.completed = t(10);
    db.update_record("late", done).unwrap();
    // purge "all": drop every completed record.
    let q = Query::parse(&json!({"completed": {"$ne": null}})).unwrap();
    assert_eq!(db.drop_matching_records(&q).unwrap(), 1);
    assert_eq!(db.get_history().unwrap(), vec!["early"]);
    assert!(db.get_record("orphan").is_ok());
    db.flush().unwrap();
    db.close().unwrap();
}

fn dataset(db: &mut dyn TaskDb) {
    let mut a1 = request("a1", 1);
    a1.completed = t(2);
    a1.engine_uuid = Some("e-1".into());
    a1.label = Some("alpha".into());
    a1.stdout = Some("hello".into());
    a1.header = Some(json!({"msg_type": "apply_request", "n": 1}));
    a1.metadata = Some(json!({"tags": ["x", "y"]}));
    a1.result_content = Some(json!({"status": "ok"}));
    db.add_record(a1).unwrap();

    let mut a2 = request("a2", 3);
    a2.queue = Some("mux".into());
    a2.engine_uuid = Some("e-2".into());
    a2.header = Some(json!({"msg_type": "execute_request", "n": 2}));
    a2.metadata = Some(json!({"tags": ["y"]}));
    a2.buffers = None;
    db.add_record(a2).unwrap();

    let mut b3 = request("b3", 5);
    b3.completed = t(6);
    b3.engine_uuid = Some("e-1".into());
    b3.label = Some("beta".into());
    b3.stderr = Some("oops".into());
    b3.header = Some(json!({"n": 3}));
    b3.buffers = None;
    b3.result_content = Some(json!({"status": "error"}));
    b3.error = Some(json!({"ename": "ZeroDivisionError"}));
    db.add_record(b3).unwrap();

    db.append_stream("c4", Stream::Stdout, "stray").unwrap();
}

fn ids(db: &dyn TaskDb, q: &Value) -> BTreeSet<String> {
    let query = Query::parse(q).unwrap_or_else(|e| panic!("{q}: {e}"));
    db.find_records(&query, None)
        .unwrap_or_else(|e| panic!("{q}: {e}"))
        .into_iter()
        .filter_map(|r| r.msg_id)
        .collect()
}

fn operators(db: &mut dyn TaskDb) {
    dataset(db);
    let d = |s: u32| format!("2026-01-01T00:00:{s:02}Z");
    let cases: Vec<(Value, &[&str])> = vec![
        (json!({}), &["a1", "a2", "b3", "c4"]),
        (json!({"queue": "task"}), &["a1", "b3"]),
        (json!({"queue": null}), &["c4"]),
        (json!({"label": {"$eq": "alpha"}}), &["a1"]),
        (json!({"label": {"$ne": "alpha"}}), &["a2", "b3", "c4"]),
        (json!({"label": {"$ne": null}}), &["a1", "b3"]),
        (json!({"label": {"$eq": null}}), &["a2", "c4"]),
        (json!({"submitted": {"$lt": d(3)}}), &["a1"]),
        (
            json!({"submitted": {"$lte": "2026-01-01T00:00:03.000100Z"}}),
            &["a1", "a2"],
        ),
        (json!({"submitted": {"$gt": d(3)}}), &["a2", "b3"]),
        (
            json!({"submitted": {"$gt": "2026-01-01T00:00:03.000100Z"}}),
            &["b3"],
        ),
        (
            json!({"submitted": {"$gte": "2026-01-01T00:00:03.000100+00:00"}}),
            &["a2", "b3"],
        ),
        (
            json!({"submitted": {"$gt": d(0), "$lt": d(4)}}),
            &["a1", "a2"],
        ),
        (
            json!({"submitted": "2026-01-01T01:00:01.000100+01:00"}),
            &["a1"],
        ),
        (json!({"submitted": null}), &["c4"]),
        (json!({"completed": {"$exists": true}}), &["a1", "b3"]),
        (json!({"completed": {"$exists": false}}), &["a2", "c4"]),
        (json!({"completed": {"$lt": d(3)}}), &["a1"]),
        (json!({"engine_uuid": {"$in": ["e-2", "zzz"]}}), &["a2"]),
        (
            json!({"engine_uuid": {"$in": ["e-2", null]}}),
            &["a2", "c4"],
        ),
        (json!({"engine_uuid": {"$in": []}}), &[]),
        (json!({"engine_uuid": {"$nin": ["e-1"]}}), &["a2", "c4"]),
        (json!({"engine_uuid": {"$nin": ["e-1", null]}}), &["a2"]),
        (
            json!({"engine_uuid": {"$nin": []}}),
            &["a1", "a2", "b3", "c4"],
        ),
        (json!({"msg_id": {"$glob": "a*"}}), &["a1", "a2"]),
        (json!({"msg_id": {"$glob": "[!a]?"}}), &["b3", "c4"]),
        (json!({"msg_id": {"$glob": "[a-b][13]"}}), &["a1", "b3"]),
        (json!({"msg_id": {"$glob": "A*"}}), &[]),
        (json!({"stdout": {"$glob": "*ll*"}}), &["a1"]),
        (json!({"label": {"$glob": "*"}}), &["a1", "b3"]),
        (json!({"stdout": ""}), &["a2", "b3"]),
        (json!({"stderr": {"$gt": ""}}), &["b3"]),
        (json!({"label": {"$lt": "b"}}), &["a1"]),
        (json!({"label": {"$all": ["alpha"]}}), &["a1"]),
        (json!({"label": {"$all": []}}), &[]),
        (json!({"header.msg_type": "apply_request"}), &["a1"]),
        (json!({"header.n": {"$gt": 1}}), &["a2", "b3"]),
        (json!({"header.n": {"$lte": 2.5}}), &["a1", "a2"]),
        (json!({"header.n": {"$mod": [2, 1]}}), &["a1", "b3"]),
        (
            json!({"header.msg_type": {"$glob": "*_request"}}),
            &["a1", "a2"],
        ),
        (json!({"metadata.tags": {"$all": ["x", "y"]}}), &["a1"]),
        (json!({"metadata.tags": {"$all": ["y"]}}), &["a1", "a2"]),
        (json!({"metadata.tags.0": "y"}), &["a2"]),
        (json!({"result_content": {"status": "ok"}}), &["a1"]),
        (
            json!({"result_content.status": {"$in": ["error", "aborted"]}}),
            &["b3"],
        ),
        (json!({"error": {"$exists": true}}), &["b3"]),
        (json!({"error": null}), &["a1", "a2", "c4"]),
        (json!({"buffers": {"$exists": true}}), &["a1"]),
        (json!({"result_buffers": null}), &["a1", "a2", "b3", "c4"]),
        (json!({"queue": "task", "label": "beta"}), &["b3"]),
        (
            json!({"msg_id": {"$in": ["a1", "b3", "nope"]}}),
            &["a1", "b3"],
        ),
        (json!({"msg_id": "a2"}), &["a2"]),
        (json!({"msg_id": {"$in": ["a1"]}, "queue": "mux"}), &[]),
    ];
    for (q, want) in cases {
        let want: BTreeSet<String> = want.iter().map(|s| s.to_string()).collect();
        assert_eq!(ids(db, &q), want, "query {q}");
    }
    db.close().unwrap();
}

fn key_selection(db: &mut dyn TaskDb) {
    dataset(db);
    let keys = parse_keys(&json!(["header", "buffers", "completed"])).unwrap();
    let q = Query::parse(&json!({"msg_id": {"$in": ["a1", "a2"]}})).unwrap();
    let mut recs = db.find_records(&q, keys.as_deref()).unwrap();
    recs.sort_by(|a, b| a.msg_id.cmp(&b.msg_id));
    assert_eq!(recs.len(), 2);
    let a1 = &recs[0];
    assert_eq!(a1.msg_id.as_deref(), Some("a1"));
    assert_eq!(
        a1.header,
        Some(json!({"msg_type": "apply_request", "n": 1}))
    );
    assert_eq!(a1.buffers, Some(vec![b"arg".to_vec()]));
    assert_eq!(a1.completed, t(2));
    assert_eq!(a1.queue, None, "unrequested field left out");
    assert_eq!(a1.result_content, None);
    assert_eq!(
        a1.to_json(keys.as_deref()),
        json!({"msg_id": "a1", "header": {"msg_type": "apply_request", "n": 1},
               "completed": "2026-01-01T00:00:02.000100Z"})
    );
    assert_eq!(recs[1].buffers, None);
    // Projection on a field the query tests but the keys do not name.
    let only = db
        .find_records(
            &Query::parse(&json!({"label": "beta"})).unwrap(),
            Some(&[Field::Stderr]),
        )
        .unwrap();
    assert_eq!(only.len(), 1);
    assert_eq!(only[0].stderr.as_deref(), Some("oops"));
    assert_eq!(only[0].label, None);
    db.close().unwrap();
}

fn round_trips(db: &mut dyn TaskDb) {
    let mut r = request("rt", 1);
    r.buffers = Some(vec![vec![], vec![0, 255, 0, 1], vec![42; 100_000]]);
    r.result_buffers = Some(vec![]);
    r.started = parse_iso("2026-11-24T07:08:29.504717Z");
    r.received = parse_iso("2026-11-24T07:08:29.561225+00:00");
    r.execute_result = Some(json!({"data": {"text/plain": "2"}, "execution_count": 1}));
    r.error = Some(json!({"ename": "E", "evalue": "v", "traceback": ["a", "b"]}));
    r.execute_input = Some("1+1".into());
    r.resubmitted = Some("new".into());
    r.label = Some("ünïcode ✓".into());
    r.result_metadata = Some(json!({"engine": "u", "status": "ok"}));
    r.result_header = Some(json!({"msg_id": "rep"}));
    r.stdout = Some(String::new());
    db.add_record(r.clone()).unwrap();
    db.flush().unwrap();
    let got = db.get_record("rt").unwrap();
    let norm = |mut x: TaskRecord| {
        // An empty buffer list may come back as none; stdout "" may come back unset.
        if x.result_buffers.as_ref().is_some_and(Vec::is_empty) {
            x.result_buffers = None;
        }
        if x.stdout.as_deref() == Some("") {
            x.stdout = None;
        }
        x
    };
    assert_eq!(norm(got), norm(r));
    db.close().unwrap();
}
