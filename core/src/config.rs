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

pub mod ipython;
pub mod literal;
pub mod schema;

use serde_json::Value;
use std::fmt;
use std::path::{Path, PathBuf};
use std::process::Command;

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

    /// The effective value of `class.trait_` (either spelling), looking at the class and then its
    /// ancestors. `None`: not configured, use the default.
    pub fn get(&self, class: &str, trait_: &str) -> Option<&Setting> {
        let (class, trait_) = schema::canonical(class, trait_);
        let mut lineage = schema::lineage(class)
            .into_iter()
            .map(str::to_string)
            .collect::<Vec<_>>();
        if lineage.is_empty() {
            lineage.push(class.to_string());
        }
        for c in &lineage {
            let best = self
                .entries
                .iter()
                .enumerate()
                .filter(|(_, e)| &e.class == c && e.trait_ == trait_)
                .max_by_key(|(i, e)| (e.level, *i));
            if let Some((_, e)) = best {
                return Some(&e.setting);
            }
        }
        None
    }

    /// Every effective setting (class, trait, setting), canonical names, for `--show-config`.
    pub fn settings(&self) -> Vec<(String, String, &Setting)> {
        let mut out: Vec<(String, String, &Setting)> = Vec::new();
        for e in &self.entries {
            if let Some(s) = self.get(&e.class, &e.trait_) {
                if !out.iter().any(|(c, t, _)| *c == e.class && *t == e.trait_) {
                    out.push((e.class.clone(), e.trait_.clone(), s));
                }
            }
        }
        out
    }

    /// A string setting.
    pub fn str(&self, class: &str, trait_: &str) -> Result<Option<String>, ConfigError> {
        self.typed(class, trait_, "a string", |v| {
            v.as_str().map(str::to_string)
        })
    }
    /// An integer setting.
    pub fn i64(&self, class: &str, trait_: &str) -> Result<Option<i64>, ConfigError> {
        self.typed(class, trait_, "an integer", Value::as_i64)
    }
    /// A number setting (integers accepted).
    pub fn f64(&self, class: &str, trait_: &str) -> Result<Option<f64>, ConfigError> {
        self.typed(class, trait_, "a number", Value::as_f64)
    }
    /// A boolean setting.
    pub fn bool(&self, class: &str, trait_: &str) -> Result<Option<bool>, ConfigError> {
        self.typed(class, trait_, "True or False", Value::as_bool)
    }
    /// A list of strings; a single string is split like a shell command line.
    pub fn str_list(&self, class: &str, trait_: &str) -> Result<Option<Vec<String>>, ConfigError> {
        self.typed(class, trait_, "a list of strings", |v| match v {
            Value::String(s) => Some(split_words(s)),
            Value::Array(items) => items
                .iter()
                .map(|i| match i {
                    Value::String(s) => Some(s.clone()),
                    Value::Number(n) => Some(n.to_string()),
                    _ => None,
                })
                .collect(),
            _ => None,
        })
    }

    fn typed<T>(
        &self,
        class: &str,
        trait_: &str,
        expected: &'static str,
        f: impl Fn(&Value) -> Option<T>,
    ) -> Result<Option<T>, ConfigError> {
        let Some(s) = self.get(class, trait_) else {
            return Ok(None);
        };
        if s.value.is_null() {
            return Ok(None);
        }
        f(&s.value).map(Some).ok_or_else(|| ConfigError::Type {
            source_: s.source.clone(),
            written: s.written.clone(),
            expected,
            found: short(&s.value),
            fix: format!("set {} to {expected}", s.written),
        })
    }

    fn kind_of(&self, class: &str, trait_: &str) -> Kind {
        let (c, t) = schema::canonical(class, trait_);
        if let Some((_, def)) = schema::find_trait(c, t) {
            return def.kind;
        }
        self.extra
            .iter()
            .find(|(ec, et, _)| ec == c && et == t)
            .map(|e| e.2)
            .unwrap_or(Kind::Any)
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

/// Split a program's arguments into `--Class.trait=value` ones (returned first) and the rest.
/// A config argument starts with `--` (or `-`) and an upper-case class name followed by a dot.
pub fn split_cli<I, S>(args: I) -> (Vec<String>, Vec<String>)
where
    I: IntoIterator<Item = S>,
    S: Into<String>,
{
    let mut cfg = Vec::new();
    let mut rest = Vec::new();
    for a in args {
        let a: String = a.into();
        if is_config_arg(&a) {
            cfg.push(a);
        } else {
            rest.push(a);
        }
    }
    (cfg, rest)
}

/// Is `arg` of the form `--Class.trait=value`?
pub fn is_config_arg(arg: &str) -> bool {
    let body = arg.trim_start_matches('-');
    if body.len() == arg.len() {
        return false;
    }
    let Some((key, _)) = body.split_once('=') else {
        return false;
    };
    let Some((class, trait_)) = key.split_once('.') else {
        return false;
    };
    class.chars().next().is_some_and(|c| c.is_ascii_uppercase())
        && class.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
        && !trait_.is_empty()
        && trait_
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_')
}

fn parse_cli_arg(arg: &str) -> Result<(String, String, &str), ConfigError> {
    let body = arg.trim_start_matches('-');
    let Some((key, raw)) = body.split_once('=') else {
        return Err(ConfigError::BadArg {
            arg: arg.into(),
            message: "no '=value'".into(),
        });
    };
    let Some((class, trait_)) = key.split_once('.') else {
        return Err(ConfigError::BadArg {
            arg: arg.into(),
            message: "no 'Class.' before the trait".into(),
        });
    };
    if class.is_empty() || trait_.is_empty() || trait_.contains('.') {
        return Err(ConfigError::BadArg {
            arg: arg.into(),
            message: "expected exactly Class.trait".into(),
        });
    }
    Ok((class.to_string(), trait_.to_string(), raw))
}

/// The value of a command-line setting, given the trait's kind (see the module docs).
pub fn cli_value(raw: &str, kind: Kind) -> Value {
    match kind {
        Kind::Str => match literal::parse(raw) {
            Some(Value::String(s)) => Value::String(s),
            Some(Value::Null) if raw == "None" => Value::Null,
            _ => Value::String(raw.to_string()),
        },
        Kind::List => match literal::parse(raw) {
            Some(v @ Value::Array(_)) => v,
            Some(Value::String(s)) => Value::Array(vec![Value::String(s)]),
            _ => Value::Array(vec![Value::String(raw.to_string())]),
        },
        _ => parse_value(raw),
    }
}

/// A Python-ish literal, else the text as a string.
pub fn parse_value(raw: &str) -> Value {
    literal::parse(raw).unwrap_or_else(|| Value::String(raw.to_string()))
}

/// Split a command line into words (single and double quotes, backslash escapes).
pub fn split_words(s: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut have = false;
    let mut chars = s.chars();
    let mut quote: Option<char> = None;
    while let Some(c) = chars.next() {
        match (quote, c) {
            (Some(q), c) if c == q => quote = None,
            (Some('"'), '\\') | (None, '\\') => {
                if let Some(n) = chars.next() {
                    cur.push(n);
                }
            }
            (Some(_), c) => cur.push(c),
            (None, '\'' | '"') => {
                quote = Some(c);
                have = true;
            }
            (None, c) if c.is_whitespace() => {
                if have || !cur.is_empty() {
                    out.push(std::mem::take(&mut cur));
                    have = false;
                }
            }
            (None, c) => cur.push(c),
        }
    }
    if have || !cur.is_empty() {
        out.push(cur);
    }
    out
}

/// Does a `.py` config file contain anything beyond comments, blank lines and `c = get_config()`?
fn needs_python(text: &str) -> bool {
    text.lines().map(str::trim).any(|l| {
        !(l.is_empty()
            || l.starts_with('#')
            || l.starts_with("c = get_config()")
            || l.starts_with("c=get_config()"))
    })
}

/// The Python interpreters tried, in order.
/// The Python interpreters rpar programs run helpers with: `$RPAR_PYTHON`, else `python3`, then
/// `python` (config files, the controller's dask scheduler).
pub fn python_candidates() -> Vec<String> {
    match std::env::var("RPAR_PYTHON") {
        Ok(p) if !p.is_empty() => vec![p],
        _ => vec!["python3".into(), "python".into()],
    }
}

const LOADER: &str = include_str!("config/loader.py");

fn run_loader(path: &Path, candidates: &[String]) -> Result<Value, ConfigError> {
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
