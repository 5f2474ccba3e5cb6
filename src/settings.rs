//! From `ipcluster_config.py` + the command line to launchers: which kind starts the controller
//! and the engines, with which programs, arguments and batch settings.
//!
//! The kinds are [`LauncherKind`]s (parsed from ipyparallel's entry-point or class names);
//! everything here is read before anything is started, and a setting that cannot be used is a
//! [`SettingsError`] naming it.

use crate::launcher::batch::{BatchLauncher, BatchSettings};
use crate::launcher::local::{LocalLauncher, MpiCommand};
use crate::launcher::ssh::{parse_engines, SshLauncher, SshSettings};
use crate::launcher::winhpc::{WinHpcLauncher, WinHpcSettings};
use crate::launcher::{Launcher, LauncherKind, Role};
use rpar_core::config::{Config, ConfigError};
use std::path::{Path, PathBuf};

/// A launcher setting that cannot be used, naming the setting and the fix.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SettingsError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("{class}.batch_template_file = {file:?}: no such file (looked in {looked}); fix the path in ipcluster_config.py")]
    TemplateFile {
        class: String,
        file: String,
        looked: String,
    },
    #[error("{class}.job_id_regexp {regexp:?} is not a regular expression: {err}")]
    JobIdRegexp {
        class: String,
        regexp: String,
        err: regex::Error,
    },
    #[error("{source_}: {message}")]
    SshEngines { source_: String, message: String },
    #[error("{0} is not a batch system")]
    NotBatch(LauncherKind),
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
pub fn programs(
    cfg: &Config,
    ctrl_kind: LauncherKind,
    eng_kind: LauncherKind,
) -> Result<Programs, SettingsError> {
    let cc = ctrl_kind.config_class(Role::Controller);
    let ec = eng_kind.config_class(Role::Engine);
    Ok(Programs {
        controller_cmd: cfg
            .str_list(&cc, "controller_cmd")?
            .unwrap_or_else(|| vec![default_program("rpar-controller")]),
        controller_args: cfg.str_list(&cc, "controller_args")?.unwrap_or_default(),
        engine_cmd: cfg
            .str_list(&ec, "engine_cmd")?
            .unwrap_or_else(|| vec![default_program("rpar-engine")]),
        engine_args: cfg.str_list(&ec, "engine_args")?.unwrap_or_default(),
    })
}

/// Read a batch template file: absolute, else relative to the working directory, else to the
/// profile directory.
fn read_template(
    file: &str,
    profile_dir: &Path,
    class: &str,
) -> Result<(String, String), SettingsError> {
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
    Err(SettingsError::TemplateFile {
        class: class.to_string(),
        file: file.to_string(),
        looked: candidates
            .iter()
            .map(|c| c.display().to_string())
            .collect::<Vec<_>>()
            .join(" and "),
    })
}

/// Batch settings for a kind and role, from config.
pub fn batch_settings(
    cfg: &Config,
    kind: LauncherKind,
    role: Role,
    profile_dir: &Path,
) -> Result<BatchSettings, SettingsError> {
    let class = kind.config_class(role);
    let mut s = BatchSettings::for_kind(kind).ok_or(SettingsError::NotBatch(kind))?;
    let get = |t: &str| cfg.str(&class, t);
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
        if let Some(v) = cfg.str_list(&class, name)? {
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
        if let Err(err) = regex::Regex::new(&r) {
            return Err(SettingsError::JobIdRegexp {
                class,
                regexp: r,
                err,
            });
        }
        s.job_id_regexp = r;
    }
    if let Some(g) = cfg.i64(&class, "job_id_regexp_group")? {
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
pub fn mpi_command(cfg: &Config) -> Result<MpiCommand, SettingsError> {
    let mut m = MpiCommand::default();
    if let Some(c) = cfg.str_list("MPIEngineSetLauncher", "mpi_cmd")? {
        m.mpi_cmd = c;
    }
    if let Some(a) = cfg.str_list("MPIEngineSetLauncher", "mpi_args")? {
        m.mpi_args = a;
    }
    Ok(m)
}

/// Build the launcher of `kind` for `role`.
pub fn make_launcher(
    cfg: &Config,
    kind: LauncherKind,
    role: Role,
    profile_dir: &Path,
) -> Result<Box<dyn Launcher>, SettingsError> {
    let class = kind.config_class(role);
    Ok(match kind {
        LauncherKind::Local => {
            let delay = cfg.f64(&class, "delay")?.unwrap_or(0.1);
            Box::new(LocalLauncher::local(mpi_command(cfg)?, delay))
        }
        LauncherKind::Mpi => Box::new(LocalLauncher::mpi(mpi_command(cfg)?)),
        LauncherKind::Ssh => {
            let mut s = SshSettings::default();
            if let Some(v) = cfg.str_list(&class, "ssh_cmd")? {
                s.ssh_cmd = v;
            }
            if let Some(v) = cfg.str_list(&class, "ssh_args")? {
                s.ssh_args = v;
            }
            if let Some(v) = cfg.str_list(&class, "scp_cmd")? {
                s.scp_cmd = v;
            }
            if let Some(v) = cfg.str_list(&class, "scp_args")? {
                s.scp_args = v;
            }
            s.user = cfg.str(&class, "user")?.unwrap_or_default();
            s.hostname = cfg.str(&class, "hostname")?.unwrap_or_default();
            s.remote_profile_dir = cfg
                .str(&class, "remote_profile_dir")?
                .filter(|x| !x.is_empty());
            s.mpi = mpi_command(cfg)?;
            s.program = cfg.str_list(&class, "program")?.filter(|p| !p.is_empty());
            s.program_args = cfg.str_list(&class, "program_args")?;
            if role == Role::Controller {
                s.reuse_files = cfg.bool(&class, "reuse_files")?.unwrap_or(true);
            }
            if let Some(t) = cfg.f64(&class, "connection_info_timeout")? {
                s.connection_info_timeout = t;
            }
            if role != Role::Controller {
                if let Some(e) = cfg.get(&class, "engines") {
                    s.engines =
                        parse_engines(&e.value).map_err(|message| SettingsError::SshEngines {
                            source_: e.source.to_string(),
                            message,
                        })?;
                }
            }
            Box::new(SshLauncher { settings: s })
        }
        LauncherKind::WinHpc => {
            let mut s = WinHpcSettings::default();
            if let Some(v) = cfg.str(&class, "job_cmd")? {
                s.job_cmd = v;
            }
            s.scheduler = cfg.str(&class, "scheduler")?.unwrap_or_default();
            s.job_file_name = cfg.str(&class, "job_file_name")?;
            Box::new(WinHpcLauncher { settings: s })
        }
        LauncherKind::Pbs
        | LauncherKind::Sge
        | LauncherKind::Slurm
        | LauncherKind::Lsf
        | LauncherKind::HtCondor
        | LauncherKind::Batch => Box::new(BatchLauncher::new(batch_settings(
            cfg,
            kind,
            role,
            profile_dir,
        )?)),
    })
}
