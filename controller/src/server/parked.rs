//! Messages for engines whose socket is not connected (yet).

use super::bind::Sockets;
use super::frames::send_frames;
use super::poll::Readers;
use crate::hub::Sock;
use rpar_core::wire::Frames;
use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};
use tracing::{debug, warn};

/// How long a message waits for its engine's socket to connect before it is dropped.
const PARK_LIMIT: Duration = Duration::from_secs(30);
/// How often parked messages are tried again.
const PARK_RETRY: Duration = Duration::from_millis(10);

/// The messages parked for one engine on one socket, and when the first of them was parked.
type Queue = (Instant, VecDeque<Frames>);

/// Messages for engines whose socket is not connected (yet).
///
/// Every socket of an engine reconnects on its own timer, so an engine taken back by
/// `--restore` can answer heartbeats, and be registered, a moment before its MUX or task socket
/// is back; an engine's socket can also drop and reconnect under load. The engine-facing
/// ROUTERs are `ROUTER_MANDATORY`: a message they cannot route waits here, in order with any
/// later message for the same engine on the same socket, and is sent as soon as the engine's
/// socket is there, or dropped with a warning after [`PARK_LIMIT`].
#[derive(Default)]
pub(super) struct Parked {
    /// Per socket, per engine identity.
    queues: HashMap<Sock, HashMap<Vec<u8>, Queue>>,
    next: Option<Instant>,
}

impl Parked {
    /// Sockets whose messages may be parked: the ROUTERs that send to engines.
    pub(super) fn holds(kind: Sock) -> bool {
        matches!(
            kind,
            Sock::MuxEngine | Sock::TaskEngine | Sock::ControlEngine | Sock::BcastEngine
        )
    }

    pub(super) fn next_retry(&self) -> Option<Instant> {
        self.next
    }

    pub(super) fn due(&self, now: Instant) -> bool {
        self.next.is_some_and(|t| now >= t)
    }

    /// Whether a message for `peer` on `kind` must queue behind earlier parked ones.
    pub(super) fn has(&self, kind: Sock, peer: &[u8]) -> bool {
        self.queues.get(&kind).is_some_and(|q| q.contains_key(peer))
    }

    pub(super) fn park(&mut self, kind: Sock, frames: Frames, now: Instant) {
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

    /// Send what can be sent now; drop what waited too long.
    pub(super) fn retry(&mut self, socks: &Sockets, readers: &mut Readers, now: Instant) {
        self.queues.retain(|kind, peers| {
            let Some(s) = socks.get(*kind) else {
                return false;
            };
            readers.touch(*kind);
            peers.retain(|peer, (since, queue)| {
                while let Some(frames) = queue.pop_front() {
                    match send_frames(s, frames) {
                        Ok(()) => {}
                        Err((zmq::Error::EHOSTUNREACH, Some(frames))) => {
                            queue.push_front(frames);
                            break;
                        }
                        Err((err, _)) => warn!(?kind, error = %err, "send failed"),
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
