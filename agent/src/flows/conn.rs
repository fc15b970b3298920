//! What the flow table holds: socket ends and the connections they form.

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    sync::Arc,
};

use agent_common::family;

use super::{Overlaps, Stream, stream};
use crate::classify::{Classification, Closing, ConnInput, Party, Side};

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
    /// Shared by every end of the same command name (see [`intern_comm`]).
    pub comm: Arc<str>,
}

impl Process {
    pub(crate) fn from_raw(tgid: u32, comm: &[u8; 16]) -> Option<Self> {
        if tgid == 0 {
            return None;
        }
        let len = comm.iter().position(|&b| b == 0).unwrap_or(comm.len());
        Some(Self {
            pid: tgid,
            comm: intern_comm(&comm[..len]),
        })
    }
}

/// Distinct command names kept for sharing; past it a name is allocated per end.
const MAX_INTERNED_COMMS: usize = 4096;

/// The command name as a shared string: a node's hundred thousand connections have
/// a few dozen command names, and each end would otherwise hold its own copy.
fn intern_comm(raw: &[u8]) -> Arc<str> {
    // foldhash (randomly seeded), not SipHash: this runs for every end, and the
    // set is capped anyway.
    type Set = std::collections::HashSet<Arc<str>, foldhash::fast::RandomState>;
    thread_local! {
        static COMMS: std::cell::RefCell<Set> = std::cell::RefCell::default();
    }
    let name = String::from_utf8_lossy(raw);
    COMMS.with(|c| {
        let mut c = c.borrow_mut();
        if let Some(shared) = c.get(name.as_ref()) {
            return Arc::clone(shared);
        }
        let shared: Arc<str> = Arc::from(name.as_ref());
        if c.len() < MAX_INTERNED_COMMS {
            c.insert(Arc::clone(&shared));
        }
        shared
    })
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
    pub cgroup: Option<Arc<str>>,
    pub process: Option<Process>,
    /// uid of the owning process, when the kernel saw it in process context.
    pub uid: Option<u32>,
    /// Set when a process asked this (accepted) socket for its pre-NAT destination
    /// with `SO_ORIGINAL_DST`: the connection was redirected to it.
    pub interception: Option<Box<Interception>>,
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
    /// The kernel was told to stop capturing this end (its cookie went to
    /// [`super::FlowTable::take_decided`]); only such ends have a mark to clear.
    pub marked_decided: bool,
    /// Both directions, allocated with the first captured segment: an end that
    /// has captured nothing (an idle connection, one older than the agent that
    /// has not spoken) costs no stream memory.
    pub(super) streams: Option<Box<Streams>>,
}

/// The two directions of an end.
#[derive(Debug, Clone, Default)]
pub(super) struct Streams {
    egress: Stream,
    ingress: Stream,
}

impl End {
    /// What this socket sent, as captured.
    pub fn egress(&self) -> &Stream {
        self.streams.as_ref().map_or(&stream::EMPTY, |s| &s.egress)
    }

    /// What this socket received, as captured.
    pub fn ingress(&self) -> &Stream {
        self.streams.as_ref().map_or(&stream::EMPTY, |s| &s.ingress)
    }

    /// One direction, for a captured segment: both are allocated on the first
    /// (offsets of an end older than the agent are relative to its first segment).
    pub fn stream_mut(&mut self, egress: bool) -> &mut Stream {
        let midstream = self.preexisting;
        let s = self.streams.get_or_insert_with(|| {
            let mut s = Box::<Streams>::default();
            s.egress.midstream = midstream;
            s.ingress.midstream = midstream;
            s
        });
        if egress {
            &mut s.egress
        } else {
            &mut s.ingress
        }
    }

    /// Gives this end the (recycled) streams of a finished one, if it has none yet.
    pub(super) fn adopt_streams(&mut self, mut s: Box<Streams>) {
        if self.streams.is_none() {
            s.egress.midstream = self.preexisting;
            s.ingress.midstream = self.preexisting;
            self.streams = Some(s);
        }
    }

    /// Takes this end's streams, emptied for another end (buffers of more than
    /// `keep_bytes` are dropped).
    pub(super) fn take_streams(&mut self, keep_bytes: usize) -> Option<Box<Streams>> {
        let mut s = self.streams.take()?;
        s.egress.recycle(keep_bytes);
        s.ingress.recycle(keep_bytes);
        Some(s)
    }

    /// Frees both directions' bytes (see [`Stream::release`]).
    pub fn release_streams(&mut self) {
        if let Some(s) = &mut self.streams {
            s.egress.release();
            s.ingress.release();
        }
    }
}

/// What `SO_ORIGINAL_DST` told a proxy about a socket it accepted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Interception {
    /// Where the client meant to go. For a proxy that found no NAT entry (TPROXY,
    /// or a connection made to its port directly) this is the socket's own address.
    pub original: SocketAddr,
    /// The socket's own address: the proxy's listener (127.0.0.1:15001, pod:15006).
    pub accepted_on: SocketAddr,
    /// The process that asked.
    pub process: Process,
    pub uid: u32,
    pub gid: u32,
    pub cgroup_id: u64,
    /// The kernel had a NAT entry for it (iptables `REDIRECT`/`DNAT`).
    pub nat: bool,
}

/// A connection whose packets carried other addresses than its client socket names
/// (DNAT to a Service's endpoint, SNAT of a node's probe, REDIRECT to a proxy).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Nat {
    /// (client, server) as the client socket names them.
    pub socket: (SocketAddr, SocketAddr),
    /// (client, server) as its first packet carried them, past netfilter.
    pub wire: (SocketAddr, SocketAddr),
}

/// A connection: one or two ends.
#[derive(Debug, Clone)]
pub struct Connection {
    pub client: SocketAddr,
    pub server: SocketAddr,
    pub client_end: Option<Box<End>>,
    pub server_end: Option<Box<End>>,
    pub first_ns: u64,
    pub last_ns: u64,
    /// Still open when it was flushed (agent exit).
    pub open: bool,
    /// The classification, once more bytes could not change it
    /// ([`super::FlowTable::settle`]): the captured prefixes are freed and the kernel stops
    /// capturing this connection.
    pub settled: Option<Box<Classification>>,
    /// Counted in the metrics already (when it settled, while still open): its
    /// record adds only its bytes.
    pub counted: bool,
    /// Translated on the way out. With the server end joined, `client`/`server` are
    /// the translated (wire) addresses, as the server saw them.
    pub nat: Option<Box<Nat>>,
    /// Bytes arrived since the last [`super::FlowTable::settle`] looked at this connection.
    pub(super) new_data: bool,
}

impl Connection {
    /// Ends present, client first.
    pub fn ends(&self) -> impl Iterator<Item = &End> {
        self.client_end
            .as_deref()
            .into_iter()
            .chain(self.server_end.as_deref())
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
            self.client_end.as_ref().map(|e| e.egress()),
            self.server_end.as_ref().map(|e| e.ingress()),
        )
    }

    fn server_streams(&self) -> (Option<&Stream>, Option<&Stream>) {
        (
            self.server_end.as_ref().map(|e| e.egress()),
            self.client_end.as_ref().map(|e| e.ingress()),
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
                if e.egress().rst {
                    reset_by = Some(me);
                } else if e.ingress().rst {
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

    pub fn all_closed(&self) -> bool {
        self.ends().all(|e| e.closed_ns.is_some())
    }

    pub fn both_ends(&self) -> bool {
        self.client_end.is_some() && self.server_end.is_some()
    }
}

/// An address as the kernel reports it: IPv4 in the first 4 bytes or IPv6; a
/// v4-mapped IPv6 address (a v6 socket talking IPv4) is reported as plain IPv4.
pub fn addr(fam: u16, raw: &[u8; 16]) -> IpAddr {
    if fam == family::INET {
        IpAddr::V4(Ipv4Addr::new(raw[0], raw[1], raw[2], raw[3]))
    } else {
        let v6 = Ipv6Addr::from(*raw);
        match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(v6),
        }
    }
}
