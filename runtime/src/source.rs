//! Turning the sender's command-line paths into the list of files to send.
//!
//! The policy, the same for paths named on the command line and for what is found
//! below a directory:
//! - regular files are sent; a directory `D` sends every regular file below it as
//!   `D/sub/…`, sorted by path components;
//! - a symbolic link is never followed unless asked (`follow_symlinks`): it is left out
//!   with a warning. When following, a link to a file sends that file's content under
//!   the link's name (whatever else names the same file is sent too), and a link to a
//!   directory named on the command line is walked; links to directories inside a tree
//!   are left out (they could loop);
//! - special files (FIFOs, sockets, devices) are left out with a warning;
//! - hard links are separate names: each is sent with its content;
//! - the same entry reached twice (`D` and `D/a`) is sent once;
//! - a path that cannot be sent (missing, unreadable, a name that is not UTF-8 or that
//!   the receiver would refuse) stops the listing, or with `skip_errors` is left out
//!   and reported;
//! - what the user excludes (`--exclude` patterns, and with `--gitignore` the
//!   `.gitignore` files of the sent directories and `.git` directories) is left out
//!   quietly (named in the log with `-v`); an excluded directory is not walked. The
//!   matching is the `ignore` crate's, git's own rules.

use std::collections::{HashMap, HashSet};
use std::ffi::OsString;
use std::fs::{self, Metadata};
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use ignore::gitignore::{Gitignore, GitignoreBuilder};
use ignore::Match;
use p2p_copy_core::metadata::Attrs;
use p2p_copy_core::path::{escape, SafePath};
use p2p_copy_core::sender::SendFile;

use crate::files_send::PipeData;
use crate::{Pipe, SendOptions, TransferError};

/// The one entry of a transfer of standard input or of a text.
///
/// # Errors
/// [`TransferError::Source`] for a text longer than
/// [`TEXT_MAX`](p2p_copy_core::wire::TEXT_MAX).
pub(crate) fn piped(pipe: &Pipe) -> Result<Listing, TransferError> {
    use p2p_copy_core::wire::{EntryKind, TEXT_MAX};
    let (name, size, kind, data) = match pipe {
        Pipe::Stdin { name } => (name, 0, EntryKind::Stream, PipeData::Stdin),
        Pipe::Text { name, text } => {
            let bytes = bytes::Bytes::from(text.clone().into_bytes());
            (
                name,
                bytes.len() as u64,
                EntryKind::Text,
                PipeData::Text(bytes),
            )
        }
    };
    if kind == EntryKind::Text && size > TEXT_MAX {
        return Err(TransferError::Source(format!(
            "the text has {size} bytes; --text sends at most {TEXT_MAX} (send a file, or pipe it: send - --name NAME)"
        )));
    }
    Ok(Listing {
        files: vec![Source {
            file: SendFile {
                path: name.clone(),
                size,
                kind: Some(kind),
            },
            local: PathBuf::new(),
            modified: None,
            attrs: Attrs::default(),
            pipe: Some(data),
        }],
        ..Listing::default()
    })
}

/// A file to send and where it is on disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Source {
    /// Name and size as announced to the receiver.
    pub file: SendFile,
    /// Its location on disk.
    pub local: PathBuf,
    /// Its modification time when listed: a file that differs from its listing when it
    /// is read has changed while being sent.
    pub modified: Option<SystemTime>,
    /// Its permission bits and modification time, which a receiver may keep.
    pub attrs: Attrs,
    /// Not a file on disk: standard input or a text.
    pub pipe: Option<PipeData>,
}

/// What [`list`] found.
#[derive(Debug, Default)]
pub(crate) struct Listing {
    /// The files to send.
    pub files: Vec<Source>,
    /// Left out by the policy (symbolic links, special files), and why.
    pub excluded: Vec<(String, String)>,
    /// Left out because they cannot be sent (`skip_errors`), and why.
    pub failed: Vec<(String, String)>,
    /// Every directory walked, as sent (`D`, `D/sub`), parents first, with its time.
    pub dirs: Vec<(String, Attrs)>,
}

/// What a receiver may keep of a file's or directory's metadata: its permission bits
/// (Unix; never setuid, setgid or sticky) and its modification time in whole seconds.
fn attrs(meta: &Metadata) -> Attrs {
    #[cfg(unix)]
    let mode = {
        use std::os::unix::fs::PermissionsExt;
        Some(meta.permissions().mode() & p2p_copy_core::metadata::MODE_MASK)
    };
    #[cfg(not(unix))]
    let mode = None;
    let mtime = meta
        .modified()
        .ok()
        .and_then(|t| match t.duration_since(UNIX_EPOCH) {
            Ok(d) => i64::try_from(d.as_secs()).ok(),
            // Before the epoch: whole seconds towards the past.
            Err(e) => {
                let d = e.duration();
                let secs = i64::try_from(d.as_secs()).ok()?;
                Some(if d.subsec_nanos() > 0 {
                    -secs - 1
                } else {
                    -secs
                })
            }
        });
    Attrs { mode, mtime }
}

/// How to list.
#[derive(Debug, Clone, Default)]
pub(crate) struct ListOptions {
    /// Leave out what cannot be sent instead of failing.
    pub skip_errors: bool,
    /// Send what symbolic links point to.
    pub follow_symlinks: bool,
    /// Patterns of names to leave out ([`SendOptions::exclude`]).
    pub exclude: Vec<String>,
    /// Honour `.gitignore` files ([`SendOptions::gitignore`]).
    pub gitignore: bool,
}

impl From<&SendOptions> for ListOptions {
    fn from(o: &SendOptions) -> ListOptions {
        ListOptions {
            skip_errors: o.skip_errors,
            follow_symlinks: o.follow_symlinks,
            exclude: o.exclude.clone(),
            gitignore: o.gitignore,
        }
    }
}

/// Check one `--exclude` pattern (the syntax of a `.gitignore` line: `*`, `?`, `[…]`,
/// `**`, a leading `/` anchors it at the top of the sent names, a trailing `/` matches
/// directories only).
///
/// # Errors
/// Why the pattern is not valid.
pub fn check_exclude(pattern: &str) -> Result<(), String> {
    exclude_matcher(&[pattern.to_owned()]).map(|_| ())
}

/// The `--exclude` patterns as one matcher over names as sent.
fn exclude_matcher(patterns: &[String]) -> Result<Gitignore, String> {
    let mut b = GitignoreBuilder::new("");
    for p in patterns {
        if p.trim().is_empty() {
            return Err("an empty --exclude pattern matches nothing".into());
        }
        if p.starts_with('!') {
            return Err(format!(
                "--exclude {}: a pattern cannot start with '!' (only .gitignore files re-include)",
                escape(p)
            ));
        }
        b.add_line(None, p)
            .map_err(|e| format!("--exclude {}: {e}", escape(p)))?;
    }
    b.build().map_err(|e| e.to_string())
}

/// The `.gitignore` of `dir`, if it has one with any pattern. A file that cannot be
/// read or has a bad line is reported and used as far as it goes.
fn gitignore_of(dir: &Path) -> Option<Gitignore> {
    let file = dir.join(".gitignore");
    if !file.is_file() {
        return None;
    }
    let mut b = GitignoreBuilder::new(dir);
    if let Some(e) = b.add(&file) {
        log::warn!("{}: {e}", escape(&file.display().to_string()));
    }
    match b.build() {
        Ok(g) if !g.is_empty() => Some(g),
        Ok(_) => None,
        Err(e) => {
            log::warn!("{}: {e}", escape(&file.display().to_string()));
            None
        }
    }
}

/// List the files behind `paths` (see the module docs for the policy).
///
/// # Errors
/// [`TransferError::Source`] for the first path that cannot be sent, unless
/// `skip_errors`; and when two different files would arrive under one name.
pub(crate) fn list(paths: &[PathBuf], opts: ListOptions) -> Result<Listing, TransferError> {
    let exclude = exclude_matcher(&opts.exclude).map_err(TransferError::Source)?;
    let mut l = Lister {
        opts,
        exclude,
        gitignores: Vec::new(),
        out: Listing::default(),
        names: HashMap::new(),
        seen: HashSet::new(),
        canonical_dirs: HashMap::new(),
    };
    for arg in paths {
        l.argument(arg)?;
    }
    Ok(l.out)
}

struct Lister {
    opts: ListOptions,
    /// `--exclude`, over names as sent.
    exclude: Gitignore,
    /// With `--gitignore`: the `.gitignore` files of the directories being walked,
    /// outermost first.
    gitignores: Vec<Gitignore>,
    out: Listing,
    /// Index in `out.files` of each name.
    names: HashMap<String, usize>,
    /// Entries listed already: the canonical directory and the name in it.
    seen: HashSet<PathBuf>,
    /// Each directory's canonical form, resolved once (a `readlink` per component)
    /// however many files it holds.
    canonical_dirs: HashMap<PathBuf, PathBuf>,
}

/// What a directory entry or argument is, links not followed.
enum Kind {
    File(Metadata),
    Dir,
    /// A symbolic link, with its target's metadata when it resolves.
    Link(Option<Metadata>),
    Special(&'static str),
}

fn kind_of(path: &Path) -> std::io::Result<Kind> {
    let meta = fs::symlink_metadata(path)?;
    let t = meta.file_type();
    Ok(if t.is_file() {
        Kind::File(meta)
    } else if t.is_dir() {
        Kind::Dir
    } else if t.is_symlink() {
        Kind::Link(fs::metadata(path).ok())
    } else {
        Kind::Special(special_name(&t))
    })
}

#[cfg(unix)]
fn special_name(t: &fs::FileType) -> &'static str {
    use std::os::unix::fs::FileTypeExt;
    if t.is_fifo() {
        "a FIFO"
    } else if t.is_socket() {
        "a socket"
    } else if t.is_block_device() || t.is_char_device() {
        "a device"
    } else {
        "not a regular file"
    }
}

#[cfg(not(unix))]
fn special_name(_: &fs::FileType) -> &'static str {
    "not a regular file"
}

impl Lister {
    fn argument(&mut self, arg: &Path) -> Result<(), TransferError> {
        let shown = arg.display().to_string();
        let kind = match kind_of(arg) {
            Ok(k) => k,
            Err(e) => return self.cannot(&shown, e.to_string()),
        };
        let Some(name) = arg.file_name().map(|n| n.to_owned()) else {
            return self.cannot(&shown, "it has no file name".into());
        };
        if self.excluded(Path::new(&name), arg, matches!(kind, Kind::Dir)) {
            return Ok(());
        }
        match kind {
            Kind::File(meta) => self.file(arg.to_path_buf(), vec![name], &meta),
            Kind::Dir => self.dir(arg, vec![name]),
            Kind::Link(target) => match (self.opts.follow_symlinks, target) {
                (false, _) => self.exclude(
                    &shown,
                    "a symbolic link, not followed (--follow-symlinks sends its target)",
                ),
                (true, None) => {
                    self.cannot(&shown, "a symbolic link whose target does not exist".into())
                }
                (true, Some(meta)) if meta.is_file() => {
                    self.file(arg.to_path_buf(), vec![name], &meta)
                }
                (true, Some(meta)) if meta.is_dir() => self.dir(arg, vec![name]),
                (true, Some(_)) => self.exclude(&shown, "a symbolic link to a special file"),
            },
            Kind::Special(what) => self.exclude(&shown, what),
        }
    }

    /// Note the directory `dir`, sent as `rel`, for the receiver to create and date; a
    /// name that cannot be sent as it is leaves it out (its files say why).
    fn note_dir(&mut self, dir: &Path, rel: &[OsString]) {
        let names: Option<Vec<&str>> = rel.iter().map(|p| p.to_str()).collect();
        let Some(name) = names.map(|n| n.join("/")) else {
            return;
        };
        if SafePath::parse(&name).is_err() {
            return;
        }
        let a = fs::metadata(dir).map(|m| attrs(&m)).unwrap_or_default();
        self.out.dirs.push((name, a));
    }

    fn dir(&mut self, dir: &Path, prefix: Vec<OsString>) -> Result<(), TransferError> {
        let mut found: Vec<(Vec<OsString>, PathBuf, Kind)> = Vec::new();
        self.note_dir(dir, &prefix);
        let pushed = self.enter(dir);
        let walked = self.walk(dir, &mut prefix.clone(), &mut found);
        self.leave(pushed);
        walked?;
        found.sort_by(|a, b| a.0.cmp(&b.0));
        for (parts, local, kind) in found {
            let shown = local.display().to_string();
            match kind {
                Kind::File(meta) => self.file(local, parts, &meta)?,
                Kind::Link(target) => match (self.opts.follow_symlinks, target) {
                    (false, _) => self.exclude(
                        &shown,
                        "a symbolic link, not followed (--follow-symlinks sends its target)",
                    )?,
                    (true, Some(meta)) if meta.is_file() => self.file(local, parts, &meta)?,
                    (true, Some(meta)) if meta.is_dir() => self.exclude(
                        &shown,
                        "a symbolic link to a directory inside a tree, not followed",
                    )?,
                    (true, Some(_)) => self.exclude(&shown, "a symbolic link to a special file")?,
                    (true, None) => {
                        self.exclude(&shown, "a symbolic link whose target does not exist")?
                    }
                },
                Kind::Special(what) => self.exclude(&shown, what)?,
                Kind::Dir => {}
            }
        }
        Ok(())
    }

    fn walk(
        &mut self,
        dir: &Path,
        rel: &mut Vec<OsString>,
        found: &mut Vec<(Vec<OsString>, PathBuf, Kind)>,
    ) -> Result<(), TransferError> {
        let entries = match fs::read_dir(dir) {
            Ok(e) => e,
            Err(e) => return self.cannot(&dir.display().to_string(), e.to_string()),
        };
        for entry in entries {
            let entry = match entry {
                Ok(e) => e,
                Err(e) => return self.cannot(&dir.display().to_string(), e.to_string()),
            };
            let path = entry.path();
            rel.push(entry.file_name());
            let kind = kind_of(&path);
            let is_dir = matches!(kind, Ok(Kind::Dir));
            if self.excluded(&rel.iter().collect::<PathBuf>(), &path, is_dir) {
                rel.pop();
                continue;
            }
            let walked = match kind {
                Ok(Kind::Dir) => {
                    self.note_dir(&path, rel);
                    let pushed = self.enter(&path);
                    let walked = self.walk(&path, rel, found);
                    self.leave(pushed);
                    walked
                }
                Ok(k) => {
                    found.push((rel.clone(), path, k));
                    Ok(())
                }
                Err(e) => self.cannot(&path.display().to_string(), e.to_string()),
            };
            rel.pop();
            walked?;
        }
        Ok(())
    }

    fn file(
        &mut self,
        local: PathBuf,
        parts: Vec<OsString>,
        meta: &Metadata,
    ) -> Result<(), TransferError> {
        let shown = local.display().to_string();
        let key = self.entry_key(&local);
        if !self.seen.insert(key) {
            return Ok(());
        }
        let mut names = Vec::with_capacity(parts.len());
        for p in &parts {
            match p.to_str() {
                Some(n) => names.push(n),
                None => return self.cannot(&shown, "its name is not valid UTF-8".into()),
            }
        }
        let path = names.join("/");
        if let Err(why) = SafePath::parse(&path) {
            return self.cannot(&shown, format!("the receiver would refuse its name: {why}"));
        }
        // Unreadable files are found now, before anything is sent.
        if let Err(e) = fs::File::open(&local) {
            return self.cannot(&shown, e.to_string());
        }
        if let Some(&other) = self.names.get(&path) {
            return Err(TransferError::Source(format!(
                "cannot send both {} and {}: they would arrive under the same name {}",
                escape(&self.out.files[other].local.display().to_string()),
                escape(&shown),
                escape(&path)
            )));
        }
        self.names.insert(path.clone(), self.out.files.len());
        self.out.files.push(Source {
            file: SendFile {
                path,
                size: meta.len(),
                kind: None,
            },
            local,
            modified: meta.modified().ok(),
            attrs: attrs(meta),
            pipe: None,
        });
        Ok(())
    }

    /// Whether the user excluded the entry sent as `name` (relative, as sent) and found
    /// at `local`: by `--exclude`, or with `--gitignore` by the deepest `.gitignore`
    /// that decides about it, or as a `.git` directory.
    fn excluded(&self, name: &Path, local: &Path, is_dir: bool) -> bool {
        let why = if let Match::Ignore(g) = self.exclude.matched(name, is_dir) {
            format!("--exclude {}", g.original())
        } else if self.opts.gitignore && is_dir && local.file_name() == Some(".git".as_ref()) {
            "a .git directory (--gitignore)".to_owned()
        } else {
            let decided = self
                .gitignores
                .iter()
                .rev()
                .map(|g| g.matched(local, is_dir))
                .find(|m| !m.is_none());
            match decided {
                Some(Match::Ignore(g)) => format!(
                    "{} in {}",
                    g.original(),
                    g.from()
                        .map_or_else(|| ".gitignore".into(), |p| p.display().to_string())
                ),
                _ => return false,
            }
        };
        log::debug!(
            "leaving out {}: {}",
            escape(&name.display().to_string()),
            escape(&why)
        );
        true
    }

    /// Start walking `dir`: with `--gitignore`, its `.gitignore` applies below it.
    /// Returns whether one was pushed, for [`Lister::leave`].
    fn enter(&mut self, dir: &Path) -> bool {
        if !self.opts.gitignore {
            return false;
        }
        match gitignore_of(dir) {
            Some(g) => {
                self.gitignores.push(g);
                true
            }
            None => false,
        }
    }

    fn leave(&mut self, pushed: bool) {
        if pushed {
            self.gitignores.pop();
        }
    }

    /// The entry `local` names: its directory resolved, its own name kept, so that the
    /// same entry reached by two paths is one, while a link and its target stay two.
    fn entry_key(&mut self, local: &Path) -> PathBuf {
        let parent = match local.parent() {
            Some(p) if !p.as_os_str().is_empty() => p,
            _ => Path::new("."),
        };
        let dir = self
            .canonical_dirs
            .entry(parent.to_path_buf())
            .or_insert_with(|| fs::canonicalize(parent).unwrap_or_else(|_| parent.to_path_buf()));
        match local.file_name() {
            Some(n) => dir.join(n),
            None => dir.clone(),
        }
    }

    /// Leave `shown` out by policy, with a warning.
    fn exclude(&mut self, shown: &str, why: &str) -> Result<(), TransferError> {
        log::warn!("skipping {}: {why}", escape(shown));
        self.out.excluded.push((shown.to_owned(), why.to_owned()));
        Ok(())
    }

    /// `shown` cannot be sent: an error, or with `skip_errors` a warning.
    fn cannot(&mut self, shown: &str, why: String) -> Result<(), TransferError> {
        if !self.opts.skip_errors {
            return Err(TransferError::Source(format!(
                "cannot send {}: {why} (--skip-errors sends the rest)",
                escape(shown)
            )));
        }
        log::warn!("skipping {}: {why}", escape(shown));
        self.out.failed.push((shown.to_owned(), why));
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(l: &Listing) -> Vec<(&str, u64)> {
        l.files
            .iter()
            .map(|s| (s.file.path.as_str(), s.file.size))
            .collect()
    }

    fn strict(paths: &[PathBuf]) -> Result<Listing, TransferError> {
        list(paths, ListOptions::default())
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
        let l = strict(&[t.path().join("x"), d.clone(), d.join("sub/z")]).unwrap();
        // Sorted by components: "a/b" before "a-c" although '-' < '/'.
        assert_eq!(
            names(&l),
            [("x", 3), ("D/a/b", 0), ("D/a-c", 1), ("D/sub/z", 2)]
        );
    }

    #[test]
    fn a_missing_path_stops_the_listing_unless_errors_are_skipped() {
        let t = tempfile::tempdir().unwrap();
        fs::write(t.path().join("here"), b"1").unwrap();
        let args = [t.path().join("nope"), t.path().join("here")];
        let e = strict(&args).unwrap_err();
        assert!(
            matches!(&e, TransferError::Source(m) if m.contains("nope") && m.contains("--skip-errors")),
            "{e}"
        );
        let opts = ListOptions {
            skip_errors: true,
            ..ListOptions::default()
        };
        let l = list(&args, opts).unwrap();
        assert_eq!(names(&l), [("here", 1)]);
        assert_eq!(l.failed.len(), 1);
        assert!(l.failed[0].0.ends_with("nope"));
    }

    #[test]
    fn one_character_names_are_sent() {
        let t = tempfile::tempdir().unwrap();
        fs::write(t.path().join("a"), b"1").unwrap();
        assert_eq!(names(&strict(&[t.path().join("a")]).unwrap()), [("a", 1)]);
    }

    #[cfg(unix)]
    #[test]
    fn a_symlink_never_hides_the_file_it_points_to() {
        let t = tempfile::tempdir().unwrap();
        let d = t.path().join("D");
        fs::create_dir_all(&d).unwrap();
        fs::write(d.join("z_real.txt"), b"real").unwrap();
        std::os::unix::fs::symlink("z_real.txt", d.join("a_link")).unwrap();
        let l = strict(std::slice::from_ref(&d)).unwrap();
        assert_eq!(names(&l), [("D/z_real.txt", 4)]);
        assert_eq!(
            l.excluded.len(),
            1,
            "the link is reported, not silently dropped"
        );
        let follow = ListOptions {
            follow_symlinks: true,
            ..ListOptions::default()
        };
        let l = list(&[d], follow).unwrap();
        assert_eq!(names(&l), [("D/a_link", 4), ("D/z_real.txt", 4)]);
    }

    #[cfg(unix)]
    #[test]
    fn a_symlink_out_of_the_tree_is_not_followed_without_the_flag() {
        let t = tempfile::tempdir().unwrap();
        fs::write(t.path().join("secret"), b"do not send").unwrap();
        let d = t.path().join("D");
        fs::create_dir_all(&d).unwrap();
        fs::write(d.join("ok"), b"ok").unwrap();
        std::os::unix::fs::symlink("../secret", d.join("leak")).unwrap();
        std::os::unix::fs::symlink(t.path().join("secret"), t.path().join("arg-link")).unwrap();
        let l = strict(&[d, t.path().join("arg-link")]).unwrap();
        assert_eq!(names(&l), [("D/ok", 2)]);
        assert_eq!(l.excluded.len(), 2);
    }

    #[cfg(unix)]
    #[test]
    fn special_files_are_left_out_and_reported() {
        let t = tempfile::tempdir().unwrap();
        let d = t.path().join("D");
        fs::create_dir_all(&d).unwrap();
        fs::write(d.join("f"), b"f").unwrap();
        let made = std::process::Command::new("mkfifo")
            .arg(d.join("pipe"))
            .status()
            .expect("mkfifo runs");
        assert!(made.success());
        let l = strict(&[d]).unwrap();
        assert_eq!(names(&l), [("D/f", 1)]);
        assert_eq!(l.excluded.len(), 1);
        assert!(l.excluded[0].1.contains("FIFO"), "{:?}", l.excluded);
    }

    #[cfg(unix)]
    #[test]
    fn the_same_entry_twice_is_sent_once_but_hard_links_each() {
        let t = tempfile::tempdir().unwrap();
        let d = t.path().join("D");
        fs::create_dir_all(d.join("sub")).unwrap();
        fs::write(d.join("a"), b"aa").unwrap();
        fs::hard_link(d.join("a"), d.join("b")).unwrap();
        // The same entries again through the directory's other name.
        std::os::unix::fs::symlink(&d, t.path().join("E")).unwrap();
        let l = strict(&[d.clone(), t.path().join("E/a"), t.path().join("E/b")]).unwrap();
        assert_eq!(names(&l), [("D/a", 2), ("D/b", 2)]);
    }

    #[cfg(unix)]
    #[test]
    fn a_name_that_is_not_utf8_is_refused_or_skipped() {
        use std::os::unix::ffi::OsStrExt;
        let t = tempfile::tempdir().unwrap();
        let d = t.path().join("D");
        fs::create_dir_all(&d).unwrap();
        fs::write(d.join(std::ffi::OsStr::from_bytes(b"bad\xff")), b"x").unwrap();
        fs::write(d.join("good"), b"y").unwrap();
        let e = strict(std::slice::from_ref(&d)).unwrap_err();
        assert!(e.to_string().contains("not valid UTF-8"), "{e}");
        let opts = ListOptions {
            skip_errors: true,
            ..ListOptions::default()
        };
        let l = list(&[d], opts).unwrap();
        assert_eq!(names(&l), [("D/good", 1)]);
        assert_eq!(l.failed.len(), 1);
    }

    #[test]
    fn excluded_names_and_gitignored_paths_are_left_out_and_not_walked() {
        let t = tempfile::tempdir().unwrap();
        let d = t.path().join("D");
        for (path, body) in [
            ("keep.txt", "k"),
            ("debug.log", "l"),
            ("sub/also.log", "l"),
            ("sub/keep.rs", "k"),
            ("build/out.bin", "b"),
            ("node_modules/x/y.js", "n"),
            (".gitignore", "*.o\n/build/\n"),
            ("sub/.gitignore", "!main.o\ngen/\n"),
            ("sub/main.o", "m"),
            ("sub/other.o", "o"),
            ("sub/gen/g.rs", "g"),
            (".git/HEAD", "ref"),
        ] {
            let p = d.join(path);
            fs::create_dir_all(p.parent().unwrap()).unwrap();
            fs::write(p, body).unwrap();
        }
        let opts = |exclude: &[&str], gitignore| ListOptions {
            exclude: exclude.iter().map(|s| s.to_string()).collect(),
            gitignore,
            ..ListOptions::default()
        };
        let paths =
            |l: &Listing| -> Vec<String> { l.files.iter().map(|s| s.file.path.clone()).collect() };
        let l = list(
            std::slice::from_ref(&d),
            opts(&["*.log", "node_modules", "D/sub/gen/"], false),
        )
        .unwrap();
        assert_eq!(
            paths(&l),
            [
                "D/.git/HEAD",
                "D/.gitignore",
                "D/build/out.bin",
                "D/keep.txt",
                "D/sub/.gitignore",
                "D/sub/keep.rs",
                "D/sub/main.o",
                "D/sub/other.o",
            ]
        );
        assert!(l.excluded.is_empty(), "asked for: not warned about");
        // The .gitignore files: the deepest decides (main.o is re-included), /build/ is
        // anchored at D, gen/ at D/sub; .git is never sent.
        let l = list(std::slice::from_ref(&d), opts(&["*.log"], true)).unwrap();
        assert_eq!(
            paths(&l),
            [
                "D/.gitignore",
                "D/keep.txt",
                "D/node_modules/x/y.js",
                "D/sub/.gitignore",
                "D/sub/keep.rs",
                "D/sub/main.o",
            ]
        );
        // An argument itself can be excluded; a pattern with '/' anchors at the top.
        let l = list(
            &[d.join("debug.log"), d.join("keep.txt")],
            opts(&["/debug.log"], false),
        )
        .unwrap();
        assert_eq!(paths(&l), ["keep.txt"]);
    }

    #[test]
    fn bad_exclude_patterns_are_refused_with_a_reason() {
        assert!(check_exclude("*.log").is_ok());
        assert!(check_exclude("a/**/b").is_ok());
        for bad in ["", "!keep", "[z-a]"] {
            let e = check_exclude(bad).unwrap_err();
            assert!(!e.is_empty(), "{bad}");
        }
    }

    #[test]
    fn two_files_under_one_name_are_refused() {
        let t = tempfile::tempdir().unwrap();
        fs::create_dir_all(t.path().join("one")).unwrap();
        fs::create_dir_all(t.path().join("two")).unwrap();
        fs::write(t.path().join("one/x"), b"1").unwrap();
        fs::write(t.path().join("two/x"), b"2").unwrap();
        let e = strict(&[t.path().join("one/x"), t.path().join("two/x")]).unwrap_err();
        assert!(
            matches!(&e, TransferError::Source(m) if m.contains("same name x")),
            "{e}"
        );
    }
}
