//! What the loop needs from an async runtime.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::time::Instant;

use futures_io::{AsyncRead, AsyncWrite};

/// The services of an async runtime: spawning, a blocking pool, timers, TCP and UDP. Each
/// runtime crate implements it in a few lines; everything else is written once against
/// it.
pub trait Rt: Clone + Send + Unpin + Sync + 'static {
    /// A connected TCP stream.
    type TcpStream: AsyncRead + AsyncWrite + Unpin + Send + 'static;
    /// A listening TCP socket.
    type TcpListener: Send + Sync + 'static;
    /// A bound UDP socket (STUN, and later the direct path).
    type UdpSocket: Send + Sync + 'static;

    /// Run a task in the background, detached. Callers that must stop it wrap it in
    /// an abortable future.
    fn spawn(&self, task: impl Future<Output = ()> + Send + 'static);

    /// Run blocking work (key derivation, listing the sources, preparing the output
    /// directory) on a thread pool.
    fn spawn_blocking<T: Send + 'static>(
        &self,
        work: impl FnOnce() -> T + Send + 'static,
    ) -> impl Future<Output = T> + Send + 'static;

    /// Complete at `deadline`.
    fn sleep_until(&self, deadline: Instant) -> impl Future<Output = ()> + Send + 'static;

    /// Connect to `host:port` (resolving the name).
    fn connect(
        &self,
        host: String,
        port: u16,
    ) -> impl Future<Output = io::Result<Self::TcpStream>> + Send + 'static;

    /// Listen on `host:port`.
    fn bind(
        &self,
        host: String,
        port: u16,
    ) -> impl Future<Output = io::Result<Self::TcpListener>> + Send + 'static;

    /// The address a listener is bound to.
    fn local_addr(listener: &Self::TcpListener) -> io::Result<SocketAddr>;

    /// Accept the next connection.
    fn accept(
        listener: &Self::TcpListener,
    ) -> impl Future<Output = io::Result<(Self::TcpStream, SocketAddr)>> + Send + '_;

    /// Disable Nagle's algorithm: messages are sent whole, and the small control
    /// messages must not wait.
    fn set_nodelay(stream: &Self::TcpStream) -> io::Result<()>;

    /// Bind a UDP socket to `addr` (port 0 picks a free port).
    fn bind_udp(
        &self,
        addr: SocketAddr,
    ) -> impl Future<Output = io::Result<Self::UdpSocket>> + Send + 'static;

    /// The address a UDP socket is bound to.
    fn udp_local_addr(socket: &Self::UdpSocket) -> io::Result<SocketAddr>;

    /// Send one datagram to `target`.
    fn send_to<'a>(
        socket: &'a Self::UdpSocket,
        datagram: &'a [u8],
        target: SocketAddr,
    ) -> impl Future<Output = io::Result<usize>> + Send + 'a;

    /// Receive one datagram into `buf` (the excess of a longer one is lost) and say who
    /// sent it.
    fn recv_from<'a>(
        socket: &'a Self::UdpSocket,
        buf: &'a mut [u8],
    ) -> impl Future<Output = io::Result<(usize, SocketAddr)>> + Send + 'a;

    /// The executor's I/O and timers for quinn (the direct path's QUIC).
    fn quinn_runtime(&self) -> std::sync::Arc<dyn quinn::Runtime>;
}
