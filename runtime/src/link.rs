//! The MPI side of the relay: nonblocking sends and polled receives of encoded
//! [`Packet`](crate::relay::Packet)s on the duplicated communicator (never `COMM_WORLD`, which
//! belongs to user code such as mpi4py).
//!
//! Rank 0's runtime thread alone uses its [`Link`]; on the other ranks the threads that send
//! the engine's packets share it with the runtime thread ([`SharedLink`]). Sends are
//! `MPI_Isend` (so two ranks sending large messages to each other cannot deadlock in
//! rendezvous); completed sends are reaped once per pass of the loop, all of them by one
//! `MPI_Testsome` (each test of a send still in flight runs MPI's progress engine, which yields
//! the CPU when it finds nothing to do on an oversubscribed node: one call per pass, not one per
//! send; a reply sent directly from the thread that made it reaps the sends before it, done by
//! then, so that test finds one done and runs no progress). Receives use `MPI_Improbe` +
//! `MPI_Mrecv`, so the loop never blocks in MPI and can also watch ZeroMQ sockets, the outbox
//! and signals.
//!
//! With a [`Doorbell`] every send also rings the receiver, and the link counts rings against
//! received messages ([`Ledger`]), so the runtime loop knows when it may sleep until the next
//! ring, and the link probes MPI only when a message is owed (or on an odd wake-up, or once
//! [`PROBE_EVERY`] has passed): a probe that finds nothing is not free (Open MPI yields the
//! CPU in it when the node is oversubscribed).

use crate::doorbell::{Doorbell, Ledger};
use crate::pace::LinkState;
use crate::relay::{Rank, TAG};
use mpi::ffi;
use mpi::point_to_point::MatchedReceiveVec;
use mpi::request::StaticScope;
use mpi::topology::SimpleCommunicator;
use mpi::traits::*;
use std::time::{Duration, Instant};

/// Sends in flight: their requests (as MPI sets them: `MPI_REQUEST_NULL` once complete) and
/// the buffers they read, index for index.
#[derive(Default)]
struct Pending {
    reqs: Vec<ffi::MPI_Request>,
    bufs: Vec<*mut [u8]>,
    /// `MPI_Testsome`'s output.
    done: Vec<i32>,
}

impl Pending {
    fn is_empty(&self) -> bool {
        self.reqs.is_empty()
    }

    fn push(&mut self, req: ffi::MPI_Request, buf: *mut [u8]) {
        self.reqs.push(req);
        self.bufs.push(buf);
    }

    /// Free the buffers of the completed sends, one `MPI_Testsome` for all.
    fn reap(&mut self) {
        if self.reqs.is_empty() {
            return;
        }
        let Ok(n) = i32::try_from(self.reqs.len()) else {
            return;
        };
        self.done.resize(self.reqs.len(), 0);
        let mut count: i32 = 0;
        // SAFETY: `reqs` holds `n` live requests (or nulls) and `done` room for `n` indices;
        // the statuses are ignored.
        unsafe {
            ffi::MPI_Testsome(
                n,
                self.reqs.as_mut_ptr(),
                &mut count,
                self.done.as_mut_ptr(),
                ffi::RSMPI_STATUSES_IGNORE,
            );
        }
        if count <= 0 {
            // nothing completed (or MPI_UNDEFINED: none active)
            return;
        }
        // SAFETY: reading MPI's constant handle.
        let null = unsafe { ffi::RSMPI_REQUEST_NULL };
        let mut i = 0;
        while i < self.reqs.len() {
            if self.reqs[i] == null {
                self.reqs.swap_remove(i);
                let buf = self.bufs.swap_remove(i);
                // SAFETY: the send completed, MPI no longer reads the buffer we leaked.
                drop(unsafe { Box::from_raw(buf) });
            } else {
                i += 1;
            }
        }
    }

    /// Give up on the sends still in flight (their peer is gone): requests and buffers are
    /// leaked, as MPI may still read them.
    fn abandon(&mut self) {
        self.reqs.clear();
        self.bufs.clear();
    }
}

/// One rank's relay endpoint.
pub struct Link {
    comm: SimpleCommunicator,
    pending: Pending,
    bell: Option<Doorbell>,
    /// Every peer this rank hears from rings its doorbell.
    rung_by_all: bool,
    /// Rings against received messages.
    ledger: Ledger,
    last_ring: Instant,
    /// A wake-up that announced nothing countable: probe once.
    odd_ring: bool,
    last_probe: Instant,
}

/// Sends up to this size are sent eagerly by every MPI we know (see [`Link::needs_progress`]).
const EAGER: usize = 4 << 10;
/// See [`Link::needs_progress`].
const FEW_SENDS: usize = 32;

/// How long a ring whose message has not shown up keeps the loop probing MPI (while sends are
/// in flight the loop probes too: MPI only progresses them when called).
const RING_GRACE: Duration = Duration::from_millis(200);

/// With doorbells and nothing owed, MPI is still probed this often (a message whose ring was
/// lost, which Open MPI's shared memory makes visible before the ring is sent, so this is a
/// safety net only).
pub const PROBE_EVERY: Duration = Duration::from_millis(crate::pace::IDLE_MS as u64);

// SAFETY: the communicator handle and in-flight buffers are used by exactly one thread at a time
// (moved once from the main thread into the runtime thread, or behind [`SharedLink`]'s lock).
// MPI is initialized with MPI_THREAD_MULTIPLE (or the degradation is logged, and no link is
// shared), which allows calls from any thread.
unsafe impl Send for Link {}

/// A link shared by a rank's runtime loop and the threads that send its engine's packets (ranks
/// ≥ 1 with MPI_THREAD_MULTIPLE): whoever holds the lock sends, so a reply goes to rank 0 from
/// the Python thread itself instead of waking the runtime loop to send it. Taken out at exit
/// ([`SharedLink::take`]), before MPI is finalized.
pub struct SharedLink(std::sync::Mutex<Option<Link>>);

impl SharedLink {
    pub fn new(link: Link) -> std::sync::Arc<SharedLink> {
        std::sync::Arc::new(SharedLink(std::sync::Mutex::new(Some(link))))
    }

    /// Run `f` on the link, unless it has been taken out.
    pub fn with<R>(&self, f: impl FnOnce(&mut Link) -> R) -> Option<R> {
        let mut g = self.0.lock().unwrap_or_else(|e| e.into_inner());
        g.as_mut().map(f)
    }

    /// Take the link out (the runtime loop's end); later [`SharedLink::with`] calls do nothing.
    pub fn take(&self) -> Option<Link> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).take()
    }
}

impl Link {
    pub fn new(comm: SimpleCommunicator) -> Link {
        let size = u32::try_from(comm.size()).unwrap_or(0);
        Link {
            comm,
            pending: Pending::default(),
            bell: None,
            rung_by_all: false,
            ledger: Ledger::new(size),
            last_ring: Instant::now(),
            odd_ring: false,
            last_probe: Instant::now(),
        }
    }

    /// Use `bell` (bound, peers probed): `rung_by_all` says whether every peer this rank
    /// receives from can ring it.
    pub fn with_doorbell(mut self, bell: Doorbell, rung_by_all: bool) -> Link {
        self.bell = Some(bell);
        self.rung_by_all = rung_by_all;
        self
    }

    /// The doorbell's descriptor, to poll on.
    pub fn bell_fd(&self) -> Option<std::os::fd::RawFd> {
        self.bell.as_ref().map(Doorbell::fd)
    }

    /// Take the rings off the doorbell (call when its descriptor is readable).
    pub fn on_bell(&mut self) {
        if let Some(b) = &self.bell {
            let (new, odd) = b.drain(&mut self.ledger);
            if new > 0 {
                self.last_ring = Instant::now();
            }
            self.odd_ring |= odd > 0;
        }
    }

    /// A ring refused by a full buffer is still to go out.
    fn unrung(&self) -> bool {
        self.bell.as_ref().is_some_and(Doorbell::unrung)
    }

    /// Is something in flight that needs this side's MPI calls to finish: a send above the
    /// smallest eager limit (Open MPI's shared memory: 4 KiB; a rendezvous progresses only
    /// inside MPI calls), many sends (MPI may hold some back until its buffers come back), or
    /// a ring still to go out? A few small sends are already with their receiver and only wait
    /// to be reaped.
    pub fn needs_progress(&self) -> bool {
        self.pending.bufs.len() > FEW_SENDS
            || self.pending.bufs.iter().any(|b| b.len() > EAGER)
            || self.unrung()
    }

    /// What the loop's [`pace`](crate::pace) needs to know.
    pub fn state(&self) -> LinkState {
        LinkState {
            rung_by_all: self.rung_by_all,
            // a ring refused by a full buffer is a send still to finish
            sending: !self.pending.is_empty() || self.unrung(),
            owed: self.ledger.owed() > 0 && self.last_ring.elapsed() <= RING_GRACE,
        }
    }

    /// Whether a probe may find something: always without doorbells from every peer; with
    /// them (every message announced: rings refused by a full buffer go again), while a
    /// message is owed, on an odd wake-up, or once per [`PROBE_EVERY`]. Not after a probe
    /// that found a message when nothing more is owed: that probe would find nothing.
    fn worth_probing(&self) -> bool {
        !self.rung_by_all
            || self.odd_ring
            || self.ledger.owed() > 0
            || self.last_probe.elapsed() >= PROBE_EVERY
    }

    pub fn size(&self) -> u32 {
        self.comm.size() as u32
    }

    pub fn comm(&self) -> &SimpleCommunicator {
        &self.comm
    }

    /// Start sending `data` to `to` (the loop reaps it, [`Link::reap`]).
    pub fn send(&mut self, to: Rank, data: Vec<u8>) {
        let buf: &'static mut [u8] = Box::leak(data.into_boxed_slice());
        let ptr: *mut [u8] = buf;
        let req = self
            .comm
            .process_at_rank(to.0 as i32)
            .immediate_send_with_tag(StaticScope, &*buf, TAG);
        // SAFETY: the request is completed by `reap` (or abandoned with its buffer leaked) and
        // the buffer lives until then.
        let (raw, _, _) = unsafe { req.into_raw() };
        self.pending.push(raw, ptr);
        // rung at the end of the pass ([`Link::reap`]): one ring for the pass' sends to `to`
        if let Some(b) = &mut self.bell {
            b.count(to);
        }
    }

    /// Free the buffers of completed sends; ring the peers sent to since (or refused by a full
    /// buffer).
    pub fn reap(&mut self) {
        // the rings first: the test of the sends may yield the CPU (see the module doc)
        self.ring();
        self.reap_sends();
    }

    /// Ring the peers sent to since the last ring (or refused by a full buffer).
    pub fn ring(&mut self) {
        if let Some(b) = &mut self.bell {
            b.ring_again();
        }
    }

    /// Free the buffers of completed sends ([`Link::reap`] without the rings).
    pub fn reap_sends(&mut self) {
        self.pending.reap();
    }

    /// A received message, if one is waiting (not probed for when none can be, see
    /// [`Link::worth_probing`]).
    pub fn try_recv(&mut self) -> Option<(Rank, Vec<u8>)> {
        if !self.worth_probing() {
            return None;
        }
        self.odd_ring = false;
        self.last_probe = Instant::now();
        let mut got = self.probe();
        if got.is_none() && (self.ledger.owed() > 0 || !self.rung_by_all) {
            // Open MPI's probe matches against what it has already taken off its queues before
            // it progresses them: a message that has arrived (the one a ring announced, or, on
            // the timed fallback, one that came during the nap) is usually found by a second
            // probe. Without it the loop napped again before it saw the message, 100 µs or
            // more on this kind of machine (a timer wake-up), on every relayed message.
            got = self.probe();
        }
        if let Some((src, _)) = &got {
            self.ledger.received(*src);
        }
        got
    }

    fn probe(&mut self) -> Option<(Rank, Vec<u8>)> {
        let matched = self
            .comm
            .any_process()
            .immediate_matched_probe_with_tag(TAG)?;
        let (data, status) = matched.matched_receive_vec::<u8>();
        Some((Rank(status.source_rank() as u32), data))
    }

    /// Wait up to `limit` for in-flight sends; the rest are abandoned (their peer is gone).
    pub fn finish(&mut self, limit: Duration) {
        let deadline = Instant::now() + limit;
        if let Some(b) = &mut self.bell {
            b.ring_again();
        }
        while !self.pending.is_empty() && Instant::now() < deadline {
            self.reap();
            std::thread::sleep(Duration::from_millis(1));
        }
        self.pending.abandon();
    }

    /// Receive and discard whatever is still addressed to this rank.
    pub fn drain(&mut self) -> usize {
        let mut n = 0;
        while self.probe().is_some() {
            n += 1;
        }
        n
    }
}
