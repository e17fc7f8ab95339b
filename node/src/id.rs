//! Node ids: 128 random bits, new at every start.

use std::fmt;

/// A node's id: 128 random bits drawn at every start, so a restarted node is
/// a new node to the mesh. Ordered, because the duplicate-connection rule
/// compares ids.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
pub struct NodeId(pub [u8; 16]);

impl NodeId {
    /// A fresh random id.
    pub fn random() -> NodeId {
        NodeId(rand::random())
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
