//! In-band upgrades to TLS of cleartext protocols (STARTTLS and its relatives):
//! SMTP and NNTP `STARTTLS`, IMAP `tag STARTTLS`, POP3 `STLS`, FTP `AUTH TLS`,
//! XMPP `<starttls/>`, LDAP's StartTLS extended operation; and, when no known
//! dialect matches, a TLS handshake that follows some other cleartext preamble in
//! both directions. (PostgreSQL and MySQL are in [`super::plaintext`].)
//!
//! A line-based dialect is recognised by the client's command and the server's
//! positive reply; where TLS starts in each direction is where a handshake record
//! begins at a line boundary after them, so earlier commands (EHLO, CAPA) and
//! multi-line replies need no parsing of their own.

use super::{
    Protocol,
    plaintext::Detected,
    tls,
    wire::{Reader, find},
};

/// How far into each direction an upgrade is looked for.
const SCAN: usize = 16 * 1024;
/// Cleartext lines looked at.
const MAX_LINES: usize = 64;

/// The OID of the StartTLS extended operation (RFC 4511 4.14).
const LDAP_STARTTLS_OID: &[u8] = b"1.3.6.1.4.1.1466.20037";

/// A line protocol that upgrades with a command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Dialect {
    Smtp,
    Nntp,
    Imap,
    Pop3,
    Ftp,
}

impl Dialect {
    fn protocol(self) -> Protocol {
        match self {
            Self::Smtp => Protocol::Smtp,
            Self::Nntp => Protocol::Nntp,
            Self::Imap => Protocol::Imap,
            Self::Pop3 => Protocol::Pop3,
            Self::Ftp => Protocol::Ftp,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Self::Smtp => "SMTP",
            Self::Nntp => "NNTP",
            Self::Imap => "IMAP",
            Self::Pop3 => "POP3",
            Self::Ftp => "FTP",
        }
    }
}

/// Lines of `b` as (start, end including the line break).
fn lines(b: &[u8]) -> impl Iterator<Item = (usize, usize)> + '_ {
    let b = &b[..b.len().min(SCAN)];
    let mut pos = 0;
    std::iter::from_fn(move || {
        if pos >= b.len() {
            return None;
        }
        let end = b[pos..]
            .iter()
            .position(|&c| c == b'\n')
            .map(|e| pos + e + 1)?;
        let line = (pos, end);
        pos = end;
        Some(line)
    })
    .take(MAX_LINES)
}

fn trim_eol(l: &[u8]) -> &[u8] {
    let l = l.strip_suffix(b"\n").unwrap_or(l);
    l.strip_suffix(b"\r").unwrap_or(l)
}

fn starts_ci(b: &[u8], p: &[u8]) -> bool {
    b.len() >= p.len() && b[..p.len()].eq_ignore_ascii_case(p)
}

/// The dialect a server's greeting announces, if any.
fn banner(server: &[u8]) -> Option<Dialect> {
    if server.starts_with(b"* OK") || server.starts_with(b"* PREAUTH") {
        Some(Dialect::Imap)
    } else if server.starts_with(b"+OK") {
        Some(Dialect::Pop3)
    } else if server.starts_with(b"200 ") || server.starts_with(b"201 ") {
        Some(Dialect::Nntp)
    } else if server.starts_with(b"220") && matches!(server.get(3), Some(b' ' | b'-')) {
        // SMTP and FTP both greet with 220: the client's commands tell them apart.
        Some(Dialect::Smtp)
    } else {
        None
    }
}

/// The client's upgrade command: (dialect, end of its line, IMAP tag).
fn upgrade_command(client: &[u8], greeted: Option<Dialect>) -> Option<(Dialect, usize, Vec<u8>)> {
    for (start, end) in lines(client) {
        let line = trim_eol(&client[start..end]);
        if line.eq_ignore_ascii_case(b"STARTTLS") {
            let d = match greeted {
                Some(Dialect::Nntp) => Dialect::Nntp,
                _ => Dialect::Smtp,
            };
            return Some((d, end, Vec::new()));
        }
        if line.eq_ignore_ascii_case(b"STLS") {
            return Some((Dialect::Pop3, end, Vec::new()));
        }
        if starts_ci(line, b"AUTH TLS") || starts_ci(line, b"AUTH SSL") {
            return Some((Dialect::Ftp, end, Vec::new()));
        }
        if let Some(sp) = line.iter().position(|&c| c == b' ')
            && sp > 0
            && line[sp + 1..].eq_ignore_ascii_case(b"STARTTLS")
            // An IMAP tag: any atom characters (`a001`, `.`, `A1-x`), not `*` or `+`.
            && line[..sp]
                .iter()
                .all(|c| c.is_ascii_graphic() && !matches!(c, b'*' | b'+' | b'(' | b')' | b'{' | b'"' | b'\\'))
        {
            return Some((Dialect::Imap, end, line[..sp].to_vec()));
        }
    }
    None
}

/// Whether `line` is the server's yes to the upgrade.
fn positive_reply(d: Dialect, line: &[u8], tag: &[u8]) -> bool {
    match d {
        Dialect::Smtp => line.starts_with(b"220 "),
        Dialect::Nntp => line.starts_with(b"382"),
        Dialect::Pop3 => line.starts_with(b"+OK"),
        Dialect::Ftp => line.starts_with(b"234"),
        Dialect::Imap => {
            line.starts_with(tag)
                && line.get(tag.len()) == Some(&b' ')
                && starts_ci(&line[tag.len() + 1..], b"OK")
        }
    }
}

/// The offset just past the server's positive reply, where its TLS begins: the
/// first line boundary followed by a handshake record whose preceding line is a
/// yes; or, when the capture holds no server TLS yet, the end of the last yes.
fn server_tls_start(server: &[u8], d: Dialect, tag: &[u8]) -> Option<usize> {
    let mut last_yes = None;
    for (start, end) in lines(server) {
        if positive_reply(d, trim_eol(&server[start..end]), tag) {
            // SMTP's own greeting is a 220 too: the yes to STARTTLS is a later one.
            if !(d == Dialect::Smtp && start == 0) {
                last_yes = Some(end);
                if tls::starts_with_handshake(&server[end..]) {
                    return Some(end);
                }
            }
        }
    }
    last_yes
}

/// The command-based dialects.
fn line_upgrade(client: &[u8], server: &[u8]) -> Option<Detected> {
    let greeted = banner(server);
    let Some((d, client_tls, tag)) = upgrade_command(client, greeted) else {
        return plaintext_dialect(client, greeted);
    };
    if d == Dialect::Smtp && greeted.is_none() {
        return None;
    }
    let client_goes_on = tls::starts_with_handshake(&client[client_tls..]);
    match server_tls_start(server, d, &tag) {
        Some(server_tls) if client_goes_on => {
            let cmd = match d {
                Dialect::Smtp | Dialect::Nntp | Dialect::Imap => "STARTTLS",
                Dialect::Pop3 => "STLS",
                Dialect::Ftp => "AUTH TLS",
            };
            let mut det = Detected::new(
                d.protocol(),
                format!("{} {cmd} accepted: TLS follows", d.name()),
            );
            det.tls_after = Some((client_tls, server_tls));
            Some(det)
        }
        _ => Some(Detected::new(
            d.protocol(),
            format!(
                "{} upgrade to TLS not completed: the session stayed in plaintext",
                d.name()
            ),
        )),
    }
}

/// A dialect spoken without an upgrade.
fn plaintext_dialect(client: &[u8], greeted: Option<Dialect>) -> Option<Detected> {
    let d = match greeted? {
        Dialect::Smtp => {
            let ftp = [
                &b"USER"[..],
                b"FEAT",
                b"SYST",
                b"OPTS",
                b"AUTH",
                b"PASS",
                b"PBSZ",
            ];
            if ftp.iter().any(|c| starts_ci(client, c)) {
                Dialect::Ftp
            } else if client.is_empty()
                || [&b"EHLO"[..], b"HELO", b"LHLO", b"MAIL", b"QUIT"]
                    .iter()
                    .any(|c| starts_ci(client, c))
            {
                Dialect::Smtp
            } else {
                return None;
            }
        }
        d => d,
    };
    Some(Detected::new(
        d.protocol(),
        format!("{} in plaintext", d.name()),
    ))
}

/// XMPP (RFC 6120 5.4): `<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>`,
/// answered `<proceed .../>`.
fn xmpp(client: &[u8], server: &[u8]) -> Option<Detected> {
    let c = &client[..client.len().min(SCAN)];
    let s = &server[..server.len().min(SCAN)];
    let opens = |b: &[u8]| find(b, b"<stream:stream").is_some() || find(b, b"<?xml").is_some();
    if !opens(c) || !(s.is_empty() || opens(s)) {
        return None;
    }
    let element_end = |b: &[u8], at: usize, name: &[u8]| -> Option<usize> {
        let rest = &b[at..];
        let gt = rest.iter().position(|&x| x == b'>')?;
        if gt > 0 && rest[gt - 1] == b'/' {
            return Some(at + gt + 1);
        }
        let mut close = b"</".to_vec();
        close.extend_from_slice(name);
        close.push(b'>');
        find(rest, &close).map(|e| at + e + close.len())
    };
    let Some(st) = find(c, b"<starttls") else {
        return Some(Detected::new(Protocol::Xmpp, "XMPP in plaintext"));
    };
    let client_tls = element_end(c, st, b"starttls")?;
    let server_tls = find(s, b"<proceed").and_then(|p| element_end(s, p, b"proceed"));
    match server_tls {
        Some(server_tls) if tls::starts_with_handshake(&client[client_tls..]) => {
            let mut d = Detected::new(
                Protocol::Xmpp,
                "XMPP STARTTLS accepted (<proceed/>): TLS follows",
            );
            d.tls_after = Some((client_tls, server_tls));
            Some(d)
        }
        _ => Some(Detected::new(
            Protocol::Xmpp,
            "XMPP STARTTLS not completed: the session stayed in plaintext",
        )),
    }
}

/// One BER element: (tag, content, total length).
fn ber(b: &[u8]) -> Option<(u8, &[u8], usize)> {
    let mut r = Reader::new(b);
    let tag = r.u8()?;
    let first = r.u8()?;
    let len = if first < 0x80 {
        usize::from(first)
    } else {
        let n = usize::from(first & 0x7f);
        if n == 0 || n > 4 {
            return None;
        }
        let mut v = 0usize;
        for _ in 0..n {
            v = v << 8 | usize::from(r.u8()?);
        }
        v
    };
    let head = b.len() - r.remaining();
    let content = r.take(len)?;
    Some((tag, content, head + len))
}

/// An LDAPMessage: (message id, protocol op tag, op content, total length).
fn ldap_message(b: &[u8]) -> Option<(u32, u8, &[u8], usize)> {
    let (tag, body, total) = ber(b)?;
    if tag != 0x30 {
        return None;
    }
    let (itag, id, ilen) = ber(body)?;
    if itag != 0x02 || id.is_empty() || id.len() > 4 {
        return None;
    }
    let id = id.iter().fold(0u32, |v, &x| v << 8 | u32::from(x));
    let (op, content, _) = ber(&body[ilen..])?;
    Some((id, op, content, total))
}

/// LDAP StartTLS: an ExtendedRequest ([APPLICATION 23]) naming the StartTLS OID,
/// answered by an ExtendedResponse ([APPLICATION 24]) with resultCode success.
fn ldap(client: &[u8], server: &[u8]) -> Option<Detected> {
    let (_, op, _, _) = ldap_message(client)?;
    // Bind, search, extended: what an LDAP client opens with.
    if !matches!(op, 0x60 | 0x63 | 0x77 | 0x42 | 0x66 | 0x68 | 0x6c | 0x6e) {
        return None;
    }
    let mut at = 0;
    let mut request = None;
    for _ in 0..16 {
        let Some((id, op, content, total)) = client.get(at..).and_then(ldap_message) else {
            break;
        };
        at += total;
        if op == 0x77 && find(content, LDAP_STARTTLS_OID).is_some() {
            request = Some((id, at));
            break;
        }
    }
    let Some((id, client_tls)) = request else {
        return Some(Detected::new(Protocol::Ldap, "LDAP in plaintext"));
    };
    let mut at = 0;
    for _ in 0..16 {
        let Some((rid, op, content, total)) = server.get(at..).and_then(ldap_message) else {
            break;
        };
        at += total;
        if rid == id && op == 0x78 {
            let ok = matches!(ber(content), Some((0x0a, [0], _)));
            if ok && tls::starts_with_handshake(&client[client_tls..]) {
                let mut d = Detected::new(
                    Protocol::Ldap,
                    "LDAP StartTLS extended operation accepted (success): TLS follows",
                );
                d.tls_after = Some((client_tls, at));
                return Some(d);
            }
            break;
        }
    }
    Some(Detected::new(
        Protocol::Ldap,
        "LDAP StartTLS not completed: the session stayed in plaintext",
    ))
}

/// The STARTTLS dialects, in the order they are tried.
pub fn detect(client: &[u8], server: &[u8]) -> Option<Detected> {
    line_upgrade(client, server)
        .or_else(|| xmpp(client, server))
        .or_else(|| ldap(client, server))
}

/// Where a parseable hello of `msg_type` starts within the first [`SCAN`] bytes.
fn find_hello(b: &[u8], msg_type: u8) -> Option<usize> {
    let window = &b[..b.len().min(SCAN)];
    let mut at = 0;
    while let Some(p) = window[at..].iter().position(|&x| x == tls::CT_HANDSHAKE) {
        let pos = at + p;
        let rest = &b[pos..];
        if tls::starts_with_hello(rest, msg_type) {
            let body = tls::handshake_messages(&rest[5..rest.len().min(5 + 16 * 1024)]);
            let parses = body.first().is_some_and(|m| match msg_type {
                tls::HS_CLIENT_HELLO => tls::parse_client_hello(m.body).is_some(),
                _ => tls::parse_server_hello(m.body).is_some(),
            });
            if parses {
                return Some(pos);
            }
        }
        at = pos + 1;
    }
    None
}

/// A TLS handshake after a cleartext preamble of no dialect known here (Gnutella's
/// `Upgrade: TLS`, NoMachine, HTTP `Upgrade: TLS/1.0`): the client's ClientHello
/// and the server's ServerHello, each parsed, are where TLS starts.
pub fn preamble_then_tls(client: &[u8], server: &[u8]) -> Option<Detected> {
    let c = find_hello(client, tls::HS_CLIENT_HELLO).filter(|&c| c > 0)?;
    let s = find_hello(server, tls::HS_SERVER_HELLO)?;
    let pre = &client[..c];
    let printable = pre
        .iter()
        .filter(|x| x.is_ascii_graphic() || x.is_ascii_whitespace())
        .count();
    let (protocol, kind) = if printable * 10 >= pre.len() * 9 {
        (Protocol::Text, "text")
    } else {
        (Protocol::Binary, "binary data")
    };
    let mut d = Detected::new(
        protocol,
        format!(
            "after a cleartext preamble of no protocol known here ({c} bytes of {kind} from the client, {s} from the server), a TLS handshake"
        ),
    );
    d.tls_after = Some((c, s));
    Some(d)
}

#[cfg(test)]
mod tests {
    use super::*;

    const CH: &[u8] = b"\x16\x03\x01\x00\x05\x01\x00\x00\x01\x00";

    #[test]
    fn imap_pop3_ftp_nntp_smtp() {
        // `.` is the tag OpenSSL's s_client uses.
        let mut c = b". CAPABILITY\r\n. STARTTLS\r\n".to_vec();
        c.extend_from_slice(CH);
        let s = b"* OK IMAP4rev1 ready\r\n* CAPABILITY IMAP4rev1 STARTTLS\r\n. OK done\r\n. OK Begin TLS negotiation now\r\n\x16\x03\x03\x00\x05";
        let d = detect(&c, s).expect("imap");
        assert_eq!(d.protocol, Protocol::Imap);
        let (ci, si) = d.tls_after.expect("tls");
        assert_eq!(&c[ci..ci + 1], b"\x16");
        assert_eq!(&s[si..si + 1], b"\x16");

        let mut c = b"CAPA\r\nSTLS\r\n".to_vec();
        c.extend_from_slice(CH);
        let s = b"+OK POP3 ready\r\n+OK Capability list follows\r\nSTLS\r\n.\r\n+OK Begin TLS\r\n\x16\x03\x03";
        let d = detect(&c, s).expect("pop3");
        assert_eq!(d.protocol, Protocol::Pop3);
        assert_eq!(&s[d.tls_after.expect("tls").1..][..1], b"\x16");

        let mut c = b"AUTH TLS\r\n".to_vec();
        c.extend_from_slice(CH);
        let s = b"220 ProFTPD Server\r\n234 AUTH TLS successful\r\n\x16\x03\x03";
        let d = detect(&c, s).expect("ftp");
        assert_eq!(d.protocol, Protocol::Ftp);
        assert!(d.tls_after.is_some());

        let d = detect(b"USER anonymous\r\n", b"220 FTP ready\r\n").expect("ftp plain");
        assert_eq!((d.protocol, d.tls_after), (Protocol::Ftp, None));

        let mut c = b"STARTTLS\r\n".to_vec();
        c.extend_from_slice(CH);
        let d = detect(
            &c,
            b"200 news ready\r\n382 Continue with TLS negotiation\r\n\x16\x03\x03",
        )
        .expect("nntp");
        assert_eq!(d.protocol, Protocol::Nntp);
        assert!(d.tls_after.is_some());

        // Refused: 454 and no TLS.
        let d = detect(
            b"EHLO x\r\nSTARTTLS\r\nQUIT\r\n",
            b"220 mx\r\n250 ok\r\n454 TLS not available\r\n",
        )
        .expect("smtp");
        assert_eq!((d.protocol, d.tls_after), (Protocol::Smtp, None));
    }

    #[test]
    fn xmpp_and_ldap() {
        let mut c = b"<?xml version='1.0'?><stream:stream to='x'><starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>".to_vec();
        c.extend_from_slice(CH);
        let s = b"<?xml version='1.0'?><stream:stream from='x'><stream:features><starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'><required/></starttls></stream:features><proceed xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>\x16\x03\x03";
        let d = detect(&c, s).expect("xmpp");
        assert_eq!(d.protocol, Protocol::Xmpp);
        let (ci, si) = d.tls_after.expect("tls");
        assert_eq!(c[ci], 0x16);
        assert_eq!(s[si], 0x16);

        // ExtendedRequest, message id 1, requestName [0] = StartTLS OID.
        let mut req = vec![0x30, 0x1d, 0x02, 0x01, 0x01, 0x77, 0x18, 0x80, 0x16];
        req.extend_from_slice(LDAP_STARTTLS_OID);
        let mut c = req.clone();
        c.extend_from_slice(CH);
        let mut s = vec![
            0x30, 0x0c, 0x02, 0x01, 0x01, 0x78, 0x07, 0x0a, 0x01, 0x00, 0x04, 0x00, 0x04, 0x00,
        ];
        let s_len = s.len();
        s.extend_from_slice(b"\x16\x03\x03");
        let d = detect(&c, &s).expect("ldap");
        assert_eq!(d.protocol, Protocol::Ldap);
        assert_eq!(d.tls_after, Some((req.len(), s_len)));
        // An error result code: plaintext.
        s[9] = 2;
        assert_eq!(detect(&c, &s).expect("ldap").tls_after, None);
    }

    #[test]
    fn generic_preamble() {
        let mut ch = vec![0x16, 3, 1, 0, 0x2d, 1, 0, 0, 0x29, 3, 3];
        ch.extend_from_slice(&[0; 32]);
        ch.extend_from_slice(&[0, 0, 2, 0, 0x2f, 1, 0]);
        let len = ch.len() - 5;
        ch[4] = len as u8;
        ch[8] = (len - 4) as u8;
        let mut sh = vec![0x16, 3, 3, 0, 0x2a, 2, 0, 0, 0x26, 3, 3];
        sh.extend_from_slice(&[0; 32]);
        sh.extend_from_slice(&[0, 0, 0x2f, 0]);
        let mut c = b"GNUTELLA CONNECT/0.6\r\nUpgrade: TLS/1.0\r\n\r\n".to_vec();
        let pre = c.len();
        c.extend_from_slice(&ch);
        let mut s = b"GNUTELLA/0.6 101 Switching\r\n\r\n".to_vec();
        let spre = s.len();
        s.extend_from_slice(&sh);
        let d = preamble_then_tls(&c, &s).expect("found");
        assert_eq!(d.tls_after, Some((pre, spre)));
        assert!(preamble_then_tls(&c, b"GNUTELLA/0.6 200 OK\r\n\r\n").is_none());
    }
}
