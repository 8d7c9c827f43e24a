//! The relay's shared state: the core's pairing machine and, per connection, the
//! channels its task listens on. Every input is followed by [`Hub::after_input`], which
//! drains the machine's outputs into those channels, logs its events and updates the
//! metrics.

use std::borrow::Cow;
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use async_tungstenite::tungstenite::Message;
use futures_util::future::AbortHandle;
use p2p_copy_core::rate::TokenBucket;
use p2p_copy_core::relay::{ConnId, Relay, RelayConfig, RelayEvent, RelayOutput};

use crate::relay_metrics::RelayMetrics;
use crate::transport::from_wire;

/// What a connection's task is told to do.
#[derive(Debug)]
pub(crate) enum Command {
    /// Send a message from the relay itself (`ready`).
    Send(Message),
    /// Deliver what is queued, then a close frame.
    Close(u16, Cow<'static, str>),
}

/// A connection's handles, as the hub keeps them.
pub(crate) struct Entry {
    /// The task's command channel.
    pub commands: async_channel::Sender<Command>,
    /// The task's queue of messages forwarded from its partner (bounded).
    pub forward: async_channel::Sender<Message>,
    /// Bytes this connection's client sent that were forwarded to its partner.
    pub forwarded: Arc<AtomicU64>,
    /// Stops the task at once.
    pub abort: AbortHandle,
    partner: Option<ConnId>,
    /// What the pair shares, once paired.
    pair: Option<PairShare>,
    /// The client's address, for the log.
    addr: Option<IpAddr>,
}

/// The relay's buckets start full, with a second's worth of burst. A message is never
/// refused: it is taken whole, and the reader then waits until the bucket is back out
/// of debt, so a connection over the rate is read more slowly (TCP slows its client).
type ByteBucket = TokenBucket;

/// A bucket several connection tasks take from.
pub(crate) type SharedBucket = Arc<Mutex<ByteBucket>>;

/// What the two connections of a pair share.
#[derive(Debug, Clone)]
struct PairShare {
    /// Bytes forwarded in both directions.
    bytes: Arc<AtomicU64>,
    /// The pair's own bandwidth bucket, with `max_rate`.
    bucket: Option<SharedBucket>,
}

/// What a paired connection's reader needs to forward a message.
pub(crate) struct Forwarding {
    /// The partner's queue.
    pub queue: async_channel::Sender<Message>,
    /// Bytes the pair forwarded, both directions.
    pub pair_bytes: Arc<AtomicU64>,
    /// The buckets to take from: the pair's, and those of both clients' addresses.
    pub buckets: Vec<SharedBucket>,
}

/// Limits the runtime applies to paired connections.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct ByteLimits {
    /// Bytes a second per pair and per address.
    pub max_rate: Option<u64>,
    /// Bytes per pair.
    pub max_bytes: Option<u64>,
}

impl Entry {
    pub(crate) fn new(
        commands: async_channel::Sender<Command>,
        forward: async_channel::Sender<Message>,
        forwarded: Arc<AtomicU64>,
        abort: AbortHandle,
    ) -> Self {
        Entry {
            commands,
            forward,
            forwarded,
            abort,
            partner: None,
            pair: None,
            addr: None,
        }
    }
}

/// The pairing machine and the connections' handles.
pub(crate) struct Hub {
    pub relay: Relay,
    conns: HashMap<ConnId, Entry>,
    /// Wakes the timer task so it re-reads the earliest deadline.
    timer_wake: async_channel::Sender<()>,
    /// Lines about refused and timed-out connections, rate-limited: a flood must not
    /// flood the log too.
    refusals: RefusalLog,
    pub metrics: Arc<RelayMetrics>,
    pub limits: ByteLimits,
    /// With `max_rate`: a bucket per client address, and how many connections use it.
    addr_buckets: HashMap<IpAddr, (SharedBucket, usize)>,
}

/// The hub, shared by the accept loop, the timer and every connection task. The lock is
/// never held across an await.
pub(crate) type SharedHub = Arc<Mutex<Hub>>;

pub(crate) fn lock(hub: &SharedHub) -> MutexGuard<'_, Hub> {
    // A panic elsewhere must not take the whole relay down with it.
    hub.lock().unwrap_or_else(|p| p.into_inner())
}

impl Hub {
    pub(crate) fn new(
        config: RelayConfig,
        timer_wake: async_channel::Sender<()>,
        metrics: Arc<RelayMetrics>,
        limits: ByteLimits,
    ) -> Self {
        Hub {
            relay: Relay::new(config),
            conns: HashMap::new(),
            timer_wake,
            refusals: RefusalLog::default(),
            metrics,
            limits,
            addr_buckets: HashMap::new(),
        }
    }

    /// A new connection: track it, then let the machine accept or refuse it.
    pub(crate) fn connect(&mut self, now: Instant, id: ConnId, entry: Entry, addr: IpAddr) {
        let mut entry = entry;
        entry.addr = Some(addr);
        self.conns.insert(id, entry);
        self.metrics.connections.inc();
        self.metrics.connections_open.inc();
        if let Some(rate) = self.limits.max_rate {
            self.addr_buckets
                .entry(addr)
                .or_insert_with(|| (Arc::new(Mutex::new(ByteBucket::full(now, rate))), 0))
                .1 += 1;
        }
        self.relay.handle_connect(now, id, addr);
        self.after_input();
    }

    /// What a connection needs to forward to its partner, once paired.
    pub(crate) fn forwarding(&self, id: ConnId) -> Option<Forwarding> {
        let entry = self.conns.get(&id)?;
        let partner = self.conns.get(&entry.partner?)?;
        let share = entry.pair.clone()?;
        let mut buckets: Vec<SharedBucket> = share.bucket.into_iter().collect();
        for addr in [entry.addr, partner.addr].into_iter().flatten() {
            if let Some((b, _)) = self.addr_buckets.get(&addr) {
                if !buckets.iter().any(|x| Arc::ptr_eq(x, b)) {
                    buckets.push(b.clone());
                }
            }
        }
        Some(Forwarding {
            queue: partner.forward.clone(),
            pair_bytes: share.bytes,
            buckets,
        })
    }

    /// A connection's task ended.
    pub(crate) fn depart(&mut self, now: Instant, id: ConnId) {
        self.relay.handle_disconnect(now, id);
        self.after_input();
        if let Some(entry) = self.conns.remove(&id) {
            self.metrics.connections_open.dec();
            if let Some(addr) = entry.addr {
                if let Some((_, users)) = self.addr_buckets.get_mut(&addr) {
                    *users -= 1;
                    if *users == 0 {
                        self.addr_buckets.remove(&addr);
                    }
                }
            }
        }
    }

    /// Carry out what the machine asks for, log what it reports, and let the timer task
    /// re-arm.
    pub(crate) fn after_input(&mut self) {
        while let Some(out) = self.relay.poll_output() {
            match out {
                RelayOutput::Send { conn, msg } => {
                    if let Some(e) = self.conns.get(&conn) {
                        let _ = e.commands.try_send(Command::Send(from_wire(msg)));
                    }
                }
                RelayOutput::Paired { sender, receiver } => {
                    let share = PairShare {
                        bytes: Arc::new(AtomicU64::new(0)),
                        bucket: self.limits.max_rate.map(|rate| {
                            Arc::new(Mutex::new(ByteBucket::full(Instant::now(), rate)))
                        }),
                    };
                    for (me, other) in [(sender, receiver), (receiver, sender)] {
                        if let Some(e) = self.conns.get_mut(&me) {
                            e.partner = Some(other);
                            e.pair = Some(share.clone());
                        }
                    }
                }
                RelayOutput::Close { conn, code, reason } => {
                    if let Some(e) = self.conns.get(&conn) {
                        let _ = e.commands.try_send(Command::Close(code, reason));
                    }
                }
                RelayOutput::Abort { conn } => {
                    if let Some(e) = self.conns.get(&conn) {
                        log::debug!("connection {}: dropped after the grace period", conn.0);
                        e.abort.abort();
                    }
                }
            }
        }
        while let Some(event) = self.relay.poll_event() {
            self.log(event);
        }
        self.metrics
            .pairs_waiting
            .set(i64::try_from(self.relay.waiting_count()).unwrap_or(i64::MAX));
        self.metrics
            .pairs_active
            .set(i64::try_from(self.relay.paired_count()).unwrap_or(i64::MAX));
        self.refusals.catch_up(Instant::now());
        let _ = self.timer_wake.try_send(());
    }

    /// Log, at info level and rate-limited, why a connection was refused, timed out or
    /// failed its handshake.
    pub(crate) fn log_refusal(&mut self, conn: ConnId, reason: &str) {
        if !self.refusals.admit(Instant::now()) {
            return;
        }
        match self.conns.get(&conn).and_then(|e| e.addr) {
            Some(addr) => log::info!("connection {} from {addr}: closed: {reason}", conn.0),
            None => log::info!("connection {}: closed: {reason}", conn.0),
        }
    }

    /// Log how many refusals the rate limit held back, if any.
    pub(crate) fn flush_refusals(&mut self) {
        self.refusals.report();
    }

    fn log(&mut self, event: RelayEvent) {
        let bytes = |id: ConnId| {
            self.conns
                .get(&id)
                .map_or(0, |e| e.forwarded.load(Ordering::Relaxed))
        };
        match event {
            RelayEvent::Refused { conn, reason, kind } => {
                self.metrics.refuse(kind.label());
                self.log_refusal(conn, &reason);
            }
            RelayEvent::Paired {
                sender,
                receiver,
                room,
                waited,
            } => {
                self.metrics.pairing_seconds.observe(waited.as_secs_f64());
                log::debug!(
                    "connections {} (sender) and {} (receiver) paired in room {room}",
                    sender.0,
                    receiver.0
                );
            }
            RelayEvent::PairEnded {
                sender,
                receiver,
                lasted,
                room,
                outcome,
            } => {
                self.metrics.pair_ended(outcome.label());
                let (up, down) = (bytes(sender), bytes(receiver));
                // One line per pair, with fields for JSON logs; never the code or its
                // hash, only the salted room tag.
                log::info!(
                    event = "pair_ended",
                    room:% = room,
                    outcome = outcome.label(),
                    duration_s = (lasted.as_secs_f64() * 1000.0).round() / 1000.0,
                    bytes = up + down,
                    bytes_to_receiver = up,
                    bytes_to_sender = down;
                    "pair {}/{} in room {room} ended after {:.1} s: {}, {up} bytes sender to receiver, {down} bytes receiver to sender",
                    sender.0,
                    receiver.0,
                    lasted.as_secs_f64(),
                    outcome.label(),
                );
            }
            other => log::debug!("{other:?}"),
        }
    }

    /// Whether every connection has ended.
    pub(crate) fn is_empty(&self) -> bool {
        self.conns.is_empty()
    }

    /// Stop every connection task (the server is going away).
    pub(crate) fn abort_all(&mut self) {
        for e in self.conns.values() {
            e.abort.abort();
        }
    }
}

/// Lines about refused connections allowed per [`REFUSAL_WINDOW`].
const REFUSAL_LINES: u32 = 5;
/// The window of [`REFUSAL_LINES`].
const REFUSAL_WINDOW: Duration = Duration::from_secs(1);

/// A rate limit for refusal lines: at most [`REFUSAL_LINES`] per [`REFUSAL_WINDOW`]; the
/// rest are counted and reported in one line once the window is over.
#[derive(Debug, Default)]
struct RefusalLog {
    window_start: Option<Instant>,
    lines: u32,
    suppressed: u64,
}

impl RefusalLog {
    /// Whether a line may be logged now.
    fn admit(&mut self, now: Instant) -> bool {
        self.catch_up(now);
        let start = *self.window_start.get_or_insert(now);
        if now.saturating_duration_since(start) >= REFUSAL_WINDOW {
            self.window_start = Some(now);
            self.lines = 0;
        }
        if self.lines < REFUSAL_LINES {
            self.lines += 1;
            true
        } else {
            self.suppressed += 1;
            false
        }
    }

    /// Report what was held back once its window is over.
    fn catch_up(&mut self, now: Instant) {
        let over = self
            .window_start
            .is_some_and(|s| now.saturating_duration_since(s) >= REFUSAL_WINDOW);
        if over {
            self.report();
        }
    }

    fn report(&mut self) {
        if self.suppressed > 0 {
            log::info!(
                "{} more refused or timed-out connections not logged",
                self.suppressed
            );
            self.suppressed = 0;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusal_lines_are_limited_per_window_and_the_rest_counted() {
        let t0 = Instant::now();
        let mut log = RefusalLog::default();
        let admitted = (0..100).filter(|_| log.admit(t0)).count();
        assert_eq!(admitted, REFUSAL_LINES as usize);
        assert_eq!(log.suppressed, 95);
        log.catch_up(t0 + REFUSAL_WINDOW / 2);
        assert_eq!(log.suppressed, 95, "still in the window");
        log.catch_up(t0 + REFUSAL_WINDOW);
        assert_eq!(log.suppressed, 0, "reported");
        assert!(log.admit(t0 + REFUSAL_WINDOW), "a new window");
    }
}
