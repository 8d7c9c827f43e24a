//! The sender fed by hand: what it sends and when, its deadlines, and how it treats
//! messages it does not expect.

use std::time::{Duration, Instant};

use bytes::Bytes;
use sha2::{Digest, Sha256};

use super::fixtures::{cipher, encrypted, plain, text, MIB};
use crate::chain::resume_chain;
use crate::crypto::NonceChain;
use crate::sender::{
    CompressLevel, CompressMode, IoCompletion, IoRequest, SendFile, Sender, SenderConfig,
};
use crate::sim::SenderFs;
use crate::wire::{self, Control, DataMessage, FileHeader, ResumeEntry};
use crate::{Error, Event, Secrets, WireMessage};

const SEED: [u8; 32] = [3; 32];

struct Rig {
    s: Sender,
    fs: SenderFs,
    now: Instant,
    reads: Vec<IoRequest>,
    events: Vec<Event>,
}

impl Rig {
    fn new(config: SenderConfig, secrets: &Secrets, files: &[(&str, Bytes)]) -> Rig {
        let now = Instant::now();
        let list = files
            .iter()
            .map(|(p, d)| SendFile {
                path: (*p).to_owned(),
                size: d.len() as u64,
                kind: None,
            })
            .collect();
        Rig {
            s: Sender::new(now, config, secrets, list, SEED).expect("valid files"),
            fs: SenderFs::new(files.iter().map(|(_, d)| d.clone()).collect()),
            now,
            reads: Vec::new(),
            events: Vec::new(),
        }
    }

    fn plain(files: &[(&str, Bytes)]) -> Rig {
        Rig::new(SenderConfig::default(), &plain(), files)
    }

    fn resuming(secrets: &Secrets, files: &[(&str, Bytes)]) -> Rig {
        let config = SenderConfig {
            resume: true,
            ..SenderConfig::default()
        };
        Rig::new(config, secrets, files)
    }

    /// Run every read and job the sender asks for, without taking messages.
    fn work(&mut self) {
        loop {
            let mut any = false;
            while let Some(r) = self.s.poll_io() {
                any = true;
                self.reads.push(r.clone());
                if let Some(done) = self.fs.execute(&r) {
                    let _ = self.s.handle_io(self.now, done);
                }
            }
            while let Some(j) = self.s.poll_job() {
                any = true;
                let _ = self.s.handle_job(self.now, j.run());
            }
            while let Some(e) = self.s.poll_event() {
                self.events.push(e);
            }
            if !any {
                return;
            }
        }
    }

    /// Run everything and take every message.
    fn drain(&mut self) -> Vec<WireMessage> {
        let mut out = Vec::new();
        loop {
            self.work();
            match self.s.poll_transmit() {
                Some(m) => out.push(m),
                None => return out,
            }
        }
    }

    fn feed(&mut self, m: WireMessage) -> Result<(), Error> {
        let r = self.s.handle_message(self.now, m);
        self.work();
        r
    }

    fn hello(&mut self) {
        let m = self.s.poll_transmit().expect("hello");
        assert!(matches!(&m, WireMessage::Text(t) if t.contains("\"type\":\"hello\"")));
    }

    fn failed(&mut self, kind: &str, needle: &str) {
        let err = self.s.error().cloned().expect("the sender failed");
        assert_eq!(err.kind(), kind, "{err}");
        assert!(err.to_string().contains(needle), "{err} lacks {needle:?}");
        assert!(self.s.is_finished());
        assert_eq!(self.s.poll_io(), None);
        assert!(self.s.poll_job().is_none());
        assert_eq!(self.s.poll_timeout(), None);
        assert!(self.events.contains(&Event::Failed(err.clone())));
        assert_eq!(self.feed(text(r#"{"type":"ready"}"#)), Err(err));
    }
}

fn ready() -> WireMessage {
    Control::Ready.into()
}

fn bytes(n: usize) -> Bytes {
    Bytes::from((0..n).map(|i| (i * 7 % 256) as u8).collect::<Vec<u8>>())
}

#[test]
fn hello_is_the_only_message_before_ready() {
    for secrets in [plain(), encrypted()] {
        let mut r = Rig::new(SenderConfig::default(), &secrets, &[("a", bytes(5))]);
        let want = format!(
            r#"{{"type":"hello","code_hash_hex":"{}","role":"sender"}}"#,
            wire::hex(&secrets.code_hash)
        );
        assert_eq!(r.drain(), vec![WireMessage::Text(want)]);
        assert!(r.reads.is_empty(), "nothing is read before ready");
        assert!(r.events.is_empty());
        assert!(!r.s.is_finished());
    }
}

#[test]
fn the_plain_manifest_follows_ready() {
    let mut r = Rig::plain(&[("dir/a", bytes(5)), ("b", bytes(0))]);
    r.hello();
    r.feed(ready()).unwrap();
    assert_eq!(
        r.events[..2],
        [Event::Paired, Event::Manifest { files: 2, bytes: 5 }]
    );
    let msgs = r.drain();
    assert_eq!(
        msgs[0],
        text(
            r#"{"type":"manifest","resume":false,"entries":[{"path":"dir/a","size":5},{"path":"b","size":0}]}"#
        )
    );
    assert_eq!(
        msgs[1],
        text(r#"{"type":"file","path":"dir/a","size":5,"compression":"none","append_from":0}"#)
    );
    assert_eq!(msgs.last(), Some(&text(r#"{"type":"eof"}"#)));
    assert!(r.s.is_finished() && r.s.error().is_none());
}

#[test]
fn the_encrypted_manifest_follows_ready_under_the_first_nonce() {
    let files = [("a", bytes(5))];
    let mut r = Rig::new(SenderConfig::default(), &encrypted(), &files);
    r.hello();
    r.feed(ready()).unwrap();
    let msgs = r.drain();
    let WireMessage::Text(t) = &msgs[0] else {
        panic!("text expected")
    };
    let Control::EncManifest {
        nonce,
        hidden_manifest,
    } = Control::parse(t).unwrap()
    else {
        panic!("enc_manifest expected, got {t}")
    };
    assert_eq!(nonce, wire::hex(&SEED));
    let mut nonces = NonceChain::new(&SEED);
    let plain = cipher()
        .open(&nonces.next(), &wire::unhex(&hidden_manifest).unwrap())
        .expect("decrypts with the first nonce");
    assert_eq!(
        String::from_utf8(plain).unwrap(),
        r#"{"type":"manifest","resume":false,"entries":[{"path":"a","size":5}]}"#
    );
    let WireMessage::Text(f) = &msgs[1] else {
        panic!("text expected")
    };
    assert!(matches!(
        Control::parse(f).unwrap(),
        Control::EncFile { .. }
    ));
    assert!(t.starts_with(r#"{"type":"enc_manifest","nonce":""#), "{t}");
}

#[test]
fn no_ready_in_time_is_a_timeout() {
    let mut r = Rig::plain(&[("a", bytes(5))]);
    r.hello();
    let deadline = r.now + Duration::from_secs(300);
    assert_eq!(r.s.poll_timeout(), Some(deadline));
    r.s.handle_timeout(deadline - Duration::from_millis(1))
        .unwrap();
    assert!(r.s.handle_timeout(deadline).is_err());
    r.work();
    r.failed("timeout", "no receiver joined within 300 s");
    assert!(r.s.error().unwrap().to_string().contains("--encrypt"));
    assert!(r.reads.is_empty());
}

#[test]
fn no_resume_answer_in_time_is_a_timeout() {
    for secrets in [plain(), encrypted()] {
        let mut r = Rig::resuming(&secrets, &[("a", bytes(5))]);
        r.hello();
        r.now += Duration::from_secs(10);
        r.feed(ready()).unwrap();
        assert_eq!(r.drain().len(), 1, "only the manifest before the answer");
        assert!(r.reads.is_empty(), "nothing is read before the answer");
        let deadline = r.now + Duration::from_secs(30);
        assert_eq!(r.s.poll_timeout(), Some(deadline));
        r.s.handle_timeout(deadline - Duration::from_millis(1))
            .unwrap();
        let _ = r.s.handle_timeout(deadline);
        r.work();
        r.failed("timeout", "did not answer the resume request within 30 s");
    }
}

#[test]
fn messages_before_ready_are_refused() {
    let bad = [
        text(r#"{"type":"manifest","resume":false,"entries":[]}"#),
        text(r#"{"type":"receiver_manifest","entries":[]}"#),
        text(r#"{"type":"file_eof"}"#),
        text(r#"{"type":"eof"}"#),
        text("not json"),
        text("[1]"),
        text(r#"{"type":"whatever"}"#),
        WireMessage::Binary(DataMessage::encode(0, &[0; 32], b"")),
    ];
    for m in bad {
        let mut r = Rig::plain(&[("a", bytes(5))]);
        r.hello();
        let _ = r.feed(m.clone());
        r.failed("peer", "");
        assert!(r.reads.is_empty(), "{m:?}");
    }
}

#[test]
fn messages_while_waiting_for_the_answer_other_than_the_answer_are_refused() {
    let mut r = Rig::resuming(&plain(), &[("a", bytes(5))]);
    r.hello();
    r.feed(ready()).unwrap();
    let _ = r.feed(ready());
    r.failed("peer", "unexpected ready message");

    let mut r = Rig::resuming(&plain(), &[("a", bytes(5))]);
    r.hello();
    r.feed(ready()).unwrap();
    let _ = r.feed(
        Control::EncReceiverManifest {
            hidden_manifest: "00".into(),
        }
        .into(),
    );
    r.failed("peer", "unexpected enc_receiver_manifest");

    let mut r = Rig::resuming(&encrypted(), &[("a", bytes(5))]);
    r.hello();
    r.feed(ready()).unwrap();
    let _ = r.feed(Control::ReceiverManifest { entries: vec![] }.into());
    r.failed("peer", "unexpected receiver_manifest");
}

#[test]
fn messages_while_sending_are_refused() {
    for m in [
        ready(),
        Control::ReceiverManifest { entries: vec![] }.into(),
        WireMessage::Binary(Bytes::from_static(b"x")),
    ] {
        // Larger than the window, so the sender is still sending.
        let mut r = Rig::plain(&[("a", bytes(10 * MIB))]);
        r.hello();
        r.feed(ready()).unwrap();
        assert!(!r.s.is_finished());
        let _ = r.feed(m);
        r.failed("peer", "");
    }
}

fn answer(entries: Vec<ResumeEntry>) -> WireMessage {
    Control::ReceiverManifest { entries }.into()
}

fn headers(msgs: &[WireMessage]) -> Vec<FileHeader> {
    msgs.iter()
        .filter_map(|m| match m {
            WireMessage::Text(t) => match Control::parse(t).ok()? {
                Control::File(h) => Some(h),
                _ => None,
            },
            WireMessage::Binary(_) => None,
        })
        .collect()
}

#[test]
fn resume_entries_for_paths_never_offered_are_ignored() {
    let data = bytes(10);
    let mut r = Rig::resuming(&plain(), &[("a", data.clone())]);
    r.hello();
    r.feed(ready()).unwrap();
    r.drain();
    r.feed(answer(vec![
        ResumeEntry {
            path: "other".into(),
            size: 5,
            chain_hex: wire::hex(&resume_chain(&data[..5]).unwrap()),
        },
        ResumeEntry {
            path: "../a".into(),
            size: 5,
            chain_hex: wire::hex(&resume_chain(&data[..5]).unwrap()),
        },
    ]))
    .unwrap();
    let msgs = r.drain();
    assert_eq!(headers(&msgs)[0].append_from, 0);
    assert_eq!(
        r.reads[0],
        IoRequest::Read {
            file: 0,
            offset: 0,
            len: 10
        }
    );
    assert!(r.s.error().is_none() && r.s.is_finished());
}

#[test]
fn a_resume_answer_with_a_malformed_chain_is_refused() {
    for chain_hex in ["zz".repeat(32), "00".repeat(31), String::new()] {
        let mut r = Rig::resuming(&plain(), &[("a", bytes(10))]);
        r.hello();
        r.feed(ready()).unwrap();
        let _ = r.feed(answer(vec![ResumeEntry {
            path: "a".into(),
            size: 5,
            chain_hex,
        }]));
        r.failed("peer", "malformed chain_hex");
        assert!(r.reads.is_empty());
    }
}

#[test]
fn an_encrypted_resume_answer_that_does_not_decrypt_is_refused() {
    let mut r = Rig::resuming(&encrypted(), &[("a", bytes(10))]);
    r.hello();
    r.feed(ready()).unwrap();
    // Sealed under the first nonce instead of the second: a replayed or forged answer.
    let mut nonces = NonceChain::new(&SEED);
    let sealed = cipher().seal(
        &nonces.next(),
        Control::ReceiverManifest { entries: vec![] }
            .to_json()
            .as_bytes(),
    );
    let _ = r.feed(
        Control::EncReceiverManifest {
            hidden_manifest: wire::hex(&sealed),
        }
        .into(),
    );
    r.failed("integrity", "does not decrypt");
}

#[test]
fn an_encrypted_resume_answer_under_the_second_nonce_is_used() {
    let data = bytes(3000);
    let mut r = Rig::resuming(&encrypted(), &[("a", data.clone())]);
    r.hello();
    r.feed(ready()).unwrap();
    r.drain();
    let mut nonces = NonceChain::new(&SEED);
    nonces.next();
    let entries = vec![ResumeEntry {
        path: "a".into(),
        size: 1000,
        chain_hex: wire::hex(&resume_chain(&data[..1000]).unwrap()),
    }];
    let sealed = cipher().seal(
        &nonces.next(),
        Control::ReceiverManifest { entries }.to_json().as_bytes(),
    );
    r.feed(
        Control::EncReceiverManifest {
            hidden_manifest: wire::hex(&sealed),
        }
        .into(),
    )
    .unwrap();
    let msgs = r.drain();
    let WireMessage::Text(t) = &msgs[0] else {
        panic!("text expected")
    };
    let Control::EncFile { hidden_file } = Control::parse(t).unwrap() else {
        panic!("enc_file expected")
    };
    let header = cipher()
        .open(&nonces.next(), &wire::unhex(&hidden_file).unwrap())
        .expect("the file header takes the third nonce");
    let header = String::from_utf8(header).unwrap();
    assert!(header.contains(r#""append_from":1000"#), "{header}");
}

#[test]
fn a_resume_answer_beyond_the_file_or_not_matching_sends_it_whole() {
    let data = bytes(100);
    for (size, chain) in [
        (
            101u64,
            resume_chain(&[data.as_ref(), b"x"].concat()).unwrap(),
        ),
        (50, [0u8; 32]),
        (0, Sha256::digest(b"").into()),
    ] {
        let mut r = Rig::resuming(&plain(), &[("a", data.clone())]);
        r.hello();
        r.feed(ready()).unwrap();
        r.drain();
        r.feed(answer(vec![ResumeEntry {
            path: "a".into(),
            size,
            chain_hex: wire::hex(&chain),
        }]))
        .unwrap();
        let msgs = r.drain();
        assert_eq!(headers(&msgs)[0].append_from, 0, "answer of {size} bytes");
        for read in &r.reads {
            if let IoRequest::Read { offset, len, .. } = read {
                assert!(offset + *len as u64 <= 100, "read past the end: {read:?}");
            }
        }
    }
}

#[test]
fn a_whole_copy_at_the_receiver_is_skipped() {
    let data = bytes(MIB + 1);
    let mut r = Rig::resuming(&plain(), &[("a", data.clone()), ("b", bytes(1))]);
    r.hello();
    r.feed(ready()).unwrap();
    r.drain();
    r.feed(answer(vec![ResumeEntry {
        path: "a".into(),
        size: data.len() as u64,
        chain_hex: wire::hex(&resume_chain(&data).unwrap()),
    }]))
    .unwrap();
    let msgs = r.drain();
    assert_eq!(
        headers(&msgs)
            .iter()
            .map(|h| h.path.as_str())
            .collect::<Vec<_>>(),
        ["b"]
    );
    assert!(r.events.contains(&Event::FileSkipped {
        path: "a".into(),
        size: MIB as u64 + 1
    }));
}

#[test]
fn a_short_read_fails_the_sender() {
    let mut r = Rig::plain(&[("a", bytes(10))]);
    r.hello();
    let _ = r.s.handle_message(r.now, ready());
    let Some(IoRequest::Read { file, offset, .. }) = r.s.poll_io() else {
        panic!("a read expected")
    };
    let _ = r.s.handle_io(
        r.now,
        IoCompletion::Read {
            file,
            offset,
            data: crate::wire::PieceBuf::from(&b"short"[..]),
        },
    );
    r.work();
    r.failed("io", "file changed while being read");
}

#[test]
fn a_failed_read_fails_the_sender() {
    let mut r = Rig::plain(&[("a", bytes(10))]);
    r.hello();
    let _ = r.s.handle_message(r.now, ready());
    let _ = r.s.handle_io(
        r.now,
        IoCompletion::Failed {
            file: 0,
            reason: "permission denied".into(),
        },
    );
    r.work();
    r.failed("io", "permission denied");
}

#[test]
fn a_sender_that_fails_before_the_acceptance_arrives_reports_once_it_does() {
    let config = SenderConfig {
        confirm: true,
        ..SenderConfig::default()
    };
    let mut r = Rig::new(config, &plain(), &[("a", bytes(10))]);
    r.hello();
    let _ = r.s.handle_message(r.now, ready());
    let manifest = r.s.poll_transmit().expect("the manifest");
    assert!(
        matches!(&manifest, WireMessage::Text(t) if t.ends_with(r#","extensions":["confirm"]}"#)),
        "{manifest:?}"
    );
    let _ = r.s.handle_io(
        r.now,
        IoCompletion::Failed {
            file: 0,
            reason: "it changed while being sent".into(),
        },
    );
    r.work();
    r.failed("io", "changed");
    assert!(r.s.awaits_acceptance());
    assert_eq!(r.s.poll_transmit(), None, "nothing new before the answer");
    // Anything but the acceptance releases nothing; the acceptance releases the report.
    let _ =
        r.s.handle_message(r.now, WireMessage::Text(r#"{"type":"ready"}"#.into()));
    assert_eq!(r.s.poll_transmit(), None);
    let accept = Control::Extensions {
        accept: vec!["confirm".into()],
    };
    let e = r.s.handle_message(r.now, accept.into()).unwrap_err();
    assert_eq!(e.kind(), "io", "the failure stays");
    assert!(!r.s.awaits_acceptance());
    match r.s.poll_transmit() {
        Some(WireMessage::Text(t)) => match Control::parse(&t).unwrap() {
            Control::Report(rep) => {
                assert!(!rep.ok);
                assert!(rep.error.unwrap().contains("changed while being sent"));
            }
            other => panic!("expected a report, got {other:?}"),
        },
        other => panic!("expected a report, got {other:?}"),
    }
}

#[test]
fn a_close_before_the_end_names_the_cause_and_whether_the_connection_was_lost() {
    let cases = [
        (
            Some(1013),
            "Duplicate role for code",
            "peer",
            "someone else is using this code",
        ),
        (
            Some(1013),
            "too many connections from this address (the relay allows 8 per address)",
            "peer",
            "the relay closed the connection: too many connections from this address (the relay allows 8 per address)",
        ),
        (Some(1002), "Bad hello", "peer", "refused the hello: Bad hello"),
        (
            Some(1000),
            "peer closed",
            "lost",
            "the other side went away while waiting for the receiver",
        ),
        (
            Some(1001),
            "relay shutting down",
            "lost",
            "the relay closed the connection while waiting for the receiver: relay shutting down",
        ),
        (None, "", "lost", "without a close frame"),
        (Some(1011), "io", "peer", "close code 1011: io"),
    ];
    for (code, reason, kind, needle) in cases {
        let mut r = Rig::plain(&[("a", bytes(10))]);
        r.hello();
        let _ = r.s.handle_close(r.now, code, reason);
        r.work();
        r.failed(kind, needle);
    }
}

#[test]
fn a_close_after_eof_is_not_an_error() {
    let mut r = Rig::plain(&[("a", bytes(10))]);
    r.hello();
    r.feed(ready()).unwrap();
    r.drain();
    assert!(r.s.is_finished());
    r.s.handle_close(r.now, Some(1000), "peer closed").unwrap();
    assert!(r.s.error().is_none());
}

#[test]
fn an_empty_file_is_sent_as_one_empty_piece() {
    for compress in [CompressMode::Auto, CompressMode::Off] {
        let config = SenderConfig {
            compress,
            ..SenderConfig::default()
        };
        let mut r = Rig::new(config, &plain(), &[("e", Bytes::new())]);
        r.hello();
        r.feed(ready()).unwrap();
        let msgs = r.drain();
        let empty_chain: [u8; 32] = Sha256::digest(b"").into();
        assert_eq!(
            msgs[1..],
            [
                text(r#"{"type":"file","path":"e","size":0,"compression":"none","append_from":0}"#),
                WireMessage::Binary(DataMessage::encode(0, &empty_chain, b"")),
                text(r#"{"type":"file_eof"}"#),
                text(r#"{"type":"eof"}"#),
            ]
        );
        assert!(!r.reads.iter().any(|q| matches!(q, IoRequest::Read { .. })));
    }
}

#[test]
fn read_ahead_stops_at_the_window_while_messages_are_not_taken() {
    for window in [1usize, 3] {
        let config = SenderConfig {
            window,
            compress: CompressMode::Off,
            ..SenderConfig::default()
        };
        let mut r = Rig::new(config, &plain(), &[("a", bytes(20 * MIB))]);
        r.hello();
        r.feed(ready()).unwrap();
        let count_reads = |r: &Rig| {
            r.reads
                .iter()
                .filter(|q| matches!(q, IoRequest::Read { .. }))
                .count()
        };
        assert!(count_reads(&r) <= window, "{} reads", count_reads(&r));
        // Taking one data message lets exactly one more piece in.
        let mut taken = 0;
        for _ in 0..10 {
            if taken == 2 {
                break;
            }
            if let Some(WireMessage::Binary(_)) = r.s.poll_transmit() {
                taken += 1;
            }
            r.work();
        }
        assert_eq!(taken, 2);
        assert!(count_reads(&r) <= window + 2, "{} reads", count_reads(&r));
    }
}

#[test]
fn unsafe_or_repeated_paths_are_refused_at_creation() {
    for files in [
        vec!["../a"],
        vec!["/abs"],
        vec!["a//b"],
        vec!["a", "a"],
        vec![""],
    ] {
        let list = files
            .iter()
            .map(|p| SendFile {
                path: (*p).to_owned(),
                size: 1,
                kind: None,
            })
            .collect();
        let r = Sender::new(
            Instant::now(),
            SenderConfig::default(),
            &plain(),
            list,
            SEED,
        );
        assert_eq!(
            r.map(|_| ()).map_err(|e| e.kind()),
            Err("config"),
            "{files:?}"
        );
    }
}

/// Whether the messages hold a file header.
fn has_file_header(msgs: &[WireMessage]) -> bool {
    msgs.iter()
        .any(|m| matches!(m, WireMessage::Text(t) if t.starts_with(r#"{"type":"file""#)))
}

#[test]
fn only_a_large_first_file_waits_for_the_answer_to_the_fast_offer() {
    let config = SenderConfig {
        confirm: true,
        fast: true,
        fast_wait_min: 1000,
        ..SenderConfig::default()
    };
    // Below the size: the first file goes at once, on v1's path.
    let mut r = Rig::new(config.clone(), &plain(), &[("small", bytes(999))]);
    r.hello();
    r.feed(ready()).unwrap();
    let msgs = r.drain();
    assert!(has_file_header(&msgs), "{msgs:?}");
    assert!(!msgs
        .iter()
        .any(|m| matches!(m, WireMessage::Text(t) if t.contains(r#""fast":true"#))));

    // From the size on, it waits for the answer up to fast_wait, then goes on v1's path
    // (a p2p-copy 0.1.x receiver never answers).
    let mut r = Rig::new(config.clone(), &plain(), &[("large", bytes(1000))]);
    r.hello();
    r.feed(ready()).unwrap();
    assert!(!has_file_header(&r.drain()));
    let wake = r.s.poll_timeout().expect("a deadline for the answer");
    assert_eq!(wake, r.now + config.fast_wait);
    r.s.handle_timeout(wake).unwrap();
    let msgs = r.drain();
    assert!(has_file_header(&msgs), "{msgs:?}");
    assert!(!msgs
        .iter()
        .any(|m| matches!(m, WireMessage::Text(t) if t.contains(r#""fast":true"#))));

    // An acceptance in time puts it on the fast path at once.
    let mut r = Rig::new(config, &plain(), &[("large", bytes(1000))]);
    r.hello();
    r.feed(ready()).unwrap();
    assert!(!has_file_header(&r.drain()));
    r.feed(text(r#"{"type":"extensions","accept":["confirm","fast"]}"#))
        .unwrap();
    let msgs = r.drain();
    assert!(msgs
        .iter()
        .any(|m| matches!(m, WireMessage::Text(t) if t.starts_with(r#"{"type":"file""#) && t.contains(r#""fast":true"#))));
}

/// A sender of one compressible file of `pieces` MiB, compressing every piece, past
/// the manifest.
fn compressing(level: CompressLevel, pieces: usize) -> Rig {
    let config = SenderConfig {
        compress: CompressMode::On,
        compress_level: level,
        ..SenderConfig::default()
    };
    let data = Bytes::from(b"a line of a log, 0123456789\n".repeat(pieces * MIB / 28 + 1));
    let mut r = Rig::new(config, &plain(), &[("log", data)]);
    r.hello();
    r.feed(ready()).unwrap();
    r
}

impl Rig {
    /// Complete every read; return the jobs asked for, not run.
    fn reads_only(&mut self) -> Vec<crate::sender::Job> {
        let mut jobs = Vec::new();
        loop {
            let mut any = false;
            while let Some(r) = self.s.poll_io() {
                any = true;
                if let Some(done) = self.fs.execute(&r) {
                    self.s.handle_io(self.now, done).unwrap();
                }
            }
            while let Some(j) = self.s.poll_job() {
                any = true;
                jobs.push(j);
            }
            if !any {
                return jobs;
            }
        }
    }

    fn take_events(&mut self) {
        while let Some(e) = self.s.poll_event() {
            self.events.push(e);
        }
    }
}

#[test]
fn the_adaptive_level_follows_the_bottleneck() {
    let mut r = compressing(CompressLevel::Adaptive, 40);
    let mut levels = Vec::new();
    let mut pending = Vec::new();
    // A slow link: jobs finish at once, the connection takes one message per round, so
    // compressed pieces wait for it.
    for _ in 0..16 {
        pending.extend(r.reads_only());
        for j in pending.drain(..) {
            levels.extend(j.compress_level());
            r.s.handle_job(r.now, j.run()).unwrap();
        }
        r.s.poll_transmit();
    }
    r.take_events();
    assert_eq!(levels.first(), Some(&1), "it starts at level 1: {levels:?}");
    assert_eq!(
        levels.last(),
        Some(&3),
        "pieces waiting raise it to 3: {levels:?}"
    );
    assert!(levels.windows(2).all(|w| w[0] <= w[1]), "{levels:?}");
    let moves: Vec<_> = r
        .events
        .iter()
        .filter_map(|e| match e {
            Event::CompressLevel { level } => Some(*level),
            _ => None,
        })
        .collect();
    assert_eq!(moves, [2, 3], "never above the reference's level 3");
    // A fast link: the connection takes everything and asks for more while jobs are
    // out; jobs finish one at a time.
    levels.clear();
    while r.s.poll_transmit().is_some() {}
    loop {
        pending.extend(r.reads_only());
        while r.s.poll_transmit().is_some() {}
        if pending.is_empty() {
            break;
        }
        let j = pending.remove(0);
        levels.extend(j.compress_level());
        r.s.handle_job(r.now, j.run()).unwrap();
    }
    r.take_events();
    assert_eq!(levels.first(), Some(&3), "{levels:?}");
    assert_eq!(
        levels.last(),
        Some(&1),
        "a waiting connection lowers it to 1: {levels:?}"
    );
    assert!(levels.windows(2).all(|w| w[0] >= w[1]), "{levels:?}");
    assert!(r.events.contains(&Event::CompressLevel { level: 1 }));
    assert!(r.events.contains(&Event::FileDone {
        path: "log".into(),
        size: (40 * MIB / 28 + 1) as u64 * 28,
    }));
}

#[test]
fn a_fixed_level_never_moves() {
    let mut r = compressing(CompressLevel::Fixed(7), 12);
    let mut levels = Vec::new();
    loop {
        while r.s.poll_transmit().is_some() {}
        let jobs = r.reads_only();
        if jobs.is_empty() {
            break;
        }
        for j in jobs {
            levels.extend(j.compress_level());
            r.s.handle_job(r.now, j.run()).unwrap();
        }
    }
    r.take_events();
    // The first pieces' jobs ran with the manifest.
    assert!(levels.len() >= 8, "{levels:?}");
    assert!(levels.iter().all(|&l| l == 7), "{levels:?}");
    assert!(r.events.contains(&Event::FileDone {
        path: "log".into(),
        size: (12 * MIB / 28 + 1) as u64 * 28,
    }));
    assert!(!r
        .events
        .iter()
        .any(|e| matches!(e, Event::CompressLevel { .. })));
}

/// A v1 sender of one uncompressed file of `len` bytes, its hello taken.
fn uncompressed_v1(len: usize) -> Rig {
    let config = SenderConfig {
        compress: CompressMode::Off,
        ..SenderConfig::default()
    };
    let mut r = Rig::new(config, &plain(), &[("a", bytes(len))]);
    r.hello();
    r
}

#[test]
fn v1_chains_large_pieces_on_a_job_and_refuses_a_result_twice() {
    let mut r = uncompressed_v1(2 * MIB + 10);
    r.s.handle_message(r.now, ready()).unwrap();
    // The copies are light; the chain steps of the two whole pieces are not.
    let mut jobs = r.reads_only();
    assert!(jobs.iter().all(|j| j.is_light()), "{jobs:?}");
    let first = jobs.remove(0).run();
    r.s.handle_job(r.now, first.clone()).unwrap();
    let link = r.s.poll_job().expect("a chain job for piece 0");
    assert!(!link.is_light());
    assert_eq!(link.compress_level(), None);
    // The piece's own result again, while its chain step is out: nobody asked for it.
    let err = r.s.handle_job(r.now, first).unwrap_err();
    assert_eq!(err.kind(), "misuse", "{err}");
}

#[test]
fn v1_chain_values_made_on_jobs_are_the_chain() {
    let mut r = uncompressed_v1(3 * MIB + 10);
    r.feed(ready()).unwrap();
    let mut prev: Option<[u8; 32]> = None;
    let mut seen = 0;
    for m in r.drain() {
        let WireMessage::Binary(b) = m else { continue };
        let d = DataMessage::decode(b).unwrap();
        let mut h = Sha256::new();
        if let Some(p) = prev {
            h.update(p);
        }
        h.update(&d.payload);
        let want: [u8; 32] = h.finalize().into();
        assert_eq!(d.chain, want, "piece {}", d.seq);
        prev = Some(want);
        seen += 1;
    }
    assert_eq!(seen, 4);
}
