//! Rank 0's ZeroMQ side in the "native" transport: ONE DEALER (routing id = the job's id) to
//! rpar-controller's native ROUTER for the whole job, speaking [`rpar_core::native`].
//!
//! * registration: one `Register` with every rank's uuid (id = rank requested), one
//!   `Registered` with the granted ids; again with the same uuids and ids when a restarted
//!   controller answers `Reregister`;
//! * engine traffic: a routed request becomes the frames the engine's shell or control ROUTER
//!   would have received (the controller socket's routing id, e.g. `mux_out`, in front), so the
//!   kernel on the rank cannot tell the transports apart; a reply's leading routing id names its
//!   channel and is taken off again. Payload frames are moved, never parsed;
//! * one heartbeat for the job: the controller's `Ping` is answered at once by the runtime
//!   thread; per-rank liveness stays on MPI (see [`crate::job`]).

use crate::broker::Socket;
use crate::fair::Quota;
use crate::job::Policy;
use crate::relay::{Channel as RelayChannel, Rank};
use crate::transport::{Incoming, Transport};
use anyhow::{anyhow, bail, Context, Result};
use rpar_core::connection::{disambiguate_interface, url, EngineInfo};
use rpar_core::native::{
    Body, Channel, Decoder, Departure, Encoder, EngineSpec, RouteHeader, VERSION,
};
use rpar_core::wire::Frames;
use std::collections::HashMap;
use std::time::{Duration, Instant};
use tracing::{debug, info, warn};

/// The native endpoint of a connection file, when the controller offers one this build speaks.
pub fn endpoint(info: &EngineInfo) -> Result<Option<String>> {
    let Some(n) = &info.rpar_native else {
        return Ok(None);
    };
    if n.version != VERSION {
        bail!(
            "the controller offers native transport version {}, this rpar-engine speaks {VERSION}",
            n.version
        );
    }
    let iface = disambiguate_interface(&info.interface, &info.location);
    Ok(Some(url(&iface, n.port)))
}

/// The job connection.
pub struct JobConn {
    _ctx: zmq::Context,
    sock: zmq::Socket,
    enc: Encoder,
    dec: Decoder,
    uuids: Vec<String>,
    /// Engine id by rank.
    ids: Vec<u32>,
    by_id: HashMap<u32, Rank>,
    /// Heartbeat echoes from ranks since the loop last asked.
    echoes: Vec<Rank>,
    /// A receive found nothing and nothing touched the socket since: only its descriptor
    /// (ZeroMQ signals it for what arrives later) can make input appear, so neither a receive
    /// nor a `ZMQ_EVENTS` query (each a `poll` and a `getpid` inside ZeroMQ) is made until the
    /// descriptor wakes the loop. A send clears it (ZeroMQ may process the socket's pending
    /// commands inside a send, taking the descriptor's signal with them).
    drained: bool,
}

impl JobConn {
    /// Connect (the job's id is its first engine's uuid), as a CurveZMQ client when `curve`.
    pub fn connect(
        addr: &str,
        key: &[u8],
        uuids: &[String],
        curve: Option<&crate::curve::ClientCurve>,
    ) -> Result<JobConn> {
        let ctx = zmq::Context::new();
        let sock = ctx.socket(zmq::DEALER)?;
        if let Some(c) = curve {
            c.apply(&sock).context("setting the CurveZMQ keys")?;
        }
        let job = uuids.first().cloned().unwrap_or_default();
        sock.set_identity(format!("job-{job}").as_bytes())?;
        sock.set_linger(2000)?;
        sock.set_sndhwm(0)?;
        sock.set_rcvhwm(0)?;
        sock.connect(addr)
            .with_context(|| format!("connecting to the native endpoint {addr}"))?;
        Ok(JobConn {
            _ctx: ctx,
            sock,
            enc: Encoder::new(key, rand::random()),
            dec: Decoder::new(key),
            uuids: uuids.to_vec(),
            ids: (0..uuids.len())
                .map(|r| u32::try_from(r).unwrap_or(u32::MAX))
                .collect(),
            by_id: HashMap::new(),
            echoes: Vec::new(),
            drained: false,
        })
    }

    fn send_body(&mut self, body: Body, payload: Frames) {
        let frames = self.enc.encode(body, payload);
        self.drained = false;
        if let Err(e) = self.sock.send_multipart(frames, zmq::DONTWAIT) {
            warn!("native send failed: {e}");
        }
    }

    fn send_register(&mut self) {
        let engines = self
            .uuids
            .iter()
            .zip(&self.ids)
            .enumerate()
            .map(|(rank, (uuid, id))| EngineSpec {
                rank: u32::try_from(rank).unwrap_or(u32::MAX),
                uuid: uuid.clone(),
                requested: *id,
            })
            .collect();
        self.send_body(Body::Register { engines }, vec![]);
    }

    fn take_ids(&mut self, ids: Vec<u32>) -> Result<()> {
        if ids.len() != self.uuids.len() {
            bail!(
                "the controller granted {} ids for {} engines",
                ids.len(),
                self.uuids.len()
            );
        }
        if !self.by_id.is_empty() && ids != self.ids {
            warn!("registered again with other engine ids: {ids:?}");
        }
        self.by_id = ids
            .iter()
            .enumerate()
            .map(|(r, id)| (*id, Rank(u32::try_from(r).unwrap_or(u32::MAX))))
            .collect();
        self.ids = ids;
        Ok(())
    }

    /// Register every engine in one exchange; waits up to `timeout`. Returns the ids (by
    /// rank) and the controller's heartbeat period.
    pub fn register(&mut self, timeout: Duration) -> Result<(Vec<u32>, u64)> {
        self.send_register();
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                bail!(
                    "registration timed out after {:.1}s: no reply on the native connection",
                    timeout.as_secs_f64()
                );
            }
            let mut items = [self.sock.as_poll_item(zmq::POLLIN)];
            zmq::poll(
                &mut items,
                i64::try_from(left.as_millis().min(1000)).unwrap_or(1000),
            )?;
            if !items[0].is_readable() {
                continue;
            }
            let frames = self.sock.recv_multipart(0)?;
            match self.dec.decode_owned(frames) {
                Ok((env, _)) => match env.body {
                    Body::Registered(Ok(g)) => {
                        self.take_ids(g.ids)?;
                        info!(
                            "{} engines registered over the native transport",
                            self.ids.len()
                        );
                        return Ok((self.ids.clone(), g.hb_period_ms));
                    }
                    Body::Registered(Err(why)) => {
                        return Err(anyhow!("registration refused: {why}"))
                    }
                    other => debug!("before registration, ignored: {other:?}"),
                },
                Err(e) => warn!("native message dropped: {e}"),
            }
        }
    }

    /// The next message, without waiting.
    fn next(&mut self, quota: &mut Quota) -> Option<Incoming> {
        loop {
            if quota.full() || self.drained {
                return None;
            }
            let frames = match crate::relay::recv_multipart(&self.sock, zmq::DONTWAIT) {
                Ok(f) => f,
                Err(zmq::Error::EAGAIN) => {
                    self.drained = true;
                    return None;
                }
                Err(_) => return None,
            };
            let (env, mut payload) = match self.dec.decode_owned(frames) {
                Ok(x) => x,
                Err(e) => {
                    warn!("native message dropped: {e}");
                    continue;
                }
            };
            match env.body {
                Body::Route(h) => {
                    let Some(&rank) = self.by_id.get(&h.engine) else {
                        debug!(engine = h.engine, "request for an engine not of this job");
                        continue;
                    };
                    let ch = match h.channel {
                        Channel::Mux | Channel::Task | Channel::Broadcast => RelayChannel::Shell,
                        Channel::Control => RelayChannel::Control,
                        Channel::IoPub => continue,
                    };
                    payload.insert(0, h.channel.peer_identity().to_vec());
                    quota.take(Some(rank));
                    return Some(Incoming::Request(rank, ch, payload));
                }
                Body::Ping { token } => {
                    self.send_body(Body::Pong { token }, vec![]);
                    quota.take(None);
                    return Some(Incoming::Ping(vec![token.to_le_bytes().to_vec()]));
                }
                Body::Shutdown => return Some(Incoming::Shutdown),
                Body::Reregister => {
                    info!("the controller does not know this job (restarted?): registering again");
                    self.send_register();
                }
                Body::Registered(Ok(g)) => {
                    if let Err(e) = self.take_ids(g.ids) {
                        warn!("{e:#}");
                        continue;
                    }
                    return Some(Incoming::Reregistered);
                }
                Body::Registered(Err(why)) => warn!("registration again refused: {why}"),
                other => debug!("ignored on the job connection: {other:?}"),
            }
        }
    }

    /// Send what an engine put on one of its sockets.
    fn send_engine(&mut self, sock: Socket, mut frames: Frames) {
        let (rank, channel) = match sock {
            Socket::Heart(r) => {
                self.echoes.push(r);
                return;
            }
            Socket::IoPub(r) => (r, Channel::IoPub),
            Socket::Shell(r) | Socket::Control(r) => {
                let Some(c) = frames.first().and_then(|f| Channel::from_peer_identity(f)) else {
                    debug!("engine reply without a known route dropped");
                    return;
                };
                frames.remove(0);
                (r, c)
            }
        };
        let Some(&engine) = usize::try_from(rank.0).ok().and_then(|r| self.ids.get(r)) else {
            return;
        };
        self.send_body(Body::Route(RouteHeader { engine, channel }), frames);
    }
}

impl Transport for JobConn {
    fn fds(&self) -> Vec<std::os::fd::RawFd> {
        match self.sock.get_fd() {
            Ok(fd) => vec![fd],
            Err(e) => {
                warn!("the job connection has no descriptor: {e}");
                vec![-1]
            }
        }
    }

    /// The descriptor woke the loop: the socket has something to say.
    fn on_ready(&mut self, _slot: usize) {
        self.drained = false;
    }

    /// Whether the socket has input (its descriptor is edge-triggered: ask before sleeping,
    /// unless a receive found nothing since the socket was last touched).
    fn has_input(&mut self) -> bool {
        if self.drained {
            return false;
        }
        let input = self
            .sock
            .get_events()
            .map(|e| e.contains(zmq::POLLIN))
            .unwrap_or(true);
        // the query processed the socket's pending commands, as a receive that finds nothing
        self.drained = !input;
        input
    }

    fn recv(&mut self, quota: &mut Quota) -> Option<Incoming> {
        self.next(quota)
    }

    fn send(&mut self, sock: Socket, frames: Frames) {
        self.send_engine(sock, frames);
    }

    fn take_echoes(&mut self) -> Vec<Rank> {
        std::mem::take(&mut self.echoes)
    }

    /// Ask a controller that sent nothing for a while whether it knows the job.
    fn hello(&mut self) {
        self.send_body(Body::Hello, vec![]);
    }

    /// Tell the controller every engine of the job is gone.
    fn unregister_all(&mut self, why: Departure) {
        info!(?why, "unregistering the job's {} engines", self.ids.len());
        self.send_body(Body::Unregister(why), vec![]);
    }

    fn policy(&self) -> Policy {
        Policy::NATIVE
    }
}
