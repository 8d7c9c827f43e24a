//! The p2p-copy event loop, written once for any async runtime.
//!
//! This crate drives the sans-IO state machines of [`p2p_copy_core`] over real
//! connections and files: a WebSocket client (`ws://`, or `wss://` with rustls), the
//! sender's and receiver's file access on a file thread per session, and the relay server. It is
//! generic over a small [`Rt`] trait; the crates `p2p-copy-smol` and
//! `p2p-copy-async-std` implement it and re-export this API with the runtime filled in.
//!
//! What it guarantees:
//! - Memory stays flat for any file size: the core bounds read-ahead and write-behind
//!   to a few 1 MiB pieces, the connection is read only while the receiver wants input,
//!   and the sender produces messages only as fast as the connection takes them.
//! - File requests of a session run in order on the session's own file thread, off the
//!   executor (small ones on the session loop itself while that thread is idle);
//!   compression and encryption run on one job thread per CPU, several pieces at once.
//! - The receiver writes `<dir>/.<name>.p2p-copy-part` and renames it to `<dir>/<name>`
//!   only after the file is complete, verified and synced. It never follows a symlink
//!   below the output directory and never writes outside it. Partial files stay after
//!   a failure or cancellation (drop the future), for `--resume`.
//! - A parallel code `n=<N>=n…` runs N sessions over N connections at once.
//! - The relay answers STUN Binding requests on UDP with the client's own address, within
//!   a rate limit ([`StunPorts`]); [`stun_query`] asks any STUN server for a socket's
//!   reflexive address.
//!
//! # Example
//! Code written against [`Rt`] runs on either runtime crate; the runtime crates expose
//! the same functions with the runtime filled in (`p2p_copy_smol::receive(cfg, dir,
//! on_event)`).
//! ```no_run
//! use p2p_copy_runtime::{receive, ClientConfig, Event, Rt, TransferError};
//!
//! async fn fetch<R: Rt>(rt: R) -> Result<(), TransferError> {
//!     let mut cfg = ClientConfig::new("wss://relay.example:443", "a long random code");
//!     cfg.encrypt = true;
//!     let summary = receive(rt, cfg, "inbox".into(), |e| {
//!         if let Event::FileDone { path, .. } = e.event {
//!             eprintln!("got {}", p2p_copy_core::path::escape(&path));
//!         }
//!     })
//!     .await?;
//!     println!("{} files, {} bytes in {:?}", summary.files, summary.bytes, summary.elapsed);
//!     Ok(())
//! }
//! ```
#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod client;
mod config;
mod consent;
mod drive;
mod error;
mod files_receive;
mod files_send;
mod io_worker;
mod job_pool;
mod listen;
mod machine;
mod netcheck;
mod pake_conn;
pub mod partials;
mod paths;
pub mod proxy;
pub mod quic;
mod quic_gso;
mod quic_runtime;
mod quic_tasks;
mod quic_timer;
mod reconnect;
mod relay_conn;
mod relay_hub;
mod relay_metrics;
mod relay_server;
mod relay_tokens;
mod rt;
pub mod serverless;
mod source;
mod stun_client;
mod stun_server;
mod tls;
mod transport;

pub use client::{receive, send};
#[doc(hidden)]
pub use client::{receive_direct, send_direct};
pub use config::{
    ClientConfig, ConsentAsk, DirectMode, DirectOptions, PathTaken, Pipe, RateLimit, RelayOps,
    RelayServerConfig, RetryPolicy, SendOptions, SessionEvent, StunPorts, Summary,
};
pub use consent::TransferOffer;
pub use error::TransferError;
pub use listen::{bind_listener, LISTEN_BACKLOG};
pub use netcheck::{netcheck, Mapping, NetReport, StunAnswer};
pub use p2p_copy_core::consent::{Offer, TopLevel};
pub use p2p_copy_core::relay::RelayConfig;
pub use p2p_copy_core::sender::{CompressLevel, CompressMode};
pub use p2p_copy_core::{Event, PathEvent};
pub use relay_server::{serve_relay, RelayServer};
pub use rt::Rt;
pub use serverless::{Serverless, ServerlessConfig};
pub use source::check_exclude;
pub use stun_client::{stun_query, StunQueryError};
pub use transport::{Incoming, MessageTransport, TransportError};
