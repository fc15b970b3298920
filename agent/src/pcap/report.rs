//! What reading a capture left out, and why: counts per reason, and where the
//! file ended if it ended early. Nothing is dropped silently.

use std::{collections::BTreeMap, fmt::Write as _};

use super::{LinkType, file::Stop};

/// Why a packet did not reach the TCP tracker.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum SkipReason {
    // Not what the classifier reads: counted, not a problem.
    /// An IP packet of another protocol (UDP, ICMP, ...): the IP protocol number.
    NotTcp(u8),
    /// A frame that is not IP: its EtherType (ARP, LLDP, ...).
    NotIp(u16),
    /// Another kind of frame that carries no IP (802.11 management, encrypted
    /// 802.11, netlink, ...).
    NotIpFrame(&'static str),
    // Could not be read.
    /// A record with no captured bytes (`incl_len` 0).
    Empty,
    /// A pcapng interface whose link type is not decoded here.
    UnsupportedLink(LinkType),
    /// A pcapng packet naming an interface that no description declared.
    NoInterface(u32),
    /// A header cut short or invalid: which one.
    Malformed(&'static str),
    /// Frames whose bytes say another link type than the file does.
    Mislabeled {
        link: LinkType,
        looks_like: &'static str,
    },
    /// More nested encapsulations than are followed.
    TooDeep,
    /// IP fragments that never completed a packet (counted at the end).
    FragmentsIncomplete,
    /// IP fragments that overlap with different bytes or exceed 64 KiB.
    FragmentsInvalid,
}

impl SkipReason {
    /// Whether this is traffic the classifier has no use for, rather than a
    /// packet it could not read.
    pub fn is_benign(&self) -> bool {
        matches!(self, Self::NotTcp(_) | Self::NotIp(_) | Self::NotIpFrame(_))
    }

    fn describe(&self) -> String {
        match self {
            Self::NotTcp(p) => match p {
                1 => "ICMP".into(),
                17 => "UDP".into(),
                58 => "ICMPv6".into(),
                2 => "IGMP".into(),
                50 => "IPsec ESP".into(),
                132 => "SCTP".into(),
                p => format!("IP protocol {p}"),
            },
            Self::NotIp(t) => match t {
                0x0806 => "ARP".into(),
                0x88cc => "LLDP".into(),
                0x8863 => "PPPoE discovery".into(),
                0x888e => "802.1X (EAPOL)".into(),
                t => format!("EtherType {t:#06x}"),
            },
            Self::NotIpFrame(what) => (*what).to_owned(),
            Self::Empty => "with no captured bytes (incl_len 0)".into(),
            Self::UnsupportedLink(l) => {
                format!("on an interface with {}, which is not decoded", l.name())
            }
            Self::NoInterface(i) => format!("naming interface {i}, which the file never described"),
            Self::Malformed(what) => format!("with a cut-short or invalid {what}"),
            Self::Mislabeled { link, looks_like } => format!(
                "labelled {} whose bytes look like {looks_like} (the file's link type is probably wrong)",
                link.name()
            ),
            Self::TooDeep => "nested in more than 8 encapsulations".into(),
            Self::FragmentsIncomplete => "IP fragments of packets never completed".into(),
            Self::FragmentsInvalid => {
                "IP fragments that overlap with other bytes or exceed 64 KiB".into()
            }
        }
    }
}

/// What reading a capture saw and left out.
#[derive(Debug, Clone, Default)]
pub struct ReadReport {
    /// Packet records read.
    pub packets: u64,
    /// TCP segments handed to the tracker.
    pub tcp_segments: u64,
    /// Packets reassembled from IP fragments.
    pub reassembled: u64,
    pub skipped: BTreeMap<SkipReason, u64>,
    /// Where and why the file ended early.
    pub stop: Option<Stop>,
}

impl ReadReport {
    pub fn skip(&mut self, reason: SkipReason) {
        *self.skipped.entry(reason).or_default() += 1;
    }

    /// Packets that could not be read (benign skips excluded).
    pub fn unreadable(&self) -> u64 {
        self.skipped
            .iter()
            .filter(|(r, _)| !r.is_benign())
            .map(|(_, n)| n)
            .sum()
    }

    fn list(&self, benign: bool) -> (u64, String) {
        let mut items: Vec<(&SkipReason, u64)> = self
            .skipped
            .iter()
            .filter(|(r, _)| r.is_benign() == benign)
            .map(|(r, n)| (r, *n))
            .collect();
        items.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
        let total = items.iter().map(|(_, n)| n).sum();
        let mut s = String::new();
        for (i, (r, n)) in items.iter().enumerate() {
            if i > 0 {
                s.push_str(", ");
            }
            let _ = write!(s, "{n} {}", r.describe());
        }
        (total, s)
    }

    /// Lines for stderr: what was left out and why, and where the file ended
    /// early. Empty when everything was read and something was found.
    /// `connections` is how many TCP connections the tracker found.
    pub fn messages(&self, connections: usize) -> Vec<String> {
        let mut out = Vec::new();
        let (bad, bad_list) = self.list(false);
        if bad > 0 {
            out.push(format!(
                "skipped {bad} of {} packets that could not be read: {bad_list}",
                self.packets
            ));
        }
        let (benign, benign_list) = self.list(true);
        if benign > 0 && (bad > 0 || connections == 0) {
            out.push(format!(
                "ignored {benign} packets that are not TCP: {benign_list}"
            ));
        }
        if connections == 0 && self.stop.is_none() {
            out.push(format!(
                "no TCP connection found in {} packets",
                self.packets
            ));
        }
        if let Some(stop) = &self.stop {
            out.push(format!(
                "{stop}; the {connections} connection(s) reported were read before that point"
            ));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pcap::file::StopKind;

    #[test]
    fn messages_name_reasons_and_counts() {
        let mut r = ReadReport {
            packets: 10,
            ..ReadReport::default()
        };
        for _ in 0..3 {
            r.skip(SkipReason::Empty);
        }
        r.skip(SkipReason::UnsupportedLink(LinkType(147)));
        r.skip(SkipReason::NotTcp(17));
        assert_eq!(r.unreadable(), 4);
        let m = r.messages(2);
        assert_eq!(
            m[0],
            "skipped 4 of 10 packets that could not be read: 3 with no captured bytes (incl_len 0), \
             1 on an interface with link type 147, which is not decoded"
        );
        assert_eq!(m[1], "ignored 1 packets that are not TCP: 1 UDP");
        r.stop = Some(Stop {
            offset: 1234,
            packet: 11,
            kind: StopKind::Truncated {
                what: "record",
                need: 100,
                have: 10,
            },
        });
        let m = r.messages(2);
        assert!(m[2].contains("packet 11 (byte offset 1234)"), "{}", m[2]);
        assert!(m[2].ends_with("the 2 connection(s) reported were read before that point"));
        // Only benign skips and some connections: nothing to say.
        let mut quiet = ReadReport::default();
        quiet.skip(SkipReason::NotTcp(17));
        assert!(quiet.messages(1).is_empty());
        assert_eq!(quiet.messages(0).len(), 2);
    }
}
