//! What a launcher started ([`Handle`]: a local process, a batch job, a remote process), as
//! stored in the cluster file, and how it is checked ([`Liveness`]) and stopped from any shell:
//! process sessions signalled with a grace period, jobs deleted with the batch system's command.

use super::{batch, LaunchError, LauncherKind, Runner};
use serde::{Deserialize, Serialize};
use std::path::PathBuf;
use std::time::{Duration, Instant};

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
