//! Listening sockets sized for bursts of connections.

use std::io;
use std::net::TcpListener;

/// Connections the kernel queues for a relay before it accepts them (Linux caps this at
/// `net.core.somaxconn`, 4096 by default).
pub const LISTEN_BACKLOG: i32 = 1024;

/// Bind a non-blocking TCP listener on `host:port`, resolving the name (blocking: call
/// it off the executor), with a queue of [`LISTEN_BACKLOG`] connections on Linux.
///
/// The standard library listens with a queue of 128: a burst of a few hundred clients
/// overflows it, the kernel drops their handshakes, and each waits a second or more
/// before trying again.
///
/// # Errors
/// The name does not resolve, or the address cannot be bound.
pub fn bind_listener(host: &str, port: u16) -> io::Result<TcpListener> {
    let listener = TcpListener::bind((host, port))?;
    // Listening again on a listening socket only changes its queue length.
    #[cfg(target_os = "linux")]
    rustix::net::listen(&listener, LISTEN_BACKLOG)?;
    listener.set_nonblocking(true)?;
    Ok(listener)
}
