//! The whole classifier on two arbitrary streams: TLS records and handshakes, JA4,
//! X.509, STARTTLS, plaintext protocols. Must never panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mtls_auditor::classify::{Closing, ConnInput, Party, Side, classify};

fuzz_target!(|data: &[u8]| {
    if data.len() < 4 {
        return;
    }
    // First two bytes split the input into client and server streams; the next two
    // pick the port and how the connection closed.
    let split = usize::from(u16::from_be_bytes([data[0], data[1]])) % (data.len() - 3);
    let rest = &data[4..];
    let split = split.min(rest.len());
    let (client, server) = rest.split_at(split);
    let chunks = [(0u32, 1u64), (64, 2), (512, 3)];
    let closing = Closing {
        closed: data[2] & 1 != 0,
        first: if data[2] & 2 != 0 {
            Some(Party::Server)
        } else {
            Some(Party::Client)
        },
        reset_by: if data[2] & 4 != 0 {
            Some(Party::Client)
        } else {
            None
        },
    };
    let input = ConnInput {
        client: Side {
            bytes: client,
            chunks: &chunks,
            ..Side::default()
        },
        server: Side {
            bytes: server,
            chunks: &chunks,
            ..Side::default()
        },
        server_port: u16::from(data[3]) * 60,
        closing,
        lost: data[2] & 8 != 0,
    };
    let _ = classify(&input);
});
