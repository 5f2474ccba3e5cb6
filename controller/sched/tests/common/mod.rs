//! Helpers shared by the scheduler tests: build client requests and engine replies, and read
//! the actions back.
#![allow(dead_code)]

use rpar_core::wire::{Limits, Signer, WireMessage, DELIM};
use rpar_core::MessageBuilder;
use rpar_sched::{Scheme, TaskAction, TaskConfig, TaskScheduler};
use serde_json::{json, Value};
use std::time::{Duration, Instant};

pub const KEY: &[u8] = b"test-key";
pub const CLIENT: &[u8] = b"\x00client";
pub const CLIENT_SESSION: &str = "client-session";

pub fn uuid(i: u32) -> Vec<u8> {
    format!("engine-{i:04}").into_bytes()
}

pub fn signer() -> Signer {
    Signer::new(KEY)
}

pub fn task_sched(scheme: Scheme, hwm: u32) -> TaskScheduler {
    TaskScheduler::new(
        TaskConfig {
            scheme,
            hwm,
            engine_death_grace: Duration::from_secs(5),
            seed: Some(42),
        },
        MessageBuilder::with_session("sched-session".into()),
        signer(),
    )
}

pub fn header(msg_id: &str, msg_type: &str, session: &str) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "msg_id": msg_id, "msg_type": msg_type, "username": "u", "session": session,
        "date": "2026-01-01T00:00:00.000000Z", "version": "5.4"
    }))
    .unwrap()
}

/// A client's apply_request with `md` as metadata, idents = [CLIENT].
pub fn request(msg_id: &str, md: Value) -> WireMessage {
    request_bufs(msg_id, md, vec![b"fn".to_vec(), b"args".to_vec()])
}

pub fn request_bufs(msg_id: &str, md: Value, buffers: Vec<Vec<u8>>) -> WireMessage {
    let mut m = WireMessage {
        idents: vec![CLIENT.to_vec()],
        signature: vec![],
        header: header(msg_id, "apply_request", CLIENT_SESSION),
        parent: b"{}".to_vec(),
        metadata: serde_json::to_vec(&md).unwrap(),
        content: b"{}".to_vec(),
        buffers,
    };
    signer().sign_message(&mut m);
    m
}

/// LoadBalancedView-style metadata.
pub fn lb_md(after: Value, follow: Value, targets: Value, timeout: f64, retries: u32) -> Value {
    json!({"after": after, "follow": follow, "timeout": timeout, "targets": targets,
           "retries": retries, "label": null})
}

/// An engine's reply to `req_header`, as the scheduler receives it: idents [uuid, CLIENT].
pub fn engine_reply(engine: &[u8], req_header: &[u8], status: &str, deps_met: bool) -> WireMessage {
    engine_reply_bufs(
        engine,
        req_header,
        status,
        deps_met,
        vec![b"result".to_vec()],
    )
}

pub fn engine_reply_bufs(
    engine: &[u8],
    req_header: &[u8],
    status: &str,
    deps_met: bool,
    buffers: Vec<Vec<u8>>,
) -> WireMessage {
    let req: Value = serde_json::from_slice(req_header).unwrap();
    let md = json!({
        "started": "2026-01-01T00:00:00.100000Z", "dependencies_met": deps_met,
        "engine": String::from_utf8_lossy(engine), "is_broadcast": req_md_flag(&req, "is_broadcast"),
        "is_coalescing": false, "original_msg_id": "", "label": null, "status": status,
    });
    let eng = String::from_utf8_lossy(engine).into_owned();
    let b = MessageBuilder::with_session(eng);
    let content = if status == "ok" {
        json!({"status": "ok"})
    } else {
        json!({"status": status, "ename": "ValueError", "evalue": "boom", "traceback": [],
               "engine_info": {"engine_uuid": String::from_utf8_lossy(engine), "engine_id": 0}})
    };
    b.build(
        &signer(),
        vec![engine.to_vec(), CLIENT.to_vec()],
        "apply_reply",
        req_header,
        &md,
        &content,
        buffers,
    )
}

fn req_md_flag(_req: &Value, _k: &str) -> bool {
    false
}

/// Parse frames (with routing prefix) back into a message.
pub fn split(frames: Vec<Vec<u8>>) -> WireMessage {
    WireMessage::split(frames, &Limits::default()).expect("well-formed frames")
}

pub fn msg_id_of(raw_header: &[u8]) -> String {
    let v: Value = serde_json::from_slice(raw_header).unwrap();
    v["msg_id"].as_str().unwrap().to_string()
}

/// (engine uuid, msg_id) of every ToEngine action, checking the frame layout.
pub fn sent(actions: &[TaskAction]) -> Vec<(Vec<u8>, String)> {
    actions
        .iter()
        .filter_map(|a| match a {
            TaskAction::ToEngine(f) => {
                assert_eq!(f[1], CLIENT, "client id is the second frame");
                assert_eq!(f[2], DELIM);
                let m = split(f.clone());
                Some((f[0].clone(), msg_id_of(&m.header)))
            }
            _ => None,
        })
        .collect()
}

pub fn sent_ids(actions: &[TaskAction]) -> Vec<String> {
    sent(actions).into_iter().map(|x| x.1).collect()
}

/// A finished task as the client will see it.
#[derive(Debug)]
pub struct Fin {
    pub msg_id: String,
    pub engine: Option<Vec<u8>>,
    pub reply: WireMessage,
    pub content: Value,
    pub metadata: Value,
}

impl Fin {
    pub fn ename(&self) -> Option<&str> {
        self.content.get("ename").and_then(Value::as_str)
    }
}

pub fn finished(actions: Vec<TaskAction>) -> Vec<Fin> {
    actions
        .into_iter()
        .filter_map(|a| match a {
            TaskAction::Finished {
                msg_id,
                engine_uuid,
                reply,
            } => {
                let content = reply.content_value().unwrap();
                let metadata = reply.metadata_value().unwrap();
                Some(Fin {
                    msg_id,
                    engine: engine_uuid,
                    reply,
                    content,
                    metadata,
                })
            }
            _ => None,
        })
        .collect()
}

pub fn t(secs: f64, t0: Instant) -> Instant {
    t0 + Duration::from_secs_f64(secs)
}
