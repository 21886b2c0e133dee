//! The principal a client certificate names. The certificate has already been verified
//! against the configured client CA by the TLS handshake; this only reads its subject.

use x509_parser::prelude::{FromDer, GeneralName, X509Certificate};

/// The principal of a verified client certificate: its subject's common name, or, with
/// none, its first DNS subject alternative name. `None` for a certificate naming neither
/// (the request is then treated as carrying no credential).
pub fn principal_of_certificate(der: &[u8]) -> Option<String> {
    let (_, cert) = X509Certificate::from_der(der).ok()?;
    if let Some(cn) = cert
        .subject()
        .iter_common_name()
        .next()
        .and_then(|cn| cn.as_str().ok())
        .filter(|cn| !cn.trim().is_empty())
    {
        return Some(cn.to_owned());
    }
    let san = cert.subject_alternative_name().ok()??;
    san.value.general_names.iter().find_map(|name| match name {
        GeneralName::DNSName(dns) if !dns.is_empty() => Some((*dns).to_owned()),
        _ => None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn garbage_is_no_principal() {
        assert_eq!(principal_of_certificate(b""), None);
        assert_eq!(principal_of_certificate(&[0x30, 0x82, 0xff, 0xff, 0]), None);
    }
}
