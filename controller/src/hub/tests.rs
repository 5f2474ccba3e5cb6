//! Sans-I/O tests of the hub: registration (requested ids, duplicates, first-pong
//! registration, id-order races), heartbeats, relays with identity swapping, refusal of bad
//! input, hub queries, task routing through the scheduler, and shutdown. No sockets: frames in,
//! effects out.

use super::*;
use rpar_core::connection::EngineInfo;
use rpar_core::wire::DELIM;
use rpar_taskdb::memory::Limits as DbLimits;
use rpar_taskdb::MemoryDb;
use serde_json::json;

const KEY: &[u8] = b"test-key";

fn engine_info() -> EngineInfo {
    EngineInfo {
        ssh: String::new(),
        interface: "tcp://127.0.0.1".into(),
        registration: 1,
        control: 2,
        mux: 3,
        task: 4,
        iopub: 5,
        hb_ping: 6,
        hb_pong: 7,
        broadcast: vec![8],
        key: String::from_utf8(KEY.to_vec()).unwrap(),
        curve_serverkey: None,
        location: "here".into(),
        pack: "json".into(),
        unpack: "json".into(),
        signature_scheme: "hmac-sha256".into(),
        rpar_native: None,
    }
}

fn hub(now: Instant) -> Hub {
    hub_with(now, "leastload")
}

fn hub_with(now: Instant, scheme: &str) -> Hub {
    hub_from(test_config(scheme), now)
}

fn test_config(scheme: &str) -> HubConfig {
    HubConfig {
        hb_period: Duration::from_millis(100),
        max_heartbeat_misses: 2,
        registration_timeout: Duration::from_secs(5),
        engine_info: engine_info(),
        scheme: scheme.into(),
        hwm: 1,
        engine_death_grace: Duration::from_millis(500),
    }
}

fn hub_from(cfg: HubConfig, now: Instant) -> Hub {
    let db: Db = Box::new(MemoryDb::new(DbLimits::default()));
    Hub::new(cfg, KEY, "hub-session".into(), db, now)
}

/// A peer (client or engine) with its own session, signing with the shared key.
struct Peer {
    b: MessageBuilder,
    s: Signer,
}

impl Peer {
    fn new(session: &str) -> Peer {
        Peer {
            b: MessageBuilder::with_session(session.into()),
            s: Signer::new(KEY),
        }
    }
    fn msg(
        &self,
        idents: Vec<Vec<u8>>,
        t: &str,
        parent: &[u8],
        md: Value,
        c: Value,
    ) -> WireMessage {
        self.b.build(&self.s, idents, t, parent, &md, &c, vec![])
    }
    fn frames(&self, idents: Vec<Vec<u8>>, t: &str, c: Value) -> Frames {
        self.msg(idents, t, b"{}", json!({}), c).into_frames()
    }
}

fn sends(out: &[Effect], sock: Sock) -> Vec<WireMessage> {
    out.iter()
        .filter_map(|e| match e {
            Effect::Send(s, f) if *s == sock => {
                WireMessage::split(f.clone(), &Limits::default()).ok()
            }
            _ => None,
        })
        .collect()
}

fn raw_sends(out: &[Effect], sock: Sock) -> Vec<Frames> {
    out.iter()
        .filter_map(|e| match e {
            Effect::Send(s, f) if *s == sock => Some(f.clone()),
            _ => None,
        })
        .collect()
}

fn msg_type(m: &WireMessage) -> String {
    Header::parse(&m.header).unwrap().msg_type
}

fn content(m: &WireMessage) -> Value {
    m.content_value().unwrap()
}

use rpar_core::Header;

/// Engine `uuid` sends a `registration_request` with content `c`.
fn request_registration(h: &mut Hub, uuid: &str, c: Value, now: Instant) -> Vec<Effect> {
    let e = Peer::new(uuid);
    let frames = e.frames(vec![uuid.as_bytes().to_vec()], "registration_request", c);
    h.on_message(Sock::Registration, frames, now)
}

/// Register engine `uuid` (optionally requesting `id`) and answer one ping; returns its id.
fn register(h: &mut Hub, uuid: &str, id: Option<u32>, now: Instant) -> u32 {
    let mut c = json!({"uuid": uuid});
    if let Some(i) = id {
        c["id"] = json!(i);
    }
    let out = request_registration(h, uuid, c, now);
    let reply = &sends(&out, Sock::Registration)[0];
    assert_eq!(reply.idents, vec![uuid.as_bytes().to_vec()]);
    let rc = content(reply);
    assert_eq!(rc["status"], "ok", "{rc}");
    let got = rc["id"].as_u64().unwrap() as u32;
    pong(h, uuid, now);
    got
}

fn current_ping(h: &mut Hub, now: Instant) -> Vec<u8> {
    let out = h.tick(now);
    raw_sends(&out, Sock::HbPing)
        .pop()
        .map(|f| f[0].clone())
        .unwrap_or_else(|| h.heart_token())
}

fn pong(h: &mut Hub, uuid: &str, now: Instant) -> Vec<Effect> {
    let token = h.heart_token();
    h.on_message(Sock::HbPong, vec![uuid.as_bytes().to_vec(), token], now)
}

#[test]
fn registration_waits_for_the_first_heartbeat() {
    let t0 = Instant::now();
    let mut h = hub(t0);
    let _ = current_ping(&mut h, t0);
    let out = request_registration(&mut h, "e0", json!({"uuid": "e0", "id": 3}), t0);
    let reply = &sends(&out, Sock::Registration)[0];
    assert_eq!(msg_type(reply), "registration_reply");
    let c = content(reply);
    assert_eq!(c["id"], 3);
    assert_eq!(c["hb_period"], 100);
    assert_eq!(c["connection_info"]["mux"], 3);
    assert!(
        c["connection_info"].get("key").is_none(),
        "the key is never sent"
    );
    assert!(
        sends(&out, Sock::Notification).is_empty(),
        "not up before its heart answers"
    );
    assert_eq!(h.registered().count(), 0);
    // a client asking now sees no engine
    let cl = Peer::new("client");
    let out = h.on_message(
        Sock::Registration,
        cl.frames(vec![b"c".to_vec()], "connection_request", json!({})),
        t0,
    );
    assert_eq!(
        content(&sends(&out, Sock::Registration)[0])["engines"],
        json!({})
    );
    // first pong: registered at once, notification published
    let out = pong(&mut h, "e0", t0 + Duration::from_millis(1));
    let note = &sends(&out, Sock::Notification)[0];
    assert_eq!(msg_type(note), "registration_notification");
    assert_eq!(content(note), json!({"id": 3, "uuid": "e0"}));
    assert!(out.iter().any(|e| matches!(e, Effect::SaveEngines)));
    assert_eq!(h.engine_state()["engines"]["3"], "e0");
    let out = h.on_message(
        Sock::Registration,
        cl.frames(vec![b"c".to_vec()], "connection_request", json!({})),
        t0,
    );
    assert_eq!(
        content(&sends(&out, Sock::Registration)[0])["engines"],
        json!({"3": "e0"})
    );
}

#[test]
fn requested_ids_duplicates_and_the_counter() {
    let t0 = Instant::now();
    let mut h = hub(t0);
    assert_eq!(register(&mut h, "a", Some(1), t0), 1);
    // taken id: the next free counter value instead (counter is past 1 now)
    assert_eq!(register(&mut h, "b", Some(1), t0), 2);
    assert_eq!(register(&mut h, "c", None, t0), 3);
    // a free low id is still granted when requested (MPI ranks after a restart)
    assert_eq!(register(&mut h, "d", Some(0), t0), 0);
    // duplicate uuid: an error reply, nothing registered
    let out = request_registration(&mut h, "a", json!({"uuid": "a"}), t0);
    let c = content(&sends(&out, Sock::Registration)[0]);
    assert_eq!(c["status"], "error");
    assert_eq!(c["ename"], "KeyError");
    assert_eq!(h.registered().count(), 4);
}

#[test]
fn registrations_finish_in_id_order() {
    let t0 = Instant::now();
    let mut h = hub(t0);
    let _ = current_ping(&mut h, t0);
    for u in ["r0", "r1"] {
        request_registration(&mut h, u, json!({"uuid": u}), t0);
    }
    // r1's heart answers first: held back while r0 is young
    let out = pong(&mut h, "r1", t0 + Duration::from_millis(5));
    assert!(sends(&out, Sock::Notification).is_empty());
    // r0 answers: both register, 0 before 1
    let out = pong(&mut h, "r0", t0 + Duration::from_millis(10));
    assert_eq!(notified_ids(&out), vec![json!(0), json!(1)]);
}

#[test]
fn a_silent_lower_id_holds_others_only_briefly() {
    let t0 = Instant::now();
    let mut h = hub(t0);
    let _ = current_ping(&mut h, t0);
    for u in ["s0", "s1"] {
        request_registration(&mut h, u, json!({"uuid": u}), t0);
    }
    pong(&mut h, "s1", t0);
    // after the hold (min(period, 1 s) = 100 ms) s1 registers without s0
    let out = h.tick(t0 + Duration::from_millis(150));
    let notes = sends(&out, Sock::Notification);
    assert_eq!(notes.len(), 1);
    assert_eq!(content(&notes[0])["uuid"], "s1");
}

#[test]
fn under_the_pure_scheme_a_slow_lower_id_holds_others_until_it_registers() {
    let t0 = Instant::now();
    let mut h = hub_with(t0, "pure");
    let _ = current_ping(&mut h, t0);
    for u in ["p0", "p1"] {
        request_registration(&mut h, u, json!({"uuid": u}), t0);
    }
    pong(&mut h, "p1", t0);
    // well past min(period, 1 s): p1 still waits for p0
    let out = h.tick(t0 + Duration::from_millis(1500));
    assert!(sends(&out, Sock::Notification).is_empty());
    let out = pong(&mut h, "p0", t0 + Duration::from_millis(1600));
    assert_eq!(notified_ids(&out), vec![json!(0), json!(1)]);
}

#[test]
fn silent_heart_is_unregistered_and_answering_one_is_not() {
    let t0 = Instant::now();
    let mut h = hub(t0);
    register(&mut h, "alive", None, t0);
    register(&mut h, "dead", None, t0);
    let mut unregistered = Vec::new();
    let mut t = t0;
    for _ in 0..6 {
        t += Duration::from_millis(100);
        let out = h.tick(t);
        unregistered.extend(
            sends(&out, Sock::Notification)
                .into_iter()
                .map(|m| content(&m)["uuid"].clone()),
        );
        if let Some(ping) = raw_sends(&out, Sock::HbPing).pop() {
            h.on_message(Sock::HbPong, vec![b"alive".to_vec(), ping[0].clone()], t);
        }
    }
    assert_eq!(unregistered, vec![json!("dead")]);
    assert_eq!(
        h.registered().map(|e| e.uuid.clone()).collect::<Vec<_>>(),
        vec!["alive"]
    );
}

#[test]
fn stale_or_malformed_pongs_do_not_register() {
    let t0 = Instant::now();
    let mut h = hub(t0);
    let _ = current_ping(&mut h, t0);
    request_registration(&mut h, "x", json!({"uuid": "x"}), t0);
    let out = h.on_message(
        Sock::HbPong,
        vec![b"x".to_vec(), b"not-a-token".to_vec()],
        t0,
    );
    assert!(out.is_empty());
    let out = h.on_message(Sock::HbPong, vec![b"x".to_vec()], t0);
    assert!(out.is_empty());
    assert_eq!(h.registered().count(), 0);
}

#[test]
fn a_late_echo_registers_a_pending_engine() {
    // In a big job on busy cores the first echo can come back after two or more beats: for a
    // pending engine it still proves the heart is connected and answering.
    let t0 = Instant::now();
    let mut h = hub(t0);
    let old = current_ping(&mut h, t0);
    request_registration(&mut h, "late", json!({"uuid": "late"}), t0);
    let p = Duration::from_millis(100);
    for i in 1..=4u32 {
        let _ = current_ping(&mut h, t0 + p * i);
    }
    assert_ne!(h.heart_token(), old);
    let now = t0 + p * 4 + Duration::from_millis(10);
    let out = h.on_message(Sock::HbPong, vec![b"late".to_vec(), old.clone()], now);
    assert_eq!(sends(&out, Sock::Notification).len(), 1);
    assert_eq!(h.registered().count(), 1);
    // once registered, late echoes are misses again: they do not count as answers
    assert!(h
        .on_message(Sock::HbPong, vec![b"late".to_vec(), old], now)
        .is_empty());
}

#[test]
fn a_new_notification_subscriber_hears_of_recent_registrations_again() {
    // The Python client subscribes to notifications only after its connection_request reply:
    // an engine registered in between must not be lost to it.
    let t0 = Instant::now();
    let mut h = hub(t0);
    register(&mut h, "r0", None, t0);
    register(&mut h, "r1", None, t0);
    let out = h.on_message(Sock::Notification, vec![b"\x01".to_vec()], t0);
    let again = sends(&out, Sock::Notification);
    assert_eq!(again.len(), 2);
    assert!(again
        .iter()
        .all(|m| msg_type(m) == "registration_notification"));
    let ids: Vec<u64> = again
        .iter()
        .map(|m| content(m)["id"].as_u64().unwrap())
        .collect();
    assert_eq!(ids, vec![0, 1]);
    assert_eq!(content(&again[1])["uuid"], "r1");
    // an unsubscription, or a subscriber long after, gets nothing
    assert!(h
        .on_message(Sock::Notification, vec![b"\x00".to_vec()], t0)
        .is_empty());
    let late = t0 + Duration::from_secs(11);
    let out = h.on_message(Sock::Notification, vec![b"\x01".to_vec()], late);
    assert!(sends(&out, Sock::Notification).is_empty());
}

#[test]
fn unregistration_request_and_iopub_shutdown_reply() {
    let t0 = Instant::now();
    let mut h = hub(t0);
    register(&mut h, "u0", None, t0);
    register(&mut h, "u1", None, t0);
    let e = Peer::new("u0");
    let out = h.on_message(
        Sock::Registration,
        e.frames(
            vec![b"u0".to_vec()],
            "unregistration_request",
            json!({"id": 0}),
        ),
        t0,
    );
    assert!(
        sends(&out, Sock::Registration).is_empty(),
        "no reply to unregistration"
    );
    let n = &sends(&out, Sock::Notification)[0];
    assert_eq!(msg_type(n), "unregistration_notification");
    assert_eq!(content(n), json!({"id": 0, "uuid": "u0"}));
    // engine 1 publishes shutdown_reply on iopub: unregistered, and the message is relayed
    let e1 = Peer::new("u1");
    let m = e1.msg(
        vec![b"engine.1.shutdown".to_vec()],
        "shutdown_reply",
        b"{}",
        json!({}),
        json!({"status": "ok", "restart": false}),
    );
    let out = h.on_message(Sock::IopubEngine, m.into_frames(), t0);
    assert_eq!(raw_sends(&out, Sock::IopubClient).len(), 1);
    assert_eq!(content(&sends(&out, Sock::Notification)[0])["uuid"], "u1");
    assert_eq!(h.registered().count(), 0);
}

#[test]
fn mux_swaps_identities_both_ways_and_records() {
    let t0 = Instant::now();
    let mut h = hub(t0);
    register(&mut h, "eng", None, t0);
    let cl = Peer::new("client");
    let req = cl.msg(
        vec![b"cid".to_vec(), b"eng".to_vec()],
        "apply_request",
        b"{}",
        json!({}),
        json!({}),
    );
    let req_header = req.header.clone();
    let out = h.on_message(Sock::MuxClient, req.into_frames(), t0);
    let fwd = &raw_sends(&out, Sock::MuxEngine)[0];
    assert_eq!(
        &fwd[..3],
        &[b"eng".to_vec(), b"cid".to_vec(), DELIM.to_vec()]
    );
    let req_id = Header::parse(&req_header).unwrap().msg_id;
    // queue_status shows it queued on engine 0
    let qs = query(
        &mut h,
        "queue_request",
        json!({"targets": null, "verbose": true}),
        t0,
    );
    assert_eq!(qs["0"]["queue"], json!([req_id]));
    // the engine replies through the engine-side socket
    let e = Peer::new("eng");
    let rep = e.msg(
        vec![b"eng".to_vec(), b"cid".to_vec()],
        "apply_reply",
        &req_header,
        json!({"status": "ok", "engine": "eng", "started": rpar_core::ids::now_iso()}),
        json!({"status": "ok"}),
    );
    let out = h.on_message(Sock::MuxEngine, rep.into_frames(), t0);
    let back = &raw_sends(&out, Sock::MuxClient)[0];
    assert_eq!(&back[..2], &[b"cid".to_vec(), b"eng".to_vec()]);
    let qs = query(&mut h, "queue_request", json!({"targets": [0]}), t0);
    assert_eq!(qs["0"], json!({"queue": 0, "completed": 1, "tasks": 0}));
    let rr = query(
        &mut h,
        "result_request",
        json!({"msg_ids": [req_id.clone()]}),
        t0,
    );
    assert_eq!(rr["completed"], json!([req_id.clone()]));
    assert_eq!(rr[&req_id]["result_content"]["status"], "ok");
    let hist = query(&mut h, "history_request", json!({}), t0);
    assert_eq!(hist["history"], json!([req_id]));
}

/// Send a client's `execute_request` for engine `engine` through the mux; returns its msg_id
/// and header (for [`mux_reply_ok`]).
fn mux_execute(h: &mut Hub, engine: &str, now: Instant) -> (String, Vec<u8>) {
    let req = Peer::new("client").msg(
        vec![b"cid".to_vec(), engine.as_bytes().to_vec()],
        "execute_request",
        b"{}",
        json!({}),
        json!({"code": "1"}),
    );
    let id = Header::parse(&req.header).unwrap().msg_id;
    let hdr = req.header.clone();
    h.on_message(Sock::MuxClient, req.into_frames(), now);
    (id, hdr)
}

/// Engine `engine`'s `ok` reply to the request whose header is `parent`.
fn mux_reply_ok(h: &mut Hub, engine: &str, parent: &[u8], now: Instant) {
    let rep = Peer::new(engine).msg(
        vec![engine.as_bytes().to_vec(), b"cid".to_vec()],
        "execute_reply",
        parent,
        json!({"status": "ok"}),
        json!({"status": "ok", "execution_count": 1}),
    );
    h.on_message(Sock::MuxEngine, rep.into_frames(), now);
}

/// The engine ids of the registration notifications among `out`, in order.
fn notified_ids(out: &[Effect]) -> Vec<Value> {
    sends(out, Sock::Notification)
        .iter()
        .map(|m| content(m)["id"].clone())
        .collect()
}

/// Send a hub query from a client; return the reply content (checking its parent).
fn query(h: &mut Hub, t: &str, c: Value, now: Instant) -> Value {
    let cl = Peer::new("querier");
    let m = cl.msg(vec![b"q".to_vec()], t, b"{}", json!({}), c);
    let mid = Header::parse(&m.header).unwrap().msg_id;
    let out = h.on_message(Sock::Registration, m.into_frames(), now);
    let r = sends(&out, Sock::Registration).pop().expect("a reply");
    assert_eq!(
        r.parent_value().unwrap()["msg_id"],
        json!(mid),
        "reply parent is the request"
    );
    content(&r)
}

#[test]
fn unknown_query_gets_hub_error_and_bad_targets_too() {
    let t0 = Instant::now();
    let mut h = hub(t0);
    let c = query(&mut h, "bogus_request", json!({}), t0);
    assert_eq!(c["status"], "error");
    assert_eq!(c["ename"], "KeyError");
    assert!(c["evalue"].as_str().unwrap().contains("bogus_request"));
    let c = query(&mut h, "queue_request", json!({"targets": null}), t0);
    assert_eq!(c["ename"], "IndexError");
    register(&mut h, "e", None, t0);
    let c = query(&mut h, "queue_request", json!({"targets": [7]}), t0);
    assert_eq!(c["ename"], "IndexError");
    let c = query(&mut h, "result_request", json!({"msg_ids": ["nope"]}), t0);
    assert_eq!(c["status"], "error");
    assert!(c["evalue"].as_str().unwrap().contains("nope"));
}

#[test]
fn bad_input_is_dropped_without_effects() {
    let t0 = Instant::now();
    let mut h = hub(t0);
    let cl = Peer::new("client");
    // bad signature
    let mut m = cl.msg(
        vec![b"q".to_vec()],
        "connection_request",
        b"{}",
        json!({}),
        json!({}),
    );
    m.content = br#"{"tampered":1}"#.to_vec();
    assert!(h
        .on_message(Sock::Registration, m.into_frames(), t0)
        .is_empty());
    // unsigned
    let mut m = cl.msg(
        vec![b"q".to_vec()],
        "connection_request",
        b"{}",
        json!({}),
        json!({}),
    );
    m.signature.clear();
    assert!(h
        .on_message(Sock::Registration, m.into_frames(), t0)
        .is_empty());
    // wrong key
    let other = Peer {
        b: MessageBuilder::new(),
        s: Signer::new(b"other"),
    };
    assert!(h
        .on_message(
            Sock::Registration,
            other.frames(vec![b"q".to_vec()], "connection_request", json!({})),
            t0
        )
        .is_empty());
    // replay: the first copy is answered, the second dropped
    let m = cl.frames(vec![b"q".to_vec()], "connection_request", json!({}));
    assert_eq!(h.on_message(Sock::Registration, m.clone(), t0).len(), 1);
    assert!(h.on_message(Sock::Registration, m, t0).is_empty());
    // truncated, no delimiter, garbage
    assert!(h
        .on_message(
            Sock::Registration,
            vec![b"q".to_vec(), DELIM.to_vec(), b"sig".to_vec()],
            t0
        )
        .is_empty());
    assert!(h
        .on_message(Sock::MuxClient, vec![b"x".to_vec(); 8], t0)
        .is_empty());
    assert!(h.on_message(Sock::IopubEngine, vec![], t0).is_empty());
    // signed but not JSON: an error reply, no panic
    let mut m = cl.msg(
        vec![b"q".to_vec()],
        "connection_request",
        b"{}",
        json!({}),
        json!({}),
    );
    m.header = b"{not json".to_vec();
    cl.s.sign_message(&mut m);
    let out = h.on_message(Sock::Registration, m.into_frames(), t0);
    assert_eq!(
        content(&sends(&out, Sock::Registration)[0])["status"],
        "error"
    );
    assert!(h.stats.dropped >= 7);
}

#[test]
fn tasks_route_through_the_scheduler_and_engine_death_fails_them() {
    let t0 = Instant::now();
    let mut h = hub(t0);
    register(&mut h, "w0", None, t0);
    let cl = Peer::new("client");
    let md = json!({"after": [], "follow": [], "timeout": 0.0, "targets": [], "retries": 0, "label": null});
    let t1 = cl.msg(
        vec![b"cid".to_vec()],
        "apply_request",
        b"{}",
        md.clone(),
        json!({}),
    );
    let t2 = cl.msg(vec![b"cid".to_vec()], "apply_request", b"{}", md, json!({}));
    let id1 = Header::parse(&t1.header).unwrap().msg_id;
    let id2 = Header::parse(&t2.header).unwrap().msg_id;
    let out = h.on_message(Sock::TaskClient, t1.into_frames(), t0);
    let sent = raw_sends(&out, Sock::TaskEngine);
    assert_eq!(&sent[0][..2], &[b"w0".to_vec(), b"cid".to_vec()]);
    // hwm 1: the second waits, unassigned
    let out = h.on_message(Sock::TaskClient, t2.into_frames(), t0);
    assert!(raw_sends(&out, Sock::TaskEngine).is_empty());
    let qs = query(
        &mut h,
        "queue_request",
        json!({"targets": null, "verbose": true}),
        t0,
    );
    assert_eq!(qs["0"]["tasks"], json!([id1.clone()]));
    assert_eq!(qs["unassigned"], json!([id2.clone()]));
    // engine dies: after the grace, both tasks fail with EngineError to the client
    let mut out = Vec::new();
    h.unregister(0, t0, &mut out);
    let later = h.tick(t0 + Duration::from_secs(1));
    let replies = sends(&later, Sock::TaskClient);
    let failed: Vec<String> = replies
        .iter()
        .filter(|m| {
            content(m)["ename"] == "EngineError" || content(m)["ename"] == "ImpossibleDependency"
        })
        .map(|m| {
            m.parent_value().unwrap()["msg_id"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    assert!(failed.contains(&id1), "{failed:?}");
    let rs = query(
        &mut h,
        "result_request",
        json!({"msg_ids": [id1.clone()], "status_only": true}),
        t0,
    );
    assert_eq!(rs["completed"], json!([id1]));
}

#[test]
fn shutdown_request_replies_notifies_and_exits() {
    let t0 = Instant::now();
    let mut h = hub(t0);
    let cl = Peer::new("client");
    let m = cl.msg(
        vec![b"q".to_vec()],
        "shutdown_request",
        b"{}",
        json!({}),
        json!({}),
    );
    let mid = Header::parse(&m.header).unwrap().msg_id;
    let out = h.on_message(Sock::Registration, m.into_frames(), t0);
    assert_eq!(
        content(&sends(&out, Sock::Registration)[0]),
        json!({"status": "ok"})
    );
    let n = &sends(&out, Sock::Notification)[0];
    assert_eq!(msg_type(n), "shutdown_notification");
    assert_eq!(n.parent_value().unwrap()["msg_id"], json!(mid));
    assert!(!h.should_exit(t0));
    assert!(h.should_exit(t0 + Duration::from_secs(1)));
}

#[test]
fn purge_refuses_pending_and_drops_completed() {
    let t0 = Instant::now();
    let mut h = hub(t0);
    register(&mut h, "p", None, t0);
    let (id, hdr) = mux_execute(&mut h, "p", t0);
    let c = query(
        &mut h,
        "purge_request",
        json!({"msg_ids": [id.clone()]}),
        t0,
    );
    assert_eq!(c["ename"], "IndexError", "pending ids cannot be purged");
    mux_reply_ok(&mut h, "p", &hdr, t0);
    assert_eq!(
        query(&mut h, "purge_request", json!({"msg_ids": "all"}), t0)["status"],
        "ok"
    );
    let c = query(&mut h, "result_request", json!({"msg_ids": [id]}), t0);
    assert_eq!(c["status"], "error");
}

/// Random frames on every socket, signed and unsigned, JSON and garbage: the hub must neither
/// panic nor answer anything it could not verify.
#[test]
fn random_peer_input_never_panics() {
    use rand::{Rng, SeedableRng};
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    let t0 = Instant::now();
    let mut h = hub(t0);
    register(&mut h, "fz", None, t0);
    let peer = Peer::new("fuzzer");
    let socks = [
        Sock::Registration,
        Sock::HbPong,
        Sock::MuxClient,
        Sock::MuxEngine,
        Sock::ControlClient,
        Sock::ControlEngine,
        Sock::TaskClient,
        Sock::TaskEngine,
        Sock::BcastClient,
        Sock::BcastEngine,
        Sock::IopubEngine,
    ];
    let pieces: [&[u8]; 10] = [
        b"{}",
        b"[]",
        b"null",
        b"{\"msg_id\": 5, \"msg_type\": []}",
        b"{\"msg_type\": \"apply_request\", \"msg_id\": \"x\", \"date\": \"garbage\"}",
        b"{\"targets\": \"nope\", \"after\": {\"dependencies\": 3}, \"retries\": -1}",
        b"{\"msg_ids\": [1, null], \"targets\": [[\"a\", \"b\"]], \"query\": {\"x\": {\"$bogus\": 1}}}",
        b"\xff\xfe\x00",
        b"",
        b"fz",
    ];
    let edges = [
        json!(u32::MAX),
        json!(u64::from(u32::MAX) + 1),
        json!(1u64 << 63),
        json!(u64::MAX),
        json!(-1),
        json!(i64::MIN),
        json!(0.5),
        json!(-1e300),
        json!("0"),
        json!("fz"),
        json!(null),
        json!([]),
        json!(0),
    ];
    for i in 0..3000u32 {
        let sock = socks[rng.gen_range(0..socks.len())];
        let n = rng.gen_range(0..9);
        let mut frames: Frames = (0..n)
            .map(|_| pieces[rng.gen_range(0..pieces.len())].to_vec())
            .collect();
        if rng.gen_bool(0.5) {
            // a well-formed, correctly signed message with hostile JSON inside
            let mut m = WireMessage {
                idents: vec![b"fz".to_vec(), b"cid".to_vec()],
                signature: vec![],
                header: pieces[rng.gen_range(0..pieces.len())].to_vec(),
                parent: pieces[rng.gen_range(0..pieces.len())].to_vec(),
                metadata: pieces[rng.gen_range(0..pieces.len())].to_vec(),
                content: pieces[rng.gen_range(0..pieces.len())].to_vec(),
                buffers: vec![],
            };
            if rng.gen_bool(0.5) {
                let t = [
                    "apply_request",
                    "db_request",
                    "result_request",
                    "queue_request",
                    "purge_request",
                    "resubmit_request",
                    "registration_request",
                    "unregistration_request",
                    "stream",
                ][rng.gen_range(0..9)];
                m.header = peer.b.header_bytes(t);
            }
            m.content = format!(
                "{{\"n\": {i}, \"pad\": {}}}",
                String::from_utf8_lossy(&m.content).len()
            )
            .into_bytes();
            if rng.gen_bool(0.5) {
                // edge values in every id field (issue 11: ids were read modulo 2^32)
                let mut e = || edges[rng.gen_range(0..edges.len())].clone();
                m.content = serde_json::to_vec(&json!({
                    "id": e(), "uuid": "fz", "targets": [e(), e()], "engine_ids": [e()],
                    "msg_ids": [e()], "verbose": e(), "status_only": e(),
                }))
                .unwrap();
                m.metadata = serde_json::to_vec(&json!({
                    "targets": [["fz", e()], e()], "after": [e()], "follow": e(),
                    "retries": e(), "timeout": e(), "is_coalescing": e(),
                }))
                .unwrap();
            }
            peer.s.sign_message(&mut m);
            frames = m.into_frames();
        } else if rng.gen_bool(0.3) {
            frames.insert(rng.gen_range(0..=frames.len()), DELIM.to_vec());
        }
        let _ = h.on_message(sock, frames, t0 + Duration::from_millis(u64::from(i)));
        if i % 100 == 0 {
            let _ = h.tick(t0 + Duration::from_millis(u64::from(i)));
        }
    }
    // still serving
    let c = query(
        &mut h,
        "connection_request",
        json!({}),
        t0 + Duration::from_secs(4),
    );
    assert_eq!(c["status"], "ok");
}

#[test]
fn snapshot_counts_jobs_states_outcomes_and_the_dead() {
    let t0 = Instant::now();
    let mut h = hub(t0);
    let job =
        |rank: u32| json!({"rpar_job": {"id": "n1:7", "host": "n1", "size": 2, "rank": rank}});
    for (uuid, rank) in [("w0", 0), ("w1", 1)] {
        let mut c = job(rank);
        c["uuid"] = json!(uuid);
        request_registration(&mut h, uuid, c, t0);
        pong(&mut h, uuid, t0);
    }
    register(&mut h, "py", None, t0);
    let cl = Peer::new("client");
    let md = json!({"after": [], "follow": [], "timeout": 0.0, "targets": [], "retries": 0, "label": null});
    let t1 = cl.msg(vec![b"cid".to_vec()], "apply_request", b"{}", md, json!({}));
    let parent = t1.header.clone();
    let out = h.on_message(Sock::TaskClient, t1.into_frames(), t0);
    let to = raw_sends(&out, Sock::TaskEngine)[0][0].clone();
    let s = h.snapshot(t0);
    assert_eq!(
        (s.engines.registered, s.engines.busy, s.engines.idle),
        (3, 1, 2)
    );
    assert_eq!(
        (s.tasks.submitted, s.tasks.running, s.tasks.queued),
        (1, 1, 0)
    );
    assert_eq!(s.clients, 1);
    let jobs: Vec<(&str, u64)> = s
        .jobs
        .iter()
        .map(|j| (j.job.as_str(), j.registered))
        .collect();
    assert_eq!(jobs, vec![("ipengine py", 1), ("n1:7", 2)]);
    assert_eq!(s.jobs[1].size, Some(2));
    // the engine answers with an error
    let eng = Peer::new(std::str::from_utf8(&to).unwrap());
    let reply = eng.msg(
        vec![to.clone(), b"cid".to_vec()],
        "apply_reply",
        &parent,
        json!({"status": "error"}),
        json!({"status": "error", "ename": "ZeroDivisionError", "evalue": "division by zero"}),
    );
    let out = h.on_message(Sock::TaskEngine, reply.into_frames(), t0);
    assert_eq!(sends(&out, Sock::TaskClient).len(), 1);
    // the python engine goes away
    let mut out = Vec::new();
    let py = h
        .registered()
        .find(|e| e.uuid == "py")
        .map(|e| e.id)
        .unwrap();
    h.unregister(py, t0, &mut out);
    let s = h.snapshot(t0);
    assert_eq!(
        (s.tasks.failed, s.tasks.completed, s.tasks.running),
        (1, 0, 0)
    );
    assert_eq!(s.failures[0].ename, "ZeroDivisionError");
    assert_eq!((s.engines.registered, s.engines.dead), (2, 1));
    let pj = s.jobs.iter().find(|j| j.kind == "ipengine").unwrap();
    assert_eq!(
        (pj.registered, pj.dead, pj.dead_ids.clone()),
        (0, 1, vec![py])
    );
    let task_in = s
        .sockets
        .iter()
        .find(|c| c.socket == "task_client")
        .unwrap();
    assert_eq!(task_in.received_messages, 1);
    assert!(task_in.received_bytes > 0);
    let task_out = s
        .sockets
        .iter()
        .find(|c| c.socket == "task_engine")
        .unwrap();
    assert_eq!(task_out.sent_messages, 1);
    assert_eq!(s.registration.registrations, 3);
    assert_eq!(s.registration.unregistrations, 1);
}

mod hostile;
mod shared;

/// A snapshot of a big job: one group, every engine counted once. `RPAR_SNAPSHOT_ENGINES`
/// (default 1024) sets the size; the time a snapshot takes is printed (`--nocapture`), not
/// asserted.
#[test]
fn snapshot_of_a_big_job() {
    let n: u32 = std::env::var("RPAR_SNAPSHOT_ENGINES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1024);
    let t0 = Instant::now();
    let mut h = hub(t0);
    for rank in 0..n {
        let uuid = format!("e{rank}");
        let c = json!({"uuid": uuid, "id": rank,
            "rpar_job": {"id": "big:1", "host": "big", "size": n, "rank": rank}});
        request_registration(&mut h, &uuid, c, t0);
        pong(&mut h, &uuid, t0);
    }
    let started = Instant::now();
    let s = h.snapshot(t0);
    let took = started.elapsed();
    println!("snapshot of {n} engines: {took:?}");
    assert_eq!(s.engines.registered, u64::from(n));
    assert_eq!(s.jobs.len(), 1);
    assert_eq!(s.jobs[0].ids.len(), n as usize);
    assert_eq!(s.engine_rows.len(), n as usize);
}

#[test]
fn become_dask_starts_one_scheduler_and_answers_every_waiter() {
    let t0 = Instant::now();
    let mut h = hub(t0);
    let cl = Peer::new("dasker");
    let ask = |h: &mut Hub, args: Value| {
        let m = cl.msg(
            vec![b"q".to_vec()],
            "become_dask_request",
            b"{}",
            json!({}),
            json!({ "scheduler_args": args }),
        );
        h.on_message(Sock::Registration, m.into_frames(), t0)
    };
    // two clients ask before it is up: one start (on the engines' interface), no reply yet
    assert!(sends(&ask(&mut h, json!({})), Sock::Registration).is_empty());
    assert!(sends(&ask(&mut h, json!({"port": 0})), Sock::Registration).is_empty());
    assert!(h.dask_starting());
    assert_eq!(
        h.take_dask_actions(),
        vec![DaskAction::Start {
            scheduler_args: json!({"host": "127.0.0.1"})
        }]
    );
    let info = DaskInfo {
        address: "tcp://127.0.0.1:8786".into(),
        ip: "127.0.0.1".into(),
        port: 8786,
    };
    let replies = sends(&h.dask_started(Ok(info)), Sock::Registration);
    assert_eq!(replies.len(), 2);
    for r in &replies {
        assert_eq!(msg_type(r), "become_dask_reply");
        assert_eq!(content(r)["address"], json!("tcp://127.0.0.1:8786"));
        assert_eq!(content(r)["port"], json!(8786));
    }
    // running: answered at once, nothing started
    let c = query(&mut h, "become_dask_request", json!({}), t0);
    assert_eq!(c["status"], json!("ok"));
    assert!(h.take_dask_actions().is_empty());
    // stop, twice: one Stop action, both replies ok
    assert_eq!(
        query(&mut h, "stop_distributed_request", json!({}), t0)["status"],
        json!("ok")
    );
    assert_eq!(
        query(&mut h, "stop_distributed_request", json!({}), t0)["status"],
        json!("ok")
    );
    assert_eq!(h.take_dask_actions(), vec![DaskAction::Stop]);
    // a start that fails: the error reaches the client in ipyparallel's shape
    assert!(sends(
        &ask(&mut h, json!({"host": "10.1.1.1"})),
        Sock::Registration
    )
    .is_empty());
    assert_eq!(
        h.take_dask_actions(),
        vec![DaskAction::Start {
            scheduler_args: json!({"host": "10.1.1.1"})
        }]
    );
    let out = h.dask_started(Err(("ImportError".into(), "no distributed".into())));
    let r = sends(&out, Sock::Registration);
    assert_eq!(content(&r[0])["status"], json!("error"));
    assert_eq!(content(&r[0])["ename"], json!("ImportError"));
    assert!(!h.dask_starting());
    // a late report of a start nobody waits for is ignored
    assert!(h.dask_started(Err(("X".into(), "y".into()))).is_empty());
}
mod native;
