//! Child processes of a test (our CLI, a Python peer): killed by PID when the test ends,
//! waited on with a timeout, and a relay started as a process whose URL is read from its
//! first line of output.

use std::io::{BufRead, BufReader, Read};
use std::path::Path;
use std::process::{Child, ChildStderr, ChildStdin, ChildStdout, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// A child process that is killed (by its PID) and reaped when dropped, so a failing test
/// leaves nothing running.
#[derive(Debug)]
pub struct ChildGuard {
    child: Child,
    stderr: Option<JoinHandle<String>>,
    stdout: Option<JoinHandle<String>>,
}

/// How a child process ended, with everything it printed.
#[derive(Debug)]
pub struct Finished {
    /// Its exit status.
    pub status: ExitStatus,
    /// All of its standard output.
    pub stdout: String,
    /// All of its standard error.
    pub stderr: String,
}

impl Finished {
    /// The exit code; panics (with the output) if it was killed by a signal.
    pub fn code(&self) -> i32 {
        self.status
            .code()
            .unwrap_or_else(|| panic!("killed by a signal: {self:?}"))
    }
}

fn collect(mut r: impl Read + Send + 'static) -> JoinHandle<String> {
    std::thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = r.read_to_end(&mut buf);
        String::from_utf8_lossy(&buf).into_owned()
    })
}

impl ChildGuard {
    /// Spawn `cmd` with stdin closed and stdout and stderr collected in the background.
    pub fn spawn(cmd: &mut Command) -> ChildGuard {
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {cmd:?}: {e}"));
        let stdout = child.stdout.take().map(collect);
        let stderr = child.stderr.take().map(collect);
        ChildGuard {
            child,
            stderr,
            stdout,
        }
    }

    /// Spawn `cmd` and hand back its stdout unread, for the caller to read line by line.
    pub fn spawn_reading_stdout(cmd: &mut Command) -> (ChildGuard, ChildStdout) {
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {cmd:?}: {e}"));
        let stdout = child.stdout.take().expect("piped stdout");
        let stderr: Option<ChildStderr> = child.stderr.take();
        let guard = ChildGuard {
            child,
            stderr: stderr.map(collect),
            stdout: None,
        };
        (guard, stdout)
    }

    /// Spawn `cmd` with its stdin open for the caller to write to; each line of its
    /// stdout also comes over the channel as it is printed (and all of it in
    /// [`Finished::stdout`]).
    pub fn spawn_talking(cmd: &mut Command) -> (ChildGuard, ChildStdin, mpsc::Receiver<String>) {
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {cmd:?}: {e}"));
        let stdin = child.stdin.take().expect("piped stdin");
        let stdout = child.stdout.take().expect("piped stdout");
        let (tx, lines) = mpsc::channel();
        let stdout = std::thread::spawn(move || {
            let mut all = String::new();
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                all.push_str(&line);
                all.push('\n');
                let _ = tx.send(line);
            }
            all
        });
        let guard = ChildGuard {
            stderr: child.stderr.take().map(collect),
            stdout: Some(stdout),
            child,
        };
        (guard, stdin, lines)
    }

    /// Its process id.
    pub fn id(&self) -> u32 {
        self.child.id()
    }

    /// Send it `signal` (a name such as `INT` or `TERM`), through the shell's built-in
    /// `kill`, which minimal systems have even without procps.
    pub fn signal(&self, signal: &str) {
        let status = Command::new("sh")
            .arg("-c")
            .arg(format!("kill -{signal} {}", self.id()))
            .status()
            .expect("run sh -c kill");
        assert!(status.success(), "kill -{signal} {} failed", self.id());
    }

    /// Kill it at once (SIGKILL) and reap it.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Has it exited yet?
    pub fn has_exited(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(Some(_)))
    }

    /// Wait until it exits and return its status and output; panics after `limit`.
    pub fn wait(mut self, limit: Duration) -> Finished {
        let start = Instant::now();
        let status = loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                break status;
            }
            if start.elapsed() > limit {
                self.kill();
                let out = self.output();
                panic!("process still running after {limit:?}; killed. stderr:\n{out}");
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        let stdout = self.stdout.take().map(join).unwrap_or_default();
        let stderr = self.output();
        Finished {
            status,
            stdout,
            stderr,
        }
    }

    fn output(&mut self) -> String {
        self.stderr.take().map(join).unwrap_or_default()
    }
}

fn join(h: JoinHandle<String>) -> String {
    h.join().unwrap_or_default()
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            self.kill();
        }
    }
}

/// Start `bin run-relay-server 127.0.0.1 0 <extra>` and read the URL it prints
/// (`relay listening on ws://127.0.0.1:PORT`). Panics if none comes within 10 s.
pub fn start_cli_relay(bin: &Path, extra: &[&str]) -> (ChildGuard, String) {
    start_cli_relay_on(bin, 0, extra)
}

/// [`start_cli_relay`] on a given port (0 picks one), e.g. to restart a relay where its
/// clients expect it.
pub fn start_cli_relay_on(bin: &Path, port: u16, extra: &[&str]) -> (ChildGuard, String) {
    let mut cmd = Command::new(bin);
    cmd.args(["run-relay-server", "127.0.0.1", &port.to_string()])
        .args(extra);
    let (mut guard, stdout) = ChildGuard::spawn_reading_stdout(&mut cmd);
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut lines = BufReader::new(stdout).lines();
        if let Some(Ok(first)) = lines.next() {
            let _ = tx.send(first);
        }
        // Keep draining so the relay never blocks on a full pipe.
        for _ in lines {}
    });
    match rx.recv_timeout(Duration::from_secs(10)) {
        Ok(line) => {
            let url = line
                .rsplit(' ')
                .next()
                .filter(|u| u.starts_with("ws://") || u.starts_with("wss://"))
                .unwrap_or_else(|| panic!("unexpected first line from the relay: {line:?}"))
                .to_owned();
            (guard, url)
        }
        Err(_) => {
            guard.kill();
            let err = guard.output();
            panic!("the relay printed no URL within 10 s; stderr:\n{err}");
        }
    }
}
