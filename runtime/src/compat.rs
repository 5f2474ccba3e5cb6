//! The compat transport as the runtime loop drives it: every engine's own sockets
//! ([`crate::net::Sockets`]), read in turn.
//!
//! A table maps each poll slot to its typed role (engine r's shell, engine r's control, the
//! shared heartbeat SUB), built once when the sockets open. ZeroMQ's descriptors are
//! edge-triggered: a slot that woke the loop goes on a to-read queue and stays there until its
//! socket says `EAGAIN`; a socket that sent is queued too (a send may take the notification of
//! an input with it), and before the loop sleeps every socket's `ZMQ_EVENTS` is asked, as
//! `zmq_poll` does (edges alone lost wake-ups, see [`Compat::has_input`]). The queue is read round robin, one message per socket per turn, within
//! the pass' [`Quota`], so one busy engine's socket cannot keep the others' waiting.

use crate::broker::Socket;
use crate::fair::Quota;
use crate::job::Policy;
use crate::net::Sockets;
use crate::relay::{Channel, Rank};
use crate::transport::{Incoming, Transport};
use rpar_core::native::Departure;
use rpar_core::wire::Frames;
use std::collections::VecDeque;
use std::os::fd::RawFd;
use tracing::{debug, warn};

/// What a poll slot is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    Shell(Rank),
    Control(Rank),
    Ping,
}

/// Engine `r`'s socket of a per-engine list.
fn at(list: &[zmq::Socket], r: Rank) -> Option<&zmq::Socket> {
    usize::try_from(r.0).ok().and_then(|i| list.get(i))
}

/// Every engine's sockets, and what is left to read.
pub struct Compat {
    sockets: Sockets,
    key: Vec<u8>,
    uuids: Vec<String>,
    ids: Vec<u32>,
    roles: Vec<Role>,
    /// Slots to read, in turn; `queued[slot]` says whether a slot is in it.
    to_read: VecDeque<usize>,
    queued: Vec<bool>,
}

impl Compat {
    pub fn new(sockets: Sockets, key: Vec<u8>, uuids: Vec<String>, ids: Vec<u32>) -> Compat {
        let n = u32::try_from(sockets.shell.len()).unwrap_or(u32::MAX);
        let mut roles: Vec<Role> = (0..n).map(|r| Role::Shell(Rank(r))).collect();
        roles.extend((0..n).map(|r| Role::Control(Rank(r))));
        roles.push(Role::Ping);
        let slots = roles.len();
        Compat {
            sockets,
            key,
            uuids,
            ids,
            roles,
            // every socket is read once at the start: input may have come before the loop
            to_read: (0..slots).collect(),
            queued: vec![true; slots],
        }
    }

    fn socket(&self, role: Role) -> Option<&zmq::Socket> {
        match role {
            Role::Shell(r) => at(&self.sockets.shell, r),
            Role::Control(r) => at(&self.sockets.control, r),
            Role::Ping => Some(&self.sockets.hb_sub),
        }
    }

    fn queue(&mut self, slot: usize) {
        if let Some(q) = self.queued.get_mut(slot) {
            if !*q {
                *q = true;
                self.to_read.push_back(slot);
            }
        }
    }

    /// The slot of an engine socket that can receive.
    fn slot_of(&self, role: Role) -> Option<usize> {
        let n = self.sockets.shell.len();
        match role {
            Role::Shell(r) => usize::try_from(r.0).ok().filter(|i| *i < n),
            Role::Control(r) => usize::try_from(r.0).ok().filter(|i| *i < n).map(|i| n + i),
            Role::Ping => Some(2 * n),
        }
    }
}

impl Transport for Compat {
    fn fds(&self) -> Vec<RawFd> {
        self.roles
            .iter()
            .map(|r| match self.socket(*r).map(zmq::Socket::get_fd) {
                Some(Ok(fd)) => fd,
                Some(Err(e)) => {
                    warn!("no descriptor for {r:?}: {e}");
                    -1
                }
                None => -1,
            })
            .collect()
    }

    fn on_ready(&mut self, slot: usize) {
        self.queue(slot);
    }

    fn has_input(&mut self) -> bool {
        if self.to_read.is_empty() {
            // before sleeping, ask every socket as zmq_poll does (ZeroMQ's descriptor signals
            // command arrivals, and another operation on the socket can take the signal with
            // it): with edges alone, a relayed rank's round trip measured 3-4.5 ms slower in
            // three runs on the loaded 2-core machine, and such scans found requests waiting
            // on a shell socket whose descriptor had not woken the loop
            for slot in 0..self.roles.len() {
                let readable = self
                    .roles
                    .get(slot)
                    .and_then(|r| self.socket(*r))
                    .is_some_and(|s| s.get_events().is_ok_and(|e| e.contains(zmq::POLLIN)));
                if readable {
                    self.queue(slot);
                }
            }
        }
        !self.to_read.is_empty()
    }

    fn recv(&mut self, quota: &mut Quota) -> Option<Incoming> {
        // one turn over the queue at most: a slot whose rank is at its bound waits its turn
        for _ in 0..self.to_read.len() {
            if quota.full() {
                return None;
            }
            let slot = self.to_read.pop_front()?;
            let Some(&role) = self.roles.get(slot) else {
                continue;
            };
            let rank = match role {
                Role::Shell(r) | Role::Control(r) => Some(r),
                Role::Ping => None,
            };
            if rank.is_some_and(|r| !quota.open(r)) {
                self.to_read.push_back(slot);
                continue;
            }
            let got = self
                .socket(role)
                .map(|s| crate::relay::recv_multipart(s, zmq::DONTWAIT));
            match got {
                Some(Ok(frames)) => {
                    // read again at its next turn (until EAGAIN)
                    self.to_read.push_back(slot);
                    quota.take(rank);
                    return Some(match role {
                        Role::Shell(r) => Incoming::Request(r, Channel::Shell, frames),
                        Role::Control(r) => Incoming::Request(r, Channel::Control, frames),
                        Role::Ping => Incoming::Ping(frames),
                    });
                }
                // drained (or broken): the descriptor announces the next input
                _ => {
                    if let Some(q) = self.queued.get_mut(slot) {
                        *q = false;
                    }
                }
            }
        }
        None
    }

    fn send(&mut self, sock: Socket, frames: Frames) {
        let (s, role) = match sock {
            Socket::Shell(r) => (self.socket(Role::Shell(r)), Some(Role::Shell(r))),
            Socket::Control(r) => (self.socket(Role::Control(r)), Some(Role::Control(r))),
            Socket::Heart(r) => (at(&self.sockets.heart, r), None),
            Socket::IoPub(_) => (Some(&self.sockets.iopub), None),
        };
        if let Some(s) = s {
            if let Err(e) = s.send_multipart(frames, zmq::DONTWAIT) {
                debug!("send on {sock:?} failed: {e}");
            }
        }
        if let Some(slot) = role.and_then(|r| self.slot_of(r)) {
            self.queue(slot);
        }
    }

    fn unregister_all(&mut self, _why: Departure) {
        self.sockets
            .unregister_all(&self.key, &self.uuids, &self.ids);
    }

    fn policy(&self) -> Policy {
        Policy::COMPAT
    }
}
