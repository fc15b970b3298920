//! The classifier and the capture reader on real captured handshakes
//! (`tests/data/handshakes.pcapng`, made by `tests/data/make-captures.sh` with
//! OpenSSL, curl and Python on loopback), the same handshakes re-wrapped in other
//! link layers, tunnels and damaged files, TLS stacks other than OpenSSL, and
//! STARTTLS and proxy captures of real clients (tests/data/README.md says how each
//! file was made).

use std::path::Path;

use mtls_auditor::{
    classify::{ClientAuth, Confidence, MeshMarker, Outcome, Protocol, SecurityClass},
    pcap::{self, PcapRecord},
};

fn records() -> Vec<PcapRecord> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/handshakes.pcapng");
    pcap::classify_file(&path, 65_536)
        .expect("capture parses")
        .records
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

// ---- Link layers, tunnels, fragments and damaged files (tests/data/make-encapsulated.py
// re-wraps the connections to 19001, 19002 and 19008 of handshakes.pcapng).

fn data(name: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data")
        .join(name)
}

fn classified(name: &str) -> pcap::Classified {
    pcap::classify_file(&data(name), 65_536).unwrap_or_else(|e| panic!("{name}: {e}"))
}

/// The three re-wrapped connections are classified as in the Ethernet original,
/// with the same TLS 1.3 client flight, and nothing was unreadable.
fn same_as_original(name: &str, ports: &[u16]) {
    let original = records();
    let got = classified(name);
    assert_eq!(
        got.report.unreadable(),
        0,
        "{name}: {:?}",
        got.report.skipped
    );
    assert_eq!(got.records.len(), ports.len(), "{name}: {:#?}", got.records);
    for &port in ports {
        let want = &by_port(&original, port).classification;
        let have = &by_port(&got.records, port).classification;
        assert_eq!(
            have.connection_security_policy, want.connection_security_policy,
            "{name} port {port}: {}",
            have.evidence
        );
        assert_eq!(have.outcome, want.outcome, "{name} port {port}");
        assert_eq!(
            have.tls.as_ref().and_then(|t| t.client_flight_bytes),
            want.tls.as_ref().and_then(|t| t.client_flight_bytes),
            "{name} port {port}"
        );
    }
}

#[test]
fn linux_cooked_v1_with_any_arphrd_type() {
    // 772 (loopback), 530 and 778 (GRE): `tcpdump -i any` on a busy host.
    same_as_original("sll-arphrd.pcap", &[19001, 19002, 19008]);
}

#[test]
fn linux_cooked_v2_with_ipv6() {
    same_as_original("sll2.pcap", &[19001, 19002]);
    let got = classified("sll2.pcap");
    let v6 = by_port(&got.records, 19002);
    assert_eq!(v6.source_ip, "fd13:213::1".parse().ok());
}

#[test]
fn qinq_and_pppoe() {
    same_as_original("qinq-pppoe.pcap", &[19001, 19002, 19008]);
}

#[test]
fn vxlan_geneve_and_gtp_u() {
    same_as_original("udp-tunnels.pcap", &[19001, 19002, 19008]);
}

#[test]
fn ip_in_ip_6in4_4in6_and_gre() {
    same_as_original("ip-tunnels.pcap", &[19001, 19002, 19008]);
    same_as_original("gre.pcap", &[19001]);
}

#[test]
fn ip_fragments_are_reassembled() {
    // The ClientHello and the server's flight in IPv4 fragments (last first), and
    // the one-way connection over IPv6 fragment headers.
    same_as_original("fragments.pcap", &[19001, 19002]);
    let got = classified("fragments.pcap");
    assert!(got.report.reassembled >= 4, "{:?}", got.report);
}

#[test]
fn a_file_cut_mid_record_keeps_what_was_read() {
    let got = classified("truncated.pcap");
    assert_eq!(got.records.len(), 3, "{:#?}", got.records);
    assert_eq!(
        by_port(&got.records, 19001)
            .classification
            .connection_security_policy,
        SecurityClass::MutualTls
    );
    let stop = got.report.stop.clone().expect("the cut is reported");
    let size = std::fs::metadata(data("truncated.pcap")).unwrap().len();
    assert!(stop.offset < size, "{stop:?}");
    assert_eq!(stop.packet, got.report.packets + 1);
    assert!(matches!(
        stop.kind,
        pcap::StopKind::Truncated { what: "record", .. }
    ));
    let messages = got.report.messages(got.records.len()).join("\n");
    assert!(
        messages.contains(&format!(
            "the file ends inside packet {} (byte offset {})",
            stop.packet, stop.offset
        )),
        "{messages}"
    );
}

#[test]
fn the_command_reads_up_to_a_cut_and_strict_makes_it_an_error() {
    let bin = env!("CARGO_BIN_EXE_mtls-auditor");
    let path = data("truncated.pcap");
    let run = |strict: bool| {
        let mut cmd = std::process::Command::new(bin);
        cmd.args(["classify", "--json", "--pcap"]).arg(&path);
        if strict {
            cmd.arg("--strict");
        }
        cmd.output().expect("runs")
    };
    let lenient = run(false);
    assert!(lenient.status.success(), "{lenient:?}");
    assert_eq!(String::from_utf8_lossy(&lenient.stdout).lines().count(), 3);
    let err = String::from_utf8_lossy(&lenient.stderr);
    assert!(err.contains("the file ends inside packet"), "{err}");
    let strict = run(true);
    assert!(!strict.status.success());
    assert_eq!(
        String::from_utf8_lossy(&strict.stdout).lines().count(),
        3,
        "what was read is still printed"
    );
    assert!(String::from_utf8_lossy(&strict.stderr).contains("--strict"));
}

#[test]
fn unreadable_packets_are_counted_with_their_reason() {
    use pcap::{LinkType, SkipReason};
    let got = classified("skipped.pcapng");
    let skipped = &got.report.skipped;
    assert_eq!(got.records.len(), 1, "{:#?}", got.records);
    assert_eq!(
        by_port(&got.records, 19002)
            .classification
            .connection_security_policy,
        SecurityClass::Tls
    );
    assert_eq!(skipped.get(&SkipReason::Empty), Some(&2), "{skipped:?}");
    assert_eq!(
        skipped.get(&SkipReason::UnsupportedLink(LinkType(147))),
        Some(&3),
        "{skipped:?}"
    );
    let mislabeled = SkipReason::Mislabeled {
        link: LinkType::RAW,
        looks_like: "Ethernet frames",
    };
    assert!(
        skipped.get(&mislabeled).is_some_and(|&n| n >= 8),
        "{skipped:?}"
    );
    let m = got.report.messages(1).join("\n");
    assert!(m.contains("with no captured bytes (incl_len 0)"), "{m}");
    assert!(m.contains("link type 147, which is not decoded"), "{m}");
    assert!(m.contains("whose bytes look like Ethernet frames"), "{m}");
}

// ---- Other TLS stacks (tests/data/make-stacks.sh: Java, NSS and Python clients
// against `openssl s_server`).

fn stacks() -> Vec<PcapRecord> {
    classified("stacks.pcapng").records
}

fn class_of(recs: &[PcapRecord], port: u16) -> (SecurityClass, Confidence, &str) {
    let c = &by_port(recs, port).classification;
    (
        c.connection_security_policy,
        c.confidence,
        c.evidence.as_str(),
    )
}

#[test]
fn java_pads_every_record() {
    let recs = stacks();
    let (class, conf, ev) = class_of(&recs, 19101);
    assert_eq!(
        (class, conf),
        (SecurityClass::Tls, Confidence::High),
        "{ev}"
    );
    assert!(ev.contains("padded"), "{ev}");
    let (class, conf, ev) = class_of(&recs, 19102);
    assert_eq!(
        (class, conf),
        (SecurityClass::MutualTls, Confidence::High),
        "{ev}"
    );
    let (class, conf, ev) = class_of(&recs, 19103);
    assert_eq!(
        (class, conf),
        (SecurityClass::Tls, Confidence::High),
        "{ev}"
    );
    assert_eq!(
        by_port(&recs, 19103)
            .classification
            .tls
            .as_ref()
            .unwrap()
            .client_auth,
        ClientAuth::EmptyCertificate
    );
}

#[test]
fn nss_coalesces_the_certificate_flight() {
    let recs = stacks();
    let (class, conf, ev) = class_of(&recs, 19104);
    assert_eq!(
        (class, conf),
        (SecurityClass::MutualTls, Confidence::High),
        "{ev}"
    );
    assert!(ev.contains("coalesced in one record"), "{ev}");
    assert_eq!(
        by_port(&recs, 19104).classification.outcome,
        Outcome::Completed
    );
    let (class, conf, ev) = class_of(&recs, 19105);
    assert_eq!(
        (class, conf),
        (SecurityClass::Tls, Confidence::High),
        "{ev}"
    );
}

#[test]
fn post_handshake_authentication_is_never_a_confident_tls() {
    let recs = stacks();
    // The server asked after the handshake and the client sent its certificate.
    let (class, conf, ev) = class_of(&recs, 19106);
    assert_eq!(
        (class, conf),
        (SecurityClass::MutualTls, Confidence::Medium),
        "{ev}"
    );
    assert!(
        by_port(&recs, 19106)
            .classification
            .tls
            .as_ref()
            .unwrap()
            .post_handshake_auth
    );
    // Offered, never asked, and nothing large enough to hide a certificate later.
    let (class, _, ev) = class_of(&recs, 19107);
    assert_eq!(class, SecurityClass::Tls, "{ev}");
    assert!(ev.contains("post-handshake"), "{ev}");
}

// ---- In-band upgrades and proxies (tests/data/make-upgrades.py: OpenSSL's
// `s_client -starttls`, curl through HTTP CONNECT and SOCKS proxies).

#[test]
fn starttls_dialects_are_followed_into_tls() {
    let recs = classified("upgrades.pcapng").records;
    for (port, proto) in [
        (19110, Protocol::Smtp),
        (19111, Protocol::Pop3),
        (19112, Protocol::Imap),
        (19113, Protocol::Ftp),
        (19114, Protocol::Xmpp),
        (19115, Protocol::Ldap),
        (19116, Protocol::Nntp),
    ] {
        let c = &by_port(&recs, port).classification;
        assert_eq!(
            c.connection_security_policy,
            SecurityClass::Tls,
            "{port}: {}",
            c.evidence
        );
        assert_eq!(c.starttls, Some(proto), "{port}");
        assert_eq!(c.outcome, Outcome::Completed, "{port}");
    }
}

#[test]
fn proxy_tunnels_name_their_target() {
    use mtls_auditor::classify::TunnelKind;
    let recs = classified("upgrades.pcapng").records;
    let through: Vec<_> = recs
        .iter()
        .filter(|r| matches!(r.destination_port, Some(19120 | 19121)))
        .collect();
    let kinds: Vec<_> = through
        .iter()
        .map(|r| {
            let c = &r.classification;
            assert_eq!(
                c.connection_security_policy,
                SecurityClass::Tls,
                "{}",
                c.evidence
            );
            let t = c.tunnel.as_ref().expect("tunnel named");
            assert!(
                t.target.as_deref().is_some_and(|t| t.ends_with(":19122")),
                "{t:?}"
            );
            assert!(
                c.evidence.contains(t.target.as_deref().unwrap_or("")),
                "{}",
                c.evidence
            );
            t.via
        })
        .collect();
    assert_eq!(
        kinds,
        vec![
            TunnelKind::HttpConnect,
            TunnelKind::Socks4,
            TunnelKind::Socks4a,
            TunnelKind::Socks5,
            TunnelKind::Socks5
        ]
    );
}
