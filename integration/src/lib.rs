//! Multi-node and network-lab tests for partybus.
//!
//! - [`lab`]: network namespaces, bridges, routers, processes (needs root,
//!   `ip`, `nft`). Lab tests are ignored where the build finds the lab cannot
//!   run (`build.rs`), never under `PARTYBUS_LAB=required`, and fail when run
//!   but unable to; see the module docs.
//! - [`nat`]: a NAT lab (internet, home routers with masquerade and
//!   miniupnpd, hosts behind them) built with [`lab`].
//! - [`nodelog`]: reading a lab node's output (ready, neighbours, paths,
//!   mapped and announced addresses).
//! - [`pb`]: driving the `partybus` binary (finding it, certificates).
//! - [`reach`]: the reachability matrix's cases (NAT types x seeds x WAN
//!   impairments) on the [`nat`] lab, and how one is run and reported.
//! - [`seqcheck`]: the numbered-stream checker's payload and book-keeping;
//!   the `seqcheck` bin emits or checks such a stream on a partybus node.
//! - `mdns-probe`, `portmap-probe` (bins): the mDNS and port-mapping
//!   discovery services alone, for lab tests.

pub mod lab;
pub mod nat;
pub mod nodelog;
pub mod pb;
mod prereq;
pub mod reach;
pub mod seqcheck;

pub use lab::{Bridge, Lab, LabError, LabProcess, Ns};
