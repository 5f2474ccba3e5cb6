//! The embedded CPython of a rank: start-up (venv-aware), and the main-thread loop that runs the
//! engine's queued requests one at a time.
//!
//! An embedded interpreter does not look for a virtual environment by itself: it computes its
//! prefix from the program path (`rpar-engine`). We therefore set `PyConfig.executable` (and
//! `program_name`) to the venv's `bin/python` before start-up, which makes CPython read the venv's
//! `pyvenv.cfg` exactly as `venv/bin/python` would, so `sys.prefix` and site-packages are the
//! venv's. Which venv: `--python-venv`, else `$VIRTUAL_ENV`, else the interpreter the binary was
//! built with (the CI venv).
//!
//! The interpreter runs on the process main thread (so Python signal handling, i.e.
//! KeyboardInterrupt from `signal_request`, works); the runtime thread never takes the GIL.
//!
//! The Python side is three modules compiled into the binary: `imports.py` (import hooks, lazy
//! packages), `support.py` (namespace, shell, request handlers, event loop) and
//! `bound_kernel.py` (`bind_kernel()`). Between requests the thread blocks on the [`JobQueue`]
//! without the GIL, or, while the engine's asyncio loop has work (a dask Worker, a bound kernel),
//! runs that loop, which hands each arriving request back through a [`Runner`].

use crate::capture::Capture;
use crate::kernel::{Job, JobQueue};
use crate::pybuf;
use crate::session::{Outbox, Request, Session};
use anyhow::{anyhow, Context, Result};
use pyo3::intern;
use pyo3::prelude::*;
use pyo3::types::{PyList, PyModule, PyString};
use serde_json::{json, Value};
use std::ffi::CString;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::sync::Arc;
use tracing::{debug, info, warn};

const IMPORTS: &str = include_str!("imports.py");
const SUPPORT: &str = include_str!("support.py");
const BOUND_KERNEL: &str = include_str!("bound_kernel.py");

/// The Python this binary was built against.
pub const BUILD_PYTHON_VERSION: &str = env!("RPAR_PYTHON_VERSION");
pub const BUILD_PYTHON_EXECUTABLE: &str = env!("RPAR_PYTHON_EXECUTABLE");
pub const BUILD_PYTHON_LIBDIR: &str = env!("RPAR_PYTHON_LIBDIR");

/// The version string of the libpython actually loaded (works before initialization).
pub fn loaded_version() -> String {
    // SAFETY: Py_GetVersion returns a static NUL-terminated string, valid before init.
    unsafe {
        std::ffi::CStr::from_ptr(pyo3::ffi::Py_GetVersion())
            .to_string_lossy()
            .into_owned()
    }
}

/// Which `python` executable the interpreter should pretend to be.
pub fn choose_executable(venv_opt: Option<&Path>) -> Option<PathBuf> {
    let from_dir = |d: &Path| {
        let p = d.join("bin").join("python");
        p.exists().then_some(p)
    };
    if let Some(v) = venv_opt {
        return from_dir(v).or_else(|| v.is_file().then(|| v.to_path_buf()));
    }
    if let Some(v) = std::env::var_os("VIRTUAL_ENV").filter(|v| !v.is_empty()) {
        if let Some(p) = from_dir(Path::new(&v)) {
            return Some(p);
        }
    }
    let built = Path::new(BUILD_PYTHON_EXECUTABLE);
    built.exists().then(|| built.to_path_buf())
}

fn check(status: pyo3::ffi::PyStatus, what: &str) -> Result<()> {
    // SAFETY: inspecting a status struct returned by the C API.
    if unsafe { pyo3::ffi::PyStatus_Exception(status) } != 0 {
        let msg = if status.err_msg.is_null() {
            String::new()
        } else {
            // SAFETY: err_msg is a static C string when set.
            unsafe { std::ffi::CStr::from_ptr(status.err_msg) }
                .to_string_lossy()
                .into_owned()
        };
        return Err(anyhow!("Python initialization failed ({what}): {msg}"));
    }
    Ok(())
}

/// Start the interpreter (once, on the main thread) and release the GIL.
pub fn initialize(executable: Option<&Path>) -> Result<()> {
    use pyo3::ffi;
    // SAFETY: the documented PyConfig sequence: init, set fields, initialize, clear. Runs once,
    // before any other Python call, on the main thread.
    unsafe {
        let mut config: ffi::PyConfig = std::mem::zeroed();
        ffi::PyConfig_InitPythonConfig(&mut config);
        config.buffered_stdio = 0;
        config.install_signal_handlers = 1;
        config.parse_argv = 0;
        let mut result = Ok(());
        if let Some(exe) = executable {
            let c = CString::new(exe.as_os_str().as_encoded_bytes())?;
            result = check(
                ffi::PyConfig_SetBytesString(&mut config, &mut config.executable, c.as_ptr()),
                "executable",
            )
            .and_then(|_| {
                check(
                    ffi::PyConfig_SetBytesString(&mut config, &mut config.program_name, c.as_ptr()),
                    "program_name",
                )
            });
        }
        if result.is_ok() {
            let argv0 = CString::new("rpar-engine")?;
            let mut argv = [argv0.as_ptr()];
            result = check(
                ffi::PyConfig_SetBytesArgv(&mut config, 1, argv.as_mut_ptr()),
                "argv",
            );
        }
        if result.is_ok() {
            result = check(ffi::Py_InitializeFromConfig(&config), "start-up");
        }
        ffi::PyConfig_Clear(&mut config);
        result?;
        ffi::PyEval_SaveThread();
    }
    Ok(())
}

/// The import hooks module (`imports.py`), loaded once, with ipyparallel's and jupyter_client's
/// packages made lazy: call right after [`initialize`], before anything imports them.
pub fn prepare_imports() -> Result<()> {
    Python::with_gil(|py| imports(py).map(|_| ()))
}

fn imports(py: Python<'_>) -> Result<Bound<'_, PyModule>> {
    if let Ok(m) = py
        .import("sys")?
        .getattr("modules")?
        .get_item("_rpar_imports")
    {
        return Ok(m.downcast_into::<PyModule>().map_err(PyErr::from)?);
    }
    let code = CString::new(IMPORTS)?;
    let m = PyModule::from_code(py, &code, c"_rpar_imports.py", c"_rpar_imports")
        .context("loading the engine's import hooks")?;
    m.getattr("lazy_packages")?.call0()?;
    Ok(m)
}

/// `sys.version`, `sys.prefix`, `sys.executable` of the running interpreter.
pub fn describe() -> Result<(String, String, String)> {
    Python::with_gil(|py| {
        let sys = py.import("sys")?;
        let v: String = sys.getattr("version")?.extract()?;
        let p: String = sys.getattr("prefix")?.extract()?;
        let e: String = sys.getattr("executable")?.extract()?;
        Ok((v, p, e))
    })
}

/// The object Python code publishes IOPub messages through.
#[pyclass]
struct Publisher {
    session: Arc<Session>,
    outbox: Outbox,
    capture: Arc<Capture>,
    parent: std::sync::Mutex<Vec<u8>>,
}

impl Publisher {
    fn parent(&self) -> Vec<u8> {
        self.parent
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

#[pymethods]
impl Publisher {
    /// publish(kind, msg_type, content_json): an IOPub message with the current request as parent.
    fn publish(&self, kind: &str, msg_type: &str, content_json: &str) {
        // text written before this display/result goes out first
        self.capture.flush();
        let md = if matches!(
            msg_type,
            "execute_result" | "display_data" | "update_display_data"
        ) {
            json!({})
        } else {
            json!({ "engine": self.session.uuid })
        };
        self.outbox.send(self.session.iopub_raw(
            kind,
            msg_type,
            &self.parent(),
            &md,
            content_json.as_bytes().to_vec(),
        ));
    }

    /// publish_data(content_json, buffers): a `data_message` (ipyparallel's datapub: topic
    /// `datapub`, the data as serialized buffers), sent at once, while the request runs.
    fn publish_data(
        &self,
        py: Python<'_>,
        content_json: &str,
        buffers: &Bound<'_, PyList>,
    ) -> PyResult<()> {
        let buffers = pybuf::frames(py, buffers)?;
        self.capture.flush();
        let s = &self.session;
        let frames = s.build_raw(
            vec![b"datapub".to_vec()],
            "data_message",
            &self.parent(),
            &json!({ "engine": s.uuid }),
            content_json.as_bytes().to_vec(),
            buffers,
        );
        self.outbox.send(crate::relay::Packet::new(
            crate::relay::Channel::IoPub,
            s.rank,
            frames,
        ));
        Ok(())
    }
}

/// Startup work from the configuration.
#[derive(Debug, Clone, Default)]
pub struct Startup {
    pub script: Option<String>,
    pub command: Option<String>,
    /// IPython's own settings for the shell (`{"Class": {"trait": value}}`, JSON).
    pub ipython_config: String,
    /// The profile directory (startup files, the bound kernel's connection file).
    pub profile_dir: String,
}

/// What the Python thread works with.
struct Inner {
    support: Py<PyModule>,
    publisher: Py<Publisher>,
    session: Arc<Session>,
    outbox: Outbox,
    capture: Arc<Capture>,
}

/// The Python side of one engine.
pub struct Executor {
    inner: Rc<Inner>,
}

/// Handed to the support module's event loop: runs the requests queued meanwhile.
#[pyclass(unsendable)]
struct Runner {
    inner: Rc<Inner>,
    queue: Arc<JobQueue>,
}

#[pymethods]
impl Runner {
    /// Run every queued request; False once the engine is to stop.
    fn run_pending(&self) -> bool {
        while let Some(job) = self.queue.try_pop() {
            match job {
                Job::Stop => return false,
                Job::Run(req) => {
                    self.inner.handle(*req);
                    self.queue.finished();
                }
            }
        }
        true
    }
}

fn log_py_error(py: Python<'_>, what: &str, e: &PyErr) {
    let tb = e
        .traceback(py)
        .and_then(|t| t.format().ok())
        .unwrap_or_default();
    warn!("{what}: {e}\n{tb}");
}

impl Executor {
    /// Load the support modules, set up the namespace (the shell is built when first needed)
    /// and run the startup files, lines and script/command.
    pub fn new(
        session: Arc<Session>,
        outbox: Outbox,
        capture: Arc<Capture>,
        startup: &Startup,
    ) -> Result<Executor> {
        Python::with_gil(|py| -> Result<Executor> {
            imports(py)?;
            let code = CString::new(SUPPORT)?;
            let support = PyModule::from_code(py, &code, c"_rpar_engine.py", c"_rpar_engine")
                .context("loading the engine's Python support module")?;
            let code = CString::new(BOUND_KERNEL)?;
            PyModule::from_code(py, &code, c"_rpar_bound_kernel.py", c"_rpar_bound_kernel")
                .context("loading the engine's bound-kernel module")?;
            let publisher = Py::new(
                py,
                Publisher {
                    session: session.clone(),
                    outbox: outbox.clone(),
                    capture: capture.clone(),
                    parent: std::sync::Mutex::new(b"{}".to_vec()),
                },
            )?;
            let eager = startup.script.is_some() || startup.command.is_some();
            let kind: String = support
                .getattr("setup")?
                .call1((
                    publisher.clone_ref(py),
                    session.engine_id,
                    session.uuid.as_str(),
                    startup.ipython_config.as_str(),
                    startup.profile_dir.as_str(),
                    eager,
                ))?
                .extract()?;
            info!("user namespace: {kind} shell");
            if let Err(e) = support.getattr("run_startup")?.call1((
                startup.script.clone().unwrap_or_default(),
                startup.command.clone().unwrap_or_default(),
            )) {
                log_py_error(py, "startup code failed", &e);
            }
            Ok(Executor {
                inner: Rc::new(Inner {
                    support: support.unbind(),
                    publisher,
                    session,
                    outbox,
                    capture,
                }),
            })
        })
    }

    /// Run jobs until told to stop. While the event loop has work (a dask Worker, a bound
    /// kernel, tasks engine code scheduled), the loop runs between requests and hands them back.
    pub fn serve(&self, queue: &Arc<JobQueue>) {
        let inner = &self.inner;
        queue.mark_serving();
        // The engine is registered and its heart beats (runtime thread): load the serializer now
        // so the first task does not pay for the import.
        inner.call0("warm");
        let mut busy = inner.call0("loop_busy");
        loop {
            if busy {
                match self.run_loop(queue) {
                    Ok(false) => return,
                    Ok(true) => {
                        busy = inner.call0("loop_busy");
                        continue;
                    }
                    Err(e) => warn!("event loop: {e:#}; requests are served without it"),
                }
            }
            match queue.pop() {
                Job::Stop => return,
                Job::Run(req) => {
                    busy = inner.handle(*req);
                    queue.finished();
                }
            }
        }
    }

    /// Hand the thread to the event loop until it is idle (true) or the engine stops (false).
    fn run_loop(&self, queue: &Arc<JobQueue>) -> Result<bool> {
        let fd = queue.arm()?;
        let res = Python::with_gil(|py| -> PyResult<bool> {
            let runner = Py::new(
                py,
                Runner {
                    inner: self.inner.clone(),
                    queue: queue.clone(),
                },
            )?;
            self.inner
                .support
                .bind(py)
                .getattr("run_loop")?
                .call1((std::os::fd::AsRawFd::as_raw_fd(&fd), runner))?
                .extract()
        });
        queue.disarm();
        drop(fd);
        Ok(res?)
    }
}

impl Inner {
    /// Call a support function without arguments; its result as a bool (false on error).
    fn call0(&self, name: &str) -> bool {
        Python::with_gil(|py| self.call0_in(py, &PyString::new(py, name)))
    }

    /// [`Inner::call0`] with the GIL already held (and the name as a Python string, interned
    /// where it is called per request).
    fn call0_in(&self, py: Python<'_>, name: &Bound<'_, PyString>) -> bool {
        match self
            .support
            .bind(py)
            .getattr(name)
            .and_then(|f| f.call0())
            .and_then(|r| r.is_truthy())
        {
            Ok(b) => b,
            Err(e) => {
                debug!("{name}: {e}");
                false
            }
        }
    }

    fn set_parent(&self, py: Python<'_>, parent: &[u8]) {
        *self
            .publisher
            .borrow(py)
            .parent
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = parent.to_vec();
    }

    /// Flush the (possibly replaced) `sys.stdout` and `sys.stderr` (support.py's `_flush_std`).
    fn flush_std(&self, py: Python<'_>) {
        let flushed = self
            .support
            .bind(py)
            .getattr(intern!(py, "_flush_std"))
            .and_then(|f| f.call0());
        if let Err(e) = flushed {
            debug!("flushing stdout/stderr: {e}");
        }
    }

    /// Run one request and send its reply; returns whether the event loop then has work
    /// (`loop_busy`, asked in the request's own hold of the GIL).
    fn handle(&self, mut req: Request) -> bool {
        let s = &self.session;
        debug!("running {} {}", req.msg_type, req.msg_id);
        // busy rings no bell: it goes out with the request's first output or its reply, in
        // one wake-up of the runtime loop, one MPI send and one ZeroMQ batch for the three
        // (a request that stays silent longer has it sent at the loop's next wake-up, within
        // 200 ms; ipyparallel's client reads only idle, which ends the request)
        self.outbox.queue(s.status(&req.header_raw, "busy"));
        self.capture.set_parent(Some(req.header_raw.clone()));
        let mut md = s.init_metadata(&req);
        // one hold of the GIL for the request: its parent, its code, the flush of its output
        let (ran, busy) = Python::with_gil(|py| {
            self.set_parent(py, &req.header_raw);
            let ran = self.run(py, &mut req);
            self.flush_std(py);
            (ran, self.call0_in(py, intern!(py, "loop_busy")))
        });
        let (mut content, buffers) = match ran {
            Ok(x) => x,
            Err(e) => (
                rpar_core::msg::error_content(
                    "EngineError",
                    &format!("rpar-engine could not run the request: {e}"),
                    "rpar-engine",
                    json!({}),
                ),
                vec![],
            ),
        };
        if content.get("status").and_then(Value::as_str) == Some("error") {
            let method = if req.msg_type == "apply_request" {
                "apply"
            } else {
                "execute"
            };
            if let Some(o) = content.as_object_mut() {
                o.insert("engine_info".into(), s.engine_info(Some(method)));
                o.entry("traceback").or_insert(json!([]));
            }
        }
        self.capture.flush();
        s.finish_metadata(&mut md, &content);
        let rt = Session::reply_type(&req.msg_type);
        self.outbox.send_all([
            s.reply(&req, &rt, &content, &md, buffers),
            s.status(&req.header_raw, "idle"),
        ]);
        self.capture.set_parent(None);
        busy
    }

    fn run(&self, py: Python<'_>, req: &mut Request) -> Result<(Value, Vec<Vec<u8>>)> {
        let support = self.support.bind(py);
        let (text, bufs): (String, Vec<Vec<u8>>) = match req.msg_type.as_str() {
            "execute_request" => {
                let c = &req.content;
                let code = c.get("code").and_then(Value::as_str).unwrap_or("");
                let silent = c.get("silent").and_then(Value::as_bool).unwrap_or(false);
                let store = c
                    .get("store_history")
                    .and_then(Value::as_bool)
                    .unwrap_or(!silent);
                let exprs = c
                    .get("user_expressions")
                    .map(Value::to_string)
                    .unwrap_or_else(|| "{}".into());
                let t: String = support
                    .getattr(intern!(py, "execute"))?
                    .call1((code, silent, store, exprs))?
                    .extract()?;
                (t, vec![])
            }
            "apply_request" => {
                let list = pybuf::views(py, std::mem::take(&mut req.buffers))?;
                let (t, out): (String, Bound<'_, PyList>) = support
                    .getattr(intern!(py, "apply"))?
                    .call1((list,))?
                    .extract()?;
                (t, pybuf::frames(py, &out)?)
            }
            "clear_request" => {
                let t: String = support.getattr("clear")?.call0()?.extract()?;
                (t, vec![])
            }
            other => return Err(anyhow!("no handler for {other}")),
        };
        let v: Value = serde_json::from_str(&text)?;
        Ok((v, bufs))
    }
}
