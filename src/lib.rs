//! `rpar`: the ipcluster of rpar. Profiles (`rpar profile`), clusters (`rpar cluster`), the
//! launchers that start controllers and engines (local processes, mpiexec, ssh, PBS, SGE, Slurm,
//! LSF, HTCondor, Windows HPC) and the job scripts they submit (`rpar jobscript`).
//!
//! The binary (`main.rs`) parses the command line with clap and calls into these modules; they
//! never see clap types.

pub mod jobscript;
