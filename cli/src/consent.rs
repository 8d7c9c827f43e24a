//! The receiver's question before a transfer: what is coming, and `Accept? [y/N]`.

use std::io::{BufRead, IsTerminal, Write};

use indicatif::BinaryBytes;
use p2p_copy_core::path::{escape, windows_name_error};

use crate::backend::TransferOffer;

/// Top-level names shown before the rest is summed up.
const NAMES_SHOWN: usize = 10;
/// Existing files (and refused names) named before the rest is counted.
const EXISTING_SHOWN: usize = 5;

/// Whether `receive` asks: on a terminal (stdin), unless `--yes`.
pub fn wanted(yes: bool) -> bool {
    !yes && std::io::stdin().is_terminal()
}

/// What the user is shown: file count, total size, the top-level names, which
/// existing files would be replaced (or kept, with `--no-clobber`), and, with
/// `windows_names`, which names cannot be stored.
pub fn describe(offer: &TransferOffer, keep_existing: bool, windows_names: bool) -> String {
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
    let fate = if keep_existing {
        "already there and would be kept (--no-clobber)"
    } else {
        "already there and would be replaced"
    };
    let existing: Vec<&str> = offer.existing.iter().map(String::as_str).collect();
    text.push_str(&some_files(&existing, fate));
    if windows_names {
        let refused: Vec<&str> = o
            .entries()
            .iter()
            .filter(|(p, _)| windows_name_error(p).is_some())
            .map(|(p, _)| p.as_str())
            .collect();
        let fate = "named as Windows cannot store and would not be delivered";
        text.push_str(&some_files(&refused, fate));
    }
    text
}

/// `N files are <fate>: a, b, … and 3 more`, or nothing for no paths.
fn some_files(paths: &[&str], fate: &str) -> String {
    let n = paths.len();
    if n == 0 {
        return String::new();
    }
    let mut names: Vec<String> = paths
        .iter()
        .take(EXISTING_SHOWN)
        .map(|p| escape(p))
        .collect();
    if n > EXISTING_SHOWN {
        names.push(format!("… and {} more", n - EXISTING_SHOWN));
    }
    format!(
        "{n} {} {fate}: {}\n",
        plural(n, "file is", "files are"),
        names.join(", ")
    )
}

/// Show the offer on stderr and read the answer from the terminal: `y` or `yes`
/// accepts, anything else (an empty line, end of input) declines.
pub fn ask(offer: &TransferOffer, keep_existing: bool, windows_names: bool) -> bool {
    let mut err = std::io::stderr().lock();
    let text = describe(offer, keep_existing, windows_names);
    let _ = write!(err, "{text}Accept? [y/N] ");
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

#[cfg(test)]
mod tests {
    use p2p_copy_core::consent::Offer;
    use p2p_copy_core::path::SafePath;

    use super::*;

    fn offer(paths: &[&str], existing: &[&str]) -> TransferOffer {
        TransferOffer {
            offer: Offer::new(
                paths
                    .iter()
                    .map(|p| (SafePath::parse(p).unwrap(), 10))
                    .collect(),
            ),
            existing: existing.iter().map(|p| (*p).to_owned()).collect(),
        }
    }

    #[test]
    fn the_question_names_files_windows_cannot_store_only_when_they_are_refused() {
        let o = offer(&["d/ok.txt", "d/aux.log", "d/a:b"], &["d/ok.txt"]);
        let with = describe(&o, false, true);
        assert!(
            with.contains("1 file is already there and would be replaced: d/ok.txt\n"),
            "{with}"
        );
        assert!(
            with.contains(
                "2 files are named as Windows cannot store and would not be delivered: d/aux.log, d/a:b\n"
            ),
            "{with}"
        );
        assert!(!describe(&o, false, false).contains("Windows"));
    }
}
