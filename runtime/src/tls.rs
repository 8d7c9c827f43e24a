//! rustls configurations: the client trusts the webpki roots plus an optional CA file;
//! the relay serves a certificate chain and key from PEM files.

use std::io;
use std::path::Path;
use std::sync::Arc;

use futures_rustls::rustls::{self, crypto::CryptoProvider, RootCertStore};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

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

/// The client's TLS settings: the webpki roots, plus every certificate in `ca_file`.
pub(crate) fn client_config(ca_file: Option<&Path>) -> Result<rustls::ClientConfig, String> {
    let mut roots = RootCertStore::from_iter(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    if let Some(path) = ca_file {
        for cert in read_certs(path)? {
            roots
                .add(cert)
                .map_err(|e| format!("cannot trust the certificate in {}: {e}", path.display()))?;
        }
    }
    Ok(rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS setup: {e}"))?
        .with_root_certificates(roots)
        .with_no_client_auth())
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
