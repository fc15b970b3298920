//! Whole capture files (pcap or pcapng, any header, any block) into the reader,
//! then classification of what it tracked.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mtls_auditor::{classify, pcap};

fuzz_target!(|data: &[u8]| {
    if let Ok(t) = pcap::read_from(data, std::path::Path::new("fuzz.pcap"), 4096) {
        for c in t.connections() {
            let _ = classify::classify(&c.classify_input());
        }
    }
});
