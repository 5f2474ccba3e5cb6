//! Regression tests for issue 11's hostile-peer defects, decided in the hub: engine ids out of
//! range, duplicate broadcast targets, notification amplification, replies after a restart,
//! dead engines' tasks, and bounded bookkeeping.

use super::*;

/// The edge values a peer can put where an engine id belongs.
fn edge_ids() -> Vec<Value> {
    vec![
        json!(u64::from(u32::MAX) + 1),
        json!(1u64 << 63),
        json!(u64::MAX),
        json!(-1),
        json!(i64::MIN),
        json!(0.5),
        json!(1e300),
        json!("0"),
        json!([0]),
        json!({"id": 0}),
        json!(true),
    ]
}

#[test]
fn unregistration_of_an_out_of_range_id_removes_nothing() {
    let t0 = Instant::now();
    let mut h = hub(t0);
    register(&mut h, "e0", None, t0);
    let e = Peer::new("e0");
    for v in edge_ids() {
        let out = h.on_message(
            Sock::Registration,
            e.frames(
                vec![b"e0".to_vec()],
                "unregistration_request",
                json!({ "id": v }),
            ),
            t0,
        );
        assert!(sends(&out, Sock::Notification).is_empty(), "{v}");
        assert_eq!(h.registered().count(), 1, "id {v} unregistered engine 0");
    }
}

#[test]
fn queue_request_for_an_out_of_range_id_is_no_such_engine() {
    let t0 = Instant::now();
    let mut h = hub(t0);
    register(&mut h, "e0", None, t0);
    for v in edge_ids() {
        let c = query(
            &mut h,
            "queue_request",
            json!({ "targets": [v.clone()] }),
            t0,
        );
        assert_eq!(c["ename"], "IndexError", "targets [{v}]: {c}");
    }
    let c = query(&mut h, "queue_request", json!({"targets": [0]}), t0);
    assert_eq!(c["status"], "ok");
}

#[test]
fn purge_of_an_out_of_range_engine_id_purges_nothing() {
    let t0 = Instant::now();
    let mut h = hub(t0);
    register(&mut h, "p", None, t0);
    let (id, hdr) = mux_execute(&mut h, "p", t0);
    mux_reply_ok(&mut h, "p", &hdr, t0);
    for v in edge_ids() {
        let c = query(
            &mut h,
            "purge_request",
            json!({ "engine_ids": [v.clone()] }),
            t0,
        );
        assert_eq!(c["ename"], "IndexError", "engine_ids [{v}]: {c}");
    }
    let c = query(
        &mut h,
        "result_request",
        json!({ "msg_ids": [id.clone()] }),
        t0,
    );
    assert_eq!(c["completed"], json!([id]), "engine 0's record survives");
    let qs = query(&mut h, "queue_request", json!({"targets": [0]}), t0);
    assert_eq!(qs["0"]["completed"], 1);
}

#[test]
fn a_requested_id_above_u32_max_is_not_granted_modulo_2_32() {
    let t0 = Instant::now();
    let mut h = hub(t0);
    register(&mut h, "first", None, t0); // id 0
    let out = request_registration(
        &mut h,
        "big",
        json!({"uuid": "big", "id": (1u64 << 32) + 7}),
        t0,
    );
    let c = content(&sends(&out, Sock::Registration)[0]);
    assert_eq!(c["status"], "ok");
    assert_eq!(c["id"], 1, "the counter's id, not 2^32+7 mod 2^32: {c}");
    for (i, v) in edge_ids().into_iter().enumerate() {
        let uuid = format!("edge{i}");
        let out = request_registration(&mut h, &uuid, json!({"uuid": uuid, "id": v}), t0);
        let c = content(&sends(&out, Sock::Registration)[0]);
        assert_eq!(c["status"], "ok", "{c}");
        assert_eq!(c["id"], json!(i + 2), "id {v} is no id: the counter's next");
    }
}

#[test]
fn a_requested_u32_max_does_not_overflow_the_counter() {
    let t0 = Instant::now();
    let mut h = hub(t0);
    assert_eq!(register(&mut h, "top", Some(u32::MAX), t0), u32::MAX);
    // the counter is past the last id: the next engines get the lowest free ids
    assert_eq!(register(&mut h, "a", None, t0), 0);
    assert_eq!(register(&mut h, "b", None, t0), 1);
    assert_eq!(h.registered().count(), 3);
    assert_eq!(h.engine_state()["next_id"], json!(u64::from(u32::MAX) + 1));
}

/// The load-balanced metadata of a plain task.
fn lb_md() -> Value {
    json!({"after": [], "follow": [], "timeout": 0.0, "targets": [], "retries": 0})
}

#[test]
fn tasks_of_a_dead_engine_fail_when_it_is_unregistered_not_seconds_later() {
    let t0 = Instant::now();
    let mut cfg = test_config("leastload");
    cfg.engine_death_grace = Duration::ZERO; // what the controller passes
    let mut h = hub_from(cfg, t0);
    register(&mut h, "w0", None, t0);
    let cl = Peer::new("client");
    let task = cl.msg(
        vec![b"cid".to_vec()],
        "apply_request",
        b"{}",
        lb_md(),
        json!({}),
    );
    let direct = cl.msg(
        vec![b"cid".to_vec(), b"w0".to_vec()],
        "apply_request",
        b"{}",
        json!({}),
        json!({}),
    );
    let (tid, did) = (
        Header::parse(&task.header).unwrap().msg_id,
        Header::parse(&direct.header).unwrap().msg_id,
    );
    let out = h.on_message(Sock::TaskClient, task.into_frames(), t0);
    assert_eq!(raw_sends(&out, Sock::TaskEngine).len(), 1);
    h.on_message(Sock::MuxClient, direct.into_frames(), t0);
    // heartbeat lost (or rank 0 reported it): the same call answers the task
    let mut out = Vec::new();
    h.unregister(0, t0, &mut out);
    let replies = sends(&out, Sock::TaskClient);
    assert_eq!(replies.len(), 1, "the task fails at once");
    assert_eq!(content(&replies[0])["ename"], "EngineError");
    assert_eq!(replies[0].parent_value().unwrap()["msg_id"], json!(tid));
    // and both records are complete, without waiting for a tick
    let rs = query(
        &mut h,
        "result_request",
        json!({"msg_ids": [tid.clone(), did.clone()], "status_only": true}),
        t0,
    );
    let mut done: Vec<String> = serde_json::from_value(rs["completed"].clone()).unwrap();
    done.sort();
    let mut want = vec![tid, did];
    want.sort();
    assert_eq!(done, want, "{rs}");
}

#[test]
fn a_flood_of_notification_subscriptions_replays_registrations_at_most_once_a_second() {
    let t0 = Instant::now();
    let mut h = hub(t0);
    register(&mut h, "r0", None, t0);
    register(&mut h, "r1", None, t0);
    let mut published = 0;
    for _ in 0..5000 {
        let out = h.on_message(Sock::Notification, vec![b"\x01".to_vec()], t0);
        published += sends(&out, Sock::Notification).len();
    }
    assert_eq!(published, 2, "one replay for the first subscription");
    // the others share one replay at the end of the gap (a late real subscriber is served)
    assert!(h.next_deadline() <= t0 + RENOTIFY_GAP);
    let out = h.tick(t0 + RENOTIFY_GAP);
    assert_eq!(sends(&out, Sock::Notification).len(), 2);
    let out = h.tick(t0 + RENOTIFY_GAP * 2);
    assert!(sends(&out, Sock::Notification).is_empty(), "nothing more");
    // a topic no notification can match replays nothing
    let later = t0 + RENOTIFY_GAP * 3;
    let out = h.on_message(Sock::Notification, vec![b"\x01junk".to_vec()], later);
    assert!(out.is_empty());
    // a prefix of the notifications' first frame is a real subscription
    let out = h.on_message(Sock::Notification, vec![b"\x01<IDS".to_vec()], later);
    assert_eq!(sends(&out, Sock::Notification).len(), 2);
}

#[test]
fn a_reply_for_a_task_sent_before_a_restart_is_relayed_and_recorded() {
    // The request went to the controller that died; this (restarted) hub never saw it.
    let t0 = Instant::now();
    let mut h = hub(t0);
    register(&mut h, "w0", None, t0);
    let cl = Peer::new("client");
    let e = Peer::new("w0");
    for (req_sock, rep_sock, back) in [
        (vec![b"cid".to_vec()], Sock::TaskEngine, Sock::TaskClient),
        (
            vec![b"cid".to_vec(), b"w0".to_vec()],
            Sock::MuxEngine,
            Sock::MuxClient,
        ),
    ] {
        let old = cl.msg(req_sock, "apply_request", b"{}", lb_md(), json!({}));
        let old_id = Header::parse(&old.header).unwrap().msg_id;
        let rep = e.msg(
            vec![b"w0".to_vec(), b"cid".to_vec()],
            "apply_reply",
            &old.header,
            json!({"status": "ok", "engine": "w0", "dependencies_met": true}),
            json!({"status": "ok"}),
        );
        let out = h.on_message(rep_sock, rep.into_frames(), t0);
        let relayed = raw_sends(&out, back);
        assert_eq!(relayed.len(), 1, "{rep_sock:?}: relayed, not dropped");
        assert_eq!(&relayed[0][..2], &[b"cid".to_vec(), b"w0".to_vec()]);
        let rr = query(
            &mut h,
            "result_request",
            json!({ "msg_ids": [old_id.clone()] }),
            t0,
        );
        assert_eq!(rr["completed"], json!([old_id.clone()]), "{rr}");
        assert_eq!(rr[&old_id]["result_content"]["status"], "ok");
        // a client reconnected under a new routing id: once it sent anything on that socket,
        // an old reply goes to the new id
        let (fresh, sock) = if rep_sock == Sock::TaskEngine {
            (
                cl.msg(
                    vec![b"cid2".to_vec()],
                    "apply_request",
                    b"{}",
                    lb_md(),
                    json!({}),
                ),
                Sock::TaskClient,
            )
        } else {
            (
                cl.msg(
                    vec![b"cid2".to_vec(), b"w0".to_vec()],
                    "apply_request",
                    b"{}",
                    json!({}),
                    json!({}),
                ),
                Sock::MuxClient,
            )
        };
        h.on_message(sock, fresh.into_frames(), t0);
        let old2 = cl.msg(
            vec![b"cid".to_vec()],
            "apply_request",
            b"{}",
            lb_md(),
            json!({}),
        );
        let rep2 = e.msg(
            vec![b"w0".to_vec(), b"cid".to_vec()],
            "apply_reply",
            &old2.header,
            json!({"status": "ok", "engine": "w0", "dependencies_met": true}),
            json!({"status": "ok"}),
        );
        let relayed = raw_sends(&h.on_message(rep_sock, rep2.into_frames(), t0), back);
        assert_eq!(
            &relayed[0][..2],
            &[b"cid2".to_vec(), b"w0".to_vec()],
            "{rep_sock:?}"
        );
        // a second copy of it is not relayed again by the task scheduler
        if rep_sock == Sock::TaskEngine {
            let again = e.msg(
                vec![b"w0".to_vec(), b"cid".to_vec()],
                "apply_reply",
                &old.header,
                json!({"status": "ok", "engine": "w0", "dependencies_met": true}),
                json!({"status": "ok"}),
            );
            assert!(raw_sends(&h.on_message(rep_sock, again.into_frames(), t0), back).is_empty());
        }
    }
}

#[test]
fn a_heartbeat_lost_engine_that_answers_again_is_registered_again_not_a_zombie() {
    let t0 = Instant::now();
    let mut h = hub(t0); // period 100 ms, 2 misses
    register(&mut h, "z0", None, t0);
    register(&mut h, "z1", None, t0);
    // z1 stops answering (SIGSTOP); z0 keeps answering
    let mut gone = Vec::new();
    for i in 0..6u32 {
        let now = t0 + Duration::from_millis(100 * u64::from(i));
        let out = h.tick(now);
        gone.extend(sends(&out, Sock::Notification));
        pong(&mut h, "z0", now);
    }
    assert_eq!(gone.len(), 1);
    assert_eq!(msg_type(&gone[0]), "unregistration_notification");
    assert_eq!(content(&gone[0])["uuid"], "z1");
    assert_eq!(h.registered().map(|e| e.id).collect::<Vec<_>>(), vec![0]);
    // SIGCONT: its heart echoes the current ping again
    let out = pong(&mut h, "z1", t0 + Duration::from_millis(550));
    let back = sends(&out, Sock::Notification);
    assert_eq!(back.len(), 1);
    assert_eq!(msg_type(&back[0]), "registration_notification");
    assert_eq!(content(&back[0]), json!({"id": 1, "uuid": "z1"}));
    assert_eq!(h.registered().map(|e| e.id).collect::<Vec<_>>(), vec![0, 1]);
    assert_eq!(h.lost.len(), 0);
    // a heart nobody lost is not registered by a pong
    assert!(sends(&pong(&mut h, "stranger", t0), Sock::Notification).is_empty());
    assert_eq!(h.registered().count(), 2);
}

#[test]
fn the_hubs_bookkeeping_stays_bounded_after_many_tasks() {
    // issue 11: the completed lists grew with every task, also after purge_results('all')
    let t0 = Instant::now();
    let mut h = hub(t0);
    register(&mut h, "b0", None, t0);
    let mut sizes = Vec::new();
    for i in 0..(ledger::COMPLETED_KEPT as u64 * 3) {
        let m = format!("task-{i}");
        h.ledger.pending.insert(m.clone());
        h.ledger.assigned(&m, Some(0));
        assert!(h.ledger.finished(m, Some(0), Some(0)));
        if i % 50_000 == 49_999 {
            sizes.push(h.ledger.size());
        }
    }
    let bound = 2 * ledger::COMPLETED_KEPT + 10;
    assert!(sizes.iter().all(|&s| s <= bound), "{sizes:?}");
    // counts stay exact; the kept list is the newest tasks
    let qs = query(&mut h, "queue_request", json!({"targets": [0]}), t0);
    assert_eq!(
        qs["0"]["completed"],
        json!(ledger::COMPLETED_KEPT as u64 * 3)
    );
    assert!(h
        .ledger
        .is_completed(&format!("task-{}", ledger::COMPLETED_KEPT * 3 - 1)));
    assert!(!h.ledger.is_completed("task-0"));
    query(&mut h, "purge_request", json!({"msg_ids": "all"}), t0);
    assert!(h.ledger.size() <= 2, "{}", h.ledger.size());
}
