//! Offline mode: the same classifier on a pcap or pcapng capture.
//!
//! Captures are read with `pcap-file` and packets parsed with `etherparse`
//! (Ethernet, Linux cooked v1/v2, raw IP, BSD loopback). TCP connections are
//! tracked by 4-tuple from their SYN (a new SYN after a close starts a new
//! connection); each direction is reassembled by sequence offset with the same
//! `Stream` the live agent uses, keeping the first `budget` bytes.

use std::{
    io::BufReader,
    net::{IpAddr, SocketAddr},
    path::{Path, PathBuf},
    time::Duration,
};

use etherparse::{NetSlice, SlicedPacket, TransportSlice};
/// Link types, re-exported for callers of [`Tracker::frame`].
pub use pcap_file::DataLink;
use pcap_file::{
    pcap::PcapReader,
    pcapng::{Block, PcapNgReader},
};
use serde::Serialize;
use thiserror::Error;

use crate::{
    classify::{self, Classification, Closing, ConnInput, Party, Resumptions, Side},
    flows::Stream,
};

#[derive(Debug, Error)]
pub enum PcapError {
    #[error(transparent)]
    Input(crate::input::InputError),
    #[error("{path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: not a pcap or pcapng file (magic {magic:02x?})")]
    Magic { path: PathBuf, magic: [u8; 4] },
    #[error("{path}: {source}")]
    Format {
        path: PathBuf,
        source: pcap_file::PcapError,
    },
    #[error(
        "{path}: link type {linktype:?} is not supported (Ethernet, Linux cooked, raw IP and loopback are)"
    )]
    LinkType { path: PathBuf, linktype: DataLink },
}

/// One TCP connection of a capture.
#[derive(Debug, Default)]
pub struct TcpConnection {
    pub client: Option<SocketAddr>,
    pub server: Option<SocketAddr>,
    pub first_ns: u64,
    pub last_ns: u64,
    /// Whether the SYN was captured (else roles are guessed and offsets start mid-stream).
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
}

/// Reassembles every TCP connection of a capture.
pub struct Tracker {
    budget: u32,
    conns: Vec<TcpConnection>,
    /// (lower endpoint, higher endpoint) -> index of the live connection.
    live: std::collections::HashMap<(SocketAddr, SocketAddr), usize>,
    pub packets: u64,
    pub skipped: u64,
}

impl Tracker {
    pub fn new(budget: u32) -> Self {
        Self {
            budget,
            conns: Vec::new(),
            live: Default::default(),
            packets: 0,
            skipped: 0,
        }
    }

    /// Feeds one link-layer frame.
    pub fn frame(&mut self, link: DataLink, data: &[u8], ts_ns: u64) {
        self.packets += 1;
        let sliced = match link {
            DataLink::ETHERNET => SlicedPacket::from_ethernet(data).ok(),
            DataLink::LINUX_SLL => SlicedPacket::from_linux_sll(data).ok(),
            DataLink::LINUX_SLL2 if data.len() >= 20 => SlicedPacket::from_ip(&data[20..]).ok(),
            DataLink::RAW | DataLink::IPV4 | DataLink::IPV6 => SlicedPacket::from_ip(data).ok(),
            DataLink::NULL | DataLink::LOOP if data.len() >= 4 => {
                SlicedPacket::from_ip(&data[4..]).ok()
            }
            _ => None,
        };
        let Some(p) = sliced else {
            self.skipped += 1;
            return;
        };
        let (src, dst) = match &p.net {
            Some(NetSlice::Ipv4(ip)) => (
                IpAddr::V4(ip.header().source_addr()),
                IpAddr::V4(ip.header().destination_addr()),
            ),
            Some(NetSlice::Ipv6(ip)) => (
                IpAddr::V6(ip.header().source_addr()),
                IpAddr::V6(ip.header().destination_addr()),
            ),
            _ => {
                self.skipped += 1;
                return;
            }
        };
        let Some(TransportSlice::Tcp(tcp)) = &p.transport else {
            self.skipped += 1;
            return;
        };
        let src = SocketAddr::new(src, tcp.source_port());
        let dst = SocketAddr::new(dst, tcp.destination_port());
        self.segment(
            src,
            dst,
            tcp.sequence_number(),
            tcp.syn(),
            tcp.ack(),
            tcp.fin(),
            tcp.rst(),
            tcp.payload(),
            ts_ns,
        );
    }

    #[allow(clippy::too_many_arguments)]
    fn segment(
        &mut self,
        src: SocketAddr,
        dst: SocketAddr,
        seq: u32,
        syn: bool,
        ack: bool,
        fin: bool,
        rst: bool,
        payload: &[u8],
        ts: u64,
    ) {
        let key = if src <= dst { (src, dst) } else { (dst, src) };
        let existing = self.live.get(&key).copied();
        let idx = match existing {
            Some(i) if !(syn && !ack && self.conns[i].closed()) => i,
            _ => {
                // A new connection: from its SYN, or mid-stream with guessed roles.
                let (client, server) = if syn && !ack {
                    (src, dst)
                } else if syn && ack {
                    (dst, src)
                } else if src.port() >= 32768 && dst.port() < 32768 {
                    (src, dst)
                } else {
                    (dst, src)
                };
                self.conns.push(TcpConnection {
                    client: Some(client),
                    server: Some(server),
                    first_ns: ts,
                    last_ns: ts,
                    syn_seen: syn,
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
        let from_client = Some(src) == conn.client;
        let dir = if from_client {
            &mut conn.c2s
        } else {
            &mut conn.s2c
        };
        if syn {
            dir.base = Some(seq.wrapping_add(1));
            if !from_client && !conn.syn_seen {
                conn.syn_seen = true;
            }
            return;
        }
        if !payload.is_empty() {
            let base = *dir.base.get_or_insert_with(|| {
                dir.stream.midstream = true;
                seq
            });
            let offset = seq.wrapping_sub(base);
            if offset < (1 << 30) {
                dir.bytes = dir.bytes.max(u64::from(offset) + payload.len() as u64);
                if offset < budget && u64::from(offset) + payload.len() as u64 > u64::from(budget) {
                    dir.stream.truncated = true;
                }
                dir.stream.insert(offset, payload, budget, ts);
            }
        }
        if fin {
            dir.fin_ns.get_or_insert(ts);
        }
        if rst {
            dir.rst_ns.get_or_insert(ts);
        }
    }

    pub fn connections(self) -> Vec<TcpConnection> {
        self.conns
    }
}

fn ts_ns(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

/// Reads a pcap or pcapng file into a tracker.
pub fn read(path: &Path, budget: u32) -> Result<Tracker, PcapError> {
    // Captures can be large: no size cap, but only a regular file (a FIFO or a
    // device would block or never end).
    let (file, _) = crate::input::open_regular(path, u64::MAX).map_err(PcapError::Input)?;
    read_from(BufReader::new(file), path, budget)
}

/// Reads a pcap or pcapng capture from `input` (`path` names it in errors): what
/// `read` does after opening the file, and what the `pcap_file` fuzz target feeds.
pub fn read_from(
    mut input: impl std::io::BufRead,
    path: &Path,
    budget: u32,
) -> Result<Tracker, PcapError> {
    let open_err = |source| PcapError::Read {
        path: path.to_path_buf(),
        source,
    };
    let head = input.fill_buf().map_err(open_err)?;
    let mut magic = [0u8; 4];
    if head.len() < 4 {
        magic[..head.len()].copy_from_slice(head);
        return Err(PcapError::Magic {
            path: path.to_path_buf(),
            magic,
        });
    }
    magic.copy_from_slice(&head[..4]);
    let mut tracker = Tracker::new(budget);
    let fmt = |source| PcapError::Format {
        path: path.to_path_buf(),
        source,
    };
    match magic {
        [0x0a, 0x0d, 0x0d, 0x0a] => {
            let mut r = PcapNgReader::new(input).map_err(fmt)?;
            let mut links: Vec<DataLink> = Vec::new();
            while let Some(block) = r.next_block() {
                match block.map_err(fmt)? {
                    Block::SectionHeader(_) => links.clear(),
                    Block::InterfaceDescription(idb) => links.push(idb.linktype),
                    Block::EnhancedPacket(p) => {
                        let link = links
                            .get(p.interface_id as usize)
                            .copied()
                            .unwrap_or(DataLink::ETHERNET);
                        tracker.frame(link, &p.data, ts_ns(p.timestamp));
                    }
                    Block::SimplePacket(p) => {
                        let link = links.first().copied().unwrap_or(DataLink::ETHERNET);
                        tracker.frame(link, &p.data, 0);
                    }
                    _ => {}
                }
            }
        }
        [0xd4, 0xc3, 0xb2, 0xa1]
        | [0xa1, 0xb2, 0xc3, 0xd4]
        | [0x4d, 0x3c, 0xb2, 0xa1]
        | [0xa1, 0xb2, 0x3c, 0x4d] => {
            let mut r = PcapReader::new(input).map_err(fmt)?;
            let link = r.header().datalink;
            if !matches!(
                link,
                DataLink::ETHERNET
                    | DataLink::LINUX_SLL
                    | DataLink::LINUX_SLL2
                    | DataLink::RAW
                    | DataLink::IPV4
                    | DataLink::IPV6
                    | DataLink::NULL
                    | DataLink::LOOP
            ) {
                return Err(PcapError::LinkType {
                    path: path.to_path_buf(),
                    linktype: link,
                });
            }
            while let Some(p) = r.next_packet() {
                let p = p.map_err(fmt)?;
                tracker.frame(link, &p.data, ts_ns(p.timestamp));
            }
        }
        _ => {
            return Err(PcapError::Magic {
                path: path.to_path_buf(),
                magic,
            });
        }
    }
    Ok(tracker)
}

/// One classified connection of a capture; field names follow the metric labels.
#[derive(Debug, Clone, Serialize)]
pub struct PcapRecord {
    pub start: String,
    pub source_ip: Option<IpAddr>,
    pub source_port: Option<u16>,
    pub destination_ip: Option<IpAddr>,
    pub destination_port: Option<u16>,
    pub bytes_client_to_server: u64,
    pub bytes_server_to_client: u64,
    #[serde(flatten)]
    pub classification: Classification,
}

/// Classifies every TCP connection of the capture, in order of first packet.
pub fn classify_file(path: &Path, budget: u32) -> Result<Vec<PcapRecord>, PcapError> {
    let tracker = read(path, budget)?;
    let mut conns = tracker.connections();
    conns.sort_by_key(|c| c.first_ns);
    let mut resumptions = Resumptions::default();
    Ok(conns
        .iter()
        .map(|c| {
            let mut cls = classify::classify(&c.classify_input());
            if let (Some(cl), Some(sv)) = (c.client, c.server) {
                resumptions.apply((cl.ip(), sv.ip(), sv.port()), &mut cls);
            }
            PcapRecord {
                start: humantime::format_rfc3339_millis(
                    std::time::UNIX_EPOCH + Duration::from_nanos(c.first_ns),
                )
                .to_string(),
                source_ip: c.client.map(|a| a.ip()),
                source_port: c.client.map(|a| a.port()),
                destination_ip: c.server.map(|a| a.ip()),
                destination_port: c.server.map(|a| a.port()),
                bytes_client_to_server: c.c2s.bytes,
                bytes_server_to_client: c.s2c.bytes,
                classification: cls,
            }
        })
        .collect())
}
