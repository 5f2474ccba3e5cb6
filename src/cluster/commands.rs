//! `rpar cluster stop`, `list` and `clean`, and the dry run `rpar jobscript`.

use super::file::{cluster_files, ClusterFile};
use super::resolve::{spec_for, Parts, Plan};
use super::{ExitError, StartArgs, EXIT_NO_CLUSTER};
use crate::launcher::{Handle, LauncherKind, Role, Runner, SystemRunner};
use anyhow::{anyhow, bail, Result};
use rpar_core::config::Config;
use rpar_core::profile::{self, ProfileDir};
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// Stop a cluster: the foreground `rpar` (if asked), engines, then the controller.
pub(super) fn stop_cluster(cf: &ClusterFile, runner: &dyn Runner, grace: Duration, quiet_ok: bool) {
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

/// `rpar jobscript`: the script the launcher of `system` would submit in `role`, rendered by
/// the launcher itself (dry run: nothing is started or submitted).
pub fn jobscript(args: &StartArgs, system: &str, role: Role) -> Result<String> {
    let kind = LauncherKind::parse(system).ok_or_else(|| {
        anyhow!("unknown batch system {system:?}; choose pbs, sge, slurm, lsf, htcondor, mpiexec or winhpc")
    })?;
    let plan = Plan::new(args, Parts::Script(kind, role))?;
    let launcher = plan
        .controller
        .as_ref()
        .ok_or_else(|| anyhow!("no {kind} launcher resolved"))?;
    let spec = spec_for(&plan.r, role, "0");
    Ok(launcher.render(&spec, role)?)
}
