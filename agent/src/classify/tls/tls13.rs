//! TLS 1.3: client authentication from the sizes of encrypted records.
//!
//! The client's first encrypted flight after the ServerHello is Finished, perhaps
//! preceded by an (empty or not) Certificate + CertificateVerify and by a client
//! EncryptedExtensions (Chrome's ALPS). Each record's size is its handshake bytes
//! `m`, plus 1 (the inner content type), plus any padding `p` the sender adds
//! (RFC 8446 5.4), plus the AEAD tag `t`. What a record shows is therefore an upper
//! bound `m + p` ([`payload`]); the decision works on ranges of it, so that a stack
//! that pads (Java pads every record with 16 zero bytes) or coalesces messages into
//! one record (BoringSSL, NSS) needs no constant of its own. With `F = 4 + h` (the
//! Finished message for a hash of `h` bytes), the client's flight totals:
//!
//! | range of the flight's handshake bytes | meaning |
//! | --- | --- |
//! | `F` .. `F + NO_CERT_EXTRA` | no certificate: Finished, perhaps with an empty Certificate (8), a client EncryptedExtensions (ALPS), and record padding |
//! | `F + NO_CERT_EXTRA` .. `F + CERT_MIN_EXTRA` | neither: `unknown` |
//! | `F + CERT_MIN_EXTRA` and up | a Certificate + CertificateVerify: `mutual_tls`, `high` when sent as separate records ending in a Finished-sized record or when `F + CERT_HIGH_EXTRA` and up, else `medium` |
//!
//! docs/classifier.md lists which stacks were measured in which range.

use std::fmt::Write as _;

use super::*;

/// (hash length, AEAD tag length) of a TLS 1.3 cipher suite.
fn tls13_sizes(cipher: u16) -> Option<(usize, usize)> {
    match cipher {
        0x1301 | 0x1303 | 0x1304 => Some((32, 16)),
        0x1302 => Some((48, 16)),
        0x1305 => Some((32, 8)),
        _ => None,
    }
}

/// A no-certificate flight carries at most this many handshake bytes beyond
/// Finished: an empty Certificate (8), a client EncryptedExtensions (Chrome's ALPS,
/// 10 bytes measured, a few dozen with HTTP/2 settings) and record padding (Java:
/// 16 per record).
pub const NO_CERT_EXTRA: usize = 128;
/// A certificate flight carries at least this many beyond Finished: the smallest
/// certificate in use (an Ed25519 certificate with one-letter names, about 180
/// bytes) in a Certificate message (+ 13) and its CertificateVerify (72).
pub const CERT_MIN_EXTRA: usize = 192;
/// From here the size alone leaves no doubt: more than 250 bytes above the largest
/// no-certificate flight.
pub const CERT_HIGH_EXTRA: usize = 384;
/// Padding accepted on a record that carries only Finished, or only an alert.
pub const RECORD_PADDING: usize = 32;
/// Records of a flight looked at.
const FLIGHT_WINDOW: usize = 16;

/// The bytes a TLS 1.3 record can carry: handshake (or alert, or data) bytes plus
/// padding, i.e. its length minus the tag and the inner content type.
pub fn payload(r: &Record, tag: usize) -> usize {
    r.len.saturating_sub(tag + 1)
}

/// An encrypted alert (2 bytes, perhaps padded). A padded one is only taken for
/// an alert when nothing follows it in that direction.
fn alert_sized(r: &Record, tag: usize, last: bool) -> bool {
    let p = payload(r, tag);
    p == 2 || (last && (2..=2 + RECORD_PADDING).contains(&p))
}

/// The client's first flight, as the record sizes show it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Flight {
    /// No certificate; `end` indexes the last record of the flight.
    NoCert {
        end: usize,
        total: usize,
        /// Records before the Finished-sized one (empty Certificate, EE).
        prefix: usize,
        prefix_bytes: usize,
    },
    /// A certificate flight: `first` is the record carrying the Certificate.
    Cert {
        end: usize,
        first: usize,
        total: usize,
    },
    /// More than a no-certificate flight, less than any certificate.
    Between {
        end: usize,
        total: usize,
    },
    /// One small record and nothing else: an alert instead of Finished.
    Aborted,
    /// Small records only, no Finished yet.
    Incomplete,
    Missing,
}

/// Whether `m` handshake bytes are a CertificateVerify: a 4-byte header, the
/// signature scheme (2), a length (2) and one signature of a size its algorithm
/// fixes (ECDSA P-256/P-384/P-521 in DER, Ed25519, Ed448, RSA of 1024 to 4096 bits).
fn certificate_verify_sized(m: usize) -> bool {
    let Some(sig) = m.checked_sub(8) else {
        return false;
    };
    matches!(sig, 64 | 114 | 128 | 256 | 384 | 512 | 68..=72 | 100..=104 | 135..=139)
}

/// Where a Finished record follows the certificate record `i`: a record of exactly
/// `F` in the next four; else, two records on, a Finished with `d` bytes of padding
/// after a CertificateVerify-sized record padded alike (Java pads every record);
/// else `i` itself (the whole flight coalesced into one record).
fn finished_after(enc: &[&Record], i: usize, finished: usize, tag: usize) -> usize {
    let last = (i + 4).min(enc.len().saturating_sub(1));
    let p = |j: usize| payload(enc[j], tag);
    if let Some(j) = (i + 1..=last).find(|&j| p(j) == finished) {
        return j;
    }
    let j = i + 2;
    if j <= last
        && let Some(pad) = p(j).checked_sub(finished)
        && pad <= RECORD_PADDING
        && p(i + 1)
            .checked_sub(pad)
            .is_some_and(certificate_verify_sized)
    {
        return j;
    }
    i
}

fn client_flight(enc: &[&Record], finished: usize, tag: usize) -> Flight {
    let enc = &enc[..enc.len().min(FLIGHT_WINDOW)];
    if enc.is_empty() {
        return Flight::Missing;
    }
    let p = |i: usize| payload(enc[i], tag);
    let mut i = 0;
    let mut prefix_bytes = 0;
    while i < enc.len() && i < 4 && p(i) < finished {
        prefix_bytes += p(i);
        i += 1;
    }
    if i == enc.len() {
        return if i == 1 && p(0) <= 2 + RECORD_PADDING && p(0) != 8 {
            Flight::Aborted
        } else {
            Flight::Incomplete
        };
    }
    let total = prefix_bytes + p(i);
    if total <= finished + NO_CERT_EXTRA {
        return Flight::NoCert {
            end: i,
            total,
            prefix: i,
            prefix_bytes,
        };
    }
    let end = finished_after(enc, i, finished, tag);
    let total = (0..=end).map(p).sum::<usize>();
    if total >= finished + CERT_MIN_EXTRA {
        Flight::Cert {
            end,
            first: i,
            total,
        }
    } else {
        Flight::Between { end, total }
    }
}

/// A certificate flight (or an empty Certificate) that the client sent later,
/// answering a post-handshake CertificateRequest: (index of its last record,
/// bytes, whether it carried a certificate).
fn post_handshake_flight(
    post: &[&Record],
    finished: usize,
    tag: usize,
) -> Option<(usize, usize, bool)> {
    let p = |i: usize| payload(post[i], tag);
    let window = post.len().min(FLIGHT_WINDOW);
    for k in 0..window {
        if p(k) > finished + NO_CERT_EXTRA {
            let end = finished_after(post, k, finished, tag);
            if end > k {
                let total = (k..=end).map(p).sum::<usize>();
                if total >= finished + CERT_MIN_EXTRA {
                    return Some((end, total, true));
                }
            }
        } else if (8..=8 + RECORD_PADDING).contains(&p(k))
            && k + 1 < post.len()
            && (finished..=finished + RECORD_PADDING).contains(&p(k + 1))
        {
            return Some((k + 1, p(k) + p(k + 1), false));
        }
    }
    None
}

pub(super) fn analyze_tls13(
    client: &Side<'_>,
    server: &Side<'_>,
    c: &Direction,
    s: &Direction,
    sh: &ServerHello,
    pha_offered: bool,
    mut info: TlsInfo,
) -> TlsAnalysis {
    let (hash, tag, sizes_known) = match tls13_sizes(sh.cipher) {
        Some((h, t)) => (h, t, true),
        None => (32, 16, false),
    };
    let finished = 4 + hash;
    // Records the client encrypted: everything it sent as application data, except
    // 0-RTT data sent before the ServerHello arrived.
    let sh_ts = s
        .records
        .iter()
        .find(|r| r.content_type == CT_HANDSHAKE)
        .and_then(|r| server.ts_at(r.offset));
    let enc: Vec<&Record> = c
        .records
        .iter()
        .filter(|r| r.content_type == CT_APPLICATION_DATA)
        .filter(|r| match (sh_ts, client.ts_at(r.offset)) {
            (Some(sh), Some(t)) => t >= sh,
            _ => true,
        })
        .collect();

    info.resumed = sh.psk_accepted;
    let flight = client_flight(&enc, finished, tag);
    let mut flight_end = match flight {
        Flight::NoCert { end, .. } | Flight::Cert { end, .. } | Flight::Between { end, .. } => {
            Some(end)
        }
        _ => None,
    };
    let (mut class, mut confidence, mut evidence) = if sh.psk_accepted {
        info.client_auth = ClientAuth::Resumed;
        // Finished, perhaps after EndOfEarlyData: the first record of the size.
        flight_end = enc
            .iter()
            .position(|r| (finished..=finished + NO_CERT_EXTRA).contains(&payload(r, tag)));
        (
            SecurityClass::Unknown,
            Confidence::High,
            "TLS 1.3 session resumed (pre_shared_key accepted): no certificate flight is sent"
                .to_owned(),
        )
    } else {
        match flight {
            Flight::Missing => (
                SecurityClass::Unknown,
                Confidence::Low,
                "TLS 1.3: the client's encrypted flight was not captured".to_owned(),
            ),
            Flight::Aborted => (
                SecurityClass::Unknown,
                Confidence::Medium,
                "TLS 1.3: the client answered the server's flight with an alert and no Finished (it aborted the handshake)"
                    .to_owned(),
            ),
            Flight::Incomplete => (
                SecurityClass::Unknown,
                Confidence::Low,
                "TLS 1.3: the client's flight was cut off before its Finished".to_owned(),
            ),
            Flight::NoCert {
                end,
                total,
                prefix,
                prefix_bytes,
            } => {
                info.client_flight_bytes = Some(total);
                let rec = enc[end].len;
                let extra = total - finished;
                let padded_empty = (8..=8 + RECORD_PADDING).contains(&prefix_bytes);
                let ev = if prefix == 0 && extra == 0 {
                    info.client_auth = ClientAuth::None;
                    format!(
                        "TLS 1.3: the client's first encrypted flight is a bare Finished ({total} bytes = 4 + {hash}, in a record of {rec}), no certificate"
                    )
                } else if prefix == 0 && extra == 8 {
                    info.client_auth = ClientAuth::EmptyCertificate;
                    format!(
                        "TLS 1.3: the client's first encrypted flight is an empty Certificate + Finished ({total} bytes = 8 + 4 + {hash}, in a record of {rec})"
                    )
                } else if prefix == 1 && padded_empty {
                    info.client_auth = ClientAuth::EmptyCertificate;
                    if prefix_bytes == 8 && extra == 8 {
                        "TLS 1.3: the client sent an empty Certificate, then Finished".to_owned()
                    } else {
                        format!(
                            "TLS 1.3: the client sent an empty Certificate, then Finished, in padded records ({total} bytes with padding: 8 + {finished} + {} of padding)",
                            extra.saturating_sub(8)
                        )
                    }
                } else if prefix == 0 && extra <= RECORD_PADDING {
                    info.client_auth = ClientAuth::None;
                    format!(
                        "TLS 1.3: the client's first encrypted flight is a Finished ({finished} bytes = 4 + {hash}) padded to {total} (a record of {rec}), no certificate"
                    )
                } else {
                    info.client_auth = ClientAuth::None;
                    format!(
                        "TLS 1.3: the client's first encrypted flight carries {total} handshake bytes in {} record(s): Finished ({finished}) and {extra} more, within the no-certificate range \
                         (at most {NO_CERT_EXTRA} more: an empty Certificate, a client EncryptedExtensions such as Chrome's ALPS, record padding), no certificate",
                        prefix + 1
                    )
                };
                (SecurityClass::Tls, Confidence::High, ev)
            }
            Flight::Cert { end, first, total } => {
                info.client_flight_bytes = Some(total);
                info.client_auth = ClientAuth::Certificate;
                let extra = total - finished;
                let separate = end > first;
                let conf = if !sizes_known {
                    Confidence::Medium
                } else if separate || extra >= CERT_HIGH_EXTRA {
                    Confidence::High
                } else {
                    Confidence::Medium
                };
                let shape = if separate {
                    format!("in {} records", end + 1)
                } else if first == 0 {
                    "coalesced in one record".to_owned()
                } else {
                    format!("coalesced after {first} small record(s)")
                };
                let mut ev = format!(
                    "TLS 1.3: the client's first encrypted flight carries {total} handshake bytes: \
                     Certificate + CertificateVerify ({extra} bytes) + Finished ({finished}), {shape}"
                );
                if conf == Confidence::Medium && sizes_known {
                    let _ = write!(
                        ev,
                        "; {extra} bytes is above any no-certificate flight (at most {NO_CERT_EXTRA}) but below {CERT_HIGH_EXTRA}"
                    );
                }
                (SecurityClass::MutualTls, conf, ev)
            }
            Flight::Between { total, .. } => {
                info.client_flight_bytes = Some(total);
                (
                    SecurityClass::Unknown,
                    Confidence::Low,
                    format!(
                        "TLS 1.3: the client's first encrypted flight ({total} bytes) is more than a no-certificate flight \
                         (Finished of {finished} + at most {NO_CERT_EXTRA}) and less than any certificate flight (+ {CERT_MIN_EXTRA})"
                    ),
                )
            }
        }
    };
    info.handshake_complete = flight_end.is_some();

    // What the server did after the client's flight: timestamps of segments order the
    // two directions.
    let mut server_answered = None;
    let mut server_alert = false;
    let flight_ts = flight_end.and_then(|end| client.ts_at(enc[end].offset));
    if let Some(f) = flight_ts {
        let after: Vec<&Record> = s
            .records
            .iter()
            .filter(|r| r.content_type == CT_APPLICATION_DATA || r.content_type == CT_ALERT)
            .filter(|r| server.ts_at(r.offset).is_some_and(|t| t > f))
            .collect();
        let n = after.len();
        let alert_at =
            |i: usize, r: &Record| r.content_type == CT_ALERT || alert_sized(r, tag, i + 1 == n);
        server_alert = after.iter().enumerate().any(|(i, r)| alert_at(i, r));
        server_answered = Some(
            after
                .iter()
                .enumerate()
                .any(|(i, r)| r.content_type == CT_APPLICATION_DATA && !alert_at(i, r)),
        );
    }
    if s.alerts_before_ccs() {
        server_alert = true;
    }
    // After its flight the client sends data, or (giving up, e.g. on a certificate it
    // does not accept) only an alert-sized record. A small last record that the
    // server answered with data was a request, not an alert.
    let post: &[&Record] = flight_end.map_or(&[], |end| enc.get(end + 1..).unwrap_or(&[]));
    let answered_later = |r: &Record| {
        client.ts_at(r.offset).is_some_and(|t| {
            s.records.iter().any(|sr| {
                sr.content_type == CT_APPLICATION_DATA
                    && payload(sr, tag) > 2 + RECORD_PADDING
                    && server.ts_at(sr.offset).is_some_and(|st| st > t)
            })
        })
    };
    let client_data = post.iter().enumerate().any(|(i, r)| {
        let last = i + 1 == post.len() && !answered_later(r);
        !alert_sized(r, tag, last)
    });
    let client_alert = c.alerts_before_ccs()
        || (!sh.psk_accepted && flight == Flight::Aborted)
        || (!client_data && !post.is_empty());

    // Post-handshake authentication: the server may ask for a certificate at any
    // time after the handshake, and the answer travels in records that look like
    // application data.
    if pha_offered && flight_end.is_some() && class != SecurityClass::MutualTls {
        info.post_handshake_auth = true;
        // Only what the client sent after the server spoke again can answer a
        // request from it.
        let server_spoke_after = |r: &Record| match (flight_ts, client.ts_at(r.offset)) {
            (Some(f), Some(t)) => s
                .records
                .iter()
                .any(|sr| server.ts_at(sr.offset).is_some_and(|st| st > f && st < t)),
            _ => true,
        };
        let later: Vec<&Record> = post
            .iter()
            .copied()
            .skip_while(|r| !server_spoke_after(r))
            .collect();
        match post_handshake_flight(&later, finished, tag) {
            Some((_, bytes, true)) => {
                class = SecurityClass::MutualTls;
                confidence = Confidence::Medium;
                info.client_auth = ClientAuth::Certificate;
                let _ = write!(
                    evidence,
                    "; the client offered post-handshake authentication and later sent records shaped like \
                     Certificate + CertificateVerify + Finished ({bytes} bytes): a certificate the server asked for after the handshake"
                );
            }
            Some((_, _, false)) => {
                confidence = Confidence::Medium;
                info.client_auth = ClientAuth::EmptyCertificate;
                evidence.push_str(
                    "; the client offered post-handshake authentication and later answered with records shaped like \
                     an empty Certificate + Finished",
                );
            }
            // A certificate needs at least the smallest certificate flight's bytes: a
            // later record below that carries none.
            None if class == SecurityClass::Tls
                && (client.truncated
                    || later
                        .iter()
                        .any(|r| payload(r, tag) >= finished + CERT_MIN_EXTRA)) =>
            {
                confidence = Confidence::Medium;
                evidence.push_str(
                    "; but the client offered post-handshake authentication (post_handshake_auth) and later sent \
                     records large enough to carry a certificate the server asked for after the handshake, which \
                     travels encrypted like data: the wire cannot rule it out",
                );
            }
            None if class == SecurityClass::Tls => {
                evidence.push_str(
                    "; the client offered post-handshake authentication, but nothing it sent later is large enough \
                     to carry a certificate",
                );
            }
            None => {}
        }
    }
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

    fn rec(len: usize) -> Record {
        Record {
            content_type: CT_APPLICATION_DATA,
            version: 0x0303,
            len,
            offset: 0,
            available: len,
        }
    }

    fn flight(lens: &[usize], hash: usize) -> Flight {
        let recs: Vec<Record> = lens.iter().map(|&l| rec(l)).collect();
        let refs: Vec<&Record> = recs.iter().collect();
        client_flight(&refs, 4 + hash, 16)
    }

    #[test]
    fn bare_padded_and_alps_finished_are_no_certificate() {
        // OpenSSL/Go/rustls: 53 (SHA-256), 69 (SHA-384).
        assert!(matches!(
            flight(&[53, 100], 32),
            Flight::NoCert { total: 36, .. }
        ));
        assert!(matches!(
            flight(&[69], 48),
            Flight::NoCert { total: 52, .. }
        ));
        // Java: every record padded with 16 bytes: 69 (SHA-256), 85 (SHA-384).
        assert!(matches!(
            flight(&[69], 32),
            Flight::NoCert { total: 52, .. }
        ));
        assert!(matches!(
            flight(&[85], 48),
            Flight::NoCert { total: 68, .. }
        ));
        // Java's empty Certificate (41) then a padded Finished.
        assert!(matches!(
            flight(&[41, 85], 48),
            Flight::NoCert {
                end: 1,
                prefix: 1,
                prefix_bytes: 24,
                ..
            }
        ));
        // Chrome: EncryptedExtensions (ALPS, 10 bytes) coalesced with Finished.
        assert!(matches!(
            flight(&[63], 32),
            Flight::NoCert { total: 46, .. }
        ));
        // Go: empty Certificate in its own 25-byte record.
        assert!(matches!(
            flight(&[25, 53], 32),
            Flight::NoCert { end: 1, .. }
        ));
    }

    #[test]
    fn certificate_flights_separate_coalesced_and_padded() {
        // OpenSSL: Certificate, CertificateVerify, Finished records.
        assert!(matches!(
            flight(&[900, 97, 69, 40], 48),
            Flight::Cert {
                end: 2,
                first: 0,
                ..
            }
        ));
        // Java: the same, every record padded by 16; Finished is 85.
        assert!(matches!(
            flight(&[916, 113, 85, 40], 48),
            Flight::Cert { end: 2, .. }
        ));
        // BoringSSL/NSS: one coalesced record of 590 bytes.
        assert!(matches!(
            flight(&[590, 120, 60], 32),
            Flight::Cert {
                end: 0,
                total: 573,
                ..
            }
        ));
        // A lone alert, and a flight between the ranges.
        assert_eq!(flight(&[19], 32), Flight::Aborted);
        assert!(matches!(
            flight(&[17 + 36 + 150], 32),
            Flight::Between { .. }
        ));
        assert_eq!(flight(&[], 32), Flight::Missing);
    }

    #[test]
    fn post_handshake_answers() {
        let recs: Vec<Record> = [900, 97, 53].iter().map(|&l| rec(l)).collect();
        let refs: Vec<&Record> = recs.iter().collect();
        assert_eq!(
            post_handshake_flight(&refs, 36, 16),
            Some((2, 883 + 80 + 36, true))
        );
        let recs: Vec<Record> = [100, 25, 53].iter().map(|&l| rec(l)).collect();
        let refs: Vec<&Record> = recs.iter().collect();
        assert_eq!(
            post_handshake_flight(&refs, 36, 16),
            Some((2, 8 + 36, false))
        );
        let recs: Vec<Record> = [300, 200].iter().map(|&l| rec(l)).collect();
        let refs: Vec<&Record> = recs.iter().collect();
        assert_eq!(post_handshake_flight(&refs, 36, 16), None);
    }
}
