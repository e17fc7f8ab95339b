//! Micro-benchmarks of the per-event work, without the network:
//! selector matching and routing (`subs`, `name`), frame encode/decode
//! (`wire`), and the emit path into a send queue (`queue` + `wire`).
//!
//! `cargo bench -p partybus-perf --bench micro [-- FILTER]`. A tiny harness (no
//! dependencies): each case is timed in 11 samples of a fixed batch after a
//! warm-up; the median ns per operation is printed, with the sample range.

use std::hint::black_box;
use std::time::{Duration, Instant};

use bytes::{BufMut, BytesMut};
use partybus::__private::wire::{self, FrameDecoder};
use partybus::__private::{tls, SendQueue, SubTable};
use partybus::id::NodeId;
use partybus::name::Selector;

/// The `partybus bench` helpers (for the CPU time of this process).
#[path = "../../src/cli/bench/util.rs"]
#[allow(dead_code)]
mod util;

struct Harness {
    filter: Vec<String>,
}

impl Harness {
    /// Times `f`, which performs `ops` operations per call.
    fn case(&self, name: &str, ops: u64, mut f: impl FnMut()) {
        if !self.filter.is_empty() && !self.filter.iter().any(|x| name.contains(x.as_str())) {
            return;
        }
        // Warm up and size a sample to ~20 ms.
        let t = Instant::now();
        let mut calls = 0u64;
        while t.elapsed() < Duration::from_millis(50) {
            f();
            calls += 1;
        }
        let per_call = t.elapsed().as_secs_f64() / calls as f64;
        let batch = ((0.02 / per_call) as u64).max(1);
        let mut samples: Vec<f64> = (0..11)
            .map(|_| {
                let t = Instant::now();
                for _ in 0..batch {
                    f();
                }
                t.elapsed().as_secs_f64() * 1e9 / (batch * ops) as f64
            })
            .collect();
        samples.sort_by(f64::total_cmp);
        let med = samples[samples.len() / 2];
        let rate = if med > 0.0 { 1e3 / med } else { 0.0 };
        println!("{name:<48} {med:>10.1} ns/op  ({:.1}-{:.1})  {rate:>8.2} M ops/s", samples[0], samples[samples.len() - 1]);
    }
}

fn sel(s: &str) -> Selector {
    Selector::new(s).expect("valid selector")
}

fn main() {
    let filter: Vec<String> = std::env::args().skip(1).filter(|a| !a.starts_with("--")).collect();
    let h = Harness { filter };

    // --- name / selectors ---------------------------------------------------
    let exact = sel("sensors.kitchen.temperature");
    let plus = sel("sensors.+.temperature");
    let hash = sel("sensors.#");
    let hostile = sel("+a+a+a+a+a+a+a+a+a+a+a+a+b");
    let name = "sensors.kitchen.temperature";
    h.case("selector.matches exact", 1, || {
        black_box(exact.matches(black_box(name)));
    });
    h.case("selector.matches plus", 1, || {
        black_box(plus.matches(black_box(name)));
    });
    h.case("selector.matches hash", 1, || {
        black_box(hash.matches(black_box(name)));
    });
    let long_name = "a".repeat(200);
    h.case("selector.matches hostile (200 B name)", 1, || {
        black_box(hostile.matches(black_box(&long_name)));
    });
    h.case("name::validate_name", 1, || {
        black_box(partybus::name::validate_name(black_box(name)).is_ok());
    });

    // --- subscription table: 1000 subscriptions over 10 peers + 10 local ----
    let mut t = SubTable::new(100_000);
    for i in 0..10u64 {
        t.add_local(i, sel(&format!("app{i}.+.x")), false);
    }
    for p in 0..10u8 {
        let peer = NodeId([p; 16]);
        for i in 0..100u64 {
            let s = match i % 3 {
                0 => format!("room{i}.event"),
                1 => format!("room{i}.+"),
                _ => format!("room{i}.#"),
            };
            t.add_remote(peer, i, &s, false).expect("within limits");
        }
        t.add_remote(peer, 1000, "bench.t", false).expect("within limits");
    }
    h.case("subs.route cached (1010 subs)", 1, || {
        black_box(t.route(black_box("bench.t")));
    });
    let names: Vec<String> = (0..10_000).map(|i| format!("room{}.event.{i}", i % 100)).collect();
    let mut k = 0usize;
    h.case("subs.route miss = match 1010 subs", 1, || {
        k = (k + 1) % names.len();
        black_box(t.route(black_box(&names[k])));
    });

    // --- wire ----------------------------------------------------------------
    for size in [16usize, 1024, 65536] {
        let payload = vec![0x55u8; size];
        let mut buf = BytesMut::with_capacity(1 << 20);
        h.case(&format!("wire.put_event {size} B"), 1000, || {
            buf.clear();
            for _ in 0..1000 {
                wire::put_event(&mut buf, black_box("bench.t"), black_box(&payload));
            }
            black_box(&buf);
        });
        // Decode: a batch of 1000 frames through the decoder and parser.
        let mut stream = BytesMut::new();
        wire::put_preamble(&mut stream);
        for _ in 0..1000 {
            wire::put_event(&mut stream, "bench.t", &payload);
        }
        let stream = stream.freeze();
        h.case(&format!("wire decode+parse {size} B"), 1000, || {
            let mut dec = FrameDecoder::new(16 << 20);
            dec.push(stream.clone());
            while let Some(body) = dec.next_frame().expect("valid") {
                black_box(wire::parse(&body).expect("valid"));
            }
        });
    }

    // --- the emit path without network: queue push of an encoded frame ------
    for size in [16usize, 1024, 65536] {
        let payload = vec![0x55u8; size];
        let q = SendQueue::new(4 << 20);
        let len = wire::event_frame_len("bench.t", &payload);
        h.case(&format!("queue.push_with+put_event {size} B"), 1000, || {
            for _ in 0..1000 {
                if q.push_with(len, |b| wire::put_event(b, "bench.t", &payload)).is_err() {
                    black_box(q.try_take());
                }
            }
        });
    }
    let q = SendQueue::new(4 << 20);
    h.case("queue.push_with 16 B memcpy only", 1000, || {
        for _ in 0..1000 {
            if q.push_with(30, |b| b.put_slice(&[0u8; 30])).is_err() {
                black_box(q.try_take());
            }
        }
    });

    // --- the public-key operations of a handshake (ring, as rustls uses it) ---
    {
        use ring::signature::{self, KeyPair};
        let rng = ring::rand::SystemRandom::new();
        let alg = &signature::ECDSA_P256_SHA256_ASN1_SIGNING;
        let pkcs8 = signature::EcdsaKeyPair::generate_pkcs8(alg, &rng).expect("key");
        let key = signature::EcdsaKeyPair::from_pkcs8(alg, pkcs8.as_ref(), &rng).expect("key");
        let msg = [0x42u8; 130];
        h.case("ecdsa p256 sign", 1, || {
            black_box(key.sign(&rng, black_box(&msg)).expect("sign"));
        });
        let sig = key.sign(&rng, &msg).expect("sign");
        let public = signature::UnparsedPublicKey::new(&signature::ECDSA_P256_SHA256_ASN1, key.public_key().as_ref().to_vec());
        h.case("ecdsa p256 verify", 1, || {
            public.verify(black_box(&msg), black_box(sig.as_ref())).expect("valid");
        });
        let peer = ring::agreement::EphemeralPrivateKey::generate(&ring::agreement::X25519, &rng).expect("key");
        let peer_pub = peer.compute_public_key().expect("public");
        h.case("x25519 keygen + agree", 1, || {
            let k = ring::agreement::EphemeralPrivateKey::generate(&ring::agreement::X25519, &rng).expect("key");
            black_box(k.compute_public_key().expect("public"));
            let pk = ring::agreement::UnparsedPublicKey::new(&ring::agreement::X25519, peer_pub.as_ref());
            black_box(ring::agreement::agree_ephemeral(k, &pk, |s| s.len()).expect("agree"));
        });
        let peer = ring::agreement::EphemeralPrivateKey::generate(&ring::agreement::ECDH_P256, &rng).expect("key");
        let peer_pub = peer.compute_public_key().expect("public");
        h.case("ecdh p256 keygen + agree", 1, || {
            let k = ring::agreement::EphemeralPrivateKey::generate(&ring::agreement::ECDH_P256, &rng).expect("key");
            black_box(k.compute_public_key().expect("public"));
            let pk = ring::agreement::UnparsedPublicKey::new(&ring::agreement::ECDH_P256, peer_pub.as_ref());
            black_box(ring::agreement::agree_ephemeral(k, &pk, |s| s.len()).expect("agree"));
        });
    }

    // --- one QUIC + mutual TLS handshake, both ends in this thread ----------
    handshakes(&h);
}

/// Client and server endpoints on loopback with partybus' TLS and transport
/// settings (ECDSA P-256 certificates from a fresh hood); one case is a whole
/// handshake, both ends' work on one current_thread runtime (what the
/// in-process mesh pays per pair), connection closed after it.
fn handshakes(h: &Harness) {
    if !h.filter.is_empty() && !h.filter.iter().any(|x| "quic handshake".contains(x.as_str())) {
        return;
    }
    let hood = partybus::pki::TempHood::new("bench", 1).expect("hood");
    let cfg = |name: &str| partybus::Config::new(hood.hood().clone(), hood.identity(name).expect("peer"));
    let (a, b) = (cfg("a"), cfg("b"));
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    rt.block_on(async {
        let sock = |_: ()| std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
        let rt = quinn::default_runtime().expect("runtime");
        // Loopback: the settings partybus uses for peers on this host.
        let (server, _) = tls::on_host(&b, tls::server_config(&b).expect("server config"), tls::client_config(&b).expect("client config"));
        let (_, client) = tls::on_host(&a, tls::server_config(&a).expect("server config"), tls::client_config(&a).expect("client config"));
        let srv = quinn::Endpoint::new(quinn::EndpointConfig::default(), Some(server), sock(()), rt.clone()).expect("endpoint");
        let mut cli = quinn::Endpoint::new(quinn::EndpointConfig::default(), None, sock(()), rt).expect("endpoint");
        cli.set_default_client_config(client);
        let to = srv.local_addr().expect("addr");
        let one = || async {
            let connecting = cli.connect(to, "partybus").expect("connect");
            let (c, s) = tokio::join!(connecting, async { srv.accept().await.expect("incoming").await });
            let (c, s) = (c.expect("client handshake"), s.expect("server handshake"));
            c.close(0u32.into(), b"");
            s.close(0u32.into(), b"");
        };
        // Warm up, then time batches (wall time = CPU time: one thread, loopback).
        for _ in 0..20 {
            one().await;
        }
        let mut samples = Vec::new();
        let cpu0 = util::self_cpu_s();
        for _ in 0..7 {
            let t = Instant::now();
            for _ in 0..50 {
                one().await;
            }
            samples.push(t.elapsed().as_secs_f64() * 1e6 / 50.0);
        }
        let cpu = (util::self_cpu_s() - cpu0) * 1e6 / 350.0;
        samples.sort_by(f64::total_cmp);
        println!(
            "{:<48} {:>10.1} us/op  ({:.1}-{:.1}), CPU {cpu:.0} us/op",
            "quic handshake (both ends, mutual TLS)",
            samples[samples.len() / 2],
            samples[0],
            samples[samples.len() - 1]
        );
        cli.wait_idle().await;
        srv.wait_idle().await;
    });
}
