//! JA4 fingerprint of a ClientHello (FoxIO's JA4, BSD-3-Clause; not the JA4+
//! variants), as specified in FoxIO's `technical_details/JA4.md`:
//!
//! `t` + version + `d`/`i` (SNI present or not) + cipher count + extension count +
//! first and last character of the first ALPN value, `_`, the first 12 hex digits
//! of SHA-256 over the sorted cipher list, `_`, the first 12 hex digits of SHA-256
//! over the sorted extension list without SNI and ALPN, `_`, the signature
//! algorithms in their original order. GREASE values are ignored everywhere.

use sha2::{Digest as _, Sha256};

use super::tls::{ClientHello, EXT_ALPN, EXT_SERVER_NAME, is_grease};

fn version_code(v: u16) -> &'static str {
    match v {
        0x0304 => "13",
        0x0303 => "12",
        0x0302 => "11",
        0x0301 => "10",
        0x0300 => "s3",
        0x0002 => "s2",
        0xfeff => "d1",
        0xfefd => "d2",
        0xfefc => "d3",
        _ => "00",
    }
}

/// First 12 hex digits of SHA-256 over a comma-separated list of 4-digit lower-case
/// hex values, optionally followed by `_` and a second list. Hashes incrementally:
/// no string is built.
fn hash12(first: &[u16], second: &[u16]) -> String {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    fn put(h: &mut Sha256, list: &[u16]) {
        for (i, v) in list.iter().enumerate() {
            if i > 0 {
                h.update(b",");
            }
            let b = v.to_be_bytes();
            h.update([
                HEX[usize::from(b[0] >> 4)],
                HEX[usize::from(b[0] & 15)],
                HEX[usize::from(b[1] >> 4)],
                HEX[usize::from(b[1] & 15)],
            ]);
        }
    }
    let mut h = Sha256::new();
    put(&mut h, first);
    if !second.is_empty() {
        h.update(b"_");
        put(&mut h, second);
    }
    let digest = h.finalize();
    let mut out = String::with_capacity(12);
    for b in digest.iter().take(6) {
        out.push(HEX[usize::from(b >> 4)] as char);
        out.push(HEX[usize::from(b & 15)] as char);
    }
    out
}

fn alpn_code(first: Option<&[u8]>) -> String {
    let Some(v) = first.filter(|v| !v.is_empty()) else {
        return "00".into();
    };
    let (a, b) = (v[0], v[v.len() - 1]);
    if a.is_ascii_alphanumeric() && b.is_ascii_alphanumeric() {
        format!("{}{}", a as char, b as char)
    } else {
        let hex: String = v.iter().map(|b| format!("{b:02x}")).collect();
        let bytes = hex.as_bytes();
        format!("{}{}", bytes[0] as char, bytes[bytes.len() - 1] as char)
    }
}

/// The JA4 fingerprint (TLS over TCP).
pub fn ja4(ch: &ClientHello) -> String {
    let version = ch
        .supported_versions
        .iter()
        .copied()
        .filter(|v| !is_grease(*v))
        .max()
        .unwrap_or(ch.legacy_version);
    let ciphers: Vec<u16> = ch
        .ciphers
        .iter()
        .copied()
        .filter(|c| !is_grease(*c))
        .collect();
    let exts: Vec<u16> = ch
        .extensions
        .iter()
        .copied()
        .filter(|e| !is_grease(*e))
        .collect();
    let sni = if ch.extensions.contains(&EXT_SERVER_NAME) {
        'd'
    } else {
        'i'
    };
    let a = format!(
        "t{}{sni}{:02}{:02}{}",
        version_code(version),
        ciphers.len().min(99),
        exts.len().min(99),
        alpn_code(ch.alpn.first().map(Vec::as_slice))
    );

    let mut sorted = ciphers;
    sorted.sort_unstable();
    let b = if sorted.is_empty() {
        "000000000000".to_owned()
    } else {
        hash12(&sorted, &[])
    };

    let mut ext_sorted: Vec<u16> = exts
        .iter()
        .copied()
        .filter(|e| *e != EXT_SERVER_NAME && *e != EXT_ALPN)
        .collect();
    ext_sorted.sort_unstable();
    let sigs: Vec<u16> = ch
        .signature_algorithms
        .iter()
        .copied()
        .filter(|s| !is_grease(*s))
        .collect();
    let c = if ext_sorted.is_empty() {
        "000000000000".to_owned()
    } else {
        hash12(&ext_sorted, &sigs)
    };
    format!("{a}_{b}_{c}")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The worked example of the JA4 specification.
    #[test]
    fn matches_the_specification_example() {
        let ch = ClientHello {
            legacy_version: 0x0303,
            ciphers: vec![
                0x0a0a, 0x1301, 0x1302, 0x1303, 0xc02b, 0xc02f, 0xc02c, 0xc030, 0xcca9, 0xcca8,
                0xc013, 0xc014, 0x009c, 0x009d, 0x002f, 0x0035,
            ],
            extensions: vec![
                0x1a1a, 0x001b, 0x0000, 0x0033, 0x0010, 0x4469, 0x0017, 0x002d, 0x000d, 0x0005,
                0x0023, 0x0012, 0x002b, 0xff01, 0x000b, 0x000a, 0x0015,
            ],
            sni: Some("example.com".into()),
            alpn: vec![b"h2".to_vec(), b"http/1.1".to_vec()],
            supported_versions: vec![0x2a2a, 0x0304, 0x0303],
            signature_algorithms: vec![
                0x0403, 0x0804, 0x0401, 0x0503, 0x0805, 0x0501, 0x0806, 0x0601,
            ],
            ..ClientHello::default()
        };
        assert_eq!(ja4(&ch), "t13d1516h2_8daaf6152771_e5627efa2ab1");
    }

    #[test]
    fn alpn_edge_cases() {
        assert_eq!(alpn_code(None), "00");
        assert_eq!(alpn_code(Some(b"")), "00");
        assert_eq!(alpn_code(Some(b"h")), "hh");
        assert_eq!(alpn_code(Some(b"http/1.1")), "h1");
        assert_eq!(alpn_code(Some(&[0xab])), "ab");
        assert_eq!(alpn_code(Some(&[0xab, 0xcd])), "ad");
        assert_eq!(alpn_code(Some(&[0x30, 0xab])), "3b");
        assert_eq!(alpn_code(Some(&[0x30, 0x31, 0xab, 0xcd])), "3d");
        assert_eq!(alpn_code(Some(&[0x30, 0xab, 0xcd, 0x31])), "01");
    }

    #[test]
    fn no_signature_algorithms_leaves_no_underscore() {
        let ch = ClientHello {
            legacy_version: 0x0303,
            ciphers: vec![0x002f],
            extensions: vec![
                0x0005, 0x000a, 0x000b, 0x000d, 0x0012, 0x0015, 0x0017, 0x001b, 0x0023, 0x002b,
                0x002d, 0x0033, 0x4469, 0xff01,
            ],
            ..ClientHello::default()
        };
        let fp = ja4(&ch);
        assert!(fp.ends_with("_6d807ffa2a79"), "{fp}");
        assert!(fp.starts_with("t12i0114"), "{fp}");
    }
}
