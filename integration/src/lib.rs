//! Multi-node and network-lab tests for partybus.
//!
//! - [`lab`]: network namespaces, bridges, routers, processes (needs root,
//!   `ip`, `nft`; tests skip without them unless `PARTYBUS_LAB=required`).
//! - [`pb`]: driving the `partybus` binary (finding it, certificates).
//! - `mdns-probe` (bin): the mDNS discovery service alone, for lab tests.

pub mod lab;
pub mod pb;

pub use lab::{Bridge, Lab, LabError, LabProcess, Ns};
