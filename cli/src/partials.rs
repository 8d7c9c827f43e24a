//! `p2p-copy partials [--clean] [--older-than AGE] [DIR]`: the partial files a stopped
//! transfer left, listed or removed.

use std::path::Path;
use std::time::{Duration, SystemTime};

use indicatif::{BinaryBytes, HumanDuration};
use p2p_copy_core::path::escape;

use crate::args::PartialsArgs;
use crate::backend::partials::{self, Partial};

/// Exit code when the directory cannot be read or a partial file cannot be removed.
const EXIT_LOCAL: u8 = 6;

/// List (or with `--clean` remove) the partial files below the directory; the exit code.
pub fn run(a: &PartialsArgs, default_dir: &Path) -> u8 {
    let dir = a.dir.as_deref().unwrap_or(default_dir);
    let found = match partials::list(dir) {
        Ok(found) => found,
        Err(e) => {
            eprintln!("error: cannot read {}: {e}", escape(&dir.to_string_lossy()));
            return EXIT_LOCAL;
        }
    };
    let now = SystemTime::now();
    let age = |p: &Partial| now.duration_since(p.modified).unwrap_or_default();
    let chosen: Vec<&Partial> = found
        .iter()
        .filter(|p| a.older_than.is_none_or(|min| age(p) >= min))
        .collect();
    let shown_dir = escape(&dir.to_string_lossy());
    if chosen.is_empty() {
        let which = match a.older_than {
            Some(min) => format!(" older than {}", HumanDuration(min)),
            None => String::new(),
        };
        println!("no partial files{which} below {shown_dir}");
        return 0;
    }
    if !a.clean {
        println!("{:<40} {:>11} {:>11}  age", "partial file of", "held", "of");
        for p in &chosen {
            let total = p
                .total
                .map_or("?".to_owned(), |t| BinaryBytes(t).to_string());
            println!(
                "{:<40} {:>11} {:>11}  {}",
                escape(&p.name),
                BinaryBytes(p.held).to_string(),
                total,
                ago(age(p))
            );
        }
        return 0;
    }
    let mut failed = false;
    let (mut removed, mut bytes) = (0usize, 0u64);
    for p in chosen {
        match partials::remove(p) {
            Ok(()) => {
                removed += 1;
                bytes += p.held;
                println!(
                    "removed the partial file of {} ({})",
                    escape(&p.name),
                    BinaryBytes(p.held)
                );
            }
            Err(e) => {
                failed = true;
                eprintln!(
                    "error: cannot remove {}: {e}",
                    escape(&p.path.to_string_lossy())
                );
            }
        }
    }
    println!(
        "removed {removed} partial {} ({}) below {shown_dir}",
        if removed == 1 { "file" } else { "files" },
        BinaryBytes(bytes)
    );
    if failed {
        EXIT_LOCAL
    } else {
        0
    }
}

/// "3 hours", rounded down to the largest unit.
fn ago(d: Duration) -> String {
    let s = d.as_secs();
    let (n, unit) = match s {
        0..60 => (s, "second"),
        60..3600 => (s / 60, "minute"),
        3600..86_400 => (s / 3600, "hour"),
        _ => (s / 86_400, "day"),
    };
    format!("{n} {unit}{}", if n == 1 { "" } else { "s" })
}
