//! Metadata between two peers of this project: permission bits (never setuid, setgid or
//! sticky), modification times and empty directories, and `--no-metadata` on either
//! side, encrypted, and under --resume. Real processes, a real relay and real files on
//! 127.0.0.1.
#![cfg(unix)]

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use p2p_copy_tests::process::{start_cli_relay, ChildGuard};
use p2p_copy_tests::scene::Scene;

const BIN: &str = env!("CARGO_BIN_EXE_p2p-copy");
const LIMIT: Duration = Duration::from_secs(60);
/// 2001-09-09, well in the past.
const OLD: u64 = 1_000_000_000;

fn arg(p: &Path) -> &str {
    p.to_str().expect("temp paths are UTF-8")
}

fn p2p_copy(args: &[&str]) -> Command {
    let mut cmd = Command::new(BIN);
    cmd.args(args).env_remove("P2P_COPY_RELAY");
    cmd
}

fn mode(p: &Path) -> u32 {
    fs::metadata(p).unwrap().permissions().mode() & 0o7777
}

fn mtime(p: &Path) -> u64 {
    let t = fs::metadata(p).unwrap().modified().unwrap();
    t.duration_since(UNIX_EPOCH).unwrap().as_secs()
}

/// A tree with an executable script, a private file, a setuid file, an old file and
/// two empty directories (one nested).
fn write_source(src: &Path) {
    let set = |name: &str, body: &str, mode: u32| {
        let p = src.join(name);
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        fs::write(&p, body).unwrap();
        fs::set_permissions(&p, fs::Permissions::from_mode(mode)).unwrap();
    };
    set("tree/run.sh", "#!/bin/sh\necho hi\n", 0o755);
    set("tree/secret.txt", "private\n", 0o600);
    set("tree/suid.bin", "not really a program\n", 0o4755);
    set("tree/sub/old.txt", "from long ago\n", 0o644);
    let old = fs::File::options()
        .write(true)
        .open(src.join("tree/sub/old.txt"))
        .unwrap();
    old.set_modified(UNIX_EPOCH + Duration::from_secs(OLD))
        .unwrap();
    fs::create_dir_all(src.join("tree/empty")).unwrap();
    fs::create_dir_all(src.join("tree/sub/nested/empty2")).unwrap();
}

/// Send `tree` from a fresh scene with the extra options on each side; both must
/// succeed. Returns the scene, whose `out/tree` holds what arrived.
fn transfer(code: &str, send_extra: &[&str], receive_extra: &[&str]) -> Scene {
    let s = Scene::new();
    write_source(&s.src);
    run_pair(&s, code, send_extra, receive_extra);
    s
}

/// Send `tree` of the scene `s` with the extra options on each side; both must succeed.
fn run_pair(s: &Scene, code: &str, send_extra: &[&str], receive_extra: &[&str]) {
    let (_relay, url) = start_cli_relay(Path::new(BIN), &["--no-tls"]);
    let tree = s.src.join("tree");
    let mut receive = vec!["receive", &url, code, "--out", arg(&s.out)];
    receive.extend_from_slice(receive_extra);
    let receiver = ChildGuard::spawn(&mut p2p_copy(&receive));
    let mut send = vec!["send", &url, code, arg(&tree)];
    send.extend_from_slice(send_extra);
    let sent = ChildGuard::spawn(&mut p2p_copy(&send)).wait(LIMIT);
    let received = receiver.wait(LIMIT);
    assert_eq!(sent.code(), 0, "{sent:?}");
    assert_eq!(received.code(), 0, "{received:?}");
    for f in ["run.sh", "secret.txt", "suid.bin", "sub/old.txt"] {
        assert_eq!(
            fs::read(s.out.join("tree").join(f)).unwrap(),
            fs::read(tree.join(f)).unwrap(),
            "{f}"
        );
    }
}

#[test]
fn modes_times_and_empty_directories_are_kept_but_never_setuid() {
    for (code, extra) in [
        ("meta-plain", &[][..]),
        ("meta-encrypted", &["--encrypt"][..]),
    ] {
        let s = transfer(code, extra, extra);
        let out = s.out.join("tree");
        assert_eq!(mode(&out.join("run.sh")), 0o755, "{code}");
        assert_eq!(mode(&out.join("secret.txt")), 0o600, "{code}");
        // The setuid bit is dropped, the permission bits are kept.
        assert_eq!(mode(&out.join("suid.bin")), 0o755, "{code}");
        assert_eq!(mtime(&out.join("sub/old.txt")), OLD, "{code}");
        assert!(out.join("empty").is_dir(), "{code}");
        // Directories keep their times too, set after everything inside them.
        for d in ["empty", "sub", "sub/nested"] {
            let src = s.src.join("tree").join(d);
            assert_eq!(mtime(&out.join(d)), mtime(&src), "{code} {d}");
        }
        assert!(out.join("sub/nested/empty2").is_dir(), "{code}");
        assert_eq!(
            fs::read_dir(out.join("empty")).unwrap().count(),
            0,
            "{code}"
        );
    }
}

#[test]
fn no_metadata_on_either_side_keeps_none_of_it() {
    let recent = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
        - 3600;
    for (code, send_extra, receive_extra) in [
        ("meta-off-sender", &["--no-metadata"][..], &[][..]),
        ("meta-off-receiver", &[][..], &["--no-metadata"][..]),
    ] {
        let s = transfer(code, send_extra, receive_extra);
        let out = s.out.join("tree");
        // Every file gets the receiver's default mode: none is executable, and the
        // private file's mode is the others'.
        let default = mode(&out.join("sub/old.txt"));
        assert_eq!(default & 0o7111, 0, "{code}");
        for f in ["run.sh", "secret.txt", "suid.bin"] {
            assert_eq!(mode(&out.join(f)), default, "{code} {f}");
        }
        assert!(mtime(&out.join("sub/old.txt")) > recent, "{code}");
        assert!(!out.join("empty").exists(), "{code}");
        assert!(!out.join("sub/nested").exists(), "{code}");
    }
}

#[test]
fn files_already_there_under_resume_still_get_their_mode_and_time() {
    let s = Scene::new();
    write_source(&s.src);
    // A first run without metadata puts every file in place with default modes.
    run_pair(&s, "meta-resume-1", &["--no-metadata"], &[]);
    let out = s.out.join("tree");
    assert_ne!(mtime(&out.join("sub/old.txt")), OLD);
    // Sent again with --resume: nothing moves, but modes and times arrive.
    run_pair(
        &s,
        "meta-resume-2",
        &["--resume", "--encrypt"],
        &["--encrypt"],
    );
    assert_eq!(mode(&out.join("run.sh")), 0o755);
    assert_eq!(mode(&out.join("secret.txt")), 0o600);
    assert_eq!(mtime(&out.join("sub/old.txt")), OLD);
    assert!(out.join("sub/nested/empty2").is_dir());
}
