//! Automatic reconnect: the relay dies mid-transfer, and both sides reconnect by
//! themselves (when it comes back) or give up with exit 7 (when it does not). Real
//! processes on 127.0.0.1; the relay paces the pair (--max-rate) so that the kill lands
//! in the middle of the transfer.

use std::fs;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use p2p_copy_tests::deadline::wait_for;
use p2p_copy_tests::process::{start_cli_relay_on, ChildGuard};
use p2p_copy_tests::scene::Scene;
use p2p_copy_tests::tree::{assert_same_tree, partial_path, random_bytes, MIB};

const BIN: &str = env!("CARGO_BIN_EXE_p2p-copy");
const LIMIT: Duration = Duration::from_secs(60);
/// The transfer: 5 pieces and a bit, a little over 5 s at the relay's pace.
const SIZE: u64 = 5 * MIB + 4321;
/// Relay flags: 1 MiB/s for the pair, UDP ports of its own choosing (so a restart on
/// the same TCP port never meets its old STUN sockets), no drain.
const RELAY: &[&str] = &[
    "--no-tls",
    "--max-rate",
    "1Mi",
    "--stun-port",
    "0",
    "--drain-timeout",
    "0",
];

fn spawn(args: &[&str]) -> ChildGuard {
    ChildGuard::spawn(Command::new(BIN).args(args))
}

fn arg(p: &Path) -> &str {
    p.to_str().expect("temp paths are UTF-8")
}

fn port_of(url: &str) -> u16 {
    url.rsplit(':')
        .next()
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("no port in {url}"))
}

/// Start a paced relay, a receiver and a sender with `extra` on both sides; return them
/// once the receiver's partial file holds at least one piece, with that many bytes.
fn start(
    code: &str,
    s: &Scene,
    extra: &[&str],
) -> ((ChildGuard, String), ChildGuard, ChildGuard, u64) {
    fs::write(s.src.join("big.bin"), random_bytes(SIZE, 14)).unwrap();
    let (relay, url) = start_cli_relay_on(Path::new(BIN), 0, RELAY);
    let common = [&["--relay-only", "--verbose"][..], extra].concat();
    let out = arg(&s.out);
    let receiver = spawn(&[&["receive", &url, code, "--out", out][..], &common].concat());
    let file = s.src.join("big.bin");
    let sender = spawn(&[&["send", &url, code, arg(&file)][..], &common].concat());
    let partial = partial_path(&s.out, "big.bin");
    let held = wait_for(Duration::from_secs(30), "the partial file grows", || {
        let len = fs::metadata(&partial).map(|m| m.len()).unwrap_or(0);
        (len >= MIB).then_some(len)
    });
    ((relay, url), sender, receiver, held)
}

/// "1.50 MiB" (as the CLI prints sizes) in bytes.
fn size_after(text: &str, marker: &str) -> Option<u64> {
    let rest = &text[text.find(marker)? + marker.len()..];
    let mut words = rest.split_whitespace();
    let n: f64 = words.next()?.parse().ok()?;
    let unit = match words.next()?.trim_end_matches([',', ')', ';']) {
        "B" => 1.0,
        "KiB" => 1024.0,
        "MiB" => MIB as f64,
        _ => return None,
    };
    Some((n * unit) as u64)
}

#[test]
fn relay_restarted_mid_transfer_both_sides_resume_by_themselves() {
    restart_mid_transfer("reconnect restart", &[]);
}

/// Encrypted, each session has its own nonce seed: the reconnect must not reuse one.
#[test]
fn relay_restarted_mid_encrypted_transfer_both_sides_resume_by_themselves() {
    restart_mid_transfer("reconnect restart encrypted", &["--encrypt"]);
}

fn restart_mid_transfer(code: &str, extra: &[&str]) {
    let s = Scene::new();
    let extra = [&["--retry-backoff", "200ms"][..], extra].concat();
    let ((mut relay, url), sender, receiver, held) = start(code, &s, &extra);
    relay.kill();
    let (_relay, again) = start_cli_relay_on(Path::new(BIN), port_of(&url), RELAY);
    assert_eq!(again, url);

    let sent = sender.wait(LIMIT);
    let received = receiver.wait(LIMIT);
    assert_eq!(sent.code(), 0, "sender: {sent:?}");
    assert_eq!(received.code(), 0, "receiver: {received:?}");
    assert_same_tree(&s.src, &s.out);
    for (side, out) in [("sender", &sent), ("receiver", &received)] {
        assert!(
            out.stderr.contains("connection lost, reconnecting (1/5)"),
            "{side} says it reconnects: {}",
            out.stderr
        );
    }
    // What the receiver held is not sent again: it resumes at least there.
    let resumed = size_after(&received.stderr, "resuming at")
        .unwrap_or_else(|| panic!("the receiver resumes: {}", received.stderr));
    assert!(
        resumed + MIB / 100 >= held,
        "resumed at {resumed}, but the receiver held {held} before the relay died"
    );
    // The sender's summary counts every byte it sent, over both connections. What it
    // sends twice is only what had not reached the receiver when the relay died (the
    // pieces in the sockets and the relay's buffers): never more than it lacked then.
    let total = size_after(&sent.stderr, "sent 1 file (")
        .unwrap_or_else(|| panic!("no summary: {}", sent.stderr));
    let resent = total.saturating_sub(SIZE);
    eprintln!("held {held}, resumed at {resumed}, sent {total} for {SIZE}: {resent} resent");
    assert!(
        resent <= SIZE - held + MIB / 100,
        "{resent} bytes resent, more than the {} the receiver lacked",
        SIZE - held
    );
}

#[test]
fn a_relay_that_never_comes_back_ends_with_exit_7_and_keeps_the_partial_file() {
    let s = Scene::new();
    let code = "reconnect never";
    let extra = ["--retry-backoff", "100ms", "--max-retries", "2"];
    let ((mut relay, _url), sender, receiver, _held) = start(code, &s, &extra);
    relay.kill();
    let sent = sender.wait(Duration::from_secs(20));
    let received = receiver.wait(Duration::from_secs(20));
    for (side, out) in [("sender", &sent), ("receiver", &received)] {
        assert_eq!(out.code(), 7, "{side}: {out:?}");
        for says in [
            "connection lost, reconnecting (2/2)",
            "error: connection lost",
            "gave up after 2 reconnects",
            "--resume",
        ] {
            assert!(
                out.stderr.contains(says),
                "{side} lacks {says:?}: {}",
                out.stderr
            );
        }
    }
    let partial = partial_path(&s.out, "big.bin");
    let kept = fs::metadata(&partial).map(|m| m.len()).unwrap_or(0);
    assert!(kept >= MIB, "the partial file stays ({kept} bytes)");
    assert!(!s.out.join("big.bin").exists());
}
