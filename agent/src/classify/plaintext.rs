//! Cleartext protocols, STARTTLS-style upgrades and encrypted protocols that are
//! not TLS, recognised from the first bytes of each direction.

use serde::Serialize;

use super::{Protocol, upgrade, wire::find};

/// HTTP request facts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct HttpInfo {
    pub method: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
}

/// What the first bytes say.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Detected {
    pub protocol: Protocol,
    pub http: Option<HttpInfo>,
    /// The connection upgrades to TLS: (client offset, server offset) of the first
    /// TLS byte in each direction.
    pub tls_after: Option<(usize, usize)>,
    /// Encrypted, but not TLS (SSH, GSSAPI-encrypted PostgreSQL).
    pub encrypted: bool,
    /// A sentence for the evidence.
    pub note: String,
    /// Whether the protocol was positively recognised (vs. "some other bytes").
    pub recognised: bool,
}

impl Detected {
    pub(super) fn new(protocol: Protocol, note: impl Into<String>) -> Self {
        Self {
            protocol,
            http: None,
            tls_after: None,
            encrypted: false,
            note: note.into(),
            recognised: true,
        }
    }
}

const PG_SSL_REQUEST: [u8; 8] = [0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f];
const PG_GSSENC_REQUEST: [u8; 8] = [0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x30];
const PG_PROTOCOL_3: [u8; 4] = [0, 3, 0, 0];
const PG_CANCEL: [u8; 4] = [0x04, 0xd2, 0x16, 0x2e];
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const MYSQL_CLIENT_SSL: u32 = 0x0800;

/// `METHOD SP target SP HTTP/1.x`.
fn http1_request(b: &[u8]) -> Option<HttpInfo> {
    let line_end = find(b, b"\r\n").or_else(|| find(b, b"\n"))?;
    let line = &b[..line_end];
    let mut parts = line.split(|&c| c == b' ');
    let method = parts.next()?;
    let _target = parts.next()?;
    let version = parts.next()?;
    if method.is_empty()
        || method.len() > 16
        || !method
            .iter()
            .all(|c| c.is_ascii_uppercase() || *c == b'-' || *c == b'_')
        || !version.starts_with(b"HTTP/1.")
    {
        return None;
    }
    let mut host = None;
    for header in b[line_end..].split(|&c| c == b'\n').skip(1) {
        let header = header.strip_suffix(b"\r").unwrap_or(header);
        if header.is_empty() {
            break;
        }
        if header.len() > 5 && header[..5].eq_ignore_ascii_case(b"host:") {
            host = Some(String::from_utf8_lossy(&header[5..]).trim().to_owned());
        }
    }
    Some(HttpInfo {
        method: String::from_utf8_lossy(method).into_owned(),
        host,
    })
}

/// Redis RESP: an array of bulk strings (`*2\r\n$4\r\nPING...`).
fn resp(b: &[u8]) -> bool {
    b.first() == Some(&b'*')
        && b.iter().skip(1).take_while(|c| c.is_ascii_digit()).count() > 0
        && find(&b[..b.len().min(16)], b"\r\n$").is_some()
}

/// A MySQL server greeting: 3-byte length, sequence 0, protocol 10, version string.
fn mysql_greeting(b: &[u8]) -> Option<usize> {
    if b.len() < 6 || b[3] != 0 || b[4] != 10 {
        return None;
    }
    let len = usize::from(b[0]) | usize::from(b[1]) << 8 | usize::from(b[2]) << 16;
    let version_end = b[5..].iter().position(|&c| c == 0)?;
    (len > 20 && b[5..5 + version_end].iter().all(|c| c.is_ascii_graphic())).then_some(4 + len)
}

fn printable_share(b: &[u8]) -> f64 {
    let n = b.len().min(256);
    if n == 0 {
        return 0.0;
    }
    let printable = b[..n]
        .iter()
        .filter(|c| c.is_ascii_graphic() || c.is_ascii_whitespace())
        .count();
    printable as f64 / n as f64
}

/// Recognises the protocol from the first bytes of each direction.
pub fn detect(client: &[u8], server: &[u8]) -> Detected {
    if client.starts_with(b"SSH-") || server.starts_with(b"SSH-") {
        let mut d = Detected::new(Protocol::Ssh, "SSH (encrypted, not TLS)");
        d.encrypted = true;
        return d;
    }
    if client.starts_with(&PG_SSL_REQUEST) {
        return match server.first() {
            Some(b'S') => {
                let mut d = Detected::new(
                    Protocol::Postgres,
                    "PostgreSQL SSLRequest accepted ('S'): TLS follows",
                );
                d.tls_after = Some((8, 1));
                d
            }
            Some(b'N') => Detected::new(
                Protocol::Postgres,
                "PostgreSQL SSLRequest refused ('N'): the session continues in plaintext",
            ),
            _ => {
                let mut d = Detected::new(
                    Protocol::Postgres,
                    "PostgreSQL SSLRequest, no answer captured",
                );
                d.recognised = false;
                d
            }
        };
    }
    if client.starts_with(&PG_GSSENC_REQUEST) {
        if server.first() == Some(&b'G') {
            let mut d = Detected::new(
                Protocol::Postgres,
                "PostgreSQL GSSAPI encryption accepted ('G'): encrypted, not TLS",
            );
            d.encrypted = true;
            return d;
        }
        return Detected::new(
            Protocol::Postgres,
            "PostgreSQL GSSENCRequest refused: plaintext follows",
        );
    }
    if client.len() >= 8 && client[4..8] == PG_PROTOCOL_3 {
        return Detected::new(Protocol::Postgres, "PostgreSQL StartupMessage in plaintext");
    }
    if client.len() >= 8 && client[..4] == [0, 0, 0, 16] && client[4..8] == PG_CANCEL {
        return Detected::new(Protocol::Postgres, "PostgreSQL CancelRequest in plaintext");
    }
    if client.starts_with(H2_PREFACE) || H2_PREFACE.starts_with(client) && client.len() >= 8 {
        return Detected::new(
            Protocol::H2c,
            "HTTP/2 prior-knowledge preface (h2c) in plaintext",
        );
    }
    if let Some(http) = http1_request(client) {
        let note = match &http.host {
            Some(h) => format!("HTTP/1.x {} request for {h} in plaintext", http.method),
            None => format!("HTTP/1.x {} request in plaintext", http.method),
        };
        let mut d = Detected::new(Protocol::Http1, note);
        d.http = Some(http);
        return d;
    }
    if resp(client) {
        return Detected::new(Protocol::Redis, "Redis RESP command in plaintext");
    }
    // STARTTLS and its relatives (SMTP, IMAP, POP3, FTP, NNTP, XMPP, LDAP).
    if let Some(d) = upgrade::detect(client, server) {
        return d;
    }
    if let Some(greeting_len) = mysql_greeting(server) {
        if client.len() >= 8 && client[3] == 1 {
            let len =
                usize::from(client[0]) | usize::from(client[1]) << 8 | usize::from(client[2]) << 16;
            let caps = u32::from_le_bytes([client[4], client[5], client[6], client[7]]);
            if len == 32 && caps & MYSQL_CLIENT_SSL != 0 {
                let mut d = Detected::new(Protocol::Mysql, "MySQL SSL request: TLS follows");
                d.tls_after = Some((4 + 32, greeting_len));
                return d;
            }
        }
        return Detected::new(Protocol::Mysql, "MySQL handshake in plaintext");
    }
    let (first, who) = if client.is_empty() {
        (server, "server")
    } else {
        (client, "client")
    };
    if first.is_empty() {
        let mut d = Detected::new(Protocol::Unknown, "no payload captured in either direction");
        d.recognised = false;
        return d;
    }
    if let Some(d) = upgrade::preamble_then_tls(client, server) {
        return d;
    }
    let (protocol, kind) = if printable_share(first) > 0.9 {
        (Protocol::Text, "text")
    } else {
        (Protocol::Binary, "binary data")
    };
    let mut d = Detected::new(protocol, format!("the {who} sent {kind} that is not TLS"));
    d.recognised = false;
    d
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn http_request_with_host() {
        let d = detect(
            b"GET /x HTTP/1.1\r\nhost: example-service-a:8080\r\n\r\n",
            b"",
        );
        assert_eq!(d.protocol, Protocol::Http1);
        let http = d.http.unwrap();
        assert_eq!(http.method, "GET");
        assert_eq!(http.host.as_deref(), Some("example-service-a:8080"));
    }

    #[test]
    fn h2c_preface() {
        assert_eq!(detect(H2_PREFACE, b"").protocol, Protocol::H2c);
    }

    #[test]
    fn postgres_upgrade_and_refusal() {
        let mut c = PG_SSL_REQUEST.to_vec();
        c.extend_from_slice(&[0x16, 3, 1, 0, 5, 1, 0, 0, 1, 0]);
        let d = detect(&c, b"S");
        assert_eq!(d.tls_after, Some((8, 1)));
        let d = detect(&PG_SSL_REQUEST, b"N");
        assert_eq!(d.tls_after, None);
        assert_eq!(d.protocol, Protocol::Postgres);
        let startup = [0, 0, 0, 41, 0, 3, 0, 0, b'u', b's', b'e', b'r', 0];
        assert_eq!(detect(&startup, b"R").protocol, Protocol::Postgres);
    }

    #[test]
    fn redis_and_ssh() {
        assert_eq!(
            detect(b"*1\r\n$4\r\nPING\r\n", b"+PONG\r\n").protocol,
            Protocol::Redis
        );
        let d = detect(b"SSH-2.0-OpenSSH_9.2\r\n", b"SSH-2.0-OpenSSH_9.2\r\n");
        assert!(d.encrypted);
    }

    #[test]
    fn smtp_starttls_offsets() {
        let client = b"EHLO c\r\nSTARTTLS\r\n\x16\x03\x01\x00\x05hello";
        let server = b"220 mx ESMTP\r\n250-mx\r\n250 STARTTLS\r\n220 2.0.0 Ready\r\n\x16\x03\x03";
        let d = detect(client, server);
        assert_eq!(d.protocol, Protocol::Smtp);
        let (c, s) = d.tls_after.unwrap();
        assert_eq!(&client[c..c + 1], b"\x16");
        assert_eq!(&server[s..s + 1], b"\x16");
        // A banner over two lines: its second `220 ` line is not the STARTTLS reply.
        let server = b"220-mx ESMTP\r\n220 mx ready\r\n250-mx\r\n250 STARTTLS\r\n220 2.0.0 Ready\r\n\x16\x03\x03";
        let (c, s) = detect(client, server).tls_after.unwrap();
        assert_eq!(&client[c..c + 1], b"\x16");
        assert_eq!(&server[s..s + 1], b"\x16");
    }

    #[test]
    fn unknown_bytes_are_plaintext_text_or_binary() {
        assert_eq!(detect(b"hello there\n", b"").protocol, Protocol::Text);
        assert_eq!(
            detect(&[0, 1, 2, 3, 200, 201], b"").protocol,
            Protocol::Binary
        );
        assert_eq!(detect(b"", b"").protocol, Protocol::Unknown);
    }
}
