//! Proxy tunnels a client opens before its real protocol: HTTP `CONNECT` and SOCKS
//! 4, 4a and 5. Once the proxy grants the tunnel, the rest of each stream is the
//! connection to the tunnel's target, which is classified in turn (TLS, most of
//! the time: an egress proxy's everyday traffic).

use serde::Serialize;

use super::wire::{Reader, find};

/// How the connection was tunnelled.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum TunnelKind {
    HttpConnect,
    Socks4,
    Socks4a,
    Socks5,
    /// OpenVPN over TCP: TLS inside its control channel.
    Openvpn,
}

impl TunnelKind {
    pub fn name(self) -> &'static str {
        match self {
            Self::HttpConnect => "HTTP CONNECT",
            Self::Socks4 => "SOCKS4",
            Self::Socks4a => "SOCKS4a",
            Self::Socks5 => "SOCKS5",
            Self::Openvpn => "OpenVPN",
        }
    }
}

/// The tunnel in a connection record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Tunnel {
    pub via: TunnelKind,
    /// `host:port` the client asked the proxy for.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
}

/// A tunnel request found at the start of a connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Found {
    pub tunnel: Tunnel,
    /// Where the tunnelled bytes start in each direction (when granted).
    pub client_offset: usize,
    pub server_offset: usize,
    /// The proxy granted the tunnel: `Some(true)`; refused: `Some(false)`; no
    /// answer captured: `None`.
    pub granted: Option<bool>,
    /// A sentence for the evidence.
    pub note: String,
}

/// Rounds of request and answer followed (a 407 then an authenticated CONNECT).
const MAX_ROUNDS: usize = 4;
/// Header block sizes accepted.
const MAX_HEADERS: usize = 16 * 1024;

/// Finds an HTTP CONNECT or SOCKS handshake at the start of the streams.
pub fn detect(client: &[u8], server: &[u8]) -> Option<Found> {
    if client.starts_with(b"CONNECT ") {
        return http_connect(client, server);
    }
    match client.first() {
        Some(4) => socks4(client, server),
        Some(5) => socks5(client, server),
        _ => None,
    }
}

/// The end of an HTTP header block starting at `from` (just past the empty line).
fn header_end(b: &[u8], from: usize) -> Option<usize> {
    let rest = b.get(from..)?;
    let window = &rest[..rest.len().min(MAX_HEADERS)];
    find(window, b"\r\n\r\n")
        .map(|e| from + e + 4)
        .or_else(|| find(window, b"\n\n").map(|e| from + e + 2))
}

fn http_connect(client: &[u8], server: &[u8]) -> Option<Found> {
    let (mut c, mut s) = (0usize, 0usize);
    let mut target = None;
    for _ in 0..MAX_ROUNDS {
        let req = client.get(c..)?;
        if !req.starts_with(b"CONNECT ") {
            return None;
        }
        let line_end = find(&req[..req.len().min(MAX_HEADERS)], b"\n")?;
        let line = req[..line_end]
            .strip_suffix(b"\r")
            .unwrap_or(&req[..line_end]);
        let mut parts = line.split(|&b| b == b' ');
        let (_, t, v) = (parts.next()?, parts.next()?, parts.next()?);
        if !v.starts_with(b"HTTP/1.") || t.is_empty() || t.len() > 300 {
            return None;
        }
        target = Some(String::from_utf8_lossy(t).into_owned());
        let Some(req_end) = header_end(client, c) else {
            // The request is not complete in the capture.
            return Some(found(
                TunnelKind::HttpConnect,
                target,
                c,
                s,
                None,
                "HTTP CONNECT".into(),
            ));
        };
        let resp = &server[s.min(server.len())..];
        if resp.is_empty() {
            return Some(found(
                TunnelKind::HttpConnect,
                target,
                req_end,
                s,
                None,
                "the proxy's answer was not captured".into(),
            ));
        }
        let status = resp
            .strip_prefix(b"HTTP/1.")
            .and_then(|r| r.get(2..5))
            .and_then(|c| std::str::from_utf8(c).ok())
            .and_then(|c| c.parse::<u16>().ok())?;
        let resp_end = header_end(server, s).unwrap_or(server.len());
        if (200..300).contains(&status) {
            return Some(found(
                TunnelKind::HttpConnect,
                target,
                req_end,
                resp_end,
                Some(true),
                format!("granted ({status})"),
            ));
        }
        // Refused; the client may try again on the same connection (with
        // credentials after a 407).
        c = req_end;
        s = resp_end;
        if client.get(c..).is_none_or(<[u8]>::is_empty) {
            return Some(found(
                TunnelKind::HttpConnect,
                target,
                c,
                s,
                Some(false),
                format!("refused ({status})"),
            ));
        }
    }
    Some(found(
        TunnelKind::HttpConnect,
        target,
        c,
        s,
        Some(false),
        "refused".into(),
    ))
}

fn found(
    via: TunnelKind,
    target: Option<String>,
    client_offset: usize,
    server_offset: usize,
    granted: Option<bool>,
    how: String,
) -> Found {
    let to = target
        .as_deref()
        .map(|t| format!(" to {}", crate::classify::sanitize(t)))
        .unwrap_or_default();
    Found {
        note: format!("{} tunnel{to}: {how}", via.name()),
        tunnel: Tunnel { via, target },
        client_offset,
        server_offset,
        granted,
    }
}

/// SOCKS4 and 4a: VN 4, CD 1 (CONNECT) or 2 (BIND), port, IPv4, user id, NUL; 4a
/// sets the address to 0.0.0.x and appends the host name. The proxy answers
/// 8 bytes: VN 0, CD 90 (granted) or 91-93 (refused).
fn socks4(client: &[u8], server: &[u8]) -> Option<Found> {
    let mut r = Reader::new(client);
    r.u8()?;
    if !matches!(r.u8()?, 1 | 2) {
        return None;
    }
    let port = r.u16()?;
    let ip = r.take(4)?;
    let rest = r.rest();
    let user_end = rest.iter().take(256).position(|&b| b == 0)?;
    let mut end = 8 + user_end + 1;
    let (kind, host) = if ip[..3] == [0, 0, 0] && ip[3] != 0 {
        let name = client.get(end..)?;
        let name_end = name.iter().take(256).position(|&b| b == 0)?;
        end += name_end + 1;
        (
            TunnelKind::Socks4a,
            String::from_utf8_lossy(&name[..name_end]).into_owned(),
        )
    } else {
        (
            TunnelKind::Socks4,
            std::net::Ipv4Addr::new(ip[0], ip[1], ip[2], ip[3]).to_string(),
        )
    };
    let target = Some(format!("{host}:{port}"));
    match server {
        [] => Some(found(
            kind,
            target,
            end,
            0,
            None,
            "the proxy's answer was not captured".into(),
        )),
        [0, 90, ..] if server.len() >= 8 => {
            Some(found(kind, target, end, 8, Some(true), "granted".into()))
        }
        // A refusal ends the exchange: a reply cut short (the capture ended inside
        // it) is still one, and what follows starts no earlier than its end.
        [0, 91..=93, ..] => Some(found(
            kind,
            target,
            end,
            server.len().min(8),
            Some(false),
            "refused".into(),
        )),
        _ => None,
    }
}

/// SOCKS5 (RFC 1928): greeting with methods, the proxy's choice, an optional
/// username/password exchange (RFC 1929), then the request and its reply.
fn socks5(client: &[u8], server: &[u8]) -> Option<Found> {
    let mut c = Reader::new(client);
    c.u8()?;
    let methods = c.vec8()?;
    if methods.is_empty() {
        return None;
    }
    let mut s = Reader::new(server);
    let kind = TunnelKind::Socks5;
    let none = |c: &Reader<'_>, s: &Reader<'_>, why: &str| {
        Some(found(
            kind,
            None,
            client.len() - c.remaining(),
            server.len() - s.remaining(),
            None,
            why.to_owned(),
        ))
    };
    if server.is_empty() {
        return none(&c, &s, "the proxy's answer was not captured");
    }
    if s.u8()? != 5 {
        return None;
    }
    let method = s.u8()?;
    if method == 0xff {
        return Some(found(
            kind,
            None,
            0,
            2,
            Some(false),
            "no acceptable authentication method".into(),
        ));
    }
    if !methods.contains(&method) {
        return None;
    }
    match method {
        0 => {}
        2 => {
            // Username/password: version 1, user, password; status 0 = success.
            if c.u8()? != 1 {
                return None;
            }
            c.vec8()?;
            c.vec8()?;
            if s.u8()? != 1 {
                return None;
            }
            if s.u8()? != 0 {
                return Some(found(
                    kind,
                    None,
                    client.len() - c.remaining(),
                    server.len() - s.remaining(),
                    Some(false),
                    "authentication refused".into(),
                ));
            }
        }
        _ => {
            return none(
                &c,
                &s,
                "an authentication method that encapsulates the traffic",
            );
        }
    }
    // Request: VER 5, CMD, RSV 0, ATYP, address, port.
    if c.u8()? != 5 {
        return None;
    }
    let cmd = c.u8()?;
    if !(1..=3).contains(&cmd) || c.u8()? != 0 {
        return None;
    }
    let target = socks5_address(&mut c)?;
    let client_offset = client.len() - c.remaining();
    if s.remaining() == 0 {
        return Some(found(
            kind,
            Some(target),
            client_offset,
            server.len(),
            None,
            "the proxy's answer was not captured".into(),
        ));
    }
    if s.u8()? != 5 {
        return None;
    }
    let rep = s.u8()?;
    s.u8()?;
    socks5_address(&mut s)?;
    let server_offset = server.len() - s.remaining();
    let (granted, how) = if rep == 0 {
        (true, "granted".to_owned())
    } else {
        (false, format!("refused (reply {rep})"))
    };
    Some(found(
        kind,
        Some(target),
        client_offset,
        server_offset,
        Some(granted),
        how,
    ))
}

fn socks5_address(r: &mut Reader<'_>) -> Option<String> {
    let host = match r.u8()? {
        1 => {
            let a = r.take(4)?;
            std::net::Ipv4Addr::new(a[0], a[1], a[2], a[3]).to_string()
        }
        3 => String::from_utf8_lossy(r.vec8()?).into_owned(),
        4 => {
            let a: [u8; 16] = r.take(16)?.try_into().ok()?;
            format!("[{}]", std::net::Ipv6Addr::from(a))
        }
        _ => return None,
    };
    let port = r.u16()?;
    Some(format!("{host}:{port}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn http_connect_granted_after_a_407() {
        let client = b"CONNECT a.example:443 HTTP/1.1\r\nHost: a.example:443\r\n\r\n\
                       CONNECT a.example:443 HTTP/1.1\r\nProxy-Authorization: Basic x\r\n\r\n\x16\x03\x01";
        let server = b"HTTP/1.1 407 Proxy Authentication Required\r\nContent-Length: 0\r\n\r\n\
                       HTTP/1.1 200 Connection established\r\n\r\n\x16\x03\x03";
        let f = detect(client, server).expect("found");
        assert_eq!(f.granted, Some(true));
        assert_eq!(f.tunnel.target.as_deref(), Some("a.example:443"));
        assert_eq!(&client[f.client_offset..], b"\x16\x03\x01");
        assert_eq!(&server[f.server_offset..], b"\x16\x03\x03");
        assert!(
            f.note.contains("HTTP CONNECT tunnel to a.example:443"),
            "{}",
            f.note
        );
        let refused = detect(
            b"CONNECT b:443 HTTP/1.1\r\n\r\n",
            b"HTTP/1.1 403 Forbidden\r\n\r\n",
        )
        .expect("found");
        assert_eq!(refused.granted, Some(false));
    }

    #[test]
    fn socks4_4a_and_5() {
        let mut c = vec![4, 1, 0x01, 0xbb, 93, 184, 216, 34];
        c.extend_from_slice(b"user\0\x16");
        let f = detect(&c, &[0, 90, 0, 0, 0, 0, 0, 0, 0x16]).expect("socks4");
        assert_eq!(f.tunnel.via, TunnelKind::Socks4);
        assert_eq!(f.tunnel.target.as_deref(), Some("93.184.216.34:443"));
        assert_eq!((f.client_offset, f.server_offset), (13, 8));
        let mut c = vec![4, 1, 0x01, 0xbb, 0, 0, 0, 1, 0];
        c.extend_from_slice(b"example.com\0");
        let f = detect(&c, &[0, 91, 0, 0, 0, 0, 0, 0]).expect("socks4a");
        assert_eq!(f.tunnel.via, TunnelKind::Socks4a);
        assert_eq!(f.granted, Some(false));
        // A refusal whose reply was cut after two bytes (found by the tunnel fuzz
        // target): still a refusal, and no offset past the captured bytes.
        let f = detect(&c, &[0, 93]).expect("socks4a, reply cut short");
        assert_eq!(f.granted, Some(false));
        assert_eq!(f.server_offset, 2);
        assert_eq!(f.tunnel.target.as_deref(), Some("example.com:443"));
        // SOCKS5 with username/password, a domain name target.
        let mut c = vec![5, 2, 0, 2, 1, 1, b'u', 1, b'p', 5, 1, 0, 3, 11];
        c.extend_from_slice(b"example.com");
        c.extend_from_slice(&[0x01, 0xbb, 0x16]);
        let s = [5, 2, 1, 0, 5, 0, 0, 1, 10, 0, 0, 1, 0x30, 0x39, 0x16];
        let f = detect(&c, &s).expect("socks5");
        assert_eq!(f.granted, Some(true));
        assert_eq!(f.tunnel.target.as_deref(), Some("example.com:443"));
        assert_eq!(c[f.client_offset], 0x16);
        assert_eq!(s[f.server_offset], 0x16);
        // Random binary that starts with 5 is not SOCKS.
        assert_eq!(detect(&[5, 0], &[1, 2, 3]), None);
        assert_eq!(detect(&[5, 1, 0, 9], &[5, 7]), None);
    }
}
