//! Messages for engines whose socket is not connected (yet): the retry and drop policy.
//!
//! Every socket of an engine reconnects on its own timer, so an engine taken back by
//! `--restore` can answer heartbeats, and be registered, a moment before its MUX or task socket
//! is back; an engine's socket can also drop and reconnect under load. The engine-facing
//! ROUTERs are `ROUTER_MANDATORY`, so the I/O shell learns when a message cannot be routed
//! (`EHOSTUNREACH`) and reports it with [`Parked::send_failed`]. The message then waits here,
//! in order with any later message for the same engine on the same socket ([`Parked::admit`]),
//! is tried again every [`PARK_RETRY`] ([`Parked::tick`]), and is sent as soon as the engine's
//! socket is there, or dropped with a warning after [`PARK_LIMIT`].
//!
//! Sans-I/O: time is passed in, and the retry sends through a function the shell gives.

use super::Sock;
use rpar_core::wire::Frames;
use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};
use tracing::{debug, warn};

/// How long a message waits for its engine's socket to connect before it is dropped.
pub const PARK_LIMIT: Duration = Duration::from_secs(30);
/// How often parked messages are tried again.
pub const PARK_RETRY: Duration = Duration::from_millis(10);

/// The messages parked for one engine on one socket, and when the first of them was parked.
type Queue = (Instant, VecDeque<Frames>);

/// Messages waiting for their engine's socket, per socket and engine identity.
#[derive(Debug, Default)]
pub struct Parked {
    /// Per socket, per engine identity (the message's first frame).
    queues: HashMap<Sock, HashMap<Vec<u8>, Queue>>,
    next: Option<Instant>,
}

impl Parked {
    /// Sockets whose messages may be parked: the ROUTERs that send to engines.
    pub fn holds(kind: Sock) -> bool {
        matches!(
            kind,
            Sock::MuxEngine | Sock::TaskEngine | Sock::ControlEngine | Sock::BcastEngine
        )
    }

    /// When [`Parked::tick`] next has work; `None` while nothing is parked.
    pub fn next_retry(&self) -> Option<Instant> {
        self.next
    }

    /// How many messages are parked.
    pub fn len(&self) -> usize {
        self.queues
            .values()
            .flat_map(HashMap::values)
            .map(|(_, q)| q.len())
            .sum()
    }

    /// Whether nothing is parked.
    pub fn is_empty(&self) -> bool {
        self.queues.is_empty()
    }

    /// A message the hub wants sent on `kind`: given back to be sent now, or kept (`None`)
    /// because earlier messages for the same engine on that socket are still waiting.
    pub fn admit(&mut self, kind: Sock, frames: Frames, now: Instant) -> Option<Frames> {
        if !Self::holds(kind) {
            return Some(frames);
        }
        let peer = frames.first().map_or(&[][..], |f| &f[..]);
        if !self.queues.get(&kind).is_some_and(|q| q.contains_key(peer)) {
            return Some(frames);
        }
        self.park(kind, frames, now);
        None
    }

    /// The shell could not route this message (its engine's socket is not connected): keep it
    /// until the socket is there. On a socket that does not hold messages it is dropped, as a
    /// ROUTER drops what it cannot route.
    pub fn send_failed(&mut self, kind: Sock, frames: Frames, now: Instant) {
        if Self::holds(kind) {
            self.park(kind, frames, now);
        }
    }

    fn park(&mut self, kind: Sock, frames: Frames, now: Instant) {
        let peer = frames.first().cloned().unwrap_or_default();
        let entry = self
            .queues
            .entry(kind)
            .or_default()
            .entry(peer)
            .or_insert_with_key(|peer| {
                debug!(
                    ?kind,
                    peer = %String::from_utf8_lossy(peer),
                    "engine socket not connected; message parked"
                );
                (now, VecDeque::new())
            });
        entry.1.push_back(frames);
        self.next.get_or_insert(now + PARK_RETRY);
    }

    /// When due, try the parked messages again, oldest first per engine and socket, through
    /// `send`, which gives a message back while its engine is still not there (the rest of that
    /// engine's queue then waits behind it); drop what waited [`PARK_LIMIT`].
    pub fn tick(&mut self, now: Instant, mut send: impl FnMut(Sock, Frames) -> Result<(), Frames>) {
        if self.next.is_none_or(|t| now < t) {
            return;
        }
        self.queues.retain(|kind, peers| {
            peers.retain(|peer, (since, queue)| {
                while let Some(frames) = queue.pop_front() {
                    if let Err(frames) = send(*kind, frames) {
                        queue.push_front(frames);
                        break;
                    }
                }
                if queue.is_empty() {
                    return false;
                }
                if now.saturating_duration_since(*since) >= PARK_LIMIT {
                    warn!(
                        ?kind,
                        peer = %String::from_utf8_lossy(peer),
                        dropped = queue.len(),
                        "engine socket did not connect in {}s; messages for it dropped",
                        PARK_LIMIT.as_secs()
                    );
                    return false;
                }
                true
            });
            !peers.is_empty()
        });
        self.next = (!self.queues.is_empty()).then_some(now + PARK_RETRY);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(peer: &str, body: &str) -> Frames {
        vec![peer.as_bytes().to_vec(), body.as_bytes().to_vec()]
    }

    fn body(f: &Frames) -> String {
        String::from_utf8_lossy(&f[1]).into_owned()
    }

    /// Retry with a `send` that routes to the peers in `up` and refuses the others; what was
    /// sent, in order.
    fn tick(p: &mut Parked, now: Instant, up: &[&str]) -> Vec<(Sock, String)> {
        let mut sent = Vec::new();
        p.tick(now, |kind, f| {
            if up.iter().any(|u| u.as_bytes() == f[0]) {
                sent.push((kind, body(&f)));
                Ok(())
            } else {
                Err(f)
            }
        });
        sent
    }

    #[test]
    fn later_messages_for_a_parked_engine_queue_behind_and_go_in_order() {
        let t0 = Instant::now();
        let mut p = Parked::default();
        p.send_failed(Sock::MuxEngine, msg("e1", "a"), t0);
        assert!(p.admit(Sock::MuxEngine, msg("e1", "b"), t0).is_none());
        assert!(p.admit(Sock::MuxEngine, msg("e1", "c"), t0).is_none());
        // another engine, and the same engine on another socket, are not held up
        assert!(p.admit(Sock::MuxEngine, msg("e2", "x"), t0).is_some());
        assert!(p.admit(Sock::TaskEngine, msg("e1", "y"), t0).is_some());
        assert_eq!(p.len(), 3);
        let sent = tick(&mut p, t0 + PARK_RETRY, &["e1"]);
        let bodies: Vec<_> = sent.iter().map(|(_, b)| b.as_str()).collect();
        assert_eq!(bodies, ["a", "b", "c"]);
        assert!(p.is_empty());
        assert_eq!(p.next_retry(), None);
        assert!(p.admit(Sock::MuxEngine, msg("e1", "d"), t0).is_some());
    }

    #[test]
    fn a_refused_retry_keeps_the_rest_of_the_queue_behind_it() {
        let t0 = Instant::now();
        let mut p = Parked::default();
        p.send_failed(Sock::ControlEngine, msg("e1", "a"), t0);
        p.send_failed(Sock::ControlEngine, msg("e1", "b"), t0);
        let mut tries = Vec::new();
        p.tick(t0 + PARK_RETRY, |_, f| {
            tries.push(body(&f));
            if f[1] == b"a" {
                Ok(())
            } else {
                Err(f)
            }
        });
        assert_eq!(tries, ["a", "b"]);
        assert_eq!(p.len(), 1);
        assert!(p.admit(Sock::ControlEngine, msg("e1", "c"), t0).is_none());
        let sent = tick(&mut p, t0 + 2 * PARK_RETRY, &["e1"]);
        let bodies: Vec<_> = sent.iter().map(|(_, b)| b.as_str()).collect();
        assert_eq!(bodies, ["b", "c"]);
    }

    #[test]
    fn retries_wait_for_the_retry_period() {
        let t0 = Instant::now();
        let mut p = Parked::default();
        p.send_failed(Sock::BcastEngine, msg("e1", "a"), t0);
        assert_eq!(p.next_retry(), Some(t0 + PARK_RETRY));
        assert!(tick(&mut p, t0 + PARK_RETRY / 2, &["e1"]).is_empty());
        assert_eq!(p.len(), 1);
        assert!(tick(&mut p, t0 + PARK_RETRY, &[]).is_empty());
        assert_eq!(p.next_retry(), Some(t0 + 2 * PARK_RETRY));
        assert_eq!(tick(&mut p, t0 + 2 * PARK_RETRY, &["e1"]).len(), 1);
        assert_eq!(p.next_retry(), None);
    }

    #[test]
    fn messages_are_dropped_after_the_park_limit() {
        let t0 = Instant::now();
        let mut p = Parked::default();
        p.send_failed(Sock::TaskEngine, msg("e1", "a"), t0);
        p.send_failed(Sock::TaskEngine, msg("e2", "b"), t0 + PARK_LIMIT / 2);
        assert!(tick(&mut p, t0 + PARK_LIMIT - PARK_RETRY, &[]).is_empty());
        assert_eq!(p.len(), 2);
        assert!(tick(&mut p, t0 + PARK_LIMIT, &[]).is_empty());
        // e1's waited its 30 s; e2's only half of it
        assert_eq!(p.len(), 1);
        assert!(p.admit(Sock::TaskEngine, msg("e1", "c"), t0).is_some());
        assert!(p.admit(Sock::TaskEngine, msg("e2", "d"), t0).is_none());
    }

    #[test]
    fn client_sockets_do_not_park() {
        let t0 = Instant::now();
        let mut p = Parked::default();
        p.send_failed(Sock::MuxClient, msg("c1", "a"), t0);
        p.send_failed(Sock::Registration, msg("c1", "a"), t0);
        assert!(p.is_empty());
        assert_eq!(p.next_retry(), None);
        assert!(p.admit(Sock::MuxClient, msg("c1", "b"), t0).is_some());
    }
}
