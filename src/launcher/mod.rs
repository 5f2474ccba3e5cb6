//! Launchers: how a controller and engines are started, watched and stopped.
//!
//! One trait, [`Launcher`], with one implementation per kind: [`local`] (processes on this host;
//! engines as one `mpiexec -n N` job when mpiexec exists), [`mpi`] (mpiexec with configurable
//! command and arguments), [`batch`] (PBS/Torque, SGE, Slurm, LSF, HTCondor: a pure renderer per
//! system plus submit / status / cancel), [`ssh`] (engines or the controller on other hosts, with
//! the connection files copied by scp) and [`winhpc`] (Windows HPC job XML).
//!
//! Every external command goes through the [`Runner`] trait, so tests use a [`RecordingRunner`]
//! that records commands and answers with scripted outputs instead of executing; the dry run
//! (`rpar jobscript`) is [`Launcher::render`], which runs nothing. What a launcher started is a
//! list of [`Handle`]s,
//! which are serializable: the cluster file stores them, and `rpar cluster stop` in another shell
//! stops them (SIGTERM, then SIGKILL after 5 s for processes; the batch system's delete command
//! for jobs).

pub mod batch;
mod handle;
pub mod kind;
pub mod local;
mod recording;
mod runner;
pub mod ssh;
#[cfg(test)]
mod tests;
pub mod winhpc;

pub(crate) use handle::remote_argv;
pub use handle::{
    process_alive, process_start_time, session_members, terminate_session, Handle, Liveness,
};
pub use kind::LauncherKind;
pub use recording::RecordingRunner;
pub use runner::{which, CmdOutput, Runner, SystemRunner};

use std::io;
use std::path::{Path, PathBuf};

pub use crate::jobscript::Role;

/// An error from a launcher, with the context needed to act on it.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LaunchError {
    #[error("{system}: `{command}` failed (exit {code:?}){script}: {stderr}", script = fmt_script(.script))]
    Submit {
        system: LauncherKind,
        command: String,
        code: Option<i32>,
        stderr: String,
        script: Option<PathBuf>,
    },
    #[error("{system}: no job id in the output of `{command}` (job_id_regexp {regexp:?}){script}: {output:?}", script = fmt_script(.script))]
    NoJobId {
        system: LauncherKind,
        command: String,
        regexp: String,
        output: String,
        script: Option<PathBuf>,
    },
    #[error("{system}: cannot cancel job {job_id} with `{command}`: {stderr}")]
    Cancel {
        system: LauncherKind,
        job_id: String,
        command: String,
        stderr: String,
    },
    #[error("cannot run `{program}`: {err}{hint}")]
    Spawn {
        program: String,
        err: io::Error,
        hint: String,
    },
    #[error("{0}")]
    Template(#[from] crate::jobscript::TemplateError),
    #[error("{what}: {err}")]
    Io { what: String, err: io::Error },
    #[error("the `{kind}` launcher needs a template: set c.BatchSystemLauncher.batch_template_file (or batch_template) in ipcluster_config.py")]
    NeedsTemplate { kind: LauncherKind },
    #[error("{kind} has no built-in {} template (a batch system takes one from c.BatchSystemLauncher.batch_template_file)", role.name())]
    NoBuiltinTemplate { kind: LauncherKind, role: Role },
    #[error(
        "no submit command for the `{kind}` launcher: set c.BatchSystemLauncher.submit_command"
    )]
    NoSubmitCommand { kind: LauncherKind },
    #[error("the `{kind}` launcher has no {} job script to show (only batch systems, mpiexec and winhpc do)", role.name())]
    NoJobScript { kind: LauncherKind, role: Role },
    #[error("{0}")]
    Config(String),
}

fn fmt_script(s: &Option<PathBuf>) -> String {
    s.as_ref()
        .map(|p| format!(" (script {})", p.display()))
        .unwrap_or_default()
}

/// Everything a launcher needs to start its part of a cluster.
#[derive(Debug, Clone, Default)]
pub struct LaunchSpec {
    /// Number of engines.
    pub n: usize,
    pub profile_dir: PathBuf,
    pub cluster_id: String,
    pub controller_cmd: Vec<String>,
    pub controller_args: Vec<String>,
    pub engine_cmd: Vec<String>,
    pub engine_args: Vec<String>,
    /// Environment for launched processes and submit commands (IPP_* and `environment`).
    pub env: Vec<(String, String)>,
    pub work_dir: PathBuf,
    /// Distinguishes several engine sets of one cluster (file names).
    pub set_id: String,
}

impl LaunchSpec {
    pub fn log_dir(&self) -> PathBuf {
        self.profile_dir.join("log")
    }
    /// `ipcontroller-<cluster_id>` / `ipengine-<cluster_id>-<set>`, for output file names.
    pub fn stem(&self, role: Role) -> String {
        let id = if self.cluster_id.is_empty() {
            "default"
        } else {
            &self.cluster_id
        };
        match role {
            Role::Controller => format!("ipcontroller-{id}"),
            Role::Engine => format!("ipengine-{id}-{}", self.set_id),
            Role::Cluster => format!("ipcluster-{id}"),
        }
    }
}

/// Starts one part (the controller, or a set of engines, or both in one job) of a cluster.
pub trait Launcher {
    /// The launcher's kind, as in `--engines=KIND`.
    fn kind(&self) -> LauncherKind;
    /// Start, returning what to watch and stop.
    fn start(
        &self,
        spec: &LaunchSpec,
        role: Role,
        runner: &dyn Runner,
    ) -> Result<Vec<Handle>, LaunchError>;
    /// The job script (or job description) `start` would submit, for the dry run
    /// (`rpar jobscript`); pure.
    fn render(&self, _spec: &LaunchSpec, role: Role) -> Result<String, LaunchError> {
        Err(LaunchError::NoJobScript {
            kind: self.kind(),
            role,
        })
    }
    /// How many engines `start` starts when asked for `n` (the ssh launcher's hosts dict
    /// decides its own count).
    fn engine_count(&self, n: usize) -> usize {
        n
    }
}

/// Create the log directory, mapping errors.
pub(crate) fn ensure_dir(p: &Path) -> Result<(), LaunchError> {
    std::fs::create_dir_all(p).map_err(|err| LaunchError::Io {
        what: format!("create {}", p.display()),
        err,
    })
}

/// Write a job script or job description into the log directory (created if need be).
pub(crate) fn write_log_file(
    spec: &LaunchSpec,
    path: &Path,
    text: &str,
) -> Result<(), LaunchError> {
    ensure_dir(&spec.log_dir())?;
    std::fs::write(path, text).map_err(|err| LaunchError::Io {
        what: format!("write {}", path.display()),
        err,
    })
}

/// Spawn a local process and return its handle.
pub(crate) fn spawn_process(
    runner: &dyn Runner,
    argv: Vec<String>,
    spec: &LaunchSpec,
    output: PathBuf,
) -> Result<Handle, LaunchError> {
    ensure_dir(&spec.log_dir())?;
    let cwd = if spec.work_dir.as_os_str().is_empty() {
        PathBuf::from(".")
    } else {
        spec.work_dir.clone()
    };
    let pid = runner.spawn(&argv, &spec.env, &cwd, &output).map_err(|err| LaunchError::Spawn {
        program: argv.first().cloned().unwrap_or_default(),
        hint: if err.kind() == io::ErrorKind::NotFound {
            " (not found: install it, put it on PATH, or set its full path in ipcluster_config.py, e.g. c.EngineLauncher.engine_cmd = ['/path/to/rpar-engine'])".into()
        } else {
            String::new()
        },
        err,
    })?;
    Ok(Handle::Process {
        pid,
        start_time: process_start_time(pid),
        argv,
        output,
    })
}
