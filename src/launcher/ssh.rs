//! Engines (or the controller) on other hosts over ssh.
//!
//! Engines: `c.SSHEngineSetLauncher.engines = {host: n | (n, [args])}`. For each host rpar creates
//! the remote profile's `security/` and `log/`, copies the engine connection file there with scp,
//! and starts `mpiexec -n n rpar-engine ...` (a single `rpar-engine` when n is 1) as a detached
//! session (`setsid nohup ... &`), remembering its pid for `stop`. The engines also get the
//! connection info in `IPP_CONNECTION_INFO`, `IPP_PROFILE_DIR` and `IPP_CLUSTER_ID`.
//!
//! Controller: started the same way on `hostname`, then its connection files are fetched back
//! with scp into the local profile's `security/`.

use super::local::MpiCommand;
use super::{remote_argv, Handle, LaunchError, LaunchSpec, Launcher, LauncherKind, Role, Runner};
use crate::jobscript::{shell_join, shell_quote};
use std::path::Path;
use std::time::{Duration, Instant};

/// One host of the engines dict.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostEngines {
    pub host: String,
    pub n: usize,
    /// Engine arguments for this host (instead of `engine_args`).
    pub args: Option<Vec<String>>,
}

/// Parse `{host: n | (n, [args]) | [n, [args]]}` (JSON from the config loader).
pub fn parse_engines(v: &serde_json::Value) -> Result<Vec<HostEngines>, String> {
    let obj = v
        .as_object()
        .ok_or("SSHEngineSetLauncher.engines must be a dict {host: n}")?;
    let mut out = Vec::new();
    for (host, spec) in obj {
        let bad = || format!("engines[{host:?}] must be a count or (count, [args]), not {spec}");
        let strings = |a: &serde_json::Value| {
            a.as_array()
                .ok_or_else(bad)?
                .iter()
                .map(|x| x.as_str().map(str::to_string).ok_or_else(bad))
                .collect::<Result<Vec<_>, _>>()
        };
        let (n, args) = match spec {
            serde_json::Value::Number(n) => (n.as_u64().ok_or_else(bad)? as usize, None),
            serde_json::Value::Array(a) if a.len() == 2 => {
                let n = a[0].as_u64().ok_or_else(bad)? as usize;
                (n, Some(strings(&a[1])?))
            }
            serde_json::Value::Object(o) => {
                let n = o.get("n").and_then(|x| x.as_u64()).ok_or_else(bad)? as usize;
                let args = o.get("engine_args").map(strings).transpose()?;
                (n, args)
            }
            _ => return Err(bad()),
        };
        out.push(HostEngines {
            host: host.clone(),
            n,
            args,
        });
    }
    Ok(out)
}

/// ssh settings.
#[derive(Debug, Clone, PartialEq)]
pub struct SshSettings {
    pub ssh_cmd: Vec<String>,
    pub ssh_args: Vec<String>,
    pub scp_cmd: Vec<String>,
    pub scp_args: Vec<String>,
    pub user: String,
    /// The controller's host.
    pub hostname: String,
    /// The profile directory on the remote hosts (default: the local path).
    pub remote_profile_dir: Option<String>,
    pub engines: Vec<HostEngines>,
    pub mpi: MpiCommand,
    /// Seconds to wait for a remote controller's connection files.
    pub connection_info_timeout: f64,
    /// The remote program instead of controller_cmd / engine_cmd.
    pub program: Option<Vec<String>>,
    /// Its arguments instead of controller_args / engine_args.
    pub program_args: Option<Vec<String>>,
    /// Start a remote controller with --reuse (its connection files stay valid across restarts).
    pub reuse_files: bool,
}

impl Default for SshSettings {
    fn default() -> Self {
        SshSettings {
            ssh_cmd: vec!["ssh".into()],
            ssh_args: Vec::new(),
            scp_cmd: vec!["scp".into()],
            scp_args: Vec::new(),
            user: String::new(),
            hostname: String::new(),
            remote_profile_dir: None,
            engines: Vec::new(),
            mpi: MpiCommand::default(),
            connection_info_timeout: 60.0,
            program: None,
            program_args: None,
            reuse_files: false,
        }
    }
}

/// The ssh launcher.
#[derive(Debug, Clone)]
pub struct SshLauncher {
    pub settings: SshSettings,
}

impl SshLauncher {
    fn target(&self, host: &str) -> String {
        if self.settings.user.is_empty() || host.contains('@') {
            host.to_string()
        } else {
            format!("{}@{host}", self.settings.user)
        }
    }

    fn ssh_prefix(&self) -> Vec<String> {
        [
            self.settings.ssh_cmd.clone(),
            self.settings.ssh_args.clone(),
        ]
        .concat()
    }

    /// `ssh ... [user@]host command`.
    fn ssh_argv(&self, host: &str, command: String) -> Vec<String> {
        remote_argv(&self.ssh_prefix(), &self.target(host), command)
    }

    fn remote_profile(&self, spec: &LaunchSpec) -> String {
        self.settings
            .remote_profile_dir
            .clone()
            .unwrap_or_else(|| spec.profile_dir.display().to_string())
    }

    /// The remote shell command that starts `argv` detached and prints its pid (pure).
    pub fn remote_start_command(env: &[(String, String)], argv: &[String], output: &str) -> String {
        let envs: Vec<String> = env
            .iter()
            .map(|(k, v)| format!("{k}={}", shell_quote(v)))
            .collect();
        format!(
            "{} setsid nohup {} > {} 2>&1 < /dev/null & echo $!",
            envs.join(" "),
            shell_join(argv),
            shell_quote(output)
        )
        .trim_start()
        .to_string()
    }

    /// The command lines for one engine host (pure): (ssh argv, remote output file).
    pub fn engine_command(&self, spec: &LaunchSpec, he: &HostEngines) -> (Vec<String>, String) {
        let rprof = self.remote_profile(spec);
        let args = he
            .args
            .clone()
            .or_else(|| self.settings.program_args.clone())
            .unwrap_or_else(|| spec.engine_args.clone());
        let program = self
            .settings
            .program
            .clone()
            .unwrap_or_else(|| spec.engine_cmd.clone());
        let argv = if he.n > 1 {
            self.settings.mpi.argv(he.n, &program, &args)
        } else {
            [program, args].concat()
        };
        let output = format!(
            "{rprof}/log/{}-{}.log",
            spec.stem(Role::Engine),
            he.host.replace(['@', '/'], "_")
        );
        let env = remote_env(spec, &rprof);
        let ssh = self.ssh_argv(&he.host, Self::remote_start_command(&env, &argv, &output));
        (ssh, output)
    }

    fn run_checked(
        &self,
        runner: &dyn Runner,
        argv: &[String],
        what: &str,
    ) -> Result<String, LaunchError> {
        let out = runner
            .run(argv, None, &[])
            .map_err(|err| LaunchError::Spawn {
                program: argv.first().cloned().unwrap_or_default(),
                err,
                hint: String::new(),
            })?;
        if !out.success() {
            return Err(LaunchError::Submit {
                system: LauncherKind::Ssh,
                command: format!("{what}: {}", shell_join(argv)),
                code: out.code,
                stderr: out.stderr.trim().to_string(),
                script: None,
            });
        }
        Ok(out.stdout)
    }

    fn prepare_host(
        &self,
        runner: &dyn Runner,
        host: &str,
        rprof: &str,
    ) -> Result<(), LaunchError> {
        let mk = self.ssh_argv(
            host,
            format!(
                "mkdir -p {}/security {}/log",
                shell_quote(rprof),
                shell_quote(rprof)
            ),
        );
        self.run_checked(runner, &mk, &format!("create the profile on {host}"))?;
        Ok(())
    }

    fn scp(&self, runner: &dyn Runner, from: &str, to: &str) -> Result<(), LaunchError> {
        let mut argv = [
            self.settings.scp_cmd.clone(),
            self.settings.scp_args.clone(),
        ]
        .concat();
        argv.push(from.to_string());
        argv.push(to.to_string());
        self.run_checked(runner, &argv, "copy")?;
        Ok(())
    }

    fn start_remote(
        &self,
        runner: &dyn Runner,
        host: &str,
        ssh: &[String],
        output: String,
    ) -> Result<Handle, LaunchError> {
        let stdout = self.run_checked(runner, ssh, &format!("start on {host}"))?;
        let pid = stdout
            .lines()
            .filter_map(|l| l.trim().parse::<u32>().ok())
            .next_back()
            .ok_or_else(|| LaunchError::Submit {
                system: LauncherKind::Ssh,
                command: shell_join(ssh),
                code: Some(0),
                stderr: format!("no pid in the output: {stdout:?}"),
                script: None,
            })?;
        Ok(Handle::Remote {
            host: self.target(host),
            ssh: self.ssh_prefix(),
            pid,
            output,
        })
    }
}

fn remote_env(spec: &LaunchSpec, rprof: &str) -> Vec<(String, String)> {
    // the launcher environment (c.BaseLauncher.environment) and IPP_*, with the remote profile
    spec.env
        .iter()
        .map(|(k, v)| {
            if k == "IPP_PROFILE_DIR" {
                (k.clone(), rprof.to_string())
            } else {
                (k.clone(), v.clone())
            }
        })
        .collect()
}

impl Launcher for SshLauncher {
    fn kind(&self) -> LauncherKind {
        LauncherKind::Ssh
    }

    fn engine_count(&self, n: usize) -> usize {
        if self.settings.engines.is_empty() {
            n
        } else {
            self.settings.engines.iter().map(|h| h.n).sum()
        }
    }

    fn start(
        &self,
        spec: &LaunchSpec,
        role: Role,
        runner: &dyn Runner,
    ) -> Result<Vec<Handle>, LaunchError> {
        let rprof = self.remote_profile(spec);
        match role {
            Role::Engine | Role::Cluster => {
                if self.settings.engines.is_empty() {
                    return Err(LaunchError::Config(
                        "no ssh hosts: set c.SSHEngineSetLauncher.engines = {'host1': 2, ...} in ipcluster_config.py".into(),
                    ));
                }
                let conn = rpar_core::profile::connection_file_name(&spec.cluster_id, "engine");
                let local_conn = spec.profile_dir.join("security").join(&conn);
                let mut handles = Vec::new();
                for he in &self.settings.engines {
                    self.prepare_host(runner, &he.host, &rprof)?;
                    if local_conn.exists() {
                        self.scp(
                            runner,
                            &local_conn.display().to_string(),
                            &format!("{}:{rprof}/security/{conn}", self.target(&he.host)),
                        )?;
                    }
                    let (ssh, output) = self.engine_command(spec, he);
                    handles.push(self.start_remote(runner, &he.host, &ssh, output)?);
                }
                Ok(handles)
            }
            Role::Controller => {
                let host = &self.settings.hostname;
                if host.is_empty() {
                    return Err(LaunchError::Config(
                        "set c.SSHControllerLauncher.hostname to the controller's host".into(),
                    ));
                }
                self.prepare_host(runner, host, &rprof)?;
                let output = format!("{rprof}/log/{}.log", spec.stem(Role::Controller));
                let program = self
                    .settings
                    .program
                    .clone()
                    .unwrap_or_else(|| spec.controller_cmd.clone());
                let mut args = self
                    .settings
                    .program_args
                    .clone()
                    .unwrap_or_else(|| spec.controller_args.clone());
                if self.settings.reuse_files && !args.iter().any(|a| a == "--reuse") {
                    args.push("--reuse".into());
                }
                let argv = [program, args].concat();
                let ssh = self.ssh_argv(
                    host,
                    Self::remote_start_command(&remote_env(spec, &rprof), &argv, &output),
                );
                let handle = self.start_remote(runner, host, &ssh, output)?;
                let deadline =
                    Instant::now() + Duration::from_secs_f64(self.settings.connection_info_timeout);
                for kind in ["client", "engine"] {
                    let name = rpar_core::profile::connection_file_name(&spec.cluster_id, kind);
                    let local = spec.profile_dir.join("security").join(&name);
                    loop {
                        let from = format!("{}:{rprof}/security/{name}", self.target(host));
                        if self
                            .scp(runner, &from, &local.display().to_string())
                            .is_ok()
                            && local_file_ok(&local)
                        {
                            break;
                        }
                        if Instant::now() > deadline {
                            return Err(LaunchError::Config(format!(
                                "the controller on {host} wrote no {name} within {} s; its log: {host}:{}",
                                self.settings.connection_info_timeout,
                                handle.output()
                            )));
                        }
                        std::thread::sleep(Duration::from_millis(500));
                    }
                }
                Ok(vec![handle])
            }
        }
    }
}

fn local_file_ok(p: &Path) -> bool {
    std::fs::metadata(p).map(|m| m.len() > 0).unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn seed_engines_dict() {
        let v = json!({"host1.example.com": 2, "host3.example.com": [1, ["--profile_dir=/home/different/location"]]});
        let e = parse_engines(&v).unwrap();
        assert_eq!(
            e[0],
            HostEngines {
                host: "host1.example.com".into(),
                n: 2,
                args: None
            }
        );
        assert_eq!(
            e[1].args.as_deref(),
            Some(&["--profile_dir=/home/different/location".to_string()][..])
        );
        assert!(parse_engines(&json!({"h": "two"}))
            .unwrap_err()
            .contains("engines[\"h\"]"));
    }

    #[test]
    fn engine_commands() {
        let l = SshLauncher {
            settings: SshSettings {
                user: "me".into(),
                ssh_args: vec!["-p".into(), "2222".into()],
                ..Default::default()
            },
        };
        let spec = LaunchSpec {
            n: 3,
            profile_dir: "/p".into(),
            cluster_id: "c".into(),
            engine_cmd: vec!["rpar-engine".into()],
            engine_args: vec!["--timeout=9".into()],
            env: vec![
                ("IPP_PROFILE_DIR".into(), "/p".into()),
                ("IPP_CLUSTER_ID".into(), "c".into()),
                ("PATH".into(), "/x".into()),
            ],
            set_id: "1".into(),
            ..Default::default()
        };
        let (ssh, out) = l.engine_command(
            &spec,
            &HostEngines {
                host: "h1".into(),
                n: 2,
                args: None,
            },
        );
        assert_eq!(&ssh[..4], &["ssh", "-p", "2222", "me@h1"]);
        assert_eq!(
            ssh[4],
            "IPP_PROFILE_DIR=/p IPP_CLUSTER_ID=c PATH=/x setsid nohup mpiexec -n 2 rpar-engine --timeout=9 > /p/log/ipengine-c-1-h1.log 2>&1 < /dev/null & echo $!"
        );
        assert_eq!(out, "/p/log/ipengine-c-1-h1.log");
        let (ssh, _) = l.engine_command(
            &spec,
            &HostEngines {
                host: "h3".into(),
                n: 1,
                args: Some(vec!["--profile_dir=/q".into()]),
            },
        );
        assert!(
            ssh[4].contains("setsid nohup rpar-engine --profile_dir=/q >"),
            "{}",
            ssh[4]
        );
    }
}
