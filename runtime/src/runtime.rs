//! The runtime thread of each rank: the I/O loops around the sans-I/O [`Broker`],
//! [`JobCore`] and [`EngineCore`].
//!
//! * Rank 0 polls its connection to the controller (a [`Transport`]: compat, every engine's
//!   sockets; native, one job connection), its outbox doorbell and its MPI doorbell, and (by
//!   probing) MPI; routes with the broker; runs its own engine's core directly; and carries out
//!   what the job core decides (say hello, unregister and exit). Its poll set is built once:
//!   a small table says what each slot is.
//! * Rank r ≥ 1 touches no network: it probes MPI for packets from rank 0 and runs its core.
//!   With MPI_THREAD_MULTIPLE its link is shared ([`SharedLink`]): the engine's threads send
//!   their packets to rank 0 themselves (a reply does not wake this loop), and the loop sends
//!   what is left queued and progresses big sends; rank 0's `Life::Exit` ends it.
//!
//! MPI is probed, not waited on (a blocking MPI receive spins a core in OpenMPI and MPICH). Each
//! MPI send rings the receiver's [doorbell](crate::doorbell), so a rank whose peers can all ring
//! it sleeps in `poll` until a descriptor is readable (ZeroMQ, outbox, doorbell) or [`IDLE_MS`]
//! passes, and probes MPI only on a ring, or every few microseconds while its own sends are in
//! flight or a ring's message has not shown up yet. Ranks on other hosts (no doorbell) fall back
//! to probing on a timer that naps briefly right after traffic and backs off as the rank stays
//! idle ([`pace`] holds the rule). Each pass reads each side within a
//! [`Quota`](crate::fair) (one busy rank cannot keep the loop from the others).
//! SIGTERM (mpiexec tearing the job down) makes rank 0 unregister every engine before exiting.

use crate::broker::{Broker, JobEvent, Route};
use crate::fair::Quota;
use crate::job::{Action, JobCore};
use crate::kernel::{interrupt_python, EngineCore, JobQueue};
use crate::link::{Link, SharedLink};
use crate::nanny::Nanny;
use crate::pace::{self, Wait, IDLE_MS};
use crate::relay::{Channel, Life, Packet, Rank};
use crate::session::{send_queued, OutboxRx};
use crate::transport::{Incoming, Transport};
use rpar_core::native::Departure;
use std::os::fd::{AsRawFd, RawFd};
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

/// How busy a loop has been, for its [`pace`].
struct Activity {
    /// Passes in a row that moved nothing.
    idle: u32,
    /// The last pass that moved more than heartbeats (which come every period and predict no
    /// traffic: the pace backs off over them).
    last_real: Instant,
}

impl Activity {
    fn new() -> Activity {
        Activity {
            idle: 0,
            last_real: Instant::now(),
        }
    }

    /// The wait before the next pass over `link`.
    fn wait(&self, link: &Link) -> Wait {
        pace::wait(link.state(), self.idle == 0, self.last_real.elapsed())
    }

    /// A pass moved something (`active`), more than heartbeats (`real`).
    fn after(&mut self, active: bool, real: bool) {
        self.idle = if active {
            0
        } else {
            self.idle.saturating_add(1)
        };
        if real {
            self.last_real = Instant::now();
        }
    }
}

/// What a slot of rank 0's poll set is.
#[derive(Debug, Clone, Copy)]
enum Slot {
    /// The transport's descriptor of this index.
    Net(usize),
    /// The outbox's bell (rank 0's own engine queued something).
    Outbox,
    /// The MPI doorbell.
    Door,
}

/// Rank 0's poll set: descriptors and what each is, built once.
struct PollSet {
    fds: Vec<libc::pollfd>,
    slots: Vec<Slot>,
}

impl PollSet {
    fn new(net: &[RawFd], outbox: RawFd, door: Option<RawFd>) -> PollSet {
        let mut slots: Vec<Slot> = (0..net.len()).map(Slot::Net).collect();
        let mut fds: Vec<RawFd> = net.to_vec();
        slots.push(Slot::Outbox);
        fds.push(outbox);
        if let Some(d) = door {
            slots.push(Slot::Door);
            fds.push(d);
        }
        let fds = fds
            .into_iter()
            .map(|fd| libc::pollfd {
                fd,
                events: libc::POLLIN,
                revents: 0,
            })
            .collect();
        PollSet { fds, slots }
    }

    /// Wait, then the slots that woke.
    fn wait(&mut self, wait: Wait) -> Vec<Slot> {
        if pace::poll_for(&mut self.fds, wait) <= 0 {
            return Vec::new();
        }
        let mut ready = Vec::new();
        for (f, s) in self.fds.iter_mut().zip(&self.slots) {
            if f.revents != 0 {
                f.revents = 0;
                ready.push(*s);
            }
        }
        ready
    }
}

/// What one pass of rank 0's loop saw.
#[derive(Default)]
struct Pass {
    ev: Option<JobEvent>,
    action: Option<Action>,
    /// Something moved: look again at once.
    active: bool,
    /// More than heartbeats moved.
    real: bool,
}

/// What rank 0's loop needs.
pub struct Rank0 {
    pub net: Box<dyn Transport>,
    pub link: Link,
    pub core: EngineCore,
    pub outbox: OutboxRx,
    pub queue: Arc<JobQueue>,
    pub hb_period: Duration,
    pub max_heartbeat_misses: u32,
    pub nanny: Option<Nanny>,
}

impl Rank0 {
    /// Run until the job exits; returns the exit code.
    pub fn run(mut self) -> (i32, Link) {
        pace::fine_timer_slack();
        let size = self.link.size();
        let mut broker = Broker::new(size);
        let hb = (self.hb_period, self.max_heartbeat_misses);
        let mut job = JobCore::new(self.net.policy(), size, hb.0, hb.1, Instant::now());
        let bell = self.outbox.bell.as_raw_fd();
        let mut polls = PollSet::new(&self.net.fds(), bell, self.link.bell_fd());
        let (mut from_net, mut from_mpi) = (Quota::new(size), Quota::new(size));
        let mut activity = Activity::new();
        loop {
            let wait = if size == 1 {
                Wait::Block(IDLE_MS)
            } else {
                activity.wait(&self.link)
            };
            // input no descriptor announces is asked for only before a wait (the compat
            // transport asks every socket): a pass that looks again at once reads it anyway
            // at the latest in the pass after
            let wait = if wait != Wait::Now && self.net.has_input() {
                Wait::Now
            } else {
                wait
            };
            for slot in polls.wait(wait) {
                match slot {
                    Slot::Net(i) => self.net.on_ready(i),
                    Slot::Outbox => self.outbox.drain_bell(),
                    Slot::Door => self.link.on_bell(),
                }
            }
            let now = Instant::now();
            let mut pass = Pass::default();
            from_net.reset();
            while let Some(inc) = self.net.recv(&mut from_net) {
                self.on_incoming(inc, &mut broker, &mut job, now, &mut pass);
            }
            from_mpi.reset();
            self.move_traffic(&mut broker, &mut from_mpi, &mut pass);
            for r in self.net.take_echoes() {
                job.on_echo(r, now);
            }
            if let Some(sig) = rpar_core::signals::received() {
                warn!("signal {sig}: unregistering all engines and exiting");
                pass.action = pass.action.or(job.on_signal(sig));
            }
            if let Some(JobEvent::ExitAll(code)) = pass.ev {
                pass.action = pass.action.or(job.on_all_done(code));
            }
            match pass.action.or_else(|| job.on_tick(now)) {
                Some(Action::Hello) => self.net.hello(),
                Some(Action::Exit(code, why)) => return self.exit(code, why),
                None => {}
            }
            activity.after(pass.active, pass.real);
        }
    }

    fn on_incoming(
        &mut self,
        inc: Incoming,
        broker: &mut Broker,
        job: &mut JobCore,
        now: Instant,
        pass: &mut Pass,
    ) {
        // heartbeats are `active`, not `real`
        pass.active = true;
        match inc {
            Incoming::Request(rank, ch, frames) => {
                pass.real = true;
                let route = broker.on_socket(rank, ch, frames);
                let e = self.perform(broker, route);
                pass.ev = pass.ev.take().or(e);
            }
            Incoming::Ping(frames) => {
                job.on_ping(now);
                for route in broker.ping(&frames) {
                    if let Route::Local(p) | Route::Remote(_, p) = &route {
                        job.on_relay(p.header.rank, now);
                    }
                    let e = self.perform(broker, route);
                    pass.ev = pass.ev.take().or(e);
                }
            }
            Incoming::Shutdown => {
                info!("the controller shuts down");
                pass.action = pass.action.take().or(job.on_controller_shutdown());
            }
            Incoming::Reregistered => info!("registered again"),
        }
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
                self.link.send(r, p.into_bytes());
                None
            }
            Route::Zmq(s, frames) => {
                self.net.send(s, frames);
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
                self.net.send(s, frames);
            }
            ev = ev.or(e);
        }
        (any, ev)
    }

    /// One wake-up's traffic besides the controller's: rank 0's own outbox, then what came
    /// over MPI (within `quota`).
    fn move_traffic(&mut self, broker: &mut Broker, quota: &mut Quota, pass: &mut Pass) {
        let (any, e) = self.pump_outbox(broker);
        pass.ev = pass.ev.take().or(e);
        pass.active |= any;
        pass.real |= any;
        while !quota.full() {
            let Some((src, buf)) = self.link.try_recv() else {
                break;
            };
            pass.active = true;
            match Packet::from_bytes(buf) {
                Ok(p) => {
                    pass.real |= p.header.channel != Channel::Heartbeat;
                    let (route, e) = broker.on_engine(src, p);
                    pass.ev = pass.ev.take().or(e);
                    let e = self.perform(broker, route);
                    pass.ev = pass.ev.take().or(e);
                }
                Err(e) => warn!("bad relay packet from rank {src}: {e}"),
            }
            // a rank at its bound: the rest waits in MPI for the next pass, which comes at
            // once (this one was active), after the controller's side had its turn
            if !quota.take(Some(src)) {
                break;
            }
        }
        self.link.reap();
    }

    /// The end of every exit: unregister, tell each rank, let the sends finish, stop Python.
    fn exit(mut self, code: i32, why: Departure) -> (i32, Link) {
        match &why {
            Departure::RankLost { rank, reason } => {
                error!("rank {rank} is lost ({reason}): the job goes down")
            }
            Departure::ControllerGone => {
                error!("no heartbeat from the controller: it is gone; exiting")
            }
            _ => {}
        }
        let mut scratch = Broker::new(self.link.size());
        self.pump_outbox(&mut scratch);
        self.net.unregister_all(why);
        let size = self.link.size();
        for r in 1..size {
            self.link.send(
                Rank(r),
                Packet::life(Rank(r), &Life::Exit { code }).into_bytes(),
            );
        }
        self.link.finish(Duration::from_secs(2));
        if let Some(n) = &self.nanny {
            n.disarm();
        }
        info!("job exiting with code {code}");
        stop_python(&self.queue, code);
        // dropping the sockets lingers until the unregistrations are out
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

/// Rank r ≥ 1. Its link is shared with the threads that send its engine's packets
/// ([`SharedLink`]): they send to rank 0 themselves, and the loop sends what they left queued.
pub struct RankN {
    pub link: Arc<SharedLink>,
    pub core: EngineCore,
    pub outbox: OutboxRx,
    pub queue: Arc<JobQueue>,
}

impl RankN {
    /// Send the outbox to rank 0: (anything sent, anything but heartbeat echoes).
    fn pump(&mut self) -> (bool, bool) {
        let rx = &self.outbox.rx;
        self.on_link(|l| send_queued(l, rx))
    }

    /// The link, for a call the loop makes (it is only taken out when the loop ends).
    fn on_link<R: Default>(&self, f: impl FnOnce(&mut Link) -> R) -> R {
        self.link.with(f).unwrap_or_default()
    }

    /// Run until rank 0 says exit; returns the exit code and the link (taken out of its lock).
    pub fn run(mut self) -> (i32, Option<Link>) {
        pace::fine_timer_slack();
        let me = self.core.session.rank;
        let bell = self.outbox.bell.as_raw_fd();
        // without a doorbell, poll the outbox bell twice (-1 entries are ignored by poll)
        let door = self.on_link(|l| l.bell_fd()).unwrap_or(-1);
        let mut pfds = [bell, door].map(|fd| libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        });
        let mut activity = Activity::new();
        // one source (rank 0): only the pass bound counts
        let mut quota = Quota::new(0);
        loop {
            let wait = self
                .on_link(|l| Some(activity.wait(l)))
                .unwrap_or(Wait::Block(IDLE_MS));
            pace::poll_for(&mut pfds, wait);
            if std::mem::take(&mut pfds[0].revents) != 0 {
                self.outbox.drain_bell();
            }
            if std::mem::take(&mut pfds[1].revents) != 0 {
                self.on_link(Link::on_bell);
            }
            let (mut active, mut real) = self.pump();
            // within a quota: this rank's replies (the outbox, next pass) are not kept waiting
            // by a flood of requests
            quota.reset();
            while !quota.full() {
                // the lock is let go before the packet is handled: the engine's core sends
                // through the outbox, which takes it again
                let Some((src, buf)) = self.on_link(Link::try_recv) else {
                    break;
                };
                quota.take(None);
                active = true;
                let p = match Packet::from_bytes(buf) {
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
                        self.on_link(|l| l.finish(Duration::from_secs(2)));
                        stop_python(&self.queue, code);
                        return (code, self.link.take());
                    }
                    continue;
                }
                if let Some(life) = self.core.on_packet(p) {
                    self.pump();
                    let bytes = Packet::life(me, &life).into_bytes();
                    self.on_link(|l| l.send(Rank(0), bytes));
                }
            }
            self.on_link(Link::reap);
            if let Some(sig) = rpar_core::signals::received() {
                info!("signal {sig}: exiting");
                // SAFETY: terminating the process (the job is being torn down).
                unsafe { libc::_exit(128 + sig) };
            }
            activity.after(active, real);
        }
    }
}
