//! The quinn runtime a direct path runs on: the executor's, with two changes for bulk
//! transfer.
//!
//! - Timers are [`LazyTimer`]s: re-armed only when a deadline moves earlier or comes
//!   due (`quic_timer`).
//! - The UDP socket is a [`GsoSocket`] and every task quinn spawns is [`Flushing`]: the
//!   datagrams a task sends in one poll go out in as few system calls as the kernel
//!   allows (`quic_gso`).

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Instant;

use quinn::{AsyncTimer, AsyncUdpSocket, Runtime};

use crate::quic_gso::{Batches, Flushing, GsoSocket};
use crate::quic_timer::LazyTimer;

/// The executor's quinn runtime with lazy timers and batched sends.
#[derive(Debug)]
pub struct QuicRuntime {
    inner: Arc<dyn Runtime>,
    batches: Arc<Batches>,
}

impl QuicRuntime {
    /// Wrap the executor's runtime `inner`.
    pub fn new(inner: Arc<dyn Runtime>) -> QuicRuntime {
        QuicRuntime {
            inner,
            batches: Arc::default(),
        }
    }

    /// The runtime's sockets and their send counts.
    pub fn batches(&self) -> Arc<Batches> {
        self.batches.clone()
    }
}

impl Runtime for QuicRuntime {
    fn new_timer(&self, deadline: Instant) -> Pin<Box<dyn AsyncTimer>> {
        Box::pin(LazyTimer::new(self.inner.clone(), deadline))
    }

    fn spawn(&self, future: Pin<Box<dyn Future<Output = ()> + Send>>) {
        self.inner
            .spawn(Box::pin(Flushing::new(future, self.batches.clone())));
    }

    fn wrap_udp_socket(&self, socket: std::net::UdpSocket) -> io::Result<Arc<dyn AsyncUdpSocket>> {
        let socket = self.inner.wrap_udp_socket(socket)?;
        Ok(GsoSocket::new(socket, &self.batches))
    }

    fn now(&self) -> Instant {
        self.inner.now()
    }
}
