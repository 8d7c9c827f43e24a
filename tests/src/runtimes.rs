//! One trait over the two runtime crates, so a test body is written once and run on both.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::path::PathBuf;

use crate::{ClientConfig, RelayServerConfig, SendOptions, SessionEvent, Summary, TransferError};

/// A runtime crate's public API, as tests call it.
pub trait Runtime: 'static {
    /// A bound relay server of this runtime.
    type Relay: Send + 'static;

    /// For test and thread names.
    const NAME: &'static str;

    /// Run a future to completion on the current thread.
    fn block_on<T>(fut: impl Future<Output = T>) -> T;

    /// `send` of this runtime.
    fn send(
        cfg: ClientConfig,
        paths: Vec<PathBuf>,
        opts: SendOptions,
        on_event: impl FnMut(SessionEvent) + Send + 'static,
    ) -> impl Future<Output = Result<Summary, TransferError>>;

    /// `receive` of this runtime.
    fn receive(
        cfg: ClientConfig,
        out_dir: PathBuf,
        on_event: impl FnMut(SessionEvent) + Send + 'static,
    ) -> impl Future<Output = Result<Summary, TransferError>>;

    /// `RelayServer::bind` of this runtime.
    fn bind_relay(cfg: RelayServerConfig) -> impl Future<Output = io::Result<Self::Relay>>;

    /// The address a bound relay listens on.
    fn relay_addr(relay: &Self::Relay) -> SocketAddr;

    /// `RelayServer::run`: serve until dropped.
    fn run_relay(relay: Self::Relay) -> impl Future<Output = io::Result<()>>;
}

/// The smol runtime (`p2p-copy-smol`).
#[derive(Debug, Clone, Copy)]
pub struct Smol;

/// The async-std runtime (`p2p-copy-async-std`).
#[derive(Debug, Clone, Copy)]
pub struct AsyncStd;

/// Both impls are the same forwarding lines over a different crate.
macro_rules! forward_runtime {
    ($ty:ty, $name:literal, $krate:ident, $block_on:path) => {
        impl Runtime for $ty {
            type Relay = $krate::RelayServer;
            const NAME: &'static str = $name;

            fn block_on<T>(fut: impl Future<Output = T>) -> T {
                $block_on(fut)
            }

            fn send(
                cfg: ClientConfig,
                paths: Vec<PathBuf>,
                opts: SendOptions,
                on_event: impl FnMut(SessionEvent) + Send + 'static,
            ) -> impl Future<Output = Result<Summary, TransferError>> {
                $krate::send(cfg, paths, opts, on_event)
            }

            fn receive(
                cfg: ClientConfig,
                out_dir: PathBuf,
                on_event: impl FnMut(SessionEvent) + Send + 'static,
            ) -> impl Future<Output = Result<Summary, TransferError>> {
                $krate::receive(cfg, out_dir, on_event)
            }

            fn bind_relay(cfg: RelayServerConfig) -> impl Future<Output = io::Result<Self::Relay>> {
                $krate::RelayServer::bind(cfg)
            }

            fn relay_addr(relay: &Self::Relay) -> SocketAddr {
                relay.local_addr()
            }

            fn run_relay(relay: Self::Relay) -> impl Future<Output = io::Result<()>> {
                relay.run()
            }
        }
    };
}

forward_runtime!(Smol, "smol", p2p_copy_smol, smol::block_on);
forward_runtime!(
    AsyncStd,
    "async-std",
    p2p_copy_async_std,
    async_std::task::block_on
);
