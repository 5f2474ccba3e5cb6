//! `rpar`: the ipcluster of rpar. Profiles (`rpar profile`), clusters (`rpar cluster`), the
//! launchers that start controllers and engines (local processes, mpiexec, ssh, PBS, SGE, Slurm,
//! LSF, HTCondor, Windows HPC) and the job scripts they submit (`rpar jobscript`).
//!
//! The binary (`main.rs`) parses the command line with clap and calls into these modules; they
//! never see clap types.

pub mod cluster;
pub mod engine_check;
pub mod hub;
pub mod jobscript;
pub mod launcher;
pub mod profiles;
pub mod settings;

use rpar_core::profile::ProfileDir;

/// Send this process's tracing log to `<profile>/log/<stem>-<pid>.log` (`RPAR_LOG` or `info`).
pub fn init_file_log(profile: &ProfileDir, stem: &str) {
    let dir = profile.log();
    if std::fs::create_dir_all(&dir).is_err() {
        return;
    }
    let path = dir.join(format!("{stem}-{}.log", std::process::id()));
    let Ok(file) = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
    else {
        return;
    };
    let filter = tracing_subscriber::EnvFilter::try_from_env("RPAR_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(false)
        .with_writer(std::sync::Mutex::new(file))
        .try_init();
}
