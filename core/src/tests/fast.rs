//! The fast data path (extension `fast`) over whole simulated sessions: used only when
//! both sides agree, every mode round-trips on it, and resume answers with its chain.

use std::cell::RefCell;
use std::rc::Rc;

use bytes::Bytes;
use proptest::prelude::*;

use super::fixtures::{assert_clean, content, expected_files, opens, Content, Mode, MIB};
use crate::chain::{resume_chain_of, ChainKind};
use crate::sender::CompressMode;
use crate::sim::{self, Direction, Outcome, ReceiverDisk, SimSetup};
use crate::wire::{self, Control, DataMessage, WireMessage};

/// A session in `mode` where the sender offers (with confirmation) and the receiver
/// accepts the fast data path as told.
fn setup(mode: Mode, files: &[(String, Bytes)], offer: bool, accept: bool) -> SimSetup {
    let mut s = mode.setup(files);
    s.sender_config.confirm = true;
    s.sender_config.fast = offer;
    s.receiver_config.fast = accept;
    s
}

/// Run, keeping every message the relay forwarded to the receiver.
fn run_recorded(s: SimSetup) -> (Outcome, Vec<WireMessage>, Vec<WireMessage>) {
    let mut s = s;
    let seen = Rc::new(RefCell::new((Vec::new(), Vec::new())));
    let rec = Rc::clone(&seen);
    s.tamper = Some(Box::new(move |dir, _, m| {
        let mut r = rec.borrow_mut();
        match dir {
            Direction::ToReceiver => r.0.push(m.clone()),
            Direction::ToSender => r.1.push(m.clone()),
        }
        vec![m]
    }));
    let out = sim::run(s);
    let (to_receiver, to_sender) = seen.borrow().clone();
    (out, to_receiver, to_sender)
}

/// Whether the data messages show the fast path: a zero chain field when encrypting,
/// `"fast":true` file headers when plain.
fn went_fast(encrypt: bool, to_receiver: &[WireMessage]) -> bool {
    if encrypt {
        to_receiver.iter().any(|m| match m {
            WireMessage::Binary(b) => DataMessage::decode(b.clone())
                .map(|d| d.chain == [0; 32])
                .unwrap_or(false),
            WireMessage::Text(_) => false,
        })
    } else {
        to_receiver.iter().any(|m| match m {
            WireMessage::Text(t) => matches!(Control::parse(t), Ok(Control::File(h)) if h.fast),
            WireMessage::Binary(_) => false,
        })
    }
}

fn files() -> Vec<(String, Bytes)> {
    vec![
        ("a.bin".to_owned(), content(Content::Random, 2 * MIB + 9, 1)),
        ("dir/b.txt".to_owned(), content(Content::Text, MIB + 1, 2)),
        ("empty".to_owned(), Bytes::new()),
    ]
}

#[test]
fn the_fast_path_is_used_only_when_offered_and_accepted() {
    for encrypt in [false, true] {
        for (offer, accept) in [(true, true), (true, false), (false, true)] {
            let mode = Mode {
                encrypt,
                compress: CompressMode::Auto,
                resume: false,
            };
            let (out, to_receiver, _) = run_recorded(setup(mode, &files(), offer, accept));
            assert_clean(&out, &expected_files(&ReceiverDisk::default(), &files()));
            assert_eq!(
                went_fast(encrypt, &to_receiver),
                offer && accept,
                "encrypt {encrypt}, offered {offer}, accepted {accept}"
            );
        }
    }
}

#[test]
fn a_resume_on_the_fast_path_answers_with_the_blake3_chain_and_appends() {
    for encrypt in [false, true] {
        let source = content(Content::Random, 3 * MIB + 5, 7);
        let held = MIB + 100;
        let mut disk = ReceiverDisk::default();
        disk.partial.insert("a.bin".into(), source[..held].to_vec());
        let files = vec![("a.bin".to_owned(), source.clone())];
        let mode = Mode {
            encrypt,
            compress: CompressMode::Off,
            resume: true,
        };
        let mut s = setup(mode, &files, true, true);
        s.disk = disk.clone();
        let (out, to_receiver, to_sender) = run_recorded(s);
        assert_clean(&out, &expected_files(&disk, &files));
        assert_eq!(opens(&out.receiver_io), vec![("a.bin".into(), held as u64)]);
        assert!(went_fast(encrypt, &to_receiver));
        if !encrypt {
            let answer = to_sender.iter().find_map(|m| match m {
                WireMessage::Text(t) => match Control::parse(t) {
                    Ok(Control::ReceiverManifest { entries }) => Some(entries),
                    _ => None,
                },
                WireMessage::Binary(_) => None,
            });
            let want = resume_chain_of(ChainKind::Blake3, &source[..held]).unwrap();
            assert_eq!(answer.unwrap()[0].chain_hex, wire::hex(&want));
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 16,
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn any_files_round_trip_on_the_fast_path_in_any_mode(
        mode in prop::sample::select(Mode::all()),
        sizes in prop::collection::vec(0..3 * MIB, 1..4),
        seed in any::<u64>(),
        link in 1..6usize,
        send_window in 1..6usize,
        recv_window in 1..6usize,
    ) {
        let files: Vec<(String, Bytes)> = sizes
            .iter()
            .enumerate()
            .map(|(i, &n)| {
                let kind = if i % 2 == 0 { Content::Random } else { Content::TextThenRandom };
                (format!("d/f{i}"), content(kind, n, seed ^ i as u64))
            })
            .collect();
        let mut partial = ReceiverDisk::default();
        if mode.resume {
            let (p, d) = &files[0];
            partial.partial.insert(p.clone(), d[..d.len() / 2].to_vec());
        }
        let mut s = setup(mode, &files, true, true);
        s.disk = partial.clone();
        s.seed = seed;
        s.link_capacity = link;
        s.sender_config.window = send_window;
        s.receiver_config.window = recv_window;
        let out = sim::run(s);
        assert_clean(&out, &expected_files(&partial, &files));
    }
}
