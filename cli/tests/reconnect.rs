//! Automatic reconnect: the relay dies mid-transfer, and both sides reconnect by
//! themselves (when it comes back) or give up with exit 7 (when it does not); one side's
//! TCP connection is cut alone; the connection drops just after the receiver's report.
//! Real processes on 127.0.0.1; the relay paces the pair (--max-rate) so that the break
//! lands in the middle of the transfer, and a forwarder between one side and the relay
//! ([`Forwarder`]) cuts that side's connection.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use p2p_copy_tests::deadline::wait_for;
use p2p_copy_tests::forward::Forwarder;
use p2p_copy_tests::process::{start_cli_relay_on, ChildGuard};
use p2p_copy_tests::scene::Scene;
use p2p_copy_tests::tree::{assert_same_tree, partial_path, random_bytes, MIB};

/// The binary under test: this package's, or `P2P_COPY_BIN` (a release build, for
/// [`a_transfer_survives_two_relay_restarts_byte_for_byte`] at full size).
fn bin() -> PathBuf {
    std::env::var_os("P2P_COPY_BIN").map_or_else(
        || PathBuf::from(env!("CARGO_BIN_EXE_p2p-copy")),
        PathBuf::from,
    )
}
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
    ChildGuard::spawn(Command::new(bin()).args(args))
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

/// The code both sides use.
#[derive(Clone, Copy)]
enum Code<'a> {
    /// A v1 code, with the relay URL first (p2p-copy 0.1.x's form).
    V1(&'a str),
    /// A code like `7-guitar-rocket`: a room and a PAKE, on every connection.
    Words(&'a str),
}

impl Code<'_> {
    fn receive(self, url: &str, out: &str) -> Vec<String> {
        let args = match self {
            Code::V1(code) => vec!["receive", url, code, "--out", out],
            Code::Words(code) => vec!["receive", code, "--relay", url, "--out", out],
        };
        args.into_iter().map(str::to_owned).collect()
    }

    fn send(self, url: &str, file: &str) -> Vec<String> {
        let args = match self {
            Code::V1(code) => vec!["send", url, code, file],
            Code::Words(code) => vec!["send", "--relay", url, "--code", code, file],
        };
        args.into_iter().map(str::to_owned).collect()
    }
}

/// Which side reaches the relay through a [`Forwarder`] that the test can cut.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Through {
    Nothing,
    Sender,
    Receiver,
}

/// A transfer under way.
struct Running {
    relay: ChildGuard,
    url: String,
    sender: ChildGuard,
    receiver: ChildGuard,
    /// Bytes the receiver's partial file held when [`start`] returned.
    held: u64,
    forwarder: Option<Forwarder>,
}

/// Start a paced relay, a receiver and a sender with `extra` on both sides (one of them
/// through a forwarder when `through` says so); return once the receiver's partial file
/// holds at least one piece.
fn start(code: Code, s: &Scene, extra: &[&str], through: Through) -> Running {
    start_sized(code, s, extra, through, SIZE, RELAY)
}

/// [`start`] with a file of `size` bytes and a relay run with `relay` flags.
fn start_sized(
    code: Code,
    s: &Scene,
    extra: &[&str],
    through: Through,
    size: u64,
    relay: &[&str],
) -> Running {
    fs::write(s.src.join("big.bin"), random_bytes(size, 14)).unwrap();
    let (relay, url) = start_cli_relay_on(&bin(), 0, relay);
    let forwarder = (through != Through::Nothing)
        .then(|| Forwarder::start(format!("127.0.0.1:{}", port_of(&url)).parse().unwrap()));
    let via = |side: Through| match &forwarder {
        Some(f) if through == side => f.url(),
        _ => url.clone(),
    };
    let common = [&["--relay-only", "--verbose"][..], extra].concat();
    let receive = code.receive(&via(Through::Receiver), arg(&s.out));
    let receiver = spawn(&[receive.iter().map(String::as_str).collect(), common.clone()].concat());
    let file = s.src.join("big.bin");
    let send = code.send(&via(Through::Sender), arg(&file));
    let sender = spawn(&[send.iter().map(String::as_str).collect(), common].concat());
    let partial = partial_path(&s.out, "big.bin");
    let held = wait_for(Duration::from_secs(30), "the partial file grows", || {
        let len = fs::metadata(&partial).map(|m| m.len()).unwrap_or(0);
        (len >= MIB).then_some(len)
    });
    Running {
        relay,
        url,
        sender,
        receiver,
        held,
        forwarder,
    }
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
    restart_mid_transfer(Code::V1("reconnect restart"), &[]);
}

/// Encrypted, each session has its own nonce seed: the reconnect must not reuse one.
#[test]
fn relay_restarted_mid_encrypted_transfer_both_sides_resume_by_themselves() {
    restart_mid_transfer(Code::V1("reconnect restart encrypted"), &["--encrypt"]);
}

/// A code like `7-guitar-rocket`: each reconnect meets in the same room and runs a fresh
/// PAKE, whose key encrypts the reconnected session.
#[test]
fn relay_restarted_mid_transfer_with_a_generated_code_both_sides_resume_by_themselves() {
    restart_mid_transfer(Code::Words("7-guitar-rocket"), &[]);
}

fn restart_mid_transfer(code: Code, extra: &[&str]) {
    let s = Scene::new();
    let extra = [&["--retry-backoff", "200ms"][..], extra].concat();
    let mut t = start(code, &s, &extra, Through::Nothing);
    t.relay.kill();
    let (_relay, again) = start_cli_relay_on(&bin(), port_of(&t.url), RELAY);
    assert_eq!(again, t.url);
    let held = t.held;

    let sent = t.sender.wait(LIMIT);
    let received = t.receiver.wait(LIMIT);
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

/// Only the receiver's TCP connection breaks (the relay and the sender's connection
/// stay up): the relay ends the pair, and both sides reconnect and finish.
#[test]
fn the_receivers_connection_cut_alone_mid_transfer_both_sides_finish_by_themselves() {
    let s = Scene::new();
    let extra = ["--retry-backoff", "200ms"];
    let t = start(Code::V1("reconnect cut"), &s, &extra, Through::Receiver);
    let fwd = t
        .forwarder
        .as_ref()
        .expect("the receiver goes through the forwarder");
    fwd.cut();

    let sent = t.sender.wait(LIMIT);
    let received = t.receiver.wait(LIMIT);
    assert_eq!(sent.code(), 0, "sender: {sent:?}");
    assert_eq!(received.code(), 0, "receiver: {received:?}");
    assert_same_tree(&s.src, &s.out);
    assert!(
        received
            .stderr
            .contains("connection lost, reconnecting (1/5)"),
        "the receiver saw its own connection break and reconnected: {}",
        received.stderr
    );
    assert!(
        sent.stderr.contains("connection lost, reconnecting (1/5)"),
        "the sender, whose own connection stayed up, reconnected too: {}",
        sent.stderr
    );
    assert!(
        fwd.accepted() >= 2,
        "the receiver dialled again through the forwarder"
    );
}

/// The connection drops after the receiver put every file in place and sent its report,
/// before the report reached the sender. The receiver waits for the sender's word that
/// the report arrived; without it, it reconnects, so the sender learns at once from the
/// reconnected session that every file is there (instead of waiting a minute at the relay
/// for a receiver that has ended).
#[test]
fn a_report_lost_on_the_way_reaches_the_sender_through_a_reconnect_at_once() {
    let s = Scene::new();
    let extra = ["--retry-backoff", "200ms"];
    let t = start(Code::V1("reconnect report"), &s, &extra, Through::Sender);
    let fwd = t
        .forwarder
        .as_ref()
        .expect("the sender goes through the forwarder");
    // From here on the sender hears nothing from the relay, while its data still flows.
    fwd.swallow_replies();
    let done = s.out.join("big.bin");
    wait_for(LIMIT, "the receiver puts the file in place", || {
        done.exists().then_some(())
    });
    wait_for(Duration::from_secs(10), "the report is on its way", || {
        (fwd.swallowed() > 0).then_some(())
    });
    let cut = Instant::now();
    fwd.cut();

    let sent = t.sender.wait(LIMIT);
    let took = cut.elapsed();
    let received = t.receiver.wait(LIMIT);
    assert_eq!(sent.code(), 0, "sender: {sent:?}");
    assert_eq!(received.code(), 0, "receiver: {received:?}");
    assert_same_tree(&s.src, &s.out);
    assert!(
        took < Duration::from_secs(15),
        "the sender took {took:?} after the cut to learn that the file is delivered"
    );
    assert!(
        sent.stderr.contains("connection lost, reconnecting (1/5)"),
        "the sender reconnects: {}",
        sent.stderr
    );
    assert!(
        received
            .stderr
            .contains("before the sender said it got the delivery report"),
        "the receiver says why it reconnects with every file in place: {}",
        received.stderr
    );
}

/// "Done means" of automatic reconnect: a transfer survives two relay restarts with no
/// user action and arrives byte for byte. The size comes from `P2P_COPY_RECONNECT_MIB`
/// (64 MiB by default; the figures in docs/BENCHMARKS.md are from 1024); the relay paces
/// the pair to a quarter of the file a second, and is restarted when the receiver holds
/// a third and then two thirds of it.
#[test]
fn a_transfer_survives_two_relay_restarts_byte_for_byte() {
    let mib: u64 = std::env::var("P2P_COPY_RECONNECT_MIB")
        .ok()
        .map(|v| {
            v.parse()
                .expect("P2P_COPY_RECONNECT_MIB is a number of MiB")
        })
        .unwrap_or(64);
    let size = mib * MIB + 4321;
    let rate = (size / 4).max(MIB).to_string();
    let relay_flags = [&RELAY[..1], &["--max-rate", &rate], &RELAY[3..]].concat();
    let s = Scene::new();
    let extra = ["--retry-backoff", "200ms", "--json"];
    let code = Code::V1("reconnect twice");
    let mut t = start_sized(code, &s, &extra, Through::Nothing, size, &relay_flags);
    let partial = partial_path(&s.out, "big.bin");
    let mut relays = Vec::new();
    for third in [1, 2] {
        wait_for(LIMIT, "the partial file grows", || {
            let len = fs::metadata(&partial).map(|m| m.len()).unwrap_or(0);
            (len >= size * third / 3).then_some(())
        });
        match relays.last_mut() {
            Some(r) => ChildGuard::kill(r),
            None => t.relay.kill(),
        }
        let (relay, again) = start_cli_relay_on(&bin(), port_of(&t.url), &relay_flags);
        assert_eq!(again, t.url);
        relays.push(relay);
    }
    let limit = LIMIT + Duration::from_secs(mib / 4);
    let sent = t.sender.wait(limit);
    let received = t.receiver.wait(limit);
    assert_eq!(sent.code(), 0, "sender: {sent:?}");
    assert_eq!(received.code(), 0, "receiver: {received:?}");
    let events = |out: &str| -> Vec<serde_json::Value> {
        out.lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
            .collect()
    };
    let (sent_events, received_events) = (events(&sent.stdout), events(&received.stdout));
    for (side, evs) in [("sender", &sent_events), ("receiver", &received_events)] {
        let first_attempts = evs
            .iter()
            .filter(|e| e["event"] == "reconnecting" && e["attempt"] == 1)
            .count();
        assert!(
            first_attempts >= 2,
            "{side} reconnects after each restart: {evs:?}"
        );
    }
    let summary = sent_events
        .iter()
        .find(|e| e["event"] == "summary")
        .unwrap_or_else(|| panic!("no summary: {}", sent.stdout));
    let total = summary["bytes"].as_u64().expect("the summary's bytes");
    let took = summary["elapsed_seconds"]
        .as_f64()
        .expect("the summary's time");
    let resent = total.saturating_sub(size);
    assert_same_tree(&s.src, &s.out);
    eprintln!(
        "{mib} MiB through two relay restarts: {took:.1} s from the start of the sender, \
         {total} bytes sent for {size} ({resent} resent)"
    );
    // Only what was on its way at each restart is sent twice.
    assert!(resent <= 2 * (size / 4 + 4 * MIB), "{resent} bytes resent");
}

#[test]
fn a_relay_that_never_comes_back_ends_with_exit_7_and_keeps_the_partial_file() {
    let s = Scene::new();
    let code = "reconnect never";
    let extra = ["--retry-backoff", "100ms", "--max-retries", "2"];
    let mut t = start(Code::V1(code), &s, &extra, Through::Nothing);
    t.relay.kill();
    let sent = t.sender.wait(Duration::from_secs(20));
    let received = t.receiver.wait(Duration::from_secs(20));
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
