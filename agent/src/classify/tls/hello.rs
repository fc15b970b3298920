//! ClientHello and ServerHello: what each side offers and selects.

use super::*;
use crate::classify::wire::Reader;

/// The ServerHello.random of a HelloRetryRequest (RFC 8446 4.1.3).
const HRR_RANDOM: [u8; 32] = [
    0xcf, 0x21, 0xad, 0x74, 0xe5, 0x9a, 0x61, 0x11, 0xbe, 0x1d, 0x8c, 0x02, 0x1e, 0x65, 0xb8, 0x91,
    0xc2, 0xa2, 0x11, 0x16, 0x7a, 0xbb, 0x8c, 0x5e, 0x07, 0x9e, 0x09, 0xe2, 0xc8, 0xa8, 0x33, 0x9c,
];

/// GREASE values (RFC 8701): 0x?a?a with both bytes equal.
pub fn is_grease(v: u16) -> bool {
    v & 0x0f0f == 0x0a0a && (v >> 8) == (v & 0xff)
}

/// What a ClientHello offers.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClientHello {
    pub legacy_version: u16,
    pub session_id_len: usize,
    pub ciphers: Vec<u16>,
    /// Extension types in the order sent (GREASE included).
    pub extensions: Vec<u16>,
    pub sni: Option<String>,
    pub alpn: Vec<Vec<u8>>,
    pub supported_versions: Vec<u16>,
    pub signature_algorithms: Vec<u16>,
    pub psk_offered: bool,
    pub early_data: bool,
    /// The `post_handshake_auth` extension (TLS 1.3): the client will answer a
    /// CertificateRequest after the handshake.
    pub post_handshake_auth: bool,
    /// The SessionTicket extension's ticket (TLS 1.2 resumption by ticket).
    pub session_ticket: Vec<u8>,
}

/// Parses a ClientHello body (after the 4-byte handshake header). Extensions that
/// are cut off by the capture are kept up to the cut.
pub fn parse_client_hello(body: &[u8]) -> Option<ClientHello> {
    let mut r = Reader::new(body);
    let legacy_version = r.u16()?;
    r.skip(32)?;
    let session_id_len = r.vec8()?.len();
    let ciphers_raw = r.vec16()?;
    let ciphers = ciphers_raw
        .as_chunks::<2>()
        .0
        .iter()
        .map(|c| u16::from_be_bytes([c[0], c[1]]))
        .collect();
    r.vec8()?; // compression methods
    let mut ch = ClientHello {
        legacy_version,
        session_id_len,
        ciphers,
        ..ClientHello::default()
    };
    let Some(exts) = r.vec16() else {
        return Some(ch);
    };
    let mut e = Reader::new(exts);
    while e.remaining() >= 4 {
        let ty = e.u16()?;
        let Some(data) = e.vec16() else { break };
        ch.extensions.push(ty);
        let mut d = Reader::new(data);
        match ty {
            EXT_SERVER_NAME => {
                if let Some(list) = d.vec16() {
                    let mut l = Reader::new(list);
                    while let (Some(kind), Some(name)) = (l.u8(), l.vec16()) {
                        if kind == 0 && ch.sni.is_none() {
                            ch.sni = Some(String::from_utf8_lossy(name).into_owned());
                        }
                    }
                }
            }
            EXT_ALPN => {
                if let Some(list) = d.vec16() {
                    let mut l = Reader::new(list);
                    while let Some(p) = l.vec8() {
                        ch.alpn.push(p.to_vec());
                    }
                }
            }
            EXT_SUPPORTED_VERSIONS => {
                if let Some(list) = d.vec8() {
                    ch.supported_versions = list
                        .as_chunks::<2>()
                        .0
                        .iter()
                        .map(|c| u16::from_be_bytes([c[0], c[1]]))
                        .collect();
                }
            }
            EXT_SIGNATURE_ALGORITHMS => {
                if let Some(list) = d.vec16() {
                    ch.signature_algorithms = list
                        .as_chunks::<2>()
                        .0
                        .iter()
                        .map(|c| u16::from_be_bytes([c[0], c[1]]))
                        .collect();
                }
            }
            EXT_PRE_SHARED_KEY => ch.psk_offered = true,
            EXT_EARLY_DATA => ch.early_data = true,
            EXT_POST_HANDSHAKE_AUTH => ch.post_handshake_auth = true,
            EXT_SESSION_TICKET => ch.session_ticket = data.to_vec(),
            _ => {}
        }
    }
    Some(ch)
}

/// What a ServerHello (or HelloRetryRequest) selects.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ServerHello {
    pub legacy_version: u16,
    pub session_id: Vec<u8>,
    pub cipher: u16,
    pub selected_version: Option<u16>,
    pub alpn: Option<Vec<u8>>,
    pub psk_accepted: bool,
    pub hello_retry: bool,
}

impl ServerHello {
    /// The version actually negotiated: `supported_versions` if present.
    pub fn version(&self) -> u16 {
        self.selected_version.unwrap_or(self.legacy_version)
    }
}

pub fn parse_server_hello(body: &[u8]) -> Option<ServerHello> {
    let mut r = Reader::new(body);
    let legacy_version = r.u16()?;
    let random = r.take(32)?;
    let session_id = r.vec8()?.to_vec();
    let cipher = r.u16()?;
    r.u8()?; // compression
    let mut sh = ServerHello {
        legacy_version,
        session_id,
        cipher,
        hello_retry: random == HRR_RANDOM,
        ..ServerHello::default()
    };
    let Some(exts) = r.vec16() else {
        return Some(sh);
    };
    let mut e = Reader::new(exts);
    while e.remaining() >= 4 {
        let ty = e.u16()?;
        let Some(data) = e.vec16() else { break };
        let mut d = Reader::new(data);
        match ty {
            EXT_SUPPORTED_VERSIONS => sh.selected_version = d.u16(),
            EXT_ALPN => {
                if let Some(list) = d.vec16() {
                    sh.alpn = Reader::new(list).vec8().map(<[u8]>::to_vec);
                }
            }
            EXT_PRE_SHARED_KEY => sh.psk_accepted = true,
            _ => {}
        }
    }
    Some(sh)
}

/// An SSLv2-compatible ClientHello (RFC 5246 appendix E.2, RFC 6101 appendix E):
/// a two-byte record header with the high bit set, message type 1, the highest
/// version the client supports, then cipher specs of three bytes (those whose first
/// byte is 0 are TLS cipher suites), a session id and a challenge. Returns the
/// hello and the bytes it took.
pub fn parse_sslv2_client_hello(b: &[u8]) -> Option<(ClientHello, usize)> {
    let (&h0, &h1) = (b.first()?, b.get(1)?);
    if h0 & 0x80 == 0 {
        return None;
    }
    let len = usize::from(h0 & 0x7f) << 8 | usize::from(h1);
    let body = b.get(2..2 + len)?;
    let mut r = Reader::new(body);
    if r.u8()? != 1 {
        return None;
    }
    let version = r.u16()?;
    // SSL 2.0 itself (0x0002) or SSL 3.0 / TLS 1.0-1.2 announced in the v2 format.
    if version != 0x0002 && !(0x0300..=0x0303).contains(&version) {
        return None;
    }
    let specs_len = usize::from(r.u16()?);
    let sid_len = usize::from(r.u16()?);
    let challenge_len = usize::from(r.u16()?);
    if specs_len == 0 || specs_len % 3 != 0 || sid_len > 32 || !(16..=32).contains(&challenge_len) {
        return None;
    }
    let specs = r.take(specs_len)?;
    r.skip(sid_len)?;
    r.skip(challenge_len)?;
    if !r.is_empty() {
        return None;
    }
    let ciphers = specs
        .as_chunks::<3>()
        .0
        .iter()
        .filter(|s| s[0] == 0)
        .map(|s| u16::from_be_bytes([s[1], s[2]]))
        .collect();
    Some((
        ClientHello {
            legacy_version: version,
            session_id_len: sid_len,
            ciphers,
            ..ClientHello::default()
        },
        2 + len,
    ))
}

/// Whether a server stream starts with an SSL 2.0 SERVER-HELLO (message type 4).
pub fn parse_sslv2_server_hello(b: &[u8]) -> bool {
    b.len() >= 3 && b[0] & 0x80 != 0 && b[2] == 4
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sslv2_format_client_hello() {
        // What OpenSSL 0.9.8 sends for TLS 1.0: header, type 1, version 3.1, specs
        // (one SSLv2-only, two TLS), no session id, a 16-byte challenge.
        let mut b = vec![0x80, 0, 1, 0x03, 0x01, 0, 9, 0, 0, 0, 16];
        b.extend_from_slice(&[0x07, 0x00, 0xc0, 0x00, 0x00, 0x2f, 0x00, 0x00, 0x35]);
        b.extend_from_slice(&[0xab; 16]);
        b[1] = (b.len() - 2) as u8;
        b.extend_from_slice(&[0x16, 0x03, 0x01]);
        let (ch, n) = parse_sslv2_client_hello(&b).expect("parses");
        assert_eq!(n, b.len() - 3);
        assert_eq!(ch.legacy_version, 0x0301);
        assert_eq!(ch.ciphers, vec![0x002f, 0x0035]);
        // A TLS record is not one; neither is a truncated header.
        assert!(parse_sslv2_client_hello(&[0x16, 3, 1, 0, 5]).is_none());
        assert!(parse_sslv2_client_hello(&b[..10]).is_none());
    }
}
