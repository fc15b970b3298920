//! What a connection should be, resolved the way Istio resolves it.
//!
//! Server side, PeerAuthentication for the destination workload and port
//! (pilot's `ComposePeerAuthentication`): start from PERMISSIVE; the oldest
//! mesh-wide policy (root namespace, no selector) overrides unless UNSET; then the
//! oldest namespace-wide policy; then the oldest policy whose selector matches the
//! workload, whose `portLevelMtls` entry for the port wins over its `mtls` (an UNSET
//! port entry inherits).
//!
//! Client side, DestinationRule for the destination host: rules in the client's
//! namespace first, then the service's namespace, then the root namespace (each
//! only if exported to the client's namespace); within a namespace the most
//! specific host wins (exact, then the longest wildcard), then the oldest.
//! `portLevelSettings[port].tls` wins over `trafficPolicy.tls`. Short hosts are
//! relative to the rule's namespace.
//!
//! Native `TransportPolicy` rules add requirements; exemptions override all.

use std::{collections::BTreeMap, net::IpAddr};

use serde::Serialize;

use super::{
    load::{Located, PolicyFiles},
    model::{
        ConnMatch, DestinationRule, Direction, PeerAuthentication, PeerMode, Requirement, TlsMode,
    },
    validate::{age_key, namespace, parse_net},
};
use crate::inventory::{Inventory, Service, Workload};

/// The connection a question is about.
#[derive(Debug, Clone)]
pub struct Query<'a> {
    pub source: Option<Workload>,
    pub destination: Option<Workload>,
    pub source_addr: IpAddr,
    pub destination_addr: IpAddr,
    pub port: u16,
    /// Services the destination address and port belong to.
    pub services: Vec<Service>,
    /// Process names of the client and server ends, when local.
    pub client_process: Option<&'a str>,
    pub server_process: Option<&'a str>,
    pub direction: Direction,
    /// Whether the client's traffic goes through a mesh proxy of its own: `Some(false)`
    /// when the client is known to have none (a pod no proxy intercepts in), so that
    /// DestinationRules, which configure the client's proxy, do not apply to it.
    pub client_has_proxy: Option<bool>,
}

/// What the policy requires of a connection, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Expectation {
    /// `mutual_tls`, `tls` or `none` (no requirement).
    pub expected: Requirement,
    /// The server side is PERMISSIVE: it accepts plaintext.
    pub permissive: bool,
    /// The exemption that covers this connection, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub exempt: Option<String>,
    /// The policy object and field that set `expected` (or the exemption).
    pub reason: String,
    /// Every object that had a say.
    pub policies: Vec<String>,
}

pub fn rank(r: Requirement) -> u8 {
    match r {
        Requirement::None => 0,
        Requirement::Tls => 1,
        Requirement::MutualTls => 2,
    }
}

fn requirement_str(r: Requirement) -> &'static str {
    match r {
        Requirement::MutualTls => "mutual_tls",
        Requirement::Tls => "tls",
        Requirement::None => "none",
    }
}

/// Loaded policy, ready to answer questions.
pub struct PolicySet {
    pub files: PolicyFiles,
    pub root_namespace: String,
    pub inventory: Inventory,
}

/// The result of the PeerAuthentication lookup.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerDecision {
    pub mode: PeerMode,
    /// `PeerAuthentication ns/name spec.field=MODE`, or the default.
    pub source: String,
}

fn oldest<'a>(
    items: impl Iterator<Item = (usize, &'a Located<PeerAuthentication>)>,
) -> Option<&'a Located<PeerAuthentication>> {
    items
        .min_by_key(|(i, l)| age_key(&l.object.metadata, *i))
        .map(|(_, l)| l)
}

fn pa_ref(pa: &PeerAuthentication, field: &str, mode: PeerMode) -> String {
    format!(
        "PeerAuthentication {}/{} {field}={}",
        namespace(&pa.metadata),
        pa.metadata.name,
        mode.as_str()
    )
}

fn has_selector(pa: &PeerAuthentication) -> bool {
    pa.spec
        .selector
        .as_ref()
        .is_some_and(|s| !s.match_labels.is_empty())
}

impl PolicySet {
    pub fn new(files: PolicyFiles, root_namespace: &str) -> Self {
        let inventory = Inventory::from_files(&files);
        Self {
            files,
            root_namespace: root_namespace.to_owned(),
            inventory,
        }
    }

    /// PeerAuthentication mode for a workload (namespace, labels) and port.
    pub fn peer_mode(
        &self,
        ns: &str,
        labels: &BTreeMap<String, String>,
        port: u16,
    ) -> PeerDecision {
        let pas = &self.files.peer_authentications;
        let mesh = oldest(pas.iter().enumerate().filter(|(_, p)| {
            namespace(&p.object.metadata) == self.root_namespace && !has_selector(&p.object)
        }));
        let ns_wide = oldest(
            pas.iter()
                .enumerate()
                .filter(|(_, p)| namespace(&p.object.metadata) == ns && !has_selector(&p.object)),
        );
        let workload = oldest(pas.iter().enumerate().filter(|(_, p)| {
            namespace(&p.object.metadata) == ns
                && has_selector(&p.object)
                && p.object
                    .spec
                    .selector
                    .as_ref()
                    .is_some_and(|s| s.matches(labels))
        }));
        let mut out = PeerDecision {
            mode: PeerMode::Permissive,
            source: "Istio default (no PeerAuthentication applies): PERMISSIVE".into(),
        };
        // Narrower policies override wider ones; UNSET inherits.
        for pa in [mesh, ns_wide, workload].into_iter().flatten() {
            let m = pa
                .object
                .spec
                .mtls
                .as_ref()
                .map_or(PeerMode::Unset, |m| m.mode());
            if m != PeerMode::Unset {
                out = PeerDecision {
                    mode: m,
                    source: pa_ref(&pa.object, "spec.mtls.mode", m),
                };
            }
        }
        // Port-level modes only count on a workload-selected policy, as in Istio.
        if let Some(pa) = workload
            && let Some(pm) = pa.object.spec.port_level_mtls.get(&port)
        {
            let pm = pm.mode();
            if pm != PeerMode::Unset {
                out = PeerDecision {
                    mode: pm,
                    source: pa_ref(&pa.object, &format!("spec.portLevelMtls[{port}].mode"), pm),
                };
            }
        }
        out
    }

    /// The DestinationRule TLS mode a client in `client_ns` (with `client_labels`)
    /// uses for `host:port`.
    pub fn client_tls(
        &self,
        client_ns: &str,
        client_labels: &BTreeMap<String, String>,
        host: &Service,
        port: u16,
    ) -> Option<(TlsMode, String)> {
        let drs = &self.files.destination_rules;
        let domain = &self.inventory.cluster_domain;
        for ns in [
            client_ns,
            host.namespace.as_str(),
            self.root_namespace.as_str(),
        ] {
            let candidates: Vec<(usize, &Located<DestinationRule>, usize)> = drs
                .iter()
                .enumerate()
                .filter(|(_, d)| namespace(&d.object.metadata) == ns)
                .filter(|(_, d)| exported_to(&d.object, client_ns))
                .filter(|(_, d)| {
                    d.object.spec.workload_selector.as_ref().is_none_or(|s| {
                        namespace(&d.object.metadata) == client_ns && s.matches(client_labels)
                    })
                })
                .filter_map(|(i, d)| {
                    let pattern =
                        expand_host(&d.object.spec.host, namespace(&d.object.metadata), domain);
                    host_specificity(&pattern, &host.fqdn).map(|s| (i, d, s))
                })
                .collect();
            let Some(best) = candidates.iter().map(|c| c.2).max() else {
                continue;
            };
            // Rules with a workload selector beat those without; then the oldest.
            let chosen = candidates
                .iter()
                .filter(|c| c.2 == best)
                .min_by_key(|(i, d, _)| {
                    (
                        d.object.spec.workload_selector.is_none(),
                        age_key(&d.object.metadata, *i),
                    )
                })
                .map(|c| c.1);
            let Some(dr) = chosen else { continue };
            let name = format!(
                "DestinationRule {}/{}",
                namespace(&dr.object.metadata),
                dr.object.metadata.name
            );
            let tp = dr.object.spec.traffic_policy.as_ref();
            if let Some(port_tls) = tp
                .and_then(|t| {
                    t.port_level_settings
                        .iter()
                        .find(|p| p.port.as_ref().is_some_and(|x| x.number == port))
                })
                .and_then(|p| p.tls.as_ref())
                .and_then(|t| t.mode)
            {
                return Some((
                    port_tls,
                    format!(
                        "{name} spec.trafficPolicy.portLevelSettings[{port}].tls.mode={} (host {})",
                        port_tls.as_str(),
                        dr.object.spec.host
                    ),
                ));
            }
            if let Some(mode) = tp.and_then(|t| t.tls.as_ref()).and_then(|t| t.mode) {
                return Some((
                    mode,
                    format!(
                        "{name} spec.trafficPolicy.tls.mode={} (host {})",
                        mode.as_str(),
                        dr.object.spec.host
                    ),
                ));
            }
            // The rule applies but says nothing about TLS: no client requirement.
            return None;
        }
        None
    }

    /// What `q` requires.
    pub fn expect(&self, q: &Query<'_>) -> Expectation {
        let mut policies = Vec::new();
        // Exemptions first: they override everything.
        let builtin_loopback = self.files.transport_policies.iter().all(|t| {
            t.object
                .spec
                .exempt_loopback_within_workload
                .unwrap_or(true)
        });
        if builtin_loopback
            && q.source_addr.is_loopback()
            && q.destination_addr.is_loopback()
            && q.source.is_some()
            && q.source == q.destination
        {
            let w = q
                .source
                .as_ref()
                .map(|w| format!("{}/{}", w.namespace, w.name))
                .unwrap_or_default();
            return Expectation {
                expected: Requirement::None,
                permissive: false,
                exempt: Some("loopback-within-workload".into()),
                reason: format!("built-in exemption: loopback hop inside workload {w}"),
                policies,
            };
        }
        for tp in &self.files.transport_policies {
            for e in &tp.object.spec.exemptions {
                if self.matches(&e.conn_match, q) {
                    let name = format!(
                        "TransportPolicy {}/{}",
                        namespace(&tp.object.metadata),
                        tp.object.metadata.name
                    );
                    return Expectation {
                        expected: Requirement::None,
                        permissive: false,
                        exempt: Some(e.name.clone()),
                        reason: format!(
                            "{name} spec.exemptions[{}]{}",
                            e.name,
                            e.reason
                                .as_ref()
                                .map(|r| format!(": {r}"))
                                .unwrap_or_default()
                        ),
                        policies: vec![name],
                    };
                }
            }
        }

        let mut best: (Requirement, String) =
            (Requirement::None, "no policy requires encryption".into());
        let raise = |req: Requirement, why: String, best: &mut (Requirement, String)| {
            if rank(req) > rank(best.0) {
                *best = (req, why);
            }
        };
        // Server side.
        let mut permissive = false;
        let server = q
            .destination
            .as_ref()
            .map(|w| (w.namespace.clone(), w.labels.clone()))
            .or_else(|| {
                q.services
                    .first()
                    .map(|s| (s.namespace.clone(), BTreeMap::new()))
            });
        if let Some((ns, labels)) = server {
            let d = self.peer_mode(&ns, &labels, q.port);
            policies.push(d.source.clone());
            match d.mode {
                PeerMode::Strict => raise(Requirement::MutualTls, d.source, &mut best),
                PeerMode::Permissive => {
                    // Requires nothing: the PERMISSIVE object is what decided so,
                    // unless a client-side or native rule raises the requirement.
                    permissive = true;
                    best.1.clone_from(&d.source);
                }
                PeerMode::Disable | PeerMode::Unset => {}
            }
        }
        // Client side: DestinationRules configure the client's proxy; a client
        // without one is not bound by them.
        if let Some(svc) = q
            .services
            .first()
            .filter(|_| q.client_has_proxy != Some(false))
        {
            let (cns, clabels) = q
                .source
                .as_ref()
                .map(|w| (w.namespace.clone(), w.labels.clone()))
                .unwrap_or_else(|| ("default".into(), BTreeMap::new()));
            if let Some((mode, why)) = self.client_tls(&cns, &clabels, svc, q.port) {
                policies.push(why.clone());
                let req = match mode {
                    TlsMode::IstioMutual | TlsMode::Mutual => Requirement::MutualTls,
                    TlsMode::Simple => Requirement::Tls,
                    TlsMode::Disable => Requirement::None,
                };
                raise(req, why, &mut best);
            }
        }
        // Native rules.
        for tp in &self.files.transport_policies {
            for r in &tp.object.spec.rules {
                if self.matches(&r.conn_match, q) {
                    let why = format!(
                        "TransportPolicy {}/{} spec.rules[{}].require={}",
                        namespace(&tp.object.metadata),
                        tp.object.metadata.name,
                        r.name,
                        requirement_str(r.require)
                    );
                    policies.push(why.clone());
                    raise(r.require, why, &mut best);
                }
            }
        }
        Expectation {
            expected: best.0,
            permissive,
            exempt: None,
            reason: best.1,
            policies,
        }
    }

    fn matches(&self, m: &ConnMatch, q: &Query<'_>) -> bool {
        let in_nets = |list: &[String], addr: IpAddr| {
            list.iter()
                .filter_map(|s| parse_net(s))
                .any(|n| n.contains(&addr))
        };
        let workload_ok = |r: &Option<super::model::WorkloadRef>, w: Option<&Workload>| match r {
            None => true,
            Some(r) => w.is_some_and(|w| {
                r.namespace.as_ref().is_none_or(|n| *n == w.namespace)
                    && r.name.as_ref().is_none_or(|n| *n == w.name)
                    && r.match_labels
                        .iter()
                        .all(|(k, v)| w.labels.get(k) == Some(v))
            }),
        };
        (m.destination_cidrs.is_empty() || in_nets(&m.destination_cidrs, q.destination_addr))
            && (m.source_cidrs.is_empty() || in_nets(&m.source_cidrs, q.source_addr))
            && (m.ports.is_empty() || m.ports.contains(&q.port))
            && (m.port_names.is_empty()
                || q.destination
                    .as_ref()
                    .and_then(|w| w.port_names.get(&q.port))
                    .is_some_and(|n| m.port_names.contains(n)))
            && workload_ok(&m.destination, q.destination.as_ref())
            && workload_ok(&m.source, q.source.as_ref())
            && (m.processes.is_empty()
                || m.processes.iter().any(|p| {
                    Some(p.as_str()) == q.client_process || Some(p.as_str()) == q.server_process
                }))
            && m.direction.is_none_or(|d| d == q.direction)
            && m.loopback.is_none_or(|l| {
                l == (q.source_addr.is_loopback() && q.destination_addr.is_loopback())
            })
    }
}

/// `exportTo`: empty or `*` is everywhere, `.` the rule's own namespace.
fn exported_to(dr: &DestinationRule, client_ns: &str) -> bool {
    let own = namespace(&dr.metadata);
    dr.spec.export_to.is_empty()
        || dr
            .spec
            .export_to
            .iter()
            .any(|e| e == "*" || e == client_ns || (e == "." && own == client_ns))
}

/// A DestinationRule host as an FQDN pattern: short names are relative to the
/// rule's namespace; names with dots and wildcards are taken as written.
pub fn expand_host(host: &str, ns: &str, domain: &str) -> String {
    if host.contains('.') || host.contains('*') {
        host.to_owned()
    } else {
        format!("{host}.{ns}.svc.{domain}")
    }
}

/// How specifically `pattern` matches `fqdn`: exact beats wildcards, longer
/// wildcards beat shorter ones. `None` when it does not match.
pub fn host_specificity(pattern: &str, fqdn: &str) -> Option<usize> {
    if pattern == fqdn {
        return Some(usize::MAX);
    }
    if pattern == "*" {
        return Some(0);
    }
    let suffix = pattern.strip_prefix('*')?;
    fqdn.ends_with(suffix).then_some(suffix.len())
}
