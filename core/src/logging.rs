//! Logging set-up shared by the three programs: one level parser ([`parse_level`]) and one
//! subscriber set-up ([`init`]) writing to stderr and/or a log file in the profile's `log/`.

use std::path::PathBuf;
use std::sync::Mutex;
use tracing::Level;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{fmt, EnvFilter, Layer};

/// A log level as the programs' `--log-level` and `Application.log_level` take it: a name
/// (`TRACE`, `DEBUG`, `INFO`, `WARN`/`WARNING`, `ERROR`, `CRITICAL`/`FATAL`, any case, quotes
/// allowed) or a Python logging number (`10` DEBUG … `50` CRITICAL; below 10, NOTSET included,
/// is DEBUG). `None`: not a level.
pub fn parse_level(s: &str) -> Option<Level> {
    let s = s.trim().trim_matches(|c| c == '\'' || c == '"');
    if let Ok(n) = s.parse::<u32>() {
        return Some(match n {
            0..=10 => Level::DEBUG,
            11..=20 => Level::INFO,
            21..=30 => Level::WARN,
            _ => Level::ERROR,
        });
    }
    Some(match s.to_ascii_uppercase().as_str() {
        "TRACE" => Level::TRACE,
        "DEBUG" => Level::DEBUG,
        "INFO" => Level::INFO,
        "WARN" | "WARNING" => Level::WARN,
        "ERROR" | "CRITICAL" | "FATAL" => Level::ERROR,
        _ => return None,
    })
}

/// Which events are written.
#[derive(Debug, Clone)]
pub enum Filter {
    /// This level and above.
    Level(Level),
    /// The directives in this environment variable (`RUST_LOG` syntax), else this level.
    Env(&'static str, Level),
}

/// Where stderr output goes.
#[derive(Debug)]
pub enum Stderr {
    No,
    /// The process's stderr (coloured when it is a terminal).
    Yes,
    /// A stand-in for it (the engine's original stderr, before Python's output is captured).
    File(std::fs::File),
}

/// What [`init`] sets up.
#[derive(Debug)]
pub struct Logging {
    pub filter: Filter,
    pub stderr: Stderr,
    /// A log file, appended to (its directory is created).
    pub file: Option<PathBuf>,
    /// Write the file from a background thread (the controller's loop must not wait on the
    /// disk); the returned guard flushes it when dropped. Not for a process that forks later.
    pub background: bool,
    /// Print each event's target (module path).
    pub target: bool,
}

/// Keeps a background log writer alive; dropping it flushes the file.
#[must_use = "dropping the guard stops the background log writer"]
pub struct LogGuard(#[allow(dead_code)] Option<tracing_appender::non_blocking::WorkerGuard>);

/// Install the global subscriber. A log file that cannot be opened is reported as a warning on
/// the remaining outputs; an error means a subscriber was already installed.
pub fn init(l: Logging) -> Result<LogGuard, tracing_subscriber::util::TryInitError> {
    let filter = match &l.filter {
        Filter::Level(lvl) => EnvFilter::new(lvl.as_str()),
        Filter::Env(var, lvl) => {
            EnvFilter::try_from_env(var).unwrap_or_else(|_| EnvFilter::new(lvl.as_str()))
        }
    };
    let stderr = match l.stderr {
        Stderr::No => None,
        Stderr::Yes => Some(
            fmt::layer()
                .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
                .with_target(l.target)
                .with_writer(std::io::stderr)
                .boxed(),
        ),
        Stderr::File(f) => Some(
            fmt::layer()
                .with_ansi(false)
                .with_target(l.target)
                .with_writer(Mutex::new(f))
                .boxed(),
        ),
    };
    let mut guard = None;
    let mut file_error = None;
    let file = match l.file.as_ref().map(|p| open_append(p).map_err(|e| (p, e))) {
        None => None,
        Some(Err((p, e))) => {
            file_error = Some(format!("cannot open the log file {}: {e}", p.display()));
            None
        }
        Some(Ok(f)) => {
            let layer = fmt::layer().with_ansi(false).with_target(l.target);
            Some(if l.background {
                let (w, g) = tracing_appender::non_blocking(f);
                guard = Some(g);
                layer.with_writer(w).boxed()
            } else {
                layer.with_writer(Mutex::new(f)).boxed()
            })
        }
    };
    tracing_subscriber::registry()
        .with(filter)
        .with(stderr)
        .with(file)
        .try_init()?;
    if let Some(e) = file_error {
        tracing::warn!("{e}");
    }
    Ok(LogGuard(guard))
}

fn open_append(path: &std::path::Path) -> std::io::Result<std::fs::File> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn levels_by_name_and_number() {
        assert_eq!(parse_level("trace"), Some(Level::TRACE));
        assert_eq!(parse_level("'DEBUG'"), Some(Level::DEBUG));
        assert_eq!(parse_level("10"), Some(Level::DEBUG));
        assert_eq!(parse_level("20"), Some(Level::INFO));
        assert_eq!(parse_level("Warning"), Some(Level::WARN));
        assert_eq!(parse_level("30"), Some(Level::WARN));
        assert_eq!(parse_level("CRITICAL"), Some(Level::ERROR));
        assert_eq!(parse_level("FATAL"), Some(Level::ERROR));
        assert_eq!(parse_level("50"), Some(Level::ERROR));
        assert_eq!(parse_level("0"), Some(Level::DEBUG));
        assert_eq!(parse_level("loud"), None);
    }
}
