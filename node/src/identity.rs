//! The node's own certificate and key, swappable while it runs (certificate
//! rotation by reload).
//!
//! Every rustls configuration of the node (the endpoint's server and client
//! configurations and their on-host variants) resolves our certificate
//! through one [`SwapIdentity`]: a rotation swaps what it holds, so the next
//! handshake in either direction presents the new certificate, while
//! connections already up keep theirs (TLS authenticated them once). The
//! lock is read once per handshake, never on the data path.
//!
//! Chosen over swapping whole configurations (`Endpoint::set_server_config`
//! and a client configuration per dial) because the node holds four of
//! them (on-host variants with other transport settings): one resolver
//! shared by all four cannot leave one of them behind.

use std::sync::{Arc, RwLock};

use partybus_pki::{CertInfo, Identity, PkiError};
use rustls::client::ResolvesClientCert;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::SignatureScheme;

/// Why a new certificate was not taken.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RotateError {
    #[error("the new certificate belongs to hood {got}, this node's hood is {want}; a node cannot change hoods by reload (restart it)")]
    OtherHood { got: String, want: String },
    #[error("the new certificate is for {got:?}, this node is {want:?}; a rotation keeps the name (restart the node to rename it)")]
    OtherName { got: String, want: String },
    #[error("cannot use the new key for TLS: {0}")]
    Key(String),
    #[error(transparent)]
    Pki(#[from] PkiError),
}

/// One certificate and key as rustls takes them, with the identity they came from.
struct Current {
    identity: Arc<Identity>,
    key: Arc<CertifiedKey>,
}

/// The node's identity, swappable. See the module documentation.
pub(crate) struct SwapIdentity {
    current: RwLock<Current>,
}

impl std::fmt::Debug for SwapIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SwapIdentity").field("identity", &*self.identity()).finish()
    }
}

fn certified(identity: &Identity) -> Result<Arc<CertifiedKey>, RotateError> {
    let key = rustls::crypto::ring::sign::any_supported_type(&identity.key_der()).map_err(|e| RotateError::Key(e.to_string()))?;
    Ok(Arc::new(CertifiedKey::new(vec![identity.cert_der().clone()], key)))
}

impl SwapIdentity {
    pub(crate) fn new(identity: Identity) -> Result<SwapIdentity, RotateError> {
        let key = certified(&identity)?;
        Ok(SwapIdentity { current: RwLock::new(Current { identity: Arc::new(identity), key }) })
    }

    fn key(&self) -> Arc<CertifiedKey> {
        self.current.read().unwrap_or_else(|p| p.into_inner()).key.clone()
    }

    /// The identity in use now.
    pub(crate) fn identity(&self) -> Arc<Identity> {
        self.current.read().unwrap_or_else(|p| p.into_inner()).identity.clone()
    }

    /// Takes `new` for every handshake from now on. `new` was checked by
    /// [`Identity::load`] (key matches, issued by the hood it was loaded
    /// against, valid now); here: the same hood and the same name.
    pub(crate) fn rotate(&self, new: Identity) -> Result<(), RotateError> {
        let old = self.identity();
        if new.hood_fingerprint() != old.hood_fingerprint() {
            return Err(RotateError::OtherHood { got: new.hood_fingerprint().to_owned(), want: old.hood_fingerprint().to_owned() });
        }
        if new.name() != old.name() {
            return Err(RotateError::OtherName { got: new.name().to_owned(), want: old.name().to_owned() });
        }
        let key = certified(&new)?;
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = Current { identity: Arc::new(new), key };
        Ok(())
    }

    /// What `cert show` says about the certificate in use.
    pub(crate) fn cert_info(&self) -> Option<CertInfo> {
        CertInfo::from_der(self.identity().cert_der(), "this node's certificate").ok()
    }
}

impl ResolvesServerCert for SwapIdentity {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.key())
    }
}

impl ResolvesClientCert for SwapIdentity {
    fn resolve(&self, _root_hint_subjects: &[&[u8]], _sigschemes: &[SignatureScheme]) -> Option<Arc<CertifiedKey>> {
        Some(self.key())
    }
    fn has_certs(&self) -> bool {
        true
    }
}
