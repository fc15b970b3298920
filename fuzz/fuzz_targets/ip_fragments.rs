//! IPv4 and IPv6 fragment reassembly and TCP tracking over raw IP packets.
//! Input: packets, each a 2-byte big-endian length then the packet; every one is
//! fed to the tracker as a raw IP frame, and what it built is classified.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mtls_auditor::{
    classify,
    pcap::{LinkType, Tracker},
};

fuzz_target!(|data: &[u8]| {
    let mut t = Tracker::new(4096);
    let mut rest = data;
    let mut ts = 0u64;
    while let Some((len, tail)) = rest.split_first_chunk::<2>() {
        let len = usize::from(u16::from_be_bytes(*len)).min(tail.len());
        let (pkt, tail) = tail.split_at(len);
        ts += 1_000_000;
        t.frame(LinkType::RAW, pkt, ts);
        rest = tail;
    }
    for c in t.connections() {
        let _ = classify::classify(&c.classify_input());
    }
});
