//! The policy objects as they appear in YAML: Istio `PeerAuthentication`,
//! `DestinationRule` (API versions v1alpha3, v1beta1, v1), `ServiceEntry` and the
//! mesh config map (`ConfigMap` `istio`); Linkerd's `Server`,
//! `AuthorizationPolicy`, `MeshTLSAuthentication`, `NetworkAuthentication`,
//! annotated `Namespace`s and the `linkerd-config` values; and this project's
//! `TransportPolicy` and `Inventory` (mtls-auditor.io/v1alpha1).
//!
//! Fields this tool interprets are typed; fields it does not (load balancing,
//! connection pools, ...) are accepted as any value, so Istio's documented
//! manifests load unchanged while misspelt fields are still errors.

use std::collections::BTreeMap;

use serde::Deserialize;

mod istio;
mod linkerd;
mod native;

pub use istio::*;
pub use linkerd::*;
pub use native::*;

/// Any YAML value, for fields carried but not interpreted.
pub type Opaque = yaml_serde::Value;

/// `a`, `b`, `c` quoted for a message.
pub(crate) fn quote_list(items: &[&str]) -> String {
    items
        .iter()
        .map(|i| format!("`{i}`"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// An enum spelt as one of a fixed set of strings. Unlike serde's derive for
/// enums, any other YAML value (`mode: [STRICT]`, `mode: 3`) is refused with the
/// list of allowed values, not with a remark about YAML tags.
macro_rules! string_enum {
    ($(#[$m:meta])* pub enum $name:ident { $($(#[$vm:meta])* $var:ident = $s:literal),+ $(,)? }) => {
        $(#[$m])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
        pub enum $name {
            $($(#[$vm])* #[serde(rename = $s)] $var),+
        }
        impl $name {
            /// Every spelling, in declaration order.
            pub const VARIANTS: &'static [&'static str] = &[$($s),+];
            pub fn as_str(self) -> &'static str {
                match self { $(Self::$var => $s),+ }
            }
        }
        impl<'de> serde::Deserialize<'de> for $name {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                struct V;
                impl serde::de::Visitor<'_> for V {
                    type Value = $name;
                    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                        write!(f, "one of {}", crate::policy::model::quote_list($name::VARIANTS))
                    }
                    fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<$name, E> {
                        match v {
                            $($s => Ok($name::$var),)+
                            _ => Err(E::unknown_variant(v, $name::VARIANTS)),
                        }
                    }
                }
                d.deserialize_str(V)
            }
        }
    };
}
pub(crate) use string_enum;

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
    /// RFC 3339; decides "oldest wins" between conflicting objects (Istio breaks
    /// ties by name, then namespace; an object without one counts as oldest).
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

impl Metadata {
    /// The namespace, `default` when the object names none (as `kubectl apply`).
    pub fn ns(&self) -> &str {
        self.namespace.as_deref().unwrap_or("default")
    }
}

/// `selector` / `workloadSelector`: labels of the workloads a policy applies to.
#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct WorkloadSelector {
    #[serde(default)]
    pub match_labels: BTreeMap<String, String>,
}

impl WorkloadSelector {
    /// Istio's `SubsetOf`: every selector label is on the workload (an empty
    /// selector selects everything).
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        subset_of(&self.match_labels, labels)
    }
}

/// Whether every pair of `small` is in `big`.
pub fn subset_of(small: &BTreeMap<String, String>, big: &BTreeMap<String, String>) -> bool {
    small.iter().all(|(k, v)| big.get(k) == Some(v))
}
