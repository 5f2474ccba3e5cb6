//! Handing freed buffer memory back to the operating system.
//!
//! Task buffers are typically megabytes. glibc serves such blocks from its heaps once its
//! dynamic mmap threshold has grown, and keeps them after they are freed, so a controller that
//! dropped a gigabyte of culled or committed records can still show a gigabyte of RSS. After
//! large frees (culls, purges, SQLite commits) we ask glibc to return free pages, at most once a
//! second. Elsewhere this is a no-op.

use std::time::{Duration, Instant};

/// Bytes freed before a trim is worth its cost.
const TRIM_AFTER: u64 = 32 << 20;
/// Least time between trims.
const TRIM_EVERY: Duration = Duration::from_secs(1);

/// Counts freed bytes and trims when enough have been freed.
#[derive(Debug)]
pub(crate) struct Trimmer {
    freed: u64,
    last: Option<Instant>,
}

impl Trimmer {
    pub(crate) fn new() -> Trimmer {
        Trimmer {
            freed: 0,
            last: None,
        }
    }

    /// Note that `bytes` were just freed; maybe trim.
    pub(crate) fn freed(&mut self, bytes: u64) {
        self.freed += bytes;
        if self.freed < TRIM_AFTER || self.last.is_some_and(|t| t.elapsed() < TRIM_EVERY) {
            return;
        }
        self.freed = 0;
        self.last = Some(Instant::now());
        release_free_memory();
    }
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn release_free_memory() {
    // SAFETY: malloc_trim only walks the allocator's own free lists; it has no preconditions.
    let released = unsafe { libc::malloc_trim(0) };
    tracing::trace!(released, "returned free memory to the OS");
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn release_free_memory() {}
