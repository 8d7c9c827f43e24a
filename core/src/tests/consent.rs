//! The receiver's consent (extension `consent`) over whole simulated sessions: nothing
//! is opened or written before the user accepts, a refusal ends both sides as
//! "declined", and a p2p-copy 0.1.x sender (no offer) is never told anything.

use bytes::Bytes;

use super::fixtures::{content, Content, Mode, MIB};
use crate::receiver::{IoRequest, ReceiverConfig};
use crate::sender::{CompressMode, SenderConfig};
use crate::sim::{self, Outcome, SimSetup};
use crate::wire::{Control, WireMessage};
use crate::Event;

fn files() -> Vec<(String, Bytes)> {
    vec![
        ("a.txt".to_owned(), content(Content::Text, 1000, 1)),
        (
            "dir/b.bin".to_owned(),
            content(Content::Random, 2 * MIB + 3, 2),
        ),
    ]
}

/// A session between peers of this project (`extensions` true) or from a sender that
/// offers nothing (as p2p-copy 0.1.x), to a receiver that asks its user.
fn setup(encrypt: bool, resume: bool, extensions: bool, answer: bool) -> SimSetup {
    let mode = Mode {
        encrypt,
        compress: CompressMode::Auto,
        resume,
    };
    let mut s = mode.setup(&files());
    s.sender_config = SenderConfig {
        confirm: extensions,
        consent: extensions,
        ..s.sender_config
    };
    s.receiver_config = ReceiverConfig {
        consent: true,
        ..s.receiver_config
    };
    s.consent = answer;
    s
}

fn consents(out: &Outcome) -> Vec<bool> {
    out.receiver_sent
        .iter()
        .filter_map(|m| match m {
            WireMessage::Text(t) => match Control::parse(t) {
                Ok(Control::Consent { accept }) => Some(accept),
                _ => None,
            },
            WireMessage::Binary(_) => None,
        })
        .collect()
}

fn touches_files(out: &Outcome) -> bool {
    out.receiver_io
        .iter()
        .any(|r| matches!(r, IoRequest::Open { .. } | IoRequest::Write { .. }))
}

#[test]
fn an_accepted_transfer_arrives_and_the_sender_waited_for_the_answer() {
    for (encrypt, resume) in [(false, false), (true, false), (false, true), (true, true)] {
        let out = sim::run(setup(encrypt, resume, true, true));
        assert_eq!(out.sender_error, None, "encrypt={encrypt} resume={resume}");
        assert_eq!(out.receiver_error, None);
        assert_eq!(out.files().len(), 2);
        assert_eq!(consents(&out), vec![true]);
        assert!(out.sender_events.contains(&Event::AwaitingConsent));
    }
}

#[test]
fn a_declined_transfer_ends_both_sides_as_declined_and_writes_nothing() {
    for (encrypt, resume) in [(false, false), (true, true)] {
        let out = sim::run(setup(encrypt, resume, true, false));
        let r = out.receiver_error.clone().expect("the receiver ends");
        let s = out.sender_error.clone().expect("the sender ends");
        assert_eq!((r.kind(), s.kind()), ("declined", "declined"), "{r} / {s}");
        assert!(s.to_string().contains("declined"), "{s}");
        assert_eq!(consents(&out), vec![false]);
        assert!(!touches_files(&out), "{:?}", out.receiver_io);
        assert!(out.files().is_empty());
    }
}

#[test]
fn a_sender_that_offers_nothing_is_told_nothing_either_way() {
    for answer in [true, false] {
        let out = sim::run(setup(false, false, false, answer));
        assert!(consents(&out).is_empty());
        let ext = out
            .receiver_sent
            .iter()
            .any(|m| matches!(m, WireMessage::Text(t) if !t.contains("\"hello\"")));
        assert!(!ext, "only hello went out: {:?}", out.receiver_sent);
        if answer {
            assert_eq!((&out.sender_error, &out.receiver_error), (&None, &None));
            assert_eq!(out.files().len(), 2);
        } else {
            let r = out.receiver_error.clone().expect("the receiver ends");
            assert_eq!(r.kind(), "declined");
            assert!(!touches_files(&out));
        }
    }
}

#[test]
fn a_receiver_that_does_not_ask_leaves_the_offer_aside_and_the_sender_never_waits() {
    let mut s = setup(true, false, true, false);
    s.receiver_config.consent = false;
    let out = sim::run(s);
    assert_eq!((&out.sender_error, &out.receiver_error), (&None, &None));
    assert!(consents(&out).is_empty());
    assert!(!out.sender_events.contains(&Event::AwaitingConsent));
    assert_eq!(out.files().len(), 2);
}

#[test]
fn keep_existing_keeps_a_different_file_and_tells_the_sender_it_was_not_delivered() {
    let mut s = setup(false, false, true, true);
    s.receiver_config.keep_existing = true;
    let same = files()[1].1.to_vec();
    s.disk.complete.insert("a.txt".into(), b"older".to_vec());
    s.disk.complete.insert("dir/b.bin".into(), same.clone());
    let out = sim::run(s);
    assert_eq!((&out.sender_error, &out.receiver_error), (&None, &None));
    assert_eq!(out.files()["a.txt"], b"older".to_vec());
    assert_eq!(out.files()["dir/b.bin"], same);
    assert!(out.receiver_events.contains(&Event::FileKept {
        path: "a.txt".into()
    }));
    let not_delivered: Vec<&Event> = out
        .sender_events
        .iter()
        .filter(|e| matches!(e, Event::FileNotDelivered { path, .. } if path == "a.txt"))
        .collect();
    assert_eq!(not_delivered.len(), 1, "{:?}", out.sender_events);
    assert!(out.sender_events.contains(&Event::Delivery {
        confirmed: true,
        delivered: 1
    }));
}
