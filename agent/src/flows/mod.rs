//! The flow table: socket ends keyed by cookie, joined into connections.
//!
//! Each socket the kernel reports is an *end*. A connection whose two ends are both
//! on this node (loopback, pod to pod on one node) is one connection with two ends:
//! they are joined on the (client, server) address pair, plus the network namespace
//! when the addresses are loopback ones (every namespace has its own 127.0.0.1).
//! A connection is finished when every end it has is closed; it is emitted once the
//! second end has closed too, or after a linger for connections with one end here.
//!
//! An intercepted connection (iptables `REDIRECT` to a proxy on this node) has a
//! client socket that names the original destination and an accepting socket that
//! names the proxy's port. When the proxy asks the kernel for the original
//! destination (`SO_ORIGINAL_DST`), the accepting end moves to the (client,
//! original destination) pair and joins the client's end there: one connection,
//! whose server end is the proxy's socket ([`End::interception`]). What the hop
//! means is for the `hops` stage to say.

mod conn;
pub mod stream;
#[cfg(test)]
mod tests;

use std::net::SocketAddr;

use foldhash::{HashMap, HashMapExt as _};
use slab::Slab;

use agent_common::{
    ConnEvent, DataHeader, OrigDstEvent, data_flags, direction, role, sock_flags, tcp_flags,
};

use crate::{
    capture::{ConnKind, Event},
    cgroups::CgroupResolver,
    classify::Classification,
};
use conn::Streams;
pub use conn::{Connection, End, Interception, Nat, Process, Role, addr};
pub use stream::{Overlaps, Stream};

/// Counters of the flow table.
#[derive(Debug, Default, Clone, Copy)]
pub struct FlowStats {
    pub ends_opened: u64,
    pub connections_emitted: u64,
    /// Data or close events for sockets never announced (their announcement was lost).
    pub orphan_events: u64,
    /// Captured segments that overlapped bytes already received with different
    /// bytes (TCP evasion or corruption; see [`stream`]).
    pub overlap_conflicts: u64,
    pub listeners: u64,
    /// Accepted sockets that learned their original destination and joined the
    /// client's end of the connection (interceptions on this node).
    pub interceptions_joined: u64,
    /// Client sockets whose translated SYN (DNAT, SNAT, REDIRECT) met the socket
    /// that accepted it on this node.
    pub nat_joined: u64,
    /// connect()s that never established (refused or unanswered).
    pub attempts_failed: u64,
    /// Of those, the ones past [`MAX_PENDING_ATTEMPTS`] in one tick: counted only.
    pub attempts_dropped: u64,
}

/// Failed connection attempts kept between two ticks of the pipeline.
pub const MAX_PENDING_ATTEMPTS: usize = 65_536;

/// A connect() that never established (SYN_SENT -> CLOSE).
#[derive(Debug, Clone)]
pub struct Attempt {
    pub client: SocketAddr,
    /// Where the socket connected to (before any NAT).
    pub server: SocketAddr,
    pub netns_cookie: u64,
    pub cgroup: Option<std::sync::Arc<str>>,
    pub process: Option<Process>,
    /// A RST answered the SYN (nothing listens there, or a firewall rejects);
    /// otherwise unanswered (timed out) or abandoned by the caller.
    pub refused: bool,
}

/// Tunables.
#[derive(Debug, Clone)]
pub struct FlowConfig {
    /// Bytes kept per direction (the kernel's capture budget).
    pub budget: u32,
    /// How long a connection with all ends closed waits for a missing second end.
    pub linger_ns: u64,
}

impl Default for FlowConfig {
    fn default() -> Self {
        Self {
            budget: agent_common::DEFAULT_CAPTURE_BUDGET,
            linger_ns: 1_000_000_000,
        }
    }
}

type ConnId = usize;

/// (client, server, namespace for loopback pairs).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct JoinKey {
    client: SocketAddr,
    server: SocketAddr,
    netns: u64,
}

#[derive(Debug, Clone)]
struct Listener {
    process: Process,
    uid: u32,
    cgroup_id: u64,
}

pub struct FlowTable {
    cfg: FlowConfig,
    conns: Slab<Connection>,
    /// cookie -> connection
    ends: HashMap<u64, ConnId>,
    joins: HashMap<JoinKey, ConnId>,
    /// (port) -> who listens on it, most recent first.
    listeners: HashMap<u16, Vec<Listener>>,
    cgroups: Option<CgroupResolver>,
    decided: Vec<u64>,
    newly_settled: Vec<u64>,
    /// Translated addresses of client sockets whose SYN was seen but not yet their
    /// establishment: (packet's local, packet's remote).
    pending_nat: HashMap<u64, (SocketAddr, SocketAddr)>,
    /// Connection attempts that failed since the last `take_attempts`.
    attempts: Vec<Attempt>,
    /// Connections that received bytes since the last `settle` (may name ids
    /// reused since; `new_data` is what counts).
    touched: Vec<ConnId>,
    /// Connections whose every end had closed when last looked at, for `tick`
    /// (may name ids reused or reopened since: `tick` checks again), so a tick
    /// costs what closed since, not every connection held open.
    closed: Vec<ConnId>,
    spares: Spares,
    stats: FlowStats,
}

/// Ends and streams of finished connections, kept for the next ones: a short
/// connection then allocates neither its ends nor its stream buffers.
#[derive(Default)]
#[allow(clippy::vec_box, reason = "the boxes are what is kept for reuse")]
struct Spares {
    ends: Vec<Box<End>>,
    streams: Vec<Box<Streams>>,
}

/// How many of each [`Spares`] keeps (at most a few hundred KiB of buffers).
const SPARES: usize = 64;

/// `end` in a spare box if there is one.
#[allow(clippy::vec_box, reason = "the boxes are what is kept for reuse")]
fn boxed(spares: &mut Vec<Box<End>>, end: End) -> Box<End> {
    match spares.pop() {
        Some(mut spare) => {
            *spare = end;
            spare
        }
        None => Box::new(end),
    }
}

fn join_key(client: SocketAddr, server: SocketAddr, netns: u64) -> JoinKey {
    let netns = if client.ip().is_loopback() || server.ip().is_loopback() {
        netns
    } else {
        0
    };
    JoinKey {
        client,
        server,
        netns,
    }
}

impl FlowTable {
    pub fn new(cfg: FlowConfig, cgroups: Option<CgroupResolver>) -> Self {
        Self {
            cfg,
            conns: Slab::new(),
            ends: HashMap::new(),
            joins: HashMap::new(),
            listeners: HashMap::new(),
            cgroups,
            decided: Vec::new(),
            newly_settled: Vec::new(),
            pending_nat: HashMap::new(),
            attempts: Vec::new(),
            touched: Vec::new(),
            closed: Vec::new(),
            spares: Spares::default(),
            stats: FlowStats::default(),
        }
    }

    pub fn stats(&self) -> FlowStats {
        FlowStats {
            listeners: self.listeners.len() as u64,
            ..self.stats
        }
    }

    /// How long a connection with one end closed waits for its other end.
    pub fn linger_ns(&self) -> u64 {
        self.cfg.linger_ns
    }

    /// Connections currently tracked.
    pub fn len(&self) -> usize {
        self.conns.len()
    }

    pub fn is_empty(&self) -> bool {
        self.conns.is_empty()
    }

    /// Socket cookies the kernel may stop capturing.
    pub fn take_decided(&mut self) -> std::vec::Drain<'_, u64> {
        self.decided.drain(..)
    }

    /// A cookie of each connection that [`FlowTable::settle`] settled since the
    /// last call (for [`FlowTable::connection_of`]).
    pub fn take_newly_settled(&mut self) -> Vec<u64> {
        std::mem::take(&mut self.newly_settled)
    }

    /// Notes that the connection of `cookie` has been counted in the metrics.
    pub fn mark_counted(&mut self, cookie: u64) {
        if let Some(&id) = self.ends.get(&cookie)
            && let Some(c) = self.conns.get_mut(id)
        {
            c.counted = true;
        }
    }

    /// Feeds one kernel event.
    pub fn on_event(&mut self, event: Event<'_>) {
        match event {
            Event::Conn(ConnKind::Established, ev) => self.open_end(&ev, false),
            Event::Conn(ConnKind::Preexisting, ev) => self.open_end(&ev, true),
            Event::Conn(ConnKind::Closed, ev) => self.close_end(&ev),
            Event::Conn(ConnKind::Listen, ev) => self.listen(&ev),
            Event::Conn(ConnKind::Nat, ev) => self.nat(&ev),
            Event::Conn(ConnKind::Attempt, ev) => self.attempt(&ev),
            Event::Data(h, payload) => self.data(&h, payload),
            Event::OriginalDst(ev) => self.original_dst(&ev),
            Event::EstablishedData(..) => {
                let (first, then) = event.split();
                self.on_event(first);
                if let Some(then) = then {
                    self.on_event(then);
                }
            }
        }
    }

    /// The connection an end (socket cookie) belongs to, open or not yet emitted.
    pub fn connection_of(&self, cookie: u64) -> Option<&Connection> {
        self.conns.get(*self.ends.get(&cookie)?)
    }

    fn resolve_cgroup(&mut self, id: u64) -> Option<std::sync::Arc<str>> {
        self.cgroups.as_mut().and_then(|r| r.path(id))
    }

    fn listen(&mut self, ev: &ConnEvent) {
        let Some(process) = Process::from_raw(ev.tgid, &ev.comm) else {
            return;
        };
        let list = self.listeners.entry(ev.local_port).or_default();
        list.retain(|l| l.process.pid != process.pid || l.cgroup_id != ev.cgroup_id);
        list.insert(
            0,
            Listener {
                process,
                uid: ev.uid,
                cgroup_id: ev.cgroup_id,
            },
        );
        list.truncate(8);
    }

    fn listener_for(&self, port: u16, cgroup_id: u64) -> Option<&Listener> {
        let list = self.listeners.get(&port)?;
        list.iter()
            .find(|l| cgroup_id != 0 && l.cgroup_id == cgroup_id)
            .or_else(|| if list.len() == 1 { list.first() } else { None })
    }

    fn guess_role(&self, ev: &ConnEvent) -> Role {
        if self.listeners.contains_key(&ev.local_port) {
            return Role::Server;
        }
        if self.listeners.contains_key(&ev.remote_port) {
            return Role::Client;
        }
        // Ephemeral ports (Linux default 32768-60999) are the client's.
        if ev.local_port >= 32768 && ev.remote_port < 32768 {
            Role::Client
        } else {
            Role::Server
        }
    }

    fn open_end(&mut self, ev: &ConnEvent, preexisting: bool) {
        let cookie = ev.hdr.cookie;
        if self.ends.contains_key(&cookie) {
            return;
        }
        let local = SocketAddr::new(addr(ev.family, &ev.local_addr), ev.local_port);
        let remote = SocketAddr::new(addr(ev.family, &ev.remote_addr), ev.remote_port);
        let role = match ev.role {
            role::CLIENT => Role::Client,
            role::SERVER => Role::Server,
            _ => self.guess_role(ev),
        };
        let mut process = Process::from_raw(ev.tgid, &ev.comm);
        let mut uid = process.is_some().then_some(ev.uid);
        let mut cgroup_id = ev.cgroup_id;
        if process.is_none()
            && role == Role::Server
            && let Some(l) = self.listener_for(local.port(), 0)
        {
            process = Some(l.process.clone());
            uid = Some(l.uid);
            cgroup_id = l.cgroup_id;
        }
        let cgroup = self.resolve_cgroup(cgroup_id);
        let end = End {
            cookie,
            role,
            local,
            remote,
            netns_cookie: ev.netns_cookie,
            cgroup_id,
            cgroup,
            process,
            uid,
            interception: None,
            preexisting,
            lost: ev.sock_flags & sock_flags::LOST != 0,
            opened_ns: ev.hdr.ts_ns,
            closed_ns: None,
            bytes_sent: None,
            bytes_received: None,
            fin_sent: false,
            fin_received: false,
            closed_first: false,
            peer_closed_first: false,
            reset: false,
            marked_decided: false,
            streams: None,
        };
        let (client, server) = match role {
            Role::Client => (local, remote),
            Role::Server => (remote, local),
        };
        // A client socket whose packets were translated meets its server end (if
        // that is on this node) at the translated addresses.
        let nat = match role {
            Role::Client => self.pending_nat.remove(&cookie).map(|wire| Nat {
                socket: (local, remote),
                wire,
            }),
            Role::Server => None,
        };
        let key = match nat {
            Some(n) => join_key(n.wire.0, n.wire.1, ev.netns_cookie),
            None => join_key(client, server, ev.netns_cookie),
        };
        self.stats.ends_opened += 1;

        // Join the connection its peer opened, if that one still lacks this side.
        if let Some(&id) = self.joins.get(&key)
            && let Some(conn) = self.conns.get_mut(id)
        {
            let slot = match role {
                Role::Client => &mut conn.client_end,
                Role::Server => &mut conn.server_end,
            };
            if slot.is_none() {
                *slot = Some(boxed(&mut self.spares.ends, end));
                if let Some(n) = nat {
                    conn.nat = Some(Box::new(n));
                    self.stats.nat_joined += 1;
                } else if role == Role::Server && conn.nat.is_some() {
                    // The translated addresses, as the server saw them.
                    (conn.client, conn.server) = (client, server);
                    self.stats.nat_joined += 1;
                }
                conn.first_ns = conn.first_ns.min(ev.hdr.ts_ns);
                conn.last_ns = conn.last_ns.max(ev.hdr.ts_ns);
                self.ends.insert(cookie, id);
                self.joins.remove(&key);
                return;
            }
        }
        let mut conn = Connection {
            client,
            server,
            client_end: None,
            server_end: None,
            first_ns: ev.hdr.ts_ns,
            last_ns: ev.hdr.ts_ns,
            open: false,
            settled: None,
            counted: false,
            nat: nat.map(Box::new),
            new_data: false,
        };
        let end = boxed(&mut self.spares.ends, end);
        match role {
            Role::Client => conn.client_end = Some(end),
            Role::Server => conn.server_end = Some(end),
        }
        let id = self.conns.insert(conn);
        self.ends.insert(cookie, id);
        self.joins.insert(key, id);
    }

    fn end_mut(&mut self, cookie: u64) -> Option<(&mut Connection, bool)> {
        let id = *self.ends.get(&cookie)?;
        let conn = self.conns.get_mut(id)?;
        let is_client = conn.client_end.as_ref().is_some_and(|e| e.cookie == cookie);
        Some((conn, is_client))
    }

    fn close_end(&mut self, ev: &ConnEvent) {
        let Some((conn, is_client)) = self.end_mut(ev.hdr.cookie) else {
            self.stats.orphan_events += 1;
            return;
        };
        conn.last_ns = conn.last_ns.max(ev.hdr.ts_ns);
        let end = if is_client {
            conn.client_end.as_mut()
        } else {
            conn.server_end.as_mut()
        };
        let Some(end) = end else { return };
        end.closed_ns = Some(ev.hdr.ts_ns);
        if ev.sock_flags & sock_flags::LOST != 0 {
            end.lost = true;
        }
        end.fin_sent = ev.sock_flags & sock_flags::FIN_SENT != 0;
        end.fin_received = ev.sock_flags & sock_flags::FIN_RECEIVED != 0;
        end.closed_first = ev.sock_flags & sock_flags::CLOSED_FIRST != 0;
        end.peer_closed_first = ev.sock_flags & sock_flags::PEER_CLOSED_FIRST != 0;
        end.reset = ev.sock_flags & sock_flags::RESET != 0;
        // sock_ops reports counts; a close seen by the tracepoint (pre-existing
        // socket) carries none.
        if !end.preexisting {
            end.bytes_sent = Some(ev.bytes_sent);
            end.bytes_received = Some(ev.bytes_received);
        }
        if end.process.is_none() {
            end.process = Process::from_raw(ev.tgid, &ev.comm);
        }
        if end.uid.is_none() && ev.tgid != 0 {
            end.uid = Some(ev.uid);
        }
        let new_cgroup = (end.cgroup_id == 0 && ev.cgroup_id != 0).then_some(ev.cgroup_id);
        let all_closed = conn.all_closed();
        let cookie = ev.hdr.cookie;
        if let Some(id) = new_cgroup {
            self.learn_cgroup(cookie, id);
        }
        if all_closed && let Some(&id) = self.ends.get(&cookie) {
            self.closed.push(id);
        }
    }

    /// A client socket's SYN left with other addresses than the socket's: remember
    /// them until the socket is established (its ESTABLISHED event follows).
    fn nat(&mut self, ev: &ConnEvent) {
        if self.pending_nat.len() >= 65_536 {
            // Sockets that never got established (refused, timed out).
            self.pending_nat.clear();
        }
        let local = SocketAddr::new(addr(ev.family, &ev.local_addr), ev.local_port);
        let remote = SocketAddr::new(addr(ev.family, &ev.remote_addr), ev.remote_port);
        self.pending_nat.insert(ev.hdr.cookie, (local, remote));
    }

    /// A connect() that never established: kept for the metrics (bounded: past
    /// [`MAX_PENDING_ATTEMPTS`] between two takes they are only counted).
    fn attempt(&mut self, ev: &ConnEvent) {
        self.pending_nat.remove(&ev.hdr.cookie);
        self.stats.attempts_failed += 1;
        if self.attempts.len() >= MAX_PENDING_ATTEMPTS {
            self.stats.attempts_dropped += 1;
            return;
        }
        let cgroup = self.resolve_cgroup(ev.cgroup_id);
        self.attempts.push(Attempt {
            client: SocketAddr::new(addr(ev.family, &ev.local_addr), ev.local_port),
            server: SocketAddr::new(addr(ev.family, &ev.remote_addr), ev.remote_port),
            netns_cookie: ev.netns_cookie,
            cgroup,
            process: Process::from_raw(ev.tgid, &ev.comm),
            refused: ev.sock_flags & sock_flags::RESET != 0,
        });
    }

    /// The failed connection attempts seen since the last call.
    pub fn take_attempts(&mut self) -> Vec<Attempt> {
        std::mem::take(&mut self.attempts)
    }

    /// Records the cgroup of an end and what follows from it: its path and, for a
    /// server end without a process, the listener in that cgroup.
    fn learn_cgroup(&mut self, cookie: u64, cgroup_id: u64) {
        let path = self.resolve_cgroup(cgroup_id);
        let listener = self.listener_process(cookie, cgroup_id);
        if let Some((conn, is_client)) = self.end_mut(cookie) {
            let end = if is_client {
                conn.client_end.as_mut()
            } else {
                conn.server_end.as_mut()
            };
            if let Some(end) = end {
                end.cgroup_id = cgroup_id;
                end.cgroup = path;
                if end.process.is_none() {
                    end.process = listener;
                }
            }
        }
    }

    fn data(&mut self, h: &DataHeader, payload: &[u8]) {
        let budget = self.cfg.budget;
        let cookie = h.hdr.cookie;
        let Some((&id, conn)) = self
            .ends
            .get(&cookie)
            .and_then(|id| Some((id, self.conns.get_mut(*id)?)))
        else {
            self.stats.orphan_events += 1;
            return;
        };
        let is_client = conn.client_end.as_ref().is_some_and(|e| e.cookie == cookie);
        conn.last_ns = conn.last_ns.max(h.hdr.ts_ns);
        // Once settled, bytes the kernel sent up before it learned so are not kept.
        let keep = conn.settled.is_none();
        let first_new = keep && !payload.is_empty() && !conn.new_data;
        conn.new_data |= first_new;
        let end = if is_client {
            conn.client_end.as_mut()
        } else {
            conn.server_end.as_mut()
        };
        let Some(end) = end else { return };
        if end.streams.is_none()
            && let Some(spare) = self.spares.streams.pop()
        {
            end.adopt_streams(spare);
        }
        let stream = end.stream_mut(h.direction == direction::EGRESS);
        if keep && stream.insert(h.offset, payload, budget, h.hdr.ts_ns) {
            self.stats.overlap_conflicts += 1;
        }
        stream.seen_bytes += u64::from(h.seg_len);
        if h.flags & data_flags::TRUNCATED != 0 {
            stream.truncated = true;
        }
        if h.flags & data_flags::MIDSTREAM != 0 {
            stream.midstream = true;
        }
        if h.tcp_flags & tcp_flags::RST != 0 {
            stream.rst = true;
        }
        if h.seg_len > 0 {
            stream.first_ns.get_or_insert(h.hdr.ts_ns);
        }
        stream.last_ns = Some(h.hdr.ts_ns);
        if end.process.is_none() && h.flags & data_flags::PROCESS != 0 {
            end.process = Process::from_raw(h.tgid, &h.comm);
        }
        let learn = (end.cgroup_id == 0 && h.cgroup_id != 0).then_some(h.cgroup_id);
        if first_new {
            self.touched.push(id);
        }
        if let Some(cgroup_id) = learn {
            self.learn_cgroup(cookie, cgroup_id);
        }
    }

    /// A process asked a socket of its own for the pre-NAT destination: the socket
    /// accepted an intercepted connection. The end learns so, and a connection of
    /// which it is the only end moves to the (client, original destination) pair,
    /// joining the client's own end when that one is on this node.
    fn original_dst(&mut self, ev: &OrigDstEvent) {
        let local = SocketAddr::new(addr(ev.family, &ev.local_addr), ev.local_port);
        let remote = SocketAddr::new(addr(ev.family, &ev.remote_addr), ev.remote_port);
        let nat = ev.result == 0 && ev.original_family != 0;
        let original = if nat {
            SocketAddr::new(
                addr(ev.original_family, &ev.original_addr),
                ev.original_port,
            )
        } else {
            local
        };
        // The socket's cookie comes from its storage; without one (a socket older
        // than the probes) the accepting end is found by its addresses.
        let id = match self.ends.get(&ev.hdr.cookie) {
            Some(&id) if ev.hdr.cookie != 0 => Some(id),
            _ => self
                .joins
                .get(&join_key(remote, local, ev.netns_cookie))
                .copied(),
        };
        let Some((id, conn)) = id.and_then(|id| Some((id, self.conns.get_mut(id)?))) else {
            self.stats.orphan_events += 1;
            return;
        };
        let Some(end) = conn.server_end.as_mut().filter(|e| e.local == local) else {
            self.stats.orphan_events += 1;
            return;
        };
        if end.interception.is_some() {
            return; // asked again
        }
        let Some(process) = Process::from_raw(ev.tgid, &ev.comm) else {
            return;
        };
        if end.process.is_none() {
            end.process = Some(process.clone());
            end.uid = Some(ev.uid);
        }
        end.interception = Some(Box::new(Interception {
            original,
            accepted_on: local,
            process,
            uid: ev.uid,
            gid: ev.gid,
            cgroup_id: ev.cgroup_id,
            nat,
        }));
        let (cookie, netns) = (end.cookie, end.netns_cookie);
        if conn.client_end.is_some() {
            // Joined already (by the client's translated SYN): the connection is to
            // where the client meant to go.
            if conn.server == local {
                conn.server = original;
            }
            return;
        }
        if original == local {
            // Nothing to move: no NAT, or the client dialled the proxy itself.
            return;
        }
        let (client, server) = (conn.client, conn.server);
        let old_key = join_key(client, server, netns);
        let new_key = join_key(client, original, netns);
        if self.joins.get(&old_key) == Some(&id) {
            self.joins.remove(&old_key);
        }
        let waiting = self.joins.get(&new_key).copied().filter(|&other| {
            other != id
                && self
                    .conns
                    .get(other)
                    .is_some_and(|c| c.server_end.is_none() && c.client_end.is_some())
        });
        match waiting {
            Some(other) => {
                let mut moved = self.conns.remove(id);
                let new_data = moved.new_data;
                let (first, last) = (moved.first_ns, moved.last_ns);
                if let Some(target) = self.conns.get_mut(other) {
                    target.server_end = moved.server_end.take();
                    target.first_ns = target.first_ns.min(first);
                    target.last_ns = target.last_ns.max(last);
                    target.new_data |= new_data;
                    if target.all_closed() {
                        self.closed.push(other);
                    }
                }
                self.ends.insert(cookie, other);
                self.joins.remove(&new_key);
                if new_data {
                    self.touched.push(other);
                }
                self.stats.interceptions_joined += 1;
            }
            None => {
                if let Some(conn) = self.conns.get_mut(id) {
                    conn.server = original;
                }
                self.joins.insert(new_key, id);
            }
        }
    }

    fn listener_process(&self, cookie: u64, cgroup_id: u64) -> Option<Process> {
        let id = self.ends.get(&cookie)?;
        let conn = self.conns.get(*id)?;
        let end = conn.server_end.as_ref().filter(|e| e.cookie == cookie)?;
        self.listener_for(end.local.port(), cgroup_id)
            .map(|l| l.process.clone())
    }

    /// After a burst: gives back the room the tables grew to once they hold less
    /// than a quarter of it. Returns whether any was given back (then the caller
    /// may return freed heap to the system).
    pub fn shrink(&mut self) -> bool {
        const KEEP: usize = 4096;
        let before = self.conns.capacity();
        if before <= KEEP || self.conns.len() * 4 > before {
            return false;
        }
        // The slab cannot shrink past its last connection still open.
        self.conns.shrink_to_fit();
        let keep = |n: usize| (n * 2).max(KEEP);
        self.ends.shrink_to(keep(self.ends.len()));
        self.joins.shrink_to(keep(self.joins.len()));
        self.pending_nat.shrink_to(keep(self.pending_nat.len()));
        self.touched.shrink_to(keep(self.touched.len()));
        self.closed.shrink_to(keep(self.closed.len()));
        self.attempts.shrink_to(keep(self.attempts.len()));
        self.conns.capacity() < before
    }

    /// Takes back the ends and streams of connections that were emitted and
    /// recorded, for the connections to come.
    pub fn recycle(&mut self, done: impl IntoIterator<Item = Connection>) {
        let keep_bytes = self.cfg.budget as usize;
        for mut conn in done {
            for mut end in [conn.client_end.take(), conn.server_end.take()]
                .into_iter()
                .flatten()
            {
                if self.spares.streams.len() < SPARES
                    && let Some(s) = end.take_streams(keep_bytes)
                {
                    self.spares.streams.push(s);
                }
                if self.spares.ends.len() < SPARES {
                    self.spares.ends.push(end);
                }
            }
        }
    }

    /// Emits connections that are finished at monotonic time `now_ns`.
    pub fn tick(&mut self, now_ns: u64, out: &mut impl FnMut(Connection)) {
        let linger = self.cfg.linger_ns;
        let mut closed = std::mem::take(&mut self.closed);
        closed.sort_unstable();
        closed.dedup();
        let mut waiting = Vec::new();
        for id in closed.drain(..) {
            let Some(c) = self.conns.get(id) else {
                continue; // emitted already
            };
            if !c.all_closed() {
                // Its peer end joined since (or the id was reused): it comes back
                // when that one closes.
                continue;
            }
            if c.both_ends() || now_ns.saturating_sub(c.last_ns) >= linger {
                self.emit(id, false, out);
            } else {
                // One end, closed: waits out the linger for its peer.
                waiting.push(id);
            }
        }
        closed.extend(waiting);
        self.closed = closed;
    }

    /// Emits everything still tracked (agent exit); open connections are marked so.
    pub fn flush(&mut self, out: &mut impl FnMut(Connection)) {
        let ids: Vec<ConnId> = self.conns.iter().map(|(id, _)| id).collect();
        for id in ids {
            self.emit(id, true, out);
        }
    }

    fn emit(&mut self, id: ConnId, flushing: bool, out: &mut impl FnMut(Connection)) {
        let Some(mut conn) = self.conns.try_remove(id) else {
            return;
        };
        for end in conn.client_end.iter().chain(conn.server_end.iter()) {
            self.ends.remove(&end.cookie);
        }
        let ns = conn
            .client_end
            .as_ref()
            .or(conn.server_end.as_ref())
            .map_or(0, |e| e.netns_cookie);
        let key = join_key(conn.client, conn.server, ns);
        if self.joins.get(&key) == Some(&id) {
            self.joins.remove(&key);
        }
        if let Some(n) = conn.nat.as_deref() {
            let key = join_key(n.wire.0, n.wire.1, ns);
            if self.joins.get(&key) == Some(&id) {
                self.joins.remove(&key);
            }
        }
        conn.open = flushing && !conn.all_closed();
        self.stats.connections_emitted += 1;
        out(conn);
    }

    /// Looks at the open connections that received bytes since the last call:
    /// where `judge` returns a classification that more bytes cannot change, it is
    /// kept, the captured prefixes are freed and the connection's open ends are
    /// queued for [`FlowTable::take_decided`] (the kernel stops capturing them).
    /// Returns how many connections settled.
    pub fn settle(
        &mut self,
        judge: &mut impl FnMut(&Connection) -> Option<Classification>,
    ) -> usize {
        let mut settled = 0;
        for id in std::mem::take(&mut self.touched) {
            let Some(conn) = self.conns.get_mut(id) else {
                continue;
            };
            if !std::mem::take(&mut conn.new_data) || conn.settled.is_some() || conn.all_closed() {
                continue;
            }
            let Some(cls) = judge(conn) else { continue };
            conn.settled = Some(Box::new(cls));
            settled += 1;
            if let Some(e) = conn.ends().next() {
                self.newly_settled.push(e.cookie);
            }
            for end in conn.client_end.iter_mut().chain(conn.server_end.iter_mut()) {
                end.release_streams();
                if end.closed_ns.is_none() {
                    self.decided.push(end.cookie);
                    end.marked_decided = true;
                }
            }
        }
        settled
    }
}
