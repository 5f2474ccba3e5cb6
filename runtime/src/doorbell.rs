//! Cross-rank doorbells: a wake-up for MPI traffic, so idle ranks sleep in `poll` instead of
//! probing MPI on a timer.
//!
//! MPI offers no file descriptor to wait on, and a blocking `MPI_Recv`/`MPI_Mprobe` spins a core
//! in both OpenMPI and MPICH (measured here: ~0.9 CPU-seconds per second blocked). So every rank
//! binds a Unix datagram socket in the abstract namespace, named after the job (rank 0's first
//! engine uuid, unique per job) and the rank. After each relay message it sends over MPI, a rank
//! sends one byte to the receiver's doorbell; the receiver's runtime loop polls the doorbell fd
//! (beside its outbox bell and, on rank 0, the ZeroMQ sockets) and probes MPI when it rings.
//!
//! Doorbells only reach ranks on the same host (and network namespace). Each rank finds out at
//! start-up by ringing every peer it talks to with an empty datagram (which does not count as a
//! ring); a peer it cannot reach is served by the timed MPI probing of `runtime.rs` as before.
//! Reachability is symmetric (same namespace both ways), so both ends agree without a message.
//!
//! A ring carries the sender's rank and how many messages it has sent to this receiver so far;
//! the receiver's [`Ledger`] sets that against the messages it received from that rank, so it
//! knows exactly how many are owed: a message received before its ring, or rings lost to a full
//! socket buffer (Linux queues only `net.unix.max_dgram_qlen` datagrams, 10 by default), leave
//! no stale count behind, since the next ring carries the total. A ring refused by a full buffer
//! is sent again, with the count of then, on the sender's next passes until one gets through
//! ([`Doorbell::ring_again`]), so the last ring of a burst is not lost either: the receiver
//! knows of every message, and with nothing owed the loop need not probe MPI at all, not even
//! once more after a probe that found a message (a probe that finds nothing costs a
//! `sched_yield` in Open MPI on an oversubscribed node). A ring whose message MPI has not yet
//! made visible to `MPI_Improbe` keeps the receiver probing briefly (see [`pace`](crate::pace)).

use crate::relay::Rank;
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr, UnixDatagram};

/// One rank's doorbell and the addresses of the peers it can ring.
pub struct Doorbell {
    sock: UnixDatagram,
    job: String,
    me: Rank,
    /// Indexed by rank: `Some(addr)` if that peer's doorbell answered the start-up probe.
    peers: Vec<Option<SocketAddr>>,
    /// Indexed by rank: the rings sent to that peer (= relay messages sent to it).
    sent: Vec<u64>,
    /// Indexed by rank: a count not delivered yet: counted only ([`Doorbell::count`]), or its
    /// ring found the peer's buffer full (it goes again, [`Doorbell::ring_again`]).
    unrung: Vec<bool>,
}

/// A ring on the wire: the sender's rank, then its count of messages sent to the receiver.
const RING_LEN: usize = 12;

/// Datagrams taken from the doorbell per call.
const BATCH: usize = 16;

fn ring_bytes(from: Rank, count: u64) -> [u8; RING_LEN] {
    let mut b = [0u8; RING_LEN];
    b[..4].copy_from_slice(&from.0.to_le_bytes());
    b[4..].copy_from_slice(&count.to_le_bytes());
    b
}

/// What a datagram on the doorbell says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ring {
    /// The start-up probe (empty): not a ring.
    Probe,
    /// `from` has sent this many messages to this rank so far.
    Count { from: Rank, count: u64 },
    /// Not a ring of this build: a wake-up that says nothing (probe MPI once).
    Odd,
}

impl Ring {
    pub fn parse(b: &[u8]) -> Ring {
        if b.is_empty() {
            return Ring::Probe;
        }
        let (Ok(r), Ok(c)) = (
            <[u8; 4]>::try_from(b.get(..4).unwrap_or_default()),
            <[u8; 8]>::try_from(b.get(4..).unwrap_or_default()),
        ) else {
            return Ring::Odd;
        };
        Ring::Count {
            from: Rank(u32::from_le_bytes(r)),
            count: u64::from_le_bytes(c),
        }
    }
}

/// Rings against received messages, per peer (sans I/O): how many messages are owed.
#[derive(Debug, Clone, Default)]
pub struct Ledger {
    /// Indexed by rank: the highest count that peer rang with.
    announced: Vec<u64>,
    /// Indexed by rank: the messages received from that peer.
    received: Vec<u64>,
    /// The sum over peers of what is announced and not yet received.
    owed: u64,
}

impl Ledger {
    pub fn new(size: u32) -> Ledger {
        let n = usize::try_from(size).unwrap_or(0);
        Ledger {
            announced: vec![0; n],
            received: vec![0; n],
            owed: 0,
        }
    }

    fn owed_by(&self, i: usize) -> u64 {
        self.announced[i].saturating_sub(self.received[i])
    }

    fn update(&mut self, peer: Rank, f: impl FnOnce(&mut Ledger, usize)) {
        let Some(i) = usize::try_from(peer.0)
            .ok()
            .filter(|i| *i < self.received.len())
        else {
            return;
        };
        let before = self.owed_by(i);
        f(self, i);
        self.owed = self.owed - before + self.owed_by(i);
    }

    /// A ring: `peer` has sent `count` messages in all. True if it announced a new one.
    pub fn rung(&mut self, peer: Rank, count: u64) -> bool {
        let before = self.owed;
        self.update(peer, |l, i| l.announced[i] = l.announced[i].max(count));
        self.owed > before
    }

    /// A message from `peer` was received.
    pub fn received(&mut self, peer: Rank) {
        self.update(peer, |l, i| l.received[i] += 1);
    }

    /// Messages announced and not yet received.
    pub fn owed(&self) -> u64 {
        self.owed
    }
}

fn address(job: &str, rank: Rank) -> io::Result<SocketAddr> {
    SocketAddr::from_abstract_name(format!("rpar-engine/{job}/{}", rank.0).as_bytes())
}

impl Doorbell {
    /// Bind this rank's doorbell (nonblocking). `job` must be the same on every rank of the job
    /// and unique among jobs on the host.
    pub fn bind(job: &str, me: Rank, size: u32) -> io::Result<Doorbell> {
        let sock = UnixDatagram::bind_addr(&address(job, me)?)?;
        sock.set_nonblocking(true)?;
        let n = usize::try_from(size).unwrap_or(0);
        Ok(Doorbell {
            sock,
            job: job.to_string(),
            me,
            peers: vec![None; n],
            sent: vec![0; n],
            unrung: vec![false; n],
        })
    }

    /// Find out which of `peers` can be rung (every rank must have bound its doorbell first).
    /// Returns how many can.
    pub fn probe(&mut self, peers: impl IntoIterator<Item = Rank>) -> usize {
        let mut n = 0;
        for r in peers {
            let Some(i) = self.index(r) else {
                continue;
            };
            let Ok(addr) = address(&self.job, r) else {
                continue;
            };
            // An empty datagram: delivered (and ignored) if the peer is on this host.
            let ok = match self.sock.send_to_addr(&[], &addr) {
                Ok(_) => true,
                // a full buffer still means the peer exists
                Err(e) => e.kind() == io::ErrorKind::WouldBlock,
            };
            if ok {
                self.peers[i] = Some(addr);
                n += 1;
            }
        }
        n
    }

    /// Count one more message sent to `peer` and wake it (if reachable). Never blocks; a full
    /// buffer already means "wake up", and the count goes again later ([`Doorbell::ring_again`]).
    /// The loops count instead ([`Doorbell::count`]) and ring once per pass.
    #[cfg(test)]
    pub fn ring(&mut self, peer: Rank) {
        if let Some(i) = self.index(peer) {
            self.sent[i] += 1;
            self.send_count(i);
        }
    }

    /// Count one more message sent to `peer`; its ring goes with the next
    /// [`Doorbell::ring_again`], one for all the messages counted since (the loop rings once
    /// per pass, after its sends).
    pub fn count(&mut self, peer: Rank) {
        if let Some(i) = self.index(peer) {
            self.sent[i] += 1;
            if self.peers[i].is_some() {
                self.unrung[i] = true;
            }
        }
    }

    /// `peer`'s slot in the per-peer tables, if it is a rank of this job.
    fn index(&self, peer: Rank) -> Option<usize> {
        usize::try_from(peer.0)
            .ok()
            .filter(|i| *i < self.sent.len())
    }

    /// Send peer `i` the count of messages sent to it so far; note whether its buffer was full.
    fn send_count(&mut self, i: usize) {
        let Some(Some(addr)) = self.peers.get(i) else {
            return;
        };
        let sent = self.sent.get(i).copied().unwrap_or(0);
        let full = matches!(
            self.sock.send_to_addr(&ring_bytes(self.me, sent), addr),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock
        );
        if let Some(u) = self.unrung.get_mut(i) {
            *u = full;
        }
    }

    /// Ring the peers with a count not delivered yet (counted since, or refused by a full
    /// buffer); true while some buffer is still full.
    pub fn ring_again(&mut self) -> bool {
        let mut left = false;
        for i in 0..self.unrung.len() {
            if self.unrung[i] {
                self.send_count(i);
                left |= self.unrung[i];
            }
        }
        left
    }

    /// Some peer has a count not delivered yet ([`Doorbell::ring_again`] sends it).
    pub fn unrung(&self) -> bool {
        self.unrung.contains(&true)
    }

    /// Empty the doorbell into `ledger`; returns (rings that announced a message, datagrams
    /// that were not rings of this build).
    ///
    /// The datagrams are taken [`BATCH`] at a time (`recvmmsg`): a batch that is not full
    /// emptied the socket, so the usual wake-up (a ring or two) costs one call.
    pub fn drain(&self, ledger: &mut Ledger) -> (u64, u64) {
        let mut bufs = [[0u8; 16]; BATCH];
        let (mut new, mut odd) = (0, 0);
        loop {
            let (lens, got) = self.recv_batch(&mut bufs);
            for (b, n) in bufs.iter().zip(&lens).take(got) {
                match Ring::parse(b.get(..*n).unwrap_or(b)) {
                    Ring::Probe => {}
                    Ring::Count { from, count } => new += u64::from(ledger.rung(from, count)),
                    Ring::Odd => odd += 1,
                }
            }
            if got < BATCH {
                return (new, odd);
            }
        }
    }

    /// Receive up to [`BATCH`] datagrams without waiting: their lengths, and how many came
    /// (0: nothing there, or an error).
    fn recv_batch(&self, bufs: &mut [[u8; 16]; BATCH]) -> ([usize; BATCH], usize) {
        let mut iov = bufs.each_mut().map(|b| libc::iovec {
            iov_base: b.as_mut_ptr().cast(),
            iov_len: b.len(),
        });
        // SAFETY: an all-zero mmsghdr is a valid empty header; each is pointed at its iovec.
        let mut msgs: [libc::mmsghdr; BATCH] = unsafe { std::mem::zeroed() };
        for (m, v) in msgs.iter_mut().zip(iov.iter_mut()) {
            m.msg_hdr.msg_iov = v;
            m.msg_hdr.msg_iovlen = 1;
        }
        // SAFETY: `msgs` holds BATCH headers whose iovecs point into `bufs`, all alive for the
        // call; MSG_DONTWAIT never blocks.
        let n = unsafe {
            libc::recvmmsg(
                self.sock.as_raw_fd(),
                msgs.as_mut_ptr(),
                BATCH as libc::c_uint,
                libc::MSG_DONTWAIT,
                std::ptr::null_mut(),
            )
        };
        let n = usize::try_from(n).unwrap_or(0).min(BATCH);
        let mut lens = [0; BATCH];
        for (l, m) in lens.iter_mut().zip(&msgs) {
            *l = usize::try_from(m.msg_len).unwrap_or(0);
        }
        (lens, n)
    }

    pub fn fd(&self) -> RawFd {
        self.sock.as_raw_fd()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rings_reach_bound_peers_only() {
        let job = format!("test-{}", std::process::id());
        let mut a = Doorbell::bind(&job, Rank(0), 3).unwrap();
        let mut b = Doorbell::bind(&job, Rank(1), 3).unwrap();
        // rank 2 never binds: unreachable
        assert_eq!(a.probe([Rank(1), Rank(2), Rank(7)]), 1);
        assert!(a.peers[1].is_some() && a.peers[2].is_none());
        assert_eq!(b.probe([Rank(0)]), 1);
        let (mut la, mut lb) = (Ledger::new(3), Ledger::new(3));
        assert_eq!(b.drain(&mut lb), (0, 0), "probe datagrams are not rings");
        assert_eq!(a.drain(&mut la), (0, 0));
        a.ring(Rank(1));
        a.ring(Rank(1));
        a.ring(Rank(2)); // no-op
        a.ring(Rank(9)); // no such rank: no-op
        assert_eq!(b.drain(&mut lb), (2, 0));
        assert_eq!(lb.owed(), 2);
        assert_eq!(b.drain(&mut lb), (0, 0));
        b.ring(Rank(0));
        assert_eq!(a.drain(&mut la), (1, 0));
        assert_eq!(la.owed(), 1);
        // another job with the same ranks is a different namespace of names
        let c = Doorbell::bind(&format!("{job}-other"), Rank(1), 3).unwrap();
        a.ring(Rank(1));
        let mut lc = Ledger::new(3);
        assert_eq!(c.drain(&mut lc), (0, 0));
        assert_eq!(b.drain(&mut lb), (1, 0));
        assert_eq!(lb.owed(), 3);
        // a datagram of another kind wakes the loop but announces nothing
        let d = UnixDatagram::unbound().unwrap();
        d.send_to_addr(b"!", &address(&job, Rank(1)).unwrap())
            .unwrap();
        assert_eq!(b.drain(&mut lb), (0, 1));
    }

    #[test]
    fn a_ring_refused_by_a_full_buffer_goes_again_with_the_count() {
        let job = format!("test-full-{}", std::process::id());
        let mut a = Doorbell::bind(&job, Rank(0), 2).unwrap();
        let b = Doorbell::bind(&job, Rank(1), 2).unwrap();
        assert_eq!(a.probe([Rank(1)]), 1);
        let mut lb = Ledger::new(2);
        assert_eq!(b.drain(&mut lb), (0, 0));
        assert!(!a.unrung() && !a.ring_again());
        // far more rings than any datagram queue holds
        for _ in 0..10_000 {
            a.ring(Rank(1));
        }
        assert!(a.unrung(), "the receiver's buffer filled up");
        b.drain(&mut lb);
        assert!(lb.owed() < 10_000, "the last rings were refused");
        assert!(!a.ring_again(), "room again: the count went through");
        assert!(!a.unrung());
        b.drain(&mut lb);
        assert_eq!(lb.owed(), 10_000);
    }

    #[test]
    fn counted_messages_ring_once() {
        let job = format!("test-count-{}", std::process::id());
        let mut a = Doorbell::bind(&job, Rank(0), 3).unwrap();
        let b = Doorbell::bind(&job, Rank(1), 3).unwrap();
        assert_eq!(a.probe([Rank(1)]), 1);
        let mut lb = Ledger::new(3);
        assert_eq!(b.drain(&mut lb), (0, 0));
        a.count(Rank(1));
        a.count(Rank(1));
        a.count(Rank(2)); // unreachable: nothing to ring
        assert!(a.unrung());
        assert_eq!(b.drain(&mut lb), (0, 0), "no ring before ring_again");
        assert!(!a.ring_again());
        assert!(!a.unrung());
        assert_eq!(b.drain(&mut lb), (1, 0), "one ring for both");
        assert_eq!(lb.owed(), 2);
        assert!(!a.ring_again());
        assert_eq!(b.drain(&mut lb), (0, 0), "nothing counted since");
    }

    #[test]
    fn rings_parse() {
        assert_eq!(Ring::parse(b""), Ring::Probe);
        assert_eq!(Ring::parse(b"!"), Ring::Odd);
        assert_eq!(Ring::parse(&[0; 13]), Ring::Odd);
        assert_eq!(
            Ring::parse(&ring_bytes(Rank(7), 42)),
            Ring::Count {
                from: Rank(7),
                count: 42
            }
        );
    }

    #[test]
    fn the_ledger_counts_exactly_whatever_the_order_and_losses() {
        let mut l = Ledger::new(3);
        assert!(l.rung(Rank(1), 1));
        assert_eq!(l.owed(), 1);
        l.received(Rank(1));
        assert_eq!(l.owed(), 0);
        // a message received before its ring: its ring then announces nothing
        l.received(Rank(2));
        assert_eq!(l.owed(), 0);
        assert!(!l.rung(Rank(2), 1));
        assert_eq!(l.owed(), 0);
        // rings 2 and 3 lost (full buffer), ring 4 carries the total
        assert!(l.rung(Rank(1), 4));
        assert_eq!(l.owed(), 3);
        // an old ring arriving late changes nothing
        assert!(!l.rung(Rank(1), 2));
        assert_eq!(l.owed(), 3);
        for _ in 0..3 {
            l.received(Rank(1));
        }
        assert_eq!(l.owed(), 0);
        // two peers at once
        l.rung(Rank(0), 2);
        l.rung(Rank(2), 3);
        assert_eq!(l.owed(), 4);
        l.received(Rank(2));
        assert_eq!(l.owed(), 3);
        // ranks outside the job (a stray datagram) are ignored
        assert!(!l.rung(Rank(3), 100));
        assert!(!l.rung(Rank(u32::MAX), 100));
        l.received(Rank(99));
        assert_eq!(l.owed(), 3);
    }
}
