//! Showing a transfer as it goes: bars (per file and total: bytes, rate, ETA) on a
//! terminal, a plain line every few seconds otherwise, nothing with `--quiet`.
//!
//! Totals add up over the parallel sessions of an `n=<N>=n` code: each session reports
//! its own manifest and files.

use std::collections::HashMap;
use std::io::IsTerminal;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use indicatif::{
    BinaryBytes, HumanDuration, MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle,
};
use p2p_copy_core::path::escape;
use p2p_copy_core::Event;

use crate::backend::{SessionEvent, Summary};

/// How often a plain progress line is printed when stderr is not a terminal.
const LINE_EVERY: Duration = Duration::from_secs(2);

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
}

impl Style {
    /// Bars on a terminal, lines elsewhere, nothing when quiet.
    pub fn detect(quiet: bool) -> Style {
        if quiet {
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
    waiting: Option<ProgressBar>,
    total: Option<ProgressBar>,
    /// The file each session is moving now.
    files: HashMap<usize, ProgressBar>,
    paired: bool,
    /// Bytes this run moves: manifest sizes minus what the peer already has.
    to_move: u64,
    moved: u64,
    /// When the first file started, for the average rate.
    first_file: Option<Instant>,
    last_line: Instant,
}

impl Progress {
    /// A display for `role`; says that it waits for the peer.
    pub fn new(role: Role, style: Style, verbose: bool) -> Progress {
        let target = match style {
            Style::Bars => ProgressDrawTarget::stderr(),
            Style::Lines | Style::Quiet => ProgressDrawTarget::hidden(),
        };
        Progress::drawing_to(role, style, verbose, target)
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
            Style::Quiet => None,
        };
        Progress(Arc::new(Mutex::new(Display {
            role,
            style,
            verbose,
            multi,
            waiting,
            total: None,
            files: HashMap::new(),
            paired: false,
            to_move: 0,
            moved: 0,
            first_file: None,
            last_line: Instant::now(),
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
    }

    /// Whether the peer showed up (the sender was paired, or the receiver got the
    /// manifest), even when nothing is shown.
    pub fn paired(&self) -> bool {
        lock(&self.0).paired
    }

    /// The closing line of a successful transfer.
    pub fn summary(&self, s: &Summary) {
        let d = lock(&self.0);
        if d.style != Style::Quiet {
            eprintln!("{}", summary_line(d.role, s));
        }
    }
}

/// "sent 3 files (1.00 MiB) in 2.0 s, 512.00 KiB/s", timed from pairing: time spent
/// waiting for the peer says nothing about the link.
fn summary_line(role: Role, s: &Summary) -> String {
    let time = match s.transfer_time {
        t if t.is_zero() => s.elapsed,
        t => t,
    };
    let secs = time.as_secs_f64();
    let rate = if secs > 0.0 {
        format!(", {}/s", BinaryBytes((s.bytes as f64 / secs) as u64))
    } else {
        String::new()
    };
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
        if self.style == Style::Quiet {
            self.paired |= matches!(ev.event, Event::Paired | Event::Manifest { .. });
            return;
        }
        let session = ev.session;
        match ev.event {
            Event::Paired => self.paired(),
            Event::Manifest { files, bytes } => {
                self.paired();
                self.to_move += bytes;
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
                        .with_message(name)
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
            Event::FileSkipped { path, size } => {
                self.to_move = self.to_move.saturating_sub(size);
                if self.verbose {
                    self.say(format!("{} is already there, skipped", escape(&path)));
                }
                self.update_total();
            }
            Event::FileDone { path, .. } => {
                if let Some(pb) = self.files.remove(&session) {
                    pb.finish_and_clear();
                }
                if self.verbose {
                    self.say(format!("done {}", escape(&path)));
                }
            }
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
                let pb = self.multi.add(
                    ProgressBar::new(0)
                        .with_style(total_style())
                        .with_prefix(self.role.verb()),
                );
                self.total = Some(pb);
            }
            Style::Lines => eprintln!("paired with the {}", self.role.peer()),
            Style::Quiet => {}
        }
    }

    fn update_total(&self) {
        if let Some(pb) = &self.total {
            pb.set_length(self.to_move.max(self.moved));
            pb.set_position(self.moved);
        }
    }

    /// A line above the bars, or on its own.
    fn say(&self, line: String) {
        match self.style {
            Style::Bars => {
                let _ = self.multi.println(line);
            }
            Style::Lines => eprintln!("{line}"),
            Style::Quiet => {}
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
    ProgressStyle::with_template(
        "{prefix:>9} [{bar:30}] {binary_bytes}/{binary_total_bytes} {binary_bytes_per_sec} ETA {eta}",
    )
    // The template is a constant, checked by the tests below.
    .expect("valid template")
    .progress_chars("=> ")
}

fn file_style() -> ProgressStyle {
    ProgressStyle::with_template(
        "  {wide_msg} {binary_bytes}/{binary_total_bytes} {binary_bytes_per_sec} {eta}",
    )
    .expect("valid template")
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
}
