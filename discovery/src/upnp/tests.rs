use super::*;

fn sa(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

#[test]
fn uptime_from_get_status_info() {
    let body = b"<s:Envelope><s:Body><u:GetStatusInfoResponse xmlns:u=\"urn:schemas-upnp-org:service:WANIPConnection:1\">\
<NewConnectionStatus>Connected</NewConnectionStatus><NewLastConnectionError>ERROR_NONE</NewLastConnectionError>\
<NewUptime>42</NewUptime></u:GetStatusInfoResponse></s:Body></s:Envelope>";
    assert_eq!(parse_uptime(body), Ok(42));
    assert!(parse_uptime(b"<NewUptime>soon</NewUptime>").unwrap_err().contains("not a number"));
    assert!(parse_uptime(b"<x/>").is_err());
}

#[test]
fn urls() {
    assert_eq!(
        parse_http_url("http://198.18.0.1:5000/rootDesc.xml").unwrap(),
        HttpUrl { host: "198.18.0.1".into(), port: 5000, path: "/rootDesc.xml".into() }
    );
    assert_eq!(parse_http_url("http://[::1]/").unwrap().port, 80);
    assert_eq!(parse_http_url("http://router").unwrap().path, "/");
    assert!(parse_http_url("https://x/").is_err());
    assert_eq!(resolve_ref("/rootDesc.xml", "/ctl/IPConn"), "/ctl/IPConn");
    assert_eq!(resolve_ref("/igd/desc.xml", "ctl"), "/igd/ctl");
    assert_eq!(resolve_ref("/d.xml", "http://1.2.3.4:5/x"), "http://1.2.3.4:5/x");
}

const ROOT_DESC: &str = r#"<?xml version="1.0"?>
<root xmlns="urn:schemas-upnp-org:device-1-0"><specVersion><major>1</major><minor>0</minor></specVersion>
<device><deviceType>urn:schemas-upnp-org:device:InternetGatewayDevice:1</deviceType>
<serviceList><service><serviceType>urn:schemas-upnp-org:service:Layer3Forwarding:1</serviceType>
<controlURL>/ctl/L3F</controlURL><SCPDURL>/L3F.xml</SCPDURL></service></serviceList>
<deviceList><device><deviceType>urn:schemas-upnp-org:device:WANDevice:1</deviceType>
<deviceList><device><deviceType>urn:schemas-upnp-org:device:WANConnectionDevice:1</deviceType>
<serviceList><service><serviceType>urn:schemas-upnp-org:service:WANIPConnection:1</serviceType>
<serviceId>urn:upnp-org:serviceId:WANIPConn1</serviceId><controlURL>/ctl/IPConn</controlURL>
<eventSubURL>/evt/IPConn</eventSubURL><SCPDURL>/WANIPCn.xml</SCPDURL></service></serviceList>
</device></deviceList></device></deviceList></device></root>"#;

const SCPD: &str = r#"<?xml version="1.0"?>
<scpd xmlns="urn:schemas-upnp-org:service-1-0"><actionList>
<action><name>AddPortMapping</name><argumentList>
<argument><name>NewRemoteHost</name><direction>in</direction></argument>
<argument><name>NewExternalPort</name><direction>in</direction></argument>
<argument><name>NewProtocol</name><direction>in</direction></argument>
</argumentList></action>
<action><name>GetExternalIPAddress</name><argumentList>
<argument><name>NewExternalIPAddress</name><direction>out</direction></argument>
</argumentList></action>
</actionList></scpd>"#;

#[test]
fn parses_miniupnpd_style_descriptions() {
    let w = parse_root_desc(ROOT_DESC.as_bytes()).unwrap();
    assert_eq!(w.service_type, "urn:schemas-upnp-org:service:WANIPConnection:1");
    assert_eq!(w.control_url, "/ctl/IPConn");
    assert_eq!(w.scpd_url, "/WANIPCn.xml");
    assert_eq!(w.url_base, None);
    let s = parse_scpd(SCPD.as_bytes()).unwrap();
    assert_eq!(s["AddPortMapping"], vec!["NewRemoteHost", "NewExternalPort", "NewProtocol"]);
    assert!(s["GetExternalIPAddress"].is_empty());
    assert!(parse_root_desc(b"<root/>").is_err());
}

/// Against a fake gateway on loopback: description fetch, mapping,
/// renewal, external address report, removal on stop.
#[tokio::test]
async fn maps_against_fake_gateway_on_loopback() {
    use crate::DiscoveryEvent;
    let fake = fake_igd::FakeIgd::start("8.8.8.8").await;
    let (sink, mut rx) = DiscoverySink::channel(16);
    let (handle, stop) = StopSignal::new();
    let ctx = DiscoveryContext {
        hood_fingerprint: "00".repeat(32),
        node_id: "11".repeat(16),
        cert_name: "t".into(),
        port: 4816,
        reachable: tokio::sync::watch::channel(vec![]).1,
        relay_routes: tokio::sync::watch::channel(vec![]).1,
        allow_non_global: false,
    };
    let svc = Box::new(UpnpDiscovery::new(UpnpOptions {
        gateway_url: Some(format!("http://{}/rootDesc.xml", fake.addr)),
        lease: Duration::from_secs(2),
        bind_ip: Some("127.0.0.1".parse().unwrap()),
        ..Default::default()
    }));
    let task = tokio::spawn(svc.start(ctx, sink, stop));
    let ev = timeout(Duration::from_secs(5), rx.recv()).await.unwrap().unwrap();
    assert_eq!(ev, DiscoveryEvent::External { addr: sa("8.8.8.8:4816"), source: "upnp".into() });
    // Renewed at half-life (1 s): wait for a second AddPortMapping.
    timeout(Duration::from_secs(5), async {
        while fake.count("AddPortMapping") < 2 {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .expect("renewal");
    assert!(fake.last_add().contains("<NewInternalClient>127.0.0.1</NewInternalClient>"), "{}", fake.last_add());
    assert!(fake.last_add().contains("<NewLeaseDuration>2</NewLeaseDuration>"));
    handle.stop();
    timeout(Duration::from_secs(5), task).await.unwrap().unwrap();
    assert_eq!(fake.count("DeletePortMapping"), 1);
    let ev = rx.recv().await.unwrap();
    assert_eq!(ev, DiscoveryEvent::ExternalLost { addr: sa("8.8.8.8:4816"), source: "upnp".into() });
}

#[tokio::test]
async fn second_nat_is_not_advertised_and_725_falls_back() {
    let fake = fake_igd::FakeIgd::start("100.64.0.7").await;
    let (sink, mut rx) = DiscoverySink::channel(16);
    let (handle, stop) = StopSignal::new();
    let mut ctx = DiscoveryContext {
        hood_fingerprint: "00".repeat(32),
        node_id: "11".repeat(16),
        cert_name: "t".into(),
        port: 4816,
        reachable: tokio::sync::watch::channel(vec![]).1,
        relay_routes: tokio::sync::watch::channel(vec![]).1,
        allow_non_global: false,
    };
    let opts = UpnpOptions {
        gateway_url: Some(format!("http://{}/rootDesc.xml", fake.addr)),
        bind_ip: Some("127.0.0.1".parse().unwrap()),
        ..Default::default()
    };
    let task = tokio::spawn(Box::new(UpnpDiscovery::new(opts.clone())).start(ctx.clone(), sink.clone(), stop));
    timeout(Duration::from_secs(5), async {
        while fake.count("GetExternalIPAddress") < 1 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(fake.count("AddPortMapping"), 0, "no mapping behind a second NAT");
    assert!(rx.try_recv().is_err());
    handle.stop();
    timeout(Duration::from_secs(5), task).await.unwrap().unwrap();

    // Labs: allowed; and the router only does permanent leases (725).
    fake.set_permanent_only();
    ctx.allow_non_global = true;
    let (handle, stop) = StopSignal::new();
    let task = tokio::spawn(Box::new(UpnpDiscovery::new(opts)).start(ctx, sink, stop));
    let ev = timeout(Duration::from_secs(5), rx.recv()).await.unwrap().unwrap();
    assert_eq!(ev, crate::DiscoveryEvent::External { addr: sa("100.64.0.7:4816"), source: "upnp".into() });
    assert!(fake.last_add().contains("<NewLeaseDuration>0</NewLeaseDuration>"));
    handle.stop();
    timeout(Duration::from_secs(5), task).await.unwrap().unwrap();
}

#[tokio::test]
async fn conflict_tries_other_ports() {
    let fake = fake_igd::FakeIgd::start("8.8.8.8").await;
    fake.set_conflicts(2);
    let (sink, mut rx) = DiscoverySink::channel(16);
    let (handle, stop) = StopSignal::new();
    let ctx = DiscoveryContext {
        hood_fingerprint: "00".repeat(32),
        node_id: "11".repeat(16),
        cert_name: "t".into(),
        port: 4816,
        reachable: tokio::sync::watch::channel(vec![]).1,
        relay_routes: tokio::sync::watch::channel(vec![]).1,
        allow_non_global: false,
    };
    let opts = UpnpOptions {
        gateway_url: Some(format!("http://{}/rootDesc.xml", fake.addr)),
        bind_ip: Some("127.0.0.1".parse().unwrap()),
        ..Default::default()
    };
    let task = tokio::spawn(Box::new(UpnpDiscovery::new(opts)).start(ctx, sink, stop));
    let ev = timeout(Duration::from_secs(5), rx.recv()).await.unwrap().unwrap();
    let crate::DiscoveryEvent::External { addr, .. } = ev else { panic!("{ev:?}") };
    assert_eq!(addr.ip(), "8.8.8.8".parse::<IpAddr>().unwrap());
    assert_ne!(addr.port(), 4816, "the preferred port was taken");
    assert_eq!(fake.count("AddPortMapping"), 3);
    handle.stop();
    timeout(Duration::from_secs(5), task).await.unwrap().unwrap();
}

/// A minimal IGD on 127.0.0.1 (reports an external address; nothing is sent to it).
mod fake_igd;
