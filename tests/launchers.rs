//! Launcher tests without a batch system:
//!
//! * snapshots of every rendered template and command line (`tests/snapshots/`; run with
//!   `RPAR_UPDATE_SNAPSHOTS=1` to rewrite them after an intended change, then review the diff);
//! * the files in `jobscripts/` stay usable by hand: running the raw file and running the file
//!   rendered with the same values give the same commands (stub mpiexec / programs record them).

use rpar::jobscript::{self, Role, ScriptVars, System};
use rpar::launcher::batch::{BatchLauncher, BatchSettings};
use rpar::launcher::local::{LocalLauncher, MpiCommand};
use rpar::launcher::ssh::{HostEngines, SshLauncher, SshSettings};
use rpar::launcher::winhpc::WinHpcLauncher;
use rpar::launcher::LaunchSpec;
use std::path::{Path, PathBuf};
use std::process::Command;

const ROLES: [Role; 3] = [Role::Engine, Role::Controller, Role::Cluster];

fn snapshot_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/snapshots")
}

/// Compare with `tests/snapshots/<name>`; with RPAR_UPDATE_SNAPSHOTS=1, write it instead.
fn check_snapshot(name: &str, actual: &str) -> Result<(), String> {
    let path = snapshot_dir().join(name);
    if std::env::var_os("RPAR_UPDATE_SNAPSHOTS").is_some() {
        std::fs::create_dir_all(snapshot_dir()).unwrap();
        std::fs::write(&path, actual).unwrap();
        return Ok(());
    }
    let expected = std::fs::read_to_string(&path).map_err(|e| {
        format!(
            "{}: {e} (run with RPAR_UPDATE_SNAPSHOTS=1 to create it)",
            path.display()
        )
    })?;
    if expected != actual {
        return Err(format!(
            "{} differs from the rendering:\n--- expected\n{expected}\n--- actual\n{actual}\n(RPAR_UPDATE_SNAPSHOTS=1 rewrites it)",
            path.display()
        ));
    }
    Ok(())
}

fn spec() -> LaunchSpec {
    LaunchSpec {
        n: 8,
        profile_dir: "/home/user/.ipython/profile_mpi".into(),
        cluster_id: "c1".into(),
        controller_cmd: vec!["/opt/rpar/bin/rpar-controller".into()],
        controller_args: vec!["--ip=*".into(), "--ping=1000".into()],
        engine_cmd: vec!["/opt/rpar/bin/rpar-engine".into()],
        engine_args: vec!["--timeout=30".into()],
        env: vec![
            ("IPP_CLUSTER_ID".into(), "c1".into()),
            (
                "IPP_PROFILE_DIR".into(),
                "/home/user/.ipython/profile_mpi".into(),
            ),
        ],
        work_dir: "/scratch/user".into(),
        set_id: "1700000000".into(),
    }
}

fn batch(kind: &str) -> BatchLauncher {
    let mut s = BatchSettings::defaults(kind).unwrap();
    s.queue = "short".into();
    if kind == "slurm" {
        s.account = "proj42".into();
        s.timelimit = "01:00:00".into();
        s.options = vec!["--mem-per-cpu=2G".into()];
    }
    BatchLauncher::new(s)
}

#[test]
fn snapshots_of_every_builtin_template() {
    let mut errors = Vec::new();
    for system in System::ALL {
        for role in ROLES {
            if jobscript::builtin(system, role).is_none() {
                continue;
            }
            let text = if system == System::Mpiexec {
                let vars = ScriptVars {
                    n: (role != Role::Controller).then_some(8),
                    profile_dir: "/home/user/.ipython/profile_mpi".into(),
                    cluster_id: "c1".into(),
                    engine: "/opt/rpar/bin/rpar-engine".into(),
                    controller: "/opt/rpar/bin/rpar-controller".into(),
                    mpiexec: "mpiexec --bind-to none".into(),
                    role: Some(role),
                    ..Default::default()
                };
                jobscript::render(jobscript::builtin(system, role).unwrap(), "t", &vars).unwrap()
            } else {
                batch(system.name()).render(&spec(), role).unwrap()
            };
            if let Err(e) = check_snapshot(&format!("{}.{}", system.name(), role.name()), &text) {
                errors.push(e);
            }
        }
    }
    assert!(errors.is_empty(), "{}", errors.join("\n\n"));
}

#[test]
fn snapshot_of_the_seed_pbs_template() {
    // the seed's template, verbatim but for the program name, in ipyparallel's {expr} syntax
    let seed = "#PBS -N ipython
#PBS -j oe
#PBS -l walltime=00:10:00
#PBS -l nodes={n/4}:ppn=4
#PBS -q {queue}

cd $PBS_O_WORKDIR
export PATH=$HOME/usr/local/bin
export PYTHONPATH=$HOME/usr/local/lib/python2.7/site-packages
/usr/local/bin/mpiexec -n {n} rpar-engine --profile_dir={profile_dir}
";
    let mut s = BatchSettings::defaults("pbs").unwrap();
    s.queue = "veryshort.q".into();
    s.template = Some((seed.into(), "pbs.engine.template".into()));
    let mut sp = spec();
    sp.n = 128;
    let out = BatchLauncher::new(s).render(&sp, Role::Engine).unwrap();
    assert!(out.contains("#PBS -l nodes=32:ppn=4\n#PBS -q veryshort.q\n"));
    check_snapshot("seed.pbs.engine.template", &out).unwrap();
}

#[test]
fn snapshots_of_command_lines_and_winhpc_xml() {
    let sp = spec();
    let local = LocalLauncher::local(MpiCommand::default(), 0.1);
    let mpi = LocalLauncher::mpi(MpiCommand {
        mpi_cmd: vec!["mpirun".into()],
        mpi_args: vec!["--bind-to".into(), "none".into()],
    });
    let ssh = SshLauncher {
        settings: SshSettings {
            user: "me".into(),
            ssh_args: vec!["-p".into(), "2222".into()],
            remote_profile_dir: Some("/remote/profile_ssh".into()),
            ..Default::default()
        },
    };
    let mut text = String::new();
    for (what, cmds) in [
        (
            "local engines (mpiexec found)",
            local.commands(&sp, Role::Engine, true),
        ),
        (
            "local engines (no mpiexec)",
            local.commands(&sp, Role::Engine, false),
        ),
        (
            "local controller",
            local.commands(&sp, Role::Controller, true),
        ),
        ("mpi engines", mpi.commands(&sp, Role::Engine, true)),
        ("mpi controller", mpi.commands(&sp, Role::Controller, true)),
    ] {
        text.push_str(&format!("# {what}\n"));
        for c in cmds {
            text.push_str(&jobscript::shell_join(&c));
            text.push('\n');
        }
    }
    for he in [
        HostEngines {
            host: "host1.example.com".into(),
            n: 2,
            args: None,
        },
        HostEngines {
            host: "host3.example.com".into(),
            n: 1,
            args: Some(vec!["--profile_dir=/home/different/location".into()]),
        },
    ] {
        let (argv, out) = ssh.engine_command(&sp, &he);
        text.push_str(&format!(
            "# ssh {} ({} engines), output {out}\n{}\n",
            he.host,
            he.n,
            jobscript::shell_join(&argv)
        ));
    }
    check_snapshot("commands.txt", &text).unwrap();
    let w = WinHpcLauncher::default();
    check_snapshot("winhpc.engine.xml", &w.render(&sp, Role::Engine)).unwrap();
    check_snapshot("winhpc.controller.xml", &w.render(&sp, Role::Controller)).unwrap();
}

/// Every template line is either plain text or a comment line holding the template code, so
/// rendering with no values changes nothing but those lines (which become `#`).
#[test]
fn rendering_with_no_values_only_blanks_the_template_lines() {
    for system in System::ALL {
        for role in ROLES {
            let Some(raw) = jobscript::builtin(system, role) else {
                continue;
            };
            let rendered = jobscript::render(
                raw,
                "t",
                &ScriptVars {
                    role: Some(role),
                    ..Default::default()
                },
            )
            .unwrap();
            let expected: String = raw
                .lines()
                .map(|l| {
                    if l.contains("{%") || l.contains("{{") {
                        "#".to_string()
                    } else {
                        l.to_string()
                    }
                })
                .map(|l| l + "\n")
                .collect();
            assert_eq!(rendered, expected, "{}.{}", system.name(), role.name());
            for l in raw.lines().filter(|l| l.contains("{%") || l.contains("{{")) {
                assert!(
                    l.starts_with("#{"),
                    "{}.{}: template code outside a `#{{` line: {l}",
                    system.name(),
                    role.name()
                );
            }
        }
    }
}

/// A temp dir with stub `mpiexec`, `rpar-engine` and `rpar-controller` that record how they were
/// called (the controller stub also writes the connection file a co-start script waits for).
struct Stubs {
    dir: tempfile::TempDir,
}

impl Stubs {
    fn new() -> Stubs {
        let dir = tempfile::tempdir().unwrap();
        let bin = dir.path().join("bin");
        std::fs::create_dir_all(&bin).unwrap();
        let write = |name: &str, body: &str| {
            let p = bin.join(name);
            std::fs::write(&p, format!("#!/bin/sh\n{body}\n")).unwrap();
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
        };
        write(
            "mpiexec",
            r#"echo "mpiexec $* [IPP_PROFILE_DIR=$IPP_PROFILE_DIR IPP_CLUSTER_ID=$IPP_CLUSTER_ID]" >> "$STUB_LOG""#,
        );
        write("rpar-engine", r#"echo "rpar-engine $*" >> "$STUB_LOG""#);
        for ctl in ["rpar-controller", "opt-controller"] {
            let body = r#"echo "NAME $* [IPP_PROFILE_DIR=$IPP_PROFILE_DIR IPP_CLUSTER_ID=$IPP_CLUSTER_ID]" >> "$STUB_LOG"
mkdir -p "$IPP_PROFILE_DIR/security"
echo '{}' > "$IPP_PROFILE_DIR/security/ipcontroller${IPP_CLUSTER_ID:+-$IPP_CLUSTER_ID}-engine.json"
exec sleep "${STUB_SLEEP:-0}""#;
            write(ctl, &body.replace("NAME", ctl));
        }
        write("opt-engine", r#"echo "opt-engine $*" >> "$STUB_LOG""#);
        Stubs { dir }
    }

    /// Run a script with `sh` and this environment (plus PATH and HOME); return what the stubs logged.
    fn run(&self, script: &str, env: &[(&str, String)]) -> String {
        let path = self.dir.path().join("job.sh");
        std::fs::write(&path, script).unwrap();
        let log = self.dir.path().join("stub.log");
        let _ = std::fs::remove_file(&log);
        let home = self.dir.path().join("home");
        std::fs::create_dir_all(&home).unwrap();
        let out = Command::new("sh")
            .arg(&path)
            .env_clear()
            .env(
                "PATH",
                format!("{}:/usr/bin:/bin", self.dir.path().join("bin").display()),
            )
            .env("HOME", &home)
            .env("STUB_LOG", &log)
            .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
            .current_dir(self.dir.path())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "script failed ({:?}): {}\n--- script:\n{script}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        std::fs::read_to_string(&log).unwrap_or_default()
    }
}

#[test]
fn hand_usable_scripts_and_rendered_scripts_run_the_same_commands() {
    let stubs = Stubs::new();
    let prof = stubs.dir.path().join("profile_x").display().to_string();
    for system in [
        System::Pbs,
        System::Sge,
        System::Slurm,
        System::Lsf,
        System::Mpiexec,
    ] {
        for role in ROLES {
            let Some(raw) = jobscript::builtin(system, role) else {
                continue;
            };
            let what = format!("{}.{}", system.name(), role.name());
            // a co-start script needs its controller alive until the engines are done
            let sleep = if role == Role::Cluster { "5" } else { "0" };
            let slots = [
                ("NSLOTS", "4".to_string()),
                ("STUB_SLEEP", sleep.to_string()),
            ];
            // 1. no values: the raw file and the file rendered without values agree
            let empty = jobscript::render(
                raw,
                "t",
                &ScriptVars {
                    role: Some(role),
                    ..Default::default()
                },
            )
            .unwrap();
            let a = stubs.run(raw, &slots);
            assert!(!a.is_empty(), "{what}: nothing ran");
            assert_eq!(a, stubs.run(&empty, &slots), "{what} with defaults");
            // 2. values from the environment (by hand) == the same values rendered in (rpar)
            let hand_env = vec![
                ("NSLOTS", "4".to_string()),
                ("STUB_SLEEP", sleep.to_string()),
                ("RPAR_N", "4".to_string()),
                ("IPP_PROFILE_DIR", prof.clone()),
                ("IPP_CLUSTER_ID", "c7".to_string()),
                ("RPAR_ENGINE", "opt-engine".to_string()),
                ("RPAR_ENGINE_ARGS", "--timeout=9 '--x=a b'".to_string()),
                ("RPAR_CONTROLLER", "opt-controller".to_string()),
                ("RPAR_CONTROLLER_ARGS", "--ip='*' --ping=100".to_string()),
                ("RPAR_MPIEXEC", "mpiexec --bind-to none".to_string()),
            ];
            let vars = ScriptVars {
                n: Some(4),
                profile_dir: prof.clone(),
                cluster_id: "c7".into(),
                engine: "opt-engine".into(),
                engine_args: jobscript::shell_join(&["--timeout=9", "--x=a b"]),
                controller: "opt-controller".into(),
                controller_args: jobscript::shell_join(&["--ip=*", "--ping=100"]),
                mpiexec: "mpiexec --bind-to none".into(),
                role: Some(role),
                ..Default::default()
            };
            let rendered = jobscript::render(raw, "t", &vars).unwrap();
            let by_hand = stubs.run(raw, &hand_env);
            let by_rpar = stubs.run(&rendered, &slots);
            assert_eq!(by_hand, by_rpar, "{what} with values");
            // 3. no IPP_PROFILE_DIR: the profile resolves as in IPython, from IPYTHONDIR and a
            // profile name (IPP_PROFILE), like the profile rendered in
            let ipdir = stubs.dir.path().join("ipdir").display().to_string();
            let named_env = vec![
                ("NSLOTS", "4".to_string()),
                ("STUB_SLEEP", sleep.to_string()),
                ("IPYTHONDIR", ipdir.clone()),
                ("IPP_PROFILE", "mpi".to_string()),
            ];
            let named_vars = ScriptVars {
                profile_dir: format!("{ipdir}/profile_mpi"),
                role: Some(role),
                ..Default::default()
            };
            let named = stubs.run(raw, &named_env);
            let named_rendered = jobscript::render(raw, "t", &named_vars).unwrap();
            assert_eq!(
                named,
                stubs.run(&named_rendered, &slots),
                "{what} with IPYTHONDIR and IPP_PROFILE"
            );
            assert!(
                named.contains(&format!("--profile-dir={ipdir}/profile_mpi ")),
                "{what}: {named}"
            );
            // and IPYTHONDIR alone gives its default profile
            let default = stubs.run(raw, &named_env[..3]);
            assert!(
                default.contains(&format!("--profile-dir={ipdir}/profile_default ")),
                "{what}: {default}"
            );
            if role != Role::Controller {
                assert!(
                    by_rpar.contains("mpiexec --bind-to none"),
                    "{what}: {by_rpar}"
                );
                assert!(
                    by_rpar.contains(&format!(
                        "opt-engine --profile-dir={prof} --cluster-id=c7 --timeout=9 --x=a b"
                    )),
                    "{what}: {by_rpar}"
                );
            }
            if role != Role::Engine {
                assert!(
                    by_rpar.contains(&format!(
                        "opt-controller --profile-dir={prof} --cluster-id=c7 --ip=* --ping=100"
                    )),
                    "{what}: {by_rpar}"
                );
            }
        }
    }
}

#[test]
fn rendered_directives_carry_size_queue_and_environment() {
    let sp = spec();
    let cases = [
        (
            "pbs",
            vec!["#PBS -V", "#PBS -l nodes=1:ppn=8", "#PBS -q short"],
        ),
        ("sge", vec!["#$ -V", "#$ -pe smp 8", "#$ -q short"]),
        (
            "slurm",
            vec![
                "#SBATCH --export=ALL",
                "#SBATCH --ntasks=8",
                "#SBATCH --partition=short",
                "#SBATCH --account=proj42",
                "#SBATCH --time=01:00:00",
                "#SBATCH --mem-per-cpu=2G",
            ],
        ),
        (
            "lsf",
            vec!["#BSUB -env all", "#BSUB -n 8", "#BSUB -q short"],
        ),
        ("htcondor", vec!["getenv = True", "N = 8", "queue 1"]),
    ];
    for (kind, lines) in cases {
        let out = batch(kind).render(&sp, Role::Engine).unwrap();
        for l in lines {
            assert!(
                out.lines().any(|x| x == l),
                "{kind}: no line {l:?} in\n{out}"
            );
        }
        assert!(out.contains("/opt/rpar/bin/rpar-engine"), "{kind}");
    }
}
