//! The `rpar-controller` command line: ipcontroller's flags and aliases, spelled as the seed
//! manual spells them (`--ip=*`, `--profile=mpi`, `--reuse`, `--Class.trait=value`).
//!
//! clap parses the named flags; `--Class.trait=value` settings are taken out first (clap cannot
//! describe an open set of them), and `--foo_bar` is accepted for `--foo-bar` as traitlets does.
//! Every flag is turned into the `Class.trait` setting it stands for, so the command line,
//! config files and defaults meet in one table ([`crate::settings`]).

use clap::Parser;
use serde_json::{json, Value};

#[derive(Debug, Parser, Default)]
#[command(
    name = "rpar-controller",
    version,
    args_override_self = true,
    about = "rpar-controller: the ipyparallel controller (hub, schedulers, heartbeats, iopub, task DB)",
    after_help = "Any configurable setting can also be given as --Class.trait=value, e.g. --IPController.ip=0.0.0.0"
)]
pub struct Cli {
    #[command(flatten)]
    pub p: rpar_core::flags::ProfileFlags,
    /// Interface to listen on for clients and engines ('*' = all interfaces).
    #[arg(long)]
    pub ip: Option<String>,
    /// Transport (tcp or ipc).
    #[arg(long)]
    pub transport: Option<String>,
    /// The address or host name peers use to reach this controller.
    #[arg(long)]
    pub location: Option<String>,
    /// Heartbeat period in milliseconds.
    #[arg(long)]
    pub ping: Option<u64>,
    /// Reuse the existing connection files (same key and ports across restarts).
    #[arg(long)]
    pub reuse: bool,
    /// Re-register the engines listed in log/engines<cluster_id>.json (implies --reuse).
    #[arg(long)]
    pub restore: bool,
    /// Port pool, e.g. 10101-10120 or 1,3-5.
    #[arg(long)]
    pub ports: Option<String>,
    /// Registration port (deprecated; use --ports).
    #[arg(long)]
    pub port: Option<u16>,
    /// Task scheduler scheme: leastload, lru, plainrandom, twobin, weighted, pure, none.
    #[arg(long)]
    pub scheme: Option<String>,
    /// Most outstanding tasks per engine (0 = unlimited).
    #[arg(long)]
    pub hwm: Option<u64>,
    /// SSH server clients should tunnel through ([user@]host[:port]).
    #[arg(long)]
    pub ssh: Option<String>,
    /// SSH server engines should tunnel through.
    #[arg(long)]
    pub enginessh: Option<String>,
    /// In-memory task database (the default).
    #[arg(long)]
    pub dictdb: bool,
    /// No task database.
    #[arg(long)]
    pub nodb: bool,
    /// SQLite task database.
    #[arg(long)]
    pub sqlitedb: bool,
    /// MongoDB task database.
    #[arg(long)]
    pub mongodb: bool,
    /// Log level: DEBUG, INFO, WARN, ERROR, CRITICAL or 10..50.
    #[arg(long)]
    pub log_level: Option<String>,
    /// Shortcut for --log-level=DEBUG.
    #[arg(long)]
    pub debug: bool,
    /// Accepted for compatibility; rpar always logs to the profile's log/ directory and stderr.
    #[arg(long)]
    pub log_to_file: bool,
    /// Accepted for compatibility (rpar's schedulers are threads of one process anyway).
    #[arg(long)]
    pub usethreads: bool,
    /// Sign messages with a key (the default).
    #[arg(long)]
    pub secure: bool,
    /// Do not sign messages (key is empty). Not recommended.
    #[arg(long)]
    pub no_secure: bool,
    /// Working directory.
    #[arg(long)]
    pub work_dir: Option<std::path::PathBuf>,
    /// Extra config file to load after the profile's.
    #[arg(long)]
    pub config: Option<std::path::PathBuf>,
    /// Hub session id.
    #[arg(long)]
    pub ident: Option<String>,
    /// Hub user name.
    #[arg(long)]
    pub user: Option<String>,
    /// File holding the HMAC key.
    #[arg(long)]
    pub keyfile: Option<std::path::PathBuf>,
    /// Serve the status page and Prometheus metrics at HOST:PORT (default 127.0.0.1:0).
    #[arg(long, value_name = "HOST:PORT", num_args = 0..=1, default_missing_value = "127.0.0.1:0")]
    pub metrics: Option<String>,
}

/// The parsed command line: named flags plus `--Class.trait=value` settings in order.
#[derive(Debug, Default)]
pub struct CommandLine {
    pub cli: Cli,
    /// `(Class.trait, raw value text)` as typed.
    pub settings: Vec<(String, String)>,
}

/// Is `arg` a `--Class.trait[=value]` setting?
fn class_trait(arg: &str) -> Option<&str> {
    let body = arg.strip_prefix("--")?;
    let name = body.split('=').next()?;
    let (class, tr) = name.split_once('.')?;
    let ok = class.chars().next().is_some_and(|c| c.is_ascii_uppercase())
        && class.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
        && !tr.is_empty()
        && tr.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
    ok.then_some(body)
}

/// Split the raw arguments into `--Class.trait=value` settings and the rest, normalize
/// `--foo_bar` to `--foo-bar`, then let clap parse the rest.
pub fn parse_args<I: IntoIterator<Item = String>>(args: I) -> Result<CommandLine, clap::Error> {
    let mut rest = Vec::new();
    let mut settings = Vec::new();
    let mut it = args.into_iter();
    if let Some(prog) = it.next() {
        rest.push(prog);
    }
    let mut it = it.peekable();
    while let Some(a) = it.next() {
        if let Some(body) = class_trait(&a) {
            match body.split_once('=') {
                Some((k, v)) => settings.push((k.to_string(), v.to_string())),
                None => {
                    let v = it.next().unwrap_or_default();
                    settings.push((body.to_string(), v));
                }
            }
            continue;
        }
        rest.push(rpar_core::flags::normalize_flag(a));
    }
    let cli = Cli::try_parse_from(rest)?;
    Ok(CommandLine { cli, settings })
}

impl CommandLine {
    /// Every named flag as the `Class.trait` setting it stands for.
    pub fn flag_settings(&self) -> Vec<(String, Value)> {
        let c = &self.cli;
        let mut out: Vec<(String, Value)> = Vec::new();
        let mut put = |k: &str, v: Value| out.push((k.to_string(), v));
        if let Some(v) = &c.ip {
            put("IPController.ip", json!(v));
        }
        if let Some(v) = &c.transport {
            put("IPController.transport", json!(v));
        }
        if let Some(v) = &c.location {
            put("IPController.location", json!(v));
        }
        if let Some(v) = c.ping {
            put("HeartMonitor.period", json!(v));
        }
        if c.reuse || c.restore {
            put("IPController.reuse_files", json!(true));
        }
        if c.restore {
            put("IPController.restore_engines", json!(true));
        }
        if let Some(v) = &c.ports {
            put("IPController.ports", json!(v));
        }
        if let Some(v) = c.port {
            put("IPController.regport", json!(v));
        }
        if let Some(v) = &c.scheme {
            put("TaskScheduler.scheme_name", json!(v));
        }
        if let Some(v) = c.hwm {
            put("TaskScheduler.hwm", json!(v));
        }
        if let Some(v) = &c.ssh {
            put("IPController.ssh_server", json!(v));
        }
        if let Some(v) = &c.enginessh {
            put("IPController.engine_ssh_server", json!(v));
        }
        for (flag, class) in [
            (c.dictdb, "DictDB"),
            (c.nodb, "NoDB"),
            (c.sqlitedb, "SQLiteDB"),
            (c.mongodb, "MongoDB"),
        ] {
            if flag {
                put("IPController.db_class", json!(class));
            }
        }
        if c.no_secure {
            put("Session.key", json!(""));
        }
        if let Some(v) = &c.ident {
            put("Session.session", json!(v));
        }
        if let Some(v) = &c.keyfile {
            put("Session.keyfile", json!(v.display().to_string()));
        }
        if let Some(v) = &c.metrics {
            put("IPController.metrics", json!(v));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> CommandLine {
        parse_args(
            std::iter::once("rpar-controller".to_string())
                .chain(args.iter().map(|s| s.to_string())),
        )
        .unwrap()
    }

    #[test]
    fn seed_spellings() {
        let c = parse(&["--ip=*", "--profile=mpi", "--reuse", "--profile_dir=/x"]);
        assert_eq!(c.cli.ip.as_deref(), Some("*"));
        assert_eq!(c.cli.p.profile.as_deref(), Some("mpi"));
        assert!(c.cli.reuse);
        assert_eq!(
            c.cli.p.profile_dir.as_deref(),
            Some(std::path::Path::new("/x"))
        );
    }

    #[test]
    fn class_trait_settings() {
        let c = parse(&[
            "--HubFactory.ip=0.0.0.0",
            "--TaskScheduler.hwm",
            "0",
            "--ping=200",
        ]);
        let s = c.flag_settings();
        assert!(s.contains(&("HeartMonitor.period".into(), json!(200))));
        assert!(c
            .settings
            .contains(&("HubFactory.ip".into(), "0.0.0.0".into())));
        assert!(c
            .settings
            .contains(&("TaskScheduler.hwm".into(), "0".into())));
    }

    #[test]
    fn unknown_flag_is_an_error() {
        assert!(parse_args(["x".to_string(), "--bogus".to_string()]).is_err());
    }
}
