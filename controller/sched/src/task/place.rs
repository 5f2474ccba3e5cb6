//! Placement policy: which engine runs a task (scheme, targets, follow, blacklist, hwm), sending
//! it there, queueing it where it can wait, and filling engines as slots free up.

use super::*;

impl TaskScheduler {
    pub(super) fn status_of(&self, id: TaskSeq) -> Option<Outcome> {
        self.done.get(&id).map(|d| d.outcome)
    }

    pub(super) fn follow_ok(&self, job: &Job, k: EngineKey) -> bool {
        job.follow.check(|id| {
            self.done
                .get(&id)
                .filter(|d| d.engine == Some(k))
                .map(|d| d.outcome)
        })
    }

    pub(super) fn has_slot(&self, e: &Engine) -> bool {
        e.alive && (self.cfg.scheme == Scheme::Pure || self.cfg.hwm == 0 || e.load < self.cfg.hwm)
    }

    /// Keep `free` right for engine `k` after its load or liveness changed.
    pub(super) fn refresh_slot(&mut self, k: EngineKey) {
        if self.engines.get(&k).is_some_and(|e| self.has_slot(e)) {
            self.free.insert(k);
        } else {
            self.free.remove(&k);
        }
    }

    /// Where can this task go now, or why never.
    pub(super) fn placement(&mut self, job: &Job) -> Placement {
        let pure = self.cfg.scheme == Scheme::Pure;
        // `leastload` and `lru` pick the least (load, LRU position) / the least LRU position:
        // kept as the candidates go by, without a list to sort (LRU positions are distinct, so
        // this is the scheme's first best candidate in LRU order)
        let min_of = match self.cfg.scheme {
            Scheme::LeastLoad => Some(true),
            Scheme::Lru => Some(false),
            _ => None,
        };
        let mut best: Option<(u32, i64, EngineKey)> = None;
        let mut cands: Vec<(i64, EngineKey, u32)> = Vec::new();
        {
            let mut consider = |k: EngineKey, e: &Engine| {
                if self.has_slot(e) && !job.blacklist.contains(&e.uuid) && self.follow_ok(job, k) {
                    if let Some(by_load) = min_of {
                        let key = (if by_load { e.load } else { 0 }, e.lru, k);
                        if best.is_none_or(|b| key < b) {
                            best = Some(key);
                        }
                        return;
                    }
                    let order = if pure { k as i64 } else { e.lru };
                    cands.push((order, k, e.load));
                }
            };
            match &job.targets {
                Some(ts) if !pure => {
                    for t in ts {
                        if let Some(&k) = self.by_uuid.get(t) {
                            if let Some(e) = self.engines.get(&k) {
                                consider(k, e);
                            }
                        }
                    }
                }
                _ => {
                    // an engine without a free slot is never a candidate
                    for &k in &self.free {
                        if let Some(e) = self.engines.get(&k) {
                            consider(k, e);
                        }
                    }
                }
            }
        }
        if let Some((_, _, k)) = best {
            return Placement::Run(k);
        }
        if !cands.is_empty() {
            cands.sort_unstable();
            let loads: Vec<u32> = cands.iter().map(|c| c.2).collect();
            let i = self.cfg.scheme.choose(&loads, &mut self.rng, &mut self.rr);
            return Placement::Run(cands[i.min(cands.len() - 1)].1);
        }
        if pure {
            return Placement::Wait(Slot::General);
        }
        let alive = |k: &EngineKey| self.engines.get(k).is_some_and(|e| e.alive);
        // follow: which engines could ever satisfy it
        let mut follow_engines: Option<Vec<Vec<u8>>> = None;
        if !job.follow.is_empty() {
            let mut dests: BTreeSet<Option<EngineKey>> = BTreeSet::new();
            let mut undecided = false;
            for id in &job.follow.ids {
                match self.done.get(id) {
                    Some(d) if job.follow.counts(d.outcome) => {
                        dests.insert(d.engine);
                    }
                    Some(_) => {}
                    None => undecided = true,
                }
            }
            if job.follow.all {
                if dests.len() > 1 {
                    return Placement::Impossible(
                        "the tasks it must follow ran on different engines".into(),
                    );
                }
                if let Some(d) = dests.first() {
                    match d {
                        Some(k) if alive(k) => {}
                        _ => {
                            return Placement::Impossible(
                                "the engine it must follow is gone".into(),
                            )
                        }
                    }
                }
                if undecided {
                    return Placement::Wait(Slot::Parked);
                }
            }
            let uuids: Vec<Vec<u8>> = dests
                .iter()
                .flatten()
                .filter(|k| alive(k))
                .filter_map(|k| self.engines.get(k).map(|e| e.uuid.clone()))
                .collect();
            if uuids.is_empty() {
                if undecided {
                    return Placement::Wait(Slot::Parked);
                }
                return Placement::Impossible("no live engine satisfies its follow".into());
            }
            follow_engines = Some(uuids);
        }
        let mut allowed: Option<Vec<Vec<u8>>> = match (&job.targets, follow_engines) {
            (Some(t), Some(f)) => Some(f.into_iter().filter(|u| t.contains(u)).collect()),
            (Some(t), None) => Some(t.clone()),
            (None, f) => f,
        };
        if let Some(a) = &mut allowed {
            a.retain(|u| !job.blacklist.contains(u));
            if a.is_empty() {
                return Placement::Impossible(if job.func_dep_failed {
                    "every allowed engine failed its functional dependencies".into()
                } else {
                    "no allowed engine is left (targets, follow, blacklist)".into()
                });
            }
            if !a.iter().any(|u| self.by_uuid.contains_key(u)) {
                return Placement::Impossible("none of its target engines is registered".into());
            }
            return Placement::Wait(Slot::Engines(a.clone()));
        }
        if job.func_dep_failed {
            let mut live = self.engines.values().filter(|e| e.alive).peekable();
            if live.peek().is_some() && live.all(|e| job.blacklist.contains(&e.uuid)) {
                return Placement::Impossible(
                    "every engine failed its functional dependencies".into(),
                );
            }
        }
        Placement::Wait(Slot::General)
    }

    /// Run the task now, queue it, or fail it. `fresh`: it is entering the queue anew (submission
    /// or resubmission), so its timeout is (re)armed, as Python does.
    pub(super) fn place(
        &mut self,
        seq: TaskSeq,
        job: Job,
        now: Instant,
        fresh: bool,
        out: &mut Vec<TaskAction>,
    ) {
        match self.placement(&job) {
            Placement::Run(k) => self.dispatch(seq, job, k, out),
            Placement::Wait(slot) => self.enqueue(seq, job, JobState::Queued(slot), now, fresh),
            Placement::Impossible(why) => {
                info!(msg_id = %job.msg_id, "impossible dependency: {why}");
                self.fail(seq, job, SchedFailure::ImpossibleDependency(why), out)
            }
        }
    }

    pub(super) fn dispatch(
        &mut self,
        seq: TaskSeq,
        mut job: Job,
        k: EngineKey,
        out: &mut Vec<TaskAction>,
    ) {
        let Some(e) = self.engines.get_mut(&k) else {
            // cannot happen (placement only returns known engines); keep the task queued
            self.general.insert(seq);
            job.state = JobState::Queued(Slot::General);
            self.jobs.insert(seq, job);
            return;
        };
        e.load += 1;
        e.lru = self.lru_back;
        self.lru_back += 1;
        e.pending.insert(seq);
        let mut idents = Vec::with_capacity(1 + job.request.idents.len());
        idents.push(e.uuid.clone());
        idents.extend(job.request.idents.iter().take(1).cloned());
        debug!(msg_id = %job.msg_id, engine = e.id, "task assigned");
        let mut frames = job.request.frames_with_idents(idents);
        if self.share_buffers && !job.buffers.is_empty() {
            out.push(TaskAction::ToEngineShared(frames, job.buffers.clone()));
        } else {
            frames.extend(job.buffers.iter().cloned());
            out.push(TaskAction::ToEngine(frames));
        }
        out.push(TaskAction::Assigned {
            msg_id: job.msg_id.clone(),
            engine_uuid: e.uuid.clone(),
        });
        self.refresh_slot(k);
        job.state = JobState::Running(k);
        self.jobs.insert(seq, job);
    }

    pub(super) fn enqueue(
        &mut self,
        seq: TaskSeq,
        mut job: Job,
        state: JobState,
        now: Instant,
        fresh: bool,
    ) {
        match &state {
            JobState::Queued(Slot::General) => {
                self.general.insert(seq);
            }
            JobState::Queued(Slot::Engines(us)) => {
                for u in us {
                    self.per_engine.entry(u.clone()).or_default().insert(seq);
                }
            }
            _ => {}
        }
        job.state = state;
        if !job.in_graph {
            job.in_graph = true;
            for &d in job.after.ids.iter().chain(job.follow.ids.iter()) {
                if !self.done.contains_key(&d) {
                    self.dependents.entry(d).or_default().push(seq);
                }
            }
        }
        if fresh {
            if let Some(t) = job.timeout {
                if let Some(old) = job.deadline.take() {
                    self.timeouts.remove(&(old, seq));
                }
                let d = now + t;
                job.deadline = Some(d);
                self.timeouts.insert((d, seq));
            }
        }
        self.jobs.insert(seq, job);
    }

    /// Re-examine a queued or waiting task after something it depends on changed.
    pub(super) fn reconsider(&mut self, seq: TaskSeq, now: Instant, out: &mut Vec<TaskAction>) {
        let Some(job) = self.jobs.remove(&seq) else {
            return;
        };
        if matches!(job.state, JobState::Running(_)) {
            self.jobs.insert(seq, job);
            return;
        }
        let st = |id| self.status_of(id);
        if job.after.unreachable(st) || job.follow.unreachable(st) {
            self.fail(
                seq,
                job,
                SchedFailure::ImpossibleDependency("a dependency finished the wrong way".into()),
                out,
            );
            return;
        }
        if !job.after.check(st) {
            self.jobs.insert(seq, job);
            return;
        }
        self.unindex(seq, &job);
        self.place(seq, job, now, false, out);
    }

    /// Give engine `k` work while it has free slots: the oldest runnable task among the head of
    /// the general queue and its own queue.
    pub(super) fn fill(&mut self, k: EngineKey, now: Instant, out: &mut Vec<TaskAction>) {
        loop {
            let Some(e) = self.engines.get(&k) else {
                return;
            };
            if !self.has_slot(e) {
                return;
            }
            let uuid = &e.uuid;
            let g = self.general.iter().copied().find(|s| {
                self.jobs
                    .get(s)
                    .is_some_and(|j| !j.blacklist.contains(uuid))
            });
            let t = self.per_engine.get(uuid).and_then(|q| {
                q.iter().copied().find(|s| {
                    self.jobs
                        .get(s)
                        .is_some_and(|j| !j.blacklist.contains(uuid) && self.follow_ok(j, k))
                })
            });
            let pick = match (g, t) {
                (Some(a), Some(b)) => a.min(b),
                (a, b) => match a.or(b) {
                    Some(x) => x,
                    None => return,
                },
            };
            let Some(job) = self.jobs.remove(&pick) else {
                self.general.remove(&pick);
                continue;
            };
            self.unindex(pick, &job);
            match self.placement(&job) {
                Placement::Run(target) => self.dispatch(pick, job, target, out),
                Placement::Impossible(why) => {
                    self.fail(pick, job, SchedFailure::ImpossibleDependency(why), out)
                }
                Placement::Wait(slot) => {
                    // should not happen (it passed the checks for this engine); stop here
                    self.enqueue(pick, job, JobState::Queued(slot), now, false);
                    return;
                }
            }
        }
    }

    pub(super) fn drain(&mut self, now: Instant, out: &mut Vec<TaskAction>) {
        loop {
            if let Some(seq) = self.notify.pop_front() {
                if let Some(mut ds) = self.dependents.remove(&seq) {
                    ds.sort_unstable();
                    ds.dedup();
                    for d in ds {
                        self.reconsider(d, now, out);
                    }
                }
            } else if let Some(seq) = self.recheck.pop_front() {
                self.reconsider(seq, now, out);
            } else if let Some(k) = self.capacity.pop_front() {
                self.fill(k, now, out);
            } else {
                return;
            }
        }
    }
}
