//! quinn's UDP socket, with a send too large for one segmentation-offload call split
//! into calls that fit.
//!
//! quinn hands the socket up to 10 datagrams of one size at a time, to be sent with one
//! `sendmsg` and UDP segmentation offload (GSO). The kernel takes at most 64 KiB per
//! call: with datagrams above 6.5 KB (jumbo-frame links, loopback) a batch of 10 is
//! refused as a whole with `EMSGSIZE`, which quinn-udp drops silently, and MTU discovery
//! then takes the path for one that loses everything above 6.5 KB. [`SplitGso`] sends
//! such a batch as two or more calls of whole datagrams, so that MTU discovery may go up
//! to what a jumbo-frame link carries (see `MAX_UDP_PAYLOAD` in `quic.rs`).

use std::fmt;
use std::io::{self, IoSliceMut};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use quinn::udp::{RecvMeta, Transmit};
use quinn::{AsyncUdpSocket, UdpPoller};

/// The most bytes of datagrams one GSO `sendmsg` is given: an IPv4 packet's 65,535
/// bytes less its IP and UDP headers, rounded down.
const MAX_GSO_BYTES: usize = 65_000;

/// The socket quinn gets from the executor's runtime, sending batches above
/// [`MAX_GSO_BYTES`] in parts.
pub struct SplitGso(pub Arc<dyn AsyncUdpSocket>);

impl fmt::Debug for SplitGso {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("SplitGso").field(&self.0).finish()
    }
}

/// The parts `transmit` is sent in: whole datagrams, at most [`MAX_GSO_BYTES`] each.
fn parts<'a>(transmit: &'a Transmit<'a>) -> impl Iterator<Item = Transmit<'a>> + 'a {
    let segment = transmit
        .segment_size
        .unwrap_or(transmit.contents.len())
        .max(1);
    let per_part = (MAX_GSO_BYTES / segment).max(1) * segment;
    transmit
        .contents
        .chunks(per_part)
        .map(move |chunk| Transmit {
            destination: transmit.destination,
            ecn: transmit.ecn,
            contents: chunk,
            segment_size: transmit.segment_size.filter(|&s| chunk.len() > s),
            src_ip: transmit.src_ip,
        })
}

impl AsyncUdpSocket for SplitGso {
    fn create_io_poller(self: Arc<Self>) -> Pin<Box<dyn UdpPoller>> {
        self.0.clone().create_io_poller()
    }

    /// Sends the parts in order. When the socket's buffer fills after some of them went
    /// out, quinn is told to try again later and then sends the whole batch once more;
    /// the peer discards the datagrams it already has (QUIC packet numbers are never
    /// reused), which costs their bytes and nothing else.
    fn try_send(&self, transmit: &Transmit) -> io::Result<()> {
        if transmit.contents.len() <= MAX_GSO_BYTES {
            return self.0.try_send(transmit);
        }
        parts(transmit).try_for_each(|part| self.0.try_send(&part))
    }

    fn poll_recv(
        &self,
        cx: &mut Context,
        bufs: &mut [IoSliceMut<'_>],
        meta: &mut [RecvMeta],
    ) -> Poll<io::Result<usize>> {
        self.0.poll_recv(cx, bufs, meta)
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.0.local_addr()
    }

    fn max_transmit_segments(&self) -> usize {
        self.0.max_transmit_segments()
    }

    fn max_receive_segments(&self) -> usize {
        self.0.max_receive_segments()
    }

    fn may_fragment(&self) -> bool {
        self.0.may_fragment()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn transmit(contents: &[u8], segment_size: Option<usize>) -> Transmit<'_> {
        Transmit {
            destination: "192.0.2.1:4433".parse().unwrap(),
            ecn: None,
            contents,
            segment_size,
            src_ip: None,
        }
    }

    #[test]
    fn a_batch_over_64_kib_goes_in_parts_of_whole_datagrams() {
        // Ten datagrams of 8,972 bytes (a 9000-byte MTU), the last one shorter.
        let data = vec![7u8; 9 * 8972 + 100];
        let t = transmit(&data, Some(8972));
        let sizes: Vec<(usize, Option<usize>)> = parts(&t)
            .map(|p| (p.contents.len(), p.segment_size))
            .collect();
        assert_eq!(
            sizes,
            vec![(7 * 8972, Some(8972)), (2 * 8972 + 100, Some(8972))]
        );
        assert!(sizes.iter().all(|&(len, _)| len <= MAX_GSO_BYTES));
    }

    #[test]
    fn a_lone_datagram_in_the_last_part_has_no_segment_size() {
        let data = vec![7u8; 8 * 8972];
        let t = transmit(&data, Some(8972));
        let last = parts(&t).last().unwrap();
        assert_eq!((last.contents.len(), last.segment_size), (8972, None));
    }
}
