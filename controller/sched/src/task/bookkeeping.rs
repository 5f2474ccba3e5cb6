//! Bookkeeping: taking a job out of the queues and timers, the finished window that
//! `after`/`follow` can name, and failing a task with the scheduler's own error reply.

use super::*;

impl TaskScheduler {
    /// Take a queued task out of the ready indexes (not out of `jobs`).
    pub(super) fn unindex(&mut self, seq: TaskSeq, job: &Job) {
        match &job.state {
            JobState::Queued(Slot::General) => {
                self.general.remove(&seq);
            }
            JobState::Queued(Slot::Engines(us)) => {
                for u in us {
                    if let Some(q) = self.per_engine.get_mut(u) {
                        q.remove(&seq);
                        if q.is_empty() {
                            self.per_engine.remove(u);
                        }
                    }
                }
            }
            _ => {}
        }
    }

    pub(super) fn unarm(&mut self, seq: TaskSeq, job: &Job) {
        if let Some(d) = job.deadline {
            self.timeouts.remove(&(d, seq));
        }
    }

    /// Task `seq` is final. It joins the finished window; `refs` (its own dependencies) are
    /// released; the oldest finished tasks beyond the window are forgotten, except those a live
    /// task still depends on.
    pub(super) fn record(
        &mut self,
        seq: TaskSeq,
        msg_id: &str,
        outcome: Outcome,
        engine: Option<EngineKey>,
        refs: &[TaskSeq],
    ) {
        self.done.insert(seq, Done { outcome, engine });
        self.notify.push_back(seq);
        for r in refs {
            if let Some(n) = self.dep_refs.get_mut(r) {
                *n -= 1;
                if *n == 0 {
                    self.dep_refs.remove(r);
                    if let Some(m) = self.pinned.remove(r) {
                        self.forget(*r, &m);
                    }
                }
            }
        }
        // forget before remembering, so the queue never grows past the window (a VecDeque
        // doubles its capacity when pushed past it)
        while self.finished.len() >= self.done_window.max(1) && self.retire_oldest() {}
        self.finished.push_back((seq, msg_id.to_string()));
        while self.finished.len() > self.done_window && self.retire_oldest() {}
    }

    /// Take the oldest task out of the finished window (`false` when it is empty).
    fn retire_oldest(&mut self) -> bool {
        let Some((old, m)) = self.finished.pop_front() else {
            return false;
        };
        if self.dep_refs.contains_key(&old) {
            // out of the window, but a live task depends on it: forgotten when released
            self.pinned.insert(old, m);
        } else {
            self.forget(old, &m);
        }
        true
    }

    pub(super) fn forget(&mut self, seq: TaskSeq, msg_id: &str) {
        self.done.remove(&seq);
        if self.ids.get(msg_id) == Some(&seq) {
            self.ids.remove(msg_id);
        }
    }

    /// Keep at most `n` finished tasks for `after`/`follow` (default [`DONE_WINDOW`]).
    pub fn with_done_window(mut self, n: usize) -> Self {
        self.done_window = n;
        self
    }

    /// Bookkeeping entries held (msg_ids, finished and live tasks, dependency links), for
    /// tests that memory stays bounded.
    pub fn held(&self) -> usize {
        self.ids.len()
            + self.done.len()
            + self.jobs.len()
            + self.finished.len()
            + self.dep_refs.len()
            + self.pinned.len()
            + self.dependents.len()
    }

    /// Fail a task with a scheduler-made `apply_reply` (`job` already out of `jobs`).
    pub(super) fn fail(
        &mut self,
        seq: TaskSeq,
        job: Job,
        why: SchedFailure,
        out: &mut Vec<TaskAction>,
    ) {
        self.unindex(seq, &job);
        self.unarm(seq, &job);
        let client = job.request.idents.first().cloned().unwrap_or_default();
        let reply = self.builder.build(
            &self.signer,
            vec![client],
            "apply_reply",
            &job.request.header,
            &json!({}),
            &why.content(),
            Vec::new(),
        );
        self.record(seq, &job.msg_id, Outcome::Failure, None, &job.refs);
        out.push(TaskAction::Finished {
            msg_id: job.msg_id,
            engine_uuid: None,
            reply,
        });
    }
}
