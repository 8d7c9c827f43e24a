//! Every file accounted for, tested as a user meets it: our relay, sender and receiver as
//! processes on 127.0.0.1, real files, a real full disk (a small tmpfs, mounted by the
//! test as root). The sender exits 0 only when the receiver confirmed every file; what
//! is left out, skipped or not stored is named, with its own exit code.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use p2p_copy_tests::binary::cli_binary;
use p2p_copy_tests::process::{start_cli_relay, ChildGuard, Finished};
use p2p_copy_tests::tree::{partial_path, random_bytes};

const LIMIT: Duration = Duration::from_secs(60);
const MIB: u64 = 1024 * 1024;

/// A relay process and the URL it listens on.
struct Relay {
    guard: ChildGuard,
    url: String,
}

fn relay() -> Relay {
    let (guard, url) = start_cli_relay(&cli_binary(), &["--no-tls"]);
    Relay { guard, url }
}

fn cmd(args: &[&str]) -> Command {
    let mut c = Command::new(cli_binary());
    c.args(args);
    c
}

fn send(relay: &Relay, code: &str, extra: &[&str], files: &[&Path]) -> ChildGuard {
    let mut c = cmd(&["send", &relay.url, code, "--timeout", "30"]);
    c.args(extra).args(files);
    ChildGuard::spawn(&mut c)
}

fn receive(relay: &Relay, code: &str, out: &Path) -> ChildGuard {
    let mut c = cmd(&["receive", &relay.url, code, "--timeout", "30", "--out"]);
    c.arg(out);
    ChildGuard::spawn(&mut c)
}

fn pair(
    relay: &Relay,
    code: &str,
    extra: &[&str],
    files: &[&Path],
    out: &Path,
) -> (Finished, Finished) {
    let s = send(relay, code, extra, files);
    let r = receive(relay, code, out);
    (s.wait(LIMIT), r.wait(LIMIT))
}

fn expect(f: &Finished, code: i32, needles: &[&str], who: &str) {
    assert_eq!(f.code(), code, "{who} exit code; stderr:\n{}", f.stderr);
    for n in needles {
        assert!(
            f.stderr.contains(n),
            "{who} stderr lacks {n:?}:\n{}",
            f.stderr
        );
    }
}

/// A tmpfs of `mib` MiB mounted at a new directory, unmounted when dropped.
struct Tmpfs {
    dir: tempfile::TempDir,
}

impl Tmpfs {
    fn mount(mib: u64) -> Tmpfs {
        let dir = tempfile::tempdir().unwrap();
        let out = Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={}k", mib * 1024),
                "tmpfs",
            ])
            .arg(dir.path())
            .output()
            .expect("run mount");
        assert!(
            out.status.success(),
            "this test needs root to mount a small tmpfs as a full disk (CI runs as root): {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Tmpfs { dir }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(self.dir.path()).status();
    }
}

#[test]
fn a_receiver_out_of_space_makes_the_sender_fail_naming_the_cause() {
    let relay = relay();
    let src = tempfile::tempdir().unwrap();
    let a = src.path().join("a.bin");
    let b = src.path().join("b.bin");
    fs::write(&a, random_bytes(3 * MIB, 1)).unwrap();
    fs::write(&b, random_bytes(3 * MIB, 2)).unwrap();
    let disk = Tmpfs::mount(4);
    let (s, r) = pair(&relay, "full disk", &[], &[&a, &b], disk.path());
    expect(&r, 6, &["No space left on device"], "receiver");
    expect(
        &s,
        8,
        &[
            "not delivered",
            "the receiver failed",
            "No space left on device",
        ],
        "sender",
    );
    assert!(!disk.path().join("a.bin").exists() && !disk.path().join("b.bin").exists());
}

#[test]
fn a_directory_in_the_way_is_named_by_both_sides_and_the_other_files_arrive() {
    let relay = relay();
    let src = tempfile::tempdir().unwrap();
    let a = src.path().join("a.txt");
    let b = src.path().join("b.txt");
    fs::write(&a, b"first").unwrap();
    fs::write(&b, b"second").unwrap();
    let out = tempfile::tempdir().unwrap();
    // A non-empty directory holds the final name of b.txt: only the rename can find it.
    fs::create_dir_all(out.path().join("b.txt/inside")).unwrap();
    let (s, r) = pair(&relay, "blocked name", &[], &[&a, &b], out.path());
    expect(&r, 6, &["b.txt", "could not be put in place"], "receiver");
    expect(&s, 8, &["1 file was not delivered", "b.txt"], "sender");
    assert!(
        !s.stderr.contains("a.txt:"),
        "a.txt was delivered:\n{}",
        s.stderr
    );
    assert_eq!(fs::read(out.path().join("a.txt")).unwrap(), b"first");
    assert_eq!(
        fs::read(partial_path(out.path(), "b.txt")).unwrap(),
        b"second",
        "the received data stays under its partial name"
    );
}

#[test]
fn a_confirmed_transfer_says_so_and_exits_0() {
    let relay = relay();
    let src = tempfile::tempdir().unwrap();
    let a = src.path().join("a.bin");
    fs::write(&a, random_bytes(2 * MIB + 3, 3)).unwrap();
    let out = tempfile::tempdir().unwrap();
    for (code, extra) in [
        ("confirm plain", vec![]),
        ("confirm enc", vec!["--encrypt"]),
    ] {
        let s = send(&relay, code, &extra, &[&a]);
        let mut rc = cmd(&["receive", &relay.url, code, "--timeout", "30", "--out"]);
        rc.arg(out.path()).args(&extra);
        let r = ChildGuard::spawn(&mut rc).wait(LIMIT);
        let s = s.wait(LIMIT);
        expect(&r, 0, &[], "receiver");
        expect(&s, 0, &["delivery confirmed"], "sender");
        assert_eq!(
            fs::read(out.path().join("a.bin")).unwrap(),
            fs::read(&a).unwrap()
        );
    }
}

#[test]
fn symlinks_never_hide_a_file_and_never_leak_one_unless_asked() {
    let relay = relay();
    let src = tempfile::tempdir().unwrap();
    fs::write(src.path().join("secret.txt"), b"outside the tree").unwrap();
    let tree = src.path().join("tree");
    fs::create_dir_all(&tree).unwrap();
    fs::write(tree.join("z_real.txt"), b"real").unwrap();
    std::os::unix::fs::symlink("z_real.txt", tree.join("a_link")).unwrap();
    std::os::unix::fs::symlink("../secret.txt", tree.join("leak")).unwrap();
    let fifo = Command::new("mkfifo")
        .arg(tree.join("pipe"))
        .status()
        .unwrap();
    assert!(fifo.success());

    let out = tempfile::tempdir().unwrap();
    let (s, r) = pair(&relay, "links", &[], &[&tree], out.path());
    expect(&r, 0, &[], "receiver");
    expect(
        &s,
        0,
        &[
            "left out",
            "a_link",
            "leak",
            "symbolic link",
            "pipe",
            "FIFO",
        ],
        "sender",
    );
    assert_eq!(
        fs::read(out.path().join("tree/z_real.txt")).unwrap(),
        b"real"
    );
    assert!(!out.path().join("tree/a_link").exists());
    assert!(!out.path().join("tree/leak").exists());
    assert!(!out.path().join("tree/pipe").exists());

    let out = tempfile::tempdir().unwrap();
    let (s, r) = pair(
        &relay,
        "links followed",
        &["--follow-symlinks"],
        &[&tree],
        out.path(),
    );
    expect(&r, 0, &[], "receiver");
    expect(&s, 0, &["pipe"], "sender");
    assert_eq!(
        fs::read(out.path().join("tree/z_real.txt")).unwrap(),
        b"real"
    );
    assert_eq!(fs::read(out.path().join("tree/a_link")).unwrap(), b"real");
    assert_eq!(
        fs::read(out.path().join("tree/leak")).unwrap(),
        b"outside the tree"
    );
}

#[test]
fn a_missing_path_stops_the_sender_before_it_connects_unless_errors_are_skipped() {
    let relay = relay();
    let src = tempfile::tempdir().unwrap();
    let here = src.path().join("here.txt");
    fs::write(&here, b"here").unwrap();
    let missing = src.path().join("missing.txt");

    // No receiver: the sender must not even wait for one.
    let s = send(&relay, "missing strict", &[], &[&here, &missing]).wait(LIMIT);
    expect(&s, 6, &["missing.txt", "--skip-errors"], "sender");

    let out = tempfile::tempdir().unwrap();
    let (s, r) = pair(
        &relay,
        "missing skipped",
        &["--skip-errors"],
        &[&here, &missing],
        out.path(),
    );
    expect(&r, 0, &[], "receiver");
    expect(&s, 8, &["missing.txt", "not delivered"], "sender");
    assert_eq!(fs::read(out.path().join("here.txt")).unwrap(), b"here");
}

/// Start a sender, let it list its files, then change one before a receiver pairs: the
/// sender finds the change when it opens the file.
fn changed_before_sending(extra: &[&str], code: &str) -> (Finished, Finished, PathBuf) {
    let relay = relay();
    let src = tempfile::tempdir().unwrap();
    let a = src.path().join("a.bin");
    let b = src.path().join("b.bin");
    fs::write(&a, random_bytes(MIB + 1, 4)).unwrap();
    fs::write(&b, random_bytes(MIB, 5)).unwrap();
    let s = send(&relay, code, extra, &[&a, &b]);
    // The sender lists its files at once, then waits for a receiver.
    std::thread::sleep(Duration::from_millis(1500));
    let mut grow = fs::OpenOptions::new().append(true).open(&a).unwrap();
    std::io::Write::write_all(&mut grow, b"appended").unwrap();
    drop(grow);
    let out = tempfile::tempdir().unwrap();
    let r = receive(&relay, code, out.path()).wait(LIMIT);
    let s = s.wait(LIMIT);
    let got = out.keep();
    drop(src);
    (s, r, got)
}

#[test]
fn a_file_that_changed_is_never_delivered_as_complete() {
    let (s, r, out) = changed_before_sending(&[], "changed strict");
    expect(
        &s,
        6,
        &["a.bin", "changed while being sent", "--skip-errors"],
        "sender",
    );
    expect(
        &r,
        8,
        &["the sender stopped", "changed while being sent"],
        "receiver",
    );
    assert!(!out.join("a.bin").exists());
    fs::remove_dir_all(out).unwrap();

    let (s, r, out) = changed_before_sending(&["--skip-errors"], "changed skipped");
    expect(&s, 8, &["a.bin", "changed while being sent"], "sender");
    expect(&r, 8, &["a.bin", "not delivered"], "receiver");
    assert!(!out.join("a.bin").exists());
    assert_eq!(fs::read(out.join("b.bin")).unwrap(), random_bytes(MIB, 5));
    fs::remove_dir_all(out).unwrap();
}

#[test]
fn a_killed_relay_is_a_lost_connection_on_both_sides() {
    let mut relay = relay();
    let src = tempfile::tempdir().unwrap();
    let a = src.path().join("a.bin");
    fs::write(&a, random_bytes(MIB, 6)).unwrap();
    // The receiver waits for a sender that never comes; the relay then dies.
    let out = tempfile::tempdir().unwrap();
    let r = receive(&relay, "relay dies", out.path());
    std::thread::sleep(Duration::from_millis(500));
    relay.guard.kill();
    let r = r.wait(LIMIT);
    expect(&r, 7, &["connection lost", "relay"], "receiver");
    assert!(
        !r.stderr.contains("partial"),
        "a receiver that never paired has no partial files:\n{}",
        r.stderr
    );
}
