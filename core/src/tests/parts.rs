//! Lists in parts (extension `parts`): whole sessions whose manifest, resume answer and
//! report do not fit in one message, a sender whose receiver cannot take them, and a
//! receiver fed hostile parts by hand.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::rc::Rc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use proptest::prelude::*;

use super::fixtures::{cipher, delivery, encrypted, plain, Mode, Script, SCRIPT_SEED};
use crate::parts::{self, PART_BUDGET};
use crate::receiver::{IoRequest, ReceiverConfig};
use crate::sender::{CompressMode, SendFile, Sender, SenderConfig};
use crate::sim::{self, Direction, ReceiverDisk, ReceiverDriver, SimSetup};
use crate::wire::{self, Control, ManifestEntry, PartsOffer, WireMessage, MAX_MESSAGE_LEN};
use crate::{Error, Event, Secrets};

/// Files in the test tree: few, with names so long that the manifest exceeds 2 MiB.
const FILES: usize = 600;

/// A path of about 3,800 bytes, 15 components deep.
fn long_path(i: usize) -> String {
    let dirs: Vec<String> = (0..14)
        .map(|d| format!("{d:02}{}", "d".repeat(248)))
        .collect();
    format!("{}/{i:05}{}", dirs.join("/"), "f".repeat(240))
}

fn tree() -> Vec<(String, Bytes)> {
    (0..FILES)
        .map(|i| (long_path(i), Bytes::from(vec![i as u8; 1 + i % 3])))
        .collect()
}

fn setup(encrypt: bool, resume: bool, files: &[(String, Bytes)]) -> SimSetup {
    let mode = Mode {
        encrypt,
        compress: CompressMode::Off,
        resume,
    };
    let mut s = mode.setup(files);
    s.sender_config.confirm = true;
    s
}

/// Record the type of every text message the relay forwards, by direction.
fn recorder(s: &mut SimSetup) -> Rc<RefCell<Vec<(Direction, String)>>> {
    let seen = Rc::new(RefCell::new(Vec::new()));
    let log = seen.clone();
    s.tamper = Some(Box::new(move |dir, _, m| {
        if let WireMessage::Text(t) = &m {
            assert!(t.len() <= MAX_MESSAGE_LEN, "a message over 2 MiB");
            if let Ok(c) = Control::parse(t) {
                log.borrow_mut().push((dir, c.type_name().to_owned()));
            }
        }
        vec![m]
    }));
    seen
}

fn count(seen: &[(Direction, String)], dir: Direction, ty: &str) -> usize {
    seen.iter().filter(|(d, t)| *d == dir && t == ty).count()
}

fn expected(files: &[(String, Bytes)]) -> BTreeMap<String, Vec<u8>> {
    files.iter().map(|(p, b)| (p.clone(), b.to_vec())).collect()
}

#[test]
fn a_manifest_over_2_mib_arrives_in_parts_plain_and_encrypted() {
    let files = tree();
    for encrypt in [false, true] {
        let mut s = setup(encrypt, false, &files);
        let seen = recorder(&mut s);
        let out = sim::run(s);
        assert_eq!(out.sender_error, None, "encrypt={encrypt}");
        assert_eq!(out.receiver_error, None, "encrypt={encrypt}");
        assert_eq!(out.files(), &expected(&files));
        assert_eq!(delivery(&out), Some((true, FILES as u64)));
        let seen = seen.borrow();
        let part = if encrypt { "enc_part" } else { "manifest_more" };
        assert!(count(&seen, Direction::ToReceiver, part) >= 2, "{seen:?}");
        // The parts follow the acceptance; files follow the parts.
        let first_file = seen
            .iter()
            .position(|(_, t)| t == "file" || t == "enc_file")
            .unwrap();
        let last_part = seen.iter().rposition(|(_, t)| t == part).unwrap();
        assert!(last_part < first_file);
    }
}

#[test]
fn a_resume_answer_over_2_mib_comes_in_parts() {
    let files = tree();
    for encrypt in [false, true] {
        let mut s = setup(encrypt, true, &files);
        // Every file is there already: whole for even ones, its first byte for odd ones.
        for (i, (p, b)) in files.iter().enumerate() {
            let have = if i % 2 == 0 {
                b.to_vec()
            } else {
                b[..1].to_vec()
            };
            s.disk.partial.insert(p.clone(), have);
        }
        let seen = recorder(&mut s);
        let out = sim::run(s);
        assert_eq!(out.sender_error, None, "encrypt={encrypt}");
        assert_eq!(out.receiver_error, None, "encrypt={encrypt}");
        assert_eq!(out.files(), &expected(&files));
        let skipped = out
            .sender_events
            .iter()
            .filter(|e| matches!(e, Event::FileSkipped { .. }))
            .count();
        let whole_here = (0..FILES).filter(|i| i % 2 == 0 || i % 3 == 0).count();
        assert_eq!(
            skipped, whole_here,
            "whole copies and 1-byte files are skipped"
        );
        let seen = seen.borrow();
        let part = if encrypt {
            "enc_part"
        } else {
            "receiver_manifest_more"
        };
        assert!(count(&seen, Direction::ToSender, part) >= 2, "{seen:?}");
        let answer = if encrypt {
            "enc_receiver_manifest"
        } else {
            "receiver_manifest"
        };
        assert_eq!(count(&seen, Direction::ToSender, answer), 1);
    }
}

#[test]
fn a_report_over_2_mib_comes_in_parts() {
    let files = tree();
    for encrypt in [false, true] {
        let mut s = setup(encrypt, false, &files);
        s.io_fault = Some(Box::new(|req| {
            matches!(req, IoRequest::Commit { .. }).then(|| "Permission denied".to_owned())
        }));
        let seen = recorder(&mut s);
        let out = sim::run(s);
        let not_delivered = out
            .sender_events
            .iter()
            .filter(|e| matches!(e, Event::FileNotDelivered { .. }))
            .count();
        assert_eq!(not_delivered, FILES, "encrypt={encrypt}");
        assert_eq!(delivery(&out), Some((true, 0)));
        assert!(out.receiver_error.is_some());
        let part = if encrypt { "enc_part" } else { "report_more" };
        assert!(count(&seen.borrow(), Direction::ToSender, part) >= 2);
    }
}

#[test]
fn a_list_that_fits_stays_one_v1_message() {
    let files: Vec<(String, Bytes)> = (0..50)
        .map(|i| (format!("d/{i}"), Bytes::from_static(b"x")))
        .collect();
    let mut s = setup(false, true, &files);
    let seen = recorder(&mut s);
    let out = sim::run(s);
    assert_eq!(out.sender_error, None);
    let seen = seen.borrow();
    assert_eq!(count(&seen, Direction::ToReceiver, "manifest"), 1);
    for part in ["manifest_more", "receiver_manifest_more", "report_more"] {
        assert_eq!(count(&seen, Direction::ToReceiver, part), 0);
        assert_eq!(count(&seen, Direction::ToSender, part), 0);
    }
}

// ---- the sender, by hand ----

fn sender(secrets: &Secrets, resume: bool) -> (Sender, Instant) {
    let now = Instant::now();
    let files = (0..FILES)
        .map(|i| SendFile {
            path: long_path(i),
            size: 1,
            kind: None,
        })
        .collect();
    let config = SenderConfig {
        confirm: true,
        resume,
        ..SenderConfig::default()
    };
    let s = Sender::new(now, config, secrets, files, SCRIPT_SEED).unwrap();
    (s, now)
}

fn drain(s: &mut Sender) -> Vec<WireMessage> {
    let mut out = Vec::new();
    while let Some(m) = s.poll_transmit() {
        out.push(m);
    }
    while s.poll_io().is_some() || s.poll_event().is_some() {}
    out
}

/// The sender's first manifest after `ready`, opened.
fn first_manifest(s: &mut Sender, now: Instant, secrets: &Secrets) -> Control {
    drain(s);
    s.handle_message(now, Control::Ready.into()).unwrap();
    let sent = drain(s);
    assert_eq!(
        sent.len(),
        1,
        "only the manifest's first message before the answer"
    );
    let WireMessage::Text(t) = &sent[0] else {
        panic!("a text manifest")
    };
    assert!(t.len() <= MAX_MESSAGE_LEN);
    match (Control::parse(t).unwrap(), &secrets.cipher) {
        (m @ Control::Manifest { .. }, None) => m,
        (
            Control::EncManifest {
                hidden_manifest, ..
            },
            Some(c),
        ) => {
            let mut nonces = crate::crypto::NonceChain::new(&SCRIPT_SEED);
            let plain = c
                .open(&nonces.next(), &wire::unhex(&hidden_manifest).unwrap())
                .unwrap();
            Control::parse(std::str::from_utf8(&plain).unwrap()).unwrap()
        }
        (other, _) => panic!("not a manifest: {other:?}"),
    }
}

#[test]
fn a_receiver_that_never_accepts_parts_gets_no_file_and_a_clear_error() {
    for secrets in [plain(), encrypted()] {
        let (mut s, now) = sender(&secrets, false);
        let Control::Manifest {
            entries,
            extensions,
            parts,
            ..
        } = first_manifest(&mut s, now, &secrets)
        else {
            unreachable!()
        };
        assert!(extensions.iter().any(|e| e == wire::EXT_PARTS));
        assert_eq!(
            parts,
            Some(PartsOffer {
                total: FILES as u64
            })
        );
        assert!(entries.len() < FILES);
        // p2p-copy 0.1.x says nothing.
        s.handle_timeout(now + Duration::from_secs(9)).unwrap();
        assert!(drain(&mut s).is_empty());
        let e = s.handle_timeout(now + Duration::from_secs(10)).unwrap_err();
        assert_eq!(e.kind(), "unsupported", "{e}");
        assert!(e.to_string().contains("p2p-copy 0.1.x"), "{e}");
        assert!(e.to_string().contains("n=<N>=n"), "{e}");
        assert!(drain(&mut s).is_empty(), "no file, no eof");
    }
}

#[test]
fn a_resume_answer_without_acceptance_ends_the_session_at_once() {
    let (mut s, now) = sender(&plain(), true);
    first_manifest(&mut s, now, &plain());
    let answer = Control::ReceiverManifest {
        entries: Vec::new(),
    };
    let e = s.handle_message(now, answer.into()).unwrap_err();
    assert_eq!(e.kind(), "unsupported", "{e}");
    assert!(drain(&mut s).is_empty());
}

#[test]
fn an_older_receiver_that_accepts_only_confirm_is_told_why() {
    let (mut s, now) = sender(&plain(), false);
    first_manifest(&mut s, now, &plain());
    let accept = Control::Extensions {
        accept: vec![wire::EXT_CONFIRM.to_owned()],
    };
    let e = s.handle_message(now, accept.into()).unwrap_err();
    assert_eq!(e.kind(), "unsupported", "{e}");
    // It confirms, so it is told why the session ends; no file follows.
    let sent = drain(&mut s);
    assert_eq!(sent.len(), 1);
    assert!(matches!(
        &sent[0],
        WireMessage::Text(t) if Control::parse(t).unwrap().type_name() == "report"
    ));
}

#[test]
fn without_confirmation_a_manifest_over_2_mib_is_refused_before_sending() {
    let now = Instant::now();
    let files = (0..FILES)
        .map(|i| SendFile {
            path: long_path(i),
            size: 1,
            kind: None,
        })
        .collect();
    let mut s = Sender::new(now, SenderConfig::default(), &plain(), files, SCRIPT_SEED).unwrap();
    drain(&mut s);
    let e = s.handle_message(now, Control::Ready.into()).unwrap_err();
    assert_eq!(e.kind(), "unsupported");
    assert!(drain(&mut s).is_empty());
}

// ---- the receiver, by hand ----

fn entries(from: usize, n: usize) -> Vec<ManifestEntry> {
    (from..from + n)
        .map(|i| ManifestEntry {
            path: format!("d/{i}"),
            size: 0,
            kind: None,
        })
        .collect()
}

/// A first manifest message that offers `confirm` and `parts` and announces `total`.
fn head(s: &mut Script, first: Vec<ManifestEntry>, total: u64) -> WireMessage {
    let m = Control::Manifest {
        resume: false,
        entries: first,
        extensions: vec![wire::EXT_CONFIRM.to_owned(), wire::EXT_PARTS.to_owned()],
        reconnect: None,
        parts: Some(PartsOffer { total }),
    };
    s.manifest_json(&m.to_json())
}

fn part(encrypt: bool, index: u64, items: Vec<ManifestEntry>) -> WireMessage {
    let c = cipher();
    let sealing = encrypt.then_some((&c, &SCRIPT_SEED));
    parts::part_message(index, items, sealing).into()
}

fn sessions() -> Vec<(bool, ReceiverDriver, Script)> {
    vec![
        (
            false,
            ReceiverDriver::new(ReceiverConfig::default(), &plain(), ReceiverDisk::default()),
            Script::plain(),
        ),
        (
            true,
            ReceiverDriver::new(
                ReceiverConfig::default(),
                &encrypted(),
                ReceiverDisk::default(),
            ),
            Script::encrypted(cipher()),
        ),
    ]
}

fn manifest_seen(d: &ReceiverDriver) -> Option<usize> {
    d.events.iter().find_map(|e| match e {
        Event::Manifest { files, .. } => Some(*files),
        _ => None,
    })
}

fn failed(d: &ReceiverDriver, needle: &str) -> Error {
    let e = d.result().expect_err("the receiver fails");
    assert_eq!(e.kind(), "peer", "{e}");
    assert!(e.to_string().contains(needle), "{e} lacks {needle:?}");
    assert!(d.io_log.is_empty(), "nothing touched: {:?}", d.io_log);
    e
}

#[test]
fn parts_complete_the_manifest_and_files_follow() {
    for (enc, mut d, mut s) in sessions() {
        d.feed(head(&mut s, entries(0, 2), 5)).unwrap();
        assert_eq!(manifest_seen(&d), None, "not before the last part");
        d.feed(part(enc, 1, entries(2, 2))).unwrap();
        d.feed(part(enc, 2, entries(4, 1))).unwrap();
        assert_eq!(manifest_seen(&d), Some(5));
        for i in 0..5 {
            d.feed_all(s.whole_file(&format!("d/{i}"), b"", wire::Compression::None, 0))
                .unwrap();
        }
        d.feed(super::fixtures::eof()).unwrap();
        d.settle();
        assert_eq!(d.result(), Ok(()));
        assert_eq!(d.fs.disk.complete.len(), 5);
    }
}

#[test]
fn more_parts_than_announced_are_refused() {
    for (enc, mut d, mut s) in sessions() {
        d.feed(head(&mut s, entries(0, 1), 3)).unwrap();
        let _ = d.feed(part(enc, 1, entries(1, 3)));
        failed(&d, "more than the 2 entries");
    }
}

#[test]
fn a_part_after_the_manifest_is_complete_is_refused() {
    for (enc, mut d, mut s) in sessions() {
        d.feed(head(&mut s, entries(0, 1), 2)).unwrap();
        d.feed(part(enc, 1, entries(1, 1))).unwrap();
        let _ = d.feed(part(enc, 2, entries(2, 1)));
        let e = d.result().unwrap_err();
        assert_eq!(e.kind(), "peer", "{e}");
    }
}

#[test]
fn a_part_after_data_started_is_refused() {
    for (enc, mut d, mut s) in sessions() {
        d.feed(head(&mut s, entries(0, 1), 2)).unwrap();
        d.feed(part(enc, 1, entries(1, 1))).unwrap();
        d.feed(s.file("d/0", 0, wire::Compression::None, 0))
            .unwrap();
        let _ = d.feed(part(enc, 2, entries(2, 1)));
        let e = d.result().unwrap_err();
        assert_eq!(e.kind(), "peer", "{e}");
        assert!(d.fs.disk.complete.is_empty());
    }
}

#[test]
fn a_file_before_the_last_part_is_refused() {
    for (_, mut d, mut s) in sessions() {
        d.feed(head(&mut s, entries(0, 1), 3)).unwrap();
        let _ = d.feed(s.file("d/0", 0, wire::Compression::None, 0));
        failed(&d, "before the rest of the file list");
    }
}

#[test]
fn a_path_repeated_across_parts_is_refused() {
    for (enc, mut d, mut s) in sessions() {
        d.feed(head(&mut s, entries(0, 2), 4)).unwrap();
        d.feed(part(enc, 1, entries(2, 1))).unwrap();
        let _ = d.feed(part(enc, 2, entries(1, 1)));
        failed(&d, "twice");
    }
}

#[test]
fn announced_totals_that_lie_are_refused() {
    // Fewer than the first message holds.
    let (_, mut d, mut s) = sessions().remove(0);
    let _ = d.feed(head(&mut s, entries(0, 3), 2));
    failed(&d, "alone lists 3");
    // More than any receiver keeps in memory.
    let (_, mut d, mut s) = sessions().remove(0);
    let _ = d.feed(head(&mut s, entries(0, 1), parts::MAX_ENTRIES + 1));
    failed(&d, "more than the 4000000");
    // The same with metadata offered and kept: refused, with nothing sized for it.
    let config = ReceiverConfig {
        metadata: true,
        ..ReceiverConfig::default()
    };
    let mut d = ReceiverDriver::new(config, &plain(), ReceiverDisk::default());
    let mut s = Script::plain();
    let m = Control::Manifest {
        resume: false,
        entries: entries(0, 1),
        extensions: vec![
            wire::EXT_CONFIRM.to_owned(),
            wire::EXT_METADATA.to_owned(),
            wire::EXT_PARTS.to_owned(),
        ],
        reconnect: None,
        parts: Some(PartsOffer { total: u64::MAX }),
    };
    let _ = d.feed(s.manifest_json(&m.to_json()));
    failed(&d, "more than the 4000000");
    // Parts without the offer.
    let (_, mut d, _) = sessions().remove(0);
    let m = Control::Manifest {
        resume: false,
        entries: entries(0, 1),
        extensions: vec![wire::EXT_CONFIRM.to_owned()],
        reconnect: None,
        parts: Some(PartsOffer { total: 2 }),
    };
    let _ = d.feed(m.into());
    failed(&d, "did not offer");
}

#[test]
fn parts_out_of_order_or_empty_are_refused() {
    for (enc, mut d, mut s) in sessions() {
        d.feed(head(&mut s, entries(0, 1), 3)).unwrap();
        let _ = d.feed(part(enc, 2, entries(1, 1)));
        failed(&d, "part 1 was due");
    }
    for (enc, mut d, mut s) in sessions() {
        d.feed(head(&mut s, entries(0, 1), 3)).unwrap();
        let _ = d.feed(part(enc, 1, Vec::<ManifestEntry>::new()));
        failed(&d, "empty");
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(32))]

    /// Any list, split at any budget, comes back whole and in order through the parts
    /// a receiver checks.
    #[test]
    fn any_list_in_any_parts_comes_back_whole(
        n in 0usize..300,
        budget in 1usize..4000,
        encrypt in any::<bool>(),
    ) {
        let all = entries(0, n);
        let c = cipher();
        let sealing = encrypt.then_some((&c, &SCRIPT_SEED));
        let mut collect = parts::Collect::new(n as u64);
        let mut back = Vec::new();
        for (i, group) in parts::split(all.clone(), budget).into_iter().enumerate() {
            if group.is_empty() {
                continue;
            }
            prop_assert!(group.iter().map(parts::item_len).sum::<usize>() <= budget || group.len() == 1);
            let msg = parts::part_message(i as u64 + 1, group, sealing);
            back.extend(collect.take::<ManifestEntry>(msg, sealing).unwrap());
        }
        prop_assert_eq!(back, all);
        prop_assert!(PART_BUDGET < MAX_MESSAGE_LEN / 2);
    }
}
