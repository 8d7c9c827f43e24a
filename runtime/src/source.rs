//! Turning the sender's command-line paths into the list of files to send.

use std::collections::HashMap;
use std::ffi::OsString;
use std::fs::{self, Metadata};
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
    let mut listed = Listed::default();
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
            listed.push(arg.clone(), &[name.to_owned()], &meta)?;
        } else if meta.is_dir() {
            let mut found = Vec::new();
            walk(arg, &mut Vec::new(), &mut found)?;
            found.sort_by(|a, b| a.0.cmp(&b.0));
            for (rel, local, meta) in found {
                let parts: Vec<OsString> = prefix.iter().cloned().chain(rel).collect();
                listed.push(local, &parts, &meta)?;
            }
        } else {
            return Err(TransferError::Source(format!(
                "cannot send {}: not a regular file or directory",
                arg.display()
            )));
        }
    }
    Ok(listed.out)
}

/// A file found below a directory: its components below it, its location, and the
/// metadata of the file itself (of the target, for a symlink).
type Found = (Vec<OsString>, PathBuf, Metadata);

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
            let meta = entry.metadata().map_err(|e| fail(&path, e))?;
            found.push((rel.clone(), path, meta));
        } else if kind.is_symlink() {
            // Like the reference: a link to a file is sent with the file's content;
            // links to directories and dangling links are left out.
            if let Ok(meta) = fs::metadata(&path) {
                if meta.is_file() {
                    found.push((rel.clone(), path, meta));
                }
            }
        }
        rel.pop();
    }
    Ok(())
}

/// The files listed so far, with what is needed to refuse doubles.
#[derive(Default)]
struct Listed {
    out: Vec<Source>,
    /// Index in `out` of each name.
    names: HashMap<String, usize>,
    seen: Seen,
}

impl Listed {
    fn push(
        &mut self,
        local: PathBuf,
        parts: &[OsString],
        meta: &Metadata,
    ) -> Result<(), TransferError> {
        if !self.seen.first_time(&local, meta)? {
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
        if let Some(&other) = self.names.get(&path) {
            return Err(TransferError::Source(format!(
                "cannot send both {} and {}: they would arrive under the same name {}",
                self.out[other].local.display(),
                local.display(),
                p2p_copy_core::path::escape(&path)
            )));
        }
        self.names.insert(path.clone(), self.out.len());
        self.out.push(Source {
            file: SendFile {
                path,
                size: meta.len(),
            },
            local,
        });
        Ok(())
    }
}

fn canonical(local: &Path) -> Result<PathBuf, TransferError> {
    fs::canonicalize(local)
        .map_err(|e| TransferError::Source(format!("cannot send {}: {e}", local.display())))
}

/// Which files were listed already, by canonical path as p2p-copy 0.1.2 does. Resolving
/// every path costs a `readlink` per component, so on unix files are told apart by device
/// and inode first: only files sharing both (the same file reached twice, or hard links,
/// which keep their own canonical paths and are each sent) are resolved and compared.
#[cfg(unix)]
#[derive(Default)]
struct Seen {
    /// Per device and inode, the paths listed.
    by_inode: HashMap<(u64, u64), Vec<Listing>>,
}

/// A path listed, with its canonical form once it was needed.
#[cfg(unix)]
struct Listing {
    local: PathBuf,
    canonical: Option<PathBuf>,
}

#[cfg(unix)]
impl Seen {
    /// Whether `local`, whose metadata (links followed) is `meta`, was not listed yet.
    fn first_time(&mut self, local: &Path, meta: &Metadata) -> Result<bool, TransferError> {
        use std::os::unix::fs::MetadataExt;
        let listed = self.by_inode.entry((meta.dev(), meta.ino())).or_default();
        if listed.is_empty() {
            listed.push(Listing {
                local: local.to_path_buf(),
                canonical: None,
            });
            return Ok(true);
        }
        let this = canonical(local)?;
        for earlier in listed.iter_mut() {
            let resolved = match &mut earlier.canonical {
                Some(c) => c,
                None => earlier.canonical.insert(canonical(&earlier.local)?),
            };
            if *resolved == this {
                return Ok(false);
            }
        }
        listed.push(Listing {
            local: local.to_path_buf(),
            canonical: Some(this),
        });
        Ok(true)
    }
}

/// Which files were listed already, by canonical path as p2p-copy 0.1.2 does.
#[cfg(not(unix))]
#[derive(Default)]
struct Seen {
    canonical: std::collections::HashSet<PathBuf>,
}

#[cfg(not(unix))]
impl Seen {
    /// Whether `local` was not listed yet.
    fn first_time(&mut self, local: &Path, _meta: &Metadata) -> Result<bool, TransferError> {
        Ok(self.canonical.insert(canonical(local)?))
    }
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

    #[cfg(unix)]
    #[test]
    fn a_file_reached_twice_is_sent_once_but_hard_links_each() {
        let t = tempfile::tempdir().unwrap();
        let d = t.path().join("D");
        fs::create_dir_all(d.join("sub")).unwrap();
        fs::write(d.join("a"), b"aa").unwrap();
        fs::hard_link(d.join("a"), d.join("b")).unwrap();
        std::os::unix::fs::symlink(d.join("a"), d.join("c")).unwrap();
        std::os::unix::fs::symlink("../a", d.join("sub/link")).unwrap();
        // The file again through its directory's other name.
        std::os::unix::fs::symlink(&d, t.path().join("E")).unwrap();
        let list = list(&[d.clone(), t.path().join("E/a"), t.path().join("E/b")]).unwrap();
        assert_eq!(names(&list), [("D/a", 2), ("D/b", 2)]);
        assert_eq!(list[0].local, d.join("a"));
        assert_eq!(list[1].local, d.join("b"));
    }

    #[test]
    fn two_files_under_one_name_are_refused() {
        let t = tempfile::tempdir().unwrap();
        fs::create_dir_all(t.path().join("one")).unwrap();
        fs::create_dir_all(t.path().join("two")).unwrap();
        fs::write(t.path().join("one/x"), b"1").unwrap();
        fs::write(t.path().join("two/x"), b"2").unwrap();
        let e = list(&[t.path().join("one/x"), t.path().join("two/x")]).unwrap_err();
        assert!(
            matches!(&e, TransferError::Source(m) if m.contains("same name x")),
            "{e}"
        );
    }
}
