//! Transfers with no relay at all, between two `p2p-copy` processes on this machine:
//! `--peer HOST:PORT` with a code, tickets pasted both ways, a ticket with a wrong key,
//! `--listen` on either side, a peer that never comes, and `--ntp` against an SNTP
//! responder whose clock is an hour and a half-second ahead. No relay runs in any test.
//! The lab (`serverless_lab.rs`) runs the same across NATs.

use std::net::UdpSocket;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use p2p_copy_tests::binary::cli_binary;
use p2p_copy_tests::process::{ChildGuard, Finished};
use p2p_copy_tests::serverless::{assert_offset, punching_instants, Talking};
use p2p_copy_tests::tree::{self, FileSpec, MIB};

/// How long one side may run.
const LIMIT: Duration = Duration::from_secs(60);
/// The exit code of a peer never reached, and of a peer not authenticated.
const NO_PEER: i32 = 9;
const NOT_AUTHENTICATED: i32 = 10;

/// A UDP port that was free a moment ago.
fn free_port() -> u16 {
    UdpSocket::bind("127.0.0.1:0")
        .and_then(|s| s.local_addr())
        .expect("a free UDP port")
        .port()
}

struct Scene {
    dir: tempfile::TempDir,
}

impl Scene {
    fn new() -> Scene {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut files = tree::standard_tree();
        files.push(FileSpec::random("big.bin", 3 * MIB + 7, 9));
        tree::write_tree(&dir.path().join("src"), &files);
        Scene { dir }
    }

    fn src(&self) -> PathBuf {
        self.dir.path().join("src")
    }

    fn out(&self) -> PathBuf {
        self.dir.path().join("out")
    }

    fn receive(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(cli_binary());
        cmd.arg("-v")
            .arg("receive")
            .args(args)
            .arg("--out")
            .arg(self.out());
        cmd
    }

    fn send(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(cli_binary());
        cmd.arg("-v").arg("send").args(args).arg(self.src());
        cmd
    }

    fn assert_received(&self) {
        tree::assert_same_tree(&self.src(), &self.out().join("src"));
    }

    fn assert_nothing_received(&self) {
        let got = std::fs::read_dir(self.out())
            .map(|d| d.count())
            .unwrap_or(0);
        assert_eq!(got, 0, "files arrived in {}", self.out().display());
    }
}

fn run(mut cmd: Command) -> ChildGuard {
    ChildGuard::spawn(&mut cmd)
}

fn assert_ok(side: &str, f: &Finished) {
    assert_eq!(f.code(), 0, "the {side} failed: {f:?}");
    assert!(
        f.stderr.lines().any(|l| l.starts_with("path: direct")),
        "the {side} printed no direct path: {f:?}"
    );
}

#[test]
fn a_code_moves_a_tree_over_one_quic_connection_without_a_relay() {
    let s = Scene::new();
    let (rp, sp) = (free_port(), free_port());
    let r = run(s.receive(&[
        "--peer",
        &format!("127.0.0.1:{sp}"),
        "--local-port",
        &rp.to_string(),
        "--code",
        "purple-monkey",
        "--encrypt",
    ]));
    let snd = run(s.send(&[
        "--peer",
        &format!("127.0.0.1:{rp}"),
        "--local-port",
        &sp.to_string(),
        "--code",
        "purple-monkey",
        "--encrypt",
        "--compress",
        "on",
    ]));
    let (sf, rf) = (snd.wait(LIMIT), r.wait(LIMIT));
    assert_ok("sender", &sf);
    assert_ok("receiver", &rf);
    assert!(sf.stderr.contains("peer authenticated by Code"), "{sf:?}");
    assert!(
        sf.stderr.contains("delivery confirmed"),
        "the v1 session's report came over QUIC: {sf:?}"
    );
    s.assert_received();
}

#[test]
fn a_wrong_code_is_refused_on_both_sides_before_any_file_moves() {
    let s = Scene::new();
    let (rp, sp) = (free_port(), free_port());
    let r = run(s.receive(&[
        "--peer",
        &format!("127.0.0.1:{sp}"),
        "--local-port",
        &rp.to_string(),
        "--code",
        "tiger",
    ]));
    let snd = run(s.send(&[
        "--peer",
        &format!("127.0.0.1:{rp}"),
        "--local-port",
        &sp.to_string(),
        "--code",
        "tigre",
    ]));
    for (side, f) in [("sender", snd.wait(LIMIT)), ("receiver", r.wait(LIMIT))] {
        assert_eq!(f.code(), NOT_AUTHENTICATED, "the {side}: {f:?}");
        assert!(
            f.stderr.contains("error: wrong code"),
            "the {side} names the cause: {f:?}"
        );
    }
    s.assert_nothing_received();
}

#[test]
fn tickets_pasted_both_ways_need_no_code() {
    let s = Scene::new();
    // The receiver is asked for the sender's ticket; the sender gets the receiver's.
    let mut r = Talking::start(s.receive(&["--local-port", "0"]));
    let r_ticket = r.ticket().to_string();
    let snd = Talking::start(s.send(&["--peer", &r_ticket]));
    let s_ticket = snd.ticket();
    r.paste(&s_ticket);
    let (sf, rf) = (snd.guard.wait(LIMIT), r.guard.wait(LIMIT));
    assert_ok("sender", &sf);
    assert_ok("receiver", &rf);
    assert!(
        sf.stderr.contains("peer authenticated by Tickets"),
        "{sf:?}"
    );
    s.assert_received();
}

#[test]
fn a_ticket_with_a_wrong_key_is_refused_and_says_why() {
    let s = Scene::new();
    let mut r = Talking::start(s.receive(&["--local-port", "0"]));
    let mut wrong = r.ticket();
    wrong.fingerprint[0] ^= 1;
    let snd = Talking::start(s.send(&["--peer", &wrong.to_string()]));
    r.paste(&snd.ticket());
    let (sf, rf) = (snd.guard.wait(LIMIT), r.guard.wait(LIMIT));
    assert_eq!(sf.code(), NOT_AUTHENTICATED, "{sf:?}");
    assert!(
        sf.stderr.contains("is not the one its ticket names"),
        "the sender says why: {sf:?}"
    );
    assert_eq!(rf.code(), NOT_AUTHENTICATED, "{rf:?}");
    assert!(
        rf.stderr.contains("refused this side's certificate"),
        "the receiver says why: {rf:?}"
    );
    s.assert_nothing_received();
}

#[test]
fn a_listening_receiver_takes_a_sender_that_names_it() {
    let s = Scene::new();
    let port = free_port();
    let r = run(s.receive(&["--listen", &port.to_string(), "--code", "c0de"]));
    std::thread::sleep(Duration::from_millis(300));
    let snd = run(s.send(&["--peer", &format!("127.0.0.1:{port}"), "--code", "c0de"]));
    let (sf, rf) = (snd.wait(LIMIT), r.wait(LIMIT));
    assert_ok("sender", &sf);
    assert_ok("receiver", &rf);
    s.assert_received();
}

#[test]
fn a_listening_sender_dials_back_the_receiver_that_punches_it() {
    let s = Scene::new();
    let port = free_port();
    let snd = run(s.send(&["--listen", &port.to_string(), "--code", "c0de"]));
    std::thread::sleep(Duration::from_millis(300));
    let r = run(s.receive(&["--peer", &format!("127.0.0.1:{port}"), "--code", "c0de"]));
    let (sf, rf) = (snd.wait(LIMIT), r.wait(LIMIT));
    assert_ok("sender", &sf);
    assert_ok("receiver", &rf);
    assert!(
        sf.stderr.contains("the receiver punched from 127.0.0.1:"),
        "{sf:?}"
    );
    s.assert_received();
}

#[test]
fn a_peer_that_never_comes_ends_in_a_bounded_time_with_its_own_exit_code() {
    let s = Scene::new();
    let started = std::time::Instant::now();
    let f = run(s.send(&[
        "--peer",
        &format!("127.0.0.1:{}", free_port()),
        "--code",
        "x",
        "--timeout",
        "5",
    ]))
    .wait(LIMIT);
    assert_eq!(f.code(), NO_PEER, "{f:?}");
    assert!(
        f.stderr
            .contains("did not answer at any of 1 punching instants"),
        "{f:?}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "{:?}",
        started.elapsed()
    );
}

#[test]
fn serverless_usage_mistakes_are_named_before_anything_binds() {
    let s = Scene::new();
    for (args, says) in [
        (&["--listen", "4000"][..], "--listen needs --code"),
        (
            &["--peer", "127.0.0.1:4000"][..],
            "--peer HOST:PORT needs --code",
        ),
        (&["--peer", "p2pcabc"][..], "--peer: "),
        (&["--peer", "nowhere"][..], "neither a ticket"),
    ] {
        let f = run(s.receive(args)).wait(LIMIT);
        assert_eq!(f.code(), 1, "{args:?}: {f:?}");
        assert!(f.stderr.contains(says), "{args:?}: {f:?}");
    }
}

/// Start the SNTP responder on 127.0.0.1 with its clock `offset_ms` ahead; its address.
fn sntp_responder(offset_ms: i64) -> (ChildGuard, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_udp-responder"));
    cmd.args(["sntp", "127.0.0.1:0", &offset_ms.to_string()]);
    let (guard, stdout) = ChildGuard::spawn_reading_stdout(&mut cmd);
    let mut line = String::new();
    std::io::BufRead::read_line(&mut std::io::BufReader::new(stdout), &mut line)
        .expect("the responder's first line");
    let addr = line
        .trim()
        .strip_prefix("ready ")
        .unwrap_or_else(|| panic!("responder said {line:?}"))
        .to_owned();
    (guard, addr)
}

#[test]
fn ntp_time_sets_the_punching_instants_when_the_local_clock_is_wrong() {
    // The time server is 3600.5 s ahead of this machine: by its time, the local clock is
    // wrong, and both sides punch on its 10-second boundaries, at x.5 s locally.
    let (_sntp, addr) = sntp_responder(3_600_500);
    let s = Scene::new();
    let (rp, sp) = (free_port(), free_port());
    let r = run(s.receive(&[
        "--peer",
        &format!("127.0.0.1:{sp}"),
        "--local-port",
        &rp.to_string(),
        "--code",
        "c",
        "--ntp",
        &addr,
    ]));
    let snd = run(s.send(&[
        "--peer",
        &format!("127.0.0.1:{rp}"),
        "--local-port",
        &sp.to_string(),
        "--code",
        "c",
        "--ntp",
        &addr,
    ]));
    let (sf, rf) = (snd.wait(LIMIT), r.wait(LIMIT));
    assert_ok("sender", &sf);
    assert_ok("receiver", &rf);
    for (side, f) in [("sender", &sf), ("receiver", &rf)] {
        assert_offset(side, f, 3600.5);
        let (ntp, local) = punching_instants(f)[0];
        assert_eq!(ntp % 10.0, 0.0, "the {side}'s instant by NTP time: {ntp}");
        let shift = ntp - local;
        assert!(
            (shift - 3600.5).abs() < 0.1,
            "the {side} punches at {local} locally, {ntp} by NTP: {shift}"
        );
    }
    s.assert_received();
}

#[test]
fn a_time_server_that_does_not_answer_is_an_error() {
    let s = Scene::new();
    let f = run(s.send(&[
        "--peer",
        "127.0.0.1:9",
        "--code",
        "c",
        "--ntp",
        &format!("127.0.0.1:{}", free_port()),
    ]))
    .wait(LIMIT);
    assert_eq!(f.code(), 2, "{f:?}");
    assert!(f.stderr.contains("gave no usable time"), "{f:?}");
}

#[test]
fn the_library_runs_a_serverless_transfer_on_async_std_with_tickets() {
    use p2p_copy_async_std::{PeerSpec, SendOptions, Serverless, ServerlessConfig, Ticket};
    let s = Scene::new();
    let out = s.out();
    let src = s.src();
    let (sent, received) = async_std::task::block_on(async move {
        let cfg = ServerlessConfig {
            idle_timeout: Duration::from_secs(30),
            timeout: Duration::from_secs(20),
            ..ServerlessConfig::default()
        };
        let r = Serverless::bind(cfg.clone())
            .await
            .expect("the receiver binds");
        let snd = Serverless::bind(cfg).await.expect("the sender binds");
        // Each side's ticket, with the address this machine reaches it at.
        let on_loopback = |t: Ticket| {
            PeerSpec::Ticket(Ticket {
                addr: ([127, 0, 0, 1], t.addr.port()).into(),
                ..t
            })
        };
        let (r_peer, s_peer) = (on_loopback(snd.ticket()), on_loopback(r.ticket()));
        futures_lite::future::zip(
            snd.send(Some(s_peer), vec![src], SendOptions::default(), |_| {}),
            r.receive(Some(r_peer), out, |_| {}),
        )
        .await
    });
    let (sent, received) = (sent.expect("sent"), received.expect("received"));
    assert_eq!(sent.files, received.files);
    assert!(matches!(
        sent.path,
        p2p_copy_async_std::PathTaken::Direct { .. }
    ));
    s.assert_received();
}
