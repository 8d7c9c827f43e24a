//! The receiver's file access: partial files beside their final names, renamed into
//! place once verified; nothing outside the output directory, no symlink followed.
//!
//! Every directory below the output directory is walked (and created) one component at
//! a time with `symlink_metadata`, and files are opened with `O_NOFOLLOW` where the
//! platform has it, so a symlink planted inside the output directory (before or during
//! the transfer) is refused instead of followed.

use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use bytes::Bytes;
use p2p_copy_core::path::{escape, SafePath};
use p2p_copy_core::receiver::{IoCompletion, IoRequest, LocalCopy};

use crate::machine::FileIo;

use p2p_copy_core::path::partial_name as part_name;

#[derive(Debug, Default)]
struct Slot {
    /// Whether the resumable copy Stat found is the complete file (else the partial one).
    found_complete: Option<bool>,
    reader: Option<File>,
    writer: Option<File>,
    path: Option<SafePath>,
}

/// File access for one receiving session.
#[derive(Debug)]
pub(crate) struct ReceiveFiles {
    root: PathBuf,
    slots: HashMap<usize, Slot>,
}

/// Where a manifest path lives: its directory, final name and partial name.
struct Place {
    dir: PathBuf,
    name: String,
    /// The relative path, for messages.
    rel: String,
}

impl Place {
    fn final_path(&self) -> PathBuf {
        self.dir.join(&self.name)
    }

    fn part_path(&self) -> PathBuf {
        self.dir.join(part_name(&self.name))
    }

    fn part_rel(&self) -> String {
        match self.rel.rsplit_once('/') {
            Some((parent, _)) => format!("{parent}/{}", part_name(&self.name)),
            None => part_name(&self.name),
        }
    }
}

type Outcome<T> = Result<T, String>;

fn os(what: &str, rel: &str, e: io::Error) -> String {
    format!("{what} {}: {e}", escape(rel))
}

fn refuse_link(rel: &str) -> String {
    format!(
        "refusing to follow the symlink {} inside the output directory",
        escape(rel)
    )
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

fn open_read(path: &Path, rel: &str) -> Outcome<File> {
    let f = no_follow(OpenOptions::new().read(true))
        .open(path)
        .map_err(|e| os("cannot open", rel, e))?;
    regular(&f, rel)?;
    Ok(f)
}

fn open_write(path: &Path, rel: &str, truncate: bool) -> Outcome<File> {
    let f = no_follow(
        OpenOptions::new()
            .write(true)
            .create(truncate)
            .truncate(truncate),
    )
    .open(path)
    .map_err(|e| os("cannot open", rel, e))?;
    regular(&f, rel)?;
    Ok(f)
}

fn regular(f: &File, rel: &str) -> Outcome<()> {
    let meta = f.metadata().map_err(|e| os("cannot inspect", rel, e))?;
    if meta.is_file() {
        Ok(())
    } else {
        Err(format!("{} is not a regular file", escape(rel)))
    }
}

impl ReceiveFiles {
    /// File access below `root`, which must exist.
    pub(crate) fn new(root: PathBuf) -> Self {
        ReceiveFiles {
            root,
            slots: HashMap::new(),
        }
    }

    /// Walk to the directory of `path`, creating what is missing when `create`; `None`
    /// when it does not exist and `create` is false.
    fn place(&self, path: &SafePath, create: bool) -> Outcome<Option<Place>> {
        let mut dir = self.root.clone();
        for rel in path.ancestors() {
            // `rel` is a prefix of the path; its last component is the next directory.
            let comp = rel.rsplit('/').next().unwrap_or(rel);
            dir.push(comp);
            match fs::symlink_metadata(&dir) {
                Ok(m) if m.file_type().is_symlink() => return Err(refuse_link(rel)),
                Ok(m) if m.is_dir() => {}
                Ok(_) => return Err(format!("{} exists and is not a directory", escape(rel))),
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
                                return Err(format!(
                                    "{} exists and is not a directory",
                                    escape(rel)
                                ));
                            }
                        }
                        Err(e) => return Err(os("cannot create directory", rel, e)),
                    }
                }
                Err(e) => return Err(os("cannot inspect", rel, e)),
            }
        }
        // A SafePath has at least one component.
        let name = path.components().last().unwrap_or_default().to_owned();
        Ok(Some(Place {
            dir,
            name,
            rel: path.as_str().to_owned(),
        }))
    }

    fn slot(&mut self, file: usize) -> &mut Slot {
        self.slots.entry(file).or_default()
    }

    fn stat(&mut self, file: usize, path: SafePath) -> Outcome<Option<LocalCopy>> {
        let place = self.place(&path, false)?;
        let slot = self.slot(file);
        slot.path = Some(path);
        slot.found_complete = None;
        let Some(place) = place else {
            return Ok(None);
        };
        let found = match fs::symlink_metadata(place.part_path()) {
            Ok(m) if m.file_type().is_symlink() => return Err(refuse_link(&place.part_rel())),
            Ok(m) if m.is_file() => Some(LocalCopy {
                size: m.len(),
                complete: false,
            }),
            Ok(_) => {
                return Err(format!(
                    "{} is not a regular file",
                    escape(&place.part_rel())
                ))
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                match fs::symlink_metadata(place.final_path()) {
                    Ok(m) if m.file_type().is_symlink() => return Err(refuse_link(&place.rel)),
                    Ok(m) if m.is_file() => Some(LocalCopy {
                        size: m.len(),
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
                .place(&path, false)?
                .ok_or("the local copy disappeared")?;
            let (p, rel) = match complete {
                true => (place.final_path(), place.rel.clone()),
                false => (place.part_path(), place.part_rel()),
            };
            let f = open_read(&p, &rel)?;
            self.slot(file).reader = Some(f);
        }
        let f = self.slot(file).reader.as_mut().ok_or("no reader")?;
        let mut buf = vec![0u8; len];
        f.seek(SeekFrom::Start(offset))
            .and_then(|_| f.read_exact(&mut buf))
            .map_err(|e| os("cannot read", path.as_str(), e))?;
        Ok(Bytes::from(buf))
    }

    fn open(&mut self, file: usize, path: SafePath, append_from: u64) -> Outcome<()> {
        let place = self.place(&path, true)?.ok_or("directory not created")?;
        let complete = {
            let slot = self.slot(file);
            slot.reader = None;
            slot.path = Some(path);
            slot.found_complete
        };
        let part = place.part_path();
        let part_rel = place.part_rel();
        let writer = if append_from == 0 {
            open_write(&part, &part_rel, true)?
        } else {
            if complete == Some(true) {
                // Continue a complete (shorter) file: copy it to the partial name first,
                // so the final name stays intact until the new content is verified.
                let mut src = open_read(&place.final_path(), &place.rel)?;
                let mut dst = open_write(&part, &part_rel, true)?;
                io::copy(&mut src, &mut dst).map_err(|e| os("cannot copy", &place.rel, e))?;
            }
            let w = open_write(&part, &part_rel, false)?;
            let len = w
                .metadata()
                .map_err(|e| os("cannot inspect", &part_rel, e))?
                .len();
            if len != append_from {
                return Err(format!(
                    "the local copy has {len} bytes where {append_from} were expected (did it change during the transfer?)"
                ));
            }
            w
        };
        self.slot(file).writer = Some(writer);
        Ok(())
    }

    fn write(&mut self, file: usize, offset: u64, data: &[u8]) -> Outcome<()> {
        let slot = self.slots.get_mut(&file).ok_or("write before open")?;
        let rel = slot.path.as_ref().map_or("?", |p| p.as_str()).to_owned();
        let w = slot.writer.as_mut().ok_or("write before open")?;
        w.seek(SeekFrom::Start(offset))
            .and_then(|_| w.write_all(data))
            .map_err(|e| os("cannot write", &rel, e))
    }

    /// The file is complete: close it. Partial files on another filesystem than the
    /// output directory (a mount below it) are synced here, since the session-wide
    /// [`sync`](Self::sync) covers the output directory's filesystem only.
    fn close(&mut self, file: usize) -> Outcome<()> {
        let slot = self.slots.get_mut(&file).ok_or("close before open")?;
        let rel = slot.path.as_ref().map_or("?", |p| p.as_str()).to_owned();
        let writer = slot.writer.take().ok_or("close before open")?;
        if !durability::covered_by_sync(&self.root, &writer) {
            writer.sync_all().map_err(|e| os("cannot sync", &rel, e))?;
        }
        Ok(())
    }

    /// Make every partial file of the session durable before any is renamed.
    fn sync(&mut self) -> Outcome<()> {
        durability::sync_all_below(&self.root)
            .map_err(|e| format!("cannot sync the output directory: {e}"))
    }

    /// Rename the partial file into place.
    fn commit(&mut self, file: usize, path: SafePath) -> Outcome<()> {
        self.slots.remove(&file);
        // Walk again: a directory swapped for a symlink since the open is refused.
        let place = self
            .place(&path, false)?
            .ok_or_else(|| format!("the directory of {} disappeared", escape(path.as_str())))?;
        let target = place.final_path();
        match fs::symlink_metadata(&target) {
            Ok(m) if m.file_type().is_symlink() => return Err(refuse_link(&place.rel)),
            Ok(m) if m.is_dir() => {
                return Err(format!("{} exists and is a directory", escape(&place.rel)))
            }
            _ => {}
        }
        let part = place.part_path();
        match fs::symlink_metadata(&part) {
            Ok(m) if m.is_file() => {}
            Ok(_) => {
                return Err(format!(
                    "{} is not a regular file",
                    escape(&place.part_rel())
                ))
            }
            Err(e) => return Err(os("cannot inspect", &place.part_rel(), e)),
        }
        fs::rename(part, &target).map_err(|e| os("cannot rename into place", &place.rel, e))
    }
}

/// How partial files are made durable before they are renamed into place.
mod durability {
    use std::fs::File;
    use std::io;
    use std::path::Path;

    /// Whether [`sync_all_below`] on `root` also syncs `file`: on Linux, when both are
    /// on the same filesystem.
    #[cfg(target_os = "linux")]
    pub(super) fn covered_by_sync(root: &Path, file: &File) -> bool {
        use std::os::unix::fs::MetadataExt;
        match (std::fs::metadata(root), file.metadata()) {
            (Ok(r), Ok(f)) => r.dev() == f.dev(),
            _ => false,
        }
    }

    /// Sync the filesystem holding `root` (one `syncfs` instead of an `fsync` per file,
    /// which costs a journal commit each).
    #[cfg(target_os = "linux")]
    pub(super) fn sync_all_below(root: &Path) -> io::Result<()> {
        let dir = File::open(root)?;
        rustix::fs::syncfs(&dir).map_err(io::Error::from)
    }

    /// Elsewhere every file is synced as it is closed.
    #[cfg(not(target_os = "linux"))]
    pub(super) fn covered_by_sync(_root: &Path, _file: &File) -> bool {
        false
    }

    /// Elsewhere every file was synced as it was closed.
    #[cfg(not(target_os = "linux"))]
    pub(super) fn sync_all_below(_root: &Path) -> io::Result<()> {
        Ok(())
    }
}

impl FileIo for ReceiveFiles {
    type Request = IoRequest;
    type Completion = IoCompletion;

    fn run(&mut self, req: IoRequest) -> Option<IoCompletion> {
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
            } => (
                file,
                self.open(file, path, append_from)
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
            IoRequest::Commit { file, path } => (
                file,
                self.commit(file, path)
                    .map(|()| IoCompletion::Committed { file }),
            ),
        };
        Some(r.unwrap_or_else(|reason| IoCompletion::Failed { file, reason }))
    }

    fn is_failure(done: &IoCompletion) -> bool {
        matches!(done, IoCompletion::Failed { .. })
    }
}

#[cfg(all(test, unix))]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    fn path(p: &str) -> SafePath {
        SafePath::parse(p).unwrap()
    }

    fn run(files: &mut ReceiveFiles, req: IoRequest) -> IoCompletion {
        files.run(req).expect("every receiver request is answered")
    }

    fn failure(done: IoCompletion) -> String {
        match done {
            IoCompletion::Failed { reason, .. } => reason,
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
                    path: path("d/e/x")
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
                    append_from: 3
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
}
