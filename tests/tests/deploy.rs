//! Issue 6, deployment: the Helm chart lints and renders with helm-python-sdk (Helm's
//! own Go SDK), the plain manifests in deploy/kubernetes are the chart's output, and
//! both pass `kubernetes-validate --strict` for Kubernetes 1.28 to 1.33. The content
//! is checked too: capabilities instead of privileged, one read-only host path, a
//! read-only ClusterRole, the promtool-tested alert rules, the dashboards.
//!
//! Needs the Python environment `cargo xtask setup` makes (target/pytools): without
//! it these tests fail, they do not skip.

use std::{
    collections::BTreeSet,
    path::{Path, PathBuf},
    process::{Command, Output},
};

use integration_tests::{TempDir, stdout_of_success};
use serde_json::Value;

const VERSIONS: [&str; 6] = ["1.28", "1.29", "1.30", "1.31", "1.32", "1.33"];
const MANIFESTS: [&str; 3] = [
    "mtls-auditor.yaml",
    "prometheus-operator.yaml",
    "grafana-dashboards.yaml",
];

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn pytool(name: &str) -> PathBuf {
    let dir = std::env::var_os("MTLS_AUDITOR_PYTOOLS")
        .map_or_else(|| root().join("target/pytools"), PathBuf::from);
    let p = dir.join("bin").join(name);
    assert!(
        p.exists(),
        "{} is missing: run `cargo xtask setup` (it installs kubernetes-validate and helm-python-sdk)",
        p.display()
    );
    p
}

fn run(program: &Path, args: &[&str]) -> Output {
    Command::new(program)
        .args(args)
        .current_dir(root())
        .output()
        .unwrap_or_else(|e| panic!("running {}: {e}", program.display()))
}

fn chart(args: &[&str]) -> Output {
    let mut all = vec!["deploy/tools/chart.py"];
    all.extend_from_slice(args);
    run(&pytool("python"), &all)
}

/// Every document of a multi-document YAML file, as JSON values.
fn docs(text: &str) -> Vec<Value> {
    yaml_serde::Deserializer::from_str(text)
        .map(|d| serde::Deserialize::deserialize(d).expect("YAML document"))
        .filter(|v: &Value| !v.is_null())
        .collect()
}

/// Runs the kubernetes-validate command line, strict, for every version; every
/// object with a Kubernetes schema must pass, and only CRD kinds may lack one.
fn validate(files: &[PathBuf]) {
    let names: Vec<&str> = files.iter().map(|p| p.to_str().expect("utf8")).collect();
    let objects: Vec<Value> = files
        .iter()
        .flat_map(|f| docs(&std::fs::read_to_string(f).expect("read")))
        .collect();
    let crd = |o: &Value| o["apiVersion"] == "monitoring.coreos.com/v1";
    let core = objects.iter().filter(|o| !crd(o)).count();
    assert!(core > 0, "nothing to validate in {names:?}");
    for v in VERSIONS {
        let version = format!("{v}.0");
        let mut args = vec!["--strict", "-k", version.as_str()];
        args.extend(&names);
        let out = run(&pytool("kubernetes-validate"), &args);
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            out.status.success(),
            "kubernetes-validate --strict -k {v} failed:\n{text}"
        );
        let passed = text
            .lines()
            .filter(|l| l.contains(" passed for resource "))
            .count();
        assert_eq!(
            passed, core,
            "Kubernetes {v}: not every object passed:\n{text}"
        );
        for l in text.lines().filter(|l| l.starts_with("WARN")) {
            assert!(
                l.contains("kind ServiceMonitor") || l.contains("kind PrometheusRule"),
                "Kubernetes {v}: unexpected warning: {l}"
            );
        }
    }
}

#[test]
fn chart_lints_strictly_for_every_supported_kubernetes() {
    let out = stdout_of_success(&chart(&["lint"]), "helm lint (helm-python-sdk)");
    assert!(out.contains("lint clean"), "{out}");
}

#[test]
fn plain_manifests_are_the_rendered_chart_and_validate() {
    let dir = TempDir::new();
    stdout_of_success(
        &chart(&["manifests", dir.path().to_str().expect("utf8")]),
        "rendering the chart",
    );
    for name in MANIFESTS {
        let fresh = std::fs::read_to_string(dir.path().join(name)).expect("rendered");
        let committed = std::fs::read_to_string(root().join("deploy/kubernetes").join(name))
            .unwrap_or_default();
        assert!(
            fresh == committed,
            "deploy/kubernetes/{name} is not what the chart renders: run `cargo xtask manifests`"
        );
    }
    let files: Vec<PathBuf> = MANIFESTS
        .iter()
        .map(|n| root().join("deploy/kubernetes").join(n))
        .collect();
    validate(&files);
}

#[test]
fn chart_with_every_option_set_validates() {
    let dir = TempDir::new();
    let values = dir.path().join("values.yaml");
    std::fs::write(
        &values,
        r#"image:
  repository: registry.example/mtls-auditor
  tag: "0.1.0-rc1"
agent:
  records: "-"
  events: /var/log/mtls-auditor/events.jsonl
  eventsAll: true
  remotePods: true
  eventsRate: 0.5
  listenAddress: "::"
  extraArgs: ["--linger-ms", "2000"]
  extraEnv:
    - name: MTLS_AUDITOR_POLL_MS
      value: "10"
policyFiles:
  transport.yaml: |
    apiVersion: mtls-auditor.io/v1alpha1
    kind: TransportPolicy
    metadata:
      name: databases
    spec:
      rules:
      - name: postgres-needs-tls
        require: tls
        match:
          ports: [5432]
extraCapabilities: [SYS_ADMIN]
seccompProfile:
  type: RuntimeDefault
priorityClassName: system-node-critical
serviceAccount:
  name: auditor
  annotations:
    example.com/owner: platform
serviceMonitor:
  labels:
    release: prometheus
prometheusRule:
  enabled: false
dashboards:
  namespace: grafana
  annotations:
    grafana_folder: mTLS
"#,
    )
    .expect("write values");
    let rendered = stdout_of_success(
        &chart(&["render", "--values", values.to_str().expect("utf8")]),
        "rendering with every option",
    );
    let file = dir.path().join("rendered.yaml");
    std::fs::write(&file, &rendered).expect("write");
    validate(std::slice::from_ref(&file));

    let objects = docs(&rendered);
    let kinds: BTreeSet<&str> = objects.iter().filter_map(|o| o["kind"].as_str()).collect();
    assert!(!kinds.contains("PrometheusRule"), "{kinds:?}");
    let ds = objects
        .iter()
        .find(|o| o["kind"] == "DaemonSet")
        .expect("DaemonSet");
    let c = &ds["spec"]["template"]["spec"]["containers"][0];
    let args: Vec<&str> = c["args"]
        .as_array()
        .expect("args")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    for a in [
        "--policy=/etc/mtls-auditor/policy",
        "--events-all",
        "--remote-pods",
        "--output=-",
        "--linger-ms",
        "--listen=[::]:9477",
    ] {
        assert!(args.contains(&a), "{a} not in {args:?}");
    }
    let cm = objects
        .iter()
        .find(|o| o["kind"] == "ConfigMap" && o["metadata"]["name"] == "mtls-auditor-policy")
        .expect("policy ConfigMap");
    assert!(
        cm["data"]["transport.yaml"]
            .as_str()
            .unwrap_or("")
            .contains("postgres-needs-tls")
    );
    let dash = objects
        .iter()
        .find(|o| o["kind"] == "ConfigMap" && o["metadata"]["labels"]["grafana_dashboard"] == "1")
        .expect("dashboard ConfigMap");
    assert_eq!(dash["metadata"]["namespace"], "grafana");
    assert_eq!(dash["metadata"]["annotations"]["grafana_folder"], "mTLS");
}

#[test]
fn bad_values_are_refused_naming_the_field() {
    let dir = TempDir::new();
    let values = dir.path().join("values.yaml");
    std::fs::write(
        &values,
        "agent:\n  captureBudget: lots\n  recordz: \"-\"\n  listenAddress: localhost\n",
    )
    .expect("write");
    let out = chart(&["render", "--values", values.to_str().expect("utf8")]);
    assert!(!out.status.success(), "bad values were accepted");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("captureBudget"), "{err}");
    assert!(err.contains("recordz"), "{err}");
    assert!(err.contains("listenAddress"), "{err}");
}

#[test]
fn deployment_content_is_what_the_agent_needs_and_no_more() {
    let read = |n: &str| {
        docs(&std::fs::read_to_string(root().join("deploy/kubernetes").join(n)).expect("read"))
    };
    let core = read("mtls-auditor.yaml");
    let find = |kind: &str| -> &Value {
        core.iter()
            .find(|o| o["kind"] == kind)
            .unwrap_or_else(|| panic!("no {kind}"))
    };
    let ds = find("DaemonSet");
    let pod = &ds["spec"]["template"]["spec"];
    let c = &pod["containers"][0];
    let sc = &c["securityContext"];
    assert_eq!(sc["privileged"], false);
    assert_eq!(sc["allowPrivilegeEscalation"], false);
    assert_eq!(sc["readOnlyRootFilesystem"], true);
    assert_eq!(sc["capabilities"]["drop"], serde_json::json!(["ALL"]));
    let caps: BTreeSet<&str> = sc["capabilities"]["add"]
        .as_array()
        .expect("capabilities")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    let want: BTreeSet<&str> = [
        "BPF",
        "PERFMON",
        "NET_ADMIN",
        "SYS_RESOURCE",
        "DAC_READ_SEARCH",
    ]
    .into();
    assert_eq!(caps, want);
    assert_eq!(pod["hostNetwork"], false);
    assert_eq!(pod["hostPID"], false);
    let volumes = pod["volumes"].as_array().expect("volumes");
    let host: Vec<&str> = volumes
        .iter()
        .filter_map(|v| v["hostPath"]["path"].as_str())
        .collect();
    assert_eq!(host, ["/sys/fs/cgroup"], "host paths");
    let mount = c["volumeMounts"]
        .as_array()
        .expect("mounts")
        .iter()
        .find(|m| m["name"] == "host-cgroup")
        .expect("cgroup mount");
    assert_eq!(mount["readOnly"], true);
    let env = c["env"].as_array().expect("env");
    let var = |name: &str| {
        env.iter()
            .find(|e| e["name"] == name)
            .unwrap_or_else(|| panic!("no {name}"))
    };
    assert_eq!(
        var("MTLS_AUDITOR_NODE_NAME")["valueFrom"]["fieldRef"]["fieldPath"],
        "spec.nodeName"
    );
    assert_eq!(var("MTLS_AUDITOR_CGROUP_ROOT")["value"], mount["mountPath"]);
    assert_eq!(c["readinessProbe"]["httpGet"]["path"], "/readyz");
    assert_eq!(c["livenessProbe"]["httpGet"]["path"], "/healthz");

    // Read-only RBAC over exactly the watched resources.
    let role = find("ClusterRole");
    let mut resources = BTreeSet::new();
    for rule in role["rules"].as_array().expect("rules") {
        let verbs: BTreeSet<&str> = rule["verbs"]
            .as_array()
            .expect("verbs")
            .iter()
            .filter_map(Value::as_str)
            .collect();
        assert_eq!(verbs, ["get", "list", "watch"].into(), "{rule}");
        for r in rule["resources"].as_array().expect("resources") {
            resources.insert(r.as_str().expect("resource").to_owned());
        }
    }
    let want: BTreeSet<String> = [
        "pods",
        "services",
        "endpointslices",
        "peerauthentications",
        "destinationrules",
        "servers",
        "authorizationpolicies",
        "meshtlsauthentications",
        "networkauthentications",
    ]
    .map(String::from)
    .into();
    assert_eq!(resources, want);

    // The Service the ServiceMonitor selects, with scrape annotations.
    let svc = find("Service");
    assert_eq!(
        svc["metadata"]["annotations"]["prometheus.io/scrape"],
        "true"
    );
    assert_eq!(svc["spec"]["ports"][0]["name"], "metrics");
    let operator = read("prometheus-operator.yaml");
    let sm = operator
        .iter()
        .find(|o| o["kind"] == "ServiceMonitor")
        .expect("ServiceMonitor");
    for (k, v) in sm["spec"]["selector"]["matchLabels"]
        .as_object()
        .expect("selector")
    {
        assert_eq!(
            &svc["metadata"]["labels"][k], v,
            "ServiceMonitor selects label {k}"
        );
    }
    assert_eq!(sm["spec"]["endpoints"][0]["port"], "metrics");

    // The alert rules are the promtool-tested file's, unchanged.
    let rule = operator
        .iter()
        .find(|o| o["kind"] == "PrometheusRule")
        .expect("PrometheusRule");
    let alerts = docs(
        &std::fs::read_to_string(root().join("deploy/prometheus/alerts.yaml")).expect("alerts"),
    );
    assert_eq!(rule["spec"]["groups"], alerts[0]["groups"]);

    // Every dashboard, labelled for Grafana's sidecar, byte for byte.
    let dashboards = read("grafana-dashboards.yaml");
    for name in ["overview", "workload", "agent-health", "strict-readiness"] {
        let file = std::fs::read_to_string(root().join(format!("dashboards/{name}.json")))
            .expect("dashboard");
        let cm = dashboards
            .iter()
            .find(|o| o["metadata"]["name"] == format!("mtls-auditor-dashboard-{name}"))
            .unwrap_or_else(|| panic!("no ConfigMap for dashboard {name}"));
        assert_eq!(cm["metadata"]["labels"]["grafana_dashboard"], "1");
        let data = cm["data"][format!("mtls-auditor-{name}.json")]
            .as_str()
            .expect("data");
        assert_eq!(data.trim_end(), file.trim_end(), "dashboard {name}");
    }
}
