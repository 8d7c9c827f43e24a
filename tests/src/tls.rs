//! A throwaway certificate authority and a relay certificate (for `127.0.0.1` and
//! `localhost`, or given names), written as PEM files, so `wss://` is tested with real
//! TLS.

use std::fs;
use std::path::{Path, PathBuf};

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};

/// PEM files of a generated CA and of a relay certificate it signed.
#[derive(Debug, Clone)]
pub struct TestPki {
    /// The CA certificate: what a client trusts (`ca_file`, `--ca-file`).
    pub ca_file: PathBuf,
    /// The relay's certificate (`--certfile`).
    pub cert_file: PathBuf,
    /// The relay's private key (`--keyfile`).
    pub key_file: PathBuf,
}

impl TestPki {
    /// Generate a CA and a relay certificate valid for `127.0.0.1` and `localhost`, and
    /// write `ca.pem`, `cert.pem`, `key.pem` into `dir`.
    pub fn generate(dir: &Path) -> TestPki {
        TestPki::generate_for(dir, &["127.0.0.1", "localhost"])
    }

    /// As [`TestPki::generate`], with a relay certificate valid for `names` (host names
    /// or IP addresses).
    pub fn generate_for(dir: &Path, names: &[&str]) -> TestPki {
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(DnType::CommonName, "p2p-copy test CA");
        let ca_key = KeyPair::generate().expect("CA key");
        let ca_cert = ca_params.self_signed(&ca_key).expect("CA certificate");
        let issuer = Issuer::new(ca_params, ca_key);

        let names: Vec<String> = names.iter().map(|n| (*n).to_owned()).collect();
        let mut leaf_params = CertificateParams::new(names).expect("relay params");
        leaf_params
            .distinguished_name
            .push(DnType::CommonName, "p2p-copy test relay");
        let leaf_key = KeyPair::generate().expect("relay key");
        let leaf_cert = leaf_params
            .signed_by(&leaf_key, &issuer)
            .expect("relay certificate");

        let pki = TestPki {
            ca_file: dir.join("ca.pem"),
            cert_file: dir.join("cert.pem"),
            key_file: dir.join("key.pem"),
        };
        fs::write(&pki.ca_file, ca_cert.pem()).expect("write ca.pem");
        fs::write(&pki.cert_file, leaf_cert.pem()).expect("write cert.pem");
        fs::write(&pki.key_file, leaf_key.serialize_pem()).expect("write key.pem");
        pki
    }
}
