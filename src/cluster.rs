//! `rpar cluster start|stop|engines|list|clean`.
//!
//! `start` resolves the settings (command line over `ipcluster_config.py` over defaults), starts
//! the controller with its launcher, waits for its connection files, starts the engines with
//! theirs, and waits (with a progress bar) until the hub lists `n` registered engines, failing
//! with what is missing and where the logs are if they do not come. Everything it started is
//! recorded in `security/cluster-<cluster_id>.json`, so `stop` and `list` work from another
//! shell. Without `--daemonize` it stays in the foreground and stops the cluster on
//! SIGINT/SIGTERM or when the controller dies.

use crate::hub::HubClient;
use crate::launcher::{Handle, LaunchSpec, Liveness, Role, Runner, SystemRunner};
use crate::settings;
use anyhow::{anyhow, bail, Context, Result};
use rpar_core::config::Config;
use rpar_core::profile::{self, ProfileDir};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI32, Ordering};
use std::time::{Duration, Instant, SystemTime};

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
}

/// The cluster file, `security/cluster-<cluster_id>.json`.
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
pub struct ClusterFile {
    pub cluster: ClusterInfo,
    pub controller: Part,
    pub engines: EngineParts,
}

#[derive(Debug, Clone, Serialize, Deserialize, Default)]
pub struct ClusterInfo {
    pub cluster_id: String,
    pub profile_dir: PathBuf,
    pub n: usize,
    pub controller_ip: String,
    pub controller_location: String,
    pub controller_args: Vec<String>,
    pub delay: f64,
    /// `rpar` (distinguishes rpar's cluster files from ipyparallel's).
    pub class: String,
    /// The foreground `rpar cluster start` process, if any.
    pub rpar_pid: Option<u32>,
    pub rpar_start_time: Option<u64>,
    pub co_start: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize, Default)]
pub struct Part {
    pub class: String,
    pub handles: Vec<Handle>,
}

#[derive(Debug, Clone, Serialize, Deserialize, Default)]
pub struct EngineParts {
    pub class: String,
    pub sets: BTreeMap<String, EngineSet>,
}

#[derive(Debug, Clone, Serialize, Deserialize, Default)]
pub struct EngineSet {
    pub class: String,
    pub n: usize,
    pub handles: Vec<Handle>,
}

impl ClusterFile {
    pub fn path(profile_dir: &Path, cluster_id: &str) -> PathBuf {
        profile_dir
            .join("security")
            .join(format!("cluster-{cluster_id}.json"))
    }
    pub fn load(path: &Path) -> Result<ClusterFile> {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("read {}", path.display()))?;
        serde_json::from_str(&text)
            .with_context(|| format!("parse {} (not an rpar cluster file?)", path.display()))
    }
    pub fn save(&self) -> Result<()> {
        let path = Self::path(&self.cluster.profile_dir, &self.cluster.cluster_id);
        rpar_core::connection::write_private(&path, self).map_err(|e| anyhow!("{e}"))
    }
    pub fn remove(&self) {
        let _ = std::fs::remove_file(Self::path(
            &self.cluster.profile_dir,
            &self.cluster.cluster_id,
        ));
    }
    fn all_engine_handles(&self) -> impl Iterator<Item = &Handle> {
        self.engines.sets.values().flat_map(|s| s.handles.iter())
    }
    /// Is anything of this cluster still running (controller first)?
    pub fn running(&self, runner: &dyn Runner) -> bool {
        self.controller
            .handles
            .iter()
            .chain(self.all_engine_handles())
            .any(|h| !matches!(h.liveness(runner), Liveness::Finished))
    }
    pub fn engine_count(&self) -> usize {
        self.engines.sets.values().map(|s| s.n).sum()
    }
}

/// Signal number received (0: none).
static SIGNALLED: AtomicI32 = AtomicI32::new(0);

extern "C" fn on_signal(sig: libc::c_int) {
    SIGNALLED.store(sig, Ordering::SeqCst);
}

fn install_signal_handlers() {
    // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
    unsafe {
        libc::signal(libc::SIGINT, on_signal as *const () as libc::sighandler_t);
        libc::signal(libc::SIGTERM, on_signal as *const () as libc::sighandler_t);
    }
}

fn signalled() -> bool {
    SIGNALLED.load(Ordering::SeqCst) != 0
}

/// Everything resolved for a start.
struct Resolved {
    profile: ProfileDir,
    cluster_id: String,
    n: usize,
    engine_kind: String,
    controller_kind: String,
    controller_ip: String,
    controller_location: String,
    controller_args_extra: Vec<String>,
    delay: f64,
    engine_timeout: f64,
    daemonize: bool,
    co_start: bool,
    send_env: bool,
    environment: Vec<(String, String)>,
    work_dir: PathBuf,
    stop_grace: Duration,
    connection_timeout: f64,
    cfg: Config,
}

fn kind_from(value: Option<String>, cfg: &Config, trait_: &str) -> Result<String> {
    let (v, src) = match value {
        Some(v) => (v, "the command line".to_string()),
        None => match cfg.get("Cluster", trait_) {
            Some(s) => (
                s.value.as_str().unwrap_or("").to_string(),
                s.source.to_string(),
            ),
            None => return Ok("local".into()),
        },
    };
    settings::launcher_kind(&v).map(str::to_string).ok_or_else(|| {
        anyhow!("{src}: unknown launcher {v:?}; choose one of {} (or an ipyparallel launcher class name)", settings::KINDS.join(", "))
    })
}

fn resolve(args: &StartArgs) -> Result<Resolved> {
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
    let engine_kind = kind_from(args.engines.clone(), &cfg, "engine_launcher_class")?;
    let controller_kind = kind_from(args.controller.clone(), &cfg, "controller_launcher_class")?;
    let co_start = args.co_start
        || cfg
            .bool(
                &settings::config_class(&engine_kind, Role::Engine),
                "co_start",
            )?
            .unwrap_or(false);
    if co_start
        && !matches!(
            engine_kind.as_str(),
            "pbs" | "sge" | "slurm" | "lsf" | "batch"
        )
    {
        bail!("--co-start runs controller and engines in ONE batch job: use it with --engines=pbs|sge|slurm|lsf (not {engine_kind})");
    }
    // in co-start mode the controller runs in the engines' batch job
    let controller_kind = if co_start {
        engine_kind.clone()
    } else {
        controller_kind
    };
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
    Ok(Resolved {
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
        delay: args.delay.or(cfg.f64("Cluster", "delay")?).unwrap_or(1.0),
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
                &settings::config_class(&controller_kind, Role::Controller),
                "connection_info_timeout",
            )?
            .unwrap_or(60.0),
        engine_kind,
        controller_kind,
        co_start,
        environment,
        work_dir,
        profile,
        cfg,
    })
}

fn base_env(r: &Resolved) -> Vec<(String, String)> {
    let mut env = r.environment.clone();
    env.push(("IPP_CLUSTER_ID".into(), r.cluster_id.clone()));
    env.push((
        "IPP_PROFILE_DIR".into(),
        r.profile.path.display().to_string(),
    ));
    env
}

fn spec_for(r: &Resolved, role: Role, set_id: &str) -> Result<LaunchSpec> {
    let progs =
        settings::programs(&r.cfg, &r.controller_kind, &r.engine_kind).map_err(|e| anyhow!(e))?;
    let mut controller_args = progs.controller_args.clone();
    let mut engine_args = progs.engine_args.clone();
    let local_like = |k: &str| matches!(k, "local" | "mpi");
    if local_like(&r.controller_kind) || r.controller_kind == "ssh" {
        controller_args.insert(0, format!("--cluster-id={}", r.cluster_id));
        if local_like(&r.controller_kind) {
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
    if local_like(&r.engine_kind) {
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
    Ok(LaunchSpec {
        role: Some(role),
        n: r.n,
        profile_dir: r.profile.path.clone(),
        cluster_id: r.cluster_id.clone(),
        controller_cmd: progs.controller_cmd,
        controller_args,
        engine_cmd: progs.engine_cmd,
        engine_args,
        env,
        work_dir: r.work_dir.clone(),
        set_id: set_id.to_string(),
    })
}

fn tail(path: &str, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let v: Vec<&str> = text.lines().collect();
    let start = v.len().saturating_sub(lines);
    v[start..].iter().map(|l| format!("    | {l}\n")).collect()
}

fn describe_handles(handles: &[Handle], runner: &dyn Runner) -> String {
    let mut s = String::new();
    for h in handles {
        let state = match h.liveness(runner) {
            Liveness::Running => "running".to_string(),
            Liveness::Pending(w) => format!("pending ({w})"),
            Liveness::Finished => "finished".to_string(),
            Liveness::Unknown => "state unknown".to_string(),
        };
        s.push_str(&format!("  {}: {state}\n", h.describe()));
        let t = tail(&h.output(), 8);
        if !t.is_empty() {
            s.push_str(&format!("  last lines of {}:\n{t}", h.output()));
        }
    }
    s
}

fn modified_since(p: &Path, t: SystemTime) -> bool {
    std::fs::metadata(p)
        .and_then(|m| m.modified())
        .map(|m| m >= t)
        .unwrap_or(false)
        && std::fs::metadata(p).map(|m| m.len() > 0).unwrap_or(false)
}

/// Wait for the controller's connection files (newer than `since`), failing early if the
/// controller's handles finish.
fn wait_for_connection_files(
    r: &Resolved,
    handles: &[Handle],
    since: SystemTime,
    timeout: f64,
    runner: &dyn Runner,
) -> Result<()> {
    let client = r.profile.connection_file(&r.cluster_id, "client");
    let engine = r.profile.connection_file(&r.cluster_id, "engine");
    let deadline = Instant::now() + Duration::from_secs_f64(timeout);
    let mut last_check = Instant::now();
    loop {
        if modified_since(&client, since) && modified_since(&engine, since) {
            // the controller writes client then engine; give it a moment to finish writing
            std::thread::sleep(Duration::from_millis(100));
            return Ok(());
        }
        if signalled() {
            bail!("interrupted");
        }
        if last_check.elapsed() > Duration::from_secs(1) {
            last_check = Instant::now();
            if !handles.is_empty()
                && handles
                    .iter()
                    .all(|h| h.liveness(runner) == Liveness::Finished)
            {
                bail!(
                    "the controller exited before writing {}\n{}",
                    client.display(),
                    describe_handles(handles, runner)
                );
            }
        }
        if Instant::now() > deadline {
            bail!(
                "no connection files from the controller after {timeout} s ({} and {})\n{}",
                client.display(),
                engine.display(),
                describe_handles(handles, runner)
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Wait until the hub lists `want` engines; progress bar on a terminal, a line otherwise.
pub fn wait_for_engines(
    client_file: &Path,
    want: usize,
    timeout: f64,
    watch: &[Handle],
    controller: &[Handle],
    runner: &dyn Runner,
) -> Result<usize> {
    let bar = indicatif::ProgressBar::new(want as u64);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{spinner} engines registered {pos}/{len} [{bar:30}] {elapsed} {msg}",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
        .progress_chars("=> "),
    );
    let mut hub = HubClient::from_file(client_file)?;
    let deadline = Instant::now() + Duration::from_secs_f64(timeout);
    let mut have = 0usize;
    let mut last_state_check = Instant::now();
    let mut last_hub_error = String::new();
    loop {
        match hub.engines(Duration::from_secs(2)) {
            Ok(ids) => {
                have = ids.len();
                bar.set_position(have.min(want) as u64);
                last_hub_error.clear();
            }
            Err(e) => last_hub_error = e.to_string(),
        }
        if have >= want {
            bar.finish_and_clear();
            eprintln!("rpar: {have} engines registered");
            return Ok(have);
        }
        if signalled() {
            bar.abandon();
            bail!("interrupted");
        }
        if last_state_check.elapsed() > Duration::from_secs(2) {
            last_state_check = Instant::now();
            let states: Vec<Liveness> = watch.iter().map(|h| h.liveness(runner)).collect();
            if let Some(Liveness::Pending(w)) =
                states.iter().find(|s| matches!(s, Liveness::Pending(_)))
            {
                bar.set_message(format!("(job pending: {w})"));
            } else {
                bar.set_message(String::new());
            }
            if !controller.is_empty()
                && controller
                    .iter()
                    .all(|h| h.liveness(runner) == Liveness::Finished)
            {
                bar.abandon();
                bail!(
                    "the controller stopped while engines were starting\n{}",
                    describe_handles(controller, runner)
                );
            }
            if !watch.is_empty() && states.iter().all(|s| *s == Liveness::Finished) {
                bar.abandon();
                bail!(
                    "the engines exited: {have} of {want} registered\n{}",
                    describe_handles(watch, runner)
                );
            }
        }
        if Instant::now() > deadline {
            bar.abandon();
            let hub_note = if last_hub_error.is_empty() {
                String::new()
            } else {
                format!("\n  the hub did not answer: {last_hub_error}")
            };
            bail!(
                "only {have} of {want} engines registered after {timeout} s (set Cluster.engine_timeout or --engine-timeout to wait longer){hub_note}\n{}",
                describe_handles(watch, runner)
            );
        }
        std::thread::sleep(Duration::from_millis(300));
    }
}

fn set_id() -> String {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs().to_string())
        .unwrap_or_else(|_| "0".into())
}

/// `rpar cluster start`.
pub fn start(args: &StartArgs) -> Result<()> {
    let runner = SystemRunner;
    install_signal_handlers();
    let r = resolve(args)?;
    let file = ClusterFile::path(&r.profile.path, &r.cluster_id);
    if file.exists() {
        match ClusterFile::load(&file) {
            Ok(cf) if cf.running(&runner) => {
                return Err(ExitError {
                    code: EXIT_ALREADY_STARTED,
                    message: format!(
                        "a cluster with id {:?} is already running in {} ({}); stop it with `rpar cluster stop --profile-dir={} --cluster-id={}`",
                        r.cluster_id,
                        r.profile.path.display(),
                        file.display(),
                        r.profile.path.display(),
                        r.cluster_id
                    ),
                }
                .into())
            }
            _ => {
                let _ = std::fs::remove_file(&file);
            }
        }
    }
    let stem = if r.cluster_id.is_empty() {
        "ipcluster".to_string()
    } else {
        format!("ipcluster-{}", r.cluster_id)
    };
    crate::init_file_log(&r.profile, &stem);
    tracing::info!(profile = %r.profile.path.display(), cluster_id = %r.cluster_id, n = r.n, engines = %r.engine_kind, controller = %r.controller_kind, "starting cluster");

    let mut cf = ClusterFile {
        cluster: ClusterInfo {
            cluster_id: r.cluster_id.clone(),
            profile_dir: r.profile.path.clone(),
            n: r.n,
            controller_ip: r.controller_ip.clone(),
            controller_location: r.controller_location.clone(),
            controller_args: r.controller_args_extra.clone(),
            delay: r.delay,
            class: "rpar".into(),
            rpar_pid: (!r.daemonize).then_some(std::process::id()),
            rpar_start_time: (!r.daemonize)
                .then(|| crate::launcher::process_start_time(std::process::id())),
            co_start: r.co_start,
        },
        controller: Part {
            class: r.controller_kind.clone(),
            handles: Vec::new(),
        },
        engines: EngineParts {
            class: r.engine_kind.clone(),
            sets: BTreeMap::new(),
        },
    };
    let result = start_inner(&r, &mut cf, &runner);
    match result {
        Ok(()) => {}
        Err(e) => {
            eprintln!("rpar: stopping the cluster: it did not start");
            stop_cluster(&cf, &runner, r.stop_grace, false);
            cf.remove();
            return Err(e.context(format!(
                "the cluster did not start (logs in {})",
                r.profile.log().display()
            )));
        }
    }
    let client = r.profile.connection_file(&r.cluster_id, "client");
    crate::status::announce(&r.profile, &r.cluster_id);
    if r.daemonize {
        eprintln!(
            "rpar: cluster {:?} running ({} engines, {} controller); connect with ipyparallel.Client({:?}); stop with `rpar cluster stop --profile-dir={}{}`",
            r.cluster_id,
            cf.cluster.n,
            r.controller_kind,
            client.display().to_string(),
            r.profile.path.display(),
            if r.cluster_id.is_empty() { String::new() } else { format!(" --cluster-id={}", r.cluster_id) }
        );
        return Ok(());
    }
    eprintln!("rpar: cluster running; Ctrl-C (or `rpar cluster stop`) stops it");
    // foreground: stop on a signal, when the controller dies, or when someone else stopped it
    // (batch jobs are asked about every 5 s, local processes every half second)
    let slow = cf
        .controller
        .handles
        .iter()
        .any(|h| !matches!(h, Handle::Process { .. }));
    let mut last_check = Instant::now();
    loop {
        if signalled() {
            eprintln!("rpar: stopping the cluster");
            break;
        }
        if !file.exists() {
            tracing::info!("cluster file removed: stopped from elsewhere");
            break;
        }
        let due = !slow || last_check.elapsed() >= Duration::from_secs(5);
        if due {
            last_check = Instant::now();
        }
        if due
            && !cf.controller.handles.is_empty()
            && cf
                .controller
                .handles
                .iter()
                .all(|h| h.liveness(&runner) == Liveness::Finished)
        {
            eprintln!(
                "rpar: the controller stopped; stopping the engines\n{}",
                describe_handles(&cf.controller.handles, &runner)
            );
            break;
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    if let Ok(latest) = ClusterFile::load(&file) {
        cf = latest;
    }
    stop_cluster(&cf, &runner, r.stop_grace, true);
    cf.remove();
    Ok(())
}

fn start_inner(r: &Resolved, cf: &mut ClusterFile, runner: &dyn Runner) -> Result<()> {
    let since = SystemTime::now() - Duration::from_secs(1);
    let sid = set_id();
    if r.co_start {
        // one batch job runs the controller and the engines
        for kind in ["client", "engine"] {
            let _ = std::fs::remove_file(r.profile.connection_file(&r.cluster_id, kind));
        }
        let launcher =
            settings::make_launcher(&r.cfg, &r.engine_kind, Role::Cluster, &r.profile.path)
                .map_err(|e| anyhow!(e))?;
        let spec = spec_for(r, Role::Cluster, &sid)?;
        let handles = launcher.start(&spec, Role::Cluster, runner)?;
        for h in &handles {
            eprintln!("rpar: submitted {}", h.describe());
        }
        cf.controller = Part {
            class: r.engine_kind.clone(),
            handles: handles.clone(),
        };
        cf.engines.sets.insert(
            sid.clone(),
            EngineSet {
                class: r.engine_kind.clone(),
                n: r.n,
                handles: Vec::new(),
            },
        );
        cf.save()?;
        let timeout = r.connection_timeout.max(r.engine_timeout);
        wait_for_connection_files(r, &handles, since, timeout, runner)?;
        if r.engine_timeout > 0.0 {
            wait_for_engines(
                &r.profile.connection_file(&r.cluster_id, "client"),
                r.n,
                r.engine_timeout,
                &handles,
                &[],
                runner,
            )?;
        }
        return Ok(());
    }
    // controller
    let ctrl = settings::make_launcher(
        &r.cfg,
        &r.controller_kind,
        Role::Controller,
        &r.profile.path,
    )
    .map_err(|e| anyhow!(e))?;
    let spec = spec_for(r, Role::Controller, &sid)?;
    let handles = ctrl.start(&spec, Role::Controller, runner)?;
    for h in &handles {
        tracing::info!("controller: {}", h.describe());
        if matches!(h, Handle::Job { .. }) {
            eprintln!("rpar: submitted {}", h.describe());
        }
    }
    cf.controller.handles = handles.clone();
    cf.save()?;
    wait_for_connection_files(r, &handles, since, r.connection_timeout, runner)?;
    if r.delay > 0.0 {
        std::thread::sleep(Duration::from_secs_f64(r.delay));
    }
    start_engine_set(r, cf, &sid, r.n, runner)?;
    let want = cf.engines.sets.get(&sid).map(|s| s.n).unwrap_or(r.n);
    cf.cluster.n = want;
    cf.save()?;
    if r.engine_timeout > 0.0 {
        let watch: Vec<Handle> = cf
            .engines
            .sets
            .get(&sid)
            .map(|s| s.handles.clone())
            .unwrap_or_default();
        wait_for_engines(
            &r.profile.connection_file(&r.cluster_id, "client"),
            want,
            r.engine_timeout,
            &watch,
            &cf.controller.handles,
            runner,
        )?;
    }
    Ok(())
}

fn start_engine_set(
    r: &Resolved,
    cf: &mut ClusterFile,
    sid: &str,
    n: usize,
    runner: &dyn Runner,
) -> Result<()> {
    let launcher = settings::make_launcher(&r.cfg, &r.engine_kind, Role::Engine, &r.profile.path)
        .map_err(|e| anyhow!(e))?;
    let mut spec = spec_for(r, Role::Engine, sid)?;
    spec.n = n;
    if launcher.kind() == "ssh" {
        let ip = &r.controller_ip;
        if ip.is_empty() || ip.starts_with("127.") || ip == "localhost" {
            eprintln!("rpar: warning: the controller listens on loopback; engines on other hosts need --ip='*' (or c.Cluster.controller_ip) and perhaps --location");
        }
    }
    let handles = launcher.start(&spec, Role::Engine, runner)?;
    for h in &handles {
        tracing::info!("engines: {}", h.describe());
        if matches!(h, Handle::Job { .. } | Handle::Remote { .. }) {
            eprintln!("rpar: started {}", h.describe());
        }
    }
    let n = if launcher.kind() == "ssh" {
        // the ssh engines dict decides the count
        match settings::make_launcher(&r.cfg, "ssh", Role::Engine, &r.profile.path) {
            Ok(_) => ssh_count(&r.cfg).unwrap_or(n),
            Err(_) => n,
        }
    } else {
        n
    };
    cf.engines.sets.insert(
        sid.to_string(),
        EngineSet {
            class: launcher.kind().to_string(),
            n,
            handles,
        },
    );
    cf.save()?;
    Ok(())
}

fn ssh_count(cfg: &Config) -> Option<usize> {
    let v = cfg.get("SSHEngineSetLauncher", "engines")?;
    let e = crate::launcher::ssh::parse_engines(&v.value).ok()?;
    Some(e.iter().map(|h| h.n).sum())
}

/// Stop a cluster: the foreground `rpar` (if asked), engines, then the controller.
fn stop_cluster(cf: &ClusterFile, runner: &dyn Runner, grace: Duration, quiet_ok: bool) {
    for (id, set) in &cf.engines.sets {
        for h in &set.handles {
            if let Err(e) = h.stop(runner, grace) {
                eprintln!("rpar: engine set {id}: {e}");
            } else if !quiet_ok || matches!(h, Handle::Job { .. }) {
                tracing::info!("stopped {}", h.describe());
            }
        }
    }
    for h in &cf.controller.handles {
        if let Err(e) = h.stop(runner, grace) {
            eprintln!("rpar: controller: {e}");
        }
    }
    // a controller killed before it could clean up leaves its connection files behind
    if !cf.controller.handles.is_empty()
        && !cf.cluster.controller_args.iter().any(|a| a == "--reuse")
    {
        for kind in ["client", "engine"] {
            let _ = std::fs::remove_file(
                cf.cluster
                    .profile_dir
                    .join("security")
                    .join(profile::connection_file_name(&cf.cluster.cluster_id, kind)),
            );
        }
    }
}

/// `rpar cluster stop`.
pub fn stop(profile_opts: &profile::ProfileOpts, all: bool) -> Result<()> {
    let runner = SystemRunner;
    let prof = ProfileDir::resolve(profile_opts);
    let files: Vec<PathBuf> = if all {
        cluster_files(&prof.path)
    } else {
        let id = profile::cluster_id(profile_opts.cluster_id.as_deref());
        vec![ClusterFile::path(&prof.path, &id)]
    };
    let files: Vec<PathBuf> = files.into_iter().filter(|f| f.exists()).collect();
    if files.is_empty() {
        return Err(ExitError {
            code: EXIT_NO_CLUSTER,
            message: format!(
                "no cluster to stop: no {} (`rpar cluster list --profile-dir={}` shows the clusters of this profile)",
                if all { prof.security().join("cluster-*.json") } else { ClusterFile::path(&prof.path, &profile::cluster_id(profile_opts.cluster_id.as_deref())) }
                    .display(),
                prof.path.display()
            ),
        }
        .into());
    }
    let grace = Config::load(&prof.path, "ipcluster", &[])
        .ok()
        .and_then(|c| {
            c.i64("LocalProcessLauncher", "stop_seconds_until_kill")
                .ok()
                .flatten()
        })
        .map(|s| Duration::from_secs(s.max(0) as u64))
        .unwrap_or(Duration::from_secs(5));
    for f in files {
        let cf = ClusterFile::load(&f)?;
        // a foreground `rpar cluster start` stops its own cluster when signalled
        if let (Some(pid), Some(st)) = (cf.cluster.rpar_pid, cf.cluster.rpar_start_time) {
            if pid != std::process::id() && crate::launcher::process_alive(pid, st) {
                // SAFETY: kill(2) on the recorded pid, checked alive with the same start time.
                unsafe {
                    libc::kill(pid as libc::pid_t, libc::SIGTERM);
                }
                let deadline = Instant::now() + grace + Duration::from_secs(10);
                while Instant::now() < deadline && crate::launcher::process_alive(pid, st) {
                    std::thread::sleep(Duration::from_millis(100));
                }
            }
        }
        stop_cluster(&cf, &runner, grace, false);
        cf.remove();
        eprintln!(
            "rpar: stopped cluster {:?} in {}",
            cf.cluster.cluster_id,
            cf.cluster.profile_dir.display()
        );
    }
    Ok(())
}

fn cluster_files(profile_dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(profile_dir.join("security"))
        .into_iter()
        .flatten()
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("cluster-") && n.ends_with(".json"))
        })
        .collect();
    v.sort();
    v
}

/// `rpar cluster list`.
pub fn list(profile_opts: &profile::ProfileOpts, all_profiles: bool, json: bool) -> Result<()> {
    let runner = SystemRunner;
    let profiles: Vec<PathBuf> = if all_profiles {
        crate::profiles::list(&profile::ipython_dir(profile_opts.ipython_dir.as_deref()))
            .into_iter()
            .map(|(_, p)| p)
            .collect()
    } else {
        vec![ProfileDir::resolve(profile_opts).path]
    };
    let mut rows = Vec::new();
    for p in profiles {
        for f in cluster_files(&p) {
            let Ok(cf) = ClusterFile::load(&f) else {
                continue;
            };
            let running = cf.running(&runner);
            let name = ProfileDir { path: p.clone() }
                .name()
                .unwrap_or_else(|| p.display().to_string());
            rows.push((name, cf, running));
        }
    }
    if json {
        let v: Vec<serde_json::Value> = rows
            .iter()
            .map(|(name, cf, running)| {
                serde_json::json!({"profile": name, "profile_dir": cf.cluster.profile_dir, "cluster_id": cf.cluster.cluster_id,
                "running": running, "engines": cf.engine_count(), "launcher": cf.engines.class, "controller": cf.controller.class,
                "cluster_file": ClusterFile::path(&cf.cluster.profile_dir, &cf.cluster.cluster_id)})
            })
            .collect();
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    println!(
        "{:<16} {:<24} {:<8} {:>7}  LAUNCHER",
        "PROFILE", "CLUSTER ID", "RUNNING", "ENGINES"
    );
    for (name, cf, running) in rows {
        let id = if cf.cluster.cluster_id.is_empty() {
            "''".to_string()
        } else {
            cf.cluster.cluster_id.clone()
        };
        println!(
            "{:<16} {:<24} {:<8} {:>7}  {}",
            name,
            id,
            if running { "True" } else { "False" },
            cf.engine_count(),
            cf.engines.class
        );
    }
    Ok(())
}

/// `rpar cluster clean`: remove the files of stopped clusters, logs and connection files.
pub fn clean(profile_opts: &profile::ProfileOpts, force: bool) -> Result<()> {
    let runner = SystemRunner;
    let prof = ProfileDir::resolve(profile_opts);
    let mut running = Vec::new();
    for f in cluster_files(&prof.path) {
        match ClusterFile::load(&f) {
            Ok(cf) if cf.running(&runner) => running.push(cf.cluster.cluster_id),
            _ => {
                let _ = std::fs::remove_file(&f);
            }
        }
    }
    if !running.is_empty() && !force {
        bail!(
            "clusters {:?} are still running in {}: stop them first (`rpar cluster stop --all`), or use --force to remove their logs anyway",
            running,
            prof.path.display()
        );
    }
    let mut removed = 0;
    for e in std::fs::read_dir(prof.log())
        .into_iter()
        .flatten()
        .flatten()
    {
        if e.path().is_file() && std::fs::remove_file(e.path()).is_ok() {
            removed += 1;
        }
    }
    if running.is_empty() {
        for e in std::fs::read_dir(prof.security())
            .into_iter()
            .flatten()
            .flatten()
        {
            let n = e.file_name().to_string_lossy().to_string();
            if n.starts_with("ipcontroller-")
                && n.ends_with(".json")
                && std::fs::remove_file(e.path()).is_ok()
            {
                removed += 1;
            }
        }
    }
    eprintln!("rpar: removed {removed} files from {}", prof.path.display());
    Ok(())
}

/// `rpar cluster engines`: add engines to a running cluster.
pub fn engines(args: &StartArgs) -> Result<()> {
    let runner = SystemRunner;
    install_signal_handlers();
    let mut r = resolve(args)?;
    let client = r.profile.connection_file(&r.cluster_id, "client");
    if !client.exists() {
        bail!(
            "no running controller: {} does not exist (start one with `rpar cluster start` or rpar-controller)",
            client.display()
        );
    }
    let file = ClusterFile::path(&r.profile.path, &r.cluster_id);
    let mut cf = ClusterFile::load(&file).unwrap_or_else(|_| ClusterFile {
        cluster: ClusterInfo {
            cluster_id: r.cluster_id.clone(),
            profile_dir: r.profile.path.clone(),
            class: "rpar".into(),
            ..Default::default()
        },
        engines: EngineParts {
            class: r.engine_kind.clone(),
            sets: BTreeMap::new(),
        },
        ..Default::default()
    });
    let before = HubClient::from_file(&client)
        .and_then(|mut h| h.engines(Duration::from_secs(5)))
        .map(|v| v.len())
        .unwrap_or(0);
    r.co_start = false;
    let sid = set_id();
    start_engine_set(&r, &mut cf, &sid, r.n, &runner)?;
    cf.cluster.n = cf.engine_count();
    cf.save()?;
    let watch = cf
        .engines
        .sets
        .get(&sid)
        .map(|s| s.handles.clone())
        .unwrap_or_default();
    if r.engine_timeout > 0.0 {
        if let Err(e) = wait_for_engines(
            &client,
            before + cf.engines.sets.get(&sid).map(|s| s.n).unwrap_or(r.n),
            r.engine_timeout,
            &watch,
            &[],
            &runner,
        ) {
            for h in &watch {
                let _ = h.stop(&runner, r.stop_grace);
            }
            cf.engines.sets.remove(&sid);
            let _ = cf.save();
            return Err(e);
        }
    }
    if r.daemonize {
        return Ok(());
    }
    eprintln!("rpar: engines running; Ctrl-C stops them");
    while !signalled()
        && watch
            .iter()
            .any(|h| h.liveness(&runner) != Liveness::Finished)
    {
        std::thread::sleep(Duration::from_millis(500));
    }
    for h in &watch {
        let _ = h.stop(&runner, r.stop_grace);
    }
    if let Ok(mut latest) = ClusterFile::load(&file) {
        latest.engines.sets.remove(&sid);
        let _ = latest.save();
    }
    Ok(())
}

/// `rpar jobscript`: render a script without submitting (dry run).
pub fn jobscript(args: &StartArgs, system: &str, role: Role) -> Result<String> {
    let mut r = resolve(args)?;
    let kind = settings::launcher_kind(system).ok_or_else(|| anyhow!("unknown batch system {system:?}; choose pbs, sge, slurm, lsf, htcondor, mpiexec or winhpc"))?;
    r.engine_kind = kind.to_string();
    r.controller_kind = kind.to_string();
    r.co_start = role == Role::Cluster;
    let spec = spec_for(&r, role, "0")?;
    match kind {
        "mpi" | "local" => {
            let text = crate::jobscript::builtin(crate::jobscript::System::Mpiexec, role)
                .ok_or_else(|| anyhow!("no mpiexec template for {}", role.name()))?;
            let mut vars = crate::jobscript::ScriptVars {
                n: (role != Role::Controller).then_some(r.n),
                profile_dir: r.profile.path.display().to_string(),
                cluster_id: r.cluster_id.clone(),
                engine: crate::jobscript::shell_join(&spec.engine_cmd),
                controller: crate::jobscript::shell_join(&spec.controller_cmd),
                role: Some(role),
                ..Default::default()
            };
            let mpi = settings::mpi_command(&r.cfg).map_err(|e| anyhow!(e))?;
            if r.cfg.get("MPILauncher", "mpi_cmd").is_some()
                || r.cfg.get("MPILauncher", "mpi_args").is_some()
            {
                vars.mpiexec = crate::jobscript::shell_join(&[mpi.mpi_cmd, mpi.mpi_args].concat());
            }
            Ok(crate::jobscript::render(
                text,
                &crate::jobscript::builtin_name(crate::jobscript::System::Mpiexec, role),
                &vars,
            )?)
        }
        "winhpc" => Ok(crate::launcher::winhpc::WinHpcLauncher::default().render(&spec, role)),
        _ => {
            let s = settings::batch_settings(&r.cfg, kind, role, &r.profile.path)
                .map_err(|e| anyhow!(e))?;
            let mut s = s;
            if let Some(q) = &args_queue(args) {
                s.queue = q.clone();
            }
            Ok(crate::launcher::batch::BatchLauncher::new(s).render(&spec, role)?)
        }
    }
}

fn args_queue(args: &StartArgs) -> Option<String> {
    args.config_args.iter().find_map(|a| {
        a.strip_prefix("--BatchSystemLauncher.queue=")
            .map(str::to_string)
    })
}
