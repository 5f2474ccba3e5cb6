//! Choosing and opening a backend from configuration: the `db_class` selector (short names,
//! `--dictdb`-style lower-case names and the full Python class paths old configs use) and the
//! options struct the controller fills from its flags and config file.

use serde_json::{Map, Value};
use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

use crate::error::DbError;
use crate::memory::{Limits, MemoryDb};
use crate::nodb::NoDb;
use crate::TaskDb;

/// Which backend (`IPController.db_class`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Backend {
    /// In memory (`DictDB`), the default.
    #[default]
    Dict,
    /// Store nothing (`NoDB`).
    No,
    /// SQLite file (`SQLiteDB`).
    Sqlite,
    /// MongoDB server (`MongoDB`).
    Mongo,
}

impl Backend {
    /// ipyparallel's class name.
    pub fn class_name(self) -> &'static str {
        match self {
            Backend::Dict => "DictDB",
            Backend::No => "NoDB",
            Backend::Sqlite => "SQLiteDB",
            Backend::Mongo => "MongoDB",
        }
    }

    /// The Python module the class lives in (`…controller.<module>.<Class>`).
    fn module(self) -> &'static str {
        match self {
            Backend::Dict | Backend::No => "dictdb",
            Backend::Sqlite => "sqlitedb",
            Backend::Mongo => "mongodb",
        }
    }
}

impl fmt::Display for Backend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.class_name())
    }
}

impl FromStr for Backend {
    type Err = DbError;

    /// Accepts `DictDB`/`dictdb`, `NoDB`/`nodb`, `SQLiteDB`/`sqlitedb`, `MongoDB`/`mongodb`
    /// (any case), and those classes behind `ipyparallel.controller.<module>.` or
    /// `IPython.parallel.controller.<module>.`.
    fn from_str(s: &str) -> Result<Backend, DbError> {
        let raw = s.trim().trim_matches(|c| c == '\'' || c == '"');
        let (prefix, class) = match raw.rsplit_once('.') {
            Some((p, c)) => (Some(p), c),
            None => (None, raw),
        };
        let backend = match class.to_ascii_lowercase().as_str() {
            "dictdb" => Backend::Dict,
            "nodb" => Backend::No,
            "sqlitedb" => Backend::Sqlite,
            "mongodb" => Backend::Mongo,
            _ => return Err(DbError::UnknownBackend(s.to_string())),
        };
        if let Some(prefix) = prefix {
            let ok = ["ipyparallel.controller.", "IPython.parallel.controller."]
                .iter()
                .any(|pkg| prefix.strip_prefix(pkg) == Some(backend.module()));
            if !ok {
                return Err(DbError::UnknownBackend(s.to_string()));
            }
        }
        Ok(backend)
    }
}

/// `SQLiteDB.*` options.
#[derive(Debug, Clone, PartialEq)]
pub struct SqliteConfig {
    /// Directory of the file (`SQLiteDB.location`); default: the profile dir, else `.`.
    pub location: Option<PathBuf>,
    /// File name (`SQLiteDB.filename`), default `tasks.db`.
    pub filename: String,
    /// Table (`SQLiteDB.table`); default: `_<hub session>` with `-` → `_`, new every run.
    /// Set it to keep tasks across controller restarts.
    pub table: Option<String>,
}

impl Default for SqliteConfig {
    fn default() -> Self {
        SqliteConfig {
            location: None,
            filename: "tasks.db".into(),
            table: None,
        }
    }
}

/// `MongoDB.*` options.
#[derive(Debug, Clone, PartialEq)]
pub struct MongoConfig {
    /// `MongoDB.connection_args`: a URL (`mongodb://…`), or a host and optional port.
    pub connection_args: Vec<Value>,
    /// `MongoDB.connection_kwargs`: `host` (name or URL), `port`, and other options, which
    /// become URL query parameters.
    pub connection_kwargs: Map<String, Value>,
    /// `MongoDB.database`, default `ipython-tasks`.
    pub database: String,
}

impl Default for MongoConfig {
    fn default() -> Self {
        MongoConfig {
            connection_args: Vec::new(),
            connection_kwargs: Map::new(),
            database: "ipython-tasks".into(),
        }
    }
}

impl MongoConfig {
    /// The connection URL the args/kwargs describe (default `mongodb://localhost:27017`).
    pub fn url(&self) -> Result<String, DbError> {
        let text = |v: &Value| match v {
            Value::String(s) => Some(s.clone()),
            Value::Number(n) => Some(n.to_string()),
            _ => None,
        };
        let bad = |name: &'static str, v: &Value, reason: &str| DbError::BadOption {
            name,
            value: v.to_string(),
            reason: reason.to_string(),
        };
        let mut host = None;
        let mut port = None;
        if let Some(a) = self.connection_args.first() {
            host = Some(text(a).ok_or_else(|| bad("MongoDB.connection_args", a, "not a host"))?);
        }
        if let Some(p) = self.connection_args.get(1) {
            port = Some(text(p).ok_or_else(|| bad("MongoDB.connection_args", p, "not a port"))?);
        }
        let mut params = Vec::new();
        for (k, v) in &self.connection_kwargs {
            match k.as_str() {
                "host" => {
                    host = Some(
                        text(v).ok_or_else(|| bad("MongoDB.connection_kwargs", v, "bad host"))?,
                    )
                }
                "port" => {
                    port = Some(
                        text(v).ok_or_else(|| bad("MongoDB.connection_kwargs", v, "bad port"))?,
                    )
                }
                // pymongo-only switches the Rust driver has no use for.
                "tz_aware" | "connect" | "document_class" => {}
                _ => {
                    let val = match v {
                        Value::Bool(b) => b.to_string(),
                        other => text(other).ok_or_else(|| {
                            bad("MongoDB.connection_kwargs", other, "not a scalar")
                        })?,
                    };
                    params.push(format!("{k}={val}"));
                }
            }
        }
        let host = host.unwrap_or_else(|| "localhost".into());
        let mut url = if host.starts_with("mongodb://") || host.starts_with("mongodb+srv://") {
            host
        } else {
            match port {
                Some(p) => format!("mongodb://{host}:{p}"),
                None => format!("mongodb://{host}:27017"),
            }
        };
        if !params.is_empty() {
            let sep = if url.contains('?') {
                '&'
            } else if url.matches('/').count() >= 3 {
                '?'
            } else {
                url.push('/');
                '?'
            };
            url.push(sep);
            url.push_str(&params.join("&"));
        }
        Ok(url)
    }
}

/// Everything needed to open a task database.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct DbConfig {
    /// `IPController.db_class`.
    pub backend: Backend,
    /// Memory DB limits (`DictDB.record_limit`, `.size_limit`, `.cull_fraction`).
    pub limits: Limits,
    /// The hub's session id: names the default SQLite table.
    pub session: String,
    /// The profile directory: default SQLite location.
    pub profile_dir: Option<PathBuf>,
    pub sqlite: SqliteConfig,
    pub mongo: MongoConfig,
}

impl DbConfig {
    /// Check the option values (limits, names).
    pub fn validate(&self) -> Result<(), DbError> {
        let f = self.limits.cull_fraction;
        if !(f > 0.0 && f <= 1.0) {
            return Err(DbError::BadOption {
                name: "DictDB.cull_fraction",
                value: f.to_string(),
                reason: "must be in (0, 1]".into(),
            });
        }
        if self.limits.record_limit == 0 {
            return Err(DbError::BadOption {
                name: "DictDB.record_limit",
                value: "0".into(),
                reason: "must be at least 1".into(),
            });
        }
        if self.sqlite.filename.is_empty() {
            return Err(DbError::BadOption {
                name: "SQLiteDB.filename",
                value: String::new(),
                reason: "must not be empty".into(),
            });
        }
        Ok(())
    }
}

/// Open the configured backend.
pub fn open(cfg: &DbConfig) -> Result<Box<dyn TaskDb + Send>, DbError> {
    cfg.validate()?;
    tracing::info!(backend = %cfg.backend, "opening task database");
    match cfg.backend {
        Backend::Dict => Ok(Box::new(MemoryDb::new(cfg.limits))),
        Backend::No => Ok(Box::new(NoDb)),
        #[cfg(feature = "sqlite")]
        Backend::Sqlite => Ok(Box::new(crate::sqlite::SqliteDb::open(cfg)?)),
        #[cfg(not(feature = "sqlite"))]
        Backend::Sqlite => Err(DbError::NotCompiled("SQLiteDB", "sqlite")),
        #[cfg(feature = "mongodb")]
        Backend::Mongo => Ok(Box::new(crate::mongo::MongoDb::open(cfg)?)),
        #[cfg(not(feature = "mongodb"))]
        Backend::Mongo => Err(DbError::NotCompiled("MongoDB", "mongodb")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn selector_names() {
        for (s, b) in [
            ("DictDB", Backend::Dict),
            ("dictdb", Backend::Dict),
            ("NoDB", Backend::No),
            ("nodb", Backend::No),
            ("SQLiteDB", Backend::Sqlite),
            ("sqlitedb", Backend::Sqlite),
            ("MongoDB", Backend::Mongo),
            ("mongodb", Backend::Mongo),
            (
                "IPython.parallel.controller.sqlitedb.SQLiteDB",
                Backend::Sqlite,
            ),
            ("ipyparallel.controller.sqlitedb.SQLiteDB", Backend::Sqlite),
            ("IPython.parallel.controller.dictdb.DictDB", Backend::Dict),
            ("ipyparallel.controller.dictdb.NoDB", Backend::No),
            (
                "IPython.parallel.controller.mongodb.MongoDB",
                Backend::Mongo,
            ),
            ("'ipyparallel.controller.mongodb.MongoDB'", Backend::Mongo),
        ] {
            assert_eq!(s.parse::<Backend>().unwrap(), b, "{s}");
        }
        for bad in [
            "",
            "Redis",
            "ipyparallel.controller.dictdb.SQLiteDB",
            "foo.DictDB",
        ] {
            let e = bad.parse::<Backend>().unwrap_err();
            assert!(
                matches!(&e, DbError::UnknownBackend(v) if v == bad),
                "{bad}"
            );
            assert!(e.to_string().contains(&format!("{bad:?}")));
        }
    }

    #[test]
    fn open_memory_and_nodb() {
        let db = open(&DbConfig::default()).unwrap();
        assert_eq!(db.backend(), Backend::Dict);
        let cfg = DbConfig {
            backend: Backend::No,
            ..Default::default()
        };
        assert_eq!(open(&cfg).unwrap().backend(), Backend::No);
        let bad = DbConfig {
            limits: Limits {
                cull_fraction: 0.0,
                ..Default::default()
            },
            ..Default::default()
        };
        assert!(matches!(
            open(&bad),
            Err(DbError::BadOption {
                name: "DictDB.cull_fraction",
                ..
            })
        ));
    }

    #[test]
    fn mongo_urls() {
        let mut m = MongoConfig::default();
        assert_eq!(m.url().unwrap(), "mongodb://localhost:27017");
        m.connection_args = vec![json!("db.example"), json!(1234)];
        assert_eq!(m.url().unwrap(), "mongodb://db.example:1234");
        m.connection_args = vec![json!("mongodb://h:1/x")];
        m.connection_kwargs.insert("tz_aware".into(), json!(true));
        m.connection_kwargs.insert("appname".into(), json!("rpar"));
        assert_eq!(m.url().unwrap(), "mongodb://h:1/x?appname=rpar");
        let mut k = MongoConfig::default();
        k.connection_kwargs.insert("host".into(), json!("h2"));
        k.connection_kwargs.insert("port".into(), json!(99));
        assert_eq!(k.url().unwrap(), "mongodb://h2:99");
    }
}
