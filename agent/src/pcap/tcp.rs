//! From link-layer frames to TCP connections: decapsulation down to IP (with IP
//! fragments reassembled and IP-in-IP, GRE and UDP tunnels followed), then each
//! connection tracked by 4-tuple from its SYN and each direction reassembled by
//! sequence offset with the same `Stream` the live agent uses.

use std::{
    collections::HashMap,
    net::{IpAddr, SocketAddr},
};

use super::{
    LinkType, ReadReport, SkipReason,
    frag::{Added, Defrag},
    ip,
    link::{self, Layer},
};
use crate::{
    classify::{Closing, ConnInput, Party, Side, tls},
    flows::Stream,
};

/// Encapsulations followed inside one frame.
const MAX_DEPTH: u8 = 8;

/// One TCP connection of a capture.
#[derive(Debug, Default)]
pub struct TcpConnection {
    pub client: Option<SocketAddr>,
    pub server: Option<SocketAddr>,
    pub first_ns: u64,
    pub last_ns: u64,
    /// Whether the SYN or SYN-ACK was captured (else roles are guessed and offsets
    /// start mid-stream).
    pub syn_seen: bool,
    pub c2s: Direction,
    pub s2c: Direction,
}

#[derive(Debug, Default)]
pub struct Direction {
    pub stream: Stream,
    base: Option<u32>,
    /// Highest stream offset + 1 seen: payload bytes sent.
    pub bytes: u64,
    pub fin_ns: Option<u64>,
    pub rst_ns: Option<u64>,
}

impl TcpConnection {
    fn closed(&self) -> bool {
        self.c2s.rst_ns.is_some()
            || self.s2c.rst_ns.is_some()
            || (self.c2s.fin_ns.is_some() && self.s2c.fin_ns.is_some())
    }

    pub fn closing(&self) -> Closing {
        let end = |d: &Direction| match (d.fin_ns, d.rst_ns) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        let first = match (end(&self.c2s), end(&self.s2c)) {
            (Some(c), Some(s)) => Some(if c <= s { Party::Client } else { Party::Server }),
            (Some(_), None) => Some(Party::Client),
            (None, Some(_)) => Some(Party::Server),
            (None, None) => None,
        };
        let reset_by = match (self.c2s.rst_ns, self.s2c.rst_ns) {
            (Some(c), Some(s)) => Some(if c <= s { Party::Client } else { Party::Server }),
            (Some(_), None) => Some(Party::Client),
            (None, Some(_)) => Some(Party::Server),
            (None, None) => None,
        };
        Closing {
            closed: self.closed(),
            first,
            reset_by,
        }
    }

    pub fn classify_input(&self) -> ConnInput<'_> {
        fn side(d: &Direction, syn_seen: bool) -> Side<'_> {
            Side {
                bytes: d.stream.contiguous(),
                chunks: &d.stream.chunks,
                base: 0,
                truncated: d.stream.truncated,
                midstream: d.stream.midstream || !syn_seen,
            }
        }
        ConnInput {
            client: side(&self.c2s, self.syn_seen),
            server: side(&self.s2c, self.syn_seen),
            server_port: self.server.map_or(0, |s| s.port()),
            closing: self.closing(),
            // Packets missing from the capture leave holes.
            lost: self.c2s.stream.has_gap() || self.s2c.stream.has_gap(),
        }
    }

    /// Without a SYN the roles were guessed from the ports; a stream that starts
    /// with a ClientHello says who the client is.
    pub fn fix_roles(&mut self) {
        if self.syn_seen {
            return;
        }
        let hello = |d: &Direction, ty: u8| tls::starts_with_hello(d.stream.contiguous(), ty);
        let reversed = hello(&self.s2c, tls::HS_CLIENT_HELLO)
            && !hello(&self.c2s, tls::HS_CLIENT_HELLO)
            || hello(&self.c2s, tls::HS_SERVER_HELLO) && !hello(&self.s2c, tls::HS_SERVER_HELLO);
        if reversed {
            std::mem::swap(&mut self.client, &mut self.server);
            std::mem::swap(&mut self.c2s, &mut self.s2c);
        }
    }
}

/// Reassembles every TCP connection of a capture.
pub struct Tracker {
    budget: u32,
    conns: Vec<TcpConnection>,
    /// (lower endpoint, higher endpoint) -> index of the live connection.
    live: HashMap<(SocketAddr, SocketAddr), usize>,
    defrag: Defrag,
    finished: bool,
    pub report: ReadReport,
}

/// What a TCP segment says.
struct Segment<'a> {
    src: SocketAddr,
    dst: SocketAddr,
    seq: u32,
    ack_no: u32,
    syn: bool,
    ack: bool,
    fin: bool,
    rst: bool,
    payload: &'a [u8],
    ts: u64,
}

impl Tracker {
    pub fn new(budget: u32) -> Self {
        Self {
            budget,
            conns: Vec::new(),
            live: HashMap::new(),
            defrag: Defrag::default(),
            finished: false,
            report: ReadReport::default(),
        }
    }

    /// Feeds one link-layer frame (counted as one packet of the capture).
    pub fn frame(&mut self, link: LinkType, data: &[u8], ts_ns: u64) {
        self.report.packets += 1;
        self.frame_uncounted(link, data, ts_ns);
    }

    /// Feeds a frame whose record the file reader already counted.
    pub(crate) fn frame_uncounted(&mut self, link: LinkType, data: &[u8], ts_ns: u64) {
        if data.is_empty() {
            self.report.skip(SkipReason::Empty);
            return;
        }
        match link::start(link, data) {
            Ok(layer) => {
                if let Err(reason) = self.layers(layer, ts_ns, 0) {
                    // At the first layer, a frame its link type does not explain may
                    // be a file labelled with the wrong link type.
                    let reason = match (&reason, link::looks_like(link, data)) {
                        (SkipReason::Malformed(_) | SkipReason::NotIp(_), Some(looks_like))
                            if self.first_layer_failed(link, data) =>
                        {
                            SkipReason::Mislabeled { link, looks_like }
                        }
                        _ => reason,
                    };
                    self.report.skip(reason);
                }
            }
            Err(reason) => self.report.skip(reason),
        }
    }

    /// Whether a frame fails at its link layer or first IP header (as opposed to
    /// deeper inside a tunnel).
    fn first_layer_failed(&self, link: LinkType, data: &[u8]) -> bool {
        match link::start(link, data) {
            Ok(Layer::Ip(b)) => ip::parse(b).is_err(),
            Ok(layer) => !matches!(link::next(layer), Ok(Layer::Ip(b)) if ip::parse(b).is_ok()),
            Err(_) => true,
        }
    }

    /// Follows layers down to IP, then hands the packet on.
    fn layers(&mut self, mut layer: Layer<'_>, ts: u64, mut depth: u8) -> Result<(), SkipReason> {
        loop {
            if depth > MAX_DEPTH {
                return Err(SkipReason::TooDeep);
            }
            if let Layer::Ip(b) = layer {
                return self.ip(b, ts, depth);
            }
            layer = link::next(layer)?;
            depth += 1;
        }
    }

    fn ip(&mut self, b: &[u8], ts: u64, depth: u8) -> Result<(), SkipReason> {
        let packet = ip::parse(b)?;
        let Some(f) = packet.frag else {
            return self.transport(
                packet.proto,
                packet.payload,
                packet.src,
                packet.dst,
                ts,
                depth,
            );
        };
        match self.defrag.add(
            packet.src,
            packet.dst,
            packet.proto,
            depth,
            f,
            packet.payload,
            ts,
        ) {
            Added::Pending => Ok(()),
            Added::Invalid => Err(SkipReason::FragmentsInvalid),
            Added::Complete(whole) => {
                self.report.reassembled += 1;
                // IPv6 may keep extension headers inside the fragmented part.
                let (proto, payload) = if packet.src.is_ipv6() {
                    let (proto, payload, _) = ip::v6_extensions(whole.proto, &whole.payload)?;
                    (proto, payload)
                } else {
                    (whole.proto, whole.payload.as_slice())
                };
                self.transport(proto, payload, packet.src, packet.dst, ts, depth)
            }
        }
    }

    fn transport(
        &mut self,
        proto: u8,
        b: &[u8],
        src: IpAddr,
        dst: IpAddr,
        ts: u64,
        depth: u8,
    ) -> Result<(), SkipReason> {
        match proto {
            6 => {
                let tcp = ip::tcp(b)?;
                self.report.tcp_segments += 1;
                self.segment(Segment {
                    src: SocketAddr::new(src, tcp.src_port),
                    dst: SocketAddr::new(dst, tcp.dst_port),
                    seq: tcp.seq,
                    ack_no: tcp.ack_no,
                    syn: tcp.syn,
                    ack: tcp.ack,
                    fin: tcp.fin,
                    rst: tcp.rst,
                    payload: tcp.payload,
                    ts,
                });
                Ok(())
            }
            // IPv4 in IP (4in4, 4in6), IPv6 in IP (6in4, 6in6).
            4 | 41 => self.layers(Layer::Ip(b), ts, depth + 1),
            47 => {
                let inner = link::gre(b)?;
                self.layers(inner, ts, depth + 1)
            }
            17 => {
                if b.len() < 8 {
                    return Err(SkipReason::Malformed("UDP header"));
                }
                let sport = u16::from_be_bytes([b[0], b[1]]);
                let dport = u16::from_be_bytes([b[2], b[3]]);
                match link::udp_tunnel(sport, dport, &b[8..]) {
                    Some(inner) => self.layers(inner?, ts, depth + 1),
                    None => Err(SkipReason::NotTcp(17)),
                }
            }
            other => Err(SkipReason::NotTcp(other)),
        }
    }

    fn segment(&mut self, s: Segment<'_>) {
        let ts = s.ts;
        let key = if s.src <= s.dst {
            (s.src, s.dst)
        } else {
            (s.dst, s.src)
        };
        let existing = self.live.get(&key).copied();
        let idx = match existing {
            Some(i) if !(s.syn && !s.ack && self.conns[i].closed()) => i,
            _ => {
                // A new connection: from its SYN, or mid-stream with guessed roles.
                let (client, server) = if s.syn && !s.ack {
                    (s.src, s.dst)
                } else if s.syn && s.ack {
                    (s.dst, s.src)
                } else if s.src.port() >= 32768 && s.dst.port() < 32768 {
                    (s.src, s.dst)
                } else {
                    (s.dst, s.src)
                };
                self.conns.push(TcpConnection {
                    client: Some(client),
                    server: Some(server),
                    first_ns: ts,
                    last_ns: ts,
                    syn_seen: s.syn,
                    ..TcpConnection::default()
                });
                let i = self.conns.len() - 1;
                self.live.insert(key, i);
                i
            }
        };
        let budget = self.budget;
        let conn = &mut self.conns[idx];
        conn.last_ns = conn.last_ns.max(ts);
        let from_client = Some(s.src) == conn.client;
        if s.syn {
            if from_client {
                conn.c2s.base = Some(s.seq.wrapping_add(1));
            } else {
                conn.s2c.base = Some(s.seq.wrapping_add(1));
                conn.syn_seen = true;
                // The SYN-ACK acknowledges the client's initial sequence number: the
                // client's stream starts there even if its SYN was not captured.
                if s.ack && conn.c2s.base.is_none() {
                    conn.c2s.base = Some(s.ack_no);
                }
            }
            return;
        }
        let dir = if from_client {
            &mut conn.c2s
        } else {
            &mut conn.s2c
        };
        if !s.payload.is_empty() {
            let base = *dir.base.get_or_insert_with(|| {
                dir.stream.midstream = true;
                s.seq
            });
            let offset = s.seq.wrapping_sub(base);
            if offset < (1 << 30) {
                let end = u64::from(offset) + s.payload.len() as u64;
                dir.bytes = dir.bytes.max(end);
                if offset < budget && end > u64::from(budget) {
                    dir.stream.truncated = true;
                }
                dir.stream.insert(offset, s.payload, budget, ts);
            }
        }
        if s.fin {
            dir.fin_ns.get_or_insert(ts);
        }
        if s.rst {
            dir.rst_ns.get_or_insert(ts);
        }
    }

    /// The connections, in the order of their first packet, with IP fragments that
    /// never completed counted in the report.
    pub fn connections(mut self) -> Vec<TcpConnection> {
        self.finish();
        self.conns
    }

    /// Counts what is still pending; the report is then final.
    pub fn finish(&mut self) {
        if self.finished {
            return;
        }
        self.finished = true;
        let open = self.defrag.pending() as u64 + self.defrag.abandoned;
        if open > 0 {
            *self
                .report
                .skipped
                .entry(SkipReason::FragmentsIncomplete)
                .or_default() += open;
            self.defrag.abandoned = 0;
        }
    }

    /// Connections found so far.
    pub fn connection_count(&self) -> usize {
        self.conns.len()
    }
}
