//! STARTTLS dialects (SMTP, IMAP, POP3, FTP, NNTP, XMPP, LDAP), a TLS handshake
//! after an unknown preamble, and the plaintext recogniser around them, on two
//! arbitrary streams. Input: a 2-byte big-endian client length, the client's
//! bytes, then the server's. Offsets returned must lie inside the streams.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mtls_auditor::classify::{plaintext, upgrade};

fuzz_target!(|data: &[u8]| {
    let Some((head, rest)) = data.split_first_chunk::<2>() else {
        return;
    };
    let split = usize::from(u16::from_be_bytes(*head)).min(rest.len());
    let (client, server) = rest.split_at(split);
    for d in [
        upgrade::detect(client, server),
        upgrade::preamble_then_tls(client, server),
        Some(plaintext::detect(client, server)),
    ]
    .into_iter()
    .flatten()
    {
        if let Some((c, s)) = d.tls_after {
            assert!(c <= client.len() && s <= server.len(), "{c} {s}");
        }
    }
});
