//! Scale-out: three relays behind a real HAProxy (the Debian package), as
//! docs/OPERATIONS.md configures it. Rooms in the URL path (`/r/<room>`) are spread over
//! the instances by consistent hashing on the URI, so both peers of a room meet on the
//! same one; URLs without a room (the Python p2p-copy's) go to one designated instance.
//! One instance is killed while its clients wait: they fail cleanly, the others are
//! untouched.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::process::Command;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use p2p_copy_tests::deadline::wait_for;
use p2p_copy_tests::process::{ChildGuard, Finished};
use p2p_copy_tests::python;
use p2p_copy_tests::scene::Scene;
use p2p_copy_tests::tree::{assert_same_tree, write_tree, FileSpec};

const BIN: &str = env!("CARGO_BIN_EXE_p2p-copy");
const LIMIT: Duration = Duration::from_secs(120);
const PAIRS: usize = 60;

struct Relay {
    process: ChildGuard,
    port: u16,
    metrics: SocketAddr,
}

fn start_relay() -> Relay {
    let mut cmd = Command::new(BIN);
    cmd.args([
        "run-relay-server",
        "127.0.0.1",
        "0",
        "--no-tls",
        "--stun-port",
        "0",
        "--metrics",
        "127.0.0.1:0",
        "--drain-timeout",
        "0",
        // Every client comes from the proxy's address (docs/OPERATIONS.md).
        "--max-per-address",
        "4096",
    ]);
    let (mut process, stdout) = ChildGuard::spawn_reading_stdout(&mut cmd);
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let (mut port, mut metrics) = (None, None);
    while port.is_none() || metrics.is_none() {
        let Ok(line) = rx.recv_timeout(Duration::from_secs(10)) else {
            process.kill();
            panic!("relay did not start: {:?}", process.wait(LIMIT));
        };
        if let Some(u) = line.strip_prefix("relay listening on ws://") {
            port = u.parse::<SocketAddr>().ok().map(|a| a.port());
        } else if let Some(m) = line.strip_prefix("relay metrics on http://") {
            metrics = m.trim_end_matches("/metrics").parse().ok();
        }
    }
    Relay {
        process,
        port: port.unwrap(),
        metrics: metrics.unwrap(),
    }
}

/// A sample of a relay's metrics, or `None` if it cannot be reached.
fn metric(relay: &Relay, name: &str) -> Option<f64> {
    let mut tcp = TcpStream::connect_timeout(&relay.metrics, Duration::from_secs(2)).ok()?;
    tcp.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(tcp, "GET /metrics HTTP/1.1\r\nHost: m\r\n\r\n").ok()?;
    let mut text = String::new();
    tcp.read_to_string(&mut text).ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

/// The configuration of docs/OPERATIONS.md, on this machine's ports.
fn haproxy_config(front: u16, relays: &[Relay]) -> String {
    let servers = |backend: &[&Relay]| -> String {
        backend
            .iter()
            .enumerate()
            .map(|(i, r)| {
                format!(
                    "    server relay{i} 127.0.0.1:{} check port {} inter 300ms fall 1 rise 2\n",
                    r.port,
                    r.metrics.port()
                )
            })
            .collect()
    };
    let all: Vec<&Relay> = relays.iter().collect();
    format!(
        "global\n    maxconn 4096\n\n\
         defaults\n    mode http\n    timeout connect 5s\n    timeout client 60s\n    \
         timeout server 60s\n    timeout tunnel 1h\n    option redispatch\n    retries 2\n\
         \n\
         frontend relays\n    bind 127.0.0.1:{front}\n    acl has_room path_beg /r/\n    \
         use_backend rooms if has_room\n    default_backend designated\n\n\
         backend rooms\n    balance uri\n    hash-type consistent\n    \
         option httpchk GET /healthz\n{}\n\
         backend designated\n    option httpchk GET /healthz\n{}",
        servers(&all),
        servers(&all[..1]),
    )
}

fn start_haproxy(dir: &Path, front: u16, relays: &[Relay]) -> ChildGuard {
    let cfg = dir.join("haproxy.cfg");
    std::fs::write(&cfg, haproxy_config(front, relays)).unwrap();
    let check = Command::new("haproxy")
        .arg("-c")
        .arg("-f")
        .arg(&cfg)
        .output()
        .expect("run haproxy (Debian package haproxy; .ci/run installs it)");
    assert!(check.status.success(), "{check:?}");
    let mut proxy = ChildGuard::spawn(Command::new("haproxy").arg("-db").arg("-f").arg(&cfg));
    let addr = SocketAddr::from(([127, 0, 0, 1], front));
    wait_for(Duration::from_secs(10), "haproxy listening", || {
        TcpStream::connect(addr).ok()
    });
    assert!(!proxy.has_exited(), "haproxy exited");
    proxy
}

fn arg(p: &Path) -> &str {
    p.to_str().unwrap()
}

fn spawn(args: &[&str]) -> ChildGuard {
    ChildGuard::spawn(Command::new(BIN).args(args))
}

#[test]
fn haproxy_spreads_rooms_over_three_relays_and_a_killed_one_fails_only_its_own_pairs() {
    let relays: Vec<Relay> = (0..3).map(|_| start_relay()).collect();
    let front = free_port();
    let s = Scene::new();
    let _proxy = start_haproxy(s.dir.path(), front, &relays);
    let url = |room: &str| format!("ws://127.0.0.1:{front}/r/{room}");
    // Let the health checks see every server up.
    std::thread::sleep(Duration::from_millis(800));

    // Each pair its own data, so that a mix-up between pairs cannot pass.
    let scenes: Vec<Scene> = (0..PAIRS)
        .map(|i| {
            let sc = Scene::new();
            write_tree(
                &sc.src,
                &[FileSpec::random("f.bin", 200_000 + i as u64, i as u64)],
            );
            sc
        })
        .collect();
    let receivers: Vec<ChildGuard> = scenes
        .iter()
        .enumerate()
        .map(|(i, sc)| {
            let room = format!("room-{i}");
            spawn(&[
                "receive",
                &url(&room),
                &room,
                "--out",
                arg(&sc.out),
                "--relay-only",
                "--timeout",
                "60",
            ])
        })
        .collect();
    let waiting = |r: &Relay| metric(r, "p2p_copy_relay_pairs_waiting").unwrap_or(0.0);
    wait_for(Duration::from_secs(60), "every receiver waiting", || {
        (relays.iter().map(waiting).sum::<f64>() == PAIRS as f64).then_some(())
    });
    let per_relay: Vec<f64> = relays.iter().map(waiting).collect();
    assert!(
        per_relay.iter().all(|&n| n >= 5.0),
        "rooms spread unevenly: {per_relay:?}"
    );
    eprintln!("rooms per relay: {per_relay:?}");

    // Kill one instance (not the designated one) while its receivers wait.
    let mut relays = relays;
    let mut killed = relays.remove(2);
    let lost = per_relay[2] as usize;
    killed.process.kill();
    // The senders come after the health check noticed.
    std::thread::sleep(Duration::from_millis(1000));
    let senders: Vec<ChildGuard> = scenes
        .iter()
        .enumerate()
        .map(|(i, sc)| {
            let room = format!("room-{i}");
            spawn(&[
                "send",
                &url(&room),
                &room,
                arg(&sc.src),
                "--relay-only",
                "--timeout",
                "5",
            ])
        })
        .collect();
    let mut ok = 0;
    let mut failed = Vec::new();
    for (i, (sender, receiver)) in senders.into_iter().zip(receivers).enumerate() {
        let (sent, received): (Finished, Finished) = (sender.wait(LIMIT), receiver.wait(LIMIT));
        if sent.code() == 0 && received.code() == 0 {
            assert_same_tree(&scenes[i].src, &scenes[i].out.join("src"));
            ok += 1;
        } else {
            // A pair of the killed instance: the receiver lost its relay, the sender
            // found nobody; both say so in one clean line, neither hangs nor crashes.
            assert_eq!(received.code(), 7, "pair {i} receiver: {received:?}");
            assert!([2, 3].contains(&sent.code()), "pair {i} sender: {sent:?}");
            for out in [&sent, &received] {
                let last = out.stderr.lines().last().unwrap_or("");
                assert!(last.starts_with("error: "), "pair {i}: {out:?}");
            }
            failed.push(i);
        }
    }
    assert_eq!(failed.len(), lost, "failed pairs {failed:?}");
    assert_eq!(ok, PAIRS - lost);
    // Run again, a failed pair lands on a live instance and goes through.
    let i = failed[0];
    let room = format!("room-{i}");
    let receiver = spawn(&[
        "receive",
        &url(&room),
        &room,
        "--out",
        arg(&scenes[i].out),
        "--relay-only",
    ]);
    let sent = spawn(&[
        "send",
        &url(&room),
        &room,
        arg(&scenes[i].src),
        "--relay-only",
    ])
    .wait(LIMIT);
    let received = receiver.wait(LIMIT);
    assert_eq!(
        (sent.code(), received.code()),
        (0, 0),
        "{sent:?}\n{received:?}"
    );
    assert_same_tree(&scenes[i].src, &scenes[i].out.join("src"));
    let ok = ok + 1;
    let completed: f64 = relays
        .iter()
        .map(|r| {
            metric(r, "p2p_copy_relay_pairs_ended_total{outcome=\"completed\"}").unwrap_or(0.0)
        })
        .sum();
    assert_eq!(completed, ok as f64);

    // A Python p2p-copy 0.1.2 pair, with no room in the URL, meets on the designated
    // instance.
    let before = metric(&relays[0], "p2p_copy_relay_connections_total").unwrap();
    let py = Scene::new();
    write_tree(&py.src, &[FileSpec::random("py.bin", 300_000, 99)]);
    let plain = format!("ws://127.0.0.1:{front}");
    let receiver = ChildGuard::spawn(&mut python::command([
        "receive",
        &plain,
        "python room",
        "--out",
        arg(&py.out),
    ]));
    let sender = ChildGuard::spawn(&mut python::command([
        "send",
        &plain,
        "python room",
        arg(&py.src),
    ]));
    let (sent, received) = (sender.wait(LIMIT), receiver.wait(LIMIT));
    assert_eq!(
        (sent.code(), received.code()),
        (0, 0),
        "{sent:?}\n{received:?}"
    );
    assert_same_tree(&py.src, &py.out.join("src"));
    let after = metric(&relays[0], "p2p_copy_relay_connections_total").unwrap();
    assert_eq!(
        after - before,
        2.0,
        "both Python clients on the designated relay"
    );
    let started = Instant::now();
    for r in relays {
        r.process.signal("TERM");
        assert_eq!(r.process.wait(LIMIT).code(), 0);
    }
    assert!(started.elapsed() < Duration::from_secs(10));
}
