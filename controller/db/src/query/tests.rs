//! Parser and evaluator tests of the query language (backend behaviour is in `conformance`).

use super::*;
use crate::error::QueryError;
use serde_json::json;

fn err(q: serde_json::Value) -> QueryError {
    Query::parse(&q).unwrap_err()
}

#[test]
fn parse_errors_are_typed() {
    assert!(matches!(err(json!({"nope": 1})), QueryError::UnknownField(f) if f == "nope"));
    assert!(matches!(
        err(json!({"queue.x": 1})),
        QueryError::UnknownField(_)
    ));
    assert!(matches!(
        err(json!({"header..x": 1})),
        QueryError::UnknownField(_)
    ));
    assert!(matches!(
        err(json!({"queue": {"$regex": "x"}})),
        QueryError::UnknownOperator { field, op } if field == "queue" && op == "$regex"
    ));
    assert!(matches!(
        err(json!({"queue": {"$eq": 1, "x": 2}})),
        QueryError::MixedOperators { .. }
    ));
    assert!(matches!(err(json!([1])), QueryError::NotAnObject(_)));
    assert!(matches!(
        err(json!({"submitted": {"$lt": "yesterday"}})),
        QueryError::BadValue { op: "$lt", .. }
    ));
    assert!(matches!(
        err(json!({"submitted": {"$lt": 5}})),
        QueryError::BadValue { .. }
    ));
    assert!(matches!(
        err(json!({"queue": 5})),
        QueryError::BadValue { op: "$eq", .. }
    ));
    assert!(matches!(
        err(json!({"queue": {"$in": "task"}})),
        QueryError::BadValue { op: "$in", .. }
    ));
    assert!(matches!(
        err(json!({"queue": {"$lt": null}})),
        QueryError::BadValue { .. }
    ));
    assert!(matches!(
        err(json!({"queue": {"$mod": [2, 0]}})),
        QueryError::OperatorNotForField { op: "$mod", .. }
    ));
    assert!(matches!(
        err(json!({"header.n": {"$mod": [0, 0]}})),
        QueryError::BadValue { .. }
    ));
    assert!(matches!(
        err(json!({"header.n": {"$mod": [2]}})),
        QueryError::BadValue { .. }
    ));
    assert!(matches!(
        err(json!({"submitted": {"$glob": "2026*"}})),
        QueryError::OperatorNotForField { op: "$glob", .. }
    ));
    assert!(matches!(
        err(json!({"label": {"$glob": 3}})),
        QueryError::BadValue { .. }
    ));
    assert!(matches!(
        err(json!({"buffers": {"$lt": "x"}})),
        QueryError::OperatorNotForField { .. }
    ));
    assert!(matches!(
        err(json!({"label": {"$exists": "yes"}})),
        QueryError::BadValue { .. }
    ));
    let msg = err(json!({"queue": {"$regex": "x"}})).to_string();
    assert!(msg.contains("$regex") && msg.contains("queue"), "{msg}");
}

#[test]
fn null_and_empty_queries_match_everything() {
    let r = TaskRecord::new("x");
    assert!(Query::parse(&serde_json::Value::Null).unwrap().matches(&r));
    assert!(Query::parse(&json!({})).unwrap().matches(&r));
    assert!(Query::parse(&json!({"queue": {}})).unwrap().matches(&r));
}

#[test]
fn gt_is_greater_than_not_less_than() {
    // ipyparallel's DictDB evaluates $gt as $lt; ours must not.
    let mut r = TaskRecord::new("x");
    r.submitted = parse_iso("2026-01-01T00:00:10Z");
    let q = |op: &str, s: &str| {
        Query::parse(&json!({"submitted": {op: s}}))
            .unwrap()
            .matches(&r)
    };
    assert!(q("$gt", "2026-01-01T00:00:05Z"));
    assert!(!q("$gt", "2026-01-01T00:00:15Z"));
    assert!(!q("$gt", "2026-01-01T00:00:10Z"));
    assert!(q("$gte", "2026-01-01T00:00:10Z"));
    assert!(q("$lt", "2026-01-01T00:00:15Z"));
    assert!(!q("$lt", "2026-01-01T00:00:05Z"));
}

#[test]
fn type_mismatch_never_matches() {
    let mut r = TaskRecord::new("x");
    r.header = Some(json!({"n": "5", "b": true}));
    let m = |q: serde_json::Value| Query::parse(&q).unwrap().matches(&r);
    assert!(!m(json!({"header.n": 5})));
    assert!(!m(json!({"header.n": {"$lt": 9}})));
    assert!(m(json!({"header.n": {"$ne": 5}})));
    assert!(m(json!({"header.b": true})));
    assert!(!m(json!({"header.n": {"$mod": [5, 0]}})));
    assert!(m(json!({"header.missing": null})));
}

#[test]
fn msg_ids_helper_and_fields() {
    let q = Query::msg_ids(&["a", "b"]);
    assert!(q.matches(&TaskRecord::new("a")));
    assert!(!q.matches(&TaskRecord::new("c")));
    let q =
        Query::parse(&json!({"header.x": 1, "queue": "t", "header": {"$exists": true}})).unwrap();
    assert_eq!(q.fields(), vec![Field::Header, Field::Queue]);
}
