//! The launcher kinds: what `--engines=KIND` / `--controller=KIND` and
//! `c.Cluster.engine_launcher_class` name, and what the cluster file records.

use crate::jobscript::{Role, System};
use serde::{Deserialize, Serialize};
use std::fmt;

/// A launcher kind. The serde names (`local`, `mpi`, `ssh`, `pbs`, `sge`, `slurm`, `lsf`,
/// `htcondor`, `winhpc`, `batch`) are ipyparallel's entry-point names and are what cluster files
/// store.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LauncherKind {
    #[default]
    Local,
    Mpi,
    Ssh,
    Pbs,
    Sge,
    Slurm,
    Lsf,
    HtCondor,
    WinHpc,
    /// Any batch system, from the user's template and commands.
    Batch,
}

impl LauncherKind {
    pub const ALL: [LauncherKind; 10] = [
        LauncherKind::Local,
        LauncherKind::Mpi,
        LauncherKind::Ssh,
        LauncherKind::Pbs,
        LauncherKind::Sge,
        LauncherKind::Slurm,
        LauncherKind::Lsf,
        LauncherKind::HtCondor,
        LauncherKind::WinHpc,
        LauncherKind::Batch,
    ];

    /// The entry-point name, as on the command line and in cluster files.
    pub fn name(self) -> &'static str {
        match self {
            LauncherKind::Local => "local",
            LauncherKind::Mpi => "mpi",
            LauncherKind::Ssh => "ssh",
            LauncherKind::Pbs => "pbs",
            LauncherKind::Sge => "sge",
            LauncherKind::Slurm => "slurm",
            LauncherKind::Lsf => "lsf",
            LauncherKind::HtCondor => "htcondor",
            LauncherKind::WinHpc => "winhpc",
            LauncherKind::Batch => "batch",
        }
    }

    /// Every kind's name, for error messages: `local, mpi, ssh, …`.
    pub fn names() -> String {
        Self::ALL.map(Self::name).join(", ")
    }

    /// A launcher name or class name, in any spelling the old docs use, case-insensitive:
    /// `slurm`, `MPI`, `SSHEngineSetLauncher`, `ipyparallel.cluster.launcher.SlurmEngineSetLauncher`,
    /// `IPython.parallel.apps.launcher.MPIExecEngineSetLauncher`, `torque`, `condor`, ….
    pub fn parse(name: &str) -> Option<LauncherKind> {
        let last = name.rsplit('.').next().unwrap_or(name);
        let base = [
            "EngineSetLauncher",
            "ControllerLauncher",
            "EngineLauncher",
            "Launcher",
        ]
        .iter()
        .find_map(|suffix| last.strip_suffix(suffix))
        .unwrap_or(last);
        Some(match base.to_ascii_lowercase().as_str() {
            "local" => LauncherKind::Local,
            "mpiexec" | "mpi" => LauncherKind::Mpi,
            "ssh" => LauncherKind::Ssh,
            "pbs" | "torque" => LauncherKind::Pbs,
            "sge" | "gridengine" => LauncherKind::Sge,
            "slurm" => LauncherKind::Slurm,
            "lsf" => LauncherKind::Lsf,
            "htcondor" | "condor" => LauncherKind::HtCondor,
            "winhpc" | "windowshpc" => LauncherKind::WinHpc,
            "batch" => LauncherKind::Batch,
            _ => return None,
        })
    }

    /// The config class of this kind in a role, e.g. (slurm, Engine) → `SlurmEngineSetLauncher`.
    pub fn config_class(self, role: Role) -> String {
        let prefix = match self {
            LauncherKind::Local => "Local",
            LauncherKind::Mpi => "MPI",
            LauncherKind::Ssh => "SSH",
            LauncherKind::Pbs => "PBS",
            LauncherKind::Sge => "SGE",
            LauncherKind::Slurm => "Slurm",
            LauncherKind::Lsf => "LSF",
            LauncherKind::HtCondor => "HTCondor",
            LauncherKind::WinHpc => "WindowsHPC",
            LauncherKind::Batch => "Batch",
        };
        match role {
            Role::Controller => format!("{prefix}ControllerLauncher"),
            _ => format!("{prefix}EngineSetLauncher"),
        }
    }

    /// A batch system, started through submit / status / delete commands.
    pub fn is_batch(self) -> bool {
        matches!(
            self,
            LauncherKind::Pbs
                | LauncherKind::Sge
                | LauncherKind::Slurm
                | LauncherKind::Lsf
                | LauncherKind::HtCondor
                | LauncherKind::Batch
        )
    }

    /// Runs processes on this host (the controller and engines get the profile directory and
    /// cluster id as arguments).
    pub fn is_local(self) -> bool {
        matches!(self, LauncherKind::Local | LauncherKind::Mpi)
    }

    /// Can run the controller and the engines in one job (`--co-start`): the batch systems
    /// with a `cluster` job script, and `batch` (the user's template).
    pub fn can_co_start(self) -> bool {
        self.is_batch() && self != LauncherKind::HtCondor
    }

    /// The built-in job scripts (`jobscripts/<system>.<role>`) of this kind, if it has any.
    pub fn system(self) -> Option<System> {
        match self {
            LauncherKind::Local | LauncherKind::Mpi => Some(System::Mpiexec),
            LauncherKind::Pbs => Some(System::Pbs),
            LauncherKind::Sge => Some(System::Sge),
            LauncherKind::Slurm => Some(System::Slurm),
            LauncherKind::Lsf => Some(System::Lsf),
            LauncherKind::HtCondor => Some(System::HtCondor),
            LauncherKind::Ssh | LauncherKind::WinHpc | LauncherKind::Batch => None,
        }
    }
}

impl fmt::Display for LauncherKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_through_parse_and_serde() {
        for k in LauncherKind::ALL {
            assert_eq!(LauncherKind::parse(k.name()), Some(k));
            let json = serde_json::to_string(&k).unwrap();
            assert_eq!(json, format!("\"{}\"", k.name()));
            assert_eq!(serde_json::from_str::<LauncherKind>(&json).unwrap(), k);
        }
    }

    #[test]
    fn class_names_in_old_spellings() {
        let p = LauncherKind::parse;
        assert_eq!(
            p("IPython.parallel.apps.launcher.MPIExecEngineSetLauncher"),
            Some(LauncherKind::Mpi)
        );
        assert_eq!(
            p("IPython.parallel.apps.launcher.PBSControllerLauncher"),
            Some(LauncherKind::Pbs)
        );
        assert_eq!(
            p("ipyparallel.cluster.launcher.SlurmEngineSetLauncher"),
            Some(LauncherKind::Slurm)
        );
        assert_eq!(p("SSHEngineSetLauncher"), Some(LauncherKind::Ssh));
        assert_eq!(p("WindowsHPCEngineSetLauncher"), Some(LauncherKind::WinHpc));
        assert_eq!(p("MPI"), Some(LauncherKind::Mpi));
        assert_eq!(p("Local"), Some(LauncherKind::Local));
        assert_eq!(
            LauncherKind::Sge.config_class(Role::Engine),
            "SGEEngineSetLauncher"
        );
        assert_eq!(
            LauncherKind::parse("MPIExecEngineSetLauncher"),
            Some(LauncherKind::Mpi)
        );
        assert_eq!(
            LauncherKind::parse("PBSControllerLauncher"),
            Some(LauncherKind::Pbs)
        );
        assert_eq!(
            LauncherKind::parse("windowshpc"),
            Some(LauncherKind::WinHpc)
        );
        assert_eq!(LauncherKind::parse("Torque"), Some(LauncherKind::Pbs));
        assert_eq!(LauncherKind::parse("sshproxy"), None);
        assert_eq!(
            LauncherKind::WinHpc.config_class(Role::Controller),
            "WindowsHPCControllerLauncher"
        );
    }
}
