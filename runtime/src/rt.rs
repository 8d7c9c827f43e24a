//! What the loop needs from an async runtime.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::time::Instant;

use futures_io::{AsyncRead, AsyncWrite};

/// The services of an async runtime: spawning, a blocking pool, timers and TCP. Each
/// runtime crate implements it in a few lines; everything else is written once against
/// it.
pub trait Rt: Clone + Send + Sync + 'static {
    /// A connected TCP stream.
    type TcpStream: AsyncRead + AsyncWrite + Unpin + Send + 'static;
    /// A listening TCP socket.
    type TcpListener: Send + Sync + 'static;

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
}
