//! Reading a few fields of a JSON frame without building the rest: what the hub's routing path
//! needs of a request or reply (a date, a status) while the frame itself goes into its record
//! as bytes.

use rpar_core::Header;
use serde::de::{DeserializeSeed, Deserializer, IgnoredAny, MapAccess, Visitor};
use serde_json::Value;
use std::fmt;

/// The string values of `keys` in a JSON object frame, as a full parse
/// ([`rpar_core::wire::WireMessage::parse_part`]) and `value.get(key).as_str()` read them: the
/// last of duplicate keys; `None` for a key that is missing or not a string, and for every key
/// when the frame is not a JSON object (an empty frame included).
pub(crate) fn pick<const N: usize>(raw: &[u8], keys: [&str; N]) -> [Option<String>; N] {
    match fields(raw, keys, N) {
        Some(got) => got.map(|g| match g {
            Got::Str(s) => Some(s),
            Got::Missing | Got::Other => None,
        }),
        None => std::array::from_fn(|_| None),
    }
}

/// What [`fields`] found under a key (the last of duplicates, as a full parse keeps).
enum Got {
    Missing,
    Str(String),
    Other,
}

/// The values of `keys` in a JSON object frame; `None` when the frame is not one. Strings are
/// kept for the first `keep` keys; the others' are only told apart from other values
/// (`Got::Str` of an empty string).
fn fields<const N: usize>(raw: &[u8], keys: [&str; N], keep: usize) -> Option<[Got; N]> {
    let mut de = serde_json::Deserializer::from_slice(raw);
    let got = Pick(keys, keep).deserialize(&mut de).ok()?;
    de.end().ok()?;
    Some(got)
}

/// What the hub reads of a request's header.
#[derive(Debug, PartialEq)]
pub(crate) struct RequestHeader {
    pub msg_id: String,
    pub session: String,
    pub date: String,
}

/// A request's header as [`Header::parse_with_value`] reads it (an error where it fails: not
/// an object, or one of [`Header`]'s fields not a string), without building the rest.
pub(crate) fn request_header(raw: &[u8]) -> Result<RequestHeader, rpar_core::WireError> {
    const KEYS: [&str; 6] = [
        "msg_id", "session", "date", "msg_type", "username", "version",
    ];
    if let Some([msg_id, session, date, rest @ ..]) = fields(raw, KEYS, 3) {
        let text = |g: Got| match g {
            Got::Missing => Some(String::new()),
            Got::Str(s) => Some(s),
            Got::Other => None,
        };
        if !rest.iter().any(|g| matches!(g, Got::Other)) {
            if let (Some(msg_id), Some(session), Some(date)) =
                (text(msg_id), text(session), text(date))
            {
                return Ok(RequestHeader {
                    msg_id,
                    session,
                    date,
                });
            }
        }
    }
    // not a header: the full parse says why
    Header::parse_with_value(raw).map(|(h, _)| RequestHeader {
        msg_id: h.msg_id,
        session: h.session,
        date: h.date,
    })
}

/// What the hub and the task scheduler read of a task reply's metadata, in one scan.
#[derive(Debug)]
pub(crate) struct ReplyRead {
    /// The scheduler's two keys.
    pub sched: rpar_sched::ReplyMetadata,
    /// What the record reads ([`pick`] of `started`, `engine`).
    pub record: [Option<String>; 2],
}

/// [`rpar_sched::ReplyMetadata::read`] and [`pick`] of `["started", "engine"]` of a reply's
/// metadata frame in one parse. `None` when the frame is not a JSON object of distinct keys:
/// the caller then has each read it its own way, so that odd frames read as before.
pub(crate) fn reply_metadata(raw: &[u8]) -> Option<ReplyRead> {
    #[derive(serde::Deserialize)]
    struct Both {
        #[serde(default, deserialize_with = "rpar_core::msg::keep_null")]
        dependencies_met: Option<Value>,
        #[serde(default, deserialize_with = "rpar_core::msg::keep_null")]
        status: Option<Value>,
        #[serde(default, deserialize_with = "rpar_core::msg::keep_null")]
        started: Option<Value>,
        #[serde(default, deserialize_with = "rpar_core::msg::keep_null")]
        engine: Option<Value>,
    }
    let b: Both = object_fields(raw)?;
    Some(ReplyRead {
        sched: rpar_sched::ReplyMetadata {
            dependencies_met: b.dependencies_met,
            status: b.status,
        },
        record: [text(b.started), text(b.engine)],
    })
}

/// What the hub and the task scheduler read of a task request's metadata, in one scan.
#[derive(Debug)]
pub(crate) struct RequestRead {
    /// The scheduler's five keys.
    pub sched: rpar_sched::TaskMetadata,
    /// The record's `label` ([`pick`] of it).
    pub label: Option<String>,
}

/// The scheduler's [`rpar_sched::TaskMetadata`] and [`pick`] of `["label"]` of a request's
/// metadata frame in one parse; `None` when the frame is not a JSON object of distinct keys
/// (each then reads it its own way).
pub(crate) fn request_metadata(raw: &[u8]) -> Option<RequestRead> {
    #[derive(serde::Deserialize)]
    struct Both {
        #[serde(default, deserialize_with = "rpar_core::msg::keep_null")]
        targets: Option<Value>,
        #[serde(default, deserialize_with = "rpar_core::msg::keep_null")]
        retries: Option<Value>,
        #[serde(default, deserialize_with = "rpar_core::msg::keep_null")]
        timeout: Option<Value>,
        #[serde(default, deserialize_with = "rpar_core::msg::keep_null")]
        after: Option<Value>,
        #[serde(default, deserialize_with = "rpar_core::msg::keep_null")]
        follow: Option<Value>,
        #[serde(default, deserialize_with = "rpar_core::msg::keep_null")]
        label: Option<Value>,
    }
    let b: Both = object_fields(raw)?;
    Some(RequestRead {
        sched: rpar_sched::TaskMetadata {
            targets: b.targets,
            retries: b.retries,
            timeout: b.timeout,
            after: b.after,
            follow: b.follow,
        },
        label: text(b.label),
    })
}

/// A struct's fields from a frame that is a JSON object of distinct keys
/// ([`rpar_core::msg::parse_fields`]), `None` otherwise: a struct parse reads a JSON array too,
/// by position, where [`pick`] reads nothing, so a frame must start as an object.
fn object_fields<'a, T: serde::Deserialize<'a>>(raw: &'a [u8]) -> Option<T> {
    if raw.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
        return None;
    }
    rpar_core::msg::parse_fields(raw)
}

fn text(v: Option<Value>) -> Option<String> {
    match v {
        Some(Value::String(s)) => Some(s),
        _ => None,
    }
}

struct Pick<'k, const N: usize>([&'k str; N], usize);

impl<'de, const N: usize> DeserializeSeed<'de> for Pick<'_, N> {
    type Value = [Got; N];

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de, const N: usize> Visitor<'de> for Pick<'_, N> {
    type Value = [Got; N];

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut out: [Got; N] = std::array::from_fn(|_| Got::Missing);
        while let Some(k) = map.next_key_seed(Key(&self.0))? {
            match k {
                Some(i) => out[i] = map.next_value_seed(Val { keep: i < self.1 })?,
                None => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(out)
    }
}

/// A picked key's value: a string (copied only when kept) or something else (read as a full
/// parse reads it, so that a frame fails to parse exactly when it would).
struct Val {
    keep: bool,
}

impl<'de> DeserializeSeed<'de> for Val {
    type Value = Got;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Val {
    type Value = Got;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_str<E: serde::de::Error>(self, s: &str) -> Result<Self::Value, E> {
        Ok(Got::Str(if self.keep {
            s.to_owned()
        } else {
            String::new()
        }))
    }

    fn visit_string<E: serde::de::Error>(self, s: String) -> Result<Self::Value, E> {
        Ok(Got::Str(s))
    }

    fn visit_bool<E: serde::de::Error>(self, _: bool) -> Result<Self::Value, E> {
        Ok(Got::Other)
    }

    fn visit_i64<E: serde::de::Error>(self, _: i64) -> Result<Self::Value, E> {
        Ok(Got::Other)
    }

    fn visit_u64<E: serde::de::Error>(self, _: u64) -> Result<Self::Value, E> {
        Ok(Got::Other)
    }

    fn visit_f64<E: serde::de::Error>(self, _: f64) -> Result<Self::Value, E> {
        Ok(Got::Other)
    }

    fn visit_unit<E: serde::de::Error>(self) -> Result<Self::Value, E> {
        Ok(Got::Other)
    }

    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        while seq.next_element::<Value>()?.is_some() {}
        Ok(Got::Other)
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        while map.next_entry::<String, Value>()?.is_some() {}
        Ok(Got::Other)
    }
}

/// A map key: which of the keys it is, if any (compared, never copied).
struct Key<'a, 'k>(&'a [&'k str]);

impl<'de> DeserializeSeed<'de> for Key<'_, '_> {
    type Value = Option<usize>;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_str(self)
    }
}

impl<'de> Visitor<'de> for Key<'_, '_> {
    type Value = Option<usize>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a key")
    }

    fn visit_str<E: serde::de::Error>(self, s: &str) -> Result<Self::Value, E> {
        Ok(self.0.iter().position(|k| *k == s))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rpar_core::wire::WireMessage;

    /// What the eager reading gives.
    fn eager<const N: usize>(raw: &[u8], keys: [&str; N]) -> [Option<String>; N] {
        let v = WireMessage::parse_part("x", raw).ok();
        keys.map(|k| {
            v.as_ref()
                .and_then(|v| v.get(k))
                .and_then(Value::as_str)
                .map(str::to_string)
        })
    }

    #[test]
    fn pick_reads_as_a_full_parse() {
        let frames: &[&[u8]] = &[
            br#"{"status": "ok", "ename": "E", "other": {"status": "no"}, "x": [1, {"a": 2}]}"#,
            br#"{"status": "ok", "status": "error"}"#,
            br#"{"status": 5, "ename": null, "evalue": "v\u00e9\n"}"#,
            br#"{"st\u0061tus": "escaped key"}"#,
            br#"{"status": "ok"} trailing"#,
            br#"{"status": "ok""#,
            br#"["status", "ok"]"#,
            b"",
            b"null",
            b"{}",
        ];
        for f in frames {
            let keys = ["status", "ename", "evalue"];
            assert_eq!(
                pick(f, keys),
                eager(f, keys),
                "{}",
                String::from_utf8_lossy(f)
            );
        }
    }

    #[test]
    fn picked_keys_of_any_value_read_as_a_full_parse() {
        let frames: &[&[u8]] = &[
            br#"{"status": {"a": [1, {"b": null}], "a": 2}, "ename": [true, "x"], "evalue": 1.5}"#,
            br#"{"status": [1, 2, "#,
            br#"{"status": -3, "ename": false, "evalue": "ok"}"#,
            br#"{"status": 1e999}"#,
        ];
        for f in frames {
            let keys = ["status", "ename", "evalue"];
            assert_eq!(
                pick(f, keys),
                eager(f, keys),
                "{}",
                String::from_utf8_lossy(f)
            );
        }
        let headers: &[&[u8]] = &[
            br#"{"msg_id": "m", "session": "s", "version": {"x": 1}}"#,
            br#"{"msg_id": "m", "session": "s", "msg_type": "t", "username": "u", "version": "5"}"#,
            br#"{"msg_id": "m", "username": [1]}"#,
        ];
        for f in headers {
            let full = Header::parse_with_value(f).map(|(h, _)| (h.msg_id, h.session, h.date));
            let ours = request_header(f).map(|h| (h.msg_id, h.session, h.date));
            assert_eq!(ours.ok(), full.ok(), "{}", String::from_utf8_lossy(f));
        }
    }

    #[test]
    fn reply_metadata_reads_as_the_scheduler_and_pick() {
        let frames: &[&[u8]] = &[
            br#"{"status": "ok", "engine": "e", "started": "2026-01-01T00:00:00Z",
                "dependencies_met": true, "other": {"status": "no"}}"#,
            br#"{"status": null, "dependencies_met": false, "engine": 5}"#,
            br#"{"status": "ok", "status": "error"}"#,
            br#"{"started": "a", "started": "b"}"#,
            br#"{"st\u0061tus": "escaped key", "engine": "\u00e9"}"#,
            br#" {"status": "ok"} "#,
            br#"{"status": "ok"} trailing"#,
            br#"[null, "ok", "s", "e"]"#,
            b"",
            b"null",
            b"{}",
        ];
        for f in frames {
            let keys = ["started", "engine"];
            if let Some(r) = reply_metadata(f) {
                assert_eq!(r.sched, rpar_sched::ReplyMetadata::read(f), "{:?}", f);
                assert_eq!(r.record, pick(f, keys), "{}", String::from_utf8_lossy(f));
            }
        }
        assert!(reply_metadata(frames[0]).is_some());
        assert!(reply_metadata(frames[7]).is_none(), "not an object");
    }

    #[test]
    fn request_metadata_reads_as_the_scheduler_and_pick() {
        let frames: &[&[u8]] = &[
            br#"{"after": ["a"], "follow": [], "targets": null, "retries": 2,
                "timeout": 1.5, "label": "x", "other": {"label": "no"}}"#,
            br#"{"label": 5, "retries": null}"#,
            br#"{"label": "a", "label": "b"}"#,
            br#"{"retries": 1, "retries": 2}"#,
            br#"{"l\u0061bel": "escaped key"}"#,
            br#"{"label": "ok"} trailing"#,
            br#"[null, 1, 2, [], [], "l"]"#,
            b"",
            b"{}",
        ];
        for f in frames {
            if let Some(r) = request_metadata(f) {
                let sched: Option<rpar_sched::TaskMetadata> = rpar_core::msg::parse_fields(f);
                assert_eq!(Some(r.sched), sched, "{}", String::from_utf8_lossy(f));
                assert_eq!(
                    [r.label],
                    pick(f, ["label"]),
                    "{}",
                    String::from_utf8_lossy(f)
                );
            }
        }
        assert!(request_metadata(frames[0]).is_some());
        assert!(request_metadata(frames[6]).is_none(), "not an object");
    }

    #[test]
    fn request_header_reads_as_a_full_parse() {
        let frames: &[&[u8]] = &[
            br#"{"msg_id": "a", "msg_id": "b", "msg_type": "t", "session": "s",
                "username": "u", "date": "2026-01-01T00:00:00Z", "version": "5.3", "x": [1]}"#,
            br#"{"msg_id": "a", "session": "s"}"#,
            br#"{"msg_id": 5, "session": "s"}"#,
            br#"{"msg_id": 5, "msg_id": "m"}"#,
            br#"{"msg_id": "m", "version": null}"#,
            br#"{"msg_id": "m", "username": 1}"#,
            br#"{"msg_id": "m", "unknown": 1}"#,
            br#"[]"#,
            b"",
        ];
        for f in frames {
            let full = Header::parse_with_value(f).map(|(h, _)| (h.msg_id, h.session, h.date));
            let ours = request_header(f).map(|h| (h.msg_id, h.session, h.date));
            assert_eq!(ours.ok(), full.ok(), "{}", String::from_utf8_lossy(f));
        }
    }
}
