//! Names a Windows receiver cannot store ([`ReceiverConfig::windows_names`]) over whole
//! simulated sessions: each such file is not delivered, with its name and the rule as
//! the reason, nothing is opened, written or committed under its name, its data is
//! checked and dropped (so an encrypted session's nonces stay in step), every other file
//! arrives, and a sender that confirms delivery learns which files did not.

use bytes::Bytes;

use super::fixtures::{content, Content, Mode, MIB};
use crate::metadata::{Attrs, TreeMetadata};
use crate::receiver::{IoRequest, ReceiverConfig};
use crate::sender::{CompressMode, SenderConfig};
use crate::sim::{self, Direction, Outcome, ReceiverDisk, SimSetup};
use crate::wire::WireMessage;
use crate::{Error, Event};

const REFUSED: [&str; 4] = ["bad:name.txt", "aux.log", "dir./x", "e/NUL"];

fn files() -> Vec<(String, Bytes)> {
    vec![
        ("ok.txt".to_owned(), content(Content::Text, 1000, 1)),
        (
            "bad:name.txt".to_owned(),
            content(Content::Random, 2 * MIB + 7, 2),
        ),
        ("aux.log".to_owned(), content(Content::Text, 3000, 3)),
        ("dir./x".to_owned(), content(Content::Random, MIB + 1, 4)),
        ("con-notes.txt".to_owned(), content(Content::Random, 5, 5)),
        ("dir/after.bin".to_owned(), content(Content::Random, MIB, 6)),
        ("e/NUL".to_owned(), Bytes::new()),
    ]
}

fn setup(encrypt: bool, confirm: bool, resume: bool) -> SimSetup {
    let mode = Mode {
        encrypt,
        compress: CompressMode::Auto,
        resume,
    };
    let mut s = mode.setup(&files());
    s.sender_config = SenderConfig {
        confirm,
        ..s.sender_config
    };
    s.receiver_config = ReceiverConfig {
        windows_names: true,
        ..s.receiver_config
    };
    s
}

fn not_delivered(events: &[Event]) -> Vec<(String, String)> {
    let mut v: Vec<(String, String)> = events
        .iter()
        .filter_map(|e| match e {
            Event::FileNotDelivered { path, reason } => Some((path.clone(), reason.clone())),
            _ => None,
        })
        .collect();
    v.sort();
    v
}

fn expected_refusals() -> Vec<(String, String)> {
    let mut v = vec![
        (
            "aux.log".to_owned(),
            "name not allowed on the receiver: \"aux.log\": a name Windows reserves for a device"
                .to_owned(),
        ),
        (
            "bad:name.txt".to_owned(),
            "name not allowed on the receiver: \"bad:name.txt\": Windows does not allow ':' in a name"
                .to_owned(),
        ),
        (
            "dir./x".to_owned(),
            "name not allowed on the receiver: \"dir.\": Windows does not allow a name to end with a dot"
                .to_owned(),
        ),
        (
            "e/NUL".to_owned(),
            "name not allowed on the receiver: \"NUL\": a name Windows reserves for a device"
                .to_owned(),
        ),
    ];
    v.sort();
    v
}

/// Nothing was looked up, opened, written or committed under a refused name, and the
/// other files arrived whole.
fn assert_only_legal_names_touched(out: &Outcome, before: &ReceiverDisk) {
    assert!(out.violations.is_empty(), "{:?}", out.violations);
    assert!(out.both_finished && !out.step_limit_hit);
    for req in &out.receiver_io {
        let path = match req {
            IoRequest::Stat { path, .. }
            | IoRequest::Open { path, .. }
            | IoRequest::Commit { path, .. } => path.as_str(),
            _ => continue,
        };
        assert!(!REFUSED.contains(&path), "{req:?}");
    }
    for (name, data) in files() {
        if REFUSED.contains(&name.as_str()) {
            assert_eq!(
                out.disk.complete.get(&name),
                before.complete.get(&name),
                "{name}"
            );
            assert!(!out.disk.partial.contains_key(&name), "{name}");
        } else {
            assert!(out.files()[&name] == data, "{name} differs");
        }
    }
    assert!(out.disk.partial.is_empty(), "{:?}", out.disk.partial.keys());
}

#[test]
fn refused_names_are_not_delivered_and_every_other_file_arrives() {
    for encrypt in [false, true] {
        for confirm in [false, true] {
            let out = sim::run(setup(encrypt, confirm, false));
            let what = format!("encrypt={encrypt} confirm={confirm}");
            assert_eq!(out.receiver_error, None, "{what}");
            assert_eq!(out.sender_error, None, "{what}");
            assert_only_legal_names_touched(&out, &ReceiverDisk::default());
            assert_eq!(
                not_delivered(&out.receiver_events),
                expected_refusals(),
                "{what}"
            );
            assert_eq!(out.receiver_events.last(), Some(&Event::Done), "{what}");
            // The refused files were never started here, so they show no progress.
            for e in &out.receiver_events {
                if let Event::FileStarted { path, .. } | Event::FileDone { path, .. } = e {
                    assert!(!REFUSED.contains(&path.as_str()), "{what}: {e:?}");
                }
            }
            if confirm {
                // The report names each refused file with its reason.
                assert_eq!(
                    not_delivered(&out.sender_events),
                    expected_refusals(),
                    "{what}"
                );
                assert!(out.sender_events.contains(&Event::Delivery {
                    confirmed: true,
                    delivered: 3
                }));
            } else {
                assert!(not_delivered(&out.sender_events).is_empty(), "{what}");
            }
        }
    }
}

#[test]
fn refused_names_are_dropped_on_the_fast_data_path_too() {
    for encrypt in [false, true] {
        let mut s = setup(encrypt, true, false);
        s.sender_config.fast = true;
        s.receiver_config.fast = true;
        let out = sim::run(s);
        assert_eq!(out.receiver_error, None, "encrypt={encrypt}");
        assert_eq!(out.sender_error, None, "encrypt={encrypt}");
        assert_only_legal_names_touched(&out, &ReceiverDisk::default());
        assert_eq!(not_delivered(&out.sender_events), expected_refusals());
    }
}

#[test]
fn a_refused_files_data_is_still_checked() {
    // Dropped, but not unchecked: a flipped bit in its piece fails the session as
    // anywhere else, and nothing is written under its name.
    for encrypt in [false, true] {
        let mut s = setup(encrypt, true, false);
        s.files = vec![("aux.log".to_owned(), content(Content::Random, 5000, 9))];
        s.tamper = Some(Box::new(|dir, _, m| match (dir, m) {
            (Direction::ToReceiver, WireMessage::Binary(b)) => {
                let mut v = b.to_vec();
                let last = v.len() - 1;
                v[last] ^= 1;
                vec![WireMessage::Binary(Bytes::from(v))]
            }
            (_, m) => vec![m],
        }));
        let out = sim::run(s);
        let e = out.receiver_error.expect("the tampered piece is caught");
        assert!(matches!(e, Error::Integrity { .. }), "{e:?}");
        assert!(out.disk.complete.is_empty() && out.disk.partial.is_empty());
    }
}

#[test]
fn without_the_option_every_name_is_stored() {
    let mut s = setup(true, true, false);
    s.receiver_config.windows_names = false;
    let out = sim::run(s);
    assert_eq!(out.receiver_error, None);
    assert_eq!(out.files().len(), files().len());
    assert!(not_delivered(&out.receiver_events).is_empty());
}

#[test]
fn a_refused_name_is_never_reported_as_held_on_resume() {
    // A copy under that name (made some other way) is neither looked at nor changed,
    // and the sender sends the file whole, which is then dropped.
    for (encrypt, confirm) in [(false, false), (true, true), (true, false)] {
        let mut before = ReceiverDisk::default();
        let all = files();
        before
            .complete
            .insert("aux.log".to_owned(), all[2].1.to_vec());
        before
            .partial
            .insert("bad:name.txt".to_owned(), all[1].1[..MIB].to_vec());
        let mut s = setup(encrypt, confirm, true);
        s.disk = before.clone();
        let out = sim::run(s);
        let what = format!("encrypt={encrypt} confirm={confirm}");
        assert_eq!(out.receiver_error, None, "{what}");
        assert_eq!(out.sender_error, None, "{what}");
        assert_eq!(
            not_delivered(&out.receiver_events),
            expected_refusals(),
            "{what}"
        );
        assert!(
            !out.receiver_events
                .iter()
                .any(|e| matches!(e, Event::FileSkipped { .. })),
            "{what}"
        );
        assert!(out.violations.is_empty(), "{:?}", out.violations);
        for req in &out.receiver_io {
            if let IoRequest::Stat { path, .. }
            | IoRequest::Open { path, .. }
            | IoRequest::Commit { path, .. } = req
            {
                assert!(!REFUSED.contains(&path.as_str()), "{what}: {req:?}");
            }
        }
        assert_eq!(out.disk.complete["aux.log"], before.complete["aux.log"]);
        assert_eq!(
            out.disk.partial.get("bad:name.txt"),
            before.partial.get("bad:name.txt"),
            "{what}"
        );
        assert!(out.files()["ok.txt"] == files()[0].1, "{what}");
    }
}

#[test]
fn refused_folders_get_no_permission_bits_or_times_and_are_not_created() {
    let mut s = setup(false, true, false);
    s.files = vec![
        ("t/ok.txt".to_owned(), content(Content::Text, 10, 1)),
        ("t/nul/x".to_owned(), content(Content::Text, 10, 2)),
    ];
    let a = Attrs {
        mode: Some(0o755),
        mtime: Some(1_500_000_000),
    };
    s.sender_config.metadata = Some(TreeMetadata {
        files: vec![a, a],
        dirs: vec![
            ("t".to_owned(), a),
            ("t/nul".to_owned(), a),
            ("t/nul/empty".to_owned(), a),
            ("t/fine".to_owned(), a),
        ],
    });
    s.receiver_config.metadata = true;
    let out = sim::run(s);
    assert_eq!(out.receiver_error, None);
    let dirs: Vec<&str> = out
        .receiver_io
        .iter()
        .find_map(|r| match r {
            IoRequest::ApplyMetadata { dirs, .. } => {
                Some(dirs.iter().map(|(d, _)| d.as_str()).collect())
            }
            _ => None,
        })
        .expect("metadata applied");
    assert_eq!(dirs, ["t", "t/fine"]);
    let notes = out
        .receiver_events
        .iter()
        .find_map(|e| match e {
            Event::MetadataNotKept(n) => Some(n.shown.clone()),
            _ => None,
        })
        .expect("the refused folders are noted");
    assert_eq!(
        notes.iter().map(|(p, _)| p.as_str()).collect::<Vec<_>>(),
        ["t/nul", "t/nul/empty"]
    );
    assert!(notes[0]
        .1
        .contains("\"nul\": a name Windows reserves for a device"));
    assert_eq!(
        not_delivered(&out.receiver_events)
            .iter()
            .map(|(p, _)| p.as_str())
            .collect::<Vec<_>>(),
        ["t/nul/x"]
    );
}
