use super::*;

#[test]
fn keys_are_hood_specific() {
    let a = rendezvous_key("aa");
    assert_eq!(a.len(), 32);
    assert_ne!(a, rendezvous_key("bb"));
    let p = PeerId::random();
    assert_ne!(node_key("aa", &p), node_key("bb", &p));
    assert_ne!(node_key("aa", &p), node_key("aa", &PeerId::random()));
}

#[test]
fn value_roundtrip_and_garbage() {
    let addrs: Vec<SocketAddr> = vec!["1.2.3.4:5".parse().unwrap(), "[2001:4860::1]:4816".parse().unwrap()];
    assert_eq!(decode_addrs(&encode_addrs(&addrs)), addrs);
    assert!(decode_addrs(b"pb2 1.2.3.4:5").is_empty());
    assert!(decode_addrs(&[0xff, 0xfe]).is_empty());
    assert_eq!(decode_addrs(b"pb1 junk 1.2.3.4:5"), vec!["1.2.3.4:5".parse().unwrap()]);
    let many: Vec<SocketAddr> = (1..100).map(|p| SocketAddr::new([8, 8, 8, 8].into(), p)).collect();
    assert_eq!(decode_addrs(&encode_addrs(&many)).len(), MAX_ADDRS_PER_RECORD);
}

#[test]
fn announce_filter() {
    let v: Vec<SocketAddr> =
        ["127.0.0.1:1", "8.8.8.8:1", "0.0.0.0:1", "8.8.8.8:0", "8.8.8.8:1"].iter().map(|s| s.parse().unwrap()).collect();
    assert_eq!(announceable(&v, false), vec!["8.8.8.8:1".parse().unwrap()]);
    assert_eq!(announceable(&v, true).len(), 2);
}

#[tokio::test]
async fn listen_port_taken_falls_back_only_when_allowed() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let mut core = Core::new(true, vec![], Mode::Client, Duration::from_secs(60)).unwrap();
    core.listen([127, 0, 0, 1].into(), port, true).await.unwrap();
    let got = tcp_socket_addr(&core.listen_addrs[0]).unwrap();
    assert_ne!(got.port(), port);
    let mut strict = Core::new(true, vec![], Mode::Client, Duration::from_secs(60)).unwrap();
    let e = strict.listen([127, 0, 0, 1].into(), port, false).await.unwrap_err();
    assert!(matches!(e, DhtError::PortTaken { port: p, .. } if p == port), "{e:?}");
    assert!(strict.listen_addrs.is_empty());
}

#[test]
fn multiaddr_conversion() {
    let sa: SocketAddr = "[::1]:7".parse().unwrap();
    assert_eq!(tcp_socket_addr(&multiaddr_of(sa)), Some(sa));
    let sa: SocketAddr = "10.0.0.1:9".parse().unwrap();
    assert_eq!(multiaddr_of(sa).to_string(), "/ip4/10.0.0.1/tcp/9");
}

#[test]
fn lookups_start_quickly_and_slow_to_the_interval() {
    let interval = Duration::from_secs(60);
    let mut gap = Duration::ZERO;
    let mut at = Duration::ZERO;
    let mut times = Vec::new();
    for _ in 0..9 {
        gap = next_lookup_gap(gap, interval);
        at += gap;
        times.push(at.as_secs());
    }
    assert_eq!(times, [1, 3, 7, 15, 31, 63, 123, 183, 243]);
    // A short configured interval is never exceeded.
    assert_eq!(next_lookup_gap(Duration::ZERO, Duration::from_millis(200)), Duration::from_millis(200));
    assert_eq!(next_lookup_gap(Duration::from_millis(200), Duration::from_millis(200)), Duration::from_millis(200));
}
