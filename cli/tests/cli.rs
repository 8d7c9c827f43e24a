//! The `p2p-copy` binary as users run it: a relay, a sender and a receiver as separate
//! processes on 127.0.0.1, checked by exit code, message and the received bytes.

use std::fs;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use p2p_copy_tests::deadline::wait_for;
use p2p_copy_tests::process::{start_cli_relay, ChildGuard, Finished};
use p2p_copy_tests::scene::Scene;
use p2p_copy_tests::tls::TestPki;
use p2p_copy_tests::tree::{
    assert_same_tree, partial_path, random_bytes, standard_tree, write_tree, FileSpec, MIB,
};

const BIN: &str = env!("CARGO_BIN_EXE_p2p-copy");
/// Longest any single command of these tests may take.
const LIMIT: Duration = Duration::from_secs(60);

fn p2p_copy(args: &[&str]) -> Command {
    let mut cmd = Command::new(BIN);
    cmd.args(args);
    cmd
}

fn spawn(args: &[&str]) -> ChildGuard {
    ChildGuard::spawn(&mut p2p_copy(args))
}

fn run(args: &[&str]) -> Finished {
    spawn(args).wait(LIMIT)
}

fn plain_relay() -> (ChildGuard, String) {
    start_cli_relay(Path::new(BIN), &["--no-tls"])
}

fn arg(p: &Path) -> &str {
    p.to_str().expect("temp paths are UTF-8")
}

/// Run a receiver and a sender with these extra arguments each; both must exit 0.
fn transfer(
    url: &str,
    code: &str,
    s: &Scene,
    send_extra: &[&str],
    recv_extra: &[&str],
) -> (Finished, Finished) {
    let mut recv_args = vec!["receive", url, code, "--out", arg(&s.out)];
    recv_args.extend_from_slice(recv_extra);
    let receiver = spawn(&recv_args);
    let mut send_args = vec!["send", url, code];
    send_args.push(arg(&s.src));
    send_args.extend_from_slice(send_extra);
    let sender = run(&send_args);
    let received = receiver.wait(LIMIT);
    assert_eq!(sender.code(), 0, "sender: {sender:?}");
    assert_eq!(received.code(), 0, "receiver: {received:?}");
    (sender, received)
}

#[test]
fn help_lists_the_commands_and_exits_0() {
    let out = run(&["--help"]);
    assert_eq!(out.code(), 0);
    for cmd in ["send", "receive", "run-relay-server", "Exit codes"] {
        assert!(
            out.stdout.contains(cmd),
            "--help lacks {cmd}: {}",
            out.stdout
        );
    }
    let out = run(&["send", "--help"]);
    for opt in [
        "--encrypt",
        "--no-encrypt",
        "--compress",
        "--resume",
        "--ca-file",
        "--timeout",
    ] {
        assert!(out.stdout.contains(opt), "send --help lacks {opt}");
    }
}

#[test]
fn usage_errors_exit_1() {
    for args in [
        &["send", "ws://127.0.0.1:1", "code"][..],
        &[
            "send",
            "ws://127.0.0.1:1",
            "code",
            "f",
            "--compress",
            "maybe",
        ],
        &["receive", "ws://127.0.0.1:1"],
        &["frobnicate"],
    ] {
        let out = run(args);
        assert_eq!(out.code(), 1, "{args:?}: {out:?}");
        assert!(out.stderr.contains("error"), "{args:?}: {}", out.stderr);
    }
}

#[test]
fn relay_with_tls_but_no_certificate_exits_1_and_suggests_no_tls() {
    let out = run(&["run-relay-server", "127.0.0.1", "0"]);
    assert_eq!(out.code(), 1, "{out:?}");
    assert!(out.stderr.contains("--no-tls"), "{}", out.stderr);
    assert_eq!(out.stderr.lines().count(), 1, "one line: {}", out.stderr);
}

#[test]
fn tree_moves_through_the_cli_relay_with_plain_progress_lines() {
    let (_relay, url) = plain_relay();
    let s = Scene::new();
    write_tree(&s.src, &standard_tree());
    let (sent, received) = transfer(&url, "cli-tree", &s, &[], &[]);
    assert_same_tree(&s.src, &s.out.join("src"));
    // stderr is a pipe here, so progress comes as plain lines.
    assert!(
        sent.stderr.contains("waiting for the receiver"),
        "{}",
        sent.stderr
    );
    assert!(
        sent.stderr.contains("paired with the receiver"),
        "{}",
        sent.stderr
    );
    let n = standard_tree().len();
    assert!(
        sent.stderr.contains(&format!("sent {n} files")),
        "{}",
        sent.stderr
    );
    assert!(
        received.stderr.contains(&format!("received {n} files")),
        "{}",
        received.stderr
    );
}

#[test]
fn quiet_prints_nothing_and_options_of_the_python_tool_work() {
    let (_relay, url) = plain_relay();
    let s = Scene::new();
    write_tree(&s.src, &standard_tree()[..6]);
    let (sent, received) = transfer(
        &url,
        "cli-quiet",
        &s,
        &["-q", "--encrypt", "--compress", "on", "--resume"],
        &["--quiet", "--encrypt"],
    );
    assert_same_tree(&s.src, &s.out.join("src"));
    assert_eq!(sent.stderr, "");
    assert_eq!(received.stderr, "");
}

#[test]
fn verbose_names_every_file_escaped() {
    let (_relay, url) = plain_relay();
    let s = Scene::new();
    write_tree(
        &s.src,
        &[
            FileSpec::random("evil\u{1b}[31m.txt", 10, 1),
            FileSpec::random("ok.txt", 5, 2),
        ],
    );
    let (_, received) = transfer(&url, "cli-verbose", &s, &[], &["--verbose"]);
    assert_same_tree(&s.src, &s.out.join("src"));
    assert!(
        received.stderr.contains("src/evil\\u{1b}[31m.txt"),
        "{}",
        received.stderr
    );
    assert!(
        received.stderr.contains("src/ok.txt"),
        "{}",
        received.stderr
    );
    assert!(!received.stderr.contains('\u{1b}'), "raw escape printed");
}

#[test]
fn every_compression_level_gives_the_same_files() {
    let (_relay, url) = plain_relay();
    for (i, level) in [None, Some("1"), Some("9"), Some("19")]
        .into_iter()
        .enumerate()
    {
        let s = Scene::new();
        write_tree(
            &s.src,
            &[
                FileSpec::text("log.txt", 3 * 1024 * 1024 + 17, 1),
                FileSpec::random("noise", 70_000, 2),
            ],
        );
        let mut extra = vec!["--compress", "on", "--verbose"];
        extra.extend(level.iter().flat_map(|l| ["--compress-level", l]));
        let code = format!("cli-level-{i}");
        let (sent, _) = transfer(&url, &code, &s, &extra, &[]);
        assert_same_tree(&s.src, &s.out.join("src"));
        // A fixed level never moves, so -v never says it did.
        if level.is_some() {
            assert!(
                !sent.stderr.contains("compressing at zstd level"),
                "{}",
                sent.stderr
            );
        }
    }
}

#[test]
fn wss_relay_with_a_generated_certificate_and_ca_file() {
    let s = Scene::new();
    let pki = TestPki::generate(s.dir.path());
    let (_relay, url) = start_cli_relay(
        Path::new(BIN),
        &[
            "--certfile",
            arg(&pki.cert_file),
            "--keyfile",
            arg(&pki.key_file),
        ],
    );
    assert!(url.starts_with("wss://127.0.0.1:"), "{url}");
    write_tree(&s.src, &standard_tree()[..4]);
    let ca = arg(&pki.ca_file);
    transfer(&url, "cli-tls", &s, &["--ca-file", ca], &["--ca-file", ca]);
    assert_same_tree(&s.src, &s.out.join("src"));
}

#[test]
fn wrong_code_exits_3_and_says_why() {
    let (_relay, url) = plain_relay();
    let s = Scene::new();
    write_tree(&s.src, &[FileSpec::random("f", 10, 1)]);
    let out = arg(&s.out);
    let receiver = spawn(&["receive", &url, "one code", "--out", out, "--timeout", "2"]);
    let sender = run(&["send", &url, "another code", arg(&s.src), "--timeout", "2"]);
    let receiver = receiver.wait(LIMIT);
    for (who, r) in [("sender", &sender), ("receiver", &receiver)] {
        assert_eq!(r.code(), 3, "{who}: {r:?}");
        let last = r.stderr.lines().last().unwrap_or_default();
        assert!(last.starts_with("error: "), "{who}: {}", r.stderr);
        assert!(
            last.contains("code") && last.contains("--encrypt"),
            "{who}: {last}"
        );
    }
}

#[test]
fn unreachable_relay_exits_2() {
    // A port that was free a moment ago: nothing listens there.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let s = Scene::new();
    write_tree(&s.src, &[FileSpec::random("f", 10, 1)]);
    let url = format!("ws://127.0.0.1:{port}");
    let out = run(&["send", &url, "code", arg(&s.src)]);
    assert_eq!(out.code(), 2, "{out:?}");
    assert!(out.stderr.contains("error: "), "{}", out.stderr);
}

#[test]
fn missing_source_exits_6_naming_it() {
    let (_relay, url) = plain_relay();
    let s = Scene::new();
    let missing = s.src.join("not-here");
    let out = run(&["send", &url, "code", arg(&missing)]);
    assert_eq!(out.code(), 6, "{out:?}");
    assert!(out.stderr.contains("not-here"), "{}", out.stderr);
}

#[test]
fn relay_stops_on_sigterm_with_exit_0() {
    let (relay, _url) = plain_relay();
    relay.signal("TERM");
    let out = relay.wait(Duration::from_secs(10));
    assert_eq!(out.code(), 0, "{out:?}");
}

/// A file big enough that a transfer over loopback is still running when the test
/// interrupts it.
const BIG: u64 = 160 * MIB + 3;

/// Start a transfer of one big file, wait until the receiver's partial file holds at
/// least 8 MiB, and return both processes.
fn start_big_transfer(url: &str, code: &str, s: &Scene) -> (ChildGuard, ChildGuard) {
    fs::write(s.src.join("big.bin"), random_bytes(BIG, 5)).unwrap();
    // These tests are about continuing by hand with --resume: the receiver must not
    // wait for its sender to come back (reconnecting is tested in reconnect.rs).
    let receiver = spawn(&[
        "receive",
        url,
        code,
        "--out",
        arg(&s.out),
        "--max-retries",
        "0",
    ]);
    let sender = spawn(&["send", url, code, arg(&s.src.join("big.bin"))]);
    let partial = partial_path(&s.out, "big.bin");
    wait_for(Duration::from_secs(30), "partial file grows", || {
        let len = fs::metadata(&partial).map(|m| m.len()).unwrap_or(0);
        (len >= 8 * MIB).then_some(())
    });
    (sender, receiver)
}

/// Resume the transfer and check the result is byte-identical and really resumed.
fn resume_big_transfer(url: &str, code: &str, s: &Scene, send_extra: &[&str]) {
    let partial = partial_path(&s.out, "big.bin");
    let kept = fs::metadata(&partial)
        .unwrap_or_else(|e| panic!("partial file kept: {e}"))
        .len();
    assert!(kept > 0 && kept < BIG, "partial file holds {kept} bytes");
    assert!(!s.out.join("big.bin").exists());

    let receiver = spawn(&["receive", url, code, "--out", arg(&s.out), "--verbose"]);
    let big = s.src.join("big.bin");
    let mut send_args = vec!["send", url, code, arg(&big), "--resume"];
    send_args.extend_from_slice(send_extra);
    let sender = run(&send_args);
    let receiver = receiver.wait(LIMIT);
    assert_eq!(sender.code(), 0, "{sender:?}");
    assert_eq!(receiver.code(), 0, "{receiver:?}");
    assert!(
        receiver.stderr.contains("resuming at"),
        "the receiver appends to its partial file: {}",
        receiver.stderr
    );
    assert_same_tree(&s.src, &s.out);
}

#[test]
fn killed_sender_then_resume_is_byte_identical() {
    let (_relay, url) = plain_relay();
    let s = Scene::new();
    let (mut sender, receiver) = start_big_transfer(&url, "cli-kill", &s);
    sender.kill();
    let receiver = receiver.wait(LIMIT);
    assert_ne!(
        receiver.code(),
        0,
        "the receiver fails when the sender vanishes"
    );
    resume_big_transfer(&url, "cli-kill", &s, &[]);
}

/// A partial file written on the fast data path is completed on v1's
/// (`--v1-data-path`): partial files do not depend on the path that wrote them.
#[test]
fn a_partial_file_from_the_fast_path_resumes_on_the_v1_data_path() {
    let (_relay, url) = plain_relay();
    let s = Scene::new();
    let (mut sender, receiver) = start_big_transfer(&url, "cli-fast-v1", &s);
    sender.kill();
    let receiver = receiver.wait(LIMIT);
    assert_ne!(receiver.code(), 0, "{receiver:?}");
    resume_big_transfer(&url, "cli-fast-v1", &s, &["--v1-data-path"]);
}

/// `--v1-data-path` on either side keeps the transfer on v1's chain and cipher, and the
/// bytes are the same, plain and encrypted.
#[test]
fn v1_data_path_on_either_side_gives_the_same_bytes() {
    let (_relay, url) = plain_relay();
    let cases: [(&[&str], &[&str]); 4] = [
        (&["--v1-data-path"], &[]),
        (&[], &["--v1-data-path"]),
        (&["--encrypt", "--v1-data-path"], &["--encrypt"]),
        (
            &["--encrypt", "--compress", "on"],
            &["--encrypt", "--v1-data-path"],
        ),
    ];
    for (i, (send_extra, recv_extra)) in cases.iter().enumerate() {
        let s = Scene::new();
        write_tree(&s.src, &standard_tree()[..6]);
        transfer(
            &url,
            &format!("cli-v1-path-{i}"),
            &s,
            send_extra,
            recv_extra,
        );
        assert_same_tree(&s.src, &s.out.join("src"));
    }
}

#[test]
fn ctrl_c_on_the_receiver_exits_130_and_keeps_the_partial_file() {
    let (_relay, url) = plain_relay();
    let s = Scene::new();
    let (sender, receiver) = start_big_transfer(&url, "cli-int", &s);
    receiver.signal("INT");
    let receiver = receiver.wait(LIMIT);
    assert_eq!(receiver.code(), 130, "{receiver:?}");
    assert!(
        receiver.stderr.contains("--resume"),
        "says how to continue: {}",
        receiver.stderr
    );
    let sender = sender.wait(LIMIT);
    assert_ne!(
        sender.code(),
        0,
        "the sender fails when the receiver vanishes"
    );
    resume_big_transfer(&url, "cli-int", &s, &[]);
}

#[test]
fn usage_mistakes_exit_1_before_connecting() {
    // A listener nobody accepts on: a client that connected would leave a queued
    // connection behind.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let ws = format!("ws://{}", listener.local_addr().unwrap());
    let http = ws.replacen("ws://", "http://", 1);
    let https = ws.replacen("ws://", "https://", 1);
    let s = Scene::new();
    write_tree(&s.src, &[FileSpec::random("f", 10, 1)]);
    let a_file = s.src.join("f");
    let missing = s.dir.path().join("no-such-ca.pem");
    let under_a_file = a_file.join("sub");
    let (src, out) = (arg(&s.src), arg(&s.out));
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (vec!["send", &http, "code", src], "use ws:// or wss://"),
        (
            vec!["receive", &https, "code", "--out", out],
            "use ws:// or wss://",
        ),
        (
            vec!["send", &ws, "code", src, "--ca-file", arg(&missing)],
            "--ca-file",
        ),
        (
            vec!["receive", &ws, "code", "--out", out, "--ca-file", src],
            "not a file",
        ),
        (
            vec!["receive", &ws, "code", "--timeout", "0"],
            "at least 1 second",
        ),
        (
            vec!["send", &ws, "code", src, "--idle-timeout", "0"],
            "at least 1 second",
        ),
        (
            vec!["send", &ws, "code", src, "--compress-level", "0"],
            "--compress-level",
        ),
        (
            vec!["send", &ws, "code", src, "--compress-level", "20"],
            "--compress-level",
        ),
        (vec!["send", &ws, "", src], "code is empty"),
        (vec!["receive", &ws, "", "--out", out], "code is empty"),
        (
            vec!["receive", &ws, "code", "--out", arg(&a_file)],
            "not a directory",
        ),
        (
            vec!["receive", &ws, "code", "--out", arg(&under_a_file)],
            "cannot create it",
        ),
        (vec!["send", src], "no relay given"),
        (vec!["send", "--code", "c", src], "no relay given"),
        (
            vec!["send", "relay.example:443", "code", src],
            "not a relay URL",
        ),
        (
            vec!["receive", "relay.example:443", "code"],
            "not a relay URL",
        ),
        (vec!["send", &ws, "code"], "no files given"),
        (vec!["receive", &ws, "--out", out], "no code given"),
        (
            vec!["send", "--relay", &ws, "--code", "7-acid-acid", src],
            "appears twice",
        ),
        (
            vec!["send", "--relay", &ws, "--code", "7-rocket", src],
            "at least 2 words",
        ),
        (
            vec!["send", "--relay", &ws, "--code-words", "1", src],
            "--code-words",
        ),
        (
            vec!["send", "--relay", &http, "--code", "c", src],
            "use ws://",
        ),
    ];
    for (args, says) in cases {
        let r = ChildGuard::spawn(p2p_copy(&args).env_remove("P2P_COPY_RELAY")).wait(LIMIT);
        assert_eq!(r.code(), 1, "{args:?}: {r:?}");
        assert!(
            r.stderr
                .lines()
                .any(|l| l.starts_with("error: ") && l.contains(says)),
            "{args:?}: {}",
            r.stderr
        );
        assert!(
            listener.accept().is_err(),
            "{args:?} connected before refusing"
        );
    }
}

#[test]
fn the_relay_and_code_may_come_from_the_environment_and_options() {
    let (_relay, url) = plain_relay();
    let s = Scene::new();
    write_tree(&s.src, &[FileSpec::random("d/f", 100_000, 3)]);
    let receiver = ChildGuard::spawn(
        p2p_copy(&["receive", "--code", "env-code", "--out", arg(&s.out)])
            .env("P2P_COPY_RELAY", &url),
    );
    let sender = ChildGuard::spawn(
        p2p_copy(&["send", "--relay", &url, "--code", "env-code", arg(&s.src)])
            .env("P2P_COPY_RELAY", "ws://127.0.0.1:9"),
    )
    .wait(LIMIT);
    let received = receiver.wait(LIMIT);
    assert_eq!(sender.code(), 0, "sender: {sender:?}");
    assert_eq!(received.code(), 0, "receiver: {received:?}");
    assert_same_tree(&s.src, &s.out.join("src"));
}

#[test]
fn completions_and_the_man_page_come_from_the_command_line() {
    for (shell, marks) in [
        ("bash", &["_p2p__copy()", "complete -F _p2p__copy"][..]),
        ("zsh", &["#compdef p2p-copy"][..]),
        ("fish", &["complete -c p2p-copy"][..]),
        ("powershell", &["Register-ArgumentCompleter"][..]),
    ] {
        let r = run(&["completions", shell]);
        assert_eq!(r.code(), 0, "{shell}: {r:?}");
        for mark in marks {
            assert!(r.stdout.contains(mark), "{shell}: no {mark:?}");
        }
        // Every subcommand and a few options of each, straight from the clap definitions.
        for word in [
            "send",
            "receive",
            "run-relay-server",
            "netcheck",
            "relay-only",
            "proxy",
            "direct-timeout",
        ] {
            assert!(r.stdout.contains(word), "{shell}: no {word:?}");
        }
        if shell == "bash" {
            let scene = Scene::new();
            let script = scene.dir.path().join("p2p-copy.bash");
            fs::write(&script, &r.stdout).unwrap();
            let check = Command::new("bash")
                .arg("-n")
                .arg(&script)
                .output()
                .unwrap();
            assert!(
                check.status.success(),
                "bash -n: {}",
                String::from_utf8_lossy(&check.stderr)
            );
        }
    }
    let r = run(&["completions", "tcsh"]);
    assert_eq!(r.code(), 1, "{r:?}");

    let r = run(&["man"]);
    assert_eq!(r.code(), 0, "{r:?}");
    let page = &r.stdout;
    assert!(
        page.starts_with(".ie \\n(.g .ds Aq") || page.contains(".TH p2p-copy 1"),
        "{page}"
    );
    for part in [
        ".TH p2p-copy 1",
        ".SH \"P2P-COPY SEND\"",
        ".SH \"P2P-COPY RECEIVE\"",
        ".SH \"P2P-COPY RUN-RELAY-SERVER\"",
        "\\-\\-relay\\-only",
        "Exit codes",
    ] {
        assert!(page.contains(part), "the man page has no {part:?}:\n{page}");
    }
}

#[test]
fn receive_creates_a_missing_out_and_leaves_no_probe_file() {
    let (_relay, url) = plain_relay();
    let s = Scene::new();
    let out = s.dir.path().join("new").join("deeper");
    write_tree(&s.src, &[FileSpec::random("f", 10, 1)]);
    let receiver = spawn(&["receive", &url, "cli-out", "--out", arg(&out)]);
    let sender = run(&["send", &url, "cli-out", arg(&s.src.join("f"))]);
    let receiver = receiver.wait(LIMIT);
    assert_eq!((sender.code(), receiver.code()), (0, 0), "{receiver:?}");
    let names: Vec<_> = fs::read_dir(&out)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, ["f"], "only the received file is left in --out");
}

#[test]
fn ctrl_c_before_pairing_does_not_talk_about_partial_files() {
    let (_relay, url) = plain_relay();
    let s = Scene::new();
    write_tree(&s.src, &[FileSpec::random("f", 10, 1)]);
    let receiver = spawn(&["receive", &url, "cli-alone-r", "--out", arg(&s.out)]);
    let sender = spawn(&["send", &url, "cli-alone-s", arg(&s.src)]);
    // Long enough for both to reach the relay and wait there for a peer.
    std::thread::sleep(Duration::from_millis(1500));
    receiver.signal("INT");
    sender.signal("INT");
    for (r, waiting_for) in [
        (receiver.wait(LIMIT), "waiting for the sender"),
        (sender.wait(LIMIT), "waiting for the receiver"),
    ] {
        assert_eq!(r.code(), 130, "{r:?}");
        let last = r.stderr.lines().last().unwrap_or_default();
        assert!(last.contains(waiting_for), "{}", r.stderr);
        assert!(
            !r.stderr.contains("partial") && !r.stderr.contains("--resume"),
            "{}",
            r.stderr
        );
    }
}

/// The "in N s" of a summary line.
fn summary_secs(stderr: &str) -> f64 {
    let line = stderr
        .lines()
        .find(|l| l.starts_with("sent ") || l.starts_with("received "))
        .unwrap_or_else(|| panic!("no summary: {stderr}"));
    let (_, after) = line.split_once(") in ").expect("summary has a time");
    let secs = after.split(' ').next().unwrap_or_default();
    secs.parse().unwrap_or_else(|e| panic!("{line}: {e}"))
}

#[test]
fn summary_time_and_rate_leave_out_the_wait_for_the_peer() {
    let (_relay, url) = plain_relay();
    let s = Scene::new();
    write_tree(&s.src, &[FileSpec::random("f", 2 * MIB, 3)]);
    let receiver = spawn(&["receive", &url, "cli-rate", "--out", arg(&s.out)]);
    std::thread::sleep(Duration::from_secs(3));
    let sender = run(&["send", &url, "cli-rate", arg(&s.src)]);
    let receiver = receiver.wait(LIMIT);
    assert_eq!((sender.code(), receiver.code()), (0, 0), "{receiver:?}");
    let secs = summary_secs(&receiver.stderr);
    assert!(
        secs < 2.5,
        "the receiver waited 3 s for the sender; its summary counts {secs} s: {}",
        receiver.stderr
    );
}

#[test]
fn a_relay_stopped_with_sigterm_tells_its_clients_why() {
    let (relay, url) = plain_relay();
    let s = Scene::new();
    let receiver = spawn(&["receive", &url, "cli-going-away", "--out", arg(&s.out)]);
    // Long enough for the receiver to reach the relay and wait there.
    std::thread::sleep(Duration::from_millis(1500));
    relay.signal("TERM");
    let stopped = relay.wait(Duration::from_secs(10));
    assert_eq!(stopped.code(), 0, "{stopped:?}");
    let r = receiver.wait(Duration::from_secs(10));
    assert_eq!(r.code(), 7, "the connection to the relay is lost: {r:?}");
    let last = r.stderr.lines().last().unwrap_or_default();
    assert!(
        last.starts_with("error: ") && last.contains("relay shutting down"),
        "{}",
        r.stderr
    );
}

#[test]
fn a_parallel_code_over_the_relays_per_address_limit_fails_fast_on_both_sides() {
    let (_relay, url) = start_cli_relay(Path::new(BIN), &["--no-tls", "--max-per-address", "12"]);
    let s = Scene::new();
    write_tree(&s.src, &standard_tree());
    // Both sides on one address: 2 × 8 connections, 12 allowed. Either may start first.
    for (i, receiver_first) in [true, false].into_iter().enumerate() {
        let code = format!("n=8=ncli-limit-{i}");
        let recv_args = [
            "receive",
            &url,
            &code,
            "--out",
            arg(&s.out),
            "--timeout",
            "60",
        ];
        let send_args = ["send", &url, &code, arg(&s.src), "--timeout", "60"];
        let (first, second): (&[&str], &[&str]) = match receiver_first {
            true => (&recv_args, &send_args),
            false => (&send_args, &recv_args),
        };
        let started = std::time::Instant::now();
        let first = spawn(first);
        std::thread::sleep(Duration::from_millis(1000));
        let second = run(second);
        let first = first.wait(LIMIT);
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "a side waited for its timeout"
        );
        for r in [&first, &second] {
            assert_eq!(r.code(), 2, "{r:?}");
            let last = r.stderr.lines().last().unwrap_or_default();
            assert!(
                last.contains("(the relay allows 12 per address)") && last.contains("smaller N"),
                "{}",
                r.stderr
            );
            assert!(!last.contains("someone else"), "{last}");
        }
    }
}

#[test]
fn a_plain_http_request_gets_426_upgrade_required() {
    use std::io::{Read, Write};
    let (_relay, url) = plain_relay();
    let addr = url.trim_start_matches("ws://");
    let mut tcp = std::net::TcpStream::connect(addr).unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    tcp.write_all(b"GET / HTTP/1.1\r\nHost: relay\r\nUser-Agent: curl/8\r\n\r\n")
        .unwrap();
    let mut reply = String::new();
    tcp.read_to_string(&mut reply).unwrap();
    assert!(
        reply.starts_with("HTTP/1.1 426 Upgrade Required\r\n"),
        "{reply:?}"
    );
    assert!(reply.contains("\r\nUpgrade: websocket\r\n"), "{reply:?}");
    assert!(
        reply.ends_with("with ws:// or wss:// and this address.\n"),
        "{reply:?}"
    );
    // The relay still serves WebSocket clients.
    let s = Scene::new();
    write_tree(&s.src, &[FileSpec::random("f", 10, 1)]);
    transfer(&url, "cli-after-http", &s, &[], &[]);
}

#[test]
fn the_relay_logs_refused_connections_rate_limited() {
    let (relay, url) = start_cli_relay(Path::new(BIN), &["--no-tls", "--max-per-address", "1"]);
    let addr = url.trim_start_matches("ws://");
    let held = std::net::TcpStream::connect(addr).unwrap();
    let flood: Vec<_> = (0..40)
        .map(|_| std::net::TcpStream::connect(addr).unwrap())
        .collect();
    // The refused connections are dropped after the close grace (1 s); the count of the
    // lines held back is logged then.
    std::thread::sleep(Duration::from_millis(2000));
    relay.signal("TERM");
    let out = relay.wait(Duration::from_secs(10));
    drop((held, flood));
    let refusals = out
        .stderr
        .lines()
        .filter(|l| l.contains("closed: too many connections from this address"))
        .count();
    assert!(
        (1..=5).contains(&refusals),
        "{refusals} refusal lines: {}",
        out.stderr
    );
    let held_back = 40 - refusals;
    assert!(
        out.stderr.contains(&format!(
            "{held_back} more refused or timed-out connections not logged"
        )),
        "{}",
        out.stderr
    );
}

#[test]
fn the_config_file_gives_defaults_that_the_environment_and_flags_override() {
    let (_relay, url) = plain_relay();
    let s = Scene::new();
    write_tree(&s.src, &[FileSpec::random("f", 200_000, 5)]);
    let config = s.dir.path().join("config.toml");
    fs::write(
        &config,
        format!(
            "relay = \"{url}\"\nencrypt = true\nout = \"{}\"\nproxy = \"http://u:secret@127.0.0.1:9\"\nrelay_token = \"tok3n\"\n",
            arg(&s.out)
        ),
    )
    .unwrap();
    let with_file = |args: &[&str]| {
        let mut cmd = p2p_copy(args);
        cmd.env("P2P_COPY_CONFIG", &config)
            .env_remove("P2P_COPY_RELAY")
            .env_remove("HTTPS_PROXY")
            .env_remove("https_proxy")
            .env_remove("ALL_PROXY")
            .env_remove("all_proxy");
        cmd
    };

    // `config` names the file and the source of every value, and hides the password.
    let shown = ChildGuard::spawn(&mut with_file(&["config"])).wait(LIMIT);
    assert_eq!(shown.code(), 0, "{shown:?}");
    assert!(
        shown.stdout.contains(&format!("{} (found)", arg(&config))),
        "{shown:?}"
    );
    let line = |key: &str| {
        shown
            .stdout
            .lines()
            .find(|l| l.starts_with(key))
            .unwrap_or_else(|| panic!("no {key} in {shown:?}"))
            .to_owned()
    };
    assert!(line("relay").contains(&url) && line("relay").ends_with("(config file)"));
    assert!(line("encrypt").contains("true") && line("encrypt").ends_with("(config file)"));
    assert!(!shown.stdout.contains("secret"), "{shown:?}");
    assert!(!shown.stdout.contains("tok3n"), "{shown:?}");
    assert!(line("relay_token").contains("(set)"), "{shown:?}");
    assert!(line("ca_file").ends_with("(default)"), "{shown:?}");
    // The file's proxy is not used for a relay on this machine.
    assert!(line("proxy").ends_with("(default)"), "{shown:?}");
    let over = ChildGuard::spawn(with_file(&["config"]).env("P2P_COPY_RELAY", "ws://127.0.0.1:7"))
        .wait(LIMIT);
    let relay = over
        .stdout
        .lines()
        .find(|l| l.starts_with("relay"))
        .unwrap();
    assert!(
        relay.contains("ws://127.0.0.1:7") && relay.ends_with("(environment P2P_COPY_RELAY)"),
        "{over:?}"
    );

    // The receiver takes its relay, encryption and output directory from the file; the
    // sender's --no-encrypt would not meet it, its default from the file does. The proxy
    // in the file is never used for a loopback relay.
    let receiver = ChildGuard::spawn(&mut with_file(&["receive", "--code", "cfg-code"]));
    let sender =
        ChildGuard::spawn(&mut with_file(&["send", "--code", "cfg-code", arg(&s.src)])).wait(LIMIT);
    let received = receiver.wait(LIMIT);
    assert_eq!(sender.code(), 0, "sender: {sender:?}");
    assert_eq!(received.code(), 0, "receiver: {received:?}");
    assert_same_tree(&s.src, &s.out.join("src"));

    // A flag beats the file: a sender with --no-encrypt does not meet an encrypting
    // receiver: both end with exit 3 (no peer).
    let receiver = ChildGuard::spawn(&mut with_file(&[
        "receive",
        "--code",
        "cfg-code-2",
        "--out",
        arg(&s.dir.path().join("other")),
        "--timeout",
        "3",
    ]));
    let sender = ChildGuard::spawn(&mut with_file(&[
        "send",
        "--code",
        "cfg-code-2",
        "--no-encrypt",
        "--timeout",
        "3",
        arg(&s.src),
    ]))
    .wait(LIMIT);
    let received = receiver.wait(LIMIT);
    assert_eq!(sender.code(), 3, "sender: {sender:?}");
    assert_eq!(received.code(), 3, "receiver: {received:?}");

    // A broken file is a usage error that names the file and the key.
    fs::write(&config, "relay = \"ws://x:1\"\nencrypted = true\n").unwrap();
    let broken = ChildGuard::spawn(&mut with_file(&["receive", "--code", "c"])).wait(LIMIT);
    assert_eq!(broken.code(), 1, "{broken:?}");
    assert!(
        broken.stderr.contains("config.toml") && broken.stderr.contains("encrypted"),
        "{broken:?}"
    );
    // A file named by P2P_COPY_CONFIG must exist.
    fs::remove_file(&config).unwrap();
    let missing = ChildGuard::spawn(&mut with_file(&["config"])).wait(LIMIT);
    assert_eq!(missing.code(), 1, "{missing:?}");
}
