//! One engine's Jupyter session: builds and signs every message the engine sends (replies,
//! IOPub), and the outbox through which the Python thread, the output-capture thread and the
//! runtime thread hand those messages to the runtime loop.
//!
//! The header `session` of every message is the engine uuid (the Hub recognises an engine's IOPub
//! `shutdown_reply` by it). IOPub topics are `engine.<id>.<kind>`.

use crate::relay::{Channel, Packet, Rank};
use rpar_core::ids::now_iso;
use rpar_core::wire::{Signer, WireMessage};
use rpar_core::MessageBuilder;
use serde_json::{json, Value};
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::Arc;

/// A parsed request (shell or control) as the runtime thread received and verified it.
#[derive(Debug, Clone)]
pub struct Request {
    pub channel: Channel,
    pub idents: Vec<Vec<u8>>,
    /// The request's header bytes exactly as received (becomes the parent of everything we send).
    pub header_raw: Vec<u8>,
    pub msg_id: String,
    pub msg_type: String,
    pub metadata: Value,
    pub content: Value,
    pub buffers: Vec<Vec<u8>>,
}

/// The engine identity and signing key, shared by every thread of a rank.
#[derive(Debug)]
pub struct Session {
    pub rank: Rank,
    pub engine_id: u32,
    pub uuid: String,
    builder: MessageBuilder,
    signer: Signer,
    /// What every `status` message has alike (two per request): its topic and metadata.
    status_topic: Vec<u8>,
    status_md: Vec<u8>,
}

impl Session {
    pub fn new(rank: Rank, engine_id: u32, uuid: String, signer: Signer) -> Session {
        let status_md =
            serde_json::to_vec(&json!({ "engine": uuid })).unwrap_or_else(|_| b"{}".to_vec());
        Session {
            rank,
            engine_id,
            builder: MessageBuilder::with_session(uuid.clone()),
            status_topic: format!("engine.{engine_id}.status").into_bytes(),
            status_md,
            uuid,
            signer,
        }
    }

    /// A signed message with raw JSON content bytes.
    pub fn build_raw(
        &self,
        idents: Vec<Vec<u8>>,
        msg_type: &str,
        parent: &[u8],
        metadata: &Value,
        content: Vec<u8>,
        buffers: Vec<Vec<u8>>,
    ) -> Vec<Vec<u8>> {
        let metadata = serde_json::to_vec(metadata).unwrap_or_else(|_| b"{}".to_vec());
        self.build_encoded(idents, msg_type, parent, metadata, content, buffers)
    }

    /// A signed message from metadata and content already encoded.
    fn build_encoded(
        &self,
        idents: Vec<Vec<u8>>,
        msg_type: &str,
        parent: &[u8],
        metadata: Vec<u8>,
        content: Vec<u8>,
        buffers: Vec<Vec<u8>>,
    ) -> Vec<Vec<u8>> {
        let mut m = WireMessage {
            idents,
            signature: Vec::new(),
            header: self.builder.header_bytes(msg_type),
            parent: if parent.is_empty() {
                b"{}".to_vec()
            } else {
                parent.to_vec()
            },
            metadata,
            content,
            buffers,
        };
        self.signer.sign_message(&mut m);
        m.into_frames()
    }

    /// A reply to `req` on the socket it came from.
    pub fn reply(
        &self,
        req: &Request,
        msg_type: &str,
        content: &Value,
        metadata: &Value,
        buffers: Vec<Vec<u8>>,
    ) -> Packet {
        let frames = self.build_raw(
            req.idents.clone(),
            msg_type,
            &req.header_raw,
            metadata,
            serde_json::to_vec(content).unwrap_or_else(|_| b"{}".to_vec()),
            buffers,
        );
        Packet::new(req.channel, self.rank, frames)
    }

    /// `engine.<id>.<kind>`.
    pub fn topic(&self, kind: &str) -> Vec<u8> {
        format!("engine.{}.{}", self.engine_id, kind).into_bytes()
    }

    /// An IOPub message with raw content.
    pub fn iopub_raw(
        &self,
        kind: &str,
        msg_type: &str,
        parent: &[u8],
        metadata: &Value,
        content: Vec<u8>,
    ) -> Packet {
        let frames = self.build_raw(
            vec![self.topic(kind)],
            msg_type,
            parent,
            metadata,
            content,
            Vec::new(),
        );
        Packet::new(Channel::IoPub, self.rank, frames)
    }

    pub fn iopub(&self, kind: &str, msg_type: &str, parent: &[u8], content: &Value) -> Packet {
        let md = if msg_type == "stream" || msg_type == "execute_result" {
            json!({})
        } else {
            json!({ "engine": self.uuid })
        };
        self.iopub_raw(
            kind,
            msg_type,
            parent,
            &md,
            serde_json::to_vec(content).unwrap_or_default(),
        )
    }

    /// IOPub `status` busy/idle with `parent`.
    pub fn status(&self, parent: &[u8], state: &str) -> Packet {
        let content = serde_json::to_vec(&json!({ "execution_state": state })).unwrap_or_default();
        let frames = self.build_encoded(
            vec![self.status_topic.clone()],
            "status",
            parent,
            self.status_md.clone(),
            content,
            Vec::new(),
        );
        Packet::new(Channel::IoPub, self.rank, frames)
    }

    /// Reply metadata at the start of a request (§9.4).
    pub fn init_metadata(&self, req: &Request) -> Value {
        let md = &req.metadata;
        json!({
            "started": now_iso(),
            "dependencies_met": true,
            "engine": self.uuid,
            "is_broadcast": md.get("is_broadcast").cloned().unwrap_or(json!(false)),
            "is_coalescing": md.get("is_coalescing").cloned().unwrap_or(json!(false)),
            "original_msg_id": md.get("original_msg_id").cloned().unwrap_or(json!("")),
            "label": md.get("label").cloned().unwrap_or(Value::Null),
        })
    }

    /// Complete reply metadata from the reply content: `status` always, and on error
    /// `engine_info` (and `dependencies_met: false` for an unmet dependency).
    pub fn finish_metadata(&self, md: &mut Value, content: &Value) {
        let status = content
            .get("status")
            .and_then(Value::as_str)
            .unwrap_or("error")
            .to_string();
        if let Some(o) = md.as_object_mut() {
            if status == "error" {
                if content.get("ename").and_then(Value::as_str) == Some("UnmetDependency") {
                    o.insert("dependencies_met".into(), json!(false));
                }
                o.insert("engine_info".into(), self.engine_info(None));
            }
            o.insert("status".into(), json!(status));
        }
    }

    pub fn engine_info(&self, method: Option<&str>) -> Value {
        let mut v = json!({ "engine_uuid": self.uuid, "engine_id": self.engine_id });
        if let (Some(m), Some(o)) = (method, v.as_object_mut()) {
            o.insert("method".into(), json!(m));
        }
        v
    }

    /// `foo_request` → `foo_reply`.
    pub fn reply_type(msg_type: &str) -> String {
        match msg_type.strip_suffix("_request") {
            Some(stem) => format!("{stem}_reply"),
            None => format!("{msg_type}_reply"),
        }
    }
}

/// Where threads of a rank put outgoing packets; the runtime loop takes them out. A byte written
/// to the doorbell pipe wakes the loop from its poll.
#[derive(Clone)]
pub struct Outbox {
    tx: crossbeam_channel::Sender<Packet>,
    bell: Arc<OwnedFd>,
    /// On ranks ≥ 1: send to rank 0 at once ([`Outbox::send_directly`]).
    direct: Arc<std::sync::OnceLock<Direct>>,
}

/// The outbox's way straight to rank 0: the shared link, and the queue's receiving end (what
/// was queued without a bell goes first).
struct Direct {
    link: Arc<crate::link::SharedLink>,
    rx: crossbeam_channel::Receiver<Packet>,
}

/// Send what `rx` holds to rank 0 over `link`, in order: (anything sent, anything but
/// heartbeat echoes).
pub fn send_queued(
    link: &mut crate::link::Link,
    rx: &crossbeam_channel::Receiver<Packet>,
) -> (bool, bool) {
    let (mut any, mut real) = (false, false);
    while let Ok(p) = rx.try_recv() {
        any = true;
        real |= p.header.channel != Channel::Heartbeat;
        link.send(Rank(0), p.into_bytes());
    }
    (any, real)
}

/// The runtime loop's end of an [`Outbox`].
pub struct OutboxRx {
    pub rx: crossbeam_channel::Receiver<Packet>,
    pub bell: OwnedFd,
}

impl Outbox {
    pub fn new() -> std::io::Result<(Outbox, OutboxRx)> {
        let (tx, rx) = crossbeam_channel::unbounded();
        let (r, w) = nix::unistd::pipe().map_err(std::io::Error::from)?;
        for fd in [&r, &w] {
            set_nonblocking(fd.as_raw_fd())?;
        }
        Ok((
            Outbox {
                tx,
                bell: Arc::new(w),
                direct: Arc::default(),
            },
            OutboxRx { rx, bell: r },
        ))
    }

    /// From now on (every clone of this outbox) send to rank 0 over `link` from the calling
    /// thread; `rx` is the runtime loop's end of this outbox.
    pub fn send_directly(&self, link: Arc<crate::link::SharedLink>, rx: &OutboxRx) {
        let _ = self.direct.set(Direct {
            link,
            rx: rx.rx.clone(),
        });
    }

    /// Queue a packet and ring the bell. Never blocks; a closed loop drops the packet.
    pub fn send(&self, p: Packet) {
        self.send_all([p]);
    }

    /// Queue a packet without ringing: it goes out with the next one that rings, or at the
    /// runtime loop's next wake-up (within [`IDLE_MS`](crate::pace::IDLE_MS)).
    pub fn queue(&self, p: Packet) {
        let _ = self.tx.send(p);
    }

    /// Queue packets, in order, and ring the bell once (or, sending directly, send them and
    /// ring only if a send needs the loop to progress it).
    pub fn send_all(&self, packets: impl IntoIterator<Item = Packet>) {
        if let Some(d) = self.direct.get() {
            let in_flight = d.link.with(|l| {
                // The sends of the previous request are reaped now, not these right after
                // they are made: those are done by now, and a test that finds no send done
                // runs MPI's progress engine, which yields the CPU on an oversubscribed node.
                l.reap_sends();
                // what was queued before goes first (a quiet busy, another thread's packet)
                send_queued(l, &d.rx);
                for p in packets {
                    l.send(Rank(0), p.into_bytes());
                }
                l.ring();
                l.needs_progress()
            });
            // a small send completes on its own (the loop reaps it on its next pass); a big
            // one wakes the loop, which progresses it. No link: the loop has ended, nothing
            // goes out any more.
            if in_flight == Some(true) {
                self.ring();
            }
            return;
        }
        let mut queued = false;
        for p in packets {
            queued |= self.tx.send(p).is_ok();
        }
        if queued {
            self.ring();
        }
    }

    fn ring(&self) {
        // A full pipe already means "wake up"; EAGAIN is fine.
        // SAFETY: writing one byte from a valid buffer to a descriptor we own.
        unsafe {
            libc::write(self.bell.as_raw_fd(), b"!".as_ptr().cast(), 1);
        }
    }
}

impl OutboxRx {
    /// Empty the doorbell pipe.
    pub fn drain_bell(&self) {
        let mut buf = [0u8; 256];
        loop {
            // SAFETY: reading into a local buffer of the given length.
            let n =
                unsafe { libc::read(self.bell.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
            // a short read took all the pipe held: no second read to learn it is empty (a
            // byte written after it makes the pipe readable for the next poll)
            if n <= 0 || n.unsigned_abs() < buf.len() {
                break;
            }
        }
    }
}

pub fn set_nonblocking(fd: i32) -> std::io::Result<()> {
    // SAFETY: fcntl on a descriptor we own.
    unsafe {
        let fl = libc::fcntl(fd, libc::F_GETFL);
        if fl < 0 || libc::fcntl(fd, libc::F_SETFL, fl | libc::O_NONBLOCK) < 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use rpar_core::Header;

    fn req(md: Value) -> Request {
        Request {
            channel: Channel::Shell,
            idents: vec![b"mux_out".to_vec(), b"client".to_vec()],
            header_raw: br#"{"msg_id":"m1","msg_type":"apply_request"}"#.to_vec(),
            msg_id: "m1".into(),
            msg_type: "apply_request".into(),
            metadata: md,
            content: json!({}),
            buffers: vec![],
        }
    }

    #[test]
    fn reply_keeps_route_and_parent_and_signs() {
        let s = Session::new(Rank(2), 2, "uuid-2".into(), Signer::new(b"k"));
        let r = req(json!({}));
        let p = s.reply(
            &r,
            "apply_reply",
            &json!({"status":"ok"}),
            &json!({}),
            vec![b"B".to_vec()],
        );
        assert_eq!(p.header.rank, Rank(2));
        assert_eq!(p.header.channel, Channel::Shell);
        let m = WireMessage::split(p.frames, &Default::default()).unwrap();
        assert_eq!(m.idents, r.idents);
        assert_eq!(m.parent, r.header_raw);
        assert_eq!(m.buffers, vec![b"B".to_vec()]);
        let h = Header::parse(&m.header).unwrap();
        assert_eq!(h.session, "uuid-2");
        assert_eq!(h.msg_type, "apply_reply");
        Signer::new(b"k").verify(&m).unwrap();
    }

    #[test]
    fn metadata_follows_the_request_and_the_outcome() {
        let s = Session::new(Rank(0), 5, "u".into(), Signer::new(b""));
        let r = req(json!({"is_broadcast": true, "label": "L", "original_msg_id": "o"}));
        let mut md = s.init_metadata(&r);
        assert_eq!(md["is_broadcast"], json!(true));
        assert_eq!(md["is_coalescing"], json!(false));
        assert_eq!(md["label"], json!("L"));
        assert_eq!(md["original_msg_id"], json!("o"));
        assert!(md["started"].as_str().unwrap().ends_with('Z'));
        s.finish_metadata(&mut md, &json!({"status": "ok"}));
        assert_eq!(md["status"], json!("ok"));
        assert!(md.get("engine_info").is_none());
        let mut md = s.init_metadata(&r);
        s.finish_metadata(
            &mut md,
            &json!({"status": "error", "ename": "UnmetDependency"}),
        );
        assert_eq!(md["status"], json!("error"));
        assert_eq!(md["dependencies_met"], json!(false));
        assert_eq!(md["engine_info"]["engine_id"], json!(5));
    }

    #[test]
    fn topics_and_reply_types() {
        let s = Session::new(Rank(0), 7, "u".into(), Signer::new(b""));
        assert_eq!(s.topic("stdout"), b"engine.7.stdout".to_vec());
        assert_eq!(Session::reply_type("abort_request"), "abort_reply");
        assert_eq!(Session::reply_type("weird"), "weird_reply");
        let p = s.status(b"{}", "busy");
        let m = WireMessage::split(p.frames, &Default::default()).unwrap();
        assert_eq!(m.idents, vec![b"engine.7.status".to_vec()]);
        assert_eq!(
            m.content_value().unwrap(),
            json!({"execution_state": "busy"})
        );
    }

    #[test]
    fn status_names_the_engine_in_its_metadata() {
        let s = Session::new(Rank(0), 7, "u".into(), Signer::new(b""));
        let p = s.status(b"{}", "idle");
        let m = WireMessage::split(p.frames, &Default::default()).unwrap();
        let md: Value = serde_json::from_slice(&m.metadata).unwrap();
        assert_eq!(md, json!({"engine": "u"}));
        assert_eq!(
            m.content_value().unwrap(),
            json!({"execution_state": "idle"})
        );
    }

    #[test]
    fn outbox_delivers_and_rings() {
        let (tx, rx) = Outbox::new().unwrap();
        tx.send(Packet::new(Channel::IoPub, Rank(0), vec![]));
        assert!(rx.rx.try_recv().is_ok());
        rx.drain_bell();
        // several at once: in order, one ring
        tx.send_all((1..4).map(|r| Packet::new(Channel::IoPub, Rank(r), vec![])));
        let got: Vec<u32> = rx.rx.try_iter().map(|p| p.header.rank.0).collect();
        assert_eq!(got, vec![1, 2, 3]);
        let mut buf = [0u8; 8];
        // SAFETY: reading into a local buffer.
        let n = unsafe { libc::read(rx.bell.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
        assert_eq!(n, 1);
    }
}
