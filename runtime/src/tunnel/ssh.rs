//! The ssh process of a tunnel: started with the planned forwards, waited for until its local
//! ends accept connections, stopped when the [`Tunnel`] is dropped.

use super::{plan, server_for, ssh_argv, Plan, SshSpec, TunnelError};
use crate::net::Addrs;
use std::io::{BufRead, BufReader};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tracing::{info, warn};

/// How long the tunnel may take to come up (ssh's own `ConnectTimeout` is a part of it).
pub const OPEN_TIMEOUT: Duration = Duration::from_secs(30);

/// A running ssh tunnel; dropping it stops ssh.
pub struct Tunnel {
    child: Child,
    server: String,
    plan: Plan,
    /// The addresses to connect to (the tunnel's local ends).
    pub addrs: Addrs,
}

impl Tunnel {
    /// The local end for a controller address given to [`open`] (others unchanged).
    pub fn local_url(&self, url: &str) -> String {
        self.plan.local_url(url)
    }
}

/// A free local TCP port (bound and released; ssh binds it a moment later).
fn free_port(held: &mut Vec<TcpListener>) -> Result<u16, TunnelError> {
    let l = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).map_err(TunnelError::Port)?;
    let port = l.local_addr().map_err(TunnelError::Port)?.port();
    // held until every port is chosen, so no two forwards get the same one
    held.push(l);
    Ok(port)
}

/// The last lines ssh wrote to stderr.
fn tail(lines: &Mutex<Vec<String>>) -> String {
    let l = lines.lock().unwrap_or_else(|e| e.into_inner());
    if l.is_empty() {
        "ssh said nothing".to_string()
    } else {
        l.join(" / ")
    }
}

/// Start ssh forwarding every address of `addrs` and `native` (the native transport's
/// endpoint, when rank 0 uses it) and wait until its local ends accept connections (ssh listens
/// only once it has logged in).
pub fn open(spec: &SshSpec, addrs: &Addrs, native: Option<&str>) -> Result<Tunnel, TunnelError> {
    let server = server_for(spec, &addrs.registration)?;
    let mut held = Vec::new();
    let plan = plan(addrs.urls().into_iter().chain(native), || {
        free_port(&mut held)
    })?;
    drop(held);
    let argv = ssh_argv(spec, &server, &plan.forwards)?;
    let shown = argv.join(" ");
    let mut cmd = Command::new(&argv[0]);
    cmd.args(&argv[1..])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    // SAFETY: prctl and getppid are async-signal-safe; nothing else runs between fork and exec.
    unsafe {
        cmd.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM);
            Ok(())
        });
    }
    let mut child = cmd.spawn().map_err(|source| TunnelError::Spawn {
        cmd: shown.clone(),
        source,
    })?;
    let lines = Arc::new(Mutex::new(Vec::<String>::new()));
    let reader = child.stderr.take().map(|err| {
        let lines = lines.clone();
        std::thread::Builder::new()
            .name("ssh-stderr".into())
            .spawn(move || {
                for line in BufReader::new(err).lines().map_while(Result::ok) {
                    warn!("ssh: {line}");
                    let mut l = lines.lock().unwrap_or_else(|e| e.into_inner());
                    if l.len() >= 8 {
                        l.remove(0);
                    }
                    l.push(line);
                }
            })
    });
    let probe = plan.forwards.first().map(|f| f.local);
    let deadline = Instant::now() + OPEN_TIMEOUT;
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            // ssh is gone: its stderr is complete once the reader sees end-of-file
            if let Some(Ok(h)) = reader {
                let _ = h.join();
            }
            return Err(TunnelError::Exited {
                server: server.dest,
                status: status.to_string(),
                stderr: tail(&lines),
                cmd: shown,
            });
        }
        let up = match probe {
            Some(p) => TcpStream::connect_timeout(
                &SocketAddr::from((Ipv4Addr::LOCALHOST, p)),
                Duration::from_millis(200),
            )
            .is_ok(),
            None => true,
        };
        if up {
            break;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            return Err(TunnelError::Timeout {
                server: server.dest,
                secs: OPEN_TIMEOUT.as_secs(),
                stderr: tail(&lines),
                cmd: shown,
            });
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    info!(
        "ssh tunnel through {} up (pid {}): {} forward(s), registration via {}",
        server.dest,
        child.id(),
        plan.forwards.len(),
        plan.local_url(&addrs.registration)
    );
    Ok(Tunnel {
        addrs: plan.rewrite(addrs),
        plan,
        child,
        server: server.dest,
    })
}

impl Drop for Tunnel {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            if let Ok(pid) = i32::try_from(self.child.id()) {
                // SAFETY: signalling our own child, which has not been reaped yet.
                unsafe { libc::kill(pid, libc::SIGTERM) };
            }
            let _ = self.child.wait();
            info!("ssh tunnel through {} closed", self.server);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::addrs;
    use super::*;

    #[test]
    fn a_server_that_refuses_is_a_clear_error() {
        // `false` stands in for an ssh that cannot log in: it exits at once
        let spec = SshSpec {
            server: "nobody@gateway".into(),
            key: None,
            cmd: vec!["false".into()],
        };
        let e = match open(&spec, &addrs(), None) {
            Err(e) => e,
            Ok(_) => panic!("a tunnel through `false` came up"),
        };
        let msg = e.to_string();
        assert!(matches!(e, TunnelError::Exited { .. }), "{msg}");
        assert!(
            msg.contains("nobody@gateway") && msg.contains("BatchMode"),
            "{msg}"
        );
        let missing = SshSpec {
            server: "gw".into(),
            key: None,
            cmd: vec!["/nonexistent/ssh".into()],
        };
        assert!(matches!(
            open(&missing, &addrs(), None),
            Err(TunnelError::Spawn { .. })
        ));
    }
}
