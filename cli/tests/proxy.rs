//! The relay connection through real proxies: tinyproxy (HTTP CONNECT with basic
//! authentication) and Dante (SOCKS5), each started by the test on 127.0.0.1 with its own
//! configuration, as `p2p-copy` processes move a tree through our relay. `.ci/run`
//! installs both (Debian packages `tinyproxy` and `dante-server`); without them these
//! tests fail and say so.

use std::fs;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use p2p_copy_tests::deadline::wait_for;
use p2p_copy_tests::process::{start_cli_relay, ChildGuard, Finished};
use p2p_copy_tests::scene::Scene;
use p2p_copy_tests::tree::{assert_same_tree, write_tree, FileSpec};

const BIN: &str = env!("CARGO_BIN_EXE_p2p-copy");
const LIMIT: Duration = Duration::from_secs(60);
const PROXY_VARS: [&str; 9] = [
    "http_proxy",
    "HTTP_PROXY",
    "https_proxy",
    "HTTPS_PROXY",
    "all_proxy",
    "ALL_PROXY",
    "no_proxy",
    "NO_PROXY",
    "P2P_COPY_RELAY",
];

fn arg(p: &Path) -> &str {
    p.to_str().expect("temp paths are UTF-8")
}

/// `p2p-copy ARGS` with no proxy variables but those in `env`.
fn p2p_copy(args: &[&str], env: &[(&str, &str)]) -> Command {
    let mut cmd = Command::new(BIN);
    cmd.args(args);
    for var in PROXY_VARS {
        cmd.env_remove(var);
    }
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd
}

fn run(args: &[&str], env: &[(&str, &str)]) -> Finished {
    ChildGuard::spawn(&mut p2p_copy(args, env)).wait(LIMIT)
}

/// A port that was free a moment ago (the proxies take a fixed port).
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

/// The installed program at one of `paths`, or a failure that says how to get it.
fn program(paths: &[&str], package: &str) -> PathBuf {
    paths
        .iter()
        .map(PathBuf::from)
        .find(|p| p.is_file())
        .unwrap_or_else(|| {
            panic!(
                "{} is not installed: apt-get install {package} (.ci/run does)",
                paths[0]
            )
        })
}

/// A proxy process, its port and its log file.
struct RunningProxy {
    _child: ChildGuard,
    port: u16,
    log: PathBuf,
}

impl RunningProxy {
    fn log(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Wait until the proxy accepts connections.
    fn wait_ready(self) -> Self {
        let port = self.port;
        wait_for(Duration::from_secs(10), "the proxy to listen", || {
            std::net::TcpStream::connect(("127.0.0.1", port)).ok()
        });
        self
    }
}

/// tinyproxy on 127.0.0.1, asking for `user`/`pass` when given.
fn tinyproxy(dir: &Path, auth: Option<(&str, &str)>) -> RunningProxy {
    let bin = program(&["/usr/bin/tinyproxy", "/usr/sbin/tinyproxy"], "tinyproxy");
    let port = free_port();
    let log = dir.join("tinyproxy.log");
    let conf = dir.join("tinyproxy.conf");
    let mut text = format!(
        "Port {port}\nListen 127.0.0.1\nTimeout 60\nMaxClients 20\nAllow 127.0.0.1\n\
         LogFile \"{}\"\nLogLevel Connect\nUser nobody\nGroup nogroup\n",
        log.display()
    );
    if let Some((user, pass)) = auth {
        text.push_str(&format!("BasicAuth {user} {pass}\n"));
    }
    // No ConnectPort line: CONNECT to any port (the relay's is picked at random).
    fs::write(&conf, text).unwrap();
    // tinyproxy writes its log as `nobody`.
    let _ = Command::new("chmod").args(["777", arg(dir)]).status();
    let child = ChildGuard::spawn(Command::new(bin).args(["-d", "-c", arg(&conf)]));
    RunningProxy {
        _child: child,
        port,
        log,
    }
    .wait_ready()
}

/// Dante's SOCKS5 server on 127.0.0.1, without authentication, passing connections to
/// 127.0.0.1 only.
fn dante(dir: &Path) -> RunningProxy {
    let bin = program(&["/usr/sbin/danted", "/usr/bin/danted"], "dante-server");
    let port = free_port();
    let log = dir.join("danted.log");
    let conf = dir.join("danted.conf");
    fs::write(
        &conf,
        format!(
            "logoutput: {}\ninternal: 127.0.0.1 port = {port}\nexternal: 127.0.0.1\n\
             clientmethod: none\nsocksmethod: none\nuser.privileged: root\n\
             user.unprivileged: nobody\n\
             client pass {{ from: 127.0.0.0/8 to: 0.0.0.0/0 log: connect error }}\n\
             socks pass {{ from: 127.0.0.0/8 to: 127.0.0.0/8 log: connect error }}\n",
            log.display()
        ),
    )
    .unwrap();
    let _ = Command::new("chmod").args(["777", arg(dir)]).status();
    let child = ChildGuard::spawn(Command::new(bin).args(["-f", arg(&conf), "-N", "1"]));
    RunningProxy {
        _child: child,
        port,
        log,
    }
    .wait_ready()
}

/// Send a small tree through `url` with `extra` options on both sides; both must exit 0
/// and the tree arrive whole.
fn transfer(url: &str, code: &str, extra: &[&str], env: &[(&str, &str)]) {
    let s = Scene::new();
    write_tree(
        &s.src,
        &[
            FileSpec::random("a.bin", 300_000, 1),
            FileSpec::random("d/b.bin", 70_000, 2),
        ],
    );
    let mut recv = vec!["receive", url, code, "--out", arg(&s.out)];
    recv.extend_from_slice(extra);
    let receiver = ChildGuard::spawn(&mut p2p_copy(&recv, env));
    let mut send = vec!["send", url, code, arg(&s.src)];
    send.extend_from_slice(extra);
    let sender = run(&send, env);
    let received = receiver.wait(LIMIT);
    assert_eq!(sender.code(), 0, "sender: {sender:?}");
    assert_eq!(received.code(), 0, "receiver: {received:?}");
    assert_same_tree(&s.src, &s.out.join("src"));
}

/// A receiver for `url` through the proxy `via`, run to its end.
fn receive_via(url: &str, s: &Scene, via: &str) -> Finished {
    run(
        &["receive", url, "code", "--out", arg(&s.out), "--proxy", via],
        &[],
    )
}

#[test]
fn a_tree_moves_through_an_http_connect_proxy_with_basic_auth() {
    let dir = Scene::new().dir;
    let proxy = tinyproxy(dir.path(), Some(("alice", "s3cret")));
    let (_relay, url) = start_cli_relay(Path::new(BIN), &["--no-tls"]);
    let relay_port = url.rsplit(':').next().unwrap().to_owned();
    let via = format!("http://alice:s3cret@127.0.0.1:{}", proxy.port);
    transfer(&url, "through tinyproxy", &["--proxy", &via], &[]);
    // Both sides' connections went through the proxy, to the relay.
    let log = proxy.log();
    let tunnels = log
        .lines()
        .filter(|l| l.contains("CONNECT") && l.contains(&format!("127.0.0.1:{relay_port}")))
        .count();
    assert!(
        tunnels >= 2,
        "tinyproxy saw {tunnels} CONNECTs to the relay:\n{log}"
    );
}

#[test]
fn a_refusing_http_proxy_gives_a_clear_error_and_exit_2() {
    let dir = Scene::new().dir;
    let proxy = tinyproxy(dir.path(), Some(("alice", "s3cret")));
    let (_relay, url) = start_cli_relay(Path::new(BIN), &["--no-tls"]);
    let s = Scene::new();
    for (via, says) in [
        (
            format!("http://alice:wrong@127.0.0.1:{}", proxy.port),
            "was not accepted",
        ),
        (
            format!("http://127.0.0.1:{}", proxy.port),
            "wants a user name and password",
        ),
    ] {
        let r = receive_via(&url, &s, &via);
        assert_eq!(r.code(), 2, "{via}: {r:?}");
        assert!(
            r.stderr.contains("refused the connection") && r.stderr.contains(says),
            "{via}: {}",
            r.stderr
        );
        assert!(
            !r.stderr.contains("wrong"),
            "the password is printed: {}",
            r.stderr
        );
    }
    let r = receive_via(&url, &s, "http://127.0.0.1:1");
    assert_eq!(r.code(), 2, "{r:?}");
    assert!(r.stderr.contains("cannot reach the proxy"), "{}", r.stderr);
}

#[test]
fn a_tree_moves_through_a_socks5_proxy() {
    let dir = Scene::new().dir;
    let proxy = dante(dir.path());
    let (_relay, url) = start_cli_relay(Path::new(BIN), &["--no-tls"]);
    let via = format!("socks5://127.0.0.1:{}", proxy.port);
    transfer(&url, "through dante", &["--proxy", &via], &[]);
    let relay_port = url.rsplit(':').next().unwrap().to_owned();
    let log = proxy.log();
    assert!(
        log.lines()
            .filter(|l| l.contains(&format!("127.0.0.1.{relay_port}")))
            .count()
            >= 2,
        "dante logged no connection to the relay's port {relay_port}:\n{log}"
    );

    // A target the proxy cannot reach: its reason comes through.
    let closed = free_port();
    let s = Scene::new();
    let r = receive_via(&format!("ws://127.0.0.1:{closed}"), &s, &via);
    assert_eq!(r.code(), 2, "{r:?}");
    assert!(
        r.stderr
            .contains(&format!("refused the connection to 127.0.0.1:{closed}")),
        "{}",
        r.stderr
    );
}

#[test]
fn the_environment_names_the_proxy_unless_no_proxy_or_an_empty_flag_says_otherwise() {
    let dir = Scene::new().dir;
    let proxy = tinyproxy(dir.path(), None);
    let via = format!("http://127.0.0.1:{}", proxy.port);
    let s = Scene::new();
    // A relay name only the proxy would resolve: with the proxy the proxy's own answer
    // comes back, without it this machine's name lookup fails.
    let url = "ws://relay.p2p-copy.invalid:8765";
    let receive = [
        "receive",
        url,
        "code",
        "--out",
        arg(&s.out),
        "--timeout",
        "5",
    ];
    let through = |r: &Finished| r.stderr.contains(&format!("the proxy {via} refused"));
    for env in [
        vec![("http_proxy", via.as_str())],
        vec![("ALL_PROXY", via.as_str())],
    ] {
        let r = run(&receive, &env);
        assert_eq!(r.code(), 2, "{env:?}: {r:?}");
        assert!(through(&r), "{env:?}: {}", r.stderr);
    }
    for env in [
        vec![("ALL_PROXY", via.as_str()), ("NO_PROXY", ".invalid")],
        vec![("HTTPS_PROXY", via.as_str())],
        // Upper-case HTTP_PROXY is not read for ws://, as curl does not read it.
        vec![("HTTP_PROXY", via.as_str())],
    ] {
        let r = run(&receive, &env);
        assert_eq!(r.code(), 2, "{env:?}: {r:?}");
        assert!(!through(&r), "{env:?} used the proxy: {}", r.stderr);
    }
    let mut off = receive.to_vec();
    off.extend(["--proxy", ""]);
    let r = run(&off, &[("ALL_PROXY", via.as_str())]);
    assert!(!through(&r), "--proxy \"\" used the proxy: {}", r.stderr);
    // A malformed proxy is a usage error, before anything connects.
    let mut bad = receive.to_vec();
    bad.extend(["--proxy", "ftp://x:1"]);
    let r = run(&bad, &[]);
    assert_eq!(r.code(), 1, "{r:?}");
    assert!(r.stderr.contains("unknown scheme"), "{}", r.stderr);
}
