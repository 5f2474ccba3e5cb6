//! The runtime thread of each rank: the I/O loops around the sans-I/O [`Broker`] and
//! [`EngineCore`].
//!
//! * Rank 0 polls its ZeroMQ sockets (compat: every engine's; native: the one job connection,
//!   with the job's lifecycle in [`JobCore`]), its outbox doorbell, and (by probing) MPI;
//!   routes with the broker; runs its own engine's core directly.
//! * Rank r ≥ 1 touches no network: it probes MPI for packets from rank 0, runs its core, and
//!   sends its outbox to rank 0.
//!
//! MPI is probed, not waited on (a blocking MPI receive spins a core in OpenMPI and MPICH). Each
//! MPI send rings the receiver's [doorbell](crate::doorbell), so a rank whose peers can all ring
//! it sleeps in `poll` until a descriptor is readable (ZeroMQ, outbox, doorbell) or [`IDLE_MS`]
//! passes, and probes MPI only on a ring, or every few microseconds while its own sends are in
//! flight or a ring's message has not shown up yet. Ranks on other hosts (no doorbell) fall back
//! to probing on a timer that naps briefly right after traffic and backs off as the rank stays
//! idle ([`pace`](crate::pace) holds the rule).
//! SIGTERM (mpiexec tearing the job down) makes rank 0 unregister every engine before exiting.

use crate::broker::{Broker, JobEvent, Route, Socket};
use crate::job::{Action, JobCore};
use crate::kernel::{interrupt_python, EngineCore, JobQueue};
use crate::link::Link;
use crate::nanny::Nanny;
use crate::native::{Incoming, JobConn};
use crate::net::Sockets;
use crate::pace::{self, Wait, IDLE_MS};
use crate::relay::{Channel, Life, Packet, Rank};
use crate::session::OutboxRx;
use rpar_core::native::Departure;
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tracing::{debug, error, info, warn};

/// Record SIGTERM/SIGHUP (flag only, in [`rpar_core::signals`]; the loops act on it), with
/// `SA_RESTART` so MPI calls are not interrupted.
pub fn install_signal_handlers() {
    use rpar_core::signals::{install, Restart};
    if let Err(e) = install(&[libc::SIGTERM, libc::SIGHUP], Restart::Yes) {
        eprintln!("rpar-engine: {e}");
    }
}

/// The wait before the next pass of a loop over `link` ([`pace`](crate::pace) decides).
fn wait_for(link: &Link, idle: u32, since_active: Duration) -> Wait {
    pace::wait(link.state(), idle == 0, since_active)
}

/// How rank 0 sends what the engines put on their sockets.
pub trait EngineNet {
    fn send(&mut self, sock: Socket, frames: Vec<Vec<u8>>);
}

/// The compat transport: every engine's own sockets.
pub struct Compat {
    pub sockets: Sockets,
    pub key: Vec<u8>,
    pub uuids: Vec<String>,
    pub ids: Vec<u32>,
}

impl EngineNet for Compat {
    fn send(&mut self, sock: Socket, frames: Vec<Vec<u8>>) {
        fn at(v: &[zmq::Socket], r: Rank) -> Option<&zmq::Socket> {
            usize::try_from(r.0).ok().and_then(|i| v.get(i))
        }
        let s = match sock {
            Socket::Shell(r) => at(&self.sockets.shell, r),
            Socket::Control(r) => at(&self.sockets.control, r),
            Socket::Heart(r) => at(&self.sockets.heart, r),
            Socket::IoPub(_) => Some(&self.sockets.iopub),
        };
        if let Some(s) = s {
            if let Err(e) = s.send_multipart(frames, zmq::DONTWAIT) {
                debug!("send on {sock:?} failed: {e}");
            }
        }
    }
}

impl EngineNet for JobConn {
    fn send(&mut self, sock: Socket, frames: Vec<Vec<u8>>) {
        self.send_engine(sock, frames);
    }
}

/// What rank 0's loop needs.
pub struct Rank0<N> {
    pub net: N,
    pub link: Link,
    pub core: EngineCore,
    pub outbox: OutboxRx,
    pub queue: Arc<JobQueue>,
    pub hb_period: Duration,
    pub max_heartbeat_misses: u32,
    pub nanny: Option<Nanny>,
}

impl<N: EngineNet> Rank0<N> {
    fn zmq_send(&mut self, sock: Socket, frames: Vec<Vec<u8>>) {
        self.net.send(sock, frames);
    }

    fn perform(&mut self, broker: &mut Broker, route: Route) -> Option<JobEvent> {
        match route {
            Route::Local(p) => {
                let life = self.core.on_packet(p)?;
                // what the engine queued before this lifecycle change goes out first
                self.pump_outbox(broker);
                broker.on_life(Rank(0), life)
            }
            Route::Remote(r, p) => {
                self.link.send(r, p.encode());
                None
            }
            Route::Zmq(s, frames) => {
                self.zmq_send(s, frames);
                None
            }
            Route::Drop(why) => {
                debug!("dropped: {why}");
                None
            }
        }
    }

    /// Send what rank 0's engine queued; true if any of it was more than a heartbeat echo.
    fn pump_outbox(&mut self, broker: &mut Broker) -> (bool, Option<JobEvent>) {
        let mut any = false;
        let mut ev = None;
        while let Ok(p) = self.outbox.rx.try_recv() {
            any |= p.header.channel != Channel::Heartbeat;
            let (route, e) = broker.on_engine(Rank(0), p);
            if let Route::Zmq(s, frames) = route {
                self.zmq_send(s, frames);
            }
            ev = ev.or(e);
        }
        (any, ev)
    }

    /// One wake-up's traffic: rank 0's own outbox, then what came over MPI.
    /// Returns (anything moved, anything but heartbeat echoes moved).
    fn move_traffic(&mut self, broker: &mut Broker, ev: &mut Option<JobEvent>) -> (bool, bool) {
        let (any, e) = self.pump_outbox(broker);
        *ev = ev.take().or(e);
        let (a, r) = self.relay_in(broker, ev);
        (any | a, any | r)
    }

    /// Take in what came over MPI: (anything, anything but heartbeat echoes).
    fn relay_in(&mut self, broker: &mut Broker, ev: &mut Option<JobEvent>) -> (bool, bool) {
        let (mut active, mut real) = (false, false);
        while let Some((src, buf)) = self.link.try_recv() {
            active = true;
            match Packet::decode(&buf) {
                Ok(p) => {
                    real |= p.header.channel != Channel::Heartbeat;
                    let (route, e) = broker.on_engine(src, p);
                    *ev = ev.take().or(e);
                    let e = self.perform(broker, route);
                    *ev = ev.take().or(e);
                }
                Err(e) => warn!("bad relay packet from rank {src}: {e}"),
            }
        }
        self.link.reap();
        (active, real)
    }

    /// The end of every exit: tell each rank, let the sends finish, stop Python.
    fn finish(&mut self, code: i32) {
        let size = self.link.size();
        for r in 1..size {
            self.link.send(
                Rank(r),
                Packet::life(Rank(r), &Life::Exit { code }).encode(),
            );
        }
        self.link.finish(Duration::from_secs(2));
        if let Some(n) = &self.nanny {
            n.disarm();
        }
        info!("job exiting with code {code}");
        stop_python(&self.queue, code);
    }
}

impl Rank0<Compat> {
    /// Run until the job exits; returns the exit code.
    pub fn run(mut self) -> (i32, Link) {
        pace::fine_timer_slack();
        let size = self.link.size();
        let mut broker = Broker::new(size);
        let mut last_ping = Instant::now();
        let mut idle = 0u32;
        let mut last_active = Instant::now();
        let bell = self.outbox.bell.as_raw_fd();
        let door = self.link.bell_fd();
        let miss_limit =
            (self.hb_period + Duration::from_millis(500)) * self.max_heartbeat_misses.max(1);
        loop {
            let mut ev: Option<JobEvent> = None;
            let n = self.net.sockets.shell.len();
            let readable: Vec<bool> = {
                let mut items: Vec<zmq::PollItem> = Vec::with_capacity(2 * n + 2);
                let socks = &self.net.sockets;
                items.extend(socks.shell.iter().map(|s| s.as_poll_item(zmq::POLLIN)));
                items.extend(socks.control.iter().map(|s| s.as_poll_item(zmq::POLLIN)));
                items.push(socks.hb_sub.as_poll_item(zmq::POLLIN));
                items.push(zmq::PollItem::from_fd(bell, zmq::POLLIN));
                if let Some(fd) = door {
                    items.push(zmq::PollItem::from_fd(fd, zmq::POLLIN));
                }
                let wait = if size == 1 {
                    Wait::Block(IDLE_MS)
                } else {
                    wait_for(&self.link, idle, last_active.elapsed())
                };
                // zmq_poll counts in milliseconds: a shorter nap looks at the sockets at once,
                // then naps on the descriptors that are not ZeroMQ's
                let short = matches!(wait, Wait::Nap(d) if d < Duration::from_millis(1));
                let timeout = if short { 0 } else { wait.as_millis() };
                if let Err(e) = zmq::poll(&mut items, i64::from(timeout)) {
                    if e != zmq::Error::EINTR {
                        warn!("poll: {e}");
                    }
                }
                if short && !items.iter().any(|i| i.is_readable()) {
                    let mut fds = [bell, door.unwrap_or(-1)].map(|fd| libc::pollfd {
                        fd,
                        events: libc::POLLIN,
                        revents: 0,
                    });
                    pace::poll_for(&mut fds, wait);
                }
                items.iter().map(|i| i.is_readable()).collect()
            };
            // `active`: something moved, look again at once; `real`: more than heartbeats,
            // which come every period and predict no traffic (the pace backs off over them)
            let mut active = false;
            let mut real = false;
            for (i, ready) in readable.iter().enumerate().take(2 * n) {
                if !ready {
                    continue;
                }
                let (rank, ch) = if i < n {
                    (Rank(i as u32), Channel::Shell)
                } else {
                    (Rank((i - n) as u32), Channel::Control)
                };
                loop {
                    let sock = if ch == Channel::Shell {
                        &self.net.sockets.shell[rank.0 as usize]
                    } else {
                        &self.net.sockets.control[rank.0 as usize]
                    };
                    let frames = match sock.recv_multipart(zmq::DONTWAIT) {
                        Ok(f) => f,
                        Err(_) => break,
                    };
                    active = true;
                    real = true;
                    let route = broker.on_socket(rank, ch, frames);
                    ev = ev.or(self.perform(&mut broker, route));
                }
            }
            if readable[2 * n] {
                while let Ok(frames) = self.net.sockets.hb_sub.recv_multipart(zmq::DONTWAIT) {
                    active = true;
                    last_ping = Instant::now();
                    for route in broker.ping(&frames) {
                        ev = ev.or(self.perform(&mut broker, route));
                    }
                }
            }
            if readable[2 * n + 1] {
                self.outbox.drain_bell();
            }
            if readable.get(2 * n + 2).copied().unwrap_or(false) {
                self.link.on_bell();
            }
            let (a, r) = self.move_traffic(&mut broker, &mut ev);
            active |= a;
            real |= r;
            if let Some(sig) = rpar_core::signals::received() {
                warn!("signal {sig}: unregistering all engines and exiting");
                ev = ev.or(broker.abort(128 + sig));
            }
            if self.max_heartbeat_misses > 0 && last_ping.elapsed() > miss_limit {
                error!(
                    "no heartbeat from the controller for {:.1}s: it is gone; exiting",
                    last_ping.elapsed().as_secs_f64()
                );
                ev = ev.or(broker.abort(1));
            }
            if let Some(JobEvent::ExitAll(code)) = ev {
                return self.exit(code);
            }
            if active {
                idle = 0;
            } else {
                idle = idle.saturating_add(1);
            }
            if real {
                last_active = Instant::now();
            }
        }
    }

    fn exit(mut self, code: i32) -> (i32, Link) {
        let mut scratch = Broker::new(self.link.size());
        self.pump_outbox(&mut scratch);
        let c = &self.net;
        c.sockets.unregister_all(&c.key, &c.uuids, &c.ids);
        self.finish(code);
        // dropping the sockets lingers until the unregistrations are out
        drop(self.net);
        (code, self.link)
    }
}

fn pollfd(fd: std::os::fd::RawFd) -> libc::pollfd {
    libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    }
}

impl Rank0<JobConn> {
    /// Run until the job exits; returns the exit code. One job connection, the outbox bell
    /// and the doorbell are the whole poll set, built once; the job's lifecycle decisions are
    /// [`JobCore`]'s.
    pub fn run(mut self) -> (i32, Link) {
        pace::fine_timer_slack();
        let size = self.link.size();
        let mut broker = Broker::new(size);
        let mut job = JobCore::new(
            size,
            self.hb_period,
            self.max_heartbeat_misses,
            Instant::now(),
        );
        let mut idle = 0u32;
        let mut last_active = Instant::now();
        let conn_fd = match self.net.fd() {
            Ok(fd) => fd,
            Err(e) => {
                error!("the job connection has no descriptor: {e:#}");
                return self.exit(1, Departure::Exit(1));
            }
        };
        // slot 0: the job connection (edge-triggered: its input is asked with `has_input`)
        const BELL: usize = 1;
        let mut fds = vec![pollfd(conn_fd), pollfd(self.outbox.bell.as_raw_fd())];
        let door = self.link.bell_fd().map(|fd| {
            fds.push(pollfd(fd));
            fds.len() - 1
        });
        loop {
            let wait = if self.net.has_input() {
                Wait::Now
            } else if size == 1 {
                Wait::Block(IDLE_MS)
            } else {
                wait_for(&self.link, idle, last_active.elapsed())
            };
            pace::poll_for(&mut fds, wait);
            let bell_rang = fds[BELL].revents != 0;
            let door_rang = door.is_some_and(|d| fds[d].revents != 0);
            fds.iter_mut().for_each(|f| f.revents = 0);
            if bell_rang {
                self.outbox.drain_bell();
            }
            if door_rang {
                self.link.on_bell();
            }
            let now = Instant::now();
            let mut ev: Option<JobEvent> = None;
            let mut action: Option<Action> = None;
            // as in the ZeroMQ loop: heartbeats are `active`, not `real`
            let (mut active, mut real) = (false, false);
            while let Some(inc) = self.net.recv() {
                active = true;
                match inc {
                    Incoming::Request(rank, ch, frames) => {
                        real = true;
                        let route = broker.on_socket(rank, ch, frames);
                        ev = ev.or(self.perform(&mut broker, route));
                    }
                    Incoming::Ping(token) => {
                        job.on_ping(now);
                        for route in broker.ping(&[token.to_le_bytes().to_vec()]) {
                            match &route {
                                Route::Local(p) | Route::Remote(_, p) => {
                                    job.on_relay(p.header.rank, now)
                                }
                                _ => {}
                            }
                            ev = ev.or(self.perform(&mut broker, route));
                        }
                    }
                    Incoming::Shutdown => {
                        info!("the controller shuts down");
                        action = action.or(job.on_controller_shutdown());
                    }
                    Incoming::Reregistered => info!("registered again"),
                }
            }
            let (a, r) = self.move_traffic(&mut broker, &mut ev);
            active |= a;
            real |= r;
            for r in self.net.take_echoes() {
                job.on_echo(r, now);
            }
            if let Some(sig) = rpar_core::signals::received() {
                warn!("signal {sig}: unregistering all engines and exiting");
                action = action.or(job.on_signal(sig));
            }
            if let Some(JobEvent::ExitAll(code)) = ev {
                action = action.or(job.on_all_done(code));
            }
            match action.or_else(|| job.on_tick(now)) {
                Some(Action::Hello) => self.net.hello(),
                Some(Action::Exit(code, why)) => {
                    if let Departure::RankLost { rank, reason } = &why {
                        error!("rank {rank} is lost ({reason}): the job goes down");
                    } else if why == Departure::ControllerGone {
                        error!("no heartbeat from the controller: it is gone; exiting");
                    }
                    return self.exit(code, why);
                }
                None => {}
            }
            if active {
                idle = 0;
            } else {
                idle = idle.saturating_add(1);
            }
            if real {
                last_active = Instant::now();
            }
        }
    }

    fn exit(mut self, code: i32, why: Departure) -> (i32, Link) {
        let mut scratch = Broker::new(self.link.size());
        self.pump_outbox(&mut scratch);
        self.net.unregister_all(why);
        self.finish(code);
        // dropping the connection lingers until the unregistration is out
        drop(self.net);
        (code, self.link)
    }
}

/// Ask the Python thread to stop; if it is busy, interrupt it; if it does not come back, exit
/// anyway (a rank stuck in C code must not keep the job alive).
pub fn stop_python(queue: &JobQueue, code: i32) {
    queue.stop();
    if queue.is_running() {
        interrupt_python();
    }
    let grace = if code == 0 { 10 } else { 3 };
    let spawn = std::thread::Builder::new()
        .name("exit-watchdog".into())
        .spawn(move || {
            std::thread::sleep(Duration::from_secs(grace));
            eprintln!("rpar-engine: Python did not stop within {grace}s; exiting");
            // SAFETY: terminating the process.
            unsafe { libc::_exit(code) };
        });
    if let Err(e) = spawn {
        warn!("no exit watchdog: {e}");
    }
}

/// Rank r ≥ 1.
pub struct RankN {
    pub link: Link,
    pub core: EngineCore,
    pub outbox: OutboxRx,
    pub queue: Arc<JobQueue>,
}

impl RankN {
    /// Send the outbox to rank 0: (anything sent, anything but heartbeat echoes).
    fn pump(&mut self) -> (bool, bool) {
        let (mut any, mut real) = (false, false);
        while let Ok(p) = self.outbox.rx.try_recv() {
            any = true;
            real |= p.header.channel != Channel::Heartbeat;
            self.link.send(Rank(0), p.encode());
        }
        (any, real)
    }

    pub fn run(mut self) -> (i32, Link) {
        pace::fine_timer_slack();
        let me = self.link.rank();
        let bell = self.outbox.bell.as_raw_fd();
        // without a doorbell, poll the outbox bell twice (-1 entries are ignored by poll)
        let door = self.link.bell_fd().unwrap_or(-1);
        let mut idle = 0u32;
        let mut last_active = Instant::now();
        loop {
            let mut pfds = [bell, door].map(|fd| libc::pollfd {
                fd,
                events: libc::POLLIN,
                revents: 0,
            });
            pace::poll_for(&mut pfds, wait_for(&self.link, idle, last_active.elapsed()));
            if pfds[0].revents != 0 {
                self.outbox.drain_bell();
            }
            if pfds[1].revents != 0 {
                self.link.on_bell();
            }
            let (mut active, mut real) = self.pump();
            while let Some((src, buf)) = self.link.try_recv() {
                active = true;
                let p = match Packet::decode(&buf) {
                    Ok(p) => p,
                    Err(e) => {
                        warn!("bad relay packet from rank {src}: {e}");
                        continue;
                    }
                };
                real |= p.header.channel != Channel::Heartbeat;
                if p.header.channel == Channel::Life {
                    if let Ok(Life::Exit { code }) = p.as_life() {
                        info!("rank 0 says exit ({code})");
                        self.pump();
                        self.link.finish(Duration::from_secs(2));
                        stop_python(&self.queue, code);
                        return (code, self.link);
                    }
                    continue;
                }
                if let Some(life) = self.core.on_packet(p) {
                    self.pump();
                    self.link.send(Rank(0), Packet::life(me, &life).encode());
                }
            }
            self.link.reap();
            if let Some(sig) = rpar_core::signals::received() {
                info!("signal {sig}: exiting");
                // SAFETY: terminating the process (the job is being torn down).
                unsafe { libc::_exit(128 + sig) };
            }
            if active {
                idle = 0;
            } else {
                idle = idle.saturating_add(1);
            }
            if real {
                last_active = Instant::now();
            }
        }
    }
}
