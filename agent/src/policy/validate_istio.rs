//! Istio's own validation (what `istioctl validate` and the admission webhook
//! refuse or warn about), rule by rule, for the objects the auditor reads. Each
//! message names the Istio rule it follows: `(Istio: validateSubsetName)` is the
//! function of `pkg/config/validation` that refuses the same thing.
//!
//! Not checked (the auditor does not interpret these fields, they have no
//! bearing on transport security): connection pools, outlier detection, load
//! balancer settings, tunnel settings, ServiceEntry endpoints and protocols.

use std::collections::BTreeSet;

use super::{
    model::{
        ClientTlsSettings, DestinationRule, Metadata, PeerAuthentication, Resolution, ServiceEntry,
        Subset, TlsMode, TrafficPolicy, WorkloadSelector,
    },
    validate::Spot,
};

/// RFC 1123 label: lowercase or uppercase letters, digits, `-` inside, at most 63.
pub fn dns1123_label(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= 63
        && b[0].is_ascii_alphanumeric()
        && b[b.len() - 1].is_ascii_alphanumeric()
        && b.iter().all(|c| c.is_ascii_alphanumeric() || *c == b'-')
}

/// A label with an optional leading `*` or `*-`, or `*` alone (Istio's
/// `IsWildcardDNS1123Label`).
fn wildcard_label(s: &str) -> bool {
    if s.len() > 63 {
        return false;
    }
    s == "*"
        || dns1123_label(
            s.strip_prefix("*-")
                .or_else(|| s.strip_prefix('*'))
                .unwrap_or(s),
        )
}

/// Istio's `ValidateDNS1123Labels`.
fn dns1123_labels(domain: &str) -> Result<(), String> {
    let parts: Vec<&str> = domain.split('.').collect();
    let tld = parts.last().copied().unwrap_or_default();
    if !tld.is_empty() && tld.bytes().all(|c| c.is_ascii_digit()) {
        return Err(format!(
            "domain name {domain:?} invalid (top level domain {tld:?} cannot be all-numeric)"
        ));
    }
    for (i, label) in parts.iter().enumerate() {
        if i == parts.len() - 1 && label.is_empty() {
            return Ok(());
        }
        if !dns1123_label(label) {
            return Err(format!(
                "domain name {domain:?} invalid (label {label:?} invalid)"
            ));
        }
    }
    Ok(())
}

/// Istio's `ValidateWildcardDomain`: a wildcard only in the first label.
pub fn wildcard_domain(domain: &str) -> Result<(), String> {
    if domain.len() > 255 {
        return Err(format!("domain name {domain:?} too long (max 255)"));
    }
    if domain.is_empty() {
        return Err("empty domain name not allowed".into());
    }
    let (first, rest) = match domain.split_once('.') {
        Some((f, r)) => (f, Some(r)),
        None => (domain, None),
    };
    if !wildcard_label(first) {
        return Err(format!(
            "domain name {domain:?} invalid (label {first:?} invalid)"
        ));
    }
    match rest {
        Some(r) => dns1123_labels(r),
        None => Ok(()),
    }
}

/// A Kubernetes label key: optional DNS prefix and `/`, then a name of letters,
/// digits, `-`, `_`, `.` (starting and ending alphanumeric), at most 63.
fn label_key(k: &str) -> bool {
    let (prefix, name) = match k.rsplit_once('/') {
        Some((p, n)) => (Some(p), n),
        None => (None, k),
    };
    let name_ok = qualified_name(name) && name.len() <= 63;
    let prefix_ok = prefix.is_none_or(|p| p.len() <= 253 && p.split('.').all(dns1123_label));
    name_ok && prefix_ok
}

fn qualified_name(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b[0].is_ascii_alphanumeric()
        && b[b.len() - 1].is_ascii_alphanumeric()
        && b.iter()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.'))
}

/// A label value: empty, or a qualified name.
fn label_value(v: &str) -> bool {
    v.is_empty() || qualified_name(v)
}

fn labels(spot: &Spot<'_>, field: &str, labels: &std::collections::BTreeMap<String, String>) {
    for (k, v) in labels {
        if !label_key(k) {
            spot.error(
                &[field, k],
                format!("{field}: invalid tag key: {k:?} (Istio: labels.Instance.Validate)"),
            );
        }
        if !label_value(v) {
            spot.error(
                &[field, k],
                format!("{field}: invalid tag value: {v:?} (Istio: labels.Instance.Validate)"),
            );
        }
    }
}

/// Istio's `validateWorkloadSelector`.
fn workload_selector(spot: &Spot<'_>, field: &str, sel: Option<&WorkloadSelector>) {
    let Some(sel) = sel else { return };
    for (k, v) in &sel.match_labels {
        if k.is_empty() {
            spot.error(&[field], format!("{field}: empty key is not supported in selector: \"={v}\" (Istio: validateWorkloadSelector)"));
        }
        if k.contains('*') || v.contains('*') {
            spot.error(&[field, k], format!("{field}: wildcard is not supported in selector: \"{k}={v}\" (Istio: validateWorkloadSelector)"));
        }
    }
    if sel.match_labels.is_empty() {
        spot.warning(&[field], format!("{field}: workload selector specified without labels (Istio: validateWorkloadSelector): it selects every workload of the namespace"));
    }
}

/// Istio's `ValidatePeerAuthentication`.
pub(crate) fn peer_authentication(spot: &Spot<'_>, pa: &PeerAuthentication) {
    let spec = &pa.spec;
    if let Some(ports) = &spec.port_level_mtls {
        if !spec.has_selector() && !ports.is_empty() {
            spot.error(&["spec", "portLevelMtls"], "spec.portLevelMtls: mesh/namespace peer authentication cannot have port level mTLS (Istio: ValidatePeerAuthentication): add spec.selector or remove it".into());
        }
        if ports.is_empty() {
            spot.error(&["spec", "portLevelMtls"], "spec.portLevelMtls: port level mTLS, if defined, must have at least one element (Istio: ValidatePeerAuthentication)".into());
        }
    }
    workload_selector(spot, "spec.selector", spec.selector.as_ref());
}

/// Istio's `ValidateTLS` (client TLS settings of a DestinationRule).
fn client_tls(spot: &Spot<'_>, at: &[&str], field: &str, ns: &str, t: &ClientTlsSettings) {
    let mode = t.mode();
    let err = |m: &str| spot.error(at, format!("{field}: {m}"));
    if let Some(c) = t.credential_name.as_deref()
        && let Some(rest) = c.strip_prefix("configmap://")
    {
        if let Some((cns, _)) = rest.split_once('/')
            && cns != ns
        {
            err(&format!(
                "invalid configmap:// credentialName: namespace must match the configuration namespace {ns:?} (Istio: ValidateTLS)"
            ));
        } else if rest.is_empty() || rest.ends_with('/') {
            err("invalid configmap:// credentialName: no name (Istio: ValidateTLS)");
        }
    }
    if t.insecure_skip_verify == Some(true) {
        if mode == TlsMode::Simple
            && (t.has_ca_certificates()
                || t.has_credential_name()
                || !t.subject_alt_names.is_empty())
        {
            err(
                "cannot specify CaCertificates or CredentialName or SubjectAltNames when InsecureSkipVerify is set true (Istio: ValidateTLS)",
            );
        }
        if mode == TlsMode::Mutual && (t.has_ca_certificates() || !t.subject_alt_names.is_empty()) {
            err(
                "cannot specify CaCertificates or SubjectAltNames when InsecureSkipVerify is set true (Istio: ValidateTLS)",
            );
        }
    }
    if matches!(mode, TlsMode::Simple | TlsMode::Mutual) && t.has_credential_name() {
        if t.has_client_certificate()
            || t.has_ca_certificates()
            || t.has_private_key()
            || t.has_ca_crl()
        {
            err(
                "cannot specify client certificates or CA certificate or CA CRL If credentialName is set (Istio: ValidateTLS)",
            );
        }
        return;
    }
    if mode == TlsMode::Mutual {
        if !t.has_client_certificate() {
            err("client certificate required for mutual tls (Istio: ValidateTLS)");
        }
        if !t.has_private_key() {
            err("private key required for mutual tls (Istio: ValidateTLS)");
        }
    }
}

/// Istio's `validateTrafficPolicy` (the TLS-related part and the structure).
fn traffic_policy(spot: &Spot<'_>, at: &[&str], field: &str, ns: &str, tp: &TrafficPolicy) {
    let empty = tp.tls.is_none()
        && tp.port_level_settings.is_empty()
        && tp.load_balancer.is_none()
        && tp.connection_pool.is_none()
        && tp.outlier_detection.is_none()
        && tp.tunnel.is_none()
        && tp.proxy_protocol.is_none()
        && tp.retry_budget.is_none();
    if empty {
        spot.error(at, format!("{field}: traffic policy must have at least one field (Istio: validateTrafficPolicy)"));
        return;
    }
    if tp.tunnel.is_some() && tp.proxy_protocol.is_some() {
        spot.error(at, format!("{field}: tunnel and proxyProtocol must not be set together (Istio: validateTrafficPolicy)"));
        return;
    }
    connection_pool(spot, at, field, tp.connection_pool.as_ref());
    if let Some(t) = &tp.tls {
        let mut p = at.to_vec();
        p.push("tls");
        client_tls(spot, &p, &format!("{field}.tls"), ns, t);
    }
    for (i, pl) in tp.port_level_settings.iter().enumerate() {
        let f = format!("{field}.portLevelSettings[{i}]");
        let mut p = at.to_vec();
        p.push("portLevelSettings");
        match &pl.port {
            None => spot.error(&p, format!("{f}: portTrafficPolicy must have valid port (Istio: validatePortTrafficPolicies)")),
            Some(sel) if !(1..=65535).contains(&sel.number) => spot.error(
                &p,
                format!("{f}.port.number: port number {} must be in the range 1..65535 (Istio: ValidatePort)", sel.number),
            ),
            Some(_) => {}
        }
        if pl.tls.is_none()
            && pl.load_balancer.is_none()
            && pl.connection_pool.is_none()
            && pl.outlier_detection.is_none()
        {
            spot.error(&p, format!("{f}: port traffic policy must have at least one field (Istio: validatePortTrafficPolicies)"));
        } else {
            connection_pool(spot, &p, &f, pl.connection_pool.as_ref());
            if let Some(t) = &pl.tls {
                client_tls(spot, &p, &format!("{f}.tls"), ns, t);
            }
        }
    }
}

/// The one rule of Istio's `validateConnectionPool` the auditor checks (the
/// rest are about limits it does not read).
fn connection_pool(spot: &Spot<'_>, at: &[&str], field: &str, cp: Option<&super::model::Opaque>) {
    let Some(cp) = cp else { return };
    let has = |k: &str| {
        cp.as_mapping()
            .is_some_and(|m| m.get(k).is_some_and(|v| !v.is_null()))
    };
    if !has("tcp") && !has("http") {
        spot.error(at, format!("{field}.connectionPool: connection pool must have at least one field (Istio: validateConnectionPool)"));
    }
}

fn subset(spot: &Spot<'_>, i: usize, ns: &str, s: &Subset) {
    let field = format!("spec.subsets[{i}]");
    let name_at = format!("name: {}", s.name);
    let at: &[&str] = &["spec", "subsets", &name_at];
    if s.name.is_empty() {
        spot.error(
            &["spec", "subsets"],
            format!("{field}.name: subset name cannot be empty (Istio: validateSubsetName)"),
        );
    } else if !dns1123_label(&s.name) {
        spot.error(
            at,
            format!(
                "{field}.name: subset name is invalid: {} (Istio: validateSubsetName)",
                s.name
            ),
        );
    }
    labels(spot, &format!("{field}.labels"), &s.labels);
    if let Some(tp) = &s.traffic_policy {
        traffic_policy(spot, at, &format!("{field}.trafficPolicy"), ns, tp);
    }
}

/// Istio's `validateExportTo` (of a DestinationRule, or a ServiceEntry, which
/// may also say `~`: no one).
fn export_to(spot: &Spot<'_>, ns: &str, list: &[String], with_selector: bool, service_entry: bool) {
    if list.is_empty() {
        return;
    }
    let err = |m: String| {
        spot.error(
            &["spec", "exportTo"],
            format!("spec.exportTo: {m} (Istio: validateExportTo)"),
        )
    };
    let mut seen = BTreeSet::new();
    for e in list {
        let key = if e == "." { ns } else { e.as_str() };
        if seen.contains(key) {
            if key != e {
                err(format!(
                    "duplicate entries in exportTo: . and current namespace {ns}"
                ));
            } else {
                err(format!("duplicate entries in exportTo for entry {e}"));
            }
        } else if key == "*" || dns1123_label(key) || (service_entry && key == "~") {
            seen.insert(key);
        } else if key == "~" {
            err("exportTo ~ (no one) is allowed only for a ServiceEntry".into());
        } else {
            err(format!(
                "invalid namespace {key:?} in exportTo (must be `.`, `*` or a namespace name)"
            ));
        }
    }
    if with_selector && !seen.is_empty() {
        if seen.contains(ns) {
            if seen.len() > 1 {
                err("destination rule with workload selector cannot have multiple entries in exportTo".into());
            }
        } else {
            err("destination rule with workload selector cannot have exportTo beyond current namespace".into());
        }
    }
    if seen.contains("*") && list.len() > 1 {
        err("cannot have both public (*) and non-public exportTo values for a resource".into());
    }
    if seen.contains("~") && list.len() > 1 {
        err("cannot export service entry to no one (~) and someone".into());
    }
}

/// Istio's `ValidateDestinationRule`, and a warning where Istio quietly ignores a
/// setting that changes what the auditor expects.
pub(crate) fn destination_rule(spot: &Spot<'_>, dr: &DestinationRule) {
    let ns = dr.metadata.ns();
    let spec = &dr.spec;
    if let Err(e) = wildcard_domain(&spec.host) {
        spot.error(
            &["spec", "host"],
            format!("spec.host: {e} (Istio: ValidateWildcardDomain)"),
        );
    }
    if let Some(tp) = &spec.traffic_policy {
        traffic_policy(
            spot,
            &["spec", "trafficPolicy"],
            "spec.trafficPolicy",
            ns,
            tp,
        );
    }
    let mut names = BTreeSet::new();
    for (i, s) in spec.subsets.iter().enumerate() {
        if !names.insert(s.name.as_str()) {
            let name_at = format!("name: {}", s.name);
            spot.error(&["spec", "subsets", &name_at], format!("spec.subsets[{i}].name: duplicate subset names: {} (Istio: ValidateDestinationRule)", s.name));
        }
        subset(spot, i, ns, s);
    }
    export_to(
        spot,
        ns,
        &spec.export_to,
        spec.workload_selector.is_some(),
        false,
    );
    workload_selector(
        spot,
        "spec.workloadSelector",
        spec.workload_selector.as_ref(),
    );
    // Not a validation error in Istio, but a setting sidecars ignore.
    if spec.workload_selector.is_none() {
        let secret_tls = |t: Option<&ClientTlsSettings>| {
            t.is_some_and(|t| {
                matches!(t.mode(), TlsMode::Simple | TlsMode::Mutual)
                    && t.secret_credential().is_some()
            })
        };
        let tp = spec.traffic_policy.as_ref();
        let any = secret_tls(tp.and_then(|t| t.tls.as_ref()))
            || tp.is_some_and(|t| {
                t.port_level_settings
                    .iter()
                    .any(|p| secret_tls(p.tls.as_ref()))
            })
            || spec
                .subsets
                .iter()
                .any(|s| secret_tls(s.traffic_policy.as_ref().and_then(|t| t.tls.as_ref())));
        if any {
            spot.warning(&["credentialName"], "tls.credentialName: sidecars ignore SIMPLE/MUTUAL TLS with a credentialName unless the DestinationRule has a workloadSelector (Istio applies it on gateways): a sidecar client sends plaintext, and the auditor expects that".into());
        }
    }
}

/// The parts of Istio's `ValidateServiceEntry` about hosts, addresses and ports.
pub(crate) fn service_entry(spot: &Spot<'_>, se: &ServiceEntry) {
    let spec = &se.spec;
    if spec.hosts.is_empty() {
        spot.error(
            &["spec"],
            "spec.hosts: service entry must have at least one host (Istio: ValidateServiceEntry)"
                .into(),
        );
    }
    for h in &spec.hosts {
        if h == "*" {
            spot.error(
                &["spec", "hosts"],
                "spec.hosts: invalid host * (Istio: ValidateServiceEntry)".into(),
            );
        } else if let Err(e) = wildcard_domain(h) {
            spot.error(
                &["spec", "hosts", h],
                format!("spec.hosts: {e} (Istio: ValidateWildcardDomain)"),
            );
        }
    }
    export_to(spot, se.metadata.ns(), &spec.export_to, false, true);
    let mut cidr = false;
    for a in &spec.addresses {
        cidr |= a.contains('/');
        if super::validate::parse_net(a).is_none() {
            spot.error(
                &["spec", "addresses", a],
                format!(
                    "spec.addresses: `{a}` is not an IP address or CIDR (Istio: ValidateIPSubnet)"
                ),
            );
        }
    }
    if cidr
        && !matches!(
            spec.resolution,
            None | Some(Resolution::None | Resolution::Static)
        )
    {
        spot.error(&["spec", "resolution"], "spec.addresses: CIDR addresses are allowed only for NONE/STATIC resolution types (Istio: ValidateServiceEntry)".into());
    }
    let mut numbers = BTreeSet::new();
    for (i, p) in spec.ports.iter().enumerate() {
        if !numbers.insert(p.number) {
            spot.error(&["spec", "ports"], format!("spec.ports[{i}]: service entry port {} already defined (Istio: ValidateServiceEntry)", p.number));
        }
        if !(1..=65535).contains(&p.number) {
            spot.error(&["spec", "ports"], format!("spec.ports[{i}].number: port number {} must be in the range 1..65535 (Istio: ValidatePort)", p.number));
        }
        if let Some(t) = p.target_port
            && t != 0
            && !(1..=65535).contains(&t)
        {
            spot.error(&["spec", "ports"], format!("spec.ports[{i}].targetPort: port number {t} must be in the range 1..65535 (Istio: ValidatePort)"));
        }
    }
}

/// `metadata.name`: what the Kubernetes API server accepts (a DNS-1123
/// subdomain). Whitespace and control characters are errors (such a name could
/// never come from a cluster, and would garble output); other deviations are
/// warnings.
pub(crate) fn metadata(spot: &Spot<'_>, kind: &str, m: &Metadata) {
    for (field, v) in [
        ("metadata.name", Some(m.name.as_str())),
        ("metadata.namespace", m.namespace.as_deref()),
    ] {
        let Some(v) = v else { continue };
        if v.chars().any(|c| c.is_control() || c.is_whitespace()) {
            spot.error(&[field.rsplit('.').next().unwrap_or(field)], format!("{field}: {:?} contains whitespace or control characters: not a Kubernetes name", v));
        } else if field == "metadata.name"
            && (v.is_empty()
                || v.len() > 253
                || !v
                    .split('.')
                    .all(|l| dns1123_label(l) && !l.bytes().any(|b| b.is_ascii_uppercase())))
        {
            spot.warning(&["name"], format!("{field}: `{v}` is not a valid Kubernetes {kind} name (lowercase letters, digits, `-` and `.`): the API server would refuse it"));
        } else if field == "metadata.namespace"
            && !(dns1123_label(v) && !v.bytes().any(|b| b.is_ascii_uppercase()))
        {
            spot.warning(&["namespace"], format!("{field}: `{v}` is not a valid Kubernetes namespace name (lowercase letters, digits and `-`): the API server would refuse it"));
        }
    }
    if let Some(ts) = m.creation_timestamp.as_deref()
        && super::order::timestamp_seconds(ts).is_none()
    {
        spot.error(&["creationTimestamp"], format!("metadata.creationTimestamp: `{ts}` is not an RFC 3339 time in UTC (like 2024-05-01T12:00:00Z)"));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn istio_wildcard_domains() {
        // Istio's TestValidateWildcardDomain cases.
        let long = "x".repeat(256);
        let label63 = "x".repeat(63);
        let cases: &[(&str, &str)] = &[
            ("", "empty"),
            (&long, "too long"),
            (&label63, ""),
            ("*", ""),
            ("*.bar.com", ""),
            ("*foo", ""),
            ("*foo.bar.com", ""),
            ("*-foo.bar.com", ""),
            ("foo.*.com", "invalid"),
            ("foo*.bar.com", "invalid"),
            ("1.1.1.1", "invalid"),
        ];
        for (domain, want) in cases {
            match wildcard_domain(domain) {
                Ok(()) => assert!(want.is_empty(), "{domain}: valid, want {want}"),
                Err(e) => assert!(
                    !want.is_empty() && e.contains(want),
                    "{domain}: {e}, want {want:?}"
                ),
            }
        }
    }
}
