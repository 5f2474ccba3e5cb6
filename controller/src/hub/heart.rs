//! Heartbeat bookkeeping (the HeartMonitor), sans-I/O.
//!
//! Every period the controller publishes one frame (a token) on the `hb_ping` PUB socket; each
//! engine's heart echoes it to the `hb_pong` ROUTER, which sees `[uuid, token]`. A pong with the
//! current or the previous token counts. An engine that misses more than `max_misses`
//! consecutive beats is reported dead.
//!
//! Better than ipyparallel where the client cannot tell: a pending engine becomes registered on
//! its *first* pong, not at the next beat; while any registration is pending the current token
//! is re-published every `fast_ping` so that a new engine's first pong comes within about that
//! interval of its heart connecting.

use std::collections::{HashMap, HashSet, VecDeque};
use std::time::{Duration, Instant};

/// What a pong meant.
#[derive(Debug, PartialEq, Eq)]
pub enum Pong {
    /// From a heart we know or await; counts as alive.
    Alive,
    /// Wrong token (too old or garbage).
    Stale,
}

#[derive(Debug)]
pub struct Heart {
    pub period: Duration,
    pub max_misses: u32,
    pub fast_ping: Duration,
    start: Instant,
    token: Vec<u8>,
    next_beat: Instant,
    next_fast: Option<Instant>,
    responded: HashSet<Vec<u8>>,
    misses: HashMap<Vec<u8>, u32>,
    /// The last [`RECENT`] tokens sent, the current one last (the one before it is the
    /// "previous" ping whose pong still counts; older ones serve [`Heart::issued`]).
    recent: VecDeque<Vec<u8>>,
}

/// How many past tokens [`Heart::issued`] knows.
const RECENT: usize = 64;

impl Heart {
    pub fn new(period: Duration, max_misses: u32, now: Instant) -> Heart {
        Heart {
            period,
            max_misses,
            fast_ping: Duration::from_millis(50).min(period),
            start: now,
            token: b"0.0".to_vec(),
            next_beat: now,
            next_fast: None,
            responded: HashSet::new(),
            misses: HashMap::new(),
            recent: VecDeque::new(),
        }
    }

    /// The token of the current beat.
    pub fn token(&self) -> &[u8] {
        &self.token
    }

    /// Start watching a heart (a registered engine).
    pub fn track(&mut self, uuid: &[u8]) {
        self.misses.insert(uuid.to_vec(), 0);
    }

    /// Stop watching a heart.
    pub fn forget(&mut self, uuid: &[u8]) {
        self.misses.remove(uuid);
        self.responded.remove(uuid);
    }

    /// Registrations are pending: ping fast until they are not.
    pub fn set_pending(&mut self, pending: bool, now: Instant) {
        if pending {
            if self.next_fast.is_none() {
                self.next_fast = Some(now);
            }
        } else {
            self.next_fast = None;
        }
    }

    /// A pong arrived from `uuid` carrying `token`.
    pub fn pong(&mut self, uuid: &[u8], token: &[u8]) -> Pong {
        let prev = self.recent.iter().rev().nth(1);
        if token == self.token.as_slice() || prev.is_some_and(|p| p.as_slice() == token) {
            if let Some(m) = self.misses.get_mut(uuid) {
                *m = 0;
            }
            self.responded.insert(uuid.to_vec());
            Pong::Alive
        } else {
            Pong::Stale
        }
    }

    /// Whether `token` is one of the recent pings (a late echo, not garbage).
    pub fn issued(&self, token: &[u8]) -> bool {
        self.recent.iter().any(|t| t.as_slice() == token)
    }

    /// When the loop must call [`Heart::tick`] next.
    pub fn next_deadline(&self) -> Instant {
        match self.next_fast {
            Some(f) if f < self.next_beat => f,
            _ => self.next_beat,
        }
    }

    /// Run due beats. Returns the ping frames to publish and the hearts declared dead.
    pub fn tick(&mut self, now: Instant) -> (Vec<Vec<u8>>, Vec<Vec<u8>>) {
        let mut pings = Vec::new();
        let mut dead = Vec::new();
        if now >= self.next_beat {
            for (uuid, m) in self.misses.iter_mut() {
                if !self.responded.contains(uuid) {
                    *m += 1;
                }
            }
            let mut gone: Vec<Vec<u8>> = self
                .misses
                .iter()
                .filter(|(_, m)| **m > self.max_misses)
                .map(|(u, _)| u.clone())
                .collect();
            gone.sort();
            for u in &gone {
                self.misses.remove(u);
            }
            dead = gone;
            self.responded.clear();
            self.token =
                format!("{:.6}", now.duration_since(self.start).as_secs_f64()).into_bytes();
            pings.push(self.token.clone());
            if self.recent.len() >= RECENT {
                self.recent.pop_front();
            }
            self.recent.push_back(self.token.clone());
            self.next_beat = now + self.period;
            // a beat also serves as a fast ping
            if let Some(f) = self.next_fast.as_mut() {
                *f = now + self.fast_ping;
            }
        } else if let Some(f) = self.next_fast {
            if now >= f {
                pings.push(self.token.clone());
                self.next_fast = Some(now + self.fast_ping);
            }
        }
        (pings, dead)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn silent_heart_dies_after_max_misses_plus_one() {
        let t0 = Instant::now();
        let p = Duration::from_millis(100);
        let mut h = Heart::new(p, 2, t0);
        h.track(b"e");
        let (pings, dead) = h.tick(t0);
        assert_eq!(pings.len(), 1);
        assert!(dead.is_empty()); // first beat: a miss already counts (1)
        let (_, dead) = h.tick(t0 + p);
        assert!(dead.is_empty()); // 2 misses
        let (_, dead) = h.tick(t0 + p * 2);
        assert_eq!(dead, vec![b"e".to_vec()]); // 3 > 2
    }

    #[test]
    fn answering_heart_stays_alive() {
        let t0 = Instant::now();
        let p = Duration::from_millis(100);
        let mut h = Heart::new(p, 1, t0);
        h.track(b"e");
        for i in 0..10u32 {
            let (pings, dead) = h.tick(t0 + p * i);
            assert!(dead.is_empty(), "beat {i}");
            assert_eq!(h.pong(b"e", &pings[0]), Pong::Alive);
        }
    }

    #[test]
    fn previous_token_counts_and_garbage_does_not() {
        let t0 = Instant::now();
        let p = Duration::from_millis(100);
        let mut h = Heart::new(p, 3, t0);
        let (a, _) = h.tick(t0);
        let (_b, _) = h.tick(t0 + p);
        assert_eq!(h.pong(b"x", &a[0]), Pong::Alive);
        assert_eq!(h.pong(b"x", b"nonsense"), Pong::Stale);
        let (_c, _) = h.tick(t0 + p * 2);
        assert_eq!(h.pong(b"x", &a[0]), Pong::Stale);
    }

    #[test]
    fn fast_pings_while_pending() {
        let t0 = Instant::now();
        let mut h = Heart::new(Duration::from_secs(3), 10, t0);
        let (first, _) = h.tick(t0);
        h.set_pending(true, t0);
        let at = h.next_deadline();
        assert!(at <= t0 + Duration::from_millis(50));
        let (pings, _) = h.tick(t0 + Duration::from_millis(50));
        assert_eq!(pings, first); // same token re-sent
        h.set_pending(false, t0);
        assert_eq!(h.next_deadline(), t0 + Duration::from_secs(3));
    }
}
