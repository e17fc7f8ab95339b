//! A seeded mutation fuzzer on stable Rust, over everything a peer's bytes
//! reach before any trust: the frame decoder, `parse` of every frame kind,
//! hello and gossip bounds, selectors and their matching, event names, and
//! payload-to-JSON (the tree and the streaming one, whose text must parse). No input may panic, and none may make the decoders
//! allocate more than `ALLOC_LIMIT` (a counting global allocator checks).
//!
//! CI runs it for `PARTYBUS_FUZZ_SECS` (default 15) seconds. For millions of
//! inputs: `PARTYBUS_FUZZ_SECS=3600 PARTYBUS_FUZZ_SEED=$RANDOM cargo test
//! --release -p partybus --test fuzz -- --nocapture`. Seeds are in
//! `node/tests/fuzz_corpus/` (one input per file; put a crasher there to
//! keep it tested); `PARTYBUS_FUZZ_SAVE=1` rewrites the generated ones.

use std::alloc::{GlobalAlloc, Layout, System};
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use partybus::__private::wire::{self, Frame, FrameDecoder, Hello, PeerAddrs, WireSub};
use partybus::{NodeId, Selector};
use rand::{Rng, SeedableRng};

struct Counting;

static CURRENT: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let now = CURRENT.fetch_add(layout.size(), Ordering::Relaxed) + layout.size();
        PEAK.fetch_max(now, Ordering::Relaxed);
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        CURRENT.fetch_sub(layout.size(), Ordering::Relaxed);
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if new_size > layout.size() {
            let now = CURRENT.fetch_add(new_size - layout.size(), Ordering::Relaxed) + new_size - layout.size();
            PEAK.fetch_max(now, Ordering::Relaxed);
        } else {
            CURRENT.fetch_sub(layout.size() - new_size, Ordering::Relaxed);
        }
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

/// The largest frame the fuzzed decoder takes (the node's hello limit).
const MAX_FRAME: usize = wire::MAX_HELLO;
/// What decoding one input may allocate at its peak, on top of the input:
/// bincode reserves what a length in a frame claims before reading it, up
/// to `wire::DECODE_LIMIT` (transiently; a claim past it is an error), and
/// a little more.
const ALLOC_LIMIT: usize = wire::DECODE_LIMIT + (2 << 20);

/// Feeds `data` to every decoder; `cut` decides where chunks split.
fn run_one(data: &[u8], cut: u64) {
    let mut dec = FrameDecoder::new(MAX_FRAME);
    let mut rest = data;
    let mut c = cut;
    while !rest.is_empty() {
        let n = ((c % 97) as usize + 1).min(rest.len());
        c = c.rotate_left(7) ^ 0x9e37_79b9;
        dec.push(Bytes::copy_from_slice(&rest[..n]));
        rest = &rest[n..];
        loop {
            match dec.next_frame() {
                Ok(Some(body)) => frame(&body),
                Ok(None) => break,
                Err(_) => return,
            }
        }
    }
    // The same bytes as a payload, a selector and a name.
    let _ = partybus::payload::to_json(data);
    let mut text = Vec::new();
    if partybus::payload::write_json(data, &mut text).is_ok() {
        assert!(serde_json::from_slice::<serde_json::Value>(&text).is_ok(), "write_json wrote bad JSON for {data:02x?}");
    }
    let text = String::from_utf8_lossy(data);
    if let Ok(s) = Selector::new(&text) {
        for name in ["a", "a.b.c", "$SYS.x", &"x".repeat(1000)] {
            s.matches(name);
        }
    }
    let _ = partybus::name::validate_name(&text);
}

fn frame(body: &[u8]) {
    let _ = wire::event_parts(body);
    match wire::parse(body) {
        Ok(Frame::Hello(mut h)) => {
            h.bound();
            assert!(h.addrs.len() <= wire::MAX_PEER_ADDRS && h.relays.len() <= wire::MAX_PEER_RELAYS);
        }
        Ok(Frame::Peers(mut list)) => list.iter_mut().for_each(PeerAddrs::bound),
        Ok(Frame::Subscribe(subs)) => {
            for s in subs {
                if let Ok(sel) = Selector::new(&s.selector) {
                    sel.matches("a.b.c");
                }
            }
        }
        Ok(Frame::Event { name, payload }) => {
            let _ = partybus::name::validate_name(name);
            let _ = partybus::payload::to_json(payload);
            let _ = partybus::payload::write_json(payload, &mut Vec::new());
        }
        _ => {}
    }
}

/// Valid inputs of every kind, the mutator's starting points.
fn generated_seeds() -> Vec<Vec<u8>> {
    let frames: Vec<Frame<'static>> = vec![
        Frame::Hello(Hello {
            id: NodeId([7; 16]),
            nonce: [9; 16],
            port: 4816,
            addrs: vec!["198.51.100.7:4816".parse().unwrap(), "[2001:db8::1]:4816".parse().unwrap()],
            relays: vec![wire::RelayRoute { relay: "203.0.113.1:4000".parse().unwrap(), id: [5; 16] }],
            observed: "198.18.0.1:5000".parse().unwrap(),
            dial: 3,
            express: true,
        }),
        Frame::Peers(vec![PeerAddrs { id: NodeId([1; 16]), addrs: vec!["198.51.100.9:1".parse().unwrap()], relays: vec![] }]),
        Frame::Subscribe(vec![
            WireSub { id: 1, selector: "a.+.c".into(), spy: false },
            WireSub { id: 2, selector: "$SYS.#".into(), spy: true },
        ]),
        Frame::Unsubscribe(vec![1, 2, 3]),
        Frame::Event { name: "music", payload: b"\xa3utz" },
        Frame::Event { name: "map", payload: b"\x82\xa1a\x01\xa1b\x92\xc3\xc0" },
        Frame::Event { name: "bin", payload: b"\xc4\x03abc" },
        Frame::Event { name: "date", payload: b"\xd6\xff\x00\x00\x00\x01" },
        Frame::Resume { after: 42 },
        Frame::After { other: 7 },
        Frame::Retire,
        // A revocation list's header (magic, version 1, hood fingerprint, sequence 7) and no more.
        Frame::Revocations(&REVOCATIONS_SEED),
    ];
    let mut seeds = Vec::new();
    let mut all = BytesMut::new();
    wire::put_preamble(&mut all);
    for f in &frames {
        let mut b = BytesMut::new();
        wire::put_preamble(&mut b);
        wire::put_frame(&mut b, f);
        wire::put_frame(&mut all, f);
        seeds.push(b.to_vec());
    }
    seeds.push(all.to_vec());
    seeds
}

fn corpus_dir() -> &'static Path {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fuzz_corpus"))
}

fn load_corpus() -> Vec<Vec<u8>> {
    let mut files: Vec<_> = std::fs::read_dir(corpus_dir()).map(|d| d.flatten().map(|e| e.path()).collect()).unwrap_or_default();
    files.sort();
    files.iter().filter_map(|p| std::fs::read(p).ok()).collect()
}

/// One mutation of `input` (`other`: another corpus entry to splice in).
fn mutate(rng: &mut rand::rngs::StdRng, input: &[u8], other: &[u8]) -> Vec<u8> {
    let mut v = input.to_vec();
    for _ in 0..rng.random_range(1..5) {
        let len = v.len();
        match rng.random_range(0..8) {
            0 if len > 0 => {
                let i = rng.random_range(0..len);
                v[i] ^= 1 << rng.random_range(0..8);
            }
            1 if len > 0 => {
                let i = rng.random_range(0..len);
                v[i] = [0, 0xff, 0x7f, 0x80, 0xc0, 0xdc, 0xdd, 0xde][rng.random_range(0..8)];
            }
            2 => {
                let i = rng.random_range(0..=len);
                let n = rng.random_range(1..16);
                v.splice(i..i, (0..n).map(|_| rng.random::<u8>()));
            }
            3 if len > 0 => {
                let i = rng.random_range(0..len);
                let n = rng.random_range(1..=(len - i).min(32));
                v.drain(i..i + n);
            }
            4 if len > 0 => v.truncate(rng.random_range(0..len)),
            5 if len >= 4 => {
                // A length field claims too much (or little).
                let i = rng.random_range(0..len - 3);
                let x: u32 = [u32::MAX, 1 << 24, MAX_FRAME as u32 + 1, 0, rng.random()][rng.random_range(0..5)];
                v[i..i + 4].copy_from_slice(&x.to_le_bytes());
            }
            6 if !other.is_empty() => {
                let a = rng.random_range(0..=len);
                let b = rng.random_range(0..other.len());
                let n = rng.random_range(1..=(other.len() - b).min(256));
                v.splice(a..a, other[b..b + n].iter().copied());
            }
            7 if len > 0 && len < 1 << 16 => {
                // Repeat a chunk (long lists, deep nesting).
                let i = rng.random_range(0..len);
                let n = rng.random_range(1..=(len - i).min(8));
                let chunk = v[i..i + n].to_vec();
                for _ in 0..rng.random_range(1..2000) {
                    v.splice(i..i, chunk.iter().copied());
                }
            }
            _ => {}
        }
    }
    v.truncate(MAX_FRAME * 2);
    v
}

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// Runs one input and checks what it allocated.
fn check(input: &[u8], cut: u64) {
    let base = CURRENT.load(Ordering::Relaxed);
    PEAK.store(base, Ordering::Relaxed);
    run_one(input, cut);
    let peak = PEAK.load(Ordering::Relaxed) - base;
    assert!(
        peak <= ALLOC_LIMIT + 4 * input.len(),
        "an input of {} bytes made the decoders allocate {peak} bytes: {input:02x?}",
        input.len()
    );
}

#[test]
fn decoders_survive_mutated_input() {
    let seeds = generated_seeds();
    if std::env::var_os("PARTYBUS_FUZZ_SAVE").is_some() {
        for (i, s) in seeds.iter().enumerate() {
            std::fs::write(corpus_dir().join(format!("seed-{i:02}.bin")), s).unwrap();
        }
    }
    let mut corpus = load_corpus();
    assert!(corpus.len() >= seeds.len(), "the corpus in {} is missing (PARTYBUS_FUZZ_SAVE=1 writes it)", corpus_dir().display());
    corpus.extend(seeds);
    // Hostile shapes the mutator finds slowly.
    corpus.push([&[0x91][..]; 100_000].concat()); // 100,000-deep array
    corpus.push([&[0xdd, 0xff, 0xff, 0xff, 0xff][..]].concat()); // an array claiming 4 G elements
    corpus.push([&[0xdf, 0xff, 0xff, 0xff, 0xff][..]].concat()); // a map claiming 4 G pairs
    corpus.push(vec![0u8; 60_000]); // 60,000 zeros
    for (i, c) in corpus.iter().enumerate() {
        check(c, i as u64);
    }

    let seed = env_u64("PARTYBUS_FUZZ_SEED", 1);
    let budget = Duration::from_secs(env_u64("PARTYBUS_FUZZ_SECS", 15));
    let max_inputs = env_u64("PARTYBUS_FUZZ_INPUTS", u64::MAX);
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let started = Instant::now();
    let mut n = 0u64;
    while started.elapsed() < budget && n < max_inputs {
        let a = &corpus[rng.random_range(0..corpus.len())];
        let b = &corpus[rng.random_range(0..corpus.len())];
        let input = mutate(&mut rng, a, b);
        check(&input, rng.random());
        n += 1;
    }
    eprintln!("fuzz: {n} inputs in {:?} (seed {seed}), {} corpus entries", started.elapsed(), corpus.len());
    assert!(n > 1000 || max_inputs < 1000, "the fuzzer barely ran: {n} inputs");
}

/// The start of a revocation list (`PBRL`, version 1, a hood fingerprint,
/// sequence 7, issued at 0, no entries) without its signature.
const REVOCATIONS_SEED: [u8; 57] = {
    let mut b = [0u8; 57];
    b[0] = b'P';
    b[1] = b'B';
    b[2] = b'R';
    b[3] = b'L';
    b[4] = 1;
    b[44] = 7;
    b
};
