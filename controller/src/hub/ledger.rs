//! The hub's msg-id bookkeeping in one place: what is outstanding (direct requests per engine,
//! tasks per engine, unplaced tasks), what finished, and which routing id each client session
//! uses now. Everything that outlives a task is bounded here, so the controller's memory stays
//! flat however many tasks pass through it:
//! * finished msg_ids are kept for the last [`COMPLETED_KEPT`] tasks (`result_status` falls back
//!   to the task database for older ones); the per-engine `completed` counts of `queue_status`
//!   stay exact, its verbose lists name the tasks still kept;
//! * client routing ids are kept for [`ROUTES_KEPT`] sessions per socket.
//!
//! Outstanding entries live only while their task does. A task's msg_id is one shared string
//! ([`IdSet`]) from submission to the completed window, however many sets it passes through.

use super::Sock;
use foldhash::{HashMap, HashSet};
use std::collections::VecDeque;
use std::sync::Arc;

/// How many finished msg_ids the hub remembers.
pub(super) const COMPLETED_KEPT: usize = 65_536;

/// How many client sessions' routing ids are remembered (per client-facing socket).
pub(super) const ROUTES_KEPT: usize = 4096;

#[derive(Debug, Default)]
pub(super) struct Ledger {
    /// Direct (MUX) requests outstanding per engine id.
    pub mux_pending: HashMap<u32, HashSet<String>>,
    /// Tasks placed on an engine and not finished, per engine id.
    pub tasks_on: HashMap<u32, IdSet>,
    /// Which engine each placed task is on.
    pub task_engine: HashMap<Arc<str>, u32>,
    /// Tasks submitted but not yet placed.
    pub unassigned: IdSet,
    /// All outstanding msg_ids (mux and task).
    pub pending: IdSet,
    completed: Completed,
    /// Client routing ids by socket, then session (looked up by `&str`: no key is built per
    /// request).
    routes: HashMap<Sock, HashMap<String, Vec<u8>>>,
}

/// Finished msg_ids, oldest first, with the engine they count for (aborted tasks count for none).
/// Each id is stored once, shared by the queue and the set.
#[derive(Debug, Default)]
struct Completed {
    order: VecDeque<(Arc<str>, Option<u32>)>,
    set: HashSet<Arc<str>>,
    counts: HashMap<u32, u64>,
}

/// A set of msg_ids, each held as a shared string that the other sets can hold too.
#[derive(Debug, Default)]
pub(super) struct IdSet(HashSet<Arc<str>>);

impl IdSet {
    pub fn insert(&mut self, id: impl Into<Arc<str>>) -> bool {
        self.0.insert(id.into())
    }

    pub fn contains(&self, id: &str) -> bool {
        self.0.contains(id)
    }

    pub fn remove(&mut self, id: &str) -> bool {
        self.0.remove(id)
    }

    /// Remove `id`, handing back the shared string.
    pub fn take(&mut self, id: &str) -> Option<Arc<str>> {
        self.0.take(id)
    }

    /// The shared string of `id`, if held.
    pub fn get(&self, id: &str) -> Option<&Arc<str>> {
        self.0.get(id)
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The ids, sorted.
    pub fn sorted(&self) -> Vec<String> {
        let mut v: Vec<String> = self.0.iter().map(|m| m.to_string()).collect();
        v.sort();
        v
    }
}

impl Ledger {
    /// A task submitted (`resubmission`: by the hub, for `resubmit`): outstanding and not yet
    /// placed; one shared copy of its msg_id for both.
    pub fn submitted(&mut self, msg_id: &str) {
        let id: Arc<str> = match self.pending.get(msg_id) {
            Some(id) => id.clone(),
            None => msg_id.into(),
        };
        self.pending.insert(id.clone());
        self.unassigned.insert(id);
    }

    /// A task placed on engine `eid` (again, if it was resubmitted elsewhere).
    pub fn assigned(&mut self, msg_id: &str, eid: Option<u32>) {
        let id = self.unassigned.take(msg_id);
        let id = self.unplace(msg_id).or(id);
        if let Some(eid) = eid {
            let id = id
                .or_else(|| self.pending.get(msg_id).cloned())
                .unwrap_or_else(|| msg_id.into());
            self.tasks_on.entry(eid).or_default().insert(id.clone());
            self.task_engine.insert(id, eid);
        }
    }

    /// Forget where a task is placed; its shared msg_id, if it was.
    fn unplace(&mut self, msg_id: &str) -> Option<Arc<str>> {
        let (id, prev) = self.task_engine.remove_entry(msg_id)?;
        if let Some(s) = self.tasks_on.get_mut(&prev) {
            s.remove(msg_id);
            if s.is_empty() {
                self.tasks_on.remove(&prev);
            }
        }
        Some(id)
    }

    /// A request or task finished; `count_on` is the engine whose `completed` list it joins
    /// (none for aborted tasks). Returns whether it was outstanding here (false: a reply for a
    /// request this controller never saw, e.g. one sent before a restart).
    pub fn finished(&mut self, msg_id: String, ran_on: Option<u32>, count_on: Option<u32>) -> bool {
        self.unassigned.remove(&msg_id);
        self.unplace(&msg_id);
        if let Some(q) = ran_on.and_then(|e| self.mux_pending.get_mut(&e)) {
            q.remove(&msg_id);
        }
        let shared = self.pending.take(&msg_id);
        let was = shared.is_some();
        let c = &mut self.completed;
        if let Some(e) = count_on {
            *c.counts.entry(e).or_default() += 1;
        }
        if !c.set.contains(msg_id.as_str()) {
            // forget first, so the queue never outgrows the window (a VecDeque doubles its
            // capacity when pushed past it)
            while c.order.len() >= COMPLETED_KEPT {
                if let Some((old, _)) = c.order.pop_front() {
                    c.set.remove(&old);
                }
            }
            let id: Arc<str> = shared.unwrap_or_else(|| msg_id.into());
            c.set.insert(id.clone());
            c.order.push_back((id, count_on));
        }
        was
    }

    pub fn is_completed(&self, msg_id: &str) -> bool {
        self.completed.set.contains(msg_id)
    }

    /// `queue_status`'s completed count for an engine.
    pub fn completed_count(&self, eid: u32) -> u64 {
        self.completed.counts.get(&eid).copied().unwrap_or(0)
    }

    /// The engine's completed msg_ids still kept, oldest first.
    pub fn completed_on(&self, eid: u32) -> Vec<String> {
        self.completed
            .order
            .iter()
            .filter(|(_, e)| *e == Some(eid))
            .map(|(m, _)| m.to_string())
            .collect()
    }

    /// `purge_results('all')`.
    pub fn purge_all(&mut self) {
        self.completed = Completed::default();
    }

    /// Purge these msg_ids.
    pub fn purge_ids(&mut self, ids: &[String]) {
        let gone: HashSet<&str> = ids.iter().map(String::as_str).collect();
        let c = &mut self.completed;
        let counts = &mut c.counts;
        c.order.retain(|(m, e)| {
            let purge = gone.contains(&**m);
            if let (true, Some(e)) = (purge, e) {
                if let Some(n) = counts.get_mut(e) {
                    *n = n.saturating_sub(1);
                }
            }
            !purge
        });
        for m in ids {
            c.set.remove(m.as_str());
        }
    }

    /// Purge what engine `eid` completed.
    pub fn purge_engine(&mut self, eid: u32) {
        let c = &mut self.completed;
        let set = &mut c.set;
        c.order.retain(|(m, e)| {
            let purge = *e == Some(eid);
            if purge {
                set.remove(m);
            }
            !purge
        });
        c.counts.remove(&eid);
    }

    /// Client `session` sends on `sock` from routing id `ident` now.
    pub fn learn_route(&mut self, sock: Sock, session: &str, ident: &[u8]) {
        if let Some(r) = self.routes.get_mut(&sock).and_then(|m| m.get_mut(session)) {
            if r.as_slice() != ident {
                *r = ident.to_vec();
            }
            return;
        }
        if self.routes_len() >= ROUTES_KEPT * 2 {
            self.routes.clear();
        }
        self.routes
            .entry(sock)
            .or_default()
            .insert(session.to_string(), ident.to_vec());
    }

    /// The routing id client `session` uses on `sock` now, if it sent anything there.
    pub fn route(&self, sock: Sock, session: &str) -> Option<&[u8]> {
        self.routes
            .get(&sock)
            .and_then(|m| m.get(session))
            .map(Vec::as_slice)
    }

    /// Routes kept, all sockets together.
    fn routes_len(&self) -> usize {
        self.routes.values().map(HashMap::len).sum()
    }

    /// Entries held, for the bounded-memory tests.
    #[cfg(test)]
    pub fn size(&self) -> usize {
        self.mux_pending.values().map(HashSet::len).sum::<usize>()
            + self.tasks_on.values().map(IdSet::len).sum::<usize>()
            + self.task_engine.len()
            + self.unassigned.len()
            + self.pending.len()
            + self.completed.order.len()
            + self.completed.set.len()
            + self.completed.counts.len()
            + self.routes_len()
    }
}
