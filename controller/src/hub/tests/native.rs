//! The hub's native jobs ([`crate::hub::native`]): registration of a whole job in one exchange,
//! the job heartbeat, routing over the job connection, and bad input.

use super::*;
use rpar_core::native::{
    Body, Channel, Decoder, Departure, Encoder, EngineSpec, Envelope, Granted, RouteHeader,
};

/// A simulated job connection.
struct JobPeer {
    conn: Vec<u8>,
    enc: Encoder,
    dec: Decoder,
    uuids: Vec<String>,
}

impl JobPeer {
    fn new(name: &str, n: u32) -> JobPeer {
        JobPeer {
            conn: name.as_bytes().to_vec(),
            enc: Encoder::new(KEY, u64::from(n) * 1000 + name.len() as u64),
            dec: Decoder::new(KEY),
            uuids: (0..n).map(|r| format!("{name}-engine-{r}")).collect(),
        }
    }

    fn frames(&mut self, body: Body, payload: Frames) -> Frames {
        let mut f = vec![self.conn.clone()];
        f.extend(self.enc.encode(body, payload));
        f
    }

    fn register(&mut self, h: &mut Hub, now: Instant) -> (Vec<u32>, Vec<Effect>) {
        let engines = self
            .uuids
            .iter()
            .enumerate()
            .map(|(r, u)| EngineSpec {
                rank: r as u32,
                uuid: u.clone(),
                requested: r as u32,
            })
            .collect();
        let f = self.frames(Body::Register { engines }, vec![]);
        let out = h.on_message(Sock::Native, f, now);
        let replies = self.received(&out);
        let ids = match replies.first() {
            Some((
                Envelope {
                    body: Body::Registered(Ok(Granted { ids, .. })),
                    ..
                },
                _,
            )) => ids.clone(),
            other => panic!("no registration reply: {other:?}"),
        };
        (ids, out)
    }

    /// What the hub sent to this job.
    fn received(&mut self, out: &[Effect]) -> Vec<(Envelope, Frames)> {
        raw_sends(out, Sock::Native)
            .into_iter()
            .filter(|f| f.first() == Some(&self.conn))
            .map(|f| self.dec.decode_owned(f[1..].to_vec()).unwrap())
            .collect()
    }
}

fn notifications(out: &[Effect], t: &str) -> Vec<Value> {
    sends(out, Sock::Notification)
        .iter()
        .filter(|m| msg_type(m) == t)
        .map(content)
        .collect()
}

fn connected_ids(h: &mut Hub, now: Instant) -> Vec<u64> {
    let c = Peer::new("client");
    let out = h.on_message(
        Sock::Registration,
        c.frames(vec![b"c".to_vec()], "connection_request", json!({})),
        now,
    );
    let m = &sends(&out, Sock::Registration)[0];
    let mut ids: Vec<u64> = content(m)["engines"]
        .as_object()
        .unwrap()
        .keys()
        .map(|k| k.parse().unwrap())
        .collect();
    ids.sort();
    ids
}

#[test]
fn a_job_registers_all_its_engines_at_once_and_a_second_gets_free_ids() {
    let t0 = Instant::now();
    let mut h = hub(t0);
    let mut a = JobPeer::new("a", 3);
    let (ids, out) = a.register(&mut h, t0);
    assert_eq!(ids, vec![0, 1, 2]);
    let n = notifications(&out, "registration_notification");
    assert_eq!(n.len(), 3);
    assert_eq!(n[2]["uuid"], json!("a-engine-2"));
    let mut b = JobPeer::new("b", 2);
    let (ids, _) = b.register(&mut h, t0);
    assert_eq!(ids, vec![3, 4]);
    assert_eq!(connected_ids(&mut h, t0), vec![0, 1, 2, 3, 4]);
    assert_eq!(h.native_jobs(), 2);
}

#[test]
fn requests_and_replies_travel_over_the_job_connection_with_the_payload_untouched() {
    let t0 = Instant::now();
    let mut h = hub(t0);
    let mut job = JobPeer::new("j", 2);
    job.register(&mut h, t0);
    let client = Peer::new("client");
    let req = client.msg(
        vec![b"client-1".to_vec(), b"j-engine-1".to_vec()],
        "apply_request",
        b"{}",
        json!({}),
        json!({}),
    );
    let out = h.on_message(Sock::MuxClient, req.clone().into_frames(), t0);
    assert!(raw_sends(&out, Sock::MuxEngine).is_empty());
    let got = job.received(&out);
    assert_eq!(got.len(), 1);
    let (env, payload) = &got[0];
    assert_eq!(
        env.body,
        Body::Route(RouteHeader {
            engine: 1,
            channel: Channel::Mux
        })
    );
    // the ipyparallel frames after the target engine's uuid, as the client signed them
    let mut expect = req.clone();
    expect.idents = vec![b"client-1".to_vec()];
    assert_eq!(payload, &expect.into_frames());
    // the reply comes back to the client, with the engine's uuid as the MUX socket reports it
    let eng = Peer::new("j-engine-1");
    let reply = eng.msg(
        vec![b"client-1".to_vec()],
        "apply_reply",
        &req.header,
        json!({"status": "ok"}),
        json!({"status": "ok"}),
    );
    let f = job.frames(
        Body::Route(RouteHeader {
            engine: 1,
            channel: Channel::Mux,
        }),
        reply.into_frames(),
    );
    let out = h.on_message(Sock::Native, f, t0);
    let to_client = sends(&out, Sock::MuxClient);
    assert_eq!(to_client.len(), 1);
    assert_eq!(
        to_client[0].idents,
        vec![b"client-1".to_vec(), b"j-engine-1".to_vec()]
    );
    assert_eq!(msg_type(&to_client[0]), "apply_reply");
    // iopub passes through to the clients
    let st = eng.msg(
        vec![b"engine.1.status".to_vec()],
        "status",
        &req.header,
        json!({}),
        json!({"execution_state": "idle"}),
    );
    let f = job.frames(
        Body::Route(RouteHeader {
            engine: 1,
            channel: Channel::IoPub,
        }),
        st.into_frames(),
    );
    let out = h.on_message(Sock::Native, f, t0);
    assert_eq!(sends(&out, Sock::IopubClient).len(), 1);
}

#[test]
fn a_job_cannot_speak_for_another_jobs_engines() {
    let t0 = Instant::now();
    let mut h = hub(t0);
    let mut a = JobPeer::new("a", 1);
    let mut b = JobPeer::new("b", 1);
    a.register(&mut h, t0);
    b.register(&mut h, t0);
    let eng = Peer::new("a-engine-0");
    let reply = eng.msg(
        vec![b"client-1".to_vec()],
        "apply_reply",
        b"{}",
        json!({"status": "ok"}),
        json!({"status": "ok"}),
    );
    // engine 0 is a's: b may not send as it
    let f = b.frames(
        Body::Route(RouteHeader {
            engine: 0,
            channel: Channel::Mux,
        }),
        reply.into_frames(),
    );
    let dropped = h.stats.dropped;
    let out = h.on_message(Sock::Native, f, t0);
    assert!(sends(&out, Sock::MuxClient).is_empty());
    assert_eq!(h.stats.dropped, dropped + 1);
    // nor unregister them: b's unregistration takes only b's engine
    let f = b.frames(Body::Unregister(Departure::Signal(15)), vec![]);
    let out = h.on_message(Sock::Native, f, t0);
    let gone = notifications(&out, "unregistration_notification");
    assert_eq!(gone.len(), 1);
    assert_eq!(gone[0]["id"], json!(1));
    assert_eq!(connected_ids(&mut h, t0), vec![0]);
}

#[test]
fn one_heartbeat_per_job_and_a_silent_job_loses_every_engine() {
    let t0 = Instant::now();
    let mut h = hub(t0);
    let mut live = JobPeer::new("live", 2);
    let mut silent = JobPeer::new("silent", 3);
    live.register(&mut h, t0);
    silent.register(&mut h, t0);
    let p = Duration::from_millis(100);
    let mut gone = Vec::new();
    for i in 1..=4u32 {
        let now = t0 + p * i;
        let out = h.tick(now);
        // one ping per job per beat
        let pings = live.received(&out);
        assert_eq!(pings.len(), 1, "beat {i}");
        let Body::Ping { token } = pings[0].0.body else {
            panic!("{:?}", pings[0].0.body)
        };
        let f = live.frames(Body::Pong { token }, vec![]);
        h.on_message(Sock::Native, f, now);
        gone.extend(notifications(&out, "unregistration_notification"));
    }
    // max_heartbeat_misses = 2: the silent job is gone after its third missed beat
    let ids: Vec<u64> = gone.iter().map(|n| n["id"].as_u64().unwrap()).collect();
    assert_eq!(ids, vec![2, 3, 4]);
    assert_eq!(connected_ids(&mut h, t0 + p * 4), vec![0, 1]);
    assert_eq!(h.native_jobs(), 1);
    // the status views: one group per job, the silent one's engines dead
    let snap = h.snapshot(t0 + p * 4);
    let groups: Vec<(u64, u64, Option<u64>)> = snap
        .jobs
        .iter()
        .map(|j| (j.registered, j.dead, j.size))
        .collect();
    assert_eq!(groups.len(), 2, "{:?}", snap.jobs);
    assert!(groups.contains(&(2, 0, Some(2))) && groups.contains(&(0, 3, Some(3))));
    assert_eq!((snap.engines.registered, snap.engines.dead), (2, 3));
}

#[test]
fn an_unknown_connection_is_asked_to_register_again_and_gets_its_ids_back() {
    let t0 = Instant::now();
    let mut h = hub(t0);
    let mut job = JobPeer::new("j", 2);
    let out = h.on_message(Sock::Native, job.frames(Body::Hello, vec![]), t0);
    assert_eq!(job.received(&out)[0].0.body, Body::Reregister);
    // as after a controller restart: the job asks for the ids it had
    let engines = vec![
        EngineSpec {
            rank: 0,
            uuid: "x".into(),
            requested: 5,
        },
        EngineSpec {
            rank: 1,
            uuid: "y".into(),
            requested: 6,
        },
    ];
    let out = h.on_message(
        Sock::Native,
        job.frames(Body::Register { engines }, vec![]),
        t0,
    );
    match &job.received(&out)[0].0.body {
        Body::Registered(Ok(g)) => assert_eq!(g.ids, vec![5, 6]),
        b => panic!("{b:?}"),
    }
}

#[test]
fn bad_native_input_is_dropped_without_harm() {
    let t0 = Instant::now();
    let mut h = hub(t0);
    let mut job = JobPeer::new("j", 2);
    job.register(&mut h, t0);
    let mut wrong_key = Encoder::new(b"not the key", 1);
    let mut cases: Vec<Frames> = vec![
        vec![],
        vec![b"j".to_vec()],
        vec![b"j".to_vec(), vec![0; 32], vec![1, 2, 3]],
        vec![b"j".to_vec(), vec![1; 32], vec![]],
    ];
    let mut f = vec![b"j".to_vec()];
    f.extend(wrong_key.encode(Body::Unregister(Departure::Exit(1)), vec![]));
    cases.push(f);
    // a replay of a valid message
    let valid = job.frames(Body::Pong { token: 1 }, vec![]);
    h.on_message(Sock::Native, valid.clone(), t0);
    cases.push(valid);
    // a routed message whose payload is garbage reaches the hub's usual checks
    cases.push(job.frames(
        Body::Route(RouteHeader {
            engine: 0,
            channel: Channel::Task,
        }),
        vec![b"junk".to_vec()],
    ));
    for f in cases {
        let out = h.on_message(Sock::Native, f, t0);
        assert!(notifications(&out, "unregistration_notification").is_empty());
    }
    assert_eq!(connected_ids(&mut h, t0), vec![0, 1]);
    assert!(h.stats.dropped >= 6);
}
