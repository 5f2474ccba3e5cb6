//! `rpar-loadgen`: stands in for MPI jobs of simulated ranks against `rpar-controller`, over the
//! native transport ([`rpar_core::native`]), with no MPI and no Python.
//!
//! `rpar-loadgen --engines N [--jobs J] [--profile-dir DIR | --profile NAME | --file ENGINE_JSON]`
//! opens J job connections (DEALERs to the controller's native ROUTER), registers N engines
//! over them (split as evenly as possible, each job asking for id = rank), prints how long
//! registration took, then answers: each job's heartbeat, every request as [`sim::Engine`]
//! does, `Reregister` (a restarted controller) by registering again with the ids it had. It
//! exits when the controller says it shuts down, when every engine answered a shutdown
//! request, or on SIGINT/SIGTERM (unregistering its jobs first).

mod sim;

use anyhow::{bail, Context, Result};
use clap::Parser;
use rpar_core::connection::{self, disambiguate_interface, url, EngineInfo};
use rpar_core::flags::ProfileFlags;
use rpar_core::native::{Body, Decoder, Departure, Encoder, EngineSpec, RouteHeader};
use rpar_core::profile::{cluster_id, ProfileDir};
use rpar_core::wire::{Frames, Signer};
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicI32, Ordering};
use std::time::{Duration, Instant};

#[derive(Debug, Parser)]
#[command(
    name = "rpar-loadgen",
    about = "Simulated MPI jobs of engines for rpar-controller (native transport)"
)]
struct Args {
    /// How many engines in all.
    #[arg(long)]
    engines: u32,
    /// Over how many job connections.
    #[arg(long, default_value_t = 1)]
    jobs: u32,
    /// The engine connection file (ipcontroller-engine.json).
    #[arg(long, value_name = "PATH")]
    file: Option<PathBuf>,
    #[command(flatten)]
    profile: ProfileFlags,
    /// Seconds to wait for every job's registration reply.
    #[arg(long, default_value_t = 60.0)]
    timeout: f64,
}

static SIGNAL: AtomicI32 = AtomicI32::new(0);

extern "C" fn on_signal(sig: nix::libc::c_int) {
    SIGNAL.store(sig, Ordering::SeqCst);
}

fn install_signal_handlers() {
    use nix::sys::signal::{sigaction, SaFlags, SigAction, SigHandler, SigSet, Signal};
    let act = SigAction::new(
        SigHandler::Handler(on_signal),
        SaFlags::empty(),
        SigSet::empty(),
    );
    for s in [Signal::SIGINT, Signal::SIGTERM] {
        // SAFETY: the handler only stores to an atomic.
        if let Err(e) = unsafe { sigaction(s, &act) } {
            eprintln!("rpar-loadgen: cannot install {s} handler: {e}");
        }
    }
}

/// One simulated job: its connection and its engines.
struct Job {
    sock: zmq::Socket,
    enc: Encoder,
    /// Rank → engine (ids filled in at registration).
    ranks: Vec<sim::Engine>,
    /// Engine id → rank.
    by_id: HashMap<u32, usize>,
    registered: bool,
}

impl Job {
    fn register(&mut self) -> Result<()> {
        let engines = self
            .ranks
            .iter()
            .enumerate()
            .map(|(rank, e)| EngineSpec {
                rank: rank as u32,
                uuid: e.uuid.clone(),
                requested: e.id,
            })
            .collect();
        self.send(Body::Register { engines }, vec![])
    }

    fn send(&mut self, body: Body, payload: Frames) -> Result<()> {
        let frames = self.enc.encode(body, payload);
        self.sock.send_multipart(frames, 0).context("sending")
    }
}

fn engine_file(a: &Args) -> PathBuf {
    if let Some(f) = &a.file {
        return f.clone();
    }
    let profile = ProfileDir::resolve(&a.profile.opts());
    profile.connection_file(&cluster_id(a.profile.cluster_id.as_deref()), "engine")
}

fn main() {
    let args = Args::parse();
    match run(args) {
        Ok(code) => std::process::exit(code),
        Err(e) => {
            eprintln!("rpar-loadgen: error: {e:#}");
            std::process::exit(1);
        }
    }
}

fn run(a: Args) -> Result<i32> {
    install_signal_handlers();
    if a.jobs == 0 || a.engines < a.jobs {
        bail!("--jobs must be between 1 and --engines ({})", a.engines);
    }
    let path = engine_file(&a);
    let info: EngineInfo = connection::read(&path)?;
    let Some(native) = &info.rpar_native else {
        bail!(
            "{} has no rpar_native field: that controller does not offer the native transport \
             (start rpar-controller)",
            path.display()
        );
    };
    if native.version != rpar_core::native::VERSION {
        bail!(
            "the controller speaks native protocol version {}, this rpar-loadgen {}",
            native.version,
            rpar_core::native::VERSION
        );
    }
    let addr = url(
        &disambiguate_interface(&info.interface, &info.location),
        native.port,
    );
    let key = info.key.as_bytes().to_vec();
    let signer = Signer::new(&key);
    let mut decoder = Decoder::new(&key);
    let ctx = zmq::Context::new();
    let start = Instant::now();
    let mut jobs = Vec::new();
    for j in 0..a.jobs {
        let n = a.engines / a.jobs + u32::from(j < a.engines % a.jobs);
        let job_uuid = rpar_core::ids::new_id();
        let sock = ctx.socket(zmq::DEALER)?;
        sock.set_identity(job_uuid.as_bytes())?;
        sock.set_linger(2000)?;
        sock.set_sndhwm(0)?;
        sock.set_rcvhwm(0)?;
        sock.connect(&addr)
            .with_context(|| format!("connecting to {addr}"))?;
        let mut job = Job {
            sock,
            enc: Encoder::new(&key, rand::random()),
            ranks: (0..n)
                .map(|r| sim::Engine::new(r, rpar_core::ids::new_id()))
                .collect(),
            by_id: HashMap::new(),
            registered: false,
        };
        job.register()?;
        jobs.push(job);
    }
    let deadline = start + Duration::from_secs_f64(a.timeout.max(0.1));
    let mut announced = false;
    loop {
        if !announced && jobs.iter().all(|j| j.registered) {
            announced = true;
            println!(
                "registered {} engines in {} job(s) in {:.3} s",
                a.engines,
                a.jobs,
                start.elapsed().as_secs_f64()
            );
        }
        if !announced && Instant::now() > deadline {
            bail!("registration timed out after {:.1}s ({addr})", a.timeout);
        }
        let sig = SIGNAL.load(Ordering::SeqCst);
        if sig != 0 {
            for j in &mut jobs {
                let _ = j.send(Body::Unregister(Departure::Signal(sig)), vec![]);
            }
            eprintln!("rpar-loadgen: signal {sig}: jobs unregistered");
            return Ok(128 + sig);
        }
        if announced && jobs.iter().all(|j| j.ranks.iter().all(|e| e.done)) {
            println!("every engine was shut down");
            return Ok(0);
        }
        let ready: Vec<bool> = {
            let mut items: Vec<zmq::PollItem> = jobs
                .iter()
                .map(|j| j.sock.as_poll_item(zmq::POLLIN))
                .collect();
            match zmq::poll(&mut items, 100) {
                Ok(_) | Err(zmq::Error::EINTR) => {}
                Err(e) => bail!("poll: {e}"),
            }
            items.iter().map(zmq::PollItem::is_readable).collect()
        };
        for (job, ready) in jobs.iter_mut().zip(ready) {
            if !ready {
                continue;
            }
            while let Ok(frames) = job.sock.recv_multipart(zmq::DONTWAIT) {
                if serve(job, &mut decoder, &signer, frames)? {
                    println!("the controller shut down");
                    return Ok(0);
                }
            }
        }
    }
}

/// Act on one message of a job's connection; true when the controller shuts down.
fn serve(job: &mut Job, decoder: &mut Decoder, signer: &Signer, frames: Frames) -> Result<bool> {
    let (env, payload) = match decoder.decode_owned(frames) {
        Ok(x) => x,
        Err(e) => {
            eprintln!("rpar-loadgen: dropped: {e}");
            return Ok(false);
        }
    };
    match env.body {
        Body::Registered(Ok(g)) => {
            if g.ids.len() != job.ranks.len() {
                bail!(
                    "{} ids granted for {} engines",
                    g.ids.len(),
                    job.ranks.len()
                );
            }
            job.by_id.clear();
            for (rank, (e, id)) in job.ranks.iter_mut().zip(g.ids).enumerate() {
                e.id = id;
                job.by_id.insert(id, rank);
            }
            job.registered = true;
        }
        Body::Registered(Err(why)) => bail!("registration refused: {why}"),
        Body::Ping { token } => job.send(Body::Pong { token }, vec![])?,
        Body::Reregister => {
            eprintln!("rpar-loadgen: the controller does not know this job: registering again");
            job.register()?;
        }
        Body::Shutdown => return Ok(true),
        Body::Route(h) => {
            let Some(&rank) = job.by_id.get(&h.engine) else {
                return Ok(false);
            };
            let e = &mut job.ranks[rank];
            let replies = e.on_request(signer, h.channel, payload);
            let engine = e.id;
            for (channel, frames) in replies {
                job.send(Body::Route(RouteHeader { engine, channel }), frames)?;
            }
        }
        Body::Register { .. } | Body::Pong { .. } | Body::Hello | Body::Unregister(_) => {}
    }
    Ok(false)
}
