//! Shared helpers of the pki tests: the test hood, odd certificates and
//! rogue rustls configurations come from `partybus-testkit`; here, in-memory
//! TLS handshakes between two rustls configurations.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::path::Path;
use std::sync::Arc;

use partybus_pki::{Hood, Identity};
#[allow(unused_imports)] // each test binary uses its own part
pub use partybus_testkit::{cert_der, key_der, peer_params, rogue_client, rogue_server, self_signed, TestHood};
use rustls::{ClientConfig, ClientConnection, ServerConfig, ServerConnection};
use rustls_pki_types::ServerName;

#[derive(Debug, PartialEq, Eq, Clone, Copy)]
pub enum Side {
    Client,
    Server,
}

/// Moves all pending TLS bytes from one connection to the other; `Ok(false)`
/// if there was nothing to move.
fn transfer<A, B>(from: &mut rustls::ConnectionCommon<A>, to: &mut rustls::ConnectionCommon<B>) -> Result<bool, rustls::Error> {
    let mut buf = Vec::new();
    while from.wants_write() {
        if from.write_tls(&mut buf).unwrap() == 0 {
            break;
        }
    }
    if buf.is_empty() {
        return Ok(false);
    }
    let mut rd = &buf[..];
    while !rd.is_empty() {
        to.read_tls(&mut rd).unwrap();
        to.process_new_packets()?;
    }
    Ok(true)
}

pub struct Pair {
    pub client: ClientConnection,
    pub server: ServerConnection,
}

/// Runs a full TLS handshake in memory (the client addresses the server by
/// an IP address, as partybus does), then sends "ping" client -> server and
/// "pong" back. `Err` says which side failed first and why.
pub fn handshake(client: ClientConfig, server: ServerConfig) -> Result<Pair, (Side, rustls::Error)> {
    let mut c = ClientConnection::new(Arc::new(client), ServerName::try_from("192.0.2.7").unwrap().to_owned()).unwrap();
    let mut s = ServerConnection::new(Arc::new(server)).unwrap();
    shuttle(&mut c, &mut s)?;
    assert!(!c.is_handshaking() && !s.is_handshaking(), "handshake stalled");
    c.writer().write_all(b"ping").unwrap();
    shuttle(&mut c, &mut s)?;
    let mut got = [0u8; 4];
    s.reader().read_exact(&mut got).unwrap();
    assert_eq!(&got, b"ping");
    s.writer().write_all(b"pong").unwrap();
    shuttle(&mut c, &mut s)?;
    c.reader().read_exact(&mut got).unwrap();
    assert_eq!(&got, b"pong");
    Ok(Pair { client: c, server: s })
}

fn shuttle(c: &mut ClientConnection, s: &mut ServerConnection) -> Result<(), (Side, rustls::Error)> {
    for _ in 0..50 {
        let c_to_s = transfer(&mut **c, &mut **s).map_err(|e| (Side::Server, e))?;
        let s_to_c = transfer(&mut **s, &mut **c).map_err(|e| (Side::Client, e))?;
        if !c_to_s && !s_to_c {
            return Ok(());
        }
    }
    panic!("TLS exchange did not settle");
}

/// Our server and client configs for `me` in `hood`.
pub fn configs(me: &Identity, hood: &Hood) -> (ClientConfig, ServerConfig) {
    (partybus_pki::client_config(me, hood).unwrap(), partybus_pki::server_config(me, hood).unwrap())
}

/// Asserts that the handshake failed on `side` with the given certificate error.
#[track_caller]
pub fn assert_refused(result: Result<Pair, (Side, rustls::Error)>, side: Side, check: impl Fn(&rustls::CertificateError) -> bool) {
    match result {
        Ok(_) => panic!("handshake succeeded, but {side:?} should have refused"),
        Err((got_side, rustls::Error::InvalidCertificate(e))) if got_side == side && check(&e) => {
            eprintln!("{side:?} refused as expected: {}", rustls::Error::InvalidCertificate(e));
        }
        Err((got_side, e)) => panic!("expected {side:?} to refuse, got {got_side:?}: {e} ({e:?})"),
    }
}

pub fn write(path: &Path, contents: impl AsRef<[u8]>) {
    std::fs::write(path, contents).unwrap();
}

/// Fail the calling test unless the `openssl` program runs: the tests that
/// compare with openssl never pass without it (the project's rule for tests
/// with an outside prerequisite: run completely or fail, naming it).
#[track_caller]
pub fn require_openssl(why: &str) {
    let ok = std::process::Command::new("openssl").arg("version").output().is_ok_and(|o| o.status.success());
    if !ok {
        panic!("`openssl` is not installed (Debian package `openssl`, which `.ci/run` installs); {why} need it");
    }
}
