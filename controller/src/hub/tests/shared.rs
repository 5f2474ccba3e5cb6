//! Big buffers cross the hub shared, not copied: the frames sent ([`Effect::Trailer`]), the
//! scheduler and the task record hold one copy, which goes into the record once nothing else
//! holds it ([`Hub::settle_records`]), or at once, copied, when a query reads records.

use super::*;
use std::sync::Arc;

const BIG: usize = SHARE_MIN + 1;

fn big(fill: u8) -> Vec<u8> {
    vec![fill; BIG]
}

/// `(frames, shared buffers)` of the sends on `sock`, in order.
fn raw_shared(out: &[Effect], sock: Sock) -> Vec<(Frames, Option<SharedBuffers>)> {
    let mut v: Vec<(Frames, Option<SharedBuffers>)> = Vec::new();
    let mut last_is = false;
    for e in out {
        match e {
            Effect::Send(s, f) => {
                last_is = *s == sock;
                if last_is {
                    v.push((f.clone(), None));
                }
            }
            Effect::Trailer(b) if last_is => {
                if let Some(l) = v.last_mut() {
                    l.1 = Some(b.clone());
                }
            }
            _ => {}
        }
    }
    v
}

fn record(h: &Hub, msg_id: &str) -> rpar_taskdb::TaskRecord {
    h.records.db.get_record(msg_id).unwrap()
}

#[test]
fn direct_request_and_reply_share_their_buffers_with_the_record() {
    let t0 = Instant::now();
    let mut h = hub(t0);
    register(&mut h, "eng", None, t0);
    let cl = Peer::new("client");
    let mut req = cl.msg(
        vec![b"cid".to_vec(), b"eng".to_vec()],
        "apply_request",
        b"{}",
        json!({}),
        json!({}),
    );
    req.buffers = vec![b"small".to_vec(), big(1)];
    let mid = Header::parse(&req.header).unwrap().msg_id;
    let header = req.header.clone();
    let mut out = Vec::new();
    h.on_message_into(Sock::MuxClient, req.into_frames(), t0, &mut out);
    let sent = raw_shared(&out, Sock::MuxEngine);
    let (frames, shared) = &sent[0];
    // the message proper ends at content; the buffers follow, shared
    assert_eq!(frames.len(), 2 + 1 + 5);
    let shared = shared.clone().expect("big buffers travel shared");
    assert_eq!(*shared, vec![b"small".to_vec(), big(1)]);
    // the record waits for them while the frames (here: `out`, `shared`) hold them
    assert_eq!(record(&h, &mid).buffers, None);
    h.settle_records();
    assert_eq!(record(&h, &mid).buffers, None);
    drop((out, sent, shared));
    h.settle_records();
    assert_eq!(
        record(&h, &mid).buffers,
        Some(vec![b"small".to_vec(), big(1)])
    );

    // the reply: the same for its result buffers
    let e = Peer::new("eng");
    let mut rep = e.msg(
        vec![b"eng".to_vec(), b"cid".to_vec()],
        "apply_reply",
        &header,
        json!({"status": "ok", "engine": "eng"}),
        json!({"status": "ok"}),
    );
    rep.buffers = vec![big(2)];
    let mut out = Vec::new();
    h.on_message_into(Sock::MuxEngine, rep.into_frames(), t0, &mut out);
    let sent = raw_shared(&out, Sock::MuxClient);
    assert_eq!(&sent[0].0[..2], &[b"cid".to_vec(), b"eng".to_vec()]);
    assert_eq!(sent[0].1.as_deref(), Some(&vec![big(2)]));
    // a query reading records does not wait: the still-held buffers are copied in
    let rr = query(
        &mut h,
        "result_request",
        json!({"msg_ids": [mid.clone()]}),
        t0,
    );
    assert_eq!(rr["status"], "ok", "{rr}");
    assert_eq!(record(&h, &mid).result_buffers, Some(vec![big(2)]));
    // and what is still held is not written again
    drop((out, sent));
    h.settle_records();
    assert_eq!(h.records.waiting_len(), 0);
}

#[test]
fn a_task_shares_its_buffers_with_the_scheduler_until_it_is_done() {
    let t0 = Instant::now();
    let mut h = hub(t0);
    register(&mut h, "w0", None, t0);
    let cl = Peer::new("client");
    let md = json!({"after": [], "follow": [], "timeout": 0.0, "targets": [], "retries": 0});
    let mut t1 = cl.msg(vec![b"cid".to_vec()], "apply_request", b"{}", md, json!({}));
    t1.buffers = vec![big(3)];
    let mid = Header::parse(&t1.header).unwrap().msg_id;
    let header = t1.header.clone();
    let mut out = Vec::new();
    h.on_message_into(Sock::TaskClient, t1.into_frames(), t0, &mut out);
    let sent = raw_shared(&out, Sock::TaskEngine);
    let shared = sent[0].1.clone().expect("shared with the scheduler");
    drop((out, sent));
    // the scheduler keeps the request (a retry would send it again): it waits
    h.settle_records();
    assert_eq!(record(&h, &mid).buffers, None);
    assert!(
        Arc::strong_count(&shared) >= 3,
        "scheduler, record, this test"
    );
    drop(shared);
    let w = Peer::new("w0");
    let mut rep = w.msg(
        vec![b"w0".to_vec(), b"cid".to_vec()],
        "apply_reply",
        &header,
        json!({"status": "ok", "engine": "w0", "dependencies_met": true}),
        json!({"status": "ok"}),
    );
    rep.buffers = vec![big(4)];
    // folded (`on_message`): one whole message to the client, buffers included
    let out = h.on_message(Sock::TaskEngine, rep.into_frames(), t0);
    let back = sends(&out, Sock::TaskClient);
    assert_eq!(back[0].buffers, vec![big(4)]);
    assert!(!out.iter().any(|e| matches!(e, Effect::Trailer(_))));
    drop(out);
    // done: the scheduler let go; both go into the record, moved
    h.settle_records();
    let r = record(&h, &mid);
    assert_eq!(r.buffers, Some(vec![big(3)]));
    assert_eq!(r.result_buffers, Some(vec![big(4)]));
}

#[test]
fn small_buffers_are_copied_into_the_record_at_once() {
    let t0 = Instant::now();
    let mut h = hub(t0);
    register(&mut h, "eng", None, t0);
    let cl = Peer::new("client");
    let mut req = cl.msg(
        vec![b"cid".to_vec(), b"eng".to_vec()],
        "apply_request",
        b"{}",
        json!({}),
        json!({}),
    );
    req.buffers = vec![vec![5; 100]];
    let mid = Header::parse(&req.header).unwrap().msg_id;
    let mut out = Vec::new();
    h.on_message_into(Sock::MuxClient, req.into_frames(), t0, &mut out);
    assert!(!out.iter().any(|e| matches!(e, Effect::Trailer(_))));
    assert_eq!(
        raw_sends(&out, Sock::MuxEngine)[0].last(),
        Some(&vec![5; 100])
    );
    assert_eq!(record(&h, &mid).buffers, Some(vec![vec![5; 100]]));
    assert_eq!(h.records.waiting_len(), 0);
}
