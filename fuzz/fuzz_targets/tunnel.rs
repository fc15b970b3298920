//! HTTP CONNECT, SOCKS 4/4a/5 and OpenVPN-over-TCP parsing on two arbitrary
//! streams. Input: a 2-byte big-endian client length, the client's bytes, then the
//! server's. Where a tunnel's bytes start must lie inside the streams.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mtls_auditor::classify::{openvpn, tunnel};

fuzz_target!(|data: &[u8]| {
    let Some((head, rest)) = data.split_first_chunk::<2>() else {
        return;
    };
    let split = usize::from(u16::from_be_bytes(*head)).min(rest.len());
    let (client, server) = rest.split_at(split);
    if let Some(f) = tunnel::detect(client, server) {
        assert!(f.client_offset <= client.len(), "{f:?}");
        assert!(f.server_offset <= server.len(), "{f:?}");
    }
    if let Some(ov) = openvpn::detect(client, server)
        && let Some((c, s, _)) = ov.tls
    {
        for (ch, stream) in [(c, client), (s, server)] {
            assert!(ch.tls.len() <= stream.len());
            for (at, orig) in ch.pieces {
                assert!(at <= ch.tls.len() && orig <= stream.len());
            }
        }
    }
});
