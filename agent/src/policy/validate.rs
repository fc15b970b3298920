//! Checks beyond the types: values that must parse, and conflicts Istio resolves by
//! age ("the oldest wins"), reported as warnings.

use std::collections::BTreeMap;

use super::{
    load::{Diagnostic, Located, PolicyFiles, Severity, locate},
    model::{ConnMatch, Metadata},
};

fn warn<T>(at: &Located<T>, message: String) -> Diagnostic {
    Diagnostic {
        severity: Severity::Warning,
        file: at.file.clone(),
        line: at.line,
        column: 1,
        message,
    }
}

fn error_at(file: &std::path::Path, text_line: (usize, usize), message: String) -> Diagnostic {
    Diagnostic {
        severity: Severity::Error,
        file: file.to_path_buf(),
        line: text_line.0,
        column: text_line.1,
        message,
    }
}

pub(crate) fn namespace(meta: &Metadata) -> &str {
    meta.namespace.as_deref().unwrap_or("default")
}

/// Age order key: creationTimestamp when known, else load order.
pub(crate) fn age_key(meta: &Metadata, index: usize) -> (String, usize) {
    (
        meta.creation_timestamp
            .clone()
            .unwrap_or_else(|| "~".to_owned()),
        index,
    )
}

fn read_doc(file: &std::path::Path) -> String {
    std::fs::read_to_string(file).unwrap_or_default()
}

fn check_cidrs(
    list: &[String],
    field: &str,
    file: &std::path::Path,
    line: usize,
    diags: &mut Vec<Diagnostic>,
) {
    for c in list {
        if parse_net(c).is_none() {
            let text = read_doc(file);
            let pos = locate_from(&text, line, c);
            diags.push(error_at(
                file,
                pos,
                format!("{field}: `{c}` is not an IP address or CIDR"),
            ));
        }
    }
}

/// Finds `needle` at or after line `from` of the whole file.
fn locate_from(text: &str, from: usize, needle: &str) -> (usize, usize) {
    let skip: usize = text
        .split_inclusive('\n')
        .take(from.saturating_sub(1))
        .map(str::len)
        .sum();
    locate(&text[skip.min(text.len())..], from, needle)
}

/// An address or CIDR.
pub fn parse_net(s: &str) -> Option<ipnet::IpNet> {
    s.parse::<ipnet::IpNet>()
        .ok()
        .or_else(|| s.parse::<std::net::IpAddr>().ok().map(ipnet::IpNet::from))
}

fn check_match(
    m: &ConnMatch,
    prefix: &str,
    file: &std::path::Path,
    line: usize,
    diags: &mut Vec<Diagnostic>,
) {
    check_cidrs(
        &m.destination_cidrs,
        &format!("{prefix}.destinationCidrs"),
        file,
        line,
        diags,
    );
    check_cidrs(
        &m.source_cidrs,
        &format!("{prefix}.sourceCidrs"),
        file,
        line,
        diags,
    );
}

pub(crate) fn validate(p: &PolicyFiles, diags: &mut Vec<Diagnostic>) {
    // PeerAuthentication.
    let mut ns_wide: BTreeMap<&str, Vec<(usize, &Located<_>)>> = BTreeMap::new();
    let mut by_selector: BTreeMap<(&str, String), Vec<(usize, &Located<_>)>> = BTreeMap::new();
    for (i, pa) in p.peer_authentications.iter().enumerate() {
        let meta = &pa.object.metadata;
        if meta.namespace.is_none() {
            diags.push(warn(
                pa,
                format!(
                    "PeerAuthentication {}: no metadata.namespace, assuming `default`",
                    meta.name
                ),
            ));
        }
        let ns = namespace(meta);
        match &pa.object.spec.selector {
            Some(sel) if !sel.match_labels.is_empty() => {
                by_selector
                    .entry((ns, format!("{:?}", sel.match_labels)))
                    .or_default()
                    .push((i, pa));
            }
            _ => {
                if !pa.object.spec.port_level_mtls.is_empty() {
                    diags.push(warn(
                        pa,
                        format!(
                            "PeerAuthentication {ns}/{}: spec.portLevelMtls has no effect without spec.selector (Istio ignores it)",
                            meta.name
                        ),
                    ));
                }
                ns_wide.entry(ns).or_default().push((i, pa));
            }
        }
    }
    for (ns, list) in &ns_wide {
        conflict(
            diags,
            list.as_slice(),
            &format!("namespace-wide PeerAuthentications in `{ns}`"),
            |l| &l.object.metadata,
        );
    }
    for ((ns, sel), list) in &by_selector {
        conflict(
            diags,
            list.as_slice(),
            &format!("PeerAuthentications in `{ns}` with selector {sel}"),
            |l| &l.object.metadata,
        );
    }

    // DestinationRule.
    // (namespace, host, workload selector) -> the rules with that key, and their index.
    type HostKey<'a> = (&'a str, &'a str, String);
    let mut by_host: BTreeMap<HostKey, Vec<(usize, &Located<_>)>> = BTreeMap::new();
    for (i, dr) in p.destination_rules.iter().enumerate() {
        let meta = &dr.object.metadata;
        if meta.namespace.is_none() {
            diags.push(warn(
                dr,
                format!(
                    "DestinationRule {}: no metadata.namespace, assuming `default`",
                    meta.name
                ),
            ));
        }
        let sel = dr
            .object
            .spec
            .workload_selector
            .as_ref()
            .map(|s| format!("{:?}", s.match_labels))
            .unwrap_or_default();
        by_host
            .entry((namespace(meta), dr.object.spec.host.as_str(), sel))
            .or_default()
            .push((i, dr));
        if dr.object.spec.host.is_empty() {
            let text = read_doc(&dr.file);
            diags.push(error_at(
                &dr.file,
                locate_from(&text, dr.line, "host"),
                "spec.host: must not be empty".into(),
            ));
        }
    }
    for ((ns, host, _), list) in &by_host {
        conflict(
            diags,
            list.as_slice(),
            &format!("DestinationRules in `{ns}` for host `{host}`"),
            |l| &l.object.metadata,
        );
    }

    // TransportPolicy.
    for tp in &p.transport_policies {
        for (i, r) in tp.object.spec.rules.iter().enumerate() {
            check_match(
                &r.conn_match,
                &format!("spec.rules[{i}].match"),
                &tp.file,
                tp.line,
                diags,
            );
        }
        for (i, e) in tp.object.spec.exemptions.iter().enumerate() {
            check_match(
                &e.conn_match,
                &format!("spec.exemptions[{i}].match"),
                &tp.file,
                tp.line,
                diags,
            );
        }
    }

    // Inventory.
    for inv in &p.inventories {
        for (i, w) in inv.object.spec.workloads.iter().enumerate() {
            check_cidrs(
                &w.workload_match.addresses,
                &format!("spec.workloads[{i}].match.addresses"),
                &inv.file,
                inv.line,
                diags,
            );
            for g in &w.workload_match.cgroups {
                if let Err(e) = globset::Glob::new(g) {
                    let text = read_doc(&inv.file);
                    diags.push(error_at(
                        &inv.file,
                        locate_from(&text, inv.line, g),
                        format!(
                            "spec.workloads[{i}].match.cgroups: `{g}` is not a valid glob: {e}"
                        ),
                    ));
                }
            }
        }
        for (i, s) in inv.object.spec.services.iter().enumerate() {
            check_cidrs(
                &s.addresses,
                &format!("spec.services[{i}].addresses"),
                &inv.file,
                inv.line,
                diags,
            );
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
    let Some(&(winner_idx, winner)) = list.iter().min_by_key(|(i, l)| age_key(meta(l), *i)) else {
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
