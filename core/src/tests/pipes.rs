//! Extensions `stream` and `text`: data of unknown length (standard input) and short
//! texts, between two peers of this project; a receiver that does not accept them (a
//! p2p-copy 0.1.x receiver) gets nothing; `single_file` refuses a second file.

use std::time::Instant;

use bytes::Bytes;
use proptest::prelude::*;

use super::fixtures::{content, encrypted, plain, Content, MIB};
use crate::receiver::{IoRequest as RxIo, Receiver, ReceiverConfig};
use crate::sender::{CompressMode, SendFile, Sender, SenderConfig};
use crate::sim::{self, Direction, Outcome, SenderFs, SimSetup};
use crate::wire::{self, Control, EntryKind, WireMessage};
use crate::{Error, Event, Secrets};

const NAME: &str = "from-stdin.bin";

fn confirming(compress: CompressMode) -> SenderConfig {
    SenderConfig {
        compress,
        confirm: true,
        ..SenderConfig::default()
    }
}

/// A session sending `data` as one entry of `kind`.
fn setup(secrets: &Secrets, kind: EntryKind, data: Bytes, compress: CompressMode) -> SimSetup {
    let mut s = SimSetup::new(vec![(NAME.to_owned(), data)], secrets);
    s.kinds = vec![Some(kind)];
    s.sender_config = confirming(compress);
    s
}

fn assert_ok(out: &Outcome) {
    assert_eq!(out.sender_error, None, "sender failed");
    assert_eq!(out.receiver_error, None, "receiver failed");
    assert!(out.violations.is_empty(), "{:?}", out.violations);
    assert!(out.both_finished && !out.step_limit_hit);
    assert!(out.disk.partial.is_empty(), "{:?}", out.disk.partial.keys());
}

fn done_size(events: &[Event]) -> Option<u64> {
    events.iter().find_map(|e| match e {
        Event::FileDone { size, .. } => Some(*size),
        _ => None,
    })
}

fn stream_roundtrip(len: usize, encrypt: bool, compress: CompressMode, seed: u64) {
    let secrets = if encrypt { encrypted() } else { plain() };
    let data = content(Content::TextThenRandom, len, seed + 1);
    let mut s = setup(&secrets, EntryKind::Stream, data.clone(), compress);
    s.seed = seed;
    let out = sim::run(s);
    assert_ok(&out);
    assert_eq!(out.files().len(), 1);
    assert!(
        out.files()[NAME] == data.as_ref(),
        "the stream arrived changed"
    );
    assert_eq!(done_size(&out.sender_events), Some(len as u64));
    assert_eq!(done_size(&out.receiver_events), Some(len as u64));
    assert!(out
        .sender_events
        .contains(&Event::Manifest { files: 1, bytes: 0 }));
    assert!(out.sender_events.contains(&Event::Delivery {
        confirmed: true,
        delivered: 1
    }));
}

#[test]
fn a_stream_of_any_length_arrives_whole_in_every_mode() {
    for len in [0, 1, 5000, MIB - 1, MIB, MIB + 1, 2 * MIB + 7] {
        for compress in [CompressMode::Auto, CompressMode::On, CompressMode::Off] {
            stream_roundtrip(len, false, compress, len as u64);
        }
    }
    for len in [0, MIB, MIB + 3] {
        stream_roundtrip(len, true, CompressMode::Auto, 7);
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    /// Any length, any completion order, plain or encrypted, any compression.
    #[test]
    fn any_stream_arrives_whole(
        len in prop_oneof![Just(0usize), Just(MIB), Just(2 * MIB), 0..3 * MIB],
        encrypt in any::<bool>(),
        compress in prop::sample::select(vec![CompressMode::Auto, CompressMode::On, CompressMode::Off]),
        seed in any::<u64>(),
    ) {
        // AES-GCM is slow in unoptimised builds: encrypted cases carry less.
        let len = if encrypt { len.min(MIB + 17) } else { len };
        stream_roundtrip(len, encrypt, compress, seed);
    }
}

#[test]
fn a_text_is_shown_and_never_written() {
    for secrets in [plain(), encrypted()] {
        let words = "héllo, wörld\nsecond line";
        let s = setup(
            &secrets,
            EntryKind::Text,
            Bytes::from(words),
            CompressMode::Auto,
        );
        let out = sim::run(s);
        assert_ok(&out);
        assert!(out.files().is_empty(), "a text is not a file");
        assert!(!out.receiver_io.iter().any(|r| matches!(
            r,
            RxIo::Open { .. } | RxIo::Write { .. } | RxIo::Stat { .. }
        )));
        assert!(out.receiver_events.contains(&Event::Text {
            path: NAME.into(),
            text: words.into()
        }));
        assert!(out.sender_events.contains(&Event::Delivery {
            confirmed: true,
            delivered: 1
        }));
    }
}

/// A receiver that never accepts (p2p-copy 0.1.x): the relay drops the acceptance, so
/// the sender sees the resume answer first. No `file` and no data ever leaves.
#[test]
fn a_receiver_that_does_not_accept_gets_nothing() {
    for (kind, secrets) in [
        (EntryKind::Stream, plain()),
        (EntryKind::Text, plain()),
        (EntryKind::Stream, encrypted()),
    ] {
        let mut s = setup(
            &secrets,
            kind,
            Bytes::from_static(b"data"),
            CompressMode::Off,
        );
        let seen = std::rc::Rc::new(std::cell::RefCell::new(Vec::new()));
        let log = seen.clone();
        s.tamper = Some(Box::new(move |dir, _, msg| {
            if dir == Direction::ToReceiver {
                log.borrow_mut().push(msg.clone());
            }
            match &msg {
                WireMessage::Text(t) if dir == Direction::ToSender && t.contains("extensions") => {
                    vec![]
                }
                _ => vec![msg],
            }
        }));
        let out = sim::run(s);
        let err = out.sender_error.clone().expect("the sender refuses");
        assert_eq!(err.kind(), "unsupported", "{err}");
        assert!(err.to_string().contains("nothing was sent"), "{err}");
        for m in seen.borrow().iter() {
            match m {
                WireMessage::Binary(_) => panic!("data reached the receiver"),
                WireMessage::Text(t) => assert!(
                    !t.contains("\"type\":\"file\"") && !t.contains("enc_file"),
                    "{t}"
                ),
            }
        }
        assert!(out.files().is_empty());
    }
}

/// The relay drops the last piece: caught by the size in `stream_eof` or, encrypted,
/// by that size sealed under the next nonce (which is then out of step). (In a plain
/// session the relay could rewrite the size too, as it can rewrite anything there.)
#[test]
fn a_truncated_stream_is_refused() {
    for secrets in [plain(), encrypted()] {
        let data = content(Content::Random, 2 * MIB + 10, 3);
        let mut s = setup(&secrets, EntryKind::Stream, data, CompressMode::Off);
        s.tamper = Some(Box::new(move |dir, _, msg| match &msg {
            WireMessage::Binary(b) if dir == Direction::ToReceiver && b[7] == 2 => vec![],
            _ => vec![msg],
        }));
        let out = sim::run(s);
        let err = out.receiver_error.clone().expect("the receiver refuses");
        assert_eq!(err.kind(), "integrity", "{err}");
        assert!(out.files().is_empty());
    }
}

#[test]
fn a_single_file_receiver_refuses_two_before_writing() {
    let files = vec![
        ("a".to_owned(), Bytes::from_static(b"one")),
        ("b".to_owned(), Bytes::from_static(b"two")),
    ];
    let mut s = SimSetup::new(files, &plain());
    s.sender_config = confirming(CompressMode::Off);
    s.receiver_config = ReceiverConfig {
        single_file: true,
        ..ReceiverConfig::default()
    };
    let out = sim::run(s);
    let err = out.receiver_error.clone().expect("refused");
    assert_eq!(err.kind(), "unsupported", "{err}");
    assert!(err.to_string().contains("2 files"), "{err}");
    assert!(out.receiver_io.is_empty(), "{:?}", out.receiver_io);
    // The sender learns why.
    let sent = out.sender_error.expect("the sender is told");
    assert!(sent.to_string().contains("standard output"), "{sent}");
}

// ---- transcripts ----

fn text(m: &WireMessage) -> &str {
    match m {
        WireMessage::Text(t) => t,
        WireMessage::Binary(_) => panic!("expected text, got binary"),
    }
}

/// The sender fed by hand: run every read (stream reads come back short at the end)
/// and job; collect what it transmits.
fn drain(tx: &mut Sender, fs: &mut SenderFs, now: Instant) -> Vec<WireMessage> {
    let mut out = Vec::new();
    loop {
        let mut any = false;
        while let Some(r) = tx.poll_io() {
            any = true;
            if let Some(done) = fs.execute(&r) {
                tx.handle_io(now, done).expect("read taken");
            }
        }
        while let Some(j) = tx.poll_job() {
            any = true;
            tx.handle_job(now, j.run()).expect("job taken");
        }
        while tx.poll_event().is_some() {}
        match tx.poll_transmit() {
            Some(m) => out.push(m),
            None if !any => return out,
            None => {}
        }
    }
}

fn stream_sender(data: &'static [u8]) -> (Sender, SenderFs, Instant) {
    let now = Instant::now();
    let file = SendFile {
        path: NAME.into(),
        size: 0,
        kind: Some(EntryKind::Stream),
    };
    let tx = Sender::new(
        now,
        confirming(CompressMode::Off),
        &plain(),
        vec![file],
        [1; 32],
    )
    .expect("valid");
    let mut fs = SenderFs::new(vec![Bytes::from_static(data)]);
    fs.streams = vec![true];
    (tx, fs, now)
}

#[test]
fn transcript_of_a_stream() {
    let (mut tx, mut fs, now) = stream_sender(b"streamed bytes");
    let hello = drain(&mut tx, &mut fs, now);
    assert_eq!(hello.len(), 1);
    tx.handle_message(now, Control::Ready.into()).unwrap();
    let m = drain(&mut tx, &mut fs, now);
    assert_eq!(
        m.iter().map(text).collect::<Vec<_>>(),
        [r#"{"type":"manifest","resume":true,"entries":[{"path":"from-stdin.bin","size":0,"kind":"stream"}],"extensions":["confirm","stream"]}"#],
        "the manifest asks for the resume answer, as the probe, and nothing is read before the acceptance"
    );
    tx.handle_message(
        now,
        WireMessage::Text(r#"{"type":"extensions","accept":["confirm","stream"]}"#.into()),
    )
    .unwrap();
    assert!(
        drain(&mut tx, &mut fs, now).is_empty(),
        "still waits for the answer"
    );
    tx.handle_message(
        now,
        WireMessage::Text(r#"{"type":"receiver_manifest","entries":[]}"#.into()),
    )
    .unwrap();
    let m = drain(&mut tx, &mut fs, now);
    assert_eq!(m.len(), 4, "{m:?}");
    assert_eq!(
        text(&m[0]),
        r#"{"type":"file","path":"from-stdin.bin","size":0,"compression":"none","append_from":0}"#
    );
    let d = wire::DataMessage::decode(match &m[1] {
        WireMessage::Binary(b) => b.clone(),
        WireMessage::Text(t) => panic!("{t}"),
    })
    .unwrap();
    assert_eq!((d.seq, d.payload.as_ref()), (0, &b"streamed bytes"[..]));
    assert_eq!(text(&m[2]), r#"{"type":"stream_eof","size":14}"#);
    assert_eq!(text(&m[3]), r#"{"type":"eof"}"#);
}

#[test]
fn transcript_of_a_refusal_by_a_v1_receiver() {
    let (mut tx, mut fs, now) = stream_sender(b"never sent");
    drain(&mut tx, &mut fs, now);
    tx.handle_message(now, Control::Ready.into()).unwrap();
    drain(&mut tx, &mut fs, now);
    // p2p-copy 0.1.x answers the resume request at once and accepts nothing.
    let e = tx
        .handle_message(
            now,
            WireMessage::Text(r#"{"type":"receiver_manifest","entries":[]}"#.into()),
        )
        .unwrap_err();
    assert!(matches!(e, Error::Unsupported(_)), "{e}");
    assert!(e.to_string().contains("0.1.x"), "{e}");
    assert!(drain(&mut tx, &mut fs, now).is_empty(), "nothing is sent");
}

#[test]
fn a_sender_needs_confirm_and_a_short_text() {
    let now = Instant::now();
    let f = |kind, size| SendFile {
        path: "t".into(),
        size,
        kind: Some(kind),
    };
    let no_confirm = Sender::new(
        now,
        SenderConfig::default(),
        &plain(),
        vec![f(EntryKind::Stream, 0)],
        [0; 32],
    );
    assert!(matches!(no_confirm, Err(Error::Config(_))));
    let long = Sender::new(
        now,
        confirming(CompressMode::Off),
        &plain(),
        vec![f(EntryKind::Text, wire::TEXT_MAX + 1)],
        [0; 32],
    );
    assert!(matches!(long, Err(Error::Config(_))));
}

/// The receiver fed by hand: an entry of a kind that was not offered, a stream that
/// ends with `file_eof`, and pieces after a short one are refused.
#[test]
fn receiver_refuses_malformed_streams() {
    let manifest = |ext: &str| {
        WireMessage::Text(format!(
            r#"{{"type":"manifest","resume":false,"entries":[{{"path":"s","size":0,"kind":"stream"}}],"extensions":["confirm"{ext}]}}"#
        ))
    };
    let file = WireMessage::Text(
        r#"{"type":"file","path":"s","size":0,"compression":"none","append_from":0}"#.into(),
    );
    let piece = |seq: u64, chain: &mut crate::chain::Chain, data: &[u8]| {
        let c = chain.next(data);
        let mut m = seq.to_be_bytes().to_vec();
        m.extend_from_slice(&c);
        m.extend_from_slice(data);
        WireMessage::Binary(Bytes::from(m))
    };
    let run = |msgs: Vec<WireMessage>| -> Result<(), Error> {
        let mut d = sim::ReceiverDriver::new(
            ReceiverConfig::default(),
            &plain(),
            sim::ReceiverDisk::default(),
        );
        d.feed_all(msgs)?;
        d.result()
    };
    let e = run(vec![manifest("")]).unwrap_err();
    assert_eq!(e.kind(), "peer", "{e}");
    let mut c = crate::chain::Chain::new();
    let e = run(vec![
        manifest(r#","stream""#),
        file.clone(),
        piece(0, &mut c, b"abc"),
        Control::FileEof.into(),
    ])
    .unwrap_err();
    assert!(e.to_string().contains("stream_eof"), "{e}");
    let mut c = crate::chain::Chain::new();
    let e = run(vec![
        manifest(r#","stream""#),
        file.clone(),
        piece(0, &mut c, b"short"),
        piece(1, &mut c, b"more"),
    ])
    .unwrap_err();
    assert_eq!(e.kind(), "integrity", "{e}");
    let mut c = crate::chain::Chain::new();
    run(vec![
        manifest(r#","stream""#),
        file,
        piece(0, &mut c, b"short"),
        Control::StreamEof {
            size: Some(5),
            hidden_size: None,
        }
        .into(),
        Control::Eof.into(),
    ])
    .expect("a well-formed stream");
}

#[test]
fn a_stream_is_never_looked_for_when_resuming() {
    let mut r = Receiver::new(Instant::now(), ReceiverConfig::default(), &plain());
    while r.poll_transmit().is_some() {}
    r.handle_message(
        Instant::now(),
        WireMessage::Text(
            r#"{"type":"manifest","resume":true,"entries":[{"path":"s","size":0,"kind":"stream"}],"extensions":["confirm","stream"]}"#
                .into(),
        ),
    )
    .unwrap();
    assert!(r.poll_io().is_none(), "no stat for a stream");
    let sent: Vec<String> = std::iter::from_fn(|| r.poll_transmit())
        .map(|m| text(&m).to_owned())
        .collect();
    assert_eq!(
        sent,
        [
            r#"{"type":"extensions","accept":["confirm","stream"]}"#,
            r#"{"type":"receiver_manifest","entries":[]}"#
        ]
    );
}
