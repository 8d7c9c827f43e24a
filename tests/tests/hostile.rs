//! Hostile input: one test per kind of input the receiver, the sender and the relay must
//! survive (the list behind docs/SECURITY.md). A scripted peer ([`HostilePeer`]) breaks
//! the protocol on purpose through our relay against our receiver (or sender), and
//! hostile clients attack our relay directly. Every test checks the outcome (the error
//! kind, exit code and a message that names the problem and the file; the relay's close
//! code), that nothing outside the output directory changed, and that no file under its
//! final name holds anything but what was really sent.

use std::collections::BTreeMap;
use std::fs;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use async_tungstenite::tungstenite::{Bytes, Message};
use futures_lite::future;
use p2p_copy_core::chain::resume_chain;
use p2p_copy_core::crypto::code_hash;
use p2p_copy_core::path::escape;
use p2p_copy_core::relay::RelayConfig;
use p2p_copy_core::wire::{self, Compression, Control, DataMessage, ResumeEntry, Role};
use p2p_copy_core::Secrets;
use p2p_copy_tests::deadline::{sleep, within};
use p2p_copy_tests::hostile_peer::{
    chained, file_header, manifest, pieces, sockets_held_on_port, zstd_frame_that_lies,
    zstd_frame_without_content_size, Ending, HostilePeer, Received, Sealer, SendOutcome,
    StandInRelay,
};
use p2p_copy_tests::process::ChildGuard;
use p2p_copy_tests::tree::{random_bytes, write_tree, FileSpec};
use p2p_copy_tests::{
    ClientConfig, CompressMode, Pair, SendOptions, Smol, Summary, TestRelay, TransferError,
};

/// Longest any single wait in these tests may take.
const LIMIT: Duration = Duration::from_secs(10);
const MIB: usize = 1 << 20;

// ---------------------------------------------------------------------------------------
// What must not change: snapshots of directory trees.
// ---------------------------------------------------------------------------------------

#[derive(Debug, Clone, PartialEq, Eq)]
enum Node {
    Dir { mtime: Option<SystemTime> },
    File { bytes: Vec<u8>, mtime: SystemTime },
    Link { target: PathBuf },
}

type Snapshot = BTreeMap<PathBuf, Node>;

/// Every entry below `root` (symlinks not followed), except `skip` and what is below it.
/// With `dir_mtimes`, a directory's mtime is kept too, so an entry created and removed
/// again is noticed.
fn snapshot(root: &Path, skip: Option<&Path>, dir_mtimes: bool) -> Snapshot {
    fn walk(dir: &Path, root: &Path, skip: Option<&Path>, dir_mtimes: bool, out: &mut Snapshot) {
        let mut entries: Vec<_> = fs::read_dir(dir)
            .unwrap_or_else(|e| panic!("read {}: {e}", dir.display()))
            .map(|e| e.expect("dir entry").path())
            .collect();
        entries.sort();
        for path in entries {
            if Some(path.as_path()) == skip {
                continue;
            }
            let rel = path.strip_prefix(root).expect("below root").to_path_buf();
            let meta = fs::symlink_metadata(&path).expect("symlink_metadata");
            let ft = meta.file_type();
            if ft.is_symlink() {
                let target = fs::read_link(&path).expect("read_link");
                out.insert(rel, Node::Link { target });
            } else if ft.is_dir() {
                let mtime = dir_mtimes.then(|| meta.modified().expect("mtime"));
                out.insert(rel, Node::Dir { mtime });
                walk(&path, root, skip, dir_mtimes, out);
            } else {
                let bytes = fs::read(&path).expect("read file");
                let mtime = meta.modified().expect("mtime");
                out.insert(rel, Node::File { bytes, mtime });
            }
        }
    }
    let mut out = Snapshot::new();
    let meta = fs::symlink_metadata(root).expect("root metadata");
    let mtime = dir_mtimes.then(|| meta.modified().expect("mtime"));
    out.insert(PathBuf::new(), Node::Dir { mtime });
    walk(root, root, skip, dir_mtimes, &mut out);
    out
}

/// The directories of one receiving test: `base/out` is the output directory, and
/// everything else below `base` (a sibling `outside/`, a file `x` that `../x` would hit)
/// is outside it and must never change.
struct Scene {
    base: tempfile::TempDir,
    relay: TestRelay,
    outside_before: Snapshot,
    out_before: Snapshot,
}

fn fast_relay() -> RelayConfig {
    RelayConfig {
        hello_timeout: Duration::from_secs(2),
        wait_timeout: Duration::from_secs(20),
        close_grace: Duration::from_millis(300),
        ..RelayConfig::default()
    }
}

impl Scene {
    fn new() -> Scene {
        let base = tempfile::tempdir().expect("tempdir");
        let b = base.path();
        fs::create_dir_all(b.join("out")).unwrap();
        fs::write(b.join("out/keep.txt"), "keep me\n").unwrap();
        fs::create_dir_all(b.join("outside/sub")).unwrap();
        fs::write(b.join("outside/secret.txt"), "top secret\n").unwrap();
        fs::write(b.join("outside/sub/deep.txt"), "deep\n").unwrap();
        fs::write(b.join("x"), "original x\n").unwrap();
        let relay = TestRelay::with_config::<Smol>(fast_relay(), None);
        let mut s = Scene {
            base,
            relay,
            outside_before: Snapshot::new(),
            out_before: Snapshot::new(),
        };
        s.seal();
        s
    }

    fn base(&self) -> &Path {
        self.base.path()
    }

    fn out(&self) -> PathBuf {
        self.base().join("out")
    }

    fn outside(&self) -> PathBuf {
        self.base().join("outside")
    }

    fn url(&self) -> String {
        self.relay.url()
    }

    /// Record the state every later check compares against (call again after adding
    /// something to the output directory on purpose).
    fn seal(&mut self) {
        let out = self.out();
        self.outside_before = snapshot(self.base(), Some(&out), true);
        self.out_before = snapshot(&out, None, false);
    }

    /// Nothing outside the output directory changed, and every entry that was in the
    /// output directory before is still there, unchanged (directories aside, which the
    /// transfer may add to).
    fn assert_untouched(&self) {
        let out = self.out();
        let now = snapshot(self.base(), Some(&out), true);
        assert_eq!(
            now, self.outside_before,
            "something outside the output directory changed"
        );
        let inside = snapshot(&out, None, false);
        for (path, before) in &self.out_before {
            if matches!(before, Node::Dir { .. }) {
                continue;
            }
            assert_eq!(
                inside.get(path),
                Some(before),
                "{} in the output directory was changed",
                path.display()
            );
        }
    }

    /// No file of this name (relative to the output directory) exists, unless it was
    /// there before (and then [`Scene::assert_untouched`] checks it is unchanged).
    fn assert_no_final(&self, rel: &str) {
        if self.out_before.contains_key(Path::new(rel)) {
            return;
        }
        let p = self.out().join(rel);
        assert!(
            fs::symlink_metadata(&p).is_err(),
            "{} exists under its final name after a refused transfer",
            p.display()
        );
    }

    /// Run our receiver against `script` (which plays the sender) and return its result.
    fn receive(
        &self,
        code: &str,
        encrypt: bool,
        script: impl Future<Output = ()>,
    ) -> Result<Summary, TransferError> {
        let mut cfg = ClientConfig::new(self.url(), code);
        cfg.encrypt = encrypt;
        cfg.pair_timeout = LIMIT;
        cfg.idle_timeout = Duration::from_secs(3);
        let receiving = p2p_copy_smol::receive(cfg, self.out(), |_| {});
        let (r, ()) = smol::block_on(within(
            Duration::from_secs(30),
            "hostile session",
            future::zip(receiving, script),
        ));
        r
    }

    /// Our receiver against a plain hostile sender that sends `msgs` after `ready`.
    fn plain(&self, code: &str, msgs: Vec<Message>) -> Result<Summary, TransferError> {
        let url = self.url();
        let c = code.to_owned();
        self.receive(code, false, async move {
            let mut p = HostilePeer::plain_sender(&url, &c, LIMIT).await;
            for m in msgs {
                p.send_message(m).await;
            }
            ended(&mut p).await;
        })
    }
}

/// The hostile side waits until the relay ends its connection (after our client left).
async fn ended(p: &mut HostilePeer) -> Ending {
    p.wait_end(LIMIT)
        .await
        .expect("the session stayed open after the hostile script ended")
}

// ---------------------------------------------------------------------------------------
// Building scripts.
// ---------------------------------------------------------------------------------------

fn text(c: &Control) -> Message {
    Message::text(c.to_json())
}

fn raw(s: &str) -> Message {
    Message::text(s.to_owned())
}

fn bin(b: impl Into<Bytes>) -> Message {
    Message::Binary(b.into())
}

fn man(entries: &[(&str, u64)]) -> Message {
    text(&manifest(entries, false))
}

fn eof() -> Message {
    text(&Control::Eof)
}

fn file_eof() -> Message {
    text(&Control::FileEof)
}

fn header(path: &str, size: u64) -> Message {
    text(&file_header(path, size, Compression::None, 0))
}

/// `file`, the data messages and `file_eof` of a correct sender.
fn whole_file(path: &str, content: &[u8], compression: Compression) -> Vec<Message> {
    let mut v = vec![text(&file_header(
        path,
        content.len() as u64,
        compression,
        0,
    ))];
    v.extend(pieces(content, compression).iter().map(|p| bin(p.encode())));
    v.push(file_eof());
    v
}

/// A manifest of one file, then `file` for it, then `msgs`.
fn one_file_then(path: &str, size: u64, msgs: Vec<Message>) -> Vec<Message> {
    let mut v = vec![man(&[(path, size)]), header(path, size)];
    v.extend(msgs);
    v
}

/// The error of a refused session, checked: exit code, one line, no raw control
/// characters, and every needle present.
fn refused(r: &Result<Summary, TransferError>, exit: i32, needles: &[&str]) -> String {
    let e = match r {
        Ok(s) => panic!("the hostile session was accepted: {s:?} (expected: {needles:?})"),
        Err(e) => e,
    };
    let msg = e.to_string();
    assert_eq!(e.exit_code(), exit, "wrong exit code for: {msg}");
    assert!(!msg.contains('\n'), "message is not one line: {msg:?}");
    assert!(
        !msg.chars().any(char::is_control),
        "message holds raw control characters: {msg:?}"
    );
    for n in needles {
        assert!(msg.contains(n), "message {msg:?} does not mention {n:?}");
    }
    msg
}

// ---------------------------------------------------------------------------------------
// Paths from the peer.
// ---------------------------------------------------------------------------------------

/// Offer `bad` in the manifest (and send it as a file), expecting exit 4 and `why`.
fn refuse_manifest_paths(scene: &Scene, tag: &str, cases: &[(&str, &str)]) {
    for (i, (bad, why)) in cases.iter().enumerate() {
        let mut msgs = vec![man(&[(bad, 5)])];
        msgs.extend(whole_file(bad, b"owned", Compression::None));
        msgs.push(eof());
        let r = scene.plain(&format!("{tag}-{i}"), msgs);
        let shown = escape(bad);
        let needles: Vec<&str> = if bad.is_empty() {
            vec![why]
        } else {
            vec![why, &shown]
        };
        refused(&r, 4, &needles);
        scene.assert_untouched();
    }
}

#[test]
fn receiver_refuses_parent_components() {
    let scene = Scene::new();
    refuse_manifest_paths(
        &scene,
        "parent",
        &[
            ("../x", "'..' component"),
            ("a/../../x", "'..' component"),
            ("a/..", "'..' component"),
            ("../outside/secret.txt", "'..' component"),
        ],
    );
    // A `file` whose path differs from the (safe) manifest entry is refused too.
    let r = scene.plain(
        "parent-file",
        vec![
            man(&[("x", 5)]),
            header("../x", 5),
            bin(pieces(b"owned", Compression::None)[0].encode()),
            file_eof(),
            eof(),
        ],
    );
    refused(&r, 4, &["../x", "not in the manifest"]);
    scene.assert_untouched();
    scene.assert_no_final("x");
}

#[test]
fn receiver_refuses_absolute_paths() {
    let scene = Scene::new();
    let abs_target = scene.outside().join("planted.txt");
    let abs = abs_target.to_str().expect("utf-8 temp path").to_owned();
    let etc_before = fs::symlink_metadata("/etc/x").is_ok();
    refuse_manifest_paths(
        &scene,
        "absolute",
        &[
            ("/etc/x", "absolute path"),
            (abs.as_str(), "absolute path"),
            ("//x", "absolute path"),
        ],
    );
    assert!(!abs_target.exists());
    assert_eq!(
        fs::symlink_metadata("/etc/x").is_ok(),
        etc_before,
        "/etc/x appeared"
    );
}

#[test]
fn receiver_refuses_windows_style_paths() {
    let scene = Scene::new();
    refuse_manifest_paths(
        &scene,
        "windows",
        &[
            ("C:\\x", "Windows-style path"),
            ("C:x", "Windows-style path"),
            ("\\\\server\\share\\x", "Windows-style path"),
            ("a\\..\\x", "Windows-style path"),
            ("..\\x", "Windows-style path"),
        ],
    );
}

#[test]
fn receiver_refuses_empty_paths_and_empty_or_dot_components() {
    let scene = Scene::new();
    refuse_manifest_paths(
        &scene,
        "empty",
        &[
            ("", "empty path"),
            (".", "empty or '.' component"),
            ("./x", "empty or '.' component"),
            ("a//b", "empty or '.' component"),
            ("a/./b", "empty or '.' component"),
            ("a/", "empty or '.' component"),
        ],
    );
}

#[test]
fn receiver_refuses_nul_bytes_in_paths() {
    let scene = Scene::new();
    refuse_manifest_paths(
        &scene,
        "nul",
        &[
            ("a\0b", "NUL byte"),
            ("\0", "NUL byte"),
            ("dir/\0/x", "NUL byte"),
            ("x\0/../../x", "NUL byte"),
        ],
    );
}

#[test]
fn receiver_refuses_overlong_names_and_deep_nesting() {
    let scene = Scene::new();
    let long_name = "n".repeat(256);
    let deep = vec!["d"; 200].join("/");
    let long_total = vec!["p".repeat(250); 20].join("/");
    refuse_manifest_paths(
        &scene,
        "long",
        &[
            (long_name.as_str(), "too long or too deep"),
            (deep.as_str(), "too long or too deep"),
            (long_total.as_str(), "too long or too deep"),
        ],
    );

    // Within the protocol's limits but beyond the operating system's (the whole path
    // passes PATH_MAX once joined to the output directory): a clean local error.
    let too_deep_for_os = vec!["q".repeat(60); 67].join("/");
    assert!(too_deep_for_os.len() < 4096);
    let mut msgs = vec![man(&[(too_deep_for_os.as_str(), 2)])];
    msgs.extend(whole_file(&too_deep_for_os, b"os", Compression::None));
    msgs.push(eof());
    let r = scene.plain("long-os", msgs);
    refused(&r, 6, &["local I/O error"]);
    scene.assert_untouched();
}

#[test]
fn receiver_takes_the_longest_names_and_deepest_nesting_the_protocol_allows() {
    let scene = Scene::new();
    // A 255-byte name (the protocol's and the common filesystems' limit) and 100 levels
    // are ordinary paths: the Python tool receives them, so must we.
    let name255 = "m".repeat(255);
    let deep100 = format!("{}/f.txt", vec!["d"; 99].join("/"));
    let mut msgs = vec![man(&[(deep100.as_str(), 4), (name255.as_str(), 3)])];
    msgs.extend(whole_file(&deep100, b"deep", Compression::None));
    msgs.extend(whole_file(&name255, b"255", Compression::None));
    msgs.push(eof());
    let summary = scene
        .plain("long-ok", msgs)
        .expect("paths within the protocol's limits are taken");
    assert_eq!(summary.files, 2);
    assert_eq!(fs::read(scene.out().join(&deep100)).unwrap(), b"deep");
    assert_eq!(fs::read(scene.out().join(&name255)).unwrap(), b"255");
    scene.assert_untouched();
}

#[cfg(unix)]
#[test]
fn receiver_never_writes_through_symlinks_planted_before_the_transfer() {
    use std::os::unix::fs::symlink;
    let mut scene = Scene::new();
    let out = scene.out();
    let outside = scene.outside();
    symlink(&outside, out.join("linkdir")).unwrap();
    symlink(outside.join("secret.txt"), out.join("linkfile")).unwrap();
    symlink(outside.join("secret.txt"), out.join("final.txt")).unwrap();
    symlink(
        outside.join("secret.txt"),
        out.join(".part.txt.p2p-copy-part"),
    )
    .unwrap();
    fs::create_dir(out.join("nested")).unwrap();
    symlink(&outside, out.join("nested/inner")).unwrap();
    scene.seal();

    let cases: &[(&str, &[&str])] = &[
        ("linkdir/new.txt", &["symlink", "linkdir"]),
        ("linkdir/secret.txt", &["symlink", "linkdir"]),
        ("linkdir/sub/deep.txt", &["symlink", "linkdir"]),
        ("linkfile/x", &["symlink", "linkfile"]),
        ("nested/inner/new.txt", &["symlink", "nested/inner"]),
        ("final.txt", &["symlink", "final.txt"]),
        ("part.txt", &["part.txt"]),
    ];
    for (i, (path, needles)) in cases.iter().enumerate() {
        let mut msgs = vec![man(&[(path, 6)])];
        msgs.extend(whole_file(path, b"owned!", Compression::None));
        msgs.push(eof());
        let r = scene.plain(&format!("planted-{i}"), msgs);
        refused(&r, 6, needles);
        scene.assert_untouched();
    }
    assert_eq!(
        fs::read(outside.join("secret.txt")).unwrap(),
        b"top secret\n"
    );
}

#[test]
fn receiver_refuses_a_manifest_whose_earlier_entry_would_become_a_parent() {
    let mut scene = Scene::new();
    // A file and a directory at the same path, in either order: the transfer can only
    // create regular files, so an earlier entry can never become a link to follow.
    for (i, entries) in [[("d", 3), ("d/x", 3)], [("d/x", 3), ("d", 3)]]
        .iter()
        .enumerate()
    {
        let mut msgs = vec![man(entries)];
        for (p, _) in entries {
            msgs.extend(whole_file(p, b"abc", Compression::None));
        }
        msgs.push(eof());
        let r = scene.plain(&format!("earlier-{i}"), msgs);
        refused(&r, 4, &["also lists its parent d as a file"]);
        scene.assert_untouched();
        scene.assert_no_final("d");
    }

    // A file whose content looks like a link target arrives as a plain regular file...
    let target = scene.outside().to_string_lossy().into_owned();
    let mut msgs = vec![man(&[("looks-like-a-link", target.len() as u64)])];
    msgs.extend(whole_file(
        "looks-like-a-link",
        target.as_bytes(),
        Compression::None,
    ));
    msgs.push(eof());
    scene.plain("earlier-ok", msgs).expect("an ordinary file");
    let meta = fs::symlink_metadata(scene.out().join("looks-like-a-link")).unwrap();
    assert!(
        meta.file_type().is_file(),
        "the transfer created something else than a file"
    );
    scene.seal();

    // ...and a later transfer cannot write below it.
    let mut msgs = vec![man(&[("looks-like-a-link/secret.txt", 3)])];
    msgs.extend(whole_file(
        "looks-like-a-link/secret.txt",
        b"abc",
        Compression::None,
    ));
    msgs.push(eof());
    let r = scene.plain("earlier-later", msgs);
    refused(&r, 6, &["looks-like-a-link", "not a directory"]);
    scene.assert_untouched();
}

#[cfg(unix)]
#[test]
fn receiver_refuses_a_parent_swapped_for_a_symlink_mid_transfer() {
    let scene = Scene::new();
    let out = scene.out();
    let outside = scene.outside();
    let content = random_bytes(2 * MIB as u64, 7);
    let ps = pieces(&content, Compression::None);
    let url = scene.url();
    let part = out.join("d/.a.bin.p2p-copy-part");
    let r = scene.receive("swap", false, async {
        let mut p = HostilePeer::plain_sender(&url, "swap", LIMIT).await;
        p.send_manifest(&[("d/a.bin", content.len() as u64), ("d/b.txt", 3)], false)
            .await;
        p.send_control(&file_header(
            "d/a.bin",
            content.len() as u64,
            Compression::None,
            0,
        ))
        .await;
        p.send_binary(ps[0].encode()).await;
        // Once the receiver has opened its partial file, a local attacker swaps the
        // directory for a link to the outside.
        within(LIMIT, "partial file appears", async {
            while !part.exists() {
                sleep(Duration::from_millis(10)).await;
            }
        })
        .await;
        fs::rename(out.join("d"), out.join("d-moved")).unwrap();
        std::os::unix::fs::symlink(&outside, out.join("d")).unwrap();
        p.send_binary(ps[1].encode()).await;
        p.send_control(&Control::FileEof).await;
        p.send_file("d/b.txt", b"abc", Compression::None).await;
        p.send_control(&Control::Eof).await;
        ended(&mut p).await;
    });
    refused(&r, 6, &["symlink", "d"]);
    scene.assert_untouched();
    assert!(!outside.join("a.bin").exists() && !outside.join("b.txt").exists());
    assert!(
        !out.join("d-moved/a.bin").exists(),
        "the file was put in place anyway"
    );
}

#[test]
fn receiver_refuses_the_same_path_twice() {
    let scene = Scene::new();
    let mut msgs = vec![man(&[("a.txt", 3), ("a.txt", 3)])];
    msgs.extend(whole_file("a.txt", b"one", Compression::None));
    msgs.extend(whole_file("a.txt", b"two", Compression::None));
    msgs.push(eof());
    refused(&scene.plain("twice-manifest", msgs), 4, &["a.txt", "twice"]);
    scene.assert_no_final("a.txt");
    scene.assert_untouched();

    // Listed once, sent twice: the second copy is refused, the first stays as sent.
    let mut msgs = vec![man(&[("b.txt", 3)])];
    msgs.extend(whole_file("b.txt", b"one", Compression::None));
    msgs.extend(whole_file("b.txt", b"two", Compression::None));
    msgs.push(eof());
    refused(
        &scene.plain("twice-file", msgs),
        4,
        &["b.txt", "sent twice"],
    );
    if let Ok(got) = fs::read(scene.out().join("b.txt")) {
        assert_eq!(got, b"one", "the refused second copy replaced the first");
    }
    scene.assert_untouched();
}

#[test]
fn receiver_never_lets_one_entry_overwrite_another_through_its_partial_name() {
    let scene = Scene::new();
    // `.x.p2p-copy-part` is where the receiver keeps `x` while it arrives: an entry of
    // that name must not be silently replaced by the next one.
    let alias = ".x.p2p-copy-part";
    let mut msgs = vec![man(&[(alias, 5), ("x", 5)])];
    msgs.extend(whole_file(alias, b"first", Compression::None));
    msgs.extend(whole_file("x", b"other", Compression::None));
    msgs.push(eof());
    match scene.plain("alias", msgs) {
        Ok(s) => {
            // Either refused, or both arrive as sent.
            let got = |name: &str| {
                fs::read(scene.out().join(name))
                    .map(|b| String::from_utf8_lossy(&b).into_owned())
                    .ok()
            };
            assert_eq!(
                (got(alias).as_deref(), got("x").as_deref()),
                (Some("first"), Some("other")),
                "{} files reported received; ({alias}, x) hold this",
                s.files
            );
        }
        Err(e) => {
            refused(&Err(e), 4, &[alias]);
        }
    }
    scene.assert_untouched();
}

#[test]
fn receiver_refuses_a_path_that_is_a_file_in_one_entry_and_a_directory_in_another() {
    let mut scene = Scene::new();
    for (i, entries) in [
        vec![("top", 3u64), ("top/inner.txt", 3)],
        vec![("a/b/c.txt", 3), ("a/b", 3)],
        vec![("a/b", 3), ("x.txt", 1), ("a/b/c/d.txt", 3)],
    ]
    .iter()
    .enumerate()
    {
        let msgs = vec![man(entries), eof()];
        refused(
            &scene.plain(&format!("filedir-{i}"), msgs),
            4,
            &["also lists its parent"],
        );
        scene.assert_untouched();
    }
    // A directory already in the output directory is not replaced by a file.
    fs::create_dir_all(scene.out().join("existing/dir")).unwrap();
    fs::write(scene.out().join("existing/dir/file.txt"), "inside").unwrap();
    scene.seal();
    let mut msgs = vec![man(&[("existing/dir", 3)])];
    msgs.extend(whole_file("existing/dir", b"abc", Compression::None));
    msgs.push(eof());
    refused(
        &scene.plain("filedir-existing", msgs),
        6,
        &["existing/dir", "directory"],
    );
    scene.assert_untouched();
}

#[test]
fn receiver_keeps_case_and_normalisation_variants_apart() {
    let scene = Scene::new();
    let files: [(&str, &[u8]); 4] = [
        ("Readme.txt", b"mixed"),
        ("README.txt", b"upper"),
        ("caf\u{e9}.txt", b"composed"),
        ("cafe\u{301}.txt", b"decomposed"),
    ];
    let entries: Vec<(&str, u64)> = files.iter().map(|(p, c)| (*p, c.len() as u64)).collect();
    let mut msgs = vec![man(&entries)];
    for (p, c) in &files {
        msgs.extend(whole_file(p, c, Compression::None));
    }
    msgs.push(eof());
    let s = scene
        .plain("variants", msgs)
        .expect("distinct names on this filesystem");
    assert_eq!(s.files, 4);
    for (p, c) in &files {
        assert_eq!(
            fs::read(scene.out().join(p)).unwrap(),
            *c,
            "{p:?} holds another file's bytes"
        );
    }
    scene.assert_untouched();
}

#[test]
fn names_with_terminal_controls_are_never_printed_raw() {
    let scene = Scene::new();
    // In the library's error messages.
    for (i, bad) in [
        "\u{1b}[31mred\u{1b}[0m/../x",
        "\u{202e}txt.exe/../x",
        "a\u{7}\u{9b}b/../x",
    ]
    .iter()
    .enumerate()
    {
        let r = scene.plain(&format!("escape-{i}"), vec![man(&[(bad, 1)]), eof()]);
        let msg = refused(&r, 4, &["'..' component", &escape(bad)]);
        assert!(msg.contains("\\u{"), "{msg:?}");
    }
    scene.assert_untouched();

    // In what the command line prints for files it receives and for a refusal.
    let evil = "evil\u{1b}]0;pwned\u{7}.txt";
    let bidi = "\u{202e}fdp.exe";
    let run_cli = |code: &str, msgs: Vec<Message>| {
        let mut cmd = std::process::Command::new(p2p_copy_tests::binary::cli_binary());
        cmd.args([
            "-v",
            "receive",
            &scene.url(),
            code,
            "--timeout",
            "10",
            "--idle-timeout",
            "3",
            "--out",
        ])
        .arg(scene.out());
        let child = ChildGuard::spawn(&mut cmd);
        let url = scene.url();
        let code = code.to_owned();
        smol::block_on(within(
            Duration::from_secs(20),
            "hostile sender for the CLI",
            async move {
                let mut p = HostilePeer::plain_sender(&url, &code, LIMIT).await;
                for m in msgs {
                    p.send_message(m).await;
                }
                ended(&mut p).await;
            },
        ));
        child.wait(LIMIT)
    };
    let mut msgs = vec![man(&[(evil, 2), (bidi, 3)])];
    msgs.extend(whole_file(evil, b"ok", Compression::None));
    msgs.extend(whole_file(bidi, b"fdp", Compression::None));
    msgs.push(eof());
    let done = run_cli("escape-cli", msgs);
    assert_eq!(done.code(), 0, "{done:?}");
    assert_eq!(fs::read(scene.out().join(evil)).unwrap(), b"ok");
    let refusal = run_cli(
        "escape-cli-bad",
        vec![man(&[("\u{1b}[2J\u{202e}/../z", 1)]), eof()],
    );
    assert_eq!(refusal.code(), 4, "{refusal:?}");
    for out in [&done, &refusal] {
        let all = format!("{}{}", out.stdout, out.stderr);
        for c in ['\u{1b}', '\u{7}', '\u{202e}', '\u{9b}'] {
            assert!(!all.contains(c), "the CLI printed {c:?} raw: {all:?}");
        }
    }
    assert!(
        format!("{}{}", done.stdout, done.stderr).contains("\\u{1b}"),
        "the CLI did not show the received name escaped: {done:?}"
    );
    assert!(refusal.stderr.contains("\\u{202e}"), "{refusal:?}");
    scene.assert_untouched();
}

#[test]
fn sender_ignores_resume_answers_for_paths_it_never_offered() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    let offered = random_bytes(3 * MIB as u64 + 17, 11);
    fs::create_dir_all(&src).unwrap();
    fs::write(src.join("offered.bin"), &offered).unwrap();
    fs::write(src.join("not-offered.txt"), "private notes").unwrap();
    let before = snapshot(dir.path(), None, true);
    let relay = TestRelay::with_config::<Smol>(fast_relay(), None);

    let run = |code: &str, answer: Vec<ResumeEntry>| {
        let mut cfg = ClientConfig::new(relay.url(), code);
        cfg.pair_timeout = LIMIT;
        cfg.idle_timeout = Duration::from_secs(3);
        let opts = SendOptions {
            compress: CompressMode::Off,
            resume: true,
            ..SendOptions::default()
        };
        let sending = p2p_copy_smol::send(cfg, vec![src.join("offered.bin")], opts, |_| {});
        let url = relay.url();
        let hash = code_hash(code, false).unwrap();
        let receiving = async move {
            let mut r = HostilePeer::join(&url, &hash, Role::Receiver).await;
            match r.recv(LIMIT).await {
                Received::Message(Message::Text(t)) => {
                    assert!(t.as_str().contains("offered.bin"), "manifest: {t}")
                }
                other => panic!("expected the manifest, got {other:?}"),
            }
            r.send_control(&Control::ReceiverManifest { entries: answer })
                .await;
            r.collect(LIMIT).await.0
        };
        smol::block_on(within(
            Duration::from_secs(30),
            "sender vs hostile receiver",
            future::zip(sending, receiving),
        ))
    };

    let chain5 = wire::hex(&resume_chain(b"priva").unwrap());
    let (sent, got) = run(
        "unoffered",
        vec![
            ResumeEntry {
                path: "not-offered.txt".into(),
                size: 5,
                chain_hex: chain5.clone(),
            },
            ResumeEntry {
                path: "../src/not-offered.txt".into(),
                size: 5,
                chain_hex: chain5.clone(),
            },
            ResumeEntry {
                path: "/etc/passwd".into(),
                size: 5,
                chain_hex: chain5,
            },
            ResumeEntry {
                path: "offered.bin".into(),
                size: offered.len() as u64 + 1,
                chain_hex: wire::hex(&[0; 32]),
            },
        ],
    );
    let summary = sent.expect("the sender completes, ignoring the bogus answers");
    assert_eq!(summary.files, 1);
    // What went over the wire: exactly the offered file, whole, from byte 0.
    let mut headers = Vec::new();
    let mut data = Vec::new();
    for m in got {
        match m {
            Message::Text(t) => match Control::parse(t.as_str()).unwrap() {
                Control::File(h) => headers.push(h),
                Control::FileEof | Control::Eof => {}
                other => panic!("unexpected {other:?}"),
            },
            Message::Binary(b) => data.extend_from_slice(&DataMessage::decode(b).unwrap().payload),
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(headers.len(), 1, "{headers:?}");
    assert_eq!(
        (headers[0].path.as_str(), headers[0].append_from),
        ("offered.bin", 0)
    );
    assert!(
        data == offered,
        "the data sent is not exactly the offered file"
    );
    assert_eq!(
        snapshot(dir.path(), None, true),
        before,
        "the sender's files changed"
    );

    // A malformed answer ends the session with a clear error.
    let (sent, _) = run(
        "malformed-answer",
        vec![ResumeEntry {
            path: "offered.bin".into(),
            size: 5,
            chain_hex: "zz".into(),
        }],
    );
    refused(&sent, 4, &["offered.bin", "chain_hex"]);
}

#[cfg(unix)]
#[test]
fn receiver_never_hashes_or_reports_files_outside_the_output_directory() {
    use std::os::unix::fs::symlink;
    let mut scene = Scene::new();
    let out = scene.out();
    symlink(scene.outside(), out.join("linkdir")).unwrap();
    symlink(scene.outside().join("secret.txt"), out.join("final.txt")).unwrap();
    scene.seal();
    let abs = scene
        .outside()
        .join("secret.txt")
        .to_string_lossy()
        .into_owned();

    let cases: &[(&str, i32, &[&str])] = &[
        ("../outside/secret.txt", 4, &["'..' component"]),
        (abs.as_str(), 4, &["absolute path"]),
        ("linkdir/secret.txt", 6, &["symlink", "linkdir"]),
        ("final.txt", 6, &["symlink", "final.txt"]),
    ];
    for (i, (path, exit, needles)) in cases.iter().enumerate() {
        let url = scene.url();
        let code = format!("resume-outside-{i}");
        let c = code.clone();
        let mut answers = Vec::new();
        let r = scene.receive(&code, false, async {
            let mut p = HostilePeer::plain_sender(&url, &c, LIMIT).await;
            p.send_manifest(&[(path, 11), ("keep.txt", 8)], true).await;
            answers = p.collect(LIMIT).await.0;
        });
        refused(&r, *exit, needles);
        assert!(
            answers.is_empty(),
            "the receiver answered about {path}: {answers:?}"
        );
        scene.assert_untouched();
    }

    // The same channel does carry an answer for a file inside the output directory: the
    // cases above would have seen one.
    let url = scene.url();
    let mut answer = None;
    let r = scene.receive("resume-inside", false, async {
        let mut p = HostilePeer::plain_sender(&url, "resume-inside", LIMIT).await;
        p.send_manifest(&[("keep.txt", 8)], true).await;
        answer = Some(p.recv(LIMIT).await);
        p.send_control(&Control::Eof).await;
        ended(&mut p).await;
    });
    let s = r.expect("resume of a file the receiver has");
    assert_eq!(s.skipped, 1);
    let Some(Received::Message(Message::Text(t))) = answer else {
        panic!("no resume answer: {answer:?}")
    };
    let expected = Control::ReceiverManifest {
        entries: vec![ResumeEntry {
            path: "keep.txt".into(),
            size: 8,
            chain_hex: wire::hex(&resume_chain(b"keep me\n").unwrap()),
        }],
    };
    assert_eq!(Control::parse(t.as_str()).unwrap(), expected);
    scene.assert_untouched();
}

// ---------------------------------------------------------------------------------------
// Sizes and contents.
// ---------------------------------------------------------------------------------------

/// The partial file of `rel` is no longer than `max` bytes (or absent).
fn assert_part_at_most(scene: &Scene, rel: &str, max: u64) {
    let part = p2p_copy_tests::tree::partial_path(&scene.out(), rel);
    if let Ok(m) = fs::metadata(&part) {
        assert!(
            m.len() <= max,
            "{} grew to {} bytes, over the declared {max}",
            part.display(),
            m.len()
        );
    }
}

#[test]
fn receiver_stops_writing_at_the_declared_size() {
    let scene = Scene::new();
    // One piece longer than the whole file.
    let over = pieces(&[b'o'; 20], Compression::None);
    let r = scene.plain(
        "more-1",
        one_file_then("m.bin", 10, vec![bin(over[0].encode()), file_eof(), eof()]),
    );
    refused(&r, 5, &["m.bin", "holds 20 bytes where 10 were expected"]);
    assert_part_at_most(&scene, "m.bin", 10);
    scene.assert_no_final("m.bin");

    // A piece beyond the last one.
    let content = random_bytes(3 * MIB as u64, 3);
    let declared = MIB as u64 + 5;
    let ps = pieces(&content, Compression::None);
    let msgs = one_file_then(
        "n.bin",
        declared,
        vec![
            bin(ps[0].encode()),
            bin(ps[1].encode()),
            bin(ps[2].encode()),
            file_eof(),
            eof(),
        ],
    );
    let r = scene.plain("more-2", msgs);
    refused(&r, 5, &["n.bin"]);
    assert_part_at_most(&scene, "n.bin", declared);
    scene.assert_no_final("n.bin");

    // Data for an empty file.
    let one = pieces(b"!", Compression::None);
    let r = scene.plain(
        "more-3",
        one_file_then("e.bin", 0, vec![bin(one[0].encode()), file_eof(), eof()]),
    );
    refused(&r, 5, &["e.bin", "holds 1 bytes where 0 were expected"]);
    assert_part_at_most(&scene, "e.bin", 0);
    scene.assert_no_final("e.bin");

    // A compressed piece that expands beyond the declared size.
    let z = pieces(&[b'z'; 20], Compression::Zstd);
    let msgs = vec![
        man(&[("z.bin", 10)]),
        text(&file_header("z.bin", 10, Compression::Zstd, 0)),
        bin(z[0].encode()),
        file_eof(),
        eof(),
    ];
    refused(&scene.plain("more-4", msgs), 5, &["z.bin", "20 bytes"]);
    assert_part_at_most(&scene, "z.bin", 10);
    scene.assert_no_final("z.bin");
    scene.assert_untouched();
}

#[test]
fn receiver_refuses_less_data_than_declared() {
    let scene = Scene::new();
    let content = random_bytes(2 * MIB as u64, 5);
    let ps = pieces(&content, Compression::None);
    let r = scene.plain(
        "less-1",
        one_file_then(
            "l.bin",
            content.len() as u64,
            vec![bin(ps[0].encode()), file_eof(), eof()],
        ),
    );
    refused(&r, 5, &["l.bin", "1 of 2 pieces"]);
    scene.assert_no_final("l.bin");

    let half = pieces(&[b'h'; 50], Compression::None);
    let r = scene.plain(
        "less-2",
        one_file_then("h.bin", 100, vec![bin(half[0].encode()), file_eof(), eof()]),
    );
    refused(&r, 5, &["h.bin", "holds 50 bytes where 100 were expected"]);
    scene.assert_no_final("h.bin");

    let r = scene.plain(
        "less-3",
        one_file_then("z.bin", 10, vec![file_eof(), eof()]),
    );
    refused(&r, 5, &["z.bin", "0 of 1 pieces"]);
    scene.assert_no_final("z.bin");

    // Listed, never sent.
    let r = scene.plain("less-4", vec![man(&[("never.bin", 10)]), eof()]);
    refused(&r, 4, &["never.bin", "without sending this file"]);
    scene.assert_no_final("never.bin");
    scene.assert_untouched();
}

#[test]
fn receiver_refuses_negative_and_absurd_sizes() {
    let scene = Scene::new();
    for (i, m) in [
        r#"{"type":"manifest","resume":false,"entries":[{"path":"a","size":-1}]}"#,
        r#"{"type":"manifest","resume":false,"entries":[{"path":"a","size":1000.0}]}"#,
        r#"{"type":"manifest","resume":false,"entries":[{"path":"a","size":"10"}]}"#,
        r#"{"type":"manifest","resume":false,"entries":[{"path":"a","size":18446744073709551616}]}"#,
        r#"{"type":"manifest","resume":false,"entries":[{"path":"a","size":1e30}]}"#,
    ]
    .iter()
    .enumerate()
    {
        refused(&scene.plain(&format!("size-json-{i}"), vec![raw(m), eof()]), 4, &["bad control message"]);
    }
    let r = scene.plain(
        "size-file-negative",
        vec![
            man(&[("a", 3)]),
            raw(r#"{"type":"file","path":"a","size":-3,"compression":"none","append_from":0}"#),
            eof(),
        ],
    );
    refused(&r, 4, &["bad control message"]);

    // Sizes that fit the type but no disk: nothing is reserved up front, the session
    // fails cleanly when the data stops, and what was written is what arrived.
    let piece = pieces(&random_bytes(MIB as u64, 9), Compression::None);
    let r = scene.plain(
        "size-max",
        vec![
            man(&[("huge", u64::MAX)]),
            header("huge", u64::MAX),
            bin(piece[0].encode()),
            file_eof(),
            eof(),
        ],
    );
    refused(
        &r,
        5,
        &[
            "huge",
            "less data than the declared 18446744073709551615 bytes",
        ],
    );
    assert_part_at_most(&scene, "huge", MIB as u64);
    scene.assert_no_final("huge");

    // Sizes whose total overflows.
    let r = scene.plain(
        "size-sum",
        vec![
            man(&[("big1", u64::MAX), ("big2", u64::MAX), ("one", 1)]),
            header("big1", u64::MAX),
            bin(piece[0].encode()),
            file_eof(),
            eof(),
        ],
    );
    refused(&r, 5, &["big1"]);
    scene.assert_no_final("big1");
    scene.assert_untouched();
}

#[test]
fn receiver_refuses_append_from_beyond_size_or_local_copy() {
    let mut scene = Scene::new();
    let have = b"0123456789";
    fs::write(scene.out().join("have.txt"), have).unwrap();
    scene.seal();

    let r = scene.plain(
        "append-1",
        vec![
            man(&[("a.txt", 10)]),
            text(&file_header("a.txt", 10, Compression::None, 11)),
            file_eof(),
            eof(),
        ],
    );
    refused(&r, 4, &["a.txt", "append_from 11 is beyond the size 10"]);
    let r = scene.plain(
        "append-2",
        vec![
            man(&[("m", u64::MAX)]),
            text(&file_header("m", u64::MAX, Compression::None, u64::MAX)),
            file_eof(),
            eof(),
        ],
    );
    refused(&r, 4, &["m", "no verified copy"]);
    // Appending without a resume answer: there is nothing verified to append to.
    let tail = pieces(b"abcdefghij", Compression::None);
    let r = scene.plain(
        "append-3",
        vec![
            man(&[("have.txt", 20)]),
            text(&file_header("have.txt", 20, Compression::None, 10)),
            bin(tail[0].encode()),
            file_eof(),
            eof(),
        ],
    );
    refused(&r, 4, &["have.txt", "no verified copy"]);
    scene.assert_untouched();

    // With a resume answer of 10 bytes, appending at 7 or at 20 is refused, and the
    // local copy stays as it was.
    for (i, at) in [7u64, 20, 3].iter().enumerate() {
        let url = scene.url();
        let code = format!("append-resume-{i}");
        let c = code.clone();
        let at = *at;
        let r = scene.receive(&code, false, async move {
            let mut p = HostilePeer::plain_sender(&url, &c, LIMIT).await;
            p.send_manifest(&[("have.txt", 20)], true).await;
            match p.recv(LIMIT).await {
                Received::Message(Message::Text(t)) => {
                    assert!(t.as_str().contains("\"size\":10"), "{t}")
                }
                other => panic!("no resume answer: {other:?}"),
            }
            let rest = pieces(&[b'r'; 20][..(20 - at.min(20)) as usize], Compression::None);
            p.send_control(&file_header("have.txt", 20, Compression::None, at))
                .await;
            p.send_binary(rest[0].encode()).await;
            p.send_control(&Control::FileEof).await;
            p.send_control(&Control::Eof).await;
            ended(&mut p).await;
        });
        refused(&r, 4, &["have.txt", &format!("append at byte {at}")]);
        scene.assert_untouched();
    }

    // Appending at the verified length, then sending too little: the session fails and
    // the complete local copy under the final name is untouched.
    let url = scene.url();
    let r = scene.receive("append-short", false, async move {
        let mut p = HostilePeer::plain_sender(&url, "append-short", LIMIT).await;
        p.send_manifest(&[("have.txt", 20)], true).await;
        let _ = p.recv(LIMIT).await;
        let rest = pieces(b"abcde", Compression::None);
        p.send_control(&file_header("have.txt", 20, Compression::None, 10))
            .await;
        p.send_binary(rest[0].encode()).await;
        p.send_control(&Control::FileEof).await;
        p.send_control(&Control::Eof).await;
        ended(&mut p).await;
    });
    refused(&r, 5, &["have.txt", "holds 5 bytes where 10 were expected"]);
    scene.assert_untouched();
}

fn compressed_file(path: &str, size: u64, payloads: Vec<Bytes>) -> Vec<Message> {
    let mut v = vec![
        man(&[(path, size)]),
        text(&file_header(path, size, Compression::Zstd, 0)),
    ];
    v.extend(chained(payloads).iter().map(|p| bin(p.encode())));
    v.push(file_eof());
    v.push(eof());
    v
}

#[test]
fn receiver_caps_decompression_at_the_piece_size() {
    let scene = Scene::new();
    let bomb = Bytes::from(p2p_copy_core::compress::compress(&vec![0u8; 64 * MIB]));
    assert!(bomb.len() < 64 * 1024, "a bomb is small on the wire");
    let r = scene.plain(
        "bomb-1",
        compressed_file("bomb.bin", 64 * MIB as u64, vec![bomb.clone()]),
    );
    refused(&r, 5, &["bomb.bin", "would expand to 67108864 bytes"]);
    assert_part_at_most(&scene, "bomb.bin", 0);
    scene.assert_no_final("bomb.bin");

    let r = scene.plain("bomb-2", compressed_file("small.bin", 10, vec![bomb]));
    refused(&r, 5, &["small.bin", "would expand to 67108864 bytes"]);
    scene.assert_no_final("small.bin");

    // A frame whose header understates what its blocks expand to.
    let liar = Bytes::from(zstd_frame_that_lies(10, 64 * MIB, 0));
    let r = scene.plain("bomb-3", compressed_file("liar.bin", 10, vec![liar]));
    refused(&r, 5, &["liar.bin", "zstd"]);
    assert_part_at_most(&scene, "liar.bin", 10);
    scene.assert_no_final("liar.bin");
    scene.assert_untouched();
}

#[test]
fn receiver_refuses_zstd_frames_without_content_size() {
    let scene = Scene::new();
    let frame = Bytes::from(zstd_frame_without_content_size(b"abcdef"));
    let r = scene.plain("nosize", compressed_file("nosize.bin", 6, vec![frame]));
    refused(&r, 5, &["nosize.bin", "without a content size"]);
    scene.assert_no_final("nosize.bin");
    scene.assert_untouched();
}

#[test]
fn receiver_refuses_corrupt_zstd_frames() {
    let scene = Scene::new();
    let data = b"some compressible text, some compressible text, some compressible text".repeat(20);
    let good = p2p_copy_core::compress::compress(&data);
    let mut trailing = good.clone();
    trailing.push(0);
    let truncated = good[..good.len() - 3].to_vec();
    let mut bad_magic = good.clone();
    bad_magic[0] ^= 0xff;
    for (i, payload) in [
        b"not zstd at all".to_vec(),
        trailing,
        truncated,
        bad_magic,
        Vec::new(),
    ]
    .into_iter()
    .enumerate()
    {
        let r = scene.plain(
            &format!("corrupt-{i}"),
            compressed_file("c.bin", data.len() as u64, vec![Bytes::from(payload)]),
        );
        refused(&r, 5, &["c.bin"]);
        scene.assert_no_final("c.bin");
    }
    scene.assert_untouched();
}

#[test]
fn receiver_refuses_unknown_compression_values() {
    let scene = Scene::new();
    for (i, c) in [
        r#""gzip""#,
        r#""""#,
        r#""ZSTD""#,
        "5",
        "null",
        r#""none ""#,
        "[]",
    ]
    .iter()
    .enumerate()
    {
        let h = format!(
            r#"{{"type":"file","path":"c.txt","size":3,"compression":{c},"append_from":0}}"#
        );
        let msgs = vec![
            man(&[("c.txt", 3)]),
            raw(&h),
            bin(pieces(b"abc", Compression::None)[0].encode()),
            file_eof(),
            eof(),
        ];
        refused(
            &scene.plain(&format!("compression-{i}"), msgs),
            4,
            &["bad control message"],
        );
        scene.assert_no_final("c.txt");
    }
    scene.assert_untouched();
}

#[test]
fn receiver_refuses_wrong_and_repeated_seq() {
    let scene = Scene::new();
    let content = random_bytes(2 * MIB as u64 + 1, 21);
    let ps = pieces(&content, Compression::None);
    let size = content.len() as u64;
    let cases: Vec<(Vec<Message>, &str)> = vec![
        (
            vec![bin(ps[1].encode())],
            "piece 1 arrived where piece 0 was expected",
        ),
        (
            vec![bin(ps[0].encode()), bin(ps[0].encode())],
            "piece 0 arrived where piece 1 was expected",
        ),
        (
            vec![bin(DataMessage::encode(
                u64::MAX,
                &ps[0].chain,
                &ps[0].payload,
            ))],
            "piece 18446744073709551615 arrived",
        ),
        (
            vec![bin(ps[0].encode()), bin(ps[2].encode())],
            "piece 2 arrived where piece 1 was expected",
        ),
    ];
    for (i, (data, why)) in cases.into_iter().enumerate() {
        let mut msgs = data;
        msgs.extend([file_eof(), eof()]);
        let r = scene.plain(&format!("seq-{i}"), one_file_then("s.bin", size, msgs));
        refused(&r, 5, &["s.bin", why]);
        scene.assert_no_final("s.bin");
    }
    scene.assert_untouched();
}

#[test]
fn receiver_refuses_a_wrong_chain() {
    let scene = Scene::new();
    let content = random_bytes(MIB as u64 + 100, 22);
    let ps = pieces(&content, Compression::None);
    let size = content.len() as u64;
    // Piece 1 chained as if it were the first piece.
    let restarted = chained([ps[1].payload.clone()]);
    let other = pieces(&random_bytes(MIB as u64, 23), Compression::None);
    let cases: Vec<(Vec<Message>, &str)> = vec![
        (
            vec![bin(DataMessage::encode(0, &[0; 32], &ps[0].payload))],
            "chain mismatch at piece 0",
        ),
        (
            vec![bin(DataMessage::encode(0, &other[0].chain, &ps[0].payload))],
            "chain mismatch at piece 0",
        ),
        (
            vec![
                bin(ps[0].encode()),
                bin(DataMessage::encode(1, &restarted[0].chain, &ps[1].payload)),
            ],
            "chain mismatch at piece 1",
        ),
    ];
    for (i, (data, why)) in cases.into_iter().enumerate() {
        let mut msgs = data;
        msgs.extend([file_eof(), eof()]);
        let r = scene.plain(&format!("chain-{i}"), one_file_then("c.bin", size, msgs));
        refused(&r, 5, &["c.bin", why]);
        scene.assert_no_final("c.bin");
    }
    scene.assert_untouched();
}

#[test]
fn receiver_refuses_truncated_data_messages() {
    let scene = Scene::new();
    for (i, len) in [0usize, 1, 39].iter().enumerate() {
        let r = scene.plain(
            &format!("short-{i}"),
            one_file_then("t.bin", 3, vec![bin(vec![0u8; *len]), file_eof(), eof()]),
        );
        refused(
            &r,
            4,
            &[
                "t.bin",
                &format!("data message of {len} bytes is shorter than its 40-byte header"),
            ],
        );
        scene.assert_no_final("t.bin");
    }
    scene.assert_untouched();
}

#[test]
fn receiver_refuses_data_before_file() {
    let scene = Scene::new();
    let p = bin(pieces(b"abc", Compression::None)[0].encode());
    let mut after_eof = vec![man(&[("a.txt", 3), ("b.txt", 3)])];
    after_eof.extend(whole_file("a.txt", b"abc", Compression::None));
    after_eof.extend([p.clone(), eof()]);
    for (i, msgs) in [
        vec![p.clone(), man(&[("a.txt", 3)]), eof()],
        vec![man(&[("a.txt", 3)]), p.clone(), eof()],
        after_eof,
    ]
    .into_iter()
    .enumerate()
    {
        refused(
            &scene.plain(&format!("early-data-{i}"), msgs),
            4,
            &["data message outside a file"],
        );
        scene.assert_no_final("b.txt");
    }
    scene.assert_untouched();
}

#[test]
fn receiver_refuses_file_while_a_file_is_open() {
    let scene = Scene::new();
    let content = random_bytes(2 * MIB as u64, 31);
    let ps = pieces(&content, Compression::None);
    let msgs = vec![
        man(&[("a.bin", content.len() as u64), ("b.txt", 3)]),
        header("a.bin", content.len() as u64),
        bin(ps[0].encode()),
        header("b.txt", 3),
        bin(pieces(b"abc", Compression::None)[0].encode()),
        file_eof(),
        eof(),
    ];
    refused(
        &scene.plain("open-twice", msgs),
        4,
        &["a.bin", "a new file (b.txt) started before this one ended"],
    );
    scene.assert_no_final("a.bin");
    scene.assert_no_final("b.txt");
    scene.assert_untouched();
}

#[test]
fn receiver_refuses_file_eof_without_a_file() {
    let scene = Scene::new();
    let mut twice = vec![man(&[("a.txt", 3)])];
    twice.extend(whole_file("a.txt", b"abc", Compression::None));
    twice.extend([file_eof(), eof()]);
    for (i, msgs) in [vec![man(&[("a.txt", 3)]), file_eof(), eof()], twice]
        .into_iter()
        .enumerate()
    {
        refused(
            &scene.plain(&format!("stray-eof-{i}"), msgs),
            4,
            &["file_eof outside a file"],
        );
    }
    scene.assert_untouched();
}

#[test]
fn receiver_refuses_malformed_control_messages() {
    let scene = Scene::new();
    let bad = [
        "not json",
        "",
        "[1,2]",
        "42",
        "\"manifest\"",
        "null",
        "{}",
        r#"{"type":5}"#,
        r#"{"type":"explode"}"#,
        r#"{"type":"manifest","entries":"x"}"#,
        r#"{"type":"manifest","entries":[{"path":"a"}]}"#,
        r#"{"type":"manifest","entries":[{"path":5,"size":1}]}"#,
        r#"{"type":"manifest","resume":"yes","entries":[]}"#,
        r#"{"type":"file","path":"a"}"#,
        r#"{"type":"file","size":1}"#,
        r#"{"type":"file","path":"a","size":"1"}"#,
        r#"{"type":"file","path":"a","size":1,"append_from":-1}"#,
        r#"{"type":"manifest","resume":false,"entries":[]"#,
    ];
    for (i, m) in bad.iter().enumerate() {
        // Before the manifest...
        refused(
            &scene.plain(&format!("malformed-a{i}"), vec![raw(m), eof()]),
            4,
            &["bad control message"],
        );
        // ...and in the middle of a session.
        let msgs = vec![man(&[("a", 1)]), raw(m), eof()];
        refused(
            &scene.plain(&format!("malformed-b{i}"), msgs),
            4,
            &["bad control message"],
        );
    }
    // Well-formed messages the sender never sends, or sends at the wrong time.
    let wrong = [
        (vec![raw(r#"{"type":"ready"}"#)], "unexpected ready message"),
        (
            vec![raw(
                r#"{"type":"hello","code_hash_hex":"ab","role":"sender"}"#,
            )],
            "unexpected hello message",
        ),
        (
            vec![
                man(&[]),
                raw(r#"{"type":"receiver_manifest","entries":[]}"#),
            ],
            "unexpected receiver_manifest message",
        ),
        (
            vec![man(&[("a", 1)]), man(&[("b", 1)])],
            "unexpected manifest message",
        ),
        (vec![header("a", 1)], "unexpected file message"),
        (vec![eof()], "unexpected eof message"),
    ];
    for (i, (mut msgs, why)) in wrong.into_iter().enumerate() {
        msgs.push(eof());
        refused(&scene.plain(&format!("wrong-time-{i}"), msgs), 4, &[why]);
    }
    scene.assert_untouched();
}

// ---------------------------------------------------------------------------------------
// Encrypted mode.
// ---------------------------------------------------------------------------------------

/// Derived once per code: Argon2id is slow on purpose.
fn secrets(code: &str) -> Secrets {
    Secrets::derive(code, true).expect("derive secrets")
}

/// Our encrypting receiver against a hostile encrypting sender: `script` gets the peer
/// (after `ready`) and a sealer for the key of `key`, which may differ from `code`.
fn encrypted<F, Fut>(
    scene: &Scene,
    code: &str,
    pair: &Secrets,
    key: &Secrets,
    script: F,
) -> Result<Summary, TransferError>
where
    F: FnOnce(HostilePeer, Sealer) -> Fut,
    Fut: Future<Output = HostilePeer>,
{
    let url = scene.url();
    let hash = pair.code_hash;
    let sealer = Sealer::new(key, [42; 32]);
    scene.receive(code, true, async move {
        let mut p = HostilePeer::join(&url, &hash, Role::Sender).await;
        p.wait_ready(LIMIT).await;
        let mut p = script(p, sealer).await;
        ended(&mut p).await;
    })
}

fn flip_hex(hex: &str, at_end: bool) -> String {
    let mut b = wire::unhex(hex).expect("hex");
    let i = if at_end { b.len() - 1 } else { 0 };
    b[i] ^= 1;
    wire::hex(&b)
}

#[test]
fn encrypted_receiver_refuses_a_wrong_key() {
    let scene = Scene::new();
    let right = secrets("enc-wrong-key");
    let wrong = secrets("another code entirely");
    let r = encrypted(
        &scene,
        "enc-wrong-key",
        &right,
        &wrong,
        |mut p, mut s| async move {
            p.send_control(&s.manifest(&manifest(&[("w.txt", 3)], false)))
                .await;
            p.send_control(&s.file(&file_header("w.txt", 3, Compression::None, 0)))
                .await;
            p.send_control(&Control::Eof).await;
            p
        },
    );
    refused(&r, 5, &["encrypted manifest does not decrypt"]);
    scene.assert_no_final("w.txt");
    scene.assert_untouched();
}

#[test]
fn encrypted_receiver_refuses_flipped_bits() {
    let scene = Scene::new();
    let code = "enc-flip";
    let k = secrets(code);
    let m = manifest(&[("f.txt", 5)], false);
    let h = file_header("f.txt", 5, Compression::None, 0);
    let piece = pieces(b"hello", Compression::None).remove(0);

    for at_end in [false, true] {
        // In the manifest's ciphertext (first byte) or tag (last byte).
        let r = encrypted(&scene, code, &k, &k, |mut p, mut s| {
            let m = m.clone();
            async move {
                let Control::EncManifest {
                    nonce,
                    hidden_manifest,
                } = s.manifest(&m)
                else {
                    unreachable!()
                };
                let bad = Control::EncManifest {
                    nonce,
                    hidden_manifest: flip_hex(&hidden_manifest, at_end),
                };
                p.send_control(&bad).await;
                p.send_control(&Control::Eof).await;
                p
            }
        });
        refused(&r, 5, &["encrypted manifest does not decrypt"]);
        // In the file header.
        let r = encrypted(&scene, code, &k, &k, |mut p, mut s| {
            let (m, h) = (m.clone(), h.clone());
            async move {
                p.send_control(&s.manifest(&m)).await;
                let Control::EncFile { hidden_file } = s.file(&h) else {
                    unreachable!()
                };
                p.send_control(&Control::EncFile {
                    hidden_file: flip_hex(&hidden_file, at_end),
                })
                .await;
                p.send_control(&Control::Eof).await;
                p
            }
        });
        refused(&r, 5, &["encrypted file header does not decrypt"]);
        // In a data payload.
        let r = encrypted(&scene, code, &k, &k, |mut p, mut s| {
            let (m, h, piece) = (m.clone(), h.clone(), piece.clone());
            async move {
                p.send_control(&s.manifest(&m)).await;
                p.send_control(&s.file(&h)).await;
                let mut frame = piece.seal(&mut s).to_vec();
                let i = if at_end {
                    frame.len() - 1
                } else {
                    wire::DATA_HEADER_LEN
                };
                frame[i] ^= 1;
                p.send_binary(frame).await;
                p.send_control(&Control::FileEof).await;
                p.send_control(&Control::Eof).await;
                p
            }
        });
        refused(&r, 5, &["f.txt", "does not decrypt"]);
        scene.assert_no_final("f.txt");
    }
    scene.assert_untouched();
}

#[test]
fn encrypted_receiver_refuses_plain_messages() {
    let scene = Scene::new();
    let code = "enc-plain";
    let k = secrets(code);
    let m = manifest(&[("p.txt", 5)], false);
    let h = file_header("p.txt", 5, Compression::None, 0);
    let piece = pieces(b"hello", Compression::None).remove(0);

    let r = encrypted(&scene, code, &k, &k, |mut p, _| {
        let m = m.clone();
        async move {
            p.send_control(&m).await;
            p.send_control(&Control::Eof).await;
            p
        }
    });
    refused(&r, 4, &["plain manifest message to an encrypting receiver"]);

    let r = encrypted(&scene, code, &k, &k, |mut p, mut s| {
        let (m, h) = (m.clone(), h.clone());
        async move {
            p.send_control(&s.manifest(&m)).await;
            p.send_control(&h).await;
            p.send_control(&Control::Eof).await;
            p
        }
    });
    refused(&r, 4, &["plain file message to an encrypting receiver"]);

    // A plain data payload where a sealed one is due.
    let r = encrypted(&scene, code, &k, &k, |mut p, mut s| {
        let (m, h) = (m.clone(), h.clone());
        async move {
            p.send_control(&s.manifest(&m)).await;
            p.send_control(&s.file(&h)).await;
            p.send_binary(piece.encode()).await;
            p.send_control(&Control::FileEof).await;
            p.send_control(&Control::Eof).await;
            p
        }
    });
    refused(&r, 5, &["p.txt", "does not decrypt"]);
    scene.assert_no_final("p.txt");
    scene.assert_untouched();
}

#[test]
fn encrypted_receiver_refuses_replayed_and_reordered_messages() {
    let scene = Scene::new();
    let code = "enc-replay";
    let k = secrets(code);
    let two = random_bytes(MIB as u64 + 10, 41);
    let m = manifest(&[("a.bin", two.len() as u64), ("b.bin", 3)], false);
    let ha = file_header("a.bin", two.len() as u64, Compression::None, 0);
    let ps = pieces(&two, Compression::None);

    // The header of a.bin replayed for b.bin.
    let r = encrypted(&scene, code, &k, &k, |mut p, mut s| {
        let (m, ha, ps) = (m.clone(), ha.clone(), ps.clone());
        async move {
            p.send_control(&s.manifest(&m)).await;
            let enc_a = s.file(&ha);
            p.send_control(&enc_a).await;
            for piece in &ps {
                p.send_binary(piece.seal(&mut s)).await;
            }
            p.send_control(&Control::FileEof).await;
            p.send_control(&enc_a).await;
            p.send_control(&Control::Eof).await;
            p
        }
    });
    refused(&r, 5, &["encrypted file header does not decrypt"]);
    scene.assert_no_final("b.bin");
    // The first data message replayed as the second, with its seq rewritten.
    let r = encrypted(&scene, code, &k, &k, |mut p, mut s| {
        let (m, ha, ps) = (m.clone(), ha.clone(), ps.clone());
        async move {
            p.send_control(&s.manifest(&m)).await;
            p.send_control(&s.file(&ha)).await;
            let first = DataMessage::decode(ps[0].seal(&mut s)).unwrap();
            p.send_binary(DataMessage::encode(0, &first.chain, &first.payload))
                .await;
            p.send_binary(DataMessage::encode(1, &ps[1].chain, &first.payload))
                .await;
            p.send_control(&Control::FileEof).await;
            p.send_control(&Control::Eof).await;
            p
        }
    });
    refused(&r, 5, &["a.bin", "does not decrypt"]);
    // The first data message replayed unchanged.
    let r = encrypted(&scene, code, &k, &k, |mut p, mut s| {
        let (m, ha, ps) = (m.clone(), ha.clone(), ps.clone());
        async move {
            p.send_control(&s.manifest(&m)).await;
            p.send_control(&s.file(&ha)).await;
            let first = ps[0].seal(&mut s);
            p.send_binary(first.clone()).await;
            p.send_binary(first).await;
            p.send_control(&Control::FileEof).await;
            p.send_control(&Control::Eof).await;
            p
        }
    });
    refused(
        &r,
        5,
        &["a.bin", "piece 0 arrived where piece 1 was expected"],
    );
    // Two data payloads swapped, their headers in order.
    let r = encrypted(&scene, code, &k, &k, |mut p, mut s| {
        let (m, ha, ps) = (m.clone(), ha.clone(), ps.clone());
        async move {
            p.send_control(&s.manifest(&m)).await;
            p.send_control(&s.file(&ha)).await;
            let d0 = DataMessage::decode(ps[0].seal(&mut s)).unwrap();
            let d1 = DataMessage::decode(ps[1].seal(&mut s)).unwrap();
            p.send_binary(DataMessage::encode(0, &d0.chain, &d1.payload))
                .await;
            p.send_binary(DataMessage::encode(1, &d1.chain, &d0.payload))
                .await;
            p.send_control(&Control::FileEof).await;
            p.send_control(&Control::Eof).await;
            p
        }
    });
    refused(&r, 5, &["a.bin", "does not decrypt"]);
    // The manifest replayed in the middle of the session.
    let r = encrypted(&scene, code, &k, &k, |mut p, mut s| {
        let m = m.clone();
        async move {
            let first = s.manifest(&m);
            p.send_control(&first).await;
            p.send_control(&first).await;
            p.send_control(&Control::Eof).await;
            p
        }
    });
    refused(&r, 4, &["unexpected enc_manifest message"]);
    scene.assert_no_final("a.bin");
    scene.assert_untouched();
}

// ---------------------------------------------------------------------------------------
// Messages larger than 2 MiB.
// ---------------------------------------------------------------------------------------

#[test]
fn messages_over_2_mib_are_refused() {
    let scene = Scene::new();
    let limit = wire::MAX_MESSAGE_LEN;

    // Exactly 2 MiB is allowed.
    let m = manifest(&[("ok.txt", 2)], false).to_json();
    let padded = format!("{}{m}", " ".repeat(limit - m.len()));
    assert_eq!(padded.len(), limit);
    let mut msgs = vec![raw(&padded)];
    msgs.extend(whole_file("ok.txt", b"ok", Compression::None));
    msgs.push(eof());
    scene
        .plain("big-exact", msgs)
        .expect("a message of exactly 2 MiB");
    assert_eq!(fs::read(scene.out().join("ok.txt")).unwrap(), b"ok");

    // Through our relay: it refuses to forward the message, and the receiver learns
    // that its sender is gone.
    let url = scene.url();
    let mut sender_end = None;
    let r = scene.receive("big-relay", false, async {
        let mut p = HostilePeer::plain_sender(&url, "big-relay", LIMIT).await;
        p.send_manifest(&[("big2.bin", 3 * MIB as u64)], false)
            .await;
        p.send_binary(vec![0u8; limit + 1]).await;
        sender_end = p.wait_end(LIMIT).await;
    });
    assert!(sender_end.is_some(), "the relay kept the oversized sender");
    refused(&r, 7, &["went away"]);
    scene.assert_no_final("big2.bin");

    // Straight to our receiver, from a relay that forwards anything.
    let cases: Vec<(&str, Vec<Message>)> = vec![
        (
            "binary",
            vec![
                man(&[("big.bin", 3 * MIB as u64)]),
                header("big.bin", 3 * MIB as u64),
                bin(vec![0u8; limit + 1]),
            ],
        ),
        (
            "text",
            vec![raw(&format!(
                "{}{}",
                " ".repeat(limit + 1 - 30),
                r#"{"type":"manifest","entries":[]}"#
            ))],
        ),
    ];
    for (what, msgs) in cases {
        let out = scene.out();
        let r = smol::block_on(within(
            Duration::from_secs(30),
            "stand-in relay session",
            async {
                let relay = StandInRelay::bind().await;
                let mut cfg = ClientConfig::new(relay.url(), format!("big-{what}"));
                cfg.pair_timeout = LIMIT;
                cfg.idle_timeout = Duration::from_secs(3);
                let receiving = p2p_copy_smol::receive(cfg, out, |_| {});
                let script = async {
                    let (mut p, _hello) = relay.accept(LIMIT).await;
                    for m in msgs {
                        p.send_message(m).await;
                    }
                    p.wait_end(LIMIT).await
                };
                future::zip(receiving, script).await.0
            },
        ));
        let msg = refused(&r, 4, &[]);
        assert!(
            ["2 MiB", "too long", "too large"]
                .iter()
                .any(|n| msg.contains(n)),
            "{what}: the message does not say the message was too large: {msg}"
        );
        scene.assert_no_final("big.bin");
    }
    scene.assert_untouched();
}

// ---------------------------------------------------------------------------------------
// The relay.
// ---------------------------------------------------------------------------------------

/// A normal transfer through `url` with `code` succeeds (the relay still serves).
fn normal_pair_works(url: &str, code: &str) {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    write_tree(
        &src,
        &[
            FileSpec::random("a.bin", 300_000, 1),
            FileSpec::text("b.txt", 5_000, 2),
        ],
    );
    let out = dir.path().join("out");
    let mut pair = Pair::new(url, code, vec![src.clone()], out.clone());
    pair.limit = Duration::from_secs(30);
    pair.run::<Smol>().expect_ok();
    p2p_copy_tests::tree::assert_same_tree(&src, &out.join("src"));
}

fn relay_with(cfg: RelayConfig) -> TestRelay {
    TestRelay::with_config::<Smol>(cfg, None)
}

/// Wait until the relay on `port` holds at most `n` connections.
fn relay_settles_to(port: u16, n: usize, limit: Duration, what: &str) {
    let start = Instant::now();
    loop {
        let held = sockets_held_on_port(port);
        if held <= n {
            return;
        }
        assert!(
            start.elapsed() < limit,
            "{what}: the relay still holds {held} connections after {limit:?} (expected at most {n})"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn relay_closes_connections_that_never_say_hello() {
    let relay = relay_with(RelayConfig {
        hello_timeout: Duration::from_secs(1),
        ..RelayConfig::default()
    });
    let url = relay.url();
    smol::block_on(within(Duration::from_secs(20), "silent clients", async {
        let start = Instant::now();
        // A WebSocket that says nothing, one that only pings, and a TCP connection that
        // never even starts the WebSocket handshake.
        let mut silent = HostilePeer::connect(&url).await.unwrap();
        let mut pinging = HostilePeer::connect(&url).await.unwrap();
        let mut tcp = smol::net::TcpStream::connect(relay.addr()).await.unwrap();
        let pings = async {
            let end = loop {
                pinging
                    .send_message(Message::Ping(Bytes::from_static(b"hi")))
                    .await;
                if let Received::Ended(e) = pinging.recv(Duration::from_millis(200)).await {
                    break e;
                }
            };
            (end, start.elapsed())
        };
        let silence = async {
            (
                silent.wait_end(Duration::from_secs(5)).await,
                start.elapsed(),
            )
        };
        let raw = async {
            let mut buf = [0u8; 64];
            let n = futures_lite::AsyncReadExt::read(&mut tcp, &mut buf).await;
            (n.map_err(|e| e.kind()), start.elapsed())
        };
        let ((s_end, s_at), ((p_end, p_at), (t_end, t_at))) =
            future::zip(silence, future::zip(pings, raw)).await;
        for (end, at) in [(s_end, s_at), (Some(p_end), p_at)] {
            assert_eq!(
                end,
                Some(Ending::Closed {
                    code: 1008,
                    reason: "no hello in time".into()
                }),
                "after {at:?}"
            );
            assert!(
                at >= Duration::from_millis(900) && at < Duration::from_secs(4),
                "closed after {at:?}"
            );
        }
        assert!(
            matches!(t_end, Ok(0) | Err(_)),
            "the raw connection got {t_end:?}"
        );
        assert!(
            t_at >= Duration::from_millis(900) && t_at < Duration::from_secs(4),
            "dropped after {t_at:?}"
        );
    }));
    relay_settles_to(
        relay.addr().port(),
        0,
        Duration::from_secs(5),
        "relay frees silent connections",
    );
    normal_pair_works(&relay.url(), "after silent clients");
}

#[test]
fn relay_refuses_malformed_hello_with_1002() {
    let relay = relay_with(RelayConfig {
        hello_timeout: Duration::from_secs(2),
        ..RelayConfig::default()
    });
    let url = relay.url();
    let good = p2p_copy_tests::hostile_peer::hello(&[7; 32], Role::Sender);
    let cases: Vec<(Message, &str)> = vec![
        (
            bin(good.clone().into_bytes()),
            "First frame must be hello text",
        ),
        (raw("not json"), "Bad hello json"),
        (raw(""), "Bad hello json"),
        (raw("[1,2]"), "First frame must be hello"),
        (raw("{}"), "First frame must be hello"),
        (raw(r#"{"type":"ready"}"#), "First frame must be hello"),
        (raw(r#"{"type":"hello","role":"sender"}"#), "Bad hello"),
        (
            raw(r#"{"type":"hello","code_hash_hex":"","role":"sender"}"#),
            "Bad hello",
        ),
        (raw(r#"{"type":"hello","code_hash_hex":"ab"}"#), "Bad hello"),
        (
            raw(r#"{"type":"hello","code_hash_hex":"ab","role":"admin"}"#),
            "Bad hello",
        ),
        (
            raw(r#"{"type":"hello","code_hash_hex":5,"role":"sender"}"#),
            "Bad hello",
        ),
        (
            raw(r#"{"type":"hello","code_hash_hex":"ab","role":["sender"]}"#),
            "Bad hello",
        ),
    ];
    smol::block_on(within(Duration::from_secs(30), "bad hellos", async {
        for (msg, reason) in cases {
            let shown = format!("{msg:?}");
            let mut p = HostilePeer::connect(&url).await.unwrap();
            p.send_message(msg).await;
            let start = Instant::now();
            let end = p.wait_end(Duration::from_secs(5)).await;
            assert_eq!(
                end,
                Some(Ending::Closed {
                    code: 1002,
                    reason: reason.into()
                }),
                "{shown}"
            );
            assert!(
                start.elapsed() < Duration::from_secs(1),
                "{shown}: refused only after {:?}",
                start.elapsed()
            );
        }
        // A waiting client that talks before its peer arrives.
        let mut p = HostilePeer::join(&url, &[8; 32], Role::Sender).await;
        p.send_text("anything").await;
        assert_eq!(
            p.wait_end(Duration::from_secs(5)).await,
            Some(Ending::Closed {
                code: 1002,
                reason: "message before a peer joined".into()
            })
        );
        // A hello too big to be one.
        let mut p = HostilePeer::connect(&url).await.unwrap();
        p.send_text(format!(
            "{{\"type\":\"hello\",\"pad\":\"{}\"}}",
            "x".repeat(wire::MAX_MESSAGE_LEN)
        ))
        .await;
        assert!(
            p.wait_end(Duration::from_secs(5)).await.is_some(),
            "an oversized hello was kept"
        );
    }));
    relay_settles_to(
        relay.addr().port(),
        0,
        Duration::from_secs(5),
        "relay frees refused connections",
    );
    normal_pair_works(&relay.url(), "after bad hellos");
}

#[test]
fn relay_closes_clients_that_wait_too_long_for_a_peer() {
    let relay = relay_with(RelayConfig {
        wait_timeout: Duration::from_secs(1),
        ..RelayConfig::default()
    });
    let url = relay.url();
    let dir = tempfile::tempdir().unwrap();
    fs::write(dir.path().join("f.txt"), "x").unwrap();
    smol::block_on(within(Duration::from_secs(20), "lonely clients", async {
        let start = Instant::now();
        let mut lonely = HostilePeer::join(&url, &[9; 32], Role::Receiver).await;
        assert_eq!(
            lonely.wait_end(Duration::from_secs(5)).await,
            Some(Ending::Closed {
                code: 1008,
                reason: "no peer joined in time".into()
            })
        );
        let at = start.elapsed();
        assert!(
            at >= Duration::from_millis(900) && at < Duration::from_secs(4),
            "closed after {at:?}"
        );

        // Our own clients turn that into a timeout that says what to check.
        let mut cfg = ClientConfig::new(url.clone(), "nobody else has this code");
        cfg.pair_timeout = Duration::from_secs(30);
        let start = Instant::now();
        let sent = p2p_copy_smol::send(
            cfg.clone(),
            vec![dir.path().join("f.txt")],
            SendOptions::default(),
            |_| {},
        )
        .await;
        refused(&sent, 3, &["same code"]);
        let got = p2p_copy_smol::receive(cfg, dir.path().join("out"), |_| {}).await;
        refused(&got, 3, &["same code"]);
        assert!(
            start.elapsed() < Duration::from_secs(8),
            "took {:?}",
            start.elapsed()
        );
    }));
    relay_settles_to(
        relay.addr().port(),
        0,
        Duration::from_secs(5),
        "relay frees lonely clients",
    );
}

#[test]
fn relay_survives_thousands_of_idle_connections() {
    const HELLO: Duration = Duration::from_secs(6);
    const RAW: usize = 1500;
    const WS: usize = 500;
    let relay = relay_with(RelayConfig {
        hello_timeout: HELLO,
        max_connections: 4096,
        max_per_address: 4096,
        ..RelayConfig::default()
    });
    let port = relay.addr().port();
    let addr = relay.addr();
    let url = relay.url();
    // 1,500 TCP connections that never start the WebSocket handshake and 500 WebSockets
    // that never say hello.
    let start = Instant::now();
    let (mut raws, mut socks) = smol::block_on(within(
        Duration::from_secs(30),
        "open idle connections",
        async {
            let mut raws = Vec::with_capacity(RAW);
            for _ in 0..RAW {
                raws.push(smol::net::TcpStream::connect(addr).await.expect("connect"));
            }
            let mut socks = Vec::with_capacity(WS);
            for _ in 0..WS {
                socks.push(HostilePeer::connect(&url).await.expect("WebSocket"));
            }
            (raws, socks)
        },
    ));
    let opened_in = start.elapsed();
    assert!(
        opened_in < HELLO - Duration::from_secs(1),
        "opening took {opened_in:?}, longer than the hello timeout: the machine is too busy for this test"
    );
    let held = sockets_held_on_port(port);
    assert!(
        held >= RAW + WS - 50,
        "only {held} connections are open at the relay"
    );

    // The relay still serves a real pair while they sit there.
    normal_pair_works(&url, "while thousands idle");
    assert!(start.elapsed() < HELLO, "the pair took too long to overlap");

    // Every idle connection is closed by the hello timeout (not before), and the relay
    // lets go of all of them.
    smol::block_on(within(
        Duration::from_secs(30),
        "idle connections closed",
        async {
            for t in raws.iter_mut() {
                let mut buf = [0u8; 16];
                let n = futures_lite::AsyncReadExt::read(t, &mut buf).await;
                assert!(
                    matches!(n, Ok(0) | Err(_)),
                    "an idle TCP connection got {n:?}"
                );
            }
            assert!(
                start.elapsed() >= HELLO - Duration::from_millis(200),
                "closed before the hello timeout"
            );
            for s in socks.iter_mut() {
                let end = s.wait_end(Duration::from_secs(15)).await;
                assert_eq!(end.as_ref().and_then(Ending::code), Some(1008), "{end:?}");
            }
        },
    ));
    relay_settles_to(
        port,
        0,
        Duration::from_secs(10),
        "relay frees thousands of idle connections",
    );
    drop(raws);
    drop(socks);
    normal_pair_works(&url, "after thousands idle");
}

#[test]
fn relay_refuses_connections_over_its_limit_with_1013() {
    let relay = relay_with(RelayConfig {
        hello_timeout: Duration::from_secs(5),
        wait_timeout: Duration::from_secs(30),
        max_connections: 50,
        max_per_address: 1000,
        ..RelayConfig::default()
    });
    let url = relay.url();
    let mut waiting = smol::block_on(within(Duration::from_secs(20), "fill the relay", async {
        let mut waiting = Vec::new();
        for i in 0..50u8 {
            waiting.push(HostilePeer::join(&url, &[i; 32], Role::Sender).await);
        }
        for _ in 0..10 {
            let mut extra = HostilePeer::connect(&url).await.unwrap();
            let start = Instant::now();
            assert_eq!(
                extra.wait_end(Duration::from_secs(3)).await,
                Some(Ending::Closed {
                    code: 1013,
                    reason: "relay is at its connection limit".into()
                })
            );
            assert!(start.elapsed() < Duration::from_secs(1));
        }
        // The 50 admitted ones are still there.
        for w in waiting.iter_mut() {
            assert_eq!(w.recv(Duration::from_millis(5)).await, Received::Nothing);
        }
        waiting
    }));
    // Two leave; a pair fits again.
    smol::block_on(async {
        for _ in 0..2 {
            waiting.pop().expect("a waiting client").close(1000).await;
        }
    });
    relay_settles_to(
        relay.addr().port(),
        48,
        Duration::from_secs(5),
        "two clients leave",
    );
    normal_pair_works(&url, "after the limit");
    drop(waiting);
}

#[test]
fn relay_caps_connections_per_address() {
    let relay = relay_with(RelayConfig {
        hello_timeout: Duration::from_secs(5),
        max_per_address: 8,
        ..RelayConfig::default()
    });
    let url = relay.url();
    let port = relay.addr().port();
    let mut waiting = smol::block_on(within(
        Duration::from_secs(30),
        "flood from one address",
        async {
            let mut waiting = Vec::new();
            for i in 0..8u8 {
                waiting.push(HostilePeer::join(&url, &[100 + i; 32], Role::Receiver).await);
            }
            // A flood: every further connection is refused at once, politely.
            let flood: Vec<_> = (0..200).map(|_| HostilePeer::connect(&url)).collect();
            let mut refused_count = 0;
            for f in flood {
                if let Ok(mut p) = f.await {
                    let end = p.wait_end(Duration::from_secs(3)).await;
                    assert_eq!(
                        end,
                        Some(Ending::Closed {
                            code: 1013,
                            reason: "too many connections from this address (the relay allows 8 per address)"
                                .into()
                        })
                    );
                    refused_count += 1;
                }
            }
            assert_eq!(refused_count, 200);
            for w in waiting.iter_mut() {
                assert_eq!(w.recv(Duration::from_millis(5)).await, Received::Nothing);
            }
            waiting
        },
    ));
    relay_settles_to(
        port,
        8,
        Duration::from_secs(5),
        "refused connections are freed",
    );
    // When they leave, the address may connect again.
    smol::block_on(async {
        for w in waiting.drain(..) {
            w.close(1000).await;
        }
    });
    relay_settles_to(port, 0, Duration::from_secs(5), "clients leave");
    normal_pair_works(&url, "after the flood");
}

#[test]
fn relay_frees_refused_connections_that_ignore_the_close() {
    let relay = relay_with(RelayConfig {
        hello_timeout: Duration::from_secs(1),
        close_grace: Duration::from_millis(500),
        max_per_address: 4,
        ..RelayConfig::default()
    });
    let url = relay.url();
    let port = relay.addr().port();
    // Four waiting clients fill the address's share; then 100 more complete the
    // WebSocket handshake and never read or answer anything.
    let (held, deaf) = smol::block_on(within(Duration::from_secs(30), "deaf flood", async {
        let mut held = Vec::new();
        for i in 0..4u8 {
            held.push(HostilePeer::join(&url, &[200 + i; 32], Role::Sender).await);
        }
        let mut deaf = Vec::new();
        for _ in 0..100 {
            if let Ok(p) = HostilePeer::connect(&url).await {
                deaf.push(p);
            }
        }
        (held, deaf)
    }));
    assert!(!deaf.is_empty());
    // The relay must not keep a task and a socket per refused connection forever.
    relay_settles_to(
        port,
        4,
        Duration::from_secs(6),
        "relay lets go of refused connections that never answer",
    );
    drop(deaf);
    drop(held);
}

/// The most the kernel may buffer on one TCP connection: the largest receive buffer plus
/// the largest send buffer it allows.
fn kernel_buffer_bound() -> u64 {
    let max = |p: &str| -> u64 {
        fs::read_to_string(p)
            .ok()
            .and_then(|s| s.split_whitespace().nth(2).and_then(|v| v.parse().ok()))
            .unwrap_or(8 * MIB as u64)
    };
    max("/proc/sys/net/ipv4/tcp_rmem") + max("/proc/sys/net/ipv4/tcp_wmem")
}

#[test]
fn relay_slows_a_sender_whose_receiver_reads_nothing() {
    let relay = relay_with(RelayConfig::default());
    let url = relay.url();
    let hash = code_hash("slow reader", false).unwrap();
    // Two hops (sender to relay, relay to receiver), each with the kernel's buffers,
    // plus a few 2 MiB messages held by the relay and the WebSocket layers.
    let bound = 2 * kernel_buffer_bound() + 16 * MIB as u64;
    let cap = (bound / MIB as u64) as usize * 3;
    smol::block_on(within(Duration::from_secs(50), "slow reader", async {
        let mut r = HostilePeer::join(&url, &hash, Role::Receiver).await;
        let mut s = HostilePeer::join(&url, &hash, Role::Sender).await;
        s.wait_ready(LIMIT).await;
        let piece = vec![0xABu8; MIB];
        let mut sent = 0usize;
        let outcome = loop {
            if sent == cap {
                break SendOutcome::Sent;
            }
            let m = bin(DataMessage::encode(sent as u64, &[0; 32], &piece));
            match s.send_within(m, Duration::from_millis(1500)).await {
                SendOutcome::Sent => sent += 1,
                other => break other,
            }
        };
        assert_eq!(
            outcome,
            SendOutcome::Blocked,
            "the sender pushed {sent} MiB without being slowed"
        );
        assert!(
            (sent as u64) * (MIB as u64) <= bound,
            "{sent} MiB went ahead of the reader (bound {bound})"
        );
        // It stays blocked while the receiver still reads nothing.
        let again = s
            .send_within(
                bin(DataMessage::encode(sent as u64 + 1, &[0; 32], b"x")),
                Duration::from_secs(1),
            )
            .await;
        assert_eq!(again, SendOutcome::Blocked);

        // Once the receiver reads, everything arrives in order and the sender goes on.
        let reading = async {
            let mut seqs = Vec::new();
            loop {
                match r.recv(LIMIT).await {
                    Received::Message(Message::Binary(b)) => {
                        seqs.push(DataMessage::decode(b).unwrap().seq)
                    }
                    Received::Message(Message::Text(t)) if t.as_str() == "done" => break seqs,
                    other => panic!("receiver got {other:?}"),
                }
            }
        };
        let finishing = async {
            assert_eq!(s.send_within(raw("done"), LIMIT).await, SendOutcome::Sent);
        };
        let (seqs, ()) = future::zip(reading, finishing).await;
        assert!(
            seqs.len() >= sent,
            "{} of {sent} messages arrived",
            seqs.len()
        );
        assert!(
            seqs.iter()
                .take(sent)
                .enumerate()
                .all(|(i, s)| *s == i as u64),
            "reordered"
        );
    }));
}

#[test]
fn sender_gives_up_on_a_receiver_that_never_reads() {
    let relay = relay_with(RelayConfig::default());
    let url = relay.url();
    let dir = tempfile::tempdir().unwrap();
    let big = dir.path().join("zeros.bin");
    // Sparse: costs no disk, and is far larger than every buffer on the way.
    fs::File::create(&big).unwrap().set_len(1 << 30).unwrap();
    let code = "nobody reads";
    let hash = code_hash(code, false).unwrap();
    let mut cfg = ClientConfig::new(url.clone(), code);
    cfg.pair_timeout = LIMIT;
    cfg.idle_timeout = Duration::from_secs(2);
    let opts = SendOptions {
        compress: CompressMode::Off,
        resume: false,
        ..SendOptions::default()
    };
    let (sent, _deaf) = smol::block_on(within(Duration::from_secs(40), "deaf receiver", async {
        let deaf = HostilePeer::join(&url, &hash, Role::Receiver).await;
        let start = Instant::now();
        let sent = p2p_copy_smol::send(cfg, vec![big.clone()], opts, |_| {}).await;
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "took {:?}",
            start.elapsed()
        );
        (sent, deaf)
    }));
    refused(&sent, 3, &["took no data"]);
}

#[test]
fn receiver_reports_a_sender_that_vanishes_and_the_pair_is_freed() {
    let scene = Scene::new();
    let content = random_bytes(3 * MIB as u64, 51);
    let ps = pieces(&content, Compression::None);
    let url = scene.url();
    let code = "vanishing sender";
    let mut vanished_at = None;
    let received = {
        let mut cfg = ClientConfig::new(url.clone(), code);
        cfg.pair_timeout = LIMIT;
        cfg.idle_timeout = Duration::from_secs(20);
        let receiving = async {
            let r = p2p_copy_smol::receive(cfg, scene.out(), |_| {}).await;
            (r, Instant::now())
        };
        let part = p2p_copy_tests::tree::partial_path(&scene.out(), "big.bin");
        let script = async {
            let mut p = HostilePeer::plain_sender(&url, code, LIMIT).await;
            p.send_manifest(&[("big.bin", content.len() as u64)], false)
                .await;
            p.send_control(&file_header(
                "big.bin",
                content.len() as u64,
                Compression::None,
                0,
            ))
            .await;
            p.send_binary(ps[0].encode()).await;
            within(LIMIT, "partial file appears", async {
                while !part.exists() {
                    sleep(Duration::from_millis(10)).await;
                }
            })
            .await;
            vanished_at = Some(Instant::now());
            p.vanish();
        };
        smol::block_on(within(
            Duration::from_secs(30),
            "vanishing sender",
            future::zip(receiving, script),
        ))
        .0
    };
    let (r, ended_at) = received;
    let gap = ended_at - vanished_at.expect("the sender vanished");
    assert!(
        gap < Duration::from_secs(3),
        "the receiver learned only after {gap:?}"
    );
    // A vanished peer is a lost connection (exit 7), not a protocol violation.
    refused(&r, 7, &["big.bin", "went away"]);
    scene.assert_no_final("big.bin");
    scene.assert_untouched();

    // The code is free again: a real transfer with it works.
    let port = scene.relay.addr().port();
    relay_settles_to(port, 0, Duration::from_secs(5), "the pair is freed");
    let src = tempfile::tempdir().unwrap();
    fs::write(src.path().join("big.bin"), &content).unwrap();
    let mut pair = Pair::new(&url, code, vec![src.path().join("big.bin")], scene.out());
    pair.limit = Duration::from_secs(30);
    pair.run::<Smol>().expect_ok();
    assert!(fs::read(scene.out().join("big.bin")).unwrap() == content);

    // A client that vanishes while waiting frees its place too.
    smol::block_on(async {
        let hash = code_hash("vanish while waiting", false).unwrap();
        HostilePeer::join(&url, &hash, Role::Sender).await.vanish();
    });
    relay_settles_to(
        port,
        0,
        Duration::from_secs(5),
        "the waiting place is freed",
    );
    normal_pair_works(&url, "vanish while waiting");
}

#[test]
fn sender_reports_a_receiver_that_vanishes_and_the_pair_is_freed() {
    let relay = relay_with(RelayConfig::default());
    let url = relay.url();
    let dir = tempfile::tempdir().unwrap();
    let big = dir.path().join("zeros.bin");
    fs::File::create(&big).unwrap().set_len(1 << 30).unwrap();
    let code = "vanishing receiver";
    let hash = code_hash(code, false).unwrap();
    let mut cfg = ClientConfig::new(url.clone(), code);
    cfg.pair_timeout = LIMIT;
    cfg.idle_timeout = Duration::from_secs(20);
    let opts = SendOptions {
        compress: CompressMode::Off,
        resume: false,
        ..SendOptions::default()
    };
    let (sent, gap) = smol::block_on(within(
        Duration::from_secs(30),
        "vanishing receiver",
        async {
            let mut r = HostilePeer::join(&url, &hash, Role::Receiver).await;
            let sending = async {
                let s = p2p_copy_smol::send(cfg, vec![big.clone()], opts, |_| {}).await;
                (s, Instant::now())
            };
            let script = async move {
                for _ in 0..4 {
                    assert!(matches!(r.recv(LIMIT).await, Received::Message(_)));
                }
                let at = Instant::now();
                r.vanish();
                at
            };
            let ((s, ended), vanished) = future::zip(sending, script).await;
            (s, ended - vanished)
        },
    ));
    assert!(
        gap < Duration::from_secs(3),
        "the sender learned only after {gap:?}"
    );
    refused(&sent, 7, &["went away"]);
    relay_settles_to(
        relay.addr().port(),
        0,
        Duration::from_secs(5),
        "the pair is freed",
    );
    normal_pair_works(&url, code);
}
