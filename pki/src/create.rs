//! Creating hoods and peers: the files `HOOD.crt`/`HOOD.key` and
//! `HOOD.NAME.crt`/`HOOD.NAME.key`.

use std::fs::OpenOptions;
use std::io::Write;
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose,
    SanType, SerialNumber,
};
use ring::rand::SecureRandom;

use crate::cert::{self, Purpose};
use crate::error::PkiError;
use crate::hood::Hood;
use crate::key::{self, KeyKind, LoadedKey, RcgenSigner};
use crate::pemfile;
use crate::permissions::Permissions;

/// The two files [`create_hood`] or [`create_peer`] wrote.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CreatedFiles {
    /// The certificate (PEM), e.g. `lab.crt` or `lab.alice.crt`.
    pub cert: PathBuf,
    /// The private key (PKCS#8 PEM, mode 0600), e.g. `lab.key` or `lab.alice.key`.
    pub key: PathBuf,
}

/// Creates a new hood `NAME` in `dir` with an ECDSA P-256 key: writes
/// `NAME.crt` (a self-signed CA certificate with CN = O = NAME,
/// basicConstraints CA:TRUE, keyUsage keyCertSign + cRLSign, valid for `days`)
/// and `NAME.key` (mode 0600). Refuses to overwrite either file.
pub fn create_hood(name: &str, dir: &Path, days: u32) -> Result<CreatedFiles, PkiError> {
    create_hood_with(name, dir, days, KeyKind::EcdsaP256)
}

/// [`create_hood`] with a chosen key kind ([`KeyKind::EcdsaP256`] or [`KeyKind::Ed25519`]).
pub fn create_hood_with(name: &str, dir: &Path, days: u32, kind: KeyKind) -> Result<CreatedFiles, PkiError> {
    check_name(name)?;
    let files = CreatedFiles { cert: dir.join(format!("{name}.crt")), key: dir.join(format!("{name}.key")) };
    refuse_existing(&files)?;
    let what = || format!("hood \"{name}\"");
    let key = generate_key(kind, &what())?;

    let mut params = CertificateParams::default();
    params.distinguished_name = dn(name, name);
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    set_validity(&mut params, days, &what())?;
    params.serial_number = Some(random_serial(&what())?);
    let cert = params.self_signed(&key).map_err(|e| PkiError::Generate { what: what(), reason: e.to_string() })?;
    write_pair(&files, cert.pem().as_bytes(), key.serialize_pem().as_bytes())?;
    Ok(files)
}

/// Creates peer `NAME` of hood `HOOD` with an ECDSA P-256 key: loads
/// `HOOD.crt` and `HOOD.key` from `dir` (any hood works, including
/// openssl-made RSA ones) and writes `HOOD.NAME.crt` (CN = NAME, O = HOOD,
/// signed by the hood, extendedKeyUsage serverAuth + clientAuth, keyUsage
/// digitalSignature, a subjectAltName dNSName NAME when NAME is a valid DNS
/// name, valid for `days`) and `HOOD.NAME.key` (mode 0600). Refuses to
/// overwrite either file.
pub fn create_peer(hood: &str, name: &str, dir: &Path, days: u32) -> Result<CreatedFiles, PkiError> {
    create_peer_with(hood, name, dir, days, KeyKind::EcdsaP256)
}

/// [`create_peer`] with a chosen key kind ([`KeyKind::EcdsaP256`] or [`KeyKind::Ed25519`]).
pub fn create_peer_with(hood: &str, name: &str, dir: &Path, days: u32, kind: KeyKind) -> Result<CreatedFiles, PkiError> {
    create_peer_with_permissions(hood, name, dir, days, kind, &Permissions::default())
}

/// [`create_peer_with`], writing `permissions` into the certificate
/// ([`crate::PERMISSIONS_OID`]; none when they allow everything).
pub fn create_peer_with_permissions(
    hood: &str,
    name: &str,
    dir: &Path,
    days: u32,
    kind: KeyKind,
    permissions: &Permissions,
) -> Result<CreatedFiles, PkiError> {
    check_name(hood)?;
    check_name(name)?;
    let files = CreatedFiles { cert: dir.join(format!("{hood}.{name}.crt")), key: dir.join(format!("{hood}.{name}.key")) };
    refuse_existing(&files)?;
    let what = || format!("peer \"{name}\" of hood \"{hood}\"");

    // The hood: its certificate and the key that signs new peers.
    let hood_cert_path = dir.join(format!("{hood}.crt"));
    let hood_key_path = dir.join(format!("{hood}.key"));
    let hood_cert = Hood::load(&hood_cert_path)?;
    let hood_key_origin = hood_key_path.display().to_string();
    let hood_key = LoadedKey::from_der(pemfile::key_from_pem(&pemfile::read_file(&hood_key_path)?, &hood_key_origin)?, &hood_key_origin)?;
    if !key::same_public_key(&hood_cert.facts.spki, &hood_key.spki) {
        return Err(PkiError::KeyMismatch { cert: hood_cert_path.display().to_string(), key: hood_key_origin });
    }
    let issuer = Issuer::from_ca_cert_der(hood_cert.der(), RcgenSigner::new(&hood_key, &hood_key_origin)?)
        .map_err(|e| PkiError::Generate { what: what(), reason: format!("cannot use {} as issuer: {e}", hood_cert_path.display()) })?;

    let key = generate_key(kind, &what())?;
    let mut params = CertificateParams::default();
    params.distinguished_name = dn(name, hood);
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth];
    params.use_authority_key_identifier_extension = true;
    if rustls_pki_types::DnsName::try_from(name).is_ok() {
        if let Ok(dns) = name.try_into() {
            params.subject_alt_names = vec![SanType::DnsName(dns)];
        }
    }
    set_validity(&mut params, days, &what())?;
    params.serial_number = Some(random_serial(&what())?);
    permissions.check().map_err(|reason| PkiError::Generate { what: what(), reason })?;
    if !permissions.unrestricted() {
        params.custom_extensions.push(rcgen::CustomExtension::from_oid_content(crate::PERMISSIONS_OID, permissions.to_der()));
    }
    let cert = params.signed_by(&key, &issuer).map_err(|e| PkiError::Generate { what: what(), reason: e.to_string() })?;

    // Safety net: the new certificate must pass the same check peers will do.
    let algs = rustls::crypto::ring::default_provider().signature_verification_algorithms;
    cert::check_peer(cert.der(), &hood_cert, cert::now_secs(), Purpose::Both, &algs).map_err(|p| PkiError::Generate {
        what: what(),
        reason: format!("the new certificate does not verify against the hood: {}", p.describe(hood_cert.subject())),
    })?;
    write_pair(&files, cert.pem().as_bytes(), key.serialize_pem().as_bytes())?;
    Ok(files)
}

/// Names become file names and certificate names: keep them simple.
fn check_name(name: &str) -> Result<(), PkiError> {
    let bad = |reason| Err(PkiError::InvalidName { name: name.to_string(), reason });
    if name.is_empty() {
        return bad("it is empty");
    }
    if name.len() > 64 {
        return bad("it is longer than 64 bytes (the limit for a certificate common name)");
    }
    if name.starts_with('.') {
        return bad("it starts with a dot");
    }
    if name.chars().any(|c| c == '/' || c == '\\' || c.is_control()) {
        return bad("it contains a slash, backslash or control character; names become file names");
    }
    Ok(())
}

fn dn(cn: &str, o: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, cn);
    dn.push(DnType::OrganizationName, o);
    dn
}

fn generate_key(kind: KeyKind, what: &str) -> Result<KeyPair, PkiError> {
    let alg = match kind {
        KeyKind::EcdsaP256 => &rcgen::PKCS_ECDSA_P256_SHA256,
        KeyKind::Ed25519 => &rcgen::PKCS_ED25519,
        other => {
            return Err(PkiError::Generate {
                what: what.to_string(),
                reason: format!("new {other} keys are not made here; use KeyKind::EcdsaP256 (default) or KeyKind::Ed25519"),
            })
        }
    };
    KeyPair::generate_for(alg).map_err(|e| PkiError::Generate { what: what.to_string(), reason: format!("key generation failed: {e}") })
}

/// Valid from one hour ago (tolerates clocks that are a little behind) for `days` days.
fn set_validity(params: &mut CertificateParams, days: u32, what: &str) -> Result<(), PkiError> {
    if days == 0 {
        return Err(PkiError::Generate { what: what.to_string(), reason: "validity must be at least 1 day".into() });
    }
    let now = time::OffsetDateTime::now_utc();
    params.not_before = now - time::Duration::hours(1);
    params.not_after = now + time::Duration::days(i64::from(days));
    Ok(())
}

/// A random positive 128-bit serial number.
fn random_serial(what: &str) -> Result<SerialNumber, PkiError> {
    let mut bytes = [0u8; 16];
    ring::rand::SystemRandom::new()
        .fill(&mut bytes)
        .map_err(|_| PkiError::Generate { what: what.to_string(), reason: "the system random number generator failed".into() })?;
    bytes[0] = (bytes[0] & 0x7f) | 0x40;
    Ok(SerialNumber::from_slice(&bytes))
}

fn refuse_existing(files: &CreatedFiles) -> Result<(), PkiError> {
    for path in [&files.cert, &files.key] {
        if path.exists() || path.symlink_metadata().is_ok() {
            return Err(PkiError::AlreadyExists { path: path.clone() });
        }
    }
    Ok(())
}

/// Writes the key (0600) and then the certificate, never overwriting; if
/// the second write fails the first file is removed again.
fn write_pair(files: &CreatedFiles, cert_pem: &[u8], key_pem: &[u8]) -> Result<(), PkiError> {
    write_new(&files.key, key_pem, 0o600)?;
    if let Err(e) = write_new(&files.cert, cert_pem, 0o644) {
        let _ = std::fs::remove_file(&files.key);
        return Err(e);
    }
    Ok(())
}

fn write_new(path: &Path, contents: &[u8], mode: u32) -> Result<(), PkiError> {
    let mut options = OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(mode);
    }
    #[cfg(not(unix))]
    let _ = mode;
    let mut file = options.open(path).map_err(|source| {
        if source.kind() == std::io::ErrorKind::AlreadyExists {
            PkiError::AlreadyExists { path: path.to_path_buf() }
        } else {
            PkiError::Write { path: path.to_path_buf(), source }
        }
    })?;
    let written = file.write_all(contents).and_then(|()| file.sync_all());
    if let Err(source) = written {
        drop(file);
        let _ = std::fs::remove_file(path);
        return Err(PkiError::Write { path: path.to_path_buf(), source });
    }
    // The umask may have removed bits from `mode`, but never added any; make
    // sure the key is exactly 0600 even if the umask is unusual.
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let _ = std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert!(check_name("lab").is_ok());
        assert!(check_name("node-1.example.org").is_ok());
        assert!(check_name("with space").is_ok());
        for bad in ["", ".hidden", "a/b", "a\\b", "a\nb", &"x".repeat(65)] {
            assert!(matches!(check_name(bad), Err(PkiError::InvalidName { .. })), "{bad:?}");
        }
    }

    #[test]
    fn serials_are_positive_and_distinct() {
        let a = random_serial("t").unwrap().to_bytes();
        let b = random_serial("t").unwrap().to_bytes();
        assert_ne!(a, b);
        assert!(a[0] & 0x80 == 0 && a[0] != 0);
    }
}
