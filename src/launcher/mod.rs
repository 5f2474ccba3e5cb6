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
pub mod kind;
pub mod local;
mod recording;
pub mod ssh;
#[cfg(test)]
mod tests;
pub mod winhpc;

pub use kind::LauncherKind;
pub use recording::RecordingRunner;

use serde::{Deserialize, Serialize};
use std::io;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

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

/// Output of a finished command.
#[derive(Debug, Clone, Default)]
pub struct CmdOutput {
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl CmdOutput {
    pub fn success(&self) -> bool {
        self.code == Some(0)
    }
}

/// Runs external commands. The real one executes; tests substitute a recorder.
pub trait Runner {
    /// Run to completion.
    fn run(
        &self,
        argv: &[String],
        stdin: Option<&str>,
        env: &[(String, String)],
    ) -> io::Result<CmdOutput>;
    /// Start a long-running process in its own session, stdout and stderr to `output`, stdin
    /// from /dev/null. Returns its pid.
    fn spawn(
        &self,
        argv: &[String],
        env: &[(String, String)],
        cwd: &Path,
        output: &Path,
    ) -> io::Result<u32>;
    /// Is `program` found (a path, or on PATH)?
    fn which(&self, program: &str) -> Option<PathBuf> {
        which(program)
    }
}

/// Executes commands for real.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemRunner;

impl Runner for SystemRunner {
    fn run(
        &self,
        argv: &[String],
        stdin: Option<&str>,
        env: &[(String, String)],
    ) -> io::Result<CmdOutput> {
        let (prog, args) = argv
            .split_first()
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "empty command"))?;
        let mut cmd = Command::new(prog);
        cmd.args(args)
            .envs(env.iter().map(|(k, v)| (k, v)))
            .stdin(if stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn()?;
        if let (Some(text), Some(mut w)) = (stdin, child.stdin.take()) {
            use std::io::Write;
            w.write_all(text.as_bytes())?;
        }
        let out = child.wait_with_output()?;
        Ok(CmdOutput {
            code: out.status.code(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        })
    }

    fn spawn(
        &self,
        argv: &[String],
        env: &[(String, String)],
        cwd: &Path,
        output: &Path,
    ) -> io::Result<u32> {
        use std::os::unix::process::CommandExt;
        let (prog, args) = argv
            .split_first()
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "empty command"))?;
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(output)?;
        let mut cmd = Command::new(prog);
        cmd.args(args)
            .envs(env.iter().map(|(k, v)| (k, v)))
            .current_dir(cwd)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        // SAFETY: setsid is async-signal-safe; nothing else runs between fork and exec.
        unsafe {
            cmd.pre_exec(|| {
                libc::setsid();
                Ok(())
            });
        }
        let child = cmd.spawn()?;
        let pid = child.id();
        // Reap it in the background so a finished child does not linger as a zombie while we run.
        std::thread::spawn(move || {
            let mut child = child;
            let _ = child.wait();
        });
        Ok(pid)
    }
}

/// Find a program on PATH (or check a path).
pub fn which(program: &str) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let ok = |p: &Path| {
        p.is_file()
            && p.metadata()
                .map(|m| m.permissions().mode() & 0o111 != 0)
                .unwrap_or(false)
    };
    if program.contains('/') {
        let p = PathBuf::from(program);
        return ok(&p).then_some(p);
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(program))
        .find(|p| ok(p))
}

/// What a launcher started; stored in the cluster file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Handle {
    /// A local process (its own session; `pid` is also its session and group id).
    Process {
        pid: u32,
        /// Start time (clock ticks since boot, /proc/<pid>/stat field 22), to detect pid reuse.
        start_time: u64,
        argv: Vec<String>,
        output: PathBuf,
    },
    /// A batch job.
    Job {
        system: LauncherKind,
        job_id: String,
        script: PathBuf,
        output: PathBuf,
        delete_command: Vec<String>,
        status_command: Vec<String>,
    },
    /// A process started over ssh (a session leader on `host`).
    Remote {
        host: String,
        ssh: Vec<String>,
        pid: u32,
        output: String,
    },
}

/// Whether something is still running.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Liveness {
    Running,
    /// Queued or starting (batch jobs), with the batch system's word for it.
    Pending(String),
    Finished,
    Unknown,
}

impl Handle {
    /// One line for humans.
    pub fn describe(&self) -> String {
        match self {
            Handle::Process {
                pid, argv, output, ..
            } => {
                format!(
                    "process {pid} ({}), output {}",
                    argv.first().map(String::as_str).unwrap_or("?"),
                    output.display()
                )
            }
            Handle::Job {
                system,
                job_id,
                script,
                output,
                ..
            } => {
                format!(
                    "{system} job {job_id} (script {}, output {})",
                    script.display(),
                    output.display()
                )
            }
            Handle::Remote {
                host, pid, output, ..
            } => format!("process {pid} on {host}, output {host}:{output}"),
        }
    }

    /// Where to look when it fails.
    pub fn output(&self) -> String {
        match self {
            Handle::Process { output, .. } | Handle::Job { output, .. } => {
                output.display().to_string()
            }
            Handle::Remote { host, output, .. } => format!("{host}:{output}"),
        }
    }

    pub fn liveness(&self, runner: &dyn Runner) -> Liveness {
        match self {
            Handle::Process {
                pid, start_time, ..
            } => {
                if process_alive(*pid, *start_time) {
                    Liveness::Running
                } else {
                    Liveness::Finished
                }
            }
            Handle::Job {
                system,
                job_id,
                status_command,
                ..
            } => batch::job_liveness(*system, job_id, status_command, runner),
            Handle::Remote { host, ssh, pid, .. } => {
                let argv = remote_argv(ssh, host, format!("kill -0 {pid}"));
                match runner.run(&argv, None, &[]) {
                    Ok(o) if o.success() => Liveness::Running,
                    Ok(o) if o.code == Some(1) => Liveness::Finished,
                    _ => Liveness::Unknown,
                }
            }
        }
    }

    /// Stop it: SIGTERM to the process's session, SIGKILL after `grace`; cancel jobs.
    pub fn stop(&self, runner: &dyn Runner, grace: Duration) -> Result<(), LaunchError> {
        match self {
            Handle::Process {
                pid, start_time, ..
            } => {
                terminate_session(*pid, *start_time, grace);
                Ok(())
            }
            Handle::Job {
                system,
                job_id,
                delete_command,
                ..
            } => {
                let mut argv = delete_command.clone();
                argv.push(job_id.clone());
                let out = runner
                    .run(&argv, None, &[])
                    .map_err(|e| LaunchError::Cancel {
                        system: *system,
                        job_id: job_id.clone(),
                        command: argv.join(" "),
                        stderr: e.to_string(),
                    })?;
                if !out.success() && !matches!(self.liveness(runner), Liveness::Finished) {
                    return Err(LaunchError::Cancel {
                        system: *system,
                        job_id: job_id.clone(),
                        command: argv.join(" "),
                        stderr: format!("{}{}", out.stdout.trim(), out.stderr.trim()),
                    });
                }
                Ok(())
            }
            Handle::Remote { host, ssh, pid, .. } => {
                let tenths = grace.as_millis() / 100;
                let script = format!(
                    "kill -TERM -- -{pid} 2>/dev/null || kill -TERM {pid} 2>/dev/null; i=0; \
                     while kill -0 -- -{pid} 2>/dev/null && [ $i -lt {tenths} ]; do sleep 0.1; i=$((i+1)); done; \
                     kill -KILL -- -{pid} 2>/dev/null; true"
                );
                let argv = remote_argv(ssh, host, script);
                runner.run(&argv, None, &[]).map_err(|e| LaunchError::Io {
                    what: format!("ssh {host}"),
                    err: e,
                })?;
                Ok(())
            }
        }
    }
}

/// `ssh ... host command`: run a shell command on `host` with the ssh command line `ssh`.
pub(crate) fn remote_argv(ssh: &[String], host: &str, command: String) -> Vec<String> {
    let mut argv = ssh.to_vec();
    argv.push(host.to_string());
    argv.push(command);
    argv
}

/// Field 22 of /proc/<pid>/stat (start time) and field 3 (state), if the process exists.
fn proc_stat(pid: u32) -> Option<(char, u64, u32)> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &text[text.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // rest starts at field 3 (state); session is field 6, start time field 22
    let state = fields.first()?.chars().next()?;
    let session: u32 = fields.get(3)?.parse().ok()?;
    let start: u64 = fields.get(19)?.parse().ok()?;
    Some((state, start, session))
}

/// The start time of a process (0 if unknown), stored in handles to detect pid reuse.
pub fn process_start_time(pid: u32) -> u64 {
    proc_stat(pid).map(|(_, s, _)| s).unwrap_or(0)
}

/// Is `pid` alive and the same process (not a zombie, same start time)?
pub fn process_alive(pid: u32, start_time: u64) -> bool {
    match proc_stat(pid) {
        Some((state, start, _)) => {
            state != 'Z' && state != 'X' && (start_time == 0 || start == start_time)
        }
        None => false,
    }
}

/// Every live process whose session is `sid`.
pub fn session_members(sid: u32) -> Vec<u32> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(
            |pid| matches!(proc_stat(*pid), Some((st, _, s)) if s == sid && st != 'Z' && st != 'X'),
        )
        .collect()
}

fn signal_session(sid: u32, sig: libc::c_int) {
    // SAFETY: plain kill(2) calls on pids we read from /proc.
    unsafe {
        libc::kill(-(sid as libc::pid_t), sig);
    }
    for p in session_members(sid) {
        // SAFETY: as above.
        unsafe {
            libc::kill(p as libc::pid_t, sig);
        }
    }
}

/// SIGTERM every process of the session led by `pid`, then SIGKILL what is left after `grace`.
pub fn terminate_session(pid: u32, start_time: u64, grace: Duration) {
    if !process_alive(pid, start_time) && session_members(pid).is_empty() {
        return;
    }
    signal_session(pid, libc::SIGTERM);
    let deadline = Instant::now() + grace;
    while Instant::now() < deadline {
        if !process_alive(pid, start_time) && session_members(pid).is_empty() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    signal_session(pid, libc::SIGKILL);
    let deadline = Instant::now() + Duration::from_secs(2);
    while Instant::now() < deadline
        && (process_alive(pid, start_time) || !session_members(pid).is_empty())
    {
        std::thread::sleep(Duration::from_millis(20));
    }
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
