//! Engines declared dead that turn out alive: a rank stopped (SIGSTOP, a swapped-out node, a
//! long GC pause) past the heartbeat limit is unregistered, its tasks fail, and when it resumes
//! inside a job that kept running it echoes heartbeats again. Rather than leave it a zombie that
//! no client can reach, the hub registers it again under its old id as soon as its heart answers
//! (what `--restore` does after a controller restart). Only engines unregistered for a lost
//! heartbeat are remembered, the last [`LOST_KEPT`] of them; one whose id was taken meanwhile
//! stays unregistered.

use super::{Effect, Engine, Hub};
use std::collections::VecDeque;
use std::time::Instant;
use tracing::{info, warn};

/// How many heartbeat-lost engines are remembered for a comeback.
pub(super) const LOST_KEPT: usize = 16_384;

/// Heartbeat-lost engines by uuid, oldest first.
#[derive(Debug, Default)]
pub(super) struct Lost {
    engines: VecDeque<(Vec<u8>, u32, String)>,
}

impl Lost {
    #[cfg(test)]
    pub(super) fn len(&self) -> usize {
        self.engines.len()
    }

    fn remember(&mut self, uuid: Vec<u8>, id: u32, uuid_s: String) {
        if self.engines.len() >= LOST_KEPT {
            self.engines.pop_front();
        }
        self.engines.push_back((uuid, id, uuid_s));
    }

    fn take(&mut self, uuid: &[u8]) -> Option<(Vec<u8>, u32, String)> {
        let i = self.engines.iter().rposition(|(u, ..)| u == uuid)?;
        self.engines.remove(i)
    }
}

impl Hub {
    /// Engine `id` (`uuid`) missed too many heartbeats: unregister it, and remember it.
    pub(super) fn heartbeat_lost(&mut self, uuid: &[u8], now: Instant, out: &mut Vec<Effect>) {
        let Some(e) = self.engines.get(uuid) else {
            return;
        };
        warn!(engine = e.id, uuid = %e.uuid, "heartbeat lost");
        let (id, uuid_s, registered) = (e.id, e.uuid.clone(), e.registered);
        if registered {
            self.monitor.heartbeat_lost();
        }
        self.unregister(id, now, out);
        if registered {
            self.lost.remember(uuid.to_vec(), id, uuid_s);
        }
    }

    /// A heart we do not know answered: if it is a heartbeat-lost engine, register it again.
    pub(super) fn revive(&mut self, uuid: &[u8], now: Instant, out: &mut Vec<Effect>) {
        if self.engines.contains_key(uuid) {
            return;
        }
        let Some((key, id, uuid_s)) = self.lost.take(uuid) else {
            return;
        };
        if self.ids.contains_key(&id) {
            warn!(engine = id, uuid = %uuid_s, "a heartbeat-lost engine is back, but its id was taken: it stays unregistered");
            return;
        }
        info!(engine = id, uuid = %uuid_s, "a heartbeat-lost engine answers again: registered again");
        self.engines.insert(
            key.clone(),
            Engine {
                id,
                uuid: uuid_s,
                registered: false,
                heart_seen: true,
                since: now,
            },
        );
        self.ids.insert(id, key.clone());
        self.pending_regs.insert(id, key);
        self.monitor.revived(id);
        self.finish_ready_registrations(now, out);
    }
}
