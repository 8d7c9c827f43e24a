//! Any set of files goes from the sender through the relay to the receiver intact, in
//! every mode, whatever the sizes and contents.

use bytes::Bytes;
use proptest::prelude::*;

use super::fixtures::{assert_clean, committed, content, expected_files, Content, Mode, MIB};
use crate::receiver::{IoRequest, ReceiverConfig};
use crate::sender::{CompressMode, SenderConfig};
use crate::sim::{self, ReceiverDisk};
use crate::wire::Compression;
use crate::Event;

const PATHS: [&str; 5] = ["f0", "dir/f1", "dir/sub/f2", "ünï/κ f3", "z4.bin"];

fn files_of(spec: &[(usize, Content)]) -> Vec<(String, Bytes)> {
    spec.iter()
        .enumerate()
        .map(|(i, (len, kind))| (PATHS[i].to_owned(), content(*kind, *len, i as u64 + 1)))
        .collect()
}

fn size() -> impl Strategy<Value = usize> {
    prop_oneof![
        Just(0),
        Just(1),
        Just(MIB - 1),
        Just(MIB),
        Just(MIB + 1),
        Just(2 * MIB),
        Just(3 * MIB + 7),
        0..4096usize,
        0..3 * MIB,
    ]
}

fn kind() -> impl Strategy<Value = Content> {
    prop_oneof![
        Just(Content::Text),
        Just(Content::Random),
        Just(Content::TextThenRandom)
    ]
}

/// Files of at most `cap` bytes in all.
fn file_specs(cap: usize) -> impl Strategy<Value = Vec<(usize, Content)>> {
    prop::collection::vec((size(), kind()), 1..=PATHS.len()).prop_map(move |mut v| {
        // Keep the case small enough to be fast: drop files from the end until it fits.
        while v.len() > 1 && v.iter().map(|f| f.0).sum::<usize>() > cap {
            v.pop();
        }
        v[0].0 = v[0].0.min(cap);
        v
    })
}

/// A mode and files for it. AES-GCM is slow in unoptimised test builds, so encrypted
/// cases carry less data.
fn mode_and_files() -> impl Strategy<Value = (Mode, Vec<(usize, Content)>)> {
    prop::sample::select(Mode::all()).prop_flat_map(|mode| {
        let cap = if mode.encrypt { 3 * MIB } else { 8 * MIB };
        (Just(mode), file_specs(cap))
    })
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 24,
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn any_files_round_trip_in_any_mode(
        (mode, spec) in mode_and_files(),
        seed in any::<u64>(),
        link in 1..6usize,
        send_window in 1..6usize,
        recv_window in 1..6usize,
    ) {
        let files = files_of(&spec);
        let mut setup = mode.setup(&files);
        setup.seed = seed;
        setup.link_capacity = link;
        setup.sender_config.window = send_window;
        setup.receiver_config.window = recv_window;
        let out = sim::run(setup);
        assert_clean(&out, &expected_files(&ReceiverDisk::default(), &files));
    }
}

#[test]
fn every_mode_round_trips_files_at_piece_boundaries() {
    for (i, mode) in Mode::all().into_iter().enumerate() {
        // Random bytes cost the most to encrypt in a test build: one boundary file of
        // them when encrypting, more otherwise.
        let big_kind = if mode.encrypt {
            Content::Text
        } else {
            Content::Random
        };
        let files = files_of(&[
            (0, Content::Text),
            (1, Content::Random),
            (MIB - 1, big_kind),
            (MIB, Content::Text),
            (MIB + 1, Content::TextThenRandom),
        ]);
        let mut setup = mode.setup(&files);
        setup.seed = i as u64;
        let out = sim::run(setup);
        assert_clean(&out, &expected_files(&ReceiverDisk::default(), &files));
    }
}

#[test]
fn several_mib_files_round_trip_with_a_window_of_one() {
    for mode in Mode::all() {
        let kind = if mode.encrypt {
            Content::Text
        } else {
            Content::Random
        };
        if mode.encrypt && mode.compress == CompressMode::Off {
            // Covered by the plain modes; encrypting 5 MiB is slow in a test build.
            continue;
        }
        let files = files_of(&[(3 * MIB + 1, kind), (2 * MIB - 1, Content::Text)]);
        let mut setup = mode.setup(&files);
        setup.link_capacity = 1;
        setup.sender_config.window = 1;
        setup.receiver_config.window = 1;
        let out = sim::run(setup);
        assert_clean(&out, &expected_files(&ReceiverDisk::default(), &files));
    }
}

#[test]
fn an_empty_file_list_round_trips_to_nothing() {
    for mode in Mode::all() {
        let out = sim::run(mode.setup(&[]));
        assert_clean(&out, &expected_files(&ReceiverDisk::default(), &[]));
        assert!(!out.receiver_io.iter().any(|r| matches!(
            r,
            IoRequest::Open { .. } | IoRequest::Write { .. } | IoRequest::Commit { .. }
        )));
    }
}

fn compressions(events: &[Event]) -> Vec<(String, Compression)> {
    events
        .iter()
        .filter_map(|e| match e {
            Event::FileStarted {
                path, compression, ..
            } => Some((path.clone(), *compression)),
            _ => None,
        })
        .collect()
}

#[test]
fn compression_mode_decides_each_files_compression() {
    let files = files_of(&[
        (3000, Content::Text),
        (3000, Content::Random),
        (MIB + 5000, Content::TextThenRandom),
        (0, Content::Text),
    ]);
    let cases = [
        (
            CompressMode::Auto,
            [
                Compression::Zstd,
                Compression::None,
                Compression::Zstd,
                Compression::None,
            ],
        ),
        (CompressMode::On, [Compression::Zstd; 4]),
        (CompressMode::Off, [Compression::None; 4]),
    ];
    for encrypt in [false, true] {
        for (compress, want) in cases {
            let mode = Mode {
                encrypt,
                compress,
                resume: false,
            };
            let out = sim::run(mode.setup(&files));
            assert_clean(&out, &expected_files(&ReceiverDisk::default(), &files));
            let want: Vec<(String, Compression)> =
                files.iter().map(|(p, _)| p.clone()).zip(want).collect();
            assert_eq!(
                compressions(&out.receiver_events),
                want,
                "{mode:?} receiver"
            );
            assert_eq!(compressions(&out.sender_events), want, "{mode:?} sender");
        }
    }
}

#[test]
fn compressed_files_cross_the_link_in_fewer_bytes() {
    let files = files_of(&[(4 * MIB, Content::Text)]);
    let run = |compress| {
        let mode = Mode {
            encrypt: false,
            compress,
            resume: false,
        };
        let mut setup = mode.setup(&files);
        let counted = std::rc::Rc::new(std::cell::Cell::new(0usize));
        let c = counted.clone();
        setup.tamper = Some(Box::new(move |_, _, m| {
            c.set(c.get() + m.len());
            vec![m]
        }));
        let out = sim::run(setup);
        assert_clean(&out, &expected_files(&ReceiverDisk::default(), &files));
        counted.get()
    };
    let on = run(CompressMode::On);
    let off = run(CompressMode::Off);
    assert!(
        off > 4 * MIB,
        "uncompressed transfer moved only {off} bytes"
    );
    assert!(on * 10 < off, "compressed {on} bytes vs uncompressed {off}");
}

#[test]
fn existing_directory_where_a_file_goes_fails_with_an_io_error() {
    let files = files_of(&[(10, Content::Text)]);
    let mut disk = ReceiverDisk::default();
    disk.complete.insert("f0/kept".into(), b"keep me".to_vec());
    let mut setup = Mode {
        encrypt: false,
        compress: CompressMode::Auto,
        resume: false,
    }
    .setup(&files);
    setup.disk = disk;
    let out = sim::run(setup);
    assert_eq!(out.receiver_error.as_ref().map(|e| e.kind()), Some("io"));
    assert_eq!(
        out.files().get("f0/kept").map(Vec::as_slice),
        Some(&b"keep me"[..])
    );
    assert!(!out.files().contains_key("f0"));
}

#[test]
fn failed_write_fails_the_receiver_and_the_file_is_never_put_in_place() {
    let files = files_of(&[
        (10, Content::Text),
        (3 * MIB, Content::Random),
        (5, Content::Text),
    ]);
    let mut setup = Mode {
        encrypt: true,
        compress: CompressMode::Auto,
        resume: false,
    }
    .setup(&files);
    let mut writes_to_1 = 0;
    setup.io_fault = Some(Box::new(move |r| match r {
        IoRequest::Write { file: 1, .. } => {
            writes_to_1 += 1;
            (writes_to_1 == 2).then(|| "no space left on device".to_owned())
        }
        _ => None,
    }));
    let out = sim::run(setup);
    let err = out.receiver_error.clone().expect("the receiver fails");
    assert_eq!(err.kind(), "io");
    assert!(err.to_string().contains("no space left on device"), "{err}");
    assert!(err.to_string().contains("dir/f1"), "{err}");
    assert!(
        !out.files().contains_key("dir/f1"),
        "a file whose write failed was put in place"
    );
    assert!(!committed(&out.receiver_io).contains(&1));
    assert!(!out.files().contains_key("dir/sub/f2"));
}

#[test]
fn receiver_window_of_zero_is_treated_as_one() {
    let files = files_of(&[(2 * MIB + 5, Content::Random)]);
    let mut setup = Mode {
        encrypt: false,
        compress: CompressMode::Off,
        resume: false,
    }
    .setup(&files);
    setup.receiver_config = ReceiverConfig {
        window: 0,
        ..ReceiverConfig::default()
    };
    setup.sender_config = SenderConfig {
        window: 0,
        ..setup.sender_config
    };
    let out = sim::run(setup);
    assert_clean(&out, &expected_files(&ReceiverDisk::default(), &files));
}

/// The relay lets the messages already in flight through when the sender leaves (the
/// sender closes right after `eof`): a receiver that drains them slowly (600 ms per MiB
/// written, a slow USB stick; 8 messages buffered on the way, as socket buffers hold)
/// still gets every file.
#[test]
fn a_slow_receiver_still_gets_everything_after_the_sender_left() {
    let files = files_of(&[(6 * MIB, Content::Random)]);
    let mut setup = Mode {
        encrypt: false,
        compress: CompressMode::Off,
        resume: false,
    }
    .setup(&files);
    setup.receiver_io_latency = std::time::Duration::from_millis(600);
    setup.link_capacity = 8;
    let out = sim::run(setup);
    assert_clean(&out, &expected_files(&ReceiverDisk::default(), &files));
}

#[test]
fn failed_sync_puts_nothing_in_place_and_keeps_older_files() {
    let files = files_of(&[(10, Content::Text), (MIB + 1, Content::Random)]);
    let mut setup = Mode {
        encrypt: false,
        compress: CompressMode::Auto,
        resume: false,
    }
    .setup(&files);
    setup
        .disk
        .complete
        .insert("f0".into(), b"older version".to_vec());
    setup.io_fault = Some(Box::new(|r| {
        matches!(r, IoRequest::Sync).then(|| "input/output error".to_owned())
    }));
    let out = sim::run(setup);
    let err = out.receiver_error.clone().expect("the receiver fails");
    assert_eq!(err.kind(), "io", "{err}");
    assert!(committed(&out.receiver_io).is_empty());
    assert_eq!(out.files().len(), 1);
    assert_eq!(out.files()["f0"], b"older version");
    assert_eq!(
        out.disk.partial.len(),
        2,
        "verified partial files stay for a resume"
    );
    // Syncing concerns the whole session, not the first file of the manifest.
    assert!(
        matches!(&err, crate::Error::Io { file: None, .. }),
        "a failed sync is blamed on one file: {err}"
    );
}
