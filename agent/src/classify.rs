//! Classification of a connection from its captured byte streams.
//!
//! A pure function of bytes: no I/O, no clock. The same code runs in the live
//! agent, on pcap files and under the fuzzers.

use serde::Serialize;

/// First-bytes class of a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FirstBytes {
    /// The client opened with a TLS handshake record.
    TlsHandshake,
    /// Bytes flowed and they are not TLS.
    Plaintext,
    /// Nothing seen from the start of the stream.
    Unknown,
}

/// Whether `b` starts with a TLS handshake record header (type 22, version 3.x).
pub fn is_tls_handshake_record(b: &[u8]) -> bool {
    b.len() >= 3 && b[0] == 0x16 && b[1] == 0x03 && b[2] <= 0x04
}

/// Decides the first-bytes class from the client-to-server and server-to-client
/// prefixes (each from stream offset 0).
pub fn first_bytes(client_to_server: &[u8], server_to_client: &[u8]) -> FirstBytes {
    if !client_to_server.is_empty() {
        if client_to_server.len() < 3 {
            return FirstBytes::Unknown;
        }
        return if is_tls_handshake_record(client_to_server) {
            FirstBytes::TlsHandshake
        } else {
            FirstBytes::Plaintext
        };
    }
    // Server speaks first (SMTP, MySQL, SSH banners).
    if server_to_client.len() >= 3 {
        return if is_tls_handshake_record(server_to_client) {
            FirstBytes::TlsHandshake
        } else {
            FirstBytes::Plaintext
        };
    }
    FirstBytes::Unknown
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tls_client_hello_is_tls() {
        let hello = [0x16, 0x03, 0x01, 0x02, 0x00, 0x01];
        assert_eq!(first_bytes(&hello, &[]), FirstBytes::TlsHandshake);
    }

    #[test]
    fn http_is_plaintext() {
        assert_eq!(
            first_bytes(b"GET / HTTP/1.1\r\n", b"HTTP/1.1 200"),
            FirstBytes::Plaintext
        );
    }

    #[test]
    fn nothing_is_unknown() {
        assert_eq!(first_bytes(&[], &[]), FirstBytes::Unknown);
        assert_eq!(first_bytes(&[0x16], &[]), FirstBytes::Unknown);
    }

    #[test]
    fn server_first_banner_is_plaintext() {
        assert_eq!(
            first_bytes(&[], b"220 mail ESMTP\r\n"),
            FirstBytes::Plaintext
        );
    }
}
