//! Observed vs. expected: the verdict of a connection.
//!
//! | verdict | when |
//! | --- | --- |
//! | `exempt` | an exemption covers it (loopback hop inside one workload, configured exemptions) |
//! | `unknown` | the bytes do not say what it was (no handshake seen, SSH, resumed without history) |
//! | `compliant` | observed at least as strong as expected |
//! | `permissive` | plaintext accepted by a PERMISSIVE server that nothing else requires to be encrypted |
//! | `rejected` | weaker than required, and the server refused it |
//! | `violation` | weaker than required, and it was not refused |

use serde::Serialize;

use crate::{
    classify::{Classification, Outcome, Protocol, SecurityClass},
    policy::{Expectation, model::Requirement, rank},
};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    Compliant,
    Violation,
    Rejected,
    Permissive,
    Exempt,
    Unknown,
}

impl Verdict {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Compliant => "compliant",
            Self::Violation => "violation",
            Self::Rejected => "rejected",
            Self::Permissive => "permissive",
            Self::Exempt => "exempt",
            Self::Unknown => "unknown",
        }
    }
}

fn observed_rank(c: SecurityClass) -> Option<u8> {
    match c {
        SecurityClass::MutualTls => Some(2),
        SecurityClass::Tls => Some(1),
        SecurityClass::None => Some(0),
        SecurityClass::Unknown => None,
    }
}

pub fn requirement_str(r: Requirement) -> &'static str {
    match r {
        Requirement::MutualTls => "mutual_tls",
        Requirement::Tls => "tls",
        Requirement::None => "none",
    }
}

/// The verdict and a sentence that names the deciding policy.
pub fn judge(observed: &Classification, expected: &Expectation) -> (Verdict, String) {
    let class = observed.connection_security_policy;
    if expected.exempt.is_some() {
        return (Verdict::Exempt, format!("exempt: {}", expected.reason));
    }
    // A connection the policy refuses whatever its security: refused is
    // enforcement working, served is a violation.
    if let Some(why) = &expected.deny {
        return match observed.outcome {
            Outcome::ServerRefused => (
                Verdict::Rejected,
                format!(
                    "{} attempt refused by the server, as the policy requires: {why}",
                    class.as_str()
                ),
            ),
            Outcome::Incomplete => (
                Verdict::Violation,
                format!(
                    "the policy refuses this connection ({why}) (capture incomplete: the server may have refused it)"
                ),
            ),
            // HTTP (in plaintext, or inside the proxies' mutual TLS) gets a 403
            // on the accepted connection: the bytes do not say whether it was
            // refused.
            _ if expected.deny_http
                && (matches!(observed.protocol, Protocol::Http1 | Protocol::H2c)
                    || class == SecurityClass::MutualTls) =>
            {
                (
                    Verdict::Unknown,
                    format!(
                        "the policy refuses this client ({why}), but Linkerd refuses an HTTP request with a 403 on the accepted connection, which the capture cannot tell from a served one"
                    ),
                )
            }
            _ => (
                Verdict::Violation,
                format!(
                    "observed {} but the policy refuses this connection: {why}",
                    class.as_str()
                ),
            ),
        };
    }
    let Some(have) = observed_rank(class) else {
        return (
            Verdict::Unknown,
            format!(
                "observed unknown ({}); expected {} by {}",
                observed.evidence,
                requirement_str(expected.expected),
                expected.reason
            ),
        );
    };
    let need = rank(expected.expected);
    if have >= need {
        if expected.permissive
            && class == SecurityClass::None
            && need == 0
            && observed.outcome != Outcome::ServerRefused
        {
            // Istio's PERMISSIVE, or a Linkerd authorization without identity.
            let why = if expected.reason.contains("PERMISSIVE") {
                format!(
                    "plaintext accepted by a PERMISSIVE server ({}): this client must move to mutual TLS before STRICT",
                    expected.reason
                )
            } else {
                format!(
                    "plaintext accepted by a server that admits clients without a mesh identity ({}): this client must move to mutual TLS before the server requires it",
                    expected.reason
                )
            };
            return (Verdict::Permissive, why);
        }
        return (
            Verdict::Compliant,
            format!(
                "observed {} meets {} required by {}",
                class.as_str(),
                requirement_str(expected.expected),
                expected.reason
            ),
        );
    }
    if observed.outcome == Outcome::ServerRefused {
        return (
            Verdict::Rejected,
            format!(
                "{} attempt refused by the server; {} required by {}",
                class.as_str(),
                requirement_str(expected.expected),
                expected.reason
            ),
        );
    }
    // With part of the capture lost, whether the server refused is not known:
    // flagged as a violation (never hidden as a rejection), and said so.
    let caveat = if observed.outcome == Outcome::Incomplete {
        " (capture incomplete: the server may have refused it)"
    } else {
        ""
    };
    (
        Verdict::Violation,
        format!(
            "observed {} but {} required by {}{caveat}",
            class.as_str(),
            requirement_str(expected.expected),
            expected.reason
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::classify::Confidence;

    fn obs(class: SecurityClass, outcome: Outcome) -> Classification {
        Classification {
            connection_security_policy: class,
            confidence: Confidence::High,
            evidence: "test".into(),
            protocol: Protocol::Tls,
            outcome,
            tls: None,
            starttls: None,
            tunnel: None,
            http: None,
            mesh: None,
        }
    }

    fn exp(req: Requirement, permissive: bool, exempt: bool) -> Expectation {
        Expectation {
            expected: req,
            permissive,
            exempt: exempt.then(|| "x".to_owned()),
            reason: "PeerAuthentication default/p spec.mtls.mode=STRICT".into(),
            policies: vec![],
            auto_mtls: None,
            deny: None,
            deny_http: false,
        }
    }

    #[test]
    fn the_verdict_table() {
        use Outcome::*;
        use SecurityClass as C;
        let cases = [
            (
                C::MutualTls,
                Completed,
                Requirement::MutualTls,
                false,
                false,
                Verdict::Compliant,
            ),
            (
                C::None,
                ServerRefused,
                Requirement::MutualTls,
                false,
                false,
                Verdict::Rejected,
            ),
            (
                C::Tls,
                ServerRefused,
                Requirement::MutualTls,
                false,
                false,
                Verdict::Rejected,
            ),
            (
                C::None,
                Completed,
                Requirement::MutualTls,
                false,
                false,
                Verdict::Violation,
            ),
            // Part of the capture lost: never hidden as a rejection.
            (
                C::None,
                Incomplete,
                Requirement::MutualTls,
                false,
                false,
                Verdict::Violation,
            ),
            (
                C::Tls,
                Completed,
                Requirement::MutualTls,
                false,
                false,
                Verdict::Violation,
            ),
            (
                C::None,
                Completed,
                Requirement::None,
                true,
                false,
                Verdict::Permissive,
            ),
            (
                C::MutualTls,
                Completed,
                Requirement::None,
                true,
                false,
                Verdict::Compliant,
            ),
            (
                C::None,
                Completed,
                Requirement::None,
                false,
                true,
                Verdict::Exempt,
            ),
            (
                C::Unknown,
                Completed,
                Requirement::MutualTls,
                false,
                false,
                Verdict::Unknown,
            ),
            (
                C::Tls,
                Completed,
                Requirement::Tls,
                false,
                false,
                Verdict::Compliant,
            ),
            (
                C::None,
                Completed,
                Requirement::None,
                false,
                false,
                Verdict::Compliant,
            ),
        ];
        for (i, (class, outcome, req, permissive, exempt, want)) in cases.into_iter().enumerate() {
            let (v, why) = judge(&obs(class, outcome), &exp(req, permissive, exempt));
            assert_eq!(v, want, "case {i}: {why}");
        }
    }

    /// A connection the policy refuses: refused is `rejected` whatever it was,
    /// served is a `violation`, even with mutual TLS.
    #[test]
    fn a_denied_connection_is_rejected_when_refused_and_a_violation_when_served() {
        use Outcome::*;
        use SecurityClass as C;
        let mut e = exp(Requirement::MutualTls, false, false);
        e.deny = Some("Server shop/cart (port 8080; Server shop/cart spec.accessPolicy=deny): no authorization, so Linkerd refuses every client".into());
        for (class, outcome, want) in [
            (C::MutualTls, ServerRefused, Verdict::Rejected),
            (C::None, ServerRefused, Verdict::Rejected),
            (C::MutualTls, Completed, Verdict::Violation),
            (C::None, Completed, Verdict::Violation),
            (C::Unknown, Completed, Verdict::Violation),
            (C::None, Incomplete, Verdict::Violation),
        ] {
            let (v, why) = judge(&obs(class, outcome), &e);
            assert_eq!(v, want, "{class:?} {outcome:?}: {why}");
            assert!(why.contains("Server shop/cart"), "{why}");
        }
        // Exemptions still win.
        e.exempt = Some("x".into());
        assert_eq!(judge(&obs(C::None, Completed), &e).0, Verdict::Exempt);
    }

    /// Linkerd answers a denied HTTP request with a 403 on the accepted
    /// connection: served HTTP (plaintext, or inside mutual TLS) is `unknown`,
    /// other plaintext still a `violation`, a refusal still `rejected`.
    #[test]
    fn a_denied_http_port_may_answer_with_a_403() {
        use Outcome::*;
        use SecurityClass as C;
        let mut e = exp(Requirement::MutualTls, false, false);
        e.deny = Some("Server shop/web (port 8080; Server shop/web spec.accessPolicy=deny)".into());
        e.deny_http = true;
        let with = |e: &Expectation, class, outcome, protocol| {
            let mut o = obs(class, outcome);
            o.protocol = protocol;
            judge(&o, e).0
        };
        assert_eq!(
            with(&e, C::None, Completed, Protocol::Http1),
            Verdict::Unknown
        );
        assert_eq!(
            with(&e, C::MutualTls, Completed, Protocol::Tls),
            Verdict::Unknown
        );
        assert_eq!(
            with(&e, C::None, Completed, Protocol::Redis),
            Verdict::Violation
        );
        assert_eq!(
            with(&e, C::None, ServerRefused, Protocol::Http1),
            Verdict::Rejected
        );
        e.deny_http = false;
        assert_eq!(
            with(&e, C::None, Completed, Protocol::Http1),
            Verdict::Violation
        );
    }

    #[test]
    fn plaintext_into_a_linkerd_unauthenticated_policy_is_permissive_in_linkerd_words() {
        let mut e = exp(Requirement::None, true, false);
        e.reason = "Server shop/cart spec.accessPolicy=all-unauthenticated admits 10.0.0.1 without a mesh identity".into();
        let (v, why) = judge(&obs(SecurityClass::None, Outcome::Completed), &e);
        assert_eq!(v, Verdict::Permissive);
        assert!(
            why.contains("without a mesh identity") && !why.contains("STRICT"),
            "{why}"
        );
    }
}

/// Who the two ends are and what policy says about the connection: the fields a
/// connection record and the metrics carry.
#[derive(Debug, Clone, Serialize)]
pub struct Assessment {
    pub source_workload: String,
    pub source_workload_namespace: String,
    pub destination_workload: String,
    pub destination_workload_namespace: String,
    /// The pods of the two ends, in a cluster.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub source_pod: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub destination_pod: Option<String>,
    /// The containers, when the cgroup path names one the pod status lists.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub source_container: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub destination_container: Option<String>,
    /// Istio's canonical service of the two ends (`service.istio.io/canonical-name`,
    /// `app.kubernetes.io/name`, `app`, else the workload), in a cluster.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub source_canonical_service: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub destination_canonical_service: Option<String>,
    /// FQDN of the destination service, when the inventory knows it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub destination_service: Option<String>,
    pub destination_port: u16,
    /// `mutual_tls`, `tls` or `none`.
    pub expected_security_policy: &'static str,
    pub verdict: Verdict,
    pub verdict_reason: String,
    /// Every policy object that had a say.
    pub policies: Vec<String>,
}

/// Attributes both ends of `conn`, resolves the policy and judges.
///
/// `hop` says what the connection is on the mesh's data path: for an
/// `app_to_proxy` hop the destination is where the app was going (its server
/// end is the proxy's socket), and `cls` is the class of the proxy's upstream
/// connection. A `builtin` exemption of the mesh's own traffic wins over policy.
pub fn assess(
    conn: &crate::flows::Connection,
    cls: &Classification,
    policy: &crate::policy::PolicySet,
    hop: &crate::hops::HopFacts,
    builtin: Option<(crate::hops::Builtin, String)>,
    client_has_proxy: Option<bool>,
) -> Assessment {
    use crate::{
        hops::Hop,
        inventory::EndFacts,
        policy::{Query, model::Direction},
    };
    let server_end = conn
        .server_end
        .as_ref()
        .filter(|_| hop.hop != Hop::AppToProxy);
    let inv = &policy.inventory;
    fn facts(e: &crate::flows::End) -> EndFacts<'_> {
        EndFacts {
            cgroup: e.cgroup.as_deref(),
            netns_cookie: (e.netns_cookie != 0).then_some(e.netns_cookie),
            addr: e.local.ip(),
            comm: e.process.as_ref().map(|p| &*p.comm),
        }
    }
    // A proxy's socket is attributed by its address first: a node proxy
    // (ztunnel) runs in a cgroup of its own and opens sockets in every pod's
    // network namespace with the pod's address. A delivery out of a tunnel is
    // attributed to the tunnel's client, the real one (through a waypoint on this
    // node, the client of the waypoint's own arrival).
    let of_end = |e: &crate::flows::End, is_proxy: bool| {
        let by_addr = (is_proxy && !e.local.ip().is_loopback())
            .then(|| inv.workload_by_addr(e.local.ip()))
            .flatten();
        by_addr.or_else(|| inv.workload_of(&facts(e)))
    };
    let client_addr = hop
        .tunnel
        .as_ref()
        .map_or(conn.client.ip(), |t| t.origin().ip());
    let source = match (&conn.client_end, &hop.tunnel) {
        (_, Some(t)) => inv.workload_by_addr(t.origin().ip()),
        (Some(e), None) => of_end(e, hop.client_is_proxy),
        (None, None) => inv.workload_by_addr(conn.client.ip()),
    };
    let destination = match server_end {
        Some(e) => of_end(e, hop.server_is_proxy),
        None => inv.workload_by_addr(conn.server.ip()),
    };
    let services = inv.services_for(conn.server.ip(), conn.server.port());
    let direction = match (&conn.client_end, server_end) {
        (Some(_), Some(_)) => Direction::Local,
        (Some(_), None) => Direction::Outbound,
        _ => Direction::Inbound,
    };
    let q = Query {
        source: source.clone(),
        destination: destination.clone(),
        source_addr: client_addr,
        destination_addr: conn.server.ip(),
        port: conn.server.port(),
        services: services.clone(),
        client_process: conn
            .client_end
            .as_ref()
            .and_then(|e| e.process.as_ref())
            .map(|p| &*p.comm),
        server_process: server_end
            .and_then(|e| e.process.as_ref())
            .map(|p| &*p.comm),
        direction,
        client_has_proxy,
    };
    let expectation = match builtin {
        Some((b, reason)) => crate::policy::Expectation {
            expected: Requirement::None,
            permissive: false,
            exempt: Some(b.name().to_owned()),
            reason: format!("built-in exemption {b}: {reason}"),
            policies: Vec::new(),
            auto_mtls: None,
            deny: None,
            deny_http: false,
        },
        None => policy.expect(&q),
    };
    let (verdict, verdict_reason) = judge(cls, &expectation);
    let name = |w: &Option<crate::inventory::Workload>| {
        w.as_ref()
            .map_or_else(|| "unknown".to_owned(), |w| w.name.clone())
    };
    let ns = |w: &Option<crate::inventory::Workload>| {
        w.as_ref()
            .map_or_else(|| "unknown".to_owned(), |w| w.namespace.clone())
    };
    Assessment {
        source_workload: name(&source),
        source_workload_namespace: ns(&source),
        destination_workload: name(&destination),
        // An end no workload owns but an EndpointSlice lists as a pod (a pod on
        // another node) is in the cluster: its namespace is the pod's. `unknown`
        // is left for destinations outside the cluster (a selector-less Service's
        // endpoints included), whose connections only their client's node reports.
        destination_workload_namespace: match &destination {
            None => inv
                .endpoint_pod_namespace(conn.server.ip())
                .unwrap_or_else(|| "unknown".to_owned()),
            Some(_) => ns(&destination),
        },
        source_pod: source.as_ref().and_then(|w| w.pod.clone()),
        destination_pod: destination.as_ref().and_then(|w| w.pod.clone()),
        source_container: source.as_ref().and_then(|w| w.container.clone()),
        destination_container: destination.as_ref().and_then(|w| w.container.clone()),
        source_canonical_service: source.as_ref().and_then(|w| w.canonical_service.clone()),
        destination_canonical_service: destination
            .as_ref()
            .and_then(|w| w.canonical_service.clone()),
        destination_service: services.first().map(|s| s.fqdn.clone()),
        destination_port: conn.server.port(),
        expected_security_policy: requirement_str(expectation.expected),
        verdict,
        verdict_reason,
        policies: expectation.policies,
    }
}
