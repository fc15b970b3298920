//! The classifier on real captured handshakes (`tests/data/handshakes.pcapng`, made
//! by `tests/data/make-captures.sh` with OpenSSL, curl and Python on loopback).

use std::path::Path;

use mtls_auditor::{
    classify::{ClientAuth, MeshMarker, Outcome, Protocol, SecurityClass},
    pcap::{self, PcapRecord},
};

fn records() -> Vec<PcapRecord> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/handshakes.pcapng");
    pcap::classify_file(&path, 65_536).expect("capture parses")
}

fn by_port(recs: &[PcapRecord], port: u16) -> &PcapRecord {
    recs.iter()
        .find(|r| r.destination_port == Some(port))
        .unwrap_or_else(|| panic!("no connection to {port}"))
}

#[test]
fn every_connection_of_the_capture_is_found() {
    let recs = records();
    assert_eq!(recs.len(), 9, "{recs:#?}");
}

#[test]
fn tls13_client_certificate_flight() {
    let recs = records();
    let r = by_port(&recs, 19001);
    let c = &r.classification;
    assert_eq!(c.connection_security_policy, SecurityClass::MutualTls);
    assert_eq!(c.outcome, Outcome::Completed);
    let tls = c.tls.as_ref().expect("tls");
    assert_eq!(tls.version.as_deref(), Some("1.3"));
    assert_eq!(tls.cipher_suite.as_deref(), Some("TLS_AES_128_GCM_SHA256"));
    assert_eq!(tls.client_auth, ClientAuth::Certificate);
    assert!(tls.client_flight_bytes.unwrap_or(0) > 36 + 150);
    assert_eq!(tls.alpn_offered, vec!["h2", "http/1.1"]);
    assert!(
        tls.ja4.as_deref().unwrap_or("").starts_with("t13i"),
        "{:?}",
        tls.ja4
    );
}

#[test]
fn tls13_without_and_with_empty_certificate() {
    let recs = records();
    let bare = &by_port(&recs, 19002).classification;
    assert_eq!(bare.connection_security_policy, SecurityClass::Tls);
    assert_eq!(bare.tls.as_ref().unwrap().client_auth, ClientAuth::None);
    let empty = &by_port(&recs, 19003).classification;
    assert_eq!(empty.connection_security_policy, SecurityClass::Tls);
    assert_eq!(
        empty.tls.as_ref().unwrap().client_auth,
        ClientAuth::EmptyCertificate
    );
}

#[test]
fn tls12_certificate_details() {
    let recs = records();
    let c = &by_port(&recs, 19004).classification;
    assert_eq!(c.connection_security_policy, SecurityClass::MutualTls);
    let tls = c.tls.as_ref().unwrap();
    assert_eq!(tls.version.as_deref(), Some("1.2"));
    assert_eq!(tls.certificate_requested, Some(true));
    let cert = tls
        .client_certificate
        .as_ref()
        .expect("client certificate parsed");
    assert_eq!(cert.subject, "CN=client.test");
    assert_eq!(cert.issuer, "CN=capture CA");
    assert_eq!(
        cert.uri_sans,
        vec!["spiffe://cluster.local/ns/default/sa/client"]
    );
    assert!(cert.not_after.starts_with("20"), "{}", cert.not_after);
    let empty = &by_port(&recs, 19005).classification;
    assert_eq!(empty.connection_security_policy, SecurityClass::Tls);
    assert_eq!(
        empty.tls.as_ref().unwrap().client_auth,
        ClientAuth::EmptyCertificate
    );
}

#[test]
fn hello_retry_request_is_followed() {
    let recs = records();
    let c = &by_port(&recs, 19006).classification;
    assert_eq!(c.connection_security_policy, SecurityClass::MutualTls);
    assert!(c.tls.as_ref().unwrap().hello_retry);
}

#[test]
fn refusals() {
    let recs = records();
    let tls = &by_port(&recs, 19007).classification;
    assert_eq!(tls.connection_security_policy, SecurityClass::Tls);
    assert_eq!(tls.outcome, Outcome::ServerRefused);
    let plain = &by_port(&recs, 19009).classification;
    assert_eq!(plain.connection_security_policy, SecurityClass::None);
    assert_eq!(plain.protocol, Protocol::Http1);
    assert_eq!(plain.outcome, Outcome::ServerRefused);
}

#[test]
fn plaintext_http() {
    let recs = records();
    let c = &by_port(&recs, 19008).classification;
    assert_eq!(c.connection_security_policy, SecurityClass::None);
    assert_eq!(c.outcome, Outcome::Completed);
    assert_eq!(c.http.as_ref().unwrap().method, "GET");
    assert_eq!(c.mesh, None::<MeshMarker>);
}

#[test]
fn missing_and_bad_files_are_clear_errors() {
    let err = pcap::classify_file(Path::new("/nonexistent.pcap"), 1024).unwrap_err();
    assert!(err.to_string().starts_with("/nonexistent.pcap: "), "{err}");
    let dir = std::env::temp_dir().join(format!("mtlsa-bad-{}", std::process::id()));
    std::fs::write(&dir, b"not a capture at all").unwrap();
    let err = pcap::classify_file(&dir, 1024).unwrap_err();
    assert!(
        err.to_string().contains("not a pcap or pcapng file"),
        "{err}"
    );
    // Shorter than a magic number.
    std::fs::write(&dir, b"\xd4\xc3").unwrap();
    let err = pcap::classify_file(&dir, 1024).unwrap_err();
    assert!(
        err.to_string()
            .ends_with("not a pcap or pcapng file (magic [d4, c3, 00, 00])"),
        "{err}"
    );
    std::fs::remove_file(&dir).unwrap();
}
