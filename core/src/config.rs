//! Configuration for the three rpar programs: `*_config.py`, `*_config.json` and
//! `--Class.trait=value` on the command line, with ipyparallel's and IPython.parallel's class
//! names.
//!
//! # Using it
//!
//! ```no_run
//! # use rpar_core::config::Config;
//! # fn main() -> Result<(), rpar_core::config::ConfigError> {
//! # let profile_dir = std::path::Path::new("/tmp/profile_default");
//! // cli: the `--Class.trait=value` arguments (see `split_cli`); other flags are the program's own.
//! let cli = vec!["--IPController.ip=*".to_string()];
//! let mut cfg = Config::load(profile_dir, "ipcontroller", &cli)?;
//! // A program flag that maps to a trait (`--ip=...`) is recorded with the same precedence:
//! cfg.set_cli("IPController", "location", serde_json::json!("10.0.1.5"))?;
//! let ip: Option<String> = cfg.str("IPController", "ip")?;          // typed getters
//! if let Some(s) = cfg.get("HeartMonitor", "period") {                // raw value and source
//!     println!("period {} (from {})", s.value, s.source);
//! }
//! for w in cfg.warnings() { tracing::warn!("{w}"); }                  // ignored settings
//! # Ok(()) }
//! ```
//!
//! * `app` is `"ipcontroller"`, `"ipengine"` or `"ipcluster"` (or `rpar-controller`, `rpar-engine`,
//!   `rpar`). The files read are `<profile_dir>/<app>_config.py` then `<app>_config.json`.
//! * **Precedence**: command line over `.json` over `.py` over the program's default (`get`
//!   returns `None`: use your default). Within one level the later assignment wins. As in
//!   traitlets, a value on a class beats one on its parent class (`PBSEngineSetLauncher.queue`
//!   over `PBSLauncher.queue` over `BatchSystemLauncher.queue`), whatever the level.
//! * **Old names** (the seed manual's): `HubFactory`/`IPControllerApp` → `IPController`,
//!   `IPEngineApp`/`EngineFactory` → `IPEngine`, `IPClusterEngines`/`IPClusterStart`/`IPClusterApp`
//!   → `Cluster` (`engine_launcher` → `engine_launcher_class`, `controller_launcher` →
//!   `controller_launcher_class`), `MPIExec*Launcher` → `MPI*Launcher`. `get` takes either
//!   spelling. `c.MPI.use` / `c.MPI.init_script` are accepted and ignored (a warning).
//! * **Validation**: every setting must be a known trait of a class the program reads
//!   ([`schema::CLASSES`]); otherwise [`ConfigError::Unknown`] names the file and line (or the
//!   command-line argument), what is wrong and the fix. Values are type-checked likewise.
//!   A program that accepts more than the table lists calls [`Config::load_with`] with extras.
//!   `ipengine` also accepts IPython's own classes ([`ipython::IPYTHON_CLASSES`]) with any trait;
//!   [`Config::ipython_config`] returns those meant for the engine's shell.
//! * **`.py` files are real Python**: they run in a `python3` subprocess (`$RPAR_PYTHON` to choose
//!   another) with a recording `c` (and `get_config()`, `load_subconfig()`); each assignment comes
//!   back with its file and line. A file of comments only needs no Python at all.
//!   Values are converted to JSON: tuples become lists, dict keys strings.
//! * **Command-line values** are Python literals (`42`, `1.5`, `True`, `None`, `'quoted'`,
//!   `[...]`, `(...)`, `{...}`); anything else is a plain string (`--IPController.ip=*`).
//!   For string traits the text is taken as is (quotes removed); a list trait given a plain
//!   string gets a one-item list.

mod cli;
mod get;
pub mod ipython;
pub mod literal;
mod pyfile;
pub mod schema;

use serde_json::Value;
use std::fmt;
use std::path::{Path, PathBuf};

use cli::parse_cli_arg;
pub use cli::{cli_value, is_config_arg, parse_value, split_cli, split_words};
pub use pyfile::python_candidates;
use pyfile::{needs_python, run_loader};
pub use schema::{App, Kind};

/// Where a setting came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// A config file and 1-based line (line 0 for `.json` files).
    File { path: PathBuf, line: u32 },
    /// A `--Class.trait=value` argument or a program flag.
    CommandLine { arg: String },
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Source::File { path, line: 0 } => write!(f, "{}", path.display()),
            Source::File { path, line } => write!(f, "{}:{}", path.display(), line),
            Source::CommandLine { arg } if arg.is_empty() => write!(f, "command line"),
            Source::CommandLine { arg } => write!(f, "command line ({arg})"),
        }
    }
}

/// One effective value.
#[derive(Debug, Clone, PartialEq)]
pub struct Setting {
    pub value: Value,
    pub source: Source,
    /// How the user spelled it, e.g. `HubFactory.ip`.
    pub written: String,
}

/// Errors while loading or reading configuration. Each names where the problem is and the fix.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    #[error("unknown program {0:?}: expected ipcontroller, ipengine or ipcluster")]
    UnknownApp(String),
    #[error("{source_}: {message}\n  fix: {fix}")]
    Unknown {
        source_: Source,
        message: String,
        fix: String,
    },
    #[error("{source_}: {written} must be {expected}, not {found}\n  fix: {fix}")]
    Type {
        source_: Source,
        written: String,
        expected: &'static str,
        found: String,
        fix: String,
    },
    #[error("{file}{line}: {message}{text}", line = .line.map(|l| format!(":{l}")).unwrap_or_default(),
            text = if .text.is_empty() { String::new() } else { format!("\n    {}", .text) })]
    Python {
        file: String,
        line: Option<u32>,
        message: String,
        text: String,
    },
    #[error("cannot evaluate {file}: no Python interpreter ({tried}): {reason}\n  fix: install python3, set RPAR_PYTHON=/path/to/python, or write the settings to {json} instead")]
    NoPython {
        file: PathBuf,
        tried: String,
        reason: String,
        json: PathBuf,
    },
    #[error("{file}: {message}")]
    Json { file: PathBuf, message: String },
    #[error("{file}: {err}")]
    Io { file: PathBuf, err: std::io::Error },
    #[error("command line: {arg:?}: {message}\n  fix: write it as --Class.trait=value, e.g. --IPController.ip='*'")]
    BadArg { arg: String, message: String },
}

/// Precedence levels, low to high.
const LEVEL_PY: u8 = 1;
const LEVEL_JSON: u8 = 2;
const LEVEL_CLI: u8 = 3;

#[derive(Debug, Clone)]
struct Entry {
    class: String,
    trait_: String,
    level: u8,
    setting: Setting,
}

/// The loaded configuration of one program.
#[derive(Debug, Clone)]
pub struct Config {
    app: App,
    extra: Vec<(String, String, Kind)>,
    entries: Vec<Entry>,
    warnings: Vec<String>,
    /// Debug notes (IPython settings accepted).
    notes: Vec<String>,
    files: Vec<PathBuf>,
    /// Python interpreters to try for `.py` files (from `$RPAR_PYTHON`, else python3, python).
    python: Vec<String>,
}

impl Config {
    /// An empty configuration for `app` (no files read).
    pub fn empty(app: &str) -> Result<Config, ConfigError> {
        let app = App::parse(app).ok_or_else(|| ConfigError::UnknownApp(app.to_string()))?;
        Ok(Config {
            app,
            extra: Vec::new(),
            entries: Vec::new(),
            warnings: Vec::new(),
            notes: Vec::new(),
            files: Vec::new(),
            python: python_candidates(),
        })
    }

    /// Read `<profile_dir>/<app>_config.py` and `.json` (each if present), then apply `cli`
    /// (`--Class.trait=value` strings; `Class.trait=value` without dashes works too).
    pub fn load(profile_dir: &Path, app: &str, cli: &[String]) -> Result<Config, ConfigError> {
        Self::load_with(profile_dir, app, &[], cli)
    }

    /// [`Config::load`] for a program that accepts settings beyond [`schema::CLASSES`]:
    /// `extra` lists (class, trait, kind).
    pub fn load_with(
        profile_dir: &Path,
        app: &str,
        extra: &[(&str, &str, Kind)],
        cli: &[String],
    ) -> Result<Config, ConfigError> {
        let mut cfg = Config::empty(app)?;
        cfg.extra = extra
            .iter()
            .map(|(c, t, k)| (c.to_string(), t.to_string(), *k))
            .collect();
        let stem = cfg.app.name();
        let py = profile_dir.join(format!("{stem}_config.py"));
        if py.is_file() {
            cfg.load_py(&py)?;
        }
        let json = profile_dir.join(format!("{stem}_config.json"));
        if json.is_file() {
            cfg.load_json(&json)?;
        }
        cfg.apply_cli(cli)?;
        Ok(cfg)
    }

    /// The program this configuration is for.
    pub fn app(&self) -> App {
        self.app
    }

    /// Config files that were read.
    pub fn files(&self) -> &[PathBuf] {
        &self.files
    }

    /// Warnings (settings accepted and ignored), one line each, naming file and line.
    pub fn warnings(&self) -> &[String] {
        &self.warnings
    }

    /// Evaluate a `*_config.py` file.
    pub fn load_py(&mut self, path: &Path) -> Result<(), ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|err| ConfigError::Io {
            file: path.to_path_buf(),
            err,
        })?;
        self.files.push(path.to_path_buf());
        if !needs_python(&text) {
            return Ok(());
        }
        let result = run_loader(path, &self.python)?;
        if let Some(err) = result.get("error").filter(|e| !e.is_null()) {
            return Err(ConfigError::Python {
                file: err["file"]
                    .as_str()
                    .map(str::to_string)
                    .unwrap_or_else(|| path.display().to_string()),
                line: err["line"].as_u64().map(|l| l as u32),
                message: err["message"].as_str().unwrap_or("error").to_string(),
                text: err["text"].as_str().unwrap_or("").to_string(),
            });
        }
        let settings = result["settings"].as_array().cloned().unwrap_or_default();
        for s in settings {
            let source = Source::File {
                path: s["file"]
                    .as_str()
                    .map(PathBuf::from)
                    .unwrap_or_else(|| path.to_path_buf()),
                line: s["line"].as_u64().unwrap_or(0) as u32,
            };
            let class = s["class"].as_str().unwrap_or_default();
            let trait_ = s["trait"].as_str().unwrap_or_default();
            self.insert(class, trait_, s["value"].clone(), source, LEVEL_PY)?;
        }
        Ok(())
    }

    /// Read a `*_config.json` file: `{"Class": {"trait": value, ...}, ...}`.
    pub fn load_json(&mut self, path: &Path) -> Result<(), ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|err| ConfigError::Io {
            file: path.to_path_buf(),
            err,
        })?;
        self.files.push(path.to_path_buf());
        let v: Value = serde_json::from_str(&text).map_err(|e| ConfigError::Json {
            file: path.to_path_buf(),
            message: format!("line {}: {e}", e.line()),
        })?;
        let Value::Object(classes) = v else {
            return Err(ConfigError::Json {
                file: path.to_path_buf(),
                message: "expected an object {\"Class\": {\"trait\": value}}".into(),
            });
        };
        for (class, traits) in classes {
            let Value::Object(traits) = traits else {
                return Err(ConfigError::Json {
                    file: path.to_path_buf(),
                    message: format!("{class:?} must map to an object of traits"),
                });
            };
            for (trait_, value) in traits {
                let line = line_of(&text, &trait_);
                let source = Source::File {
                    path: path.to_path_buf(),
                    line,
                };
                self.insert(&class, &trait_, value, source, LEVEL_JSON)?;
            }
        }
        Ok(())
    }

    /// Apply `--Class.trait=value` arguments.
    pub fn apply_cli(&mut self, args: &[String]) -> Result<(), ConfigError> {
        for arg in args {
            let (class, trait_, raw) = parse_cli_arg(arg)?;
            let kind = self.kind_of(&class, &trait_);
            let value = cli_value(raw, kind);
            self.insert(
                &class,
                &trait_,
                value,
                Source::CommandLine { arg: arg.clone() },
                LEVEL_CLI,
            )?;
        }
        Ok(())
    }

    /// Record a value from a program flag (e.g. `--ip` → `IPController.ip`) at command-line
    /// precedence.
    pub fn set_cli(&mut self, class: &str, trait_: &str, value: Value) -> Result<(), ConfigError> {
        let arg = format!("--{class}.{trait_}");
        self.insert(class, trait_, value, Source::CommandLine { arg }, LEVEL_CLI)
    }

    fn insert(
        &mut self,
        class: &str,
        trait_: &str,
        value: Value,
        source: Source,
        level: u8,
    ) -> Result<(), ConfigError> {
        let written = format!("{class}.{trait_}");
        let (cclass, ctrait) = schema::canonical(class, trait_);
        let kind = self.validate(class, trait_, cclass, ctrait, &source)?;
        if !kind.accepts(&value) {
            return Err(ConfigError::Type {
                source_: source,
                written: written.clone(),
                expected: kind.describe(),
                found: short(&value),
                fix: format!("set {written} to {}", kind.describe()),
            });
        }
        self.entries.push(Entry {
            class: cclass.to_string(),
            trait_: ctrait.to_string(),
            level,
            setting: Setting {
                value,
                source,
                written,
            },
        });
        Ok(())
    }

    /// Notes on the IPython settings accepted (see [`ipython`]), one line each, for a debug log.
    pub fn notes(&self) -> &[String] {
        &self.notes
    }

    /// The effective settings of IPython's own classes ([`ipython::Effect::Shell`] ones), as a
    /// traitlets config: `{"Class": {"trait": value}}`.
    pub fn ipython_config(&self) -> Value {
        let mut out = serde_json::Map::new();
        for (class, trait_, s) in self.settings() {
            let Some(ic) = ipython::ipython_class(&class) else {
                continue;
            };
            if ic.effect != ipython::Effect::Shell {
                continue;
            }
            if let Value::Object(traits) = out
                .entry(class)
                .or_insert_with(|| Value::Object(serde_json::Map::new()))
            {
                traits.insert(trait_, s.value.clone());
            }
        }
        Value::Object(out)
    }

    fn note_ipython(
        &mut self,
        ic: &ipython::IPythonClass,
        class: &str,
        trait_: &str,
        source: &Source,
    ) {
        let what = match ic.effect {
            ipython::Effect::Shell => "IPython setting, passed to the engine's shell".to_string(),
            ipython::Effect::Ignored(why) => {
                format!("IPython setting, accepted and not used: {why}")
            }
        };
        self.notes
            .push(format!("{source}: {class}.{trait_}: {what}"));
    }

    /// Check that `cclass.ctrait` is something this program accepts; returns its kind.
    fn validate(
        &mut self,
        class: &str,
        trait_: &str,
        cclass: &str,
        ctrait: &str,
        source: &Source,
    ) -> Result<Kind, ConfigError> {
        let app = self.app;
        let file = app.config_file();
        if let Some((_, _, k)) = self
            .extra
            .iter()
            .find(|(c, t, _)| c == cclass && t == ctrait)
        {
            return Ok(*k);
        }
        let renamed = if cclass != class {
            format!(" ({class} is the old name of {cclass})")
        } else {
            String::new()
        };
        let foreign = match app {
            App::Engine => ipython::ipython_class(cclass),
            _ => None,
        };
        let Some(def) = schema::class(cclass) else {
            if let Some(ic) = foreign {
                self.note_ipython(ic, class, trait_, source);
                return Ok(Kind::Any);
            }
            let names = schema::CLASSES
                .iter()
                .map(|c| c.name)
                .chain(schema::ALIASES.iter().map(|a| a.old_class));
            let fix = match schema::closest(class, names) {
                Some(s) => format!("did you mean {s}? Otherwise delete the line"),
                None => format!("delete the line; the settings {} reads are listed in a fresh {file} (rpar profile create --parallel)", app.name()),
            };
            return Err(ConfigError::Unknown {
                source_: source.clone(),
                message: format!("{class}.{trait_}: rpar has no configurable class {class}"),
                fix,
            });
        };
        if !def.used_by(app) {
            let owner = [App::Controller, App::Engine, App::Cluster]
                .into_iter()
                .find(|a| def.used_by(*a));
            let fix = match owner {
                Some(o) => format!(
                    "move the line to {} (the {} reads it)",
                    o.config_file(),
                    o.name()
                ),
                None => "delete the line".into(),
            };
            return Err(ConfigError::Unknown {
                source_: source.clone(),
                message: format!(
                    "{class}.{trait_}{renamed} is not a setting of {}",
                    app.name()
                ),
                fix,
            });
        }
        let Some((_, tdef)) = schema::find_trait(cclass, ctrait) else {
            if let Some(ic) = foreign {
                self.note_ipython(ic, class, trait_, source);
                return Ok(Kind::Any);
            }
            let all = schema::all_traits(cclass);
            let fix = match schema::closest(ctrait, all.iter().copied()) {
                Some(s) => format!("did you mean {class}.{s}?"),
                None => format!("delete the line; {cclass} has: {}", all.join(", ")),
            };
            return Err(ConfigError::Unknown {
                source_: source.clone(),
                message: format!("{class}.{trait_}{renamed}: {cclass} has no setting {ctrait}"),
                fix,
            });
        };
        if let schema::Status::Ignored(why) = tdef.status {
            self.warnings.push(format!(
                "{source}: {class}.{trait_} is accepted and ignored: {why}"
            ));
        }
        Ok(tdef.kind)
    }
}

/// The line of the first `"key"` in a JSON text (1-based; 0 if not found).
fn line_of(text: &str, key: &str) -> u32 {
    let needle = format!("\"{key}\"");
    text.lines()
        .position(|l| l.contains(&needle))
        .map(|i| i as u32 + 1)
        .unwrap_or(0)
}

fn short(v: &Value) -> String {
    let s = v.to_string();
    if s.len() > 60 {
        format!(
            "{}...",
            &s[..s.char_indices().nth(57).map(|(i, _)| i).unwrap_or(s.len())]
        )
    } else {
        s
    }
}

#[cfg(test)]
mod tests;
