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
//!
//! This module has the types, the engines and the queries; the rest is in `submit` (requests
//! in), `results` (replies and time), `place` (placement policy and queues) and
//! `bookkeeping` (indexes, the finished window, the scheduler's own failures).

use crate::deps::{Dependency, Outcome, ParsedDependency, TaskSeq};
use crate::errors::{MetadataError, SchedFailure};
use crate::schemes::Scheme;
use foldhash::{HashMap, HashMapExt, HashSet, HashSetExt};
use rand::rngs::StdRng;
use rand::SeedableRng;
use rpar_core::wire::{Frames, SharedBuffers, Signer, WireMessage};
use rpar_core::MessageBuilder;
use serde_json::{json, Value};
use std::collections::{BTreeMap, BTreeSet, VecDeque};
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
    /// The engines with a free slot ([`TaskScheduler::has_slot`]): what an untargeted placement
    /// looks at (under load, few of all the engines).
    free: BTreeSet<EngineKey>,
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
            free: BTreeSet::new(),
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
        self.refresh_slot(k);
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
        self.free.remove(&k);
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
}

mod bookkeeping;
mod place;
mod results;
mod submit;

use results::header_msg_id;
pub use results::ReplyMetadata;
pub use submit::TaskMetadata;
