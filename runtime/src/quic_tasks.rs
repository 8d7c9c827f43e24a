//! quinn's tasks inside the transfer's own future.
//!
//! quinn drives a connection with tasks it spawns: the endpoint's, which reads the UDP
//! socket, and each connection's, which builds, seals and sends packets. On the
//! executor's threads they run beside the session, which runs in the task that awaits
//! the transfer: every batch of datagrams read, every acknowledgement that opens the
//! send window and every piece the session writes then wakes a task on the other
//! thread. In the unshaped lab (docs/BENCHMARKS.md, "quinn's tasks on the session's
//! thread") that cost the receiver about 59,800 context switches per GiB and the sender
//! 31,200, against 4,300 each over the relay, and with them about a fifth of the
//! direct path's CPU.
//!
//! So a transfer runs quinn's tasks itself: [`QuicTasks::run`] polls the transfer's
//! future and, beside it, the tasks quinn spawned through [`OnTasks`]'s runtime. A task
//! woken by the socket or a timer wakes the transfer's task, which runs it in place.
//! When the transfer's future ends or is dropped, so are quinn's tasks (after those
//! ready at that moment ran once, so that closing packets go out).

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Weak};
use std::time::Instant;

use async_executor::Executor;

use crate::rt::Rt;

/// How many ready tasks a finished transfer still runs: enough for the connection's
/// task to send its closing packets, bounded against tasks that keep waking themselves.
const LAST_TICKS: usize = 64;

/// The executor of one transfer's quinn tasks.
#[derive(Clone, Default)]
pub(crate) struct QuicTasks(Arc<Executor<'static>>);

impl std::fmt::Debug for QuicTasks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QuicTasks").finish_non_exhaustive()
    }
}

impl QuicTasks {
    /// Run `transfer` and, while it runs, the quinn tasks spawned on these.
    ///
    /// `transfer` is boxed: a session's future is large, and the executor's own future
    /// holds it (on the stack of whoever awaits this, unboxed).
    pub(crate) async fn run<T>(self, transfer: impl Future<Output = T>) -> T {
        let out = self.0.run(Box::pin(transfer)).await;
        for _ in 0..LAST_TICKS {
            if !self.0.try_tick() {
                break;
            }
        }
        out
    }

    /// `inner` with its tasks spawned on these (see [`Spawner`]).
    pub(crate) fn quinn_runtime(&self, inner: Arc<dyn quinn::Runtime>) -> Arc<dyn quinn::Runtime> {
        Arc::new(Spawner {
            inner,
            tasks: Arc::downgrade(&self.0),
        })
    }
}

/// A runtime `R` whose quinn tasks run on [`QuicTasks`]; everything else is `R`'s.
#[derive(Clone, Debug)]
pub(crate) struct OnTasks<R> {
    rt: R,
    tasks: Weak<Executor<'static>>,
}

impl<R: Rt> OnTasks<R> {
    /// `rt`, with quinn's tasks on `tasks`.
    pub(crate) fn new(rt: R, tasks: &QuicTasks) -> OnTasks<R> {
        OnTasks {
            rt,
            tasks: Arc::downgrade(&tasks.0),
        }
    }
}

/// quinn's runtime with its tasks on a transfer's [`QuicTasks`].
///
/// It holds them weakly: quinn's endpoint keeps its runtime, and the endpoint's task
/// keeps the endpoint, so a strong reference would keep the tasks alive forever. A task
/// spawned after the transfer ended (none is) goes to the executor's threads.
#[derive(Debug)]
struct Spawner {
    inner: Arc<dyn quinn::Runtime>,
    tasks: Weak<Executor<'static>>,
}

impl quinn::Runtime for Spawner {
    fn new_timer(&self, deadline: Instant) -> Pin<Box<dyn quinn::AsyncTimer>> {
        self.inner.new_timer(deadline)
    }

    fn spawn(&self, future: Pin<Box<dyn Future<Output = ()> + Send>>) {
        match self.tasks.upgrade() {
            Some(tasks) => tasks.spawn(future).detach(),
            None => self.inner.spawn(future),
        }
    }

    fn wrap_udp_socket(
        &self,
        socket: std::net::UdpSocket,
    ) -> io::Result<Arc<dyn quinn::AsyncUdpSocket>> {
        self.inner.wrap_udp_socket(socket)
    }

    fn now(&self) -> Instant {
        self.inner.now()
    }
}

// `async fn` here would borrow `self`; the trait asks for futures that own everything.
#[allow(clippy::manual_async_fn)]
impl<R: Rt> Rt for OnTasks<R> {
    type TcpStream = R::TcpStream;
    type TcpListener = R::TcpListener;
    type UdpSocket = R::UdpSocket;

    fn spawn(&self, task: impl Future<Output = ()> + Send + 'static) {
        self.rt.spawn(task);
    }

    fn spawn_blocking<T: Send + 'static>(
        &self,
        work: impl FnOnce() -> T + Send + 'static,
    ) -> impl Future<Output = T> + Send + 'static {
        self.rt.spawn_blocking(work)
    }

    fn sleep_until(&self, deadline: Instant) -> impl Future<Output = ()> + Send + 'static {
        self.rt.sleep_until(deadline)
    }

    fn connect(
        &self,
        host: String,
        port: u16,
    ) -> impl Future<Output = io::Result<Self::TcpStream>> + Send + 'static {
        self.rt.connect(host, port)
    }

    fn bind(
        &self,
        host: String,
        port: u16,
    ) -> impl Future<Output = io::Result<Self::TcpListener>> + Send + 'static {
        self.rt.bind(host, port)
    }

    fn local_addr(listener: &Self::TcpListener) -> io::Result<SocketAddr> {
        R::local_addr(listener)
    }

    fn accept(
        listener: &Self::TcpListener,
    ) -> impl Future<Output = io::Result<(Self::TcpStream, SocketAddr)>> + Send + '_ {
        R::accept(listener)
    }

    fn set_nodelay(stream: &Self::TcpStream) -> io::Result<()> {
        R::set_nodelay(stream)
    }

    fn bind_udp(
        &self,
        addr: SocketAddr,
    ) -> impl Future<Output = io::Result<Self::UdpSocket>> + Send + 'static {
        self.rt.bind_udp(addr)
    }

    fn udp_local_addr(socket: &Self::UdpSocket) -> io::Result<SocketAddr> {
        R::udp_local_addr(socket)
    }

    fn send_to<'a>(
        socket: &'a Self::UdpSocket,
        datagram: &'a [u8],
        target: SocketAddr,
    ) -> impl Future<Output = io::Result<usize>> + Send + 'a {
        R::send_to(socket, datagram, target)
    }

    fn recv_from<'a>(
        socket: &'a Self::UdpSocket,
        buf: &'a mut [u8],
    ) -> impl Future<Output = io::Result<(usize, SocketAddr)>> + Send + 'a {
        R::recv_from(socket, buf)
    }

    fn quinn_runtime(&self) -> Arc<dyn quinn::Runtime> {
        Arc::new(Spawner {
            inner: self.rt.quinn_runtime(),
            tasks: self.tasks.clone(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

    use futures_lite::future;

    /// The executor's runtime: counts the tasks it is given, and drops them.
    #[derive(Debug, Default)]
    struct Counting {
        spawned: AtomicUsize,
    }

    impl quinn::Runtime for Counting {
        fn new_timer(&self, _: Instant) -> Pin<Box<dyn quinn::AsyncTimer>> {
            unreachable!("the tests ask for no timer")
        }

        fn spawn(&self, _: Pin<Box<dyn Future<Output = ()> + Send>>) {
            self.spawned.fetch_add(1, Ordering::SeqCst);
        }

        fn wrap_udp_socket(
            &self,
            _: std::net::UdpSocket,
        ) -> io::Result<Arc<dyn quinn::AsyncUdpSocket>> {
            Err(io::Error::other("the tests wrap no socket"))
        }
    }

    fn spawner(tasks: &QuicTasks) -> (Arc<dyn quinn::Runtime>, Arc<Counting>) {
        let inner = Arc::new(Counting::default());
        (tasks.quinn_runtime(inner.clone()), inner)
    }

    /// Sets its flag when dropped.
    struct Dropped(Arc<AtomicBool>);

    impl Drop for Dropped {
        fn drop(&mut self) {
            self.0.store(true, Ordering::SeqCst);
        }
    }

    #[test]
    fn quinn_tasks_run_in_the_transfer_on_its_thread() {
        let tasks = QuicTasks::default();
        let (spawner, inner) = spawner(&tasks);
        let (tx, rx) = async_channel::bounded(1);
        quinn::Runtime::spawn(
            &*spawner,
            Box::pin(async move {
                let _ = tx.send(std::thread::current().id()).await;
            }),
        );
        let ran_on = future::block_on(tasks.run(async { rx.recv().await }));
        assert_eq!(ran_on, Ok(std::thread::current().id()));
        assert_eq!(inner.spawned.load(Ordering::SeqCst), 0);
    }

    #[test]
    fn ready_tasks_run_once_more_when_the_transfer_ends() {
        let tasks = QuicTasks::default();
        let (spawner, _) = spawner(&tasks);
        let ran = Arc::new(AtomicBool::new(false));
        let flag = ran.clone();
        quinn::Runtime::spawn(
            &*spawner,
            Box::pin(async move { flag.store(true, Ordering::SeqCst) }),
        );
        // The transfer is ready at its first poll, before any task ran.
        future::block_on(tasks.run(async {}));
        assert!(ran.load(Ordering::SeqCst), "the ready task never ran");
    }

    #[test]
    fn an_ended_transfer_drops_its_tasks_and_later_ones_go_to_the_executor() {
        let tasks = QuicTasks::default();
        let (spawner, inner) = spawner(&tasks);
        let dropped = Arc::new(AtomicBool::new(false));
        let guard = Dropped(dropped.clone());
        quinn::Runtime::spawn(
            &*spawner,
            Box::pin(async move {
                let _guard = guard;
                future::pending::<()>().await;
            }),
        );
        future::block_on(tasks.run(future::yield_now()));
        assert!(
            dropped.load(Ordering::SeqCst),
            "a task outlived its transfer"
        );
        quinn::Runtime::spawn(&*spawner, Box::pin(async {}));
        assert_eq!(inner.spawned.load(Ordering::SeqCst), 1);
    }
}
