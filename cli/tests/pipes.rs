//! Pipes and text: `send -` streams standard input, `receive --stdout` writes the one
//! file to standard output, `send --text` has the receiver print a text; and a Python
//! p2p-copy 0.1.2 receiver is refused before anything is sent. Real relay, real child
//! processes, real pipes.

use std::fs;
use std::io::{Read, Write};
use std::path::Path;
use std::process::{ChildStdout, Command};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use p2p_copy_tests::deadline::wait_for;
use p2p_copy_tests::process::{start_cli_relay, ChildGuard, Finished};
use p2p_copy_tests::python;
use p2p_copy_tests::scene::Scene;
use p2p_copy_tests::tree::random_bytes;

const BIN: &str = env!("CARGO_BIN_EXE_p2p-copy");
const LIMIT: Duration = Duration::from_secs(60);
/// Exit code of a mode the peer or the transfer does not support.
const EXIT_UNSUPPORTED: i32 = 12;
const MIB: usize = 1 << 20;

fn p2p_copy(args: &[&str]) -> Command {
    let mut cmd = Command::new(BIN);
    cmd.args(args);
    cmd
}

fn plain_relay() -> (ChildGuard, String) {
    start_cli_relay(Path::new(BIN), &["--no-tls"])
}

fn arg(p: &Path) -> &str {
    p.to_str().expect("temp paths are UTF-8")
}

/// A child's raw standard output, read as it comes: the bytes so far and their count.
struct Tap {
    count: Arc<AtomicUsize>,
    bytes: Arc<Mutex<Vec<u8>>>,
    reader: JoinHandle<()>,
}

impl Tap {
    fn new(mut out: ChildStdout) -> Tap {
        let count = Arc::new(AtomicUsize::new(0));
        let bytes = Arc::new(Mutex::new(Vec::new()));
        let (c, b) = (count.clone(), bytes.clone());
        let reader = std::thread::spawn(move || {
            let mut buf = vec![0u8; 64 * 1024];
            while let Ok(n) = out.read(&mut buf) {
                if n == 0 {
                    break;
                }
                b.lock().unwrap().extend_from_slice(&buf[..n]);
                c.fetch_add(n, Ordering::SeqCst);
            }
        });
        Tap {
            count,
            bytes,
            reader,
        }
    }

    fn wait_for(&self, at_least: usize, what: &str) {
        wait_for(LIMIT, what, || {
            (self.count.load(Ordering::SeqCst) >= at_least).then_some(())
        });
    }

    fn all(self) -> Vec<u8> {
        self.reader.join().expect("reader thread");
        Arc::try_unwrap(self.bytes)
            .expect("reader done")
            .into_inner()
            .unwrap()
    }
}

/// `receive URL CODE --stdout -y EXTRA…`, its stdout tapped.
fn stdout_receiver(url: &str, code: &str, extra: &[&str]) -> (ChildGuard, Tap) {
    let mut args = vec!["receive", url, code, "--stdout", "-y"];
    args.extend_from_slice(extra);
    let (guard, out) = ChildGuard::spawn_reading_stdout(&mut p2p_copy(&args));
    (guard, Tap::new(out))
}

/// `send URL CODE - --name NAME EXTRA…`, its stdin open for the test to write.
fn stdin_sender(url: &str, code: &str, extra: &[&str]) -> (ChildGuard, std::process::ChildStdin) {
    let mut args = vec!["send", url, code, "-", "--name", "piped.bin"];
    args.extend_from_slice(extra);
    let (guard, stdin, _lines) = ChildGuard::spawn_talking(&mut p2p_copy(&args));
    (guard, stdin)
}

/// Peak resident memory of a running process (Linux), in bytes.
fn peak_rss(pid: u32) -> Option<u64> {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

#[test]
fn stdin_streams_before_the_input_ends_and_arrives_byte_identical_on_stdout() {
    let (_relay, url) = plain_relay();
    let code = "pipes-stream-1";
    let (receiver, tap) = stdout_receiver(&url, code, &[]);
    let (sender, mut stdin) = stdin_sender(&url, code, &[]);
    let data = random_bytes(4 * MIB as u64 + 123, 11);
    let (first, rest) = data.split_at(2 * MIB + 500);
    stdin.write_all(first).expect("write the first part");
    stdin.flush().unwrap();
    // The input has not ended, and the receiver already wrote verified data.
    tap.wait_for(
        MIB,
        "the receiver's first MiB while the input is still open",
    );
    stdin.write_all(rest).expect("write the rest");
    drop(stdin);
    let sent = sender.wait(LIMIT);
    let received = receiver.wait(LIMIT);
    assert_eq!(sent.code(), 0, "sender: {sent:?}");
    assert_eq!(received.code(), 0, "receiver: {received:?}");
    assert!(tap.all() == data, "stdout differs from the input");
    assert!(
        sent.stderr.contains("delivery confirmed"),
        "{}",
        sent.stderr
    );
}

/// Memory stays bounded: the sender's peak grows by far less than the input. Measured
/// after 8 MiB and again after 40 MiB, while the input is still open (holding the 32 MiB
/// in between would add at least that much; the window, buffers and a direct path that
/// may come up meanwhile add a few MiB).
#[test]
fn stdin_streaming_keeps_memory_flat() {
    let (_relay, url) = plain_relay();
    let code = "pipes-memory-1";
    let (receiver, tap) = stdout_receiver(&url, code, &[]);
    let (sender, mut stdin) = stdin_sender(&url, code, &["--compress", "off"]);
    let block = random_bytes(MIB as u64, 5);
    let mut written = 0;
    let mut write_mib = |n: usize, stdin: &mut std::process::ChildStdin| {
        for _ in 0..n {
            stdin.write_all(&block).expect("write");
            written += MIB;
        }
        written
    };
    let w = write_mib(8, &mut stdin);
    tap.wait_for(w - MIB, "8 MiB through");
    let warm = peak_rss(sender.id()).expect("/proc/PID/status");
    let w = write_mib(32, &mut stdin);
    tap.wait_for(w - MIB, "40 MiB through");
    let end = peak_rss(sender.id()).expect("/proc/PID/status");
    drop(stdin);
    let sent = sender.wait(LIMIT);
    let received = receiver.wait(LIMIT);
    assert_eq!(sent.code(), 0, "sender: {sent:?}");
    assert_eq!(received.code(), 0, "receiver: {received:?}");
    let got = tap.all();
    assert_eq!(got.len(), 40 * MIB);
    assert!(got.chunks(MIB).all(|c| c == block.as_slice()));
    assert!(
        end < warm + 16 * MIB as u64,
        "the sender's peak memory grew from {warm} to {end} bytes over 32 MiB more input"
    );
}

#[test]
fn encrypted_compressed_stdin_goes_into_a_file_under_its_name() {
    let (_relay, url) = plain_relay();
    let code = "pipes-enc-1";
    let s = Scene::new();
    let receiver = ChildGuard::spawn(&mut p2p_copy(&[
        "receive",
        &url,
        code,
        "--encrypt",
        "-y",
        "--out",
        arg(&s.out),
    ]));
    let (sender, mut stdin) = stdin_sender(&url, code, &["--encrypt", "--compress", "on"]);
    let mut data = b"text compresses well\n".repeat(60_000);
    data.extend_from_slice(&random_bytes(300_000, 2));
    stdin.write_all(&data).unwrap();
    drop(stdin);
    let sent = sender.wait(LIMIT);
    let received = receiver.wait(LIMIT);
    assert_eq!(sent.code(), 0, "sender: {sent:?}");
    assert_eq!(received.code(), 0, "receiver: {received:?}");
    assert!(fs::read(s.out.join("piped.bin")).unwrap() == data);
}

#[test]
fn text_is_printed_by_the_receiver_and_no_file_is_written() {
    let (_relay, url) = plain_relay();
    let s = Scene::new();
    for (code, encrypt) in [("pipes-text-1", false), ("pipes-text-2", true)] {
        let mut recv = vec!["receive", &url, code, "-y", "--out", arg(&s.out)];
        let mut send = vec!["send", &url, code, "--text", "héllo über pipes"];
        if encrypt {
            recv.push("--encrypt");
            send.push("--encrypt");
        }
        let receiver = ChildGuard::spawn(&mut p2p_copy(&recv));
        let sent = ChildGuard::spawn(&mut p2p_copy(&send)).wait(LIMIT);
        let received = receiver.wait(LIMIT);
        assert_eq!(sent.code(), 0, "sender: {sent:?}");
        assert_eq!(received.code(), 0, "receiver: {received:?}");
        assert_eq!(received.stdout, "héllo über pipes\n");
        assert_eq!(fs::read_dir(&s.out).unwrap().count(), 0, "no file written");
    }
    // With --json the text comes as an event, and stdout holds only JSON lines.
    let receiver = ChildGuard::spawn(&mut p2p_copy(&[
        "receive",
        &url,
        "pipes-text-3",
        "--json",
        "--out",
        arg(&s.out),
    ]));
    let sent = ChildGuard::spawn(&mut p2p_copy(&[
        "send",
        &url,
        "pipes-text-3",
        "--text",
        "line one\nline two",
        "--name",
        "note",
    ]))
    .wait(LIMIT);
    let received = receiver.wait(LIMIT);
    assert_eq!(sent.code(), 0, "sender: {sent:?}");
    assert_eq!(received.code(), 0, "receiver: {received:?}");
    let text: Vec<serde_json::Value> = received
        .stdout
        .lines()
        .map(|l| serde_json::from_str(l).expect("every stdout line is JSON"))
        .filter(|v: &serde_json::Value| v["event"] == "text")
        .collect();
    assert_eq!(text.len(), 1, "{}", received.stdout);
    assert_eq!(text[0]["text"], "line one\nline two");
    assert_eq!(text[0]["path"], "note");
}

#[test]
fn stdout_takes_a_plain_file_from_our_sender_and_refuses_two() {
    let (_relay, url) = plain_relay();
    let s = Scene::new();
    let data = random_bytes(MIB as u64 + 77, 3);
    fs::write(s.src.join("one.bin"), &data).unwrap();
    let (receiver, tap) = stdout_receiver(&url, "pipes-stdout-1", &[]);
    let sent = ChildGuard::spawn(&mut p2p_copy(&[
        "send",
        &url,
        "pipes-stdout-1",
        arg(&s.src.join("one.bin")),
    ]))
    .wait(LIMIT);
    let received = receiver.wait(LIMIT);
    assert_eq!(sent.code(), 0, "sender: {sent:?}");
    assert_eq!(received.code(), 0, "receiver: {received:?}");
    assert!(tap.all() == data);

    fs::write(s.src.join("two.bin"), b"second").unwrap();
    let (receiver, tap) = stdout_receiver(&url, "pipes-stdout-2", &[]);
    let sent = ChildGuard::spawn(&mut p2p_copy(&[
        "send",
        &url,
        "pipes-stdout-2",
        arg(&s.src),
    ]))
    .wait(LIMIT);
    let received = receiver.wait(LIMIT);
    assert_eq!(received.code(), EXIT_UNSUPPORTED, "receiver: {received:?}");
    assert!(
        received.stderr.contains("standard output takes one"),
        "{}",
        received.stderr
    );
    assert!(tap.all().is_empty(), "nothing written to stdout");
    assert_ne!(sent.code(), 0, "sender: {sent:?}");
    assert!(sent.stderr.contains("standard output"), "{}", sent.stderr);
}

#[test]
fn usage_mistakes_with_pipes_exit_1_before_connecting() {
    let s = Scene::new();
    let f = s.src.join("f");
    fs::write(&f, b"x").unwrap();
    for (args, needle) in [
        (
            vec!["send", "ws://127.0.0.1:1", "c", "-", arg(&f)],
            "only thing",
        ),
        (
            vec!["send", "ws://127.0.0.1:1", "c", "-", "--resume"],
            "--resume",
        ),
        (
            vec!["send", "ws://127.0.0.1:1", "c", arg(&f), "--name", "n"],
            "--name",
        ),
        (
            vec!["send", "ws://127.0.0.1:1", "c", "-", "--name", "../up"],
            "--name",
        ),
        (
            vec!["send", "ws://127.0.0.1:1", "c", arg(&f), "--text", "t"],
            "--text",
        ),
        (
            vec!["receive", "ws://127.0.0.1:1", "c", "--stdout", "--json"],
            "--json",
        ),
    ] {
        let out = ChildGuard::spawn(&mut p2p_copy(&args)).wait(LIMIT);
        assert_eq!(out.code(), 1, "{args:?}: {out:?}");
        assert!(out.stderr.contains(needle), "{args:?}: {}", out.stderr);
    }
}

/// p2p-copy 0.1.2 as the receiver never accepts the extensions: the sender says the
/// mode is unsupported and exits 12, having sent no file; the Python receiver writes
/// nothing.
#[test]
fn a_python_receiver_is_refused_with_a_clear_message() {
    let (_relay, url) = plain_relay();
    let s = Scene::new();
    for (code, mode) in [("pipes-py-1", "stdin"), ("pipes-py-2", "text")] {
        let out = s.out.join(code);
        let mut cmd = python::command(["receive", &url, code, "--out", arg(&out)]);
        let receiver = ChildGuard::spawn(&mut cmd);
        let sent = match mode {
            "stdin" => {
                let (sender, mut stdin) = stdin_sender(&url, code, &[]);
                // Written before the refusal or after: never sent either way.
                let _ = stdin.write_all(b"never to be sent");
                drop(stdin);
                sender.wait(LIMIT)
            }
            _ => {
                ChildGuard::spawn(&mut p2p_copy(&["send", &url, code, "--text", "hi"])).wait(LIMIT)
            }
        };
        let deadline = Instant::now() + LIMIT;
        let (_py, _) = python::wait_until(receiver, deadline);
        assert_eq!(sent.code(), EXIT_UNSUPPORTED, "{mode}: {sent:?}");
        assert!(
            sent.stderr.contains("p2p-copy 0.1.x") && sent.stderr.contains("nothing was sent"),
            "{mode}: {}",
            sent.stderr
        );
        let written: Vec<_> = fs::read_dir(&out)
            .map(|d| d.flatten().map(|e| e.file_name()).collect())
            .unwrap_or_default();
        assert!(
            written.is_empty(),
            "{mode}: the Python receiver wrote {written:?}"
        );
    }
}

/// A v1 sender (p2p-copy 0.1.2) and `receive --stdout`: the file's verified pieces
/// arrive on stdout.
#[test]
fn stdout_takes_a_file_from_a_python_sender() {
    let (_relay, url) = plain_relay();
    let s = Scene::new();
    let data = random_bytes(2 * MIB as u64 + 9, 21);
    fs::write(s.src.join("py.bin"), &data).unwrap();
    let code = "pipes-py-stdout";
    let (receiver, tap) = stdout_receiver(&url, code, &[]);
    let mut cmd = python::command(["send", &url, code, "py.bin"]);
    cmd.current_dir(&s.src);
    let sender = ChildGuard::spawn(&mut cmd);
    let (sent, _) = python::wait_until(sender, Instant::now() + LIMIT);
    let received: Finished = receiver.wait(LIMIT);
    assert!(sent.status.success(), "python sender: {sent:?}");
    assert_eq!(received.code(), 0, "receiver: {received:?}");
    assert!(tap.all() == data);
}
