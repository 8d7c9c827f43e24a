//! Whole sessions of the reconnect extension on the in-memory [`sim`](crate::sim): the
//! first session agrees on it, a reconnect resumes from the receiver's partial file once
//! both sides proved themselves, and a side that cannot prove itself learns nothing.

use bytes::Bytes;

use super::fixtures::{encrypted, plain};
use crate::reconnect::{
    Binding, ReceiverReconnect, ReconnectStatus, ResumeState, SenderReconnect, Ticket,
};
use crate::sim::{self, SimSetup};
use crate::wire::{self, Control, ManifestEntry};
use crate::{Event, Secrets, WireMessage};

const NAME: &str = "big.bin";
const CODE: &str = "the code";

fn ticket() -> Ticket {
    Ticket {
        session: [3; 16],
        secret: [4; 32],
    }
}

fn source() -> Bytes {
    Bytes::from(
        (0..3 * (1 << 20) + 999)
            .map(|i| (i * 7 % 251) as u8)
            .collect::<Vec<u8>>(),
    )
}

fn setup(secrets: &Secrets) -> SimSetup {
    let mut s = SimSetup::new(vec![(NAME.into(), source())], secrets);
    s.sender_config.confirm = true;
    s
}

/// The receiver's state after a first session that agreed on the extension.
fn agreed(code: &str) -> ResumeState {
    let offer = SenderReconnect::Offer {
        ticket: ticket(),
        binding: Binding::new(&ticket(), code),
    }
    .offer();
    let entries = [ManifestEntry {
        path: NAME.into(),
        size: source().len() as u64,
        kind: None,
    }];
    let accept = ReceiverReconnect::Accept { code: code.into() };
    accept
        .take_offer(Some(&offer), &entries)
        .unwrap()
        .unwrap()
        .0
}

fn resume(code: &str, attempt: u32) -> SenderReconnect {
    SenderReconnect::Resume {
        binding: Binding::new(&ticket(), code),
        attempt,
        nonce: [9; 16],
    }
}

/// A reconnect (attempt 1) of a transfer that agreed on the extension, into the
/// receiver's directory as `prepare` leaves it; both sides must succeed.
fn reconnected(secrets: &Secrets, prepare: impl FnOnce(&mut sim::ReceiverDisk)) -> sim::Outcome {
    let mut s = setup(secrets);
    prepare(&mut s.disk);
    s.sender_config.reconnect = Some(resume(CODE, 1));
    s.receiver_config.reconnect = Some(ReceiverReconnect::Resume(agreed(CODE)));
    let out = sim::run(s);
    assert!(
        out.sender_error.is_none() && out.receiver_error.is_none(),
        "{out:?}"
    );
    out
}

#[test]
fn the_first_session_agrees_and_hands_the_ticket_over() {
    for secrets in [plain(), encrypted()] {
        let mut s = setup(&secrets);
        s.sender_config.reconnect = Some(SenderReconnect::Offer {
            ticket: ticket(),
            binding: Binding::new(&ticket(), CODE),
        });
        s.receiver_config.reconnect = Some(ReceiverReconnect::Accept { code: CODE.into() });
        let out = sim::run(s);
        assert!(
            out.sender_error.is_none() && out.receiver_error.is_none(),
            "{out:?}"
        );
        assert_eq!(out.files()[NAME], source());
        let Some(WireMessage::Text(t)) = out.receiver_sent.first() else {
            panic!("the receiver answers the offer first");
        };
        assert!(t.contains(wire::EXT_RECONNECT), "{t}");
    }
}

#[test]
fn a_reconnect_resumes_from_the_partial_file_after_both_proofs() {
    for secrets in [plain(), encrypted()] {
        let held = 2 << 20;
        let out = reconnected(&secrets, |disk| {
            disk.partial.insert(NAME.into(), source()[..held].to_vec());
        });
        assert_eq!(out.files()[NAME], source());
        let from = out.sender_events.iter().find_map(|e| match e {
            Event::FileStarted { append_from, .. } => Some(*append_from),
            _ => None,
        });
        assert_eq!(
            from,
            Some(held as u64),
            "nothing the receiver held is sent again"
        );
        let kinds: Vec<String> = out
            .receiver_sent
            .iter()
            .filter_map(|m| match m {
                WireMessage::Text(t) => Control::parse(t).ok(),
                WireMessage::Binary(_) => None,
            })
            .map(|c| c.type_name().to_owned())
            .collect();
        let resume_answer = if secrets.encrypts() {
            "enc_receiver_manifest"
        } else {
            "receiver_manifest"
        };
        assert_eq!(kinds[..3], ["extensions", "reconnect_proof", resume_answer]);
    }
}

/// The first session of `secrets`, both sides agreeing on the extension.
fn first_session(secrets: &Secrets) -> SimSetup {
    let mut s = setup(secrets);
    s.sender_config.reconnect = Some(SenderReconnect::Offer {
        ticket: ticket(),
        binding: Binding::new(&ticket(), CODE),
    });
    s.receiver_config.reconnect = Some(ReceiverReconnect::Accept { code: CODE.into() });
    s
}

#[test]
fn the_receiver_ends_on_the_senders_word_that_the_report_arrived() {
    for secrets in [plain(), encrypted()] {
        let out = sim::run(first_session(&secrets));
        assert!(out.both_finished, "{out:?}");
        assert!(
            out.sender_error.is_none() && out.receiver_error.is_none(),
            "{out:?}"
        );
        assert!(!out.receiver_report_unconfirmed, "{out:?}");
    }
}

#[test]
fn a_report_not_known_to_have_arrived_leaves_the_receiver_to_reconnect() {
    for secrets in [plain(), encrypted()] {
        let mut s = first_session(&secrets);
        // The sender's word is lost on the way (the connection breaks after the report).
        s.tamper = Some(Box::new(|_, _, m| match &m {
            WireMessage::Text(t) if t.contains("report_received") => Vec::new(),
            _ => vec![m],
        }));
        let out = sim::run(s);
        assert!(
            out.sender_error.is_none() && out.receiver_error.is_none(),
            "{out:?}"
        );
        assert_eq!(out.files()[NAME], source(), "every file is in place");
        assert!(out.receiver_report_unconfirmed, "{out:?}");
    }
}

#[test]
fn a_reconnect_after_a_lost_report_confirms_every_file_at_once() {
    for secrets in [plain(), encrypted()] {
        let out = reconnected(&secrets, |disk| {
            disk.complete.insert(NAME.into(), source().to_vec());
        });
        assert!(!out.receiver_report_unconfirmed, "{out:?}");
        assert!(
            out.sender_events.contains(&Event::Delivery {
                confirmed: true,
                delivered: 1
            }),
            "{:?}",
            out.sender_events
        );
        let moved = out
            .sender_events
            .iter()
            .any(|e| matches!(e, Event::Progress { .. } | Event::FileStarted { .. }));
        assert!(
            !moved,
            "no file data is sent again: {:?}",
            out.sender_events
        );
    }
}

#[test]
fn a_sender_without_the_code_gets_no_answer_and_nothing_is_read() {
    let mut s = setup(&plain());
    s.disk
        .partial
        .insert(NAME.into(), source()[..1 << 20].to_vec());
    // Knows the ticket's secret (a plain session's relay saw it), not the code.
    s.sender_config.reconnect = Some(resume("another code", 1));
    s.receiver_config.reconnect = Some(ReceiverReconnect::Resume(agreed(CODE)));
    let out = sim::run(s);
    let err = out
        .receiver_error
        .as_ref()
        .expect("the receiver refuses")
        .to_string();
    assert!(err.contains("could not prove"), "{err}");
    assert!(out.receiver_sent.is_empty(), "{:?}", out.receiver_sent);
    assert!(out.receiver_io.is_empty(), "{:?}", out.receiver_io);
    assert!(!out.files().contains_key(NAME));
}

#[test]
fn a_receiver_without_the_code_gets_no_data() {
    let mut s = setup(&plain());
    s.sender_config.reconnect = Some(resume(CODE, 1));
    // A receiver that accepts everything but holds another code: its proof is wrong.
    s.receiver_config.reconnect = Some(ReceiverReconnect::Resume(agreed("another code")));
    let out = sim::run(s);
    assert!(out.sender_error.is_some() || out.receiver_error.is_some());
    let started = out
        .sender_events
        .iter()
        .any(|e| matches!(e, Event::FileStarted { .. } | Event::Progress { .. }));
    assert!(!started, "{:?}", out.sender_events);
}

#[test]
fn a_python_peer_leaves_the_extension_unsupported() {
    use crate::receiver::{Receiver, ReceiverConfig};
    use std::time::Instant;
    let mut r = Receiver::new(
        Instant::now(),
        ReceiverConfig {
            reconnect: Some(ReceiverReconnect::Accept { code: CODE.into() }),
            ..ReceiverConfig::default()
        },
        &plain(),
    );
    assert_eq!(r.reconnect_status(), ReconnectStatus::Off);
    // A 0.1.2 sender's manifest: no offer.
    let m = Control::Manifest {
        resume: false,
        entries: Vec::new(),
        extensions: Vec::new(),
        reconnect: None,
        parts: None,
    };
    r.handle_message(Instant::now(), m.into()).unwrap();
    assert_eq!(r.reconnect_status(), ReconnectStatus::Unsupported);
    assert!(r.next_reconnect().is_none());
}
