//! The Prometheus text exposition (format 0.0.4) of a status [`Snapshot`]: pure formatting, no
//! I/O. Names follow Prometheus conventions: an `rpar_` prefix, base units (`_seconds`,
//! `_bytes`), `_total` on counters, one metric per quantity with labels for its parts.

use rpar_core::status::Snapshot;
use std::fmt::Write;

/// `# HELP` and `# TYPE` lines, then one sample per `(labels, value)`.
fn family(out: &mut String, name: &str, kind: &str, help: &str, samples: &[(String, f64)]) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
    for (labels, v) in samples {
        if labels.is_empty() {
            let _ = writeln!(out, "{name} {}", number(*v));
        } else {
            let _ = writeln!(out, "{name}{{{labels}}} {}", number(*v));
        }
    }
}

fn one(out: &mut String, name: &str, kind: &str, help: &str, v: f64) {
    family(out, name, kind, help, &[(String::new(), v)]);
}

fn number(v: f64) -> String {
    if v.fract() == 0.0 && v.abs() < 9.0e15 {
        format!("{}", v as i64)
    } else {
        format!("{v}")
    }
}

/// A label value with `\`, `"` and newlines escaped.
fn esc(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// The whole exposition for one snapshot.
pub fn render(s: &Snapshot) -> String {
    let mut o = String::with_capacity(4096);
    let c = &s.controller;
    one(
        &mut o,
        "rpar_controller_start_time_seconds",
        "gauge",
        "When the controller started, seconds since the Unix epoch.",
        c.started,
    );
    one(
        &mut o,
        "rpar_controller_uptime_seconds",
        "gauge",
        "Seconds since the controller started.",
        c.uptime_seconds,
    );
    let e = &s.engines;
    family(
        &mut o,
        "rpar_engines",
        "gauge",
        "Engines by state (dead: registered once, gone since).",
        &[
            ("state=\"busy\"".into(), e.busy as f64),
            ("state=\"idle\"".into(), e.idle as f64),
            ("state=\"dead\"".into(), e.dead as f64),
            ("state=\"pending\"".into(), e.pending as f64),
        ],
    );
    let jobs: Vec<(String, f64)> = s
        .jobs
        .iter()
        .flat_map(|j| {
            let l = |state: &str| format!("job=\"{}\",state=\"{state}\"", esc(&j.job));
            [
                (l("busy"), j.busy as f64),
                (l("idle"), j.idle as f64),
                (l("dead"), j.dead as f64),
            ]
        })
        .collect();
    family(
        &mut o,
        "rpar_job_engines",
        "gauge",
        "Engines per MPI job (or Python ipengine) by state.",
        &jobs,
    );
    let queues: Vec<(String, f64)> = s
        .queues
        .iter()
        .map(|q| {
            (
                format!("scheduler=\"{}\"", esc(&q.scheduler)),
                q.depth as f64,
            )
        })
        .collect();
    family(
        &mut o,
        "rpar_queue_depth",
        "gauge",
        "Tasks waiting or outstanding per scheduler (task: waiting for an engine; task_assigned, mux, broadcast: on engines).",
        &queues,
    );
    let t = &s.tasks;
    one(
        &mut o,
        "rpar_tasks_submitted_total",
        "counter",
        "Requests submitted by clients (direct and load-balanced).",
        t.submitted as f64,
    );
    family(
        &mut o,
        "rpar_tasks_finished_total",
        "counter",
        "Tasks finished, by outcome.",
        &[
            ("outcome=\"ok\"".into(), t.completed as f64),
            ("outcome=\"error\"".into(), t.failed as f64),
            ("outcome=\"aborted\"".into(), t.aborted as f64),
        ],
    );
    one(
        &mut o,
        "rpar_tasks_resubmitted_total",
        "counter",
        "Tasks resubmitted by clients.",
        t.resubmitted as f64,
    );
    family(
        &mut o,
        "rpar_tasks_in_flight",
        "gauge",
        "Tasks in flight by state.",
        &[
            ("state=\"queued\"".into(), t.queued as f64),
            ("state=\"running\"".into(), t.running as f64),
        ],
    );
    let per_sock = |f: fn(&rpar_core::status::SocketCounts) -> u64| -> Vec<(String, f64)> {
        s.sockets
            .iter()
            .map(|x| (format!("socket=\"{}\"", esc(&x.socket)), f(x) as f64))
            .collect()
    };
    family(
        &mut o,
        "rpar_socket_received_messages_total",
        "counter",
        "Messages received per controller socket.",
        &per_sock(|x| x.received_messages),
    );
    family(
        &mut o,
        "rpar_socket_received_bytes_total",
        "counter",
        "Bytes received per controller socket.",
        &per_sock(|x| x.received_bytes),
    );
    family(
        &mut o,
        "rpar_socket_sent_messages_total",
        "counter",
        "Messages sent per controller socket.",
        &per_sock(|x| x.sent_messages),
    );
    family(
        &mut o,
        "rpar_socket_sent_bytes_total",
        "counter",
        "Bytes sent per controller socket.",
        &per_sock(|x| x.sent_bytes),
    );
    let r = &s.registration;
    one(
        &mut o,
        "rpar_registrations_total",
        "counter",
        "Engine registrations completed.",
        r.registrations as f64,
    );
    family(
        &mut o,
        "rpar_engine_departures_total",
        "counter",
        "Registered engines that left, by reason.",
        &[
            ("reason=\"unregistered\"".into(), r.unregistrations as f64),
            ("reason=\"heartbeat\"".into(), r.heartbeat_failures as f64),
        ],
    );
    one(
        &mut o,
        "rpar_registrations_stalled_total",
        "counter",
        "Registrations dropped because no heartbeat came.",
        r.stalled as f64,
    );
    one(
        &mut o,
        "rpar_heartbeats_total",
        "counter",
        "Heartbeat pings sent.",
        r.heartbeats as f64,
    );
    one(
        &mut o,
        "rpar_heartbeat_period_seconds",
        "gauge",
        "Heartbeat period.",
        c.heartbeat_period_seconds,
    );
    family(
        &mut o,
        "rpar_db_backlog_bytes",
        "gauge",
        "Bytes written to the task database and not yet committed.",
        &[(
            format!("backend=\"{}\"", esc(&s.db.backend)),
            s.db.backlog_bytes as f64,
        )],
    );
    one(
        &mut o,
        "rpar_clients",
        "gauge",
        "Clients that sent a request in the last five minutes.",
        s.clients as f64,
    );
    o
}

#[cfg(test)]
mod tests {
    use super::*;
    use rpar_core::status::{JobSummary, SocketCounts, TaskCounts};

    #[test]
    fn counters_and_labels() {
        let s = Snapshot {
            tasks: TaskCounts {
                submitted: 40,
                completed: 39,
                failed: 1,
                ..Default::default()
            },
            jobs: vec![JobSummary {
                job: "n\"1:4".into(),
                busy: 1,
                idle: 2,
                ..Default::default()
            }],
            sockets: vec![SocketCounts {
                socket: "task_client".into(),
                received_bytes: 1234,
                ..Default::default()
            }],
            ..Default::default()
        };
        let t = render(&s);
        assert!(
            t.contains("# TYPE rpar_tasks_finished_total counter\n"),
            "{t}"
        );
        assert!(t.contains("rpar_tasks_finished_total{outcome=\"ok\"} 39\n"));
        assert!(t.contains("rpar_tasks_finished_total{outcome=\"error\"} 1\n"));
        assert!(t.contains("rpar_tasks_submitted_total 40\n"));
        assert!(t.contains("rpar_job_engines{job=\"n\\\"1:4\",state=\"idle\"} 2\n"));
        assert!(t.contains("rpar_socket_received_bytes_total{socket=\"task_client\"} 1234\n"));
        // every sample line belongs to the family declared above it
        let mut family = "";
        for line in t.lines() {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                family = rest.split(' ').next().unwrap();
                let kind = rest.split(' ').nth(1).unwrap();
                assert_eq!(family.ends_with("_total"), kind == "counter", "{line}");
            } else if !line.starts_with('#') {
                assert!(line.starts_with(family), "{line} outside {family}");
            }
        }
    }

    #[test]
    fn numbers() {
        assert_eq!(number(3.0), "3");
        assert_eq!(number(0.25), "0.25");
    }
}
