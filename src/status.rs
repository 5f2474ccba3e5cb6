//! `rpar cluster status`: what a running cluster is doing, as a table (fits 100 columns; one
//! line per MPI job, one per engine only for small clusters), as JSON (`--json`), or refreshed
//! in place (`--watch`).
//!
//! Where the figures come from:
//! 1. the controller's `/api/status` when it serves one (`--metrics` /
//!    `IPController.metrics`): `security/rpar-status[-<id>].json` names the URL and token;
//! 2. otherwise the hub's own queries over ZeroMQ (`queue_request` on the registration socket,
//!    as the Python client asks): engines, their queues and completed counts, with no grouping
//!    by job and no failure history.
//!
//! The URL of the status page (with its token) is printed here and by `rpar cluster start`
//! ([`announce`]).

mod table;

use crate::hub::HubClient;
use anyhow::{anyhow, bail, Context, Result};
use rpar_core::profile::{self, ProfileDir, ProfileOpts};
use rpar_core::status::{
    status_file, EngineRow, EngineState, JobSummary, Snapshot, StatusFile, TaskCounts,
};
use serde_json::{json, Value};
use std::io::{Read, Write};
use std::path::PathBuf;
use std::time::Duration;
use table::table;

/// What the user asked for.
#[derive(Debug, Clone, Default)]
pub struct StatusArgs {
    pub profile: ProfileOpts,
    pub json: bool,
    pub watch: bool,
    /// Seconds between refreshes with `watch`.
    pub interval: f64,
}

/// Engines listed one per line up to this many; above, only the per-job summary.
const ENGINE_LINES: usize = 32;
/// The table's width.
const WIDTH: usize = 100;
/// How long the controller may take to answer.
const TIMEOUT: Duration = Duration::from_secs(5);

/// Where the status came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Source {
    Http,
    Hub,
}

/// A cluster's files, found from the profile options.
struct Located {
    profile: ProfileDir,
    cluster_id: String,
    client_file: PathBuf,
    status: Option<StatusFile>,
}

fn locate(opts: &ProfileOpts) -> Result<Located> {
    let profile = ProfileDir::resolve(opts);
    let cluster_id = profile::cluster_id(opts.cluster_id.as_deref());
    let client_file = profile.connection_file(&cluster_id, "client");
    if !client_file.exists() {
        bail!(
            "no cluster is running in profile dir {}{}: {} does not exist (start one with `rpar cluster start`)",
            profile.path.display(),
            if cluster_id.is_empty() {
                String::new()
            } else {
                format!(" with cluster id {cluster_id:?}")
            },
            client_file.display()
        );
    }
    let sf = status_file(&profile.security(), &cluster_id);
    let status = match std::fs::read_to_string(&sf) {
        Ok(text) => Some(
            serde_json::from_str::<StatusFile>(&text)
                .with_context(|| format!("reading {}", sf.display()))?,
        ),
        Err(_) => None,
    };
    Ok(Located {
        profile,
        cluster_id,
        client_file,
        status,
    })
}

/// After `rpar cluster start`: print the status page's URL if the controller serves one.
pub fn announce(profile: &ProfileDir, cluster_id: &str) {
    let sf = status_file(&profile.security(), cluster_id);
    if let Ok(Ok(f)) = std::fs::read_to_string(&sf).map(|t| serde_json::from_str::<StatusFile>(&t))
    {
        eprintln!("rpar: status page: {}", f.page_url());
        eprintln!(
            "rpar: metrics: {}metrics (Authorization: token {})",
            f.url, f.token
        );
    }
}

/// `rpar cluster status`.
pub fn status(args: &StatusArgs) -> Result<()> {
    let loc = locate(&args.profile)?;
    let mut hub: Option<HubClient> = None;
    loop {
        let (snap, source) = fetch(&loc, &mut hub)?;
        let text = if args.json {
            let mut v = serde_json::to_value(&snap)?;
            if let Some(o) = v.as_object_mut() {
                o.insert("profile_dir".into(), json!(loc.profile.path));
                o.insert("cluster_id".into(), json!(loc.cluster_id));
                o.insert(
                    "source".into(),
                    json!(if source == Source::Http { "api" } else { "hub" }),
                );
                o.insert(
                    "page_url".into(),
                    json!(loc.status.as_ref().map(StatusFile::page_url)),
                );
            }
            serde_json::to_string_pretty(&v)? + "\n"
        } else {
            table(&snap, loc.status.as_ref(), source)
        };
        // with --watch: home the cursor and clear the screen, then draw
        let clear = if args.watch { "\x1b[H\x1b[2J" } else { "" };
        let mut out = std::io::stdout().lock();
        match write!(out, "{clear}{text}").and_then(|()| out.flush()) {
            Ok(()) => {}
            // the reader went away (`| head`, a closed terminal): nothing more to show
            Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => return Ok(()),
            Err(e) => return Err(e).context("writing the status to standard output"),
        }
        if !args.watch {
            return Ok(());
        }
        std::thread::sleep(Duration::from_secs_f64(args.interval.max(0.2)));
    }
}

fn fetch(loc: &Located, hub: &mut Option<HubClient>) -> Result<(Snapshot, Source)> {
    if let Some(sf) = &loc.status {
        return match http_get(&sf.url, "api/status", &sf.token) {
            Ok(body) => Ok((
                serde_json::from_slice(&body)
                    .with_context(|| format!("the status reply from {}", sf.url))?,
                Source::Http,
            )),
            Err(e) => Err(e.context(format!(
                "the cluster in {} is not running, or its controller does not answer at {} (pid {})",
                loc.profile.path.display(),
                sf.url,
                sf.pid
            ))),
        };
    }
    if hub.is_none() {
        *hub = Some(HubClient::from_file(&loc.client_file)?);
    }
    let client = hub.as_mut().ok_or_else(|| anyhow!("no hub client"))?;
    let reply = client
        .request("queue_request", json!({"targets": null, "verbose": false}), TIMEOUT)
        .with_context(|| {
            format!(
                "the cluster in {} is not running, or its controller does not answer (connection file {})",
                loc.profile.path.display(),
                loc.client_file.display()
            )
        })?;
    Ok((from_queue_reply(&reply), Source::Hub))
}

/// A snapshot from a hub `queue_request` reply (`{"<id>": {"queue", "completed", "tasks"},
/// "unassigned": n}`; an error reply "No Engines Registered" is a cluster without engines).
fn from_queue_reply(reply: &Value) -> Snapshot {
    let mut s = Snapshot::default();
    let mut job = JobSummary {
        job: "all engines".into(),
        ..Default::default()
    };
    let mut ids: Vec<(u32, &Value)> = reply
        .as_object()
        .map(|o| {
            o.iter()
                .filter_map(|(k, v)| Some((k.parse::<u32>().ok()?, v)))
                .collect()
        })
        .unwrap_or_default();
    ids.sort_by_key(|(id, _)| *id);
    let mut tasks = TaskCounts::default();
    for (id, v) in ids {
        let n = |k: &str| v.get(k).and_then(Value::as_u64).unwrap_or(0);
        let queue = n("queue") + n("tasks");
        let state = if queue > 0 {
            EngineState::Busy
        } else {
            EngineState::Idle
        };
        s.engines.registered += 1;
        job.registered += 1;
        if state == EngineState::Busy {
            s.engines.busy += 1;
            job.busy += 1;
        } else {
            s.engines.idle += 1;
            job.idle += 1;
        }
        job.queue += queue;
        job.completed += n("completed");
        job.ids.push(id);
        tasks.running += queue;
        tasks.completed += n("completed");
        s.engine_rows.push(EngineRow {
            id,
            job: job.job.clone(),
            state,
            queue,
            completed: n("completed"),
            ..Default::default()
        });
    }
    tasks.queued = reply.get("unassigned").and_then(Value::as_u64).unwrap_or(0);
    s.tasks = tasks;
    if job.registered > 0 {
        s.jobs.push(job);
    }
    s
}

/// GET `{base}{path}` with the token; the body of a 200 reply.
fn http_get(base: &str, path: &str, token: &str) -> Result<Vec<u8>> {
    let rest = base
        .strip_prefix("http://")
        .ok_or_else(|| anyhow!("status URL {base} is not http://"))?;
    let hostport = rest.split('/').next().unwrap_or(rest);
    let addrs: Vec<std::net::SocketAddr> = std::net::ToSocketAddrs::to_socket_addrs(hostport)
        .with_context(|| format!("resolving {hostport}"))?
        .collect();
    let addr = addrs
        .first()
        .ok_or_else(|| anyhow!("{hostport} has no address"))?;
    let mut s = std::net::TcpStream::connect_timeout(addr, TIMEOUT)
        .with_context(|| format!("connecting to {hostport}"))?;
    s.set_read_timeout(Some(TIMEOUT))?;
    s.set_write_timeout(Some(TIMEOUT))?;
    write!(
        s,
        "GET /{path} HTTP/1.0\r\nHost: {hostport}\r\nAuthorization: token {token}\r\nConnection: close\r\n\r\n"
    )?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw)
        .with_context(|| format!("reading the reply from {hostport}"))?;
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| anyhow!("{hostport} sent a reply without headers"))?;
    let head = String::from_utf8_lossy(&raw[..split]);
    let code = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse::<u16>().ok())
        .ok_or_else(|| anyhow!("{hostport} sent a bad status line"))?;
    let body = raw[split + 4..].to_vec();
    if code != 200 {
        bail!(
            "{hostport} answered {code}: {}",
            String::from_utf8_lossy(&body).trim()
        );
    }
    Ok(body)
}

#[cfg(test)]
mod tests {
    use super::table::{duration, fit, ranges};
    use super::*;
    use rpar_core::status::Failure;

    fn big() -> Snapshot {
        let mut s = Snapshot::default();
        s.engines.registered = 16_384;
        s.jobs.push(JobSummary {
            job: "a-very-long-host-name.example.org:123456".into(),
            kind: "rpar-engine".into(),
            registered: 16_384,
            ids: (0..16_384).collect(),
            dead_ids: vec![3, 5, 6, 7],
            ..Default::default()
        });
        for id in 0..16_384 {
            s.engine_rows.push(EngineRow {
                id,
                ..Default::default()
            });
        }
        s.failures.push(Failure {
            ename: "ZeroDivisionError".into(),
            evalue: "x".repeat(300),
            ..Default::default()
        });
        s
    }

    #[test]
    fn large_clusters_are_summarised_and_fit_100_columns() {
        let sf = StatusFile {
            url: "http://127.0.0.1:1/".into(),
            token: "0123456789abcdef0123456789abcdef".into(),
            pid: 1,
        };
        let t = table(&big(), Some(&sf), Source::Http);
        for line in t.lines() {
            assert!(
                line.chars().count() <= WIDTH,
                "{} > {WIDTH}: {line}",
                line.len()
            );
        }
        assert!(t.contains("0-16383 (dead 3,5-7)"), "{t}");
        assert!(
            !t.contains("ENGINE  STATE"),
            "no per-engine lines for 16384 engines"
        );
        assert!(t.contains("ZeroDivisionError"));
        assert!(t.lines().count() < 20, "{t}");
    }

    #[test]
    fn queue_reply_fallback() {
        let reply = json!({"status": "ok", "unassigned": 2,
            "0": {"queue": 0, "completed": 4, "tasks": 1},
            "1": {"queue": 0, "completed": 6, "tasks": 0}});
        let s = from_queue_reply(&reply);
        assert_eq!(
            (s.engines.registered, s.engines.busy, s.engines.idle),
            (2, 1, 1)
        );
        assert_eq!(
            (s.tasks.completed, s.tasks.queued, s.tasks.running),
            (10, 2, 1)
        );
        assert_eq!(s.jobs[0].ids, vec![0, 1]);
        let t = table(&s, None, Source::Hub);
        assert!(t.contains("ENGINE  STATE"), "{t}");
        // no engines: an error reply, shown as an empty cluster
        let none = from_queue_reply(&json!({"status": "error", "ename": "IndexError"}));
        assert_eq!(none.engines.registered, 0);
    }

    #[test]
    fn not_running_names_the_profile_dir() {
        let d = tempfile::tempdir().unwrap();
        let opts = ProfileOpts {
            profile_dir: Some(d.path().to_path_buf()),
            cluster_id: Some("c1".into()),
            ..Default::default()
        };
        let e = locate(&opts).err().unwrap().to_string();
        assert!(e.contains("no cluster is running"), "{e}");
        assert!(e.contains(&d.path().display().to_string()), "{e}");
        assert!(e.contains("\"c1\""), "{e}");
    }

    #[test]
    fn helpers() {
        assert_eq!(ranges(&[0, 1, 2, 5, 7, 8]), "0-2,5,7-8");
        assert_eq!(ranges(&[]), "");
        assert_eq!(fit("abcdef", 4), "abc~");
        assert_eq!(duration(3725.0), "1h02m05s");
    }
}
