//! Multi-node and network-lab tests for partybus.
//!
//! - [`lab`]: network namespaces, bridges, routers, processes (needs root,
//!   `ip`, `nft`). Lab tests are `#[ignore]`d by default and fail when asked
//!   for (`--include-ignored`) but unable to run; see the module docs.
//! - [`nat`]: a NAT lab (internet, home routers with masquerade and
//!   miniupnpd, hosts behind them) built with [`lab`].
//! - [`pb`]: driving the `partybus` binary (finding it, certificates).
//! - `mdns-probe` (bin): the mDNS discovery service alone, for lab tests.

pub mod lab;
pub mod nat;
pub mod pb;

pub use lab::{Bridge, Lab, LabError, LabProcess, Ns};
