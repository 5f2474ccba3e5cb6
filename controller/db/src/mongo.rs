//! The MongoDB backend (ipyparallel's `MongoDB`, cargo feature `mongodb`).
//!
//! Records are documents in `<MongoDB.database>.task_records` (unique index on `msg_id`, index
//! on `submitted`); JSON fields are embedded documents, so dotted query paths work natively;
//! buffers are arrays of BSON binaries; dates are stored as fixed-width ISO-8601 text (`…Z`,
//! microseconds), which keeps microsecond precision and still orders correctly.
//!
//! Queries are translated to a native filter that selects a superset of the matches (`$glob`
//! becomes an anchored `$regex`), and every returned document is re-checked with the shared
//! evaluator, so results equal the other backends'. Writes go to the server synchronously, as
//! ipyparallel's pymongo backend does.
//!
//! Tests need a server: they run against `RPAR_TEST_MONGODB_URL` (e.g.
//! `mongodb://localhost:27017`) when it is set, in a throw-away database, and are skipped
//! otherwise.

use mongodb::bson::{self, doc, Binary, Bson, Document};
use mongodb::options::IndexOptions;
use mongodb::sync::{Client, Collection};
use mongodb::IndexModel;
use rpar_core::ids::{iso, parse_iso};
use serde_json::Value;
use std::collections::HashMap;

use crate::config::{Backend, DbConfig};
use crate::error::DbError;
use crate::query::{Cond, Operand, Query};
use crate::record::{Field, FieldKind, FieldRef, FieldValue, Stream, TaskRecord};
use crate::TaskDb;

/// The MongoDB backend. See the module docs.
pub struct MongoDb {
    coll: Collection<Document>,
}

impl std::fmt::Debug for MongoDb {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MongoDb")
            .field("collection", &self.coll.namespace())
            .finish()
    }
}

impl MongoDb {
    /// Connect as the configuration says and make sure the indexes exist.
    pub fn open(cfg: &DbConfig) -> Result<MongoDb, DbError> {
        let url = cfg.mongo.url()?;
        MongoDb::open_url(&url, &cfg.mongo.database)
    }

    /// Connect to `url` and use `database`.
    pub fn open_url(url: &str, database: &str) -> Result<MongoDb, DbError> {
        let client = Client::with_uri_str(url)?;
        let coll = client
            .database(database)
            .collection::<Document>("task_records");
        coll.create_index(
            IndexModel::builder()
                .keys(doc! {"msg_id": 1})
                .options(IndexOptions::builder().unique(true).build())
                .build(),
        )
        .run()?;
        coll.create_index(IndexModel::builder().keys(doc! {"submitted": 1}).build())
            .run()?;
        tracing::info!(database, "MongoDB task database open");
        Ok(MongoDb { coll })
    }

    fn upsert(&self, msg_id: &str, patch: &TaskRecord) -> Result<(), DbError> {
        let mut set = Document::new();
        for &f in Field::ALL {
            if f == Field::MsgId {
                continue;
            }
            if let Some(v) = to_bson(patch, f)? {
                set.insert(f.name(), v);
            }
        }
        let mut on_insert = Document::new();
        for f in [Field::Stdout, Field::Stderr] {
            if !set.contains_key(f.name()) {
                on_insert.insert(f.name(), "");
            }
        }
        let mut update = Document::new();
        if !on_insert.is_empty() {
            update.insert("$setOnInsert", on_insert);
        }
        if !set.is_empty() {
            update.insert("$set", set);
        }
        self.coll
            .update_one(doc! {"msg_id": msg_id}, update)
            .upsert(true)
            .run()?;
        Ok(())
    }

    fn find_docs(
        &self,
        filter: Document,
        projection: Option<Document>,
    ) -> Result<Vec<TaskRecord>, DbError> {
        let mut find = self.coll.find(filter).sort(doc! {"_id": 1});
        if let Some(p) = projection {
            find = find.projection(p);
        }
        let mut out = Vec::new();
        for d in find.run()? {
            out.push(from_doc(&d?)?);
        }
        Ok(out)
    }
}

/// A field as BSON; `None` when unset.
fn to_bson(rec: &TaskRecord, f: Field) -> Result<Option<Bson>, DbError> {
    Ok(match rec.get(f) {
        FieldRef::Null => match f {
            // A set-but-empty buffer list is stored as null, as SQLite does.
            Field::Buffers if rec.buffers.is_some() => Some(Bson::Null),
            Field::ResultBuffers if rec.result_buffers.is_some() => Some(Bson::Null),
            _ => None,
        },
        FieldRef::Text(s) => match f {
            Field::Stdout if rec.stdout.is_none() => None,
            Field::Stderr if rec.stderr.is_none() => None,
            _ => Some(Bson::String(s.to_string())),
        },
        FieldRef::Date(d) => Some(Bson::String(iso(d))),
        FieldRef::Json(v) => Some(json_to_bson(f, v)?),
        FieldRef::Buffers(b) => Some(Bson::Array(
            b.iter()
                .map(|x| {
                    Bson::Binary(Binary {
                        subtype: bson::spec::BinarySubtype::Generic,
                        bytes: x.clone(),
                    })
                })
                .collect(),
        )),
    })
}

fn json_to_bson(f: Field, v: &Value) -> Result<Bson, DbError> {
    bson::to_bson(v).map_err(|e| DbError::Corrupt {
        msg_id: String::new(),
        reason: format!("{}: cannot store as BSON: {e}", f.name()),
    })
}

fn from_doc(d: &Document) -> Result<TaskRecord, DbError> {
    let mut rec = TaskRecord::default();
    let id = d.get_str("msg_id").unwrap_or_default().to_string();
    let corrupt = |f: Field, why: &str| DbError::Corrupt {
        msg_id: id.clone(),
        reason: format!("{}: {why}", f.name()),
    };
    for &f in Field::ALL {
        let Some(v) = d.get(f.name()) else { continue };
        if matches!(v, Bson::Null) {
            continue;
        }
        let value = match f.kind() {
            FieldKind::Text => match v {
                Bson::String(s) => FieldValue::Text(s.clone()),
                _ => return Err(corrupt(f, "expected a string")),
            },
            FieldKind::Date => match v {
                Bson::String(s) => {
                    FieldValue::Date(parse_iso(s).ok_or_else(|| corrupt(f, "bad date"))?)
                }
                Bson::DateTime(t) => FieldValue::Date(
                    chrono::DateTime::from_timestamp_millis(t.timestamp_millis())
                        .ok_or_else(|| corrupt(f, "date out of range"))?,
                ),
                _ => return Err(corrupt(f, "expected a date")),
            },
            FieldKind::Json => FieldValue::Json(v.clone().into_relaxed_extjson()),
            FieldKind::Buffers => match v {
                Bson::Array(items) => FieldValue::Buffers(
                    items
                        .iter()
                        .map(|b| match b {
                            Bson::Binary(b) => Ok(b.bytes.clone()),
                            _ => Err(corrupt(f, "expected binaries")),
                        })
                        .collect::<Result<_, _>>()?,
                ),
                _ => return Err(corrupt(f, "expected an array")),
            },
        };
        rec.set(f, Some(value))?;
    }
    Ok(rec)
}

fn operand_bson(o: &Operand) -> Bson {
    match o {
        Operand::Null => Bson::Null,
        Operand::Text(s) => Bson::String(s.clone()),
        Operand::Date(d) => Bson::String(iso(*d)),
        Operand::Json(v) => bson::to_bson(v).unwrap_or(Bson::Null),
    }
}

/// A native filter selecting a superset of the query's matches. Tests that Mongo would
/// evaluate more narrowly than we do (object equality is key-order sensitive in Mongo; `$ne`,
/// `$nin` and `$all` look inside arrays) are left to the evaluator for JSON fields.
fn filter(q: &Query) -> Document {
    let mut and: Vec<Bson> = Vec::new();
    for clause in &q.clauses {
        let mut key = clause.path.field.name().to_string();
        for s in &clause.path.sub {
            key.push('.');
            key.push_str(s);
        }
        let json = clause.path.kind() == FieldKind::Json;
        let nested = !clause.path.sub.is_empty();
        for cond in &clause.conds {
            if let Some(test) = native_test(cond, json, nested) {
                and.push(Bson::Document(doc! {key.clone(): test}));
            }
        }
    }
    if and.is_empty() {
        Document::new()
    } else {
        doc! {"$and": and}
    }
}

fn native_test(cond: &Cond, json: bool, nested: bool) -> Option<Document> {
    let scalar = |o: &Operand| !matches!(o, Operand::Json(Value::Object(_) | Value::Array(_)));
    let list = |l: &Vec<Operand>| Bson::Array(l.iter().map(operand_bson).collect());
    Some(match cond {
        Cond::Exists(false) | Cond::Eq(Operand::Null) => doc! {"$eq": Bson::Null},
        Cond::Exists(true) | Cond::Ne(Operand::Null) if !nested => doc! {"$ne": Bson::Null},
        Cond::Exists(true) | Cond::Ne(Operand::Null) => return None,
        Cond::Eq(o) if scalar(o) => doc! {"$eq": operand_bson(o)},
        Cond::Lt(o) if scalar(o) => doc! {"$lt": operand_bson(o)},
        Cond::Lte(o) if scalar(o) => doc! {"$lte": operand_bson(o)},
        Cond::Gt(o) if scalar(o) => doc! {"$gt": operand_bson(o)},
        Cond::Gte(o) if scalar(o) => doc! {"$gte": operand_bson(o)},
        Cond::In(l) if l.iter().all(scalar) => doc! {"$in": list(l)},
        Cond::Ne(o) if !json => doc! {"$ne": operand_bson(o)},
        Cond::Nin(l) if !json => doc! {"$nin": list(l)},
        Cond::All(l) if !json => doc! {"$all": list(l)},
        Cond::Mod { divisor, remainder } => doc! {"$mod": [*divisor, *remainder]},
        Cond::Glob(g) => doc! {"$regex": g.to_regex(), "$options": "s"},
        _ => return None,
    })
}

impl TaskDb for MongoDb {
    fn backend(&self) -> Backend {
        Backend::Mongo
    }

    fn add_record(&mut self, rec: TaskRecord) -> Result<(), DbError> {
        let id = rec.msg_id.clone().ok_or(DbError::MissingMsgId)?;
        self.upsert(&id, &rec)
    }

    fn update_record(&mut self, msg_id: &str, patch: TaskRecord) -> Result<(), DbError> {
        self.upsert(msg_id, &patch)
    }

    fn append_stream(&mut self, msg_id: &str, stream: Stream, text: &str) -> Result<(), DbError> {
        let (name, other) = match stream {
            Stream::Stdout => ("stdout", "stderr"),
            Stream::Stderr => ("stderr", "stdout"),
        };
        let pipeline = vec![doc! {"$set": {
            name: {"$concat": [{"$ifNull": [format!("${name}"), ""]}, text]},
            other: {"$ifNull": [format!("${other}"), ""]},
        }}];
        self.coll
            .update_one(doc! {"msg_id": msg_id}, pipeline)
            .upsert(true)
            .run()?;
        Ok(())
    }

    fn get_record(&self, msg_id: &str) -> Result<TaskRecord, DbError> {
        match self.coll.find_one(doc! {"msg_id": msg_id}).run()? {
            Some(d) => from_doc(&d),
            None => Err(DbError::NotFound(msg_id.to_string())),
        }
    }

    fn get_records(&self, msg_ids: &[String]) -> Result<Vec<Result<TaskRecord, DbError>>, DbError> {
        let found: HashMap<String, TaskRecord> = self
            .find_docs(doc! {"msg_id": {"$in": msg_ids}}, None)?
            .into_iter()
            .filter_map(|r| Some((r.msg_id.clone()?, r)))
            .collect();
        Ok(msg_ids
            .iter()
            .map(|id| {
                found
                    .get(id)
                    .cloned()
                    .ok_or_else(|| DbError::NotFound(id.clone()))
            })
            .collect())
    }

    fn find_records(
        &self,
        query: &Query,
        keys: Option<&[Field]>,
    ) -> Result<Vec<TaskRecord>, DbError> {
        let projection = keys.map(|k| {
            let mut p = doc! {"_id": 0, "msg_id": 1};
            for f in k.iter().copied().chain(query.fields()) {
                p.insert(f.name(), 1);
            }
            p
        });
        Ok(query.select(self.find_docs(filter(query), projection)?, keys))
    }

    fn get_history(&self) -> Result<Vec<String>, DbError> {
        let recs = self.find_docs(
            doc! {"submitted": {"$ne": Bson::Null}},
            Some(doc! {"_id": 0, "msg_id": 1, "submitted": 1}),
        )?;
        let mut recs: Vec<TaskRecord> =
            recs.into_iter().filter(|r| r.submitted.is_some()).collect();
        recs.sort_by_key(|r| r.submitted);
        Ok(recs.into_iter().filter_map(|r| r.msg_id).collect())
    }

    fn drop_record(&mut self, msg_id: &str) -> Result<bool, DbError> {
        Ok(self
            .coll
            .delete_one(doc! {"msg_id": msg_id})
            .run()?
            .deleted_count
            > 0)
    }

    fn drop_matching_records(&mut self, query: &Query) -> Result<usize, DbError> {
        let ids: Vec<String> = self
            .find_records(query, Some(&query.fields()))?
            .into_iter()
            .filter_map(|r| r.msg_id)
            .collect();
        if ids.is_empty() {
            return Ok(0);
        }
        Ok(self
            .coll
            .delete_many(doc! {"msg_id": {"$in": &ids}})
            .run()?
            .deleted_count as usize)
    }

    fn flush(&mut self) -> Result<(), DbError> {
        Ok(())
    }

    fn close(&mut self) -> Result<(), DbError> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The server to test against, or `None` (tests are skipped, saying so).
    fn server() -> Option<String> {
        match std::env::var("RPAR_TEST_MONGODB_URL") {
            Ok(u) if !u.is_empty() => Some(u),
            _ => {
                eprintln!("RPAR_TEST_MONGODB_URL is not set: skipping MongoDB tests");
                None
            }
        }
    }

    #[test]
    fn filter_translation() {
        let q = Query::parse(
            &serde_json::json!({"msg_id": {"$glob": "a.*"}, "completed": {"$exists": true}}),
        )
        .unwrap();
        let f = filter(&q);
        let and = f.get_array("$and").unwrap();
        assert_eq!(
            and[0].as_document().unwrap(),
            &doc! {"msg_id": {"$regex": "^a\\.[\\s\\S]*$", "$options": "s"}}
        );
        assert_eq!(
            and[1].as_document().unwrap(),
            &doc! {"completed": {"$ne": Bson::Null}}
        );
    }

    #[test]
    fn conformance() {
        let Some(url) = server() else { return };
        let mut dbs = Vec::new();
        let mut n = 0;
        crate::conformance::run_all(&mut || {
            n += 1;
            let name = format!("rpar_test_{}_{}", std::process::id(), n);
            dbs.push(name.clone());
            Box::new(MongoDb::open_url(&url, &name).expect("connect to RPAR_TEST_MONGODB_URL"))
        });
        if let Ok(c) = Client::with_uri_str(&url) {
            for d in dbs {
                let _ = c.database(&d).drop().run();
            }
        }
    }
}
