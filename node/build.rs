//! Link options for the `partybus` binary (not the library: an application
//! that embeds the library links its own way).

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-env-changed=PARTYBUS_NO_RELR");
    if relr_ok() {
        // Pack relative relocations (DT_RELR): a position-independent
        // executable otherwise carries ~26,000 RELA entries (600 KiB) that the
        // dynamic loader reads at every start, so they stay resident; packed,
        // they take 8 KiB. Measured: -650 KiB RSS of every node process.
        // Needs glibc 2.36 where the binary runs (older ones refuse to load
        // it with "version `GLIBC_ABI_DT_RELR' not found"); set
        // PARTYBUS_NO_RELR=1 to build for an older system.
        println!("cargo:rustc-link-arg-bins=-Wl,-z,pack-relative-relocs");
    }
}

/// Native glibc builds on a host whose glibc loads DT_RELR (2.36+), unless
/// PARTYBUS_NO_RELR is set. Cross builds keep the default: the target's
/// glibc is unknown here.
fn relr_ok() -> bool {
    let var = |k: &str| std::env::var(k).unwrap_or_default();
    if std::env::var_os("PARTYBUS_NO_RELR").is_some()
        || var("CARGO_CFG_TARGET_OS") != "linux"
        || var("CARGO_CFG_TARGET_ENV") != "gnu"
        || var("TARGET") != var("HOST")
    {
        return false;
    }
    host_glibc().is_some_and(|v| v >= (2, 36))
}

/// The glibc this build script runs on (the one a native build links against).
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn host_glibc() -> Option<(u32, u32)> {
    extern "C" {
        fn gnu_get_libc_version() -> *const std::os::raw::c_char;
    }
    // SAFETY: glibc returns a pointer to a static NUL-terminated string.
    let v = unsafe { std::ffi::CStr::from_ptr(gnu_get_libc_version()) }.to_str().ok()?;
    let mut it = v.split('.').map(|p| p.parse::<u32>().ok());
    Some((it.next()??, it.next()??))
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn host_glibc() -> Option<(u32, u32)> {
    None
}
