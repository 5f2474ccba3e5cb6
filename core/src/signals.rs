//! Signal flags: the one owner of "a stopping signal arrived" in each rpar program.
//!
//! The handler only records the signal number in an atomic (async-signal-safe); the programs'
//! loops ask [`received`] and shut down in order themselves. The controller installs it without
//! `SA_RESTART`, so its blocking `poll` returns at once; the engine runtime and `rpar` with it,
//! so MPI calls and child-process waits are not interrupted.

use std::sync::atomic::{AtomicI32, Ordering};

/// The last stopping signal received (0: none).
static RECEIVED: AtomicI32 = AtomicI32::new(0);

extern "C" fn record(sig: libc::c_int) {
    RECEIVED.store(sig, Ordering::SeqCst);
}

/// Whether system calls interrupted by the signal resume (`SA_RESTART`) or fail with `EINTR`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Restart {
    Yes,
    No,
}

/// Record `signals` (e.g. `[libc::SIGINT, libc::SIGTERM]`) for [`received`]. An error names the
/// signal whose handler could not be installed; the others are installed regardless.
pub fn install(signals: &[libc::c_int], restart: Restart) -> std::io::Result<()> {
    let mut result = Ok(());
    for &sig in signals {
        // SAFETY: a zeroed sigaction is a valid "no flags, empty mask" value; the handler only
        // stores to an atomic, which is async-signal-safe; sigemptyset and sigaction get valid
        // pointers to it.
        let rc = unsafe {
            let mut act: libc::sigaction = std::mem::zeroed();
            act.sa_sigaction = record as extern "C" fn(libc::c_int) as libc::sighandler_t;
            act.sa_flags = match restart {
                Restart::Yes => libc::SA_RESTART,
                Restart::No => 0,
            };
            libc::sigemptyset(&mut act.sa_mask);
            libc::sigaction(sig, &act, std::ptr::null_mut())
        };
        if rc != 0 && result.is_ok() {
            let err = std::io::Error::last_os_error();
            result = Err(std::io::Error::new(
                err.kind(),
                format!("cannot install the handler of signal {sig}: {err}"),
            ));
        }
    }
    result
}

/// The stopping signal received, if any.
pub fn received() -> Option<libc::c_int> {
    match RECEIVED.load(Ordering::SeqCst) {
        0 => None,
        sig => Some(sig),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_signal_is_recorded_and_the_process_lives_on() {
        assert_eq!(received(), None);
        install(&[libc::SIGUSR2], Restart::Yes).unwrap();
        // SAFETY: raise(3) on this process, whose SIGUSR2 handler was just installed.
        unsafe {
            libc::raise(libc::SIGUSR2);
        }
        assert_eq!(received(), Some(libc::SIGUSR2));
        assert!(install(&[-1], Restart::No).is_err());
    }
}
