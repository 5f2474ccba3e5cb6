//! Engines after registration: replaying recent registrations to new subscribers, the
//! engine-state file (save and `--restore`), and unregistration with what it fails.

use super::*;

impl Hub {
    /// A client subscribed to the notification socket (an XPUB: `[0x01 + topic]`).
    ///
    /// The Python client asks for the engine list (`connection_request`) and only then connects
    /// its notification SUB, so an engine registered between the reply and the subscription
    /// reached the client by neither, and `wait_for_engines` waited forever. ipcontroller
    /// registers engines seconds after their heart starts, which made that rare; rpar registers
    /// within milliseconds, so it happened. A new subscriber is told again of the engines
    /// registered in the last few seconds (the client takes a known engine twice without harm).
    ///
    /// Bounded: only a subscription that can receive notifications counts (its topic a prefix of
    /// their first frame, `<IDS|MSG>`; the client subscribes to everything), and replays are at
    /// least [`RENOTIFY_GAP`] apart: subscriptions arriving sooner share one replay at the end of
    /// the gap, so a flood of subscriptions costs at most one replay a second.
    pub(super) fn on_subscription(&mut self, frames: &Frames, now: Instant, out: &mut Vec<Effect>) {
        let [f] = frames.as_slice() else {
            return;
        };
        let Some((&1, topic)) = f.split_first() else {
            return;
        };
        if !rpar_core::wire::DELIM.starts_with(topic) {
            debug!("notification subscription to a topic no notification has; ignored");
            return;
        }
        match self.last_replay {
            Some(last) if now < last + RENOTIFY_GAP => {
                if self.replay_at.is_none() {
                    self.replay_at = Some(last + RENOTIFY_GAP);
                }
            }
            _ => self.replay_registrations(now, out),
        }
    }

    /// Publish the registrations of the last [`RENOTIFY_WINDOW`] again.
    pub(super) fn replay_registrations(&mut self, now: Instant, out: &mut Vec<Effect>) {
        self.replay_at = None;
        self.prune_recent_regs(now);
        let again: Vec<(u32, String)> = self
            .recent_regs
            .iter()
            .filter_map(|(_, id)| {
                let e = self.engines.get(self.ids.get(id)?)?;
                e.registered.then(|| (*id, e.uuid.clone()))
            })
            .collect();
        if again.is_empty() {
            return;
        }
        self.last_replay = Some(now);
        debug!(
            n = again.len(),
            "new notification subscriber: recent registrations sent again"
        );
        for (id, uuid) in again {
            self.notify(
                "registration_notification",
                b"{}",
                json!({"id": id, "uuid": uuid}),
                out,
            );
        }
    }

    /// `{"engines": {"<id>": "<uuid>"}, "next_id": N}` as ipyparallel writes it.
    pub fn engine_state(&self) -> Value {
        let engines: serde_json::Map<String, Value> = self
            .registered()
            .map(|e| (e.id.to_string(), json!(e.uuid)))
            .collect();
        json!({"engines": engines, "next_id": self.next_id})
    }

    /// Take back the engines of a saved state file (`--restore`, after a controller crash):
    /// their ids and uuids are reserved at once, and each is registered again as soon as its
    /// heart answers. Its other sockets reconnect on their own timers, possibly a little later;
    /// the server parks a message for a socket that is not back yet (`ROUTER_MANDATORY`)
    /// rather than letting ZeroMQ drop it.
    pub fn restore(&mut self, state: &Value, now: Instant) {
        if let Some(map) = state.get("engines").and_then(Value::as_object) {
            for (id, uuid) in map {
                let (Ok(id), Some(uuid)) = (id.parse::<u32>(), uuid.as_str()) else {
                    continue;
                };
                let key = uuid.as_bytes().to_vec();
                let e = Engine {
                    id,
                    uuid: uuid.into(),
                    registered: false,
                    heart_seen: false,
                    since: now,
                };
                self.engines.insert(key.clone(), e);
                self.ids.insert(id, key.clone());
                self.pending_regs.insert(id, key);
            }
        }
        if let Some(n) = state.get("next_id").and_then(Value::as_u64) {
            self.next_id = self.next_id.max(n);
        }
        self.update_fast_ping(now);
    }

    /// Forget an engine (pending or registered) in every table that names it.
    pub(super) fn drop_engine(&mut self, uuid: &[u8]) -> Option<Engine> {
        let e = self.engines.remove(uuid)?;
        self.native.forget_engine(uuid, e.id);
        self.ids.remove(&e.id);
        self.pending_regs.remove(&e.id);
        Some(e)
    }

    /// Remove engine `id` (unregistration request, lost heartbeat, or shutdown).
    pub fn unregister(&mut self, id: u32, now: Instant, out: &mut Vec<Effect>) {
        let Some(uuid) = self.ids.get(&id).cloned() else {
            debug!(engine = id, "unregistration of an unknown engine ignored");
            return;
        };
        let Some(e) = self.drop_engine(&uuid) else {
            return;
        };
        self.heart.forget(&uuid);
        if !e.registered {
            self.monitor.dropped_pending(id, false);
            return;
        }
        self.monitor.engine_gone(id);
        info!(engine = id, uuid = %e.uuid, "engine unregistered");
        self.notify(
            "unregistration_notification",
            b"{}",
            json!({"id": id, "uuid": e.uuid}),
            out,
        );
        self.tasks_engine_removed(&uuid, now, out);
        if let Some(left) = self.ledger.mux_pending.remove(&id) {
            if !left.is_empty() {
                self.stranded.push((
                    now + self.cfg.engine_death_grace,
                    e.uuid.clone(),
                    id,
                    left.into_iter().collect(),
                ));
                if self.cfg.engine_death_grace.is_zero() {
                    self.fail_stranded(now);
                }
            }
        }
        out.push(Effect::SaveEngines);
    }

    pub(super) fn fail_stranded(&mut self, now: Instant) {
        let (due, keep): (Vec<_>, Vec<_>) = std::mem::take(&mut self.stranded)
            .into_iter()
            .partition(|s| now >= s.0);
        self.stranded = keep;
        for (_, uuid, id, ids) in due {
            for m in ids {
                self.ledger.finished(m.clone(), None, None);
                let content = crate::errors::wrap(
                    "EngineError",
                    &format!("Engine {id} died while running task '{m}'"),
                );
                self.monitor
                    .finished(&m, Some(id), &monitor::Outcome::of_content(Some(&content)));
                self.records.engine_died(&m, &uuid, content);
            }
        }
    }
}
