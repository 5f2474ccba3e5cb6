//! `rpar cluster start` and `rpar cluster engines`: start what the [`Plan`] resolved, record it
//! in the cluster file, wait for it, and stay in the foreground unless daemonized.

use super::commands::stop_cluster;
use super::file::{ClusterFile, ClusterInfo, EngineParts, EngineSet, Part};
use super::resolve::{spec_for, Parts, Plan, Resolved};
use super::wait::{describe_handles, wait_for_connection_files, wait_for_engines};
use super::{
    install_signal_handlers, set_id, signalled, ExitError, StartArgs, EXIT_ALREADY_STARTED,
};
use crate::hub::HubClient;
use crate::launcher::{Handle, Launcher, LauncherKind, Liveness, Role, Runner, SystemRunner};
use anyhow::{bail, Result};
use std::collections::BTreeMap;
use std::time::{Duration, Instant, SystemTime};

/// `rpar cluster start`.
pub fn start(args: &StartArgs) -> Result<()> {
    let runner = SystemRunner;
    install_signal_handlers();
    let plan = Plan::new(args, Parts::Cluster)?;
    let r = &plan.r;
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
    check_engine_env(r)?;
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
            class: r.controller_kind.to_string(),
            handles: Vec::new(),
        },
        engines: EngineParts {
            class: r.engine_kind.to_string(),
            sets: BTreeMap::new(),
        },
    };
    let result = start_inner(&plan, &mut cf, &runner);
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

/// The controller, then the engines; or, co-started, the one job running both.
/// Batch engines: `rpar-engine --check` here before anything starts (`crate::engine_check`).
fn check_engine_env(r: &Resolved) -> Result<()> {
    if !r.engine_kind.is_batch() {
        return Ok(());
    }
    let spec = spec_for(r, Role::Engine, "check");
    match crate::engine_check::check_engines(&spec.engine_cmd, &spec.engine_args, &spec.env)? {
        crate::engine_check::Checked::Passed => tracing::info!("engine environment checked"),
        crate::engine_check::Checked::Skipped(why) => {
            tracing::info!("engine environment not checked: {why}")
        }
    }
    Ok(())
}

fn start_inner(plan: &Plan, cf: &mut ClusterFile, runner: &dyn Runner) -> Result<()> {
    let r = &plan.r;
    let since = SystemTime::now() - Duration::from_secs(1);
    let sid = set_id(&cf.engines.sets);
    let (Some(ctrl), engines) = (&plan.controller, &plan.engines) else {
        bail!("no controller launcher resolved");
    };
    if r.co_start {
        // one batch job runs the controller and the engines
        for kind in ["client", "engine"] {
            let _ = std::fs::remove_file(r.profile.connection_file(&r.cluster_id, kind));
        }
        let spec = spec_for(r, Role::Cluster, &sid);
        let handles = ctrl.start(&spec, Role::Cluster, runner)?;
        for h in &handles {
            eprintln!("rpar: submitted {}", h.describe());
        }
        cf.controller = Part {
            class: r.engine_kind.to_string(),
            handles: handles.clone(),
        };
        cf.engines.sets.insert(
            sid.clone(),
            EngineSet {
                class: r.engine_kind.to_string(),
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
    let Some(engines) = engines else {
        bail!("no engine launcher resolved");
    };
    // controller
    let controller_started = Instant::now();
    let spec = spec_for(r, Role::Controller, &sid);
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
    let left = delay_left(r.delay, controller_started.elapsed());
    if !left.is_zero() {
        std::thread::sleep(left);
    }
    start_engine_set(r, engines.as_ref(), cf, &sid, r.n, runner)?;
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

/// Start `n` engines with `launcher` and record them as set `sid`.
fn start_engine_set(
    r: &Resolved,
    launcher: &dyn Launcher,
    cf: &mut ClusterFile,
    sid: &str,
    n: usize,
    runner: &dyn Runner,
) -> Result<()> {
    let mut spec = spec_for(r, Role::Engine, sid);
    spec.n = n;
    if launcher.kind() == LauncherKind::Ssh {
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
    let n = launcher.engine_count(n);
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

/// `rpar cluster engines`: add engines to a running cluster.
pub fn engines(args: &StartArgs) -> Result<()> {
    let runner = SystemRunner;
    install_signal_handlers();
    let plan = Plan::new(args, Parts::Engines)?;
    let r = &plan.r;
    let Some(launcher) = &plan.engines else {
        bail!("no engine launcher resolved");
    };
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
            class: r.engine_kind.to_string(),
            sets: BTreeMap::new(),
        },
        ..Default::default()
    });
    let before = HubClient::from_file(&client)
        .and_then(|mut h| h.engines(Duration::from_secs(5)))
        .map(|v| v.len())
        .unwrap_or(0);
    let sid = set_id(&cf.engines.sets);
    start_engine_set(r, launcher.as_ref(), &mut cf, &sid, r.n, &runner)?;
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

/// What is left of `Cluster.delay` (seconds; negative or not a number: none) once `elapsed` has
/// passed since the controller started: the delay runs from the controller's start, as
/// ipcluster's (it sleeps, then waits for the files), not after the wait for the files.
fn delay_left(delay: f64, elapsed: Duration) -> Duration {
    Duration::try_from_secs_f64(delay)
        .unwrap_or_default()
        .saturating_sub(elapsed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_delay_counts_from_the_controller_start() {
        let ms = Duration::from_millis;
        assert_eq!(delay_left(1.0, ms(300)), ms(700));
        assert_eq!(delay_left(1.0, ms(1500)), Duration::ZERO);
        assert_eq!(delay_left(0.0, ms(0)), Duration::ZERO);
        assert_eq!(delay_left(-2.0, ms(0)), Duration::ZERO);
        assert_eq!(delay_left(f64::NAN, ms(0)), Duration::ZERO);
    }
}
