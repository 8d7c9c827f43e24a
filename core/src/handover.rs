//! The session's stream of messages across a change of path (extension
//! [`EXT_DIRECT`]), as sans-IO bookkeeping that the runtime runs beside the session.
//!
//! After the switch (see [`crate::direct`]) the sender's session messages travel on the
//! direct path. The sender keeps every one of them until the receiver acknowledges it
//! with `direct_ack` (on the direct path); the receiver counts what it took. When the
//! direct path fails, the sender says `direct_lost` on the relay and sends nothing more;
//! the receiver stops reading the direct path and answers `direct_resume` with its
//! count; the sender sends again, on the relay, every kept message past that count, and
//! then the rest of the session. Nothing is lost and nothing arrives twice, and no file
//! starts over: the session itself never sees the change.
//!
//! What the sender keeps is bounded ([`SenderHandover::can_send`] says when to wait for
//! acknowledgements), so a receiver that stops acknowledging holds the sender back as a
//! slow connection would.
//!
//! [`EXT_DIRECT`]: crate::wire::EXT_DIRECT

use std::collections::VecDeque;

use crate::direct::ATTEMPT;
use crate::wire::{Control, WireMessage};
use crate::Error;

/// Most bytes of unacknowledged messages the sender keeps before it waits.
pub const RETAIN_BYTES: usize = 48 * 1024 * 1024;
/// Most unacknowledged messages the sender keeps before it waits.
pub const RETAIN_MESSAGES: usize = 4096;
/// The receiver acknowledges after this many messages...
pub const ACK_MESSAGES: u64 = 64;
/// ...or this many bytes since its last acknowledgement, whichever comes first. Both are
/// well below the sender's bounds, so the sender never waits on a receiver that reads.
pub const ACK_BYTES: usize = 4 * 1024 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SenderState {
    Direct,
    /// `direct_lost` was sent; waiting for `direct_resume`.
    Lost,
    /// Back on the relay for the rest of the session.
    Relay,
}

/// The sender's side (see the module docs).
#[derive(Debug)]
pub struct SenderHandover {
    state: SenderState,
    /// Session messages sent on the direct path.
    sent: u64,
    /// Of those, acknowledged by the receiver.
    acked: u64,
    /// The unacknowledged ones, oldest first: messages `acked..sent`.
    kept: VecDeque<WireMessage>,
    kept_bytes: usize,
}

impl Default for SenderHandover {
    fn default() -> Self {
        Self::new()
    }
}

impl SenderHandover {
    /// Start on the direct path, just after the sender's `direct_ready`.
    pub fn new() -> SenderHandover {
        SenderHandover {
            state: SenderState::Direct,
            sent: 0,
            acked: 0,
            kept: VecDeque::new(),
            kept_bytes: 0,
        }
    }

    /// True while session messages go on the direct path.
    pub fn on_direct(&self) -> bool {
        self.state == SenderState::Direct
    }

    /// True between `direct_lost` and the receiver's answer: send nothing.
    pub fn waiting(&self) -> bool {
        self.state == SenderState::Lost
    }

    /// Session messages sent on the direct path so far.
    pub fn sent(&self) -> u64 {
        self.sent
    }

    /// Whether another session message may go on the direct path now: false while the
    /// unacknowledged ones reach the bounds (an empty store always takes one).
    pub fn can_send(&self) -> bool {
        self.on_direct()
            && (self.kept.is_empty()
                || (self.kept_bytes < RETAIN_BYTES && self.kept.len() < RETAIN_MESSAGES))
    }

    /// A session message went on the direct path: keep it until acknowledged.
    pub fn on_sent(&mut self, msg: &WireMessage) {
        debug_assert!(self.on_direct());
        self.sent += 1;
        self.kept_bytes += msg.len();
        self.kept.push_back(msg.clone());
    }

    /// The receiver's `direct_ack`.
    ///
    /// # Errors
    /// [`Error::Peer`] for a count that goes back or past what was sent.
    pub fn on_ack(&mut self, received: u64) -> Result<(), Error> {
        self.check_count(received, "direct_ack")?;
        self.forget_until(received);
        Ok(())
    }

    /// The direct path failed: the message to send on the relay. Only the first call
    /// after the switch gives one.
    pub fn lost(&mut self) -> Option<Control> {
        if self.state != SenderState::Direct {
            return None;
        }
        self.state = SenderState::Lost;
        Some(Control::DirectLost { attempt: ATTEMPT })
    }

    /// The receiver's `direct_resume`: the messages to send again on the relay, in
    /// order, before anything else. The session continues on the relay.
    ///
    /// # Errors
    /// [`Error::Peer`] when no `direct_lost` was sent, or for a count that goes back or
    /// past what was sent.
    pub fn on_resume(&mut self, attempt: u32, received: u64) -> Result<Vec<WireMessage>, Error> {
        if self.state != SenderState::Lost {
            return Err(Error::peer("direct_resume without direct_lost"));
        }
        if attempt != ATTEMPT {
            return Err(Error::peer(format!(
                "direct_resume for attempt {attempt}, expected {ATTEMPT}"
            )));
        }
        self.check_count(received, "direct_resume")?;
        self.forget_until(received);
        self.state = SenderState::Relay;
        self.kept_bytes = 0;
        Ok(std::mem::take(&mut self.kept).into())
    }

    fn check_count(&self, received: u64, what: &str) -> Result<(), Error> {
        if received < self.acked || received > self.sent {
            return Err(Error::peer(format!(
                "{what} counts {received} messages; {} to {} would be possible",
                self.acked, self.sent
            )));
        }
        Ok(())
    }

    fn forget_until(&mut self, received: u64) {
        while self.acked < received {
            if let Some(m) = self.kept.pop_front() {
                self.kept_bytes -= m.len();
            }
            self.acked += 1;
        }
    }
}

/// The receiver's side (see the module docs).
#[derive(Debug, Default)]
pub struct ReceiverHandover {
    /// Session messages taken from the direct path.
    received: u64,
    /// The count in the last acknowledgement, and the bytes since.
    acked: u64,
    bytes_since_ack: usize,
    /// `direct_lost` came: the rest comes on the relay.
    on_relay: bool,
}

impl ReceiverHandover {
    /// Start on the direct path, when the sender's `direct_ready` arrived.
    pub fn new() -> ReceiverHandover {
        ReceiverHandover::default()
    }

    /// True while session messages come from the direct path.
    pub fn on_direct(&self) -> bool {
        !self.on_relay
    }

    /// Session messages taken from the direct path so far.
    pub fn received(&self) -> u64 {
        self.received
    }

    /// A session message of `len` bytes came from the direct path and was taken: the
    /// acknowledgement to send on the direct path, when one is due.
    pub fn on_received(&mut self, len: usize) -> Option<Control> {
        self.received += 1;
        self.bytes_since_ack += len;
        if self.received - self.acked >= ACK_MESSAGES || self.bytes_since_ack >= ACK_BYTES {
            self.acked = self.received;
            self.bytes_since_ack = 0;
            return Some(Control::DirectAck {
                received: self.received,
            });
        }
        None
    }

    /// The sender's `direct_lost`: stop reading the direct path; the answer to send on
    /// the relay.
    ///
    /// # Errors
    /// [`Error::Peer`] for a second `direct_lost` or another attempt.
    pub fn on_lost(&mut self, attempt: u32) -> Result<Control, Error> {
        if self.on_relay {
            return Err(Error::peer("direct_lost sent twice"));
        }
        if attempt != ATTEMPT {
            return Err(Error::peer(format!(
                "direct_lost for attempt {attempt}, expected {ATTEMPT}"
            )));
        }
        self.on_relay = true;
        Ok(Control::DirectResume {
            attempt: ATTEMPT,
            received: self.received,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fuzz::handover_body::{id, msg};
    use proptest::prelude::*;

    #[test]
    fn the_sender_waits_when_unacknowledged_messages_reach_the_bound() {
        let mut s = SenderHandover::new();
        let big = msg(0, 1024 * 1024);
        let mut n = 0;
        while s.can_send() {
            s.on_sent(&big);
            n += 1;
        }
        assert_eq!(n, RETAIN_BYTES / (1024 * 1024));
        s.on_ack(1).unwrap();
        assert!(s.can_send());
    }

    #[test]
    fn counts_that_go_back_or_past_what_was_sent_are_refused() {
        let mut s = SenderHandover::new();
        for i in 0..5 {
            s.on_sent(&msg(i, 10));
        }
        s.on_ack(3).unwrap();
        assert!(matches!(s.on_ack(2), Err(Error::Peer { .. })));
        assert!(matches!(s.on_ack(6), Err(Error::Peer { .. })));
        assert!(
            matches!(s.on_resume(1, 4), Err(Error::Peer { .. })),
            "no direct_lost yet"
        );
        assert_eq!(s.lost(), Some(Control::DirectLost { attempt: 1 }));
        assert_eq!(s.lost(), None, "one direct_lost only");
        assert!(matches!(s.on_resume(2, 4), Err(Error::Peer { .. })));
        assert!(matches!(s.on_resume(1, 2), Err(Error::Peer { .. })));
        let again = s.on_resume(1, 4).unwrap();
        assert_eq!(again.iter().map(id).collect::<Vec<_>>(), vec![4]);
        assert!(!s.on_direct() && !s.waiting());
    }

    #[test]
    fn the_receiver_acknowledges_by_count_and_by_bytes_and_answers_one_loss() {
        let mut r = ReceiverHandover::new();
        let acks: Vec<_> = (0..ACK_MESSAGES * 2)
            .filter_map(|_| r.on_received(10))
            .collect();
        assert_eq!(
            acks,
            vec![
                Control::DirectAck {
                    received: ACK_MESSAGES
                },
                Control::DirectAck {
                    received: 2 * ACK_MESSAGES
                }
            ]
        );
        assert_eq!(
            r.on_received(ACK_BYTES),
            Some(Control::DirectAck {
                received: 2 * ACK_MESSAGES + 1
            })
        );
        assert_eq!(
            r.on_lost(1).unwrap(),
            Control::DirectResume {
                attempt: 1,
                received: 2 * ACK_MESSAGES + 1
            }
        );
        assert!(matches!(r.on_lost(1), Err(Error::Peer { .. })));
    }

    proptest! {
        /// Whatever the direct path delivered before it failed, and whichever
        /// acknowledgements reached the sender, the receiver gets every message once,
        /// in order.
        #[test]
        fn every_message_arrives_once_in_order_across_a_failure(
            total in 1u64..300,
            sizes in proptest::collection::vec(1usize..3_000_000, 300),
            cut in 0u64..300,
            delivered_share in 0.0f64..=1.0,
        ) {
            let mut s = SenderHandover::new();
            let mut r = ReceiverHandover::new();
            let mut on_wire: VecDeque<WireMessage> = VecDeque::new();
            let mut got: Vec<u64> = Vec::new();
            let cut = cut.min(total);
            let mut next = 0u64;
            // Before the cut: send while allowed, deliver some, pass acks back.
            while next < cut {
                if s.can_send() {
                    let m = msg(next, sizes[next as usize] % 1_500_000);
                    s.on_sent(&m);
                    on_wire.push_back(m);
                    next += 1;
                } else {
                    let m = on_wire.pop_front().expect("blocked with nothing in flight");
                    got.push(id(&m));
                    if let Some(Control::DirectAck { received }) = r.on_received(m.len()) {
                        s.on_ack(received).unwrap();
                    }
                }
            }
            // The cut: part of what is in flight arrives, the rest is lost.
            let arrive = (on_wire.len() as f64 * delivered_share) as usize;
            for m in on_wire.drain(..).take(arrive) {
                got.push(id(&m));
                r.on_received(m.len());
            }
            let lost = s.lost().unwrap();
            prop_assert_eq!(lost, Control::DirectLost { attempt: 1 });
            let Control::DirectResume { attempt, received } = r.on_lost(1).unwrap() else {
                unreachable!()
            };
            for m in s.on_resume(attempt, received).unwrap() {
                got.push(id(&m));
            }
            got.extend(next..total);
            prop_assert_eq!(got, (0..total).collect::<Vec<_>>());
        }
    }
}
