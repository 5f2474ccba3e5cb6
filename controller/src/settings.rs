//! Resolved controller settings: defaults, then the profile's `ipcontroller_config.py` /
//! `.json`, then the command line (rpar-core's [`Config`] does the loading, old class names
//! such as `HubFactory` included, and names file and line on errors). This module turns that
//! table into the typed [`Settings`] the server starts from.

use crate::cli::CommandLine;
use anyhow::Context;
use rpar_core::config::{Config, ConfigError};
use rpar_core::profile::ProfileDir;
use serde_json::Value;
use std::time::Duration;

/// Load the configuration files of `profile` and apply the command line on top.
pub fn load(profile: &ProfileDir, cmd: &CommandLine) -> anyhow::Result<Settings> {
    let raw: Vec<String> = cmd
        .settings
        .iter()
        .map(|(k, v)| format!("--{k}={v}"))
        .collect();
    let mut cfg = Config::load(&profile.path, "ipcontroller", &[])?;
    if let Some(extra) = &cmd.cli.config {
        match extra.extension().and_then(|e| e.to_str()) {
            Some("json") => cfg.load_json(extra)?,
            _ => cfg.load_py(extra)?,
        }
    }
    for (k, v) in cmd.flag_settings() {
        let (class, tr) = k.split_once('.').unwrap_or((k.as_str(), ""));
        cfg.set_cli(class, tr, v)?;
    }
    cfg.apply_cli(&raw)?;
    for w in cfg.warnings() {
        tracing::warn!("{w}");
    }
    Settings::resolve(cfg).context("invalid controller settings")
}

/// Everything the controller needs to start, resolved.
#[derive(Debug, Clone)]
pub struct Settings {
    pub engine_ip: String,
    pub client_ip: String,
    pub transport: String,
    pub location: String,
    pub ssh_server: String,
    pub engine_ssh_server: String,
    pub hb_period: Duration,
    /// How long after an engine is unregistered its tasks fail with EngineError: zero, since the
    /// hub unregisters an engine only once it is known dead (issue 11: tasks failed 5 s late).
    pub engine_death_grace: Duration,
    pub max_heartbeat_misses: u32,
    pub registration_timeout: Duration,
    pub scheme: String,
    pub hwm: u64,
    pub db_class: String,
    pub reuse_files: bool,
    pub restore_engines: bool,
    pub ports: Vec<u16>,
    pub engine_ports: Vec<u16>,
    pub client_ports: Vec<u16>,
    pub key: Option<String>,
    pub keyfile: Option<String>,
    pub session: Option<String>,
    /// `IPController.max_message_size`: ZMQ_MAXMSGSIZE of every socket peers connect to
    /// (-1: no limit).
    pub max_message_size: i64,
    /// `host:port` of the status page and metrics (`IPController.metrics`), if enabled.
    pub metrics: Option<String>,
    /// Everything loaded, for the backends' own settings (`SQLiteDB.*`, ...).
    pub config: Config,
}

/// The default of `IPController.max_message_size`: generous for one array, finite (512 MiB).
pub const DEFAULT_MAX_MESSAGE_SIZE: i64 = 512 << 20;

/// Parse a port pool: `10101-10120`, `1,3-5`, or a list of ints.
pub fn parse_ports(v: &Value) -> Result<Vec<u16>, String> {
    let mut out = Vec::new();
    let text = match v {
        Value::Array(a) => {
            for x in a {
                out.extend(parse_ports(x)?);
            }
            return Ok(out);
        }
        Value::Number(n) => n.to_string(),
        Value::String(s) => s.clone(),
        Value::Null => return Ok(out),
        other => return Err(format!("not a port list: {other}")),
    };
    for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (a, b) = part.split_once('-').unwrap_or((part, part));
        let a: u16 = a.trim().parse().map_err(|_| format!("bad port {a:?}"))?;
        let b: u16 = b.trim().parse().map_err(|_| format!("bad port {b:?}"))?;
        if b < a {
            return Err(format!("bad port range {part}"));
        }
        out.extend(a..=b);
    }
    Ok(out)
}

/// `IPController.metrics`: empty = off; otherwise `host:port` with a numeric port.
fn metrics_addr(cfg: &Config) -> Result<Option<String>, ConfigError> {
    let Some(v) = cfg.str("IPController", "metrics")? else {
        return Ok(None);
    };
    let v = v.trim();
    if v.is_empty() {
        return Ok(None);
    }
    let ok = v
        .rsplit_once(':')
        .is_some_and(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok());
    if !ok {
        return Err(bad(
            cfg,
            "IPController",
            "metrics",
            "expected host:port, e.g. 127.0.0.1:0 (port 0: any free port)".into(),
        ));
    }
    Ok(Some(v.to_string()))
}

fn bad(cfg: &Config, class: &str, tr: &str, why: String) -> ConfigError {
    let (value, source) = cfg
        .get(class, tr)
        .map(|s| (s.value.to_string(), s.source.to_string()))
        .unwrap_or_default();
    ConfigError::BadArg {
        arg: format!("{class}.{tr} = {value} ({source})"),
        message: why,
    }
}

/// How long after an engine is unregistered its tasks fail: at once, whatever the heartbeat
/// period. The hub unregisters an engine when its heart stopped (more than
/// `max_heartmonitor_misses` periods of silence), when its rank 0 reported it dead, or when it
/// said goodbye; none of these leaves a reply worth waiting for.
fn engine_death_grace(_hb_period: Duration) -> Duration {
    Duration::ZERO
}

impl Settings {
    pub fn resolve(cfg: Config) -> Result<Settings, ConfigError> {
        let ip = cfg
            .str("IPController", "ip")?
            .unwrap_or_else(|| "127.0.0.1".into());
        let transport = cfg
            .str("IPController", "transport")?
            .unwrap_or_else(|| "tcp".into());
        let ports_of = |tr: &str| -> Result<Vec<u16>, ConfigError> {
            match cfg.get("IPController", tr) {
                None => Ok(Vec::new()),
                Some(s) => parse_ports(&s.value).map_err(|why| bad(&cfg, "IPController", tr, why)),
            }
        };
        let mut engine_ports = ports_of("engine_ports")?;
        if let Some(p) = cfg.i64("IPController", "regport")?.filter(|p| *p > 0) {
            engine_ports.insert(0, p as u16);
        }
        let period_ms = cfg
            .f64("HeartMonitor", "period")?
            .unwrap_or(3000.0)
            .max(10.0);
        let reg_timeout = cfg
            .f64("IPController", "registration_timeout")?
            .filter(|t| *t > 0.0)
            .unwrap_or_else(|| (period_ms / 100.0).max(30.0));
        let scheme = cfg
            .str("TaskScheduler", "scheme_name")?
            .unwrap_or_else(|| "leastload".into());
        // "none" (ipyparallel: no task scheduler) is accepted; rpar still runs leastload then.
        if scheme != "none" {
            if let Err(e) = scheme.parse::<rpar_sched::Scheme>() {
                return Err(bad(&cfg, "TaskScheduler", "scheme_name", e.to_string()));
            }
        }
        let max_message_size = match cfg.i64("IPController", "max_message_size")? {
            None => DEFAULT_MAX_MESSAGE_SIZE,
            Some(n) if n == -1 || n > 0 => n,
            Some(_) => {
                return Err(bad(
                    &cfg,
                    "IPController",
                    "max_message_size",
                    "must be a positive number of bytes, or -1 for no limit".into(),
                ))
            }
        };
        let key = match cfg.str("Session", "key")? {
            Some(k) => Some(k),
            None => std::env::var("IPP_SESSION_KEY").ok(),
        };
        let hb_period = Duration::from_millis(period_ms as u64);
        Ok(Settings {
            engine_ip: cfg
                .str("IPController", "engine_ip")?
                .unwrap_or_else(|| ip.clone()),
            client_ip: cfg
                .str("IPController", "client_ip")?
                .unwrap_or_else(|| ip.clone()),
            transport: cfg
                .str("IPController", "engine_transport")?
                .unwrap_or_else(|| transport.clone()),
            location: cfg.str("IPController", "location")?.unwrap_or_default(),
            ssh_server: cfg.str("IPController", "ssh_server")?.unwrap_or_default(),
            engine_ssh_server: cfg
                .str("IPController", "engine_ssh_server")?
                .unwrap_or_default(),
            hb_period,
            engine_death_grace: engine_death_grace(hb_period),
            max_heartbeat_misses: cfg
                .i64("HeartMonitor", "max_heartmonitor_misses")?
                .unwrap_or(10)
                .max(0) as u32,
            registration_timeout: Duration::from_secs_f64(reg_timeout.max(0.1)),
            scheme,
            hwm: cfg.i64("TaskScheduler", "hwm")?.unwrap_or(1).max(0) as u64,
            db_class: cfg
                .str("IPController", "db_class")?
                .unwrap_or_else(|| "DictDB".into()),
            reuse_files: cfg.bool("IPController", "reuse_files")?.unwrap_or(false),
            restore_engines: cfg
                .bool("IPController", "restore_engines")?
                .unwrap_or(false),
            ports: ports_of("ports")?,
            engine_ports,
            client_ports: ports_of("client_ports")?,
            key,
            keyfile: cfg.str("Session", "keyfile")?.filter(|k| !k.is_empty()),
            session: cfg.str("Session", "session")?,
            max_message_size,
            metrics: metrics_addr(&cfg)?,
            config: cfg,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn cfg(cli: &[&str]) -> Result<Settings, ConfigError> {
        let mut c = Config::empty("ipcontroller")?;
        let args: Vec<String> = cli.iter().map(|s| s.to_string()).collect();
        c.apply_cli(&args)?;
        Settings::resolve(c)
    }

    #[test]
    fn defaults() {
        let s = cfg(&[]).unwrap();
        assert_eq!(s.engine_ip, "127.0.0.1");
        assert_eq!(s.hb_period, Duration::from_millis(3000));
        assert_eq!(s.registration_timeout, Duration::from_secs(30));
        assert_eq!(s.hwm, 1);
        assert_eq!(s.db_class, "DictDB");
        assert_eq!(s.max_message_size, DEFAULT_MAX_MESSAGE_SIZE);
    }

    #[test]
    fn max_message_size_is_finite_unless_asked() {
        assert_eq!(
            cfg(&["--IPController.max_message_size=1048576"])
                .unwrap()
                .max_message_size,
            1 << 20
        );
        assert_eq!(
            cfg(&["--IPController.max_message_size=-1"])
                .unwrap()
                .max_message_size,
            -1
        );
        let e = cfg(&["--IPController.max_message_size=0"])
            .err()
            .unwrap()
            .to_string();
        assert!(
            e.contains("IPController.max_message_size") && e.contains("-1"),
            "{e}"
        );
    }

    #[test]
    fn tasks_of_a_dead_engine_fail_at_once_whatever_the_period() {
        assert_eq!(cfg(&[]).unwrap().engine_death_grace, Duration::ZERO);
        let s = cfg(&["--HeartMonitor.period=1000"]).unwrap();
        assert_eq!(s.engine_death_grace, Duration::ZERO);
    }

    #[test]
    fn old_names_work() {
        let s = cfg(&["--HubFactory.ip=*", "--HeartMonitor.period=200"]).unwrap();
        assert_eq!(s.engine_ip, "*");
        assert_eq!(s.hb_period, Duration::from_millis(200));
    }

    #[test]
    fn bad_scheme_is_named() {
        let e = cfg(&["--TaskScheduler.scheme_name=fastest"])
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("leastload"), "{e}");
    }

    #[test]
    fn metrics_address() {
        assert_eq!(cfg(&[]).unwrap().metrics, None);
        let s = cfg(&["--IPController.metrics=127.0.0.1:0"]).unwrap();
        assert_eq!(s.metrics.as_deref(), Some("127.0.0.1:0"));
        let e = cfg(&["--IPController.metrics=nowhere"])
            .err()
            .unwrap()
            .to_string();
        assert!(
            e.contains("IPController.metrics") && e.contains("host:port"),
            "{e}"
        );
    }

    #[test]
    fn ports() {
        assert_eq!(parse_ports(&json!("1,3-5")).unwrap(), vec![1, 3, 4, 5]);
        assert_eq!(parse_ports(&json!([7, "9-10"])).unwrap(), vec![7, 9, 10]);
        assert!(parse_ports(&json!("5-1")).is_err());
    }
}
