//! Rank 0's connection to the controller, as the runtime loop sees it: compat (every engine's
//! own sockets, [`crate::compat`]) or native (one job connection, [`crate::native`]).
//!
//! A transport gives the loop its descriptors once (the set does not change while the job
//! runs, so the loop builds its poll set once), is told which of them woke it, hands out what
//! came in as typed [`Incoming`]s and sends what the engines put on their sockets. Policy
//! (when the job exits, who is lost) is not here but in [`crate::job`]; each transport only
//! says which of that policy applies to it ([`Policy`]).

use crate::broker::Socket;
use crate::fair::Quota;
use crate::job::Policy;
use crate::relay::{Channel, Rank};
use rpar_core::native::Departure;
use rpar_core::wire::Frames;
use std::os::fd::RawFd;

/// What came in from the controller.
#[derive(Debug)]
pub enum Incoming {
    /// A request for the engine of this rank, as its shell or control socket gets it.
    Request(Rank, Channel, Frames),
    /// A heartbeat ping, its frames as the engines' SUB socket gets them.
    Ping(Frames),
    /// The controller shuts the job down (native).
    Shutdown,
    /// The controller did not know the job; it registered again (native).
    Reregistered,
}

/// Rank 0's connection to the controller.
pub trait Transport: Send {
    /// The descriptors to poll for input, in slot order (called once, before the loop).
    fn fds(&self) -> Vec<RawFd>;
    /// The descriptor of slot `slot` (an index into [`Transport::fds`]) woke the loop.
    fn on_ready(&mut self, slot: usize);
    /// Whether input may be waiting that no descriptor will announce (ZeroMQ's descriptors
    /// are edge-triggered): the loop then does not sleep.
    fn has_input(&mut self) -> bool;
    /// The next message, within this pass' `quota`; `None` when nothing more is to be read
    /// in this pass.
    fn recv(&mut self, quota: &mut Quota) -> Option<Incoming>;
    /// Send what an engine put on one of its sockets.
    fn send(&mut self, sock: Socket, frames: Frames);
    /// Heartbeat echoes of ranks since the last call (native: the job core watches them).
    fn take_echoes(&mut self) -> Vec<Rank> {
        Vec::new()
    }
    /// Ask a silent controller whether it knows the job (native).
    fn hello(&mut self) {}
    /// Tell the controller every engine of the job is gone.
    fn unregister_all(&mut self, why: Departure);
    /// Which parts of the job core's policy apply.
    fn policy(&self) -> Policy;
}
