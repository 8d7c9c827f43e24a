//! The receiver's question before a transfer: what is coming, and `Accept? [y/N]`.

use std::io::{BufRead, IsTerminal, Write};

use indicatif::BinaryBytes;
use p2p_copy_core::path::escape;

use crate::backend::TransferOffer;

/// Top-level names shown before the rest is summed up.
const NAMES_SHOWN: usize = 10;
/// Existing files named before the rest is counted.
const EXISTING_SHOWN: usize = 5;

/// Whether `receive` asks: on a terminal (stdin), unless `--yes`.
pub fn wanted(yes: bool) -> bool {
    !yes && std::io::stdin().is_terminal()
}

/// What the user is shown: file count, total size, the top-level names, and which
/// existing files would be replaced (or kept, with `--no-clobber`).
pub fn describe(offer: &TransferOffer, keep_existing: bool) -> String {
    let o = &offer.offer;
    let mut text = format!(
        "the sender offers {} {} ({}):\n",
        o.files(),
        plural(o.files(), "file", "files"),
        BinaryBytes(o.bytes())
    );
    let top = o.top_level();
    for t in top.iter().take(NAMES_SHOWN) {
        let what = if t.folder {
            format!(
                "{}/  ({} {}, {})",
                escape(&t.name),
                t.files,
                plural(t.files, "file", "files"),
                BinaryBytes(t.bytes)
            )
        } else {
            format!("{}  ({})", escape(&t.name), BinaryBytes(t.bytes))
        };
        text.push_str(&format!("  {what}\n"));
    }
    if top.len() > NAMES_SHOWN {
        text.push_str(&format!("  … and {} more\n", top.len() - NAMES_SHOWN));
    }
    if !offer.existing.is_empty() {
        let n = offer.existing.len();
        let mut names: Vec<String> = offer
            .existing
            .iter()
            .take(EXISTING_SHOWN)
            .map(|p| escape(p))
            .collect();
        if n > EXISTING_SHOWN {
            names.push(format!("… and {} more", n - EXISTING_SHOWN));
        }
        let fate = if keep_existing {
            "already there and would be kept (--no-clobber)"
        } else {
            "already there and would be replaced"
        };
        text.push_str(&format!(
            "{n} {} {fate}: {}\n",
            plural(n, "file is", "files are"),
            names.join(", ")
        ));
    }
    text
}

/// Show the offer on stderr and read the answer from the terminal: `y` or `yes`
/// accepts, anything else (an empty line, end of input) declines.
pub fn ask(offer: &TransferOffer, keep_existing: bool) -> bool {
    let mut err = std::io::stderr().lock();
    let _ = write!(err, "{}Accept? [y/N] ", describe(offer, keep_existing));
    let _ = err.flush();
    drop(err);
    let mut line = String::new();
    if std::io::stdin().lock().read_line(&mut line).is_err() {
        return false;
    }
    matches!(line.trim().to_ascii_lowercase().as_str(), "y" | "yes")
}

fn plural<'a>(n: usize, one: &'a str, many: &'a str) -> &'a str {
    if n == 1 {
        one
    } else {
        many
    }
}
