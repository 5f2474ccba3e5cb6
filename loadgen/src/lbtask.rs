//! The load-balanced client's bookkeeping, sans I/O: the `apply_request`s it submits, the
//! tasks in flight, and what came back.
//!
//! Task `i` is `pow(i % 16, 2)` with the built-in `pow`, so a real Python engine computes a
//! checkable result (a small int) and a simulated one (`rpar-loadgen`) answers `None`; both
//! are counted. The request is what `LoadBalancedView.apply` sends (the six metadata keys, an
//! empty content, `pack_apply_message` buffers: the pickled function, the info dict, one pickle
//! per argument), built once and re-stamped with a fresh header and signature per task.

use rpar_core::msg::msg_id_of;
use rpar_core::wire::{Frames, Limits, Signer, WireMessage};
use rpar_core::MessageBuilder;
use serde_json::{json, Value};
use std::collections::{BTreeMap, HashMap};

/// `pickle.dumps(builtins.pow)` at protocol 2 (a global reference; any Python 3 loads it).
const PICKLED_POW: &[u8] = b"\x80\x02cbuiltins\npow\n.";
/// `pack_apply_message`'s info dict for two positional arguments:
/// `{"nargs": 2, "narg_bufs": 2, "kw_keys": []}`, protocol 2.
const PICKLED_INFO: &[u8] =
    b"\x80\x02}(X\x05\x00\x00\x00nargsK\x02X\x09\x00\x00\x00narg_bufsK\x02X\x07\x00\x00\x00kw_keys]u.";

/// Protocol-2 pickle of an int in 0..=255 (`BININT1`).
fn pickled_small_int(v: u8) -> Vec<u8> {
    vec![0x80, 0x02, b'K', v, b'.']
}

/// What a result buffer holds, as far as this client needs to know.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Value1 {
    /// A small int (pickle `BININT1`, any protocol ≥ 2).
    Int(u8),
    /// `None`.
    None,
    /// Anything else.
    Other,
}

/// Read a result buffer: `\x80<proto>K<b>.` or `\x80<proto>N.`.
pub fn read_result(buf: &[u8]) -> Value1 {
    match buf {
        [0x80, p, b'K', v, b'.'] if *p >= 2 => Value1::Int(*v),
        [0x80, p, b'N', b'.'] if *p >= 2 => Value1::None,
        _ => Value1::Other,
    }
}

/// Counts of what came back.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Tally {
    pub submitted: u64,
    pub replies: u64,
    /// `content.status == "ok"`.
    pub ok: u64,
    /// Any other status, by `ename`.
    pub errors: BTreeMap<String, u64>,
    /// Ok with the expected `pow` result.
    pub correct: u64,
    /// Ok with `None` (a simulated engine).
    pub none: u64,
    /// Ok with some other result (a wrong value).
    pub wrong: u64,
    /// Replies that are not for a task in flight, or not readable / not verified.
    pub dropped: u64,
}

impl Tally {
    pub fn error_count(&self) -> u64 {
        self.errors.values().sum()
    }

    pub fn to_json(&self) -> Value {
        json!({
            "submitted": self.submitted,
            "replies": self.replies,
            "ok": self.ok,
            "errors": self.errors,
            "correct": self.correct,
            "none": self.none,
            "wrong": self.wrong,
            "dropped": self.dropped,
        })
    }
}

/// Builds the requests and matches the replies.
pub struct Tasks {
    builder: MessageBuilder,
    metadata: Vec<u8>,
    content: Vec<u8>,
    /// msg_id → expected result of the task in flight.
    in_flight: HashMap<String, u8>,
    pub tally: Tally,
    limits: Limits,
}

impl Tasks {
    pub fn new(builder: MessageBuilder) -> Tasks {
        let md = json!({"after": [], "follow": [], "timeout": 0.0, "targets": [],
                        "retries": 0, "label": null});
        Tasks {
            builder,
            metadata: serde_json::to_vec(&md).unwrap_or_default(),
            content: b"{}".to_vec(),
            in_flight: HashMap::new(),
            tally: Tally::default(),
            limits: Limits::default(),
        }
    }

    pub fn in_flight(&self) -> usize {
        self.in_flight.len()
    }

    /// Task `i`'s signed `apply_request` frames (no routing prefix: the task DEALER sends
    /// them as they are), now in flight.
    pub fn request(&mut self, signer: &Signer, i: u64) -> Frames {
        let msg_id = self.builder.next_msg_id();
        let base = u8::try_from(i % 16).unwrap_or(0);
        let mut m = WireMessage {
            idents: Vec::new(),
            signature: Vec::new(),
            header: self.builder.header_bytes_with_id("apply_request", &msg_id),
            parent: b"{}".to_vec(),
            metadata: self.metadata.clone(),
            content: self.content.clone(),
            buffers: vec![
                PICKLED_POW.to_vec(),
                PICKLED_INFO.to_vec(),
                pickled_small_int(base),
                pickled_small_int(2),
            ],
        };
        signer.sign_message(&mut m);
        self.in_flight.insert(msg_id, base * base);
        self.tally.submitted += 1;
        m.into_frames()
    }

    /// One message from the task socket: a reply of a task in flight is counted and the task
    /// leaves the window; anything else is counted as dropped.
    pub fn on_reply(&mut self, verifier: &mut Signer, frames: Frames) {
        let Ok(m) = WireMessage::split(frames, &self.limits) else {
            self.tally.dropped += 1;
            return;
        };
        if verifier.verify(&m).is_err() {
            self.tally.dropped += 1;
            return;
        }
        let Some(expected) = msg_id_of(&m.parent).and_then(|id| self.in_flight.remove(&id)) else {
            self.tally.dropped += 1;
            return;
        };
        self.tally.replies += 1;
        let content: Value = serde_json::from_slice(&m.content).unwrap_or(Value::Null);
        if content.get("status").and_then(Value::as_str) != Some("ok") {
            let ename = content
                .get("ename")
                .and_then(Value::as_str)
                .unwrap_or("(no ename)")
                .to_string();
            *self.tally.errors.entry(ename).or_default() += 1;
            return;
        }
        self.tally.ok += 1;
        match m.buffers.first().map(|b| read_result(b)) {
            Some(Value1::Int(v)) if v == expected => self.tally.correct += 1,
            Some(Value1::None) => self.tally.none += 1,
            _ => self.tally.wrong += 1,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rpar_core::Header;

    fn reply(signer: &Signer, req: &Frames, content: Value, result: Option<Vec<u8>>) -> Frames {
        let m = WireMessage::split(req.clone(), &Limits::default()).unwrap();
        let engine = MessageBuilder::with_session("engine".into());
        engine
            .build(
                signer,
                vec![b"engine-uuid".to_vec()],
                "apply_reply",
                &m.header,
                &json!({"status": "ok"}),
                &content,
                result.into_iter().collect(),
            )
            .into_frames()
    }

    #[test]
    fn requests_are_signed_lb_applies_of_pow_and_replies_are_tallied() {
        let signer = Signer::new(b"key");
        let mut verifier = Signer::new(b"key");
        let mut t = Tasks::new(MessageBuilder::new());
        let reqs: Vec<Frames> = (0..5).map(|i| t.request(&signer, i)).collect();
        assert_eq!(t.in_flight(), 5);
        let m = WireMessage::split(reqs[3].clone(), &Limits::default()).unwrap();
        assert!(m.idents.is_empty());
        Signer::new(b"key").verify(&m).unwrap();
        assert_eq!(Header::parse(&m.header).unwrap().msg_type, "apply_request");
        assert_eq!(m.metadata_value().unwrap()["targets"], json!([]));
        assert_eq!(m.buffers.len(), 4);
        assert_eq!(m.buffers[2], pickled_small_int(3));

        let ok = json!({"status": "ok"});
        t.on_reply(
            &mut verifier,
            reply(
                &signer,
                &reqs[3],
                ok.clone(),
                Some(b"\x80\x04K\x09.".to_vec()),
            ),
        );
        t.on_reply(
            &mut verifier,
            reply(&signer, &reqs[1], ok.clone(), Some(b"\x80\x04N.".to_vec())),
        );
        t.on_reply(
            &mut verifier,
            reply(
                &signer,
                &reqs[2],
                ok.clone(),
                Some(b"\x80\x04K\x05.".to_vec()),
            ),
        );
        let err = json!({"status": "error", "ename": "EngineError"});
        t.on_reply(&mut verifier, reply(&signer, &reqs[0], err, None));
        // a replay, a reply for no task in flight, garbage, a bad signature
        let again = reply(&signer, &reqs[4], ok.clone(), None);
        t.on_reply(&mut verifier, again.clone());
        t.on_reply(&mut verifier, again);
        t.on_reply(&mut verifier, vec![b"junk".to_vec()]);
        t.on_reply(
            &mut verifier,
            reply(&Signer::new(b"other"), &reqs[4], ok, None),
        );
        assert_eq!(t.in_flight(), 0);
        let tally = &t.tally;
        assert_eq!((tally.submitted, tally.replies, tally.ok), (5, 5, 4));
        assert_eq!((tally.correct, tally.none, tally.wrong), (1, 1, 2));
        assert_eq!(tally.errors.get("EngineError"), Some(&1));
        assert_eq!(tally.dropped, 3);
    }

    #[test]
    fn result_pickles_are_read() {
        assert_eq!(read_result(b"\x80\x04K\xe1."), Value1::Int(225));
        assert_eq!(read_result(b"\x80\x05N."), Value1::None);
        assert_eq!(read_result(b"\x80\x01N."), Value1::Other);
        assert_eq!(read_result(b""), Value1::Other);
    }
}
