//! Codes people can say out loud, as users meet them: `send` without a code prints one
//! and the command that receives it; `receive CODE`, `P2P_COPY_CODE` or a hidden prompt;
//! a wrong code; rooms in use; and the code kept off argv and out of the relay's log.
//! Real processes, relays (ours and p2p-copy 0.1.2's) and files on 127.0.0.1.

use std::fs::{self, File};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use p2p_copy_tests::deadline::wait_for;
use p2p_copy_tests::process::{start_cli_relay, ChildGuard};
use p2p_copy_tests::python;
use p2p_copy_tests::scene::Scene;
use p2p_copy_tests::tree::{assert_same_tree, write_tree, FileSpec};

const BIN: &str = env!("CARGO_BIN_EXE_p2p-copy");
const LIMIT: Duration = Duration::from_secs(60);

fn arg(p: &Path) -> &str {
    p.to_str().expect("temp paths are UTF-8")
}

/// A sender whose stderr goes to a file, so the test can read the code it prints while
/// it waits.
struct Sender {
    child: Child,
    log: PathBuf,
}

impl Sender {
    fn start(relay: &str, extra: &[&str], src: &Path, dir: &Path) -> Sender {
        let log = dir.join(format!("send-{}.log", extra.len()));
        let child = Command::new(BIN)
            .arg("send")
            .args(extra)
            .arg(src)
            .env("P2P_COPY_RELAY", relay)
            .env_remove("P2P_COPY_CODE")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(File::create(&log).expect("sender log"))
            .spawn()
            .expect("spawn sender");
        Sender { child, log }
    }

    fn stderr(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The printed code and the printed receive command.
    fn announced(&self) -> (String, String) {
        wait_for(Duration::from_secs(20), "the sender's code", || {
            let text = self.stderr();
            let code = text.lines().find_map(|l| l.strip_prefix("code: "))?;
            let cmd = text
                .lines()
                .find_map(|l| l.trim().strip_prefix("p2p-copy receive "))?;
            Some((code.to_owned(), cmd.to_owned()))
        })
    }

    fn wait(mut self, limit: Duration) -> (i32, String) {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.child.try_wait().expect("wait sender") {
                return (status.code().expect("sender exited"), self.stderr());
            }
            assert!(
                Instant::now() < deadline,
                "sender still running: {}",
                self.stderr()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Sender {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn receive(relay: &str, args: &[&str], out: &Path, env_code: Option<&str>) -> ChildGuard {
    let mut cmd = Command::new(BIN);
    cmd.arg("receive")
        .args(args)
        .args(["--out", arg(out)])
        .env("P2P_COPY_RELAY", relay)
        .env_remove("P2P_COPY_CODE");
    if let Some(code) = env_code {
        cmd.env("P2P_COPY_CODE", code);
    }
    ChildGuard::spawn(&mut cmd)
}

/// A folder sent with `send DIR` and received with the printed command.
fn generated_code_round_trip(relay: &str) {
    let s = Scene::new();
    write_tree(
        &s.src,
        &[
            FileSpec::random("a.bin", 300_000, 1),
            FileSpec::random("d/b", 10, 2),
        ],
    );
    let sender = Sender::start(relay, &[], &s.src, s.dir.path());
    let (code, command) = sender.announced();
    assert_eq!(
        command, code,
        "with P2P_COPY_RELAY set, the command is `receive CODE`"
    );
    let parts: Vec<&str> = code.split('-').collect();
    assert_eq!(parts.len(), 3, "{code}");
    assert!(
        parts[0]
            .parse::<u32>()
            .is_ok_and(|n| (1..=999).contains(&n)),
        "{code}"
    );
    let received = receive(relay, &[&code], &s.out, None).wait(LIMIT);
    let (sent, stderr) = sender.wait(LIMIT);
    assert_eq!(sent, 0, "sender: {stderr}");
    assert_eq!(received.code(), 0, "receiver: {received:?}");
    assert_same_tree(&s.src, &s.out.join("src"));
}

#[test]
fn a_generated_code_round_trips_through_our_relay() {
    let (_relay, url) = start_cli_relay(Path::new(BIN), &["--no-tls"]);
    generated_code_round_trip(&url);
}

#[test]
fn a_generated_code_round_trips_through_the_python_relay() {
    // p2p-copy 0.1.2's relay accepts the room's URL path and pairs on the room id in
    // hello like any code hash.
    let (_relay, url) = python::start_relay();
    generated_code_round_trip(&url);
}

#[test]
fn more_code_words_make_a_longer_code() {
    let (_relay, url) = start_cli_relay(Path::new(BIN), &["--no-tls"]);
    let s = Scene::new();
    write_tree(&s.src, &[FileSpec::random("f", 10, 1)]);
    let sender = Sender::start(&url, &["--code-words", "4"], &s.src, s.dir.path());
    let (code, _) = sender.announced();
    assert_eq!(code.split('-').count(), 5, "{code}");
}

#[test]
fn a_wrong_code_fails_fast_on_both_sides_with_exit_10() {
    let (_relay, url) = start_cli_relay(Path::new(BIN), &["--no-tls"]);
    let s = Scene::new();
    write_tree(&s.src, &[FileSpec::random("f", 1000, 1)]);
    let sender = Sender::start(&url, &["--code", "41-guitar-rocket"], &s.src, s.dir.path());
    wait_for(Duration::from_secs(20), "the sender waiting", || {
        sender.stderr().contains("waiting").then_some(())
    });
    let started = Instant::now();
    let received = receive(&url, &["41-guitar-racket"], &s.out, None).wait(LIMIT);
    let (sent, stderr) = sender.wait(Duration::from_secs(10));
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(received.code(), 10, "receiver: {received:?}");
    assert_eq!(sent, 10, "sender: {stderr}");
    assert!(
        received.stderr.contains("error: wrong code"),
        "{}",
        received.stderr
    );
    assert!(stderr.contains("error: wrong code"), "{stderr}");
    assert_eq!(
        fs::read_dir(&s.out).map(|d| d.count()).unwrap_or(0),
        0,
        "nothing written"
    );
}

/// The command line of a running process, NUL-separated arguments joined by spaces.
fn argv(pid: u32) -> String {
    fs::read(format!("/proc/{pid}/cmdline"))
        .map(|b| String::from_utf8_lossy(&b).replace('\0', " "))
        .unwrap_or_default()
}

#[test]
fn a_code_from_the_environment_is_not_in_argv_nor_in_the_relays_log() {
    let (relay, url) = start_cli_relay(Path::new(BIN), &["--no-tls", "-v"]);
    let s = Scene::new();
    write_tree(&s.src, &[FileSpec::random("f", 50_000, 1)]);
    let sender = Sender::start(&url, &[], &s.src, s.dir.path());
    let (code, _) = sender.announced();
    let words = code.split_once('-').expect("number-words").1.to_owned();
    assert!(!argv(sender.child.id()).contains(&words), "sender argv");
    let receiver = receive(&url, &[], &s.out, Some(&code));
    // Right after the spawn the kernel may not have put the new command line in place
    // yet (it reads empty): wait until it has.
    let seen = wait_for(
        Duration::from_secs(5),
        "the receiver's command line",
        || Some(argv(receiver.id())).filter(|a| !a.is_empty()),
    );
    assert!(seen.contains("receive") && !seen.contains(&words), "{seen}");
    let received = receiver.wait(LIMIT);
    let (sent, stderr) = sender.wait(LIMIT);
    assert_eq!((sent, received.code()), (0, 0), "{stderr}\n{received:?}");
    assert_same_tree(&s.src, &s.out.join("src"));
    relay.signal("TERM");
    let f = relay.wait(LIMIT);
    let log = format!("{}{}", f.stdout, f.stderr);
    assert!(log.contains("pair"), "the relay logged the pair: {log}");
    assert!(!log.contains(&words), "{log}");
}

#[cfg(target_os = "linux")]
#[test]
fn the_receiver_asks_for_the_code_on_a_terminal_without_echoing_it() {
    use rustix::pty::{grantpt, openpt, ptsname, unlockpt, OpenptFlags};
    let (_relay, url) = start_cli_relay(Path::new(BIN), &["--no-tls"]);
    let s = Scene::new();
    write_tree(&s.src, &[FileSpec::random("f", 20_000, 1)]);
    let sender = Sender::start(&url, &[], &s.src, s.dir.path());
    let (code, _) = sender.announced();
    let words = code.split_once('-').unwrap().1.to_owned();

    let master = openpt(OpenptFlags::RDWR | OpenptFlags::NOCTTY).expect("openpt");
    grantpt(&master).expect("grantpt");
    unlockpt(&master).expect("unlockpt");
    let slave_name = ptsname(&master, Vec::new()).expect("ptsname");
    let slave = File::options()
        .read(true)
        .write(true)
        .open(slave_name.to_str().unwrap())
        .expect("open the pty's slave");
    let mut master = File::from(master);
    let log = s.dir.path().join("receive.log");
    let mut receiver = Command::new(BIN)
        // -y: the transfer itself is accepted without the second question.
        .args(["receive", "-y", "--out", arg(&s.out)])
        .env("P2P_COPY_RELAY", &url)
        .env_remove("P2P_COPY_CODE")
        .stdin(Stdio::from(slave))
        .stdout(Stdio::null())
        .stderr(File::create(&log).unwrap())
        .spawn()
        .expect("spawn receiver");
    wait_for(Duration::from_secs(20), "the prompt", || {
        fs::read_to_string(&log)
            .ok()
            .filter(|t| t.contains("code: "))
    });
    assert!(!argv(receiver.id()).contains(&words));
    master
        .write_all(format!("{code}\n").as_bytes())
        .expect("type the code");
    let status = wait_for(LIMIT, "the receiver", || receiver.try_wait().unwrap());
    let (sent, stderr) = sender.wait(LIMIT);
    assert_eq!(
        status.code(),
        Some(0),
        "{}",
        fs::read_to_string(&log).unwrap()
    );
    assert_eq!(sent, 0, "{stderr}");
    assert_same_tree(&s.src, &s.out.join("src"));
    // What the terminal showed: the code typed was not echoed.
    let mut shown = Vec::new();
    let fd = rustix::fs::fcntl_getfl(&master).unwrap();
    rustix::fs::fcntl_setfl(&master, fd | rustix::fs::OFlags::NONBLOCK).unwrap();
    let _ = master.read_to_end(&mut shown);
    let shown = String::from_utf8_lossy(&shown);
    assert!(!shown.contains(&words), "echoed: {shown:?}");
}

#[test]
fn a_room_in_use_refuses_the_newcomer_and_the_waiting_sender_still_delivers() {
    let (_relay, url) = start_cli_relay(Path::new(BIN), &["--no-tls"]);
    let s = Scene::new();
    write_tree(&s.src, &[FileSpec::random("f", 5000, 1)]);
    let first = Sender::start(&url, &["--code", "5-guitar-rocket"], &s.src, s.dir.path());
    wait_for(Duration::from_secs(20), "the first sender waiting", || {
        first
            .stderr()
            .contains("waiting for the receiver")
            .then_some(())
    });
    let second = Sender::start(&url, &["--code", "5-acid-zoom", "-q"], &s.src, s.dir.path());
    let (code, stderr) = second.wait(Duration::from_secs(10));
    assert_ne!(code, 0);
    assert!(stderr.contains("room 5 is in use"), "{stderr}");
    let received = receive(&url, &["5-guitar-rocket"], &s.out, None).wait(LIMIT);
    let (sent, stderr) = first.wait(LIMIT);
    assert_eq!((sent, received.code()), (0, 0), "{stderr}\n{received:?}");
    assert_same_tree(&s.src, &s.out.join("src"));
    // Once the pair has ended the room can be used again.
    let out2 = s.dir.path().join("again");
    let again = Sender::start(&url, &["--code", "5-tulip-oven"], &s.src, s.dir.path());
    let received = receive(&url, &["5-tulip-oven"], &out2, None).wait(LIMIT);
    let (sent, stderr) = again.wait(LIMIT);
    assert_eq!((sent, received.code()), (0, 0), "{stderr}\n{received:?}");
}

#[test]
fn a_code_of_this_shape_stays_v1_in_the_python_form_and_works_with_python() {
    // `send SERVER CODE FILES…` hashes any code as p2p-copy 0.1.x does, so a Python
    // receiver given the same code gets the files.
    let (_relay, url) = python::start_relay();
    let s = Scene::new();
    write_tree(&s.src, &[FileSpec::random("f", 5000, 1)]);
    let receiver = ChildGuard::spawn(
        python::command(["receive", &url, "7-guitar-rocket", "--out", arg(&s.out)])
            .current_dir(s.dir.path()),
    );
    let sent =
        ChildGuard::spawn(Command::new(BIN).args(["send", &url, "7-guitar-rocket", arg(&s.src)]))
            .wait(LIMIT);
    let received = receiver.wait(LIMIT);
    assert_eq!(
        (sent.code(), received.code()),
        (0, 0),
        "{sent:?}\n{received:?}"
    );
    assert_same_tree(&s.src, &s.out.join("src"));
}
