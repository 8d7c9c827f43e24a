//! Transfers with no server at all: the ticket a side prints for its peer, the instants
//! at which both sides punch, and the exchange that authenticates the two peers once a
//! QUIC connection joins them.
//!
//! The runtime binds one UDP socket, learns its public address (STUN) and prints a
//! [`Ticket`]: that address and the fingerprint of its QUIC certificate. With the peer's
//! ticket each side pins the peer's certificate. With a bare `HOST:PORT` it cannot, and
//! both sides must give the same code: a [`Handshake`] then runs SPAKE2 over the QUIC
//! stream, bound to the connection's TLS exporter, so that a wrong code is refused as
//! "wrong code" and a machine in the middle (which terminates two TLS connections, each
//! with its own exporter) learns nothing and gets nowhere.
//!
//! Punching happens at the same instants on both sides: every [`PUNCH_PERIOD`] boundary
//! of the wall clock (corrected by SNTP when asked, see [`crate::sntp`]), a bounded
//! number of times ([`punch_instants`]).
//!
//! # The handshake's run loop
//! ```
//! use p2p_copy_core::serverless::{Handshake, HandshakeConfig};
//! use p2p_copy_core::wire::Role;
//!
//! let config = |role, seed| HandshakeConfig {
//!     role,
//!     pinned_peer: false,
//!     code: Some("purple-monkey-dishwasher".into()),
//!     channel_binding: [7; 32],
//!     seed,
//! };
//! let mut a = Handshake::new(config(Role::Sender, [1; 32]));
//! let mut b = Handshake::new(config(Role::Receiver, [2; 32]));
//! // The runtime carries each side's messages to the other until both are done.
//! while a.outcome().is_none() || b.outcome().is_none() {
//!     while let Some(m) = a.poll_transmit() {
//!         b.handle_message(m);
//!     }
//!     while let Some(m) = b.poll_transmit() {
//!         a.handle_message(m);
//!     }
//! }
//! let (a, b) = (a.outcome().unwrap().unwrap(), b.outcome().unwrap().unwrap());
//! assert_eq!(a.session_code, b.session_code);
//! ```

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use spake2::{Ed25519Group, Identity, Password, Spake2};

use crate::wire::{hex, unhex, Role, WireMessage};

/// What every ticket's text starts with.
pub const TICKET_PREFIX: &str = "p2pc";
/// The ticket format this version writes and reads.
const TICKET_VERSION: u8 = 1;
/// Bytes of the checksum at the end of a ticket (a truncated SHA-256 of the rest).
const TICKET_CHECK: usize = 2;

/// The time between two punching instants.
pub const PUNCH_PERIOD: Duration = Duration::from_secs(10);

/// The SPAKE2 identity both sides use (the symmetric variant: neither side is special).
const PAKE_IDENTITY: &[u8] = b"p2p-copy serverless v1";
/// Version of the handshake messages.
const HANDSHAKE_VERSION: u32 = 1;
/// Longest handshake message accepted: the largest correct one is far smaller.
const MAX_HANDSHAKE_MESSAGE: usize = 512;

/// One side's address and the SHA-256 fingerprint of its QUIC certificate: what its peer
/// needs to reach it and to know that it reached the right machine.
///
/// The text form is [`TICKET_PREFIX`] followed by lowercase base32 (RFC 4648, no
/// padding) of: one byte `version << 4 | 4` (IPv4) or `version << 4 | 6` (IPv6), the
/// address (4 or 16 bytes), the port (2 bytes, big-endian), the fingerprint (32 bytes)
/// and the first two bytes of the SHA-256 of everything before them, so that a ticket
/// damaged in the pasting is told apart from a wrong one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Ticket {
    /// Where the peer reaches this side.
    pub addr: SocketAddr,
    /// SHA-256 of this side's certificate (DER).
    pub fingerprint: [u8; 32],
}

/// Why a text is not a ticket.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TicketError {
    /// It does not start with [`TICKET_PREFIX`].
    #[error("not a ticket (a ticket starts with {TICKET_PREFIX})")]
    NotATicket,
    /// It has characters that base32 does not use, or a length base32 never gives.
    #[error("the ticket has characters or a length a ticket never has: copy it again, whole")]
    Encoding,
    /// Its length does not match its address family.
    #[error("the ticket is cut short or too long: copy it again, whole")]
    Length,
    /// Written by another version of p2p-copy.
    #[error("the ticket is of version {0}, this p2p-copy reads version {TICKET_VERSION}")]
    Version(u8),
    /// Its checksum does not match: it was changed in the copying.
    #[error("the ticket is damaged (its checksum does not match): copy it again, whole")]
    Damaged,
}

impl Ticket {
    fn bytes(&self) -> Vec<u8> {
        let mut b = Vec::with_capacity(57);
        match self.addr.ip() {
            IpAddr::V4(ip) => {
                b.push(TICKET_VERSION << 4 | 4);
                b.extend_from_slice(&ip.octets());
            }
            IpAddr::V6(ip) => {
                b.push(TICKET_VERSION << 4 | 6);
                b.extend_from_slice(&ip.octets());
            }
        }
        b.extend_from_slice(&self.addr.port().to_be_bytes());
        b.extend_from_slice(&self.fingerprint);
        let check = Sha256::digest(&b);
        b.extend_from_slice(&check[..TICKET_CHECK]);
        b
    }

    /// Read a ticket's text; surrounding whitespace and the case of letters do not
    /// matter.
    ///
    /// # Errors
    /// What is wrong with it ([`TicketError`]).
    pub fn parse(text: &str) -> Result<Ticket, TicketError> {
        let text = text.trim().to_ascii_lowercase();
        let body = text
            .strip_prefix(TICKET_PREFIX)
            .ok_or(TicketError::NotATicket)?;
        let b = data_encoding::BASE32_NOPAD
            .decode(body.to_ascii_uppercase().as_bytes())
            .map_err(|_| TicketError::Encoding)?;
        let head = *b.first().ok_or(TicketError::Length)?;
        if head >> 4 != TICKET_VERSION {
            return Err(TicketError::Version(head >> 4));
        }
        let ip_len = match head & 0x0f {
            4 => 4,
            6 => 16,
            _ => return Err(TicketError::Damaged),
        };
        if b.len() != 1 + ip_len + 2 + 32 + TICKET_CHECK {
            return Err(TicketError::Length);
        }
        let (data, check) = b.split_at(b.len() - TICKET_CHECK);
        if Sha256::digest(data)[..TICKET_CHECK] != *check {
            return Err(TicketError::Damaged);
        }
        let ip = match ip_len {
            4 => IpAddr::V4(Ipv4Addr::new(data[1], data[2], data[3], data[4])),
            _ => {
                let mut o = [0u8; 16];
                o.copy_from_slice(&data[1..17]);
                IpAddr::V6(Ipv6Addr::from(o))
            }
        };
        let at = 1 + ip_len;
        let port = u16::from_be_bytes([data[at], data[at + 1]]);
        let mut fingerprint = [0u8; 32];
        fingerprint.copy_from_slice(&data[at + 2..at + 34]);
        Ok(Ticket {
            addr: SocketAddr::new(ip, port),
            fingerprint,
        })
    }
}

impl fmt::Display for Ticket {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let body = data_encoding::BASE32_NOPAD
            .encode(&self.bytes())
            .to_ascii_lowercase();
        write!(f, "{TICKET_PREFIX}{body}")
    }
}

/// What a user gave as the peer: its ticket, or a bare `HOST:PORT` (resolved by the
/// runtime).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PeerSpec {
    /// The peer's ticket: its address and the certificate to pin.
    Ticket(Ticket),
    /// An address (`host:port`, `ip:port` or `[ipv6]:port`); the peer is then
    /// authenticated by the shared code.
    Address {
        /// The host name or address.
        host: String,
        /// The port.
        port: u16,
    },
}

impl PeerSpec {
    /// Read what the user gave as the peer.
    ///
    /// # Errors
    /// A message that says what is wrong: a damaged ticket, or no `HOST:PORT`.
    pub fn parse(text: &str) -> Result<PeerSpec, String> {
        let t = text.trim();
        if t.len() > TICKET_PREFIX.len() && t.to_ascii_lowercase().starts_with(TICKET_PREFIX) {
            return Ticket::parse(t)
                .map(PeerSpec::Ticket)
                .map_err(|e| e.to_string());
        }
        if let Ok(addr) = t.parse::<SocketAddr>() {
            return Ok(PeerSpec::Address {
                host: addr.ip().to_string(),
                port: addr.port(),
            });
        }
        let bad = || {
            format!(
                "{} is neither a ticket ({TICKET_PREFIX}…) nor HOST:PORT",
                crate::path::escape(t)
            )
        };
        let (host, port) = t.rsplit_once(':').ok_or_else(bad)?;
        let port: u16 = port.parse().map_err(|_| bad())?;
        let host = host.trim_start_matches('[').trim_end_matches(']');
        if host.is_empty() || port == 0 || host.contains(char::is_whitespace) {
            return Err(bad());
        }
        Ok(PeerSpec::Address {
            host: host.to_owned(),
            port,
        })
    }
}

/// How many punching instants fit in `timeout`: at least one.
pub fn rounds_for(timeout: Duration) -> u32 {
    let n = timeout.as_nanos().div_ceil(PUNCH_PERIOD.as_nanos());
    u32::try_from(n).unwrap_or(u32::MAX).max(1)
}

/// The next `rounds` punching instants after `now`, as times since the Unix epoch: every
/// [`PUNCH_PERIOD`] boundary strictly after `now`. Two sides whose clocks agree compute
/// the same instants, whenever each of them started.
pub fn punch_instants(now: Duration, rounds: u32) -> Vec<Duration> {
    let period = PUNCH_PERIOD.as_nanos();
    let first = (now.as_nanos() / period + 1) * period;
    (0..u128::from(rounds))
        .map(|k| {
            let at = first + k * period;
            Duration::new(
                u64::try_from(at / 1_000_000_000).unwrap_or(u64::MAX),
                (at % 1_000_000_000) as u32,
            )
        })
        .collect()
}

/// Settings of a [`Handshake`].
#[derive(Clone)]
pub struct HandshakeConfig {
    /// This side's role in the transfer.
    pub role: Role,
    /// This side checked the peer's certificate against the fingerprint of the peer's
    /// ticket: the peer is who the ticket says.
    pub pinned_peer: bool,
    /// The code the user gave, if any.
    pub code: Option<String>,
    /// A secret both ends of this one connection share and nobody else has: the TLS
    /// exporter of the QUIC connection. A machine in the middle holds two connections
    /// with two different values.
    pub channel_binding: [u8; 32],
    /// Randomness for the key exchange (from the operating system, in the runtime).
    pub seed: [u8; 32],
}

impl fmt::Debug for HandshakeConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HandshakeConfig")
            .field("role", &self.role)
            .field("pinned_peer", &self.pinned_peer)
            .field("code", &self.code.as_ref().map(|_| "…"))
            .finish_non_exhaustive()
    }
}

/// How the peers were authenticated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthenticatedBy {
    /// Both sides pinned the other's certificate from its ticket.
    Tickets,
    /// Both sides proved they hold the same code (SPAKE2).
    Code,
}

/// A handshake that succeeded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Authenticated {
    /// How.
    pub by: AuthenticatedBy,
    /// The v1 session's code on this connection (its chain and, with `--encrypt`, its
    /// key derive from it): 64 hex digits derived from the channel binding (and the
    /// SPAKE2 key), the same on both sides and unknown to anyone else.
    pub session_code: String,
}

/// Why a handshake failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum AuthError {
    /// The key confirmation did not verify: the codes differ, or someone without the code
    /// answered.
    #[error("wrong code: the peer's code is not this side's (or someone without the code answered); nothing was transferred")]
    WrongCode,
    /// The two sides cannot work together as set up: a role or a code is missing.
    #[error("{0}")]
    Mismatch(String),
    /// The peer sent what the handshake does not allow.
    #[error("protocol violation in the serverless handshake: {0}")]
    Peer(String),
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
enum Msg {
    Serverless {
        version: u32,
        role: String,
        pinned: bool,
        code: bool,
    },
    Pake {
        msg: String,
    },
    PakeConfirm {
        mac: String,
    },
}

impl Msg {
    fn wire(&self) -> WireMessage {
        // Serialising these plain structs cannot fail.
        WireMessage::Text(serde_json::to_string(self).expect("plain JSON"))
    }
}

enum State {
    /// Waiting for the peer's `serverless` message.
    Hello,
    /// Our SPAKE2 message is out; waiting for the peer's.
    Pake(Box<Spake2<Ed25519Group>>),
    /// Our confirmation is out; waiting for the peer's, which must equal `expected`.
    Confirm {
        expected: [u8; 32],
        key: Vec<u8>,
    },
    Done(Result<Authenticated, AuthError>),
}

/// The exchange that authenticates the two peers over a fresh QUIC connection, before
/// the v1 session starts on it (sans-IO; see the module docs for the loop).
///
/// Each side sends `{"type":"serverless","version":1,"role":…,"pinned":…,"code":…}`.
/// When both sides pinned the other's certificate, that is all. Otherwise both run
/// symmetric SPAKE2 with the code (`{"type":"pake","msg":"<hex>"}`) and then confirm the
/// key (`{"type":"pake_confirm","mac":"<hex>"}`), each MAC covering its role, the key
/// and the channel binding. A side whose code is missing when one is needed, two sides
/// of the same role, and a confirmation that does not verify end the handshake.
pub struct Handshake {
    cfg: HandshakeConfig,
    out: Vec<WireMessage>,
    state: State,
}

impl fmt::Debug for Handshake {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Handshake")
            .field("cfg", &self.cfg)
            .finish_non_exhaustive()
    }
}

fn role_name(r: Role) -> &'static str {
    match r {
        Role::Sender => "sender",
        Role::Receiver => "receiver",
    }
}

fn confirmation(role: Role, key: &[u8], binding: &[u8; 32]) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(b"p2p-copy serverless confirm v1\0");
    h.update(role_name(role).as_bytes());
    h.update([0]);
    h.update(key);
    h.update(binding);
    h.finalize().into()
}

fn session_code(key: &[u8], binding: &[u8; 32]) -> String {
    let mut h = Sha256::new();
    h.update(b"p2p-copy serverless session v1\0");
    h.update(binding);
    h.update(key);
    hex(&h.finalize())
}

/// Equal, in time that does not depend on where they differ.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

impl Handshake {
    /// Start: this side's `serverless` message is queued.
    pub fn new(cfg: HandshakeConfig) -> Handshake {
        let hello = Msg::Serverless {
            version: HANDSHAKE_VERSION,
            role: role_name(cfg.role).into(),
            pinned: cfg.pinned_peer,
            code: cfg.code.is_some(),
        };
        Handshake {
            out: vec![hello.wire()],
            cfg,
            state: State::Hello,
        }
    }

    /// The next message to send to the peer; call until `None` after [`Handshake::new`]
    /// and after every [`Handshake::handle_message`]. What was queued before a failure
    /// still goes out, so that the peer learns of it too (a wrong code, two senders);
    /// nothing is queued after it.
    pub fn poll_transmit(&mut self) -> Option<WireMessage> {
        if self.out.is_empty() {
            None
        } else {
            Some(self.out.remove(0))
        }
    }

    /// How it ended, once it has: `Ok` once this side is sure of its peer (its own last
    /// messages may still wait in [`Handshake::poll_transmit`]).
    pub fn outcome(&self) -> Option<Result<&Authenticated, &AuthError>> {
        match &self.state {
            State::Done(r) => Some(r.as_ref()),
            _ => None,
        }
    }

    /// A message from the peer. After the outcome, later messages belong to the v1
    /// session and must not be given here; if they are, they are ignored.
    pub fn handle_message(&mut self, msg: WireMessage) {
        if matches!(self.state, State::Done(_)) {
            return;
        }
        if let Err(e) = self.step(msg) {
            self.state = State::Done(Err(e));
        }
    }

    fn step(&mut self, msg: WireMessage) -> Result<(), AuthError> {
        let WireMessage::Text(text) = msg else {
            return Err(AuthError::Peer(
                "a binary message during the handshake".into(),
            ));
        };
        if text.len() > MAX_HANDSHAKE_MESSAGE {
            return Err(AuthError::Peer(format!(
                "a handshake message of {} bytes",
                text.len()
            )));
        }
        let msg: Msg = serde_json::from_str(&text)
            .map_err(|e| AuthError::Peer(format!("not a handshake message: {e}")))?;
        match (std::mem::replace(&mut self.state, State::Hello), msg) {
            (
                State::Hello,
                Msg::Serverless {
                    version,
                    role,
                    pinned,
                    code,
                },
            ) => self.on_hello(version, &role, pinned, code),
            (State::Pake(spake), Msg::Pake { msg }) => {
                let msg = unhex(&msg).ok_or_else(|| AuthError::Peer("pake: not hex".into()))?;
                let key = spake
                    .finish(&msg)
                    .map_err(|e| AuthError::Peer(format!("pake: {e:?}")))?;
                let b = &self.cfg.channel_binding;
                let mine = confirmation(self.cfg.role, &key, b);
                let expected = confirmation(self.cfg.role.other(), &key, b);
                self.out.push(Msg::PakeConfirm { mac: hex(&mine) }.wire());
                self.state = State::Confirm { expected, key };
                Ok(())
            }
            (State::Confirm { expected, key }, Msg::PakeConfirm { mac }) => {
                let mac = unhex(&mac).unwrap_or_default();
                if !same(&mac, &expected) {
                    return Err(AuthError::WrongCode);
                }
                self.state = State::Done(Ok(Authenticated {
                    by: AuthenticatedBy::Code,
                    session_code: session_code(&key, &self.cfg.channel_binding),
                }));
                Ok(())
            }
            (_, m) => Err(AuthError::Peer(format!(
                "{} out of order",
                match m {
                    Msg::Serverless { .. } => "serverless",
                    Msg::Pake { .. } => "pake",
                    Msg::PakeConfirm { .. } => "pake_confirm",
                }
            ))),
        }
    }

    fn on_hello(
        &mut self,
        version: u32,
        role: &str,
        peer_pinned: bool,
        peer_code: bool,
    ) -> Result<(), AuthError> {
        if version != HANDSHAKE_VERSION {
            return Err(AuthError::Mismatch(format!(
                "the peer speaks version {version} of the serverless handshake, this side {HANDSHAKE_VERSION}"
            )));
        }
        let expected = role_name(self.cfg.role.other());
        if role != expected {
            let me = role_name(self.cfg.role);
            return Err(match role {
                "sender" | "receiver" => AuthError::Mismatch(format!(
                    "both sides are {me}s: one side must send and the other receive"
                )),
                _ => AuthError::Peer("an unknown role".into()),
            });
        }
        if self.cfg.pinned_peer && peer_pinned {
            self.state = State::Done(Ok(Authenticated {
                by: AuthenticatedBy::Tickets,
                session_code: session_code(&[], &self.cfg.channel_binding),
            }));
            return Ok(());
        }
        let why = match (self.cfg.pinned_peer, peer_pinned) {
            (false, _) => "this side was given the peer's address, not its ticket",
            (true, _) => "the peer was given this side's address, not its ticket",
        };
        let Some(code) = self.cfg.code.clone() else {
            return Err(AuthError::Mismatch(format!(
                "{why}, so both sides must give the same code: add --code"
            )));
        };
        if !peer_code {
            return Err(AuthError::Mismatch(format!(
                "{why}, so both sides must give the same code, and the peer gave none"
            )));
        }
        let mut rng = crate::pake::SeededRng::new(self.cfg.seed);
        let (spake, msg) = Spake2::<Ed25519Group>::start_symmetric_with_rng(
            &Password::new(code.as_bytes()),
            &Identity::new(PAKE_IDENTITY),
            &mut rng,
        );
        self.out.push(Msg::Pake { msg: hex(&msg) }.wire());
        self.state = State::Pake(Box::new(spake));
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn cfg(role: Role, pinned: bool, code: Option<&str>, binding: u8, seed: u8) -> HandshakeConfig {
        HandshakeConfig {
            role,
            pinned_peer: pinned,
            code: code.map(str::to_owned),
            channel_binding: [binding; 32],
            seed: [seed; 32],
        }
    }

    /// Run two handshakes against each other; each side's outcome.
    fn run(
        a: HandshakeConfig,
        b: HandshakeConfig,
    ) -> (
        Result<Authenticated, AuthError>,
        Result<Authenticated, AuthError>,
    ) {
        let mut a = Handshake::new(a);
        let mut b = Handshake::new(b);
        for _ in 0..10 {
            while let Some(m) = a.poll_transmit() {
                b.handle_message(m);
            }
            while let Some(m) = b.poll_transmit() {
                a.handle_message(m);
            }
        }
        let done = |h: &Handshake| {
            h.outcome()
                .expect("finished")
                .cloned()
                .map_err(Clone::clone)
        };
        (done(&a), done(&b))
    }

    #[test]
    fn the_same_code_authenticates_both_sides_with_one_session_code() {
        let (a, b) = run(
            cfg(Role::Sender, false, Some("tiger"), 9, 1),
            cfg(Role::Receiver, false, Some("tiger"), 9, 2),
        );
        let (a, b) = (a.unwrap(), b.unwrap());
        assert_eq!(a.by, AuthenticatedBy::Code);
        assert_eq!(a, b);
        assert_eq!(a.session_code.len(), 64);
    }

    #[test]
    fn a_wrong_code_is_refused_on_both_sides() {
        let (a, b) = run(
            cfg(Role::Sender, false, Some("tiger"), 9, 1),
            cfg(Role::Receiver, false, Some("tigre"), 9, 2),
        );
        assert_eq!(a, Err(AuthError::WrongCode));
        assert_eq!(b, Err(AuthError::WrongCode));
        assert!(AuthError::WrongCode.to_string().starts_with("wrong code"));
    }

    #[test]
    fn a_machine_in_the_middle_fails_the_confirmation() {
        // Two TLS connections, two exporters: the relayed SPAKE2 messages agree on a key,
        // but the confirmations bind different channels.
        let (a, b) = run(
            cfg(Role::Sender, false, Some("tiger"), 9, 1),
            cfg(Role::Receiver, false, Some("tiger"), 10, 2),
        );
        assert_eq!(a, Err(AuthError::WrongCode));
        assert_eq!(b, Err(AuthError::WrongCode));
    }

    #[test]
    fn two_pinned_tickets_need_no_code() {
        let (a, b) = run(
            cfg(Role::Sender, true, None, 9, 1),
            cfg(Role::Receiver, true, None, 9, 2),
        );
        assert_eq!(a.clone().unwrap().by, AuthenticatedBy::Tickets);
        assert_eq!(a, b);
    }

    #[test]
    fn one_unpinned_side_makes_both_use_the_code() {
        let (a, b) = run(
            cfg(Role::Sender, true, Some("x"), 9, 1),
            cfg(Role::Receiver, false, Some("x"), 9, 2),
        );
        assert_eq!(a.unwrap().by, AuthenticatedBy::Code);
        assert_eq!(b.unwrap().by, AuthenticatedBy::Code);
        let (a, b) = run(
            cfg(Role::Sender, true, None, 9, 1),
            cfg(Role::Receiver, false, Some("x"), 9, 2),
        );
        assert!(matches!(a, Err(AuthError::Mismatch(m)) if m.contains("add --code")),);
        assert!(matches!(b, Err(AuthError::Mismatch(m)) if m.contains("the peer gave none")));
    }

    #[test]
    fn two_senders_are_told_so() {
        let (a, _) = run(
            cfg(Role::Sender, true, None, 9, 1),
            cfg(Role::Sender, true, None, 9, 2),
        );
        assert!(matches!(a, Err(AuthError::Mismatch(m)) if m.contains("both sides are senders")));
    }

    #[test]
    fn the_transcript_is_the_documented_one() {
        let mut a = Handshake::new(cfg(Role::Sender, false, Some("c"), 1, 1));
        assert_eq!(
            a.poll_transmit(),
            Some(WireMessage::Text(
                r#"{"type":"serverless","version":1,"role":"sender","pinned":false,"code":true}"#
                    .into()
            ))
        );
        assert_eq!(a.poll_transmit(), None);
        a.handle_message(WireMessage::Text(
            r#"{"type":"serverless","version":1,"role":"receiver","pinned":false,"code":true}"#
                .into(),
        ));
        let Some(WireMessage::Text(pake)) = a.poll_transmit() else {
            panic!("pake")
        };
        assert!(pake.starts_with(r#"{"type":"pake","msg":""#), "{pake}");
        // 33 bytes: the side byte of the symmetric variant and the group element.
        assert_eq!(pake.len(), r#"{"type":"pake","msg":""}"#.len() + 66);
        assert!(a.outcome().is_none());
    }

    #[test]
    fn peer_garbage_ends_the_handshake_without_panicking() {
        for bad in [
            WireMessage::Binary(bytes::Bytes::from_static(b"x")),
            WireMessage::Text("{".into()),
            WireMessage::Text(r#"{"type":"pake","msg":"00"}"#.into()),
            WireMessage::Text(r#"{"type":"pake_confirm","mac":"00"}"#.into()),
            WireMessage::Text("x".repeat(4096)),
            WireMessage::Text(
                r#"{"type":"serverless","version":2,"role":"sender","pinned":true,"code":true}"#
                    .into(),
            ),
        ] {
            let mut h = Handshake::new(cfg(Role::Receiver, false, Some("c"), 1, 1));
            let _ = h.poll_transmit();
            h.handle_message(bad.clone());
            assert!(h.outcome().is_some_and(|r| r.is_err()), "{bad:?}");
            assert_eq!(h.poll_transmit(), None, "{bad:?}");
        }
        // A SPAKE2 message one byte short.
        let mut h = Handshake::new(cfg(Role::Receiver, false, Some("c"), 1, 1));
        h.handle_message(WireMessage::Text(
            r#"{"type":"serverless","version":1,"role":"sender","pinned":false,"code":true}"#
                .into(),
        ));
        h.handle_message(WireMessage::Text(format!(
            r#"{{"type":"pake","msg":"53{}"}}"#,
            "ff".repeat(31)
        )));
        assert!(matches!(h.outcome(), Some(Err(AuthError::Peer(_)))));
    }

    #[test]
    fn a_ticket_reads_back_and_is_short() {
        let t = Ticket {
            addr: "100.64.0.2:40000".parse().unwrap(),
            fingerprint: [0xab; 32],
        };
        let text = t.to_string();
        assert!(text.starts_with("p2pc"), "{text}");
        assert_eq!(text.len(), 4 + 66);
        assert_eq!(Ticket::parse(&text), Ok(t));
        assert_eq!(
            Ticket::parse(&format!("  {}\n", text.to_uppercase())),
            Ok(t)
        );
        let v6 = Ticket {
            addr: "[2001:db8::7]:1".parse().unwrap(),
            fingerprint: [1; 32],
        };
        assert_eq!(Ticket::parse(&v6.to_string()), Ok(v6));
    }

    #[test]
    fn a_damaged_ticket_says_so() {
        let text = Ticket {
            addr: "192.0.2.1:5".parse().unwrap(),
            fingerprint: [3; 32],
        }
        .to_string();
        let mut changed = text.clone().into_bytes();
        let i = 20;
        changed[i] = if changed[i] == b'a' { b'b' } else { b'a' };
        let changed = String::from_utf8(changed).unwrap();
        assert_eq!(Ticket::parse(&changed), Err(TicketError::Damaged));
        assert_eq!(
            Ticket::parse(&text[..text.len() - 8]),
            Err(TicketError::Length)
        );
        assert_eq!(Ticket::parse("p2pc!!"), Err(TicketError::Encoding));
        assert_eq!(Ticket::parse("hello"), Err(TicketError::NotATicket));
    }

    #[test]
    fn a_peer_is_a_ticket_or_host_and_port() {
        let t = Ticket {
            addr: "192.0.2.1:5".parse().unwrap(),
            fingerprint: [3; 32],
        };
        assert_eq!(PeerSpec::parse(&t.to_string()), Ok(PeerSpec::Ticket(t)));
        assert_eq!(
            PeerSpec::parse("100.64.0.2:40000"),
            Ok(PeerSpec::Address {
                host: "100.64.0.2".into(),
                port: 40000
            })
        );
        assert_eq!(
            PeerSpec::parse("[::1]:7"),
            Ok(PeerSpec::Address {
                host: "::1".into(),
                port: 7
            })
        );
        assert_eq!(
            PeerSpec::parse("example.org:99"),
            Ok(PeerSpec::Address {
                host: "example.org".into(),
                port: 99
            })
        );
        for bad in ["example.org", "host:0", ":5", "a b:5", "host:99999"] {
            assert!(PeerSpec::parse(bad).is_err(), "{bad}");
        }
        assert!(PeerSpec::parse("p2pcxyz").unwrap_err().contains("ticket"));
    }

    #[test]
    fn punch_instants_fall_on_ten_second_boundaries() {
        let now = Duration::from_millis(1_764_775_237_400);
        let at = punch_instants(now, 3);
        assert_eq!(
            at,
            [
                Duration::from_secs(1_764_775_240),
                Duration::from_secs(1_764_775_250),
                Duration::from_secs(1_764_775_260)
            ]
        );
        // Exactly on a boundary: the next one, so that no side starts late.
        assert_eq!(
            punch_instants(Duration::from_secs(20), 1),
            [Duration::from_secs(30)]
        );
        assert_eq!(rounds_for(Duration::from_secs(15)), 2);
        assert_eq!(rounds_for(Duration::from_secs(300)), 30);
        assert_eq!(rounds_for(Duration::ZERO), 1);
    }

    proptest! {
        #[test]
        fn sides_started_apart_share_their_later_instants(
            start in 0u64..4_000_000_000_000,
            apart_ms in 0u64..60_000,
            rounds in 1u32..40,
        ) {
            let a = punch_instants(Duration::from_millis(start), rounds);
            let b = punch_instants(Duration::from_millis(start + apart_ms), rounds);
            prop_assert_eq!(a.len(), rounds as usize);
            for w in a.windows(2) {
                prop_assert_eq!(w[1] - w[0], PUNCH_PERIOD);
            }
            prop_assert!(a[0] > Duration::from_millis(start));
            prop_assert!(a[0] <= Duration::from_millis(start) + PUNCH_PERIOD);
            prop_assert_eq!(a[0].as_nanos() % PUNCH_PERIOD.as_nanos(), 0);
            // Every instant of the later side that the earlier side still runs is one
            // of the earlier side's.
            for t in &b {
                if t <= a.last().unwrap() {
                    prop_assert!(a.contains(t));
                }
            }
        }

        #[test]
        fn any_ticket_reads_back(ip in any::<[u8; 16]>(), v4 in any::<bool>(), port in any::<u16>(), fp in any::<[u8; 32]>()) {
            let addr = if v4 {
                SocketAddr::new(IpAddr::V4(Ipv4Addr::new(ip[0], ip[1], ip[2], ip[3])), port)
            } else {
                SocketAddr::new(IpAddr::V6(Ipv6Addr::from(ip)), port)
            };
            let t = Ticket { addr, fingerprint: fp };
            prop_assert_eq!(Ticket::parse(&t.to_string()), Ok(t));
        }

        #[test]
        fn any_text_is_read_without_panicking(s in "\\PC{0,120}") {
            let _ = Ticket::parse(&s);
            let _ = PeerSpec::parse(&s);
        }

        #[test]
        fn a_code_only_one_side_knows_never_authenticates(code in "[a-z]{1,12}", other in "[a-z]{1,12}", seed in any::<u8>()) {
            prop_assume!(code != other);
            let (a, b) = run(
                cfg(Role::Sender, false, Some(&code), 1, seed),
                cfg(Role::Receiver, false, Some(&other), 1, seed.wrapping_add(1)),
            );
            prop_assert_eq!(a, Err(AuthError::WrongCode));
            prop_assert_eq!(b, Err(AuthError::WrongCode));
        }
    }
}
