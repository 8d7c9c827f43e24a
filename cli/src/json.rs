//! `--json`: one JSON object per line on stdout, for scripts (the schema is in
//! docs/JSON.md). Every object starts with `"v":1` and `"event"`; human text then goes
//! to stderr only.

use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};

use serde_json::{json, Value};

/// The schema's version, in every object.
pub const VERSION: u64 = 1;

static ON: AtomicBool = AtomicBool::new(false);

/// Turn JSON output on for the rest of the process.
pub fn enable() {
    ON.store(true, Ordering::Relaxed);
}

/// Whether `--json` was given.
pub fn enabled() -> bool {
    ON.load(Ordering::Relaxed)
}

/// Whether the raw command line asks for JSON, for errors found before it could be
/// parsed.
pub fn asked_on_command_line() -> bool {
    std::env::args_os().skip(1).any(|a| a == "--json")
}

/// The line of one event: `{"v":1,"event":NAME,…fields}`, keys in the order given.
pub fn line(event: &str, fields: &[(&str, Value)]) -> String {
    let mut out = format!("{{\"v\":{VERSION},\"event\":{}", json!(event));
    for (key, value) in fields {
        out.push(',');
        out.push_str(&json!(key).to_string());
        out.push(':');
        out.push_str(&value.to_string());
    }
    out.push('}');
    out
}

/// Print one event on stdout, when JSON output is on. A closed stdout is not worth a
/// second error.
pub fn emit(event: &str, fields: &[(&str, Value)]) {
    if !enabled() {
        return;
    }
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{}", line(event, fields));
    let _ = out.flush();
}

/// The `error` event: the message (as on stderr, without "error: ") and the exit code.
pub fn error(message: &str, exit: u8) {
    emit(
        "error",
        &[("message", json!(message)), ("exit", json!(exit))],
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_line_starts_with_the_version_and_the_event() {
        let l = line("file_done", &[("path", json!("a\"b")), ("size", json!(3))]);
        assert_eq!(l, r#"{"v":1,"event":"file_done","path":"a\"b","size":3}"#);
        let parsed: Value = serde_json::from_str(&l).unwrap();
        assert_eq!(parsed["path"], "a\"b");
    }
}
