//! `serve_relay` stops on SIGTERM. In its own test binary: the signal goes to the whole
//! process.

#![cfg(unix)]

use std::net::TcpStream;
use std::time::{Duration, Instant};

#[test]
fn serve_relay_returns_on_sigterm() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let cfg = p2p_copy_smol::RelayServerConfig {
        host: "127.0.0.1".into(),
        port,
        tls: None,
        relay: Default::default(),
        stun: Default::default(),
        ops: Default::default(),
    };
    let serving = std::thread::spawn(move || smol::block_on(p2p_copy_smol::serve_relay(cfg)));
    // The handlers are installed before the relay accepts, so a successful connect
    // means the signal will be caught rather than kill the test.
    let start = Instant::now();
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "relay never listened"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let status = std::process::Command::new("kill")
        .args(["-TERM", &std::process::id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let start = Instant::now();
    while !serving.is_finished() {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "relay did not stop on SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    serving
        .join()
        .unwrap()
        .expect("serve_relay returns Ok after SIGTERM");
    assert!(
        TcpStream::connect(("127.0.0.1", port)).is_err(),
        "still accepting after stop"
    );
}
