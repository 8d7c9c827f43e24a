//! Interoperability with p2p-copy 0.1.2, the Python reference implementation.
//!
//! Every combination of relay × sender × receiver in which at least one of the three is
//! ours (seven of them) runs every mode: plain, `--encrypt`, `--compress on|off|auto`,
//! `--resume` against a partial, a complete, a mismatching and a longer file,
//! `--encrypt --resume`, and parallel codes (`n=3=n…`) with more and with fewer files
//! than connections. Each case checks both exit codes and the received tree byte for
//! byte, and, where one side is ours, what that side saw (resume points, compression,
//! sessions).
//!
//! "Ours" is the smol runtime library in this process; the tests at the end run our
//! command-line binary with exactly the Python tool's arguments. The Python side always
//! runs as separate processes (`<venv>/bin/p2p-copy`), killed when a test ends. Every
//! wait is bounded, and when the venv cannot be created the tests fail, never skip.
//!
//! Run alone with `cargo test -p p2p-copy-tests --test interop`.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::future::Future;
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Condvar, Mutex, OnceLock};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant, SystemTime};

use futures_lite::future;
use p2p_copy_core::wire::Compression;
use p2p_copy_core::{Event, PathEvent};
use p2p_copy_tests::binary::cli_binary;
use p2p_copy_tests::events::EventLog;
use p2p_copy_tests::process::{start_cli_relay, ChildGuard};
use p2p_copy_tests::python;
use p2p_copy_tests::tree::{self, Content, FileSpec, MIB};
use p2p_copy_tests::{
    ClientConfig, CompressMode, DirectMode, Runtime, SendOptions, Smol, Summary, TestRelay,
    TransferError,
};

/// The longest any one transfer of the suite may take, including process start-up.
const CASE_LIMIT: Duration = Duration::from_secs(180);

/// Our side's pairing and idle timeouts in the matrix: long enough for a loaded machine,
/// short enough that a silent Python peer ends our side well within [`CASE_LIMIT`].
const OUR_TIMEOUT: Duration = Duration::from_secs(60);

/// Cases that run at once. Each case is a relay, a sender and a receiver moving up to
/// 70 MiB; more than two at a time only makes them all slower on a small machine.
const SLOTS: usize = 2;

// ---------------------------------------------------------------------------------------
// The data set
// ---------------------------------------------------------------------------------------

/// The large file of the plain and `--encrypt` cases: 64 MiB of random bytes.
const BIG_SIZE: u64 = 64 * MIB;

/// Resume cases: the receiver holds the first MiB of this 1 MiB + 1 byte file...
const PARTIAL: &str = "tree/chunks/1MiB-plus-1.bin";
/// ...all of this one...
const COMPLETE: &str = "tree/chunks/text-1MiB-minus-1.txt";
/// ...and a first part of this one with one byte changed.
const MISMATCH: &str = "tree/a/b/c/d/e/deep file.dat";
/// How much of [`MISMATCH`] the receiver holds.
const MISMATCH_LEN: usize = 50_000;
/// ...and this one with 1000 bytes more than the sender has.
const LONGER: &str = "tree/readme.txt";

/// Which directory of the data set a case sends: the sender is started in that directory
/// with every entry of it as an argument, so the directory is also the expected result.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Data {
    /// `tree/`: the harness's standard tree (nested folders, unicode names, an empty
    /// file, 1 MiB and 1 MiB + 1 byte files, compressible and incompressible content).
    Small,
    /// `tree/` and the 64 MiB `big.bin`.
    Big,
    /// Two files given by name, for a parallel code with more connections than files.
    Few,
}

impl Data {
    fn dir(self) -> PathBuf {
        dataset().join(match self {
            Data::Small => "small",
            Data::Big => "big",
            Data::Few => "few",
        })
    }

    /// The sender's arguments, relative to [`Data::dir`].
    fn args(self) -> Vec<String> {
        let mut names: Vec<String> = fs::read_dir(self.dir())
            .expect("list the data set")
            .map(|e| {
                e.expect("data set entry")
                    .file_name()
                    .to_string_lossy()
                    .into_owned()
            })
            .collect();
        names.sort();
        names
    }
}

fn tree_specs() -> Vec<FileSpec> {
    tree::standard_tree()
        .into_iter()
        .map(|f| FileSpec {
            path: format!("tree/{}", f.path),
            content: f.content,
        })
        .collect()
}

fn few_specs() -> Vec<FileSpec> {
    let tree = tree::standard_tree();
    let pick = |p: &str| {
        let f = tree
            .iter()
            .find(|f| f.path == p)
            .expect("file of the standard tree");
        let name = p.rsplit('/').next().expect("a path has a last component");
        FileSpec {
            path: name.to_owned(),
            content: f.content.clone(),
        }
    };
    vec![pick("chunks/1MiB-plus-1.bin"), pick("readme.txt")]
}

fn big_spec() -> FileSpec {
    FileSpec::random("big.bin", BIG_SIZE, 64)
}

/// The data set, generated once into the target directory and reused by later runs (the
/// directory name carries a fingerprint of its recipe; it appears atomically by rename).
fn dataset() -> &'static Path {
    static DATA: OnceLock<PathBuf> = OnceLock::new();
    DATA.get_or_init(|| {
        let mut big = tree_specs();
        big.push(big_spec());
        let layout = [("small", tree_specs()), ("big", big), ("few", few_specs())];
        let mut h = std::collections::hash_map::DefaultHasher::new();
        format!("{layout:?}").hash(&mut h);
        let base = Path::new(env!("CARGO_TARGET_TMPDIR"));
        let dir = base.join(format!("interop-data-{:016x}", h.finish()));
        if dir.is_dir() {
            return dir;
        }
        // Data sets of earlier recipes are of no further use.
        for old in fs::read_dir(base).into_iter().flatten().flatten() {
            let name = old.file_name().to_string_lossy().into_owned();
            if name.starts_with("interop-data-") && old.path() != dir {
                let _ = fs::remove_dir_all(old.path());
            }
        }
        let tmp = base.join(format!("interop-data.tmp-{}", std::process::id()));
        let _ = fs::remove_dir_all(&tmp);
        for (name, specs) in &layout {
            tree::write_tree(&tmp.join(name), specs);
        }
        if let Err(e) = fs::rename(&tmp, &dir) {
            // Another test process won the race; its copy is identical.
            let _ = fs::remove_dir_all(&tmp);
            assert!(
                dir.is_dir(),
                "cannot put the data set in place at {}: {e}",
                dir.display()
            );
        }
        dir
    })
}

/// The content recipe of each file of the `tree/` directory, by path.
fn tree_contents() -> BTreeMap<String, Content> {
    tree_specs()
        .into_iter()
        .map(|f| (f.path, f.content))
        .collect()
}

/// Paths of the empty files of a data directory (as sent, `/`-separated).
fn empty_files(data: Data) -> Vec<String> {
    let specs = match data {
        Data::Small | Data::Big => tree_specs(),
        Data::Few => few_specs(),
    };
    specs
        .into_iter()
        .filter(|f| f.content.bytes().is_empty())
        .map(|f| f.path)
        .collect()
}

// ---------------------------------------------------------------------------------------
// Cases
// ---------------------------------------------------------------------------------------

/// Which implementation plays a part.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Imp {
    /// This project's (the smol runtime library, in this process).
    Ours,
    /// p2p-copy 0.1.2 (Python, a separate process).
    Py,
}

use Imp::{Ours, Py};

/// Who is the relay, the sender and the receiver.
#[derive(Debug, Clone, Copy)]
struct Combo {
    relay: Imp,
    sender: Imp,
    receiver: Imp,
}

/// Where the receiver's partial file sits before a resume case.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PartialAt {
    /// Our receiver's own partial file, `.<name>.p2p-copy-part`.
    PartFile,
    /// The final name, as p2p-copy 0.1.2 leaves an interrupted file.
    FinalName,
}

/// What a case does, apart from who plays which part.
#[derive(Debug, Clone, Copy)]
struct Mode {
    data: Data,
    encrypt: bool,
    /// `None`: no `--compress` option (the default, auto).
    compress: Option<CompressMode>,
    /// `Some`: `--resume`, with the receiver holding [`PARTIAL`], [`COMPLETE`] and
    /// [`MISMATCH`] and [`LONGER`]; the position tells where our receiver finds its
    /// partial file.
    resume: Option<PartialAt>,
    /// `Some(n)`: a parallel code `n=<n>=n…`.
    parallel: Option<usize>,
}

/// No option at all: for tests that only use a [`Mode`] for the command-line flags.
const NO_OPTIONS: Mode = Mode::new(Data::Small);

impl Mode {
    const fn new(data: Data) -> Mode {
        Mode {
            data,
            encrypt: false,
            compress: None,
            resume: None,
            parallel: None,
        }
    }
}

/// The modes of the matrix, one test module each.
mod modes {
    use super::*;

    pub const PLAIN: Mode = Mode::new(Data::Big);
    pub const ENCRYPT: Mode = Mode {
        encrypt: true,
        ..Mode::new(Data::Big)
    };
    pub const COMPRESS_ON: Mode = Mode {
        compress: Some(CompressMode::On),
        ..Mode::new(Data::Small)
    };
    pub const COMPRESS_OFF: Mode = Mode {
        compress: Some(CompressMode::Off),
        ..Mode::new(Data::Small)
    };
    pub const COMPRESS_AUTO: Mode = Mode {
        compress: Some(CompressMode::Auto),
        ..Mode::new(Data::Small)
    };
    pub const RESUME: Mode = Mode {
        resume: Some(PartialAt::PartFile),
        ..Mode::new(Data::Small)
    };
    pub const ENCRYPT_RESUME: Mode = Mode {
        encrypt: true,
        resume: Some(PartialAt::FinalName),
        ..Mode::new(Data::Small)
    };
    pub const PARALLEL_MORE_FILES: Mode = Mode {
        parallel: Some(3),
        ..Mode::new(Data::Small)
    };
    pub const PARALLEL_FEWER_FILES: Mode = Mode {
        parallel: Some(3),
        ..Mode::new(Data::Few)
    };
}

fn compress_arg(m: CompressMode) -> &'static str {
    match m {
        CompressMode::Auto => "auto",
        CompressMode::On => "on",
        CompressMode::Off => "off",
    }
}

// ---------------------------------------------------------------------------------------
// Running things
// ---------------------------------------------------------------------------------------

/// A permit to run a case; at most [`SLOTS`] exist at once.
struct Slot;

static SLOTS_IN_USE: (Mutex<usize>, Condvar) = (Mutex::new(0), Condvar::new());

impl Slot {
    fn acquire() -> Slot {
        let (lock, cv) = &SLOTS_IN_USE;
        let mut used = lock.lock().unwrap_or_else(|e| e.into_inner());
        while *used >= SLOTS {
            used = cv.wait(used).unwrap_or_else(|e| e.into_inner());
        }
        *used += 1;
        Slot
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let (lock, cv) = &SLOTS_IN_USE;
        *lock.lock().unwrap_or_else(|e| e.into_inner()) -= 1;
        cv.notify_one();
    }
}

/// A case's scratch space below the target directory, with `out/` for the receiver.
/// Removed when the case ends, pass or fail.
struct Scratch {
    dir: tempfile::TempDir,
}

impl Scratch {
    fn new(name: &str) -> Scratch {
        let dir = tempfile::Builder::new()
            .prefix(&format!("interop-{name}-"))
            .tempdir_in(env!("CARGO_TARGET_TMPDIR"))
            .expect("create a scratch directory");
        Scratch { dir }
    }

    fn out(&self) -> PathBuf {
        self.dir.path().join("out")
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }
}

/// A relay of either implementation.
enum AnyRelay {
    /// Ours, in this process.
    Ours(TestRelay),
    /// The Python relay or our command-line binary.
    Proc { guard: ChildGuard, url: String },
}

impl AnyRelay {
    fn start(imp: Imp) -> AnyRelay {
        match imp {
            Ours => AnyRelay::Ours(TestRelay::start::<Smol>()),
            Py => {
                let (guard, url) = python::start_relay();
                AnyRelay::Proc { guard, url }
            }
        }
    }

    /// Our relay as the command-line binary, on a port it picks itself.
    fn start_cli(bin: &Path) -> AnyRelay {
        let (guard, url) = start_cli_relay(bin, &["--no-tls"]);
        AnyRelay::Proc { guard, url }
    }

    fn url(&self) -> String {
        match self {
            AnyRelay::Ours(r) => r.url(),
            AnyRelay::Proc { url, .. } => url.clone(),
        }
    }

    /// Panics if a relay process has died (a relay serves until it is stopped).
    fn assert_running(self) {
        if let AnyRelay::Proc { mut guard, .. } = self {
            if guard.has_exited() {
                let out = guard.wait(Duration::from_secs(10));
                panic!(
                    "the relay ended during the case ({}):\n{}{}",
                    out.status, out.stdout, out.stderr
                );
            }
        }
    }
}

/// How one side ended.
#[derive(Debug)]
struct Ended {
    who: String,
    /// The exit code; for our library side, [`TransferError::exit_code`] or 0. `None`
    /// when it had to be stopped at the time limit.
    code: Option<i32>,
    /// The error message or the process's output.
    message: String,
    /// What our library side reported.
    events: Option<EventLog>,
}

impl Ended {
    fn report(&self) -> String {
        let status = match self.code {
            Some(c) => format!("exit code {c}"),
            None => "stopped at the time limit".to_owned(),
        };
        format!("--- {} ({status}) ---\n{}", self.who, self.message)
    }

    fn events(&self) -> &EventLog {
        self.events
            .as_ref()
            .unwrap_or_else(|| panic!("{} is not our library side", self.who))
    }
}

/// A running sender or receiver.
enum Side {
    Lib {
        who: String,
        thread: JoinHandle<Option<Result<Summary, TransferError>>>,
        events: EventLog,
        /// Dropping it stops the transfer (the future is dropped, as a user would).
        stop: async_channel::Sender<()>,
    },
    Proc {
        who: String,
        guard: ChildGuard,
    },
}

impl Side {
    /// Run the future `make` builds on a thread of its own, until it ends or is stopped.
    fn lib<F, Fut>(who: &str, make: F) -> Side
    where
        F: FnOnce(EventLog) -> Fut + Send + 'static,
        Fut: Future<Output = Result<Summary, TransferError>>,
    {
        let events = EventLog::new();
        let log = events.clone();
        let (stop, stopped) = async_channel::bounded::<()>(1);
        let thread = thread::Builder::new()
            .name(who.to_owned())
            .spawn(move || {
                Smol::block_on(future::or(async { Some(make(log).await) }, async {
                    // Ends when the sending half is dropped.
                    let _ = stopped.recv().await;
                    None
                }))
            })
            .expect("spawn a thread");
        Side::Lib {
            who: who.to_owned(),
            thread,
            events,
            stop,
        }
    }

    /// A process: the Python tool or our binary.
    fn process(who: &str, cmd: &mut Command) -> Side {
        Side::Proc {
            who: who.to_owned(),
            guard: ChildGuard::spawn(cmd),
        }
    }

    fn wait_until(self, deadline: Instant) -> Ended {
        match self {
            Side::Proc { who, guard } => {
                let (f, timed_out) = python::wait_until(guard, deadline);
                Ended {
                    who,
                    code: if timed_out { None } else { f.status.code() },
                    message: format!("[stdout]\n{}[stderr]\n{}", f.stdout, f.stderr),
                    events: None,
                }
            }
            Side::Lib {
                who,
                thread,
                events,
                stop,
            } => {
                while !thread.is_finished() && Instant::now() < deadline {
                    thread::sleep(Duration::from_millis(10));
                }
                drop(stop);
                // Dropping a transfer must end it promptly, whatever it was doing.
                let hard = Instant::now() + Duration::from_secs(30);
                while !thread.is_finished() {
                    assert!(
                        Instant::now() < hard,
                        "{who} did not stop within 30 s of being dropped"
                    );
                    thread::sleep(Duration::from_millis(10));
                }
                let (code, message) = match thread.join() {
                    Ok(Some(Ok(summary))) => (Some(0), format!("{summary:?}")),
                    Ok(Some(Err(e))) => (Some(e.exit_code()), e.to_string()),
                    Ok(None) => (None, "still running at the time limit; dropped".to_owned()),
                    Err(panic) => {
                        let why = panic
                            .downcast_ref::<String>()
                            .map(String::as_str)
                            .or_else(|| panic.downcast_ref::<&str>().copied())
                            .unwrap_or("?");
                        panic!("{who} panicked: {why}")
                    }
                };
                Ended {
                    who,
                    code,
                    message,
                    events: Some(events),
                }
            }
        }
    }
}

fn our_config(url: &str, code: &str, encrypt: bool) -> ClientConfig {
    let mut cfg = ClientConfig::new(url, code);
    cfg.encrypt = encrypt;
    cfg.pair_timeout = OUR_TIMEOUT;
    cfg.idle_timeout = OUR_TIMEOUT;
    cfg
}

/// The Python tool's `send` arguments (after `send`), which our binary accepts as well.
fn send_args(url: &str, code: &str, files: &[String], mode: &Mode) -> Vec<String> {
    let mut a = vec![url.to_owned(), code.to_owned()];
    a.extend(files.iter().cloned());
    if mode.encrypt {
        a.push("--encrypt".into());
    }
    if let Some(c) = mode.compress {
        a.push("--compress".into());
        a.push(compress_arg(c).into());
    }
    if mode.resume.is_some() {
        a.push("--resume".into());
    }
    a
}

/// The Python tool's `receive` arguments (after `receive`).
fn receive_args(url: &str, code: &str, out: &Path, encrypt: bool) -> Vec<String> {
    let mut a = vec![
        url.to_owned(),
        code.to_owned(),
        "--out".into(),
        out.to_string_lossy().into_owned(),
    ];
    if encrypt {
        a.push("--encrypt".into());
    }
    a
}

/// Start a sender of `files` (relative to `cwd`).
fn start_sender(
    imp: Imp,
    url: &str,
    code: &str,
    cwd: &Path,
    files: &[String],
    mode: &Mode,
) -> Side {
    match imp {
        Ours => {
            let cfg = our_config(url, code, mode.encrypt);
            let paths: Vec<PathBuf> = files.iter().map(|f| cwd.join(f)).collect();
            let opts = SendOptions {
                compress: mode.compress.unwrap_or_default(),
                resume: mode.resume.is_some(),
                ..SendOptions::default()
            };
            Side::lib("our sender", move |log| {
                Smol::send(cfg, paths, opts, log.recorder())
            })
        }
        Py => {
            let mut cmd = python::command(
                std::iter::once("send".to_owned()).chain(send_args(url, code, files, mode)),
            );
            Side::process("the Python sender", cmd.current_dir(cwd))
        }
    }
}

/// Start a receiver into `out`.
fn start_receiver(imp: Imp, url: &str, code: &str, out: &Path, encrypt: bool) -> Side {
    match imp {
        Ours => {
            let cfg = our_config(url, code, encrypt);
            let out = out.to_path_buf();
            Side::lib("our receiver", move |log| {
                Smol::receive(cfg, out, log.recorder())
            })
        }
        Py => {
            let mut cmd = python::command(
                std::iter::once("receive".to_owned()).chain(receive_args(url, code, out, encrypt)),
            );
            Side::process("the Python receiver", &mut cmd)
        }
    }
}

/// Wait for both sides until `deadline` (sender first: it ends the session).
fn finish(sender: Side, receiver: Side, deadline: Instant) -> (Ended, Ended) {
    let s = sender.wait_until(deadline);
    let r = receiver.wait_until(deadline);
    (s, r)
}

// ---------------------------------------------------------------------------------------
// Checks
// ---------------------------------------------------------------------------------------

/// An old modification time given to the receiver's complete copy: a file that is
/// skipped keeps it.
fn old_time() -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000_000)
}

/// Put a partial, a complete, a mismatching and a too long copy into the receiver's
/// `out`.
fn prefill_for_resume(out: &Path, data: &Path, partial_at: PartialAt) {
    let read =
        |p: &str| fs::read(data.join(p)).unwrap_or_else(|e| panic!("data set file {p}: {e}"));
    let write = |dest: PathBuf, bytes: &[u8]| {
        fs::create_dir_all(dest.parent().expect("a file has a parent")).expect("create dirs");
        fs::write(&dest, bytes).unwrap_or_else(|e| panic!("write {}: {e}", dest.display()));
        dest
    };
    let partial = read(PARTIAL);
    assert_eq!(partial.len() as u64, MIB + 1, "{PARTIAL} is 1 MiB + 1 byte");
    let dest = match partial_at {
        PartialAt::PartFile => tree::partial_path(out, PARTIAL),
        PartialAt::FinalName => out.join(PARTIAL),
    };
    write(dest, &partial[..MIB as usize]);

    let complete = write(out.join(COMPLETE), &read(COMPLETE));
    fs::File::options()
        .write(true)
        .open(&complete)
        .and_then(|f| f.set_modified(old_time()))
        .expect("set the modification time");

    let mut mismatch = read(MISMATCH);
    mismatch.truncate(MISMATCH_LEN);
    mismatch[100] ^= 0xff;
    write(out.join(MISMATCH), &mismatch);

    let mut longer = read(LONGER);
    longer.extend_from_slice(&[b'x'; 1000]);
    write(out.join(LONGER), &longer);
}

fn report_all(ended: &[&Ended]) -> String {
    ended
        .iter()
        .map(|e| e.report())
        .collect::<Vec<_>>()
        .join("\n")
}

fn assert_exit(e: &Ended, want: i32, all: &[&Ended]) {
    assert_eq!(
        e.code,
        Some(want),
        "{} should end with exit code {want}\n{}",
        e.who,
        report_all(all)
    );
}

/// `append_from` of each file our side started, by path.
fn started(log: &EventLog) -> BTreeMap<String, u64> {
    log.started().into_iter().collect()
}

/// Compression of each file our side started, by path.
fn compressions(log: &EventLog) -> BTreeMap<String, Compression> {
    log.events()
        .into_iter()
        .filter_map(|e| match e {
            Event::FileStarted {
                path, compression, ..
            } => Some((path, compression)),
            _ => None,
        })
        .collect()
}

/// Sessions (parallel connection indices) in which our side saw a manifest, and those
/// in which a file started.
fn sessions(log: &EventLog) -> (BTreeSet<usize>, BTreeSet<usize>) {
    let mut manifests = BTreeSet::new();
    let mut files = BTreeSet::new();
    for e in log.all() {
        match e.event {
            Event::Manifest { .. } => {
                manifests.insert(e.session);
            }
            Event::FileStarted { .. } => {
                files.insert(e.session);
            }
            _ => {}
        }
    }
    (manifests, files)
}

/// What our side (`who`, sender or receiver) must have seen in `mode`.
fn check_our_events(mode: &Mode, log: &EventLog, who: &str, reports: &str) {
    let started = started(log);
    if mode.resume.is_some() {
        assert_eq!(
            started.get(PARTIAL),
            Some(&MIB),
            "{who}: {PARTIAL} must continue after the MiB the receiver has; started: {started:?}\n{reports}"
        );
        assert_eq!(
            started.get(MISMATCH),
            Some(&0),
            "{who}: {MISMATCH} differs at the receiver and must be sent whole; started: {started:?}\n{reports}"
        );
        assert_eq!(
            started.get(LONGER),
            Some(&0),
            "{who}: {LONGER} is longer at the receiver and must be sent whole; started: {started:?}\n{reports}"
        );
        assert!(
            !started.contains_key(COMPLETE),
            "{who}: {COMPLETE} is complete at the receiver and must not be sent\n{reports}"
        );
        assert!(
            log.skipped().iter().any(|p| p == COMPLETE),
            "{who}: {COMPLETE} must be reported as skipped; skipped: {:?}\n{reports}",
            log.skipped()
        );
    }
    if mode.resume.is_none() && mode.parallel.is_none() {
        // Outside resume every file of the data set is started once.
        let want = mode
            .data
            .args()
            .iter()
            .flat_map(|a| list_files(&mode.data.dir(), a))
            .collect::<BTreeSet<_>>();
        let got = started.keys().cloned().collect::<BTreeSet<_>>();
        assert_eq!(got, want, "{who}: files started\n{reports}");
    }
    if let Some(c) = mode.compress {
        let comp = compressions(log);
        let contents = tree_contents();
        for (path, got) in &comp {
            let Some(content) = contents.get(path) else {
                continue;
            };
            let size = content.bytes().len();
            let want = match (c, content) {
                (CompressMode::On, _) => Some(Compression::Zstd),
                (CompressMode::Off, _) => Some(Compression::None),
                (CompressMode::Auto, _) if size == 0 => Some(Compression::None),
                // Small files may go either way; from 4 KiB on the content decides.
                (CompressMode::Auto, _) if size < 4096 => None,
                (CompressMode::Auto, Content::Text { .. }) => Some(Compression::Zstd),
                (CompressMode::Auto, _) => Some(Compression::None),
            };
            if let Some(want) = want {
                assert_eq!(*got, want, "{who}: compression of {path}\n{reports}");
            }
        }
        assert!(!comp.is_empty(), "{who}: no file started\n{reports}");
    }
    if let Some(n) = mode.parallel {
        let (manifests, files) = sessions(log);
        let all: BTreeSet<usize> = (0..n).collect();
        assert_eq!(manifests, all, "{who}: every session must run\n{reports}");
        let file_count = mode
            .data
            .args()
            .iter()
            .map(|a| list_files(&mode.data.dir(), a).len())
            .sum::<usize>();
        let busy = file_count.min(n);
        assert_eq!(
            files.len(),
            busy,
            "{who}: {file_count} files over {n} connections use {busy} of them; sessions with files: {files:?}\n{reports}"
        );
    }
}

/// The `/`-separated paths a sender argument stands for (a file: its name; a directory:
/// every file below it, under the directory's name).
fn list_files(cwd: &Path, arg: &str) -> Vec<String> {
    let p = cwd.join(arg);
    if p.is_file() {
        return vec![arg.to_owned()];
    }
    let mut out = Vec::new();
    let mut stack = vec![(p, arg.to_owned())];
    while let Some((dir, rel)) = stack.pop() {
        for e in fs::read_dir(&dir).expect("read a data set directory") {
            let e = e.expect("directory entry");
            let name = format!("{rel}/{}", e.file_name().to_string_lossy());
            if e.file_type().expect("file type").is_dir() {
                stack.push((e.path(), name));
            } else {
                out.push(name);
            }
        }
    }
    out
}

// ---------------------------------------------------------------------------------------
// The matrix
// ---------------------------------------------------------------------------------------

/// Run one case of the matrix and check everything it promises.
fn run_case(name: &str, mode: Mode, combo: Combo) {
    let _slot = Slot::acquire();
    let scratch = Scratch::new(name);
    let out = scratch.out();
    let data = mode.data.dir();
    let files = mode.data.args();
    if let Some(at) = mode.resume {
        // p2p-copy 0.1.2 has no partial files of its own: it resumes from the final name.
        let at = if combo.receiver == Py {
            PartialAt::FinalName
        } else {
            at
        };
        prefill_for_resume(&out, &data, at);
    }

    let relay = AnyRelay::start(combo.relay);
    let url = relay.url();
    let code = match mode.parallel {
        Some(n) => format!("n={n}=ninterop {name}"),
        None => format!("interop {name}"),
    };
    let deadline = Instant::now() + CASE_LIMIT;
    let receiver = start_receiver(combo.receiver, &url, &code, &out, mode.encrypt);
    let sender = start_sender(combo.sender, &url, &code, &data, &files, &mode);
    let (s, r) = finish(sender, receiver, deadline);
    relay.assert_running();

    let all = [&s, &r];
    assert_exit(&s, 0, &all);
    assert_exit(&r, 0, &all);
    let reports = report_all(&all);

    let mut diffs = tree::tree_diff(&data, &out);
    if mode.resume.is_some() && combo.sender == Py && combo.receiver == Py {
        // p2p-copy 0.1.2's sender never sends an empty file when resuming, and its
        // receiver does not create the empty files of the manifest (ours does).
        let quirk: Vec<String> = empty_files(mode.data)
            .iter()
            .map(|p| format!("missing: {p}"))
            .collect();
        assert!(!quirk.is_empty(), "the data set has an empty file");
        diffs.retain(|d| !quirk.contains(d));
    }
    assert!(
        diffs.is_empty(),
        "{} differs from {}:\n  {}\n{reports}",
        out.display(),
        data.display(),
        diffs.join("\n  ")
    );

    if mode.resume.is_some() {
        let mtime = fs::metadata(out.join(COMPLETE))
            .and_then(|m| m.modified())
            .expect("mtime of the complete file");
        assert_eq!(
            mtime,
            old_time(),
            "{COMPLETE} was complete at the receiver and must not have been rewritten\n{reports}"
        );
    }
    if combo.sender == Ours {
        check_our_events(&mode, s.events(), "our sender", &reports);
        // Every session ends with a delivery report from our receiver; p2p-copy 0.1.2
        // cannot confirm, and our sender says so instead of claiming delivery.
        let deliveries: Vec<bool> = s
            .events()
            .events()
            .into_iter()
            .filter_map(|e| match e {
                Event::Delivery { confirmed, .. } => Some(confirmed),
                _ => None,
            })
            .collect();
        let sessions = mode.parallel.unwrap_or(1).max(1);
        assert_eq!(
            deliveries,
            vec![combo.receiver == Ours; sessions],
            "our sender: delivery confirmed per session\n{reports}"
        );
    }
    if combo.receiver == Ours {
        check_our_events(&mode, r.events(), "our receiver", &reports);
    }
    // Our sides run with direct connections on (the default). With a p2p-copy 0.1.2 peer
    // the offer is never answered (our sender) or never made (our receiver): the relay
    // carries everything and no direct-path message is sent.
    let paths = |log: &EventLog| -> Vec<PathEvent> {
        log.events()
            .into_iter()
            .filter_map(|e| match e {
                Event::Path(p) => Some(p),
                _ => None,
            })
            .collect()
    };
    if combo.sender == Ours && combo.receiver == Py {
        assert_eq!(
            paths(s.events()),
            vec![],
            "our sender with a Python receiver\n{reports}"
        );
    }
    if combo.receiver == Ours && combo.sender == Py {
        let sessions = mode.parallel.unwrap_or(1).max(1);
        let want = PathEvent::Relay {
            reason: "the sender offers no direct connection".into(),
        };
        assert_eq!(
            paths(r.events()),
            vec![want; sessions],
            "our receiver with a Python sender\n{reports}"
        );
    }
}

/// One test module per mode, one test per combination with at least one side ours.
macro_rules! matrix {
    ($($module:ident => $mode:expr;)*) => {$(
        mod $module {
            use super::*;

            fn run(combo: Combo) {
                run_case(stringify!($module), $mode, combo);
            }

            #[test]
            fn relay_ours_sender_ours_receiver_ours() {
                run(Combo { relay: Ours, sender: Ours, receiver: Ours });
            }

            #[test]
            fn relay_ours_sender_ours_receiver_py() {
                run(Combo { relay: Ours, sender: Ours, receiver: Py });
            }

            #[test]
            fn relay_ours_sender_py_receiver_ours() {
                run(Combo { relay: Ours, sender: Py, receiver: Ours });
            }

            #[test]
            fn relay_ours_sender_py_receiver_py() {
                run(Combo { relay: Ours, sender: Py, receiver: Py });
            }

            #[test]
            fn relay_py_sender_ours_receiver_ours() {
                run(Combo { relay: Py, sender: Ours, receiver: Ours });
            }

            #[test]
            fn relay_py_sender_ours_receiver_py() {
                run(Combo { relay: Py, sender: Ours, receiver: Py });
            }

            #[test]
            fn relay_py_sender_py_receiver_ours() {
                run(Combo { relay: Py, sender: Py, receiver: Ours });
            }
        }
    )*};
}

matrix! {
    plain => modes::PLAIN;
    encrypt => modes::ENCRYPT;
    compress_on => modes::COMPRESS_ON;
    compress_off => modes::COMPRESS_OFF;
    compress_auto => modes::COMPRESS_AUTO;
    resume => modes::RESUME;
    encrypt_resume => modes::ENCRYPT_RESUME;
    parallel_more_files_than_connections => modes::PARALLEL_MORE_FILES;
    parallel_fewer_files_than_connections => modes::PARALLEL_FEWER_FILES;
}

// ---------------------------------------------------------------------------------------
// Habits of p2p-copy 0.1.2 that our side must live with
// ---------------------------------------------------------------------------------------

/// Files for a quirk test, written below `<scratch>/<dir>`.
fn write_source(scratch: &Scratch, dir: &str, files: &[FileSpec]) -> PathBuf {
    let src = scratch.path().join(dir);
    tree::write_tree(&src, files);
    src
}

#[test]
fn python_sender_skips_a_one_character_file_argument() {
    let _slot = Slot::acquire();
    let scratch = Scratch::new("one-char-py");
    let src = write_source(
        &scratch,
        "src",
        &[
            FileSpec::text("a", 100, 1),
            FileSpec::text("bc.txt", 100, 2),
        ],
    );
    let expected = write_source(&scratch, "expected", &[FileSpec::text("bc.txt", 100, 2)]);
    let out = scratch.out();
    let relay = AnyRelay::start(Ours);
    let code = "interop one-char-py";
    let deadline = Instant::now() + CASE_LIMIT;
    let r = start_receiver(Ours, &relay.url(), code, &out, false);
    let files = ["a".to_owned(), "bc.txt".to_owned()];
    let s = start_sender(Py, &relay.url(), code, &src, &files, &NO_OPTIONS);
    let (s, r) = finish(s, r, deadline);
    let all = [&s, &r];
    assert_exit(&s, 0, &all);
    assert_exit(&r, 0, &all);
    assert!(
        s.message.contains("probably not a file: a"),
        "p2p-copy 0.1.2 says why it skips `a`\n{}",
        report_all(&all)
    );
    // Our receiver gets a one-file manifest and nothing named `a`.
    assert!(r.events().events().contains(&Event::Manifest {
        files: 1,
        bytes: 100
    }));
    tree::assert_same_tree(&expected, &out);
}

#[test]
fn our_sender_sends_a_one_character_file_argument() {
    let _slot = Slot::acquire();
    let scratch = Scratch::new("one-char-ours");
    let src = write_source(
        &scratch,
        "src",
        &[
            FileSpec::text("a", 100, 1),
            FileSpec::text("bc.txt", 100, 2),
        ],
    );
    let out = scratch.out();
    let relay = AnyRelay::start(Py);
    let code = "interop one-char-ours";
    let deadline = Instant::now() + CASE_LIMIT;
    let r = start_receiver(Py, &relay.url(), code, &out, false);
    let files = ["a".to_owned(), "bc.txt".to_owned()];
    let s = start_sender(Ours, &relay.url(), code, &src, &files, &NO_OPTIONS);
    let (s, r) = finish(s, r, deadline);
    let all = [&s, &r];
    assert_exit(&s, 0, &all);
    assert_exit(&r, 0, &all);
    tree::assert_same_tree(&src, &out);
}

#[test]
fn our_cli_receiver_ends_clearly_when_the_python_sender_never_comes() {
    // Built (or found up to date) before the clock starts.
    let bin = cli_binary();
    let _slot = Slot::acquire();
    let scratch = Scratch::new("never-comes");
    // Given only a one-character name, p2p-copy 0.1.2 sends nothing and never connects.
    let src = write_source(&scratch, "src", &[FileSpec::text("a", 100, 1)]);
    let out = scratch.out();
    let relay = AnyRelay::start(Py);
    let url = relay.url();
    let code = "interop never-comes";
    let mut cmd = Command::new(&bin);
    cmd.arg("receive")
        .args(receive_args(&url, code, &out, false))
        .args(["--timeout", "3"]);
    let started = Instant::now();
    let r = Side::process("our receiver (command line)", &mut cmd);
    let s = start_sender(Py, &url, code, &src, &["a".to_owned()], &NO_OPTIONS);
    let (s, r) = finish(s, r, started + Duration::from_secs(60));
    relay.assert_running();
    let all = [&s, &r];
    assert_exit(&s, 3, &all);
    assert!(s.message.contains("no legal files"), "{}", report_all(&all));
    assert_exit(&r, 3, &all);
    assert!(
        r.message.contains("error: ")
            && r.message.contains("same code")
            && r.message.contains("--encrypt"),
        "our receiver must say what to check\n{}",
        report_all(&all)
    );
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "the 3 s timeout was not kept"
    );
    assert!(!out.join("a").exists());
}

#[test]
fn python_resume_sender_skips_empty_files_and_our_receiver_creates_them() {
    let _slot = Slot::acquire();
    let scratch = Scratch::new("empty-ours");
    let src = write_source(
        &scratch,
        "src",
        &[
            FileSpec::random("empties/zero", 0, 0),
            FileSpec::random("empties/only/empty/here/zero", 0, 0),
            FileSpec::text("empties/data.txt", 1000, 3),
        ],
    );
    let out = scratch.out();
    // A stale copy of an empty file: the sender skips empty files, so only the receiver
    // can make it empty again.
    fs::create_dir_all(out.join("empties")).expect("create out/empties");
    fs::write(out.join("empties/zero"), b"stale").expect("write a stale copy");
    let relay = AnyRelay::start(Ours);
    let code = "interop empty-ours";
    let resume = Mode {
        resume: Some(PartialAt::PartFile),
        ..NO_OPTIONS
    };
    let deadline = Instant::now() + CASE_LIMIT;
    let r = start_receiver(Ours, &relay.url(), code, &out, false);
    let s = start_sender(
        Py,
        &relay.url(),
        code,
        &src,
        &["empties".to_owned()],
        &resume,
    );
    let (s, r) = finish(s, r, deadline);
    let all = [&s, &r];
    assert_exit(&s, 0, &all);
    assert_exit(&r, 0, &all);
    // Only the non-empty file came over the wire...
    assert_eq!(
        started(r.events()),
        BTreeMap::from([("empties/data.txt".to_owned(), 0)]),
        "{}",
        report_all(&all)
    );
    // ...and the empty ones exist all the same, with their folders.
    tree::assert_same_tree(&src, &out);
}

#[test]
fn python_resume_pair_loses_empty_files_which_our_relay_does_not_mind() {
    let _slot = Slot::acquire();
    let scratch = Scratch::new("empty-py");
    let src = write_source(
        &scratch,
        "src",
        &[
            FileSpec::random("empties/zero", 0, 0),
            FileSpec::text("empties/data.txt", 1000, 3),
        ],
    );
    let expected = write_source(
        &scratch,
        "expected",
        &[FileSpec::text("empties/data.txt", 1000, 3)],
    );
    let out = scratch.out();
    let relay = AnyRelay::start(Ours);
    let code = "interop empty-py";
    let resume = Mode {
        resume: Some(PartialAt::FinalName),
        ..NO_OPTIONS
    };
    let deadline = Instant::now() + CASE_LIMIT;
    let r = start_receiver(Py, &relay.url(), code, &out, false);
    let s = start_sender(
        Py,
        &relay.url(),
        code,
        &src,
        &["empties".to_owned()],
        &resume,
    );
    let (s, r) = finish(s, r, deadline);
    let all = [&s, &r];
    assert_exit(&s, 0, &all);
    assert_exit(&r, 0, &all);
    // The quirk our receiver makes up for: two Python peers drop `empties/zero`.
    tree::assert_same_tree(&expected, &out);
}

#[test]
fn python_sender_killed_mid_file_then_resumed_into_our_receiver() {
    let _slot = Slot::acquire();
    let scratch = Scratch::new("killed");
    let out = scratch.out();
    let data = Data::Big.dir();
    let files = ["big.bin".to_owned()];
    let relay = AnyRelay::start(Ours);
    let code = "interop killed";

    let deadline = Instant::now() + CASE_LIMIT;
    let r = start_receiver(Ours, &relay.url(), code, &out, false);
    let Side::Proc {
        guard: mut sender, ..
    } = start_sender(Py, &relay.url(), code, &data, &files, &NO_OPTIONS)
    else {
        unreachable!("the Python sender is a process")
    };
    let part = tree::partial_path(&out, "big.bin");
    let grown = |p: &Path| fs::metadata(p).map(|m| m.len()).unwrap_or(0);
    while grown(&part) < 4 * MIB {
        if sender.has_exited() || Instant::now() >= deadline {
            let (f, _) = python::wait_until(sender, Instant::now());
            panic!(
                "the Python sender ended or stalled before it could be stopped mid-file ({}):\n{}{}",
                f.status, f.stdout, f.stderr
            );
        }
        thread::sleep(Duration::from_millis(1));
    }
    sender.kill();
    let (killed, _) = python::wait_until(sender, Instant::now());
    let r = r.wait_until(deadline);
    let all = [&r];
    assert_eq!(
        killed.status.code(),
        None,
        "the Python sender was to be killed mid-file, but it ended by itself:\n{}{}",
        killed.stdout,
        killed.stderr
    );
    // A killed sender is a lost connection, not a protocol violation.
    assert_exit(&r, 7, &all);
    assert!(
        r.message.contains("big.bin") && r.message.contains("--resume"),
        "our receiver must name the file and say how to continue\n{}",
        r.report()
    );
    let kept = grown(&part);
    assert!(
        (4 * MIB..BIG_SIZE).contains(&kept),
        "the partial file stays ({kept} bytes)"
    );
    assert!(
        !out.join("big.bin").exists(),
        "nothing at the final name yet"
    );

    let resume = Mode {
        resume: Some(PartialAt::PartFile),
        ..NO_OPTIONS
    };
    let r = start_receiver(Ours, &relay.url(), code, &out, false);
    let s = start_sender(Py, &relay.url(), code, &data, &files, &resume);
    let (s, r) = finish(s, r, deadline);
    let all = [&s, &r];
    assert_exit(&s, 0, &all);
    assert_exit(&r, 0, &all);
    assert_eq!(
        started(r.events()),
        BTreeMap::from([("big.bin".to_owned(), kept)]),
        "the Python sender continues where the partial file ends\n{}",
        report_all(&all)
    );
    let expected = write_source(&scratch, "expected", &[big_spec()]);
    tree::assert_same_tree(&expected, &out);
}

#[test]
fn our_sender_ends_clearly_when_the_python_receiver_uses_another_encrypt_setting() {
    let _slot = Slot::acquire();
    let scratch = Scratch::new("encrypt-mismatch");
    let src = write_source(&scratch, "src", &[FileSpec::text("x.txt", 100, 1)]);
    let out = scratch.out();
    let relay = AnyRelay::start(Py);
    let url = relay.url();
    let code = "interop encrypt-mismatch";
    let Side::Proc {
        guard: mut receiver,
        ..
    } = start_receiver(Py, &url, code, &out, true)
    else {
        unreachable!("the Python receiver is a process")
    };
    let mut cfg = our_config(&url, code, false);
    cfg.pair_timeout = Duration::from_secs(3);
    let paths = vec![src.join("x.txt")];
    let started = Instant::now();
    let s = Side::lib("our sender", move |log| {
        Smol::send(cfg, paths, SendOptions::default(), log.recorder())
    })
    .wait_until(started + Duration::from_secs(60));
    assert_exit(&s, 3, &[&s]);
    assert!(
        s.message.contains("--encrypt"),
        "the message must point at --encrypt\n{}",
        s.report()
    );
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "the 3 s timeout was not kept"
    );
    // p2p-copy 0.1.2's receiver has no timeout of its own: it would wait forever.
    assert!(
        !receiver.has_exited(),
        "the Python receiver was expected to be still waiting"
    );
    assert!(!out.join("x.txt").exists());
}

#[test]
fn our_direct_only_sender_fails_clearly_against_a_python_receiver_and_sends_no_file() {
    let _slot = Slot::acquire();
    let scratch = Scratch::new("direct-only-py");
    let src = write_source(&scratch, "src", &[FileSpec::random("x.bin", 300_000, 4)]);
    let out = scratch.out();
    let relay = AnyRelay::start(Py);
    let url = relay.url();
    let code = "interop direct-only";
    let Side::Proc {
        guard: mut receiver,
        ..
    } = start_receiver(Py, &url, code, &out, false)
    else {
        unreachable!("the Python receiver is a process")
    };
    let mut cfg = our_config(&url, code, false);
    cfg.direct.mode = DirectMode::DirectOnly;
    cfg.direct.timeout = Duration::from_secs(2);
    let paths = vec![src.join("x.bin")];
    let t0 = Instant::now();
    let s = Side::lib("our sender", move |log| {
        Smol::send(cfg, paths, SendOptions::default(), log.recorder())
    })
    .wait_until(t0 + Duration::from_secs(60));
    assert_exit(&s, 9, &[&s]);
    assert!(
        s.message.contains("0.1.x"),
        "the message must say why there is no direct path\n{}",
        s.report()
    );
    assert!(
        t0.elapsed() < Duration::from_secs(30),
        "the 2 s attempt was not kept"
    );
    receiver.kill();
    // The Python receiver creates a file when its header arrives: none did.
    let arrived: Vec<_> = fs::read_dir(&out)
        .map(|d| d.flatten().map(|e| e.file_name()).collect())
        .unwrap_or_default();
    assert!(
        arrived.is_empty(),
        "no file may go through the relay: {arrived:?}"
    );
}

#[test]
fn our_receiver_refuses_two_files_of_the_same_name_from_python() {
    let _slot = Slot::acquire();
    let scratch = Scratch::new("same-name");
    let src = write_source(
        &scratch,
        "src",
        &[
            FileSpec::text("x/f.txt", 100, 1),
            FileSpec::text("y/f.txt", 200, 2),
        ],
    );
    let out = scratch.out();
    let relay = AnyRelay::start(Ours);
    let code = "interop same-name";
    let deadline = Instant::now() + CASE_LIMIT;
    let r = start_receiver(Ours, &relay.url(), code, &out, false);
    let files = ["x/f.txt".to_owned(), "y/f.txt".to_owned()];
    let s = start_sender(Py, &relay.url(), code, &src, &files, &NO_OPTIONS);
    let (s, r) = finish(s, r, deadline);
    let all = [&s, &r];
    // p2p-copy 0.1.2 sends both as `f.txt`; which exit code it ends with depends on
    // whether it noticed the closed connection before it was done.
    assert!(
        s.code.is_some(),
        "the Python sender must end\n{}",
        report_all(&all)
    );
    assert_exit(&r, 4, &all);
    assert!(
        r.message.contains("f.txt") && r.message.contains("twice"),
        "{}",
        report_all(&all)
    );
    assert!(!out.join("f.txt").exists(), "nothing written");
}

#[test]
fn our_receiver_refuses_a_parent_directory_path_from_python() {
    let _slot = Slot::acquire();
    let scratch = Scratch::new("dotdot");
    // Run in src/sub and given `..`, p2p-copy 0.1.2 sends src's files as `../<name>`.
    let src = write_source(
        &scratch,
        "src",
        &[
            FileSpec::text("inner.txt", 100, 1),
            FileSpec::text("sub/x.txt", 10, 2),
        ],
    );
    let out = scratch.out();
    let relay = AnyRelay::start(Ours);
    let code = "interop dotdot";
    let deadline = Instant::now() + CASE_LIMIT;
    let r = start_receiver(Ours, &relay.url(), code, &out, false);
    let s = start_sender(
        Py,
        &relay.url(),
        code,
        &src.join("sub"),
        &["..".to_owned()],
        &NO_OPTIONS,
    );
    let (s, r) = finish(s, r, deadline);
    let all = [&s, &r];
    assert!(
        s.code.is_some(),
        "the Python sender must end\n{}",
        report_all(&all)
    );
    assert_exit(&r, 4, &all);
    assert!(r.message.contains("unsafe path"), "{}", report_all(&all));
    assert!(
        !scratch.path().join("inner.txt").exists(),
        "nothing written outside --out"
    );
    assert!(
        !scratch.path().join("sub").exists(),
        "nothing written outside --out"
    );
    let written = fs::read_dir(&out).map(|d| d.count()).unwrap_or(0);
    assert_eq!(written, 0, "nothing written in --out");
}

#[test]
fn our_cli_receiver_with_windows_names_refuses_each_illegal_name_from_python() {
    // Built (or found up to date) before the clock starts.
    let bin = cli_binary();
    let _slot = Slot::acquire();
    let scratch = Scratch::new("windows-names");
    let src = write_source(
        &scratch,
        "src",
        &[
            FileSpec::text("ok.txt", 100, 1),
            FileSpec::random("bad:name.txt", MIB + 3, 2),
            FileSpec::text("aux.log", 50, 3),
            FileSpec::text("dir./x", 20, 4),
        ],
    );
    let out = scratch.out();
    let relay = AnyRelay::start(Py);
    let url = relay.url();
    let deadline = Instant::now() + CASE_LIMIT;
    for (i, encrypt) in [false, true].into_iter().enumerate() {
        let out = out.join(i.to_string());
        let code = format!("interop windows-names {i}");
        let mut cmd = Command::new(&bin);
        cmd.arg("receive")
            .args(receive_args(&url, &code, &out, encrypt))
            .arg("--windows-names");
        let r = Side::process("our receiver (command line)", &mut cmd);
        let files: Vec<String> = ["ok.txt", "bad:name.txt", "aux.log", "dir."]
            .map(str::to_owned)
            .into();
        let mode = Mode {
            encrypt,
            ..NO_OPTIONS
        };
        let s = start_sender(Py, &url, &code, &src, &files, &mode);
        let (s, r) = finish(s, r, deadline);
        let all = [&s, &r];
        // p2p-copy 0.1.2 cannot be told: it sent every file in full.
        assert_exit(&s, 0, &all);
        assert_exit(&r, 8, &all);
        for line in [
            r#"aux.log: name not allowed on the receiver: "aux.log": a name Windows reserves for a device"#,
            r#"bad:name.txt: name not allowed on the receiver: "bad:name.txt": Windows does not allow ':' in a name"#,
            r#"dir./x: name not allowed on the receiver: "dir.": Windows does not allow a name to end with a dot"#,
        ] {
            assert!(r.message.contains(line), "{line}\n{}", report_all(&all));
        }
        let written: Vec<String> = fs::read_dir(&out)
            .expect("the output directory")
            .map(|e| {
                e.expect("an entry")
                    .file_name()
                    .to_string_lossy()
                    .into_owned()
            })
            .collect();
        assert_eq!(
            written,
            ["ok.txt"],
            "nothing else, no partial file, no folder"
        );
        assert_eq!(
            fs::read(out.join("ok.txt")).unwrap(),
            fs::read(src.join("ok.txt")).unwrap()
        );
    }
    relay.assert_running();
}

// ---------------------------------------------------------------------------------------
// Our command line with the Python tool's arguments
// ---------------------------------------------------------------------------------------

#[test]
fn our_cli_relay_and_sender_take_python_arguments_to_a_python_receiver() {
    // Built (or found up to date) before the clock starts.
    let bin = cli_binary();
    let _slot = Slot::acquire();
    let scratch = Scratch::new("cli-send");
    let out = scratch.out();
    let data = Data::Small.dir();
    let files = Data::Small.args();
    prefill_for_resume(&out, &data, PartialAt::FinalName);
    let mode = Mode {
        encrypt: true,
        compress: Some(CompressMode::On),
        resume: Some(PartialAt::FinalName),
        ..NO_OPTIONS
    };
    let relay = AnyRelay::start_cli(&bin);
    let url = relay.url();
    let code = "interop cli-send";
    let deadline = Instant::now() + CASE_LIMIT;
    let r = start_receiver(Py, &url, code, &out, true);
    let mut cmd = Command::new(&bin);
    cmd.arg("send")
        .args(send_args(&url, code, &files, &mode))
        .current_dir(&data);
    let s = Side::process("our sender (command line)", &mut cmd);
    let (s, r) = finish(s, r, deadline);
    relay.assert_running();
    let all = [&s, &r];
    assert_exit(&s, 0, &all);
    assert_exit(&r, 0, &all);
    assert!(
        s.message.contains("delivery not confirmed") && s.message.contains("0.1.x"),
        "our sender must say that a 0.1.x receiver cannot confirm delivery\n{}",
        report_all(&all)
    );
    tree::assert_same_tree(&data, &out);
    let mtime = fs::metadata(out.join(COMPLETE))
        .and_then(|m| m.modified())
        .expect("mtime");
    assert_eq!(
        mtime,
        old_time(),
        "{COMPLETE} was skipped\n{}",
        report_all(&all)
    );
}

#[test]
fn our_cli_receiver_takes_python_arguments_from_a_python_sender_with_a_parallel_code() {
    // Built (or found up to date) before the clock starts.
    let bin = cli_binary();
    let _slot = Slot::acquire();
    let scratch = Scratch::new("cli-receive");
    let out = scratch.out();
    let data = Data::Small.dir();
    let files = Data::Small.args();
    let mode = Mode {
        encrypt: true,
        compress: Some(CompressMode::Off),
        ..NO_OPTIONS
    };
    let relay = AnyRelay::start(Py);
    let url = relay.url();
    let code = "n=3=ninterop cli-receive";
    let deadline = Instant::now() + CASE_LIMIT;
    let mut cmd = Command::new(&bin);
    cmd.arg("receive")
        .args(receive_args(&url, code, &out, true));
    let r = Side::process("our receiver (command line)", &mut cmd);
    let s = start_sender(Py, &url, code, &data, &files, &mode);
    let (s, r) = finish(s, r, deadline);
    relay.assert_running();
    let all = [&s, &r];
    assert_exit(&s, 0, &all);
    assert_exit(&r, 0, &all);
    tree::assert_same_tree(&data, &out);
}

/// A TCP tap between a client and a relay: forwards both ways and keeps what the client
/// sent.
fn tap(upstream: std::net::SocketAddr) -> (String, std::sync::Arc<Mutex<Vec<u8>>>) {
    use std::io::{Read, Write};
    use std::net::{TcpListener, TcpStream};
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind the tap");
    let url = format!("ws://{}", listener.local_addr().expect("tap address"));
    let kept = std::sync::Arc::new(Mutex::new(Vec::new()));
    let sent = kept.clone();
    thread::spawn(move || {
        for client in listener.incoming().flatten() {
            let Ok(relay) = TcpStream::connect(upstream) else {
                continue;
            };
            let (mut from_client, mut to_client) = (client.try_clone().unwrap(), client);
            let (mut to_relay, mut from_relay) = (relay.try_clone().unwrap(), relay);
            let sent = sent.clone();
            thread::spawn(move || {
                let mut buf = [0u8; 64 * 1024];
                while let Ok(n @ 1..) = from_client.read(&mut buf) {
                    sent.lock().unwrap().extend_from_slice(&buf[..n]);
                    if to_relay.write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
                let _ = to_relay.shutdown(std::net::Shutdown::Write);
            });
            thread::spawn(move || {
                let _ = std::io::copy(&mut from_relay, &mut to_client);
                let _ = to_client.shutdown(std::net::Shutdown::Write);
            });
        }
    });
    (url, kept)
}

/// The text messages in a client's side of a WebSocket connection (after the HTTP
/// upgrade; client frames are masked, unfragmented here).
fn client_texts(bytes: &[u8]) -> Vec<String> {
    let start = bytes
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("an HTTP upgrade")
        + 4;
    let mut rest = &bytes[start..];
    let mut texts = Vec::new();
    while rest.len() >= 2 {
        let opcode = rest[0] & 0x0f;
        let (len, mut at) = match rest[1] & 0x7f {
            126 => (usize::from(u16::from_be_bytes([rest[2], rest[3]])), 4),
            127 => (
                usize::try_from(u64::from_be_bytes(rest[2..10].try_into().unwrap())).unwrap(),
                10,
            ),
            n => (usize::from(n), 2),
        };
        let mask = if rest[1] & 0x80 != 0 {
            let m = [rest[at], rest[at + 1], rest[at + 2], rest[at + 3]];
            at += 4;
            m
        } else {
            [0; 4]
        };
        if rest.len() < at + len {
            break;
        }
        let payload: Vec<u8> = rest[at..at + len]
            .iter()
            .enumerate()
            .map(|(i, b)| b ^ mask[i % 4])
            .collect();
        if opcode == 1 {
            texts.push(String::from_utf8(payload).expect("text frames are UTF-8"));
        }
        rest = &rest[at + len..];
    }
    texts
}

#[test]
fn our_sender_gives_a_python_receiver_the_v1_manifest_and_no_metadata() {
    use std::os::unix::fs::PermissionsExt;
    let bin = cli_binary();
    let _slot = Slot::acquire();
    let scratch = Scratch::new("metadata");
    let out = scratch.out();
    let src = scratch.path().join("src");
    fs::create_dir_all(src.join("tree/empty")).unwrap();
    fs::write(src.join("tree/run.sh"), "#!/bin/sh\necho hi\n").unwrap();
    fs::set_permissions(src.join("tree/run.sh"), fs::Permissions::from_mode(0o755)).unwrap();
    let relay = AnyRelay::start(Py);
    let url = relay.url();
    let upstream = url
        .trim_start_matches("ws://")
        .parse()
        .expect("the Python relay's address");
    let (tapped, sent) = tap(upstream);
    let code = "interop metadata";
    let deadline = Instant::now() + CASE_LIMIT;
    let r = start_receiver(Py, &url, code, &out, false);
    let mut cmd = Command::new(&bin);
    cmd.args(["send", &tapped, code, "tree", "--relay-only"])
        .current_dir(&src);
    let s = Side::process("our sender (command line)", &mut cmd);
    let (s, r) = finish(s, r, deadline);
    let all = [&s, &r];
    assert_exit(&s, 0, &all);
    assert_exit(&r, 0, &all);
    let texts = client_texts(&sent.lock().unwrap());
    let manifest = texts
        .iter()
        .find(|t| t.starts_with(r#"{"type":"manifest""#))
        .unwrap_or_else(|| panic!("no manifest in {texts:?}"));
    // The v1 manifest, byte for byte, with only the offer of extensions after it.
    let v1 = r#"{"type":"manifest","resume":false,"entries":[{"path":"tree/run.sh","size":18}]"#;
    assert!(manifest.starts_with(v1), "{manifest}");
    let extra: serde_json::Value = serde_json::from_str(manifest).unwrap();
    let keys: BTreeSet<&str> = extra
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    assert!(
        keys.is_subset(&BTreeSet::from([
            "type",
            "resume",
            "entries",
            "extensions",
            "reconnect"
        ])),
        "{manifest}"
    );
    assert!(
        !texts.iter().any(|t| t.contains(r#""type":"metadata""#)),
        "metadata went to a receiver that never asked for it: {texts:?}"
    );
    // The Python receiver keeps what it always did: its default mode, no empty folder.
    let got = fs::metadata(out.join("tree/run.sh")).unwrap();
    assert_eq!(
        got.permissions().mode() & 0o111,
        0,
        "{:o}",
        got.permissions().mode()
    );
    assert!(!out.join("tree/empty").exists());
}
