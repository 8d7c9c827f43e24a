//! `wss://` with certificates made the way people make them: the `openssl` command line,
//! served by our relay binary and trusted by our client binary through `--ca-file`,
//! `SSL_CERT_FILE` or `SSL_CERT_DIR`.
//!
//! Every case runs real processes on 127.0.0.1 with an ephemeral port, and checks exit
//! codes, messages and the received tree byte for byte. The host's own `SSL_CERT_FILE`
//! and `SSL_CERT_DIR` are removed from every command, so only what a case sets counts.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use p2p_copy_tests::binary::cli_binary;
use p2p_copy_tests::process::{start_cli_relay, ChildGuard, Finished};
use p2p_copy_tests::tree::{assert_same_tree, write_tree, FileSpec};
use rcgen::{date_time_ymd, BasicConstraints, CertificateParams, DnType, IsCa, KeyPair};
use tempfile::TempDir;

/// Longest one side of a case may run.
const LIMIT: Duration = Duration::from_secs(60);

/// Run `openssl` with `args` in `dir`; panics with its output if it fails.
fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .current_dir(dir)
        .args(args)
        .output()
        .expect("run openssl (apt-get install openssl)");
    assert!(
        out.status.success(),
        "openssl {args:?} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Key types `openssl req -newkey` is commonly given.
#[derive(Debug, Clone, Copy)]
enum Key {
    Rsa,
    Ec,
}

fn newkey(key: Key) -> &'static [&'static str] {
    match key {
        Key::Rsa => &["-newkey", "rsa:2048"],
        Key::Ec => &["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1"],
    }
}

/// The usual self-signed certificate, as `openssl req -x509` makes it (its own CA), for
/// `san`: writes `cert.pem` and `key.pem` into `dir`.
fn openssl_self_signed(dir: &Path, key: Key, san: &str) -> (PathBuf, PathBuf) {
    let mut args = vec!["req", "-x509"];
    args.extend_from_slice(newkey(key));
    let san = format!("subjectAltName={san}");
    args.extend_from_slice(&[
        "-nodes",
        "-keyout",
        "key.pem",
        "-out",
        "cert.pem",
        "-days",
        "30",
        "-subj",
        "/CN=localhost",
        "-addext",
        &san,
    ]);
    openssl(dir, &args);
    (dir.join("cert.pem"), dir.join("key.pem"))
}

/// A CA (`ca.pem`) and a relay certificate it signed (`cert.pem`, `key.pem`) for
/// `localhost` and `127.0.0.1`, made with `openssl`.
fn openssl_ca_and_leaf(dir: &Path) -> (PathBuf, PathBuf, PathBuf) {
    let mut args = vec!["req", "-x509"];
    args.extend_from_slice(newkey(Key::Rsa));
    args.extend_from_slice(&[
        "-nodes",
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
        "-days",
        "30",
        "-subj",
        "/CN=p2p-copy test CA",
    ]);
    openssl(dir, &args);
    let mut args = vec!["req"];
    args.extend_from_slice(newkey(Key::Rsa));
    args.extend_from_slice(&[
        "-nodes",
        "-keyout",
        "key.pem",
        "-out",
        "relay.csr",
        "-subj",
        "/CN=localhost",
    ]);
    openssl(dir, &args);
    fs::write(
        dir.join("relay.ext"),
        "subjectAltName=DNS:localhost,IP:127.0.0.1\n",
    )
    .expect("write relay.ext");
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            "relay.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-days",
            "30",
            "-extfile",
            "relay.ext",
            "-out",
            "cert.pem",
        ],
    );
    (
        dir.join("ca.pem"),
        dir.join("cert.pem"),
        dir.join("key.pem"),
    )
}

/// A scratch directory with a small tree to send in `src/`.
struct Case {
    dir: TempDir,
}

impl Case {
    fn new() -> Case {
        let dir = tempfile::tempdir().expect("temp dir");
        write_tree(
            &dir.path().join("src"),
            &[
                FileSpec::random("data.bin", 300_000, 7),
                FileSpec::text("notes/readme.txt", 2_000, 8),
            ],
        );
        Case { dir }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    /// A relay serving `cert` and `key` (TLS is its default): the relay and its
    /// `wss://127.0.0.1:PORT` URL.
    fn relay(&self, cert: &Path, key: &Path) -> (ChildGuard, String) {
        let (cert, key) = (cert.to_str().unwrap(), key.to_str().unwrap());
        let (relay, url) = start_cli_relay(&cli_binary(), &["--certfile", cert, "--keyfile", key]);
        assert!(url.starts_with("wss://127.0.0.1:"), "{url}");
        (relay, url)
    }
}

/// Our binary with `args`, without the host's `SSL_CERT_FILE` / `SSL_CERT_DIR` and with
/// `env` set.
fn client(args: &[&str], env: &[(&str, &Path)]) -> Command {
    let mut cmd = Command::new(cli_binary());
    cmd.args(args)
        .env_remove("SSL_CERT_FILE")
        .env_remove("SSL_CERT_DIR");
    for (name, value) in env {
        cmd.env(name, value);
    }
    cmd
}

/// Send `src/` to `out-<code>/` through `url`, both sides given `extra` and `env`, and
/// check that both exit 0 and the tree arrived byte for byte.
fn transfer(case: &Case, url: &str, code: &str, extra: &[&str], env: &[(&str, &Path)]) {
    let out = case.path().join(format!("out-{code}"));
    let out_arg = out.to_str().unwrap();
    let mut args = vec!["receive", url, code, "--out", out_arg, "--timeout", "30"];
    args.extend_from_slice(extra);
    let receiver = ChildGuard::spawn(&mut client(&args, env));
    let src = case.path().join("src");
    let mut args = vec!["send", url, code, src.to_str().unwrap(), "--timeout", "30"];
    args.extend_from_slice(extra);
    let sender = ChildGuard::spawn(&mut client(&args, env));
    let sent = sender.wait(LIMIT);
    let received = receiver.wait(LIMIT);
    assert_eq!(sent.code(), 0, "sender: {sent:?}\nreceiver: {received:?}");
    assert_eq!(
        received.code(),
        0,
        "receiver: {received:?}\nsender: {sent:?}"
    );
    assert_same_tree(&src, &out.join("src"));
}

/// A receiver alone, which must fail before pairing.
fn receive_alone(case: &Case, url: &str, extra: &[&str], env: &[(&str, &Path)]) -> Finished {
    let out = case.path().join("out-refused");
    let mut args = vec![
        "receive",
        url,
        "refused",
        "--out",
        out.to_str().unwrap(),
        "--timeout",
        "10",
    ];
    args.extend_from_slice(extra);
    ChildGuard::spawn(&mut client(&args, env)).wait(LIMIT)
}

/// The line of `stderr` that carries the error.
fn error_line(f: &Finished) -> &str {
    f.stderr
        .lines()
        .find(|l| l.contains("error"))
        .unwrap_or_else(|| panic!("no error line: {f:?}"))
}

fn localhost(url: &str) -> String {
    url.replacen("127.0.0.1", "localhost", 1)
}

#[test]
fn an_openssl_self_signed_rsa_certificate_given_with_ca_file_works_by_address_and_name() {
    let case = Case::new();
    let (cert, key) = openssl_self_signed(case.path(), Key::Rsa, "DNS:localhost,IP:127.0.0.1");
    let (_relay, url) = case.relay(&cert, &key);
    let ca = ["--ca-file", cert.to_str().unwrap()];
    transfer(&case, &url, "by-address", &ca, &[]);
    transfer(&case, &localhost(&url), "by-name", &ca, &[]);
}

#[test]
fn an_openssl_self_signed_ec_certificate_given_with_ca_file_works() {
    let case = Case::new();
    let (cert, key) = openssl_self_signed(case.path(), Key::Ec, "DNS:localhost,IP:127.0.0.1");
    let (_relay, url) = case.relay(&cert, &key);
    transfer(
        &case,
        &localhost(&url),
        "ec",
        &["--ca-file", cert.to_str().unwrap()],
        &[],
    );
}

#[test]
fn a_self_signed_certificate_without_ca_file_is_refused_with_advice() {
    let case = Case::new();
    let (cert, key) = openssl_self_signed(case.path(), Key::Rsa, "DNS:localhost,IP:127.0.0.1");
    let (_relay, url) = case.relay(&cert, &key);
    let refused = receive_alone(&case, &url, &[], &[]);
    assert_eq!(refused.code(), 2, "{refused:?}");
    let line = error_line(&refused);
    assert!(line.contains("--ca-file"), "{line}");
    assert!(line.contains("self-signed"), "{line}");
    assert!(!line.contains("CaUsedAsEndEntity"), "{line}");
}

#[test]
fn an_unknown_ca_is_refused_with_advice_to_use_ca_file() {
    let case = Case::new();
    let (_ca, cert, key) = openssl_ca_and_leaf(case.path());
    let (_relay, url) = case.relay(&cert, &key);
    let refused = receive_alone(&case, &url, &[], &[]);
    assert_eq!(refused.code(), 2, "{refused:?}");
    let line = error_line(&refused);
    assert!(line.contains("unknown issuer"), "{line}");
    assert!(line.contains("--ca-file"), "{line}");
}

#[test]
fn a_trusted_self_signed_certificate_is_still_checked_for_the_name() {
    let case = Case::new();
    let (cert, key) = openssl_self_signed(case.path(), Key::Rsa, "DNS:relay.example");
    let (_relay, url) = case.relay(&cert, &key);
    for url in [url.clone(), localhost(&url)] {
        let refused = receive_alone(&case, &url, &["--ca-file", cert.to_str().unwrap()], &[]);
        assert_eq!(refused.code(), 2, "{refused:?}");
        let line = error_line(&refused);
        assert!(line.contains("not valid for"), "{line}");
    }
}

#[test]
fn a_different_self_signed_certificate_for_the_same_name_is_refused() {
    let case = Case::new();
    let served = case.path().join("served");
    let trusted = case.path().join("trusted");
    fs::create_dir(&served).unwrap();
    fs::create_dir(&trusted).unwrap();
    let (cert, key) = openssl_self_signed(&served, Key::Rsa, "DNS:localhost,IP:127.0.0.1");
    let (other, _) = openssl_self_signed(&trusted, Key::Rsa, "DNS:localhost,IP:127.0.0.1");
    let (_relay, url) = case.relay(&cert, &key);
    let refused = receive_alone(&case, &url, &["--ca-file", other.to_str().unwrap()], &[]);
    assert_eq!(refused.code(), 2, "{refused:?}");
    assert!(error_line(&refused).contains("--ca-file"), "{refused:?}");
}

#[test]
fn an_expired_certificate_is_refused_with_its_date() {
    let case = Case::new();
    let mut params =
        CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()]).unwrap();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params
        .distinguished_name
        .push(DnType::CommonName, "localhost");
    params.not_before = date_time_ymd(2020, 1, 1);
    params.not_after = date_time_ymd(2021, 1, 1);
    let key = KeyPair::generate().unwrap();
    let cert = params.self_signed(&key).unwrap();
    let (cert_file, key_file) = (case.path().join("cert.pem"), case.path().join("key.pem"));
    fs::write(&cert_file, cert.pem()).unwrap();
    fs::write(&key_file, key.serialize_pem()).unwrap();
    let (_relay, url) = case.relay(&cert_file, &key_file);
    let refused = receive_alone(
        &case,
        &url,
        &["--ca-file", cert_file.to_str().unwrap()],
        &[],
    );
    assert_eq!(refused.code(), 2, "{refused:?}");
    let line = error_line(&refused);
    assert!(
        line.contains("expired on 2021-01-01 00:00:00 UTC"),
        "{line}"
    );
    assert!(!line.contains("(UNIX)"), "{line}");
}

#[test]
fn ssl_cert_file_naming_the_self_signed_certificate_works_without_ca_file() {
    let case = Case::new();
    let (cert, key) = openssl_self_signed(case.path(), Key::Rsa, "DNS:localhost,IP:127.0.0.1");
    let (_relay, url) = case.relay(&cert, &key);
    transfer(&case, &url, "env-file", &[], &[("SSL_CERT_FILE", &cert)]);
}

#[test]
fn ssl_cert_file_and_ssl_cert_dir_naming_a_ca_work_without_ca_file() {
    let case = Case::new();
    let (ca, cert, key) = openssl_ca_and_leaf(case.path());
    let (_relay, url) = case.relay(&cert, &key);
    transfer(
        &case,
        &localhost(&url),
        "env-file",
        &[],
        &[("SSL_CERT_FILE", &ca)],
    );
    let dir = case.path().join("certs");
    fs::create_dir(&dir).unwrap();
    fs::copy(&ca, dir.join("ca.pem")).unwrap();
    transfer(&case, &url, "env-dir", &[], &[("SSL_CERT_DIR", &dir)]);
}

#[test]
fn ssl_cert_file_naming_a_missing_file_is_reported() {
    let case = Case::new();
    let (cert, key) = openssl_self_signed(case.path(), Key::Rsa, "DNS:localhost,IP:127.0.0.1");
    let (_relay, url) = case.relay(&cert, &key);
    let missing = case.path().join("missing.pem");
    let refused = receive_alone(&case, &url, &[], &[("SSL_CERT_FILE", &missing)]);
    assert_eq!(refused.code(), 2, "{refused:?}");
    let line = error_line(&refused);
    assert!(line.contains("SSL_CERT_FILE"), "{line}");
}
