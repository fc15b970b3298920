//! TLS 1.2 and earlier: client authentication is visible in cleartext.

use std::fmt::Write as _;

use super::*;

/// TLS 1.2 abbreviated handshake: ChangeCipherSpec follows the ServerHello directly.
pub(super) fn is_tls12_resumption(s: &Direction) -> bool {
    let msgs = handshake_messages(&s.hs_before_ccs);
    s.first_ccs.is_some()
        && msgs.iter().any(|m| m.msg_type == HS_SERVER_HELLO)
        && !msgs
            .iter()
            .any(|m| m.msg_type == HS_CERTIFICATE || m.msg_type == HS_SERVER_HELLO_DONE)
}

pub(super) fn analyze_tls12(
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
