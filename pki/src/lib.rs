//! # partybus-pki: hoods, peers and the TLS checks between them
//!
//! partybus peers talk to each other over QUIC with **mutual TLS**: each
//! side shows a certificate and checks the other's. Which certificates are
//! accepted is decided by a small private PKI, in the words tubemail used:
//!
//! - A **hood** is a certificate authority (CA): a self-signed certificate
//!   `HOOD.crt` with CN = O = the hood's name, and its private key
//!   `HOOD.key`. Whoever holds `HOOD.key` decides who belongs to the hood,
//!   so keep it off the peers: only `HOOD.crt` is needed to run a peer.
//! - A **peer** is a certificate `HOOD.NAME.crt` with CN = NAME and O = HOOD,
//!   signed by the hood's key, plus its own private key `HOOD.NAME.key`.
//!   Two peers trust each other when both certificates were issued directly
//!   by the same hood and are valid now. There is no host name check: peers
//!   are found by IP address, and the certificate (not DNS) says who they are.
//! - The **fingerprint** of a hood is the lowercase hex SHA-256 of its
//!   certificate's DER bytes (the value
//!   `openssl x509 -in HOOD.crt -outform DER | sha256sum` prints). It names
//!   the hood unambiguously, exactly as in tubemail, so peers of one hood can
//!   recognise each other (e.g. in discovery) before any handshake.
//!
//! ## Files
//!
//! [`create_hood`] writes `HOOD.crt` and `HOOD.key`; [`create_peer`] loads
//! them and writes `HOOD.NAME.crt` and `HOOD.NAME.key`. Keys are written as
//! PKCS#8 PEM with mode 0600, and existing files are never overwritten.
//! [`Hood::load`] and [`Identity::load`] read them back (also PKCS#1 RSA and
//! SEC1 EC keys) and check everything that can be checked up front, with
//! errors ([`PkiError`]) that name the file, the problem and the fix.
//!
//! ## Key choice
//!
//! New hoods and peers get **ECDSA P-256** keys by default: supported by
//! rustls/ring, openssl, browsers and hardware tokens alike, small (a
//! certificate is about 500 bytes instead of 1.4 KB for RSA 4096, which
//! matters in every QUIC handshake), and fast to create and to sign with
//! (RSA 4096 key generation takes seconds, its signatures are slow).
//! **Ed25519** is available with [`create_hood_with`] / [`create_peer_with`]
//! and [`KeyKind::Ed25519`]; it is just as good cryptographically but less
//! widely supported by other tools. RSA keys are accepted when loading, so
//! hoods and peers made by tubemail's openssl scripts (RSA 4096) keep
//! working, and mixed hoods work: an RSA hood can sign ECDSA peers, and RSA
//! and ECDSA peers of one hood talk to each other.
//!
//! ## Old openssl certificates
//!
//! `openssl x509 -req` without `-extfile` (tubemail's `createPeer.sh`)
//! makes **X.509 v1** certificates, which webpki (rustls' stock verifier)
//! refuses. This crate therefore does its own, deliberately small chain
//! check: the issuer name must be the hood's subject, the hood's key must
//! have made the signature (checked with the algorithms of rustls' ring
//! provider), and the certificate must be valid now. The TLS 1.3 handshake
//! signature is checked against the certificate's public key directly. v1
//! and v3 certificates are treated alike.
//!
//! ## TLS
//!
//! [`server_config`] and [`client_config`] build TLS 1.3-only rustls
//! configurations on the ring provider (set explicitly, never the process
//! default) whose verifiers accept exactly the certificates issued by the
//! hood, and refuse others with a rustls error saying why
//! (`UnknownIssuer`, `BadSignature`, `Expired`, `NotValidYet`, ...).
//! [`peer_name`] reads the name out of a peer's certificate after the
//! handshake. [`CertInfo`] describes a certificate file for people.
//! [`TempHood`] is a throw-away hood in a temporary folder, for benchmarks,
//! demos and tests.
//!
//! ## Membership proofs
//!
//! [`relay_proof`] signs a message with a peer's key and attaches its
//! certificate and its hood's; [`verify_relay_proof`] checks such a proof
//! against a list of allowed hood fingerprints, with the same certificate
//! check as a handshake. Relays use them to serve only some hoods without
//! holding any hood certificate.
//!
//! ## Revocation
//!
//! [`revocation::revoke`] adds a peer certificate to `HOOD.revoked`, a
//! [`RevocationList`] signed with the hood's key; a node loads it with
//! [`RevocationList::load`] (which checks the signature), puts it in force
//! in a [`RevokedSet`], and [`server_config_with`] / [`client_config_with`]
//! refuse revoked certificates at every handshake (`CertificateError::Revoked`).
//!
//! ```no_run
//! use std::path::Path;
//! use partybus_pki::{create_hood, create_peer, Hood, Identity, DEFAULT_HOOD_DAYS, DEFAULT_PEER_DAYS};
//!
//! let dir = Path::new("/etc/partybus");
//! create_hood("lab", dir, DEFAULT_HOOD_DAYS)?;
//! let files = create_peer("lab", "alice", dir, DEFAULT_PEER_DAYS)?;
//!
//! let hood = Hood::load(&dir.join("lab.crt"))?;
//! let me = Identity::load(&files.cert, &files.key, &hood)?;
//! let server = partybus_pki::server_config(&me, &hood)?;
//! let client = partybus_pki::client_config(&me, &hood)?;
//! # let _ = (server, client);
//! # Ok::<(), partybus_pki::PkiError>(())
//! ```

#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod cert;
mod create;
mod der;
mod error;
mod hood;
mod identity;
mod info;
mod key;
mod pemfile;
mod permissions;
mod proof;
pub mod revocation;
mod signature;
mod temp;
mod tls;
mod verified;

pub use create::{create_hood, create_hood_with, create_peer, create_peer_with, create_peer_with_permissions, CreatedFiles};
pub use error::PkiError;
pub use hood::Hood;
pub use identity::{Identity, KeyFileCheck};
pub use info::CertInfo;
pub use key::KeyKind;
pub use permissions::{Permissions, PERMISSIONS_OID};
pub use proof::{relay_proof, verify_relay_proof, ProofError, ProvenMember};
pub use revocation::{RevocationError, RevocationList, RevokedSet};
pub use temp::TempHood;
pub use tls::{client_config, client_config_with, peer_name, peer_permissions, server_config, server_config_with};

/// Default validity of a new hood: 10 years (as tubemail's `createHood.sh`).
pub const DEFAULT_HOOD_DAYS: u32 = 3650;

/// Default validity of a new peer: 3 years (as tubemail's `createPeer.sh`).
pub const DEFAULT_PEER_DAYS: u32 = 1095;

/// Lowercase hex SHA-256.
pub(crate) fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(ring::digest::digest(&ring::digest::SHA256, bytes))
}
