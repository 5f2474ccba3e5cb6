//! Waiting for a starting cluster: the controller's connection files, then the engines'
//! registrations, failing early with the logs' last lines when what was started has finished.

use super::resolve::Resolved;
use super::signalled;
use crate::hub::HubClient;
use crate::launcher::{Handle, Liveness, Runner};
use anyhow::{bail, Result};
use std::path::Path;
use std::time::{Duration, Instant, SystemTime};

fn tail(path: &str, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let v: Vec<&str> = text.lines().collect();
    let start = v.len().saturating_sub(lines);
    v[start..].iter().map(|l| format!("    | {l}\n")).collect()
}

pub(super) fn describe_handles(handles: &[Handle], runner: &dyn Runner) -> String {
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
pub(super) fn wait_for_connection_files(
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
        // each file is written whole (renamed into place), client then engine
        if modified_since(&client, since) && modified_since(&engine, since) {
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
        std::thread::sleep(Duration::from_millis(20));
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
