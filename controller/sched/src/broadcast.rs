//! The broadcast scheduler (BroadcastView), sans I/O: one flat scheduler.
//!
//! ipyparallel builds a binary tree of schedulers only to spread fan-out over processes; with one
//! Rust process a single node does the same job. Socket pattern (owned by the hub's loop): a
//! client-facing ROUTER and one engine-facing ROUTER (the engine file may list it once per leaf
//! port the hub binds; engines reply on whichever they used, all with the same frames).
//!
//! * Request from the client: `[client_id, DELIM, …]`, metadata
//!   `{"targets": [[uuid, id], …], "is_broadcast": true, "is_coalescing": bool}`.
//!   A target listed twice is served once (as ipyparallel's leaf scheduler, which keys replies by
//!   engine); the work per request is linear in the number of targets.
//! * To each target: `[uuid, client_id, DELIM, …]` with a derived request: the client's header
//!   with only `msg_id` changed to `"<orig>_<uuid>"` (session, date… kept: the client filters
//!   IOPub by `parent_header.session`), metadata with `targets = [[uuid, id]]` and
//!   `original_msg_id = orig` (kept if already present), content and buffers unchanged,
//!   signed anew.
//! * Engine replies arrive as `[uuid, client_id, DELIM, …]`.
//!   Non-coalescing: relayed unchanged as `[client_id, DELIM, …]` (the client keys them by
//!   `parent_header.msg_id`, the derived id). Coalescing: once every target answered, one reply
//!   `[client_id, DELIM, …]` built from the last reply's header, parent and content, with
//!   `metadata.broadcast_targets = [[uuid, id], …]` (all targets, request order) and the buffers
//!   of all replies concatenated in that same order; re-signed. The client deserializes the
//!   buffers one object after another and pairs them with `broadcast_targets`.
//!
//! Better than ipyparallel (which waits forever):
//! * a target that is not a live registered engine gets an `EngineError` reply at once;
//! * an engine removed with broadcast work outstanding gets, after `engine_death_grace`, an
//!   `EngineError` reply for each of its unanswered targets (`None`: only forget them, leaving it
//!   to the client's own unregistration handling; see [`BroadcastConfig`]);
//! * coalescing: if some reply is an error, the coalesced reply carries the last *error* reply's
//!   content rather than the last reply's, so an error is never hidden behind a shorter list.

mod replies;

use crate::errors::SchedFailure;
use rpar_core::wire::{Frames, SharedBuffers, Signer, WireMessage};
use rpar_core::MessageBuilder;
use serde_json::{json, Map, Value};
use std::collections::{BTreeSet, HashMap};
use std::time::{Duration, Instant};
use tracing::{debug, info, warn};

/// Broadcast scheduler settings.
#[derive(Debug, Clone)]
pub struct BroadcastConfig {
    /// After an engine is removed, how long to wait for late replies before answering its
    /// outstanding targets with `EngineError`. `None`: never synthesize (ipyparallel's behaviour;
    /// the client then relies on its own unregistration handling). The client also fakes an
    /// `EngineError` itself on `unregistration_notification`; when it did, it prints
    /// "got stale result" for ours, which is harmless.
    pub engine_death_grace: Option<Duration>,
}

impl Default for BroadcastConfig {
    fn default() -> Self {
        BroadcastConfig {
            engine_death_grace: Some(Duration::from_secs(5)),
        }
    }
}

/// What the hub must do after a call.
#[derive(Debug)]
pub enum BroadcastAction {
    /// Send on the engine-facing ROUTER: `[engine_uuid, client_id, DELIM, …derived request…]`.
    ToEngine(Frames),
    /// As `ToEngine`, the frames up to the content followed by the request's buffers, shared by
    /// every target (not copied): only with [`BroadcastScheduler::share_buffers`] on.
    ToEngineShared(Frames, SharedBuffers),
    /// Send on the client-facing ROUTER: `[client_id, DELIM, …reply…]`.
    ToClient(Frames),
}

#[derive(Debug)]
struct Target {
    uuid: String,
    /// The id as the client sent it (normally an integer), echoed back in `broadcast_targets`.
    id: Value,
    derived: String,
    /// Derived request header, kept to parent synthesized replies.
    header: Vec<u8>,
    done: bool,
}

#[derive(Debug)]
struct Bcast {
    client: Vec<u8>,
    coalescing: bool,
    targets: Vec<Target>,
    /// Coalescing only: the replies, by target index.
    replies: Vec<Option<WireMessage>>,
    remaining: usize,
    last: Option<usize>,
    last_error: Option<usize>,
}

#[derive(Debug)]
struct BEngine {
    id: u32,
    alive: bool,
    /// derived msg_id -> original msg_id
    outstanding: HashMap<String, String>,
}

/// Sans-I/O broadcast scheduler.
pub struct BroadcastScheduler {
    cfg: BroadcastConfig,
    builder: MessageBuilder,
    signer: Signer,
    engines: HashMap<Vec<u8>, BEngine>,
    requests: HashMap<String, Bcast>,
    /// derived msg_id -> (original msg_id, target index)
    derived: HashMap<String, (String, usize)>,
    stranded: BTreeSet<(Instant, Vec<u8>)>,
    /// Targets share the request's buffers ([`BroadcastAction::ToEngineShared`]).
    share_buffers: bool,
}

impl std::fmt::Debug for BroadcastScheduler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BroadcastScheduler")
            .field("engines", &self.engines.len())
            .field("requests", &self.requests.len())
            .finish()
    }
}

impl BroadcastScheduler {
    pub fn new(cfg: BroadcastConfig, builder: MessageBuilder, signer: Signer) -> Self {
        BroadcastScheduler {
            cfg,
            builder,
            signer,
            engines: HashMap::new(),
            requests: HashMap::new(),
            derived: HashMap::new(),
            stranded: BTreeSet::new(),
            share_buffers: false,
        }
    }

    /// Lend the request's buffers to every target ([`BroadcastAction::ToEngineShared`])
    /// instead of copying them for each (off by default).
    pub fn share_buffers(&mut self, on: bool) {
        self.share_buffers = on;
    }

    /// Broadcasts not yet fully answered.
    pub fn in_flight(&self) -> usize {
        self.requests.len()
    }

    /// Targets sent to this engine and not answered.
    pub fn outstanding_on(&self, uuid: &[u8]) -> usize {
        self.engines.get(uuid).map_or(0, |e| e.outstanding.len())
    }

    pub fn next_deadline(&self) -> Option<Instant> {
        self.stranded.first().map(|x| x.0)
    }

    pub fn add_engine(&mut self, uuid: &[u8], id: u32, _now: Instant) -> Vec<BroadcastAction> {
        let e = self
            .engines
            .entry(uuid.to_vec())
            .or_insert_with(|| BEngine {
                id,
                alive: true,
                outstanding: HashMap::new(),
            });
        e.id = id;
        e.alive = true;
        Vec::new()
    }

    pub fn remove_engine(&mut self, uuid: &[u8], now: Instant) -> Vec<BroadcastAction> {
        let mut out = Vec::new();
        let Some(e) = self.engines.get_mut(uuid) else {
            return out;
        };
        e.alive = false;
        if e.outstanding.is_empty() {
            self.engines.remove(uuid);
            return out;
        }
        match self.cfg.engine_death_grace {
            Some(g) if g.is_zero() => self.strand(uuid, &mut out),
            Some(g) => {
                self.stranded.insert((now + g, uuid.to_vec()));
            }
            None => {
                // Forget its targets (the client's unregistration handling answers them).
                let lost: Vec<(String, String)> = e.outstanding.drain().collect();
                self.engines.remove(uuid);
                for (derived, _) in lost {
                    if let Some((orig, i)) = self.derived.get(&derived).cloned() {
                        self.forget(&orig, i);
                    }
                }
            }
        }
        out
    }

    pub fn tick(&mut self, now: Instant) -> Vec<BroadcastAction> {
        let mut out = Vec::new();
        while let Some((t, _)) = self.stranded.first() {
            if *t > now {
                break;
            }
            let Some((_, uuid)) = self.stranded.pop_first() else {
                break;
            };
            self.strand(&uuid, &mut out);
        }
        out
    }

    /// Answer every outstanding target of a dead engine with `EngineError`.
    fn strand(&mut self, uuid: &[u8], out: &mut Vec<BroadcastAction>) {
        let Some(e) = self.engines.get(uuid) else {
            return;
        };
        if e.alive {
            return;
        }
        let id = e.id;
        let mut lost: Vec<(String, String)> = e
            .outstanding
            .iter()
            .map(|(d, o)| (d.clone(), o.clone()))
            .collect();
        lost.sort();
        for (derived, _) in lost {
            let Some((orig, i)) = self.derived.get(&derived).cloned() else {
                continue;
            };
            let why = SchedFailure::EngineError(format!(
                "Engine {id} died while running task '{derived}'"
            ));
            if let Some(reply) = self.synth(&orig, i, &why) {
                info!(%derived, engine = id, "broadcast target lost with its engine");
                self.deliver(&orig, i, reply, out);
            }
        }
        self.engines.remove(uuid);
    }

    /// Drop target `i` without replying. A coalescing request can then never be answered
    /// (the client wants one reply for all), so it is dropped entirely.
    fn forget(&mut self, orig: &str, i: usize) {
        let Some(b) = self.requests.get_mut(orig) else {
            return;
        };
        if b.coalescing {
            if let Some(b) = self.requests.remove(orig) {
                for t in b.targets.iter().filter(|t| !t.done) {
                    self.derived.remove(&t.derived);
                    if let Some(e) = self.engines.get_mut(t.uuid.as_bytes()) {
                        e.outstanding.remove(&t.derived);
                    }
                }
            }
            return;
        }
        if let Some(t) = b.targets.get_mut(i) {
            if !t.done {
                t.done = true;
                self.derived.remove(&t.derived);
                b.remaining -= 1;
            }
        }
        if b.remaining == 0 {
            self.requests.remove(orig);
        }
    }

    /// A scheduler-made error reply for target `i` of broadcast `orig`.
    fn synth(&self, orig: &str, i: usize, why: &SchedFailure) -> Option<WireMessage> {
        let b = self.requests.get(orig)?;
        let t = b.targets.get(i)?;
        let md = json!({
            "status": "error",
            "engine": t.uuid,
            "dependencies_met": true,
            "is_broadcast": true,
            "is_coalescing": b.coalescing,
            "original_msg_id": orig,
            "date": rpar_core::ids::now_iso(),
        });
        Some(self.builder.build(
            &self.signer,
            vec![t.uuid.as_bytes().to_vec(), b.client.clone()],
            "apply_reply",
            &t.header,
            &md,
            &why.content(),
            Vec::new(),
        ))
    }

    /// A BroadcastView request as received: `msg.idents == [client_id]`.
    pub fn submit(&mut self, msg: WireMessage, _now: Instant) -> Vec<BroadcastAction> {
        let mut out = Vec::new();
        let Some(client) = msg.idents.first().cloned() else {
            warn!("broadcast request without a client routing id; dropped");
            return out;
        };
        let header = match WireMessage::parse_part("header", &msg.header) {
            Ok(Value::Object(h)) => h,
            _ => {
                warn!("broadcast request with an unreadable header; dropped");
                return out;
            }
        };
        let Some(orig) = header
            .get("msg_id")
            .and_then(Value::as_str)
            .map(str::to_string)
        else {
            warn!("broadcast request without header.msg_id; dropped");
            return out;
        };
        let mut md = match WireMessage::parse_part("metadata", &msg.metadata) {
            Ok(Value::Object(m)) => m,
            _ => {
                self.refuse(&msg, client, "metadata is not a dict", &mut out);
                return out;
            }
        };
        // taken out: each derived request carries only its own target, and copying the whole
        // list into every one of them cost O(n²) for n targets
        let targets = match parse_targets(md.remove("targets").as_ref()) {
            Ok(t) => dedup_targets(t),
            Err(why) => {
                self.refuse(&msg, client, &why, &mut out);
                return out;
            }
        };
        let coalescing = md
            .get("is_coalescing")
            .and_then(Value::as_bool)
            .unwrap_or(false);
        let original_id = match md.get("original_msg_id") {
            Some(Value::String(s)) if !s.is_empty() => s.clone(),
            _ => orig.clone(),
        };
        if self.requests.contains_key(&original_id) {
            warn!(msg_id = %original_id, "duplicate broadcast msg_id; dropped");
            return out;
        }
        if targets.is_empty() {
            // nothing to wait for (and a coalesced reply needs at least one target)
            debug!(msg_id = %original_id, "broadcast with no targets");
            return out;
        }
        let n = targets.len();
        let mut bc = Bcast {
            client: client.clone(),
            coalescing,
            targets: Vec::with_capacity(n),
            replies: Vec::new(),
            remaining: n,
            last: None,
            last_error: None,
        };
        if coalescing {
            bc.replies.resize_with(n, || None);
        }
        let WireMessage {
            parent,
            content,
            mut buffers,
            ..
        } = msg;
        let shared = (self.share_buffers && !buffers.is_empty())
            .then(|| SharedBuffers::new(std::mem::take(&mut buffers)));
        let mut unknown = Vec::new();
        for (i, (uuid, id)) in targets.into_iter().enumerate() {
            let derived = format!("{original_id}_{uuid}");
            let mut h = header.clone();
            h.insert("msg_id".into(), Value::String(derived.clone()));
            let hbytes = serde_json::to_vec(&h).unwrap_or_default();
            let mut m = md.clone();
            m.insert("targets".into(), json!([[uuid, id]]));
            m.insert("original_msg_id".into(), Value::String(original_id.clone()));
            let mut req = WireMessage {
                idents: vec![uuid.as_bytes().to_vec(), client.clone()],
                signature: Vec::new(),
                header: hbytes.clone(),
                parent: parent.clone(),
                metadata: serde_json::to_vec(&Value::Object(m)).unwrap_or_default(),
                content: content.clone(),
                buffers: if i + 1 == n {
                    std::mem::take(&mut buffers)
                } else {
                    buffers.clone()
                },
            };
            self.signer.sign_message(&mut req);
            let live = self.engines.get_mut(uuid.as_bytes()).filter(|e| e.alive);
            match live {
                Some(e) => {
                    e.outstanding.insert(derived.clone(), original_id.clone());
                    out.push(match &shared {
                        Some(b) => BroadcastAction::ToEngineShared(req.into_frames(), b.clone()),
                        None => BroadcastAction::ToEngine(req.into_frames()),
                    });
                }
                None => unknown.push(i),
            }
            self.derived
                .insert(derived.clone(), (original_id.clone(), i));
            bc.targets.push(Target {
                uuid,
                id,
                derived,
                header: hbytes,
                done: false,
            });
        }
        self.requests.insert(original_id.clone(), bc);
        for i in unknown {
            let Some(t) = self
                .requests
                .get(&original_id)
                .and_then(|b| b.targets.get(i))
            else {
                continue;
            };
            let why = SchedFailure::EngineError(format!(
                "Engine {} ({}) is not a registered engine; task '{}' was not sent",
                t.id, t.uuid, t.derived
            ));
            info!(derived = %t.derived, "broadcast target is not a live engine");
            if let Some(reply) = self.synth(&original_id, i, &why) {
                self.deliver(&original_id, i, reply, &mut out);
            }
        }
        out
    }

    /// Answer a request we cannot fan out (bad metadata) with one error reply to its msg_id.
    fn refuse(
        &self,
        msg: &WireMessage,
        client: Vec<u8>,
        why: &str,
        out: &mut Vec<BroadcastAction>,
    ) {
        warn!("broadcast request refused: {why}");
        let f = SchedFailure::BadMetadata(crate::errors::MetadataError::Invalid {
            key: "targets",
            why: why.to_string(),
        });
        let m = self.builder.build(
            &self.signer,
            vec![client],
            "apply_reply",
            &msg.header,
            &json!({}),
            &f.content(),
            Vec::new(),
        );
        out.push(BroadcastAction::ToClient(m.into_frames()));
    }
}

/// The targets with each engine once, in first-seen order. ipyparallel's leaf scheduler keys a
/// broadcast's replies by engine, so `targets=[0, 0]` runs once there and coalesces to one
/// result (`[8]` for `pow(2, 3)`); sending the same derived request twice would make the engine
/// drop the second as a replay and the broadcast would never complete.
fn dedup_targets(targets: Vec<(String, Value)>) -> Vec<(String, Value)> {
    let mut seen = std::collections::HashSet::with_capacity(targets.len());
    let n = targets.len();
    let out: Vec<(String, Value)> = targets
        .into_iter()
        .filter(|(u, _)| seen.insert(u.clone()))
        .collect();
    if out.len() < n {
        debug!(
            targets = n,
            distinct = out.len(),
            "broadcast to repeated targets: each engine once"
        );
    }
    out
}

/// `[[uuid, id], …]` (an id may be anything; it is echoed back). A bare uuid string is accepted.
fn parse_targets(v: Option<&Value>) -> Result<Vec<(String, Value)>, String> {
    let Some(Value::Array(items)) = v else {
        return Err("metadata `targets` must be a list of [uuid, id] pairs".into());
    };
    let mut out = Vec::with_capacity(items.len());
    for it in items {
        match it {
            Value::Array(pair) if !pair.is_empty() => match &pair[0] {
                Value::String(u) => {
                    out.push((u.clone(), pair.get(1).cloned().unwrap_or(Value::Null)))
                }
                _ => return Err("a broadcast target's uuid must be a string".into()),
            },
            Value::String(u) => out.push((u.clone(), Value::Null)),
            _ => return Err("metadata `targets` must be a list of [uuid, id] pairs".into()),
        }
    }
    Ok(out)
}
