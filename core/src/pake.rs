//! The PAKE of codes people can say out loud ([`crate::code`]): SPAKE2 over Ed25519
//! (RustCrypto's `spake2`), keys from HKDF-SHA256, and key confirmation in both
//! directions before any metadata moves.
//!
//! It runs on the relay connection before the v1 session: `hello` with the room id, then
//!
//! ```text
//! sender → relay     {"type":"hello","code_hash_hex":"<room id>","role":"sender"}
//! receiver → relay   {"type":"hello","code_hash_hex":"<room id>","role":"receiver"}
//! relay → sender     {"type":"ready"}
//! sender → receiver  {"type":"pake","msg":"<hex of SPAKE2 message A>"}
//! receiver → sender  {"type":"pake","msg":"<hex of SPAKE2 message B>","confirm":"<hex>"}
//! sender → receiver  {"type":"pake_confirm","confirm":"<hex>"}
//! ```
//!
//! A side whose check of the other's confirmation fails sends
//! `{"type":"pake_failed","why":"wrong code"}` and stops; the other side stops on it.
//! After the exchange both sides hold [`PakeKeys::session`], the key the v1 session is
//! then encrypted with (`enc_manifest` and on): encryption is always on for these codes.
//!
//! The machine is driven like every machine of this crate: [`Pake::handle_message`],
//! [`Pake::handle_close`] and [`Pake::handle_timeout`] in; [`Pake::poll_transmit`]
//! drained to `None` and [`Pake::poll_timeout`] out; [`Pake::keys`] once
//! [`Pake::is_done`].

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use hkdf::Hkdf;
use rand_core::{CryptoRng, RngCore};
use sha2::{Digest, Sha256};
use spake2::{Ed25519Group, Identity, Password, Spake2};
use subtle::ConstantTimeEq;

use crate::code::PakeCode;
use crate::error::closed_error;
use crate::wire::{Control, Role, WireMessage};
use crate::Error;

/// Length of a SPAKE2 message on Ed25519: a side byte and a point.
pub const PAKE_MSG_LEN: usize = 33;
/// Salt of the HKDF over the SPAKE2 output.
pub const HKDF_SALT: &[u8] = b"p2p-copy pake v1";
/// HKDF info of the session key.
pub const INFO_SESSION: &[u8] = b"p2p-copy session key";
/// HKDF info of the sender's confirmation.
pub const INFO_CONFIRM_SENDER: &[u8] = b"p2p-copy confirmation from the sender";
/// HKDF info of the receiver's confirmation.
pub const INFO_CONFIRM_RECEIVER: &[u8] = b"p2p-copy confirmation from the receiver";
/// Why a side gave up, in `pake_failed`.
pub const WRONG_CODE: &str = "wrong code";

/// Timeouts of the exchange.
#[derive(Debug, Clone)]
pub struct PakeConfig {
    /// How long to wait for the other side to arrive: the sender for `ready` (its
    /// code's lifetime, `--ttl`), the receiver for the sender's first message.
    pub pair_timeout: Duration,
    /// How long each later step may take once the two are paired.
    pub step_timeout: Duration,
}

impl Default for PakeConfig {
    fn default() -> Self {
        PakeConfig {
            pair_timeout: Duration::from_secs(600),
            step_timeout: Duration::from_secs(30),
        }
    }
}

/// The keys both sides hold after the exchange.
#[derive(Clone, PartialEq, Eq)]
pub struct PakeKeys {
    /// The key of the v1 session's AES-256-GCM (section 8 of the protocol).
    pub session: [u8; 32],
}

impl std::fmt::Debug for PakeKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PakeKeys(…)")
    }
}

/// Everything HKDF gives from one SPAKE2 output.
struct Derived {
    session: [u8; 32],
    confirm_sender: [u8; 32],
    confirm_receiver: [u8; 32],
}

fn derive(spake_key: &[u8]) -> Derived {
    let hk = Hkdf::<Sha256>::new(Some(HKDF_SALT), spake_key);
    let expand = |info: &[u8]| {
        let mut out = [0u8; 32];
        // 32 bytes is far below HKDF-SHA256's limit of 255 blocks.
        hk.expand(info, &mut out).expect("HKDF output length");
        out
    };
    Derived {
        session: expand(INFO_SESSION),
        confirm_sender: expand(INFO_CONFIRM_SENDER),
        confirm_receiver: expand(INFO_CONFIRM_RECEIVER),
    }
}

enum State {
    /// Sender: `hello` sent, waiting for `ready`.
    WaitReady(Spake2<Ed25519Group>, Vec<u8>),
    /// Sender: message A sent, waiting for B and the receiver's confirmation.
    WaitReply(Spake2<Ed25519Group>),
    /// Receiver: `hello` sent, waiting for message A.
    WaitA(Spake2<Ed25519Group>, Vec<u8>),
    /// Receiver: B and its confirmation sent, waiting for the sender's.
    WaitConfirm(Derived),
    /// Both directions confirmed.
    Done(PakeKeys),
    /// Failed; the error is in `error`.
    Failed,
}

/// One side of the exchange. See the module docs.
pub struct Pake {
    role: Role,
    room_number: u32,
    config: PakeConfig,
    state: State,
    deadline: Option<Instant>,
    out: VecDeque<WireMessage>,
    error: Option<Error>,
    paired: bool,
    room_taken: bool,
}

impl std::fmt::Debug for Pake {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pake")
            .field("role", &self.role)
            .field("paired", &self.paired)
            .field("done", &self.is_done())
            .finish_non_exhaustive()
    }
}

/// A CSPRNG from a 32-byte seed: SHA-256 of the seed and a block counter. SPAKE2 draws
/// its secret scalar from it (here and in [`crate::serverless`]); the seed must be fresh
/// and secret for every exchange.
pub(crate) struct SeededRng {
    seed: [u8; 32],
    counter: u64,
    block: [u8; 32],
    used: usize,
}

impl SeededRng {
    pub(crate) fn new(seed: [u8; 32]) -> Self {
        SeededRng {
            seed,
            counter: 0,
            block: [0; 32],
            used: 32,
        }
    }
}

impl RngCore for SeededRng {
    fn next_u32(&mut self) -> u32 {
        let mut b = [0u8; 4];
        self.fill_bytes(&mut b);
        u32::from_le_bytes(b)
    }

    fn next_u64(&mut self) -> u64 {
        let mut b = [0u8; 8];
        self.fill_bytes(&mut b);
        u64::from_le_bytes(b)
    }

    fn fill_bytes(&mut self, dest: &mut [u8]) {
        for byte in dest {
            if self.used == 32 {
                self.block = Sha256::new()
                    .chain_update(b"p2p-copy pake rng")
                    .chain_update(self.seed)
                    .chain_update(self.counter.to_be_bytes())
                    .finalize()
                    .into();
                self.counter += 1;
                self.used = 0;
            }
            *byte = self.block[self.used];
            self.used += 1;
        }
    }

    fn try_fill_bytes(&mut self, dest: &mut [u8]) -> Result<(), rand_core::Error> {
        self.fill_bytes(dest);
        Ok(())
    }
}

impl CryptoRng for SeededRng {}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(s: &str, len: usize) -> Option<Vec<u8>> {
    if s.len() != 2 * len || !s.is_ascii() {
        return None;
    }
    (0..len)
        .map(|i| u8::from_str_radix(&s[2 * i..2 * i + 2], 16).ok())
        .collect()
}

/// A message of the exchange, as read.
enum Incoming {
    Ready,
    Pake {
        msg: Vec<u8>,
        confirm: Option<[u8; 32]>,
    },
    Confirm([u8; 32]),
    Failed,
}

fn parse(msg: &WireMessage) -> Result<Incoming, Error> {
    let WireMessage::Text(text) = msg else {
        return Err(Error::peer(
            "a binary message during the code exchange (is the other side p2p-copy 0.1.x?)",
        ));
    };
    let v: serde_json::Value = serde_json::from_str(text)
        .map_err(|_| Error::peer("a message that is not JSON during the code exchange"))?;
    let field = |k: &str| v.get(k).and_then(|x| x.as_str());
    let bad = |what: &str| Error::WrongCode(format!("the code exchange failed: {what}"));
    let confirm = |k: &str| -> Result<Option<[u8; 32]>, Error> {
        match v.get(k) {
            None => Ok(None),
            Some(x) => {
                let bytes = x
                    .as_str()
                    .and_then(|s| unhex(s, 32))
                    .ok_or_else(|| bad("a confirmation that is not 32 bytes of hex"))?;
                let mut c = [0u8; 32];
                c.copy_from_slice(&bytes);
                Ok(Some(c))
            }
        }
    };
    match field("type") {
        Some("ready") => Ok(Incoming::Ready),
        Some("pake") => {
            let msg = field("msg")
                .and_then(|s| unhex(s, PAKE_MSG_LEN))
                .ok_or_else(|| bad("a PAKE message of the wrong length"))?;
            Ok(Incoming::Pake {
                msg,
                confirm: confirm("confirm")?,
            })
        }
        Some("pake_confirm") => match confirm("confirm")? {
            Some(c) => Ok(Incoming::Confirm(c)),
            None => Err(bad("a confirmation without its value")),
        },
        Some("pake_failed") => Ok(Incoming::Failed),
        Some(other) => Err(Error::peer(format!(
            "unexpected {:?} during the code exchange (does the other side run p2p-copy 0.1.x? \
             it cannot use codes like 7-guitar-rocket)",
            crate::path::escape(other)
        ))),
        None => Err(Error::peer(
            "a message without a type during the code exchange",
        )),
    }
}

/// A message of the exchange: compact JSON, `type` first, as every v1 message.
fn text(json: String) -> WireMessage {
    WireMessage::Text(json)
}

impl Pake {
    /// Start one side of the exchange for `code`: queues `hello` with the room id. `seed`
    /// must be 32 fresh random bytes (the SPAKE2 secret comes from it).
    pub fn new(
        now: Instant,
        role: Role,
        code: &PakeCode,
        seed: [u8; 32],
        config: PakeConfig,
    ) -> Pake {
        let room = code.room_id();
        let password = Password::new(code.password());
        let id_a = Identity::new(format!("p2p-copy sender {room}").as_bytes());
        let id_b = Identity::new(format!("p2p-copy receiver {room}").as_bytes());
        let mut rng = SeededRng::new(seed);
        let state = match role {
            Role::Sender => {
                let (s, msg) =
                    Spake2::<Ed25519Group>::start_a_with_rng(&password, &id_a, &id_b, &mut rng);
                State::WaitReady(s, msg)
            }
            Role::Receiver => {
                let (s, msg) =
                    Spake2::<Ed25519Group>::start_b_with_rng(&password, &id_a, &id_b, &mut rng);
                State::WaitA(s, msg)
            }
        };
        let mut out = VecDeque::new();
        out.push_back(WireMessage::from(Control::Hello {
            code_hash_hex: room,
            role,
        }));
        Pake {
            role,
            room_number: code.number(),
            deadline: Some(now + config.pair_timeout),
            config,
            state,
            out,
            error: None,
            paired: false,
            room_taken: false,
        }
    }

    /// The next message to send. Drain it to `None` after every input, also after an
    /// error (the `pake_failed` that tells the other side goes out this way).
    pub fn poll_transmit(&mut self) -> Option<WireMessage> {
        self.out.pop_front()
    }

    /// When [`Pake::handle_timeout`] must be called, if the exchange is still running.
    pub fn poll_timeout(&self) -> Option<Instant> {
        match self.state {
            State::Done(_) | State::Failed => None,
            _ => self.deadline,
        }
    }

    /// Both directions are confirmed: [`Pake::keys`] holds the session key.
    pub fn is_done(&self) -> bool {
        matches!(self.state, State::Done(_))
    }

    /// The other side has shown up (the sender got `ready`, the receiver message A).
    pub fn is_paired(&self) -> bool {
        self.paired
    }

    /// The relay refused the room because a client in the same role waits in it: another
    /// transfer uses the same number.
    pub fn room_taken(&self) -> bool {
        self.room_taken
    }

    /// The keys, once [`Pake::is_done`].
    pub fn keys(&self) -> Option<&PakeKeys> {
        match &self.state {
            State::Done(k) => Some(k),
            _ => None,
        }
    }

    fn fail(&mut self, e: Error) -> Error {
        if matches!(e, Error::WrongCode(_)) {
            self.out.push_back(text(format!(
                r#"{{"type":"pake_failed","why":"{WRONG_CODE}"}}"#
            )));
        }
        self.state = State::Failed;
        self.error = Some(e.clone());
        e
    }

    fn wrong_code(&mut self) -> Error {
        self.fail(Error::WrongCode(format!(
            "wrong code: the other side in room {} holds a different code (each attempt \
             gives a guesser one try)",
            self.room_number
        )))
    }

    /// A message from the relay connection.
    ///
    /// # Errors
    /// [`Error::WrongCode`] when a confirmation does not verify, a PAKE message is not a
    /// valid point, or the other side says the code is wrong; [`Error::Peer`] for a
    /// message that does not belong in the exchange. Sticky.
    pub fn handle_message(&mut self, now: Instant, msg: WireMessage) -> Result<(), Error> {
        Error::sticky(&self.error)?;
        let incoming = match parse(&msg) {
            Ok(i) => i,
            Err(e) => return Err(self.fail(e)),
        };
        if let Incoming::Failed = incoming {
            // Not answered with a `pake_failed` of our own: the other side has stopped.
            let e = Error::WrongCode(format!(
                "wrong code: the other side in room {} says the code does not match",
                self.room_number
            ));
            self.state = State::Failed;
            self.error = Some(e.clone());
            return Err(e);
        }
        let state = std::mem::replace(&mut self.state, State::Failed);
        match (state, incoming) {
            (State::WaitReady(spake, msg), Incoming::Ready) => {
                self.paired = true;
                self.out
                    .push_back(text(format!(r#"{{"type":"pake","msg":"{}"}}"#, hex(&msg))));
                self.state = State::WaitReply(spake);
                self.deadline = Some(now + self.config.step_timeout);
                Ok(())
            }
            (
                State::WaitReply(spake),
                Incoming::Pake {
                    msg,
                    confirm: Some(confirm),
                },
            ) => {
                let Ok(key) = spake.finish(&msg) else {
                    return Err(self.wrong_code());
                };
                let d = derive(&key);
                if !bool::from(d.confirm_receiver.ct_eq(&confirm)) {
                    return Err(self.wrong_code());
                }
                self.out.push_back(text(format!(
                    r#"{{"type":"pake_confirm","confirm":"{}"}}"#,
                    hex(&d.confirm_sender)
                )));
                self.state = State::Done(PakeKeys { session: d.session });
                Ok(())
            }
            (State::WaitA(spake, own), Incoming::Pake { msg, confirm: None }) => {
                self.paired = true;
                let Ok(key) = spake.finish(&msg) else {
                    return Err(self.wrong_code());
                };
                let d = derive(&key);
                self.out.push_back(text(format!(
                    r#"{{"type":"pake","msg":"{}","confirm":"{}"}}"#,
                    hex(&own),
                    hex(&d.confirm_receiver)
                )));
                self.state = State::WaitConfirm(d);
                self.deadline = Some(now + self.config.step_timeout);
                Ok(())
            }
            (State::WaitConfirm(d), Incoming::Confirm(confirm)) => {
                if !bool::from(d.confirm_sender.ct_eq(&confirm)) {
                    return Err(self.wrong_code());
                }
                self.state = State::Done(PakeKeys { session: d.session });
                Ok(())
            }
            (State::Done(k), _) => {
                self.state = State::Done(k);
                Err(self.fail(Error::misuse(
                    "the exchange is over: hand later messages to the session",
                )))
            }
            _ => Err(self.fail(Error::peer(
                "a message out of order during the code exchange",
            ))),
        }
    }

    /// The connection closed (with the close code and reason, if any) before the
    /// exchange ended. Returns the error that ends the exchange.
    pub fn handle_close(&mut self, code: Option<u16>, reason: &str) -> Error {
        if let Some(e) = &self.error {
            return e.clone();
        }
        let e = if self.paired {
            Error::ConnectionLost(format!(
                "the other side left during the code exchange in room {}",
                self.room_number
            ))
        } else if code == Some(1013) && reason.eq_ignore_ascii_case("duplicate role for code") {
            self.room_taken = true;
            Error::RoomInUse(format!(
                "room {} is in use at the relay: another transfer has the same number \
                 (send again for a new code)",
                self.room_number
            ))
        } else {
            closed_error(code, reason, "before the other side arrived")
        };
        self.fail(e)
    }

    /// Time passed; call at [`Pake::poll_timeout`].
    ///
    /// # Errors
    /// [`Error::Timeout`] when the deadline passed. Sticky.
    pub fn handle_timeout(&mut self, now: Instant) -> Result<(), Error> {
        Error::sticky(&self.error)?;
        match self.poll_timeout() {
            Some(d) if now >= d => {}
            _ => return Ok(()),
        }
        let n = self.room_number;
        let e = match (&self.state, self.role) {
            (State::WaitReady(..), _) => Error::Timeout(format!(
                "no receiver came to room {n} within {} s: the code has expired (--ttl sets how long it waits)",
                self.config.pair_timeout.as_secs()
            )),
            (State::WaitA(..), _) => Error::Timeout(format!(
                "no sender in room {n} within {} s: check the code's number and the relay \
                 (a sender of p2p-copy 0.1.x cannot use codes like 7-guitar-rocket)",
                self.config.pair_timeout.as_secs()
            )),
            _ => Error::Timeout(format!(
                "the other side stopped answering during the code exchange in room {n}"
            )),
        };
        Err(self.fail(e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn code(s: &str) -> PakeCode {
        PakeCode::parse(s).unwrap()
    }

    fn pair(a: &str, b: &str, seed: u8) -> (Pake, Pake, Instant) {
        let now = Instant::now();
        let s = Pake::new(
            now,
            Role::Sender,
            &code(a),
            [seed; 32],
            PakeConfig::default(),
        );
        let r = Pake::new(
            now,
            Role::Receiver,
            &code(b),
            [seed ^ 0xff; 32],
            PakeConfig::default(),
        );
        (s, r, now)
    }

    fn drain(p: &mut Pake) -> Vec<WireMessage> {
        std::iter::from_fn(|| p.poll_transmit()).collect()
    }

    fn ready() -> WireMessage {
        WireMessage::Text(r#"{"type":"ready"}"#.into())
    }

    fn kind(m: &WireMessage) -> String {
        let WireMessage::Text(t) = m else {
            panic!("binary")
        };
        let v: serde_json::Value = serde_json::from_str(t).unwrap();
        v["type"].as_str().unwrap().to_owned()
    }

    /// Run a whole exchange, passing each message through `tamper`.
    fn run(
        s: &mut Pake,
        r: &mut Pake,
        now: Instant,
        mut tamper: impl FnMut(Role, WireMessage) -> WireMessage,
    ) -> (Result<(), Error>, Result<(), Error>) {
        let hs = drain(s);
        let hr = drain(r);
        assert_eq!(kind(&hs[0]), "hello");
        assert_eq!(kind(&hr[0]), "hello");
        let mut rs = s.handle_message(now, ready());
        let mut rr = Ok(());
        for _ in 0..4 {
            for m in drain(s) {
                if rr.is_ok() {
                    rr = r.handle_message(now, tamper(Role::Sender, m));
                }
            }
            for m in drain(r) {
                if rs.is_ok() {
                    rs = s.handle_message(now, tamper(Role::Receiver, m));
                }
            }
        }
        (rs, rr)
    }

    #[test]
    fn the_same_code_gives_both_sides_the_same_key_in_three_messages() {
        let (mut s, mut r, now) = pair("7-guitar-rocket", "7-guitar-rocket", 1);
        let mut seen = Vec::new();
        let (a, b) = run(&mut s, &mut r, now, |role, m| {
            seen.push((role, kind(&m)));
            m
        });
        a.unwrap();
        b.unwrap();
        assert_eq!(
            seen,
            [
                (Role::Sender, "pake".to_owned()),
                (Role::Receiver, "pake".to_owned()),
                (Role::Sender, "pake_confirm".to_owned()),
            ]
        );
        assert!(s.is_done() && r.is_done());
        assert_eq!(s.keys(), r.keys());
        assert!(drain(&mut s).is_empty() && drain(&mut r).is_empty());
        // A fresh exchange with the same code gives another key.
        let (mut s2, mut r2, now) = pair("7-guitar-rocket", "7-guitar-rocket", 2);
        let (a, b) = run(&mut s2, &mut r2, now, |_, m| m);
        a.unwrap();
        b.unwrap();
        assert_ne!(s.keys(), s2.keys());
        assert_eq!(s2.keys(), r2.keys());
    }

    #[test]
    fn hello_names_the_room_and_never_the_words() {
        let (mut s, _, _) = pair("7-guitar-rocket", "7-guitar-rocket", 1);
        let WireMessage::Text(hello) = s.poll_transmit().unwrap() else {
            panic!()
        };
        assert_eq!(
            hello,
            format!(
                r#"{{"type":"hello","code_hash_hex":"{}","role":"sender"}}"#,
                code("7-x-y").room_id()
            )
        );
        assert!(!hello.contains("guitar"));
    }

    #[test]
    fn a_wrong_code_ends_both_sides_with_wrong_code() {
        let (mut s, mut r, now) = pair("7-guitar-rocket", "7-guitar-racket", 3);
        let (a, b) = run(&mut s, &mut r, now, |_, m| m);
        assert!(matches!(a, Err(Error::WrongCode(_))), "{a:?}");
        assert!(matches!(b, Err(Error::WrongCode(_))), "{b:?}");
        assert!(s.keys().is_none() && r.keys().is_none());
        assert!(b.unwrap_err().to_string().contains("wrong code"));
        // The side that found out told the other once; the other does not answer it.
        assert!(drain(&mut s).is_empty() && drain(&mut r).is_empty());
    }

    #[test]
    fn a_relay_that_replaces_the_pake_messages_gets_both_sides_to_abort() {
        // The relay plays each side with its own guess of the words.
        let (mut s, mut r, now) = pair("7-guitar-rocket", "7-guitar-rocket", 4);
        let (mut ms, mut mr, _) = pair("7-acid-zoom", "7-acid-zoom", 5);
        drain(&mut ms);
        drain(&mut mr);
        ms.handle_message(now, ready()).unwrap();
        let fake_a = drain(&mut ms).remove(0);
        let (a, b) = run(&mut s, &mut r, now, |role, m| {
            match (role, kind(&m).as_str()) {
                (Role::Sender, "pake") => {
                    // The real A goes to the relay's own receiver half.
                    let _ = mr.handle_message(now, m);
                    fake_a.clone()
                }
                (Role::Receiver, "pake") => {
                    // The real B and confirmation go to the relay's own sender half.
                    let _ = ms.handle_message(now, m);
                    drain(&mut mr).pop().unwrap()
                }
                _ => m,
            }
        });
        assert!(matches!(a, Err(Error::WrongCode(_))), "{a:?}");
        assert!(matches!(b, Err(Error::WrongCode(_))), "{b:?}");
        assert!(ms.keys().is_none(), "the relay's guess was wrong: no key");
    }

    #[test]
    fn a_message_replayed_from_another_session_or_room_does_not_confirm() {
        let (mut s1, mut r1, now) = pair("7-guitar-rocket", "7-guitar-rocket", 6);
        let mut old = Vec::new();
        let (a, b) = run(&mut s1, &mut r1, now, |_, m| {
            old.push(m.clone());
            m
        });
        a.unwrap();
        b.unwrap();
        // The relay answers a new sender with the old receiver's reply.
        let (mut s2, _, now) = pair("7-guitar-rocket", "7-guitar-rocket", 7);
        drain(&mut s2);
        s2.handle_message(now, ready()).unwrap();
        let e = s2.handle_message(now, old[1].clone()).unwrap_err();
        assert!(matches!(e, Error::WrongCode(_)), "{e:?}");
        // Another room: the identities differ, so the same words do not confirm.
        let (mut s3, mut r3, now) = pair("7-guitar-rocket", "8-guitar-rocket", 8);
        let (a, b) = run(&mut s3, &mut r3, now, |_, m| m);
        assert!(a.is_err() && b.is_err());
    }

    #[test]
    fn malformed_points_and_lengths_are_wrong_code_never_a_panic() {
        for msg in [
            format!(
                r#"{{"type":"pake","msg":"{}","confirm":"{}"}}"#,
                "ff".repeat(33),
                "00".repeat(32)
            ),
            format!(
                r#"{{"type":"pake","msg":"{}","confirm":"{}"}}"#,
                "42".repeat(32),
                "00".repeat(32)
            ),
            format!(
                r#"{{"type":"pake","msg":"zz","confirm":"{}"}}"#,
                "00".repeat(32)
            ),
            format!(
                r#"{{"type":"pake","msg":"{}","confirm":"00"}}"#,
                "42".repeat(33)
            ),
        ] {
            let (mut s, _, now) = pair("7-guitar-rocket", "7-guitar-rocket", 9);
            drain(&mut s);
            s.handle_message(now, ready()).unwrap();
            drain(&mut s);
            let e = s
                .handle_message(now, WireMessage::Text(msg.clone()))
                .unwrap_err();
            assert!(matches!(e, Error::WrongCode(_)), "{msg}: {e:?}");
            assert_eq!(kind(&s.poll_transmit().unwrap()), "pake_failed");
            // Sticky.
            assert_eq!(s.handle_message(now, ready()).unwrap_err(), e);
        }
    }

    #[test]
    fn deadlines_say_who_did_not_come() {
        let (mut s, mut r, now) = pair("7-guitar-rocket", "7-guitar-rocket", 10);
        let later = now + Duration::from_secs(601);
        assert_eq!(s.poll_timeout(), Some(now + Duration::from_secs(600)));
        let e = s.handle_timeout(later).unwrap_err();
        assert!(e.to_string().contains("no receiver came to room 7"), "{e}");
        let e = r.handle_timeout(later).unwrap_err();
        assert!(e.to_string().contains("no sender in room 7"), "{e}");
    }

    #[test]
    fn a_duplicate_in_the_room_is_reported_as_the_room_in_use() {
        let (mut s, _, _) = pair("7-guitar-rocket", "7-guitar-rocket", 11);
        let e = s.handle_close(Some(1013), "Duplicate role for code");
        assert!(s.room_taken());
        assert!(matches!(e, Error::RoomInUse(_)), "{e:?}");
        assert!(e.to_string().contains("room 7 is in use"), "{e}");
    }

    proptest! {
        #[test]
        fn any_messages_never_panic_and_never_confirm(
            msgs in proptest::collection::vec(
                prop_oneof![
                    Just(r#"{"type":"ready"}"#.to_owned()),
                    "[0-9a-f]{66}".prop_map(|m| format!(r#"{{"type":"pake","msg":"{m}"}}"#)),
                    ("[0-9a-f]{66}", "[0-9a-f]{64}").prop_map(|(m, c)| format!(r#"{{"type":"pake","msg":"{m}","confirm":"{c}"}}"#)),
                    "[0-9a-f]{64}".prop_map(|c| format!(r#"{{"type":"pake_confirm","confirm":"{c}"}}"#)),
                    ".{0,40}",
                ],
                0..6,
            ),
            sender in any::<bool>(),
        ) {
            let now = Instant::now();
            let role = if sender { Role::Sender } else { Role::Receiver };
            let mut p = Pake::new(now, role, &code("7-guitar-rocket"), [3; 32], PakeConfig::default());
            for m in msgs {
                let _ = p.handle_message(now, WireMessage::Text(m));
                drain(&mut p);
            }
            prop_assert!(!p.is_done());
        }
    }
}
