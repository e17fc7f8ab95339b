//! create_hood / create_peer: files, names, modes, contents, refusals.

mod common;

use std::process::Command;

use partybus_pki::{
    create_hood, create_hood_with, create_peer, create_peer_with, CertInfo, Hood, Identity, KeyKind, PkiError, DEFAULT_HOOD_DAYS,
    DEFAULT_PEER_DAYS,
};

#[test]
fn hood_and_peer_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let hood_files = create_hood("lab", dir.path(), DEFAULT_HOOD_DAYS).unwrap();
    assert_eq!(hood_files.cert, dir.path().join("lab.crt"));
    assert_eq!(hood_files.key, dir.path().join("lab.key"));
    let peer_files = create_peer("lab", "alice", dir.path(), DEFAULT_PEER_DAYS).unwrap();
    assert_eq!(peer_files.cert, dir.path().join("lab.alice.crt"));
    assert_eq!(peer_files.key, dir.path().join("lab.alice.key"));

    let hood = Hood::load(&hood_files.cert).unwrap();
    assert_eq!(hood.name(), "lab");
    assert_eq!(hood.subject(), "CN=lab, O=lab");
    assert_eq!(hood.key_kind(), KeyKind::EcdsaP256);
    assert_eq!(hood.fingerprint().len(), 64);
    assert!(hood.fingerprint().chars().all(|c| matches!(c, '0'..='9' | 'a'..='f')));

    let me = Identity::load(&peer_files.cert, &peer_files.key, &hood).unwrap();
    assert_eq!(me.name(), "alice");
    assert_eq!(me.hood_name(), "lab");
    assert_eq!(me.key_kind(), KeyKind::EcdsaP256);
    assert_eq!(me.hood_fingerprint(), hood.fingerprint());
    assert!(matches!(me.key_der(), rustls_pki_types::PrivateKeyDer::Pkcs8(_)));
    assert_eq!(partybus_pki::peer_name(me.cert_der()).as_deref(), Some("alice"));

    let hood_info = CertInfo::from_file(&hood_files.cert).unwrap();
    assert!(hood_info.is_ca);
    assert_eq!(hood_info.cn.as_deref(), Some("lab"));
    assert_eq!(hood_info.o.as_deref(), Some("lab"));
    assert_eq!(hood_info.fingerprint, hood.fingerprint());
    assert_eq!(hood_info.key_type, "ECDSA P-256");
    assert!(hood_info.to_string().contains(&format!("hood fingerprint: {}", hood.fingerprint())));

    let peer_info = CertInfo::from_file(&peer_files.cert).unwrap();
    assert!(!peer_info.is_ca);
    assert_eq!(peer_info.cn.as_deref(), Some("alice"));
    assert_eq!(peer_info.o.as_deref(), Some("lab"));
    assert_eq!(peer_info.subject, "CN=alice, O=lab");
    assert_eq!(peer_info.issuer, "CN=lab, O=lab");
    assert!(!peer_info.to_string().contains("hood fingerprint"));
    // RFC 3339, and the validity is the requested number of days (+ 1 hour of slack before now).
    let nb = time::OffsetDateTime::parse(&peer_info.not_before, &time::format_description::well_known::Rfc3339).unwrap();
    let na = time::OffsetDateTime::parse(&peer_info.not_after, &time::format_description::well_known::Rfc3339).unwrap();
    let days = (na - nb).whole_hours();
    assert_eq!(days, i64::from(DEFAULT_PEER_DAYS) * 24 + 1);
    // serde works
    let json = serde_json_like(&peer_info);
    assert!(json.contains("alice"));
}

/// serde_json is not a dependency; serialize through a tiny check instead:
/// the Serialize derive exists and field names are as documented.
fn serde_json_like(info: &CertInfo) -> String {
    fn assert_serialize<T: serde::Serialize>(_: &T) {}
    assert_serialize(info);
    format!("{info:?}")
}

#[cfg(unix)]
#[test]
fn keys_are_0600() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let hood = create_hood("lab", dir.path(), 10).unwrap();
    let peer = create_peer("lab", "bob", dir.path(), 10).unwrap();
    for key in [&hood.key, &peer.key] {
        let mode = std::fs::metadata(key).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{}", key.display());
    }
    let mode = std::fs::metadata(&peer.cert).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o644);
}

#[test]
fn refuses_to_overwrite() {
    let dir = tempfile::tempdir().unwrap();
    create_hood("lab", dir.path(), 10).unwrap();
    let before = std::fs::read(dir.path().join("lab.key")).unwrap();
    match create_hood("lab", dir.path(), 10) {
        Err(PkiError::AlreadyExists { path }) => assert_eq!(path, dir.path().join("lab.crt")),
        other => panic!("{other:?}"),
    }
    assert_eq!(std::fs::read(dir.path().join("lab.key")).unwrap(), before);

    // Only the key is left over: still refused, naming the key.
    std::fs::remove_file(dir.path().join("lab.crt")).unwrap();
    let err = create_hood("lab", dir.path(), 10).unwrap_err();
    assert!(matches!(&err, PkiError::AlreadyExists { path } if path.ends_with("lab.key")));
    assert!(err.to_string().contains("lab.key"), "{err}");

    let dir = tempfile::tempdir().unwrap();
    create_hood("lab", dir.path(), 10).unwrap();
    create_peer("lab", "carol", dir.path(), 10).unwrap();
    let err = create_peer("lab", "carol", dir.path(), 10).unwrap_err();
    assert!(matches!(&err, PkiError::AlreadyExists { path } if path.ends_with("lab.carol.crt")));
    assert!(err.to_string().contains("refusing to overwrite"), "{err}");
}

#[test]
fn ed25519_hood_and_peers_mix_with_ecdsa() {
    let dir = tempfile::tempdir().unwrap();
    create_hood_with("ed", dir.path(), 10, KeyKind::Ed25519).unwrap();
    let a = create_peer_with("ed", "a", dir.path(), 10, KeyKind::Ed25519).unwrap();
    let b = create_peer("ed", "b", dir.path(), 10).unwrap();
    let hood = Hood::load(&dir.path().join("ed.crt")).unwrap();
    assert_eq!(hood.key_kind(), KeyKind::Ed25519);
    let a = Identity::load(&a.cert, &a.key, &hood).unwrap();
    let b = Identity::load(&b.cert, &b.key, &hood).unwrap();
    assert_eq!(a.key_kind(), KeyKind::Ed25519);
    assert_eq!(b.key_kind(), KeyKind::EcdsaP256);
    let (ca, _) = common::configs(&a, &hood);
    let (_, sb) = common::configs(&b, &hood);
    common::handshake(ca, sb).unwrap();
    assert_eq!(CertInfo::from_file(&dir.path().join("ed.a.crt")).unwrap().key_type, "Ed25519");
}

#[test]
fn rsa_cannot_be_created() {
    let dir = tempfile::tempdir().unwrap();
    let err = create_hood_with("x", dir.path(), 10, KeyKind::Rsa { bits: 4096 }).unwrap_err();
    assert!(matches!(err, PkiError::Generate { .. }));
    assert!(err.to_string().contains("EcdsaP256"), "{err}");
    assert!(!dir.path().join("x.key").exists());
}

#[test]
fn bad_names_and_days() {
    let dir = tempfile::tempdir().unwrap();
    for name in ["", "../evil", ".hidden", "a/b"] {
        assert!(matches!(create_hood(name, dir.path(), 10), Err(PkiError::InvalidName { .. })), "{name:?}");
    }
    assert!(matches!(create_hood("ok", dir.path(), 0), Err(PkiError::Generate { .. })));
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
}

#[test]
fn peer_needs_the_hood_files() {
    let dir = tempfile::tempdir().unwrap();
    let err = create_peer("nohood", "x", dir.path(), 10).unwrap_err();
    assert!(matches!(&err, PkiError::NotFound { path } if path.ends_with("nohood.crt")), "{err}");

    // Hood key that does not belong to the hood certificate.
    create_hood("a", dir.path(), 10).unwrap();
    create_hood("b", dir.path(), 10).unwrap();
    std::fs::copy(dir.path().join("b.key"), dir.path().join("a.key")).unwrap();
    let err = create_peer("a", "x", dir.path(), 10).unwrap_err();
    assert!(matches!(err, PkiError::KeyMismatch { .. }), "{err}");
    assert!(!dir.path().join("a.x.crt").exists());
    assert!(!dir.path().join("a.x.key").exists());
}

#[test]
fn missing_directory_is_a_write_error() {
    let dir = tempfile::tempdir().unwrap();
    let err = create_hood("lab", &dir.path().join("nope"), 10).unwrap_err();
    assert!(matches!(err, PkiError::Write { .. }), "{err}");
    assert!(err.to_string().contains("nope"), "{err}");
}

#[test]
fn dns_san_only_for_dns_names() {
    let dir = tempfile::tempdir().unwrap();
    create_hood("lab", dir.path(), 10).unwrap();
    let dns = create_peer("lab", "node-1.example", dir.path(), 10).unwrap();
    let spaced = create_peer("lab", "Bob's laptop", dir.path(), 10).unwrap();
    let san = |p: &std::path::Path| {
        let pem = std::fs::read(p).unwrap();
        let der = pem::parse(pem).unwrap().into_contents();
        let (_, cert) = x509_parser::parse_x509_certificate(&der).unwrap();
        cert.subject_alternative_name().unwrap().map(|s| format!("{:?}", s.value.general_names))
    };
    assert!(san(&dns.cert).unwrap().contains("node-1.example"));
    assert_eq!(san(&spaced.cert), None);
    let hood = Hood::load(&dir.path().join("lab.crt")).unwrap();
    let id = Identity::load(&spaced.cert, &spaced.key, &hood).unwrap();
    assert_eq!(id.name(), "Bob's laptop");
}

/// The fingerprint is what `openssl x509 -in HOOD.crt -outform DER | sha256sum` prints.
#[test]
fn fingerprint_matches_openssl() {
    common::require_openssl("the fingerprint comparison");
    let dir = tempfile::tempdir().unwrap();
    let files = create_hood("lab", dir.path(), 10).unwrap();
    let out =
        Command::new("sh").arg("-c").arg(format!("openssl x509 -in '{}' -outform DER | sha256sum", files.cert.display())).output().unwrap();
    assert!(out.status.success());
    let expected = String::from_utf8(out.stdout).unwrap();
    let expected = expected.split_whitespace().next().unwrap();
    let hood = Hood::load(&files.cert).unwrap();
    assert_eq!(hood.fingerprint(), expected);

    // openssl agrees on the contents, too.
    let text = Command::new("openssl").args(["x509", "-noout", "-text", "-in"]).arg(dir.path().join("lab.crt")).output().unwrap();
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(text.contains("CA:TRUE"), "{text}");
    assert!(text.contains("Certificate Sign, CRL Sign"), "{text}");
    let files = create_peer("lab", "alice", dir.path(), 10).unwrap();
    let verify = Command::new("openssl").args(["verify", "-CAfile"]).arg(dir.path().join("lab.crt")).arg(&files.cert).output().unwrap();
    assert!(verify.status.success(), "{}", String::from_utf8_lossy(&verify.stderr));
    let text = Command::new("openssl").args(["x509", "-noout", "-text", "-in"]).arg(&files.cert).output().unwrap();
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(text.contains("TLS Web Server Authentication, TLS Web Client Authentication"), "{text}");
    assert!(text.contains("Digital Signature"), "{text}");
    assert!(text.contains("Subject: CN = alice, O = lab"), "{text}");
}
