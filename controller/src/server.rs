//! The controller process: binds every socket, writes the connection files, and runs one poll
//! loop that feeds the sans-I/O [`Hub`] and carries out its effects. One thread owns all ZeroMQ
//! sockets (they are not thread-safe); database writes that can be slow happen on the task
//! database's own thread.

use crate::hub::{Effect, Hub, HubConfig, Sock};
use crate::settings::Settings;
use anyhow::{bail, Context, Result};
use rpar_core::connection::{self, ClientInfo, EngineInfo};
use rpar_core::profile::ProfileDir;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};
use tracing::{error, info, warn};

static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    STOP.store(true, Ordering::SeqCst);
}

fn install_signal_handlers() {
    use nix::sys::signal::{sigaction, SaFlags, SigAction, SigHandler, SigSet, Signal};
    let act = SigAction::new(
        SigHandler::Handler(on_signal),
        SaFlags::empty(),
        SigSet::empty(),
    );
    for s in [Signal::SIGINT, Signal::SIGTERM, Signal::SIGABRT] {
        // SAFETY: the handler only stores to an atomic.
        unsafe {
            let _ = sigaction(s, &act);
        }
    }
}

/// The ports the controller listens on.
#[derive(Debug, Clone, Default)]
struct Ports {
    registration: u16,
    e_control: u16,
    e_mux: u16,
    e_task: u16,
    e_iopub: u16,
    hb_ping: u16,
    hb_pong: u16,
    e_bcast: u16,
    c_control: u16,
    c_mux: u16,
    c_task: u16,
    c_iopub: u16,
    notification: u16,
    c_bcast: u16,
}

/// Where the connection files go and what they hold.
pub struct Files {
    pub client: PathBuf,
    pub engine: PathBuf,
    pub state: PathBuf,
    keep: bool,
}

impl Files {
    fn remove(&self) {
        if self.keep {
            return;
        }
        for p in [&self.client, &self.engine] {
            if let Err(e) = std::fs::remove_file(p) {
                if e.kind() != std::io::ErrorKind::NotFound {
                    warn!(path = %p.display(), error = %e, "could not remove connection file");
                }
            }
        }
    }
}

fn bind_addr(transport: &str, ip: &str, port: u16) -> String {
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

struct Sockets {
    list: Vec<(Sock, zmq::Socket)>,
    /// the client-side registration ROUTER when clients and engines use different interfaces
    extra_registration: Option<zmq::Socket>,
}

impl Sockets {
    fn get(&self, s: Sock) -> Option<&zmq::Socket> {
        self.list.iter().find(|(k, _)| *k == s).map(|(_, z)| z)
    }
}

/// Check the loaded settings, write files, serve until stopped.
pub fn run(
    settings: Settings,
    profile: ProfileDir,
    cluster_id: String,
    session: String,
    db: crate::hub::Db,
) -> Result<()> {
    install_signal_handlers();
    profile
        .ensure()
        .with_context(|| format!("creating profile directory {}", profile.path.display()))?;
    let client_path = profile.connection_file(&cluster_id, "client");
    let engine_path = profile.connection_file(&cluster_id, "engine");
    let state_path = profile.log().join(format!("engines{cluster_id}.json"));

    // --reuse: key and ports from the existing files, when they load and agree.
    let mut reused: Option<(ClientInfo, EngineInfo)> = None;
    if settings.reuse_files {
        match (
            connection::read::<ClientInfo>(&client_path),
            connection::read::<EngineInfo>(&engine_path),
        ) {
            (Ok(c), Ok(e)) if c.key == e.key && c.registration == e.registration => {
                reused = Some((c, e))
            }
            (Ok(_), Ok(_)) => error!(
                "connection files disagree (key or registration port); starting with fresh ports"
            ),
            (c, e) => {
                if let Err(err) = c.as_ref().map(|_| ()).and(e.as_ref().map(|_| ())) {
                    info!(error = %err, "no connection files to reuse; writing new ones");
                }
            }
        }
    }

    let key = match (&reused, &settings.key, &settings.keyfile) {
        (Some((c, _)), _, _) => c.key.clone(),
        (None, Some(k), _) => k.clone(),
        (None, None, Some(f)) => std::fs::read_to_string(f)
            .with_context(|| format!("reading Session.keyfile {f}"))?
            .trim()
            .to_string(),
        (None, None, None) => rpar_core::ids::new_id(),
    };

    let ctx = zmq::Context::new();
    let mut pool: Vec<u16> = settings
        .engine_ports
        .iter()
        .chain(settings.client_ports.iter())
        .chain(settings.ports.iter())
        .copied()
        .collect();
    pool.reverse();
    let mut next_port = |want: Option<u16>| -> u16 { want.or_else(|| pool.pop()).unwrap_or(0) };
    let tr = settings.transport.clone();
    let (eip, cip) = (settings.engine_ip.clone(), settings.client_ip.clone());
    let (rc, re) = match &reused {
        Some((c, e)) => (Some(c.clone()), Some(e.clone())),
        None => (None, None),
    };
    let pick = |f: fn(&EngineInfo) -> u16| re.as_ref().map(f);
    let pickc = |f: fn(&ClientInfo) -> u16| rc.as_ref().map(f);

    let mut socks: Vec<(Sock, zmq::Socket)> = Vec::new();
    let mut ports = Ports::default();
    let mk = |kind: zmq::SocketType, ident: Option<&[u8]>| -> Result<zmq::Socket> {
        let s = ctx.socket(kind)?;
        s.set_sndhwm(0)?;
        s.set_rcvhwm(0)?;
        s.set_linger(1000)?;
        if let Some(i) = ident {
            s.set_identity(i)?;
        }
        Ok(s)
    };
    let bind = |s: &zmq::Socket, ip: &str, port: u16, what: &str| -> Result<u16> {
        let addr = bind_addr(&tr, ip, port);
        s.bind(&addr)
            .with_context(|| format!("binding the {what} socket to {addr}"))?;
        if tr == "ipc" {
            Ok(port)
        } else {
            bound_port(s)
        }
    };
    let reg = mk(zmq::ROUTER, None)?;
    ports.registration = bind(
        &reg,
        &eip,
        next_port(pick(|e| e.registration)),
        "registration",
    )?;
    let extra_registration = if cip != eip {
        let r2 = mk(zmq::ROUTER, None)?;
        bind(&r2, &cip, ports.registration, "client registration")?;
        Some(r2)
    } else {
        None
    };
    socks.push((Sock::Registration, reg));
    macro_rules! sock {
        ($kind:expr, $zt:expr, $ident:expr, $ip:expr, $want:expr, $field:ident, $what:expr) => {{
            let s = mk($zt, $ident)?;
            ports.$field = bind(&s, $ip, next_port($want), $what)?;
            socks.push(($kind, s));
        }};
    }
    sock!(
        Sock::ControlEngine,
        zmq::ROUTER,
        Some(b"control_out"),
        &eip,
        pick(|e| e.control),
        e_control,
        "engine control"
    );
    sock!(
        Sock::MuxEngine,
        zmq::ROUTER,
        Some(b"mux_out"),
        &eip,
        pick(|e| e.mux),
        e_mux,
        "engine mux"
    );
    sock!(
        Sock::TaskEngine,
        zmq::ROUTER,
        Some(b"task_out"),
        &eip,
        pick(|e| e.task),
        e_task,
        "engine task"
    );
    sock!(
        Sock::IopubEngine,
        zmq::SUB,
        None,
        &eip,
        pick(|e| e.iopub),
        e_iopub,
        "engine iopub"
    );
    sock!(
        Sock::HbPing,
        zmq::PUB,
        None,
        &eip,
        pick(|e| e.hb_ping),
        hb_ping,
        "heartbeat ping"
    );
    sock!(
        Sock::HbPong,
        zmq::ROUTER,
        None,
        &eip,
        pick(|e| e.hb_pong),
        hb_pong,
        "heartbeat pong"
    );
    sock!(
        Sock::BcastEngine,
        zmq::ROUTER,
        Some(b"bcast_out"),
        &eip,
        re.as_ref().and_then(|e| e.broadcast.first().copied()),
        e_bcast,
        "engine broadcast"
    );
    sock!(
        Sock::ControlClient,
        zmq::ROUTER,
        Some(b"control_in"),
        &cip,
        pickc(|c| c.control),
        c_control,
        "client control"
    );
    sock!(
        Sock::MuxClient,
        zmq::ROUTER,
        Some(b"mux_in"),
        &cip,
        pickc(|c| c.mux),
        c_mux,
        "client mux"
    );
    sock!(
        Sock::TaskClient,
        zmq::ROUTER,
        Some(b"task_in"),
        &cip,
        pickc(|c| c.task),
        c_task,
        "client task"
    );
    sock!(
        Sock::IopubClient,
        zmq::PUB,
        None,
        &cip,
        pickc(|c| c.iopub),
        c_iopub,
        "client iopub"
    );
    sock!(
        Sock::Notification,
        zmq::PUB,
        None,
        &cip,
        pickc(|c| c.notification),
        notification,
        "notification"
    );
    sock!(
        Sock::BcastClient,
        zmq::ROUTER,
        Some(b"bcast_in"),
        &cip,
        pickc(|c| c.broadcast),
        c_bcast,
        "client broadcast"
    );
    if let Some((_, s)) = socks.iter().find(|(k, _)| *k == Sock::IopubEngine) {
        s.set_subscribe(b"")?;
    }

    let location = if settings.location.is_empty() {
        connection::hostname().unwrap_or_else(|| "localhost".into())
    } else {
        settings.location.clone()
    };
    let iface = |ip: &str| -> String {
        let ip = if ip == "*" { "0.0.0.0" } else { ip };
        format!("{tr}://{ip}")
    };
    let engine_info = EngineInfo {
        ssh: settings.engine_ssh_server.clone(),
        interface: iface(&eip),
        registration: ports.registration,
        control: ports.e_control,
        mux: ports.e_mux,
        task: ports.e_task,
        iopub: ports.e_iopub,
        hb_ping: ports.hb_ping,
        hb_pong: ports.hb_pong,
        broadcast: vec![ports.e_bcast],
        key: key.clone(),
        curve_serverkey: None,
        location: location.clone(),
        pack: "json".into(),
        unpack: "json".into(),
        signature_scheme: "hmac-sha256".into(),
    };
    let client_info = ClientInfo {
        ssh: settings.ssh_server.clone(),
        interface: iface(&cip),
        registration: ports.registration,
        control: ports.c_control,
        mux: ports.c_mux,
        task: ports.c_task,
        task_scheme: settings.scheme.clone(),
        iopub: ports.c_iopub,
        notification: ports.notification,
        broadcast: ports.c_bcast,
        key: key.clone(),
        curve_serverkey: None,
        location,
        pack: "json".into(),
        unpack: "json".into(),
        signature_scheme: "hmac-sha256".into(),
    };
    if reused.is_none() {
        connection::write_private(&client_path, &client_info)?;
        connection::write_private(&engine_path, &engine_info)?;
    }
    let files = Files {
        client: client_path,
        engine: engine_path,
        state: state_path,
        keep: settings.reuse_files,
    };
    info!(client = %files.client.display(), engine = %files.engine.display(), "connection files written");

    let now = Instant::now();
    let cfg = HubConfig {
        hb_period: settings.hb_period,
        max_heartbeat_misses: settings.max_heartbeat_misses,
        registration_timeout: settings.registration_timeout,
        engine_info,
        scheme: settings.scheme.clone(),
        hwm: settings.hwm,
        engine_death_grace: Duration::from_secs(5)
            .min(settings.hb_period * 2)
            .max(Duration::from_millis(500)),
    };
    let mut hub = Hub::new(cfg, key.as_bytes(), session, db, now);
    if settings.restore_engines {
        match std::fs::read_to_string(&files.state)
            .map(|t| serde_json::from_str::<serde_json::Value>(&t))
        {
            Ok(Ok(v)) => {
                hub.restore(&v, now);
                info!(path = %files.state.display(), "engines restored");
            }
            Ok(Err(e)) => warn!(error = %e, "engine state file is not JSON; nothing restored"),
            Err(e) => warn!(error = %e, "no engine state file to restore"),
        }
    }
    info!(session = hub.session(), "rpar-controller ready");
    let sockets = Sockets {
        list: socks,
        extra_registration,
    };
    let result = serve(&mut hub, &sockets, &files);
    files.remove();
    result
}

fn serve(hub: &mut Hub, socks: &Sockets, files: &Files) -> Result<()> {
    // Sockets to poll, with the hub role each reads as.
    let mut readers: Vec<(Sock, &zmq::Socket)> = socks
        .list
        .iter()
        .filter(|(k, _)| !matches!(k, Sock::HbPing | Sock::IopubClient | Sock::Notification))
        .map(|(k, s)| (*k, s))
        .collect();
    if let Some(r2) = &socks.extra_registration {
        readers.push((Sock::Registration, r2));
    }
    let mut effects = hub.tick(Instant::now());
    loop {
        for e in effects.drain(..) {
            run_effect(e, socks, files);
        }
        if STOP.load(Ordering::SeqCst) {
            info!("signal received: stopping");
            return Ok(());
        }
        let now = Instant::now();
        if hub.should_exit(now) {
            info!("hub shut down by request");
            return Ok(());
        }
        let wait = hub.next_deadline().saturating_duration_since(now);
        let timeout = wait.as_millis().min(1000) as i64;
        let mut items: Vec<zmq::PollItem> = readers
            .iter()
            .map(|(_, s)| s.as_poll_item(zmq::POLLIN))
            .collect();
        match zmq::poll(&mut items, timeout) {
            Ok(_) => {}
            Err(zmq::Error::EINTR) => continue,
            Err(e) => bail!("poll failed: {e}"),
        }
        let ready: Vec<bool> = items.iter().map(|i| i.is_readable()).collect();
        drop(items);
        for (i, r) in ready.into_iter().enumerate() {
            if !r {
                continue;
            }
            let (kind, sock) = readers[i];
            // drain a bounded batch so no socket starves the others
            for _ in 0..256 {
                match sock.recv_multipart(zmq::DONTWAIT) {
                    Ok(frames) => {
                        let now = Instant::now();
                        effects.extend(hub.on_message(kind, frames, now));
                    }
                    Err(zmq::Error::EAGAIN) => break,
                    Err(zmq::Error::EINTR) => break,
                    Err(e) => {
                        warn!(?kind, error = %e, "receive failed");
                        break;
                    }
                }
            }
            if effects.len() > 4096 {
                for e in effects.drain(..) {
                    run_effect(e, socks, files);
                }
            }
        }
        let now = Instant::now();
        if now >= hub.next_deadline() {
            effects.extend(hub.tick(now));
        }
    }
}

fn run_effect(e: Effect, socks: &Sockets, files: &Files) {
    match e {
        Effect::Send(kind, frames) => {
            let Some(s) = socks.get(kind) else { return };
            let res = if kind == Sock::Registration && socks.extra_registration.is_some() {
                // the peer is on one of the two registration sockets; ROUTERs drop what they
                // cannot route, so sending on both reaches it exactly once
                let r2 = socks
                    .extra_registration
                    .as_ref()
                    .map(|r| r.send_multipart(frames.iter(), zmq::DONTWAIT));
                if let Some(Err(err)) = r2 {
                    warn!(error = %err, "send failed");
                }
                s.send_multipart(frames, zmq::DONTWAIT)
            } else {
                s.send_multipart(frames, zmq::DONTWAIT)
            };
            if let Err(err) = res {
                if err != zmq::Error::EHOSTUNREACH {
                    warn!(?kind, error = %err, "send failed");
                }
            }
        }
        Effect::SaveEngines(v) => {
            if let Err(err) = std::fs::write(
                &files.state,
                serde_json::to_vec_pretty(&v).unwrap_or_default(),
            ) {
                warn!(path = %files.state.display(), error = %err, "could not save engine state");
            }
        }
    }
}
