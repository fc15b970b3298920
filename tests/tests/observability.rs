//! Issue 5: a real Prometheus scrapes the agent during the seed scenario. The series
//! must match the connections that were made, verdict by verdict; every dashboard
//! panel query must return data; the alert rules must fire; verdict events, the
//! edges view, /readyz and OpenMetrics must work.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    process::Stdio,
    time::Duration,
};

use integration_tests::{Child, Record, Spawn, TempDir, agent_bin, require_root, wait_for};

const AGENT_LISTEN: &str = "127.0.0.1:19477";
const PROM_LISTEN: &str = "127.0.0.1:19090";

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn prometheus(dir: &Path) -> Child {
    let rules = root().join("deploy/prometheus/alerts.yaml");
    let config = dir.join("prometheus.yml");
    std::fs::write(
        &config,
        format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nrule_files:\n  - {}\nscrape_configs:\n  - job_name: mtls-auditor\n    static_configs:\n      - targets: ['{AGENT_LISTEN}']\n",
            rules.display()
        ),
    )
    .expect("prometheus.yml");
    let child = Spawn::new("prometheus")
        .arg(format!("--config.file={}", config.display()))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.join("tsdb").display()
        ))
        .arg(format!("--web.listen-address={PROM_LISTEN}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn();
    let ready = wait_for(Duration::from_secs(20), || {
        ureq::get(&format!("http://{PROM_LISTEN}/-/ready"))
            .call()
            .ok()
            .map(|_| ())
    });
    assert!(
        ready.is_some(),
        "Prometheus did not become ready on {PROM_LISTEN}"
    );
    // Ready is not scraping: Prometheus hands its targets to the scrape loop up to
    // a discovery interval (5 s) later. A series first scraped after all the seed's
    // rounds would start at its final count and show no increase.
    let scraping = wait_for(Duration::from_secs(20), || {
        (!query(r#"up{job="mtls-auditor"}"#).is_empty()).then_some(())
    });
    assert!(
        scraping.is_some(),
        "Prometheus did not start scraping {AGENT_LISTEN}"
    );
    child
}

/// Runs an instant query; returns the result vector.
fn query(q: &str) -> Vec<Record> {
    let url = format!("http://{PROM_LISTEN}/api/v1/query");
    let body = ureq::get(&url)
        .query("query", q)
        .call()
        .unwrap_or_else(|e| panic!("query {q}: {e}"))
        .into_body()
        .read_to_string()
        .expect("body");
    let v: Record = serde_json::from_str(&body).expect("JSON");
    assert_eq!(v["status"], "success", "query {q}: {body}");
    v["data"]["result"].as_array().cloned().unwrap_or_default()
}

fn value(r: &Record) -> f64 {
    r["value"][1]
        .as_str()
        .and_then(|s| s.parse().ok())
        .unwrap_or(f64::NAN)
}

fn s(r: &Record, k: &str) -> String {
    r.get(k).and_then(|v| v.as_str()).unwrap_or("").to_owned()
}

/// The reporters that count a record (docs/mesh.md): each logical connection once
/// at its source and once at its destination.
fn reporters(r: &Record) -> Vec<&'static str> {
    let client = !r["client"]["local"].is_null();
    let server = !r["server"]["local"].is_null();
    let (source, destination) = match r["hop"].as_str().unwrap_or("") {
        "direct" | "proxy_inbound" => (client, server),
        "app_to_proxy" => (client, false),
        "proxy_upstream" => (false, server),
        _ => (false, false),
    };
    [("source", source), ("destination", destination)]
        .into_iter()
        .filter(|(_, on)| *on)
        .map(|(r, _)| r)
        .collect()
}

fn records(path: &Path) -> Vec<Record> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

#[test]
fn prometheus_sees_the_seed_scenario_verdict_by_verdict() {
    require_root();
    let dir = TempDir::new();
    let _prom = prometheus(dir.path());
    let out = dir.path().join("records.jsonl");
    let events = dir.path().join("events.jsonl");
    let script = root().join("examples/seed/run.sh");
    let mut seed = Spawn::new("bash")
        .arg(&script)
        .args(["--listen", AGENT_LISTEN, "--events"])
        .arg(&events)
        .env("MTLS_AUDITOR_BIN", agent_bin())
        .env("SEED_ROUNDS", "3")
        .env("SEED_INTERVAL", "2")
        .env("SEED_HOLD", "1")
        .env("MTLS_AUDITOR_FORMAT", "json")
        .env("MTLS_AUDITOR_OUTPUT", &out)
        .stderr(Stdio::piped())
        .spawn();
    // The records that count in the metrics (the seed runs on the mesh's data path:
    // every hop is a record, each logical connection counts once per reporter).
    let seed_records = |path: &Path| -> Vec<Record> {
        records(path)
            .into_iter()
            .filter(|r| {
                let w = s(r, "source_workload");
                w.starts_with("example-service-") || w == "legacy-client"
            })
            .filter(|r| !reporters(r).is_empty())
            .collect()
    };
    let done = wait_for(Duration::from_secs(90), || {
        (seed_records(&out).len() >= 18).then_some(())
    });
    assert!(
        done.is_some(),
        "the seed scenario did not make 3 rounds of connections: {:?}",
        seed_records(&out).len()
    );

    // The agent is ready and serves both exposition formats.
    let ready = ureq::get(&format!("http://{AGENT_LISTEN}/readyz"))
        .call()
        .expect("readyz");
    assert_eq!(ready.status(), 200);
    let text = ureq::get(&format!("http://{AGENT_LISTEN}/metrics"))
        .call()
        .expect("metrics")
        .into_body()
        .read_to_string()
        .expect("body");
    let metrics_file = dir.path().join("metrics.txt");
    std::fs::write(&metrics_file, &text).expect("write");
    let lint = Spawn::new("sh")
        .arg("-c")
        .arg(format!(
            "promtool check metrics < {}",
            metrics_file.display()
        ))
        .run(Duration::from_secs(30));
    assert!(
        lint.status.success(),
        "promtool check metrics: {}{}",
        String::from_utf8_lossy(&lint.stdout),
        String::from_utf8_lossy(&lint.stderr)
    );
    let om = ureq::get(&format!("http://{AGENT_LISTEN}/metrics"))
        .header("Accept", "application/openmetrics-text; version=1.0.0")
        .call()
        .expect("openmetrics");
    assert!(
        om.headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .starts_with("application/openmetrics-text"),
        "content type"
    );
    let om = om.into_body().read_to_string().expect("body");
    assert!(
        om.ends_with("# EOF\n") && om.contains("# TYPE mtls_auditor_connections counter"),
        "{om}"
    );

    // Verdict by verdict and reporter, Prometheus agrees with the records.
    let tally = || {
        let mut want: BTreeMap<(String, String), f64> = BTreeMap::new();
        let mut findings = 0.0;
        for r in seed_records(&out) {
            for rep in reporters(&r) {
                *want.entry((rep.to_owned(), s(&r, "verdict"))).or_default() += 1.0;
            }
            if matches!(
                s(&r, "verdict").as_str(),
                "violation" | "rejected" | "permissive"
            ) {
                findings += 1.0;
            }
        }
        (want, findings)
    };
    let (want, _) = tally();
    for v in ["compliant", "rejected", "violation", "permissive", "exempt"] {
        let n: f64 = want
            .iter()
            .filter(|((_, w), _)| w == v)
            .map(|(_, n)| n)
            .sum();
        assert!(n >= 3.0, "three rounds of {v}: {want:?}");
    }
    let q = r#"sum by (reporter, verdict) (mtls_auditor_connections_total{source_workload=~"example-service-.*|legacy-client"})"#;
    let got = wait_for(Duration::from_secs(20), || {
        // Records of the last round may still be on their way.
        let (want, _) = tally();
        let got: BTreeMap<(String, String), f64> = query(q)
            .iter()
            .map(|r| {
                (
                    (
                        r["metric"]["reporter"].as_str().unwrap_or("").to_owned(),
                        r["metric"]["verdict"].as_str().unwrap_or("").to_owned(),
                    ),
                    value(r),
                )
            })
            .filter(|(_, v)| *v > 0.0)
            .collect();
        // Open connections count once their class is settled, before they have a
        // record: the sidecars' pooled mutual TLS connection is compliant at the
        // destination while it stays open. Everything else matches exactly.
        let open_ok = |k: &(String, String)| k.0 == "destination" && k.1 == "compliant";
        let same = got.keys().chain(want.keys()).all(|k| {
            let (g, w) = (
                got.get(k).copied().unwrap_or(0.0),
                want.get(k).copied().unwrap_or(0.0),
            );
            if open_ok(k) {
                g >= w && g > 0.0
            } else {
                g == w
            }
        });
        same.then_some(got)
    });
    assert!(
        got.is_some(),
        "Prometheus {:?} != records {:?}",
        query(q),
        tally().0
    );
    // Same labels as the records: one series per (workloads, port, observed,
    // expected, verdict). b's requests to a:8080 go through both sidecars: counted
    // at the source as the mutual TLS its proxy sent; the bypass on 9090 is plaintext.
    let v = query(
        r#"mtls_auditor_connections_total{reporter="source", source_workload="example-service-b", destination_workload="example-service-a", destination_port="8080"}"#,
    );
    assert_eq!(v.len(), 1, "{v:?}");
    let m = &v[0]["metric"];
    assert_eq!(m["connection_security_policy"], "mutual_tls");
    assert_eq!(m["expected_security_policy"], "mutual_tls");
    assert_eq!(m["verdict"], "compliant");
    assert_eq!(m["source_workload_namespace"], "default");
    assert_eq!(m["destination_workload_namespace"], "default");
    let v = query(
        r#"mtls_auditor_connections_total{reporter="destination", source_workload="example-service-b", destination_workload="example-service-a", destination_port="9090"}"#,
    );
    assert_eq!(v.len(), 1, "{v:?}");
    assert_eq!(v[0]["metric"]["connection_security_policy"], "none");
    assert_eq!(v[0]["metric"]["verdict"], "violation");
    // Bytes, handshakes (the legacy client's certificate-less TLS 1.3 attempt; the
    // sidecars' pooled connection counts its handshake when it closes), the hops
    // and the agent's own health.
    assert!(!query(r#"mtls_auditor_bytes_total{direction="server_to_client", connection_security_policy="mutual_tls"} > 0"#).is_empty());
    assert!(
        !query(r#"mtls_auditor_tls_handshakes_total{tls_version="1.3", client_auth=~"empty_certificate|none"} > 0"#)
            .is_empty()
    );
    for hop in ["app_to_proxy", "proxy_inbound", "proxy_to_app", "direct"] {
        assert!(
            !query(&format!(
                r#"mtls_auditor_connection_hops_total{{hop="{hop}"}} > 0"#
            ))
            .is_empty(),
            "{hop}"
        );
    }
    assert_eq!(
        query("mtls_auditor_mesh_proxies").first().map(value),
        Some(3.0)
    );
    assert_eq!(
        query("mtls_auditor_probes_attached").first().map(value),
        Some(5.0)
    );
    assert_eq!(query("mtls_auditor_ready").first().map(value), Some(1.0));
    assert!(
        query("mtls_auditor_events_received_total")
            .first()
            .map(value)
            .unwrap_or(0.0)
            > 0.0
    );

    // Every dashboard panel query, variables filled in, returns data. A stat's
    // `(...) or vector(0)` fallback would answer even for a misspelt metric, so the
    // query inside it must answer by itself. The workload dashboard is filled in
    // with the seed's server (a: inbound findings) and its client (b: outbound).
    let fill_with = |q: &str, workload: &str| {
        q.replace("$__rate_interval", "1m")
            .replace("$__range", "10m")
            .replace("$namespace", "default")
            .replace("$workload", workload)
            .replace("$instance", ".*")
    };
    let fill = |q: &str| fill_with(q, "example-service-a");
    let mut checked = 0;
    for file in [
        "overview.json",
        "workload.json",
        "agent-health.json",
        "strict-readiness.json",
    ] {
        let dash: Record = serde_json::from_str(
            &std::fs::read_to_string(root().join("dashboards").join(file)).expect("read"),
        )
        .expect("JSON");
        // Template variables: `label_values(SELECTOR, LABEL)` offers the value the
        // panels below are filled in with.
        for var in dash["templating"]["list"].as_array().expect("templating") {
            let Some(q) = var["query"]["query"].as_str() else {
                continue;
            };
            let inner = q
                .strip_prefix("label_values(")
                .and_then(|q| q.strip_suffix(')'))
                .unwrap_or_else(|| panic!("{file}: variable query {q} is not label_values"));
            let (selector, label) = inner
                .rsplit_once(',')
                .expect("label_values(SELECTOR, LABEL)");
            let label = label.trim();
            let want = match label {
                "destination_workload_namespace" => "default",
                "destination_workload" => "example-service-a",
                _ => "",
            };
            let values = wait_for(Duration::from_secs(10), || {
                let values: Vec<String> =
                    query(&format!("count by ({label}) ({})", fill(selector)))
                        .iter()
                        .filter_map(|r| r["metric"][label].as_str().map(str::to_owned))
                        .collect();
                values
                    .iter()
                    .any(|v| want.is_empty() || v == want)
                    .then_some(values)
            });
            assert!(
                values.is_some(),
                "{file}: variable {} offers no {want:?}: {q}",
                var["name"]
            );
            checked += 1;
        }
        for panel in dash["panels"].as_array().expect("panels") {
            for target in panel["targets"].as_array().expect("targets") {
                let exprs: Vec<String> = ["example-service-a", "example-service-b"]
                    .iter()
                    .map(|w| {
                        let full = fill_with(target["expr"].as_str().expect("expr"), w);
                        full.strip_suffix(" or vector(0)")
                            .map_or(full.as_str(), str::trim)
                            .to_owned()
                    })
                    .collect();
                let res = wait_for(Duration::from_secs(10), || {
                    exprs.iter().find(|e| !query(e).is_empty())
                });
                assert!(
                    res.is_some(),
                    "{file}: panel {:?} returns no data: {}\nthe violation samples Prometheus holds: {:?}",
                    panel["title"],
                    exprs.join(" / "),
                    query(r#"mtls_auditor_connections_total{verdict="violation"}[10m]"#)
                );
                checked += 1;
            }
        }
    }
    assert!(checked >= 33, "only {checked} panel and variable queries");

    // The alert on plaintext accepted by a workload that requires mutual TLS fires.
    let firing = wait_for(Duration::from_secs(20), || {
        let a =
            query(r#"ALERTS{alertname="MtlsPlaintextToMutualTlsWorkload", alertstate="firing"}"#);
        (!a.is_empty()).then_some(a)
    })
    .expect("MtlsPlaintextToMutualTlsWorkload did not fire");
    assert_eq!(firing[0]["metric"]["destination_port"], "9090");

    // The edges view of the running agent.
    let edges = Spawn::new(agent_bin().to_str().expect("utf8"))
        .args([
            "edges",
            "--agent",
            AGENT_LISTEN,
            "--json",
            "--namespace",
            "default",
            "--verdict",
            "violation",
        ])
        .run_ok(Duration::from_secs(10));
    let edges: Vec<Record> = serde_json::from_str(&edges).expect("edges JSON");
    assert_eq!(edges.len(), 1, "{edges:?}");
    assert_eq!(edges[0]["source"], "default/example-service-b");
    assert_eq!(edges[0]["destination"], "default/example-service-a");
    assert_eq!(edges[0]["destination_port"], 9090);
    assert!(edges[0]["connections"].as_u64().unwrap_or(0) >= 3);
    let table = Spawn::new(agent_bin().to_str().expect("utf8"))
        .args(["edges", "--agent", AGENT_LISTEN])
        .run_ok(Duration::from_secs(10));
    assert!(table.starts_with("SOURCE"), "{table}");
    assert!(
        table
            .lines()
            .any(|l| l.contains("default/example-service-c:8080") && l.contains("permissive")),
        "{table}"
    );

    // Verdict events: the findings, not the compliant ones, in the documented schema.
    let evs = records(&events);
    assert!(!evs.is_empty());
    for e in &evs {
        assert_eq!(e["schema"], "mtls-auditor.event/v1");
        assert!(
            matches!(
                s(e, "verdict").as_str(),
                "violation" | "rejected" | "permissive"
            ),
            "{e}"
        );
        assert!(!s(e, "reason").is_empty());
    }
    let seed_events = evs
        .iter()
        .filter(|e| {
            matches!(
                s(e, "source_workload").as_str(),
                "example-service-b" | "legacy-client"
            )
        })
        .count();
    assert_eq!(seed_events as f64, tally().1, "one event per finding");

    // The first violation on an edge nobody used before shows in `increase()`, so
    // in the alerts: Prometheus has scraped the agent for a while, so the agent
    // exports the new series at zero before it counts. (The legacy client has
    // not used a's excluded port 9090 yet; it runs in its pod's cgroup and netns.)
    let cg = mtls_auditor::cgroups::cgroup2_root()
        .expect("cgroup v2")
        .join("mtls-auditor-seed/legacy-client/app");
    Spawn::new("bash")
        .arg("-c")
        .arg(r#"echo $$ > "$0/cgroup.procs"; exec ip netns exec mtlsa-seed-legacy curl -sS --max-time 5 --noproxy '*' -o /dev/null http://10.213.51.1:9090/"#)
        .arg(&cg)
        .run_ok(Duration::from_secs(20));
    let edge = r#"mtls_auditor_connections_total{reporter="destination", source_workload="legacy-client", destination_port="9090", verdict="violation"}"#;
    let rose = wait_for(Duration::from_secs(20), || {
        (!query(&format!("increase({edge}[5m]) > 0")).is_empty()).then_some(())
    });
    assert!(
        rose.is_some(),
        "a new edge's first violation shows no increase: {:?}",
        query(&format!("{edge}[5m]"))
    );
    let samples = query(&format!("{edge}[5m]"));
    assert_eq!(
        samples.first().map(|r| r["values"][0][1].clone()),
        Some(serde_json::json!("0")),
        "the new series starts at zero: {samples:?}"
    );

    seed.signal(libc::SIGTERM);
    assert!(
        seed.wait_timeout(Duration::from_secs(20)).is_some(),
        "the seed scenario did not stop"
    );
}

#[test]
fn alert_rules_pass_their_unit_tests() {
    let dir = root().join("deploy/prometheus");
    Spawn::new("promtool")
        .args(["test", "rules", "alerts.test.yaml"])
        .current_dir(&dir)
        .run_ok(Duration::from_secs(60));
}

#[test]
fn dashboards_type_check_against_grafana_schema() {
    // tsc against @grafana/schema.
    Spawn::new("node")
        .arg("check.mjs")
        .current_dir(&root().join("dashboards"))
        .run_ok(Duration::from_secs(120));
}

#[test]
fn a_busy_listen_address_is_a_clear_error() {
    require_root();
    let holder = std::net::TcpListener::bind("127.0.0.1:19478").expect("bind");
    let out = Spawn::new(agent_bin().to_str().expect("utf8"))
        .args(["run", "--listen", "127.0.0.1:19478"])
        .run(Duration::from_secs(30));
    drop(holder);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        stderr.trim(),
        "mtls-auditor: --listen 127.0.0.1:19478: Address already in use (os error 98)"
    );
}

/// Records and events are two writers: on one stdout their lines could interleave.
#[test]
fn records_and_events_cannot_share_stdout() {
    require_root();
    let out = Spawn::new(agent_bin().to_str().expect("utf8"))
        .args(["run", "--listen", "off", "--output", "-", "--events", "-"])
        .run(Duration::from_secs(30));
    assert!(!out.status.success(), "both on stdout was accepted");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("--output - and --events - would interleave on stdout"),
        "{err}"
    );
}
