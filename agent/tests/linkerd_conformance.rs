//! Conformance with Linkerd: cases transcribed from the policy controller's
//! inbound index tests (`tests/conformance/linkerd/`), each with its test and
//! case name. Linkerd's tests assert the authorizations of a pod's port; the
//! cases ask the auditor's engine which clients those authorizations admit.
//! The summary is printed; any failure fails the test.

use std::{
    collections::BTreeMap,
    fmt::Write as _,
    net::IpAddr,
    path::{Path, PathBuf},
};

use mtls_auditor::{
    inventory::{LinkerdProxy, Workload},
    policy::{PolicySet, Severity, linkerd::Admission, load::load_str, model::parse_port_ranges},
};
use serde::Deserialize;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Suite {
    source: String,
    #[serde(default)]
    fixtures: BTreeMap<String, String>,
    cases: Vec<Case>,
    #[serde(default)]
    out_of_scope: Vec<OutOfScope>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct OutOfScope {
    test: String,
    cases: usize,
    why: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Case {
    test: String,
    case: String,
    /// The control plane's default (TestConfig's `default_policy`).
    #[serde(default = "cluster_unauthenticated")]
    cluster_default: String,
    /// The pod's `config.linkerd.io/default-inbound-policy`.
    #[serde(default)]
    annotation: Option<String>,
    /// The pod's `config.linkerd.io/proxy-require-identity-inbound-ports`.
    #[serde(default)]
    require_identity: Option<String>,
    #[serde(default)]
    fixture: Vec<String>,
    #[serde(default)]
    policy: String,
    #[serde(default = "port_8080")]
    port: u16,
    ask: Vec<Ask>,
}

fn cluster_unauthenticated() -> String {
    "cluster-unauthenticated".into()
}

fn port_8080() -> u16 {
    8080
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Ask {
    client: Client,
    admit: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Client {
    addr: IpAddr,
    #[serde(default)]
    identity: Option<String>,
}

/// TestConfig's cluster: networks, control plane, identity domain.
fn linkerd_config(default: &str) -> String {
    format!(
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {{name: linkerd-config, namespace: linkerd}}\ndata:\n  values: |\n    clusterNetworks: 192.0.2.0/24\n    identityTrustDomain: cluster.example.com\n    proxy:\n      defaultInboundPolicy: {default}\n"
    )
}

fn admission(a: Admission) -> &'static str {
    match a {
        Admission::Localhost => "localhost",
        Admission::Unauthenticated { audit: false } => "unauthenticated",
        Admission::Unauthenticated { audit: true } => "audit",
        Admission::Authenticated => "authenticated",
        Admission::Deny => "deny",
    }
}

fn run_case(suite: &Suite, case: &Case, file: &Path) -> Result<(), String> {
    let mut docs = vec![linkerd_config(&case.cluster_default)];
    for f in &case.fixture {
        docs.push(
            suite
                .fixtures
                .get(f)
                .ok_or_else(|| format!("no fixture {f}"))?
                .clone(),
        );
    }
    if !case.policy.is_empty() {
        docs.push(case.policy.clone());
    }
    let (files, diags) = load_str(file, &docs.join("---\n"));
    let errors: Vec<_> = diags
        .iter()
        .filter(|d| d.severity == Severity::Error)
        .map(ToString::to_string)
        .collect();
    if !errors.is_empty() {
        return Err(format!("policy does not load: {errors:?}"));
    }
    let set = PolicySet::new(files, "istio-system");
    let pod = Workload {
        name: "pod-0".into(),
        namespace: "ns-0".into(),
        labels: [("app".to_owned(), "app-0".to_owned())].into(),
        linkerd: Some(LinkerdProxy {
            default_inbound_policy: case.annotation.clone(),
            require_identity_ports: case
                .require_identity
                .as_deref()
                .map(parse_port_ranges)
                .transpose()?
                .unwrap_or_default(),
            proxy_default: None,
        }),
        ..Workload::default()
    };
    for ask in &case.ask {
        let d = set.linkerd_decision_for_identity(
            &pod,
            case.port,
            ask.client.identity.as_deref(),
            Some(ask.client.addr),
        );
        let got = admission(d.admission);
        if got != ask.admit {
            return Err(format!(
                "client {} ({}): Linkerd {}, auditor {got}: {}",
                ask.client.addr,
                ask.client.identity.as_deref().unwrap_or("no identity"),
                ask.admit,
                d.reason
            ));
        }
    }
    Ok(())
}

#[test]
fn linkerd_inbound_index_cases_give_linkerd_answers() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/conformance/linkerd");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .expect("conformance/linkerd")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no suites in {}", dir.display());
    let mut summary = String::new();
    let mut failures = Vec::new();
    let mut total = 0;
    for path in &files {
        let text = std::fs::read_to_string(path).expect("read suite");
        let suite: Suite =
            yaml_serde::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let (mut pass, mut asks) = (0, 0);
        for case in &suite.cases {
            asks += case.ask.len();
            match run_case(&suite, case, path) {
                Ok(()) => pass += 1,
                Err(e) => failures.push(format!("{} / {}: {e}", case.test, case.case)),
            }
        }
        total += suite.cases.len();
        let skipped: usize = suite.out_of_scope.iter().map(|o| o.cases).sum();
        let _ = writeln!(
            summary,
            "{:<60} {:>3} cases ({asks} questions) {:>3} pass {:>3} fail; {skipped} out of scope",
            suite.source,
            suite.cases.len(),
            pass,
            suite.cases.len() - pass
        );
        for o in &suite.out_of_scope {
            assert!(!o.why.is_empty() && !o.test.is_empty());
        }
    }
    println!("{summary}");
    assert!(total > 0);
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
