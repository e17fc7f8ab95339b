use super::*;

#[test]
fn short_names() {
    assert_eq!(short_part("LAN-mdns_1", 8), "lanmdns1");
    assert!(check_ifname("eth0").is_ok());
    assert!(check_ifname("a-very-long-name").is_err());
    assert!(check_ifname("").is_err());
}

#[test]
fn tail() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path().join("f");
    std::fs::write(&p, "1\n2\n3\n4\n").unwrap();
    assert_eq!(tail_of_file(&p, 2), "3\n4");
    assert_eq!(tail_of_file(&d.path().join("none"), 2), "");
}
