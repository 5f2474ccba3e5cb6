//! SSH tunnels for rank 0's connections to the controller, as ipengine's `--ssh` / `--sshkey`.
//!
//! When the engine connection file has an `ssh` field (`rpar-controller --enginessh=user@gateway`,
//! `c.IPController.engine_ssh_server`), or `--ssh` / `IPEngine.sshserver` names a server, rank 0
//! starts the system `ssh` once, forwarding every controller port of the connection file, the
//! native transport's included (`-L 127.0.0.1:<free local port>:<host>:<port>`, the host as the
//! ssh server sees it), and connects its sockets to the local ends instead: both transports go
//! through it. As ipengine: the key is `--sshkey` / `IPEngine.sshkey` (else ssh's
//! own defaults and `~/.ssh/config`); a key with no server tunnels to the controller's host itself.
//! Unlike ipengine there is no password prompt (`BatchMode=yes`): a batch job has no terminal, so
//! a server that wants a password is an error naming the fix. `IPEngine.ssh_cmd` replaces `ssh`
//! (e.g. `['ssh', '-F', '/path/ssh_config']`).
//!
//! The ssh process is a child of rank 0: killed when the [`Tunnel`] is dropped, and by the kernel
//! (`PR_SET_PDEATHSIG`) should rank 0 die first.
//!
//! The address planning here ([`plan`], [`Plan::rewrite`], [`ssh_argv`]) is pure; [`ssh`] runs
//! the process ([`open`]).

mod ssh;

pub use ssh::{open, Tunnel};

use crate::net::Addrs;
use serde::{Deserialize, Serialize};
use thiserror::Error;

/// What went wrong with a tunnel.
#[derive(Debug, Error)]
pub enum TunnelError {
    #[error("ssh server {0:?} is not [user@]host[:port] (from the connection file's \"ssh\", --ssh or IPEngine.sshserver)")]
    BadServer(String),
    #[error("cannot tunnel {0} through ssh: only tcp:// addresses can be forwarded")]
    NotTcp(String),
    #[error("IPEngine.ssh_cmd is empty: give the ssh program, e.g. ['ssh']")]
    NoCommand,
    #[error("no free local port for the ssh tunnel: {0}")]
    Port(std::io::Error),
    #[error(
        "cannot start the ssh tunnel `{cmd}`: {source} (is OpenSSH's ssh installed and on PATH?)"
    )]
    Spawn { cmd: String, source: std::io::Error },
    #[error("the ssh tunnel through {server} failed ({status}): {stderr}\n  command: {cmd}\n  rpar-engine tunnels with key-based ssh only (BatchMode): check that `ssh -i KEY {server} true` works without a password (--sshkey / IPEngine.sshkey names the key; the host key must be known, or set options with IPEngine.ssh_cmd)")]
    Exited {
        server: String,
        status: String,
        stderr: String,
        cmd: String,
    },
    #[error(
        "the ssh tunnel through {server} was not up after {secs}s ({stderr})\n  command: {cmd}"
    )]
    Timeout {
        server: String,
        secs: u64,
        stderr: String,
        cmd: String,
    },
}

/// The tunnel settings rank 0 resolved (connection file, flags, config).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct SshSpec {
    /// `[user@]host[:port]`; empty with a key: the controller's host.
    pub server: String,
    /// Private key file (`ssh -i`).
    pub key: Option<String>,
    /// The ssh program and its own options; empty: `["ssh"]`.
    pub cmd: Vec<String>,
}

impl SshSpec {
    /// Whether to tunnel at all (ipengine: a server or a key).
    pub fn wanted(&self) -> bool {
        !self.server.is_empty() || self.key.as_deref().is_some_and(|k| !k.is_empty())
    }
}

/// An ssh destination split as ssh's command line wants it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Server {
    /// `[user@]host`.
    pub dest: String,
    /// `-p`, when the server string had `:port`.
    pub port: Option<u16>,
}

/// Parse `[user@]host[:port]` (ipyparallel's form; `[v6addr]:port` too).
pub fn parse_server(s: &str) -> Result<Server, TunnelError> {
    let bad = || TunnelError::BadServer(s.to_string());
    let t = s.trim();
    let (user, hostport) = match t.rsplit_once('@') {
        Some((u, h)) if !u.is_empty() => (Some(u), h),
        Some(_) => return Err(bad()),
        None => (None, t),
    };
    let (host, port) = if let Some(rest) = hostport.strip_prefix('[') {
        let (h, after) = rest.split_once(']').ok_or_else(bad)?;
        match after {
            "" => (h, None),
            p => (h, Some(p.strip_prefix(':').ok_or_else(bad)?)),
        }
    } else {
        match hostport.split_once(':') {
            Some((h, p)) if !p.contains(':') => (h, Some(p)),
            // a bare IPv6 address: no port
            Some(_) => (hostport, None),
            None => (hostport, None),
        }
    };
    if host.is_empty() || host.contains(char::is_whitespace) || host.starts_with('-') {
        return Err(bad());
    }
    let port = match port {
        Some(p) => Some(p.parse::<u16>().ok().filter(|p| *p > 0).ok_or_else(bad)?),
        None => None,
    };
    let dest = match user {
        Some(u) => format!("{u}@{host}"),
        None => host.to_string(),
    };
    Ok(Server { dest, port })
}

/// `tcp://host:port` → (host, port); `tcp://[v6]:port` gives the bare v6 address.
pub fn split_tcp(url: &str) -> Result<(String, u16), TunnelError> {
    let not_tcp = || TunnelError::NotTcp(url.to_string());
    let rest = url.strip_prefix("tcp://").ok_or_else(not_tcp)?;
    let (host, port) = rest.rsplit_once(':').ok_or_else(not_tcp)?;
    let host = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    let port = port.parse::<u16>().map_err(|_| not_tcp())?;
    if host.is_empty() {
        return Err(not_tcp());
    }
    Ok((host.to_string(), port))
}

/// One forwarded port: `127.0.0.1:local` here → `host:port` as the ssh server sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Forward {
    pub local: u16,
    pub host: String,
    pub port: u16,
}

impl Forward {
    /// ssh's `-L` argument.
    pub fn spec(&self) -> String {
        let host = if self.host.contains(':') {
            format!("[{}]", self.host)
        } else {
            self.host.clone()
        };
        format!("127.0.0.1:{}:{host}:{}", self.local, self.port)
    }
}

/// Which local port stands for which controller address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    pub forwards: Vec<Forward>,
}

/// One forward per distinct address in `urls`, local ports from `local_port`.
pub fn plan<'a>(
    urls: impl IntoIterator<Item = &'a str>,
    mut local_port: impl FnMut() -> Result<u16, TunnelError>,
) -> Result<Plan, TunnelError> {
    let mut forwards: Vec<Forward> = Vec::new();
    for u in urls {
        let (host, port) = split_tcp(u)?;
        if !forwards.iter().any(|f| f.host == host && f.port == port) {
            forwards.push(Forward {
                local: local_port()?,
                host,
                port,
            });
        }
    }
    Ok(Plan { forwards })
}

impl Plan {
    /// The local URL for `url` (unchanged when it is not forwarded).
    pub fn local_url(&self, url: &str) -> String {
        let Ok((host, port)) = split_tcp(url) else {
            return url.to_string();
        };
        self.forwards
            .iter()
            .find(|f| f.host == host && f.port == port)
            .map(|f| format!("tcp://127.0.0.1:{}", f.local))
            .unwrap_or_else(|| url.to_string())
    }

    /// `addrs` with every address replaced by its tunnel's local end.
    pub fn rewrite(&self, addrs: &Addrs) -> Addrs {
        addrs.map_urls(|u| self.local_url(u))
    }
}

impl Addrs {
    /// Every controller address rank 0 connects to.
    pub fn urls(&self) -> Vec<&str> {
        let mut v = vec![
            self.registration.as_str(),
            self.control.as_str(),
            self.mux.as_str(),
            self.task.as_str(),
            self.iopub.as_str(),
            self.hb_ping.as_str(),
            self.hb_pong.as_str(),
        ];
        v.extend(self.broadcast.iter().map(String::as_str));
        v
    }

    /// The same addresses, each passed through `f`.
    pub fn map_urls(&self, f: impl Fn(&str) -> String) -> Addrs {
        Addrs {
            registration: f(&self.registration),
            control: f(&self.control),
            mux: f(&self.mux),
            task: f(&self.task),
            iopub: f(&self.iopub),
            hb_ping: f(&self.hb_ping),
            hb_pong: f(&self.hb_pong),
            broadcast: self.broadcast.iter().map(|u| f(u)).collect(),
        }
    }
}

/// The server to use: the spec's, else (a key alone) the host of `registration` (ipengine's rule).
pub fn server_for(spec: &SshSpec, registration: &str) -> Result<Server, TunnelError> {
    if spec.server.trim().is_empty() {
        let (host, _) = split_tcp(registration)?;
        parse_server(&host)
    } else {
        parse_server(&spec.server)
    }
}

/// The whole ssh command line: no remote command, key-based only, fail if a forward cannot be
/// set up, notice a dead connection within a minute.
pub fn ssh_argv(
    spec: &SshSpec,
    server: &Server,
    forwards: &[Forward],
) -> Result<Vec<String>, TunnelError> {
    let mut argv: Vec<String> = if spec.cmd.is_empty() {
        vec!["ssh".to_string()]
    } else {
        spec.cmd.clone()
    };
    if argv[0].trim().is_empty() {
        return Err(TunnelError::NoCommand);
    }
    for o in [
        "BatchMode=yes",
        "ExitOnForwardFailure=yes",
        "ConnectTimeout=20",
        "ServerAliveInterval=15",
        "ServerAliveCountMax=4",
    ] {
        argv.push("-o".into());
        argv.push(o.into());
    }
    argv.push("-N".into());
    if let Some(k) = spec.key.as_deref().filter(|k| !k.is_empty()) {
        argv.push("-i".into());
        argv.push(k.to_string());
    }
    if let Some(p) = server.port {
        argv.push("-p".into());
        argv.push(p.to_string());
    }
    for f in forwards {
        argv.push("-L".into());
        argv.push(f.spec());
    }
    // "--" so that a destination can never be read as an option
    argv.push("--".into());
    argv.push(server.dest.clone());
    Ok(argv)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Nine controller addresses on loopback (also for [`super::ssh`]'s tests).
    pub(super) fn addrs() -> Addrs {
        let u = |p: u16| format!("tcp://127.0.0.1:{p}");
        Addrs {
            registration: u(5000),
            control: u(5001),
            mux: u(5002),
            task: u(5003),
            iopub: u(5004),
            hb_ping: u(5005),
            hb_pong: u(5006),
            broadcast: vec![u(5007), u(5008)],
        }
    }

    #[test]
    fn server_strings() {
        let s = parse_server("user@gateway").unwrap();
        assert_eq!((s.dest.as_str(), s.port), ("user@gateway", None));
        let s = parse_server("root@10.200.0.2:2222").unwrap();
        assert_eq!((s.dest.as_str(), s.port), ("root@10.200.0.2", Some(2222)));
        let s = parse_server("host").unwrap();
        assert_eq!((s.dest.as_str(), s.port), ("host", None));
        let s = parse_server("me@[fd00::2]:22").unwrap();
        assert_eq!((s.dest.as_str(), s.port), ("me@fd00::2", Some(22)));
        let s = parse_server("fd00::2").unwrap();
        assert_eq!((s.dest.as_str(), s.port), ("fd00::2", None));
        for bad in [
            "",
            "@host",
            "user@",
            "host:x",
            "host:0",
            "-oProxyCommand=x",
            "a b",
            "[::1",
        ] {
            assert!(parse_server(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn tcp_urls() {
        assert_eq!(
            split_tcp("tcp://10.0.0.1:5000").unwrap(),
            ("10.0.0.1".to_string(), 5000)
        );
        assert_eq!(split_tcp("tcp://[::1]:7").unwrap(), ("::1".to_string(), 7));
        for bad in ["ipc:///tmp/x-1", "tcp://host", "tcp://:5", "tcp://h:99999"] {
            assert!(
                matches!(split_tcp(bad), Err(TunnelError::NotTcp(_))),
                "{bad}"
            );
        }
    }

    #[test]
    fn every_address_goes_through_its_own_local_port() {
        let a = addrs();
        let mut next = 40000u16;
        let p = plan(a.urls(), || {
            next += 1;
            Ok(next)
        })
        .unwrap();
        assert_eq!(p.forwards.len(), 9);
        assert_eq!(
            p.forwards[0],
            Forward {
                local: 40001,
                host: "127.0.0.1".into(),
                port: 5000
            }
        );
        let t = p.rewrite(&a);
        assert_eq!(t.registration, "tcp://127.0.0.1:40001");
        assert_eq!(t.hb_pong, "tcp://127.0.0.1:40007");
        assert_eq!(
            t.broadcast,
            vec!["tcp://127.0.0.1:40008", "tcp://127.0.0.1:40009"]
        );
        // an address that is not forwarded stays as it was
        assert_eq!(p.local_url("tcp://10.1.1.1:5000"), "tcp://10.1.1.1:5000");
    }

    #[test]
    fn a_repeated_address_is_forwarded_once() {
        let mut a = addrs();
        a.broadcast = vec![a.mux.clone()];
        let mut next = 100u16;
        let p = plan(a.urls(), || {
            next += 1;
            Ok(next)
        })
        .unwrap();
        assert_eq!(p.forwards.len(), 7);
        let t = p.rewrite(&a);
        assert_eq!(t.broadcast[0], t.mux);
    }

    #[test]
    fn ipc_cannot_be_tunnelled() {
        let mut a = addrs();
        a.iopub = "ipc:///tmp/ctl-5004".into();
        assert!(
            matches!(plan(a.urls(), || Ok(1)), Err(TunnelError::NotTcp(u)) if u.starts_with("ipc://"))
        );
    }

    #[test]
    fn the_ssh_command_line() {
        let spec = SshSpec {
            server: "root@10.200.0.2:2200".into(),
            key: Some("/k/id".into()),
            cmd: vec!["ssh".into(), "-F".into(), "/cfg".into()],
        };
        let s = server_for(&spec, "tcp://127.0.0.1:5000").unwrap();
        let f = vec![
            Forward {
                local: 41000,
                host: "127.0.0.1".into(),
                port: 5000,
            },
            Forward {
                local: 41001,
                host: "fd00::1".into(),
                port: 5001,
            },
        ];
        let argv = ssh_argv(&spec, &s, &f).unwrap();
        let line = argv.join(" ");
        assert!(
            line.starts_with("ssh -F /cfg -o BatchMode=yes -o ExitOnForwardFailure=yes"),
            "{line}"
        );
        assert!(line.ends_with(
            "-N -i /k/id -p 2200 -L 127.0.0.1:41000:127.0.0.1:5000 -L 127.0.0.1:41001:[fd00::1]:5001 -- root@10.200.0.2"
        ), "{line}");
        // no key, default command
        let plain = ssh_argv(&SshSpec::default(), &parse_server("gw").unwrap(), &f[..1]).unwrap();
        assert_eq!(plain[0], "ssh");
        assert!(!plain.contains(&"-i".to_string()));
        let empty = SshSpec {
            cmd: vec![String::new()],
            ..SshSpec::default()
        };
        assert!(matches!(
            ssh_argv(&empty, &s, &f),
            Err(TunnelError::NoCommand)
        ));
    }

    #[test]
    fn a_key_alone_tunnels_to_the_controller_host() {
        let spec = SshSpec {
            server: String::new(),
            key: Some("/k".into()),
            cmd: vec![],
        };
        assert!(spec.wanted());
        assert!(!SshSpec::default().wanted());
        let s = server_for(&spec, "tcp://10.5.0.9:5000").unwrap();
        assert_eq!(s.dest, "10.5.0.9");
    }
}
