//! A session's file worker: one thread that carries out file requests in the order they
//! were made, so requests for a file are never reordered, while the session loop goes
//! on. A dedicated thread (rather than trips to a shared blocking pool) also keeps the
//! 1 MiB buffers it allocates in one allocator arena, which keeps memory flat.

use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;

use crate::machine::FileIo;

/// The session's end of a file worker. Dropping it stops the worker after the request
/// it is carrying out and waits for that (at most one file operation), so once a session
/// has ended nothing touches its files any more: a new session may resume them at once.
pub(crate) struct IoWorker<F: FileIo> {
    requests: async_channel::Sender<F::Request>,
    stop: Arc<AtomicBool>,
    thread: Option<thread::JoinHandle<()>>,
    /// Answers, in request order.
    pub done: Pin<Box<async_channel::Receiver<F::Completion>>>,
}

impl<F: FileIo> IoWorker<F> {
    /// Start a worker thread that owns `files`.
    ///
    /// # Errors
    /// The operating system refused a thread.
    pub(crate) fn start(mut files: F) -> std::io::Result<Self> {
        // Unbounded, but never long: the state machine bounds what it asks for.
        let (requests, inbox) = async_channel::unbounded::<F::Request>();
        let (outbox, done) = async_channel::unbounded();
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = Arc::clone(&stop);
        let thread = thread::Builder::new()
            .name("p2p-copy-files".into())
            .spawn(move || {
                while let Ok(req) = inbox.recv_blocking() {
                    if stopped.load(Ordering::Acquire) {
                        return;
                    }
                    let Some(answer) = files.run(req) else {
                        continue;
                    };
                    let failed = F::is_failure(&answer);
                    if outbox.send_blocking(answer).is_err() || failed {
                        // After a failure nothing may touch the files any more (a rename
                        // after a failed write would put a damaged file in place).
                        return;
                    }
                }
            })?;
        Ok(IoWorker {
            requests,
            stop,
            thread: Some(thread),
            done: Box::pin(done),
        })
    }

    /// Queue a request.
    pub(crate) fn submit(&self, req: F::Request) {
        // The worker only stops after a failure, which has already failed the session.
        let _ = self.requests.try_send(req);
    }
}

impl<F: FileIo> Drop for IoWorker<F> {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        self.requests.close();
        if let Some(t) = self.thread.take() {
            // Blocks for at most the one request the worker is carrying out.
            let _ = t.join();
        }
    }
}
