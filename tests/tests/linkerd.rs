//! Linkerd's data path: proxy-init's nat rules (tests/mesh/linkerd-iptables.sh) and
//! a Linkerd proxy stand-in (tests/mesh/sidecar.py, flavour `linkerd`: 4140/4143,
//! uid 2102, SNI = the server's identity, Linkerd's transport header to 4143 for
//! opaque TCP, delivery to the app from the pod's own address). Healthy requests
//! must give no false finding and count once per reporter; plaintext refused by a
//! proxy that requires authentication is `rejected`; the proxy's admin port is
//! exempt.

use std::{net::IpAddr, time::Duration};

use integration_tests::{
    Agent, AgentOptions, Record, TempDir,
    mesh::{MeshNode, MeshPki, PodSpec, field as s, metric_sum as metric},
    require_root,
};

const NET: u8 = 77;
const LISTEN: &str = "127.0.0.1:9563";

fn ip(n: u8) -> IpAddr {
    format!("10.213.{NET}.{n}").parse().expect("ip")
}

fn identity(name: &str) -> String {
    format!("{name}.default.serviceaccount.identity.linkerd.cluster.local")
}

fn policy(dir: &std::path::Path) {
    let workload = |name: &str, pod: &str, n: u8| {
        format!(
            "  - name: {name}\n    namespace: default\n    labels: {{app: {name}}}\n    match:\n      cgroups: [\"/mtls-auditor-tests/linkerd/{pod}/*\"]\n      addresses: [\"{}\"]\n",
            ip(n)
        )
    };
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
apiVersion: mtls-auditor.io/v1alpha1
kind: Inventory
metadata:
  name: linkerd
spec:
  workloads:
{}{}{}  services:
  - name: example-a
    namespace: default
    addresses: ["{}"]
"#,
        workload("example-a", "a", 1),
        workload("example-b", "b", 2),
        workload("legacy-c", "c", 3),
        ip(1)
    );
    std::fs::write(dir.join("policy.yaml"), yaml).expect("policy");
}

#[test]
fn linkerd_requests_are_judged_once_and_plaintext_is_refused() {
    require_root();
    let work = TempDir::new();
    let pki = MeshPki::generate(work.path(), &["a", "b"]);
    policy(work.path());
    let specs = vec![
        PodSpec {
            name: "a".into(),
            sidecar: true,
            linkerd: true,
            inbound_mode: "STRICT".into(),
            ..PodSpec::default()
        },
        PodSpec {
            name: "b".into(),
            sidecar: true,
            linkerd: true,
            inbound_mode: "STRICT".into(),
            routes: vec![
                (
                    ip(1),
                    8080,
                    "ISTIO_MUTUAL".into(),
                    true,
                    identity("example-a"),
                ),
                (
                    ip(1),
                    5432,
                    "ISTIO_MUTUAL".into(),
                    false,
                    identity("example-a"),
                ),
            ],
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
    let mut node = MeshNode::new("linkerd", NET, specs, &pki, work.path());
    node.pod_mut("a").start_app(&[8080, 5432]);
    let url = |port: u16| format!("http://{}:{port}/", ip(1));
    let log = || std::fs::read_to_string(work.path().join("sidecar-b.log")).unwrap_or_default();

    // Three HTTP requests from b to a: pooled mutual TLS between the proxies.
    for _ in 0..3 {
        assert_eq!(
            node.pod("b").curl(&url(8080)),
            "hello from a\n",
            "{}",
            log()
        );
    }
    // An opaque port: Linkerd's transport header to a's 4143.
    assert_eq!(
        node.pod("b").curl(&url(5432)),
        "hello from a\n",
        "{}",
        log()
    );
    // A client without a proxy: refused.
    assert_eq!(node.pod("c").curl(&url(8080)), "");
    // The kubelet scraping the proxy's admin port.
    assert_eq!(
        node.curl_from_node(&format!("http://{}:4191/metrics", ip(1))),
        "request_total 1\n"
    );
    agent.wait_records(4, Duration::from_secs(20), |r| {
        s(r, &["hop"]) == "app_to_proxy" && s(r, &["source_workload"]) == "example-b"
    });
    node.stop_processes();
    agent.wait_records(1, Duration::from_secs(20), |r| {
        s(r, &["hop"]) == "proxy_upstream" && r["destination_port"] == 8080
    });
    std::thread::sleep(Duration::from_millis(500));
    let metrics = ureq::get(&format!("http://{LISTEN}/metrics"))
        .call()
        .expect("metrics")
        .into_body()
        .read_to_string()
        .expect("body");
    drop(node);
    let all = agent.stop_cleanly().records;
    let dump = || {
        all.iter()
            .map(Record::to_string)
            .collect::<Vec<_>>()
            .join("\n")
    };
    let find = |pred: &dyn Fn(&Record) -> bool| -> Vec<&Record> {
        all.iter().filter(|r| pred(r)).collect()
    };
    let hop = |h: &str, port: u64| {
        find(&|r: &Record| s(r, &["hop"]) == h && r["destination_port"] == port)
    };

    // b's HTTP requests: judged by the pooled upstream to a:8080, which arrived at
    // a's 4143 and is reported at 8080.
    let apps = hop("app_to_proxy", 8080);
    assert_eq!(apps.len(), 3, "{}", dump());
    for r in &apps {
        assert_eq!(s(r, &["verdict"]), "compliant", "{r}");
        assert_eq!(s(r, &["connection_security_policy"]), "mutual_tls", "{r}");
        assert_eq!(
            s(r, &["interceptor", "accepted_on"]),
            "127.0.0.1:4140",
            "{r}"
        );
        assert_eq!(s(r, &["upstream", "linked_by"]), "destination", "{r}");
    }
    let up = hop("proxy_upstream", 8080);
    assert!(!up.is_empty(), "{}", dump());
    for r in &up {
        assert_eq!(s(r, &["verdict"]), "compliant", "{r}");
        assert_eq!(s(r, &["tls", "sni"]), identity("example-a"), "{r}");
        assert_eq!(s(r, &["destination_workload"]), "example-a", "{r}");
    }
    // a's proxy delivering to a's app from a's own address: exempt, not counted.
    let deliveries = hop("proxy_to_app", 8080);
    assert!(!deliveries.is_empty(), "{}", dump());
    for r in &deliveries {
        assert_eq!(s(r, &["client", "addr"]), ip(1).to_string(), "{r}");
        assert_eq!(s(r, &["verdict"]), "exempt", "{r}");
        assert!(
            r["tunnel"].is_null(),
            "an HTTP delivery is no tunnel's: {r}"
        );
    }
    // The opaque port: the app's connection judged by the transport-header
    // connection to a's 4143; the delivery judged by it at the destination.
    let opaque = hop("app_to_proxy", 5432);
    assert_eq!(opaque.len(), 1, "{}", dump());
    assert_eq!(s(opaque[0], &["verdict"]), "compliant", "{}", opaque[0]);
    assert_eq!(
        s(opaque[0], &["upstream", "linked_by"]),
        "tunnel",
        "{}",
        opaque[0]
    );
    assert_eq!(
        s(opaque[0], &["upstream", "server"]),
        format!("{}:4143", ip(1)),
        "{}",
        opaque[0]
    );
    let tunnel = hop("proxy_tunnel", 4143);
    assert_eq!(tunnel.len(), 1, "{}", dump());
    assert_eq!(
        tunnel[0]["tls"]["alpn_offered"][0], "transport.l5d.io/v1",
        "{}",
        tunnel[0]
    );
    let delivered = hop("proxy_to_app", 5432);
    assert_eq!(delivered.len(), 1, "{}", dump());
    assert_eq!(
        s(delivered[0], &["verdict"]),
        "compliant",
        "{}",
        delivered[0]
    );
    assert_eq!(
        s(delivered[0], &["source_workload"]),
        "example-b",
        "{}",
        delivered[0]
    );

    // Plaintext from a client without a proxy: refused.
    let refused = find(&|r| s(r, &["source_workload"]) == "legacy-c");
    assert_eq!(refused.len(), 1, "{}", dump());
    assert_eq!(s(refused[0], &["hop"]), "proxy_inbound", "{}", refused[0]);
    assert_eq!(s(refused[0], &["verdict"]), "rejected", "{}", refused[0]);
    // The admin port.
    let admin = hop("direct", 4191);
    assert_eq!(admin.len(), 1, "{}", dump());
    assert_eq!(s(admin[0], &["verdict"]), "exempt", "{}", admin[0]);
    assert!(
        s(admin[0], &["verdict_reason"]).contains("linkerd-admin"),
        "{}",
        admin[0]
    );
    // No false finding on the mesh's path.
    for r in find(&|r| {
        matches!(
            s(r, &["hop"]).as_str(),
            "app_to_proxy" | "proxy_upstream" | "proxy_to_app" | "proxy_tunnel"
        )
    }) {
        assert!(
            matches!(s(r, &["verdict"]).as_str(), "compliant" | "exempt"),
            "{r}"
        );
    }

    // Metrics: each logical connection once per reporter at the app's port; the
    // tunnel port is none of them.
    let m = |labels: &[(&str, &str)]| metric(&metrics, "mtls_auditor_connections_total", labels);
    let b_to_a = |port: &'static str, reporter: &'static str| {
        m(&[
            ("source_workload", "example-b"),
            ("destination_workload", "example-a"),
            ("destination_port", port),
            ("verdict", "compliant"),
            ("reporter", reporter),
        ])
    };
    assert_eq!(b_to_a("8080", "source"), 3.0, "{metrics}");
    assert_eq!(b_to_a("8080", "destination"), up.len() as f64, "{metrics}");
    assert_eq!(b_to_a("5432", "source"), 1.0, "{metrics}");
    assert_eq!(b_to_a("5432", "destination"), 1.0, "{metrics}");
    assert_eq!(m(&[("destination_port", "4143")]), 0.0, "{metrics}");
    assert_eq!(m(&[("verdict", "violation")]), 0.0, "{metrics}");
}
