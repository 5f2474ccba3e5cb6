//! How records map onto SQLite: the table schema (ipyparallel's column names), value encoding
//! (JSON text, ISO dates, a length-prefixed blob for buffer lists) and query → SQL `WHERE`
//! translation.
//!
//! The `WHERE` clause is a *prefilter*: it is exact for text and date fields and for null
//! tests, and says "maybe" (`1`) for tests inside JSON fields; rows are always re-checked with
//! the shared query evaluator, so results equal the memory backend's.

use rpar_core::ids::{iso, parse_iso};
use rusqlite::types::{Value as SqlValue, ValueRef};

use crate::error::DbError;
use crate::query::{Cond, Operand, Query};
use crate::record::{Field, FieldKind, FieldValue, TaskRecord};

/// The declared SQL type of each column. Buffer lists use our own encoding, so their type
/// (`rbufs blob`) differs from ipyparallel's pickled `bufs blob`: a table written by Python's
/// SQLiteDB is recognised as foreign (and a `_1` table used) instead of being misread.
pub fn decl_type(f: Field) -> &'static str {
    match f {
        Field::MsgId => "text",
        _ => match f.kind() {
            FieldKind::Text => "text",
            FieldKind::Date => "timestamp",
            // execute_result / error are declared `text` in ipyparallel's schema.
            FieldKind::Json if matches!(f, Field::ExecuteResult | Field::Error) => "text",
            FieldKind::Json => "dict text",
            FieldKind::Buffers => "rbufs blob",
        },
    }
}

/// Quote an identifier for SQL.
pub fn ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// `CREATE TABLE` for a task table.
pub fn create_table_sql(table: &str) -> String {
    let cols: Vec<String> = Field::ALL
        .iter()
        .map(|&f| {
            let pk = if f == Field::MsgId {
                " PRIMARY KEY"
            } else {
                ""
            };
            format!("{} {}{}", f.name(), decl_type(f), pk)
        })
        .collect();
    format!(
        "CREATE TABLE IF NOT EXISTS {} ({})",
        ident(table),
        cols.join(", ")
    )
}

const BUFS_MAGIC: &[u8; 4] = b"RPB1";

/// Encode a buffer list: `RPB1`, u32 count, then per buffer a u64 length and the bytes
/// (little-endian). Empty lists are stored as NULL.
pub fn encode_bufs(bufs: &[Vec<u8>]) -> Option<Vec<u8>> {
    if bufs.is_empty() {
        return None;
    }
    let total: usize = bufs.iter().map(|b| b.len() + 8).sum::<usize>() + 8;
    let mut out = Vec::with_capacity(total);
    out.extend_from_slice(BUFS_MAGIC);
    out.extend_from_slice(&(bufs.len() as u32).to_le_bytes());
    for b in bufs {
        out.extend_from_slice(&(b.len() as u64).to_le_bytes());
        out.extend_from_slice(b);
    }
    Some(out)
}

/// Decode [`encode_bufs`]' format.
pub fn decode_bufs(data: &[u8]) -> Result<Vec<Vec<u8>>, String> {
    let rest = data
        .strip_prefix(BUFS_MAGIC)
        .ok_or("buffer blob lacks the RPB1 header (written by another program?)")?;
    let (n, mut rest) = rest.split_at_checked(4).ok_or("truncated buffer count")?;
    let n = u32::from_le_bytes([n[0], n[1], n[2], n[3]]) as usize;
    let mut out = Vec::with_capacity(n.min(1 << 16));
    for _ in 0..n {
        let (len, r) = rest.split_at_checked(8).ok_or("truncated buffer length")?;
        let mut l = [0u8; 8];
        l.copy_from_slice(len);
        let len = usize::try_from(u64::from_le_bytes(l)).map_err(|_| "buffer too long")?;
        let (b, r) = r.split_at_checked(len).ok_or("truncated buffer")?;
        out.push(b.to_vec());
        rest = r;
    }
    if !rest.is_empty() {
        return Err("trailing bytes after buffers".into());
    }
    Ok(out)
}

/// A field's SQL value (NULL when unset).
pub fn to_sql(rec: &TaskRecord, f: Field) -> SqlValue {
    use crate::record::FieldRef;
    match rec.get(f) {
        FieldRef::Null => SqlValue::Null,
        FieldRef::Text(s) => SqlValue::Text(s.to_string()),
        FieldRef::Date(d) => SqlValue::Text(iso(d)),
        FieldRef::Json(v) => SqlValue::Text(v.to_string()),
        FieldRef::Buffers(b) => encode_bufs(b).map_or(SqlValue::Null, SqlValue::Blob),
    }
}

/// Decode one column into the record.
pub fn from_sql(rec: &mut TaskRecord, f: Field, v: ValueRef<'_>) -> Result<(), DbError> {
    let corrupt = |reason: String| DbError::Corrupt {
        msg_id: rec.msg_id.clone().unwrap_or_default(),
        reason: format!("column {}: {reason}", f.name()),
    };
    let text = |v: ValueRef<'_>| -> Result<String, String> {
        match v {
            ValueRef::Text(t) => String::from_utf8(t.to_vec()).map_err(|e| e.to_string()),
            ValueRef::Integer(i) => Ok(i.to_string()),
            ValueRef::Real(r) => Ok(r.to_string()),
            _ => Err("expected text".into()),
        }
    };
    if matches!(v, ValueRef::Null) {
        return rec.set(f, None);
    }
    let value = match f.kind() {
        FieldKind::Text => FieldValue::Text(text(v).map_err(corrupt)?),
        FieldKind::Date => {
            let s = text(v).map_err(corrupt)?;
            FieldValue::Date(parse_iso(&s).ok_or_else(|| corrupt(format!("bad date {s:?}")))?)
        }
        FieldKind::Json => {
            let s = text(v).map_err(corrupt)?;
            FieldValue::Json(serde_json::from_str(&s).map_err(|e| corrupt(e.to_string()))?)
        }
        FieldKind::Buffers => match v {
            ValueRef::Blob(b) => FieldValue::Buffers(decode_bufs(b).map_err(corrupt)?),
            _ => return Err(corrupt("expected a blob".into())),
        },
    };
    rec.set(f, Some(value))
}

fn operand(o: &Operand) -> SqlValue {
    match o {
        Operand::Null => SqlValue::Null,
        Operand::Text(s) => SqlValue::Text(s.clone()),
        Operand::Date(d) => SqlValue::Text(iso(*d)),
        Operand::Json(v) => SqlValue::Text(v.to_string()),
    }
}

/// A `WHERE` expression (and its parameters) selecting a superset of the query's matches.
pub fn where_clause(q: &Query) -> (String, Vec<SqlValue>) {
    let mut parts = Vec::new();
    let mut params = Vec::new();
    for clause in &q.clauses {
        if !clause.path.sub.is_empty() {
            continue;
        }
        let f = clause.path.field;
        let col = match f {
            Field::Stdout | Field::Stderr => format!("COALESCE({}, '')", ident(f.name())),
            _ => ident(f.name()),
        };
        let exact = matches!(f.kind(), FieldKind::Text | FieldKind::Date);
        for cond in &clause.conds {
            let mut p = |o: &Operand| params.push(operand(o));
            let expr = match cond {
                Cond::Exists(true) => format!("{col} IS NOT NULL"),
                Cond::Exists(false) => format!("{col} IS NULL"),
                Cond::Eq(Operand::Null) => format!("{col} IS NULL"),
                Cond::Ne(Operand::Null) => format!("{col} IS NOT NULL"),
                _ if !exact => continue,
                Cond::Eq(o) => {
                    p(o);
                    format!("{col} IS ?")
                }
                Cond::Ne(o) => {
                    p(o);
                    format!("{col} IS NOT ?")
                }
                Cond::Lt(o) => {
                    p(o);
                    format!("{col} < ?")
                }
                Cond::Lte(o) => {
                    p(o);
                    format!("{col} <= ?")
                }
                Cond::Gt(o) => {
                    p(o);
                    format!("{col} > ?")
                }
                Cond::Gte(o) => {
                    p(o);
                    format!("{col} >= ?")
                }
                Cond::In(list) | Cond::Nin(list) | Cond::All(list) if list.is_empty() => {
                    if matches!(cond, Cond::Nin(_)) {
                        "1"
                    } else {
                        "0"
                    }
                    .to_string()
                }
                Cond::In(list) => {
                    list.iter().for_each(&mut p);
                    format!("({})", vec![format!("{col} IS ?"); list.len()].join(" OR "))
                }
                Cond::Nin(list) => {
                    list.iter().for_each(&mut p);
                    format!(
                        "({})",
                        vec![format!("{col} IS NOT ?"); list.len()].join(" AND ")
                    )
                }
                Cond::All(list) => {
                    list.iter().for_each(&mut p);
                    format!(
                        "({})",
                        vec![format!("{col} IS ?"); list.len()].join(" AND ")
                    )
                }
                Cond::Glob(g) => {
                    params.push(SqlValue::Text(g.to_sql()));
                    format!("{col} GLOB ?")
                }
                // Rejected by the parser for text and date fields; keep the row for the
                // evaluator to decide.
                Cond::Mod { .. } => continue,
            };
            parts.push(expr);
        }
    }
    if parts.is_empty() {
        ("1".into(), params)
    } else {
        (parts.join(" AND "), params)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn bufs_round_trip_and_reject_garbage() {
        let b = vec![vec![], vec![1, 2, 3], vec![0; 1000]];
        assert_eq!(decode_bufs(&encode_bufs(&b).unwrap()).unwrap(), b);
        assert_eq!(encode_bufs(&[]), None);
        assert!(decode_bufs(b"\x80\x05pickle").is_err());
        let mut e = encode_bufs(&b).unwrap();
        e.pop();
        assert!(decode_bufs(&e).is_err());
    }

    #[test]
    fn schema_keeps_ipyparallel_column_names() {
        let sql = create_table_sql("_abc");
        assert!(sql.starts_with(
            "CREATE TABLE IF NOT EXISTS \"_abc\" (msg_id text PRIMARY KEY, header dict text,"
        ));
        assert!(sql.contains("submitted timestamp") && sql.contains("label text)"));
    }

    #[test]
    fn where_translation() {
        let q = Query::parse(&json!({"msg_id": {"$in": ["a", null]}, "stdout": {"$glob": "[!x]*"},
            "header.n": 3, "header": {"$ne": null}, "submitted": {"$lt": "2026-01-01T00:00:00+01:00"}}))
        .unwrap();
        let (w, p) = where_clause(&q);
        assert_eq!(
            w,
            "(\"msg_id\" IS ? OR \"msg_id\" IS ?) AND COALESCE(\"stdout\", '') GLOB ? AND \"header\" IS NOT NULL AND \"submitted\" < ?"
        );
        assert_eq!(
            p,
            vec![
                SqlValue::Text("a".into()),
                SqlValue::Null,
                SqlValue::Text("[^x]*".into()),
                SqlValue::Text("2025-12-31T23:00:00.000000Z".into())
            ]
        );
        assert_eq!(where_clause(&Query::all()).0, "1");
    }
}
