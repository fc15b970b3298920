//! The policy objects as they appear in YAML: Istio `PeerAuthentication` and
//! `DestinationRule` (API versions v1alpha3, v1beta1, v1), and this project's
//! `TransportPolicy` and `Inventory` (mtls-auditor.io/v1alpha1).
//!
//! Fields this tool interprets are typed; fields it does not (load balancing,
//! connection pools, ...) are accepted as any value, so Istio's documented
//! manifests load unchanged while misspelt fields are still errors.

use std::collections::BTreeMap;

use serde::{Deserialize, Deserializer};

/// Any YAML value, for fields carried but not interpreted.
pub type Opaque = yaml_serde::Value;

/// Kubernetes object metadata (the fields an object may carry).
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Metadata {
    pub name: String,
    #[serde(default)]
    pub namespace: Option<String>,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    #[serde(default)]
    pub annotations: BTreeMap<String, String>,
    /// RFC 3339; decides "oldest wins" between conflicting objects.
    #[serde(default)]
    pub creation_timestamp: Option<String>,
    #[serde(default)]
    pub uid: Option<String>,
    #[serde(default)]
    pub resource_version: Option<String>,
    #[serde(default)]
    pub generation: Option<i64>,
    #[serde(default)]
    pub generate_name: Option<String>,
    #[serde(default)]
    pub managed_fields: Option<Opaque>,
    #[serde(default)]
    pub owner_references: Option<Opaque>,
    #[serde(default)]
    pub finalizers: Option<Opaque>,
    #[serde(default)]
    pub deletion_timestamp: Option<String>,
    #[serde(default)]
    pub deletion_grace_period_seconds: Option<i64>,
}

/// `selector` / `workloadSelector`: labels of the workloads a policy applies to.
#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct WorkloadSelector {
    #[serde(default)]
    pub match_labels: BTreeMap<String, String>,
}

impl WorkloadSelector {
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        self.match_labels
            .iter()
            .all(|(k, v)| labels.get(k) == Some(v))
    }
}

/// PeerAuthentication mTLS modes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum PeerMode {
    Unset,
    Disable,
    Permissive,
    Strict,
}

impl PeerMode {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Unset => "UNSET",
            Self::Disable => "DISABLE",
            Self::Permissive => "PERMISSIVE",
            Self::Strict => "STRICT",
        }
    }
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct MutualTls {
    #[serde(default)]
    pub mode: Option<PeerMode>,
}

impl MutualTls {
    /// The mode, with an absent mode meaning UNSET.
    pub fn mode(&self) -> PeerMode {
        self.mode.unwrap_or(PeerMode::Unset)
    }
}

/// A port used as a map key: a YAML integer or a string of digits, 1-65535.
struct PortKey(u16);

impl<'de> Deserialize<'de> for PortKey {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = PortKey;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a port number (1-65535)")
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<PortKey, E> {
                u16::try_from(v)
                    .ok()
                    .filter(|p| *p > 0)
                    .map(PortKey)
                    .ok_or_else(|| E::custom(format!("{v} is not a port number (1-65535)")))
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<PortKey, E> {
                u64::try_from(v)
                    .map_err(|_| E::custom(format!("{v} is not a port number (1-65535)")))
                    .and_then(|v| self.visit_u64(v))
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<PortKey, E> {
                v.parse::<u64>()
                    .map_err(|_| E::custom(format!("`{v}` is not a port number (1-65535)")))
                    .and_then(|n| self.visit_u64(n))
            }
        }
        d.deserialize_any(V)
    }
}

/// `portLevelMtls`: port -> mTLS settings.
fn port_map<'de, D: Deserializer<'de>>(d: D) -> Result<BTreeMap<u16, MutualTls>, D::Error> {
    struct V;
    impl<'de> serde::de::Visitor<'de> for V {
        type Value = BTreeMap<u16, MutualTls>;
        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("a map from port numbers to mTLS settings")
        }
        fn visit_map<A: serde::de::MapAccess<'de>>(
            self,
            mut m: A,
        ) -> Result<Self::Value, A::Error> {
            let mut out = BTreeMap::new();
            while let Some(PortKey(port)) = m.next_key()? {
                out.insert(port, m.next_value()?);
            }
            Ok(out)
        }
    }
    d.deserialize_map(V)
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct PeerAuthenticationSpec {
    #[serde(default)]
    pub selector: Option<WorkloadSelector>,
    #[serde(default)]
    pub mtls: Option<MutualTls>,
    #[serde(default, deserialize_with = "port_map")]
    pub port_level_mtls: BTreeMap<u16, MutualTls>,
    /// Server TLS settings per port (newer Istio versions); carried, not interpreted.
    #[serde(default)]
    pub port_level_tls: Option<Opaque>,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct PeerAuthentication {
    pub api_version: String,
    pub kind: String,
    pub metadata: Metadata,
    #[serde(default)]
    pub spec: PeerAuthenticationSpec,
    #[serde(default)]
    pub status: Option<Opaque>,
}

/// DestinationRule client TLS modes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum TlsMode {
    Disable,
    Simple,
    Mutual,
    IstioMutual,
}

impl TlsMode {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Disable => "DISABLE",
            Self::Simple => "SIMPLE",
            Self::Mutual => "MUTUAL",
            Self::IstioMutual => "ISTIO_MUTUAL",
        }
    }
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ClientTlsSettings {
    #[serde(default)]
    pub mode: Option<TlsMode>,
    #[serde(default)]
    pub client_certificate: Option<String>,
    #[serde(default)]
    pub private_key: Option<String>,
    #[serde(default)]
    pub ca_certificates: Option<String>,
    #[serde(default)]
    pub ca_crl: Option<String>,
    #[serde(default)]
    pub credential_name: Option<String>,
    #[serde(default)]
    pub subject_alt_names: Vec<String>,
    #[serde(default)]
    pub sni: Option<String>,
    #[serde(default)]
    pub insecure_skip_verify: Option<Opaque>,
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct PortSelector {
    pub number: u16,
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct PortTrafficPolicy {
    #[serde(default)]
    pub port: Option<PortSelector>,
    #[serde(default)]
    pub tls: Option<ClientTlsSettings>,
    #[serde(default)]
    pub load_balancer: Option<Opaque>,
    #[serde(default)]
    pub connection_pool: Option<Opaque>,
    #[serde(default)]
    pub outlier_detection: Option<Opaque>,
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct TrafficPolicy {
    #[serde(default)]
    pub tls: Option<ClientTlsSettings>,
    #[serde(default)]
    pub port_level_settings: Vec<PortTrafficPolicy>,
    #[serde(default)]
    pub load_balancer: Option<Opaque>,
    #[serde(default)]
    pub connection_pool: Option<Opaque>,
    #[serde(default)]
    pub outlier_detection: Option<Opaque>,
    #[serde(default)]
    pub tunnel: Option<Opaque>,
    #[serde(default)]
    pub proxy_protocol: Option<Opaque>,
    #[serde(default)]
    pub retry_budget: Option<Opaque>,
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Subset {
    pub name: String,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    #[serde(default)]
    pub traffic_policy: Option<TrafficPolicy>,
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct DestinationRuleSpec {
    pub host: String,
    #[serde(default)]
    pub traffic_policy: Option<TrafficPolicy>,
    #[serde(default)]
    pub subsets: Vec<Subset>,
    #[serde(default)]
    pub export_to: Vec<String>,
    #[serde(default)]
    pub workload_selector: Option<WorkloadSelector>,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct DestinationRule {
    pub api_version: String,
    pub kind: String,
    pub metadata: Metadata,
    pub spec: DestinationRuleSpec,
    #[serde(default)]
    pub status: Option<Opaque>,
}

/// What a native rule requires.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Requirement {
    MutualTls,
    Tls,
    None,
}

/// Which connections a native rule or exemption covers. Every given field must
/// match; an empty match covers everything.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ConnMatch {
    /// Destination addresses (CIDRs, or single addresses).
    #[serde(default)]
    pub destination_cidrs: Vec<String>,
    #[serde(default)]
    pub source_cidrs: Vec<String>,
    /// Destination ports.
    #[serde(default)]
    pub ports: Vec<u16>,
    /// Destination ports by name: a named container port of the destination pod
    /// (in a cluster) or a port the inventory names for the destination workload.
    #[serde(default)]
    pub port_names: Vec<String>,
    #[serde(default)]
    pub destination: Option<WorkloadRef>,
    #[serde(default)]
    pub source: Option<WorkloadRef>,
    /// Process names (comm) of the client or the server end.
    #[serde(default)]
    pub processes: Vec<String>,
    /// `local` (both ends on this node), `outbound`, `inbound`.
    #[serde(default)]
    pub direction: Option<Direction>,
    /// Only connections that stay on the loopback interface.
    #[serde(default)]
    pub loopback: Option<bool>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Direction {
    Local,
    Outbound,
    Inbound,
}

/// A workload by namespace and labels (or name).
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct WorkloadRef {
    #[serde(default)]
    pub namespace: Option<String>,
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub match_labels: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Rule {
    pub name: String,
    pub require: Requirement,
    #[serde(default, rename = "match")]
    pub conn_match: ConnMatch,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Exemption {
    pub name: String,
    #[serde(default, rename = "match")]
    pub conn_match: ConnMatch,
    #[serde(default)]
    pub reason: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct TransportPolicySpec {
    #[serde(default)]
    pub rules: Vec<Rule>,
    #[serde(default)]
    pub exemptions: Vec<Exemption>,
    /// The built-in exemption of loopback hops inside one workload (default on).
    #[serde(default)]
    pub exempt_loopback_within_workload: Option<bool>,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct TransportPolicy {
    pub api_version: String,
    pub kind: String,
    pub metadata: Metadata,
    pub spec: TransportPolicySpec,
}

/// How the standalone inventory recognises a workload's sockets.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct WorkloadMatch {
    /// Globs on the cgroup path below the cgroup v2 root (`/kubepods.slice/*`).
    #[serde(default)]
    pub cgroups: Vec<String>,
    /// Network namespaces by name (`ip netns`, /run/netns/NAME) or path.
    #[serde(default)]
    pub network_namespaces: Vec<String>,
    /// Addresses or CIDRs the workload's sockets use.
    #[serde(default)]
    pub addresses: Vec<String>,
    /// Process names (comm).
    #[serde(default)]
    pub processes: Vec<String>,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct WorkloadEntry {
    pub name: String,
    pub namespace: String,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    #[serde(rename = "match")]
    pub workload_match: WorkloadMatch,
    /// Named ports of the workload (`metrics: 9090`), for `portNames` in rules and
    /// exemptions.
    #[serde(default)]
    pub ports: BTreeMap<String, u16>,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ServiceEntry {
    pub name: String,
    pub namespace: String,
    pub addresses: Vec<String>,
    /// Ports the service serves (all when empty).
    #[serde(default)]
    pub ports: Vec<u16>,
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct InventorySpec {
    #[serde(default)]
    pub workloads: Vec<WorkloadEntry>,
    #[serde(default)]
    pub services: Vec<ServiceEntry>,
    /// DNS suffix of service names (default `cluster.local`).
    #[serde(default)]
    pub cluster_domain: Option<String>,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Inventory {
    pub api_version: String,
    pub kind: String,
    #[serde(default)]
    pub metadata: Option<Metadata>,
    pub spec: InventorySpec,
}
