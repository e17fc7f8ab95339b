//! Allocator tuning for benchmarks that host many endpoints in one process.

/// glibc serves allocations from 128 KiB up with fresh `mmap`ed pages, which
/// stay untouched (free of RSS) until written, but raises that threshold to
/// the size of any such block that is freed (up to 32 MiB). quinn allocates a
/// zeroed receive buffer of ~13 MiB per endpoint (6.5 KiB loopback datagrams
/// × 64 GRO segments × 32 per batch) of which it touches a small part; once
/// the nodes of one run have left, the next run's buffers come from the heap
/// and `calloc` zeroes all 13 MiB: RSS tripled from the second run on (400 MiB
/// -> 1.2 GiB for 100 nodes). A fixed threshold keeps large blocks on `mmap`.
/// Only in this process: made process-wide in the `partybus` binary, it slowed
/// the emitter of `bench throughput` at 1 KiB from ~1.2 to ~2.8 µs of CPU per
/// event.
pub fn fixed_mmap_threshold() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets an allocator parameter.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 4 << 20);
    }
}
