//! The relay as an operator runs it: `p2p-copy run-relay-server` with metrics, access
//! tokens, fair-use limits, a drain on SIGTERM and JSON logs, driven by real senders and
//! receivers (ours and the Python p2p-copy 0.1.2) as separate processes on 127.0.0.1.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::path::Path;
use std::process::Command;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use p2p_copy_tests::deadline::wait_for;
use p2p_copy_tests::process::{ChildGuard, Finished};
use p2p_copy_tests::python;
use p2p_copy_tests::scene::Scene;
use p2p_copy_tests::tree::{assert_same_tree, write_tree, FileSpec, MIB};

const BIN: &str = env!("CARGO_BIN_EXE_p2p-copy");
/// Longest any single command of these tests may take.
const LIMIT: Duration = Duration::from_secs(60);
const SECRET: &str = "Zq7-relay-secret-4711";

fn p2p_copy(args: &[&str]) -> Command {
    let mut cmd = Command::new(BIN);
    cmd.args(args).env_remove("P2P_COPY_RELAY_TOKEN");
    cmd
}

fn spawn(args: &[&str]) -> ChildGuard {
    ChildGuard::spawn(&mut p2p_copy(args))
}

fn run(args: &[&str]) -> Finished {
    spawn(args).wait(LIMIT)
}

fn arg(p: &Path) -> &str {
    p.to_str().expect("temp paths are UTF-8")
}

/// A relay process and what it announced on stdout.
struct Relay {
    process: ChildGuard,
    url: String,
    addr: SocketAddr,
    metrics: Option<SocketAddr>,
    /// The STUN ports, when the relay announced them before what was waited for.
    stun: Vec<SocketAddr>,
}

/// Start `p2p-copy run-relay-server 127.0.0.1 <port> --no-tls <extra>` and read its
/// announcements: the WebSocket URL, and the metrics address when `--metrics` is given.
fn start_relay_on(port: u16, extra: &[&str]) -> Relay {
    let mut cmd = p2p_copy(&[
        "run-relay-server",
        "127.0.0.1",
        &port.to_string(),
        "--no-tls",
    ]);
    cmd.args(extra);
    let (mut process, stdout) = ChildGuard::spawn_reading_stdout(&mut cmd);
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            let _ = tx.send(line);
        }
    });
    let wants_metrics = extra.contains(&"--metrics");
    let (mut url, mut metrics, mut stun) = (None, None, Vec::new());
    let deadline = Instant::now() + Duration::from_secs(10);
    while url.is_none() || (wants_metrics && metrics.is_none()) {
        let left = deadline.saturating_duration_since(Instant::now());
        let Ok(line) = rx.recv_timeout(left) else {
            process.kill();
            panic!(
                "the relay did not announce itself: {:?}",
                process.wait(LIMIT)
            );
        };
        if let Some(u) = line.strip_prefix("relay listening on ") {
            url = Some(u.to_owned());
        } else if let Some(a) = line.strip_prefix("relay answering STUN on udp ") {
            stun.push(a.parse().expect("STUN address"));
        } else if let Some(m) = line.strip_prefix("relay metrics on http://") {
            let addr = m.trim_end_matches("/metrics");
            metrics = Some(addr.parse().expect("metrics address"));
        }
    }
    let url = url.expect("url");
    let addr = url
        .trim_start_matches("ws://")
        .parse()
        .expect("relay address");
    Relay {
        process,
        url,
        addr,
        metrics,
        stun,
    }
}

fn start_relay(extra: &[&str]) -> Relay {
    start_relay_on(0, extra)
}

/// An HTTP GET on `addr`: the status code and the body.
fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    let mut tcp = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).expect("connect");
    tcp.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    write!(tcp, "GET {path} HTTP/1.1\r\nHost: relay\r\n\r\n").unwrap();
    let mut reply = String::new();
    tcp.read_to_string(&mut reply).expect("read the reply");
    let (head, body) = reply.split_once("\r\n\r\n").expect("a complete reply");
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("status");
    (status, body.to_owned())
}

/// The value of the sample `name` (with its labels, exactly as written) in the text.
fn sample(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
}

fn scrape(relay: &Relay) -> String {
    let (status, body) = http_get(relay.metrics.expect("--metrics given"), "/metrics");
    assert_eq!(status, 200, "{body}");
    body
}

fn metric(relay: &Relay, name: &str) -> f64 {
    sample(&scrape(relay), name).unwrap_or(0.0)
}

/// Wait until the metric `name` of `relay` reaches `value` (bounded).
fn wait_metric(relay: &Relay, name: &str, value: f64) {
    wait_for(Duration::from_secs(20), name, || {
        (metric(relay, name) >= value).then_some(())
    });
}

/// The status line's code of a WebSocket upgrade request to `target` on `addr`, with
/// any extra header lines.
fn upgrade_status(addr: SocketAddr, target: &str, headers: &str) -> u16 {
    let mut tcp = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).expect("connect");
    tcp.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    write!(
        tcp,
        "GET {target} HTTP/1.1\r\nHost: relay\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n{headers}\r\n"
    )
    .unwrap();
    let mut line = String::new();
    BufReader::new(tcp)
        .read_line(&mut line)
        .expect("status line");
    line.split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status in {line:?}"))
}

/// A source tree of one random file of `size` bytes.
fn one_file(size: u64) -> Scene {
    let s = Scene::new();
    write_tree(&s.src, &[FileSpec::random("data.bin", size, 7)]);
    s
}

/// A receiver, then a sender over the relay only (a direct path on this machine would
/// bypass the relay), with `extra` arguments for both. Returns both when done.
fn transfer_through(url: &str, code: &str, s: &Scene, extra: &[&str]) -> (Finished, Finished) {
    let mut recv = vec!["receive", url, code, "--out", arg(&s.out), "--relay-only"];
    recv.extend_from_slice(extra);
    let receiver = spawn(&recv);
    let mut send = vec!["send", url, code, arg(&s.src), "--relay-only"];
    send.extend_from_slice(extra);
    let sender = run(&send);
    (sender, receiver.wait(LIMIT))
}

/// The sender was given the folder `src`: it arrives as `out/src`.
fn assert_received(s: &Scene) {
    assert_same_tree(&s.src, &s.out.join("src"));
}

fn assert_ok(sender: &Finished, receiver: &Finished) {
    assert_eq!(sender.code(), 0, "sender: {sender:?}");
    assert_eq!(receiver.code(), 0, "receiver: {receiver:?}");
}

fn stop(relay: Relay) -> Finished {
    relay.process.signal("TERM");
    relay.process.wait(LIMIT)
}

#[test]
fn metrics_and_healthz_show_a_real_transfer() {
    let relay = start_relay(&["--metrics", "127.0.0.1:0"]);
    let (status, body) = http_get(relay.metrics.unwrap(), "/healthz");
    assert_eq!((status, body.as_str()), (200, "ok\n"));
    assert_eq!(http_get(relay.metrics.unwrap(), "/nothing").0, 404);
    let before = scrape(&relay);
    assert_eq!(
        sample(&before, "p2p_copy_relay_connections_total"),
        Some(0.0)
    );
    assert_eq!(
        sample(&before, "p2p_copy_relay_forwarded_bytes_total"),
        Some(0.0)
    );

    // A STUN Binding request to the relay's UDP port is answered and counted.
    let udp = UdpSocket::bind("127.0.0.1:0").unwrap();
    udp.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    udp.send_to(
        &p2p_copy_core::stun::binding_request([3; 12]),
        relay.stun[0],
    )
    .unwrap();
    let mut buf = [0u8; 256];
    udp.recv_from(&mut buf).expect("a STUN answer");

    let size = 5 * MIB + 123;
    let s = one_file(size);
    let code = "metrics code";
    let receiver = spawn(&[
        "receive",
        &relay.url,
        code,
        "--out",
        arg(&s.out),
        "--relay-only",
    ]);
    // While the receiver waits, the relay shows it.
    wait_metric(&relay, "p2p_copy_relay_pairs_waiting", 1.0);
    assert_eq!(metric(&relay, "p2p_copy_relay_connections_open"), 1.0);
    let sender = run(&["send", &relay.url, code, arg(&s.src), "--relay-only"]);
    let receiver = receiver.wait(LIMIT);
    assert_ok(&sender, &receiver);
    assert_received(&s);

    wait_metric(
        &relay,
        "p2p_copy_relay_pairs_ended_total{outcome=\"completed\"}",
        1.0,
    );
    wait_for(Duration::from_secs(10), "connections closed", || {
        (metric(&relay, "p2p_copy_relay_connections_open") == 0.0).then_some(())
    });
    let text = scrape(&relay);
    let get = |name: &str| sample(&text, name).unwrap_or_else(|| panic!("{name}:\n{text}"));
    assert_eq!(get("p2p_copy_relay_connections_total"), 2.0);
    assert!(get("p2p_copy_relay_forwarded_bytes_total") >= size as f64);
    assert_eq!(get("p2p_copy_relay_pairs_active"), 0.0);
    assert_eq!(get("p2p_copy_relay_pairs_waiting"), 0.0);
    assert_eq!(get("p2p_copy_relay_pairing_seconds_count"), 1.0);
    assert!(get("p2p_copy_relay_pairing_seconds_sum") > 0.0);
    assert_eq!(get("p2p_copy_relay_handshake_seconds_count"), 2.0);
    assert_eq!(
        get("p2p_copy_relay_stun_requests_total{result=\"answered\"}"),
        1.0
    );
    assert!(text.contains("# TYPE p2p_copy_relay_handshake_seconds histogram"));

    // A refused connection is counted by its reason.
    assert_eq!(http_get(relay.addr, "/").0, 426);
    wait_metric(
        &relay,
        "p2p_copy_relay_connections_refused_total{reason=\"plain_http\"}",
        1.0,
    );
    assert_eq!(stop(relay).code(), 0);
}

#[test]
fn a_metrics_port_that_is_taken_stops_the_relay_with_exit_2() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let at = taken.local_addr().unwrap().to_string();
    let out = run(&[
        "run-relay-server",
        "127.0.0.1",
        "0",
        "--no-tls",
        "--metrics",
        &at,
    ]);
    assert_eq!(out.code(), 2, "{out:?}");
    assert!(out.stderr.contains("metrics on"), "{}", out.stderr);
}

fn token_file(dir: &Path, tokens: &str) -> String {
    let file = dir.join("tokens.txt");
    std::fs::write(&file, tokens).unwrap();
    file.to_str().unwrap().to_owned()
}

#[test]
fn a_relay_with_tokens_refuses_clients_without_one_and_never_logs_them() {
    let s = one_file(MIB + 5);
    let file = token_file(s.dir.path(), &format!("# team A\n{SECRET}\nother-token\n"));
    let relay = start_relay(&["--token-file", &file, "--metrics", "127.0.0.1:0", "-v"]);

    // No token: exit 2 and the reason, before any waiting.
    let out = run(&[
        "receive",
        &relay.url,
        "code",
        "--out",
        arg(&s.out),
        "--timeout",
        "30",
    ]);
    assert_eq!(out.code(), 2, "{out:?}");
    assert!(
        out.stderr.contains("the relay requires a token"),
        "{}",
        out.stderr
    );
    // A wrong token, in the URL: also refused, and the URL is shown without it.
    let wrong_url = format!("{}/?token=not-{SECRET}", relay.url);
    let out = run(&["receive", &wrong_url, "code", "--out", arg(&s.out), "-v"]);
    assert_eq!(out.code(), 2, "{out:?}");
    assert!(
        out.stderr.contains("refused the one given") && out.stderr.contains("token=***"),
        "{}",
        out.stderr
    );
    assert!(!out.stderr.contains(SECRET), "{}", out.stderr);
    // Counted once the relay's side of the refused connection has ended.
    let refused = "p2p_copy_relay_connections_refused_total{reason=\"token\"}";
    wait_metric(&relay, refused, 2.0);
    assert_eq!(metric(&relay, refused), 2.0);

    // The flag on one side, the environment on the other.
    let code = "token code";
    let mut recv = p2p_copy(&[
        "receive",
        &relay.url,
        code,
        "--out",
        arg(&s.out),
        "--relay-only",
        "-v",
    ]);
    recv.env("P2P_COPY_RELAY_TOKEN", SECRET);
    let receiver = ChildGuard::spawn(&mut recv);
    let sender = run(&[
        "send",
        &relay.url,
        code,
        arg(&s.src),
        "--relay-only",
        "--relay-token",
        SECRET,
        "-v",
    ]);
    let receiver = receiver.wait(LIMIT);
    assert_ok(&sender, &receiver);
    assert_received(&s);

    // The token in the URL works too (as Python clients give it).
    let s2 = one_file(1000);
    let url = format!("{}/?token={SECRET}", relay.url);
    let (sender2, receiver2) = transfer_through(&url, "url code", &s2, &["-v"]);
    assert_ok(&sender2, &receiver2);
    assert_received(&s2);

    let stopped = stop(relay);
    assert_eq!(stopped.code(), 0);
    for (who, text) in [
        ("relay", stopped.stderr + &stopped.stdout),
        ("sender", sender.stderr),
        ("receiver", receiver.stderr),
        ("url sender", sender2.stderr),
        ("url receiver", receiver2.stderr),
    ] {
        assert!(!text.contains(SECRET), "{who} shows the token:\n{text}");
    }
}

#[test]
fn sighup_rereads_the_token_file() {
    let s = Scene::new();
    let dir = &s.dir;
    let file = token_file(dir.path(), "old-token\n");
    let relay = start_relay(&["--token-file", &file]);
    assert_eq!(upgrade_status(relay.addr, "/?token=old-token", ""), 101);
    assert_eq!(upgrade_status(relay.addr, "/?token=new-token", ""), 401);
    assert_eq!(
        upgrade_status(relay.addr, "/", "Authorization: Bearer old-token\r\n"),
        101
    );
    token_file(dir.path(), "new-token\n");
    relay.process.signal("HUP");
    wait_for(Duration::from_secs(10), "the new token admitted", || {
        (upgrade_status(relay.addr, "/?token=new-token", "") == 101).then_some(())
    });
    assert_eq!(upgrade_status(relay.addr, "/?token=old-token", ""), 401);
    // A file that became unusable keeps the tokens in force.
    token_file(dir.path(), "\n# empty\n");
    relay.process.signal("HUP");
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(upgrade_status(relay.addr, "/?token=new-token", ""), 101);
    let out = stop(relay);
    assert!(
        out.stderr.contains("token file re-read: 1 tokens"),
        "{}",
        out.stderr
    );
    assert!(out.stderr.contains("holds no token"), "{}", out.stderr);
}

#[test]
fn sighup_without_a_token_file_leaves_the_relay_running() {
    let relay = start_relay(&[]);
    relay.process.signal("HUP");
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(upgrade_status(relay.addr, "/", ""), 101, "still serving");
    let out = stop(relay);
    assert_eq!(out.code(), 0, "{out:?}");
    assert!(
        out.stderr.contains("SIGHUP: no --token-file"),
        "{}",
        out.stderr
    );
}

#[test]
fn a_missing_or_empty_token_file_stops_the_relay_at_start() {
    let s = Scene::new();
    let empty = token_file(s.dir.path(), "# nobody\n");
    for file in [empty.as_str(), "/nonexistent/tokens"] {
        let out = run(&[
            "run-relay-server",
            "127.0.0.1",
            "0",
            "--no-tls",
            "--token-file",
            file,
        ]);
        assert_eq!(out.code(), 2, "{out:?}");
        assert!(out.stderr.contains("token file"), "{}", out.stderr);
    }
}

#[test]
fn python_clients_pass_the_token_in_the_url() {
    let s = one_file(2 * MIB + 9);
    let file = token_file(s.dir.path(), &format!("{SECRET}\n"));
    let relay = start_relay(&["--token-file", &file]);
    let url = format!("{}/?token={SECRET}", relay.url);
    let receiver = ChildGuard::spawn(&mut python::command([
        "receive",
        &url,
        "python code",
        "--out",
        arg(&s.out),
    ]));
    let sender = ChildGuard::spawn(&mut python::command([
        "send",
        &url,
        "python code",
        arg(&s.src),
    ]));
    let sent = sender.wait(LIMIT);
    let received = receiver.wait(LIMIT);
    assert_ok(&sent, &received);
    assert_received(&s);
    // Without the token the Python client is refused (it exits non-zero).
    let refused = ChildGuard::spawn(&mut python::command([
        "send",
        &relay.url,
        "python code",
        arg(&s.src),
    ]))
    .wait(LIMIT);
    assert_ne!(refused.code(), 0, "{refused:?}");
    assert!(
        (refused.stderr.clone() + &refused.stdout).contains("401"),
        "{refused:?}"
    );
}

#[test]
fn new_connections_over_the_per_minute_limit_are_refused_with_a_reason() {
    let relay = start_relay(&["--max-new-per-minute", "2", "--metrics", "127.0.0.1:0"]);
    assert_eq!(upgrade_status(relay.addr, "/", ""), 101);
    assert_eq!(upgrade_status(relay.addr, "/", ""), 101);
    let s = Scene::new();
    let out = run(&[
        "receive",
        &relay.url,
        "code",
        "--out",
        arg(&s.out),
        "--relay-only",
    ]);
    assert_eq!(out.code(), 2, "{out:?}");
    assert!(
        out.stderr
            .contains("too many new connections from this address (the relay allows 2 a minute)"),
        "{}",
        out.stderr
    );
    assert_eq!(
        metric(
            &relay,
            "p2p_copy_relay_connections_refused_total{reason=\"rate_limit\"}"
        ),
        1.0
    );
}

#[test]
fn a_pair_over_max_bytes_is_closed_and_both_sides_say_why() {
    let relay = start_relay(&["--max-bytes", "1M", "--metrics", "127.0.0.1:0"]);
    let s = one_file(4 * MIB);
    let (sender, receiver) = transfer_through(&relay.url, "big code", &s, &[]);
    for (who, out) in [("sender", &sender), ("receiver", &receiver)] {
        assert_eq!(out.code(), 2, "{who}: {out:?}");
        assert!(
            out.stderr
                .contains("the transfer went over the relay's limit of 1000000 bytes per pair"),
            "{who}: {}",
            out.stderr
        );
    }
    assert!(!s.out.join("src").join("data.bin").exists());
    wait_metric(
        &relay,
        "p2p_copy_relay_pairs_ended_total{outcome=\"limit\"}",
        1.0,
    );
    let forwarded = metric(&relay, "p2p_copy_relay_forwarded_bytes_total");
    assert!(forwarded <= 1e6, "forwarded {forwarded} bytes");
    // A smaller transfer on the same relay goes through.
    let small = one_file(200_000);
    let (sender, receiver) = transfer_through(&relay.url, "small code", &small, &[]);
    assert_ok(&sender, &receiver);
    assert_received(&small);
}

#[test]
fn max_rate_slows_a_pair_down_and_the_data_still_arrives_whole() {
    let relay = start_relay(&["--max-rate", "2M"]);
    let s = one_file(6 * MIB);
    let start = Instant::now();
    let (sender, receiver) = transfer_through(&relay.url, "slow code", &s, &[]);
    let took = start.elapsed();
    assert_ok(&sender, &receiver);
    assert_received(&s);
    // 6.3 MB at 2 MB/s with a one-second burst: at least 2 s.
    assert!(took >= Duration::from_millis(2000), "took {took:?}");
    eprintln!("6 MiB through --max-rate 2M took {took:?}");
}

#[test]
fn max_rate_also_caps_all_pairs_of_one_address_together() {
    let relay = start_relay(&["--max-rate", "2M"]);
    let scenes = [one_file(3 * MIB), one_file(3 * MIB)];
    let start = Instant::now();
    let receivers: Vec<ChildGuard> = scenes
        .iter()
        .enumerate()
        .map(|(i, s)| {
            let code = format!("pair {i}");
            spawn(&[
                "receive",
                &relay.url,
                &code,
                "--out",
                arg(&s.out),
                "--relay-only",
            ])
        })
        .collect();
    let senders: Vec<ChildGuard> = scenes
        .iter()
        .enumerate()
        .map(|(i, s)| {
            let code = format!("pair {i}");
            spawn(&["send", &relay.url, &code, arg(&s.src), "--relay-only"])
        })
        .collect();
    for (sender, receiver) in senders.into_iter().zip(receivers) {
        assert_ok(&sender.wait(LIMIT), &receiver.wait(LIMIT));
    }
    let took = start.elapsed();
    for s in &scenes {
        assert_received(s);
    }
    // Each pair alone may go at 2 MB/s, but both come from 127.0.0.1: 6.3 MB at
    // 2 MB/s with a one-second burst takes at least 2 s.
    assert!(took >= Duration::from_millis(2000), "took {took:?}");
    eprintln!("two pairs of 3 MiB from one address through --max-rate 2M took {took:?}");
}

/// A receiver and a sender of `s` over `relay`, started; returns once the relay has
/// paired them.
fn start_pair(relay: &Relay, code: &str, s: &Scene) -> (ChildGuard, ChildGuard) {
    let receiver = spawn(&[
        "receive",
        &relay.url,
        code,
        "--out",
        arg(&s.out),
        "--relay-only",
    ]);
    let sender = spawn(&["send", &relay.url, code, arg(&s.src), "--relay-only"]);
    wait_metric(relay, "p2p_copy_relay_pairs_active", 1.0);
    (sender, receiver)
}

#[test]
fn sigterm_lets_a_running_pair_finish_while_a_new_relay_takes_the_port() {
    let relay = start_relay(&[
        "--max-rate",
        "2M",
        "--drain-timeout",
        "30",
        "--metrics",
        "127.0.0.1:0",
    ]);
    let s = one_file(8 * MIB);
    let (sender, receiver) = start_pair(&relay, "draining code", &s);
    relay.process.signal("TERM");
    // The old relay stops accepting at once: a new instance can listen on its port
    // while the pair still runs on the old one.
    let port = relay.addr.port();
    let new = wait_for(
        Duration::from_secs(5),
        "a new relay on the same port",
        || {
            TcpStream::connect(relay.addr)
                .is_err()
                .then(|| start_relay_on(port, &["--metrics", "127.0.0.1:0"]))
        },
    );
    let small = one_file(10_000);
    let (s2, r2) = transfer_through(&new.url, "after restart", &small, &[]);
    assert_ok(&s2, &r2);
    assert_received(&small);
    assert_eq!(metric(&new, "p2p_copy_relay_connections_total"), 2.0);

    let (sent, received) = (sender.wait(LIMIT), receiver.wait(LIMIT));
    assert_ok(&sent, &received);
    assert_received(&s);
    let old = relay.process.wait(LIMIT);
    assert_eq!(old.code(), 0, "{old:?}");
    assert!(
        old.stderr.contains("1 pairs may finish within 30 s"),
        "{}",
        old.stderr
    );
    assert!(old.stderr.contains(": completed,"), "{}", old.stderr);
    assert_eq!(stop(new).code(), 0);
}

#[test]
fn a_pair_still_running_at_the_drain_timeout_is_closed_with_a_reason() {
    let relay = start_relay(&[
        "--max-rate",
        "1M",
        "--drain-timeout",
        "1",
        "--metrics",
        "127.0.0.1:0",
    ]);
    let s = one_file(16 * MIB);
    let (sender, receiver) = start_pair(&relay, "too slow", &s);
    let signalled = Instant::now();
    relay.process.signal("TERM");
    let old = relay.process.wait(LIMIT);
    let took = signalled.elapsed();
    assert_eq!(old.code(), 0, "{old:?}");
    assert!(took < Duration::from_secs(5), "stopped after {took:?}");
    assert!(old.stderr.contains(": shutting_down,"), "{}", old.stderr);
    for (who, out) in [
        ("sender", sender.wait(LIMIT)),
        ("receiver", receiver.wait(LIMIT)),
    ] {
        assert_eq!(out.code(), 7, "{who}: {out:?}");
        assert!(
            out.stderr.contains("relay shutting down"),
            "{who}: {}",
            out.stderr
        );
    }
}

#[test]
fn a_second_signal_ends_the_drain_at_once() {
    let relay = start_relay(&[
        "--max-rate",
        "1M",
        "--drain-timeout",
        "60",
        "--metrics",
        "127.0.0.1:0",
    ]);
    let s = one_file(16 * MIB);
    let (sender, receiver) = start_pair(&relay, "impatient", &s);
    relay.process.signal("TERM");
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        TcpStream::connect(relay.addr).is_err(),
        "no longer accepting"
    );
    let signalled = Instant::now();
    relay.process.signal("INT");
    let old = relay.process.wait(LIMIT);
    assert_eq!(old.code(), 0, "{old:?}");
    assert!(
        signalled.elapsed() < Duration::from_secs(5),
        "stopped after {:?}",
        signalled.elapsed()
    );
    assert!(
        old.stderr.contains("relay stopping now: closing 1 pairs"),
        "{}",
        old.stderr
    );
    assert!(old.stderr.contains(": shutting_down,"), "{}", old.stderr);
    for out in [sender.wait(LIMIT), receiver.wait(LIMIT)] {
        assert_eq!(out.code(), 7, "{out:?}");
        assert!(out.stderr.contains("relay shutting down"), "{}", out.stderr);
    }
}

#[test]
fn json_logs_give_one_object_per_line_and_one_line_per_pair_without_the_code() {
    let relay = start_relay(&["--log-format", "json"]);
    let code = "json-log-code-0815";
    let s = one_file(3 * MIB);
    let (sender, receiver) = transfer_through(&relay.url, code, &s, &[]);
    assert_ok(&sender, &receiver);
    assert_eq!(http_get(relay.addr, "/").0, 426);
    let out = stop(relay);
    assert_eq!(out.code(), 0);
    let lines: Vec<serde_json::Value> = out
        .stderr
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    assert!(lines
        .iter()
        .all(|l| l["time"].is_string() && l["level"].is_string()));
    let pairs: Vec<&serde_json::Value> = lines
        .iter()
        .filter(|l| l["event"] == "pair_ended")
        .collect();
    assert_eq!(pairs.len(), 1, "{}", out.stderr);
    let pair = pairs[0];
    assert_eq!(pair["outcome"], "completed");
    assert_eq!(pair["level"], "info");
    assert!(pair["bytes"].as_u64().unwrap() >= 3 * MIB, "{pair}");
    assert!(pair["duration_s"].as_f64().unwrap() >= 0.0, "{pair}");
    let room = pair["room"].as_str().unwrap();
    assert!(
        room.len() == 8 && room.chars().all(|c| c.is_ascii_hexdigit()),
        "{room}"
    );
    assert!(
        lines.iter().any(|l| l["message"]
            .as_str()
            .unwrap_or("")
            .contains("426 Upgrade Required")),
        "{}",
        out.stderr
    );
    assert!(lines.last().unwrap()["message"] == "relay stopped");
    let hash: String = p2p_copy_core::crypto::code_hash(code, false)
        .unwrap()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    for secret in [code, &hash, &hash[..8]] {
        assert!(!out.stderr.contains(secret), "{secret} in the log");
    }
}

/// The `Key=value` lines of a unit file, continuation lines joined, comments dropped.
fn unit_entries(text: &str) -> Vec<(String, String)> {
    let joined = text.replace("\\\n", " ");
    joined
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#') && !l.starts_with('['))
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| {
            (
                k.trim().to_owned(),
                v.split_whitespace().collect::<Vec<_>>().join(" "),
            )
        })
        .collect()
}

fn packaging(name: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../packaging/systemd")
        .join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

#[test]
fn the_systemd_unit_is_hardened_and_runs_a_command_line_the_relay_accepts() {
    let unit = packaging("p2p-copy-relay.service");
    let low_port = packaging("p2p-copy-relay.service.d/low-port.conf");
    let entries = unit_entries(&unit);
    let get = |key: &str| -> Vec<&str> {
        entries
            .iter()
            .filter(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
            .collect()
    };
    for (key, value) in [
        ("DynamicUser", "yes"),
        ("NoNewPrivileges", "yes"),
        ("ProtectSystem", "strict"),
        ("ProtectHome", "yes"),
        ("PrivateTmp", "yes"),
        ("PrivateDevices", "yes"),
        ("CapabilityBoundingSet", ""),
        ("AmbientCapabilities", ""),
        ("RestrictAddressFamilies", "AF_INET AF_INET6 AF_UNIX"),
        ("SystemCallFilter", "@system-service"),
        ("MemoryDenyWriteExecute", "yes"),
        ("KillSignal", "SIGTERM"),
    ] {
        assert_eq!(get(key).first().copied(), Some(value), "{key}");
    }
    for stateful in ["StateDirectory", "CacheDirectory", "LogsDirectory", "User"] {
        assert!(get(stateful).is_empty(), "{stateful} in a state-free unit");
    }
    assert_eq!(
        unit_entries(&low_port),
        [
            (
                "AmbientCapabilities".to_owned(),
                "CAP_NET_BIND_SERVICE".to_owned()
            ),
            (
                "CapabilityBoundingSet".to_owned(),
                "CAP_NET_BIND_SERVICE".to_owned()
            ),
        ]
    );

    // The command line parses: with the token file missing the relay stops with exit
    // 2 naming it, not with a usage error (exit 1).
    let exec = get("ExecStart")[0];
    let mut words: Vec<&str> = exec.split_whitespace().skip(1).collect();
    let file = words
        .iter()
        .position(|w| *w == "--token-file")
        .expect("--token-file")
        + 1;
    words[file] = "/nonexistent/p2p-copy/tokens";
    let port = words.iter().position(|w| *w == "8765").expect("port");
    words[port] = "0";
    let out = run(&words);
    assert_eq!(out.code(), 2, "{out:?}");
    assert!(
        out.stderr.contains("token file /nonexistent"),
        "{}",
        out.stderr
    );
    // systemd gives the drain time to finish before it kills.
    let drain: u64 = words[words.iter().position(|w| *w == "--drain-timeout").unwrap() + 1]
        .parse()
        .unwrap();
    let stop: u64 = get("TimeoutStopSec")[0].parse().unwrap();
    assert!(
        stop > drain,
        "TimeoutStopSec {stop} <= --drain-timeout {drain}"
    );

    // Where systemd-analyze exists, it checks every key and the command, the unit alone
    // and with the low-port drop-in.
    if Command::new("systemd-analyze")
        .arg("--version")
        .output()
        .is_ok()
    {
        let dir = Scene::new();
        let ours = unit.replace("/usr/local/bin/p2p-copy", BIN);
        for (name, text) in [
            ("p2p-copy-relay.service", ours.clone()),
            (
                "p2p-copy-relay-low-port.service",
                format!("{ours}\n{low_port}"),
            ),
        ] {
            let path = dir.dir.path().join(name);
            std::fs::write(&path, text).unwrap();
            let out = Command::new("systemd-analyze")
                .arg("verify")
                .arg(&path)
                .output()
                .expect("run systemd-analyze verify");
            let said = String::from_utf8_lossy(&out.stderr).into_owned()
                + &String::from_utf8_lossy(&out.stdout);
            assert!(
                out.status.success() && said.trim().is_empty(),
                "{name}: {said}"
            );
        }
    }
}
