//! The broadcast scheduler's reply side: engine replies relayed as they come (non-coalescing)
//! or gathered into one reply once every target answered (coalescing).

use super::*;

impl BroadcastScheduler {
    /// A reply as received on the engine-facing ROUTER: `msg.idents == [engine_uuid, client_id]`.
    pub fn on_engine_reply(&mut self, msg: WireMessage, _now: Instant) -> Vec<BroadcastAction> {
        let mut out = Vec::new();
        let Some(engine) = msg.idents.first().cloned() else {
            warn!("broadcast reply without routing frames; dropped");
            return out;
        };
        let derived = match WireMessage::parse_part("parent_header", &msg.parent) {
            Ok(v) => v.get("msg_id").and_then(Value::as_str).map(str::to_string),
            Err(_) => None,
        };
        let Some(derived) = derived else {
            warn!("broadcast reply without parent_header.msg_id; dropped");
            return out;
        };
        let Some((orig, i)) = self.derived.get(&derived).cloned() else {
            warn!(%derived, "reply for an unknown or finished broadcast target; dropped");
            return out;
        };
        let matches = self
            .requests
            .get(&orig)
            .and_then(|b| b.targets.get(i))
            .is_some_and(|t| t.uuid.as_bytes() == engine.as_slice());
        if !matches {
            warn!(%derived, "broadcast reply from an engine that was not its target; dropped");
            return out;
        }
        self.deliver(&orig, i, msg, &mut out);
        out
    }

    /// Account for target `i`'s reply and pass it on (or coalesce).
    pub(super) fn deliver(
        &mut self,
        orig: &str,
        i: usize,
        mut reply: WireMessage,
        out: &mut Vec<BroadcastAction>,
    ) {
        let Some(b) = self.requests.get_mut(orig) else {
            return;
        };
        let Some(t) = b.targets.get_mut(i) else {
            return;
        };
        if t.done {
            return;
        }
        t.done = true;
        self.derived.remove(&t.derived);
        if let Some(e) = self.engines.get_mut(t.uuid.as_bytes()) {
            e.outstanding.remove(&t.derived);
            if !e.alive && e.outstanding.is_empty() {
                self.engines.remove(t.uuid.as_bytes());
            }
        }
        b.remaining -= 1;
        if !b.coalescing {
            reply.idents = vec![b.client.clone()];
            out.push(BroadcastAction::ToClient(reply.into_frames()));
        } else {
            let ok = WireMessage::parse_part("metadata", &reply.metadata)
                .ok()
                .and_then(|m| m.get("status").and_then(Value::as_str).map(|s| s == "ok"))
                .unwrap_or(false);
            if !ok {
                b.last_error = Some(i);
            }
            b.last = Some(i);
            if let Some(slot) = b.replies.get_mut(i) {
                *slot = Some(reply);
            }
        }
        if b.remaining == 0 {
            if let Some(b) = self.requests.remove(orig) {
                if b.coalescing {
                    if let Some(m) = self.coalesce(orig, b) {
                        out.push(BroadcastAction::ToClient(m));
                    }
                }
            }
        }
    }

    pub(super) fn coalesce(&self, orig: &str, b: Bcast) -> Option<Frames> {
        let base_i = b.last_error.or(b.last)?;
        let broadcast_targets: Vec<Value> =
            b.targets.iter().map(|t| json!([t.uuid, t.id])).collect();
        let mut base: Option<WireMessage> = None;
        let mut buffers = Vec::new();
        for (i, r) in b.replies.into_iter().enumerate() {
            let Some(mut r) = r else {
                continue;
            };
            buffers.append(&mut r.buffers);
            if i == base_i {
                base = Some(r);
            }
        }
        let base = base?;
        let mut md = match WireMessage::parse_part("metadata", &base.metadata) {
            Ok(Value::Object(m)) => m,
            _ => Map::new(),
        };
        md.insert("broadcast_targets".into(), Value::Array(broadcast_targets));
        md.insert("is_broadcast".into(), Value::Bool(true));
        md.insert("is_coalescing".into(), Value::Bool(true));
        md.insert("original_msg_id".into(), Value::String(orig.to_string()));
        let mut m = WireMessage {
            idents: vec![b.client],
            signature: Vec::new(),
            header: base.header,
            parent: base.parent,
            metadata: serde_json::to_vec(&Value::Object(md)).unwrap_or_default(),
            content: base.content,
            buffers,
        };
        self.signer.sign_message(&mut m);
        debug!(msg_id = %orig, "coalesced broadcast reply");
        Some(m.into_frames())
    }
}
