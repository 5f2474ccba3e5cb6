//! Broadcast scheduler: fan-out, derived ids, signatures, relay, coalescing, engine loss.

mod common;
use common::*;
use rpar_core::wire::{Signer, WireMessage, DELIM};
use rpar_core::MessageBuilder;
use rpar_sched::{BroadcastAction, BroadcastConfig, BroadcastScheduler};
use serde_json::{json, Value};
use std::time::{Duration, Instant};

fn sched(grace: Option<Duration>, n: u32, now: Instant) -> BroadcastScheduler {
    let mut s = BroadcastScheduler::new(
        BroadcastConfig {
            engine_death_grace: grace,
        },
        MessageBuilder::with_session("bcast-session".into()),
        signer(),
    );
    for i in 0..n {
        assert!(s.add_engine(&uuid(i), i, now).is_empty());
    }
    s
}

fn targets(ids: &[u32]) -> Value {
    Value::Array(
        ids.iter()
            .map(|&i| json!([String::from_utf8(uuid(i)).unwrap(), i]))
            .collect(),
    )
}

fn bcast(id: &str, ids: &[u32], coalescing: bool) -> WireMessage {
    request_bufs(
        id,
        json!({"targets": targets(ids), "is_broadcast": true, "is_coalescing": coalescing}),
        vec![b"fn".to_vec(), b"args".to_vec()],
    )
}

fn to_engine(acts: &[BroadcastAction]) -> Vec<WireMessage> {
    acts.iter()
        .filter_map(|a| match a {
            BroadcastAction::ToEngine(f) => Some(split(f.clone())),
            _ => None,
        })
        .collect()
}

fn to_client(acts: Vec<BroadcastAction>) -> Vec<WireMessage> {
    acts.into_iter()
        .filter_map(|a| match a {
            BroadcastAction::ToClient(f) => {
                assert_eq!(f[0], CLIENT);
                assert_eq!(f[1], DELIM, "no engine frame towards the client");
                Some(split(f))
            }
            _ => None,
        })
        .collect()
}

/// What an engine answers to a derived request (metadata flags copied, as the kernel does).
fn answer(req: &WireMessage, status: &str, bufs: Vec<Vec<u8>>) -> WireMessage {
    let engine = req.idents[0].clone();
    let rmd = req.metadata_value().unwrap();
    let md = json!({
        "started": "2026-01-01T00:00:00.100000Z", "dependencies_met": true,
        "engine": String::from_utf8_lossy(&engine), "is_broadcast": rmd["is_broadcast"],
        "is_coalescing": rmd["is_coalescing"], "original_msg_id": rmd["original_msg_id"],
        "label": null, "status": status,
    });
    let content = if status == "ok" {
        json!({"status": "ok"})
    } else {
        json!({"status": "error", "ename": "ZeroDivisionError", "evalue": "x", "traceback": [],
               "engine_info": {"engine_uuid": String::from_utf8_lossy(&engine)}})
    };
    MessageBuilder::with_session(String::from_utf8_lossy(&engine).into_owned()).build(
        &signer(),
        req.idents.clone(),
        "apply_reply",
        &req.header,
        &md,
        &content,
        bufs,
    )
}

#[test]
fn fan_out_derives_ids_and_resigns() {
    let now = Instant::now();
    let mut s = sched(Some(Duration::from_secs(5)), 2, now);
    let req = bcast("orig", &[0, 1], false);
    let acts = s.submit(req.clone(), now);
    let reqs = to_engine(&acts);
    assert_eq!(reqs.len(), 2);
    let orig_h: Value = serde_json::from_slice(&req.header).unwrap();
    for (i, m) in reqs.iter().enumerate() {
        let u = String::from_utf8(uuid(i as u32)).unwrap();
        assert_eq!(m.idents, vec![uuid(i as u32), CLIENT.to_vec()]);
        let h: Value = serde_json::from_slice(&m.header).unwrap();
        assert_eq!(h["msg_id"], format!("orig_{u}"));
        for k in ["msg_type", "session", "username", "date", "version"] {
            assert_eq!(h[k], orig_h[k], "header field {k} kept");
        }
        assert_eq!(h["session"], CLIENT_SESSION);
        let md = m.metadata_value().unwrap();
        assert_eq!(md["targets"], json!([[u, i]]));
        assert_eq!(md["original_msg_id"], "orig");
        assert_eq!(md["is_broadcast"], true);
        assert_eq!(md["is_coalescing"], false);
        assert_eq!(m.content, req.content);
        assert_eq!(m.parent, req.parent);
        assert_eq!(m.buffers, req.buffers);
        Signer::new(KEY)
            .verify(m)
            .expect("re-signed with the session key");
        assert!(Signer::new(b"other").verify(m).is_err());
    }
    assert_eq!(s.outstanding_on(&uuid(0)), 1);
    assert_eq!(s.in_flight(), 1);
}

#[test]
fn non_coalescing_replies_are_relayed_unchanged() {
    let now = Instant::now();
    let mut s = sched(Some(Duration::from_secs(5)), 2, now);
    let reqs = to_engine(&s.submit(bcast("orig", &[0, 1], false), now));
    let r1 = answer(&reqs[1], "ok", vec![b"one".to_vec()]);
    let got = to_client(s.on_engine_reply(r1.clone(), now));
    assert_eq!(got.len(), 1);
    let mut expect = r1;
    expect.idents = vec![CLIENT.to_vec()];
    assert_eq!(got[0], expect);
    Signer::new(KEY).verify(&got[0]).unwrap();
    let got = to_client(s.on_engine_reply(answer(&reqs[0], "ok", vec![]), now));
    assert_eq!(got.len(), 1);
    assert_eq!(s.in_flight(), 0);
    // a duplicate reply is dropped
    assert!(s
        .on_engine_reply(answer(&reqs[0], "ok", vec![]), now)
        .is_empty());
}

#[test]
fn coalescing_waits_for_all_and_orders_buffers_by_target() {
    let now = Instant::now();
    let mut s = sched(Some(Duration::from_secs(5)), 3, now);
    let reqs = to_engine(&s.submit(bcast("orig", &[2, 0, 1], true), now));
    assert_eq!(reqs.len(), 3);
    // reqs are in target order: engines 2, 0, 1. Answer 0, then 1, then 2.
    let bufs = |i: u32| {
        vec![
            format!("e{i}-a").into_bytes(),
            format!("e{i}-b").into_bytes(),
        ]
    };
    assert!(s
        .on_engine_reply(answer(&reqs[1], "ok", bufs(0)), now)
        .is_empty());
    let last = answer(&reqs[2], "ok", bufs(1));
    assert!(s
        .on_engine_reply(answer(&reqs[0], "ok", bufs(2)), now)
        .is_empty());
    let got = to_client(s.on_engine_reply(last.clone(), now));
    assert_eq!(got.len(), 1);
    let m = &got[0];
    let mut want = bufs(2);
    want.extend(bufs(0));
    want.extend(bufs(1));
    assert_eq!(m.buffers, want, "buffers follow broadcast_targets order");
    let md = m.metadata_value().unwrap();
    assert_eq!(md["broadcast_targets"], targets(&[2, 0, 1]));
    assert_eq!(md["original_msg_id"], "orig");
    assert_eq!(md["is_coalescing"], true);
    assert_eq!(md["is_broadcast"], true);
    assert_eq!(md["status"], "ok");
    assert_eq!(m.header, last.header, "the last reply's header");
    assert_eq!(m.parent, last.parent);
    assert_eq!(m.content, last.content);
    Signer::new(KEY)
        .verify(m)
        .expect("coalesced reply signed anew");
    assert_eq!(s.in_flight(), 0);
}

#[test]
fn coalescing_never_hides_an_error() {
    let now = Instant::now();
    let mut s = sched(Some(Duration::from_secs(5)), 2, now);
    let reqs = to_engine(&s.submit(bcast("orig", &[0, 1], true), now));
    s.on_engine_reply(answer(&reqs[0], "error", vec![]), now);
    let got = to_client(s.on_engine_reply(answer(&reqs[1], "ok", vec![b"x".to_vec()]), now));
    let c = got[0].content_value().unwrap();
    assert_eq!(c["status"], "error");
    assert_eq!(c["ename"], "ZeroDivisionError");
}

#[test]
fn unknown_target_gets_engine_error_at_once() {
    let now = Instant::now();
    let mut s = sched(Some(Duration::from_secs(5)), 1, now);
    let acts = s.submit(bcast("orig", &[0, 7], false), now);
    assert_eq!(to_engine(&acts).len(), 1);
    let got = to_client(acts);
    assert_eq!(got.len(), 1);
    let p: Value = serde_json::from_slice(&got[0].parent).unwrap();
    assert_eq!(
        p["msg_id"],
        format!("orig_{}", String::from_utf8(uuid(7)).unwrap())
    );
    assert_eq!(p["session"], CLIENT_SESSION);
    let c = got[0].content_value().unwrap();
    assert_eq!(c["ename"], "EngineError");
    assert_eq!(c["engine_info"], json!({}));
    let md = got[0].metadata_value().unwrap();
    assert_eq!(md["is_broadcast"], true);
    assert_eq!(md["original_msg_id"], "orig");
    Signer::new(KEY).verify(&got[0]).unwrap();
}

#[test]
fn engine_death_answers_outstanding_targets_after_grace() {
    let t0 = Instant::now();
    let mut s = sched(Some(Duration::from_secs(5)), 2, t0);
    let reqs = to_engine(&s.submit(bcast("nc", &[0, 1], false), t0));
    let creqs = to_engine(&s.submit(bcast("co", &[0, 1], true), t0));
    s.on_engine_reply(answer(&reqs[0], "ok", vec![]), t0);
    s.on_engine_reply(answer(&creqs[0], "ok", vec![b"zero".to_vec()]), t0);
    assert!(s.remove_engine(&uuid(1), t0).is_empty());
    assert_eq!(s.next_deadline(), Some(t0 + Duration::from_secs(5)));
    assert!(s.tick(t0 + Duration::from_secs(4)).is_empty());
    let mut got = to_client(s.tick(t0 + Duration::from_secs(5)));
    assert_eq!(got.len(), 2);
    got.sort_by_key(|m| m.metadata_value().unwrap()["is_coalescing"].as_bool());
    let c = got[0].content_value().unwrap();
    assert_eq!(c["ename"], "EngineError");
    assert_eq!(
        c["evalue"],
        format!(
            "Engine 1 died while running task 'nc_{}'",
            String::from_utf8(uuid(1)).unwrap()
        )
    );
    let md = got[1].metadata_value().unwrap();
    assert_eq!(md["broadcast_targets"], targets(&[0, 1]));
    assert_eq!(got[1].content_value().unwrap()["ename"], "EngineError");
    assert_eq!(got[1].buffers, vec![b"zero".to_vec()]);
    assert_eq!(s.in_flight(), 0);
    assert_eq!(s.next_deadline(), None);
}

#[test]
fn late_reply_within_grace_wins() {
    let t0 = Instant::now();
    let mut s = sched(Some(Duration::from_secs(5)), 1, t0);
    let reqs = to_engine(&s.submit(bcast("nc", &[0], false), t0));
    s.remove_engine(&uuid(0), t0);
    assert_eq!(
        to_client(s.on_engine_reply(answer(&reqs[0], "ok", vec![]), t0)).len(),
        1
    );
    assert!(s.tick(t0 + Duration::from_secs(6)).is_empty());
}

#[test]
fn without_grace_lost_targets_are_forgotten() {
    let t0 = Instant::now();
    let mut s = sched(None, 2, t0);
    let reqs = to_engine(&s.submit(bcast("nc", &[0, 1], false), t0));
    to_engine(&s.submit(bcast("co", &[0, 1], true), t0));
    assert!(s.remove_engine(&uuid(1), t0).is_empty());
    assert_eq!(s.next_deadline(), None);
    // the other target of the non-coalescing request is still relayed
    assert_eq!(
        to_client(s.on_engine_reply(answer(&reqs[0], "ok", vec![]), t0)).len(),
        1
    );
    assert_eq!(s.in_flight(), 0, "both requests are gone");
}

#[test]
fn malformed_requests_and_replies() {
    let now = Instant::now();
    let mut s = sched(Some(Duration::from_secs(5)), 1, now);
    for md in [
        json!({"targets": "all"}),
        json!({"targets": [[5, 0]]}),
        json!({"is_broadcast": true}),
        json!([]),
    ] {
        let got = to_client(s.submit(request("bad", md.clone()), now));
        assert_eq!(got.len(), 1, "{md}");
        let c = got[0].content_value().unwrap();
        assert_eq!(c["status"], "error");
        assert_eq!(
            got[0].parent,
            header("bad", "apply_request", CLIENT_SESSION)
        );
    }
    let mut m = bcast("x", &[0], false);
    m.header = b"nope".to_vec();
    assert!(s.submit(m, now).is_empty());
    let mut m = bcast("x", &[0], false);
    m.idents.clear();
    assert!(s.submit(m, now).is_empty());
    // replies: unknown parent, wrong engine
    let reqs = to_engine(&s.submit(bcast("ok", &[0], false), now));
    let mut r = answer(&reqs[0], "ok", vec![]);
    r.idents[0] = uuid(9);
    assert!(s.on_engine_reply(r, now).is_empty());
    let mut r = answer(&reqs[0], "ok", vec![]);
    r.parent = b"{}".to_vec();
    assert!(s.on_engine_reply(r, now).is_empty());
    assert!(s.on_engine_reply(WireMessage::default(), now).is_empty());
    assert_eq!(
        to_client(s.on_engine_reply(answer(&reqs[0], "ok", vec![]), now)).len(),
        1
    );
}

#[test]
fn duplicate_targets_are_served_once_and_the_broadcast_completes() {
    // issue 11: `targets=[0, 0]` sent two byte-identical requests; the engine dropped the second
    // as a replay and the broadcast never completed.
    let now = Instant::now();
    for coalescing in [true, false] {
        let mut s = sched(Some(Duration::from_secs(5)), 2, now);
        let reqs = to_engine(&s.submit(bcast("orig", &[0, 0, 1, 0], coalescing), now));
        assert_eq!(reqs.len(), 2, "each engine once");
        assert_ne!(reqs[0].signature, reqs[1].signature);
        let mut got = Vec::new();
        for r in &reqs {
            let i = reqs.iter().position(|x| x == r).unwrap();
            got.extend(to_client(s.on_engine_reply(
                answer(r, "ok", vec![format!("r{i}").into_bytes()]),
                now,
            )));
        }
        assert_eq!(s.in_flight(), 0, "complete");
        if coalescing {
            assert_eq!(got.len(), 1);
            let md = got[0].metadata_value().unwrap();
            assert_eq!(md["broadcast_targets"], targets(&[0, 1]));
            assert_eq!(got[0].buffers, vec![b"r0".to_vec(), b"r1".to_vec()]);
        } else {
            assert_eq!(got.len(), 2);
        }
    }
}

#[test]
fn a_16384_target_broadcast_does_linear_work() {
    // issue 11: every derived request copied the whole target list (O(n²): 16 000 targets froze
    // the controller's loop for 36 s). Each derived request now carries one target, and the
    // request is fanned out, answered and coalesced in one pass over the targets.
    let n = 16_384u32;
    let now = Instant::now();
    let mut s = sched(Some(Duration::from_secs(5)), n, now);
    let ids: Vec<u32> = (0..n).rev().collect();
    let acts = s.submit(bcast("big", &ids, true), now);
    let reqs = to_engine(&acts);
    assert_eq!(reqs.len(), n as usize);
    let first_md = reqs[0].metadata.len();
    for (r, &i) in reqs.iter().zip(&ids) {
        assert_eq!(r.idents[0], uuid(i));
        // one target per request: the metadata does not grow with n
        assert!(r.metadata.len() <= first_md + 8, "{}", r.metadata.len());
    }
    let mut done = Vec::new();
    for r in &reqs {
        done = to_client(s.on_engine_reply(answer(r, "ok", vec![r.idents[0].clone()]), now));
    }
    assert_eq!(done.len(), 1);
    let md = done[0].metadata_value().unwrap();
    assert_eq!(md["broadcast_targets"], targets(&ids));
    let want: Vec<Vec<u8>> = ids.iter().map(|&i| uuid(i)).collect();
    assert_eq!(done[0].buffers, want);
    assert_eq!(s.in_flight(), 0);
}

#[test]
fn shared_buffers_go_to_every_target_without_a_copy() {
    let now = Instant::now();
    let mut s = sched(Some(Duration::from_secs(5)), 3, now);
    s.share_buffers(true);
    let req = bcast("orig", &[0, 1, 2], false);
    let acts = s.submit(req.clone(), now);
    let mut lent = Vec::new();
    for a in &acts {
        match a {
            BroadcastAction::ToEngineShared(f, b) => {
                // the derived request up to its content, then the client's buffers
                let m = split(f.clone());
                assert!(m.buffers.is_empty());
                Signer::new(KEY).verify(&m).expect("signed as before");
                lent.push(b.clone());
            }
            BroadcastAction::ToEngine(_) => panic!("copied: {a:?}"),
            BroadcastAction::ToClient(_) => {}
        }
    }
    assert_eq!(lent.len(), 3);
    assert!(lent.iter().all(|b| std::sync::Arc::ptr_eq(b, &lent[0])));
    assert_eq!(*lent[0], req.buffers);
}
