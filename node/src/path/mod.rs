//! Network paths: how each QUIC connection's packets reach its peer, directly
//! or through a relay, and the hole punching that moves a relayed connection
//! to a direct path. The logic is a state machine ([`paths`]); the socket
//! handed to quinn ([`socket`]) and a timer task ([`driver`]) carry it out.

pub(crate) mod driver;
pub(crate) mod keys;
pub(crate) mod paths;
mod relays;
pub(crate) mod socket;

pub(crate) use paths::{PathEvent, PathKind, Paths};
pub(crate) use socket::{PathShared, PathSocket, SocketRelay};
