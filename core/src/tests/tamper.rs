//! Messages changed in flight from sender to receiver: the receiver either fails or ends
//! with exactly the right files; it never puts content under a final name that the sender
//! did not send under that name, and it writes nothing after it detected a fault.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::rc::Rc;
use std::sync::OnceLock;

use bytes::Bytes;
use proptest::prelude::*;

use super::fixtures::{changes_a_file, content, expected_files, Content, Mode, MIB};
use crate::sender::CompressMode;
use crate::sim::{self, Direction, Outcome, ReceiverDisk, SimSetup, Tamper};
use crate::{Event, WireMessage};

/// A session whose stream holds every kind of message: same-size files whose paths
/// differ in one byte, a multi-piece file, a compressed file and an empty one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Variant {
    encrypt: bool,
    resume: bool,
}

const VARIANTS: [Variant; 4] = [
    Variant {
        encrypt: false,
        resume: false,
    },
    Variant {
        encrypt: true,
        resume: false,
    },
    Variant {
        encrypt: false,
        resume: true,
    },
    Variant {
        encrypt: true,
        resume: true,
    },
];

fn files() -> Vec<(String, Bytes)> {
    vec![
        ("a1".into(), content(Content::Text, 1500, 1)),
        ("a2".into(), content(Content::Random, 1500, 2)),
        ("big".into(), content(Content::Random, MIB + 10, 3)),
        ("d/z".into(), content(Content::Text, MIB + 200, 4)),
        ("e".into(), Bytes::new()),
    ]
}

fn disk(v: Variant, files: &[(String, Bytes)]) -> ReceiverDisk {
    let mut disk = ReceiverDisk::default();
    if v.resume {
        disk.partial
            .insert("big".into(), files[2].1[..MIB + 1].to_vec());
        disk.complete.insert("a1".into(), b"an older a1".to_vec());
        disk.complete.insert("d/z".into(), files[3].1.to_vec());
    }
    disk
}

fn setup(v: Variant, files: &[(String, Bytes)]) -> SimSetup {
    let mut s = Mode {
        encrypt: v.encrypt,
        compress: CompressMode::Auto,
        resume: v.resume,
    }
    .setup(files);
    s.disk = disk(v, files);
    s
}

/// The untampered sender-to-receiver stream of a variant (it does not depend on the
/// completion order, see the order tests).
fn clean_stream(v: Variant) -> &'static [WireMessage] {
    static STREAMS: [OnceLock<Vec<WireMessage>>; 4] = [
        OnceLock::new(),
        OnceLock::new(),
        OnceLock::new(),
        OnceLock::new(),
    ];
    let i = VARIANTS
        .iter()
        .position(|x| *x == v)
        .expect("a known variant");
    STREAMS[i].get_or_init(|| {
        let seen = Rc::new(RefCell::new(Vec::new()));
        let rec = seen.clone();
        let mut s = setup(v, &files());
        s.tamper = Some(Box::new(move |dir, _, m| {
            if dir == Direction::ToReceiver {
                rec.borrow_mut().push(m.clone());
            }
            vec![m]
        }));
        let out = sim::run(s);
        assert_eq!(out.receiver_error, None);
        let stream = seen.borrow().clone();
        stream
    })
}

/// One change to the stream.
#[derive(Debug, Clone, Copy)]
enum Change {
    /// XOR one byte of message `msg` (kept ASCII in text messages).
    Byte {
        msg: usize,
        pos: usize,
        xor: u8,
    },
    Drop {
        msg: usize,
    },
    Duplicate {
        msg: usize,
    },
    /// Deliver message `msg` after the next one.
    SwapWithNext {
        msg: usize,
    },
    /// Cut a message to `len` bytes (binary) or characters (text).
    Truncate {
        msg: usize,
        len: usize,
    },
}

fn change_byte(m: WireMessage, pos: usize, xor: u8) -> WireMessage {
    match m {
        WireMessage::Binary(b) => {
            let mut v = b.to_vec();
            if v.is_empty() {
                return WireMessage::Binary(b);
            }
            let i = pos % v.len();
            v[i] ^= xor.max(1);
            WireMessage::Binary(Bytes::from(v))
        }
        WireMessage::Text(t) => {
            let mut v = t.into_bytes();
            if v.is_empty() {
                return WireMessage::Text(String::new());
            }
            let i = pos % v.len();
            let old = v[i];
            let mut new = (old ^ xor) & 0x7f;
            if new == old {
                new ^= 1;
            }
            v[i] = new;
            // ASCII into ASCII keeps UTF-8 valid; a non-ASCII byte is only changed if the
            // result stays UTF-8 (a WebSocket peer would refuse invalid text anyway).
            match String::from_utf8(v) {
                Ok(s) => WireMessage::Text(s),
                Err(e) => {
                    let mut v = e.into_bytes();
                    v[i] = old;
                    WireMessage::Text(String::from_utf8(v).expect("restored"))
                }
            }
        }
    }
}

fn truncate(m: WireMessage, len: usize) -> WireMessage {
    match m {
        WireMessage::Binary(b) => {
            let n = len % b.len().max(1);
            WireMessage::Binary(b.slice(..n))
        }
        WireMessage::Text(t) => {
            let n = len % t.len().max(1);
            let cut: String = t.chars().take(n).collect();
            WireMessage::Text(cut)
        }
    }
}

fn tamper(change: Change) -> Tamper {
    let mut held: Option<WireMessage> = None;
    Box::new(move |dir, i, m| {
        if dir != Direction::ToReceiver {
            return vec![m];
        }
        match change {
            Change::Byte { msg, pos, xor } if i == msg => vec![change_byte(m, pos, xor)],
            Change::Drop { msg } if i == msg => vec![],
            Change::Duplicate { msg } if i == msg => vec![m.clone(), m],
            Change::SwapWithNext { msg } if i == msg => {
                held = Some(m);
                vec![]
            }
            Change::SwapWithNext { msg } if i == msg + 1 => {
                let mut v = vec![m];
                v.extend(held.take());
                v
            }
            Change::Truncate { msg, len } if i == msg => vec![truncate(m, len)],
            _ => vec![m],
        }
    })
}

/// The safety property, checked on any tampered run.
fn assert_safe(out: &Outcome, v: Variant, what: &str) {
    let sent: BTreeMap<String, Bytes> = files().into_iter().collect();
    let before = disk(v, &files());
    assert!(!out.step_limit_hit, "{what}: the session did not end");
    assert!(out.violations.is_empty(), "{what}: {:?}", out.violations);
    for (path, data) in out.files() {
        let as_sent = sent.get(path).is_some_and(|d| d[..] == data[..]);
        let as_before = before.complete.get(path) == Some(data);
        assert!(
            as_sent || as_before,
            "{what}: {path} holds {} bytes that were never sent under that name",
            data.len()
        );
    }
    match (&out.receiver_error, out.receiver_io_before_error) {
        (Some(_), Some(n)) => {
            let late: Vec<_> = out.receiver_io[n..]
                .iter()
                .filter(|r| changes_a_file(r))
                .collect();
            assert!(
                late.is_empty(),
                "{what}: file changes after the fault: {late:?}"
            );
        }
        (None, _) => {
            assert_eq!(
                out.receiver_events.last(),
                Some(&Event::Done),
                "{what}: the receiver neither failed nor finished"
            );
            let sent: Vec<(String, Bytes)> = files();
            assert_eq!(*out.files(), expected_files(&before, &sent), "{what}");
        }
        (Some(e), None) => panic!("{what}: error {e} without a recorded position"),
    }
}

fn run_changed(v: Variant, change: Change, seed: u64) -> Outcome {
    let mut s = setup(v, &files());
    s.tamper = Some(tamper(change));
    s.seed = seed;
    sim::run(s)
}

fn change_strategy() -> impl Strategy<Value = (prop::sample::Index, u8, usize, u8, usize)> {
    (
        any::<prop::sample::Index>(),
        0..5u8,
        // Half of the byte positions fall in the 40-byte data header or a short text.
        prop_oneof![0..40usize, any::<usize>()],
        1..=255u8,
        any::<usize>(),
    )
}

fn resolve(
    v: Variant,
    (msg, kind, pos, xor, len): (prop::sample::Index, u8, usize, u8, usize),
) -> Change {
    let msg = msg.index(clean_stream(v).len());
    match kind {
        0 | 1 => Change::Byte { msg, pos, xor },
        2 => Change::Drop { msg },
        3 => Change::Duplicate { msg },
        _ if len % 2 == 0 => Change::SwapWithNext { msg },
        _ => Change::Truncate { msg, len },
    }
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 32,
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn any_single_change_in_flight_is_caught_or_harmless(
        v in prop::sample::select(VARIANTS.to_vec()),
        raw in change_strategy(),
        seed in any::<u64>(),
    ) {
        let change = resolve(v, raw);
        let out = run_changed(v, change, seed);
        assert_safe(&out, v, &format!("{v:?} {change:?}"));
    }
}

/// Small files, so that every byte of every control message can be tried.
fn small_files() -> Vec<(String, Bytes)> {
    vec![
        ("a1".into(), Bytes::from_static(b"hello")),
        ("a2".into(), Bytes::from_static(b"world")),
        ("e".into(), Bytes::new()),
        ("b".into(), Bytes::from_static(b"xyz")),
    ]
}

fn small_stream(encrypt: bool) -> Vec<WireMessage> {
    let seen = Rc::new(RefCell::new(Vec::new()));
    let rec = seen.clone();
    let mut s = Mode {
        encrypt,
        compress: CompressMode::Off,
        resume: false,
    }
    .setup(&small_files());
    s.tamper = Some(Box::new(move |dir, _, m| {
        if dir == Direction::ToReceiver {
            rec.borrow_mut().push(m.clone());
        }
        vec![m]
    }));
    let out = sim::run(s);
    assert_eq!(out.receiver_error, None);
    let stream = seen.borrow().clone();
    stream
}

/// Replace byte `pos` of message `msg` by `value` and check the small session; returns
/// what went wrong.
fn check_small(encrypt: bool, msg: usize, pos: usize, value: u8) -> Result<(), String> {
    let change = move |m: WireMessage| match m {
        WireMessage::Text(t) => {
            let mut b = t.into_bytes();
            b[pos] = value;
            WireMessage::Text(String::from_utf8(b).expect("ASCII"))
        }
        WireMessage::Binary(b) => {
            let mut v = b.to_vec();
            v[pos] = value;
            WireMessage::Binary(Bytes::from(v))
        }
    };
    let mut s = Mode {
        encrypt,
        compress: CompressMode::Off,
        resume: false,
    }
    .setup(&small_files());
    s.tamper = Some(Box::new(move |dir, i, m| {
        if dir == Direction::ToReceiver && i == msg {
            vec![change(m)]
        } else {
            vec![m]
        }
    }));
    let out = sim::run(s);
    let what = format!(
        "encrypt={encrypt} message {msg} byte {pos} := {:?}",
        value as char
    );
    let sent: BTreeMap<String, Bytes> = small_files().into_iter().collect();
    if out.step_limit_hit || !out.violations.is_empty() {
        return Err(format!("{what}: did not end cleanly: {:?}", out.violations));
    }
    for (path, data) in out.files() {
        if sent.get(path).is_none_or(|d| d[..] != data[..]) {
            return Err(format!(
                "{what}: {path} holds {:?}, never sent under that name",
                String::from_utf8_lossy(data)
            ));
        }
    }
    match out.receiver_io_before_error {
        Some(n) if out.receiver_io[n..].iter().any(changes_a_file) => {
            Err(format!("{what}: file changes after the fault"))
        }
        None if out.files().len() != sent.len() => {
            Err(format!("{what}: no error, yet files are missing"))
        }
        _ => Ok(()),
    }
}

fn assert_no_failures(failures: &[String]) {
    assert!(
        failures.is_empty(),
        "{} unsafe outcomes, e.g.:\n{}",
        failures.len(),
        failures
            .iter()
            .take(20)
            .cloned()
            .collect::<Vec<_>>()
            .join("\n")
    );
}

#[test]
fn every_byte_of_every_control_message_is_caught_or_harmless() {
    // Digits, letters, and JSON's own punctuation; fewer in encrypted messages, whose
    // bytes are mostly hex, where any change is as good as another.
    const PLAIN_VALUES: &[u8] = b"02az\" {},\\";
    const HEX_VALUES: &[u8] = b"0g\"";
    let mut failures = Vec::new();
    for encrypt in [false, true] {
        let values = if encrypt { HEX_VALUES } else { PLAIN_VALUES };
        let stream = small_stream(encrypt);
        for (msg, m) in stream.iter().enumerate() {
            let WireMessage::Text(t) = m else { continue };
            for (pos, &old) in t.as_bytes().iter().enumerate() {
                for &value in values.iter().chain([&(old ^ 1)]) {
                    if value != old {
                        failures.extend(check_small(encrypt, msg, pos, value).err());
                    }
                }
            }
        }
    }
    assert_no_failures(&failures);
}

#[test]
fn every_byte_of_every_data_message_is_caught() {
    let mut failures = Vec::new();
    for encrypt in [false, true] {
        let stream = small_stream(encrypt);
        for (msg, m) in stream.iter().enumerate() {
            let WireMessage::Binary(b) = m else { continue };
            for (pos, &old) in b.iter().enumerate() {
                for value in [old ^ 0x01, old ^ 0x80] {
                    failures.extend(check_small(encrypt, msg, pos, value).err());
                }
            }
        }
    }
    assert_no_failures(&failures);
}

/// Plain mode authenticates nothing, yet a single changed byte is an accident the chain
/// is there to catch: renaming the first file's header to the second (same size) file
/// must not leave the first file's bytes under the second's name.
#[test]
fn a_renamed_file_header_never_leaves_another_files_content_under_a_final_name() {
    let mut s = Mode {
        encrypt: false,
        compress: CompressMode::Off,
        resume: false,
    }
    .setup(&small_files());
    s.tamper = Some(Box::new(|dir, _, m| match m {
        WireMessage::Text(t)
            if dir == Direction::ToReceiver
                && t.contains(r#""path":"a1""#)
                && t.contains(r#""type":"file""#) =>
        {
            vec![WireMessage::Text(
                t.replace(r#""path":"a1""#, r#""path":"a2""#),
            )]
        }
        other => vec![other],
    }));
    let out = sim::run(s);
    assert_eq!(out.receiver_error.as_ref().map(|e| e.kind()), Some("peer"));
    assert_ne!(
        out.files().get("a2").map(Vec::as_slice),
        Some(&b"hello"[..]),
        "a1's bytes were put in place as a2"
    );
}

#[test]
fn a_dropped_data_message_is_detected() {
    for v in VARIANTS {
        let stream = clean_stream(v);
        let pieces: Vec<usize> = (0..stream.len())
            .filter(|&i| matches!(stream[i], WireMessage::Binary(_)))
            .collect();
        for msg in pieces {
            let out = run_changed(v, Change::Drop { msg }, 1);
            assert_eq!(
                out.receiver_error.as_ref().map(|e| e.kind()),
                Some("integrity"),
                "{v:?} message {msg}"
            );
            assert_safe(&out, v, "drop");
        }
    }
}

#[test]
fn a_repeated_or_swapped_data_message_is_detected() {
    for v in VARIANTS {
        let stream = clean_stream(v);
        let msg = stream
            .iter()
            .position(|m| matches!(m, WireMessage::Binary(_)))
            .expect("a piece");
        for change in [Change::Duplicate { msg }, Change::SwapWithNext { msg }] {
            let out = run_changed(v, change, 2);
            assert!(out.receiver_error.is_some(), "{v:?} {change:?}");
            assert_safe(&out, v, "reorder");
        }
    }
}

#[test]
fn a_flipped_payload_bit_is_detected_in_every_variant() {
    for v in VARIANTS {
        let stream = clean_stream(v);
        for (msg, m) in stream.iter().enumerate() {
            let WireMessage::Binary(b) = m else { continue };
            let out = run_changed(
                v,
                Change::Byte {
                    msg,
                    pos: b.len() / 2 + 40,
                    xor: 0x10,
                },
                3,
            );
            assert_eq!(
                out.receiver_error.as_ref().map(|e| e.kind()),
                Some("integrity"),
                "{v:?} message {msg}"
            );
            assert_safe(&out, v, "flip");
        }
    }
}

#[test]
fn a_dropped_eof_fails_the_receiver_when_the_connection_closes() {
    for v in VARIANTS {
        let last = clean_stream(v).len() - 1;
        let out = run_changed(v, Change::Drop { msg: last }, 4);
        let err = out.receiver_error.clone().expect("the receiver fails");
        assert_eq!(err.kind(), "lost");
        assert!(err.to_string().contains("went away"), "{err}");
        assert_safe(&out, v, "no eof");
    }
}

#[test]
fn a_receiver_whose_sender_goes_silent_times_out() {
    let v = VARIANTS[0];
    let last = clean_stream(v).len() - 1;
    let mut s = setup(v, &files());
    s.tamper = Some(tamper(Change::Drop { msg: last }));
    s.sender_lingers = true;
    let out = sim::run(s);
    let err = out.receiver_error.clone().expect("the receiver fails");
    assert_eq!(err.kind(), "timeout", "{err}");
    assert_eq!(
        out.elapsed,
        crate::receiver::ReceiverConfig::default().idle_timeout
    );
    assert_safe(&out, v, "silent");
}

#[test]
fn a_receiver_with_another_key_fails_and_writes_nothing() {
    let mut s = setup(VARIANTS[1], &files());
    s.receiver_secrets = super::fixtures::encrypted_wrong_key();
    let out = sim::run(s);
    let err = out.receiver_error.clone().expect("the receiver fails");
    assert_eq!(err.kind(), "integrity", "{err}");
    assert!(out.receiver_io.is_empty());
    assert!(out.files().is_empty());
}

#[test]
fn sides_that_disagree_on_encryption_never_pair_and_both_time_out() {
    let mut s = setup(VARIANTS[0], &files());
    s.receiver_secrets = super::fixtures::encrypted();
    let out = sim::run(s);
    assert_eq!(out.sender_error.as_ref().map(|e| e.kind()), Some("timeout"));
    assert_eq!(
        out.receiver_error.as_ref().map(|e| e.kind()),
        Some("timeout")
    );
    assert!(!out
        .relay_outputs
        .iter()
        .any(|o| matches!(o, crate::relay::RelayOutput::Paired { .. })));
    assert!(out.files().is_empty());
}
