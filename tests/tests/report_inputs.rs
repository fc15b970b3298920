//! Issue 16: `mtls-auditor report`'s modes from a cluster's objects (one list of
//! PeerAuthentications and pods from an API server), and bad input: each a clear
//! one-line error and a non-zero exit, never a silently empty "ready".

use std::time::Duration;

use integration_tests::{
    Record, TempDir,
    kubeapi::FakeApi,
    peers::http_server,
    report::{DAY, SYNTH_PROM, report, report_ok, rfc3339, s, server, synthetic},
};

#[test]
fn modes_from_the_cluster() {
    let dir = TempDir::new();
    let (world, _prom) = synthetic(dir.path());
    let api = FakeApi::start();
    let pod = |ns: &str, name: &str, owner: &str, app: &str| {
        serde_json::json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": ns, "uid": format!("uid-{name}"), "labels": {"app": app, "pod-template-hash": owner.rsplit_once('-').map_or("", |x| x.1)},
                         "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": owner, "uid": "u", "controller": true}]},
            "spec": {"nodeName": "node-3", "containers": [{"name": "c", "image": "i"}]},
            "status": {"phase": "Running", "podIP": "192.0.2.7"}
        })
    };
    api.upsert(
        "/api/v1/pods",
        pod(
            "legacy",
            "reports-5d4c7b9f8-abcde",
            "reports-5d4c7b9f8",
            "reports",
        ),
    );
    api.upsert(
        "/api/v1/pods",
        pod(
            "shop",
            "search-6f7d8c9b5-fghij",
            "search-6f7d8c9b5",
            "search",
        ),
    );
    let pa = |ns: &str, name: &str, selector: Option<&str>, mode: &str| {
        let mut v = serde_json::json!({
            "apiVersion": "security.istio.io/v1", "kind": "PeerAuthentication",
            "metadata": {"name": name, "namespace": ns, "uid": format!("pa-{name}"), "creationTimestamp": "2026-01-01T00:00:00Z"},
            "spec": {"mtls": {"mode": mode}}
        });
        if let Some(app) = selector {
            v["spec"]["selector"] = serde_json::json!({"matchLabels": {"app": app}});
        }
        v
    };
    api.upsert(
        "/apis/security.istio.io/v1/peerauthentications",
        pa("istio-system", "default", None, "STRICT"),
    );
    api.upsert(
        "/apis/security.istio.io/v1/peerauthentications",
        pa("legacy", "reports", Some("reports"), "DISABLE"),
    );
    api.upsert(
        "/apis/security.istio.io/v1/peerauthentications",
        pa("shop", "search", Some("search"), "PERMISSIVE"),
    );
    let kubeconfig = dir.path().join("kubeconfig");
    api.kubeconfig(&kubeconfig);
    let json = report_ok(&[
        "--prometheus",
        &format!("http://{SYNTH_PROM}"),
        "--until",
        &rfc3339(world.end),
        "--kubeconfig",
        kubeconfig.to_str().expect("utf8"),
        "--format",
        "json",
    ]);
    let r: Record = serde_json::from_str(&json).expect("JSON");
    assert!(
        s(&r, "modes_from").contains("3 PeerAuthentication(s) (v1), labels of 2 pod(s)"),
        "{}",
        s(&r, "modes_from")
    );
    // The mesh-wide STRICT applies everywhere but where a workload policy (matched
    // through its pod's labels) says otherwise.
    assert_eq!(s(server(&r, "legacy/reports:8080"), "mode"), "DISABLE");
    assert_eq!(s(server(&r, "shop/search:9200"), "mode"), "PERMISSIVE");
    assert_eq!(s(server(&r, "shop/frontend:8080"), "mode"), "STRICT");
    assert!(s(server(&r, "shop/frontend:8080"), "mode_source").contains("no labels known"));
    // One list of each, no watch.
    let requests = api.requests();
    assert!(
        requests.iter().all(|q| !q.contains("watch=true")),
        "{requests:?}"
    );
    assert!(
        requests.iter().any(|q| q.starts_with("/api/v1/pods?")),
        "{requests:?}"
    );
}

/// Fails with `want` in a one-line stderr, a non-zero exit, and nothing on stdout.
fn fails_with(args: &[&str], want: &str) {
    let out = report(args);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "{args:?} succeeded: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert!(
        out.stdout.is_empty(),
        "{args:?} printed a report: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert!(err.contains(want), "{args:?}: {err}");
    assert!(!err.contains("panicked"), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "{err}");
}

#[test]
fn bad_input_is_a_clear_error() {
    let dir = TempDir::new();
    // Unreachable, wrong scheme, no URL at all.
    fails_with(
        &["--prometheus", "http://127.0.0.1:1"],
        "cannot reach Prometheus at http://127.0.0.1:1:",
    );
    fails_with(
        &["--prometheus", "https://prometheus.example"],
        "https is not supported",
    );
    fails_with(
        &["--prometheus", "prometheus:9090"],
        "expected http://HOST[:PORT][/PATH]",
    );
    fails_with(
        &["--prometheus", "http://127.0.0.1:1", "--since", "0s"],
        "--since 0s: the window is empty",
    );
    // Something else answers: a web server, and a JSON API that is not Prometheus.
    let www = dir.path().join("www");
    std::fs::create_dir_all(&www).expect("mkdir");
    let _web = http_server(None, None, "127.0.0.1".parse().expect("ip"), 19143, &www);
    fails_with(
        &["--prometheus", "http://127.0.0.1:19143"],
        "http://127.0.0.1:19143 does not answer like a Prometheus HTTP API: POST /api/v1/query answered HTTP 501",
    );
    let api = FakeApi::start();
    fails_with(
        &["--prometheus", &format!("http://{}", api.addr)],
        "does not answer like a Prometheus HTTP API: POST /api/v1/query answered HTTP",
    );
    // A listener that never answers.
    let silent = std::net::TcpListener::bind("127.0.0.1:19144").expect("bind");
    let started = std::time::Instant::now();
    fails_with(
        &["--prometheus", "http://127.0.0.1:19144", "--timeout", "2s"],
        "Prometheus at http://127.0.0.1:19144 did not answer within 2s (the vector(1) check query)",
    );
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "the deadline was not kept"
    );
    drop(silent);
    // A bad policy file names file and line before any query.
    let bad = dir.path().join("bad.yaml");
    std::fs::write(&bad, "apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata:\n  name: x\nspec:\n  mtls:\n    mode: SOMETIMES\n").expect("write");
    let out = report(&[
        "--prometheus",
        "http://127.0.0.1:1",
        "--policy",
        bad.to_str().expect("utf8"),
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains(&format!("{}:7", bad.display())),
        "{err}"
    );

    // A real Prometheus with data, asked about a window it holds nothing for.
    let (world, _prom) = synthetic(dir.path());
    fails_with(
        &[
            "--prometheus",
            &format!("http://{SYNTH_PROM}"),
            "--until",
            &rfc3339(world.data_start - 30 * DAY),
            "--since",
            "1d",
        ],
        "holds no mtls-auditor series between",
    );
}
