//! Checks beyond the types. Per object, while its document's text is at hand
//! (so every finding has its line): Istio's validation rules
//! ([`super::validate_istio`]) and this project's (addresses, globs, exemptions
//! that would exempt everything). Across objects: conflicts Istio resolves by
//! age ("the oldest wins") or merges, reported as warnings that say the outcome.

use std::{cell::RefCell, collections::BTreeMap, path::Path};

use super::{
    load::{Diagnostic, Located, PolicyFiles, Severity},
    model::{ConnMatch, Inventory, Metadata, TransportPolicy},
    order::AgeKey,
};

/// Where an object's findings go: its file, its document's text and first line.
pub(crate) struct Spot<'a> {
    pub file: &'a Path,
    pub text: &'a str,
    pub first_line: usize,
    pub diags: RefCell<&'a mut Vec<Diagnostic>>,
}

impl Spot<'_> {
    /// Line and column of a field: each needle is searched from where the
    /// previous one was found (`["spec", "subsets", "name: v1"]`); the last one
    /// found is the answer.
    pub fn at(&self, path: &[&str]) -> (usize, usize) {
        let lines: Vec<&str> = self.text.lines().collect();
        let mut from = 0usize;
        let mut found = (self.first_line, 1);
        for needle in path {
            let keyed = format!("{needle}:");
            let hit = lines
                .iter()
                .enumerate()
                .skip(from)
                .find_map(|(i, l)| l.find(&keyed).or_else(|| l.find(needle)).map(|c| (i, c)));
            if let Some((i, c)) = hit {
                found = (self.first_line + i, c + 1);
                from = i;
            }
        }
        found
    }

    fn push(&self, severity: Severity, path: &[&str], message: String) {
        let (line, column) = self.at(path);
        self.diags.borrow_mut().push(Diagnostic {
            severity,
            file: self.file.to_path_buf(),
            line,
            column,
            message,
        });
    }

    pub fn error(&self, path: &[&str], message: String) {
        self.push(Severity::Error, path, message);
    }

    pub fn warning(&self, path: &[&str], message: String) {
        self.push(Severity::Warning, path, message);
    }
}

/// An address or CIDR.
pub fn parse_net(s: &str) -> Option<ipnet::IpNet> {
    s.parse::<ipnet::IpNet>()
        .ok()
        .or_else(|| s.parse::<std::net::IpAddr>().ok().map(ipnet::IpNet::from))
}

fn cidrs(spot: &Spot<'_>, list: &[String], field: &str) {
    for c in list {
        if parse_net(c).is_none() {
            spot.error(&[c], format!("{field}: `{c}` is not an IP address or CIDR"));
        }
    }
}

fn conn_match(spot: &Spot<'_>, m: &ConnMatch, field: &str) {
    cidrs(
        spot,
        &m.destination_cidrs,
        &format!("{field}.destinationCidrs"),
    );
    cidrs(spot, &m.source_cidrs, &format!("{field}.sourceCidrs"));
    for p in &m.ports {
        if *p == 0 {
            spot.error(
                &["ports"],
                format!("{field}.ports: 0 is not a port number (1-65535)"),
            );
        }
    }
}

pub(crate) fn transport_policy(spot: &Spot<'_>, tp: &TransportPolicy) {
    for (i, r) in tp.spec.rules.iter().enumerate() {
        conn_match(spot, &r.conn_match, &format!("spec.rules[{i}].match"));
    }
    for (i, e) in tp.spec.exemptions.iter().enumerate() {
        let field = format!("spec.exemptions[{i}]");
        let name_at = format!("name: {}", e.name);
        conn_match(spot, &e.conn_match, &format!("{field}.match"));
        match (e.all == Some(true), e.conn_match.is_empty()) {
            (false, true) => spot.error(
                &["exemptions", &name_at],
                format!("{field} ({}): no `match` (or an empty one) would exempt every connection; give a `match`, or `all: true` to exempt everything on purpose", e.name),
            ),
            (true, false) => spot.error(
                &["exemptions", &name_at],
                format!("{field} ({}): `all: true` and a `match` contradict each other; keep one", e.name),
            ),
            _ => {}
        }
    }
    let mut names = BTreeMap::new();
    for r in &tp.spec.rules {
        *names.entry(r.name.as_str()).or_insert(0usize) += 1;
    }
    for (n, count) in names {
        if count > 1 {
            let name_at = format!("name: {n}");
            spot.warning(
                &["rules", &name_at],
                format!(
                    "spec.rules: {count} rules are named `{n}`: reasons will not tell them apart"
                ),
            );
        }
    }
}

pub(crate) fn inventory(spot: &Spot<'_>, inv: &Inventory) {
    for (i, w) in inv.spec.workloads.iter().enumerate() {
        cidrs(
            spot,
            &w.workload_match.addresses,
            &format!("spec.workloads[{i}].match.addresses"),
        );
        for g in &w.workload_match.cgroups {
            if let Err(e) = globset::Glob::new(g) {
                spot.error(
                    &[g],
                    format!("spec.workloads[{i}].match.cgroups: `{g}` is not a valid glob: {e}"),
                );
            }
        }
    }
    for (i, w) in inv.spec.workloads.iter().enumerate() {
        if let Some(l) = &w.linkerd {
            super::validate_linkerd::inventory_workload(spot, i, l);
        }
    }
    for (i, s) in inv.spec.services.iter().enumerate() {
        cidrs(spot, &s.addresses, &format!("spec.services[{i}].addresses"));
    }
}

fn warn<T>(at: &Located<T>, message: String) -> Diagnostic {
    Diagnostic {
        severity: Severity::Warning,
        file: at.file.clone(),
        line: at.line,
        column: 1,
        message,
    }
}

fn no_namespace<T>(diags: &mut Vec<Diagnostic>, l: &Located<T>, kind: &str, meta: &Metadata) {
    if meta.namespace.is_none() {
        diags.push(warn(
            l,
            format!(
                "{kind} {}: no metadata.namespace, assuming `default`",
                meta.name
            ),
        ));
    }
}

/// Checks across objects (their own checks ran as they loaded).
pub(crate) fn validate(p: &PolicyFiles, diags: &mut Vec<Diagnostic>) {
    // PeerAuthentication: one mesh/namespace-wide policy per namespace and one per
    // selector are used, the oldest.
    type Group<'a, T> = Vec<(usize, &'a Located<T>)>;
    let mut ns_wide: BTreeMap<&str, Group<'_, _>> = BTreeMap::new();
    let mut by_selector: BTreeMap<(&str, String), Group<'_, _>> = BTreeMap::new();
    for (i, pa) in p.peer_authentications.iter().enumerate() {
        let meta = &pa.object.metadata;
        no_namespace(diags, pa, "PeerAuthentication", meta);
        let ns = meta.ns();
        match &pa.object.spec.selector {
            Some(sel) if !sel.match_labels.is_empty() => {
                by_selector
                    .entry((ns, format!("{:?}", sel.match_labels)))
                    .or_default()
                    .push((i, pa));
            }
            _ => ns_wide.entry(ns).or_default().push((i, pa)),
        }
    }
    for (ns, list) in &ns_wide {
        conflict(
            diags,
            list,
            &format!("namespace-wide PeerAuthentications in `{ns}`"),
            |l| &l.object.metadata,
        );
    }
    for ((ns, sel), list) in &by_selector {
        conflict(
            diags,
            list,
            &format!("PeerAuthentications in `{ns}` with selector {sel}"),
            |l| &l.object.metadata,
        );
    }

    // DestinationRule: Istio merges the rules of one namespace for one host.
    type HostKey<'a> = (&'a str, &'a str, String);
    let mut by_host: BTreeMap<HostKey, Group<'_, _>> = BTreeMap::new();
    for (i, dr) in p.destination_rules.iter().enumerate() {
        let meta = &dr.object.metadata;
        no_namespace(diags, dr, "DestinationRule", meta);
        let sel = dr
            .object
            .spec
            .workload_selector
            .as_ref()
            .map(|s| format!("{:?}", s.match_labels))
            .unwrap_or_default();
        by_host
            .entry((meta.ns(), dr.object.spec.host.as_str(), sel))
            .or_default()
            .push((i, dr));
    }
    for ((ns, host, _), list) in &by_host {
        merged(diags, list, ns, host);
    }
    for se in &p.service_entries {
        no_namespace(diags, se, "ServiceEntry", &se.object.metadata);
    }
    for (kind, list) in [
        (
            "Server",
            p.servers
                .iter()
                .map(|l| (l.file.clone(), l.line, &l.object.metadata))
                .collect::<Vec<_>>(),
        ),
        (
            "AuthorizationPolicy",
            p.authorization_policies
                .iter()
                .map(|l| (l.file.clone(), l.line, &l.object.metadata))
                .collect(),
        ),
        (
            "MeshTLSAuthentication",
            p.meshtls_authentications
                .iter()
                .map(|l| (l.file.clone(), l.line, &l.object.metadata))
                .collect(),
        ),
        (
            "NetworkAuthentication",
            p.network_authentications
                .iter()
                .map(|l| (l.file.clone(), l.line, &l.object.metadata))
                .collect(),
        ),
    ] {
        for (file, line, meta) in list {
            if meta.namespace.is_none() {
                diags.push(Diagnostic {
                    severity: Severity::Warning,
                    file,
                    line,
                    column: 1,
                    message: format!(
                        "{kind} {}: no metadata.namespace, assuming `default`",
                        meta.name
                    ),
                });
            }
        }
    }
    super::validate_linkerd::across(p, diags);
    if p.mesh_configs.len() > 1 {
        for m in &p.mesh_configs[1..] {
            diags.push(warn(
                m,
                "more than one mesh config (ConfigMap `istio`): the first one loaded is used"
                    .into(),
            ));
        }
    }
}

fn conflict<T>(
    diags: &mut Vec<Diagnostic>,
    list: &[(usize, &Located<T>)],
    what: &str,
    meta: impl Fn(&Located<T>) -> &Metadata,
) {
    if list.len() < 2 {
        return;
    }
    let Some(&(winner_idx, winner)) = list.iter().min_by_key(|(i, l)| AgeKey::new(meta(l), *i))
    else {
        return;
    };
    for (i, l) in list {
        if *i != winner_idx {
            diags.push(warn(
                l,
                format!(
                    "{what} conflict: `{}` is ignored, the oldest (`{}`, line {}) wins",
                    meta(l).name,
                    meta(winner).name,
                    winner.line
                ),
            ));
        }
    }
}

/// DestinationRules of one namespace for one host (and selector): Istio merges
/// them, oldest first; only the first traffic policy counts, subsets add up.
fn merged(
    diags: &mut Vec<Diagnostic>,
    list: &[(usize, &Located<super::model::DestinationRule>)],
    ns: &str,
    host: &str,
) {
    if list.len() < 2 {
        return;
    }
    let mut sorted: Vec<_> = list.to_vec();
    sorted.sort_by_key(|(i, l)| AgeKey::new(&l.object.metadata, *i));
    let mut policy_from: Option<&Located<super::model::DestinationRule>> = None;
    for (_, l) in &sorted {
        let has_policy = l.object.spec.traffic_policy.is_some();
        match policy_from {
            Some(first) if has_policy => diags.push(warn(
                l,
                format!(
                    "DestinationRules in `{ns}` for host `{host}` are merged: the trafficPolicy of `{}` is ignored, the older `{}` (line {}) has one; its subsets are kept",
                    l.object.metadata.name, first.object.metadata.name, first.line
                ),
            )),
            None if has_policy => policy_from = Some(l),
            _ => {}
        }
    }
}

/// Runs the per-object checks of one parsed document.
pub(crate) fn object<T: Checked>(
    file: &Path,
    text: &str,
    first_line: usize,
    o: &T,
    diags: &mut Vec<Diagnostic>,
) {
    let spot = Spot {
        file,
        text,
        first_line,
        diags: RefCell::new(diags),
    };
    o.check(&spot);
}

/// An object with checks of its own.
pub(crate) trait Checked {
    fn check(&self, spot: &Spot<'_>);
}

impl Checked for super::model::PeerAuthentication {
    fn check(&self, spot: &Spot<'_>) {
        super::validate_istio::metadata(spot, "PeerAuthentication", &self.metadata);
        super::validate_istio::peer_authentication(spot, self);
    }
}

impl Checked for super::model::DestinationRule {
    fn check(&self, spot: &Spot<'_>) {
        super::validate_istio::metadata(spot, "DestinationRule", &self.metadata);
        super::validate_istio::destination_rule(spot, self);
    }
}

impl Checked for super::model::ServiceEntry {
    fn check(&self, spot: &Spot<'_>) {
        super::validate_istio::metadata(spot, "ServiceEntry", &self.metadata);
        super::validate_istio::service_entry(spot, self);
    }
}

impl Checked for TransportPolicy {
    fn check(&self, spot: &Spot<'_>) {
        super::validate_istio::metadata(spot, "TransportPolicy", &self.metadata);
        transport_policy(spot, self);
    }
}

impl Checked for Inventory {
    fn check(&self, spot: &Spot<'_>) {
        if let Some(m) = &self.metadata {
            super::validate_istio::metadata(spot, "Inventory", m);
        }
        inventory(spot, self);
    }
}
