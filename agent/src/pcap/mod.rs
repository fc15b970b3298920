//! Offline mode: the same classifier on a pcap or pcapng capture.
//!
//! [`file`] reads the capture format, [`link`], [`ip`] and [`frag`] take each
//! frame down to TCP (link layers, tunnels, IP headers, fragments), [`tcp`] tracks
//! and reassembles TCP connections, [`report`] says what was left out and where a
//! file ended early.

pub mod file;
pub mod frag;
pub mod ip;
pub mod link;
pub mod report;
pub mod tcp;

use std::{
    io::BufReader,
    net::IpAddr,
    path::{Path, PathBuf},
    time::Duration,
};

use serde::Serialize;
use thiserror::Error;

pub use file::{Stop, StopKind};
pub use link::LinkType;
pub use report::{ReadReport, SkipReason};
pub use tcp::{Direction, TcpConnection, Tracker};

use crate::classify::{self, Classification, Resumptions};

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
    #[error("{path}: {why}")]
    Header { path: PathBuf, why: String },
    #[error("{path}: {} is not supported (Ethernet, Linux cooked v1/v2, raw IP, loopback, PPP, PPPoE and 802.11 are)", linktype.name())]
    LinkType { path: PathBuf, linktype: LinkType },
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
/// A file that ends early or is corrupt part-way is not an error: what was read
/// before is kept and `Tracker::report` says where and why it ended.
pub fn read_from(
    input: impl std::io::BufRead,
    path: &Path,
    budget: u32,
) -> Result<Tracker, PcapError> {
    let mut reader = file::Reader::open(input).map_err(|e| match e {
        file::OpenError::Io(source) => PcapError::Read {
            path: path.to_path_buf(),
            source,
        },
        file::OpenError::Magic(magic) => PcapError::Magic {
            path: path.to_path_buf(),
            magic,
        },
        file::OpenError::Header(why) => PcapError::Header {
            path: path.to_path_buf(),
            why,
        },
        file::OpenError::LinkType(linktype) => PcapError::LinkType {
            path: path.to_path_buf(),
            linktype,
        },
    })?;
    let mut tracker = Tracker::new(budget);
    loop {
        let record = reader.next_record().map_err(|source| PcapError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        match record {
            None => break,
            Some(file::Record::Packet { link, ts_ns, data }) => {
                tracker.report.packets += 1;
                tracker.frame_uncounted(link, data, ts_ns);
            }
            Some(file::Record::Skipped(reason)) => {
                tracker.report.packets += 1;
                tracker.report.skip(reason);
            }
        }
    }
    tracker.report.stop = reader.stop().cloned();
    tracker.finish();
    Ok(tracker)
}

/// The classified connections of a capture and what reading it left out.
#[derive(Debug)]
pub struct Classified {
    pub records: Vec<PcapRecord>,
    pub report: ReadReport,
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
pub fn classify_file(path: &Path, budget: u32) -> Result<Classified, PcapError> {
    let tracker = read(path, budget)?;
    Ok(classify_tracker(tracker))
}

/// Classifies what a tracker collected.
pub fn classify_tracker(mut tracker: Tracker) -> Classified {
    tracker.finish();
    let report = std::mem::take(&mut tracker.report);
    let mut conns = tracker.connections();
    for c in &mut conns {
        c.fix_roles();
    }
    conns.sort_by_key(|c| c.first_ns);
    let mut resumptions = Resumptions::default();
    let records = conns
        .iter()
        .map(|c| {
            let mut cls = classify::classify(&c.classify_input());
            crate::flows::stream::flag_overlaps(
                &mut cls,
                c.c2s.stream.overlaps(),
                c.s2c.stream.overlaps(),
            );
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
        .collect();
    Classified { records, report }
}
