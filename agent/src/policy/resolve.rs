//! What a connection should be, resolved the way Istio resolves it: the server
//! side from PeerAuthentication ([`super::peer`]), the client side from
//! DestinationRules ([`super::destination`]) or, without a TLS setting, from
//! Istio's auto-mTLS; for a destination with a Linkerd proxy, Linkerd's inbound
//! policy ([`super::linkerd`]) and its automatic mTLS between meshed pods; this
//! project's `TransportPolicy` rules add requirements and its exemptions
//! override all ([`super::native`]). The strictest requirement wins.
//!
//! Everything is indexed when the policy loads ([`PolicySet::new`]); answering a
//! [`Query`] costs a few hash lookups, whatever the number of objects.

use std::{collections::BTreeMap, net::IpAddr};

use serde::Serialize;

use super::{
    destination::{ConsolidatedRule, DestinationIndex, subset_for, tls_for},
    linkerd::{Admission, LinkerdClient, LinkerdDecision, LinkerdIndex},
    load::PolicyFiles,
    model::{Direction, PeerMode, Requirement, TlsMode},
    native::NativeIndex,
    peer::{PeerDecision, PeerIndex},
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
    /// Set when Istio's auto-mTLS makes the client's sidecar send mutual TLS
    /// (the client has a sidecar, no DestinationRule sets TLS for the
    /// destination, the destination has a sidecar and is not DISABLE): the
    /// sentence that says so. `expected` is then at least `mutual_tls`, so
    /// plaintext seen here is the client's problem (its traffic left without its
    /// sidecar), not a `permissive` finding, even into a PERMISSIVE server.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub auto_mtls: Option<String>,
    /// Set when the policy refuses this connection whatever its security (a
    /// Linkerd Server or default policy with no authorization that admits this
    /// client): the sentence that says so. A connection the server refused is
    /// then enforcement working (`rejected`), one it served a `violation`.
    /// `expected` is `mutual_tls`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub deny: Option<String>,
    /// With `deny`: the refusal may be an HTTP 403 on an accepted connection
    /// (Linkerd answers denied HTTP requests so, and refuses other traffic at
    /// the TCP level), so a connection that completed is not proof it was
    /// served.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub deny_http: bool,
}

pub fn rank(r: Requirement) -> u8 {
    match r {
        Requirement::None => 0,
        Requirement::Tls => 1,
        Requirement::MutualTls => 2,
    }
}

/// The kind of proxy that originates a client's connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientProxy {
    /// No mesh proxy: the DestinationRule is the declared intent, no more.
    None,
    /// An Istio sidecar (`istio-proxy`).
    Sidecar,
    /// An Istio gateway (applies `credentialName`).
    Gateway,
}

/// What the client side should send, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientDecision {
    /// The TLS the client originates, as Istio would configure it: `None` for
    /// plaintext (no TLS setting applies, DISABLE, or a setting a sidecar ignores).
    pub mode: Option<TlsMode>,
    /// The DestinationRule entry used, `DestinationRule ns/name`.
    pub rule: Option<String>,
    /// Auto-mTLS chose `ISTIO_MUTUAL`.
    pub auto_mtls: bool,
    /// The sentence naming the object and field that decided (or auto-mTLS).
    pub reason: Option<String>,
}

/// Loaded policy, indexed, ready to answer questions.
pub struct PolicySet {
    pub files: PolicyFiles,
    pub root_namespace: String,
    pub inventory: Inventory,
    /// Istio's `meshConfig.enableAutoMtls` (default on); the policy files' mesh
    /// config map (`ConfigMap` `istio`, key `mesh`) can turn it off.
    pub auto_mtls: bool,
    /// Built from a cluster state that held the first complete lists of pods and
    /// of every policy kind (readiness waits for such a set to be in force).
    pub cluster_synced: bool,
    peer: PeerIndex,
    destination: DestinationIndex,
    linkerd: LinkerdIndex,
    native: NativeIndex,
}

impl std::fmt::Debug for PolicySet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PolicySet")
            .field("root_namespace", &self.root_namespace)
            .field("objects", &self.files.object_count())
            .field("auto_mtls", &self.auto_mtls)
            .finish_non_exhaustive()
    }
}

fn mode_requirement(mode: TlsMode) -> Requirement {
    match mode {
        TlsMode::IstioMutual | TlsMode::Mutual => Requirement::MutualTls,
        TlsMode::Simple => Requirement::Tls,
        TlsMode::Disable => Requirement::None,
    }
}

/// Istio labels a pod's endpoint `security.istio.io/tlsMode: istio` when it has a
/// sidecar; `disabled` turns auto-mTLS to it off.
fn accepts_istio_mtls(w: &Workload) -> bool {
    w.sidecar
        && w.labels
            .get("security.istio.io/tlsMode")
            .is_none_or(|m| m != "disabled")
}

impl PolicySet {
    pub fn new(files: PolicyFiles, root_namespace: &str) -> Self {
        let inventory = Inventory::from_files(&files);
        let auto_mtls = files
            .mesh_configs
            .first()
            .and_then(|m| m.object.enable_auto_mtls)
            .unwrap_or(true);
        let peer = PeerIndex::new(&files.peer_authentications, root_namespace);
        let destination = DestinationIndex::new(
            &files.destination_rules,
            root_namespace,
            &inventory.cluster_domain,
        );
        let native = NativeIndex::new(&files.transport_policies);
        let linkerd = LinkerdIndex::new(&files, &inventory.cluster_domain);
        Self {
            files,
            root_namespace: root_namespace.to_owned(),
            inventory,
            auto_mtls,
            cluster_synced: false,
            peer,
            destination,
            linkerd,
            native,
        }
    }

    /// Rebuilds the indexes after `inventory` changed (its cluster domain decides
    /// how short DestinationRule hosts expand).
    pub fn with_inventory(mut self, inventory: Inventory) -> Self {
        if inventory.cluster_domain != self.inventory.cluster_domain {
            self.destination = DestinationIndex::new(
                &self.files.destination_rules,
                &self.root_namespace,
                &inventory.cluster_domain,
            );
            self.linkerd = LinkerdIndex::new(&self.files, &inventory.cluster_domain);
        }
        self.inventory = inventory;
        self
    }

    /// PeerAuthentication mode for a workload (namespace, labels) and port.
    pub fn peer_mode(
        &self,
        ns: &str,
        labels: &BTreeMap<String, String>,
        port: u16,
    ) -> PeerDecision {
        self.peer
            .mode(&self.files.peer_authentications, ns, labels, port)
    }

    /// Istio's namespace-level mTLS mode (`None`: no mesh-wide or namespace-wide
    /// policy, Istio's MTLSUnknown).
    pub fn namespace_mode(&self, ns: &str) -> Option<PeerMode> {
        self.peer
            .namespace_mode(&self.files.peer_authentications, ns)
    }

    /// The PeerAuthentications Istio selects for a workload, oldest first.
    pub fn peer_authentications_for(
        &self,
        ns: &str,
        labels: &BTreeMap<String, String>,
    ) -> Vec<&super::load::Located<super::model::PeerAuthentication>> {
        self.peer
            .for_workload(&self.files.peer_authentications, ns, labels)
    }

    /// The consolidated DestinationRules a client namespace sees for a service.
    pub fn destination_rules_for(
        &self,
        client_ns: &str,
        host: &str,
        service_ns: &str,
    ) -> Vec<&ConsolidatedRule> {
        self.destination.for_service(client_ns, host, service_ns)
    }

    /// The DestinationRule entry a client (namespace, labels) uses for a host.
    pub fn destination_rule_for(
        &self,
        client_ns: &str,
        client_labels: &BTreeMap<String, String>,
        host: &Service,
    ) -> Option<&ConsolidatedRule> {
        self.destination
            .for_client(client_ns, client_labels, &host.fqdn, &host.namespace)
    }

    /// The DestinationRule TLS mode a client in `client_ns` (with `client_labels`)
    /// uses for `host:port`, as written in the rule (no proxy semantics), and the
    /// field that says so.
    pub fn client_tls(
        &self,
        client_ns: &str,
        client_labels: &BTreeMap<String, String>,
        host: &Service,
        port: u16,
    ) -> Option<(TlsMode, String)> {
        let rule = self.destination_rule_for(client_ns, client_labels, host)?;
        let (tls, field) = tls_for(rule, None, port);
        let t = tls?;
        Some((
            t.mode(),
            format!(
                "{} {field}.mode={} (host {})",
                rule.label(),
                t.mode().as_str(),
                rule.host_as_written
            ),
        ))
    }

    /// Istio's `BestEffortInferServiceMTLSMode`: `None` (MTLSUnknown) for a
    /// service outside the mesh; DISABLE for a passthrough (headless) service
    /// whose endpoint has no sidecar (Istio looks at every endpoint, the auditor
    /// at the one connected to); else the namespace-level mode of the service's
    /// namespace, PERMISSIVE when there is none.
    pub fn service_mtls_mode(
        &self,
        host: &Service,
        destination: Option<&Workload>,
    ) -> Option<PeerMode> {
        if host.mesh_external {
            return None;
        }
        if host.headless && !destination.is_some_and(accepts_istio_mtls) {
            return Some(PeerMode::Disable);
        }
        Some(
            self.namespace_mode(&host.namespace)
                .unwrap_or(PeerMode::Permissive),
        )
    }

    /// What a client sends to `host:port` (a destination workload, when known,
    /// picks the subset and decides auto-mTLS), as Istio configures the client's
    /// proxy (`buildUpstreamTLSSettings`, `buildUpstreamClusterTLSContext`, the
    /// endpoints' `tlsMode`).
    pub fn client_side(
        &self,
        client: Option<&Workload>,
        proxy: ClientProxy,
        host: &Service,
        destination: Option<&Workload>,
        port: u16,
    ) -> ClientDecision {
        let empty = BTreeMap::new();
        let (cns, clabels) =
            client.map_or(("default", &empty), |w| (w.namespace.as_str(), &w.labels));
        let rule = self.destination_rule_for(cns, clabels, host);
        let subset = rule.and_then(|r| subset_for(r, destination.map_or(&empty, |w| &w.labels)));
        let (tls, field) = rule.map_or((None, String::new()), |r| tls_for(r, subset, port));
        if let (Some(r), Some(t)) = (rule, tls) {
            let mode = t.mode();
            let at = format!(
                "{} {field}.mode={} (host {})",
                r.label(),
                mode.as_str(),
                r.host_as_written
            );
            // A secret credential on a sidecar: Istio builds no TLS at all unless
            // the rule has a workload selector (credentialName is for gateways).
            if proxy == ClientProxy::Sidecar
                && matches!(mode, TlsMode::Simple | TlsMode::Mutual)
                && t.secret_credential().is_some()
                && r.spec.workload_selector.is_none()
            {
                return ClientDecision {
                    mode: None,
                    rule: Some(r.label()),
                    auto_mtls: false,
                    reason: Some(format!(
                        "{at} with credentialName: a sidecar ignores it (only gateways, or a DestinationRule with a workloadSelector, use credentialName) and sends plaintext"
                    )),
                };
            }
            return ClientDecision {
                mode: (mode != TlsMode::Disable).then_some(mode),
                rule: Some(r.label()),
                auto_mtls: false,
                reason: Some(at),
            };
        }
        let no_tls = ClientDecision {
            mode: None,
            rule: rule.map(ConsolidatedRule::label),
            auto_mtls: false,
            reason: None,
        };
        if proxy == ClientProxy::None || !self.auto_mtls || host.mesh_external {
            return no_tls;
        }
        if self.service_mtls_mode(host, destination) == Some(PeerMode::Disable) {
            return no_tls;
        }
        // Per endpoint: only to a sidecar whose port is not DISABLE.
        let Some(dst) = destination.filter(|w| accepts_istio_mtls(w)) else {
            return no_tls;
        };
        let dst_mode = self.peer_mode(&dst.namespace, &dst.labels, port);
        if !host.headless && dst_mode.mode == PeerMode::Disable {
            return no_tls;
        }
        let who = client.map_or_else(
            || "the client".to_owned(),
            |w| format!("client {}/{}", w.namespace, w.name),
        );
        let no_rule = match rule {
            Some(r) => format!("{} sets no TLS for port {port}", r.label()),
            None => format!("no DestinationRule sets TLS for {}:{port}", host.fqdn),
        };
        ClientDecision {
            mode: Some(TlsMode::IstioMutual),
            rule: rule.map(ConsolidatedRule::label),
            auto_mtls: true,
            reason: Some(format!(
                "auto-mTLS: {who} has a sidecar and {no_rule}; the destination {}/{} has a sidecar and its port {port} is {} ({}), so Istio sends ISTIO_MUTUAL",
                dst.namespace,
                dst.name,
                dst_mode.mode.as_str(),
                dst_mode.source
            )),
        }
    }

    /// What Linkerd's proxy of `destination` does with a connection to `port`
    /// from `client` (its workload, when known, gives its mesh identity) at
    /// `client_addr`.
    pub fn linkerd_decision(
        &self,
        destination: &Workload,
        port: u16,
        client: Option<&Workload>,
        client_addr: Option<IpAddr>,
    ) -> LinkerdDecision {
        let identity = client.and_then(|w| self.linkerd.identity_of(w));
        self.linkerd_decision_for_identity(destination, port, identity.as_deref(), client_addr)
    }

    /// [`Self::linkerd_decision`] for a client known by its mesh identity (as
    /// its certificate would carry it) rather than by its workload.
    pub fn linkerd_decision_for_identity(
        &self,
        destination: &Workload,
        port: u16,
        identity: Option<&str>,
        client_addr: Option<IpAddr>,
    ) -> LinkerdDecision {
        self.linkerd.decide(
            &self.files,
            destination,
            port,
            LinkerdClient {
                addr: client_addr,
                identity,
            },
        )
    }

    /// What `q` requires.
    pub fn expect(&self, q: &Query<'_>) -> Expectation {
        let mut policies = Vec::new();
        // Exemptions first: they override everything.
        if self.native.exempt_loopback_within_workload
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
                auto_mtls: None,
                deny: None,
                deny_http: false,
            };
        }
        let tps = &self.files.transport_policies;
        if let Some(c) = self.native.exemption(tps, q) {
            let tp = &tps[c.policy].object;
            let e = &tp.spec.exemptions[c.entry];
            let name = format!("TransportPolicy {}/{}", tp.metadata.ns(), tp.metadata.name);
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
                auto_mtls: None,
                deny: None,
                deny_http: false,
            };
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
            .map(|w| (w.namespace.as_str(), &w.labels))
            .or_else(|| q.services.first().map(|s| (s.namespace.as_str(), &EMPTY)));
        // A workload in Linkerd's mesh and not in Istio's: Istio's default
        // (no PeerAuthentication) says nothing about it; an explicit
        // PeerAuthentication still counts.
        let linkerd_dst = q.destination.as_ref().filter(|w| w.linkerd.is_some());
        let linkerd_only = linkerd_dst.is_some_and(|w| !w.sidecar);
        if let Some((ns, labels)) = server {
            let d = self.peer_mode(ns, labels, q.port);
            if !(linkerd_only && d.is_default()) {
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
        }
        // Linkerd: the destination's proxy admits this client or not; between
        // two meshed pods Linkerd's proxies speak mutual TLS.
        let mut auto_mtls = None;
        let mut deny = None;
        let mut deny_http = false;
        if let Some(dst) = linkerd_dst {
            let client_meshed = q.source.as_ref().is_some_and(|w| w.linkerd.is_some())
                && q.client_has_proxy != Some(false);
            let client_addr = Some(q.source_addr).filter(|a| !a.is_unspecified());
            let d = self.linkerd_decision(
                dst,
                q.port,
                q.source.as_ref().filter(|_| client_meshed),
                client_addr,
            );
            policies.extend(d.policies.iter().cloned());
            match d.admission {
                Admission::Localhost => {}
                Admission::Unauthenticated { .. } => {
                    permissive = true;
                    if rank(best.0) == 0 {
                        best.1.clone_from(&d.reason);
                    }
                }
                Admission::Authenticated => {
                    raise(Requirement::MutualTls, d.reason.clone(), &mut best)
                }
                Admission::Deny => {
                    best = (Requirement::MutualTls, d.reason.clone());
                    deny = Some(d.reason.clone());
                    deny_http = d.http;
                }
            }
            if client_meshed && !matches!(d.admission, Admission::Localhost | Admission::Deny) {
                let name = |w: &Workload| format!("{}/{}", w.namespace, w.name);
                let why = format!(
                    "Linkerd: client {} and destination {} both run a Linkerd proxy, and Linkerd's proxies speak mutual TLS to each other",
                    q.source.as_ref().map(name).unwrap_or_default(),
                    name(dst)
                );
                policies.push(why.clone());
                auto_mtls = Some(why.clone());
                raise(Requirement::MutualTls, why, &mut best);
            }
        }
        // Client side. DestinationRules configure the client's proxy: a client
        // known to have none (a local pod no proxy intercepts in) is not bound by
        // them; one whose proxy is unknown takes them as the declared intent.
        let known_without_proxy =
            q.client_has_proxy == Some(false) && !q.source.as_ref().is_some_and(|w| w.sidecar);
        if let Some(svc) = q.services.first().filter(|_| !known_without_proxy) {
            let proxy = if q.client_has_proxy == Some(true)
                || q.source.as_ref().is_some_and(|w| w.sidecar)
            {
                ClientProxy::Sidecar
            } else {
                ClientProxy::None
            };
            let c = self.client_side(
                q.source.as_ref(),
                proxy,
                svc,
                q.destination.as_ref(),
                q.port,
            );
            if let Some(why) = c.reason {
                policies.push(why.clone());
                let req = c.mode.map_or(Requirement::None, mode_requirement);
                if c.auto_mtls {
                    auto_mtls = Some(why.clone());
                }
                raise(req, why, &mut best);
            }
        }
        // Native rules.
        for c in self.native.matching_rules(tps, q) {
            let tp = &tps[c.policy].object;
            let r = &tp.spec.rules[c.entry];
            let why = format!(
                "TransportPolicy {}/{} spec.rules[{}].require={}",
                tp.metadata.ns(),
                tp.metadata.name,
                r.name,
                r.require.as_str()
            );
            policies.push(why.clone());
            raise(r.require, why, &mut best);
        }
        Expectation {
            expected: best.0,
            permissive,
            exempt: None,
            reason: best.1,
            policies,
            auto_mtls,
            deny,
            deny_http,
        }
    }
}

static EMPTY: BTreeMap<String, String> = BTreeMap::new();

/// Istio's short-host resolution, for callers that name a host.
pub use super::destination::resolve_host as expand_host;
