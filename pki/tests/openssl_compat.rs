//! Old tubemail PKIs: RSA 4096 hoods and peers made by openssl exactly as
//! the old scripts did, generated at test time (once per run of this test
//! binary). Without `openssl` these tests fail, naming the missing program.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use common::{assert_refused, configs, handshake, rogue_client, rogue_server, Side, TestHood};
use partybus_pki::{create_peer, CertInfo, Hood, Identity, KeyKind, PkiError};
use rustls::CertificateError;

struct Fixtures {
    dir: PathBuf,
}

impl Fixtures {
    fn path(&self, file: &str) -> PathBuf {
        self.dir.join(file)
    }

    fn hood(&self, name: &str) -> Hood {
        Hood::load(&self.path(&format!("{name}.crt"))).unwrap()
    }

    fn identity(&self, hood: &Hood, hood_name: &str, peer: &str) -> Identity {
        Identity::load(&self.path(&format!("{hood_name}.{peer}.crt")), &self.path(&format!("{hood_name}.{peer}.key")), hood)
            .unwrap_or_else(|e| panic!("{e}"))
    }

    fn read(&self, file: &str) -> String {
        std::fs::read_to_string(self.path(file)).unwrap()
    }
}

fn run(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl").args(args).current_dir(dir).output().expect("run openssl");
    assert!(out.status.success(), "openssl {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr));
}

/// Peer of `hood` the way `createPeer.sh` makes it: a key, a CSR, and
/// `openssl x509 -req` without an extension file.
fn openssl_peer(dir: &Path, hood: &str, peer: &str, bits: &str, subj: &str) {
    let key = format!("{hood}.{peer}.key");
    let csr = format!("{hood}.{peer}.csr");
    let crt = format!("{hood}.{peer}.crt");
    run(dir, &["req", "-newkey", &format!("rsa:{bits}"), "-nodes", "-keyout", &key, "-out", &csr, "-subj", subj]);
    run(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            &csr,
            "-CA",
            &format!("{hood}.crt"),
            "-CAkey",
            &format!("{hood}.key"),
            "-CAcreateserial",
            "-out",
            &crt,
            "-days",
            "1095",
        ],
    );
}

fn fixtures() -> &'static Fixtures {
    static FIXTURES: OnceLock<Fixtures> = OnceLock::new();
    FIXTURES.get_or_init(|| {
        common::require_openssl("the tubemail compatibility tests");
        let dir = tempfile::Builder::new().prefix("openssl-fixtures-").tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap().keep();
        let d = dir.as_path();

        // The hood, as in the old createHood script (without a pass phrase).
        run(
            d,
            &[
                "req",
                "-x509",
                "-newkey",
                "rsa:4096",
                "-nodes",
                "-keyout",
                "old.key",
                "-out",
                "old.crt",
                "-days",
                "3650",
                "-subj",
                "/CN=old/O=old",
            ],
        );
        // Peer 1: `req -newkey` + `x509 -req -CAcreateserial`.
        openssl_peer(d, "old", "rsa1", "4096", "/CN=rsa1/O=old");
        // Peer 2: exactly tubemail's createPeer.sh: genrsa (PKCS#1, as
        // openssl 1.x wrote it), req -new with the full subject, x509 -req -set_serial.
        run(d, &["genrsa", "-traditional", "-out", "old.rsa2.key", "4096"]);
        run(d, &["req", "-new", "-key", "old.rsa2.key", "-out", "old.rsa2.csr", "-subj", "/C=DE/ST=Berlin/L=Berlin/O=old/OU=Peer/CN=rsa2"]);
        run(
            d,
            &[
                "x509",
                "-req",
                "-days",
                "1095",
                "-in",
                "old.rsa2.csr",
                "-CA",
                "old.crt",
                "-CAkey",
                "old.key",
                "-out",
                "old.rsa2.crt",
                "-set_serial",
                "1598192575",
            ],
        );
        // Peer 3: an openssl EC key in SEC1 form (with an EC PARAMETERS block).
        run(d, &["ecparam", "-name", "prime256v1", "-genkey", "-out", "old.ec.key"]);
        run(d, &["req", "-new", "-key", "old.ec.key", "-out", "old.ec.csr", "-subj", "/CN=ec/O=old"]);
        run(
            d,
            &[
                "x509",
                "-req",
                "-in",
                "old.ec.csr",
                "-CA",
                "old.crt",
                "-CAkey",
                "old.key",
                "-CAcreateserial",
                "-out",
                "old.ec.crt",
                "-days",
                "30",
            ],
        );
        // Another hood with the same recipe (2048 bits to save time) and a peer.
        run(
            d,
            &[
                "req",
                "-x509",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-keyout",
                "else.key",
                "-out",
                "else.crt",
                "-days",
                "3650",
                "-subj",
                "/CN=else/O=else",
            ],
        );
        openssl_peer(d, "else", "stranger", "2048", "/CN=stranger/O=else");
        // A hood that is itself X.509 v1 (self-signed via `x509 -req -signkey`, as very old openssl made them).
        run(d, &["req", "-newkey", "rsa:2048", "-nodes", "-keyout", "v1.key", "-out", "v1.csr", "-subj", "/CN=v1/O=v1"]);
        run(d, &["x509", "-req", "-in", "v1.csr", "-signkey", "v1.key", "-out", "v1.crt", "-days", "3650"]);
        run(d, &["ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", "v1.p.key"]);
        run(d, &["req", "-new", "-key", "v1.p.key", "-out", "v1.p.csr", "-subj", "/CN=p/O=v1"]);
        run(
            d,
            &["x509", "-req", "-in", "v1.p.csr", "-CA", "v1.crt", "-CAkey", "v1.key", "-CAcreateserial", "-out", "v1.p.crt", "-days", "30"],
        );
        // Our ECDSA peer under the openssl hood.
        create_peer("old", "modern", d, 30).unwrap();
        create_peer("v1", "modern", d, 30).unwrap();
        Fixtures { dir }
    })
}

fn x509_version(path: &Path) -> u32 {
    let der = pem::parse(std::fs::read(path).unwrap()).unwrap().into_contents();
    let (_, cert) = x509_parser::parse_x509_certificate(&der).unwrap();
    cert.version().0 + 1
}

#[test]
fn openssl_makes_v1_peers_and_v3_hoods() {
    let f = fixtures();
    assert_eq!(x509_version(&f.path("old.crt")), 3, "req -x509 makes v3");
    assert_eq!(x509_version(&f.path("old.rsa1.crt")), 1, "x509 -req without -extfile makes v1");
    assert_eq!(x509_version(&f.path("old.rsa2.crt")), 1);
    assert_eq!(x509_version(&f.path("v1.crt")), 1);
    // and ours are v3
    assert_eq!(x509_version(&f.path("old.modern.crt")), 3);
    assert!(f.read("old.rsa2.key").contains("BEGIN RSA PRIVATE KEY"));
    assert!(f.read("old.rsa1.key").contains("BEGIN PRIVATE KEY"));
    assert!(f.read("old.ec.key").contains("BEGIN EC PRIVATE KEY"));
}

#[test]
fn loads_openssl_hood_and_peers() {
    let f = fixtures();
    let hood = f.hood("old");
    assert_eq!(hood.name(), "old");
    assert_eq!(hood.key_kind(), KeyKind::Rsa { bits: 4096 });
    assert_eq!(hood.key_kind().to_string(), "RSA 4096");

    let rsa1 = f.identity(&hood, "old", "rsa1");
    assert_eq!(rsa1.name(), "rsa1");
    assert_eq!(rsa1.key_kind(), KeyKind::Rsa { bits: 4096 });
    let rsa2 = f.identity(&hood, "old", "rsa2");
    assert_eq!(rsa2.name(), "rsa2");
    assert_eq!(rsa2.hood_name(), "old");
    assert!(matches!(rsa2.key_der(), rustls_pki_types::PrivateKeyDer::Pkcs1(_)));
    let ec = f.identity(&hood, "old", "ec");
    assert_eq!(ec.key_kind(), KeyKind::EcdsaP256);
    assert!(matches!(ec.key_der(), rustls_pki_types::PrivateKeyDer::Sec1(_)));
    let modern = f.identity(&hood, "old", "modern");
    assert_eq!(modern.key_kind(), KeyKind::EcdsaP256);

    // The v1 hood
    let v1 = f.hood("v1");
    assert_eq!(v1.name(), "v1");
    f.identity(&v1, "v1", "p");
    f.identity(&v1, "v1", "modern");
}

#[test]
fn fingerprint_is_openssl_sha256_of_der() {
    let f = fixtures();
    for hood in ["old", "v1"] {
        let out = Command::new("sh")
            .arg("-c")
            .arg(format!("openssl x509 -in {hood}.crt -outform DER | sha256sum"))
            .current_dir(&f.dir)
            .output()
            .unwrap();
        let text = String::from_utf8(out.stdout).unwrap();
        assert_eq!(f.hood(hood).fingerprint(), text.split_whitespace().next().unwrap());
    }
}

#[test]
fn our_peer_under_openssl_hood_verifies_with_openssl() {
    let f = fixtures();
    let out = Command::new("openssl")
        .args(["verify", "-CAfile", "old.crt", "old.modern.crt", "old.rsa1.crt", "old.rsa2.crt"])
        .current_dir(&f.dir)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let info = CertInfo::from_file(&f.path("old.modern.crt")).unwrap();
    assert_eq!(info.issuer, "CN=old, O=old");
    assert_eq!(info.o.as_deref(), Some("old"));
    let info = CertInfo::from_file(&f.path("old.crt")).unwrap();
    assert!(info.is_ca);
    assert_eq!(info.key_type, "RSA 4096");
    let info = CertInfo::from_file(&f.path("v1.crt")).unwrap();
    assert!(info.is_ca, "a self-signed v1 certificate counts as a CA");
    let info = CertInfo::from_file(&f.path("old.rsa2.crt")).unwrap();
    assert!(!info.is_ca);
    assert_eq!(info.cn.as_deref(), Some("rsa2"));
    assert_eq!(info.subject, "C=DE, ST=Berlin, L=Berlin, O=old, OU=Peer, CN=rsa2");
}

#[test]
fn ecdsa_and_rsa_peers_talk_both_ways() {
    let f = fixtures();
    let hood = f.hood("old");
    let modern = f.identity(&hood, "old", "modern");
    for old_peer in ["rsa1", "rsa2", "ec"] {
        let old = f.identity(&hood, "old", old_peer);
        let (mc, ms) = configs(&modern, &hood);
        let (oc, os) = configs(&old, &hood);
        let pair = handshake(mc, os).unwrap_or_else(|e| panic!("modern -> {old_peer}: {e:?}"));
        let seen = &pair.server.peer_certificates().unwrap()[0];
        assert_eq!(partybus_pki::peer_name(seen).as_deref(), Some("modern"));
        let pair = handshake(oc, ms).unwrap_or_else(|e| panic!("{old_peer} -> modern: {e:?}"));
        let seen = &pair.server.peer_certificates().unwrap()[0];
        assert_eq!(partybus_pki::peer_name(seen).as_deref(), Some(old_peer));
    }
    // two openssl v1 RSA peers with each other
    let rsa1 = f.identity(&hood, "old", "rsa1");
    let rsa2 = f.identity(&hood, "old", "rsa2");
    handshake(configs(&rsa1, &hood).0, configs(&rsa2, &hood).1).unwrap();
    // the v1 hood
    let v1 = f.hood("v1");
    let p = f.identity(&v1, "v1", "p");
    let m = f.identity(&v1, "v1", "modern");
    handshake(configs(&p, &v1).0, configs(&m, &v1).1).unwrap();
    handshake(configs(&m, &v1).0, configs(&p, &v1).1).unwrap();
}

#[test]
fn openssl_peer_of_another_hood_is_refused_both_ways() {
    let f = fixtures();
    let hood = f.hood("old");
    let me = f.identity(&hood, "old", "modern");
    let cert = f.read("else.stranger.crt");
    let key = f.read("else.stranger.key");
    let (my_client, my_server) = configs(&me, &hood);
    let unknown = |e: &CertificateError| *e == CertificateError::UnknownIssuer;
    assert_refused(handshake(rogue_client(&cert, &key), my_server), Side::Server, unknown);
    assert_refused(handshake(my_client, rogue_server(&cert, &key)), Side::Client, unknown);

    let err = Identity::load(&f.path("else.stranger.crt"), &f.path("else.stranger.key"), &hood).unwrap_err();
    assert!(matches!(err, PkiError::NotSignedByHood { .. }), "{err}");
    // An openssl RSA peer refuses our peer of another (ECDSA) hood, too.
    let other = TestHood::new("lab");
    let ours = other.peer("ours");
    let (ours_client, ours_server) = configs(&ours, &other.hood);
    let rsa1 = f.identity(&hood, "old", "rsa1");
    let (rsa_client, rsa_server) = configs(&rsa1, &hood);
    assert_refused(handshake(ours_client, rsa_server), Side::Client, unknown);
    assert_refused(handshake(rsa_client, ours_server), Side::Client, unknown);
}

#[test]
fn openssl_rsa_peer_refuses_self_signed_and_expired_both_ways() {
    let f = fixtures();
    let hood = f.hood("old");
    let rsa1 = f.identity(&hood, "old", "rsa1");

    // self-signed with the hood's subject (openssl-made)
    run(
        &f.dir,
        &[
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-keyout",
            "fake.key",
            "-out",
            "fake.crt",
            "-days",
            "30",
            "-subj",
            "/CN=old/O=old",
        ],
    );
    let (cert, key) = (f.read("fake.crt"), f.read("fake.key"));
    let (c, s) = configs(&rsa1, &hood);
    let bad = |e: &CertificateError| *e == CertificateError::BadSignature;
    assert_refused(handshake(rogue_client(&cert, &key), s), Side::Server, bad);
    assert_refused(handshake(c, rogue_server(&cert, &key)), Side::Client, bad);

    // expired and not yet valid, signed by the openssl RSA hood (with rcgen:
    // openssl 3.0's `x509` has no -not_before/-not_after).
    let hood_key = rcgen::KeyPair::from_pkcs8_pem_and_sign_algo(&f.read("old.key"), &rcgen::PKCS_RSA_SHA256).unwrap();
    let issuer = rcgen::Issuer::from_ca_cert_pem(&f.read("old.crt"), hood_key).unwrap();
    let now = time::OffsetDateTime::now_utc();
    let day = time::Duration::days(1);
    let make = |nb, na| {
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = common::peer_params("gone", "old", nb, na).signed_by(&key, &issuer).unwrap();
        (cert.pem(), key.serialize_pem())
    };
    let (cert, key) = make(now - day * 30, now - day);
    std::fs::write(f.path("old.gone.crt"), &cert).unwrap();
    std::fs::write(f.path("old.gone.key"), &key).unwrap();
    let (c, s) = configs(&rsa1, &hood);
    let expired = |e: &CertificateError| matches!(e, CertificateError::ExpiredContext { .. });
    assert_refused(handshake(rogue_client(&cert, &key), s), Side::Server, expired);
    assert_refused(handshake(c, rogue_server(&cert, &key)), Side::Client, expired);
    let err = Identity::load(&f.path("old.gone.crt"), &f.path("old.gone.key"), &hood).unwrap_err();
    assert!(matches!(err, PkiError::Expired { .. }), "{err}");

    let (cert, key) = make(now + day, now + day * 30);
    let (c, s) = configs(&rsa1, &hood);
    let early = |e: &CertificateError| matches!(e, CertificateError::NotValidYetContext { .. });
    assert_refused(handshake(rogue_client(&cert, &key), s), Side::Server, early);
    assert_refused(handshake(c, rogue_server(&cert, &key)), Side::Client, early);
}

#[test]
fn openssl_peer_cert_is_not_a_hood() {
    let f = fixtures();
    let err = Hood::load(&f.path("old.rsa1.crt")).unwrap_err();
    assert!(matches!(err, PkiError::NotACa { .. }), "{err}");
    assert!(err.to_string().contains("v1 certificate issued by"), "{err}");
}

#[test]
fn rsa_key_with_wrong_certificate() {
    let f = fixtures();
    let hood = f.hood("old");
    let err = Identity::load(&f.path("old.rsa1.crt"), &f.path("old.rsa2.key"), &hood).unwrap_err();
    assert!(matches!(err, PkiError::KeyMismatch { .. }), "{err}");
}

/// Membership proofs (`relay_proof`) of RSA peers (v1 certificates, PKCS#8
/// and PKCS#1 keys) and of peers of v1 hoods, checked by `verify_relay_proof`.
#[test]
fn openssl_peers_make_membership_proofs() {
    use partybus_pki::{relay_proof, verify_relay_proof, ProofError};
    use rustls_pki_types::UnixTime;
    let f = fixtures();
    let msg = b"partybus relay register v1\0 sixteen byte cookie sixteen byte id";
    let old = f.hood("old");
    let v1 = f.hood("v1");
    let allowed = vec![old.fingerprint().to_owned(), v1.fingerprint().to_owned()];
    for (hood, hood_name, peer) in
        [(&old, "old", "rsa1"), (&old, "old", "rsa2"), (&old, "old", "ec"), (&v1, "v1", "p"), (&v1, "v1", "modern")]
    {
        let me = f.identity(hood, hood_name, peer);
        let proof = relay_proof(&me, hood, msg).unwrap_or_else(|e| panic!("{peer}: {e}"));
        let got = verify_relay_proof(&proof, msg, &allowed, UnixTime::now()).unwrap_or_else(|e| panic!("{hood_name}.{peer}: {e}"));
        assert_eq!((got.hood_fingerprint.as_str(), got.name.as_str()), (hood.fingerprint(), me.name()));
        if me.key_kind() == (KeyKind::Rsa { bits: 4096 }) {
            // TLS 1.3 signs with RSA-PSS; an RSA 4096 hood and peer make a proof of about 3.5 KB.
            assert_eq!(u16::from_be_bytes([proof[0], proof[1]]), u16::from(rustls::SignatureScheme::RSA_PSS_SHA256));
            assert!(proof.len() > 2500, "{}", proof.len());
        }
        let mut bad = proof.clone();
        bad[8] ^= 0x80;
        assert_eq!(verify_relay_proof(&bad, msg, &allowed, UnixTime::now()).unwrap_err(), ProofError::BadSignature, "{peer}");
    }
    // A peer of another openssl hood.
    let stranger = f.identity(&f.hood("else"), "else", "stranger");
    let proof = relay_proof(&stranger, &f.hood("else"), msg).unwrap();
    assert!(matches!(verify_relay_proof(&proof, msg, &allowed, UnixTime::now()), Err(ProofError::NotAllowed { .. })));
}
