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

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;
    use std::net::TcpStream;
    use std::time::Duration;

    /// With the standard library's queue of 128, connections past about 129 that nobody
    /// accepts yet would have their handshakes dropped and time out here.
    #[test]
    fn queues_a_burst_of_connections_before_any_accept() {
        let listener = bind_listener("127.0.0.1", 0).expect("binds");
        let addr = listener.local_addr().expect("address");
        let burst = 300;
        let connected: Vec<TcpStream> = (0..burst)
            .map(|i| {
                TcpStream::connect_timeout(&addr, Duration::from_secs(2))
                    .unwrap_or_else(|e| panic!("connection {i} of {burst} not queued: {e}"))
            })
            .collect();
        assert_eq!(connected.len(), burst);
        // Every one of them is really queued: the listener hands them all out.
        listener.set_nonblocking(false).expect("blocking");
        for i in 0..burst {
            listener
                .accept()
                .unwrap_or_else(|e| panic!("accept {i}: {e}"));
        }
    }
}
