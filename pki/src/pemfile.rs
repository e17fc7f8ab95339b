//! Reading files and picking the right PEM block out of them.

use std::io;
use std::path::Path;

use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs1KeyDer, PrivatePkcs8KeyDer, PrivateSec1KeyDer};

use crate::error::PkiError;

/// Reads a whole file, turning I/O errors into [`PkiError`]s that name it.
pub(crate) fn read_file(path: &Path) -> Result<Vec<u8>, PkiError> {
    std::fs::read(path).map_err(|source| match source.kind() {
        io::ErrorKind::NotFound => PkiError::NotFound { path: path.to_path_buf() },
        _ => PkiError::Unreadable { path: path.to_path_buf(), source },
    })
}

/// Refuses a key file that grants any permission to every user of the
/// machine (ssh's rule, but group permissions pass: a key owned by root and
/// readable by a service's group is the usual way to hand it to a daemon).
pub(crate) fn check_private(path: &Path) -> Result<(), PkiError> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let meta = std::fs::metadata(path).map_err(|source| match source.kind() {
            io::ErrorKind::NotFound => PkiError::NotFound { path: path.to_path_buf() },
            _ => PkiError::Unreadable { path: path.to_path_buf(), source },
        })?;
        let mode = meta.permissions().mode() & 0o7777;
        if mode & 0o007 != 0 {
            return Err(PkiError::KeyOpenToOthers { path: path.to_path_buf(), mode });
        }
    }
    #[cfg(not(unix))]
    let _ = path;
    Ok(())
}

/// All PEM blocks in `input`; `NotPem` if there are none.
fn blocks(input: &[u8], origin: &str, expected: &'static str, convert: &'static str) -> Result<Vec<pem::Pem>, PkiError> {
    let not_pem = || PkiError::NotPem { origin: origin.to_string(), expected, convert };
    match pem::parse_many(input) {
        Ok(blocks) if !blocks.is_empty() => Ok(blocks),
        Ok(_) => Err(not_pem()),
        Err(e) => {
            if contains(input, b"-----BEGIN ") {
                // It looks like PEM but is broken (bad base64, missing END line, ...).
                Err(PkiError::InvalidCertificate { origin: origin.to_string(), reason: format!("broken PEM: {e}") })
            } else {
                Err(not_pem())
            }
        }
    }
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

fn labels(blocks: &[pem::Pem]) -> String {
    let mut labels: Vec<&str> = blocks.iter().map(|b| b.tag()).collect();
    labels.dedup();
    labels.join("`, `")
}

/// The first `CERTIFICATE` block of `input` (further blocks, e.g. a chain, are ignored).
pub(crate) fn cert_from_pem(input: &[u8], origin: &str) -> Result<CertificateDer<'static>, PkiError> {
    let blocks = blocks(input, origin, "CERTIFICATE", "x509")?;
    blocks
        .iter()
        .find(|b| b.tag() == "CERTIFICATE" || b.tag() == "X509 CERTIFICATE")
        .map(|b| CertificateDer::from(b.contents().to_vec()))
        .ok_or_else(|| PkiError::WrongPemLabel {
            origin: origin.to_string(),
            found: labels(&blocks),
            expected: "certificate (`BEGIN CERTIFICATE`)",
        })
}

/// The first private key block of `input`: PKCS#8, PKCS#1 (RSA) or SEC1 (EC).
pub(crate) fn key_from_pem(input: &[u8], origin: &str) -> Result<PrivateKeyDer<'static>, PkiError> {
    let blocks = blocks(input, origin, "PRIVATE KEY", "pkey")?;
    for block in &blocks {
        let encrypted_header = block.headers().get("Proc-Type").is_some_and(|v| v.to_ascii_uppercase().contains("ENCRYPTED"));
        let der = block.contents().to_vec();
        let key = match block.tag() {
            "ENCRYPTED PRIVATE KEY" => None,
            _ if encrypted_header => None,
            "PRIVATE KEY" => Some(PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(der))),
            "RSA PRIVATE KEY" => Some(PrivateKeyDer::Pkcs1(PrivatePkcs1KeyDer::from(der))),
            "EC PRIVATE KEY" => Some(PrivateKeyDer::Sec1(PrivateSec1KeyDer::from(der))),
            // `openssl ecparam -genkey` writes an EC PARAMETERS block first; skip it.
            _ => continue,
        };
        return key.ok_or_else(|| PkiError::EncryptedKey { origin: origin.to_string() });
    }
    Err(PkiError::WrongPemLabel {
        origin: origin.to_string(),
        found: labels(&blocks),
        expected: "private key (`BEGIN PRIVATE KEY`, `BEGIN RSA PRIVATE KEY` or `BEGIN EC PRIVATE KEY`)",
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn binary_and_text_are_not_pem() {
        assert!(matches!(cert_from_pem(&[0x30, 0x82, 0x01, 0x00, 0xff, 0xfe], "x.crt"), Err(PkiError::NotPem { .. })));
        assert!(matches!(key_from_pem(b"hello\nworld\n", "x.key"), Err(PkiError::NotPem { .. })));
    }

    #[test]
    fn encrypted_keys_are_named() {
        let pkcs8 = "-----BEGIN ENCRYPTED PRIVATE KEY-----\nAAAA\n-----END ENCRYPTED PRIVATE KEY-----\n";
        assert!(matches!(key_from_pem(pkcs8.as_bytes(), "k"), Err(PkiError::EncryptedKey { .. })));
        let legacy = "-----BEGIN RSA PRIVATE KEY-----\nProc-Type: 4,ENCRYPTED\nDEK-Info: AES-128-CBC,00112233445566778899AABBCCDDEEFF\n\nAAAA\n-----END RSA PRIVATE KEY-----\n";
        let err = key_from_pem(legacy.as_bytes(), "k").unwrap_err();
        assert!(matches!(err, PkiError::EncryptedKey { .. }), "{err}");
        assert!(err.to_string().contains("openssl pkey -in k -out k.plain"));
    }

    #[test]
    fn wrong_label_names_what_was_found() {
        let key = "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n";
        let err = cert_from_pem(key.as_bytes(), "peer.crt").unwrap_err();
        assert!(matches!(err, PkiError::WrongPemLabel { .. }));
        assert!(err.to_string().contains("`PRIVATE KEY`"), "{err}");
        let cert = "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n";
        assert!(matches!(key_from_pem(cert.as_bytes(), "peer.key"), Err(PkiError::WrongPemLabel { .. })));
    }
}
