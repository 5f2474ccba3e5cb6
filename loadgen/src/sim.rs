//! One simulated engine, sans I/O: an ipyparallel request in, the messages a real engine would
//! send back out (IOPub `status` busy, the reply, IOPub `status` idle), already signed.
//!
//! It computes nothing: `apply_request` gets an `apply_reply` whose result buffer is the
//! pickle of `None` (what `ipyparallel.serialize.serialize_object(None)` produces: one buffer,
//! `pickle.dumps(None)` at protocol 4, which any Python 3 unpickles), `execute_request` gets
//! `status: ok` with a rising `execution_count`, control requests (`abort`, `clear`,
//! `shutdown`, anything else) get their `*_reply` with `status: ok`; `shutdown_request` is also
//! published on IOPub (topic `engine.<id>.shutdown`), which makes the hub unregister the engine.

use rpar_core::native::Channel;
use rpar_core::wire::{Frames, Limits, Signer, WireMessage};
use rpar_core::{Header, MessageBuilder};
use serde_json::{json, Value};

/// `pickle.dumps(None, protocol=4)`.
pub const PICKLED_NONE: &[u8] = b"\x80\x04N.";

/// One simulated engine.
pub struct Engine {
    pub id: u32,
    pub uuid: String,
    builder: MessageBuilder,
    execution_count: u64,
    /// Answered a shutdown request.
    pub done: bool,
}

impl Engine {
    pub fn new(id: u32, uuid: String) -> Engine {
        Engine {
            id,
            builder: MessageBuilder::with_session(uuid.clone()),
            uuid,
            execution_count: 0,
            done: false,
        }
    }

    fn iopub(
        &self,
        signer: &Signer,
        kind: &str,
        msg_type: &str,
        parent: &[u8],
        c: &Value,
    ) -> Frames {
        let topic = format!("engine.{}.{kind}", self.id).into_bytes();
        let md = json!({ "engine": self.uuid });
        self.builder
            .build(signer, vec![topic], msg_type, parent, &md, c, vec![])
            .into_frames()
    }

    fn status(&self, signer: &Signer, parent: &[u8], state: &str) -> (Channel, Frames) {
        let c = json!({ "execution_state": state });
        (
            Channel::IoPub,
            self.iopub(signer, "status", "status", parent, &c),
        )
    }

    /// The answer to one request on `channel` (its payload: the ipyparallel frames after the
    /// routing header). A message that is not one is ignored.
    pub fn on_request(
        &mut self,
        signer: &Signer,
        channel: Channel,
        payload: Frames,
    ) -> Vec<(Channel, Frames)> {
        let Ok(req) = WireMessage::split(payload, &Limits::default()) else {
            return Vec::new();
        };
        let Ok(header) = Header::parse(&req.header) else {
            return Vec::new();
        };
        let md_in = req.metadata_value().unwrap_or(Value::Null);
        let mut md = json!({
            "started": rpar_core::ids::now_iso(),
            "dependencies_met": true,
            "engine": self.uuid,
            "status": "ok",
            "is_broadcast": md_in.get("is_broadcast").cloned().unwrap_or(json!(false)),
            "is_coalescing": md_in.get("is_coalescing").cloned().unwrap_or(json!(false)),
            "original_msg_id": md_in.get("original_msg_id").cloned().unwrap_or(json!("")),
        });
        let msg_type = header.msg_type.as_str();
        let (reply_type, content, buffers) = match msg_type {
            "apply_request" => (
                "apply_reply".to_string(),
                json!({"status": "ok"}),
                vec![PICKLED_NONE.to_vec()],
            ),
            "execute_request" => {
                self.execution_count += 1;
                (
                    "execute_reply".to_string(),
                    json!({"status": "ok", "execution_count": self.execution_count,
                           "user_expressions": {}, "payload": []}),
                    vec![],
                )
            }
            "shutdown_request" => (
                "shutdown_reply".to_string(),
                json!({"status": "ok", "restart": false}),
                vec![],
            ),
            other => {
                let base = other.strip_suffix("_request").unwrap_or(other);
                (format!("{base}_reply"), json!({"status": "ok"}), vec![])
            }
        };
        if channel == Channel::Control {
            md = json!({ "engine": self.uuid, "status": "ok" });
        }
        let mut out = Vec::with_capacity(4);
        out.push(self.status(signer, &req.header, "busy"));
        let reply = self.builder.build(
            signer,
            req.idents.clone(),
            &reply_type,
            &req.header,
            &md,
            &content,
            buffers,
        );
        out.push((channel, reply.into_frames()));
        if msg_type == "shutdown_request" {
            self.done = true;
            let again = self.iopub(signer, "shutdown", "shutdown_reply", &req.header, &content);
            out.push((Channel::IoPub, again));
        }
        out.push(self.status(signer, &req.header, "idle"));
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(msg_type: &str, md: Value) -> Frames {
        let b = MessageBuilder::with_session("client".into());
        b.build(
            &Signer::new(b"k"),
            vec![b"client-id".to_vec()],
            msg_type,
            b"{}",
            &md,
            &json!({}),
            vec![b"f".to_vec()],
        )
        .into_frames()
    }

    fn parse(f: &Frames) -> (WireMessage, Header) {
        let m = WireMessage::split(f.clone(), &Limits::default()).unwrap();
        let h = Header::parse(&m.header).unwrap();
        (m, h)
    }

    #[test]
    fn apply_gets_a_signed_reply_with_pickled_none_between_busy_and_idle() {
        let mut e = Engine::new(7, "uuid-7".into());
        let signer = Signer::new(b"k");
        let out = e.on_request(&signer, Channel::Mux, request("apply_request", json!({})));
        assert_eq!(out.len(), 3);
        let (ch, f) = &out[1];
        assert_eq!(*ch, Channel::Mux);
        let (m, h) = parse(f);
        assert_eq!(h.msg_type, "apply_reply");
        assert_eq!(h.session, "uuid-7");
        assert_eq!(m.idents, vec![b"client-id".to_vec()]);
        assert_eq!(m.buffers, vec![PICKLED_NONE.to_vec()]);
        assert_eq!(m.metadata_value().unwrap()["status"], json!("ok"));
        Signer::new(b"k").verify(&m).unwrap();
        for (i, state) in [(0, "busy"), (2, "idle")] {
            let (ch, f) = &out[i];
            assert_eq!(*ch, Channel::IoPub);
            let (m, _) = parse(f);
            assert_eq!(m.idents, vec![b"engine.7.status".to_vec()]);
            assert_eq!(m.content_value().unwrap()["execution_state"], json!(state));
            assert_eq!(Header::parse(&m.parent).unwrap().msg_type, "apply_request");
        }
    }

    #[test]
    fn execute_counts_and_control_replies_and_shutdown_is_published() {
        let mut e = Engine::new(1, "u".into());
        let s = Signer::new(b"k");
        for n in 1..=2 {
            let out = e.on_request(&s, Channel::Task, request("execute_request", json!({})));
            let (m, h) = parse(&out[1].1);
            assert_eq!(h.msg_type, "execute_reply");
            assert_eq!(m.content_value().unwrap()["execution_count"], json!(n));
        }
        for (req, rep) in [
            ("abort_request", "abort_reply"),
            ("clear_request", "clear_reply"),
        ] {
            let out = e.on_request(&s, Channel::Control, request(req, json!({})));
            assert_eq!(out[1].0, Channel::Control);
            assert_eq!(parse(&out[1].1).1.msg_type, rep);
        }
        assert!(!e.done);
        let out = e.on_request(&s, Channel::Control, request("shutdown_request", json!({})));
        assert!(e.done);
        assert_eq!(out.len(), 4);
        let (m, h) = parse(&out[2].1);
        assert_eq!(h.msg_type, "shutdown_reply");
        assert_eq!(m.idents, vec![b"engine.1.shutdown".to_vec()]);
        // garbage is ignored
        assert!(e
            .on_request(&s, Channel::Mux, vec![b"x".to_vec()])
            .is_empty());
    }
}
