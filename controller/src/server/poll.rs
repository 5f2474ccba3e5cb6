//! The poller: which of the controller's sockets have input.

use crate::hub::Sock;
use anyhow::{bail, Context, Result};

/// The sockets the loop reads, with their ZeroMQ notification descriptors.
///
/// `zmq_poll` asks every socket for `ZMQ_EVENTS` (a system call each) on every pass, twice per
/// wake-up; with a dozen sockets that was most of the loop's cost. Instead the loop polls the
/// sockets' `ZMQ_FD` descriptors itself and looks only at sockets whose descriptor fired or
/// that the loop used since it last looked (a send or receive may consume the edge-triggered
/// notification while leaving messages queued, so a used socket must be looked at). Looking is
/// a receive that does not wait, not a `ZMQ_EVENTS` query: when a message is there (the usual
/// case under load) the query would be a second call into ZeroMQ for the same answer, and when
/// none is, both cost the same.
pub(super) struct Readers<'a> {
    pub(super) socks: Vec<(Sock, &'a zmq::Socket)>,
    fds: Vec<libc::pollfd>,
    /// Sockets to look at before the next blocking poll.
    pub(super) touched: Vec<bool>,
    /// Sockets to receive from (they may have input).
    pub(super) ready: Vec<bool>,
}

impl<'a> Readers<'a> {
    pub(super) fn new(socks: Vec<(Sock, &'a zmq::Socket)>) -> Result<Readers<'a>> {
        let mut fds = Vec::with_capacity(socks.len());
        for (k, s) in &socks {
            let fd = s
                .get_fd()
                .with_context(|| format!("ZMQ_FD of the {k:?} socket"))?;
            fds.push(libc::pollfd {
                fd,
                events: libc::POLLIN,
                revents: 0,
            });
        }
        let n = socks.len();
        Ok(Readers {
            socks,
            fds,
            touched: vec![true; n],
            ready: vec![false; n],
        })
    }

    /// A socket of this role was used (a send on it may have consumed its notification).
    pub(super) fn touch(&mut self, kind: Sock) {
        for (i, (k, _)) in self.socks.iter().enumerate() {
            if *k == kind {
                self.touched[i] = true;
            }
        }
    }

    /// The touched sockets become sockets to receive from; true if there is any (the loop
    /// receives until `EAGAIN` before it waits).
    pub(super) fn check_touched(&mut self) -> bool {
        let mut any = false;
        for i in 0..self.socks.len() {
            self.ready[i] |= std::mem::take(&mut self.touched[i]);
            any |= self.ready[i];
        }
        any
    }

    /// Block until a descriptor fires or `timeout_ms` passes; the sockets whose descriptor
    /// fired become touched. Ok(false) on EINTR.
    pub(super) fn wait(&mut self, timeout_ms: i32) -> Result<bool> {
        // SAFETY: `fds` is a live, correctly sized array of pollfd for the duration of the call.
        let rc = unsafe {
            libc::poll(
                self.fds.as_mut_ptr(),
                self.fds.len() as libc::nfds_t,
                timeout_ms,
            )
        };
        if rc < 0 {
            let err = std::io::Error::last_os_error();
            if err.kind() == std::io::ErrorKind::Interrupted {
                return Ok(false);
            }
            bail!("poll failed: {err}");
        }
        for (i, p) in self.fds.iter_mut().enumerate() {
            if p.revents != 0 {
                self.touched[i] = true;
                p.revents = 0;
            }
        }
        Ok(true)
    }
}
