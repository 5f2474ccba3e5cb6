//! glibc's malloc thresholds, set by each program at its start ([`keep_in_heap`]).
//!
//! A task buffer passes through a few short-lived blocks on its way (ZeroMQ's receive buffer,
//! a frame, the copy sent on). glibc serves a block from 128 KiB up with a mapping of its own
//! at first, and later returns the free top of a heap past its trim threshold, so each such
//! block can cost an `mmap`, a page fault per 4 KiB and an `munmap`: for a 1 MB task, about
//! 256 faults on every process it crosses. Blocks below `mmap` bytes kept in the heap are
//! reused as they are. Setting the thresholds also stops glibc from raising them on its own
//! (it would, up to 32 MiB and 64 MiB, after the first big free). A user's own setting
//! (`MALLOC_MMAP_THRESHOLD_`, `MALLOC_TRIM_THRESHOLD_` or `GLIBC_TUNABLES`) wins.

/// Serve blocks below `mmap` bytes from the heap and keep up to `trim` bytes free at a heap's
/// top, unless the environment sets glibc's thresholds itself. `mallopt` may be called from any
/// thread; call this early, before the blocks it is about are allocated.
pub fn keep_in_heap(mmap: usize, trim: usize) {
    if set_by_user(|k| std::env::var(k).ok()) {
        return;
    }
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        let (Ok(mmap), Ok(trim)) = (libc::c_int::try_from(mmap), libc::c_int::try_from(trim))
        else {
            return;
        };
        // SAFETY: mallopt only sets allocator parameters.
        unsafe {
            libc::mallopt(libc::M_MMAP_THRESHOLD, mmap);
            libc::mallopt(libc::M_TRIM_THRESHOLD, trim);
        }
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    let _ = (mmap, trim);
}

/// Does the environment (read through `var`) set glibc's mmap or trim threshold?
fn set_by_user(var: impl Fn(&str) -> Option<String>) -> bool {
    var("MALLOC_MMAP_THRESHOLD_").is_some()
        || var("MALLOC_TRIM_THRESHOLD_").is_some()
        || var("GLIBC_TUNABLES").is_some_and(|t| {
            t.contains("glibc.malloc.mmap_threshold") || t.contains("glibc.malloc.trim_threshold")
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env<'a>(pairs: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<String> + 'a {
        move |k| {
            pairs
                .iter()
                .find(|(n, _)| *n == k)
                .map(|(_, v)| v.to_string())
        }
    }

    #[test]
    fn a_users_thresholds_win() {
        assert!(!set_by_user(env(&[])));
        assert!(!set_by_user(env(&[(
            "GLIBC_TUNABLES",
            "glibc.malloc.arena_max=2"
        )])));
        assert!(set_by_user(env(&[("MALLOC_MMAP_THRESHOLD_", "1048576")])));
        assert!(set_by_user(env(&[("MALLOC_TRIM_THRESHOLD_", "0")])));
        assert!(set_by_user(env(&[(
            "GLIBC_TUNABLES",
            "glibc.malloc.arena_max=2:glibc.malloc.trim_threshold=0"
        )])));
    }
}
