//! Heap tuning for a long-running daemon on glibc: memory freed after a
//! burst (large lists teed into the cache) goes back to the OS instead of
//! staying resident, without raising idle RSS (a different allocator, e.g.
//! mimalloc, took idle RSS from 15 to 34 MiB when tried).
//!
//! - `M_ARENA_MAX` 2: a few arenas instead of 8 per core, so freed memory is
//!   not stranded in per-thread arenas;
//! - `M_MMAP_THRESHOLD` 256 KiB, fixed: large buffers (list bodies) are
//!   mmapped and unmapped when freed (a fixed value also stops glibc from
//!   raising the threshold after the first large free);
//! - `M_TRIM_THRESHOLD` 1 MiB: free memory at the top of the heap beyond it
//!   is returned;
//! - [`release_free_memory`]: `malloc_trim(0)` after a large copy was
//!   written, which also returns free pages inside the arenas (the items
//!   of a list are many small allocations).
//!
//! Elsewhere (musl, other allocators) these are no-ops.

/// Applies the settings; call once at start, before threads allocate.
pub fn tune() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes allocator parameters; called before the
    // runtime's threads start.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 2);
        libc::mallopt(libc::M_MMAP_THRESHOLD, 256 << 10);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 1 << 20);
    }
}

/// Returns free heap memory to the OS, on a blocking thread (a trim walks
/// the arenas: milliseconds after a large burst). At most one at a time.
pub fn release_free_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        use std::sync::atomic::{AtomicBool, Ordering};
        static TRIMMING: AtomicBool = AtomicBool::new(false);
        if TRIMMING.swap(true, Ordering::AcqRel) {
            return;
        }
        let trim = || {
            // SAFETY: malloc_trim has no preconditions.
            unsafe { libc::malloc_trim(0) };
            TRIMMING.store(false, Ordering::Release);
        };
        match tokio::runtime::Handle::try_current() {
            Ok(h) => {
                h.spawn_blocking(trim);
            }
            Err(_) => trim(),
        }
    }
}
