//! Extension `metadata` over whole simulated sessions: the sender offers it with
//! `confirm` and sends its parts after `eof` once accepted; a receiver that keeps
//! metadata asks, after every commit, to apply it (permission bits only) to the files in
//! place, those skipped under resume included; one that does not never sees it; and
//! hostile parts end the session with a clear reason, never with a file damaged.

use bytes::Bytes;

use super::fixtures::{accepted, content, Content, Mode};
use crate::metadata::{Attrs, TreeMetadata};
use crate::receiver::{IoRequest, ReceiverConfig};
use crate::sender::{CompressMode, SenderConfig};
use crate::sim::{self, Direction, Outcome, SimSetup};
use crate::wire::{Control, MetaEntry, WireMessage};
use crate::Event;

fn files() -> Vec<(String, Bytes)> {
    vec![
        ("t/run.sh".to_owned(), content(Content::Text, 100, 1)),
        ("t/sub/old.txt".to_owned(), content(Content::Text, 50, 2)),
    ]
}

fn attrs(mode: u32, mtime: i64) -> Attrs {
    Attrs {
        mode: Some(mode),
        mtime: Some(mtime),
    }
}

fn offered() -> TreeMetadata {
    TreeMetadata {
        files: vec![attrs(0o755, 0), attrs(0o600, 1_000_000_000)],
        dirs: vec![
            ("t".to_owned(), attrs(0o755, 1_500_000_000)),
            ("t/empty".to_owned(), attrs(0o700, 1_600_000_000)),
        ],
    }
}

fn setup(encrypt: bool, resume: bool, offer: Option<TreeMetadata>, keep: bool) -> SimSetup {
    let mode = Mode {
        encrypt,
        compress: CompressMode::Auto,
        resume,
    };
    let mut s = mode.setup(&files());
    s.sender_config = SenderConfig {
        confirm: true,
        metadata: offer,
        ..s.sender_config
    };
    s.receiver_config = ReceiverConfig {
        metadata: keep,
        ..s.receiver_config
    };
    s
}

type Applied = (Vec<(String, Attrs)>, Vec<(String, Option<i64>)>);

/// What the receiver asked to apply, if it did.
fn applied(out: &Outcome) -> Option<Applied> {
    out.receiver_io.iter().find_map(|r| match r {
        IoRequest::ApplyMetadata { files, dirs } => Some((
            files
                .iter()
                .map(|(p, a)| (p.as_str().to_owned(), *a))
                .collect(),
            dirs.iter()
                .map(|(p, t)| (p.as_str().to_owned(), *t))
                .collect(),
        )),
        _ => None,
    })
}

/// Rewrite every plain metadata part on its way to the receiver.
fn rewrite_parts(mut f: impl FnMut(&mut crate::wire::MetadataPart) + 'static) -> sim::Tamper {
    Box::new(move |dir, _, msg| {
        if let (Direction::ToReceiver, WireMessage::Text(t)) = (dir, &msg) {
            if let Ok(Control::Metadata(mut p)) = Control::parse(t) {
                f(&mut p);
                return vec![Control::Metadata(p).into()];
            }
        }
        vec![msg]
    })
}

#[test]
fn an_agreed_session_applies_modes_times_and_directories_after_every_commit() {
    for encrypt in [false, true] {
        let mut s = setup(encrypt, false, Some(offered()), true);
        // Record what the sender sends after `eof`.
        let seen = std::rc::Rc::new(std::cell::RefCell::new(Vec::new()));
        let log = seen.clone();
        s.tamper = Some(Box::new(move |dir, _, msg| {
            if let (Direction::ToReceiver, WireMessage::Text(t)) = (dir, &msg) {
                if let Ok(c) = Control::parse(t) {
                    log.borrow_mut().push(c.type_name());
                }
            }
            vec![msg]
        }));
        let out = sim::run(s);
        assert_eq!(out.sender_error, None, "encrypt={encrypt}");
        assert_eq!(out.receiver_error, None, "encrypt={encrypt}");
        assert_eq!(accepted(&out.receiver_sent), ["confirm", "metadata"]);
        let kinds = seen.borrow().clone();
        let eof = kinds.iter().position(|k| *k == "eof").expect("eof");
        let part = if encrypt { "enc_metadata" } else { "metadata" };
        assert_eq!(&kinds[eof + 1..], [part], "encrypt={encrypt}");
        let (files, dirs) = applied(&out).expect("metadata applied");
        assert_eq!(
            files,
            [
                ("t/run.sh".to_owned(), attrs(0o755, 0)),
                ("t/sub/old.txt".to_owned(), attrs(0o600, 1_000_000_000)),
            ]
        );
        assert_eq!(
            dirs,
            [
                ("t".to_owned(), Some(1_500_000_000)),
                ("t/empty".to_owned(), Some(1_600_000_000)),
            ]
        );
        // Applied after every commit, before the report.
        let apply = out
            .receiver_io
            .iter()
            .position(|r| matches!(r, IoRequest::ApplyMetadata { .. }));
        let last_commit = out
            .receiver_io
            .iter()
            .rposition(|r| matches!(r, IoRequest::Commit { .. }));
        assert!(apply > last_commit, "{:?}", out.receiver_io);
        assert_eq!(out.files().len(), 2);
    }
}

#[test]
fn without_the_receiver_s_consent_or_the_sender_s_offer_nothing_travels() {
    // A receiver with --no-metadata: the offer is left out of its answer, and the
    // sender sends no part.
    let mut s = setup(false, false, Some(offered()), false);
    s.tamper = Some(Box::new(|dir, _, msg| {
        if let (Direction::ToReceiver, WireMessage::Text(t)) = (dir, &msg) {
            assert!(!t.contains("\"type\":\"metadata\""), "{t}");
        }
        vec![msg]
    }));
    let out = sim::run(s);
    assert_eq!(out.receiver_error, None);
    assert_eq!(out.sender_error, None);
    assert_eq!(accepted(&out.receiver_sent), ["confirm"]);
    assert_eq!(applied(&out), None);
    // A sender with --no-metadata offers none.
    let out = sim::run(setup(true, false, None, true));
    assert_eq!(out.receiver_error, None);
    assert_eq!(accepted(&out.receiver_sent), ["confirm"]);
    assert_eq!(applied(&out), None);
}

#[test]
fn files_already_complete_under_resume_still_get_their_metadata() {
    let mut s = setup(true, true, Some(offered()), true);
    let f = files();
    s.disk.complete.insert(f[0].0.clone(), f[0].1.to_vec());
    s.disk.partial.insert(f[1].0.clone(), f[1].1[..20].to_vec());
    let out = sim::run(s);
    assert_eq!(out.receiver_error, None);
    assert!(out
        .receiver_events
        .iter()
        .any(|e| matches!(e, Event::FileSkipped { path, .. } if path == "t/run.sh")));
    let (files, _) = applied(&out).expect("metadata applied");
    assert_eq!(
        files.iter().map(|(p, _)| p.as_str()).collect::<Vec<_>>(),
        ["t/run.sh", "t/sub/old.txt"]
    );
}

#[test]
fn a_long_list_travels_in_several_parts() {
    // 400 directories with paths of about 760 bytes: more than one part's worth.
    let long = ["x".repeat(250), "y".repeat(250), "z".repeat(250)].join("/");
    let mut meta = offered();
    meta.dirs = (0..400)
        .map(|i| (format!("t/{long}/{i}"), attrs(0o755, i)))
        .collect();
    for encrypt in [false, true] {
        let mut s = setup(encrypt, false, Some(meta.clone()), true);
        let parts = std::rc::Rc::new(std::cell::Cell::new(0));
        let count = parts.clone();
        s.tamper = Some(Box::new(move |dir, _, msg| {
            if let (Direction::ToReceiver, WireMessage::Text(t)) = (dir, &msg) {
                assert!(t.len() < 1024 * 1024, "a part of {} bytes", t.len());
                if t.contains("metadata\"") {
                    count.set(count.get() + 1);
                }
            }
            vec![msg]
        }));
        let out = sim::run(s);
        assert_eq!(out.receiver_error, None, "encrypt={encrypt}");
        assert_eq!(out.sender_error, None, "encrypt={encrypt}");
        assert!(parts.get() >= 2, "{} parts", parts.get());
        let (_, dirs) = applied(&out).expect("metadata applied");
        assert_eq!(dirs.len(), 400);
        assert_eq!(dirs[399].1, Some(399));
    }
}

#[test]
fn setuid_bits_from_a_peer_are_dropped_and_reported() {
    let mut s = setup(false, false, Some(offered()), true);
    s.tamper = Some(rewrite_parts(|p| p.files[0].mode = Some(0o4755)));
    let out = sim::run(s);
    assert_eq!(out.receiver_error, None);
    let (files, _) = applied(&out).expect("metadata applied");
    assert_eq!(files[0].1.mode, Some(0o755));
    let notes = out
        .receiver_events
        .iter()
        .find_map(|e| match e {
            Event::MetadataNotKept(n) => Some(n.clone()),
            _ => None,
        })
        .expect("a note");
    assert_eq!(notes.shown[0].0, "t/run.sh");
    assert!(notes.shown[0].1.contains("setuid"), "{notes:?}");
}

/// Spoils a metadata part on its way.
type Spoil = Box<dyn Fn(&mut crate::wire::MetadataPart)>;

#[test]
fn hostile_parts_end_the_session_with_a_reason_and_apply_nothing() {
    let cases: Vec<(Spoil, &str)> = vec![
        (
            Box::new(|p| p.files[0].path = "../../etc/passwd".into()),
            "not in the manifest",
        ),
        (
            Box::new(|p| {
                p.dirs.push(MetaEntry {
                    path: "/etc".into(),
                    ..MetaEntry::default()
                })
            }),
            "refused unsafe directory path",
        ),
        (
            Box::new(|p| {
                p.dirs.push(MetaEntry {
                    path: "t/run.sh/x".into(),
                    ..MetaEntry::default()
                })
            }),
            "where the manifest has the file t/run.sh",
        ),
        (Box::new(|p| p.part = 3), "part 3 where part 0"),
    ];
    for (bad, why) in cases {
        let mut s = setup(false, false, Some(offered()), true);
        s.tamper = Some(rewrite_parts(move |p| bad(p)));
        let out = sim::run(s);
        let e = out.receiver_error.clone().expect("the receiver refuses");
        assert!(e.to_string().contains(why), "{e}");
        assert_eq!(applied(&out), None, "{why}");
        // The sender learns why.
        let sent = out.sender_error.expect("the sender is told");
        assert!(sent.to_string().contains(why), "{sent}");
    }
}

#[test]
fn metadata_that_never_comes_times_out_with_the_files_in_place() {
    let mut s = setup(false, false, Some(offered()), true);
    s.tamper = Some(Box::new(|dir, _, msg| match (dir, &msg) {
        (Direction::ToReceiver, WireMessage::Text(t)) if t.contains("\"type\":\"metadata\"") => {
            Vec::new()
        }
        _ => vec![msg],
    }));
    let out = sim::run(s);
    let e = out.receiver_error.clone().expect("the receiver gives up");
    assert_eq!(e.kind(), "timeout", "{e}");
    assert!(e.to_string().contains("did not arrive"), "{e}");
    // Nothing is lost: every file is in place.
    assert_eq!(out.files().len(), 2);
    assert_eq!(applied(&out), None);
}
