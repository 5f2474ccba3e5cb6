//! Batch systems: PBS/Torque, SGE, Slurm, LSF, HTCondor, and `batch` (any system, from a
//! user's template and commands).
//!
//! [`BatchLauncher::render`] is the pure renderer (a job script from the built-in template in
//! `jobscripts/` or the user's `batch_template[_file]`); `start` writes the script to the
//! profile's `log/`, submits it with `submit_command` (LSF: on stdin), and finds the job id with
//! `job_id_regexp`. Status and cancel use the system's commands ([`job_liveness`],
//! [`super::Handle::stop`]). Errors carry the system, the job id and the script path.

use super::LauncherKind;
use super::{
    write_log_file, CmdOutput, Handle, LaunchError, LaunchSpec, Launcher, Liveness, Role, Runner,
};
use crate::jobscript::{self, ScriptVars};
use serde_json::{Map, Value};
use std::path::PathBuf;

/// The settings of one batch launcher (from `ipcluster_config.py` and the command line).
#[derive(Debug, Clone, PartialEq)]
pub struct BatchSettings {
    /// A batch kind: pbs, sge, slurm, lsf, htcondor or batch.
    pub kind: LauncherKind,
    /// A user template: (text, where it came from).
    pub template: Option<(String, String)>,
    pub queue: String,
    pub account: String,
    pub qos: String,
    pub timelimit: String,
    pub walltime: String,
    pub options: Vec<String>,
    pub pe: String,
    pub mpiexec: String,
    pub namespace: Map<String, Value>,
    pub submit_command: Vec<String>,
    pub delete_command: Vec<String>,
    pub status_command: Vec<String>,
    pub job_id_regexp: String,
    pub job_id_regexp_group: usize,
    pub output_file: Option<PathBuf>,
    pub batch_file_name: Option<String>,
}

impl BatchSettings {
    /// The defaults of a system named `kind` (pbs, sge, slurm, lsf, htcondor, batch).
    pub fn defaults(kind: &str) -> Option<BatchSettings> {
        Self::for_kind(LauncherKind::parse(kind)?)
    }

    /// The defaults of a batch kind; `None` for a kind that is not a batch system.
    pub fn for_kind(kind: LauncherKind) -> Option<BatchSettings> {
        let v = |s: &[&str]| s.iter().map(|x| x.to_string()).collect::<Vec<_>>();
        let (submit, delete, status, re, group) = match kind {
            LauncherKind::Pbs => (v(&["qsub"]), v(&["qdel"]), v(&["qstat"]), r"\d+", 0),
            LauncherKind::Sge => (
                v(&["qsub"]),
                v(&["qdel"]),
                v(&["qstat", "-u", "*"]),
                r"\d+",
                0,
            ),
            LauncherKind::Slurm => (
                v(&["sbatch"]),
                v(&["scancel"]),
                v(&["squeue", "-h", "-o", "%T", "-j"]),
                r"\d+",
                0,
            ),
            LauncherKind::Lsf => (
                v(&["bsub"]),
                v(&["bkill"]),
                v(&["bjobs", "-noheader", "-o", "stat"]),
                r"\d+",
                0,
            ),
            LauncherKind::HtCondor => (
                v(&["condor_submit"]),
                v(&["condor_rm"]),
                v(&["condor_q", "-af", "JobStatus"]),
                r"cluster (\d+)",
                1,
            ),
            LauncherKind::Batch => (Vec::new(), Vec::new(), Vec::new(), r"\d+", 0),
            _ => return None,
        };
        Some(BatchSettings {
            kind,
            template: None,
            queue: String::new(),
            account: String::new(),
            qos: String::new(),
            timelimit: String::new(),
            walltime: String::new(),
            options: Vec::new(),
            pe: String::new(),
            mpiexec: String::new(),
            namespace: Map::new(),
            submit_command: submit,
            delete_command: delete,
            status_command: status,
            job_id_regexp: re.to_string(),
            job_id_regexp_group: group,
            output_file: None,
            batch_file_name: None,
        })
    }
}

/// A batch launcher.
#[derive(Debug, Clone)]
pub struct BatchLauncher {
    pub settings: BatchSettings,
}

impl BatchLauncher {
    pub fn new(settings: BatchSettings) -> Self {
        BatchLauncher { settings }
    }

    /// Where the script goes: `<profile>/log/<stem>.<kind>`.
    pub fn script_path(&self, spec: &LaunchSpec, role: Role) -> PathBuf {
        let name = self
            .settings
            .batch_file_name
            .clone()
            .unwrap_or_else(|| format!("{}.{}", spec.stem(role), self.settings.kind));
        spec.log_dir().join(name)
    }

    /// The job's output file.
    pub fn output_path(&self, spec: &LaunchSpec, role: Role) -> PathBuf {
        self.settings
            .output_file
            .clone()
            .unwrap_or_else(|| spec.log_dir().join(format!("{}.out", spec.stem(role))))
    }

    /// The template variables for a job.
    pub fn vars(&self, spec: &LaunchSpec, role: Role) -> ScriptVars {
        let s = &self.settings;
        let join = |v: &[String]| jobscript::shell_join(v);
        ScriptVars {
            n: (role != Role::Controller).then_some(spec.n),
            queue: s.queue.clone(),
            profile_dir: spec.profile_dir.display().to_string(),
            cluster_id: spec.cluster_id.clone(),
            engine: join(&spec.engine_cmd),
            engine_args: join(&spec.engine_args),
            controller: join(&spec.controller_cmd),
            controller_args: join(&spec.controller_args),
            mpiexec: s.mpiexec.clone(),
            output_file: self.output_path(spec, role).display().to_string(),
            account: s.account.clone(),
            qos: s.qos.clone(),
            timelimit: s.timelimit.clone(),
            walltime: s.walltime.clone(),
            pe: s.pe.clone(),
            options: s.options.clone(),
            role: Some(role),
            namespace: s.namespace.clone(),
        }
    }

    /// Render the job script (pure; the dry run).
    pub fn render(&self, spec: &LaunchSpec, role: Role) -> Result<String, LaunchError> {
        let vars = self.vars(spec, role);
        if let Some((text, origin)) = &self.settings.template {
            return Ok(jobscript::render(text, origin, &vars)?);
        }
        let kind = self.settings.kind;
        let system = kind.system().ok_or(LaunchError::NeedsTemplate { kind })?;
        let text = jobscript::builtin(system, role)
            .ok_or(LaunchError::NoBuiltinTemplate { kind, role })?;
        Ok(jobscript::render(
            text,
            &jobscript::builtin_name(system, role),
            &vars,
        )?)
    }

    /// Find the job id in the submit command's output.
    pub fn parse_job_id(&self, out: &str) -> Option<String> {
        let re = regex::Regex::new(&self.settings.job_id_regexp).ok()?;
        let caps = re.captures(out)?;
        caps.get(self.settings.job_id_regexp_group)
            .map(|m| m.as_str().to_string())
    }
}

impl Launcher for BatchLauncher {
    fn kind(&self) -> LauncherKind {
        self.settings.kind
    }

    fn render(&self, spec: &LaunchSpec, role: Role) -> Result<String, LaunchError> {
        BatchLauncher::render(self, spec, role)
    }

    fn start(
        &self,
        spec: &LaunchSpec,
        role: Role,
        runner: &dyn Runner,
    ) -> Result<Vec<Handle>, LaunchError> {
        let s = &self.settings;
        let text = self.render(spec, role)?;
        let script = self.script_path(spec, role);
        write_log_file(spec, &script, &text)?;
        if s.submit_command.is_empty() {
            return Err(LaunchError::NoSubmitCommand { kind: s.kind });
        }
        let stdin_submit = s.kind == LauncherKind::Lsf;
        let mut argv = s.submit_command.clone();
        if s.kind == LauncherKind::Pbs {
            // command-line output options win over the script's with every qsub (Torque's,
            // PBS Pro's, and Slurm's PBS front end, which otherwise writes to the cwd)
            let out = self.output_path(spec, role).display().to_string();
            argv.extend(["-j".to_string(), "oe".to_string(), "-o".to_string(), out]);
        }
        if !stdin_submit {
            argv.push(script.display().to_string());
        }
        let command = argv.join(" ");
        let out = runner
            .run(&argv, stdin_submit.then_some(text.as_str()), &spec.env)
            .map_err(|e| LaunchError::Submit {
                system: s.kind,
                command: command.clone(),
                code: None,
                stderr: e.to_string(),
                script: Some(script.clone()),
            })?;
        if !out.success() {
            return Err(LaunchError::Submit {
                system: s.kind,
                command,
                code: out.code,
                stderr: format!("{} {}", out.stderr.trim(), out.stdout.trim())
                    .trim()
                    .to_string(),
                script: Some(script),
            });
        }
        let job_id = self
            .parse_job_id(&out.stdout)
            .ok_or_else(|| LaunchError::NoJobId {
                system: s.kind,
                command: command.clone(),
                regexp: s.job_id_regexp.clone(),
                output: out.stdout.clone(),
                script: Some(script.clone()),
            })?;
        tracing::info!(system = %s.kind, %job_id, script = %script.display(), "submitted");
        Ok(vec![Handle::Job {
            system: s.kind,
            job_id,
            script,
            output: self.output_path(spec, role),
            delete_command: s.delete_command.clone(),
            status_command: s.status_command.clone(),
        }])
    }
}

/// Ask the batch system about a job.
pub fn job_liveness(
    system: LauncherKind,
    job_id: &str,
    status_command: &[String],
    runner: &dyn Runner,
) -> Liveness {
    if status_command.is_empty() {
        return Liveness::Unknown;
    }
    let mut argv = status_command.to_vec();
    if system != LauncherKind::Sge {
        // SGE's qstat takes no job id (qstat -j has another format): the table is searched
        argv.push(job_id.to_string());
    }
    match runner.run(&argv, None, &[]) {
        Ok(out) => parse_status(system, job_id, &out),
        Err(_) => Liveness::Unknown,
    }
}

/// Interpret a status command's output (pure).
pub fn parse_status(system: LauncherKind, job_id: &str, out: &CmdOutput) -> Liveness {
    let text = out.stdout.trim();
    match system {
        LauncherKind::Slurm => {
            if !out.success() || text.is_empty() {
                return Liveness::Finished;
            }
            match text.lines().next().unwrap_or("").trim() {
                "RUNNING" | "COMPLETING" => Liveness::Running,
                "PENDING" | "CONFIGURING" | "REQUEUED" | "SUSPENDED" => {
                    Liveness::Pending(text.to_string())
                }
                _ => Liveness::Finished,
            }
        }
        LauncherKind::Sge | LauncherKind::Pbs => {
            if !out.success() {
                return Liveness::Finished;
            }
            // a `qstat` table: id, name/prio, ..., state column
            let line = text.lines().find(|l| {
                let first = l.split_whitespace().next().unwrap_or("");
                first == job_id || first.split('.').next() == Some(job_id)
            });
            let Some(line) = line else {
                return Liveness::Finished;
            };
            let cols: Vec<&str> = line.split_whitespace().collect();
            // the state is the 5th column of both tables (SGE: qw, r, Eqw...; PBS: Q, R, C...)
            let state = cols.get(4).copied().unwrap_or("");
            match state {
                s if s.contains('q') || s == "Q" || s == "H" || s == "W" => {
                    Liveness::Pending(s.to_string())
                }
                "C" | "E" | "F" => Liveness::Finished,
                s if s.contains('E') && system == LauncherKind::Sge => {
                    Liveness::Pending(format!("error state {s}"))
                }
                _ => Liveness::Running,
            }
        }
        LauncherKind::Lsf => match text {
            "" => Liveness::Finished,
            "RUN" => Liveness::Running,
            "PEND" | "PSUSP" | "USUSP" | "SSUSP" => Liveness::Pending(text.to_string()),
            _ => Liveness::Finished,
        },
        LauncherKind::HtCondor => match text {
            "" => Liveness::Finished,
            "2" => Liveness::Running,
            "1" | "5" | "7" => Liveness::Pending(text.to_string()),
            _ => Liveness::Finished,
        },
        _ => Liveness::Unknown,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn out(code: i32, s: &str) -> CmdOutput {
        CmdOutput {
            code: Some(code),
            stdout: s.into(),
            stderr: String::new(),
        }
    }

    #[test]
    fn job_ids() {
        let l = |k: &str| BatchLauncher::new(BatchSettings::defaults(k).unwrap());
        assert_eq!(
            l("slurm")
                .parse_job_id("Submitted batch job 1234\n")
                .as_deref(),
            Some("1234")
        );
        assert_eq!(
            l("sge")
                .parse_job_id("Your job 17 (\"rpar-engine\") has been submitted\n")
                .as_deref(),
            Some("17")
        );
        assert_eq!(
            l("pbs").parse_job_id("42.headnode\n").as_deref(),
            Some("42")
        );
        assert_eq!(
            l("lsf")
                .parse_job_id("Job <5150> is submitted to queue <normal>.\n")
                .as_deref(),
            Some("5150")
        );
        assert_eq!(
            l("htcondor")
                .parse_job_id("Submitting job(s).\n1 job(s) submitted to cluster 77.\n")
                .as_deref(),
            Some("77")
        );
        assert_eq!(
            l("slurm").parse_job_id("sbatch: error: invalid partition"),
            None
        );
    }

    #[test]
    fn statuses() {
        assert_eq!(
            parse_status(LauncherKind::Slurm, "3", &out(0, "RUNNING\n")),
            Liveness::Running
        );
        assert!(matches!(
            parse_status(LauncherKind::Slurm, "3", &out(0, "PENDING\n")),
            Liveness::Pending(_)
        ));
        assert_eq!(
            parse_status(LauncherKind::Slurm, "3", &out(0, "")),
            Liveness::Finished
        );
        assert_eq!(
            parse_status(LauncherKind::Slurm, "3", &out(1, "")),
            Liveness::Finished
        );
        let sge = "job-ID  prior   name       user         state submit/start at     queue  slots ja-task-ID\n\
                   -----------------------------------------------------------------\n\
                   5 0.55500 rpar-engin root         qw    11/24/2026 08:00:00                 4\n";
        assert!(matches!(
            parse_status(LauncherKind::Sge, "5", &out(0, sge)),
            Liveness::Pending(_)
        ));
        assert_eq!(
            parse_status(LauncherKind::Sge, "6", &out(0, sge)),
            Liveness::Finished
        );
        assert_eq!(
            parse_status(
                LauncherKind::Sge,
                "5",
                &out(0, &sge.replace(" qw ", " r  "))
            ),
            Liveness::Running
        );
        assert_eq!(
            parse_status(LauncherKind::Lsf, "1", &out(0, "RUN")),
            Liveness::Running
        );
        assert_eq!(
            parse_status(LauncherKind::HtCondor, "1", &out(0, "")),
            Liveness::Finished
        );
    }
}
