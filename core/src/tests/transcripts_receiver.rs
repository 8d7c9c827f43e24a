//! The receiver fed by hand, one hostile input at a time: each test pins the error kind,
//! that nothing is written or put in place after the fault, and that the file at fault is
//! never put in place.

use std::time::Duration;

use bytes::Bytes;

use super::fixtures::{
    accepted, changes_a_file, cipher, committed, content, encrypted, eof, file_eof, plain, text,
    Content, Script, MIB,
};
use crate::crypto::Cipher;
use crate::receiver::{IoCompletion, IoRequest, ReceiverConfig};
use crate::sim::{ReceiverDisk, ReceiverDriver};
use crate::wire::{self, Compression, Control, DataMessage};
use crate::{Error, Event, Secrets, WireMessage};

fn driver(secrets: &Secrets, disk: ReceiverDisk) -> ReceiverDriver {
    ReceiverDriver::new(ReceiverConfig::default(), secrets, disk)
}

/// A plain and an encrypted receiver, each with the matching hand-written sender.
fn sessions() -> Vec<(ReceiverDriver, Script)> {
    vec![
        (driver(&plain(), ReceiverDisk::default()), Script::plain()),
        (
            driver(&encrypted(), ReceiverDisk::default()),
            Script::encrypted(cipher()),
        ),
    ]
}

/// The receiver failed with `kind`, its message mentions `needle`, it reported the
/// failure once, asked for no write after it, put no file in place (a session commits
/// only at its end), never reported `file` (a manifest index) done, and keeps refusing.
fn assert_failed(d: &mut ReceiverDriver, kind: &str, needle: &str, file: Option<usize>) -> Error {
    let err = d.result().expect_err("the receiver fails");
    assert_eq!(err.kind(), kind, "{err}");
    assert!(
        err.to_string().contains(needle),
        "{err} does not mention {needle:?}"
    );
    assert!(d.receiver.is_finished());
    assert!(!d.receiver.wants_input());
    let failures: Vec<&Event> = d
        .events
        .iter()
        .filter(|e| matches!(e, Event::Failed(_)))
        .collect();
    assert_eq!(failures, vec![&Event::Failed(err.clone())]);
    let n = d.io_before_error.expect("the failure was seen");
    assert!(
        !d.io_log[n..].iter().any(changes_a_file),
        "file changes after the fault: {:?}",
        &d.io_log[n..]
    );
    assert!(!d.events.contains(&Event::Done));
    assert_eq!(
        committed(&d.io_log),
        Vec::<usize>::new(),
        "files put in place"
    );
    if let Some(f) = file {
        let opened = d.io_log.iter().find_map(|r| match r {
            IoRequest::Open { file, path, .. } if *file == f => Some(path.as_str()),
            _ => None,
        });
        if let Some(path) = opened {
            assert!(
                !d.events
                    .iter()
                    .any(|e| matches!(e, Event::FileDone { path: p, .. } if p == path)),
                "{path} reported done"
            );
        }
    }
    let before = d.io_log.len();
    assert_eq!(d.feed(eof()), Err(err.clone()), "the error is sticky");
    assert_eq!(
        d.io_log.len(),
        before,
        "nothing is accepted after the error"
    );
    err
}

fn writes_to(d: &ReceiverDriver, file: usize) -> usize {
    d.io_log
        .iter()
        .filter(|r| matches!(r, IoRequest::Write { file: f, .. } if *f == file))
        .count()
}

// ---- paths ----

const UNSAFE_PATHS: &[&str] = &[
    "../x",
    "a/../../x",
    "a/..",
    "..",
    "/etc/x",
    "C:\\x",
    "C:x",
    "\\\\server\\share\\x",
    "a\\..\\x",
    "",
    ".",
    "a//b",
    "a/./b",
    "./a",
    "a/",
    "a\0b",
];

fn long_paths() -> Vec<String> {
    vec![
        "n".repeat(256),
        vec!["d"; 200].join("/"),
        vec!["dddddddddd"; 400].join("/"),
    ]
}

#[test]
fn unsafe_paths_are_refused_before_any_file_access() {
    let all: Vec<String> = UNSAFE_PATHS
        .iter()
        .map(|s| (*s).to_owned())
        .chain(long_paths())
        .collect();
    for raw in &all {
        for resume in [false, true] {
            for (mut d, mut s) in sessions() {
                let m = s.manifest(&[("fine.txt", 1), (raw, 3)], resume);
                let _ = d.feed(m);
                assert_failed(&mut d, "peer", "unsafe path", None);
                assert!(d.io_log.is_empty(), "{raw:?}: file access {:?}", d.io_log);
                assert_eq!(d.sent.len(), 1, "{raw:?}: only hello is sent");
            }
        }
    }
}

#[test]
fn unsafe_path_names_are_escaped_in_the_error() {
    let mut d = driver(&plain(), ReceiverDisk::default());
    let _ = d.feed(Script::plain().manifest(&[("../\x1b[31mred", 1)], false));
    let err = assert_failed(&mut d, "peer", "unsafe path", None);
    assert!(!err.to_string().contains('\x1b'), "{err:?}");
    assert!(err.to_string().contains("\\u{1b}[31mred"), "{err}");
}

#[test]
fn duplicate_paths_in_the_manifest_are_refused() {
    for (mut d, mut s) in sessions() {
        let _ = d.feed(s.manifest(&[("a/b", 1), ("c", 2), ("a/b", 1)], false));
        assert_failed(&mut d, "peer", "twice", None);
        assert!(d.io_log.is_empty());
    }
}

#[test]
fn a_path_that_is_both_file_and_directory_is_refused_in_either_order() {
    for entries in [
        [("a", 1u64), ("a/b", 2)],
        [("a/b", 2), ("a", 1)],
        [("x/y", 1), ("x/y/z/w", 1)],
    ] {
        for (mut d, mut s) in sessions() {
            let _ = d.feed(s.manifest(&entries, true));
            assert_failed(&mut d, "peer", "as a file", None);
            assert!(d.io_log.is_empty());
        }
    }
}

#[test]
fn a_file_not_in_the_manifest_is_refused() {
    for (mut d, mut s) in sessions() {
        d.feed(s.manifest(&[("a", 3)], false)).unwrap();
        let _ = d.feed(s.file("b", 3, Compression::None, 0));
        assert_failed(&mut d, "peer", "not in the manifest", None);
        assert!(d.io_log.is_empty());
    }
}

#[test]
fn a_file_sent_twice_is_refused() {
    for (mut d, mut s) in sessions() {
        d.feed(s.manifest(&[("a", 3), ("b", 1)], false)).unwrap();
        d.feed_all(s.whole_file("a", b"abc", Compression::None, 0))
            .unwrap();
        let _ = d.feed(s.file("a", 3, Compression::None, 0));
        assert_failed(&mut d, "peer", "sent twice", None);
        assert!(
            d.fs.disk.complete.is_empty(),
            "a failed session puts nothing in place"
        );
    }
}

// ---- sizes and offsets ----

#[test]
fn a_size_differing_from_the_manifest_is_refused() {
    for (mut d, mut s) in sessions() {
        d.feed(s.manifest(&[("a", 3)], false)).unwrap();
        let _ = d.feed(s.file("a", 4, Compression::None, 0));
        assert_failed(&mut d, "peer", "differs from the manifest", Some(0));
        assert!(d.io_log.is_empty());
    }
}

#[test]
fn append_from_beyond_the_size_is_refused() {
    for (mut d, mut s) in sessions() {
        d.feed(s.manifest(&[("a", 3)], false)).unwrap();
        let _ = d.feed(s.file("a", 3, Compression::None, 4));
        assert_failed(&mut d, "peer", "beyond the size", Some(0));
        assert!(d.io_log.is_empty());
    }
}

#[test]
fn append_from_without_a_resume_answer_is_refused() {
    for (mut d, mut s) in sessions() {
        d.feed(s.manifest(&[("a", 3)], false)).unwrap();
        let _ = d.feed(s.file("a", 3, Compression::None, 1));
        assert_failed(&mut d, "peer", "no verified copy", Some(0));
        assert!(d.io_log.is_empty());
    }
}

fn disk_with_partial(path: &str, data: &[u8]) -> ReceiverDisk {
    let mut disk = ReceiverDisk::default();
    disk.partial.insert(path.into(), data.to_vec());
    disk
}

#[test]
fn append_from_not_matching_the_reported_copy_is_refused() {
    let source: Vec<u8> = (0..300u32).map(|i| i as u8).collect();
    for encrypt in [false, true] {
        let (secrets, mut s) = if encrypt {
            (encrypted(), Script::encrypted(cipher()))
        } else {
            (plain(), Script::plain())
        };
        let mut d = driver(&secrets, disk_with_partial("a", &source[..100]));
        d.feed(s.manifest(&[("a", 300)], true)).unwrap();
        assert_eq!(d.sent.len(), 2, "hello and the resume answer");
        if encrypt {
            s.next_nonce();
        }
        let _ = d.feed(s.file("a", 300, Compression::None, 50));
        assert_failed(&mut d, "peer", "no verified copy", Some(0));
        assert!(!d.io_log.iter().any(|r| matches!(r, IoRequest::Open { .. })));
        assert_eq!(
            d.fs.disk.partial["a"],
            source[..100],
            "the partial file is untouched"
        );
    }
}

#[test]
fn append_from_matching_the_reported_copy_completes_the_file() {
    let source: Vec<u8> = (0..300u32).map(|i| i as u8).collect();
    for encrypt in [false, true] {
        let (secrets, mut s) = if encrypt {
            (encrypted(), Script::encrypted(cipher()))
        } else {
            (plain(), Script::plain())
        };
        let mut d = driver(&secrets, disk_with_partial("a", &source[..100]));
        d.feed(s.manifest(&[("a", 300)], true)).unwrap();
        if encrypt {
            s.next_nonce();
        }
        d.feed_all(s.whole_file("a", &source, Compression::None, 100))
            .unwrap();
        d.feed(eof()).unwrap();
        assert!(d.receiver.is_finished());
        assert_eq!(d.fs.disk.complete["a"], source);
    }
}

#[test]
fn data_before_any_file_is_refused() {
    for (mut d, mut s) in sessions() {
        d.feed(s.manifest(&[("a", 3)], false)).unwrap();
        let _ = d.feed(s.piece(b"abc"));
        assert_failed(&mut d, "peer", "outside a file", None);
        assert!(d.io_log.is_empty());
    }
}

#[test]
fn data_after_a_file_ended_is_refused() {
    for (mut d, mut s) in sessions() {
        d.feed(s.manifest(&[("a", 3), ("b", 3)], false)).unwrap();
        d.feed_all(s.whole_file("a", b"abc", Compression::None, 0))
            .unwrap();
        let _ = d.feed(s.piece(b"def"));
        assert_failed(&mut d, "peer", "outside a file", None);
    }
}

#[test]
fn a_file_while_another_is_open_is_refused_and_neither_is_put_in_place() {
    for (mut d, mut s) in sessions() {
        d.feed(s.manifest(&[("a", 3), ("b", 3)], false)).unwrap();
        d.feed(s.file("a", 3, Compression::None, 0)).unwrap();
        d.feed(s.piece(b"abc")).unwrap();
        let _ = d.feed(s.file("b", 3, Compression::None, 0));
        assert_failed(&mut d, "peer", "started before this one ended", Some(0));
        assert!(d.fs.disk.complete.is_empty());
    }
}

#[test]
fn file_eof_without_a_file_is_refused() {
    for (mut d, mut s) in sessions() {
        d.feed(s.manifest(&[("a", 3)], false)).unwrap();
        let _ = d.feed(file_eof());
        assert_failed(&mut d, "peer", "file_eof outside a file", None);
    }
}

// ---- pieces ----

#[test]
fn a_wrong_first_seq_is_refused() {
    for (mut d, mut s) in sessions() {
        d.feed(s.manifest(&[("a", 3)], false)).unwrap();
        d.feed(s.file("a", 3, Compression::None, 0)).unwrap();
        let chain = crate::chain::Chain::new().next(b"abc");
        let _ = d.feed(s.frame(1, &chain, b"abc"));
        assert_failed(
            &mut d,
            "integrity",
            "piece 1 arrived where piece 0",
            Some(0),
        );
        assert_eq!(writes_to(&d, 0), 0);
    }
}

#[test]
fn a_repeated_seq_is_refused() {
    let data = vec![3u8; MIB + 5];
    for (mut d, mut s) in sessions() {
        d.feed(s.manifest(&[("a", data.len() as u64)], false))
            .unwrap();
        d.feed(s.file("a", data.len() as u64, Compression::None, 0))
            .unwrap();
        let mut first = crate::chain::Chain::new();
        let c0 = first.next(&data[..MIB]);
        d.feed(s.frame(0, &c0, &data[..MIB])).unwrap();
        let _ = d.feed(s.frame(0, &c0, &data[..MIB]));
        assert_failed(
            &mut d,
            "integrity",
            "piece 0 arrived where piece 1",
            Some(0),
        );
        assert_eq!(writes_to(&d, 0), 1, "the first piece was written once");
    }
}

#[test]
fn a_wrong_chain_is_refused_and_the_piece_never_written() {
    for (mut d, mut s) in sessions() {
        d.feed(s.manifest(&[("a", 3)], false)).unwrap();
        d.feed(s.file("a", 3, Compression::None, 0)).unwrap();
        let _ = d.feed(s.frame(0, &[7; 32], b"abc"));
        assert_failed(&mut d, "integrity", "chain mismatch at piece 0", Some(0));
        assert_eq!(writes_to(&d, 0), 0);
    }
}

#[test]
fn a_chain_that_skips_a_link_is_refused() {
    let data = vec![1u8; MIB + 1];
    let mut d = driver(&plain(), ReceiverDisk::default());
    let mut s = Script::plain();
    d.feed(s.manifest(&[("a", data.len() as u64)], false))
        .unwrap();
    d.feed(s.file("a", data.len() as u64, Compression::None, 0))
        .unwrap();
    d.feed(s.piece(&data[..MIB])).unwrap();
    // The second piece chained as if it were the first.
    let fresh = crate::chain::Chain::new().next(&data[MIB..]);
    let _ = d.feed(s.frame(1, &fresh, &data[MIB..]));
    assert_failed(&mut d, "integrity", "chain mismatch at piece 1", Some(0));
    assert_eq!(writes_to(&d, 0), 1);
}

#[test]
fn a_binary_message_shorter_than_its_header_is_refused() {
    for len in [0usize, 1, 39] {
        for (mut d, mut s) in sessions() {
            d.feed(s.manifest(&[("a", 3)], false)).unwrap();
            d.feed(s.file("a", 3, Compression::None, 0)).unwrap();
            let _ = d.feed(WireMessage::Binary(Bytes::from(vec![0u8; len])));
            assert_failed(&mut d, "peer", "shorter than its 40-byte header", Some(0));
        }
    }
}

#[test]
fn more_pieces_than_the_size_declares_are_refused() {
    for (mut d, mut s) in sessions() {
        d.feed(s.manifest(&[("a", 3)], false)).unwrap();
        d.feed(s.file("a", 3, Compression::None, 0)).unwrap();
        d.feed(s.piece(b"abc")).unwrap();
        let _ = d.feed(s.piece(b"d"));
        assert_failed(
            &mut d,
            "integrity",
            "more data than the declared 3 bytes",
            Some(0),
        );
    }
}

#[test]
fn a_piece_longer_than_the_size_declares_is_refused_unwritten() {
    for (mut d, mut s) in sessions() {
        d.feed(s.manifest(&[("a", 3)], false)).unwrap();
        d.feed(s.file("a", 3, Compression::None, 0)).unwrap();
        let _ = d.feed(s.piece(b"abcd"));
        assert_failed(
            &mut d,
            "integrity",
            "holds 4 bytes where 3 were expected",
            Some(0),
        );
        assert_eq!(writes_to(&d, 0), 0);
    }
}

#[test]
fn a_piece_longer_than_a_chunk_is_refused_unwritten() {
    let big = vec![5u8; MIB + 1];
    for (mut d, mut s) in sessions() {
        d.feed(s.manifest(&[("a", 2 * MIB as u64)], false)).unwrap();
        d.feed(s.file("a", 2 * MIB as u64, Compression::None, 0))
            .unwrap();
        let _ = d.feed(s.piece(&big));
        assert_failed(&mut d, "integrity", "where 1048576 were expected", Some(0));
        assert_eq!(writes_to(&d, 0), 0);
    }
}

#[test]
fn fewer_pieces_than_the_size_declares_are_refused() {
    let data = vec![9u8; MIB];
    for (mut d, mut s) in sessions() {
        d.feed(s.manifest(&[("a", MIB as u64 + 1)], false)).unwrap();
        d.feed(s.file("a", MIB as u64 + 1, Compression::None, 0))
            .unwrap();
        d.feed(s.piece(&data)).unwrap();
        let _ = d.feed(file_eof());
        assert_failed(&mut d, "integrity", "less data than the declared", Some(0));
    }
}

#[test]
fn a_piece_shorter_than_the_size_declares_is_refused() {
    for (mut d, mut s) in sessions() {
        d.feed(s.manifest(&[("a", 3)], false)).unwrap();
        d.feed(s.file("a", 3, Compression::None, 0)).unwrap();
        let _ = d.feed(s.piece(b"ab"));
        assert_failed(
            &mut d,
            "integrity",
            "holds 2 bytes where 3 were expected",
            Some(0),
        );
    }
}

#[test]
fn an_empty_file_without_its_empty_piece_is_refused() {
    for (mut d, mut s) in sessions() {
        d.feed(s.manifest(&[("a", 0)], false)).unwrap();
        d.feed(s.file("a", 0, Compression::None, 0)).unwrap();
        let _ = d.feed(file_eof());
        assert_failed(&mut d, "integrity", "less data", Some(0));
    }
}

// ---- compression ----

fn zstd_file(d: &mut ReceiverDriver, s: &mut Script, size: u64) {
    d.feed(s.manifest(&[("z", size)], false)).unwrap();
    d.feed(s.file("z", size, Compression::Zstd, 0)).unwrap();
}

#[test]
fn a_decompression_bomb_is_refused_unwritten() {
    let bomb = crate::compress::compress(&vec![0u8; 4 * MIB]);
    let small_bomb = crate::compress::compress(&[0u8; 1000]);
    for frame in [bomb, small_bomb] {
        for (mut d, mut s) in sessions() {
            zstd_file(&mut d, &mut s, 10);
            let _ = d.feed(s.piece(&frame));
            assert_failed(&mut d, "integrity", "over the piece size", Some(0));
            assert_eq!(writes_to(&d, 0), 0);
        }
    }
}

#[test]
fn a_zstd_frame_without_content_size_is_refused() {
    let mut enc = zstd::stream::Encoder::new(Vec::new(), 3).unwrap();
    enc.include_contentsize(false).unwrap();
    std::io::Write::write_all(&mut enc, b"0123456789").unwrap();
    let frame = enc.finish().unwrap();
    for (mut d, mut s) in sessions() {
        zstd_file(&mut d, &mut s, 10);
        let _ = d.feed(s.piece(&frame));
        assert_failed(&mut d, "integrity", "without a content size", Some(0));
        assert_eq!(writes_to(&d, 0), 0);
    }
}

#[test]
fn a_corrupt_zstd_frame_is_refused() {
    let good = crate::compress::compress(b"0123456789012345678901234567890123456789");
    let truncated = good[..good.len() - 1].to_vec();
    let mut trailing = good.clone();
    trailing.push(0);
    for frame in [truncated, trailing, b"not a zstd frame at all".to_vec()] {
        for (mut d, mut s) in sessions() {
            zstd_file(&mut d, &mut s, 40);
            let _ = d.feed(s.piece(&frame));
            assert_failed(&mut d, "integrity", "zstd frame", Some(0));
            assert_eq!(writes_to(&d, 0), 0);
        }
    }
}

#[test]
fn a_zstd_frame_holding_too_few_bytes_is_refused() {
    let frame = crate::compress::compress(b"short");
    for (mut d, mut s) in sessions() {
        zstd_file(&mut d, &mut s, 10);
        let _ = d.feed(s.piece(&frame));
        assert_failed(&mut d, "integrity", "holds 5 bytes where 10", Some(0));
    }
}

#[test]
fn an_unknown_compression_is_refused() {
    for value in ["gzip", "ZSTD", "", "null"] {
        for (mut d, mut s) in sessions() {
            d.feed(s.manifest(&[("a", 3)], false)).unwrap();
            let json = format!(
                r#"{{"type":"file","path":"a","size":3,"compression":"{value}","append_from":0}}"#
            );
            let _ = d.feed(s.file_json(&json));
            assert_failed(&mut d, "peer", "bad control message", Some(0));
            assert!(d.io_log.is_empty());
        }
    }
}

// ---- malformed control messages ----

const MALFORMED: &[&str] = &[
    "not json",
    "",
    "{",
    "[1,2]",
    "\"manifest\"",
    "42",
    "null",
    r#"{"no_type":1}"#,
    r#"{"type":"nope"}"#,
    r#"{"type":7}"#,
    r#"{"type":"file","path":"a"}"#,
    r#"{"type":"file","size":3}"#,
    r#"{"type":"file","path":"a","size":"3"}"#,
    r#"{"type":"file","path":"a","size":-1}"#,
    r#"{"type":"file","path":"a","size":1e30}"#,
    r#"{"type":"file","path":["a"],"size":3}"#,
    r#"{"type":"manifest","entries":[{"path":"a"}]}"#,
    r#"{"type":"manifest","entries":{"path":"a","size":1}}"#,
    r#"{"type":"manifest","resume":"yes","entries":[]}"#,
];

#[test]
fn malformed_text_before_the_manifest_is_refused() {
    for bad in MALFORMED {
        for (mut d, _) in sessions() {
            let _ = d.feed(text(bad));
            let err = d.result().expect_err(bad);
            assert_eq!(err.kind(), "peer", "{bad}: {err}");
            assert_failed(&mut d, "peer", "", None);
            assert!(d.io_log.is_empty());
        }
    }
}

#[test]
fn malformed_text_in_the_middle_of_a_file_is_refused() {
    for bad in MALFORMED {
        for (mut d, mut s) in sessions() {
            d.feed(s.manifest(&[("a", 3)], false)).unwrap();
            d.feed(s.file("a", 3, Compression::None, 0)).unwrap();
            d.feed(s.piece(b"abc")).unwrap();
            let _ = d.feed(text(bad));
            assert_failed(&mut d, "peer", "", Some(0));
        }
    }
}

#[test]
fn malformed_manifests_inside_encryption_are_refused() {
    for bad in MALFORMED {
        let mut d = driver(&encrypted(), ReceiverDisk::default());
        let mut s = Script::encrypted(cipher());
        let _ = d.feed(s.manifest_json(bad));
        assert_failed(&mut d, "peer", "", None);
    }
}

#[test]
fn an_encrypted_manifest_holding_another_message_is_refused() {
    let mut d = driver(&encrypted(), ReceiverDisk::default());
    let mut s = Script::encrypted(cipher());
    let _ = d.feed(s.manifest_json(&Control::Eof.to_json()));
    assert_failed(
        &mut d,
        "peer",
        "encrypted manifest holds a eof message",
        None,
    );
}

#[test]
fn messages_out_of_place_are_refused() {
    let out_of_place = [
        Control::Ready.to_json(),
        Control::Hello {
            code_hash_hex: "00".into(),
            role: crate::wire::Role::Sender,
        }
        .to_json(),
        Control::ReceiverManifest { entries: vec![] }.to_json(),
        Control::FileEof.to_json(),
        Control::Eof.to_json(),
    ];
    for m in &out_of_place {
        for (mut d, _) in sessions() {
            let _ = d.feed(text(m));
            assert_failed(&mut d, "peer", "unexpected", None);
        }
    }
    for (mut d, mut s) in sessions() {
        d.feed(s.manifest(&[("a", 3)], false)).unwrap();
        let _ = d.feed(s.manifest(&[("a", 3)], false));
        assert_failed(&mut d, "peer", "manifest", None);
    }
}

#[test]
fn binary_before_the_manifest_is_refused() {
    for (mut d, _) in sessions() {
        let _ = d.feed(WireMessage::Binary(DataMessage::encode(0, &[0; 32], b"x")));
        assert_failed(&mut d, "peer", "outside a file", None);
    }
}

// ---- encryption ----

#[test]
fn a_manifest_sealed_with_another_key_is_refused() {
    let mut d = driver(&encrypted(), ReceiverDisk::default());
    let mut s = Script::encrypted(Cipher::new(&[0x42; 32]));
    let _ = d.feed(s.manifest(&[("a", 3)], false));
    assert_failed(&mut d, "integrity", "does not decrypt", None);
    assert!(d.io_log.is_empty());
}

/// Flip one bit of the hex-encoded sealed field of an encrypted control message.
fn flip_hidden(msg: WireMessage, field: &str, hex_index_from_end: usize) -> WireMessage {
    let WireMessage::Text(t) = msg else {
        panic!("text expected")
    };
    let mut v: serde_json::Value = serde_json::from_str(&t).unwrap();
    let hex = v[field].as_str().unwrap().to_owned();
    let mut bytes = wire::unhex(&hex).unwrap();
    let i = bytes.len() - 1 - hex_index_from_end;
    bytes[i] ^= 0x01;
    v[field] = serde_json::Value::String(wire::hex(&bytes));
    WireMessage::Text(v.to_string())
}

#[test]
fn a_flipped_bit_in_the_encrypted_manifest_is_refused() {
    // In the tag (last byte) and in the ciphertext (first byte).
    for from_end in [0, 30] {
        let mut d = driver(&encrypted(), ReceiverDisk::default());
        let mut s = Script::encrypted(cipher());
        let m = flip_hidden(s.manifest(&[("a", 3)], false), "hidden_manifest", from_end);
        let _ = d.feed(m);
        assert_failed(&mut d, "integrity", "does not decrypt", None);
    }
}

#[test]
fn a_flipped_bit_in_an_encrypted_file_header_is_refused() {
    for from_end in [0, 15, 16, 40] {
        let mut d = driver(&encrypted(), ReceiverDisk::default());
        let mut s = Script::encrypted(cipher());
        d.feed(s.manifest(&[("a", 3)], false)).unwrap();
        let _ = d.feed(flip_hidden(
            s.file("a", 3, Compression::None, 0),
            "hidden_file",
            from_end,
        ));
        assert_failed(&mut d, "integrity", "does not decrypt", Some(0));
        assert!(d.io_log.is_empty());
    }
}

#[test]
fn a_flipped_bit_in_encrypted_data_is_refused_unwritten() {
    // Positions counted from the end of the message: in the tag, and in the ciphertext.
    for from_end in [1usize, 16, 17, 100] {
        let data = vec![0x33u8; 200];
        let mut d = driver(&encrypted(), ReceiverDisk::default());
        let mut s = Script::encrypted(cipher());
        d.feed(s.manifest(&[("a", 200)], false)).unwrap();
        d.feed(s.file("a", 200, Compression::None, 0)).unwrap();
        let WireMessage::Binary(b) = s.piece(&data) else {
            panic!("binary expected")
        };
        let mut v = b.to_vec();
        let i = v.len() - from_end;
        v[i] ^= 0x80;
        let _ = d.feed(WireMessage::Binary(Bytes::from(v)));
        assert_failed(&mut d, "integrity", "does not decrypt", Some(0));
        assert_eq!(writes_to(&d, 0), 0);
    }
}

#[test]
fn plain_messages_are_refused_where_encrypted_ones_are_required() {
    let mut d = driver(&encrypted(), ReceiverDisk::default());
    let _ = d.feed(Script::plain().manifest(&[("a", 3)], false));
    assert_failed(
        &mut d,
        "peer",
        "plain manifest message to an encrypting receiver",
        None,
    );

    let mut d = driver(&encrypted(), ReceiverDisk::default());
    let mut s = Script::encrypted(cipher());
    d.feed(s.manifest(&[("a", 3)], false)).unwrap();
    let _ = d.feed(Script::plain().file("a", 3, Compression::None, 0));
    assert_failed(
        &mut d,
        "peer",
        "plain file message to an encrypting receiver",
        Some(0),
    );
    assert!(d.io_log.is_empty());
}

#[test]
fn encrypted_messages_are_refused_by_a_plain_receiver() {
    let mut d = driver(&plain(), ReceiverDisk::default());
    let _ = d.feed(Script::encrypted(cipher()).manifest(&[("a", 3)], false));
    assert_failed(
        &mut d,
        "peer",
        "enc_manifest message to a receiver without --encrypt",
        None,
    );

    let mut d = driver(&plain(), ReceiverDisk::default());
    d.feed(Script::plain().manifest(&[("a", 3)], false))
        .unwrap();
    let mut e = Script::encrypted(cipher());
    e.next_nonce();
    let _ = d.feed(e.file("a", 3, Compression::None, 0));
    assert_failed(
        &mut d,
        "peer",
        "enc_file message to a receiver without --encrypt",
        Some(0),
    );
}

#[test]
fn a_replayed_encrypted_file_header_is_refused() {
    let mut d = driver(&encrypted(), ReceiverDisk::default());
    let mut s = Script::encrypted(cipher());
    d.feed(s.manifest(&[("a", 3), ("b", 3)], false)).unwrap();
    let first = s.whole_file("a", b"abc", Compression::None, 0);
    d.feed_all(first.clone()).unwrap();
    let _ = d.feed(first[0].clone());
    assert_failed(&mut d, "integrity", "does not decrypt", Some(1));
}

#[test]
fn an_encrypted_piece_moved_to_another_position_is_refused() {
    let data: Vec<u8> = (0..MIB + 100).map(|i| (i % 251) as u8).collect();
    let mut d = driver(&encrypted(), ReceiverDisk::default());
    let mut s = Script::encrypted(cipher());
    d.feed(s.manifest(&[("a", data.len() as u64)], false))
        .unwrap();
    d.feed(s.file("a", data.len() as u64, Compression::None, 0))
        .unwrap();
    let (WireMessage::Binary(p0), WireMessage::Binary(p1)) =
        (s.piece(&data[..MIB]), s.piece(&data[MIB..]))
    else {
        panic!("binary expected")
    };
    // Piece 1's ciphertext under piece 0's header: decrypted with piece 0's nonce.
    let mut swapped = p0[..40].to_vec();
    swapped.extend_from_slice(&p1[40..]);
    let _ = d.feed(WireMessage::Binary(Bytes::from(swapped)));
    assert_failed(&mut d, "integrity", "does not decrypt", Some(0));
    assert_eq!(writes_to(&d, 0), 0);
}

#[test]
fn an_encrypted_piece_replayed_as_the_next_one_is_refused() {
    let data = vec![0x44u8; MIB + 100];
    let mut d = driver(&encrypted(), ReceiverDisk::default());
    let mut s = Script::encrypted(cipher());
    d.feed(s.manifest(&[("a", data.len() as u64)], false))
        .unwrap();
    d.feed(s.file("a", data.len() as u64, Compression::None, 0))
        .unwrap();
    let WireMessage::Binary(p0) = s.piece(&data[..MIB]) else {
        panic!("binary expected")
    };
    d.feed(WireMessage::Binary(p0.clone())).unwrap();
    let mut replay = p0.to_vec();
    replay[..8].copy_from_slice(&1u64.to_be_bytes());
    let _ = d.feed(WireMessage::Binary(Bytes::from(replay)));
    assert_failed(&mut d, "integrity", "does not decrypt", Some(0));
    assert_eq!(writes_to(&d, 0), 1);
}

#[test]
fn an_encrypted_manifest_with_a_nonce_that_is_not_hex_is_refused() {
    let mut d = driver(&encrypted(), ReceiverDisk::default());
    let m = Control::EncManifest {
        nonce: "zz".into(),
        hidden_manifest: "00".into(),
    };
    let _ = d.feed(m.into());
    assert_failed(&mut d, "peer", "not hex", None);
}

#[test]
fn encrypted_fields_that_are_not_hex_are_refused() {
    let mut d = driver(&encrypted(), ReceiverDisk::default());
    let m = Control::EncManifest {
        nonce: wire::hex(&[1; 32]),
        hidden_manifest: "abc".into(),
    };
    let _ = d.feed(m.into());
    assert_failed(&mut d, "peer", "not hex", None);

    let mut d = driver(&encrypted(), ReceiverDisk::default());
    let mut s = Script::encrypted(cipher());
    d.feed(s.manifest(&[("a", 3)], false)).unwrap();
    let _ = d.feed(
        Control::EncFile {
            hidden_file: "g0".into(),
        }
        .into(),
    );
    assert_failed(&mut d, "peer", "not hex", None);
}

// ---- message size ----

#[test]
fn messages_over_two_mib_are_refused() {
    let over = crate::wire::MAX_MESSAGE_LEN + 1;
    for (mut d, mut s) in sessions() {
        d.feed(s.manifest(&[("a", 3)], false)).unwrap();
        d.feed(s.file("a", 3, Compression::None, 0)).unwrap();
        let _ = d.feed(WireMessage::Binary(Bytes::from(vec![0u8; over])));
        assert_failed(&mut d, "peer", "exceeds the 2 MiB limit", Some(0));
    }
    for (mut d, _) in sessions() {
        let _ = d.feed(WireMessage::Text(" ".repeat(over)));
        assert_failed(&mut d, "peer", "exceeds the 2 MiB limit", None);
    }
}

#[test]
fn a_message_of_exactly_two_mib_is_not_refused_for_its_size() {
    let mut d = driver(&plain(), ReceiverDisk::default());
    let json = r#"{"type":"manifest","resume":false,"entries":[]}"#;
    let m = format!(
        "{json}{}",
        " ".repeat(crate::wire::MAX_MESSAGE_LEN - json.len())
    );
    assert_eq!(m.len(), crate::wire::MAX_MESSAGE_LEN);
    d.feed(text(&m)).unwrap();
    d.feed(eof()).unwrap();
    assert!(d.receiver.is_finished());
}

// ---- absurd sizes ----

#[test]
fn manifest_sizes_summing_past_u64_do_not_panic() {
    for (mut d, mut s) in sessions() {
        let r = d.feed(s.manifest(&[("a", u64::MAX), ("b", 2)], false));
        if let Err(e) = r {
            assert_eq!(e.kind(), "peer", "{e}");
        }
    }
}

#[test]
fn a_file_of_absurd_size_fails_on_its_data_not_before() {
    for (mut d, mut s) in sessions() {
        d.feed(s.manifest(&[("a", u64::MAX)], false)).unwrap();
        d.feed(s.file("a", u64::MAX, Compression::None, 0)).unwrap();
        d.feed(s.piece(&vec![1u8; MIB])).unwrap();
        let _ = d.feed(file_eof());
        assert_failed(&mut d, "integrity", "less data", Some(0));
    }
}

// ---- time and the connection ----

#[test]
fn no_manifest_in_time_is_a_timeout() {
    for (mut d, _) in sessions() {
        d.advance(Duration::from_secs(299)).unwrap();
        let _ = d.advance(Duration::from_secs(1));
        let err = assert_failed(&mut d, "timeout", "no sender joined within 300 s", None);
        assert!(err.to_string().contains("--encrypt"), "{err}");
    }
}

#[test]
fn a_silent_sender_mid_file_is_a_timeout_and_the_file_is_never_put_in_place() {
    for (mut d, mut s) in sessions() {
        d.feed(s.manifest(&[("a", MIB as u64 + 1)], false)).unwrap();
        d.feed(s.file("a", MIB as u64 + 1, Compression::None, 0))
            .unwrap();
        d.feed(s.piece(&vec![1u8; MIB])).unwrap();
        d.advance(Duration::from_secs(119)).unwrap();
        let _ = d.advance(Duration::from_secs(1));
        assert_failed(&mut d, "timeout", "sent nothing for 120 s", Some(0));
        assert!(d.fs.disk.complete.is_empty());
        assert_eq!(d.fs.disk.partial["a"].len(), MIB, "the partial file stays");
    }
}

#[test]
fn each_message_restarts_the_idle_timer() {
    let data = vec![2u8; 3 * MIB];
    let mut d = driver(&plain(), ReceiverDisk::default());
    let mut s = Script::plain();
    d.feed(s.manifest(&[("a", data.len() as u64)], false))
        .unwrap();
    for m in s.whole_file("a", &data, Compression::None, 0) {
        d.advance(Duration::from_secs(100)).unwrap();
        d.feed(m).unwrap();
    }
    d.advance(Duration::from_secs(100)).unwrap();
    d.feed(eof()).unwrap();
    assert!(d.receiver.is_finished() && d.result().is_ok());
}

#[test]
fn a_connection_closed_mid_file_fails_and_keeps_the_partial_file() {
    for (mut d, mut s) in sessions() {
        d.feed(s.manifest(&[("a", MIB as u64 + 1), ("b", 1)], false))
            .unwrap();
        d.feed(s.file("a", MIB as u64 + 1, Compression::None, 0))
            .unwrap();
        d.feed(s.piece(&vec![1u8; MIB])).unwrap();
        let _ = d.close(Some(1000), "peer closed");
        let err = assert_failed(&mut d, "lost", "in the middle of a", Some(0));
        assert!(err.to_string().contains("--resume"), "{err}");
        assert!(d.fs.disk.complete.is_empty());
        assert_eq!(d.fs.disk.partial["a"].len(), MIB);
    }
}

#[test]
fn a_connection_closed_between_files_fails() {
    for (mut d, mut s) in sessions() {
        d.feed(s.manifest(&[("a", 1), ("b", 1)], false)).unwrap();
        d.feed_all(s.whole_file("a", b"x", Compression::None, 0))
            .unwrap();
        let _ = d.close(None, "");
        assert_failed(&mut d, "lost", "before the transfer was complete", Some(1));
        assert!(d.fs.disk.complete.is_empty());
        assert_eq!(
            d.fs.disk.partial["a"], b"x",
            "the verified file stays for a resume"
        );
    }
}

#[test]
fn a_close_before_the_manifest_says_it_was_waiting_and_not_to_resume() {
    for (mut d, _) in sessions() {
        let _ = d.close(Some(1001), "relay shutting down");
        let e = assert_failed(
            &mut d,
            "lost",
            "the relay closed the connection while waiting for the sender: relay shutting down",
            None,
        );
        assert!(!e.to_string().contains("--resume"), "{e}");
    }
}

#[test]
fn a_close_after_eof_is_not_an_error() {
    for (mut d, mut s) in sessions() {
        d.feed(s.manifest(&[("a", 1)], false)).unwrap();
        d.feed_all(s.whole_file("a", b"x", Compression::None, 0))
            .unwrap();
        d.feed(eof()).unwrap();
        d.close(Some(1000), "peer closed").unwrap();
        assert_eq!(d.events.last(), Some(&Event::Done));
    }
}

#[test]
fn eof_in_the_middle_of_a_file_is_refused() {
    for (mut d, mut s) in sessions() {
        d.feed(s.manifest(&[("a", 3)], false)).unwrap();
        d.feed(s.file("a", 3, Compression::None, 0)).unwrap();
        d.feed(s.piece(b"abc")).unwrap();
        let _ = d.feed(eof());
        assert_failed(&mut d, "peer", "ended in the middle of this file", Some(0));
    }
}

#[test]
fn eof_before_a_listed_file_was_sent_is_refused() {
    for (mut d, mut s) in sessions() {
        d.feed(s.manifest(&[("a", 1), ("b", 1), ("empty", 0)], false))
            .unwrap();
        d.feed_all(s.whole_file("a", b"x", Compression::None, 0))
            .unwrap();
        let _ = d.feed(eof());
        assert_failed(&mut d, "peer", "without sending this file", Some(1));
    }
}

#[test]
fn listed_empty_files_that_never_arrive_are_created_at_eof() {
    for (mut d, mut s) in sessions() {
        d.feed(s.manifest(&[("dir/empty", 0), ("a", 1)], false))
            .unwrap();
        d.feed_all(s.whole_file("a", b"x", Compression::None, 0))
            .unwrap();
        d.feed(eof()).unwrap();
        assert_eq!(d.events.last(), Some(&Event::Done));
        assert_eq!(d.fs.disk.complete["dir/empty"], b"");
    }
}

// ---- resume requests from the sender ----

#[test]
fn a_resume_request_for_an_unsafe_path_reads_nothing_and_answers_nothing() {
    let mut disk = ReceiverDisk::default();
    disk.complete
        .insert("secret".into(), b"do not hash me".to_vec());
    for encrypt in [false, true] {
        let (secrets, mut s) = if encrypt {
            (encrypted(), Script::encrypted(cipher()))
        } else {
            (plain(), Script::plain())
        };
        let mut d = driver(&secrets, disk.clone());
        let _ = d.feed(s.manifest(&[("ok", 1), ("../secret", 14)], true));
        assert_failed(&mut d, "peer", "unsafe path", None);
        assert!(d.io_log.is_empty(), "{:?}", d.io_log);
        assert_eq!(d.sent.len(), 1, "only hello was sent");
    }
}

// ---- API misuse ----

#[test]
fn a_completion_nobody_asked_for_is_misuse() {
    let mut d = driver(&plain(), ReceiverDisk::default());
    d.feed(Script::plain().manifest(&[("a", 1)], false))
        .unwrap();
    let now = d.now;
    let r = d.receiver.handle_io(now, IoCompletion::Written { file: 0 });
    assert_eq!(r.as_ref().map_err(Error::kind), Err("misuse"));
    d.settle();
    assert_failed(&mut d, "misuse", "nobody asked for", Some(0));
}

// ---- the fast data path (extension `fast`) ----

const FAST_OFFER: &[&str] = &[wire::EXT_CONFIRM, wire::EXT_FAST];

/// A plain and an encrypted receiver that accept the fast data path (or not), each with
/// the matching hand-written sender.
fn fast_sessions(accept: bool) -> Vec<(ReceiverDriver, Script)> {
    let config = ReceiverConfig {
        fast: accept,
        ..ReceiverConfig::default()
    };
    vec![
        (
            ReceiverDriver::new(config.clone(), &plain(), ReceiverDisk::default()),
            Script::plain(),
        ),
        (
            ReceiverDriver::new(config, &encrypted(), ReceiverDisk::default()),
            Script::encrypted(cipher()),
        ),
    ]
}

/// A file header that announces the fast data path.
fn fast_header(s: &mut Script, path: &str, size: u64) -> WireMessage {
    let h = Control::File(wire::FileHeader {
        path: path.to_owned(),
        size,
        compression: Compression::None,
        append_from: 0,
        fast: true,
    });
    s.file_json(&h.to_json())
}

#[test]
fn fast_and_v1_files_mix_in_one_session_and_arrive_whole() {
    let data = content(Content::Random, MIB + 3, 5);
    for (mut d, s) in fast_sessions(true) {
        let mut s = s.fast(true);
        let len = data.len() as u64;
        d.feed(s.manifest_offering(&[("a", len), ("b", 3)], FAST_OFFER))
            .unwrap();
        assert_eq!(accepted(&d.sent), vec!["confirm", "fast"]);
        d.feed(fast_header(&mut s, "a", len)).unwrap();
        d.feed(s.piece(&data[..MIB])).unwrap();
        d.feed(s.piece(&data[MIB..])).unwrap();
        d.feed(file_eof()).unwrap();
        let mut s = s.fast(false);
        d.feed_all(s.whole_file("b", b"xyz", Compression::None, 0))
            .unwrap();
        d.feed(eof()).unwrap();
        d.settle();
        assert_eq!(d.result(), Ok(()));
        assert_eq!(d.fs.disk.complete["a"], data.to_vec());
        assert_eq!(d.fs.disk.complete["b"], b"xyz");
    }
}

#[test]
fn a_receiver_that_does_not_accept_the_fast_path_refuses_a_fast_file() {
    for (mut d, mut s) in fast_sessions(false) {
        d.feed(s.manifest_offering(&[("a", 3)], FAST_OFFER))
            .unwrap();
        assert_eq!(accepted(&d.sent), vec!["confirm"]);
        let _ = d.feed(fast_header(&mut s, "a", 3));
        assert_failed(&mut d, "peer", "did not accept", Some(0));
        assert_eq!(writes_to(&d, 0), 0);
    }
}

#[test]
fn a_sender_that_claims_the_fast_path_and_sends_v1_pieces_is_refused() {
    for (i, (mut d, mut s)) in fast_sessions(true).into_iter().enumerate() {
        let encrypting = i == 1;
        d.feed(s.manifest_offering(&[("a", 3)], FAST_OFFER))
            .unwrap();
        d.feed(fast_header(&mut s, "a", 3)).unwrap();
        // The script is not fast: SHA-256 chain, v1 nonce and key.
        let _ = d.feed(s.piece(b"abc"));
        let why = if encrypting {
            "does not decrypt"
        } else {
            "chain mismatch at piece 0"
        };
        assert_failed(&mut d, "integrity", why, Some(0));
        assert_eq!(writes_to(&d, 0), 0);
    }
}

#[test]
fn a_fast_piece_with_a_wrong_chain_is_refused() {
    for (mut d, s) in fast_sessions(true) {
        let mut s = s.fast(true);
        d.feed(s.manifest_offering(&[("a", 3)], FAST_OFFER))
            .unwrap();
        d.feed(fast_header(&mut s, "a", 3)).unwrap();
        // Plain: a chain that is not BLAKE3's; encrypted: any chain but zero.
        let _ = d.feed(s.frame(0, &[7; 32], b"abc"));
        assert_failed(&mut d, "integrity", "chain mismatch at piece 0", Some(0));
        assert_eq!(writes_to(&d, 0), 0);
    }
}

#[test]
fn a_fast_piece_with_a_flipped_bit_or_tag_is_refused() {
    for at_end in [false, true] {
        let mut d = ReceiverDriver::new(
            ReceiverConfig {
                fast: true,
                ..ReceiverConfig::default()
            },
            &encrypted(),
            ReceiverDisk::default(),
        );
        let mut s = Script::encrypted(cipher()).fast(true);
        d.feed(s.manifest_offering(&[("a", 3)], FAST_OFFER))
            .unwrap();
        d.feed(fast_header(&mut s, "a", 3)).unwrap();
        let WireMessage::Binary(frame) = s.piece(b"abc") else {
            unreachable!("a piece is binary")
        };
        let mut bad = frame.to_vec();
        let i = if at_end { bad.len() - 1 } else { 40 };
        bad[i] ^= 1;
        let _ = d.feed(WireMessage::Binary(Bytes::from(bad)));
        assert_failed(&mut d, "integrity", "does not decrypt", Some(0));
        assert_eq!(writes_to(&d, 0), 0);
    }
}
