//! Issue 6: in-cluster mode against a local server that speaks the Kubernetes list
//! and watch protocol. Real probes, real traffic between network namespaces whose
//! processes sit in cgroups with the paths the kubelet gives pods (systemd and
//! cgroupfs drivers, containerd, CRI-O and Docker), and real-format API objects.
//! Asserts attribution and expectations in the JSON lines and the metrics, and that
//! they follow the objects as they change: through the watch, after `410 Gone`
//! (re-list) and after dropped connections.

use std::{net::IpAddr, time::Duration};

use integration_tests::{
    Agent, AgentOptions, CgroupTree, NetnsPair, Record, Spawn, TempDir, agent_bin,
    kubeapi::{FakeApi, write_kubeconfig},
    peers::{curl, http_server},
    require_root, wait_for,
};
use serde_json::{Value, json};

const LISTEN: &str = "127.0.0.1:19479";
const NODE: &str = "test-node";

const CART_UID: &str = "3f0c6a9e-5b1d-4c2e-9a7f-0d1e2f3a4b5c";
const CART_CONTAINER: &str = "8c1f2e3d4b5a69788796a5b4c3d2e1f00f1e2d3c4b5a69788796a5b4c3d2e1f0";
const CHECKOUT_UID: &str = "a1b2c3d4-e5f6-4789-8abc-def012345678";
const CHECKOUT_CONTAINER: &str = "b7e4d2c1a0f9e8d7c6b5a4938271605f4e3d2c1b0a9f8e7d6c5b4a3928170605";
const EXPORTER_UID: &str = "0d9e8f7a-6b5c-4d3e-2f1a-0b9c8d7e6f5a";
const EXPORTER_CONTAINER: &str = "4f3e2d1c0b9a8f7e6d5c4b3a29180706f5e4d3c2b1a09f8e7d6c5b4a39281706";

const PODS: &str = "/api/v1/pods";
const SERVICES: &str = "/api/v1/services";
const SLICES: &str = "/apis/discovery.k8s.io/v1/endpointslices";
const PEER_AUTHS: &str = "/apis/security.istio.io/v1/peerauthentications";
const DEST_RULES: &str = "/apis/networking.istio.io/v1/destinationrules";
const SERVERS: &str = "/apis/policy.linkerd.io/v1beta3/servers";
const AUTHZ: &str = "/apis/policy.linkerd.io/v1alpha1/authorizationpolicies";
const MESH_TLS: &str = "/apis/policy.linkerd.io/v1alpha1/meshtlsauthentications";
const NET_AUTHN: &str = "/apis/policy.linkerd.io/v1alpha1/networkauthentications";

fn s(r: &Record, k: &str) -> String {
    r.get(k).and_then(Value::as_str).unwrap_or("").to_owned()
}

/// Asserts string fields of a record.
fn assert_fields(r: &Record, want: &[(&str, &str)]) {
    for (k, v) in want {
        assert_eq!(s(r, k), *v, "{k} in {r}");
    }
}

/// A pod as the API server returns it.
#[allow(clippy::too_many_arguments)]
fn pod(
    namespace: &str,
    name: &str,
    uid: &str,
    labels: Value,
    owner: (&str, &str, &str),
    ip: Option<IpAddr>,
    host_network: bool,
    container: (&str, &str),
    node: &str,
) -> Value {
    let (owner_api, owner_kind, owner_name) = owner;
    let (container_name, container_id) = container;
    let ips: Vec<Value> = ip.iter().map(|i| json!({"ip": i.to_string()})).collect();
    json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "uid": uid,
            "creationTimestamp": "2026-11-28T10:00:00Z",
            "labels": labels,
            "ownerReferences": [{
                "apiVersion": owner_api,
                "kind": owner_kind,
                "name": owner_name,
                "uid": "0e1d2c3b-4a59-4687-9786-a5b4c3d2e1f0",
                "controller": true,
                "blockOwnerDeletion": true
            }]
        },
        "spec": {
            "nodeName": node,
            "hostNetwork": host_network,
            "serviceAccountName": "default",
            "containers": [{"name": container_name, "image": "registry.example/app:1.0"}]
        },
        "status": {
            "phase": "Running",
            "hostIP": "192.0.2.10",
            "podIP": ip.map(|i| i.to_string()),
            "podIPs": ips,
            "containerStatuses": [{
                "name": container_name,
                "containerID": container_id,
                "image": "registry.example/app:1.0",
                "imageID": "registry.example/app@sha256:0000000000000000000000000000000000000000000000000000000000000000",
                "ready": true,
                "restartCount": 0,
                "started": true,
                "state": {"running": {"startedAt": "2026-11-28T10:00:05Z"}}
            }]
        }
    })
}

fn cart_pod(pair: &NetnsPair, app: &str) -> Value {
    pod(
        "shop",
        "cart-7d9f8b6c5-x2k4p",
        CART_UID,
        json!({"app": app, "pod-template-hash": "7d9f8b6c5"}),
        ("apps/v1", "ReplicaSet", "cart-7d9f8b6c5"),
        Some(pair.b_v4()),
        false,
        ("cart", &format!("containerd://{CART_CONTAINER}")),
        NODE,
    )
}

/// checkout declares an Istio sidecar (`sidecar.istio.io/status`): DestinationRules
/// configure its proxy, so they say what it must send.
fn checkout_pod(pair: &NetnsPair) -> Value {
    let mut p = pod(
        "shop",
        "checkout-0",
        CHECKOUT_UID,
        json!({"app.kubernetes.io/name": "checkout", "service.istio.io/canonical-name": "checkout-svc", "statefulset.kubernetes.io/pod-name": "checkout-0"}),
        ("apps/v1", "StatefulSet", "checkout"),
        Some(pair.a_v4()),
        false,
        ("checkout", &format!("cri-o://{CHECKOUT_CONTAINER}")),
        NODE,
    );
    p["metadata"]["annotations"] =
        json!({"sidecar.istio.io/status": "{\"containers\":[\"istio-proxy\"]}"});
    p
}

/// Pod-shaped cgroups below `mtls-auditor-tests/<prefix>`: cart (systemd driver,
/// containerd), checkout (cgroupfs driver, CRI-O), then `extra`.
fn pod_cgroups(prefix: &str, extra: &str) -> CgroupTree {
    CgroupTree::new(&[
        &format!(
            "{prefix}/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{}.slice/cri-containerd-{CART_CONTAINER}.scope",
            CART_UID.replace('-', "_")
        ),
        &format!("{prefix}/kubepods/burstable/pod{CHECKOUT_UID}/crio-{CHECKOUT_CONTAINER}"),
        &format!("{prefix}/{extra}"),
    ])
}

fn peer_authentication(mode: &str) -> Value {
    json!({
        "apiVersion": "security.istio.io/v1",
        "kind": "PeerAuthentication",
        "metadata": {"name": "cart-strict", "namespace": "shop", "uid": "5e6f7a8b-9c0d-4e1f-a2b3-c4d5e6f7a8b9", "generation": 1},
        "spec": {"selector": {"matchLabels": {"app": "cart"}}, "mtls": {"mode": mode}}
    })
}

/// Makes one plaintext HTTP request from checkout to cart and returns its record.
fn checkout_to_cart(
    agent: &Agent,
    pair: &NetnsPair,
    tree: &CgroupTree,
    seen: &mut usize,
) -> Record {
    curl(
        Some(&pair.a),
        Some(tree.leaf(1)),
        &format!("http://{}:8080/", pair.b_v4()),
        &["-o", "/dev/null"],
    );
    *seen += 1;
    let recs = agent.wait_records(*seen, Duration::from_secs(15), |r| {
        r["server"]["port"].as_u64() == Some(8080) && r["client"]["addr"] == pair.a_v4().to_string()
    });
    recs[*seen - 1].clone()
}

/// One plaintext HTTP request from checkout (its pod cgroup) to port `port` of the
/// other namespace, the first to that port: its record.
fn first_request_from_checkout(
    agent: &Agent,
    pair: &NetnsPair,
    tree: &CgroupTree,
    port: u16,
) -> Record {
    curl(
        Some(&pair.a),
        Some(tree.leaf(1)),
        &format!("http://{}:{port}/", pair.b_v4()),
        &["-o", "/dev/null"],
    );
    let recs = agent.wait_records(1, Duration::from_secs(15), |r| {
        r["server"]["port"].as_u64() == Some(u64::from(port))
    });
    recs[0].clone()
}

/// Repeats `checkout_to_cart` until `want` holds (the watch delivers within seconds).
fn until(
    agent: &Agent,
    pair: &NetnsPair,
    tree: &CgroupTree,
    seen: &mut usize,
    what: &str,
    want: impl Fn(&Record) -> bool,
) -> Record {
    let mut last = None;
    for _ in 0..20 {
        let r = checkout_to_cart(agent, pair, tree, seen);
        if want(&r) {
            return r;
        }
        last = Some(r);
        std::thread::sleep(Duration::from_millis(500));
    }
    panic!(
        "{what}: never seen; last record {}\nagent said:\n{}",
        last.unwrap_or_default(),
        agent.stderr()
    );
}

fn metrics() -> String {
    ureq::get(&format!("http://{LISTEN}/metrics"))
        .call()
        .expect("metrics")
        .into_body()
        .read_to_string()
        .expect("body")
}

fn list_requests(api: &FakeApi, path: &str) -> usize {
    api.requests()
        .iter()
        .filter(|r| r.starts_with(&format!("{path}?")) && !r.contains("watch=true"))
        .count()
}

#[test]
fn pods_services_and_istio_policy_from_the_api_server() {
    require_root();
    let pair = NetnsPair::new("k8s", 60);
    // The third: systemd driver, Docker (cri-dockerd), a host-network pod.
    let tree = pod_cgroups(
        "k8s",
        &format!(
            "kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{}.slice/docker-{EXPORTER_CONTAINER}.scope",
            EXPORTER_UID.replace('-', "_")
        ),
    );

    let api = FakeApi::start();
    api.upsert(PODS, cart_pod(&pair, "cart"));
    api.upsert(PODS, checkout_pod(&pair));
    api.upsert(
        PODS,
        pod(
            "monitoring",
            "node-exporter-7xk2q",
            EXPORTER_UID,
            json!({"app.kubernetes.io/name": "node-exporter", "controller-revision-hash": "6d5f8c7b9"}),
            ("apps/v1", "DaemonSet", "node-exporter"),
            Some("192.0.2.10".parse().expect("ip")),
            true,
            ("node-exporter", &format!("docker://{EXPORTER_CONTAINER}")),
            NODE,
        ),
    );
    // A pod of another node: the field selector keeps it out.
    api.upsert(
        PODS,
        pod(
            "shop",
            "cart-7d9f8b6c5-remote",
            "77777777-8888-4999-aaaa-bbbbbbbbbbbb",
            json!({"app": "cart"}),
            ("apps/v1", "ReplicaSet", "cart-7d9f8b6c5"),
            Some(pair.a_v4()),
            false,
            (
                "cart",
                "containerd://0000000000000000000000000000000000000000000000000000000000000000",
            ),
            "other-node",
        ),
    );
    api.upsert(
        SERVICES,
        json!({
            "apiVersion": "v1", "kind": "Service",
            "metadata": {"name": "cart", "namespace": "shop", "uid": "c0ffee00-0000-4000-8000-000000000001"},
            "spec": {"type": "ClusterIP", "clusterIP": "10.213.61.10", "clusterIPs": ["10.213.61.10"],
                     "ipFamilies": ["IPv4"], "selector": {"app": "cart"},
                     "ports": [{"name": "http", "port": 80, "protocol": "TCP", "targetPort": 8080}]}
        }),
    );
    api.upsert(
        SLICES,
        json!({
            "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {"name": "cart-x7f2k", "namespace": "shop",
                         "labels": {"kubernetes.io/service-name": "cart", "endpointslice.kubernetes.io/managed-by": "endpointslice-controller.k8s.io"},
                         "ownerReferences": [{"apiVersion": "v1", "kind": "Service", "name": "cart", "uid": "c0ffee00-0000-4000-8000-000000000001", "controller": true}]},
            "addressType": "IPv4",
            "endpoints": [{"addresses": [pair.b_v4().to_string()], "conditions": {"ready": true, "serving": true, "terminating": false},
                           "nodeName": NODE, "targetRef": {"kind": "Pod", "name": "cart-7d9f8b6c5-x2k4p", "namespace": "shop", "uid": CART_UID}}],
            "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}]
        }),
    );
    api.upsert(PEER_AUTHS, peer_authentication("STRICT"));

    let dir = TempDir::new();
    let kubeconfig = dir.path().join("kubeconfig");
    api.kubeconfig(&kubeconfig);
    let www = dir.path().join("www");
    std::fs::create_dir_all(&www).expect("mkdir");
    std::fs::write(www.join("index.html"), "cart\n").expect("write");

    let agent = start_cluster_agent(&kubeconfig, LISTEN);
    wait_ready(&agent, LISTEN, Duration::from_secs(20));
    let reqs = api.requests();
    assert!(
        reqs.iter().any(|r| r.starts_with("/api/v1/pods?")
            && r.contains("fieldSelector=spec.nodeName=test-node")),
        "pods are not listed by node: {reqs:#?}"
    );
    assert!(
        reqs.iter()
            .filter(|r| r.contains("watch=true"))
            .all(|r| r.contains("allowWatchBookmarks=true")),
        "every watch asks for bookmarks: {reqs:#?}"
    );

    let _cart = http_server(Some(&pair.b), Some(tree.leaf(0)), pair.b_v4(), 8080, &www);
    let mut seen = 0;

    // 1. STRICT for app=cart: a plaintext request is a violation, both ends named.
    let r = until(
        &agent,
        &pair,
        &tree,
        &mut seen,
        "violation under STRICT",
        |r| s(r, "verdict") == "violation",
    );
    assert_fields(
        &r,
        &[
            ("source_workload", "checkout"),
            ("source_workload_namespace", "shop"),
            ("source_pod", "checkout-0"),
            ("source_container", "checkout"),
            ("source_canonical_service", "checkout-svc"),
            ("destination_workload", "cart"),
            ("destination_workload_namespace", "shop"),
            ("destination_pod", "cart-7d9f8b6c5-x2k4p"),
            ("destination_container", "cart"),
            ("destination_canonical_service", "cart"),
            ("destination_service", "cart.shop.svc.cluster.local"),
            ("expected_security_policy", "mutual_tls"),
            ("connection_security_policy", "none"),
        ],
    );
    assert!(
        s(&r, "verdict_reason").contains("PeerAuthentication shop/cart-strict"),
        "{r}"
    );
    assert!(
        r["policies"]
            .to_string()
            .contains("PeerAuthentication shop/cart-strict spec.mtls.mode=STRICT"),
        "{r}"
    );

    let m = metrics();
    let line = m
        .lines()
        .find(|l| {
            l.starts_with("mtls_auditor_connections_total{")
                && l.contains(r#"source_workload="checkout""#)
                && l.contains(r#"source_workload_namespace="shop""#)
                && l.contains(r#"destination_workload="cart""#)
                && l.contains(r#"destination_workload_namespace="shop""#)
                && l.contains(r#"verdict="violation""#)
        })
        .unwrap_or_else(|| panic!("no checkout -> cart violation in the metrics:\n{m}"));
    assert!(
        line.contains(r#"expected_security_policy="mutual_tls""#),
        "{line}"
    );

    // Attribution without a pod cgroup: a process in checkout's network namespace
    // but outside its cgroups is found by the pod IP.
    curl(
        Some(&pair.a),
        None,
        &format!("http://{}:8080/", pair.b_v4()),
        &["-o", "/dev/null"],
    );
    seen += 1;
    let recs = agent.wait_records(seen, Duration::from_secs(15), |r| {
        r["server"]["port"].as_u64() == Some(8080) && r["client"]["addr"] == pair.a_v4().to_string()
    });
    let by_ip = &recs[seen - 1];
    assert_eq!(s(by_ip, "source_workload"), "checkout", "{by_ip}");
    assert_eq!(s(by_ip, "source_pod"), "checkout-0", "{by_ip}");
    assert_eq!(
        s(by_ip, "source_container"),
        "",
        "no cgroup, no container: {by_ip}"
    );

    // A host-network pod (by its cgroup) talking to the node itself.
    let _node_server = http_server(None, None, "127.0.0.1".parse().expect("ip"), 19482, &www);
    curl(
        None,
        Some(tree.leaf(2)),
        "http://127.0.0.1:19482/",
        &["-o", "/dev/null"],
    );
    let recs = agent.wait_records(1, Duration::from_secs(15), |r| {
        r["server"]["port"].as_u64() == Some(19482)
    });
    let h = &recs[0];
    assert_eq!(s(h, "source_workload"), "node-exporter", "{h}");
    assert_eq!(s(h, "source_workload_namespace"), "monitoring", "{h}");
    assert_eq!(s(h, "source_pod"), "node-exporter-7xk2q", "{h}");
    assert_eq!(s(h, "source_container"), "node-exporter", "{h}");
    assert_eq!(s(h, "destination_workload"), NODE, "{h}");
    assert_eq!(s(h, "destination_workload_namespace"), "node", "{h}");

    // 2. The PeerAuthentication changes through the open watch.
    api.upsert(PEER_AUTHS, peer_authentication("PERMISSIVE"));
    let r = until(
        &agent,
        &pair,
        &tree,
        &mut seen,
        "permissive after MODIFIED",
        |r| s(r, "verdict") == "permissive",
    );
    assert_eq!(s(&r, "expected_security_policy"), "none", "{r}");

    // 3. History is compacted while the watch is down: the next watch gets 410 Gone,
    //    the agent lists again and sees the change made meanwhile.
    let lists_before = list_requests(&api, PEER_AUTHS);
    api.compact();
    api.upsert(PEER_AUTHS, peer_authentication("STRICT"));
    let r = until(
        &agent,
        &pair,
        &tree,
        &mut seen,
        "violation after 410 Gone",
        |r| s(r, "verdict") == "violation",
    );
    assert_eq!(s(&r, "expected_security_policy"), "mutual_tls", "{r}");
    let relisted = wait_for(Duration::from_secs(10), || {
        (list_requests(&api, PEER_AUTHS) > lists_before).then_some(())
    });
    assert!(
        relisted.is_some(),
        "no re-list after 410 Gone: {:#?}",
        api.requests()
    );

    // 4. Connections dropped (an API-server restart): the pod's label changes while
    //    the agent re-watches; the PeerAuthentication no longer selects it.
    api.drop_watches();
    api.upsert(PODS, cart_pod(&pair, "cart-v2"));
    let r = until(
        &agent,
        &pair,
        &tree,
        &mut seen,
        "pod relabelled after a dropped watch",
        |r| s(r, "destination_canonical_service") == "cart-v2",
    );
    assert_eq!(s(&r, "verdict"), "permissive", "{r}");
    assert_eq!(s(&r, "destination_workload"), "cart", "{r}");

    // 5. A DestinationRule makes clients of the cart service originate mTLS.
    api.upsert(
        DEST_RULES,
        json!({
            "apiVersion": "networking.istio.io/v1",
            "kind": "DestinationRule",
            "metadata": {"name": "cart-mtls", "namespace": "shop", "uid": "9a8b7c6d-5e4f-4a3b-8c2d-1e0f9a8b7c6d", "generation": 1},
            "spec": {"host": "cart", "trafficPolicy": {"tls": {"mode": "ISTIO_MUTUAL"}}}
        }),
    );
    let r = until(
        &agent,
        &pair,
        &tree,
        &mut seen,
        "DestinationRule ISTIO_MUTUAL",
        |r| s(r, "expected_security_policy") == "mutual_tls",
    );
    assert_eq!(s(&r, "verdict"), "violation", "{r}");
    assert!(
        s(&r, "verdict_reason").contains("DestinationRule shop/cart-mtls"),
        "{r}"
    );

    // 6. The pod is deleted: its connections are no longer attributed to it.
    api.delete(PODS, cart_pod(&pair, "cart-v2"));
    let r = until(&agent, &pair, &tree, &mut seen, "pod deleted", |r| {
        s(r, "destination_pod").is_empty()
    });
    // Its cgroup still says "a pod", so it is not mistaken for the node.
    assert_eq!(s(&r, "destination_workload"), "unknown", "{r}");

    agent.stop_cleanly();
}

/// `--remote-pods`: every pod of the cluster is listed (no field selector), and an
/// address of a pod on another node names that pod, its workload and its labels,
/// which the policy sees: a workload-selector PERMISSIVE exception under a
/// namespace-wide STRICT applies to it. A policy file beside the cluster exempts
/// the pod's container port named `metrics`.
#[test]
fn remote_pods_are_attributed_by_ip_and_judged_with_their_labels() {
    require_root();
    let pair = NetnsPair::new("k8srp", 62);
    // The server runs on this host in a plain cgroup: only its pod IP can name it.
    let tree = pod_cgroups("k8s-rp", "remote-cart");
    let api = FakeApi::start();
    api.upsert(PODS, checkout_pod(&pair));
    let mut cart = cart_pod(&pair, "cart");
    cart["spec"]["nodeName"] = json!("other-node");
    cart["metadata"]["name"] = json!("cart-7d9f8b6c5-remote");
    cart["spec"]["containers"][0]["ports"] = json!([
        {"name": "http", "containerPort": 8080, "protocol": "TCP"},
        {"name": "metrics", "containerPort": 9090, "protocol": "TCP"}
    ]);
    api.upsert(PODS, cart);
    api.upsert(
        PEER_AUTHS,
        json!({
            "apiVersion": "security.istio.io/v1",
            "kind": "PeerAuthentication",
            "metadata": {"name": "shop-strict", "namespace": "shop", "uid": "1a2b3c4d-5e6f-4a7b-8c9d-0e1f2a3b4c5d", "generation": 1},
            "spec": {"mtls": {"mode": "STRICT"}}
        }),
    );
    api.upsert(PEER_AUTHS, peer_authentication("PERMISSIVE"));

    let dir = TempDir::new();
    let kubeconfig = dir.path().join("kubeconfig");
    api.kubeconfig(&kubeconfig);
    let www = dir.path().join("www");
    std::fs::create_dir_all(&www).expect("mkdir");
    std::fs::write(www.join("index.html"), "cart\n").expect("write");
    let policy = dir.path().join("exemptions.yaml");
    std::fs::write(
        &policy,
        "apiVersion: mtls-auditor.io/v1alpha1\nkind: TransportPolicy\nmetadata:\n  name: scrapes\n  namespace: shop\nspec:\n  exemptions:\n  - name: metrics-scrapes\n    reason: Prometheus scrapes\n    match:\n      portNames: [metrics]\n",
    )
    .expect("write policy");

    let listen = "127.0.0.1:19486";
    let agent = start_cluster_agent_with(
        &kubeconfig,
        listen,
        &["--remote-pods", "--policy", policy.to_str().expect("utf8")],
    );
    wait_ready(&agent, listen, Duration::from_secs(20));
    let reqs = api.requests();
    let pod_lists: Vec<&String> = reqs
        .iter()
        .filter(|r| r.starts_with("/api/v1/pods?"))
        .collect();
    assert!(
        !pod_lists.is_empty() && pod_lists.iter().all(|r| !r.contains("fieldSelector")),
        "pods are listed cluster-wide with --remote-pods: {pod_lists:#?}"
    );

    let _cart = http_server(Some(&pair.b), Some(tree.leaf(2)), pair.b_v4(), 8080, &www);
    let mut seen = 0;
    let r = until(
        &agent,
        &pair,
        &tree,
        &mut seen,
        "the remote pod attributed",
        |r| s(r, "destination_pod") == "cart-7d9f8b6c5-remote",
    );
    assert_fields(
        &r,
        &[
            ("source_workload", "checkout"),
            ("destination_workload", "cart"),
            ("destination_workload_namespace", "shop"),
            ("destination_canonical_service", "cart"),
            ("expected_security_policy", "none"),
            ("verdict", "permissive"),
        ],
    );
    assert!(
        s(&r, "verdict_reason")
            .contains("PeerAuthentication shop/cart-strict spec.mtls.mode=PERMISSIVE"),
        "the selector's exception decides, not the namespace's STRICT: {r}"
    );

    // The pod's port named `metrics` is exempt by name, from the file.
    let _metrics = http_server(Some(&pair.b), Some(tree.leaf(2)), pair.b_v4(), 9090, &www);
    let m = &first_request_from_checkout(&agent, &pair, &tree, 9090);
    assert_eq!(s(m, "verdict"), "exempt", "{m}");
    assert!(s(m, "verdict_reason").contains("metrics-scrapes"), "{m}");
    agent.stop_cleanly();
}

/// An AuthorizationPolicy of shop for the Server `cart-http`, requiring `authn`
/// (kind, name).
fn authorization(name: &str, target_kind: &str, authn: (&str, &str)) -> Value {
    let group = if target_kind == "Server" {
        "policy.linkerd.io"
    } else {
        "apps"
    };
    json!({
        "apiVersion": "policy.linkerd.io/v1alpha1",
        "kind": "AuthorizationPolicy",
        "metadata": {"name": name, "namespace": "shop", "uid": format!("ap-{name}"), "generation": 1,
                     "creationTimestamp": "2026-11-28T10:00:00Z"},
        "spec": {
            "targetRef": {"group": group, "kind": target_kind, "name": "cart-http"},
            "requiredAuthenticationRefs": [{"group": "policy.linkerd.io", "kind": authn.0, "name": authn.1}]
        }
    })
}

/// Linkerd's policy kinds through the list-and-watch protocol: cart runs Linkerd's
/// proxy (the injector's container and annotation), a Server selects its port 8080
/// and an AuthorizationPolicy requires a MeshTLSAuthentication, so a plaintext
/// request to it is a violation that names them. The policy changes through the
/// watch to a NetworkAuthentication for every network (plaintext admitted:
/// permissive); then it changes into one Linkerd refuses (a Deployment as target):
/// the agent reports the object and the field, ignores it as Linkerd does, and
/// the Server's `deny` refuses every client.
#[test]
fn linkerd_policy_from_the_api_server() {
    require_root();
    let pair = NetnsPair::new("k8sld", 162);
    let tree = pod_cgroups("k8s-ld", "unused");
    let api = FakeApi::start();
    let mut cart = cart_pod(&pair, "cart");
    cart["metadata"]["annotations"] = json!({"linkerd.io/proxy-version": "edge-25.1.1"});
    cart["spec"]["containers"][0]["ports"] =
        json!([{"name": "http", "containerPort": 8080, "protocol": "TCP"}]);
    cart["spec"]["containers"]
        .as_array_mut()
        .expect("containers")
        .push(json!({"name": "linkerd-proxy", "image": "cr.l5d.io/linkerd/proxy:edge-25.1.1"}));
    api.upsert(PODS, cart);
    api.upsert(PODS, checkout_pod(&pair));
    api.upsert(
        SERVERS,
        json!({
            "apiVersion": "policy.linkerd.io/v1beta3",
            "kind": "Server",
            "metadata": {"name": "cart-http", "namespace": "shop", "uid": "srv-1", "generation": 1,
                         "creationTimestamp": "2026-11-28T10:00:00Z"},
            "spec": {"podSelector": {"matchLabels": {"app": "cart"}}, "port": "http",
                     "proxyProtocol": "HTTP/1", "accessPolicy": "deny"}
        }),
    );
    api.upsert(
        MESH_TLS,
        json!({
            "apiVersion": "policy.linkerd.io/v1alpha1",
            "kind": "MeshTLSAuthentication",
            "metadata": {"name": "shop-clients", "namespace": "shop", "uid": "mtls-1"},
            "spec": {"identities": ["default.shop.serviceaccount.identity.linkerd.cluster.local"]}
        }),
    );
    api.upsert(
        NET_AUTHN,
        json!({
            "apiVersion": "policy.linkerd.io/v1alpha1",
            "kind": "NetworkAuthentication",
            "metadata": {"name": "everyone", "namespace": "shop", "uid": "net-1"},
            "spec": {"networks": [{"cidr": "0.0.0.0/0"}, {"cidr": "::/0"}]}
        }),
    );
    api.upsert(
        AUTHZ,
        authorization(
            "cart-clients",
            "Server",
            ("MeshTLSAuthentication", "shop-clients"),
        ),
    );

    let dir = TempDir::new();
    let kubeconfig = dir.path().join("kubeconfig");
    api.kubeconfig(&kubeconfig);
    let www = dir.path().join("www");
    std::fs::create_dir_all(&www).expect("mkdir");
    std::fs::write(www.join("index.html"), "cart\n").expect("write");
    let listen = "127.0.0.1:19487";
    let agent = start_cluster_agent(&kubeconfig, listen);
    wait_ready(&agent, listen, Duration::from_secs(20));
    let reqs = api.requests();
    for path in [SERVERS, AUTHZ, MESH_TLS, NET_AUTHN] {
        assert!(
            reqs.iter()
                .any(|r| r.starts_with(&format!("{path}?")) && r.contains("watch=true")),
            "{path} is not watched: {reqs:#?}"
        );
    }
    let _cart = http_server(Some(&pair.b), Some(tree.leaf(0)), pair.b_v4(), 8080, &www);
    let mut seen = 0;

    // 1. The Server and its AuthorizationPolicy require a mesh identity.
    let r = until(
        &agent,
        &pair,
        &tree,
        &mut seen,
        "a violation of the Linkerd policy",
        |r| s(r, "verdict") == "violation",
    );
    assert_fields(
        &r,
        &[
            ("destination_workload", "cart"),
            ("expected_security_policy", "mutual_tls"),
            ("connection_security_policy", "none"),
        ],
    );
    let reason = s(&r, "verdict_reason");
    assert!(
        reason.contains("Server shop/cart-http") && reason.contains("shop-clients"),
        "{r}"
    );

    // 2. The AuthorizationPolicy changes through the watch: every network, no
    //    identity needed.
    api.upsert(
        AUTHZ,
        authorization(
            "cart-clients",
            "Server",
            ("NetworkAuthentication", "everyone"),
        ),
    );
    let r = until(
        &agent,
        &pair,
        &tree,
        &mut seen,
        "plaintext admitted after MODIFIED",
        |r| s(r, "verdict") == "permissive",
    );
    assert_eq!(s(&r, "expected_security_policy"), "none", "{r}");
    assert!(s(&r, "verdict_reason").contains("everyone"), "{r}");

    // 3. It changes into an object Linkerd refuses: reported with its name and
    //    field, and ignored, so the Server's `deny` admits nobody. (On an HTTP
    //    port Linkerd refuses with a 403 on the accepted connection, which the
    //    capture cannot tell from a served request: `unknown`, not a violation.)
    api.upsert(
        AUTHZ,
        authorization(
            "cart-clients",
            "Deployment",
            ("NetworkAuthentication", "everyone"),
        ),
    );
    let r = until(
        &agent,
        &pair,
        &tree,
        &mut seen,
        "the invalid AuthorizationPolicy ignored",
        |r| {
            s(r, "verdict_reason")
                .contains("Server shop/cart-http spec.accessPolicy=deny): no authorization")
        },
    );
    assert_eq!(s(&r, "verdict"), "unknown", "{r}");
    assert_eq!(s(&r, "expected_security_policy"), "mutual_tls", "{r}");
    let stderr = agent.stderr();
    let line = stderr
        .lines()
        .find(|l| l.contains("kubernetes:AuthorizationPolicy/shop/cart-clients:"))
        .unwrap_or_else(|| panic!("the invalid object was not reported:\n{stderr}"));
    assert!(
        line.contains("spec.targetRef: unsupported authorization target type")
            && line.contains("Deployment")
            && line.contains("the object is ignored"),
        "{line}"
    );
    assert_eq!(
        stderr
            .lines()
            .filter(|l| l.contains("kubernetes:AuthorizationPolicy/shop/cart-clients:"))
            .count(),
        1,
        "reported once per version of the object:\n{stderr}"
    );
    agent.stop_cleanly();
}

/// Runs its arguments the way a container runtime runs the DaemonSet's agent: in a
/// cgroup of its own with a private cgroup namespace (so /sys/fs/cgroup shows only
/// that cgroup), the host's /sys/fs/cgroup bind-mounted (recursively, as hostPath
/// volumes are; on hybrid hosts cgroup v2 is its `unified` submount) read-only where
/// the DaemonSet mounts it, no_new_privs, and a bounding set of exactly the capabilities the
/// DaemonSet adds. Every step `exec`s, so the agent keeps this PID.
const CONTAINER: &str = r#"#!/bin/sh
set -eu
if [ "${1:-}" != inside ]; then
    echo $$ > "$CONTAINER_CGROUP/cgroup.procs"
    exec unshare --mount --cgroup --propagation private -- /bin/sh "$0" inside "$@"
fi
shift
mount --rbind /sys/fs/cgroup "$HOST_CGROUP"
mount -o remount,bind,ro "$HOST_CGROUP"
mount -t cgroup2 cgroup2 /sys/fs/cgroup
exec setpriv --no-new-privs --inh-caps=-all \
    --bounding-set=-all,+bpf,+perfmon,+net_admin,+sys_resource,+dac_read_search -- "$@"
"#;

#[test]
fn agent_works_with_the_daemonset_capabilities_and_mounts() {
    require_root();
    let pair = NetnsPair::new("k8sct", 61);
    // The third: the agent's own container.
    let tree = pod_cgroups("k8s-ct", "agent");
    let api = FakeApi::start();
    api.upsert(PODS, cart_pod(&pair, "cart"));
    api.upsert(PODS, checkout_pod(&pair));
    api.upsert(PEER_AUTHS, peer_authentication("STRICT"));

    let dir = TempDir::new();
    let kubeconfig = dir.path().join("kubeconfig");
    api.kubeconfig(&kubeconfig);
    let host_cgroup = dir.path().join("host/sys/fs/cgroup");
    std::fs::create_dir_all(&host_cgroup).expect("mkdir");
    let script = dir.path().join("container.sh");
    std::fs::write(&script, CONTAINER).expect("write");
    let www = dir.path().join("www");
    std::fs::create_dir_all(&www).expect("mkdir");
    std::fs::write(www.join("index.html"), "cart\n").expect("write");

    let mut opts = AgentOptions {
        wrapper: vec!["/bin/sh".into(), script.to_str().expect("utf8").into()],
        ..AgentOptions::default()
    };
    opts.env = vec![
        (
            "CONTAINER_CGROUP".into(),
            tree.leaf(2).path().to_str().expect("utf8").into(),
        ),
        (
            "HOST_CGROUP".into(),
            host_cgroup.to_str().expect("utf8").into(),
        ),
        // As the DaemonSet sets them.
        (
            "MTLS_AUDITOR_CGROUP_ROOT".into(),
            host_cgroup.to_str().expect("utf8").into(),
        ),
        ("MTLS_AUDITOR_NODE_NAME".into(), NODE.into()),
        (
            "MTLS_AUDITOR_KUBECONFIG".into(),
            kubeconfig.to_str().expect("utf8").into(),
        ),
    ];
    let agent = Agent::start(opts);
    // What the agent runs with, seen from outside.
    let status = std::fs::read_to_string(format!("/proc/{}/status", agent.pid())).expect("status");
    let field = |k: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(k))
            .map(|v| u64::from_str_radix(v.trim(), 16).expect("hex"))
            .expect("field")
    };
    // CAP_NET_ADMIN 12, CAP_DAC_READ_SEARCH 2, CAP_SYS_RESOURCE 24, CAP_PERFMON 38, CAP_BPF 39
    // (intersected with what this test itself may hold: sandboxes drop some).
    let daemonset = (1u64 << 2) | (1 << 12) | (1 << 24) | (1 << 38) | (1 << 39);
    let ours = std::fs::read_to_string("/proc/self/status").expect("status");
    let bounding = ours
        .lines()
        .find_map(|l| l.strip_prefix("CapBnd:"))
        .map(|v| u64::from_str_radix(v.trim(), 16).expect("hex"))
        .expect("CapBnd");
    assert_eq!(
        field("CapEff:"),
        daemonset & bounding,
        "effective capabilities\n{status}"
    );
    assert_eq!(field("NoNewPrivs:"), 1);
    let own = std::fs::read_to_string(format!("/proc/{}/cgroup", agent.pid())).expect("cgroup");
    assert!(
        own.lines()
            .any(|l| l == format!("0::{}", tree.leaf(2).rel())),
        "the agent runs in its container's cgroup: {own}"
    );
    let ns = |pid: &str| std::fs::read_link(format!("/proc/{pid}/ns/cgroup")).expect("ns");
    assert_ne!(
        ns(&agent.pid().to_string()),
        ns("self"),
        "the agent has a cgroup namespace of its own"
    );
    assert!(
        !agent
            .stderr()
            .contains("attaching below the host's cgroup root"),
        "{}",
        agent.stderr()
    );
    let ready = wait_for(Duration::from_secs(20), || {
        let r = ureq::get("http://127.0.0.1:9477/readyz").call().ok()?;
        (r.status() == 200).then_some(())
    });
    assert!(ready.is_some(), "never ready:\n{}", agent.stderr());

    let _cart = http_server(Some(&pair.b), Some(tree.leaf(0)), pair.b_v4(), 8080, &www);
    let r = &first_request_from_checkout(&agent, &pair, &tree, 8080);
    // Paths are the host's, resolved through the read-only bind mount.
    assert_eq!(
        r["server"]["local"]["cgroup"].as_str().unwrap_or(""),
        tree.leaf(0).rel(),
        "{r}"
    );
    for (k, v) in [
        ("source_pod", "checkout-0"),
        ("source_container", "checkout"),
        ("destination_pod", "cart-7d9f8b6c5-x2k4p"),
        ("destination_container", "cart"),
        ("verdict", "violation"),
    ] {
        assert_eq!(s(r, k), v, "{k} in {r}");
    }
    agent.stop_cleanly();
}

#[test]
fn api_server_down_at_start_is_waited_for_with_back_off() {
    require_root();
    const LISTEN_DOWN: &str = "127.0.0.1:19483";
    // A port nothing listens on yet.
    let addr = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port");
    let dir = TempDir::new();
    let kubeconfig = dir.path().join("kubeconfig");
    write_kubeconfig(&kubeconfig, addr);
    let agent = start_cluster_agent(&kubeconfig, LISTEN_DOWN);
    let readyz = || {
        let mut r = ureq::get(&format!("http://{LISTEN_DOWN}/readyz"))
            .config()
            .http_status_as_error(false)
            .build()
            .call()
            .expect("readyz");
        (
            r.status().as_u16(),
            r.body_mut().read_to_string().unwrap_or_default(),
        )
    };
    // Probes attached, connections reported, but not ready without the cluster.
    std::thread::sleep(Duration::from_secs(2));
    let (code, body) = readyz();
    assert_eq!(code, 503, "{body}");
    assert!(body.contains("waiting for the first list"), "{body}");

    let api = FakeApi::start_on(addr);
    api.upsert(PEER_AUTHS, peer_authentication("STRICT"));
    wait_ready(&agent, LISTEN_DOWN, Duration::from_secs(60));
    let stderr = agent.stderr();
    assert!(
        stderr.contains("retrying"),
        "the failures were not reported:\n{stderr}"
    );
    assert!(
        stderr.contains("listed resource=\"PeerAuthentication\" objects=1"),
        "{stderr}"
    );
    agent.stop_cleanly();
}

#[test]
fn bad_kubeconfig_and_cgroup_root_are_clear_errors() {
    require_root();
    let dir = TempDir::new();
    let broken = dir.path().join("kubeconfig");
    std::fs::write(&broken, "apiVersion: v1\nkind: Config\nclusters: [oops\n").expect("write");
    let missing = dir.path().join("absent");
    let run = |args: &[&str]| {
        let out = Spawn::new(agent_bin().to_str().expect("utf8"))
            .arg("run")
            .args(["--listen", "127.0.0.1:19485", "--output", "off"])
            .args(args)
            .run(Duration::from_secs(30));
        assert!(!out.status.success(), "{args:?} was accepted");
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let err = run(&["--kubeconfig", broken.to_str().expect("utf8")]);
    assert!(
        err.contains(&format!("kubeconfig {}", broken.display()))
            && err.contains("line 3 column 11"),
        "{err}"
    );
    let err = run(&["--kubeconfig", missing.to_str().expect("utf8")]);
    assert!(
        err.contains(&format!("kubeconfig {}", missing.display()))
            && err.contains("No such file or directory"),
        "{err}"
    );
    let err = run(&["--cgroup-root", dir.path().to_str().expect("utf8")]);
    assert!(
        err.contains(&format!(
            "--cgroup-root {}: not a cgroup v2 hierarchy",
            dir.path().display()
        )),
        "{err}"
    );
}

/// The agent in cluster mode against the API server named in `kubeconfig`.
fn start_cluster_agent(kubeconfig: &std::path::Path, listen: &str) -> Agent {
    start_cluster_agent_with(kubeconfig, listen, &[])
}

/// `start_cluster_agent` with more arguments.
fn start_cluster_agent_with(kubeconfig: &std::path::Path, listen: &str, extra: &[&str]) -> Agent {
    let mut opts = AgentOptions::default()
        .arg("--kubeconfig")
        .arg(kubeconfig.to_str().expect("utf8"))
        .arg("--node-name")
        .arg(NODE)
        .arg("--listen")
        .arg(listen);
    for a in extra {
        opts = opts.arg(*a);
    }
    Agent::start(opts)
}

/// Waits until /readyz answers 200, or fails with what the agent said.
fn wait_ready(agent: &Agent, listen: &str, timeout: Duration) {
    let ready = wait_for(timeout, || {
        let r = ureq::get(&format!("http://{listen}/readyz")).call().ok()?;
        (r.status() == 200).then_some(())
    });
    assert!(
        ready.is_some(),
        "the agent was not ready within {timeout:?}; it said:\n{}",
        agent.stderr()
    );
}
