//! The allocator policy of the command.
//!
//! Every piece of a transfer is a buffer of about 1 MiB, allocated when it is read or
//! received and freed once it is written or sent. glibc serves blocks of that size with
//! `mmap` (or trims them off the heap top once freed), so each piece costs fresh pages
//! that the kernel must fault in and zero: about a third of the sender's CPU time. Here
//! blocks up to 4 MiB come from the heap and up to 32 MiB of freed memory stay there, so
//! steady-state pieces reuse the same pages. Peak memory is unchanged: the window of
//! pieces in flight bounds it either way.
//!
//! A transfer also allocates its pieces on one thread and frees them on another (file
//! reads, jobs, the session loop), and glibc gives each thread an arena of its own that
//! keeps what was freed in it. `send` and `receive` therefore use a single arena: the
//! sender's peak RSS for a 256 MiB file fell from 16.0-17.3 MiB to 15.0-15.3 MiB with
//! it (three runs each), at the same CPU time. The relay, which may run many threads,
//! keeps glibc's default.

/// Apply the policy; call once, first thing in `main`.
pub(crate) fn tune() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes allocator parameters; called before any thread
    // starts. A refused setting (return 0) leaves glibc's default, which is harmless.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 4 << 20);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 32 << 20);
    }
}

/// For `send` and `receive`: one malloc arena for every thread (see the module docs).
/// Call before any thread starts.
pub(crate) fn one_arena() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: as in `tune`: an allocator parameter, set before any thread starts.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 1);
    }
}
