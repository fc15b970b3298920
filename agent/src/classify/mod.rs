//! Classification of a connection from its captured byte streams: plaintext,
//! one-way TLS or mutual TLS, with the evidence that decided it.
//!
//! A pure function of bytes: no I/O, no clock. The same code runs in the live
//! agent, on pcap files (`mtls-auditor classify --pcap`) and under the fuzzers.
//! The TLS 1.3 size arithmetic is documented in [`tls`].

pub mod ja4;
pub mod openvpn;
pub mod plaintext;
pub mod tls;
pub mod tunnel;
pub mod upgrade;
pub mod wire;

use std::collections::HashMap;

use serde::Serialize;

pub use plaintext::HttpInfo;
pub use tls::{CertInfo, ClientAuth, TlsInfo};
pub use tunnel::{Tunnel, TunnelKind};

/// The observed security of a connection (the `connection_security_policy` label).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SecurityClass {
    MutualTls,
    Tls,
    None,
    Unknown,
}

impl SecurityClass {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::MutualTls => "mutual_tls",
            Self::Tls => "tls",
            Self::None => "none",
            Self::Unknown => "unknown",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Confidence {
    Low,
    Medium,
    High,
}

/// The application protocol recognised on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Protocol {
    Tls,
    Http1,
    H2c,
    Postgres,
    Mysql,
    Redis,
    Smtp,
    Imap,
    Pop3,
    Ftp,
    Nntp,
    Xmpp,
    Ldap,
    /// A SOCKS 4/5 proxy negotiation.
    Socks,
    /// OpenVPN over TCP.
    Openvpn,
    Ssh,
    /// Printable bytes of no protocol we know.
    Text,
    /// Binary bytes of no protocol we know.
    Binary,
    Unknown,
}

/// How the connection ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// Data flowed both ways.
    Completed,
    /// The server closed or reset the connection (or sent only an alert) before
    /// answering: the policy rejected it.
    ServerRefused,
    /// The client closed before the exchange completed.
    ClientGaveUp,
    /// Data flowed one way only, then the connection closed.
    OneWay,
    /// Still open.
    Open,
    /// The capture does not show the start of the connection.
    Incomplete,
}

/// Service-mesh markers seen in the handshake.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum MeshMarker {
    /// Istio sidecar ALPN (`istio`, `istio-peer-exchange`, `istio-http/1.0`,
    /// `istio-http/1.1`, `istio-h2`) or an Istio `outbound_.` SNI.
    IstioSidecar,
    /// Istio ambient HBONE (TLS to port 15008).
    IstioHbone,
    /// Linkerd identity SNI or ALPN.
    Linkerd,
}

/// Which end of the connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Party {
    Client,
    Server,
}

/// One direction as captured: the bytes from stream offset `base` on.
#[derive(Debug, Clone, Copy, Default)]
pub struct Side<'a> {
    /// Contiguous bytes from offset `base` (0 for a whole stream).
    pub bytes: &'a [u8],
    /// (stream offset, monotonic ns) of segment starts, ascending by offset.
    pub chunks: &'a [(u32, u64)],
    pub base: usize,
    /// The capture budget cut this direction short.
    pub truncated: bool,
    /// The capture started after the beginning of the stream.
    pub midstream: bool,
}

impl<'a> Side<'a> {
    pub fn new(bytes: &'a [u8]) -> Self {
        Self {
            bytes,
            ..Self::default()
        }
    }

    /// When the byte at `offset` (relative to this side) was seen.
    pub fn ts_at(&self, offset: usize) -> Option<u64> {
        let abs = self.base + offset;
        self.chunks
            .iter()
            .rev()
            .find(|(o, _)| *o as usize <= abs)
            .map(|&(_, ts)| ts)
    }

    /// This side from `offset` on.
    fn from(&self, offset: usize) -> Side<'a> {
        Side {
            bytes: self.bytes.get(offset..).unwrap_or(&[]),
            base: self.base + offset,
            ..*self
        }
    }
}

/// How the connection ended, as far as it is known.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Closing {
    pub closed: bool,
    /// Which end closed (FIN) or reset first.
    pub first: Option<Party>,
    /// Which end sent a RST, if one was seen.
    pub reset_by: Option<Party>,
}

/// Everything the classifier looks at.
#[derive(Debug, Clone, Copy, Default)]
pub struct ConnInput<'a> {
    pub client: Side<'a>,
    pub server: Side<'a>,
    pub server_port: u16,
    pub closing: Closing,
    /// Some of the connection's bytes or events never reached the agent (ring
    /// buffer full, a hole in a stream): silence on the wire proves nothing.
    pub lost: bool,
}

/// The verdict of the bytes.
#[derive(Debug, Clone, Serialize)]
pub struct Classification {
    /// `mutual_tls`, `tls`, `none` or `unknown`.
    pub connection_security_policy: SecurityClass,
    pub confidence: Confidence,
    /// Why, in one sentence.
    pub evidence: String,
    pub protocol: Protocol,
    pub outcome: Outcome,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls: Option<TlsInfo>,
    /// The cleartext protocol that upgraded to TLS (PostgreSQL, MySQL, SMTP, IMAP,
    /// POP3, FTP, NNTP, XMPP, LDAP; `text`/`binary` for a preamble of no known
    /// protocol).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub starttls: Option<Protocol>,
    /// The proxy tunnel the connection went through (HTTP CONNECT, SOCKS, with the
    /// target the client asked for), or that carries its TLS (OpenVPN).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tunnel: Option<Tunnel>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub http: Option<HttpInfo>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mesh: Option<MeshMarker>,
}

impl Classification {
    /// Whether more bytes of the connection cannot change this classification: the
    /// exchange completed both ways, and the protocol is TLS with its class known
    /// (or a resumed session), or one with no in-band upgrade to TLS (HTTP/1.x, h2c,
    /// Redis) or SSH. Protocols that can still upgrade (PostgreSQL, MySQL, SMTP
    /// before STARTTLS) and unrecognised bytes are never settled: the agent keeps
    /// capturing them up to the budget.
    pub fn is_settled(&self) -> bool {
        if self.outcome != Outcome::Completed {
            return false;
        }
        match self.protocol {
            Protocol::Tls => {
                // A client that offered post-handshake authentication may still
                // send a certificate the server asks for later: keep reading.
                let pha_pending = self.connection_security_policy == SecurityClass::Tls
                    && self.tls.as_ref().is_some_and(|t| t.post_handshake_auth);
                (matches!(
                    self.connection_security_policy,
                    SecurityClass::MutualTls | SecurityClass::Tls
                ) && !pha_pending)
                    || self.tls.as_ref().is_some_and(|t| t.resumed)
            }
            Protocol::Http1 | Protocol::H2c | Protocol::Redis | Protocol::Ssh => {
                self.confidence == Confidence::High
            }
            _ => false,
        }
    }
}

const ISTIO_ALPN: [&str; 5] = [
    "istio",
    "istio-peer-exchange",
    "istio-http/1.0",
    "istio-http/1.1",
    "istio-h2",
];
const ISTIO_HBONE_PORT: u16 = 15008;

fn mesh_marker(info: &TlsInfo, server_port: u16) -> Option<MeshMarker> {
    let alpn = |p: &str| info.alpn_offered.iter().any(|a| a == p);
    let sni = info.sni.as_deref().unwrap_or("");
    if ISTIO_ALPN.iter().any(|p| alpn(p)) || sni.starts_with("outbound_.") {
        return Some(MeshMarker::IstioSidecar);
    }
    if alpn("transport.l5d.io/v1") || sni.contains(".serviceaccount.identity.linkerd.") {
        return Some(MeshMarker::Linkerd);
    }
    if server_port == ISTIO_HBONE_PORT {
        return Some(MeshMarker::IstioHbone);
    }
    None
}

/// Whether `b` is one or more complete TLS alert records and nothing else: what a
/// TLS server answers to a cleartext request.
fn only_tls_alerts(b: &[u8]) -> bool {
    let (records, garbage) = tls::split_records(b);
    !garbage && !records.is_empty() && records.iter().all(|r| r.content_type == tls::CT_ALERT)
}

/// Classifies one connection.
pub fn classify(input: &ConnInput<'_>) -> Classification {
    let mut cls = classify_bytes(input);
    // An answer that went missing is not a refusal, and a side that looks silent
    // may not have been.
    if input.lost
        && matches!(
            cls.outcome,
            Outcome::ServerRefused | Outcome::ClientGaveUp | Outcome::OneWay
        )
    {
        cls.outcome = Outcome::Incomplete;
        cls.evidence.push_str(
            "; some of this connection's bytes or events were lost before the agent saw them, \
             so how it ended is not known",
        );
    }
    cls
}

/// Control characters escaped and the length capped: for names taken from the
/// wire (a tunnel's target) that go into human-facing evidence.
pub fn sanitize(s: &str) -> String {
    let mut out = String::new();
    for c in s.chars().take(256) {
        if c.is_control() {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    out
}

/// Tunnels followed inside one connection (a CONNECT through a SOCKS proxy, ...).
const MAX_TUNNELS: usize = 2;

fn classify_bytes(input: &ConnInput<'_>) -> Classification {
    let (client, server) = (&input.client, &input.server);
    if client.midstream || server.midstream {
        // A capture (or an agent) that joined late still saw the handshake if each
        // direction's first captured bytes are its hello, at a record boundary.
        let hellos = tls::starts_with_client_hello(client.bytes)
            && (server.bytes.is_empty()
                || tls::starts_with_hello(server.bytes, tls::HS_SERVER_HELLO));
        if hellos {
            let mut cls = from_tls(input, client, server, None);
            cls.evidence = format!(
                "the start of the connection was not captured, but each direction begins with its TLS hello; {}",
                cls.evidence
            );
            return cls;
        }
        return Classification {
            connection_security_policy: SecurityClass::Unknown,
            confidence: Confidence::High,
            evidence:
                "the capture started in the middle of the connection (it predates the agent): \
                       the handshake was not seen"
                    .into(),
            protocol: Protocol::Unknown,
            outcome: Outcome::Incomplete,
            tls: None,
            starttls: None,
            tunnel: None,
            http: None,
            mesh: None,
        };
    }
    classify_streams(input, client, server, 0)
}

fn classify_streams(
    input: &ConnInput<'_>,
    client: &Side<'_>,
    server: &Side<'_>,
    tunnels: usize,
) -> Classification {
    if tls::starts_with_handshake(client.bytes) || tls::starts_with_client_hello(client.bytes) {
        return from_tls(input, client, server, None);
    }
    if tunnels < MAX_TUNNELS {
        if let Some(t) = tunnel::detect(client.bytes, server.bytes) {
            return through_tunnel(input, client, server, t, tunnels);
        }
        if let Some(ov) = openvpn::detect(client.bytes, server.bytes) {
            return openvpn_tls(input, client, server, ov);
        }
    }

    let d = plaintext::detect(client.bytes, server.bytes);
    if let Some((c_off, s_off)) = d.tls_after {
        let mut cls = from_tls(
            input,
            &client.from(c_off),
            &server.from(s_off),
            Some(d.protocol),
        );
        cls.evidence = format!("{}; {}", d.note, cls.evidence);
        return cls;
    }
    let (class, confidence) = if d.encrypted {
        (SecurityClass::Unknown, Confidence::High)
    } else if d.protocol == Protocol::Unknown {
        (SecurityClass::Unknown, Confidence::Low)
    } else if d.recognised {
        (SecurityClass::None, Confidence::High)
    } else {
        (SecurityClass::None, Confidence::Medium)
    };
    let outcome = plaintext_outcome(input);
    let mut evidence = d.note.clone();
    if outcome == Outcome::ServerRefused {
        evidence.push_str(if only_tls_alerts(server.bytes) {
            "; the server answered with a TLS alert and closed (refused)"
        } else {
            "; the server closed without answering (refused)"
        });
    }
    Classification {
        connection_security_policy: class,
        confidence,
        evidence,
        protocol: d.protocol,
        outcome,
        tls: None,
        starttls: None,
        tunnel: None,
        http: d.http,
        mesh: None,
    }
}

/// A proxy tunnel: what went through it decides the class, and the record names
/// the tunnel and its target.
fn through_tunnel(
    input: &ConnInput<'_>,
    client: &Side<'_>,
    server: &Side<'_>,
    t: tunnel::Found,
    tunnels: usize,
) -> Classification {
    let protocol = match t.tunnel.via {
        TunnelKind::HttpConnect => Protocol::Http1,
        _ => Protocol::Socks,
    };
    let inner_empty =
        client.bytes.len() <= t.client_offset && server.bytes.len() <= t.server_offset;
    let (class, confidence, rest) = match t.granted {
        // Nothing but the cleartext proxy negotiation (with its target) was seen:
        // plaintext, and no protected session set up, as far as the bytes go.
        Some(true) | None if inner_empty => (
            SecurityClass::None,
            Confidence::Medium,
            "only the cleartext proxy negotiation was seen on the connection",
        ),
        Some(true) => {
            let mut cls = classify_streams(
                input,
                &client.from(t.client_offset),
                &server.from(t.server_offset),
                tunnels + 1,
            );
            cls.evidence = format!("{}; through it: {}", t.note, cls.evidence);
            cls.tunnel.get_or_insert(t.tunnel);
            return cls;
        }
        Some(false) => (
            SecurityClass::None,
            Confidence::High,
            "nothing went through it (only the cleartext proxy negotiation)",
        ),
        None => (
            SecurityClass::Unknown,
            Confidence::Low,
            "what went through it was not captured",
        ),
    };
    Classification {
        connection_security_policy: class,
        confidence,
        evidence: format!("{}; {rest}", t.note),
        protocol,
        outcome: plaintext_outcome(input),
        tls: None,
        starttls: None,
        tunnel: Some(t.tunnel),
        http: None,
        mesh: None,
    }
}

/// OpenVPN over TCP: the TLS handshake of its control channel decides, when the
/// channel is readable.
fn openvpn_tls(
    input: &ConnInput<'_>,
    client: &Side<'_>,
    server: &Side<'_>,
    ov: openvpn::OpenVpn,
) -> Classification {
    let tunnel = Tunnel {
        via: TunnelKind::Openvpn,
        target: None,
    };
    let Some((c, s, auth)) = ov.tls else {
        return Classification {
            connection_security_policy: SecurityClass::Unknown,
            confidence: Confidence::High,
            evidence: "OpenVPN over TCP (encrypted, not TLS on the wire): its control channel is encrypted too \
                       (tls-crypt), so how the client authenticated cannot be seen"
                .into(),
            protocol: Protocol::Openvpn,
            outcome: plaintext_outcome(input),
            tls: None,
            starttls: None,
            tunnel: Some(tunnel),
            http: None,
            mesh: None,
        };
    };
    // Timestamps of the pieces, for ordering the two directions.
    let chunks = |ch: &openvpn::Channel, side: &Side<'_>| -> Vec<(u32, u64)> {
        ch.pieces
            .iter()
            .filter_map(|&(at, orig)| Some((u32::try_from(at).ok()?, side.ts_at(orig)?)))
            .collect()
    };
    let (cc, sc) = (chunks(&c, client), chunks(&s, server));
    let inner = |bytes, chunks, side: &Side<'_>| Side {
        bytes,
        chunks,
        base: 0,
        truncated: side.truncated,
        midstream: false,
    };
    let mut cls = from_tls(
        input,
        &inner(&c.tls, &cc, client),
        &inner(&s.tls, &sc, server),
        None,
    );
    let auth = if auth == 0 {
        "no tls-auth".to_owned()
    } else {
        format!("tls-auth: {auth} bytes per packet")
    };
    cls.evidence = format!(
        "OpenVPN over TCP ({auth}): the TLS handshake inside its control channel; {}",
        cls.evidence
    );
    cls.tunnel = Some(tunnel);
    cls.mesh = None;
    cls
}

fn from_tls(
    input: &ConnInput<'_>,
    client: &Side<'_>,
    server: &Side<'_>,
    starttls: Option<Protocol>,
) -> Classification {
    let a = tls::analyze(client, server);
    let closing = input.closing;
    let outcome = if a.client_alert {
        Outcome::ClientGaveUp
    } else if a.server_answered == Some(true) && a.client_data_after_handshake {
        Outcome::Completed
    } else if a.server_alert {
        Outcome::ServerRefused
    } else if !closing.closed {
        Outcome::Open
    } else if a.server_answered != Some(true) {
        // The server never answered and the connection is gone: refused, unless the
        // client reset it itself.
        if closing.reset_by == Some(Party::Client) {
            Outcome::ClientGaveUp
        } else {
            Outcome::ServerRefused
        }
    } else {
        Outcome::OneWay
    };
    let mut evidence = a.evidence;
    if outcome == Outcome::ServerRefused {
        evidence.push_str(if a.server_alert {
            "; the server sent an alert and closed (refused)"
        } else {
            "; the server closed before answering (refused)"
        });
    }
    let mesh = mesh_marker(&a.info, input.server_port);
    let mut confidence = a.confidence;
    if a.class == SecurityClass::MutualTls && mesh.is_some() {
        confidence = Confidence::High;
    }
    Classification {
        connection_security_policy: a.class,
        confidence,
        evidence,
        protocol: Protocol::Tls,
        outcome,
        tls: Some(a.info),
        starttls,
        tunnel: None,
        http: None,
        mesh,
    }
}

fn plaintext_outcome(input: &ConnInput<'_>) -> Outcome {
    let (c, s) = (input.client.bytes, input.server.bytes);
    let closing = input.closing;
    let server_silent = s.is_empty() || only_tls_alerts(s);
    if !c.is_empty() && !server_silent {
        return Outcome::Completed;
    }
    if !closing.closed {
        return Outcome::Open;
    }
    if !c.is_empty() {
        // The client asked and the server closed without an answer (a client
        // half-close while waiting does not count as giving up; a client RST does).
        return if closing.reset_by == Some(Party::Client) {
            Outcome::ClientGaveUp
        } else {
            Outcome::ServerRefused
        };
    }
    if s.is_empty() {
        return if closing.first == Some(Party::Server) {
            Outcome::ServerRefused
        } else {
            Outcome::ClientGaveUp
        };
    }
    Outcome::OneWay
}

/// Remembers the class of full handshakes so that resumed sessions, which carry no
/// certificate flight, inherit it. A resumption is tied to the handshake it resumes
/// by, in this order: the TLS 1.2 session id or ticket that handshake issued; the
/// same client address, server address and port; the same client address, server
/// name (SNI) and port (the same service at another address, as DNS round-robin
/// and anycast give). Stateful, so kept outside the pure classifier.
#[derive(Debug, Default)]
pub struct Resumptions {
    by_session: HashMap<u64, SecurityClass>,
    by_addr: HashMap<(std::net::IpAddr, std::net::IpAddr, u16), SecurityClass>,
    by_name: HashMap<(std::net::IpAddr, String, u16), SecurityClass>,
}

const RESUMPTION_MEMORY: usize = 65_536;

fn remember<K: std::hash::Hash + Eq>(map: &mut HashMap<K, SecurityClass>, k: K, v: SecurityClass) {
    if map.len() >= RESUMPTION_MEMORY {
        map.clear();
    }
    map.insert(k, v);
}

impl Resumptions {
    /// Records a full handshake, or rewrites a resumed one from the record.
    /// `key` is (client address, server address, server port).
    pub fn apply(
        &mut self,
        key: (std::net::IpAddr, std::net::IpAddr, u16),
        cls: &mut Classification,
    ) {
        let Some(info) = &cls.tls else { return };
        let (client, _, port) = key;
        let name = info.sni.clone().map(|n| (client, n, port));
        let sessions = [info.session.session_id, info.session.ticket];
        if info.resumed {
            let found = sessions
                .iter()
                .flatten()
                .find_map(|k| self.by_session.get(k))
                .map(|c| (*c, "the full handshake that issued this session"))
                .or_else(|| {
                    self.by_addr
                        .get(&key)
                        .map(|c| (*c, "the full handshake this client made to this server"))
                })
                .or_else(|| {
                    name.as_ref().and_then(|n| self.by_name.get(n)).map(|c| {
                        (
                            *c,
                            "the full handshake this client made to the same server name and port at another address",
                        )
                    })
                });
            if let Some((prev, from)) = found {
                cls.connection_security_policy = prev;
                cls.confidence = Confidence::Medium;
                cls.evidence
                    .push_str(&format!("; class {} inherited from {from}", prev.as_str()));
            }
        } else if matches!(
            cls.connection_security_policy,
            SecurityClass::MutualTls | SecurityClass::Tls
        ) {
            let class = cls.connection_security_policy;
            for k in sessions.into_iter().flatten() {
                remember(&mut self.by_session, k, class);
            }
            remember(&mut self.by_addr, key, class);
            if let Some(n) = name {
                remember(&mut self.by_name, n, class);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settled(client: &[u8], server: &[u8]) -> bool {
        classify(&ConnInput {
            client: Side::new(client),
            server: Side::new(server),
            ..ConnInput::default()
        })
        .is_settled()
    }

    #[test]
    fn only_a_completed_exchange_that_cannot_upgrade_is_settled() {
        let get = b"GET / HTTP/1.1\r\nHost: a\r\n\r\n";
        assert!(settled(get, b"HTTP/1.1 200 OK\r\n\r\n"));
        assert!(!settled(get, b""), "no answer yet");
        assert!(settled(b"*1\r\n$4\r\nPING\r\n", b"+PONG\r\n"), "Redis");
        // SMTP and PostgreSQL may still switch to TLS.
        assert!(!settled(
            b"EHLO x\r\n",
            b"220 mail ESMTP\r\n250-mail\r\n250 STARTTLS\r\n"
        ));
        assert!(!settled(&[0, 0, 0, 8, 4, 210, 22, 47], b"S"));
        assert!(!settled(b"\x01\x02\x03", b"\x04\x05"), "unrecognised bytes");
    }

    #[test]
    fn one_way_tls_with_post_handshake_auth_offered_is_not_settled() {
        let cls = |class: SecurityClass, pha: bool| Classification {
            connection_security_policy: class,
            confidence: Confidence::High,
            evidence: String::new(),
            protocol: Protocol::Tls,
            outcome: Outcome::Completed,
            tls: Some(TlsInfo {
                version: Some("1.3".into()),
                cipher_suite: None,
                sni: None,
                alpn_offered: Vec::new(),
                alpn_selected: None,
                ja4: None,
                client_auth: tls::ClientAuth::None,
                certificate_requested: None,
                client_certificate: None,
                client_flight_bytes: Some(52),
                resumed: false,
                hello_retry: false,
                handshake_complete: true,
                post_handshake_auth: pha,
                sslv2_client_hello: false,
                session: tls::SessionKeys::default(),
            }),
            starttls: None,
            http: None,
            mesh: None,
            tunnel: None,
        };
        assert!(cls(SecurityClass::Tls, false).is_settled());
        // The server may still ask for the certificate: keep capturing.
        assert!(!cls(SecurityClass::Tls, true).is_settled());
        assert!(cls(SecurityClass::MutualTls, true).is_settled());
    }

    #[test]
    fn mesh_markers_from_alpn_sni_and_port() {
        let info = |alpn: &[&str], sni: Option<&str>| TlsInfo {
            version: Some("1.3".into()),
            cipher_suite: None,
            sni: sni.map(str::to_owned),
            alpn_offered: alpn.iter().map(|a| (*a).to_owned()).collect(),
            alpn_selected: None,
            ja4: None,
            client_auth: tls::ClientAuth::Unknown,
            certificate_requested: None,
            client_certificate: None,
            client_flight_bytes: None,
            resumed: false,
            hello_retry: false,
            handshake_complete: true,
            post_handshake_auth: false,
            sslv2_client_hello: false,
            session: tls::SessionKeys::default(),
        };
        for alpn in ISTIO_ALPN {
            assert_eq!(
                mesh_marker(&info(&[alpn], None), 8080),
                Some(MeshMarker::IstioSidecar),
                "{alpn}"
            );
        }
        assert_eq!(
            mesh_marker(
                &info(
                    &["h2"],
                    Some("outbound_.8080_._.cart.shop.svc.cluster.local")
                ),
                8080
            ),
            Some(MeshMarker::IstioSidecar)
        );
        assert_eq!(
            mesh_marker(&info(&["transport.l5d.io/v1"], None), 4143),
            Some(MeshMarker::Linkerd)
        );
        assert_eq!(
            mesh_marker(
                &info(
                    &[],
                    Some("web.default.serviceaccount.identity.linkerd.cluster.local")
                ),
                4143
            ),
            Some(MeshMarker::Linkerd)
        );
        assert_eq!(
            mesh_marker(&info(&["h2"], None), 15008),
            Some(MeshMarker::IstioHbone)
        );
        assert_eq!(
            mesh_marker(&info(&["h2", "http/1.1"], Some("example.com")), 443),
            None
        );
    }

    #[test]
    fn midstream_is_unknown_and_incomplete() {
        let input = ConnInput {
            client: Side {
                bytes: b"GET / HTTP/1.1\r\n\r\n",
                midstream: true,
                ..Side::default()
            },
            ..ConnInput::default()
        };
        let c = classify(&input);
        assert_eq!(c.connection_security_policy, SecurityClass::Unknown);
        assert_eq!(c.outcome, Outcome::Incomplete);
    }

    #[test]
    fn plaintext_refused_by_a_tls_server() {
        // What OpenSSL answers to "GET /": a fatal alert record.
        let alert = [0x15, 0x03, 0x01, 0x00, 0x02, 0x02, 0x46];
        let input = ConnInput {
            client: Side::new(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n"),
            server: Side::new(&alert),
            server_port: 8443,
            closing: Closing {
                closed: true,
                first: Some(Party::Server),
                reset_by: None,
            },
            lost: false,
        };
        let c = classify(&input);
        assert_eq!(c.connection_security_policy, SecurityClass::None);
        assert_eq!(c.outcome, Outcome::ServerRefused);
    }

    #[test]
    fn a_lost_answer_is_not_a_refusal() {
        let mut input = ConnInput {
            client: Side::new(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n"),
            closing: Closing {
                closed: true,
                first: Some(Party::Server),
                reset_by: None,
            },
            ..ConnInput::default()
        };
        assert_eq!(classify(&input).outcome, Outcome::ServerRefused);
        input.lost = true;
        let c = classify(&input);
        assert_eq!(c.outcome, Outcome::Incomplete);
        assert_eq!(c.connection_security_policy, SecurityClass::None);
        assert!(c.evidence.contains("lost"), "{}", c.evidence);
    }

    #[test]
    fn plaintext_both_ways_is_completed() {
        let input = ConnInput {
            client: Side::new(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n"),
            server: Side::new(b"HTTP/1.1 200 OK\r\n\r\n"),
            closing: Closing {
                closed: true,
                first: Some(Party::Server),
                reset_by: None,
            },
            ..ConnInput::default()
        };
        let c = classify(&input);
        assert_eq!(c.outcome, Outcome::Completed);
        assert_eq!(c.http.unwrap().host.as_deref(), Some("a"));
    }

    #[test]
    fn empty_connection_is_unknown() {
        let c = classify(&ConnInput::default());
        assert_eq!(c.connection_security_policy, SecurityClass::Unknown);
    }
}
