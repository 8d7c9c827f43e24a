//! p2p-copy on the [smol](https://docs.rs/smol) runtime: send and receive files through
//! a relay, or run the relay.
//!
//! The work is done by `p2p-copy-runtime`; this crate supplies smol's executor,
//! blocking pool, timers and TCP.
//!
//! # Example
//! ```no_run
//! use p2p_copy_smol::{receive, send, ClientConfig, RelayServer, RelayServerConfig, SendOptions};
//!
//! smol::block_on(async {
//!     let relay = RelayServer::bind(RelayServerConfig {
//!         host: "127.0.0.1".into(),
//!         port: 0,
//!         tls: None,
//!         relay: Default::default(),
//!         stun: Default::default(),
//!         ops: Default::default(),
//!     })
//!     .await?;
//!     let url = format!("ws://{}", relay.local_addr());
//!     let serving = smol::spawn(relay.run());
//!
//!     let cfg = ClientConfig::new(url, "a long random code");
//!     let sending = send(cfg.clone(), vec!["photos".into()], SendOptions::default(), |_| {});
//!     let receiving = receive(cfg, "inbox".into(), |e| eprintln!("{:?}", e.event));
//!     let (sent, received) = smol::future::zip(sending, receiving).await;
//!     println!("sent {} files, received {}", sent?.files, received?.files);
//!     drop(serving);
//!     Ok::<_, Box<dyn std::error::Error>>(())
//! })?;
//! # Ok::<_, Box<dyn std::error::Error>>(())
//! ```
#![forbid(unsafe_code)]
#![warn(missing_docs)]

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Instant;

/// Proxies for the relay connection.
pub use p2p_copy_runtime::partials;
pub use p2p_copy_runtime::proxy;
pub use p2p_copy_runtime::{
    check_exclude, ClientConfig, CompressLevel, CompressMode, ConsentAsk, DirectMode,
    DirectOptions, Event, Incoming, Mapping, MessageTransport, NetReport, Offer, PathEvent,
    PathTaken, Pipe, RateLimit, RelayConfig, RelayOps, RelayServerConfig, SendOptions,
    SessionEvent, StunAnswer, StunPorts, StunQueryError, Summary, TopLevel, TransferError,
    TransferOffer, TransportError,
};

/// smol's services for the generic loop.
#[derive(Debug, Clone, Copy, Default)]
struct Smol;

// `async fn` here would borrow `self`; the trait asks for futures that own everything.
#[allow(clippy::manual_async_fn)]
impl p2p_copy_runtime::Rt for Smol {
    type TcpStream = smol::net::TcpStream;
    type TcpListener = smol::net::TcpListener;
    type UdpSocket = smol::net::UdpSocket;

    fn spawn(&self, task: impl Future<Output = ()> + Send + 'static) {
        smol::spawn(task).detach();
    }

    fn spawn_blocking<T: Send + 'static>(
        &self,
        work: impl FnOnce() -> T + Send + 'static,
    ) -> impl Future<Output = T> + Send + 'static {
        smol::unblock(work)
    }

    fn sleep_until(&self, deadline: Instant) -> impl Future<Output = ()> + Send + 'static {
        async move {
            smol::Timer::at(deadline).await;
        }
    }

    fn connect(
        &self,
        host: String,
        port: u16,
    ) -> impl Future<Output = io::Result<Self::TcpStream>> + Send + 'static {
        async move { smol::net::TcpStream::connect((host.as_str(), port)).await }
    }

    fn bind(
        &self,
        host: String,
        port: u16,
    ) -> impl Future<Output = io::Result<Self::TcpListener>> + Send + 'static {
        async move {
            let listener =
                smol::unblock(move || p2p_copy_runtime::bind_listener(&host, port)).await?;
            smol::net::TcpListener::try_from(listener)
        }
    }

    fn local_addr(listener: &Self::TcpListener) -> io::Result<SocketAddr> {
        listener.local_addr()
    }

    fn accept(
        listener: &Self::TcpListener,
    ) -> impl Future<Output = io::Result<(Self::TcpStream, SocketAddr)>> + Send + '_ {
        listener.accept()
    }

    fn set_nodelay(stream: &Self::TcpStream) -> io::Result<()> {
        stream.set_nodelay(true)
    }

    fn bind_udp(
        &self,
        addr: SocketAddr,
    ) -> impl Future<Output = io::Result<Self::UdpSocket>> + Send + 'static {
        smol::net::UdpSocket::bind(addr)
    }

    fn quinn_runtime(&self) -> std::sync::Arc<dyn quinn::Runtime> {
        std::sync::Arc::new(quinn::SmolRuntime)
    }

    fn udp_local_addr(socket: &Self::UdpSocket) -> io::Result<SocketAddr> {
        socket.local_addr()
    }

    fn send_to<'a>(
        socket: &'a Self::UdpSocket,
        datagram: &'a [u8],
        target: SocketAddr,
    ) -> impl Future<Output = io::Result<usize>> + Send + 'a {
        socket.send_to(datagram, target)
    }

    fn recv_from<'a>(
        socket: &'a Self::UdpSocket,
        buf: &'a mut [u8],
    ) -> impl Future<Output = io::Result<(usize, SocketAddr)>> + Send + 'a {
        socket.recv_from(buf)
    }
}

/// Send files and directories through the relay in `cfg`.
///
/// `paths` as given on the command line: a file is sent under its own name, a directory
/// `D` as every regular file below it (`D/sub/…`). Events from every parallel session
/// go to `on_event`. Dropping the future cancels the transfer.
///
/// # Errors
/// See [`TransferError`]; [`TransferError::exit_code`] maps it to the process exit code.
///
/// # Example
/// ```no_run
/// # smol::block_on(async {
/// let cfg = p2p_copy_smol::ClientConfig::new("wss://relay.example:443", "a long random code");
/// let summary = p2p_copy_smol::send(cfg, vec!["report.pdf".into()], Default::default(), |e| {
///     eprintln!("{:?}", e.event)
/// })
/// .await?;
/// println!("{} files, {} bytes in {:?}", summary.files, summary.bytes, summary.elapsed);
/// # Ok::<_, p2p_copy_smol::TransferError>(())
/// # }).unwrap();
/// ```
pub async fn send(
    cfg: ClientConfig,
    paths: Vec<PathBuf>,
    opts: SendOptions,
    on_event: impl FnMut(SessionEvent) + Send + 'static,
) -> Result<Summary, TransferError> {
    p2p_copy_runtime::send(Smol, cfg, paths, opts, on_event).await
}

/// Receive into `out_dir` (created if missing). Files arrive as
/// `.<name>.p2p-copy-part` and are renamed into place once complete and verified.
/// Dropping the future cancels the transfer; partial files stay for a resume.
///
/// # Errors
/// See [`TransferError`].
///
/// # Example
/// ```no_run
/// # smol::block_on(async {
/// let cfg = p2p_copy_smol::ClientConfig::new("ws://127.0.0.1:8765", "a long random code");
/// let summary = p2p_copy_smol::receive(cfg, "inbox".into(), |_| {}).await?;
/// println!("{} files received", summary.files);
/// # Ok::<_, p2p_copy_smol::TransferError>(())
/// # }).unwrap();
/// ```
pub async fn receive(
    cfg: ClientConfig,
    out_dir: PathBuf,
    on_event: impl FnMut(SessionEvent) + Send + 'static,
) -> Result<Summary, TransferError> {
    p2p_copy_runtime::receive(Smol, cfg, out_dir, on_event).await
}

/// Check the network towards the relay at `server` (and the STUN servers `extra`):
/// WebSocket reachability and time, UDP to its STUN ports, the reflexive address, the
/// NAT's mapping behaviour and IPv6. See [`NetReport`].
pub async fn netcheck(
    server: &str,
    ca_file: Option<&std::path::Path>,
    extra: &[String],
) -> NetReport {
    p2p_copy_runtime::netcheck(Smol, server, ca_file, extra).await
}

/// A bound relay server.
#[derive(Debug)]
pub struct RelayServer(p2p_copy_runtime::RelayServer<Smol>);

impl RelayServer {
    /// Bind to `cfg.host:cfg.port` (port 0 picks a free port) and load the TLS files, if
    /// any.
    ///
    /// # Errors
    /// The bind error, or [`io::ErrorKind::InvalidInput`] for unusable TLS files.
    pub async fn bind(cfg: RelayServerConfig) -> io::Result<RelayServer> {
        p2p_copy_runtime::RelayServer::bind(Smol, cfg)
            .await
            .map(RelayServer)
    }

    /// The bound address.
    pub fn local_addr(&self) -> SocketAddr {
        self.0.local_addr()
    }

    /// The UDP addresses that answer STUN Binding requests (see [`StunPorts`]).
    pub fn stun_addrs(&self) -> &[SocketAddr] {
        self.0.stun_addrs()
    }

    /// Where `/metrics` and `/healthz` are served (see [`RelayOps::metrics`]).
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.0.metrics_addr()
    }

    /// Whether clients must present a token (see [`RelayOps::token_file`]).
    pub fn requires_token(&self) -> bool {
        self.0.requires_token()
    }

    /// Serve until `stop` completes, then drain for [`RelayOps::drain_timeout`] and
    /// close; `hurry` closes every connection at once during the drain.
    ///
    /// # Errors
    /// As [`run`](Self::run).
    pub async fn run_draining(
        self,
        stop: impl std::future::Future<Output = ()>,
        hurry: impl std::future::Future<Output = ()>,
    ) -> io::Result<()> {
        self.0.run_draining(stop, hurry).await
    }

    /// Serve until the future is dropped.
    ///
    /// # Errors
    /// None in practice: failed accepts are logged and retried.
    pub async fn run(self) -> io::Result<()> {
        self.0.run().await
    }

    /// Serve until `stop` completes, then close every connection with close code 1001
    /// ("relay shutting down") and give the clients a moment to answer.
    ///
    /// # Errors
    /// As [`run`](Self::run).
    pub async fn run_until(self, stop: impl std::future::Future<Output = ()>) -> io::Result<()> {
        self.0.run_until(stop).await
    }
}

/// Bind and serve until Ctrl-C or SIGTERM, then stop accepting and return.
///
/// # Errors
/// As [`RelayServer::bind`], or when the signal handlers cannot be installed.
///
/// # Example
/// ```no_run
/// let cfg = p2p_copy_smol::RelayServerConfig {
///     host: "0.0.0.0".into(),
///     port: 8765,
///     tls: None,
///     relay: Default::default(),
///     stun: Default::default(),
///     ops: Default::default(),
/// };
/// smol::block_on(p2p_copy_smol::serve_relay(cfg)).unwrap();
/// ```
pub async fn serve_relay(cfg: RelayServerConfig) -> io::Result<()> {
    p2p_copy_runtime::serve_relay(Smol, cfg).await
}

/// Ask the STUN server `server` for the address `socket` has as seen from there (its
/// reflexive address), retransmitting until `deadline`. Datagrams from other addresses
/// or for other transactions are skipped.
///
/// # Errors
/// See [`StunQueryError`]: a timeout, an answer without an address, a socket error.
pub async fn stun_query(
    socket: &smol::net::UdpSocket,
    server: SocketAddr,
    deadline: Instant,
) -> Result<SocketAddr, StunQueryError> {
    p2p_copy_runtime::stun_query(&Smol, socket, server, deadline).await
}

/// The direct path to the peer: QUIC on one UDP socket, run by smol. See
/// [`p2p_copy_runtime::quic`] for how each side authenticates the other.
pub mod quic {
    use std::sync::Arc;

    pub use p2p_copy_runtime::quic::{
        fingerprint, Fingerprint, Identity, QuicConn, QuicEndpoint, ALPN, PREFACE,
    };

    use crate::TransferError;

    /// A QUIC endpoint on `socket` with `identity`'s certificate, its I/O and timers on
    /// smol.
    ///
    /// # Errors
    /// [`TransferError::Direct`] if the socket cannot be used.
    ///
    /// # Example
    /// ```
    /// let socket = std::net::UdpSocket::bind("127.0.0.1:0")?;
    /// let identity = p2p_copy_smol::quic::Identity::generate()?;
    /// let endpoint = p2p_copy_smol::quic::endpoint(socket, identity)?;
    /// println!("tell the peer {:?} and {:02x?}", endpoint.local_addr()?, endpoint.fingerprint());
    /// # Ok::<_, Box<dyn std::error::Error>>(())
    /// ```
    pub fn endpoint(
        socket: std::net::UdpSocket,
        identity: Identity,
    ) -> Result<QuicEndpoint, TransferError> {
        QuicEndpoint::new(socket, identity, Arc::new(quinn::SmolRuntime))
    }
}

/// Send over a direct connection to the receiver as one session; see
/// `p2p_copy_runtime::send_direct`.
#[doc(hidden)]
pub async fn send_direct(
    cfg: ClientConfig,
    conn: quic::QuicConn,
    paths: Vec<PathBuf>,
    opts: SendOptions,
    on_event: impl FnMut(SessionEvent) + Send + 'static,
) -> Result<Summary, TransferError> {
    p2p_copy_runtime::send_direct(Smol, cfg, conn, paths, opts, on_event).await
}

/// Receive over a direct connection to the sender as one session; see
/// `p2p_copy_runtime::receive_direct`.
#[doc(hidden)]
pub async fn receive_direct(
    cfg: ClientConfig,
    conn: quic::QuicConn,
    out_dir: PathBuf,
    on_event: impl FnMut(SessionEvent) + Send + 'static,
) -> Result<Summary, TransferError> {
    p2p_copy_runtime::receive_direct(Smol, cfg, conn, out_dir, on_event).await
}

pub use p2p_copy_runtime::serverless::{PeerSpec, Ticket};
pub use p2p_copy_runtime::ServerlessConfig;

/// A transfer with no server at all: the bound UDP socket and this side's ticket, then
/// the transfer with the peer (see `p2p_copy_runtime::Serverless`).
#[derive(Debug)]
pub struct Serverless(p2p_copy_runtime::Serverless<Smol>);

impl Serverless {
    /// Bind the socket, make this run's certificate, learn the public address and the
    /// clock's offset.
    ///
    /// # Errors
    /// See `p2p_copy_runtime::Serverless::bind`.
    pub async fn bind(cfg: ServerlessConfig) -> Result<Serverless, TransferError> {
        p2p_copy_runtime::Serverless::bind(Smol, cfg)
            .await
            .map(Serverless)
    }

    /// What the peer must be given.
    pub fn ticket(&self) -> Ticket {
        self.0.ticket()
    }

    /// Send `paths` to the peer (`None` when listening).
    ///
    /// # Errors
    /// See `p2p_copy_runtime::Serverless::send`.
    pub async fn send(
        self,
        peer: Option<PeerSpec>,
        paths: Vec<PathBuf>,
        opts: SendOptions,
        on_event: impl FnMut(SessionEvent) + Send + 'static,
    ) -> Result<Summary, TransferError> {
        self.0.send(peer, paths, opts, on_event).await
    }

    /// Receive into `out_dir` from the peer (`None` when listening).
    ///
    /// # Errors
    /// See `p2p_copy_runtime::Serverless::receive`.
    pub async fn receive(
        self,
        peer: Option<PeerSpec>,
        out_dir: PathBuf,
        on_event: impl FnMut(SessionEvent) + Send + 'static,
    ) -> Result<Summary, TransferError> {
        self.0.receive(peer, out_dir, on_event).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn is_send<T: Send>(_: &T) {}

    /// Library callers spawn transfers on multi-threaded executors, so every transfer's
    /// future is `Send`; this compiles only if they are. The futures are never polled.
    #[test]
    fn transfer_futures_are_send() {
        let cfg = ClientConfig::new("ws://127.0.0.1:1", "a long random code");
        let sending = send(cfg.clone(), Vec::new(), SendOptions::default(), |_| {});
        is_send(&sending);
        let receiving = receive(cfg, "inbox".into(), |_| {});
        is_send(&receiving);
    }

    /// As [`transfer_futures_are_send`], for the serverless transfers: type-checked,
    /// never called (a [`Serverless`] needs a bound socket).
    #[allow(dead_code)]
    fn serverless_futures_are_send(a: Serverless, b: Serverless) {
        is_send(&a.send(None, Vec::new(), SendOptions::default(), |_| {}));
        is_send(&b.receive(None, "inbox".into(), |_| {}));
    }
}
