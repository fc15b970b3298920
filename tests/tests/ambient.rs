//! Istio ambient's data path: istio-cni's in-pod rules and a ztunnel stand-in that
//! opens its sockets inside each enrolled pod's network namespace, carries each app
//! connection as an HTTP/2 CONNECT stream inside mutual TLS to the destination's
//! 15008 (one pooled HBONE connection per identity pair) and delivers to the app
//! from the original client's address. Healthy requests must give no false finding;
//! plaintext that reaches an enrolled pod is rejected (STRICT) or permissive; a pod
//! outside the mesh stays a violation. A waypoint (tests/mesh/waypoint.py) puts a
//! second HBONE leg on the path; ztunnel's own ports (metrics, readiness, admin,
//! its in-pod DNS proxy) are the mesh's and exempt, with the reason.

use integration_tests::{
    Agent, AgentOptions, Record, TempDir,
    mesh::{
        AmbientPod, AmbientService, MeshNode, MeshPki, PodSpec, field as s, metric_sum as metric,
    },
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

/// Pods of `net` (pod `i` is `10.213.<net>.<i + 1>`), with their inventory entries.
fn pods(net: u8, names: &[&str]) -> (Vec<PodSpec>, IpAddrs) {
    let specs = names
        .iter()
        .map(|n| PodSpec {
            name: (*n).into(),
            ..PodSpec::default()
        })
        .collect();
    (specs, IpAddrs(net))
}

struct IpAddrs(u8);

impl IpAddrs {
    fn pod(&self, i: u8) -> IpAddr {
        format!("10.213.{}.{i}", self.0).parse().expect("ip")
    }
}

fn enrolled(names: &[&str]) -> Vec<AmbientPod> {
    names
        .iter()
        .map(|n| AmbientPod {
            name: (*n).into(),
            enrolled: true,
            mode: "STRICT".into(),
        })
        .collect()
}

/// A mesh-wide STRICT PeerAuthentication (the root namespace's) and an inventory.
fn strict_policy(dir: &std::path::Path, tag: &str, workloads: &str, services: &str) {
    let yaml = format!(
        r#"apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata:
  name: default
  namespace: istio-system
spec:
  mtls:
    mode: STRICT
---
apiVersion: mtls-auditor.io/v1alpha1
kind: Inventory
metadata:
  name: {tag}
spec:
  workloads:
{workloads}  - name: ztunnel
    namespace: istio-system
    labels: {{app: ztunnel}}
    match:
      cgroups: ["/mtls-auditor-tests/{tag}/ztunnel"]
  services:
{services}"#
    );
    std::fs::write(dir.join("policy.yaml"), yaml).expect("policy");
}

fn workload(tag: &str, name: &str, ns: &str, pod: &str, ip: IpAddr, labels: &str) -> String {
    format!(
        "  - name: {name}\n    namespace: {ns}\n    labels: {{{labels}}}\n    match:\n      cgroups: [\"/mtls-auditor-tests/{tag}/{pod}/*\"]\n      addresses: [\"{ip}\"]\n"
    )
}

/// b asks for example-a's service address, which uses a waypoint: ztunnel carries
/// the connection over HBONE to the waypoint, the waypoint over an HBONE
/// connection of its own (its own identity) to a's 15008, and a's ztunnel
/// delivers from the waypoint's address. Under a mesh-wide STRICT policy every
/// record is compliant or exempt; the app's connection is judged by the HBONE
/// connection to the waypoint (`linked_by: "waypoint"`), the delivery by the
/// waypoint's leg into a, attributed through the waypoint to b; the waypoint's two
/// HBONE legs are not counted as connections. A request to a's own address skips
/// the waypoint. A route on which the waypoint skips HBONE is refused by a's
/// ztunnel (`rejected`, from the waypoint).
#[test]
fn requests_through_a_waypoint_are_judged_by_their_hbone_legs() {
    require_root();
    const TAG: &str = "waypoint";
    const NET: u8 = 160;
    const LISTEN: &str = "127.0.0.1:9564";
    let work = TempDir::new();
    let pki = MeshPki::generate(work.path(), &["a", "b", "waypoint"]);
    let (specs, ip) = pods(NET, &["a", "b", "waypoint"]);
    let vip: IpAddr = format!("10.213.{NET}.100").parse().expect("ip");
    let raw_vip: IpAddr = format!("10.213.{NET}.101").parse().expect("ip");
    let (a, b, w) = (ip.pod(1), ip.pod(2), ip.pod(3));
    strict_policy(
        work.path(),
        TAG,
        &[
            workload(TAG, "example-a", "default", "a", a, "app: example-a"),
            workload(TAG, "example-b", "default", "b", b, "app: example-b"),
            workload(
                TAG,
                "waypoint",
                "default",
                "waypoint",
                w,
                "gateway.networking.k8s.io/gateway-name: waypoint",
            ),
        ]
        .concat(),
        &format!(
            "  - name: example-a\n    namespace: default\n    addresses: [\"{vip}\", \"{a}\"]\n  - name: example-a-raw\n    namespace: default\n    addresses: [\"{raw_vip}\"]\n"
        ),
    );
    let agent = Agent::start(
        AgentOptions::default()
            .arg("--policy")
            .arg(work.path().join("policy.yaml").display().to_string())
            .arg("--listen")
            .arg(LISTEN),
    );
    let mut node = MeshNode::new(TAG, NET, specs, &pki, work.path());
    let via_waypoint = |vip: IpAddr| AmbientService {
        vip,
        endpoints: vec!["a".into()],
        waypoint: Some("waypoint".into()),
    };
    node.start_ztunnel_with(
        TAG,
        &enrolled(&["a", "b"]),
        &[via_waypoint(vip), via_waypoint(raw_vip)],
        &[],
        &pki,
        work.path(),
    );
    node.start_waypoint(
        "waypoint",
        &[
            (vip, 8080, "a", 8080, false),
            (raw_vip, 8080, "a", 8080, true),
        ],
        &pki,
        work.path(),
    );
    node.pod_mut("a").start_app(&[8080]);
    let log = || std::fs::read_to_string(work.path().join("ztunnel.log")).unwrap_or_default();
    let url = |ip: IpAddr| format!("http://{ip}:8080/");

    // Two requests to the service address (through the waypoint, pooled legs), one
    // to a's own address (no waypoint), one on the waypoint's plaintext route.
    for _ in 0..2 {
        assert_eq!(
            node.pod("b").curl(&url(vip)),
            "hello from a\n",
            "log:\n{}",
            log()
        );
    }
    assert_eq!(
        node.pod("b").curl(&url(a)),
        "hello from a\n",
        "log:\n{}",
        log()
    );
    assert_eq!(node.pod("b").curl(&url(raw_vip)), "", "log:\n{}", log());
    agent.wait_records(4, Duration::from_secs(20), |r| {
        s(r, &["hop"]) == "app_to_proxy" && s(r, &["source_workload"]) == "example-b"
    });
    agent.wait_records(3, Duration::from_secs(20), |r| {
        s(r, &["hop"]) == "proxy_to_app" && s(r, &["destination_workload"]) == "example-a"
    });
    // The pooled HBONE connections close with the proxies.
    node.stop_processes();
    agent.wait_records(3, Duration::from_secs(20), |r| {
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
    let hbone = |ip: IpAddr| format!("{ip}:15008");

    // The source: the app's connections to the service address, judged by the one
    // pooled HBONE connection to the waypoint.
    let to_vip =
        find(&|r| s(r, &["hop"]) == "app_to_proxy" && s(r, &["server", "addr"]) == vip.to_string());
    assert_eq!(to_vip.len(), 2, "{}", dump());
    let mut legs = std::collections::BTreeSet::new();
    for r in &to_vip {
        assert_eq!(s(r, &["source_workload"]), "example-b", "{r}");
        assert_eq!(s(r, &["verdict"]), "compliant", "{r}");
        assert_eq!(s(r, &["connection_security_policy"]), "mutual_tls", "{r}");
        assert_eq!(
            s(r, &["destination_service"]),
            "example-a.default.svc.cluster.local",
            "{r}"
        );
        assert_eq!(s(r, &["upstream", "linked_by"]), "waypoint", "{r}");
        assert_eq!(s(r, &["upstream", "server"]), hbone(w), "{r}");
        assert_eq!(s(r, &["upstream", "waypoint", "comm"]), "envoy", "{r}");
        assert!(
            s(r, &["evidence"]).contains("HBONE connection to waypoint envoy"),
            "{r}"
        );
        legs.insert(r["upstream"]["socket_cookie"].as_u64().expect("cookie"));
    }
    assert_eq!(
        legs.len(),
        1,
        "one pooled HBONE connection to the waypoint: {}",
        dump()
    );
    // ... and to a's own address, over ztunnel's HBONE connection to a.
    let direct =
        find(&|r| s(r, &["hop"]) == "app_to_proxy" && s(r, &["server", "addr"]) == a.to_string());
    assert_eq!(direct.len(), 1, "{}", dump());
    assert_eq!(
        s(direct[0], &["upstream", "linked_by"]),
        "tunnel",
        "{}",
        direct[0]
    );
    assert_eq!(
        s(direct[0], &["upstream", "server"]),
        hbone(a),
        "{}",
        direct[0]
    );
    assert_eq!(s(direct[0], &["verdict"]), "compliant", "{}", direct[0]);

    // The destination: a's ztunnel delivers from the waypoint's address; the
    // waypoint's leg into a decides, and the record goes back through the waypoint
    // to b.
    let deliveries = find(&|r| {
        s(r, &["hop"]) == "proxy_to_app" && s(r, &["destination_workload"]) == "example-a"
    });
    assert_eq!(deliveries.len(), 3, "{}", dump());
    let from_waypoint: Vec<_> = deliveries
        .iter()
        .filter(|r| s(r, &["client", "addr"]) == w.to_string())
        .collect();
    assert_eq!(from_waypoint.len(), 2, "{}", dump());
    for r in &deliveries {
        assert_eq!(s(r, &["source_workload"]), "example-b", "{r}");
        assert_eq!(s(r, &["verdict"]), "compliant", "{r}");
        assert_eq!(s(r, &["connection_security_policy"]), "mutual_tls", "{r}");
        assert_eq!(
            s(r, &["expected_security_policy"]),
            "mutual_tls",
            "STRICT: {r}"
        );
        assert_eq!(s(r, &["tunnel", "server"]), hbone(a), "{r}");
    }
    for r in &from_waypoint {
        assert!(
            s(r, &["tunnel", "client"]).starts_with(&format!("{w}:")),
            "{r}"
        );
        assert_eq!(s(r, &["tunnel", "waypoint", "comm"]), "envoy", "{r}");
        assert_eq!(s(r, &["tunnel", "waypoint", "clients"]), "1", "{r}");
        assert!(
            s(r, &["tunnel", "waypoint", "received_over", "client"]).starts_with(&format!("{b}:")),
            "{r}"
        );
        assert_eq!(
            s(r, &["tunnel", "waypoint", "received_over", "server"]),
            hbone(w),
            "{r}"
        );
        assert!(s(r, &["evidence"]).contains("from waypoint envoy"), "{r}");
    }

    // The HBONE legs: b -> waypoint, waypoint -> a (its own identity), b -> a; all
    // mutual TLS, none counted as a connection.
    let tunnels = find(&|r| s(r, &["hop"]) == "proxy_tunnel");
    for (from, to) in [(b, w), (w, a), (b, a)] {
        let t: Vec<_> = tunnels
            .iter()
            .filter(|r| {
                s(r, &["client", "addr"]) == from.to_string()
                    && s(r, &["server", "addr"]) == to.to_string()
            })
            .collect();
        assert_eq!(t.len(), 1, "{from} -> {to}:15008: {}", dump());
        assert_eq!(
            s(t[0], &["connection_security_policy"]),
            "mutual_tls",
            "{}",
            t[0]
        );
    }

    // The waypoint's plaintext route: a's ztunnel refuses it (STRICT), and the
    // record names the waypoint as the client.
    let raw =
        find(&|r| s(r, &["hop"]) == "proxy_inbound" && s(r, &["source_workload"]) == "waypoint");
    assert_eq!(raw.len(), 1, "{}", dump());
    assert_eq!(s(raw[0], &["verdict"]), "rejected", "{}", raw[0]);
    assert_eq!(
        s(raw[0], &["destination_workload"]),
        "example-a",
        "{}",
        raw[0]
    );

    // Nothing on the mesh's path is a finding.
    for r in &all {
        assert_ne!(s(r, &["verdict"]), "violation", "{r}");
    }
    let m = |labels: &[(&str, &str)]| metric(&metrics, "mtls_auditor_connections_total", labels);
    let b_to_a = [
        ("source_workload", "example-b"),
        ("destination_workload", "example-a"),
        ("destination_port", "8080"),
        ("verdict", "compliant"),
        ("connection_security_policy", "mutual_tls"),
        ("reporter", "destination"),
    ];
    assert_eq!(m(&b_to_a), 3.0, "{metrics}");
    assert_eq!(
        m(&[("source_workload", "example-b"), ("reporter", "source")]),
        4.0,
        "each app connection once at the source: {metrics}"
    );
    assert_eq!(m(&[("destination_port", "15008")]), 0.0, "{metrics}");
    assert_eq!(
        m(&[("source_workload", "waypoint"), ("verdict", "compliant")]),
        0.0,
        "{metrics}"
    );
}

/// ztunnel's own ports under a mesh-wide STRICT policy: a real Prometheus in
/// another pod scrapes ztunnel's 15020, the kubelet (the node) probes its 15021,
/// an admin call reaches 15000 on loopback in ztunnel's pod, and an enrolled app's
/// DNS over TCP is REDIRECTed to ztunnel's in-pod DNS proxy on 15053 (which asks no
/// SO_ORIGINAL_DST). None is a finding, and each record says which built-in
/// exemption covers it and why. A client outside the mesh dialling an enrolled
/// pod's 15001 meets ztunnel's plaintext inbound and is refused (`rejected`).
#[test]
fn ztunnels_own_ports_are_exempt_under_strict() {
    require_root();
    const TAG: &str = "ztports";
    const NET: u8 = 161;
    const LISTEN: &str = "127.0.0.1:9565";
    const PROMETHEUS: &str = "127.0.0.1:19565";
    let work = TempDir::new();
    let pki = MeshPki::generate(work.path(), &["a", "b"]);
    let (specs, ip) = pods(NET, &["a", "b", "p"]);
    let (a, b, p) = (ip.pod(1), ip.pod(2), ip.pod(3));
    let kube_dns: IpAddr = format!("10.213.{NET}.53").parse().expect("ip");
    strict_policy(
        work.path(),
        TAG,
        &[
            workload(TAG, "example-a", "default", "a", a, "app: example-a"),
            workload(TAG, "example-b", "default", "b", b, "app: example-b"),
            workload(TAG, "prometheus", "monitoring", "p", p, "app: prometheus"),
        ]
        .concat(),
        &format!("  - name: example-a\n    namespace: default\n    addresses: [\"{a}\"]\n"),
    );
    let agent = Agent::start(
        AgentOptions::default()
            .arg("--policy")
            .arg(work.path().join("policy.yaml").display().to_string())
            .arg("--listen")
            .arg(LISTEN),
    );
    let mut node = MeshNode::new(TAG, NET, specs, &pki, work.path());
    node.start_ztunnel_with(
        TAG,
        &enrolled(&["a", "b"]),
        &[],
        &[("example-a.default.svc.cluster.local", a)],
        &pki,
        work.path(),
    );
    node.pod_mut("a").start_app(&[8080]);
    let zt = node.ztunnel_ip();
    // ztunnel intercepts in b's pod first: from then on it is known as a proxy.
    assert_eq!(
        node.pod("b").curl(&format!("http://{a}:8080/")),
        "hello from a\n"
    );

    // DNS over TCP from b's app to the cluster's DNS address: REDIRECTed to
    // ztunnel's DNS proxy inside b's pod.
    let dnsq = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("mesh/dnsq.py");
    let out = node.pod("b").run(
        "/usr/bin/python3",
        &[
            dnsq.to_str().expect("utf8"),
            "example-a.default.svc.cluster.local",
            &format!("{kube_dns}:53"),
        ],
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        a.to_string(),
        "{out:?}"
    );
    // The kubelet's readiness probe of ztunnel's pod.
    assert_eq!(
        node.curl_from_node(&format!("http://{zt}:15021/healthz/ready")),
        "ready\n"
    );
    // An admin call on loopback inside ztunnel's pod.
    let admin = node.run_in_ztunnel(
        "curl",
        &[
            "-sS",
            "--max-time",
            "5",
            "http://127.0.0.1:15000/config_dump",
        ],
    );
    assert_eq!(String::from_utf8_lossy(&admin.stdout), "{}\n", "{admin:?}");
    // A client outside the mesh dials b's 15001 directly.
    assert_eq!(node.pod("p").curl(&format!("http://{b}:15001/")), "");

    // A real Prometheus in pod p scrapes ztunnel's metrics until one scrape is up.
    let prom_dir = work.path().join("prometheus");
    std::fs::create_dir_all(&prom_dir).expect("mkdir");
    std::fs::write(
        prom_dir.join("prometheus.yml"),
        format!(
            "global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: ztunnel\n    metrics_path: /stats/prometheus\n    static_configs:\n      - targets: ['{zt}:15020']\n"
        ),
    )
    .expect("prometheus.yml");
    let prom = integration_tests::Spawn::new("prometheus")
        .arg(format!(
            "--config.file={}",
            prom_dir.join("prometheus.yml").display()
        ))
        .arg(format!(
            "--storage.tsdb.path={}",
            prom_dir.join("tsdb").display()
        ))
        .arg(format!("--web.listen-address={PROMETHEUS}"))
        .netns(&node.pod("p").ns)
        .cgroup(node.pod("p").app_cgroup())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn();
    let up = integration_tests::wait_for(Duration::from_secs(30), || {
        std::thread::sleep(Duration::from_millis(500));
        let out = node.pod("p").run(
            "curl",
            &[
                "-sS",
                "--max-time",
                "2",
                &format!("http://{PROMETHEUS}/api/v1/query?query=up%7Bjob%3D%22ztunnel%22%7D"),
            ],
        );
        // One sample of `up`, and it is 1: the scrape succeeded.
        let body = String::from_utf8_lossy(&out.stdout).into_owned();
        body.contains(r#""1"]"#).then_some(body)
    });
    assert!(up.is_some(), "Prometheus never scraped ztunnel's 15020");
    drop(prom);
    agent.wait_records(1, Duration::from_secs(20), |r| r["server"]["port"] == 15020);
    node.stop_processes();
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
    let to = |addr: IpAddr, port: u16| -> Vec<&Record> {
        all.iter()
            .filter(|r| {
                s(r, &["server", "addr"]) == addr.to_string() && r["server"]["port"] == port
            })
            .collect()
    };
    let exempt = |r: &Record, name: &str, why: &str| {
        assert_eq!(s(r, &["verdict"]), "exempt", "{r}");
        let reason = s(r, &["verdict_reason"]);
        assert!(
            reason.contains(&format!("built-in exemption {name}")),
            "{r}"
        );
        assert!(reason.contains(why), "{r}");
    };

    let scrapes = to(zt, 15020);
    assert!(!scrapes.is_empty(), "{}", dump());
    for r in &scrapes {
        assert_eq!(s(r, &["source_workload"]), "prometheus", "{r}");
        assert_eq!(s(r, &["destination_workload"]), "ztunnel", "{r}");
        exempt(r, "istio-ztunnel", "serves its Prometheus metrics");
    }
    let probes = to(zt, 15021);
    assert_eq!(probes.len(), 1, "{}", dump());
    exempt(probes[0], "istio-ztunnel", "serves its readiness probe");
    let admin = to("127.0.0.1".parse().expect("ip"), 15000);
    assert_eq!(admin.len(), 1, "{}", dump());
    exempt(
        admin[0],
        "istio-ztunnel",
        "serves its admin API on loopback",
    );
    let dns: Vec<&Record> = all
        .iter()
        .filter(|r| s(r, &["source_workload"]) == "example-b" && r["server"]["port"] == 15053)
        .collect();
    assert_eq!(dns.len(), 1, "{}", dump());
    exempt(
        dns[0],
        "istio-dns",
        &format!("the app's DNS to {kube_dns}:53 answered by python3"),
    );
    assert_eq!(
        s(dns[0], &["nat", "socket_server"]),
        format!("{kube_dns}:53"),
        "{}",
        dns[0]
    );
    let dialled = to(b, 15001);
    assert_eq!(dialled.len(), 1, "{}", dump());
    assert_eq!(s(dialled[0], &["hop"]), "proxy_inbound", "{}", dialled[0]);
    assert_eq!(s(dialled[0], &["verdict"]), "rejected", "{}", dialled[0]);

    // Under STRICT, none of them is a violation.
    assert_eq!(
        metric(
            &metrics,
            "mtls_auditor_connections_total",
            &[("verdict", "violation")]
        ),
        0.0,
        "{metrics}"
    );
    for r in &all {
        assert_ne!(s(r, &["verdict"]), "violation", "{r}");
    }
}
