//! The controller's global allocator: small blocks from mimalloc, big ones from the system's.
//!
//! The hot path allocates and frees a few dozen small blocks per task (frames, parsed JSON,
//! records); glibc's malloc spent about a quarter of the controller's CPU on them. Big blocks
//! (task buffers, from [`SMALL`] bytes) stay with glibc, tuned for them in `main.rs` and trimmed
//! by the task database after large frees: mimalloc alone gives their pages back and faults
//! them in again for every 1 MB task (3x the controller's CPU per such task).

use std::alloc::{GlobalAlloc, Layout, System};

/// Blocks from this size on come from the system allocator.
pub const SMALL: usize = 64 << 10;

/// See the module docs.
pub struct SplitAlloc;

fn small(size: usize) -> bool {
    size < SMALL
}

// SAFETY: every block is freed (or grown) by the allocator that made it: which one is decided
// by the block's size, which the caller passes back unchanged in `layout`; a block that changes
// sides in `realloc` is copied into a new block of the other allocator.
unsafe impl GlobalAlloc for SplitAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if small(layout.size()) {
            unsafe { mimalloc::MiMalloc.alloc(layout) }
        } else {
            unsafe { System.alloc(layout) }
        }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        if small(layout.size()) {
            unsafe { mimalloc::MiMalloc.alloc_zeroed(layout) }
        } else {
            unsafe { System.alloc_zeroed(layout) }
        }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        if small(layout.size()) {
            unsafe { mimalloc::MiMalloc.dealloc(ptr, layout) }
        } else {
            unsafe { System.dealloc(ptr, layout) }
        }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        match (small(layout.size()), small(new_size)) {
            (true, true) => unsafe { mimalloc::MiMalloc.realloc(ptr, layout, new_size) },
            (false, false) => unsafe { System.realloc(ptr, layout, new_size) },
            _ => {
                // SAFETY: the caller guarantees `new_size`, rounded up to `layout.align()`, does
                // not overflow isize (GlobalAlloc::realloc's contract).
                let new_layout =
                    unsafe { Layout::from_size_align_unchecked(new_size, layout.align()) };
                let new = unsafe { self.alloc(new_layout) };
                if !new.is_null() {
                    // SAFETY: both blocks are valid for the smaller size and do not overlap.
                    unsafe {
                        std::ptr::copy_nonoverlapping(ptr, new, layout.size().min(new_size));
                        self.dealloc(ptr, layout);
                    }
                }
                new
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_grow_and_shrink_across_the_split() {
        let a = SplitAlloc;
        let l = Layout::from_size_align(100, 8).unwrap();
        unsafe {
            let mut p = a.alloc(l);
            assert!(!p.is_null());
            for i in 0..100 {
                *p.add(i) = i as u8;
            }
            // small -> big -> big -> small, keeping the bytes each time
            let mut size = 100;
            for new in [SMALL * 2, SMALL * 3, 50] {
                p = a.realloc(p, Layout::from_size_align(size, 8).unwrap(), new);
                assert!(!p.is_null());
                for i in 0..50 {
                    assert_eq!(*p.add(i), i as u8);
                }
                size = new;
            }
            a.dealloc(p, Layout::from_size_align(size, 8).unwrap());
            let z = a.alloc_zeroed(Layout::from_size_align(SMALL, 16).unwrap());
            assert!((0..SMALL).all(|i| *z.add(i) == 0));
            a.dealloc(z, Layout::from_size_align(SMALL, 16).unwrap());
        }
    }
}
