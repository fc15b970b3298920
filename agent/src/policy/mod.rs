//! Policy: what each connection should be. Istio `PeerAuthentication` and
//! `DestinationRule`, this project's `TransportPolicy` (CIDRs, ports, workloads,
//! processes, exemptions) and `Inventory` (standalone workloads and services).

pub mod load;
pub mod model;
pub mod resolve;
pub mod validate;
#[cfg(feature = "agent")]
pub mod watch;

pub use load::{Diagnostic, Located, PolicyFiles, Severity, load};
pub use resolve::{Expectation, PolicySet, Query, rank};
pub use validate::parse_net;

#[cfg(test)]
mod tests {
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
            "---\napiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata:\n  name: {name}\n  namespace: {ns}\nspec:\n  host: \"{host}\"\n{extra}  trafficPolicy:\n    tls:\n      mode: {mode}\n"
        )
    }

    fn svc(name: &str, ns: &str) -> Service {
        Service {
            name: name.into(),
            namespace: ns.into(),
            fqdn: format!("{name}.{ns}.svc.cluster.local"),
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
        };
        let c = Workload {
            name: "c".into(),
            namespace: "default".into(),
            labels: labels(&[("app", "c")]),
            pod: None,
            canonical_service: None,
            container: None,
            port_names: BTreeMap::new(),
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
}
