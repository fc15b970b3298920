//! Issue 4: the seed example scenario with the real probes, every verdict asserted;
//! and policy reloads (file change, SIGHUP, a broken file keeping the last good
//! policy).

use std::{
    path::{Path, PathBuf},
    process::Stdio,
    time::Duration,
};

use integration_tests::{
    Agent, AgentOptions, Record, Spawn, TempDir, agent_bin, require_root, wait_for,
};

fn s(r: &Record, k: &str) -> String {
    r.get(k).and_then(|v| v.as_str()).unwrap_or("").to_owned()
}

#[test]
fn seed_scenario_produces_every_verdict() {
    require_root();
    let dir = TempDir::new();
    let out = dir.path().join("records.jsonl");
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/seed/run.sh");
    let run = Spawn::new("bash")
        .arg(&script)
        .env("MTLS_AUDITOR_BIN", agent_bin())
        .env("SEED_ROUNDS", "1")
        .env("MTLS_AUDITOR_FORMAT", "json")
        .env("MTLS_AUDITOR_OUTPUT", &out)
        .run(Duration::from_secs(120));
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(run.status.success(), "the seed scenario failed: {stderr}");
    let text = std::fs::read_to_string(&out).expect("records");
    let records: Vec<Record> = text
        .lines()
        .map(|l| serde_json::from_str(l).expect("JSON line"))
        .collect();
    let find = |src: &str, dst: &str, port: u64, hop: &str, observed: &str| -> Record {
        records
            .iter()
            .find(|r| {
                s(r, "source_workload") == src
                    && s(r, "destination_workload") == dst
                    && r["destination_port"].as_u64() == Some(port)
                    && s(r, "hop") == hop
                    && s(r, "connection_security_policy") == observed
            })
            .cloned()
            .unwrap_or_else(|| {
                panic!("no {src} -> {dst}:{port} {hop} ({observed}) in:\n{text}\n{stderr}")
            })
    };
    // The seed runs on the sidecar data path (docs/mesh.md).
    let cases = [
        // b's app through both sidecars: judged by the mutual TLS b's proxy sent.
        (
            "example-service-b",
            "example-service-a",
            8080,
            "app_to_proxy",
            "mutual_tls",
            "compliant",
            "mutual_tls",
        ),
        // That mutual TLS connection, where it arrived: at 8080, not 15006.
        (
            "example-service-b",
            "example-service-a",
            8080,
            "proxy_upstream",
            "mutual_tls",
            "compliant",
            "mutual_tls",
        ),
        // a's sidecar delivering to a's app from 127.0.0.6.
        (
            "example-service-a",
            "example-service-a",
            8080,
            "proxy_to_app",
            "none",
            "exempt",
            "none",
        ),
        // A port both pods exclude from capture: plaintext reaches the app.
        (
            "example-service-b",
            "example-service-a",
            9090,
            "direct",
            "none",
            "violation",
            "mutual_tls",
        ),
        // A client without a sidecar, refused by a's STRICT sidecar.
        (
            "legacy-client",
            "example-service-a",
            8080,
            "proxy_inbound",
            "none",
            "rejected",
            "mutual_tls",
        ),
        (
            "legacy-client",
            "example-service-a",
            8080,
            "proxy_inbound",
            "tls",
            "rejected",
            "mutual_tls",
        ),
        // ... and accepted by c's PERMISSIVE one.
        (
            "legacy-client",
            "example-service-c",
            8080,
            "proxy_inbound",
            "none",
            "permissive",
            "none",
        ),
        (
            "example-service-a",
            "example-service-a",
            8081,
            "direct",
            "none",
            "exempt",
            "none",
        ),
    ];
    for (src, dst, port, hop, observed, verdict, expected) in cases {
        let r = find(src, dst, port, hop, observed);
        assert_eq!(s(&r, "verdict"), verdict, "{r}");
        assert_eq!(s(&r, "expected_security_policy"), expected, "{r}");
        assert_eq!(s(&r, "source_workload_namespace"), "default", "{r}");
        assert_eq!(s(&r, "destination_workload_namespace"), "default", "{r}");
    }
    // No false finding on the mesh's own path.
    for r in &records {
        let hop = s(r, "hop");
        if matches!(
            hop.as_str(),
            "app_to_proxy" | "proxy_upstream" | "proxy_to_app"
        ) {
            assert!(
                matches!(s(r, "verdict").as_str(), "compliant" | "exempt"),
                "{r}"
            );
        }
    }
    // The reason names the deciding object and field.
    let v = find(
        "example-service-b",
        "example-service-a",
        9090,
        "direct",
        "none",
    );
    assert!(
        s(&v, "verdict_reason").contains(
            "PeerAuthentication default/example-service-a-peer-auth spec.mtls.mode=STRICT"
        ),
        "{v}"
    );
    assert_eq!(
        s(&v, "destination_service"),
        "example-service-a.default.svc.cluster.local"
    );
    let p = find(
        "legacy-client",
        "example-service-c",
        8080,
        "proxy_inbound",
        "none",
    );
    assert!(
        s(&p, "verdict_reason").contains(
            "PeerAuthentication default/example-service-c-peer-auth spec.mtls.mode=PERMISSIVE"
        ),
        "{p}"
    );
    // The kubelet's probe of a's sidecar health port.
    let probe = records
        .iter()
        .find(|r| r["destination_port"].as_u64() == Some(15021))
        .unwrap_or_else(|| panic!("no probe in:\n{text}"));
    assert_eq!(s(probe, "verdict"), "exempt", "{probe}");
    // Everything the scenario made is gone.
    let netns = std::process::Command::new("ip")
        .args(["netns", "list"])
        .output()
        .expect("ip");
    assert!(
        !String::from_utf8_lossy(&netns.stdout).contains("mtlsa-seed"),
        "namespaces left behind"
    );
    let cg = mtls_auditor::cgroups::cgroup2_root()
        .expect("cgroup2")
        .join("mtls-auditor-seed");
    assert!(!cg.exists(), "cgroup left behind: {}", cg.display());
}

/// The seed scenario's ambient variant (`run.sh --mode ambient`): the same verdicts
/// on Istio ambient's data path, no false finding on it.
#[test]
fn seed_scenario_in_ambient_mode_produces_the_same_verdicts() {
    require_root();
    let dir = TempDir::new();
    let out = dir.path().join("records.jsonl");
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/seed/run.sh");
    let run = Spawn::new("bash")
        .arg(&script)
        .args(["--mode", "ambient"])
        .env("MTLS_AUDITOR_BIN", agent_bin())
        .env("SEED_ROUNDS", "1")
        .env("MTLS_AUDITOR_FORMAT", "json")
        .env("MTLS_AUDITOR_OUTPUT", &out)
        .run(Duration::from_secs(120));
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(run.status.success(), "the seed scenario failed: {stderr}");
    let text = std::fs::read_to_string(&out).expect("records");
    let records: Vec<Record> = text
        .lines()
        .map(|l| serde_json::from_str(l).expect("JSON line"))
        .collect();
    let find = |src: &str, dst: &str, port: u64, hop: &str| -> Record {
        records
            .iter()
            .find(|r| {
                s(r, "source_workload") == src
                    && s(r, "destination_workload") == dst
                    && r["destination_port"].as_u64() == Some(port)
                    && s(r, "hop") == hop
            })
            .cloned()
            .unwrap_or_else(|| panic!("no {src} -> {dst}:{port} {hop} in:\n{text}\n{stderr}"))
    };
    let cases = [
        // b's app -> ztunnel, judged by the HBONE connection that carried it.
        (
            "example-service-b",
            "example-service-a",
            8080,
            "app_to_proxy",
            "mutual_tls",
            "compliant",
        ),
        // ztunnel's delivery to a's app from b's address, judged by its tunnel.
        (
            "example-service-b",
            "example-service-a",
            8080,
            "proxy_to_app",
            "mutual_tls",
            "compliant",
        ),
        // Plaintext from outside the mesh: refused by a (STRICT), taken by c.
        (
            "legacy-client",
            "example-service-a",
            8080,
            "proxy_inbound",
            "none",
            "rejected",
        ),
        (
            "legacy-client",
            "example-service-c",
            8080,
            "proxy_inbound",
            "none",
            "permissive",
        ),
        // b's plaintext to a pod outside the mesh, under the namespace's STRICT.
        (
            "example-service-b",
            "legacy-client",
            8080,
            "app_to_proxy",
            "none",
            "violation",
        ),
        (
            "example-service-a",
            "example-service-a",
            8081,
            "direct",
            "none",
            "exempt",
        ),
    ];
    for (src, dst, port, hop, observed, verdict) in cases {
        let r = find(src, dst, port, hop);
        assert_eq!(s(&r, "connection_security_policy"), observed, "{r}");
        assert_eq!(s(&r, "verdict"), verdict, "{r}");
    }
    let carried = find(
        "example-service-b",
        "example-service-a",
        8080,
        "app_to_proxy",
    );
    assert_eq!(carried["upstream"]["linked_by"], "tunnel", "{carried}");
    // The kubelet's probe from istio-cni's SNAT address.
    let probe = records
        .iter()
        .find(|r| r["client"]["addr"] == "169.254.7.127")
        .unwrap_or_else(|| panic!("no probe in:\n{text}"));
    assert_eq!(s(probe, "verdict"), "exempt", "{probe}");
    // No false finding on the mesh's own path.
    for r in &records {
        if matches!(s(r, "hop").as_str(), "proxy_to_app" | "proxy_tunnel")
            || (s(r, "hop") == "app_to_proxy" && s(r, "destination_workload") != "legacy-client")
        {
            assert!(
                matches!(s(r, "verdict").as_str(), "compliant" | "exempt"),
                "{r}"
            );
        }
    }
    let netns = std::process::Command::new("ip")
        .args(["netns", "list"])
        .output()
        .expect("ip");
    assert!(
        !String::from_utf8_lossy(&netns.stdout).contains("mtlsa-seed"),
        "namespaces left behind"
    );
}

const POLICY_STRICT: &str = "apiVersion: mtls-auditor.io/v1alpha1
kind: TransportPolicy
metadata:
  name: test
spec:
  rules:
  - name: port-19950-needs-tls
    require: tls
    match:
      ports: [19950]
";

const POLICY_EXEMPT: &str = "apiVersion: mtls-auditor.io/v1alpha1
kind: TransportPolicy
metadata:
  name: test
spec:
  rules:
  - name: port-19950-needs-tls
    require: tls
    match:
      ports: [19950]
  exemptions:
  - name: test-exemption
    reason: changed while running
    match:
      ports: [19950]
";

/// One plaintext connection to 127.0.0.1:19950 and its record.
fn plaintext_connection(agent: &Agent, n: usize) -> Record {
    let server = Spawn::new("/usr/bin/python3")
        .args(["-c", "import socket\ns=socket.socket();s.setsockopt(socket.SOL_SOCKET,socket.SO_REUSEADDR,1);s.bind(('127.0.0.1',19950));s.listen()\nc,_=s.accept();c.recv(100);c.sendall(b'ok');c.close()"])
        .stdout(Stdio::null())
        .spawn();
    integration_tests::peers::wait_listening(None, 19950);
    Spawn::new("/usr/bin/python3")
        .args(["-c", "import socket\nc=socket.create_connection(('127.0.0.1',19950));c.sendall(b'hello');c.recv(10);c.close()"])
        .run_ok(Duration::from_secs(10));
    drop(server);
    let recs = agent.wait_records(n, Duration::from_secs(15), |r| {
        r["server"]["port"].as_u64() == Some(19950)
    });
    recs[n - 1].clone()
}

#[test]
fn policy_reloads_on_change_and_keeps_the_last_good_one() {
    require_root();
    let dir = TempDir::new();
    let file: PathBuf = dir.path().join("policy.yaml");
    std::fs::write(&file, POLICY_STRICT).expect("write");
    let agent = Agent::start(
        AgentOptions::default()
            .arg("--policy")
            .arg(file.to_str().expect("utf8")),
    );
    let r = plaintext_connection(&agent, 1);
    assert_eq!(s(&r, "verdict"), "violation", "{r}");
    assert!(
        s(&r, "verdict_reason")
            .contains("TransportPolicy default/test spec.rules[port-19950-needs-tls].require=tls"),
        "{r}"
    );

    // A change on disk is picked up.
    std::fs::write(&file, POLICY_EXEMPT).expect("write");
    assert!(
        wait_for(Duration::from_secs(10), || agent
            .stderr()
            .contains("policy reloaded")
            .then_some(()))
        .is_some(),
        "no reload after a file change:\n{}",
        agent.stderr()
    );
    let r = plaintext_connection(&agent, 2);
    assert_eq!(s(&r, "verdict"), "exempt", "{r}");

    // A broken file is reported and the last good policy stays.
    std::fs::write(&file, "apiVersion: mtls-auditor.io/v1alpha1\nkind: TransportPolicy\nmetadata:\n  name: test\nspec:\n  rulez: []\n")
        .expect("write");
    assert!(
        wait_for(Duration::from_secs(10), || agent
            .stderr()
            .contains("policy reload failed")
            .then_some(()))
        .is_some(),
        "no failed reload reported:\n{}",
        agent.stderr()
    );
    assert!(
        agent
            .stderr()
            .contains("policy.yaml:6:3: error: spec: unknown field `rulez`"),
        "{}",
        agent.stderr()
    );
    let r = plaintext_connection(&agent, 3);
    assert_eq!(
        s(&r, "verdict"),
        "exempt",
        "the last good policy stays in force: {r}"
    );

    // The failed reload is counted in the metrics.
    let metrics = ureq::get("http://127.0.0.1:9477/metrics")
        .call()
        .expect("metrics")
        .into_body()
        .read_to_string()
        .expect("body");
    assert!(
        metrics.contains("mtls_auditor_policy_reloads_total{result=\"error\"} 1"),
        "{metrics}"
    );

    // SIGHUP reloads too. The policy file becomes a link to a file elsewhere, whose
    // changes the watcher cannot see: only the signal can bring them in.
    let reloads = || agent.stderr().matches("policy reloaded").count();
    let store = TempDir::new();
    let target = store.path().join("next.yaml");
    std::fs::write(&target, POLICY_EXEMPT).expect("write");
    let before = reloads();
    std::fs::remove_file(&file).expect("rm");
    std::os::unix::fs::symlink(&target, &file).expect("symlink");
    assert!(
        wait_for(Duration::from_secs(10), || (reloads() > before)
            .then_some(()))
        .is_some(),
        "no reload after the file became a link:\n{}",
        agent.stderr()
    );
    std::thread::sleep(Duration::from_millis(800));
    std::fs::write(&target, POLICY_STRICT).expect("write");
    std::thread::sleep(Duration::from_millis(800));
    let before = reloads();
    let r = plaintext_connection(&agent, 4);
    assert_eq!(
        s(&r, "verdict"),
        "exempt",
        "the watcher did not see the change: {r}"
    );
    // SAFETY: signalling the agent we started, by PID.
    unsafe { libc::kill(agent.pid() as i32, libc::SIGHUP) };
    assert!(
        wait_for(Duration::from_secs(10), || (reloads() > before)
            .then_some(()))
        .is_some(),
        "no reload after SIGHUP:\n{}",
        agent.stderr()
    );
    let r = plaintext_connection(&agent, 5);
    assert_eq!(s(&r, "verdict"), "violation", "{r}");
    agent.stop();
}

#[test]
fn a_broken_policy_at_start_is_fatal_and_names_the_spot() {
    let dir = TempDir::new();
    let file = dir.path().join("bad.yaml");
    std::fs::write(&file, "apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata:\n  name: p\nspec:\n  mtls:\n    mode: strict\n")
        .expect("write");
    let out = Spawn::new(agent_bin().to_str().expect("utf8"))
        .args(["run", "--policy", file.to_str().expect("utf8")])
        .run(Duration::from_secs(30));
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&format!(
            "{}:7:11: error: spec.mtls.mode: unknown variant `strict`, expected one of `UNSET`, `DISABLE`, `PERMISSIVE`, `STRICT`",
            file.display()
        )),
        "{stderr}"
    );
}
