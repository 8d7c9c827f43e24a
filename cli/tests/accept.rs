//! What the receiver accepts, as users meet it: the question on a terminal before
//! anything is written (accept, decline, `-y`), what happens to files that are already
//! there (`--overwrite`, `--no-clobber`), the partial files a stopped transfer leaves
//! (`partials`, `partials --clean`), and how long each side waits for the other
//! (`--ttl`). Real processes, relays and files on 127.0.0.1; the terminal is a pty.

use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::Duration;

use p2p_copy_tests::deadline::wait_for;
use p2p_copy_tests::process::{start_cli_relay, ChildGuard};
use p2p_copy_tests::scene::Scene;
use p2p_copy_tests::tree::{assert_same_tree, write_tree, FileSpec};

const BIN: &str = env!("CARGO_BIN_EXE_p2p-copy");
const LIMIT: Duration = Duration::from_secs(60);
/// The declined transfer's exit code, on both sides.
const EXIT_DECLINED: i32 = 11;

fn arg(p: &Path) -> &str {
    p.to_str().expect("temp paths are UTF-8")
}

/// Every file below `dir`, relative, sorted (partial files included).
fn listing(dir: &Path) -> Vec<String> {
    fn walk(root: &Path, dir: &Path, out: &mut Vec<String>) {
        let Ok(entries) = fs::read_dir(dir) else {
            return;
        };
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                walk(root, &p, out);
            } else {
                out.push(p.strip_prefix(root).unwrap().to_string_lossy().into_owned());
            }
        }
    }
    let mut v = Vec::new();
    walk(dir, dir, &mut v);
    v.sort();
    v
}

fn send(url: &str, code: &str, src: &Path, extra: &[&str]) -> ChildGuard {
    ChildGuard::spawn(
        Command::new(BIN)
            .args(["send", url, code, arg(src)])
            .args(extra)
            .stdin(Stdio::null()),
    )
}

/// A receiver whose stdin is a terminal (the slave of a pty, whose master the test
/// writes to) and whose stderr goes to a file.
struct OnTerminal {
    child: Child,
    master: File,
    log: PathBuf,
}

impl OnTerminal {
    fn start(url: &str, code: &str, out: &Path, extra: &[&str], log: PathBuf) -> OnTerminal {
        let mut args = vec!["receive", url, code, "--out", arg(out)];
        args.extend_from_slice(extra);
        OnTerminal::run(&args, log)
    }

    /// `p2p-copy ARGS` on the terminal.
    fn run(args: &[&str], log: PathBuf) -> OnTerminal {
        use rustix::pty::{grantpt, openpt, ptsname, unlockpt, OpenptFlags};
        let master = openpt(OpenptFlags::RDWR | OpenptFlags::NOCTTY).expect("openpt");
        grantpt(&master).expect("grantpt");
        unlockpt(&master).expect("unlockpt");
        let name = ptsname(&master, Vec::new()).expect("ptsname");
        let slave = File::options()
            .read(true)
            .write(true)
            .open(name.to_str().unwrap())
            .expect("open the pty's slave");
        let child = Command::new(BIN)
            .args(args)
            .stdin(Stdio::from(slave))
            .stdout(Stdio::null())
            .stderr(File::create(&log).unwrap())
            .spawn()
            .expect("spawn receiver");
        OnTerminal {
            child,
            master: File::from(master),
            log,
        }
    }

    fn stderr(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// What the receiver shows up to its question.
    fn question(&self) -> String {
        wait_for(Duration::from_secs(20), "the question", || {
            Some(self.stderr()).filter(|t| t.contains("Accept? [y/N]"))
        })
    }

    fn answer(&mut self, line: &str) {
        self.master
            .write_all(format!("{line}\n").as_bytes())
            .expect("type the answer");
    }

    fn wait(mut self) -> (ExitStatus, String) {
        let status = wait_for(LIMIT, "the receiver", || self.child.try_wait().unwrap());
        (status, self.stderr())
    }
}

impl Drop for OnTerminal {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn two_files(s: &Scene) {
    write_tree(
        &s.src,
        &[
            FileSpec::random("a.bin", 300_000, 1),
            FileSpec::text("docs/b.txt", 2_000, 2),
        ],
    );
}

#[test]
fn on_a_terminal_the_receiver_shows_the_offer_and_y_accepts_it() {
    let (_relay, url) = start_cli_relay(Path::new(BIN), &["--no-tls"]);
    let s = Scene::new();
    two_files(&s);
    // One file is already there, with other content.
    fs::create_dir_all(s.out.join("src")).unwrap();
    fs::write(s.out.join("src/a.bin"), b"older").unwrap();
    let sender = send(&url, "consent-yes", &s.src, &[]);
    let mut rx = OnTerminal::start(
        &url,
        "consent-yes",
        &s.out,
        &[],
        s.dir.path().join("rx.log"),
    );
    let shown = rx.question();
    assert!(shown.contains("the sender offers 2 files"), "{shown}");
    assert!(shown.contains("src/  (2 files"), "{shown}");
    assert!(
        shown.contains("1 file is already there and would be replaced: src/a.bin"),
        "{shown}"
    );
    assert_eq!(fs::read(s.out.join("src/a.bin")).unwrap(), b"older");
    assert_eq!(
        listing(&s.out),
        vec!["src/a.bin"],
        "nothing written before the answer"
    );
    rx.answer("y");
    let (status, log) = rx.wait();
    let sent = sender.wait(LIMIT);
    assert_eq!(
        (status.code(), sent.code()),
        (Some(0), 0),
        "{log}\n{sent:?}"
    );
    assert!(
        sent.stderr.contains("waiting for the receiver to accept"),
        "{sent:?}"
    );
    assert_same_tree(&s.src, &s.out.join("src"));
}

#[test]
fn a_declined_transfer_ends_both_sides_with_exit_11_and_writes_nothing() {
    let (_relay, url) = start_cli_relay(Path::new(BIN), &["--no-tls"]);
    let s = Scene::new();
    two_files(&s);
    let sender = send(&url, "consent-no", &s.src, &["--encrypt"]);
    let mut rx = OnTerminal::start(
        &url,
        "consent-no",
        &s.out,
        &["--encrypt"],
        s.dir.path().join("rx.log"),
    );
    rx.question();
    rx.answer("n");
    let (status, log) = rx.wait();
    let sent = sender.wait(LIMIT);
    assert_eq!(status.code(), Some(EXIT_DECLINED), "{log}");
    assert_eq!(sent.code(), EXIT_DECLINED, "{sent:?}");
    assert!(log.contains("declined"), "{log}");
    assert!(
        sent.stderr.contains("the receiver declined the transfer"),
        "{sent:?}"
    );
    assert!(
        !log.contains("error:") && !sent.stderr.contains("error:"),
        "{log}\n{sent:?}"
    );
    assert_eq!(listing(&s.out), Vec::<String>::new(), "nothing written");
}

#[test]
fn yes_skips_the_question_on_a_terminal() {
    let (_relay, url) = start_cli_relay(Path::new(BIN), &["--no-tls"]);
    let s = Scene::new();
    two_files(&s);
    let sender = send(&url, "consent-y", &s.src, &[]);
    let rx = OnTerminal::start(
        &url,
        "consent-y",
        &s.out,
        &["-y"],
        s.dir.path().join("rx.log"),
    );
    let (status, log) = rx.wait();
    let sent = sender.wait(LIMIT);
    assert_eq!(
        (status.code(), sent.code()),
        (Some(0), 0),
        "{log}\n{sent:?}"
    );
    assert!(!log.contains("Accept?"), "{log}");
    assert_same_tree(&s.src, &s.out.join("src"));
}

#[test]
fn a_sender_and_a_receiver_without_a_peer_give_up_after_their_ttl() {
    let (_relay, url) = start_cli_relay(Path::new(BIN), &["--no-tls"]);
    let s = Scene::new();
    two_files(&s);
    let started = std::time::Instant::now();
    let sender = send(&url, "nobody-comes", &s.src, &["--ttl", "1"]);
    let receiver = receive_with(&url, "nobody-either", &s.out, &["--timeout", "1"]);
    let (sent, received) = (sender.wait(LIMIT), receiver.wait(LIMIT));
    assert!(started.elapsed() < Duration::from_secs(20));
    assert_eq!(
        (sent.code(), received.code()),
        (3, 3),
        "{sent:?}\n{received:?}"
    );
    assert!(
        sent.stderr.contains("no receiver joined within 1 s"),
        "{sent:?}"
    );
    assert!(
        received.stderr.contains("no sender joined within 1 s"),
        "{received:?}"
    );
    assert!(sent.stderr.contains("--ttl"), "{sent:?}");
}

fn partials(args: &[&str]) -> p2p_copy_tests::process::Finished {
    ChildGuard::spawn(
        Command::new(BIN)
            .arg("partials")
            .args(args)
            .stdin(Stdio::null()),
    )
    .wait(LIMIT)
}

/// Whether the file system under `dir` keeps user extended attributes.
fn keeps_xattrs(dir: &Path) -> bool {
    let probe = dir.join("xattr-probe");
    let f = File::create(&probe).unwrap();
    let ok = rustix::fs::fsetxattr(&f, "user.probe", b"1", rustix::fs::XattrFlags::empty()).is_ok();
    let _ = fs::remove_file(&probe);
    ok
}

#[test]
fn partials_lists_what_a_stopped_transfer_left_and_clean_removes_only_partial_files() {
    // The relay ends the pair after 3 MiB: the receiver keeps its partial file.
    let (_relay, url) = start_cli_relay(Path::new(BIN), &["--no-tls", "--max-bytes", "3M"]);
    let s = Scene::new();
    write_tree(&s.src, &[FileSpec::random("big.bin", 8 << 20, 1)]);
    let sender = send(
        &url,
        "cut-short",
        &s.src,
        &["--compress", "off", "--relay-only"],
    );
    let received = receive_with(&url, "cut-short", &s.out, &["--relay-only"]).wait(LIMIT);
    let _ = sender.wait(LIMIT);
    assert_ne!(received.code(), 0, "{received:?}");
    // Beside it: a complete file, an old partial file, and things that only look like one.
    fs::write(s.out.join("keep.txt"), b"complete").unwrap();
    fs::write(s.out.join("src/.old.txt.p2p-copy-part"), b"old").unwrap();
    let ten_days = std::time::SystemTime::now() - Duration::from_secs(10 * 86_400);
    File::options()
        .write(true)
        .open(s.out.join("src/.old.txt.p2p-copy-part"))
        .unwrap()
        .set_modified(ten_days)
        .unwrap();
    fs::create_dir(s.out.join(".folder.p2p-copy-part")).unwrap();
    std::os::unix::fs::symlink(s.out.join("keep.txt"), s.out.join(".link.p2p-copy-part")).unwrap();

    let listed = partials(&[arg(&s.out)]);
    assert_eq!(listed.code(), 0, "{listed:?}");
    let lines: Vec<&str> = listed.stdout.lines().skip(1).collect();
    assert_eq!(lines.len(), 2, "{}", listed.stdout);
    assert!(
        lines[0].starts_with("src/big.bin ") && lines[0].ends_with(" seconds"),
        "{}",
        listed.stdout
    );
    if keeps_xattrs(&s.out) {
        assert!(
            lines[0].contains("8.00 MiB"),
            "the sender's size: {}",
            listed.stdout
        );
    }
    assert!(
        lines[1].starts_with("src/old.txt ") && lines[1].ends_with("10 days"),
        "{}",
        listed.stdout
    );

    let old = partials(&["--clean", "--older-than", "7d", arg(&s.out)]);
    assert_eq!(old.code(), 0, "{old:?}");
    assert!(old.stdout.contains("removed 1 partial file"), "{old:?}");
    let left = listing(&s.out);
    assert!(
        left.contains(&"src/.big.bin.p2p-copy-part".to_owned()),
        "{left:?}"
    );
    assert!(
        !left.contains(&"src/.old.txt.p2p-copy-part".to_owned()),
        "{left:?}"
    );

    let all = partials(&["--clean", arg(&s.out)]);
    assert_eq!(all.code(), 0, "{all:?}");
    assert!(all.stdout.contains("removed 1 partial file"), "{all:?}");
    assert_eq!(listing(&s.out), vec![".link.p2p-copy-part", "keep.txt"]);
    assert!(s.out.join(".folder.p2p-copy-part").is_dir());
    let none = partials(&[arg(&s.out)]);
    assert!(none.stdout.contains("no partial files"), "{none:?}");
}

/// `src/a.bin` is already there with other content, `src/docs/b.txt` with the same.
fn with_existing_files(s: &Scene) {
    two_files(s);
    fs::create_dir_all(s.out.join("src/docs")).unwrap();
    fs::write(s.out.join("src/a.bin"), b"mine").unwrap();
    fs::copy(s.src.join("docs/b.txt"), s.out.join("src/docs/b.txt")).unwrap();
}

fn receive_with(url: &str, code: &str, out: &Path, extra: &[&str]) -> ChildGuard {
    ChildGuard::spawn(
        Command::new(BIN)
            .args(["receive", url, code, "--out", arg(out)])
            .args(extra)
            .stdin(Stdio::null()),
    )
}

#[test]
fn an_existing_different_file_is_replaced_by_default_and_with_overwrite() {
    let (_relay, url) = start_cli_relay(Path::new(BIN), &["--no-tls"]);
    for (i, extra) in [&[][..], &["--overwrite"][..]].into_iter().enumerate() {
        let s = Scene::new();
        with_existing_files(&s);
        let code = format!("replace-{i}");
        let sender = send(&url, &code, &s.src, &[]);
        let received = receive_with(&url, &code, &s.out, extra).wait(LIMIT);
        let sent = sender.wait(LIMIT);
        assert_eq!(
            (sent.code(), received.code()),
            (0, 0),
            "{sent:?}\n{received:?}"
        );
        assert_same_tree(&s.src, &s.out.join("src"));
    }
}

#[test]
fn no_clobber_keeps_an_existing_different_file_and_both_sides_report_it() {
    let (_relay, url) = start_cli_relay(Path::new(BIN), &["--no-tls"]);
    let s = Scene::new();
    with_existing_files(&s);
    fs::write(s.src.join("new.txt"), b"new").unwrap();
    let sender = send(&url, "keep-mine", &s.src, &[]);
    let received = receive_with(&url, "keep-mine", &s.out, &["--no-clobber"]).wait(LIMIT);
    let sent = sender.wait(LIMIT);
    assert_eq!(received.code(), 0, "{received:?}");
    assert!(
        received
            .stderr
            .contains("kept src/a.bin, which differs from the sender's (--no-clobber)"),
        "{received:?}"
    );
    assert_eq!(sent.code(), 8, "{sent:?}");
    assert!(
        sent.stderr.contains("src/a.bin") && sent.stderr.contains("--no-clobber"),
        "{sent:?}"
    );
    assert_eq!(fs::read(s.out.join("src/a.bin")).unwrap(), b"mine");
    assert_eq!(fs::read(s.out.join("src/new.txt")).unwrap(), b"new");
    assert_eq!(
        fs::read(s.out.join("src/docs/b.txt")).unwrap(),
        fs::read(s.src.join("docs/b.txt")).unwrap()
    );
    assert_eq!(
        listing(&s.out),
        vec!["src/a.bin", "src/docs/b.txt", "src/new.txt"],
        "no partial file stays"
    );
}

#[test]
fn a_python_sender_is_asked_about_like_any_other_and_a_refusal_just_closes() {
    use p2p_copy_tests::python;
    let (_relay, url) = start_cli_relay(Path::new(BIN), &["--no-tls"]);
    for (answer, code) in [("y", "py-consent-yes"), ("n", "py-consent-no")] {
        let s = Scene::new();
        two_files(&s);
        let sender = ChildGuard::spawn(
            python::command(["send", &url, code, arg(&s.src)]).current_dir(s.dir.path()),
        );
        let log = s.dir.path().join("rx.log");
        let mut rx = OnTerminal::start(&url, code, &s.out, &[], log);
        let shown = rx.question();
        assert!(shown.contains("the sender offers 2 files"), "{shown}");
        rx.answer(answer);
        let (status, log) = rx.wait();
        let sent = sender.wait(LIMIT);
        if answer == "y" {
            assert_eq!(
                (status.code(), sent.code()),
                (Some(0), 0),
                "{log}\n{sent:?}"
            );
            assert_same_tree(&s.src, &s.out.join("src"));
        } else {
            assert_eq!(status.code(), Some(EXIT_DECLINED), "{log}");
            assert_eq!(listing(&s.out), Vec::<String>::new(), "nothing written");
        }
    }
}

#[test]
fn with_no_relay_the_receiver_asks_too_and_a_refusal_ends_both_sides() {
    let s = Scene::new();
    two_files(&s);
    let port = std::net::UdpSocket::bind("127.0.0.1:0")
        .and_then(|u| u.local_addr())
        .expect("a free UDP port")
        .port()
        .to_string();
    let args = [
        "receive",
        "--listen",
        &port,
        "--code",
        "c0de",
        "--out",
        arg(&s.out),
    ];
    let mut rx = OnTerminal::run(&args, s.dir.path().join("rx.log"));
    wait_for(Duration::from_secs(20), "the receiver listening", || {
        Some(()).filter(|()| rx.stderr().contains("ticket"))
    });
    let peer = format!("127.0.0.1:{port}");
    let sender = ChildGuard::spawn(
        Command::new(BIN)
            .args(["send", "--peer", &peer, "--code", "c0de", arg(&s.src)])
            .stdin(Stdio::null()),
    );
    let shown = rx.question();
    assert!(shown.contains("the sender offers 2 files"), "{shown}");
    rx.answer("no");
    let (status, log) = rx.wait();
    let sent = sender.wait(LIMIT);
    assert_eq!(status.code(), Some(EXIT_DECLINED), "{log}");
    assert_eq!(sent.code(), EXIT_DECLINED, "{sent:?}");
    assert_eq!(listing(&s.out), Vec::<String>::new(), "nothing written");
}

#[test]
fn a_sender_waits_for_a_slow_answer_beyond_its_idle_timeout() {
    let (_relay, url) = start_cli_relay(Path::new(BIN), &["--no-tls"]);
    let s = Scene::new();
    write_tree(&s.src, &[FileSpec::random("big.bin", 24 << 20, 3)]);
    let slow = ["--idle-timeout", "1", "--relay-only", "--compress", "off"];
    let sender = send(&url, "slow-answer", &s.src, &slow);
    let mut rx = OnTerminal::start(
        &url,
        "slow-answer",
        &s.out,
        &["--relay-only"],
        s.dir.path().join("rx.log"),
    );
    rx.question();
    // The person at the receiver takes longer than the sender's --idle-timeout.
    std::thread::sleep(Duration::from_millis(2500));
    rx.answer("y");
    let (status, log) = rx.wait();
    let sent = sender.wait(LIMIT);
    assert_eq!(
        (status.code(), sent.code()),
        (Some(0), 0),
        "{log}\n{sent:?}"
    );
    assert_same_tree(&s.src, &s.out.join("src"));
}
