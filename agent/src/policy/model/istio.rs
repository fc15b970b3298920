//! Istio's kinds: `PeerAuthentication`, `DestinationRule`, `ServiceEntry`, and
//! the mesh config map.

use std::collections::BTreeMap;

use serde::{Deserialize, Deserializer};

use super::{Metadata, Opaque, WorkloadSelector, string_enum};

string_enum! {
    /// PeerAuthentication mTLS modes.
    pub enum PeerMode {
        Unset = "UNSET",
        Disable = "DISABLE",
        Permissive = "PERMISSIVE",
        Strict = "STRICT",
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

/// `portLevelMtls`: port -> mTLS settings. `Some` of an empty map when the field
/// is there but empty, which Istio's validation refuses.
fn port_map<'de, D: Deserializer<'de>>(d: D) -> Result<Option<BTreeMap<u16, MutualTls>>, D::Error> {
    struct V;
    impl<'de> serde::de::Visitor<'de> for V {
        type Value = Option<BTreeMap<u16, MutualTls>>;
        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("a map from port numbers to mTLS settings")
        }
        fn visit_unit<E: serde::de::Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }
        fn visit_map<A: serde::de::MapAccess<'de>>(
            self,
            mut m: A,
        ) -> Result<Self::Value, A::Error> {
            let mut out = BTreeMap::new();
            while let Some(PortKey(port)) = m.next_key()? {
                // An entry with no value (`8080:`) is an UNSET mode, as in Istio.
                let v: Option<MutualTls> = m.next_value()?;
                out.insert(port, v.unwrap_or_default());
            }
            Ok(Some(out))
        }
    }
    d.deserialize_any(V)
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct PeerAuthenticationSpec {
    #[serde(default)]
    pub selector: Option<WorkloadSelector>,
    #[serde(default)]
    pub mtls: Option<MutualTls>,
    #[serde(default, deserialize_with = "port_map")]
    pub port_level_mtls: Option<BTreeMap<u16, MutualTls>>,
    /// Server TLS settings per port (newer Istio versions); carried, not interpreted.
    #[serde(default)]
    pub port_level_tls: Option<Opaque>,
}

impl PeerAuthenticationSpec {
    /// A selector with at least one label: a workload-level policy.
    pub fn has_selector(&self) -> bool {
        self.selector
            .as_ref()
            .is_some_and(|s| !s.match_labels.is_empty())
    }

    /// `spec.mtls.mode`, UNSET when absent.
    pub fn mode(&self) -> PeerMode {
        self.mtls.as_ref().map_or(PeerMode::Unset, MutualTls::mode)
    }

    /// The `portLevelMtls` entries (none when absent).
    pub fn ports(&self) -> impl Iterator<Item = (u16, PeerMode)> + '_ {
        self.port_level_mtls
            .iter()
            .flatten()
            .map(|(p, m)| (*p, m.mode()))
    }
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

string_enum! {
    /// DestinationRule client TLS modes.
    pub enum TlsMode {
        Disable = "DISABLE",
        Simple = "SIMPLE",
        Mutual = "MUTUAL",
        IstioMutual = "ISTIO_MUTUAL",
    }
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ClientTlsSettings {
    /// Istio's default mode is DISABLE.
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
    pub insecure_skip_verify: Option<bool>,
}

impl ClientTlsSettings {
    pub fn mode(&self) -> TlsMode {
        self.mode.unwrap_or(TlsMode::Disable)
    }

    /// A credential fetched by name from a Kubernetes Secret (not a
    /// `configmap://` CA bundle, which any proxy may read).
    pub fn secret_credential(&self) -> Option<&str> {
        self.credential_name
            .as_deref()
            .filter(|c| !c.is_empty() && !c.starts_with("configmap://"))
    }
}

fn set(s: &Option<String>) -> bool {
    s.as_deref().is_some_and(|s| !s.is_empty())
}

impl ClientTlsSettings {
    pub fn has_client_certificate(&self) -> bool {
        set(&self.client_certificate)
    }
    pub fn has_private_key(&self) -> bool {
        set(&self.private_key)
    }
    pub fn has_ca_certificates(&self) -> bool {
        set(&self.ca_certificates)
    }
    pub fn has_ca_crl(&self) -> bool {
        set(&self.ca_crl)
    }
    pub fn has_credential_name(&self) -> bool {
        set(&self.credential_name)
    }
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct PortSelector {
    /// Checked against 1-65535 by validation, with Istio's message.
    #[serde(default)]
    pub number: u32,
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

impl TrafficPolicy {
    /// Istio's `GetPortLevelTrafficPolicy`: a `portLevelSettings` entry for the
    /// port replaces the whole policy (nothing is inherited from the top level);
    /// `true` when one did.
    pub fn for_port(&self, port: u16) -> (Option<&ClientTlsSettings>, bool) {
        match self
            .port_level_settings
            .iter()
            .find(|p| p.port.as_ref().is_some_and(|s| s.number == u32::from(port)))
        {
            Some(p) => (p.tls.as_ref(), true),
            None => (self.tls.as_ref(), false),
        }
    }
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Subset {
    /// Required; an empty name is refused by validation with Istio's message.
    #[serde(default)]
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

string_enum! {
    /// ServiceEntry `location`.
    pub enum Location {
        MeshExternal = "MESH_EXTERNAL",
        MeshInternal = "MESH_INTERNAL",
    }
}

string_enum! {
    /// ServiceEntry `resolution`.
    pub enum Resolution {
        None = "NONE",
        Static = "STATIC",
        Dns = "DNS",
        DnsRoundRobin = "DNS_ROUND_ROBIN",
        DynamicDns = "DYNAMIC_DNS",
    }
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ServicePort {
    pub number: u32,
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub protocol: Option<String>,
    #[serde(default)]
    pub target_port: Option<u32>,
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ServiceEntrySpec {
    #[serde(default)]
    pub hosts: Vec<String>,
    #[serde(default)]
    pub addresses: Vec<String>,
    #[serde(default)]
    pub ports: Vec<ServicePort>,
    /// Istio's default is MESH_EXTERNAL.
    #[serde(default)]
    pub location: Option<Location>,
    #[serde(default)]
    pub resolution: Option<Resolution>,
    #[serde(default)]
    pub endpoints: Option<Opaque>,
    #[serde(default)]
    pub workload_selector: Option<Opaque>,
    #[serde(default)]
    pub export_to: Vec<String>,
    #[serde(default)]
    pub subject_alt_names: Vec<String>,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ServiceEntry {
    pub api_version: String,
    pub kind: String,
    pub metadata: Metadata,
    pub spec: ServiceEntrySpec,
    #[serde(default)]
    pub status: Option<Opaque>,
}

/// Istio's mesh config map (`ConfigMap` `istio` in the root namespace, key
/// `mesh`), as `kubectl get configmap istio -n istio-system -o yaml` prints it.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ConfigMap {
    pub api_version: String,
    pub kind: String,
    pub metadata: Metadata,
    #[serde(default)]
    pub data: BTreeMap<String, String>,
}

/// The MeshConfig fields the auditor reads; every other field is accepted as is.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct MeshConfig {
    /// Auto-mTLS (Istio's default: on).
    #[serde(default)]
    pub enable_auto_mtls: Option<bool>,
    #[serde(default)]
    pub root_namespace: Option<String>,
}
