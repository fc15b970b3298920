//! The structure of capture files: the pcap (libpcap) and pcapng formats, read as
//! a stream of packet records.
//!
//! Written here rather than taken from `pcap-file` (which the project used before)
//! because a reader for captures that users bring must: keep reading after a
//! packet whose original length is larger than the snapshot length (`tcpdump -s`),
//! honour pcapng's `if_tsresol` and `if_tsoffset`, skip one malformed block instead
//! of giving up on the file, and say at which byte and in which packet a file
//! that was copied while being written ends. The formats are small (the pcap
//! header and record header are fixed-size; pcapng blocks are type-length-value),
//! so this is a few hundred lines of bounds-checked reads.

use std::io::{BufRead, ErrorKind, Read};

use super::{LinkType, SkipReason};

/// Largest packet record accepted. libpcap's own limit is 256 KiB for most link
/// types and 8 MiB for the largest (D-Bus, USB); a record header that claims more
/// is corrupt, and reading it would only exhaust memory.
pub const MAX_RECORD: u32 = 16 * 1024 * 1024;

/// Why and where a file stopped being readable before its end.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stop {
    /// Byte offset of the record or block that could not be read.
    pub offset: u64,
    /// 1-based number of the packet that was being read (packets are numbered as
    /// tshark numbers frames; for a pcapng block that is not a packet, the number
    /// the next packet would have had).
    pub packet: u64,
    pub kind: StopKind,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StopKind {
    /// The file ends inside a record or block: `need` bytes were announced, `have`
    /// are present.
    Truncated {
        what: &'static str,
        need: u64,
        have: u64,
    },
    /// A header that no capture writer produces: nothing after it can be trusted.
    Corrupt { why: String },
}

impl std::fmt::Display for Stop {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.kind {
            StopKind::Truncated { what, need, have } => write!(
                f,
                "the file ends inside packet {} (byte offset {}): its {what} needs {need} bytes, \
                 only {have} are in the file (was it copied while the capture was still being written?)",
                self.packet, self.offset
            ),
            StopKind::Corrupt { why } => write!(
                f,
                "the file is corrupt at packet {} (byte offset {}): {why}; nothing after it was read",
                self.packet, self.offset
            ),
        }
    }
}

/// What the reader yields.
#[derive(Debug)]
pub enum Record<'b> {
    Packet {
        link: LinkType,
        ts_ns: u64,
        data: &'b [u8],
    },
    /// A packet record that cannot be handed on.
    Skipped(SkipReason),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Endian {
    Little,
    Big,
}

impl Endian {
    fn u16(self, b: &[u8], at: usize) -> u16 {
        let v = [b[at], b[at + 1]];
        match self {
            Self::Little => u16::from_le_bytes(v),
            Self::Big => u16::from_be_bytes(v),
        }
    }

    fn u32(self, b: &[u8], at: usize) -> u32 {
        let v = [b[at], b[at + 1], b[at + 2], b[at + 3]];
        match self {
            Self::Little => u32::from_le_bytes(v),
            Self::Big => u32::from_be_bytes(v),
        }
    }
}

/// A pcapng interface (IDB): its link type, snapshot length and clock.
#[derive(Debug, Clone, Copy)]
struct Interface {
    link: LinkType,
    snaplen: u32,
    /// Timestamp units: `Some(k)` = 10^-k s, else `2^-bits` s.
    units: TsUnits,
    offset_s: i64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum TsUnits {
    Decimal(u32),
    Binary(u32),
}

impl TsUnits {
    fn to_ns(self, ts: u64) -> u64 {
        let ts = u128::from(ts);
        let ns = match self {
            Self::Decimal(k) if k <= 9 => ts * 10u128.pow(9 - k),
            Self::Decimal(k) => ts / 10u128.pow((k - 9).min(38)),
            Self::Binary(b) => (ts * 1_000_000_000) >> b.min(127),
        };
        u64::try_from(ns).unwrap_or(u64::MAX)
    }
}

#[derive(Debug)]
enum Format {
    Pcap {
        endian: Endian,
        units: TsUnits,
        link: LinkType,
    },
    PcapNg {
        endian: Endian,
        interfaces: Vec<Interface>,
    },
}

/// Reads packet records from a pcap or pcapng stream.
pub struct Reader<R> {
    input: R,
    format: Format,
    buf: Vec<u8>,
    /// Byte offset of the next record.
    offset: u64,
    /// Packets read so far (the next one is `packets + 1`).
    packets: u64,
    stop: Option<Stop>,
}

/// Why a stream is not a capture at all.
#[derive(Debug)]
pub enum OpenError {
    Io(std::io::Error),
    /// The first four bytes are not a pcap or pcapng magic number.
    Magic([u8; 4]),
    /// The file header is cut short or malformed.
    Header(String),
    /// A legacy pcap file whose single link type cannot be decoded.
    LinkType(LinkType),
}

/// Reads up to `n` bytes into `buf` (replacing its contents); returns how many
/// were available before the end of the stream.
fn read_up_to(input: &mut impl Read, buf: &mut Vec<u8>, n: usize) -> std::io::Result<usize> {
    buf.clear();
    let got = input.take(n as u64).read_to_end(buf)?;
    Ok(got)
}

impl<R: BufRead> Reader<R> {
    /// Reads the file header (pcap) or first section header (pcapng).
    pub fn open(mut input: R) -> Result<Self, OpenError> {
        let mut head = Vec::with_capacity(64);
        let got = read_up_to(&mut input, &mut head, 4).map_err(OpenError::Io)?;
        let mut magic = [0u8; 4];
        magic[..got].copy_from_slice(&head[..got]);
        if got < 4 {
            return Err(OpenError::Magic(magic));
        }
        let pcap = |endian, units| (endian, units);
        let legacy = match magic {
            [0xd4, 0xc3, 0xb2, 0xa1] => Some(pcap(Endian::Little, TsUnits::Decimal(6))),
            [0xa1, 0xb2, 0xc3, 0xd4] => Some(pcap(Endian::Big, TsUnits::Decimal(6))),
            [0x4d, 0x3c, 0xb2, 0xa1] => Some(pcap(Endian::Little, TsUnits::Decimal(9))),
            [0xa1, 0xb2, 0x3c, 0x4d] => Some(pcap(Endian::Big, TsUnits::Decimal(9))),
            _ => None,
        };
        if let Some((endian, units)) = legacy {
            let mut rest = Vec::with_capacity(20);
            let got = read_up_to(&mut input, &mut rest, 20).map_err(OpenError::Io)?;
            if got < 20 {
                return Err(OpenError::Header(format!(
                    "the pcap file header is cut short ({} of 24 bytes)",
                    4 + got
                )));
            }
            // version (4), thiszone (4), sigfigs (4), snaplen (4), link type (4): the
            // upper bits of the last carry FCS information.
            let link = LinkType((endian.u32(&rest, 16) & 0xffff) as u16);
            if !link.is_supported() {
                return Err(OpenError::LinkType(link));
            }
            return Ok(Self {
                input,
                format: Format::Pcap {
                    endian,
                    units,
                    link,
                },
                buf: Vec::new(),
                offset: 24,
                packets: 0,
                stop: None,
            });
        }
        if magic == [0x0a, 0x0d, 0x0d, 0x0a] {
            let mut r = Self {
                input,
                format: Format::PcapNg {
                    endian: Endian::Little,
                    interfaces: Vec::new(),
                },
                buf: Vec::new(),
                offset: 0,
                packets: 0,
                stop: None,
            };
            // The section header is read like any other block; its byte-order magic
            // follows the 8 bytes already consumed (4 here).
            r.buf = head;
            match r.section_header() {
                Ok(()) => return Ok(r),
                Err(why) => return Err(OpenError::Header(why)),
            }
        }
        Err(OpenError::Magic(magic))
    }

    /// Where and why the file stopped being readable early, once [`Reader::next_record`]
    /// has returned `None`.
    pub fn stop(&self) -> Option<&Stop> {
        self.stop.as_ref()
    }

    /// Packet records read.
    pub fn packets(&self) -> u64 {
        self.packets
    }

    /// The next packet record; `None` at the end of the file or where it stopped
    /// being readable (see [`Reader::stop`]). I/O errors other than the end of the
    /// file are returned.
    pub fn next_record(&mut self) -> Result<Option<Record<'_>>, std::io::Error> {
        if self.stop.is_some() {
            return Ok(None);
        }
        match self.format {
            Format::Pcap { .. } => self.next_pcap(),
            Format::PcapNg { .. } => self.next_pcapng(),
        }
    }

    fn stop_at(&mut self, offset: u64, kind: StopKind) {
        self.stop = Some(Stop {
            offset,
            packet: self.packets + 1,
            kind,
        });
    }

    /// Reads exactly `n` bytes into the buffer, or records a truncation of `what`
    /// (counting `already` bytes of it read before) and returns false. Nothing at
    /// all at a record boundary is the end of the file, not a truncation.
    fn fill(
        &mut self,
        n: usize,
        what: &'static str,
        already: u64,
        at: u64,
    ) -> std::io::Result<bool> {
        let got = loop {
            match read_up_to(&mut self.input, &mut self.buf, n) {
                Ok(g) => break g,
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
        };
        if got == n {
            return Ok(true);
        }
        if got > 0 || already > 0 {
            self.stop_at(
                at,
                StopKind::Truncated {
                    what,
                    need: already + n as u64,
                    have: already + got as u64,
                },
            );
        }
        Ok(false)
    }

    fn next_pcap(&mut self) -> Result<Option<Record<'_>>, std::io::Error> {
        let Format::Pcap {
            endian,
            units,
            link,
        } = self.format
        else {
            return Ok(None);
        };
        let at = self.offset;
        if !self.fill(16, "record header", 0, at)? {
            return Ok(None);
        }
        let ts_s = u64::from(endian.u32(&self.buf, 0));
        let ts_frac = u64::from(endian.u32(&self.buf, 4));
        let incl = endian.u32(&self.buf, 8);
        if incl > MAX_RECORD {
            self.stop_at(
                at,
                StopKind::Corrupt {
                    why: format!("a packet record claims {incl} bytes (more than {MAX_RECORD})"),
                },
            );
            return Ok(None);
        }
        if !self.fill(incl as usize, "record", 16, at)? {
            return Ok(None);
        }
        self.offset += 16 + u64::from(incl);
        self.packets += 1;
        if incl == 0 {
            return Ok(Some(Record::Skipped(SkipReason::Empty)));
        }
        let ts_ns = ts_s
            .saturating_mul(1_000_000_000)
            .saturating_add(units.to_ns(ts_frac));
        Ok(Some(Record::Packet {
            link,
            ts_ns,
            data: &self.buf,
        }))
    }

    /// The section header whose block type (4 bytes) is already in `buf`.
    fn section_header(&mut self) -> Result<(), String> {
        let mut rest = Vec::with_capacity(8);
        let got = read_up_to(&mut self.input, &mut rest, 8).map_err(|e| e.to_string())?;
        if got < 8 {
            return Err("the pcapng section header is cut short".into());
        }
        let endian = match rest[4..8] {
            [0x4d, 0x3c, 0x2b, 0x1a] => Endian::Little,
            [0x1a, 0x2b, 0x3c, 0x4d] => Endian::Big,
            _ => {
                return Err(format!(
                    "the pcapng section header has no byte-order magic ({:02x?})",
                    &rest[4..8]
                ));
            }
        };
        let total = endian.u32(&rest, 0);
        if total < 28 || total % 4 != 0 || total > MAX_RECORD {
            return Err(format!("the pcapng section header claims {total} bytes"));
        }
        // Block type (4), length (4) and byte-order magic (4) are read; the rest of
        // the body and the trailing length follow.
        let left = total as usize - 12;
        let got = read_up_to(&mut self.input, &mut self.buf, left).map_err(|e| e.to_string())?;
        if got < left {
            return Err("the pcapng section header is cut short".into());
        }
        if endian.u32(&self.buf, left - 4) != total {
            return Err("the pcapng section header's trailing length does not match".into());
        }
        self.offset += u64::from(total);
        self.format = Format::PcapNg {
            endian,
            interfaces: Vec::new(),
        };
        Ok(())
    }

    fn next_pcapng(&mut self) -> Result<Option<Record<'_>>, std::io::Error> {
        loop {
            let at = self.offset;
            if !self.fill(8, "block header", 0, at)? {
                return Ok(None);
            }
            let ty_raw = [self.buf[0], self.buf[1], self.buf[2], self.buf[3]];
            if ty_raw == [0x0a, 0x0d, 0x0d, 0x0a] {
                // A new section: its own byte order and interfaces.
                let len_raw = [self.buf[4], self.buf[5], self.buf[6], self.buf[7]];
                if !self.fill(4, "section header", 8, at)? {
                    return Ok(None);
                }
                let endian = match self.buf[..4] {
                    [0x4d, 0x3c, 0x2b, 0x1a] => Endian::Little,
                    [0x1a, 0x2b, 0x3c, 0x4d] => Endian::Big,
                    _ => {
                        self.stop_at(
                            at,
                            StopKind::Corrupt {
                                why: "a section header without a byte-order magic".into(),
                            },
                        );
                        return Ok(None);
                    }
                };
                let total = endian.u32(&len_raw, 0);
                if total < 28 || total % 4 != 0 || total > MAX_RECORD {
                    self.stop_at(
                        at,
                        StopKind::Corrupt {
                            why: format!("a section header claims {total} bytes"),
                        },
                    );
                    return Ok(None);
                }
                if !self.fill(total as usize - 12, "section header", 12, at)? {
                    return Ok(None);
                }
                self.offset += u64::from(total);
                self.format = Format::PcapNg {
                    endian,
                    interfaces: Vec::new(),
                };
                continue;
            }
            let Format::PcapNg { endian, .. } = self.format else {
                return Ok(None);
            };
            let ty = endian.u32(&self.buf, 0);
            let total = endian.u32(&self.buf, 4);
            if total < 12 || total % 4 != 0 || total > MAX_RECORD {
                self.stop_at(
                    at,
                    StopKind::Corrupt {
                        why: format!("a block of type {ty:#x} claims {total} bytes"),
                    },
                );
                return Ok(None);
            }
            let body_len = total as usize - 12;
            if !self.fill(body_len + 4, "block", 8, at)? {
                return Ok(None);
            }
            if endian.u32(&self.buf, body_len) != total {
                self.stop_at(
                    at,
                    StopKind::Corrupt {
                        why: format!(
                            "a block of type {ty:#x} ends with a length that differs from its header's"
                        ),
                    },
                );
                return Ok(None);
            }
            self.offset += u64::from(total);
            self.buf.truncate(body_len);
            match ty {
                // Interface Description Block.
                1 => {
                    let iface = parse_idb(endian, &self.buf);
                    if let Format::PcapNg { interfaces, .. } = &mut self.format {
                        // A malformed description still takes its place in the
                        // numbering, so later packets name the right interface.
                        interfaces.push(iface.unwrap_or(Interface {
                            link: LinkType(u16::MAX),
                            snaplen: 0,
                            units: TsUnits::Decimal(6),
                            offset_s: 0,
                        }));
                    }
                }
                // Enhanced Packet Block, obsolete Packet Block, Simple Packet Block.
                6 | 2 | 3 => {
                    self.packets += 1;
                    return Ok(Some(self.packet_block(endian, ty)));
                }
                _ => {}
            }
        }
    }

    fn packet_block(&self, endian: Endian, ty: u32) -> Record<'_> {
        let Format::PcapNg { interfaces, .. } = &self.format else {
            return Record::Skipped(SkipReason::Malformed("pcapng block"));
        };
        let b = &self.buf;
        let (iface_id, ts, caplen, data_at) = match ty {
            6 if b.len() >= 20 => {
                let ts = u64::from(endian.u32(b, 4)) << 32 | u64::from(endian.u32(b, 8));
                (endian.u32(b, 0), Some(ts), endian.u32(b, 12) as usize, 20)
            }
            2 if b.len() >= 20 => {
                let ts = u64::from(endian.u32(b, 4)) << 32 | u64::from(endian.u32(b, 8));
                (
                    u32::from(endian.u16(b, 0)),
                    Some(ts),
                    endian.u32(b, 12) as usize,
                    20,
                )
            }
            3 if b.len() >= 4 => {
                let orig = endian.u32(b, 0) as usize;
                let snap = interfaces.first().map_or(usize::MAX, |i| match i.snaplen {
                    0 => usize::MAX,
                    s => s as usize,
                });
                (0, None, orig.min(snap).min(b.len() - 4), 4)
            }
            _ => return Record::Skipped(SkipReason::Malformed("pcapng packet block")),
        };
        let Some(iface) = interfaces.get(iface_id as usize) else {
            return Record::Skipped(SkipReason::NoInterface(iface_id));
        };
        if caplen == 0 {
            return Record::Skipped(SkipReason::Empty);
        }
        let Some(data) = b.get(data_at..data_at + caplen) else {
            return Record::Skipped(SkipReason::Malformed(
                "pcapng packet block (captured length beyond the block)",
            ));
        };
        if iface.link.0 == u16::MAX {
            return Record::Skipped(SkipReason::Malformed("pcapng interface description"));
        }
        if !iface.link.is_supported() {
            return Record::Skipped(SkipReason::UnsupportedLink(iface.link));
        }
        let ts_ns = ts.map_or(0, |t| {
            let base = iface.units.to_ns(t);
            let off = iface.offset_s.saturating_mul(1_000_000_000);
            if off >= 0 {
                base.saturating_add(off.unsigned_abs())
            } else {
                base.saturating_sub(off.unsigned_abs())
            }
        });
        Record::Packet {
            link: iface.link,
            ts_ns,
            data,
        }
    }
}

/// Interface Description Block body: link type, reserved, snaplen, options.
fn parse_idb(endian: Endian, b: &[u8]) -> Option<Interface> {
    if b.len() < 8 {
        return None;
    }
    let mut iface = Interface {
        link: LinkType(endian.u16(b, 0)),
        snaplen: endian.u32(b, 4),
        units: TsUnits::Decimal(6),
        offset_s: 0,
    };
    let mut at = 8;
    while at + 4 <= b.len() {
        let code = endian.u16(b, at);
        let len = usize::from(endian.u16(b, at + 2));
        let value = b.get(at + 4..at + 4 + len)?;
        match code {
            0 => break,
            // if_tsresol
            9 if len == 1 => {
                let v = value[0];
                iface.units = if v & 0x80 == 0 {
                    TsUnits::Decimal(u32::from(v))
                } else {
                    TsUnits::Binary(u32::from(v & 0x7f))
                };
            }
            // if_tsoffset
            14 if len == 8 => {
                let v = [
                    value[0], value[1], value[2], value[3], value[4], value[5], value[6], value[7],
                ];
                iface.offset_s = match endian {
                    Endian::Little => i64::from_le_bytes(v),
                    Endian::Big => i64::from_be_bytes(v),
                };
            }
            _ => {}
        }
        at += 4 + len.div_ceil(4) * 4;
    }
    Some(iface)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pcap_header(link: u32) -> Vec<u8> {
        let mut v = vec![0xd4, 0xc3, 0xb2, 0xa1, 2, 0, 4, 0];
        v.extend_from_slice(&[0; 8]);
        v.extend_from_slice(&65535u32.to_le_bytes());
        v.extend_from_slice(&link.to_le_bytes());
        v
    }

    fn pcap_record(ts: u32, data: &[u8], orig: u32) -> Vec<u8> {
        let mut v = Vec::new();
        v.extend_from_slice(&ts.to_le_bytes());
        v.extend_from_slice(&5u32.to_le_bytes());
        v.extend_from_slice(&(data.len() as u32).to_le_bytes());
        v.extend_from_slice(&orig.to_le_bytes());
        v.extend_from_slice(data);
        v
    }

    fn all(bytes: &[u8]) -> (Vec<(u64, Vec<u8>)>, Option<Stop>) {
        let mut r = Reader::open(bytes).expect("opens");
        let mut out = Vec::new();
        while let Some(rec) = r.next_record().expect("no io error") {
            match rec {
                Record::Packet { ts_ns, data, .. } => out.push((ts_ns, data.to_vec())),
                Record::Skipped(s) => out.push((0, format!("{s:?}").into_bytes())),
            }
        }
        (out, r.stop().cloned())
    }

    #[test]
    fn pcap_records_and_a_cut_in_the_last_one() {
        let mut f = pcap_header(1);
        f.extend(pcap_record(1, b"abcd", 4));
        // orig_len larger than the snapshot length: a normal `tcpdump -s` record.
        f.extend(pcap_record(2, b"efgh", 100_000));
        f.extend(pcap_record(3, b"", 0));
        let cut_at = f.len() as u64;
        f.extend(pcap_record(4, b"0123456789", 10));
        f.truncate(f.len() - 3);
        let (pkts, stop) = all(&f);
        assert_eq!(pkts.len(), 3);
        assert_eq!(pkts[0], (1_000_005_000, b"abcd".to_vec()));
        assert_eq!(pkts[2].1, b"Empty");
        let stop = stop.expect("cut reported");
        assert_eq!(stop.offset, cut_at);
        assert_eq!(stop.packet, 4);
        assert_eq!(
            stop.kind,
            StopKind::Truncated {
                what: "record",
                need: 26,
                have: 23
            }
        );
        assert!(stop.to_string().contains("packet 4 (byte offset"), "{stop}");
        // A cut inside the record header.
        let mut g = pcap_header(1);
        g.extend(pcap_record(1, b"abcd", 4));
        g.extend_from_slice(&[1, 2, 3]);
        let (pkts, stop) = all(&g);
        assert_eq!(pkts.len(), 1);
        assert!(matches!(
            stop.map(|s| s.kind),
            Some(StopKind::Truncated {
                what: "record header",
                need: 16,
                have: 3
            })
        ));
    }

    #[test]
    fn absurd_record_length_is_corrupt_not_an_allocation() {
        let mut f = pcap_header(1);
        f.extend_from_slice(&[0; 8]);
        f.extend_from_slice(&u32::MAX.to_le_bytes());
        f.extend_from_slice(&[0; 4]);
        let (pkts, stop) = all(&f);
        assert!(pkts.is_empty());
        assert!(matches!(
            stop.map(|s| s.kind),
            Some(StopKind::Corrupt { .. })
        ));
    }

    fn block(ty: u32, body: &[u8]) -> Vec<u8> {
        let total = 12 + body.len().div_ceil(4) * 4;
        let mut v = ty.to_le_bytes().to_vec();
        v.extend_from_slice(&(total as u32).to_le_bytes());
        v.extend_from_slice(body);
        v.resize(total - 4, 0);
        v.extend_from_slice(&(total as u32).to_le_bytes());
        v
    }

    fn shb() -> Vec<u8> {
        let mut body = vec![0x4d, 0x3c, 0x2b, 0x1a, 1, 0, 0, 0];
        body.extend_from_slice(&[0xff; 8]);
        let mut b = block(0x0a0d_0d0a, &body);
        b[..4].copy_from_slice(&[0x0a, 0x0d, 0x0d, 0x0a]);
        b
    }

    fn idb(link: u16, tsresol: Option<u8>) -> Vec<u8> {
        let mut body = link.to_le_bytes().to_vec();
        body.extend_from_slice(&[0, 0]);
        body.extend_from_slice(&262_144u32.to_le_bytes());
        if let Some(r) = tsresol {
            body.extend_from_slice(&9u16.to_le_bytes());
            body.extend_from_slice(&1u16.to_le_bytes());
            body.extend_from_slice(&[r, 0, 0, 0]);
            body.extend_from_slice(&[0, 0, 0, 0]);
        }
        block(1, &body)
    }

    fn epb(iface: u32, ts: u64, data: &[u8]) -> Vec<u8> {
        let mut body = iface.to_le_bytes().to_vec();
        body.extend_from_slice(&((ts >> 32) as u32).to_le_bytes());
        body.extend_from_slice(&(ts as u32).to_le_bytes());
        body.extend_from_slice(&(data.len() as u32).to_le_bytes());
        body.extend_from_slice(&(data.len() as u32).to_le_bytes());
        body.extend_from_slice(data);
        block(6, &body)
    }

    #[test]
    fn pcapng_interfaces_resolutions_and_unknown_links() {
        let mut f = shb();
        f.extend(idb(1, None)); // microseconds
        f.extend(idb(1, Some(9))); // nanoseconds
        f.extend(idb(147, None)); // USER0: not decodable
        f.extend(epb(0, 7, b"micro"));
        f.extend(epb(1, 7, b"nano"));
        f.extend(epb(2, 7, b"user"));
        f.extend(epb(9, 7, b"nobody"));
        f.extend(epb(0, 8, b""));
        f.extend(block(5, &[0; 8])); // statistics: skipped
        f.extend(epb(0, 9, b"last"));
        let (pkts, stop) = all(&f);
        assert_eq!(stop, None);
        let got: Vec<_> = pkts
            .iter()
            .map(|(t, d)| (*t, String::from_utf8_lossy(d).into_owned()))
            .collect();
        assert_eq!(
            got,
            vec![
                (7_000, "micro".to_owned()),
                (7, "nano".to_owned()),
                (0, "UnsupportedLink(LinkType(147))".to_owned()),
                (0, "NoInterface(9)".to_owned()),
                (0, "Empty".to_owned()),
                (9_000, "last".to_owned()),
            ]
        );
    }

    #[test]
    fn pcapng_cut_inside_a_block_and_bad_trailer() {
        let mut f = shb();
        f.extend(idb(1, None));
        f.extend(epb(0, 1, b"whole"));
        let at = f.len() as u64;
        f.extend(epb(0, 2, b"cut off here"));
        f.truncate(f.len() - 6);
        let (pkts, stop) = all(&f);
        assert_eq!(pkts.len(), 1);
        let stop = stop.expect("cut");
        assert_eq!((stop.offset, stop.packet), (at, 2));
        let mut g = shb();
        g.extend(idb(1, None));
        let mut bad = epb(0, 1, b"x");
        let n = bad.len();
        bad[n - 4] ^= 1;
        g.extend(bad);
        let (_, stop) = all(&g);
        assert!(matches!(
            stop.map(|s| s.kind),
            Some(StopKind::Corrupt { .. })
        ));
    }

    #[test]
    fn not_a_capture() {
        assert!(matches!(
            Reader::open(&b"hello world"[..]),
            Err(OpenError::Magic(_))
        ));
        assert!(matches!(
            Reader::open(&[0xd4, 0xc3, 0xb2, 0xa1, 2][..]),
            Err(OpenError::Header(_))
        ));
        assert!(matches!(
            Reader::open(&pcap_header(147)[..]),
            Err(OpenError::LinkType(LinkType(147)))
        ));
    }
}
