//! The flow table: socket ends keyed by cookie, joined into connections.
//!
//! Each socket the kernel reports is an *end*. A connection whose two ends are both
//! on this node (loopback, pod to pod on one node) is one connection with two ends:
//! they are joined on the (client, server) address pair, plus the network namespace
//! when the addresses are loopback ones (every namespace has its own 127.0.0.1).
//! A connection is finished when every end it has is closed; it is emitted once the
//! second end has closed too, or after a linger for connections with one end here.

pub mod stream;

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use foldhash::{HashMap, HashMapExt as _};
use slab::Slab;

use agent_common::{
    ConnEvent, DataHeader, data_flags, direction, family, role, sock_flags, tcp_flags,
};

use crate::{
    capture::{ConnKind, Event},
    cgroups::CgroupResolver,
    classify::{Classification, Closing, ConnInput, Party, Side},
};
pub use stream::{Overlaps, Stream};

/// Which side of the connection an end is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    Client,
    Server,
}

/// Process that owns a local end.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Process {
    /// Thread-group id: the process id as `ps` shows it.
    pub pid: u32,
    pub comm: String,
}

impl Process {
    fn from_raw(tgid: u32, comm: &[u8; 16]) -> Option<Self> {
        if tgid == 0 {
            return None;
        }
        let len = comm.iter().position(|&b| b == 0).unwrap_or(comm.len());
        Some(Self {
            pid: tgid,
            comm: String::from_utf8_lossy(&comm[..len]).into_owned(),
        })
    }
}

/// One socket seen by the probes.
#[derive(Debug, Clone)]
pub struct End {
    pub cookie: u64,
    pub role: Role,
    pub local: SocketAddr,
    pub remote: SocketAddr,
    pub netns_cookie: u64,
    pub cgroup_id: u64,
    pub cgroup: Option<String>,
    pub process: Option<Process>,
    /// The end existed before the probes attached.
    pub preexisting: bool,
    /// Some kernel event of this end was lost.
    pub lost: bool,
    pub opened_ns: u64,
    pub closed_ns: Option<u64>,
    pub bytes_sent: Option<u64>,
    pub bytes_received: Option<u64>,
    /// This end sent a FIN / received one (from the close event).
    pub fin_sent: bool,
    pub fin_received: bool,
    /// This end closed first / its peer did / the connection was reset.
    pub closed_first: bool,
    pub peer_closed_first: bool,
    pub reset: bool,
    pub egress: Stream,
    pub ingress: Stream,
}

/// A connection: one or two ends.
#[derive(Debug, Clone)]
pub struct Connection {
    pub client: SocketAddr,
    pub server: SocketAddr,
    pub client_end: Option<End>,
    pub server_end: Option<End>,
    pub first_ns: u64,
    pub last_ns: u64,
    /// Still open when it was flushed (agent exit).
    pub open: bool,
    /// The classification, once more bytes could not change it
    /// ([`FlowTable::settle`]): the captured prefixes are freed and the kernel stops
    /// capturing this connection.
    pub settled: Option<Box<Classification>>,
    /// Bytes arrived since the last [`FlowTable::settle`] looked at this connection.
    new_data: bool,
}

impl Connection {
    /// Ends present, client first.
    pub fn ends(&self) -> impl Iterator<Item = &End> {
        self.client_end.iter().chain(self.server_end.iter())
    }

    /// The better of the two captures of one direction: the sender's egress or the
    /// receiver's ingress. When both hold bytes and they differ, the receiver's:
    /// what its kernel kept is what the peer read.
    fn pick<'a>(sent: Option<&'a Stream>, received: Option<&'a Stream>) -> Option<&'a Stream> {
        match (sent, received) {
            (Some(x), Some(y)) => {
                if stream::first_difference(x, y).is_some()
                    || y.contiguous().len() > x.contiguous().len()
                {
                    Some(y)
                } else {
                    Some(x)
                }
            }
            (x, None) => x,
            (None, y) => y,
        }
    }

    fn client_streams(&self) -> (Option<&Stream>, Option<&Stream>) {
        (
            self.client_end.as_ref().map(|e| &e.egress),
            self.server_end.as_ref().map(|e| &e.ingress),
        )
    }

    fn server_streams(&self) -> (Option<&Stream>, Option<&Stream>) {
        (
            self.server_end.as_ref().map(|e| &e.egress),
            self.client_end.as_ref().map(|e| &e.ingress),
        )
    }

    /// Client-to-server bytes: the client's egress or the server's ingress.
    pub fn client_to_server(&self) -> Option<&Stream> {
        let (sent, received) = self.client_streams();
        Self::pick(sent, received)
    }

    /// Server-to-client bytes: the server's egress or the client's ingress.
    pub fn server_to_client(&self) -> Option<&Stream> {
        let (sent, received) = self.server_streams();
        Self::pick(sent, received)
    }

    /// Conflicting overlaps in each direction, client to server first: segments
    /// whose bytes differ from bytes already received, and captures at the two ends
    /// that differ.
    pub fn overlaps(&self) -> (Overlaps, Overlaps) {
        fn of(pair: (Option<&Stream>, Option<&Stream>)) -> Overlaps {
            match pair {
                (Some(a), Some(b)) => Overlaps::merge(a, b),
                (Some(s), None) | (None, Some(s)) => *s.overlaps(),
                (None, None) => Overlaps::default(),
            }
        }
        (of(self.client_streams()), of(self.server_streams()))
    }

    /// Classifies the connection: the classifier on [`Connection::classify_input`],
    /// with low confidence when the streams held conflicting overlaps.
    pub fn classify(&self) -> Classification {
        let mut cls = crate::classify::classify(&self.classify_input());
        let (c2s, s2c) = self.overlaps();
        stream::flag_overlaps(&mut cls, &c2s, &s2c);
        cls
    }

    /// Bytes client to server and server to client, from the kernel's counters.
    pub fn byte_counts(&self) -> (Option<u64>, Option<u64>) {
        if let Some(c) = &self.client_end
            && c.bytes_sent.is_some()
        {
            return (c.bytes_sent, c.bytes_received);
        }
        if let Some(s) = &self.server_end
            && s.bytes_sent.is_some()
        {
            return (s.bytes_received, s.bytes_sent);
        }
        (None, None)
    }

    /// How the connection ended, from the ends' close flags and captured RSTs.
    pub fn closing(&self) -> Closing {
        let closed = self.all_closed();
        let mut first = None;
        let mut reset_by = None;
        for (end, me, peer) in [
            (&self.client_end, Party::Client, Party::Server),
            (&self.server_end, Party::Server, Party::Client),
        ] {
            let Some(e) = end else { continue };
            if first.is_none() {
                if e.closed_first {
                    first = Some(me);
                } else if e.peer_closed_first {
                    first = Some(peer);
                }
            }
            if reset_by.is_none() {
                if e.egress.rst {
                    reset_by = Some(me);
                } else if e.ingress.rst {
                    reset_by = Some(peer);
                }
            }
        }
        if first.is_none() {
            first = reset_by;
        }
        Closing {
            closed,
            first,
            reset_by,
        }
    }

    /// What the classifier needs, borrowed from this connection.
    pub fn classify_input(&self) -> ConnInput<'_> {
        fn side(s: Option<&Stream>) -> Side<'_> {
            match s {
                Some(s) => Side {
                    bytes: s.contiguous(),
                    chunks: &s.chunks,
                    base: 0,
                    truncated: s.truncated,
                    midstream: s.midstream,
                },
                None => Side::default(),
            }
        }
        let preexisting = self.preexisting();
        let mut client = side(self.client_to_server());
        let mut server = side(self.server_to_client());
        client.midstream |= preexisting;
        server.midstream |= preexisting;
        // A hole left by a segment cut at the chunk size is not a loss.
        let gap = |s: Option<&Stream>| s.is_some_and(|s| s.has_gap() && !s.truncated);
        ConnInput {
            client,
            server,
            server_port: self.server.port(),
            closing: self.closing(),
            lost: self.ends().any(|e| e.lost)
                || gap(self.client_to_server())
                || gap(self.server_to_client()),
        }
    }

    pub fn preexisting(&self) -> bool {
        self.ends().any(|e| e.preexisting)
    }

    fn all_closed(&self) -> bool {
        self.ends().all(|e| e.closed_ns.is_some())
    }

    fn both_ends(&self) -> bool {
        self.client_end.is_some() && self.server_end.is_some()
    }
}

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
    /// Connections that received bytes since the last `settle` (may name ids
    /// reused since; `new_data` is what counts).
    touched: Vec<ConnId>,
    stats: FlowStats,
}

fn addr(fam: u16, raw: &[u8; 16]) -> IpAddr {
    if fam == family::INET {
        IpAddr::V4(Ipv4Addr::new(raw[0], raw[1], raw[2], raw[3]))
    } else {
        let v6 = Ipv6Addr::from(*raw);
        // A v6 socket talking IPv4 shows mapped addresses: report plain IPv4.
        match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(v6),
        }
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
            touched: Vec::new(),
            stats: FlowStats::default(),
        }
    }

    pub fn stats(&self) -> FlowStats {
        FlowStats {
            listeners: self.listeners.len() as u64,
            ..self.stats
        }
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

    /// Feeds one kernel event.
    pub fn on_event(&mut self, event: Event<'_>) {
        match event {
            Event::Conn(ConnKind::Established, ev) => self.open_end(&ev, false),
            Event::Conn(ConnKind::Preexisting, ev) => self.open_end(&ev, true),
            Event::Conn(ConnKind::Closed, ev) => self.close_end(&ev),
            Event::Conn(ConnKind::Listen, ev) => self.listen(&ev),
            Event::Data(h, payload) => self.data(&h, payload),
        }
    }

    fn resolve_cgroup(&mut self, id: u64) -> Option<String> {
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
        let mut cgroup_id = ev.cgroup_id;
        if process.is_none()
            && role == Role::Server
            && let Some(l) = self.listener_for(local.port(), 0)
        {
            process = Some(l.process.clone());
            cgroup_id = l.cgroup_id;
        }
        let cgroup = self.resolve_cgroup(cgroup_id);
        let mut end = End {
            cookie,
            role,
            local,
            remote,
            netns_cookie: ev.netns_cookie,
            cgroup_id,
            cgroup,
            process,
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
            egress: Stream::default(),
            ingress: Stream::default(),
        };
        end.egress.midstream = preexisting;
        end.ingress.midstream = preexisting;
        let (client, server) = match role {
            Role::Client => (local, remote),
            Role::Server => (remote, local),
        };
        let key = join_key(client, server, ev.netns_cookie);
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
                *slot = Some(end);
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
            new_data: false,
        };
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
        let new_cgroup = (end.cgroup_id == 0 && ev.cgroup_id != 0).then_some(ev.cgroup_id);
        let cookie = ev.hdr.cookie;
        if let Some(id) = new_cgroup {
            self.learn_cgroup(cookie, id);
        }
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
        let stream = if h.direction == direction::EGRESS {
            &mut end.egress
        } else {
            &mut end.ingress
        };
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

    fn listener_process(&self, cookie: u64, cgroup_id: u64) -> Option<Process> {
        let id = self.ends.get(&cookie)?;
        let conn = self.conns.get(*id)?;
        let end = conn.server_end.as_ref().filter(|e| e.cookie == cookie)?;
        self.listener_for(end.local.port(), cgroup_id)
            .map(|l| l.process.clone())
    }

    /// Emits connections that are finished at monotonic time `now_ns`.
    pub fn tick(&mut self, now_ns: u64, out: &mut impl FnMut(Connection)) {
        let linger = self.cfg.linger_ns;
        let done: Vec<ConnId> = self
            .conns
            .iter()
            .filter(|(_, c)| {
                c.all_closed() && (c.both_ends() || now_ns.saturating_sub(c.last_ns) >= linger)
            })
            .map(|(id, _)| id)
            .collect();
        for id in done {
            self.emit(id, false, out);
        }
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
            for end in conn.client_end.iter_mut().chain(conn.server_end.iter_mut()) {
                end.egress.release();
                end.ingress.release();
                if end.closed_ns.is_none() {
                    self.decided.push(end.cookie);
                }
            }
        }
        settled
    }
}

#[cfg(test)]
mod tests {
    use agent_common::{EventHeader, kind};

    use super::*;

    fn conn_event(
        k: u32,
        cookie: u64,
        r: u16,
        local: ([u8; 4], u16),
        remote: ([u8; 4], u16),
    ) -> ConnEvent {
        let mut la = [0u8; 16];
        la[..4].copy_from_slice(&local.0);
        let mut ra = [0u8; 16];
        ra[..4].copy_from_slice(&remote.0);
        ConnEvent {
            hdr: EventHeader {
                kind: k,
                _pad0: 0,
                cookie,
                ts_ns: 1_000,
            },
            netns_cookie: 1,
            cgroup_id: 0,
            bytes_sent: 10,
            bytes_received: 20,
            local_addr: la,
            remote_addr: ra,
            local_port: local.1,
            remote_port: remote.1,
            family: family::INET,
            role: r,
            pid: 0,
            tgid: 0,
            comm: [0; 16],
            egress_base: 0,
            ingress_base: 0,
            sock_flags: 0,
            _pad1: 0,
        }
    }

    fn data(cookie: u64, dir: u8, offset: u32, bytes: &[u8]) -> DataHeader {
        DataHeader {
            hdr: EventHeader {
                kind: kind::DATA,
                _pad0: 0,
                cookie,
                ts_ns: 2_000,
            },
            cgroup_id: 0,
            offset,
            len: bytes.len() as u32,
            seg_len: bytes.len() as u32,
            direction: dir,
            tcp_flags: 0,
            flags: 0,
            _pad0: 0,
            pid: 0,
            tgid: 0,
            comm: [0; 16],
        }
    }

    /// Client end (cookie 1) and server end (cookie 2) of one connection.
    fn open_pair(t: &mut FlowTable, c: ([u8; 4], u16), s: ([u8; 4], u16)) {
        t.on_event(Event::Conn(
            ConnKind::Established,
            conn_event(kind::ESTABLISHED, 1, role::CLIENT, c, s),
        ));
        t.on_event(Event::Conn(
            ConnKind::Established,
            conn_event(kind::ESTABLISHED, 2, role::SERVER, s, c),
        ));
    }

    #[test]
    fn two_local_ends_become_one_connection() {
        let mut t = FlowTable::new(FlowConfig::default(), None);
        let c = ([127, 0, 0, 1], 40000);
        let s = ([127, 0, 0, 1], 8080);
        open_pair(&mut t, c, s);
        assert_eq!(t.len(), 1);
        let req = b"GET / HTTP/1.1\r\n\r\n";
        t.on_event(Event::Data(data(1, direction::EGRESS, 0, req), req));
        t.on_event(Event::Data(data(2, direction::INGRESS, 0, req), req));
        t.on_event(Event::Conn(
            ConnKind::Closed,
            conn_event(kind::CLOSED, 1, role::UNKNOWN, c, s),
        ));
        let mut out = Vec::new();
        t.tick(1_500, &mut |c| out.push(c));
        assert!(out.is_empty(), "server end still open");
        t.on_event(Event::Conn(
            ConnKind::Closed,
            conn_event(kind::CLOSED, 2, role::UNKNOWN, s, c),
        ));
        t.tick(1_500, &mut |c| out.push(c));
        assert_eq!(out.len(), 1);
        let conn = &out[0];
        assert!(conn.both_ends());
        assert_eq!(conn.client_to_server().unwrap().contiguous(), req);
        assert_eq!(conn.byte_counts(), (Some(10), Some(20)));
        assert!(t.is_empty());
    }

    #[test]
    fn loopback_pairs_in_different_namespaces_stay_apart() {
        let mut t = FlowTable::new(FlowConfig::default(), None);
        let c = ([127, 0, 0, 1], 40000);
        let s = ([127, 0, 0, 1], 8080);
        let mut a = conn_event(kind::ESTABLISHED, 1, role::CLIENT, c, s);
        a.netns_cookie = 10;
        let mut b = conn_event(kind::ESTABLISHED, 2, role::SERVER, s, c);
        b.netns_cookie = 20;
        t.on_event(Event::Conn(ConnKind::Established, a));
        t.on_event(Event::Conn(ConnKind::Established, b));
        assert_eq!(t.len(), 2);
    }

    #[test]
    fn single_end_waits_for_the_linger() {
        let mut t = FlowTable::new(
            FlowConfig {
                linger_ns: 100,
                ..FlowConfig::default()
            },
            None,
        );
        let c = ([10, 213, 0, 2], 40000);
        let s = ([10, 213, 0, 1], 443);
        t.on_event(Event::Conn(
            ConnKind::Established,
            conn_event(kind::ESTABLISHED, 1, role::CLIENT, c, s),
        ));
        t.on_event(Event::Conn(
            ConnKind::Closed,
            conn_event(kind::CLOSED, 1, role::UNKNOWN, c, s),
        ));
        let mut out = Vec::new();
        t.tick(1_050, &mut |c| out.push(c));
        assert!(out.is_empty());
        t.tick(1_200, &mut |c| out.push(c));
        assert_eq!(out.len(), 1);
    }

    #[test]
    fn data_of_unknown_sockets_is_counted() {
        let mut t = FlowTable::new(FlowConfig::default(), None);
        t.on_event(Event::Data(data(9, direction::EGRESS, 0, b"x"), b"x"));
        assert_eq!(t.stats().orphan_events, 1);
    }

    #[test]
    fn a_settled_connection_is_marked_decided_and_keeps_no_more_bytes() {
        let mut t = FlowTable::new(FlowConfig::default(), None);
        let c = ([10, 213, 0, 2], 40000);
        let s = ([10, 213, 0, 1], 8080);
        open_pair(&mut t, c, s);
        let judge = &mut |conn: &Connection| {
            let cls = conn.classify();
            cls.is_settled().then_some(cls)
        };
        let req = b"GET / HTTP/1.1\r\nHost: a\r\n\r\n";
        t.on_event(Event::Data(data(1, direction::EGRESS, 0, req), req));
        assert_eq!(t.settle(judge), 0, "no answer yet: not settled");
        assert_eq!(t.settle(judge), 0, "nothing new: not looked at again");
        let resp = b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n";
        t.on_event(Event::Data(data(2, direction::EGRESS, 0, resp), resp));
        assert_eq!(t.settle(judge), 1);
        let mut decided: Vec<u64> = t.take_decided().collect();
        decided.sort_unstable();
        assert_eq!(decided, [1, 2], "both ends are marked");
        // Bytes already in flight when the mark was set are counted, not kept.
        let more = b"GET /2 HTTP/1.1\r\n\r\n";
        let at = req.len() as u32;
        t.on_event(Event::Data(data(1, direction::EGRESS, at, more), more));
        assert_eq!(t.settle(judge), 0);
        for (cookie, a, b) in [(1, c, s), (2, s, c)] {
            t.on_event(Event::Conn(
                ConnKind::Closed,
                conn_event(kind::CLOSED, cookie, role::UNKNOWN, a, b),
            ));
        }
        let mut out = Vec::new();
        t.tick(1_500, &mut |c| out.push(c));
        let conn = &out[0];
        let cls = conn.settled.as_deref().expect("settled");
        assert_eq!(cls.protocol, crate::classify::Protocol::Http1);
        let c2s = conn.client_to_server().expect("c2s");
        assert_eq!(c2s.captured(), req.len() as u64, "captured before settling");
        assert!(c2s.contiguous().is_empty(), "the buffer was freed");
        assert_eq!(
            conn.client_end.as_ref().map(|e| e.egress.seen_bytes),
            Some((req.len() + more.len()) as u64)
        );
    }
    #[test]
    fn conflicting_overlaps_keep_the_first_bytes_lower_confidence_and_are_counted() {
        let mut t = FlowTable::new(FlowConfig::default(), None);
        let c = ([10, 213, 0, 2], 40000);
        let s = ([10, 213, 0, 1], 8080);
        open_pair(&mut t, c, s);
        let req = b"GET / HTTP/1.1\r\nHost: a\r\n\r\n";
        // The server receives the request, then other bytes at the same offsets.
        let other = b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03 and more bytes than before";
        t.on_event(Event::Data(data(2, direction::INGRESS, 0, req), req));
        t.on_event(Event::Data(data(2, direction::INGRESS, 0, other), other));
        let resp = b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n";
        t.on_event(Event::Data(data(2, direction::EGRESS, 0, resp), resp));
        assert_eq!(t.stats().overlap_conflicts, 1);
        for (cookie, a, b) in [(1, c, s), (2, s, c)] {
            t.on_event(Event::Conn(
                ConnKind::Closed,
                conn_event(kind::CLOSED, cookie, role::UNKNOWN, a, b),
            ));
        }
        let mut out = Vec::new();
        t.tick(1_500, &mut |c| out.push(c));
        let conn = &out[0];
        let c2s = conn.client_to_server().expect("c2s");
        assert!(c2s.contiguous().starts_with(req), "the first copy is kept");
        let cls = conn.classify();
        assert_eq!(cls.protocol, crate::classify::Protocol::Http1);
        assert_eq!(cls.confidence, crate::classify::Confidence::Low);
        assert!(
            cls.evidence.contains("overlapping TCP segment"),
            "{}",
            cls.evidence
        );
        assert_eq!(conn.overlaps().0.segments, 1);
    }

    #[test]
    fn captures_that_differ_use_the_receivers_bytes() {
        let mut t = FlowTable::new(FlowConfig::default(), None);
        let c = ([10, 213, 0, 2], 40001);
        let s = ([10, 213, 0, 1], 8080);
        open_pair(&mut t, c, s);
        // The client's socket sent one thing; the server's kernel received another
        // (injected on the path), longer or not.
        let sent = b"\x16\x03\x01\x00\x10 a client hello";
        let received = b"GET / HTTP/1.1\r\n";
        t.on_event(Event::Data(data(1, direction::EGRESS, 0, sent), sent));
        t.on_event(Event::Data(
            data(2, direction::INGRESS, 0, received),
            received,
        ));
        let conn = t.conns.iter().next().map(|(_, c)| c).expect("connection");
        assert_eq!(
            conn.client_to_server().map(Stream::contiguous),
            Some(&received[..])
        );
        let (c2s, s2c) = conn.overlaps();
        assert!(c2s.captures_differ && !s2c.any());
        let cls = conn.classify();
        assert_eq!(cls.confidence, crate::classify::Confidence::Low);
        assert!(
            cls.evidence.contains("as sent and as received differ"),
            "{}",
            cls.evidence
        );
    }
}
