//! The actor's inbox: what the node's tasks report to it.

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::sync::mpsc;

use super::link::{ConnCmd, ConnCtl};
use super::proto::{Attempt, ConnId, Dialled, PeerHello, ReaderEnd};
use crate::peers::DialFailure;
use crate::wire::PeerAddrs;

/// What tasks report to the actor (`Revoke`: a new revocation list is in
/// force, close the connections of revoked peers).
pub(crate) enum Msg {
    Candidate {
        addr: SocketAddr,
        retry: bool,
    },
    Dialled {
        attempt: Attempt,
        result: Result<(Dialled, quinn::Connection, mpsc::UnboundedSender<ConnCmd>), DialFailure>,
    },
    IncomingStarted {
        conn: ConnId,
        addr: SocketAddr,
    },
    IncomingDone {
        conn: ConnId,
        result: Result<(quinn::Connection, mpsc::UnboundedSender<ConnCmd>), DialFailure>,
    },
    Hello {
        conn: ConnId,
        hello: PeerHello,
        name: String,
        ctl: Arc<ConnCtl>,
    },
    HelloFailed {
        conn: ConnId,
    },
    Gossip {
        conn: ConnId,
        peers: Vec<PeerAddrs>,
    },
    ReaderEnded {
        conn: ConnId,
        end: ReaderEnd,
    },
    Revoke,
    Leave,
    /// A relay knows nobody under this relay key's route ([`crate::path::PathEvent::RouteGone`]).
    RouteGone {
        addr: SocketAddr,
    },
}
