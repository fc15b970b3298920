//! ClientHello / ServerHello parsing and the JA4 fingerprint.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mtls_auditor::classify::{ja4, tls};

fuzz_target!(|data: &[u8]| {
    if let Some(ch) = tls::parse_client_hello(data) {
        let fp = ja4::ja4(&ch);
        assert_eq!(fp.len(), 36, "{fp}");
    }
    let _ = tls::parse_server_hello(data);
    let (records, _) = tls::split_records(data);
    for r in records {
        assert!(r.offset + 5 + r.available <= data.len());
    }
    let _ = tls::handshake_messages(data);
    let _ = tls::parse_cert(data, 1);
});
