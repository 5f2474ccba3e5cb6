//! Ids and timestamps in the exact textual forms ipyparallel uses.
//!
//! * Session ids / engine uuids: jupyter_client's `new_id()`, 16 random bytes as `8hex-24hex`.
//! * Timestamps: ISO-8601 UTC with microseconds and a `Z` suffix (a zone-less date makes the
//!   client emit a DeprecationWarning, which ipyparallel's own test suite turns into an error).

use chrono::{DateTime, NaiveDateTime, SecondsFormat, Utc};
use rand::RngCore;

/// jupyter_client's `new_id()`: 16 random bytes rendered `xxxxxxxx-xxxxxxxxxxxxxxxxxxxxxxxx`.
pub fn new_id() -> String {
    let mut b = [0u8; 16];
    rand::thread_rng().fill_bytes(&mut b);
    let h = hex_lower(&b);
    format!("{}-{}", &h[..8], &h[8..])
}

fn hex_lower(b: &[u8]) -> String {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(b.len() * 2);
    for x in b {
        s.push(HEX[(x >> 4) as usize] as char);
        s.push(HEX[(x & 15) as usize] as char);
    }
    s
}

/// Now, as the wire wants it: `2026-11-24T07:08:29.504717Z`.
pub fn now_iso() -> String {
    iso(Utc::now())
}

/// Format a UTC time with microseconds and `Z`.
pub fn iso(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Micros, true)
}

/// Parse the date forms ipyparallel accepts: `YYYY-MM-DDTHH:MM:SS[.ffffff][Z|±HH:MM]`.
/// A zone-less date is taken as UTC (as ipyparallel does, with a warning).
pub fn parse_iso(s: &str) -> Option<DateTime<Utc>> {
    if let Ok(t) = DateTime::parse_from_rfc3339(s) {
        return Some(t.with_timezone(&Utc));
    }
    for fmt in [
        "%Y-%m-%dT%H:%M:%S%.f",
        "%Y-%m-%dT%H:%M:%S",
        "%Y-%m-%d %H:%M:%S%.f",
    ] {
        if let Ok(n) = NaiveDateTime::parse_from_str(s, fmt) {
            return Some(n.and_utc());
        }
    }
    for fmt in ["%Y-%m-%dT%H:%M:%S%.f%:z", "%Y-%m-%d %H:%M:%S%.f%:z"] {
        if let Ok(t) = DateTime::parse_from_str(s, fmt) {
            return Some(t.with_timezone(&Utc));
        }
    }
    None
}

/// The user name jupyter_client puts in headers: `$USER`, else `"username"`.
pub fn username() -> String {
    std::env::var("USER").unwrap_or_else(|_| "username".to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn new_id_shape() {
        let id = new_id();
        assert_eq!(id.len(), 33);
        assert_eq!(&id[8..9], "-");
        assert!(id
            .chars()
            .filter(|c| *c != '-')
            .all(|c| c.is_ascii_hexdigit()));
        assert_ne!(new_id(), id);
    }

    #[test]
    fn iso_round_trip() {
        let s = "2026-11-24T07:08:29.504717Z";
        let t = parse_iso(s).unwrap();
        assert_eq!(iso(t), s);
        assert_eq!(parse_iso("2026-11-24T07:08:29.504717+00:00"), Some(t));
        assert_eq!(parse_iso("2026-11-24T08:08:29.504717+01:00"), Some(t));
        assert_eq!(parse_iso("2026-11-24T07:08:29.504717"), Some(t));
        assert!(parse_iso("yesterday").is_none());
    }
}
