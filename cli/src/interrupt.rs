//! Ctrl-C and SIGTERM: stop the work by dropping its future, so that partial files stay
//! on disk for `--resume`, and let the caller exit with 130.

use std::future::Future;

use async_signal::{Signal, Signals};
use futures_lite::{future, StreamExt};

/// How a future run with [`Interrupts::run`] ended.
pub enum Ended<T> {
    /// It completed.
    Done(T),
    /// SIGINT or SIGTERM arrived first; the future was dropped.
    Interrupted,
}

/// SIGINT and SIGTERM, caught from [`Interrupts::install`] on.
pub struct Interrupts(Option<Signals>);

impl Interrupts {
    /// Catch SIGINT and SIGTERM from now on.
    ///
    /// Install them before anything else starts: before a relay announces its address,
    /// since a signal sent right after that must not kill the process; and before the
    /// first task is spawned: installed after it, the relay stopped answering
    /// handshakes on smol's default single executor thread.
    pub fn install() -> Interrupts {
        match Signals::new([Signal::Int, Signal::Term]) {
            Ok(s) => Interrupts(Some(s)),
            Err(e) => {
                log::warn!("cannot catch Ctrl-C ({e}); it will end the process at once");
                Interrupts(None)
            }
        }
    }

    /// Wait for SIGINT or SIGTERM (for ever if they cannot be caught).
    pub async fn wait(self) {
        match self.0 {
            Some(mut s) => {
                s.next().await;
            }
            None => future::pending::<()>().await,
        }
    }

    /// Run `fut` until it completes or a signal arrives.
    pub async fn run<T>(self, fut: impl Future<Output = T>) -> Ended<T> {
        let interrupted = async move {
            self.wait().await;
            Ended::Interrupted
        };
        future::or(async { Ended::Done(fut.await) }, interrupted).await
    }
}

/// Catch SIGHUP from now on and only log it; the future never completes. A relay without
/// a token file has nothing to re-read, and SIGHUP (`systemctl reload`) must not end it.
pub fn log_hangups() -> impl Future<Output = ()> {
    let signals = Signals::new([Signal::Hup]).ok();
    async move {
        if let Some(mut s) = signals {
            while s.next().await.is_some() {
                log::info!("SIGHUP: no --token-file to re-read");
            }
        }
        future::pending::<()>().await
    }
}
