//! The open-file limit (`RLIMIT_NOFILE`) of a process that holds many connections.
//!
//! Every engine costs the controller six (rpar-engine rank) to eight (Python ipengine) TCP
//! connections, and rank 0 of an `rpar-engine` job about fourteen descriptors per rank (the
//! compat transport's sockets, each with its own ZeroMQ signalling pair, and their
//! connections). Login and compute nodes often keep the soft limit at 1024, which is reached
//! near 120-160 engines at the controller and 70 ranks at rank 0, and ZeroMQ fails such connections silently in its I/O thread (it retries forever):
//! engines that never register and no error anywhere. So both programs raise the soft limit
//! towards the hard one at start-up, as a user would with `ulimit -n`, and say clearly when even
//! the hard limit is too low.

// `rlim_t` is not u64 on every target, so the casts below are needed somewhere.
#![allow(clippy::unnecessary_cast)]

use thiserror::Error;

/// The limit before and after [`raise_to`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NoFile {
    /// The soft limit found at start-up.
    pub was: u64,
    /// The soft limit now.
    pub soft: u64,
    /// The hard limit (the most `soft` can be raised to without privileges).
    pub hard: u64,
}

/// The limit could not be read or raised far enough.
#[derive(Debug, Error)]
pub enum FdLimitError {
    #[error("reading the open-file limit (RLIMIT_NOFILE): {0}")]
    Get(std::io::Error),
    #[error("raising the open-file limit to {want}: {err}")]
    Set { want: u64, err: std::io::Error },
    #[error(
        "{what} needs about {need} open files but the hard limit (ulimit -Hn) is {hard}: \
         raise it (limits.conf `nofile`, or `ulimit -n {need}` where the hard limit allows) \
         or use fewer {unit}"
    )]
    TooLow {
        what: String,
        unit: &'static str,
        need: u64,
        hard: u64,
    },
}

fn get() -> Result<libc::rlimit, FdLimitError> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `lim` is a valid, writable rlimit for the duration of the call.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return Err(FdLimitError::Get(std::io::Error::last_os_error()));
    }
    Ok(lim)
}

/// The current soft and hard limits.
pub fn current() -> Result<NoFile, FdLimitError> {
    let lim = get()?;
    Ok(NoFile {
        was: lim.rlim_cur as u64,
        soft: lim.rlim_cur as u64,
        hard: lim.rlim_max as u64,
    })
}

/// Raise the soft limit to at least `need` (never lowering it). Fails, changing nothing, when
/// the hard limit is below `need`; `what` and `unit` name the need in that error ("rank 0 of a
/// job of 512 ranks", "ranks per job").
pub fn raise_to(need: u64, what: &str, unit: &'static str) -> Result<NoFile, FdLimitError> {
    let mut lim = get()?;
    let was = lim.rlim_cur as u64;
    let hard = lim.rlim_max as u64;
    if was >= need {
        return Ok(NoFile {
            was,
            soft: was,
            hard,
        });
    }
    if hard < need {
        return Err(FdLimitError::TooLow {
            what: what.to_string(),
            unit,
            need,
            hard,
        });
    }
    lim.rlim_cur = need as libc::rlim_t;
    // SAFETY: `lim` is a valid rlimit with rlim_cur <= rlim_max.
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lim) } != 0 {
        return Err(FdLimitError::Set {
            want: need,
            err: std::io::Error::last_os_error(),
        });
    }
    Ok(NoFile {
        was,
        soft: need,
        hard,
    })
}

/// Raise the soft limit to the hard one (a server that cannot know how many peers will come).
pub fn raise_to_hard() -> Result<NoFile, FdLimitError> {
    let hard = get()?.rlim_max as u64;
    // a hard limit of "unlimited" cannot be the soft one on Linux (it is capped by nr_open)
    let want = hard.min(1 << 20);
    match raise_to(want, "", "") {
        Ok(l) => Ok(l),
        // nr_open below 2^20: keep what we have
        Err(FdLimitError::Set { .. }) => current(),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn raising_is_never_lowering_and_too_low_names_the_fix() {
        let now = current().unwrap();
        // asking for less than we have changes nothing
        let same = raise_to(now.soft.min(16), "x", "ranks").unwrap();
        assert_eq!(same.soft, now.soft);
        // asking for more than the hard limit fails and says what to do
        let over = now.hard.saturating_add(1);
        if now.hard < u64::MAX {
            let err = raise_to(over, "rank 0 of a job of 9 ranks", "ranks per job").unwrap_err();
            let text = err.to_string();
            assert!(text.contains("ulimit -Hn"), "{text}");
            assert!(text.contains(&over.to_string()), "{text}");
            assert!(text.contains("ranks per job"), "{text}");
            assert_eq!(current().unwrap().soft, now.soft);
        }
    }
}
