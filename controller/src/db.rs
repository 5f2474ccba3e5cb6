//! Opening the task database from the controller's settings: `IPController.db_class` picks the
//! backend, and the backend's own `DictDB.*`, `SQLiteDB.*` or `MongoDB.*` settings configure it.
//! An I/O-side helper of `main`, kept beside [`crate::settings`] and out of the sans-I/O hub.

use crate::hub::Db;
use crate::settings::Settings;
use anyhow::Context;
use rpar_core::profile::ProfileDir;
use rpar_taskdb::{Backend, DbConfig};
use serde_json::Value;

/// Open the backend named by `IPController.db_class` with its `DictDB.*`, `SQLiteDB.*` or
/// `MongoDB.*` settings. `session` is the hub session (the default SQLite table name).
pub fn open_db(settings: &Settings, profile: &ProfileDir, session: &str) -> anyhow::Result<Db> {
    let cfg = &settings.config;
    let backend: Backend = settings
        .db_class
        .parse()
        .with_context(|| format!("IPController.db_class = {:?}", settings.db_class))?;
    let mut c = DbConfig {
        backend,
        session: session.to_string(),
        profile_dir: Some(profile.path.clone()),
        ..Default::default()
    };
    if let Some(n) = cfg.i64("DictDB", "record_limit")? {
        c.limits.record_limit = usize::try_from(n)
            .ok()
            .filter(|&n| n >= 1)
            .with_context(|| {
                format!(
                    "DictDB.record_limit = {n} ({}): the number of records kept must be 1 or more",
                    source(settings, "DictDB", "record_limit")
                )
            })?;
    }
    if let Some(n) = cfg.i64("DictDB", "size_limit")? {
        c.limits.size_limit = u64::try_from(n).with_context(|| {
            format!(
                "DictDB.size_limit = {n} ({}): a size in bytes must be 0 or more",
                source(settings, "DictDB", "size_limit")
            )
        })?;
    }
    if let Some(f) = cfg.f64("DictDB", "cull_fraction")? {
        c.limits.cull_fraction = f;
    }
    if let Some(l) = cfg.str("SQLiteDB", "location")? {
        c.sqlite.location = Some(rpar_core::profile::expand_tilde(std::path::Path::new(&l)));
    }
    if let Some(f) = cfg.str("SQLiteDB", "filename")? {
        c.sqlite.filename = f;
    }
    if let Some(t) = cfg.str("SQLiteDB", "table")? {
        c.sqlite.table = Some(t);
    }
    if let Some(d) = cfg.str("MongoDB", "database")? {
        c.mongo.database = d;
    }
    if let Some(s) = cfg.get("MongoDB", "connection_args") {
        if let Value::Array(a) = &s.value {
            c.mongo.connection_args = a.clone();
        }
    }
    if let Some(s) = cfg.get("MongoDB", "connection_kwargs") {
        if let Value::Object(o) = &s.value {
            c.mongo.connection_kwargs = o.clone();
        }
    }
    let db = rpar_taskdb::open(&c)
        .with_context(|| format!("opening the {} task database", settings.db_class))?;
    Ok(db)
}

/// Where a setting was made (file and line, or the command line), for error messages.
fn source(settings: &Settings, class: &str, trait_: &str) -> String {
    settings
        .config
        .get(class, trait_)
        .map(|s| s.source.to_string())
        .unwrap_or_default()
}
