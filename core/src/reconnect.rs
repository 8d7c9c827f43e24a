//! Automatic reconnect and resume (extension [`EXT_RECONNECT`](crate::wire::EXT_RECONNECT)):
//! when to try again after a lost connection, and how the two sides prove, on the new
//! connection, that they are the ones that began the session.
//!
//! The runtime runs the loop; this module decides. After a session that agreed on the
//! extension ends with a lost connection:
//!
//! ```text
//! let mut retry = Retry::new(policy, seed);
//! match retry.lost(now) {
//!     Decision::RetryAt { at, attempt, of } => { /* tell the user, sleep until `at`,
//!         dial again, run a session with SenderReconnect::Resume / ReceiverReconnect::Resume */ }
//!     Decision::GiveUp => { /* report the lost connection */ }
//! }
//! // Once an attempt proved the peer (`reconnect_status()` is `Verified`): retry.resumed()
//! ```
//!
//! The binding: the sender draws a [`Ticket`] (a session id and a secret) for the first
//! session and sends it in its manifest (sealed when encrypting). Both sides mix it with
//! the code into a [`Binding`] key. On a reconnect the sender's manifest carries a proof
//! over a fresh nonce and the attempt number, and the receiver answers with a proof over
//! the same nonce; each side checks the other's before any file data or resume answer
//! moves. A stranger who joins the room while the two are away knows neither the code
//! nor (when encrypting) the secret.

use std::time::{Duration, Instant};

use hkdf::Hkdf;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::wire::{self, ManifestEntry, ReconnectOffer, Role};

/// How often and how patiently to reconnect.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Attempts after one loss before giving up (0: never reconnect).
    pub max_retries: u32,
    /// The wait before the first attempt; it doubles with each further attempt.
    pub backoff: Duration,
    /// The longest wait between two attempts.
    pub cap: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            max_retries: 5,
            backoff: Duration::from_secs(1),
            cap: Duration::from_secs(30),
        }
    }
}

impl RetryPolicy {
    /// The wait before attempt `attempt` (1-based) without jitter: `backoff · 2^(attempt-1)`,
    /// at most `cap`.
    pub fn delay(&self, attempt: u32) -> Duration {
        let factor = 1u32 << attempt.saturating_sub(1).min(20);
        self.backoff.saturating_mul(factor).min(self.cap)
    }
}

/// What to do after a lost connection or a failed attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Dial again at `at`; this is attempt `attempt` of `of`.
    RetryAt {
        /// When to dial.
        at: Instant,
        /// 1-based.
        attempt: u32,
        /// The most attempts.
        of: u32,
    },
    /// Every attempt is spent (or none was allowed).
    GiveUp,
}

/// The retry counter with exponential backoff and jitter. A value: time comes in as
/// `now`, randomness as the seed.
#[derive(Debug, Clone)]
pub struct Retry {
    policy: RetryPolicy,
    attempt: u32,
    rng: u64,
}

impl Retry {
    /// A counter with no attempt made; `seed` drives the jitter.
    pub fn new(policy: RetryPolicy, seed: u64) -> Retry {
        Retry {
            policy,
            attempt: 0,
            rng: seed,
        }
    }

    /// The connection was lost, or the last attempt failed before it proved the peer.
    /// The wait is the backoff with "equal jitter": between half of it and all of it, so
    /// two sides that lost the same relay do not dial in lockstep.
    pub fn lost(&mut self, now: Instant) -> Decision {
        if self.attempt >= self.policy.max_retries {
            return Decision::GiveUp;
        }
        self.attempt += 1;
        let full = self.policy.delay(self.attempt);
        let half = full / 2;
        let jitter = (full - half).mul_f64(self.next_unit());
        Decision::RetryAt {
            at: now + half + jitter,
            attempt: self.attempt,
            of: self.policy.max_retries,
        }
    }

    /// An attempt reached the peer and proved it: a later loss starts counting anew.
    pub fn resumed(&mut self) {
        self.attempt = 0;
    }

    /// Attempts made since the last loss.
    pub fn attempts(&self) -> u32 {
        self.attempt
    }

    /// SplitMix64, mapped to [0, 1).
    fn next_unit(&mut self) -> f64 {
        self.rng = self.rng.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.rng;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        (z >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// What the sender draws for a session that may reconnect: travels in its first manifest.
#[derive(Clone, PartialEq, Eq)]
pub struct Ticket {
    /// Names the session across reconnects.
    pub session: [u8; 16],
    /// Mixed with the code into the [`Binding`] key.
    pub secret: [u8; 32],
}

impl std::fmt::Debug for Ticket {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ticket")
            .field("session", &wire::hex(&self.session))
            .finish_non_exhaustive()
    }
}

/// The key both sides prove themselves with on a reconnect.
#[derive(Clone, PartialEq, Eq)]
pub struct Binding {
    session: [u8; 16],
    key: [u8; 32],
}

impl std::fmt::Debug for Binding {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Binding")
            .field("session", &wire::hex(&self.session))
            .finish_non_exhaustive()
    }
}

const KEY_LABEL: &[u8] = b"p2p-copy reconnect key v1";

/// HMAC-SHA256(key, parts…). HKDF-Extract with the key as salt is exactly HMAC
/// (RFC 5869, section 2.2), which saves a dependency on the `hmac` crate itself.
fn mac(key: &[u8], parts: &[&[u8]]) -> [u8; 32] {
    let msg: Vec<u8> = parts.concat();
    let (prk, _) = Hkdf::<Sha256>::extract(Some(key), &msg);
    prk.into()
}

impl Binding {
    /// Both sides' key: HMAC-SHA256(secret, label ‖ code). The relay of a plain session
    /// sees the secret, but never the code (only a hash of it).
    pub fn new(ticket: &Ticket, code: &str) -> Binding {
        Binding {
            session: ticket.session,
            key: mac(&ticket.secret, &[KEY_LABEL, code.as_bytes()]),
        }
    }

    /// The proof of `role` for attempt `attempt` over `nonce`.
    fn proof(&self, role: Role, attempt: u32, nonce: &[u8; 16]) -> [u8; 32] {
        let who: &[u8] = match role {
            Role::Sender => b"sender",
            Role::Receiver => b"receiver",
        };
        mac(
            &self.key,
            &[who, &self.session, &attempt.to_be_bytes(), nonce],
        )
    }

    fn session_hex(&self) -> String {
        wire::hex(&self.session)
    }
}

/// The sender's part in the extension, in its configuration.
#[derive(Debug, Clone)]
pub enum SenderReconnect {
    /// The first session: offer the extension with this ticket.
    Offer {
        /// Drawn by the runtime from a secure source.
        ticket: Ticket,
        /// The key the ticket makes with the code.
        binding: Binding,
    },
    /// A reconnect: prove this side with `binding` for `attempt`, over a fresh `nonce`,
    /// and send no file data before the receiver proved itself.
    Resume {
        /// From the first session.
        binding: Binding,
        /// 1, 2, … over the whole transfer (never reused).
        attempt: u32,
        /// Fresh random bytes.
        nonce: [u8; 16],
    },
}

impl SenderReconnect {
    /// The manifest's `reconnect` value.
    pub(crate) fn offer(&self) -> ReconnectOffer {
        match self {
            SenderReconnect::Offer { ticket, .. } => ReconnectOffer {
                session: wire::hex(&ticket.session),
                secret: Some(wire::hex(&ticket.secret)),
                ..ReconnectOffer::default()
            },
            SenderReconnect::Resume {
                binding,
                attempt,
                nonce,
            } => ReconnectOffer {
                session: binding.session_hex(),
                secret: None,
                attempt: *attempt,
                nonce: Some(wire::hex(nonce)),
                proof: Some(wire::hex(&binding.proof(Role::Sender, *attempt, nonce))),
            },
        }
    }

    /// Check the receiver's proof (hex) for a reconnect; the first session has none.
    pub(crate) fn check_answer(&self, proof_hex: &str) -> bool {
        let SenderReconnect::Resume {
            binding,
            attempt,
            nonce,
        } = self
        else {
            return false;
        };
        wire::unhex32(proof_hex)
            .is_some_and(|p| bool::from(p.ct_eq(&binding.proof(Role::Receiver, *attempt, nonce))))
    }
}

/// The receiver's part in the extension, in its configuration.
#[derive(Debug, Clone)]
pub enum ReceiverReconnect {
    /// The first session: accept an offer, binding its ticket to `code`.
    Accept {
        /// The code as the user gave it (for a parallel code, this session's).
        code: String,
    },
    /// A reconnect: accept only a sender that proves itself for the same session and
    /// files.
    Resume(ResumeState),
}

/// What a receiver keeps between the sessions of one transfer.
#[derive(Debug, Clone)]
pub struct ResumeState {
    binding: Binding,
    last_attempt: u32,
    /// Digest of the first session's manifest, once it was complete.
    manifest: Option<[u8; 32]>,
}

impl ResumeState {
    /// Hold the transfer to the manifest of `entries`: the first session's is kept, and
    /// a reconnect's must be the same.
    pub(crate) fn hold_to(&mut self, entries: &[ManifestEntry]) -> Result<(), String> {
        let digest = manifest_digest(entries);
        match self.manifest {
            None => self.manifest = Some(digest),
            Some(first) if first == digest => {}
            Some(_) => {
                return Err("the reconnected sender lists other files than at the start of the transfer; refused".to_owned())
            }
        }
        Ok(())
    }
}

/// Why a reconnecting sender is refused.
pub(crate) const NOT_THE_SENDER: &str =
    "a sender that joined after the connection was lost could not prove it is the one that began the transfer; refused (nothing was read or written)";

/// Digest of a manifest's paths and sizes, to hold a reconnecting sender to the same files.
pub(crate) fn manifest_digest(entries: &[ManifestEntry]) -> [u8; 32] {
    let mut h = Sha256::new();
    for e in entries {
        h.update((e.path.len() as u64).to_be_bytes());
        h.update(e.path.as_bytes());
        h.update(e.size.to_be_bytes());
    }
    h.finalize().into()
}

/// An accepted offer: the state for the next attempt and, on a reconnect, the proof
/// the receiver answers with.
pub(crate) type Accepted = (ResumeState, Option<[u8; 32]>);

impl ReceiverReconnect {
    /// Read the sender's offer. `Ok(Some(state, proof))`: accept, with the state for the
    /// next attempt and, on a reconnect, the proof to answer with; `Ok(None)`: the
    /// offer is absent or unusable in a first session (decline quietly).
    ///
    /// # Errors
    /// On a reconnect, any offer that does not prove the sender, or a manifest other
    /// than the first session's: [`NOT_THE_SENDER`].
    #[cfg(test)]
    pub(crate) fn take_offer(
        &self,
        offer: Option<&ReconnectOffer>,
        entries: &[ManifestEntry],
    ) -> Result<Option<Accepted>, String> {
        let Some((mut state, proof)) = self.check_offer(offer)? else {
            return Ok(None);
        };
        state.hold_to(entries)?;
        Ok(Some((state, proof)))
    }

    /// The part of [`take_offer`](Self::take_offer) that needs no entries, for a
    /// manifest that comes in parts: the first session's state (its manifest still to
    /// be held with [`ResumeState::hold_to`]), or on a reconnect the sender's proof
    /// checked and this side's answer.
    pub(crate) fn check_offer(
        &self,
        offer: Option<&ReconnectOffer>,
    ) -> Result<Option<Accepted>, String> {
        match self {
            ReceiverReconnect::Accept { code } => {
                let Some(offer) = offer else { return Ok(None) };
                let session =
                    wire::unhex(&offer.session).and_then(|s| <[u8; 16]>::try_from(s).ok());
                let secret = offer.secret.as_deref().and_then(wire::unhex32);
                let (Some(session), Some(secret)) = (session, secret) else {
                    return Ok(None);
                };
                let binding = Binding::new(&Ticket { session, secret }, code);
                let state = ResumeState {
                    binding,
                    last_attempt: 0,
                    manifest: None,
                };
                Ok(Some((state, None)))
            }
            ReceiverReconnect::Resume(state) => {
                let offer = offer.ok_or(NOT_THE_SENDER)?;
                let nonce = offer
                    .nonce
                    .as_deref()
                    .and_then(wire::unhex)
                    .and_then(|n| <[u8; 16]>::try_from(n).ok())
                    .ok_or(NOT_THE_SENDER)?;
                let proof = offer
                    .proof
                    .as_deref()
                    .and_then(wire::unhex32)
                    .ok_or(NOT_THE_SENDER)?;
                let b = &state.binding;
                let expected = b.proof(Role::Sender, offer.attempt, &nonce);
                let proved = offer.session == b.session_hex()
                    && offer.attempt > state.last_attempt
                    && bool::from(proof.ct_eq(&expected));
                if !proved {
                    return Err(NOT_THE_SENDER.to_owned());
                }
                let answer = b.proof(Role::Receiver, offer.attempt, &nonce);
                let next = ResumeState {
                    last_attempt: offer.attempt,
                    ..state.clone()
                };
                Ok(Some((next, Some(answer))))
            }
        }
    }
}

/// Where a session stands with the extension, for the runtime's decision after it ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReconnectStatus {
    /// Not offered or not configured, or the session ended before the manifest.
    Off,
    /// The manifest went (sender) or came (receiver) without an agreement: the peer
    /// cannot reconnect (a p2p-copy 0.1.x peer), so a lost connection needs the user
    /// to run both sides again with `--resume`.
    Unsupported,
    /// Both sides agreed in the first session: a lost connection may be resumed.
    Agreed,
    /// A reconnect: the peer proved it is the one that began the transfer.
    Verified,
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn ticket() -> Ticket {
        Ticket {
            session: [7; 16],
            secret: [9; 32],
        }
    }

    fn entries() -> Vec<ManifestEntry> {
        vec![ManifestEntry {
            path: "a.bin".into(),
            size: 10,
            kind: None,
        }]
    }

    fn agreed() -> ResumeState {
        let r = ReceiverReconnect::Accept {
            code: "code".into(),
        };
        let offer = SenderReconnect::Offer {
            ticket: ticket(),
            binding: Binding::new(&ticket(), "code"),
        }
        .offer();
        r.take_offer(Some(&offer), &entries()).unwrap().unwrap().0
    }

    fn resume(code: &str, attempt: u32) -> SenderReconnect {
        SenderReconnect::Resume {
            binding: Binding::new(&ticket(), code),
            attempt,
            nonce: [attempt as u8; 16],
        }
    }

    #[test]
    fn backoff_doubles_up_to_the_cap_then_gives_up() {
        let policy = RetryPolicy::default();
        let now = Instant::now();
        let mut r = Retry::new(policy, 1);
        for (attempt, full) in [(1, 1), (2, 2), (3, 4), (4, 8), (5, 16)] {
            let Decision::RetryAt { at, attempt: a, of } = r.lost(now) else {
                panic!("gave up early at {attempt}");
            };
            assert_eq!((a, of), (attempt, 5));
            let wait = at - now;
            assert!(wait >= Duration::from_secs(full) / 2 && wait <= Duration::from_secs(full));
        }
        assert_eq!(r.lost(now), Decision::GiveUp);
        assert_eq!(policy.delay(9), Duration::from_secs(30));
    }

    #[test]
    fn a_proven_reconnect_resets_the_count() {
        let policy = RetryPolicy {
            max_retries: 2,
            ..RetryPolicy::default()
        };
        let now = Instant::now();
        let mut r = Retry::new(policy, 3);
        assert!(matches!(r.lost(now), Decision::RetryAt { attempt: 1, .. }));
        assert!(matches!(r.lost(now), Decision::RetryAt { attempt: 2, .. }));
        r.resumed();
        assert!(matches!(r.lost(now), Decision::RetryAt { attempt: 1, .. }));
        let none = RetryPolicy {
            max_retries: 0,
            ..policy
        };
        assert_eq!(Retry::new(none, 0).lost(now), Decision::GiveUp);
    }

    #[test]
    fn both_sides_prove_themselves_on_a_reconnect() {
        let state = agreed();
        let sender = resume("code", 1);
        let (next, answer) = ReceiverReconnect::Resume(state)
            .take_offer(Some(&sender.offer()), &entries())
            .unwrap()
            .unwrap();
        assert!(sender.check_answer(&wire::hex(&answer.unwrap())));
        assert!(!sender.check_answer(&wire::hex(&[0; 32])));
        // The same attempt again (a replay) is refused.
        let again = ReceiverReconnect::Resume(next).take_offer(Some(&sender.offer()), &entries());
        assert_eq!(again.unwrap_err(), NOT_THE_SENDER);
    }

    #[test]
    fn a_stranger_or_other_files_are_refused() {
        let r = ReceiverReconnect::Resume(agreed());
        // Knows the secret (a plain session's relay) but not the code.
        let stranger = resume("other code", 1).offer();
        assert_eq!(
            r.take_offer(Some(&stranger), &entries()).unwrap_err(),
            NOT_THE_SENDER
        );
        // A first-session offer (a secret, no proof) on a reconnect.
        let fresh = SenderReconnect::Offer {
            ticket: ticket(),
            binding: Binding::new(&ticket(), "code"),
        }
        .offer();
        assert!(r.take_offer(Some(&fresh), &entries()).is_err());
        assert!(r.take_offer(None, &entries()).is_err());
        let other = vec![ManifestEntry {
            path: "a.bin".into(),
            size: 11,
            kind: None,
        }];
        let err = r
            .take_offer(Some(&resume("code", 1).offer()), &other)
            .unwrap_err();
        assert!(err.contains("other files"), "{err}");
    }

    proptest! {
        #[test]
        fn waits_stay_within_the_backoff_band(
            seed in any::<u64>(),
            max in 0u32..12,
            base_ms in 1u64..5_000,
        ) {
            let policy = RetryPolicy {
                max_retries: max,
                backoff: Duration::from_millis(base_ms),
                cap: Duration::from_secs(30),
            };
            let now = Instant::now();
            let mut r = Retry::new(policy, seed);
            let mut tries = 0;
            while let Decision::RetryAt { at, attempt, of } = r.lost(now) {
                tries += 1;
                prop_assert_eq!(attempt, tries);
                prop_assert_eq!(of, max);
                let full = policy.delay(attempt);
                prop_assert!(at - now >= full / 2 && at - now <= full);
                prop_assert!(full <= policy.cap);
            }
            prop_assert_eq!(tries, max);
        }

        #[test]
        fn only_the_right_proof_passes(bits in any::<[u8; 32]>()) {
            let sender = resume("code", 3);
            let (_, answer) = ReceiverReconnect::Resume(agreed())
                .take_offer(Some(&sender.offer()), &entries())
                .unwrap()
                .unwrap();
            let answer = answer.unwrap();
            prop_assert_eq!(sender.check_answer(&wire::hex(&bits)), bits == answer);
        }
    }
}
