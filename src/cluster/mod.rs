//! `rpar cluster start|stop|engines|list|clean`.
//!
//! `start` resolves the settings (command line over `ipcluster_config.py` over defaults), starts
//! the controller with its launcher, waits for its connection files, starts the engines with
//! theirs, and waits (with a progress bar) until the hub lists `n` registered engines, failing
//! with what is missing and where the logs are if they do not come. Everything it started is
//! recorded in `security/cluster-<cluster_id>.json`, so `stop` and `list` work from another
//! shell. Without `--daemonize` it stays in the foreground and stops the cluster on
//! SIGINT/SIGTERM or when the controller dies.
//!
//! Everything is resolved before anything starts: the settings and both launchers (a bad batch
//! template or job-id regexp fails before the controller is started).
//!
//! * [`resolve`](self::resolve): command line + config → settings, launchers, launch specs;
//! * [`file`]: the cluster file;
//! * [`wait`]: waiting for the connection files and the engines;
//! * `start`: `start` and `engines`; `commands`: `stop`, `list`, `clean`, `jobscript`.

mod commands;
mod file;
mod resolve;
mod start;
mod wait;

pub use commands::{clean, jobscript, list, stop};
pub use file::{cluster_files, ClusterFile, ClusterInfo, EngineParts, EngineSet, Part};
pub use start::{engines, start};
pub use wait::wait_for_engines;

use rpar_core::profile;
use std::collections::BTreeMap;
use std::time::SystemTime;

/// Exit code when a cluster with this id is already running (as ipcluster).
pub const EXIT_ALREADY_STARTED: i32 = 10;
/// Exit code when there is no cluster to stop (as ipcluster).
pub const EXIT_NO_CLUSTER: i32 = 11;

/// An error with a specific exit code.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct ExitError {
    pub code: i32,
    pub message: String,
}

/// What the user asked for (`rpar cluster start`), before config.
#[derive(Debug, Clone, Default)]
pub struct StartArgs {
    pub profile: profile::ProfileOpts,
    pub n: Option<usize>,
    pub daemonize: bool,
    pub engines: Option<String>,
    pub controller: Option<String>,
    pub ip: Option<String>,
    pub location: Option<String>,
    pub delay: Option<f64>,
    pub engine_timeout: Option<f64>,
    pub co_start: bool,
    /// `--Class.trait=value` arguments.
    pub config_args: Vec<String>,
    /// Extra controller arguments (after `--`).
    pub controller_extra: Vec<String>,
    /// The batch queue, over any configured one (`rpar jobscript --queue`).
    pub queue: Option<String>,
}

/// SIGINT and SIGTERM stop a foreground `rpar cluster start|engines` (it stops what it started).
pub(crate) fn install_signal_handlers() {
    use rpar_core::signals::{install, Restart};
    if let Err(e) = install(&[libc::SIGINT, libc::SIGTERM], Restart::Yes) {
        eprintln!("rpar: warning: {e}");
    }
}

/// Whether SIGINT or SIGTERM arrived.
pub(crate) fn signalled() -> bool {
    rpar_core::signals::received().is_some()
}

/// A new engine set id, as ipcluster names them: the time in seconds, with `-1`, `-2`, ...
/// when `taken` (the cluster's sets) already holds that (two sets started within a second).
pub(crate) fn set_id(taken: &BTreeMap<String, file::EngineSet>) -> String {
    let secs = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    set_id_at(secs, taken)
}

fn set_id_at(secs: u64, taken: &BTreeMap<String, file::EngineSet>) -> String {
    let base = secs.to_string();
    let mut id = base.clone();
    let mut i = 1;
    while taken.contains_key(&id) {
        id = format!("{base}-{i}");
        i += 1;
    }
    id
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_set_started_within_the_same_second_gets_a_suffix() {
        let mut taken = BTreeMap::new();
        for want in ["1796189156", "1796189156-1", "1796189156-2"] {
            let id = set_id_at(1_796_189_156, &taken);
            assert_eq!(id, want);
            taken.insert(id, file::EngineSet::default());
        }
        assert_eq!(set_id_at(1_796_189_157, &taken), "1796189157");
    }
}
