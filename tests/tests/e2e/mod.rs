//! End-to-end scenarios over real sockets on 127.0.0.1 and real files, written once,
//! generic over the runtime; `e2e_smol.rs` and `e2e_async_std.rs` instantiate them with
//! [`e2e_suite!`].

use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use futures_lite::future;
use p2p_copy_core::wire::Compression;
use p2p_copy_core::Event;
use p2p_copy_tests::deadline::within;
use p2p_copy_tests::events::EventLog;
use p2p_copy_tests::scene::Scene;
use p2p_copy_tests::tls::TestPki;
use p2p_copy_tests::tree::{
    assert_same_tree, many_files, partial_path, random_bytes, standard_tree, write_tree, FileSpec,
    MIB,
};
use p2p_copy_tests::{
    ClientConfig, CompressMode, DirectMode, Order, Pair, PathTaken, Runtime, SendOptions,
    SessionEvent, TestRelay, TransferError,
};

/// Expand to one `#[test]` per scenario, run on the runtime type given.
macro_rules! e2e_suite {
    ($rt:ty) => {
        $crate::e2e::e2e_suite!(@each $rt;
            single_file_arrives_intact,
            tree_with_nested_unicode_names_and_chunk_boundaries,
            empty_file_alone,
            many_files_arrive,
            encrypted_tree_arrives_intact,
            every_compression_mode_arrives_intact,
            resume_appends_to_partial_file,
            resume_skips_complete_file,
            resume_rewrites_mismatching_files,
            existing_file_is_replaced_without_resume,
            receiver_first_then_sender,
            sender_first_then_receiver,
            duplicate_role_is_refused_on_both_sides,
            wrong_code_times_out_with_a_clear_error,
            mismatched_encrypt_times_out_with_a_clear_error,
            wss_with_a_generated_certificate,
            wss_without_trusting_the_ca_fails_to_connect,
            sender_dropped_mid_transfer_then_resumed,
            parallel_code_with_three_connections,
            missing_source_fails_before_pairing,
            direct_tree_arrives_over_quic,
            direct_encrypted_tree_arrives_over_quic,
            direct_path_cut_mid_transfer_finishes_over_the_relay,
            direct_encrypted_cut_finishes_over_the_relay,
            relay_only_on_one_side_keeps_everything_on_the_relay,
            direct_only_against_relay_only_fails_with_exit_9,
            parallel_code_goes_direct_per_session,
        );
    };
    (@each $rt:ty; $($name:ident),* $(,)?) => {
        $(
            #[test]
            fn $name() {
                $crate::e2e::$name::<$rt>()
            }
        )*
    };
}
pub(crate) use e2e_suite;

fn pair(relay: &TestRelay, code: &str, paths: Vec<PathBuf>, out: &Path) -> Pair {
    Pair::new(&relay.url(), code, paths, out.to_path_buf())
}

fn total_size(files: &[FileSpec]) -> u64 {
    files.iter().map(|f| f.content.bytes().len() as u64).sum()
}

pub fn single_file_arrives_intact<R: Runtime>() {
    let relay = TestRelay::start::<R>();
    let s = Scene::new();
    write_tree(&s.src, &[FileSpec::random("one.bin", 200_000, 1)]);
    let outcome = pair(&relay, "single", vec![s.src.join("one.bin")], &s.out).run::<R>();
    let (sent, received) = outcome.expect_ok();
    assert_same_tree(&s.src, &s.out);
    assert_eq!((sent.files, sent.bytes), (1, 200_000));
    assert_eq!((received.files, received.bytes), (1, 200_000));
}

pub fn tree_with_nested_unicode_names_and_chunk_boundaries<R: Runtime>() {
    let relay = TestRelay::start::<R>();
    let s = Scene::new();
    let files = standard_tree();
    write_tree(&s.src.join("tree"), &files);
    let outcome = pair(&relay, "tree", vec![s.src.join("tree")], &s.out).run::<R>();
    let (sent, received) = outcome.expect_ok();
    assert_same_tree(&s.src, &s.out);
    assert_eq!(received.files, files.len());
    assert_eq!(received.bytes, total_size(&files));
    assert_eq!(sent.bytes, total_size(&files));
}

pub fn empty_file_alone<R: Runtime>() {
    let relay = TestRelay::start::<R>();
    let s = Scene::new();
    write_tree(&s.src, &[FileSpec::random("nothing", 0, 0)]);
    let outcome = pair(&relay, "empty", vec![s.src.join("nothing")], &s.out).run::<R>();
    let (_, received) = outcome.expect_ok();
    assert_same_tree(&s.src, &s.out);
    assert_eq!((received.files, received.bytes), (1, 0));
}

pub fn many_files_arrive<R: Runtime>() {
    let relay = TestRelay::start::<R>();
    let s = Scene::new();
    let files = many_files(300);
    write_tree(&s.src.join("many"), &files);
    let outcome = pair(&relay, "many", vec![s.src.join("many")], &s.out).run::<R>();
    let (sent, received) = outcome.expect_ok();
    assert_same_tree(&s.src, &s.out);
    assert_eq!((sent.files, received.files), (300, 300));
}

pub fn encrypted_tree_arrives_intact<R: Runtime>() {
    let relay = TestRelay::start::<R>();
    let s = Scene::new();
    write_tree(&s.src.join("tree"), &standard_tree());
    let outcome = pair(&relay, "secret", vec![s.src.join("tree")], &s.out)
        .encrypt(true)
        .run::<R>();
    outcome.expect_ok();
    assert_same_tree(&s.src, &s.out);
}

/// Compression per file as each mode decides it, by path.
fn compression_of(events: &EventLog) -> Vec<(String, Compression)> {
    let mut v: Vec<_> = events
        .events()
        .into_iter()
        .filter_map(|e| match e {
            Event::FileStarted {
                path, compression, ..
            } => Some((path, compression)),
            _ => None,
        })
        .collect();
    v.sort_by(|a, b| a.0.cmp(&b.0));
    v
}

pub fn every_compression_mode_arrives_intact<R: Runtime>() {
    let relay = TestRelay::start::<R>();
    let cases = [
        (CompressMode::On, Compression::Zstd, Compression::Zstd),
        (CompressMode::Off, Compression::None, Compression::None),
        (CompressMode::Auto, Compression::None, Compression::Zstd),
    ];
    for (mode, for_random, for_text) in cases {
        let s = Scene::new();
        write_tree(
            &s.src.join("d"),
            &[
                FileSpec::random("random.bin", 2 * MIB + 3, 21),
                FileSpec::text("text.txt", 2 * MIB + 5, 22),
            ],
        );
        let mut p = pair(
            &relay,
            &format!("compress-{mode:?}"),
            vec![s.src.join("d")],
            &s.out,
        );
        p.opts.compress = mode;
        let outcome = p.run::<R>();
        outcome.expect_ok();
        assert_same_tree(&s.src, &s.out);
        let want = vec![
            ("d/random.bin".to_owned(), for_random),
            ("d/text.txt".to_owned(), for_text),
        ];
        assert_eq!(
            compression_of(&outcome.send_events),
            want,
            "sender, {mode:?}"
        );
        assert_eq!(
            compression_of(&outcome.receive_events),
            want,
            "receiver, {mode:?}"
        );
    }
}

pub fn resume_appends_to_partial_file<R: Runtime>() {
    let relay = TestRelay::start::<R>();
    let s = Scene::new();
    let size = 3 * MIB + 5;
    let prefix = MIB + 12_345;
    let data = random_bytes(size, 31);
    fs::write(s.src.join("big.bin"), &data).unwrap();
    fs::create_dir(&s.out).unwrap();
    fs::write(partial_path(&s.out, "big.bin"), &data[..prefix as usize]).unwrap();

    let outcome = pair(
        &relay,
        "resume-partial",
        vec![s.src.join("big.bin")],
        &s.out,
    )
    .resume(true)
    .run::<R>();
    let (sent, received) = outcome.expect_ok();
    assert_same_tree(&s.src, &s.out);
    assert_eq!(
        outcome.send_events.started(),
        [("big.bin".to_owned(), prefix)]
    );
    assert_eq!(sent.bytes, size - prefix);
    assert_eq!(received.bytes, size - prefix);
}

pub fn resume_skips_complete_file<R: Runtime>() {
    let relay = TestRelay::start::<R>();
    let s = Scene::new();
    let files = [
        FileSpec::random("d/have.bin", MIB + 1, 41),
        FileSpec::random("d/new.bin", 1_000, 42),
    ];
    write_tree(&s.src, &files);
    write_tree(&s.out, &files[..1]);

    let outcome = pair(&relay, "resume-complete", vec![s.src.join("d")], &s.out)
        .resume(true)
        .run::<R>();
    let (sent, received) = outcome.expect_ok();
    assert_same_tree(&s.src, &s.out);
    assert_eq!(outcome.send_events.skipped(), ["d/have.bin"]);
    assert_eq!(outcome.send_events.started(), [("d/new.bin".to_owned(), 0)]);
    assert_eq!((sent.skipped, sent.bytes), (1, 1_000));
    assert_eq!((received.skipped, received.bytes), (1, 1_000));
}

pub fn resume_rewrites_mismatching_files<R: Runtime>() {
    let relay = TestRelay::start::<R>();
    let s = Scene::new();
    let files = [
        FileSpec::random("d/changed.bin", MIB + 7, 51),
        FileSpec::random("d/bad-partial.bin", 2 * MIB, 52),
    ];
    write_tree(&s.src, &files);
    // A complete-looking file with other bytes, and a partial file that is not a prefix.
    write_tree(&s.out, &[FileSpec::random("d/changed.bin", MIB + 7, 99)]);
    fs::write(
        partial_path(&s.out, "d/bad-partial.bin"),
        random_bytes(MIB / 2, 98),
    )
    .unwrap();

    let outcome = pair(&relay, "resume-mismatch", vec![s.src.join("d")], &s.out)
        .resume(true)
        .run::<R>();
    let (sent, _) = outcome.expect_ok();
    assert_same_tree(&s.src, &s.out);
    let mut started = outcome.send_events.started();
    started.sort();
    assert_eq!(
        started,
        [
            ("d/bad-partial.bin".to_owned(), 0),
            ("d/changed.bin".to_owned(), 0)
        ]
    );
    assert_eq!(sent.bytes, 3 * MIB + 7);
}

pub fn existing_file_is_replaced_without_resume<R: Runtime>() {
    let relay = TestRelay::start::<R>();
    let s = Scene::new();
    write_tree(&s.src, &[FileSpec::random("f.bin", 10_000, 61)]);
    write_tree(&s.out, &[FileSpec::random("f.bin", 20_000, 62)]);
    let outcome = pair(&relay, "replace", vec![s.src.join("f.bin")], &s.out).run::<R>();
    outcome.expect_ok();
    assert_same_tree(&s.src, &s.out);
}

fn ordered<R: Runtime>(order: Order, code: &str) {
    let relay = TestRelay::start::<R>();
    let s = Scene::new();
    write_tree(&s.src.join("t"), &standard_tree()[..4]);
    let outcome = pair(&relay, code, vec![s.src.join("t")], &s.out)
        .order(order)
        .run::<R>();
    outcome.expect_ok();
    assert_same_tree(&s.src, &s.out);
    assert!(
        outcome.send_events.events().contains(&Event::Paired),
        "the sender reports pairing"
    );
}

pub fn receiver_first_then_sender<R: Runtime>() {
    ordered::<R>(Order::ReceiverFirst, "receiver-first");
}

pub fn sender_first_then_receiver<R: Runtime>() {
    ordered::<R>(Order::SenderFirst, "sender-first");
}

/// A client config for `relay` and `code` that gives up pairing after `pair_timeout`.
fn client(relay: &TestRelay, code: &str, pair_timeout: Duration) -> ClientConfig {
    let mut cfg = ClientConfig::new(relay.url(), code);
    cfg.pair_timeout = pair_timeout;
    cfg.idle_timeout = Duration::from_secs(10);
    cfg
}

pub fn duplicate_role_is_refused_on_both_sides<R: Runtime>() {
    let relay = TestRelay::start::<R>();
    let s = Scene::new();
    write_tree(&s.src, &[FileSpec::random("f", 10, 1)]);
    let send = |delay: Duration| {
        let cfg = client(&relay, "duplicate", Duration::from_secs(20));
        let paths = vec![s.src.join("f")];
        async move {
            p2p_copy_tests::deadline::sleep(delay).await;
            R::send(cfg, paths, SendOptions::default(), |_| {}).await
        }
    };
    let started = Instant::now();
    let (first, second) = R::block_on(within(
        Duration::from_secs(15),
        "two senders with one code",
        future::zip(send(Duration::ZERO), send(Duration::from_millis(300))),
    ));
    // The relay closes both at once; neither waits for its pairing timeout.
    assert!(started.elapsed() < Duration::from_secs(10));
    for (who, result) in [("first", first), ("second", second)] {
        let err = result.expect_err(who);
        let msg = err.to_string();
        assert!(
            msg.to_lowercase().contains("duplicate"),
            "{who} sender: {msg}"
        );
        assert_eq!(err.exit_code(), 2, "{who} sender: {msg}");
    }
}

/// Both sides must fail with a timeout (exit code 3) whose message points at the code and
/// `--encrypt`.
fn assert_pairing_timeout(outcome: &p2p_copy_tests::PairOutcome) {
    let (s, r) = outcome.expect_both_failed();
    for (who, err) in [("sender", s), ("receiver", r)] {
        let msg = err.to_string();
        assert_eq!(err.exit_code(), 3, "{who}: {msg}");
        assert!(
            msg.contains("code") && msg.contains("--encrypt"),
            "{who}'s message should point at the code and --encrypt: {msg}"
        );
    }
}

pub fn wrong_code_times_out_with_a_clear_error<R: Runtime>() {
    let relay = TestRelay::start::<R>();
    let s = Scene::new();
    write_tree(&s.src, &[FileSpec::random("f", 10, 1)]);
    let mut p = pair(&relay, "right code", vec![s.src.join("f")], &s.out)
        .pair_timeout(Duration::from_secs(2));
    p.recv_cfg.code = "wrong code".to_owned();
    let started = Instant::now();
    let outcome = p.run::<R>();
    assert_pairing_timeout(&outcome);
    assert!(started.elapsed() >= Duration::from_secs(2));
    assert!(!s.out.join("f").exists());
}

pub fn mismatched_encrypt_times_out_with_a_clear_error<R: Runtime>() {
    let relay = TestRelay::start::<R>();
    let s = Scene::new();
    write_tree(&s.src, &[FileSpec::random("f", 10, 1)]);
    let mut p = pair(&relay, "same code", vec![s.src.join("f")], &s.out)
        .pair_timeout(Duration::from_secs(2));
    p.send_cfg.encrypt = true;
    let outcome = p.run::<R>();
    assert_pairing_timeout(&outcome);
    assert!(!s.out.join("f").exists());
}

pub fn wss_with_a_generated_certificate<R: Runtime>() {
    let s = Scene::new();
    let pki = TestPki::generate(s.dir.path());
    let relay = TestRelay::start_tls::<R>(&pki.cert_file, &pki.key_file);
    assert!(relay.url().starts_with("wss://127.0.0.1:"));
    write_tree(&s.src.join("t"), &standard_tree()[..5]);
    let outcome = pair(&relay, "tls", vec![s.src.join("t")], &s.out)
        .ca_file(pki.ca_file.clone())
        .run::<R>();
    outcome.expect_ok();
    assert_same_tree(&s.src, &s.out);
}

pub fn wss_without_trusting_the_ca_fails_to_connect<R: Runtime>() {
    let s = Scene::new();
    let pki = TestPki::generate(s.dir.path());
    let relay = TestRelay::start_tls::<R>(&pki.cert_file, &pki.key_file);
    write_tree(&s.src, &[FileSpec::random("f", 10, 1)]);
    let cfg = client(&relay, "untrusted", Duration::from_secs(20));
    let result = R::block_on(within(
        Duration::from_secs(10),
        "send to an untrusted relay",
        R::send(cfg, vec![s.src.join("f")], SendOptions::default(), |_| {}),
    ));
    let err = result.expect_err("a relay certificate from an unknown CA must be refused");
    assert!(matches!(err, TransferError::Connect(_)), "{err:?}");
    assert_eq!(err.exit_code(), 2);
}

pub fn sender_dropped_mid_transfer_then_resumed<R: Runtime>() {
    let relay = TestRelay::start::<R>();
    let s = Scene::new();
    let size = 24 * MIB + 77;
    fs::write(s.src.join("big.bin"), random_bytes(size, 71)).unwrap();

    // The sender says when it has sent a few MiB; its future is then dropped, which is
    // how a caller cancels a transfer. (Counting on the sender's side: by the time the
    // receiver has seen a few MiB, socket and relay buffers may already hold the rest.)
    let (stop_tx, stop_rx) = async_channel::bounded::<()>(1);
    let received = EventLog::new();
    let on_receive = received.recorder();
    let on_send = move |ev: SessionEvent| {
        if let Event::Progress { file_bytes, .. } = ev.event {
            if file_bytes >= 4 * MIB {
                let _ = stop_tx.try_send(());
            }
        }
    };
    let mut recv_cfg = client(&relay, "interrupted", Duration::from_secs(20));
    recv_cfg.idle_timeout = Duration::from_secs(5);
    let mut send_cfg = client(&relay, "interrupted", Duration::from_secs(20));
    // On the relay from the first byte: the sender is dropped once it has queued a few
    // MiB, which must then be on their way (a sender that waits briefly for a direct
    // path would still hold them).
    send_cfg.direct.mode = DirectMode::RelayOnly;
    let sender = future::or(
        async {
            let r = R::send(
                send_cfg,
                vec![s.src.join("big.bin")],
                SendOptions::default(),
                on_send,
            )
            .await;
            Some(r)
        },
        async {
            let _ = stop_rx.recv().await;
            None
        },
    );
    let receiver = R::receive(recv_cfg, s.out.clone(), on_receive);
    let (sent, got) = R::block_on(within(
        Duration::from_secs(60),
        "interrupted transfer",
        future::zip(sender, receiver),
    ));
    assert!(
        sent.is_none(),
        "the send finished before it was dropped: {sent:?}"
    );
    let err = got.expect_err("the receiver must fail when the sender vanishes");
    assert!(err.exit_code() != 0);

    let partial = partial_path(&s.out, "big.bin");
    let kept = fs::metadata(&partial)
        .unwrap_or_else(|e| panic!("partial file {} kept: {e}", partial.display()))
        .len();
    assert!(kept > 0 && kept < size, "partial file has {kept} bytes");
    assert!(!s.out.join("big.bin").exists());

    let outcome = pair(&relay, "interrupted", vec![s.src.join("big.bin")], &s.out)
        .resume(true)
        .run::<R>();
    let (sent, _) = outcome.expect_ok();
    assert_same_tree(&s.src, &s.out);
    let started = outcome.send_events.started();
    assert_eq!(started.len(), 1);
    let append_from = started[0].1;
    assert!(append_from > 0, "the resumed run appends: {started:?}");
    assert_eq!(sent.bytes, size - append_from);
}

pub fn parallel_code_with_three_connections<R: Runtime>() {
    let relay = TestRelay::start::<R>();
    let s = Scene::new();
    let mut files = standard_tree();
    files.extend(many_files(20));
    write_tree(&s.src.join("p"), &files);
    let outcome = pair(&relay, "n=3=nparallel", vec![s.src.join("p")], &s.out).run::<R>();
    let (sent, received) = outcome.expect_ok();
    assert_same_tree(&s.src, &s.out);
    assert_eq!((sent.files, received.files), (files.len(), files.len()));
    let mut sessions: Vec<usize> = outcome
        .receive_events
        .all()
        .into_iter()
        .map(|e| e.session)
        .collect();
    sessions.sort();
    sessions.dedup();
    assert_eq!(sessions, [0, 1, 2]);
}

pub fn missing_source_fails_before_pairing<R: Runtime>() {
    let relay = TestRelay::start::<R>();
    let s = Scene::new();
    let cfg = client(&relay, "missing", Duration::from_secs(20));
    let result = R::block_on(within(
        Duration::from_secs(10),
        "send of a missing path",
        R::send(
            cfg,
            vec![s.src.join("does-not-exist")],
            SendOptions::default(),
            |_| {},
        ),
    ));
    let err = result.expect_err("a missing source is an error");
    assert!(matches!(err, TransferError::Source(_)), "{err:?}");
    assert_eq!(err.exit_code(), 6);
    assert!(err.to_string().contains("does-not-exist"), "{err}");
}

/// A pair on 127.0.0.1 that may use loopback candidates (two peers on one machine).
fn direct_pair(relay: &TestRelay, code: &str, paths: Vec<PathBuf>, out: &Path) -> Pair {
    let mut p = pair(relay, code, paths, out);
    p.send_cfg.direct.allow_loopback = true;
    p.recv_cfg.direct.allow_loopback = true;
    p
}

/// Direct over one of this machine's own addresses (loopback, or an interface's).
fn assert_direct(path: &PathTaken) {
    assert!(
        matches!(path, PathTaken::Direct { punched: false, .. }),
        "expected a direct path between two of this machine's addresses, got {path:?}"
    );
}

/// A tree of several MiB: enough messages that the receiver acknowledges on the way.
fn direct_files() -> Vec<FileSpec> {
    let mut files = standard_tree();
    files.push(FileSpec::random("big/a.bin", 6 * MIB + 17, 7));
    files.push(FileSpec::random("big/b.bin", 3 * MIB, 8));
    files
}

fn direct_transfer<R: Runtime>(code: &str, encrypt: bool, cut_after: Option<u64>) {
    let relay = TestRelay::start::<R>();
    let s = Scene::new();
    let files = direct_files();
    write_tree(&s.src.join("tree"), &files);
    let mut p = direct_pair(&relay, code, vec![s.src.join("tree")], &s.out).encrypt(encrypt);
    p.send_cfg.direct.cut_after = cut_after;
    p.send_cfg.direct.hold_until_decided = true;
    let outcome = p.run::<R>();
    let (sent, received) = outcome.expect_ok();
    assert_same_tree(&s.src, &s.out);
    assert_eq!(received.bytes, total_size(&files));
    assert_eq!(sent.confirmed, 1, "the receiver confirmed delivery");
    match cut_after {
        None => {
            assert_direct(&sent.path);
            assert_direct(&received.path);
        }
        Some(_) => {
            for path in [&sent.path, &received.path] {
                assert!(
                    matches!(path, PathTaken::DirectThenRelay { .. }),
                    "expected direct, then relay: {path:?}"
                );
            }
            // No file started over: each was sent once.
            let starts = outcome
                .send_events
                .events()
                .iter()
                .filter(|e| matches!(e, Event::FileStarted { .. }))
                .count();
            assert_eq!(starts, files.len());
        }
    }
}

pub fn direct_tree_arrives_over_quic<R: Runtime>() {
    direct_transfer::<R>("direct plain", false, None);
}

pub fn direct_encrypted_tree_arrives_over_quic<R: Runtime>() {
    direct_transfer::<R>("direct sealed", true, None);
}

pub fn direct_path_cut_mid_transfer_finishes_over_the_relay<R: Runtime>() {
    // Past the first acknowledgement, in the middle of the big file.
    direct_transfer::<R>("direct cut", false, Some(30));
}

pub fn direct_encrypted_cut_finishes_over_the_relay<R: Runtime>() {
    direct_transfer::<R>("direct cut sealed", true, Some(5));
}

pub fn relay_only_on_one_side_keeps_everything_on_the_relay<R: Runtime>() {
    let relay = TestRelay::start::<R>();
    let s = Scene::new();
    write_tree(&s.src.join("tree"), &standard_tree());
    let mut p = direct_pair(&relay, "relay only", vec![s.src.join("tree")], &s.out);
    p.recv_cfg.direct.mode = DirectMode::RelayOnly;
    let outcome = p.run::<R>();
    let (sent, received) = outcome.expect_ok();
    assert_same_tree(&s.src, &s.out);
    assert!(
        matches!(&sent.path, PathTaken::RelayBecause(why) if why.contains("does not take")),
        "{:?}",
        sent.path
    );
    assert_eq!(received.path, PathTaken::Relay);
}

pub fn direct_only_against_relay_only_fails_with_exit_9<R: Runtime>() {
    let relay = TestRelay::start::<R>();
    let s = Scene::new();
    write_tree(&s.src.join("tree"), &standard_tree());
    let mut p = direct_pair(&relay, "direct only", vec![s.src.join("tree")], &s.out);
    p.send_cfg.direct.mode = DirectMode::DirectOnly;
    p.recv_cfg.direct.mode = DirectMode::RelayOnly;
    let outcome = p.run::<R>();
    let err = outcome
        .send
        .as_ref()
        .expect_err("the sender must not fall back");
    assert_eq!(err.exit_code(), 9, "{err}");
    assert!(err.to_string().contains("no direct path"), "{err}");
    // Nothing was sent through the relay: no file reached the receiver.
    assert!(
        !s.out.join("tree").exists() || fs::read_dir(s.out.join("tree")).unwrap().next().is_none()
    );
}

pub fn parallel_code_goes_direct_per_session<R: Runtime>() {
    let relay = TestRelay::start::<R>();
    let s = Scene::new();
    let files = direct_files();
    write_tree(&s.src.join("tree"), &files);
    let mut p = direct_pair(&relay, "n=3=n direct", vec![s.src.join("tree")], &s.out);
    p.send_cfg.direct.mode = DirectMode::DirectOnly;
    let outcome = p.run::<R>();
    let (sent, received) = outcome.expect_ok();
    assert_same_tree(&s.src, &s.out);
    assert_direct(&sent.path);
    assert_direct(&received.path);
    let direct_sessions = outcome
        .send_events
        .all()
        .iter()
        .filter(|e| {
            matches!(
                e.event,
                Event::Path(p2p_copy_core::PathEvent::Direct { .. })
            )
        })
        .count();
    assert_eq!(
        direct_sessions, 3,
        "each session of the parallel code goes direct"
    );
}
