//! The nanny: a tiny process forked by rank 0 before MPI and Python start, which unregisters
//! every engine of the job if rank 0 dies without doing it itself (SIGKILL, a crash, mpiexec
//! tearing the job down with SIGKILL after another rank died).
//!
//! Rank 0 writes one JSON line into a close-on-exec pipe once registration is done (where to
//! send and which engines) and `disarm` when it has unregistered everything itself. The nanny
//! waits for the pipe to close (which happens however rank 0 ends); if it was armed and not
//! disarmed, it sends `unregistration_request` for every engine and exits. It runs in its own
//! session with stdio on /dev/null so that mpiexec's process-group kill and output forwarding
//! never wait on it, and it never outlives its job by more than its zmq linger (3 s).

use crate::curve::ClientCurve;
use crate::net::unregistration_request;
use rpar_core::wire::Signer;
use serde::{Deserialize, Serialize};
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::Mutex;

#[derive(Debug, Serialize, Deserialize)]
struct Arm {
    url: String,
    key: String,
    engines: Vec<(String, u32)>,
    #[serde(default)]
    curve: Option<ClientCurve>,
}

/// Rank 0's handle on its nanny.
pub struct Nanny {
    pipe: Mutex<std::fs::File>,
}

impl Nanny {
    /// Fork the nanny. Must be called while the process is still single-threaded.
    pub fn spawn() -> std::io::Result<Nanny> {
        let (r, w) =
            nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(std::io::Error::from)?;
        // SAFETY: the process is single-threaded here (before MPI, Python, logging), so the child
        // may run ordinary Rust code.
        match unsafe { libc::fork() } {
            -1 => Err(std::io::Error::last_os_error()),
            0 => {
                drop(w);
                child(r)
            }
            _ => {
                drop(r);
                Ok(Nanny {
                    pipe: Mutex::new(std::fs::File::from(w)),
                })
            }
        }
    }

    fn write(&self, line: &str) {
        let mut f = self.pipe.lock().unwrap_or_else(|e| e.into_inner());
        let _ = f.write_all(line.as_bytes());
        let _ = f.write_all(b"\n");
        let _ = f.flush();
    }

    /// Tell the nanny what to unregister should rank 0 vanish.
    pub fn arm(
        &self,
        url: &str,
        key: &str,
        curve: Option<ClientCurve>,
        engines: Vec<(String, u32)>,
    ) {
        let a = Arm {
            url: url.to_string(),
            key: key.to_string(),
            engines,
            curve,
        };
        self.write(&serde_json::to_string(&a).unwrap_or_default());
    }

    /// Rank 0 unregistered everything itself.
    pub fn disarm(&self) {
        self.write("disarm");
    }
}

fn child(r: OwnedFd) -> ! {
    // SAFETY: plain syscalls in the freshly forked, single-threaded child.
    unsafe {
        libc::setsid();
        let null = libc::open(c"/dev/null".as_ptr(), libc::O_RDWR);
        if null >= 0 {
            for fd in 0..3 {
                libc::dup2(null, fd);
            }
            if null > 2 {
                libc::close(null);
            }
        }
        let keep = r.as_raw_fd();
        for fd in 3..1024 {
            if fd != keep {
                libc::close(fd);
            }
        }
    }
    let mut f = std::fs::File::from(r);
    let mut text = String::new();
    let _ = f.read_to_string(&mut text);
    let mut armed: Option<Arm> = None;
    for line in text.lines() {
        if line == "disarm" {
            armed = None;
        } else if let Ok(a) = serde_json::from_str::<Arm>(line) {
            armed = Some(a);
        }
    }
    if let Some(a) = armed {
        unregister(&a);
    }
    // SAFETY: leaving the child without running the parent's exit handlers.
    unsafe { libc::_exit(0) }
}

fn unregister(a: &Arm) {
    let Ok(ctx) = std::panic::catch_unwind(zmq::Context::new) else {
        return;
    };
    let Ok(s) = ctx.socket(zmq::DEALER) else {
        return;
    };
    let _ = s.set_linger(3000);
    if let Some(c) = &a.curve {
        if c.apply(&s).is_err() {
            return;
        }
    }
    if s.connect(&a.url).is_err() {
        return;
    }
    let signer = Signer::new(a.key.as_bytes());
    for (uuid, id) in &a.engines {
        let _ = s.send_multipart(unregistration_request(&signer, uuid, *id), 0);
    }
    drop(s);
    drop(ctx);
}
