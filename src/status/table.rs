//! The text table of `rpar cluster status`: a header of totals, one line per MPI job (engine id
//! ranges, dead ranks), one line per engine only for small clusters, cut to the table's width.

use super::{Source, ENGINE_LINES, WIDTH};
use rpar_core::status::{Snapshot, StatusFile};
use std::fmt::Write as _;

pub(super) fn duration(secs: f64) -> String {
    let s = secs.max(0.0) as u64;
    let (h, m, s) = (s / 3600, (s % 3600) / 60, s % 60);
    if h > 0 {
        format!("{h}h{m:02}m{s:02}s")
    } else if m > 0 {
        format!("{m}m{s:02}s")
    } else {
        format!("{s}s")
    }
}

/// `0-3,7` for `[0, 1, 2, 3, 7]`.
pub(super) fn ranges(ids: &[u32]) -> String {
    let mut out = Vec::new();
    let mut i = 0;
    while i < ids.len() {
        let mut j = i;
        while j + 1 < ids.len() && ids[j + 1] == ids[j].saturating_add(1) {
            j += 1;
        }
        out.push(if i == j {
            ids[i].to_string()
        } else {
            format!("{}-{}", ids[i], ids[j])
        });
        i = j + 1;
    }
    out.join(",")
}

/// Cut `s` to `n` characters, marking the cut.
pub(super) fn fit(s: &str, n: usize) -> String {
    if s.chars().count() <= n {
        s.to_string()
    } else {
        let mut t: String = s.chars().take(n.saturating_sub(1)).collect();
        t.push('~');
        t
    }
}

/// The readable table (every line at most [`WIDTH`] columns).
pub(super) fn table(s: &Snapshot, sf: Option<&StatusFile>, source: Source) -> String {
    let mut o = String::new();
    let c = &s.controller;
    if source == Source::Http {
        let _ = writeln!(
            o,
            "{}",
            fit(
                &format!(
                    "controller  {}  pid {} on {}  up {}  scheme {}  db {}",
                    c.address,
                    c.pid,
                    c.host,
                    duration(c.uptime_seconds),
                    c.scheme,
                    s.db.backend
                ),
                WIDTH
            )
        );
    } else {
        let _ = writeln!(
            o,
            "controller  (hub queries only: start it with --metrics for jobs, rates and failures)"
        );
    }
    if let Some(f) = sf {
        let _ = writeln!(
            o,
            "{}",
            fit(&format!("status page {}", f.page_url()), WIDTH)
        );
    }
    let e = &s.engines;
    let _ = writeln!(
        o,
        "engines     {} registered: {} busy, {} idle; {} dead; {} pending",
        e.registered, e.busy, e.idle, e.dead, e.pending
    );
    let t = &s.tasks;
    let _ = writeln!(
        o,
        "tasks       submitted {}  queued {}  running {}  completed {}  failed {}  aborted {}  resubmitted {}",
        t.submitted, t.queued, t.running, t.completed, t.failed, t.aborted, t.resubmitted
    );
    if source == Source::Http {
        let r = &s.rates;
        let _ = writeln!(
            o,
            "rates       {:.1} submitted/s, {:.1} finished/s over the last {:.0}s",
            r.submitted_per_second, r.finished_per_second, r.interval_seconds
        );
        let _ = writeln!(
            o,
            "clients     {} (active in the last 5 minutes)",
            s.clients
        );
    }
    let _ = writeln!(o);
    let _ = writeln!(
        o,
        "{:<22} {:<11} {:>7} {:>5} {:>5} {:>5} {:>6} {:>7}  IDS",
        "JOB", "KIND", "ENGINES", "BUSY", "IDLE", "DEAD", "QUEUE", "DONE"
    );
    for j in &s.jobs {
        let mut ids = ranges(&j.ids);
        if !j.dead_ids.is_empty() {
            let _ = write!(ids, " (dead {})", ranges(&j.dead_ids));
        }
        let line = format!(
            "{:<22} {:<11} {:>7} {:>5} {:>5} {:>5} {:>6} {:>7}  {}",
            fit(&j.job, 22),
            fit(&j.kind, 11),
            j.registered,
            j.busy,
            j.idle,
            j.dead,
            j.queue,
            j.completed,
            ids
        );
        let _ = writeln!(o, "{}", fit(&line, WIDTH));
    }
    if !s.engine_rows.is_empty() && s.engine_rows.len() <= ENGINE_LINES {
        let _ = writeln!(o);
        let _ = writeln!(
            o,
            "{:>6}  {:<5} {:>6} {:>7}  JOB",
            "ENGINE", "STATE", "QUEUE", "DONE"
        );
        for r in &s.engine_rows {
            let line = format!(
                "{:>6}  {:<5} {:>6} {:>7}  {}",
                r.id,
                r.state.as_str(),
                r.queue,
                r.completed,
                r.job
            );
            let _ = writeln!(o, "{}", fit(&line, WIDTH));
        }
    }
    if !s.failures.is_empty() {
        let _ = writeln!(o);
        let _ = writeln!(o, "recent failures (newest last):");
        for f in &s.failures {
            let engine = f.engine_id.map_or("-".to_string(), |i| i.to_string());
            let day = (f.t.max(0.0) as u64) % 86_400;
            let when = format!("{:02}:{:02}:{:02}", day / 3600, (day % 3600) / 60, day % 60);
            let line = format!("  {when}  engine {engine:>5}  {}: {}", f.ename, f.evalue);
            let _ = writeln!(o, "{}", fit(&line.replace('\n', " "), WIDTH));
        }
    }
    o
}
