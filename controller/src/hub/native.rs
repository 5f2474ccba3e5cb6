//! Native jobs: MPI jobs (or `rpar-loadgen`'s simulated ones) connected over the native
//! ROUTER (`Sock::Native`, protocol in [`rpar_core::native`]), sans-I/O like the rest of the hub.
//!
//! * One registration exchange registers every engine of a job at once: the engines are
//!   registered at once (the job connection is its heart), with the usual
//!   `registration_notification`s, and join the schedulers.
//! * One heartbeat per job: every period each job gets a `Ping`, and a job that misses more
//!   than `max_heartbeat_misses` pongs is dead: every engine of it is unregistered, and its tasks
//!   fail with EngineError as for any dead engine. A job's `Unregister` does the same at once.
//! * Engine traffic: a routed message from a job becomes the frames the hub would have read on
//!   the matching engine socket (the engine's uuid in front, as a ROUTER reports it), after
//!   checking that the engine belongs to that job; what the hub sends on an engine socket to a
//!   native engine is rewritten into a routed message on the job's connection. Payload frames
//!   are moved, never copied or parsed here.
//! * A message from a connection the hub does not know (the controller was restarted) is
//!   answered with `Reregister`; the job registers again, asking for the ids it had.

use super::{Effect, Engine, Hub, Sock};
use foldhash::{HashMap, HashMapExt};
use rpar_core::native::{Body, Channel, Decoder, Encoder, EngineSpec, Granted};
use rpar_core::wire::Frames;
use std::collections::BTreeMap;
use std::time::{Duration, Instant};
use tracing::{debug, info, warn};

/// One connected job.
#[derive(Debug)]
struct Job {
    enc: Encoder,
    /// Its engines: id → uuid.
    engines: BTreeMap<u32, Vec<u8>>,
    /// Pong seen since the last ping.
    responded: bool,
    misses: u32,
}

/// The native jobs and their heartbeat.
#[derive(Debug)]
pub struct Jobs {
    key: Vec<u8>,
    decoder: Decoder,
    /// By connection routing id.
    jobs: HashMap<Vec<u8>, Job>,
    /// Engine uuid → the routing id of its job's connection.
    by_uuid: HashMap<Vec<u8>, Vec<u8>>,
    period: Duration,
    max_misses: u32,
    next_beat: Instant,
    token: u64,
    shutdown_sent: bool,
    /// The next encoder's stream id: random per controller run, so that a restarted
    /// controller's envelopes never repeat the bytes of its predecessor's (a job would refuse
    /// them as replays).
    next_stream: u64,
}

impl Jobs {
    pub fn new(key: &[u8], period: Duration, max_misses: u32, now: Instant) -> Jobs {
        Jobs {
            key: key.to_vec(),
            decoder: Decoder::new(key),
            jobs: HashMap::new(),
            by_uuid: HashMap::new(),
            period,
            max_misses,
            next_beat: now + period,
            token: 0,
            shutdown_sent: false,
            next_stream: rand::random(),
        }
    }

    fn encoder(&mut self) -> Encoder {
        self.next_stream = self.next_stream.wrapping_add(1);
        Encoder::new(&self.key, self.next_stream)
    }

    pub fn next_deadline(&self) -> Option<Instant> {
        (!self.jobs.is_empty()).then_some(self.next_beat)
    }

    /// Forget an engine that left the hub by another way (an `unregistration_request`, its
    /// `shutdown_reply`).
    pub fn forget_engine(&mut self, uuid: &[u8], id: u32) {
        if let Some(conn) = self.by_uuid.remove(uuid) {
            if let Some(job) = self.jobs.get_mut(&conn) {
                job.engines.remove(&id);
            }
        }
    }
}

fn send(conn: &[u8], head: [Vec<u8>; 2], payload: Frames, out: &mut Vec<Effect>) {
    let mut f = Vec::with_capacity(3 + payload.len());
    f.push(conn.to_vec());
    f.extend(head);
    f.extend(payload);
    out.push(Effect::Send(Sock::Native, f));
}

/// The engine socket a channel's traffic reaches the hub on.
fn engine_sock(c: Channel) -> Sock {
    match c {
        Channel::Mux => Sock::MuxEngine,
        Channel::Task => Sock::TaskEngine,
        Channel::Control => Sock::ControlEngine,
        Channel::Broadcast => Sock::BcastEngine,
        Channel::IoPub => Sock::IopubEngine,
    }
}

/// The channel of an engine socket the hub sends on.
fn channel_of(s: Sock) -> Option<Channel> {
    Some(match s {
        Sock::MuxEngine => Channel::Mux,
        Sock::TaskEngine => Channel::Task,
        Sock::ControlEngine => Channel::Control,
        Sock::BcastEngine => Channel::Broadcast,
        _ => return None,
    })
}

impl Hub {
    /// A message on the native ROUTER: `[routing id, signature, envelope, payload…]`.
    pub(super) fn on_native(&mut self, mut frames: Frames, now: Instant, out: &mut Vec<Effect>) {
        if frames.is_empty() {
            return;
        }
        let conn = frames.remove(0);
        let (env, payload) = match self.native.decoder.decode_owned(frames) {
            Ok(x) => x,
            Err(e) => {
                self.stats.dropped += 1;
                warn!(error = %e, "dropping native message");
                return;
            }
        };
        if let Some(job) = self.native.jobs.get_mut(&conn) {
            // any message shows the job is alive
            job.responded = true;
            job.misses = 0;
        }
        match env.body {
            Body::Register { engines } => self.register_job(conn, engines, now, out),
            Body::Route(h) => {
                let Some(job) = self.native.jobs.get(&conn) else {
                    self.reregister(&conn, out);
                    return;
                };
                let Some(uuid) = job.engines.get(&h.engine) else {
                    self.stats.dropped += 1;
                    debug!(
                        engine = h.engine,
                        "native message for an engine not of that job dropped"
                    );
                    return;
                };
                let mut frames = payload;
                if h.channel != Channel::IoPub {
                    // in the received vector, which has room: the frames taken off its front
                    frames.insert(0, uuid.clone());
                }
                self.dispatch(engine_sock(h.channel), frames, now, out);
            }
            Body::Pong { .. } => {}
            Body::Hello => {
                if !self.native.jobs.contains_key(&conn) {
                    self.reregister(&conn, out);
                }
            }
            Body::Unregister(why) => {
                info!(?why, "native job unregisters");
                self.drop_job(&conn, now, out);
            }
            Body::Registered(_) | Body::Ping { .. } | Body::Reregister | Body::Shutdown => {
                self.stats.dropped += 1;
                debug!("native message meant for a job dropped");
            }
        }
    }

    fn reregister(&mut self, conn: &[u8], out: &mut Vec<Effect>) {
        debug!("message from an unknown native job: asking it to register again");
        let mut enc = self.native.encoder();
        send(conn, enc.head(Body::Reregister), vec![], out);
    }

    /// Register every engine of a job in one exchange.
    fn register_job(
        &mut self,
        conn: Vec<u8>,
        engines: Vec<EngineSpec>,
        now: Instant,
        out: &mut Vec<Effect>,
    ) {
        // a job registering again on its connection starts afresh
        self.drop_job(&conn, now, out);
        let mut enc = self.native.encoder();
        let taken = engines.iter().find(|e| {
            self.engines
                .get(e.uuid.as_bytes())
                .is_some_and(|x| x.registered)
        });
        if let Some(e) = taken {
            warn!(uuid = %e.uuid, "native registration with an engine uuid already in use");
            let why = format!("engine uuid {} is already in use", e.uuid);
            send(&conn, enc.head(Body::Registered(Err(why))), vec![], out);
            return;
        }
        let mut job = Job {
            enc,
            engines: BTreeMap::new(),
            responded: true,
            misses: 0,
        };
        let mut ids = Vec::with_capacity(engines.len());
        // the status views group the engines by their job's connection
        let size = u64::try_from(engines.len()).ok();
        // (rank 0 names its connection `job-<uuid of rank 0>`; anything else is shown in hex)
        let job_key = match std::str::from_utf8(&conn) {
            Ok(s) if s.bytes().all(|b| b.is_ascii_graphic()) => s.to_string(),
            _ => conn.iter().map(|b| format!("{b:02x}")).collect(),
        };
        for spec in engines {
            let key = spec.uuid.into_bytes();
            // an engine taken back by --restore waits for a heart it has not got: take it now
            self.drop_engine(&key);
            let Some(id) = self.grant_id(spec.requested) else {
                warn!("no engine id is left for a native job");
                let why = "no engine ids are left (0 to 2^32-1)".to_string();
                send(&conn, job.enc.head(Body::Registered(Err(why))), vec![], out);
                self.native.jobs.insert(conn.clone(), job);
                self.drop_job(&conn, now, out);
                return;
            };
            let uuid_s = String::from_utf8_lossy(&key).into_owned();
            self.engines.insert(
                key.clone(),
                Engine {
                    id,
                    uuid: uuid_s.clone(),
                    registered: true,
                    heart_seen: true,
                    since: now,
                },
            );
            self.ids.insert(id, key.clone());
            self.monitor
                .registering_in(id, job_key.clone(), "rpar-engine", "", size);
            self.monitor.registered();
            self.native.by_uuid.insert(key.clone(), conn.clone());
            job.engines.insert(id, key.clone());
            self.recent_regs.push_back((now, id));
            self.notify(
                "registration_notification",
                b"{}",
                serde_json::json!({"id": id, "uuid": uuid_s}),
                out,
            );
            self.tasks_engine_added(&key, id, now, out);
            ids.push(id);
        }
        self.prune_recent_regs(now);
        info!(
            engines = ids.len(),
            first = ids.first().copied(),
            last = ids.last().copied(),
            "native job registered"
        );
        let granted = Granted {
            ids,
            hb_period_ms: u64::try_from(self.cfg.hb_period.as_millis()).unwrap_or(u64::MAX),
        };
        send(
            &conn,
            job.enc.head(Body::Registered(Ok(granted))),
            vec![],
            out,
        );
        if self.native.jobs.is_empty() {
            self.native.next_beat = now + self.native.period;
        }
        self.native.jobs.insert(conn, job);
        out.push(Effect::SaveEngines);
    }

    /// The id to give an engine that asks for `requested`: that one when free, else the next
    /// free one from the counter (as for a Python engine); `None` when no id is left.
    fn grant_id(&mut self, requested: u32) -> Option<u32> {
        if !self.ids.contains_key(&requested) {
            self.next_id = self.next_id.max(u64::from(requested) + 1);
            return Some(requested);
        }
        self.take_next_id()
    }

    /// Unregister every engine of the job on `conn` and forget the job.
    fn drop_job(&mut self, conn: &[u8], now: Instant, out: &mut Vec<Effect>) {
        let Some(job) = self.native.jobs.remove(conn) else {
            return;
        };
        for id in job.engines.keys() {
            self.unregister(*id, now, out);
        }
    }

    /// The job heartbeat: pings out, silent jobs dead.
    pub(super) fn native_tick(&mut self, now: Instant, out: &mut Vec<Effect>) {
        if self.native.jobs.is_empty() || now < self.native.next_beat {
            return;
        }
        self.native.next_beat = now + self.native.period;
        self.native.token += 1;
        let token = self.native.token;
        let max = self.native.max_misses;
        let mut dead = Vec::new();
        for (conn, job) in self.native.jobs.iter_mut() {
            if !std::mem::take(&mut job.responded) {
                job.misses += 1;
                if job.misses > max {
                    dead.push(conn.clone());
                    continue;
                }
            }
            send(conn, job.enc.head(Body::Ping { token }), vec![], out);
        }
        for conn in dead {
            warn!("native job missed {max} heartbeats: all its engines are unregistered");
            self.drop_job(&conn, now, out);
        }
    }

    /// Rewrite what the hub sent on an engine socket to a native engine (from `out[start..]`)
    /// into routed messages on its job's connection; tell jobs when the hub shuts down.
    pub(super) fn native_outgoing(&mut self, start: usize, out: &mut [Effect]) {
        if self.native.jobs.is_empty() {
            return;
        }
        for e in out.iter_mut().skip(start) {
            let Effect::Send(sock, frames) = e else {
                continue;
            };
            let Some(channel) = channel_of(*sock) else {
                continue;
            };
            let Some(conn) = frames.first().and_then(|u| self.native.by_uuid.get(u)) else {
                continue;
            };
            let Some(job) = self.native.jobs.get_mut(conn) else {
                continue;
            };
            let Some(&engine) = frames
                .first()
                .and_then(|u| self.engines.get(u))
                .map(|e| &e.id)
            else {
                continue;
            };
            let head = job.enc.head(Body::Route(rpar_core::native::RouteHeader {
                engine,
                channel,
            }));
            let mut f = Vec::with_capacity(2 + frames.len());
            f.push(conn.clone());
            f.extend(head);
            f.extend(std::mem::take(frames).into_iter().skip(1));
            *e = Effect::Send(Sock::Native, f);
        }
    }

    /// Once a hub shutdown is under way: tell every job.
    pub(super) fn native_shutdown(&mut self, out: &mut Vec<Effect>) {
        if self.exit_at.is_none() || self.native.shutdown_sent {
            return;
        }
        self.native.shutdown_sent = true;
        for (conn, job) in self.native.jobs.iter_mut() {
            send(conn, job.enc.head(Body::Shutdown), vec![], out);
        }
    }

    /// How many native jobs are connected.
    pub fn native_jobs(&self) -> usize {
        self.native.jobs.len()
    }
}
