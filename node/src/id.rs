//! Node ids: new at every start, bound to the certificate's name.

use std::fmt;

/// A node's id: 128 bits, new at every start (a restarted node is a new node
/// to the mesh), computed by [`NodeId::bound`] from the name in the node's
/// certificate and a random nonce the hello carries, so that a peer checks
/// every id it is told against the certificate it saw in TLS. Ordered,
/// because the duplicate-connection rule compares ids.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
pub struct NodeId(pub [u8; 16]);

/// The random part of a [`NodeId`], drawn at every start and sent in the hello.
pub type IdNonce = [u8; 16];

impl NodeId {
    /// A fresh random id (tests and simulations; a node's own id is
    /// [`NodeId::bound`]).
    pub fn random() -> NodeId {
        NodeId(rand::random())
    }

    /// The id of the node whose certificate names it `name` and whose hello
    /// carries `nonce`: the first 16 bytes of
    /// SHA-256("partybus node id 1" || len(name) as u16 BE || name || nonce).
    ///
    /// Bound to the name, the identity the hood gave (not to the key): a
    /// certificate renewed or re-keyed under the same name keeps the
    /// node's id, and another member's certificate (another name) can
    /// never claim it. Processes that share one certificate have different
    /// nonces, so they stay distinct nodes.
    pub fn bound(name: &str, nonce: &IdNonce) -> NodeId {
        let name = &name.as_bytes()[..name.len().min(u16::MAX as usize)];
        let mut h = ring::digest::Context::new(&ring::digest::SHA256);
        h.update(b"partybus node id 1");
        h.update(&(name.len() as u16).to_be_bytes());
        h.update(name);
        h.update(nonce);
        let mut id = [0u8; 16];
        id.copy_from_slice(&h.finish().as_ref()[..16]);
        NodeId(id)
    }

    /// Lowercase hex.
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }

    /// The first 8 hex digits, for logs.
    pub fn short(&self) -> String {
        hex::encode(&self.0[..4])
    }
}

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl fmt::Debug for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "NodeId({})", self.short())
    }
}

impl std::str::FromStr for NodeId {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let v = hex::decode(s).map_err(|e| format!("node id {s:?} is not hex: {e}"))?;
        let a: [u8; 16] = v.try_into().map_err(|_| format!("node id {s:?} must be 32 hex digits"))?;
        Ok(NodeId(a))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bound_ids_depend_on_name_and_nonce() {
        let (n1, n2) = ([1u8; 16], [2u8; 16]);
        assert_eq!(NodeId::bound("alice", &n1), NodeId::bound("alice", &n1));
        assert_ne!(NodeId::bound("alice", &n1), NodeId::bound("alice", &n2), "processes sharing a certificate");
        assert_ne!(NodeId::bound("alice", &n1), NodeId::bound("bob", &n1));
        // The length prefix keeps name and nonce apart.
        let mut n3 = [0u8; 16];
        n3[0] = b'e';
        assert_ne!(NodeId::bound("alic", &n3), NodeId::bound("alice", &[0u8; 16]));
        // Pinned (computed independently with Python's hashlib): every build
        // and any other implementation must derive the same id.
        assert_eq!(NodeId::bound("alice", &[0u8; 16]).to_hex(), "057fe8b80a3eab2fd3ec82ad26daf30e");
    }
}
