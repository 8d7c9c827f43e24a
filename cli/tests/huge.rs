//! Huge trees: a file list over the 2 MiB one message holds moves between two copies of
//! this p2p-copy in parts (plain, encrypted, resumed), and a p2p-copy 0.1.2 receiver
//! gets a clear error (exit 12) before any file is sent.

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use p2p_copy_tests::process::{start_cli_relay, ChildGuard, Finished};
use p2p_copy_tests::python;
use p2p_copy_tests::scene::Scene;
use p2p_copy_tests::tree::assert_same_tree;

const BIN: &str = env!("CARGO_BIN_EXE_p2p-copy");
const LIMIT: Duration = Duration::from_secs(90);
/// Files in the tree: with names of about 1,100 bytes their list takes about 2.8 MB.
const FILES: usize = 2_500;

fn spawn(args: &[&str]) -> ChildGuard {
    ChildGuard::spawn(Command::new(BIN).args(args))
}

fn arg(p: &Path) -> &str {
    p.to_str().expect("temp paths are UTF-8")
}

/// `FILES` tiny files (0 to 2 bytes) under four directories of 250-byte names.
fn write_huge_tree(root: &Path) {
    let deep: std::path::PathBuf = ["a", "b", "c", "d"].iter().map(|c| c.repeat(250)).collect();
    let dir = root.join("tree").join(deep);
    fs::create_dir_all(&dir).unwrap();
    for i in 0..FILES {
        let name = format!("{i:05}-{}", "x".repeat(80));
        fs::write(dir.join(name), &b"ok"[..i % 3]).unwrap();
    }
}

fn list_bytes(root: &Path) -> usize {
    let mut n = 0;
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else {
                n += p.strip_prefix(root).unwrap().as_os_str().len() + 20;
            }
        }
    }
    n
}

/// Run a receiver and a sender (with `extra` on both sides, `send_only` on the sender's);
/// both must exit 0.
fn transfer(
    url: &str,
    code: &str,
    s: &Scene,
    extra: &[&str],
    send_only: &[&str],
) -> (Finished, Finished) {
    let mut recv = vec!["receive", url, code, "--out", arg(&s.out), "-y"];
    recv.extend_from_slice(extra);
    let receiver = spawn(&recv);
    let tree = s.src.join("tree");
    let mut send = vec!["send", url, code, arg(&tree)];
    send.extend_from_slice(extra);
    send.extend_from_slice(send_only);
    let sender = spawn(&send).wait(LIMIT);
    let receiver = receiver.wait(LIMIT);
    assert_eq!(sender.code(), 0, "sender: {sender:?}");
    assert_eq!(receiver.code(), 0, "receiver: {receiver:?}");
    (sender, receiver)
}

#[test]
fn a_tree_whose_list_exceeds_2_mib_moves_plain_and_encrypted() {
    let (_relay, url) = start_cli_relay(Path::new(BIN), &["--no-tls"]);
    let s = Scene::new();
    write_huge_tree(&s.src);
    assert!(
        list_bytes(&s.src) > 2 * 1024 * 1024,
        "the list must not fit"
    );
    for (code, extra) in [("huge-plain", &[][..]), ("huge-enc", &["--encrypt"][..])] {
        let _ = fs::remove_dir_all(&s.out);
        fs::create_dir_all(&s.out).unwrap();
        let (sender, _) = transfer(&url, code, &s, extra, &[]);
        assert!(
            sender.stderr.contains("delivery confirmed"),
            "{}",
            sender.stderr
        );
        assert_same_tree(&s.src.join("tree"), &s.out.join("tree"));
    }
}

#[test]
fn a_huge_tree_resumes_with_an_answer_in_parts() {
    let (_relay, url) = start_cli_relay(Path::new(BIN), &["--no-tls"]);
    let s = Scene::new();
    write_huge_tree(&s.src);
    transfer(&url, "huge-first", &s, &[], &[]);
    // Take away every third file: the rest, reported in a resume answer of over 2 MiB,
    // must stay as they are.
    let dir = s.out.join("tree");
    let mut files: Vec<_> = walk(&dir);
    files.sort();
    let kept = files[1].clone();
    let inode = fs::metadata(&kept).unwrap().ino();
    for f in files.iter().step_by(3) {
        fs::remove_file(f).unwrap();
    }
    let (sender, _) = transfer(&url, "huge-again", &s, &[], &["--resume"]);
    assert!(
        sender.stderr.contains("delivery confirmed"),
        "{}",
        sender.stderr
    );
    assert_same_tree(&s.src.join("tree"), &dir);
    assert_eq!(
        fs::metadata(&kept).unwrap().ino(),
        inode,
        "a complete file is skipped, not written again"
    );
}

fn walk(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}

#[test]
fn a_python_receiver_gets_a_clear_error_before_any_file() {
    let (_relay, url) = start_cli_relay(Path::new(BIN), &["--no-tls"]);
    let s = Scene::new();
    write_huge_tree(&s.src);
    let code = "huge-python";
    let receiver = ChildGuard::spawn(&mut python::command([
        "receive",
        &url,
        code,
        "--out",
        arg(&s.out),
    ]));
    let sender = spawn(&["send", &url, code, arg(&s.src.join("tree"))]).wait(LIMIT);
    assert_eq!(sender.code(), 12, "{sender:?}");
    assert!(
        sender.stderr.contains("p2p-copy 0.1.x") && sender.stderr.contains("nothing was sent"),
        "{}",
        sender.stderr
    );
    // It sees the connection close; however it ends, it has no file.
    python::wait_until(receiver, Instant::now() + Duration::from_secs(10));
    assert!(
        !s.out.exists() || walk(&s.out).is_empty(),
        "no file reached the Python receiver"
    );
}
