//! Resuming from whatever the receiver already has gives the same bytes as a fresh
//! transfer, and sends only what is missing.

use bytes::Bytes;
use proptest::prelude::*;

use super::fixtures::{
    assert_clean, committed, content, expected_files, opens, Content, Mode, MIB,
};
use crate::chain::resume_chain;
use crate::crypto::NonceChain;
use crate::receiver::IoRequest;
use crate::sender::CompressMode;
use crate::sim::{self, Outcome, ReceiverDisk};
use crate::wire::{self, Control, ResumeEntry};
use crate::{Event, WireMessage};

const NAME: &str = "dir/resumed.bin";
const OTHER: &str = "other.txt";

/// What the receiver holds for [`NAME`] before the session.
#[derive(Debug, Clone)]
enum Local {
    Nothing,
    /// The first `n` bytes of the source.
    Prefix(usize),
    /// The first `n` bytes with one byte changed at `n * at / 1000`.
    DamagedPrefix(usize, usize),
    /// The source plus `n` more bytes.
    Longer(usize),
}

fn local_bytes(local: &Local, source: &[u8]) -> Option<Vec<u8>> {
    match *local {
        Local::Nothing => None,
        Local::Prefix(n) => Some(source[..n].to_vec()),
        Local::DamagedPrefix(n, at) => {
            let mut v = source[..n].to_vec();
            if !v.is_empty() {
                let i = (n * at / 1000).min(n - 1);
                v[i] ^= 0x20;
            }
            Some(v)
        }
        Local::Longer(n) => {
            let mut v = source.to_vec();
            v.extend(std::iter::repeat_n(7u8, n));
            Some(v)
        }
    }
}

/// The reference model of the sender's decision: append after a verified prefix, skip a
/// whole copy, rewrite anything else.
fn model_append_from(local: Option<&[u8]>, source: &[u8]) -> u64 {
    match local {
        Some(l) if !l.is_empty() && l.len() <= source.len() && source[..l.len()] == *l => {
            l.len() as u64
        }
        _ => 0,
    }
}

fn disk_with(local: Option<Vec<u8>>, as_partial: bool) -> ReceiverDisk {
    let mut disk = ReceiverDisk::default();
    if let Some(l) = local {
        if as_partial {
            disk.partial.insert(NAME.into(), l);
        } else {
            disk.complete.insert(NAME.into(), l);
        }
    }
    disk
}

fn run_resume(mode: Mode, source: &Bytes, disk: ReceiverDisk, seed: u64) -> Outcome {
    let files = vec![
        (NAME.to_owned(), source.clone()),
        (OTHER.to_owned(), content(Content::Text, 1000, 99)),
    ];
    let mut setup = mode.setup(&files);
    setup.disk = disk.clone();
    setup.seed = seed;
    let out = sim::run(setup);
    assert_clean(&out, &expected_files(&disk, &files));
    out
}

fn resume_mode(encrypt: bool, compress: CompressMode) -> Mode {
    Mode {
        encrypt,
        compress,
        resume: true,
    }
}

/// What the receiver did for [`NAME`] (manifest index 0).
fn io_for_name(out: &Outcome) -> Vec<&IoRequest> {
    out.receiver_io
        .iter()
        .filter(|r| crate::sim::request_file(r) == Some(0))
        .collect()
}

/// The `append_from` of every `Open` of [`NAME`].
fn opened_name(out: &Outcome) -> Vec<u64> {
    opens(&out.receiver_io)
        .into_iter()
        .filter(|(p, _)| p == NAME)
        .map(|(_, a)| a)
        .collect()
}

/// Whether [`NAME`] was put in place by this session.
fn committed_name(out: &Outcome) -> bool {
    committed(&out.receiver_io).contains(&0)
}

fn first_write_offset(out: &Outcome) -> Option<u64> {
    io_for_name(out).into_iter().find_map(|r| match r {
        IoRequest::Write { offset, .. } => Some(*offset),
        _ => None,
    })
}

fn skipped(events: &[Event]) -> bool {
    events
        .iter()
        .any(|e| matches!(e, Event::FileSkipped { path, .. } if path == NAME))
}

fn local_strategy() -> impl Strategy<Value = (usize, Local)> {
    let size = prop_oneof![
        Just(0usize),
        Just(1),
        Just(MIB),
        Just(MIB + 1),
        0..2 * MIB + 10
    ];
    (
        size,
        0..4u8,
        any::<prop::sample::Index>(),
        0..1000usize,
        1..3000usize,
    )
        .prop_map(|(size, which, n, at, extra)| {
            let n = n.index(size + 1);
            let local = match which {
                0 => Local::Nothing,
                1 => Local::Prefix(n),
                2 => Local::DamagedPrefix(n, at),
                _ => Local::Longer(extra),
            };
            (size, local)
        })
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 24,
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn resuming_from_any_local_copy_gives_the_source_bytes(
        (size, local) in local_strategy(),
        as_partial in any::<bool>(),
        encrypt in any::<bool>(),
        compress in prop::sample::select(vec![CompressMode::Auto, CompressMode::On, CompressMode::Off]),
        random in any::<bool>(),
        seed in any::<u64>(),
    ) {
        let kind = if random { Content::Random } else { Content::Text };
        let source = content(kind, size, 5);
        let bytes = local_bytes(&local, &source);
        let af = model_append_from(bytes.as_deref(), &source);
        let out = run_resume(resume_mode(encrypt, compress), &source, disk_with(bytes, as_partial), seed);
        let whole = af == size as u64 && size > 0;
        if whole {
            // Nothing is sent: a whole complete copy stays as it is, a whole partial one
            // is put in place as it is.
            let only_reads = io_for_name(&out).iter().all(|r| {
                matches!(r, IoRequest::Stat { .. } | IoRequest::ReadBack { .. } | IoRequest::Commit { .. })
            });
            prop_assert!(only_reads);
            prop_assert!(skipped(&out.receiver_events));
            prop_assert_eq!(committed_name(&out), as_partial);
        } else {
            prop_assert_eq!(opened_name(&out), vec![af]);
            if (af as usize) < size {
                prop_assert_eq!(first_write_offset(&out), Some(af));
            } else {
                prop_assert_eq!(first_write_offset(&out), None);
            }
            prop_assert!(committed_name(&out));
        }
        prop_assert_eq!(skipped(&out.sender_events), whole);
    }
}

fn random_source(len: usize) -> Bytes {
    content(Content::Random, len, 21)
}

#[test]
fn resume_appends_after_matching_prefix() {
    let source = random_source(2 * MIB + MIB / 2);
    let keep = MIB + 3;
    for encrypt in [false, true] {
        let disk = disk_with(Some(source[..keep].to_vec()), true);
        let out = run_resume(resume_mode(encrypt, CompressMode::Off), &source, disk, 1);
        assert_eq!(opened_name(&out), vec![keep as u64]);
        assert_eq!(first_write_offset(&out), Some(keep as u64));
        let sent: u64 = out
            .sender_events
            .iter()
            .filter_map(|e| match e {
                Event::Progress { delta, .. } => Some(*delta),
                _ => None,
            })
            .sum();
        assert_eq!(
            sent,
            (source.len() - keep + 1000) as u64,
            "only the missing bytes are sent"
        );
    }
}

#[test]
fn resume_skips_complete_file_and_leaves_it_untouched() {
    let source = random_source(MIB + 17);
    for encrypt in [false, true] {
        let disk = disk_with(Some(source.to_vec()), false);
        let out = run_resume(resume_mode(encrypt, CompressMode::Auto), &source, disk, 2);
        assert!(io_for_name(&out)
            .iter()
            .all(|r| matches!(r, IoRequest::Stat { .. } | IoRequest::ReadBack { .. })));
        assert!(skipped(&out.sender_events) && skipped(&out.receiver_events));
    }
}

#[test]
fn resume_rewrites_mismatching_complete_file() {
    let source = random_source(MIB + 17);
    let mut old = source.to_vec();
    old[MIB + 5] ^= 1;
    let out = run_resume(
        resume_mode(false, CompressMode::Auto),
        &source,
        disk_with(Some(old), false),
        3,
    );
    assert_eq!(opened_name(&out), vec![0]);
    assert_eq!(first_write_offset(&out), Some(0));
}

#[test]
fn resume_rewrites_local_copy_longer_than_the_source() {
    let source = random_source(1000);
    for as_partial in [false, true] {
        let out = run_resume(
            resume_mode(true, CompressMode::On),
            &source,
            disk_with(Some([&source[..], b"tail"].concat()), as_partial),
            4,
        );
        assert_eq!(opened_name(&out), vec![0]);
    }
}

#[test]
fn resume_moves_a_whole_partial_file_into_place_without_writing() {
    let source = random_source(2 * MIB);
    let out = run_resume(
        resume_mode(false, CompressMode::Off),
        &source,
        disk_with(Some(source.to_vec()), true),
        5,
    );
    assert_eq!(opened_name(&out), Vec::<u64>::new());
    assert_eq!(first_write_offset(&out), None);
    assert!(committed_name(&out));
}

#[test]
fn resume_continues_a_complete_file_that_the_source_outgrew() {
    let source = random_source(MIB + 100);
    let out = run_resume(
        resume_mode(true, CompressMode::Auto),
        &source,
        disk_with(Some(source[..MIB].to_vec()), false),
        6,
    );
    assert_eq!(opened_name(&out), vec![MIB as u64]);
    assert_eq!(first_write_offset(&out), Some(MIB as u64));
}

#[test]
fn resume_prefers_the_partial_file_over_an_older_complete_one() {
    let source = random_source(3000);
    let mut disk = disk_with(Some(source[..1000].to_vec()), true);
    disk.complete
        .insert(NAME.into(), b"an older version".to_vec());
    let out = run_resume(resume_mode(false, CompressMode::Off), &source, disk, 7);
    assert_eq!(opened_name(&out), vec![1000]);
}

#[test]
fn without_resume_an_existing_file_is_rewritten_from_the_start() {
    let source = random_source(3000);
    let mode = Mode {
        encrypt: false,
        compress: CompressMode::Auto,
        resume: false,
    };
    let disk = disk_with(Some(source[..1000].to_vec()), false);
    let out = run_resume(mode, &source, disk, 8);
    assert_eq!(opened_name(&out), vec![0]);
    assert!(!out
        .receiver_io
        .iter()
        .any(|r| matches!(r, IoRequest::Stat { .. } | IoRequest::ReadBack { .. })));
    assert!(
        out.receiver_sent.is_empty(),
        "no resume answer without resume"
    );
}

/// The receiver's resume answer, decrypted when the session is encrypted.
fn answer(out: &Outcome, encrypt: bool) -> Vec<ResumeEntry> {
    assert_eq!(out.receiver_sent.len(), 1, "exactly one answer");
    let WireMessage::Text(t) = &out.receiver_sent[0] else {
        panic!("the answer is text");
    };
    let plain = match Control::parse(t).expect("the answer parses") {
        Control::EncReceiverManifest { hidden_manifest } => {
            assert!(encrypt, "encrypted answer in a plain session");
            // The answer takes the nonce after the manifest's.
            let mut nonces = NonceChain::new(&[0x5a; 32]);
            nonces.next();
            let sealed = wire::unhex(&hidden_manifest).expect("hex");
            let plain = super::fixtures::cipher()
                .open(&nonces.next(), &sealed)
                .expect("the answer decrypts with the second nonce");
            String::from_utf8(plain).expect("UTF-8")
        }
        other => {
            assert!(!encrypt, "plain answer in an encrypted session");
            other.to_json()
        }
    };
    match Control::parse(&plain).expect("the answer parses") {
        Control::ReceiverManifest { entries } => entries,
        other => panic!("answer holds {other:?}"),
    }
}

#[test]
fn resume_answer_reports_size_and_chain_of_each_nonempty_local_copy() {
    let source = random_source(MIB + 9);
    for encrypt in [false, true] {
        let mut disk = disk_with(Some(source[..MIB + 1].to_vec()), true);
        disk.complete.insert(OTHER.into(), Vec::new());
        disk.complete
            .insert("unrelated".into(), b"not offered".to_vec());
        let out = run_resume(resume_mode(encrypt, CompressMode::Auto), &source, disk, 9);
        let want = vec![ResumeEntry {
            path: NAME.into(),
            size: MIB as u64 + 1,
            chain_hex: wire::hex(&resume_chain(&source[..MIB + 1]).expect("non-empty")),
        }];
        assert_eq!(answer(&out, encrypt), want);
    }
}

#[test]
fn resume_with_nothing_local_sends_an_empty_answer_and_everything() {
    let source = random_source(10);
    let out = run_resume(
        resume_mode(false, CompressMode::Auto),
        &source,
        ReceiverDisk::default(),
        10,
    );
    assert_eq!(answer(&out, false), vec![]);
    assert_eq!(opened_name(&out), vec![0]);
}

#[test]
fn empty_source_file_replaces_a_nonempty_local_copy_when_resuming() {
    let source = Bytes::new();
    for as_partial in [false, true] {
        let out = run_resume(
            resume_mode(false, CompressMode::Auto),
            &source,
            disk_with(Some(b"stale".to_vec()), as_partial),
            11,
        );
        assert_eq!(opened_name(&out), vec![0]);
    }
}
