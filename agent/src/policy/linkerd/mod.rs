//! Linkerd's inbound policy: which clients a meshed workload's proxy admits on a
//! port, as Linkerd's policy controller computes it
//! (`policy-controller/k8s/index/src/inbound/index.rs`) and its proxy applies it.
//!
//! - The Server of the workload's namespace whose `podSelector` matches the
//!   workload and whose `port` is the port (a number, or the name of a
//!   container port) decides; when several do, the oldest (creationTimestamp,
//!   then name). Its authorizations are the AuthorizationPolicies of the
//!   namespace that target it (or the Namespace), plus what its `accessPolicy`
//!   allows.
//! - Without a Server, the workload's default policy decides: its
//!   `config.linkerd.io/default-inbound-policy`, else the cluster's
//!   `proxy.defaultInboundPolicy`; `config.linkerd.io/proxy-require-identity-inbound-ports`
//!   makes the `all-`/`cluster-` policies require identity on its ports.
//! - An authorization admits a client from one of its networks when it needs no
//!   identity, or when the client's mesh identity matches (`MeshTLSAuthentication`,
//!   `ServiceAccount`). An AuthorizationPolicy whose references do not resolve is
//!   ignored, as Linkerd ignores it.
//! - Loopback clients are never seen by the proxy (proxy-init does not redirect
//!   traffic on `lo`): always admitted.
//!
//! Everything is indexed once per load; a decision looks at the Servers and
//! policies of one namespace.

use std::net::IpAddr;

use foldhash::{HashMap, HashMapExt as _};
use ipnet::IpNet;

use super::{
    load::PolicyFiles,
    model::{AuthorizationPolicy, AuthzTarget, DEFAULT_CLUSTER_NETWORKS, InboundPolicy, Server},
    order::AgeKey,
    validate::parse_net,
};
use crate::inventory::Workload;

mod authz;

use authz::{Authz, default_authzs, meshtls_matches, network_matches, policy_authz};
pub use authz::{IdentityMatch, NetMatch};

/// What Linkerd's proxy does with a client's connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// A loopback client: the proxy never sees it.
    Localhost,
    /// An authorization that needs no identity admits it (plaintext accepted);
    /// `audit` when only the audit policy does.
    Unauthenticated { audit: bool },
    /// Admitted only with mutual TLS and a matching mesh identity.
    Authenticated,
    /// No authorization can admit this client: the proxy refuses it.
    Deny,
}

/// Linkerd's decision for a connection, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinkerdDecision {
    pub admission: Admission,
    /// A sentence naming the deciding object and field.
    pub reason: String,
    /// Every Linkerd object (or default) that had a say.
    pub policies: Vec<String>,
    /// The port's protocol may be HTTP (detected, or declared HTTP/1, HTTP/2,
    /// gRPC): Linkerd refuses a denied HTTP request with a 403 on an accepted
    /// connection, and refuses other traffic at the TCP level.
    pub http: bool,
}

/// What is known of the client.
#[derive(Debug, Clone, Copy)]
pub struct LinkerdClient<'a> {
    /// `None` when not known (`policy explain` without an address): networks
    /// are then not checked.
    pub addr: Option<IpAddr>,
    /// Its mesh identity, when it is known to run a Linkerd proxy.
    pub identity: Option<&'a str>,
}

/// The cluster-wide settings of the control plane (the `linkerd-config` values).
#[derive(Debug, Clone)]
pub struct LinkerdCluster {
    /// `proxy.defaultInboundPolicy`, and where it was read (`None`: not in the
    /// files, Linkerd's own default or the proxy's environment applies).
    pub default_policy: Option<(InboundPolicy, String)>,
    pub networks: Vec<IpNet>,
    pub trust_domain: String,
    pub control_plane_ns: String,
}

/// An AuthorizationPolicy (by index in the files) and the authorization it
/// grants, or why Linkerd ignores it.
type PolicyAuthz = (usize, Result<Authz, String>);

/// Linkerd's objects, indexed.
#[derive(Debug)]
pub struct LinkerdIndex {
    /// Per namespace, Linkerd's order: oldest first, then by name.
    servers: HashMap<String, Vec<usize>>,
    /// AuthorizationPolicies per namespace that target a Server or the
    /// Namespace, with the authorization each grants (`Err`: ignored, why).
    policies: HashMap<String, Vec<PolicyAuthz>>,
    /// Namespace default policies (from `Namespace` objects in the files).
    namespace_defaults: HashMap<String, InboundPolicy>,
    /// Per namespace, the AuthorizationPolicies that target an HTTPRoute or a
    /// GRPCRoute (not interpreted: they authorize requests).
    route_policies: HashMap<String, Vec<String>>,
    pub cluster: LinkerdCluster,
}

fn server_label(s: &Server) -> String {
    format!("Server {}/{}", s.metadata.ns(), s.metadata.name)
}

fn ap_label(ap: &AuthorizationPolicy) -> String {
    format!(
        "AuthorizationPolicy {}/{}",
        ap.metadata.ns(),
        ap.metadata.name
    )
}

/// Compiled authentications: `(namespace, name)` -> what it matches, or why
/// Linkerd cannot use it.
type Authns<T> = HashMap<(String, String), Result<T, String>>;

impl LinkerdIndex {
    pub fn new(files: &PolicyFiles, cluster_domain: &str) -> Self {
        let cfg = files.linkerd_configs.first().map(|l| &l.object);
        let values = cfg.map(|c| &c.values);
        let trust_domain = values
            .and_then(|v| v.identity_trust_domain.clone())
            .filter(|t| !t.is_empty())
            .or_else(|| values.and_then(|v| v.cluster_domain.clone()))
            .filter(|t| !t.is_empty())
            .unwrap_or_else(|| cluster_domain.to_owned());
        let control_plane_ns = cfg.map_or_else(|| "linkerd".to_owned(), |c| c.namespace.clone());
        let networks = values
            .and_then(|v| v.cluster_networks.as_deref())
            .unwrap_or(DEFAULT_CLUSTER_NETWORKS)
            .split(',')
            .filter_map(|s| parse_net(s.trim()))
            .collect();
        let default_policy = values
            .and_then(|v| v.proxy.as_ref())
            .and_then(|p| p.default_inbound_policy.as_deref())
            .and_then(InboundPolicy::parse)
            .map(|p| {
                (
                    p,
                    format!(
                        "proxy.defaultInboundPolicy in ConfigMap {control_plane_ns}/linkerd-config"
                    ),
                )
            });
        let cluster = LinkerdCluster {
            default_policy,
            networks,
            trust_domain,
            control_plane_ns,
        };

        let mut servers: HashMap<String, Vec<usize>> = HashMap::new();
        let mut order: Vec<usize> = (0..files.servers.len()).collect();
        order.sort_by_cached_key(|&i| AgeKey::new(&files.servers[i].object.metadata, i));
        for i in order {
            let s = &files.servers[i].object;
            servers
                .entry(s.metadata.ns().to_owned())
                .or_default()
                .push(i);
        }

        let meshtls: Authns<Vec<IdentityMatch>> = files
            .meshtls_authentications
            .iter()
            .map(|m| {
                let o = &m.object;
                (
                    (o.metadata.ns().to_owned(), o.metadata.name.clone()),
                    meshtls_matches(o, &cluster),
                )
            })
            .collect();
        let nets: Authns<Vec<NetMatch>> = files
            .network_authentications
            .iter()
            .map(|m| {
                let o = &m.object;
                (
                    (o.metadata.ns().to_owned(), o.metadata.name.clone()),
                    network_matches(o),
                )
            })
            .collect();
        let mut policies: HashMap<String, Vec<PolicyAuthz>> = HashMap::new();
        let mut route_policies: HashMap<String, Vec<String>> = HashMap::new();
        for (i, ap) in files.authorization_policies.iter().enumerate() {
            let ap = &ap.object;
            if let Some(AuthzTarget::HttpRoute(r) | AuthzTarget::GrpcRoute(r)) =
                ap.spec.target_ref.target()
            {
                route_policies
                    .entry(ap.metadata.ns().to_owned())
                    .or_default()
                    .push(format!(
                        "{} (targetRef {} {r})",
                        ap_label(ap),
                        ap.spec.target_ref.kind
                    ));
            }
            if matches!(
                ap.spec.target_ref.target(),
                Some(AuthzTarget::Server(_) | AuthzTarget::Namespace(_))
            ) {
                policies
                    .entry(ap.metadata.ns().to_owned())
                    .or_default()
                    .push((i, policy_authz(ap, &meshtls, &nets, &cluster)));
            }
        }
        let namespace_defaults = files
            .namespaces
            .iter()
            .filter_map(|n| {
                let m = &n.object.metadata;
                let p = m
                    .annotations
                    .get(super::model::DEFAULT_INBOUND_POLICY_ANNOTATION)
                    .and_then(|v| InboundPolicy::parse(v))?;
                Some((m.name.clone(), p))
            })
            .collect();
        Self {
            servers,
            policies,
            namespace_defaults,
            route_policies,
            cluster,
        }
    }

    /// The mesh identity of a workload's proxy:
    /// `SA.NS.serviceaccount.identity.CONTROL_PLANE_NS.TRUST_DOMAIN`.
    pub fn identity_of(&self, w: &Workload) -> Option<String> {
        w.linkerd.as_ref()?;
        let sa = w.service_account.as_deref()?;
        Some(format!(
            "{sa}.{}.serviceaccount.identity.{}.{}",
            w.namespace, self.cluster.control_plane_ns, self.cluster.trust_domain
        ))
    }

    /// The Server that decides `port` of `w`: Linkerd's order, the first whose
    /// pod selector matches and whose port is `port` (by number, or by the name
    /// of the workload's container port).
    fn server_for<'a>(
        &self,
        servers: &'a [super::load::Located<Server>],
        w: &Workload,
        port: u16,
    ) -> Option<&'a Server> {
        let name = w.port_names.get(&port);
        self.servers
            .get(&w.namespace)?
            .iter()
            .map(|&i| &servers[i].object)
            .find(|s| {
                s.spec
                    .pod_selector
                    .as_ref()
                    .is_some_and(|sel| sel.matches(&w.labels))
                    && match &s.spec.port {
                        super::model::PortRef::Number(_) => s.spec.port.number() == Some(port),
                        super::model::PortRef::Name(n) => name.is_some_and(|pn| pn == n),
                    }
            })
    }

    /// The default policy of a workload's port, and the sentence that says
    /// where it came from.
    fn default_policy(&self, w: &Workload, port: u16) -> (InboundPolicy, String) {
        let l = w.linkerd.as_ref();
        let annotated = l
            .and_then(|l| l.default_inbound_policy.as_deref())
            .and_then(InboundPolicy::parse);
        let whose = if w.pod.is_some() {
            "pod"
        } else {
            "inventory workload"
        };
        let (policy, from) = if let Some(p) = annotated {
            (
                p,
                format!("the {whose}'s config.linkerd.io/default-inbound-policy"),
            )
        } else if let Some(p) = self
            .namespace_defaults
            .get(&w.namespace)
            .filter(|_| w.pod.is_none())
        {
            (
                *p,
                format!(
                    "Namespace {}'s config.linkerd.io/default-inbound-policy",
                    w.namespace
                ),
            )
        } else if let Some((p, from)) = &self.cluster.default_policy {
            (*p, from.clone())
        } else if let Some(p) = l
            .and_then(|l| l.proxy_default.as_deref())
            .and_then(InboundPolicy::parse)
        {
            (p, "the proxy's LINKERD2_PROXY_INBOUND_DEFAULT_POLICY (the cluster default when the pod was injected)".to_owned())
        } else {
            (
                InboundPolicy::AllUnauthenticated,
                "Linkerd's default".to_owned(),
            )
        };
        let ignored = l
            .and_then(|l| l.default_inbound_policy.as_deref())
            .filter(|v| InboundPolicy::parse(v).is_none())
            .map(|v| format!("; the annotation's `{v}` is not a policy and Linkerd ignores it"))
            .unwrap_or_default();
        if l.is_some_and(|l| l.requires_identity(port)) {
            let p = policy.with_identity_required();
            if p != policy {
                return (
                    p,
                    format!(
                        "default-inbound-policy={} ({from}{ignored}), made {} on port {port} by config.linkerd.io/proxy-require-identity-inbound-ports",
                        policy.as_str(),
                        p.as_str()
                    ),
                );
            }
        }
        (
            policy,
            format!(
                "default-inbound-policy={} ({from}{ignored})",
                policy.as_str()
            ),
        )
    }

    /// What Linkerd's proxy of `w` does with a connection from `client` to `port`.
    pub fn decide(
        &self,
        files: &PolicyFiles,
        w: &Workload,
        port: u16,
        client: LinkerdClient<'_>,
    ) -> LinkerdDecision {
        let server = self.server_for(&files.servers, w, port);
        // Linkerd detects the protocol unless the Server says opaque or TLS (a
        // default policy's port is detected; `config.linkerd.io/opaque-ports`
        // is not read).
        let http = server
            .and_then(|s| s.spec.proxy_protocol.as_deref())
            .is_none_or(|p| !matches!(p, "opaque" | "TLS"));
        let (server_desc, authzs, mut policies) = match server {
            Some(s) => {
                let label = server_label(s);
                let mut authzs = Vec::new();
                let mut ignored = Vec::new();
                for (i, a) in self.policies.get(&w.namespace).into_iter().flatten() {
                    let ap = &files.authorization_policies[*i].object;
                    let applies = match ap.spec.target_ref.target() {
                        Some(AuthzTarget::Server(n)) => n.eq_ignore_ascii_case(&s.metadata.name),
                        Some(AuthzTarget::Namespace(_)) => true,
                        _ => false,
                    };
                    if !applies {
                        continue;
                    }
                    match a {
                        Ok(a) => authzs.push(a.clone()),
                        Err(why) => ignored.push(format!("{} (ignored: {why})", ap_label(ap))),
                    }
                }
                let access = s.access_policy();
                let access_label = format!("{label} spec.accessPolicy={}", access.as_str());
                authzs.extend(default_authzs(access, access_label.clone(), &self.cluster));
                let mut policies = vec![format!("{label} (port {})", s.spec.port)];
                policies.extend(ignored);
                if access == InboundPolicy::Deny {
                    policies.push(access_label.clone());
                }
                (
                    format!("{label} (port {port}; {access_label})"),
                    authzs,
                    policies,
                )
            }
            None => {
                let (p, from) = self.default_policy(w, port);
                let desc = format!("{from} on port {port} (no Server selects it)");
                let policies = if p == InboundPolicy::Deny {
                    vec![desc.clone()]
                } else {
                    Vec::new()
                };
                (desc, default_authzs(p, from, &self.cluster), policies)
            }
        };
        policies.extend(authzs.iter().map(|a| a.label.clone()));
        if client.addr.is_some_and(|a| a.is_loopback()) {
            return LinkerdDecision {
                admission: Admission::Localhost,
                reason: format!(
                    "a loopback client: Linkerd's proxy-init does not redirect traffic on `lo`, so {server_desc} does not apply"
                ),
                policies,
                http,
            };
        }
        let from_here: Vec<&Authz> = authzs
            .iter()
            .filter(|a| {
                client
                    .addr
                    .is_none_or(|addr| a.networks.iter().any(|n| n.contains(addr)))
            })
            .collect();
        let who = client.addr.map_or_else(
            || "the client (its address unknown: networks not checked)".to_owned(),
            |a| a.to_string(),
        );
        let decision = |admission, reason| LinkerdDecision {
            admission,
            reason,
            policies: policies.clone(),
            http,
        };
        // Per-route authorizations may admit requests the Server refuses.
        let routes = self
            .route_policies
            .get(&w.namespace)
            .filter(|r| !r.is_empty())
            .map(|r| {
                format!(
                    "; per-route AuthorizationPolicies are not interpreted and may admit requests: {}",
                    r.join(", ")
                )
            })
            .unwrap_or_default();
        if from_here.is_empty() {
            let why = if authzs.is_empty() {
                format!("{server_desc}: no authorization, so Linkerd refuses every client")
            } else {
                format!(
                    "no authorization of {server_desc} admits {who} ({})",
                    authzs
                        .iter()
                        .map(|a| a.label.as_str())
                        .collect::<Vec<_>>()
                        .join("; ")
                )
            };
            return decision(Admission::Deny, format!("{why}{routes}"));
        }
        // An authorization without identity admits plaintext; a non-audit one
        // is the one the proxy reports.
        if let Some(a) = from_here
            .iter()
            .filter(|a| a.identities.is_none())
            .min_by_key(|a| a.audit)
        {
            return decision(
                Admission::Unauthenticated { audit: a.audit },
                format!(
                    "{} admits {who} without a mesh identity{}",
                    a.label,
                    if a.audit {
                        " (audit: admitted and logged)"
                    } else {
                        ""
                    }
                ),
            );
        }
        let first = from_here.first().map_or("", |a| a.label.as_str());
        let Some(id) = client.identity else {
            return decision(
                Admission::Authenticated,
                format!(
                    "{first} requires a mesh identity, as does every authorization of {server_desc} that admits {who}: mutual TLS"
                ),
            );
        };
        match from_here.iter().find(|a| {
            a.identities
                .as_ref()
                .is_some_and(|ids| ids.iter().any(|m| m.matches(id)))
        }) {
            Some(a) => decision(
                Admission::Authenticated,
                format!(
                    "{} admits identity {id} with mutual TLS only; no authorization of {server_desc} admits {who} without one",
                    a.label
                ),
            ),
            None => decision(
                Admission::Deny,
                format!(
                    "client identity {id} matches no authorization of {server_desc} ({}){routes}",
                    from_here
                        .iter()
                        .map(|a| format!(
                            "{} needs {}",
                            a.label,
                            a.identities
                                .iter()
                                .flatten()
                                .map(ToString::to_string)
                                .collect::<Vec<_>>()
                                .join(" or ")
                        ))
                        .collect::<Vec<_>>()
                        .join("; ")
                ),
            ),
        }
    }
}
