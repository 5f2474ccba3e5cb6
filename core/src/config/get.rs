//! Reading settings back: the effective value of a trait (class, then its ancestors; either
//! spelling) and the typed getters that turn a wrong type into an error naming where it was set.

use super::{schema, short, split_words, Config, ConfigError, Kind, Setting};
use serde_json::Value;

impl Config {
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

    pub(super) fn kind_of(&self, class: &str, trait_: &str) -> Kind {
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
}
