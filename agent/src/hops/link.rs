//! Linking an app's redirected connection to the proxy's upstream connection that
//! carried it.
//!
//! Proxies pool and reuse upstream connections (Envoy keeps HTTP/1.1 connections
//! alive and multiplexes HTTP/2; ztunnel pools one HBONE connection per identity
//! pair), so upstream connections do not map one to one to app connections. The
//! link is by proxy (process and network namespace), destination (the original
//! destination the app asked for, or an address of the same service) and time: an
//! upstream connection that was open while the app's connection was. Among
//! those, one opened during the app's connection (a new upstream made for it) wins
//! over one opened before (a pooled one), the nearest in time first.

use std::net::SocketAddr;

use serde::Serialize;

use super::{Hops, ProxyKey, RECENT_PER_PROXY};
use crate::{
    classify::{Classification, Confidence, Outcome, Protocol, SecurityClass},
    flows::{Connection, FlowTable},
};

/// A finished upstream connection of a proxy, kept a while for linking.
#[derive(Debug, Clone)]
pub(super) struct Upstream {
    cookie: u64,
    client: SocketAddr,
    server: SocketAddr,
    start_ns: u64,
    end_ns: u64,
    predates_agent: bool,
    cls: Classification,
}

/// How an upstream connection was tied to an app's connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum LinkedBy {
    /// Time only: a tunnel of the same proxy to somewhere else (a waypoint, or an
    /// address the inventory does not place).
    Time,
    /// An address of the same service (a proxy's choice of endpoint).
    Service,
    /// A tunnel to an endpoint of the destination's service: the app's port
    /// travels inside it, so it is a closer match than another port of the same
    /// service.
    #[serde(rename = "tunnel")]
    TunnelToEndpoint,
    /// An HBONE connection to a waypoint on this node that relays to the
    /// destination's address or to an endpoint of its service
    /// ([`super::waypoint`]): where ztunnel sends a service's traffic when the
    /// service uses a waypoint, so it beats a tunnel to one of its endpoints.
    Waypoint,
    /// A tunnel (HBONE, Linkerd transport) to the destination's own address.
    Tunnel,
    /// The original destination itself.
    Destination,
}

/// Which upstream connection decided an `app_to_proxy` hop.
#[derive(Debug, Clone, Serialize)]
pub struct UpstreamRef {
    /// How it was tied to the app's connection.
    pub linked_by: LinkedBy,
    /// The proxy's socket of the upstream connection.
    pub socket_cookie: u64,
    pub client: SocketAddr,
    pub server: SocketAddr,
    /// When the upstream connection was opened (monotonic ns; records print it as
    /// `start`).
    #[serde(skip)]
    pub start_ns: u64,
    /// Still open when this record was written.
    pub open: bool,
    /// Opened before this app connection: a pooled connection reused for it.
    pub pooled: bool,
    /// The upstream connection's own class.
    pub connection_security_policy: SecurityClass,
    /// For `linked_by: "waypoint"`: the waypoint the tunnel goes to.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub waypoint: Option<super::waypoint::WaypointRef>,
}

/// A candidate: (opened at, closed at or `None` while open, cookie, destination).
struct Candidate<'a> {
    by: LinkedBy,
    start_ns: u64,
    end_ns: Option<u64>,
    cookie: u64,
    server: SocketAddr,
    finished: Option<&'a Upstream>,
}

/// Slack for events of two sockets that the ring buffer may order either way.
const ORDER_SLACK_NS: u64 = 50_000_000;

impl Hops {
    /// A proxy's upstream connection finished: keep its class a while, so that app
    /// connections that finish after it can still be linked to it.
    pub fn upstream_finished(&mut self, conn: &Connection, cls: &Classification) {
        let Some(end) = conn.client_end.as_ref() else {
            return;
        };
        let Some(pid) = end.process.as_ref().map(|p| p.pid) else {
            return;
        };
        let key: ProxyKey = (pid, end.netns_cookie);
        let Some(st) = self.state.get_mut(&key) else {
            return;
        };
        st.open.retain(|&(_, cookie, _)| cookie != end.cookie);
        let now = end.closed_ns.unwrap_or(conn.last_ns);
        let memory = self.cfg.upstream_memory_ns;
        while st
            .recent
            .front()
            .is_some_and(|u| now.saturating_sub(u.end_ns) > memory)
            || st.recent.len() >= RECENT_PER_PROXY
        {
            st.recent.pop_front();
        }
        st.recent.push_back(Upstream {
            cookie: end.cookie,
            client: conn.client,
            server: conn.server,
            start_ns: conn.first_ns,
            end_ns: now,
            predates_agent: conn.preexisting(),
            cls: cls.clone(),
        });
    }

    /// The logical classification of an `app_to_proxy` connection: the class of
    /// the upstream connection the intercepting proxy used for the same
    /// destination while the app's connection was open, with the evidence saying
    /// which; `unknown` with the reason when there is none. `same_service` says
    /// whether an upstream destination serves the app's original destination (a
    /// proxy sends a connection for a service address to one of its endpoints).
    /// `classify_open` classifies an upstream connection that is still open.
    pub fn upstream_evidence(
        &self,
        app: &Connection,
        table: &FlowTable,
        same_service: &dyn Fn(SocketAddr, SocketAddr) -> bool,
        classify_open: &dyn Fn(&Connection) -> Classification,
    ) -> (Classification, Option<UpstreamRef>) {
        let original = app.server;
        let proxy = app.server_end.as_ref().and_then(|s| {
            let i = s.interception.as_ref()?;
            Some(((i.process.pid, s.netns_cookie), i.process.comm.clone()))
        });
        let Some((key, comm)) = proxy else {
            return (no_evidence("no intercepting proxy is known".into()), None);
        };
        let (start, end) = (app.first_ns, app.last_ns);
        let mut best: Option<Candidate<'_>> = None;
        if let Some(st) = self.state.get(&key) {
            let open = st.open.iter().map(|&(server, cookie, start_ns)| Candidate {
                by: LinkedBy::Time,
                start_ns,
                end_ns: None,
                cookie,
                server,
                finished: None,
            });
            let recent = st.recent.iter().map(|u| Candidate {
                by: LinkedBy::Time,
                start_ns: u.start_ns,
                end_ns: Some(u.end_ns),
                cookie: u.cookie,
                server: u.server,
                finished: Some(u),
            });
            for mut c in open.chain(recent) {
                let tunnel = super::TUNNEL_PORTS.contains(&c.server.port());
                c.by = if c.server == original {
                    LinkedBy::Destination
                } else if tunnel && c.server.ip() == original.ip() {
                    LinkedBy::Tunnel
                } else if c.server.port() == super::waypoint::HBONE_PORT
                    && self
                        .waypoint_at(c.server.ip())
                        .is_some_and(|w| w.relays_toward(original, same_service))
                {
                    LinkedBy::Waypoint
                } else if tunnel
                    && same_service(original, SocketAddr::new(c.server.ip(), original.port()))
                {
                    LinkedBy::TunnelToEndpoint
                } else if same_service(original, c.server) {
                    LinkedBy::Service
                } else if tunnel {
                    LinkedBy::Time
                } else {
                    continue;
                };
                // It must have been open while the app's connection was.
                if c.start_ns > end + ORDER_SLACK_NS
                    || c.end_ns.is_some_and(|e| e + ORDER_SLACK_NS < start)
                {
                    continue;
                }
                if best.as_ref().is_none_or(|b| better(&c, b, start)) {
                    best = Some(c);
                }
            }
        }
        let Some(best) = best else {
            return (
                no_evidence(format!(
                    "redirected to {comm} (pid {}), but no upstream connection of that proxy to {original} was seen while this one was open (it may predate the agent, or the proxy answered itself)",
                    key.0
                )),
                None,
            );
        };
        let (cls, client, predates, open) = match best.finished {
            Some(u) => (u.cls.clone(), u.client, u.predates_agent, false),
            None => match table.connection_of(best.cookie) {
                Some(c) => (
                    c.settled
                        .as_deref()
                        .cloned()
                        .unwrap_or_else(|| classify_open(c)),
                    c.client,
                    c.preexisting(),
                    true,
                ),
                None => {
                    return (
                        no_evidence(format!(
                            "the upstream connection of {comm} (pid {}) to {original} is no longer tracked",
                            key.0
                        )),
                        None,
                    );
                }
            },
        };
        let pooled = best.start_ns + ORDER_SLACK_NS < start;
        let waypoint = (best.by == LinkedBy::Waypoint)
            .then(|| {
                self.waypoint_at(best.server.ip())
                    .map(|w| Self::waypoint_ref(best.server.ip(), w))
            })
            .flatten();
        let reference = UpstreamRef {
            linked_by: best.by,
            socket_cookie: best.cookie,
            client,
            server: best.server,
            start_ns: best.start_ns,
            open,
            pooled,
            connection_security_policy: cls.connection_security_policy,
            waypoint,
        };
        let mut logical = cls;
        if predates {
            logical.connection_security_policy = SecurityClass::Unknown;
            logical.confidence = Confidence::Low;
        }
        if best.by == LinkedBy::Time {
            logical.confidence = logical.confidence.min(Confidence::Medium);
        }
        let what = match best.by {
            LinkedBy::Destination | LinkedBy::Service => "upstream connection".to_owned(),
            LinkedBy::Tunnel | LinkedBy::TunnelToEndpoint => format!(
                "{} connection",
                super::tunnel::tunnel_kind(best.server.port())
            ),
            LinkedBy::Waypoint => {
                let w = reference.waypoint.as_ref();
                format!(
                    "HBONE connection to waypoint {} (pid {})",
                    w.map_or("?", |w| w.comm.as_str()),
                    w.map_or(0, |w| w.pid)
                )
            }
            LinkedBy::Time => format!(
                "{} connection (to another address: a waypoint? linked by time only)",
                super::tunnel::tunnel_kind(best.server.port())
            ),
        };
        logical.evidence = format!(
            "carried by {comm} (pid {}) over {} {what} {client} -> {}{}: {}",
            key.0,
            if pooled { "pooled" } else { "its" },
            best.server,
            if predates {
                " (opened before the agent started: its handshake was not seen)"
            } else {
                ""
            },
            logical.evidence
        );
        (logical, Some(reference))
    }
}

/// `a` is a better match than `b` for an app connection that started at `start`.
fn better(a: &Candidate<'_>, b: &Candidate<'_>, start: u64) -> bool {
    if a.by != b.by {
        return a.by > b.by;
    }
    let opened_for = |c: &Candidate<'_>| c.start_ns + ORDER_SLACK_NS >= start;
    match (opened_for(a), opened_for(b)) {
        // Both new: the first one opened after the app's connection started.
        (true, true) => a.start_ns.abs_diff(start) < b.start_ns.abs_diff(start),
        (true, false) => true,
        (false, true) => false,
        // Both pooled: the most recently opened.
        (false, false) => a.start_ns > b.start_ns,
    }
}

/// `unknown`, with why: what an app connection is when no upstream evidence exists.
fn no_evidence(why: String) -> Classification {
    Classification {
        connection_security_policy: SecurityClass::Unknown,
        confidence: Confidence::Low,
        evidence: why,
        protocol: Protocol::Unknown,
        outcome: Outcome::Incomplete,
        tls: None,
        starttls: None,
        http: None,
        mesh: None,
        tunnel: None,
    }
}
