//! TLS from the wire, without keys: record framing, the cleartext handshake of each
//! direction, and whether the client authenticated.
//!
//! TLS 1.2 shows everything that matters in cleartext: the server's
//! CertificateRequest and the client's Certificate (empty or not) and
//! CertificateVerify ([`tls12`]). TLS 1.3 encrypts both; what stays visible is the
//! size of the records the client sends after the ServerHello, decided by ranges
//! that allow for record padding and coalescing ([`tls13`]). ClientHellos in the
//! SSLv2-compatible format (RFC 5246 appendix E.2) are read too ([`hello`]).

mod cert;
mod hello;
mod tls12;
pub mod tls13;

use serde::Serialize;

use super::{Confidence, SecurityClass, Side, ja4, wire::Reader};

use cert::tls12_certificate_list;
pub use cert::{CertInfo, parse_cert};
pub use hello::{
    ClientHello, ServerHello, is_grease, parse_client_hello, parse_server_hello,
    parse_sslv2_client_hello, parse_sslv2_server_hello,
};

pub const CT_CHANGE_CIPHER_SPEC: u8 = 20;
pub const CT_ALERT: u8 = 21;
pub const CT_HANDSHAKE: u8 = 22;
pub const CT_APPLICATION_DATA: u8 = 23;
pub const CT_HEARTBEAT: u8 = 24;

pub const HS_CLIENT_HELLO: u8 = 1;
pub const HS_SERVER_HELLO: u8 = 2;
const HS_NEW_SESSION_TICKET: u8 = 4;
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
pub const EXT_SESSION_TICKET: u16 = 0x0023;
pub const EXT_POST_HANDSHAKE_AUTH: u16 = 0x0031;

/// Largest record a compliant peer sends (2^14 + 2048 for TLS 1.2 ciphertext).
const MAX_RECORD: usize = 16384 + 2048;

/// Whether `b` starts with something that frames as a TLS handshake record.
pub fn starts_with_handshake(b: &[u8]) -> bool {
    b.len() >= 5 && b[0] == CT_HANDSHAKE && b[1] == 3 && b[2] <= 4 && {
        let len = usize::from(u16::from_be_bytes([b[3], b[4]]));
        len > 0 && len <= MAX_RECORD
    }
}

/// Whether `b` starts with a handshake record whose first message is of type
/// `msg_type` (a ClientHello or ServerHello at the start of a stream).
pub fn starts_with_hello(b: &[u8], msg_type: u8) -> bool {
    starts_with_handshake(b) && b.get(5) == Some(&msg_type)
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
    /// TLS 1.3: the client offered post-handshake authentication, and sent more
    /// after the handshake.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub post_handshake_auth: bool,
    /// The ClientHello came in the SSLv2-compatible record format.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub sslv2_client_hello: bool,
    /// What ties a resumption to the full handshake it resumes (hashes of TLS 1.2
    /// session ids and tickets). Not printed.
    #[serde(skip)]
    pub session: SessionKeys,
}

/// Hashes of the TLS 1.2 session identifiers a handshake issued (full) or
/// presented (resumed): the session id of the ServerHello, and the ticket of a
/// NewSessionTicket (full) or of the client's SessionTicket extension (resumed).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SessionKeys {
    pub session_id: Option<u64>,
    pub ticket: Option<u64>,
}

fn hash_bytes(b: &[u8]) -> Option<u64> {
    use std::hash::{Hash as _, Hasher as _};
    if b.is_empty() {
        return None;
    }
    let mut h = std::hash::DefaultHasher::new();
    b.hash(&mut h);
    Some(h.finish())
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

/// Whether a stream starts with a TLS ClientHello: a handshake record, or a
/// ClientHello in the SSLv2-compatible format.
pub fn starts_with_client_hello(b: &[u8]) -> bool {
    starts_with_hello(b, HS_CLIENT_HELLO) || parse_sslv2_client_hello(b).is_some()
}

/// Analyzes a connection whose client stream starts with a TLS handshake record
/// (or an SSLv2-format ClientHello). `client`/`server` are the streams from the
/// start of TLS (after any STARTTLS preamble).
pub fn analyze(client: &Side<'_>, server: &Side<'_>) -> TlsAnalysis {
    // An SSLv2-format ClientHello is one record of its own framing; what follows
    // it is ordinary TLS records.
    let v2 = parse_sslv2_client_hello(client.bytes);
    let client = match &v2 {
        Some((_, len)) => client.from(*len),
        None => *client,
    };
    let client = &client;
    let c = Direction::new(client.bytes);
    let s = Direction::new(server.bytes);

    let server_msgs = handshake_messages(&s.hs_all);
    let server_hellos: Vec<ServerHello> = server_msgs
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
    let mut hellos: Vec<ClientHello> = client_msgs
        .iter()
        .filter(|m| m.msg_type == HS_CLIENT_HELLO)
        .filter_map(|m| parse_client_hello(m.body))
        .collect();
    if let Some((ch, _)) = &v2 {
        hellos.insert(0, ch.clone());
    }
    let first_hello = hellos.first();
    let last_hello = hellos.last();

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
        // JA4 is defined on the TLS record format's ClientHello.
        ja4: first_hello.filter(|_| v2.is_none()).map(ja4::ja4),
        client_auth: ClientAuth::Unknown,
        certificate_requested: None,
        client_certificate: None,
        client_flight_bytes: None,
        resumed: false,
        hello_retry,
        handshake_complete: false,
        post_handshake_auth: false,
        sslv2_client_hello: v2.is_some(),
        session: SessionKeys::default(),
    };

    let Some(sh) = sh else {
        let server_alert = s.alerts_before_ccs();
        let evidence = if server_alert {
            "TLS ClientHello answered with an alert, no ServerHello".to_owned()
        } else if server.bytes.is_empty() {
            "TLS ClientHello, no answer from the server".to_owned()
        } else if parse_sslv2_server_hello(server.bytes) {
            "SSL 2.0: the server answered with an SSLv2 ServerHello (an obsolete protocol, not analysed)"
                .to_owned()
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

    let mut a = if tls13 {
        let pha = last_hello.is_some_and(|h| h.post_handshake_auth);
        tls13::analyze_tls13(client, server, &c, &s, &sh, pha, info)
    } else {
        info.resumed = tls12::is_tls12_resumption(&s);
        // What ties a later resumption to this handshake, or this one to an
        // earlier: the session id the server chose or echoed, and the ticket it
        // issued (full handshake) or the client presented (resumption).
        let issued_ticket = server_msgs
            .iter()
            .find(|m| m.msg_type == HS_NEW_SESSION_TICKET && m.complete)
            .and_then(|m| m.body.get(4..))
            .and_then(|b| Reader::new(b).vec16())
            .and_then(hash_bytes);
        info.session = SessionKeys {
            session_id: hash_bytes(&sh.session_id),
            ticket: if info.resumed {
                last_hello.and_then(|h| hash_bytes(&h.session_ticket))
            } else {
                issued_ticket
            },
        };
        tls12::analyze_tls12(&c, &s, &sh, info)
    };
    if v2.is_some() {
        a.evidence = format!(
            "SSLv2-format ClientHello (RFC 5246 E.2) negotiated into {}; {}",
            a.info.version.as_deref().unwrap_or("TLS"),
            a.evidence
        );
    }
    a
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
    fn grease_values() {
        assert!(is_grease(0x0a0a));
        assert!(is_grease(0xfafa));
        assert!(!is_grease(0x0a1a));
        assert!(!is_grease(0x1301));
    }
}
