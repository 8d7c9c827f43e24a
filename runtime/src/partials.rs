//! The partial files a receiver leaves when a transfer stops
//! (`<dir>/.<name>.p2p-copy-part`, see the crate docs): finding them below a directory,
//! and removing them. Symbolic links are never followed and nothing but a regular file
//! with a partial file's name is ever removed.

use std::io;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use p2p_copy_core::path::PARTIAL_SUFFIX;

/// The extended attribute that holds the sender's size of the file a partial file
/// grows into (decimal ASCII), where the file system keeps such attributes.
pub const TOTAL_XATTR: &str = "user.p2p-copy.size";

/// One partial file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Partial {
    /// The partial file itself.
    pub path: PathBuf,
    /// The final name it is renamed to once complete, relative to the directory
    /// searched (`/`-separated; the shortened form for very long names).
    pub name: String,
    /// Bytes it holds.
    pub held: u64,
    /// When it was last written.
    pub modified: SystemTime,
    /// The sender's size of the whole file, when the receiver could record it.
    pub total: Option<u64>,
}

/// Every partial file below `dir`, sorted by name.
///
/// # Errors
/// When `dir` cannot be read; folders below it that cannot be read are skipped.
pub fn list(dir: &Path) -> io::Result<Vec<Partial>> {
    let mut found = Vec::new();
    let mut todo = vec![(std::fs::read_dir(dir)?, String::new())];
    while let Some((entries, prefix)) = todo.pop() {
        for entry in entries.flatten() {
            // `file_type` does not follow a symbolic link.
            let Ok(kind) = entry.file_type() else {
                continue;
            };
            let name = entry.file_name().to_string_lossy().into_owned();
            if kind.is_dir() {
                if let Ok(below) = std::fs::read_dir(entry.path()) {
                    todo.push((below, format!("{prefix}{name}/")));
                }
                continue;
            }
            let Some(final_name) = final_name(&name) else {
                continue;
            };
            if !kind.is_file() {
                continue;
            }
            let Ok(meta) = entry.metadata() else {
                continue;
            };
            found.push(Partial {
                path: entry.path(),
                name: format!("{prefix}{final_name}"),
                held: meta.len(),
                modified: meta.modified().unwrap_or(SystemTime::UNIX_EPOCH),
                total: recorded_total(&entry.path()),
            });
        }
    }
    found.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(found)
}

/// Remove one partial file found by [`list`], if it is still a regular file with a
/// partial file's name.
///
/// # Errors
/// When it is no longer a partial file, or the removal fails.
pub fn remove(p: &Partial) -> io::Result<()> {
    let name = p.path.file_name().map(|n| n.to_string_lossy().into_owned());
    let is_partial = name.as_deref().and_then(final_name).is_some();
    let meta = std::fs::symlink_metadata(&p.path)?;
    if !is_partial || !meta.file_type().is_file() {
        return Err(io::Error::other("not a partial file"));
    }
    std::fs::remove_file(&p.path)
}

/// The final name of a partial file's name `.<name>.p2p-copy-part`.
fn final_name(file_name: &str) -> Option<&str> {
    file_name
        .strip_prefix('.')?
        .strip_suffix(PARTIAL_SUFFIX)
        .filter(|n| !n.is_empty())
}

/// Record the sender's size of the file on its partial file (best effort: a file
/// system without extended attributes records nothing).
pub(crate) fn record_total(file: &std::fs::File, total: u64) {
    #[cfg(target_os = "linux")]
    {
        let value = total.to_string();
        let _ = rustix::fs::fsetxattr(
            file,
            TOTAL_XATTR,
            value.as_bytes(),
            rustix::fs::XattrFlags::empty(),
        );
    }
    #[cfg(not(target_os = "linux"))]
    let _ = (file, total);
}

fn recorded_total(path: &Path) -> Option<u64> {
    #[cfg(target_os = "linux")]
    {
        let mut buf = [0u8; 24];
        let n = rustix::fs::lgetxattr(path, TOTAL_XATTR, &mut buf).ok()?;
        std::str::from_utf8(&buf[..n]).ok()?.parse().ok()
    }
    #[cfg(not(target_os = "linux"))]
    {
        let _ = path;
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_regular_files_with_a_partial_name_are_listed() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        std::fs::create_dir_all(d.join("sub")).unwrap();
        std::fs::write(d.join("sub/.a.txt.p2p-copy-part"), b"abc").unwrap();
        std::fs::write(d.join("a.txt"), b"complete").unwrap();
        std::fs::write(d.join(".p2p-copy-part"), b"no name").unwrap();
        std::fs::create_dir(d.join(".dir.p2p-copy-part")).unwrap();
        #[cfg(unix)]
        std::os::unix::fs::symlink(d.join("a.txt"), d.join(".link.p2p-copy-part")).unwrap();
        let found = list(d).unwrap();
        let names: Vec<(&str, u64)> = found.iter().map(|p| (p.name.as_str(), p.held)).collect();
        assert_eq!(names, vec![("sub/a.txt", 3)]);
        remove(&found[0]).unwrap();
        assert!(list(d).unwrap().is_empty());
        assert!(d.join("a.txt").exists() && d.join(".dir.p2p-copy-part").is_dir());
    }

    #[test]
    fn final_names_come_from_the_partial_name() {
        assert_eq!(final_name(".x.bin.p2p-copy-part"), Some("x.bin"));
        assert_eq!(final_name("x.bin.p2p-copy-part"), None);
        assert_eq!(final_name(".p2p-copy-part"), None);
    }
}
