//! The harness every end-to-end test of p2p-copy shares: real files in temp directories,
//! real relays on 127.0.0.1, either runtime, and byte-for-byte comparison of trees.
//!
//! A test picks a runtime through [`Runtime`] ([`Smol`] or [`AsyncStd`]), starts a
//! [`TestRelay`], writes a source tree with [`tree::write_tree`], runs both sides with
//! [`Pair`] (or calls [`Runtime::send`] / [`Runtime::receive`] itself) and checks the
//! received tree with [`tree::assert_same_tree`]. Every wait is bounded: see [`deadline`].
//!
//! Tests that run programs use [`binary::cli_binary`] (our `p2p-copy`, built on demand)
//! and [`process::ChildGuard`] (killed by PID when the test ends); [`tls::TestPki`]
//! generates the certificates for `wss://`; [`forward::Forwarder`] stands between one
//! client and the relay and cuts its connection. [`netlab::Lab`] builds a small internet of
//! network namespaces with NAT routers, for direct-connection tests.

#![warn(missing_docs)]

pub mod binary;
pub mod deadline;
pub mod events;
pub mod forward;
pub mod hostile_peer;
pub mod netlab;
mod pair;
pub mod process;
pub mod python;
mod relay;
mod runtimes;
pub mod scene;
pub mod serverless;
pub mod tls;
pub mod tree;

pub use pair::{Order, Pair, PairOutcome};
pub use relay::TestRelay;
pub use runtimes::{AsyncStd, Runtime, Smol};

/// The runtime library's types, the same for both runtimes.
pub use p2p_copy_smol::{
    ClientConfig, CompressMode, DirectMode, PathTaken, RelayServerConfig, SendOptions,
    SessionEvent, Summary, TransferError,
};
