//! From a link-layer frame down to an IP packet: the link types of capture files
//! (Ethernet, Linux cooked v1/v2 with any ARPHRD type, raw IP, BSD loopback, PPP,
//! 802.11) and the encapsulations found inside them (802.1Q and 802.1ad tags,
//! PPPoE, MPLS, LLC/SNAP, and the tunnels that carry Ethernet or IP: GRE, ERSPAN,
//! VXLAN, Geneve, GTP-U, CAPWAP, Teredo). IP-in-IP is handled where IP is parsed.
//!
//! Every function is a bounds-checked step from one header to the next; the
//! caller loops (with a depth limit) until it reaches IP.

use super::SkipReason;

/// A capture file's link type (LINKTYPE_* of the tcpdump.org registry).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct LinkType(pub u16);

impl LinkType {
    pub const NULL: Self = Self(0);
    pub const ETHERNET: Self = Self(1);
    pub const PPP: Self = Self(9);
    /// DLT_RAW as OpenBSD and some others number it.
    pub const RAW_12: Self = Self(12);
    pub const RAW_14: Self = Self(14);
    pub const PPP_HDLC: Self = Self(50);
    pub const PPP_ETHER: Self = Self(51);
    pub const RAW: Self = Self(101);
    pub const IEEE802_11: Self = Self(105);
    pub const LOOP: Self = Self(108);
    pub const LINUX_SLL: Self = Self(113);
    pub const IEEE802_11_RADIOTAP: Self = Self(127);
    pub const IPV4: Self = Self(228);
    pub const IPV6: Self = Self(229);
    pub const LINUX_SLL2: Self = Self(276);

    const SUPPORTED: [Self; 15] = [
        Self::NULL,
        Self::ETHERNET,
        Self::PPP,
        Self::RAW_12,
        Self::RAW_14,
        Self::PPP_HDLC,
        Self::PPP_ETHER,
        Self::RAW,
        Self::IEEE802_11,
        Self::LOOP,
        Self::LINUX_SLL,
        Self::IEEE802_11_RADIOTAP,
        Self::IPV4,
        Self::IPV6,
        Self::LINUX_SLL2,
    ];

    pub fn is_supported(self) -> bool {
        Self::SUPPORTED.contains(&self)
    }

    /// The link types whose frames start with an IP header (after a fixed prefix).
    pub fn is_ip_like(self) -> bool {
        matches!(
            self,
            Self::NULL
                | Self::LOOP
                | Self::RAW
                | Self::RAW_12
                | Self::RAW_14
                | Self::IPV4
                | Self::IPV6
        )
    }

    pub fn name(self) -> String {
        let known = match self {
            Self::NULL => "BSD loopback (NULL)",
            Self::ETHERNET => "Ethernet",
            Self::PPP => "PPP",
            Self::RAW_12 | Self::RAW_14 | Self::RAW => "raw IP",
            Self::PPP_HDLC => "PPP in HDLC framing",
            Self::PPP_ETHER => "PPPoE",
            Self::IEEE802_11 => "IEEE 802.11",
            Self::LOOP => "OpenBSD loopback (LOOP)",
            Self::LINUX_SLL => "Linux cooked v1 (SLL)",
            Self::IEEE802_11_RADIOTAP => "802.11 with radiotap",
            Self::IPV4 => "raw IPv4",
            Self::IPV6 => "raw IPv6",
            Self::LINUX_SLL2 => "Linux cooked v2 (SLL2)",
            _ => return format!("link type {}", self.0),
        };
        format!("{known} ({})", self.0)
    }
}

/// One step of decapsulation: what the bytes are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layer<'a> {
    /// An Ethernet II or 802.3 frame, from the destination address.
    Ethernet(&'a [u8]),
    /// The payload of something that named its content with an EtherType.
    EtherType(u16, &'a [u8]),
    /// From the PPP protocol field (an `FF 03` address and control prefix allowed).
    Ppp(&'a [u8]),
    /// An 802.11 frame, from the frame control field.
    Ieee80211(&'a [u8]),
    /// An 802.11 frame whose frame control field has its two bytes swapped, as
    /// Cisco access points send it inside CAPWAP.
    Ieee80211Swapped(&'a [u8]),
    /// An IPv4 or IPv6 header.
    Ip(&'a [u8]),
}

pub const ETH_IPV4: u16 = 0x0800;
pub const ETH_IPV6: u16 = 0x86dd;
const ETH_VLAN: u16 = 0x8100;
const ETH_QINQ: u16 = 0x88a8;
const ETH_QINQ_OLD: [u16; 3] = [0x9100, 0x9200, 0x9300];
const ETH_PPPOE_SESSION: u16 = 0x8864;
const ETH_MPLS: [u16; 2] = [0x8847, 0x8848];
const ETH_TEB: u16 = 0x6558;
const ETH_ERSPAN2: u16 = 0x88be;
const ETH_ERSPAN3: u16 = 0x22eb;
const ETH_PPP: u16 = 0x880b;

const ARPHRD_IEEE80211: u16 = 801;
const ARPHRD_IEEE80211_RADIOTAP: u16 = 803;
const ARPHRD_NETLINK: u16 = 824;

fn be16(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_be_bytes([*b.get(at)?, *b.get(at + 1)?]))
}

/// The first layer of a frame of link type `link`.
pub fn start(link: LinkType, data: &[u8]) -> Result<Layer<'_>, SkipReason> {
    let short = SkipReason::Malformed;
    match link {
        LinkType::ETHERNET => Ok(Layer::Ethernet(data)),
        LinkType::NULL | LinkType::LOOP => {
            data.get(4..).map(Layer::Ip).ok_or(short("loopback header"))
        }
        LinkType::RAW | LinkType::RAW_12 | LinkType::RAW_14 | LinkType::IPV4 | LinkType::IPV6 => {
            Ok(Layer::Ip(data))
        }
        LinkType::LINUX_SLL => {
            // packet type (2), ARPHRD type (2), address length (2), address (8), protocol (2)
            let hatype = be16(data, 2).ok_or(short("Linux cooked header"))?;
            let proto = be16(data, 14).ok_or(short("Linux cooked header"))?;
            sll_payload(hatype, proto, &data[16..])
        }
        LinkType::LINUX_SLL2 => {
            // protocol (2), reserved (2), interface index (4), ARPHRD type (2),
            // packet type (1), address length (1), address (8)
            let proto = be16(data, 0).ok_or(short("Linux cooked v2 header"))?;
            let hatype = be16(data, 8).ok_or(short("Linux cooked v2 header"))?;
            if data.len() < 20 {
                return Err(short("Linux cooked v2 header"));
            }
            sll_payload(hatype, proto, &data[20..])
        }
        LinkType::PPP | LinkType::PPP_HDLC => Ok(Layer::Ppp(data)),
        LinkType::PPP_ETHER => Ok(Layer::EtherType(ETH_PPPOE_SESSION, data)),
        LinkType::IEEE802_11 => Ok(Layer::Ieee80211(data)),
        LinkType::IEEE802_11_RADIOTAP => radiotap(data),
        other => Err(SkipReason::UnsupportedLink(other)),
    }
}

/// The payload of a Linux cooked header. For every ARPHRD type but a few the
/// protocol field is an EtherType (ARPHRD_IPGRE puts the GRE protocol type there,
/// which is one too); small values are Linux's own packet types.
fn sll_payload(hatype: u16, proto: u16, payload: &[u8]) -> Result<Layer<'_>, SkipReason> {
    match hatype {
        ARPHRD_NETLINK => return Err(SkipReason::NotIpFrame("netlink message")),
        ARPHRD_IEEE80211_RADIOTAP => return radiotap(payload),
        ARPHRD_IEEE80211 => return Ok(Layer::Ieee80211(payload)),
        _ => {}
    }
    match proto {
        // ETH_P_802_2: an LLC header follows.
        0x0004 => llc(payload),
        // ETH_P_802_3 (Novell raw), ETH_P_AX25, ETH_P_ALL, CAN, ...
        p if p < 0x0600 => match payload.first().map(|b| b >> 4) {
            // Some tunnel drivers leave the protocol unset: the bytes say IP.
            Some(4 | 6) if p == 0 => Ok(Layer::Ip(payload)),
            _ => Err(SkipReason::NotIp(p)),
        },
        p => Ok(Layer::EtherType(p, payload)),
    }
}

fn radiotap(data: &[u8]) -> Result<Layer<'_>, SkipReason> {
    let len = data
        .get(2..4)
        .map(|b| usize::from(u16::from_le_bytes([b[0], b[1]])))
        .ok_or(SkipReason::Malformed("radiotap header"))?;
    data.get(len..)
        .filter(|_| len >= 8)
        .map(Layer::Ieee80211)
        .ok_or(SkipReason::Malformed("radiotap header"))
}

/// 802.2 LLC: SNAP carries an EtherType; DSAP/SSAP 0x06 is IP itself.
fn llc(b: &[u8]) -> Result<Layer<'_>, SkipReason> {
    match b {
        [0xaa, 0xaa, 0x03, _, _, _, t0, t1, rest @ ..] => {
            Ok(Layer::EtherType(u16::from_be_bytes([*t0, *t1]), rest))
        }
        [0x06, 0x06, 0x03, rest @ ..] => Ok(Layer::Ip(rest)),
        [_, _, _, ..] => Err(SkipReason::NotIpFrame("LLC frame (STP, CDP, ...)")),
        _ => Err(SkipReason::Malformed("LLC header")),
    }
}

/// One step down from a layer that is not IP.
pub fn next(layer: Layer<'_>) -> Result<Layer<'_>, SkipReason> {
    match layer {
        Layer::Ethernet(b) => {
            let ty = be16(b, 12).ok_or(SkipReason::Malformed("Ethernet header"))?;
            if ty >= 0x0600 {
                Ok(Layer::EtherType(ty, &b[14..]))
            } else {
                // 802.3 with a length field: LLC follows.
                llc(&b[14..])
            }
        }
        Layer::EtherType(ty, b) => ether_type(ty, b),
        Layer::Ppp(b) => ppp(b),
        Layer::Ieee80211(b) => ieee80211(b, false),
        Layer::Ieee80211Swapped(b) => ieee80211(b, true),
        Layer::Ip(_) => Ok(layer),
    }
}

fn ether_type(ty: u16, b: &[u8]) -> Result<Layer<'_>, SkipReason> {
    match ty {
        ETH_IPV4 | ETH_IPV6 => Ok(Layer::Ip(b)),
        ETH_VLAN | ETH_QINQ => vlan(b),
        t if ETH_QINQ_OLD.contains(&t) => vlan(b),
        ETH_PPPOE_SESSION => {
            // version/type, code, session id (2), length (2), then PPP protocol.
            if b.len() < 8 || b[0] != 0x11 || b[1] != 0 {
                return Err(SkipReason::Malformed("PPPoE header"));
            }
            Ok(Layer::Ppp(&b[6..]))
        }
        t if ETH_MPLS.contains(&t) => mpls(b),
        ETH_TEB => Ok(Layer::Ethernet(b)),
        ETH_ERSPAN2 => b
            .get(8..)
            .map(Layer::Ethernet)
            .ok_or(SkipReason::Malformed("ERSPAN header")),
        ETH_ERSPAN3 => {
            // 12 bytes, and an 8-byte platform subheader when the O flag is set.
            let o = b.get(11).ok_or(SkipReason::Malformed("ERSPAN header"))? & 1;
            b.get(12 + 8 * usize::from(o)..)
                .map(Layer::Ethernet)
                .ok_or(SkipReason::Malformed("ERSPAN header"))
        }
        ETH_PPP => Ok(Layer::Ppp(b)),
        0x88e5 => Err(SkipReason::NotIpFrame("MACsec-protected frame")),
        other => Err(SkipReason::NotIp(other)),
    }
}

fn vlan(b: &[u8]) -> Result<Layer<'_>, SkipReason> {
    let ty = be16(b, 2).ok_or(SkipReason::Malformed("802.1Q tag"))?;
    Ok(Layer::EtherType(ty, &b[4..]))
}

fn mpls(b: &[u8]) -> Result<Layer<'_>, SkipReason> {
    let mut at = 0;
    loop {
        let entry = b
            .get(at..at + 4)
            .ok_or(SkipReason::Malformed("MPLS label"))?;
        at += 4;
        if entry[2] & 1 == 1 {
            break;
        }
        if at >= 64 {
            return Err(SkipReason::Malformed(
                "MPLS label stack (more than 16 labels)",
            ));
        }
    }
    let rest = &b[at..];
    match rest.first().map(|v| v >> 4) {
        Some(4 | 6) => Ok(Layer::Ip(rest)),
        // A pseudowire control word, then Ethernet.
        Some(0) => rest
            .get(4..)
            .map(Layer::Ethernet)
            .ok_or(SkipReason::Malformed("MPLS pseudowire")),
        _ => Err(SkipReason::NotIpFrame(
            "MPLS payload that is not IP or Ethernet",
        )),
    }
}

fn ppp(b: &[u8]) -> Result<Layer<'_>, SkipReason> {
    let b = b.strip_prefix(&[0xff, 0x03]).unwrap_or(b);
    let (proto, rest) = match b {
        // Protocol field compression: an odd first byte is a one-byte protocol.
        [p, rest @ ..] if p & 1 == 1 => (u16::from(*p), rest),
        [p0, p1, rest @ ..] => (u16::from_be_bytes([*p0, *p1]), rest),
        _ => return Err(SkipReason::Malformed("PPP header")),
    };
    match proto {
        0x0021 | 0x0057 => Ok(Layer::Ip(rest)),
        0x0281 => mpls(rest),
        _ => Err(SkipReason::NotIpFrame("PPP control or non-IP frame")),
    }
}

fn ieee80211(b: &[u8], swapped: bool) -> Result<Layer<'_>, SkipReason> {
    let fc = b
        .get(..2)
        .map(|v| {
            if swapped {
                u16::from_be_bytes([v[0], v[1]])
            } else {
                u16::from_le_bytes([v[0], v[1]])
            }
        })
        .ok_or(SkipReason::Malformed("802.11 header"))?;
    let kind = (fc >> 2) & 3;
    let subtype = (fc >> 4) & 0xf;
    let flags = fc >> 8;
    if kind != 2 {
        return Err(SkipReason::NotIpFrame("802.11 management or control frame"));
    }
    if subtype & 0x4 != 0 {
        return Err(SkipReason::NotIpFrame("802.11 data frame without payload"));
    }
    if flags & 0x40 != 0 {
        return Err(SkipReason::NotIpFrame("encrypted 802.11 frame"));
    }
    let mut len = 24;
    if flags & 0x3 == 0x3 {
        len += 6;
    }
    let qos = subtype & 0x8 != 0;
    if qos {
        len += 2;
        if flags & 0x80 != 0 {
            len += 4;
        }
    }
    b.get(len..)
        .ok_or(SkipReason::Malformed("802.11 header"))
        .and_then(llc)
}

/// UDP ports of the tunnels followed inside UDP.
pub fn udp_tunnel(src_port: u16, dst_port: u16, b: &[u8]) -> Option<Result<Layer<'_>, SkipReason>> {
    let port = |p: u16| src_port == p || dst_port == p;
    if port(4789) || port(8472) {
        // VXLAN: flags (I bit), reserved, VNI, reserved; Ethernet follows.
        return Some(
            b.get(8..)
                .filter(|_| b[0] & 0x08 != 0)
                .map(Layer::Ethernet)
                .ok_or(SkipReason::Malformed("VXLAN header")),
        );
    }
    if port(4790) {
        // VXLAN-GPE: the next protocol is named.
        return Some(match (b.get(3), b.get(8..)) {
            (Some(1 | 2), Some(rest)) => Ok(Layer::Ip(rest)),
            (Some(3), Some(rest)) => Ok(Layer::Ethernet(rest)),
            _ => Err(SkipReason::Malformed("VXLAN-GPE header")),
        });
    }
    if port(6081) {
        // Geneve: version and option length, flags, protocol type, VNI, options.
        return Some(
            (|| {
                let opt = usize::from(*b.first()? & 0x3f) * 4;
                let ty = be16(b, 2)?;
                Some(Layer::EtherType(ty, b.get(8 + opt..)?))
            })()
            .ok_or(SkipReason::Malformed("Geneve header")),
        );
    }
    if port(2152) {
        return Some(gtp_u(b));
    }
    if port(5247) {
        return Some(capwap(b));
    }
    if port(3544) {
        return Some(teredo(b));
    }
    None
}

/// GTP-U (3GPP TS 29.281): G-PDUs carry an IP packet.
fn gtp_u(b: &[u8]) -> Result<Layer<'_>, SkipReason> {
    let bad = SkipReason::Malformed("GTP-U header");
    let flags = *b.first().ok_or(bad.clone())?;
    if flags >> 5 != 1 || flags & 0x10 == 0 {
        return Err(bad);
    }
    if b.get(1) != Some(&0xff) {
        return Err(SkipReason::NotIpFrame("GTP-U signalling message"));
    }
    let mut at = 8;
    if flags & 0x07 != 0 {
        // Sequence number (2), N-PDU number (1), next extension header type (1).
        let mut next = *b.get(at + 3).ok_or(bad.clone())?;
        at += 4;
        let mut hops = 0;
        while next != 0 {
            let len = usize::from(*b.get(at).ok_or(bad.clone())?) * 4;
            if len == 0 || hops > 16 {
                return Err(bad);
            }
            next = *b.get(at + len - 1).ok_or(bad.clone())?;
            at += len;
            hops += 1;
        }
    }
    b.get(at..).map(Layer::Ip).ok_or(bad)
}

/// CAPWAP data channel (RFC 5415): 802.3 frames, or 802.11 frames when the T flag
/// says the native format of wireless binding 1.
fn capwap(b: &[u8]) -> Result<Layer<'_>, SkipReason> {
    let bad = SkipReason::Malformed("CAPWAP header");
    if b.len() < 8 || b[0] != 0 {
        return Err(bad);
    }
    let hlen = usize::from(b[1] >> 3) * 4;
    let wbid = (b[2] >> 1) & 0x1f;
    let native = b[2] & 1 == 1;
    let fragment = b[3] & 0x80 != 0;
    if fragment {
        return Err(SkipReason::NotIpFrame("CAPWAP fragment"));
    }
    let rest = b.get(hlen..).filter(|_| hlen >= 8).ok_or(bad)?;
    match (native, wbid) {
        // A data frame's type bits (2) in the second byte, not the first: the frame
        // control field is byte-swapped.
        (true, 1) if rest.len() >= 2 && (rest[0] >> 2) & 3 != 2 && (rest[1] >> 2) & 3 == 2 => {
            Ok(Layer::Ieee80211Swapped(rest))
        }
        (true, 1) => Ok(Layer::Ieee80211(rest)),
        (false, _) => Ok(Layer::Ethernet(rest)),
        _ => Err(SkipReason::NotIpFrame(
            "CAPWAP frame of another wireless binding",
        )),
    }
}

/// Teredo (RFC 4380): IPv6 in UDP, perhaps after an authentication or origin
/// indication header.
fn teredo(b: &[u8]) -> Result<Layer<'_>, SkipReason> {
    let bad = SkipReason::Malformed("Teredo header");
    let mut b = b;
    if b.starts_with(&[0, 1]) {
        let id = usize::from(*b.get(2).ok_or(bad.clone())?);
        let auth = usize::from(*b.get(3).ok_or(bad.clone())?);
        b = b.get(4 + id + auth + 9..).ok_or(bad.clone())?;
    }
    if b.starts_with(&[0, 0]) {
        b = b.get(8..).ok_or(bad.clone())?;
    }
    match b.first().map(|v| v >> 4) {
        Some(6) => Ok(Layer::Ip(b)),
        _ => Err(SkipReason::NotTcp(17)),
    }
}

/// GRE (RFC 2784/2890, and PPTP's enhanced GRE): what the protocol type names.
pub fn gre(b: &[u8]) -> Result<Layer<'_>, SkipReason> {
    let bad = SkipReason::Malformed("GRE header");
    let flags = be16(b, 0).ok_or(bad.clone())?;
    let ty = be16(b, 2).ok_or(bad.clone())?;
    let version = flags & 7;
    let mut len = 4;
    if flags & 0x4000 != 0 {
        // Source routing (deprecated): not followed.
        return Err(bad);
    }
    if flags & 0x8000 != 0 {
        len += 4;
    }
    if flags & 0x2000 != 0 {
        len += 4;
    }
    if flags & 0x1000 != 0 {
        len += 4;
    }
    if version == 1 && flags & 0x0080 != 0 {
        len += 4;
    }
    if version > 1 {
        return Err(bad);
    }
    let rest = b.get(len..).ok_or(bad)?;
    Ok(Layer::EtherType(ty, rest))
}

/// What a frame that its link type does not explain looks like, for the message.
pub fn looks_like(link: LinkType, data: &[u8]) -> Option<&'static str> {
    let ethernet_ip = matches!(
        (be16(data, 12), data.get(14).map(|b| b >> 4)),
        (Some(ETH_IPV4), Some(4)) | (Some(ETH_IPV6), Some(6)) | (Some(ETH_VLAN | ETH_QINQ), _)
    );
    if link != LinkType::ETHERNET && ethernet_ip {
        return Some("Ethernet frames");
    }
    if !link.is_ip_like() && matches!(data.first().map(|b| b >> 4), Some(4 | 6)) {
        let v4 = data[0] >> 4 == 4 && data[0] & 0xf >= 5 && data.len() >= 20;
        let v6 = data[0] >> 4 == 6 && data.len() >= 40;
        if v4 || v6 {
            return Some("raw IP packets");
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn walk(mut layer: Layer<'_>) -> Result<&[u8], SkipReason> {
        for _ in 0..16 {
            layer = next(layer)?;
            if let Layer::Ip(b) = layer {
                return Ok(b);
            }
        }
        Err(SkipReason::TooDeep)
    }

    const IP: [u8; 4] = [0x45, 0, 0, 20];

    fn eth(ty: u16, payload: &[u8]) -> Vec<u8> {
        let mut v = vec![0u8; 12];
        v.extend_from_slice(&ty.to_be_bytes());
        v.extend_from_slice(payload);
        v
    }

    #[test]
    fn qinq_then_pppoe() {
        let mut pppoe = vec![0x11, 0, 0, 1, 0, 6, 0x00, 0x21];
        pppoe.extend_from_slice(&IP);
        let mut inner_tag = vec![0, 5];
        inner_tag.extend_from_slice(&ETH_PPPOE_SESSION.to_be_bytes());
        inner_tag.extend_from_slice(&pppoe);
        let mut outer_tag = vec![0, 7];
        outer_tag.extend_from_slice(&ETH_VLAN.to_be_bytes());
        outer_tag.extend_from_slice(&inner_tag);
        let frame = eth(ETH_QINQ, &outer_tag);
        assert_eq!(walk(Layer::Ethernet(&frame)), Ok(&IP[..]));
    }

    #[test]
    fn linux_cooked_with_any_arphrd() {
        for hatype in [1u16, 772, 776, 778, 530, 65534] {
            let mut f = vec![0, 0];
            f.extend_from_slice(&hatype.to_be_bytes());
            f.extend_from_slice(&[0; 10]);
            f.extend_from_slice(&ETH_IPV4.to_be_bytes());
            f.extend_from_slice(&IP);
            let first = start(LinkType::LINUX_SLL, &f).expect("sll");
            assert_eq!(walk(first), Ok(&IP[..]), "ARPHRD {hatype}");
        }
        let mut f = ETH_IPV6.to_be_bytes().to_vec();
        f.extend_from_slice(&[0, 0, 0, 0, 0, 1, 0x03, 0x04, 0, 0]);
        f.extend_from_slice(&[0; 8]);
        f.extend_from_slice(&IP);
        assert!(matches!(
            start(LinkType::LINUX_SLL2, &f),
            Ok(Layer::EtherType(ETH_IPV6, _))
        ));
        // Netlink through the "any" device is not IP.
        let mut f = vec![0, 0, 0x03, 0x38];
        f.extend_from_slice(&[0; 12]);
        assert_eq!(
            start(LinkType::LINUX_SLL, &f),
            Err(SkipReason::NotIpFrame("netlink message"))
        );
    }

    #[test]
    fn udp_tunnels() {
        let frame = eth(ETH_IPV4, &IP);
        let mut vxlan = vec![0x08, 0, 0, 0, 0, 0, 1, 0];
        vxlan.extend_from_slice(&frame);
        let l = udp_tunnel(40000, 4789, &vxlan).expect("vxlan").expect("ok");
        assert_eq!(walk(l), Ok(&IP[..]));
        let mut geneve = vec![0x01, 0, 0x65, 0x58, 0, 0, 1, 0, 1, 2, 3, 4];
        geneve.extend_from_slice(&frame);
        let l = udp_tunnel(6081, 1, &geneve).expect("geneve").expect("ok");
        assert_eq!(walk(l), Ok(&IP[..]));
        // GTP-U with a sequence number and one extension header (PDU session).
        let mut gtp = vec![
            0x36, 0xff, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0x85, 1, 0x10, 0x01, 0x00,
        ];
        gtp.extend_from_slice(&IP);
        let l = udp_tunnel(2152, 2152, &gtp).expect("gtp").expect("ok");
        assert_eq!(l, Layer::Ip(&IP[..]));
        assert_eq!(udp_tunnel(53, 5353, &gtp), None);
    }

    #[test]
    fn gre_and_mpls() {
        let mut g = vec![0x20, 0, 0x08, 0x00, 0, 0, 0, 9];
        g.extend_from_slice(&IP);
        assert_eq!(gre(&g), Ok(Layer::EtherType(ETH_IPV4, &IP[..])));
        let mut m = vec![0, 0, 0x10, 64, 0, 0, 0x21, 64];
        m.extend_from_slice(&IP);
        assert_eq!(walk(Layer::EtherType(0x8847, &m)), Ok(&IP[..]));
    }

    #[test]
    fn wifi_data_frame_with_qos() {
        let mut f = vec![0x88, 0x01];
        f.extend_from_slice(&[0; 22]);
        f.extend_from_slice(&[0, 0]);
        f.extend_from_slice(&[0xaa, 0xaa, 0x03, 0, 0, 0, 0x08, 0x00]);
        f.extend_from_slice(&IP);
        assert_eq!(walk(Layer::Ieee80211(&f)), Ok(&IP[..]));
        f[1] |= 0x40;
        assert!(walk(Layer::Ieee80211(&f)).is_err());
    }

    #[test]
    fn mislabelled_frames_are_recognised() {
        let frame = eth(ETH_IPV4, &IP);
        assert_eq!(looks_like(LinkType::RAW, &frame), Some("Ethernet frames"));
        assert_eq!(looks_like(LinkType::ETHERNET, &IP), None);
        let mut ip = IP.to_vec();
        ip.resize(40, 0);
        assert_eq!(looks_like(LinkType::ETHERNET, &ip), Some("raw IP packets"));
    }
}
