//! Unit tests of resolution: Istio's precedence as tables.

use std::{collections::BTreeMap, net::IpAddr, path::Path};

use super::{
    model::{Direction, PeerMode, Requirement, TlsMode},
    *,
};
use crate::inventory::{Service, Workload};

fn set(yaml: &str) -> PolicySet {
    let mut files = PolicyFiles::default();
    let mut diags = Vec::new();
    load::load_text(Path::new("test.yaml"), yaml, &mut files, &mut diags);
    assert!(
        diags.iter().all(|d| d.severity == Severity::Warning),
        "{diags:?}"
    );
    PolicySet::new(files, "istio-system")
}

fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

fn pa(
    ns: &str,
    name: &str,
    selector: Option<&str>,
    mode: &str,
    ports: &[(u16, &str)],
    created: &str,
) -> String {
    let mut s = format!(
        "---\napiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata:\n  name: {name}\n  namespace: {ns}\n  creationTimestamp: \"{created}\"\nspec:\n"
    );
    if let Some(app) = selector {
        s.push_str(&format!(
            "  selector:\n    matchLabels:\n      app: {app}\n"
        ));
    }
    s.push_str(&format!("  mtls:\n    mode: {mode}\n"));
    if !ports.is_empty() {
        s.push_str("  portLevelMtls:\n");
        for (p, m) in ports {
            s.push_str(&format!("    {p}:\n      mode: {m}\n"));
        }
    }
    s
}

/// Istio's documented precedence, as a table: (policies, workload ns, labels,
/// port, expected mode).
#[test]
fn peer_authentication_precedence() {
    let mesh_strict = pa(
        "istio-system",
        "default",
        None,
        "STRICT",
        &[],
        "2020-01-01T00:00:00Z",
    );
    let ns_permissive = pa(
        "foo",
        "default",
        None,
        "PERMISSIVE",
        &[],
        "2020-01-02T00:00:00Z",
    );
    let ns_unset = pa("foo", "default", None, "UNSET", &[], "2020-01-02T00:00:00Z");
    let finance_strict_8080_disable = pa(
        "foo",
        "finance",
        Some("finance"),
        "STRICT",
        &[(8080, "DISABLE")],
        "2020-01-03T00:00:00Z",
    );
    let finance_unset_8080_strict = pa(
        "foo",
        "finance",
        Some("finance"),
        "UNSET",
        &[(8080, "STRICT"), (9090, "UNSET")],
        "2020-01-03T00:00:00Z",
    );
    let cases: Vec<(Vec<&str>, &str, &str, u16, PeerMode)> = vec![
        // Nothing at all: Istio's default.
        (vec![], "foo", "x", 80, PeerMode::Permissive),
        // Mesh-wide STRICT reaches every namespace.
        (vec![&mesh_strict], "foo", "x", 80, PeerMode::Strict),
        // A namespace policy overrides the mesh one.
        (
            vec![&mesh_strict, &ns_permissive],
            "foo",
            "x",
            80,
            PeerMode::Permissive,
        ),
        // UNSET inherits from the mesh.
        (
            vec![&mesh_strict, &ns_unset],
            "foo",
            "x",
            80,
            PeerMode::Strict,
        ),
        // The workload policy overrides the namespace; its port level wins on 8080.
        (
            vec![&mesh_strict, &ns_permissive, &finance_strict_8080_disable],
            "foo",
            "finance",
            80,
            PeerMode::Strict,
        ),
        (
            vec![&mesh_strict, &ns_permissive, &finance_strict_8080_disable],
            "foo",
            "finance",
            8080,
            PeerMode::Disable,
        ),
        // Other workloads keep the namespace mode.
        (
            vec![&ns_permissive, &finance_strict_8080_disable],
            "foo",
            "other",
            8080,
            PeerMode::Permissive,
        ),
        // A workload policy with UNSET mode inherits, its port level still applies;
        // an UNSET port inherits the workload's (inherited) mode.
        (
            vec![&ns_permissive, &finance_unset_8080_strict],
            "foo",
            "finance",
            80,
            PeerMode::Permissive,
        ),
        (
            vec![&ns_permissive, &finance_unset_8080_strict],
            "foo",
            "finance",
            8080,
            PeerMode::Strict,
        ),
        (
            vec![&ns_permissive, &finance_unset_8080_strict],
            "foo",
            "finance",
            9090,
            PeerMode::Permissive,
        ),
        // Policies of another namespace do not apply.
        (vec![&ns_permissive], "bar", "x", 80, PeerMode::Permissive),
        (
            vec![&finance_strict_8080_disable],
            "bar",
            "finance",
            80,
            PeerMode::Permissive,
        ),
    ];
    for (i, (docs, ns, app, port, want)) in cases.into_iter().enumerate() {
        let p = set(&docs.concat());
        let got = p.peer_mode(ns, &labels(&[("app", app)]), port);
        assert_eq!(got.mode, want, "case {i}: {}", got.source);
    }
}

#[test]
fn oldest_namespace_policy_wins_a_conflict() {
    let newer = pa("foo", "newer", None, "DISABLE", &[], "2021-01-01T00:00:00Z");
    let older = pa("foo", "older", None, "STRICT", &[], "2020-01-01T00:00:00Z");
    let p = set(&format!("{newer}{older}"));
    let d = p.peer_mode("foo", &BTreeMap::new(), 80);
    assert_eq!(d.mode, PeerMode::Strict);
    assert!(d.source.contains("foo/older"), "{}", d.source);
    let mut files = PolicyFiles::default();
    let mut diags = Vec::new();
    load::load_text(
        Path::new("c.yaml"),
        &format!("{newer}{older}"),
        &mut files,
        &mut diags,
    );
    validate::validate(&files, &mut diags);
    assert!(
        diags.iter().any(|d| d
            .message
            .contains("`newer` is ignored, the oldest (`older`, line 12) wins")),
        "{diags:?}"
    );
}

fn dr(ns: &str, name: &str, host: &str, mode: &str, extra: &str) -> String {
    format!(
        "---\napiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata:\n  name: {name}\n  namespace: {ns}\nspec:\n  host: \"{host}\"\n{extra}  trafficPolicy:\n    tls:\n      mode: {mode}\n{certs}",
        certs = if mode == "MUTUAL" {
            "      clientCertificate: /etc/certs/c.pem\n      privateKey: /etc/certs/k.pem\n"
        } else {
            ""
        }
    )
}

fn svc(name: &str, ns: &str) -> Service {
    Service {
        name: name.into(),
        namespace: ns.into(),
        fqdn: format!("{name}.{ns}.svc.cluster.local"),
        headless: false,
        mesh_external: false,
    }
}

#[test]
fn destination_rule_lookup() {
    let reviews = svc("reviews", "bookinfo");
    let client = BTreeMap::new();
    let cases: Vec<(String, &str, Option<TlsMode>)> = vec![
        // Short host relative to the rule's namespace.
        (
            dr("bookinfo", "r", "reviews", "ISTIO_MUTUAL", ""),
            "bookinfo",
            Some(TlsMode::IstioMutual),
        ),
        // The same short host in another namespace names another service.
        (
            dr("default", "r", "reviews", "ISTIO_MUTUAL", ""),
            "default",
            None,
        ),
        // FQDN and wildcards.
        (
            dr(
                "default",
                "r",
                "reviews.bookinfo.svc.cluster.local",
                "MUTUAL",
                "",
            ),
            "default",
            Some(TlsMode::Mutual),
        ),
        (
            dr("istio-system", "r", "*.svc.cluster.local", "SIMPLE", ""),
            "default",
            Some(TlsMode::Simple),
        ),
        // The client's namespace beats the service's namespace.
        (
            format!(
                "{}{}",
                dr("bookinfo", "svc-ns", "reviews", "ISTIO_MUTUAL", ""),
                dr(
                    "frontend",
                    "client-ns",
                    "reviews.bookinfo.svc.cluster.local",
                    "DISABLE",
                    ""
                )
            ),
            "frontend",
            Some(TlsMode::Disable),
        ),
        // A rule exported only to its own namespace is invisible elsewhere.
        (
            dr(
                "bookinfo",
                "r",
                "reviews",
                "ISTIO_MUTUAL",
                "  exportTo:\n  - \".\"\n",
            ),
            "frontend",
            None,
        ),
        (
            dr(
                "bookinfo",
                "r",
                "reviews",
                "ISTIO_MUTUAL",
                "  exportTo:\n  - \".\"\n",
            ),
            "bookinfo",
            Some(TlsMode::IstioMutual),
        ),
        // Exact beats wildcard within a namespace.
        (
            format!(
                "{}{}",
                dr(
                    "bookinfo",
                    "wild",
                    "*.bookinfo.svc.cluster.local",
                    "DISABLE",
                    ""
                ),
                dr("bookinfo", "exact", "reviews", "MUTUAL", "")
            ),
            "bookinfo",
            Some(TlsMode::Mutual),
        ),
    ];
    for (i, (yaml, client_ns, want)) in cases.into_iter().enumerate() {
        let p = set(&yaml);
        let got = p
            .client_tls(client_ns, &client, &reviews, 9080)
            .map(|(m, _)| m);
        assert_eq!(got, want, "case {i}");
    }
}

#[test]
fn port_level_settings_win() {
    let yaml = "---\napiVersion: networking.istio.io/v1beta1\nkind: DestinationRule\nmetadata:\n  name: r\n  namespace: bookinfo\nspec:\n  host: reviews\n  trafficPolicy:\n    tls:\n      mode: ISTIO_MUTUAL\n    portLevelSettings:\n    - port:\n        number: 9443\n      tls:\n        mode: SIMPLE\n";
    let p = set(yaml);
    let s = svc("reviews", "bookinfo");
    assert_eq!(
        p.client_tls("bookinfo", &BTreeMap::new(), &s, 9443)
            .map(|x| x.0),
        Some(TlsMode::Simple)
    );
    let (mode, why) = p
        .client_tls("bookinfo", &BTreeMap::new(), &s, 80)
        .expect("rule");
    assert_eq!(mode, TlsMode::IstioMutual);
    assert_eq!(
        why,
        "DestinationRule bookinfo/r spec.trafficPolicy.tls.mode=ISTIO_MUTUAL (host reviews)"
    );
}

#[test]
fn expectations_combine_and_exemptions_win() {
    let yaml = format!(
        "{}{}---\napiVersion: mtls-auditor.io/v1alpha1\nkind: TransportPolicy\nmetadata:\n  name: node\nspec:\n  rules:\n  - name: leaving\n    require: tls\n    match:\n      destinationCidrs: [\"192.0.2.0/24\"]\n  exemptions:\n  - name: probes\n    match:\n      ports: [15021]\n    reason: kubelet health probes\n  - name: scrapes\n    match:\n      portNames: [metrics]\n    reason: Prometheus scrapes\n",
        pa(
            "default",
            "ns",
            None,
            "PERMISSIVE",
            &[],
            "2020-01-01T00:00:00Z"
        ),
        pa(
            "default",
            "a",
            Some("a"),
            "STRICT",
            &[],
            "2020-01-01T00:00:00Z"
        ),
    );
    let p = set(&yaml);
    let a = Workload {
        name: "a".into(),
        namespace: "default".into(),
        labels: labels(&[("app", "a")]),
        pod: None,
        canonical_service: None,
        container: None,
        port_names: [(9090, "metrics".to_owned())].into(),
        sidecar: false,
        linkerd: None,
        service_account: None,
    };
    let c = Workload {
        name: "c".into(),
        namespace: "default".into(),
        labels: labels(&[("app", "c")]),
        pod: None,
        canonical_service: None,
        container: None,
        port_names: BTreeMap::new(),
        sidecar: false,
        linkerd: None,
        service_account: None,
    };
    let ip = |s: &str| s.parse::<IpAddr>().unwrap();
    let q = |dst: &'static Workload, addr: &str, port| Query {
        source: None,
        destination: Some(dst.clone()),
        source_addr: ip("10.0.0.9"),
        destination_addr: ip(addr),
        port,
        services: vec![],
        client_process: None,
        server_process: None,
        direction: Direction::Local,
        client_has_proxy: None,
    };
    let a: &'static Workload = Box::leak(Box::new(a));
    let c: &'static Workload = Box::leak(Box::new(c));
    let e = p.expect(&q(a, "10.0.0.1", 80));
    assert_eq!(e.expected, Requirement::MutualTls);
    assert!(
        e.reason.contains("default/a spec.mtls.mode=STRICT"),
        "{}",
        e.reason
    );
    let e = p.expect(&q(c, "10.0.0.2", 80));
    assert_eq!(e.expected, Requirement::None);
    assert!(e.permissive);
    let e = p.expect(&q(c, "192.0.2.7", 443));
    assert_eq!(e.expected, Requirement::Tls);
    assert!(
        e.reason
            .starts_with("TransportPolicy default/node spec.rules[leaving]"),
        "{}",
        e.reason
    );
    let e = p.expect(&q(a, "10.0.0.1", 15021));
    assert_eq!(e.exempt.as_deref(), Some("probes"));
    // By port name: a's port 9090 is named `metrics`; c names none.
    let e = p.expect(&q(a, "10.0.0.1", 9090));
    assert_eq!(e.exempt.as_deref(), Some("scrapes"));
    let e = p.expect(&q(c, "10.0.0.2", 9090));
    assert_eq!(e.exempt, None);
}

fn wl(ns: &str, name: &str, pairs: &[(&str, &str)], sidecar: bool) -> Workload {
    Workload {
        name: name.into(),
        namespace: ns.into(),
        labels: labels(pairs),
        pod: None,
        canonical_service: None,
        container: None,
        port_names: BTreeMap::new(),
        sidecar,
        linkerd: None,
        service_account: None,
    }
}

fn query<'a>(src: &Workload, dst: &Workload, svc: &Service, port: u16) -> Query<'a> {
    let ip = |s: &str| s.parse::<IpAddr>().expect("ip");
    Query {
        source: Some(src.clone()),
        destination: Some(dst.clone()),
        source_addr: ip("10.1.0.1"),
        destination_addr: ip("10.1.0.2"),
        port,
        services: vec![svc.clone()],
        client_process: None,
        server_process: None,
        direction: Direction::Local,
        client_has_proxy: None,
    }
}

fn client_mode(
    p: &PolicySet,
    client: &Workload,
    svc: &Service,
    dst: Option<&Workload>,
    port: u16,
) -> Option<TlsMode> {
    let proxy = if client.sidecar {
        ClientProxy::Sidecar
    } else {
        ClientProxy::None
    };
    p.client_side(Some(client), proxy, svc, dst, port).mode
}

/// The client-side differences issue 14 found, one by one.
#[test]
fn client_side_follows_istio() {
    let reviews = svc("reviews", "bookinfo");
    let client = wl("bookinfo", "productpage", &[("app", "productpage")], true);
    let plain = wl("bookinfo", "productpage", &[("app", "productpage")], false);
    // credentialName on a sidecar: no TLS at all (gateways only), unless the rule
    // has a workload selector; a client without a sidecar keeps the intent.
    let cred = "---\napiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata:\n  name: r\n  namespace: bookinfo\nspec:\n  host: reviews\n  trafficPolicy:\n    tls:\n      mode: SIMPLE\n      credentialName: reviews-ca\n";
    let p = set(cred);
    assert_eq!(client_mode(&p, &client, &reviews, None, 9080), None);
    assert_eq!(
        client_mode(&p, &plain, &reviews, None, 9080),
        Some(TlsMode::Simple)
    );
    assert_eq!(
        p.client_side(Some(&client), ClientProxy::Gateway, &reviews, None, 9080)
            .mode,
        Some(TlsMode::Simple)
    );
    let with_sel = cred.replace(
        "  host: reviews\n",
        "  host: reviews\n  workloadSelector:\n    matchLabels:\n      app: productpage\n",
    );
    assert_eq!(
        client_mode(&set(&with_sel), &client, &reviews, None, 9080),
        Some(TlsMode::Simple)
    );

    // Two rules for one host in one namespace merge: the older's traffic policy,
    // the newer fills it in when the older has none; ties go by name.
    let older = "---\napiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata:\n  name: b-older\n  namespace: bookinfo\n  creationTimestamp: \"2020-01-01T00:00:00Z\"\nspec:\n  host: reviews\n  subsets:\n  - name: v1\n    labels:\n      version: v1\n";
    let newer = "---\napiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata:\n  name: a-newer\n  namespace: bookinfo\n  creationTimestamp: \"2021-01-01T00:00:00Z\"\nspec:\n  host: reviews\n  trafficPolicy:\n    tls:\n      mode: ISTIO_MUTUAL\n";
    let p = set(&format!("{older}{newer}"));
    let r = p
        .destination_rule_for("bookinfo", &BTreeMap::new(), &reviews)
        .expect("merged");
    assert_eq!(r.name, "b-older");
    assert_eq!(r.from, ["bookinfo/b-older", "bookinfo/a-newer"]);
    assert_eq!(
        client_mode(&p, &plain, &reviews, None, 9080),
        Some(TlsMode::IstioMutual)
    );
    // Without timestamps the name decides: `a-newer` is first, and its policy wins.
    let p = set(&format!("{older}{newer}")
        .replace("  creationTimestamp: \"2020-01-01T00:00:00Z\"\n", "")
        .replace("  creationTimestamp: \"2021-01-01T00:00:00Z\"\n", ""));
    assert_eq!(
        p.destination_rule_for("bookinfo", &BTreeMap::new(), &reviews)
            .map(|r| r.name.as_str()),
        Some("a-newer")
    );

    // portLevelSettings replace the top level: nothing inherited.
    let port = "---\napiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata:\n  name: r\n  namespace: bookinfo\nspec:\n  host: reviews\n  trafficPolicy:\n    tls:\n      mode: ISTIO_MUTUAL\n    portLevelSettings:\n    - port:\n        number: 9080\n      connectionPool:\n        tcp:\n          maxConnections: 10\n";
    let p = set(port);
    assert_eq!(
        client_mode(&p, &plain, &reviews, None, 9080),
        None,
        "the port entry has no tls"
    );
    assert_eq!(
        client_mode(&p, &plain, &reviews, None, 9443),
        Some(TlsMode::IstioMutual)
    );

    // A selector rule without a traffic policy inherits the catch-all's TLS when
    // the catch-all is exported to its namespace (`.` among others; with
    // Istio's enhanced merge, rules only merge into ones whose `exportTo` theirs
    // covers, and a selector rule's is `.`).
    let catch_all = "---\napiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata:\n  name: all\n  namespace: bookinfo\nspec:\n  host: reviews\n  exportTo: [\".\", \"frontend\"]\n  trafficPolicy:\n    tls:\n      mode: ISTIO_MUTUAL\n";
    let selected = "---\napiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata:\n  name: pp\n  namespace: bookinfo\nspec:\n  host: reviews\n  workloadSelector:\n    matchLabels:\n      app: productpage\n  subsets:\n  - name: v2\n    labels:\n      version: v2\n";
    let p = set(&format!("{catch_all}{selected}"));
    let r = p
        .destination_rule_for("bookinfo", &plain.labels, &reviews)
        .expect("selected");
    assert_eq!(r.name, "pp");
    assert_eq!(r.from, ["bookinfo/pp", "bookinfo/all"]);
    assert_eq!(
        client_mode(&p, &plain, &reviews, None, 9080),
        Some(TlsMode::IstioMutual)
    );
    let other = wl("bookinfo", "ratings", &[("app", "ratings")], false);
    assert_eq!(
        p.destination_rule_for("bookinfo", &other.labels, &reviews)
            .map(|r| r.name.as_str()),
        Some("all")
    );
    // A catch-all exported everywhere (no exportTo) does not merge into it.
    let p = set(&format!(
        "{}{selected}",
        catch_all.replace("  exportTo: [\".\", \"frontend\"]\n", "")
    ));
    assert_eq!(client_mode(&p, &plain, &reviews, None, 9080), None);

    // Subsets by the destination's labels: the subset's policy applies.
    let sub = "---\napiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata:\n  name: r\n  namespace: bookinfo\nspec:\n  host: reviews\n  trafficPolicy:\n    tls:\n      mode: ISTIO_MUTUAL\n  subsets:\n  - name: legacy\n    labels:\n      version: v0\n    trafficPolicy:\n      tls:\n        mode: DISABLE\n";
    let p = set(sub);
    let v0 = wl(
        "bookinfo",
        "reviews-v0",
        &[("app", "reviews"), ("version", "v0")],
        false,
    );
    let v1 = wl(
        "bookinfo",
        "reviews-v1",
        &[("app", "reviews"), ("version", "v1")],
        false,
    );
    assert_eq!(client_mode(&p, &plain, &reviews, Some(&v0), 9080), None);
    assert_eq!(
        client_mode(&p, &plain, &reviews, Some(&v1), 9080),
        Some(TlsMode::IstioMutual)
    );
}

/// A client in the root namespace reads the root namespace's private rules
/// first, and prefers the service namespace's exported rule to a public root one.
#[test]
fn root_namespace_clients() {
    let reviews = svc("reviews", "bookinfo");
    let mk = |ns: &str, name: &str, mode: &str, export: &str| {
        format!(
            "---\napiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata:\n  name: {name}\n  namespace: {ns}\nspec:\n  host: reviews.bookinfo.svc.cluster.local\n{export}  trafficPolicy:\n    tls:\n      mode: {mode}\n"
        )
    };
    let private_root = mk(
        "istio-system",
        "root-private",
        "DISABLE",
        "  exportTo: [\".\"]\n",
    );
    let public_root = mk("istio-system", "root-public", "SIMPLE", "");
    let service_ns = mk("bookinfo", "svc", "ISTIO_MUTUAL", "");
    let p = set(&format!("{public_root}{service_ns}"));
    let gw = wl("istio-system", "ingress", &[], false);
    assert_eq!(
        client_mode(&p, &gw, &reviews, None, 80),
        Some(TlsMode::IstioMutual)
    );
    let p = set(&format!("{public_root}{service_ns}{private_root}"));
    assert_eq!(
        client_mode(&p, &gw, &reviews, None, 80),
        None,
        "root's private DISABLE"
    );
    let other = wl("frontend", "web", &[], false);
    assert_eq!(
        client_mode(&p, &other, &reviews, None, 80),
        Some(TlsMode::IstioMutual)
    );
}

/// Auto-mTLS: a sidecar client with no TLS setting sends mutual TLS to a
/// sidecar destination that is not DISABLE, so plaintext into a PERMISSIVE
/// server from it is a client-side finding; off with the mesh config.
#[test]
fn auto_mtls_and_what_permissive_means() {
    let reviews = svc("reviews", "bookinfo");
    let ns_permissive = pa(
        "bookinfo",
        "default",
        None,
        "PERMISSIVE",
        &[],
        "2020-01-01T00:00:00Z",
    );
    let p = set(&ns_permissive);
    let client = wl("bookinfo", "productpage", &[("app", "productpage")], true);
    let plain_client = wl("bookinfo", "productpage", &[("app", "productpage")], false);
    let dst = wl("bookinfo", "reviews", &[("app", "reviews")], true);
    let e = p.expect(&query(&client, &dst, &reviews, 9080));
    assert_eq!(e.expected, Requirement::MutualTls);
    assert!(e.permissive);
    let why = e.auto_mtls.as_deref().expect("auto-mTLS");
    assert!(
        why.starts_with("auto-mTLS: client bookinfo/productpage has a sidecar"),
        "{why}"
    );
    assert_eq!(e.reason, why);
    // The client without a sidecar: plaintext is the PERMISSIVE finding.
    let e = p.expect(&query(&plain_client, &dst, &reviews, 9080));
    assert_eq!(
        (e.expected, e.permissive, e.auto_mtls.is_some()),
        (Requirement::None, true, false)
    );
    // No sidecar at the destination, or DISABLE there: no auto-mTLS.
    let bare = wl("bookinfo", "reviews", &[("app", "reviews")], false);
    assert_eq!(
        p.expect(&query(&client, &bare, &reviews, 9080)).expected,
        Requirement::None
    );
    let disabled = format!(
        "{ns_permissive}{}",
        pa(
            "bookinfo",
            "reviews",
            Some("reviews"),
            "DISABLE",
            &[],
            "2020-01-01T00:00:00Z"
        )
    );
    assert_eq!(
        set(&disabled)
            .expect(&query(&client, &dst, &reviews, 9080))
            .expected,
        Requirement::None
    );
    // meshConfig.enableAutoMtls: false.
    let off = format!(
        "{ns_permissive}---\napiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: istio\n  namespace: istio-system\ndata:\n  mesh: |-\n    enableAutoMtls: false\n    trustDomain: cluster.local\n"
    );
    let p = set(&off);
    assert!(!p.auto_mtls);
    assert_eq!(
        p.expect(&query(&client, &dst, &reviews, 9080)).expected,
        Requirement::None
    );
    // A mesh-external ServiceEntry: no auto-mTLS either.
    let ext = Service {
        mesh_external: true,
        ..svc("api", "bookinfo")
    };
    assert_eq!(
        set(&ns_permissive)
            .expect(&query(&client, &dst, &ext, 443))
            .expected,
        Requirement::None
    );
}

#[test]
fn exemptions_must_say_what_they_exempt() {
    let doc = |ex: &str| {
        format!(
            "apiVersion: mtls-auditor.io/v1alpha1\nkind: TransportPolicy\nmetadata:\n  name: t\nspec:\n  exemptions:\n  - name: e\n{ex}"
        )
    };
    let errors = |ex: &str| {
        let (_, diags) = load::load_str(Path::new("t.yaml"), &doc(ex));
        diags
            .into_iter()
            .filter(|d| d.severity == Severity::Error)
            .map(|d| d.to_string())
            .collect::<Vec<_>>()
    };
    assert_eq!(
        errors("    reason: forgot the match\n"),
        [
            "t.yaml:7:5: error: spec.exemptions[0] (e): no `match` (or an empty one) would exempt every connection; give a `match`, or `all: true` to exempt everything on purpose"
        ]
    );
    assert_eq!(errors("    match: {}\n").len(), 1);
    assert!(errors("    all: true\n").is_empty());
    assert_eq!(
        errors("    all: true\n    match:\n      ports: [80]\n").len(),
        1
    );
    let p = set(&doc("    all: true\n"));
    let a = wl("default", "a", &[], false);
    let e = p.expect(&query(&a, &a, &svc("a", "default"), 80));
    assert_eq!(e.exempt.as_deref(), Some("e"));
}

#[test]
fn control_characters_are_escaped_for_people() {
    assert_eq!(printable("web"), "web");
    assert_eq!(printable("a\nb\u{1b}[2J"), "a\\nb\\u{1b}[2J");
}
