//! quinn's UDP socket, sending datagrams in segmentation-offload batches as large as the
//! kernel takes.
//!
//! quinn 0.11 hands its socket at most 10 datagrams per send (one `sendmsg` with UDP
//! segmentation offload, GSO) and at most 20 per wake-up of a connection's driver. On a
//! 1500-byte path that is 14.5 KB per system call, and every call is one packet through
//! each hop of the host's network stack (veths, bridges, NAT, conntrack), then one GRO
//! read and one acknowledgement at the peer. The relayed path's TCP moves 64 KiB per
//! packet through the same hops. Worse, quinn asks before each send whether the socket
//! is writable, and the executor's answer costs a turn of its reactor ([`Writable`]
//! says why and answers without one). Measured in the unshaped lab (docs/BENCHMARKS.md,
//! "Batched sends and a writable socket"), the two together cost the direct path about
//! 30 % of its CPU on both peers.
//!
//! [`GsoSocket`] collects the datagrams quinn sends while one of its tasks is polled and
//! sends them together: datagrams of one size to one destination, up to 64 KiB or the
//! kernel's 64 segments per call. A batch is sent when it is full, when a datagram that
//! cannot join it comes, and when the task's poll ends ([`Flushing`] wraps every task
//! quinn spawns). A poll that added to the batch and woke its own task (quinn's driver
//! does so after 20 datagrams, to let other tasks run) leaves the batch for the next poll,
//! which comes at once: so a bulk transfer's batches fill up, while a lone packet (an
//! acknowledgement, a keep-alive) waits for nothing. Sends from outside quinn's tasks
//! (quinn's stateless replies from the caller's task) go out at once.
//!
//! A batch larger than one call may carry (quinn's batch of 10 jumbo-frame datagrams
//! above 6.5 KB each, or any batch once the kernel refused segmentation offload and quinn
//! turned it off) is sent as several calls of whole datagrams: otherwise the kernel
//! refuses the whole batch with `EMSGSIZE`, which quinn-udp drops silently, and MTU
//! discovery would take the path for one that loses everything above 6.5 KB.

use std::cell::Cell;
use std::fmt;
use std::future::Future;
use std::io::{self, IoSliceMut};
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};
use std::task::{Context, Poll, Wake, Waker};

use quinn::udp::{EcnCodepoint, RecvMeta, Transmit};
use quinn::{AsyncUdpSocket, UdpPoller};

/// The most bytes of datagrams one GSO `sendmsg` is given: an IPv4 packet's 65,535
/// bytes less its IP and UDP headers, rounded down.
const MAX_GSO_BYTES: usize = 65_000;

/// The most datagrams one GSO `sendmsg` may carry: Linux's `UDP_MAX_SEGMENTS` (64 up
/// to 6.11, larger since), and what quinn-udp reports when the kernel offers GSO.
const MAX_GSO_SEGMENTS: usize = 64;

/// The sockets of one quinn runtime, which its tasks flush when a poll ends.
#[derive(Debug, Default)]
pub struct Batches {
    sockets: Mutex<Vec<Weak<GsoSocket>>>,
    /// The sends the sockets made: system calls, each one batch of datagrams.
    calls: AtomicU64,
    /// The reads of the sockets that returned datagrams: system calls, each one or
    /// more datagrams (several with `recvmmsg`, more with GRO).
    reads: AtomicU64,
}

impl Batches {
    /// How many sends (system calls) the runtime's sockets made so far.
    pub fn calls(&self) -> u64 {
        self.calls.load(Ordering::Relaxed)
    }

    /// How many reads of the runtime's sockets returned datagrams so far.
    pub fn reads(&self) -> u64 {
        self.reads.load(Ordering::Relaxed)
    }
}

thread_local! {
    /// The runtime whose task this thread is polling (its [`Batches`]), if any: only
    /// then is a batch certain to be flushed when the poll ends.
    /// Held as the [`Batches`]' address (0: none).
    static POLLING: Cell<usize> = const { Cell::new(0) };
    /// Whether a datagram joined a batch during the current poll.
    static GREW: Cell<bool> = const { Cell::new(false) };
}

/// A runtime's identity for `POLLING`: the address of its [`Batches`].
fn batches_id(batches: &Arc<Batches>) -> usize {
    Arc::as_ptr(batches) as usize
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Where a batch goes: datagrams join a batch only with the same route.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Route {
    destination: SocketAddr,
    ecn: Option<EcnCodepoint>,
    src_ip: Option<IpAddr>,
}

impl Route {
    fn of(t: &Transmit<'_>) -> Route {
        Route {
            destination: t.destination,
            ecn: t.ecn,
            src_ip: t.src_ip,
        }
    }
}

/// The size of `t`'s datagrams (all but the last, which may be shorter) and their number.
fn shape(t: &Transmit<'_>) -> (usize, usize) {
    let len = t.contents.len();
    let segment = t.segment_size.unwrap_or(len).clamp(1, len.max(1));
    (segment, len.div_ceil(segment).max(1))
}

/// Datagrams waiting to be sent together.
#[derive(Debug, Default)]
struct Batch {
    /// The datagrams, back to back: every one `segment` bytes but the last.
    bytes: Vec<u8>,
    route: Option<Route>,
    segment: usize,
    /// The last datagram is shorter than `segment`: nothing may follow it.
    closed: bool,
}

impl Batch {
    fn is_empty(&self) -> bool {
        self.route.is_none()
    }

    #[cfg(test)]
    fn datagrams(&self) -> usize {
        self.bytes.len().div_ceil(self.segment.max(1))
    }

    /// Whether `t` may join this batch without it holding more than `cap` bytes.
    fn accepts(&self, t: &Transmit<'_>, cap: usize) -> bool {
        let (segment, count) = shape(t);
        let fits_size = if count == 1 {
            t.contents.len() <= self.segment
        } else {
            segment == self.segment
        };
        !self.closed
            && self.route == Some(Route::of(t))
            && fits_size
            && self.bytes.len() + t.contents.len() <= cap
    }

    fn push(&mut self, t: &Transmit<'_>) {
        if self.is_empty() {
            self.route = Some(Route::of(t));
            self.segment = shape(t).0;
        }
        self.bytes.extend_from_slice(t.contents);
        self.closed = !self.bytes.len().is_multiple_of(self.segment);
    }

    fn clear(&mut self) {
        self.bytes.clear();
        self.route = None;
        self.segment = 0;
        self.closed = false;
    }
}

/// The bytes of one call: as many whole datagrams of `segment` bytes as fit in
/// [`MAX_GSO_BYTES`] and `max_datagrams`.
fn per_call(segment: usize, max_datagrams: usize) -> usize {
    let segment = segment.max(1);
    (MAX_GSO_BYTES / segment).clamp(1, max_datagrams.max(1)) * segment
}

/// The calls `contents` (datagrams of `segment` bytes, the last one maybe shorter) is
/// sent in: whole datagrams, at most [`MAX_GSO_BYTES`] and `max_datagrams` each.
fn parts(contents: &[u8], segment: usize, max_datagrams: usize) -> impl Iterator<Item = &[u8]> {
    contents.chunks(per_call(segment, max_datagrams))
}

fn part_transmit<'a>(route: Route, part: &'a [u8], segment: usize) -> Transmit<'a> {
    Transmit {
        destination: route.destination,
        ecn: route.ecn,
        contents: part,
        segment_size: (part.len() > segment).then_some(segment),
        src_ip: route.src_ip,
    }
}

/// The socket quinn gets from [`QuicRuntime`](crate::quic_runtime::QuicRuntime): the
/// executor's UDP socket, with sends batched as the module describes.
pub struct GsoSocket {
    inner: Arc<dyn AsyncUdpSocket>,
    /// The runtime whose tasks flush this socket's batch, and its counts. (It holds
    /// this socket weakly.)
    batches: Arc<Batches>,
    batch: Mutex<Batch>,
    /// A send found the socket's buffer full, and no wait for room has ended since.
    blocked: AtomicBool,
}

impl fmt::Debug for GsoSocket {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GsoSocket")
            .field("inner", &self.inner)
            .finish_non_exhaustive()
    }
}

impl GsoSocket {
    /// Wrap `inner` for the runtime whose tasks `batches` flushes.
    pub fn new(inner: Arc<dyn AsyncUdpSocket>, batches: &Arc<Batches>) -> Arc<GsoSocket> {
        let socket = Arc::new(GsoSocket {
            inner,
            batches: batches.clone(),
            batch: Mutex::new(Batch::default()),
            blocked: AtomicBool::new(false),
        });
        let mut sockets = lock(&batches.sockets);
        sockets.retain(|s| s.strong_count() > 0);
        sockets.push(Arc::downgrade(&socket));
        socket
    }

    /// One system call. `WouldBlock` marks the socket blocked for [`Writable`].
    fn send(&self, t: &Transmit<'_>) -> io::Result<()> {
        self.batches.calls.fetch_add(1, Ordering::Relaxed);
        let sent = self.inner.try_send(t);
        if matches!(&sent, Err(e) if e.kind() == io::ErrorKind::WouldBlock) {
            self.blocked.store(true, Ordering::Release);
        }
        sent
    }

    /// The most datagrams one call may carry now (1 once quinn-udp turned GSO off).
    fn max_datagrams(&self) -> usize {
        self.inner
            .max_transmit_segments()
            .clamp(1, MAX_GSO_SEGMENTS)
    }

    /// Send the full calls' worth `batch` holds, or with `all` everything. On
    /// `WouldBlock` the rest stays for the next try.
    fn send_batch(&self, batch: &mut Batch, all: bool) -> io::Result<()> {
        let Some(route) = batch.route else {
            return Ok(());
        };
        let segment = batch.segment;
        let per = per_call(segment, self.max_datagrams());
        let mut sent = 0;
        let mut outcome = Ok(());
        while batch.bytes.len() - sent >= per || (all && sent < batch.bytes.len()) {
            let part = &batch.bytes[sent..][..per.min(batch.bytes.len() - sent)];
            if let Err(e) = self.send(&part_transmit(route, part, segment)) {
                outcome = Err(e);
                break;
            }
            sent += part.len();
        }
        batch.bytes.drain(..sent);
        if batch.bytes.is_empty() {
            batch.clear();
        }
        match outcome {
            Err(e) if e.kind() != io::ErrorKind::WouldBlock => {
                // Not a full buffer: these datagrams are lost, as on a lossy path, and
                // QUIC's loss recovery sends their frames again.
                batch.clear();
                Err(e)
            }
            other => other,
        }
    }

    /// Send the batch, if any. `WouldBlock` when the socket's buffer is full.
    fn flush(&self) -> io::Result<()> {
        self.send_batch(&mut lock(&self.batch), true)
    }

    /// Whether a poll of one of the owner's tasks runs on this thread now.
    fn flushed_after(&self) -> bool {
        POLLING.with(|p| p.get() == batches_id(&self.batches))
    }
}

impl AsyncUdpSocket for GsoSocket {
    fn create_io_poller(self: Arc<Self>) -> Pin<Box<dyn UdpPoller>> {
        Box::pin(Writable {
            inner: self.inner.clone().create_io_poller(),
            socket: self,
        })
    }

    /// Adds `transmit` to the batch, sending the batch first if `transmit` cannot join
    /// it (then `WouldBlock` means `transmit` was not taken, as quinn expects), and after
    /// it if the batch is full or no flush follows this call.
    fn try_send(&self, transmit: &Transmit) -> io::Result<()> {
        let max = self.max_datagrams();
        let mut batch = lock(&self.batch);
        // A batch holds at most two calls' worth, more only while the socket is full.
        let cap = 2 * per_call(batch.segment.max(shape(transmit).0), max);
        let flushed_after = self.flushed_after();
        let joins = flushed_after && batch.accepts(transmit, cap);
        if !batch.is_empty() && !joins {
            self.send_batch(&mut batch, true)?;
        }
        if !flushed_after {
            let (segment, _) = shape(transmit);
            let route = Route::of(transmit);
            return parts(transmit.contents, segment, max)
                .try_for_each(|part| self.send(&part_transmit(route, part, segment)));
        }
        batch.push(transmit);
        GREW.with(|g| g.set(true));
        let closed = batch.closed;
        match self.send_batch(&mut batch, closed) {
            // Taken: the batch waits for the next send or the flush after the poll,
            // which registers for the socket's writability.
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(()),
            other => other,
        }
    }

    fn poll_recv(
        &self,
        cx: &mut Context,
        bufs: &mut [IoSliceMut<'_>],
        meta: &mut [RecvMeta],
    ) -> Poll<io::Result<usize>> {
        let got = self.inner.poll_recv(cx, bufs, meta);
        if let Poll::Ready(Ok(_)) = got {
            self.batches.reads.fetch_add(1, Ordering::Relaxed);
        }
        got
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.inner.local_addr()
    }

    /// quinn's own batches stay at its 10 datagrams; this socket joins them.
    fn max_transmit_segments(&self) -> usize {
        self.inner.max_transmit_segments()
    }

    fn max_receive_segments(&self) -> usize {
        self.inner.max_receive_segments()
    }

    fn may_fragment(&self) -> bool {
        self.inner.may_fragment()
    }
}

/// Whether the socket may be written to: yes, unless a send found its buffer full, and
/// then when the executor's reactor says so.
///
/// The executor's poller (async-io's `writable()`, which quinn's smol and async-std
/// runtimes hand out) answers "not yet" the first time it is asked after every "yes",
/// and only the reactor thread's next turn says "yes" again: an `epoll_ctl`, a wake-up
/// of the reactor and one of the task. quinn asks before every send, so each batch of
/// 10 datagrams waited for that round trip, and each wake-up of quinn's driver sent one
/// batch (counted in the lab: 18,030 polls sending 10 datagrams each on average, for
/// 256 MiB). A socket whose buffer has room is writable; this poller waits for the
/// reactor only after a send would block.
struct Writable {
    socket: Arc<GsoSocket>,
    inner: Pin<Box<dyn UdpPoller>>,
}

impl fmt::Debug for Writable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Writable")
            .field("blocked", &self.socket.blocked)
            .finish_non_exhaustive()
    }
}

impl UdpPoller for Writable {
    fn poll_writable(mut self: Pin<&mut Self>, cx: &mut Context) -> Poll<io::Result<()>> {
        if !self.socket.blocked.load(Ordering::Acquire) {
            return Poll::Ready(Ok(()));
        }
        let ready = self.inner.as_mut().poll_writable(cx);
        if let Poll::Ready(Ok(())) = ready {
            self.socket.blocked.store(false, Ordering::Release);
        }
        ready
    }
}

/// Notes whether the task woke itself (or was woken) while it was polled.
#[derive(Debug, Default)]
struct WakeFlag {
    woken: AtomicBool,
    waker: Mutex<Option<Waker>>,
}

impl Wake for WakeFlag {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.woken.store(true, Ordering::Release);
        if let Some(w) = lock(&self.waker).as_ref() {
            w.wake_by_ref();
        }
    }
}

/// A socket and the poller a task waits on for its room.
type SocketPoller = (Weak<GsoSocket>, Pin<Box<dyn UdpPoller>>);

/// A task quinn spawned, flushing its runtime's batches when a poll ends.
pub struct Flushing {
    task: Pin<Box<dyn Future<Output = ()> + Send>>,
    batches: Arc<Batches>,
    flag: Arc<WakeFlag>,
    /// The waker the task is polled with: `flag`'s.
    waker: Waker,
    /// One per socket, to wait for room when a flush would block.
    pollers: Vec<SocketPoller>,
}

impl fmt::Debug for Flushing {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Flushing").finish_non_exhaustive()
    }
}

impl Flushing {
    /// Wrap `task`, spawned on the runtime `batches` belongs to.
    pub fn new(task: Pin<Box<dyn Future<Output = ()> + Send>>, batches: Arc<Batches>) -> Self {
        let flag = Arc::<WakeFlag>::default();
        Flushing {
            task,
            batches,
            waker: Waker::from(flag.clone()),
            flag,
            pollers: Vec::new(),
        }
    }

    /// Send every batch; where the socket is full, register `cx` for its writability.
    fn flush(&mut self, cx: &mut Context<'_>) {
        let Flushing {
            batches, pollers, ..
        } = self;
        for socket in lock(&batches.sockets).iter().filter_map(Weak::upgrade) {
            loop {
                match socket.flush() {
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                    Err(e) => {
                        log::debug!("direct: sending datagrams failed: {e}");
                        break;
                    }
                    Ok(()) => break,
                }
                match poller(pollers, &socket).as_mut().poll_writable(cx) {
                    Poll::Ready(Ok(())) => continue,
                    Poll::Ready(Err(e)) => {
                        log::debug!("direct: the UDP socket failed: {e}");
                        break;
                    }
                    Poll::Pending => break,
                }
            }
        }
    }
}

/// `socket`'s poller in `pollers`, made on first use.
fn poller<'a>(
    pollers: &'a mut Vec<SocketPoller>,
    socket: &Arc<GsoSocket>,
) -> &'a mut Pin<Box<dyn UdpPoller>> {
    pollers.retain(|(s, _)| s.strong_count() > 0);
    let at = match pollers
        .iter()
        .position(|(s, _)| std::ptr::eq(s.as_ptr(), Arc::as_ptr(socket)))
    {
        Some(at) => at,
        None => {
            pollers.push((Arc::downgrade(socket), socket.clone().create_io_poller()));
            pollers.len() - 1
        }
    };
    &mut pollers[at].1
}

impl Future for Flushing {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = &mut *self;
        {
            let mut stored = lock(&this.flag.waker);
            if !stored.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
                *stored = Some(cx.waker().clone());
            }
        }
        this.flag.woken.store(false, Ordering::Release);
        let previous = POLLING.with(|p| p.replace(batches_id(&this.batches)));
        GREW.with(|g| g.set(false));
        let out = this
            .task
            .as_mut()
            .poll(&mut Context::from_waker(&this.waker));
        POLLING.with(|p| p.set(previous));
        let grew = GREW.with(|g| g.replace(false));
        if out.is_pending() && grew && this.flag.woken.load(Ordering::Acquire) {
            // Polled again at once: the batch may still grow.
            return Poll::Pending;
        }
        this.flush(cx);
        out
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
        let sizes: Vec<usize> = parts(&data, 8972, 64).map(<[u8]>::len).collect();
        assert_eq!(sizes, vec![7 * 8972, 2 * 8972 + 100]);
        let route = Route::of(&transmit(&data, None));
        let last = part_transmit(route, &data[..8972], 8972);
        assert_eq!(
            last.segment_size, None,
            "a lone datagram has no segment size"
        );
    }

    #[test]
    fn parts_respect_the_segment_limit() {
        let data = vec![7u8; 20 * 1452];
        let sizes: Vec<usize> = parts(&data, 1452, 1).map(<[u8]>::len).collect();
        assert_eq!(sizes, vec![1452; 20]);
    }

    #[test]
    fn batches_join_datagrams_of_one_size_and_route_up_to_their_cap() {
        let ten = vec![1u8; 10 * 1452];
        let mut batch = Batch::default();
        batch.push(&transmit(&ten, Some(1452)));
        for _ in 0..3 {
            assert!(batch.accepts(&transmit(&ten, Some(1452)), 65_000));
            batch.push(&transmit(&ten, Some(1452)));
        }
        assert_eq!(batch.datagrams(), 40);
        assert!(!batch.closed);
        assert!(!batch.accepts(&transmit(&ten, Some(1452)), 65_000));
        assert!(batch.accepts(&transmit(&ten, Some(1452)), 2 * 65_000));
        // A call takes 44 datagrams of 1452 bytes (63,888 bytes), or the socket's limit.
        assert_eq!(per_call(1452, 64), 44 * 1452);
        assert_eq!(per_call(1452, 16), 16 * 1452);
        assert_eq!(per_call(8972, 64), 7 * 8972);
        assert_eq!(per_call(70_000, 64), 70_000);
    }

    #[test]
    fn a_shorter_datagram_closes_a_batch_and_others_do_not_join() {
        let ten = vec![1u8; 10 * 1452];
        let mut batch = Batch::default();
        batch.push(&transmit(&ten, Some(1452)));
        // Another size, another destination, another ECN mark: not this batch.
        assert!(!batch.accepts(&transmit(&vec![1u8; 2 * 1200], Some(1200)), 65_000));
        assert!(!batch.accepts(&transmit(&vec![1u8; 1500], None), 65_000));
        let mut elsewhere = transmit(&ten, Some(1452));
        elsewhere.destination = "192.0.2.2:4433".parse().unwrap();
        assert!(!batch.accepts(&elsewhere, 65_000));
        let mut marked = transmit(&ten, Some(1452));
        marked.ecn = Some(EcnCodepoint::Ect0);
        assert!(!batch.accepts(&marked, 65_000));
        // A short datagram ends it: nothing follows a datagram shorter than the segment.
        let short = vec![1u8; 300];
        assert!(batch.accepts(&transmit(&short, None), 65_000));
        batch.push(&transmit(&short, None));
        assert!(batch.closed);
        assert!(!batch.accepts(&transmit(&ten, Some(1452)), 65_000));
        assert_eq!(batch.bytes.len(), 10 * 1452 + 300);
    }

    #[test]
    fn reads_that_bring_datagrams_are_counted() {
        let batches = Arc::new(Batches::default());
        let rx = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let to = rx.local_addr().unwrap();
        let inner = quinn::Runtime::wrap_udp_socket(&quinn::SmolRuntime, rx).unwrap();
        let socket = GsoSocket::new(inner, &batches);
        let tx = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        for _ in 0..3 {
            tx.send_to(b"datagram", to).unwrap();
        }
        let mut got = 0;
        smol::block_on(async {
            while got < 3 {
                let mut storage = [[0u8; 64]; 4];
                let mut bufs: Vec<IoSliceMut<'_>> =
                    storage.iter_mut().map(|b| IoSliceMut::new(b)).collect();
                let mut meta = [RecvMeta::default(); 4];
                let n =
                    futures_lite::future::poll_fn(|cx| socket.poll_recv(cx, &mut bufs, &mut meta))
                        .await
                        .unwrap();
                got += meta[..n]
                    .iter()
                    .map(|m| m.len / m.stride.max(1))
                    .sum::<usize>();
            }
        });
        assert_eq!(got, 3);
        let reads = batches.reads();
        assert!((1..=3).contains(&reads), "{reads} reads for 3 datagrams");
        assert_eq!(batches.calls(), 0, "nothing was sent");
    }

    /// A socket that records its sends and refuses them while `full` is set.
    #[derive(Debug, Default)]
    struct Recorder {
        sent: Mutex<Vec<(usize, Option<usize>)>>,
        full: AtomicBool,
        polled: Mutex<usize>,
        /// Where whole sends are recorded too (route, bytes, segment size), if asked.
        #[allow(clippy::type_complexity)]
        contents: Mutex<Option<Arc<Mutex<Vec<(u8, Vec<u8>, Option<usize>)>>>>>,
    }

    /// The executor's poller, as the recorder sees it: ready once its socket has room,
    /// and counting how often it is asked.
    #[derive(Debug)]
    struct RoomPoller(Arc<Recorder>);

    impl UdpPoller for RoomPoller {
        fn poll_writable(self: Pin<&mut Self>, _: &mut Context) -> Poll<io::Result<()>> {
            *lock(&self.0.polled) += 1;
            if self.0.full.load(Ordering::Acquire) {
                Poll::Pending
            } else {
                Poll::Ready(Ok(()))
            }
        }
    }

    impl AsyncUdpSocket for Recorder {
        fn create_io_poller(self: Arc<Self>) -> Pin<Box<dyn UdpPoller>> {
            Box::pin(RoomPoller(self))
        }
        fn try_send(&self, t: &Transmit) -> io::Result<()> {
            if self.full.load(Ordering::Acquire) {
                return Err(io::ErrorKind::WouldBlock.into());
            }
            lock(&self.sent).push((t.contents.len(), t.segment_size));
            if let Some(record) = lock(&self.contents).as_ref() {
                let route = match t.destination.ip() {
                    IpAddr::V4(ip) => ip.octets()[3] - 1,
                    IpAddr::V6(_) => u8::MAX,
                };
                lock(record).push((route, t.contents.to_vec(), t.segment_size));
            }
            Ok(())
        }
        fn poll_recv(
            &self,
            _: &mut Context,
            _: &mut [IoSliceMut<'_>],
            _: &mut [RecvMeta],
        ) -> Poll<io::Result<usize>> {
            Poll::Pending
        }
        fn local_addr(&self) -> io::Result<SocketAddr> {
            Ok("127.0.0.1:1".parse().unwrap())
        }
        fn max_transmit_segments(&self) -> usize {
            64
        }
    }

    /// A task like quinn's connection driver: it sends `batches` batches of 10
    /// datagrams, two per poll, waking itself after each poll but the last.
    struct Driver {
        socket: Arc<GsoSocket>,
        left: usize,
    }

    impl Future for Driver {
        type Output = ();
        fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
            let ten = vec![1u8; 10 * 1452];
            for _ in 0..2 {
                if self.left == 0 {
                    break;
                }
                self.socket.try_send(&transmit(&ten, Some(1452))).unwrap();
                self.left -= 1;
            }
            if self.left > 0 {
                cx.waker().wake_by_ref();
            }
            Poll::Pending
        }
    }

    #[test]
    fn a_driver_waking_itself_fills_batches_and_its_last_poll_sends_the_rest() {
        let recorder = Arc::new(Recorder::default());
        let batches = Arc::new(Batches::default());
        let socket = GsoSocket::new(recorder.clone(), &batches);
        let mut task = Flushing::new(
            Box::pin(Driver {
                socket: socket.clone(),
                left: 9,
            }),
            batches.clone(),
        );
        let mut cx = Context::from_waker(Waker::noop());
        for _ in 0..5 {
            assert!(Pin::new(&mut task).poll(&mut cx).is_pending());
        }
        // 90 datagrams: two full batches of 44 and the last poll's 2 flushed at its end.
        let sent = lock(&recorder.sent).clone();
        assert_eq!(
            sent,
            vec![
                (44 * 1452, Some(1452)),
                (44 * 1452, Some(1452)),
                (2 * 1452, Some(1452))
            ]
        );
    }

    #[test]
    fn sends_outside_a_task_go_at_once_and_a_full_socket_keeps_the_batch() {
        let recorder = Arc::new(Recorder::default());
        let batches = Arc::new(Batches::default());
        let socket = GsoSocket::new(recorder.clone(), &batches);
        // Outside quinn's tasks: sent at once.
        socket.try_send(&transmit(&[1u8; 200], None)).unwrap();
        assert_eq!(lock(&recorder.sent).as_slice(), &[(200, None)]);

        // Inside one: held, and held on through a full socket until it has room.
        struct Once(Arc<GsoSocket>, bool);
        impl Future for Once {
            type Output = ();
            fn poll(mut self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<()> {
                if !self.1 {
                    self.1 = true;
                    self.0
                        .try_send(&transmit(&[2u8; 3 * 1452], Some(1452)))
                        .unwrap();
                }
                Poll::Pending
            }
        }
        let mut task = Flushing::new(Box::pin(Once(socket.clone(), false)), batches.clone());
        recorder.full.store(true, Ordering::Release);
        let mut cx = Context::from_waker(Waker::noop());
        assert!(Pin::new(&mut task).poll(&mut cx).is_pending());
        assert_eq!(
            lock(&recorder.sent).len(),
            1,
            "nothing sent to a full socket"
        );
        assert_eq!(lock(&socket.batch).datagrams(), 3, "and nothing lost");
        // A different datagram cannot be taken while the batch waits.
        let err = socket.try_send(&transmit(&[3u8; 100], None)).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::WouldBlock);
        recorder.full.store(false, Ordering::Release);
        assert!(Pin::new(&mut task).poll(&mut cx).is_pending());
        assert_eq!(
            lock(&recorder.sent).as_slice(),
            &[(200, None), (3 * 1452, Some(1452))]
        );
        assert!(lock(&socket.batch).is_empty());
    }

    #[test]
    fn the_socket_is_writable_without_asking_the_reactor_until_a_send_would_block() {
        let recorder = Arc::new(Recorder::default());
        let batches = Arc::new(Batches::default());
        let socket = GsoSocket::new(recorder.clone(), &batches);
        let mut poller = socket.clone().create_io_poller();
        let mut cx = Context::from_waker(Waker::noop());
        for _ in 0..3 {
            assert!(poller.as_mut().poll_writable(&mut cx).is_ready());
            socket.try_send(&transmit(&[1u8; 100], None)).unwrap();
        }
        assert_eq!(*lock(&recorder.polled), 0, "the reactor was not asked");

        recorder.full.store(true, Ordering::Release);
        let err = socket.try_send(&transmit(&[1u8; 100], None)).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::WouldBlock);
        assert!(poller.as_mut().poll_writable(&mut cx).is_pending());
        assert!(poller.as_mut().poll_writable(&mut cx).is_pending());
        assert_eq!(*lock(&recorder.polled), 2, "after a full buffer, it is");
        recorder.full.store(false, Ordering::Release);
        assert!(poller.as_mut().poll_writable(&mut cx).is_ready());
        assert!(poller.as_mut().poll_writable(&mut cx).is_ready());
        assert_eq!(*lock(&recorder.polled), 3, "until it had room again");
    }

    /// What a proptest case sends: a datagram batch as quinn hands it over.
    #[derive(Debug, Clone)]
    struct Step {
        route: u8,
        segment: usize,
        count: usize,
        /// The last datagram's length, at most `segment`.
        last: usize,
        /// The socket's buffer is full when this step is sent.
        full: bool,
        /// The poll ends after this step (and the task did not wake itself).
        poll_ends: bool,
    }

    fn step() -> impl proptest::strategy::Strategy<Value = Step> {
        use proptest::prelude::*;
        (
            0u8..2,
            prop::sample::select(vec![1200usize, 1452, 3000, 8972]),
            1usize..=10,
            1usize..=8972,
            prop::bool::weighted(0.1),
            prop::bool::weighted(0.3),
        )
            .prop_map(|(route, segment, count, last, full, poll_ends)| Step {
                route,
                segment,
                count,
                last: last.min(segment),
                full,
                poll_ends,
            })
    }

    proptest::proptest! {
        /// Whatever quinn hands over, in and out of polls and through full buffers,
        /// the kernel gets every datagram once, in order, with its own boundaries, in
        /// calls it accepts.
        #[test]
        fn every_datagram_goes_out_once_in_order_and_whole(
            steps in proptest::collection::vec(step(), 1..60),
        ) {
            let recorder = Arc::new(Recorder::default());
            let batches = Arc::new(Batches::default());
            let socket = GsoSocket::new(recorder.clone(), &batches);
            let mut sent_in = Vec::new();
            let mut label = 0u32;
            let mut in_poll = false;
            let record = Arc::new(Mutex::new(Vec::new()));
            *lock(&recorder.contents) = Some(record.clone());
            for s in &steps {
                if !in_poll {
                    POLLING.with(|p| p.set(batches_id(&batches)));
                    in_poll = true;
                }
                // Datagrams with contents of their own, to be told apart.
                let mut bytes = Vec::new();
                let mut sizes = Vec::new();
                for i in 0..s.count {
                    let len = if i + 1 == s.count { s.last } else { s.segment };
                    label += 1;
                    let fill = label.to_le_bytes();
                    bytes.extend((0..len).map(|j| fill[j % 4]));
                    sizes.push(len);
                }
                let t = Transmit {
                    destination: SocketAddr::from(([192, 0, 2, 1 + s.route], 4433)),
                    ecn: None,
                    contents: &bytes,
                    segment_size: (s.count > 1).then_some(s.segment),
                    src_ip: None,
                };
                recorder.full.store(s.full, Ordering::Release);
                loop {
                    match socket.try_send(&t) {
                        Ok(()) => break,
                        Err(e) => {
                            proptest::prop_assert_eq!(e.kind(), io::ErrorKind::WouldBlock);
                            // quinn waits for room, then sends the same datagrams again.
                            recorder.full.store(false, Ordering::Release);
                        }
                    }
                }
                let mut at = 0;
                for len in sizes {
                    sent_in.push((s.route, bytes[at..at + len].to_vec()));
                    at += len;
                }
                if s.poll_ends {
                    POLLING.with(|p| p.set(0));
                    in_poll = false;
                    recorder.full.store(false, Ordering::Release);
                    socket.flush().unwrap();
                }
            }
            POLLING.with(|p| p.set(0));
            recorder.full.store(false, Ordering::Release);
            socket.flush().unwrap();
            proptest::prop_assert!(lock(&socket.batch).is_empty());

            let mut sent_out = Vec::new();
            for (route, contents, segment) in lock(&record).iter() {
                proptest::prop_assert!(contents.len() <= MAX_GSO_BYTES || segment.is_none());
                let segment = segment.unwrap_or(contents.len());
                proptest::prop_assert!(contents.len().div_ceil(segment) <= MAX_GSO_SEGMENTS);
                for d in contents.chunks(segment) {
                    sent_out.push((*route, d.to_vec()));
                }
            }
            proptest::prop_assert_eq!(sent_out.len(), sent_in.len());
            proptest::prop_assert!(sent_out == sent_in, "datagrams lost, repeated, reordered or cut");
        }
    }
}
