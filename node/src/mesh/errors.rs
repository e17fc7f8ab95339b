//! Typed errors of a connection's hello exchange and of its frames.

use crate::wire::WireError;

/// The hello exchange failed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum HelloError {
    #[error(transparent)]
    Wire(#[from] WireError),
    #[error("expected a hello, got another frame")]
    NotHello,
    #[error("the stream ended before the hello")]
    StreamEnded,
    #[error("connection: {0}")]
    Connection(#[from] quinn::ConnectionError),
    #[error("write: {0}")]
    Write(#[from] quinn::WriteError),
    #[error("read: {0}")]
    Read(#[from] quinn::ReadError),
    #[error("no hello within the handshake timeout")]
    TimedOut,
    /// The hello's id is not the one its certificate's name and nonce give:
    /// a member trying to pass for another node.
    #[error("hello claims node id {claimed} that certificate {name:?} does not prove (NodeId::bound)")]
    Unproven { claimed: crate::id::NodeId, name: String },
}

impl HelloError {
    /// The peer is not a partybus node, or speaks another protocol version:
    /// worth a warning and its own close code.
    pub(crate) fn is_mismatch(&self) -> bool {
        matches!(self, HelloError::Wire(WireError::BadMagic | WireError::Version { .. }))
    }

    /// Worth a warning: a hood member misbehaving, not a network hiccup.
    pub(crate) fn is_misbehaviour(&self) -> bool {
        matches!(self, HelloError::Unproven { .. })
    }
}

/// A neighbour broke the protocol after its hello; the connection is closed
/// with [`crate::wire::close::PROTOCOL`] and this as the reason.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub(crate) enum ProtocolError {
    #[error(transparent)]
    Wire(#[from] WireError),
    #[error("event of {size} bytes over the limit of {max}")]
    EventTooLarge { size: usize, max: usize },
    #[error("invalid event name: {0}")]
    BadName(String),
    #[error("gossip list of {0} entries (the limit is 10000)")]
    GossipTooLong(usize),
    #[error("second hello")]
    SecondHello,
    #[error("sent a revocation list that is refused: {0}")]
    BadRevocations(String),
    #[error("stream error: {0}")]
    Stream(String),
}
