//! Link-layer frames into the offline TCP tracker, then classification.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mtls_auditor::pcap::LinkType;
use mtls_auditor::{classify, pcap::Tracker};

fuzz_target!(|data: &[u8]| {
    let Some((&kind, rest)) = data.split_first() else {
        return;
    };
    let link = match kind % 10 {
        0 => LinkType::ETHERNET,
        1 => LinkType::LINUX_SLL,
        2 => LinkType::LINUX_SLL2,
        3 => LinkType::RAW,
        4 => LinkType::NULL,
        5 => LinkType::PPP,
        6 => LinkType::IEEE802_11_RADIOTAP,
        7 => LinkType::PPP_ETHER,
        8 => LinkType::IEEE802_11,
        _ => LinkType::IPV6,
    };
    let mut t = Tracker::new(4096);
    // The same bytes as several frames, so connections get more than one segment.
    for (i, frame) in rest.split(|&b| b == 0xff).enumerate() {
        t.frame(link, frame, i as u64);
    }
    for c in t.connections() {
        let _ = classify::classify(&c.classify_input());
    }
});
