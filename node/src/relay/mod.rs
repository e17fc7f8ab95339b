//! Relaying QUIC packets for members that cannot reach each other directly.
//!
//! A relay is a public UDP service (in every `partybus node` with a public
//! address, and in `partybus dht`). Clients register an id with it from the
//! address it should forward to; then a client sends a packet to another
//! client's id and the relay forwards it. The packets are the members' own
//! QUIC packets, so the traffic stays end-to-end mutual TLS between the two
//! members: a relay sees ciphertext and which endpoints talk, nothing else.
//!
//! [`wire`] is the datagram format, [`server`] the relay without I/O (and
//! [`server::proof_message`], what a client signs to prove membership of a
//! hood), [`service`] the relay on a UDP socket of its own (`partybus dht`).

pub mod server;
pub mod service;
pub mod wire;
