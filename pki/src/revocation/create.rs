//! `partybus cert revoke`: adding a certificate to `DIR/HOOD.revoked`,
//! signed with `DIR/HOOD.key`.

use std::io::Write;
use std::path::{Path, PathBuf};

use super::{sha256, RevocationError, RevocationList};
use crate::cert;
use crate::hood::Hood;
use crate::key::{self, LoadedKey};
use crate::pemfile;

/// What to revoke.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RevokeTarget {
    /// A certificate file (PEM); it must have been issued by the hood.
    Cert(PathBuf),
    /// A certificate's fingerprint: 64 hex digits (colons allowed), as
    /// `partybus cert show` prints it.
    Fingerprint(String),
}

/// What [`revoke`] did.
#[derive(Clone, Debug)]
pub struct RevokeOutcome {
    /// The list file, `DIR/HOOD.revoked`.
    pub path: PathBuf,
    /// The list now in the file.
    pub list: RevocationList,
    /// The fingerprint revoked (lowercase hex).
    pub fingerprint: String,
    /// The certificate's name, if known.
    pub name: String,
    /// False when it was revoked already (the file is left as it was).
    pub added: bool,
}

/// Adds `target` to `DIR/HOOD.revoked` (created on first use), signed with
/// `DIR/HOOD.key`: the existing list is checked against `DIR/HOOD.crt`
/// first (a forged one is not extended), the sequence number goes up by
/// one, and the file is replaced atomically.
pub fn revoke(hood: &str, dir: &Path, target: RevokeTarget) -> Result<RevokeOutcome, RevocationError> {
    let cert_path = dir.join(format!("{hood}.crt"));
    let key_path = dir.join(format!("{hood}.key"));
    let list_path = dir.join(format!("{hood}.revoked"));
    let hood_cert = Hood::load(&cert_path)?;
    let key_origin = key_path.display().to_string();
    let key = LoadedKey::from_der(pemfile::key_from_pem(&pemfile::read_file(&key_path)?, &key_origin)?, &key_origin)?;
    if !key::same_public_key(&hood_cert.facts.spki, &key.spki) {
        return Err(crate::PkiError::KeyMismatch { cert: cert_path.display().to_string(), key: key_origin }.into());
    }

    let (fp, name) = match &target {
        RevokeTarget::Cert(path) => {
            let origin = path.display().to_string();
            let der = pemfile::cert_from_pem(&pemfile::read_file(path)?, &origin)?;
            let algs = rustls::crypto::ring::default_provider().signature_verification_algorithms;
            // Expired certificates may be revoked too: only the issuer matters.
            let facts = cert::check_issued_by(&der, &hood_cert, &algs).map_err(|p| {
                RevocationError::Target(format!(
                    "{origin}: not a certificate of hood \"{hood}\" ({}); revoke a peer certificate issued by {}",
                    p.describe(hood_cert.subject()),
                    cert_path.display()
                ))
            })?;
            if facts.basic_ca == Some(true) || der.as_ref() == hood_cert.der().as_ref() {
                return Err(RevocationError::Target(format!(
                    "{origin}: is the hood's own certificate; to retire a whole hood, create a new one with `partybus hood create`"
                )));
            }
            (sha256(&der), facts.cn.clone().unwrap_or_default())
        }
        RevokeTarget::Fingerprint(hex_text) => {
            let fp = parse_fingerprint(hex_text)?;
            if fp == sha256(hood_cert.der()) {
                return Err(RevocationError::Target(format!(
                    "{hex_text} is the fingerprint of the hood's own certificate; revoke peer certificates"
                )));
            }
            (fp, name_in_dir(dir, hood, &fp).unwrap_or_default())
        }
    };

    let (mut entries, sequence) = if list_path.exists() {
        let old = RevocationList::load(&list_path, &hood_cert)?;
        if old.contains(&fp) {
            return Ok(RevokeOutcome { path: list_path, fingerprint: hex::encode(fp), name, added: false, list: old });
        }
        (old.entries.clone(), old.sequence() + 1)
    } else {
        (Vec::new(), 1)
    };
    entries.push((fp, name.clone()));
    let list = RevocationList::sign(&hood_cert, &*key.signer, &key_origin, sequence, entries)?;
    write_atomically(&list_path, list.to_pem().as_bytes())?;
    Ok(RevokeOutcome { path: list_path, fingerprint: hex::encode(fp), name, added: true, list })
}

/// 64 hex digits, with or without colons, any case.
fn parse_fingerprint(text: &str) -> Result<[u8; 32], RevocationError> {
    let clean: String = text.chars().filter(|c| *c != ':').collect();
    let bytes = hex::decode(&clean).ok().filter(|b| b.len() == 32).ok_or_else(|| {
        RevocationError::Target(format!(
            "--fingerprint {text:?} is not a SHA-256 fingerprint: expected 64 hex digits, as `partybus cert show FILE` prints them"
        ))
    })?;
    Ok(bytes.try_into().expect("32 bytes"))
}

/// The name of the peer certificate `DIR/HOOD.*.crt` with this fingerprint, if there is one.
fn name_in_dir(dir: &Path, hood: &str, fp: &[u8; 32]) -> Option<String> {
    let prefix = format!("{hood}.");
    std::fs::read_dir(dir).ok()?.flatten().find_map(|e| {
        let file = e.file_name().into_string().ok()?;
        if !file.starts_with(&prefix) || !file.ends_with(".crt") {
            return None;
        }
        let der = pemfile::cert_from_pem(&std::fs::read(e.path()).ok()?, &file).ok()?;
        (sha256(&der) == *fp).then(|| crate::tls::peer_name(&der)).flatten()
    })
}

/// Writes `path` by way of a temporary file in the same folder and a rename,
/// so a node reading it never sees half a list.
fn write_atomically(path: &Path, contents: &[u8]) -> Result<(), RevocationError> {
    let dir = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let write = |source| crate::PkiError::Write { path: path.to_path_buf(), source };
    let mut tmp = tempfile::NamedTempFile::new_in(dir).map_err(write)?;
    tmp.write_all(contents).and_then(|()| tmp.as_file().sync_all()).map_err(write)?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        // Public information: the fingerprints of certificates no longer accepted.
        tmp.as_file().set_permissions(std::fs::Permissions::from_mode(0o644)).map_err(write)?;
    }
    tmp.persist(path).map_err(|e| write(e.error))?;
    Ok(())
}
