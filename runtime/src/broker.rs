//! Rank 0's routing decisions, sans I/O.
//!
//! Rank 0 holds, for every rank r, the sockets a Python ipengine would open (shell ROUTER and
//! control ROUTER with identity = r's engine uuid, heartbeat DEALER with the same identity),
//! plus one heartbeat SUB and one IOPub PUB shared by all. The broker maps
//! "a multipart message arrived on socket S of engine r" to "give it to the local engine" or "send
//! it over MPI to rank r", and "rank r wants to send these frames on channel C" to a socket. It
//! also counts which ranks have shut down (all done, or one fatal: [`JobEvent::ExitAll`]); the
//! rest of the job's lifecycle is [`crate::job`]'s.
//! The I/O loop in `runtime.rs` performs the [`Route`]s; tests drive the broker directly.

use crate::relay::{Channel, Life, Packet, Rank};
use std::collections::BTreeSet;

/// A ZeroMQ socket on rank 0.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Socket {
    Shell(Rank),
    Control(Rank),
    Heart(Rank),
    /// The IOPub PUB (compat: shared by all engines; native: routed as this rank's engine).
    IoPub(Rank),
}

/// What to do with a message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    /// Hand to rank 0's own engine (no MPI).
    Local(Packet),
    /// Send over MPI to that rank.
    Remote(Rank, Packet),
    /// Send these frames on a socket.
    Zmq(Socket, Vec<Vec<u8>>),
    /// Drop (with the reason, for the log).
    Drop(&'static str),
}

/// Job-level events the broker decides on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JobEvent {
    /// Every rank has shut down or a fatal error happened: unregister all engines, tell every rank
    /// to exit with this code.
    ExitAll(i32),
}

/// Rank 0's routing state.
#[derive(Debug)]
pub struct Broker {
    size: u32,
    done: BTreeSet<Rank>,
    exiting: bool,
    /// The last ping relayed to the ranks.
    last_ping: Vec<Vec<u8>>,
}

impl Broker {
    pub fn new(size: u32) -> Broker {
        Broker {
            size,
            done: BTreeSet::new(),
            exiting: false,
            last_ping: Vec::new(),
        }
    }

    fn deliver(rank: Rank, channel: Channel, frames: Vec<Vec<u8>>) -> Route {
        let p = Packet::new(channel, rank, frames);
        if rank.0 == 0 {
            Route::Local(p)
        } else {
            Route::Remote(rank, p)
        }
    }

    /// A message arrived on engine `rank`'s shell or control socket.
    pub fn on_socket(&self, rank: Rank, channel: Channel, frames: Vec<Vec<u8>>) -> Route {
        if rank.0 >= self.size {
            return Route::Drop("message for a rank outside the job");
        }
        if self.exiting {
            return Route::Drop("job is exiting");
        }
        match channel {
            Channel::Shell | Channel::Control => Self::deliver(rank, channel, frames),
            _ => Route::Drop("only shell and control sockets receive requests"),
        }
    }

    /// A heartbeat ping arrived: every engine that still runs gets it; each echoes it back itself,
    /// so a rank that is dead or hung does not answer.
    ///
    /// A ping equal to the last one is not relayed again. The controller repeats its current
    /// ping every few tens of milliseconds while registrations are pending (a Python engine's
    /// SUB may have connected after the first); over MPI every rank already got it, and in a
    /// big job on busy cores the repeats (one MPI message per rank each) only queued up until
    /// the echoes came back too late to count and no engine could register.
    pub fn ping(&mut self, frames: &[Vec<u8>]) -> Vec<Route> {
        if self.exiting || self.last_ping.as_slice() == frames {
            return Vec::new();
        }
        self.last_ping = frames.to_vec();
        (0..self.size)
            .map(Rank)
            .filter(|r| !self.done.contains(r))
            .map(|r| Self::deliver(r, Channel::Heartbeat, frames.to_vec()))
            .collect()
    }

    /// A packet from an engine (over MPI, or rank 0's own): where it goes.
    /// `from` is the MPI source (the engine's own rank must match the header: a rank only
    /// speaks for itself).
    pub fn on_engine(&mut self, from: Rank, p: Packet) -> (Route, Option<JobEvent>) {
        let rank = p.header.rank;
        if rank != from {
            return (Route::Drop("rank speaks for another rank"), None);
        }
        if rank.0 >= self.size {
            return (Route::Drop("rank outside the job"), None);
        }
        match p.header.channel {
            Channel::Shell => (Route::Zmq(Socket::Shell(rank), p.frames), None),
            Channel::Control => (Route::Zmq(Socket::Control(rank), p.frames), None),
            Channel::IoPub => (Route::Zmq(Socket::IoPub(rank), p.frames), None),
            Channel::Heartbeat => {
                if self.done.contains(&rank) || self.exiting {
                    (Route::Drop("heartbeat of a finished engine"), None)
                } else {
                    (Route::Zmq(Socket::Heart(rank), p.frames), None)
                }
            }
            Channel::Life => match p.as_life() {
                Ok(life) => (Route::Drop("lifecycle handled"), self.on_life(rank, life)),
                Err(_) => (Route::Drop("bad lifecycle message"), None),
            },
        }
    }

    /// Lifecycle bookkeeping.
    pub fn on_life(&mut self, rank: Rank, life: Life) -> Option<JobEvent> {
        if self.exiting {
            return None;
        }
        match life {
            Life::Done => {
                self.done.insert(rank);
                if self.done.len() as u32 >= self.size {
                    self.exiting = true;
                    return Some(JobEvent::ExitAll(0));
                }
                None
            }
            Life::Fatal { .. } => {
                self.exiting = true;
                Some(JobEvent::ExitAll(1))
            }
            // Only rank 0 sends Exit; a rank sending it to rank 0 is ignored.
            Life::Exit { .. } => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn f(s: &str) -> Vec<Vec<u8>> {
        vec![s.as_bytes().to_vec()]
    }

    #[test]
    fn requests_go_to_their_rank() {
        let b = Broker::new(4);
        match b.on_socket(Rank(0), Channel::Shell, f("x")) {
            Route::Local(p) => assert_eq!(p.header.channel, Channel::Shell),
            r => panic!("{r:?}"),
        }
        match b.on_socket(Rank(3), Channel::Control, f("x")) {
            Route::Remote(r, p) => {
                assert_eq!(r, Rank(3));
                assert_eq!(p.header.rank, Rank(3));
                assert_eq!(p.header.channel, Channel::Control);
                assert_eq!(p.frames, f("x"));
            }
            r => panic!("{r:?}"),
        }
        assert!(matches!(
            b.on_socket(Rank(4), Channel::Shell, f("x")),
            Route::Drop(_)
        ));
        assert!(matches!(
            b.on_socket(Rank(1), Channel::IoPub, f("x")),
            Route::Drop(_)
        ));
    }

    #[test]
    fn replies_go_to_the_engines_sockets() {
        let mut b = Broker::new(2);
        let cases = [
            (Channel::Shell, Socket::Shell(Rank(1))),
            (Channel::Control, Socket::Control(Rank(1))),
            (Channel::IoPub, Socket::IoPub(Rank(1))),
            (Channel::Heartbeat, Socket::Heart(Rank(1))),
        ];
        for (ch, sock) in cases {
            let (r, ev) = b.on_engine(Rank(1), Packet::new(ch, Rank(1), f("y")));
            assert_eq!(r, Route::Zmq(sock, f("y")));
            assert!(ev.is_none());
        }
        // a rank may not speak for another
        let (r, _) = b.on_engine(Rank(1), Packet::new(Channel::Shell, Rank(0), f("y")));
        assert!(matches!(r, Route::Drop(_)));
    }

    #[test]
    fn pings_reach_live_ranks_only() {
        let mut b = Broker::new(3);
        assert_eq!(b.ping(&f("1.5")).len(), 3);
        assert!(b.on_life(Rank(1), Life::Done).is_none());
        let routes = b.ping(&f("2.0"));
        assert_eq!(routes.len(), 2);
        assert!(matches!(&routes[0], Route::Local(_)));
        assert!(matches!(&routes[1], Route::Remote(Rank(2), _)));
        // a finished engine's late echo is not forwarded
        let (r, _) = b.on_engine(Rank(1), Packet::new(Channel::Heartbeat, Rank(1), f("2.0")));
        assert!(matches!(r, Route::Drop(_)));
    }

    #[test]
    fn a_repeated_ping_is_relayed_once() {
        let mut b = Broker::new(4);
        assert_eq!(b.ping(&f("3.0")).len(), 4);
        assert!(b.ping(&f("3.0")).is_empty());
        assert!(b.ping(&f("3.0")).is_empty());
        // the next beat's token goes out again to every rank
        assert_eq!(b.ping(&f("6.0")).len(), 4);
    }

    #[test]
    fn job_exits_when_every_rank_is_done() {
        let mut b = Broker::new(3);
        assert_eq!(b.on_life(Rank(0), Life::Done), None);
        assert_eq!(b.on_life(Rank(0), Life::Done), None); // repeated: still 1 of 3
        let (_, ev) = b.on_engine(Rank(2), Packet::life(Rank(2), &Life::Done));
        assert_eq!(ev, None);
        let (_, ev) = b.on_engine(Rank(1), Packet::life(Rank(1), &Life::Done));
        assert_eq!(ev, Some(JobEvent::ExitAll(0)));
        // nothing routed once exiting
        assert!(b.ping(&f("p")).is_empty());
        assert!(matches!(
            b.on_socket(Rank(0), Channel::Shell, f("x")),
            Route::Drop(_)
        ));
    }

    #[test]
    fn fatal_exits_nonzero_once() {
        let mut b = Broker::new(2);
        let ev = b.on_life(Rank(1), Life::Fatal { reason: "x".into() });
        assert_eq!(ev, Some(JobEvent::ExitAll(1)));
        assert_eq!(b.on_life(Rank(0), Life::Done), None);
        assert_eq!(b.on_life(Rank(1), Life::Done), None);
    }
}
