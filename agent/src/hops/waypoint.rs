//! Waypoints: Istio ambient's L7 proxies on the HBONE path.
//!
//! A Service (or namespace) labelled `istio.io/use-waypoint` has its traffic sent
//! through a waypoint: an Envoy in a pod of its own (a `Gateway` of class
//! `istio-waypoint`) that listens for HBONE on 15008. ztunnel carries the app's
//! connection to the waypoint's 15008 (mutual TLS asserting the waypoint's
//! identity; the CONNECT target is the service's address and port, not an
//! endpoint); the waypoint applies its L7 policy, picks an endpoint and opens an
//! HBONE connection of its own, with its own SPIFFE identity, to that pod's 15008,
//! where ztunnel delivers to the app *from the waypoint's address*.
//!
//! The waypoint's pod is not enrolled and its Envoy intercepts nothing, so it is no
//! proxy in this stage's sense ([`super`]). It is recognised by what it does: a
//! process that is not a proxy, opens HBONE connections, and has HBONE connections
//! arriving in its own network namespace. When it runs on this node the agent
//! links:
//!
//! - the app's connection to the HBONE connection ztunnel opened to the waypoint,
//!   when the waypoint relays to the destination's address or to an endpoint of
//!   its service (`linked_by: "waypoint"`);
//! - ztunnel's delivery to the app (from the waypoint's address) to the waypoint's
//!   HBONE connection it came out of, whose class decides, and through the
//!   waypoint to the HBONE connection the waypoint received it over, whose client
//!   is the real client, when exactly one client was sending through the waypoint
//!   at the time (the CONNECT streams are inside the TLS: with two, the agent
//!   cannot tell whose connection a delivery carries).
//!
//! A waypoint on another node is not visible: the app's connection is then linked
//! to ztunnel's HBONE connection to it by time only, and a delivery out of it is
//! attributed to the waypoint, as Istio's own destination-side metrics do.

use std::{
    collections::VecDeque,
    net::{IpAddr, SocketAddr},
};

use foldhash::HashMap;
use serde::Serialize;

use super::Hops;
use crate::{
    classify::{Classification, SecurityClass},
    flows::{Connection, FlowTable, Process},
};

/// Istio's HBONE port: the only tunnel a waypoint speaks.
pub const HBONE_PORT: u16 = 15008;

const MAX_SENDERS: usize = 4096;
const TARGETS_PER_SENDER: usize = 64;

/// A process that opened HBONE connections without being a proxy.
#[derive(Debug, Clone)]
pub(super) struct Sender {
    pub process: Process,
    pub netns: u64,
    /// The addresses it opened HBONE connections to lately, newest last.
    targets: VecDeque<IpAddr>,
    last_ns: u64,
}

impl Sender {
    /// Whether it sent HBONE to the destination's address or to an endpoint of
    /// the destination's service.
    pub(super) fn relays_toward(
        &self,
        original: SocketAddr,
        same_service: &dyn Fn(SocketAddr, SocketAddr) -> bool,
    ) -> bool {
        self.targets.iter().any(|ip| {
            *ip == original.ip() || same_service(original, SocketAddr::new(*ip, original.port()))
        })
    }
}

/// HBONE senders by the address they send from.
#[derive(Debug, Default)]
pub(super) struct Senders {
    by_addr: HashMap<IpAddr, Sender>,
}

impl Senders {
    /// A process that is no proxy connected from `local` to `remote`'s 15008.
    pub(super) fn opened(
        &mut self,
        local: IpAddr,
        process: Option<Process>,
        netns: u64,
        remote: SocketAddr,
        ts_ns: u64,
    ) {
        let Some(process) = process else { return };
        if netns == 0 || local.is_loopback() {
            return;
        }
        if !self.by_addr.contains_key(&local) && self.by_addr.len() >= MAX_SENDERS {
            let idle = self
                .by_addr
                .iter()
                .min_by_key(|(_, s)| s.last_ns)
                .map(|(a, _)| *a);
            if let Some(a) = idle {
                self.by_addr.remove(&a);
            }
        }
        let s = self.by_addr.entry(local).or_insert_with(|| Sender {
            process: process.clone(),
            netns,
            targets: VecDeque::new(),
            last_ns: ts_ns,
        });
        if s.process != process || s.netns != netns {
            // The address moved to another process or pod.
            s.process = process;
            s.netns = netns;
            s.targets.clear();
        }
        s.targets.retain(|ip| *ip != remote.ip());
        if s.targets.len() >= TARGETS_PER_SENDER {
            s.targets.pop_front();
        }
        s.targets.push_back(remote.ip());
        s.last_ns = ts_ns;
    }

    fn get(&self, addr: IpAddr) -> Option<&Sender> {
        self.by_addr.get(&addr)
    }
}

/// A waypoint a connection went through, as a record names it.
#[derive(Debug, Clone, Serialize)]
pub struct WaypointRef {
    /// The waypoint's address (its pod's).
    pub address: IpAddr,
    pub pid: u32,
    pub comm: String,
    /// For a delivery: the HBONE connection the waypoint received the app's
    /// connection over (the client's leg), when one client was sending through
    /// the waypoint then. Its client is the real client.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub received_over: Option<TunnelLeg>,
    /// For a delivery: how many clients (addresses) were sending HBONE to the
    /// waypoint then; with more than one the agent cannot tell whose connection
    /// this is, and the record stays attributed to the waypoint.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub clients: Option<usize>,
}

/// One HBONE connection of a chain through a waypoint.
#[derive(Debug, Clone, Serialize)]
pub struct TunnelLeg {
    pub socket_cookie: u64,
    pub client: SocketAddr,
    pub server: SocketAddr,
    pub open: bool,
    /// Its own class.
    pub connection_security_policy: SecurityClass,
}

impl Hops {
    /// The waypoint at `addr`, if it runs on this node: a process that is no
    /// proxy, opened HBONE connections from `addr`, and has HBONE connections
    /// arriving in its network namespace.
    pub(super) fn waypoint_at(&self, addr: IpAddr) -> Option<&Sender> {
        let s = self.senders.get(addr)?;
        // A proxy after all (ztunnel, known since): its tunnels are its own.
        if self.by_pid.contains_key(&s.process.pid) {
            return None;
        }
        self.tunnels.has_arrivals(s.netns).then_some(s)
    }

    /// The record's view of a waypoint, without the client's leg.
    pub(super) fn waypoint_ref(addr: IpAddr, w: &Sender) -> WaypointRef {
        WaypointRef {
            address: addr,
            pid: w.process.pid,
            comm: w.process.comm.to_string(),
            received_over: None,
            clients: None,
        }
    }

    /// Through the waypoint at `addr` back to the client: the HBONE connections
    /// that arrived in the waypoint's network namespace and were open when the
    /// delivery started. One client: its leg. Several: only their number.
    pub(super) fn through_waypoint(
        &self,
        addr: IpAddr,
        w: &Sender,
        delivery: &Connection,
        table: &FlowTable,
        classify_open: &dyn Fn(&Connection) -> Classification,
    ) -> WaypointRef {
        let mut out = Self::waypoint_ref(addr, w);
        let arrivals = self.tunnels.open_at(w.netns, delivery.first_ns);
        let mut clients: Vec<IpAddr> = arrivals.iter().map(|(c, _, _)| c.ip()).collect();
        clients.sort_unstable();
        clients.dedup();
        out.clients = Some(clients.len());
        if let [only] = clients[..]
            && let Some(&(_, cookie, _)) = arrivals
                .iter()
                .filter(|(c, _, _)| c.ip() == only)
                .max_by_key(|(_, _, start)| *start)
            && let Some((cls, client, server, open)) =
                self.tunnels.class_of(w.netns, cookie, table, classify_open)
        {
            out.received_over = Some(TunnelLeg {
                socket_cookie: cookie,
                client,
                server,
                open,
                connection_security_policy: cls.connection_security_policy,
            });
        }
        out
    }
}
