//! Link layers and encapsulations down to IP (Linux cooked v1/v2 with any ARPHRD,
//! VLAN/QinQ, PPPoE, MPLS, PPP, 802.11, GRE, VXLAN, Geneve, GTP-U, CAPWAP,
//! Teredo), then the tracker (IP-in-IP, fragments, TCP). Input: one byte picking the
//! link type, two bytes of UDP port for the UDP tunnels, then the frame.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mtls_auditor::pcap::{
    LinkType, Tracker,
    link::{self, Layer},
};

const LINKS: [LinkType; 16] = [
    LinkType::ETHERNET,
    LinkType::LINUX_SLL,
    LinkType::LINUX_SLL2,
    LinkType::RAW,
    LinkType::NULL,
    LinkType::LOOP,
    LinkType::PPP,
    LinkType::PPP_HDLC,
    LinkType::PPP_ETHER,
    LinkType::IEEE802_11,
    LinkType::IEEE802_11_RADIOTAP,
    LinkType::IPV4,
    LinkType::IPV6,
    LinkType::RAW_12,
    LinkType(147),
    LinkType(u16::MAX),
];

fn walk(mut layer: Layer<'_>) {
    for _ in 0..16 {
        match link::next(layer) {
            Ok(Layer::Ip(_)) | Err(_) => return,
            Ok(next) => layer = next,
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&[kind, p0, p1], frame)) = data.split_first_chunk::<3>() else {
        return;
    };
    let link = LINKS[usize::from(kind) % LINKS.len()];
    if let Ok(layer) = link::start(link, frame) {
        walk(layer);
    }
    let port = u16::from_be_bytes([p0, p1]);
    if let Some(Ok(layer)) = link::udp_tunnel(port, port, frame) {
        walk(layer);
    }
    if let Ok(layer) = link::gre(frame) {
        walk(layer);
    }
    let _ = link::looks_like(link, frame);
    let mut t = Tracker::new(4096);
    t.frame(link, frame, 1);
    let _ = t.connections();
});
