//! A session's file worker: one thread that carries out file requests in the order they
//! were made, so requests for a file are never reordered, while the session loop goes
//! on. A dedicated thread (rather than trips to a shared blocking pool) also keeps the
//! 1 MiB buffers it allocates in one allocator arena, which keeps memory flat.
//!
//! Cheap requests (see [`Cheap`]) are carried out on the session loop itself when the
//! worker has nothing outstanding: a trip to another thread and back costs two context
//! switches per request, and a small file takes several requests. Order is kept because
//! the loop only does so when every earlier request has been answered.

use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::thread;

use futures_util::Stream;

use crate::machine::FileIo;

/// Requests small enough to carry out on the session loop without stalling it: bounded
/// work of at most a few small system calls, never a large copy or a sync.
pub(crate) trait Cheap {
    /// Whether this request may run on the session loop.
    fn is_cheap(&self) -> bool;
}

/// Largest read or write carried out on the session loop.
pub(crate) const CHEAP_BYTES: usize = 64 * 1024;

/// The session's end of a file worker. Dropping it stops the worker after the request
/// it is carrying out and waits for that (at most one file operation), so once a session
/// has ended nothing touches its files any more: a new session may resume them at once.
pub(crate) struct IoWorker<F: FileIo> {
    files: Arc<Mutex<F>>,
    /// `None` once dropping: closing it lets the thread end.
    requests: Option<mpsc::Sender<F::Request>>,
    stop: Arc<AtomicBool>,
    thread: Option<thread::JoinHandle<()>>,
    /// Answers, in request order (`None` for requests that need none).
    done: Pin<Box<async_channel::Receiver<Option<F::Completion>>>>,
    /// Requests submitted to the thread and not yet answered.
    outstanding: usize,
    /// A request failed: nothing more is carried out.
    failed: bool,
    /// Cheap requests may run on the session loop ([`FileIo::inline_ok`]).
    inline: bool,
}

fn lock<F>(files: &Mutex<F>) -> MutexGuard<'_, F> {
    // A panic in a file operation fails the session anyway; the state is still usable
    // for dropping.
    files.lock().unwrap_or_else(|p| p.into_inner())
}

impl<F: FileIo> IoWorker<F> {
    /// Start a worker thread that owns `files`.
    ///
    /// # Errors
    /// The operating system refused a thread.
    pub(crate) fn start(files: F) -> std::io::Result<Self> {
        // Unbounded, but never long: the state machine bounds what it asks for.
        // The thread blocks on a standard channel; answers go back on an async one.
        let (requests, inbox) = mpsc::channel::<F::Request>();
        let (outbox, done) = async_channel::unbounded();
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = Arc::clone(&stop);
        let inline = files.inline_ok();
        let files = Arc::new(Mutex::new(files));
        let shared = Arc::clone(&files);
        let thread = thread::Builder::new()
            .name("p2p-copy-files".into())
            .spawn(move || {
                while let Ok(req) = inbox.recv() {
                    if stopped.load(Ordering::Acquire) {
                        return;
                    }
                    let answer = lock(&shared).run(req);
                    let failed = answer.as_ref().is_some_and(F::is_failure);
                    if outbox.send_blocking(answer).is_err() || failed {
                        // After a failure nothing may touch the files any more (a rename
                        // after a failed write would put a damaged file in place).
                        return;
                    }
                }
            })?;
        Ok(IoWorker {
            files,
            requests: Some(requests),
            stop,
            thread: Some(thread),
            done: Box::pin(done),
            outstanding: 0,
            failed: false,
            inline,
        })
    }

    /// Carry out a request: at once on this thread when it is cheap and nothing is
    /// outstanding (its answer is returned), else on the worker (its answer comes from
    /// [`poll_done`](Self::poll_done)).
    pub(crate) fn submit(&mut self, req: F::Request) -> Option<F::Completion> {
        if self.failed {
            return None;
        }
        if self.outstanding == 0 && self.inline && req.is_cheap() {
            let answer = lock(&self.files).run(req);
            self.failed = answer.as_ref().is_some_and(F::is_failure);
            return answer;
        }
        // The worker only stops after a failure, which has already failed the session.
        if let Some(requests) = &self.requests {
            if requests.send(req).is_ok() {
                self.outstanding += 1;
            }
        }
        None
    }

    /// The next answer from the worker.
    pub(crate) fn poll_done(&mut self, cx: &mut Context<'_>) -> Poll<Option<F::Completion>> {
        loop {
            match self.done.as_mut().poll_next(cx) {
                Poll::Ready(Some(answer)) => {
                    self.outstanding = self.outstanding.saturating_sub(1);
                    if let Some(done) = answer {
                        if F::is_failure(&done) {
                            self.failed = true;
                        }
                        return Poll::Ready(Some(done));
                    }
                }
                Poll::Ready(None) => return Poll::Ready(None),
                Poll::Pending => return Poll::Pending,
            }
        }
    }
}

impl<F: FileIo> Drop for IoWorker<F> {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        self.requests = None;
        if let Some(t) = self.thread.take() {
            // Blocks for at most the one request the worker is carrying out.
            let _ = t.join();
        }
    }
}
