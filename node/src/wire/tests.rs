use super::*;

#[test]
fn a_frame_header_alone_reserves_little() {
    let mut dec = FrameDecoder::new(32 << 20);
    let mut head = BytesMut::new();
    put_preamble(&mut head);
    head.put_u32_le(16 << 20);
    head.put_u8(2);
    dec.push(head.freeze());
    dec.push(Bytes::from_static(b"x"));
    assert_eq!(dec.next_frame(), Ok(None));
    assert!(dec.partial.capacity() <= 2 * RESERVE_AHEAD, "{} bytes reserved for 2 received", dec.partial.capacity());
    // The rest arrives in pieces: the frame is whole and right.
    let mut sent = 2;
    while sent < 16 << 20 {
        let n = (1 << 20).min((16 << 20) - sent);
        dec.push(Bytes::from(vec![sent as u8; n]));
        sent += n;
        assert!(dec.partial.capacity() <= 2 * sent.max(RESERVE_AHEAD) + 64, "{} reserved for {sent}", dec.partial.capacity());
    }
    let f = dec.next_frame().unwrap().unwrap();
    assert_eq!(f.len(), 16 << 20);
    assert_eq!(&f[..2], &[2, b'x']);
}

#[test]
fn a_length_claim_past_the_limit_is_an_error_not_an_allocation() {
    // Subscribe, one entry, id 1, its selector's length claimed as 2^60
    // (a 20-byte frame once aborted the process: "memory allocation of
    // 1152921504606846976 bytes failed"), then 16 MiB + 1.
    for claim in [1u64 << 60, u32::MAX as u64, DECODE_LIMIT as u64 + 1] {
        let mut body = vec![2u8, 1, 1, 0xfd];
        body.extend_from_slice(&claim.to_le_bytes());
        body.extend_from_slice(b"abc");
        assert!(matches!(parse(&body), Err(WireError::Malformed(_))), "{claim}");
    }
}

#[test]
fn peer_lists_are_bounded_keeping_the_first_distinct_entries() {
    let a = |i: u32| SocketAddr::from((std::net::Ipv4Addr::from(0xCB00_7100 + i), 4816));
    let r = |i: u8| RelayRoute { relay: a(200), id: [i; 16] };
    // Duplicates everywhere, far more than the bound.
    let mut p =
        PeerAddrs { id: NodeId([1; 16]), addrs: (0..100_000).map(|i| a(i % 40)).collect(), relays: (0..50).map(|i| r(i % 6)).collect() };
    p.bound();
    assert_eq!(p.addrs, (0..MAX_PEER_ADDRS as u32).map(a).collect::<Vec<_>>());
    assert_eq!(p.relays, (0..MAX_PEER_RELAYS as u8).map(r).collect::<Vec<_>>());
    let mut short = PeerAddrs { id: NodeId([1; 16]), addrs: vec![a(3), a(1), a(3), a(2)], relays: vec![] };
    short.bound();
    assert_eq!(short.addrs, vec![a(3), a(1), a(2)]);
}

fn sample() -> Vec<Frame<'static>> {
    vec![
        Frame::Hello(Hello {
            id: NodeId([7; 16]),
            nonce: [9; 16],
            port: 4816,
            addrs: vec!["127.0.0.1:4816".parse().unwrap(), "[::1]:4816".parse().unwrap()],
            relays: vec![RelayRoute { relay: "203.0.113.1:4000".parse().unwrap(), id: [5; 16] }],
            observed: "198.18.0.1:5000".parse().unwrap(),
            dial: 3,
            express: true,
        }),
        Frame::Peers(vec![PeerAddrs { id: NodeId([1; 16]), addrs: vec!["1.2.3.4:1".parse().unwrap()], relays: vec![] }]),
        Frame::Subscribe(vec![WireSub { id: 1, selector: "a.+".into(), spy: true }]),
        Frame::Unsubscribe(vec![1, 2, 3]),
        Frame::Event { name: "music", payload: b"\xa3utz" },
        Frame::Event { name: "big", payload: &[0u8; 70_000] },
        Frame::Retire,
        Frame::Resume { after: 12345 },
        Frame::Revocations(b"PBRL\x01 and the rest"),
        Frame::After { other: 77 },
    ]
}

#[test]
fn round_trip_byte_by_byte() {
    let mut out = BytesMut::new();
    put_preamble(&mut out);
    for f in sample() {
        put_frame(&mut out, &f);
    }
    let out = out.freeze();
    // Every chunking: byte by byte, a few odd sizes, all at once.
    for step in [1usize, 2, 3, 5, 7, 13, 64, out.len()] {
        let mut dec = FrameDecoder::new(1 << 20);
        let mut got = Vec::new();
        for at in (0..out.len()).step_by(step) {
            dec.push(out.slice(at..(at + step).min(out.len())));
            while let Some(body) = dec.next_frame().unwrap() {
                got.push(body);
            }
        }
        let parsed: Vec<Frame<'_>> = got.iter().map(|b| parse(b).unwrap()).collect();
        assert_eq!(parsed, sample(), "chunks of {step}");
        assert_eq!(dec.pending(), 0);
    }
}

#[test]
fn whole_frames_are_not_copied() {
    let mut out = BytesMut::new();
    put_preamble(&mut out);
    put_event(&mut out, "a.b", b"payload");
    put_event(&mut out, "a.b", b"second");
    let out = out.freeze();
    let mut dec = FrameDecoder::new(1 << 20);
    dec.push(out.clone());
    let first = dec.next_frame().unwrap().unwrap();
    assert!(out.as_ptr_range().contains(&first.as_ptr()), "a slice of the chunk");
    assert!(dec.next_frame().unwrap().is_some());
    assert_eq!(dec.next_frame().unwrap(), None);
    // Drained: the decoder keeps no reference to the chunk.
    drop(first);
    assert!(out.is_unique(), "an idle decoder holds no receive buffer");
    // A second push before the frames are taken still keeps order.
    let mut dec = FrameDecoder::new(1 << 20);
    dec.push(out.slice(..10));
    dec.push(out.slice(10..));
    let a = dec.next_frame().unwrap().unwrap();
    let b = dec.next_frame().unwrap().unwrap();
    assert_eq!(parse(&a).unwrap(), Frame::Event { name: "a.b", payload: b"payload" });
    assert_eq!(parse(&b).unwrap(), Frame::Event { name: "a.b", payload: b"second" });
}

#[test]
fn put_event_is_bincode_and_fast_parse_agrees() {
    for nlen in [1usize, 7, 250, 251, 300, 1024] {
        for plen in [0usize, 1, 16, 250, 251, 252, 1024, 65535, 65536, 70_000] {
            let name = "n".repeat(nlen);
            let payload: Vec<u8> = (0..plen).map(|i| i as u8).collect();
            let mut a = BytesMut::new();
            put_event(&mut a, &name, &payload);
            let mut b = BytesMut::new();
            put_frame(&mut b, &Frame::Event { name: &name, payload: &payload });
            assert_eq!(a, b, "name {nlen} payload {plen}");
            let mut head = BytesMut::new();
            put_event_head(&mut head, &name, payload.len());
            head.extend_from_slice(&payload);
            assert_eq!(a, head, "head + payload, name {nlen} payload {plen}");
            let body = &a[4..];
            let slow: (Frame<'_>, usize) = bincode::serde::borrow_decode_from_slice(body, config()).unwrap();
            assert_eq!(parse_event(body), Some(slow.0));
            // Truncated or padded bodies never take the fast path.
            assert_eq!(parse_event(&body[..body.len() - 1]), None);
            let mut padded = body.to_vec();
            padded.push(0);
            assert_eq!(parse_event(&padded), None);
        }
    }
    assert_eq!(parse_event(b"\x04\x01\xff\x00"), None, "bad UTF-8 goes to bincode");
}

#[test]
fn event_len_bound_holds() {
    for (n, p) in [("a", 0usize), ("music", 16), ("x".repeat(300).as_str(), 70_000)].iter().map(|(n, p)| (n.to_string(), *p)) {
        let payload = vec![1u8; p];
        let mut b = BytesMut::new();
        put_event(&mut b, &n, &payload);
        assert!(b.len() <= event_frame_len(&n, &payload), "{} > bound", b.len());
    }
}

#[test]
fn version_and_magic_are_checked() {
    for theirs in [PROTOCOL_VERSION - 1, PROTOCOL_VERSION + 1] {
        let mut pre = b"PBUS".to_vec();
        pre.extend_from_slice(&theirs.to_le_bytes());
        let mut dec = FrameDecoder::new(100);
        dec.push(Bytes::from(pre));
        assert_eq!(dec.next_frame(), Err(WireError::Version { ours: PROTOCOL_VERSION, theirs }));
    }
    let mut dec = FrameDecoder::new(100);
    dec.push(Bytes::from_static(b"GET "));
    assert_eq!(dec.next_frame(), Err(WireError::BadMagic));
    let mut dec = FrameDecoder::new(100);
    dec.push(Bytes::from_static(b"PB"));
    assert_eq!(dec.next_frame(), Ok(None));
    dec.push(Bytes::from_static(b"X"));
    assert_eq!(dec.next_frame(), Err(WireError::BadMagic));
}

#[test]
fn oversized_is_refused_before_buffering() {
    let mut b = BytesMut::new();
    put_preamble(&mut b);
    b.put_slice(b"\xff\xff\xff\xff");
    let mut dec = FrameDecoder::new(100);
    dec.push(b.freeze());
    assert!(matches!(dec.next_frame(), Err(WireError::Oversized { .. })));
}

#[test]
fn garbage_is_malformed_not_a_panic() {
    for body in [&b""[..], b"\xff\xff\xff", b"\x04\x05abc", b"\x02\x01\xfd\xff\xff\xff\xff\xff\xff\xff\xff"] {
        assert!(parse(body).is_err(), "{body:?}");
    }
    // A valid frame with trailing junk.
    let mut b = BytesMut::new();
    put_frame(&mut b, &Frame::Retire);
    let mut body = b[4..].to_vec();
    body.push(0);
    assert!(parse(&body).is_err());
}
