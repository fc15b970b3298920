//! Conformance with Istio: cases transcribed from Istio's own unit tests (the
//! test file and case name on each) as data under `tests/conformance/`: policy
//! YAML, the question, and Istio's expected answer. Every case is asked of the
//! auditor's policy engine; cases that cannot be expressed say why and are
//! counted apart. The summary (cases, passed, failed, not expressible) is
//! printed; any failure fails the test.

use std::{
    collections::BTreeMap,
    fmt::Write as _,
    path::{Path, PathBuf},
};

use mtls_auditor::{
    inventory::{Service, Workload},
    policy::{ClientProxy, PolicySet, Severity, load::load_str, model::PeerMode},
};
use serde::Deserialize;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Suite {
    /// The Istio test file the cases come from.
    source: String,
    /// Policy shared by several cases, by name.
    #[serde(default)]
    fixtures: BTreeMap<String, String>,
    cases: Vec<Case>,
    /// Tests of the file outside the auditor's scope: (test, cases, why).
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
    #[serde(default = "root")]
    root: String,
    #[serde(default)]
    fixture: Option<String>,
    #[serde(default)]
    policy: String,
    /// One question or several.
    #[serde(default)]
    ask: Vec<Ask>,
    /// Why the case cannot be asked of the auditor.
    #[serde(default)]
    cannot: Option<String>,
    /// Istio's test uses objects its own validation refuses: why they are asked
    /// anyway (the auditor's index, like Istio's, does not need them valid).
    #[serde(default)]
    allow_errors: Option<String>,
    /// What of Istio's assertion is not checked, or how it was mapped.
    #[serde(default)]
    #[allow(dead_code)]
    note: Option<String>,
}

fn root() -> String {
    "istio-system".into()
}

/// PeerAuthentication mode of a workload's port.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Server {
    namespace: String,
    #[serde(default)]
    labels: BTreeMap<String, String>,
    port: u16,
    want: String,
}

/// Istio's namespace-level mode (`UNKNOWN` when none).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct NamespaceMode {
    namespace: String,
    want: String,
}

/// The PeerAuthentications Istio selects for a workload, `ns/name`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PeerPolicies {
    namespace: String,
    #[serde(default)]
    labels: BTreeMap<String, String>,
    want: Vec<String>,
}

/// The consolidated DestinationRules a client namespace sees for a host.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct DestinationRules {
    client_namespace: String,
    host: String,
    service_namespace: String,
    /// Names of the entries, in order.
    #[serde(default)]
    names: Option<Vec<String>>,
    /// Subsets of the first entry.
    #[serde(default)]
    subsets: Option<Vec<String>>,
    /// `from` of entries, by name.
    #[serde(default)]
    from: Option<BTreeMap<String, Vec<String>>>,
    /// The first entry's host.
    #[serde(default)]
    host_match: Option<String>,
}

/// What a client's proxy sends: `ISTIO_MUTUAL`, `MUTUAL`, `SIMPLE` or `none`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Client {
    #[serde(default = "default_ns")]
    namespace: String,
    #[serde(default)]
    labels: BTreeMap<String, String>,
    #[serde(default = "sidecar")]
    proxy: String,
    host: String,
    #[serde(default = "default_ns")]
    service_namespace: String,
    #[serde(default)]
    headless: bool,
    #[serde(default)]
    mesh_external: bool,
    port: u16,
    #[serde(default)]
    destination: Option<Dest>,
    want: String,
    #[serde(default)]
    auto: Option<bool>,
}

/// Istio's inferred mTLS mode of a service (`BestEffortInferServiceMTLSMode`).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ServiceMode {
    host: String,
    namespace: String,
    #[serde(default)]
    headless: bool,
    #[serde(default)]
    mesh_external: bool,
    #[serde(default)]
    destination: Option<Dest>,
    want: String,
}

/// `policy check`: `valid`, `warning` (valid, with a warning) or `error`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Validate {
    want: String,
    #[serde(default)]
    message: Option<String>,
}

/// A short host resolved to an FQDN.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Host {
    host: String,
    namespace: String,
    want: String,
}

/// One question: exactly one of the fields.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct Ask {
    #[serde(default)]
    server: Option<Server>,
    #[serde(default)]
    namespace_mode: Option<NamespaceMode>,
    #[serde(default)]
    peer_policies: Option<PeerPolicies>,
    #[serde(default)]
    destination_rules: Option<DestinationRules>,
    #[serde(default)]
    client: Option<Client>,
    #[serde(default)]
    service_mode: Option<ServiceMode>,
    #[serde(default)]
    validate: Option<Validate>,
    #[serde(default)]
    host: Option<Host>,
}

impl Ask {
    fn count(&self) -> usize {
        [
            self.server.is_some(),
            self.namespace_mode.is_some(),
            self.peer_policies.is_some(),
            self.destination_rules.is_some(),
            self.client.is_some(),
            self.service_mode.is_some(),
            self.validate.is_some(),
            self.host.is_some(),
        ]
        .iter()
        .filter(|b| **b)
        .count()
    }
}

fn default_ns() -> String {
    "default".into()
}

fn sidecar() -> String {
    "sidecar".into()
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Dest {
    #[serde(default = "default_ns")]
    namespace: String,
    #[serde(default = "dest_name")]
    name: String,
    #[serde(default)]
    labels: BTreeMap<String, String>,
    #[serde(default = "yes")]
    sidecar: bool,
}

fn dest_name() -> String {
    "destination".into()
}

fn yes() -> bool {
    true
}

fn workload(ns: &str, name: &str, labels: &BTreeMap<String, String>, sidecar: bool) -> Workload {
    Workload {
        name: name.into(),
        namespace: ns.into(),
        labels: labels.clone(),
        pod: None,
        canonical_service: None,
        container: None,
        port_names: BTreeMap::new(),
        sidecar,
        linkerd: None,
        service_account: None,
    }
}

fn service(host: &str, ns: &str, headless: bool, mesh_external: bool) -> Service {
    Service {
        name: host.split('.').next().unwrap_or(host).into(),
        namespace: ns.into(),
        fqdn: host.into(),
        headless,
        mesh_external,
    }
}

fn mode_name(m: Option<PeerMode>) -> &'static str {
    m.map_or("UNKNOWN", PeerMode::as_str)
}

/// Asks one question; `Err` says what differed.
fn ask(
    set: &PolicySet,
    diags: &[mtls_auditor::policy::Diagnostic],
    allow_errors: bool,
    q: &Ask,
) -> Result<(), String> {
    let errors: Vec<String> = diags
        .iter()
        .filter(|d| d.severity == Severity::Error)
        .map(ToString::to_string)
        .collect();
    if q.validate.is_none() && !errors.is_empty() && !allow_errors {
        return Err(format!("the policy does not load: {errors:?}"));
    }
    let check = |got: &str, want: &str, what: &str| {
        if got == want {
            Ok(())
        } else {
            Err(format!("{what}: got {got}, Istio says {want}"))
        }
    };
    if q.count() != 1 {
        return Err(format!("a question must ask one thing: {q:?}"));
    }
    if let Some(Server {
        namespace,
        labels,
        port,
        want,
    }) = &q.server
    {
        let d = set.peer_mode(namespace, labels, *port);
        return check(
            d.mode.as_str(),
            want,
            &format!("mode of {namespace} {labels:?} port {port} ({})", d.source),
        );
    }
    if let Some(NamespaceMode { namespace, want }) = &q.namespace_mode {
        return check(
            mode_name(set.namespace_mode(namespace)),
            want,
            &format!("namespace mode of {namespace}"),
        );
    }
    if let Some(PeerPolicies {
        namespace,
        labels,
        want,
    }) = &q.peer_policies
    {
        let got: Vec<String> = set
            .peer_authentications_for(namespace, labels)
            .iter()
            .map(|l| format!("{}/{}", l.object.metadata.ns(), l.object.metadata.name))
            .collect();
        return check(&format!("{got:?}"), &format!("{want:?}"), "policies");
    }
    if let Some(DestinationRules {
        client_namespace,
        host,
        service_namespace,
        names,
        subsets,
        from,
        host_match,
    }) = &q.destination_rules
    {
        let got = set.destination_rules_for(client_namespace, host, service_namespace);
        if let Some(names) = names {
            let g: Vec<&str> = got.iter().map(|r| r.name.as_str()).collect();
            check(&format!("{g:?}"), &format!("{names:?}"), "entries")?;
        }
        if let Some(subsets) = subsets {
            let g: Vec<&str> = got
                .first()
                .map(|r| r.spec.subsets.iter().map(|s| s.name.as_str()).collect())
                .unwrap_or_default();
            check(
                &format!("{g:?}"),
                &format!("{subsets:?}"),
                "subsets of the first entry",
            )?;
        }
        if let Some(from) = from {
            for (name, want) in from {
                let g = got
                    .iter()
                    .find(|r| &r.name == name)
                    .map(|r| r.from.clone())
                    .unwrap_or_default();
                check(
                    &format!("{g:?}"),
                    &format!("{want:?}"),
                    &format!("from of {name}"),
                )?;
            }
        }
        if let Some(h) = host_match {
            let g = got.first().map_or("", |r| r.spec.host.as_str());
            check(g, h, "matched host")?;
        }
        return Ok(());
    }
    if let Some(Client {
        namespace,
        labels,
        proxy,
        host,
        service_namespace,
        headless,
        mesh_external,
        port,
        destination,
        want,
        auto,
    }) = &q.client
    {
        let proxy_kind = match proxy.as_str() {
            "sidecar" => ClientProxy::Sidecar,
            "gateway" => ClientProxy::Gateway,
            "none" => ClientProxy::None,
            other => return Err(format!("unknown proxy kind {other}")),
        };
        let client = workload(
            namespace,
            "client",
            labels,
            proxy_kind == ClientProxy::Sidecar,
        );
        let svc = service(host, service_namespace, *headless, *mesh_external);
        let dst = destination
            .as_ref()
            .map(|d| workload(&d.namespace, &d.name, &d.labels, d.sidecar));
        let c = set.client_side(Some(&client), proxy_kind, &svc, dst.as_ref(), *port);
        let got = c.mode.map_or("none", |m| m.as_str());
        check(got, want, &format!("client TLS ({:?})", c.reason))?;
        if let Some(a) = auto {
            check(&c.auto_mtls.to_string(), &a.to_string(), "auto-mTLS")?;
        }
        return Ok(());
    }
    if let Some(ServiceMode {
        host,
        namespace,
        headless,
        mesh_external,
        destination,
        want,
    }) = &q.service_mode
    {
        let svc = service(host, namespace, *headless, *mesh_external);
        let dst = destination
            .as_ref()
            .map(|d| workload(&d.namespace, &d.name, &d.labels, d.sidecar));
        return check(
            mode_name(set.service_mtls_mode(&svc, dst.as_ref())),
            want,
            "service mode",
        );
    }
    if let Some(Validate { want, message }) = &q.validate {
        let has_warning = diags.iter().any(|d| d.severity == Severity::Warning);
        let got = if !errors.is_empty() {
            "error"
        } else if has_warning {
            "warning"
        } else {
            "valid"
        };
        check(
            got,
            want,
            &format!(
                "policy check ({:?})",
                diags.iter().map(ToString::to_string).collect::<Vec<_>>()
            ),
        )?;
        if let Some(m) = message
            && !diags.iter().any(|d| d.message.contains(m.as_str()))
        {
            return Err(format!("no finding says {m:?}: {diags:?}"));
        }
        return Ok(());
    }
    if let Some(Host {
        host,
        namespace,
        want,
    }) = &q.host
    {
        return check(
            &mtls_auditor::policy::destination::resolve_host(host, namespace, "cluster.local"),
            want,
            "resolved host",
        );
    }
    Err("no question".into())
}

#[derive(Default)]
struct Tally {
    cases: usize,
    passed: usize,
    cannot: usize,
    out_of_scope: usize,
    failures: Vec<String>,
}

fn run_suite(path: &Path, tally: &mut Tally, report: &mut String) {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let suite: Suite =
        yaml_serde::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let (mut n, mut ok, mut cannot) = (0, 0, 0);
    for case in &suite.cases {
        n += 1;
        let id = format!("{} {} {:?}", suite.source, case.test, case.case);
        if let Some(why) = &case.cannot {
            assert!(!why.trim().is_empty(), "{id}: `cannot` must say why");
            cannot += 1;
            continue;
        }
        assert!(!case.ask.is_empty(), "{id}: no question");
        let mut policy = String::new();
        if let Some(f) = &case.fixture {
            policy.push_str(
                suite
                    .fixtures
                    .get(f)
                    .unwrap_or_else(|| panic!("{id}: no fixture {f}")),
            );
            policy.push_str("\n---\n");
        }
        policy.push_str(&case.policy);
        let (files, diags) = load_str(Path::new("case.yaml"), &policy);
        let set = PolicySet::new(files, &case.root);
        let errs: Vec<String> = case
            .ask
            .iter()
            .filter_map(|q| ask(&set, &diags, case.allow_errors.is_some(), q).err())
            .collect();
        if errs.is_empty() {
            ok += 1;
        } else {
            tally.failures.push(format!("{id}: {}", errs.join("; ")));
        }
    }
    let scope: usize = suite.out_of_scope.iter().map(|o| o.cases).sum();
    for o in &suite.out_of_scope {
        assert!(
            !o.why.trim().is_empty() && !o.test.is_empty(),
            "{}: out_of_scope needs a test and a reason",
            suite.source
        );
    }
    let _ = writeln!(
        report,
        "{:<58} {n:>4} cases {ok:>4} pass {:>3} fail {cannot:>3} not expressible; {scope:>3} out of scope",
        suite.source,
        n - ok - cannot
    );
    tally.cases += n;
    tally.passed += ok;
    tally.cannot += cannot;
    tally.out_of_scope += scope;
}

#[test]
fn istio_unit_test_cases_give_istio_answers() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/conformance");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .expect("tests/conformance")
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
        .collect();
    files.sort();
    let mut tally = Tally::default();
    let mut report = String::new();
    for f in &files {
        run_suite(f, &mut tally, &mut report);
    }
    let _ = writeln!(
        report,
        "total: {} cases, {} pass, {} fail, {} not expressible; {} out of scope",
        tally.cases,
        tally.passed,
        tally.failures.len(),
        tally.cannot,
        tally.out_of_scope
    );
    println!("{report}");
    assert!(tally.cases > 100, "the suite lost its cases: {report}");
    assert!(
        tally.failures.is_empty(),
        "{report}\n{}",
        tally.failures.join("\n")
    );
}
