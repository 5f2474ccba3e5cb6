//! Results and time: an engine's reply finishes, retries or re-places its task; timeouts and
//! engines that died with tasks outstanding.

use super::*;

impl TaskScheduler {
    /// A reply from an engine, as received on the engine-facing ROUTER:
    /// `msg.idents == [engine_uuid, client_routing_id]`.
    pub fn on_engine_reply(&mut self, msg: WireMessage, now: Instant) -> Vec<TaskAction> {
        let parent_id = header_msg_id(&msg.parent);
        self.on_engine_reply_to(msg, parent_id, None, now)
    }

    /// [`TaskScheduler::on_engine_reply`] for a reply whose parent msg_id the caller has read
    /// already ([`rpar_core::msg::msg_id_of`] of `msg.parent`), and perhaps its metadata too
    /// ([`ReplyMetadata::read`] of `msg.metadata`, or a parse that reads as it does; `None`: read
    /// here), so that each frame is scanned once.
    pub fn on_engine_reply_to(
        &mut self,
        msg: WireMessage,
        parent_id: Option<String>,
        md: Option<ReplyMetadata>,
        now: Instant,
    ) -> Vec<TaskAction> {
        let mut out = Vec::new();
        self.result(msg, parent_id, md, now, &mut out);
        self.drain(now, &mut out);
        out
    }

    pub(super) fn result(
        &mut self,
        mut msg: WireMessage,
        parent_id: Option<String>,
        md: Option<ReplyMetadata>,
        now: Instant,
        out: &mut Vec<TaskAction>,
    ) {
        if msg.idents.len() < 2 {
            warn!(
                frames = msg.idents.len(),
                "task reply without [engine, client] routing frames; dropped"
            );
            return;
        }
        let Some(msg_id) = parent_id else {
            warn!("task reply without a readable parent_header.msg_id; dropped");
            return;
        };
        let md = md.unwrap_or_else(|| ReplyMetadata::read(&msg.metadata));
        let deps_met = md
            .dependencies_met
            .as_ref()
            .and_then(Value::as_bool)
            .unwrap_or(true);
        let status = match md.status.as_ref().and_then(Value::as_str) {
            Some(s) => s.to_string(),
            None => {
                // Python drops such a reply (KeyError); delivering it is kinder to the client.
                let c = WireMessage::parse_part("content", &msg.content).unwrap_or(Value::Null);
                let s = c.get("status").and_then(Value::as_str).unwrap_or("error");
                warn!(%msg_id, "task reply without metadata.status; using content status {s:?}");
                s.to_string()
            }
        };
        let Some(&seq) = self.ids.get(&msg_id) else {
            self.relay_unknown(msg_id, msg, status == "ok", out);
            return;
        };
        let Some(mut job) = self.jobs.remove(&seq) else {
            warn!(%msg_id, "reply for a task that is already finished; dropped");
            return;
        };
        let engine_uuid = msg.idents[0].clone();
        let k = match job.state {
            JobState::Running(k) if self.engines.get(&k).is_some_and(|e| e.uuid == engine_uuid) => {
                k
            }
            _ => {
                warn!(%msg_id, engine = %lossy(&engine_uuid), "reply from an engine the task is not running on; dropped");
                self.jobs.insert(seq, job);
                return;
            }
        };
        if let Some(e) = self.engines.get_mut(&k) {
            e.load = e.load.saturating_sub(1);
            e.pending.remove(&seq);
            if e.alive {
                self.capacity.push_back(k);
                self.refresh_slot(k);
            } else if e.pending.is_empty() {
                // a dead engine that answered everything: forget it now
                self.engines.remove(&k);
            }
        }
        let pure = self.cfg.scheme == Scheme::Pure;
        if !pure && !deps_met {
            debug!(msg_id = %job.msg_id, "unmet functional dependency; blacklisting the engine");
            job.blacklist.insert(engine_uuid);
            job.func_dep_failed = true;
            self.place(seq, job, now, true, out);
            return;
        }
        let ok = status == "ok";
        if !pure && !ok && job.retries > 0 {
            job.retries -= 1;
            debug!(msg_id = %job.msg_id, left = job.retries, "task failed; retrying elsewhere");
            job.blacklist.insert(engine_uuid);
            self.place(seq, job, now, true, out);
            return;
        }
        // final
        let client = job.request.idents.first().cloned().unwrap_or_default();
        msg.idents = vec![client, engine_uuid.clone()];
        self.unarm(seq, &job);
        let outcome = if ok {
            Outcome::Success
        } else {
            Outcome::Failure
        };
        self.record(seq, &job.msg_id, outcome, Some(k), &job.refs);
        out.push(TaskAction::Finished {
            msg_id: job.msg_id,
            engine_uuid: Some(engine_uuid),
            reply: msg,
        });
    }

    /// A reply for a task this scheduler never saw (submitted to a controller that died and
    /// was restarted while it ran): relayed to the client its routing frames name, and
    /// remembered as finished so that a second copy is dropped.
    pub(super) fn relay_unknown(
        &mut self,
        msg_id: String,
        mut msg: WireMessage,
        ok: bool,
        out: &mut Vec<TaskAction>,
    ) {
        info!(%msg_id, "reply for a task submitted before a controller restart; relayed to its client");
        let engine_uuid = msg.idents[0].clone();
        msg.idents = vec![msg.idents[1].clone(), engine_uuid.clone()];
        let seq = self.next_seq;
        self.next_seq += 1;
        self.ids.insert(msg_id.clone(), seq);
        let engine = self.by_uuid.get(&engine_uuid).copied();
        let outcome = if ok {
            Outcome::Success
        } else {
            Outcome::Failure
        };
        self.record(seq, &msg_id, outcome, engine, &[]);
        out.push(TaskAction::Finished {
            msg_id,
            engine_uuid: Some(engine_uuid),
            reply: msg,
        });
    }

    /// Fire what is due: task timeouts, engines whose grace period ended.
    pub fn tick(&mut self, now: Instant) -> Vec<TaskAction> {
        let mut out = Vec::new();
        while let Some(&(t, seq)) = self.timeouts.first() {
            if t > now {
                break;
            }
            self.timeouts.pop_first();
            let due = self
                .jobs
                .get(&seq)
                .is_some_and(|j| j.deadline == Some(t) && !matches!(j.state, JobState::Running(_)));
            if due {
                if let Some(job) = self.jobs.remove(&seq) {
                    self.unindex(seq, &job);
                    let secs = job.timeout.map_or(0.0, |d| d.as_secs_f64());
                    info!(msg_id = %job.msg_id, "task timed out while queued");
                    let f = SchedFailure::TaskTimeout(format!(
                        "task {:?} was not run within its timeout of {secs} s",
                        job.msg_id
                    ));
                    self.fail(seq, job, f, &mut out);
                }
            }
            self.drain(now, &mut out);
        }
        while let Some(&(t, k)) = self.stranded.first() {
            if t > now {
                break;
            }
            self.stranded.pop_first();
            self.strand(k, now, &mut out);
            self.drain(now, &mut out);
        }
        out
    }

    /// The grace period of dead engine `k` ended: fail what it still holds.
    pub(super) fn strand(&mut self, k: EngineKey, now: Instant, out: &mut Vec<TaskAction>) {
        let Some(e) = self.engines.get(&k) else {
            return;
        };
        if e.alive {
            return;
        }
        let uuid = e.uuid.clone();
        let id = e.id;
        let lost: Vec<TaskSeq> = e.pending.iter().copied().collect();
        for seq in lost {
            let Some(job) = self.jobs.get(&seq) else {
                continue;
            };
            let client = job.request.idents.first().cloned().unwrap_or_default();
            let f = SchedFailure::EngineError(format!(
                "Engine {id} died while running task '{}'",
                job.msg_id
            ));
            let md = json!({
                "status": "error",
                "engine": lossy(&uuid),
                "date": rpar_core::ids::now_iso(),
                "dependencies_met": true,
            });
            let reply = self.builder.build(
                &self.signer,
                vec![uuid.clone(), client],
                "apply_reply",
                &job.request.header,
                &md,
                &f.content(),
                Vec::new(),
            );
            info!(msg_id = %job.msg_id, engine = id, "engine died with the task outstanding");
            let parent_id = header_msg_id(&reply.parent);
            self.result(reply, parent_id, None, now, out);
        }
        self.engines.remove(&k);
    }
}

/// The reply metadata keys the scheduler reads (an explicit `null` kept as `Some(Null)`).
#[derive(Debug, Clone, Default, PartialEq, serde::Deserialize)]
pub struct ReplyMetadata {
    #[serde(default, deserialize_with = "rpar_core::msg::keep_null")]
    pub dependencies_met: Option<Value>,
    #[serde(default, deserialize_with = "rpar_core::msg::keep_null")]
    pub status: Option<Value>,
}

impl ReplyMetadata {
    /// The two keys of a reply's metadata frame, as the scheduler reads them: the last of
    /// duplicates, nothing from a frame that is not a JSON object.
    pub fn read(raw: &[u8]) -> ReplyMetadata {
        match rpar_core::msg::parse_fields::<ReplyMetadata>(raw) {
            Some(m) => m,
            None => {
                let v = WireMessage::parse_part("metadata", raw).unwrap_or(Value::Null);
                ReplyMetadata {
                    dependencies_met: v.get("dependencies_met").cloned(),
                    status: v.get("status").cloned(),
                }
            }
        }
    }
}

/// `msg_id` of a raw header (or parent header) frame.
pub(super) fn header_msg_id(raw: &[u8]) -> Option<String> {
    rpar_core::msg::msg_id_of(raw)
}
