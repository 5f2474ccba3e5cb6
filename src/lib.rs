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
pub mod status;

use rpar_core::profile::ProfileDir;

/// Send this process's tracing log to `<profile>/log/<stem>-<pid>.log` (`RPAR_LOG` or `info`).
pub fn init_file_log(profile: &ProfileDir, stem: &str) {
    use rpar_core::logging::{init, Filter, Logging, Stderr};
    let path = profile
        .log()
        .join(format!("{stem}-{}.log", std::process::id()));
    // a second set-up in one process (tests) keeps the first
    let _ = init(Logging {
        filter: Filter::Env("RPAR_LOG", tracing::Level::INFO),
        stderr: Stderr::No,
        file: Some(path),
        background: false,
        target: true,
    });
}
