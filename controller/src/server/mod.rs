//! The controller process: binds every socket, writes the connection files, and runs one poll
//! loop that feeds the sans-I/O [`Hub`] and carries out its effects. One thread owns all ZeroMQ
//! sockets (they are not thread-safe); database writes that can be slow happen on the task
//! database's own thread.
//!
//! * [`bind`]: the table of socket roles and binding;
//! * [`files`]: the connection files, `--reuse` and the engine-state file (`--restore`);
//! * [`serve`]: the loop, over [`poll`] (which sockets have input) and [`frames`] (one message
//!   in or out); messages for engines not connected yet wait in the core's [`crate::hub::Parked`];

mod bind;
mod files;
mod frames;
mod poll;
mod serve;

pub use files::Files;

use crate::hub::{Hub, HubConfig};
use crate::settings::Settings;
use anyhow::{Context, Result};
use rpar_core::profile::ProfileDir;
use rpar_core::signals;
use std::time::Instant;
use tracing::{info, warn};

/// Check the loaded settings, write files, serve until stopped.
pub fn run(
    settings: Settings,
    profile: ProfileDir,
    cluster_id: String,
    session: String,
    db: crate::hub::Db,
) -> Result<()> {
    // SIGINT, SIGTERM and SIGABRT stop the loop; without SA_RESTART, so its poll returns at once
    if let Err(e) = signals::install(
        &[libc::SIGINT, libc::SIGTERM, libc::SIGABRT],
        signals::Restart::No,
    ) {
        warn!("{e}");
    }
    profile
        .ensure()
        .with_context(|| format!("creating profile directory {}", profile.path.display()))?;
    let files = Files::new(&profile, &cluster_id, settings.reuse_files);
    let reused = if settings.reuse_files {
        files.reusable()
    } else {
        None
    };
    let key = files::session_key(&settings, reused.as_ref())?;

    let ctx = zmq::Context::new();
    let sockets = bind::bind_all(&ctx, &settings, reused.as_ref())?;
    let (client_info, engine_info) = files::connection_info(&settings, &sockets, &key);
    // before the connection files: whoever sees those finds the status file too
    let status = match &settings.metrics {
        Some(addr) => Some(crate::status::Status::start(
            addr,
            rpar_core::status::token_for_key(&key),
            rpar_core::status::status_file(&profile.security(), &cluster_id),
        )?),
        None => None,
    };
    if reused.is_none() {
        files.write(&client_info, &engine_info)?;
    }
    info!(client = %files.client.display(), engine = %files.engine.display(), "connection files written");

    let now = Instant::now();
    let cfg = HubConfig {
        hb_period: settings.hb_period,
        max_heartbeat_misses: settings.max_heartbeat_misses,
        registration_timeout: settings.registration_timeout,
        engine_info,
        scheme: settings.scheme.clone(),
        hwm: settings.hwm,
        engine_death_grace: settings.engine_death_grace,
    };
    let mut hub = Hub::new(cfg, key.as_bytes(), session, db, now);
    if settings.restore_engines {
        if let Some(state) = files.load_engines() {
            hub.restore(&state, now);
            info!(path = %files.state.display(), "engines restored");
        }
    }
    info!(session = hub.session(), "rpar-controller ready");
    let result = serve::serve(&mut hub, &sockets, &files, status);
    files.remove();
    result
}
