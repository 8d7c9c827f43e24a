//! The threads that run CPU-heavy per-piece jobs (compress, encrypt, decrypt,
//! decompress): one per CPU, shared by every session of the process.
//!
//! More threads than CPUs would not run jobs faster, and each thread keeps its own zstd
//! context, so a general-purpose blocking pool, which grows a thread per job in flight,
//! costs memory for nothing (a `--compress on` sender peaked at 21.7 MiB on the blocking
//! pool and at 16.9 MiB here; docs/BENCHMARKS.md).

use std::future::Future;
use std::panic::{self, AssertUnwindSafe};
use std::sync::{mpsc, Arc, Mutex, OnceLock};
use std::thread;

type Task = Box<dyn FnOnce() + Send>;

/// Most job threads, whatever the CPU count.
const MAX_THREADS: usize = 16;

/// The queue the job threads take work from; `None` when no thread could be started
/// (jobs then run on the caller's thread).
fn queue() -> Option<&'static mpsc::Sender<Task>> {
    static QUEUE: OnceLock<Option<mpsc::Sender<Task>>> = OnceLock::new();
    QUEUE
        .get_or_init(|| {
            let threads = thread::available_parallelism()
                .map_or(2, |n| n.get())
                .clamp(1, MAX_THREADS);
            // Threads block on a standard channel, taking turns at its receiving end.
            let (tx, rx) = mpsc::channel::<Task>();
            let rx = Arc::new(Mutex::new(rx));
            let mut started = 0;
            for i in 0..threads {
                let rx = Arc::clone(&rx);
                let spawned = thread::Builder::new()
                    .name(format!("p2p-copy-job-{i}"))
                    .spawn(move || loop {
                        let next = rx.lock().unwrap_or_else(|p| p.into_inner()).recv();
                        match next {
                            Ok(task) => task(),
                            Err(_) => return,
                        }
                    });
                started += usize::from(spawned.is_ok());
            }
            (started > 0).then_some(tx)
        })
        .as_ref()
}

/// Run `work` on a job thread; the future yields its result (a panic in `work` is
/// resumed in the task that awaits it).
pub(crate) fn run<T: Send + 'static>(
    work: impl FnOnce() -> T + Send + 'static,
) -> impl Future<Output = T> + Send + 'static {
    let (tx, rx) = async_channel::bounded(1);
    let task: Task = Box::new(move || {
        let _ = tx.try_send(panic::catch_unwind(AssertUnwindSafe(work)));
    });
    let inline = match queue() {
        Some(q) => q.send(task).err().map(|e| e.0),
        None => Some(task),
    };
    if let Some(task) = inline {
        task();
    }
    async move {
        match rx.recv().await {
            Ok(Ok(value)) => value,
            Ok(Err(payload)) => panic::resume_unwind(payload),
            // The sender is dropped only after sending.
            Err(_) => unreachable!("a job thread dropped its result"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_lite::future::block_on;

    #[test]
    fn runs_jobs_and_returns_their_results() {
        let pending: Vec<_> = (0..32u64).map(|i| run(move || i * i)).collect();
        let results: Vec<u64> = pending.into_iter().map(block_on).collect();
        assert_eq!(results, (0..32u64).map(|i| i * i).collect::<Vec<_>>());
    }

    #[test]
    fn a_panicking_job_panics_its_awaiter() {
        let job = run(|| -> u8 { panic!("job failed") });
        assert!(panic::catch_unwind(AssertUnwindSafe(|| block_on(job))).is_err());
        // The thread survives for the next job.
        assert_eq!(block_on(run(|| 7)), 7);
    }
}
