//! Real round trips on smol: a relay on 127.0.0.1, a sender and a receiver at once, real
//! files in temporary directories, and TLS with a generated CA.

use std::fs;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::time::Duration;

use p2p_copy_smol::{
    receive, send, ClientConfig, CompressMode, RelayServer, RelayServerConfig, SendOptions,
    Summary, TransferError,
};

/// The relay's and the sessions' log lines, shown when a test fails.
struct StderrLog;
impl log::Log for StderrLog {
    fn enabled(&self, _: &log::Metadata) -> bool {
        true
    }
    fn log(&self, r: &log::Record) {
        if r.target().starts_with("p2p") {
            eprintln!("{} {}: {}", r.level(), r.target(), r.args());
        }
    }
    fn flush(&self) {}
}
fn init_log() {
    let _ = log::set_logger(&StderrLog);
    log::set_max_level(log::LevelFilter::Trace);
}

const LIMIT: Duration = Duration::from_secs(20);

async fn within<T>(what: &str, fut: impl Future<Output = T>) -> T {
    init_log();
    smol::future::or(fut, async {
        smol::Timer::after(LIMIT).await;
        panic!("{what} did not finish within {LIMIT:?}");
    })
    .await
}

async fn start_relay(tls: Option<(PathBuf, PathBuf)>) -> (String, smol::Task<std::io::Result<()>>) {
    let scheme = if tls.is_some() { "wss" } else { "ws" };
    let server = RelayServer::bind(RelayServerConfig {
        host: "127.0.0.1".into(),
        port: 0,
        tls,
        relay: Default::default(),
        stun: Default::default(),
        ops: Default::default(),
    })
    .await
    .expect("relay binds");
    let url = format!("{scheme}://{}", server.local_addr());
    (url, smol::spawn(server.run()))
}

/// Deterministic bytes that do not compress.
fn noise(len: usize, mut seed: u64) -> Vec<u8> {
    (0..len)
        .map(|_| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed as u8
        })
        .collect()
}

/// A small tree, an empty file and a file one byte over a piece.
fn make_sources(root: &Path) -> Vec<PathBuf> {
    let tree = root.join("tree");
    fs::create_dir_all(tree.join("sub/deeper")).unwrap();
    fs::write(tree.join("a.txt"), b"hello, relay\n".repeat(1000)).unwrap();
    fs::write(tree.join("sub/b.bin"), noise(100_000, 7)).unwrap();
    fs::write(tree.join("sub/deeper/c"), b"c").unwrap();
    fs::write(root.join("empty"), b"").unwrap();
    fs::write(root.join("big.bin"), noise((1 << 20) + 1, 11)).unwrap();
    vec![tree, root.join("empty"), root.join("big.bin")]
}

const EXPECTED: [&str; 5] = [
    "tree/a.txt",
    "tree/sub/b.bin",
    "tree/sub/deeper/c",
    "empty",
    "big.bin",
];

fn assert_received(src: &Path, out: &Path) {
    for rel in EXPECTED {
        let want = fs::read(src.join(rel)).unwrap();
        let got = fs::read(out.join(rel)).unwrap_or_else(|e| panic!("{rel} missing: {e}"));
        assert!(
            want == got,
            "{rel} differs ({} vs {} bytes)",
            want.len(),
            got.len()
        );
    }
    let mut stack = vec![out.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for e in fs::read_dir(dir).unwrap() {
            let e = e.unwrap();
            if e.file_type().unwrap().is_dir() {
                stack.push(e.path());
            } else {
                let name = e.file_name().into_string().unwrap();
                assert!(
                    !name.ends_with(".p2p-copy-part"),
                    "partial file left: {name}"
                );
            }
        }
    }
}

async fn round_trip(cfg: ClientConfig, opts: SendOptions) -> (tempfile::TempDir, Summary, Summary) {
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("src");
    let out = t.path().join("out");
    fs::create_dir_all(&src).unwrap();
    let paths = make_sources(&src);
    let sending = send(cfg.clone(), paths, opts, |_| {});
    let receiving = receive(cfg, out.clone(), |_| {});
    let (sent, received) = within("transfer", smol::future::zip(sending, receiving)).await;
    let (sent, received) = (
        sent.expect("send succeeds"),
        received.expect("receive succeeds"),
    );
    assert_received(&src, &out);
    (t, sent, received)
}

#[test]
fn plain_round_trip_moves_every_byte() {
    smol::block_on(async {
        let (url, _relay) = start_relay(None).await;
        let (_t, sent, received) =
            round_trip(ClientConfig::new(url, "plain code"), SendOptions::default()).await;
        assert_eq!((sent.files, received.files), (5, 5));
        let total = 13_000 + 100_000 + 1 + (1 << 20) + 1;
        assert_eq!((sent.bytes, received.bytes), (total, total));
    });
}

#[test]
fn encrypted_round_trip_with_compression() {
    smol::block_on(async {
        let (url, _relay) = start_relay(None).await;
        let mut cfg = ClientConfig::new(url, "secret code");
        cfg.encrypt = true;
        let opts = SendOptions {
            compress: CompressMode::On,
            resume: false,
            ..SendOptions::default()
        };
        let (_t, sent, received) = round_trip(cfg, opts).await;
        assert_eq!((sent.files, received.files), (5, 5));
    });
}

#[test]
fn parallel_code_spreads_files_over_sessions() {
    smol::block_on(async {
        let (url, _relay) = start_relay(None).await;
        let seen = std::sync::Arc::new(std::sync::Mutex::new(std::collections::BTreeSet::new()));
        let t = tempfile::tempdir().unwrap();
        let src = t.path().join("src");
        fs::create_dir_all(&src).unwrap();
        let paths = make_sources(&src);
        let cfg = ClientConfig::new(url, "n=3=nshared");
        let log = seen.clone();
        let sending = send(cfg.clone(), paths, SendOptions::default(), move |e| {
            log.lock().unwrap().insert(e.session);
        });
        let receiving = receive(cfg, t.path().join("out"), |_| {});
        let (sent, received) =
            within("parallel transfer", smol::future::zip(sending, receiving)).await;
        assert_eq!((sent.unwrap().files, received.unwrap().files), (5, 5));
        assert_received(&src, &t.path().join("out"));
        assert_eq!(*seen.lock().unwrap(), (0..3).collect());
    });
}

struct Pki {
    _dir: tempfile::TempDir,
    ca: PathBuf,
    cert: PathBuf,
    key: PathBuf,
}

/// A CA and a certificate for 127.0.0.1 signed by it.
fn make_pki() -> Pki {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
    let dir = tempfile::tempdir().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca_key = KeyPair::generate().unwrap();
    let ca_cert = ca_params.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca_params, ca_key);
    let leaf_key = KeyPair::generate().unwrap();
    let leaf = CertificateParams::new(vec!["127.0.0.1".to_string(), "localhost".to_string()])
        .unwrap()
        .signed_by(&leaf_key, &issuer)
        .unwrap();
    let pki = Pki {
        ca: dir.path().join("ca.pem"),
        cert: dir.path().join("cert.pem"),
        key: dir.path().join("key.pem"),
        _dir: dir,
    };
    fs::write(&pki.ca, ca_cert.pem()).unwrap();
    fs::write(&pki.cert, leaf.pem()).unwrap();
    fs::write(&pki.key, leaf_key.serialize_pem()).unwrap();
    pki
}

#[test]
fn wss_round_trip_trusts_the_given_ca() {
    let pki = make_pki();
    smol::block_on(async {
        let (url, _relay) = start_relay(Some((pki.cert.clone(), pki.key.clone()))).await;
        assert!(url.starts_with("wss://"));
        let mut cfg = ClientConfig::new(url, "tls code");
        cfg.ca_file = Some(pki.ca.clone());
        let (_t, sent, _) = round_trip(cfg, SendOptions::default()).await;
        assert_eq!(sent.files, 5);
    });
}

#[test]
fn wss_without_the_ca_is_a_connection_error() {
    let pki = make_pki();
    smol::block_on(async {
        let (url, _relay) = start_relay(Some((pki.cert.clone(), pki.key.clone()))).await;
        let t = tempfile::tempdir().unwrap();
        let e = within(
            "refused receive",
            receive(ClientConfig::new(url, "x"), t.path().into(), |_| {}),
        )
        .await
        .unwrap_err();
        assert!(matches!(e, TransferError::Connect(_)), "{e}");
        assert_eq!(e.exit_code(), 2);
    });
}

#[test]
fn mismatched_encryption_times_out_as_no_peer() {
    smol::block_on(async {
        let (url, _relay) = start_relay(None).await;
        let t = tempfile::tempdir().unwrap();
        fs::write(t.path().join("f"), b"data").unwrap();
        let mut cfg = ClientConfig::new(url, "same code");
        cfg.pair_timeout = Duration::from_millis(700);
        let mut enc = cfg.clone();
        enc.encrypt = true;
        let sending = send(
            cfg,
            vec![t.path().join("f")],
            SendOptions::default(),
            |_| {},
        );
        let receiving = receive(enc, t.path().join("out"), |_| {});
        let (s, r) = within("mismatched pair", smol::future::zip(sending, receiving)).await;
        for e in [s.unwrap_err(), r.unwrap_err()] {
            assert_eq!(e.exit_code(), 3, "{e}");
            assert!(e.to_string().contains("--encrypt"), "{e}");
        }
    });
}
