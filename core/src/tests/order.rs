//! The result does not depend on the order in which the runtime completes file accesses
//! and jobs (within one file, accesses keep their order, as the contract says).

use std::collections::BTreeMap;

use bytes::Bytes;
use proptest::prelude::*;

use super::fixtures::{assert_clean, content, expected_files, Content, Mode, MIB};
use crate::receiver::IoRequest;
use crate::sender::CompressLevel;
use crate::sim::{self, Outcome, ReceiverDisk};
use crate::Event;

fn files() -> Vec<(String, Bytes)> {
    vec![
        ("big".into(), content(Content::Random, MIB + 5, 1)),
        ("text".into(), content(Content::Text, MIB + 1, 2)),
        ("empty".into(), Bytes::new()),
        ("d/mixed".into(), content(Content::TextThenRandom, 3000, 3)),
        ("d/e/tiny".into(), content(Content::Random, 10, 4)),
    ]
}

fn disk(mode: Mode, files: &[(String, Bytes)]) -> ReceiverDisk {
    let mut disk = ReceiverDisk::default();
    if mode.resume {
        disk.partial
            .insert("big".into(), files[0].1[..MIB + 3].to_vec());
        disk.complete.insert("d/e/tiny".into(), files[4].1.to_vec());
        disk.complete.insert("text".into(), b"stale".to_vec());
    }
    disk
}

fn run(mode: Mode, seed: u64, link: usize, window: usize) -> Outcome {
    let files = files();
    let disk = disk(mode, &files);
    let mut setup = mode.setup(&files);
    setup.disk = disk.clone();
    setup.seed = seed;
    setup.link_capacity = link;
    setup.sender_config.window = window;
    // The adaptive level follows the pace of jobs and link by design, and with it the
    // compressed bytes; at a fixed level the stream must not depend on the order.
    setup.sender_config.compress_level = CompressLevel::Fixed(3);
    setup.receiver_config.window = window;
    let out = sim::run(setup);
    assert_clean(&out, &expected_files(&disk, &files));
    out
}

/// Each file's accesses, in order.
fn per_file(io: &[IoRequest]) -> BTreeMap<usize, Vec<IoRequest>> {
    let mut m: BTreeMap<usize, Vec<IoRequest>> = BTreeMap::new();
    for r in io {
        let file = crate::sim::request_file(r).unwrap_or(usize::MAX);
        m.entry(file).or_default().push(r.clone());
    }
    m
}

/// The receiver's events other than progress, sorted: their interleaving across files
/// may follow completion order, their content may not.
fn milestones(events: &[Event]) -> Vec<String> {
    let mut v: Vec<String> = events
        .iter()
        .filter(|e| !matches!(e, Event::Progress { .. }))
        .map(|e| format!("{e:?}"))
        .collect();
    v.sort();
    v
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 10,
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn the_result_does_not_depend_on_completion_order(
        mode in prop::sample::select(Mode::all()),
        a in any::<u64>(),
        b in any::<u64>(),
        link in 1..5usize,
        window in 2..6usize,
    ) {
        let x = run(mode, a, link, window);
        let y = run(mode, b, link, window);
        prop_assert_eq!(x.files(), y.files());
        prop_assert_eq!(x.sender_stream_digest, y.sender_stream_digest);
        prop_assert_eq!(x.sender_stream_len, y.sender_stream_len);
        prop_assert_eq!(&x.receiver_sent, &y.receiver_sent);
        prop_assert_eq!(per_file(&x.receiver_io), per_file(&y.receiver_io));
        prop_assert_eq!(milestones(&x.receiver_events), milestones(&y.receiver_events));
        prop_assert_eq!(milestones(&x.sender_events), milestones(&y.sender_events));
    }
}

#[test]
fn the_sim_really_completes_jobs_and_file_accesses_out_of_order() {
    let mode = Mode {
        encrypt: true,
        compress: crate::sender::CompressMode::On,
        resume: true,
    };
    let (mut jobs, mut io) = (0, 0);
    for seed in 0..4 {
        let out = run(mode, seed, 4, 4);
        jobs += out.jobs_out_of_order;
        io += out.io_out_of_order;
    }
    assert!(jobs > 0, "no job ran out of order");
    assert!(io > 0, "no file access ran out of order");
}

#[test]
fn window_and_link_sizes_do_not_change_what_is_sent() {
    // Every plain mode, and encryption with compression (cheap to encrypt in a test build).
    let modes = Mode::all()
        .into_iter()
        .filter(|m| !m.encrypt || m.compress == crate::sender::CompressMode::On);
    for mode in modes {
        let narrow = run(mode, 1, 1, 1);
        let wide = run(mode, 2, 8, 8);
        assert_eq!(
            narrow.sender_stream_digest, wide.sender_stream_digest,
            "{mode:?}"
        );
        assert_eq!(
            per_file(&narrow.receiver_io),
            per_file(&wide.receiver_io),
            "{mode:?}"
        );
    }
}
