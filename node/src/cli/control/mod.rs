//! The local control socket of `partybus node` (a Unix socket, mode 0600)
//! and where it is by default. `partybus status` is its client.

pub mod protocol;
pub mod server;

use std::path::{Path, PathBuf};

/// Where the control socket of a node started with `--config FILE` is,
/// when neither `--control` nor the file's `control` key say:
/// `DIR/STEM-HASH.sock`, STEM the config file's name without extension and
/// HASH 8 hex digits of the SHA-256 of its absolute path (two config files
/// of the same name in different folders get different sockets). DIR is
/// the first that applies of:
/// - `$RUNTIME_DIRECTORY` (systemd's `RuntimeDirectory=`, /run/partybus in the unit),
/// - `/run/partybus` for root,
/// - `$XDG_RUNTIME_DIR/partybus` (a login session),
/// - `/tmp/partybus-UID`.
///
/// `partybus status --config FILE`, run as the same user (or root, for the
/// systemd unit), computes the same path. A node started without
/// `--config` and `--control` has no control socket.
pub fn default_path(config: &Path) -> PathBuf {
    let abs = std::path::absolute(config).unwrap_or_else(|_| config.to_path_buf());
    let abs = std::fs::canonicalize(&abs).unwrap_or(abs);
    let stem = abs.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_else(|| "partybus".to_owned());
    let digest = ring::digest::digest(&ring::digest::SHA256, abs.as_os_str().as_encoded_bytes());
    let hash = hex::encode(&digest.as_ref()[..4]);
    runtime_dir().join(format!("{stem}-{hash}.sock"))
}

fn runtime_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("RUNTIME_DIRECTORY").and_then(|v| std::env::split_paths(&v).next()) {
        return d;
    }
    // SAFETY: geteuid cannot fail.
    let uid = unsafe { libc::geteuid() };
    if uid == 0 {
        return PathBuf::from("/run/partybus");
    }
    if let Some(d) = std::env::var_os("XDG_RUNTIME_DIR").filter(|d| !d.is_empty()) {
        return PathBuf::from(d).join("partybus");
    }
    std::env::temp_dir().join(format!("partybus-{uid}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_path_depends_on_the_config_files_path_only() {
        let d = tempfile::tempdir().unwrap();
        let (a, b) = (d.path().join("x/node.toml"), d.path().join("y/node.toml"));
        assert_eq!(default_path(&a), default_path(&a));
        assert_ne!(default_path(&a), default_path(&b), "same name, other folder");
        let name = default_path(&a).file_name().unwrap().to_string_lossy().into_owned();
        assert!(name.starts_with("node-") && name.ends_with(".sock") && name.len() == "node-12345678.sock".len(), "{name}");
        // A relative path names the same file as its absolute form.
        let cwd = std::env::current_dir().unwrap();
        assert_eq!(default_path(Path::new("some.toml")), default_path(&cwd.join("some.toml")));
    }
}
