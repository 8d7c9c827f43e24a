//! A session's file worker: one thread that carries out file requests in the order they
//! were made, so requests for a file are never reordered, while the session loop goes
//! on. A dedicated thread (rather than trips to a shared blocking pool) also keeps the
//! 1 MiB buffers it allocates in one allocator arena, which keeps memory flat.

use std::pin::Pin;
use std::thread;

use crate::machine::FileIo;

/// The session's end of a file worker. Dropping it stops the worker after the request
/// it is carrying out.
pub(crate) struct IoWorker<F: FileIo> {
    requests: async_channel::Sender<F::Request>,
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
        thread::Builder::new()
            .name("p2p-copy-files".into())
            .spawn(move || {
                while let Ok(req) = inbox.recv_blocking() {
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
            done: Box::pin(done),
        })
    }

    /// Queue a request.
    pub(crate) fn submit(&self, req: F::Request) {
        // The worker only stops after a failure, which has already failed the session.
        let _ = self.requests.try_send(req);
    }
}
