//! `rpar-loadclient`: a load-balanced ipyparallel client in Rust, to measure a controller's
//! capacity with no Python on the client side (rpar-controller or Python `ipcontroller`).
//!
//! `rpar-loadclient --tasks N [--window W] [--min-engines K] [--file CLIENT_JSON | --profile-dir
//! DIR | --profile NAME]` reads `ipcontroller-client.json`, optionally waits (with
//! `connection_request`s on the registration socket) until K engines are registered, then
//! submits N load-balanced `apply_request`s on the task socket (see [`lbtask`]), keeping at most
//! W in flight, and collects the replies. It prints the counts and tasks/s (`--json`: one JSON
//! object); it exits 0 when every task got a reply, 1 otherwise (no reply for `--timeout`
//! seconds, or a setup error).

mod lbtask;

use anyhow::{bail, Context, Result};
use clap::Parser;
use rpar_core::connection::{self, disambiguate_interface, url, ClientInfo};
use rpar_core::flags::ProfileFlags;
use rpar_core::profile::{cluster_id, ProfileDir};
use rpar_core::wire::{Limits, Signer, WireMessage};
use rpar_core::MessageBuilder;
use serde_json::{json, Value};
use std::path::PathBuf;
use std::time::{Duration, Instant};

#[derive(Debug, Parser)]
#[command(
    name = "rpar-loadclient",
    about = "Load-balanced no-op tasks from a Rust client, for controller capacity benchmarks"
)]
struct Args {
    /// How many tasks to submit.
    #[arg(long)]
    tasks: u64,
    /// Most tasks in flight at once.
    #[arg(long, default_value_t = 256)]
    window: usize,
    /// Wait until this many engines are registered before submitting.
    #[arg(long = "min-engines", default_value_t = 0)]
    min_engines: usize,
    /// Give up after this many seconds without a reply (or waiting for engines).
    #[arg(long, default_value_t = 60.0)]
    timeout: f64,
    /// Print one JSON object instead of a line of text.
    #[arg(long)]
    json: bool,
    /// The client connection file (ipcontroller-client.json).
    #[arg(long, value_name = "PATH")]
    file: Option<PathBuf>,
    #[command(flatten)]
    profile: ProfileFlags,
}

fn client_file(a: &Args) -> PathBuf {
    if let Some(f) = &a.file {
        return f.clone();
    }
    let profile = ProfileDir::resolve(&a.profile.opts());
    profile.connection_file(&cluster_id(a.profile.cluster_id.as_deref()), "client")
}

fn main() {
    let args = Args::parse();
    match run(&args) {
        Ok(true) => {}
        Ok(false) => std::process::exit(1),
        Err(e) => {
            eprintln!("rpar-loadclient: error: {e:#}");
            std::process::exit(1);
        }
    }
}

fn dealer(ctx: &zmq::Context, addr: &str) -> Result<zmq::Socket> {
    let s = ctx.socket(zmq::DEALER)?;
    s.set_linger(0)?;
    s.set_sndhwm(0)?;
    s.set_rcvhwm(0)?;
    s.connect(addr)
        .with_context(|| format!("connecting to {addr}"))?;
    Ok(s)
}

/// Ask the hub for its engines until at least `n` are registered.
fn wait_for_engines(
    ctx: &zmq::Context,
    addr: &str,
    signer: &Signer,
    builder: &MessageBuilder,
    n: usize,
    timeout: Duration,
) -> Result<usize> {
    let query = dealer(ctx, addr)?;
    let deadline = Instant::now() + timeout;
    let mut verifier = signer.clone();
    loop {
        let req = builder.build(
            signer,
            vec![],
            "connection_request",
            b"{}",
            &json!({}),
            &json!({}),
            vec![],
        );
        query.send_multipart(req.into_frames(), 0)?;
        let mut seen = 0;
        if query.poll(zmq::POLLIN, 2000)? > 0 {
            let m = WireMessage::split(query.recv_multipart(0)?, &Limits::default())?;
            verifier.verify(&m).context("connection_reply")?;
            let c: Value = serde_json::from_slice(&m.content).unwrap_or(Value::Null);
            seen = c
                .get("engines")
                .and_then(Value::as_object)
                .map_or(0, |e| e.len());
        }
        if seen >= n {
            return Ok(seen);
        }
        if Instant::now() > deadline {
            bail!("{seen} engines registered after {timeout:?}, waiting for {n} ({addr})");
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn run(a: &Args) -> Result<bool> {
    if a.window == 0 {
        bail!("--window must be at least 1");
    }
    let path = client_file(a);
    let info: ClientInfo = connection::read(&path)?;
    if info.curve_serverkey.is_some() {
        bail!(
            "{} asks for CURVE encryption, which rpar-loadclient does not do: start the \
             controller without it",
            path.display()
        );
    }
    if info.pack != "json" || info.unpack != "json" {
        bail!("{}: only the json packer is supported", path.display());
    }
    let signer = Signer::from_scheme(&info.signature_scheme, info.key.as_bytes())
        .with_context(|| format!("{}: signature_scheme", path.display()))?;
    let iface = disambiguate_interface(&info.interface, &info.location);
    let ctx = zmq::Context::new();
    let builder = MessageBuilder::new();
    let timeout = Duration::from_secs_f64(a.timeout.max(0.1));
    let engines = if a.min_engines > 0 {
        wait_for_engines(
            &ctx,
            &url(&iface, info.registration),
            &signer,
            &builder,
            a.min_engines,
            timeout,
        )?
    } else {
        0
    };

    let task_addr = url(&iface, info.task);
    let task = dealer(&ctx, &task_addr)?;
    let mut verifier = signer.clone();
    let mut tasks = lbtask::Tasks::new(builder);
    let start = Instant::now();
    let mut last_reply = Instant::now();
    let mut next = 0u64;
    let mut complete = true;
    while tasks.tally.replies < a.tasks {
        while tasks.in_flight() < a.window && next < a.tasks {
            task.send_multipart(tasks.request(&signer, next), 0)?;
            next += 1;
        }
        let waited = last_reply.elapsed();
        if waited > timeout {
            complete = false;
            break;
        }
        let ms = i64::try_from((timeout - waited).as_millis().min(1000)).unwrap_or(1000);
        match task.poll(zmq::POLLIN, ms) {
            Ok(_) | Err(zmq::Error::EINTR) => {}
            Err(e) => bail!("poll: {e}"),
        }
        while let Ok(frames) = task.recv_multipart(zmq::DONTWAIT) {
            tasks.on_reply(&mut verifier, frames);
            last_reply = Instant::now();
        }
    }
    let secs = start.elapsed().as_secs_f64();
    let t = &tasks.tally;
    let rate = if secs > 0.0 {
        t.replies as f64 / secs
    } else {
        0.0
    };
    if a.json {
        let mut v = t.to_json();
        v["seconds"] = json!(secs);
        v["tasks_per_s"] = json!(rate);
        v["engines"] = json!(engines);
        v["complete"] = json!(complete);
        println!("{v}");
    } else {
        println!(
            "{} tasks, {} replies ({} ok: {} correct, {} none, {} wrong; {} errors {:?}; {} dropped) in {:.3} s: {:.0} tasks/s",
            t.submitted,
            t.replies,
            t.ok,
            t.correct,
            t.none,
            t.wrong,
            t.error_count(),
            t.errors,
            t.dropped,
            secs,
            rate
        );
    }
    if !complete {
        eprintln!(
            "rpar-loadclient: no reply for {:.1} s with {} tasks in flight ({task_addr})",
            a.timeout,
            tasks.in_flight()
        );
    }
    Ok(complete)
}
