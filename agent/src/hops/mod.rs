//! Hops: the mesh's own data path, between `flows` and `verdict`.
//!
//! In a meshed pod the application does not speak mutual TLS itself: iptables
//! rules redirect its connections to a local proxy, which opens its own
//! connection to the destination (Istio's sidecar on 15001/15006, ambient's
//! ztunnel, Linkerd's proxy on 4140/4143). One logical connection (app ->
//! destination) is then up to three hops on the node, each a connection of the flow
//! table, and this stage says which is which:
//!
//! | hop | what it is | judged by |
//! | --- | --- | --- |
//! | `direct` | no proxy on either end | its own bytes |
//! | `app_to_proxy` | the app's connection, redirected to a proxy in its own network namespace | the proxy's upstream connection to the same destination (linked by proxy, destination and time) |
//! | `proxy_upstream` | a proxy's connection towards the destination (mutual TLS in a healthy mesh), or one that arrived at a proxy from another proxy | its own bytes, at the original destination port |
//! | `proxy_inbound` | a connection from a client without a proxy that a server-side proxy intercepted | its own bytes, at the original destination port |
//! | `proxy_to_app` | the proxy delivering inbound traffic to its app, inside one pod | built-in exemption; a delivery out of a tunnel is the logical connection at the destination, judged by that tunnel |
//! | `proxy_tunnel` | a mesh tunnel carrying many app connections (Istio ambient's HBONE on 15008, Linkerd's transport header on 4143) | its own bytes; not counted ([`tunnel`]) |
//!
//! Proxies are recognised by what they do, not by their names: a process that asks
//! the kernel for a socket's original destination (`SO_ORIGINAL_DST`, reported by
//! the `cgroup/getsockopt` probe) intercepts traffic; its other sockets are the
//! proxy's own. A process running as the proxy's uid but never intercepting is an
//! ordinary client (a real bypass stays a violation).
//!
//! Counting: metrics and the edges view count a logical connection once per
//! reporter: the `app_to_proxy` hop at the source (`reporter="source"`), the
//! connection that reached the destination (`proxy_upstream`, `proxy_inbound`, or
//! a `direct` one) at the destination; the proxy's own client end and the
//! in-pod delivery are not counted again ([`Hop::reporters`]).

mod exempt;
mod link;
pub mod tunnel;
pub mod waypoint;

use std::{
    collections::VecDeque,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
};

use foldhash::{HashMap, HashMapExt as _};
use serde::Serialize;

use agent_common::OrigDstEvent;

use crate::{
    capture::{ConnKind, Event},
    classify::{Classification, MeshMarker, Protocol},
    flows::{Connection, End, Process},
};
pub use exempt::{Builtin, BuiltinExemptions};
pub use link::UpstreamRef;
pub use tunnel::{TUNNEL_PORTS, TunnelRef};

/// What a connection is on the mesh's data path.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Hop {
    Direct,
    AppToProxy,
    ProxyUpstream,
    ProxyInbound,
    ProxyToApp,
    ProxyTunnel,
}

impl Hop {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Direct => "direct",
            Self::AppToProxy => "app_to_proxy",
            Self::ProxyUpstream => "proxy_upstream",
            Self::ProxyInbound => "proxy_inbound",
            Self::ProxyToApp => "proxy_to_app",
            Self::ProxyTunnel => "proxy_tunnel",
        }
    }

    pub const ALL: [Hop; 6] = [
        Self::Direct,
        Self::AppToProxy,
        Self::ProxyUpstream,
        Self::ProxyInbound,
        Self::ProxyToApp,
        Self::ProxyTunnel,
    ];

    /// Which reporters count a connection of this hop, given which of its ends are
    /// sockets on this node: each logical connection once at its source and once at
    /// its destination.
    pub fn reporters(self, client_local: bool, server_local: bool) -> Reporters {
        match self {
            Self::Direct => Reporters {
                source: client_local,
                destination: server_local,
            },
            // The app's connection is the logical one at the source; where it went
            // is counted where it arrived.
            Self::AppToProxy => Reporters {
                source: client_local,
                destination: false,
            },
            // The proxy's client end is not counted again: the app's connection was.
            Self::ProxyUpstream => Reporters {
                source: false,
                destination: server_local,
            },
            // A client without a proxy: counted at the source like any client.
            Self::ProxyInbound => Reporters {
                source: client_local,
                destination: server_local,
            },
            // A tunnel carries many logical connections, counted at their ends; a
            // delivery is counted only when it came out of a tunnel
            // ([`HopFacts::reporters`]).
            Self::ProxyToApp | Self::ProxyTunnel => Reporters::default(),
        }
    }
}

/// Which of Istio's `reporter` values count a record.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Reporters {
    pub source: bool,
    pub destination: bool,
}

impl Reporters {
    pub fn any(self) -> bool {
        self.source || self.destination
    }
}

/// A process seen intercepting connections.
#[derive(Debug, Clone)]
pub struct Proxy {
    pub process: Process,
    pub uid: u32,
    pub netns_cookie: u64,
    pub cgroup_id: u64,
    pub last_ns: u64,
}

/// The proxy that intercepted a connection, as a record names it.
#[derive(Debug, Clone, Serialize)]
pub struct Interceptor {
    pub pid: u32,
    pub comm: String,
    pub uid: u32,
    pub gid: u32,
    /// The proxy's socket of this connection.
    pub socket_cookie: u64,
    /// Where the redirect sent the connection (the proxy's listener).
    pub accepted_on: SocketAddr,
    /// The kernel had a NAT entry (iptables REDIRECT/DNAT); false for TPROXY.
    pub nat: bool,
    /// Path below the cgroup v2 root of the proxy's socket.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cgroup: Option<String>,
    /// The proxy's container, in a cluster (`istio-proxy`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub container: Option<String>,
}

/// What this stage says about one finished connection.
#[derive(Debug, Clone)]
pub struct HopFacts {
    pub hop: Hop,
    /// The proxy that accepted this connection (`app_to_proxy`, `proxy_inbound`,
    /// `proxy_upstream` into a server-side proxy).
    pub interceptor: Option<Interceptor>,
    /// For `app_to_proxy`: the upstream connection whose bytes decided, if any.
    pub upstream: Option<UpstreamRef>,
    /// For `proxy_to_app`: the intercepted connection this one most likely
    /// delivers (the latest one the same proxy accepted for this port that was
    /// still open when this one opened).
    pub delivers: Option<SocketAddr>,
    /// For `proxy_to_app`: the tunnel connection it came out of, whose class
    /// decides (the record then stands for the logical connection at the
    /// destination, attributed to the tunnel's client).
    pub tunnel: Option<TunnelRef>,
    /// The client or server end is a proxy's socket: attribute it by address (a
    /// node proxy such as ztunnel runs in a cgroup of its own, not the pod's).
    pub client_is_proxy: bool,
    pub server_is_proxy: bool,
}

impl HopFacts {
    pub fn direct() -> Self {
        Self {
            hop: Hop::Direct,
            interceptor: None,
            upstream: None,
            delivers: None,
            tunnel: None,
            client_is_proxy: false,
            server_is_proxy: false,
        }
    }

    /// Which reporters count the record: [`Hop::reporters`], except that a delivery
    /// out of a tunnel is the logical connection at the destination.
    pub fn reporters(&self, client_local: bool, server_local: bool) -> Reporters {
        if self.hop == Hop::ProxyToApp && self.tunnel.is_some() {
            return Reporters {
                source: false,
                destination: server_local,
            };
        }
        self.hop.reporters(client_local, server_local)
    }
}

/// Tunables.
#[derive(Debug, Clone)]
pub struct HopsConfig {
    /// How long a finished upstream connection stays linkable (ns).
    pub upstream_memory_ns: u64,
    /// Most proxies remembered.
    pub max_proxies: usize,
}

impl Default for HopsConfig {
    fn default() -> Self {
        Self {
            upstream_memory_ns: 120_000_000_000,
            max_proxies: 16_384,
        }
    }
}

/// Per proxy: its open upstream sockets, the upstream connections that finished
/// lately, and the connections it accepted lately (for delivery hops).
#[derive(Debug, Default)]
struct ProxyState {
    /// (destination, socket cookie, opened at).
    open: Vec<(SocketAddr, u64, u64)>,
    /// Finished upstream connections, newest last.
    recent: VecDeque<link::Upstream>,
    /// Intercepted connections, oldest first.
    accepted: VecDeque<Accepted>,
}

/// A connection a proxy intercepted, for naming what its deliveries carry.
#[derive(Debug, Clone, Copy)]
struct Accepted {
    at_ns: u64,
    /// The proxy's socket of it.
    cookie: u64,
    client: SocketAddr,
    original: SocketAddr,
    /// When that socket closed: a connection refused (closed unanswered) before a
    /// delivery opened is not what the delivery carries.
    closed_ns: Option<u64>,
}

const RECENT_PER_PROXY: usize = 256;
const ACCEPTED_PER_PROXY: usize = 256;

/// A proxy is a process in a network namespace: a sidecar has one namespace, a
/// node proxy such as ztunnel opens sockets in many.
type ProxyKey = (u32, u64);

/// The stage's state: the proxies seen and their upstream connections.
pub struct Hops {
    cfg: HopsConfig,
    proxies: HashMap<ProxyKey, Proxy>,
    state: HashMap<ProxyKey, ProxyState>,
    /// The latest network namespace each proxy process was seen intercepting in:
    /// a node proxy (ztunnel) owns sockets in every pod's namespace.
    by_pid: HashMap<u32, ProxyKey>,
    tunnels: tunnel::Tunnels,
    /// Network namespaces a proxy intercepts in (meshed pods), with a count of
    /// proxies seen there.
    meshed_netns: HashMap<u64, u32>,
    /// The proxy whose `accepted` list holds a socket, by socket cookie, until the
    /// socket closes (its close time is then noted there).
    accepted_by_cookie: HashMap<u64, ProxyKey>,
    /// Processes that open HBONE tunnels without being proxies: a waypoint's
    /// Envoy ([`waypoint`]).
    senders: waypoint::Senders,
}

/// Envoy's inbound passthrough source addresses (`127.0.0.6`, `::6`).
pub fn is_inbound_passthrough_source(ip: IpAddr) -> bool {
    ip == IpAddr::V4(Ipv4Addr::new(127, 0, 0, 6))
        || ip == IpAddr::V6(Ipv6Addr::new(0, 0, 0, 0, 0, 0, 0, 6))
}

impl Hops {
    pub fn new(cfg: HopsConfig) -> Self {
        Self {
            cfg,
            proxies: HashMap::new(),
            state: HashMap::new(),
            by_pid: HashMap::new(),
            tunnels: tunnel::Tunnels::new(),
            meshed_netns: HashMap::new(),
            accepted_by_cookie: HashMap::new(),
            senders: waypoint::Senders::default(),
        }
    }

    /// Proxies currently known.
    pub fn proxies(&self) -> usize {
        self.proxies.len()
    }

    /// Whether a network namespace has a proxy intercepting traffic (a meshed pod).
    pub fn is_meshed_netns(&self, cookie: u64) -> bool {
        cookie != 0 && self.meshed_netns.contains_key(&cookie)
    }

    /// Sees every kernel event before the flow table does: interceptions name
    /// proxies; a proxy's new client sockets are its upstream connections.
    pub fn on_event(&mut self, event: &Event<'_>) {
        match event {
            Event::OriginalDst(ev) => self.intercepted(ev),
            Event::Conn(ConnKind::Established, ev)
                if ev.role == agent_common::role::SERVER
                    && TUNNEL_PORTS.contains(&ev.local_port) =>
            {
                let client = SocketAddr::new(
                    crate::flows::addr(ev.family, &ev.remote_addr),
                    ev.remote_port,
                );
                self.tunnels
                    .opened(ev.netns_cookie, client, ev.hdr.cookie, ev.hdr.ts_ns);
            }
            Event::Conn(ConnKind::Established, ev)
                if ev.role == agent_common::role::CLIENT && ev.tgid != 0 =>
            {
                let key = (ev.tgid, ev.netns_cookie);
                let remote = SocketAddr::new(
                    crate::flows::addr(ev.family, &ev.remote_addr),
                    ev.remote_port,
                );
                let Some(p) = self.proxies.get(&key).or_else(|| self.node_proxy(ev.tgid)) else {
                    if ev.remote_port == waypoint::HBONE_PORT {
                        // Not a proxy, yet it opens HBONE: perhaps a waypoint.
                        let local = crate::flows::addr(ev.family, &ev.local_addr);
                        let process = Process::from_raw(ev.tgid, &ev.comm);
                        self.senders
                            .opened(local, process, ev.netns_cookie, remote, ev.hdr.ts_ns);
                    }
                    return;
                };
                if !same_comm(&p.process, &ev.comm) {
                    return;
                }
                let st = self.state.entry(key).or_default();
                st.open.push((remote, ev.hdr.cookie, ev.hdr.ts_ns));
            }
            Event::Conn(ConnKind::Closed, ev) => {
                if let Some(key) = self.accepted_by_cookie.remove(&ev.hdr.cookie)
                    && let Some(st) = self.state.get_mut(&key)
                    && let Some(a) = st.accepted.iter_mut().find(|a| a.cookie == ev.hdr.cookie)
                {
                    a.closed_ns = Some(ev.hdr.ts_ns);
                }
            }
            _ => {}
        }
    }

    fn intercepted(&mut self, ev: &OrigDstEvent) {
        let Some(process) = Process::from_raw(ev.tgid, &ev.comm) else {
            return;
        };
        let key = (ev.tgid, ev.netns_cookie);
        let fresh = self.proxies.get(&key).is_none_or(|p| p.process != process);
        if fresh {
            if self.proxies.len() >= self.cfg.max_proxies {
                self.forget_oldest();
            }
            if let Some(old) = self.proxies.remove(&key) {
                // The pid was reused by another program.
                self.unmesh(old.netns_cookie);
                self.state.remove(&key);
                self.accepted_by_cookie.retain(|_, k| *k != key);
            }
            if ev.netns_cookie != 0 {
                *self.meshed_netns.entry(ev.netns_cookie).or_default() += 1;
            }
        }
        self.by_pid.insert(ev.tgid, key);
        self.proxies.insert(
            key,
            Proxy {
                process,
                uid: ev.uid,
                netns_cookie: ev.netns_cookie,
                cgroup_id: ev.cgroup_id,
                last_ns: ev.hdr.ts_ns,
            },
        );
        let local = SocketAddr::new(crate::flows::addr(ev.family, &ev.local_addr), ev.local_port);
        let remote = SocketAddr::new(
            crate::flows::addr(ev.family, &ev.remote_addr),
            ev.remote_port,
        );
        let original = if ev.result == 0 && ev.original_family != 0 {
            SocketAddr::new(
                crate::flows::addr(ev.original_family, &ev.original_addr),
                ev.original_port,
            )
        } else {
            local
        };
        if TUNNEL_PORTS.contains(&ev.local_port) && !TUNNEL_PORTS.contains(&original.port()) {
            // Accepted on a tunnel port only because the pod's rules sent it there
            // (Linkerd REDIRECTs every inbound connection to 4143): not a tunnel.
            self.tunnels.forget(ev.netns_cookie, ev.hdr.cookie);
        }
        let st = self.state.entry(key).or_default();
        if st.accepted.len() >= ACCEPTED_PER_PROXY
            && let Some(old) = st.accepted.pop_front()
        {
            self.accepted_by_cookie.remove(&old.cookie);
        }
        st.accepted.push_back(Accepted {
            at_ns: ev.hdr.ts_ns,
            cookie: ev.hdr.cookie,
            client: remote,
            original,
            closed_ns: None,
        });
        self.accepted_by_cookie.insert(ev.hdr.cookie, key);
    }

    fn unmesh(&mut self, netns: u64) {
        if let Some(n) = self.meshed_netns.get_mut(&netns) {
            *n -= 1;
            if *n == 0 {
                self.meshed_netns.remove(&netns);
            }
        }
    }

    fn forget_oldest(&mut self) {
        let oldest = self
            .proxies
            .iter()
            .min_by_key(|(_, p)| p.last_ns)
            .map(|(&key, _)| key);
        if let Some(key) = oldest {
            self.proxies.remove(&key);
            self.state.remove(&key);
            self.accepted_by_cookie.retain(|_, k| *k != key);
            if self.by_pid.get(&key.0) == Some(&key) {
                self.by_pid.remove(&key.0);
            }
            self.unmesh(key.1);
        }
    }

    /// Whether the client of `conn` sends through a mesh proxy of its own: yes for
    /// the hops a proxy makes or captures; no for a local client in a network
    /// namespace no proxy was seen intercepting in; unknown for a client elsewhere.
    pub fn client_has_proxy(&self, conn: &Connection, facts: &HopFacts) -> Option<bool> {
        match facts.hop {
            Hop::AppToProxy | Hop::ProxyUpstream | Hop::ProxyToApp | Hop::ProxyTunnel => Some(true),
            Hop::Direct | Hop::ProxyInbound => {
                let c = conn.client_end.as_ref()?;
                Some(self.is_meshed_netns(c.netns_cookie))
            }
        }
    }

    /// The proxy that owns `end`, if its process is one seen intercepting in the
    /// same network namespace.
    pub fn proxy_of(&self, end: &End) -> Option<&Proxy> {
        let process = end.process.as_ref()?;
        let p = self
            .proxies
            .get(&(process.pid, end.netns_cookie))
            .or_else(|| self.node_proxy(process.pid))?;
        (p.process == *process).then_some(p)
    }

    /// A proxy process seen intercepting in some network namespace: its sockets
    /// in others are its own too (ztunnel opens them in every pod it serves).
    fn node_proxy(&self, pid: u32) -> Option<&Proxy> {
        self.proxies.get(self.by_pid.get(&pid)?)
    }

    /// A connection finished that turned out not to be a tunnel (refused, or
    /// judged another hop): it no longer counts as an open tunnel arrival.
    pub fn not_a_tunnel(&mut self, conn: &Connection) {
        if let Some(end) = conn.server_end.as_ref() {
            self.tunnels.forget(end.netns_cookie, end.cookie);
        }
    }

    /// A tunnel connection finished.
    pub fn tunnel_finished(&mut self, conn: &Connection, cls: &Classification) {
        let memory = self.cfg.upstream_memory_ns;
        self.tunnels.finished(conn, cls, memory);
    }

    /// The class of a delivery out of a tunnel: the tunnel's, with the evidence
    /// saying which; the tunnel reference for the record.
    pub fn tunnel_evidence(
        &self,
        delivery: &Connection,
        table: &crate::flows::FlowTable,
        classify_open: &dyn Fn(&Connection) -> Classification,
    ) -> Option<(Classification, TunnelRef)> {
        let (cookie, _, start_ns) = self.tunnels.delivery_source(delivery)?;
        let netns = delivery.server_end.as_ref()?.netns_cookie;
        let (mut cls, client, server, open) =
            self.tunnels.class_of(netns, cookie, table, classify_open)?;
        let who = delivery
            .client_end
            .as_ref()
            .and_then(|e| e.process.as_ref())
            .map_or_else(
                || "the proxy".to_owned(),
                |p| format!("{} (pid {})", p.comm, p.pid),
            );
        // Out of a waypoint's HBONE connection: back through the waypoint to the
        // client's leg, when the waypoint runs here.
        let waypoint = (server.port() == waypoint::HBONE_PORT)
            .then(|| self.waypoint_at(client.ip()))
            .flatten()
            .map(|w| self.through_waypoint(client.ip(), w, delivery, table, classify_open));
        let via = match &waypoint {
            None => String::new(),
            Some(w) => match (&w.received_over, w.clients) {
                (Some(leg), _) => format!(
                    " from waypoint {} (pid {}), which received it over HBONE connection {} -> {} ({})",
                    w.comm,
                    w.pid,
                    leg.client,
                    leg.server,
                    leg.connection_security_policy.as_str()
                ),
                (None, Some(n)) if n > 1 => format!(
                    " from waypoint {} (pid {}), which was relaying for {n} clients then: which one this is cannot be told",
                    w.comm, w.pid
                ),
                (None, _) => format!(
                    " from waypoint {} (pid {}); the connection it received this one over was not seen",
                    w.comm, w.pid
                ),
            },
        };
        cls.evidence = format!(
            "delivered by {who} out of {} connection {client} -> {server}{via}: {}",
            tunnel::tunnel_kind(server.port()),
            cls.evidence
        );
        let reference = TunnelRef {
            socket_cookie: cookie,
            client,
            server,
            start_ns,
            open,
            connection_security_policy: cls.connection_security_policy,
            waypoint,
        };
        Some((cls, reference))
    }

    /// Which hop `conn` is, with the facts a record names. `cls` is the
    /// classification of the connection's own bytes.
    pub fn facts(&self, conn: &Connection, cls: &Classification) -> HopFacts {
        let client_proxy = conn.client_end.as_ref().and_then(|e| self.proxy_of(e));
        let server = conn.server_end.as_ref();
        let interceptor = server.and_then(|s| {
            let i = s.interception.as_ref()?;
            Some(Interceptor {
                pid: i.process.pid,
                comm: i.process.comm.to_string(),
                uid: i.uid,
                gid: i.gid,
                socket_cookie: s.cookie,
                accepted_on: i.accepted_on,
                nat: i.nat,
                cgroup: s.cgroup.as_deref().map(str::to_owned),
                container: None,
            })
        });
        let same_netns = match (&conn.client_end, server) {
            (Some(c), Some(s)) => c.netns_cookie != 0 && c.netns_cookie == s.netns_cookie,
            _ => false,
        };
        let server_proxy = interceptor.is_some() || server.and_then(|s| self.proxy_of(s)).is_some();
        // A mesh tunnel: to a tunnel port, made or accepted by a proxy (or, for
        // HBONE, TLS on 15008 between proxies not recognised as such: a waypoint).
        let port = conn.server.port();
        let is_tunnel = TUNNEL_PORTS.contains(&port)
            && (client_proxy.is_some()
                || server_proxy
                || (port == 15008 && cls.protocol == Protocol::Tls));
        let hop = if interceptor.is_some() && client_proxy.is_none() && same_netns {
            // Redirected inside the client's own network namespace: the app's
            // outbound connection, captured by its proxy.
            Hop::AppToProxy
        } else if is_tunnel {
            Hop::ProxyTunnel
        } else if interceptor.is_some() {
            if client_proxy.is_some() {
                Hop::ProxyUpstream
            } else if conn.client_end.is_none() && cls.mesh == Some(MeshMarker::IstioSidecar) {
                // From another node, with Istio's ALPN or SNI: a client proxy's
                // upstream connection.
                Hop::ProxyUpstream
            } else {
                Hop::ProxyInbound
            }
        } else if client_proxy.is_some() && same_netns {
            Hop::ProxyToApp
        } else if client_proxy.is_some() {
            Hop::ProxyUpstream
        } else if same_netns && is_inbound_passthrough_source(conn.client.ip()) {
            // Envoy's inbound passthrough bind, from a proxy not yet seen
            // intercepting (it intercepted before the agent started).
            Hop::ProxyToApp
        } else {
            Hop::Direct
        };
        let delivers = if hop == Hop::ProxyToApp {
            conn.client_end
                .as_ref()
                .and_then(|c| Some((c.process.as_ref()?.pid, c.netns_cookie)))
                .and_then(|key| self.state.get(&key))
                .and_then(|st| {
                    // The latest one for this port accepted before the delivery
                    // ended, skipping those that closed before it opened (a
                    // plaintext connection a STRICT proxy refused carries nothing).
                    st.accepted
                        .iter()
                        .rev()
                        .find(|a| {
                            a.original.port() == conn.server.port()
                                && a.at_ns <= conn.last_ns
                                && a.closed_ns.is_none_or(|c| c >= conn.first_ns)
                        })
                        .map(|a| a.client)
                })
        } else {
            None
        };
        HopFacts {
            hop,
            interceptor,
            upstream: None,
            delivers,
            tunnel: None,
            client_is_proxy: client_proxy.is_some(),
            server_is_proxy: server_proxy && hop != Hop::AppToProxy,
        }
    }
}

fn same_comm(p: &Process, comm: &[u8; 16]) -> bool {
    Process::from_raw(p.pid, comm).is_some_and(|q| q.comm == p.comm)
}

#[cfg(test)]
mod tests;
