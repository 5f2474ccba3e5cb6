//! What the status views count, kept by the hub as messages pass: per-socket message and byte
//! counters, task outcomes, registrations and heartbeats, which MPI job each engine belongs to,
//! the engines that died and the latest failures. Every update is O(1) per message; the
//! per-engine figures (busy or idle, queue lengths) are read from the hub's own tables only
//! when a [`Snapshot`] is taken, at most once a second (see `crate::status`).
//!
//! Job grouping: an `rpar-engine` rank 0 registers every rank of its MPI job and adds
//! `"rpar_job": {"id", "host", "size", "rank"}` to each `registration_request` content (the
//! Python controller ignores unknown keys). An engine that says nothing (a Python `ipengine`)
//! is a group of its own, `ipengine <uuid>`.

use super::{Effect, Hub, Sock};
use foldhash::{HashMap, HashMapExt};
use rpar_core::status::{
    ControllerInfo, DbInfo, EngineCounts, EngineRow, EngineState, Failure, JobSummary, QueueDepth,
    RegistrationCounts, Snapshot, SocketCounts, TaskCounts, SNAPSHOT_VERSION,
};
use rpar_core::wire::Frames;
use serde_json::Value;
use std::collections::{BTreeMap, VecDeque};
use std::time::{Duration, Instant};

/// Every socket role, with the name the views use for it.
pub const SOCKETS: [(Sock, &str); 15] = [
    (Sock::Registration, "registration"),
    (Sock::Notification, "notification"),
    (Sock::HbPing, "hb_ping"),
    (Sock::HbPong, "hb_pong"),
    (Sock::MuxClient, "mux_client"),
    (Sock::MuxEngine, "mux_engine"),
    (Sock::ControlClient, "control_client"),
    (Sock::ControlEngine, "control_engine"),
    (Sock::TaskClient, "task_client"),
    (Sock::TaskEngine, "task_engine"),
    (Sock::BcastClient, "broadcast_client"),
    (Sock::BcastEngine, "broadcast_engine"),
    (Sock::IopubEngine, "iopub_engine"),
    (Sock::IopubClient, "iopub_client"),
    (Sock::Native, "native"),
];

fn slot(s: Sock) -> usize {
    SOCKETS.iter().position(|(k, _)| *k == s).unwrap_or(0)
}

/// How many failures are kept for the views.
const FAILURES_KEPT: usize = 20;
/// Longest error value kept per failure.
const EVALUE_KEPT: usize = 200;
/// Dead engine ids remembered per job at most (the count goes on).
const DEAD_IDS_KEPT: usize = 65_536;
/// A client counts as connected this long after its last request.
const CLIENT_WINDOW: Duration = Duration::from_secs(300);

/// How a task finished.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Ok,
    Aborted,
    Error { ename: String, evalue: String },
}

impl Outcome {
    /// The outcome a reply content reports (`status`, `ename`, `evalue`).
    pub fn of_content(content: Option<&Value>) -> Outcome {
        let get = |k: &str| content.and_then(|c| c.get(k)).and_then(Value::as_str);
        Outcome::of_fields(get("status"), get("ename"), get("evalue"))
    }

    /// The outcome of a reply content's `status`, `ename` and `evalue` (strings, or absent).
    pub fn of_fields(status: Option<&str>, ename: Option<&str>, evalue: Option<&str>) -> Outcome {
        match status.unwrap_or("") {
            "ok" => Outcome::Ok,
            "aborted" => Outcome::Aborted,
            _ => Outcome::Error {
                ename: ename.unwrap_or("").to_string(),
                evalue: evalue.unwrap_or("").chars().take(EVALUE_KEPT).collect(),
            },
        }
    }

    pub fn is_aborted(&self) -> bool {
        *self == Outcome::Aborted
    }
}

#[derive(Debug, Default, Clone, Copy)]
struct Count {
    messages: u64,
    bytes: u64,
}

#[derive(Debug, Default)]
struct Job {
    kind: &'static str,
    host: String,
    size: Option<u64>,
    /// Pending or registered engines of this job.
    live: u64,
    dead_ids: Vec<u32>,
    dead: u64,
}

/// The hub's counters for the status views.
#[derive(Debug)]
pub struct Monitor {
    started: Instant,
    started_unix: f64,
    received: [Count; SOCKETS.len()],
    sent: [Count; SOCKETS.len()],
    submitted: u64,
    completed: u64,
    failed: u64,
    aborted: u64,
    resubmitted: u64,
    registrations: u64,
    gone: u64,
    heartbeat_failures: u64,
    stalled: u64,
    heartbeats: u64,
    jobs: BTreeMap<String, Job>,
    /// The job of every pending or registered engine.
    engine_job: HashMap<u32, String>,
    failures: VecDeque<Failure>,
    clients: HashMap<String, Instant>,
}

fn unix_now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

impl Monitor {
    pub fn new(now: Instant) -> Monitor {
        Monitor {
            started: now,
            started_unix: unix_now(),
            received: Default::default(),
            sent: Default::default(),
            submitted: 0,
            completed: 0,
            failed: 0,
            aborted: 0,
            resubmitted: 0,
            registrations: 0,
            gone: 0,
            heartbeat_failures: 0,
            stalled: 0,
            heartbeats: 0,
            jobs: BTreeMap::new(),
            engine_job: HashMap::new(),
            failures: VecDeque::new(),
            clients: HashMap::new(),
        }
    }

    /// A message arrived on `sock`.
    pub fn received(&mut self, sock: Sock, frames: &Frames) {
        let c = &mut self.received[slot(sock)];
        c.messages += 1;
        c.bytes += bytes(frames);
    }

    /// These effects are about to be sent.
    pub fn sent(&mut self, effects: &[Effect]) {
        let mut last = None;
        for e in effects {
            match e {
                Effect::Send(sock, frames) => {
                    let c = &mut self.sent[slot(*sock)];
                    c.messages += 1;
                    c.bytes += bytes(frames);
                    if *sock == Sock::HbPing {
                        self.heartbeats += 1;
                    }
                    last = Some(*sock);
                }
                // the end of the message before it
                Effect::Trailer(b) => {
                    if let Some(sock) = last {
                        self.sent[slot(sock)].bytes += bytes(b);
                    }
                }
                Effect::SaveEngines => {}
            }
        }
    }

    /// A client (by the session in its message headers: one per `Client`, whatever socket
    /// it used) sent a request.
    pub fn client_seen(&mut self, session: &str, now: Instant) {
        match self.clients.get_mut(session) {
            Some(t) => *t = now,
            None => {
                self.clients.insert(session.to_string(), now);
            }
        }
    }

    pub fn submitted(&mut self, resubmission: bool) {
        if resubmission {
            self.resubmitted += 1;
        } else {
            self.submitted += 1;
        }
    }

    /// A task finished with `outcome` (on engine `engine`, when known).
    pub fn finished(&mut self, msg_id: &str, engine: Option<u32>, outcome: &Outcome) {
        match outcome {
            Outcome::Ok => self.completed += 1,
            Outcome::Aborted => self.aborted += 1,
            Outcome::Error { ename, evalue } => {
                self.failed += 1;
                if self.failures.len() == FAILURES_KEPT {
                    self.failures.pop_front();
                }
                self.failures.push_back(Failure {
                    t: unix_now(),
                    msg_id: msg_id.to_string(),
                    engine_id: engine,
                    ename: ename.clone(),
                    evalue: evalue.clone(),
                });
            }
        }
    }

    /// Engine `id` asked to register with this content: note its job.
    pub fn registering(&mut self, id: u32, uuid: &str, content: &Value) {
        let job = content.get("rpar_job");
        let text = |k: &str| job.and_then(|j| j.get(k)).and_then(Value::as_str);
        let (key, kind, host) = match text("id") {
            Some(j) => (j.to_string(), "rpar-engine", text("host").unwrap_or("")),
            None => (format!("ipengine {uuid}"), "ipengine", ""),
        };
        let size = job.and_then(|j| j.get("size")).and_then(Value::as_u64);
        self.registering_in(id, key, kind, host, size);
    }

    /// Engine `id` is one of job `key` (of `kind`, on `host`, of `size` engines).
    pub fn registering_in(
        &mut self,
        id: u32,
        key: String,
        kind: &'static str,
        host: &str,
        size: Option<u64>,
    ) {
        let entry = self.jobs.entry(key.clone()).or_default();
        entry.kind = kind;
        entry.host = host.to_string();
        entry.size = size.or(entry.size);
        entry.live += 1;
        if let Some(old) = self.engine_job.insert(id, key) {
            self.release(&old);
        }
    }

    /// Engine `id` completed its registration.
    pub fn registered(&mut self) {
        self.registrations += 1;
    }

    /// A registration was dropped before it completed (`stalled`: no heartbeat came).
    pub fn dropped_pending(&mut self, id: u32, stalled: bool) {
        if stalled {
            self.stalled += 1;
        }
        if let Some(key) = self.engine_job.remove(&id) {
            self.release(&key);
        }
    }

    /// A registered engine's heart stopped.
    pub fn heartbeat_lost(&mut self) {
        self.heartbeat_failures += 1;
    }

    /// A registered engine is gone (for any reason).
    pub fn engine_gone(&mut self, id: u32) {
        self.gone += 1;
        let Some(key) = self.engine_job.remove(&id) else {
            return;
        };
        if let Some(j) = self.jobs.get_mut(&key) {
            j.dead += 1;
            if j.dead_ids.len() < DEAD_IDS_KEPT {
                j.dead_ids.push(id);
            }
        }
        self.release(&key);
    }

    /// A dead engine registers again under its old id (its heart answered again): back in its
    /// job, no longer dead. Rare, so the dead lists are searched.
    pub fn revived(&mut self, id: u32) {
        let found = self.jobs.iter_mut().find_map(|(k, j)| {
            let i = j.dead_ids.iter().position(|d| *d == id)?;
            j.dead_ids.remove(i);
            j.dead = j.dead.saturating_sub(1);
            j.live += 1;
            Some(k.clone())
        });
        if let Some(key) = found {
            self.engine_job.insert(id, key);
        }
    }

    /// One engine of job `key` is no longer pending or registered; a job with neither live
    /// nor dead engines is forgotten.
    fn release(&mut self, key: &str) {
        let Some(j) = self.jobs.get_mut(key) else {
            return;
        };
        j.live = j.live.saturating_sub(1);
        if j.live == 0 && j.dead == 0 {
            self.jobs.remove(key);
        }
    }
}

impl Hub {
    /// The hub's part of a status snapshot (history and rates are the publisher's). Reads every
    /// registered engine once: call it at most about once a second.
    pub fn snapshot(&mut self, now: Instant) -> Snapshot {
        let m = &mut self.monitor;
        m.clients
            .retain(|_, t| now.saturating_duration_since(*t) < CLIENT_WINDOW);
        let m = &self.monitor;
        let mut jobs: BTreeMap<&str, JobSummary> = BTreeMap::new();
        let mut rows = Vec::new();
        let mut counts = EngineCounts::default();
        let mut bcast_depth = 0u64;
        for e in self.registered() {
            let mux = self.ledger.mux_pending.get(&e.id).map_or(0, |s| s.len()) as u64;
            let lb = self.ledger.tasks_on.get(&e.id).map_or(0, |s| s.len()) as u64;
            let uuid = e.uuid.as_bytes();
            bcast_depth += self.tasks.bcast.outstanding_on(uuid) as u64;
            let queue = mux + lb;
            let completed = self.ledger.completed_count(e.id);
            let state = if queue > 0 {
                EngineState::Busy
            } else {
                EngineState::Idle
            };
            counts.registered += 1;
            let key = m.engine_job.get(&e.id).map_or("unknown", String::as_str);
            let j = jobs.entry(key).or_insert_with(|| JobSummary {
                job: key.to_string(),
                ..Default::default()
            });
            j.registered += 1;
            j.queue += queue;
            j.completed += completed;
            j.ids.push(e.id);
            match state {
                EngineState::Busy => {
                    counts.busy += 1;
                    j.busy += 1;
                }
                _ => {
                    counts.idle += 1;
                    j.idle += 1;
                }
            }
            rows.push(EngineRow {
                id: e.id,
                uuid: e.uuid.clone(),
                job: key.to_string(),
                state,
                queue,
                completed,
            });
        }
        for (key, job) in &m.jobs {
            if job.dead == 0 && !jobs.contains_key(key.as_str()) {
                continue;
            }
            let j = jobs.entry(key.as_str()).or_insert_with(|| JobSummary {
                job: key.clone(),
                ..Default::default()
            });
            j.kind = job.kind.to_string();
            j.host = job.host.clone();
            j.size = job.size;
            j.dead = job.dead;
            j.dead_ids = job.dead_ids.clone();
            j.dead_ids.sort_unstable();
            counts.dead += job.dead;
        }
        counts.pending = self.pending_regs.len() as u64;
        let mux_running: u64 = self
            .ledger
            .mux_pending
            .values()
            .map(|s| s.len() as u64)
            .sum();
        let sockets = SOCKETS
            .iter()
            .enumerate()
            .map(|(i, (_, name))| SocketCounts {
                socket: (*name).to_string(),
                received_messages: m.received[i].messages,
                received_bytes: m.received[i].bytes,
                sent_messages: m.sent[i].messages,
                sent_bytes: m.sent[i].bytes,
            })
            .collect();
        Snapshot {
            version: SNAPSHOT_VERSION,
            taken: unix_now(),
            controller: ControllerInfo {
                pid: std::process::id(),
                host: rpar_core::connection::hostname().unwrap_or_default(),
                address: rpar_core::connection::url(
                    &rpar_core::connection::disambiguate_interface(
                        &self.cfg.engine_info.interface,
                        &self.cfg.engine_info.location,
                    ),
                    self.cfg.engine_info.registration,
                ),
                started: m.started_unix,
                uptime_seconds: now.saturating_duration_since(m.started).as_secs_f64(),
                scheme: self.cfg.scheme.clone(),
                heartbeat_period_seconds: self.cfg.hb_period.as_secs_f64(),
            },
            engines: counts,
            jobs: jobs.into_values().collect(),
            engine_rows: rows,
            tasks: TaskCounts {
                submitted: m.submitted,
                queued: self.ledger.unassigned.len() as u64,
                running: self.ledger.task_engine.len() as u64 + mux_running,
                completed: m.completed,
                failed: m.failed,
                aborted: m.aborted,
                resubmitted: m.resubmitted,
            },
            queues: vec![
                QueueDepth {
                    scheduler: "task".into(),
                    depth: self.ledger.unassigned.len() as u64,
                },
                QueueDepth {
                    scheduler: "task_assigned".into(),
                    depth: self.ledger.task_engine.len() as u64,
                },
                QueueDepth {
                    scheduler: "mux".into(),
                    depth: mux_running,
                },
                QueueDepth {
                    scheduler: "broadcast".into(),
                    depth: bcast_depth,
                },
            ],
            sockets,
            registration: RegistrationCounts {
                registrations: m.registrations,
                unregistrations: m.gone.saturating_sub(m.heartbeat_failures),
                heartbeat_failures: m.heartbeat_failures,
                stalled: m.stalled,
                heartbeats: m.heartbeats,
            },
            db: DbInfo {
                backend: self.records.db.backend().to_string(),
                backlog_bytes: self.records.db.backlog_bytes(),
            },
            clients: m.clients.len() as u64,
            failures: m.failures.iter().cloned().collect(),
            ..Default::default()
        }
    }
}

/// Total bytes of `frames`, as a counter adds them.
fn bytes(frames: &[Vec<u8>]) -> u64 {
    u64::try_from(rpar_core::wire::buffers_len(frames)).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn outcome_of_content() {
        assert_eq!(
            Outcome::of_content(Some(&json!({"status": "ok"}))),
            Outcome::Ok
        );
        assert!(Outcome::of_content(Some(&json!({"status": "aborted"}))).is_aborted());
        let e = Outcome::of_content(Some(
            &json!({"status": "error", "ename": "ZeroDivisionError", "evalue": "x".repeat(500)}),
        ));
        match e {
            Outcome::Error { ename, evalue } => {
                assert_eq!(ename, "ZeroDivisionError");
                assert_eq!(evalue.len(), EVALUE_KEPT);
            }
            other => panic!("{other:?}"),
        }
        // a reply without content is a failure, not a panic
        assert!(matches!(Outcome::of_content(None), Outcome::Error { .. }));
    }

    #[test]
    fn jobs_and_dead_engines() {
        let mut m = Monitor::new(Instant::now());
        let job = json!({"rpar_job": {"id": "n1:42", "host": "n1", "size": 2, "rank": 0}});
        m.registering(0, "u0", &job);
        m.registering(1, "u1", &job);
        m.registering(2, "u2", &json!({"uuid": "u2"}));
        assert_eq!(m.jobs.len(), 2);
        assert_eq!(m.jobs["n1:42"].size, Some(2));
        assert_eq!(m.jobs["ipengine u2"].kind, "ipengine");
        m.engine_gone(1);
        assert_eq!(m.jobs["n1:42"].dead_ids, vec![1]);
        // a registration that never completed leaves no empty group behind
        m.dropped_pending(2, true);
        assert!(!m.jobs.contains_key("ipengine u2"));
        assert_eq!(m.stalled, 1);
    }

    #[test]
    fn failures_are_bounded() {
        let mut m = Monitor::new(Instant::now());
        for i in 0..(FAILURES_KEPT + 5) {
            let o = Outcome::Error {
                ename: format!("E{i}"),
                evalue: String::new(),
            };
            m.finished(&format!("m{i}"), Some(1), &o);
        }
        assert_eq!(m.failures.len(), FAILURES_KEPT);
        assert_eq!(m.failed, (FAILURES_KEPT + 5) as u64);
        assert_eq!(m.failures.back().map(|f| f.ename.as_str()), Some("E24"));
    }

    #[test]
    fn socket_counters() {
        let mut m = Monitor::new(Instant::now());
        m.received(Sock::TaskClient, &vec![vec![0; 3], vec![0; 4]]);
        m.sent(&[
            Effect::Send(Sock::HbPing, vec![vec![0; 5]]),
            Effect::SaveEngines,
        ]);
        let t = slot(Sock::TaskClient);
        assert_eq!((m.received[t].messages, m.received[t].bytes), (1, 7));
        assert_eq!(m.sent[slot(Sock::HbPing)].bytes, 5);
        assert_eq!(m.heartbeats, 1);
    }
}
