//! Client side: which DestinationRule a client uses for a service, as Istio's
//! pilot builds it (`setDestinationRules`, `mergeDestinationRule`,
//! `destinationRule`, `SidecarScope.DestinationRule`), indexed once per load.
//!
//! - Rules are taken in Istio's order: those with a `workloadSelector` first,
//!   then by creation time, name, namespace. Short hosts become
//!   `host.namespace.svc.<domain>`.
//! - Per namespace, rules for the same host are merged (with the same
//!   `exportTo`): later rules' subsets are appended (a duplicate name is dropped),
//!   and their `trafficPolicy` is used only when the merged rule has none. A rule
//!   with a selector also takes in the catch-all rule of its host (so it inherits
//!   its traffic policy when it has none) and stays a separate entry.
//! - A client in namespace N looks in N's rules (all of them, exported or not),
//!   then in the service's namespace's exported rules, then in the root
//!   namespace's; a client in the root namespace first looks at the root
//!   namespace's private rules. Within one namespace the most specific host wins
//!   (exact, else the longest wildcard suffix). Among the entries found, a rule of
//!   the client's namespace whose selector matches the client wins, else the
//!   catch-all.

use std::collections::{BTreeMap, BTreeSet};

use foldhash::HashMap;

use super::{
    load::Located,
    model::{ClientTlsSettings, DestinationRule, DestinationRuleSpec, Subset},
    order::AgeKey,
};

/// One entry of Istio's consolidated rules: a rule with what was merged into it.
#[derive(Debug, Clone, PartialEq)]
pub struct ConsolidatedRule {
    /// The merged spec; `host` is the resolved FQDN (or wildcard).
    pub spec: DestinationRuleSpec,
    /// `spec.host` as the first rule wrote it.
    pub host_as_written: String,
    /// Namespace and name of the first (oldest) rule.
    pub namespace: String,
    pub name: String,
    /// `namespace/name` of every rule merged into this entry, the first first.
    pub from: Vec<String>,
    /// The rule whose `trafficPolicy` is used (`namespace/name`).
    pub policy_from: Option<String>,
    /// `exportTo` of the first rule (`.` kept as written).
    pub export_to: BTreeSet<String>,
}

impl ConsolidatedRule {
    pub fn label(&self) -> String {
        format!("DestinationRule {}/{}", self.namespace, self.name)
    }
}

/// Rules of one namespace (or visibility pool), by host.
#[derive(Debug, Default)]
struct Pool {
    specific: HashMap<String, Vec<ConsolidatedRule>>,
    /// Wildcard hosts by what follows the `*` (`*.foo.com` under `.foo.com`).
    wildcard: HashMap<String, Vec<ConsolidatedRule>>,
}

impl Pool {
    fn merge(&mut self, rule: &DestinationRule, host: String, export_to: BTreeSet<String>) {
        let map = match host.strip_prefix('*') {
            Some(rest) => self.wildcard.entry(rest.to_owned()).or_default(),
            None => self.specific.entry(host.clone()).or_default(),
        };
        let id = format!("{}/{}", rule.metadata.ns(), rule.metadata.name);
        let fresh = || {
            let mut spec = rule.spec.clone();
            spec.host.clone_from(&host);
            ConsolidatedRule {
                host_as_written: rule.spec.host.clone(),
                policy_from: spec.traffic_policy.as_ref().map(|_| id.clone()),
                spec,
                namespace: rule.metadata.ns().to_owned(),
                name: rule.metadata.name.clone(),
                from: vec![id.clone()],
                export_to: export_to.clone(),
            }
        };
        if map.is_empty() {
            map.push(fresh());
            return;
        }
        let mut append_separately = true;
        let sel = rule.spec.workload_selector.as_ref();
        for mdr in map.iter_mut() {
            // ENABLE_ENHANCED_DESTINATIONRULE_MERGE (on by default).
            if export_to == mdr.export_to {
                append_separately = false;
            } else if !mdr.export_to.is_empty() && export_to.is_superset(&mdr.export_to) {
                append_separately = true;
            } else {
                append_separately = true;
                continue;
            }
            let existing = mdr.spec.workload_selector.as_ref();
            let both_without = sel.is_none() && existing.is_none();
            let both_with = sel.is_some() && existing.is_some();
            let empty = BTreeMap::new();
            let selectors_match = existing.map_or(&empty, |s| &s.match_labels)
                == sel.map_or(&empty, |s| &s.match_labels);
            if both_with && !selectors_match {
                append_separately = true;
                continue;
            }
            if both_without || (both_with && selectors_match) {
                append_separately = false;
            }
            mdr.from.push(id.clone());
            let names: BTreeSet<String> = mdr.spec.subsets.iter().map(|s| s.name.clone()).collect();
            for s in &rule.spec.subsets {
                if !names.contains(&s.name) {
                    mdr.spec.subsets.push(s.clone());
                }
            }
            if mdr.spec.traffic_policy.is_none() && rule.spec.traffic_policy.is_some() {
                mdr.spec
                    .traffic_policy
                    .clone_from(&rule.spec.traffic_policy);
                mdr.policy_from = Some(id.clone());
            }
        }
        if append_separately {
            map.push(fresh());
        }
    }

    /// Istio's `MostSpecificHostMatch`.
    fn lookup(&self, needle: &str) -> Option<&[ConsolidatedRule]> {
        let rest = match needle.strip_prefix('*') {
            Some(rest) => {
                if let Some(v) = self.wildcard.get(rest) {
                    return Some(v);
                }
                rest
            }
            None => {
                if let Some(v) = self.specific.get(needle) {
                    return Some(v);
                }
                needle
            }
        };
        // The longest wildcard whose tail ends `rest` (a wildcard needle only
        // matches wildcards: its tail starts with the needle's).
        (0..=rest.len())
            .filter(|&i| rest.is_char_boundary(i))
            .find_map(|i| self.wildcard.get(&rest[i..]))
            .map(Vec::as_slice)
    }
}

/// DestinationRules indexed as Istio's push context keeps them.
#[derive(Debug, Default)]
pub struct DestinationIndex {
    namespace_local: HashMap<String, Pool>,
    exported: HashMap<String, Pool>,
    root_local: Pool,
    root_namespace: String,
}

/// A short host (`reviews`) is relative to the rule's namespace; `*`, addresses
/// and names with a dot are taken as written (Istio's `ResolveShortnameToFQDN`).
pub fn resolve_host(host: &str, ns: &str, domain: &str) -> String {
    if host == "*" || host.contains('.') || host.parse::<std::net::IpAddr>().is_ok() {
        host.to_owned()
    } else {
        format!("{host}.{ns}.svc.{domain}")
    }
}

impl DestinationIndex {
    pub fn new(drs: &[Located<DestinationRule>], root_namespace: &str, domain: &str) -> Self {
        let mut order: Vec<usize> = (0..drs.len()).collect();
        order.sort_by_cached_key(|&i| {
            let o = &drs[i].object;
            (
                o.spec.workload_selector.is_none(),
                AgeKey::new(&o.metadata, i),
            )
        });
        let mut idx = Self {
            root_namespace: root_namespace.to_owned(),
            ..Self::default()
        };
        for i in order {
            let rule = &drs[i].object;
            let ns = rule.metadata.ns();
            let host = resolve_host(&rule.spec.host, ns, domain);
            // A rule with a selector is never exported.
            let export_to: BTreeSet<String> = if rule.spec.workload_selector.is_none() {
                rule.spec.export_to.iter().cloned().collect()
            } else {
                [".".to_owned()].into()
            };
            if export_to.is_empty()
                || export_to.contains("*")
                || export_to.contains(".")
                || export_to.contains(ns)
            {
                idx.namespace_local.entry(ns.to_owned()).or_default().merge(
                    rule,
                    host.clone(),
                    export_to.clone(),
                );
            }
            // The mesh's default exportTo for DestinationRules is public.
            let private_only =
                export_to.len() == 1 && (export_to.contains(".") || export_to.contains(ns));
            if !private_only {
                idx.exported
                    .entry(ns.to_owned())
                    .or_default()
                    .merge(rule, host, export_to);
            } else if ns == root_namespace {
                idx.root_local.merge(rule, host, export_to);
            }
        }
        idx
    }

    /// Istio's `PushContext.destinationRule`: the entries a client in
    /// `client_ns` sees for a service (`host` in `service_ns`).
    pub fn for_service(
        &self,
        client_ns: &str,
        host: &str,
        service_ns: &str,
    ) -> Vec<&ConsolidatedRule> {
        let local = if client_ns == self.root_namespace {
            self.root_local.lookup(host)
        } else {
            self.namespace_local
                .get(client_ns)
                .and_then(|p| p.lookup(host))
        };
        if let Some(v) = local {
            return v.iter().collect();
        }
        let exported = |ns: &str| -> Vec<&ConsolidatedRule> {
            self.exported
                .get(ns)
                .and_then(|p| p.lookup(host))
                .map(|v| {
                    v.iter()
                        .filter(|r| {
                            r.export_to.is_empty()
                                || r.export_to.contains("*")
                                || r.export_to.contains(client_ns)
                        })
                        .collect()
                })
                .unwrap_or_default()
        };
        if !service_ns.is_empty() {
            let out = exported(service_ns);
            if !out.is_empty() {
                return out;
            }
        }
        exported(&self.root_namespace)
    }

    /// Istio's `SidecarScope.DestinationRule` for outbound traffic: the entry a
    /// client (namespace, labels) uses.
    pub fn for_client<'a>(
        &'a self,
        client_ns: &str,
        client_labels: &BTreeMap<String, String>,
        host: &str,
        service_ns: &str,
    ) -> Option<&'a ConsolidatedRule> {
        let mut catch_all = None;
        for r in self.for_service(client_ns, host, service_ns) {
            match &r.spec.workload_selector {
                None => catch_all = Some(r),
                Some(sel) if r.namespace == client_ns && sel.matches(client_labels) => {
                    return Some(r);
                }
                Some(_) => {}
            }
        }
        catch_all
    }
}

/// The subset whose labels a destination's labels carry (the first such subset
/// with labels), as a stand-in for the route that chose it: the auditor sees the
/// connection reach a pod, not the VirtualService that sent it there.
pub fn subset_for<'a>(
    rule: &'a ConsolidatedRule,
    labels: &BTreeMap<String, String>,
) -> Option<&'a Subset> {
    rule.spec
        .subsets
        .iter()
        .find(|s| !s.labels.is_empty() && super::model::subset_of(&s.labels, labels))
}

/// The client TLS settings for a port (and subset), with the field that holds
/// them: `portLevelSettings` replace the whole traffic policy (nothing inherited),
/// a subset's policy overrides the rule's `tls` when it sets one (or has a
/// port-level entry for the port). Istio's `MergeSubsetTrafficPolicy`.
pub fn tls_for<'a>(
    rule: &'a ConsolidatedRule,
    subset: Option<&'a Subset>,
    port: u16,
) -> (Option<&'a ClientTlsSettings>, String) {
    let (mut tls, top_port) = match &rule.spec.traffic_policy {
        Some(tp) => tp.for_port(port),
        None => (None, false),
    };
    let mut field = if top_port {
        format!("spec.trafficPolicy.portLevelSettings[{port}].tls")
    } else {
        "spec.trafficPolicy.tls".to_owned()
    };
    if let Some(s) = subset
        && let Some(tp) = &s.traffic_policy
    {
        let (st, port_level) = tp.for_port(port);
        if st.is_some() || port_level {
            tls = st;
            field = if port_level {
                format!(
                    "spec.subsets[{}].trafficPolicy.portLevelSettings[{port}].tls",
                    s.name
                )
            } else {
                format!("spec.subsets[{}].trafficPolicy.tls", s.name)
            };
        }
    }
    (tls, field)
}
