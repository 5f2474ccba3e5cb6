//! Message routing through the hub: the direct (MUX) relay, the load-balanced task scheduler,
//! the broadcast scheduler and the IOPub relay, with the bookkeeping `queue_status` and the
//! task database need. The schedulers' decisions live in crate `rpar-sched`; this module only
//! moves their actions onto sockets and into records.
//!
//! A request's or reply's buffers are taken out of the message once, as [`SharedBuffers`], and
//! shared by the record, the scheduler and the frames sent ([`send_with`]): big buffers cross
//! the controller without a copy.

use super::pick::{reply_metadata, request_header, request_metadata};
use super::{send_with, Effect, Hub, HubConfig, Sock, HUB_RESUBMIT_IDENT};
use rpar_core::wire::{SharedBuffers, WireMessage};
use rpar_core::Header;
use std::time::Instant;
use tracing::{debug, warn};

impl Hub {
    pub(super) fn engine_id_of(&self, uuid: &[u8]) -> Option<u32> {
        self.engines
            .get(uuid)
            .filter(|e| e.registered)
            .map(|e| e.id)
    }

    // ------------------------------------------------------------------ MUX

    /// Client → engine: `[client_id, engine_uuid, DELIM, …]` arrives on the client side.
    pub(super) fn on_mux_request(
        &mut self,
        mut msg: WireMessage,
        now: Instant,
        out: &mut Vec<Effect>,
    ) {
        if msg.idents.len() < 2 {
            debug!("direct request without a target engine dropped");
            return;
        }
        let buffers = SharedBuffers::new(std::mem::take(&mut msg.buffers));
        let target = &msg.idents[1];
        match (request_header(&msg.header), self.engine_id_of(target)) {
            (Ok(h), Some(eid)) => {
                let engine_uuid = String::from_utf8_lossy(target).into_owned();
                self.ledger
                    .learn_route(Sock::MuxClient, &h.session, &msg.idents[0]);
                self.ledger
                    .mux_pending
                    .entry(eid)
                    .or_default()
                    .insert(h.msg_id.clone());
                self.ledger.pending.insert(h.msg_id.clone());
                self.monitor.submitted(false);
                self.monitor.client_seen(&h.session, now);
                self.records
                    .request(h, &msg, &buffers, "mux", Some(&engine_uuid), None);
            }
            (Err(e), _) => {
                warn!(error = %e, "direct request with a bad header: relayed unrecorded")
            }
            (_, None) => debug!("direct request for an engine that is not registered"),
        }
        msg.idents.swap(0, 1);
        send_with(out, Sock::MuxEngine, msg.into_frames(), buffers);
    }

    /// Engine → client: `[engine_uuid, client_id, DELIM, …]` arrives on the engine side.
    pub(super) fn on_mux_reply(&mut self, mut msg: WireMessage, out: &mut Vec<Effect>) {
        if msg.idents.len() < 2 {
            debug!("direct reply without a client identity dropped");
            return;
        }
        let buffers = SharedBuffers::new(std::mem::take(&mut msg.buffers));
        let mut known = false;
        if let Some(eid) = self.engine_id_of(&msg.idents[0]) {
            match rpar_core::msg::msg_id_of(&msg.parent) {
                Some(mid) => known = self.finished(mid, &msg, &buffers, None, Some(eid), None),
                None => {
                    if let Err(e) = msg.parent_value() {
                        warn!(error = %e, "direct reply with a bad parent header")
                    }
                }
            }
        }
        msg.idents.swap(0, 1);
        if !known {
            self.reroute(Sock::MuxClient, &mut msg);
        }
        send_with(out, Sock::MuxClient, msg.into_frames(), buffers);
    }

    /// A task reply for a task this controller never saw: submitted to a controller that died
    /// and was restarted (`--restore`/`--reuse`) while it ran. Its routing frames
    /// (`[engine, client]`) name the client, so it is relayed and recorded rather than dropped
    /// (ipyparallel drops it and the client waits forever). The scheduler never hears of it.
    fn relay_orphan_task_reply(
        &mut self,
        mid: String,
        mut msg: WireMessage,
        out: &mut Vec<Effect>,
    ) {
        tracing::info!(msg_id = %mid, "reply for a task submitted before a controller restart; relayed to its client");
        msg.idents.swap(0, 1);
        msg.idents.truncate(2);
        let engine = String::from_utf8_lossy(&msg.idents[1]).into_owned();
        let eid = self.engine_id_of(&msg.idents[1]);
        let buffers = SharedBuffers::new(std::mem::take(&mut msg.buffers));
        self.finished(mid, &msg, &buffers, Some(&engine), eid, None);
        self.reroute(Sock::TaskClient, &mut msg);
        send_with(out, Sock::TaskClient, msg.into_frames(), buffers);
    }

    /// A request or task finished with `reply` (its buffers apart), on engine `eid`: recorded,
    /// counted, and forgotten as outstanding (an aborted one counts for no engine). Returns
    /// whether it was outstanding here. `read`: what the record reads of the reply's metadata,
    /// if read already.
    fn finished(
        &mut self,
        msg_id: String,
        reply: &WireMessage,
        buffers: &SharedBuffers,
        engine_uuid: Option<&str>,
        eid: Option<u32>,
        read: Option<[Option<String>; 2]>,
    ) -> bool {
        let outcome = self
            .records
            .result(&msg_id, reply, buffers, engine_uuid, read);
        self.monitor.finished(&msg_id, eid, &outcome);
        let count_on = if outcome.is_aborted() { None } else { eid };
        self.ledger.finished(msg_id, eid, count_on)
    }

    /// A reply for a request this controller never saw (sent before a restart) goes to the
    /// routing id its client session uses now, if the client sent anything on that socket
    /// since: a client without an explicit ZeroMQ identity gets a new one when it reconnects.
    /// Otherwise it keeps the routing frames it carries.
    fn reroute(&self, sock: Sock, msg: &mut WireMessage) {
        let session = rpar_core::msg::parse_fields::<SessionOnly>(&msg.parent).map(|p| p.session);
        if let (Some(route), Some(first)) = (
            session.and_then(|s| self.ledger.route(sock, &s).map(<[u8]>::to_vec)),
            msg.idents.first_mut(),
        ) {
            *first = route;
        }
    }

    // ------------------------------------------------------------------ IOPub

    pub(super) fn on_iopub(&mut self, msg: WireMessage, now: Instant, out: &mut Vec<Effect>) {
        // `status` (two per request, the bulk of IOPub) is only relayed: moved, not copied.
        let topic_is_status = msg.idents.first().is_some_and(|t| t.ends_with(b".status"));
        if topic_is_status {
            out.push(Effect::Send(Sock::IopubClient, msg.into_frames()));
            return;
        }
        // Read what the records need, then relay verbatim.
        let header = Header::parse(&msg.header).ok();
        let record = match header.as_ref().map(|h| h.msg_type.as_str()) {
            Some("stream" | "error" | "execute_input" | "execute_result" | "display_data") => {
                rpar_core::msg::msg_id_of(&msg.parent)
                    .and_then(|mid| msg.content_value().ok().map(|c| (mid, c)))
            }
            _ => None,
        };
        out.push(Effect::Send(Sock::IopubClient, msg.into_frames()));
        let Some(header) = header else {
            return;
        };
        if let Some((mid, content)) = record {
            self.records.iopub(&mid, &header.msg_type, &content);
        } else if header.msg_type == "shutdown_reply" {
            if let Some(id) = self.engine_id_of(header.session.as_bytes()) {
                self.unregister(id, now, out);
            }
        }
    }

    // ------------------------------------------------------------------ tasks

    pub(super) fn on_task_request(
        &mut self,
        mut msg: WireMessage,
        now: Instant,
        out: &mut Vec<Effect>,
    ) {
        let buffers = SharedBuffers::new(std::mem::take(&mut msg.buffers));
        // the scheduler's msg_id, as `msg_id_of` reads it: a non-empty string
        let mut sched_id = None;
        // the metadata read once, for the record and the scheduler
        let mut read = request_metadata(&msg.metadata);
        match request_header(&msg.header) {
            Ok(h) => {
                sched_id = Some((!h.msg_id.is_empty()).then(|| h.msg_id.clone()));
                let resubmission =
                    msg.idents.first().map(Vec::as_slice) == Some(HUB_RESUBMIT_IDENT);
                self.monitor.submitted(resubmission);
                self.ledger.submitted(&h.msg_id);
                if !resubmission {
                    if let Some(client) = msg.idents.first() {
                        self.ledger
                            .learn_route(Sock::TaskClient, &h.session, client);
                    }
                    self.monitor.client_seen(&h.session, now);
                    let label = read.as_mut().map(|r| r.label.take());
                    self.records.request(h, &msg, &buffers, "task", None, label);
                }
            }
            Err(e) => warn!(error = %e, "task with a bad header"),
        }
        let actions = match sched_id {
            Some(id) => {
                let md = read.map(|r| r.sched);
                self.tasks.task.submit_shared_as(msg, buffers, id, md, now)
            }
            None => self.tasks.task.submit_shared(msg, buffers, now),
        };
        self.apply_task_actions(actions, out, None);
    }

    pub(super) fn on_task_reply(&mut self, msg: WireMessage, now: Instant, out: &mut Vec<Effect>) {
        let parent_id = rpar_core::msg::msg_id_of(&msg.parent);
        if let Some(mid) = &parent_id {
            if msg.idents.len() >= 2 && !self.ledger.pending.contains(mid) {
                if self.ledger.is_completed(mid) {
                    debug!(msg_id = %mid, "second reply for a finished task; dropped");
                } else {
                    self.relay_orphan_task_reply(mid.clone(), msg, out);
                }
                return;
            }
        }
        // the reply's metadata read once, for the scheduler and the record
        let (md, pre) = match reply_metadata(&msg.metadata) {
            Some(read) => (
                Some(read.sched),
                parent_id.clone().map(|m| (m, read.record)),
            ),
            None => (None, None),
        };
        let actions = self.tasks.task.on_engine_reply_to(msg, parent_id, md, now);
        self.apply_task_actions(actions, out, pre);
    }

    pub(super) fn tick_tasks(&mut self, now: Instant, out: &mut Vec<Effect>) {
        let a = self.tasks.task.tick(now);
        self.apply_task_actions(a, out, None);
        let b = self.tasks.bcast.tick(now);
        self.apply_bcast_actions(b, out);
    }

    pub(super) fn tasks_engine_added(
        &mut self,
        uuid: &[u8],
        id: u32,
        now: Instant,
        out: &mut Vec<Effect>,
    ) {
        let a = self.tasks.task.add_engine(uuid, id, now);
        self.apply_task_actions(a, out, None);
        let b = self.tasks.bcast.add_engine(uuid, id, now);
        self.apply_bcast_actions(b, out);
    }

    pub(super) fn tasks_engine_removed(
        &mut self,
        uuid: &[u8],
        now: Instant,
        out: &mut Vec<Effect>,
    ) {
        let a = self.tasks.task.remove_engine(uuid, now);
        self.apply_task_actions(a, out, None);
        let b = self.tasks.bcast.remove_engine(uuid, now);
        self.apply_bcast_actions(b, out);
    }

    /// Carry out the scheduler's actions. `pre`: what the record reads of the metadata of the
    /// reply to task `.0`, read already (used if that task finishes here).
    fn apply_task_actions(
        &mut self,
        actions: Vec<rpar_sched::TaskAction>,
        out: &mut Vec<Effect>,
        mut pre: Option<(String, [Option<String>; 2])>,
    ) {
        use rpar_sched::TaskAction as A;
        for a in actions {
            match a {
                A::ToEngine(frames) => out.push(Effect::Send(Sock::TaskEngine, frames)),
                A::ToEngineShared(frames, buffers) => {
                    send_with(out, Sock::TaskEngine, frames, buffers)
                }
                A::Assigned {
                    msg_id,
                    engine_uuid,
                } => {
                    let eid = self.engine_id_of(&engine_uuid);
                    self.ledger.assigned(&msg_id, eid);
                    self.records
                        .assigned(&msg_id, &String::from_utf8_lossy(&engine_uuid));
                }
                A::Finished {
                    msg_id,
                    engine_uuid,
                    mut reply,
                } => {
                    let eid = engine_uuid
                        .as_deref()
                        .and_then(|u| self.engines.get(u).map(|e| e.id));
                    let eu = engine_uuid
                        .as_deref()
                        .map(|u| String::from_utf8_lossy(u).into_owned());
                    let buffers = SharedBuffers::new(std::mem::take(&mut reply.buffers));
                    // the engine's reply itself (the scheduler's own replies, such as a
                    // failure to place the task again, name no engine)
                    let read = pre
                        .take_if(|(m, _)| *m == msg_id && engine_uuid.is_some())
                        .map(|(_, r)| r);
                    let known = self.finished(msg_id, &reply, &buffers, eu.as_deref(), eid, read);
                    if reply.idents.first().map(Vec::as_slice) != Some(HUB_RESUBMIT_IDENT) {
                        if !known {
                            self.reroute(Sock::TaskClient, &mut reply);
                        }
                        send_with(out, Sock::TaskClient, reply.into_frames(), buffers);
                    }
                }
            }
        }
    }

    // ------------------------------------------------------------------ broadcast

    pub(super) fn on_bcast_request(
        &mut self,
        msg: WireMessage,
        now: Instant,
        out: &mut Vec<Effect>,
    ) {
        let actions = self.tasks.bcast.submit(msg, now);
        self.apply_bcast_actions(actions, out);
    }

    pub(super) fn on_bcast_reply(&mut self, msg: WireMessage, now: Instant, out: &mut Vec<Effect>) {
        let actions = self.tasks.bcast.on_engine_reply(msg, now);
        self.apply_bcast_actions(actions, out);
    }

    fn apply_bcast_actions(
        &mut self,
        actions: Vec<rpar_sched::BroadcastAction>,
        out: &mut Vec<Effect>,
    ) {
        use rpar_sched::BroadcastAction as B;
        for a in actions {
            match a {
                B::ToEngine(frames) => out.push(Effect::Send(Sock::BcastEngine, frames)),
                B::ToEngineShared(frames, buffers) => {
                    send_with(out, Sock::BcastEngine, frames, buffers)
                }
                B::ToClient(frames) => out.push(Effect::Send(Sock::BcastClient, frames)),
            }
        }
    }
}

/// The two schedulers, built from the hub's configuration.
pub struct TaskRouting {
    pub task: rpar_sched::TaskScheduler,
    pub bcast: rpar_sched::BroadcastScheduler,
}

impl TaskRouting {
    pub fn new(cfg: &HubConfig, key: &[u8], _now: Instant) -> TaskRouting {
        let scheme = cfg.scheme.parse::<rpar_sched::Scheme>().unwrap_or_default();
        let tc = rpar_sched::TaskConfig {
            scheme,
            hwm: cfg.hwm.min(u32::MAX as u64) as u32,
            engine_death_grace: cfg.engine_death_grace,
            ..Default::default()
        };
        let bc = rpar_sched::BroadcastConfig {
            engine_death_grace: Some(cfg.engine_death_grace),
        };
        let mut task = rpar_sched::TaskScheduler::new(
            tc,
            rpar_core::MessageBuilder::new(),
            rpar_core::Signer::new(key),
        );
        task.share_buffers(true);
        let mut bcast = rpar_sched::BroadcastScheduler::new(
            bc,
            rpar_core::MessageBuilder::new(),
            rpar_core::Signer::new(key),
        );
        bcast.share_buffers(true);
        TaskRouting { task, bcast }
    }

    pub fn next_deadline(&self) -> Option<Instant> {
        match (self.task.next_deadline(), self.bcast.next_deadline()) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }
}

/// The one parent-header field [`Hub::reroute`] reads.
#[derive(serde::Deserialize)]
struct SessionOnly {
    session: String,
}
