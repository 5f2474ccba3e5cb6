//! The in-memory task database (ipyparallel's `DictDB`, the default backend).
//!
//! Records live in insertion order, indexed by msg_id. Memory is bounded: when there are more
//! than `record_limit` records, or their buffers exceed `size_limit` bytes, the oldest
//! *completed* records (and stray IOPub-only records that never got a request) are culled —
//! `cull_fraction` of the record limit, or until the buffers are under
//! `size_limit * (1 - cull_fraction)`. Pending tasks are never culled, so the limits can be
//! exceeded while many tasks are outstanding. Culled ids are remembered (a bounded number of
//! them) so `get_record` can say "culled" rather than "no such record".
//!
//! A record's JSON fields written as frame bytes ([`TaskDb::add_raw`]) stay bytes until a read
//! or a query needs them ([`stored`]): most are never read, and bytes cost one block each to
//! keep and to free, where a parsed value costs one per key and string.

use foldhash::{HashMap, HashMapExt, HashSet};
use std::collections::{BTreeMap, VecDeque};

use crate::config::Backend;
use crate::error::DbError;
use crate::query::{Cond, Operand, Query};
use crate::raw::RawWrite;
use crate::record::{Field, Stream, TaskRecord};
use crate::TaskDb;

mod stored;
use stored::Stored;

/// Default `DictDB.size_limit`: 192 MiB of buffers.
pub const DEFAULT_SIZE_LIMIT: u64 = 192 << 20;

/// Size limits of the memory DB.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Limits {
    /// Most records kept (default 1024).
    pub record_limit: usize,
    /// Most bytes of `buffers` + `result_buffers` kept (default 192 MiB; ipyparallel keeps
    /// 1 GiB, but a controller on a login node should stay small: raise `DictDB.size_limit`, or
    /// use SQLite, to keep more).
    pub size_limit: u64,
    /// Fraction culled when a limit is passed (default 0.1).
    pub cull_fraction: f64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            record_limit: 1024,
            size_limit: DEFAULT_SIZE_LIMIT,
            cull_fraction: 0.1,
        }
    }
}

/// Ids culled so far, forgetting the oldest past a cap. Kept as 64-bit keyed hashes, not
/// strings (a tenth of the memory: about 2 MB at the default cap of 102 400 instead of 18):
/// they only decide whether a missing record is reported as culled or as never seen, and a
/// hash collision with an id never stored (probability 2^-64 per pair) only changes that word.
#[derive(Debug, Default)]
struct CulledIds {
    order: VecDeque<u64>,
    set: HashSet<u64>,
    cap: usize,
    hasher: foldhash::fast::RandomState,
}

impl CulledIds {
    fn key(&self, id: &str) -> u64 {
        use std::hash::BuildHasher;
        self.hasher.hash_one(id)
    }

    fn insert(&mut self, id: &str) {
        let k = self.key(id);
        if self.set.insert(k) {
            // forget first, so the queue never outgrows the cap (a VecDeque doubles its
            // capacity when pushed past it)
            while self.order.len() >= self.cap {
                if let Some(old) = self.order.pop_front() {
                    self.set.remove(&old);
                }
            }
            self.order.push_back(k);
        }
    }

    fn remove(&mut self, id: &str) {
        if self.set.is_empty() {
            return;
        }
        let k = self.key(id);
        if self.set.remove(&k) {
            self.order.retain(|x| *x != k);
        }
    }

    fn contains(&self, id: &str) -> bool {
        !self.set.is_empty() && self.set.contains(&self.key(id))
    }
}

/// The memory backend. See the module docs.
#[derive(Debug)]
pub struct MemoryDb {
    limits: Limits,
    index: HashMap<String, u64>,
    /// Boxed: a record is about a kilobyte, and a B-tree moves its values within a node on
    /// every insert and removal (a cull removes from the front of the oldest node).
    records: BTreeMap<u64, Box<Stored>>,
    next_seq: u64,
    buffer_bytes: u64,
    culled: CulledIds,
    /// Set when a cull could not get under the limits (everything pending); cleared when a
    /// record completes or is dropped, so we don't rescan on every write meanwhile.
    cull_blocked: bool,
    trimmer: crate::trim::Trimmer,
}

impl Default for MemoryDb {
    fn default() -> Self {
        MemoryDb::new(Limits::default())
    }
}

impl MemoryDb {
    /// An empty DB with these limits.
    pub fn new(limits: Limits) -> MemoryDb {
        MemoryDb {
            limits,
            index: HashMap::new(),
            records: BTreeMap::new(),
            next_seq: 0,
            buffer_bytes: 0,
            culled: CulledIds {
                cap: limits.record_limit.saturating_mul(100).max(100_000),
                ..Default::default()
            },
            cull_blocked: false,
            trimmer: crate::trim::Trimmer::new(),
        }
    }

    /// Number of records held.
    pub fn len(&self) -> usize {
        self.records.len()
    }

    /// True when no records are held.
    pub fn is_empty(&self) -> bool {
        self.records.is_empty()
    }

    /// Bytes of buffers held.
    pub fn buffer_bytes(&self) -> u64 {
        self.buffer_bytes
    }

    /// Apply `f` to record `msg_id` (created if absent), keeping the byte count right.
    fn with_record(&mut self, msg_id: &str, f: impl FnOnce(&mut Stored)) {
        let seq = match self.index.get(msg_id) {
            Some(&s) => s,
            None => {
                let s = self.next_seq;
                self.next_seq += 1;
                self.index.insert(msg_id.to_string(), s);
                self.records
                    .insert(s, Box::new(Stored::new(TaskRecord::new(msg_id))));
                self.culled.remove(msg_id);
                s
            }
        };
        if let Some(stored) = self.records.get_mut(&seq) {
            let before = stored.rec.buffer_bytes() as u64;
            let was_done = stored.rec.completed.is_some();
            f(stored);
            let rec = &mut stored.rec;
            // The record is keyed by msg_id: keep its field consistent whatever the patch said.
            if rec.msg_id.as_deref() != Some(msg_id) {
                rec.msg_id = Some(msg_id.to_string());
            }
            let after = rec.buffer_bytes() as u64;
            self.buffer_bytes = self.buffer_bytes - before + after;
            if !was_done && rec.completed.is_some() {
                self.cull_blocked = false;
            }
        }
        self.maybe_cull();
    }

    /// Store `rec`, whose msg_id (set) is not in the index: what [`MemoryDb::with_record`]
    /// does for a new id merging `rec` into an empty record.
    fn insert_new(&mut self, stored: Box<Stored>) {
        let Some(id) = stored.rec.msg_id.clone() else {
            return;
        };
        let rec = &stored.rec;
        let s = self.next_seq;
        self.next_seq += 1;
        self.culled.remove(&id);
        self.index.insert(id, s);
        self.buffer_bytes += rec.buffer_bytes() as u64;
        if rec.completed.is_some() {
            self.cull_blocked = false;
        }
        self.records.insert(s, stored);
        self.maybe_cull();
    }

    /// Remove a record, returning its msg_id; its buffers are freed here.
    fn remove_seq(&mut self, seq: u64) -> Option<String> {
        let mut stored = self.records.remove(&seq)?;
        let rec = &mut stored.rec;
        let id = rec.msg_id.take();
        if let Some(id) = id.as_deref() {
            self.index.remove(id);
        }
        let bytes = rec.buffer_bytes() as u64;
        self.buffer_bytes -= bytes;
        self.cull_blocked = false;
        drop(stored);
        self.trimmer.freed(bytes);
        Some(id.unwrap_or_default())
    }

    fn maybe_cull(&mut self) {
        let l = self.limits;
        let over_count = self.records.len() > l.record_limit;
        let over_size = self.buffer_bytes > l.size_limit;
        if !(over_count || over_size) || self.cull_blocked {
            return;
        }
        let fraction = l.cull_fraction.clamp(0.0, 1.0);
        let count_goal = if over_count {
            let n = ((l.record_limit as f64) * fraction) as usize;
            n.max(1).max(self.records.len() - l.record_limit)
        } else {
            0
        };
        let size_goal = if over_size {
            ((l.size_limit as f64) * (1.0 - fraction)) as u64
        } else {
            u64::MAX
        };
        // Only the count limit passed: the first `count_goal` candidates are all it takes (no
        // walk of every record, nor a list of them all, on each cull).
        let wanted = if over_size { usize::MAX } else { count_goal };
        let candidates: Vec<u64> = self
            .records
            .iter()
            .filter(|(_, s)| s.rec.completed.is_some() || s.rec.submitted.is_none())
            .map(|(&s, _)| s)
            .take(wanted)
            .collect();
        let (n_before, bytes_before) = (self.records.len(), self.buffer_bytes);
        let mut culled = 0usize;
        for seq in candidates {
            if culled >= count_goal && self.buffer_bytes <= size_goal {
                break;
            }
            if let Some(id) = self.remove_seq(seq) {
                tracing::debug!(msg_id = %id, "culled task record");
                self.culled.insert(&id);
                culled += 1;
            }
        }
        // debug, not info: with the default limits this is every hundred tasks or so
        tracing::debug!(
            records = n_before,
            buffer_bytes = bytes_before,
            record_limit = l.record_limit,
            size_limit = l.size_limit,
            culled,
            "task database over its limits: culled the oldest completed records"
        );
        if self.records.len() > l.record_limit || self.buffer_bytes > l.size_limit {
            tracing::warn!(
                records = self.records.len(),
                buffer_bytes = self.buffer_bytes,
                "task database still over its limits: the remaining records are pending"
            );
            self.cull_blocked = true;
        }
    }

    /// Sequence numbers worth testing for `query`: a `msg_id` equality / `$in` test narrows
    /// the scan to an index lookup.
    fn candidates(&self, query: &Query) -> Vec<u64> {
        for clause in &query.clauses {
            if clause.path.field != Field::MsgId || !clause.path.sub.is_empty() {
                continue;
            }
            for cond in &clause.conds {
                let ids: Vec<&Operand> = match cond {
                    Cond::Eq(o) => vec![o],
                    Cond::In(list) => list.iter().collect(),
                    _ => continue,
                };
                let mut seqs: Vec<u64> = ids
                    .into_iter()
                    .filter_map(|o| match o {
                        Operand::Text(id) => self.index.get(id).copied(),
                        _ => None,
                    })
                    .collect();
                seqs.sort_unstable();
                seqs.dedup();
                return seqs;
            }
        }
        self.records.keys().copied().collect()
    }
}

impl TaskDb for MemoryDb {
    fn backend(&self) -> Backend {
        Backend::Dict
    }

    fn add_record(&mut self, rec: TaskRecord) -> Result<(), DbError> {
        self.add_raw(RawWrite::new(rec))
    }

    fn add_raw(&mut self, w: RawWrite) -> Result<(), DbError> {
        let Some(id) = w.rec.msg_id.as_deref() else {
            return Err(DbError::MissingMsgId);
        };
        if self.index.contains_key(id) {
            let id = id.to_string();
            self.with_record(&id, |r| r.merge_raw(w));
        } else {
            // A new id (every request): the record goes in as it is, not merged into an
            // empty one (one lookup and one copy of the id fewer per task).
            self.insert_new(Box::new(Stored::from_raw(w)));
        }
        Ok(())
    }

    fn update_raw(&mut self, msg_id: &str, w: RawWrite) -> Result<(), DbError> {
        self.with_record(msg_id, |r| r.merge_raw(w));
        Ok(())
    }

    fn update_record(&mut self, msg_id: &str, patch: TaskRecord) -> Result<(), DbError> {
        self.with_record(msg_id, |r| r.merge(patch));
        Ok(())
    }

    fn set_engine(&mut self, msg_id: &str, engine_uuid: &str) -> Result<(), DbError> {
        self.with_record(msg_id, |r| match &mut r.rec.engine_uuid {
            Some(e) => {
                e.clear();
                e.push_str(engine_uuid);
            }
            e => *e = Some(engine_uuid.to_string()),
        });
        Ok(())
    }

    fn append_stream(&mut self, msg_id: &str, stream: Stream, text: &str) -> Result<(), DbError> {
        self.with_record(msg_id, |r| r.append_stream(stream, text));
        Ok(())
    }

    fn get_record(&self, msg_id: &str) -> Result<TaskRecord, DbError> {
        match self.index.get(msg_id).and_then(|s| self.records.get(s)) {
            Some(r) => Ok(r.full()),
            None if self.culled.contains(msg_id) => Err(DbError::Culled(msg_id.to_string())),
            None => Err(DbError::NotFound(msg_id.to_string())),
        }
    }

    fn find_records(
        &self,
        query: &Query,
        keys: Option<&[Field]>,
    ) -> Result<Vec<TaskRecord>, DbError> {
        Ok(self
            .candidates(query)
            .into_iter()
            .filter_map(|s| self.records.get(&s))
            .filter(|r| r.matches(query))
            .map(|r| r.project(keys))
            .collect())
    }

    fn get_history(&self) -> Result<Vec<String>, DbError> {
        let mut v: Vec<(chrono::DateTime<chrono::Utc>, u64, &str)> = self
            .records
            .iter()
            .filter_map(|(&s, r)| Some((r.rec.submitted?, s, r.rec.msg_id.as_deref()?)))
            .collect();
        v.sort_unstable();
        Ok(v.into_iter().map(|(_, _, id)| id.to_string()).collect())
    }

    fn drop_record(&mut self, msg_id: &str) -> Result<bool, DbError> {
        match self.index.get(msg_id).copied() {
            Some(seq) => Ok(self.remove_seq(seq).is_some()),
            None => Ok(false),
        }
    }

    fn drop_matching_records(&mut self, query: &Query) -> Result<usize, DbError> {
        let doomed: Vec<u64> = self
            .candidates(query)
            .into_iter()
            .filter(|s| self.records.get(s).is_some_and(|r| r.matches(query)))
            .collect();
        Ok(doomed
            .into_iter()
            .filter(|&s| self.remove_seq(s).is_some())
            .count())
    }

    fn flush(&mut self) -> Result<(), DbError> {
        Ok(())
    }

    fn close(&mut self) -> Result<(), DbError> {
        Ok(())
    }
}

#[cfg(test)]
#[allow(clippy::field_reassign_with_default)]
mod tests {
    use super::*;
    use rpar_core::ids::parse_iso;

    fn task(id: &str, second: u32, done: bool, bytes: usize) -> TaskRecord {
        let mut r = TaskRecord::new(id);
        r.submitted = parse_iso(&format!("2026-01-01T00:00:{second:02}Z"));
        if done {
            r.completed = r.submitted;
        }
        r.buffers = Some(vec![vec![7u8; bytes]]);
        r
    }

    #[test]
    fn conformance() {
        crate::conformance::run_all(&mut || Box::new(MemoryDb::default()));
    }

    #[test]
    fn set_engine_is_an_update_of_that_field() {
        let mut a = MemoryDb::default();
        let mut b = MemoryDb::default();
        for db in [&mut a, &mut b] {
            db.add_record(task("t0", 0, false, 1)).unwrap();
        }
        for (id, e) in [("t0", "e1"), ("t0", "engine-two"), ("new", "e3")] {
            a.set_engine(id, e).unwrap();
            let mut patch = TaskRecord::default();
            patch.engine_uuid = Some(e.to_string());
            b.update_record(id, patch).unwrap();
            assert_eq!(a.get_record(id).unwrap(), b.get_record(id).unwrap());
        }
        assert_eq!(a.len(), 2);
    }

    #[test]
    fn cull_by_count_takes_oldest_completed() {
        let mut db = MemoryDb::new(Limits {
            record_limit: 10,
            size_limit: u64::MAX,
            cull_fraction: 0.2,
        });
        // 0 is pending; 1..=10 completed.
        db.add_record(task("t0", 0, false, 1)).unwrap();
        for i in 1..=10 {
            db.add_record(task(&format!("t{i}"), i, true, 1)).unwrap();
        }
        // 11 records > 10: cull 2 oldest completed (t1, t2); the pending t0 stays.
        assert_eq!(db.len(), 9);
        assert!(db.get_record("t0").is_ok());
        assert!(matches!(db.get_record("t1"), Err(DbError::Culled(id)) if id == "t1"));
        assert!(matches!(db.get_record("t2"), Err(DbError::Culled(_))));
        assert!(db.get_record("t3").is_ok());
        assert!(matches!(db.get_record("zzz"), Err(DbError::NotFound(_))));
        assert_eq!(db.buffer_bytes(), 9);
    }

    #[test]
    fn cull_by_size_down_to_fraction() {
        let mut db = MemoryDb::new(Limits {
            record_limit: 1000,
            size_limit: 1000,
            cull_fraction: 0.5,
        });
        for i in 0..10 {
            db.add_record(task(&format!("t{i}"), i, true, 100)).unwrap();
        }
        assert_eq!(db.len(), 10);
        db.add_record(task("t10", 10, true, 100)).unwrap();
        // 1100 > 1000: cull until <= 500.
        assert_eq!(db.buffer_bytes(), 500);
        assert_eq!(db.len(), 5);
        assert!(matches!(db.get_record("t5"), Err(DbError::Culled(_))));
        assert!(db.get_record("t6").is_ok());
    }

    #[test]
    fn pending_records_are_never_culled_and_unblock_on_completion() {
        let mut db = MemoryDb::new(Limits {
            record_limit: 3,
            size_limit: u64::MAX,
            cull_fraction: 0.5,
        });
        for i in 0..5 {
            db.add_record(task(&format!("p{i}"), i, false, 0)).unwrap();
        }
        assert_eq!(db.len(), 5, "all pending: nothing to cull");
        let mut done = TaskRecord::default();
        done.completed = parse_iso("2026-01-01T00:01:00Z");
        db.update_record("p1", done).unwrap();
        assert_eq!(db.len(), 4);
        assert!(matches!(db.get_record("p1"), Err(DbError::Culled(_))));
        // A culled id written again comes back as a live record.
        db.append_stream("p1", Stream::Stdout, "late").unwrap();
        assert_eq!(db.get_record("p1").unwrap().stdout.as_deref(), Some("late"));
    }

    #[test]
    fn two_thousand_one_mb_tasks_stay_bounded() {
        let mut db = MemoryDb::default();
        let mb = 1 << 20;
        for i in 0..2000u32 {
            let mut r = TaskRecord::new(format!("t{i}"));
            r.submitted = Some(chrono::Utc::now());
            r.buffers = Some(vec![vec![1u8; mb]]);
            db.add_record(r).unwrap();
            let mut done = TaskRecord::default();
            done.completed = Some(chrono::Utc::now());
            done.result_buffers = Some(vec![vec![2u8; 16]]);
            db.update_record(&format!("t{i}"), done).unwrap();
            assert!(db.buffer_bytes() <= DEFAULT_SIZE_LIMIT);
            assert!(db.len() <= 1024);
        }
        assert!(db.get_record("t1999").is_ok());
        assert!(matches!(db.get_record("t0"), Err(DbError::Culled(_))));
    }
}
