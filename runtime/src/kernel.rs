//! One engine's request handling on its runtime thread, and the queue to its Python thread.
//!
//! The runtime thread of each rank receives that engine's shell and control messages (over MPI,
//! or directly on rank 0), checks their signature, and either answers at once (heartbeat,
//! abort, shutdown, signal, kernel_info: these must work while Python is busy) or queues them for
//! the Python thread (execute, apply, clear). [`classify`] is the dispatch table; [`JobQueue`] is
//! the hand-over, which also implements abort (a queued request can be taken out and answered
//! `aborted` before it runs).

use crate::relay::{Channel, Life, Packet};
use crate::session::{Outbox, Request, Session};
use rpar_core::wire::{Limits, Signer, WireMessage};
use rpar_core::Header;
use serde_json::{json, Value};
use std::collections::{HashSet, VecDeque};
use std::io::Write;
use std::os::fd::OwnedFd;
use std::os::unix::net::UnixStream;
use std::sync::{Arc, Condvar, Mutex};
use tracing::{debug, info, warn};

/// What the runtime thread does with a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Run on the Python thread, in order.
    Queue,
    /// Run on the Python thread ahead of queued shell work (control `clear_request`).
    QueueFirst,
    Abort,
    Shutdown,
    Signal,
    KernelInfo,
    /// Not something an engine answers: busy/idle only (control) or logged (shell).
    Unsupported,
}

/// The dispatch table.
pub fn classify(channel: Channel, msg_type: &str) -> Action {
    match (channel, msg_type) {
        (_, "kernel_info_request") => Action::KernelInfo,
        (Channel::Shell, "execute_request" | "apply_request") => Action::Queue,
        (Channel::Control, "clear_request") => Action::QueueFirst,
        (Channel::Control, "abort_request") => Action::Abort,
        (Channel::Control, "shutdown_request") => Action::Shutdown,
        (Channel::Control, "signal_request") => Action::Signal,
        _ => Action::Unsupported,
    }
}

/// A signal named in a `signal_request`: an int, or "SIGINT" / "INT".
pub fn parse_signal(v: &Value) -> Option<i32> {
    if let Some(n) = v.as_i64() {
        return i32::try_from(n).ok().filter(|n| *n > 0 && *n < 65);
    }
    let s = v.as_str()?.trim().to_ascii_uppercase();
    let name = s.strip_prefix("SIG").unwrap_or(&s);
    Some(match name {
        "INT" => libc::SIGINT,
        "TERM" => libc::SIGTERM,
        "KILL" => libc::SIGKILL,
        "HUP" => libc::SIGHUP,
        "QUIT" => libc::SIGQUIT,
        "USR1" => libc::SIGUSR1,
        "USR2" => libc::SIGUSR2,
        "CONT" => libc::SIGCONT,
        "STOP" => libc::SIGSTOP,
        "ALRM" => libc::SIGALRM,
        _ => return name.parse().ok().filter(|n: &i32| *n > 0 && *n < 65),
    })
}

/// Work for the Python thread.
#[derive(Debug)]
pub enum Job {
    Run(Box<Request>),
    Stop,
}

#[derive(Debug, Default)]
struct QueueState {
    jobs: VecDeque<Job>,
    /// msg_ids to refuse when they arrive (abort_request for something not yet queued).
    aborted: HashSet<String>,
    running: bool,
    /// While the Python thread runs its event loop: one byte here per new job wakes it.
    waker: Option<UnixStream>,
    serving: bool,
    /// The Python thread waits on the condition variable ([`JobQueue::pop`]): only then is it
    /// notified (a notification is a futex call even when nobody waits).
    waiting: bool,
}

impl QueueState {
    fn wake(&self) {
        if let Some(w) = &self.waker {
            // a full socket already holds a wake-up: nothing is lost
            let _ = (&*w).write(&[1]);
        }
    }
}

/// The hand-over between the runtime thread and the Python thread.
#[derive(Debug, Default)]
pub struct JobQueue {
    state: Mutex<QueueState>,
    cv: Condvar,
}

impl JobQueue {
    pub fn new() -> Arc<JobQueue> {
        Arc::new(JobQueue::default())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, QueueState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Queue a request; returns it back if it was aborted in advance.
    pub fn push(&self, req: Request, first: bool) -> Option<Request> {
        let mut st = self.lock();
        if st.aborted.remove(&req.msg_id) {
            return Some(req);
        }
        let job = Job::Run(Box::new(req));
        if first {
            st.jobs.push_front(job);
        } else {
            st.jobs.push_back(job);
        }
        st.wake();
        self.notify(st);
        None
    }

    /// Wake the Python thread if it waits, after letting go of the lock (woken while the lock
    /// is still held, it would block on it at once).
    fn notify(&self, st: std::sync::MutexGuard<'_, QueueState>) {
        let waiting = st.waiting;
        drop(st);
        if waiting {
            self.cv.notify_one();
        }
    }

    /// Ask the Python thread to stop after its current job.
    pub fn stop(&self) {
        let mut st = self.lock();
        st.jobs.push_front(Job::Stop);
        st.wake();
        self.notify(st);
    }

    /// The next job if there is one (the event loop's side; it waits on [`JobQueue::arm`]'s
    /// descriptor instead of the condition variable).
    pub fn try_pop(&self) -> Option<Job> {
        let mut st = self.lock();
        let j = st.jobs.pop_front();
        st.running = matches!(j, Some(Job::Run(_)));
        j
    }

    /// Start waking an event loop: returns the descriptor it waits on (readable when jobs are
    /// queued; already readable if some are).
    pub fn arm(&self) -> std::io::Result<OwnedFd> {
        let (r, w) = UnixStream::pair()?;
        r.set_nonblocking(true)?;
        w.set_nonblocking(true)?;
        let mut st = self.lock();
        st.waker = Some(w);
        if !st.jobs.is_empty() {
            st.wake();
        }
        Ok(OwnedFd::from(r))
    }

    /// Stop waking the event loop.
    pub fn disarm(&self) {
        self.lock().waker = None;
    }

    /// Wait for the next job (called without the GIL).
    pub fn pop(&self) -> Job {
        let mut st = self.lock();
        loop {
            if let Some(j) = st.jobs.pop_front() {
                st.running = matches!(j, Job::Run(_));
                return j;
            }
            st.running = false;
            st.waiting = true;
            st = self.cv.wait(st).unwrap_or_else(|e| e.into_inner());
            st.waiting = false;
        }
    }

    /// The Python thread finished its job.
    pub fn finished(&self) {
        self.lock().running = false;
    }

    pub fn is_running(&self) -> bool {
        self.lock().running
    }

    /// The Python thread has started serving (its start-up is over).
    pub fn mark_serving(&self) {
        self.lock().serving = true;
    }

    /// Is there a request for a SIGINT to interrupt: one running, or one queued while the
    /// Python thread serves (it holds an interrupt during its own imports and raises it in the
    /// request, see imports.py)?
    pub fn wants_interrupt(&self) -> bool {
        let st = self.lock();
        st.running || (st.serving && !st.jobs.is_empty())
    }

    /// Abort: the given msg_ids (queued ones are returned to be answered now, the others are
    /// remembered), or every queued shell request when `ids` is empty.
    pub fn abort(&self, ids: &[String]) -> Vec<Request> {
        let mut st = self.lock();
        let mut out = Vec::new();
        let mut keep = VecDeque::new();
        let all = ids.is_empty();
        let wanted: HashSet<&String> = ids.iter().collect();
        while let Some(j) = st.jobs.pop_front() {
            match j {
                Job::Run(r)
                    if r.channel == Channel::Shell && (all || wanted.contains(&r.msg_id)) =>
                {
                    out.push(*r)
                }
                other => keep.push_back(other),
            }
        }
        st.jobs = keep;
        let found: HashSet<String> = out.iter().map(|r| r.msg_id.clone()).collect();
        for id in ids {
            if !found.contains(id) {
                st.aborted.insert(id.clone());
            }
        }
        out
    }
}

/// The thread that runs Python (the process main thread), for directed interrupts.
static PYTHON_THREAD: std::sync::OnceLock<libc::pthread_t> = std::sync::OnceLock::new();

/// Record the calling thread as the Python thread.
pub fn set_python_thread() {
    // SAFETY: pthread_self has no preconditions.
    let _ = PYTHON_THREAD.set(unsafe { libc::pthread_self() });
}

/// Interrupt the Python code running on this rank's main thread (KeyboardInterrupt).
///
/// SIGINT is sent to that thread itself, so a blocking call (`time.sleep`, `select`) returns
/// with EINTR and Python's handler (`default_int_handler`, installed by the support module)
/// raises at once; a flag alone would wait for the sleep to end.
pub fn interrupt_python() {
    match PYTHON_THREAD.get() {
        // SAFETY: the Python thread lives as long as the process.
        Some(t) => unsafe {
            libc::pthread_kill(*t, libc::SIGINT);
        },
        // SAFETY: PyErr_SetInterruptEx may be called from any thread without the GIL.
        None => unsafe {
            pyo3::ffi::PyErr_SetInterruptEx(libc::SIGINT);
        },
    }
}

/// The runtime-thread side of one engine.
pub struct EngineCore {
    pub session: Arc<Session>,
    verifier: Signer,
    limits: Limits,
    outbox: Outbox,
    queue: Arc<JobQueue>,
    done: bool,
    python_version: String,
}

impl EngineCore {
    pub fn new(
        session: Arc<Session>,
        verifier: Signer,
        outbox: Outbox,
        queue: Arc<JobQueue>,
        python_version: String,
    ) -> EngineCore {
        EngineCore {
            session,
            verifier,
            limits: Limits::default(),
            outbox,
            queue,
            done: false,
            python_version,
        }
    }

    /// A packet from rank 0's sockets for this engine. Returns `Life::Done` once the engine has
    /// been shut down.
    pub fn on_packet(&mut self, p: Packet) -> Option<Life> {
        match p.header.channel {
            Channel::Heartbeat => {
                if !self.done {
                    self.outbox.send(p);
                }
                None
            }
            Channel::Shell | Channel::Control => {
                let channel = p.header.channel;
                match self.parse(channel, p.frames) {
                    Ok(req) => self.dispatch(req),
                    Err(e) => {
                        warn!("dropping {channel:?} message: {e}");
                        None
                    }
                }
            }
            other => {
                debug!("ignoring {other:?} packet on an engine");
                None
            }
        }
    }

    fn parse(&mut self, channel: Channel, frames: Vec<Vec<u8>>) -> Result<Request, String> {
        let m = WireMessage::split(frames, &self.limits).map_err(|e| e.to_string())?;
        self.verifier.verify(&m).map_err(|e| e.to_string())?;
        let h = Header::parse(&m.header).map_err(|e| e.to_string())?;
        let metadata = m.metadata_value().map_err(|e| e.to_string())?;
        let content = m.content_value().map_err(|e| e.to_string())?;
        Ok(Request {
            channel,
            idents: m.idents,
            header_raw: m.header,
            msg_id: h.msg_id,
            msg_type: h.msg_type,
            metadata,
            content,
            buffers: m.buffers,
        })
    }

    fn control_md(&self, status: &str) -> Value {
        json!({ "engine": self.session.uuid, "status": status })
    }

    /// Send the reply to `req`, wrapped in busy/idle.
    fn answer(&self, req: &Request, content: Value) {
        let s = &self.session;
        let status = content
            .get("status")
            .and_then(Value::as_str)
            .unwrap_or("ok")
            .to_string();
        let rt = Session::reply_type(&req.msg_type);
        self.outbox.send_all([
            s.status(&req.header_raw, "busy"),
            s.reply(req, &rt, &content, &self.control_md(&status), vec![]),
            s.status(&req.header_raw, "idle"),
        ]);
    }

    /// The `aborted` reply of a request that will not run.
    pub fn aborted_reply(session: &Session, outbox: &Outbox, req: &Request) {
        let mut md = session.init_metadata(req);
        let content = json!({ "status": "aborted" });
        session.finish_metadata(&mut md, &content);
        let rt = Session::reply_type(&req.msg_type);
        outbox.send(session.reply(req, &rt, &content, &md, vec![]));
    }

    fn dispatch(&mut self, req: Request) -> Option<Life> {
        let action = classify(req.channel, &req.msg_type);
        debug!("{} {} → {:?}", req.msg_type, req.msg_id, action);
        if self.done && action != Action::KernelInfo {
            info!(
                "engine is shut down; {} {} aborted",
                req.msg_type, req.msg_id
            );
            if req.channel == Channel::Shell {
                Self::aborted_reply(&self.session, &self.outbox, &req);
            }
            return None;
        }
        match action {
            Action::Queue | Action::QueueFirst => {
                if let Some(req) = self.queue.push(req, action == Action::QueueFirst) {
                    info!(
                        "{} {} was aborted before it arrived",
                        req.msg_type, req.msg_id
                    );
                    Self::aborted_reply(&self.session, &self.outbox, &req);
                }
                None
            }
            Action::KernelInfo => {
                let content = self.kernel_info();
                self.answer(&req, content);
                None
            }
            Action::Abort => {
                let ids: Vec<String> = match req.content.get("msg_ids") {
                    Some(Value::String(s)) => vec![s.clone()],
                    Some(Value::Array(a)) => a
                        .iter()
                        .map(|v| {
                            v.as_str()
                                .map(str::to_string)
                                .unwrap_or_else(|| v.to_string())
                        })
                        .collect(),
                    _ => Vec::new(),
                };
                for r in self.queue.abort(&ids) {
                    info!("aborting queued {} {}", r.msg_type, r.msg_id);
                    Self::aborted_reply(&self.session, &self.outbox, &r);
                }
                self.answer(&req, json!({ "status": "ok" }));
                None
            }
            Action::Signal => {
                let sig = req.content.get("sig").and_then(parse_signal);
                let content = match sig {
                    Some(libc::SIGINT) if !self.queue.wants_interrupt() => {
                        // nothing to interrupt (Python idle or still starting: an interrupt
                        // there would end the engine's start-up, and the job with it)
                        info!("signal_request SIGINT: no request running; nothing interrupted");
                        json!({ "status": "ok" })
                    }
                    Some(libc::SIGINT) => {
                        info!("signal_request: interrupting Python");
                        interrupt_python();
                        json!({ "status": "ok" })
                    }
                    Some(sig) => {
                        info!("signal_request: sending signal {sig} to this rank");
                        // Reply first: the signal may end the process.
                        self.answer(&req, json!({ "status": "ok" }));
                        // SAFETY: kill(2) on our own pid with a validated signal number.
                        unsafe {
                            libc::kill(libc::getpid(), sig);
                        }
                        return None;
                    }
                    None => rpar_core::msg::error_content(
                        "ValueError",
                        &format!("bad signal {:?}", req.content.get("sig")),
                        "rpar-engine",
                        self.session.engine_info(Some("signal")),
                    ),
                };
                self.answer(&req, content);
                None
            }
            Action::Shutdown => {
                let restart = req.content.get("restart").cloned().unwrap_or(json!(false));
                let content = json!({ "status": "ok", "restart": restart });
                let s = &self.session;
                self.outbox.send(s.status(&req.header_raw, "busy"));
                self.outbox.send(s.reply(
                    &req,
                    "shutdown_reply",
                    &content,
                    &self.control_md("ok"),
                    vec![],
                ));
                // The Hub unregisters an engine when it sees this on IOPub (header.session = uuid).
                self.outbox.send(s.iopub_raw(
                    "shutdown",
                    "shutdown_reply",
                    &req.header_raw,
                    &json!({}),
                    serde_json::to_vec(&content).unwrap_or_default(),
                ));
                self.outbox.send(s.status(&req.header_raw, "idle"));
                for r in self.queue.abort(&[]) {
                    Self::aborted_reply(&self.session, &self.outbox, &r);
                }
                self.done = true;
                info!("engine {} shut down by request", self.session.engine_id);
                Some(Life::Done)
            }
            Action::Unsupported => {
                if req.channel == Channel::Control {
                    warn!("unsupported control message {}", req.msg_type);
                    let s = &self.session;
                    self.outbox.send(s.status(&req.header_raw, "busy"));
                    self.outbox.send(s.status(&req.header_raw, "idle"));
                } else {
                    warn!("unsupported shell message {} ignored", req.msg_type);
                }
                None
            }
        }
    }

    fn kernel_info(&self) -> Value {
        json!({
            "status": "ok",
            "protocol_version": rpar_core::msg::PROTOCOL_VERSION,
            "implementation": "rpar-engine",
            "implementation_version": env!("CARGO_PKG_VERSION"),
            "language_info": {
                "name": "python",
                "version": self.python_version,
                "mimetype": "text/x-python",
                "file_extension": ".py",
                "codemirror_mode": {"name": "ipython", "version": 3},
                "pygments_lexer": "ipython3",
                "nbconvert_exporter": "python",
            },
            "banner": format!("rpar-engine {} (Python {})", env!("CARGO_PKG_VERSION"), self.python_version),
            "help_links": [],
            "debugger": false,
        })
    }
}

#[cfg(test)]
mod tests;
