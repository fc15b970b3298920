//! Unit tests of Linkerd's policy kinds.

use super::*;

fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

fn expr(key: &str, op: SelectorOperator, values: Option<&[&str]>) -> LabelExpression {
    LabelExpression {
        key: key.into(),
        operator: op,
        values: values.map(|v| v.iter().map(|s| (*s).to_owned()).collect()),
    }
}

/// Linkerd's `labels.rs` `test_matches` cases.
#[test]
fn selectors_match_as_linkerd_matches_them() {
    use SelectorOperator::*;
    let both = labels(&[("foo", "bar"), ("bah", "baz")]);
    let sel = |l: &[(&str, &str)], e: Vec<LabelExpression>| LabelSelector {
        match_labels: Some(labels(l)),
        match_expressions: Some(e),
    };
    let cases = [
        (LabelSelector::default(), BTreeMap::new(), true, "empty"),
        (
            sel(&[("foo", "bar")], vec![]),
            labels(&[("foo", "bar")]),
            true,
            "exact",
        ),
        (
            sel(&[("foo", "bar")], vec![]),
            both.clone(),
            true,
            "sufficient",
        ),
        (
            sel(&[], vec![expr("foo", In, Some(&["bar"]))]),
            both.clone(),
            true,
            "In",
        ),
        (
            sel(&[], vec![expr("foo", NotIn, Some(&["quux"]))]),
            both.clone(),
            true,
            "NotIn",
        ),
        (
            sel(&[], vec![expr("foo", NotIn, Some(&["bar"]))]),
            both.clone(),
            false,
            "NotIn miss",
        ),
        (
            sel(&[("foo", "bar")], vec![expr("bah", In, Some(&["bar"]))]),
            both.clone(),
            false,
            "labels but not expressions",
        ),
        (
            sel(&[("foo", "bar")], vec![expr("bah", In, Some(&["bar"]))]),
            labels(&[("foo", "bar"), ("bah", "bar")]),
            true,
            "both",
        ),
        (
            sel(&[], vec![expr("foo", Exists, None)]),
            both.clone(),
            true,
            "Exists",
        ),
        (
            sel(&[], vec![expr("zz", DoesNotExist, None)]),
            both.clone(),
            true,
            "DoesNotExist",
        ),
        (
            sel(&[], vec![expr("foo", Exists, Some(&["bar"]))]),
            both.clone(),
            false,
            "illegal",
        ),
        (
            sel(&[], vec![expr("foo", In, None)]),
            both,
            false,
            "illegal In",
        ),
    ];
    for (s, l, want, what) in cases {
        assert_eq!(s.matches(&l), want, "{what}");
    }
}

#[test]
fn targets_follow_linkerds_group_rules() {
    let t = |g: Option<&str>, k: &str| LocalTargetRef {
        group: g.map(str::to_owned),
        kind: k.into(),
        name: "x".into(),
    };
    assert_eq!(
        t(Some("policy.linkerd.io"), "Server").target(),
        Some(AuthzTarget::Server("x".into()))
    );
    assert_eq!(
        t(Some("POLICY.linkerd.io"), "server").target(),
        Some(AuthzTarget::Server("x".into())),
        "case-insensitive"
    );
    assert_eq!(
        t(None, "Server").target(),
        None,
        "Server is not a core kind"
    );
    assert_eq!(
        t(None, "Namespace").target(),
        Some(AuthzTarget::Namespace("x".into()))
    );
    assert_eq!(
        t(Some("core"), "Namespace").target(),
        Some(AuthzTarget::Namespace("x".into()))
    );
    assert_eq!(
        t(Some("gateway.networking.k8s.io"), "HTTPRoute").target(),
        Some(AuthzTarget::HttpRoute("x".into()))
    );
    assert_eq!(
        t(Some("gateway.networking.k8s.io"), "GRPCRoute").target(),
        Some(AuthzTarget::GrpcRoute("x".into()))
    );
    assert_eq!(t(Some("policy.linkerd.io"), "GRPCRoute").target(), None);
    let r = |g: Option<&str>, k: &str| NamespacedTargetRef {
        group: g.map(str::to_owned),
        kind: k.into(),
        name: Some("x".into()),
        namespace: None,
    };
    assert_eq!(
        r(None, "ServiceAccount").authn_kind(),
        Some(AuthnKind::ServiceAccount)
    );
    assert_eq!(
        r(Some("policy.linkerd.io"), "MeshTLSAuthentication").authn_kind(),
        Some(AuthnKind::MeshTls)
    );
    assert_eq!(r(None, "MeshTLSAuthentication").authn_kind(), None);
}

#[test]
fn policies_and_port_lists_parse_as_linkerd_parses_them() {
    for v in InboundPolicy::VARIANTS {
        assert_eq!(InboundPolicy::parse(v).map(InboundPolicy::as_str), Some(*v));
    }
    assert_eq!(InboundPolicy::parse("all_authenticated"), None);
    assert_eq!(InboundPolicy::parse("Deny"), None);
    assert_eq!(
        InboundPolicy::AllUnauthenticated.with_identity_required(),
        InboundPolicy::AllAuthenticated
    );
    assert_eq!(
        InboundPolicy::Audit.with_identity_required(),
        InboundPolicy::Audit
    );
    assert_eq!(
        parse_port_ranges("8080, 9000-9010,").unwrap(),
        [(8080, 8080), (9000, 9010)]
    );
    assert!(parse_port_ranges("0").is_err());
    assert!(parse_port_ranges("90-80").is_err());
    assert!(parse_port_ranges("http").is_err());
}
