//! The runtime's side of automatic reconnect: after a session fails, ask the core's
//! [`Retry`] whether and when to dial again, tell the user, and wait.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use p2p_copy_core::reconnect::{Binding, Decision, ReconnectStatus, Retry, RetryPolicy, Ticket};
use p2p_copy_core::{Error, Event};

use crate::drive::EventSink;
use crate::rt::Rt;
use crate::{ClientConfig, SessionEvent, TransferError};

/// How long a reconnecting side waits at the relay for its peer to come back.
const PEER_RETURN_WAIT: Duration = Duration::from_secs(60);

/// `msg`, then `why`, then how to continue unless `msg` says so already.
fn with_rerun(msg: &str, why: &str) -> String {
    if msg.contains("--resume") {
        format!("{msg}; {why}")
    } else {
        format!("{msg}; {why}: run both sides again, the sender with --resume")
    }
}

/// Random bytes from the operating system.
pub(crate) fn random<const N: usize>() -> Result<[u8; N], TransferError> {
    let mut b = [0u8; N];
    getrandom::getrandom(&mut b).map_err(|e| {
        TransferError::Session(Error::Config(format!(
            "the operating system gave no random bytes: {e}"
        )))
    })?;
    Ok(b)
}

/// A fresh ticket for a sender's first session, and the binding it makes with the code.
pub(crate) fn ticket(code: &str) -> Result<(Ticket, Binding), TransferError> {
    let ticket = Ticket {
        session: random()?,
        secret: random()?,
    };
    let binding = Binding::new(&ticket, code);
    Ok((ticket, binding))
}

/// The attempts of one session of a transfer.
pub(crate) struct Attempts<R: Rt> {
    rt: R,
    retry: Retry,
    policy: RetryPolicy,
    session: usize,
    events: EventSink,
    /// File data sent or verified over every attempt.
    moved: Arc<AtomicU64>,
    /// The first loss of the current series, which the final error repeats.
    first_loss: Option<String>,
    /// Attempts made so far (each reconnect gets its own number in the proofs).
    made: u32,
}

impl<R: Rt> Attempts<R> {
    /// For session `session`; counts the file data its events report.
    pub(crate) fn new(
        rt: &R,
        cfg: &ClientConfig,
        session: usize,
        events: EventSink,
    ) -> Result<Self, TransferError> {
        Ok(Attempts {
            rt: rt.clone(),
            retry: Retry::new(cfg.reconnect, u64::from_le_bytes(random()?)),
            policy: cfg.reconnect,
            session,
            events,
            moved: Arc::new(AtomicU64::new(0)),
            first_loss: None,
            made: 0,
        })
    }

    /// Whether this side offers or accepts the extension at all.
    pub(crate) fn enabled(&self) -> bool {
        self.policy.max_retries > 0
    }

    /// The number of the next attempt (1, 2, … after the first session).
    pub(crate) fn number(&self) -> u32 {
        self.made
    }

    /// The configuration for the next attempt: a reconnect waits for its peer only so
    /// long.
    pub(crate) fn config(&self, cfg: &ClientConfig) -> ClientConfig {
        let mut c = cfg.clone();
        if self.made > 0 {
            c.pair_timeout = c.pair_timeout.min(PEER_RETURN_WAIT);
        }
        c
    }

    /// The event sink for an attempt: it counts the file data moved, over all attempts.
    pub(crate) fn sink(&self) -> EventSink {
        let inner = self.events.clone();
        let moved = self.moved.clone();
        Arc::new(Mutex::new(move |ev: SessionEvent| {
            if let Event::Progress { delta, .. } = ev.event {
                moved.fetch_add(delta, Ordering::Relaxed);
            }
            let mut sink = inner.lock().unwrap_or_else(|p| p.into_inner());
            (sink)(ev)
        }))
    }

    /// File data moved over every attempt, for the summary.
    pub(crate) fn moved(&self) -> u64 {
        self.moved.load(Ordering::Relaxed)
    }

    /// An attempt failed with `e`, its session standing at `status`: wait for the next
    /// attempt, or say why there is none.
    ///
    /// # Errors
    /// The error to report: `e` itself when it is not a lost connection (or the peer
    /// cannot reconnect), a lost connection once every attempt is spent.
    pub(crate) async fn after_failure(
        &mut self,
        e: TransferError,
        status: ReconnectStatus,
    ) -> Result<(), TransferError> {
        let lost = matches!(e, TransferError::Session(Error::ConnectionLost(_)));
        let reconnecting = self.made > 0;
        let retry = match status {
            ReconnectStatus::Agreed | ReconnectStatus::Verified => {
                if status == ReconnectStatus::Verified || !reconnecting {
                    self.retry.resumed();
                    self.first_loss = None;
                }
                // A peer gone silent mid-transfer (--idle-timeout) is a dead link too.
                lost || matches!(e, TransferError::Session(Error::Timeout(_)))
            }
            ReconnectStatus::Unsupported if lost && !reconnecting => {
                return Err(TransferError::Session(Error::ConnectionLost(with_rerun(
                    &strip_lost(&e),
                    "the other side did not agree to reconnect by itself (p2p-copy 0.1.x cannot)",
                ))));
            }
            // A reconnect that has not reached its proven peer yet: the relay may still
            // be down or busy with the old pair, or a stranger came first (in a room of a
            // code like `7-guitar-rocket` its PAKE fails, or it holds the room).
            _ if reconnecting => match &e {
                TransferError::Session(Error::Timeout(_)) => {
                    return Err(self.give_up(&format!(
                        "the other side did not come back within {} s",
                        self.config_wait()
                    )));
                }
                TransferError::Connect(_)
                | TransferError::Session(
                    Error::ConnectionLost(_)
                    | Error::Peer { .. }
                    | Error::WrongCode(_)
                    | Error::RoomInUse(_),
                ) => true,
                _ => false,
            },
            _ => false,
        };
        if !retry {
            return Err(e);
        }
        let why = strip_lost(&e);
        self.first_loss.get_or_insert_with(|| why.clone());
        let now = Instant::now();
        match self.retry.lost(now) {
            Decision::RetryAt { at, attempt, of } => {
                log::debug!(
                    "session {}: reconnect {attempt}/{of} after: {why}",
                    self.session
                );
                let ev = Event::Reconnecting {
                    attempt,
                    of,
                    after: at.saturating_duration_since(now),
                    reason: why,
                };
                {
                    let mut sink = self.events.lock().unwrap_or_else(|p| p.into_inner());
                    (sink)(SessionEvent {
                        session: self.session,
                        event: ev,
                    });
                }
                self.rt.sleep_until(at).await;
                self.made += 1;
                Ok(())
            }
            Decision::GiveUp => Err(self.give_up(&why)),
        }
    }

    fn config_wait(&self) -> u64 {
        PEER_RETURN_WAIT.as_secs()
    }

    fn give_up(&self, last: &str) -> TransferError {
        let first = self.first_loss.as_deref().unwrap_or(last);
        let tries = self.retry.attempts();
        let last = if last == first {
            String::new()
        } else {
            format!(" (last: {last})")
        };
        let noun = if tries == 1 {
            "reconnect"
        } else {
            "reconnects"
        };
        TransferError::Session(Error::ConnectionLost(with_rerun(
            first,
            &format!("gave up after {tries} {noun}{last}, partial files stay"),
        )))
    }
}

/// The reason of an error without its "connection lost: " prefix.
pub(crate) fn strip_lost(e: &TransferError) -> String {
    match e {
        TransferError::Session(Error::ConnectionLost(why)) => why.clone(),
        other => other.to_string(),
    }
}
