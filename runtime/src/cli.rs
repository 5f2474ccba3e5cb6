//! Command line, configuration and the boot message rank 0 broadcasts to every rank.
//!
//! The flags are ipengine's (`--file`, `--profile`, `--profile-dir`, `--ipython-dir`,
//! `--cluster-id`, `--timeout`, `--log-level`, `--mpi`; each may be spelled with `_` as traitlets
//! allows, e.g. `--profile_dir=...`) plus `--Class.trait=value`. Only rank 0
//! reads files (profile config `ipengine_config.py`/`.json` via `rpar_core::config`, the
//! connection file, waiting for it to appear as batch-started engines must); the other ranks get
//! the result in one broadcast, so N ranks do not run N config interpreters nor poll the
//! filesystem.

use crate::python;
use anyhow::{anyhow, Context, Result};
use clap::Parser;
use mpi::traits::*;
use rpar_core::config::{split_cli, Config};
use rpar_core::connection::{self, EngineInfo};
use rpar_core::flags::normalize_flag;
use rpar_core::profile::{cluster_id, ProfileDir};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// What the user typed.
#[derive(Debug, Parser)]
#[command(
    name = "rpar-engine",
    about = "ipyparallel engines as one MPI job: mpiexec -n N rpar-engine [--profile=NAME]",
    disable_version_flag = true
)]
pub struct Args {
    /// The engine connection file (ipcontroller-engine.json); default: the profile's security/.
    #[arg(long = "file", visible_alias = "url-file", value_name = "PATH")]
    pub file: Option<PathBuf>,
    #[command(flatten)]
    pub p: rpar_core::flags::ProfileFlags,
    /// Seconds to wait for the registration reply.
    #[arg(long)]
    pub timeout: Option<f64>,
    /// Seconds to wait for the connection file to appear.
    #[arg(long = "wait-for-url-file")]
    pub wait_for_url_file: Option<f64>,
    /// Log level: DEBUG, INFO, WARN, ERROR or 10..50.
    #[arg(long = "log-level")]
    pub log_level: Option<String>,
    /// Accepted for ipengine compatibility (rpar-engine is always MPI; ids are ranks).
    #[arg(long, num_args = 0..=1, default_missing_value = "mpi4py")]
    pub mpi: Option<String>,
    /// Python virtual environment whose site-packages the engines use (default $VIRTUAL_ENV, else
    /// the environment rpar-engine was built with).
    #[arg(long = "python-venv", value_name = "DIR")]
    pub python_venv: Option<PathBuf>,
    /// Directory to change into at start (IPEngine.work_dir).
    #[arg(long = "work-dir")]
    pub work_dir: Option<PathBuf>,
    /// SSH server to tunnel the controller connections through, `[user@]host[:port]`
    /// (IPEngine.sshserver; default: the connection file's `ssh`).
    #[arg(long = "ssh", value_name = "SERVER")]
    pub ssh: Option<String>,
    /// SSH private key for the tunnel (IPEngine.sshkey).
    #[arg(long = "sshkey", value_name = "FILE")]
    pub sshkey: Option<String>,
    /// How rank 0 talks to the controller: `native` (one connection for the whole job;
    /// rpar-controller only), `compat` (the sockets a Python ipengine opens, per engine), or
    /// `auto` (native when the connection file offers it). IPEngine.transport.
    #[arg(long, value_name = "auto|native|compat")]
    pub transport: Option<String>,
    /// Do not fork a nanny process on rank 0.
    #[arg(long = "no-nanny")]
    pub no_nanny: bool,
    /// GPUs per rank: `auto` gives each rank its share of the node's GPUs
    /// (CUDA_VISIBLE_DEVICES / ROCR_VISIBLE_DEVICES / ZE_AFFINITY_MASK) from its node-local rank,
    /// splitting a list the batch system set; `none` (default) leaves them alone. IPEngine.gpus
    #[arg(long, value_name = "auto|none")]
    pub gpus: Option<String>,
    /// Print the environment the engines would run in (Python, venv, ipyparallel, MPI, mpi4py,
    /// GPU binding) and exit: 0 if the engines can run, 1 if not.
    #[arg(long)]
    pub check: bool,
    /// Print the version and the Python this binary embeds.
    #[arg(long, short = 'V')]
    pub version: bool,
}

/// Parsed options: the flags plus the `--Class.trait=value` arguments.
#[derive(Debug)]
pub struct Opts {
    pub args: Args,
    pub config_args: Vec<String>,
    pub version: bool,
    pub nanny: bool,
}

pub fn parse(argv: &[String]) -> Result<Opts> {
    let (config_args, rest) = split_cli(argv.iter().cloned());
    let mut rest = rest.into_iter();
    let rest: Vec<String> = rest
        .next()
        .into_iter()
        .chain(rest.map(normalize_flag))
        .collect();
    let args = match Args::try_parse_from(rest) {
        Ok(a) => a,
        Err(e) => e.exit(),
    };
    Ok(Opts {
        version: args.version,
        nanny: !args.no_nanny,
        args,
        config_args,
    })
}

pub fn version_text() -> String {
    let exe = python::choose_executable(None)
        .map(|p| p.display().to_string())
        .unwrap_or_else(|| "(none found)".into());
    format!(
        "rpar-engine {}\nPython {} (built against {}; libpython from {})\nloaded libpython: {}\nPython environment: {}\nMPI: {}",
        env!("CARGO_PKG_VERSION"),
        python::BUILD_PYTHON_VERSION,
        python::BUILD_PYTHON_EXECUTABLE,
        python::BUILD_PYTHON_LIBDIR,
        python::loaded_version().split_whitespace().next().unwrap_or(""),
        exe,
        env!("RPAR_MPI_PROBE"),
    )
}

/// The rank mpiexec/srun gave this process, before MPI_Init (None: a singleton).
pub fn rank_from_env() -> Option<u32> {
    for v in [
        "OMPI_COMM_WORLD_RANK",
        "PMIX_RANK",
        "PMI_RANK",
        "MPI_LOCALRANKID_GLOBAL",
        "SLURM_PROCID",
    ] {
        if let Some(r) = std::env::var(v).ok().and_then(|s| s.parse().ok()) {
            return Some(r);
        }
    }
    None
}

/// Everything the ranks need from rank 0 before Python starts.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Boot {
    pub ok: bool,
    pub error: String,
    pub conn: Option<EngineInfo>,
    pub profile_dir: PathBuf,
    pub cluster_id: String,
    pub log_level: String,
    pub timeout_s: f64,
    pub max_heartbeat_misses: u32,
    pub work_dir: Option<PathBuf>,
    pub python_venv: Option<PathBuf>,
    /// GPU binding per rank (`--gpus` / `IPEngine.gpus`, validated).
    pub gpus: crate::gpus::Mode,
    pub startup: StartupCfg,
    pub uuids: Vec<String>,
    /// The native transport's endpoint, when rank 0 uses it (else compat).
    pub native: Option<String>,
    pub warnings: Vec<String>,
    /// IPython settings accepted (debug log lines).
    #[serde(default)]
    pub notes: Vec<String>,
    /// Rank 0's ssh tunnel to the controller, if any.
    #[serde(default)]
    pub ssh: Option<crate::tunnel::SshSpec>,
    /// Rank 0's CurveZMQ keys, if the controller uses CURVE.
    #[serde(default)]
    pub curve: Option<crate::curve::ClientCurve>,
}

/// Startup work (serializable twin of [`python::Startup`]).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct StartupCfg {
    pub script: Option<String>,
    pub command: Option<String>,
    /// IPython's own settings for the engine's shell, `{"Class": {"trait": value}}`.
    #[serde(default)]
    pub ipython_config: serde_json::Value,
}

/// Engine settings from the profile's config files and `--Class.trait=value`.
#[derive(Debug, Default)]
pub struct FileSettings {
    pub url_file: Option<String>,
    pub wait_for_url_file: Option<f64>,
    pub timeout: Option<f64>,
    pub max_heartbeat_misses: Option<i64>,
    pub startup_script: Option<String>,
    pub startup_command: Option<String>,
    pub work_dir: Option<String>,
    pub log_level: Option<String>,
    pub sshserver: Option<String>,
    pub sshkey: Option<String>,
    pub ssh_cmd: Option<Vec<String>>,
    pub curve: crate::curve::CurveSettings,
    pub transport: Option<String>,
    pub gpus: Option<String>,
    pub warnings: Vec<String>,
    /// IPython's settings for the shell ([`Config::ipython_config`]).
    pub ipython_config: serde_json::Value,
    /// Debug lines on the IPython settings accepted.
    pub notes: Vec<String>,
}

/// The one place config files are read (rpar-core's loader: `.py` and `.json`, old class names
/// such as `IPEngineApp.startup_script`, `MPI.use` accepted).
pub fn load_settings(profile_dir: &Path, cli: &[String]) -> Result<FileSettings> {
    let cfg = Config::load(profile_dir, "ipengine", cli).map_err(|e| anyhow!("{e}"))?;
    let s = |t: &str| cfg.str("IPEngine", t).map_err(|e| anyhow!("{e}"));
    let nonempty = |v: Option<String>| v.filter(|x| !x.is_empty());
    Ok(FileSettings {
        url_file: nonempty(s("url_file")?),
        wait_for_url_file: cfg
            .f64("IPEngine", "wait_for_url_file")
            .map_err(|e| anyhow!("{e}"))?,
        timeout: cfg.f64("IPEngine", "timeout").map_err(|e| anyhow!("{e}"))?,
        max_heartbeat_misses: cfg
            .i64("IPEngine", "max_heartbeat_misses")
            .map_err(|e| anyhow!("{e}"))?,
        startup_script: nonempty(s("startup_script")?),
        startup_command: nonempty(s("startup_command")?),
        work_dir: nonempty(s("work_dir")?),
        transport: nonempty(s("transport")?),
        log_level: cfg
            .get("Application", "log_level")
            .map(|v| v.value.to_string().trim_matches('"').to_string()),
        sshserver: nonempty(s("sshserver")?),
        sshkey: nonempty(s("sshkey")?),
        ssh_cmd: cfg
            .str_list("IPEngine", "ssh_cmd")
            .map_err(|e| anyhow!("{e}"))?,
        curve: crate::curve::CurveSettings {
            serverkey: nonempty(s("curve_serverkey")?),
            publickey: nonempty(s("curve_publickey")?),
            secretkey: nonempty(s("curve_secretkey")?),
        },
        gpus: nonempty(s("gpus")?),
        warnings: cfg.warnings().to_vec(),
        ipython_config: cfg.ipython_config(),
        notes: cfg.notes().to_vec(),
    })
}

fn wait_for_file(path: &Path, wait: Duration) -> Result<()> {
    let deadline = Instant::now() + wait;
    while !path.exists() {
        if Instant::now() >= deadline {
            return Err(anyhow!(
                "connection file {} did not appear within {:.1}s (start the controller first, \
                 pass --file, or raise --wait-for-url-file)",
                path.display(),
                wait.as_secs_f64()
            ));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    // the controller may still be writing it: wait until it parses
    let mut last = String::new();
    while Instant::now() < deadline + Duration::from_secs(2) {
        match connection::read::<EngineInfo>(path) {
            Ok(_) => return Ok(()),
            Err(e) => last = e.to_string(),
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Err(anyhow!("{last}"))
}

impl Boot {
    /// Rank 0: resolve everything. Errors become `ok: false` so every rank exits together.
    pub fn prepare(opts: &Opts, size: u32) -> Boot {
        match Self::try_prepare(opts, size) {
            Ok(b) => b,
            Err(e) => Boot {
                ok: false,
                error: format!("{e:#}"),
                ..Boot::default()
            },
        }
    }

    fn try_prepare(opts: &Opts, size: u32) -> Result<Boot> {
        let a = &opts.args;
        let profile = ProfileDir::resolve(&a.p.opts());
        let _ = profile.ensure();
        let cid = cluster_id(a.p.cluster_id.as_deref());
        let fs = load_settings(&profile.path, &opts.config_args)
            .with_context(|| format!("reading the engine config in {}", profile.path.display()))?;
        let conn: EngineInfo = if let Some(text) = std::env::var("IPP_CONNECTION_INFO")
            .ok()
            .filter(|s| !s.trim().is_empty())
        {
            connection::parse(&text).map_err(|e| anyhow!("IPP_CONNECTION_INFO: {e}"))?
        } else {
            let path = a
                .file
                .clone()
                .or_else(|| fs.url_file.clone().map(PathBuf::from))
                .unwrap_or_else(|| profile.connection_file(&cid, "engine"));
            let wait = a.wait_for_url_file.or(fs.wait_for_url_file).unwrap_or(10.0);
            wait_for_file(&path, Duration::from_secs_f64(wait.max(0.0)))?;
            connection::read(&path)?
        };
        if conn.signature_scheme != "hmac-sha256" {
            return Err(anyhow!(
                "signature scheme {} is not supported (hmac-sha256 only)",
                conn.signature_scheme
            ));
        }
        if !matches!(conn.pack.as_str(), "json" | "orjson") {
            return Err(anyhow!(
                "packer {:?} is not supported (json only)",
                conn.pack
            ));
        }
        // ipengine: the flag or config names the server, else the connection file does
        let ssh = crate::tunnel::SshSpec {
            server: a
                .ssh
                .clone()
                .or(fs.sshserver)
                .unwrap_or_else(|| conn.ssh.clone()),
            key: a.sshkey.clone().or(fs.sshkey),
            cmd: fs.ssh_cmd.unwrap_or_default(),
        };
        let curve = crate::curve::resolve(conn.curve_serverkey.as_deref(), &fs.curve)?;
        let gpus = match (&a.gpus, &fs.gpus) {
            (Some(g), _) => crate::gpus::Mode::parse(g, "--gpus"),
            (None, Some(g)) => crate::gpus::Mode::parse(g, "IPEngine.gpus"),
            (None, None) => Ok(crate::gpus::Mode::None),
        }
        .map_err(anyhow::Error::msg)?;
        if gpus == crate::gpus::Mode::Auto {
            if let Some(v) = std::env::var(crate::gpus::OVERRIDE_VAR)
                .ok()
                .filter(|v| !v.trim().is_empty())
            {
                crate::gpus::parse_override(&v).map_err(anyhow::Error::msg)?;
            }
        }
        let uuids = (0..size).map(|_| rpar_core::ids::new_id()).collect();
        let mut warnings = fs.warnings;
        let transport = a
            .transport
            .clone()
            .or(fs.transport)
            .unwrap_or_else(|| "auto".into());
        let native = match transport.trim().to_ascii_lowercase().as_str() {
            "compat" => None,
            "auto" => match crate::native::endpoint(&conn) {
                Ok(e) => e,
                Err(e) => {
                    warnings.push(format!("{e:#}; using the compat transport"));
                    None
                }
            },
            "native" => Some(crate::native::endpoint(&conn)?.ok_or_else(|| {
                anyhow!(
                    "--transport=native: the connection file offers no native transport (no \
                     rpar_native field: not an rpar-controller); use --transport=auto or compat"
                )
            })?),
            other => {
                return Err(anyhow!(
                    "--transport={other} (IPEngine.transport): expected auto, native or compat"
                ))
            }
        };
        if let Some(m) = &a.mpi {
            if m != "mpi4py" {
                warnings.push(format!(
                    "--mpi={m}: ignored (rpar-engine initializes MPI itself)"
                ));
            }
        }
        Ok(Boot {
            ok: true,
            error: String::new(),
            conn: Some(conn),
            profile_dir: profile.path.clone(),
            cluster_id: cid,
            log_level: a
                .log_level
                .clone()
                .or(fs.log_level)
                .unwrap_or_else(|| "INFO".into()),
            timeout_s: a.timeout.or(fs.timeout).unwrap_or(5.0).max(0.1),
            max_heartbeat_misses: fs.max_heartbeat_misses.unwrap_or(50).clamp(0, 1 << 20) as u32,
            work_dir: a
                .work_dir
                .clone()
                .or_else(|| fs.work_dir.map(PathBuf::from)),
            python_venv: a.python_venv.clone(),
            gpus,
            startup: StartupCfg {
                script: fs.startup_script,
                command: fs.startup_command,
                ipython_config: fs.ipython_config,
            },
            uuids,
            native,
            warnings,
            notes: fs.notes,
            ssh: ssh.wanted().then_some(ssh),
            curve,
        })
    }

    /// Rank 0's boot message to every rank.
    pub fn broadcast<C: Communicator>(comm: &C, boot: Boot) -> Boot {
        broadcast_json(comm, boot)
    }

    pub fn startup(&self) -> python::Startup {
        python::Startup {
            script: self.startup.script.clone(),
            command: self.startup.command.clone(),
            ipython_config: match &self.startup.ipython_config {
                serde_json::Value::Object(_) => self.startup.ipython_config.to_string(),
                _ => "{}".into(),
            },
            profile_dir: self.profile_dir.display().to_string(),
        }
    }
}

/// Registration outcome, broadcast by rank 0.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct RegOutcome {
    pub ok: bool,
    pub error: String,
    pub reg: Option<crate::net::Registered>,
}

/// Broadcast a serde value from rank 0 (collective on `comm`).
pub fn broadcast_json<C: Communicator, T: Serialize + for<'de> Deserialize<'de> + Default>(
    comm: &C,
    value: T,
) -> T {
    let root = comm.process_at_rank(0);
    let mut bytes = if comm.rank() == 0 {
        serde_json::to_vec(&value).unwrap_or_default()
    } else {
        Vec::new()
    };
    let mut len = bytes.len() as u64;
    root.broadcast_into(&mut len);
    bytes.resize(len as usize, 0);
    root.broadcast_into(&mut bytes[..]);
    if comm.rank() == 0 {
        value
    } else {
        serde_json::from_slice(&bytes).unwrap_or_default()
    }
}

/// `IPEngine.log_level` / `--log-level` (an unknown level is INFO).
fn level(s: &str) -> tracing::Level {
    rpar_core::logging::parse_level(s).unwrap_or(tracing::Level::INFO)
}

/// Logs go to the original stderr and to `<profile>/log/rpar-engine[-<cluster>]-<rank>-<pid>.log`.
pub fn init_logging(boot: &Boot, rank: u32, capture: &crate::capture::Capture) {
    use rpar_core::logging::{init, Filter, Logging, Stderr};
    let cid = if boot.cluster_id.is_empty() {
        String::new()
    } else {
        format!("-{}", boot.cluster_id)
    };
    let file = boot.profile_dir.join("log").join(format!(
        "rpar-engine{cid}-{rank}-{}.log",
        std::process::id()
    ));
    let res = init(Logging {
        filter: Filter::Level(level(&boot.log_level)),
        stderr: capture.original_stderr().map_or(Stderr::No, Stderr::File),
        file: Some(file),
        background: false,
        target: false,
    });
    if let Err(e) = res {
        eprintln!("rpar-engine: logging not set up: {e}");
    }
}

#[cfg(test)]
mod tests;
