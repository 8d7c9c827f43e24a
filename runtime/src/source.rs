//! Turning the sender's command-line paths into the list of files to send.

use std::collections::HashSet;
use std::ffi::OsString;
use std::fs;
use std::path::{Path, PathBuf};

use p2p_copy_core::sender::SendFile;

use crate::TransferError;

/// A file to send and where it is on disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Source {
    /// Name and size as announced to the receiver.
    pub file: SendFile,
    /// Its location on disk.
    pub local: PathBuf,
}

/// List the files behind `paths` as p2p-copy 0.1.2 does: a file is sent under its own
/// name; a directory `D` sends every regular file below it as `D/sub/…`, sorted by path
/// components; a file reached twice (same canonical path) is sent once. Symlinks to
/// files are followed, symlinks to directories inside a tree are not descended.
pub(crate) fn list(paths: &[PathBuf]) -> Result<Vec<Source>, TransferError> {
    let mut out = Vec::new();
    let mut seen = HashSet::new();
    for arg in paths {
        let meta = fs::metadata(arg)
            .map_err(|e| TransferError::Source(format!("cannot send {}: {e}", arg.display())))?;
        let prefix: Vec<OsString> = arg.file_name().map(|n| n.to_owned()).into_iter().collect();
        if meta.is_file() {
            let Some(name) = arg.file_name() else {
                return Err(TransferError::Source(format!(
                    "cannot send {}: it has no file name",
                    arg.display()
                )));
            };
            push(
                &mut out,
                &mut seen,
                arg.clone(),
                &[name.to_owned()],
                meta.len(),
            )?;
        } else if meta.is_dir() {
            let mut found = Vec::new();
            walk(arg, &mut Vec::new(), &mut found)?;
            found.sort_by(|a, b| a.0.cmp(&b.0));
            for (rel, local, size) in found {
                let parts: Vec<OsString> = prefix.iter().cloned().chain(rel).collect();
                push(&mut out, &mut seen, local, &parts, size)?;
            }
        } else {
            return Err(TransferError::Source(format!(
                "cannot send {}: not a regular file or directory",
                arg.display()
            )));
        }
    }
    Ok(out)
}

type Found = (Vec<OsString>, PathBuf, u64);

fn walk(dir: &Path, rel: &mut Vec<OsString>, found: &mut Vec<Found>) -> Result<(), TransferError> {
    let fail = |p: &Path, e: std::io::Error| {
        TransferError::Source(format!("cannot read {}: {e}", p.display()))
    };
    for entry in fs::read_dir(dir).map_err(|e| fail(dir, e))? {
        let entry = entry.map_err(|e| fail(dir, e))?;
        let path = entry.path();
        let kind = entry.file_type().map_err(|e| fail(&path, e))?;
        rel.push(entry.file_name());
        if kind.is_dir() {
            walk(&path, rel, found)?;
        } else if kind.is_file() {
            let size = entry.metadata().map_err(|e| fail(&path, e))?.len();
            found.push((rel.clone(), path, size));
        } else if kind.is_symlink() {
            // Like the reference: a link to a file is sent with the file's content;
            // links to directories and dangling links are left out.
            if let Ok(meta) = fs::metadata(&path) {
                if meta.is_file() {
                    found.push((rel.clone(), path, meta.len()));
                }
            }
        }
        rel.pop();
    }
    Ok(())
}

fn push(
    out: &mut Vec<Source>,
    seen: &mut HashSet<PathBuf>,
    local: PathBuf,
    parts: &[OsString],
    size: u64,
) -> Result<(), TransferError> {
    let canonical = fs::canonicalize(&local)
        .map_err(|e| TransferError::Source(format!("cannot send {}: {e}", local.display())))?;
    if !seen.insert(canonical) {
        return Ok(());
    }
    let mut names = Vec::with_capacity(parts.len());
    for p in parts {
        let name = p.to_str().ok_or_else(|| {
            TransferError::Source(format!(
                "cannot send {}: its name is not valid UTF-8",
                local.display()
            ))
        })?;
        names.push(name);
    }
    let path = names.join("/");
    if let Some(other) = out.iter().find(|s| s.file.path == path) {
        return Err(TransferError::Source(format!(
            "cannot send both {} and {}: they would arrive under the same name {}",
            other.local.display(),
            local.display(),
            p2p_copy_core::path::escape(&path)
        )));
    }
    out.push(Source {
        file: SendFile { path, size },
        local,
    });
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(list: &[Source]) -> Vec<(&str, u64)> {
        list.iter()
            .map(|s| (s.file.path.as_str(), s.file.size))
            .collect()
    }

    #[test]
    fn files_keep_their_name_and_directories_their_prefix() {
        let t = tempfile::tempdir().unwrap();
        let d = t.path().join("D");
        fs::create_dir_all(d.join("sub")).unwrap();
        fs::write(d.join("sub/z"), b"zz").unwrap();
        fs::write(d.join("a-c"), b"a").unwrap();
        fs::create_dir_all(d.join("a")).unwrap();
        fs::write(d.join("a/b"), b"").unwrap();
        fs::write(t.path().join("x"), b"xyz").unwrap();
        let list = list(&[t.path().join("x"), d.clone(), d.join("sub/z")]).unwrap();
        // Sorted by components: "a/b" before "a-c" although '-' < '/'.
        assert_eq!(
            names(&list),
            [("x", 3), ("D/a/b", 0), ("D/a-c", 1), ("D/sub/z", 2)]
        );
    }

    #[test]
    fn a_missing_path_is_a_source_error() {
        let t = tempfile::tempdir().unwrap();
        let e = list(&[t.path().join("nope")]).unwrap_err();
        assert!(
            matches!(&e, TransferError::Source(m) if m.contains("nope")),
            "{e}"
        );
    }

    #[test]
    fn one_character_names_are_sent() {
        let t = tempfile::tempdir().unwrap();
        fs::write(t.path().join("a"), b"1").unwrap();
        assert_eq!(names(&list(&[t.path().join("a")]).unwrap()), [("a", 1)]);
    }
}
