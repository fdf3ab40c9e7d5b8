//! How the process's allocator treats the model's large buffers.

/// Keeps freed large buffers in the heap for the next ones to reuse.
///
/// A CPU forward allocates an output (and a padded input) per convolution, up to 26 MB each
/// for u2netp and 67 MB for IS-Net. glibc's malloc serves each one above its mmap threshold
/// (dynamic, 32 MB at most) with a fresh mapping and trims the heap top when one is freed, so
/// every convolution faulted its buffers back in page by page. This raises both thresholds
/// to 1 GB; memory freed stays with the process, up to its peak use. (Threads other than the
/// main one allocate from arenas of at most 64 MB per heap, so IS-Net's largest buffers still
/// get their own mappings there; one arena for all threads slowed the WGSL side down.)
///
/// Process-wide, so it is for binaries (`cutout`, the benchmarks) to call before they start
/// threads; a no-op where the C library is not glibc, or when `CUTOUT_DEFAULT_MALLOC` is set
/// (to measure the difference, or to have freed memory returned to the system).
pub fn keep_large_buffers() {
    if std::env::var_os("CUTOUT_DEFAULT_MALLOC").is_some() {
        return;
    }
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes malloc's parameters; called before other threads exist.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 1 << 30);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 1 << 30);
    }
}
