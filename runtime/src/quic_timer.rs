//! quinn's connection timer, re-armed only when it must be.
//!
//! A QUIC connection has one timer: the earliest of its idle timeout, keep-alive, loss
//! detection, acknowledgement delay and pacing deadlines. During a bulk transfer that
//! deadline moves with nearly every packet acknowledged, mostly later, and quinn resets
//! its timer each time. On smol and async-std every reset goes to the async-io reactor:
//! a queued timer operation, an eventfd write that wakes the reactor thread, a
//! `timerfd_settime` and the `epoll_ctl` calls that re-arm its sources. Measured in the
//! unshaped lab (docs/BENCHMARKS.md), that is tens of thousands of system calls and
//! thread wake-ups per second, on the same two cores that move the data.
//!
//! The runtime quinn gets ([`QuicRuntime`](crate::quic_runtime::QuicRuntime)) hands out
//! [`LazyTimer`]s. A reset to a later deadline only records it; the armed timer stays
//! as it is, and when it fires early, the timer re-arms itself for the recorded deadline
//! instead of waking the connection. A reset to an earlier deadline re-arms at once. The
//! connection therefore wakes exactly as it would with a plain timer, never later, and
//! rarely earlier: the reactor sees one operation per deadline that actually comes due,
//! not one per change.

use std::fmt;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Instant;

use quinn::{AsyncTimer, Runtime};

/// A timer that fires at the last deadline it was given, re-arming the underlying timer
/// only when that deadline moves earlier or the armed one comes due.
pub struct LazyTimer {
    inner: Pin<Box<dyn AsyncTimer>>,
    /// The deadline the underlying timer is set to; `None` once it has fired (a fired
    /// timer never fires again until it is reset).
    armed: Option<Instant>,
    /// The deadline this timer reports.
    wanted: Instant,
    runtime: Arc<dyn Runtime>,
}

impl fmt::Debug for LazyTimer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LazyTimer")
            .field("armed", &self.armed)
            .field("wanted", &self.wanted)
            .finish_non_exhaustive()
    }
}

impl LazyTimer {
    /// A timer for `deadline` on `runtime`'s timers.
    pub fn new(runtime: Arc<dyn Runtime>, deadline: Instant) -> LazyTimer {
        LazyTimer {
            inner: runtime.new_timer(deadline),
            armed: Some(deadline),
            wanted: deadline,
            runtime,
        }
    }

    fn arm(&mut self, deadline: Instant) {
        self.inner.as_mut().reset(deadline);
        self.armed = Some(deadline);
    }
}

impl AsyncTimer for LazyTimer {
    fn reset(mut self: Pin<&mut Self>, deadline: Instant) {
        self.wanted = deadline;
        if self.armed.is_none_or(|armed| deadline < armed) {
            self.arm(deadline);
        }
    }

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        loop {
            if self.armed.is_none() {
                let wanted = self.wanted;
                self.arm(wanted);
            }
            ready!(self.inner.as_mut().poll(cx));
            self.armed = None;
            if self.runtime.now() >= self.wanted {
                return Poll::Ready(());
            }
            // Fired for a deadline that has since moved later: wait for the new one.
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use quinn::AsyncUdpSocket;
    use std::future::Future;
    use std::io;
    use std::sync::Mutex;
    use std::task::Waker;
    use std::time::Duration;

    /// A runtime with a hand-driven clock whose timers count their resets.
    #[derive(Debug, Default)]
    struct Clock {
        now: Mutex<Option<Instant>>,
        resets: Mutex<usize>,
    }

    #[derive(Debug)]
    struct ManualTimer {
        at: Option<Instant>,
        clock: Arc<Clock>,
    }

    impl AsyncTimer for ManualTimer {
        fn reset(mut self: Pin<&mut Self>, i: Instant) {
            *self.clock.resets.lock().unwrap() += 1;
            self.at = Some(i);
        }
        fn poll(mut self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<()> {
            // Like async-io's timer: ready once at its deadline, pending after that
            // until it is reset.
            match self.at {
                Some(at) if self.clock.now() >= at => {
                    self.at = None;
                    Poll::Ready(())
                }
                _ => Poll::Pending,
            }
        }
    }

    impl Clock {
        fn now(&self) -> Instant {
            self.now.lock().unwrap().expect("clock set")
        }
    }

    #[derive(Debug)]
    struct ManualRuntime(Arc<Clock>);

    impl Runtime for ManualRuntime {
        fn new_timer(&self, i: Instant) -> Pin<Box<dyn AsyncTimer>> {
            Box::pin(ManualTimer {
                at: Some(i),
                clock: self.0.clone(),
            })
        }
        fn spawn(&self, _: Pin<Box<dyn Future<Output = ()> + Send>>) {
            unreachable!("the timer spawns nothing")
        }
        fn wrap_udp_socket(&self, _: std::net::UdpSocket) -> io::Result<Arc<dyn AsyncUdpSocket>> {
            unreachable!("the timer opens no socket")
        }
        fn now(&self) -> Instant {
            self.0.now()
        }
    }

    #[test]
    fn fires_at_the_last_deadline_and_rearms_only_when_it_must() {
        let start = Instant::now();
        let ms = |n: u64| start + Duration::from_millis(n);
        let clock = Arc::new(Clock::default());
        *clock.now.lock().unwrap() = Some(start);
        let mut timer = Box::pin(LazyTimer::new(
            Arc::new(ManualRuntime(clock.clone())),
            ms(10),
        ));
        let mut cx = Context::from_waker(Waker::noop());
        let resets = || *clock.resets.lock().unwrap();

        // Deadlines that move later cost nothing until the armed one comes due.
        for n in 11..=50 {
            timer.as_mut().reset(ms(n));
        }
        assert_eq!(resets(), 0);
        assert!(timer.as_mut().poll(&mut cx).is_pending());
        *clock.now.lock().unwrap() = Some(ms(10));
        assert!(timer.as_mut().poll(&mut cx).is_pending(), "fired early");
        assert_eq!(resets(), 1, "re-armed once, for the last deadline");
        *clock.now.lock().unwrap() = Some(ms(49));
        assert!(timer.as_mut().poll(&mut cx).is_pending());
        *clock.now.lock().unwrap() = Some(ms(50));
        assert!(timer.as_mut().poll(&mut cx).is_ready());

        // An earlier deadline re-arms at once, and fires on time.
        timer.as_mut().reset(ms(100));
        assert_eq!(resets(), 2, "a fired timer is re-armed by a reset");
        timer.as_mut().reset(ms(60));
        assert_eq!(resets(), 3);
        *clock.now.lock().unwrap() = Some(ms(60));
        assert!(timer.as_mut().poll(&mut cx).is_ready());
    }
}
