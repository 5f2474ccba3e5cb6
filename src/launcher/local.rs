//! Processes on this host: the controller, and engines either as one MPI job
//! (`mpiexec -n N rpar-engine`, every rank one engine) or as N single processes when no mpiexec
//! is found. The `mpi` kind is the same with mpiexec required and configurable.

use super::{spawn_process, Handle, LaunchError, LaunchSpec, Launcher, LauncherKind, Role, Runner};
use crate::jobscript::{self, ScriptVars, System};

/// How to call mpiexec: `mpi_cmd -n N mpi_args program args`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MpiCommand {
    pub mpi_cmd: Vec<String>,
    pub mpi_args: Vec<String>,
}

impl Default for MpiCommand {
    fn default() -> Self {
        MpiCommand {
            mpi_cmd: vec!["mpiexec".into()],
            mpi_args: Vec::new(),
        }
    }
}

impl MpiCommand {
    /// The full command line (pure).
    pub fn argv(&self, n: usize, program: &[String], args: &[String]) -> Vec<String> {
        let mut v = self.mpi_cmd.clone();
        v.push("-n".into());
        v.push(n.to_string());
        v.extend(self.mpi_args.iter().cloned());
        v.extend(program.iter().cloned());
        v.extend(args.iter().cloned());
        v
    }
}

/// `local`: the controller as a process; engines as one MPI job if mpiexec exists, else one
/// process per engine. `mpi`: both through mpiexec (required).
#[derive(Debug, Clone)]
pub struct LocalLauncher {
    pub mpi: MpiCommand,
    /// Use mpiexec for engines: `Some(true)` required (kind `mpi`), `None` when found.
    pub require_mpi: bool,
    /// Seconds between single engine processes.
    pub delay: f64,
}

impl LocalLauncher {
    pub fn local(mpi: MpiCommand, delay: f64) -> Self {
        LocalLauncher {
            mpi,
            require_mpi: false,
            delay,
        }
    }
    pub fn mpi(mpi: MpiCommand) -> Self {
        LocalLauncher {
            mpi,
            require_mpi: true,
            delay: 0.0,
        }
    }

    /// The command lines this launcher runs (pure, for dry runs and tests).
    pub fn commands(&self, spec: &LaunchSpec, role: Role, mpi_found: bool) -> Vec<Vec<String>> {
        match role {
            Role::Controller if self.require_mpi => {
                vec![self
                    .mpi
                    .argv(1, &spec.controller_cmd, &spec.controller_args)]
            }
            Role::Controller => {
                vec![[spec.controller_cmd.clone(), spec.controller_args.clone()].concat()]
            }
            Role::Engine | Role::Cluster if self.require_mpi || mpi_found => {
                vec![self.mpi.argv(spec.n, &spec.engine_cmd, &spec.engine_args)]
            }
            Role::Engine | Role::Cluster => (0..spec.n)
                .map(|_| [spec.engine_cmd.clone(), spec.engine_args.clone()].concat())
                .collect(),
        }
    }
}

impl Launcher for LocalLauncher {
    fn kind(&self) -> LauncherKind {
        if self.require_mpi {
            LauncherKind::Mpi
        } else {
            LauncherKind::Local
        }
    }

    /// The built-in mpiexec job script (`jobscripts/mpiexec.<role>`) with this launcher's
    /// programs, and its mpiexec command when one is configured.
    fn render(&self, spec: &LaunchSpec, role: Role) -> Result<String, LaunchError> {
        let system = System::Mpiexec;
        let text = jobscript::builtin(system, role).ok_or(LaunchError::NoBuiltinTemplate {
            kind: self.kind(),
            role,
        })?;
        let mut vars = ScriptVars {
            n: (role != Role::Controller).then_some(spec.n),
            profile_dir: spec.profile_dir.display().to_string(),
            cluster_id: spec.cluster_id.clone(),
            engine: jobscript::shell_join(&spec.engine_cmd),
            controller: jobscript::shell_join(&spec.controller_cmd),
            role: Some(role),
            ..Default::default()
        };
        if self.mpi != MpiCommand::default() {
            vars.mpiexec = jobscript::shell_join(
                &[self.mpi.mpi_cmd.clone(), self.mpi.mpi_args.clone()].concat(),
            );
        }
        Ok(jobscript::render(
            text,
            &jobscript::builtin_name(system, role),
            &vars,
        )?)
    }

    fn start(
        &self,
        spec: &LaunchSpec,
        role: Role,
        runner: &dyn Runner,
    ) -> Result<Vec<Handle>, LaunchError> {
        let mpi_prog = self.mpi.mpi_cmd.first().cloned().unwrap_or_default();
        let mpi_found = runner.which(&mpi_prog).is_some();
        if self.require_mpi && !mpi_found && role != Role::Controller {
            return Err(LaunchError::Spawn {
                program: mpi_prog,
                err: std::io::Error::new(std::io::ErrorKind::NotFound, "not found on PATH"),
                hint: " (install MPI, or set c.MPILauncher.mpi_cmd = ['/path/to/mpiexec'] in ipcluster_config.py)".into(),
            });
        }
        let cmds = self.commands(spec, role, mpi_found);
        let mut handles = Vec::new();
        let log = spec.log_dir();
        let many = cmds.len() > 1;
        for (i, argv) in cmds.into_iter().enumerate() {
            let name = match role {
                Role::Controller => {
                    format!("{}-{}.log", spec.stem(Role::Controller), std::process::id())
                }
                _ if many => format!("{}-{i}.log", spec.stem(Role::Engine)),
                _ => format!("{}.log", spec.stem(Role::Engine)),
            };
            handles.push(spawn_process(runner, argv, spec, log.join(name))?);
            if many && self.delay > 0.0 {
                std::thread::sleep(std::time::Duration::from_secs_f64(self.delay));
            }
        }
        Ok(handles)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> LaunchSpec {
        LaunchSpec {
            n: 3,
            controller_cmd: vec!["rpar-controller".into()],
            controller_args: vec!["--ip=*".into()],
            engine_cmd: vec!["rpar-engine".into()],
            engine_args: vec!["--timeout=10".into()],
            ..Default::default()
        }
    }

    #[test]
    fn mpi_and_plain_commands() {
        let l = LocalLauncher::local(MpiCommand::default(), 0.0);
        assert_eq!(
            l.commands(&spec(), Role::Engine, true),
            vec![vec!["mpiexec", "-n", "3", "rpar-engine", "--timeout=10"]]
        );
        assert_eq!(l.commands(&spec(), Role::Engine, false).len(), 3);
        assert_eq!(
            l.commands(&spec(), Role::Controller, true),
            vec![vec!["rpar-controller", "--ip=*"]]
        );
        let m = LocalLauncher::mpi(MpiCommand {
            mpi_cmd: vec!["mpirun".into()],
            mpi_args: vec!["--oversubscribe".into()],
        });
        assert_eq!(
            m.commands(&spec(), Role::Controller, true),
            vec![vec![
                "mpirun",
                "-n",
                "1",
                "--oversubscribe",
                "rpar-controller",
                "--ip=*"
            ]]
        );
    }
}
