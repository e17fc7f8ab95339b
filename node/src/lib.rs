//! # partybus
//!
//! A distributed event bus: programs in a *hood* (a set of peers holding
//! certificates from one CA) emit and receive named events across machines,
//! over a QUIC full mesh secured by mutual TLS.
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use partybus::{Bus, Config};
//! let cfg = Config::from_files("hood.crt".as_ref(), "hood.dj.crt".as_ref(), "hood.dj.key".as_ref())?
//!     .connect(["192.0.2.10:4816"]);
//! let bus = Bus::join(cfg).await?;
//! let _h = bus.on("music", |ev| println!("{} from {}: {:?}", ev.name(), ev.source().name, ev.to_json()))?;
//! let reached = bus.emit("music", "utz").await?;
//! println!("{reached} listeners");
//! bus.leave().await;
//! # Ok(()) }
//! ```
//!
//! Layout: protocol logic without I/O in [`wire`] (frames), [`subs`]
//! (subscription table), [`peers`] (connection rules), [`name`]
//! (selectors) and `mesh::proto` (the mesh's state machine); one actor
//! drives the mesh (`mesh::actor`) with thin tasks around quinn; the data
//! plane (`plane`: send queues, routes) has a lock of its own; the API in
//! [`Bus`].

pub mod config;
pub mod event;
pub mod id;
pub mod name;
pub mod payload;
pub mod peers;
pub mod queue;
pub mod subs;
pub mod tls;
pub mod wire;

mod bus;
mod mesh;
mod node;
mod plane;
mod udp;

pub use bus::{Bus, EmitError, ListenOptions, ListenerHandle, Subscription};
pub use config::{Config, FullPolicy, PortSpec};
pub use event::{Event, PeerInfo};
pub use id::NodeId;
pub use mesh::{ConnStats, JoinError, NeighbourEvent, NeighbourInfo, PathStats, NEIGHBOUR_EVENTS};
pub use name::{NameError, Selector};
pub use payload::Timestamp;
pub use peers::Direction;

pub use partybus_discovery as discovery;
pub use partybus_pki as pki;

/// The README's Rust examples, compiled as doctests (`cargo test --doc`).
#[cfg(doctest)]
#[doc = include_str!("../../README.md")]
pub struct ReadmeDoctests;
