//! TLS from the wire, without keys: record framing, the cleartext handshake of each
//! direction, and whether the client authenticated.
//!
//! TLS 1.2 shows everything that matters in cleartext: the server's
//! CertificateRequest and the client's Certificate (empty or not) and
//! CertificateVerify. TLS 1.3 encrypts both; what stays visible is the size of
//! the records the client sends after the ServerHello. With an AEAD tag of `t`
//! bytes and a hash of `h` bytes (32 for SHA-256 suites, 48 for SHA-384), the inner
//! plaintext of a record carrying one handshake message of `m` bytes is `m + 1`
//! (the content-type byte) and the record is `m + 1 + t` bytes long. The client's
//! first encrypted flight is then:
//!
//! | client sends | handshake bytes | as records (t = 16, h = 32) |
//! | --- | --- | --- |
//! | Finished only (not asked, or resumed) | `4 + h` = 36 | one record of 53 |
//! | empty Certificate + Finished (asked, has none) | `8 + 4 + h` = 44 | 61 coalesced, or 25 + 53 |
//! | Certificate + CertificateVerify + Finished | `8 + Σ(3 + len(cert) + 2) + 8 + len(sig) + 4 + h` | several hundred bytes and up |
//!
//! (`8` = 4-byte handshake header + 1-byte empty request context + 3-byte empty
//! certificate list.) The smallest real certificate is well over 150 bytes, so the
//! three cases never overlap. Records are not padded by the implementations we
//! measured (OpenSSL, rustls, Go); padded records fall back to a low-confidence
//! threshold.

use std::fmt::Write as _;

use serde::Serialize;

use super::{Confidence, SecurityClass, Side, ja4, wire::Reader};

pub const CT_CHANGE_CIPHER_SPEC: u8 = 20;
pub const CT_ALERT: u8 = 21;
pub const CT_HANDSHAKE: u8 = 22;
pub const CT_APPLICATION_DATA: u8 = 23;
pub const CT_HEARTBEAT: u8 = 24;

const HS_CLIENT_HELLO: u8 = 1;
const HS_SERVER_HELLO: u8 = 2;
const HS_CERTIFICATE: u8 = 11;
const HS_CERTIFICATE_REQUEST: u8 = 13;
const HS_SERVER_HELLO_DONE: u8 = 14;
const HS_CERTIFICATE_VERIFY: u8 = 15;
const HS_CLIENT_KEY_EXCHANGE: u8 = 16;

pub const EXT_SERVER_NAME: u16 = 0x0000;
pub const EXT_ALPN: u16 = 0x0010;
pub const EXT_SIGNATURE_ALGORITHMS: u16 = 0x000d;
pub const EXT_PRE_SHARED_KEY: u16 = 0x0029;
pub const EXT_EARLY_DATA: u16 = 0x002a;
pub const EXT_SUPPORTED_VERSIONS: u16 = 0x002b;

/// The ServerHello.random of a HelloRetryRequest (RFC 8446 4.1.3).
const HRR_RANDOM: [u8; 32] = [
    0xcf, 0x21, 0xad, 0x74, 0xe5, 0x9a, 0x61, 0x11, 0xbe, 0x1d, 0x8c, 0x02, 0x1e, 0x65, 0xb8, 0x91,
    0xc2, 0xa2, 0x11, 0x16, 0x7a, 0xbb, 0x8c, 0x5e, 0x07, 0x9e, 0x09, 0xe2, 0xc8, 0xa8, 0x33, 0x9c,
];

/// Largest record a compliant peer sends (2^14 + 2048 for TLS 1.2 ciphertext).
const MAX_RECORD: usize = 16384 + 2048;

/// Whether `b` starts with something that frames as a TLS handshake record.
pub fn starts_with_handshake(b: &[u8]) -> bool {
    b.len() >= 5 && b[0] == CT_HANDSHAKE && b[1] == 3 && b[2] <= 4 && {
        let len = usize::from(u16::from_be_bytes([b[3], b[4]]));
        len > 0 && len <= MAX_RECORD
    }
}

/// One record header as seen in a stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Record {
    pub content_type: u8,
    pub version: u16,
    /// Declared payload length.
    pub len: usize,
    /// Stream offset of the header.
    pub offset: usize,
    /// Payload bytes present in the capture (less than `len` for the last record
    /// of a cut-off capture).
    pub available: usize,
}

/// Splits a stream into records, stopping at the first header that is not TLS.
/// Returns the records and whether something that is not TLS was found.
pub fn split_records(bytes: &[u8]) -> (Vec<Record>, bool) {
    let mut out = Vec::new();
    let mut off = 0usize;
    while bytes.len() - off >= 5 {
        let h = &bytes[off..off + 5];
        let ct = h[0];
        let version = u16::from_be_bytes([h[1], h[2]]);
        let len = usize::from(u16::from_be_bytes([h[3], h[4]]));
        if !(CT_CHANGE_CIPHER_SPEC..=CT_HEARTBEAT).contains(&ct) || h[1] != 3 || len > MAX_RECORD {
            return (out, true);
        }
        let available = len.min(bytes.len() - off - 5);
        out.push(Record {
            content_type: ct,
            version,
            len,
            offset: off,
            available,
        });
        off += 5 + len;
        if off > bytes.len() {
            break;
        }
    }
    (out, false)
}

/// A handshake message from the cleartext handshake bytes of one direction.
#[derive(Debug, Clone, Copy)]
pub struct HandshakeMsg<'a> {
    pub msg_type: u8,
    pub body: &'a [u8],
    /// False when the capture ends inside the message.
    pub complete: bool,
}

/// Splits concatenated handshake bytes into messages.
pub fn handshake_messages(buf: &[u8]) -> Vec<HandshakeMsg<'_>> {
    let mut out = Vec::new();
    let mut r = Reader::new(buf);
    while r.remaining() >= 4 {
        let Some(msg_type) = r.u8() else { break };
        let Some(len) = r.u24() else { break };
        let len = len as usize;
        if r.remaining() >= len {
            let Some(body) = r.take(len) else { break };
            out.push(HandshakeMsg {
                msg_type,
                body,
                complete: true,
            });
        } else {
            out.push(HandshakeMsg {
                msg_type,
                body: r.rest(),
                complete: false,
            });
            break;
        }
    }
    out
}

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

/// Facts about a client certificate.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CertInfo {
    pub subject: String,
    pub issuer: String,
    /// URI SANs: SPIFFE identities (`spiffe://trust-domain/ns/.../sa/...`).
    pub uri_sans: Vec<String>,
    pub dns_sans: Vec<String>,
    /// RFC 3339.
    pub not_after: String,
    /// Certificates the client sent (leaf first).
    pub chain_length: usize,
}

/// Parses the leaf of a DER chain. `None` if the leaf is not a certificate.
pub fn parse_cert(leaf: &[u8], chain_length: usize) -> Option<CertInfo> {
    use x509_parser::prelude::{FromDer as _, GeneralName, X509Certificate};
    let (_, cert) = X509Certificate::from_der(leaf).ok()?;
    let mut uri_sans = Vec::new();
    let mut dns_sans = Vec::new();
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for name in &san.value.general_names {
            match name {
                GeneralName::URI(u) => uri_sans.push((*u).to_owned()),
                GeneralName::DNSName(d) => dns_sans.push((*d).to_owned()),
                _ => {}
            }
        }
    }
    let ts = cert.validity().not_after.timestamp();
    let not_after = u64::try_from(ts)
        .ok()
        .map(|s| {
            humantime::format_rfc3339_seconds(
                std::time::UNIX_EPOCH + std::time::Duration::from_secs(s),
            )
            .to_string()
        })
        .unwrap_or_else(|| ts.to_string());
    Some(CertInfo {
        subject: cert.subject().to_string(),
        issuer: cert.issuer().to_string(),
        uri_sans,
        dns_sans,
        not_after,
        chain_length,
    })
}

/// The certificate list of a TLS 1.2 Certificate message: (entries, leaf DER).
/// A list cut off by the capture still says whether it is empty.
fn tls12_certificate_list(body: &[u8]) -> (Option<usize>, Option<&[u8]>) {
    let mut r = Reader::new(body);
    let Some(total) = r.u24() else {
        return (None, None);
    };
    if total == 0 {
        return (Some(0), None);
    }
    let mut list = Reader::new(r.rest());
    let mut count = 0usize;
    let mut leaf = None;
    while let Some(cert) = list.vec24() {
        if leaf.is_none() {
            leaf = Some(cert);
        }
        count += 1;
    }
    // A non-empty list whose first entry is cut off still counts one.
    (Some(count.max(1)), leaf)
}

/// How the client authenticated.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ClientAuth {
    /// The client sent a certificate (and proved it owns the key).
    Certificate,
    /// The server asked; the client sent an empty Certificate.
    EmptyCertificate,
    /// The client sent no certificate and was not seen to be asked.
    None,
    /// Session resumption: no certificate flight, the original handshake decides.
    Resumed,
    /// Not visible in what was captured.
    Unknown,
}

/// Everything the handshake shows.
#[derive(Debug, Clone, Serialize)]
pub struct TlsInfo {
    /// Negotiated version: `1.3`, `1.2`, ... (from `supported_versions`).
    pub version: Option<String>,
    pub cipher_suite: Option<String>,
    pub sni: Option<String>,
    pub alpn_offered: Vec<String>,
    /// Visible in TLS 1.2 ServerHellos; encrypted in TLS 1.3.
    pub alpn_selected: Option<String>,
    pub ja4: Option<String>,
    pub client_auth: ClientAuth,
    /// TLS 1.2: whether the server sent a CertificateRequest (encrypted in TLS 1.3).
    pub certificate_requested: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_certificate: Option<CertInfo>,
    /// TLS 1.3: handshake bytes of the client's first encrypted flight.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_flight_bytes: Option<usize>,
    pub resumed: bool,
    pub hello_retry: bool,
    pub handshake_complete: bool,
}

/// The TLS part of a classification.
#[derive(Debug, Clone)]
pub struct TlsAnalysis {
    pub info: TlsInfo,
    pub class: SecurityClass,
    pub confidence: Confidence,
    pub evidence: String,
    /// The server answered after the client's flight with something other than an alert.
    pub server_answered: Option<bool>,
    /// The server sent a fatal alert (cleartext, or an alert-sized TLS 1.3 record).
    pub server_alert: bool,
    /// The client aborted the handshake with an alert (e.g. it rejected the
    /// server's certificate).
    pub client_alert: bool,
    pub client_data_after_handshake: bool,
}

/// One direction's records and cleartext handshake bytes.
struct Direction {
    records: Vec<Record>,
    /// Handshake bytes before the first ChangeCipherSpec.
    hs_before_ccs: Vec<u8>,
    /// Handshake bytes of every handshake record.
    hs_all: Vec<u8>,
    first_ccs: Option<usize>,
}

impl Direction {
    fn new(bytes: &[u8]) -> Self {
        let (records, _) = split_records(bytes);
        let mut hs_before_ccs = Vec::new();
        let mut hs_all = Vec::new();
        let mut first_ccs = None;
        for (i, rec) in records.iter().enumerate() {
            let body = &bytes[rec.offset + 5..rec.offset + 5 + rec.available];
            match rec.content_type {
                CT_CHANGE_CIPHER_SPEC => {
                    first_ccs.get_or_insert(i);
                }
                CT_HANDSHAKE => {
                    if first_ccs.is_none() {
                        hs_before_ccs.extend_from_slice(body);
                    }
                    hs_all.extend_from_slice(body);
                }
                _ => {}
            }
        }
        Self {
            records,
            hs_before_ccs,
            hs_all,
            first_ccs,
        }
    }

    fn alerts_before_ccs(&self) -> bool {
        self.records
            .iter()
            .take(self.first_ccs.unwrap_or(usize::MAX))
            .any(|r| r.content_type == CT_ALERT)
    }
}

fn version_name(v: u16) -> String {
    match v {
        0x0304 => "1.3".into(),
        0x0303 => "1.2".into(),
        0x0302 => "1.1".into(),
        0x0301 => "1.0".into(),
        0x0300 => "ssl3".into(),
        other => format!("0x{other:04x}"),
    }
}

pub fn cipher_name(id: u16) -> String {
    tls_parser::TlsCipherSuite::from_id(id)
        .map_or_else(|| format!("0x{id:04x}"), |c| c.name.to_owned())
}

/// (hash length, AEAD tag length) of a TLS 1.3 cipher suite.
fn tls13_sizes(cipher: u16) -> Option<(usize, usize)> {
    match cipher {
        0x1301 | 0x1303 | 0x1304 => Some((32, 16)),
        0x1302 => Some((48, 16)),
        0x1305 => Some((32, 8)),
        _ => None,
    }
}

/// Smallest plausible Certificate + CertificateVerify, in handshake bytes.
const MIN_CERT_FLIGHT: usize = 150;

/// Analyzes a connection whose client stream starts with a TLS handshake record.
/// `client`/`server` are the streams from the start of TLS (after any STARTTLS
/// preamble).
pub fn analyze(client: &Side<'_>, server: &Side<'_>) -> TlsAnalysis {
    let c = Direction::new(client.bytes);
    let s = Direction::new(server.bytes);

    let server_hellos: Vec<ServerHello> = handshake_messages(&s.hs_all)
        .iter()
        .filter(|m| m.msg_type == HS_SERVER_HELLO && m.complete)
        .filter_map(|m| parse_server_hello(m.body))
        .collect();
    let hello_retry = server_hellos.iter().any(|h| h.hello_retry);
    let sh = server_hellos.iter().find(|h| !h.hello_retry).cloned();
    let version = sh.as_ref().map(ServerHello::version);
    let tls13 = version == Some(0x0304) || (sh.is_none() && hello_retry);

    // TLS 1.2 encrypts handshake records after ChangeCipherSpec; TLS 1.3 never sends
    // encrypted content as handshake records, and its compatibility CCS may precede
    // a second ClientHello.
    let client_hs = if tls13 { &c.hs_all } else { &c.hs_before_ccs };
    let client_msgs = handshake_messages(client_hs);
    let hellos: Vec<ClientHello> = client_msgs
        .iter()
        .filter(|m| m.msg_type == HS_CLIENT_HELLO)
        .filter_map(|m| parse_client_hello(m.body))
        .collect();
    let first_hello = hellos.first();

    let mut info = TlsInfo {
        version: version.map(version_name),
        cipher_suite: sh.as_ref().map(|h| cipher_name(h.cipher)),
        sni: first_hello.and_then(|h| h.sni.clone()),
        alpn_offered: first_hello
            .map(|h| {
                h.alpn
                    .iter()
                    .map(|p| String::from_utf8_lossy(p).into_owned())
                    .collect()
            })
            .unwrap_or_default(),
        alpn_selected: sh
            .as_ref()
            .and_then(|h| h.alpn.as_ref())
            .map(|p| String::from_utf8_lossy(p).into_owned()),
        ja4: first_hello.map(ja4::ja4),
        client_auth: ClientAuth::Unknown,
        certificate_requested: None,
        client_certificate: None,
        client_flight_bytes: None,
        resumed: false,
        hello_retry,
        handshake_complete: false,
    };

    let Some(sh) = sh else {
        let server_alert = s.alerts_before_ccs();
        let evidence = if server_alert {
            "TLS ClientHello answered with an alert, no ServerHello".to_owned()
        } else if server.bytes.is_empty() {
            "TLS ClientHello, no answer from the server".to_owned()
        } else {
            "TLS ClientHello, no ServerHello captured".to_owned()
        };
        // The client offered TLS and got no session: nothing was protected, but
        // nothing flowed either. What it was is the client's intent: TLS.
        return TlsAnalysis {
            info,
            class: SecurityClass::Unknown,
            confidence: Confidence::Low,
            evidence,
            server_answered: Some(false),
            server_alert,
            client_alert: c.alerts_before_ccs(),
            client_data_after_handshake: false,
        };
    };

    if tls13 {
        analyze_tls13(client, server, &c, &s, &sh, info)
    } else {
        info.resumed = is_tls12_resumption(&s);
        analyze_tls12(&c, &s, &sh, info)
    }
}

/// TLS 1.2 abbreviated handshake: ChangeCipherSpec follows the ServerHello directly.
fn is_tls12_resumption(s: &Direction) -> bool {
    let msgs = handshake_messages(&s.hs_before_ccs);
    s.first_ccs.is_some()
        && msgs.iter().any(|m| m.msg_type == HS_SERVER_HELLO)
        && !msgs
            .iter()
            .any(|m| m.msg_type == HS_CERTIFICATE || m.msg_type == HS_SERVER_HELLO_DONE)
}

fn analyze_tls12(
    c: &Direction,
    s: &Direction,
    _sh: &ServerHello,
    mut info: TlsInfo,
) -> TlsAnalysis {
    let server_msgs = handshake_messages(&s.hs_before_ccs);
    let client_msgs = handshake_messages(&c.hs_before_ccs);
    let requested = server_msgs
        .iter()
        .any(|m| m.msg_type == HS_CERTIFICATE_REQUEST);
    let server_done = server_msgs
        .iter()
        .any(|m| m.msg_type == HS_SERVER_HELLO_DONE);
    if server_done || requested {
        info.certificate_requested = Some(requested);
    }
    let client_cert = client_msgs.iter().find(|m| m.msg_type == HS_CERTIFICATE);
    let client_kx = client_msgs
        .iter()
        .any(|m| m.msg_type == HS_CLIENT_KEY_EXCHANGE);
    let client_verify = client_msgs
        .iter()
        .any(|m| m.msg_type == HS_CERTIFICATE_VERIFY);
    info.handshake_complete = c.first_ccs.is_some() && s.first_ccs.is_some();
    let server_alert = s.alerts_before_ccs();
    let app = |d: &Direction| {
        d.records
            .iter()
            .any(|r| r.content_type == CT_APPLICATION_DATA)
    };
    let server_answered = Some(app(s));
    let client_data = app(c);
    // An alert from the client with no data of its own: it aborted (a close_notify
    // after a finished exchange comes with data and does not count).
    let client_alert = c.alerts_before_ccs()
        || (!client_data && c.records.iter().any(|r| r.content_type == CT_ALERT));

    let (class, confidence, evidence) = if info.resumed {
        info.client_auth = ClientAuth::Resumed;
        (
            SecurityClass::Unknown,
            Confidence::High,
            "TLS 1.2 session resumed (abbreviated handshake): no certificates are exchanged"
                .to_owned(),
        )
    } else if let Some(msg) = client_cert {
        let (count, leaf) = tls12_certificate_list(msg.body);
        match count {
            Some(0) => {
                info.client_auth = ClientAuth::EmptyCertificate;
                (
                    SecurityClass::Tls,
                    Confidence::High,
                    "TLS 1.2: the server sent a CertificateRequest and the client answered with an empty Certificate".to_owned(),
                )
            }
            Some(n) => {
                info.client_auth = ClientAuth::Certificate;
                info.client_certificate = leaf.and_then(|der| parse_cert(der, n));
                let mut ev = format!(
                    "TLS 1.2: the client sent a Certificate message with {n} certificate(s)"
                );
                if client_verify {
                    ev.push_str(" and a CertificateVerify");
                }
                if let Some(cert) = &info.client_certificate {
                    let _ = write!(ev, " (subject {})", cert.subject);
                }
                (SecurityClass::MutualTls, Confidence::High, ev)
            }
            None => (
                SecurityClass::Unknown,
                Confidence::Low,
                "TLS 1.2: the client's Certificate message was cut off by the capture".to_owned(),
            ),
        }
    } else if client_kx {
        info.client_auth = ClientAuth::None;
        let ev = if requested {
            "TLS 1.2: the server asked for a certificate; the client sent none (no Certificate message)"
        } else {
            "TLS 1.2: no CertificateRequest; the client's key exchange carries no certificate"
        };
        (SecurityClass::Tls, Confidence::High, ev.to_owned())
    } else if server_done && !requested {
        info.client_auth = ClientAuth::None;
        (
            SecurityClass::Tls,
            Confidence::High,
            "TLS 1.2: the server's flight ended (ServerHelloDone) without a CertificateRequest"
                .to_owned(),
        )
    } else {
        (
            SecurityClass::Unknown,
            Confidence::Low,
            "TLS 1.2: the handshake was not captured far enough to see client authentication"
                .to_owned(),
        )
    };
    TlsAnalysis {
        info,
        class,
        confidence,
        evidence,
        server_answered,
        server_alert,
        client_alert,
        client_data_after_handshake: client_data,
    }
}

fn analyze_tls13(
    client: &Side<'_>,
    server: &Side<'_>,
    c: &Direction,
    s: &Direction,
    sh: &ServerHello,
    mut info: TlsInfo,
) -> TlsAnalysis {
    let (hash, tag, sizes_known) = match tls13_sizes(sh.cipher) {
        Some((h, t)) => (h, t, true),
        None => (32, 16, false),
    };
    let finished = 4 + hash;
    let inner = |r: &Record| r.len.checked_sub(tag + 1);
    // Records the client encrypted: everything it sent as application data.
    let enc: Vec<&Record> = c
        .records
        .iter()
        .filter(|r| r.content_type == CT_APPLICATION_DATA)
        .collect();

    info.resumed = sh.psk_accepted;
    let mut flight_end: Option<usize> = None; // index into `enc` of the record that ends the flight
    let (class, confidence, evidence) = if sh.psk_accepted {
        info.client_auth = ClientAuth::Resumed;
        flight_end = enc.iter().position(|r| inner(r) == Some(finished));
        (
            SecurityClass::Unknown,
            Confidence::High,
            "TLS 1.3 session resumed (pre_shared_key accepted): no certificate flight is sent"
                .to_owned(),
        )
    } else if let Some(first) = enc.first() {
        let first_inner = inner(first).unwrap_or(0);
        if first_inner == 2 {
            (
                SecurityClass::Unknown,
                Confidence::Medium,
                "TLS 1.3: the client answered the server's flight with an alert and no Finished (it aborted the handshake)"
                    .to_owned(),
            )
        } else if first_inner == finished {
            flight_end = Some(0);
            info.client_auth = ClientAuth::None;
            info.client_flight_bytes = Some(first_inner);
            (
                SecurityClass::Tls,
                Confidence::High,
                format!(
                    "TLS 1.3: the client's first encrypted flight is a bare Finished ({first_inner} bytes = 4 + {hash}, in a record of {}), no certificate",
                    first.len
                ),
            )
        } else if first_inner == finished + 8 {
            flight_end = Some(0);
            info.client_auth = ClientAuth::EmptyCertificate;
            info.client_flight_bytes = Some(first_inner);
            (
                SecurityClass::Tls,
                Confidence::High,
                format!(
                    "TLS 1.3: the client's first encrypted flight is an empty Certificate + Finished ({first_inner} bytes = 8 + 4 + {hash}, in a record of {})",
                    first.len
                ),
            )
        } else if first_inner == 8 && enc.get(1).and_then(|r| inner(r)) == Some(finished) {
            flight_end = Some(1);
            info.client_auth = ClientAuth::EmptyCertificate;
            info.client_flight_bytes = Some(8 + finished);
            (
                SecurityClass::Tls,
                Confidence::High,
                "TLS 1.3: the client sent an empty Certificate, then Finished".to_owned(),
            )
        } else {
            // Certificate and CertificateVerify in their own records, then Finished;
            // or everything coalesced into one record.
            let end = enc.iter().take(16).position(|r| inner(r) == Some(finished));
            let (total, coalesced) = match end {
                Some(i) if i > 0 => (
                    enc[..=i].iter().filter_map(|r| inner(r)).sum::<usize>(),
                    false,
                ),
                _ => (first_inner, true),
            };
            flight_end = Some(end.filter(|&i| i > 0).unwrap_or(0));
            info.client_flight_bytes = Some(total);
            let cert_part = total.saturating_sub(finished);
            if cert_part >= MIN_CERT_FLIGHT {
                info.client_auth = ClientAuth::Certificate;
                let conf = if coalesced || !sizes_known {
                    Confidence::Medium
                } else {
                    Confidence::High
                };
                (
                    SecurityClass::MutualTls,
                    conf,
                    format!(
                        "TLS 1.3: the client's first encrypted flight carries {total} handshake bytes: \
                         Certificate + CertificateVerify ({cert_part} bytes) + Finished ({finished})"
                    ),
                )
            } else {
                (
                    SecurityClass::Unknown,
                    Confidence::Low,
                    format!(
                        "TLS 1.3: the client's first encrypted flight ({total} bytes) matches neither a bare \
                         Finished ({finished}) nor a certificate flight"
                    ),
                )
            }
        }
    } else {
        (
            SecurityClass::Unknown,
            Confidence::Low,
            "TLS 1.3: the client's encrypted flight was not captured".to_owned(),
        )
    };
    info.handshake_complete = flight_end.is_some();

    let alert_len = 2 + 1 + tag;
    // What the server did after the client's flight: timestamps of segments order the
    // two directions.
    let mut server_answered = None;
    let mut server_alert = false;
    if let Some(end) = flight_end {
        let flight_ts = client.ts_at(enc[end].offset);
        let after: Vec<&Record> = s
            .records
            .iter()
            .filter(|r| r.content_type == CT_APPLICATION_DATA || r.content_type == CT_ALERT)
            .filter(|r| match (flight_ts, server.ts_at(r.offset)) {
                (Some(f), Some(t)) => t > f,
                _ => false,
            })
            .collect();
        if flight_ts.is_some() {
            server_alert = after
                .iter()
                .any(|r| r.content_type == CT_ALERT || r.len == alert_len);
            server_answered = Some(
                after
                    .iter()
                    .any(|r| r.content_type == CT_APPLICATION_DATA && r.len != alert_len),
            );
        }
    }
    if s.alerts_before_ccs() {
        server_alert = true;
    }
    // After its flight the client sends data, or (giving up, e.g. on a certificate it
    // does not accept) only an alert-sized record.
    let post: &[&Record] = flight_end.map_or(&[], |end| enc.get(end + 1..).unwrap_or(&[]));
    let client_data = post.iter().any(|r| r.len != alert_len);
    let client_alert = c.alerts_before_ccs()
        || (!sh.psk_accepted
            && flight_end.is_none()
            && enc.first().and_then(|r| inner(r)) == Some(2))
        || (!client_data && !post.is_empty());
    TlsAnalysis {
        info,
        class,
        confidence,
        evidence,
        server_answered,
        server_alert,
        client_alert,
        client_data_after_handshake: client_data,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(ct: u8, body: &[u8]) -> Vec<u8> {
        let mut v = vec![ct, 3, 3];
        v.extend_from_slice(&(body.len() as u16).to_be_bytes());
        v.extend_from_slice(body);
        v
    }

    fn hs(msg_type: u8, body: &[u8]) -> Vec<u8> {
        let mut v = vec![msg_type];
        v.extend_from_slice(&(body.len() as u32).to_be_bytes()[1..]);
        v.extend_from_slice(body);
        v
    }

    #[test]
    fn records_stop_at_garbage() {
        let mut b = record(CT_HANDSHAKE, &[1, 2, 3]);
        b.extend_from_slice(b"GET / HTTP/1.1\r\n");
        let (recs, garbage) = split_records(&b);
        assert_eq!(recs.len(), 1);
        assert!(garbage);
    }

    #[test]
    fn cut_off_record_reports_what_is_available() {
        let b = record(CT_APPLICATION_DATA, &[0; 100]);
        let (recs, garbage) = split_records(&b[..50]);
        assert_eq!(recs[0].len, 100);
        assert_eq!(recs[0].available, 45);
        assert!(!garbage);
    }

    #[test]
    fn handshake_messages_span_records_and_cut_offs() {
        let mut buf = hs(HS_CLIENT_HELLO, &[9; 10]);
        buf.extend_from_slice(&hs(HS_CERTIFICATE, &[7; 20])[..12]);
        let msgs = handshake_messages(&buf);
        assert_eq!(msgs.len(), 2);
        assert!(msgs[0].complete);
        assert!(!msgs[1].complete);
        assert_eq!(msgs[1].body.len(), 8);
    }

    #[test]
    fn tls12_certificate_lists() {
        assert_eq!(tls12_certificate_list(&[0, 0, 0]).0, Some(0));
        let body = [0, 0, 6, 0, 0, 3, 1, 2, 3];
        let (n, leaf) = tls12_certificate_list(&body);
        assert_eq!(n, Some(1));
        assert_eq!(leaf, Some(&[1, 2, 3][..]));
        assert_eq!(tls12_certificate_list(&[0, 0]).0, None);
    }

    #[test]
    fn grease_values() {
        assert!(is_grease(0x0a0a));
        assert!(is_grease(0xfafa));
        assert!(!is_grease(0x0a1a));
        assert!(!is_grease(0x1301));
    }
}
