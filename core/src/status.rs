//! A running cluster as the controller sees it: the snapshot it serves as JSON (`/api/status`),
//! renders as Prometheus text and shows on its status page, and that `rpar cluster status`
//! reads back; plus the status file (`security/rpar-status[-<cluster_id>].json`) that says
//! where the controller serves it and with which token.
//!
//! The types live here because two programs meet on them: `rpar-controller` writes them and
//! `rpar` reads them. Every field has a default, so a newer or older peer's JSON still loads.

use serde::{Deserialize, Serialize};
use std::path::PathBuf;

/// Version of the snapshot's JSON shape.
pub const SNAPSHOT_VERSION: u32 = 1;

/// Everything the status views show, taken at once by the controller loop.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct Snapshot {
    pub version: u32,
    /// When it was taken (seconds since the Unix epoch).
    pub taken: f64,
    pub controller: ControllerInfo,
    pub engines: EngineCounts,
    /// Engines grouped by the MPI job (one `rpar-engine` job) or Python ipengine they are.
    pub jobs: Vec<JobSummary>,
    /// One row per live engine, in id order; empty when left out (`?engines=0`).
    pub engine_rows: Vec<EngineRow>,
    pub tasks: TaskCounts,
    /// Rates over the last [`Rates::interval`] seconds.
    pub rates: Rates,
    /// Queue depth per scheduler.
    pub queues: Vec<QueueDepth>,
    /// Messages and bytes per controller socket since start.
    pub sockets: Vec<SocketCounts>,
    pub registration: RegistrationCounts,
    pub db: DbInfo,
    /// Clients that sent the controller a request in the last five minutes.
    pub clients: u64,
    /// One point a second, oldest first, for the last few minutes.
    pub history: Vec<HistoryPoint>,
    /// The most recent failed tasks, newest last.
    pub failures: Vec<Failure>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct ControllerInfo {
    pub pid: u32,
    pub host: String,
    /// Registration URL clients and engines connect to.
    pub address: String,
    /// When the controller started (seconds since the Unix epoch).
    pub started: f64,
    pub uptime_seconds: f64,
    /// Load-balancing scheme of the task scheduler.
    pub scheme: String,
    pub heartbeat_period_seconds: f64,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct EngineCounts {
    /// Registered engines (busy + idle).
    pub registered: u64,
    pub busy: u64,
    pub idle: u64,
    /// Registered once, gone since (unregistered or heartbeat lost).
    pub dead: u64,
    /// Registration requested, first heartbeat not yet seen.
    pub pending: u64,
}

/// Engine state as the views show it.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum EngineState {
    #[default]
    Idle,
    Busy,
    Dead,
}

impl EngineState {
    pub fn as_str(self) -> &'static str {
        match self {
            EngineState::Idle => "idle",
            EngineState::Busy => "busy",
            EngineState::Dead => "dead",
        }
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct JobSummary {
    /// The group's key: `<host>:<pid of rank 0>` for an `rpar-engine` job, `ipengine <uuid>`
    /// for an engine that said nothing of its job.
    pub job: String,
    /// `rpar-engine` or `ipengine`.
    pub kind: String,
    pub host: String,
    /// Ranks in the MPI job, when the engine said.
    pub size: Option<u64>,
    pub registered: u64,
    pub busy: u64,
    pub idle: u64,
    pub dead: u64,
    /// Tasks outstanding on its engines.
    pub queue: u64,
    /// Tasks its engines completed.
    pub completed: u64,
    /// Live engine ids, ascending.
    pub ids: Vec<u32>,
    /// Ids of its engines that died, ascending.
    pub dead_ids: Vec<u32>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct EngineRow {
    pub id: u32,
    pub uuid: String,
    pub job: String,
    pub state: EngineState,
    /// Tasks outstanding on it (direct and load-balanced).
    pub queue: u64,
    pub completed: u64,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct TaskCounts {
    /// Requests from clients (direct and load-balanced; resubmissions not included).
    pub submitted: u64,
    /// Waiting for an engine in the task scheduler.
    pub queued: u64,
    /// Placed on an engine, no reply yet.
    pub running: u64,
    /// Finished with status ok.
    pub completed: u64,
    /// Finished with an error (the task raised, or its engine died).
    pub failed: u64,
    pub aborted: u64,
    /// Resubmitted by a client's `resubmit_request`.
    pub resubmitted: u64,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct Rates {
    pub interval_seconds: f64,
    pub submitted_per_second: f64,
    pub finished_per_second: f64,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct QueueDepth {
    /// `task` (load-balanced, waiting), `task_assigned`, `mux` (direct), `broadcast`.
    pub scheduler: String,
    pub depth: u64,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct SocketCounts {
    /// The socket's role, e.g. `mux_client`, `task_engine`, `hb_pong`.
    pub socket: String,
    pub received_messages: u64,
    pub received_bytes: u64,
    pub sent_messages: u64,
    pub sent_bytes: u64,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct RegistrationCounts {
    /// Engines whose registration completed.
    pub registrations: u64,
    /// Engines that left by an unregistration request or shutdown.
    pub unregistrations: u64,
    /// Engines declared dead for missed heartbeats.
    pub heartbeat_failures: u64,
    /// Registrations dropped because no heartbeat came.
    pub stalled: u64,
    /// Heartbeat pings sent.
    pub heartbeats: u64,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct DbInfo {
    /// `DictDB`, `SQLiteDB`, `MongoDB`, `NoDB`.
    pub backend: String,
    /// Bytes written to the database and not yet committed.
    pub backlog_bytes: u64,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct HistoryPoint {
    /// Seconds since the Unix epoch.
    pub t: f64,
    pub queued: u64,
    pub running: u64,
    /// Tasks finished (any outcome) since start.
    pub finished: u64,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct Failure {
    /// Seconds since the Unix epoch.
    pub t: f64,
    pub msg_id: String,
    pub engine_id: Option<u32>,
    pub ename: String,
    pub evalue: String,
}

/// `security/rpar-status[-<cluster_id>].json`: where the controller serves its status page and
/// metrics, and the token they require. Written mode 0600 beside the connection files.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct StatusFile {
    /// `http://HOST:PORT/` (without the token).
    pub url: String,
    pub token: String,
    pub pid: u32,
}

impl StatusFile {
    /// The status page's URL with its token, as printed for the user.
    pub fn page_url(&self) -> String {
        format!("{}?token={}", self.url, self.token)
    }
}

/// `rpar-status[-<cluster_id>].json`.
pub fn status_file_name(cluster_id: &str) -> String {
    if cluster_id.is_empty() {
        "rpar-status.json".into()
    } else {
        format!("rpar-status-{cluster_id}.json")
    }
}

/// The status file of a cluster in a profile's security directory.
pub fn status_file(security: &std::path::Path, cluster_id: &str) -> PathBuf {
    security.join(status_file_name(cluster_id))
}

/// The token for the status page and metrics, derived from the cluster's key: whoever can read
/// the connection files can compute it, nobody else can. An empty key (`--no-secure`) gets a
/// random token instead (it is then only in the status file).
pub fn token_for_key(key: &str) -> String {
    use hmac::{Hmac, Mac};
    if key.is_empty() {
        return crate::ids::new_id().replace('-', "");
    }
    let Ok(mut mac) = Hmac::<sha2::Sha256>::new_from_slice(key.as_bytes()) else {
        return crate::ids::new_id().replace('-', "");
    };
    mac.update(b"rpar status token v1");
    let d = mac.finalize().into_bytes();
    hex::encode(&d[..16])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_is_derived_and_stable() {
        let a = token_for_key("k1");
        assert_eq!(a, token_for_key("k1"));
        assert_ne!(a, token_for_key("k2"));
        assert_eq!(a.len(), 32);
        assert!(a.chars().all(|c| c.is_ascii_hexdigit()));
        assert_ne!(token_for_key(""), token_for_key(""));
    }

    #[test]
    fn snapshot_round_trip_and_defaults() {
        let s = Snapshot {
            version: SNAPSHOT_VERSION,
            tasks: TaskCounts {
                completed: 3,
                ..Default::default()
            },
            ..Default::default()
        };
        let text = serde_json::to_string(&s).unwrap();
        assert_eq!(serde_json::from_str::<Snapshot>(&text).unwrap(), s);
        // an older peer's JSON without most fields still loads
        let old: Snapshot = serde_json::from_str(r#"{"tasks": {"failed": 2}}"#).unwrap();
        assert_eq!(old.tasks.failed, 2);
    }

    #[test]
    fn names() {
        assert_eq!(status_file_name(""), "rpar-status.json");
        assert_eq!(status_file_name("x"), "rpar-status-x.json");
        let f = StatusFile {
            url: "http://127.0.0.1:5/".into(),
            token: "t".into(),
            pid: 1,
        };
        assert_eq!(f.page_url(), "http://127.0.0.1:5/?token=t");
    }
}
