//! Log records of the runtime (connections, pairing, retries) as plain lines on stderr.

use log::{Level, LevelFilter, Log, Metadata, Record};

struct StderrLog {
    /// Most detailed level shown for p2p-copy's own crates.
    ours: LevelFilter,
}

impl Log for StderrLog {
    fn enabled(&self, m: &Metadata<'_>) -> bool {
        // Dependencies (TLS, WebSocket) only get to speak up for real problems.
        let limit = if m.target().starts_with("p2p_copy") {
            self.ours
        } else {
            LevelFilter::Warn.min(self.ours)
        };
        m.level() <= limit
    }

    fn log(&self, r: &Record<'_>) {
        if self.enabled(r.metadata()) {
            let level = match r.level() {
                Level::Error => "error",
                Level::Warn => "warning",
                Level::Info => "info",
                Level::Debug => "debug",
                Level::Trace => "trace",
            };
            eprintln!("{level}: {}", r.args());
        }
    }

    fn flush(&self) {}
}

/// Show p2p-copy's log records up to `level` on stderr.
pub fn init(level: LevelFilter) {
    let logger = Box::leak(Box::new(StderrLog { ours: level }));
    if log::set_logger(logger).is_ok() {
        log::set_max_level(level);
    }
}
