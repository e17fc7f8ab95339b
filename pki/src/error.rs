//! The one error type of this crate.
//!
//! Every variant names the file (or, for PEM given in memory, the `origin`
//! string the caller passed) and says what is wrong and how to fix it, so the
//! node can print `{err}` as is.

use std::io;
use std::path::PathBuf;

/// Everything that can go wrong while creating, loading or checking hood
/// and peer files.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PkiError {
    /// The file does not exist.
    #[error("{path}: file not found; check the path (a new hood is made with `partybus hood create HOOD`, a peer of it with `partybus peer create HOOD NAME`)")]
    NotFound {
        /// The missing file.
        path: PathBuf,
    },

    /// The private key file grants permissions to every user (like ssh,
    /// the node refuses it unless told otherwise).
    #[error(
        "{path}: private key can be read or changed by any user of this machine (mode {mode:04o}); \
         make it private with `chmod 600 {path}` (or `chmod 640` and a dedicated group), \
         or accept it explicitly with --allow-readable-key (config `allow_readable_key = true`)"
    )]
    KeyOpenToOthers {
        /// The key file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },

    /// The file exists but could not be read (permissions, a directory, ...).
    #[error("{path}: cannot read: {source}; check that it is a regular file readable by this user")]
    Unreadable {
        /// The file.
        path: PathBuf,
        /// What the OS said.
        #[source]
        source: io::Error,
    },

    /// The input holds no PEM block at all (binary DER, a text file, ...).
    #[error("{origin}: not a PEM file (expected a `-----BEGIN {expected}-----` block); if it is binary DER, convert it with `openssl {convert} -inform DER -in FILE -out FILE.pem`")]
    NotPem {
        /// File name or caller-given origin.
        origin: String,
        /// The PEM label that was expected, e.g. `CERTIFICATE`.
        expected: &'static str,
        /// The openssl sub-command that converts such a file (`x509` or `pkey`).
        convert: &'static str,
    },

    /// The input is PEM, but of the wrong kind (a key where a certificate
    /// was expected, or the other way round).
    #[error("{origin}: holds a `{found}` PEM block, but a {expected} was expected; did you swap the certificate and key paths?")]
    WrongPemLabel {
        /// File name or caller-given origin.
        origin: String,
        /// The label(s) found in the file.
        found: String,
        /// What was expected, in words.
        expected: &'static str,
    },

    /// The certificate could not be parsed as X.509.
    #[error("{origin}: not a valid X.509 certificate: {reason}; re-create it or check that the file is not truncated")]
    InvalidCertificate {
        /// File name or caller-given origin.
        origin: String,
        /// What the parser said.
        reason: String,
    },

    /// The private key could not be parsed.
    #[error("{origin}: not a valid private key: {reason}; supported are PKCS#8 (`BEGIN PRIVATE KEY`), PKCS#1 RSA (`BEGIN RSA PRIVATE KEY`) and SEC1 EC (`BEGIN EC PRIVATE KEY`) keys")]
    InvalidKey {
        /// File name or caller-given origin.
        origin: String,
        /// What the parser said.
        reason: String,
    },

    /// The private key is encrypted with a pass phrase.
    #[error("{origin}: encrypted private keys are not supported yet; decrypt it with `openssl pkey -in {origin} -out {origin}.plain` and use the .plain file (keep it mode 0600)")]
    EncryptedKey {
        /// File name or caller-given origin.
        origin: String,
    },

    /// The key or signature algorithm is not one this crate can use.
    #[error("{origin}: {reason}")]
    Unsupported {
        /// File name or caller-given origin.
        origin: String,
        /// What is not supported and what to use instead.
        reason: String,
    },

    /// The private key does not belong to the certificate.
    #[error("{key}: this private key does not belong to the certificate {cert}; pass the key file that was created together with that certificate")]
    KeyMismatch {
        /// The certificate.
        cert: String,
        /// The key.
        key: String,
    },

    /// The certificate was not issued by the hood.
    #[error(
        "{origin}: not issued by hood \"{hood}\": {reason}; use a certificate created for this hood, or pass the right hood certificate"
    )]
    NotSignedByHood {
        /// File name or caller-given origin.
        origin: String,
        /// The hood's name (CN).
        hood: String,
        /// Issuer mismatch or bad signature, in words.
        reason: String,
    },

    /// The certificate's validity period has ended.
    #[error("{origin}: certificate expired on {not_after}; create a new one")]
    Expired {
        /// File name or caller-given origin.
        origin: String,
        /// End of validity, RFC 3339.
        not_after: String,
    },

    /// The certificate's validity period has not started yet.
    #[error("{origin}: certificate is not valid before {not_before}; check this machine's clock, or wait")]
    NotYetValid {
        /// File name or caller-given origin.
        origin: String,
        /// Start of validity, RFC 3339.
        not_before: String,
    },

    /// A certificate given as the hood is not a CA certificate.
    #[error("{origin}: not a hood (CA) certificate: {reason}; pass the hood's certificate (HOOD.crt), not a peer's (HOOD.NAME.crt)")]
    NotACa {
        /// File name or caller-given origin.
        origin: String,
        /// Why it is not accepted as a CA.
        reason: String,
    },

    /// A CA certificate was given where a peer certificate was expected.
    #[error("{origin}: this is a CA (hood) certificate, not a peer certificate; pass the peer's certificate (HOOD.NAME.crt) and make one with `partybus peer create HOOD NAME` if needed")]
    IsCa {
        /// File name or caller-given origin.
        origin: String,
    },

    /// The identity was checked against another hood than the one given now.
    #[error("identity \"{identity}\" was loaded for hood {identity_hood}, but hood {hood} was given; load the identity with the same hood certificate")]
    HoodMismatch {
        /// The identity's name.
        identity: String,
        /// Fingerprint of the hood the identity was checked against.
        identity_hood: String,
        /// Fingerprint of the hood given now.
        hood: String,
    },

    /// A file to be created exists already.
    #[error("{path}: already exists, refusing to overwrite it; delete or move it first, or choose another name")]
    AlreadyExists {
        /// The existing file.
        path: PathBuf,
    },

    /// Writing a new file failed.
    #[error("{path}: cannot write: {source}; check that the directory exists and is writable")]
    Write {
        /// The file.
        path: PathBuf,
        /// What the OS said.
        #[source]
        source: io::Error,
    },

    /// A hood or peer name that cannot be used.
    #[error("invalid name {name:?}: {reason}")]
    InvalidName {
        /// The name as given.
        name: String,
        /// What is wrong with it.
        reason: &'static str,
    },

    /// Key generation or certificate signing failed.
    #[error("cannot create {what}: {reason}")]
    Generate {
        /// What was being made.
        what: String,
        /// What went wrong.
        reason: String,
    },

    /// rustls refused the configuration.
    #[error("cannot build the TLS configuration for \"{identity}\": {reason}")]
    Tls {
        /// The identity's name.
        identity: String,
        /// What rustls said.
        reason: String,
    },
}
