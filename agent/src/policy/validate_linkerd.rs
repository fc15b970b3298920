//! Linkerd's own checks for the objects the auditor reads: what the CRD schemas,
//! the admission webhook (`policy-controller/runtime/src/admission.rs`) or the
//! policy controller's types refuse. Each message ends with the rule it follows,
//! e.g. `(Linkerd: Server CRD oneOf)`. What Linkerd accepts but then ignores or
//! never matches is a warning that says so.

use std::path::Path;

use super::{
    load::{Diagnostic, Located, PolicyFiles, Severity, locate},
    model::{
        AuthnKind, AuthorizationPolicy, AuthzTarget, ConfigMap, DEFAULT_INBOUND_POLICY_ANNOTATION,
        InboundPolicy, LabelSelector, LinkerdConfig, LinkerdValues, LinkerdWorkloadEntry,
        MeshTlsAuthentication, Namespace, NamespacedTargetRef, NetworkAuthentication,
        PROXY_PROTOCOLS, PortRef, REQUIRE_IDENTITY_ANNOTATION, Server, parse_port_ranges,
        quote_list, targets_kind,
    },
    validate::{Checked, Spot, parse_net},
    validate_istio::metadata,
};

fn policies() -> String {
    quote_list(InboundPolicy::VARIANTS)
}

/// Kubernetes' `IsValidPortName` (IANA_SVC_NAME): at most 15 lowercase letters,
/// digits and `-`, at least one letter, no `-` at either end or twice in a row.
fn valid_port_name(n: &str) -> bool {
    !n.is_empty()
        && n.len() <= 15
        && n.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && n.bytes().any(|b| b.is_ascii_lowercase())
        && !n.starts_with('-')
        && !n.ends_with('-')
        && !n.contains("--")
}

fn selector(spot: &Spot<'_>, sel: &LabelSelector, field: &str) {
    for (i, e) in sel.match_expressions.iter().flatten().enumerate() {
        if !e.is_legal() {
            let want = if e.values.is_some() {
                "takes no `values`"
            } else {
                "needs `values`"
            };
            spot.warning(
                &[field, "matchExpressions", &e.key],
                format!(
                    "spec.{field}.matchExpressions[{i}]: `{}` {want}: Linkerd never matches this expression, so the selector selects nothing (Linkerd: illegal match expression)",
                    e.operator.as_str()
                ),
            );
        }
    }
}

impl Checked for Server {
    fn check(&self, spot: &Spot<'_>) {
        metadata(spot, "Server", &self.metadata);
        let s = &self.spec;
        let v1beta1 =
            self.api_version.ends_with("/v1beta1") || self.api_version.ends_with("/v1alpha1");
        match (&s.pod_selector, &s.external_workload_selector) {
            (None, None) => spot.error(
                &["spec"],
                "spec: a Server selects its workloads with `podSelector` or `externalWorkloadSelector`; it has neither (Linkerd: Server CRD, exactly one of them)".into(),
            ),
            (Some(_), Some(_)) => spot.error(
                &["externalWorkloadSelector"],
                "spec: `podSelector` and `externalWorkloadSelector` together; a Server has exactly one (Linkerd: Server CRD oneOf)".into(),
            ),
            (None, Some(_)) if v1beta1 => spot.error(
                &["externalWorkloadSelector"],
                format!(
                    "spec.externalWorkloadSelector is not a field of {} (the API server drops it, leaving no selector): use policy.linkerd.io/v1beta3 (Linkerd: Server CRD)",
                    self.api_version
                ),
            ),
            _ => {}
        }
        if let Some(sel) = &s.pod_selector {
            selector(spot, sel, "podSelector");
        }
        if let Some(sel) = &s.external_workload_selector {
            selector(spot, sel, "externalWorkloadSelector");
            spot.warning(
                &["externalWorkloadSelector"],
                "spec.externalWorkloadSelector: this Server applies to ExternalWorkloads, which the auditor does not know: it never selects a workload here".into(),
            );
        }
        match &s.port {
            PortRef::Number(n) if s.port.number().is_none() => spot.error(
                &["port"],
                format!("spec.port: {n} is not a port number (1-65535) (Linkerd: the policy controller reads a Server's port as a number 1-65535 or a port name)"),
            ),
            PortRef::Name(n) if n.bytes().all(|b| b.is_ascii_digit()) && !n.is_empty() => spot.warning(
                &["port"],
                format!("spec.port: \"{n}\" is a string, which Linkerd takes as a port name (a pod's named port), not port {n}: write the number unquoted"),
            ),
            PortRef::Name(n) if !valid_port_name(n) => spot.warning(
                &["port"],
                format!("spec.port: `{n}` is not a valid Kubernetes port name (at most 15 lowercase letters, digits and `-`): no container port can have it, so the Server selects no port"),
            ),
            _ => {}
        }
        if let Some(p) = &s.proxy_protocol
            && !PROXY_PROTOCOLS.contains(&p.as_str())
        {
            spot.error(
                &["proxyProtocol"],
                format!("spec.proxyProtocol: `{p}` is not one of {} (Linkerd: the policy controller cannot read the Server)", quote_list(PROXY_PROTOCOLS)),
            );
        }
        if let Some(p) = &s.access_policy {
            if !self.api_version.ends_with("/v1beta3") {
                spot.error(
                    &["accessPolicy"],
                    format!(
                        "spec.accessPolicy is not a field of {}: the API server drops it and the stored Server gets v1beta3's default, `deny`; use policy.linkerd.io/v1beta3 (Linkerd: Server CRD)",
                        self.api_version
                    ),
                );
            } else if InboundPolicy::parse(p).is_none() {
                spot.error(
                    &["accessPolicy"],
                    format!("spec.accessPolicy: `{p}` is not one of {} (Linkerd: the admission webhook refuses an invalid 'accessPolicy')", policies()),
                );
            }
        }
    }
}

/// The admission webhook's rules for `requiredAuthenticationRefs`.
fn authentication_refs(spot: &Spot<'_>, refs: &[NamespacedTargetRef]) {
    let count = |k: AuthnKind| refs.iter().filter(|r| r.authn_kind() == Some(k)).count();
    let (mtls, sa, net) = (
        count(AuthnKind::MeshTls),
        count(AuthnKind::ServiceAccount),
        count(AuthnKind::Network),
    );
    let at = ["requiredAuthenticationRefs"];
    let rule = "(Linkerd: AuthorizationPolicy admission)";
    if mtls > 1 {
        spot.error(&at, format!("spec.requiredAuthenticationRefs: only a single MeshTLSAuthentication may be set {rule}"));
    }
    if sa > 1 {
        spot.error(
            &at,
            format!(
                "spec.requiredAuthenticationRefs: only a single ServiceAccount may be set {rule}"
            ),
        );
    }
    if mtls == 1 && sa == 1 {
        spot.error(&at, format!("spec.requiredAuthenticationRefs: a MeshTLSAuthentication and ServiceAccount may not be set together {rule}"));
    }
    if net > 1 {
        spot.error(&at, format!("spec.requiredAuthenticationRefs: only a single NetworkAuthentication may be set {rule}"));
    }
    for (i, r) in refs.iter().enumerate() {
        if r.authn_kind().is_none() {
            let hint = if ["MeshTLSAuthentication", "NetworkAuthentication"]
                .iter()
                .any(|k| r.kind.eq_ignore_ascii_case(k))
            {
                " (it needs `group: policy.linkerd.io`)"
            } else {
                ""
            };
            spot.error(
                &["requiredAuthenticationRefs", &format!("kind: {}", r.kind)],
                format!(
                    "spec.requiredAuthenticationRefs[{i}]: unsupported authentication kind(s): {}{hint}; expected MeshTLSAuthentication, NetworkAuthentication (group policy.linkerd.io) or ServiceAccount {rule}",
                    r.canonical_kind()
                ),
            );
        }
        if r.name.as_deref().is_none_or(str::is_empty) {
            spot.error(
                &["requiredAuthenticationRefs", &format!("kind: {}", r.kind)],
                format!("spec.requiredAuthenticationRefs[{i}]: missing `name` (Linkerd: AuthorizationPolicy CRD)"),
            );
        }
    }
}

impl Checked for AuthorizationPolicy {
    fn check(&self, spot: &Spot<'_>) {
        metadata(spot, "AuthorizationPolicy", &self.metadata);
        let t = &self.spec.target_ref;
        match t.target() {
            None => {
                let hint = if ["Server", "HTTPRoute"]
                    .iter()
                    .any(|k| t.kind.eq_ignore_ascii_case(k))
                {
                    " (a Server needs `group: policy.linkerd.io`)"
                } else {
                    ""
                };
                spot.error(
                    &["targetRef", "kind"],
                    format!(
                        "spec.targetRef: unsupported authorization target type: {}{hint}; expected a Server (policy.linkerd.io), an HTTPRoute (policy.linkerd.io or gateway.networking.k8s.io), a GRPCRoute (gateway.networking.k8s.io) or a Namespace (Linkerd: the policy controller refuses the AuthorizationPolicy)",
                        t.canonical_kind()
                    ),
                );
            }
            Some(AuthzTarget::Namespace(n)) if n != self.metadata.ns() => spot.error(
                &["targetRef", "name"],
                format!(
                    "spec.targetRef: cannot target another namespace: {n} (the policy is in `{}`) (Linkerd: AuthorizationPolicy admission)",
                    self.metadata.ns()
                ),
            ),
            Some(AuthzTarget::HttpRoute(n) | AuthzTarget::GrpcRoute(n)) => spot.warning(
                &["targetRef", "kind"],
                format!(
                    "spec.targetRef: {} `{n}`: an authorization per route is decided request by request; the auditor judges connections and does not use this policy (see docs/policy.md)",
                    t.kind
                ),
            ),
            _ => {}
        }
        authentication_refs(spot, &self.spec.required_authentication_refs);
    }
}

/// Linkerd's `validate_identity`: a SPIFFE ID, or a DNS-like name with at most a
/// leading `*` label.
pub fn valid_identity(id: &str) -> Result<(), &'static str> {
    if let Some(rest) = id.strip_prefix("spiffe://") {
        let (td, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
        if td.is_empty() {
            return Err("SPIFFE trust domain is missing");
        }
        if !td
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"-._".contains(&b))
        {
            return Err(
                "SPIFFE trust domain characters are limited to lowercase letters, numbers, dots, dashes, and underscores",
            );
        }
        if path.is_empty() {
            return Ok(());
        }
        if path.ends_with('/') {
            return Err("SPIFFE path cannot have a trailing slash");
        }
        for seg in path[1..].split('/') {
            match seg {
                "" => return Err("SPIFFE path cannot contain empty segments"),
                "." | ".." => return Err("SPIFFE path cannot contain dot segments"),
                s if !s
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-._".contains(&b)) =>
                {
                    return Err(
                        "SPIFFE path segment characters are limited to letters, numbers, dots, dashes, and underscores",
                    );
                }
                _ => {}
            }
        }
        return Ok(());
    }
    let label = |l: &str| {
        let b = l.as_bytes();
        !b.is_empty()
            && b.iter()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
            && b[0] != b'-'
            && b[b.len() - 1] != b'-'
    };
    let mut parts = id.split('.');
    let first_ok = parts.next().is_some_and(|f| f == "*" || label(f));
    if first_ok && parts.all(label) {
        Ok(())
    } else {
        Err(
            "identity must be a valid SPIFFE id or a DNS SAN (lowercase DNS labels, a leading `*` allowed)",
        )
    }
}

impl Checked for MeshTlsAuthentication {
    fn check(&self, spot: &Spot<'_>) {
        metadata(spot, "MeshTLSAuthentication", &self.metadata);
        let s = &self.spec;
        match (&s.identities, &s.identity_refs) {
            (None, None) => spot.error(
                &["spec"],
                "spec: a MeshTLSAuthentication needs `identities` or `identityRefs` (Linkerd: MeshTLSAuthentication CRD oneOf)".into(),
            ),
            (Some(_), Some(_)) => spot.error(
                &["identityRefs"],
                "spec: `identities` and `identityRefs` together; give exactly one (Linkerd: MeshTLSAuthentication CRD oneOf)".into(),
            ),
            _ => {}
        }
        if s.identities.as_ref().is_some_and(Vec::is_empty) {
            spot.error(&["identities"], "spec.identities: an empty list; give at least one identity (Linkerd: MeshTLSAuthentication CRD minItems)".into());
        }
        if s.identity_refs.as_ref().is_some_and(Vec::is_empty) {
            spot.error(&["identityRefs"], "spec.identityRefs: an empty list; give at least one (Linkerd: MeshTLSAuthentication CRD minItems)".into());
        }
        for id in s.identities.iter().flatten() {
            if let Err(e) = valid_identity(id) {
                spot.error(
                    &["identities", id],
                    format!("spec.identities: id {id} is invalid: {e} (Linkerd: MeshTLSAuthentication admission)"),
                );
            }
        }
        for (i, r) in s.identity_refs.iter().flatten().enumerate() {
            let at = ["identityRefs", &format!("kind: {}", r.kind)];
            let sa = targets_kind(r.group.as_deref(), &r.kind, "", "ServiceAccount");
            let ns = targets_kind(r.group.as_deref(), &r.kind, "", "Namespace");
            if !sa && !ns {
                spot.error(&at, format!("spec.identityRefs[{i}]: invalid identity target kind: {}; expected ServiceAccount or Namespace (Linkerd: MeshTLSAuthentication admission)", r.canonical_kind()));
            }
            if ns && r.namespace.is_some() {
                spot.error(&at, format!("spec.identityRefs[{i}]: Namespace identity_ref is cluster-scoped and cannot have a namespace (Linkerd: MeshTLSAuthentication admission)"));
            }
            if r.name.as_deref().is_none_or(str::is_empty) {
                spot.error(&at, format!("spec.identityRefs[{i}]: no `name`: the CRD allows it but the policy controller's reference type requires one and cannot read the MeshTLSAuthentication (Linkerd: NamespacedTargetRef)"));
            }
        }
    }
}

impl Checked for NetworkAuthentication {
    fn check(&self, spot: &Spot<'_>) {
        metadata(spot, "NetworkAuthentication", &self.metadata);
        if self.spec.networks.is_empty() {
            spot.error(&["networks"], "spec.networks: at least one network must be specified (Linkerd: NetworkAuthentication admission)".into());
        }
        for (i, n) in self.spec.networks.iter().enumerate() {
            let Some(cidr) = parse_net(&n.cidr) else {
                spot.error(&["networks", &n.cidr], format!("spec.networks[{i}].cidr: `{}` is not a valid CIDR or IP address (Linkerd: Cidr)", n.cidr));
                continue;
            };
            for ex in n.except.iter().flatten() {
                let Some(e) = parse_net(ex) else {
                    spot.error(&["networks", ex], format!("spec.networks[{i}].except: `{ex}` is not a valid CIDR or IP address (Linkerd: Cidr)"));
                    continue;
                };
                if e.contains(&cidr) {
                    spot.error(&["networks", ex], format!("spec.networks[{i}]: cidr '{}' is completely negated by exception '{ex}' (Linkerd: NetworkAuthentication admission)", n.cidr));
                } else if !cidr.contains(&e) {
                    spot.error(&["networks", ex], format!("spec.networks[{i}]: cidr '{}' does not include exception '{ex}' (Linkerd: NetworkAuthentication admission)", n.cidr));
                }
            }
        }
    }
}

impl Checked for Namespace {
    fn check(&self, spot: &Spot<'_>) {
        metadata(spot, "Namespace", &self.metadata);
        if self.metadata.namespace.is_some() {
            spot.warning(
                &["namespace"],
                "metadata.namespace: a Namespace is not in a namespace; ignored".into(),
            );
        }
        linkerd_annotations(spot, &self.metadata.annotations, "metadata.annotations");
    }
}

/// The Linkerd annotations the auditor reads, on a Namespace or in an inventory.
fn linkerd_annotations(
    spot: &Spot<'_>,
    ann: &std::collections::BTreeMap<String, String>,
    field: &str,
) {
    if let Some(v) = ann.get(DEFAULT_INBOUND_POLICY_ANNOTATION)
        && InboundPolicy::parse(v).is_none()
    {
        spot.error(
            &[DEFAULT_INBOUND_POLICY_ANNOTATION],
            format!("{field}[{DEFAULT_INBOUND_POLICY_ANNOTATION}]: `{v}` is not one of {} (Linkerd: the injector ignores an unrecognized value and the cluster default applies)", policies()),
        );
    }
    if let Some(v) = ann.get(REQUIRE_IDENTITY_ANNOTATION)
        && let Err(e) = parse_port_ranges(v)
    {
        spot.error(
            &[REQUIRE_IDENTITY_ANNOTATION],
            format!("{field}[{REQUIRE_IDENTITY_ANNOTATION}]: {e} (Linkerd: an invalid ports list counts as none)"),
        );
    }
}

/// The inventory's `linkerd:` key of workload `i`.
pub(crate) fn inventory_workload(spot: &Spot<'_>, i: usize, l: &LinkerdWorkloadEntry) {
    if let Some(p) = &l.require_identity_inbound_ports
        && let Err(e) = parse_port_ranges(p)
    {
        spot.error(
            &["requireIdentityInboundPorts"],
            format!("spec.workloads[{i}].linkerd.requireIdentityInboundPorts: {e} (Linkerd: an invalid ports list counts as none)"),
        );
    }
}

/// `linkerd-config`'s `values`, parsed and checked into `out`.
pub(crate) fn load_linkerd_config(
    file: &Path,
    text: &str,
    first_line: usize,
    cm: &ConfigMap,
    out: &mut PolicyFiles,
    diags: &mut Vec<Diagnostic>,
) {
    let Some(values) = cm.data.get("values") else {
        return;
    };
    let (line, column) = locate(text, first_line, "values:");
    let mut error = |message: String| {
        diags.push(Diagnostic {
            severity: Severity::Error,
            file: file.to_path_buf(),
            line,
            column,
            message,
        });
    };
    let values = match yaml_serde::from_str::<Option<LinkerdValues>>(values) {
        Ok(v) => v.unwrap_or_default(),
        Err(e) => {
            let msg = e.to_string();
            let msg = msg
                .rsplit_once(" at line ")
                .map_or(msg.as_str(), |(m, _)| m);
            error(format!("data.values (Linkerd's values): {msg}"));
            return;
        }
    };
    if let Some(p) = values
        .proxy
        .as_ref()
        .and_then(|p| p.default_inbound_policy.as_deref())
        && InboundPolicy::parse(p).is_none()
    {
        error(format!(
            "data.values: proxy.defaultInboundPolicy `{p}` is not one of {} (Linkerd: the policy controller refuses to start)",
            policies()
        ));
    }
    for n in values
        .cluster_networks
        .iter()
        .flat_map(|s| s.split(','))
        .map(str::trim)
        .filter(|s| !s.is_empty())
    {
        if parse_net(n).is_none() {
            error(format!(
                "data.values: clusterNetworks: `{n}` is not a CIDR (Linkerd: --cluster-networks)"
            ));
        }
    }
    out.linkerd_configs.push(Located {
        object: LinkerdConfig {
            namespace: cm
                .metadata
                .namespace
                .clone()
                .unwrap_or_else(|| "linkerd".into()),
            values,
        },
        file: file.to_path_buf(),
        line,
    });
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

/// Checks across Linkerd's objects: references that do not resolve (Linkerd then
/// ignores the AuthorizationPolicy), Servers that compete for a port.
pub(crate) fn across(p: &PolicyFiles, diags: &mut Vec<Diagnostic>) {
    let has = |list: &[(&str, &str)], ns: &str, name: &str| {
        list.iter()
            .any(|(n, m)| *n == ns && m.eq_ignore_ascii_case(name))
    };
    let meshtls: Vec<(&str, &str)> = p
        .meshtls_authentications
        .iter()
        .map(|m| (m.object.metadata.ns(), m.object.metadata.name.as_str()))
        .collect();
    let networks: Vec<(&str, &str)> = p
        .network_authentications
        .iter()
        .map(|m| (m.object.metadata.ns(), m.object.metadata.name.as_str()))
        .collect();
    let servers: Vec<(&str, &str)> = p
        .servers
        .iter()
        .map(|m| (m.object.metadata.ns(), m.object.metadata.name.as_str()))
        .collect();
    for ap in &p.authorization_policies {
        let meta = &ap.object.metadata;
        let ns = meta.ns();
        for r in &ap.object.spec.required_authentication_refs {
            let rns = r.namespace.as_deref().unwrap_or(ns);
            let (list, kind) = match r.authn_kind() {
                Some(AuthnKind::MeshTls) => (&meshtls, "MeshTLSAuthentication"),
                Some(AuthnKind::Network) => (&networks, "NetworkAuthentication"),
                _ => continue,
            };
            if !has(list, rns, r.name()) {
                diags.push(warn(ap, format!(
                    "AuthorizationPolicy {ns}/{}: {kind} {rns}/{} is not in the policy files: Linkerd ignores the policy while it does not exist (in a cluster the API server's objects count too)",
                    meta.name, r.name()
                )));
            }
        }
        if let Some(AuthzTarget::Server(s)) = ap.object.spec.target_ref.target()
            && !has(&servers, ns, &s)
        {
            diags.push(warn(ap, format!(
                "AuthorizationPolicy {ns}/{}: Server {ns}/{s} is not in the policy files: the policy authorizes nothing until it exists (in a cluster the API server's objects count too)",
                meta.name
            )));
        }
    }
    // Two Servers with the same selector and port: Linkerd uses the oldest.
    let mut seen: Vec<(&str, String, &Located<Server>)> = Vec::new();
    for s in &p.servers {
        let o = &s.object;
        let key = format!(
            "{:?}|{:?}|{}",
            o.spec.pod_selector, o.spec.external_workload_selector, o.spec.port
        );
        if let Some((_, _, first)) = seen
            .iter()
            .find(|(ns, k, _)| *ns == o.metadata.ns() && *k == key)
        {
            diags.push(warn(s, format!(
                "Servers in `{}` select the same pods and port {} as `{}` (line {}): Linkerd uses the oldest (creationTimestamp, then name) and ignores the other for those ports",
                o.metadata.ns(), o.spec.port, first.object.metadata.name, first.line
            )));
        } else {
            seen.push((o.metadata.ns(), key, s));
        }
    }
    if p.linkerd_configs.len() > 1 {
        for m in &p.linkerd_configs[1..] {
            diags.push(warn(
                m,
                "more than one Linkerd config (ConfigMap `linkerd-config`): the first one loaded is used".into(),
            ));
        }
    }
}

#[cfg(test)]
#[path = "validate_linkerd_tests.rs"]
mod tests;
