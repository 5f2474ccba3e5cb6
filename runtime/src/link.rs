//! The MPI side of the relay: nonblocking sends and polled receives of encoded [`Packet`]s on the
//! duplicated communicator (never `COMM_WORLD`, which belongs to user code such as mpi4py).
//!
//! Only the runtime thread of a rank uses its [`Link`]. Sends are `MPI_Isend` (so two ranks
//! sending large messages to each other cannot deadlock in rendezvous); completed sends are
//! reaped on every poll. Receives use `MPI_Improbe` + `MPI_Mrecv`, so the loop never blocks in
//! MPI and can also watch ZeroMQ sockets, the outbox and signals.
//!
//! With a [`Doorbell`] every send also rings the receiver, and the link counts rings against
//! received messages, so the runtime loop knows when it may sleep until the next ring.

use crate::doorbell::Doorbell;
use crate::pace::LinkState;
use crate::relay::{Rank, TAG};
use mpi::point_to_point::MatchedReceiveVec;
use mpi::request::{Request, StaticScope};
use mpi::topology::SimpleCommunicator;
use mpi::traits::*;
use std::time::{Duration, Instant};

struct Pending {
    req: Request<'static, [u8], StaticScope>,
    buf: *mut [u8],
}

/// One rank's relay endpoint.
pub struct Link {
    comm: SimpleCommunicator,
    pending: Vec<Pending>,
    bell: Option<Doorbell>,
    /// Every peer this rank hears from rings its doorbell.
    rung_by_all: bool,
    /// Rings not yet matched by a received message.
    owed: u64,
    last_ring: Instant,
}

/// How long a ring whose message has not shown up keeps the loop probing MPI (while sends are
/// in flight the loop probes too: MPI only progresses them when called).
const RING_GRACE: Duration = Duration::from_millis(200);

// SAFETY: the communicator handle and in-flight buffers are used by exactly one thread at a time
// (moved once from the main thread into the runtime thread). MPI is initialized with
// MPI_THREAD_MULTIPLE (or the degradation is logged), which allows calls from that thread.
unsafe impl Send for Link {}

impl Link {
    pub fn new(comm: SimpleCommunicator) -> Link {
        Link {
            comm,
            pending: Vec::new(),
            bell: None,
            rung_by_all: false,
            owed: 0,
            last_ring: Instant::now(),
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
            let n = b.drain();
            if n > 0 {
                self.owed += n;
                self.last_ring = Instant::now();
            }
        }
    }

    /// What the loop's [`pace`](crate::pace) needs to know.
    pub fn state(&self) -> LinkState {
        LinkState {
            rung_by_all: self.rung_by_all,
            sending: !self.pending.is_empty(),
            owed: self.owed > 0 && self.last_ring.elapsed() <= RING_GRACE,
        }
    }

    pub fn rank(&self) -> Rank {
        Rank(self.comm.rank() as u32)
    }

    pub fn size(&self) -> u32 {
        self.comm.size() as u32
    }

    pub fn comm(&self) -> &SimpleCommunicator {
        &self.comm
    }

    /// Start sending `data` to `to`.
    pub fn send(&mut self, to: Rank, data: Vec<u8>) {
        let buf: &'static mut [u8] = Box::leak(data.into_boxed_slice());
        let ptr: *mut [u8] = buf;
        let req = self
            .comm
            .process_at_rank(to.0 as i32)
            .immediate_send_with_tag(StaticScope, &*buf, TAG);
        self.pending.push(Pending { req, buf: ptr });
        if let Some(b) = &self.bell {
            b.ring(to);
        }
        self.reap();
    }

    /// Free the buffers of completed sends.
    pub fn reap(&mut self) {
        let mut still = Vec::with_capacity(self.pending.len());
        for p in self.pending.drain(..) {
            match p.req.test() {
                Ok(_) => {
                    // SAFETY: the send completed, MPI no longer reads the buffer we leaked.
                    drop(unsafe { Box::from_raw(p.buf) });
                }
                Err(req) => still.push(Pending { req, buf: p.buf }),
            }
        }
        self.pending = still;
    }

    /// A received message, if one is waiting.
    pub fn try_recv(&mut self) -> Option<(Rank, Vec<u8>)> {
        let matched = self
            .comm
            .any_process()
            .immediate_matched_probe_with_tag(TAG)?;
        let (data, status) = matched.matched_receive_vec::<u8>();
        self.owed = self.owed.saturating_sub(1);
        Some((Rank(status.source_rank() as u32), data))
    }

    /// Wait up to `limit` for in-flight sends; the rest are abandoned (their peer is gone).
    pub fn finish(&mut self, limit: Duration) {
        let deadline = Instant::now() + limit;
        while !self.pending.is_empty() && Instant::now() < deadline {
            self.reap();
            std::thread::sleep(Duration::from_millis(1));
        }
        for p in self.pending.drain(..) {
            // An incomplete request must not be dropped (rsmpi panics); leak it with its buffer.
            std::mem::forget(p.req);
        }
    }

    /// Receive and discard whatever is still addressed to this rank.
    pub fn drain(&mut self) -> usize {
        let mut n = 0;
        while self.try_recv().is_some() {
            n += 1;
        }
        n
    }
}
