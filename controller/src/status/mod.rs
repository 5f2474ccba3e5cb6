//! The controller's status views: a live status page, `/api/status` (JSON) and `/metrics`
//! (Prometheus text), served on their own thread when `IPController.metrics` (`--metrics`)
//! names an address.
//!
//! The controller loop calls [`Status::tick`] on every pass; at most once a second it takes a
//! [`Snapshot`] of the hub (O(1) counters plus one pass over the registered engines), adds the
//! history and rates kept here, and swaps it into a shared slot. The HTTP thread
//! ([`http`]) only ever clones the `Arc` in that slot, so a slow or stuck HTTP client never
//! holds up routing; formatting happens on the HTTP thread.
//!
//! Where and with which token it is served is written to `security/rpar-status[-<id>].json`
//! (mode 0600) before the connection files, so whoever sees the connection files finds it.

pub mod http;
pub mod prometheus;

use anyhow::{Context, Result};
use rpar_core::status::{HistoryPoint, Rates, Snapshot, StatusFile};
use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tracing::{info, warn};

/// The latest snapshot, shared with the HTTP thread.
pub type Slot = Arc<Mutex<Arc<Snapshot>>>;

/// How often a snapshot is taken at most.
pub const PERIOD: Duration = Duration::from_secs(1);
/// History points kept (one a second: five minutes).
const HISTORY: usize = 300;
/// Window of the rates.
const RATE_WINDOW: usize = 10;

/// History and rates over successive snapshots; no I/O.
#[derive(Debug, Default)]
pub struct Publisher {
    last: Option<Instant>,
    history: VecDeque<(HistoryPoint, u64)>,
}

impl Publisher {
    /// Whether a snapshot is due.
    pub fn due(&self, now: Instant) -> bool {
        match self.last {
            None => true,
            Some(t) => now.saturating_duration_since(t) >= PERIOD,
        }
    }

    /// Add the history and the rates to a fresh snapshot taken at `now`.
    pub fn complete(&mut self, mut s: Snapshot, now: Instant) -> Snapshot {
        self.last = Some(now);
        let finished = s.tasks.completed + s.tasks.failed + s.tasks.aborted;
        let point = HistoryPoint {
            t: s.taken,
            queued: s.tasks.queued,
            running: s.tasks.running,
            finished,
        };
        if self.history.len() == HISTORY {
            self.history.pop_front();
        }
        self.history.push_back((point, s.tasks.submitted));
        let back = self.history.len().saturating_sub(RATE_WINDOW + 1);
        if let (Some((old, old_sub)), Some((new, new_sub))) =
            (self.history.get(back), self.history.back())
        {
            let dt = new.t - old.t;
            if dt > 0.0 {
                s.rates = Rates {
                    interval_seconds: dt,
                    submitted_per_second: new_sub.saturating_sub(*old_sub) as f64 / dt,
                    finished_per_second: new.finished.saturating_sub(old.finished) as f64 / dt,
                };
            }
        }
        s.history = self.history.iter().map(|(p, _)| p.clone()).collect();
        s
    }
}

/// The running status service: the publisher, the slot it fills and the status file it wrote.
pub struct Status {
    publisher: Publisher,
    slot: Slot,
    file: PathBuf,
}

impl Status {
    /// Serve at `addr` (`host:port`, port 0 for any) with `token`; write the status file.
    pub fn start(addr: &str, token: String, file: PathBuf) -> Result<Status> {
        let slot: Slot = Arc::new(Mutex::new(Arc::new(Snapshot::default())));
        let bound = http::spawn(addr, token.clone(), slot.clone())
            .with_context(|| format!("IPController.metrics = {addr:?}: serving the status page"))?;
        let host = match bound.ip() {
            ip if ip.is_unspecified() => {
                rpar_core::connection::hostname().unwrap_or_else(|| "localhost".into())
            }
            std::net::IpAddr::V6(ip) => format!("[{ip}]"),
            ip => ip.to_string(),
        };
        let sf = StatusFile {
            url: format!("http://{host}:{}/", bound.port()),
            token,
            pid: std::process::id(),
        };
        rpar_core::connection::write_private(&file, &sf)?;
        info!(url = %sf.url, file = %file.display(), "status page and metrics served");
        Ok(Status {
            publisher: Publisher::default(),
            slot,
            file,
        })
    }

    /// On every pass of the controller loop: take a snapshot when one is due.
    pub fn tick(&mut self, hub: &mut crate::hub::Hub, now: Instant) {
        if !self.publisher.due(now) {
            return;
        }
        let snap = Arc::new(self.publisher.complete(hub.snapshot(now), now));
        match self.slot.lock() {
            Ok(mut g) => *g = snap,
            Err(p) => *p.into_inner() = snap,
        }
    }
}

impl Drop for Status {
    fn drop(&mut self) {
        if let Err(e) = std::fs::remove_file(&self.file) {
            if e.kind() != std::io::ErrorKind::NotFound {
                warn!(path = %self.file.display(), error = %e, "could not remove the status file");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rpar_core::status::TaskCounts;

    fn snap(t: f64, submitted: u64, completed: u64) -> Snapshot {
        Snapshot {
            taken: t,
            tasks: TaskCounts {
                submitted,
                completed,
                ..Default::default()
            },
            ..Default::default()
        }
    }

    #[test]
    fn due_once_a_second() {
        let mut p = Publisher::default();
        let t0 = Instant::now();
        assert!(p.due(t0));
        p.complete(snap(0.0, 0, 0), t0);
        assert!(!p.due(t0 + Duration::from_millis(999)));
        assert!(p.due(t0 + PERIOD));
    }

    #[test]
    fn rates_over_the_window_and_bounded_history() {
        let mut p = Publisher::default();
        let t0 = Instant::now();
        let mut last = Snapshot::default();
        for i in 0..400u64 {
            last = p.complete(snap(i as f64, i * 10, i * 5), t0 + Duration::from_secs(i));
        }
        assert_eq!(last.history.len(), HISTORY);
        assert_eq!(last.rates.interval_seconds, RATE_WINDOW as f64);
        assert_eq!(last.rates.submitted_per_second, 10.0);
        assert_eq!(last.rates.finished_per_second, 5.0);
        assert_eq!(last.history.last().map(|h| h.finished), Some(399 * 5));
    }
}
