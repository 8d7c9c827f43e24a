//! The client's certificate verifier: webpki's, plus the self-signed certificates that
//! the user trusts, each accepted for exactly itself.
//!
//! `openssl req -x509` makes a certificate that is its own CA (`CA:TRUE`). webpki
//! refuses such a certificate as a server's own (`CaUsedAsEndEntity`) even when it is
//! trusted, while OpenSSL, and so the Python tool, accept it. Here a server certificate
//! that webpki refuses as `CaUsedAsEndEntity` or `UnknownIssuer` is accepted when it is
//! byte for byte one of the trusted self-signed certificates, and its validity period and
//! name still check out. The handshake signature is checked by webpki as always, so the
//! server must hold the certificate's key.

use std::sync::Arc;

use futures_rustls::rustls::client::danger::{
    HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier,
};
use futures_rustls::rustls::client::{verify_server_name, WebPkiServerVerifier};
use futures_rustls::rustls::server::ParsedCertificate;
use futures_rustls::rustls::{
    self, CertificateError, DigitallySignedStruct, DistinguishedName, OtherError, SignatureScheme,
};
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};

use super::time::validity;

/// webpki's verification, then the exact match with a trusted self-signed certificate.
#[derive(Debug)]
pub(crate) struct Verifier {
    webpki: Arc<WebPkiServerVerifier>,
    /// The system's trusted self-issued certificates, shared by every connection.
    system: &'static [CertificateDer<'static>],
    /// The self-issued certificates of `--ca-file`.
    own: Vec<CertificateDer<'static>>,
}

/// Is `cert` self-issued (its issuer is its subject)? Only such a certificate can be a
/// server's own and its own trust anchor at once.
pub(crate) fn is_self_issued(cert: &CertificateDer<'_>) -> bool {
    webpki::EndEntityCert::try_from(cert).is_ok_and(|c| c.issuer() == c.subject())
}

impl Verifier {
    /// `webpki`, which also accepts as a server's own certificate each self-issued one of
    /// `system` (all self-issued) and `own` when a server presents exactly it.
    pub(crate) fn new(
        webpki: Arc<WebPkiServerVerifier>,
        system: &'static [CertificateDer<'static>],
        own: Vec<CertificateDer<'static>>,
    ) -> Verifier {
        Verifier {
            webpki,
            system,
            own: own.into_iter().filter(is_self_issued).collect(),
        }
    }

    fn trusts_exactly(&self, cert: &CertificateDer<'_>) -> bool {
        (self.system.iter())
            .chain(&self.own)
            .any(|c| c.as_ref() == cert.as_ref())
    }
}

/// An error after which the exact match may still accept the certificate: webpki found
/// no trusted issuer, or found the certificate to be a CA itself.
fn pinning_may_help(error: &rustls::Error) -> bool {
    match error {
        rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer) => true,
        rustls::Error::InvalidCertificate(e) => is_ca_used_as_end_entity(e),
        _ => false,
    }
}

/// Is `error` webpki's refusal of a CA certificate as a server's own?
pub(crate) fn is_ca_used_as_end_entity(error: &CertificateError) -> bool {
    matches!(error, CertificateError::Other(OtherError(e))
        if matches!(e.downcast_ref::<webpki::Error>(), Some(webpki::Error::CaUsedAsEndEntity)))
}

/// Check what webpki would check of a certificate that is its own trust anchor: its
/// validity period at `now`, then its name, in webpki's order and with its errors.
fn check_self_signed(
    cert: &CertificateDer<'_>,
    server_name: &ServerName<'_>,
    now: UnixTime,
) -> Result<(), rustls::Error> {
    let (not_before, not_after) = validity(cert).ok_or(CertificateError::BadEncoding)?;
    if now.as_secs() < not_before.as_secs() {
        return Err(CertificateError::NotValidYetContext {
            time: now,
            not_before,
        }
        .into());
    }
    if now.as_secs() > not_after.as_secs() {
        return Err(CertificateError::ExpiredContext {
            time: now,
            not_after,
        }
        .into());
    }
    verify_server_name(&ParsedCertificate::try_from(cert)?, server_name)
}

impl ServerCertVerifier for Verifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match self.webpki.verify_server_cert(
            end_entity,
            intermediates,
            server_name,
            ocsp_response,
            now,
        ) {
            Err(e) if pinning_may_help(&e) && self.trusts_exactly(end_entity) => {
                check_self_signed(end_entity, server_name, now)?;
                Ok(ServerCertVerified::assertion())
            }
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.webpki.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.webpki.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.webpki.supported_verify_schemes()
    }

    fn root_hint_subjects(&self) -> Option<&[DistinguishedName]> {
        self.webpki.root_hint_subjects()
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use rcgen::{date_time_ymd, BasicConstraints, CertificateParams, DnType, IsCa, KeyPair};

    use super::*;

    /// A self-signed certificate as `openssl req -x509 -addext subjectAltName=…` makes it:
    /// its own CA, valid for `localhost` and `127.0.0.1` from 2020 to 2030.
    fn openssl_style() -> CertificateDer<'static> {
        let mut params =
            CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()]).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.not_before = date_time_ymd(2020, 1, 1);
        params.not_after = date_time_ymd(2030, 1, 1);
        let key = KeyPair::generate().unwrap();
        params.self_signed(&key).unwrap().der().clone()
    }

    fn at(year_2020_plus_days: u64) -> UnixTime {
        // 2020-01-01 00:00:00 UTC
        UnixTime::since_unix_epoch(Duration::from_secs(
            1_577_836_800 + year_2020_plus_days * 86_400,
        ))
    }

    fn verifier(trusted: &[CertificateDer<'static>]) -> (Arc<WebPkiServerVerifier>, Verifier) {
        let mut roots = rustls::RootCertStore::empty();
        for c in trusted {
            roots.add(c.clone()).unwrap();
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let webpki = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider)
            .build()
            .unwrap();
        let ours = Verifier::new(webpki.clone(), &[], trusted.to_vec());
        (webpki, ours)
    }

    fn verify(
        v: &dyn ServerCertVerifier,
        cert: &CertificateDer<'_>,
        name: &str,
        now: UnixTime,
    ) -> Result<(), rustls::Error> {
        let name = ServerName::try_from(name.to_owned()).unwrap();
        v.verify_server_cert(cert, &[], &name, &[], now).map(|_| ())
    }

    #[test]
    fn a_trusted_self_signed_ca_certificate_is_accepted_for_its_names() {
        let cert = openssl_style();
        let (webpki, ours) = verifier(std::slice::from_ref(&cert));
        // webpki alone refuses it, as it did before.
        match verify(&*webpki, &cert, "localhost", at(100)) {
            Err(rustls::Error::InvalidCertificate(e)) => assert!(is_ca_used_as_end_entity(&e)),
            other => panic!("webpki alone: {other:?}"),
        }
        verify(&ours, &cert, "localhost", at(100)).unwrap();
        verify(&ours, &cert, "127.0.0.1", at(100)).unwrap();
    }

    #[test]
    fn the_exact_match_still_checks_name_and_dates() {
        let cert = openssl_style();
        let (_, ours) = verifier(std::slice::from_ref(&cert));
        assert!(matches!(
            verify(&ours, &cert, "relay.example", at(100)),
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForNameContext { .. }
            ))
        ));
        assert!(matches!(
            verify(&ours, &cert, "127.0.0.2", at(100)),
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForNameContext { .. }
            ))
        ));
        match verify(&ours, &cert, "localhost", at(5_000)) {
            Err(rustls::Error::InvalidCertificate(CertificateError::ExpiredContext {
                not_after,
                ..
            })) => assert_eq!(not_after.as_secs(), 1_893_456_000),
            other => panic!("expired: {other:?}"),
        }
        let before = UnixTime::since_unix_epoch(Duration::from_secs(1_577_836_799));
        match verify(&ours, &cert, "localhost", before) {
            Err(rustls::Error::InvalidCertificate(CertificateError::NotValidYetContext {
                not_before,
                ..
            })) => assert_eq!(not_before.as_secs(), 1_577_836_800),
            other => panic!("not yet valid: {other:?}"),
        }
    }

    #[test]
    fn only_the_trusted_certificate_itself_is_accepted() {
        let trusted = openssl_style();
        let other = openssl_style();
        let (_, ours) = verifier(std::slice::from_ref(&trusted));
        // Same names, same dates, another key: refused as webpki refuses it.
        match verify(&ours, &other, "localhost", at(100)) {
            Err(rustls::Error::InvalidCertificate(e)) => assert!(is_ca_used_as_end_entity(&e)),
            other => panic!("another certificate: {other:?}"),
        }
    }

    #[test]
    fn a_certificate_signed_by_another_is_not_taken_for_self_signed() {
        let ca_key = KeyPair::generate().unwrap();
        let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca.distinguished_name.push(DnType::CommonName, "test CA");
        let ca_cert = ca.self_signed(&ca_key).unwrap();
        let issuer = rcgen::Issuer::new(ca, ca_key);
        let mut leaf = CertificateParams::new(vec!["localhost".to_owned()]).unwrap();
        leaf.distinguished_name
            .push(DnType::CommonName, "test relay");
        let leaf = leaf
            .signed_by(&KeyPair::generate().unwrap(), &issuer)
            .unwrap();
        assert!(is_self_issued(ca_cert.der()));
        assert!(!is_self_issued(leaf.der()));
        // Given alone as trusted, the leaf is not accepted without its CA.
        let (_, ours) = verifier(std::slice::from_ref(leaf.der()));
        assert!(ours.own.is_empty());
        assert!(matches!(
            verify(&ours, leaf.der(), "localhost", UnixTime::now()),
            Err(rustls::Error::InvalidCertificate(
                CertificateError::UnknownIssuer
            ))
        ));
    }

    #[test]
    fn validity_is_read_from_the_certificate() {
        let (not_before, not_after) = validity(&openssl_style()).unwrap();
        assert_eq!(not_before.as_secs(), 1_577_836_800);
        assert_eq!(not_after.as_secs(), 1_893_456_000);
        // rcgen's default end, 4096-01-01, is a GeneralizedTime.
        let key = KeyPair::generate().unwrap();
        let far = CertificateParams::new(vec!["localhost".to_owned()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        assert_eq!(validity(far.der()).unwrap().1.as_secs(), 67_090_118_400);
    }
}
