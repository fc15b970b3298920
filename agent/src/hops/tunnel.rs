//! Tunnels: mesh connections that carry many app connections, and whose port is the
//! tunnel's, not the app's.
//!
//! - Istio ambient's HBONE: mutual TLS to the destination pod's 15008, HTTP/2
//!   `CONNECT` streams inside (`:authority` = the app's destination), one pooled
//!   connection per identity pair. ztunnel on the destination's node then connects
//!   to the app *from the original client's address* (IP_TRANSPARENT).
//! - Linkerd's transport header: mutual TLS to the destination pod's 4143, the app's
//!   port in a header inside; the proxy then connects to the app from the pod's own
//!   address.
//!
//! A tunnel's own record is not counted in the connection metrics (it has no app
//! port); the logical connection is counted at the source by its `app_to_proxy` hop
//! and at the destination by the proxy's delivery to the app, which is judged by the
//! tunnel it came through: linked by network namespace, the client's address (HBONE
//! keeps it) and time.

use std::{collections::VecDeque, net::SocketAddr};

use foldhash::{HashMap, HashMapExt as _};
use serde::Serialize;

use crate::{
    classify::{Classification, Confidence, SecurityClass},
    flows::{Connection, FlowTable},
};

/// Ports where a mesh tunnel arrives: Istio HBONE, Linkerd's inbound port used with
/// its transport header.
pub const TUNNEL_PORTS: [u16; 2] = [15008, 4143];

/// What a tunnel is called in evidence.
pub fn tunnel_kind(port: u16) -> &'static str {
    match port {
        15008 => "HBONE",
        4143 => "Linkerd transport",
        _ => "mesh tunnel",
    }
}

/// The tunnel connection a delivery came through.
#[derive(Debug, Clone, Serialize)]
pub struct TunnelRef {
    pub socket_cookie: u64,
    /// The tunnel's client: the real client of the delivered connection.
    pub client: SocketAddr,
    pub server: SocketAddr,
    #[serde(skip)]
    pub start_ns: u64,
    pub open: bool,
    /// The tunnel connection's own class.
    pub connection_security_policy: SecurityClass,
    /// The tunnel's client is a waypoint on this node ([`super::waypoint`]): it
    /// and, when it can be told, the HBONE connection it received this one over.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub waypoint: Option<super::waypoint::WaypointRef>,
}

impl TunnelRef {
    /// The real client of the delivered connection: the tunnel's client, or
    /// through a waypoint the client of the leg it received it over.
    pub fn origin(&self) -> SocketAddr {
        self.waypoint
            .as_ref()
            .and_then(|w| w.received_over.as_ref())
            .map_or(self.client, |leg| leg.client)
    }
}

#[derive(Debug, Clone)]
struct Finished {
    cookie: u64,
    client: SocketAddr,
    server: SocketAddr,
    start_ns: u64,
    end_ns: u64,
    predates_agent: bool,
    cls: Classification,
}

/// Tunnel arrivals of one network namespace.
#[derive(Debug, Default)]
struct NetnsTunnels {
    /// (client, socket cookie of the accepting end, opened at).
    open: Vec<(SocketAddr, u64, u64)>,
    recent: VecDeque<Finished>,
}

const RECENT_PER_NETNS: usize = 256;
const MAX_NETNS: usize = 16_384;
/// Slack for events the ring buffer may order either way.
const ORDER_SLACK_NS: u64 = 50_000_000;

#[derive(Debug, Default)]
pub(super) struct Tunnels {
    by_netns: HashMap<u64, NetnsTunnels>,
}

impl Tunnels {
    pub(super) fn new() -> Self {
        Self {
            by_netns: HashMap::new(),
        }
    }

    /// A socket accepted a connection on a tunnel port.
    pub(super) fn opened(&mut self, netns: u64, client: SocketAddr, cookie: u64, ts: u64) {
        if netns == 0 {
            return;
        }
        if !self.by_netns.contains_key(&netns) && self.by_netns.len() >= MAX_NETNS {
            self.by_netns.clear();
        }
        let t = self.by_netns.entry(netns).or_default();
        if t.open.len() >= 4 * RECENT_PER_NETNS {
            t.open.remove(0);
        }
        t.open.push((client, cookie, ts));
    }

    /// A socket accepted on a tunnel port that is no tunnel after all.
    pub(super) fn forget(&mut self, netns: u64, cookie: u64) {
        if let Some(t) = self.by_netns.get_mut(&netns) {
            t.open.retain(|&(_, c, _)| c != cookie);
            if t.open.is_empty() && t.recent.is_empty() {
                self.by_netns.remove(&netns);
            }
        }
    }

    /// A tunnel connection finished: keep its class a while for the deliveries
    /// that finish after it.
    pub(super) fn finished(&mut self, conn: &Connection, cls: &Classification, memory_ns: u64) {
        let Some(end) = conn.server_end.as_ref() else {
            return;
        };
        let Some(t) = self.by_netns.get_mut(&end.netns_cookie) else {
            return;
        };
        t.open.retain(|&(_, c, _)| c != end.cookie);
        let now = end.closed_ns.unwrap_or(conn.last_ns);
        while t
            .recent
            .front()
            .is_some_and(|f| now.saturating_sub(f.end_ns) > memory_ns)
            || t.recent.len() >= RECENT_PER_NETNS
        {
            t.recent.pop_front();
        }
        t.recent.push_back(Finished {
            cookie: end.cookie,
            client: conn.client,
            server: conn.server,
            start_ns: conn.first_ns,
            end_ns: now,
            predates_agent: conn.preexisting(),
            cls: cls.clone(),
        });
    }

    /// Whether tunnels arrive in `netns` (open ones, or finished lately).
    pub(super) fn has_arrivals(&self, netns: u64) -> bool {
        self.by_netns
            .get(&netns)
            .is_some_and(|t| !t.open.is_empty() || !t.recent.is_empty())
    }

    /// The tunnel arrivals of `netns` open at `at` (client, socket cookie, opened
    /// at).
    pub(super) fn open_at(&self, netns: u64, at: u64) -> Vec<(SocketAddr, u64, u64)> {
        let Some(t) = self.by_netns.get(&netns) else {
            return Vec::new();
        };
        let open = t.open.iter().map(|&(c, cookie, s)| (c, cookie, s, None));
        let recent = t
            .recent
            .iter()
            .map(|f| (f.client, f.cookie, f.start_ns, Some(f.end_ns)));
        open.chain(recent)
            .filter(|(_, _, s, e)| {
                *s <= at + ORDER_SLACK_NS && e.is_none_or(|e| e + ORDER_SLACK_NS >= at)
            })
            .map(|(c, cookie, s, _)| (c, cookie, s))
            .collect()
    }

    /// The tunnel arrival a proxy's delivery to an app most likely came through:
    /// in the delivery's network namespace, opened before the delivery was (the
    /// proxy connects to the app once the tunnel's stream or header arrived) and
    /// still open then, and, when the delivery keeps the client's address (HBONE),
    /// from that address. The most recently opened one wins.
    pub(super) fn delivery_source(&self, delivery: &Connection) -> Option<(u64, SocketAddr, u64)> {
        let netns = delivery.server_end.as_ref()?.netns_cookie;
        let t = self.by_netns.get(&netns)?;
        // A delivery from the pod's own address (Linkerd) says nothing of the client.
        let keeps_client = delivery.client.ip() != delivery.server.ip();
        let start = delivery.first_ns;
        let open = t.open.iter().map(|&(c, cookie, s)| (c, cookie, s, None));
        let recent = t
            .recent
            .iter()
            .map(|f| (f.client, f.cookie, f.start_ns, Some(f.end_ns)));
        open.chain(recent)
            .filter(|(c, _, s, e)| {
                (!keeps_client || c.ip() == delivery.client.ip())
                    && *s <= start + ORDER_SLACK_NS
                    && e.is_none_or(|e| e + ORDER_SLACK_NS >= start)
            })
            .max_by_key(|(_, _, s, _)| *s)
            .map(|(c, cookie, s, _)| (cookie, c, s))
    }

    /// The class of a tunnel connection (finished, or open: classified now).
    pub(super) fn class_of(
        &self,
        netns: u64,
        cookie: u64,
        table: &FlowTable,
        classify_open: &dyn Fn(&Connection) -> Classification,
    ) -> Option<(Classification, SocketAddr, SocketAddr, bool)> {
        if let Some(c) = table.connection_of(cookie) {
            let mut cls = c
                .settled
                .as_deref()
                .cloned()
                .unwrap_or_else(|| classify_open(c));
            if c.preexisting() {
                cls.connection_security_policy = SecurityClass::Unknown;
                cls.confidence = Confidence::Low;
            }
            return Some((cls, c.client, c.server, true));
        }
        let f = self
            .by_netns
            .get(&netns)?
            .recent
            .iter()
            .find(|f| f.cookie == cookie)?;
        let mut cls = f.cls.clone();
        if f.predates_agent {
            cls.connection_security_policy = SecurityClass::Unknown;
            cls.confidence = Confidence::Low;
        }
        Some((cls, f.client, f.server, false))
    }
}
