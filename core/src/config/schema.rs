//! The settings each rpar program accepts: classes, their traits (with type, default and
//! meaning), class inheritance, and the table of old names (IPython.parallel ≤ 3.x,
//! ipyparallel ≤ 6) that still work.
//!
//! This table is the single list behind three things: validation in [`super::Config`] (an
//! unknown setting is an error that names its file and line), the commented default config
//! files that `rpar profile create --parallel` writes, and `get()`'s inheritance (a value set on
//! `PBSLauncher` applies to `PBSEngineSetLauncher`). Defaults are Python literals, as a user
//! would write them in `*_config.py`.

/// The three programs that read config files.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum App {
    /// `rpar-controller`, reads `ipcontroller_config.{py,json}`.
    Controller,
    /// `rpar-engine`, reads `ipengine_config.{py,json}`.
    Engine,
    /// `rpar cluster` / `rpar jobscript`, reads `ipcluster_config.{py,json}`.
    Cluster,
}

impl App {
    /// Accepts `ipcontroller`, `ipengine`, `ipcluster` and the rpar program names.
    pub fn parse(name: &str) -> Option<App> {
        match name {
            "ipcontroller" | "rpar-controller" | "controller" => Some(App::Controller),
            "ipengine" | "rpar-engine" | "engine" => Some(App::Engine),
            "ipcluster" | "rpar" | "cluster" => Some(App::Cluster),
            _ => None,
        }
    }
    /// The config file stem: `ipcontroller`, `ipengine` or `ipcluster`.
    pub fn name(self) -> &'static str {
        match self {
            App::Controller => "ipcontroller",
            App::Engine => "ipengine",
            App::Cluster => "ipcluster",
        }
    }
    /// `ipcontroller_config.py` etc.
    pub fn config_file(self) -> String {
        format!("{}_config.py", self.name())
    }
}

/// The type a trait's value must have.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Str,
    Int,
    Float,
    Bool,
    /// A list (of strings, usually; a command line given as one string is split by the caller).
    List,
    Dict,
    /// Anything (checked by the program that uses it).
    Any,
}

impl Kind {
    pub fn describe(self) -> &'static str {
        match self {
            Kind::Str => "a string",
            Kind::Int => "an integer",
            Kind::Float => "a number",
            Kind::Bool => "True or False",
            Kind::List => "a list",
            Kind::Dict => "a dict",
            Kind::Any => "a value",
        }
    }
    /// Does a JSON value fit this kind? `None` fits any kind (meaning "use the default").
    pub fn accepts(self, v: &serde_json::Value) -> bool {
        use serde_json::Value as V;
        match (self, v) {
            (_, V::Null) | (Kind::Any, _) => true,
            (Kind::Str, V::String(_)) => true,
            (Kind::Int, V::Number(n)) => n.is_i64() || n.is_u64(),
            (Kind::Float, V::Number(_)) => true,
            (Kind::Bool, V::Bool(_)) => true,
            (Kind::List, V::Array(_)) => true,
            (Kind::Dict, V::Object(_)) => true,
            _ => false,
        }
    }
}

/// Whether rpar acts on a setting.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    /// rpar uses it.
    Used,
    /// Accepted for compatibility and ignored; the text says why (logged as a warning).
    Ignored(&'static str),
}

/// One configurable trait.
#[derive(Debug, Clone, Copy)]
pub struct TraitDef {
    pub name: &'static str,
    pub kind: Kind,
    /// The default as a Python literal (`'127.0.0.1'`, `3000`, `[]`), or a description in `<...>`.
    pub default: &'static str,
    pub help: &'static str,
    pub status: Status,
}

/// One configurable class.
#[derive(Debug, Clone, Copy)]
pub struct ClassDef {
    pub name: &'static str,
    /// Parent classes, most specific first: settings on a parent apply unless the class sets its own.
    pub parents: &'static [&'static str],
    /// Programs that read this class (an empty list: every program).
    pub apps: &'static [App],
    pub help: &'static str,
    pub traits: &'static [TraitDef],
}

impl ClassDef {
    pub fn used_by(&self, app: App) -> bool {
        self.apps.is_empty() || self.apps.contains(&app)
    }
    pub fn own_trait(&self, name: &str) -> Option<&'static TraitDef> {
        self.traits.iter().find(|t| t.name == name)
    }
}

/// An old spelling. `old_trait`/`new_trait` `None`: every trait of the class is renamed as is.
#[derive(Debug, Clone, Copy)]
pub struct Alias {
    pub old_class: &'static str,
    pub old_trait: Option<&'static str>,
    pub new_class: &'static str,
    pub new_trait: Option<&'static str>,
}

mod table;
pub use table::{ALIASES, CLASSES};

/// The class named `name` (new names only; see [`canonical`]).
pub fn class(name: &str) -> Option<&'static ClassDef> {
    CLASSES.iter().find(|c| c.name == name)
}

/// The new (class, trait) for a possibly old spelling.
pub fn canonical<'a>(class: &'a str, trait_: &'a str) -> (&'a str, &'a str) {
    for a in ALIASES {
        if a.old_class != class {
            continue;
        }
        match (a.old_trait, a.new_trait) {
            (Some(ot), Some(nt)) if ot == trait_ => return (a.new_class, nt),
            (None, _) => return (a.new_class, trait_),
            _ => {}
        }
    }
    (class, trait_)
}

/// The new name of an old class, if it is one.
pub fn renamed_class(old: &str) -> Option<&'static str> {
    ALIASES
        .iter()
        .find(|a| a.old_class == old && a.old_trait.is_none())
        .map(|a| a.new_class)
}

/// `class` and its ancestors, most specific first (depth-first, each once, like Python's MRO
/// for these simple hierarchies).
pub fn lineage(class_name: &str) -> Vec<&'static str> {
    let mut out: Vec<&'static str> = Vec::new();
    fn walk(name: &str, out: &mut Vec<&'static str>) {
        if let Some(c) = class(name) {
            if !out.contains(&c.name) {
                out.push(c.name);
            }
            for p in c.parents {
                walk(p, out);
            }
        }
    }
    walk(class_name, &mut out);
    out
}

/// The trait definition for `trait_` on `class_name` or one of its ancestors.
pub fn find_trait(
    class_name: &str,
    trait_: &str,
) -> Option<(&'static ClassDef, &'static TraitDef)> {
    lineage(class_name)
        .into_iter()
        .filter_map(class)
        .find_map(|c| c.own_trait(trait_).map(|t| (c, t)))
}

/// Every trait settable on a class (its own and inherited), for messages.
pub fn all_traits(class_name: &str) -> Vec<&'static str> {
    let mut v: Vec<&'static str> = Vec::new();
    for c in lineage(class_name).into_iter().filter_map(class) {
        for t in c.traits {
            if !v.contains(&t.name) {
                v.push(t.name);
            }
        }
    }
    v
}

/// The classes a program reads, in table order.
pub fn classes_for(app: App) -> impl Iterator<Item = &'static ClassDef> {
    CLASSES.iter().filter(move |c| c.used_by(app))
}

/// The closest of `candidates` to `word` (edit distance ≤ a third of its length), for "did you mean".
pub fn closest<'a>(word: &str, candidates: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    let limit = (word.len() / 3).max(2);
    candidates
        .into_iter()
        .map(|c| (levenshtein(&word.to_lowercase(), &c.to_lowercase()), c))
        .filter(|(d, _)| *d <= limit)
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| c)
}

fn levenshtein(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1; b.len() + 1];
        for (j, cb) in b.iter().enumerate() {
            let cost = usize::from(ca != *cb);
            cur[j + 1] = (prev[j] + cost).min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        prev = cur;
    }
    prev[b.len()]
}
