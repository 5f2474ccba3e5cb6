//! From `ipcluster_config.py` + the command line to launchers: which kind starts the controller
//! and the engines, with which programs, arguments and batch settings.
//!
//! Launcher names are ipyparallel's entry-point names (`local`, `mpi`, `ssh`, `pbs`, `sge`,
//! `slurm`, `lsf`, `htcondor`, `winhpc`, `batch`), case-insensitive, or class names in any
//! spelling the old docs use (`IPython.parallel.apps.launcher.MPIExecEngineSetLauncher`,
//! `PBSControllerLauncher`, `ipyparallel.cluster.launcher.SlurmEngineSetLauncher`).

use crate::launcher::batch::{BatchLauncher, BatchSettings};
use crate::launcher::local::{LocalLauncher, MpiCommand};
use crate::launcher::ssh::{parse_engines, SshLauncher, SshSettings};
use crate::launcher::winhpc::{WinHpcLauncher, WinHpcSettings};
use crate::launcher::{Launcher, Role};
use rpar_core::config::{Config, ConfigError};
use std::path::{Path, PathBuf};

/// The launcher kinds rpar knows.
pub const KINDS: &[&str] = &[
    "local", "mpi", "ssh", "pbs", "sge", "slurm", "lsf", "htcondor", "winhpc", "batch",
];

/// Normalize a launcher name or class name to a kind.
pub fn launcher_kind(name: &str) -> Option<&'static str> {
    let last = name.rsplit('.').next().unwrap_or(name);
    let mut base = last.to_string();
    for suffix in [
        "EngineSetLauncher",
        "ControllerLauncher",
        "EngineLauncher",
        "Launcher",
    ] {
        if let Some(b) = base.strip_suffix(suffix) {
            base = b.to_string();
            break;
        }
    }
    let k = base.to_ascii_lowercase();
    let k = match k.as_str() {
        "mpiexec" | "mpi" => "mpi",
        "torque" => "pbs",
        "gridengine" => "sge",
        "condor" => "htcondor",
        "windowshpc" => "winhpc",
        other => other,
    };
    KINDS.iter().copied().find(|x| *x == k)
}

/// The config class of a launcher kind and role, e.g. (slurm, Engine) → SlurmEngineSetLauncher.
pub fn config_class(kind: &str, role: Role) -> String {
    let prefix = match kind {
        "local" => "Local",
        "mpi" => "MPI",
        "ssh" => "SSH",
        "pbs" => "PBS",
        "sge" => "SGE",
        "slurm" => "Slurm",
        "lsf" => "LSF",
        "htcondor" => "HTCondor",
        "winhpc" => "WindowsHPC",
        _ => "Batch",
    };
    match role {
        Role::Controller => format!("{prefix}ControllerLauncher"),
        _ => format!("{prefix}EngineSetLauncher"),
    }
}

/// A program next to this executable (target/debug/rpar-engine beside target/debug/rpar), else
/// the bare name (looked up on PATH).
pub fn default_program(name: &str) -> String {
    if let Some(dir) = std::env::current_exe()
        .ok()
        .and_then(|p| p.parent().map(Path::to_path_buf))
    {
        let p = dir.join(name);
        if p.is_file() {
            return p.display().to_string();
        }
    }
    name.to_string()
}

fn e2s(e: ConfigError) -> String {
    e.to_string()
}

/// The programs and arguments for a launcher's role.
#[derive(Debug, Clone, Default)]
pub struct Programs {
    pub controller_cmd: Vec<String>,
    pub controller_args: Vec<String>,
    pub engine_cmd: Vec<String>,
    pub engine_args: Vec<String>,
}

/// Programs from config (`ControllerLauncher.controller_cmd`/`controller_args`,
/// `EngineLauncher.engine_cmd`/`engine_args`, through the kind's class lineage).
pub fn programs(cfg: &Config, ctrl_kind: &str, eng_kind: &str) -> Result<Programs, String> {
    let cc = config_class(ctrl_kind, Role::Controller);
    let ec = config_class(eng_kind, Role::Engine);
    Ok(Programs {
        controller_cmd: cfg
            .str_list(&cc, "controller_cmd")
            .map_err(e2s)?
            .unwrap_or_else(|| vec![default_program("rpar-controller")]),
        controller_args: cfg
            .str_list(&cc, "controller_args")
            .map_err(e2s)?
            .unwrap_or_default(),
        engine_cmd: cfg
            .str_list(&ec, "engine_cmd")
            .map_err(e2s)?
            .unwrap_or_else(|| vec![default_program("rpar-engine")]),
        engine_args: cfg
            .str_list(&ec, "engine_args")
            .map_err(e2s)?
            .unwrap_or_default(),
    })
}

/// Read a batch template file: absolute, else relative to the working directory, else to the
/// profile directory.
fn read_template(file: &str, profile_dir: &Path, class: &str) -> Result<(String, String), String> {
    let p = PathBuf::from(file);
    let candidates = if p.is_absolute() {
        vec![p.clone()]
    } else {
        vec![p.clone(), profile_dir.join(&p)]
    };
    for c in &candidates {
        if let Ok(text) = std::fs::read_to_string(c) {
            return Ok((text, c.display().to_string()));
        }
    }
    Err(format!(
        "{class}.batch_template_file = {file:?}: no such file (looked in {}); fix the path in ipcluster_config.py",
        candidates.iter().map(|c| c.display().to_string()).collect::<Vec<_>>().join(" and ")
    ))
}

/// Batch settings for a kind and role, from config.
pub fn batch_settings(
    cfg: &Config,
    kind: &str,
    role: Role,
    profile_dir: &Path,
) -> Result<BatchSettings, String> {
    let class = config_class(kind, role);
    let mut s =
        BatchSettings::defaults(kind).ok_or_else(|| format!("{kind} is not a batch system"))?;
    let get = |t: &str| cfg.str(&class, t).map_err(e2s);
    if let Some(t) = get("batch_template")?.filter(|t| !t.is_empty()) {
        let src = cfg
            .get(&class, "batch_template")
            .map(|s| s.source.to_string())
            .unwrap_or_default();
        s.template = Some((t, format!("batch_template ({src})")));
    } else if let Some(f) = get("batch_template_file")?.filter(|t| !t.is_empty()) {
        s.template = Some(read_template(&f, profile_dir, &class)?);
    }
    for (field, name) in [
        (&mut s.queue, "queue"),
        (&mut s.account, "account"),
        (&mut s.qos, "qos"),
        (&mut s.pe, "pe"),
    ] {
        if let Ok(Some(v)) = cfg.str(&class, name) {
            *field = v;
        }
    }
    if let Some(v) = cfg.get(&class, "timelimit") {
        s.timelimit = match &v.value {
            serde_json::Value::String(x) => x.clone(),
            serde_json::Value::Null => String::new(),
            other => other.to_string(),
        };
    }
    if let Some(o) = get("options")? {
        s.options = o
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .map(|l| l.trim_start_matches("#SBATCH").trim().to_string())
            .collect();
    }
    let mut explicit = [false; 3];
    for (i, (field, name)) in [
        (&mut s.submit_command, "submit_command"),
        (&mut s.delete_command, "delete_command"),
        (&mut s.status_command, "status_command"),
    ]
    .into_iter()
    .enumerate()
    {
        if let Some(v) = cfg.str_list(&class, name).map_err(e2s)? {
            *field = v;
            explicit[i] = true;
        }
    }
    // A submit command given as a path (e.g. /opt/torque/bin/qsub, when several batch systems'
    // qsub are installed) implies the delete and status commands beside it.
    if let Some(dir) = s
        .submit_command
        .first()
        .map(Path::new)
        .filter(|p| p.is_absolute())
        .and_then(Path::parent)
    {
        for (i, field) in [(1, &mut s.delete_command), (2, &mut s.status_command)] {
            if !explicit[i] {
                if let Some(first) = field.first_mut() {
                    let sibling = dir.join(first.as_str());
                    if sibling.is_file() {
                        *first = sibling.display().to_string();
                    }
                }
            }
        }
    }
    if let Some(r) = get("job_id_regexp")? {
        regex::Regex::new(&r).map_err(|e| format!("{class}.job_id_regexp {r:?}: {e}"))?;
        s.job_id_regexp = r;
    }
    if let Some(g) = cfg.i64(&class, "job_id_regexp_group").map_err(e2s)? {
        s.job_id_regexp_group = g.max(0) as usize;
    }
    if let Some(ns) = cfg
        .get(&class, "namespace")
        .and_then(|v| v.value.as_object().cloned())
    {
        s.namespace = ns;
    }
    if let Some(f) = get("output_file")?.filter(|f| !f.is_empty()) {
        s.output_file = Some(PathBuf::from(f));
    }
    if let Some(f) = get("batch_file_name")?.filter(|f| !f.is_empty()) {
        s.batch_file_name = Some(f);
    }
    // mpiexec inside the job: only when configured (else the script's default)
    let mpi = mpi_command(cfg)?;
    if cfg.get("MPILauncher", "mpi_cmd").is_some() || cfg.get("MPILauncher", "mpi_args").is_some() {
        s.mpiexec = crate::jobscript::shell_join(&[mpi.mpi_cmd, mpi.mpi_args].concat());
    }
    Ok(s)
}

/// `MPILauncher.mpi_cmd` / `mpi_args`.
pub fn mpi_command(cfg: &Config) -> Result<MpiCommand, String> {
    let mut m = MpiCommand::default();
    if let Some(c) = cfg
        .str_list("MPIEngineSetLauncher", "mpi_cmd")
        .map_err(e2s)?
    {
        m.mpi_cmd = c;
    }
    if let Some(a) = cfg
        .str_list("MPIEngineSetLauncher", "mpi_args")
        .map_err(e2s)?
    {
        m.mpi_args = a;
    }
    Ok(m)
}

/// Build the launcher of `kind` for `role`.
pub fn make_launcher(
    cfg: &Config,
    kind: &str,
    role: Role,
    profile_dir: &Path,
) -> Result<Box<dyn Launcher>, String> {
    let class = config_class(kind, role);
    Ok(match kind {
        "local" => {
            let delay = cfg.f64(&class, "delay").map_err(e2s)?.unwrap_or(0.1);
            Box::new(LocalLauncher::local(mpi_command(cfg)?, delay))
        }
        "mpi" => Box::new(LocalLauncher::mpi(mpi_command(cfg)?)),
        "ssh" => {
            let mut s = SshSettings::default();
            if let Some(v) = cfg.str_list(&class, "ssh_cmd").map_err(e2s)? {
                s.ssh_cmd = v;
            }
            if let Some(v) = cfg.str_list(&class, "ssh_args").map_err(e2s)? {
                s.ssh_args = v;
            }
            if let Some(v) = cfg.str_list(&class, "scp_cmd").map_err(e2s)? {
                s.scp_cmd = v;
            }
            if let Some(v) = cfg.str_list(&class, "scp_args").map_err(e2s)? {
                s.scp_args = v;
            }
            s.user = cfg.str(&class, "user").map_err(e2s)?.unwrap_or_default();
            s.hostname = cfg
                .str(&class, "hostname")
                .map_err(e2s)?
                .unwrap_or_default();
            s.remote_profile_dir = cfg
                .str(&class, "remote_profile_dir")
                .map_err(e2s)?
                .filter(|x| !x.is_empty());
            s.mpi = mpi_command(cfg)?;
            s.program = cfg
                .str_list(&class, "program")
                .map_err(e2s)?
                .filter(|p| !p.is_empty());
            s.program_args = cfg.str_list(&class, "program_args").map_err(e2s)?;
            if role == Role::Controller {
                s.reuse_files = cfg
                    .bool(&class, "reuse_files")
                    .map_err(e2s)?
                    .unwrap_or(true);
            }
            if let Some(t) = cfg.f64(&class, "connection_info_timeout").map_err(e2s)? {
                s.connection_info_timeout = t;
            }
            if role != Role::Controller {
                if let Some(e) = cfg.get(&class, "engines") {
                    s.engines =
                        parse_engines(&e.value).map_err(|m| format!("{}: {m}", e.source))?;
                }
            }
            Box::new(SshLauncher { settings: s })
        }
        "winhpc" => {
            let mut s = WinHpcSettings::default();
            if let Some(v) = cfg.str(&class, "job_cmd").map_err(e2s)? {
                s.job_cmd = v;
            }
            s.scheduler = cfg
                .str(&class, "scheduler")
                .map_err(e2s)?
                .unwrap_or_default();
            s.job_file_name = cfg.str(&class, "job_file_name").map_err(e2s)?;
            Box::new(WinHpcLauncher { settings: s })
        }
        "pbs" | "sge" | "slurm" | "lsf" | "htcondor" | "batch" => Box::new(BatchLauncher::new(
            batch_settings(cfg, kind, role, profile_dir)?,
        )),
        other => {
            return Err(format!(
                "unknown launcher {other:?}; choose one of {}",
                KINDS.join(", ")
            ))
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn launcher_names() {
        assert_eq!(
            launcher_kind("IPython.parallel.apps.launcher.MPIExecEngineSetLauncher"),
            Some("mpi")
        );
        assert_eq!(
            launcher_kind("IPython.parallel.apps.launcher.PBSControllerLauncher"),
            Some("pbs")
        );
        assert_eq!(
            launcher_kind("ipyparallel.cluster.launcher.SlurmEngineSetLauncher"),
            Some("slurm")
        );
        assert_eq!(launcher_kind("SSHEngineSetLauncher"), Some("ssh"));
        assert_eq!(launcher_kind("WindowsHPCEngineSetLauncher"), Some("winhpc"));
        assert_eq!(launcher_kind("MPI"), Some("mpi"));
        assert_eq!(launcher_kind("Local"), Some("local"));
        assert_eq!(launcher_kind("sshproxy"), None);
        assert_eq!(config_class("sge", Role::Engine), "SGEEngineSetLauncher");
    }
}
