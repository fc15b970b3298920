//! IPv4, IPv6 (with its extension headers) and TCP headers, bounds-checked.
//!
//! Written here rather than taken from etherparse (which the project used before):
//! etherparse 0.19 reads the IPv6 fragment header's offset and M flag from the wrong
//! bits, and its extension-header iterator reads past the end of a leniently parsed
//! packet (found by the `link_layer` fuzz target). These headers are fixed formats.
//! Parsing is lenient where captures need it: a length field larger than what was
//! captured (a snapshot length) keeps what is there.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use super::SkipReason;

/// A fragment of an IP packet: what the reassembly needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FragInfo {
    pub id: u32,
    /// Byte offset of this fragment's data in the original payload.
    pub offset: usize,
    pub more: bool,
}

/// An IP packet down to its upper-layer protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IpPacket<'a> {
    pub src: IpAddr,
    pub dst: IpAddr,
    /// The upper-layer protocol (for a fragment: of the reassembled payload).
    pub proto: u8,
    pub payload: &'a [u8],
    pub frag: Option<FragInfo>,
}

const BAD_V4: SkipReason = SkipReason::Malformed("IPv4 header");
const BAD_V6: SkipReason = SkipReason::Malformed("IPv6 header");

/// Parses an IPv4 or IPv6 header (by its version nibble).
pub fn parse(b: &[u8]) -> Result<IpPacket<'_>, SkipReason> {
    match b.first().map(|v| v >> 4) {
        Some(4) => v4(b),
        Some(6) => v6(b),
        _ => Err(SkipReason::Malformed("IP header")),
    }
}

fn v4(b: &[u8]) -> Result<IpPacket<'_>, SkipReason> {
    let ihl = usize::from(b[0] & 0x0f) * 4;
    if ihl < 20 || b.len() < ihl {
        return Err(BAD_V4);
    }
    let total = usize::from(u16::from_be_bytes([b[2], b[3]]));
    // Ethernet pads short frames: the total length says where the packet ends. A
    // total beyond what was captured keeps what there is.
    let end = if total >= ihl && total <= b.len() {
        total
    } else {
        b.len()
    };
    let flags_offset = u16::from_be_bytes([b[6], b[7]]);
    let more = flags_offset & 0x2000 != 0;
    let offset = usize::from(flags_offset & 0x1fff) * 8;
    let frag = (more || offset != 0).then(|| FragInfo {
        id: u32::from(u16::from_be_bytes([b[4], b[5]])),
        offset,
        more,
    });
    Ok(IpPacket {
        src: IpAddr::V4(Ipv4Addr::new(b[12], b[13], b[14], b[15])),
        dst: IpAddr::V4(Ipv4Addr::new(b[16], b[17], b[18], b[19])),
        proto: b[9],
        payload: &b[ihl..end],
        frag,
    })
}

fn addr6(b: &[u8]) -> IpAddr {
    let mut a = [0u8; 16];
    a.copy_from_slice(&b[..16]);
    IpAddr::V6(Ipv6Addr::from(a))
}

/// IPv6 extension headers before the upper layer: Hop-by-Hop, Routing,
/// Destination Options, Authentication, Fragment. Returns the upper-layer protocol,
/// the payload and the fragment header's facts.
pub fn v6_extensions(
    mut nh: u8,
    mut b: &[u8],
) -> Result<(u8, &[u8], Option<FragInfo>), SkipReason> {
    let cut = SkipReason::Malformed("IPv6 extension header");
    for _ in 0..8 {
        match nh {
            0 | 43 | 60 | 135 | 139 | 140 => {
                let len = (usize::from(*b.get(1).ok_or(cut.clone())?) + 1) * 8;
                let next = *b.first().ok_or(cut.clone())?;
                b = b.get(len..).ok_or(cut.clone())?;
                nh = next;
            }
            51 => {
                let len = (usize::from(*b.get(1).ok_or(cut.clone())?) + 2) * 4;
                let next = *b.first().ok_or(cut.clone())?;
                b = b.get(len..).ok_or(cut.clone())?;
                nh = next;
            }
            // RFC 8200 4.5: next header, reserved, a 13-bit offset in 8-byte units,
            // two reserved bits and M, then the identification.
            44 => {
                let h = b.get(..8).ok_or(cut.clone())?;
                let field = u16::from_be_bytes([h[2], h[3]]);
                let offset = usize::from(field >> 3) * 8;
                let more = field & 1 == 1;
                let rest = &b[8..];
                if offset == 0 && !more {
                    // An atomic fragment: the whole packet follows.
                    nh = h[0];
                    b = rest;
                    continue;
                }
                let id = u32::from_be_bytes([h[4], h[5], h[6], h[7]]);
                return Ok((h[0], rest, Some(FragInfo { id, offset, more })));
            }
            _ => return Ok((nh, b, None)),
        }
    }
    Err(SkipReason::Malformed(
        "IPv6 extension headers (more than 8)",
    ))
}

fn v6(b: &[u8]) -> Result<IpPacket<'_>, SkipReason> {
    if b.len() < 40 {
        return Err(BAD_V6);
    }
    let plen = usize::from(u16::from_be_bytes([b[4], b[5]]));
    // A zero payload length is a jumbogram (or unset): keep what was captured.
    let end = if plen > 0 && 40 + plen <= b.len() {
        40 + plen
    } else {
        b.len()
    };
    let (proto, payload, frag) = v6_extensions(b[6], &b[40..end])?;
    Ok(IpPacket {
        src: addr6(&b[8..24]),
        dst: addr6(&b[24..40]),
        proto,
        payload,
        frag,
    })
}

/// A TCP segment's header fields and payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TcpHeader<'a> {
    pub src_port: u16,
    pub dst_port: u16,
    pub seq: u32,
    pub ack_no: u32,
    pub syn: bool,
    pub ack: bool,
    pub fin: bool,
    pub rst: bool,
    pub payload: &'a [u8],
}

pub fn tcp(b: &[u8]) -> Result<TcpHeader<'_>, SkipReason> {
    let bad = SkipReason::Malformed("TCP header");
    let h = b.get(..20).ok_or(bad.clone())?;
    let data_offset = usize::from(h[12] >> 4) * 4;
    if data_offset < 20 {
        return Err(bad);
    }
    // Options cut by the snapshot length: no payload was captured.
    let payload = b.get(data_offset..).unwrap_or(&[]);
    let flags = h[13];
    Ok(TcpHeader {
        src_port: u16::from_be_bytes([h[0], h[1]]),
        dst_port: u16::from_be_bytes([h[2], h[3]]),
        seq: u32::from_be_bytes([h[4], h[5], h[6], h[7]]),
        ack_no: u32::from_be_bytes([h[8], h[9], h[10], h[11]]),
        fin: flags & 0x01 != 0,
        syn: flags & 0x02 != 0,
        rst: flags & 0x04 != 0,
        ack: flags & 0x10 != 0,
        payload,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipv4_lengths_and_fragments() {
        let mut p = vec![
            0x45, 0, 0, 24, 0, 7, 0x20, 0x02, 64, 6, 0, 0, 10, 0, 0, 1, 10, 0, 0, 2,
        ];
        p.extend_from_slice(&[1, 2, 3, 4, 0xee, 0xee]); // 2 bytes of Ethernet padding
        let ip = parse(&p).expect("parses");
        assert_eq!(ip.payload, &[1, 2, 3, 4]);
        assert_eq!(
            ip.frag,
            Some(FragInfo {
                id: 7,
                offset: 16,
                more: true
            })
        );
        p[0] = 0x44;
        assert!(parse(&p).is_err(), "an IHL below 5");
    }

    #[test]
    fn ipv6_extension_chain_and_fragment_header() {
        let mut p = vec![0x60, 0, 0, 0, 0, 24, 0, 64];
        p.extend_from_slice(&[0; 32]);
        // Hop-by-Hop (8 bytes) -> Fragment (offset 32 bytes, M) -> TCP.
        p.extend_from_slice(&[44, 0, 0, 0, 0, 0, 0, 0]);
        p.extend_from_slice(&[6, 0, 0, 32 | 1, 0, 0, 0, 9]);
        p.extend_from_slice(&[0xaa; 8]);
        let ip = parse(&p).expect("parses");
        assert_eq!(ip.proto, 6);
        assert_eq!(
            ip.frag,
            Some(FragInfo {
                id: 9,
                offset: 32,
                more: true
            })
        );
        assert_eq!(ip.payload, &[0xaa; 8]);
        // A chain cut short is an error, not a read past the end.
        assert!(parse(&p[..45]).is_err());
    }

    #[test]
    fn tcp_flags_and_payload() {
        let mut s = vec![
            0x9c, 0x40, 0x01, 0xbb, 0, 0, 0, 1, 0, 0, 0, 2, 0x50, 0x12, 0, 0, 0, 0, 0, 0,
        ];
        s.extend_from_slice(b"hi");
        let t = tcp(&s).expect("parses");
        assert_eq!(
            (t.src_port, t.dst_port, t.seq, t.ack_no),
            (40000, 443, 1, 2)
        );
        assert!(t.syn && t.ack && !t.fin && !t.rst);
        assert_eq!(t.payload, b"hi");
        s[12] = 0x40;
        assert!(tcp(&s).is_err());
    }
}
