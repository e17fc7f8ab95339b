//! The control socket's protocol: one JSON request line, one JSON response
//! line, then the node closes the connection.
//!
//! ```text
//! > {"cmd":"status"}
//! < {"ok":true,"status":{...}}
//! > {"cmd":"reload"}
//! < {"ok":true,"reload":{"applied":[...],"restart_needed":[...]}}
//! < {"ok":false,"error":"config file ... is not valid: ..."}
//! ```

use serde::{Deserialize, Serialize};

/// Longest request line the node reads (a request is a few bytes).
pub const MAX_REQUEST: u64 = 4096;
/// Longest response line `status` reads (a status of 1,000 neighbours is ~400 KiB).
pub const MAX_RESPONSE: u64 = 16 << 20;

#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
#[serde(tag = "cmd", rename_all = "lowercase")]
pub enum Request {
    Status,
    Reload,
}

#[derive(Serialize, Deserialize, Debug)]
pub struct Response {
    pub ok: bool,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub error: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub status: Option<Status>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub reload: Option<ReloadOutcome>,
}

impl Response {
    pub fn error(e: impl std::fmt::Display) -> Response {
        Response { ok: false, error: Some(e.to_string()), status: None, reload: None }
    }
}

/// What a reload changed.
#[derive(Serialize, Deserialize, Debug, Clone, Default, PartialEq, Eq)]
pub struct ReloadOutcome {
    /// What took effect, e.g. "connect: +127.0.0.1:4817", "certificate: serial 01:..".
    pub applied: Vec<String>,
    /// Settings the new file changes that only a restart applies.
    pub restart_needed: Vec<String>,
}

/// `partybus status --json`: one document.
#[derive(Serialize, Deserialize, Debug, Clone)]
pub struct Status {
    pub id: String,
    pub name: String,
    /// The hood fingerprint.
    pub hood: String,
    pub port: u16,
    pub uptime_secs: u64,
    pub addresses: Addresses,
    pub certificate: Option<Cert>,
    pub hood_certificate: Option<Cert>,
    /// Certificates that expire within 30 days, and the like.
    pub warnings: Vec<String>,
    pub neighbours: Vec<Neighbour>,
}

#[derive(Serialize, Deserialize, Debug, Clone, Default)]
pub struct Addresses {
    /// The bound socket.
    pub bound: String,
    /// What the node tells peers: configured (`advertise`), mapped, and interface addresses.
    pub local: Vec<String>,
    /// Where neighbours see it.
    pub observed: Vec<String>,
    /// Mapped on a router (UPnP).
    pub mapped: Vec<String>,
}

#[derive(Serialize, Deserialize, Debug, Clone)]
pub struct Cert {
    pub subject: String,
    pub serial: String,
    pub fingerprint: String,
    pub not_after: String,
    /// Whole days left (negative: expired).
    pub expires_in_days: i64,
}

#[derive(Serialize, Deserialize, Debug, Clone)]
pub struct Neighbour {
    pub name: String,
    pub id: String,
    pub addr: String,
    /// "in" (it dialled) or "out" (we dialled).
    pub direction: String,
    /// "direct", "relayed" or "unknown".
    pub path: String,
    /// The relay, for a relayed path.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub via: Option<String>,
    pub rtt_ms: f64,
    pub bytes_in: u64,
    pub bytes_out: u64,
    pub events_in: u64,
    pub events_out: u64,
    pub queue_bytes: usize,
    pub queue_limit: usize,
    pub dropped: u64,
    /// SHA-256 of the certificate it presented (`partybus cert show`'s fingerprint).
    pub cert: Option<String>,
}
