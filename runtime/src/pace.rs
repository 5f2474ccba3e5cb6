//! Adaptive MPI polling: how long a runtime loop may wait before it probes MPI again.
//!
//! MPI gives no descriptor to wait on, and a blocking receive spins a core, so the loops probe
//! (`MPI_Improbe`) between waits on their descriptors. The wait is the trade: too long and a
//! relayed engine answers late, too short and an idle rank burns CPU. The rule, from what the
//! loop saw (time is passed in, so this is a plain unit test):
//! * traffic in this pass: look again at once;
//! * a doorbell rang but its message is not visible yet, or a send is in flight (MPI progresses
//!   a rendezvous only inside MPI calls): nap [`SPIN`] and probe again ([`STUCK_NAP`] once
//!   nothing has moved for a while);
//! * every peer can ring this rank and nothing is owed: sleep on the descriptors up to
//!   [`IDLE_MS`] (a ring wakes the loop);
//! * otherwise (a peer on another node, the timed fallback): nap briefly right after traffic,
//!   when the next message is most likely (a client's next request, an engine's reply), and
//!   back off step by step as the rank stays idle: [`STEPS`], then [`LAST_NAP`]. Heartbeats
//!   do not count as traffic here (the loops pass the time of the last other message): they
//!   come every period and predict nothing, and counting them kept idle ranks napping short.
//!
//! A nap shorter than a millisecond needs a timer that fires on time: [`fine_timer_slack`]
//! lowers the calling thread's timer slack (Linux' default of 50 µs would double a 20 µs nap).

use std::time::Duration;

/// The longest sleep of a runtime loop that is woken by descriptors (signals, heartbeat timeouts
/// and exit checks run at least this often).
pub const IDLE_MS: i32 = 200;

/// The nap while a message is owed or a send is in flight, right after traffic.
pub const SPIN: Duration = Duration::from_micros(20);

/// The nap while a send stays in flight after that.
pub const STUCK_NAP: Duration = Duration::from_millis(1);

/// The timed fallback: (idle for less than this, nap this long), in order; past the last step
/// the nap is [`LAST_NAP`].
pub const STEPS: [(Duration, Duration); 4] = [
    (Duration::from_millis(5), Duration::from_micros(20)),
    (Duration::from_millis(50), Duration::from_micros(200)),
    (Duration::from_millis(300), Duration::from_millis(1)),
    (Duration::from_secs(1), Duration::from_millis(5)),
];

/// The fallback's nap once a rank has been idle for longer than the last of [`STEPS`].
pub const LAST_NAP: Duration = Duration::from_millis(20);

/// What a loop knows about its link at the end of a pass.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct LinkState {
    /// Every peer this rank hears from can ring its doorbell.
    pub rung_by_all: bool,
    /// Sends are in flight.
    pub sending: bool,
    /// A ring arrived whose message has not been received yet (and is not stale).
    pub owed: bool,
}

/// How long to wait before the next pass.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wait {
    /// Probe again at once.
    Now,
    /// Nap this long (shorter than a millisecond, or an MPI-only wait), then probe.
    Nap(Duration),
    /// Wait on the descriptors up to this many milliseconds, then probe.
    Block(i32),
}

/// The wait after a pass that moved a message (`active`) or not, `idle` after the last one.
pub fn wait(link: LinkState, active: bool, idle: Duration) -> Wait {
    if active {
        return Wait::Now;
    }
    if link.owed || link.sending {
        // a send that stays in flight (a slow or stuck peer) is not worth a spinning core
        return Wait::Nap(if idle < STEPS[0].0 { SPIN } else { STUCK_NAP });
    }
    if link.rung_by_all {
        return Wait::Block(IDLE_MS);
    }
    let nap = STEPS
        .iter()
        .find(|(below, _)| idle < *below)
        .map_or(LAST_NAP, |(_, nap)| *nap);
    Wait::Nap(nap)
}

/// Let this thread's short sleeps end on time (the timer slack is per thread).
pub fn fine_timer_slack() {
    // SAFETY: PR_SET_TIMERSLACK only sets an attribute of the calling thread.
    unsafe {
        libc::prctl(libc::PR_SET_TIMERSLACK, 1000 as libc::c_ulong);
    }
}

/// `poll` with a timeout in microseconds (`ppoll`); returns as `poll` does.
pub fn poll_for(fds: &mut [libc::pollfd], wait: Wait) -> libc::c_int {
    let d = match wait {
        Wait::Now => Duration::ZERO,
        Wait::Nap(d) => d,
        Wait::Block(ms) => Duration::from_millis(u64::try_from(ms).unwrap_or(0)),
    };
    let ts = libc::timespec {
        tv_sec: libc::time_t::try_from(d.as_secs()).unwrap_or(libc::time_t::MAX),
        tv_nsec: libc::c_long::from(d.subsec_nanos() as i32),
    };
    let n = libc::nfds_t::try_from(fds.len()).unwrap_or(0);
    // SAFETY: `fds` is a live array of `n` pollfds and `ts` a valid timespec for the call.
    unsafe { libc::ppoll(fds.as_mut_ptr(), n, &ts, std::ptr::null()) }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn traffic_means_look_again_at_once() {
        for rung_by_all in [false, true] {
            let s = LinkState {
                rung_by_all,
                sending: true,
                owed: true,
            };
            assert_eq!(wait(s, true, Duration::ZERO), Wait::Now);
        }
    }

    #[test]
    fn doorbells_let_an_idle_rank_sleep_on_its_descriptors() {
        let s = LinkState {
            rung_by_all: true,
            ..Default::default()
        };
        assert_eq!(wait(s, false, Duration::ZERO), Wait::Block(IDLE_MS));
        assert_eq!(wait(s, false, 100 * MS), Wait::Block(IDLE_MS));
    }

    #[test]
    fn an_owed_ring_or_a_send_in_flight_is_probed_soon() {
        for (sending, owed) in [(true, false), (false, true), (true, true)] {
            for rung_by_all in [false, true] {
                let s = LinkState {
                    rung_by_all,
                    sending,
                    owed,
                };
                assert_eq!(wait(s, false, Duration::ZERO), Wait::Nap(SPIN));
                assert_eq!(wait(s, false, 10 * MS * 1000), Wait::Nap(STUCK_NAP));
            }
        }
    }

    #[test]
    fn the_fallback_naps_briefly_after_traffic_and_backs_off_when_idle() {
        let s = LinkState::default();
        let naps: Vec<Duration> = [0, 4, 6, 49, 51, 299, 301, 999, 1001, 60_000]
            .into_iter()
            .map(|ms| match wait(s, false, ms * MS) {
                Wait::Nap(d) => d,
                w => panic!("{w:?}"),
            })
            .collect();
        assert!(naps.windows(2).all(|w| w[0] <= w[1]), "{naps:?}");
        assert!(naps[0] <= Duration::from_micros(50), "{naps:?}");
        assert_eq!(*naps.last().unwrap(), LAST_NAP);
        // an idle rank wakes at most 1/LAST_NAP times a second
        assert!(LAST_NAP >= 10 * MS);
    }

    #[test]
    fn poll_for_sees_a_readable_descriptor() {
        fine_timer_slack();
        let (a, b) = std::os::unix::net::UnixDatagram::pair().unwrap();
        let fd = std::os::fd::AsRawFd::as_raw_fd(&b);
        let mut fds = [libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        }];
        assert_eq!(poll_for(&mut fds, Wait::Nap(SPIN)), 0);
        a.send(b"!").unwrap();
        assert_eq!(poll_for(&mut fds, Wait::Block(IDLE_MS)), 1);
        assert_ne!(fds[0].revents & libc::POLLIN, 0);
    }
}
