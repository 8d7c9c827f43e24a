//! Pacing bytes to a rate: a token bucket, sans-IO (time comes in as `now`).
//!
//! The caller asks before it moves a message: [`TokenBucket::take`] counts the message's
//! bytes and answers how long to hold it so that the rate is kept. A message is never
//! split or refused, so a message larger than the burst simply waits for its bytes to be
//! earned; over any window of a few messages the bytes that went out stay within the
//! rate plus the burst.
//!
//! ```
//! use std::time::{Duration, Instant};
//! use p2p_copy_core::rate::TokenBucket;
//!
//! let start = Instant::now();
//! let mut bucket = TokenBucket::new(start, 1_000_000, 0);
//! // 500 kB at 1 MB/s: hold the message half a second.
//! assert_eq!(bucket.take(start, 500_000), Duration::from_millis(500));
//! ```

use std::time::{Duration, Instant};

/// A token bucket for bytes: earns `rate` tokens a second up to `burst`, and lets the
/// balance go negative (a debt) when a message takes more than it holds.
#[derive(Debug, Clone)]
pub struct TokenBucket {
    rate: f64,
    burst: f64,
    tokens: f64,
    at: Instant,
}

impl TokenBucket {
    /// A bucket of `rate` bytes a second (at least 1) that saves at most `burst` bytes
    /// while idle, empty at `now`: the first bytes wait for their time, so that a short
    /// transfer does not beat the rate.
    pub fn new(now: Instant, rate: u64, burst: u64) -> TokenBucket {
        TokenBucket {
            rate: rate.max(1) as f64,
            burst: burst as f64,
            tokens: 0.0,
            at: now,
        }
    }

    /// A bucket that starts full, with a second's worth of burst (the relay's per-pair
    /// limit: a new pair starts at once).
    pub fn full(now: Instant, rate: u64) -> TokenBucket {
        let mut b = TokenBucket::new(now, rate, rate);
        b.tokens = b.burst;
        b
    }

    /// The rate, in bytes a second.
    pub fn rate(&self) -> u64 {
        self.rate as u64
    }

    /// Count `n` bytes at `now`; how long to hold them (or the next message) so that
    /// the rate is kept. Zero when the bucket had them. A `now` earlier than the last
    /// call counts as no time passed.
    pub fn take(&mut self, now: Instant, n: usize) -> Duration {
        let secs = now.saturating_duration_since(self.at).as_secs_f64();
        if now > self.at {
            self.at = now;
        }
        // Earned tokens pay a debt first; only then does the saving stop at the burst.
        self.tokens = (self.tokens + secs * self.rate).min(self.burst) - n as f64;
        if self.tokens >= 0.0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64(-self.tokens / self.rate)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: usize = 1 << 20;

    /// Move `messages` of `size` bytes through `bucket` as a sender that holds each one
    /// for the time the bucket says, the next one ready `gap` after the previous went;
    /// when each message went.
    fn run(
        bucket: &mut TokenBucket,
        start: Instant,
        size: usize,
        messages: usize,
        gap: Duration,
    ) -> Vec<Instant> {
        let mut now = start;
        let mut sent = Vec::new();
        for _ in 0..messages {
            now += bucket.take(now, size);
            sent.push(now);
            now += gap;
        }
        sent
    }

    /// Bytes that went out in `[from, from + window)`.
    fn in_window(sent: &[Instant], size: usize, from: Instant, window: Duration) -> u64 {
        sent.iter()
            .filter(|t| **t >= from && **t < from + window)
            .count() as u64
            * size as u64
    }

    #[test]
    fn a_10_second_window_is_within_10_percent_of_the_rate() {
        let start = Instant::now();
        let rate = 20_000_000u64;
        for (size, gap) in [
            (MIB, Duration::ZERO),
            (64 * 1024, Duration::ZERO),
            // A producer that is a little late each time still gets the rate.
            (MIB, Duration::from_millis(5)),
        ] {
            let mut b = TokenBucket::new(start, rate, rate / 10);
            // Enough messages for 20 s at the rate.
            let messages = (rate * 20 / size as u64) as usize;
            let sent = run(&mut b, start, size, messages, gap);
            for offset in [0u64, 3, 7] {
                let from = start + Duration::from_secs(offset);
                let moved = in_window(&sent, size, from, Duration::from_secs(10));
                let expected = rate * 10;
                assert!(
                    moved.abs_diff(expected) <= expected / 10,
                    "{size} B messages, gap {gap:?}, from {offset} s: {moved} B in 10 s"
                );
            }
        }
    }

    #[test]
    fn an_empty_bucket_holds_the_first_message_for_its_bytes() {
        let start = Instant::now();
        let mut b = TokenBucket::new(start, 400_000, 40_000);
        assert_eq!(b.take(start, 400_000), Duration::from_secs(1));
        // The debt is paid by time, not forgotten: a second message right after the
        // first went waits a full second too.
        let went = start + Duration::from_secs(1);
        assert_eq!(b.take(went, 400_000), Duration::from_secs(1));
    }

    #[test]
    fn an_idle_bucket_saves_no_more_than_its_burst() {
        let start = Instant::now();
        let mut b = TokenBucket::new(start, 1_000, 100);
        let later = start + Duration::from_secs(3600);
        assert_eq!(b.take(later, 100), Duration::ZERO);
        assert_eq!(b.take(later, 100), Duration::from_millis(100));
    }

    #[test]
    fn the_wait_never_exceeds_what_the_bytes_cost() {
        // No stall: whatever happened before, holding a message longer than its own
        // bytes take at the rate (plus the debt still unpaid) never happens, and time
        // going backwards does not add to it.
        let start = Instant::now();
        let mut b = TokenBucket::new(start, 1_000_000, 0);
        let first = b.take(start, 2_000_000);
        assert_eq!(first, Duration::from_secs(2));
        let after = start + first;
        assert_eq!(b.take(after, 1_000), Duration::from_millis(1));
        assert!(b.take(start, 0) <= Duration::from_millis(1));
    }

    #[test]
    fn a_full_bucket_starts_with_a_seconds_worth() {
        let start = Instant::now();
        let mut b = TokenBucket::full(start, 1_000);
        assert_eq!(b.take(start, 1_000), Duration::ZERO);
        assert_eq!(b.take(start, 500), Duration::from_millis(500));
        assert_eq!(b.rate(), 1_000);
    }
}
