//! The job's lifecycle policy on rank 0, for both transports, sans I/O: events in (a ping
//! from the controller, a rank's heartbeat echo, a signal, the controller shutting down, every
//! engine done or one fatal, a tick), [`Action`]s out, time passed in.
//!
//! * Controller gone: no ping for `miss_limit` → exit (code 1). After two periods without a
//!   ping the loop says `Hello`, so that a restarted controller, which does not know the job,
//!   asks it to register again.
//! * Per-rank liveness over MPI: every controller ping is relayed to the ranks, whose runtime
//!   threads echo it (not Python: a long GIL-holding task is no death). A rank whose last echo
//!   is older than `rank_limit` while pings kept going out is lost: the whole job is
//!   unregistered and exits (MPI semantics: a job with a dead rank is broken).
//! * SIGTERM/SIGHUP (mpiexec tearing the job down) → unregister everything, exit 128 + signal.
//! * The controller shutting down → exit 0.
//!
//! * Every engine shut down (each answered a `shutdown_request` and said `Life::Done`) → exit
//!   0; a rank's `Life::Fatal` → exit 1 (the broker counts these).
//!
//! Each exit is decided once; the I/O loop carries it out (unregister, send `Life::Exit` to
//! ranks >= 1, which stop at once, stop Python). What differs between the transports is in
//! [`Policy`]: in compat every engine's own heartbeat goes to the controller, which judges each
//! engine itself, so the core neither watches ranks' echoes nor says `Hello`.

use crate::relay::Rank;
use rpar_core::native::Departure;
use std::time::{Duration, Instant};

/// What the loop must do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Send `Hello` on the job connection.
    Hello,
    /// Unregister every engine (for this reason) and exit the job with this code.
    Exit(i32, Departure),
}

/// Which parts of the policy apply to a transport.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Policy {
    /// Watch each rank's echo of the job's ping; a silent rank takes the job down.
    pub rank_liveness: bool,
    /// Say `Hello` to a controller silent for two periods.
    pub hello: bool,
}

impl Policy {
    /// One job connection, one heartbeat (the native transport).
    pub const NATIVE: Policy = Policy {
        rank_liveness: true,
        hello: true,
    };
    /// Every engine's own sockets and heartbeat (the compat transport).
    pub const COMPAT: Policy = Policy {
        rank_liveness: false,
        hello: false,
    };
}

/// Rank 0's job state.
#[derive(Debug)]
pub struct JobCore {
    policy: Policy,
    period: Duration,
    miss_limit: Option<Duration>,
    rank_limit: Duration,
    last_ping: Instant,
    last_hello: Instant,
    last_echo: Vec<Instant>,
    /// When a ping was last relayed to each rank (none yet, or it finished: never).
    last_relay: Vec<Option<Instant>>,
    exiting: bool,
}

impl JobCore {
    /// `max_misses` = 0: never decide the controller is gone.
    pub fn new(
        policy: Policy,
        size: u32,
        hb_period: Duration,
        max_misses: u32,
        now: Instant,
    ) -> JobCore {
        let beat = hb_period + Duration::from_millis(500);
        // compat watches no rank: no table
        let ranks = if policy.rank_liveness {
            usize::try_from(size).unwrap_or(0)
        } else {
            0
        };
        JobCore {
            policy,
            period: hb_period,
            miss_limit: (max_misses > 0).then(|| beat * max_misses),
            rank_limit: beat * max_misses.clamp(10, 50),
            last_ping: now,
            last_hello: now,
            last_echo: vec![now; ranks],
            last_relay: vec![None; ranks],
            exiting: false,
        }
    }

    fn exit(&mut self, code: i32, why: Departure) -> Option<Action> {
        if self.exiting {
            return None;
        }
        self.exiting = true;
        Some(Action::Exit(code, why))
    }

    /// The controller pinged.
    pub fn on_ping(&mut self, now: Instant) {
        self.last_ping = now;
    }

    /// The ping went on to `rank` (a rank that finished gets none, and is never lost).
    pub fn on_relay(&mut self, rank: Rank, now: Instant) {
        if let Some(t) = usize::try_from(rank.0)
            .ok()
            .and_then(|r| self.last_relay.get_mut(r))
        {
            *t = Some(now);
        }
    }

    /// A rank echoed a ping.
    pub fn on_echo(&mut self, rank: Rank, now: Instant) {
        if let Some(t) = usize::try_from(rank.0)
            .ok()
            .and_then(|r| self.last_echo.get_mut(r))
        {
            *t = now;
        }
    }

    pub fn on_signal(&mut self, sig: i32) -> Option<Action> {
        self.exit(128 + sig, Departure::Signal(sig))
    }

    pub fn on_controller_shutdown(&mut self) -> Option<Action> {
        self.exit(0, Departure::Shutdown)
    }

    /// Every engine shut down (or one failed fatally): exit with `code`.
    pub fn on_all_done(&mut self, code: i32) -> Option<Action> {
        let why = if code == 0 {
            Departure::Shutdown
        } else {
            Departure::Exit(code)
        };
        self.exit(code, why)
    }

    /// Timers.
    pub fn on_tick(&mut self, now: Instant) -> Option<Action> {
        if self.exiting {
            return None;
        }
        let silent = now.saturating_duration_since(self.last_ping);
        if self.miss_limit.is_some_and(|l| silent > l) {
            return self.exit(1, Departure::ControllerGone);
        }
        let lost = self
            .last_echo
            .iter()
            .zip(&self.last_relay)
            .enumerate()
            .find_map(|(r, (echo, relay))| {
                let gap = relay.as_ref()?.saturating_duration_since(*echo);
                (gap > self.rank_limit).then_some((r, gap))
            });
        if let Some((r, gap)) = lost {
            let rank = u32::try_from(r).unwrap_or(u32::MAX);
            let reason = format!("no heartbeat over MPI for {:.1}s", gap.as_secs_f64());
            return self.exit(1, Departure::RankLost { rank, reason });
        }
        if self.policy.hello
            && silent > self.period * 2
            && now.saturating_duration_since(self.last_hello) > self.period
        {
            self.last_hello = now;
            return Some(Action::Hello);
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const P: Duration = Duration::from_millis(1000);

    fn core(size: u32, misses: u32, t0: Instant) -> JobCore {
        JobCore::new(Policy::NATIVE, size, P, misses, t0)
    }

    fn compat(size: u32, misses: u32, t0: Instant) -> JobCore {
        JobCore::new(Policy::COMPAT, size, P, misses, t0)
    }

    #[test]
    fn compat_controller_gone_after_the_miss_limit_without_hellos() {
        let t0 = Instant::now();
        let mut j = compat(4, 4, t0);
        // pings keep it going
        for i in 1..20u32 {
            j.on_ping(t0 + P * i);
            assert_eq!(j.on_tick(t0 + P * i), None);
        }
        let last = t0 + P * 19;
        // no hello in compat, even after many silent periods
        assert_eq!(j.on_tick(last + P * 3), None);
        assert_eq!(j.on_tick(last + P * 5), None);
        assert_eq!(
            j.on_tick(last + Duration::from_millis(6100)),
            Some(Action::Exit(1, Departure::ControllerGone))
        );
        assert_eq!(j.on_tick(last + P * 100), None, "decided once");
        let mut j = compat(4, 0, t0);
        assert_eq!(j.on_tick(t0 + P * 10_000), None, "0 misses: never gone");
    }

    #[test]
    fn compat_ranks_are_judged_by_the_controller_not_the_core() {
        let t0 = Instant::now();
        let mut j = compat(3, 10, t0);
        for i in 1..=100u32 {
            let now = t0 + P * i;
            j.on_ping(now);
            // pings relayed, no rank ever echoes to the core (its echo goes to the controller)
            for r in 0..3 {
                j.on_relay(Rank(r), now);
            }
            assert_eq!(j.on_tick(now), None, "beat {i}");
        }
    }

    #[test]
    fn compat_signal_done_and_fatal_exit_once_with_their_codes() {
        let t0 = Instant::now();
        let mut j = compat(2, 10, t0);
        assert_eq!(
            j.on_signal(1),
            Some(Action::Exit(129, Departure::Signal(1)))
        );
        assert_eq!(j.on_all_done(0), None);
        let mut j = compat(2, 10, t0);
        assert_eq!(j.on_all_done(0), Some(Action::Exit(0, Departure::Shutdown)));
        assert_eq!(j.on_signal(15), None);
        let mut j = compat(2, 10, t0);
        assert_eq!(j.on_all_done(1), Some(Action::Exit(1, Departure::Exit(1))));
        assert_eq!(j.on_tick(t0 + P * 1000), None);
    }

    #[test]
    fn a_pinged_job_with_answering_ranks_keeps_going() {
        let t0 = Instant::now();
        let mut j = core(3, 10, t0);
        for i in 1..100u32 {
            let now = t0 + P * i;
            j.on_ping(now);
            for r in 0..3 {
                j.on_relay(Rank(r), now);
                j.on_echo(Rank(r), now);
            }
            assert_eq!(j.on_tick(now), None, "beat {i}");
        }
    }

    #[test]
    fn controller_gone_after_the_miss_limit_with_hellos_before() {
        let t0 = Instant::now();
        let mut j = core(2, 4, t0);
        // 1.5 s beats, 4 misses: 6 s
        assert_eq!(j.on_tick(t0 + P), None);
        assert_eq!(j.on_tick(t0 + P * 3), Some(Action::Hello));
        assert_eq!(j.on_tick(t0 + P * 3), None, "one hello per period");
        assert_eq!(j.on_tick(t0 + P * 5), Some(Action::Hello));
        assert_eq!(
            j.on_tick(t0 + Duration::from_millis(6100)),
            Some(Action::Exit(1, Departure::ControllerGone))
        );
        assert_eq!(j.on_tick(t0 + P * 9), None, "decided once");
        // with 0 misses configured the controller is never declared gone
        let mut j = core(2, 0, t0);
        assert_ne!(
            j.on_tick(t0 + P * 1000),
            Some(Action::Exit(1, Departure::ControllerGone))
        );
    }

    #[test]
    fn a_silent_rank_takes_the_job_down_a_busy_one_does_not() {
        let t0 = Instant::now();
        let mut j = core(3, 10, t0);
        // rank limit: 10 beats of 1.5 s = 15 s
        for i in 1..=20u32 {
            let now = t0 + P * i;
            j.on_ping(now);
            for r in 0..3 {
                j.on_relay(Rank(r), now);
            }
            j.on_echo(Rank(0), now);
            j.on_echo(Rank(1), now);
            let a = j.on_tick(now);
            if i <= 15 {
                assert_eq!(a, None, "beat {i}");
            } else {
                assert_eq!(
                    a,
                    Some(Action::Exit(
                        1,
                        Departure::RankLost {
                            rank: 2,
                            reason: "no heartbeat over MPI for 16.0s".into()
                        }
                    ))
                );
                break;
            }
        }
    }

    #[test]
    fn no_pings_no_rank_verdicts_and_finished_ranks_are_not_lost() {
        let t0 = Instant::now();
        let mut j = core(2, 0, t0);
        // without pings nobody is expected to echo
        assert_eq!(j.on_tick(t0 + P * 100), Some(Action::Hello));
        let mut j = core(2, 10, t0);
        for i in 1..=30u32 {
            let now = t0 + P * i;
            j.on_ping(now);
            // rank 1 finished: the broker relays no more pings to it
            j.on_relay(Rank(0), now);
            j.on_echo(Rank(0), now);
            assert_eq!(j.on_tick(now), None);
        }
    }

    #[test]
    fn signal_shutdown_and_done_exit_once_with_their_codes() {
        let t0 = Instant::now();
        let mut j = core(1, 10, t0);
        assert_eq!(
            j.on_signal(15),
            Some(Action::Exit(143, Departure::Signal(15)))
        );
        assert_eq!(j.on_controller_shutdown(), None);
        assert_eq!(j.on_tick(t0 + P * 1000), None);
        let mut j = core(1, 10, t0);
        assert_eq!(
            j.on_controller_shutdown(),
            Some(Action::Exit(0, Departure::Shutdown))
        );
        let mut j = core(1, 10, t0);
        assert_eq!(j.on_all_done(0), Some(Action::Exit(0, Departure::Shutdown)));
        let mut j = core(1, 10, t0);
        assert_eq!(j.on_all_done(1), Some(Action::Exit(1, Departure::Exit(1))));
    }
}
