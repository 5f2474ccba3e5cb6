//! Rank 0's ZeroMQ side in the "compat" transport: for every rank, the sockets a Python ipengine
//! opens, with identity = that engine's uuid.
//!
//! * registration: a DEALER per engine → Hub ROUTER (`registration_request`, and
//!   `unregistration_request` on exit);
//! * shell: a ROUTER per engine connected to `mux`, `task` and `broadcast[id % n]`;
//! * control: a ROUTER per engine connected to `control`;
//! * heartbeat: a DEALER per engine → `hb_pong`, plus one SUB on `hb_ping` shared by all
//!   (pings are identical for every engine; each engine's echo comes back from its own rank);
//! * iopub: one PUB shared by all engines (topics carry the engine id).
//!
//! Registration asks for id = rank and waits `timeout` for every reply.

use anyhow::{anyhow, bail, Context, Result};
use rpar_core::connection::{disambiguate_interface, url, EngineInfo};
use rpar_core::wire::{Frames, Limits, Signer, WireMessage};
use rpar_core::MessageBuilder;
use serde_json::{json, Value};
use std::time::{Duration, Instant};
use tracing::{info, warn};

/// Addresses from the connection file.
#[derive(Debug, Clone)]
pub struct Addrs {
    pub registration: String,
    pub control: String,
    pub mux: String,
    pub task: String,
    pub iopub: String,
    pub hb_ping: String,
    pub hb_pong: String,
    pub broadcast: Vec<String>,
}

impl Addrs {
    pub fn from_info(info: &EngineInfo) -> Addrs {
        let iface = disambiguate_interface(&info.interface, &info.location);
        let u = |p: u16| url(&iface, p);
        Addrs {
            registration: u(info.registration),
            control: u(info.control),
            mux: u(info.mux),
            task: u(info.task),
            iopub: u(info.iopub),
            hb_ping: u(info.hb_ping),
            hb_pong: u(info.hb_pong),
            broadcast: info.broadcast.iter().map(|p| u(*p)).collect(),
        }
    }
}

/// What registration gave each rank.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Registered {
    pub ids: Vec<u32>,
    pub hb_period_ms: u64,
}

/// The sockets of all engines of the job.
pub struct Sockets {
    pub reg: Vec<zmq::Socket>,
    pub shell: Vec<zmq::Socket>,
    pub control: Vec<zmq::Socket>,
    pub heart: Vec<zmq::Socket>,
    pub hb_sub: zmq::Socket,
    pub iopub: zmq::Socket,
}

/// ZeroMQ contexts for rank 0's sockets.
///
/// A context holds at most 1023 sockets (`ZMQ_MAX_SOCKETS`, which the `zmq` crate cannot set),
/// and rank 0 opens four per rank, so a job of more than 255 ranks needs several contexts. TCP
/// sockets of different contexts work together as one; each context adds an I/O thread, which
/// a big job can use.
pub struct Contexts {
    list: Vec<zmq::Context>,
    in_last: usize,
    per_context: usize,
}

impl Contexts {
    /// Sockets put in one context (below libzmq's default of 1023); the environment variable
    /// `RPAR_ENGINE_SOCKETS_PER_CONTEXT` sets fewer (more I/O threads, or tests of big jobs).
    pub const PER_CONTEXT: usize = 1000;

    pub fn new() -> Contexts {
        let per_context = std::env::var("RPAR_ENGINE_SOCKETS_PER_CONTEXT")
            .ok()
            .and_then(|v| v.trim().parse::<usize>().ok())
            .filter(|n| (1..=Self::PER_CONTEXT).contains(n))
            .unwrap_or(Self::PER_CONTEXT);
        Contexts {
            list: vec![zmq::Context::new()],
            in_last: 0,
            per_context,
        }
    }

    /// A new socket, in a context with room for it.
    pub fn socket(&mut self, kind: zmq::SocketType) -> Result<zmq::Socket> {
        if self.in_last >= self.per_context {
            self.list.push(zmq::Context::new());
            self.in_last = 0;
        }
        self.in_last += 1;
        let ctx = self.list.last().context("no ZeroMQ context")?;
        ctx.socket(kind)
            .with_context(|| format!("creating ZeroMQ socket {}", self.sockets()))
    }

    /// How many sockets were made.
    pub fn sockets(&self) -> usize {
        (self.list.len() - 1) * self.per_context + self.in_last
    }

    /// How many contexts are in use.
    pub fn contexts(&self) -> usize {
        self.list.len()
    }
}

impl Default for Contexts {
    fn default() -> Self {
        Contexts::new()
    }
}

/// Descriptors rank 0 holds per rank in the compat transport (measured: registration, shell,
/// control and heart sockets with their signalling pairs, and six TCP connections).
const FDS_PER_RANK: u64 = 14;
/// Rank 0's descriptors besides those: MPI, Python, logs, the shared SUB and PUB.
const FDS_BASE: u64 = 64;

/// Make sure rank 0 may open the descriptors a job of `ranks` ranks needs: raise the soft
/// open-file limit (with room for the user's own files), or fail with what to change when the
/// hard limit cannot hold even the sockets. ZeroMQ would otherwise fail the connections past
/// the limit silently, and the engines would never register.
pub fn ensure_fd_limit(ranks: usize) -> Result<()> {
    use rpar_core::fdlimit::{current, raise_to, FdLimitError};
    let ranks = ranks as u64;
    let least = FDS_PER_RANK * ranks + FDS_BASE;
    let comfy = least + 2 * ranks + 192;
    let what = format!("rank 0 of a job of {ranks} ranks (compat transport)");
    let hard = current()?.hard;
    if hard < least {
        return Err(FdLimitError::TooLow {
            what,
            unit: "ranks per job",
            need: least,
            hard,
        }
        .into());
    }
    if hard < comfy {
        warn!(
            "open-file limit raised to the hard limit {hard}, a little under the {comfy} a job of {ranks} ranks would like"
        );
    }
    let lim = raise_to(comfy.min(hard), &what, "ranks per job")?;
    if lim.soft != lim.was {
        info!(
            "open-file limit raised from {} to {} (hard {}) for {ranks} ranks",
            lim.was, lim.soft, lim.hard
        );
    } else {
        tracing::debug!(?lim, "open-file limit is enough");
    }
    Ok(())
}

fn sock(ctx: &mut Contexts, kind: zmq::SocketType, identity: Option<&str>) -> Result<zmq::Socket> {
    let s = ctx.socket(kind)?;
    s.set_linger(1000)?;
    if let Some(id) = identity {
        s.set_identity(id.as_bytes())?;
    }
    Ok(s)
}

/// A message from an engine to the Hub's registration socket: session = the engine's uuid, no
/// parent, empty metadata.
fn registration_message(signer: &Signer, uuid: &str, msg_type: &str, content: &Value) -> Frames {
    MessageBuilder::with_session(uuid.to_string())
        .build(signer, vec![], msg_type, b"{}", &json!({}), content, vec![])
        .into_frames()
}

/// `unregistration_request {"id"}` for engine `id` (also sent by the [nanny](crate::nanny)).
pub fn unregistration_request(signer: &Signer, uuid: &str, id: u32) -> Frames {
    registration_message(signer, uuid, "unregistration_request", &json!({ "id": id }))
}

/// Register every engine (uuid per rank, id = rank requested) and wait for all replies.
pub fn register(
    ctx: &mut Contexts,
    addrs: &Addrs,
    key: &[u8],
    uuids: &[String],
    timeout: Duration,
) -> Result<(Vec<zmq::Socket>, Registered)> {
    let mut socks = Vec::with_capacity(uuids.len());
    let mut verifier = Signer::new(key);
    // which MPI job these engines are, for the controller's status views (ignored elsewhere)
    let host = rpar_core::connection::hostname().unwrap_or_default();
    let job = format!("{host}:{}", std::process::id());
    for (rank, uuid) in uuids.iter().enumerate() {
        let s = sock(ctx, zmq::DEALER, Some(uuid))?;
        s.connect(&addrs.registration)
            .with_context(|| format!("connecting to {}", addrs.registration))?;
        let m = registration_message(
            &Signer::new(key),
            uuid,
            "registration_request",
            &json!({
                "uuid": uuid, "id": rank,
                "rpar_job": {"id": job, "host": host, "size": uuids.len(), "rank": rank},
            }),
        );
        s.send_multipart(m, 0)?;
        socks.push(s);
    }
    let mut ids: Vec<Option<u32>> = vec![None; uuids.len()];
    let mut period = 3000u64;
    let deadline = Instant::now() + timeout;
    while ids.iter().any(Option::is_none) {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            let missing: Vec<usize> = (0..ids.len()).filter(|i| ids[*i].is_none()).collect();
            bail!(
                "registration timed out after {:.1}s: no registration_reply for rank(s) {missing:?} from {}",
                timeout.as_secs_f64(),
                addrs.registration
            );
        }
        let mut items: Vec<zmq::PollItem> =
            socks.iter().map(|s| s.as_poll_item(zmq::POLLIN)).collect();
        zmq::poll(&mut items, left.as_millis().min(1000) as i64)?;
        let ready: Vec<usize> = (0..items.len())
            .filter(|i| items[*i].is_readable())
            .collect();
        for rank in ready {
            let frames = socks[rank].recv_multipart(0)?;
            let m = match WireMessage::split(frames, &Limits::default()) {
                Ok(m) => m,
                Err(e) => {
                    warn!("bad registration reply: {e}");
                    continue;
                }
            };
            if let Err(e) = verifier.verify(&m) {
                warn!("registration reply refused: {e}");
                continue;
            }
            let c: Value = m.content_value().unwrap_or(Value::Null);
            if c.get("status").and_then(Value::as_str) != Some("ok") {
                return Err(anyhow!(
                    "registration of rank {rank} failed: {} {}",
                    c.get("ename").and_then(Value::as_str).unwrap_or(""),
                    c.get("evalue")
                        .and_then(Value::as_str)
                        .unwrap_or(&c.to_string())
                ));
            }
            let id = c
                .get("id")
                .and_then(Value::as_u64)
                .and_then(|i| u32::try_from(i).ok())
                .ok_or_else(|| {
                    anyhow!("registration reply without an engine id (0 to 2^32-1): {c}")
                })?;
            if u64::from(id) != rank as u64 {
                warn!("rank {rank}: did not get the requested id {rank}, got {id}");
            }
            if let Some(p) = c.get("hb_period").and_then(Value::as_u64) {
                period = p;
            }
            ids[rank] = Some(id);
        }
    }
    Ok((
        socks,
        Registered {
            ids: ids.into_iter().map(|i| i.unwrap_or(0)).collect(),
            hb_period_ms: period,
        },
    ))
}

impl Sockets {
    /// Open and connect the engine sockets after registration.
    pub fn open(
        ctx: &mut Contexts,
        reg: Vec<zmq::Socket>,
        addrs: &Addrs,
        uuids: &[String],
        ids: &[u32],
    ) -> Result<Sockets> {
        let mut shell = Vec::new();
        let mut control = Vec::new();
        let mut heart = Vec::new();
        for (uuid, id) in uuids.iter().zip(ids) {
            let s = sock(ctx, zmq::ROUTER, Some(uuid))?;
            s.set_rcvhwm(0)?;
            s.set_sndhwm(0)?;
            s.connect(&addrs.mux)?;
            s.connect(&addrs.task)?;
            if !addrs.broadcast.is_empty() {
                let leaf = &addrs.broadcast[*id as usize % addrs.broadcast.len()];
                s.connect(leaf)?;
            }
            shell.push(s);
            let c = sock(ctx, zmq::ROUTER, Some(uuid))?;
            c.connect(&addrs.control)?;
            control.push(c);
            let h = sock(ctx, zmq::DEALER, Some(uuid))?;
            h.set_linger(0)?;
            h.connect(&addrs.hb_pong)?;
            heart.push(h);
        }
        let hb_sub = sock(ctx, zmq::SUB, None)?;
        hb_sub.set_subscribe(b"")?;
        hb_sub.set_linger(0)?;
        hb_sub.connect(&addrs.hb_ping)?;
        let iopub = sock(ctx, zmq::PUB, None)?;
        iopub.set_sndhwm(0)?;
        iopub.connect(&addrs.iopub)?;
        Ok(Sockets {
            reg,
            shell,
            control,
            heart,
            hb_sub,
            iopub,
        })
    }

    /// `unregistration_request {"id"}` for every engine (the Hub does not reply).
    pub fn unregister_all(&self, key: &[u8], uuids: &[String], ids: &[u32]) {
        let signer = Signer::new(key);
        for (i, ((s, uuid), id)) in self.reg.iter().zip(uuids).zip(ids).enumerate() {
            let m = unregistration_request(&signer, uuid, *id);
            if let Err(e) = s.send_multipart(m, zmq::DONTWAIT) {
                warn!("rank {i}: unregistration not sent: {e}");
            }
        }
        info!("sent unregistration_request for engines {ids:?}");
    }
}
