//! rustls configurations: the client trusts the system's certificates (or those named by
//! `SSL_CERT_FILE` / `SSL_CERT_DIR`) plus an optional CA file, accepting a trusted
//! self-signed certificate for exactly itself; the relay serves a certificate chain and
//! key from PEM files.

mod time;
mod verify;

use std::io;
use std::path::Path;
use std::sync::{Arc, OnceLock};

use futures_rustls::rustls::client::WebPkiServerVerifier;
use futures_rustls::rustls::{self, crypto::CryptoProvider, CertificateError, RootCertStore};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use time::utc;
use verify::Verifier;

/// One provider chosen explicitly, so the process-wide default never has to be guessed
/// (it is ambiguous when another crate enables a second provider).
fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let shown = path.display();
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| format!("cannot read certificates from {shown}: {e}"))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("cannot parse certificates in {shown}: {e}"))?;
    if certs.is_empty() {
        return Err(format!("{shown} holds no PEM certificate"));
    }
    Ok(certs)
}

/// The certificates trusted without `--ca-file`, loaded once per process.
#[derive(Debug)]
struct SystemTrust {
    roots: RootCertStore,
    /// Those of them that are self-issued, for the exact match of [`Verifier`].
    self_signed: Vec<CertificateDer<'static>>,
}

/// Do `SSL_CERT_FILE` or `SSL_CERT_DIR` name the trusted certificates? Then they replace
/// the system's store, as for OpenSSL (the same test as rustls-native-certs makes).
fn trust_from_env() -> bool {
    std::env::var_os("SSL_CERT_FILE").is_some()
        || std::env::var_os("SSL_CERT_DIR")
            .is_some_and(|dirs| std::env::split_paths(&dirs).any(|d| !d.as_os_str().is_empty()))
}

fn load_system_trust() -> Result<SystemTrust, String> {
    let from_env = trust_from_env();
    let loaded = rustls_native_certs::load_native_certs();
    if from_env {
        // The user named these files; one that cannot be read is a mistake to report.
        if let Some(e) = loaded.errors.first() {
            return Err(format!(
                "cannot load the certificates named by SSL_CERT_FILE / SSL_CERT_DIR: {e}"
            ));
        }
    }
    let mut roots = RootCertStore::empty();
    // A system store may hold certificates webpki cannot use; they are skipped, as
    // OpenSSL skips what it cannot use.
    let (added, _skipped) = roots.add_parsable_certificates(loaded.certs.iter().cloned());
    if added == 0 && !from_env {
        // No system store (a minimal container without ca-certificates): the bundled
        // Mozilla roots keep public relays reachable.
        roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    }
    let self_signed = loaded
        .certs
        .into_iter()
        .filter(verify::is_self_issued)
        .collect();
    Ok(SystemTrust { roots, self_signed })
}

fn system_trust() -> Result<&'static SystemTrust, String> {
    // Reading a system store parses a few hundred certificates: once per process, not
    // once per connection of a parallel transfer.
    static TRUST: OnceLock<Result<SystemTrust, String>> = OnceLock::new();
    TRUST
        .get_or_init(load_system_trust)
        .as_ref()
        .map_err(Clone::clone)
}

/// The client's TLS settings. Trusted are every certificate in `ca_file`, and either the
/// certificates named by `SSL_CERT_FILE` / `SSL_CERT_DIR` if either is set, or else the
/// system's store, or else, if that is empty, the bundled Mozilla roots. A trusted
/// certificate that is self-signed is also accepted as the server's own certificate when
/// the server presents exactly it.
pub(crate) fn client_config(ca_file: Option<&Path>) -> Result<rustls::ClientConfig, String> {
    let system = system_trust()?;
    let mut roots = system.roots.clone();
    let mut own = Vec::new();
    if let Some(path) = ca_file {
        for cert in read_certs(path)? {
            roots
                .add(cert.clone())
                .map_err(|e| format!("cannot trust the certificate in {}: {e}", path.display()))?;
            own.push(cert);
        }
    }
    if roots.is_empty() {
        return Err(
            "no certificate is trusted: SSL_CERT_FILE / SSL_CERT_DIR name none; \
                    pass the relay's certificate or its CA with --ca-file"
                .to_owned(),
        );
    }
    let webpki = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider())
        .build()
        .map_err(|e| format!("TLS setup: {e}"))?;
    let verifier = Verifier::new(webpki, &system.self_signed, own);
    Ok(rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS setup: {e}"))?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_no_client_auth())
}

/// A one-line explanation of a failed TLS handshake with `server`, saying what to do
/// about an untrusted certificate and giving validity dates as dates.
pub(crate) fn handshake_error(server: &str, error: &io::Error) -> String {
    let refused = error
        .get_ref()
        .and_then(|e| e.downcast_ref::<rustls::Error>())
        .and_then(|e| match e {
            rustls::Error::InvalidCertificate(c) => Some(c),
            _ => None,
        });
    match refused {
        Some(c) => format!("{server}: {}", certificate_problem(c)),
        None => format!("{server}: TLS handshake failed: {error}"),
    }
}

fn certificate_problem(error: &CertificateError) -> String {
    match error {
        CertificateError::UnknownIssuer => "the relay's certificate is not signed by a trusted CA \
             (unknown issuer); if the relay uses its own CA or a self-signed certificate, \
             pass that certificate with --ca-file"
            .to_owned(),
        e if verify::is_ca_used_as_end_entity(e) => {
            "the relay's certificate is self-signed and not trusted; \
             pass that certificate with --ca-file to trust it"
                .to_owned()
        }
        CertificateError::ExpiredContext { time, not_after } => format!(
            "the relay's certificate expired on {} (it is now {})",
            utc(*not_after),
            utc(*time)
        ),
        CertificateError::NotValidYetContext { time, not_before } => format!(
            "the relay's certificate is not valid before {} (it is now {}; check the clocks)",
            utc(*not_before),
            utc(*time)
        ),
        other => format!("the relay's certificate was refused: {other}"),
    }
}

/// The relay's TLS settings from a PEM certificate chain and a PEM private key.
pub(crate) fn server_config(cert: &Path, key: &Path) -> io::Result<rustls::ServerConfig> {
    let invalid = |msg: String| io::Error::new(io::ErrorKind::InvalidInput, msg);
    let certs = read_certs(cert).map_err(invalid)?;
    let key = PrivateKeyDer::from_pem_file(key).map_err(|e| {
        invalid(format!(
            "cannot read a private key from {}: {e}",
            key.display()
        ))
    })?;
    rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| invalid(format!("TLS setup: {e}")))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| invalid(format!("certificate and key do not fit together: {e}")))
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use rustls_pki_types::UnixTime;

    use super::*;

    fn handshake_failure(e: CertificateError) -> String {
        let io = io::Error::new(io::ErrorKind::InvalidData, rustls::Error::from(e));
        handshake_error("wss://relay.example", &io)
    }

    #[test]
    fn an_unknown_issuer_points_to_ca_file() {
        let msg = handshake_failure(CertificateError::UnknownIssuer);
        assert!(msg.starts_with("wss://relay.example: "), "{msg}");
        assert!(msg.contains("--ca-file"), "{msg}");
        assert!(!msg.contains('\n'), "{msg}");
    }

    #[test]
    fn validity_errors_give_dates() {
        let secs = |s| UnixTime::since_unix_epoch(Duration::from_secs(s));
        let msg = handshake_failure(CertificateError::ExpiredContext {
            time: secs(1_796_043_600),
            not_after: secs(1_796_040_000),
        });
        assert_eq!(
            msg,
            "wss://relay.example: the relay's certificate expired on 2026-11-30 12:00:00 UTC \
             (it is now 2026-11-30 13:00:00 UTC)"
        );
        let msg = handshake_failure(CertificateError::NotValidYetContext {
            time: secs(1_796_040_000),
            not_before: secs(1_796_043_600),
        });
        assert!(
            msg.contains("not valid before 2026-11-30 13:00:00 UTC"),
            "{msg}"
        );
    }

    #[test]
    fn other_failures_keep_their_cause() {
        let io = io::Error::new(io::ErrorKind::ConnectionReset, "reset by peer");
        assert_eq!(
            handshake_error("wss://relay.example", &io),
            "wss://relay.example: TLS handshake failed: reset by peer"
        );
    }
}
