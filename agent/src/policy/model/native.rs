//! This project's kinds: `TransportPolicy` (rules and exemptions for what Istio
//! cannot say) and `Inventory` (standalone workloads and services).

use std::collections::BTreeMap;

use serde::Deserialize;

use super::{Metadata, string_enum};

string_enum! {
    /// What a native rule requires.
    pub enum Requirement {
        MutualTls = "mutual_tls",
        Tls = "tls",
        None = "none",
    }
}

/// Which connections a native rule or exemption covers. Every given field must
/// match; an empty match covers everything (allowed for a rule, refused for an
/// exemption, which needs `all: true` instead).
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

string_enum! {
    /// Which ends of a connection are on this node.
    pub enum Direction {
        Local = "local",
        Outbound = "outbound",
        Inbound = "inbound",
    }
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
    /// Exempts every connection. Required, instead of a `match`, for an exemption
    /// that covers everything: an exemption without a `match` (or with an empty
    /// one) is an error, so that nothing is exempted by a forgotten field.
    #[serde(default)]
    pub all: Option<bool>,
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
    /// The workload runs a mesh sidecar (Istio's `istio-proxy`): with auto-mTLS
    /// its sidecar sends mutual TLS to destinations that have one too.
    #[serde(default)]
    pub sidecar: bool,
    /// The workload runs a Linkerd proxy (`linkerd: {}`), with what its pod's
    /// annotations would say (`defaultInboundPolicy`,
    /// `requireIdentityInboundPorts`).
    #[serde(default)]
    pub linkerd: Option<super::LinkerdWorkloadEntry>,
    /// The workload's Kubernetes service account: its Linkerd identity is
    /// `SA.NAMESPACE.serviceaccount.identity.linkerd.TRUST_DOMAIN`.
    #[serde(default)]
    pub service_account: Option<String>,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct InventoryService {
    pub name: String,
    pub namespace: String,
    pub addresses: Vec<String>,
    /// Ports the service serves (all when empty).
    #[serde(default)]
    pub ports: Vec<u16>,
    /// A headless service (`clusterIP: None`): Istio's passthrough cluster.
    #[serde(default)]
    pub headless: bool,
    /// Outside the mesh (as a ServiceEntry with `location: MESH_EXTERNAL`): no
    /// auto-mTLS to it.
    #[serde(default)]
    pub mesh_external: bool,
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct InventorySpec {
    #[serde(default)]
    pub workloads: Vec<WorkloadEntry>,
    #[serde(default)]
    pub services: Vec<InventoryService>,
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

impl ConnMatch {
    /// No field given: the match covers every connection.
    pub fn is_empty(&self) -> bool {
        let Self {
            destination_cidrs,
            source_cidrs,
            ports,
            port_names,
            destination,
            source,
            processes,
            direction,
            loopback,
        } = self;
        destination_cidrs.is_empty()
            && source_cidrs.is_empty()
            && ports.is_empty()
            && port_names.is_empty()
            && destination.is_none()
            && source.is_none()
            && processes.is_empty()
            && direction.is_none()
            && loopback.is_none()
    }
}
