//! Direct connections between two `p2p-copy` processes in the network-namespace lab: a
//! relay host and hosts behind cone, symmetric and UDP-blocking NATs (`shared/NETLAB.md`,
//! `p2p_copy_tests::netlab`). Each test builds its own lab, runs the real binary in the
//! hosts' namespaces, checks the received tree byte for byte, reads the `path: …` line
//! both sides print, and checks where the bytes went from the relay host's interface
//! counters rather than from our own logs.
//!
//! Where a direct path could come up, the relay host's link is held to a few Mbit/s
//! (`SLOW_RELAY_MBIT`): the transfer starts over the relay at once, so an unlimited relay
//! would finish a few MiB before any direct path is up, and a test that expects "direct"
//! or "relay" could not tell the two apart.
//!
//! Runs as root with iproute2 and nftables (`.ci/run` installs them); case (f) also needs
//! the Python p2p-copy 0.1.2 venv (`scripts/python-venv.sh`). Without them the tests
//! fail with the reason, never skip.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use p2p_copy_tests::binary::cli_binary;
use p2p_copy_tests::netlab::{Host, Lab, LabProcess, Nat, RELAY_IP};
use p2p_copy_tests::process::Finished;
use p2p_copy_tests::python;
use p2p_copy_tests::tree::{self, FileSpec, MIB};

/// The relay's WebSocket port; it answers STUN on this one and the next.
const PORT: u16 = 8765;
/// How long one side of a transfer may run.
const LIMIT: Duration = Duration::from_secs(100);
/// How long one side may keep running once the other has exited.
const GRACE: Duration = Duration::from_secs(20);
/// The relay host's link, each way, where a direct path could win: 1 MB/s.
const SLOW_RELAY_MBIT: u32 = 8;
/// The exit code of `--direct-only` without a direct path.
const NO_DIRECT_PATH: i32 = 9;

/// A lab with our relay on the relay host, hosts behind NATs, and a source tree.
struct Scene {
    lab: Lab,
    url: String,
    code: String,
    /// Holds `src/` (what is sent) and `out/` (where it arrives).
    dir: tempfile::TempDir,
    /// Size of the incompressible `src/big.bin`, which dominates the payload.
    big: u64,
}

impl Scene {
    /// Hosts behind `nats`, our relay, and `src/` = the standard tree plus `big` random
    /// bytes in `big.bin`.
    fn new(nats: &[(u8, Nat)], big: u64) -> (Scene, Vec<Host>) {
        let mut lab = Lab::new();
        let hosts = nats.iter().map(|&(n, nat)| lab.add_nat(n, nat)).collect();
        lab.start_relay(&cli_binary(), PORT, &[]);
        (Scene::around(lab, big), hosts)
    }

    fn around(lab: Lab, big: u64) -> Scene {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut files = tree::standard_tree();
        files.push(FileSpec::random("big.bin", big, 42));
        tree::write_tree(&dir.path().join("src"), &files);
        Scene {
            lab,
            url: format!("ws://{RELAY_IP}:{PORT}"),
            code: format!("lab-{}", std::process::id()),
            dir,
            big,
        }
    }

    fn src(&self) -> PathBuf {
        self.dir.path().join("src")
    }

    fn out(&self) -> PathBuf {
        self.dir.path().join("out")
    }

    /// Hold the relay host's link to [`SLOW_RELAY_MBIT`] each way.
    fn slow_relay(&self) {
        self.lab
            .limit_wan_link(&self.lab.relay_ns(), SLOW_RELAY_MBIT);
    }

    /// Bytes in and out of the relay host's interface so far.
    fn relay_bytes(&self) -> u64 {
        self.lab.iface(&self.lab.relay_ns(), "wan0").total_bytes()
    }

    /// Start our receiver on `host` with `flags`.
    fn receiver(&mut self, host: &Host, flags: &[&str]) -> LabProcess {
        let out = self.out();
        let mut cmd = Command::new(cli_binary());
        cmd.args(["receive", &self.url, &self.code, "--out"])
            .arg(out)
            .args(flags);
        self.lab.spawn(&host.ns, &cmd)
    }

    /// Start our sender of `src/` on `host` with `flags`.
    fn sender(&mut self, host: &Host, flags: &[&str]) -> LabProcess {
        let src = self.src();
        let mut cmd = Command::new(cli_binary());
        cmd.args(["send", &self.url, &self.code])
            .arg(src)
            .args(flags);
        self.lab.spawn(&host.ns, &cmd)
    }

    /// Our receiver on `r` and our sender on `s`, each with its flags, to the end.
    fn transfer(
        &mut self,
        (r, r_flags): (&Host, &[&str]),
        (s, s_flags): (&Host, &[&str]),
    ) -> (Finished, Finished) {
        let receiver = self.receiver(r, r_flags);
        let sender = self.sender(s, s_flags);
        finish(receiver, sender)
    }

    fn assert_received(&self) {
        tree::assert_same_tree(&self.src(), &self.out().join("src"));
    }

    /// The payload's size in bytes.
    fn payload(&self) -> u64 {
        tree::standard_tree()
            .iter()
            .map(|f| f.content.bytes().len() as u64)
            .sum::<u64>()
            + self.big
    }
}

/// Wait for a receiver and a sender to exit: up to [`LIMIT`], and up to [`GRACE`] for one
/// once the other has exited. Panics with both outputs when one had to be killed.
fn finish(receiver: LabProcess, sender: LabProcess) -> (Finished, Finished) {
    let deadline = Instant::now() + LIMIT;
    while !receiver.has_exited() && !sender.has_exited() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    let rest = deadline
        .saturating_duration_since(Instant::now())
        .min(GRACE);
    let (r, r_killed) = receiver.wait_or_kill(rest);
    let rest = deadline
        .saturating_duration_since(Instant::now())
        .min(GRACE);
    let (s, s_killed) = sender.wait_or_kill(rest);
    assert!(
        !r_killed && !s_killed,
        "killed after {LIMIT:?}, or {GRACE:?} after the other side ended \
         (receiver killed: {r_killed}, sender killed: {s_killed}):\nreceiver: {r:?}\nsender: {s:?}"
    );
    (r, s)
}

fn assert_ok(side: &str, f: &Finished) {
    assert_eq!(f.code(), 0, "the {side} failed: {f:?}");
}

/// The `path: …` line `side` printed last.
fn path_line(side: &str, f: &Finished) -> String {
    f.stderr
        .lines()
        .rev()
        .find(|l| l.starts_with("path: "))
        .unwrap_or_else(|| panic!("the {side} printed no `path: ` line: {f:?}"))
        .to_owned()
}

/// The peer address of `path: direct (<kind>) <ip:port>`.
fn direct_peer(side: &str, f: &Finished, kind: &str) -> SocketAddr {
    let line = path_line(side, f);
    let prefix = format!("path: direct ({kind}) ");
    let addr = line
        .strip_prefix(&prefix)
        .unwrap_or_else(|| panic!("the {side} did not go direct ({kind}): {line:?}\n{f:?}"));
    addr.trim()
        .parse()
        .unwrap_or_else(|e| panic!("the {side}'s peer address in {line:?}: {e}"))
}

/// `path: relay`, maybe followed by ` (<why>)`.
fn assert_relay_path(side: &str, f: &Finished) {
    let line = path_line(side, f);
    let rest = line
        .strip_prefix("path: relay")
        .unwrap_or_else(|| panic!("the {side} did not stay on the relay: {line:?}\n{f:?}"));
    assert!(
        rest.is_empty() || (rest.starts_with(" (") && rest.ends_with(')')),
        "the {side}'s path line: {line:?}"
    );
}

/// Every byte of `big.bin` went into the relay host and out again.
fn assert_relay_carried_it(s: &Scene, before: u64) {
    let carried = s.relay_bytes() - before;
    assert!(
        carried >= 2 * s.big,
        "the relay host's interface carried {carried} bytes in and out, less than twice \
         the {} bytes of big.bin",
        s.big
    );
}

/// The relay host's interface carried less than a tenth of the payload, in and out
/// together: at most 5 % of the data went through the relay.
fn assert_relay_mostly_bypassed(s: &Scene, before: u64, sides: [&Finished; 2]) {
    let carried = s.relay_bytes() - before;
    let payload = s.payload();
    assert!(
        carried * 10 < payload,
        "the relay host's interface carried {carried} bytes in and out, not less than 10 % \
         of the {payload}-byte payload\nreceiver: {}\nsender: {}",
        sides[0].stderr,
        sides[1].stderr
    );
}

/// (a) Both hosts behind cone NATs: hole punching works, both sides go direct to the
/// other's public address, and the relay host sees less than 10 % of the payload.
#[test]
fn a_cone_to_cone_goes_direct_and_the_relay_carries_under_a_tenth() {
    let (mut s, h) = Scene::new(&[(1, Nat::Cone), (2, Nat::Cone)], 32 * MIB);
    s.slow_relay();
    let before = s.relay_bytes();
    // -v: when the direct path came up is in the failure message.
    let (r, snd) = s.transfer((&h[1], &["-v"]), (&h[0], &["-v"]));
    assert_ok("receiver", &r);
    assert_ok("sender", &snd);
    s.assert_received();
    assert_relay_mostly_bypassed(&s, before, [&r, &snd]);
    let to_receiver = direct_peer("sender", &snd, "hole-punched");
    let to_sender = direct_peer("receiver", &r, "hole-punched");
    assert_eq!(to_receiver.ip(), IpAddr::V4(h[1].public_ip), "{snd:?}");
    assert_eq!(to_sender.ip(), IpAddr::V4(h[0].public_ip), "{r:?}");
}

/// (b) and (c): hosts that cannot reach each other over UDP; the relay carries it all.
fn relay_because_no_direct_path(nats: &[(u8, Nat)]) {
    let (mut s, h) = Scene::new(nats, MIB);
    s.slow_relay();
    let before = s.relay_bytes();
    let (r, snd) = s.transfer((&h[1], &[]), (&h[0], &[]));
    assert_ok("receiver", &r);
    assert_ok("sender", &snd);
    s.assert_received();
    assert_relay_path("receiver", &r);
    assert_relay_path("sender", &snd);
    assert_relay_carried_it(&s, before);
}

/// (b) A symmetric NAT on one side defeats hole punching: relay, byte-identical.
#[test]
fn b_cone_to_symmetric_goes_over_the_relay() {
    relay_because_no_direct_path(&[(1, Nat::Cone), (2, Nat::Symmetric)]);
}

/// (b) Symmetric NATs on both sides: relay, byte-identical.
#[test]
fn b_symmetric_to_symmetric_goes_over_the_relay() {
    relay_because_no_direct_path(&[(1, Nat::Symmetric), (2, Nat::Symmetric)]);
}

/// (c) UDP dropped at the sender's NAT: relay, byte-identical.
#[test]
fn c_udp_blocked_at_one_nat_goes_over_the_relay() {
    relay_because_no_direct_path(&[(1, Nat::UdpBlocked), (2, Nat::Cone)]);
}

/// (d) Two hosts on one LAN behind one NAT: direct over their host addresses.
#[test]
fn d_two_hosts_on_one_lan_go_direct_over_host_candidates() {
    let mut lab = Lab::new();
    let first = lab.add_nat(1, Nat::Cone);
    let second = lab.add_lan_host(&first);
    lab.start_relay(&cli_binary(), PORT, &[]);
    let mut s = Scene::around(lab, 8 * MIB);
    s.slow_relay();
    let (r, snd) = s.transfer((&second, &[]), (&first, &[]));
    assert_ok("receiver", &r);
    assert_ok("sender", &snd);
    s.assert_received();
    let to_receiver = direct_peer("sender", &snd, "LAN");
    let to_sender = direct_peer("receiver", &r, "LAN");
    assert_eq!(to_receiver.ip(), IpAddr::V4(second.lan_ip), "{snd:?}");
    assert_eq!(to_sender.ip(), IpAddr::V4(first.lan_ip), "{r:?}");
}

/// (e) The direct path cut mid-transfer (UDP between the two NATs dropped by an nft rule
/// added while the data flows): the transfer finishes over the relay, byte-identical,
/// and both sides say so.
#[test]
fn e_direct_path_cut_mid_transfer_finishes_over_the_relay() {
    let (mut s, h) = Scene::new(&[(1, Nat::Cone), (2, Nat::Cone)], 12 * MIB);
    // 3 MB/s on each NAT's link: the direct part alone takes about four seconds, so the
    // cut falls in the middle. The relay's path crosses the same two links.
    for host in &h {
        s.lab.limit_wan_link(&host.router_ns, 24);
    }
    let receiver = s.receiver(&h[1], &[]);
    let sender = s.sender(&h[0], &["-v"]);
    let up = sender.wait_for_stderr_line(Duration::from_secs(30), |l| {
        l.contains("direct path up after")
    });
    if up.is_none() {
        let (r, snd) = finish(receiver, sender);
        panic!("the sender logged no `direct path up after` within 30 s:\n{snd:?}\n{r:?}");
    }
    std::thread::sleep(Duration::from_millis(700));
    assert!(
        !receiver.has_exited() && !sender.has_exited(),
        "the transfer ended before the cut; the payload is too small for this test"
    );
    let at_cut = s.relay_bytes();
    s.lab.block_udp_between(&h[0], &h[1]);
    let (r, snd) = finish(receiver, sender);
    assert_ok("receiver", &r);
    assert_ok("sender", &snd);
    s.assert_received();
    for (side, f) in [("sender", &snd), ("receiver", &r)] {
        let line = path_line(side, f);
        assert!(
            line.starts_with("path: direct ") && line.contains(", then relay ("),
            "the {side} does not report the fall back to the relay: {line:?}\n{f:?}"
        );
    }
    // What was left after the cut crossed the relay host, in and out. At 3 MB/s, with
    // the cut 0.7 s after the direct path came up, at least a quarter of big.bin was left
    // unless that took more than three seconds.
    let after_cut = s.relay_bytes() - at_cut;
    assert!(
        after_cut >= s.big / 2,
        "the relay host carried only {after_cut} bytes in and out after the cut"
    );
}

/// Start the Python p2p-copy 0.1.2 with `args` on `host`.
fn python_side(s: &mut Scene, host: &Host, args: &[&str]) -> LabProcess {
    let mut cmd = python::command(args);
    cmd.current_dir(s.dir.path());
    s.lab.spawn(&host.ns, &cmd)
}

/// (f) A Python sender behind a cone NAT, our receiver behind another: no direct mode
/// with a peer that does not speak it; relay, byte-identical.
#[test]
fn f_python_sender_to_our_receiver_goes_over_the_relay() {
    let (mut s, h) = Scene::new(&[(1, Nat::Cone), (2, Nat::Cone)], MIB);
    s.slow_relay();
    let before = s.relay_bytes();
    let receiver = s.receiver(&h[1], &[]);
    let (url, code) = (s.url.clone(), s.code.clone());
    let sender = python_side(&mut s, &h[0], &["send", &url, &code, "src"]);
    let (r, snd) = finish(receiver, sender);
    assert_ok("receiver", &r);
    assert_ok("Python sender", &snd);
    s.assert_received();
    assert_relay_path("receiver", &r);
    assert_relay_carried_it(&s, before);
}

/// (f) Our sender to a Python receiver: relay, byte-identical.
#[test]
fn f_our_sender_to_python_receiver_goes_over_the_relay() {
    let (mut s, h) = Scene::new(&[(1, Nat::Cone), (2, Nat::Cone)], MIB);
    s.slow_relay();
    let before = s.relay_bytes();
    let (url, code) = (s.url.clone(), s.code.clone());
    let receiver = python_side(&mut s, &h[1], &["receive", &url, &code, "--out", "out"]);
    let sender = s.sender(&h[0], &[]);
    let (r, snd) = finish(receiver, sender);
    assert_ok("Python receiver", &r);
    assert_ok("sender", &snd);
    s.assert_received();
    assert_relay_path("sender", &snd);
    assert_relay_carried_it(&s, before);
}

/// (g) `--relay-only` on one side keeps both on the relay, between cone NATs where a
/// direct path would come up.
fn relay_only_on(receiver_flags: &[&str], sender_flags: &[&str]) {
    let (mut s, h) = Scene::new(&[(1, Nat::Cone), (2, Nat::Cone)], MIB);
    s.slow_relay();
    let before = s.relay_bytes();
    let (r, snd) = s.transfer((&h[1], receiver_flags), (&h[0], sender_flags));
    assert_ok("receiver", &r);
    assert_ok("sender", &snd);
    s.assert_received();
    assert_relay_path("receiver", &r);
    assert_relay_path("sender", &snd);
    assert_relay_carried_it(&s, before);
}

/// (g) `--relay-only` on the sender.
#[test]
fn g_relay_only_sender_never_leaves_the_relay() {
    relay_only_on(&[], &["--relay-only"]);
}

/// (g) `--relay-only` on the receiver.
#[test]
fn g_relay_only_receiver_never_leaves_the_relay() {
    relay_only_on(&["--relay-only"], &[]);
}

/// (g) `--direct-only` between cone NATs: direct, and the data never touches the relay.
#[test]
fn g_direct_only_goes_direct_without_the_relay_carrying_data() {
    let (mut s, h) = Scene::new(&[(1, Nat::Cone), (2, Nat::Cone)], 4 * MIB);
    let before = s.relay_bytes();
    let flags: &[&str] = &["--direct-only"];
    let (r, snd) = s.transfer((&h[1], flags), (&h[0], flags));
    assert_ok("receiver", &r);
    assert_ok("sender", &snd);
    s.assert_received();
    direct_peer("sender", &snd, "hole-punched");
    direct_peer("receiver", &r, "hole-punched");
    assert_relay_mostly_bypassed(&s, before, [&r, &snd]);
}

/// (g) `--direct-only` between symmetric NATs: both sides fail with exit code 9 and say
/// why, within the direct timeout, without sending the data over the relay instead.
#[test]
fn g_direct_only_fails_without_a_direct_path() {
    let (mut s, h) = Scene::new(&[(1, Nat::Symmetric), (2, Nat::Symmetric)], 4 * MIB);
    let before = s.relay_bytes();
    let flags: &[&str] = &["--direct-only", "--direct-timeout", "3"];
    let started = std::time::Instant::now();
    let (r, snd) = s.transfer((&h[1], flags), (&h[0], flags));
    let took = started.elapsed();
    for (side, f) in [("receiver", &r), ("sender", &snd)] {
        assert_eq!(f.code(), NO_DIRECT_PATH, "the {side}: {f:?}");
        assert!(
            f.stderr.contains("no direct path"),
            "the {side} does not say why: {f:?}"
        );
    }
    assert!(
        took < Duration::from_secs(30),
        "--direct-timeout 3 took {took:?}"
    );
    assert_relay_mostly_bypassed(&s, before, [&r, &snd]);
    assert!(
        !s.out().join("src").join("big.bin").exists(),
        "big.bin arrived although there was no direct path"
    );
}

// The lab itself: what the cases above rely on, checked with tools that do not depend on
// direct mode (STUN probes, relayed transfers, a shell).

/// Run `stun-probe` in `ns` from `bind` against the relay's STUN port: the mapped address,
/// or the error.
fn stun_probe(lab: &Lab, ns: &str, bind: &str) -> Result<SocketAddr, String> {
    let server = format!("{RELAY_IP}:{PORT}");
    let out = lab.exec(
        ns,
        std::path::Path::new(env!("CARGO_BIN_EXE_stun-probe")),
        &[bind, "1500", &server],
        Duration::from_secs(30),
    );
    assert_eq!(out.code(), 0, "stun-probe failed: {out:?}");
    let json: serde_json::Value = serde_json::from_str(out.stdout.trim())
        .unwrap_or_else(|e| panic!("stun-probe printed {:?}: {e}", out.stdout));
    let r = &json["results"][0];
    match (r["mapped"].as_str(), r["error"].as_str()) {
        (Some(m), None) => Ok(m.parse().expect("mapped address")),
        (None, Some(e)) => Err(e.to_owned()),
        _ => panic!("bad result {r}"),
    }
}

#[test]
fn lab_hosts_on_one_lan_share_their_nat_s_public_address() {
    let mut lab = Lab::new();
    let first = lab.add_nat(1, Nat::Cone);
    let second = lab.add_lan_host(&first);
    let third = lab.add_lan_host(&first);
    lab.start_relay(&cli_binary(), PORT, &[]);
    assert_eq!(
        [second.lan_ip, third.lan_ip].map(|ip| ip.to_string()),
        ["10.1.0.3", "10.1.0.4"]
    );
    assert_eq!(second.router_ns, first.router_ns);
    for host in [&first, &second, &third] {
        let seen = stun_probe(&lab, &host.ns, "0.0.0.0:0").expect("a STUN answer");
        assert_eq!(seen.ip(), IpAddr::V4(first.public_ip), "from {}", host.ns);
    }
}

#[test]
fn lab_udp_block_cuts_a_flow_under_way_and_leaves_tcp_alone() {
    let (mut s, h) = Scene::new(&[(1, Nat::Cone), (2, Nat::Cone)], MIB);
    // The same local port twice: the second probe belongs to the flow the first opened.
    stun_probe(&s.lab, &h[0].ns, "0.0.0.0:40000").expect("an answer before the block");
    s.lab.block_udp(&h[0], RELAY_IP);
    let err = stun_probe(&s.lab, &h[0].ns, "0.0.0.0:40000").expect_err("no answer after");
    assert!(err.starts_with("no STUN answer from"), "{err}");
    stun_probe(&s.lab, &h[1].ns, "0.0.0.0:40000").expect("the other NAT is not blocked");
    // The relay's TCP still passes: a transfer between the two hosts goes through.
    let receiver = s.receiver(&h[1], &[]);
    let sender = s.sender(&h[0], &[]);
    let (r, snd) = finish(receiver, sender);
    assert_ok("receiver", &r);
    assert_ok("sender", &snd);
    s.assert_received();
}

#[test]
fn lab_slow_relay_link_holds_a_relayed_transfer_to_its_rate() {
    // Symmetric NATs: whatever the clients try, the data goes through the relay.
    let (mut s, h) = Scene::new(&[(1, Nat::Symmetric), (2, Nat::Symmetric)], 2 * MIB);
    s.slow_relay();
    let started = Instant::now();
    let receiver = s.receiver(&h[1], &[]);
    let sender = s.sender(&h[0], &[]);
    let (r, snd) = finish(receiver, sender);
    let took = started.elapsed().as_secs_f64();
    assert_ok("receiver", &r);
    assert_ok("sender", &snd);
    s.assert_received();
    let floor = s.payload() as f64 / (f64::from(SLOW_RELAY_MBIT) * 1e6 / 8.0);
    assert!(
        took >= 0.9 * floor,
        "{} bytes through a {SLOW_RELAY_MBIT} Mbit/s link in {took:.2} s, faster than the \
         link ({floor:.2} s)",
        s.payload()
    );
}

#[test]
fn lab_forwarded_tcp_port_reaches_the_host_behind_the_nat() {
    let mut lab = Lab::new();
    let behind = lab.add_nat(1, Nat::Cone);
    lab.forward_tcp_port(&behind, 9000);
    // A relay on the host behind the NAT, reached by the public relay host through the
    // forward, and by nobody else.
    // Its stdout goes to stderr, where the lab watches for the line that says it listens.
    let mut relay = Command::new("sh");
    relay
        .args([
            "-c",
            "exec \"$0\" run-relay-server \"$1\" 9000 --no-tls >&2",
        ])
        .arg(cli_binary())
        .arg(behind.lan_ip.to_string());
    let relay = lab.spawn(&behind.ns, &relay);
    let listening = relay.wait_for_stderr_line(Duration::from_secs(10), |l| {
        l.starts_with("relay listening on ws://")
    });
    assert!(
        listening.is_some(),
        "the relay behind the NAT did not start"
    );
    let mut s = Scene::around(lab, MIB);
    s.url = format!("ws://{}:9000", behind.public_ip);
    let public = Host {
        ns: s.lab.relay_ns(),
        lan_ip: RELAY_IP,
        router_ns: s.lab.relay_ns(),
        public_ip: RELAY_IP,
    };
    let (r, snd) = s.transfer((&public, &[]), (&public, &[]));
    assert_ok("receiver", &r);
    assert_ok("sender", &snd);
    s.assert_received();
}

#[test]
fn lab_spawned_process_stderr_is_seen_line_by_line_and_killed_with_the_lab() {
    let mut lab = Lab::new();
    let host = lab.add_nat(1, Nat::Cone);
    let mut cmd = Command::new("sh");
    cmd.args(["-c", "echo one >&2; echo two >&2; exec sleep 60"]);
    let p = lab.spawn(&host.ns, &cmd);
    let line = p.wait_for_stderr_line(Duration::from_secs(10), |l| l.starts_with('t'));
    assert_eq!(line.as_deref(), Some("two"));
    assert!(!p.has_exited());
    let proc_dir = PathBuf::from(format!("/proc/{}", p.id()));
    assert!(proc_dir.exists());
    drop(lab);
    // Killed and reaped: its PID is gone.
    assert!(!proc_dir.exists(), "{} still runs", p.id());
    assert!(p.has_exited());
}
