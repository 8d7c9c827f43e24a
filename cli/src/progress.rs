//! Showing a transfer as it goes: bars (per file and total: bytes, rate, ETA) on a
//! terminal, a plain line every few seconds otherwise, nothing with `--quiet`, JSON
//! events on stdout with `--json` (see [`crate::json`]).
//!
//! Totals add up over the parallel sessions of an `n=<N>=n` code: each session reports
//! its own manifest and files.

use std::collections::HashMap;
use std::io::{IsTerminal, Write};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use indicatif::{
    BinaryBytes, HumanCount, HumanDuration, MultiProgress, ProgressBar, ProgressDrawTarget,
    ProgressStyle,
};
use p2p_copy_core::path::escape;
use p2p_copy_core::{Event, PathEvent};
use serde_json::{json, Value};

use crate::backend::{SessionEvent, Summary};
use crate::ctrl_echo::QuietCtrlEcho;
use crate::json;

/// How often a plain progress line is printed when stderr is not a terminal.
const LINE_EVERY: Duration = Duration::from_secs(2);

/// At most this many `progress` events a second with `--json`.
const JSON_PROGRESS_EVERY: Duration = Duration::from_millis(250);

/// Columns for a file's name in its bar, so that the bar fits in 80 columns.
const NAME_WIDTH: usize = 34;

/// The total: a bar as wide as the terminal leaves, then bytes, files, rate and ETA in
/// fields of fixed width (the widest each can get), so that on an 80-column terminal the
/// line fits with room for a bar and does not jitter as the numbers change.
const TOTAL_TEMPLATE: &str = "[{wide_bar}] {binary_bytes:>11}/{binary_total_bytes:<11}{msg} \
                              {binary_bytes_per_sec:>13} ETA {eta:>3}";

/// A file: its name shortened to [`NAME_WIDTH`], bytes, rate and ETA; 78 columns.
const FILE_TEMPLATE: &str = "  {msg:34!} {binary_bytes:>11}/{binary_total_bytes:<11} \
                             {binary_bytes_per_sec:>13} {eta:>3}";

/// Which side this process is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// `send`.
    Send,
    /// `receive`.
    Receive,
}

impl Role {
    fn peer(self) -> &'static str {
        match self {
            Role::Send => "receiver",
            Role::Receive => "sender",
        }
    }

    fn verb(self) -> &'static str {
        match self {
            Role::Send => "sending",
            Role::Receive => "receiving",
        }
    }

    fn past(self) -> &'static str {
        match self {
            Role::Send => "sent",
            Role::Receive => "received",
        }
    }

    /// The role's name in JSON events.
    pub fn name(self) -> &'static str {
        match self {
            Role::Send => "send",
            Role::Receive => "receive",
        }
    }
}

/// How much to show.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Style {
    /// Errors only.
    Quiet,
    /// Progress bars (stderr is a terminal).
    Bars,
    /// Plain periodic lines (stderr is a file or a pipe).
    Lines,
    /// JSON events on stdout, nothing but errors on stderr (`--json`).
    Json,
}

impl Style {
    /// JSON with `--json`, else bars on a terminal, lines elsewhere, nothing when quiet.
    pub fn detect(quiet: bool) -> Style {
        if json::enabled() {
            Style::Json
        } else if quiet {
            Style::Quiet
        } else if std::io::stderr().is_terminal() {
            Style::Bars
        } else {
            Style::Lines
        }
    }
}

/// The progress display of one transfer; clones share it.
#[derive(Clone)]
pub struct Progress(Arc<Mutex<Display>>);

struct Display {
    role: Role,
    style: Style,
    verbose: bool,
    multi: MultiProgress,
    /// While bars are drawn, Ctrl-C must not echo as "^C" (see [`QuietCtrlEcho`]).
    quiet_echo: Option<QuietCtrlEcho>,
    waiting: Option<ProgressBar>,
    total: Option<ProgressBar>,
    /// The file each session is moving now.
    files: HashMap<usize, ProgressBar>,
    paired: bool,
    /// Bytes this run moves: manifest sizes minus what the peer already has.
    to_move: u64,
    /// Files in the manifests, and those done or skipped so far.
    files_total: usize,
    files_done: usize,
    moved: u64,
    /// When the first file started, for the average rate.
    first_file: Option<Instant>,
    last_line: Instant,
    /// With `--json`: each session's current file (name and size), for `progress`.
    current: HashMap<usize, (String, u64)>,
    /// With `--json`: when the last `progress` event went out.
    last_json: Option<Instant>,
}

impl Progress {
    /// A display for `role`; says that it waits for the peer.
    pub fn new(role: Role, style: Style, verbose: bool) -> Progress {
        let target = match style {
            Style::Bars => ProgressDrawTarget::stderr(),
            Style::Lines | Style::Quiet | Style::Json => ProgressDrawTarget::hidden(),
        };
        let p = Progress::drawing_to(role, style, verbose, target);
        if style == Style::Bars {
            lock(&p.0).quiet_echo = Some(QuietCtrlEcho::on_stderr());
        }
        p
    }

    fn drawing_to(role: Role, style: Style, verbose: bool, target: ProgressDrawTarget) -> Progress {
        let multi = MultiProgress::with_draw_target(target);
        let waiting_msg = format!("waiting for the {}…", role.peer());
        let waiting = match style {
            Style::Bars => {
                let pb = multi.add(ProgressBar::new_spinner().with_message(waiting_msg));
                pb.enable_steady_tick(Duration::from_millis(120));
                Some(pb)
            }
            Style::Lines => {
                eprintln!("{waiting_msg}");
                None
            }
            Style::Quiet | Style::Json => None,
        };
        Progress(Arc::new(Mutex::new(Display {
            role,
            style,
            verbose,
            multi,
            quiet_echo: None,
            waiting,
            total: None,
            files: HashMap::new(),
            paired: false,
            to_move: 0,
            files_total: 0,
            files_done: 0,
            moved: 0,
            first_file: None,
            last_line: Instant::now(),
            current: HashMap::new(),
            last_json: None,
        })))
    }

    /// The callback to hand to `send` or `receive`.
    pub fn callback(&self) -> impl FnMut(SessionEvent) + Send + 'static {
        let shared = self.0.clone();
        move |ev| lock(&shared).on_event(ev)
    }

    /// Remove the bars so that what follows prints on a clean line.
    pub fn finish(&self) {
        let mut d = lock(&self.0);
        if let Some(pb) = d.waiting.take() {
            pb.finish_and_clear();
        }
        for (_, pb) in d.files.drain() {
            pb.finish_and_clear();
        }
        if let Some(pb) = d.total.take() {
            pb.finish_and_clear();
        }
        let _ = d.multi.clear();
        d.quiet_echo = None;
    }

    /// Run `f` (a question on the terminal) with the bars out of its way.
    pub fn suspend<R>(&self, f: impl FnOnce() -> R) -> R {
        let multi = lock(&self.0).multi.clone();
        multi.suspend(f)
    }

    /// Whether the peer showed up (the sender was paired, or the receiver got the
    /// manifest), even when nothing is shown.
    pub fn paired(&self) -> bool {
        lock(&self.0).paired
    }

    /// Whether only errors are shown on stderr (`--quiet`, or `--json`).
    pub fn is_quiet(&self) -> bool {
        matches!(lock(&self.0).style, Style::Quiet | Style::Json)
    }

    /// Print the one-line summary of a finished transfer, or with `--json` the
    /// `summary` event, which carries the exit code `exit` the transfer ends with.
    pub fn summary(&self, s: &Summary, exit: u8) {
        let d = lock(&self.0);
        match d.style {
            Style::Quiet => {}
            Style::Json => json::emit("summary", &summary_fields(s, exit)),
            Style::Bars | Style::Lines => eprintln!("{}", summary_line(d.role, s)),
        }
    }
}

/// The fields of the `summary` event.
fn summary_fields(s: &Summary, exit: u8) -> Vec<(&'static str, Value)> {
    let (secs, rate) = timed(s);
    let pairs = |list: &[(String, String)]| -> Value {
        list.iter()
            .map(|(path, reason)| json!({"path": path, "reason": reason}))
            .collect()
    };
    vec![
        ("files", json!(s.files)),
        ("bytes", json!(s.bytes)),
        ("skipped", json!(s.skipped)),
        ("seconds", json!(round3(secs))),
        ("elapsed_seconds", json!(round3(s.elapsed.as_secs_f64()))),
        ("bytes_per_second", json!(rate.unwrap_or(0))),
        ("path", json!(s.path.to_string())),
        ("confirmed", json!(s.confirmed)),
        ("unconfirmed", json!(s.unconfirmed)),
        ("not_delivered", pairs(&s.not_delivered)),
        ("excluded", pairs(&s.excluded)),
        ("exit", json!(exit)),
    ]
}

/// The seconds a transfer's rate is computed over (from pairing: time spent waiting
/// for the peer says nothing about the link), and the rate in bytes a second.
fn timed(s: &Summary) -> (f64, Option<u64>) {
    let time = match s.transfer_time {
        t if t.is_zero() => s.elapsed,
        t => t,
    };
    let secs = time.as_secs_f64();
    (secs, (secs > 0.0).then(|| (s.bytes as f64 / secs) as u64))
}

/// Seconds to the millisecond, so that the numbers stay short.
fn round3(secs: f64) -> f64 {
    (secs * 1000.0).round() / 1000.0
}

/// "sent 3 files (1.00 MiB) in 2.0 s, 512.00 KiB/s", timed from pairing: time spent
/// waiting for the peer says nothing about the link.
fn summary_line(role: Role, s: &Summary) -> String {
    let (secs, rate) = timed(s);
    let rate = rate.map_or_else(String::new, |r| format!(", {}/s", BinaryBytes(r)));
    let skipped = match s.skipped {
        0 => String::new(),
        n => format!("; {n} already there, skipped"),
    };
    format!(
        "{} {} {} ({}) in {:.1} s{rate}{skipped}",
        role.past(),
        s.files,
        if s.files == 1 { "file" } else { "files" },
        BinaryBytes(s.bytes),
        secs,
    )
}

fn lock(m: &Mutex<Display>) -> MutexGuard<'_, Display> {
    // A panic while drawing must not hide the transfer's own result.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Display {
    fn on_event(&mut self, ev: SessionEvent) {
        if let Event::Text { path, text } = &ev.event {
            // The payload, not a message: shown even with --quiet.
            self.show_text(ev.session, path, text);
        }
        if self.style == Style::Quiet {
            self.paired |= matches!(ev.event, Event::Paired | Event::Manifest { .. });
            return;
        }
        let session = ev.session;
        let for_json = (self.style == Style::Json).then(|| ev.event.clone());
        self.count_and_draw(ev);
        if let Some(event) = for_json {
            self.json_event(session, event);
        }
    }

    /// Keep the counts and draw the bars or lines.
    fn count_and_draw(&mut self, ev: SessionEvent) {
        let session = ev.session;
        match ev.event {
            Event::Paired => self.paired(),
            Event::Manifest { files, bytes } => {
                self.paired();
                self.to_move += bytes;
                self.files_total += files;
                if self.verbose {
                    self.say(format!(
                        "{} {files} files ({}) on connection {session}",
                        self.role.verb(),
                        BinaryBytes(bytes)
                    ));
                }
                self.update_total();
            }
            Event::FileStarted {
                path,
                size,
                append_from,
                ..
            } => {
                self.first_file.get_or_insert_with(Instant::now);
                self.to_move = self.to_move.saturating_sub(append_from);
                let name = escape(&path);
                if self.verbose {
                    let from = match append_from {
                        0 => String::new(),
                        n => format!(", resuming at {}", BinaryBytes(n)),
                    };
                    self.say(format!(
                        "{} {name} ({}{from})",
                        self.role.verb(),
                        BinaryBytes(size)
                    ));
                }
                if self.style == Style::Bars {
                    let pb = ProgressBar::new(size)
                        .with_style(file_style())
                        .with_message(shorten_middle(&name, NAME_WIDTH))
                        .with_position(append_from);
                    pb.reset_eta();
                    let pb = match &self.total {
                        Some(total) => self.multi.insert_before(total, pb),
                        None => self.multi.add(pb),
                    };
                    if let Some(old) = self.files.insert(session, pb) {
                        old.finish_and_clear();
                    }
                }
                self.update_total();
            }
            Event::Progress { delta, file_bytes } => {
                self.moved += delta;
                if let Some(pb) = self.files.get(&session) {
                    pb.set_position(file_bytes);
                }
                self.update_total();
                self.maybe_line();
            }
            Event::CompressLevel { level } if self.verbose => {
                self.say(format!("compressing at zstd level {level}"));
            }
            Event::FileSkipped { path, size } => {
                self.to_move = self.to_move.saturating_sub(size);
                self.files_done += 1;
                if self.verbose {
                    self.say(format!("{} is already there, skipped", escape(&path)));
                }
                self.update_total();
            }
            Event::Path(p) => {
                let line = match p {
                    PathEvent::Direct {
                        addr,
                        punched,
                        setup,
                    } => format!(
                        "direct connection to the {} at {addr} ({}), up after {:.2} s",
                        self.role.peer(),
                        if punched { "hole-punched" } else { "LAN" },
                        setup.as_secs_f64()
                    ),
                    PathEvent::BackToRelay { reason } => format!(
                        "the direct connection failed ({}); continuing through the relay",
                        escape(&reason)
                    ),
                    PathEvent::Relay { reason } => {
                        format!("staying on the relay: {}", escape(&reason))
                    }
                };
                // Only once per transfer for parallel codes, except with -v.
                if self.verbose || session == 0 {
                    self.say(line);
                }
            }
            Event::FileKept { path } => {
                // Shown even without -v: the user asked for it and should see it.
                self.say(format!(
                    "kept {}, which differs from the sender's (--no-clobber); the received copy was dropped",
                    escape(&path)
                ));
            }
            Event::AwaitingConsent if session == 0 => {
                self.say("waiting for the receiver to accept the transfer…".to_owned());
            }
            Event::MetadataNotKept(notes) => {
                for (path, why) in &notes.shown {
                    self.say(format!(
                        "metadata not kept for {}: {}",
                        escape(path),
                        escape(why)
                    ));
                }
                if notes.more > 0 {
                    self.say(format!("metadata not kept for {} more paths", notes.more));
                }
            }
            Event::Reconnecting {
                attempt,
                of,
                after,
                reason,
            } => {
                if let Some(pb) = self.files.remove(&session) {
                    pb.finish_and_clear();
                }
                // The next attempt's manifest counts the files again, and its resume
                // points say what is left.
                self.to_move = self.moved;
                self.files_total = 0;
                self.files_done = 0;
                self.update_total();
                self.say(format!(
                    "connection lost, reconnecting ({attempt}/{of})… in {:.1} s ({})",
                    after.as_secs_f64(),
                    escape(&reason)
                ));
            }
            Event::FileDone { path, .. } => {
                self.files_done += 1;
                if let Some(pb) = self.files.remove(&session) {
                    pb.finish_and_clear();
                }
                self.update_total();
                if self.verbose {
                    self.say(format!("done {}", escape(&path)));
                }
            }
            _ => {}
        }
    }

    /// With `--json`: the event as a line on stdout, `progress` at most every
    /// [`JSON_PROGRESS_EVERY`]. Counts are taken after [`Display::count_and_draw`].
    fn json_event(&mut self, session: usize, event: Event) {
        let s = ("session", json!(session));
        match event {
            Event::Paired => json::emit("paired", &[s]),
            Event::Manifest { files, bytes } => json::emit(
                "manifest",
                &[s, ("files", json!(files)), ("bytes", json!(bytes))],
            ),
            Event::FileStarted {
                path,
                size,
                append_from,
                compression,
            } => {
                json::emit(
                    "file_started",
                    &[
                        s,
                        ("path", json!(path)),
                        ("size", json!(size)),
                        ("append_from", json!(append_from)),
                        ("compression", json!(compression)),
                    ],
                );
                self.current.insert(session, (path, size));
            }
            Event::Progress { file_bytes, .. } => {
                let now = Instant::now();
                if self
                    .last_json
                    .is_some_and(|t| now.duration_since(t) < JSON_PROGRESS_EVERY)
                {
                    return;
                }
                self.last_json = Some(now);
                let (path, size) = self.current.get(&session).cloned().unwrap_or_default();
                json::emit(
                    "progress",
                    &[
                        s,
                        ("path", json!(path)),
                        ("file_bytes", json!(file_bytes)),
                        ("file_size", json!(size)),
                        ("bytes", json!(self.moved)),
                        ("total_bytes", json!(self.to_move.max(self.moved))),
                        ("files_done", json!(self.files_done)),
                        ("files_total", json!(self.files_total)),
                    ],
                );
            }
            Event::FileDone { path, size } => {
                self.current.remove(&session);
                json::emit(
                    "file_done",
                    &[s, ("path", json!(path)), ("size", json!(size))],
                );
            }
            Event::FileSkipped { path, size } => json::emit(
                "file_skipped",
                &[s, ("path", json!(path)), ("size", json!(size))],
            ),
            Event::FileNotDelivered { path, reason } => json::emit(
                "file_not_delivered",
                &[s, ("path", json!(path)), ("reason", json!(reason))],
            ),
            Event::Delivery {
                confirmed,
                delivered,
            } => json::emit(
                "delivery",
                &[
                    s,
                    ("confirmed", json!(confirmed)),
                    ("delivered", json!(delivered)),
                ],
            ),
            Event::Path(p) => {
                let fields = match p {
                    PathEvent::Direct {
                        addr,
                        punched,
                        setup,
                    } => vec![
                        s,
                        ("path", json!("direct")),
                        ("addr", json!(addr.to_string())),
                        ("punched", json!(punched)),
                        ("setup_seconds", json!(round3(setup.as_secs_f64()))),
                    ],
                    PathEvent::Relay { reason } => {
                        vec![s, ("path", json!("relay")), ("reason", json!(reason))]
                    }
                    PathEvent::BackToRelay { reason } => vec![
                        s,
                        ("path", json!("back_to_relay")),
                        ("reason", json!(reason)),
                    ],
                };
                json::emit("path", &fields);
            }
            Event::FileKept { path } => json::emit("file_kept", &[s, ("path", json!(path))]),
            Event::MetadataNotKept(notes) => json::emit(
                "metadata_not_kept",
                &[
                    s,
                    (
                        "paths",
                        json!(notes
                            .shown
                            .iter()
                            .map(|(path, reason)| json!({"path": path, "reason": reason}))
                            .collect::<Vec<_>>()),
                    ),
                    ("more", json!(notes.more)),
                ],
            ),
            Event::Reconnecting {
                attempt,
                of,
                after,
                reason,
            } => json::emit(
                "reconnecting",
                &[
                    s,
                    ("attempt", json!(attempt)),
                    ("of", json!(of)),
                    ("after_seconds", json!(round3(after.as_secs_f64()))),
                    ("reason", json!(reason)),
                ],
            ),
            _ => {}
        }
    }

    /// The first sign of a peer: replace the spinner with the total bar.
    fn paired(&mut self) {
        if self.paired {
            return;
        }
        self.paired = true;
        if let Some(pb) = self.waiting.take() {
            pb.finish_and_clear();
        }
        match self.style {
            Style::Bars => {
                let pb = self
                    .multi
                    .add(ProgressBar::new(0).with_style(total_style()));
                self.total = Some(pb);
            }
            Style::Lines => eprintln!("paired with the {}", self.role.peer()),
            Style::Quiet | Style::Json => {}
        }
    }

    fn update_total(&self) {
        if let Some(pb) = &self.total {
            pb.set_length(self.to_move.max(self.moved));
            pb.set_position(self.moved);
            pb.set_message(file_count(self.files_done, self.files_total));
        }
    }

    /// A line above the bars, or on its own.
    /// A received text (`send --text`): on stdout as it is, with a line break after it
    /// unless it ends with one; with `--json` the `text` event instead.
    fn show_text(&self, session: usize, path: &str, text: &str) {
        if self.style == Style::Json {
            json::emit(
                "text",
                &[
                    ("session", json!(session)),
                    ("path", json!(path)),
                    ("text", json!(text)),
                ],
            );
            return;
        }
        let print = || {
            let mut out = std::io::stdout().lock();
            let newline = if text.ends_with('\n') { "" } else { "\n" };
            let _ = write!(out, "{text}{newline}");
            let _ = out.flush();
        };
        match self.style {
            Style::Bars => self.multi.suspend(print),
            _ => print(),
        }
    }

    fn say(&self, line: String) {
        match self.style {
            Style::Bars => {
                let _ = self.multi.println(line);
            }
            Style::Lines => eprintln!("{line}"),
            Style::Quiet | Style::Json => {}
        }
    }

    /// In plain-line mode, at most one line per [`LINE_EVERY`]: done, total, rate, ETA.
    fn maybe_line(&mut self) {
        if self.style != Style::Lines || self.last_line.elapsed() < LINE_EVERY {
            return;
        }
        self.last_line = Instant::now();
        let Some(start) = self.first_file else { return };
        let secs = start.elapsed().as_secs_f64().max(1e-3);
        let rate = self.moved as f64 / secs;
        let left = self.to_move.saturating_sub(self.moved);
        let pct = if self.to_move > 0 {
            self.moved as f64 * 100.0 / self.to_move as f64
        } else {
            100.0
        };
        let eta = if rate > 0.0 {
            HumanDuration(Duration::from_secs_f64(left as f64 / rate)).to_string()
        } else {
            "unknown".to_owned()
        };
        eprintln!(
            "{} {} / {} ({pct:.0}%), {}/s, ETA {eta}",
            self.role.verb(),
            BinaryBytes(self.moved),
            BinaryBytes(self.to_move),
            BinaryBytes(rate as u64),
        );
    }
}

fn total_style() -> ProgressStyle {
    ProgressStyle::with_template(TOTAL_TEMPLATE)
        // The template is a constant, checked by the tests below.
        .expect("valid template")
        .progress_chars("=> ")
}

fn file_style() -> ProgressStyle {
    ProgressStyle::with_template(FILE_TEMPLATE).expect("valid template")
}

/// "  1,234 / 5,000 files" beside the total bytes, for a transfer of more than one file.
fn file_count(done: usize, total: usize) -> String {
    if total <= 1 {
        return String::new();
    }
    format!(
        "  {} / {} files",
        HumanCount(done.min(total) as u64),
        HumanCount(total as u64)
    )
}

/// `name` in at most `max` characters: the start and the end with "…" between, since
/// both the directory and the extension tell files apart.
fn shorten_middle(name: &str, max: usize) -> String {
    let len = name.chars().count();
    if len <= max || max == 0 {
        return name.to_owned();
    }
    let keep = max - 1;
    let head = keep / 2;
    let tail = keep - head;
    let start: String = name.chars().take(head).collect();
    let end: String = name.chars().skip(len - tail).collect();
    format!("{start}…{end}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn templates_parse() {
        total_style();
        file_style();
    }

    fn ev(session: usize, event: Event) -> SessionEvent {
        SessionEvent { session, event }
    }

    #[test]
    fn totals_add_up_over_sessions_and_leave_out_what_the_peer_has() {
        let p = Progress::drawing_to(
            Role::Receive,
            Style::Bars,
            false,
            ProgressDrawTarget::hidden(),
        );
        let mut cb = p.callback();
        cb(ev(
            0,
            Event::Manifest {
                files: 2,
                bytes: 100,
            },
        ));
        cb(ev(
            1,
            Event::Manifest {
                files: 1,
                bytes: 50,
            },
        ));
        cb(ev(
            0,
            Event::FileSkipped {
                path: "a".into(),
                size: 30,
            },
        ));
        cb(ev(
            1,
            Event::FileStarted {
                path: "b\u{1b}[2J".into(),
                size: 50,
                append_from: 20,
                compression: p2p_copy_core::wire::Compression::None,
            },
        ));
        cb(ev(
            1,
            Event::Progress {
                delta: 30,
                file_bytes: 50,
            },
        ));
        {
            let d = lock(&p.0);
            assert_eq!((d.to_move, d.moved), (100, 30));
            let total = d.total.as_ref().expect("total bar after pairing");
            assert_eq!((total.length(), total.position()), (Some(100), 30));
            let file = &d.files[&1];
            assert_eq!(file.position(), 50);
            assert_eq!(file.message(), "b\\u{1b}[2J");
        }
        cb(ev(
            1,
            Event::FileDone {
                path: "b".into(),
                size: 50,
            },
        ));
        assert!(lock(&p.0).files.is_empty());
        p.finish();
        assert!(lock(&p.0).total.is_none());
    }

    #[test]
    fn pairing_is_tracked_even_when_quiet() {
        for style in [Style::Quiet, Style::Lines] {
            let p = Progress::drawing_to(Role::Receive, style, false, ProgressDrawTarget::hidden());
            assert!(!p.paired());
            p.callback()(ev(0, Event::Manifest { files: 1, bytes: 1 }));
            assert!(p.paired(), "{style:?}");
        }
    }

    #[test]
    fn summary_rate_leaves_out_the_wait_for_the_peer() {
        let s = Summary {
            files: 2,
            bytes: 100 << 20,
            skipped: 0,
            elapsed: Duration::from_secs(100),
            transfer_time: Duration::from_secs(10),
            ..Summary::default()
        };
        assert_eq!(
            summary_line(Role::Send, &s),
            "sent 2 files (100.00 MiB) in 10.0 s, 10.00 MiB/s"
        );
        let never_timed = Summary {
            transfer_time: Duration::ZERO,
            ..s
        };
        assert!(summary_line(Role::Receive, &never_timed).contains("in 100.0 s, 1.00 MiB/s"));
    }

    #[test]
    fn long_names_are_shortened_in_the_middle() {
        assert_eq!(shorten_middle("short.txt", 12), "short.txt");
        assert_eq!(
            shorten_middle("very-long-file-name.txt", 19),
            "very-long…-name.txt"
        );
        let long = format!("dir/{}/end-of-it.tar.gz", "x".repeat(200));
        let short = shorten_middle(&long, NAME_WIDTH);
        assert_eq!(short.chars().count(), NAME_WIDTH);
        assert!(short.starts_with("dir/xxx") && short.ends_with("end-of-it.tar.gz"));
        assert_eq!(shorten_middle("ääääääää", 5), "ää…ää");
    }

    #[test]
    fn file_count_shows_for_trees_only() {
        assert_eq!(file_count(0, 1), "");
        assert_eq!(file_count(1234, 5000), "  1,234 / 5,000 files");
    }

    /// An 80-column terminal that wraps long lines as a real one does and remembers what
    /// is on screen.
    #[derive(Debug, Clone)]
    struct Screen(Arc<Mutex<ScreenState>>);

    #[derive(Debug, Default)]
    struct ScreenState {
        rows: Vec<Vec<char>>,
        row: usize,
        col: usize,
        widest_write: usize,
    }

    const COLUMNS: usize = 80;

    impl ScreenState {
        fn put(&mut self, s: &str) {
            self.widest_write = self.widest_write.max(s.chars().count());
            for c in s.chars() {
                if c == '\r' {
                    self.col = 0;
                    continue;
                }
                if self.col == COLUMNS {
                    self.row += 1;
                    self.col = 0;
                }
                if self.rows.len() <= self.row {
                    self.rows.resize(self.row + 1, Vec::new());
                }
                let line = &mut self.rows[self.row];
                if line.len() <= self.col {
                    line.resize(self.col + 1, ' ');
                }
                line[self.col] = c;
                self.col += 1;
            }
        }
    }

    impl Screen {
        fn new() -> Screen {
            Screen(Arc::new(Mutex::new(ScreenState::default())))
        }

        fn state(&self) -> MutexGuard<'_, ScreenState> {
            self.0.lock().unwrap()
        }

        fn visible(&self) -> Vec<String> {
            self.state()
                .rows
                .iter()
                .map(|r| r.iter().collect::<String>().trim_end().to_owned())
                .filter(|r| !r.is_empty())
                .collect()
        }
    }

    impl indicatif::TermLike for Screen {
        fn width(&self) -> u16 {
            COLUMNS as u16
        }
        fn move_cursor_up(&self, n: usize) -> std::io::Result<()> {
            let mut st = self.state();
            st.row = st.row.saturating_sub(n);
            Ok(())
        }
        fn move_cursor_down(&self, n: usize) -> std::io::Result<()> {
            self.state().row += n;
            Ok(())
        }
        fn move_cursor_right(&self, n: usize) -> std::io::Result<()> {
            let mut st = self.state();
            st.col = (st.col + n).min(COLUMNS);
            Ok(())
        }
        fn move_cursor_left(&self, n: usize) -> std::io::Result<()> {
            let mut st = self.state();
            st.col = st.col.saturating_sub(n);
            Ok(())
        }
        fn write_line(&self, s: &str) -> std::io::Result<()> {
            let mut st = self.state();
            st.put(s);
            st.row += 1;
            st.col = 0;
            Ok(())
        }
        fn write_str(&self, s: &str) -> std::io::Result<()> {
            self.state().put(s);
            Ok(())
        }
        fn clear_line(&self) -> std::io::Result<()> {
            let mut st = self.state();
            let row = st.row;
            if let Some(r) = st.rows.get_mut(row) {
                r.clear();
            }
            st.col = 0;
            Ok(())
        }
        fn flush(&self) -> std::io::Result<()> {
            Ok(())
        }
    }

    /// Let indicatif's rate limit pass, so that the next change is drawn.
    fn drawn() {
        std::thread::sleep(Duration::from_millis(30));
    }

    #[test]
    fn bars_fit_in_80_columns_and_leave_nothing_behind_when_interrupted() {
        let screen = Screen::new();
        let p = Progress::drawing_to(
            Role::Receive,
            Style::Bars,
            false,
            ProgressDrawTarget::term_like_with_hz(Box::new(screen.clone()), 100),
        );
        let mut cb = p.callback();
        drawn();
        // The widest values each field can show: 1023.99 MiB of 1023.99 GiB, six-digit
        // file counts, a name far longer than the bar.
        cb(ev(
            0,
            Event::Manifest {
                files: 999_999,
                bytes: (1 << 40) - (1 << 30) / 100,
            },
        ));
        drawn();
        for i in 0..3 {
            let path = format!("small-{i}");
            cb(ev(
                0,
                Event::FileStarted {
                    path: path.clone(),
                    size: 10,
                    append_from: 0,
                    compression: p2p_copy_core::wire::Compression::None,
                },
            ));
            drawn();
            cb(ev(0, Event::FileDone { path, size: 10 }));
            drawn();
        }
        let name = format!("{}/{}.bin", "d".repeat(60), "very-long-name-".repeat(8));
        cb(ev(
            0,
            Event::FileStarted {
                path: name,
                size: (1 << 30) - (1 << 20) / 100,
                append_from: 0,
                compression: p2p_copy_core::wire::Compression::None,
            },
        ));
        for _ in 0..3 {
            drawn();
            cb(ev(
                0,
                Event::Progress {
                    delta: (1 << 30) / 4,
                    file_bytes: (1 << 30) - (1 << 20) / 100,
                },
            ));
        }
        cb(ev(
            0,
            Event::FileSkipped {
                path: "other".into(),
                size: 1,
            },
        ));
        drawn();
        cb(ev(
            0,
            Event::Progress {
                delta: 1,
                file_bytes: (1 << 30) - (1 << 20) / 100,
            },
        ));
        let shown = screen.visible();
        assert_eq!(shown.len(), 2, "a file bar and the total: {shown:#?}");
        assert!(
            screen.state().widest_write <= COLUMNS,
            "a line wraps: {shown:#?}"
        );
        let (file, total) = (&shown[0], &shown[1]);
        assert!(
            file.starts_with("  ddd")
                && file.contains("…ry-long-name-.bin 1023.99 MiB/1023.99 MiB"),
            "{file}"
        );
        assert!(
            total.starts_with("[>") && total.contains("  4 / 999,999 files"),
            "{total}"
        );
        assert!(total.contains("1023.99 GiB"), "{total}");
        assert!(
            total.split(']').next().unwrap().len() >= 8,
            "the bar keeps some width: {total}"
        );

        // Ctrl-C: the caller clears the display before it prints its message.
        p.finish();
        assert_eq!(screen.visible(), Vec::<String>::new(), "stale bars");
    }
}
