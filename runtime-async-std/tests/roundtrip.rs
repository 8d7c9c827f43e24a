//! Real round trips on async-std: a relay on 127.0.0.1, a sender and a receiver at once,
//! real files in temporary directories, and TLS with a generated CA.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;

use p2p_copy_async_std::{
    receive, send, ClientConfig, CompressMode, RelayServer, RelayServerConfig, SendOptions, Summary,
};

const LIMIT: Duration = Duration::from_secs(20);

async fn start_relay(
    tls: Option<(PathBuf, PathBuf)>,
) -> (String, async_std::task::JoinHandle<std::io::Result<()>>) {
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
    (url, async_std::task::spawn(server.run()))
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

const FILES: [(&str, usize); 5] = [
    ("tree/a.txt", 13_000),
    ("tree/sub/b.bin", 100_000),
    ("tree/sub/deeper/c", 1),
    ("empty", 0),
    ("big.bin", (1 << 20) + 1),
];

fn make_sources(root: &Path) -> Vec<PathBuf> {
    for (i, (rel, len)) in FILES.iter().enumerate() {
        let p = root.join(rel);
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        fs::write(p, noise(*len, i as u64 + 1)).unwrap();
    }
    vec![root.join("tree"), root.join("empty"), root.join("big.bin")]
}

async fn round_trip(cfg: ClientConfig, opts: SendOptions) -> (Summary, Summary) {
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("src");
    let out = t.path().join("out");
    let paths = make_sources(&src);
    let receiving = async_std::task::spawn(receive(cfg.clone(), out.clone(), |_| {}));
    let both = async {
        let sent = send(cfg, paths, opts, |_| {}).await;
        (sent, receiving.await)
    };
    let (sent, received) = async_std::future::timeout(LIMIT, both)
        .await
        .expect("transfer finishes in time");
    let (sent, received) = (
        sent.expect("send succeeds"),
        received.expect("receive succeeds"),
    );
    for (rel, _) in FILES {
        assert!(
            fs::read(src.join(rel)).unwrap() == fs::read(out.join(rel)).unwrap(),
            "{rel} differs"
        );
    }
    (sent, received)
}

#[test]
fn plain_round_trip_moves_every_byte() {
    async_std::task::block_on(async {
        let (url, relay) = start_relay(None).await;
        let (sent, received) =
            round_trip(ClientConfig::new(url, "plain"), SendOptions::default()).await;
        assert_eq!((sent.files, received.files), (5, 5));
        let total: u64 = FILES.iter().map(|f| f.1 as u64).sum();
        assert_eq!((sent.bytes, received.bytes), (total, total));
        relay.cancel().await;
    });
}

#[test]
fn encrypted_compressed_round_trip() {
    async_std::task::block_on(async {
        let (url, relay) = start_relay(None).await;
        let mut cfg = ClientConfig::new(url, "secret");
        cfg.encrypt = true;
        let opts = SendOptions {
            compress: CompressMode::On,
            resume: false,
            ..SendOptions::default()
        };
        let (sent, received) = round_trip(cfg, opts).await;
        assert_eq!((sent.files, received.files), (5, 5));
        relay.cancel().await;
    });
}

#[test]
fn wss_round_trip_trusts_the_given_ca() {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
    let dir = tempfile::tempdir().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca_key = KeyPair::generate().unwrap();
    let ca_cert = ca_params.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca_params, ca_key);
    let leaf_key = KeyPair::generate().unwrap();
    let leaf = CertificateParams::new(vec!["127.0.0.1".to_string()])
        .unwrap()
        .signed_by(&leaf_key, &issuer)
        .unwrap();
    let (ca, cert, key) = (
        dir.path().join("ca.pem"),
        dir.path().join("cert.pem"),
        dir.path().join("key.pem"),
    );
    fs::write(&ca, ca_cert.pem()).unwrap();
    fs::write(&cert, leaf.pem()).unwrap();
    fs::write(&key, leaf_key.serialize_pem()).unwrap();
    async_std::task::block_on(async {
        let (url, relay) = start_relay(Some((cert, key))).await;
        let mut cfg = ClientConfig::new(url, "tls");
        cfg.ca_file = Some(ca);
        let (sent, received) = round_trip(cfg, SendOptions::default()).await;
        assert_eq!((sent.files, received.files), (5, 5));
        relay.cancel().await;
    });
}
