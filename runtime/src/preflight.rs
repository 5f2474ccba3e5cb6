//! Engine pre-flight and `rpar-engine --check`.
//!
//! * **Pre-flight** ([`require_everywhere`]): once its Python is up and before anything is
//!   registered, every rank checks it can run requests: the first rank of each node imports
//!   ipyparallel's serialization, the others find it and its dependencies on `sys.path` (an
//!   import on every rank would cost each about 0.6 s of CPU before registration). If any rank cannot, the whole job exits with status 1 and the lowest such
//!   rank logs one line naming the interpreter it embeds (executable, version, prefix), where that
//!   choice came from, what is missing and the fix. Without it, a job whose Python lacks
//!   ipyparallel registers its engines and then fails every request.
//! * **`--check`** ([`check_main`]): the whole environment, printed by rank 0 (run it as a
//!   singleton or under `mpiexec`): the Python and its virtual environment, ipyparallel, the MPI
//!   library and the thread level it granted, mpi4py and the MPI library it loads (a second MPI
//!   library in the process is a warning), and each rank's GPU binding ([`crate::gpus`]). The
//!   status is 1 when a rank cannot import ipyparallel, else 0; `rpar cluster start` runs it
//!   before submitting batch jobs.

use crate::{cli, gpus, python};
use anyhow::{Context, Result};
use mpi::collective::SystemOperation;
use mpi::traits::*;
use pyo3::prelude::*;
use serde::Deserialize;
use std::ffi::CString;
use std::path::{Path, PathBuf};

/// The module every request needs.
const REQUIRED: &str = "ipyparallel.serialize";

const FACTS: &str = r#"
import json, sys

def _rpar_find(name):
    # locate a package and its subpackage without importing it (cheap: no code runs)
    import importlib.util, os
    top, _, sub = name.partition(".")
    spec = importlib.util.find_spec(top)
    if spec is None:
        raise ModuleNotFoundError("No module named %r" % top)
    if sub and not any(os.path.exists(os.path.join(d, sub))
                       or os.path.exists(os.path.join(d, sub + ".py"))
                       for d in spec.submodule_search_locations or []):
        raise ModuleNotFoundError("No module named %r" % name)
    return spec.origin

def _rpar_facts(with_mpi4py, full=True):
    d = {"version": sys.version.split()[0], "executable": sys.executable,
         "prefix": sys.prefix, "base_prefix": sys.base_prefix}
    try:
        if full:
            import ipyparallel.serialize  # noqa: F401
            import ipyparallel
            d["ipyparallel"] = ipyparallel.__version__
            d["ipyparallel_path"] = ipyparallel.__file__
        else:
            for name in ("ipyparallel.serialize", "IPython", "zmq"):
                _rpar_find(name)
    except BaseException as e:
        d["ipyparallel_error"] = "%s: %s" % (type(e).__name__, e)
    if with_mpi4py:
        # where `from mpi4py import MPI` would load its module from (mpi4py >= 4.1 picks the
        # module for the MPI in the process), without importing it: a module built for another
        # MPI would crash the process
        try:
            import importlib.util
            import mpi4py
            d["mpi4py"] = mpi4py.__version__
            spec = importlib.util.find_spec("mpi4py.MPI")
            d["mpi4py_module"] = spec.origin if spec else None
        except BaseException as e:
            d["mpi4py_error"] = "%s: %s" % (type(e).__name__, e)
    return json.dumps(d)

def _rpar_mpi4py_library():
    import mpi4py
    mpi4py.rc.initialize = False
    mpi4py.rc.finalize = False
    from mpi4py import MPI
    return MPI.Get_library_version().strip()
"#;

/// What the embedded Python says about itself.
#[derive(Debug, Default, Deserialize)]
pub struct Facts {
    pub version: String,
    pub executable: String,
    pub prefix: String,
    pub base_prefix: String,
    pub ipyparallel: Option<String>,
    pub ipyparallel_path: Option<String>,
    pub ipyparallel_error: Option<String>,
    pub mpi4py: Option<String>,
    pub mpi4py_module: Option<String>,
    pub mpi4py_error: Option<String>,
}

fn preflight_module(py: Python<'_>) -> PyResult<Bound<'_, PyModule>> {
    let code = CString::new(FACTS)?;
    PyModule::from_code(py, &code, c"<rpar-preflight>", c"_rpar_preflight")
}

/// Ask the running interpreter (GIL taken here). `full`: import ipyparallel's serialization
/// (about 0.6 s of CPU); else only find it and its dependencies on `sys.path`.
pub fn facts(with_mpi4py: bool, full: bool) -> Result<Facts> {
    Python::with_gil(|py| {
        let text: String = preflight_module(py)?
            .getattr("_rpar_facts")?
            .call1((with_mpi4py, full))?
            .extract()?;
        Ok(serde_json::from_str(&text)?)
    })
}

/// Which interpreter was chosen and why (for messages).
pub fn venv_origin(venv_opt: Option<&Path>) -> String {
    if let Some(v) = venv_opt {
        return format!("--python-venv={}", v.display());
    }
    if let Some(v) = std::env::var_os("VIRTUAL_ENV").filter(|v| !v.is_empty()) {
        let v = PathBuf::from(v);
        if v.join("bin").join("python").exists() {
            return format!("VIRTUAL_ENV={}", v.display());
        }
        return format!(
            "VIRTUAL_ENV={} has no bin/python, so the Python rpar-engine was built with",
            v.display()
        );
    }
    format!(
        "no --python-venv or VIRTUAL_ENV, so the Python rpar-engine was built with ({})",
        python::BUILD_PYTHON_EXECUTABLE
    )
}

/// The one line a failed pre-flight prints.
pub fn failure_line(rank: u32, f: &Facts, origin: &str, error: &str) -> String {
    let pip = Path::new(&f.prefix).join("bin").join("python");
    format!(
        "rank {rank}: the Python rpar-engine embeds ({}, Python {}, prefix {}; chosen by {origin}) \
         cannot import {REQUIRED} ({error}); fix: activate the virtual environment that holds \
         ipyparallel before starting the job (or set VIRTUAL_ENV=DIR, or pass rpar-engine \
         --python-venv=DIR), or install it into this Python: {} -m pip install ipyparallel",
        f.executable,
        f.version,
        f.prefix,
        pip.display()
    )
}

/// Every rank checks it can run requests; `Err(())` on every rank when some rank cannot
/// (collective on `comm`; the lowest failing rank logs its line). The first rank of each node
/// (`node_first`) imports ipyparallel's serialization; the others, which would otherwise all
/// pay that import before registration, find it and its dependencies (IPython, zmq) on their
/// `sys.path`.
pub fn require_everywhere<C: Communicator>(
    comm: &C,
    venv_opt: Option<&Path>,
    node_first: bool,
) -> Result<(), ()> {
    let rank = u32::try_from(comm.rank()).unwrap_or(0);
    let size = comm.size();
    let mine = match facts(false, node_first) {
        Ok(f) => f
            .ipyparallel_error
            .as_ref()
            .map(|e| failure_line(rank, &f, &venv_origin(venv_opt), e)),
        Err(e) => Some(format!(
            "rank {rank}: the embedded Python could not be asked what it can import: {e:#}"
        )),
    };
    let me = if mine.is_some() { comm.rank() } else { size };
    let mut first = size;
    comm.all_reduce_into(&me, &mut first, SystemOperation::min());
    if first == size {
        return Ok(());
    }
    if let Some(line) = mine.filter(|_| first == comm.rank()) {
        tracing::error!("{line}");
    }
    Err(())
}

/// Shared-memory (node) split: (local rank, ranks on this node). Collective on `comm`.
pub fn node_rank<C: Communicator>(comm: &C) -> (u32, u32) {
    let node = comm.split_shared(comm.rank());
    (
        u32::try_from(node.rank()).unwrap_or(0),
        u32::try_from(node.size()).unwrap_or(1),
    )
}

/// Give this rank its GPUs (before Python starts); the line for the log, if any.
pub fn bind_gpus(mode: gpus::Mode, local: (u32, u32)) -> Result<Option<String>> {
    match gpus::for_this_rank(mode, local.0, local.1).map_err(anyhow::Error::msg)? {
        Ok(b) => {
            std::env::set_var(b.var, b.value());
            Ok(Some(format!("GPU binding: {}", b.describe())))
        }
        Err(gpus::NoBinding::Disabled) => Ok(None),
        Err(gpus::NoBinding::NoDevices) => Ok(Some(format!(
            "GPU binding: --gpus=auto, but no GPUs found on this node (set {}=nvidia:G to \
             say how many there are)",
            gpus::OVERRIDE_VAR
        ))),
    }
}

/// The library mpi4py's module would take in place of a `needed` MPI library of `module`
/// (`ldd`, with this process's `LD_LIBRARY_PATH`): (soname, resolved path or None if not found).
fn mpi_library_of_module(module: &str) -> Option<(String, Option<PathBuf>)> {
    let out = std::process::Command::new("ldd")
        .arg(module)
        .output()
        .ok()?;
    String::from_utf8_lossy(&out.stdout).lines().find_map(|l| {
        let (name, rest) = l.trim().split_once(" => ")?;
        is_mpi_library(name).then(|| {
            let path = rest.split(" (").next().unwrap_or("").trim();
            let resolved = (path != "not found").then(|| PathBuf::from(path));
            (name.to_string(), resolved)
        })
    })
}

fn is_mpi_library(name: &str) -> bool {
    [
        "libmpi.so",
        "libmpich.so",
        "libmpi_cray.so",
        "libmpi_ibm.so",
    ]
    .iter()
    .any(|p| name.starts_with(p))
}

/// The mpi4py line of `--check`: its MPI module's library against the engine's.
fn mpi4py_line(f: &Facts, engine_libs: &[String]) -> String {
    let (v, module) = match (&f.mpi4py, &f.mpi4py_module, &f.mpi4py_error) {
        (Some(v), Some(m), _) => (v, m),
        (Some(v), None, _) => return format!("mpi4py {v}: its MPI module was not found"),
        (None, _, Some(e)) => {
            return format!("mpi4py: not importable ({e}); engine code cannot use MPI")
        }
        (None, _, None) => return "mpi4py: not importable; engine code cannot use MPI".into(),
    };
    let canon = |p: &Path| std::fs::canonicalize(p).unwrap_or_else(|_| p.to_path_buf());
    let engine: Vec<PathBuf> = engine_libs.iter().map(|l| canon(Path::new(l))).collect();
    match mpi_library_of_module(module) {
        Some((soname, None)) => format!(
            "WARNING: mpi4py {v}: its MPI module {module} needs {soname}, which is not found{}; \
             `from mpi4py import MPI` fails in engine code",
            if soname == "libmpi.so.12" {
                " (an MPICH build: put a directory with a link libmpi.so.12 -> libmpich.so.12 \
                 on LD_LIBRARY_PATH)"
            } else {
                ""
            }
        ),
        Some((soname, Some(path))) if !engine.contains(&canon(&path)) => format!(
            "WARNING: mpi4py {v} loads another MPI library than the engine runs on: its module \
             {module} takes {soname} => {} while the engine runs on {}; MPI calls in engine code \
             would crash or use a second, uninitialized MPI. Build mpi4py against the engine's \
             MPI (MPICC=mpicc pip install --no-binary mpi4py mpi4py), unset MPI4PY_MPIABI / \
             MPI4PY_LIBMPI, or build rpar-engine with MPICC for mpi4py's MPI",
            canon(&path).display(),
            engine_libs.join(", ")
        ),
        found => {
            let lib = Python::with_gil(|py| {
                preflight_module(py)?
                    .getattr("_rpar_mpi4py_library")?
                    .call0()?
                    .extract::<String>()
            })
            .map(|s| first_line(&s).to_string())
            .unwrap_or_else(|e| format!("(its library version unknown: {e})"));
            format!(
                "mpi4py {v}: MPI {lib}; {}",
                if found.is_some() {
                    "the same MPI library the engine runs on"
                } else {
                    "its module links no separate MPI library (the engine's is used)"
                }
            )
        }
    }
}

/// MPI libraries mapped into this process (`/proc/self/maps`), Fortran bindings left out.
fn loaded_mpi_libraries() -> Vec<String> {
    let maps = std::fs::read_to_string("/proc/self/maps").unwrap_or_default();
    let mut libs: Vec<String> = maps
        .lines()
        .filter_map(|l| l.split_whitespace().nth(5))
        .filter(|p| {
            let name = Path::new(p)
                .file_name()
                .and_then(|n| n.to_str())
                .unwrap_or("");
            is_mpi_library(name)
        })
        .map(String::from)
        .collect();
    libs.sort();
    libs.dedup();
    libs
}

fn first_line(s: &str) -> &str {
    s.lines()
        .next()
        .unwrap_or("")
        .trim_matches(|c: char| c.is_whitespace() || c == '\0')
}

/// `rpar-engine --check`.
pub fn check_main(opts: &cli::Opts) -> Result<i32> {
    let (universe, granted) = mpi::initialize_with_threading(mpi::Threading::Multiple)
        .context("MPI_Init_thread failed (is this an MPI environment?)")?;
    let world = universe.world();
    let rank = u32::try_from(world.rank()).unwrap_or(0);
    let size = world.size();
    let local = node_rank(&world);
    let mode = match &opts.args.gpus {
        Some(g) => gpus::Mode::parse(g, "--gpus").map_err(anyhow::Error::msg)?,
        None => gpus::Mode::None,
    };
    // what --gpus=auto gives (applied only with --gpus=auto)
    let gpu_line = match gpus::for_this_rank(gpus::Mode::Auto, local.0, local.1) {
        Err(e) => format!("error: {e}"),
        Ok(Ok(b)) => {
            if mode == gpus::Mode::Auto {
                std::env::set_var(b.var, b.value());
            }
            b.describe()
        }
        Ok(Err(_)) => format!(
            "no GPUs found on this node ({}=nvidia:G overrides)",
            gpus::OVERRIDE_VAR
        ),
    };
    let engine_libs = loaded_mpi_libraries();
    let venv = opts.args.python_venv.as_deref();
    let exe = python::choose_executable(venv);
    python::initialize(exe.as_deref())?;
    let f = facts(true, true)?;
    let ok = f.ipyparallel_error.is_none();

    // every rank's own line, gathered on rank 0 in rank order
    let own = format!(
        "rank {rank} (local {} of {}): ipyparallel {}; GPUs {}{}",
        local.0,
        local.1,
        match &f.ipyparallel_error {
            None => "ok".to_string(),
            Some(e) => format!(
                "MISSING ({})",
                failure_line(rank, &f, &venv_origin(venv), e)
            ),
        },
        if mode == gpus::Mode::Auto {
            "bound: "
        } else {
            "with --gpus=auto: "
        },
        gpu_line
    );
    let root = world.process_at_rank(0);
    let mut lines = Vec::new();
    if rank == 0 {
        lines.push(own);
        for r in 1..size {
            let (bytes, _) = world.process_at_rank(r).receive_vec::<u8>();
            lines.push(String::from_utf8_lossy(&bytes).into_owned());
        }
    } else {
        root.send(own.as_bytes());
    }
    let mut all_ok = i32::from(ok);
    let mine = all_ok;
    world.all_reduce_into(&mine, &mut all_ok, SystemOperation::min());
    if rank != 0 {
        return Ok(if all_ok == 1 { 0 } else { 1 });
    }

    let mut out = Vec::new();
    out.push(format!("rpar-engine {}", env!("CARGO_PKG_VERSION")));
    let in_venv = f.prefix != f.base_prefix;
    out.push(format!(
        "Python {} at {} (prefix {}{}; chosen by {})",
        f.version,
        f.executable,
        f.prefix,
        if in_venv {
            format!(", a virtual environment of {}", f.base_prefix)
        } else {
            ", not a virtual environment".into()
        },
        venv_origin(venv)
    ));
    match (&f.ipyparallel, &f.ipyparallel_error) {
        (Some(v), _) => out.push(format!(
            "ipyparallel {v} ({})",
            f.ipyparallel_path.as_deref().unwrap_or("?")
        )),
        (None, e) => out.push(format!(
            "ERROR: {}",
            failure_line(0, &f, &venv_origin(venv), e.as_deref().unwrap_or("?"))
        )),
    }
    let lib_version = mpi::environment::library_version().unwrap_or_default();
    out.push(format!(
        "MPI {} ({}); thread level granted: {granted:?}{}; {size} rank(s)",
        first_line(&lib_version),
        if engine_libs.is_empty() {
            "library path unknown".into()
        } else {
            engine_libs.join(", ")
        },
        if granted < mpi::Threading::Multiple {
            " (not Multiple: keep MPI calls out of engine code)"
        } else {
            ""
        }
    ));
    out.push(mpi4py_line(&f, &engine_libs));
    out.push(format!(
        "GPU binding: --gpus={}",
        if mode == gpus::Mode::Auto {
            "auto"
        } else {
            "none (the default; the lines below say what --gpus=auto gives)"
        }
    ));
    for l in lines {
        out.push(format!("  {l}"));
    }
    println!("{}", out.join("\n"));
    drop(universe);
    Ok(if all_ok == 1 { 0 } else { 1 })
}
