//! Ask a STUN server for this socket's reflexive address.

use std::io;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use futures_util::future::{select, Either};
use p2p_copy_core::stun::{self, StunError};

use crate::rt::Rt;

/// Wait before the first retransmission; it doubles up to [`MAX_RTO`]. RFC 8489 starts at
/// 500 ms for the open internet; a client that learns its address before a transfer
/// starts would rather retry sooner, and a request is 20 bytes.
const FIRST_RTO: Duration = Duration::from_millis(250);
/// The longest wait between two requests.
const MAX_RTO: Duration = Duration::from_secs(2);

/// Why a STUN query found no reflexive address.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StunQueryError {
    /// Nothing usable came back before the deadline (UDP blocked, server down or not a
    /// STUN server).
    #[error("no STUN answer from {server} within {waited:?} ({requests} requests sent)")]
    Timeout {
        /// The server asked.
        server: SocketAddr,
        /// Requests sent, retransmissions included.
        requests: u32,
        /// How long the query waited.
        waited: Duration,
    },
    /// The server answered our request, but not with an address.
    #[error("STUN server {server} gave no address: {error}")]
    Refused {
        /// The server asked.
        server: SocketAddr,
        /// What its answer was.
        error: StunError,
    },
    /// The socket failed.
    #[error("STUN query to {server}: {source}")]
    Io {
        /// The server asked.
        server: SocketAddr,
        /// The socket's error.
        source: io::Error,
    },
}

/// Send Binding requests from `socket` to `server`, retransmitting with backoff, until an
/// answer names the address the server saw, or `deadline` passes.
///
/// Datagrams from any other address, for another transaction or that are not STUN are
/// skipped: on a socket shared with other traffic they are someone else's.
///
/// # Errors
/// [`StunQueryError::Timeout`] at the deadline; [`StunQueryError::Refused`] when the
/// server answers this request with an error or without an address;
/// [`StunQueryError::Io`] when the socket fails or no random transaction id can be drawn.
pub async fn stun_query<R: Rt>(
    rt: &R,
    socket: &R::UdpSocket,
    server: SocketAddr,
    deadline: Instant,
) -> Result<SocketAddr, StunQueryError> {
    let io_err = |source| StunQueryError::Io { server, source };
    let mut txid = [0u8; 12];
    getrandom::getrandom(&mut txid).map_err(|e| io_err(io::Error::other(e.to_string())))?;
    let request = stun::binding_request(txid);
    let start = Instant::now();
    let mut requests = 0u32;
    let mut rto = FIRST_RTO;
    let mut buf = [0u8; 1500];
    loop {
        let now = Instant::now();
        if now >= deadline {
            return Err(StunQueryError::Timeout {
                server,
                requests,
                waited: now - start,
            });
        }
        R::send_to(socket, &request, server).await.map_err(io_err)?;
        requests += 1;
        let resend_at = (now + rto).min(deadline);
        rto = (rto * 2).min(MAX_RTO);
        loop {
            let got = match select(
                Box::pin(R::recv_from(socket, &mut buf)),
                Box::pin(rt.sleep_until(resend_at)),
            )
            .await
            {
                Either::Left((got, _)) => got,
                Either::Right(_) => break,
            };
            let (n, from) = match got {
                Ok(got) => got,
                // Some systems report an ICMP "port unreachable" for an earlier request
                // here; the server may still answer a later one.
                Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => continue,
                Err(e) => return Err(io_err(e)),
            };
            if !same_endpoint(from, server) {
                log::trace!("STUN: ignoring a datagram from {from}, not {server}");
                continue;
            }
            match stun::parse_binding_response(&buf[..n], &txid) {
                Ok(addr) => return Ok(addr),
                Err(
                    error @ (StunError::ErrorResponse { .. }
                    | StunError::UnknownAttribute(_)
                    | StunError::NoMappedAddress),
                ) => return Err(StunQueryError::Refused { server, error }),
                Err(e) => log::trace!("STUN: ignoring a datagram from {from}: {e}"),
            }
        }
    }
}

/// Equal addresses, seeing an IPv4-mapped IPv6 address as the IPv4 one (as a dual-stack
/// socket reports IPv4 senders).
fn same_endpoint(a: SocketAddr, b: SocketAddr) -> bool {
    a.port() == b.port() && a.ip().to_canonical() == b.ip().to_canonical()
}
