//! Delivery confirmation (extension `confirm`) over whole simulated sessions: the sender
//! learns what the receiver put in place, files it gives up are accounted for, and a
//! failure on either side reaches the other with its reason.

use bytes::Bytes;

use super::fixtures::{content, delivery, Content, Mode, MIB};
use crate::sender::{CompressMode, IoRequest as SendReq, SenderConfig};
use crate::sim::{self, Direction, SenderFault, SimSetup};
use crate::wire::{Control, WireMessage};
use crate::Event;

fn files() -> Vec<(String, Bytes)> {
    vec![
        ("a.txt".to_owned(), content(Content::Text, 1000, 1)),
        (
            "dir/b.bin".to_owned(),
            content(Content::Random, 3 * MIB + 5, 2),
        ),
        ("dir/c.bin".to_owned(), content(Content::Random, 2 * MIB, 3)),
        ("empty".to_owned(), Bytes::new()),
    ]
}

fn setup(encrypt: bool, files: &[(String, Bytes)]) -> SimSetup {
    let mode = Mode {
        encrypt,
        compress: CompressMode::Auto,
        resume: false,
    };
    let mut s = mode.setup(files);
    s.sender_config = SenderConfig {
        confirm: true,
        ..s.sender_config
    };
    s
}

fn not_delivered(events: &[Event]) -> Vec<String> {
    events
        .iter()
        .filter_map(|e| match e {
            Event::FileNotDelivered { path, .. } => Some(path.clone()),
            _ => None,
        })
        .collect()
}

/// Fail every read of file `index` from byte `from` on.
fn fail_reads(index: usize, from: u64, reason: &'static str) -> SenderFault {
    SenderFault(Box::new(move |req| match *req {
        SendReq::Read { file, offset, .. } if file == index && offset >= from => {
            Some(reason.to_owned())
        }
        _ => None,
    }))
}

fn text_of(m: &WireMessage) -> Option<Control> {
    match m {
        WireMessage::Text(t) => Control::parse(t).ok(),
        WireMessage::Binary(_) => None,
    }
}

#[test]
fn the_receiver_confirms_every_file_it_put_in_place() {
    for encrypt in [false, true] {
        let out = sim::run(setup(encrypt, &files()));
        assert_eq!(out.sender_error, None);
        assert_eq!(out.receiver_error, None);
        assert_eq!(delivery(&out), Some((true, 4)), "encrypt={encrypt}");
        assert_eq!(out.files().len(), 4);
        let first = out.receiver_sent.first().and_then(text_of);
        assert!(
            matches!(first, Some(Control::Extensions { ref accept }) if accept == &["confirm"]),
            "the acceptance comes first: {first:?}"
        );
        let last = out.receiver_sent.last().and_then(text_of);
        let sealed = matches!(last, Some(Control::EncReport { .. }));
        let plain = matches!(last, Some(Control::Report(ref r)) if r.ok && r.delivered == 4);
        assert!(if encrypt { sealed } else { plain }, "{last:?}");
    }
}

#[test]
fn without_an_acceptance_the_sender_ends_unconfirmed_when_the_receiver_closes() {
    // A p2p-copy 0.1.x receiver ignores the offer and closes after `eof`: here the
    // relay drops what this receiver says beyond v1.
    let mut s = setup(false, &files());
    s.tamper = Some(Box::new(|dir, _, m| match (dir, text_of(&m)) {
        (
            Direction::ToSender,
            Some(Control::Extensions { .. } | Control::Report(_) | Control::EncReport { .. }),
        ) => vec![],
        _ => vec![m],
    }));
    let out = sim::run(s);
    assert_eq!(out.sender_error, None);
    assert_eq!(delivery(&out), Some((false, 0)));
    assert!(out.sender_events.ends_with(&[Event::Done]));
}

#[test]
fn a_lost_report_after_an_acceptance_is_a_lost_connection_not_a_success() {
    let mut s = setup(true, &files());
    s.tamper = Some(Box::new(|dir, _, m| match (dir, text_of(&m)) {
        (Direction::ToSender, Some(Control::EncReport { .. })) => vec![],
        _ => vec![m],
    }));
    let out = sim::run(s);
    let e = out.sender_error.clone().expect("the sender fails");
    assert_eq!(e.kind(), "lost", "{e}");
    assert!(
        e.to_string().contains("before the receiver confirmed"),
        "{e}"
    );
}

#[test]
fn a_file_that_cannot_be_put_in_place_is_named_to_the_sender_and_the_rest_arrive() {
    for encrypt in [false, true] {
        let mut s = setup(encrypt, &files());
        s.io_fault = Some(Box::new(|req| match req {
            crate::receiver::IoRequest::Commit { path, .. } if path.as_str() == "dir/b.bin" => {
                Some("Is a directory".to_owned())
            }
            _ => None,
        }));
        let out = sim::run(s);
        assert_eq!(
            out.sender_error, None,
            "partial delivery is a result, not an error"
        );
        assert_eq!(delivery(&out), Some((true, 3)));
        assert_eq!(not_delivered(&out.sender_events), ["dir/b.bin"]);
        let e = out.receiver_error.clone().expect("the receiver fails");
        assert_eq!(e.kind(), "io");
        assert!(e.to_string().contains("dir/b.bin"), "{e}");
        // Every other file is in place; the blocked one stays under its partial name.
        assert_eq!(out.files().len(), 3);
        assert!(out.disk.partial.contains_key("dir/b.bin"));
    }
}

#[test]
fn a_receiver_that_fails_mid_transfer_tells_the_sender_why() {
    for encrypt in [false, true] {
        let mut s = setup(encrypt, &files());
        s.io_fault = Some(Box::new(|req| match req {
            crate::receiver::IoRequest::Write {
                file: 1, offset, ..
            } if *offset > 0 => Some("No space left on device".to_owned()),
            _ => None,
        }));
        let out = sim::run(s);
        let e = out.sender_error.clone().expect("the sender fails");
        assert_eq!(e.kind(), "undelivered", "{e}");
        assert!(e.to_string().contains("No space left on device"), "{e}");
        assert!(out.files().is_empty(), "nothing is put in place");
    }
}

#[test]
fn a_file_skipped_mid_stream_is_abandoned_and_the_next_files_still_decrypt() {
    for encrypt in [false, true] {
        let mut s = setup(encrypt, &files());
        s.sender_config.skip_errors = true;
        s.sender_fault = Some(fail_reads(
            1,
            2 * MIB as u64,
            "the file changed while being sent",
        ));
        let out = sim::run(s);
        assert_eq!(out.sender_error, None, "encrypt={encrypt}");
        assert_eq!(out.receiver_error, None, "encrypt={encrypt}");
        assert_eq!(not_delivered(&out.sender_events), ["dir/b.bin"]);
        assert_eq!(not_delivered(&out.receiver_events), ["dir/b.bin"]);
        assert_eq!(delivery(&out), Some((true, 3)));
        let files = out.files();
        assert!(!files.contains_key("dir/b.bin"));
        assert_eq!(files["dir/c.bin"], &files_of("dir/c.bin")[..]);
        assert_eq!(files["empty"], b"");
    }
}

#[test]
fn a_file_unreadable_from_the_start_is_skipped_before_anything_of_it_is_sent() {
    for encrypt in [false, true] {
        let mut s = setup(encrypt, &files());
        s.sender_config.skip_errors = true;
        s.sender_fault = Some(fail_reads(0, 0, "Permission denied"));
        let out = sim::run(s);
        assert_eq!(out.sender_error, None);
        assert_eq!(out.receiver_error, None);
        assert_eq!(not_delivered(&out.sender_events), ["a.txt"]);
        assert_eq!(delivery(&out), Some((true, 3)));
        let aborts = out
            .sender_events
            .iter()
            .filter(|e| matches!(e, Event::FileStarted { path, .. } if path == "a.txt"))
            .count();
        assert_eq!(aborts, 0, "no header went out for it");
        assert_eq!(out.files().len(), 3);
    }
}

#[test]
fn without_skip_errors_a_read_failure_stops_both_sides_with_its_reason() {
    let mut s = setup(true, &files());
    s.sender_fault = Some(fail_reads(2, MIB as u64, "Input/output error"));
    let out = sim::run(s);
    let e = out.sender_error.clone().expect("the sender fails");
    assert_eq!(e.kind(), "io");
    let r = out.receiver_error.clone().expect("the receiver fails");
    assert_eq!(r.kind(), "undelivered", "{r}");
    assert!(r.to_string().contains("the sender stopped"), "{r}");
    assert!(r.to_string().contains("Input/output error"), "{r}");
    assert!(out.files().is_empty());
}

fn files_of(path: &str) -> Bytes {
    files()
        .into_iter()
        .find(|(p, _)| p == path)
        .map(|(_, d)| d)
        .expect("a listed file")
}
