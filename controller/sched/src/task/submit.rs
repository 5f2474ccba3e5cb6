//! Submission: a client's request becomes a job (its metadata read and checked, its
//! dependencies interned), refused, waiting for its `after`, or placed.

use super::*;

impl TaskScheduler {
    /// A task request from a client: `msg.idents == [client_routing_id]`.
    pub fn submit(&mut self, mut msg: WireMessage, now: Instant) -> Vec<TaskAction> {
        let buffers = SharedBuffers::new(std::mem::take(&mut msg.buffers));
        self.submit_shared(msg, buffers, now)
    }

    /// [`TaskScheduler::submit`] for a request whose buffers the caller holds too (its task
    /// record): `msg.buffers` is empty and `buffers` are the request's.
    pub fn submit_shared(
        &mut self,
        msg: WireMessage,
        buffers: SharedBuffers,
        now: Instant,
    ) -> Vec<TaskAction> {
        let msg_id = header_msg_id(&msg.header);
        self.submit_shared_as(msg, buffers, msg_id, None, now)
    }

    /// [`TaskScheduler::submit_shared`] for a request whose msg_id the caller has read already
    /// ([`rpar_core::msg::msg_id_of`] of `msg.header`), and perhaps its metadata too (as
    /// [`rpar_core::msg::parse_fields`] reads a [`TaskMetadata`] from a JSON object frame; `None`:
    /// read here), so that each frame is scanned once.
    pub fn submit_shared_as(
        &mut self,
        msg: WireMessage,
        buffers: SharedBuffers,
        msg_id: Option<String>,
        md: Option<TaskMetadata>,
        now: Instant,
    ) -> Vec<TaskAction> {
        let mut out = Vec::new();
        self.submit_inner(msg, buffers, msg_id, md, now, &mut out);
        self.drain(now, &mut out);
        out
    }

    pub(super) fn submit_inner(
        &mut self,
        msg: WireMessage,
        buffers: SharedBuffers,
        msg_id: Option<String>,
        md: Option<TaskMetadata>,
        now: Instant,
        out: &mut Vec<TaskAction>,
    ) {
        if msg.idents.is_empty() {
            warn!("task request without a client routing id; dropped");
            return;
        }
        let msg_id = match msg_id {
            Some(m) => m,
            None => {
                warn!("task request without a readable header.msg_id; dropped");
                return;
            }
        };
        if self.ids.contains_key(&msg_id) {
            warn!(%msg_id, "duplicate task msg_id; dropped");
            return;
        }
        let seq = self.next_seq;
        self.next_seq += 1;
        self.ids.insert(msg_id.clone(), seq);
        let mut job = Job {
            msg_id,
            request: msg,
            buffers,
            targets: None,
            after: Dependency::met(),
            follow: Dependency::met(),
            timeout: None,
            retries: 0,
            blacklist: HashSet::new(),
            func_dep_failed: false,
            state: JobState::Waiting,
            deadline: None,
            in_graph: false,
            refs: Vec::new(),
        };
        if self.cfg.scheme != Scheme::Pure {
            if let Err(failure) = self.read_metadata(seq, &mut job, md) {
                info!(msg_id = %job.msg_id, ename = failure.ename(), "task refused: {}", failure.evalue());
                self.fail(seq, job, failure, out);
                return;
            }
            job.refs = job
                .after
                .ids
                .iter()
                .chain(&job.follow.ids)
                .copied()
                .collect();
            for &r in &job.refs {
                *self.dep_refs.entry(r).or_default() += 1;
            }
            let st = |id: TaskSeq| self.done.get(&id).map(|d| d.outcome);
            if job.after.unreachable(st) || job.follow.unreachable(st) {
                let f = SchedFailure::ImpossibleDependency(
                    "a dependency already finished the wrong way".into(),
                );
                self.fail(seq, job, f, out);
                return;
            }
            if job.after.check(st) {
                job.after = Dependency::met();
            }
        }
        debug!(msg_id = %job.msg_id, "task submitted");
        if job.after.is_empty() {
            self.place(seq, job, now, true, out);
        } else {
            self.enqueue(seq, job, JobState::Waiting, now, true);
        }
    }

    /// Read targets/after/follow/timeout/retries; validate dependencies against known ids.
    /// `read`: the metadata as the caller read it already, if it did.
    pub(super) fn read_metadata(
        &self,
        seq: TaskSeq,
        job: &mut Job,
        read: Option<TaskMetadata>,
    ) -> Result<(), SchedFailure> {
        // Only five keys matter here; the client's metadata carries more. Read just those,
        // and fall back to the general parse for anything odd (so errors read as before).
        let parsed = read.or_else(|| rpar_core::msg::parse_fields(&job.request.metadata));
        let md = match parsed {
            Some(m) if !job.request.metadata.is_empty() => m,
            _ => {
                let md =
                    WireMessage::parse_part("metadata", &job.request.metadata).map_err(|e| {
                        SchedFailure::BadMetadata(MetadataError::Invalid {
                            key: "metadata",
                            why: e.to_string(),
                        })
                    })?;
                let Value::Object(md) = md else {
                    return Err(SchedFailure::BadMetadata(MetadataError::WrongType {
                        key: "metadata",
                        expected: "a dict",
                        got: crate::deps::type_name(&md),
                    }));
                };
                TaskMetadata::from_map(md)
            }
        };
        let bad = SchedFailure::BadMetadata;
        // targets
        match md.targets.as_ref() {
            None | Some(Value::Null) => {}
            Some(Value::Array(ts)) => {
                let mut v = Vec::with_capacity(ts.len());
                for t in ts {
                    match t {
                        Value::String(s) => v.push(s.as_bytes().to_vec()),
                        other => {
                            return Err(bad(MetadataError::WrongType {
                                key: "targets",
                                expected: "a list of engine uuid strings",
                                got: crate::deps::type_name(other),
                            }))
                        }
                    }
                }
                v.sort();
                v.dedup();
                if !v.is_empty() {
                    job.targets = Some(v);
                }
            }
            Some(other) => {
                return Err(bad(MetadataError::WrongType {
                    key: "targets",
                    expected: "a list of engine uuid strings",
                    got: crate::deps::type_name(other),
                }))
            }
        }
        // retries
        job.retries = match md.retries.as_ref() {
            None | Some(Value::Null) => 0,
            Some(Value::Number(n)) => match n.as_u64() {
                Some(r) => u32::try_from(r).unwrap_or(u32::MAX),
                None => {
                    return Err(bad(MetadataError::Invalid {
                        key: "retries",
                        why: format!("expected a non-negative integer, got {n}"),
                    }))
                }
            },
            Some(other) => {
                return Err(bad(MetadataError::WrongType {
                    key: "retries",
                    expected: "an integer",
                    got: crate::deps::type_name(other),
                }))
            }
        };
        // timeout
        job.timeout = match md.timeout.as_ref() {
            None | Some(Value::Null) => None,
            Some(Value::Number(n)) => {
                let t = n.as_f64().unwrap_or(f64::NAN);
                if !t.is_finite() || t < 0.0 {
                    return Err(bad(MetadataError::Invalid {
                        key: "timeout",
                        why: format!("expected a non-negative number of seconds, got {n}"),
                    }));
                }
                if t == 0.0 {
                    None
                } else {
                    Some(Duration::from_secs_f64(t.min(1e9)))
                }
            }
            Some(other) => {
                return Err(bad(MetadataError::WrongType {
                    key: "timeout",
                    expected: "a number of seconds",
                    got: crate::deps::type_name(other),
                }))
            }
        };
        // dependencies
        let after = ParsedDependency::parse("after", md.after.as_ref()).map_err(bad)?;
        let follow = ParsedDependency::parse("follow", md.follow.as_ref()).map_err(bad)?;
        job.after = self.intern(seq, &job.msg_id, after)?;
        job.follow = self.intern(seq, &job.msg_id, follow)?;
        Ok(())
    }

    pub(super) fn intern(
        &self,
        seq: TaskSeq,
        msg_id: &str,
        p: ParsedDependency,
    ) -> Result<Dependency, SchedFailure> {
        let mut ids = Vec::with_capacity(p.ids.len());
        for id in &p.ids {
            match self.ids.get(id) {
                Some(&s) if s == seq => {
                    return Err(SchedFailure::InvalidDependency(format!(
                        "task {msg_id:?} depends on itself"
                    )))
                }
                Some(&s) => ids.push(s),
                None => {
                    return Err(SchedFailure::InvalidDependency(format!(
                        "task {msg_id:?} depends on {id:?}, which this scheduler has never seen \
                         (or which finished more than {DONE_WINDOW} tasks ago)"
                    )))
                }
            }
        }
        Ok(Dependency {
            ids,
            all: p.all,
            success: p.success,
            failure: p.failure,
        })
    }
}

/// The request metadata keys the scheduler reads (`null` kept as `Some(Null)`).
#[derive(Debug, Clone, Default, PartialEq, serde::Deserialize)]
pub struct TaskMetadata {
    #[serde(default, deserialize_with = "rpar_core::msg::keep_null")]
    pub targets: Option<Value>,
    #[serde(default, deserialize_with = "rpar_core::msg::keep_null")]
    pub retries: Option<Value>,
    #[serde(default, deserialize_with = "rpar_core::msg::keep_null")]
    pub timeout: Option<Value>,
    #[serde(default, deserialize_with = "rpar_core::msg::keep_null")]
    pub after: Option<Value>,
    #[serde(default, deserialize_with = "rpar_core::msg::keep_null")]
    pub follow: Option<Value>,
}

impl TaskMetadata {
    /// The five keys of a metadata dict parsed whole.
    fn from_map(mut m: serde_json::Map<String, Value>) -> TaskMetadata {
        TaskMetadata {
            targets: m.remove("targets"),
            retries: m.remove("retries"),
            timeout: m.remove("timeout"),
            after: m.remove("after"),
            follow: m.remove("follow"),
        }
    }
}
