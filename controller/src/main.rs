//! `rpar-controller`: start the controller (the `ipcontroller` of rpar).

use anyhow::{Context, Result};
use rpar_controller::{cli, db, server, settings};
use rpar_core::logging;
use rpar_core::profile::{self, ProfileDir};

/// Small blocks from mimalloc, big ones (task buffers) from glibc: [`rpar_controller::alloc`].
#[global_allocator]
static ALLOCATOR: rpar_controller::alloc::SplitAlloc = rpar_controller::alloc::SplitAlloc;

fn level(cmd: &cli::CommandLine) -> tracing::Level {
    if cmd.cli.debug {
        return tracing::Level::DEBUG;
    }
    cmd.cli
        .log_level
        .as_deref()
        .and_then(logging::parse_level)
        .unwrap_or(tracing::Level::INFO)
}

/// glibc serves libzmq's allocations and the controller's big blocks: keep task-sized blocks
/// (up to 32 MiB) in the heap, and up to 64 MiB free at its top ([`rpar_core::malloc`]).
/// Memory is still handed back: the task database asks glibc to return free pages after large
/// frees (culls, purges, SQLite commits; `rpar_taskdb` trims), so a controller that held and
/// culled a gigabyte of records does not keep it resident.
fn tune_allocator() {
    rpar_core::malloc::keep_in_heap(32 << 20, 64 << 20);
}

fn main() {
    tune_allocator();
    let cmd = match cli::parse_args(std::env::args()) {
        Ok(c) => c,
        Err(e) => e.exit(),
    };
    if let Err(e) = run(cmd) {
        eprintln!("rpar-controller: error: {e:#}");
        std::process::exit(1);
    }
}

fn run(cmd: cli::CommandLine) -> Result<()> {
    let profile = ProfileDir::resolve(&cmd.cli.p.opts());
    profile
        .ensure()
        .with_context(|| format!("creating profile directory {}", profile.path.display()))?;
    let cluster_id = profile::cluster_id(cmd.cli.p.cluster_id.as_deref());
    if let Some(w) = &cmd.cli.work_dir {
        std::env::set_current_dir(w).with_context(|| format!("--work-dir {}", w.display()))?;
    }

    // Logs: stderr and the profile's log/ directory.
    let log_name = if cluster_id.is_empty() {
        format!("rpar-controller-{}.log", std::process::id())
    } else {
        format!("rpar-controller-{cluster_id}-{}.log", std::process::id())
    };
    let _guard = logging::init(logging::Logging {
        filter: logging::Filter::Level(level(&cmd)),
        stderr: logging::Stderr::Yes,
        file: Some(profile.log().join(log_name)),
        background: true,
        target: true,
    })?;

    let settings = settings::load(&profile, &cmd)?;
    let session = settings
        .session
        .clone()
        .unwrap_or_else(rpar_core::ids::new_id);
    let db = db::open_db(&settings, &profile, &session)?;
    tracing::info!(profile = %profile.path.display(), cluster_id, "starting rpar-controller");
    open_file_limit();
    server::run(settings, profile, cluster_id, session, db)
}

/// Each engine holds about this many connections to the controller (registration, control,
/// mux, task, broadcast, heartbeat ping and pong, iopub).
const FDS_PER_ENGINE: u64 = 8;

/// Raise the open-file limit as far as allowed: a controller of a thousand engines needs ~8000
/// descriptors, and ZeroMQ refuses connections past the limit without a word.
fn open_file_limit() {
    match rpar_core::fdlimit::raise_to_hard() {
        Ok(l) => {
            let room = l.soft.saturating_sub(64) / FDS_PER_ENGINE;
            if room < 256 {
                tracing::warn!(
                    soft = l.soft,
                    hard = l.hard,
                    "open-file limit allows about {room} engines; raise `ulimit -Hn` for more"
                );
            } else {
                tracing::info!(
                    soft = l.soft,
                    was = l.was,
                    hard = l.hard,
                    "open-file limit: room for about {room} engines"
                );
            }
        }
        Err(e) => tracing::warn!("{e}"),
    }
}
