//! Client certificates: the TLS 1.2 certificate list and the leaf's X.509 facts.

use serde::Serialize;

use crate::classify::wire::Reader;

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
pub(super) fn tls12_certificate_list(body: &[u8]) -> (Option<usize>, Option<&[u8]>) {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tls12_certificate_lists() {
        assert_eq!(tls12_certificate_list(&[0, 0, 0]).0, Some(0));
        let body = [0, 0, 6, 0, 0, 3, 1, 2, 3];
        let (n, leaf) = tls12_certificate_list(&body);
        assert_eq!(n, Some(1));
        assert_eq!(leaf, Some(&[1, 2, 3][..]));
        assert_eq!(tls12_certificate_list(&[0, 0]).0, None);
    }
}
