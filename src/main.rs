//! `rpar`: the ipcluster of rpar.
//!
//! ```text
//! rpar profile create [NAME] --parallel [--profile=NAME]    rpar profile list | locate [NAME]
//! rpar cluster start [--n=N] [--engines=KIND] [--controller=KIND] [--daemonize] [-- controller args]
//! rpar cluster stop | engines | list | clean | status [--json] [--watch]
//! rpar jobscript --batch=pbs --n=128 --queue=short            (print a job script, submit nothing)
//! ```
//! Flags are spelled as in the seed manual (`--n=4`, `--profile=mpi`, `--profile_dir=...`);
//! `--Class.trait=value` sets any `ipcluster_config.py` setting.

use anyhow::Result;
use clap::{Args, Parser, Subcommand};
use rpar::cluster::{self, StartArgs};
use rpar::launcher::Role;
use rpar_core::flags::ProfileFlags;
use rpar_core::profile::ProfileDir;
use std::path::PathBuf;

#[derive(Parser, Debug)]
#[command(
    name = "rpar",
    version,
    about = "rpar: profiles, clusters (the ipcluster) and job scripts for rpar / IPython Parallel",
    after_help = "Any ipcluster_config.py setting can be given as --Class.trait=value, e.g. --Cluster.engine_timeout=120"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Create, list and locate IPython profiles.
    #[command(subcommand)]
    Profile(ProfileCmd),
    /// Start, stop, list and clean clusters (controller + engines).
    #[command(subcommand)]
    Cluster(ClusterCmd),
    /// Print the job script a batch launcher would submit (dry run: nothing is submitted).
    Jobscript(JobscriptArgs),
}

#[derive(Subcommand, Debug)]
enum ProfileCmd {
    /// Create a profile; with --parallel, write commented ipcontroller/ipengine/ipcluster configs.
    Create {
        /// Profile name (or --profile=NAME).
        name: Option<String>,
        /// Write the parallel config files.
        #[arg(long)]
        parallel: bool,
        /// Overwrite existing config files.
        #[arg(long)]
        reset: bool,
        #[command(flatten)]
        p: ProfileFlags,
    },
    /// List the profiles in the IPython directory.
    List {
        #[arg(long)]
        ipython_dir: Option<PathBuf>,
    },
    /// Print a profile's directory.
    Locate {
        name: Option<String>,
        #[command(flatten)]
        p: ProfileFlags,
    },
}

#[derive(Args, Debug, Clone, Default)]
struct StartFlags {
    #[command(flatten)]
    p: ProfileFlags,
    /// Number of engines (default: Cluster.n, else the number of CPUs).
    #[arg(long, short = 'n')]
    n: Option<usize>,
    /// Return once the cluster is up and leave it running.
    #[arg(long)]
    daemonize: bool,
    /// Engine launcher: local, mpi, ssh, pbs, sge, slurm, lsf, htcondor, winhpc, batch.
    #[arg(long)]
    engines: Option<String>,
    /// Controller launcher (same kinds).
    #[arg(long)]
    controller: Option<String>,
    /// Interface the controller listens on (--ip='*' for all).
    #[arg(long)]
    ip: Option<String>,
    /// The controller's address as engines and clients see it.
    #[arg(long)]
    location: Option<String>,
    /// Least seconds from the controller's start to the engines' (default 0: the engines start
    /// as soon as the controller has written its connection files).
    #[arg(long)]
    delay: Option<f64>,
    /// Seconds to wait for the engines to register (0: do not wait).
    #[arg(long)]
    engine_timeout: Option<f64>,
    /// Run controller and engines in ONE batch job (--engines=pbs|sge|slurm|lsf).
    #[arg(long)]
    co_start: bool,
    /// Extra controller arguments (after --).
    #[arg(last = true)]
    extra: Vec<String>,
}

#[derive(Subcommand, Debug)]
enum ClusterCmd {
    /// Start a controller and engines.
    Start(StartFlags),
    /// Stop a cluster (controller, engines, batch jobs) started by `rpar cluster start`.
    Stop {
        #[command(flatten)]
        p: ProfileFlags,
        /// Stop every cluster of the profile.
        #[arg(long)]
        all: bool,
    },
    /// Add engines to a running cluster.
    Engines(StartFlags),
    /// List clusters.
    List {
        #[command(flatten)]
        p: ProfileFlags,
        /// All profiles of the IPython directory.
        #[arg(long)]
        all: bool,
        /// Output format: text or json.
        #[arg(long, short = 'o', default_value = "text")]
        output: String,
    },
    /// Show a running cluster: controller, engines by MPI job, tasks, rates, recent failures.
    Status {
        #[command(flatten)]
        p: ProfileFlags,
        /// Print JSON (the controller's status snapshot) for scripts.
        #[arg(long)]
        json: bool,
        /// Refresh in place until interrupted.
        #[arg(long)]
        watch: bool,
        /// Seconds between refreshes with --watch.
        #[arg(long, default_value_t = 2.0)]
        interval: f64,
    },
    /// Remove logs, connection files and cluster files of stopped clusters.
    Clean {
        #[command(flatten)]
        p: ProfileFlags,
        #[arg(long)]
        force: bool,
    },
}

#[derive(Args, Debug)]
struct JobscriptArgs {
    /// pbs, sge, slurm, lsf, htcondor, mpiexec or winhpc.
    #[arg(long)]
    batch: String,
    /// engine, controller, or cluster (controller and engines in one job).
    #[arg(long, default_value = "engine")]
    role: String,
    /// The batch queue (partition).
    #[arg(long)]
    queue: Option<String>,
    #[command(flatten)]
    s: StartFlags,
}

fn start_args(f: &StartFlags, config_args: &[String]) -> StartArgs {
    StartArgs {
        profile: f.p.opts(),
        n: f.n,
        daemonize: f.daemonize,
        engines: f.engines.clone(),
        controller: f.controller.clone(),
        ip: f.ip.clone(),
        location: f.location.clone(),
        delay: f.delay,
        engine_timeout: f.engine_timeout,
        co_start: f.co_start,
        config_args: config_args.to_vec(),
        controller_extra: f.extra.clone(),
        queue: None,
    }
}

fn run() -> Result<()> {
    let raw: Vec<String> = std::env::args().collect();
    let args = rpar_core::flags::normalize(raw);
    let dashdash = args.iter().position(|a| a == "--").unwrap_or(args.len());
    let (config_args, mut rest) = rpar_core::config::split_cli(args[..dashdash].iter().cloned());
    rest.extend(args[dashdash..].iter().cloned());
    let cli = Cli::parse_from(rest);
    match cli.cmd {
        Cmd::Profile(ProfileCmd::Create {
            name,
            parallel,
            reset,
            mut p,
        }) => {
            if p.profile.is_none() {
                p.profile = name.or_else(|| Some("default".into()));
            }
            let prof = ProfileDir::resolve(&p.opts());
            let written = rpar::profiles::create(&prof, parallel, reset)?;
            for f in &written {
                eprintln!("rpar: wrote {}", f.display());
            }
            println!("{}", prof.path.display());
        }
        Cmd::Profile(ProfileCmd::List { ipython_dir }) => {
            let dir = rpar_core::profile::ipython_dir(ipython_dir.as_deref());
            println!("Available profiles in {}:", dir.display());
            for (name, _) in rpar::profiles::list(&dir) {
                println!("    {name}");
            }
        }
        Cmd::Profile(ProfileCmd::Locate { name, mut p }) => {
            if p.profile.is_none() && p.profile_dir.is_none() {
                p.profile = name.or_else(|| Some("default".into()));
            }
            let prof = ProfileDir::resolve(&p.opts());
            if !prof.path.is_dir() {
                anyhow::bail!(
                    "no profile at {} (create it with `rpar profile create --parallel`)",
                    prof.path.display()
                );
            }
            println!("{}", prof.path.display());
        }
        Cmd::Cluster(ClusterCmd::Start(f)) => cluster::start(&start_args(&f, &config_args))?,
        Cmd::Cluster(ClusterCmd::Engines(f)) => cluster::engines(&start_args(&f, &config_args))?,
        Cmd::Cluster(ClusterCmd::Stop { p, all }) => cluster::stop(&p.opts(), all)?,
        Cmd::Cluster(ClusterCmd::List { p, all, output }) => {
            cluster::list(&p.opts(), all, output == "json")?
        }
        Cmd::Cluster(ClusterCmd::Clean { p, force }) => cluster::clean(&p.opts(), force)?,
        Cmd::Cluster(ClusterCmd::Status {
            p,
            json,
            watch,
            interval,
        }) => rpar::status::status(&rpar::status::StatusArgs {
            profile: p.opts(),
            json,
            watch,
            interval,
        })?,
        Cmd::Jobscript(j) => {
            let role = Role::parse(&j.role)
                .ok_or_else(|| anyhow::anyhow!("--role must be engine, controller or cluster"))?;
            let args = StartArgs {
                queue: j.queue.clone(),
                ..start_args(&j.s, &config_args)
            };
            let text = cluster::jobscript(&args, &j.batch, role)?;
            print!("{text}");
        }
    }
    Ok(())
}

fn main() {
    if let Err(e) = run() {
        let code = e
            .downcast_ref::<cluster::ExitError>()
            .map(|x| x.code)
            .unwrap_or(1);
        eprintln!("rpar: error: {e:#}");
        std::process::exit(code);
    }
}
