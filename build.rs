//! Build script of `rpar-engine` (runtime/): a cmake-free probe for the two native things the
//! engine links, with errors that say what to install.
//!
//! * **MPI**: `$MPICC -show` (default `mpicc`), else pkg-config (`ompi`, `mpich`, `mpi`). The MPI
//!   library directories get an rpath so the binary loads the MPI it was built against (an MPICH
//!   build, `MPICC=mpicc.mpich`, must not pick up OpenMPI's `libmpi.so` at run time). rsmpi's own
//!   build script (`mpi-sys`) follows the same `MPICC` variable, so both agree.
//! * **Python**: the interpreter pyo3 builds against (`PYO3_PYTHON`, else `$VIRTUAL_ENV`, else
//!   `python3` on `PATH`, which is the CI venv), asked through `sysconfig`. The libpython directory gets an rpath, otherwise the loader silently takes the
//!   system's `libpython3.x.so` (Debian's older 3.11) instead of the one we compiled against. The
//!   version, executable and library directory are recorded for `rpar-engine --version`.

use std::env;
use std::process::Command;

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    // Cargo also picks this file up for the root `rpar` package (it sits in its directory); only
    // the engine links MPI and Python.
    if env::var("CARGO_PKG_NAME").as_deref() != Ok("rpar-engine") {
        return;
    }
    println!("cargo:rerun-if-env-changed=MPICC");
    println!("cargo:rerun-if-env-changed=PYO3_PYTHON");
    println!("cargo:rerun-if-env-changed=VIRTUAL_ENV");
    println!("cargo:rerun-if-env-changed=PATH");
    mpi_probe();
    python_probe();
}

/// What the MPI probe found.
struct Mpi {
    how: String,
    lib_dirs: Vec<String>,
}

fn mpi_probe() {
    let mpicc = env::var("MPICC").unwrap_or_else(|_| "mpicc".to_string());
    let mut errors = Vec::new();
    let found = match Command::new(&mpicc).arg("-show").output() {
        Ok(out) if out.status.success() => {
            let text = String::from_utf8_lossy(&out.stdout).to_string();
            Some(Mpi {
                how: format!("{mpicc} -show"),
                lib_dirs: lib_dirs_of(&text),
            })
        }
        Ok(out) => {
            errors.push(format!(
                "`{mpicc} -show` failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            ));
            None
        }
        Err(e) => {
            errors.push(format!("cannot run `{mpicc}`: {e}"));
            None
        }
    };
    let found = found.or_else(|| {
        for pkg in ["ompi", "mpich", "mpi"] {
            match Command::new("pkg-config").args(["--libs", pkg]).output() {
                Ok(out) if out.status.success() => {
                    let text = String::from_utf8_lossy(&out.stdout).to_string();
                    return Some(Mpi {
                        how: format!("pkg-config {pkg}"),
                        lib_dirs: lib_dirs_of(&text),
                    });
                }
                Ok(_) => errors.push(format!("pkg-config has no `{pkg}`")),
                Err(e) => errors.push(format!("cannot run pkg-config: {e}")),
            }
        }
        None
    });
    let Some(mpi) = found else {
        panic!(
            "\n\nrpar-engine needs an MPI library with its development files, and none was found:\n  - {}\n\n\
             Install one, e.g. on Debian/Ubuntu `apt-get install libopenmpi-dev openmpi-bin` \
             (or `libmpich-dev mpich`), on RHEL `dnf install openmpi-devel`, or load your site's MPI module.\n\
             To pick a specific MPI, set MPICC to its compiler wrapper, e.g. `MPICC=mpicc.mpich cargo build`.\n\
             rsmpi also needs libclang (`apt-get install libclang-dev`).\n",
            errors.join("\n  - ")
        );
    };
    for dir in &mpi.lib_dirs {
        println!("cargo:rustc-link-arg=-Wl,-rpath,{dir}");
    }
    println!("cargo:rustc-env=RPAR_MPI_PROBE={}", mpi.how);
}

/// `-L<dir>` entries of a compiler/linker command line.
fn lib_dirs_of(cmdline: &str) -> Vec<String> {
    cmdline
        .split_whitespace()
        .filter_map(|w| w.strip_prefix("-L"))
        .filter(|d| !d.is_empty())
        .map(str::to_string)
        .collect()
}

/// The interpreter pyo3's own build script picks: `PYO3_PYTHON`, else the active venv
/// (`VIRTUAL_ENV`) or conda env, else `python3` on `PATH`.
fn python_interpreter() -> String {
    if let Ok(p) = env::var("PYO3_PYTHON") {
        return p;
    }
    for (var, sub) in [
        ("VIRTUAL_ENV", "bin/python"),
        ("CONDA_PREFIX", "bin/python"),
    ] {
        if let Ok(dir) = env::var(var) {
            let p = std::path::Path::new(&dir).join(sub);
            if p.exists() {
                return p.display().to_string();
            }
        }
    }
    "python3".to_string()
}

fn python_probe() {
    let python = python_interpreter();
    let script = "import sys, sysconfig\n\
        print(f'{sys.version_info[0]}.{sys.version_info[1]}')\n\
        print(sys.executable)\n\
        print(sysconfig.get_config_var('LIBDIR') or '')\n\
        print(sysconfig.get_config_var('Py_ENABLE_SHARED') or 0)\n";
    let out = match Command::new(&python).args(["-c", script]).output() {
        Ok(o) if o.status.success() => String::from_utf8_lossy(&o.stdout).to_string(),
        Ok(o) => panic!(
            "\n\nrpar-engine embeds CPython, but `{python}` failed: {}\n\
             Set PYO3_PYTHON to the python3 your ipyparallel clients use.\n",
            String::from_utf8_lossy(&o.stderr)
        ),
        Err(e) => panic!(
            "\n\nrpar-engine embeds CPython, but `{python}` cannot be run: {e}\n\
             Install Python 3 with its shared library (Debian: `apt-get install python3-dev`) or set \
             PYO3_PYTHON to the python3 your ipyparallel clients use.\n"
        ),
    };
    let mut lines = out.lines();
    let version = lines.next().unwrap_or("").to_string();
    let executable = lines.next().unwrap_or("").to_string();
    let libdir = lines.next().unwrap_or("").to_string();
    let shared = lines.next().unwrap_or("0").trim() == "1";
    if !shared {
        panic!(
            "\n\nrpar-engine embeds CPython and needs a shared libpython (Py_ENABLE_SHARED=1); \
             `{python}` ({executable}) was built without it.\n\
             Point PYO3_PYTHON at a Python built with --enable-shared (Debian: python3-dev; pyenv: \
             PYTHON_CONFIGURE_OPTS=--enable-shared pyenv install 3.x).\n"
        );
    }
    if !libdir.is_empty() {
        // What pyo3 >= 0.25 calls add_libpython_rpath_link_args(): without it the binary loads
        // whatever libpython3.x.so the system loader finds first (Debian's older 3.11 here).
        println!("cargo:rustc-link-arg=-Wl,-rpath,{libdir}");
    }
    println!("cargo:rustc-env=RPAR_PYTHON_VERSION={version}");
    println!("cargo:rustc-env=RPAR_PYTHON_EXECUTABLE={executable}");
    println!("cargo:rustc-env=RPAR_PYTHON_LIBDIR={libdir}");
}
