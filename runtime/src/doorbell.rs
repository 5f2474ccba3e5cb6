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
//! Rings are counted: a ring whose message MPI has not yet made visible to `MPI_Improbe` keeps
//! the receiver probing briefly (see [`pace`](crate::pace)); a lost
//! ring (full socket buffer) only costs latency up to the loop's idle timeout.

use crate::relay::Rank;
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr, UnixDatagram};

/// One rank's doorbell and the addresses of the peers it can ring.
pub struct Doorbell {
    sock: UnixDatagram,
    job: String,
    /// Indexed by rank: `Some(addr)` if that peer's doorbell answered the start-up probe.
    peers: Vec<Option<SocketAddr>>,
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
        Ok(Doorbell {
            sock,
            job: job.to_string(),
            peers: vec![None; size as usize],
        })
    }

    /// Find out which of `peers` can be rung (every rank must have bound its doorbell first).
    /// Returns how many can.
    pub fn probe(&mut self, peers: impl IntoIterator<Item = Rank>) -> usize {
        let mut n = 0;
        for r in peers {
            let Some(slot) = self.peers.get_mut(r.0 as usize) else {
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
                *slot = Some(addr);
                n += 1;
            }
        }
        n
    }

    /// Wake `peer` (if reachable). Never blocks; a full buffer already means "wake up".
    pub fn ring(&self, peer: Rank) {
        if let Some(Some(addr)) = self.peers.get(peer.0 as usize) {
            let _ = self.sock.send_to_addr(b"!", addr);
        }
    }

    /// Empty the doorbell; returns the number of rings (empty probe datagrams not counted).
    pub fn drain(&self) -> u64 {
        let mut buf = [0u8; 16];
        let mut rings = 0;
        loop {
            match self.sock.recv(&mut buf) {
                Ok(0) => {}
                Ok(_) => rings += 1,
                Err(_) => break,
            }
        }
        rings
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
        assert_eq!(b.drain(), 0, "probe datagrams are not rings");
        assert_eq!(a.drain(), 0);
        a.ring(Rank(1));
        a.ring(Rank(1));
        a.ring(Rank(2)); // no-op
        assert_eq!(b.drain(), 2);
        assert_eq!(b.drain(), 0);
        b.ring(Rank(0));
        assert_eq!(a.drain(), 1);
        // another job with the same ranks is a different namespace of names
        let c = Doorbell::bind(&format!("{job}-other"), Rank(1), 3).unwrap();
        a.ring(Rank(1));
        assert_eq!(c.drain(), 0);
        assert_eq!(b.drain(), 1);
    }
}
