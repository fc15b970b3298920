//! SSLv2-format ClientHellos: the parser, then the TLS analysis that follows one
//! (the rest of the input is the server's stream).
#![no_main]

use libfuzzer_sys::fuzz_target;
use mtls_auditor::classify::{Side, tls};

fuzz_target!(|data: &[u8]| {
    if let Some((_, len)) = tls::parse_sslv2_client_hello(data) {
        assert!(len <= data.len());
        let (client, server) = data.split_at(len);
        let _ = tls::analyze(&Side::new(data), &Side::new(server));
        let _ = tls::analyze(&Side::new(client), &Side::new(&[]));
    }
});
