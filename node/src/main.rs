//! The `partybus` command: hood and peer certificates, a node daemon, shell
//! tools to listen and emit, a DHT bootstrap node, and benchmarks.

mod cli;

fn main() -> std::process::ExitCode {
    fixed_mmap_threshold();
    cli::main()
}

/// glibc serves allocations from 128 KiB up with fresh `mmap`ed pages, which
/// stay untouched (free of RSS) until written, but raises that threshold to
/// the size of any such block that is freed (up to 32 MiB). quinn allocates a
/// zeroed receive buffer of ~13 MiB per endpoint (6.5 KiB loopback datagrams
/// × 64 GRO segments × 32 per batch) of which it touches a small part; once one endpoint
/// has been dropped, the next ones come from the heap and `calloc` zeroes all
/// 13 MiB: RSS tripled from the second run of `bench mesh --in-process` on
/// (400 MiB -> 1.2 GiB for 100 nodes). A fixed threshold keeps large blocks
/// on `mmap`. This is the binary's choice; programs using the library make
/// their own (`mallopt(M_MMAP_THRESHOLD, ...)` or `MALLOC_MMAP_THRESHOLD_`).
fn fixed_mmap_threshold() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets an allocator parameter; called before any
    // thread is started.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 4 << 20);
    }
}
