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
//! Layout: protocol logic without I/O in `wire` (frames), `subs`
//! (subscription table), `peers` (connection rules), [`name`]
//! (selectors) and `mesh::proto` (the mesh's state machine); one actor
//! drives the mesh (`mesh::actor`) with thin tasks around quinn; the data
//! plane (`plane`: send queues, routes) has a lock of its own; the API in
//! [`Bus`].

pub mod config;
pub mod event;
pub mod id;
pub mod name;
pub mod payload;

mod bus;
mod congestion;
mod identity;
mod mesh;
mod metrics;
mod node;
mod path;
mod peers;
mod perms;
mod plane;
mod queue;
mod ratelog;
mod relay;
mod shared;
mod subs;
mod tls;
mod udp;
mod wire;

// ---------------------------------------------------------------------------
// Internals reachable from outside the crate for the benchmarks
// (`partybus-perf`) and this crate's integration tests only: not part of the
// API, hidden from the docs, changed without notice. Each item is named, so
// that whatever nothing uses still shows up as dead code.
#[doc(hidden)]
pub mod __private {
    pub use crate::queue::{Lane, SendQueue};
    pub use crate::subs::SubTable;

    /// QUIC endpoint configuration.
    pub mod tls {
        pub use crate::tls::{client_config, endpoint_config, loopback_mtu, on_host, server_config, transport};
    }

    /// The relay and path-probe datagrams (relay abuse tests speak them),
    /// and the relay server.
    pub mod relay {
        pub use crate::relay::{server, wire};
    }

    /// The wire protocol: frames, their encoding and decoding.
    pub mod wire {
        pub use crate::wire::{
            close, event_frame_len, event_parts, parse, put_event, put_frame, put_preamble, Frame, FrameDecoder, Hello, PeerAddrs,
            RelayRoute, WireSub, ALPN, DECODE_LIMIT, MAGIC, MAX_HELLO, MAX_PEER_ADDRS, MAX_PEER_RELAYS, PREAMBLE_LEN, PROTOCOL_VERSION,
        };
    }
}
// ---------------------------------------------------------------------------

pub use bus::{Bus, EmitError, ExternalAddr, ListenOptions, ListenerHandle, Subscription};
pub use config::{Config, ConfigError, FullPolicy, PortSpec, RelaySettings};
pub use congestion::{Congestion, UnknownCongestion};
pub use event::{Event, PeerInfo};
pub use id::NodeId;
pub use identity::RotateError;
pub use mesh::{ConnStats, JoinError, NeighbourEvent, NeighbourInfo, NeighbourPath, NeighbourStats, PathStats, NEIGHBOUR_EVENTS};
pub use name::{NameError, Selector};
pub use payload::Timestamp;
pub use peers::Direction;
pub use relay::server::{RelayConfig, RelayPolicy, RelayStats};
pub use relay::service::RelayService;

pub use partybus_discovery as discovery;
pub use partybus_pki as pki;

/// The README's Rust examples, compiled as doctests (`cargo test --doc`).
#[cfg(doctest)]
#[doc = include_str!("../../README.md")]
pub struct ReadmeDoctests;
