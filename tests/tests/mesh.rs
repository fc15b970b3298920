//! The mesh's own data path: Istio sidecars in network namespaces (the iptables
//! chains istio-iptables writes, an Envoy stand-in with SO_ORIGINAL_DST, uid 1337,
//! SPIFFE certificates, Istio ALPN and SNI, pooled upstream connections and the
//! 127.0.0.6 inbound passthrough), real probes, a real Prometheus-format scrape.
//! Healthy mesh requests must give no violation and no rejection; real bypasses
//! must stay violations.

use std::{collections::BTreeMap, net::IpAddr, time::Duration};

use integration_tests::{
    Agent, AgentOptions, Record, TempDir,
    mesh::{MeshNode, MeshPki, PodSpec, field as s, metric_sum as metric},
    require_root,
};

const NET: u8 = 70;
const LISTEN: &str = "127.0.0.1:9561";

fn policy(dir: &std::path::Path, a: IpAddr, b: IpAddr, c: IpAddr) {
    let yaml = format!(
        r#"apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata:
  name: default
  namespace: default
spec:
  mtls:
    mode: STRICT
---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata:
  name: example-a
  namespace: default
spec:
  selector:
    matchLabels:
      app: example-a
  mtls:
    mode: STRICT
  portLevelMtls:
    8081:
      mode: DISABLE
    8082:
      mode: PERMISSIVE
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata:
  name: example-a
  namespace: default
spec:
  host: example-a
  trafficPolicy:
    tls:
      mode: ISTIO_MUTUAL
---
apiVersion: mtls-auditor.io/v1alpha1
kind: Inventory
metadata:
  name: mesh
spec:
  workloads:
  - name: example-a
    namespace: default
    labels: {{app: example-a}}
    match:
      cgroups: ["/mtls-auditor-tests/mesh/a/*"]
      addresses: ["{a}"]
  - name: example-b
    namespace: default
    labels: {{app: example-b}}
    match:
      cgroups: ["/mtls-auditor-tests/mesh/b/*"]
      addresses: ["{b}"]
  - name: legacy-c
    namespace: default
    labels: {{app: legacy-c}}
    match:
      cgroups: ["/mtls-auditor-tests/mesh/c/*"]
      addresses: ["{c}"]
  services:
  - name: example-a
    namespace: default
    addresses: ["{a}"]
"#
    );
    std::fs::write(dir.join("policy.yaml"), yaml).expect("policy");
}

/// Records of one logical flow: from `client` (workload) to `port`, by hop.
fn by_hop<'a>(records: &'a [Record], source: &str, port: u16) -> BTreeMap<String, Vec<&'a Record>> {
    let mut out: BTreeMap<String, Vec<&Record>> = BTreeMap::new();
    for r in records {
        if s(r, &["source_workload"]) == source && r["destination_port"] == port {
            out.entry(s(r, &["hop"])).or_default().push(r);
        }
    }
    out
}

#[test]
fn sidecar_mesh_requests_are_judged_once_and_bypasses_stay_violations() {
    require_root();
    let work = TempDir::new();
    let pki = MeshPki::generate(work.path(), &["a", "b", "c"]);
    let a_ip: IpAddr = format!("10.213.{NET}.1").parse().expect("ip");
    let b_ip: IpAddr = format!("10.213.{NET}.2").parse().expect("ip");
    let c_ip: IpAddr = format!("10.213.{NET}.3").parse().expect("ip");
    policy(work.path(), a_ip, b_ip, c_ip);
    let specs = vec![
        PodSpec {
            name: "a".into(),
            sidecar: true,
            exclude_inbound: vec![9090],
            inbound_mode: "STRICT".into(),
            inbound_ports: vec![(8081, "DISABLE".into()), (8082, "PERMISSIVE".into())],
            ..PodSpec::default()
        },
        PodSpec {
            name: "b".into(),
            sidecar: true,
            exclude_outbound: vec![9090],
            inbound_mode: "STRICT".into(),
            routes: vec![(
                a_ip,
                8080,
                "ISTIO_MUTUAL".into(),
                true,
                "example-a.default.svc.cluster.local".into(),
            )],
            ..PodSpec::default()
        },
        PodSpec {
            name: "c".into(),
            ..PodSpec::default()
        },
    ];
    let agent = Agent::start(
        AgentOptions::default()
            .arg("--policy")
            .arg(work.path().join("policy.yaml").display().to_string())
            .arg("--listen")
            .arg(LISTEN),
    );
    let mut node = MeshNode::new("mesh", NET, specs, &pki, work.path());
    node.pod_mut("a").start_app(&[8080, 8081, 8082, 9090]);
    let url = |port: u16| format!("http://{a_ip}:{port}/");

    // Three healthy requests from b's app to a:8080, through both sidecars.
    for _ in 0..3 {
        assert_eq!(node.pod("b").curl(&url(8080)), "hello from a\n");
    }
    // A bypass: 9090 is excluded from capture on both sides: plaintext reaches a's app.
    assert_eq!(node.pod("b").curl(&url(9090)), "hello from a\n");
    // A client without a sidecar: a's sidecar refuses its plaintext under STRICT...
    assert_eq!(node.pod("c").curl(&url(8080)), "");
    // ... takes it on 8081 (portLevelMtls DISABLE) and on 8082 (PERMISSIVE).
    assert_eq!(node.pod("c").curl(&url(8081)), "hello from a\n");
    assert_eq!(node.pod("c").curl(&url(8082)), "hello from a\n");
    // The kubelet's probe of the sidecar's health port.
    assert_eq!(node.curl_from_node(&url(15021)), "ready\n");
    // A process of b running as the proxy's uid but not the proxy: not captured,
    // its plaintext reaches a's sidecar, which refuses it.
    assert_eq!(node.pod("b").curl_as(1337, &url(8080)), "");

    let records = agent.wait_records(3, Duration::from_secs(20), |r| {
        s(r, &["hop"]) == "app_to_proxy" && s(r, &["source_workload"]) == "example-b"
    });
    assert_eq!(records.len(), 3);
    // Let the other hops of these requests finish too.
    agent.wait_records(1, Duration::from_secs(20), |r| {
        s(r, &["hop"]) == "proxy_to_app"
    });
    agent.wait_records(1, Duration::from_secs(20), |r| {
        s(r, &["source_workload"]) == "legacy-c" && r["destination_port"] == 8082
    });
    // The pooled upstream connection closes with the sidecars.
    node.stop_processes();
    agent.wait_records(1, Duration::from_secs(20), |r| {
        s(r, &["hop"]) == "proxy_upstream" && s(r, &["source_workload"]) == "example-b"
    });
    std::thread::sleep(Duration::from_millis(500));
    let metrics = ureq::get(&format!("http://{LISTEN}/metrics"))
        .call()
        .expect("metrics")
        .into_body()
        .read_to_string()
        .expect("body");
    drop(node);
    let exit = agent.stop_cleanly();
    let all = exit.records;
    let dump = || {
        all.iter()
            .map(Record::to_string)
            .collect::<Vec<_>>()
            .join("\n")
    };

    // b -> a:8080: three app connections, each compliant by the pooled mutual TLS
    // upstream they were carried over; no violation, no rejection anywhere on it.
    let b8080 = by_hop(&all, "example-b", 8080);
    let apps: Vec<&&Record> = b8080["app_to_proxy"]
        .iter()
        .filter(|r| s(r, &["client", "local", "comm"]) == "curl")
        .collect();
    assert_eq!(apps.len(), 3, "{}", dump());
    let mut upstreams = std::collections::BTreeSet::new();
    for (i, r) in apps.iter().enumerate() {
        assert_eq!(s(r, &["verdict"]), "compliant", "{r}");
        assert_eq!(s(r, &["connection_security_policy"]), "mutual_tls", "{r}");
        assert_eq!(s(r, &["destination_workload"]), "example-a", "{r}");
        assert_eq!(s(r, &["server", "addr"]), a_ip.to_string());
        assert_eq!(s(r, &["direction"]), "outbound");
        assert_eq!(s(r, &["app_protocol"]), "http1");
        assert_eq!(
            s(r, &["interceptor", "accepted_on"]),
            "127.0.0.1:15001",
            "{r}"
        );
        assert_eq!(r["interceptor"]["uid"], 1337);
        assert!(s(r, &["evidence"]).starts_with("carried by python3"), "{r}");
        assert_eq!(
            s(r, &["tls", "sni"]),
            "outbound_.8080_._.example-a.default.svc.cluster.local"
        );
        upstreams.insert(
            r["upstream"]["socket_cookie"]
                .as_u64()
                .expect("upstream cookie"),
        );
        if i > 0 {
            assert_eq!(r["upstream"]["pooled"], true, "reused: {r}");
        }
    }
    assert_eq!(
        upstreams.len(),
        1,
        "one pooled upstream carried all three: {}",
        dump()
    );
    for r in b8080.values().flatten() {
        let v = s(r, &["verdict"]);
        if s(r, &["client", "local", "uid"]) == "1337"
            && s(r, &["client", "local", "comm"]) == "curl"
        {
            continue; // the uid-1337 impostor, below
        }
        assert!(
            v == "compliant" || v == "exempt",
            "no false finding on the mesh path: {r}"
        );
    }
    // The mutual TLS between the sidecars, at the original port, counted at the
    // destination; a's sidecar delivering to a's app from 127.0.0.6 is exempt.
    let up = &b8080["proxy_upstream"];
    assert_eq!(up.len(), 1, "{}", dump());
    assert_eq!(s(up[0], &["verdict"]), "compliant");
    assert_eq!(
        s(up[0], &["interceptor", "accepted_on"]),
        format!("{a_ip}:15006")
    );
    let delivery = by_hop(&all, "example-a", 8080);
    let d = &delivery["proxy_to_app"];
    assert!(!d.is_empty(), "{}", dump());
    assert_eq!(s(d[0], &["verdict"]), "exempt");
    assert_eq!(s(d[0], &["client", "addr"]), "127.0.0.6");
    assert!(
        s(d[0], &["verdict_reason"])
            .starts_with("exempt: built-in exemption proxy-to-app: intra-pod hop"),
        "{}",
        d[0]
    );

    // The bypass on 9090: plaintext straight to a's app under STRICT.
    let bypass = by_hop(&all, "example-b", 9090);
    let r = bypass["direct"][0];
    assert_eq!(
        (
            s(r, &["connection_security_policy"]).as_str(),
            s(r, &["verdict"]).as_str()
        ),
        ("none", "violation"),
        "{r}"
    );

    // The client without a sidecar.
    let c = |port| by_hop(&all, "legacy-c", port);
    let r = c(8080)["proxy_inbound"][0];
    assert_eq!(s(r, &["verdict"]), "rejected", "{r}");
    assert_eq!(s(r, &["outcome"]), "server_refused");
    let r = c(8082)["proxy_inbound"][0];
    assert_eq!(s(r, &["verdict"]), "permissive", "{r}");

    // The kubelet's probe of 15021.
    let probe = all
        .iter()
        .find(|r| r["destination_port"] == 15021)
        .unwrap_or_else(|| panic!("no probe record: {}", dump()));
    assert_eq!(s(probe, &["verdict"]), "exempt", "{probe}");
    assert!(
        s(probe, &["verdict_reason"]).contains("istio-agent-health"),
        "{probe}"
    );

    // The uid-1337 impostor in b is an ordinary client, refused by a's sidecar.
    let imp = b8080["proxy_inbound"]
        .iter()
        .find(|r| s(r, &["client", "local", "uid"]) == "1337")
        .unwrap_or_else(|| panic!("no impostor record: {}", dump()));
    assert_eq!(s(imp, &["verdict"]), "rejected", "{imp}");

    // Metrics count the logical connection once per reporter, at the original port.
    let m = |labels: &[(&str, &str)]| metric(&metrics, "mtls_auditor_connections_total", labels);
    let b_to_a = [
        ("source_workload", "example-b"),
        ("destination_workload", "example-a"),
        ("destination_port", "8080"),
    ];
    assert_eq!(
        m(&[
            &b_to_a[..],
            &[
                ("reporter", "source"),
                ("verdict", "compliant"),
                ("connection_security_policy", "mutual_tls")
            ]
        ]
        .concat()),
        3.0,
        "{metrics}"
    );
    assert_eq!(
        m(&[
            &b_to_a[..],
            &[
                ("reporter", "destination"),
                ("verdict", "compliant"),
                ("connection_security_policy", "mutual_tls")
            ]
        ]
        .concat()),
        1.0,
        "one pooled upstream reached a: {metrics}"
    );
    assert_eq!(
        m(&[&b_to_a[..], &[("verdict", "violation")]].concat()),
        0.0,
        "{metrics}"
    );
    assert!(
        metric(
            &metrics,
            "mtls_auditor_tls_handshakes_total",
            &[
                ("tls_version", "1.3"),
                ("client_auth", "certificate"),
                ("mesh", "istio_sidecar")
            ]
        ) >= 1.0,
        "the sidecars' handshake is counted once, by the upstream's own record: {metrics}"
    );
    assert_eq!(
        m(&[("destination_port", "15006")]),
        0.0,
        "no series at the proxy's port: {metrics}"
    );
    assert_eq!(m(&[("destination_port", "15001")]), 0.0, "{metrics}");
    assert_eq!(
        m(&[("verdict", "violation"), ("destination_port", "9090")]),
        2.0,
        "the bypass, at both reporters: {metrics}"
    );
    assert!(
        metric(
            &metrics,
            "mtls_auditor_connection_hops_total",
            &[("hop", "proxy_to_app")]
        ) >= 1.0
    );
    assert_eq!(
        metric_plain(&metrics, "mtls_auditor_mesh_proxies"),
        2.0,
        "both sidecars"
    );

    // A client without a sidecar is not governed by DestinationRules (they configure
    // the client's proxy): on 8081, which a's policy sets to DISABLE, its plaintext
    // is what the server accepts.
    let r = c(8081)["proxy_inbound"][0];
    assert_eq!(
        (
            s(r, &["verdict"]).as_str(),
            s(r, &["expected_security_policy"]).as_str()
        ),
        ("compliant", "none"),
        "portLevelMtls DISABLE on 8081: {r}"
    );
}

fn metric_plain(text: &str, name: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or(f64::NAN)
}
