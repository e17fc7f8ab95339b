//! The mesh: who the neighbours are and over which connection.
//!
//! - [`proto`]: every decision, as a state machine with no I/O (inputs in,
//!   outputs out, time passed in), tested with simulated time.
//! - [`actor`]: drives it (one inbox, one owner at a time, one timer task).
//! - [`endpoint`], [`conn`], [`stream`]: thin tasks around quinn: accept,
//!   dial, one task per connection (hellos, then reader and writer); they
//!   report through [`inbox`] and share [`link`] with the actor.
//! - [`report`]: what the library reports about the mesh.

pub(crate) mod actor;
mod admission;
pub(crate) mod conn;
pub(crate) mod endpoint;
pub(crate) mod errors;
pub(crate) mod inbox;
pub(crate) mod link;
pub(crate) mod proto;
mod report;
mod stream;

pub use report::{ConnStats, JoinError, NeighbourEvent, NeighbourInfo, NeighbourPath, NeighbourStats, PathStats, NEIGHBOUR_EVENTS};
