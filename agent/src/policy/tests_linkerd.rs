//! Unit tests of Linkerd's inbound policy, rule by rule, with the outcome
//! Linkerd's documentation and policy controller give for each case.

use std::{collections::BTreeMap, net::IpAddr, path::Path};

use super::{
    linkerd::{Admission, IdentityMatch, LinkerdDecision},
    model::{Direction, Requirement},
    *,
};
use crate::inventory::{LinkerdProxy, Workload};

fn set(yaml: &str) -> PolicySet {
    let mut files = PolicyFiles::default();
    let mut diags = Vec::new();
    load::load_text(Path::new("linkerd.yaml"), yaml, &mut files, &mut diags);
    assert!(
        diags.iter().all(|d| d.severity == Severity::Warning),
        "{diags:?}"
    );
    PolicySet::new(files, "istio-system")
}

fn ip(s: &str) -> IpAddr {
    s.parse().expect("ip")
}

/// A meshed workload `app=NAME` in `ns`, service account NAME, container port
/// 8080 named `http`, with the given default-inbound-policy annotation.
fn meshed(ns: &str, name: &str, annotation: Option<&str>) -> Workload {
    Workload {
        name: name.into(),
        namespace: ns.into(),
        labels: BTreeMap::from([("app".to_owned(), name.to_owned())]),
        port_names: BTreeMap::from([(8080, "http".to_owned())]),
        linkerd: Some(LinkerdProxy {
            default_inbound_policy: annotation.map(str::to_owned),
            ..LinkerdProxy::default()
        }),
        service_account: Some(name.into()),
        ..Workload::default()
    }
}

fn decide(
    p: &PolicySet,
    dst: &Workload,
    port: u16,
    client: Option<&Workload>,
    addr: &str,
) -> LinkerdDecision {
    p.linkerd_decision(dst, port, client, Some(ip(addr)))
}

fn server(ns: &str, name: &str, app: &str, port: &str, access: Option<&str>) -> String {
    let mut s = format!(
        "---\napiVersion: policy.linkerd.io/v1beta3\nkind: Server\nmetadata:\n  name: {name}\n  namespace: {ns}\nspec:\n  podSelector:\n    matchLabels:\n      app: {app}\n  port: {port}\n"
    );
    if let Some(a) = access {
        s.push_str(&format!("  accessPolicy: {a}\n"));
    }
    s
}

fn policy(ns: &str, name: &str, target: &str, refs: &[&str]) -> String {
    let mut s = format!(
        "---\napiVersion: policy.linkerd.io/v1alpha1\nkind: AuthorizationPolicy\nmetadata:\n  name: {name}\n  namespace: {ns}\nspec:\n  targetRef:\n{target}\n  requiredAuthenticationRefs:"
    );
    if refs.is_empty() {
        s.push_str(" []\n");
    } else {
        s.push('\n');
        for r in refs {
            s.push_str(&format!("  - {r}\n"));
        }
    }
    s
}

const TO_SERVER_WEB: &str = "    group: policy.linkerd.io\n    kind: Server\n    name: web";
const MTLS_REF: &str = "{group: policy.linkerd.io, kind: MeshTLSAuthentication, name: clients}";
const NET_REF: &str = "{group: policy.linkerd.io, kind: NetworkAuthentication, name: office}";

/// The six default policies without a Server, from a client in the cluster's
/// networks and one outside them (Linkerd's `DefaultPolicy::default_authzs`:
/// `all-*` admit every network, `cluster-*` the cluster networks,
/// `*-authenticated` only with a mesh identity; `deny` nothing; `audit` all).
#[test]
fn default_policies_decide_without_a_server() {
    use Admission::*;
    let p = set("");
    for (policy, inside, outside) in [
        (
            "all-unauthenticated",
            Unauthenticated { audit: false },
            Unauthenticated { audit: false },
        ),
        ("all-authenticated", Authenticated, Authenticated),
        (
            "cluster-unauthenticated",
            Unauthenticated { audit: false },
            Deny,
        ),
        ("cluster-authenticated", Authenticated, Deny),
        ("deny", Deny, Deny),
        (
            "audit",
            Unauthenticated { audit: true },
            Unauthenticated { audit: true },
        ),
    ] {
        let dst = meshed("shop", "web", Some(policy));
        let d = decide(&p, &dst, 8080, None, "10.1.0.1");
        assert_eq!(d.admission, inside, "{policy} from 10.1.0.1: {}", d.reason);
        assert!(
            d.reason
                .contains(&format!("default-inbound-policy={policy}")),
            "{}",
            d.reason
        );
        let d = decide(&p, &dst, 8080, None, "203.0.113.9");
        assert_eq!(d.admission, outside, "{policy} from outside: {}", d.reason);
        // Loopback never reaches the proxy.
        let d = decide(&p, &dst, 8080, None, "127.0.0.1");
        assert_eq!(d.admission, Localhost, "{policy}");
    }
    // No annotation anywhere: Linkerd's default, all-unauthenticated.
    let d = decide(&p, &meshed("shop", "web", None), 8080, None, "203.0.113.9");
    assert_eq!(d.admission, Unauthenticated { audit: false });
    assert!(d.reason.contains("Linkerd's default"), "{}", d.reason);
}

/// Where the default comes from: the workload's annotation, else its
/// Namespace's, else the control plane's `proxy.defaultInboundPolicy`; an
/// unparsable annotation is ignored; `clusterNetworks` replaces the default
/// networks; the require-identity ports make the policy authenticated there.
#[test]
fn default_policy_sources_and_require_identity_ports() {
    let cfg = "---\napiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: linkerd-config\n  namespace: linkerd\ndata:\n  values: |\n    clusterNetworks: 10.213.0.0/16\n    proxy:\n      defaultInboundPolicy: cluster-unauthenticated\n";
    let ns = "---\napiVersion: v1\nkind: Namespace\nmetadata:\n  name: secure\n  annotations:\n    config.linkerd.io/default-inbound-policy: all-authenticated\n";
    let p = set(&format!("{cfg}{ns}"));
    let plain = meshed("shop", "web", None);
    // The cluster default with the configured networks: 10.1.0.1 is outside.
    assert_eq!(
        decide(&p, &plain, 8080, None, "10.1.0.1").admission,
        Admission::Deny
    );
    let d = decide(&p, &plain, 8080, None, "10.213.150.2");
    assert_eq!(d.admission, Admission::Unauthenticated { audit: false });
    assert!(
        d.reason
            .contains("proxy.defaultInboundPolicy in ConfigMap linkerd/linkerd-config"),
        "{}",
        d.reason
    );
    // The Namespace's annotation.
    let d = decide(
        &p,
        &meshed("secure", "db", None),
        5432,
        None,
        "10.213.150.2",
    );
    assert_eq!(d.admission, Admission::Authenticated);
    assert!(d.reason.contains("Namespace secure's"), "{}", d.reason);
    // The workload's annotation wins over both.
    let d = decide(
        &p,
        &meshed("secure", "db", Some("deny")),
        5432,
        None,
        "10.213.150.2",
    );
    assert_eq!(d.admission, Admission::Deny);
    // An unparsable one is ignored, and the message says so.
    let d = decide(
        &p,
        &meshed("secure", "db", Some("all_authenticated")),
        5432,
        None,
        "10.213.150.2",
    );
    assert_eq!(d.admission, Admission::Authenticated);
    assert!(d.reason.contains("Linkerd ignores it"), "{}", d.reason);

    let mut w = meshed("shop", "web", Some("all-unauthenticated"));
    if let Some(l) = w.linkerd.as_mut() {
        l.require_identity_ports = vec![(8080, 8080), (9000, 9010)];
    }
    for (port, want) in [
        (8080, Admission::Authenticated),
        (9005, Admission::Authenticated),
        (9011, Admission::Unauthenticated { audit: false }),
    ] {
        let d = decide(&p, &w, port, None, "10.213.150.2");
        assert_eq!(d.admission, want, "port {port}: {}", d.reason);
    }
    // `deny` stays deny on those ports.
    if let Some(l) = w.linkerd.as_mut() {
        l.default_inbound_policy = Some("deny".into());
    }
    assert_eq!(
        decide(&p, &w, 8080, None, "10.213.150.2").admission,
        Admission::Deny
    );
}

/// A Server takes the port from the default policy; without an authorization
/// its `accessPolicy` decides (v1beta3's default `deny`; versions before
/// v1beta3 have no field and deny); the port is a number or a container port
/// name; a Server whose selector does not match leaves the default.
#[test]
fn servers_select_pods_and_ports() {
    let web = meshed("shop", "web", Some("all-unauthenticated"));
    let cases = [
        (server("shop", "web", "web", "8080", None), Admission::Deny),
        (
            server("shop", "web", "web", "8080", Some("all-unauthenticated")),
            Admission::Unauthenticated { audit: false },
        ),
        (
            server("shop", "web", "web", "http", Some("cluster-authenticated")),
            Admission::Authenticated,
        ),
        (
            server("shop", "web", "web", "8080", Some("audit")),
            Admission::Unauthenticated { audit: true },
        ),
        (
            server("shop", "web", "web", "8080", None).replace("v1beta3", "v1beta1"),
            Admission::Deny,
        ),
        // Another app, another namespace, another port: the default decides.
        (
            server("shop", "web", "api", "8080", None),
            Admission::Unauthenticated { audit: false },
        ),
        (
            server("other", "web", "web", "8080", None),
            Admission::Unauthenticated { audit: false },
        ),
        (
            server("shop", "web", "web", "9090", None),
            Admission::Unauthenticated { audit: false },
        ),
        (
            server("shop", "web", "web", "grpc", None),
            Admission::Unauthenticated { audit: false },
        ),
    ];
    for (yaml, want) in cases {
        let p = set(&yaml);
        let d = decide(&p, &web, 8080, None, "10.1.0.1");
        assert_eq!(d.admission, want, "{yaml}\n{}", d.reason);
    }
    let p = set(&server("shop", "web", "web", "8080", None));
    let d = decide(&p, &web, 8080, None, "10.1.0.1");
    assert!(
        d.http,
        "a detected port may be HTTP: a refusal may be a 403"
    );
    let opaque = server("shop", "web", "web", "8080", None) + "  proxyProtocol: opaque\n";
    assert!(!decide(&set(&opaque), &web, 8080, None, "10.1.0.1").http);
    assert!(
        d.reason.contains(
            "Server shop/web (port 8080; Server shop/web spec.accessPolicy=deny): no authorization"
        ),
        "{}",
        d.reason
    );
}

/// Two Servers for the same pods and port: the oldest decides, then the name.
#[test]
fn the_oldest_server_wins() {
    let with_time = |s: String, t: &str| {
        s.replace(
            "  namespace: shop\n",
            &format!("  namespace: shop\n  creationTimestamp: \"{t}\"\n"),
        )
    };
    let old = with_time(
        server("shop", "b-old", "web", "8080", Some("all-authenticated")),
        "2024-01-01T00:00:00Z",
    );
    let new = with_time(
        server("shop", "a-new", "web", "8080", Some("all-unauthenticated")),
        "2025-01-01T00:00:00Z",
    );
    let p = set(&format!("{new}{old}"));
    let d = decide(&p, &meshed("shop", "web", None), 8080, None, "10.1.0.1");
    assert_eq!(d.admission, Admission::Authenticated, "{}", d.reason);
    assert!(d.reason.contains("Server shop/b-old"), "{}", d.reason);
}

/// AuthorizationPolicies on a Server: a MeshTLSAuthentication admits the listed
/// identities with mutual TLS only (another meshed identity is refused, an
/// unknown client must use mutual TLS); a NetworkAuthentication alone admits
/// plaintext from its networks (minus `except`); both together need both.
#[test]
fn authorization_policies_admit_by_identity_and_network() {
    let mtls = "---\napiVersion: policy.linkerd.io/v1alpha1\nkind: MeshTLSAuthentication\nmetadata:\n  name: clients\n  namespace: shop\nspec:\n  identities:\n  - \"cart.shop.serviceaccount.identity.linkerd.cluster.local\"\n";
    let net = "---\napiVersion: policy.linkerd.io/v1alpha1\nkind: NetworkAuthentication\nmetadata:\n  name: office\n  namespace: shop\nspec:\n  networks:\n  - cidr: 10.213.150.0/24\n    except: [10.213.150.128/25]\n";
    let srv = server("shop", "web", "web", "8080", None);
    let web = meshed("shop", "web", None);
    let cart = meshed("shop", "cart", None);
    let ads = meshed("shop", "ads", None);

    let p = set(&format!(
        "{srv}{mtls}{}",
        policy("shop", "p", TO_SERVER_WEB, &[MTLS_REF])
    ));
    let d = decide(&p, &web, 8080, Some(&cart), "10.1.0.1");
    assert_eq!(d.admission, Admission::Authenticated, "{}", d.reason);
    assert!(
        d.reason.contains(
            "AuthorizationPolicy shop/p requiredAuthenticationRefs=[MeshTLSAuthentication shop/clients] admits identity cart.shop.serviceaccount.identity.linkerd.cluster.local"
        ),
        "{}",
        d.reason
    );
    let d = decide(&p, &web, 8080, Some(&ads), "10.1.0.1");
    assert_eq!(d.admission, Admission::Deny, "{}", d.reason);
    assert!(
        d.reason
            .contains("client identity ads.shop.serviceaccount.identity.linkerd.cluster.local matches no authorization"),
        "{}",
        d.reason
    );
    let d = decide(&p, &web, 8080, None, "10.1.0.1");
    assert_eq!(d.admission, Admission::Authenticated, "{}", d.reason);

    let p = set(&format!(
        "{srv}{net}{}",
        policy("shop", "p", TO_SERVER_WEB, &[NET_REF])
    ));
    for (addr, want) in [
        ("10.213.150.7", Admission::Unauthenticated { audit: false }),
        ("10.213.150.200", Admission::Deny),
        ("10.213.151.7", Admission::Deny),
    ] {
        let d = decide(&p, &web, 8080, None, addr);
        assert_eq!(d.admission, want, "{addr}: {}", d.reason);
    }

    let p = set(&format!(
        "{srv}{mtls}{net}{}",
        policy("shop", "p", TO_SERVER_WEB, &[MTLS_REF, NET_REF])
    ));
    assert_eq!(
        decide(&p, &web, 8080, Some(&cart), "10.213.150.7").admission,
        Admission::Authenticated
    );
    assert_eq!(
        decide(&p, &web, 8080, Some(&cart), "10.213.151.7").admission,
        Admission::Deny
    );
    // The ServiceAccount kind is an identity too.
    let p = set(&format!(
        "{srv}{}",
        policy(
            "shop",
            "p",
            TO_SERVER_WEB,
            &["{kind: ServiceAccount, name: cart}"]
        )
    ));
    assert_eq!(
        decide(&p, &web, 8080, Some(&cart), "10.1.0.1").admission,
        Admission::Authenticated
    );
    assert_eq!(
        decide(&p, &web, 8080, Some(&ads), "10.1.0.1").admission,
        Admission::Deny
    );
}

/// Targets: a Namespace target covers every Server of the namespace; an
/// HTTPRoute target is per request and not used; a policy whose
/// MeshTLSAuthentication does not exist is ignored (as Linkerd ignores it); a
/// Server's accessPolicy still adds its default authorization.
#[test]
fn targets_and_unresolved_references() {
    let srv = server("shop", "web", "web", "8080", None);
    let web = meshed("shop", "web", None);
    let cart = meshed("shop", "cart", None);
    let ns_target = "    kind: Namespace\n    name: shop";
    let route = "    group: policy.linkerd.io\n    kind: HTTPRoute\n    name: web-get";
    let sa = "{kind: ServiceAccount, name: cart}";
    let p = set(&format!("{srv}{}", policy("shop", "p", ns_target, &[sa])));
    assert_eq!(
        decide(&p, &web, 8080, Some(&cart), "10.1.0.1").admission,
        Admission::Authenticated
    );
    let p = set(&format!("{srv}{}", policy("shop", "p", route, &[sa])));
    let d = decide(&p, &web, 8080, Some(&cart), "10.1.0.1");
    assert_eq!(d.admission, Admission::Deny);
    assert!(
        d.reason.contains("per-route AuthorizationPolicies are not interpreted and may admit requests: AuthorizationPolicy shop/p (targetRef HTTPRoute web-get)"),
        "{}",
        d.reason
    );
    let p = set(&format!(
        "{srv}{}",
        policy("shop", "p", TO_SERVER_WEB, &[MTLS_REF])
    ));
    let d = decide(&p, &web, 8080, Some(&cart), "10.1.0.1");
    assert_eq!(d.admission, Admission::Deny, "{}", d.reason);
    assert!(
        d.policies.iter().any(|s| s.contains(
            "AuthorizationPolicy shop/p (ignored: could not find MeshTLSAuthentication clients in namespace shop)"
        )),
        "{:?}",
        d.policies
    );
    // accessPolicy audit with an identity policy: plaintext is admitted (audited).
    let audit = server("shop", "web", "web", "8080", Some("audit"));
    let p = set(&format!(
        "{audit}{}",
        policy("shop", "p", TO_SERVER_WEB, &[sa])
    ));
    assert_eq!(
        decide(&p, &web, 8080, None, "10.1.0.1").admission,
        Admission::Unauthenticated { audit: true }
    );
}

/// Identity patterns: `*` is every identity, `*.suffix` those ending in
/// `.suffix`, else exact; `identityRefs` of kind Namespace mean every service
/// account of that namespace.
#[test]
fn identity_patterns_match_as_linkerd_matches_them() {
    let m = IdentityMatch::parse;
    let id = "web.shop.serviceaccount.identity.linkerd.cluster.local";
    assert!(m("*").matches(id));
    assert!(m("*.shop.serviceaccount.identity.linkerd.cluster.local").matches(id));
    assert!(m("*.cluster.local").matches(id));
    assert!(!m("*.web.shop.serviceaccount.identity.linkerd.cluster.local").matches(id));
    assert!(!m("*.op.serviceaccount.identity.linkerd.cluster.local").matches(id));
    assert!(m(id).matches(id));
    assert!(!m("shop.serviceaccount.identity.linkerd.cluster.local").matches(id));

    let mtls = "---\napiVersion: policy.linkerd.io/v1alpha1\nkind: MeshTLSAuthentication\nmetadata:\n  name: clients\n  namespace: shop\nspec:\n  identityRefs:\n  - kind: Namespace\n    name: front\n";
    let srv = server("shop", "web", "web", "8080", None);
    let p = set(&format!(
        "{srv}{mtls}{}",
        policy("shop", "p", TO_SERVER_WEB, &[MTLS_REF])
    ));
    let web = meshed("shop", "web", None);
    assert_eq!(
        decide(
            &p,
            &web,
            8080,
            Some(&meshed("front", "ui", None)),
            "10.1.0.1"
        )
        .admission,
        Admission::Authenticated
    );
    assert_eq!(
        decide(
            &p,
            &web,
            8080,
            Some(&meshed("shop", "ui", None)),
            "10.1.0.1"
        )
        .admission,
        Admission::Deny
    );
}

fn q(src: Option<&Workload>, dst: &Workload, port: u16) -> Query<'static> {
    Query {
        source: src.cloned(),
        destination: Some(dst.clone()),
        source_addr: ip("10.1.0.1"),
        destination_addr: ip("10.1.0.2"),
        port,
        services: Vec::new(),
        client_process: None,
        server_process: None,
        direction: Direction::Local,
        client_has_proxy: None,
    }
}

/// What `expect` makes of Linkerd's decision: unauthenticated admission is a
/// permissive `none` (Istio's default is not listed for a Linkerd-only
/// workload); two meshed pods need mutual TLS (Linkerd's proxies speak it to
/// each other); `deny` sets `deny`; an explicit STRICT PeerAuthentication
/// still counts, the strictest wins.
#[test]
fn expectations_from_linkerd() {
    let p = set("");
    let web = meshed("shop", "web", None);
    let e = p.expect(&q(None, &web, 8080));
    assert_eq!(e.expected, Requirement::None);
    assert!(e.permissive && e.deny.is_none() && e.auto_mtls.is_none());
    assert!(
        e.reason
            .contains("default-inbound-policy=all-unauthenticated"),
        "{}",
        e.reason
    );
    assert!(
        !e.policies.iter().any(|s| s.contains("Istio default")),
        "{:?}",
        e.policies
    );

    let cart = meshed("shop", "cart", None);
    let e = p.expect(&q(Some(&cart), &web, 8080));
    assert_eq!(e.expected, Requirement::MutualTls);
    assert!(
        e.auto_mtls
            .as_deref()
            .is_some_and(|s| s.starts_with("Linkerd: client shop/cart and destination shop/web")),
        "{e:?}"
    );
    // A client known to have no proxy (the data path says so) is not meshed.
    let mut query = q(Some(&cart), &web, 8080);
    query.client_has_proxy = Some(false);
    assert_eq!(p.expect(&query).expected, Requirement::None);

    let e = p.expect(&q(
        None,
        &meshed("shop", "web", Some("all-authenticated")),
        8080,
    ));
    assert_eq!(e.expected, Requirement::MutualTls);
    assert!(e.deny.is_none());

    let e = p.expect(&q(Some(&cart), &meshed("shop", "web", Some("deny")), 8080));
    assert_eq!(e.expected, Requirement::MutualTls);
    assert!(e.auto_mtls.is_none());
    assert!(e.deny_http, "a default policy's port is detected");
    assert!(
        e.deny
            .as_deref()
            .is_some_and(|s| s.contains("default-inbound-policy=deny")),
        "{e:?}"
    );

    let strict = "apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata:\n  name: default\n  namespace: shop\nspec:\n  mtls:\n    mode: STRICT\n";
    let p = set(strict);
    let e = p.expect(&q(None, &web, 8080));
    assert_eq!(e.expected, Requirement::MutualTls);
    assert!(e.reason.contains("STRICT"), "{}", e.reason);

    // A workload without a Linkerd proxy: Linkerd's objects do not apply.
    let p = set(&server("shop", "web", "web", "8080", None));
    let mut plain = web.clone();
    plain.linkerd = None;
    let e = p.expect(&q(None, &plain, 8080));
    assert!(e.deny.is_none(), "{e:?}");
}

/// Linkerd's objects from the Kubernetes API get the checks a file's get: the
/// finding names the object and the field; an object with errors is refused,
/// warnings come with the object.
#[test]
fn objects_from_the_api_server_are_checked_like_files() {
    use super::{
        load::cluster_object,
        model::{AuthorizationPolicy, Server},
    };
    let bad = serde_json::json!({
        "apiVersion": "policy.linkerd.io/v1alpha1",
        "kind": "AuthorizationPolicy",
        "metadata": {"name": "to-deployment", "namespace": "shop", "resourceVersion": "7",
                     "managedFields": [{"manager": "kubectl", "operation": "Apply"}]},
        "spec": {
            "targetRef": {"group": "apps", "kind": "Deployment", "name": "cart"},
            "requiredAuthenticationRefs": [{"group": "policy.linkerd.io", "kind": "MeshTLSAuthentication", "name": "clients"}]
        }
    });
    let errors = cluster_object::<AuthorizationPolicy>("AuthorizationPolicy", &bad)
        .expect_err("an unsupported target");
    let text = errors[0].to_string();
    assert!(
        text.starts_with("kubernetes:AuthorizationPolicy/shop/to-deployment:")
            && text.contains("error: spec.targetRef: unsupported authorization target type"),
        "{text}"
    );
    assert!(errors[0].line > 0, "{text}");
    let wrong_type = serde_json::json!({
        "apiVersion": "policy.linkerd.io/v1beta3",
        "kind": "Server",
        "metadata": {"name": "web", "namespace": "shop"},
        "spec": {"podSelector": {"matchLabels": {"app": "web"}}, "port": [8080]}
    });
    let errors = cluster_object::<Server>("Server", &wrong_type).expect_err("a list as port");
    let text = errors[0].to_string();
    assert!(
        text.starts_with("kubernetes:Server/shop/web:") && text.contains("spec.port"),
        "{text}"
    );
    let good = serde_json::json!({
        "apiVersion": "policy.linkerd.io/v1beta3",
        "kind": "Server",
        "metadata": {"name": "web", "namespace": "shop"},
        "spec": {"podSelector": {"matchLabels": {"app": "web"}}, "port": 8080, "proxyProtocol": "HTTP/1"}
    });
    let (s, warnings) = cluster_object::<Server>("Server", &good).expect("valid");
    assert_eq!(s.spec.port.number(), Some(8080));
    assert!(warnings.is_empty(), "{warnings:?}");
}
