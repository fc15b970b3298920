//! Linkerd's policy kinds (`policy.linkerd.io`): `Server` (v1alpha1 to v1beta3),
//! `AuthorizationPolicy`, `MeshTLSAuthentication` and `NetworkAuthentication`
//! (v1alpha1); the `Namespace` objects whose `config.linkerd.io/default-inbound-policy`
//! annotation sets a default for the namespace's workloads; and the control
//! plane's values (`ConfigMap` `linkerd-config`, key `values`).
//!
//! Fields the controller reads loosely (`accessPolicy`, `proxyProtocol`, the
//! port) are kept as written, so that validation can say what Linkerd does with
//! a bad value rather than a bare type error.

use std::collections::BTreeMap;

use serde::{Deserialize, Deserializer};

use super::{Metadata, Opaque, string_enum};

string_enum! {
    /// Linkerd's default inbound policies (`config.linkerd.io/default-inbound-policy`,
    /// `proxy.defaultInboundPolicy`, a Server's `accessPolicy`).
    pub enum InboundPolicy {
        AllUnauthenticated = "all-unauthenticated",
        AllAuthenticated = "all-authenticated",
        ClusterUnauthenticated = "cluster-unauthenticated",
        ClusterAuthenticated = "cluster-authenticated",
        Deny = "deny",
        Audit = "audit",
    }
}

impl InboundPolicy {
    /// The policy controller's parse (`DefaultPolicy::from_str`): exact spelling.
    pub fn parse(s: &str) -> Option<Self> {
        Self::VARIANTS
            .iter()
            .position(|v| *v == s)
            .and_then(|i| ALL_POLICIES.get(i).copied())
    }

    /// Allows connections only with a mesh identity (mutual TLS).
    pub fn authenticated(self) -> bool {
        matches!(self, Self::AllAuthenticated | Self::ClusterAuthenticated)
    }

    /// Allows connections only from the cluster's networks.
    pub fn cluster_only(self) -> bool {
        matches!(
            self,
            Self::ClusterAuthenticated | Self::ClusterUnauthenticated
        )
    }

    /// The same policy with identity required (what
    /// `config.linkerd.io/proxy-require-identity-inbound-ports` does to the
    /// `allow` policies; `deny` and `audit` are kept).
    pub fn with_identity_required(self) -> Self {
        match self {
            Self::AllUnauthenticated => Self::AllAuthenticated,
            Self::ClusterUnauthenticated => Self::ClusterAuthenticated,
            other => other,
        }
    }
}

/// In `VARIANTS` order.
const ALL_POLICIES: [InboundPolicy; 6] = [
    InboundPolicy::AllUnauthenticated,
    InboundPolicy::AllAuthenticated,
    InboundPolicy::ClusterUnauthenticated,
    InboundPolicy::ClusterAuthenticated,
    InboundPolicy::Deny,
    InboundPolicy::Audit,
];

/// The pod annotation that sets a workload's default policy.
pub const DEFAULT_INBOUND_POLICY_ANNOTATION: &str = "config.linkerd.io/default-inbound-policy";
/// The pod annotation listing ports whose default policy requires identity.
pub const REQUIRE_IDENTITY_ANNOTATION: &str =
    "config.linkerd.io/proxy-require-identity-inbound-ports";

string_enum! {
    /// Label selector operators (Kubernetes `LabelSelectorRequirement`).
    pub enum SelectorOperator {
        In = "In",
        NotIn = "NotIn",
        Exists = "Exists",
        DoesNotExist = "DoesNotExist",
    }
}

#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct LabelExpression {
    pub key: String,
    pub operator: SelectorOperator,
    #[serde(default)]
    pub values: Option<Vec<String>>,
}

impl LabelExpression {
    /// Linkerd's `Expression::matches`: `In`/`NotIn` need values, `Exists` and
    /// `DoesNotExist` take none; any other combination is illegal and never
    /// matches.
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        match (self.operator, self.values.as_ref()) {
            (SelectorOperator::In, Some(v)) => labels.get(&self.key).is_some_and(|l| v.contains(l)),
            (SelectorOperator::NotIn, Some(v)) => {
                labels.get(&self.key).is_none_or(|l| !v.contains(l))
            }
            (SelectorOperator::Exists, None) => labels.contains_key(&self.key),
            (SelectorOperator::DoesNotExist, None) => !labels.contains_key(&self.key),
            _ => false,
        }
    }

    /// The combination Linkerd refuses to match (`Illegal match expression`).
    pub fn is_legal(&self) -> bool {
        matches!(
            (self.operator, self.values.as_ref()),
            (SelectorOperator::In | SelectorOperator::NotIn, Some(_))
                | (
                    SelectorOperator::Exists | SelectorOperator::DoesNotExist,
                    None
                )
        )
    }
}

/// A Kubernetes label selector: `matchLabels` and `matchExpressions`, ANDed; an
/// empty selector selects everything.
#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct LabelSelector {
    #[serde(default)]
    pub match_labels: Option<BTreeMap<String, String>>,
    #[serde(default)]
    pub match_expressions: Option<Vec<LabelExpression>>,
}

impl LabelSelector {
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        self.match_expressions
            .iter()
            .flatten()
            .all(|e| e.matches(labels))
            && self
                .match_labels
                .iter()
                .flatten()
                .all(|(k, v)| labels.get(k) == Some(v))
    }
}

/// A Server's `port`: a number, or the name of a container port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PortRef {
    /// As written: checked against 1-65535 by validation.
    Number(i64),
    Name(String),
}

impl<'de> Deserialize<'de> for PortRef {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = PortRef;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a port number or a container port name")
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<PortRef, E> {
                Ok(PortRef::Number(v))
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<PortRef, E> {
                Ok(PortRef::Number(i64::try_from(v).unwrap_or(i64::MAX)))
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<PortRef, E> {
                Ok(PortRef::Name(v.to_owned()))
            }
        }
        d.deserialize_any(V)
    }
}

impl PortRef {
    /// The port number Linkerd's controller reads (`NonZeroU16`), if valid.
    pub fn number(&self) -> Option<u16> {
        match self {
            Self::Number(n) => u16::try_from(*n).ok().filter(|p| *p != 0),
            Self::Name(_) => None,
        }
    }
}

impl std::fmt::Display for PortRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Number(n) => write!(f, "{n}"),
            Self::Name(n) => f.write_str(n),
        }
    }
}

/// The `proxyProtocol` values Linkerd's controller reads.
pub const PROXY_PROTOCOLS: &[&str] = &["unknown", "HTTP/1", "HTTP/2", "gRPC", "opaque", "TLS"];

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ServerSpec {
    #[serde(default)]
    pub pod_selector: Option<LabelSelector>,
    #[serde(default)]
    pub external_workload_selector: Option<LabelSelector>,
    pub port: PortRef,
    #[serde(default)]
    pub proxy_protocol: Option<String>,
    /// Absent: the CRD's default `deny` (v1beta3; older versions have no field).
    #[serde(default)]
    pub access_policy: Option<String>,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Server {
    pub api_version: String,
    pub kind: String,
    pub metadata: Metadata,
    pub spec: ServerSpec,
    #[serde(default)]
    pub status: Option<Opaque>,
}

impl Server {
    /// `accessPolicy` as Linkerd reads it: the API server drops the field from
    /// versions before v1beta3 (their schemas do not have it) and stores v1beta3's
    /// default, `deny`; an unparsable value is ignored by the controller, which
    /// then adds no default authorization (the same as `deny`).
    pub fn access_policy(&self) -> InboundPolicy {
        if !self.api_version.ends_with("/v1beta3") {
            return InboundPolicy::Deny;
        }
        self.spec
            .access_policy
            .as_deref()
            .map_or(Some(InboundPolicy::Deny), InboundPolicy::parse)
            .unwrap_or(InboundPolicy::Deny)
    }
}

/// `targetRef` of an AuthorizationPolicy.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct LocalTargetRef {
    #[serde(default)]
    pub group: Option<String>,
    pub kind: String,
    pub name: String,
}

/// A reference to an object, possibly in another namespace.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct NamespacedTargetRef {
    #[serde(default)]
    pub group: Option<String>,
    pub kind: String,
    /// Required by the policy controller (its type has no optional name), though
    /// the MeshTLSAuthentication CRD lets `identityRefs` leave it out.
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub namespace: Option<String>,
}

/// Linkerd's `targets_kind`: the kind matches, case-insensitively, and so does
/// the group, an absent or empty group meaning the core group.
pub fn targets_kind(group: Option<&str>, kind: &str, want_group: &str, want_kind: &str) -> bool {
    let want_group = if want_group.is_empty() {
        "core"
    } else {
        want_group
    };
    group
        .filter(|g| !g.is_empty())
        .unwrap_or("core")
        .eq_ignore_ascii_case(want_group)
        && kind.eq_ignore_ascii_case(want_kind)
}

/// The API group of Linkerd's policy kinds.
pub const POLICY_GROUP: &str = "policy.linkerd.io";
/// The Gateway API group.
pub const GATEWAY_GROUP: &str = "gateway.networking.k8s.io";

/// What an AuthorizationPolicy's `targetRef` names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuthzTarget {
    Server(String),
    Namespace(String),
    HttpRoute(String),
    GrpcRoute(String),
}

impl LocalTargetRef {
    /// Linkerd's `target` (the index's `authorization_policy.rs`).
    pub fn target(&self) -> Option<AuthzTarget> {
        let g = self.group.as_deref();
        let k = self.kind.as_str();
        let n = self.name.clone();
        if targets_kind(g, k, POLICY_GROUP, "Server") {
            Some(AuthzTarget::Server(n))
        } else if targets_kind(g, k, "", "Namespace") {
            Some(AuthzTarget::Namespace(n))
        } else if targets_kind(g, k, POLICY_GROUP, "HTTPRoute")
            || targets_kind(g, k, GATEWAY_GROUP, "HTTPRoute")
        {
            Some(AuthzTarget::HttpRoute(n))
        } else if targets_kind(g, k, GATEWAY_GROUP, "GRPCRoute") {
            Some(AuthzTarget::GrpcRoute(n))
        } else {
            None
        }
    }

    /// `kind.group`, as Linkerd names a kind in its messages.
    pub fn canonical_kind(&self) -> String {
        canonical_kind(self.group.as_deref(), &self.kind)
    }
}

fn canonical_kind(group: Option<&str>, kind: &str) -> String {
    match group {
        Some(g) => format!("{kind}.{g}"),
        None => kind.to_owned(),
    }
}

/// What an authentication reference names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthnKind {
    MeshTls,
    Network,
    ServiceAccount,
}

impl NamespacedTargetRef {
    /// Linkerd's `authentication_ref`.
    pub fn authn_kind(&self) -> Option<AuthnKind> {
        let g = self.group.as_deref();
        let k = self.kind.as_str();
        if targets_kind(g, k, POLICY_GROUP, "MeshTLSAuthentication") {
            Some(AuthnKind::MeshTls)
        } else if targets_kind(g, k, POLICY_GROUP, "NetworkAuthentication") {
            Some(AuthnKind::Network)
        } else if targets_kind(g, k, "", "ServiceAccount") {
            Some(AuthnKind::ServiceAccount)
        } else {
            None
        }
    }

    pub fn canonical_kind(&self) -> String {
        canonical_kind(self.group.as_deref(), &self.kind)
    }

    pub fn name(&self) -> &str {
        self.name.as_deref().unwrap_or_default()
    }
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct AuthorizationPolicySpec {
    pub target_ref: LocalTargetRef,
    pub required_authentication_refs: Vec<NamespacedTargetRef>,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct AuthorizationPolicy {
    pub api_version: String,
    pub kind: String,
    pub metadata: Metadata,
    pub spec: AuthorizationPolicySpec,
    #[serde(default)]
    pub status: Option<Opaque>,
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct MeshTlsAuthenticationSpec {
    #[serde(default)]
    pub identities: Option<Vec<String>>,
    #[serde(default)]
    pub identity_refs: Option<Vec<NamespacedTargetRef>>,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct MeshTlsAuthentication {
    pub api_version: String,
    pub kind: String,
    pub metadata: Metadata,
    #[serde(default)]
    pub spec: MeshTlsAuthenticationSpec,
    #[serde(default)]
    pub status: Option<Opaque>,
}

#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Network {
    pub cidr: String,
    #[serde(default)]
    pub except: Option<Vec<String>>,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct NetworkAuthenticationSpec {
    pub networks: Vec<Network>,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct NetworkAuthentication {
    pub api_version: String,
    pub kind: String,
    pub metadata: Metadata,
    pub spec: NetworkAuthenticationSpec,
    #[serde(default)]
    pub status: Option<Opaque>,
}

/// A `Namespace` (v1); only its annotations are read.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Namespace {
    pub api_version: String,
    pub kind: String,
    pub metadata: Metadata,
    #[serde(default)]
    pub spec: Option<Opaque>,
    #[serde(default)]
    pub status: Option<Opaque>,
}

/// The control plane's values that decide inbound policy (from the `values` key
/// of the `linkerd-config` ConfigMap); every other field is accepted as is.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct LinkerdValues {
    /// Comma-separated CIDRs (`cluster-*` policies admit only these).
    #[serde(default)]
    pub cluster_networks: Option<String>,
    #[serde(default)]
    pub cluster_domain: Option<String>,
    /// Empty means the cluster domain.
    #[serde(default)]
    pub identity_trust_domain: Option<String>,
    #[serde(default)]
    pub proxy: Option<LinkerdProxyValues>,
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct LinkerdProxyValues {
    #[serde(default)]
    pub default_inbound_policy: Option<String>,
}

/// The control plane's values, with the namespace the ConfigMap was in (the
/// control plane's namespace, part of every identity).
#[derive(Debug, Clone, PartialEq)]
pub struct LinkerdConfig {
    pub namespace: String,
    pub values: LinkerdValues,
}

/// Linkerd's `clusterNetworks` default.
pub const DEFAULT_CLUSTER_NETWORKS: &str =
    "10.0.0.0/8,100.64.0.0/10,172.16.0.0/12,192.168.0.0/16,fd00::/8";

/// A standalone workload's Linkerd proxy (`linkerd:` in an inventory workload):
/// what the pod's annotations would say in a cluster.
#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct LinkerdWorkloadEntry {
    /// `config.linkerd.io/default-inbound-policy` of the pod.
    #[serde(default)]
    pub default_inbound_policy: Option<InboundPolicy>,
    /// `config.linkerd.io/proxy-require-identity-inbound-ports` of the pod:
    /// ports and ranges, `8080,9000-9100`.
    #[serde(default)]
    pub require_identity_inbound_ports: Option<String>,
}

/// A Linkerd port list (`8080,9000-9100`, spaces allowed): inclusive ranges, or
/// the first bad entry.
pub fn parse_port_ranges(s: &str) -> Result<Vec<(u16, u16)>, String> {
    let mut out = Vec::new();
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let port = |p: &str| {
            p.trim()
                .parse::<u16>()
                .ok()
                .filter(|n| *n > 0)
                .ok_or_else(|| format!("`{part}` is not a port (1-65535) or a range of ports"))
        };
        let (lo, hi) = match part.split_once('-') {
            Some((a, b)) => (port(a)?, port(b)?),
            None => {
                let p = port(part)?;
                (p, p)
            }
        };
        if lo > hi {
            return Err(format!("`{part}`: the range is backwards"));
        }
        out.push((lo, hi));
    }
    Ok(out)
}

#[cfg(test)]
#[path = "linkerd_tests.rs"]
mod tests;
