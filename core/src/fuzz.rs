//! Fuzz bodies: each takes arbitrary bytes, drives one part of the core with them and
//! asserts what must hold for every input. A panic is a finding.
//!
//! Compiled with the `fuzzing` feature (for the targets in `fuzz/fuzz_targets/`, which
//! are one-line calls of these functions) and in the crate's own tests, which replay
//! every committed file under `fuzz/corpus/<target>/` through the matching body, so the
//! corpus is checked by every `cargo test`.
//!
//! The state-machine bodies read their input as a script: the first bytes choose the
//! settings, then each byte picks the next step (a message, an I/O completion, a job run,
//! a timeout, a close) and the bytes after it fill that step's fields. Messages come from
//! well-formed templates with fuzzed fields as well as from raw bytes, and a script can
//! build correctly chained, compressed and sealed data messages with a fixed key (no
//! Argon2id per input), so the fuzzer gets past every integrity check into deep states.
//! A body keeps a model of what it fed and checks every output against it.

use crate::chain::resume_chain;
use crate::Error;

/// Key of every encrypted session the bodies run: fixed, so no input pays for Argon2id.
const KEY: [u8; 32] = [0x5a; 32];
/// Code hash both sides announce.
const CODE_HASH: [u8; 32] = [0x11; 32];
/// A piece, as a `u64` for offset arithmetic.
const CHUNK: u64 = crate::wire::CHUNK_SIZE as u64;

/// Decode a message both ways (JSON text and binary data message) and check that what
/// parses re-encodes to the same value; also feed the bytes to the other decoders peer
/// text meets: hex, peer paths, name escaping and capped zstd.
pub fn decode_message(data: &[u8]) {
    decode::run(data);
}

/// Drive a [`Receiver`](crate::receiver::Receiver) with a script of messages, I/O
/// completions, job runs and timeouts, checking that it never writes past a declared
/// size, never writes data it did not verify, asks only for safe paths, closes and
/// commits only complete files (and commits only after `eof` and the sync), refuses
/// completions nobody asked for and keeps its first error.
pub fn receiver(data: &[u8]) -> ReceiverRun {
    receiver_body::run(data)
}

/// Drive a [`Sender`](crate::sender::Sender) of a few files with a script of answers,
/// read completions (correct, short, failed), job runs and transmit slots, checking every
/// message it sends the way a receiver would, down to the file bytes.
pub fn sender(data: &[u8]) -> SenderRun {
    sender_body::run(data)
}

/// Drive a [`Relay`](crate::relay::Relay) with a script of connects, messages,
/// disconnects, flushed queues and clock steps, checking every output against a reference
/// model of the pairing rules, limits and deadlines.
pub fn relay(data: &[u8]) -> RelayRun {
    relay_body::run(data)
}

/// Read bytes as STUN every way the relay and a client do: the demultiplexing check, a
/// Binding request a server may answer (answered for an IPv4 and an IPv6 source) and a
/// response to the request whose transaction id the bytes carry. Checks that nothing is
/// answered that does not look like STUN, that an answer is never more than
/// [`MAX_RESPONSE_GROWTH`](crate::stun::MAX_RESPONSE_GROWTH) bytes larger than the request
/// and that it reads back as the source address, and that a parsed response carries the
/// transaction id it was matched against.
pub fn stun(data: &[u8]) {
    stun_body::run(data);
}

/// Drive a [`DirectPath`](crate::direct::DirectPath) of either role, plain or
/// encrypted, with a script of candidate lists (well-formed, sealed right or wrong,
/// overlong, with bad addresses), verdicts, probe results, clock steps and raw text,
/// checking that it probes only usable addresses of the one authentic list it accepted,
/// switches only to a path verified with the exchanged fingerprint (the sender only
/// right after its `direct_ready`), gives up only at its deadline or when the peer did,
/// decides once and keeps its first error.
pub fn direct(data: &[u8]) -> DirectRun {
    direct_body::run(data)
}

/// Drive a [`SenderHandover`](crate::handover::SenderHandover) and a
/// [`ReceiverHandover`](crate::handover::ReceiverHandover) with a script of sends,
/// deliveries, acknowledgements (true or forged counts), losses and resumes (true or
/// forged), checking that nothing panics, that a forged count is refused, and that when
/// the peers follow the protocol the receiver gets every message once and in order. Returns how many messages arrived.
pub fn handover(data: &[u8]) -> usize {
    handover_body::run(data)
}

/// Drive a sender's and a receiver's [`Pake`](crate::pake::Pake) (same code or not)
/// through a relay that the script controls: it delivers, drops, reorders, replays,
/// corrupts and injects messages, closes connections and moves the clock. Checks that
/// nothing panics, that different codes never confirm, that two sides that both
/// confirmed hold the same key, and that a failed side stays failed. Returns whether
/// the sender and the receiver confirmed.
pub fn pake(data: &[u8]) -> (bool, bool) {
    pake_body::run(data)
}

pub(crate) mod pake_body {
    use std::collections::VecDeque;
    use std::time::{Duration, Instant};

    use crate::code::PakeCode;
    use crate::pake::{Pake, PakeConfig};
    use crate::wire::{Role, WireMessage};

    const MAX_STEPS: usize = 64;

    fn corrupt(m: &WireMessage, at: u8, to: u8) -> WireMessage {
        match m {
            WireMessage::Text(t) => {
                let mut b = t.clone().into_bytes();
                if !b.is_empty() {
                    let i = usize::from(at) % b.len();
                    const BYTES: &[u8] = b"0123456789abcdef\"{}:,x";
                    b[i] = BYTES[usize::from(to) % BYTES.len()];
                }
                WireMessage::Text(String::from_utf8_lossy(&b).into_owned())
            }
            WireMessage::Binary(b) => WireMessage::Binary(b.clone()),
        }
    }

    pub(crate) fn run(data: &[u8]) -> (bool, bool) {
        let Some((&first, mut script)) = data.split_first() else {
            return (false, false);
        };
        let same = first & 1 == 0;
        let t0 = Instant::now();
        let mut now = t0;
        let code = PakeCode::parse("7-guitar-rocket").expect("valid code");
        let other = PakeCode::parse(if same {
            "7-guitar-rocket"
        } else {
            "7-guitar-racket"
        })
        .expect("valid code");
        let mut s = Pake::new(now, Role::Sender, &code, [first; 32], PakeConfig::default());
        let mut r = Pake::new(
            now,
            Role::Receiver,
            &other,
            [!first; 32],
            PakeConfig::default(),
        );
        let mut to_r: VecDeque<WireMessage> = VecDeque::new();
        let mut to_s: VecDeque<WireMessage> = VecDeque::new();
        let mut last: Option<(bool, WireMessage)> = None;
        let mut s_failed = false;
        let mut r_failed = false;
        let mut steps = 0;
        // The hellos go to the relay, not the peer.
        assert!(s.poll_transmit().is_some() && r.poll_transmit().is_some());
        while let Some((&op, rest)) = script.split_first() {
            script = rest;
            steps += 1;
            if steps > MAX_STEPS {
                break;
            }
            let arg = |script: &mut &[u8]| -> u8 {
                let Some((&b, rest)) = script.split_first() else {
                    return 0;
                };
                *script = rest;
                b
            };
            // Which side gets the message, and the message.
            let delivery: Option<(bool, WireMessage)> = match op % 9 {
                0 => to_r.pop_front().map(|m| (true, m)),
                1 => to_s.pop_front().map(|m| (false, m)),
                2 => Some((false, WireMessage::Text(r#"{"type":"ready"}"#.into()))),
                3 => {
                    let (at, to) = (arg(&mut script), arg(&mut script));
                    to_r.pop_front().map(|m| (true, corrupt(&m, at, to)))
                }
                4 => {
                    let (at, to) = (arg(&mut script), arg(&mut script));
                    to_s.pop_front().map(|m| (false, corrupt(&m, at, to)))
                }
                5 => last.clone(),
                6 => {
                    let len = usize::from(arg(&mut script) % 80).min(script.len());
                    let (raw, rest) = script.split_at(len);
                    script = rest;
                    let text = String::from_utf8_lossy(raw).into_owned();
                    Some((op & 0x10 == 0, WireMessage::Text(text)))
                }
                7 => {
                    now += Duration::from_secs(u64::from(arg(&mut script)) * 10);
                    s_failed |= s.handle_timeout(now).is_err();
                    r_failed |= r.handle_timeout(now).is_err();
                    None
                }
                _ => {
                    let e = if op & 0x10 == 0 {
                        s_failed = true;
                        s.handle_close(Some(1000), "")
                    } else {
                        r_failed = true;
                        r.handle_close(None, "")
                    };
                    assert!(!e.to_string().is_empty());
                    None
                }
            };
            if let Some((to_receiver, m)) = delivery {
                last = Some((to_receiver, m.clone()));
                let (side, failed) = if to_receiver {
                    (&mut r, &mut r_failed)
                } else {
                    (&mut s, &mut s_failed)
                };
                let was_done = side.is_done();
                match side.handle_message(now, m) {
                    Ok(()) => assert!(!*failed, "a failed side accepted a message"),
                    Err(_) => {
                        *failed = true;
                        assert!(side.keys().is_none() || was_done);
                    }
                }
            }
            while let Some(m) = s.poll_transmit() {
                to_r.push_back(m);
            }
            while let Some(m) = r.poll_transmit() {
                to_s.push_back(m);
            }
            assert!(to_r.len() + to_s.len() < 4 * MAX_STEPS);
        }
        if !same {
            assert!(!s.is_done() && !r.is_done(), "different codes confirmed");
        }
        if let (Some(a), Some(b)) = (s.keys(), r.keys()) {
            assert_eq!(a, b, "both confirmed with different keys");
        }
        (s.is_done(), r.is_done())
    }
}

/// Read bytes as the serverless parts: a ticket's text (which, when it parses, must
/// print back to a ticket that parses to the same), an SNTP answer, and a script that
/// drives a [`Handshake`](crate::serverless::Handshake) against a true peer (with the
/// same code or another, pinned or not) while forged, replayed and damaged messages
/// come in between. Checks that the outcome, once reached, never changes, that a side
/// is authenticated by tickets only when it pinned its peer, and by code only when the
/// true peer had the same code. Returns whether it
/// authenticated.
pub fn serverless(data: &[u8]) -> bool {
    serverless_body::run(data)
}

pub(crate) mod handover_body {
    use std::collections::VecDeque;

    use bytes::Bytes;

    use crate::handover::{ReceiverHandover, SenderHandover};
    use crate::wire::{Control, WireMessage};

    /// A binary message of `len` bytes (at least 8) that carries its number `i`.
    pub(crate) fn msg(i: u64, len: usize) -> WireMessage {
        let mut v = vec![0u8; len.max(8)];
        v[..8].copy_from_slice(&i.to_be_bytes());
        WireMessage::Binary(Bytes::from(v))
    }

    /// The number [`msg`] put in a message.
    pub(crate) fn id(m: &WireMessage) -> u64 {
        match m {
            WireMessage::Binary(b) => u64::from_be_bytes(b[..8].try_into().expect("8 bytes")),
            WireMessage::Text(_) => u64::MAX,
        }
    }

    pub(super) fn run(data: &[u8]) -> usize {
        let mut s = SenderHandover::new();
        let mut r = ReceiverHandover::new();
        let mut next = 0u64;
        let mut wire: VecDeque<WireMessage> = VecDeque::new();
        let mut got: Vec<u64> = Vec::new();
        let mut acks: VecDeque<u64> = VecDeque::new();
        let mut resumed = false;
        let mut it = data.iter().copied();
        while let Some(op) = it.next() {
            let arg = it.next().unwrap_or(0);
            match op % 6 {
                // Send one message of arg * 64 KiB, when allowed.
                0 if s.can_send() => {
                    let m = msg(next, usize::from(arg) * 65_536);
                    s.on_sent(&m);
                    wire.push_back(m);
                    next += 1;
                }
                // Deliver up to arg messages on the direct path.
                1 if r.on_direct() => {
                    for _ in 0..arg {
                        let Some(m) = wire.pop_front() else { break };
                        got.push(id(&m));
                        if let Some(Control::DirectAck { received }) = r.on_received(m.len()) {
                            acks.push_back(received);
                        }
                    }
                }
                // Pass the oldest acknowledgement to the sender.
                2 => {
                    if let Some(n) = acks.pop_front() {
                        if s.on_direct() {
                            s.on_ack(n).expect("a true acknowledgement is taken");
                        }
                    }
                }
                // A forged count: refused when out of range, and nothing changes.
                3 => {
                    let forged = s.sent() + 1 + u64::from(arg);
                    assert!(
                        s.on_ack(forged).is_err(),
                        "a count past what was sent is refused"
                    );
                }
                // The direct path fails: the rest goes on the relay, resent from the count.
                4 if s.on_direct() && !resumed => {
                    let lost = s.lost().expect("the first loss says direct_lost");
                    let Control::DirectLost { attempt } = lost else {
                        panic!("{lost:?}")
                    };
                    let Control::DirectResume { attempt, received } =
                        r.on_lost(attempt).expect("a true direct_lost is answered")
                    else {
                        panic!("not a direct_resume")
                    };
                    wire.clear(); // in flight on the dead path: gone
                    let again = s
                        .on_resume(attempt, received)
                        .expect("a true count is taken");
                    got.extend(again.iter().map(id));
                    resumed = true;
                }
                // Raw protocol errors on the receiver: a second direct_lost, another attempt.
                5 if !r.on_direct() => {
                    assert!(r.on_lost(u32::from(arg)).is_err());
                }
                _ => {}
            }
        }
        // The session ends: whatever is still in flight arrives (on the direct path, or
        // the rest goes on the relay after a loss).
        if s.on_direct() {
            while let Some(m) = wire.pop_front() {
                got.push(id(&m));
                r.on_received(m.len());
            }
        }
        assert_eq!(
            got,
            (0..next).collect::<Vec<_>>(),
            "every message once, in order"
        );
        got.len()
    }
}

/// How deep a [`direct`] run got.
#[derive(Debug, Default)]
pub struct DirectRun {
    /// Probes the machine asked for.
    pub probes: usize,
    /// The machine switched to a direct path.
    pub switched: bool,
    /// The machine gave the attempt up.
    pub gave_up: bool,
    /// The sticky error, if the peer broke the rules.
    pub error: Option<Error>,
}

/// How deep a [`receiver`] run got.
#[derive(Debug, Default)]
pub struct ReceiverRun {
    /// The session finished successfully.
    pub done: bool,
    /// Writes the receiver asked for.
    pub writes: usize,
    /// The receiver sent a resume answer.
    pub answered: bool,
    /// The sticky error, if the session failed.
    pub error: Option<Error>,
}

/// How deep a [`sender`] run got.
#[derive(Debug, Default)]
pub struct SenderRun {
    /// The session finished successfully.
    pub done: bool,
    /// Data messages sent and checked.
    pub pieces: usize,
    /// A file was sent from a resume offset.
    pub appended: bool,
    /// Files skipped because the receiver had them whole.
    pub skipped: usize,
    /// The sticky error, if the session failed.
    pub error: Option<Error>,
}

/// How deep a [`relay`] run got.
#[derive(Debug, Default)]
pub struct RelayRun {
    /// Pairs formed.
    pub pairs: usize,
    /// Connections refused at connect.
    pub refused: usize,
    /// Closing connections dropped after their grace period.
    pub aborted: usize,
}

/// Deterministic file contents: `len` bytes of file `file` from `offset`. Pseudo-random
/// (zstd cannot shrink it) unless `compressible`, then long runs.
fn content(file: usize, offset: u64, len: usize, compressible: bool) -> Vec<u8> {
    let salt = (file as u64) << 56;
    (offset..offset + len as u64)
        .map(|p| {
            if compressible {
                (p / 512) as u8 ^ file as u8
            } else {
                (splitmix((p / 8) ^ salt) >> (8 * (p % 8))) as u8
            }
        })
        .collect()
}

fn splitmix(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// The resume chain of a local copy, as both sides compute it.
fn chain_of(file: usize, len: u64, compressible: bool) -> Option<[u8; 32]> {
    resume_chain(&content(file, 0, len as usize, compressible))
}

/// The compression mode bits 1 and 2 of a script's first byte choose.
fn compress_mode(flags: u8) -> crate::sender::CompressMode {
    use crate::sender::CompressMode;
    [
        CompressMode::Auto,
        CompressMode::On,
        CompressMode::Off,
        CompressMode::Auto,
    ][usize::from(flags >> 1 & 3)]
}

/// What [`stream`] found: whether the session succeeded and whether a tamper hit it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StreamRun {
    /// Both sides finished without an error.
    pub ok: bool,
    /// A message was changed, dropped or repeated on its way.
    pub tampered: bool,
}

/// A stream (extension `stream`) or a text (extension `text`) of a scripted length and
/// content sent through the whole in-memory session (sender, relay, receiver), with a
/// scripted change to one message on its way to the receiver. Whatever happens, the
/// receiver never puts anything but the exact stream under its final name and never shows
/// another text; an untouched session succeeds.
pub fn stream(data: &[u8]) -> StreamRun {
    use std::cell::Cell;
    use std::rc::Rc;

    use bytes::Bytes;

    use crate::crypto::{Cipher, Secrets};
    use crate::sender::SenderConfig;
    use crate::sim::{self, Direction, SimSetup};
    use crate::wire::{EntryKind, WireMessage};
    use crate::Event;

    const LENGTHS: [u64; 8] = [0, 1, 100, 5000, CHUNK - 1, CHUNK, CHUNK + 1, 2 * CHUNK + 7];
    let mut s = script::Script::new(data);
    let flags = s.byte();
    let encrypt = flags & 1 != 0;
    let compress = compress_mode(flags);
    let kind = if flags & 8 != 0 {
        EntryKind::Text
    } else {
        EntryKind::Stream
    };
    let len = match kind {
        EntryKind::Stream => s.pick(&LENGTHS),
        EntryKind::Text => u64::from(s.byte()) * 200,
    };
    let fill = s.byte();
    let content: Vec<u8> = (0..len)
        .map(|i| match kind {
            // Text: ASCII; a stream: bytes that compress for a while, then do not.
            EntryKind::Text => b'a' + ((i as u8) ^ fill) % 26,
            EntryKind::Stream if i < CHUNK / 2 => fill,
            EntryKind::Stream => (splitmix(i ^ u64::from(fill)) & 0xff) as u8,
        })
        .collect();
    let target = s.below(12);
    let op = s.byte();
    let at = s.u64();
    let seed = s.u64();
    let secrets = Secrets {
        code_hash: CODE_HASH,
        cipher: encrypt.then(|| Cipher::new(&KEY)),
    };
    let name = "piped";
    let mut setup = SimSetup::new(
        vec![(name.to_owned(), Bytes::from(content.clone()))],
        &secrets,
    );
    setup.kinds = vec![Some(kind)];
    setup.sender_config = SenderConfig {
        compress,
        confirm: true,
        ..SenderConfig::default()
    };
    setup.seed = seed;
    setup.max_steps = 200_000;
    let hit = Rc::new(Cell::new(false));
    let seen = hit.clone();
    setup.tamper = Some(Box::new(move |dir, i, msg| {
        if dir != Direction::ToReceiver || i != target || op & 3 == 3 {
            return vec![msg];
        }
        seen.set(true);
        match op & 3 {
            0 => vec![],
            1 => vec![msg.clone(), msg],
            _ => vec![match msg {
                WireMessage::Text(t) => {
                    let mut b = t.into_bytes();
                    if !b.is_empty() {
                        let k = (at % b.len() as u64) as usize;
                        b[k] ^= 1 << (op >> 5);
                    }
                    WireMessage::Text(String::from_utf8_lossy(&b).into_owned())
                }
                WireMessage::Binary(d) => {
                    let mut b = d.to_vec();
                    if !b.is_empty() {
                        let k = (at % b.len() as u64) as usize;
                        b[k] ^= 1 << (op >> 5);
                    }
                    WireMessage::Binary(Bytes::from(b))
                }
            }],
        }
    }));
    let out = sim::run(setup);
    let tampered = hit.get();
    let ok = out.sender_error.is_none() && out.receiver_error.is_none() && out.both_finished;
    assert!(!out.step_limit_hit || tampered, "an untouched session ends");
    assert!(out.violations.is_empty(), "{:?}", out.violations);
    if let Some(got) = out.files().get(name) {
        // A plain session's relay may turn the text's entry into a plain file (a bit
        // flipped in the key `kind`); it then arrives as a file, intact.
        assert!(
            kind == EntryKind::Stream || tampered,
            "a text is never written"
        );
        assert!(*got == content, "a wrong stream was put in place");
    }
    for e in &out.receiver_events {
        if let Event::Text { text, .. } = e {
            assert!(
                text.as_bytes() == content.as_slice(),
                "another text was shown"
            );
        }
    }
    if !tampered {
        assert!(
            ok,
            "an untouched session succeeds: {:?} / {:?}",
            out.sender_error, out.receiver_error
        );
        match kind {
            EntryKind::Stream => assert!(out.files().contains_key(name)),
            EntryKind::Text => assert!(out
                .receiver_events
                .iter()
                .any(|e| matches!(e, Event::Text { .. }))),
        }
    }
    StreamRun { ok, tampered }
}

/// The resume chain of a local copy with the given hash (BLAKE3 once the fast data path
/// is agreed).
fn chain_of_kind(
    kind: crate::chain::ChainKind,
    file: usize,
    len: u64,
    compressible: bool,
) -> Option<[u8; 32]> {
    crate::chain::resume_chain_of(kind, &content(file, 0, len as usize, compressible))
}

mod script {
    /// A reader of fuzz input. Every read succeeds: once the input is used up it yields
    /// zeros, so any byte string is a complete script.
    pub(super) struct Script<'a> {
        rest: &'a [u8],
    }

    impl<'a> Script<'a> {
        pub(super) fn new(data: &'a [u8]) -> Self {
            Script { rest: data }
        }

        pub(super) fn is_empty(&self) -> bool {
            self.rest.is_empty()
        }

        pub(super) fn byte(&mut self) -> u8 {
            match self.rest.split_first() {
                Some((b, rest)) => {
                    self.rest = rest;
                    *b
                }
                None => 0,
            }
        }

        /// A number below `n` (`n` ≤ 256; 0 for `n` = 0).
        pub(super) fn below(&mut self, n: usize) -> usize {
            if n == 0 {
                0
            } else {
                usize::from(self.byte()) % n
            }
        }

        pub(super) fn pick<T: Copy>(&mut self, items: &[T]) -> T {
            items[self.below(items.len())]
        }

        pub(super) fn u64(&mut self) -> u64 {
            (0..8).fold(0, |v, _| v << 8 | u64::from(self.byte()))
        }

        /// Up to `n` bytes (fewer when the input ends).
        pub(super) fn bytes(&mut self, n: usize) -> &'a [u8] {
            let (head, tail) = self.rest.split_at(n.min(self.rest.len()));
            self.rest = tail;
            head
        }

        /// A length byte, then that many bytes.
        pub(super) fn blob(&mut self) -> &'a [u8] {
            let n = usize::from(self.byte());
            self.bytes(n)
        }
    }
}

mod decode {
    use bytes::Bytes;

    use crate::compress::decompress_capped;
    use crate::path::{escape, SafePath};
    use crate::wire::{self, Control, DataMessage, DATA_HEADER_LEN};

    pub(super) fn run(data: &[u8]) {
        if let Ok(text) = std::str::from_utf8(data) {
            text_checks(text);
        }
        match DataMessage::decode(Bytes::copy_from_slice(data)) {
            Ok(d) => {
                assert!(data.len() >= DATA_HEADER_LEN);
                let again = DataMessage::encode(d.seq, &d.chain, &d.payload);
                assert_eq!(&again[..], data, "a data message re-encodes to its bytes");
            }
            Err(e) => {
                assert!(
                    data.len() < DATA_HEADER_LEN,
                    "only short frames are refused"
                );
                assert_eq!(e.kind(), "peer");
            }
        }
        // The cap is the receiver's defence against decompression bombs.
        let cap = usize::from(data.first().copied().unwrap_or(0)) * 64;
        if let Ok(raw) = decompress_capped(data, cap) {
            assert!(raw.len() <= cap, "zstd output over its cap");
        }
    }

    fn text_checks(text: &str) {
        if let Ok(c) = Control::parse(text) {
            let json = c.to_json();
            let again = Control::parse(&json).expect("a serialised control message parses");
            assert_eq!(again, c, "a control message survives a round trip");
            assert_eq!(again.to_json(), json, "serialisation is stable");
            let prefix = format!("{{\"type\":\"{}\"", c.type_name());
            assert!(
                json.starts_with(&prefix),
                "{json} should start with {prefix}"
            );
        }
        if let Some(bytes) = wire::unhex(text) {
            assert_eq!(wire::hex(&bytes), text.to_ascii_lowercase());
        }
        if let Ok(p) = SafePath::parse(text) {
            assert_eq!(p.as_str(), text);
            assert!(!text.starts_with('/') && !text.contains('\\') && !text.contains('\0'));
            assert!(p
                .components()
                .all(|c| !c.is_empty() && c != "." && c != ".."));
            for a in p.ancestors() {
                assert!(text.starts_with(a) && text.as_bytes()[a.len()] == b'/');
            }
        }
        let shown = escape(text);
        assert!(
            !shown.chars().any(|c| c.is_control()
                || matches!(c, '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')),
            "escape left a control character in {shown:?}"
        );
    }
}

mod receiver_body {
    use std::collections::HashMap;
    use std::time::{Duration, Instant};

    use bytes::Bytes;

    use super::script::Script;
    use super::{chain_of_kind, content, ReceiverRun, CHUNK, CODE_HASH, KEY};
    use crate::chain::{Chain, ChainKind};
    use crate::crypto::{Cipher, FastCipher, NonceChain, Secrets};
    use crate::path::SafePath;
    use crate::receiver::{
        IoCompletion, IoRequest, Job, JobResult, LocalCopy, Receiver, ReceiverConfig,
    };
    use crate::wire::{
        self, Compression, Control, DataMessage, FileHeader, ManifestEntry, ResumeEntry, Role,
        WireMessage, MAX_MESSAGE_LEN,
    };
    use crate::{Error, Event};

    pub(super) const MANIFEST: u8 = 0;
    pub(super) const FILE: u8 = 1;
    pub(super) const DATA: u8 = 2;
    pub(super) const FILE_EOF: u8 = 3;
    pub(super) const EOF: u8 = 4;
    pub(super) const CONTROL: u8 = 5;
    pub(super) const TEXT: u8 = 6;
    pub(super) const BINARY: u8 = 7;
    pub(super) const IO_ONE: u8 = 8;
    pub(super) const IO_ALL: u8 = 9;
    pub(super) const JOB_ONE: u8 = 10;
    pub(super) const JOB_ALL: u8 = 11;
    pub(super) const TIMEOUT: u8 = 12;
    pub(super) const CLOSE: u8 = 13;
    pub(super) const MISUSE: u8 = 14;
    pub(super) const PUMP: u8 = 15;
    const STEPS: u8 = PUMP + 1;

    /// Paths a manifest may offer: ordinary ones, one that is also the parent of another,
    /// and every hostile form of HOSTILE.md; [`path`] adds over-long ones.
    const PATHS: &[&str] = &[
        "a.txt",
        "dir/b.bin",
        "dir",
        "dir/sub/c",
        "ünï/κ",
        "A.TXT",
        "../x",
        "a/../../x",
        "a/..",
        "/etc/x",
        "C:\\x",
        "C:x",
        "\\\\server\\share\\x",
        "a\\..\\x",
        "",
        ".",
        "a//b",
        "a/./b",
        "a\0b",
        "x\u{1b}[31m",
        "x\u{202e}y",
    ];
    const SIZES: &[u64] = &[
        0,
        1,
        7,
        100,
        4096,
        CHUNK - 1,
        CHUNK,
        CHUNK + 1,
        2 * CHUNK + 3,
        1 << 40,
        u64::MAX,
    ];
    /// Largest local copy a script finds: bounds the read-back work of one input.
    const MAX_LOCAL: u64 = 2 * CHUNK + 5;
    /// Most bytes of piece data one input may generate, so every input runs quickly.
    const DATA_BUDGET: usize = 8 * crate::wire::CHUNK_SIZE;
    const DURATIONS: &[Duration] = &[
        Duration::ZERO,
        Duration::from_millis(1),
        Duration::from_secs(1),
        Duration::from_secs(119),
        Duration::from_secs(120),
        Duration::from_secs(299),
        Duration::from_secs(300),
        Duration::from_secs(3600),
    ];

    fn path(s: &mut Script) -> String {
        match s.below(PATHS.len() + 3) {
            i if i < PATHS.len() => PATHS[i].to_owned(),
            i if i == PATHS.len() => "x".repeat(256),
            i if i == PATHS.len() + 1 => ["d"; 129].join("/"),
            _ => "ok/".repeat(3) + "f",
        }
    }

    fn size(s: &mut Script) -> u64 {
        match s.below(SIZES.len() + 1) {
            i if i < SIZES.len() => SIZES[i],
            _ => s.u64(),
        }
    }

    /// What the script knows of one manifest entry.
    #[derive(Debug, Default)]
    struct Track {
        stat_asked: bool,
        found: Option<LocalCopy>,
        opened_at: Option<u64>,
        written_to: u64,
        close_asked: bool,
        closed: bool,
        done_event: bool,
        skipped: bool,
        commit_asked: bool,
        committed: bool,
        /// Reported as not delivered (delivery confirmation: never sent, or given up).
        not_delivered: bool,
    }

    /// The file the scripted sender is streaming, as the receiver will see it.
    #[derive(Debug)]
    struct Stream {
        file: Option<usize>,
        size: u64,
        append_from: u64,
        zstd: bool,
        /// The header announced the fast data path.
        fast: bool,
        next_seq: u64,
        chain: Chain,
        last_frame: Option<Bytes>,
    }

    impl Stream {
        fn new(file: Option<usize>, h: &FileHeader) -> Stream {
            Stream {
                file,
                size: h.size,
                append_from: h.append_from,
                zstd: h.compression == Compression::Zstd,
                fast: h.fast,
                next_seq: 0,
                chain: Chain::of(if h.fast {
                    ChainKind::Blake3
                } else {
                    ChainKind::Sha256
                }),
                last_frame: None,
            }
        }
    }

    struct Harness {
        rx: Receiver,
        now: Instant,
        window: usize,
        cipher: Option<Cipher>,
        /// The receiver's nonce chain, mirrored from the messages fed.
        nonces: Option<NonceChain>,
        answer_nonce: Option<[u8; 32]>,
        /// The manifest fed last, adopted when the receiver reports it.
        offered: Option<Vec<ManifestEntry>>,
        manifest: Option<Vec<ManifestEntry>>,
        tracks: Vec<Track>,
        stream: Option<Stream>,
        /// Raw bytes of every correctly built piece, by file and offset. A script may
        /// build several for one place (a header fed again is held back and refused only
        /// after the first file's pieces are written), so each place keeps all of them.
        sent: HashMap<(usize, u64), Vec<Bytes>>,
        io: Vec<IoRequest>,
        jobs: Vec<Job>,
        last_result: Option<JobResult>,
        error: Option<Error>,
        eof_fed: bool,
        sync_asked: bool,
        synced: bool,
        hello_seen: bool,
        answered: bool,
        /// The first manifest offered delivery confirmation.
        confirm: bool,
        /// The receiver keeps metadata, and the first manifest offered it.
        keep_meta: bool,
        meta_offered: bool,
        meta_asked: bool,
        /// The encrypted session's nonce seed, which seals metadata parts.
        seed: Option<[u8; 32]>,
        /// The receiver accepts the fast data path; the first manifest offered it; the
        /// receiver said it accepts it; its cipher, once the seed is known.
        fast_config: bool,
        fast_offered: bool,
        fast_on: bool,
        fast_cipher: Option<FastCipher>,
        accepted_seen: bool,
        report_seen: bool,
        failed_events: usize,
        done: bool,
        writes: usize,
        budget: usize,
    }

    pub(super) fn run(data: &[u8]) -> ReceiverRun {
        let mut s = Script::new(data);
        let flags = s.byte();
        let encrypted = flags & 1 != 0;
        let window = 1 + usize::from(flags >> 1 & 3);
        let fast = flags & 16 != 0;
        let cipher = encrypted.then(|| Cipher::new(&KEY));
        let secrets = Secrets {
            code_hash: CODE_HASH,
            cipher: cipher.clone(),
        };
        let now = Instant::now();
        let config = ReceiverConfig {
            manifest_timeout: Duration::from_secs(300),
            idle_timeout: Duration::from_secs(120),
            window,
            direct: false,
            consent: false,
            keep_existing: false,
            reconnect: None,
            metadata: flags & 8 != 0,
            single_file: false,
            fast,
            windows_names: flags & 32 != 0,
        };
        let mut h = Harness {
            rx: Receiver::new(now, config, &secrets),
            now,
            window,
            cipher,
            nonces: None,
            answer_nonce: None,
            offered: None,
            manifest: None,
            tracks: Vec::new(),
            stream: None,
            sent: HashMap::new(),
            io: Vec::new(),
            jobs: Vec::new(),
            last_result: None,
            error: None,
            eof_fed: false,
            sync_asked: false,
            synced: false,
            hello_seen: false,
            answered: false,
            confirm: false,
            keep_meta: flags & 8 != 0,
            meta_offered: false,
            meta_asked: false,
            seed: None,
            fast_config: fast,
            fast_offered: false,
            fast_on: false,
            fast_cipher: None,
            accepted_seen: false,
            report_seen: false,
            failed_events: 0,
            done: false,
            writes: 0,
            budget: DATA_BUDGET,
        };
        h.drain();
        assert!(h.hello_seen, "the receiver says hello at once");
        while !s.is_empty() {
            h.step(&mut s);
        }
        ReceiverRun {
            done: h.done,
            writes: h.writes,
            answered: h.answered,
            error: h.error,
        }
    }

    impl Harness {
        fn step(&mut self, s: &mut Script) {
            match s.byte() % STEPS {
                MANIFEST => self.manifest(s),
                FILE => self.file(s),
                DATA => self.data(s),
                FILE_EOF => self.feed_text(Control::FileEof.to_json()),
                EOF => self.feed_text(Control::Eof.to_json()),
                CONTROL => self.control(s),
                TEXT => {
                    let text = String::from_utf8_lossy(s.blob()).into_owned();
                    self.feed_text(text);
                }
                BINARY => self.binary(s),
                IO_ONE => self.io_one(s),
                IO_ALL => {
                    self.io_all();
                }
                JOB_ONE => {
                    let i = s.below(self.jobs.len());
                    if i < self.jobs.len() {
                        self.run_job(i);
                    }
                }
                JOB_ALL => {
                    self.jobs_all();
                }
                TIMEOUT => {
                    self.now += s.pick(DURATIONS);
                    let now = self.now;
                    if self.input(|rx| rx.handle_timeout(now)).is_ok() {
                        let next = self.rx.poll_timeout();
                        assert!(
                            next.is_none_or(|t| t > now),
                            "a handled deadline stays armed"
                        );
                    }
                }
                CLOSE => self.close(s),
                MISUSE => self.misuse(s),
                _ => {
                    // Let everything in flight finish, as a runtime would.
                    for _ in 0..64 {
                        if !self.jobs_all() && !self.io_all() {
                            break;
                        }
                    }
                }
            }
        }

        // ---- inputs ----

        /// Feed one input and check the sticky-error rule around it.
        fn input(
            &mut self,
            f: impl FnOnce(&mut Receiver) -> Result<(), Error>,
        ) -> Result<(), Error> {
            let before = self.error.clone();
            let r = f(&mut self.rx);
            if let Some(e) = before {
                assert_eq!(r, Err(e), "an error is sticky");
            }
            match &r {
                Err(e) => {
                    assert_eq!(
                        self.rx.error(),
                        Some(e),
                        "the returned error is the sticky one"
                    );
                    self.error = Some(e.clone());
                }
                Ok(()) => assert!(self.rx.error().is_none()),
            }
            self.drain();
            r
        }

        fn feed_text(&mut self, text: String) {
            self.mirror(&text);
            let now = self.now;
            let _ = self.input(|rx| rx.handle_message(now, WireMessage::Text(text)));
        }

        fn feed_binary(&mut self, frame: Bytes) {
            let now = self.now;
            let _ = self.input(|rx| rx.handle_message(now, WireMessage::Binary(frame)));
        }

        /// Follow a text message the way the receiver will: nonce use, manifests offered,
        /// the file being streamed.
        fn mirror(&mut self, text: &str) {
            let Ok(c) = Control::parse(text) else {
                return;
            };
            // Only the first manifest can be accepted; a later one is held back while the
            // receiver resumes and then refused, so it must not change the mirror.
            let first = self.offered.is_none() && self.manifest.is_none();
            let is_manifest = matches!(c, Control::Manifest { .. } | Control::EncManifest { .. });
            if is_manifest && !first {
                return;
            }
            match (c, self.cipher.clone()) {
                (
                    Control::Manifest {
                        entries,
                        extensions,
                        ..
                    },
                    None,
                ) => {
                    self.confirm = extensions.iter().any(|e| e == wire::EXT_CONFIRM);
                    self.meta_offered = extensions.iter().any(|e| e == wire::EXT_METADATA);
                    self.fast_offered = extensions.iter().any(|e| e == wire::EXT_FAST);
                    self.offered = Some(entries);
                }
                (
                    Control::EncManifest {
                        nonce,
                        hidden_manifest,
                    },
                    Some(cipher),
                ) => {
                    let Some(seed) = wire::unhex(&nonce) else {
                        return;
                    };
                    let mut nonces = NonceChain::new(&seed);
                    if let Some(Control::Manifest {
                        resume,
                        entries,
                        extensions,
                        ..
                    }) = open(&cipher, nonces.next(), &hidden_manifest)
                    {
                        self.confirm = extensions.iter().any(|e| e == wire::EXT_CONFIRM);
                        self.meta_offered = extensions.iter().any(|e| e == wire::EXT_METADATA);
                        self.seed = <[u8; 32]>::try_from(seed.as_slice()).ok();
                        self.fast_offered = extensions.iter().any(|e| e == wire::EXT_FAST);
                        self.offered = Some(entries);
                        if let Ok(seed) = <[u8; 32]>::try_from(seed.as_slice()) {
                            self.fast_cipher = Some(cipher.fast(&seed));
                        }
                        if resume {
                            // The answer takes the next nonce before anything else is read.
                            self.answer_nonce = Some(nonces.next());
                        }
                    }
                    self.nonces = Some(nonces);
                }
                (Control::File(h), None) => self.start_stream(&h),
                (Control::EncFile { hidden_file }, Some(cipher)) => {
                    if let Some(n) = self.nonces.as_mut() {
                        if let Some(Control::File(h)) = open(&cipher, n.next(), &hidden_file) {
                            self.start_stream(&h);
                        }
                    }
                }
                (Control::FileEof, _) => self.stream = None,
                (Control::Eof, _) => self.eof_fed = true,
                (Control::FileAbort { skipped_nonces, .. }, _) if self.confirm => {
                    self.stream = None;
                    if let Some(n) = self.nonces.as_mut().filter(|_| skipped_nonces <= 64) {
                        for _ in 0..skipped_nonces {
                            n.next();
                        }
                    }
                }
                _ => {}
            }
        }

        fn start_stream(&mut self, h: &FileHeader) {
            let file = self
                .manifest
                .as_ref()
                .and_then(|m| m.iter().position(|e| e.path == h.path));
            self.stream = Some(Stream::new(file, h));
        }

        fn manifest(&mut self, s: &mut Script) {
            let flags = s.byte();
            let resume = flags & 1 != 0;
            let wrap = s.below(5);
            let n = s.below(5);
            let entries = (0..n)
                .map(|_| ManifestEntry {
                    path: path(s),
                    size: size(s),
                    kind: None,
                })
                .collect();
            let extensions = match flags >> 1 & 3 {
                1 => vec![wire::EXT_CONFIRM.to_owned()],
                2 => vec!["unknown-extension".to_owned()],
                3 if flags & 8 != 0 => vec![
                    wire::EXT_CONFIRM.to_owned(),
                    wire::EXT_METADATA.to_owned(),
                    wire::EXT_FAST.to_owned(),
                ],
                3 => vec![wire::EXT_CONFIRM.to_owned(), wire::EXT_FAST.to_owned()],
                _ if flags & 8 != 0 => {
                    vec![wire::EXT_CONFIRM.to_owned(), wire::EXT_METADATA.to_owned()]
                }
                _ => Vec::new(),
            };
            let plain = Control::Manifest {
                resume,
                entries,
                extensions,
                reconnect: None,
                parts: None,
            }
            .to_json();
            let seed = [s.byte(); 32];
            // Encrypted sessions mostly get a correct seal, sometimes a spoilt one or a
            // plain manifest; plain sessions sometimes get a sealed one.
            let seal = match wrap {
                0..=3 => self.cipher.is_some(),
                _ => self.cipher.is_none(),
            };
            let text = if seal {
                let cipher = self.cipher.clone().unwrap_or_else(|| Cipher::new(&KEY));
                let mut sealed = cipher.seal(&NonceChain::new(&seed).next(), plain.as_bytes());
                if wrap == 3 {
                    sealed[0] ^= 1;
                }
                Control::EncManifest {
                    nonce: wire::hex(&seed),
                    hidden_manifest: wire::hex(&sealed),
                }
                .to_json()
            } else {
                plain
            };
            self.feed_text(text);
        }

        fn file(&mut self, s: &mut Script) {
            let pick = s.byte();
            let known = self
                .manifest
                .as_ref()
                .filter(|m| !m.is_empty() && pick < 224);
            let (file, path, declared) = match known {
                Some(m) => {
                    let i = usize::from(pick) % m.len();
                    (Some(i), m[i].path.clone(), m[i].size)
                }
                None => (None, path(s), 0),
            };
            let size = match s.below(4) {
                0 | 1 => declared,
                2 => size(s),
                _ => declared.wrapping_add(1),
            };
            let kind = s.byte();
            let compression = if kind & 1 == 0 {
                Compression::None
            } else {
                Compression::Zstd
            };
            // Mostly the path both sides agreed on; sometimes the fast path unasked.
            let fast = match kind >> 1 & 3 {
                3 => !self.fast_on,
                _ => self.fast_on,
            };
            let found = file.and_then(|i| self.tracks.get(i)).and_then(|t| t.found);
            let append_from = match s.below(6) {
                0..=2 => 0,
                3 => found.map_or(0, |f| f.size),
                4 => size,
                _ => s.u64(),
            };
            let header = Control::File(FileHeader {
                path,
                size,
                compression,
                append_from,
                fast,
            });
            let wrap = s.below(5);
            let text = match &self.cipher {
                Some(cipher) if wrap < 4 => {
                    let mut nonces = self.nonces.clone().unwrap_or_else(|| NonceChain::new(b""));
                    let mut nonce = nonces.next();
                    if wrap == 3 {
                        nonce = nonces.next();
                    }
                    Control::EncFile {
                        hidden_file: wire::hex(&cipher.seal(&nonce, header.to_json().as_bytes())),
                    }
                    .to_json()
                }
                _ => header.to_json(),
            };
            self.feed_text(text);
        }

        /// A data message for the file being streamed, built right (chain, compression,
        /// seal) unless the tweak spoils one thing.
        fn data(&mut self, s: &mut Script) {
            let tweak = s.below(8);
            let pattern = match s.blob() {
                [] => &[0x41][..],
                p => p,
            };
            let st = self.stream.get_or_insert_with(|| {
                Stream::new(
                    None,
                    &FileHeader {
                        path: String::new(),
                        size: 0,
                        compression: Compression::None,
                        append_from: 0,
                        fast: false,
                    },
                )
            });
            if tweak == 3 {
                if let Some(frame) = st.last_frame.clone() {
                    self.feed_binary(frame);
                    return;
                }
            }
            let start = st
                .append_from
                .saturating_add(st.next_seq.saturating_mul(CHUNK));
            let mut len = st.size.saturating_sub(start).min(CHUNK) as usize;
            match tweak {
                4 => len += 1,
                5 => len = len.saturating_sub(1),
                _ => {}
            }
            if len > self.budget {
                return;
            }
            self.budget -= len;
            let raw: Vec<u8> = pattern.iter().cycle().take(len).copied().collect();
            let piece = if st.zstd {
                crate::compress::compress(&raw)
            } else {
                raw.clone()
            };
            let encrypted_fast = st.fast && self.cipher.is_some();
            let chain = if encrypted_fast {
                [0; 32]
            } else {
                st.chain.next(&piece)
            };
            let mut payload = match (&self.cipher, self.nonces.as_mut(), &self.fast_cipher) {
                (Some(_), Some(n), Some(f)) if st.fast => {
                    n.next();
                    let mut buf = piece;
                    f.seal_in_place(n.taken(), &mut buf, 0);
                    buf
                }
                (Some(c), Some(n), _) => c.seal(&n.next(), &piece),
                _ => piece,
            };
            if tweak == 7 {
                let i = usize::from(pattern[0]) % payload.len().max(1);
                if let Some(b) = payload.get_mut(i) {
                    *b ^= 0x80;
                }
            }
            let seq = if tweak == 6 {
                st.next_seq + 1
            } else {
                st.next_seq
            };
            let frame = DataMessage::encode(seq, &chain, &payload);
            if tweak < 4 {
                if let Some(file) = st.file {
                    self.sent
                        .entry((file, start))
                        .or_default()
                        .push(Bytes::from(raw));
                }
            }
            st.next_seq += 1;
            st.last_frame = Some(frame.clone());
            self.feed_binary(frame);
        }

        fn control(&mut self, s: &mut Script) {
            let hex_blob = |s: &mut Script| wire::hex(s.blob());
            let text = match s.below(18) {
                0 => Control::Ready.to_json(),
                1 => Control::Hello {
                    code_hash_hex: wire::hex(&CODE_HASH),
                    role: Role::Sender,
                }
                .to_json(),
                2 => Control::ReceiverManifest {
                    entries: Vec::new(),
                }
                .to_json(),
                3 => Control::EncReceiverManifest {
                    hidden_manifest: hex_blob(s),
                }
                .to_json(),
                4 => Control::EncManifest {
                    nonce: hex_blob(s),
                    hidden_manifest: hex_blob(s),
                }
                .to_json(),
                5 => Control::EncFile {
                    hidden_file: hex_blob(s),
                }
                .to_json(),
                6 => format!(
                    r#"{{"entries":[{{"size":{},"path":"a.txt","x":null}}],"resume":true,"type":"manifest"}}"#,
                    size(s)
                ),
                7 => r#"{"type":"file","path":"a.txt","size":-1}"#.to_owned(),
                8 => r#"{"type":"file","path":"a.txt","size":1,"compression":"gzip"}"#.to_owned(),
                9 => "[1,2]".to_owned(),
                10 => Control::FileAbort {
                    skipped_nonces: s.below(70) as u64,
                    why: "changed".to_owned(),
                }
                .to_json(),
                11 => Control::Report(wire::Report {
                    ok: s.byte() & 1 == 0,
                    delivered: size(s),
                    failed: Vec::new(),
                    error: Some(String::from_utf8_lossy(s.blob()).into_owned()),
                })
                .to_json(),
                12 => Control::EncReport {
                    hidden_report: hex_blob(s),
                }
                .to_json(),
                13 => self.metadata_part(s),
                14 => Control::EncMetadata {
                    part: s.below(3) as u32,
                    hidden_metadata: hex_blob(s),
                }
                .to_json(),
                // Parts of a manifest this receiver never agreed to (extension parts).
                15 => Control::ManifestMore(wire::Part {
                    index: s.below(3) as u64,
                    entries: vec![ManifestEntry {
                        path: path(s),
                        size: size(s),
                        kind: None,
                    }],
                })
                .to_json(),
                16 => Control::EncPart {
                    index: s.below(3) as u64,
                    hidden_part: hex_blob(s),
                }
                .to_json(),
                _ => r#"{"type":"nope"}"#.to_owned(),
            };
            self.feed_text(text);
        }

        /// A metadata part naming manifest files (or others) and directories, with any
        /// mode and time, sealed as the session seals it (or not).
        fn metadata_part(&mut self, s: &mut Script) -> String {
            let manifest = self.manifest.clone().unwrap_or_default();
            let files = (0..s.below(4))
                .map(|_| {
                    let i = s.below(manifest.len() + 1);
                    wire::MetaEntry {
                        path: manifest.get(i).map_or_else(|| path(s), |e| e.path.clone()),
                        mode: (s.byte() & 1 == 0).then(|| s.u64() as u32 & 0o17777),
                        mtime: (s.byte() & 1 == 0).then(|| s.u64() as i64),
                    }
                })
                .collect();
            let dirs = (0..s.below(3))
                .map(|_| wire::MetaEntry {
                    path: path(s),
                    mode: None,
                    mtime: (s.byte() & 1 == 0).then(|| s.u64() as i64 % 1_000_000_000_000),
                })
                .collect();
            let part = wire::MetadataPart {
                part: s.below(3) as u32,
                files,
                dirs,
                last: s.byte() & 3 != 0,
            };
            let number = part.part;
            let plain = Control::Metadata(part).to_json();
            match (&self.cipher, self.seed) {
                (Some(cipher), Some(seed)) if s.byte() & 7 != 0 => {
                    let nonce = crate::metadata::part_nonce(&seed, number);
                    Control::EncMetadata {
                        part: number,
                        hidden_metadata: wire::hex(&cipher.seal(&nonce, plain.as_bytes())),
                    }
                    .to_json()
                }
                _ => plain,
            }
        }

        fn binary(&mut self, s: &mut Script) {
            let frame = match s.below(4) {
                0 => Bytes::copy_from_slice(s.blob()),
                1 => {
                    let seq = self.stream.as_ref().map_or(0, |st| st.next_seq);
                    let mut chain = [0u8; 32];
                    chain.copy_from_slice(&[s.byte(); 32]);
                    DataMessage::encode(seq, &chain, s.blob())
                }
                2 => Bytes::from(vec![0u8; MAX_MESSAGE_LEN + 1]),
                _ => Bytes::copy_from_slice(&[7u8; 39]),
            };
            self.feed_binary(frame);
        }

        fn close(&mut self, s: &mut Script) {
            let now = self.now;
            match s.below(5) {
                4 => {
                    let before = self.error.clone();
                    self.rx.cancel("stopped by the user");
                    match before {
                        Some(e) => {
                            assert_eq!(self.rx.error(), Some(&e), "cancel keeps the first error")
                        }
                        None if !self.done => {
                            assert!(
                                matches!(self.rx.error(), Some(Error::Cancelled(_))),
                                "cancel fails an unfinished session"
                            );
                        }
                        None => assert!(self.rx.error().is_none(), "cancel leaves a done session"),
                    }
                    self.error = self.rx.error().cloned();
                    self.drain();
                }
                k => {
                    let code = [None, Some(1000), Some(1013), Some(1002)][k];
                    let _ = self.input(|rx| rx.handle_close(now, code, "bye"));
                }
            }
        }

        /// Calls a runtime must not make: the receiver must refuse each with an error.
        fn misuse(&mut self, s: &mut Script) {
            let now = self.now;
            if s.byte() & 1 == 0 {
                if let Some(r) = self.last_result.clone() {
                    let got = self.input(|rx| rx.handle_job(now, r));
                    assert!(got.is_err(), "a job result fed twice was accepted");
                }
                return;
            }
            let file = s.below(5);
            let bogus = match s.below(8) {
                0 => IoCompletion::Stat { file, found: None },
                1 => IoCompletion::ReadBack {
                    file,
                    offset: 0,
                    data: Bytes::new(),
                },
                2 => IoCompletion::Opened { file },
                3 => IoCompletion::Written { file },
                4 => IoCompletion::Closed { file },
                5 if file == 0 => IoCompletion::MetadataApplied {
                    not_kept: crate::metadata::Notes::default(),
                },
                5 => IoCompletion::Synced,
                6 => IoCompletion::Committed { file },
                _ => IoCompletion::Failed {
                    file,
                    reason: "bogus".into(),
                },
            };
            let asked = self.io.iter().any(|r| match (r, &bogus) {
                (IoRequest::Stat { file: a, .. }, IoCompletion::Stat { file: b, .. })
                | (IoRequest::ReadBack { file: a, .. }, IoCompletion::ReadBack { file: b, .. })
                | (IoRequest::Open { file: a, .. }, IoCompletion::Opened { file: b })
                | (IoRequest::Write { file: a, .. }, IoCompletion::Written { file: b })
                | (IoRequest::Close { file: a }, IoCompletion::Closed { file: b })
                | (IoRequest::Commit { file: a, .. }, IoCompletion::Committed { file: b }) => {
                    a == b
                }
                (IoRequest::Sync, IoCompletion::Synced)
                | (IoRequest::ApplyMetadata { .. }, IoCompletion::MetadataApplied { .. }) => true,
                (r, IoCompletion::Failed { file: b, .. }) => request_file(r).unwrap_or(0) == *b,
                _ => false,
            });
            if !asked {
                let got = self.input(|rx| rx.handle_io(now, bogus));
                assert!(
                    got.is_err(),
                    "an I/O completion nobody asked for was accepted"
                );
            }
        }

        // ---- I/O and jobs ----

        /// Indices of the pending requests that may complete now: the oldest of each file
        /// (requests for one file are carried out in order).
        fn heads(&self) -> Vec<usize> {
            (0..self.io.len())
                .filter(|&i| {
                    let f = request_file(&self.io[i]);
                    !self.io[..i].iter().any(|r| request_file(r) == f)
                })
                .collect()
        }

        fn io_one(&mut self, s: &mut Script) {
            let heads = self.heads();
            if heads.is_empty() {
                return;
            }
            let i = heads[s.below(heads.len())];
            let how = s.below(8);
            let found = self.found(s, i);
            self.complete(i, how, found);
        }

        /// Complete every request pending now, successfully. Returns whether any was.
        fn io_all(&mut self) -> bool {
            let mut any = false;
            while let Some(&i) = self.heads().first() {
                if !self.io.is_empty() && self.error.is_some() {
                    self.io.clear();
                    break;
                }
                self.complete(i, 0, None);
                any = true;
            }
            any
        }

        /// A local copy for a Stat answer.
        fn found(&mut self, s: &mut Script, i: usize) -> Option<LocalCopy> {
            let declared = match &self.io[i] {
                IoRequest::Stat { file, .. } => self.declared(*file),
                _ => return None,
            };
            let size = match s.below(7) {
                0 => return None,
                1 => 0,
                2 => 1,
                3 => 100,
                4 => CHUNK + 1,
                5 => declared,
                _ => declared.saturating_add(1),
            };
            Some(LocalCopy {
                size: size.min(MAX_LOCAL),
                complete: s.byte() & 1 != 0,
            })
        }

        /// Answer request `i`: successfully for `how` < 6, a failure for 6, a short read
        /// for 7.
        fn complete(&mut self, i: usize, how: usize, found: Option<LocalCopy>) {
            let req = self.io.remove(i);
            let done = if let IoRequest::ApplyMetadata { files, .. } = &req {
                // Never a failure: what cannot be applied is listed.
                let mut not_kept = crate::metadata::Notes::default();
                if how == 6 {
                    for (p, _) in files {
                        not_kept.push(p.as_str(), "Operation not permitted");
                    }
                }
                IoCompletion::MetadataApplied { not_kept }
            } else if how == 6 {
                IoCompletion::Failed {
                    file: request_file(&req).unwrap_or(0),
                    reason: "No space left on device".into(),
                }
            } else {
                match req {
                    IoRequest::Stat { file, .. } => {
                        if let Some(t) = self.tracks.get_mut(file) {
                            t.found = found;
                        }
                        IoCompletion::Stat { file, found }
                    }
                    IoRequest::ReadBack { file, offset, len } => {
                        let mut data = content(file, offset, len, false);
                        if how == 7 {
                            data.pop();
                        }
                        IoCompletion::ReadBack {
                            file,
                            offset,
                            data: Bytes::from(data),
                        }
                    }
                    IoRequest::Open { file, .. } => IoCompletion::Opened { file },
                    IoRequest::Write { file, .. } => IoCompletion::Written { file },
                    IoRequest::Close { file } => {
                        if let Some(t) = self.tracks.get_mut(file) {
                            t.closed = true;
                        }
                        IoCompletion::Closed { file }
                    }
                    IoRequest::Sync => {
                        self.synced = true;
                        IoCompletion::Synced
                    }
                    IoRequest::Commit { file, .. } => {
                        if let Some(t) = self.tracks.get_mut(file) {
                            t.committed = true;
                        }
                        IoCompletion::Committed { file }
                    }
                    IoRequest::ApplyMetadata { .. } => unreachable!("answered above"),
                }
            };
            let now = self.now;
            let _ = self.input(|rx| rx.handle_io(now, done));
        }

        fn run_job(&mut self, i: usize) {
            let result = self.jobs.remove(i).run();
            self.last_result = Some(result.clone());
            let now = self.now;
            let _ = self.input(|rx| rx.handle_job(now, result));
        }

        fn jobs_all(&mut self) -> bool {
            let any = !self.jobs.is_empty();
            while !self.jobs.is_empty() {
                self.run_job(0);
            }
            any
        }

        // ---- outputs ----

        fn drain(&mut self) {
            while let Some(ev) = self.rx.poll_event() {
                self.on_event(ev);
            }
            while let Some(m) = self.rx.poll_transmit() {
                let report = matches!(&m, WireMessage::Text(t) if t.contains(r#""type":"report""#) || t.contains(r#""type":"enc_report""#));
                // The acceptance of a manifest refused at once precedes the report.
                let accept =
                    matches!(&m, WireMessage::Text(t) if t.starts_with(r#"{"type":"extensions""#));
                assert!(
                    self.error.is_none() || ((report || accept) && self.confirm),
                    "a failed receiver sends nothing but its acceptance and its report"
                );
                self.on_transmit(m);
            }
            while let Some(req) = self.rx.poll_io() {
                assert!(self.error.is_none(), "a failed receiver asks for no I/O");
                self.on_request(&req);
                self.io.push(req);
            }
            while let Some(job) = self.rx.poll_job() {
                assert!(self.error.is_none(), "a failed receiver hands out no work");
                self.jobs.push(job);
            }
            // A failure in the same step drops the queued close (and writes) but not the
            // event; only a live session must have asked for the close.
            for t in self.tracks.iter().filter(|_| self.error.is_none()) {
                if t.done_event {
                    assert!(
                        t.close_asked,
                        "file_done comes with the file's close: {t:?}"
                    );
                }
            }
            if self.error.is_none() {
                let writes = self
                    .io
                    .iter()
                    .filter(|r| matches!(r, IoRequest::Write { .. }))
                    .count();
                assert!(
                    self.jobs.len() + writes <= self.window,
                    "{} jobs and {writes} writes in flight with a window of {}",
                    self.jobs.len(),
                    self.window
                );
            }
        }

        fn entry(&self, file: usize) -> &ManifestEntry {
            let m = self
                .manifest
                .as_ref()
                .expect("requests only after a manifest");
            m.get(file).expect("requests only for manifest entries")
        }

        fn declared(&self, file: usize) -> u64 {
            self.manifest
                .as_ref()
                .and_then(|m| m.get(file))
                .map_or(0, |e| e.size)
        }

        fn index_of(&self, path: &str) -> usize {
            let m = self
                .manifest
                .as_ref()
                .expect("file events only after a manifest");
            m.iter()
                .position(|e| e.path == path)
                .expect("file events only for manifest entries")
        }

        fn on_event(&mut self, ev: Event) {
            match ev {
                Event::Failed(e) => {
                    self.failed_events += 1;
                    assert_eq!(self.failed_events, 1, "one failure is reported once");
                    assert_eq!(self.rx.error(), Some(&e));
                }
                Event::FileNotDelivered { path, .. } => {
                    // Only in a session that confirms: files the sender did not send or
                    // gave up, never one that was put in place.
                    assert!(self.confirm, "not delivered without confirmation");
                    let i = self.index_of(&path);
                    assert!(!self.tracks[i].committed, "a committed file is delivered");
                    self.tracks[i].not_delivered = true;
                }
                Event::Delivery { .. } | Event::AwaitingConsent => {
                    panic!("only a sender reports {ev:?}")
                }
                Event::FileKept { .. } => panic!("nothing is kept without keep_existing"),
                Event::MetadataNotKept(_) => {
                    assert!(
                        self.keep_meta && self.meta_offered,
                        "metadata only when agreed"
                    );
                }
                Event::Text { .. } => panic!("a text needs the offer of its extension"),
                Event::Path(_) | Event::Reconnecting { .. } => {
                    panic!("only the runtime reports the path and reconnects")
                }
                Event::Manifest { files, .. } => {
                    assert!(self.manifest.is_none(), "one manifest per session");
                    let offered = self
                        .offered
                        .take()
                        .expect("a manifest event follows a manifest fed");
                    assert_eq!(files, offered.len());
                    self.tracks = offered.iter().map(|_| Track::default()).collect();
                    self.manifest = Some(offered);
                }
                Event::FileStarted {
                    path,
                    size,
                    append_from,
                    ..
                } => {
                    let i = self.index_of(&path);
                    assert_eq!(size, self.entry(i).size);
                    assert!(append_from <= size);
                }
                Event::FileSkipped { path, size } => {
                    let i = self.index_of(&path);
                    let t = &mut self.tracks[i];
                    assert_eq!(
                        t.found.map(|f| f.size),
                        Some(size),
                        "skipped only when whole here"
                    );
                    t.skipped = true;
                }
                Event::FileDone { path, .. } => {
                    // Checked against the close it comes with at the end of the drain.
                    let i = self.index_of(&path);
                    assert!(!self.tracks[i].done_event, "one file_done per file");
                    self.tracks[i].done_event = true;
                }
                Event::Done => {
                    assert!(self.rx.is_finished() && self.rx.error().is_none());
                    for (i, t) in self.tracks.iter().enumerate() {
                        let in_place = t.skipped && t.found.is_some_and(|f| f.complete);
                        assert!(
                            t.committed || in_place || t.not_delivered,
                            "session done while entry {i} is neither in place nor reported: {t:?}"
                        );
                        assert!(!(t.committed && t.not_delivered), "entry {i}: {t:?}");
                    }
                    self.done = true;
                }
                Event::Progress { .. } | Event::Paired | Event::CompressLevel { .. } => {}
            }
        }

        fn on_transmit(&mut self, m: WireMessage) {
            let WireMessage::Text(text) = m else {
                panic!("the receiver sends only text");
            };
            let c = Control::parse(&text).expect("the receiver sends valid control messages");
            if !self.hello_seen {
                let hello = Control::Hello {
                    code_hash_hex: wire::hex(&CODE_HASH),
                    role: Role::Receiver,
                };
                assert_eq!(c, hello);
                self.hello_seen = true;
                return;
            }
            match &c {
                Control::Extensions { accept } => {
                    assert!(self.confirm, "an acceptance only for an offer");
                    assert!(
                        !self.accepted_seen && !self.answered,
                        "accepted first, once"
                    );
                    let mut expected = vec![wire::EXT_CONFIRM.to_owned()];
                    if self.keep_meta && self.meta_offered {
                        expected.push(wire::EXT_METADATA.to_owned());
                    }
                    if self.fast_config && self.fast_offered {
                        expected.push(wire::EXT_FAST.to_owned());
                    }
                    assert_eq!(accept, &expected);
                    self.fast_on = self.fast_config && self.fast_offered;
                    self.accepted_seen = true;
                    return;
                }
                Control::Report(_) | Control::EncReport { .. } => {
                    assert!(self.accepted_seen, "a report only after the acceptance");
                    assert!(!self.report_seen, "one report per session");
                    assert_eq!(
                        matches!(c, Control::EncReport { .. }),
                        self.cipher.is_some(),
                        "a report is sealed exactly when encrypting"
                    );
                    self.report_seen = true;
                    return;
                }
                _ => {}
            }
            assert!(!self.answered, "one resume answer per session");
            self.answered = true;
            let entries = match (c, &self.cipher) {
                (Control::ReceiverManifest { entries }, None) => entries,
                (Control::EncReceiverManifest { hidden_manifest }, Some(cipher)) => {
                    let nonce = self
                        .answer_nonce
                        .expect("an encrypted answer follows an encrypted manifest");
                    match open(cipher, nonce, &hidden_manifest) {
                        Some(Control::ReceiverManifest { entries }) => entries,
                        other => panic!("the answer must decrypt to a resume answer: {other:?}"),
                    }
                }
                (other, _) => panic!("unexpected {} from the receiver", other.type_name()),
            };
            let manifest = self
                .manifest
                .as_ref()
                .expect("an answer follows a manifest");
            let kind = if self.fast_on {
                ChainKind::Blake3
            } else {
                ChainKind::Sha256
            };
            let expected: Vec<ResumeEntry> = self
                .tracks
                .iter()
                .enumerate()
                .filter_map(|(i, t)| {
                    let found = t.found.filter(|f| f.size > 0)?;
                    Some(ResumeEntry {
                        path: manifest[i].path.clone(),
                        size: found.size,
                        chain_hex: wire::hex(&chain_of_kind(kind, i, found.size, false)?),
                    })
                })
                .collect();
            assert_eq!(
                entries, expected,
                "the answer reports each local copy and its chain"
            );
        }

        fn on_request(&mut self, req: &IoRequest) {
            if let IoRequest::ApplyMetadata { files, dirs } = req {
                assert!(
                    self.keep_meta && self.meta_offered,
                    "metadata only when agreed"
                );
                assert!(!self.meta_asked, "metadata applied once");
                assert!(
                    self.synced && self.io.is_empty(),
                    "metadata after the commits"
                );
                self.meta_asked = true;
                for (p, a) in files {
                    let i = self.index_of(p.as_str());
                    let t = &self.tracks[i];
                    let in_place = t.skipped && t.found.is_some_and(|f| f.complete);
                    assert!(t.committed || in_place, "metadata for a file not in place");
                    assert!(a.mode.is_none_or(|m| m <= 0o777), "only permission bits");
                    assert!(a
                        .mtime
                        .is_none_or(|t| t.abs() <= crate::metadata::MAX_MTIME));
                }
                for (d, _) in dirs {
                    check_path(d, d.as_str());
                }
                return;
            }
            let Some(file) = request_file(req) else {
                // Sync: once, after eof, when every file is closed and nothing else is out.
                assert!(!self.sync_asked, "one sync per session");
                assert!(self.eof_fed, "sync only after eof");
                assert!(
                    self.io.is_empty() && self.jobs.is_empty(),
                    "sync while other work is out: {:?}",
                    self.io
                );
                for (i, t) in self.tracks.iter().enumerate() {
                    assert!(
                        t.opened_at.is_none() || t.closed,
                        "sync before entry {i} closed"
                    );
                }
                self.sync_asked = true;
                return;
            };
            let declared = self.entry(file).size;
            match req {
                IoRequest::Stat { path, .. } => {
                    check_path(path, &self.entry(file).path);
                    let t = &mut self.tracks[file];
                    assert!(!t.stat_asked, "one stat per file");
                    t.stat_asked = true;
                }
                IoRequest::ReadBack { offset, len, .. } => {
                    let found = self.tracks[file]
                        .found
                        .expect("read back only a copy that was found");
                    assert!(
                        *len > 0 && offset + *len as u64 <= found.size,
                        "read back within the copy"
                    );
                }
                IoRequest::Open {
                    path, append_from, ..
                } => {
                    check_path(path, &self.entry(file).path);
                    let t = &mut self.tracks[file];
                    assert!(t.opened_at.is_none(), "one open per file");
                    assert!(*append_from <= declared);
                    if *append_from > 0 {
                        assert_eq!(
                            t.found.map(|f| f.size),
                            Some(*append_from),
                            "append only to the verified local copy"
                        );
                    }
                    t.opened_at = Some(*append_from);
                    t.written_to = *append_from;
                }
                IoRequest::Write { offset, data, .. } => {
                    let t = &mut self.tracks[file];
                    assert!(
                        t.opened_at.is_some() && !t.close_asked,
                        "write only to an open file"
                    );
                    assert_eq!(*offset, t.written_to, "writes are contiguous");
                    assert!(!data.is_empty());
                    let end = offset + data.len() as u64;
                    assert!(
                        end <= declared,
                        "write to {end} beyond the declared {declared}"
                    );
                    // Not assert_eq: a failure would print a MiB of piece data.
                    let sent = self.sent.get(&(file, *offset));
                    assert!(
                        sent.is_some_and(|pieces| pieces.contains(data)),
                        "only verified data is written: {} bytes at {offset} of entry {file}",
                        data.len()
                    );
                    t.written_to = end;
                    self.writes += 1;
                }
                IoRequest::Close { .. } => {
                    let t = &mut self.tracks[file];
                    assert!(
                        t.opened_at.is_some() && !t.close_asked,
                        "close an open file once"
                    );
                    assert_eq!(t.written_to, declared, "close only a complete file");
                    t.close_asked = true;
                }
                IoRequest::Commit { path, .. } => {
                    check_path(path, &self.entry(file).path);
                    assert!(self.synced, "commit only after the sync");
                    let t = &mut self.tracks[file];
                    assert!(!t.commit_asked, "one commit per file");
                    let received = t.closed && t.written_to == declared;
                    let whole_partial = t.skipped
                        && t.opened_at.is_none()
                        && t.found
                            == Some(LocalCopy {
                                size: declared,
                                complete: false,
                            });
                    assert!(
                        received || whole_partial,
                        "commit of a file neither received whole nor whole here: {t:?}"
                    );
                    t.commit_asked = true;
                }
                IoRequest::Sync | IoRequest::ApplyMetadata { .. } => {}
            }
        }
    }

    /// The manifest entry a request is for; `None` for the session-wide sync.
    fn request_file(r: &IoRequest) -> Option<usize> {
        match r {
            IoRequest::Stat { file, .. }
            | IoRequest::ReadBack { file, .. }
            | IoRequest::Open { file, .. }
            | IoRequest::Write { file, .. }
            | IoRequest::Close { file }
            | IoRequest::Commit { file, .. } => Some(*file),
            IoRequest::Sync | IoRequest::ApplyMetadata { .. } => None,
        }
    }

    /// The path the receiver hands to the filesystem is the manifest's, and safe.
    fn check_path(path: &SafePath, raw: &str) {
        assert_eq!(path.as_str(), raw);
        assert_eq!(SafePath::parse(raw).as_ref(), Ok(path));
        assert!(!raw.starts_with('/') && !raw.contains('\\') && !raw.contains('\0'));
        assert!(path
            .components()
            .all(|c| !c.is_empty() && c != "." && c != ".."));
    }

    /// Open a sealed control message.
    fn open(cipher: &Cipher, nonce: [u8; 32], hidden: &str) -> Option<Control> {
        let plain = cipher.open(&nonce, &wire::unhex(hidden)?)?;
        Control::parse(std::str::from_utf8(&plain).ok()?).ok()
    }
}

mod sender_body {
    use std::collections::HashMap;
    use std::time::{Duration, Instant};

    use bytes::Bytes;

    use super::script::Script;
    use super::{chain_of, content, SenderRun, CHUNK, CODE_HASH, KEY};
    use crate::chain::Chain;
    use crate::compress::decompress_capped;
    use crate::crypto::{Cipher, NonceChain, Secrets};
    use crate::sender::{
        CompressMode, IoCompletion, IoRequest, Job, JobResult, SendFile, Sender, SenderConfig,
    };
    use crate::wire::{
        self, Compression, Control, DataMessage, ManifestEntry, ResumeEntry, Role, WireMessage,
        CHUNK_SIZE,
    };
    use crate::{Error, Event};

    pub(super) const READY: u8 = 0;
    pub(super) const ANSWER: u8 = 1;
    pub(super) const TEXT: u8 = 2;
    pub(super) const BINARY: u8 = 3;
    pub(super) const READ_ONE: u8 = 4;
    pub(super) const READ_ALL: u8 = 5;
    pub(super) const JOB_ONE: u8 = 6;
    pub(super) const JOB_ALL: u8 = 7;
    pub(super) const TRANSMIT: u8 = 8;
    pub(super) const TIMEOUT: u8 = 9;
    pub(super) const CLOSE: u8 = 10;
    pub(super) const MISUSE: u8 = 11;
    pub(super) const PUMP: u8 = 12;
    const STEPS: u8 = PUMP + 1;

    const PATHS: [&str; 3] = ["a.txt", "dir/b.bin", "c"];
    const SIZES: [u64; 8] = [0, 1, 100, 5000, CHUNK - 1, CHUNK, CHUNK + 1, 2 * CHUNK + 7];
    /// Longest prefix a scripted answer hashes.
    const MAX_ANSWER: u64 = 3 * CHUNK;
    const DURATIONS: &[Duration] = &[
        Duration::ZERO,
        Duration::from_secs(1),
        Duration::from_secs(29),
        Duration::from_secs(30),
        Duration::from_secs(299),
        Duration::from_secs(300),
        Duration::from_secs(3600),
    ];

    #[derive(Debug, Clone)]
    struct File {
        path: String,
        size: u64,
        compressible: bool,
    }

    #[derive(Debug, PartialEq, Eq)]
    enum Stage {
        Hello,
        Manifest,
        Files,
        Ended,
    }

    #[derive(Debug)]
    struct Piece {
        file: usize,
        append_from: u64,
        pieces: u64,
        zstd: bool,
        next_seq: u64,
        chain: Chain,
    }

    /// The sent stream, checked as a receiver checks it.
    struct Check {
        stage: Stage,
        nonces: Option<NonceChain>,
        answer_nonce_pending: bool,
        next_file: usize,
        cur: Option<Piece>,
    }

    struct Harness {
        tx: Sender,
        now: Instant,
        window: usize,
        resume: bool,
        compress: CompressMode,
        cipher: Option<Cipher>,
        seed: [u8; 32],
        files: Vec<File>,
        /// Where each file's data must start: `None` when the receiver has it whole.
        expected: Vec<Option<u64>>,
        reads: Vec<(usize, u64, usize)>,
        closed: Vec<bool>,
        jobs: Vec<Job>,
        last_result: Option<JobResult>,
        error: Option<Error>,
        failed_events: usize,
        done: bool,
        check: Check,
        outcome: SenderRun,
    }

    pub(super) fn run(data: &[u8]) -> SenderRun {
        let mut s = Script::new(data);
        let flags = s.byte();
        let encrypted = flags & 1 != 0;
        let compress = super::compress_mode(flags);
        let resume = flags & 8 != 0;
        let window = 1 + usize::from(flags >> 4 & 3);
        let n = 1 + s.below(3);
        let files: Vec<File> = (0..n)
            .map(|i| {
                let b = s.byte();
                File {
                    path: PATHS[i].to_owned(),
                    size: SIZES[usize::from(b & 7)],
                    compressible: b & 0x80 != 0,
                }
            })
            .collect();
        let seed = [s.byte(); 32];
        let cipher = encrypted.then(|| Cipher::new(&KEY));
        let secrets = Secrets {
            code_hash: CODE_HASH,
            cipher: cipher.clone(),
        };
        let now = Instant::now();
        let config = SenderConfig {
            compress,
            resume,
            ready_timeout: Duration::from_secs(300),
            answer_timeout: Duration::from_secs(30),
            window,
            ..SenderConfig::default()
        };
        let list = files
            .iter()
            .map(|f| SendFile {
                path: f.path.clone(),
                size: f.size,
                kind: None,
            })
            .collect();
        let tx =
            Sender::new(now, config, &secrets, list, seed).expect("the script's files are valid");
        let mut h = Harness {
            tx,
            now,
            window,
            resume,
            compress,
            cipher,
            seed,
            expected: vec![Some(0); files.len()],
            closed: vec![false; files.len()],
            files,
            reads: Vec::new(),
            jobs: Vec::new(),
            last_result: None,
            error: None,
            failed_events: 0,
            done: false,
            check: Check {
                stage: Stage::Hello,
                nonces: None,
                answer_nonce_pending: false,
                next_file: 0,
                cur: None,
            },
            outcome: SenderRun::default(),
        };
        h.drain();
        while !s.is_empty() {
            h.step(&mut s);
        }
        if h.done && h.error.is_none() {
            h.transmit(usize::MAX);
            assert_eq!(h.check.stage, Stage::Ended, "a done sender has queued eof");
        }
        h.outcome.done = h.done;
        h.outcome.error = h.error;
        h.outcome
    }

    impl Harness {
        fn step(&mut self, s: &mut Script) {
            match s.byte() % STEPS {
                READY => self.feed_text(Control::Ready.to_json()),
                ANSWER => self.answer(s),
                TEXT => self.text(s),
                BINARY => {
                    let frame = Bytes::copy_from_slice(s.blob());
                    let now = self.now;
                    let _ = self.input(|tx| tx.handle_message(now, WireMessage::Binary(frame)));
                }
                READ_ONE => self.read_one(s),
                READ_ALL => {
                    self.reads_all();
                }
                JOB_ONE => {
                    let i = s.below(self.jobs.len());
                    if i < self.jobs.len() {
                        self.run_job(i);
                    }
                }
                JOB_ALL => {
                    self.jobs_all();
                }
                TRANSMIT => {
                    let n = s.below(9);
                    self.transmit(if n == 0 { usize::MAX } else { n });
                }
                TIMEOUT => {
                    self.now += s.pick(DURATIONS);
                    let now = self.now;
                    if self.input(|tx| tx.handle_timeout(now)).is_ok() {
                        let next = self.tx.poll_timeout();
                        assert!(
                            next.is_none_or(|t| t > now),
                            "a handled deadline stays armed"
                        );
                    }
                }
                CLOSE => self.close(s),
                MISUSE => self.misuse(s),
                _ => {
                    for _ in 0..256 {
                        let a = self.reads_all();
                        let b = self.jobs_all();
                        let c = self.transmit(usize::MAX) > 0;
                        if !(a || b || c) {
                            break;
                        }
                    }
                }
            }
        }

        // ---- inputs ----

        fn input(&mut self, f: impl FnOnce(&mut Sender) -> Result<(), Error>) -> Result<(), Error> {
            let before = self.error.clone();
            let r = f(&mut self.tx);
            if let Some(e) = before {
                assert_eq!(r, Err(e), "an error is sticky");
            }
            match &r {
                Err(e) => {
                    assert_eq!(
                        self.tx.error(),
                        Some(e),
                        "the returned error is the sticky one"
                    );
                    self.error = Some(e.clone());
                }
                Ok(()) => assert!(self.tx.error().is_none()),
            }
            self.drain();
            r
        }

        fn feed_text(&mut self, text: String) {
            let now = self.now;
            let parsed = Control::parse(&text);
            let was_done = self.done && self.error.is_none();
            let accepted = self
                .input(|tx| tx.handle_message(now, WireMessage::Text(text)))
                .is_ok();
            if was_done {
                assert!(
                    accepted && self.tx.error().is_none(),
                    "a done sender ignores messages"
                );
            }
            if was_done || !accepted {
                return;
            }
            // An accepted resume answer decides where each file starts.
            let entries = match (parsed, &self.cipher) {
                (Ok(Control::ReceiverManifest { entries }), None) => entries,
                (Ok(Control::EncReceiverManifest { hidden_manifest }), Some(c)) => {
                    match open(c, self.answer_nonce(0), &hidden_manifest) {
                        Some(Control::ReceiverManifest { entries }) => entries,
                        other => panic!("an accepted answer must decrypt to one: {other:?}"),
                    }
                }
                _ => return,
            };
            let mut answers = HashMap::new();
            for e in entries {
                let chain = wire::unhex(&e.chain_hex).expect("an accepted answer has hex chains");
                answers.insert(e.path, (e.size, chain));
            }
            for (i, f) in self.files.iter().enumerate() {
                self.expected[i] = match answers.get(&f.path) {
                    Some((s, chain)) if *s > 0 && *s <= f.size => {
                        let ok =
                            chain_of(i, *s, f.compressible).map(Vec::from) == Some(chain.clone());
                        match (ok, *s == f.size) {
                            (true, true) => None,
                            (true, false) => Some(*s),
                            (false, _) => Some(0),
                        }
                    }
                    _ => Some(0),
                };
            }
        }

        /// The nonce of the resume answer (the second of the chain), or a later one.
        fn answer_nonce(&self, skip: usize) -> [u8; 32] {
            let mut n = NonceChain::new(&self.seed);
            n.next();
            for _ in 0..skip {
                n.next();
            }
            n.next()
        }

        fn answer(&mut self, s: &mut Script) {
            let wrap = s.below(4);
            let count = s.below(4);
            let mut entries = Vec::new();
            for _ in 0..count {
                let (path, file) = match s.below(5) {
                    k if k < self.files.len() => (self.files[k].path.clone(), Some(k)),
                    3 => ("zzz".to_owned(), None),
                    _ => ("../x".to_owned(), None),
                };
                let (fsize, compressible) = file.map_or((100, false), |k| {
                    (self.files[k].size, self.files[k].compressible)
                });
                let size = match s.below(7) {
                    0 => 0,
                    1 => 1,
                    2 => fsize / 2,
                    3 | 4 => fsize,
                    5 => fsize + 1,
                    _ => s.u64(),
                };
                let chain_hex = match s.below(6) {
                    0..=2 if size <= MAX_ANSWER => wire::hex(
                        &chain_of(file.unwrap_or(0), size, compressible).unwrap_or([0; 32]),
                    ),
                    0..=3 => wire::hex(&[0; 32]),
                    4 => "zz".to_owned(),
                    _ => "abcd".to_owned(),
                };
                entries.push(ResumeEntry {
                    path,
                    size,
                    chain_hex,
                });
            }
            let plain = Control::ReceiverManifest { entries }.to_json();
            let seal = match wrap {
                0 | 1 => self.cipher.is_some(),
                2 => self.cipher.is_none(),
                _ => true,
            };
            let text = if seal {
                let cipher = self.cipher.clone().unwrap_or_else(|| Cipher::new(&KEY));
                let nonce = self.answer_nonce(usize::from(wrap == 3));
                Control::EncReceiverManifest {
                    hidden_manifest: wire::hex(&cipher.seal(&nonce, plain.as_bytes())),
                }
                .to_json()
            } else {
                plain
            };
            self.feed_text(text);
        }

        fn text(&mut self, s: &mut Script) {
            let text = match s.below(10) {
                0 => Control::Hello {
                    code_hash_hex: wire::hex(&CODE_HASH),
                    role: Role::Receiver,
                }
                .to_json(),
                1 => Control::Manifest {
                    resume: false,
                    entries: Vec::new(),
                    extensions: vec![crate::wire::EXT_CONFIRM.to_owned()],
                    reconnect: None,
                    parts: None,
                }
                .to_json(),
                2 => Control::FileEof.to_json(),
                3 => Control::Eof.to_json(),
                4 => r#"{"type":"receiver_manifest","entries":[{"path":"a.txt","size":1}]}"#
                    .to_owned(),
                5 => r#"{"type":"ready","extra":[1,{"x":null}]}"#.to_owned(),
                // Parts of lists this sender never agreed to (extension parts).
                6 => r#"{"type":"receiver_manifest_more","index":1,"entries":[{"path":"a.txt","size":1,"chain_hex":"00"}]}"#
                    .to_owned(),
                7 => r#"{"type":"report_more","index":1,"entries":[{"path":"a.txt","reason":"r"}]}"#
                    .to_owned(),
                8 => Control::EncPart {
                    index: 1,
                    hidden_part: wire::hex(s.blob()),
                }
                .to_json(),
                _ => String::from_utf8_lossy(s.blob()).into_owned(),
            };
            self.feed_text(text);
        }

        fn close(&mut self, s: &mut Script) {
            let now = self.now;
            match s.below(5) {
                4 => {
                    let before = self.error.clone();
                    self.tx.cancel("stopped by the user");
                    match before {
                        Some(e) => {
                            assert_eq!(self.tx.error(), Some(&e), "cancel keeps the first error")
                        }
                        None if !self.done => assert!(
                            matches!(self.tx.error(), Some(Error::Cancelled(_))),
                            "cancel fails an unfinished session"
                        ),
                        None => assert!(self.tx.error().is_none(), "cancel leaves a done session"),
                    }
                    self.error = self.tx.error().cloned();
                    self.drain();
                }
                k => {
                    let code = [None, Some(1000), Some(1013), Some(1002)][k];
                    let _ = self.input(|tx| tx.handle_close(now, code, "bye"));
                }
            }
        }

        /// Calls a runtime must not make: the sender must refuse each with an error.
        fn misuse(&mut self, s: &mut Script) {
            let now = self.now;
            if s.byte() & 1 == 0 {
                if let Some(r) = self.last_result.clone() {
                    let got = self.input(|tx| tx.handle_job(now, r));
                    assert!(got.is_err(), "a job result fed twice was accepted");
                }
                return;
            }
            let file = s.below(4);
            let offset = s.pick(&[0, 1, CHUNK, 2 * CHUNK]);
            if self.reads.iter().any(|r| r.0 == file && r.1 == offset) {
                return;
            }
            let data = crate::wire::PieceBuf::zeroed(s.below(3));
            let got = self.input(|tx| tx.handle_io(now, IoCompletion::Read { file, offset, data }));
            assert!(
                got.is_err(),
                "a read completion nobody asked for was accepted"
            );
        }

        // ---- I/O, jobs, transmit slots ----

        fn read_one(&mut self, s: &mut Script) {
            if self.reads.is_empty() {
                return;
            }
            let i = s.below(self.reads.len());
            let how = s.below(10);
            self.read(i, how);
        }

        /// Answer read `i`: correctly for `how` < 6, else short, long, failed or at the
        /// wrong offset.
        fn read(&mut self, i: usize, how: usize) {
            let (file, offset, len) = self.reads.remove(i);
            let f = &self.files[file];
            let mut data = content(file, offset, len, f.compressible);
            let done = match how {
                6 => {
                    data.pop();
                    IoCompletion::Read {
                        file,
                        offset,
                        data: crate::wire::PieceBuf::from(data),
                    }
                }
                7 => {
                    data.push(0);
                    IoCompletion::Read {
                        file,
                        offset,
                        data: crate::wire::PieceBuf::from(data),
                    }
                }
                8 => IoCompletion::Failed {
                    file,
                    reason: "Input/output error".into(),
                },
                9 => IoCompletion::Read {
                    file,
                    offset: offset + 1,
                    data: crate::wire::PieceBuf::from(data),
                },
                _ => IoCompletion::Read {
                    file,
                    offset,
                    data: crate::wire::PieceBuf::from(data),
                },
            };
            let now = self.now;
            let _ = self.input(|tx| tx.handle_io(now, done));
        }

        fn reads_all(&mut self) -> bool {
            let any = !self.reads.is_empty();
            while !self.reads.is_empty() {
                if self.error.is_some() {
                    self.reads.clear();
                    break;
                }
                self.read(0, 0);
            }
            any
        }

        fn run_job(&mut self, i: usize) {
            let result = self.jobs.remove(i).run();
            self.last_result = Some(result.clone());
            let now = self.now;
            let _ = self.input(|tx| tx.handle_job(now, result));
        }

        fn jobs_all(&mut self) -> bool {
            let any = !self.jobs.is_empty();
            while !self.jobs.is_empty() {
                self.run_job(0);
            }
            any
        }

        /// Take up to `n` messages, as a socket with room for them would.
        fn transmit(&mut self, n: usize) -> usize {
            let mut taken = 0;
            while taken < n {
                let Some(m) = self.tx.poll_transmit() else {
                    break;
                };
                assert!(self.error.is_none(), "a failed sender sends nothing");
                taken += 1;
                self.on_transmit(m);
            }
            self.drain();
            taken
        }

        // ---- outputs ----

        fn drain(&mut self) {
            while let Some(ev) = self.tx.poll_event() {
                self.on_event(ev);
            }
            while let Some(req) = self.tx.poll_io() {
                assert!(self.error.is_none(), "a failed sender asks for no I/O");
                match req {
                    IoRequest::Read { file, offset, len } => {
                        let f = &self.files[file];
                        assert!(!self.closed[file], "read after close");
                        assert!(len > 0 && len <= CHUNK_SIZE, "read of {len} bytes");
                        assert!(offset + len as u64 <= f.size, "read beyond the file");
                        self.reads.push((file, offset, len));
                    }
                    IoRequest::Close { file } => {
                        assert!(!self.closed[file], "one close per file");
                        assert!(
                            self.reads.iter().all(|r| r.0 != file),
                            "close while reads are outstanding"
                        );
                        self.closed[file] = true;
                    }
                }
            }
            while let Some(job) = self.tx.poll_job() {
                assert!(self.error.is_none(), "a failed sender hands out no work");
                self.jobs.push(job);
            }
            if self.error.is_none() {
                assert!(
                    self.reads.len() + self.jobs.len() <= self.window,
                    "{} reads and {} jobs in flight with a window of {}",
                    self.reads.len(),
                    self.jobs.len(),
                    self.window
                );
            }
        }

        fn index_of(&self, path: &str) -> usize {
            self.files
                .iter()
                .position(|f| f.path == path)
                .expect("events name offered files")
        }

        fn on_event(&mut self, ev: Event) {
            match ev {
                Event::Failed(e) => {
                    self.failed_events += 1;
                    assert_eq!(self.failed_events, 1, "one failure is reported once");
                    assert_eq!(self.tx.error(), Some(&e));
                }
                Event::FileNotDelivered { .. }
                | Event::Delivery { .. }
                | Event::AwaitingConsent
                | Event::FileKept { .. }
                | Event::MetadataNotKept(_)
                | Event::Text { .. } => {
                    panic!("a sender without skip_errors or confirm reports no delivery: {ev:?}")
                }
                Event::Path(_) | Event::Reconnecting { .. } => {
                    panic!("only the runtime reports the path and reconnects")
                }
                Event::Manifest { files, bytes } => {
                    assert_eq!(files, self.files.len());
                    assert_eq!(bytes, self.files.iter().map(|f| f.size).sum::<u64>());
                }
                Event::FileStarted {
                    path, append_from, ..
                } => {
                    let i = self.index_of(&path);
                    assert_eq!(
                        Some(append_from),
                        self.expected[i],
                        "{path} starts where the answer allows"
                    );
                    self.outcome.appended |= append_from > 0;
                }
                Event::FileSkipped { path, .. } => {
                    let i = self.index_of(&path);
                    assert_eq!(
                        self.expected[i], None,
                        "{path} skipped without a matching answer"
                    );
                    self.outcome.skipped += 1;
                }
                Event::Done => {
                    assert!(self.tx.is_finished() && self.tx.error().is_none());
                    self.done = true;
                }
                Event::Paired
                | Event::Progress { .. }
                | Event::FileDone { .. }
                | Event::CompressLevel { .. } => {}
            }
        }

        fn on_transmit(&mut self, m: WireMessage) {
            let c = &mut self.check;
            match (&c.stage, m) {
                (Stage::Hello, WireMessage::Text(t)) => {
                    let hello = Control::Hello {
                        code_hash_hex: wire::hex(&CODE_HASH),
                        role: Role::Sender,
                    };
                    assert_eq!(Control::parse(&t), Ok(hello));
                    c.stage = Stage::Manifest;
                }
                (Stage::Manifest, WireMessage::Text(t)) => {
                    let manifest = match (Control::parse(&t), &self.cipher) {
                        (Ok(m @ Control::Manifest { .. }), None) => m,
                        (
                            Ok(Control::EncManifest {
                                nonce,
                                hidden_manifest,
                            }),
                            Some(cipher),
                        ) => {
                            assert_eq!(wire::unhex(&nonce).as_deref(), Some(&self.seed[..]));
                            let mut nonces = NonceChain::new(&self.seed);
                            let m = open(cipher, nonces.next(), &hidden_manifest)
                                .expect("the manifest decrypts with the first nonce");
                            c.nonces = Some(nonces);
                            m
                        }
                        (other, _) => panic!("expected the manifest, got {other:?}"),
                    };
                    let entries = self
                        .files
                        .iter()
                        .map(|f| ManifestEntry {
                            path: f.path.clone(),
                            size: f.size,
                            kind: None,
                        })
                        .collect();
                    assert_eq!(
                        manifest,
                        Control::Manifest {
                            resume: self.resume,
                            entries,
                            extensions: Vec::new(),
                            reconnect: None,
                            parts: None,
                        }
                    );
                    c.answer_nonce_pending = self.resume;
                    c.stage = Stage::Files;
                }
                (Stage::Files, WireMessage::Binary(frame)) => {
                    let cur = c.cur.as_mut().expect("data only inside a file");
                    let d = DataMessage::decode(frame).expect("data messages have a header");
                    assert_eq!(d.seq, cur.next_seq, "pieces in order");
                    assert!(d.seq < cur.pieces, "no piece beyond the file");
                    let piece = match (&self.cipher, c.nonces.as_mut()) {
                        (Some(cipher), Some(n)) => cipher
                            .open(&n.next(), &d.payload)
                            .expect("a piece decrypts with the next nonce"),
                        _ => d.payload.to_vec(),
                    };
                    assert_eq!(cur.chain.next(&piece), d.chain, "chain of piece {}", d.seq);
                    let raw = if cur.zstd {
                        decompress_capped(&piece, CHUNK_SIZE).expect("a piece is one capped frame")
                    } else {
                        piece
                    };
                    let f = &self.files[cur.file];
                    let start = cur.append_from + d.seq * CHUNK;
                    let len = (f.size - start).min(CHUNK) as usize;
                    assert!(
                        raw == content(cur.file, start, len, f.compressible),
                        "piece {} of {} holds the file's bytes",
                        d.seq,
                        f.path
                    );
                    cur.next_seq += 1;
                    self.outcome.pieces += 1;
                }
                (Stage::Files, WireMessage::Text(t)) => {
                    if c.answer_nonce_pending {
                        // The resume answer took the next nonce before any file.
                        if let Some(n) = c.nonces.as_mut() {
                            n.next();
                        }
                        c.answer_nonce_pending = false;
                    }
                    let msg = Control::parse(&t).expect("the sender sends valid control messages");
                    let header = match (msg, &self.cipher) {
                        (Control::File(h), None) => Some(h),
                        (Control::EncFile { hidden_file }, Some(cipher)) => {
                            let n = c.nonces.as_mut().expect("nonces after the manifest");
                            match open(cipher, n.next(), &hidden_file) {
                                Some(Control::File(h)) => Some(h),
                                other => panic!("enc_file must hold a file header: {other:?}"),
                            }
                        }
                        (Control::FileEof, _) => {
                            let cur = c.cur.take().expect("file_eof ends a file");
                            assert_eq!(cur.next_seq, cur.pieces, "file_eof after every piece");
                            None
                        }
                        (Control::Eof, _) => {
                            assert!(c.cur.is_none(), "eof between files");
                            for j in c.next_file..self.files.len() {
                                assert_eq!(self.expected[j], None, "file {j} never sent");
                            }
                            c.stage = Stage::Ended;
                            None
                        }
                        (other, _) => panic!("unexpected {other:?} from the sender"),
                    };
                    if let Some(h) = header {
                        assert!(c.cur.is_none(), "a file starts between files");
                        let i = self
                            .files
                            .iter()
                            .position(|f| f.path == h.path)
                            .expect("only offered files are sent");
                        assert!(i >= c.next_file, "files in order, each once");
                        for j in c.next_file..i {
                            assert_eq!(self.expected[j], None, "file {j} skipped without cause");
                        }
                        let f = &self.files[i];
                        assert_eq!(h.size, f.size);
                        assert_eq!(Some(h.append_from), self.expected[i]);
                        match self.compress {
                            CompressMode::On => assert_eq!(h.compression, Compression::Zstd),
                            CompressMode::Off => assert_eq!(h.compression, Compression::None),
                            CompressMode::Auto => {}
                        }
                        c.cur = Some(Piece {
                            file: i,
                            append_from: h.append_from,
                            pieces: (f.size - h.append_from).div_ceil(CHUNK).max(1),
                            zstd: h.compression == Compression::Zstd,
                            next_seq: 0,
                            chain: Chain::new(),
                        });
                        c.next_file = i + 1;
                    }
                }
                (stage, m) => panic!("{m:?} in stage {stage:?}"),
            }
        }
    }

    fn open(cipher: &Cipher, nonce: [u8; 32], hidden: &str) -> Option<Control> {
        let plain = cipher.open(&nonce, &wire::unhex(hidden)?)?;
        Control::parse(std::str::from_utf8(&plain).ok()?).ok()
    }
}

mod stun_body {
    use crate::stun::{self, StunError, HEADER_LEN, MAX_RESPONSE_GROWTH};
    use std::net::SocketAddr;

    pub(super) fn run(data: &[u8]) {
        let demux = stun::looks_like_stun(data);
        let sources: [SocketAddr; 2] = [
            SocketAddr::from(([100, 64, 0, 2], 40000)),
            SocketAddr::from(([0x2001, 0xdb8, 0, 0, 0, 0, 0, 1], 1)),
        ];
        for source in sources {
            let Some(answer) = stun::answer_binding_request(data, source) else {
                continue;
            };
            assert!(demux, "answered something that does not look like STUN");
            assert!(
                answer.len() <= data.len() + MAX_RESPONSE_GROWTH,
                "amplification"
            );
            let mut txid = [0; 12];
            txid.copy_from_slice(&data[8..HEADER_LEN]);
            assert_eq!(stun::parse_binding_response(&answer, &txid), Ok(source));
        }
        let mut own = [0; 12];
        if data.len() >= HEADER_LEN {
            own.copy_from_slice(&data[8..HEADER_LEN]);
        }
        for txid in [own, [0; 12]] {
            match stun::parse_binding_response(data, &txid) {
                Ok(_) => assert!(demux && data[8..HEADER_LEN] == txid[..]),
                Err(StunError::NotStun) => assert!(!demux),
                Err(_) => {}
            }
        }
    }
}

mod relay_body {
    use std::collections::{BTreeMap, HashSet};
    use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
    use std::time::{Duration, Instant};

    use bytes::Bytes;

    use super::script::Script;
    use super::RelayRun;
    use crate::relay::{
        ConnId, Relay, RelayConfig, RelayEvent, RelayOutput, CLOSE_NORMAL, CLOSE_POLICY,
        CLOSE_PROTOCOL, CLOSE_TRY_AGAIN,
    };
    use crate::wire::{Control, Role, WireMessage};

    pub(super) const CONNECT: u8 = 0;
    pub(super) const HELLO: u8 = 1;
    pub(super) const MESSAGE: u8 = 2;
    pub(super) const DISCONNECT: u8 = 3;
    pub(super) const TICK: u8 = 4;
    pub(super) const FLUSHED: u8 = 5;
    const STEPS: u8 = FLUSHED + 1;

    const ADDRS: [IpAddr; 3] = [
        IpAddr::V4(Ipv4Addr::new(127, 0, 0, 1)),
        IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2)),
        IpAddr::V6(Ipv6Addr::LOCALHOST),
    ];
    const HASHES: [&str; 3] = ["aa", "bb", "0123abcd"];
    const TICKS: [Duration; 8] = [
        Duration::ZERO,
        Duration::from_millis(1),
        Duration::from_millis(500),
        Duration::from_millis(999),
        Duration::from_secs(1),
        Duration::from_secs(5),
        Duration::from_secs(30),
        Duration::from_secs(61),
    ];

    /// The reference model's view of one tracked connection.
    #[derive(Debug)]
    struct Conn {
        addr: IpAddr,
        since: Instant,
        spoke: bool,
        hello: Option<(String, Role, Instant)>,
        partner: Option<ConnId>,
        /// Set once the relay closes it: when it is dropped.
        closing_until: Option<Instant>,
    }

    impl Conn {
        fn waiting(&self) -> bool {
            self.hello.is_some() && self.partner.is_none() && self.closing_until.is_none()
        }
    }

    struct Harness {
        relay: Relay,
        config: RelayConfig,
        now: Instant,
        conns: BTreeMap<ConnId, Conn>,
        next_id: u64,
        ever_paired: HashSet<ConnId>,
        /// Connections refused at connect: dropped after the close grace unless they leave.
        refused: BTreeMap<ConnId, Instant>,
        /// Those refused for the per-address limit that have not spoken yet: a hello
        /// from one closes the peer waiting under its code.
        over_limit: HashSet<ConnId>,
        outcome: RelayRun,
    }

    /// A normalised output: kind, connection, close code or partner.
    #[derive(Debug, PartialEq, Eq)]
    enum Out {
        Ready(ConnId),
        Paired(ConnId, ConnId),
        Close(ConnId, u16),
        Abort(ConnId),
    }

    pub(super) fn run(data: &[u8]) -> RelayRun {
        let config = RelayConfig {
            hello_timeout: Duration::from_secs(5),
            wait_timeout: Duration::from_secs(60),
            close_grace: Duration::from_secs(1),
            drain_timeout: Duration::from_secs(30),
            max_connections: 6,
            max_per_address: 3,
            max_new_per_minute: None,
            room_salt: [7; 16],
        };
        let mut h = Harness {
            relay: Relay::new(config.clone()),
            config,
            now: Instant::now(),
            conns: BTreeMap::new(),
            next_id: 1,
            ever_paired: HashSet::new(),
            refused: BTreeMap::new(),
            over_limit: HashSet::new(),
            outcome: RelayRun::default(),
        };
        let mut s = Script::new(data);
        while !s.is_empty() {
            match s.byte() % STEPS {
                CONNECT => h.connect(s.pick(&ADDRS)),
                HELLO => {
                    let conn = h.conn(&mut s);
                    let role = if s.byte() & 1 == 0 {
                        Role::Sender
                    } else {
                        Role::Receiver
                    };
                    let hash = s.pick(&HASHES);
                    let text = match s.below(3) {
                        0 => Control::Hello {
                            code_hash_hex: hash.to_owned(),
                            role,
                        }
                        .to_json(),
                        1 => format!(
                            r#"{{"role":"{}","x":[1],"code_hash_hex":"{hash}","type":"hello"}}"#,
                            if role == Role::Sender {
                                "sender"
                            } else {
                                "receiver"
                            }
                        ),
                        _ => format!(
                            r#" {{ "type" : "hello", "code_hash_hex" : "{hash}", "role" : "{}", "role2": 5 }} "#,
                            if role == Role::Sender {
                                "sender"
                            } else {
                                "receiver"
                            }
                        ),
                    };
                    h.message(conn, WireMessage::Text(text));
                }
                MESSAGE => {
                    let conn = h.conn(&mut s);
                    let msg = match s.below(8) {
                        0 => WireMessage::Text(r#"{"type":"hello","role":"sender"}"#.into()),
                        1 => WireMessage::Text(
                            r#"{"type":"hello","code_hash_hex":"","role":"sender"}"#.into(),
                        ),
                        2 => WireMessage::Text(
                            r#"{"type":"hello","code_hash_hex":"aa","role":"boss"}"#.into(),
                        ),
                        3 => WireMessage::Text(
                            r#"{"type":"hello","code_hash_hex":5,"role":"receiver"}"#.into(),
                        ),
                        4 => WireMessage::Text(Control::Ready.to_json()),
                        5 => WireMessage::Binary(Bytes::from(
                            Control::Hello {
                                code_hash_hex: "aa".into(),
                                role: Role::Sender,
                            }
                            .to_json(),
                        )),
                        6 => WireMessage::Binary(Bytes::copy_from_slice(s.blob())),
                        _ => WireMessage::Text(String::from_utf8_lossy(s.blob()).into_owned()),
                    };
                    h.message(conn, msg);
                }
                DISCONNECT => {
                    let conn = h.conn(&mut s);
                    h.disconnect(conn);
                }
                TICK => {
                    h.now += s.pick(&TICKS);
                    h.tick();
                }
                _ => {
                    let conn = h.conn(&mut s);
                    h.flushed(conn);
                }
            }
            h.check_counts();
        }
        h.outcome
    }

    /// The reference's hello rule: a JSON object with type `hello`, a non-empty string
    /// `code_hash_hex` and role `sender` or `receiver`.
    fn model_hello(msg: &WireMessage) -> Option<(String, Role)> {
        let WireMessage::Text(t) = msg else {
            return None;
        };
        let v: serde_json::Value = serde_json::from_str(t).ok()?;
        if v.get("type")?.as_str()? != "hello" {
            return None;
        }
        let hash = v.get("code_hash_hex")?.as_str()?;
        let role = match v.get("role")?.as_str()? {
            "sender" => Role::Sender,
            "receiver" => Role::Receiver,
            _ => return None,
        };
        (!hash.is_empty()).then(|| (hash.to_owned(), role))
    }

    impl Harness {
        /// A connection to act on: mostly a tracked one, sometimes one the relay never
        /// saw or no longer tracks.
        fn conn(&mut self, s: &mut Script) -> ConnId {
            let live: Vec<ConnId> = self.conns.keys().copied().collect();
            match s.below(live.len() + 2) {
                i if i < live.len() => live[i],
                i if i == live.len() => ConnId(self.next_id),
                _ => ConnId(self.next_id.saturating_sub(1)),
            }
        }

        fn outputs(&mut self) -> Vec<Out> {
            let mut out = Vec::new();
            while let Some(o) = self.relay.poll_output() {
                out.push(match o {
                    RelayOutput::Send { conn, msg } => {
                        assert_eq!(
                            msg,
                            WireMessage::from(Control::Ready),
                            "the relay only sends ready"
                        );
                        Out::Ready(conn)
                    }
                    RelayOutput::Paired { sender, receiver } => Out::Paired(sender, receiver),
                    RelayOutput::Close { conn, code, .. } => Out::Close(conn, code),
                    RelayOutput::Abort { conn } => Out::Abort(conn),
                });
            }
            while let Some(ev) = self.relay.poll_event() {
                match ev {
                    RelayEvent::Paired {
                        sender, receiver, ..
                    } => {
                        assert!(
                            out.contains(&Out::Paired(sender, receiver)),
                            "paired event without output"
                        );
                    }
                    RelayEvent::Refused { conn, .. } => {
                        assert!(
                            out.iter()
                                .any(|o| matches!(o, Out::Close(c, _) if *c == conn)),
                            "refused event without a close"
                        );
                    }
                    RelayEvent::PairEnded { .. } => {}
                }
            }
            out
        }

        fn connect(&mut self, addr: IpAddr) {
            let conn = ConnId(self.next_id);
            self.next_id += 1;
            let from_addr = self.conns.values().filter(|c| c.addr == addr).count();
            let fits = self.conns.len() < self.config.max_connections
                && from_addr < self.config.max_per_address;
            let accepted = self.relay.handle_connect(self.now, conn, addr);
            assert_eq!(accepted, fits, "connection limits");
            let out = self.outputs();
            if accepted {
                assert_eq!(out, []);
                self.conns.insert(
                    conn,
                    Conn {
                        addr,
                        since: self.now,
                        spoke: false,
                        hello: None,
                        partner: None,
                        closing_until: None,
                    },
                );
            } else {
                assert_eq!(out, [Out::Close(conn, CLOSE_TRY_AGAIN)]);
                self.refused
                    .insert(conn, self.now + self.config.close_grace);
                if self.conns.len() < self.config.max_connections {
                    self.over_limit.insert(conn);
                }
                self.outcome.refused += 1;
            }
        }

        fn message(&mut self, conn: ConnId, msg: WireMessage) {
            let hello = model_hello(&msg);
            self.relay.handle_message(self.now, conn, msg);
            let out = self.outputs();
            let now = self.now;
            let grace = self.config.close_grace;
            let Some(c) = self.conns.get_mut(&conn) else {
                let peer = match (self.over_limit.remove(&conn), &hello) {
                    (true, Some((hash, role))) => self
                        .conns
                        .iter()
                        .find(|(_, w)| {
                            w.waiting()
                                && w.hello
                                    .as_ref()
                                    .is_some_and(|h| h.0 == *hash && h.1 != *role)
                        })
                        .map(|(id, _)| *id),
                    _ => None,
                };
                let Some(peer) = peer else {
                    assert_eq!(out, [], "a message on an unknown connection does nothing");
                    return;
                };
                assert_eq!(
                    out,
                    [Out::Close(peer, CLOSE_TRY_AGAIN)],
                    "an over-limit hello closes the peer waiting for it"
                );
                if let Some(w) = self.conns.get_mut(&peer) {
                    w.closing_until = Some(now + grace);
                }
                return;
            };
            if c.partner.is_some() || c.closing_until.is_some() {
                assert_eq!(
                    out,
                    [],
                    "messages of paired or closing connections are not the relay's"
                );
                return;
            }
            let first = !c.spoke;
            c.spoke = true;
            if !first {
                assert_eq!(
                    out,
                    [Out::Close(conn, CLOSE_PROTOCOL)],
                    "a waiting client must not talk"
                );
                c.closing_until = Some(now + grace);
                return;
            }
            let Some((hash, role)) = hello else {
                assert_eq!(
                    out,
                    [Out::Close(conn, CLOSE_PROTOCOL)],
                    "a bad hello is refused"
                );
                c.closing_until = Some(now + grace);
                return;
            };
            c.hello = Some((hash.clone(), role, now));
            let waiting: Vec<ConnId> = self
                .conns
                .iter()
                .filter(|(id, w)| {
                    **id != conn && w.waiting() && w.hello.as_ref().is_some_and(|h| h.0 == hash)
                })
                .map(|(id, _)| *id)
                .collect();
            assert!(waiting.len() <= 1, "one waiting client per code");
            let Some(&other) = waiting.first() else {
                assert_eq!(out, [], "the first client of a code waits");
                return;
            };
            let other_role = self.conns[&other].hello.as_ref().map(|h| h.1);
            if other_role == Some(role) {
                assert_eq!(
                    out,
                    [
                        Out::Close(other, CLOSE_TRY_AGAIN),
                        Out::Close(conn, CLOSE_TRY_AGAIN)
                    ],
                    "a duplicate role closes both"
                );
                for id in [other, conn] {
                    if let Some(c) = self.conns.get_mut(&id) {
                        c.closing_until = Some(now + grace);
                    }
                }
                return;
            }
            let (sender, receiver) = if role == Role::Sender {
                (conn, other)
            } else {
                (other, conn)
            };
            assert_eq!(out, [Out::Ready(sender), Out::Paired(sender, receiver)]);
            for id in [sender, receiver] {
                assert!(self.ever_paired.insert(id), "{id:?} paired twice");
            }
            if let Some(c) = self.conns.get_mut(&sender) {
                c.partner = Some(receiver);
            }
            if let Some(c) = self.conns.get_mut(&receiver) {
                c.partner = Some(sender);
            }
            self.outcome.pairs += 1;
        }

        fn disconnect(&mut self, conn: ConnId) {
            self.relay.handle_disconnect(self.now, conn);
            let out = self.outputs();
            if self.refused.remove(&conn).is_some() {
                self.over_limit.remove(&conn);
                assert_eq!(out, [], "a refused connection leaving changes nothing else");
                return;
            }
            let Some(c) = self.conns.remove(&conn) else {
                assert_eq!(out, [], "an unknown disconnect does nothing");
                return;
            };
            match c.partner.filter(|p| self.conns.contains_key(p)) {
                Some(p) if c.closing_until.is_none() => {
                    assert_eq!(out, [Out::Close(p, CLOSE_NORMAL)], "the partner is closed");
                    // It may first take delivery of what is queued for it.
                    if let Some(pc) = self.conns.get_mut(&p) {
                        pc.closing_until = Some(self.now + self.config.drain_timeout);
                    }
                }
                _ => assert_eq!(out, [], "nothing else changes"),
            }
        }

        /// Everything queued for the connection was delivered.
        fn flushed(&mut self, conn: ConnId) {
            self.relay.handle_flushed(self.now, conn);
            assert_eq!(self.outputs(), [], "a flush changes only a deadline");
            let until = self.now + self.config.close_grace;
            if let Some(t) = self
                .conns
                .get_mut(&conn)
                .and_then(|c| c.closing_until.as_mut())
            {
                *t = (*t).min(until);
            }
        }

        fn deadline(&self, c: &Conn) -> Option<Instant> {
            match (c.closing_until, c.partner, &c.hello) {
                (Some(t), _, _) => Some(t),
                (None, Some(_), _) => None,
                (None, None, Some((_, _, t))) => Some(*t + self.config.wait_timeout),
                (None, None, None) => Some(c.since + self.config.hello_timeout),
            }
        }

        fn tick(&mut self) {
            let now = self.now;
            self.relay.handle_timeout(now);
            for o in self.outputs() {
                match o {
                    Out::Abort(conn) if self.refused.contains_key(&conn) => {
                        self.over_limit.remove(&conn);
                        let t = self.refused.remove(&conn).unwrap_or(now);
                        assert!(
                            t <= now,
                            "refused connection aborted before its grace ended"
                        );
                    }
                    Out::Abort(conn) => {
                        let c = self
                            .conns
                            .remove(&conn)
                            .expect("abort only tracked connections");
                        let t = c.closing_until.expect("abort only closing connections");
                        assert!(t <= now, "aborted before its deadline");
                        self.outcome.aborted += 1;
                    }
                    Out::Close(conn, CLOSE_POLICY) => {
                        let deadline = self.conns.get(&conn).and_then(|c| self.deadline(c));
                        let c = &self.conns[&conn];
                        assert!(
                            c.closing_until.is_none() && c.partner.is_none(),
                            "close a pending client"
                        );
                        assert!(
                            deadline.is_some_and(|d| d <= now),
                            "closed before its deadline"
                        );
                        let until = now + self.config.close_grace;
                        if let Some(c) = self.conns.get_mut(&conn) {
                            c.closing_until = Some(until);
                        }
                    }
                    other => panic!("unexpected {other:?} on a timeout"),
                }
            }
            for (id, c) in &self.conns {
                let d = self.deadline(c);
                assert!(
                    d.is_none_or(|d| d > now),
                    "{id:?} outlived its deadline: {c:?}"
                );
            }
            assert!(
                self.refused.values().all(|t| *t > now),
                "a refused connection outlived its grace"
            );
        }

        fn check_counts(&self) {
            assert_eq!(self.relay.connection_count(), self.conns.len());
            let waiting = self.conns.values().filter(|c| c.waiting()).count();
            assert_eq!(self.relay.waiting_count(), waiting);
            let paired = self
                .conns
                .values()
                .filter(|c| c.partner.is_some() && c.closing_until.is_none())
                .count();
            assert_eq!(self.relay.paired_count() * 2, paired, "pairs running");
            let tracked = self.conns.values().filter_map(|c| self.deadline(c));
            let next = tracked.chain(self.refused.values().copied()).min();
            assert_eq!(self.relay.poll_timeout(), next, "the relay's next deadline");
        }
    }
}

mod direct_body {
    use std::collections::HashSet;
    use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
    use std::time::{Duration, Instant};

    use super::script::Script;
    use super::{DirectRun, KEY};
    use crate::crypto::Cipher;
    use crate::direct::{
        candidates_nonce, Action, Candidate, DirectConfig, DirectEvent, DirectMode, DirectPath,
        MAX_CANDIDATES,
    };
    use crate::wire::{self, CandidateEntry, CandidateKind, CandidateList, Control, Role};
    use crate::Error;

    pub(super) const LIST: u8 = 0;
    pub(super) const READY: u8 = 1;
    pub(super) const FAILED: u8 = 2;
    pub(super) const RESULT: u8 = 3;
    pub(super) const TICK: u8 = 4;
    pub(super) const RAW: u8 = 5;
    pub(super) const SESSION: u8 = 6;
    const STEPS: u8 = SESSION + 1;

    const SEED: [u8; 32] = [0x42; 32];
    const LOCAL_FP: [u8; 32] = [0x01; 32];
    const PEER_FP: [u8; 32] = [0x02; 32];
    const OTHER_FP: [u8; 32] = [0x03; 32];
    const TIMEOUT: Duration = Duration::from_secs(5);
    const RELAY: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::new(198, 51, 100, 1)), 9000);
    /// Addresses a list can name: usable ones first (the first [`USABLE`]), then one
    /// of each kind the machine must ignore.
    const POOL: [&str; 14] = [
        "10.0.0.1:4000",
        "192.168.7.2:40000",
        "203.0.113.5:5000",
        "[2001:db8::1]:4000",
        "127.0.0.1:4000",
        "[::1]:4000",
        "224.0.0.1:4000",
        "[ff02::1]:4000",
        "10.0.0.1:0",
        "198.51.100.1:9000",
        "255.255.255.255:1",
        "[fe80::2]:4000",
        "0.0.0.0:4000",
        "not an address",
    ];
    const USABLE: usize = 4;

    struct Model {
        role: Role,
        enc: bool,
        loopback: bool,
        /// When this side may probe: the sender after its dial hold, the receiver at once.
        dial_at: Instant,
        /// The candidates the machine reported usable when it took the list.
        listed: Vec<SocketAddr>,
        t0: Instant,
        now: Instant,
        /// Usable addresses and fingerprint of the list the machine accepted.
        accepted: Option<(HashSet<SocketAddr>, [u8; 32])>,
        asked: Vec<SocketAddr>,
        verified: HashSet<SocketAddr>,
        decided: bool,
        peer_failed: bool,
        error: Option<Error>,
        out: DirectRun,
    }

    pub(super) fn run(data: &[u8]) -> DirectRun {
        let mut s = Script::new(data);
        let settings = s.byte();
        let role = if settings & 1 == 0 {
            Role::Sender
        } else {
            Role::Receiver
        };
        let enc = settings & 2 != 0;
        let mode = if settings & 4 != 0 {
            DirectMode::DirectOnly
        } else {
            DirectMode::Auto
        };
        let loopback = settings & 8 != 0;
        // Half the runs hold the sender's probes for 120 ms (three ticks of 40 ms).
        let dial_hold = Duration::from_millis(if settings & 16 != 0 { 120 } else { 0 });
        let config = DirectConfig {
            mode,
            attempt_timeout: TIMEOUT,
            relay_addrs: vec![RELAY],
            allow_loopback: loopback,
            dial_hold,
        };
        let sealing = enc.then(|| (Cipher::new(&KEY), SEED));
        let t0 = Instant::now();
        let local: Vec<Candidate> = (0..s.below(20))
            .filter_map(|_| {
                Some(Candidate {
                    addr: POOL[s.below(POOL.len())].parse().ok()?,
                    kind: CandidateKind::Host,
                })
            })
            .collect();
        let mut d = DirectPath::new(t0, config, role, LOCAL_FP, &local, sealing.clone())
            .expect("auto and direct-only start");
        let mut m = Model {
            role,
            enc,
            loopback,
            dial_at: match role {
                Role::Sender => t0 + dial_hold,
                Role::Receiver => t0,
            },
            listed: Vec::new(),
            t0,
            now: t0,
            accepted: None,
            asked: Vec::new(),
            verified: HashSet::new(),
            decided: false,
            peer_failed: false,
            error: None,
            out: DirectRun::default(),
        };
        check_own_list(&mut d, &m, sealing.as_ref());
        while !s.is_empty() {
            step(&mut s, &mut d, &mut m, mode, sealing.as_ref());
        }
        m.out.error = d.error().cloned();
        assert_eq!(m.out.error, m.error, "the first error stays");
        m.out
    }

    /// Our own list: one message, in the session's form, with only usable addresses.
    fn check_own_list(d: &mut DirectPath, m: &Model, sealing: Option<&(Cipher, [u8; 32])>) {
        let msg = d.poll_transmit().expect("the list goes out at once");
        let list = match (msg, sealing) {
            (Control::Candidates(l), None) => l,
            (
                Control::EncCandidates {
                    attempt,
                    hidden_candidates,
                },
                Some((c, seed)),
            ) => {
                let sealed = wire::unhex(&hidden_candidates).expect("hex");
                let plain = c
                    .open(&candidates_nonce(seed, m.role, attempt), &sealed)
                    .expect("our list opens as ours");
                match Control::parse(std::str::from_utf8(&plain).expect("utf-8")) {
                    Ok(Control::Candidates(l)) => l,
                    other => panic!("sealed list holds {other:?}"),
                }
            }
            (other, _) => panic!("first message {other:?}"),
        };
        assert_eq!(list.fingerprint, wire::hex(&LOCAL_FP));
        assert!(list.candidates.len() <= MAX_CANDIDATES);
        for c in &list.candidates {
            let i = POOL
                .iter()
                .position(|p| p.parse().ok() == c.addr.parse::<SocketAddr>().ok());
            assert!(
                i.is_some_and(|i| i < USABLE || (m.loopback && (4..6).contains(&i))),
                "we offer {}",
                c.addr
            );
        }
        assert!(d.poll_transmit().is_none());
    }

    fn addr(s: &mut Script) -> (String, Option<usize>) {
        match s.below(4) {
            0 => {
                let b = s.bytes(6);
                let mut x = [0u8; 6];
                x[..b.len()].copy_from_slice(b);
                let ip = Ipv4Addr::new(x[0], x[1], x[2], x[3]);
                (
                    SocketAddr::new(ip.into(), u16::from_be_bytes([x[4], x[5]])).to_string(),
                    None,
                )
            }
            1 => {
                let seg = s.byte();
                let ip = Ipv6Addr::new(u16::from(seg) << 8, 0, 0, 0, 0, 0xffff, 0, 1);
                (SocketAddr::new(ip.into(), 4000).to_string(), None)
            }
            _ => {
                let i = s.below(POOL.len());
                (POOL[i].to_owned(), Some(i))
            }
        }
    }

    fn step(
        s: &mut Script,
        d: &mut DirectPath,
        m: &mut Model,
        mode: DirectMode,
        sealing: Option<&(Cipher, [u8; 32])>,
    ) {
        let before = d.error().cloned();
        let op = s.byte() % STEPS;
        let mut peer_failed_now = false;
        let r = match op {
            LIST => {
                let n = s.below(MAX_CANDIDATES + 3);
                let picked: Vec<(String, Option<usize>)> = (0..n).map(|_| addr(s)).collect();
                let fp = match s.below(3) {
                    0 => PEER_FP,
                    1 => OTHER_FP,
                    _ => [0; 32],
                };
                let bad_fp = s.below(8) == 0;
                let attempt = if s.below(8) == 0 { 2 } else { 1 };
                let seal = s.below(3);
                let list = CandidateList {
                    attempt,
                    fingerprint: if bad_fp { "00".into() } else { wire::hex(&fp) },
                    candidates: picked
                        .iter()
                        .map(|(a, _)| CandidateEntry {
                            addr: a.clone(),
                            kind: if s.below(2) == 0 {
                                CandidateKind::Host
                            } else {
                                CandidateKind::Srflx
                            },
                        })
                        .collect(),
                };
                let plain = Control::Candidates(list);
                let msg = match (sealing, seal) {
                    (Some((c, seed)), 1 | 2) => {
                        let from = if seal == 1 { m.role.other() } else { m.role };
                        Control::EncCandidates {
                            attempt,
                            hidden_candidates: wire::hex(&c.seal(
                                &candidates_nonce(seed, from, attempt),
                                plain.to_json().as_bytes(),
                            )),
                        }
                    }
                    _ => plain,
                };
                let r = d.handle_message(m.now, msg);
                if r.is_ok() {
                    assert!(
                        attempt == 1 && !bad_fp && n <= MAX_CANDIDATES,
                        "a bad list was taken"
                    );
                    assert!(!m.enc || seal == 1, "a list in the wrong form was taken");
                    assert!(m.accepted.is_none(), "a second list was taken");
                    let usable = picked
                        .iter()
                        .filter_map(|(a, i)| {
                            let ok = match i {
                                Some(i) => *i < USABLE || (m.loopback && (4..6).contains(i)),
                                None => true,
                            };
                            ok.then(|| a.parse().expect("usable addresses parse"))
                        })
                        .collect();
                    m.accepted = Some((usable, fp));
                }
                r
            }
            READY | FAILED => {
                let attempt = if s.below(8) == 0 {
                    u32::from(s.byte())
                } else {
                    1
                };
                let msg = if op == READY {
                    Control::DirectReady { attempt }
                } else {
                    Control::DirectFailed {
                        attempt,
                        why: String::from_utf8_lossy(s.blob()).into(),
                    }
                };
                let r = d.handle_message(m.now, msg);
                peer_failed_now = op == FAILED && r.is_ok();
                r
            }
            RESULT => {
                let target = if !m.asked.is_empty() && s.below(4) != 0 {
                    m.asked[s.below(m.asked.len())]
                } else {
                    match addr(s).0.parse() {
                        Ok(a) => a,
                        Err(_) => return,
                    }
                };
                let result = match s.below(3) {
                    0 => Ok(PEER_FP),
                    1 => Ok(OTHER_FP),
                    _ => Err("unreachable".to_owned()),
                };
                let r = d.handle_probe_result(m.now, target, result.clone());
                if r.is_ok() {
                    assert!(
                        m.asked.contains(&target),
                        "a result nobody asked for was taken"
                    );
                    if m.accepted.as_ref().is_some_and(|(_, fp)| result == Ok(*fp)) {
                        m.verified.insert(target);
                    }
                }
                r
            }
            TICK => {
                m.now += Duration::from_millis(u64::from(s.byte()) * 40);
                d.handle_timeout(m.now)
            }
            RAW => match Control::parse(&String::from_utf8_lossy(s.blob())) {
                Ok(c) => d.handle_message(m.now, c),
                Err(_) => return,
            },
            _ => {
                let r = d.handle_message(m.now, Control::Eof);
                assert!(before.is_some() || r.as_ref().is_err_and(|e| e.kind() == "misuse"));
                r
            }
        };
        if let Some(e) = before {
            assert_eq!(r.as_ref().err(), Some(&e), "errors are sticky");
        }
        if let Err(e) = &r {
            if e.kind() != "misuse" && m.error.is_none() {
                m.error = Some(e.clone());
            }
        }
        if m.error.is_some() {
            assert!(
                d.poll_action().is_none() && d.poll_transmit().is_none(),
                "output after an error"
            );
            return;
        }
        m.peer_failed |= peer_failed_now;
        let sent: Vec<Control> = std::iter::from_fn(|| d.poll_transmit()).collect();
        for c in &sent {
            assert!(
                matches!(
                    c,
                    Control::DirectReady { attempt: 1 } | Control::DirectFailed { attempt: 1, .. }
                ),
                "sent {c:?} after the list"
            );
        }
        while let Some(act) = d.poll_action() {
            match act {
                Action::Probe { addr } => {
                    assert!(!m.decided, "a probe after the decision");
                    assert!(m.now >= m.dial_at, "a probe during the sender's dial hold");
                    let (usable, _) = m.accepted.as_ref().expect("a probe before any list");
                    assert!(
                        usable.contains(&addr),
                        "probe of {addr}, which the peer did not send usable"
                    );
                    assert!(!m.asked.contains(&addr), "{addr} probed twice");
                    m.asked.push(addr);
                    m.out.probes += 1;
                }
                Action::Switch { addr } => {
                    assert!(!m.decided, "decided twice");
                    assert!(m.verified.contains(&addr), "switch to unverified {addr}");
                    if m.role == Role::Sender {
                        assert!(
                            matches!(sent.last(), Some(Control::DirectReady { .. })),
                            "the sender switches right after its marker"
                        );
                    }
                    m.decided = true;
                    m.out.switched = true;
                }
                Action::GiveUp { fatal, .. } => {
                    assert!(!m.decided, "decided twice");
                    assert_eq!(fatal, mode == DirectMode::DirectOnly);
                    assert!(
                        peer_failed_now || m.now >= m.t0 + TIMEOUT,
                        "gave up before the deadline"
                    );
                    m.decided = true;
                    m.out.gave_up = true;
                }
            }
        }
        assert_eq!(d.is_finished(), m.decided);
        while let Some(e) = d.poll_event() {
            if let DirectEvent::CandidatesReceived { usable, .. } = e {
                let (taken, _) = m.accepted.as_ref().expect("reported with a list taken");
                assert!(
                    usable.iter().all(|u| taken.contains(u)),
                    "reported usable what the rules refuse"
                );
                m.listed = usable;
            }
        }
        // Nothing stays held once the clock passed the hold: after a list or a tick at
        // or past it, every candidate the machine reported usable was asked for.
        if matches!(op, LIST | TICK) && m.now >= m.dial_at && !m.decided {
            assert!(
                m.listed.iter().all(|u| m.asked.contains(u)),
                "candidates still held after the dial hold"
            );
        }
    }
}

mod serverless_body {
    use std::time::Duration;

    use crate::serverless::{AuthenticatedBy, Handshake, HandshakeConfig, Ticket};
    use crate::wire::{Role, WireMessage};

    pub(crate) fn run(data: &[u8]) -> bool {
        if let Ok(text) = std::str::from_utf8(data) {
            if let Ok(t) = Ticket::parse(text) {
                assert_eq!(Ticket::parse(&t.to_string()), Ok(t));
            }
            let _ = crate::serverless::PeerSpec::parse(text);
        }
        let t = Duration::from_secs(1_764_775_237);
        let _ = crate::sntp::parse_response(data, t, t);
        let Some((&flags, script)) = data.split_first() else {
            return false;
        };
        let role = if flags & 1 == 0 {
            Role::Sender
        } else {
            Role::Receiver
        };
        let pinned = flags & 2 != 0;
        let peer_pinned = flags & 4 != 0;
        let same_code = flags & 8 != 0;
        let mut ours = Handshake::new(HandshakeConfig {
            role,
            pinned_peer: pinned,
            code: (flags & 16 == 0).then(|| "code".to_owned()),
            channel_binding: [1; 32],
            seed: [2; 32],
        });
        let mut peer = Handshake::new(HandshakeConfig {
            role: role.other(),
            pinned_peer: peer_pinned,
            code: Some(if same_code { "code" } else { "cdoe" }.to_owned()),
            channel_binding: [1; 32],
            seed: [3; 32],
        });
        let mut first = None;
        let mut i = 0;
        while i < script.len() {
            let step = script[i];
            i += 1;
            match step % 4 {
                0 | 1 => {
                    while let Some(m) = ours.poll_transmit() {
                        peer.handle_message(m);
                    }
                    if let Some(m) = peer.poll_transmit() {
                        ours.handle_message(m);
                    }
                }
                2 => {
                    let len = usize::from(script.get(i).copied().unwrap_or(0));
                    let raw = &script[(i + 1).min(script.len())..(i + 1 + len).min(script.len())];
                    i += 1 + len;
                    ours.handle_message(WireMessage::Text(
                        String::from_utf8_lossy(raw).into_owned(),
                    ));
                }
                _ => {
                    if let Some(WireMessage::Text(t)) = peer.poll_transmit() {
                        let mut b = t.into_bytes();
                        if !b.is_empty() {
                            let at = usize::from(step) % b.len();
                            b[at] ^= 1 << (step % 7);
                        }
                        ours.handle_message(WireMessage::Text(
                            String::from_utf8_lossy(&b).into_owned(),
                        ));
                    }
                }
            }
            let now = ours.outcome().map(|r| r.cloned().map_err(Clone::clone));
            if first.is_none() {
                first.clone_from(&now);
            }
            assert_eq!(now, first, "the outcome changed");
        }
        match ours.outcome() {
            Some(Ok(a)) => {
                match a.by {
                    AuthenticatedBy::Tickets => assert!(pinned, "tickets without pinning"),
                    // Whatever was forged, only a peer with the code gets in.
                    AuthenticatedBy::Code => assert!(same_code, "a wrong code authenticated"),
                }
                true
            }
            _ => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::direct_body as dp;
    use super::receiver_body as rx;
    use super::relay_body as rl;
    use super::sender_body as tx;

    type Body = fn(&[u8]);

    const TARGETS: [(&str, Body); 9] = [
        ("pake", |d| {
            super::pake(d);
        }),
        ("decode", super::decode_message),
        ("receiver", |d| {
            super::receiver(d);
        }),
        ("sender", |d| {
            super::sender(d);
        }),
        ("relay", |d| {
            super::relay(d);
        }),
        ("stun", super::stun),
        ("direct", |d| {
            super::direct(d);
        }),
        ("serverless", |d| {
            super::serverless(d);
        }),
        ("stream", |d| {
            super::stream(d);
        }),
    ];

    #[test]
    fn committed_corpus_replays_without_failures() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus");
        let mut failures = Vec::new();
        for (target, body) in TARGETS {
            let dir = root.join(target);
            let mut files: Vec<_> = std::fs::read_dir(&dir)
                .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
                .map(|e| e.expect("corpus entry").path())
                .collect();
            files.sort();
            assert!(!files.is_empty(), "no corpus for {target}");
            for file in files {
                let data = std::fs::read(&file).expect("corpus file");
                if std::panic::catch_unwind(|| body(&data)).is_err() {
                    failures.push(file.display().to_string());
                }
            }
        }
        assert!(failures.is_empty(), "fuzz bodies failed on {failures:#?}");
    }

    #[test]
    fn stream_body_delivers_untouched_sessions_and_survives_tampering() {
        // Untouched (op 3): plain stream of a MiB, encrypted 2 MiB + 7, a text.
        for input in [&[4u8, 5, 7, 0, 3][..], &[1, 7, 9, 0, 3], &[10, 40, 3, 0, 3]] {
            let run = super::stream(input);
            assert_eq!((run.ok, run.tampered), (true, false), "{input:?}");
        }
        // The second piece of a 2 MiB + 7 stream dropped, or a bit flipped in it.
        for op in [0u8, 2] {
            let run = super::stream(&[4, 7, 1, 2, op]);
            assert_eq!((run.ok, run.tampered), (false, true), "op {op}");
        }
    }

    #[test]
    fn pake_body_reaches_both_confirmations_and_stops_a_wrong_code() {
        assert_eq!(super::pake(&[0, 2, 0, 1, 0]), (true, true));
        assert_eq!(super::pake(&[1, 2, 0, 1, 0, 1]), (false, false));
        // A corrupted message B: nobody confirms.
        assert_eq!(super::pake(&[0, 2, 0, 4, 40, 2, 0]), (false, false));
    }

    #[test]
    fn decode_body_accepts_every_kind_of_message() {
        for input in [
            &br#"{"type":"file","path":"a","size":3,"compression":"zstd","append_from":1}"#[..],
            br#"{"type":"eof"}"#,
            br#"{"type":"manifest","resume":false,"entries":[],"extensions":["confirm","parts"],"parts":{"total":3}}"#,
            br#"{"type":"manifest_more","index":1,"entries":[{"path":"a","size":1}]}"#,
            br#"{"type":"receiver_manifest_more","index":2,"entries":[{"path":"a","size":1,"chain_hex":"00"}]}"#,
            br#"{"type":"report_more","index":1,"entries":[{"path":"a","reason":"r"}]}"#,
            br#"{"type":"enc_part","index":1,"hidden_part":"00ff"}"#,
            b"0123456789abcdef0123456789abcdef0123456789abcdef",
            b"dir/a\x1b[31m",
            b"\xff\xfe",
            b"",
        ] {
            super::decode_message(input);
        }
    }

    #[rustfmt::skip]
    #[test]
    fn receiver_script_completes_a_plain_transfer() {
        let script = [
            0b000, // plain, window 1
            rx::MANIFEST, 0, 0, 1, 0, 3, 0, // one file "a.txt" of 100 bytes
            rx::FILE, 0, 0, 0, 0, 0,       // its header, no compression, from 0
            rx::DATA, 0, 1, b'x',          // its one piece, correctly chained
            rx::FILE_EOF, rx::EOF, rx::PUMP,
        ];
        let out = super::receiver(&script);
        assert_eq!((out.done, out.writes, out.error), (true, 1, None));
    }

    #[rustfmt::skip]
    #[test]
    fn receiver_script_resumes_an_encrypted_transfer() {
        let script = [
            0b111, // encrypted, window 4
            rx::MANIFEST, 1, 0, 1, 0, 8, 9, // resume; "a.txt" of 2 MiB + 3, sealed with seed 9
            rx::IO_ONE, 0, 0, 4, 0,          // stat: a partial copy of 1 MiB + 1
            rx::PUMP,                        // hash it: the answer goes out
            rx::FILE, 0, 0, 1, 3, 0,         // zstd, append from the copy's size
            rx::DATA, 0, 2, 1, 2,            // the two remaining pieces
            rx::DATA, 0, 1, 3,
            rx::FILE_EOF, rx::EOF, rx::PUMP,
        ];
        let out = super::receiver(&script);
        assert_eq!((out.done, out.answered, out.writes, out.error), (true, true, 2, None));
    }

    #[rustfmt::skip]
    #[test]
    fn receiver_script_reaches_the_integrity_checks() {
        // A piece with one flipped bit: the receiver must fail, not write.
        let script = [
            0b001,
            rx::MANIFEST, 0, 0, 1, 0, 3, 0,
            rx::FILE, 0, 0, 0, 0, 0,
            rx::DATA, 7, 1, b'x',
            rx::PUMP,
        ];
        let out = super::receiver(&script);
        assert_eq!(out.writes, 0);
        assert_eq!(out.error.map(|e| e.kind()), Some("integrity"));
    }

    #[rustfmt::skip]
    #[test]
    fn sender_script_sends_every_file() {
        let script = [
            0b0000_0010, // plain, compression on, no resume, window 1
            2,           // three files
            3, 0x87, 6,  // 5000 bytes, 2 MiB + 7 compressible, 1 MiB + 1
            7,           // nonce seed
            tx::READY, tx::PUMP,
        ];
        let out = super::sender(&script);
        assert_eq!((out.done, out.pieces, out.error), (true, 1 + 3 + 2, None));
    }

    #[rustfmt::skip]
    #[test]
    fn sender_script_appends_after_a_matching_encrypted_answer() {
        let script = [
            0b0011_1001, // encrypted, auto compression, resume, window 4
            1,           // two files
            6, 5,        // 1 MiB + 1 and 1 MiB
            3,
            tx::READY, tx::TRANSMIT, 0,
            tx::ANSWER, 0, 2, // sealed, two entries:
            0, 3, 0,          // a.txt: whole, right chain: skipped
            1, 2, 0,          // dir/b.bin: half, right chain: appended
            tx::PUMP,
        ];
        let out = super::sender(&script);
        assert_eq!((out.done, out.skipped, out.appended, out.error), (true, 1, true, None));
    }

    #[rustfmt::skip]
    #[test]
    fn relay_script_pairs_and_times_out() {
        let script = [
            rl::CONNECT, 0, rl::CONNECT, 1, rl::CONNECT, 2,
            rl::HELLO, 0, 0, 0, 0, // conn 1: sender of "aa"
            rl::HELLO, 1, 1, 0, 1, // conn 2: receiver of "aa": paired
            rl::TICK, 5,           // 5 s: conn 3 never said hello: closed
            rl::TICK, 4,           // 1 s later: dropped
            rl::DISCONNECT, 0,     // the sender leaves: the receiver is closed
        ];
        let out = super::relay(&script);
        assert_eq!((out.pairs, out.aborted), (1, 1));
    }

    #[test]
    fn handover_script_resends_what_a_lost_path_did_not_deliver() {
        // Send 3, deliver 1, lose the path: 2 are sent again on the relay; send 1 more.
        let script = [0, 1, 0, 1, 0, 1, 1, 1, 4, 0, 0, 1];
        assert_eq!(super::handover(&script), 3);
    }

    #[rustfmt::skip]
    #[test]
    fn direct_script_switches_after_a_verified_probe() {
        let script = [
            0b0000, 0,                        // sender, plain, no local candidates
            dp::LIST, 1, 2, 0, 0, 1, 1, 0, 0, // the receiver's list: 10.0.0.1:4000, host
            dp::RESULT, 1, 0, 0,              // its probe verified with that fingerprint
            dp::READY, 1,                     // the receiver is ready: switch
        ];
        let out = super::direct(&script);
        assert_eq!((out.probes, out.switched, out.gave_up, out.error), (1, true, false, None));
    }

    #[rustfmt::skip]
    #[test]
    fn direct_script_gives_up_an_encrypted_attempt_at_its_deadline() {
        let script = [
            0b0011, 0,                        // receiver, encrypted
            dp::LIST, 1, 2, 0, 0, 1, 1, 1, 0, // the sender's list, sealed right
            dp::RESULT, 1, 0, 1,              // another certificate answers: refused
            dp::TICK, 124,                    // 4.96 s: not yet
            dp::TICK, 1,                      // 5 s: given up
        ];
        let out = super::direct(&script);
        assert_eq!((out.probes, out.switched, out.gave_up, out.error), (1, false, true, None));
    }
}
