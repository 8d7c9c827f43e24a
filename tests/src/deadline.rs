//! Bounded waits: a test that hangs must fail, not block CI.

use std::future::Future;
use std::time::{Duration, Instant};

use futures_lite::future;

/// Await `fut`, or panic naming `what` once `limit` has passed.
pub async fn within<T>(limit: Duration, what: &str, fut: impl Future<Output = T>) -> T {
    let expired = async {
        async_io::Timer::after(limit).await;
        panic!("{what}: still not done after {limit:?}");
    };
    future::or(fut, expired).await
}

/// Sleep for `d` on any executor (the timer runs on async-io's own reactor).
pub async fn sleep(d: Duration) {
    async_io::Timer::after(d).await;
}

/// Poll `check` every 10 ms until it returns `Some`, or panic naming `what` after `limit`.
/// For conditions outside the process's futures (a file growing, a child process writing).
pub fn wait_for<T>(limit: Duration, what: &str, mut check: impl FnMut() -> Option<T>) -> T {
    let start = Instant::now();
    loop {
        if let Some(v) = check() {
            return v;
        }
        assert!(
            start.elapsed() < limit,
            "{what}: still not true after {limit:?}"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}
