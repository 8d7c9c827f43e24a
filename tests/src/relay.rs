//! Our relay on an ephemeral port of 127.0.0.1, on its own thread, for either runtime.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::Duration;

use futures_lite::future;
use p2p_copy_core::relay::RelayConfig;

use crate::{RelayServerConfig, Runtime};

/// A running relay. Dropping it stops the server and joins its thread.
#[derive(Debug)]
pub struct TestRelay {
    addr: SocketAddr,
    tls: bool,
    stop: Option<async_channel::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl TestRelay {
    /// A plain `ws://` relay with default limits.
    pub fn start<R: Runtime>() -> TestRelay {
        TestRelay::with_config::<R>(RelayConfig::default(), None)
    }

    /// A `wss://` relay with this certificate and key (PEM files).
    pub fn start_tls<R: Runtime>(cert: &Path, key: &Path) -> TestRelay {
        TestRelay::with_config::<R>(
            RelayConfig::default(),
            Some((cert.to_path_buf(), key.to_path_buf())),
        )
    }

    /// A relay with these limits and, if given, TLS (cert PEM, key PEM). Panics if it
    /// cannot bind within 10 s.
    pub fn with_config<R: Runtime>(
        relay: RelayConfig,
        tls: Option<(std::path::PathBuf, std::path::PathBuf)>,
    ) -> TestRelay {
        let has_tls = tls.is_some();
        let cfg = RelayServerConfig {
            host: "127.0.0.1".to_owned(),
            port: 0,
            tls,
            relay,
            stun: Default::default(),
            ops: Default::default(),
        };
        let (addr_tx, addr_rx) = mpsc::channel();
        let (stop_tx, stop_rx) = async_channel::bounded::<()>(1);
        let thread = std::thread::Builder::new()
            .name(format!("relay-{}", R::NAME))
            .spawn(move || {
                R::block_on(async move {
                    let server = match R::bind_relay(cfg).await {
                        Ok(s) => s,
                        Err(e) => {
                            let _ = addr_tx.send(Err(e.to_string()));
                            return;
                        }
                    };
                    let _ = addr_tx.send(Ok(R::relay_addr(&server)));
                    let stopped = async {
                        // Closed when the TestRelay is dropped.
                        let _ = stop_rx.recv().await;
                        Ok(())
                    };
                    if let Err(e) = future::or(R::run_relay(server), stopped).await {
                        panic!("relay ({}) failed: {e}", R::NAME);
                    }
                })
            })
            .expect("spawn relay thread");
        let addr = match addr_rx.recv_timeout(Duration::from_secs(10)) {
            Ok(Ok(addr)) => addr,
            Ok(Err(e)) => panic!("relay ({}) did not bind: {e}", R::NAME),
            Err(e) => panic!("relay ({}) did not report its address: {e}", R::NAME),
        };
        TestRelay {
            addr,
            tls: has_tls,
            stop: Some(stop_tx),
            thread: Some(thread),
        }
    }

    /// The address it listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `ws://127.0.0.1:<port>` or `wss://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        let scheme = if self.tls { "wss" } else { "ws" };
        format!("{scheme}://{}", self.addr)
    }
}

impl Drop for TestRelay {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(t) = self.thread.take() {
            // A relay that panicked has already failed its test loudly; do not panic
            // again while unwinding.
            if t.join().is_err() && !std::thread::panicking() {
                panic!("relay thread panicked");
            }
        }
    }
}
