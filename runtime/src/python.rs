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

use crate::capture::Capture;
use crate::kernel::{Job, JobQueue};
use crate::session::{Outbox, Request, Session};
use anyhow::{anyhow, Context, Result};
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyList, PyModule};
use serde_json::{json, Value};
use std::ffi::CString;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tracing::{debug, info, warn};

const SUPPORT: &str = include_str!("support.py");

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

#[pymethods]
impl Publisher {
    /// publish(kind, msg_type, content_json): an IOPub message with the current request as parent.
    fn publish(&self, kind: &str, msg_type: &str, content_json: &str) {
        // text written before this display/result goes out first
        self.capture.flush();
        let parent = self
            .parent
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
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
            &parent,
            &md,
            content_json.as_bytes().to_vec(),
        ));
    }
}

/// Startup work from the configuration.
#[derive(Debug, Clone, Default)]
pub struct Startup {
    pub script: Option<String>,
    pub command: Option<String>,
}

/// The Python side of one engine.
pub struct Executor {
    support: Py<PyModule>,
    publisher: Py<Publisher>,
    session: Arc<Session>,
    outbox: Outbox,
    capture: Arc<Capture>,
}

impl Executor {
    /// Load the support module, create the shell and run the startup script/command.
    pub fn new(
        session: Arc<Session>,
        outbox: Outbox,
        capture: Arc<Capture>,
        startup: &Startup,
    ) -> Result<Executor> {
        Python::with_gil(|py| -> Result<Executor> {
            let code = CString::new(SUPPORT)?;
            let support = PyModule::from_code(py, &code, c"_rpar_engine.py", c"_rpar_engine")
                .context("loading the engine's Python support module")?;
            let publisher = Py::new(
                py,
                Publisher {
                    session: session.clone(),
                    outbox: outbox.clone(),
                    capture: capture.clone(),
                    parent: std::sync::Mutex::new(b"{}".to_vec()),
                },
            )?;
            let kind: String = support
                .getattr("setup")?
                .call1((
                    publisher.clone_ref(py),
                    session.engine_id,
                    session.uuid.as_str(),
                    true,
                ))?
                .extract()?;
            info!("user namespace: {kind} shell");
            if let Err(e) = support.getattr("run_startup")?.call1((
                startup.script.clone().unwrap_or_default(),
                startup.command.clone().unwrap_or_default(),
            )) {
                let tb = e
                    .traceback(py)
                    .and_then(|t| t.format().ok())
                    .unwrap_or_default();
                warn!("startup script/command failed: {e}\n{tb}");
            }
            Ok(Executor {
                support: support.unbind(),
                publisher,
                session,
                outbox,
                capture,
            })
        })
    }

    /// Run jobs until told to stop.
    pub fn serve(&self, queue: &JobQueue) {
        // The engine is registered and its heart beats (runtime thread): load the serializer now
        // so the first task does not pay for the import.
        Python::with_gil(|py| {
            if let Err(e) = self
                .support
                .bind(py)
                .getattr("warm")
                .and_then(|f| f.call0())
            {
                debug!("warm-up: {e}");
            }
        });
        loop {
            match queue.pop() {
                Job::Stop => return,
                Job::Run(req) => {
                    self.handle(&req);
                    queue.finished();
                }
            }
        }
    }

    fn set_parent(&self, parent: &[u8]) {
        Python::with_gil(|py| {
            *self
                .publisher
                .borrow(py)
                .parent
                .lock()
                .unwrap_or_else(|e| e.into_inner()) = parent.to_vec();
        });
    }

    fn handle(&self, req: &Request) {
        let s = &self.session;
        debug!("running {} {}", req.msg_type, req.msg_id);
        self.outbox.send(s.status(&req.header_raw, "busy"));
        self.set_parent(&req.header_raw);
        self.capture.set_parent(Some(req.header_raw.clone()));
        let mut md = s.init_metadata(req);
        let (mut content, buffers) = match self.run(req) {
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
        Python::with_gil(|py| {
            for name in ["stdout", "stderr"] {
                if let Ok(f) = py.import("sys").and_then(|m| m.getattr(name)) {
                    let _ = f.call_method0("flush");
                }
            }
        });
        self.capture.flush();
        s.finish_metadata(&mut md, &content);
        let rt = Session::reply_type(&req.msg_type);
        self.outbox.send(s.reply(req, &rt, &content, &md, buffers));
        self.outbox.send(s.status(&req.header_raw, "idle"));
        self.capture.set_parent(None);
    }

    fn run(&self, req: &Request) -> Result<(Value, Vec<Vec<u8>>)> {
        Python::with_gil(|py| -> Result<(Value, Vec<Vec<u8>>)> {
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
                        .getattr("execute")?
                        .call1((code, silent, store, exprs))?
                        .extract()?;
                    (t, vec![])
                }
                "apply_request" => {
                    let list = PyList::new(py, req.buffers.iter().map(|b| PyBytes::new(py, b)))?;
                    let (t, out): (String, Vec<Bound<'_, PyBytes>>) =
                        support.getattr("apply")?.call1((list,))?.extract()?;
                    (t, out.iter().map(|b| b.as_bytes().to_vec()).collect())
                }
                "clear_request" => {
                    let t: String = support.getattr("clear")?.call0()?.extract()?;
                    (t, vec![])
                }
                other => return Err(anyhow!("no handler for {other}")),
            };
            let v: Value = serde_json::from_str(&text)?;
            Ok((v, bufs))
        })
    }
}
