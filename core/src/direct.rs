//! Candidate exchange and path choice for a direct connection between two peers of this
//! project (extension [`EXT_DIRECT`]), as a sans-IO state machine that the runtime runs
//! beside the session.
//!
//! Both sides send their candidate addresses and their QUIC certificate's fingerprint
//! over the relay (sealed under the session key when encrypting), probe the other's
//! candidates, and agree on a switch with `direct_ready`: the receiver declares it once
//! it holds a verified path, the sender answers with its own `direct_ready` as the last
//! message it sends on the relay, and the session continues on the direct path from the
//! next message on. Either side that runs out of time says `direct_failed`, and the
//! session stays on the relay. The sender decides, so the two sides never disagree on
//! where the session's next message travels.
//!
//! The machine never asks to probe an address that the peer did not send in an
//! authentic candidate list (with encryption: one that decrypted), never switches to a
//! path whose certificate differs from the fingerprint the peer sent, and gives up at a
//! fixed deadline. The runtime connects, verifies fingerprints and moves the data; the
//! machine only says what to do.
//!
//! [`EXT_DIRECT`]: crate::wire::EXT_DIRECT

use std::collections::{HashMap, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

use crate::crypto::Cipher;
use crate::wire::{self, CandidateEntry, CandidateKind, CandidateList, Control, Role};
use crate::Error;

/// Most candidates a side sends or accepts in one list. A longer list from the peer is
/// a protocol violation; a longer local list is cut to this length.
pub const MAX_CANDIDATES: usize = 16;
/// The attempt this version runs. Other values are refused; the number is part of the
/// sealing nonce so that a later attempt would never reuse one.
pub const ATTEMPT: u32 = 1;
/// Longest candidate address text accepted (`[` IPv6 with scope `]:port` fits).
const MAX_ADDR_TEXT: usize = 64;
/// Longest `why` of a peer's `direct_failed` shown to the user.
const MAX_WHY: usize = 64;

/// Whether and how hard a side tries to leave the relay.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DirectMode {
    /// Offer and accept the extension; stay on the relay when no direct path comes up.
    #[default]
    Auto,
    /// Never offer or accept the extension: every byte goes through the relay.
    RelayOnly,
    /// Like [`DirectMode::Auto`], but giving up is fatal (see [`Action::GiveUp`]).
    DirectOnly,
}

/// Settings of a [`DirectPath`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirectConfig {
    /// Whether to try at all, and whether failing to is fatal.
    pub mode: DirectMode,
    /// How long after [`DirectPath::new`] the attempt may run before it is given up.
    pub attempt_timeout: Duration,
    /// The relay's own addresses (its listener, its STUN ports): a peer candidate equal
    /// to one of them is ignored, so the peer cannot aim our probes at the relay.
    pub relay_addrs: Vec<SocketAddr>,
    /// Accept loopback candidates (127.0.0.0/8, `::1`). Off by default: a loopback
    /// address names the prober's own machine, not the peer's; tests on one machine
    /// turn it on.
    pub allow_loopback: bool,
    /// Sender: how long after its candidate list went out ([`DirectPath::new`]) it
    /// waits before its first probes. The receiver opens its NAT towards our candidates
    /// when our list reaches it, through the relay; a probe that reaches the receiver's
    /// NAT before that is dropped there and costs the handshake a resend. About one
    /// round trip to the relay covers it. Peer candidates that arrive later than this
    /// are probed at once; zero probes at once always. The receiver ignores it.
    pub dial_hold: Duration,
}

impl Default for DirectConfig {
    fn default() -> Self {
        DirectConfig {
            mode: DirectMode::Auto,
            attempt_timeout: Duration::from_secs(5),
            relay_addrs: Vec::new(),
            allow_loopback: false,
            dial_hold: Duration::ZERO,
        }
    }
}

/// What the peer said to the offer of a direct connection (see
/// [`Sender::take_direct_start`](crate::sender::Sender::take_direct_start)).
#[derive(Clone)]
pub enum DirectAnswer {
    /// Both sides run the attempt; with the session's cipher and nonce seed S when
    /// encrypting (they seal the candidates).
    Agreed(Option<(Cipher, [u8; 32])>),
    /// The peer does not take part (it runs `--relay-only`, or the sender offered no
    /// direct connection): the session stays on the relay.
    Declined,
}

impl std::fmt::Debug for DirectAnswer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DirectAnswer::Agreed(s) => write!(f, "Agreed(encrypted: {})", s.is_some()),
            DirectAnswer::Declined => f.write_str("Declined"),
        }
    }
}

/// Whether a sender with this configuration offers [`wire::EXT_DIRECT`] in its manifest.
pub fn offers(config: &DirectConfig) -> bool {
    config.mode != DirectMode::RelayOnly
}

/// Whether a receiver with this configuration accepts [`wire::EXT_DIRECT`] when the
/// manifest offers `offered`.
pub fn accepts(config: &DirectConfig, offered: &[String]) -> bool {
    offers(config) && offered.iter().any(|e| e == wire::EXT_DIRECT)
}

/// Whether `msg` belongs to the direct-path machine rather than to the session, for the
/// runtime that reads both from one relay connection.
pub fn is_direct_message(msg: &Control) -> bool {
    matches!(
        msg,
        Control::Candidates(_)
            | Control::EncCandidates { .. }
            | Control::DirectReady { .. }
            | Control::DirectFailed { .. }
    )
}

/// One of our own addresses, as the runtime gathered it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Candidate {
    /// The address.
    pub addr: SocketAddr,
    /// How it was learned.
    pub kind: CandidateKind,
}

/// What the runtime should do next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Try a verified QUIC connection with this peer candidate, and report what it gave
    /// with [`DirectPath::handle_probe_result`].
    Probe {
        /// The peer's candidate address.
        addr: SocketAddr,
    },
    /// Move the session to the direct path with the peer at `addr`, at the next message
    /// boundary. Sender: every message after the `direct_ready` just queued (send it
    /// first) goes on the direct path. Receiver: every session message after the
    /// sender's `direct_ready` comes from the direct path.
    Switch {
        /// The peer's address on the verified path.
        addr: SocketAddr,
    },
    /// No direct path: the session stays on the relay; close any direct connection.
    GiveUp {
        /// Why, for the user.
        reason: String,
        /// [`DirectMode::DirectOnly`]: the caller must fail the session with `reason`.
        fatal: bool,
    },
}

/// Something worth logging (`-v`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DirectEvent {
    /// The peer's candidate list arrived.
    CandidatesReceived {
        /// The candidates that will be probed.
        usable: Vec<SocketAddr>,
        /// Candidates left out (address text and why).
        ignored: Vec<(String, String)>,
    },
    /// A probe reached the peer with the exchanged fingerprint.
    ProbeVerified {
        /// The candidate.
        addr: SocketAddr,
    },
    /// A probe failed.
    ProbeFailed {
        /// The candidate.
        addr: SocketAddr,
        /// What the runtime reported.
        reason: String,
    },
    /// A probe reached someone with another certificate: that path is never used.
    ProbeRefused {
        /// The candidate.
        addr: SocketAddr,
    },
    /// The session moves to the direct path.
    Switched {
        /// The peer's address.
        addr: SocketAddr,
    },
    /// The attempt was given up.
    GaveUp {
        /// Why.
        reason: String,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Probe {
    Pending,
    Verified,
    Failed,
    Refused,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Outcome {
    Switched(SocketAddr),
    GaveUp,
}

/// The candidate exchange and path choice of one side (see the module docs).
pub struct DirectPath {
    config: DirectConfig,
    role: Role,
    sealing: Option<(Cipher, [u8; 32])>,
    deadline: Instant,
    /// Sender: when its probes may start ([`DirectConfig::dial_hold`] after the start).
    dial_at: Instant,
    /// Sender: peer candidates that arrived before `dial_at`, probed at `dial_at`.
    held: Vec<SocketAddr>,
    /// The peer's fingerprint, once its candidate list arrived.
    peer_fingerprint: Option<[u8; 32]>,
    /// Probes asked for, by peer candidate.
    probes: HashMap<SocketAddr, Probe>,
    /// How the peer learned each usable candidate.
    peer_kinds: HashMap<SocketAddr, CandidateKind>,
    /// The first verified path.
    verified: Option<SocketAddr>,
    /// We sent `direct_ready`.
    sent_ready: bool,
    /// The peer sent `direct_ready`.
    peer_ready: bool,
    outcome: Option<Outcome>,
    error: Option<Error>,
    transmit: VecDeque<Control>,
    actions: VecDeque<Action>,
    events: VecDeque<DirectEvent>,
}

impl std::fmt::Debug for DirectPath {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DirectPath")
            .field("role", &self.role)
            .field("encrypt", &self.sealing.is_some())
            .field("outcome", &self.outcome)
            .finish_non_exhaustive()
    }
}

impl DirectPath {
    /// Start the attempt once the peer accepted [`wire::EXT_DIRECT`] (sender: its
    /// `extensions` answer arrived; receiver: it sent the answer). Queues our candidate
    /// list for [`DirectPath::poll_transmit`].
    ///
    /// `local_fingerprint` is SHA-256 of our QUIC certificate (DER). Local candidates
    /// that the rules refuse for a peer's are left out, as are repeats and all past
    /// [`MAX_CANDIDATES`]. `sealing` holds the session's cipher and nonce seed S when
    /// encrypting.
    ///
    /// # Errors
    /// [`Error::Config`] for [`DirectMode::RelayOnly`], which never runs an attempt.
    pub fn new(
        now: Instant,
        config: DirectConfig,
        role: Role,
        local_fingerprint: [u8; 32],
        local_candidates: &[Candidate],
        sealing: Option<(Cipher, [u8; 32])>,
    ) -> Result<DirectPath, Error> {
        if config.mode == DirectMode::RelayOnly {
            return Err(Error::Config(
                "relay-only never tries a direct connection".into(),
            ));
        }
        let mut ours: Vec<Candidate> = Vec::new();
        for c in local_candidates {
            if ours.len() < MAX_CANDIDATES
                && unusable(c.addr, &config).is_none()
                && !ours.iter().any(|o| same(o.addr, c.addr))
            {
                ours.push(*c);
            }
        }
        let list = CandidateList {
            attempt: ATTEMPT,
            fingerprint: wire::hex(&local_fingerprint),
            candidates: ours
                .iter()
                .map(|c| CandidateEntry {
                    addr: c.addr.to_string(),
                    kind: c.kind,
                })
                .collect(),
        };
        let dial_at = match role {
            Role::Sender => now + config.dial_hold,
            Role::Receiver => now,
        };
        let mut d = DirectPath {
            deadline: now + config.attempt_timeout,
            dial_at,
            held: Vec::new(),
            config,
            role,
            sealing,
            peer_fingerprint: None,
            probes: HashMap::new(),
            peer_kinds: HashMap::new(),
            verified: None,
            sent_ready: false,
            peer_ready: false,
            outcome: None,
            error: None,
            transmit: VecDeque::new(),
            actions: VecDeque::new(),
            events: VecDeque::new(),
        };
        let msg = d.seal(list);
        d.transmit.push_back(msg);
        Ok(d)
    }

    /// The next message for the peer, on the relay connection.
    pub fn poll_transmit(&mut self) -> Option<Control> {
        self.transmit.pop_front()
    }

    /// The next thing for the runtime to do. Drain after [`DirectPath::poll_transmit`]:
    /// a [`Action::Switch`] comes after the message that must precede it.
    pub fn poll_action(&mut self) -> Option<Action> {
        self.actions.pop_front()
    }

    /// The next event to log.
    pub fn poll_event(&mut self) -> Option<DirectEvent> {
        self.events.pop_front()
    }

    /// When to call [`DirectPath::handle_timeout`]: the end of the sender's dial hold
    /// while it holds probes, else the attempt's deadline; `None` once decided, failed,
    /// or (receiver) while it waits for the sender's verdict after declaring itself
    /// ready.
    pub fn poll_timeout(&self) -> Option<Instant> {
        if self.outcome.is_some() || self.error.is_some() || self.waits_for_verdict() {
            None
        } else if !self.held.is_empty() {
            Some(self.dial_at.min(self.deadline))
        } else {
            Some(self.deadline)
        }
    }

    /// The sticky error, if the peer broke the extension's rules.
    pub fn error(&self) -> Option<&Error> {
        self.error.as_ref()
    }

    /// The peer's address on the chosen path, once switched.
    pub fn switched_to(&self) -> Option<SocketAddr> {
        match self.outcome {
            Some(Outcome::Switched(a)) => Some(a),
            _ => None,
        }
    }

    /// The fingerprint the peer announced with its candidates, once they arrived.
    pub fn peer_fingerprint(&self) -> Option<[u8; 32]> {
        self.peer_fingerprint
    }

    /// How the peer learned `addr`, one of its usable candidates.
    pub fn peer_kind(&self, addr: SocketAddr) -> Option<CandidateKind> {
        self.peer_kinds.get(&addr).copied()
    }

    /// True once the attempt ended (switched or given up) or failed.
    pub fn is_finished(&self) -> bool {
        self.outcome.is_some() || self.error.is_some()
    }

    /// Feed a direct-path message from the peer (see [`is_direct_message`]).
    ///
    /// # Errors
    /// [`Error::Misuse`] for a message that is not a direct-path one (nothing changes);
    /// [`Error::Peer`] or [`Error::Integrity`] when the peer broke the rules, which is
    /// sticky: the caller fails the session as for any protocol violation.
    pub fn handle_message(&mut self, now: Instant, msg: Control) -> Result<(), Error> {
        Error::sticky(&self.error)?;
        if !is_direct_message(&msg) {
            return Err(Error::misuse(format!(
                "{} is not a direct-path message",
                msg.type_name()
            )));
        }
        let r = self.on_message(now, msg);
        if let Err(e) = &r {
            self.error = Some(e.clone());
            self.transmit.clear();
            self.actions.clear();
        }
        r
    }

    /// Report what a probe asked for with [`Action::Probe`] gave: the fingerprint
    /// (SHA-256 of the DER certificate) the peer at `addr` proved it holds, or why no
    /// verified connection came up.
    ///
    /// A connection the peer opened from one of its candidates counts as the probe of
    /// that candidate; one that arrives before the machine asked for that probe (the
    /// peer's list is still on its way through the relay) is held by the runtime and
    /// reported once the machine asks.
    ///
    /// # Errors
    /// [`Error::Misuse`] for an address that was not asked for or already reported
    /// (nothing changes); the sticky error if there is one.
    pub fn handle_probe_result(
        &mut self,
        now: Instant,
        addr: SocketAddr,
        result: Result<[u8; 32], String>,
    ) -> Result<(), Error> {
        Error::sticky(&self.error)?;
        // The clock moves only at the start, with candidates and in `handle_timeout`;
        // `now` keeps the inputs alike across the core's machines.
        let _ = now;
        let Some(state) = self.probes.get_mut(&addr) else {
            return Err(Error::misuse(format!("no probe of {addr} was asked for")));
        };
        if *state != Probe::Pending {
            return Err(Error::misuse(format!(
                "the probe of {addr} was already reported"
            )));
        }
        match result {
            Ok(fp) if Some(fp) == self.peer_fingerprint => {
                *state = Probe::Verified;
                self.events.push_back(DirectEvent::ProbeVerified { addr });
                if self.verified.is_none() && self.outcome.is_none() {
                    self.verified = Some(addr);
                    self.progress();
                }
            }
            Ok(_) => {
                *state = Probe::Refused;
                self.events.push_back(DirectEvent::ProbeRefused { addr });
            }
            Err(reason) => {
                *state = Probe::Failed;
                self.events
                    .push_back(DirectEvent::ProbeFailed { addr, reason });
            }
        }
        Ok(())
    }

    /// Ask for the probes the sender held once its dial hold is over; give the attempt
    /// up if its deadline passed.
    ///
    /// # Errors
    /// The sticky error, if there is one.
    pub fn handle_timeout(&mut self, now: Instant) -> Result<(), Error> {
        Error::sticky(&self.error)?;
        if now >= self.dial_at && self.outcome.is_none() {
            for addr in std::mem::take(&mut self.held) {
                self.probe(addr);
            }
        }
        if self.outcome.is_none() && !self.waits_for_verdict() && now >= self.deadline {
            self.transmit.push_back(Control::DirectFailed {
                attempt: ATTEMPT,
                why: "timeout".into(),
            });
            let reason = format!(
                "no direct path within {:.1} s",
                self.config.attempt_timeout.as_secs_f64()
            );
            self.give_up(reason);
        }
        Ok(())
    }

    /// A receiver that declared itself ready follows the sender's verdict: giving up on
    /// its own could cross the sender's switch on the wire.
    fn waits_for_verdict(&self) -> bool {
        self.role == Role::Receiver && self.sent_ready
    }

    fn on_message(&mut self, now: Instant, msg: Control) -> Result<(), Error> {
        match msg {
            Control::Candidates(list) => {
                if self.sealing.is_some() {
                    return Err(Error::peer(
                        "unencrypted candidates in an encrypted session",
                    ));
                }
                self.on_candidates(now, list)
            }
            Control::EncCandidates {
                attempt,
                hidden_candidates,
            } => {
                let Some((cipher, seed)) = &self.sealing else {
                    return Err(Error::peer(
                        "encrypted candidates in an unencrypted session",
                    ));
                };
                check_attempt(attempt)?;
                let sealed = wire::unhex(&hidden_candidates)
                    .ok_or_else(|| Error::peer("enc_candidates is not hex"))?;
                let plain = cipher
                    .open(&candidates_nonce(seed, self.role.other(), attempt), &sealed)
                    .ok_or_else(|| Error::integrity("the peer's candidates do not decrypt"))?;
                let text = String::from_utf8(plain)
                    .map_err(|_| Error::peer("the peer's candidates are not UTF-8"))?;
                match Control::parse(&text)? {
                    Control::Candidates(list) if list.attempt == attempt => {
                        self.on_candidates(now, list)
                    }
                    Control::Candidates(_) => Err(Error::peer(
                        "sealed candidates name another attempt than their envelope",
                    )),
                    other => Err(Error::peer(format!(
                        "enc_candidates holds a {} message",
                        other.type_name()
                    ))),
                }
            }
            Control::DirectReady { attempt } => {
                check_attempt(attempt)?;
                self.on_ready()
            }
            Control::DirectFailed { attempt, why } => {
                check_attempt(attempt)?;
                self.on_failed(&why)
            }
            // `handle_message` lets only direct-path messages through.
            other => Err(Error::misuse(format!("unexpected {}", other.type_name()))),
        }
    }

    fn on_candidates(&mut self, now: Instant, list: CandidateList) -> Result<(), Error> {
        check_attempt(list.attempt)?;
        if self.peer_fingerprint.is_some() {
            return Err(Error::peer("the peer sent its candidates a second time"));
        }
        if list.candidates.len() > MAX_CANDIDATES {
            return Err(Error::peer(format!(
                "{} candidates, more than the {MAX_CANDIDATES} allowed",
                list.candidates.len()
            )));
        }
        let fingerprint = wire::unhex32(&list.fingerprint)
            .ok_or_else(|| Error::peer("the candidates' fingerprint is not 32 bytes of hex"))?;
        let mut usable: Vec<SocketAddr> = Vec::new();
        let mut ignored = Vec::new();
        for c in &list.candidates {
            if c.addr.len() > MAX_ADDR_TEXT {
                return Err(Error::peer("a candidate address is too long"));
            }
            let addr: SocketAddr = c.addr.parse().map_err(|_| {
                Error::peer(format!(
                    "candidate {} is not an ip:port address",
                    crate::path::escape(&c.addr)
                ))
            })?;
            let why = unusable(addr, &self.config).or_else(|| {
                usable
                    .iter()
                    .any(|u| same(*u, addr))
                    .then_some("listed twice")
            });
            match why {
                Some(why) => ignored.push((c.addr.clone(), why.to_owned())),
                None => {
                    usable.push(addr);
                    self.peer_kinds.insert(addr, c.kind);
                }
            }
        }
        self.peer_fingerprint = Some(fingerprint);
        self.events.push_back(DirectEvent::CandidatesReceived {
            usable: usable.clone(),
            ignored,
        });
        if self.outcome.is_none() {
            if now < self.dial_at {
                self.held = usable;
            } else {
                for addr in usable {
                    self.probe(addr);
                }
            }
        }
        Ok(())
    }

    fn probe(&mut self, addr: SocketAddr) {
        self.probes.insert(addr, Probe::Pending);
        self.actions.push_back(Action::Probe { addr });
    }

    fn on_ready(&mut self) -> Result<(), Error> {
        if self.peer_ready {
            return Err(Error::peer("direct_ready sent twice"));
        }
        match self.role {
            Role::Sender => {
                if self.peer_fingerprint.is_none() {
                    return Err(Error::peer("direct_ready before the receiver's candidates"));
                }
                self.peer_ready = true;
                // We gave up and said so; the receiver learns it from our direct_failed.
                if self.outcome.is_none() {
                    self.progress();
                }
            }
            Role::Receiver => {
                if !self.sent_ready {
                    return Err(Error::peer(
                        "the sender switched to the direct path before the receiver was ready",
                    ));
                }
                if self.outcome.is_some() {
                    return Err(Error::peer(
                        "the sender switched to the direct path after it gave it up",
                    ));
                }
                self.peer_ready = true;
                let addr = self
                    .verified
                    .expect("a receiver declares itself ready only with a verified path");
                self.switch(addr);
            }
        }
        Ok(())
    }

    fn on_failed(&mut self, why: &str) -> Result<(), Error> {
        match self.outcome {
            Some(Outcome::GaveUp) => return Ok(()),
            Some(Outcome::Switched(_)) => {
                return Err(Error::peer(
                    "direct_failed after the switch to the direct path",
                ))
            }
            None => {}
        }
        if self.role == Role::Sender && self.peer_ready {
            return Err(Error::peer(
                "the receiver gave up after it declared itself ready",
            ));
        }
        let shown: String = crate::path::escape(why).chars().take(MAX_WHY).collect();
        self.give_up(format!("the peer gave up the direct path ({shown})"));
        Ok(())
    }

    /// Take the next step the verified path allows.
    fn progress(&mut self) {
        let Some(addr) = self.verified else { return };
        match self.role {
            Role::Receiver if !self.sent_ready => {
                self.sent_ready = true;
                self.transmit
                    .push_back(Control::DirectReady { attempt: ATTEMPT });
            }
            Role::Sender if self.peer_ready => {
                self.transmit
                    .push_back(Control::DirectReady { attempt: ATTEMPT });
                self.switch(addr);
            }
            _ => {}
        }
    }

    fn switch(&mut self, addr: SocketAddr) {
        self.outcome = Some(Outcome::Switched(addr));
        self.actions.push_back(Action::Switch { addr });
        self.events.push_back(DirectEvent::Switched { addr });
    }

    fn give_up(&mut self, reason: String) {
        self.outcome = Some(Outcome::GaveUp);
        self.actions.push_back(Action::GiveUp {
            reason: reason.clone(),
            fatal: self.config.mode == DirectMode::DirectOnly,
        });
        self.events.push_back(DirectEvent::GaveUp { reason });
    }

    /// Our candidate list as it goes on the wire: plain, or sealed under the session key.
    fn seal(&self, list: CandidateList) -> Control {
        let attempt = list.attempt;
        let plain = Control::Candidates(list);
        match &self.sealing {
            None => plain,
            Some((cipher, seed)) => Control::EncCandidates {
                attempt,
                hidden_candidates: wire::hex(&cipher.seal(
                    &candidates_nonce(seed, self.role, attempt),
                    plain.to_json().as_bytes(),
                )),
            },
        }
    }
}

fn check_attempt(attempt: u32) -> Result<(), Error> {
    if attempt == ATTEMPT {
        Ok(())
    } else {
        Err(Error::peer(format!(
            "direct-path attempt {attempt}, expected {ATTEMPT}"
        )))
    }
}

/// The nonce of the candidate list `from` sends in `attempt` of the session whose seed
/// is `seed`: each side sends one list per attempt, so each nonce seals one message.
pub(crate) fn candidates_nonce(seed: &[u8; 32], from: Role, attempt: u32) -> [u8; 32] {
    let label: &[u8] = match from {
        Role::Sender => b"p2p-copy candidates from the sender",
        Role::Receiver => b"p2p-copy candidates from the receiver",
    };
    let mut h = Sha256::new();
    h.update(label);
    h.update(attempt.to_be_bytes());
    h.update(seed);
    h.finalize().into()
}

/// The address as compared: an IPv4-mapped IPv6 address is its IPv4 address.
fn canonical(addr: SocketAddr) -> (IpAddr, u16) {
    let ip = match addr.ip() {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4),
        v4 => v4,
    };
    (ip, addr.port())
}

fn same(a: SocketAddr, b: SocketAddr) -> bool {
    canonical(a) == canonical(b)
}

/// Why `addr` is never probed, or `None` when it may be.
///
/// Private addresses are allowed: peers on one LAN meet on them.
fn unusable(addr: SocketAddr, config: &DirectConfig) -> Option<&'static str> {
    let (ip, port) = canonical(addr);
    if port == 0 {
        return Some("port 0");
    }
    let loopback = match ip {
        IpAddr::V4(v4) => {
            if v4.is_unspecified() || v4.octets()[0] == 0 {
                return Some("unspecified address");
            }
            if v4.is_multicast() {
                return Some("multicast address");
            }
            if v4.is_broadcast() {
                return Some("broadcast address");
            }
            v4.is_loopback()
        }
        IpAddr::V6(v6) => {
            if v6.is_unspecified() {
                return Some("unspecified address");
            }
            if v6.is_multicast() {
                return Some("multicast address");
            }
            // fe80::/10 needs an interface scope, which means nothing on the peer's side.
            if v6.segments()[0] & 0xffc0 == 0xfe80 {
                return Some("link-local address");
            }
            v6.is_loopback()
        }
    };
    if loopback && !config.allow_loopback {
        return Some("loopback address");
    }
    if config.relay_addrs.iter().any(|r| same(*r, addr)) {
        return Some("the relay's own address");
    }
    None
}
