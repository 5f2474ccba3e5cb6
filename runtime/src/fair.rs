//! Fairness on rank 0, sans I/O: how much of one source a pass of the loop takes in.
//!
//! Rank 0 reads from the controller (compat: every engine's shell and control socket; native:
//! the job connection) and from the ranks (MPI). Without a bound, a rank that floods (a loop
//! printing, a stream of results) or a burst of requests keeps the loop in one read loop: the
//! controller's pings and the other ranks' replies wait behind it, and an engine that answers
//! no heartbeat is dropped. So each pass takes at most [`PER_RANK`] messages of one rank
//! from each side and at most [`PER_PASS`] in all from each side; a source at its bound is not
//! read again in that pass. Nothing is dropped: what is not read stays queued where it is
//! (ZeroMQ's socket queue, MPI's unexpected-message queue) and the next pass, which starts at
//! once, reads it. The ZeroMQ sockets are read in turn, one message each (round robin), so
//! a busy engine's socket takes its turn like every other.

use crate::relay::Rank;

/// The most messages of one rank taken in one pass, from one side.
pub const PER_RANK: u32 = 64;
/// The most messages taken in one pass, from one side (then the other side's turn comes).
pub const PER_PASS: u32 = 1024;

/// What one pass has taken from one side.
#[derive(Debug)]
pub struct Quota {
    per_rank: u32,
    per_pass: u32,
    taken: Vec<u32>,
    /// Ranks with a count, to reset only those.
    touched: Vec<usize>,
    total: u32,
}

impl Quota {
    pub fn new(size: u32) -> Quota {
        Quota::with_bounds(size, PER_RANK, PER_PASS)
    }

    pub fn with_bounds(size: u32, per_rank: u32, per_pass: u32) -> Quota {
        Quota {
            per_rank: per_rank.max(1),
            per_pass: per_pass.max(1),
            taken: vec![0; usize::try_from(size).unwrap_or(0)],
            touched: Vec::new(),
            total: 0,
        }
    }

    /// A new pass.
    pub fn reset(&mut self) {
        for r in self.touched.drain(..) {
            if let Some(t) = self.taken.get_mut(r) {
                *t = 0;
            }
        }
        self.total = 0;
    }

    /// Whether the pass is full (read nothing more from this side).
    pub fn full(&self) -> bool {
        self.total >= self.per_pass
    }

    /// Whether one more message of `rank` may be read in this pass.
    pub fn open(&self, rank: Rank) -> bool {
        !self.full()
            && !matches!(
                usize::try_from(rank.0).ok().and_then(|r| self.taken.get(r)),
                Some(t) if *t >= self.per_rank
            )
    }

    /// Count a message of `rank` (or of no rank: `None`, a ping); returns whether `rank` may
    /// still be read in this pass.
    pub fn take(&mut self, rank: Option<Rank>) -> bool {
        self.total = self.total.saturating_add(1);
        let Some(rank) = rank else {
            return !self.full();
        };
        if let Ok(r) = usize::try_from(rank.0) {
            if let Some(t) = self.taken.get_mut(r) {
                if *t == 0 {
                    self.touched.push(r);
                }
                *t = t.saturating_add(1);
            }
        }
        self.open(rank)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_rank_at_its_bound_is_closed_until_the_next_pass() {
        let mut q = Quota::with_bounds(4, 3, 100);
        assert!(q.take(Some(Rank(2))));
        assert!(q.take(Some(Rank(2))));
        assert!(!q.take(Some(Rank(2))), "third of three");
        assert!(!q.open(Rank(2)));
        // the others are still open
        assert!(q.open(Rank(1)) && q.take(Some(Rank(1))));
        q.reset();
        assert!(q.open(Rank(2)));
        assert!(q.take(Some(Rank(2))));
    }

    #[test]
    fn the_pass_bound_closes_every_rank_and_pings_count() {
        let mut q = Quota::with_bounds(4, 100, 5);
        for i in 0..4u32 {
            assert!(q.take(Some(Rank(i))));
        }
        assert!(!q.take(None), "the fifth message fills the pass");
        assert!(q.full());
        assert!((0..4).all(|r| !q.open(Rank(r))));
        q.reset();
        assert!(!q.full() && q.open(Rank(0)));
    }

    #[test]
    fn ranks_outside_the_job_do_not_panic() {
        let mut q = Quota::with_bounds(2, 1, 10);
        assert!(q.take(Some(Rank(99))));
        assert!(q.open(Rank(u32::MAX)));
        q.reset();
    }

    #[test]
    fn one_flooding_rank_leaves_room_for_the_others() {
        // a pass over a flood of rank 1 and one message each of ranks 0, 2, 3, read in turn
        let mut q = Quota::new(4);
        let mut taken = [0u32; 4];
        let mut queued = [1u32, 100_000, 1, 1];
        let mut progress = true;
        while progress {
            progress = false;
            for r in 0..4 {
                if queued[r] > 0 && q.open(Rank(r as u32)) {
                    queued[r] -= 1;
                    taken[r] += 1;
                    q.take(Some(Rank(r as u32)));
                    progress = true;
                }
            }
        }
        assert_eq!(taken, [1, PER_RANK, 1, 1]);
    }
}
