//! From the command line and `ipcluster_config.py` to a [`Plan`]: the settings of a start
//! (command line over config over defaults) and the launchers it needs, built with typed errors
//! before anything is started; and the [`LaunchSpec`] each launcher gets.

use super::StartArgs;
use crate::launcher::{LaunchSpec, Launcher, LauncherKind, Role};
use crate::settings::{self, Programs};
use anyhow::{anyhow, bail, Context, Result};
use rpar_core::config::Config;
use rpar_core::profile::{self, ProfileDir};
use std::path::PathBuf;
use std::time::Duration;

/// Everything resolved for a start.
pub(super) struct Resolved {
    pub(super) profile: ProfileDir,
    pub(super) cluster_id: String,
    pub(super) n: usize,
    pub(super) engine_kind: LauncherKind,
    pub(super) controller_kind: LauncherKind,
    pub(super) controller_ip: String,
    pub(super) controller_location: String,
    pub(super) controller_args_extra: Vec<String>,
    pub(super) delay: f64,
    pub(super) engine_timeout: f64,
    pub(super) daemonize: bool,
    pub(super) co_start: bool,
    pub(super) send_env: bool,
    pub(super) environment: Vec<(String, String)>,
    pub(super) work_dir: PathBuf,
    pub(super) stop_grace: Duration,
    pub(super) connection_timeout: f64,
    /// The controller's and the engines' programs and arguments.
    pub(super) programs: Programs,
}

/// What a command starts, and so which launchers it needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Parts {
    /// `rpar cluster start`: the controller (co-started: the one job running both) and the
    /// engines.
    Cluster,
    /// `rpar cluster engines`: engines for a running controller.
    Engines,
    /// `rpar jobscript`: the launcher of this kind in this role, for its script only.
    Script(LauncherKind, Role),
}

/// The settings and the launchers of a command, all resolved.
pub(super) struct Plan {
    pub(super) r: Resolved,
    /// The controller's launcher (co-started: the job's; `rpar jobscript`: the one asked for).
    pub(super) controller: Option<Box<dyn Launcher>>,
    /// The engines' launcher.
    pub(super) engines: Option<Box<dyn Launcher>>,
}

/// The launcher of `kind` in `role`; the error names which part it was for.
fn launcher(
    cfg: &Config,
    kind: LauncherKind,
    role: Role,
    profile: &ProfileDir,
) -> Result<Box<dyn Launcher>> {
    settings::make_launcher(cfg, kind, role, &profile.path).with_context(|| {
        format!(
            "the {} launcher ({kind}, {})",
            role.name(),
            kind.config_class(role)
        )
    })
}

impl Plan {
    /// Resolve the settings and build the launchers `parts` needs, before starting anything.
    pub(super) fn new(args: &StartArgs, parts: Parts) -> Result<Plan> {
        let (r, cfg) = resolve(args, parts)?;
        let (controller, engines) = match parts {
            Parts::Cluster if r.co_start => (
                Some(launcher(&cfg, r.engine_kind, Role::Cluster, &r.profile)?),
                None,
            ),
            Parts::Cluster => (
                Some(launcher(
                    &cfg,
                    r.controller_kind,
                    Role::Controller,
                    &r.profile,
                )?),
                Some(launcher(&cfg, r.engine_kind, Role::Engine, &r.profile)?),
            ),
            Parts::Engines => (
                None,
                Some(launcher(&cfg, r.engine_kind, Role::Engine, &r.profile)?),
            ),
            Parts::Script(kind, role) => (Some(launcher(&cfg, kind, role, &r.profile)?), None),
        };
        Ok(Plan {
            r,
            controller,
            engines,
        })
    }
}

fn kind_from(value: Option<String>, cfg: &Config, trait_: &str) -> Result<LauncherKind> {
    let (v, src) = match value {
        Some(v) => (v, "the command line".to_string()),
        None => match cfg.get("Cluster", trait_) {
            Some(s) => (
                s.value.as_str().unwrap_or("").to_string(),
                s.source.to_string(),
            ),
            None => return Ok(LauncherKind::Local),
        },
    };
    LauncherKind::parse(&v).ok_or_else(|| {
        anyhow!("{src}: unknown launcher {v:?}; choose one of {} (or an ipyparallel launcher class name)", LauncherKind::names())
    })
}

fn resolve(args: &StartArgs, parts: Parts) -> Result<(Resolved, Config)> {
    let profile = ProfileDir::resolve(&args.profile);
    profile
        .ensure()
        .with_context(|| format!("create the profile {}", profile.path.display()))?;
    let mut cfg = Config::load(&profile.path, "ipcluster", &args.config_args)?;
    for w in cfg.warnings() {
        eprintln!("rpar: warning: {w}");
    }
    if let Some(n) = args.n {
        cfg.set_cli("Cluster", "n", serde_json::json!(n))?;
    }
    let cluster_id = match &args.profile.cluster_id {
        Some(c) => c.clone(),
        None => match cfg.str("Cluster", "cluster_id")? {
            Some(c) => c,
            None => profile::cluster_id(None),
        },
    };
    let n = match cfg.get("Cluster", "n") {
        Some(s) if !s.value.is_null() => {
            let n = s.value.as_u64().ok_or_else(|| {
                anyhow!(
                    "{}: Cluster.n must be a positive integer, not {}",
                    s.source,
                    s.value
                )
            })?;
            n as usize
        }
        _ => std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1),
    };
    if n == 0 {
        bail!("--n must be at least 1");
    }
    let (engine_kind, controller_kind, co_start) = match parts {
        Parts::Script(kind, role) => (kind, kind, role == Role::Cluster),
        Parts::Cluster | Parts::Engines => {
            let engine_kind = kind_from(args.engines.clone(), &cfg, "engine_launcher_class")?;
            let controller_kind =
                kind_from(args.controller.clone(), &cfg, "controller_launcher_class")?;
            let co_start = args.co_start
                || cfg
                    .bool(&engine_kind.config_class(Role::Engine), "co_start")?
                    .unwrap_or(false);
            if co_start && !engine_kind.can_co_start() {
                bail!("--co-start runs controller and engines in ONE batch job: use it with --engines=pbs|sge|slurm|lsf (not {engine_kind})");
            }
            // in co-start mode the controller runs in the engines' batch job
            let controller_kind = if co_start {
                engine_kind
            } else {
                controller_kind
            };
            (
                engine_kind,
                controller_kind,
                co_start && parts == Parts::Cluster,
            )
        }
    };
    if let Some(q) = &args.queue {
        // on the launchers' own classes, so it wins over a queue configured on any of them
        for (kind, role) in [
            (engine_kind, Role::Engine),
            (controller_kind, Role::Controller),
        ] {
            if kind.is_batch() {
                cfg.set_cli(&kind.config_class(role), "queue", serde_json::json!(q))?;
            }
        }
    }
    let programs = settings::programs(&cfg, controller_kind, engine_kind)?;
    let environment = match cfg.get("BaseLauncher", "environment") {
        Some(s) => s
            .value
            .as_object()
            .map(|m| {
                m.iter()
                    .map(|(k, v)| {
                        (
                            k.clone(),
                            v.as_str()
                                .map(str::to_string)
                                .unwrap_or_else(|| v.to_string()),
                        )
                    })
                    .collect()
            })
            .unwrap_or_default(),
        None => Vec::new(),
    };
    let work_dir = cfg
        .str("BaseLauncher", "work_dir")?
        .filter(|w| w != ".")
        .map(PathBuf::from)
        .unwrap_or_else(|| std::env::current_dir().unwrap_or_else(|_| PathBuf::from(".")));
    let r = Resolved {
        cluster_id,
        n,
        controller_ip: args
            .ip
            .clone()
            .or(cfg.str("Cluster", "controller_ip")?)
            .unwrap_or_default(),
        controller_location: args
            .location
            .clone()
            .or(cfg.str("Cluster", "controller_location")?)
            .unwrap_or_default(),
        controller_args_extra: [
            cfg.str_list("Cluster", "controller_args")?
                .unwrap_or_default(),
            args.controller_extra.clone(),
        ]
        .concat(),
        delay: args.delay.or(cfg.f64("Cluster", "delay")?).unwrap_or(0.0),
        engine_timeout: args
            .engine_timeout
            .or(cfg.f64("Cluster", "engine_timeout")?)
            .unwrap_or(60.0),
        daemonize: args.daemonize || cfg.bool("Cluster", "daemonize")?.unwrap_or(false),
        send_env: cfg
            .bool("Cluster", "send_engines_connection_env")?
            .unwrap_or(true),
        stop_grace: Duration::from_secs(
            cfg.i64("LocalProcessLauncher", "stop_seconds_until_kill")?
                .unwrap_or(5)
                .max(0) as u64,
        ),
        connection_timeout: cfg
            .f64(
                &controller_kind.config_class(Role::Controller),
                "connection_info_timeout",
            )?
            .unwrap_or(60.0),
        engine_kind,
        controller_kind,
        co_start,
        environment,
        work_dir,
        profile,
        programs,
    };
    Ok((r, cfg))
}

pub(super) fn base_env(r: &Resolved) -> Vec<(String, String)> {
    let mut env = r.environment.clone();
    env.push(("IPP_CLUSTER_ID".into(), r.cluster_id.clone()));
    env.push((
        "IPP_PROFILE_DIR".into(),
        r.profile.path.display().to_string(),
    ));
    env
}

/// What a launcher in `role` gets: programs, arguments, environment. Engines get the engine
/// connection file's contents in `IPP_CONNECTION_INFO` when it is there.
pub(super) fn spec_for(r: &Resolved, role: Role, set_id: &str) -> LaunchSpec {
    let progs = &r.programs;
    let mut controller_args = progs.controller_args.clone();
    let mut engine_args = progs.engine_args.clone();
    if r.controller_kind.is_local() || r.controller_kind == LauncherKind::Ssh {
        controller_args.insert(0, format!("--cluster-id={}", r.cluster_id));
        if r.controller_kind.is_local() {
            controller_args.insert(0, format!("--profile-dir={}", r.profile.path.display()));
        }
    } else if r.controller_ip.is_empty()
        && !controller_args.is_empty()
        && !controller_args.iter().any(|a| a.starts_with("--ip"))
    {
        // a controller in a batch job must be reachable from the engines' nodes
        controller_args.push("--ip=*".into());
    }
    if !r.controller_ip.is_empty() {
        controller_args.push(format!("--ip={}", r.controller_ip));
    }
    if !r.controller_location.is_empty() {
        controller_args.push(format!("--location={}", r.controller_location));
    }
    controller_args.extend(r.controller_args_extra.iter().cloned());
    if r.engine_kind.is_local() {
        engine_args.insert(0, format!("--cluster-id={}", r.cluster_id));
        engine_args.insert(0, format!("--profile-dir={}", r.profile.path.display()));
    }
    let mut env = base_env(r);
    if role != Role::Controller && r.send_env && !r.co_start {
        let f = r.profile.connection_file(&r.cluster_id, "engine");
        if let Ok(text) = std::fs::read_to_string(&f) {
            let compact = serde_json::from_str::<serde_json::Value>(&text)
                .map(|v| v.to_string())
                .unwrap_or(text);
            env.push(("IPP_CONNECTION_INFO".into(), compact));
        }
    }
    LaunchSpec {
        n: r.n,
        profile_dir: r.profile.path.clone(),
        cluster_id: r.cluster_id.clone(),
        controller_cmd: progs.controller_cmd.clone(),
        controller_args,
        engine_cmd: progs.engine_cmd.clone(),
        engine_args,
        env,
        work_dir: r.work_dir.clone(),
        set_id: set_id.to_string(),
    }
}
