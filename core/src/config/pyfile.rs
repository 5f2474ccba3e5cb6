//! Running a profile's `*_config.py` file: a Python subprocess with a recording `c` that sends
//! every assignment back as JSON with its file and line; files of comments only need no Python.

use super::ConfigError;
use serde_json::Value;
use std::path::Path;
use std::process::Command;

/// Does a `.py` config file contain anything beyond comments, blank lines and `c = get_config()`?
pub(super) fn needs_python(text: &str) -> bool {
    text.lines().map(str::trim).any(|l| {
        !(l.is_empty()
            || l.starts_with('#')
            || l.starts_with("c = get_config()")
            || l.starts_with("c=get_config()"))
    })
}

/// The Python interpreters rpar programs run helpers with: `$RPAR_PYTHON`, else `python3`, then
/// `python` (config files, the controller's dask scheduler).
pub fn python_candidates() -> Vec<String> {
    match std::env::var("RPAR_PYTHON") {
        Ok(p) if !p.is_empty() => vec![p],
        _ => vec!["python3".into(), "python".into()],
    }
}

const LOADER: &str = include_str!("loader.py");

pub(super) fn run_loader(path: &Path, candidates: &[String]) -> Result<Value, ConfigError> {
    let mut last_err = String::new();
    for py in candidates {
        let out = Command::new(py)
            .arg("-c")
            .arg(LOADER)
            .arg(path)
            .stdin(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .output();
        let out = match out {
            Ok(o) => o,
            Err(e) => {
                last_err = e.to_string();
                continue;
            }
        };
        let stderr = String::from_utf8_lossy(&out.stderr);
        if !stderr.trim().is_empty() {
            tracing::info!(file = %path.display(), "output of the config file: {}", stderr.trim());
        }
        return serde_json::from_slice(&out.stdout).map_err(|e| ConfigError::Python {
            file: path.display().to_string(),
            line: None,
            message: format!(
                "the config loader ({py}) failed (exit {:?}, {e}): {}",
                out.status.code(),
                stderr.trim()
            ),
            text: String::new(),
        });
    }
    Err(ConfigError::NoPython {
        file: path.to_path_buf(),
        tried: candidates.join(", "),
        reason: last_err,
        json: path.with_extension("json"),
    })
}
