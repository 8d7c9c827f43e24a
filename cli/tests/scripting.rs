//! What scripts rely on: `--json` events on stdout, `--exclude` and `--gitignore`, and
//! `--limit-rate`. Real processes, a real relay and real files on 127.0.0.1.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::Command;
use std::sync::mpsc;
use std::time::Duration;

use p2p_copy_tests::process::{start_cli_relay, ChildGuard, Finished};
use p2p_copy_tests::scene::Scene;
use p2p_copy_tests::tree::{assert_same_tree, write_tree, FileSpec};
use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_p2p-copy");
const LIMIT: Duration = Duration::from_secs(60);

fn arg(p: &Path) -> &str {
    p.to_str().expect("temp paths are UTF-8")
}

fn p2p_copy(args: &[&str]) -> Command {
    let mut cmd = Command::new(BIN);
    cmd.args(args).env_remove("P2P_COPY_RELAY");
    cmd
}

fn plain_relay() -> (ChildGuard, String) {
    start_cli_relay(Path::new(BIN), &["--no-tls"])
}

/// Every line of `stdout` parsed as one JSON object with `"v":1` and an `event`.
fn events(stdout: &str) -> Vec<Value> {
    stdout
        .lines()
        .map(|line| {
            let v: Value = serde_json::from_str(line)
                .unwrap_or_else(|e| panic!("not JSON ({e}): {line:?}\nall:\n{stdout}"));
            assert_eq!(v["v"], 1, "{line}");
            assert!(v["event"].is_string(), "{line}");
            v
        })
        .collect()
}

fn names(events: &[Value]) -> Vec<&str> {
    events
        .iter()
        .map(|e| e["event"].as_str().unwrap_or_default())
        .filter(|n| *n != "progress" && *n != "path" && *n != "delivery")
        .collect()
}

/// Files started and done in pairs, in the manifest's order.
fn file_events(events: &[Value]) -> Vec<(&str, &str)> {
    events
        .iter()
        .filter(|e| e["event"] == "file_started" || e["event"] == "file_done")
        .map(|e| {
            (
                e["event"].as_str().unwrap_or_default(),
                e["path"].as_str().unwrap_or_default(),
            )
        })
        .collect()
}

fn small_tree() -> Vec<FileSpec> {
    vec![
        FileSpec::text("a.txt", 100, 1),
        FileSpec::random("sub/b.bin", 3_000, 2),
        FileSpec::text("sub/deeper/c.txt", 10, 3),
    ]
}

#[test]
fn json_events_carry_a_generated_code_the_files_and_the_summary_on_stdout_only() {
    let (_relay, url) = plain_relay();
    let s = Scene::new();
    write_tree(&s.src, &small_tree());
    let mut send = p2p_copy(&["send", "--json", "--relay-only", arg(&s.src)]);
    send.env("P2P_COPY_RELAY", &url);
    let (sender, stdout) = ChildGuard::spawn_reading_stdout(&mut send);
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let first = rx.recv_timeout(LIMIT).expect("the sender's first event");
    let second = rx.recv_timeout(LIMIT).expect("the sender's code event");
    let code_event: Value = serde_json::from_str(&second).expect("JSON");
    assert_eq!(code_event["event"], "code", "{first}\n{second}");
    let code = code_event["code"].as_str().expect("a code").to_owned();
    assert_eq!(code_event["relay"], url.as_str());

    let received = ChildGuard::spawn(&mut p2p_copy(&[
        "receive",
        "--json",
        "--relay-only",
        "--relay",
        &url,
        &code,
        "--out",
        arg(&s.out),
    ]))
    .wait(LIMIT);
    let sent = sender.wait(LIMIT);
    let mut sent_lines = vec![first, second];
    sent_lines.extend(rx.try_iter());
    assert_eq!(sent.code(), 0, "sender: {sent:?}");
    assert_eq!(received.code(), 0, "receiver: {received:?}");
    assert_same_tree(&s.src, &s.out.join("src"));

    let sent = events(&sent_lines.join("\n"));
    let got = events(&received.stdout);
    let files = ["src/a.txt", "src/sub/b.bin", "src/sub/deeper/c.txt"];
    let per_file: Vec<(&str, &str)> = files
        .iter()
        .flat_map(|f| [("file_started", *f), ("file_done", *f)])
        .collect();
    let mut expected = vec!["start", "code", "paired", "manifest"];
    expected.extend(per_file.iter().map(|(e, _)| *e));
    expected.push("summary");
    assert_eq!(names(&sent), expected, "{sent:#?}");
    assert_eq!(file_events(&sent), per_file);
    let mut expected = vec!["start", "manifest"];
    expected.extend(per_file.iter().map(|(e, _)| *e));
    expected.push("summary");
    assert_eq!(names(&got), expected, "{got:#?}");
    assert_eq!(file_events(&got), per_file);

    assert_eq!(sent[0]["role"], "send");
    assert_eq!(got[0]["role"], "receive");
    let manifest = got.iter().find(|e| e["event"] == "manifest").unwrap();
    assert_eq!(
        (manifest["files"].as_u64(), manifest["bytes"].as_u64()),
        (Some(3), Some(3_110))
    );
    for summary in [sent.last().unwrap(), got.last().unwrap()] {
        assert_eq!(summary["files"], 3, "{summary}");
        assert_eq!(summary["bytes"], 3_110, "{summary}");
        assert_eq!(summary["exit"], 0, "{summary}");
    }
    assert_eq!(sent.last().unwrap()["confirmed"], 1);
    // The human summary is not printed in this mode; errors would still be on stderr.
    assert!(
        !received.stderr.contains("received 3 files"),
        "{}",
        received.stderr
    );
}

/// The last line of a failed command's stdout: an `error` event with its exit code.
fn error_event(out: &Finished) -> Value {
    let all = events(&out.stdout);
    let last = all
        .last()
        .unwrap_or_else(|| panic!("no events: {out:?}"))
        .clone();
    assert_eq!(last["event"], "error", "{out:?}");
    assert_eq!(last["exit"], out.code(), "{out:?}");
    assert!(last["message"].as_str().is_some_and(|m| !m.is_empty()));
    last
}

#[test]
fn json_errors_are_the_last_event_with_the_exit_code() {
    let s = Scene::new();
    write_tree(&s.src, &small_tree());
    // No relay listens on port 1: exit 2.
    let out = ChildGuard::spawn(&mut p2p_copy(&[
        "receive",
        "--json",
        "ws://127.0.0.1:1",
        "some-code",
        "--out",
        arg(&s.out),
    ]))
    .wait(LIMIT);
    assert_eq!(out.code(), 2, "{out:?}");
    let all = events(&out.stdout);
    assert_eq!(all[0]["event"], "start");
    error_event(&out);
    // A missing source: exit 6, before anything is sent.
    let missing = s.src.join("missing");
    let out = ChildGuard::spawn(&mut p2p_copy(&[
        "send",
        "--json",
        "ws://127.0.0.1:1",
        "code",
        arg(&missing),
    ]))
    .wait(LIMIT);
    assert_eq!(out.code(), 6, "{out:?}");
    assert!(error_event(&out)["message"]
        .as_str()
        .is_some_and(|m| m.contains("missing")));
    // Usage errors, from clap and from our own checks: exit 1.
    for args in [
        &[
            "send",
            "--json",
            "--compress",
            "maybe",
            "ws://127.0.0.1:1",
            "c",
            "f",
        ][..],
        &["receive", "--json", "ws://127.0.0.1:1", "c", "extra"][..],
    ] {
        let out = ChildGuard::spawn(&mut p2p_copy(args)).wait(LIMIT);
        assert_eq!(out.code(), 1, "{args:?}: {out:?}");
        assert_eq!(events(&out.stdout).len(), 1, "{out:?}");
        let message = error_event(&out)["message"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        assert!(
            message.contains("maybe") || message.contains("extra"),
            "the message names the mistake: {message}"
        );
        assert!(out.stderr.contains("error"), "{out:?}");
    }
}

#[test]
fn exclude_and_gitignore_leave_out_what_they_match() {
    let (_relay, url) = plain_relay();
    let s = Scene::new();
    write_tree(
        &s.src,
        &[
            FileSpec::text("keep.txt", 10, 1),
            FileSpec::text("notes.log", 10, 2),
            FileSpec::text("sub/deep.log", 10, 3),
            FileSpec::text("target/big.bin", 10, 4),
            FileSpec::text("sub/main.c", 10, 5),
            FileSpec::text("sub/main.o", 10, 6),
            FileSpec::text(".gitignore", 0, 7),
            FileSpec::text(".git/HEAD", 10, 8),
        ],
    );
    std::fs::write(s.src.join(".gitignore"), "target/\n*.o\n").unwrap();
    let code = "scripting-exclude";
    let receiver = ChildGuard::spawn(&mut p2p_copy(&[
        "receive",
        &url,
        code,
        "--out",
        arg(&s.out),
    ]));
    let sent = ChildGuard::spawn(&mut p2p_copy(&[
        "send",
        &url,
        code,
        arg(&s.src),
        "--exclude",
        "*.log",
        "--gitignore",
        "-v",
    ]))
    .wait(LIMIT);
    let received = receiver.wait(LIMIT);
    assert_eq!(sent.code(), 0, "{sent:?}");
    assert_eq!(received.code(), 0, "{received:?}");
    let expected = s.dir.path().join("expected");
    write_tree(
        &expected,
        &[
            FileSpec::text("keep.txt", 10, 1),
            FileSpec::text("sub/main.c", 10, 5),
        ],
    );
    std::fs::copy(s.src.join(".gitignore"), expected.join(".gitignore")).unwrap();
    assert_same_tree(&expected, &s.out.join("src"));
    // With -v the log names what was left out and why.
    assert!(
        sent.stderr
            .contains("leaving out src/notes.log: --exclude *.log"),
        "{}",
        sent.stderr
    );
    assert!(
        sent.stderr.contains("leaving out src/target"),
        "{}",
        sent.stderr
    );

    // A pattern the matcher refuses is a usage error, before connecting.
    let out = ChildGuard::spawn(&mut p2p_copy(&[
        "send",
        &url,
        code,
        arg(&s.src),
        "--exclude",
        "[z-a]",
    ]))
    .wait(LIMIT);
    assert_eq!(out.code(), 1, "{out:?}");
    assert!(out.stderr.contains("--exclude"), "{}", out.stderr);
}

/// Send 1 MiB with `--limit-rate 400k` on one side; the time from pairing to the end,
/// as that side's `--json` summary gives it.
fn limited_transfer(code: &str, limit_on_sender: bool) -> f64 {
    let (_relay, url) = plain_relay();
    let s = Scene::new();
    write_tree(&s.src, &[FileSpec::random("one.bin", 1 << 20, 1)]);
    let limit: &[&str] = &["--limit-rate", "400k", "--json"];
    let (send_extra, recv_extra) = if limit_on_sender {
        (limit, &[][..])
    } else {
        (&[][..], limit)
    };
    let mut recv_args = vec!["receive", &url, code, "--out", arg(&s.out), "--relay-only"];
    recv_args.extend_from_slice(recv_extra);
    let receiver = ChildGuard::spawn(&mut p2p_copy(&recv_args));
    let mut send_args = vec!["send", &url, code, arg(&s.src), "--relay-only"];
    send_args.extend_from_slice(send_extra);
    let sent = ChildGuard::spawn(&mut p2p_copy(&send_args)).wait(LIMIT);
    let received = receiver.wait(LIMIT);
    assert_eq!(sent.code(), 0, "{sent:?}");
    assert_eq!(received.code(), 0, "{received:?}");
    assert_same_tree(&s.src, &s.out.join("src"));
    let limited = if limit_on_sender { &sent } else { &received };
    let summary = events(&limited.stdout).pop().expect("a summary");
    assert_eq!(summary["event"], "summary");
    summary["seconds"].as_f64().expect("seconds")
}

#[test]
fn limit_rate_paces_the_sender_and_the_receiver() {
    // 1 MiB at 400 kB/s takes 2.6 s; 10 % less is the real check, the upper bound only
    // catches a stall (a busy machine may be slow).
    let least = (1 << 20) as f64 / 400_000.0 * 0.9;
    for (code, on_sender) in [("limit-send", true), ("limit-receive", false)] {
        let secs = limited_transfer(code, on_sender);
        assert!(
            (least..20.0).contains(&secs),
            "{code}: {secs} s, expected at least {least} s"
        );
    }
    // Too slow a limit is a usage error.
    let out = ChildGuard::spawn(&mut p2p_copy(&["receive", "--limit-rate", "1k", "c"])).wait(LIMIT);
    assert_eq!(out.code(), 1, "{out:?}");
    assert!(out.stderr.contains("64k"), "{}", out.stderr);
}

#[test]
fn without_a_relay_the_ticket_is_an_event_and_help_names_the_options() {
    let s = Scene::new();
    write_tree(&s.src, &small_tree());
    // No peer on stdin: the ticket, then a usage error.
    let out = ChildGuard::spawn(&mut p2p_copy(&[
        "send",
        "--json",
        "--local-port",
        "0",
        "--code",
        "scripting-ticket",
        arg(&s.src),
    ]))
    .wait(LIMIT);
    assert_eq!(out.code(), 1, "{out:?}");
    let all = events(&out.stdout);
    assert_eq!(names(&all), ["start", "ticket", "error"], "{out:?}");
    assert_eq!(all[0]["relay"], Value::Null);
    assert!(all[1]["ticket"]
        .as_str()
        .is_some_and(|t| t.starts_with("p2pc")));
    error_event(&out);

    for (cmd, options) in [
        (
            "send",
            &["--json", "--exclude", "--gitignore", "--limit-rate"][..],
        ),
        ("receive", &["--json", "--limit-rate"][..]),
    ] {
        let help = ChildGuard::spawn(&mut p2p_copy(&[cmd, "--help"])).wait(LIMIT);
        for opt in options {
            assert!(help.stdout.contains(opt), "{cmd} --help lacks {opt}");
        }
    }
}
