//! OpenVPN over TCP: an encrypted protocol that is not TLS on the wire, but whose
//! control channel carries a TLS handshake (with client certificates, as OpenVPN
//! deployments use them) in its P_CONTROL packets.
//!
//! Each packet is a 2-byte length, then an opcode (high 5 bits) and key id. A
//! control packet is the opcode, an 8-byte session id, the `tls-auth` HMAC,
//! packet id and time when configured, an ack array (with the peer's session id
//! when not empty), a message packet id, then TLS bytes. The HMAC's size is not
//! on the wire: it is found as the one that makes the first P_CONTROL_V1 of a
//! direction start with a TLS handshake record. With `tls-crypt` the control
//! channel is encrypted too: the connection is `unknown`, named OpenVPN.

use super::{tls, wire::Reader};

const P_CONTROL_HARD_RESET_CLIENT_V1: u8 = 1;
const P_CONTROL_HARD_RESET_SERVER_V1: u8 = 2;
const P_CONTROL_V1: u8 = 4;
const P_CONTROL_HARD_RESET_CLIENT_V2: u8 = 7;
const P_CONTROL_HARD_RESET_SERVER_V2: u8 = 8;
const P_CONTROL_HARD_RESET_CLIENT_V3: u8 = 10;

/// Sizes of `tls-auth` (HMAC + packet id + time) tried: none, MD5, SHA-1, SHA-256,
/// SHA-384, SHA-512.
const AUTH_SIZES: [usize; 6] = [0, 16 + 8, 20 + 8, 32 + 8, 48 + 8, 64 + 8];
/// Packets read per direction.
const MAX_PACKETS: usize = 256;

/// The TLS bytes of one direction's control channel, with where each piece was
/// in the original stream.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Channel {
    pub tls: Vec<u8>,
    /// (offset in `tls`, offset in the original stream) of each piece.
    pub pieces: Vec<(usize, usize)>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OpenVpn {
    /// The TLS of the control channel, when it could be read: (client, server,
    /// bytes of tls-auth per packet).
    pub tls: Option<(Channel, Channel, usize)>,
}

/// (opcode, packet body, offset of the body in the stream) of each packet.
fn packets(b: &[u8]) -> Vec<(u8, &[u8], usize)> {
    let mut out = Vec::new();
    let mut at = 0;
    while out.len() < MAX_PACKETS && at + 2 <= b.len() {
        let len = usize::from(u16::from_be_bytes([b[at], b[at + 1]]));
        let Some(body) = b.get(at + 2..at + 2 + len) else {
            break;
        };
        if len == 0 {
            break;
        }
        out.push((body[0] >> 3, body, at + 2));
        at += 2 + len;
    }
    out
}

/// Whether the streams open like OpenVPN over TCP: a hard reset from each side,
/// key id 0.
pub fn detect(client: &[u8], server: &[u8]) -> Option<OpenVpn> {
    let c = packets(client);
    let &(op, first, _) = c.first()?;
    let client_reset = matches!(
        op,
        P_CONTROL_HARD_RESET_CLIENT_V1
            | P_CONTROL_HARD_RESET_CLIENT_V2
            | P_CONTROL_HARD_RESET_CLIENT_V3
    );
    if !client_reset || first[0] & 7 != 0 || !(14..=1024).contains(&first.len()) {
        return None;
    }
    let s = packets(server);
    match s.first() {
        Some(&(op, body, _))
            if matches!(
                op,
                P_CONTROL_HARD_RESET_SERVER_V1 | P_CONTROL_HARD_RESET_SERVER_V2
            ) && body[0] & 7 == 0 => {}
        // A lone client reset is not enough to name the protocol.
        _ => return None,
    }
    let tls = AUTH_SIZES.iter().find_map(|&auth| {
        let cc = channel(&c, auth)?;
        let sc = channel(&s, auth).unwrap_or_default();
        Some((cc, sc, auth))
    });
    Some(OpenVpn { tls })
}

/// The TLS payload of a P_CONTROL_V1 packet, given the size of tls-auth.
fn control_payload(body: &[u8], auth: usize) -> Option<(&[u8], usize)> {
    let mut r = Reader::new(body);
    r.skip(1 + 8 + auth)?;
    let acks = usize::from(r.u8()?);
    r.skip(acks * 4)?;
    if acks > 0 {
        r.skip(8)?;
    }
    r.skip(4)?;
    let start = body.len() - r.remaining();
    Some((r.rest(), start))
}

fn channel(pkts: &[(u8, &[u8], usize)], auth: usize) -> Option<Channel> {
    let mut ch = Channel::default();
    for &(op, body, at) in pkts {
        if op != P_CONTROL_V1 {
            continue;
        }
        let (payload, start) = control_payload(body, auth)?;
        if ch.tls.is_empty() && !tls::starts_with_handshake(payload) {
            return None;
        }
        ch.pieces.push((ch.tls.len(), at + start));
        ch.tls.extend_from_slice(payload);
    }
    (!ch.tls.is_empty()).then_some(ch)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pkt(op: u8, body: &[u8]) -> Vec<u8> {
        let mut v = ((body.len() + 1) as u16).to_be_bytes().to_vec();
        v.push(op << 3);
        v.extend_from_slice(body);
        v
    }

    /// A P_CONTROL_V1 with `auth` bytes of tls-auth, no acks, message id, payload.
    fn control(auth: usize, payload: &[u8]) -> Vec<u8> {
        let mut body = vec![0xaa; 8];
        body.extend(std::iter::repeat_n(0x55, auth));
        body.push(0);
        body.extend_from_slice(&[0, 0, 0, 1]);
        body.extend_from_slice(payload);
        pkt(P_CONTROL_V1, &body)
    }

    #[test]
    fn control_channel_tls_with_and_without_tls_auth() {
        for auth in [0, 28] {
            let mut c = pkt(P_CONTROL_HARD_RESET_CLIENT_V2, &[0; 13]);
            c.extend(control(auth, &[0x16, 3, 1, 0, 2, 1, 0]));
            c.extend(control(auth, b"more"));
            let mut s = pkt(P_CONTROL_HARD_RESET_SERVER_V2, &[0; 13]);
            s.extend(control(auth, &[0x16, 3, 1, 0, 2, 2, 0]));
            let ov = detect(&c, &s).expect("openvpn");
            let (cc, sc, a) = ov.tls.expect("tls found");
            assert_eq!(a, auth);
            assert_eq!(cc.tls, b"\x16\x03\x01\x00\x02\x01\x00more");
            assert_eq!(sc.tls[5], 2);
            assert_eq!(cc.pieces.len(), 2);
        }
        // Encrypted control channel: OpenVPN, no TLS.
        let mut c = pkt(P_CONTROL_HARD_RESET_CLIENT_V2, &[0; 13]);
        c.extend(pkt(P_CONTROL_V1, &[0x99; 64]));
        let s = pkt(P_CONTROL_HARD_RESET_SERVER_V2, &[0; 13]);
        assert_eq!(detect(&c, &s), Some(OpenVpn { tls: None }));
        assert_eq!(detect(b"\x00\x0eGET / HTTP/1.1", b""), None);
    }
}
