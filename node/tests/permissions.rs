//! Per-peer permissions in certificates (`partybus peer create --emit SEL
//! --listen SEL`): a sensor that may only emit `sensor.#` and listen to
//! `sensor.cmd.#`, on real QUIC on loopback.

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use partybus::{Bus, Config, PortSpec};
use partybus_pki::{KeyKind, Permissions};

async fn join(dir: &std::path::Path, name: &str, connect: Option<u16>) -> Bus {
    let mut cfg = Config::from_files(&dir.join("h.crt"), &dir.join(format!("h.{name}.crt")), &dir.join(format!("h.{name}.key"))).unwrap();
    cfg.port = PortSpec::any();
    cfg.bind = Some(LOCALHOST.into());
    if let Some(p) = connect {
        cfg = cfg.connect([format!("127.0.0.1:{p}")]);
    }
    Bus::join(cfg).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sensor_emits_and_hears_only_what_its_certificate_allows() {
    let d = tempfile::tempdir().unwrap();
    partybus_pki::create_hood("h", d.path(), 30).unwrap();
    partybus_pki::create_peer("h", "hub", d.path(), 30).unwrap();
    let perms = Permissions { emit: Some(vec!["sensor.#".into()]), listen: Some(vec!["sensor.cmd.#".into()]) };
    partybus_pki::create_peer_with_permissions("h", "sensor", d.path(), 30, KeyKind::EcdsaP256, &perms).unwrap();
    let info = partybus_pki::CertInfo::from_file(&d.path().join("h.sensor.crt")).unwrap();
    assert_eq!(info.permissions.as_ref(), Some(&perms));
    assert!(info.to_string().contains("permissions: may emit sensor.#; may listen to sensor.cmd.#"), "{info}");

    let hub = join(d.path(), "hub", None).await;
    let sensor = join(d.path(), "sensor", Some(hub.port())).await;
    wait_neighbours(&hub, 1).await;
    let heard = Arc::new(Mutex::new(Vec::<String>::new()));
    let h = heard.clone();
    let _l = hub.on("#", move |ev| h.lock().unwrap().push(ev.name().to_owned())).unwrap();
    let sensor_heard = Arc::new(Mutex::new(Vec::<String>::new()));
    let h = sensor_heard.clone();
    let _s = sensor.on("#", move |ev| h.lock().unwrap().push(ev.name().to_owned())).unwrap();
    wait_listeners(&sensor, "anything", 2).await;

    // What the sensor emits: only sensor.# reaches the hub's handlers.
    for name in ["sensor.kitchen.temp", "alarm.fire", "sensor.kitchen.temp"] {
        sensor.emit(name, &1).await.unwrap();
    }
    assert!(wait_until(|| heard.lock().unwrap().len() == 2, GUARD).await, "{:?}", heard.lock().unwrap());
    assert!(wait_until(|| hub.forbidden_events() == 1, GUARD).await, "{}", hub.forbidden_events());
    assert_eq!(*heard.lock().unwrap(), vec!["sensor.kitchen.temp", "sensor.kitchen.temp"]);

    // What the hub emits: the sensor listens to everything, but only
    // sensor.cmd.# is routed to it (nor is it counted for the rest).
    assert_eq!(hub.emit("chat.lobby", &1).await.unwrap(), 1, "the hub's own listener only");
    assert_eq!(hub.emit("sensor.cmd.reboot", &1).await.unwrap(), 2);
    assert!(wait_until(|| sensor_heard.lock().unwrap().iter().any(|n| n == "sensor.cmd.reboot"), GUARD).await);
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(!sensor_heard.lock().unwrap().iter().any(|n| n == "chat.lobby"), "{:?}", sensor_heard.lock().unwrap());
    // A subscription to a name it may not hear is refused outright.
    let _c = sensor.on("chat.lobby", |_| {}).unwrap();
    let _ok = sensor.on("sensor.cmd.stop", |_| {}).unwrap();
    wait_listeners(&hub, "sensor.cmd.stop", 3).await;
    assert_eq!(hub.listeners("chat.lobby").unwrap().len(), 1, "the hub's own only");
    sensor.leave().await;
    hub.leave().await;
}
