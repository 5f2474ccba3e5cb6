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
mod lifecycle;
mod monitor;
mod native;
mod parked;
mod pick;
mod queries;
mod records;
mod registration;
mod revive;
mod routing;

pub use dask::{DaskAction, DaskInfo};
pub use heart::Heart;
pub use monitor::SOCKETS;
pub use parked::Parked;
pub use records::Db;

use foldhash::{HashMap, HashMapExt};
use rpar_core::connection::EngineInfo;
use rpar_core::wire::{buffers_len, Frames, Limits, SharedBuffers, Signer, WireMessage};
use rpar_core::MessageBuilder;
use serde_json::{json, Value};
use std::collections::{BTreeMap, VecDeque};
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
                    frames.extend(std::sync::Arc::unwrap_or_clone(b));
                }
            }
            e => out.push(e),
        }
    }
    out
}

/// Send `frames` followed by `buffers`: big ones shared ([`Effect::Trailer`]), small ones moved
/// in when nothing else holds them, shared too otherwise (a task's request, which its scheduler
/// keeps: the I/O layer copies small frames straight into ZeroMQ's messages, with no copy of
/// our own first).
pub(crate) fn send_with(
    out: &mut Vec<Effect>,
    sock: Sock,
    mut frames: Frames,
    buffers: SharedBuffers,
) {
    if !buffers.is_empty()
        && (std::sync::Arc::strong_count(&buffers) > 1 || buffers_len(&buffers) >= SHARE_MIN)
    {
        out.push(Effect::Send(sock, frames));
        out.push(Effect::Trailer(buffers));
        return;
    }
    frames.extend(std::sync::Arc::unwrap_or_clone(buffers));
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

    /// Handle one message that arrived on `sock`. Every `Send` is a whole message (so nothing
    /// else holds the big buffers any more: they go into their records at once).
    pub fn on_message(&mut self, sock: Sock, frames: Frames, now: Instant) -> Vec<Effect> {
        let mut out = Vec::new();
        self.on_message_into(sock, frames, now, &mut out);
        let out = fold_trailers(out);
        self.records.settle(false);
        out
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
        let out = fold_trailers(self.tick_shared(now));
        self.records.settle(false);
        out
    }

    /// [`Hub::tick`], big buffers as [`Effect::Trailer`]s (the server's loop).
    pub fn tick_shared(&mut self, now: Instant) -> Vec<Effect> {
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
