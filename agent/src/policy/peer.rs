//! Server side: which PeerAuthentication mode a workload's port has, as Istio's
//! pilot composes it (`ComposePeerAuthentication`), from an index built once per
//! policy load so that a lookup costs a few hash probes whatever the number of
//! policies.
//!
//! Start from PERMISSIVE; the oldest mesh-wide policy (root namespace, no
//! selector) overrides unless UNSET; then the oldest namespace-wide policy of the
//! workload's namespace; then the oldest policy of that namespace whose selector
//! matches the workload (policies with a selector in the root namespace are
//! ignored), whose `portLevelMtls` entry for the port wins over its `mtls` (an
//! UNSET port entry inherits). "Oldest" is Istio's order ([`super::order`]).

use std::collections::BTreeMap;

use foldhash::{HashMap, HashMapExt as _};

use super::{
    load::Located,
    model::{PeerAuthentication, PeerMode},
    order::AgeKey,
};

/// The result of the PeerAuthentication lookup.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerDecision {
    pub mode: PeerMode,
    /// `PeerAuthentication ns/name spec.field=MODE`, or the default.
    pub source: String,
}

/// The source of a decision no PeerAuthentication made.
pub const DEFAULT_SOURCE: &str = "Istio default (no PeerAuthentication applies): PERMISSIVE";

/// PeerAuthentications indexed for lookups.
#[derive(Debug, Default)]
pub struct PeerIndex {
    /// Each object's rank in Istio's order (0 = oldest), by position in the list.
    rank: Vec<usize>,
    mesh: Option<usize>,
    /// The oldest namespace-wide policy of each namespace but the root.
    namespace: HashMap<String, usize>,
    /// Policies with a selector, per namespace (not the root), under one of
    /// their selector's label pairs: label key -> value -> policies, oldest first.
    workload: HashMap<String, HashMap<String, HashMap<String, Vec<usize>>>>,
    root_namespace: String,
}

impl PeerDecision {
    /// No PeerAuthentication set the mode: Istio's default PERMISSIVE.
    pub fn is_default(&self) -> bool {
        self.source == DEFAULT_SOURCE
    }
}

impl PeerIndex {
    pub fn new(pas: &[Located<PeerAuthentication>], root_namespace: &str) -> Self {
        let mut order: Vec<usize> = (0..pas.len()).collect();
        order.sort_by_cached_key(|&i| AgeKey::new(&pas[i].object.metadata, i));
        let mut rank = vec![0; pas.len()];
        for (r, &i) in order.iter().enumerate() {
            rank[i] = r;
        }
        let mut idx = Self {
            rank,
            root_namespace: root_namespace.to_owned(),
            namespace: HashMap::new(),
            workload: HashMap::new(),
            mesh: None,
        };
        for &i in &order {
            let pa = &pas[i].object;
            let ns = pa.metadata.ns();
            if !pa.spec.has_selector() {
                if ns == root_namespace {
                    idx.mesh.get_or_insert(i);
                } else {
                    idx.namespace.entry(ns.to_owned()).or_insert(i);
                }
            } else if ns != root_namespace
                && let Some(sel) = &pa.spec.selector
                && let Some((k, v)) = sel.match_labels.iter().next()
            {
                idx.workload
                    .entry(ns.to_owned())
                    .or_default()
                    .entry(k.clone())
                    .or_default()
                    .entry(v.clone())
                    .or_default()
                    .push(i);
            }
        }
        idx
    }

    /// The oldest workload-level policy of `ns` whose selector matches `labels`.
    fn workload_policy(
        &self,
        pas: &[Located<PeerAuthentication>],
        ns: &str,
        labels: &BTreeMap<String, String>,
    ) -> Option<usize> {
        let by_key = self.workload.get(ns)?;
        let mut best: Option<usize> = None;
        for (k, v) in labels {
            let Some(list) = by_key.get(k).and_then(|m| m.get(v)) else {
                continue;
            };
            // Oldest first: the first that matches is this bucket's answer.
            if let Some(&i) = list.iter().find(|&&i| {
                pas[i]
                    .object
                    .spec
                    .selector
                    .as_ref()
                    .is_some_and(|s| s.matches(labels))
            }) && best.is_none_or(|b| self.rank[i] < self.rank[b])
            {
                best = Some(i);
            }
        }
        best
    }

    /// PeerAuthentication mode for a workload (namespace, labels) and port.
    pub fn mode(
        &self,
        pas: &[Located<PeerAuthentication>],
        ns: &str,
        labels: &BTreeMap<String, String>,
        port: u16,
    ) -> PeerDecision {
        let mut out = PeerDecision {
            mode: PeerMode::Permissive,
            source: DEFAULT_SOURCE.into(),
        };
        let namespace = if ns == self.root_namespace {
            None
        } else {
            self.namespace.get(ns).copied()
        };
        let workload = if ns == self.root_namespace {
            None
        } else {
            self.workload_policy(pas, ns, labels)
        };
        // Narrower policies override wider ones; UNSET inherits.
        for i in [self.mesh, namespace, workload].into_iter().flatten() {
            let pa = &pas[i].object;
            let m = pa.spec.mode();
            if m != PeerMode::Unset {
                out = PeerDecision {
                    mode: m,
                    source: pa_ref(pa, "spec.mtls.mode", m),
                };
            }
        }
        // Port-level modes only count on a workload-selected policy, as in Istio.
        if let Some(i) = workload
            && let Some(pm) = pas[i]
                .object
                .spec
                .port_level_mtls
                .as_ref()
                .and_then(|m| m.get(&port))
        {
            let pm = pm.mode();
            if pm != PeerMode::Unset {
                out = PeerDecision {
                    mode: pm,
                    source: pa_ref(
                        &pas[i].object,
                        &format!("spec.portLevelMtls[{port}].mode"),
                        pm,
                    ),
                };
            }
        }
        out
    }

    /// Istio's `GetNamespaceMutualTLSMode`: the namespace-level mode (the
    /// namespace's policy, inheriting the mesh's when UNSET), `None` where Istio
    /// says MTLSUnknown (no mesh-wide and no namespace-wide policy). Auto-mTLS
    /// reads it for the destination service's namespace.
    pub fn namespace_mode(
        &self,
        pas: &[Located<PeerAuthentication>],
        ns: &str,
    ) -> Option<PeerMode> {
        let mesh = self.mesh.map(|i| match pas[i].object.spec.mode() {
            // UNSET is PERMISSIVE for a mesh-wide policy.
            PeerMode::Unset => PeerMode::Permissive,
            m => m,
        });
        match self.namespace.get(ns) {
            Some(&i) => Some(match pas[i].object.spec.mode() {
                PeerMode::Unset => mesh.unwrap_or(PeerMode::Permissive),
                m => m,
            }),
            None => mesh,
        }
    }

    /// Istio's `GetPeerAuthenticationsForWorkload`: the policies of the
    /// workload's namespace and of the root namespace whose selector is a subset
    /// of the workload's labels (only the oldest namespace-wide one of each
    /// namespace), oldest first within each namespace.
    pub fn for_workload<'a>(
        &self,
        pas: &'a [Located<PeerAuthentication>],
        ns: &str,
        labels: &BTreeMap<String, String>,
    ) -> Vec<&'a Located<PeerAuthentication>> {
        let mut namespaces = vec![ns];
        if ns != self.root_namespace {
            namespaces.push(&self.root_namespace);
        }
        let mut out = Vec::new();
        for n in namespaces {
            let mut list: Vec<usize> = (0..pas.len())
                .filter(|&i| {
                    let pa = &pas[i].object;
                    pa.metadata.ns() == n
                        && if pa.spec.has_selector() {
                            pa.spec.selector.as_ref().is_some_and(|s| s.matches(labels))
                        } else if n == self.root_namespace {
                            self.mesh == Some(i)
                        } else {
                            self.namespace.get(n) == Some(&i)
                        }
                })
                .collect();
            list.sort_by_key(|&i| self.rank[i]);
            out.extend(list.into_iter().map(|i| &pas[i]));
        }
        out
    }
}

pub(crate) fn pa_ref(pa: &PeerAuthentication, field: &str, mode: PeerMode) -> String {
    format!(
        "PeerAuthentication {}/{} {field}={}",
        pa.metadata.ns(),
        pa.metadata.name,
        mode.as_str()
    )
}
