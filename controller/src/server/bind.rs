//! Binding: every socket of the controller from one table of roles ([`ROLES`]).
//!
//! A role says which hub socket it is, its ZeroMQ type and identity, which side (engines or
//! clients) connects to it, and where `--reuse` finds its port in the old connection files.
//! Ports come, in table order, from the reused files, else from the configured port lists, else
//! from the system.

use crate::hub::{Parked, Sock};
use crate::settings::Settings;
use anyhow::{Context, Result};
use rpar_core::connection::{ClientInfo, EngineInfo};
use rpar_core::curve::CurveKeyPair;

/// Which peers connect to a socket, and so which interface it binds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Side {
    Engine,
    Client,
}

/// One socket of the controller.
pub(super) struct Role {
    pub(super) sock: Sock,
    pub(super) zmq: zmq::SocketType,
    /// The ROUTER identity the peer sees (ipyparallel's names).
    pub(super) identity: Option<&'static [u8]>,
    pub(super) side: Side,
    /// For error messages: "binding the engine mux socket to …".
    pub(super) what: &'static str,
    /// Its port in reused connection files.
    pub(super) reused: fn(&ClientInfo, &EngineInfo) -> Option<u16>,
}

/// The controller's sockets, in binding (and port-list) order.
pub(super) const ROLES: [Role; 15] = [
    Role {
        sock: Sock::Registration,
        zmq: zmq::ROUTER,
        identity: None,
        side: Side::Engine,
        what: "registration",
        reused: |_, e| Some(e.registration),
    },
    Role {
        sock: Sock::ControlEngine,
        zmq: zmq::ROUTER,
        identity: Some(b"control_out"),
        side: Side::Engine,
        what: "engine control",
        reused: |_, e| Some(e.control),
    },
    Role {
        sock: Sock::MuxEngine,
        zmq: zmq::ROUTER,
        identity: Some(b"mux_out"),
        side: Side::Engine,
        what: "engine mux",
        reused: |_, e| Some(e.mux),
    },
    Role {
        sock: Sock::TaskEngine,
        zmq: zmq::ROUTER,
        identity: Some(b"task_out"),
        side: Side::Engine,
        what: "engine task",
        reused: |_, e| Some(e.task),
    },
    Role {
        sock: Sock::IopubEngine,
        zmq: zmq::SUB,
        identity: None,
        side: Side::Engine,
        what: "engine iopub",
        reused: |_, e| Some(e.iopub),
    },
    Role {
        sock: Sock::HbPing,
        zmq: zmq::PUB,
        identity: None,
        side: Side::Engine,
        what: "heartbeat ping",
        reused: |_, e| Some(e.hb_ping),
    },
    Role {
        sock: Sock::HbPong,
        zmq: zmq::ROUTER,
        identity: None,
        side: Side::Engine,
        what: "heartbeat pong",
        reused: |_, e| Some(e.hb_pong),
    },
    Role {
        sock: Sock::BcastEngine,
        zmq: zmq::ROUTER,
        identity: Some(b"bcast_out"),
        side: Side::Engine,
        what: "engine broadcast",
        reused: |_, e| e.broadcast.first().copied(),
    },
    Role {
        sock: Sock::ControlClient,
        zmq: zmq::ROUTER,
        identity: Some(b"control_in"),
        side: Side::Client,
        what: "client control",
        reused: |c, _| Some(c.control),
    },
    Role {
        sock: Sock::MuxClient,
        zmq: zmq::ROUTER,
        identity: Some(b"mux_in"),
        side: Side::Client,
        what: "client mux",
        reused: |c, _| Some(c.mux),
    },
    Role {
        sock: Sock::TaskClient,
        zmq: zmq::ROUTER,
        identity: Some(b"task_in"),
        side: Side::Client,
        what: "client task",
        reused: |c, _| Some(c.task),
    },
    Role {
        sock: Sock::IopubClient,
        zmq: zmq::PUB,
        identity: None,
        side: Side::Client,
        what: "client iopub",
        reused: |c, _| Some(c.iopub),
    },
    Role {
        sock: Sock::Notification,
        zmq: zmq::XPUB,
        identity: None,
        side: Side::Client,
        what: "notification",
        reused: |c, _| Some(c.notification),
    },
    Role {
        sock: Sock::BcastClient,
        zmq: zmq::ROUTER,
        identity: Some(b"bcast_in"),
        side: Side::Client,
        what: "client broadcast",
        reused: |c, _| Some(c.broadcast),
    },
    // the native transport: one connection per MPI job (`hub::native`)
    Role {
        sock: Sock::Native,
        zmq: zmq::ROUTER,
        identity: None,
        side: Side::Engine,
        what: "native engine",
        reused: |_, e| e.rpar_native.as_ref().map(|n| n.port),
    },
];

/// Listen backlog of the controller's sockets (ZeroMQ's default is 100).
const LISTEN_BACKLOG: i32 = 4096;

/// The bound sockets.
pub(super) struct Sockets {
    list: Vec<(Sock, zmq::Socket)>,
    /// Each socket's raw handle, in `list` order (for sends of shared buffers).
    raw: Vec<*mut std::os::raw::c_void>,
    /// the client-side registration ROUTER when clients and engines use different interfaces
    pub(super) extra_registration: Option<zmq::Socket>,
    /// The port each role is bound to, in [`ROLES`] order.
    ports: Vec<(Sock, u16)>,
}

impl Sockets {
    /// The socket of a role, to send on.
    pub(super) fn out(&self, s: Sock) -> Option<super::frames::Out<'_>> {
        let i = self.list.iter().position(|(k, _)| *k == s)?;
        Some(super::frames::Out {
            sock: &self.list[i].1,
            raw: self.raw[i],
        })
    }

    /// The port a role is bound to.
    pub(super) fn port(&self, s: Sock) -> u16 {
        self.ports
            .iter()
            .find(|(k, _)| *k == s)
            .map_or(0, |(_, p)| *p)
    }

    /// The sockets the loop reads (all but the send-only PUBs), with the hub role each reads as.
    pub(super) fn readable(&self) -> Vec<(Sock, &zmq::Socket)> {
        let mut list: Vec<(Sock, &zmq::Socket)> = self
            .list
            .iter()
            .filter(|(k, _)| !matches!(k, Sock::HbPing | Sock::IopubClient))
            .map(|(k, s)| (*k, s))
            .collect();
        if let Some(r2) = &self.extra_registration {
            list.push((Sock::Registration, r2));
        }
        list
    }
}

pub(super) fn bind_addr(transport: &str, ip: &str, port: u16) -> String {
    let host = if ip == "*" || ip == "0.0.0.0" {
        "*"
    } else {
        ip
    };
    if transport == "ipc" {
        format!("ipc://{ip}-{port}")
    } else if port == 0 {
        format!("{transport}://{host}:*")
    } else {
        format!("{transport}://{host}:{port}")
    }
}

fn bound_port(s: &zmq::Socket) -> Result<u16> {
    let ep = s
        .get_last_endpoint()
        .context("reading bound endpoint")?
        .map_err(|_| anyhow::anyhow!("endpoint is not UTF-8"))?;
    let port = ep.rsplit(':').next().unwrap_or("0");
    Ok(port.parse().unwrap_or(0))
}

/// A socket of this type with the controller's options; `max_msg` is ZMQ_MAXMSGSIZE. With CURVE
/// every socket is a CURVE server: each role is bound and faces engines or clients.
fn make(
    ctx: &zmq::Context,
    kind: zmq::SocketType,
    ident: Option<&[u8]>,
    max_msg: i64,
    curve: Option<&CurveKeyPair>,
) -> Result<zmq::Socket> {
    let s = ctx.socket(kind)?;
    if let Some(c) = curve {
        s.set_curve_server(true)?;
        s.set_curve_secretkey(c.secret.as_str().as_bytes())
            .context("setting the CurveZMQ secret key")?;
    }
    s.set_sndhwm(0)?;
    s.set_rcvhwm(0)?;
    // Every socket here is one peers connect to. ZeroMQ reads a frame's length before the
    // frame: one over the limit drops that connection at once, so a peer (signed or not) cannot
    // make the controller allocate, and then copy, a huge frame before its signature is checked.
    s.set_maxmsgsize(max_msg)?;
    s.set_linger(1000)?;
    // An MPI job connects all its engines at once, six connections each; with ZeroMQ's
    // default listen backlog of 100 the kernel drops the surplus SYNs and those connections
    // come back only after TCP's retry back-off (1, 3, 7, 15, 31 s): past the registration
    // timeout for the last engines of a 300-rank job. The kernel caps this at somaxconn.
    s.set_backlog(LISTEN_BACKLOG)?;
    if let Some(i) = ident {
        s.set_identity(i)?;
    }
    Ok(s)
}

/// Bind `s` on `ip`; the port it got.
fn bind_one(s: &zmq::Socket, transport: &str, ip: &str, port: u16, what: &str) -> Result<u16> {
    let addr = bind_addr(transport, ip, port);
    s.bind(&addr)
        .with_context(|| format!("binding the {what} socket to {addr}"))?;
    if transport == "ipc" {
        Ok(port)
    } else {
        bound_port(s)
    }
}

/// Create and bind every socket of [`ROLES`], with the ports of `reused` where given.
pub(super) fn bind_all(
    ctx: &zmq::Context,
    settings: &Settings,
    reused: Option<&(ClientInfo, EngineInfo)>,
) -> Result<Sockets> {
    let mut pool: Vec<u16> = settings
        .engine_ports
        .iter()
        .chain(settings.client_ports.iter())
        .chain(settings.ports.iter())
        .copied()
        .collect();
    pool.reverse();
    let tr = settings.transport.as_str();
    let (eip, cip) = (settings.engine_ip.as_str(), settings.client_ip.as_str());
    let mut socks = Sockets {
        list: Vec::with_capacity(ROLES.len()),
        raw: Vec::with_capacity(ROLES.len()),
        extra_registration: None,
        ports: Vec::with_capacity(ROLES.len()),
    };
    for role in &ROLES {
        let ip = match role.side {
            Side::Engine => eip,
            Side::Client => cip,
        };
        let want = reused.and_then(|(c, e)| (role.reused)(c, e));
        let port = want.or_else(|| pool.pop()).unwrap_or(0);
        let curve = settings.curve.as_ref();
        let mut s = make(
            ctx,
            role.zmq,
            role.identity,
            settings.max_message_size,
            curve,
        )?;
        let port = bind_one(&s, tr, ip, port, role.what)?;
        if role.sock == Sock::Registration && cip != eip {
            let r2 = make(ctx, zmq::ROUTER, None, settings.max_message_size, curve)?;
            bind_one(&r2, tr, cip, port, "client registration")?;
            socks.extra_registration = Some(r2);
        }
        match role.sock {
            Sock::IopubEngine => s.set_subscribe(b"")?,
            // every subscription reaches the hub, not only the first for a topic (see
            // `Hub::on_subscription`)
            Sock::Notification => s.set_xpub_verbose(true)?,
            // A message for an engine whose socket has not (re)connected yet fails with
            // EHOSTUNREACH instead of vanishing, and waits in `Parked` until the engine is there.
            k if Parked::holds(k) => s.set_router_mandatory(true)?,
            _ => {}
        }
        socks.ports.push((role.sock, port));
        // the handle stays valid while `s` lives (in `list`, as long as `raw`)
        socks.raw.push(s.as_mut_ptr());
        socks.list.push((role.sock, s));
    }
    Ok(socks)
}
