//! The async runtime the command runs on, chosen by cargo feature: `smol` (the default)
//! or `async-std`. Both crates expose the same functions; only `block_on` differs.

use std::future::Future;

#[cfg(not(any(feature = "smol", feature = "async-std")))]
compile_error!("enable the `smol` or the `async-std` feature of p2p-copy");

#[cfg(feature = "smol")]
pub use p2p_copy_smol::{
    check_exclude, netcheck, partials, proxy, receive, send, ClientConfig, CompressLevel,
    CompressMode, ConsentAsk, DirectMode, PeerSpec, Pipe, RateLimit, RelayOps, RelayServer,
    RelayServerConfig, SendOptions, Serverless, ServerlessConfig, SessionEvent, StunPorts, Summary,
    TransferError, TransferOffer,
};

#[cfg(all(feature = "async-std", not(feature = "smol")))]
pub use p2p_copy_async_std::{
    check_exclude, netcheck, partials, proxy, receive, send, ClientConfig, CompressLevel,
    CompressMode, ConsentAsk, DirectMode, PeerSpec, Pipe, RateLimit, RelayOps, RelayServer,
    RelayServerConfig, SendOptions, Serverless, ServerlessConfig, SessionEvent, StunPorts, Summary,
    TransferError, TransferOffer,
};

/// Run `fut` to completion on this thread.
#[cfg(feature = "smol")]
pub fn block_on<T>(fut: impl Future<Output = T>) -> T {
    smol::block_on(fut)
}

/// Run `fut` to completion on this thread.
#[cfg(all(feature = "async-std", not(feature = "smol")))]
pub fn block_on<T>(fut: impl Future<Output = T>) -> T {
    async_std::task::block_on(fut)
}
