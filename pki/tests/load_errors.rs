//! Every way loading can go wrong gives its own error that names the file.

mod common;

use common::{write, TestHood};
use partybus_pki::{CertInfo, Hood, Identity, PkiError};

/// The message names `file` and says something about `fix`.
#[track_caller]
fn says(err: &PkiError, file: &str, fix: &str) {
    let text = err.to_string();
    assert!(text.contains(file), "error does not name {file}: {text}");
    assert!(text.contains(fix), "error does not say {fix:?}: {text}");
    eprintln!("ok: {text}");
}

#[test]
fn missing_file() {
    let lab = TestHood::new("lab");
    let missing = lab.path("nope.crt");
    let err = Hood::load(&missing).unwrap_err();
    assert!(matches!(err, PkiError::NotFound { .. }));
    says(&err, "nope.crt", "not found");
    lab.peer("me");
    let err = Identity::load(&lab.path("lab.me.crt"), &lab.path("lab.nokey.key"), &lab.hood).unwrap_err();
    assert!(matches!(err, PkiError::NotFound { .. }));
    says(&err, "lab.nokey.key", "check the path");
    assert!(matches!(CertInfo::from_file(&missing), Err(PkiError::NotFound { .. })));
}

#[test]
fn unreadable_file() {
    let lab = TestHood::new("lab");
    // A directory cannot be read as a file (even by root, unlike chmod 000).
    std::fs::create_dir(lab.path("dir.crt")).unwrap();
    let err = Hood::load(&lab.path("dir.crt")).unwrap_err();
    assert!(matches!(err, PkiError::Unreadable { .. }), "{err}");
    says(&err, "dir.crt", "cannot read");
}

#[test]
fn not_pem() {
    let lab = TestHood::new("lab");
    // DER instead of PEM
    let der = pem::parse(std::fs::read(lab.path("lab.crt")).unwrap()).unwrap().into_contents();
    write(&lab.path("lab.der"), &der);
    let err = Hood::load(&lab.path("lab.der")).unwrap_err();
    assert!(matches!(err, PkiError::NotPem { .. }), "{err}");
    says(&err, "lab.der", "openssl x509 -inform DER");
    // a text file
    write(&lab.path("notes.txt"), "just some notes\n");
    let err = Hood::load(&lab.path("notes.txt")).unwrap_err();
    assert!(matches!(err, PkiError::NotPem { .. }), "{err}");
    // a key file that is not PEM
    lab.peer("me");
    let err = Identity::load(&lab.path("lab.me.crt"), &lab.path("notes.txt"), &lab.hood).unwrap_err();
    assert!(matches!(err, PkiError::NotPem { .. }), "{err}");
    says(&err, "notes.txt", "openssl pkey -inform DER");
    // an empty file
    write(&lab.path("empty.crt"), "");
    assert!(matches!(Hood::load(&lab.path("empty.crt")), Err(PkiError::NotPem { .. })));
    // broken PEM
    write(&lab.path("broken.crt"), "-----BEGIN CERTIFICATE-----\n!!!!\n-----END CERTIFICATE-----\n");
    let err = Hood::load(&lab.path("broken.crt")).unwrap_err();
    assert!(matches!(err, PkiError::InvalidCertificate { .. } | PkiError::NotPem { .. }), "{err}");
    // PEM with garbage inside
    write(&lab.path("garbage.crt"), pem::encode(&pem::Pem::new("CERTIFICATE", b"not a certificate".to_vec())));
    let err = Hood::load(&lab.path("garbage.crt")).unwrap_err();
    assert!(matches!(err, PkiError::InvalidCertificate { .. }), "{err}");
    says(&err, "garbage.crt", "not a valid X.509 certificate");
    let err = CertInfo::from_file(&lab.path("garbage.crt")).unwrap_err();
    assert!(matches!(err, PkiError::InvalidCertificate { .. }), "{err}");
    // garbage key
    write(&lab.path("garbage.key"), pem::encode(&pem::Pem::new("PRIVATE KEY", b"not a key".to_vec())));
    let err = Identity::load(&lab.path("lab.me.crt"), &lab.path("garbage.key"), &lab.hood).unwrap_err();
    assert!(matches!(err, PkiError::InvalidKey { .. }), "{err}");
    says(&err, "garbage.key", "PKCS#8");
}

#[test]
fn wrong_pem_label() {
    let lab = TestHood::new("lab");
    lab.peer("me");
    // key where a cert is expected
    let err = Hood::load(&lab.path("lab.key")).unwrap_err();
    assert!(matches!(err, PkiError::WrongPemLabel { .. }), "{err}");
    says(&err, "lab.key", "PRIVATE KEY");
    // swapped certificate and key
    let err = Identity::load(&lab.path("lab.me.key"), &lab.path("lab.me.crt"), &lab.hood).unwrap_err();
    assert!(matches!(err, PkiError::WrongPemLabel { .. }), "{err}");
    says(&err, "lab.me.key", "swap");
    let err = Identity::load(&lab.path("lab.me.crt"), &lab.path("lab.me.crt"), &lab.hood).unwrap_err();
    assert!(matches!(err, PkiError::WrongPemLabel { .. }), "{err}");
    says(&err, "lab.me.crt", "private key");
    assert!(matches!(CertInfo::from_file(&lab.path("lab.me.key")), Err(PkiError::WrongPemLabel { .. })));
}

#[test]
fn key_does_not_match_cert() {
    let lab = TestHood::new("lab");
    lab.peer("alice");
    lab.peer("bob");
    let err = Identity::load(&lab.path("lab.alice.crt"), &lab.path("lab.bob.key"), &lab.hood).unwrap_err();
    assert!(matches!(err, PkiError::KeyMismatch { .. }), "{err}");
    says(&err, "lab.bob.key", "does not belong");
    says(&err, "lab.alice.crt", "");
}

#[test]
fn cert_not_signed_by_hood() {
    let lab = TestHood::new("lab");
    let other = TestHood::new("other");
    other.peer("stranger");
    let err = Identity::load(&other.path("other.stranger.crt"), &other.path("other.stranger.key"), &lab.hood).unwrap_err();
    assert!(matches!(err, PkiError::NotSignedByHood { .. }), "{err}");
    says(&err, "other.stranger.crt", "not issued by hood \"lab\"");
    says(&err, "other.stranger.crt", "CN=other");

    // A second hood that happens to have the same name: issuer names match,
    // signatures do not.
    let twin = TestHood::new("lab");
    twin.peer("twin");
    let err = Identity::load(&twin.path("lab.twin.crt"), &twin.path("lab.twin.key"), &lab.hood).unwrap_err();
    assert!(matches!(err, PkiError::NotSignedByHood { .. }), "{err}");
    says(&err, "lab.twin.crt", "did not sign it");

    // self-signed
    let (cert, key) = common::self_signed("me", "lab");
    let err = Identity::from_pem(cert.as_bytes(), key.as_bytes(), &lab.hood, "mem").unwrap_err();
    assert!(matches!(err, PkiError::NotSignedByHood { .. }), "{err}");
    says(&err, "mem (certificate)", "not issued by hood");
}

#[test]
fn expired() {
    let lab = TestHood::new("lab");
    let (cert, key) = lab.expired_peer("old");
    write(&lab.path("lab.old.crt"), &cert);
    write(&lab.path("lab.old.key"), &key);
    let err = Identity::load(&lab.path("lab.old.crt"), &lab.path("lab.old.key"), &lab.hood).unwrap_err();
    assert!(matches!(err, PkiError::Expired { .. }), "{err}");
    says(&err, "lab.old.crt", "expired on");
    // CertInfo still describes it.
    assert!(CertInfo::from_file(&lab.path("lab.old.crt")).is_ok());
}

#[test]
fn not_yet_valid() {
    let lab = TestHood::new("lab");
    let (cert, key) = lab.future_peer("early");
    let err = Identity::from_pem(cert.as_bytes(), key.as_bytes(), &lab.hood, "early").unwrap_err();
    assert!(matches!(err, PkiError::NotYetValid { .. }), "{err}");
    says(&err, "early (certificate)", "clock");
}

#[test]
fn expired_and_future_hoods() {
    let now = time::OffsetDateTime::now_utc();
    for (label, nb, na, expired) in [
        ("expired", now - time::Duration::days(9), now - time::Duration::days(1), true),
        ("future", now + time::Duration::days(1), now + time::Duration::days(9), false),
    ] {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = common::peer_params(label, label, nb, na);
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params.extended_key_usages.clear();
        params.key_usages = vec![rcgen::KeyUsagePurpose::KeyCertSign];
        let cert = params.self_signed(&key).unwrap();
        let err = Hood::from_pem(cert.pem().as_bytes(), label).unwrap_err();
        if expired {
            assert!(matches!(err, PkiError::Expired { .. }), "{err}");
        } else {
            assert!(matches!(err, PkiError::NotYetValid { .. }), "{err}");
        }
    }
}

#[test]
fn peer_cert_is_not_a_ca() {
    let lab = TestHood::new("lab");
    lab.peer("me");
    let err = Hood::load(&lab.path("lab.me.crt")).unwrap_err();
    assert!(matches!(err, PkiError::NotACa { .. }), "{err}");
    says(&err, "lab.me.crt", "pass the hood's certificate");
    says(&err, "lab.me.crt", "CA:FALSE");

    // v3 without basicConstraints at all
    let (cert, _) = common::self_signed("x", "y");
    let err = Hood::from_pem(cert.as_bytes(), "plain.crt").unwrap_err();
    assert!(matches!(err, PkiError::NotACa { .. }), "{err}");
    says(&err, "plain.crt", "no basicConstraints");
}

#[test]
fn hood_cert_is_not_a_peer() {
    let lab = TestHood::new("lab");
    let err = Identity::load(&lab.path("lab.crt"), &lab.path("lab.key"), &lab.hood).unwrap_err();
    assert!(matches!(err, PkiError::IsCa { .. }), "{err}");
    says(&err, "lab.crt", "not a peer certificate");
}

#[test]
fn encrypted_key() {
    let lab = TestHood::new("lab");
    lab.peer("me");
    let enc = "-----BEGIN ENCRYPTED PRIVATE KEY-----\nMIIBAA==\n-----END ENCRYPTED PRIVATE KEY-----\n";
    write(&lab.path("lab.me.enc"), enc);
    let err = Identity::load(&lab.path("lab.me.crt"), &lab.path("lab.me.enc"), &lab.hood).unwrap_err();
    assert!(matches!(err, PkiError::EncryptedKey { .. }), "{err}");
    says(&err, "lab.me.enc", "encrypted private keys are not supported yet");
    says(&err, "lab.me.enc", "openssl pkey -in");

    // A real one made by openssl, when available.
    if std::process::Command::new("openssl").arg("version").output().is_ok() {
        let status = std::process::Command::new("openssl")
            .args(["pkey", "-aes256", "-passout", "pass:secret", "-in"])
            .arg(lab.path("lab.me.key"))
            .arg("-out")
            .arg(lab.path("lab.me.key.enc"))
            .status()
            .unwrap();
        assert!(status.success());
        let err = Identity::load(&lab.path("lab.me.crt"), &lab.path("lab.me.key.enc"), &lab.hood).unwrap_err();
        assert!(matches!(err, PkiError::EncryptedKey { .. }), "{err}");
        // `openssl ec -traditional` writes Proc-Type: 4,ENCRYPTED
        let status = std::process::Command::new("openssl")
            .args(["ec", "-aes256", "-passout", "pass:secret", "-in"])
            .arg(lab.path("lab.me.key"))
            .arg("-out")
            .arg(lab.path("lab.me.key.enc2"))
            .status()
            .unwrap();
        assert!(status.success());
        let text = std::fs::read_to_string(lab.path("lab.me.key.enc2")).unwrap();
        assert!(text.contains("Proc-Type: 4,ENCRYPTED"), "{text}");
        let err = Identity::load(&lab.path("lab.me.crt"), &lab.path("lab.me.key.enc2"), &lab.hood).unwrap_err();
        assert!(matches!(err, PkiError::EncryptedKey { .. }), "{err}");
    }
}

#[test]
fn errors_never_panic_on_random_input() {
    // A few odd inputs through every entry point.
    let inputs: [&[u8]; 6] = [
        b"",
        b"\x00\x01\x02",
        b"-----BEGIN CERTIFICATE-----\n",
        b"-----BEGIN CERTIFICATE-----\nMA==\n-----END CERTIFICATE-----\n",
        b"-----BEGIN PRIVATE KEY-----\nMA==\n-----END PRIVATE KEY-----\n",
        b"-----BEGIN EC PRIVATE KEY-----\nMAMCAQE=\n-----END EC PRIVATE KEY-----\n",
    ];
    let lab = TestHood::new("lab");
    for input in inputs {
        assert!(Hood::from_pem(input, "x").is_err());
        assert!(CertInfo::from_pem(input, "x").is_err());
        assert!(Identity::from_pem(input, input, &lab.hood, "x").is_err());
        assert!(partybus_pki::peer_name(&rustls_pki_types::CertificateDer::from(input.to_vec())).is_none());
    }
}
