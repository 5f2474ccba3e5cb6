//! Engine registration: `registration_request` and the hub queries that share its socket, id
//! grants, the first heartbeat answer that completes a registration (in id order), and the
//! notifications that announce it.

use super::*;

impl Hub {
    pub(super) fn on_registration_socket(
        &mut self,
        msg: WireMessage,
        now: Instant,
        out: &mut Vec<Effect>,
    ) {
        let header = match rpar_core::Header::parse(&msg.header) {
            Ok(h) => h,
            Err(e) => {
                warn!(error = %e, "hub query with a bad header");
                self.reply_error(&msg, "hub_error", "ValueError", &e.to_string(), out);
                return;
            }
        };
        let content = match msg.content_value() {
            Ok(c) => c,
            Err(e) => {
                self.reply_error(&msg, "hub_error", "ValueError", &e.to_string(), out);
                return;
            }
        };
        if !header.msg_type.ends_with("registration_request") {
            self.monitor.client_seen(&header.session, now);
        }
        if matches!(
            header.msg_type.as_str(),
            "result_request" | "db_request" | "resubmit_request"
        ) {
            // these read buffers from the records: every record gets its buffers first
            self.records.settle(true);
        }
        match header.msg_type.as_str() {
            "registration_request" => self.register(&msg, &content, now, out),
            "unregistration_request" => {
                match content.get("id") {
                    Some(v) if !v.is_null() => match engine_id(v) {
                        Some(id) => self.unregister(id, now, out),
                        None => {
                            debug!(id = %v, "unregistration of an id no engine can have ignored")
                        }
                    },
                    _ => {
                        // an engine that never got an id: cancel its pending registration
                        if let Some(uuid) = msg.idents.first() {
                            if self
                                .engines
                                .get(uuid.as_slice())
                                .is_some_and(|e| !e.registered)
                            {
                                if let Some(e) = self.drop_engine(uuid) {
                                    self.monitor.dropped_pending(e.id, false);
                                }
                            }
                        }
                    }
                }
                self.update_fast_ping(now);
            }
            "connection_request" => {
                let engines: serde_json::Map<String, Value> = self
                    .registered()
                    .map(|e| (e.id.to_string(), json!(e.uuid)))
                    .collect();
                self.reply(
                    &msg,
                    "connection_reply",
                    json!({"status": "ok", "engines": engines}),
                    vec![],
                    out,
                );
            }
            "queue_request" => self.queue_request(&msg, &content, out),
            "result_request" => self.result_request(&msg, &content, out),
            "history_request" => self.history_request(&msg, out),
            "db_request" => self.db_request(&msg, &content, out),
            "purge_request" => self.purge_request(&msg, &content, out),
            "resubmit_request" => self.resubmit_request(&msg, &content, now, out),
            "become_dask_request" => self.become_dask_request(&msg, &content, out),
            "stop_distributed_request" => self.stop_distributed_request(&msg, out),
            "shutdown_request" => {
                info!("hub shutdown requested by a client");
                self.reply(&msg, "shutdown_reply", json!({"status": "ok"}), vec![], out);
                self.notify(
                    "shutdown_notification",
                    &msg.header,
                    json!({"status": "ok"}),
                    out,
                );
                self.exit_at = Some(now + Duration::from_millis(200));
            }
            other => {
                let t = other.to_string();
                self.reply_error(
                    &msg,
                    "hub_error",
                    "KeyError",
                    &format!("Bad Message Type: '{t}'"),
                    out,
                );
            }
        }
    }

    /// Registered engines in id order.
    pub fn registered(&self) -> impl Iterator<Item = &Engine> {
        self.ids
            .values()
            .filter_map(|u| self.engines.get(u))
            .filter(|e| e.registered)
    }

    pub(super) fn register(
        &mut self,
        msg: &WireMessage,
        content: &Value,
        now: Instant,
        out: &mut Vec<Effect>,
    ) {
        let Some(uuid) = content.get("uuid").and_then(Value::as_str) else {
            self.reply_error(
                msg,
                "registration_reply",
                "KeyError",
                "registration_request without uuid",
                out,
            );
            return;
        };
        let key = uuid.as_bytes().to_vec();
        let requested = match content.get("id") {
            None | Some(Value::Null) => None,
            Some(v) => {
                let r = engine_id(v);
                if r.is_none() {
                    info!(requested = %v, "requested engine id is not an id (0 to 2^32-1); ignored");
                }
                r
            }
        };
        if self.engines.contains_key(&key) {
            // a counter value is consumed, as ipyparallel does
            self.next_id = self.next_id.saturating_add(1);
            warn!(uuid, "registration with a uuid already in use");
            let c = crate::errors::wrap(
                "KeyError",
                &format!("'Engine uuid {uuid} is already in use'"),
            );
            self.registration_reply(msg, &c, out);
            return;
        }
        let id = match requested {
            Some(r) if !self.ids.contains_key(&r) => {
                self.next_id = self.next_id.max(u64::from(r) + 1);
                r
            }
            _ => {
                let Some(i) = self.take_next_id() else {
                    warn!(uuid, "no engine id is left");
                    let c =
                        crate::errors::wrap("IndexError", "No engine ids are left (0 to 2^32-1)");
                    self.registration_reply(msg, &c, out);
                    return;
                };
                if let Some(r) = requested {
                    info!(requested = r, granted = i, "requested engine id is taken");
                }
                i
            }
        };
        self.engines.insert(
            key.clone(),
            Engine {
                id,
                uuid: uuid.to_string(),
                registered: false,
                heart_seen: false,
                since: now,
            },
        );
        self.ids.insert(id, key.clone());
        self.pending_regs.insert(id, key);
        self.monitor.registering(id, uuid, content);
        let mut ci = serde_json::to_value(&self.cfg.engine_info).unwrap_or(json!({}));
        if let Some(o) = ci.as_object_mut() {
            for k in [
                "key",
                "ssh",
                "location",
                "pack",
                "unpack",
                "signature_scheme",
                "curve_serverkey",
                "rpar_native",
            ] {
                o.remove(k);
            }
        }
        let c = json!({
            "id": id, "status": "ok",
            "hb_period": self.cfg.hb_period.as_millis() as u64,
            "connection_info": ci,
        });
        self.registration_reply(msg, &c, out);
        debug!(
            engine = id,
            uuid, "registration pending until the first heartbeat"
        );
        self.update_fast_ping(now);
    }

    /// The next free id from the counter on, advancing it. Once the counter is past
    /// `u32::MAX` (an engine asked for a very high id), the lowest free id; `None` only when
    /// all 2^32 ids are taken.
    pub(super) fn take_next_id(&mut self) -> Option<u32> {
        while let Ok(i) = u32::try_from(self.next_id) {
            self.next_id += 1;
            if !self.ids.contains_key(&i) {
                return Some(i);
            }
        }
        let mut expect = 0u32;
        for &k in self.ids.keys() {
            if k != expect {
                return Some(expect);
            }
            expect = expect.checked_add(1)?;
        }
        Some(expect)
    }

    pub(super) fn on_pong(&mut self, frames: Frames, now: Instant, out: &mut Vec<Effect>) {
        if frames.len() != 2 {
            self.stats.dropped += 1;
            debug!(n = frames.len(), "bad heartbeat frame count");
            return;
        }
        let (uuid, token) = (&frames[0], &frames[1]);
        if self.heart.pong(uuid, token) != heart::Pong::Alive {
            // A late echo still shows that a pending engine's heart is connected and
            // answering: in a big job starting on busy cores the first echoes can take longer
            // than two beats. (A registered engine's late echoes count as misses, as before.)
            let pending = self
                .engines
                .get(uuid.as_slice())
                .is_some_and(|e| !e.registered);
            if !pending || !self.heart.issued(token) {
                debug!("stale or bad heartbeat");
                return;
            }
        }
        if let Some(e) = self
            .engines
            .get_mut(uuid.as_slice())
            .filter(|e| !e.registered)
        {
            e.heart_seen = true;
            self.finish_ready_registrations(now, out);
        } else {
            self.revive(uuid, now, out);
        }
    }

    /// Register every pending engine whose heart has answered, in id order. An engine waits
    /// for a lower id still pending, so clients see ids appear in order: at most
    /// `min(period, 1 s)` after the lower id's registration request, and under the `pure`
    /// scheme until that engine registers or is dropped (`registration_timeout`), because the
    /// Python client then stops task farming for good as soon as the ids it knows are not
    /// 0..n-1 (a Python ipengine on a busy node can take longer than a second to answer its
    /// first ping).
    pub(super) fn finish_ready_registrations(&mut self, now: Instant, out: &mut Vec<Effect>) {
        let hold = if self.cfg.scheme == "pure" {
            self.cfg.registration_timeout
        } else {
            self.cfg.hb_period.min(Duration::from_secs(1))
        };
        let pending: Vec<(Vec<u8>, bool, Instant)> = self
            .pending_regs
            .values()
            .filter_map(|u| {
                self.engines
                    .get(u)
                    .map(|e| (u.clone(), e.heart_seen, e.since))
            })
            .collect();
        for (uuid, seen, since) in pending {
            if seen {
                self.finish_registration(uuid, now, out);
            } else if now < since + hold {
                break;
            }
        }
    }

    pub(super) fn finish_registration(
        &mut self,
        uuid: Vec<u8>,
        now: Instant,
        out: &mut Vec<Effect>,
    ) {
        let Some(e) = self.engines.get_mut(&uuid) else {
            return;
        };
        e.registered = true;
        let (id, uuid_s) = (e.id, e.uuid.clone());
        self.pending_regs.remove(&id);
        self.heart.track(&uuid);
        self.monitor.registered();
        info!(engine = id, uuid = %uuid_s, "engine registered");
        self.recent_regs.push_back((now, id));
        self.prune_recent_regs(now);
        self.notify(
            "registration_notification",
            b"{}",
            json!({"id": id, "uuid": uuid_s}),
            out,
        );
        self.tasks_engine_added(&uuid, id, now, out);
        out.push(Effect::SaveEngines);
        self.update_fast_ping(now);
    }

    pub(super) fn prune_recent_regs(&mut self, now: Instant) {
        while self
            .recent_regs
            .front()
            .is_some_and(|(t, _)| now.saturating_duration_since(*t) > RENOTIFY_WINDOW)
        {
            self.recent_regs.pop_front();
        }
    }
}
