//! Link-layer frames into the offline TCP tracker, then classification.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mtls_auditor::pcap::DataLink;
use mtls_auditor::{classify, pcap::Tracker};

fuzz_target!(|data: &[u8]| {
    let Some((&kind, rest)) = data.split_first() else {
        return;
    };
    let link = match kind % 6 {
        0 => DataLink::ETHERNET,
        1 => DataLink::LINUX_SLL,
        2 => DataLink::LINUX_SLL2,
        3 => DataLink::RAW,
        4 => DataLink::NULL,
        _ => DataLink::IPV6,
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
