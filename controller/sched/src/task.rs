//! The load-balanced task scheduler (ipyparallel's `TaskScheduler`), sans I/O.
//!
//! Socket pattern (owned by the hub's loop, not by this module): a client-facing ROUTER
//! (`task_in`) and an engine-facing ROUTER (`task_out`). A request arrives as
//! `[client_id, DELIM, …]`; it goes to an engine as `[engine_uuid, client_id, DELIM, …]` with the
//! request bytes unchanged (original signature); the engine replies `[engine_uuid, client_id, DELIM,
//! …]` and the client gets `[client_id, engine_uuid, DELIM, …]`. Replies the scheduler makes itself
//! (dependency errors, timeouts) go to `[client_id, DELIM, …]`, with no engine frame, as Python does.
//!
//! # Data structures (why each event is cheap)
//!
//! * msg_ids are interned to [`TaskSeq`] numbers; finished tasks keep only `(outcome, engine)`,
//!   so `after` checks and per-engine `follow` checks are lookups, not set unions.
//! * A task whose `after` is unmet sits in the dependency graph (`dependents`) only: it is looked
//!   at again when one of its dependencies finishes, never on engine events.
//! * A task that could run but has no engine is queued in exactly one place: the `general` FIFO
//!   (no targets, no follow), or the per-engine-uuid queues of the engines it may run on
//!   (targets and/or follow), or nowhere (`Parked`: a `follow` that cannot be decided until more of
//!   its dependencies finish; the graph wakes it).
//! * When an engine gains a free slot (it registered, or a reply brought it below hwm) only the
//!   heads of `general` (skipping tasks that blacklist it) and of its own queue are looked at.
//!   A `map` of thousands of tasks is therefore O(log n) per event, not a rescan of the queue.
//! * Placing one task looks at its candidate engines (its targets, or every live engine), so it
//!   is O(candidates).
//!
//! The request is kept until the task is final, because a retry or an unmet functional
//! dependency resends the same bytes elsewhere (Python keeps the raw frames for the same reason).
//! Its buffers (the big part) are held once, as [`SharedBuffers`]: with
//! [`TaskScheduler::share_buffers`] on (the controller's setting) a dispatch hands out a
//! reference ([`TaskAction::ToEngineShared`]) and no byte is copied; otherwise each dispatch
//! copies the request once. Replies are moved, never copied.

use crate::deps::{Dependency, Outcome, ParsedDependency, TaskSeq};
use crate::errors::{MetadataError, SchedFailure};
use crate::schemes::Scheme;
use rand::rngs::StdRng;
use rand::SeedableRng;
use rpar_core::wire::{Frames, SharedBuffers, Signer, WireMessage};
use rpar_core::MessageBuilder;
use serde_json::{json, Value};
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet, VecDeque};
use std::time::{Duration, Instant};
use tracing::{debug, info, warn};

/// Task scheduler settings.
#[derive(Debug, Clone)]
pub struct TaskConfig {
    pub scheme: Scheme,
    /// Most outstanding tasks per engine; 0 = unlimited. ipyparallel's default is 1.
    pub hwm: u32,
    /// How long after an engine is removed its unfinished tasks fail with `EngineError`
    /// (late replies still count during this time). ipyparallel: 5 s. Zero: they fail within
    /// the `remove_engine` call (the controller's choice: it removes an engine only once it is
    /// known dead).
    pub engine_death_grace: Duration,
    /// Seed for the random schemes (tests); `None` seeds from the OS.
    pub seed: Option<u64>,
}

impl Default for TaskConfig {
    fn default() -> Self {
        TaskConfig {
            scheme: Scheme::LeastLoad,
            hwm: 1,
            engine_death_grace: Duration::from_secs(5),
            seed: None,
        }
    }
}

/// What the hub must do after a call.
#[derive(Debug)]
pub enum TaskAction {
    /// Send these frames on the engine-facing ROUTER: `[engine_uuid, client_id, DELIM, …]`.
    ToEngine(Frames),
    /// As `ToEngine`, the frames up to the content followed by the request's buffers, which
    /// are shared (not copied): only with [`TaskScheduler::share_buffers`] on.
    ToEngineShared(Frames, SharedBuffers),
    /// The task was sent to this engine (ipyparallel's `tracktask`). Sent on every (re)submission.
    Assigned {
        msg_id: String,
        engine_uuid: Vec<u8>,
    },
    /// The task's final reply (ipyparallel's `outtask`): record it, then send
    /// `reply.into_frames()` on the client-facing ROUTER; `reply.idents` is already the routing
    /// prefix (`[client_id, engine_uuid]` for engine replies and `EngineError`,
    /// `[client_id]` for the scheduler's own errors). Retried failures never appear here.
    Finished {
        msg_id: String,
        engine_uuid: Option<Vec<u8>>,
        reply: WireMessage,
    },
}

/// One engine's line of `queue_status`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EngineLoad {
    pub uuid: Vec<u8>,
    pub id: u32,
    /// Tasks sent to it and not answered.
    pub outstanding: usize,
}

type EngineKey = u64;

#[derive(Debug)]
struct Engine {
    uuid: Vec<u8>,
    id: u32,
    load: u32,
    /// LRU position: smaller = used less recently.
    lru: i64,
    alive: bool,
    pending: BTreeSet<TaskSeq>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Slot {
    General,
    Engines(Vec<Vec<u8>>),
    Parked,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum JobState {
    /// `after` not met yet: only the graph wakes it.
    Waiting,
    Queued(Slot),
    Running(EngineKey),
}

#[derive(Debug)]
struct Job {
    msg_id: String,
    /// The request as received, but for its buffers; `idents[0]` is the client's routing id.
    request: WireMessage,
    /// The request's buffers.
    buffers: SharedBuffers,
    targets: Option<Vec<Vec<u8>>>,
    after: Dependency,
    follow: Dependency,
    timeout: Option<Duration>,
    retries: u32,
    blacklist: HashSet<Vec<u8>>,
    /// An engine reported `dependencies_met: false` for it.
    func_dep_failed: bool,
    state: JobState,
    deadline: Option<Instant>,
    in_graph: bool,
    /// The tasks its `after`/`follow` name (kept in the finished window while it lives).
    refs: Vec<TaskSeq>,
}

#[derive(Debug, Clone, Copy)]
struct Done {
    outcome: Outcome,
    engine: Option<EngineKey>,
}

enum Placement {
    Run(EngineKey),
    Wait(Slot),
    Impossible(String),
}

/// Sans-I/O load-balanced task scheduler. See the crate docs for the call protocol.
pub struct TaskScheduler {
    cfg: TaskConfig,
    builder: MessageBuilder,
    signer: Signer,
    rng: StdRng,
    rr: usize,
    engines: BTreeMap<EngineKey, Engine>,
    by_uuid: HashMap<Vec<u8>, EngineKey>,
    next_engine: EngineKey,
    lru_front: i64,
    lru_back: i64,
    ids: HashMap<String, TaskSeq>,
    next_seq: TaskSeq,
    jobs: HashMap<TaskSeq, Job>,
    done: HashMap<TaskSeq, Done>,
    dependents: HashMap<TaskSeq, Vec<TaskSeq>>,
    general: BTreeSet<TaskSeq>,
    per_engine: HashMap<Vec<u8>, BTreeSet<TaskSeq>>,
    timeouts: BTreeSet<(Instant, TaskSeq)>,
    stranded: BTreeSet<(Instant, EngineKey)>,
    /// Work generated while handling an event: finished tasks whose dependents must be looked at,
    /// engines that may have a free slot, tasks to re-examine. Drained before each call returns
    /// (a worklist rather than recursion, so long dependency chains cannot overflow the stack).
    notify: VecDeque<TaskSeq>,
    capacity: VecDeque<EngineKey>,
    recheck: VecDeque<TaskSeq>,
    /// Finished tasks, oldest first: the window `after`/`follow` can still name.
    finished: VecDeque<(TaskSeq, String)>,
    done_window: usize,
    /// How many live tasks depend on each task.
    dep_refs: HashMap<TaskSeq, u32>,
    /// Finished tasks past the window that a live task still depends on.
    pinned: HashMap<TaskSeq, String>,
    /// Dispatches share the request's buffers ([`TaskAction::ToEngineShared`]).
    share_buffers: bool,
}

/// How many finished tasks `after`/`follow` can still name (older ones are forgotten unless a
/// live task depends on them; naming a forgotten one is an `InvalidDependency`).
pub const DONE_WINDOW: usize = 65_536;

impl std::fmt::Debug for TaskScheduler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TaskScheduler")
            .field("scheme", &self.cfg.scheme)
            .field("hwm", &self.cfg.hwm)
            .field("engines", &self.engines.len())
            .field("tasks", &self.jobs.len())
            .finish()
    }
}

fn lossy(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

impl TaskScheduler {
    /// A scheduler that signs its own messages with `builder` + `signer`.
    pub fn new(cfg: TaskConfig, builder: MessageBuilder, signer: Signer) -> Self {
        let rng = match cfg.seed {
            Some(s) => StdRng::seed_from_u64(s),
            None => StdRng::from_entropy(),
        };
        TaskScheduler {
            cfg,
            builder,
            signer,
            rng,
            rr: 0,
            engines: BTreeMap::new(),
            by_uuid: HashMap::new(),
            next_engine: 0,
            lru_front: 0,
            lru_back: 1,
            ids: HashMap::new(),
            next_seq: 0,
            jobs: HashMap::new(),
            done: HashMap::new(),
            dependents: HashMap::new(),
            general: BTreeSet::new(),
            per_engine: HashMap::new(),
            timeouts: BTreeSet::new(),
            stranded: BTreeSet::new(),
            notify: VecDeque::new(),
            capacity: VecDeque::new(),
            recheck: VecDeque::new(),
            finished: VecDeque::new(),
            done_window: DONE_WINDOW,
            dep_refs: HashMap::new(),
            pinned: HashMap::new(),
            share_buffers: false,
        }
    }

    /// Hand out the requests' buffers by reference ([`TaskAction::ToEngineShared`]) instead of
    /// copying them into each [`TaskAction::ToEngine`] (off by default).
    pub fn share_buffers(&mut self, on: bool) {
        self.share_buffers = on;
    }

    pub fn config(&self) -> &TaskConfig {
        &self.cfg
    }

    // ------------------------------------------------------------------ queries

    /// Tasks received and not yet sent to any engine (waiting on dependencies or for a slot).
    pub fn unassigned(&self) -> usize {
        let running: usize = self.engines.values().map(|e| e.pending.len()).sum();
        self.jobs.len().saturating_sub(running)
    }

    /// Live engines with their outstanding task counts, in registration order.
    pub fn engine_loads(&self) -> Vec<EngineLoad> {
        self.engines
            .values()
            .filter(|e| e.alive)
            .map(|e| EngineLoad {
                uuid: e.uuid.clone(),
                id: e.id,
                outstanding: e.pending.len(),
            })
            .collect()
    }

    /// Outstanding tasks on one engine (live or within its death grace period).
    pub fn outstanding_on(&self, uuid: &[u8]) -> usize {
        if let Some(k) = self.by_uuid.get(uuid) {
            return self.engines.get(k).map_or(0, |e| e.pending.len());
        }
        self.engines
            .values()
            .filter(|e| e.uuid == uuid)
            .map(|e| e.pending.len())
            .sum()
    }

    /// The msg_ids outstanding on an engine, in submission order.
    pub fn outstanding_ids(&self, uuid: &[u8]) -> Vec<String> {
        self.engines
            .values()
            .filter(|e| e.uuid == uuid)
            .flat_map(|e| e.pending.iter())
            .filter_map(|s| self.jobs.get(s).map(|j| j.msg_id.clone()))
            .collect()
    }

    /// When the hub must call [`tick`](Self::tick) next (a task timeout or an engine's grace
    /// period ending), if ever.
    pub fn next_deadline(&self) -> Option<Instant> {
        let a = self.timeouts.first().map(|x| x.0);
        let b = self.stranded.first().map(|x| x.0);
        match (a, b) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    // ------------------------------------------------------------------ engines

    /// A registered engine became schedulable (call after its first heartbeat).
    pub fn add_engine(&mut self, uuid: &[u8], id: u32, now: Instant) -> Vec<TaskAction> {
        let mut out = Vec::new();
        if let Some(k) = self.by_uuid.get(uuid) {
            if let Some(e) = self.engines.get_mut(k) {
                warn!(engine = id, uuid = %lossy(uuid), "engine registered twice; keeping it");
                e.id = id;
                return out;
            }
        }
        let k = self.next_engine;
        self.next_engine += 1;
        // New engines go to the head of the LRU line, as in Python.
        self.lru_front -= 1;
        self.engines.insert(
            k,
            Engine {
                uuid: uuid.to_vec(),
                id,
                load: 0,
                lru: self.lru_front,
                alive: true,
                pending: BTreeSet::new(),
            },
        );
        self.by_uuid.insert(uuid.to_vec(), k);
        info!(engine = id, uuid = %lossy(uuid), "task scheduler: engine added");
        self.capacity.push_back(k);
        self.drain(now, &mut out);
        out
    }

    /// An engine is gone: no new work goes to it; after the grace period its unanswered tasks
    /// fail with `EngineError` (through the normal result path, so retries apply).
    pub fn remove_engine(&mut self, uuid: &[u8], now: Instant) -> Vec<TaskAction> {
        let mut out = Vec::new();
        let Some(k) = self.by_uuid.remove(uuid) else {
            debug!(uuid = %lossy(uuid), "remove_engine: unknown engine");
            return out;
        };
        let Some(e) = self.engines.get_mut(&k) else {
            return out;
        };
        e.alive = false;
        info!(
            engine = e.id,
            outstanding = e.pending.len(),
            "task scheduler: engine removed"
        );
        if e.pending.is_empty() {
            self.engines.remove(&k);
        } else if self.cfg.engine_death_grace.is_zero() {
            // known dead: its tasks fail now, not at the next tick
            self.strand(k, now, &mut out);
        } else {
            self.stranded.insert((now + self.cfg.engine_death_grace, k));
        }
        // Tasks that could only run there may have become impossible.
        if let Some(q) = self.per_engine.get(uuid) {
            self.recheck.extend(q.iter().copied());
        }
        self.drain(now, &mut out);
        out
    }

    // ------------------------------------------------------------------ submission

    /// A task request from a client: `msg.idents == [client_routing_id]`.
    pub fn submit(&mut self, mut msg: WireMessage, now: Instant) -> Vec<TaskAction> {
        let buffers = SharedBuffers::new(std::mem::take(&mut msg.buffers));
        self.submit_shared(msg, buffers, now)
    }

    /// [`TaskScheduler::submit`] for a request whose buffers the caller holds too (its task
    /// record): `msg.buffers` is empty and `buffers` are the request's.
    pub fn submit_shared(
        &mut self,
        msg: WireMessage,
        buffers: SharedBuffers,
        now: Instant,
    ) -> Vec<TaskAction> {
        let mut out = Vec::new();
        self.submit_inner(msg, buffers, now, &mut out);
        self.drain(now, &mut out);
        out
    }

    fn submit_inner(
        &mut self,
        msg: WireMessage,
        buffers: SharedBuffers,
        now: Instant,
        out: &mut Vec<TaskAction>,
    ) {
        if msg.idents.is_empty() {
            warn!("task request without a client routing id; dropped");
            return;
        }
        let msg_id = match header_msg_id(&msg.header) {
            Some(m) => m,
            None => {
                warn!("task request without a readable header.msg_id; dropped");
                return;
            }
        };
        if self.ids.contains_key(&msg_id) {
            warn!(%msg_id, "duplicate task msg_id; dropped");
            return;
        }
        let seq = self.next_seq;
        self.next_seq += 1;
        self.ids.insert(msg_id.clone(), seq);
        let mut job = Job {
            msg_id,
            request: msg,
            buffers,
            targets: None,
            after: Dependency::met(),
            follow: Dependency::met(),
            timeout: None,
            retries: 0,
            blacklist: HashSet::new(),
            func_dep_failed: false,
            state: JobState::Waiting,
            deadline: None,
            in_graph: false,
            refs: Vec::new(),
        };
        if self.cfg.scheme != Scheme::Pure {
            if let Err(failure) = self.read_metadata(seq, &mut job) {
                info!(msg_id = %job.msg_id, ename = failure.ename(), "task refused: {}", failure.evalue());
                self.fail(seq, job, failure, out);
                return;
            }
            job.refs = job
                .after
                .ids
                .iter()
                .chain(&job.follow.ids)
                .copied()
                .collect();
            for &r in &job.refs {
                *self.dep_refs.entry(r).or_default() += 1;
            }
            let st = |id: TaskSeq| self.done.get(&id).map(|d| d.outcome);
            if job.after.unreachable(st) || job.follow.unreachable(st) {
                let f = SchedFailure::ImpossibleDependency(
                    "a dependency already finished the wrong way".into(),
                );
                self.fail(seq, job, f, out);
                return;
            }
            if job.after.check(st) {
                job.after = Dependency::met();
            }
        }
        debug!(msg_id = %job.msg_id, "task submitted");
        if job.after.is_empty() {
            self.place(seq, job, now, true, out);
        } else {
            self.enqueue(seq, job, JobState::Waiting, now, true);
        }
    }

    /// Read targets/after/follow/timeout/retries; validate dependencies against known ids.
    fn read_metadata(&self, seq: TaskSeq, job: &mut Job) -> Result<(), SchedFailure> {
        // Only five keys matter here; the client's metadata carries more. Read just those,
        // and fall back to the general parse for anything odd (so errors read as before).
        let md = match rpar_core::msg::parse_fields::<TaskMetadata>(&job.request.metadata) {
            Some(m) if !job.request.metadata.is_empty() => m.into_map(),
            _ => {
                let md =
                    WireMessage::parse_part("metadata", &job.request.metadata).map_err(|e| {
                        SchedFailure::BadMetadata(MetadataError::Invalid {
                            key: "metadata",
                            why: e.to_string(),
                        })
                    })?;
                let Value::Object(md) = md else {
                    return Err(SchedFailure::BadMetadata(MetadataError::WrongType {
                        key: "metadata",
                        expected: "a dict",
                        got: crate::deps::type_name(&md),
                    }));
                };
                md
            }
        };
        let bad = SchedFailure::BadMetadata;
        // targets
        match md.get("targets") {
            None | Some(Value::Null) => {}
            Some(Value::Array(ts)) => {
                let mut v = Vec::with_capacity(ts.len());
                for t in ts {
                    match t {
                        Value::String(s) => v.push(s.as_bytes().to_vec()),
                        other => {
                            return Err(bad(MetadataError::WrongType {
                                key: "targets",
                                expected: "a list of engine uuid strings",
                                got: crate::deps::type_name(other),
                            }))
                        }
                    }
                }
                v.sort();
                v.dedup();
                if !v.is_empty() {
                    job.targets = Some(v);
                }
            }
            Some(other) => {
                return Err(bad(MetadataError::WrongType {
                    key: "targets",
                    expected: "a list of engine uuid strings",
                    got: crate::deps::type_name(other),
                }))
            }
        }
        // retries
        job.retries = match md.get("retries") {
            None | Some(Value::Null) => 0,
            Some(Value::Number(n)) => match n.as_u64() {
                Some(r) => u32::try_from(r).unwrap_or(u32::MAX),
                None => {
                    return Err(bad(MetadataError::Invalid {
                        key: "retries",
                        why: format!("expected a non-negative integer, got {n}"),
                    }))
                }
            },
            Some(other) => {
                return Err(bad(MetadataError::WrongType {
                    key: "retries",
                    expected: "an integer",
                    got: crate::deps::type_name(other),
                }))
            }
        };
        // timeout
        job.timeout = match md.get("timeout") {
            None | Some(Value::Null) => None,
            Some(Value::Number(n)) => {
                let t = n.as_f64().unwrap_or(f64::NAN);
                if !t.is_finite() || t < 0.0 {
                    return Err(bad(MetadataError::Invalid {
                        key: "timeout",
                        why: format!("expected a non-negative number of seconds, got {n}"),
                    }));
                }
                if t == 0.0 {
                    None
                } else {
                    Some(Duration::from_secs_f64(t.min(1e9)))
                }
            }
            Some(other) => {
                return Err(bad(MetadataError::WrongType {
                    key: "timeout",
                    expected: "a number of seconds",
                    got: crate::deps::type_name(other),
                }))
            }
        };
        // dependencies
        let after = ParsedDependency::parse("after", md.get("after")).map_err(bad)?;
        let follow = ParsedDependency::parse("follow", md.get("follow")).map_err(bad)?;
        job.after = self.intern(seq, &job.msg_id, after)?;
        job.follow = self.intern(seq, &job.msg_id, follow)?;
        Ok(())
    }

    fn intern(
        &self,
        seq: TaskSeq,
        msg_id: &str,
        p: ParsedDependency,
    ) -> Result<Dependency, SchedFailure> {
        let mut ids = Vec::with_capacity(p.ids.len());
        for id in &p.ids {
            match self.ids.get(id) {
                Some(&s) if s == seq => {
                    return Err(SchedFailure::InvalidDependency(format!(
                        "task {msg_id:?} depends on itself"
                    )))
                }
                Some(&s) => ids.push(s),
                None => {
                    return Err(SchedFailure::InvalidDependency(format!(
                        "task {msg_id:?} depends on {id:?}, which this scheduler has never seen \
                         (or which finished more than {DONE_WINDOW} tasks ago)"
                    )))
                }
            }
        }
        Ok(Dependency {
            ids,
            all: p.all,
            success: p.success,
            failure: p.failure,
        })
    }

    // ------------------------------------------------------------------ results

    /// A reply from an engine, as received on the engine-facing ROUTER:
    /// `msg.idents == [engine_uuid, client_routing_id]`.
    pub fn on_engine_reply(&mut self, msg: WireMessage, now: Instant) -> Vec<TaskAction> {
        let mut out = Vec::new();
        self.result(msg, now, &mut out);
        self.drain(now, &mut out);
        out
    }

    fn result(&mut self, mut msg: WireMessage, now: Instant, out: &mut Vec<TaskAction>) {
        if msg.idents.len() < 2 {
            warn!(
                frames = msg.idents.len(),
                "task reply without [engine, client] routing frames; dropped"
            );
            return;
        }
        let Some(msg_id) = header_msg_id(&msg.parent) else {
            warn!("task reply without a readable parent_header.msg_id; dropped");
            return;
        };
        let md = match rpar_core::msg::parse_fields::<ReplyMetadata>(&msg.metadata) {
            Some(m) => m,
            None => {
                let v = WireMessage::parse_part("metadata", &msg.metadata).unwrap_or(Value::Null);
                ReplyMetadata {
                    dependencies_met: v.get("dependencies_met").cloned(),
                    status: v.get("status").cloned(),
                }
            }
        };
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
    fn relay_unknown(
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

    // ------------------------------------------------------------------ time

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
    fn strand(&mut self, k: EngineKey, now: Instant, out: &mut Vec<TaskAction>) {
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
            self.result(reply, now, out);
        }
        self.engines.remove(&k);
    }

    // ------------------------------------------------------------------ internals

    fn status_of(&self, id: TaskSeq) -> Option<Outcome> {
        self.done.get(&id).map(|d| d.outcome)
    }

    fn follow_ok(&self, job: &Job, k: EngineKey) -> bool {
        job.follow.check(|id| {
            self.done
                .get(&id)
                .filter(|d| d.engine == Some(k))
                .map(|d| d.outcome)
        })
    }

    fn has_slot(&self, e: &Engine) -> bool {
        e.alive && (self.cfg.scheme == Scheme::Pure || self.cfg.hwm == 0 || e.load < self.cfg.hwm)
    }

    /// Where can this task go now, or why never.
    fn placement(&mut self, job: &Job) -> Placement {
        let pure = self.cfg.scheme == Scheme::Pure;
        let mut cands: Vec<(i64, EngineKey, u32)> = Vec::new();
        {
            let mut consider = |k: EngineKey, e: &Engine| {
                if self.has_slot(e) && !job.blacklist.contains(&e.uuid) && self.follow_ok(job, k) {
                    let order = if pure { k as i64 } else { e.lru };
                    cands.push((order, k, e.load));
                }
            };
            match &job.targets {
                Some(ts) if !pure => {
                    for t in ts {
                        if let Some(&k) = self.by_uuid.get(t) {
                            if let Some(e) = self.engines.get(&k) {
                                consider(k, e);
                            }
                        }
                    }
                }
                _ => {
                    for (&k, e) in &self.engines {
                        consider(k, e);
                    }
                }
            }
        }
        if !cands.is_empty() {
            cands.sort_unstable();
            let loads: Vec<u32> = cands.iter().map(|c| c.2).collect();
            let i = self.cfg.scheme.choose(&loads, &mut self.rng, &mut self.rr);
            return Placement::Run(cands[i.min(cands.len() - 1)].1);
        }
        if pure {
            return Placement::Wait(Slot::General);
        }
        let alive = |k: &EngineKey| self.engines.get(k).is_some_and(|e| e.alive);
        // follow: which engines could ever satisfy it
        let mut follow_engines: Option<Vec<Vec<u8>>> = None;
        if !job.follow.is_empty() {
            let mut dests: BTreeSet<Option<EngineKey>> = BTreeSet::new();
            let mut undecided = false;
            for id in &job.follow.ids {
                match self.done.get(id) {
                    Some(d) if job.follow.counts(d.outcome) => {
                        dests.insert(d.engine);
                    }
                    Some(_) => {}
                    None => undecided = true,
                }
            }
            if job.follow.all {
                if dests.len() > 1 {
                    return Placement::Impossible(
                        "the tasks it must follow ran on different engines".into(),
                    );
                }
                if let Some(d) = dests.first() {
                    match d {
                        Some(k) if alive(k) => {}
                        _ => {
                            return Placement::Impossible(
                                "the engine it must follow is gone".into(),
                            )
                        }
                    }
                }
                if undecided {
                    return Placement::Wait(Slot::Parked);
                }
            }
            let uuids: Vec<Vec<u8>> = dests
                .iter()
                .flatten()
                .filter(|k| alive(k))
                .filter_map(|k| self.engines.get(k).map(|e| e.uuid.clone()))
                .collect();
            if uuids.is_empty() {
                if undecided {
                    return Placement::Wait(Slot::Parked);
                }
                return Placement::Impossible("no live engine satisfies its follow".into());
            }
            follow_engines = Some(uuids);
        }
        let mut allowed: Option<Vec<Vec<u8>>> = match (&job.targets, follow_engines) {
            (Some(t), Some(f)) => Some(f.into_iter().filter(|u| t.contains(u)).collect()),
            (Some(t), None) => Some(t.clone()),
            (None, f) => f,
        };
        if let Some(a) = &mut allowed {
            a.retain(|u| !job.blacklist.contains(u));
            if a.is_empty() {
                return Placement::Impossible(if job.func_dep_failed {
                    "every allowed engine failed its functional dependencies".into()
                } else {
                    "no allowed engine is left (targets, follow, blacklist)".into()
                });
            }
            if !a.iter().any(|u| self.by_uuid.contains_key(u)) {
                return Placement::Impossible("none of its target engines is registered".into());
            }
            return Placement::Wait(Slot::Engines(a.clone()));
        }
        if job.func_dep_failed {
            let mut live = self.engines.values().filter(|e| e.alive).peekable();
            if live.peek().is_some() && live.all(|e| job.blacklist.contains(&e.uuid)) {
                return Placement::Impossible(
                    "every engine failed its functional dependencies".into(),
                );
            }
        }
        Placement::Wait(Slot::General)
    }

    /// Run the task now, queue it, or fail it. `fresh`: it is entering the queue anew (submission
    /// or resubmission), so its timeout is (re)armed, as Python does.
    fn place(
        &mut self,
        seq: TaskSeq,
        job: Job,
        now: Instant,
        fresh: bool,
        out: &mut Vec<TaskAction>,
    ) {
        match self.placement(&job) {
            Placement::Run(k) => self.dispatch(seq, job, k, out),
            Placement::Wait(slot) => self.enqueue(seq, job, JobState::Queued(slot), now, fresh),
            Placement::Impossible(why) => {
                info!(msg_id = %job.msg_id, "impossible dependency: {why}");
                self.fail(seq, job, SchedFailure::ImpossibleDependency(why), out)
            }
        }
    }

    fn dispatch(&mut self, seq: TaskSeq, mut job: Job, k: EngineKey, out: &mut Vec<TaskAction>) {
        let Some(e) = self.engines.get_mut(&k) else {
            // cannot happen (placement only returns known engines); keep the task queued
            self.general.insert(seq);
            job.state = JobState::Queued(Slot::General);
            self.jobs.insert(seq, job);
            return;
        };
        e.load += 1;
        e.lru = self.lru_back;
        self.lru_back += 1;
        e.pending.insert(seq);
        let mut idents = Vec::with_capacity(1 + job.request.idents.len());
        idents.push(e.uuid.clone());
        idents.extend(job.request.idents.iter().take(1).cloned());
        debug!(msg_id = %job.msg_id, engine = e.id, "task assigned");
        let mut frames = job.request.frames_with_idents(idents);
        if self.share_buffers && !job.buffers.is_empty() {
            out.push(TaskAction::ToEngineShared(frames, job.buffers.clone()));
        } else {
            frames.extend(job.buffers.iter().cloned());
            out.push(TaskAction::ToEngine(frames));
        }
        out.push(TaskAction::Assigned {
            msg_id: job.msg_id.clone(),
            engine_uuid: e.uuid.clone(),
        });
        job.state = JobState::Running(k);
        self.jobs.insert(seq, job);
    }

    fn enqueue(&mut self, seq: TaskSeq, mut job: Job, state: JobState, now: Instant, fresh: bool) {
        match &state {
            JobState::Queued(Slot::General) => {
                self.general.insert(seq);
            }
            JobState::Queued(Slot::Engines(us)) => {
                for u in us {
                    self.per_engine.entry(u.clone()).or_default().insert(seq);
                }
            }
            _ => {}
        }
        job.state = state;
        if !job.in_graph {
            job.in_graph = true;
            for &d in job.after.ids.iter().chain(job.follow.ids.iter()) {
                if !self.done.contains_key(&d) {
                    self.dependents.entry(d).or_default().push(seq);
                }
            }
        }
        if fresh {
            if let Some(t) = job.timeout {
                if let Some(old) = job.deadline.take() {
                    self.timeouts.remove(&(old, seq));
                }
                let d = now + t;
                job.deadline = Some(d);
                self.timeouts.insert((d, seq));
            }
        }
        self.jobs.insert(seq, job);
    }

    /// Take a queued task out of the ready indexes (not out of `jobs`).
    fn unindex(&mut self, seq: TaskSeq, job: &Job) {
        match &job.state {
            JobState::Queued(Slot::General) => {
                self.general.remove(&seq);
            }
            JobState::Queued(Slot::Engines(us)) => {
                for u in us {
                    if let Some(q) = self.per_engine.get_mut(u) {
                        q.remove(&seq);
                        if q.is_empty() {
                            self.per_engine.remove(u);
                        }
                    }
                }
            }
            _ => {}
        }
    }

    fn unarm(&mut self, seq: TaskSeq, job: &Job) {
        if let Some(d) = job.deadline {
            self.timeouts.remove(&(d, seq));
        }
    }

    /// Task `seq` is final. It joins the finished window; `refs` (its own dependencies) are
    /// released; the oldest finished tasks beyond the window are forgotten, except those a live
    /// task still depends on.
    fn record(
        &mut self,
        seq: TaskSeq,
        msg_id: &str,
        outcome: Outcome,
        engine: Option<EngineKey>,
        refs: &[TaskSeq],
    ) {
        self.done.insert(seq, Done { outcome, engine });
        self.notify.push_back(seq);
        for r in refs {
            if let Some(n) = self.dep_refs.get_mut(r) {
                *n -= 1;
                if *n == 0 {
                    self.dep_refs.remove(r);
                    if let Some(m) = self.pinned.remove(r) {
                        self.forget(*r, &m);
                    }
                }
            }
        }
        self.finished.push_back((seq, msg_id.to_string()));
        while self.finished.len() > self.done_window {
            let Some((old, m)) = self.finished.pop_front() else {
                break;
            };
            if self.dep_refs.contains_key(&old) {
                // out of the window, but a live task depends on it: forgotten when released
                self.pinned.insert(old, m);
            } else {
                self.forget(old, &m);
            }
        }
    }

    fn forget(&mut self, seq: TaskSeq, msg_id: &str) {
        self.done.remove(&seq);
        if self.ids.get(msg_id) == Some(&seq) {
            self.ids.remove(msg_id);
        }
    }

    /// Keep at most `n` finished tasks for `after`/`follow` (default [`DONE_WINDOW`]).
    pub fn with_done_window(mut self, n: usize) -> Self {
        self.done_window = n;
        self
    }

    /// Bookkeeping entries held (msg_ids, finished and live tasks, dependency links), for
    /// tests that memory stays bounded.
    pub fn held(&self) -> usize {
        self.ids.len()
            + self.done.len()
            + self.jobs.len()
            + self.finished.len()
            + self.dep_refs.len()
            + self.pinned.len()
            + self.dependents.len()
    }

    /// Fail a task with a scheduler-made `apply_reply` (`job` already out of `jobs`).
    fn fail(&mut self, seq: TaskSeq, job: Job, why: SchedFailure, out: &mut Vec<TaskAction>) {
        self.unindex(seq, &job);
        self.unarm(seq, &job);
        let client = job.request.idents.first().cloned().unwrap_or_default();
        let reply = self.builder.build(
            &self.signer,
            vec![client],
            "apply_reply",
            &job.request.header,
            &json!({}),
            &why.content(),
            Vec::new(),
        );
        self.record(seq, &job.msg_id, Outcome::Failure, None, &job.refs);
        out.push(TaskAction::Finished {
            msg_id: job.msg_id,
            engine_uuid: None,
            reply,
        });
    }

    /// Re-examine a queued or waiting task after something it depends on changed.
    fn reconsider(&mut self, seq: TaskSeq, now: Instant, out: &mut Vec<TaskAction>) {
        let Some(job) = self.jobs.remove(&seq) else {
            return;
        };
        if matches!(job.state, JobState::Running(_)) {
            self.jobs.insert(seq, job);
            return;
        }
        let st = |id| self.status_of(id);
        if job.after.unreachable(st) || job.follow.unreachable(st) {
            self.fail(
                seq,
                job,
                SchedFailure::ImpossibleDependency("a dependency finished the wrong way".into()),
                out,
            );
            return;
        }
        if !job.after.check(st) {
            self.jobs.insert(seq, job);
            return;
        }
        self.unindex(seq, &job);
        self.place(seq, job, now, false, out);
    }

    /// Give engine `k` work while it has free slots: the oldest runnable task among the head of
    /// the general queue and its own queue.
    fn fill(&mut self, k: EngineKey, now: Instant, out: &mut Vec<TaskAction>) {
        loop {
            let Some(e) = self.engines.get(&k) else {
                return;
            };
            if !self.has_slot(e) {
                return;
            }
            let uuid = &e.uuid;
            let g = self.general.iter().copied().find(|s| {
                self.jobs
                    .get(s)
                    .is_some_and(|j| !j.blacklist.contains(uuid))
            });
            let t = self.per_engine.get(uuid).and_then(|q| {
                q.iter().copied().find(|s| {
                    self.jobs
                        .get(s)
                        .is_some_and(|j| !j.blacklist.contains(uuid) && self.follow_ok(j, k))
                })
            });
            let pick = match (g, t) {
                (Some(a), Some(b)) => a.min(b),
                (a, b) => match a.or(b) {
                    Some(x) => x,
                    None => return,
                },
            };
            let Some(job) = self.jobs.remove(&pick) else {
                self.general.remove(&pick);
                continue;
            };
            self.unindex(pick, &job);
            match self.placement(&job) {
                Placement::Run(target) => self.dispatch(pick, job, target, out),
                Placement::Impossible(why) => {
                    self.fail(pick, job, SchedFailure::ImpossibleDependency(why), out)
                }
                Placement::Wait(slot) => {
                    // should not happen (it passed the checks for this engine); stop here
                    self.enqueue(pick, job, JobState::Queued(slot), now, false);
                    return;
                }
            }
        }
    }

    fn drain(&mut self, now: Instant, out: &mut Vec<TaskAction>) {
        loop {
            if let Some(seq) = self.notify.pop_front() {
                if let Some(mut ds) = self.dependents.remove(&seq) {
                    ds.sort_unstable();
                    ds.dedup();
                    for d in ds {
                        self.reconsider(d, now, out);
                    }
                }
            } else if let Some(seq) = self.recheck.pop_front() {
                self.reconsider(seq, now, out);
            } else if let Some(k) = self.capacity.pop_front() {
                self.fill(k, now, out);
            } else {
                return;
            }
        }
    }
}

/// The request metadata keys the scheduler reads (`null` kept as `Some(Null)`).
#[derive(serde::Deserialize)]
struct TaskMetadata {
    #[serde(default, deserialize_with = "rpar_core::msg::keep_null")]
    targets: Option<Value>,
    #[serde(default, deserialize_with = "rpar_core::msg::keep_null")]
    retries: Option<Value>,
    #[serde(default, deserialize_with = "rpar_core::msg::keep_null")]
    timeout: Option<Value>,
    #[serde(default, deserialize_with = "rpar_core::msg::keep_null")]
    after: Option<Value>,
    #[serde(default, deserialize_with = "rpar_core::msg::keep_null")]
    follow: Option<Value>,
}

impl TaskMetadata {
    fn into_map(self) -> serde_json::Map<String, Value> {
        let mut m = serde_json::Map::new();
        for (k, v) in [
            ("targets", self.targets),
            ("retries", self.retries),
            ("timeout", self.timeout),
            ("after", self.after),
            ("follow", self.follow),
        ] {
            if let Some(v) = v {
                m.insert(k.to_string(), v);
            }
        }
        m
    }
}

/// The reply metadata keys the scheduler reads.
#[derive(serde::Deserialize)]
struct ReplyMetadata {
    #[serde(default, deserialize_with = "rpar_core::msg::keep_null")]
    dependencies_met: Option<Value>,
    #[serde(default, deserialize_with = "rpar_core::msg::keep_null")]
    status: Option<Value>,
}

/// `msg_id` of a raw header (or parent header) frame.
fn header_msg_id(raw: &[u8]) -> Option<String> {
    rpar_core::msg::msg_id_of(raw)
}
