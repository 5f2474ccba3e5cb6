//! The controller's sans-I/O core: one state struct fed with `(socket, frames)` events and clock
//! ticks, answering with the frames to send. No sockets here, so every routing, registration,
//! heartbeat and query rule is a plain unit test.
//!
//! Socket pattern (all bound by the controller; clients and engines connect):
//! * `Registration` ROUTER: engine registration/unregistration and every client hub query.
//! * `Notification` PUB: (un)registration and shutdown notifications.
//! * `HbPing` PUB / `HbPong` ROUTER: heartbeats.
//! * `MuxClient`/`MuxEngine`, `ControlClient`/`ControlEngine`: ROUTER↔ROUTER relays that swap the
//!   first two identity frames; engine-facing sockets carry distinct routing ids (`mux_out`,
//!   `control_out`, `task_out`, `bcast_out`) because an engine's one shell ROUTER talks to several.
//! * `TaskClient`/`TaskEngine`: the load-balanced scheduler (crate `rpar-sched`).
//! * `BcastClient`/`BcastEngine`: the broadcast scheduler.
//! * `IopubEngine` SUB → `IopubClient` PUB: output relayed verbatim and recorded per task.
//!
//! Every incoming message is size-checked and HMAC-verified (with replay protection) before it
//! is acted on; anything malformed is logged and dropped, never a panic.

mod dask;
mod heart;
mod ledger;
mod monitor;
mod native;
mod parked;
mod queries;
mod records;
mod revive;
mod routing;

pub use dask::{DaskAction, DaskInfo};
pub use heart::Heart;
pub use monitor::SOCKETS;
pub use parked::Parked;
pub use records::Db;

use rpar_core::connection::EngineInfo;
use rpar_core::wire::{buffers_len, Frames, Limits, SharedBuffers, Signer, WireMessage};
use rpar_core::MessageBuilder;
use serde_json::{json, Value};
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::time::{Duration, Instant};
use tracing::{debug, info, warn};

/// The controller's sockets, by role.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Sock {
    Registration,
    Notification,
    HbPing,
    HbPong,
    MuxClient,
    MuxEngine,
    ControlClient,
    ControlEngine,
    TaskClient,
    TaskEngine,
    BcastClient,
    BcastEngine,
    IopubEngine,
    IopubClient,
    /// The native ROUTER: one connection per MPI job ([`native`]).
    Native,
}

/// What the core asks the I/O layer to do.
#[derive(Debug)]
pub enum Effect {
    /// Send these frames on that socket.
    Send(Sock, Frames),
    /// The last frames of the `Send` just before it: big buffers shared with their task record
    /// (and, for a task, with its scheduler), which the I/O layer hands to ZeroMQ without
    /// copying. Only [`Hub::on_message_into`] and [`Hub::tick_shared`] give it;
    /// [`Hub::on_message`] and [`Hub::tick`] fold it into its `Send` ([`fold_trailers`]).
    Trailer(SharedBuffers),
    /// The engine-state file (`log/engines<cluster_id>.json`) is out of date: rewrite it with
    /// [`Hub::engine_state`] (once per batch of effects, not once per engine).
    SaveEngines,
}

/// Buffers from this many bytes on travel shared ([`Effect::Trailer`]) rather than copied.
pub(crate) const SHARE_MIN: usize = 64 << 10;

/// Fold every [`Effect::Trailer`] into the `Send` before it (copying the buffers, unless
/// nothing else holds them), so that each `Send` is a whole message.
pub fn fold_trailers(effects: Vec<Effect>) -> Vec<Effect> {
    if !effects.iter().any(|e| matches!(e, Effect::Trailer(_))) {
        return effects;
    }
    let mut out: Vec<Effect> = Vec::with_capacity(effects.len());
    for e in effects {
        match e {
            Effect::Trailer(b) => {
                if let Some(Effect::Send(_, frames)) = out.last_mut() {
                    frames.extend(std::sync::Arc::try_unwrap(b).unwrap_or_else(|b| (*b).clone()));
                }
            }
            e => out.push(e),
        }
    }
    out
}

/// Send `frames` followed by `buffers`: big ones shared ([`Effect::Trailer`]), small ones moved
/// in (copied only if someone else still holds them).
pub(crate) fn send_with(
    out: &mut Vec<Effect>,
    sock: Sock,
    mut frames: Frames,
    buffers: SharedBuffers,
) {
    if !buffers.is_empty() && buffers_len(&buffers) >= SHARE_MIN {
        out.push(Effect::Send(sock, frames));
        out.push(Effect::Trailer(buffers));
        return;
    }
    frames.extend(std::sync::Arc::try_unwrap(buffers).unwrap_or_else(|b| (*b).clone()));
    out.push(Effect::Send(sock, frames));
}

/// Static facts the hub needs.
#[derive(Debug, Clone)]
pub struct HubConfig {
    pub hb_period: Duration,
    pub max_heartbeat_misses: u32,
    pub registration_timeout: Duration,
    /// The engine connection info (registration replies carry it, without key).
    pub engine_info: EngineInfo,
    pub scheme: String,
    pub hwm: u64,
    /// How long after an engine is unregistered its tasks (load-balanced, broadcast and
    /// direct) fail with EngineError. The controller passes zero: the hub unregisters an engine
    /// only once it is known dead (its heart stopped, its rank 0 reported it, or it said
    /// goodbye), so there are no late replies worth waiting for.
    pub engine_death_grace: Duration,
}

/// One engine, pending or registered.
#[derive(Debug, Clone)]
pub struct Engine {
    pub id: u32,
    pub uuid: String,
    pub registered: bool,
    /// A pending engine whose heart has answered (it waits only for lower ids, briefly).
    pub heart_seen: bool,
    pub since: Instant,
}

/// Counters for the benchmark and the logs.
#[derive(Debug, Default, Clone)]
pub struct Stats {
    pub dropped: u64,
}

pub struct Hub {
    cfg: HubConfig,
    signer: Signer,
    builder: MessageBuilder,
    limits: Limits,
    heart: Heart,
    /// Pending and registered engines by uuid bytes.
    engines: HashMap<Vec<u8>, Engine>,
    /// Registered and pending ids.
    ids: BTreeMap<u32, Vec<u8>>,
    /// Registrations waiting for their first heartbeat, by id (a subset of `ids`).
    pending_regs: BTreeMap<u32, Vec<u8>>,
    /// The id counter (a `u64`, so that a requested `u32::MAX` cannot overflow it; ids above
    /// `u32::MAX` are never granted).
    next_id: u64,
    /// The msg-id bookkeeping: outstanding, finished (bounded), client routes.
    ledger: ledger::Ledger,
    /// Direct requests stranded on dead engines, to be failed in the DB after a grace period.
    stranded: Vec<(Instant, String, u32, Vec<String>)>,
    records: records::Records,
    tasks: routing::TaskRouting,
    exit_at: Option<Instant>,
    /// Engines registered in the last [`RENOTIFY_WINDOW`], for [`Hub::on_subscription`].
    recent_regs: VecDeque<(Instant, u32)>,
    /// Counters for the status views ([`Hub::snapshot`]).
    monitor: monitor::Monitor,
    /// `become_dask`'s scheduler.
    dask: dask::Dask,
    native: native::Jobs,
    /// When recent registrations were last published again, and when they are due again
    /// (subscriptions within [`RENOTIFY_GAP`] of a replay share one later replay).
    last_replay: Option<Instant>,
    replay_at: Option<Instant>,
    /// Engines unregistered for a lost heartbeat, registered again if they answer.
    lost: revive::Lost,
    pub stats: Stats,
}

/// The host a dask scheduler listens on by default: the engines' interface (`tcp://10.0.0.5`),
/// or none (distributed's default) when the controller listens on every interface.
fn dask_host(interface: &str) -> Option<String> {
    let host = interface.rsplit("://").next().unwrap_or_default();
    (!matches!(host, "" | "*" | "0.0.0.0" | "::" | "[::]")).then(|| host.to_string())
}

/// An engine id as a peer wrote it: an integer 0..=`u32::MAX`, anything else is no engine's id
/// (ipyparallel answers "No such engine" for it, never a truncated id).
pub(crate) fn engine_id(v: &Value) -> Option<u32> {
    v.as_u64().and_then(|n| u32::try_from(n).ok())
}

/// How far back a new notification subscriber is told of registrations again.
const RENOTIFY_WINDOW: Duration = Duration::from_secs(10);

/// The least time between two such replays, however many subscriptions arrive: each replay goes
/// to every subscriber, so without a bound a stream of subscriptions (junk ones included)
/// multiplied the recent registrations at every subscriber.
const RENOTIFY_GAP: Duration = Duration::from_secs(1);

/// The routing id the hub uses for the resubmissions it feeds into the task scheduler.
pub(crate) const HUB_RESUBMIT_IDENT: &[u8] = b"\x00rpar-hub-resubmit";

impl Hub {
    pub fn new(cfg: HubConfig, key: &[u8], session: String, db: records::Db, now: Instant) -> Hub {
        let builder = MessageBuilder::with_session(session);
        let heart = Heart::new(cfg.hb_period, cfg.max_heartbeat_misses, now);
        let tasks = routing::TaskRouting::new(&cfg, key, now);
        Hub {
            signer: Signer::new(key),
            builder,
            limits: Limits::default(),
            heart,
            engines: HashMap::new(),
            ids: BTreeMap::new(),
            pending_regs: BTreeMap::new(),
            next_id: 0,
            recent_regs: VecDeque::new(),
            native: native::Jobs::new(key, cfg.hb_period, cfg.max_heartbeat_misses, now),
            last_replay: None,
            replay_at: None,
            lost: revive::Lost::default(),
            ledger: ledger::Ledger::default(),
            stranded: Vec::new(),
            records: records::Records::new(db),
            tasks,
            exit_at: None,
            monitor: monitor::Monitor::new(now),
            dask: dask::Dask::new(dask_host(&cfg.engine_info.interface)),
            stats: Stats::default(),
            cfg,
        }
    }

    /// The current heartbeat token (what an engine's heart echoes).
    pub fn heart_token(&self) -> Vec<u8> {
        self.heart.token().to_vec()
    }

    pub fn session(&self) -> &str {
        self.builder.session()
    }

    /// True once a hub shutdown was requested and its grace has passed.
    pub fn should_exit(&self, now: Instant) -> bool {
        self.exit_at.is_some_and(|t| now >= t)
    }

    /// When the loop must call [`Hub::tick`] next.
    pub fn next_deadline(&self) -> Instant {
        let mut t = self.heart.next_deadline();
        if let Some(d) = self.tasks.next_deadline() {
            t = t.min(d);
        }
        if let Some(e) = self.exit_at {
            t = t.min(e);
        }
        if let Some(n) = self.native.next_deadline() {
            t = t.min(n);
        }
        if let Some(r) = self.replay_at {
            t = t.min(r);
        }
        for (at, ..) in &self.stranded {
            t = t.min(*at);
        }
        for e in self
            .pending_regs
            .values()
            .filter_map(|u| self.engines.get(u))
        {
            t = t.min(e.since + self.cfg.registration_timeout);
        }
        t
    }

    /// Split and verify an incoming message; log and drop on any problem.
    fn accept(&mut self, sock: Sock, frames: Frames) -> Option<WireMessage> {
        let msg = match WireMessage::split(frames, &self.limits) {
            Ok(m) => m,
            Err(e) => {
                self.stats.dropped += 1;
                warn!(?sock, error = %e, "dropping malformed message");
                return None;
            }
        };
        if let Err(e) = self.signer.verify(&msg) {
            self.stats.dropped += 1;
            warn!(?sock, error = %e, "dropping message");
            return None;
        }
        Some(msg)
    }

    /// Handle one message that arrived on `sock`. Every `Send` is a whole message.
    pub fn on_message(&mut self, sock: Sock, frames: Frames, now: Instant) -> Vec<Effect> {
        let mut out = Vec::new();
        self.on_message_into(sock, frames, now, &mut out);
        fold_trailers(out)
    }

    /// [`Hub::on_message`], appending the effects to `out` (the server's loop reuses one vector),
    /// big buffers as [`Effect::Trailer`]s.
    pub fn on_message_into(
        &mut self,
        sock: Sock,
        frames: Frames,
        now: Instant,
        out: &mut Vec<Effect>,
    ) {
        self.monitor.received(sock, &frames);
        self.records.settle(false);
        let start = out.len();
        if sock == Sock::Native {
            self.on_native(frames, now, out);
        } else {
            self.dispatch(sock, frames, now, out);
        }
        self.native_shutdown(out);
        self.native_outgoing(start, out);
        self.monitor.sent(&out[start..]);
    }

    /// Act on one message read on `sock` (a native job's engine traffic comes here too).
    fn dispatch(&mut self, sock: Sock, frames: Frames, now: Instant, out: &mut Vec<Effect>) {
        if sock == Sock::HbPong {
            self.on_pong(frames, now, out);
            return;
        }
        if sock == Sock::Notification {
            self.on_subscription(&frames, now, out);
            return;
        }
        let Some(msg) = self.accept(sock, frames) else {
            return;
        };
        match sock {
            Sock::Registration => self.on_registration_socket(msg, now, out),
            Sock::MuxClient => self.on_mux_request(msg, now, out),
            Sock::MuxEngine => self.on_mux_reply(msg, out),
            Sock::ControlClient => Self::swap_relay(msg, Sock::ControlEngine, out),
            Sock::ControlEngine => Self::swap_relay(msg, Sock::ControlClient, out),
            Sock::TaskClient => self.on_task_request(msg, now, out),
            Sock::TaskEngine => self.on_task_reply(msg, now, out),
            Sock::BcastClient => self.on_bcast_request(msg, now, out),
            Sock::BcastEngine => self.on_bcast_reply(msg, now, out),
            Sock::IopubEngine => self.on_iopub(msg, now, out),
            Sock::Notification | Sock::HbPing | Sock::IopubClient | Sock::HbPong | Sock::Native => {
            }
        }
    }

    /// Clock events: heartbeats, registration stalls, scheduler timers, stranded requests.
    /// Every `Send` is a whole message.
    pub fn tick(&mut self, now: Instant) -> Vec<Effect> {
        fold_trailers(self.tick_shared(now))
    }

    /// [`Hub::tick`], big buffers as [`Effect::Trailer`]s (the server's loop).
    pub fn tick_shared(&mut self, now: Instant) -> Vec<Effect> {
        self.records.settle(false);
        let mut out = Vec::new();
        let (pings, dead) = self.heart.tick(now);
        for p in pings {
            out.push(Effect::Send(Sock::HbPing, vec![p]));
        }
        for uuid in dead {
            self.heartbeat_lost(&uuid, now, &mut out);
        }
        // pending registrations that never sent a heartbeat
        let stale: Vec<Vec<u8>> = self
            .pending_regs
            .values()
            .filter(|u| {
                self.engines
                    .get(*u)
                    .is_some_and(|e| now >= e.since + self.cfg.registration_timeout)
            })
            .cloned()
            .collect();
        for u in stale {
            if let Some(e) = self.drop_engine(&u) {
                warn!(engine = e.id, uuid = %e.uuid, "registration stalled: no heartbeat, dropped");
                self.monitor.dropped_pending(e.id, true);
            }
        }
        self.finish_ready_registrations(now, &mut out);
        self.update_fast_ping(now);
        self.tick_tasks(now, &mut out);
        self.fail_stranded(now);
        self.native_tick(now, &mut out);
        self.native_shutdown(&mut out);
        self.native_outgoing(0, &mut out);
        if self.replay_at.is_some_and(|r| now >= r) {
            self.replay_registrations(now, &mut out);
        }
        self.monitor.sent(&out);
        out
    }

    fn update_fast_ping(&mut self, now: Instant) {
        self.heart.set_pending(!self.pending_regs.is_empty(), now);
    }

    // ------------------------------------------------------------------ registration

    fn on_registration_socket(&mut self, msg: WireMessage, now: Instant, out: &mut Vec<Effect>) {
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

    fn register(
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
    fn take_next_id(&mut self) -> Option<u32> {
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

    fn on_pong(&mut self, frames: Frames, now: Instant, out: &mut Vec<Effect>) {
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
    fn finish_ready_registrations(&mut self, now: Instant, out: &mut Vec<Effect>) {
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

    fn finish_registration(&mut self, uuid: Vec<u8>, now: Instant, out: &mut Vec<Effect>) {
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

    fn prune_recent_regs(&mut self, now: Instant) {
        while self
            .recent_regs
            .front()
            .is_some_and(|(t, _)| now.saturating_duration_since(*t) > RENOTIFY_WINDOW)
        {
            self.recent_regs.pop_front();
        }
    }

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
    fn on_subscription(&mut self, frames: &Frames, now: Instant, out: &mut Vec<Effect>) {
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
    fn replay_registrations(&mut self, now: Instant, out: &mut Vec<Effect>) {
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
    fn drop_engine(&mut self, uuid: &[u8]) -> Option<Engine> {
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

    fn fail_stranded(&mut self, now: Instant) {
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

    // ------------------------------------------------------------------ replies

    /// `registration_reply` goes back without a parent header, as ipyparallel sends it.
    fn registration_reply(&self, req: &WireMessage, content: &Value, out: &mut Vec<Effect>) {
        let r = self.builder.build(
            &self.signer,
            req.idents.clone(),
            "registration_reply",
            b"{}",
            &json!({}),
            content,
            vec![],
        );
        out.push(Effect::Send(Sock::Registration, r.into_frames()));
    }

    /// Publish a notification (no topic frame) to clients.
    fn notify(&self, msg_type: &str, parent: &[u8], content: Value, out: &mut Vec<Effect>) {
        let n = self.builder.build(
            &self.signer,
            vec![],
            msg_type,
            parent,
            &json!({}),
            &content,
            vec![],
        );
        out.push(Effect::Send(Sock::Notification, n.into_frames()));
    }

    /// Reply to a hub query with `parent = request header`.
    fn reply(
        &self,
        req: &WireMessage,
        msg_type: &str,
        content: Value,
        buffers: Vec<Vec<u8>>,
        out: &mut Vec<Effect>,
    ) {
        let r = self.builder.build(
            &self.signer,
            req.idents.clone(),
            msg_type,
            &req.header,
            &json!({}),
            &content,
            buffers,
        );
        out.push(Effect::Send(Sock::Registration, r.into_frames()));
    }

    fn reply_error(
        &self,
        req: &WireMessage,
        msg_type: &str,
        ename: &str,
        evalue: &str,
        out: &mut Vec<Effect>,
    ) {
        self.reply(
            req,
            msg_type,
            crate::errors::wrap(ename, evalue),
            vec![],
            out,
        );
    }

    /// Write the buffers of messages sent since into their task records, where nothing else
    /// holds them any more (ZeroMQ has sent them, the scheduler is done with them): moved, not
    /// copied, after the sends rather than on the routing path. The server calls this once per
    /// wake-up; queries that read records settle everything first.
    pub fn settle_records(&mut self) {
        self.records.settle(false);
    }

    /// Relay that swaps the first two identity frames (ROUTER↔ROUTER).
    fn swap_relay(mut msg: WireMessage, to: Sock, out: &mut Vec<Effect>) {
        if msg.idents.len() < 2 {
            debug!(?to, "relay message without a target identity dropped");
            return;
        }
        msg.idents.swap(0, 1);
        out.push(Effect::Send(to, msg.into_frames()));
    }
}

#[cfg(test)]
mod tests;
