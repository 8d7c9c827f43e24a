//! The reference implementation, p2p-copy 0.1.2 in Python, run as separate processes.
//!
//! The venv comes from `scripts/python-venv.sh`, run once per test process. That script
//! reuses a venv that CI created beforehand and otherwise installs
//! `p2p-copy[security]==0.1.2` from PyPI. If it fails, every test that asks for the venv
//! fails with the script's output: the interop suite is never skipped.
//!
//! Processes are [`ChildGuard`]s: killed when dropped, waited on with a timeout.

use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::thread;
use std::time::{Duration, Instant};

use crate::process::{ChildGuard, Finished};

/// The version of the reference implementation the interop suite runs against.
pub const VERSION: &str = "0.1.2";

/// How long creating the venv may take (a cold `pip install` on a slow CI runner).
const VENV_TIMEOUT: Duration = Duration::from_secs(900);

/// How long a relay may take to start listening.
const RELAY_START_TIMEOUT: Duration = Duration::from_secs(30);

/// The venv holding p2p-copy 0.1.2, created or reused on first use.
///
/// # Panics
/// When the venv cannot be created: the interop tests fail rather than skip.
pub fn venv() -> &'static Path {
    static VENV: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    match VENV.get_or_init(create_venv) {
        Ok(p) => p,
        Err(e) => panic!("the venv with the Python p2p-copy {VERSION} is not available: {e}"),
    }
}

/// `<venv>/bin/p2p-copy`, the Python command line.
pub fn program() -> PathBuf {
    venv().join("bin").join("p2p-copy")
}

fn create_venv() -> Result<PathBuf, String> {
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the tests package sits in the workspace root");
    let script = workspace.join("scripts").join("python-venv.sh");
    let mut cmd = Command::new("bash");
    cmd.arg(&script);
    let (out, timed_out) = wait_until(ChildGuard::spawn(&mut cmd), Instant::now() + VENV_TIMEOUT);
    if timed_out || !out.status.success() {
        let why = if timed_out {
            format!("still running after {VENV_TIMEOUT:?}")
        } else {
            out.status.to_string()
        };
        return Err(format!(
            "{} failed ({why}):\n{}{}",
            script.display(),
            out.stdout,
            out.stderr
        ));
    }
    // The script prints the venv's path on its last line; earlier lines are progress.
    let venv = out
        .stdout
        .lines()
        .last()
        .map(|l| PathBuf::from(l.trim()))
        .ok_or_else(|| format!("{} printed no path:\n{}", script.display(), out.stderr))?;
    let exe = venv.join("bin").join("p2p-copy");
    if !exe.is_file() {
        return Err(format!(
            "{} missing after {}",
            exe.display(),
            script.display()
        ));
    }
    Ok(venv)
}

/// A `Command` for the Python command line with `args`, set up so that its output is
/// plain UTF-8 text (file names are not ASCII; no colours or wrapped tracebacks).
pub fn command<I, S>(args: I) -> Command
where
    I: IntoIterator<Item = S>,
    S: AsRef<std::ffi::OsStr>,
{
    let mut cmd = Command::new(program());
    cmd.args(args)
        .env("PYTHONUTF8", "1")
        .env("PYTHONUNBUFFERED", "1")
        .env("NO_COLOR", "1")
        .env("TERM", "dumb")
        .env("COLUMNS", "200");
    cmd
}

/// Wait for `child` until `deadline`, killing it if it is still running then. Returns
/// how it ended and whether it had to be killed.
pub fn wait_until(mut child: ChildGuard, deadline: Instant) -> (Finished, bool) {
    while !child.has_exited() && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(10));
    }
    let timed_out = !child.has_exited();
    if timed_out {
        child.kill();
    }
    // Exited or killed and reaped: this only collects the output.
    (child.wait(Duration::from_secs(30)), timed_out)
}

/// Start the Python relay, `p2p-copy run-relay-server 127.0.0.1 <port> --no-tls`, and
/// wait until it accepts connections. Returns it and its `ws://` URL.
///
/// It cannot be given port 0 (it would not say which port it got), so it gets a port
/// that was free a moment ago, and another one if it loses that port to a race.
///
/// # Panics
/// When no relay is listening after a few attempts.
pub fn start_relay() -> (ChildGuard, String) {
    let mut failures = Vec::new();
    for _ in 0..5 {
        let port = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .and_then(|l| l.local_addr())
            .expect("bind 127.0.0.1:0")
            .port();
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
        if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
            // Someone took it already: a later connection would not prove our relay is up.
            continue;
        }
        let relay = ChildGuard::spawn(&mut command([
            "run-relay-server",
            "127.0.0.1",
            &port.to_string(),
            "--no-tls",
        ]));
        match wait_listening(relay, addr) {
            Ok(relay) => return (relay, format!("ws://127.0.0.1:{port}")),
            Err(why) => failures.push(format!("port {port}: {why}")),
        }
    }
    panic!("the Python relay did not start:\n{}", failures.join("\n"));
}

fn wait_listening(mut relay: ChildGuard, addr: SocketAddr) -> Result<ChildGuard, String> {
    let deadline = Instant::now() + RELAY_START_TIMEOUT;
    loop {
        // A relay that lost the port exits at once; one that is listening stays.
        let listening = TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok();
        if relay.has_exited() || (!listening && Instant::now() >= deadline) {
            let (out, _) = wait_until(relay, Instant::now());
            return Err(format!("{}\n{}{}", out.status, out.stdout, out.stderr));
        }
        if listening {
            return Ok(relay);
        }
        thread::sleep(Duration::from_millis(20));
    }
}
