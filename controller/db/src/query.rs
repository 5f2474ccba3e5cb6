//! The mongo-style query language of `db_request` (protocol §7.5), parsed once into a typed
//! [`Query`] that every backend evaluates the same way.
//!
//! A query is `{field: value}` (equality) or `{field: {"$op": value, …}}` (all ops must hold);
//! several fields are ANDed. Operators: `$eq $ne $lt $lte $gt $gte $in $nin $all $exists $mod
//! $glob`. Fields are the record's 23 names; a dotted name (`result_content.status`) reaches into
//! a JSON field. Values for date fields arrive as ISO strings and compare as dates.
//!
//! Semantics (the same on every backend; ipyparallel's DictDB `$gt`-acts-like-`$lt` bug is not
//! reproduced):
//! * an unset field is null; `{f: null}` / `$eq: null` match it, `$ne: null` / `$exists: true`
//!   do not; ordered comparisons, `$glob` and `$mod` never match null;
//! * values of different types are never equal nor ordered (a number is not `<` a string);
//! * `$in`/`$nin` hold a list of values (null allowed); `$all` holds a list and matches a JSON
//!   array containing every item, or a scalar equal to every item;
//! * `$mod: [divisor, remainder]` applies to JSON numbers (truncated to integers);
//! * `stdout`/`stderr` read as `""` when nothing was printed.

use chrono::{DateTime, Utc};
use rpar_core::ids::parse_iso;
use serde_json::Value;
use std::cmp::Ordering;

use crate::error::QueryError;
use crate::glob::Glob;
use crate::record::{Field, FieldKind, FieldRef, TaskRecord};

/// Where a test looks: a record field, optionally a path inside a JSON field.
#[derive(Debug, Clone, PartialEq)]
pub struct FieldPath {
    pub field: Field,
    /// Keys (or array indexes) below the field; empty for the field itself.
    pub sub: Vec<String>,
}

impl FieldPath {
    /// The kind of value at this path: a JSON sub-path is always [`FieldKind::Json`].
    pub fn kind(&self) -> FieldKind {
        if self.sub.is_empty() {
            self.field.kind()
        } else {
            FieldKind::Json
        }
    }

    fn display(&self) -> String {
        let mut s = self.field.name().to_string();
        for k in &self.sub {
            s.push('.');
            s.push_str(k);
        }
        s
    }
}

/// A query operand, already converted to the kind of the field it is compared with.
#[derive(Debug, Clone, PartialEq)]
pub enum Operand {
    Null,
    Text(String),
    Date(DateTime<Utc>),
    Json(Value),
}

/// One test on a field.
#[derive(Debug, Clone, PartialEq)]
pub enum Cond {
    Eq(Operand),
    Ne(Operand),
    Lt(Operand),
    Lte(Operand),
    Gt(Operand),
    Gte(Operand),
    In(Vec<Operand>),
    Nin(Vec<Operand>),
    All(Vec<Operand>),
    Exists(bool),
    Mod { divisor: i64, remainder: i64 },
    Glob(Glob),
}

/// All tests on one field path.
#[derive(Debug, Clone, PartialEq)]
pub struct Clause {
    pub path: FieldPath,
    pub conds: Vec<Cond>,
}

/// A parsed query: every clause must hold.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Query {
    pub clauses: Vec<Clause>,
}

impl Query {
    /// The query that matches everything (`{}`).
    pub fn all() -> Query {
        Query::default()
    }

    /// `{"msg_id": {"$in": ids}}`.
    pub fn msg_ids<S: AsRef<str>>(ids: &[S]) -> Query {
        Query {
            clauses: vec![Clause {
                path: FieldPath {
                    field: Field::MsgId,
                    sub: vec![],
                },
                conds: vec![Cond::In(
                    ids.iter()
                        .map(|s| Operand::Text(s.as_ref().to_string()))
                        .collect(),
                )],
            }],
        }
    }

    /// Parse the `query` of a `db_request` / purge.
    pub fn parse(v: &Value) -> Result<Query, QueryError> {
        let obj = match v {
            Value::Object(o) => o,
            Value::Null => return Ok(Query::all()),
            other => return Err(QueryError::NotAnObject(short(other))),
        };
        let mut clauses = Vec::with_capacity(obj.len());
        for (name, test) in obj {
            let path = parse_path(name)?;
            let conds = parse_test(&path, test)?;
            clauses.push(Clause { path, conds });
        }
        Ok(Query { clauses })
    }

    /// Does the record satisfy every clause?
    pub fn matches(&self, rec: &TaskRecord) -> bool {
        self.clauses.iter().all(|c| {
            let v = lookup(rec, &c.path);
            c.conds.iter().all(|cond| eval(cond, v))
        })
    }

    /// The records that satisfy the query, each cut down to `keys` (plus `msg_id`; `None` keeps
    /// them whole): for backends that read the query's own fields along with `keys`.
    pub fn select(&self, recs: Vec<TaskRecord>, keys: Option<&[Field]>) -> Vec<TaskRecord> {
        recs.into_iter()
            .filter(|r| self.matches(r))
            .map(|r| match keys {
                None => r,
                Some(k) => r.project(Some(k)),
            })
            .collect()
    }

    /// The top-level fields the query reads.
    pub fn fields(&self) -> Vec<Field> {
        let mut out: Vec<Field> = Vec::new();
        for c in &self.clauses {
            if !out.contains(&c.path.field) {
                out.push(c.path.field);
            }
        }
        out
    }
}

fn short(v: &Value) -> String {
    let mut s = v.to_string();
    if s.len() > 80 {
        let mut cut = 77;
        while !s.is_char_boundary(cut) {
            cut -= 1;
        }
        s.truncate(cut);
        s.push_str("...");
    }
    s
}

fn parse_path(name: &str) -> Result<FieldPath, QueryError> {
    let mut parts = name.split('.');
    let head = parts.next().unwrap_or_default();
    let field: Field = head
        .parse()
        .map_err(|_| QueryError::UnknownField(name.to_string()))?;
    let sub: Vec<String> = parts.map(str::to_string).collect();
    if !sub.is_empty() && field.kind() != FieldKind::Json {
        return Err(QueryError::UnknownField(name.to_string()));
    }
    if sub.iter().any(String::is_empty) {
        return Err(QueryError::UnknownField(name.to_string()));
    }
    Ok(FieldPath { field, sub })
}

fn parse_test(path: &FieldPath, test: &Value) -> Result<Vec<Cond>, QueryError> {
    let ops = match test {
        Value::Object(o) if o.is_empty() || o.keys().any(|k| k.starts_with('$')) => {
            if o.keys().any(|k| !k.starts_with('$')) {
                return Err(QueryError::MixedOperators {
                    field: path.display(),
                });
            }
            o
        }
        // A plain value, or (for JSON fields) an object compared as a whole.
        v => return Ok(vec![Cond::Eq(operand(path, "$eq", v)?)]),
    };
    let mut conds = Vec::with_capacity(ops.len());
    for (op, arg) in ops {
        let cond = match op.as_str() {
            "$eq" => Cond::Eq(operand(path, "$eq", arg)?),
            "$ne" => Cond::Ne(operand(path, "$ne", arg)?),
            "$lt" => Cond::Lt(ordered(path, "$lt", arg)?),
            "$lte" => Cond::Lte(ordered(path, "$lte", arg)?),
            "$gt" => Cond::Gt(ordered(path, "$gt", arg)?),
            "$gte" => Cond::Gte(ordered(path, "$gte", arg)?),
            "$in" => Cond::In(list(path, "$in", arg)?),
            "$nin" => Cond::Nin(list(path, "$nin", arg)?),
            "$all" => Cond::All(list(path, "$all", arg)?),
            "$exists" => Cond::Exists(match arg {
                Value::Bool(b) => *b,
                Value::Number(n) => n.as_f64() != Some(0.0),
                Value::Null => false,
                other => {
                    return Err(bad(
                        path,
                        "$exists",
                        format!("expected a bool, got {other}"),
                    ))
                }
            }),
            "$mod" => {
                not_for(
                    path,
                    "$mod",
                    &[FieldKind::Text, FieldKind::Date, FieldKind::Buffers],
                )?;
                let pair = arg.as_array().filter(|a| a.len() == 2).ok_or_else(|| {
                    bad(
                        path,
                        "$mod",
                        format!("expected [divisor, remainder], got {arg}"),
                    )
                })?;
                let int = |v: &Value| v.as_i64().or_else(|| v.as_f64().map(|f| f.trunc() as i64));
                let (Some(divisor), Some(remainder)) = (int(&pair[0]), int(&pair[1])) else {
                    return Err(bad(
                        path,
                        "$mod",
                        format!("expected two numbers, got {arg}"),
                    ));
                };
                if divisor == 0 {
                    return Err(bad(path, "$mod", "divisor is zero".into()));
                }
                Cond::Mod { divisor, remainder }
            }
            "$glob" => {
                not_for(path, "$glob", &[FieldKind::Date, FieldKind::Buffers])?;
                match arg {
                    Value::String(p) => Cond::Glob(Glob::new(p)),
                    other => {
                        return Err(bad(
                            path,
                            "$glob",
                            format!("expected a string pattern, got {other}"),
                        ))
                    }
                }
            }
            _ => {
                return Err(QueryError::UnknownOperator {
                    field: path.display(),
                    op: op.clone(),
                })
            }
        };
        conds.push(cond);
    }
    Ok(conds)
}

fn bad(path: &FieldPath, op: &'static str, reason: String) -> QueryError {
    QueryError::BadValue {
        field: path.display(),
        op,
        reason,
    }
}

fn not_for(path: &FieldPath, op: &'static str, kinds: &[FieldKind]) -> Result<(), QueryError> {
    let kind = path.kind();
    if kinds.contains(&kind) {
        Err(QueryError::OperatorNotForField {
            field: path.display(),
            op,
            kind,
        })
    } else {
        Ok(())
    }
}

fn ordered(path: &FieldPath, op: &'static str, v: &Value) -> Result<Operand, QueryError> {
    not_for(path, op, &[FieldKind::Buffers])?;
    match operand(path, op, v)? {
        Operand::Null => Err(bad(path, op, "cannot order against null".into())),
        o => Ok(o),
    }
}

fn list(path: &FieldPath, op: &'static str, v: &Value) -> Result<Vec<Operand>, QueryError> {
    match v {
        Value::Array(items) => items.iter().map(|i| operand(path, op, i)).collect(),
        other => Err(bad(
            path,
            op,
            format!("expected a list, got {}", short(other)),
        )),
    }
}

/// Convert a query value to the field's kind.
fn operand(path: &FieldPath, op: &'static str, v: &Value) -> Result<Operand, QueryError> {
    if v.is_null() {
        return Ok(Operand::Null);
    }
    match path.kind() {
        FieldKind::Json => Ok(Operand::Json(v.clone())),
        FieldKind::Text => match v {
            Value::String(s) => Ok(Operand::Text(s.clone())),
            other => Err(bad(
                path,
                op,
                format!("expected a string, got {}", short(other)),
            )),
        },
        FieldKind::Date => match v {
            Value::String(s) => parse_iso(s)
                .map(Operand::Date)
                .ok_or_else(|| bad(path, op, format!("{s:?} is not an ISO-8601 date"))),
            other => Err(bad(
                path,
                op,
                format!("expected an ISO date string, got {}", short(other)),
            )),
        },
        FieldKind::Buffers => Err(QueryError::OperatorNotForField {
            field: path.display(),
            op,
            kind: FieldKind::Buffers,
        }),
    }
}

/// The value at a path: a JSON sub-path that does not exist is null.
fn lookup<'a>(rec: &'a TaskRecord, path: &FieldPath) -> FieldRef<'a> {
    let top = rec.get(path.field);
    if path.sub.is_empty() {
        return top;
    }
    let FieldRef::Json(mut v) = top else {
        return FieldRef::Null;
    };
    for key in &path.sub {
        let next = match v {
            Value::Object(o) => o.get(key),
            Value::Array(a) => key.parse::<usize>().ok().and_then(|i| a.get(i)),
            _ => None,
        };
        match next {
            Some(n) => v = n,
            None => return FieldRef::Null,
        }
    }
    if v.is_null() {
        FieldRef::Null
    } else {
        FieldRef::Json(v)
    }
}

/// Compare a field value with an operand; `None` = incomparable (different types, or null).
fn compare(v: FieldRef<'_>, o: &Operand) -> Option<Ordering> {
    match (v, o) {
        (FieldRef::Text(a), Operand::Text(b)) => Some(a.cmp(b.as_str())),
        (FieldRef::Date(a), Operand::Date(b)) => Some(a.cmp(b)),
        (FieldRef::Json(a), Operand::Json(b)) => json_cmp(a, b),
        _ => None,
    }
}

fn json_cmp(a: &Value, b: &Value) -> Option<Ordering> {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => {
            if let (Some(x), Some(y)) = (x.as_i64(), y.as_i64()) {
                Some(x.cmp(&y))
            } else {
                x.as_f64()?.partial_cmp(&y.as_f64()?)
            }
        }
        (Value::String(x), Value::String(y)) => Some(x.cmp(y)),
        (Value::Bool(x), Value::Bool(y)) => Some(x.cmp(y)),
        _ => None,
    }
}

fn equal(v: FieldRef<'_>, o: &Operand) -> bool {
    match (v, o) {
        (FieldRef::Null, Operand::Null) => true,
        (FieldRef::Json(a), Operand::Json(b)) => {
            json_cmp(a, b).map_or_else(|| a == b, |ord| ord == Ordering::Equal)
        }
        _ => compare(v, o) == Some(Ordering::Equal),
    }
}

fn eval(cond: &Cond, v: FieldRef<'_>) -> bool {
    let ord = |o: &Operand, want: &[Ordering]| compare(v, o).is_some_and(|c| want.contains(&c));
    match cond {
        Cond::Eq(o) => equal(v, o),
        Cond::Ne(o) => !equal(v, o),
        Cond::Lt(o) => ord(o, &[Ordering::Less]),
        Cond::Lte(o) => ord(o, &[Ordering::Less, Ordering::Equal]),
        Cond::Gt(o) => ord(o, &[Ordering::Greater]),
        Cond::Gte(o) => ord(o, &[Ordering::Greater, Ordering::Equal]),
        Cond::In(list) => list.iter().any(|o| equal(v, o)),
        Cond::Nin(list) => !list.iter().any(|o| equal(v, o)),
        Cond::All(list) => {
            if list.is_empty() {
                return false;
            }
            match v {
                FieldRef::Json(Value::Array(items)) => list.iter().all(|o| {
                    items.iter().any(|item| {
                        equal(FieldRef::Json(item), o) || (item.is_null() && *o == Operand::Null)
                    })
                }),
                _ => list.iter().all(|o| equal(v, o)),
            }
        }
        Cond::Exists(want) => !matches!(v, FieldRef::Null) == *want,
        Cond::Mod { divisor, remainder } => match v {
            FieldRef::Json(Value::Number(n)) => {
                let x = n.as_i64().or_else(|| n.as_f64().map(|f| f.trunc() as i64));
                x.is_some_and(|x| x.checked_rem(*divisor) == Some(*remainder))
            }
            _ => false,
        },
        Cond::Glob(g) => match v {
            FieldRef::Text(s) => g.matches(s),
            FieldRef::Json(Value::String(s)) => g.matches(s),
            _ => false,
        },
    }
}

#[cfg(test)]
mod tests;
