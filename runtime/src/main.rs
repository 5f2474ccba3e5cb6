//! `rpar-engine`: one MPI job of ipyparallel engines.
//!
//! `mpiexec -n N rpar-engine [--profile=...]` registers N engines with an ipyparallel
//! controller (Python `ipcontroller` or `rpar-controller`), engine id = MPI rank. Rank 0 alone
//! opens ZeroMQ sockets and relays each engine's traffic over MPI (a duplicate of COMM_WORLD) to
//! the rank that owns it; every rank embeds CPython and runs its engine's requests.
//!
//! Start-up order (and why):
//! 1. arguments; fork the nanny on rank 0 (before any thread exists);
//! 2. `MPI_Init_thread(MULTIPLE)`; a panic anywhere aborts the whole job;
//! 3. rank 0 resolves profile, config and connection file (waiting for it) and broadcasts them;
//! 4. GPU binding per rank (`--gpus=auto`); stdout/stderr capture, logging, embedded Python
//!    (venv-aware); pre-flight: every rank imports ipyparallel's serialization, or the job exits
//!    with one line saying which Python lacks it and how to fix that (`preflight`);
//! 5. rank 0 raises its open-file limit for the job's sockets, registers every engine and
//!    broadcasts the ids;
//! 6. doorbells; barrier;
//! 7. rank 0 opens the engine sockets (hearts start beating); runtime thread per rank, which
//!    answers heartbeats and queues requests from here on;
//! 8. each rank creates its shell/namespace and runs the startup script (slow in big jobs on
//!    few cores, hence after the hearts); the main thread serves Python requests until the job
//!    exits; `MPI_Finalize` on a clean exit.
//!
//! mpi4py in engine code uses the MPI this process already initialized (mpi4py.rc.initialize is
//! irrelevant: `MPI_Initialized` is true). mpi4py >= 4.1 wheels choose their module by the MPI
//! loaded in the process (OpenMPI: `libmpi.so.40`; MPICH ABI: `libmpi.so.12`). Debian 12's MPICH
//! names its library `libmpich.so.12` only, so for the MPICH build put a directory holding a link
//! `libmpi.so.12 -> /usr/lib/x86_64-linux-gnu/libmpich.so.12` on `LD_LIBRARY_PATH` (mpiexec.mpich
//! passes it on; the loader then maps the same library, not a second MPI), as
//! `tests/util_engine.py::mpich_abi_dir` does. Without it `from mpi4py import MPI` raises
//! `ImportError: libmpi.so.12: cannot open shared object file`.

mod broker;
mod capture;
mod cli;
mod compat;
mod curve;
mod doorbell;
mod fair;
mod gpus;
mod job;
mod kernel;
mod link;
mod nanny;
mod native;
mod net;
mod pace;
mod preflight;
mod pybuf;
mod python;
mod relay;
mod runtime;
mod session;
mod transport;
mod tunnel;

use anyhow::{Context, Result};
use mpi::traits::*;
use relay::Rank;
use rpar_core::wire::Signer;
use std::sync::Arc;
use std::time::Duration;
use tracing::{error, info, warn};

fn main() {
    let code = match run() {
        Ok(code) => code,
        Err(e) => {
            eprintln!("rpar-engine: error: {e:#}");
            error!("{e:#}");
            1
        }
    };
    std::process::exit(code);
}

/// Say why, then take the whole MPI job down (a rank that fails alone would leave the others
/// hanging).
fn abort_job(why: &str) -> ! {
    eprintln!("rpar-engine: {why}; aborting the MPI job");
    error!("{why}; aborting the MPI job");
    // SAFETY: MPI_Abort on COMM_WORLD tears down every rank.
    unsafe {
        mpi::ffi::MPI_Abort(mpi::ffi::RSMPI_COMM_WORLD, 1);
    }
    // MPI_Abort does not return; should an MPI implementation do so, do not go on either
    std::process::exit(1)
}

/// Rank 0's connection to the controller, between registration and the runtime thread.
enum Net0 {
    /// Contexts and the per-engine registration sockets.
    Compat(net::Contexts, Vec<zmq::Socket>),
    Native(Box<native::JobConn>),
}

fn run() -> Result<i32> {
    let args: Vec<String> = std::env::args().collect();
    let opts = cli::parse(&args)?;
    if opts.version {
        println!("{}", cli::version_text());
        return Ok(0);
    }
    if opts.args.check {
        return preflight::check_main(&opts);
    }

    // 1. nanny, before any thread
    let env_rank = cli::rank_from_env();
    let nanny = if env_rank.unwrap_or(0) == 0 && opts.nanny {
        match nanny::Nanny::spawn() {
            Ok(n) => Some(n),
            Err(e) => {
                eprintln!(
                    "rpar-engine: no nanny ({e}); a killed rank 0 will not unregister its engines"
                );
                None
            }
        }
    } else {
        None
    };
    runtime::install_signal_handlers();
    kernel::set_python_thread();

    // 2. MPI
    let (universe, granted) = mpi::initialize_with_threading(mpi::Threading::Multiple)
        .context("MPI_Init_thread failed (is this an MPI environment?)")?;
    let world = universe.world();
    let rank = world.rank() as u32;
    if rank == 0 {
        // Every relayed 1 MB request or reply passes through blocks of its size on rank 0
        // (ZeroMQ's buffer, the frame sent on over MPI): from the heap they are reused, where
        // their own mappings cost about 130 page faults per 1 MB task. Up to 4 MiB only, and
        // 8 MiB kept free: the user's big arrays are still mapped and unmapped as glibc does by
        // default. The other ranks' blocks are reused already (3 faults per task).
        rpar_core::malloc::keep_in_heap(4 << 20, 8 << 20);
    }
    let size = world.size() as u32;
    std::panic::set_hook(Box::new(|info| abort_job(&format!("fatal: {info}"))));
    let relay_comm = world.duplicate();

    // 3. boot information from rank 0
    let boot = if rank == 0 {
        cli::Boot::prepare(&opts, size)
    } else {
        cli::Boot::default()
    };
    let boot = cli::Boot::broadcast(&relay_comm, boot);
    if !boot.ok {
        if rank == 0 {
            eprintln!("rpar-engine: {}", boot.error);
        }
        return Ok(1);
    }
    if let Some(dir) = &boot.work_dir {
        std::env::set_current_dir(dir)
            .with_context(|| format!("changing into work_dir {}", dir.display()))?;
    }

    // 4. GPUs for this rank (before Python reads its environment); capture, logging, Python
    let local = preflight::node_rank(&relay_comm);
    let gpu_line = preflight::bind_gpus(boot.gpus, local);
    let capture = capture::Capture::install().context("capturing stdout/stderr")?;
    cli::init_logging(&boot, rank, &capture);
    let span = tracing::info_span!("engine", rank);
    let _g = span.enter();
    if granted < mpi::Threading::Multiple {
        warn!(
            "MPI granted thread level {granted:?}, not Multiple: the relay thread and user MPI \
             calls (mpi4py) must not overlap; avoid MPI in engine code"
        );
    } else {
        info!("MPI thread level {granted:?}, {size} rank(s)");
    }
    for w in &boot.warnings {
        if rank == 0 {
            warn!("{w}");
        }
    }
    for n in &boot.notes {
        if rank == 0 {
            tracing::debug!("{n}");
        }
    }
    match gpu_line {
        Ok(Some(line)) => info!("{line}"),
        Ok(None) => {}
        Err(e) => warn!("GPU binding: {e:#}; the environment is left as it was"),
    }
    let exe = python::choose_executable(boot.python_venv.as_deref());
    python::initialize(exe.as_deref())?;
    python::prepare_imports()?;
    // pre-flight: every rank can run requests, or the job exits before registering anything
    if preflight::require_everywhere(&relay_comm, boot.python_venv.as_deref(), local.0 == 0)
        .is_err()
    {
        return Ok(1);
    }
    let (py_version, py_prefix, py_exe) = python::describe()?;
    let py_short = py_version
        .split_whitespace()
        .next()
        .unwrap_or("")
        .to_string();
    info!("Python {py_short} (prefix {py_prefix}, executable {py_exe})");

    // 5. registration (rank 0), broadcast
    let conn = boot
        .conn
        .clone()
        .context("no connection info in the boot message")?;
    let mut addrs = net::Addrs::from_info(&conn);
    let key = conn.key.as_bytes().to_vec();
    let mut net0: Option<Net0> = None;
    // rank 0's ssh tunnel (its ssh process lives as long as this)
    let mut _tunnel: Option<tunnel::Tunnel> = None;
    let mut native_endpoint = boot.native.clone();
    let reg = if rank == 0 {
        let timeout = Duration::from_secs_f64(boot.timeout_s);
        if boot.curve.is_some() {
            info!("Using CurveZMQ security");
        }
        let tunnelled = match &boot.ssh {
            Some(spec) => tunnel::open(spec, &addrs, native_endpoint.as_deref()).map(|t| {
                addrs = t.addrs.clone();
                native_endpoint = native_endpoint.as_deref().map(|e| t.local_url(e));
                _tunnel = Some(t);
            }),
            None => Ok(()),
        };
        let r = tunnelled
            .map_err(anyhow::Error::from)
            .and_then(|()| match &native_endpoint {
                Some(endpoint) => {
                    native::JobConn::connect(endpoint, &key, &boot.uuids, boot.curve.as_ref())
                        .and_then(|mut conn| {
                            let (ids, hb_period_ms) = conn.register(timeout)?;
                            Ok((
                                Net0::Native(Box::new(conn)),
                                net::Registered { ids, hb_period_ms },
                            ))
                        })
                }
                None => {
                    let mut ctx = net::Contexts::new().with_curve(boot.curve.clone());
                    net::ensure_fd_limit(boot.uuids.len())
                        .and_then(|()| net::register(&mut ctx, &addrs, &key, &boot.uuids, timeout))
                        .map(|(socks, reg)| (Net0::Compat(ctx, socks), reg))
                }
            });
        match r {
            Ok((n, reg)) => {
                net0 = Some(n);
                cli::RegOutcome {
                    ok: true,
                    error: String::new(),
                    reg: Some(reg),
                }
            }
            Err(e) => cli::RegOutcome {
                ok: false,
                error: format!("{e:#}"),
                reg: None,
            },
        }
    } else {
        cli::RegOutcome::default()
    };
    let reg = cli::broadcast_json(&relay_comm, reg);
    let Some(registered) = reg.reg.filter(|_| reg.ok) else {
        error!("Registration Failed: {}", reg.error);
        if rank == 0 {
            eprintln!("rpar-engine: registration failed: {}", reg.error);
        }
        return Ok(255);
    };
    let engine_id = registered.ids.get(rank as usize).copied().unwrap_or(rank);
    let uuid = boot.uuids.get(rank as usize).cloned().unwrap_or_default();
    info!("Completed registration with id {engine_id}");

    // 6. the engine on this rank
    let session = Arc::new(session::Session::new(
        Rank(rank),
        engine_id,
        uuid,
        Signer::new(&key),
    ));
    let (outbox, outbox_rx) = session::Outbox::new()?;
    capture.attach(session.clone(), outbox.clone());
    let queue = kernel::JobQueue::new();
    let core = kernel::EngineCore::new(
        session.clone(),
        Signer::new(&key),
        outbox.clone(),
        queue.clone(),
        py_short.clone(),
    );
    // doorbells: bind, wait for every rank, then find out which peers can be rung
    let bell = if std::env::var("RPAR_ENGINE_DOORBELL").as_deref() == Ok("0") {
        None
    } else {
        let job = boot.uuids.first().cloned().unwrap_or_default();
        match doorbell::Doorbell::bind(&job, Rank(rank), size) {
            Ok(b) => Some(b),
            Err(e) => {
                warn!("no doorbell ({e}): MPI traffic is probed on a timer");
                None
            }
        }
    };
    relay_comm.barrier();
    let mut link = link::Link::new(relay_comm);
    if let Some(mut b) = bell {
        let peers: Vec<Rank> = if rank == 0 {
            (1..size).map(Rank).collect()
        } else {
            vec![Rank(0)]
        };
        let reached = b.probe(peers.iter().copied());
        if reached < peers.len() {
            info!(
                "doorbells reach {reached} of {} peer rank(s); the others are probed on a timer",
                peers.len()
            );
        }
        link = link.with_doorbell(b, reached == peers.len());
    }

    // 7. runtime thread
    let rt_span = span.clone();
    let handle = if rank == 0 {
        let net0 = net0.context("rank 0 has no connection to the controller")?;
        if let Some(n) = &nanny {
            n.arm(
                &addrs.registration,
                &conn.key,
                boot.curve.clone(),
                boot.uuids
                    .iter()
                    .cloned()
                    .zip(registered.ids.iter().copied())
                    .collect(),
            );
        }
        let net: Box<dyn transport::Transport> = match net0 {
            Net0::Compat(mut ctx, reg_socks) => {
                let sockets =
                    net::Sockets::open(&mut ctx, reg_socks, &addrs, &boot.uuids, &registered.ids)?;
                if ctx.contexts() > 1 {
                    info!(
                        "{} ZeroMQ sockets in {} contexts",
                        ctx.sockets(),
                        ctx.contexts()
                    );
                }
                let ids = registered.ids.clone();
                Box::new(compat::Compat::new(
                    sockets,
                    key.clone(),
                    boot.uuids.clone(),
                    ids,
                ))
            }
            Net0::Native(conn) => {
                info!("native transport: one connection for the job's {size} engines");
                conn
            }
        };
        let r0 = runtime::Rank0 {
            net,
            link,
            core,
            outbox: outbox_rx,
            queue: queue.clone(),
            hb_period: Duration::from_millis(registered.hb_period_ms),
            max_heartbeat_misses: boot.max_heartbeat_misses,
            nanny,
        };
        std::thread::Builder::new()
            .name("runtime".into())
            .spawn(move || {
                let _g = rt_span.enter();
                let (code, link) = r0.run();
                (code, Some(link))
            })?
    } else {
        let link = link::SharedLink::new(link);
        if granted >= mpi::Threading::Multiple {
            // the engine's replies go to rank 0 from the thread that made them
            outbox.send_directly(link.clone(), &outbox_rx);
        }
        let rn = runtime::RankN {
            link,
            core,
            outbox: outbox_rx,
            queue: queue.clone(),
        };
        std::thread::Builder::new()
            .name("runtime".into())
            .spawn(move || {
                let _g = rt_span.enter();
                rn.run()
            })?
    };

    // 8. the user namespace (IPython shell, startup script/command). This comes after the
    // runtime thread, which answers heartbeats and queues requests meanwhile: in a big job on
    // few cores the ranks' Python start-up can take longer than the controller's registration
    // timeout, and an engine whose heart is silent that long is dropped.
    let executor = match python::Executor::new(
        session.clone(),
        outbox.clone(),
        capture.clone(),
        &boot.startup(),
    ) {
        Ok(x) => x,
        Err(e) => abort_job(&format!("rank {rank}: {e:#}")),
    };
    executor.serve(&queue);
    let (code, link) = match handle.join() {
        Ok(x) => x,
        Err(_) => {
            error!("runtime thread panicked");
            return Ok(1);
        }
    };
    let Some(mut link) = link.filter(|_| code == 0) else {
        // Some rank is gone or the job is being killed: no collective finalize.
        // SAFETY: immediate exit.
        unsafe { libc::_exit(code) };
    };
    link.comm().barrier();
    link.drain();
    info!("clean exit");
    drop(link);
    drop(universe);
    Ok(0)
}
