//! The relay service (`RelayService`, what `partybus dht` serves) over
//! loopback UDP, with plain sockets as clients speaking the relay datagrams;
//! and `partybus dht`'s relay as a process.

use std::net::SocketAddr;
use std::time::Duration;

use partybus::__private::relay::wire::{self, Msg, Refusal, RelayId};
use partybus::{RelayConfig, RelayService};
use tokio::net::UdpSocket;
use tokio_util::sync::CancellationToken;

const WAIT: Duration = Duration::from_secs(5);

fn encode(m: &Msg<'_>) -> Vec<u8> {
    let mut b = Vec::new();
    wire::encode(m, &mut b);
    b
}

struct Client {
    sock: UdpSocket,
    relay: SocketAddr,
    buf: Vec<u8>,
}

impl Client {
    async fn new(relay: SocketAddr) -> Client {
        Client { sock: UdpSocket::bind("127.0.0.1:0").await.unwrap(), relay, buf: vec![0; 65536] }
    }

    fn addr(&self) -> SocketAddr {
        self.sock.local_addr().unwrap()
    }

    async fn send(&self, m: &Msg<'_>) {
        self.sock.send_to(&encode(m), self.relay).await.unwrap();
    }

    /// The next datagram from the relay, within `within`.
    async fn recv_within(&mut self, within: Duration) -> Option<Vec<u8>> {
        loop {
            let (n, from) = tokio::time::timeout(within, self.sock.recv_from(&mut self.buf)).await.ok()?.unwrap();
            if from == self.relay {
                return Some(self.buf[..n].to_vec());
            }
        }
    }

    async fn recv(&mut self) -> Vec<u8> {
        self.recv_within(WAIT).await.expect("a datagram from the relay")
    }

    async fn cookie(&mut self) -> wire::Cookie {
        self.send(&Msg::Register { cookie: [0; 16], secret: [0; 32], proof: b"" }).await;
        match wire::decode(&self.recv().await) {
            Some(Msg::Challenge { cookie }) => cookie,
            other => panic!("expected a challenge, got {other:?}"),
        }
    }

    /// The whole round trip; the relay's answer to the second Register.
    async fn register(&mut self, secret: [u8; 32]) -> Vec<u8> {
        let cookie = self.cookie().await;
        self.send(&Msg::Register { cookie, secret, proof: b"" }).await;
        self.recv().await
    }

    async fn register_ok(&mut self, secret: [u8; 32]) -> RelayId {
        let answer = self.register(secret).await;
        match wire::decode(&answer) {
            Some(Msg::Registered { id, lifetime, observed }) => {
                assert_eq!((id, lifetime, observed), (RelayId::of_secret(&secret), 60, self.addr()));
                id
            }
            other => panic!("expected Registered, got {other:?}"),
        }
    }
}

fn secret(n: u32) -> [u8; 32] {
    let mut s = [0x33; 32];
    s[..4].copy_from_slice(&n.to_be_bytes());
    s
}

async fn start(cfg: RelayConfig) -> (RelayService, CancellationToken) {
    let cancel = CancellationToken::new();
    let sock = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    (RelayService::spawn(sock, cfg, cancel.clone()).unwrap(), cancel)
}

#[tokio::test]
async fn two_clients_register_and_talk_through_the_relay() {
    let cfg = RelayConfig { max_clients: 64, max_clients_per_ip: 64, client_rate: 200_000, client_burst: 20_000, ..Default::default() };
    let (relay, cancel) = start(cfg).await;
    let mut a = Client::new(relay.local_addr()).await;
    let mut b = Client::new(relay.local_addr()).await;
    let ida = a.register_ok(secret(1)).await;
    let idb = b.register_ok(secret(2)).await;

    // Both ways.
    a.send(&Msg::Send { to: idb, payload: b"\xc0from a" }).await;
    assert_eq!(wire::decode(&b.recv().await), Some(Msg::Recv { from: ida, payload: b"\xc0from a" }));
    b.send(&Msg::Send { to: ida, payload: b"\x40from b" }).await;
    assert_eq!(wire::decode(&a.recv().await), Some(Msg::Recv { from: idb, payload: b"\x40from b" }));

    // A third, unregistered socket gets a challenge and nothing reaches b.
    let mut c = Client::new(relay.local_addr()).await;
    c.send(&Msg::Send { to: idb, payload: b"from c" }).await;
    let answer = c.recv().await;
    assert!(matches!(wire::decode(&answer), Some(Msg::Challenge { .. })), "{answer:?}");
    a.send(&Msg::Send { to: idb, payload: b"marker" }).await;
    assert_eq!(wire::decode(&b.recv().await), Some(Msg::Recv { from: ida, payload: b"marker" }), "b got nothing from c");
    // An unknown id.
    a.send(&Msg::Send { to: RelayId([9; 16]), payload: b"?" }).await;
    assert_eq!(wire::decode(&a.recv().await), Some(Msg::Unknown { id: RelayId([9; 16]) }));
    // Not ours (a QUIC-looking packet): ignored.
    a.sock.send_to(b"\xc0\x00\x00\x00\x01", relay.local_addr()).await.unwrap();
    assert_eq!(a.recv_within(Duration::from_millis(200)).await, None);

    let s = relay.stats();
    assert_eq!((s.clients, s.forwarded_packets, s.dropped_unregistered, s.unknown), (2, 3, 1, 1));
    cancel.cancel();
    tokio::time::timeout(WAIT, relay.stopped()).await.expect("the relay stops when cancelled");
}

#[tokio::test]
async fn a_client_over_its_rate_is_throttled_while_the_other_gets_through() {
    // 20 kB burst, 200 kB/s: about 17 packets of 1,200 bytes at once.
    let cfg = RelayConfig { client_rate: 200_000, client_burst: 20_000, ..Default::default() };
    let (relay, cancel) = start(cfg).await;
    let mut a = Client::new(relay.local_addr()).await;
    let mut b = Client::new(relay.local_addr()).await;
    let ida = a.register_ok(secret(1)).await;
    let idb = b.register_ok(secret(2)).await;

    let packet = vec![0xc0u8; 1200 - wire::RELAY_HEADER];
    for _ in 0..300 {
        a.send(&Msg::Send { to: idb, payload: &packet }).await;
        tokio::task::yield_now().await;
    }
    // b paces itself, interleaved with a still over its cap.
    for i in 0..10u8 {
        b.send(&Msg::Send { to: ida, payload: &[i] }).await;
        a.send(&Msg::Send { to: idb, payload: &packet }).await;
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let mut from_b = Vec::new();
    while let Some(d) = a.recv_within(Duration::from_millis(300)).await {
        if let Some(Msg::Recv { from, payload }) = wire::decode(&d) {
            assert_eq!(from, idb);
            from_b.push(payload[0]);
        }
    }
    assert_eq!(from_b, (0..10).collect::<Vec<u8>>(), "b is not throttled");
    let mut from_a = 0;
    while b.recv_within(Duration::from_millis(300)).await.is_some() {
        from_a += 1;
    }
    let s = relay.stats();
    assert!(s.dropped_rate > 0, "{s:?}");
    // The burst, plus 200 kB/s for however long the sending took.
    assert!(from_a < 150, "a got {from_a} of 310 packets through: {s:?}");
    assert_eq!(s.forwarded_packets, from_a + 10, "{s:?}");
    cancel.cancel();
}

#[tokio::test]
async fn registration_floods_keep_the_table_bounded() {
    let cfg = RelayConfig { max_clients: 64, max_clients_per_ip: 64, ..Default::default() };
    let (relay, cancel) = start(cfg).await;
    let mut a = Client::new(relay.local_addr()).await;
    let mut b = Client::new(relay.local_addr()).await;
    let ida = a.register_ok(secret(1)).await;
    let idb = b.register_ok(secret(2)).await;

    // 5,000 ids from one socket: one address holds one id, each replaces the last.
    let mut d = Client::new(relay.local_addr()).await;
    let cookie = d.cookie().await;
    let mut registered = 0;
    for window in 0..50u32 {
        for i in 0..100 {
            d.send(&Msg::Register { cookie, secret: secret(1000 + window * 100 + i), proof: b"" }).await;
        }
        for _ in 0..100 {
            let Some(answer) = d.recv_within(Duration::from_millis(200)).await else { break };
            if matches!(wire::decode(&answer), Some(Msg::Registered { .. })) {
                registered += 1;
            }
        }
        assert!(relay.stats().clients <= 3, "{:?}", relay.stats());
    }
    assert!(registered > 4000, "{registered} of 5,000 answered (loopback may drop a few)");
    assert_eq!(relay.stats().clients, 3);

    // Many sockets: up to max_clients, then Refused{Full}.
    let mut refused = 0;
    let mut others = Vec::new();
    for n in 0..80 {
        let mut c = Client::new(relay.local_addr()).await;
        match wire::decode(&c.register(secret(10_000 + n)).await) {
            Some(Msg::Registered { .. }) => {}
            Some(Msg::Refused { reason: Refusal::Full }) => refused += 1,
            other => panic!("{other:?}"),
        }
        others.push(c);
    }
    let s = relay.stats();
    assert_eq!((s.clients, refused, s.refused_full), (64, 80 - 61, 80 - 61));
    // The clients registered before still talk.
    a.send(&Msg::Send { to: idb, payload: b"still here" }).await;
    assert_eq!(wire::decode(&b.recv().await), Some(Msg::Recv { from: ida, payload: b"still here" }));
    cancel.cancel();
}

/// `partybus dht`: the relay on UDP at the DHT's port number, in the ready line.
mod dht_cli {
    use super::*;
    use std::io::{BufRead, BufReader};
    use std::process::{Command, Stdio};

    const BIN: &str = env!("CARGO_BIN_EXE_partybus");

    struct Child(std::process::Child);

    impl Drop for Child {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }

    fn spawn(args: &[&str]) -> (Child, serde_json::Value) {
        let mut child = Command::new(BIN)
            .args(args)
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn partybus");
        let out = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut line = String::new();
            let _ = BufReader::new(out).read_line(&mut line);
            let _ = tx.send(line);
        });
        let line = rx.recv_timeout(Duration::from_secs(20)).expect("a ready line");
        let v = serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {line:?}"));
        (Child(child), v)
    }

    #[tokio::test]
    async fn dht_serves_an_open_relay_on_its_port_number() {
        let (mut child, ready) = spawn(&["dht", "--port", "0", "--bind", "127.0.0.1", "--relay-client-rate", "1MB/s"]);
        let relay: SocketAddr = ready["ready"]["relay"].as_str().unwrap_or_else(|| panic!("no relay in {ready}")).parse().unwrap();
        let tcp_port = ready["ready"]["addrs"][0].as_str().unwrap().rsplit('/').next().unwrap().parse::<u16>().unwrap();
        assert_eq!(relay, SocketAddr::from(([127, 0, 0, 1], tcp_port)), "{ready}");
        let mut a = Client::new(relay).await;
        let mut b = Client::new(relay).await;
        let ida = a.register_ok(secret(1)).await;
        let idb = b.register_ok(secret(2)).await;
        a.send(&Msg::Send { to: idb, payload: b"hi" }).await;
        assert_eq!(wire::decode(&b.recv().await), Some(Msg::Recv { from: ida, payload: b"hi" }));
        let _ = Command::new("kill").arg("-TERM").arg(child.0.id().to_string()).status();
        let status = (0..200)
            .find_map(|_| {
                std::thread::sleep(Duration::from_millis(50));
                child.0.try_wait().unwrap()
            })
            .expect("partybus dht exits on SIGTERM");
        assert!(status.success(), "{status}");
    }

    #[test]
    fn no_relay_and_bad_relay_options() {
        let (_child, ready) = spawn(&["dht", "--port", "0", "--bind", "127.0.0.1", "--no-relay"]);
        assert!(ready["ready"]["relay"].is_null(), "{ready}");
        for (args, says) in [
            (&["--relay-client-rate", "2Mb/s"][..], "--relay-client-rate"),
            (&["--relay-total-rate", "lots"], "2MB/s"),
            (&["--relay-hood", "abc"], "64 hex digits"),
            (&["--relay-max-clients", "0"], "--relay-max-clients"),
            (&["--no-relay", "--relay-hood", &"a".repeat(64)], "cannot be used with"),
        ] {
            let out = Command::new(BIN).arg("dht").args(args).output().unwrap();
            let err = String::from_utf8_lossy(&out.stderr);
            assert!(!out.status.success() && err.contains(says), "{args:?}: {err}");
        }
    }
}
