//! Names a Windows receiver cannot store, as users meet them: `receive --windows-names`
//! (what a receiver on Windows does by default) refuses each file named with
//! `< > : " | ? *`, a trailing dot or space or a device name, creates nothing under
//! that name (no partial file either), receives every other file, and both sides end
//! with "not everything delivered" (exit 8), naming each refused file and the rule.
//! Real processes, relays and files on 127.0.0.1.

use std::fs;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use p2p_copy_tests::process::{start_cli_relay, ChildGuard};
use p2p_copy_tests::scene::Scene;

const BIN: &str = env!("CARGO_BIN_EXE_p2p-copy");
const LIMIT: Duration = Duration::from_secs(60);
/// Not every file was delivered.
const EXIT_NOT_DELIVERED: i32 = 8;

fn arg(p: &Path) -> &str {
    p.to_str().expect("temp paths are UTF-8")
}

/// The names in `dir`, sorted.
fn names_in(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

/// What each refused file is reported with, on both sides.
const REFUSALS: [&str; 3] = [
    r#"src/aux.log: name not allowed on the receiver: "aux.log": a name Windows reserves for a device"#,
    r#"src/bad:name.txt: name not allowed on the receiver: "bad:name.txt": Windows does not allow ':' in a name"#,
    r#"src/dir./x: name not allowed on the receiver: "dir.": Windows does not allow a name to end with a dot"#,
];

#[test]
fn windows_names_refuses_each_illegal_name_and_receives_the_rest() {
    let (_relay, url) = start_cli_relay(Path::new(BIN), &["--no-tls"]);
    for (i, extra) in [&[][..], &["--encrypt"][..]].into_iter().enumerate() {
        let s = Scene::new();
        fs::write(s.src.join("ok.txt"), b"fine on every system\n").unwrap();
        fs::write(s.src.join("bad:name.txt"), vec![7u8; 300_000]).unwrap();
        fs::write(s.src.join("aux.log"), b"a device on Windows\n").unwrap();
        fs::create_dir(s.src.join("dir.")).unwrap();
        fs::write(s.src.join("dir./x"), b"below a trailing dot\n").unwrap();
        let code = format!("names-{i}");
        let sender = ChildGuard::spawn(
            Command::new(BIN)
                .args(["send", &url, &code, arg(&s.src)])
                .args(extra)
                .stdin(Stdio::null()),
        );
        let received = ChildGuard::spawn(
            Command::new(BIN)
                .args([
                    "receive",
                    &url,
                    &code,
                    "--out",
                    arg(&s.out),
                    "--windows-names",
                ])
                .args(extra)
                .stdin(Stdio::null()),
        )
        .wait(LIMIT);
        let sent = sender.wait(LIMIT);
        assert_eq!(
            received.code(),
            EXIT_NOT_DELIVERED,
            "{extra:?} {received:?}"
        );
        assert_eq!(sent.code(), EXIT_NOT_DELIVERED, "{extra:?} {sent:?}");
        for line in REFUSALS {
            assert!(received.stderr.contains(line), "{line}\n{received:?}");
            assert!(sent.stderr.contains(line), "{line}\n{sent:?}");
        }
        assert!(
            received
                .stderr
                .contains("error: 3 files were not delivered:"),
            "{received:?}"
        );
        assert_eq!(
            fs::read(s.out.join("src/ok.txt")).unwrap(),
            fs::read(s.src.join("ok.txt")).unwrap()
        );
        assert_eq!(names_in(&s.out), ["src"]);
        assert_eq!(
            names_in(&s.out.join("src")),
            ["ok.txt"],
            "nothing under a refused name, no partial file, no folder"
        );
    }
}
