//! Istio ambient's data path: istio-cni's in-pod rules and a ztunnel stand-in that
//! opens its sockets inside each enrolled pod's network namespace, carries each app
//! connection as an HTTP/2 CONNECT stream inside mutual TLS to the destination's
//! 15008 (one pooled HBONE connection per identity pair) and delivers to the app
//! from the original client's address. Healthy requests must give no false finding;
//! plaintext that reaches an enrolled pod is rejected (STRICT) or permissive; a pod
//! outside the mesh stays a violation.

use integration_tests::{
    Agent, AgentOptions, Record, TempDir,
    mesh::{AmbientPod, MeshNode, MeshPki, PodSpec, field as s, metric_sum as metric},
    require_root,
};
use std::{net::IpAddr, time::Duration};

const NET: u8 = 76;
const LISTEN: &str = "127.0.0.1:9562";

fn ip(n: u8) -> IpAddr {
    format!("10.213.{NET}.{n}").parse().expect("ip")
}

fn policy(dir: &std::path::Path) {
    let workload = |name: &str, pod: &str, n: u8| {
        format!(
            "  - name: {name}\n    namespace: default\n    labels: {{app: {name}}}\n    match:\n      cgroups: [\"/mtls-auditor-tests/ambient/{pod}/*\"]\n      addresses: [\"{}\"]\n",
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
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata:
  name: example-d
  namespace: default
spec:
  selector:
    matchLabels:
      app: example-d
  mtls:
    mode: PERMISSIVE
---
apiVersion: mtls-auditor.io/v1alpha1
kind: Inventory
metadata:
  name: ambient
spec:
  workloads:
{}{}{}{}{}  - name: ztunnel
    namespace: istio-system
    labels: {{app: ztunnel}}
    match:
      cgroups: ["/mtls-auditor-tests/ambient/ztunnel"]
  services:
  - name: example-a
    namespace: default
    addresses: ["{}"]
"#,
        workload("example-a", "a", 1),
        workload("example-b", "b", 2),
        workload("legacy-c", "c", 3),
        workload("example-d", "d", 4),
        workload("outside-f", "f", 5),
        ip(1)
    );
    std::fs::write(dir.join("policy.yaml"), yaml).expect("policy");
}

#[test]
fn ambient_requests_are_judged_by_their_hbone_tunnel() {
    require_root();
    let work = TempDir::new();
    let pki = MeshPki::generate(work.path(), &["a", "b", "d"]);
    policy(work.path());
    let names = ["a", "b", "c", "d", "f"];
    let specs: Vec<PodSpec> = names
        .iter()
        .map(|n| PodSpec {
            name: (*n).into(),
            ..PodSpec::default()
        })
        .collect();
    let ambient: Vec<AmbientPod> = [
        ("a", true, "STRICT"),
        ("b", true, "STRICT"),
        ("c", false, ""),
        ("d", true, "PERMISSIVE"),
        ("f", false, ""),
    ]
    .into_iter()
    .map(|(n, enrolled, mode)| AmbientPod {
        name: n.into(),
        enrolled,
        mode: mode.into(),
    })
    .collect();
    let agent = Agent::start(
        AgentOptions::default()
            .arg("--policy")
            .arg(work.path().join("policy.yaml").display().to_string())
            .arg("--listen")
            .arg(LISTEN),
    );
    let mut node = MeshNode::new("ambient", NET, specs, &pki, work.path());
    node.start_ztunnel("ambient", &ambient, &pki, work.path());
    for n in ["a", "d", "f"] {
        node.pod_mut(n).start_app(&[8080]);
    }
    let url = |n: u8| format!("http://{}:8080/", ip(n));

    // Three healthy requests from b to a: HBONE, pooled.
    let ztunnel_log =
        || std::fs::read_to_string(work.path().join("ztunnel.log")).unwrap_or_default();
    for _ in 0..3 {
        assert_eq!(
            node.pod("b").curl(&url(1)),
            "hello from a\n",
            "ztunnel's log:\n{}",
            ztunnel_log()
        );
    }
    // A client outside the mesh: refused by a's ztunnel (STRICT) ...
    assert_eq!(node.pod("c").curl(&url(1)), "");
    // ... taken by d's (PERMISSIVE) ...
    assert_eq!(node.pod("c").curl(&url(4)), "hello from d\n");
    // ... and by f, which is not in the mesh at all, under a STRICT policy.
    assert_eq!(node.pod("c").curl(&url(5)), "hello from f\n");
    // The kubelet's probe, which istio-cni sends past ztunnel from 169.254.7.127.
    assert_eq!(node.curl_from_node(&url(1)), "hello from a\n");

    let apps = agent.wait_records(3, Duration::from_secs(20), |r| {
        s(r, &["hop"]) == "app_to_proxy" && s(r, &["source_workload"]) == "example-b"
    });
    agent.wait_records(3, Duration::from_secs(20), |r| {
        s(r, &["hop"]) == "proxy_to_app" && s(r, &["destination_workload"]) == "example-a"
    });
    agent.wait_records(1, Duration::from_secs(20), |r| {
        s(r, &["destination_workload"]) == "outside-f"
    });
    // The pooled HBONE connection closes with ztunnel.
    node.stop_processes();
    agent.wait_records(1, Duration::from_secs(20), |r| {
        s(r, &["hop"]) == "proxy_tunnel"
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

    // The source side: b's app connections, judged by the one pooled HBONE tunnel.
    let mut tunnels = std::collections::BTreeSet::new();
    assert_eq!(apps.len(), 3);
    for r in
        find(&|r| s(r, &["hop"]) == "app_to_proxy" && s(r, &["source_workload"]) == "example-b")
    {
        assert_eq!(s(r, &["verdict"]), "compliant", "{r}");
        assert_eq!(s(r, &["connection_security_policy"]), "mutual_tls", "{r}");
        assert_eq!(s(r, &["destination_workload"]), "example-a", "{r}");
        assert_eq!(r["destination_port"], 8080);
        assert_eq!(s(r, &["upstream", "linked_by"]), "tunnel", "{r}");
        assert_eq!(s(r, &["upstream", "server"]), format!("{}:15008", ip(1)));
        assert_eq!(
            s(r, &["interceptor", "accepted_on"]),
            "127.0.0.1:15001",
            "{r}"
        );
        tunnels.insert(r["upstream"]["socket_cookie"].as_u64().expect("cookie"));
    }
    assert_eq!(tunnels.len(), 1, "one pooled HBONE connection: {}", dump());
    // The destination side: ztunnel's deliveries, from b's own address, judged by
    // the tunnel they came out of, attributed to b.
    let deliveries = find(&|r| {
        s(r, &["hop"]) == "proxy_to_app" && s(r, &["destination_workload"]) == "example-a"
    });
    assert_eq!(deliveries.len(), 3, "{}", dump());
    for r in &deliveries {
        assert_eq!(
            s(r, &["client", "addr"]),
            ip(2).to_string(),
            "the client's own address: {r}"
        );
        assert_eq!(s(r, &["source_workload"]), "example-b", "{r}");
        assert_eq!(s(r, &["verdict"]), "compliant", "{r}");
        assert_eq!(
            s(r, &["tunnel", "server"]),
            format!("{}:15008", ip(1)),
            "{r}"
        );
        assert!(
            s(r, &["evidence"]).contains("out of HBONE connection"),
            "{r}"
        );
    }
    // The tunnel itself: mutual TLS on 15008, ALPN h2, not counted as a connection.
    let t = find(&|r| s(r, &["hop"]) == "proxy_tunnel");
    assert!(!t.is_empty(), "{}", dump());
    assert_eq!(
        s(t[0], &["connection_security_policy"]),
        "mutual_tls",
        "{}",
        t[0]
    );
    // No false finding anywhere on the mesh's path.
    for r in find(&|r| {
        matches!(
            s(r, &["hop"]).as_str(),
            "app_to_proxy" | "proxy_to_app" | "proxy_tunnel"
        )
    }) {
        assert!(
            matches!(s(r, &["verdict"]).as_str(), "compliant" | "exempt"),
            "{r}"
        );
    }

    // Plaintext into the mesh: refused by a STRICT ztunnel, taken by a PERMISSIVE one.
    let by = |src: &str, dst: &str, hop: &str| {
        find(&|r| {
            s(r, &["source_workload"]) == src
                && s(r, &["destination_workload"]) == dst
                && s(r, &["hop"]) == hop
        })
    };
    let r = by("legacy-c", "example-a", "proxy_inbound");
    assert_eq!(s(r[0], &["verdict"]), "rejected", "{}", dump());
    let r = by("legacy-c", "example-d", "proxy_inbound");
    assert_eq!(s(r[0], &["verdict"]), "permissive", "{}", dump());
    let r = by("legacy-c", "example-d", "proxy_to_app");
    assert_eq!(
        s(r[0], &["verdict"]),
        "exempt",
        "ztunnel's delivery of plaintext it accepted: {}",
        dump()
    );
    // Outside the mesh: a real violation.
    let r = by("legacy-c", "outside-f", "direct");
    assert_eq!(s(r[0], &["verdict"]), "violation", "{}", dump());
    // The kubelet's probe: one connection (the node's socket and a's, joined across
    // the SNAT), exempt.
    let probes = find(&|r| {
        r["destination_port"] == 8080
            && s(r, &["destination_workload"]) == "example-a"
            && s(r, &["hop"]) == "direct"
    });
    assert_eq!(probes.len(), 1, "{}", dump());
    assert_eq!(s(probes[0], &["client", "addr"]), "169.254.7.127");
    assert_eq!(s(probes[0], &["verdict"]), "exempt", "{}", probes[0]);
    assert!(
        s(probes[0], &["verdict_reason"]).contains("istio-ambient-probe"),
        "{}",
        probes[0]
    );

    // Metrics: each logical connection once per reporter, at the app's port; the
    // tunnel's port 15008 is no connection of its own.
    let m = |labels: &[(&str, &str)]| metric(&metrics, "mtls_auditor_connections_total", labels);
    let b_to_a = [
        ("source_workload", "example-b"),
        ("destination_workload", "example-a"),
        ("destination_port", "8080"),
        ("verdict", "compliant"),
        ("connection_security_policy", "mutual_tls"),
    ];
    assert_eq!(
        m(&[&b_to_a[..], &[("reporter", "source")]].concat()),
        3.0,
        "{metrics}"
    );
    assert_eq!(
        m(&[&b_to_a[..], &[("reporter", "destination")]].concat()),
        3.0,
        "{metrics}"
    );
    assert_eq!(m(&[("destination_port", "15008")]), 0.0, "{metrics}");
    assert_eq!(
        m(&[
            ("verdict", "violation"),
            ("destination_workload", "example-a")
        ]),
        0.0,
        "{metrics}"
    );
}
