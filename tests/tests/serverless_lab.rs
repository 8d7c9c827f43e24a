//! Transfers with no relay at all across the network-namespace lab (`shared/NETLAB.md`,
//! `p2p_copy_tests::netlab`): two hosts behind cone NATs swapping tickets, a listener
//! on a public host with a peer behind a NAT, a ticket with a wrong key, two sides
//! started 7 seconds apart, and `--ntp` against an SNTP responder whose clock is an
//! hour and a half-second ahead of this machine's. The "internet" host runs only the
//! test's UDP responder (STUN, or SNTP): no relay.
//!
//! `P2P_COPY_LAB_MIB` sets the size of the random file in the ticket test (3 MiB by
//! default), for a one-off measurement of a large tree.
//!
//! Runs as root with iproute2 and nftables (`.ci/run` installs them); without them the
//! tests fail with the reason, never skip.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use p2p_copy_tests::binary::cli_binary;
use p2p_copy_tests::netlab::{Host, Lab, Nat, RELAY_IP};
use p2p_copy_tests::process::{ChildGuard, Finished};
use p2p_copy_tests::serverless::{assert_offset, punching_instants, Talking};
use p2p_copy_tests::tree::{self, FileSpec, MIB};

/// How long one side may run.
const LIMIT: Duration = Duration::from_secs(120);
/// The UDP port every side uses: the cone NATs keep it, so the public address is
/// predictable.
const PORT: u16 = 40000;
/// Where the internet host answers STUN and SNTP.
const STUN_PORT: u16 = 3478;
const SNTP_PORT: u16 = 1123;
const NOT_AUTHENTICATED: i32 = 10;

/// `program args` in namespace `ns`.
fn in_ns(ns: &str, program: &Path, args: &[&str]) -> Command {
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", ns]).arg(program).args(args);
    cmd
}

/// Start the test's UDP responder on the internet host and wait until it is bound.
fn responder(lab: &Lab, args: &[&str]) -> ChildGuard {
    let bin = Path::new(env!("CARGO_BIN_EXE_udp-responder"));
    let (guard, stdout) = ChildGuard::spawn_reading_stdout(&mut in_ns(&lab.relay_ns(), bin, args));
    let mut line = String::new();
    BufReader::new(stdout)
        .read_line(&mut line)
        .expect("the responder's first line");
    assert!(line.starts_with("ready "), "responder: {line:?}");
    guard
}

/// The lab and the files. A test's processes are locals declared after it, so they are
/// killed before the lab deletes the namespaces.
struct Scene {
    lab: Lab,
    dir: tempfile::TempDir,
}

impl Scene {
    fn new(big: u64) -> Scene {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut files = tree::standard_tree();
        files.push(FileSpec::random("big.bin", big, 5));
        tree::write_tree(&dir.path().join("src"), &files);
        Scene {
            lab: Lab::new(),
            dir,
        }
    }

    fn src(&self) -> PathBuf {
        self.dir.path().join("src")
    }

    fn out(&self) -> PathBuf {
        self.dir.path().join("out")
    }

    fn receive(&self, ns: &str, args: &[&str]) -> Command {
        let out = self.out();
        let mut all = vec!["-v", "receive", "--out", out.to_str().expect("utf-8 path")];
        all.extend_from_slice(args);
        in_ns(ns, &cli_binary(), &all)
    }

    fn send(&self, ns: &str, args: &[&str]) -> Command {
        let src = self.src();
        let mut all = vec!["-v", "send"];
        all.extend_from_slice(args);
        all.push(src.to_str().expect("utf-8 path"));
        in_ns(ns, &cli_binary(), &all)
    }

    fn assert_received(&self) {
        tree::assert_same_tree(&self.src(), &self.out().join("src"));
    }
}

fn assert_direct(side: &str, f: &Finished, peer: &str) {
    assert_eq!(f.code(), 0, "the {side} failed: {f:?}");
    let line = f
        .stderr
        .lines()
        .rev()
        .find(|l| l.starts_with("path: "))
        .unwrap_or_else(|| panic!("the {side} printed no path: {f:?}"));
    assert!(
        line.starts_with("path: direct") && line.contains(peer),
        "the {side}'s path {line:?}, expected the peer {peer}: {f:?}"
    );
}

fn two_cone_nats(s: &mut Scene) -> (Host, Host) {
    let a = s.lab.add_nat(1, Nat::Cone);
    let b = s.lab.add_nat(2, Nat::Cone);
    (a, b)
}

#[test]
fn two_hosts_behind_cone_nats_swap_tickets_and_move_a_tree_with_no_relay() {
    let mib: u64 = std::env::var("P2P_COPY_LAB_MIB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3);
    let mut s = Scene::new(mib * MIB);
    let (a, b) = two_cone_nats(&mut s);
    let _stun = responder(&s.lab, &["stun", &format!("{RELAY_IP}:{STUN_PORT}")]);
    let stun = format!("{RELAY_IP}:{STUN_PORT}");
    let port = PORT.to_string();
    let started = Instant::now();
    let mut r = Talking::start(s.receive(&a.ns, &["--local-port", &port, "--stun", &stun]));
    let r_ticket = r.ticket();
    assert_eq!(
        r_ticket.addr.to_string(),
        format!("{}:{PORT}", a.public_ip),
        "the receiver's ticket carries its public address, from STUN"
    );
    let snd = Talking::start(s.send(
        &b.ns,
        &[
            "--peer",
            &r_ticket.to_string(),
            "--local-port",
            &port,
            "--stun",
            &stun,
        ],
    ));
    let s_ticket = snd.ticket();
    assert_eq!(s_ticket.addr.to_string(), format!("{}:{PORT}", b.public_ip));
    r.paste(&s_ticket);
    let (sf, rf) = (snd.guard.wait(LIMIT), r.guard.wait(LIMIT));
    let took = started.elapsed();
    assert_direct("sender", &sf, &format!("{}:{PORT}", a.public_ip));
    assert_direct("receiver", &rf, &format!("{}:{PORT}", b.public_ip));
    assert!(
        sf.stderr.contains("peer authenticated by Tickets"),
        "{sf:?}"
    );
    s.assert_received();
    let rate = sf
        .stderr
        .lines()
        .find(|l| l.starts_with("sent "))
        .unwrap_or_default()
        .to_owned();
    eprintln!("{mib} MiB across two cone NATs: {rate}; {took:.1?} from start to end");
}

#[test]
fn a_listener_on_a_public_host_takes_a_peer_behind_a_nat() {
    let mut s = Scene::new(3 * MIB);
    let a = s.lab.add_nat(1, Nat::Cone);
    let public = s.lab.relay_ns();
    let port = PORT.to_string();
    let r = ChildGuard::spawn(&mut s.receive(&public, &["--listen", &port, "--code", "c0de"]));
    std::thread::sleep(Duration::from_millis(500));
    let snd = ChildGuard::spawn(&mut s.send(
        &a.ns,
        &["--peer", &format!("{RELAY_IP}:{PORT}"), "--code", "c0de"],
    ));
    let (sf, rf) = (snd.wait(LIMIT), r.wait(LIMIT));
    assert_direct("sender", &sf, &format!("{RELAY_IP}:{PORT}"));
    // The listener sees the NAT's public address.
    assert_direct("receiver", &rf, &format!(" {}:", a.public_ip));
    s.assert_received();
}

#[test]
fn a_ticket_with_a_wrong_key_is_refused_before_any_file_moves() {
    let mut s = Scene::new(MIB);
    let (a, b) = two_cone_nats(&mut s);
    let _stun = responder(&s.lab, &["stun", &format!("{RELAY_IP}:{STUN_PORT}")]);
    let stun = format!("{RELAY_IP}:{STUN_PORT}");
    let port = PORT.to_string();
    let mut r = Talking::start(s.receive(&a.ns, &["--local-port", &port, "--stun", &stun]));
    let mut wrong = r.ticket();
    wrong.fingerprint[31] ^= 0x80;
    let snd = Talking::start(s.send(
        &b.ns,
        &[
            "--peer",
            &wrong.to_string(),
            "--local-port",
            &port,
            "--stun",
            &stun,
        ],
    ));
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
    assert!(!s.out().join("src").exists(), "files arrived");
}

/// A receiver on `a` and a sender on `b`, each given the other's predicted public
/// address and the code, the sender started `apart` after the receiver.
fn by_address(
    s: &Scene,
    a: &Host,
    b: &Host,
    apart: Duration,
    extra: &[&str],
) -> (Finished, Finished) {
    let port = PORT.to_string();
    let mut r_args = vec![
        "--peer".to_owned(),
        format!("{}:{PORT}", b.public_ip),
        "--local-port".into(),
        port.clone(),
        "--code".into(),
        "lab-code".into(),
    ];
    r_args.extend(extra.iter().map(|e| (*e).to_owned()));
    let mut s_args = r_args.clone();
    s_args[1] = format!("{}:{PORT}", a.public_ip);
    let r_args: Vec<&str> = r_args.iter().map(String::as_str).collect();
    let s_args: Vec<&str> = s_args.iter().map(String::as_str).collect();
    let r = ChildGuard::spawn(&mut s.receive(&a.ns, &r_args));
    std::thread::sleep(apart);
    let snd = ChildGuard::spawn(&mut s.send(&b.ns, &s_args));
    (snd.wait(LIMIT), r.wait(LIMIT))
}

#[test]
fn sides_started_seven_seconds_apart_punch_at_the_same_instants() {
    let mut s = Scene::new(3 * MIB);
    let (a, b) = two_cone_nats(&mut s);
    let (sf, rf) = by_address(&s, &a, &b, Duration::from_secs(7), &[]);
    assert_direct("sender", &sf, &format!("{}:{PORT}", a.public_ip));
    assert_direct("receiver", &rf, &format!("{}:{PORT}", b.public_ip));
    s.assert_received();
    let (si, ri) = (punching_instants(&sf), punching_instants(&rf));
    assert!(!si.is_empty() && !ri.is_empty(), "{sf:?}\n{rf:?}");
    for (at, _) in si.iter().chain(&ri) {
        assert_eq!(
            at % 10.0,
            0.0,
            "an instant off the 10-second boundaries: {at}"
        );
    }
    // The sender's instants are the receiver's from where it joined.
    assert!(
        si.iter()
            .all(|s| ri.iter().any(|r| r.0 == s.0) || s.0 > ri.last().unwrap().0),
        "the sides' instants differ: sender {si:?}, receiver {ri:?}"
    );
}

#[test]
fn ntp_time_sets_both_sides_instants_when_the_local_clock_is_wrong() {
    let mut s = Scene::new(3 * MIB);
    let (a, b) = two_cone_nats(&mut s);
    // The time server is 3600.5 s ahead of the machine's clock, which both sides use.
    let _sntp = responder(
        &s.lab,
        &["sntp", &format!("{RELAY_IP}:{SNTP_PORT}"), "3600500"],
    );
    let ntp = format!("{RELAY_IP}:{SNTP_PORT}");
    let (sf, rf) = by_address(&s, &a, &b, Duration::from_secs(2), &["--ntp", &ntp]);
    assert_direct("sender", &sf, &format!("{}:{PORT}", a.public_ip));
    assert_direct("receiver", &rf, &format!("{}:{PORT}", b.public_ip));
    s.assert_received();
    for (side, f) in [("sender", &sf), ("receiver", &rf)] {
        assert_offset(side, f, 3600.5);
        for (ntp, local) in punching_instants(f) {
            assert_eq!(ntp % 10.0, 0.0, "the {side}'s instant by NTP time: {ntp}");
            assert!(
                (ntp - local - 3600.5).abs() < 0.1,
                "the {side} punches at {local} locally, {ntp} by NTP"
            );
        }
    }
}
