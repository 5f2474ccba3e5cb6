//! The command line's side of configuration: which arguments are `--Class.trait=value`
//! settings, how their values are read (Python literals, else plain text), and shell-style word
//! splitting for settings that hold a command line.

use super::{literal, ConfigError, Kind};
use serde_json::Value;

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

pub(super) fn parse_cli_arg(arg: &str) -> Result<(String, String, &str), ConfigError> {
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
