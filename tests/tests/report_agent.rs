//! Issue 16, end to end: the agent scraped by a real Prometheus while real traffic
//! flows between network namespaces, then `mtls-auditor report` on what
//! Prometheus holds, checked against the agent's own records.

use std::{collections::BTreeMap, time::Duration};

use integration_tests::{
    Agent, AgentOptions, Cgroup, NetnsPair, Record, Spawn, TempDir,
    peers::{Pki, http_server, openssl_server},
    report::{clients, n, now, prometheus, query, report_ok, s, server, unix_of, value},
    require_root, wait_for,
};

const E2E_PROM: &str = "127.0.0.1:19140";
const E2E_AGENT: &str = "127.0.0.1:19142";
const NET: u8 = 140;

const E2E_POLICY: &str = "apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata:
  name: vault-strict
  namespace: bank
spec:
  selector:
    matchLabels:
      app: vault
  mtls:
    mode: STRICT
---
apiVersion: mtls-auditor.io/v1alpha1
kind: Inventory
metadata:
  name: bank
spec:
  workloads:
  - name: vault
    namespace: bank
    labels:
      app: vault
    match:
      cgroups: [\"/mtls-auditor-tests/report-vault\"]
  - name: teller
    namespace: bank
    labels:
      app: teller
    match:
      cgroups: [\"/mtls-auditor-tests/report-teller\"]
  - name: clerk
    namespace: bank
    labels:
      app: clerk
    match:
      cgroups: [\"/mtls-auditor-tests/report-clerk\"]
";

#[test]
fn the_agent_scraped_by_prometheus_then_the_report() {
    require_root();
    let dir = TempDir::new();
    let policy = dir.path().join("policy.yaml");
    std::fs::write(&policy, E2E_POLICY).expect("policy");
    let pair = NetnsPair::new("report", NET);
    let (vault_cg, teller_cg, clerk_cg) = (
        Cgroup::new("report-vault"),
        Cgroup::new("report-teller"),
        Cgroup::new("report-clerk"),
    );
    let pki = Pki::generate(dir.path());
    let www = dir.path().join("www");
    std::fs::create_dir_all(&www).expect("mkdir");
    std::fs::write(www.join("index.html"), "hello\n").expect("index");
    let agent = Agent::start(
        AgentOptions::default()
            .arg("--policy")
            .arg(policy.to_str().expect("utf8"))
            .arg("--listen")
            .arg(E2E_AGENT),
    );
    let _prom = prometheus(dir.path(), E2E_PROM, Some(E2E_AGENT));
    let scraped = wait_for(Duration::from_secs(30), || {
        (!query(E2E_PROM, "mtls_auditor_build_info", now()).is_empty()).then_some(())
    });
    assert!(scraped.is_some(), "Prometheus did not scrape the agent");
    // The window starts here: Prometheus holds nothing older (the report would
    // rightly call the time before a gap).
    let traffic_start = now();

    let server_ip = pair.a_v4();
    // vault:19441 requires a client certificate; on vault:19480 a plaintext HTTP
    // server accepts what STRICT should refuse; teller:19481 is plaintext HTTP
    // under Istio's default (PERMISSIVE).
    let _strict = openssl_server(
        Some(&pair.a),
        Some(&vault_cg),
        &pki,
        19441,
        &["-www", "-Verify", "1"],
    );
    let _vault_http = http_server(Some(&pair.a), Some(&vault_cg), server_ip, 19480, &www);
    let _teller = http_server(Some(&pair.a), Some(&teller_cg), server_ip, 19481, &www);
    let client = |args: &[&str], url: String| {
        let _ = Spawn::new("curl")
            .args([
                "-sS",
                "--max-time",
                "5",
                "--noproxy",
                "*",
                "-o",
                "/dev/null",
            ])
            .args(args)
            .arg(url)
            .netns(&pair.b)
            .cgroup(&clerk_cg)
            .run(Duration::from_secs(20));
    };
    let cert = pki.client_cert().to_str().expect("utf8").to_owned();
    let key = pki.client_key().to_str().expect("utf8").to_owned();
    for _ in 0..3 {
        client(
            &["-k", "--cert", &cert, "--key", &key],
            format!("https://{server_ip}:19441/"),
        );
    }
    for _ in 0..2 {
        client(&[], format!("http://{server_ip}:19441/"));
        client(&[], format!("http://{server_ip}:19480/"));
    }
    for _ in 0..3 {
        client(&[], format!("http://{server_ip}:19481/"));
    }
    let ours = |r: &Record| s(r, "destination_workload_namespace") == "bank";
    let records = agent.wait_records(10, Duration::from_secs(30), ours);
    let mut truth: BTreeMap<(u64, String, String), f64> = BTreeMap::new();
    for r in &records {
        *truth
            .entry((
                r["destination_port"].as_u64().unwrap_or(0),
                s(r, "connection_security_policy"),
                s(r, "verdict"),
            ))
            .or_default() += 1.0;
    }
    eprintln!("agent records: {truth:?}");
    let total = records.len() as f64;
    let counted = wait_for(Duration::from_secs(30), || {
        let v = query(
            E2E_PROM,
            r#"sum(mtls_auditor_connections_total{reporter="destination", destination_workload_namespace="bank"})"#,
            now(),
        );
        (v.first().map(value) == Some(total)).then_some(())
    });
    assert!(
        counted.is_some(),
        "Prometheus does not have the agent's {total} connections"
    );
    let since = (now() - traffic_start).max(1);
    let json = report_ok(&[
        "--prometheus",
        &format!("http://{E2E_PROM}"),
        "--since",
        &format!("{since}s"),
        "--policy",
        policy.to_str().expect("utf8"),
        "--namespace",
        "bank",
        "--format",
        "json",
    ]);
    let r: Record = serde_json::from_str(&json).expect("JSON");
    eprintln!("{json}");
    let count = |port: u64, class: &str, verdict: &str| {
        truth
            .get(&(port, class.into(), verdict.into()))
            .copied()
            .unwrap_or(0.0)
    };
    let vault = server(&r, "bank/vault:19441");
    assert_eq!(s(vault, "mode"), "STRICT");
    assert_eq!(vault["ready_for_strict"], true, "{vault:#}");
    assert_eq!(
        n(vault, "connections"),
        count(19441, "mutual_tls", "compliant") + count(19441, "none", "rejected")
    );
    assert_eq!(n(vault, "mutual_tls_connections"), 3.0);
    let refused = clients(&vault["refused_clients"]);
    assert_eq!(refused.keys().collect::<Vec<_>>(), ["bank/clerk"]);
    assert_eq!(
        n(&refused["bank/clerk"], "plaintext_connections"),
        count(19441, "none", "rejected")
    );
    let open = server(&r, "bank/vault:19480");
    assert_eq!(s(open, "mode"), "STRICT");
    assert_eq!(open["ready_for_strict"], false);
    let plain = clients(&open["plaintext_clients"]);
    assert_eq!(
        n(&plain["bank/clerk"], "plaintext_connections"),
        count(19480, "none", "violation")
    );
    let teller = server(&r, "bank/teller:19481");
    assert_eq!(s(teller, "mode"), "PERMISSIVE", "{teller:#}");
    assert_eq!(teller["ready_for_strict"], false);
    let plain = clients(&teller["plaintext_clients"]);
    assert_eq!(
        n(&plain["bank/clerk"], "plaintext_connections"),
        count(19481, "none", "permissive")
    );
    assert!(unix_of(&s(&plain["bank/clerk"], "last_seen")) >= traffic_start);
    let v = r["violations"].as_array().expect("violations");
    assert_eq!(v.len(), 1, "{v:#?}");
    assert_eq!(s(&v[0], "source"), "bank/clerk");
    assert_eq!(s(&v[0], "destination"), "bank/vault");
    assert_eq!(v[0]["port"], 19480);
    assert_eq!(n(&v[0], "connections"), count(19480, "none", "violation"));
    let cov = &r["coverage"];
    assert_eq!(cov["agents_reporting"], 1, "{cov:#}");
    assert_eq!(cov["agents_with_gaps"], 0, "{cov:#}");
    assert_eq!(cov["agents"][0]["instance"], E2E_AGENT);
    drop(agent);
}
