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
    let cl = Peer::new("client");
    let req = cl.msg(
        vec![b"cid".to_vec(), b"p".to_vec()],
        "execute_request",
        b"{}",
        json!({}),
        json!({"code": "1"}),
    );
    let id = Header::parse(&req.header).unwrap().msg_id;
    let hdr = req.header.clone();
    h.on_message(Sock::MuxClient, req.into_frames(), t0);
    let rep = Peer::new("p").msg(
        vec![b"p".to_vec(), b"cid".to_vec()],
        "execute_reply",
        &hdr,
        json!({"status": "ok"}),
        json!({"status": "ok", "execution_count": 1}),
    );
    h.on_message(Sock::MuxEngine, rep.into_frames(), t0);
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
