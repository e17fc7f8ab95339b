use super::*;
use clap::Parser;

#[derive(Parser)]
struct Cmd {
    #[command(flatten)]
    node: NodeOpts,
}

/// Parses `flags` after `--config FILE` holding `toml` (plus the
/// certificate paths, which `resolve` does not read).
fn resolve(toml: &str, flags: &[&str]) -> Result<Resolved> {
    let d = tempfile::tempdir().unwrap();
    let file = d.path().join("node.toml");
    std::fs::write(&file, format!("ca = \"h.crt\"\ncert = \"h.a.crt\"\nkey = \"h.a.key\"\n{toml}")).unwrap();
    let mut args = vec!["partybus", "--config", file.to_str().unwrap()];
    args.extend_from_slice(flags);
    Cmd::try_parse_from(args)?.node.resolve()
}

fn ok(toml: &str, flags: &[&str]) -> Resolved {
    resolve(toml, flags).unwrap_or_else(|e| panic!("{toml:?} {flags:?}: {e:#}"))
}

#[test]
fn a_flag_turns_a_files_boolean_off_and_on() {
    // (file setting, flag, what wins)
    type Case = (&'static str, &'static str, fn(&Resolved) -> bool);
    let cases: [Case; 4] = [
        ("[discovery]\nmdns = true", "mdns", |r| r.mdns),
        ("[discovery]\nupnp = true", "upnp", |r| r.port_mapping.is_some()),
        ("[discovery]\ndht_serve = true", "dht-serve", |r| r.dht_serve == Some(true)),
        ("allow_non_global = true", "allow-non-global", |r| r.allow_non_global),
    ];
    for (on_in_file, flag, get) in cases {
        let off_in_file = on_in_file.replace("true", "false");
        let (yes, no) = (format!("--{flag}"), format!("--no-{flag}"));
        assert!(get(&ok(on_in_file, &[])), "{on_in_file}: the file alone");
        assert!(!get(&ok(&off_in_file, &[])), "{off_in_file}: the file alone");
        assert!(!get(&ok(on_in_file, &[&no])), "{on_in_file} {no}: the flag wins");
        assert!(get(&ok(&off_in_file, &[&yes])), "{off_in_file} {yes}: the flag wins");
        assert!(get(&ok("", &[&yes])), "{yes} without a file setting");
        // Both flags: the last one wins.
        assert!(!get(&ok(on_in_file, &[&yes, &no])), "{yes} {no}");
        assert!(get(&ok(&off_in_file, &[&no, &yes])), "{no} {yes}");
    }
    // Without anything: off, and the DHT's serving left to the host's addresses.
    let r = ok("", &[]);
    assert!(!r.mdns && r.port_mapping.is_none() && !r.allow_non_global && r.dht_serve.is_none(), "{r:?}");
    assert_eq!(ok("", &["--no-dht-serve"]).dht_serve, Some(false));
}

#[test]
fn upnp_url_implies_upnp_unless_no_upnp() {
    let url = "[discovery]\nupnp_url = \"http://127.0.0.1:5000/rootDesc.xml\"\nupnp_lease = \"10m\"";
    let r = ok(url, &[]).port_mapping.unwrap();
    assert_eq!(r.mode, Mode::Only(Protocol::Upnp));
    assert_eq!(r.upnp_url.as_deref(), Some("http://127.0.0.1:5000/rootDesc.xml"));
    assert_eq!(r.lease, Some(Duration::from_secs(600)));
    assert_eq!(ok(url, &["--upnp-lease", "1m"]).port_mapping.unwrap().lease, Some(Duration::from_secs(60)));
    assert_eq!(ok(url, &["--no-upnp"]).port_mapping, None);
    // --no-upnp with a gateway URL on the same command line is a contradiction.
    let e = resolve("", &["--no-upnp", "--upnp-url", "http://127.0.0.1:1/x.xml"]).unwrap_err().to_string();
    assert!(e.contains("--no-upnp") && e.contains("--upnp-url"), "{e}");
}

#[test]
fn port_mapping_from_flag_and_file() {
    let mode = |toml: &str, flags: &[&str]| ok(toml, flags).port_mapping.map(|p| p.mode);
    assert_eq!(mode("", &["--port-mapping", "auto"]), Some(Mode::Auto));
    assert_eq!(mode("", &["--port-mapping", "natpmp"]), Some(Mode::Only(Protocol::NatPmp)));
    assert_eq!(mode("", &["--port-mapping", "off"]), None);
    let file = "[discovery]\nport_mapping = \"pcp\"\nport_mapping_gateway = \"198.18.1.1\"\nport_mapping_lease = \"30s\"";
    let r = ok(file, &[]).port_mapping.unwrap();
    assert_eq!(
        (r.mode, r.gateway, r.lease),
        (Mode::Only(Protocol::Pcp), Some("198.18.1.1".parse().unwrap()), Some(Duration::from_secs(30)))
    );
    // Flags win: --port-mapping, --upnp (UPnP only), --no-upnp (off).
    assert_eq!(mode(file, &["--port-mapping", "upnp"]), Some(Mode::Only(Protocol::Upnp)));
    assert_eq!(mode(file, &["--upnp"]), Some(Mode::Only(Protocol::Upnp)));
    assert_eq!(mode(file, &["--no-upnp"]), None);
    assert_eq!(ok(file, &["--port-mapping-gateway", "198.18.2.1"]).port_mapping.unwrap().gateway, Some("198.18.2.1".parse().unwrap()));
    // Bad values name the setting and the choices.
    let e = resolve("", &["--port-mapping", "igd"]).unwrap_err().to_string();
    assert!(e.contains("--port-mapping") && e.contains("auto, upnp, natpmp, pcp or off"), "{e}");
    let e = resolve("[discovery]\nport_mapping = \"nat\"", &[]).unwrap_err().to_string();
    assert!(e.contains("discovery.port_mapping") && e.contains("natpmp"), "{e}");
    // --port-mapping and --upnp together: a contradiction.
    assert!(resolve("", &["--port-mapping", "pcp", "--upnp"]).is_err());
}

#[test]
fn a_list_on_the_command_line_replaces_the_files_list() {
    let file = "advertise = [\"127.0.0.9:4816\"]\n[discovery]\nconnect = [\"127.0.0.1:1\", \"localhost:2\"]\ndht = [\"127.0.0.1:3\"]";
    let r = ok(file, &[]);
    assert_eq!(r.connect, ["127.0.0.1:1", "localhost:2"]);
    assert_eq!(r.dht, ["127.0.0.1:3"]);
    assert_eq!(r.advertise, ["127.0.0.9:4816".parse::<SocketAddr>().unwrap()]);
    let r = ok(file, &["--connect", "[::1]:7", "--connect", "127.0.0.1:8", "--dht", "localhost:9", "--advertise", "127.0.0.10:1"]);
    assert_eq!(r.connect, ["[::1]:7", "127.0.0.1:8"]);
    assert_eq!(r.dht, ["localhost:9"]);
    assert_eq!(r.advertise, ["127.0.0.10:1".parse::<SocketAddr>().unwrap()]);
}

#[test]
fn congestion_from_file_and_flag() {
    assert_eq!(ok("", &[]).congestion, None);
    assert_eq!(ok("congestion = \"cubic\"", &[]).congestion, Some(Congestion::Cubic));
    assert_eq!(ok("congestion = \"cubic\"", &["--congestion", "newreno"]).congestion, Some(Congestion::NewReno));
    let e = format!("{:#}", resolve("congestion = \"vegas\"", &[]).unwrap_err());
    assert!(e.contains("config `congestion`") && e.contains("\"bbr\", \"cubic\" or \"newreno\""), "{e}");
    let e = resolve("", &["--congestion", "vegas"]).unwrap_err().to_string();
    assert!(e.contains("--congestion") && e.contains("\"vegas\""), "{e}");
}

#[test]
fn scalars_from_flags_win() {
    let file = "port = \"4816\"\nbind = \"127.0.0.1\"\nidle_timeout = \"20s\"\nkeep_alive = \"5s\"";
    let r = ok(file, &[]);
    assert_eq!((r.port.clone(), r.bind), (Some(PortSpec::single(4816)), Some("127.0.0.1".parse().unwrap())));
    assert_eq!((r.idle_timeout, r.keep_alive), (Some(Duration::from_secs(20)), Some(Duration::from_secs(5))));
    let r = ok(file, &["--port", "0", "--bind", "::1", "--idle-timeout", "3s", "--keep-alive", "1s", "--ca", "/x/ca.crt"]);
    assert_eq!((r.port.clone(), r.bind), (Some(PortSpec::any()), Some("::1".parse().unwrap())));
    assert_eq!((r.idle_timeout, r.keep_alive), (Some(Duration::from_secs(3)), Some(Duration::from_secs(1))));
    assert_eq!(r.ca, PathBuf::from("/x/ca.crt"));
    // The file's paths are relative to the file.
    assert!(r.cert.ends_with("h.a.crt") && r.cert.is_absolute(), "{:?}", r.cert);
}

#[test]
fn revoked_and_metrics_from_file_and_flags() {
    let r = ok("", &[]);
    assert_eq!((r.revoked.clone(), r.metrics), (None, None));
    let r = ok("revoked = \"h.revoked\"\nmetrics = \"127.0.0.1:9464\"", &[]);
    // The file's path is relative to the file.
    assert!(r.revoked.as_ref().is_some_and(|p| p.is_absolute() && p.ends_with("h.revoked")), "{:?}", r.revoked);
    assert_eq!(r.metrics, Some("127.0.0.1:9464".parse().unwrap()));
    let r = ok("revoked = \"h.revoked\"\nmetrics = \"127.0.0.1:9464\"", &["--revoked", "/x/other.revoked", "--metrics", "[::1]:1"]);
    assert_eq!(r.revoked, Some(PathBuf::from("/x/other.revoked")));
    assert_eq!(r.metrics, Some("[::1]:1".parse().unwrap()));
    assert!(resolve("", &["--metrics", "localhost"]).is_err());
}

#[test]
fn relay_serving_and_limits_from_file_and_flags() {
    let r = ok("", &[]);
    assert!(r.relay_serve && r.relays.is_empty() && r.relay_limits == RelayLimitArgs::default(), "{r:?}");
    assert!(!ok("", &["--no-relay"]).relay_serve);
    assert!(!ok("relay = false", &[]).relay_serve);
    assert!(!ok("relay = true", &["--no-relay"]).relay_serve);
    let file =
        "relays = [\"relay.example.org:4816\"]\nrelay_max_clients = 10\nrelay_client_rate = \"1MB/s\"\nrelay_total_rate = \"80Mbit/s\"";
    let r = ok(file, &[]);
    assert_eq!(r.relays, ["relay.example.org:4816"]);
    let want = RelayLimitArgs { relay_max_clients: Some(10), relay_client_rate: Some(1_000_000), relay_total_rate: Some(10_000_000) };
    assert_eq!(r.relay_limits, want);
    let r = ok(file, &["--relay", "[::1]:1", "--relay", "127.0.0.1:2", "--relay-max-clients", "5", "--relay-client-rate", "2MiB/s"]);
    assert_eq!(r.relays, ["[::1]:1", "127.0.0.1:2"]);
    let want = RelayLimitArgs { relay_max_clients: Some(5), relay_client_rate: Some(2 << 20), relay_total_rate: Some(10_000_000) };
    assert_eq!(r.relay_limits, want);
    let applied = r.relay_limits.apply(partybus::RelayConfig::default());
    assert_eq!((applied.max_clients, applied.client_rate, applied.total_rate), (5, 2 << 20, 10_000_000));
}

#[test]
fn a_bad_relay_option_names_the_flag_or_key_and_shows_the_form() {
    let e = resolve("", &["--relay-client-rate", "2Mb/s"]).unwrap_err().to_string();
    assert!(e.contains("--relay-client-rate") && e.contains("2MB/s"), "{e}");
    let e = resolve("", &["--relay-max-clients", "0"]).unwrap_err().to_string();
    assert!(e.contains("--relay-max-clients") && e.contains("1024"), "{e}");
    let e = format!("{:#}", resolve("relay_total_rate = \"fast\"", &[]).unwrap_err());
    assert!(e.contains("relay_total_rate") && e.contains("2MB/s"), "{e}");
    let e = format!("{:#}", resolve("", &["--relay", "relay.example.org"]).unwrap_err());
    assert!(e.contains("--relay") && e.contains("HOST:PORT"), "{e}");
    let e = format!("{:#}", resolve("relays = [\"x\"]", &[]).unwrap_err());
    assert!(e.contains("config `relays` entry"), "{e}");
}

#[test]
fn a_malformed_target_is_an_error_that_shows_the_form() {
    for (flag, bad, says) in [
        ("--connect", "127.0.0.1", "no port"),
        ("--connect", "::1:4816", "needs brackets, as in [::1]:4816"),
        ("--connect", "[::1:4816", "unbalanced"),
        ("--connect", "[nope]:4816", "not an IPv6 address"),
        ("--connect", "localhost:port", "not a port number"),
        ("--dht", ":4816", "no host"),
        ("--dht", "localhost:70000", "not a port number"),
        ("--connect", "127.0.0.1:99999", "not a port number (1-65535)"),
        ("--relay", "127.0.0.1:0", "not a port number (1-65535)"),
    ] {
        let e = format!("{:#}", resolve("", &[flag, bad]).unwrap_err());
        assert!(e.contains(flag) && e.contains(bad) && e.contains(says), "{flag} {bad}: {e}");
    }
    let e = format!("{:#}", resolve("[discovery]\nconnect = [\"peer\"]", &[]).unwrap_err());
    assert!(e.contains("discovery.connect") && e.contains("HOST:PORT"), "{e}");
    for good in ["127.0.0.1:1", "[::1]:4816", "localhost:4816", "[fe80::1%2]:1"] {
        let r = resolve("", &["--connect", good]);
        assert!(r.is_ok(), "{good}: {r:?}");
    }
}
