//! The allocator policy of the command.
//!
//! Every piece of a transfer is a buffer of about 1 MiB, allocated when it is read or
//! received and freed once it is written or sent. glibc serves blocks of that size with
//! `mmap` (or trims them off the heap top once freed), so each piece costs fresh pages
//! that the kernel must fault in and zero: about a third of the sender's CPU time. Here
//! blocks up to 4 MiB come from the heap and up to 32 MiB of freed memory stay there, so
//! steady-state pieces reuse the same pages. Peak memory is unchanged: the window of
//! pieces in flight bounds it either way.

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
