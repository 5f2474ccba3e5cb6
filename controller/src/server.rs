//! The controller process: binds every socket, writes the connection files, and runs one poll
//! loop that feeds the sans-I/O [`Hub`] and carries out its effects. One thread owns all ZeroMQ
//! sockets (they are not thread-safe); database writes that can be slow happen on the task
//! database's own thread.

use crate::hub::{Effect, Hub, HubConfig, Sock};
use crate::settings::Settings;
use anyhow::{bail, Context, Result};
use rpar_core::connection::{self, ClientInfo, EngineInfo};
use rpar_core::profile::ProfileDir;
use rpar_core::wire::Frames;
use std::collections::{HashMap, VecDeque};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};
use tracing::{debug, error, info, warn};

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
    /// Rewrite `log/engines<cluster_id>.json`: written aside, then renamed, so a reader (or a
    /// crash) never sees a half-written file.
    fn save_engines(&self, state: &serde_json::Value) {
        let tmp = self.state.with_extension("json.tmp");
        let res = std::fs::write(&tmp, serde_json::to_vec_pretty(state).unwrap_or_default())
            .and_then(|()| std::fs::rename(&tmp, &self.state));
        if let Err(err) = res {
            warn!(path = %self.state.display(), error = %err, "could not save engine state");
        }
    }

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
        // An MPI job connects all its engines at once, six connections each; with ZeroMQ's
        // default listen backlog of 100 the kernel drops the surplus SYNs and those connections
        // come back only after TCP's retry back-off (1, 3, 7, 15, 31 s): past the registration
        // timeout for the last engines of a 300-rank job. The kernel caps this at somaxconn.
        s.set_backlog(LISTEN_BACKLOG)?;
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
        zmq::XPUB,
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
    // every subscription reaches the hub, not only the first for a topic (see
    // `Hub::on_subscription`)
    if let Some((_, s)) = socks.iter().find(|(k, _)| *k == Sock::Notification) {
        s.set_xpub_verbose(true)?;
    }
    // A message for an engine whose socket has not (re)connected yet fails with EHOSTUNREACH
    // instead of vanishing, and waits in `Parked` until the engine is there.
    for (k, s) in &socks {
        if Parked::holds(*k) {
            s.set_router_mandatory(true)?;
        }
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

/// Listen backlog of the controller's sockets (ZeroMQ's default is 100).
const LISTEN_BACKLOG: i32 = 4096;

/// Most messages taken from one socket before the others get a turn.
const BATCH: usize = 256;

/// The sockets the loop reads, with their ZeroMQ notification descriptors.
///
/// `zmq_poll` asks every socket for `ZMQ_EVENTS` (a system call each) on every pass, twice per
/// wake-up; with a dozen sockets that was most of the loop's cost. Instead the loop polls the
/// sockets' `ZMQ_FD` descriptors itself and asks `ZMQ_EVENTS` only of sockets whose descriptor
/// fired or that the loop used since it last asked (a send or receive may consume the
/// edge-triggered notification while leaving messages queued, so a used socket must be asked).
struct Readers<'a> {
    socks: Vec<(Sock, &'a zmq::Socket)>,
    fds: Vec<libc::pollfd>,
    /// Sockets to ask for `ZMQ_EVENTS` before the next blocking poll.
    touched: Vec<bool>,
    /// Sockets known to have input.
    ready: Vec<bool>,
}

impl<'a> Readers<'a> {
    fn new(socks: Vec<(Sock, &'a zmq::Socket)>) -> Result<Readers<'a>> {
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
    fn touch(&mut self, kind: Sock) {
        for (i, (k, _)) in self.socks.iter().enumerate() {
            if *k == kind {
                self.touched[i] = true;
            }
        }
    }

    /// Ask the touched sockets whether they have input; true if any has.
    fn check_touched(&mut self) -> bool {
        let mut any = false;
        for i in 0..self.socks.len() {
            if std::mem::take(&mut self.touched[i]) {
                self.ready[i] |= self.socks[i]
                    .1
                    .get_events()
                    .map(|e| e.contains(zmq::POLLIN))
                    .unwrap_or(true);
            }
            any |= self.ready[i];
        }
        any
    }

    /// Block until a descriptor fires or `timeout_ms` passes; the sockets whose descriptor
    /// fired become touched. Ok(false) on EINTR.
    fn wait(&mut self, timeout_ms: i32) -> Result<bool> {
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

fn serve(hub: &mut Hub, socks: &Sockets, files: &Files) -> Result<()> {
    // Sockets to poll, with the hub role each reads as.
    let mut list: Vec<(Sock, &zmq::Socket)> = socks
        .list
        .iter()
        .filter(|(k, _)| !matches!(k, Sock::HbPing | Sock::IopubClient))
        .map(|(k, s)| (*k, s))
        .collect();
    if let Some(r2) = &socks.extra_registration {
        list.push((Sock::Registration, r2));
    }
    let mut readers = Readers::new(list)?;
    let mut part = zmq::Message::new();
    let mut effects = hub.tick(Instant::now());
    let mut state_dirty = false;
    let mut parked = Parked::default();
    let mut dask = crate::dask::DaskShell::default();
    loop {
        for a in hub.take_dask_actions() {
            dask.act(a);
        }
        if let Some(r) = dask.poll() {
            effects.extend(hub.dask_started(r));
        }
        for e in effects.drain(..) {
            run_effect(e, socks, &mut readers, &mut state_dirty, &mut parked);
        }
        if parked.due(Instant::now()) {
            parked.retry(socks, &mut readers, Instant::now());
        }
        // one write per wake-up, however many engines (un)registered in it
        if std::mem::take(&mut state_dirty) {
            files.save_engines(&hub.engine_state());
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
        if !readers.check_touched() {
            let wait = parked
                .next_retry()
                .map_or(hub.next_deadline(), |r| r.min(hub.next_deadline()))
                .saturating_duration_since(now);
            // round up, so a deadline less than 1 ms away is not a busy loop
            let mut timeout = (wait.as_micros().div_ceil(1000)).min(1000) as i32;
            if dask.starting() {
                // the scheduler's address arrives on a thread: look often
                timeout = timeout.min(20);
            }
            if !readers.wait(timeout)? {
                continue;
            }
            readers.check_touched();
        }
        for i in 0..readers.socks.len() {
            if !std::mem::take(&mut readers.ready[i]) {
                continue;
            }
            let (kind, sock) = readers.socks[i];
            // Drain a bounded batch so no socket starves the others. A receive that ends in
            // EAGAIN leaves the socket consistent (its notification descriptor fires for the
            // next message); anything else must be asked again.
            readers.touched[i] = true;
            for _ in 0..BATCH {
                match recv_frames(sock, &mut part) {
                    Ok(frames) => {
                        let now = Instant::now();
                        hub.on_message_into(kind, frames, now, &mut effects);
                    }
                    Err(zmq::Error::EAGAIN) => {
                        readers.touched[i] = false;
                        break;
                    }
                    Err(zmq::Error::EINTR) => break,
                    Err(e) => {
                        warn!(?kind, error = %e, "receive failed");
                        break;
                    }
                }
            }
            if effects.len() > 4096 {
                for e in effects.drain(..) {
                    run_effect(e, socks, &mut readers, &mut state_dirty, &mut parked);
                }
            }
        }
        let now = Instant::now();
        if now >= hub.next_deadline() {
            effects.extend(hub.tick(now));
        }
    }
}

/// One multipart message, without waiting: like `recv_multipart`, but with one reusable
/// `zmq_msg_t` and `zmq_msg_more` instead of a `ZMQ_RCVMORE` query per frame.
fn recv_frames(sock: &zmq::Socket, part: &mut zmq::Message) -> zmq::Result<Frames> {
    let mut frames = Vec::with_capacity(8);
    loop {
        sock.recv(part, zmq::DONTWAIT)?;
        frames.push(part.to_vec());
        if !part.get_more() {
            return Ok(frames);
        }
    }
}

/// Frames up to this size are copied into the ZeroMQ message (no allocation for the smallest,
/// one copy of a few bytes) rather than handed over, which costs a reference-count block.
const COPY_BELOW: usize = 256;

/// Send a multipart message without waiting; frames are moved into ZeroMQ where that is
/// cheaper than copying. When the first frame (a ROUTER's peer identity) is refused, nothing
/// was sent and the frames come back with the error.
fn send_frames(sock: &zmq::Socket, frames: Frames) -> Result<(), (zmq::Error, Option<Frames>)> {
    let last = frames.len().saturating_sub(1);
    if let Some(first) = frames.first() {
        let flags = if last > 0 {
            zmq::DONTWAIT | zmq::SNDMORE
        } else {
            zmq::DONTWAIT
        };
        if let Err(e) = sock.send(&first[..], flags) {
            return Err((e, Some(frames)));
        }
    }
    for (i, f) in frames.into_iter().enumerate().skip(1) {
        let flags = if i < last {
            zmq::DONTWAIT | zmq::SNDMORE
        } else {
            zmq::DONTWAIT
        };
        let res = if f.len() < COPY_BELOW {
            sock.send(&f[..], flags)
        } else {
            sock.send(f, flags)
        };
        res.map_err(|e| (e, None))?;
    }
    Ok(())
}

/// How long a message waits for its engine's socket to connect before it is dropped.
const PARK_LIMIT: Duration = Duration::from_secs(30);
/// How often parked messages are tried again.
const PARK_RETRY: Duration = Duration::from_millis(10);

/// Messages for engines whose socket is not connected (yet).
///
/// Every socket of an engine reconnects on its own timer, so an engine taken back by
/// `--restore` can answer heartbeats, and be registered, a moment before its MUX or task socket
/// is back; an engine's socket can also drop and reconnect under load. The engine-facing
/// ROUTERs are `ROUTER_MANDATORY`: a message they cannot route waits here, in order with any
/// later message for the same engine on the same socket, and is sent as soon as the engine's
/// socket is there, or dropped with a warning after [`PARK_LIMIT`].
/// The messages parked for one engine on one socket, and when the first of them was parked.
type Queue = (Instant, VecDeque<Frames>);

#[derive(Default)]
struct Parked {
    /// Per socket, per engine identity.
    queues: HashMap<Sock, HashMap<Vec<u8>, Queue>>,
    next: Option<Instant>,
}

impl Parked {
    /// Sockets whose messages may be parked: the ROUTERs that send to engines.
    fn holds(kind: Sock) -> bool {
        matches!(
            kind,
            Sock::MuxEngine | Sock::TaskEngine | Sock::ControlEngine | Sock::BcastEngine
        )
    }

    fn next_retry(&self) -> Option<Instant> {
        self.next
    }

    fn due(&self, now: Instant) -> bool {
        self.next.is_some_and(|t| now >= t)
    }

    /// Whether a message for `peer` on `kind` must queue behind earlier parked ones.
    fn has(&self, kind: Sock, peer: &[u8]) -> bool {
        self.queues.get(&kind).is_some_and(|q| q.contains_key(peer))
    }

    fn park(&mut self, kind: Sock, frames: Frames, now: Instant) {
        let peer = frames.first().cloned().unwrap_or_default();
        let entry = self
            .queues
            .entry(kind)
            .or_default()
            .entry(peer)
            .or_insert_with_key(|peer| {
                debug!(
                    ?kind,
                    peer = %String::from_utf8_lossy(peer),
                    "engine socket not connected; message parked"
                );
                (now, VecDeque::new())
            });
        entry.1.push_back(frames);
        self.next.get_or_insert(now + PARK_RETRY);
    }

    /// Send what can be sent now; drop what waited too long.
    fn retry(&mut self, socks: &Sockets, readers: &mut Readers, now: Instant) {
        self.queues.retain(|kind, peers| {
            let Some(s) = socks.get(*kind) else {
                return false;
            };
            readers.touch(*kind);
            peers.retain(|peer, (since, queue)| {
                while let Some(frames) = queue.pop_front() {
                    match send_frames(s, frames) {
                        Ok(()) => {}
                        Err((zmq::Error::EHOSTUNREACH, Some(frames))) => {
                            queue.push_front(frames);
                            break;
                        }
                        Err((err, _)) => warn!(?kind, error = %err, "send failed"),
                    }
                }
                if queue.is_empty() {
                    return false;
                }
                if now.saturating_duration_since(*since) >= PARK_LIMIT {
                    warn!(
                        ?kind,
                        peer = %String::from_utf8_lossy(peer),
                        dropped = queue.len(),
                        "engine socket did not connect in {}s; messages for it dropped",
                        PARK_LIMIT.as_secs()
                    );
                    return false;
                }
                true
            });
            !peers.is_empty()
        });
        self.next = (!self.queues.is_empty()).then_some(now + PARK_RETRY);
    }
}

fn run_effect(
    e: Effect,
    socks: &Sockets,
    readers: &mut Readers,
    state_dirty: &mut bool,
    parked: &mut Parked,
) {
    match e {
        Effect::Send(kind, frames) => {
            let Some(s) = socks.get(kind) else { return };
            readers.touch(kind);
            if Parked::holds(kind) {
                let peer = frames.first().map_or(&[][..], |f| &f[..]);
                if parked.has(kind, peer) {
                    parked.park(kind, frames, Instant::now());
                    return;
                }
            }
            let res = if kind == Sock::Registration && socks.extra_registration.is_some() {
                // the peer is on one of the two registration sockets; ROUTERs drop what they
                // cannot route, so sending on both reaches it exactly once
                let r2 = socks
                    .extra_registration
                    .as_ref()
                    .map(|r| r.send_multipart(frames.iter(), zmq::DONTWAIT));
                // (the copy above is for this rare case only)
                if let Some(Err(err)) = r2 {
                    warn!(error = %err, "send failed");
                }
                send_frames(s, frames)
            } else {
                send_frames(s, frames)
            };
            match res {
                Ok(()) => {}
                Err((zmq::Error::EHOSTUNREACH, Some(frames))) if Parked::holds(kind) => {
                    parked.park(kind, frames, Instant::now());
                }
                Err((zmq::Error::EHOSTUNREACH, _)) => {}
                Err((err, _)) => warn!(?kind, error = %err, "send failed"),
            }
        }
        Effect::SaveEngines => *state_dirty = true,
    }
}
