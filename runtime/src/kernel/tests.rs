use super::*;
use crate::relay::Rank;
use crate::session::OutboxRx;
use rpar_core::MessageBuilder;

#[test]
fn dispatch_table() {
    use Action::*;
    assert_eq!(classify(Channel::Shell, "execute_request"), Queue);
    assert_eq!(classify(Channel::Shell, "apply_request"), Queue);
    assert_eq!(classify(Channel::Control, "clear_request"), QueueFirst);
    assert_eq!(classify(Channel::Control, "abort_request"), Abort);
    assert_eq!(classify(Channel::Control, "shutdown_request"), Shutdown);
    assert_eq!(classify(Channel::Control, "signal_request"), Signal);
    assert_eq!(
        classify(Channel::Control, "kernel_info_request"),
        KernelInfo
    );
    assert_eq!(classify(Channel::Shell, "kernel_info_request"), KernelInfo);
    // control types do not run from the shell socket, nor code from control
    assert_eq!(classify(Channel::Shell, "shutdown_request"), Unsupported);
    assert_eq!(classify(Channel::Control, "execute_request"), Unsupported);
    assert_eq!(classify(Channel::Control, "debug_request"), Unsupported);
}

#[test]
fn signals() {
    assert_eq!(parse_signal(&json!(2)), Some(libc::SIGINT));
    assert_eq!(parse_signal(&json!("SIGINT")), Some(libc::SIGINT));
    assert_eq!(parse_signal(&json!("cont")), Some(libc::SIGCONT));
    assert_eq!(parse_signal(&json!("15")), Some(15));
    assert_eq!(parse_signal(&json!(0)), None);
    assert_eq!(parse_signal(&json!("SIGNOPE")), None);
    assert_eq!(parse_signal(&json!(null)), None);
}

fn request(ch: Channel, id: &str) -> Request {
    Request {
        channel: ch,
        idents: vec![],
        header_raw: b"{}".to_vec(),
        msg_id: id.into(),
        msg_type: "apply_request".into(),
        metadata: json!({}),
        content: json!({}),
        buffers: vec![],
    }
}

#[test]
fn queue_order_and_abort() {
    let q = JobQueue::new();
    assert!(q.push(request(Channel::Shell, "a"), false).is_none());
    assert!(q.push(request(Channel::Shell, "b"), false).is_none());
    assert!(q.push(request(Channel::Control, "c"), true).is_none());
    // abort one queued, one future
    let out = q.abort(&["b".to_string(), "later".to_string()]);
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].msg_id, "b");
    assert!(q.push(request(Channel::Shell, "later"), false).is_some());
    match q.pop() {
        Job::Run(r) => assert_eq!(r.msg_id, "c"),
        Job::Stop => panic!(),
    }
    assert!(q.is_running());
    match q.pop() {
        Job::Run(r) => assert_eq!(r.msg_id, "a"),
        Job::Stop => panic!(),
    }
    q.finished();
    assert!(!q.is_running());
    // abort-all takes shell work only
    q.push(request(Channel::Shell, "d"), false);
    q.push(request(Channel::Control, "e"), false);
    let out = q.abort(&[]);
    assert_eq!(
        out.iter().map(|r| r.msg_id.as_str()).collect::<Vec<_>>(),
        ["d"]
    );
    q.stop();
    assert!(matches!(q.pop(), Job::Stop));
    assert!(matches!(q.pop(), Job::Run(_)));
}

#[test]
fn event_loop_waker() {
    use std::io::Read;
    let q = JobQueue::new();
    q.push(request(Channel::Shell, "a"), false);
    // armed with a job queued: readable at once
    let fd = q.arm().unwrap();
    let mut r = std::fs::File::from(fd);
    let mut buf = [0u8; 16];
    assert_eq!(r.read(&mut buf).unwrap(), 1);
    assert!(matches!(q.try_pop(), Some(Job::Run(j)) if j.msg_id == "a"));
    assert!(q.is_running());
    assert!(q.try_pop().is_none());
    assert!(!q.is_running());
    assert!(!q.wants_interrupt());
    // nothing queued: nothing to read; a push and a stop each wake it
    assert!(r.read(&mut buf).is_err());
    q.push(request(Channel::Shell, "b"), false);
    q.stop();
    assert_eq!(r.read(&mut buf).unwrap(), 2);
    assert!(matches!(q.try_pop(), Some(Job::Stop)));
    // disarmed: the writer is gone
    q.disarm();
    assert_eq!(r.read(&mut buf).unwrap(), 0);
}

fn core(key: &[u8]) -> (EngineCore, OutboxRx, Arc<JobQueue>, MessageBuilder) {
    let s = Arc::new(Session::new(
        Rank(1),
        1,
        "engine-uuid".into(),
        Signer::new(key),
    ));
    let (tx, rx) = Outbox::new().unwrap();
    let q = JobQueue::new();
    let c = EngineCore::new(s, Signer::new(key), tx, q.clone(), "3.11".into());
    (c, rx, q, MessageBuilder::with_session("client".into()))
}

fn packet(b: &MessageBuilder, ch: Channel, t: &str, content: Value) -> Packet {
    let m = b.build(
        &Signer::new(b"k"),
        vec![b"control_out".to_vec(), b"cid".to_vec()],
        t,
        b"{}",
        &json!({}),
        &content,
        vec![],
    );
    Packet::new(ch, Rank(1), m.into_frames())
}

fn drain(rx: &OutboxRx) -> Vec<(Channel, String, Value, Value)> {
    rx.rx
        .try_iter()
        .map(|p| {
            let ch = p.header.channel;
            let m = WireMessage::split(p.frames, &Limits::default()).unwrap();
            let h = Header::parse(&m.header).unwrap();
            (
                ch,
                h.msg_type,
                m.metadata_value().unwrap(),
                m.content_value().unwrap(),
            )
        })
        .collect()
}

#[test]
fn requests_are_dispatched() {
    let (mut c, rx, q, b) = core(b"k");
    // shell work is queued for Python
    assert!(c
        .on_packet(packet(&b, Channel::Shell, "apply_request", json!({})))
        .is_none());
    assert!(matches!(q.pop(), Job::Run(r) if r.msg_type == "apply_request"));
    // heartbeat echoes unchanged
    c.on_packet(Packet::new(
        Channel::Heartbeat,
        Rank(1),
        vec![b"1.0".to_vec()],
    ));
    let p = rx.rx.try_recv().unwrap();
    assert_eq!(p.frames, vec![b"1.0".to_vec()]);
    // kernel_info answered at once, wrapped in busy/idle, with metadata status
    c.on_packet(packet(
        &b,
        Channel::Control,
        "kernel_info_request",
        json!({}),
    ));
    let out = drain(&rx);
    let types: Vec<&str> = out.iter().map(|o| o.1.as_str()).collect();
    assert_eq!(types, ["status", "kernel_info_reply", "status"]);
    assert_eq!(out[1].2["status"], json!("ok"));
    assert_eq!(out[1].3["language_info"]["name"], json!("python"));
    // abort of a queued request answers it "aborted"
    c.on_packet(packet(
        &b,
        Channel::Shell,
        "execute_request",
        json!({"code": "1"}),
    ));
    let queued = {
        let st = q.lock();
        match st.jobs.front() {
            Some(Job::Run(r)) => r.msg_id.clone(),
            _ => panic!(),
        }
    };
    c.on_packet(packet(
        &b,
        Channel::Control,
        "abort_request",
        json!({"msg_ids": [queued]}),
    ));
    let out = drain(&rx);
    assert_eq!(out[0].1, "execute_reply");
    assert_eq!(out[0].3["status"], json!("aborted"));
    assert_eq!(out[0].2["status"], json!("aborted"));
    assert_eq!(out[2].1, "abort_reply");
    // shutdown: control reply, IOPub shutdown_reply, Done; afterwards no heartbeats
    let life = c.on_packet(packet(
        &b,
        Channel::Control,
        "shutdown_request",
        json!({"restart": false}),
    ));
    assert_eq!(life, Some(Life::Done));
    let out = drain(&rx);
    let types: Vec<(Channel, &str)> = out.iter().map(|o| (o.0, o.1.as_str())).collect();
    assert_eq!(
        types,
        [
            (Channel::IoPub, "status"),
            (Channel::Control, "shutdown_reply"),
            (Channel::IoPub, "shutdown_reply"),
            (Channel::IoPub, "status")
        ]
    );
    c.on_packet(Packet::new(
        Channel::Heartbeat,
        Rank(1),
        vec![b"2.0".to_vec()],
    ));
    assert!(rx.rx.try_recv().is_err());
}

#[test]
fn bad_signatures_and_replays_are_dropped() {
    let (mut c, rx, q, b) = core(b"other-key");
    c.on_packet(packet(
        &b,
        Channel::Control,
        "kernel_info_request",
        json!({}),
    ));
    assert!(rx.rx.try_recv().is_err());
    let (mut c, rx, _q2, b) = core(b"k");
    let p = packet(&b, Channel::Control, "kernel_info_request", json!({}));
    c.on_packet(p.clone());
    assert_eq!(drain(&rx).len(), 3);
    c.on_packet(p);
    assert!(rx.rx.try_recv().is_err());
    drop(q);
}
