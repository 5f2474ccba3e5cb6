//! Load-balanced task scheduler behaviour, driven through the public sans-I/O API.

mod common;
use common::*;
use rpar_core::wire::{Signer, DELIM};
use rpar_sched::{Scheme, TaskAction};
use serde_json::{json, Value};
use std::time::Instant;

fn add(s: &mut rpar_sched::TaskScheduler, n: u32, now: Instant) {
    for i in 0..n {
        assert!(s.add_engine(&uuid(i), i, now).is_empty());
    }
}

fn plain() -> Value {
    lb_md(json!([]), json!([]), json!([]), 0.0, 0)
}

/// Submit; return the engine it went to (None if queued or failed).
fn go(s: &mut rpar_sched::TaskScheduler, id: &str, md: Value, now: Instant) -> Option<Vec<u8>> {
    let acts = s.submit(request(id, md), now);
    let v = sent(&acts);
    assert!(v.len() <= 1);
    v.into_iter().next().map(|x| {
        assert_eq!(x.1, id);
        x.0
    })
}

fn hdr(id: &str) -> Vec<u8> {
    header(id, "apply_request", CLIENT_SESSION)
}

#[test]
fn leastload_uses_lru_order_for_ties() {
    let now = Instant::now();
    let mut s = task_sched(Scheme::LeastLoad, 0);
    add(&mut s, 3, now);
    // new engines are inserted at the head of the LRU line: 2, 1, 0
    assert_eq!(go(&mut s, "a", plain(), now), Some(uuid(2)));
    assert_eq!(go(&mut s, "b", plain(), now), Some(uuid(1)));
    assert_eq!(go(&mut s, "c", plain(), now), Some(uuid(0)));
    // all at load 1: least recently used is 2
    assert_eq!(go(&mut s, "d", plain(), now), Some(uuid(2)));
    // engine 0 finishes: it is now the only one at load 0
    let f = finished(s.on_engine_reply(engine_reply(&uuid(0), &hdr("c"), "ok", true), now));
    assert_eq!(f.len(), 1);
    assert_eq!(go(&mut s, "e", plain(), now), Some(uuid(0)));
}

#[test]
fn lru_ignores_load() {
    let now = Instant::now();
    let mut s = task_sched(Scheme::Lru, 0);
    add(&mut s, 2, now);
    assert_eq!(go(&mut s, "a", plain(), now), Some(uuid(1)));
    assert_eq!(go(&mut s, "b", plain(), now), Some(uuid(0)));
    assert_eq!(go(&mut s, "c", plain(), now), Some(uuid(1)));
    assert_eq!(go(&mut s, "d", plain(), now), Some(uuid(0)));
}

#[test]
fn random_schemes_only_pick_candidates_and_respect_hwm() {
    for scheme in [Scheme::PlainRandom, Scheme::TwoBin, Scheme::Weighted] {
        let now = Instant::now();
        let mut s = task_sched(scheme, 2);
        add(&mut s, 3, now);
        let mut count = std::collections::HashMap::new();
        for i in 0..6 {
            let e = go(&mut s, &format!("t{i}"), plain(), now).expect("a slot is free");
            *count.entry(e).or_insert(0) += 1;
        }
        assert!(count.values().all(|&c| c == 2), "{scheme}: {count:?}");
        assert_eq!(go(&mut s, "t6", plain(), now), None, "{scheme}: all full");
        assert_eq!(s.unassigned(), 1);
    }
}

#[test]
fn hwm_queues_and_releases_in_order() {
    let now = Instant::now();
    let mut s = task_sched(Scheme::LeastLoad, 1);
    add(&mut s, 2, now);
    assert_eq!(go(&mut s, "a", plain(), now), Some(uuid(1)));
    assert_eq!(go(&mut s, "b", plain(), now), Some(uuid(0)));
    assert_eq!(go(&mut s, "c", plain(), now), None);
    assert_eq!(go(&mut s, "d", plain(), now), None);
    assert_eq!(s.unassigned(), 2);
    assert_eq!(s.outstanding_on(&uuid(0)), 1);
    let acts = s.on_engine_reply(engine_reply(&uuid(0), &hdr("b"), "ok", true), now);
    assert_eq!(sent(&acts), vec![(uuid(0), "c".to_string())]);
    assert!(acts.iter().any(|a| matches!(a, TaskAction::Assigned { msg_id, engine_uuid } if msg_id == "c" && *engine_uuid == uuid(0))));
    let f = finished(acts);
    assert_eq!(f.len(), 1);
    assert_eq!(f[0].msg_id, "b");
    assert_eq!(s.unassigned(), 1);
    let loads = s.engine_loads();
    assert_eq!(loads.len(), 2);
    assert!(loads.iter().all(|l| l.outstanding == 1));
}

#[test]
fn request_is_forwarded_unchanged_and_reply_routed_to_client() {
    let now = Instant::now();
    let mut s = task_sched(Scheme::LeastLoad, 1);
    add(&mut s, 1, now);
    let req = request("a", plain());
    let acts = s.submit(req.clone(), now);
    let TaskAction::ToEngine(frames) = &acts[0] else {
        panic!("expected ToEngine first: {acts:?}")
    };
    assert_eq!(frames[0], uuid(0));
    assert_eq!(frames[1..], req.clone().into_frames()[..]);
    let rep = engine_reply(&uuid(0), &req.header, "ok", true);
    let f = finished(s.on_engine_reply(rep.clone(), now));
    assert_eq!(f[0].engine, Some(uuid(0)));
    let frames = f[0].reply.clone().into_frames();
    assert_eq!(frames[0], CLIENT);
    assert_eq!(frames[1], uuid(0));
    assert_eq!(frames[2], DELIM);
    // message part unchanged, original signature still valid
    assert_eq!(frames[3..], rep.into_frames()[3..]);
    Signer::new(KEY).verify(&f[0].reply).unwrap();
}

#[test]
fn targets_restrict_engines_and_wait_for_them() {
    let now = Instant::now();
    let mut s = task_sched(Scheme::LeastLoad, 1);
    add(&mut s, 2, now);
    let only1 = || {
        lb_md(
            json!([]),
            json!([]),
            json!([String::from_utf8(uuid(0)).unwrap()]),
            0.0,
            0,
        )
    };
    assert_eq!(go(&mut s, "a", only1(), now), Some(uuid(0)));
    // engine 1 is idle, but b may only run on engine 0
    assert_eq!(go(&mut s, "b", only1(), now), None);
    // an untargeted task submitted later is not blocked by b
    assert_eq!(go(&mut s, "c", plain(), now), Some(uuid(1)));
    let acts = s.on_engine_reply(engine_reply(&uuid(0), &hdr("a"), "ok", true), now);
    assert_eq!(sent(&acts), vec![(uuid(0), "b".to_string())]);
}

#[test]
fn targets_that_are_not_engines_are_impossible() {
    let now = Instant::now();
    let mut s = task_sched(Scheme::LeastLoad, 1);
    add(&mut s, 1, now);
    go(&mut s, "busy", plain(), now);
    let acts = s.submit(
        request("a", lb_md(json!([]), json!([]), json!(["nope"]), 0.0, 0)),
        now,
    );
    let f = finished(acts);
    assert_eq!(f.len(), 1);
    assert_eq!(f[0].ename(), Some("ImpossibleDependency"));
}

#[test]
fn after_waits_for_success() {
    let now = Instant::now();
    let mut s = task_sched(Scheme::LeastLoad, 0);
    add(&mut s, 2, now);
    go(&mut s, "a", plain(), now);
    assert_eq!(
        go(
            &mut s,
            "b",
            lb_md(json!(["a"]), json!([]), json!([]), 0.0, 0),
            now
        ),
        None
    );
    assert_eq!(s.unassigned(), 1);
    let e = s.outstanding_ids(&uuid(1));
    assert_eq!(e, vec!["a"]);
    let acts = s.on_engine_reply(engine_reply(&uuid(1), &hdr("a"), "ok", true), now);
    assert_eq!(sent_ids(&acts), vec!["b"]);
    // already satisfied after: runs at once
    assert!(go(
        &mut s,
        "c",
        lb_md(json!(["a"]), json!([]), json!([]), 0.0, 0),
        now
    )
    .is_some());
}

#[test]
fn after_failure_makes_success_dependency_impossible() {
    let now = Instant::now();
    let mut s = task_sched(Scheme::LeastLoad, 0);
    add(&mut s, 1, now);
    go(&mut s, "a", plain(), now);
    go(
        &mut s,
        "b",
        lb_md(json!(["a"]), json!([]), json!([]), 0.0, 0),
        now,
    );
    let on_fail = json!({"dependencies": ["a"], "all": true, "success": false, "failure": true});
    go(
        &mut s,
        "c",
        lb_md(on_fail, json!([]), json!([]), 0.0, 0),
        now,
    );
    let acts = s.on_engine_reply(engine_reply(&uuid(0), &hdr("a"), "error", true), now);
    assert_eq!(sent_ids(&acts), vec!["c"]);
    let f = finished(acts);
    let names: Vec<_> = f.iter().map(|f| (f.msg_id.as_str(), f.ename())).collect();
    assert_eq!(
        names,
        vec![
            ("a", Some("ValueError")),
            ("b", Some("ImpossibleDependency"))
        ]
    );
    // a dependency that already failed: impossible at submission
    let f = finished(s.submit(
        request("d", lb_md(json!(["a"]), json!([]), json!([]), 0.0, 0)),
        now,
    ));
    assert_eq!(f[0].ename(), Some("ImpossibleDependency"));
}

#[test]
fn after_any() {
    let now = Instant::now();
    let mut s = task_sched(Scheme::LeastLoad, 0);
    add(&mut s, 1, now);
    go(&mut s, "a", plain(), now);
    go(&mut s, "b", plain(), now);
    let any = json!({"dependencies": ["a", "b"], "all": false});
    assert_eq!(
        go(
            &mut s,
            "c",
            lb_md(any.clone(), json!([]), json!([]), 0.0, 0),
            now
        ),
        None
    );
    let acts = s.on_engine_reply(engine_reply(&uuid(0), &hdr("b"), "ok", true), now);
    assert_eq!(sent_ids(&acts), vec!["c"]);
    // any: impossible only when all failed
    go(&mut s, "x", plain(), now);
    go(&mut s, "y", plain(), now);
    go(
        &mut s,
        "z",
        lb_md(
            json!({"dependencies": ["x", "y"], "all": false}),
            json!([]),
            json!([]),
            0.0,
            0,
        ),
        now,
    );
    let f = finished(s.on_engine_reply(engine_reply(&uuid(0), &hdr("x"), "error", true), now));
    assert_eq!(f.len(), 1);
    let f = finished(s.on_engine_reply(engine_reply(&uuid(0), &hdr("y"), "error", true), now));
    let names: Vec<_> = f.iter().map(|f| (f.msg_id.as_str(), f.ename())).collect();
    assert_eq!(
        names,
        vec![
            ("y", Some("ValueError")),
            ("z", Some("ImpossibleDependency"))
        ]
    );
}

#[test]
fn follow_runs_where_the_dependency_ran() {
    let now = Instant::now();
    let mut s = task_sched(Scheme::LeastLoad, 0);
    add(&mut s, 3, now);
    assert_eq!(go(&mut s, "a", plain(), now), Some(uuid(2)));
    // follow not done yet: wait
    assert_eq!(
        go(
            &mut s,
            "b",
            lb_md(json!([]), json!(["a"]), json!([]), 0.0, 0),
            now
        ),
        None
    );
    let acts = s.on_engine_reply(engine_reply(&uuid(2), &hdr("a"), "ok", true), now);
    assert_eq!(sent(&acts), vec![(uuid(2), "b".to_string())]);
    // engine 2 now has load 1, others 0, but follow pins c to engine 2
    for i in 0..3 {
        assert_eq!(
            go(
                &mut s,
                &format!("c{i}"),
                lb_md(json!([]), json!(["a"]), json!([]), 0.0, 0),
                now
            ),
            Some(uuid(2))
        );
    }
}

#[test]
fn follow_waits_for_the_followed_engine_slot() {
    let now = Instant::now();
    let mut s = task_sched(Scheme::LeastLoad, 1);
    add(&mut s, 2, now);
    assert_eq!(go(&mut s, "a", plain(), now), Some(uuid(1)));
    s.on_engine_reply(engine_reply(&uuid(1), &hdr("a"), "ok", true), now);
    assert_eq!(
        go(
            &mut s,
            "busy",
            lb_md(json!([]), json!(["a"]), json!([]), 0.0, 0),
            now
        ),
        Some(uuid(1))
    );
    assert_eq!(
        go(
            &mut s,
            "f",
            lb_md(json!([]), json!(["a"]), json!([]), 0.0, 0),
            now
        ),
        None
    );
    assert_eq!(go(&mut s, "free", plain(), now), Some(uuid(0)));
    let acts = s.on_engine_reply(engine_reply(&uuid(1), &hdr("busy"), "ok", true), now);
    assert_eq!(sent(&acts), vec![(uuid(1), "f".to_string())]);
}

#[test]
fn follow_split_across_engines_is_impossible() {
    let now = Instant::now();
    let mut s = task_sched(Scheme::LeastLoad, 0);
    add(&mut s, 2, now);
    let ea = go(&mut s, "a", plain(), now).unwrap();
    let eb = go(&mut s, "b", plain(), now).unwrap();
    assert_ne!(ea, eb);
    s.on_engine_reply(engine_reply(&ea, &hdr("a"), "ok", true), now);
    s.on_engine_reply(engine_reply(&eb, &hdr("b"), "ok", true), now);
    let f = finished(s.submit(
        request("c", lb_md(json!([]), json!(["a", "b"]), json!([]), 0.0, 0)),
        now,
    ));
    assert_eq!(f.len(), 1);
    assert_eq!(f[0].ename(), Some("ImpossibleDependency"));
    // with any, it runs on one of them
    let any = json!({"dependencies": ["a", "b"], "all": false});
    assert!(go(&mut s, "d", lb_md(json!([]), any, json!([]), 0.0, 0), now).is_some());
}

#[test]
fn invalid_dependency_reply_shape() {
    let now = Instant::now();
    let mut s = task_sched(Scheme::LeastLoad, 1);
    add(&mut s, 1, now);
    let req = request(
        "a",
        lb_md(json!(["nonexistent"]), json!([]), json!([]), 0.0, 0),
    );
    let f = finished(s.submit(req.clone(), now));
    assert_eq!(f.len(), 1);
    let f = &f[0];
    assert_eq!(f.msg_id, "a");
    assert_eq!(f.engine, None);
    assert_eq!(f.reply.idents, vec![CLIENT.to_vec()]);
    assert_eq!(f.reply.parent, req.header);
    assert_eq!(f.metadata, json!({}));
    assert_eq!(f.content["status"], "error");
    assert_eq!(f.content["ename"], "InvalidDependency");
    assert_eq!(f.content["engine_info"], json!({}));
    assert!(f.content["traceback"].is_array());
    let h: Value = serde_json::from_slice(&f.reply.header).unwrap();
    assert_eq!(h["msg_type"], "apply_reply");
    assert_eq!(h["session"], "sched-session");
    Signer::new(KEY).verify(&f.reply).unwrap();
    // self dependency
    let f = finished(s.submit(
        request("b", lb_md(json!(["b"]), json!([]), json!([]), 0.0, 0)),
        now,
    ));
    assert_eq!(f[0].ename(), Some("InvalidDependency"));
    let f = finished(s.submit(
        request("c", lb_md(json!([]), json!(["zzz"]), json!([]), 0.0, 0)),
        now,
    ));
    assert_eq!(f[0].ename(), Some("InvalidDependency"));
    // a failed-by-scheduler task satisfies failure dependencies
    let on_fail = json!({"dependencies": ["a"], "success": false, "failure": true});
    assert!(go(
        &mut s,
        "d",
        lb_md(on_fail, json!([]), json!([]), 0.0, 0),
        now
    )
    .is_some());
}

#[test]
fn timeout_only_while_queued() {
    let t0 = Instant::now();
    let mut s = task_sched(Scheme::LeastLoad, 1);
    add(&mut s, 1, t0);
    // runs at once: its timeout never fires
    assert!(go(
        &mut s,
        "a",
        lb_md(json!([]), json!([]), json!([]), 0.5, 0),
        t0
    )
    .is_some());
    assert_eq!(s.next_deadline(), None);
    assert_eq!(
        go(
            &mut s,
            "b",
            lb_md(json!([]), json!([]), json!([]), 1.0, 0),
            t0
        ),
        None
    );
    assert_eq!(s.next_deadline(), Some(t(1.0, t0)));
    assert!(s.tick(t(0.9, t0)).is_empty());
    let f = finished(s.tick(t(1.0, t0)));
    assert_eq!(f.len(), 1);
    assert_eq!(f[0].msg_id, "b");
    assert_eq!(f[0].ename(), Some("TaskTimeout"));
    assert_eq!(f[0].reply.idents, vec![CLIENT.to_vec()]);
    assert_eq!(s.unassigned(), 0);
    assert_eq!(s.next_deadline(), None);
    // a queued task that gets to run before its timeout is not failed
    assert_eq!(
        go(
            &mut s,
            "c",
            lb_md(json!([]), json!([]), json!([]), 2.0, 0),
            t0
        ),
        None
    );
    let acts = s.on_engine_reply(engine_reply(&uuid(0), &hdr("a"), "ok", true), t(1.5, t0));
    assert_eq!(sent_ids(&acts), vec!["c"]);
    assert!(finished(s.tick(t(3.0, t0))).is_empty());
}

#[test]
fn timeout_while_waiting_on_after() {
    let t0 = Instant::now();
    let mut s = task_sched(Scheme::LeastLoad, 0);
    add(&mut s, 1, t0);
    go(&mut s, "a", plain(), t0);
    go(
        &mut s,
        "b",
        lb_md(json!(["a"]), json!([]), json!([]), 0.25, 0),
        t0,
    );
    let f = finished(s.tick(t(0.25, t0)));
    assert_eq!(f[0].ename(), Some("TaskTimeout"));
    // its dependents learn that it failed
    let f = finished(s.submit(
        request("c", lb_md(json!(["b"]), json!([]), json!([]), 0.0, 0)),
        t0,
    ));
    assert_eq!(f[0].ename(), Some("ImpossibleDependency"));
}

#[test]
fn retries_never_reuse_an_engine() {
    let now = Instant::now();
    let mut s = task_sched(Scheme::LeastLoad, 0);
    add(&mut s, 3, now);
    let e1 = go(
        &mut s,
        "a",
        lb_md(json!([]), json!([]), json!([]), 0.0, 2),
        now,
    )
    .unwrap();
    let acts = s.on_engine_reply(engine_reply(&e1, &hdr("a"), "error", true), now);
    let v = sent(&acts);
    assert_eq!(v.len(), 1);
    let e2 = v[0].0.clone();
    assert_ne!(e1, e2);
    assert!(finished(acts).is_empty(), "a retried failure is not final");
    let acts = s.on_engine_reply(engine_reply(&e2, &hdr("a"), "error", true), now);
    let e3 = sent(&acts)[0].0.clone();
    assert!(e3 != e1 && e3 != e2);
    let f = finished(s.on_engine_reply(engine_reply(&e3, &hdr("a"), "error", true), now));
    assert_eq!(f.len(), 1);
    assert_eq!(f[0].engine, Some(e3));
    assert_eq!(f[0].ename(), Some("ValueError"));
}

#[test]
fn retries_exhausting_engines_then_timeout() {
    // ipyparallel's test_retries: retries = n engines, timeout 0.1 -> TaskTimeout
    let t0 = Instant::now();
    let mut s = task_sched(Scheme::LeastLoad, 1);
    add(&mut s, 2, t0);
    let mut e = go(
        &mut s,
        "a",
        lb_md(json!([]), json!([]), json!([]), 0.1, 2),
        t0,
    )
    .unwrap();
    let acts = s.on_engine_reply(engine_reply(&e, &hdr("a"), "error", true), t0);
    e = sent(&acts)[0].0.clone();
    let acts = s.on_engine_reply(engine_reply(&e, &hdr("a"), "error", true), t0);
    assert!(sent(&acts).is_empty() && finished(acts).is_empty());
    assert_eq!(s.unassigned(), 1);
    let f = finished(s.tick(t(0.1, t0)));
    assert_eq!(f[0].ename(), Some("TaskTimeout"));
}

#[test]
fn targeted_retries_exhausted_is_impossible() {
    let now = Instant::now();
    let mut s = task_sched(Scheme::LeastLoad, 1);
    add(&mut s, 2, now);
    let tgt = json!([String::from_utf8(uuid(0)).unwrap()]);
    go(&mut s, "a", lb_md(json!([]), json!([]), tgt, 0.0, 1), now);
    let f = finished(s.on_engine_reply(engine_reply(&uuid(0), &hdr("a"), "error", true), now));
    assert_eq!(f[0].ename(), Some("ImpossibleDependency"));
}

#[test]
fn unmet_functional_dependency_reschedules_then_impossible() {
    let now = Instant::now();
    let mut s = task_sched(Scheme::LeastLoad, 1);
    add(&mut s, 2, now);
    let e1 = go(&mut s, "a", plain(), now).unwrap();
    let acts = s.on_engine_reply(engine_reply(&e1, &hdr("a"), "error", false), now);
    let v = sent(&acts);
    assert_eq!(v.len(), 1);
    assert_ne!(v[0].0, e1);
    assert!(
        finished(acts).is_empty(),
        "the engine's UnmetDependency reply is not relayed"
    );
    let f = finished(s.on_engine_reply(engine_reply(&v[0].0, &hdr("a"), "error", false), now));
    assert_eq!(f.len(), 1);
    assert_eq!(f[0].ename(), Some("ImpossibleDependency"));
    assert_eq!(f[0].engine, None);
}

#[test]
fn unmet_functional_dependency_does_not_use_retries() {
    let now = Instant::now();
    let mut s = task_sched(Scheme::LeastLoad, 0);
    add(&mut s, 3, now);
    let e1 = go(&mut s, "a", plain(), now).unwrap();
    let acts = s.on_engine_reply(engine_reply(&e1, &hdr("a"), "error", false), now);
    let e2 = sent(&acts)[0].0.clone();
    let f = finished(s.on_engine_reply(engine_reply(&e2, &hdr("a"), "ok", true), now));
    assert_eq!(f[0].engine, Some(e2));
    assert_eq!(f[0].content["status"], "ok");
}

#[test]
fn engine_death_fails_tasks_after_grace() {
    let t0 = Instant::now();
    let mut s = task_sched(Scheme::LeastLoad, 1);
    add(&mut s, 2, t0);
    assert_eq!(go(&mut s, "a", plain(), t0), Some(uuid(1)));
    assert!(s.remove_engine(&uuid(1), t0).is_empty());
    assert_eq!(s.engine_loads().len(), 1);
    assert_eq!(s.next_deadline(), Some(t(5.0, t0)));
    assert!(s.tick(t(4.9, t0)).is_empty());
    let f = finished(s.tick(t(5.0, t0)));
    assert_eq!(f.len(), 1);
    let f = &f[0];
    assert_eq!(f.ename(), Some("EngineError"));
    assert_eq!(f.content["evalue"], "Engine 1 died while running task 'a'");
    assert_eq!(f.engine, Some(uuid(1)));
    assert_eq!(f.reply.idents, vec![CLIENT.to_vec(), uuid(1)]);
    assert_eq!(f.metadata["status"], "error");
    assert_eq!(f.metadata["engine"], "engine-0001");
    Signer::new(KEY).verify(&f.reply).unwrap();
    assert_eq!(s.next_deadline(), None);
    assert_eq!(s.outstanding_on(&uuid(1)), 0);
    // new tasks go to the survivor only
    assert_eq!(go(&mut s, "b", plain(), t0), Some(uuid(0)));
}

#[test]
fn engine_death_with_retries_resubmits() {
    let t0 = Instant::now();
    let mut s = task_sched(Scheme::LeastLoad, 1);
    add(&mut s, 2, t0);
    assert_eq!(
        go(
            &mut s,
            "a",
            lb_md(json!([]), json!([]), json!([]), 0.0, 1),
            t0
        ),
        Some(uuid(1))
    );
    s.remove_engine(&uuid(1), t0);
    let acts = s.tick(t(5.0, t0));
    assert_eq!(sent(&acts), vec![(uuid(0), "a".to_string())]);
    assert!(finished(acts).is_empty());
}

#[test]
fn late_reply_within_grace_is_delivered() {
    let t0 = Instant::now();
    let mut s = task_sched(Scheme::LeastLoad, 1);
    add(&mut s, 1, t0);
    go(&mut s, "a", plain(), t0);
    s.remove_engine(&uuid(0), t0);
    let f = finished(s.on_engine_reply(engine_reply(&uuid(0), &hdr("a"), "ok", true), t(1.0, t0)));
    assert_eq!(f.len(), 1);
    assert_eq!(f[0].content["status"], "ok");
    assert!(finished(s.tick(t(6.0, t0))).is_empty());
    assert_eq!(s.next_deadline(), None);
}

#[test]
fn targeted_task_becomes_impossible_when_its_engine_goes() {
    let t0 = Instant::now();
    let mut s = task_sched(Scheme::LeastLoad, 1);
    add(&mut s, 2, t0);
    let tgt = json!([String::from_utf8(uuid(0)).unwrap()]);
    go(
        &mut s,
        "a",
        lb_md(json!([]), json!([]), tgt.clone(), 0.0, 0),
        t0,
    );
    go(&mut s, "b", lb_md(json!([]), json!([]), tgt, 0.0, 0), t0);
    let f = finished(s.remove_engine(&uuid(0), t0));
    assert_eq!(f.len(), 1);
    assert_eq!(f[0].msg_id, "b");
    assert_eq!(f[0].ename(), Some("ImpossibleDependency"));
}

#[test]
fn tasks_wait_for_first_engine() {
    let now = Instant::now();
    let mut s = task_sched(Scheme::LeastLoad, 1);
    assert_eq!(go(&mut s, "a", plain(), now), None);
    assert_eq!(go(&mut s, "b", plain(), now), None);
    let acts = s.add_engine(&uuid(0), 0, now);
    assert_eq!(sent_ids(&acts), vec!["a"]);
    let acts = s.add_engine(&uuid(1), 1, now);
    assert_eq!(sent_ids(&acts), vec!["b"]);
}

#[test]
fn pure_is_round_robin_without_hwm_or_dependencies() {
    let now = Instant::now();
    let mut s = task_sched(Scheme::Pure, 1);
    add(&mut s, 3, now);
    let mut got = Vec::new();
    for i in 0..6 {
        // dependency metadata is ignored, not validated
        let md = lb_md(json!(["unknown"]), json!([]), json!([]), 0.0, 3);
        got.push(go(&mut s, &format!("t{i}"), md, now).unwrap());
    }
    assert_eq!(
        got,
        vec![uuid(0), uuid(1), uuid(2), uuid(0), uuid(1), uuid(2)]
    );
    // failures are final (no retries)
    let f = finished(s.on_engine_reply(engine_reply(&uuid(0), &hdr("t0"), "error", true), now));
    assert_eq!(f.len(), 1);
}

#[test]
fn malformed_metadata_gets_an_error_reply() {
    let now = Instant::now();
    let mut s = task_sched(Scheme::LeastLoad, 1);
    add(&mut s, 1, now);
    let cases = [
        ("m1", json!({"targets": "engine-0000"}), "TypeError"),
        ("m2", json!({"targets": [1, 2]}), "TypeError"),
        ("m3", json!({"retries": "many"}), "TypeError"),
        ("m4", json!({"retries": -1}), "ValueError"),
        ("m5", json!({"timeout": "soon"}), "TypeError"),
        ("m6", json!({"after": 5}), "InvalidDependency"),
        (
            "m7",
            json!({"follow": {"dependencies": ["x"], "all": "yes"}}),
            "InvalidDependency",
        ),
        ("m8", json!(["not", "a", "dict"]), "TypeError"),
    ];
    for (id, md, ename) in cases {
        let f = finished(s.submit(request(id, md.clone()), now));
        assert_eq!(f.len(), 1, "{md}");
        assert_eq!(f[0].ename(), Some(ename), "{md}");
        assert!(f[0].content["evalue"].as_str().unwrap().len() > 5);
    }
    // unparsable metadata JSON
    let mut m = request("m9", json!({}));
    m.metadata = b"{nope".to_vec();
    let f = finished(s.submit(m, now));
    assert_eq!(f[0].ename(), Some("ValueError"));
    // garbage that cannot be answered is dropped without panicking
    let mut m = request("m10", json!({}));
    m.header = b"not json".to_vec();
    assert!(s.submit(m, now).is_empty());
    let mut m = request("m11", json!({}));
    m.idents.clear();
    assert!(s.submit(m, now).is_empty());
    // a reply for a task this scheduler never sent (one submitted before a controller restart)
    // is relayed once to the client its routing frames name; a second copy is dropped
    let f =
        finished(s.on_engine_reply(engine_reply(&uuid(0), &hdr("never-sent"), "ok", true), now));
    assert_eq!(f.len(), 1);
    assert_eq!(f[0].msg_id, "never-sent");
    assert!(s
        .on_engine_reply(engine_reply(&uuid(0), &hdr("never-sent"), "ok", true), now)
        .is_empty());
    // engine replies that make no sense
    let mut r = engine_reply(&uuid(0), &hdr("m1"), "ok", true);
    r.idents.truncate(1);
    assert!(s.on_engine_reply(r, now).is_empty());
    let mut r = engine_reply(&uuid(0), &hdr("m1"), "ok", true);
    r.parent = b"[]".to_vec();
    assert!(s.on_engine_reply(r, now).is_empty());
    // a duplicate msg_id is ignored
    go(&mut s, "dup", plain(), now);
    assert!(s.submit(request("dup", plain()), now).is_empty());
    // the scheduler still works
    let f = finished(s.on_engine_reply(engine_reply(&uuid(0), &hdr("dup"), "ok", true), now));
    assert_eq!(f[0].msg_id, "dup");
}

#[test]
fn reply_from_the_wrong_engine_is_ignored() {
    let now = Instant::now();
    let mut s = task_sched(Scheme::LeastLoad, 1);
    add(&mut s, 2, now);
    let e = go(&mut s, "a", plain(), now).unwrap();
    let other = if e == uuid(0) { uuid(1) } else { uuid(0) };
    assert!(s
        .on_engine_reply(engine_reply(&other, &hdr("a"), "ok", true), now)
        .is_empty());
    assert_eq!(
        finished(s.on_engine_reply(engine_reply(&e, &hdr("a"), "ok", true), now)).len(),
        1
    );
}

#[test]
fn long_dependency_chain_fails_without_recursion() {
    let now = Instant::now();
    let mut s = task_sched(Scheme::LeastLoad, 0);
    add(&mut s, 1, now);
    go(&mut s, "c0", plain(), now);
    for i in 1..20_000 {
        assert_eq!(
            go(
                &mut s,
                &format!("c{i}"),
                lb_md(json!([format!("c{}", i - 1)]), json!([]), json!([]), 0.0, 0),
                now
            ),
            None
        );
    }
    let f = finished(s.on_engine_reply(engine_reply(&uuid(0), &hdr("c0"), "error", true), now));
    assert_eq!(f.len(), 20_000);
    assert!(f[1..]
        .iter()
        .all(|f| f.ename() == Some("ImpossibleDependency")));
}

#[test]
fn big_map_with_blocked_targeted_tasks_stays_fast() {
    // 20k untargeted tasks behind 2k tasks targeted at a busy engine: every reply must only look
    // at queue heads. An O(queue) rescan per event would take ~10^8 steps here.
    let now = Instant::now();
    let mut s = task_sched(Scheme::LeastLoad, 1);
    add(&mut s, 4, now);
    let tgt = json!([String::from_utf8(uuid(3)).unwrap()]);
    let start = Instant::now();
    let mut running: Vec<(Vec<u8>, String)> = Vec::new();
    for i in 0..2_000 {
        let id = format!("t{i}");
        if let Some(e) = go(
            &mut s,
            &id,
            lb_md(json!([]), json!([]), tgt.clone(), 0.0, 0),
            now,
        ) {
            running.push((e, id));
        }
    }
    for i in 0..20_000 {
        let id = format!("m{i}");
        if let Some(e) = go(&mut s, &id, plain(), now) {
            running.push((e, id));
        }
    }
    let mut done = 0;
    while let Some((e, id)) = running.pop() {
        let acts = s.on_engine_reply(engine_reply(&e, &hdr(&id), "ok", true), now);
        running.extend(sent(&acts));
        done += finished(acts).len();
    }
    assert_eq!(done, 22_000);
    assert_eq!(s.unassigned(), 0);
    // No timed assertion (the guide forbids them; a loaded machine made this one flaky): an
    // O(queue) rescan per event would not finish within the test timeout, which is the guard.
    eprintln!(
        "22k tasks behind 2k blocked targeted ones: {:?}",
        start.elapsed()
    );
}

#[test]
fn retry_resends_the_original_bytes_and_reports_assignment_again() {
    let now = Instant::now();
    let mut s = task_sched(Scheme::LeastLoad, 1);
    add(&mut s, 2, now);
    let req = request("a", lb_md(json!([]), json!([]), json!([]), 0.0, 1));
    let first = s.submit(req.clone(), now);
    let e1 = sent(&first)[0].0.clone();
    let acts = s.on_engine_reply(engine_reply(&e1, &req.header, "error", true), now);
    let TaskAction::ToEngine(frames) = &acts[0] else {
        panic!("{acts:?}")
    };
    assert_ne!(frames[0], e1);
    assert_eq!(
        frames[1..],
        req.clone().into_frames()[..],
        "same request bytes, same signature"
    );
    assert!(acts.iter().any(|a| matches!(a, TaskAction::Assigned { msg_id, engine_uuid } if msg_id == "a" && *engine_uuid != e1)));
}

#[test]
fn follow_on_failure_runs_where_the_failure_happened() {
    let now = Instant::now();
    let mut s = task_sched(Scheme::LeastLoad, 0);
    add(&mut s, 3, now);
    let e = go(&mut s, "a", plain(), now).unwrap();
    s.on_engine_reply(engine_reply(&e, &hdr("a"), "error", true), now);
    let on_fail = json!({"dependencies": ["a"], "success": false, "failure": true});
    go(&mut s, "busy1", plain(), now);
    go(&mut s, "busy2", plain(), now);
    assert_eq!(
        go(
            &mut s,
            "b",
            lb_md(json!([]), on_fail, json!([]), 0.0, 0),
            now
        ),
        Some(e)
    );
    // following a failure with success-only is impossible
    let f = finished(s.submit(
        request("c", lb_md(json!([]), json!(["a"]), json!([]), 0.0, 0)),
        now,
    ));
    assert_eq!(f[0].ename(), Some("ImpossibleDependency"));
}

#[test]
fn follow_on_a_dead_engine_is_impossible() {
    let t0 = Instant::now();
    let mut s = task_sched(Scheme::LeastLoad, 1);
    add(&mut s, 2, t0);
    let e = go(&mut s, "a", plain(), t0).unwrap();
    s.on_engine_reply(engine_reply(&e, &hdr("a"), "ok", true), t0);
    s.remove_engine(&e, t0);
    let f = finished(s.submit(
        request("b", lb_md(json!([]), json!(["a"]), json!([]), 0.0, 0)),
        t0,
    ));
    assert_eq!(f[0].ename(), Some("ImpossibleDependency"));
}

#[test]
fn pure_queues_until_an_engine_registers() {
    let now = Instant::now();
    let mut s = task_sched(Scheme::Pure, 1);
    assert_eq!(go(&mut s, "a", plain(), now), None);
    assert_eq!(go(&mut s, "b", plain(), now), None);
    assert_eq!(s.unassigned(), 2);
    let acts = s.add_engine(&uuid(0), 0, now);
    assert_eq!(sent_ids(&acts), vec!["a", "b"], "no hwm in pure mode");
}

#[test]
fn hwm_two_fills_each_engine_twice() {
    let now = Instant::now();
    let mut s = task_sched(Scheme::LeastLoad, 2);
    add(&mut s, 2, now);
    let got: Vec<_> = (0..5)
        .map(|i| go(&mut s, &format!("t{i}"), plain(), now))
        .collect();
    assert_eq!(
        got,
        vec![
            Some(uuid(1)),
            Some(uuid(0)),
            Some(uuid(1)),
            Some(uuid(0)),
            None
        ]
    );
}

#[test]
fn bookkeeping_stays_bounded_after_many_tasks_and_after_reaches_the_window() {
    // issue 11: msg-id maps and done-sets grew with every task, forever
    let t0 = Instant::now();
    let window = 1000;
    let mut s = task_sched(Scheme::LeastLoad, 0).with_done_window(window);
    s.add_engine(&uuid(0), 0, t0);
    let none = lb_md(json!([]), json!([]), json!([]), 0.0, 0);
    let mut held = Vec::new();
    for i in 0..20_000u32 {
        let req = request(&format!("t{i}"), none.clone());
        let hdr = req.header.clone();
        assert_eq!(sent(&s.submit(req, t0)).len(), 1);
        let fin = finished(s.on_engine_reply(engine_reply(&uuid(0), &hdr, "ok", true), t0));
        assert_eq!(fin.len(), 1);
        if i % 5000 == 4999 {
            held.push(s.held());
        }
    }
    assert!(held.iter().all(|&h| h <= 3 * window + 10), "{held:?}");
    assert_eq!(held.first(), held.last(), "flat: {held:?}");
    // a recent task can still be named; one beyond the window is an InvalidDependency
    let recent = request(
        "late",
        lb_md(json!(["t19990"]), json!([]), json!([]), 0.0, 0),
    );
    assert_eq!(sent(&s.submit(recent, t0)).len(), 1);
    let old = request("old", lb_md(json!(["t5"]), json!([]), json!([]), 0.0, 0));
    let fin = finished(s.submit(old, t0));
    assert_eq!(fin[0].ename(), Some("InvalidDependency"));
}

#[test]
fn a_finished_task_a_waiting_task_depends_on_is_kept_past_the_window() {
    let t0 = Instant::now();
    let mut s = task_sched(Scheme::LeastLoad, 0).with_done_window(10);
    s.add_engine(&uuid(0), 0, t0);
    let none = lb_md(json!([]), json!([]), json!([]), 0.0, 0);
    // a finishes; b runs (unanswered); c waits on both
    let a = request("a", none.clone());
    let ah = a.header.clone();
    s.submit(a, t0);
    s.on_engine_reply(engine_reply(&uuid(0), &ah, "ok", true), t0);
    let b = request("b", none.clone());
    let bh = b.header.clone();
    s.submit(b, t0);
    let c = request("c", lb_md(json!(["a", "b"]), json!([]), json!([]), 0.0, 0));
    assert!(sent(&s.submit(c, t0)).is_empty(), "c waits for b");
    // many tasks push `a` out of the window, but c still depends on it
    for i in 0..100 {
        let r = request(&format!("x{i}"), none.clone());
        let h = r.header.clone();
        s.submit(r, t0);
        s.on_engine_reply(engine_reply(&uuid(0), &h, "ok", true), t0);
    }
    let out = s.on_engine_reply(engine_reply(&uuid(0), &bh, "ok", true), t0);
    assert_eq!(
        sent_ids(&out),
        vec!["c".to_string()],
        "c runs once b is done"
    );
}

#[test]
fn shared_buffers_are_lent_to_every_dispatch_never_copied() {
    let now = Instant::now();
    let mut s = task_sched(Scheme::LeastLoad, 0);
    s.share_buffers(true);
    add(&mut s, 2, now);
    let bufs = vec![b"fn".to_vec(), vec![7; 1000]];
    let mut req = request_bufs("a", lb_md(json!([]), json!([]), json!([]), 0.0, 1), vec![]);
    let shared = std::sync::Arc::new(bufs.clone());
    let lent = |acts: &[TaskAction]| -> Vec<(Vec<u8>, rpar_core::wire::SharedBuffers)> {
        acts.iter()
            .filter_map(|a| match a {
                TaskAction::ToEngineShared(f, b) => Some((f[0].clone(), b.clone())),
                TaskAction::ToEngine(_) => panic!("copied: {a:?}"),
                _ => None,
            })
            .collect()
    };
    req.buffers.clear();
    let acts = s.submit_shared(req.clone(), shared.clone(), now);
    let first = lent(&acts);
    assert_eq!(first.len(), 1);
    assert!(std::sync::Arc::ptr_eq(&first[0].1, &shared));
    // the frames end at content; the buffers are the request's, the same allocation
    let TaskAction::ToEngineShared(frames, _) = &acts[0] else {
        panic!("{acts:?}")
    };
    assert_eq!(frames[1..], req.clone().into_frames()[..]);
    drop(acts);
    // a retry elsewhere lends the same buffers again
    let acts = s.on_engine_reply(engine_reply(&first[0].0, &hdr("a"), "error", true), now);
    let again = lent(&acts);
    assert_eq!(again.len(), 1);
    assert_ne!(again[0].0, first[0].0);
    assert!(std::sync::Arc::ptr_eq(&again[0].1, &shared));
    assert_eq!(*again[0].1, bufs);
    // finished: the scheduler lets go of them
    drop((first, again, acts));
    let e = s
        .engine_loads()
        .into_iter()
        .find(|l| l.outstanding == 1)
        .unwrap()
        .uuid;
    let f = finished(s.on_engine_reply(engine_reply(&e, &hdr("a"), "ok", true), now));
    assert_eq!(f.len(), 1);
    assert_eq!(std::sync::Arc::strong_count(&shared), 1);
}
