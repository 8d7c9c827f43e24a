//! The receiver's file access: partial files beside their final names, renamed into
//! place once verified; nothing outside the output directory, no symlink followed.
//!
//! On Linux every directory below the output directory is opened one component at a
//! time with `O_NOFOLLOW` (and created when missing), and its descriptor is kept for
//! the session: files are then opened, inspected and renamed relative to it. A
//! directory swapped for a symlink during the transfer therefore cannot redirect a
//! write (the session keeps using the directory it opened), and before the commits each
//! directory is checked once to still be where it was opened, so a symlink or another
//! directory in its place fails the session. Elsewhere every request walks the path
//! again with `symlink_metadata`. Files are opened with `O_NOFOLLOW` where the platform
//! has it, so a symlink planted inside the output directory (before or during the
//! transfer) is refused instead of followed.

use std::collections::HashMap;
use std::fs::File;
use std::io;

use bytes::Bytes;
use p2p_copy_core::metadata::{Attrs, Notes};
use p2p_copy_core::path::{escape, SafePath};
use p2p_copy_core::receiver::{IoCompletion, IoRequest, LocalCopy};

use crate::machine::FileIo;

use p2p_copy_core::path::partial_name as part_name;

use tree::{Dir, Tree};

#[derive(Debug, Default)]
struct Slot {
    /// Whether the resumable copy Stat found is the complete file (else the partial one).
    found_complete: Option<bool>,
    reader: Option<File>,
    writer: Option<Writer>,
    path: Option<SafePath>,
}

/// File access for one receiving session.
#[derive(Debug)]
pub(crate) struct ReceiveFiles {
    tree: Tree,
    slots: HashMap<usize, Slot>,
    /// `--stdout`: the one file goes to standard output instead.
    stdout: Option<StdoutSink>,
}

/// The one received file written to standard output, piece by verified piece.
struct StdoutSink {
    out: Box<dyn io::Write + Send>,
    /// The file being written, once opened.
    file: Option<usize>,
    /// Bytes written so far.
    written: u64,
}

impl std::fmt::Debug for StdoutSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StdoutSink")
            .field("file", &self.file)
            .field("written", &self.written)
            .finish_non_exhaustive()
    }
}

impl StdoutSink {
    fn run(&mut self, req: IoRequest) -> IoCompletion {
        let (file, r) = match req {
            // Standard output keeps no metadata (the receiver never accepts it there).
            IoRequest::ApplyMetadata { .. } => {
                return IoCompletion::MetadataApplied {
                    not_kept: Default::default(),
                }
            }
            // Nothing is resumed into standard output.
            IoRequest::Stat { file, .. } => (file, Ok(IoCompletion::Stat { file, found: None })),
            IoRequest::ReadBack { file, .. } => (
                file,
                Err("nothing can be read back from standard output".to_owned()),
            ),
            IoRequest::Open {
                file, append_from, ..
            } => (file, self.open(file, append_from)),
            IoRequest::Write { file, offset, data } => (file, self.write(file, offset, &data)),
            IoRequest::Close { file } => {
                (file, self.flush().map(|()| IoCompletion::Closed { file }))
            }
            IoRequest::Sync => (0, self.flush().map(|()| IoCompletion::Synced)),
            // Written as it came: nothing to put in place.
            IoRequest::Commit { file, .. } => (file, Ok(IoCompletion::Committed { file })),
        };
        r.unwrap_or_else(|reason| IoCompletion::Failed { file, reason })
    }

    fn open(&mut self, file: usize, append_from: u64) -> Result<IoCompletion, String> {
        if append_from > 0 {
            return Err("standard output cannot be appended to".to_owned());
        }
        match self.file {
            Some(other) if other != file => {
                Err("standard output takes one file, and a second one came".to_owned())
            }
            _ => {
                self.file = Some(file);
                Ok(IoCompletion::Opened { file })
            }
        }
    }

    fn write(&mut self, file: usize, offset: u64, data: &[u8]) -> Result<IoCompletion, String> {
        if self.file != Some(file) || offset != self.written {
            return Err(format!(
                "standard output is written in order: byte {offset} came after {}",
                self.written
            ));
        }
        self.out
            .write_all(data)
            .map_err(|e| format!("writing to standard output: {e}"))?;
        self.written += data.len() as u64;
        Ok(IoCompletion::Written { file })
    }

    fn flush(&mut self) -> Result<(), String> {
        self.out
            .flush()
            .map_err(|e| format!("writing to standard output: {e}"))
    }
}

/// Where a manifest path lives: its directory, final name and partial name.
struct Place {
    dir: Dir,
    name: String,
    part: String,
    /// The relative path, for messages.
    rel: String,
}

impl Place {
    fn part_rel(&self) -> String {
        match self.rel.rsplit_once('/') {
            Some((parent, _)) => format!("{parent}/{}", self.part),
            None => self.part.clone(),
        }
    }
}

type Outcome<T> = Result<T, String>;

/// A modification time in whole seconds since the Unix epoch, when the platform can
/// represent it.
fn mtime_of(secs: i64) -> Option<std::time::SystemTime> {
    let d = std::time::Duration::from_secs(secs.unsigned_abs());
    match secs >= 0 {
        true => std::time::UNIX_EPOCH.checked_add(d),
        false => std::time::UNIX_EPOCH.checked_sub(d),
    }
}

fn os(what: &str, rel: &str, e: io::Error) -> String {
    format!("{what} {}: {e}", escape(rel))
}

fn refuse_link(rel: &str) -> String {
    format!(
        "refusing to follow the symlink {} inside the output directory",
        escape(rel)
    )
}

fn not_a_dir(rel: &str) -> String {
    format!("{} exists and is not a directory", escape(rel))
}

fn not_regular(rel: &str) -> String {
    format!("{} is not a regular file", escape(rel))
}

/// A failed open of an existing name: `O_NOFOLLOW` answers a symlink with `ELOOP`, and
/// a non-blocking open of a FIFO without reader or of a socket fails with `ENXIO`.
fn open_failed(rel: &str, e: io::Error) -> String {
    #[cfg(unix)]
    match e.raw_os_error() {
        Some(libc::ELOOP) => return refuse_link(rel),
        Some(libc::ENXIO) => return not_regular(rel),
        _ => {}
    }
    os("cannot open", rel, e)
}

/// What a name below the output directory is (symlinks not followed).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    File,
    Dir,
    Symlink,
    Other,
}

/// What is known of a name below the output directory.
#[derive(Debug, Clone, Copy)]
struct Meta {
    kind: Kind,
    len: u64,
    /// The device holding it (where the platform's sync needs it).
    #[cfg_attr(not(target_os = "linux"), allow(dead_code))]
    dev: u64,
}

/// An open partial file.
#[derive(Debug)]
struct Writer {
    file: File,
    /// Whether the session-wide sync makes it durable (else it is synced as it closes).
    covered_by_sync: bool,
}

#[cfg(unix)]
fn write_at(f: &File, offset: u64, data: &[u8]) -> io::Result<()> {
    std::os::unix::fs::FileExt::write_all_at(f, data, offset)
}

#[cfg(not(unix))]
fn write_at(mut f: &File, offset: u64, data: &[u8]) -> io::Result<()> {
    use std::io::{Seek, SeekFrom, Write};
    f.seek(SeekFrom::Start(offset))?;
    f.write_all(data)
}

#[cfg(unix)]
fn read_at(f: &File, offset: u64, buf: &mut [u8]) -> io::Result<()> {
    std::os::unix::fs::FileExt::read_exact_at(f, buf, offset)
}

#[cfg(not(unix))]
fn read_at(mut f: &File, offset: u64, buf: &mut [u8]) -> io::Result<()> {
    use std::io::{Read, Seek, SeekFrom};
    f.seek(SeekFrom::Start(offset))?;
    f.read_exact(buf)
}

impl ReceiveFiles {
    /// File access below `root`, which must exist.
    pub(crate) fn new(root: std::path::PathBuf) -> Self {
        ReceiveFiles {
            tree: Tree::new(root),
            slots: HashMap::new(),
            stdout: None,
        }
    }

    /// Write the one received file to `out` (standard output) instead of a directory.
    pub(crate) fn to_stdout(out: Box<dyn io::Write + Send>) -> Self {
        ReceiveFiles {
            stdout: Some(StdoutSink {
                out,
                file: None,
                written: 0,
            }),
            ..ReceiveFiles::new(std::path::PathBuf::from("."))
        }
    }

    /// Find the directory of `path`, creating what is missing when `create`; `None`
    /// when it does not exist and `create` is false. With `recheck`, directories kept
    /// open since before the last sync are checked to still be where they were opened.
    fn place(&mut self, path: &SafePath, create: bool, recheck: bool) -> Outcome<Option<Place>> {
        let name = path.file_name();
        let part = part_name(name);
        let rel = path.as_str();
        // The longest path used below the output directory: to the final or partial name.
        self.tree
            .check_length(rel, rel.len() - name.len() + name.len().max(part.len()))?;
        let dir = self.tree.dir_of(path, create, recheck)?;
        Ok(dir.map(|dir| Place {
            dir,
            name: name.to_owned(),
            part,
            rel: rel.to_owned(),
        }))
    }

    fn slot(&mut self, file: usize) -> &mut Slot {
        self.slots.entry(file).or_default()
    }

    fn stat(&mut self, file: usize, path: SafePath) -> Outcome<Option<LocalCopy>> {
        let place = self.place(&path, false, false)?;
        let slot = self.slot(file);
        slot.path = Some(path);
        slot.found_complete = None;
        let Some(place) = place else {
            return Ok(None);
        };
        let found = match self.tree.lstat(&place.dir, &place.part) {
            Ok(m) if m.kind == Kind::Symlink => return Err(refuse_link(&place.part_rel())),
            Ok(m) if m.kind == Kind::File => Some(LocalCopy {
                size: m.len,
                complete: false,
            }),
            Ok(_) => return Err(not_regular(&place.part_rel())),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                match self.tree.lstat(&place.dir, &place.name) {
                    Ok(m) if m.kind == Kind::Symlink => return Err(refuse_link(&place.rel)),
                    Ok(m) if m.kind == Kind::File => Some(LocalCopy {
                        size: m.len,
                        complete: true,
                    }),
                    Ok(_) => None,
                    Err(e) if e.kind() == io::ErrorKind::NotFound => None,
                    Err(e) => return Err(os("cannot inspect", &place.rel, e)),
                }
            }
            Err(e) => return Err(os("cannot inspect", &place.part_rel(), e)),
        };
        self.slot(file).found_complete = found.map(|f| f.complete);
        Ok(found)
    }

    fn read_back(&mut self, file: usize, offset: u64, len: usize) -> Outcome<Bytes> {
        let slot = self.slots.get(&file).ok_or("read-back before stat")?;
        let path = slot.path.clone().ok_or("read-back before stat")?;
        let complete = slot
            .found_complete
            .ok_or("read-back of a file that was not found")?;
        if slot.reader.is_none() {
            let place = self
                .place(&path, false, false)?
                .ok_or("the local copy disappeared")?;
            let (name, rel) = match complete {
                true => (&place.name, place.rel.clone()),
                false => (&place.part, place.part_rel()),
            };
            let (f, _) = self.tree.open_regular(&place.dir, name, &rel, false)?;
            self.slot(file).reader = Some(f);
        }
        let f = self.slot(file).reader.as_ref().ok_or("no reader")?;
        let mut buf = vec![0u8; len];
        read_at(f, offset, &mut buf).map_err(|e| os("cannot read", path.as_str(), e))?;
        Ok(Bytes::from(buf))
    }

    /// The writer of the partial file, given the outcome of creating it exclusively:
    /// the common case, a name not taken, needs nothing more; an older partial file is
    /// truncated only once it is known to be a regular file.
    fn part_writer(&self, place: &Place, created: io::Result<Option<Writer>>) -> Outcome<Writer> {
        let part_rel = place.part_rel();
        match created {
            Ok(Some(w)) => return Ok(w),
            Ok(None) => {}
            Err(e) => return Err(os("cannot open", &part_rel, e)),
        }
        let (f, meta) = self
            .tree
            .open_regular(&place.dir, &place.part, &part_rel, true)?;
        f.set_len(0)
            .map_err(|e| os("cannot truncate", &part_rel, e))?;
        Ok(self.tree.writer(f, &meta))
    }

    fn open(&mut self, file: usize, path: SafePath, append_from: u64, size: u64) -> Outcome<()> {
        let mut place = self
            .place(&path, true, false)?
            .ok_or("directory not created")?;
        let complete = {
            let slot = self.slot(file);
            slot.reader = None;
            slot.path = Some(path.clone());
            slot.found_complete
        };
        let part_rel = place.part_rel();
        let writer = if append_from == 0 {
            let created = match self.tree.create_new(&place.dir, &place.part) {
                // A directory kept open was removed meanwhile: walk (and create) again.
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    self.tree.forget();
                    place = self
                        .place(&path, true, false)?
                        .ok_or("directory not created")?;
                    self.tree.create_new(&place.dir, &place.part)
                }
                created => created,
            };
            self.part_writer(&place, created)?
        } else {
            let (writer, len) = if complete == Some(true) {
                // Continue a complete (shorter) file: copy it to the partial name first,
                // so the final name stays intact until the new content is verified.
                let (mut src, _) =
                    self.tree
                        .open_regular(&place.dir, &place.name, &place.rel, false)?;
                let created = self.tree.create_new(&place.dir, &place.part);
                let mut w = self.part_writer(&place, created)?;
                io::copy(&mut src, &mut w.file).map_err(|e| os("cannot copy", &place.rel, e))?;
                let len = w
                    .file
                    .metadata()
                    .map_err(|e| os("cannot inspect", &part_rel, e))?
                    .len();
                (w, len)
            } else {
                let (f, meta) = self
                    .tree
                    .open_regular(&place.dir, &place.part, &part_rel, true)?;
                (self.tree.writer(f, &meta), meta.len)
            };
            if len != append_from {
                return Err(format!(
                    "the local copy has {len} bytes where {append_from} were expected (did it change during the transfer?)"
                ));
            }
            writer
        };
        crate::partials::record_total(&writer.file, size);
        self.slot(file).writer = Some(writer);
        Ok(())
    }

    fn write(&mut self, file: usize, offset: u64, data: &[u8]) -> Outcome<()> {
        let slot = self.slots.get(&file).ok_or("write before open")?;
        let w = slot.writer.as_ref().ok_or("write before open")?;
        write_at(&w.file, offset, data).map_err(|e| {
            let rel = slot.path.as_ref().map_or("?", |p| p.as_str());
            os("cannot write", rel, e)
        })
    }

    /// The file is complete: close it. Partial files on another filesystem than the
    /// output directory (a mount below it) are synced here, since the session-wide
    /// [`sync`](Self::sync) covers the output directory's filesystem only.
    fn close(&mut self, file: usize) -> Outcome<()> {
        let slot = self.slots.get_mut(&file).ok_or("close before open")?;
        let writer = slot.writer.take().ok_or("close before open")?;
        if !writer.covered_by_sync {
            let rel = slot.path.as_ref().map_or("?", |p| p.as_str());
            writer
                .file
                .sync_all()
                .map_err(|e| os("cannot sync", rel, e))?;
        }
        Ok(())
    }

    /// Make every partial file of the session durable before any is renamed.
    fn sync(&mut self) -> Outcome<()> {
        self.tree.sync()
    }

    /// Rename the partial file into place.
    /// Put the partial file in place; false when `keep_existing` kept a different file
    /// already there (the partial file is then removed).
    fn commit(&mut self, file: usize, path: SafePath, keep_existing: bool) -> Outcome<bool> {
        self.slots.remove(&file);
        // A directory swapped for a symlink since the open is refused.
        let place = self
            .place(&path, false, true)?
            .ok_or_else(|| format!("the directory of {} disappeared", escape(path.as_str())))?;
        match self.tree.lstat(&place.dir, &place.part) {
            Ok(m) if m.kind == Kind::File => {}
            Ok(_) => return Err(not_regular(&place.part_rel())),
            Err(e) => return Err(os("cannot inspect", &place.part_rel(), e)),
        }
        // Most final names are new: one rename that refuses to replace settles them.
        match self.tree.rename_new(&place.dir, &place.part, &place.name) {
            Ok(true) => return Ok(true),
            Ok(false) => {}
            Err(e) => return Err(os("cannot rename into place", &place.rel, e)),
        }
        match self.tree.lstat(&place.dir, &place.name) {
            Ok(m) if m.kind == Kind::Symlink => return Err(refuse_link(&place.rel)),
            Ok(m) if m.kind == Kind::Dir => {
                return Err(format!("{} exists and is a directory", escape(&place.rel)))
            }
            Ok(m) if m.kind == Kind::File && keep_existing && !self.same_content(&place)? => {
                self.tree
                    .remove(&place.dir, &place.part)
                    .map_err(|e| os("cannot remove", &place.part_rel(), e))?;
                return Ok(false);
            }
            _ => {}
        }
        // Replaces what is there; a symlink put there meanwhile is replaced, not followed.
        self.tree
            .rename(&place.dir, &place.part, &place.name)
            .map_err(|e| os("cannot rename into place", &place.rel, e))?;
        Ok(true)
    }

    /// Extension `metadata`: give the files their modes and times, create the missing
    /// directories, then date the directories (creating one dates its parent).
    /// Whatever cannot be done is noted, and the rest goes on.
    fn apply_metadata(
        &mut self,
        files: Vec<(SafePath, Attrs)>,
        dirs: Vec<(SafePath, Option<i64>)>,
    ) -> Notes {
        let mut notes = Notes::default();
        for (path, a) in &files {
            if let Err(why) = self.apply_to_file(path, *a) {
                notes.push(path.as_str(), why);
            }
        }
        let mut made = Vec::with_capacity(dirs.len());
        for (path, mtime) in dirs {
            match self.dir_itself(&path, true) {
                Ok(Some(_)) => made.push((path, mtime)),
                Ok(None) => {}
                Err(why) => notes.push(path.as_str(), why),
            }
        }
        for (path, mtime) in made {
            let Some(t) = mtime else {
                continue;
            };
            let dated = self.dir_itself(&path, false).and_then(|dir| match dir {
                Some(dir) => self.tree.set_time(&dir, path.as_str(), mtime_of(t)),
                None => Ok(()),
            });
            if let Err(why) = dated {
                notes.push(path.as_str(), why);
            }
        }
        notes
    }

    /// The directory `path` itself, created with its missing parents when `create`.
    fn dir_itself(&mut self, path: &SafePath, create: bool) -> Outcome<Option<Dir>> {
        // The directory holding a name inside `path` is `path`.
        let inside = SafePath::parse(&format!("{}/d", path.as_str()))
            .map_err(|why| format!("{}: {why}", escape(path.as_str())))?;
        Ok(self.place(&inside, create, true)?.map(|p| p.dir))
    }

    /// Give the file in place under `path` its mode and time, through a descriptor
    /// opened without following a symlink.
    fn apply_to_file(&mut self, path: &SafePath, a: Attrs) -> Outcome<()> {
        let place = self
            .place(path, false, false)?
            .ok_or_else(|| format!("the directory of {} disappeared", escape(path.as_str())))?;
        let (f, _) = self
            .tree
            .open_regular(&place.dir, &place.name, &place.rel, false)?;
        if let Some(t) = a.mtime {
            let t = mtime_of(t).ok_or("its modification time cannot be represented here")?;
            f.set_modified(t)
                .map_err(|e| os("cannot set the time of", &place.rel, e))?;
        }
        #[cfg(unix)]
        if let Some(mode) = a.mode {
            use std::os::unix::fs::PermissionsExt;
            let mode = mode & p2p_copy_core::metadata::MODE_MASK;
            f.set_permissions(std::fs::Permissions::from_mode(mode))
                .map_err(|e| os("cannot set the mode of", &place.rel, e))?;
        }
        Ok(())
    }

    /// Whether the partial file and the file under the final name hold the same bytes.
    fn same_content(&self, place: &Place) -> Outcome<bool> {
        use std::io::Read;
        let part_rel = place.part_rel();
        let (mut new, new_meta) =
            self.tree
                .open_regular(&place.dir, &place.part, &part_rel, false)?;
        let (mut old, old_meta) =
            self.tree
                .open_regular(&place.dir, &place.name, &place.rel, false)?;
        if new_meta.len != old_meta.len {
            return Ok(false);
        }
        let (mut a, mut b) = (vec![0u8; 64 * 1024], vec![0u8; 64 * 1024]);
        loop {
            let n = new
                .read(&mut a)
                .map_err(|e| os("cannot read", &part_rel, e))?;
            if n == 0 {
                return Ok(true);
            }
            old.read_exact(&mut b[..n])
                .map_err(|e| os("cannot read", &place.rel, e))?;
            if a[..n] != b[..n] {
                return Ok(false);
            }
        }
    }
}

/// Directories below the output directory, held open (Linux).
#[cfg(target_os = "linux")]
mod tree {
    use std::collections::HashMap;
    use std::fs::File;
    use std::io;
    use std::os::fd::OwnedFd;
    use std::path::PathBuf;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    use p2p_copy_core::path::{escape, SafePath};
    use rustix::fs::{AtFlags, FileType, Mode, OFlags, RenameFlags, Stat};
    use rustix::io::Errno;

    use super::{
        not_a_dir, not_regular, open_failed, os, refuse_link, Kind, Meta, Outcome, Writer,
    };

    /// Directory descriptors kept open by all receiving sessions of the process together:
    /// a tree of many directories, or many parallel sessions, must not run the process
    /// out of descriptors. Past it a session makes room among its own, or walks again.
    const MAX_KEPT_DIRS: usize = 256;

    /// Directory descriptors kept now, by all sessions.
    static KEPT_DIRS: AtomicUsize = AtomicUsize::new(0);

    /// An open directory: the output directory or one below it.
    #[derive(Debug, Clone)]
    pub(super) struct Dir(Arc<Opened>);

    #[derive(Debug)]
    struct Opened {
        fd: OwnedFd,
        dev: u64,
        ino: u64,
    }

    #[derive(Debug)]
    struct Kept {
        dir: Dir,
        /// Checked to still be where it was opened since the last sync.
        rechecked: bool,
    }

    /// The output directory and the directories below it a session has opened, by
    /// relative path.
    #[derive(Debug)]
    pub(super) struct Tree {
        root: PathBuf,
        /// The output directory, opened at first use.
        top: Option<Dir>,
        kept: HashMap<String, Kept>,
    }

    /// Device and inode: the kernel's types differ between architectures.
    #[allow(clippy::useless_conversion)]
    fn ids(st: &Stat) -> (u64, u64) {
        (u64::from(st.st_dev), u64::from(st.st_ino))
    }

    fn meta(st: &Stat) -> Meta {
        let kind = match FileType::from_raw_mode(st.st_mode) {
            FileType::RegularFile => Kind::File,
            FileType::Directory => Kind::Dir,
            FileType::Symlink => Kind::Symlink,
            _ => Kind::Other,
        };
        Meta {
            kind,
            len: u64::try_from(st.st_size).unwrap_or(0),
            dev: ids(st).0,
        }
    }

    fn opened(fd: OwnedFd) -> io::Result<Dir> {
        let (dev, ino) = ids(&rustix::fs::fstat(&fd)?);
        Ok(Dir(Arc::new(Opened { fd, dev, ino })))
    }

    /// A directory refuses a symlink or a file in its place (`O_NOFOLLOW` and
    /// `O_DIRECTORY` answer with `ELOOP` or `ENOTDIR`): say which it was.
    fn not_opened(parent: &Dir, name: &str, rel: &str, e: Errno) -> String {
        match rustix::fs::statat(&parent.0.fd, name, AtFlags::SYMLINK_NOFOLLOW) {
            Ok(st) => match meta(&st).kind {
                Kind::Symlink => refuse_link(rel),
                Kind::Dir => os("cannot open directory", rel, e.into()),
                Kind::File | Kind::Other => not_a_dir(rel),
            },
            Err(_) => os("cannot open directory", rel, e.into()),
        }
    }

    /// Open the directory `name` of `parent` without following a symlink, creating it
    /// when missing and `create`.
    fn open_child(parent: &Dir, name: &str, rel: &str, create: bool) -> Outcome<Option<Dir>> {
        let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
        let open = || rustix::fs::openat(&parent.0.fd, name, flags, Mode::empty());
        let fd = match open() {
            Ok(fd) => fd,
            Err(Errno::NOENT) if !create => return Ok(None),
            Err(Errno::NOENT) => {
                match rustix::fs::mkdirat(&parent.0.fd, name, Mode::from_raw_mode(0o777)) {
                    // Another session may have created it meanwhile: open what is there.
                    Ok(()) | Err(Errno::EXIST) => {}
                    Err(e) => return Err(os("cannot create directory", rel, e.into())),
                }
                open().map_err(|e| not_opened(parent, name, rel, e))?
            }
            Err(e) => return Err(not_opened(parent, name, rel, e)),
        };
        opened(fd)
            .map(Some)
            .map_err(|e| os("cannot inspect", rel, e))
    }

    /// Whether the directory `name` of `parent` is still `kept`; a symlink or anything
    /// else in its place is refused.
    fn still_there(parent: &Dir, name: &str, rel: &str, kept: &Dir) -> Outcome<bool> {
        match rustix::fs::statat(&parent.0.fd, name, AtFlags::SYMLINK_NOFOLLOW) {
            Ok(st) => match meta(&st).kind {
                Kind::Symlink => Err(refuse_link(rel)),
                Kind::Dir if ids(&st) == (kept.0.dev, kept.0.ino) => Ok(true),
                Kind::Dir => Err(format!(
                    "{} was replaced by another directory during the transfer",
                    escape(rel)
                )),
                Kind::File | Kind::Other => Err(not_a_dir(rel)),
            },
            Err(Errno::NOENT) => Ok(false),
            Err(e) => Err(os("cannot inspect", rel, e.into())),
        }
    }

    impl Tree {
        pub(super) fn new(root: PathBuf) -> Tree {
            Tree {
                root,
                top: None,
                kept: HashMap::new(),
            }
        }

        /// The output directory (a symlink there is followed: the user named it).
        fn top(&mut self) -> Outcome<Dir> {
            if let Some(top) = &self.top {
                return Ok(top.clone());
            }
            let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC;
            let fail = |e: io::Error| {
                format!(
                    "cannot open the output directory {}: {e}",
                    self.root.display()
                )
            };
            let fd =
                rustix::fs::open(&self.root, flags, Mode::empty()).map_err(|e| fail(e.into()))?;
            let top = opened(fd).map_err(fail)?;
            self.top = Some(top.clone());
            Ok(top)
        }

        /// The directory holding `path`, opened component by component from the output
        /// directory unless kept from earlier; `None` when missing and not `create`.
        /// With `recheck`, each kept directory not checked since the last sync is
        /// checked to still be where it was opened.
        pub(super) fn dir_of(
            &mut self,
            path: &SafePath,
            create: bool,
            recheck: bool,
        ) -> Outcome<Option<Dir>> {
            let Some((parent, _)) = path.as_str().rsplit_once('/') else {
                return self.top().map(Some);
            };
            if !recheck {
                if let Some(k) = self.kept.get(parent) {
                    return Ok(Some(k.dir.clone()));
                }
            }
            let mut dir = self.top()?;
            for rel in path.ancestors() {
                let name = rel.rsplit('/').next().unwrap_or(rel);
                if let Some(k) = self.kept.get_mut(rel) {
                    if recheck && !k.rechecked {
                        if !still_there(&dir, name, rel, &k.dir)? {
                            return Ok(None);
                        }
                        k.rechecked = true;
                    }
                    dir = k.dir.clone();
                    continue;
                }
                let Some(child) = open_child(&dir, name, rel, create)? else {
                    return Ok(None);
                };
                // Opened just now: as good as a recheck.
                self.keep(rel, child.clone(), recheck);
                dir = child;
            }
            Ok(Some(dir))
        }

        fn keep(&mut self, rel: &str, dir: Dir, rechecked: bool) {
            let reserved = KEPT_DIRS
                .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                    (n < MAX_KEPT_DIRS).then_some(n + 1)
                })
                .is_ok();
            if !reserved {
                // Give up one of this session's own (any), or keep none.
                let Some(victim) = self.kept.keys().next().cloned() else {
                    return;
                };
                self.kept.remove(&victim);
            }
            if self
                .kept
                .insert(rel.to_owned(), Kept { dir, rechecked })
                .is_some()
            {
                KEPT_DIRS.fetch_sub(1, Ordering::AcqRel);
            }
        }

        /// Close every kept directory (one was removed): later requests walk again.
        pub(super) fn forget(&mut self) {
            KEPT_DIRS.fetch_sub(self.kept.len(), Ordering::AcqRel);
            self.kept.clear();
        }

        /// What `name` in `dir` is, symlinks not followed.
        pub(super) fn lstat(&self, dir: &Dir, name: &str) -> io::Result<Meta> {
            let st = rustix::fs::statat(&dir.0.fd, name, AtFlags::SYMLINK_NOFOLLOW)?;
            Ok(meta(&st))
        }

        /// Refuse a path of `len` bytes below the output directory that the operating
        /// system could not name from the working directory (`PATH_MAX`), as a walk by
        /// path does: such a tree would be out of reach for other tools.
        pub(super) fn check_length(&self, rel: &str, len: usize) -> Outcome<()> {
            let max = usize::try_from(libc::PATH_MAX).unwrap_or(4096);
            if self.root.as_os_str().len() + 1 + len < max {
                return Ok(());
            }
            let e = io::Error::from_raw_os_error(libc::ENAMETOOLONG);
            Err(os("cannot open", rel, e))
        }

        /// Whether the session-wide sync reaches a file on `dev`.
        fn covers(&self, dev: u64) -> bool {
            self.top.as_ref().is_some_and(|t| t.0.dev == dev)
        }

        /// Create `name` in `dir` for writing; `None` when the name is taken (by
        /// anything, a symlink included).
        pub(super) fn create_new(&self, dir: &Dir, name: &str) -> io::Result<Option<Writer>> {
            let flags =
                OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC;
            match rustix::fs::openat(&dir.0.fd, name, flags, Mode::from_raw_mode(0o666)) {
                // A file created in a directory lives on the directory's filesystem.
                Ok(fd) => Ok(Some(Writer {
                    file: File::from(fd),
                    covered_by_sync: self.covers(dir.0.dev),
                })),
                Err(Errno::EXIST) => Ok(None),
                Err(e) => Err(e.into()),
            }
        }

        /// Open the existing regular file `name` in `dir`; a symlink, FIFO, device or
        /// anything else is refused.
        pub(super) fn open_regular(
            &self,
            dir: &Dir,
            name: &str,
            rel: &str,
            write: bool,
        ) -> Outcome<(File, Meta)> {
            let access = if write {
                OFlags::WRONLY
            } else {
                OFlags::RDONLY
            };
            // Non-blocking: opening a FIFO would otherwise wait for its other end.
            let flags = access | OFlags::NOFOLLOW | OFlags::CLOEXEC | OFlags::NONBLOCK;
            let fd = rustix::fs::openat(&dir.0.fd, name, flags, Mode::empty())
                .map_err(|e| open_failed(rel, e.into()))?;
            let st = rustix::fs::fstat(&fd).map_err(|e| os("cannot inspect", rel, e.into()))?;
            let m = meta(&st);
            if m.kind != Kind::File {
                return Err(not_regular(rel));
            }
            // Back to ordinary blocking I/O.
            rustix::fs::fcntl_setfl(&fd, OFlags::empty())
                .map_err(|e| os("cannot open", rel, e.into()))?;
            Ok((File::from(fd), m))
        }

        /// The writer of a partial file opened by [`open_regular`](Self::open_regular).
        pub(super) fn writer(&self, file: File, meta: &Meta) -> Writer {
            Writer {
                file,
                covered_by_sync: self.covers(meta.dev),
            }
        }

        /// Give the directory `dir` (`rel` for messages) the modification time `t`.
        pub(super) fn set_time(
            &self,
            dir: &Dir,
            rel: &str,
            t: Option<std::time::SystemTime>,
        ) -> Outcome<()> {
            let t = t.ok_or("its modification time cannot be represented here")?;
            let fd = dir
                .0
                .fd
                .try_clone()
                .map_err(|e| os("cannot set the time of", rel, e))?;
            File::from(fd)
                .set_modified(t)
                .map_err(|e| os("cannot set the time of", rel, e))
        }

        /// Rename `from` to `to` in `dir` unless `to` exists; false when it does (or
        /// when the filesystem cannot tell, so the caller looks and renames).
        pub(super) fn rename_new(&self, dir: &Dir, from: &str, to: &str) -> io::Result<bool> {
            let fd = &dir.0.fd;
            match rustix::fs::renameat_with(fd, from, fd, to, RenameFlags::NOREPLACE) {
                Ok(()) => Ok(true),
                Err(Errno::EXIST | Errno::INVAL | Errno::NOSYS) => Ok(false),
                Err(e) => Err(e.into()),
            }
        }

        /// Rename `from` to `to` in `dir`, replacing `to`.
        pub(super) fn rename(&self, dir: &Dir, from: &str, to: &str) -> io::Result<()> {
            let fd = &dir.0.fd;
            Ok(rustix::fs::renameat(fd, from, fd, to)?)
        }

        /// Remove the file `name` in `dir`.
        pub(super) fn remove(&self, dir: &Dir, name: &str) -> io::Result<()> {
            Ok(rustix::fs::unlinkat(&dir.0.fd, name, AtFlags::empty())?)
        }

        /// Sync the filesystem of the output directory (one `syncfs` instead of an
        /// `fsync` per file, which costs a journal commit each); directories are
        /// checked again before the commits that follow.
        pub(super) fn sync(&mut self) -> Outcome<()> {
            let top = self.top()?;
            rustix::fs::syncfs(&top.0.fd)
                .map_err(|e| format!("cannot sync the output directory: {}", io::Error::from(e)))?;
            for k in self.kept.values_mut() {
                k.rechecked = false;
            }
            Ok(())
        }
    }

    impl Drop for Tree {
        fn drop(&mut self) {
            self.forget();
        }
    }
}

/// Directories below the output directory, walked again by path for every request
/// (where the descriptor-relative calls are not used).
#[cfg(not(target_os = "linux"))]
mod tree {
    use std::fs::{self, File, OpenOptions};
    use std::io;
    use std::path::PathBuf;

    use p2p_copy_core::path::SafePath;

    use super::{
        not_a_dir, not_regular, open_failed, os, refuse_link, Kind, Meta, Outcome, Writer,
    };

    /// A directory: the output directory or one below it.
    #[derive(Debug, Clone)]
    pub(super) struct Dir(PathBuf);

    /// The output directory.
    #[derive(Debug)]
    pub(super) struct Tree {
        root: PathBuf,
    }

    fn meta(m: &fs::Metadata) -> Meta {
        let t = m.file_type();
        let kind = if t.is_symlink() {
            Kind::Symlink
        } else if t.is_dir() {
            Kind::Dir
        } else if t.is_file() {
            Kind::File
        } else {
            Kind::Other
        };
        Meta {
            kind,
            len: m.len(),
            dev: 0,
        }
    }

    /// Open options that refuse a symlink as the last component.
    fn no_follow(opts: &mut OpenOptions) -> &mut OpenOptions {
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            opts.custom_flags(libc::O_NOFOLLOW);
        }
        opts
    }

    impl Tree {
        pub(super) fn new(root: PathBuf) -> Tree {
            Tree { root }
        }

        /// Walk to the directory of `path` with `symlink_metadata`, creating what is
        /// missing when `create`; `None` when missing and not `create`. Every call
        /// walks again, so a recheck is implied.
        pub(super) fn dir_of(
            &mut self,
            path: &SafePath,
            create: bool,
            _recheck: bool,
        ) -> Outcome<Option<Dir>> {
            let mut dir = self.root.clone();
            for rel in path.ancestors() {
                // `rel` is a prefix of the path; its last component is the next directory.
                let comp = rel.rsplit('/').next().unwrap_or(rel);
                dir.push(comp);
                match fs::symlink_metadata(&dir) {
                    Ok(m) if m.file_type().is_symlink() => return Err(refuse_link(rel)),
                    Ok(m) if m.is_dir() => {}
                    Ok(_) => return Err(not_a_dir(rel)),
                    Err(e) if e.kind() == io::ErrorKind::NotFound => {
                        if !create {
                            return Ok(None);
                        }
                        match fs::create_dir(&dir) {
                            Ok(()) => {}
                            // Another session may have created it meanwhile: check again.
                            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                                let m = fs::symlink_metadata(&dir)
                                    .map_err(|e| os("cannot inspect", rel, e))?;
                                if m.file_type().is_symlink() {
                                    return Err(refuse_link(rel));
                                }
                                if !m.is_dir() {
                                    return Err(not_a_dir(rel));
                                }
                            }
                            Err(e) => return Err(os("cannot create directory", rel, e)),
                        }
                    }
                    Err(e) => return Err(os("cannot inspect", rel, e)),
                }
            }
            Ok(Some(Dir(dir)))
        }

        /// Nothing is kept.
        pub(super) fn forget(&mut self) {}

        /// Paths too long for the operating system fail as it is asked for them.
        pub(super) fn check_length(&self, _rel: &str, _len: usize) -> Outcome<()> {
            Ok(())
        }

        /// What `name` in `dir` is, symlinks not followed.
        pub(super) fn lstat(&self, dir: &Dir, name: &str) -> io::Result<Meta> {
            fs::symlink_metadata(dir.0.join(name)).map(|m| meta(&m))
        }

        /// Create `name` in `dir` for writing; `None` when the name is taken.
        pub(super) fn create_new(&self, dir: &Dir, name: &str) -> io::Result<Option<Writer>> {
            match no_follow(OpenOptions::new().write(true).create_new(true)).open(dir.0.join(name))
            {
                Ok(file) => Ok(Some(Writer {
                    file,
                    covered_by_sync: false,
                })),
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(None),
                Err(e) => Err(e),
            }
        }

        /// Open the existing regular file `name` in `dir`; anything else is refused.
        pub(super) fn open_regular(
            &self,
            dir: &Dir,
            name: &str,
            rel: &str,
            write: bool,
        ) -> Outcome<(File, Meta)> {
            let path = dir.0.join(name);
            // Look first: opening a FIFO would wait for its other end.
            match fs::symlink_metadata(&path).map(|m| meta(&m).kind) {
                Ok(Kind::Symlink) => return Err(refuse_link(rel)),
                Ok(Kind::Dir | Kind::Other) => return Err(not_regular(rel)),
                Ok(Kind::File) | Err(_) => {}
            }
            let mut opts = OpenOptions::new();
            if write {
                opts.write(true);
            } else {
                opts.read(true);
            }
            let f = no_follow(&mut opts)
                .open(&path)
                .map_err(|e| open_failed(rel, e))?;
            let m = meta(&f.metadata().map_err(|e| os("cannot inspect", rel, e))?);
            if m.kind != Kind::File {
                return Err(not_regular(rel));
            }
            Ok((f, m))
        }

        /// The writer of a partial file opened by [`open_regular`](Self::open_regular):
        /// synced as it closes.
        pub(super) fn writer(&self, file: File, _meta: &Meta) -> Writer {
            Writer {
                file,
                covered_by_sync: false,
            }
        }

        /// Give the directory `dir` (`rel` for messages) the modification time `t`.
        pub(super) fn set_time(
            &self,
            dir: &Dir,
            rel: &str,
            t: Option<std::time::SystemTime>,
        ) -> Outcome<()> {
            let t = t.ok_or("its modification time cannot be represented here")?;
            File::open(&dir.0)
                .and_then(|f| f.set_modified(t))
                .map_err(|e| os("cannot set the time of", rel, e))
        }

        /// Always false: the caller looks and renames.
        pub(super) fn rename_new(&self, _dir: &Dir, _from: &str, _to: &str) -> io::Result<bool> {
            Ok(false)
        }

        /// Rename `from` to `to` in `dir`, replacing `to`.
        pub(super) fn rename(&self, dir: &Dir, from: &str, to: &str) -> io::Result<()> {
            fs::rename(dir.0.join(from), dir.0.join(to))
        }

        /// Remove the file `name` in `dir`.
        pub(super) fn remove(&self, dir: &Dir, name: &str) -> io::Result<()> {
            fs::remove_file(dir.0.join(name))
        }

        /// Every file was synced as it was closed.
        pub(super) fn sync(&mut self) -> Outcome<()> {
            Ok(())
        }
    }
}

impl FileIo for ReceiveFiles {
    type Request = IoRequest;
    type Completion = IoCompletion;

    fn run(&mut self, req: IoRequest) -> Option<IoCompletion> {
        if let Some(sink) = self.stdout.as_mut() {
            return Some(sink.run(req));
        }
        let (file, r) = match req {
            IoRequest::Stat { file, path } => (
                file,
                self.stat(file, path)
                    .map(|found| IoCompletion::Stat { file, found }),
            ),
            IoRequest::ReadBack { file, offset, len } => (
                file,
                self.read_back(file, offset, len)
                    .map(|data| IoCompletion::ReadBack { file, offset, data }),
            ),
            IoRequest::Open {
                file,
                path,
                append_from,
                size,
            } => (
                file,
                self.open(file, path, append_from, size)
                    .map(|()| IoCompletion::Opened { file }),
            ),
            IoRequest::Write { file, offset, data } => (
                file,
                self.write(file, offset, &data)
                    .map(|()| IoCompletion::Written { file }),
            ),
            IoRequest::Close { file } => (
                file,
                self.close(file).map(|()| IoCompletion::Closed { file }),
            ),
            IoRequest::Sync => (0, self.sync().map(|()| IoCompletion::Synced)),
            IoRequest::Commit {
                file,
                path,
                keep_existing,
            } => {
                // A file that cannot be renamed into place (a directory holds its name)
                // leaves the others to be committed.
                return Some(match self.commit(file, path, keep_existing) {
                    Ok(true) => IoCompletion::Committed { file },
                    Ok(false) => IoCompletion::Kept { file },
                    Err(reason) => IoCompletion::CommitFailed { file, reason },
                });
            }
            IoRequest::ApplyMetadata { files, dirs } => {
                return Some(IoCompletion::MetadataApplied {
                    not_kept: self.apply_metadata(files, dirs),
                });
            }
        };
        Some(r.unwrap_or_else(|reason| IoCompletion::Failed { file, reason }))
    }

    fn is_failure(done: &IoCompletion) -> bool {
        matches!(done, IoCompletion::Failed { .. })
    }

    fn inline_ok(&self) -> bool {
        self.stdout.is_none()
    }
}

#[cfg(all(test, unix))]
mod tests {
    use super::*;
    use std::fs;
    use std::os::unix::fs::symlink;

    fn path(p: &str) -> SafePath {
        SafePath::parse(p).unwrap()
    }

    fn run(files: &mut ReceiveFiles, req: IoRequest) -> IoCompletion {
        files.run(req).expect("every receiver request is answered")
    }

    fn failure(done: IoCompletion) -> String {
        match done {
            IoCompletion::Failed { reason, .. } | IoCompletion::CommitFailed { reason, .. } => {
                reason
            }
            other => panic!("expected a failure, got {other:?}"),
        }
    }

    fn receive_whole(
        files: &mut ReceiveFiles,
        file: usize,
        p: &str,
        data: &[u8],
    ) -> Vec<IoCompletion> {
        let reqs = vec![
            IoRequest::Open {
                file,
                path: path(p),
                append_from: 0,
                size: 0,
            },
            IoRequest::Write {
                file,
                offset: 0,
                data: Bytes::copy_from_slice(data),
            },
            IoRequest::Close { file },
            IoRequest::Sync,
            IoRequest::Commit {
                file,
                path: path(p),
                keep_existing: false,
            },
        ];
        reqs.into_iter().map(|r| run(files, r)).collect()
    }

    #[test]
    fn takes_a_name_of_the_full_255_bytes() {
        let t = tempfile::tempdir().unwrap();
        let name = "m".repeat(255);
        let mut f = ReceiveFiles::new(t.path().to_path_buf());
        let done = receive_whole(&mut f, 0, &name, b"255");
        assert_eq!(
            done.last(),
            Some(&IoCompletion::Committed { file: 0 }),
            "{done:?}"
        );
        assert_eq!(fs::read(t.path().join(&name)).unwrap(), b"255");
    }

    #[test]
    fn writes_a_partial_file_and_renames_it_on_commit() {
        let t = tempfile::tempdir().unwrap();
        let mut f = ReceiveFiles::new(t.path().to_path_buf());
        run(
            &mut f,
            IoRequest::Open {
                file: 0,
                path: path("d/e/x"),
                append_from: 0,
                size: 0,
            },
        );
        run(
            &mut f,
            IoRequest::Write {
                file: 0,
                offset: 0,
                data: Bytes::from_static(b"abc"),
            },
        );
        run(&mut f, IoRequest::Close { file: 0 });
        assert_eq!(
            fs::read(t.path().join("d/e/.x.p2p-copy-part")).unwrap(),
            b"abc"
        );
        assert!(
            !t.path().join("d/e/x").exists(),
            "nothing under the final name before commit"
        );
        assert_eq!(run(&mut f, IoRequest::Sync), IoCompletion::Synced);
        assert_eq!(
            run(
                &mut f,
                IoRequest::Commit {
                    file: 0,
                    path: path("d/e/x"),
                    keep_existing: false,
                }
            ),
            IoCompletion::Committed { file: 0 }
        );
        assert_eq!(fs::read(t.path().join("d/e/x")).unwrap(), b"abc");
        assert!(!t.path().join("d/e/.x.p2p-copy-part").exists());
    }

    #[test]
    fn refuses_a_symlinked_directory_pointing_outside() {
        let t = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        symlink(outside.path(), t.path().join("d")).unwrap();
        let mut f = ReceiveFiles::new(t.path().to_path_buf());
        let why = failure(run(
            &mut f,
            IoRequest::Open {
                file: 0,
                path: path("d/x"),
                append_from: 0,
                size: 0,
            },
        ));
        assert!(why.contains("symlink") && why.contains('d'), "{why}");
        let why = failure(run(
            &mut f,
            IoRequest::Stat {
                file: 1,
                path: path("d/y"),
            },
        ));
        assert!(why.contains("symlink"), "{why}");
        assert_eq!(
            fs::read_dir(outside.path()).unwrap().count(),
            0,
            "nothing written outside"
        );
    }

    #[test]
    fn refuses_a_directory_swapped_for_a_symlink_during_the_transfer() {
        let t = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        let mut f = ReceiveFiles::new(t.path().to_path_buf());
        run(
            &mut f,
            IoRequest::Open {
                file: 0,
                path: path("d/x"),
                append_from: 0,
                size: 0,
            },
        );
        run(&mut f, IoRequest::Close { file: 0 });
        fs::rename(t.path().join("d"), t.path().join("moved")).unwrap();
        symlink(outside.path(), t.path().join("d")).unwrap();
        let why = failure(run(
            &mut f,
            IoRequest::Commit {
                file: 0,
                path: path("d/x"),
                keep_existing: false,
            },
        ));
        assert!(why.contains("symlink"), "{why}");
        assert_eq!(fs::read_dir(outside.path()).unwrap().count(), 0);
    }

    #[test]
    fn refuses_a_symlink_at_the_final_or_partial_name() {
        let t = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        let victim = outside.path().join("victim");
        fs::write(&victim, b"keep").unwrap();
        symlink(&victim, t.path().join("x")).unwrap();
        symlink(&victim, t.path().join(".y.p2p-copy-part")).unwrap();
        let mut f = ReceiveFiles::new(t.path().to_path_buf());
        let done = receive_whole(&mut f, 0, "x", b"new");
        assert!(failure(done.last().unwrap().clone()).contains("symlink"));
        let why = failure(run(
            &mut f,
            IoRequest::Open {
                file: 1,
                path: path("y"),
                append_from: 0,
                size: 0,
            },
        ));
        assert!(why.contains("y"), "{why}");
        assert_eq!(fs::read(&victim).unwrap(), b"keep");
        assert!(fs::symlink_metadata(t.path().join("x"))
            .unwrap()
            .file_type()
            .is_symlink());
    }

    #[test]
    fn stat_prefers_the_partial_file_and_reads_back_its_bytes() {
        let t = tempfile::tempdir().unwrap();
        fs::write(t.path().join("x"), b"complete").unwrap();
        fs::write(t.path().join(".x.p2p-copy-part"), b"part").unwrap();
        fs::write(t.path().join("only"), b"whole").unwrap();
        let mut f = ReceiveFiles::new(t.path().to_path_buf());
        let found = |size, complete| Some(LocalCopy { size, complete });
        assert_eq!(
            run(
                &mut f,
                IoRequest::Stat {
                    file: 0,
                    path: path("x")
                }
            ),
            IoCompletion::Stat {
                file: 0,
                found: found(4, false)
            }
        );
        assert_eq!(
            run(
                &mut f,
                IoRequest::Stat {
                    file: 1,
                    path: path("only")
                }
            ),
            IoCompletion::Stat {
                file: 1,
                found: found(5, true)
            }
        );
        assert_eq!(
            run(
                &mut f,
                IoRequest::Stat {
                    file: 2,
                    path: path("none/z")
                }
            ),
            IoCompletion::Stat {
                file: 2,
                found: None
            }
        );
        assert_eq!(
            run(
                &mut f,
                IoRequest::ReadBack {
                    file: 0,
                    offset: 1,
                    len: 3
                }
            ),
            IoCompletion::ReadBack {
                file: 0,
                offset: 1,
                data: Bytes::from_static(b"art")
            }
        );
    }

    #[test]
    fn appending_to_a_complete_file_keeps_it_intact_until_commit() {
        let t = tempfile::tempdir().unwrap();
        fs::write(t.path().join("x"), b"abc").unwrap();
        let mut f = ReceiveFiles::new(t.path().to_path_buf());
        run(
            &mut f,
            IoRequest::Stat {
                file: 0,
                path: path("x"),
            },
        );
        assert_eq!(
            run(
                &mut f,
                IoRequest::Open {
                    file: 0,
                    path: path("x"),
                    append_from: 3,
                    size: 0,
                }
            ),
            IoCompletion::Opened { file: 0 }
        );
        run(
            &mut f,
            IoRequest::Write {
                file: 0,
                offset: 3,
                data: Bytes::from_static(b"def"),
            },
        );
        run(&mut f, IoRequest::Close { file: 0 });
        assert_eq!(
            fs::read(t.path().join("x")).unwrap(),
            b"abc",
            "final name untouched"
        );
        run(&mut f, IoRequest::Sync);
        run(
            &mut f,
            IoRequest::Commit {
                file: 0,
                path: path("x"),
                keep_existing: false,
            },
        );
        assert_eq!(fs::read(t.path().join("x")).unwrap(), b"abcdef");
    }

    #[test]
    fn append_refuses_a_copy_of_another_length() {
        let t = tempfile::tempdir().unwrap();
        fs::write(t.path().join(".x.p2p-copy-part"), b"ab").unwrap();
        let mut f = ReceiveFiles::new(t.path().to_path_buf());
        run(
            &mut f,
            IoRequest::Stat {
                file: 0,
                path: path("x"),
            },
        );
        let why = failure(run(
            &mut f,
            IoRequest::Open {
                file: 0,
                path: path("x"),
                append_from: 5,
                size: 0,
            },
        ));
        assert!(why.contains("2 bytes") && why.contains('5'), "{why}");
    }

    #[test]
    fn a_new_transfer_never_truncates_the_final_name() {
        let t = tempfile::tempdir().unwrap();
        fs::write(t.path().join("x"), b"old content").unwrap();
        let mut f = ReceiveFiles::new(t.path().to_path_buf());
        run(
            &mut f,
            IoRequest::Open {
                file: 0,
                path: path("x"),
                append_from: 0,
                size: 0,
            },
        );
        run(
            &mut f,
            IoRequest::Write {
                file: 0,
                offset: 0,
                data: Bytes::from_static(b"ne"),
            },
        );
        // The session fails here: no Close, no Commit.
        drop(f);
        assert_eq!(fs::read(t.path().join("x")).unwrap(), b"old content");
        assert_eq!(fs::read(t.path().join(".x.p2p-copy-part")).unwrap(), b"ne");
    }

    /// Receive `data` as `p` and commit it, asserting every step succeeded.
    fn receive_ok(files: &mut ReceiveFiles, file: usize, p: &str, data: &[u8]) {
        let done = receive_whole(files, file, p, data);
        assert_eq!(
            done.last(),
            Some(&IoCompletion::Committed { file }),
            "{p}: {done:?}"
        );
    }

    #[cfg(target_os = "linux")]
    fn mkfifo(at: &std::path::Path) {
        rustix::fs::mknodat(
            rustix::fs::CWD,
            at,
            rustix::fs::FileType::Fifo,
            rustix::fs::Mode::from_raw_mode(0o600),
            0,
        )
        .unwrap();
    }

    /// Run `req` on a thread, failing the test if it does not answer within 10 s.
    #[cfg(target_os = "linux")]
    fn run_bounded(mut files: ReceiveFiles, req: IoRequest) -> (ReceiveFiles, IoCompletion) {
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let done = run(&mut files, req);
            let _ = tx.send((files, done));
        });
        rx.recv_timeout(std::time::Duration::from_secs(10))
            .expect("the request blocked")
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn refuses_a_fifo_at_the_partial_or_final_name_without_blocking() {
        let t = tempfile::tempdir().unwrap();
        mkfifo(&t.path().join(".x.p2p-copy-part"));
        mkfifo(&t.path().join("y"));
        let files = ReceiveFiles::new(t.path().to_path_buf());
        let (files, done) = run_bounded(
            files,
            IoRequest::Open {
                file: 0,
                path: path("x"),
                append_from: 0,
                size: 0,
            },
        );
        let why = failure(done);
        assert!(
            why.contains("x.p2p-copy-part") && why.contains("not a regular file"),
            "{why}"
        );
        let (files, done) = run_bounded(
            files,
            IoRequest::Stat {
                file: 1,
                path: path("x"),
            },
        );
        assert!(failure(done).contains("not a regular file"));
        // A FIFO under the final name is no resumable copy, and cannot be appended to.
        let (files, done) = run_bounded(
            files,
            IoRequest::Stat {
                file: 2,
                path: path("y"),
            },
        );
        assert_eq!(
            done,
            IoCompletion::Stat {
                file: 2,
                found: None
            }
        );
        let (_, done) = run_bounded(
            files,
            IoRequest::Open {
                file: 2,
                path: path("y"),
                append_from: 4,
                size: 0,
            },
        );
        assert!(failure(done).contains("cannot open"));
    }

    #[test]
    fn a_new_transfer_truncates_an_older_partial_file() {
        let t = tempfile::tempdir().unwrap();
        fs::write(t.path().join(".x.p2p-copy-part"), b"a much longer old part").unwrap();
        let mut f = ReceiveFiles::new(t.path().to_path_buf());
        receive_ok(&mut f, 0, "x", b"new");
        assert_eq!(fs::read(t.path().join("x")).unwrap(), b"new");
        assert!(!t.path().join(".x.p2p-copy-part").exists());
    }

    #[test]
    fn refuses_to_replace_a_directory_with_a_file() {
        let t = tempfile::tempdir().unwrap();
        fs::create_dir(t.path().join("x")).unwrap();
        let mut f = ReceiveFiles::new(t.path().to_path_buf());
        let done = receive_whole(&mut f, 0, "x", b"new");
        let why = failure(done.last().unwrap().clone());
        assert!(why.contains("x exists and is a directory"), "{why}");
        assert!(t.path().join("x").is_dir());
    }

    #[test]
    fn a_directory_swapped_before_a_later_file_keeps_everything_inside() {
        let t = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        let mut f = ReceiveFiles::new(t.path().to_path_buf());
        receive_ok(&mut f, 0, "d/e/first", b"1");
        // A later file of the same directory, after the directory was swapped for a
        // link to the outside.
        fs::rename(t.path().join("d"), t.path().join("moved")).unwrap();
        symlink(outside.path(), t.path().join("d")).unwrap();
        let done = receive_whole(&mut f, 1, "d/e/second", b"2");
        let why = failure(done.last().unwrap().clone());
        assert!(why.contains("symlink") && why.contains('d'), "{why}");
        assert_eq!(fs::read_dir(outside.path()).unwrap().count(), 0);
        assert!(
            !t.path().join("moved/e/second").exists(),
            "put in place anyway"
        );
        // A new session walks again and refuses the link at once.
        let mut f = ReceiveFiles::new(t.path().to_path_buf());
        let why = failure(receive_whole(&mut f, 0, "d/e/third", b"3").remove(0));
        assert!(why.contains("symlink"), "{why}");
        assert_eq!(fs::read_dir(outside.path()).unwrap().count(), 0);
    }

    /// Only where directories are held open: a walk by path cannot tell the directory
    /// apart from another put in its place.
    #[cfg(target_os = "linux")]
    #[test]
    fn a_directory_replaced_by_another_is_refused_at_commit() {
        let t = tempfile::tempdir().unwrap();
        let mut f = ReceiveFiles::new(t.path().to_path_buf());
        let done: Vec<_> = [
            IoRequest::Open {
                file: 0,
                path: path("d/x"),
                append_from: 0,
                size: 0,
            },
            IoRequest::Close { file: 0 },
        ]
        .into_iter()
        .map(|r| run(&mut f, r))
        .collect();
        assert_eq!(done[1], IoCompletion::Closed { file: 0 });
        fs::rename(t.path().join("d"), t.path().join("moved")).unwrap();
        fs::create_dir(t.path().join("d")).unwrap();
        fs::write(t.path().join("d/.x.p2p-copy-part"), b"planted").unwrap();
        run(&mut f, IoRequest::Sync);
        let why = failure(run(
            &mut f,
            IoRequest::Commit {
                file: 0,
                path: path("d/x"),
                keep_existing: false,
            },
        ));
        assert!(why.contains('d'), "{why}");
        assert!(!t.path().join("d/x").exists() && !t.path().join("moved/x").exists());
    }

    #[test]
    fn recreates_a_directory_removed_between_files() {
        let t = tempfile::tempdir().unwrap();
        let mut f = ReceiveFiles::new(t.path().to_path_buf());
        receive_ok(&mut f, 0, "d/x", b"1");
        fs::remove_file(t.path().join("d/x")).unwrap();
        fs::remove_dir(t.path().join("d")).unwrap();
        receive_ok(&mut f, 1, "d/y", b"2");
        assert_eq!(fs::read(t.path().join("d/y")).unwrap(), b"2");
    }

    #[test]
    fn receives_into_more_directories_than_are_kept_open() {
        let t = tempfile::tempdir().unwrap();
        let mut f = ReceiveFiles::new(t.path().to_path_buf());
        let names: Vec<String> = (0..300).map(|i| format!("a/d{i}/f")).collect();
        for (i, p) in names.iter().enumerate() {
            let done: Vec<_> = [
                IoRequest::Open {
                    file: i,
                    path: path(p),
                    append_from: 0,
                    size: 0,
                },
                IoRequest::Write {
                    file: i,
                    offset: 0,
                    data: Bytes::from(p.clone()),
                },
                IoRequest::Close { file: i },
            ]
            .into_iter()
            .map(|r| run(&mut f, r))
            .collect();
            assert_eq!(done[2], IoCompletion::Closed { file: i }, "{p}: {done:?}");
        }
        assert_eq!(run(&mut f, IoRequest::Sync), IoCompletion::Synced);
        for (i, p) in names.iter().enumerate() {
            let done = run(
                &mut f,
                IoRequest::Commit {
                    file: i,
                    path: path(p),
                    keep_existing: false,
                },
            );
            assert_eq!(done, IoCompletion::Committed { file: i }, "{p}");
        }
        for p in &names {
            assert_eq!(fs::read(t.path().join(p)).unwrap(), p.as_bytes());
        }
    }

    /// Where directories are held open (a walk by path fails only once it gets there).
    #[cfg(target_os = "linux")]
    #[test]
    fn refuses_a_path_beyond_the_operating_systems_limit_before_creating_anything() {
        let t = tempfile::tempdir().unwrap();
        let mut f = ReceiveFiles::new(t.path().to_path_buf());
        let deep = vec!["q".repeat(60); 67].join("/");
        let why = failure(receive_whole(&mut f, 0, &deep, b"os").remove(0));
        assert!(why.contains("cannot open"), "{why}");
        assert_eq!(fs::read_dir(t.path()).unwrap().count(), 0);
    }
}
