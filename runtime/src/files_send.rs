//! The sender's file access: reads at the offsets the core asks for, and the check that
//! a file is still what was listed.

use std::collections::HashMap;
use std::fs::File;
use std::io;
use std::path::PathBuf;
use std::time::SystemTime;

use p2p_copy_core::sender::{IoCompletion, IoRequest};
use p2p_copy_core::wire::{PieceBuf, DATA_HEADER_LEN};

use crate::machine::FileIo;

/// A file as it was listed.
#[derive(Debug, Clone)]
pub(crate) struct Listed {
    /// Where it is.
    pub path: PathBuf,
    /// Its size then (what the manifest announces).
    pub size: u64,
    /// Its modification time then.
    pub modified: Option<SystemTime>,
    /// Not a file on disk: read from here instead of `path`.
    pub pipe: Option<PipeData>,
}

/// Where the data of an entry that is not a file on disk comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum PipeData {
    /// Standard input, read once, in order; a short read marks its end.
    Stdin,
    /// A text held in memory.
    Text(bytes::Bytes),
}

/// Open files by index into the list given to the sender, opened on first read.
///
/// A file is compared with its listing when it is opened and again after its last
/// piece is read: a different size or modification time means it changed while being
/// sent, and its read fails with a message that says so, so a changed file is never
/// delivered as if it were complete.
#[derive(Debug)]
pub(crate) struct SendFiles {
    listed: Vec<Listed>,
    open: HashMap<usize, File>,
    /// Bytes read from standard input so far.
    stdin_read: u64,
    /// Standard input has ended.
    stdin_ended: bool,
}

impl SendFiles {
    pub(crate) fn new(listed: Vec<Listed>) -> Self {
        SendFiles {
            listed,
            open: HashMap::new(),
            stdin_read: 0,
            stdin_ended: false,
        }
    }

    /// Up to `len` bytes of standard input at `offset`, which must be where the last
    /// read ended: fewer only at its end. Blocks until the bytes are there.
    fn read_stdin(&mut self, offset: u64, len: usize) -> io::Result<PieceBuf> {
        if self.stdin_ended && offset >= self.stdin_read {
            // A read ahead past the end.
            return Ok(PieceBuf::zeroed(0));
        }
        if offset != self.stdin_read {
            return Err(io::Error::other(format!(
                "standard input is read once, in order: asked for byte {offset} after {} bytes",
                self.stdin_read
            )));
        }
        let mut buf = PieceBuf::zeroed(len);
        let got = fill(&mut io::stdin().lock(), buf.payload_mut())?;
        buf.truncate(got);
        self.stdin_read += got as u64;
        self.stdin_ended = got < len;
        Ok(buf)
    }

    fn read(&mut self, file: usize, offset: u64, len: usize) -> io::Result<PieceBuf> {
        let listed = self.listed.get(file).ok_or_else(|| {
            io::Error::new(io::ErrorKind::InvalidInput, "read of a file never listed")
        })?;
        match &listed.pipe {
            Some(PipeData::Stdin) => return self.read_stdin(offset, len),
            Some(PipeData::Text(text)) => {
                let start = usize::try_from(offset)
                    .unwrap_or(usize::MAX)
                    .min(text.len());
                let end = start.saturating_add(len).min(text.len());
                return Ok(PieceBuf::from(&text[start..end]));
            }
            None => {}
        }
        let f = match self.open.entry(file) {
            std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
            std::collections::hash_map::Entry::Vacant(e) => {
                let f = File::open(&listed.path)?;
                unchanged(&f, listed)?;
                e.insert(f)
            }
        };
        let buf = read_piece_at(f, len, offset).map_err(|e| match e.kind() {
            io::ErrorKind::UnexpectedEof => {
                io::Error::new(e.kind(), "it changed while being sent: it is shorter now")
            }
            _ => e,
        })?;
        if offset + len as u64 == listed.size {
            unchanged(f, listed)?;
        }
        Ok(buf)
    }
}

/// Fails when the open file `f` differs from its listing in size or modification time.
fn unchanged(f: &File, listed: &Listed) -> io::Result<()> {
    let now = f.metadata()?;
    if now.len() != listed.size {
        return Err(io::Error::other(format!(
            "it changed while being sent: {} bytes when listed, {} now",
            listed.size,
            now.len()
        )));
    }
    if let (Some(then), Ok(modified)) = (listed.modified, now.modified()) {
        if modified != then {
            return Err(io::Error::other(
                "it changed while being sent: it was modified after it was listed",
            ));
        }
    }
    Ok(())
}

/// Read into `buf` until it is full or the input ends; the bytes read.
fn fill(input: &mut impl io::Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut got = 0;
    while got < buf.len() {
        match input.read(&mut buf[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(got)
}

/// Fill `buf` from `offset` (one positioned read where the platform has it).
#[cfg(all(unix, not(target_os = "linux")))]
fn read_exact_at(f: &mut File, buf: &mut [u8], offset: u64) -> io::Result<()> {
    std::os::unix::fs::FileExt::read_exact_at(f, buf, offset)
}

/// `len` bytes of `f` at `offset`, read into a piece buffer that is not zeroed first:
/// the kernel writes each byte of the payload once (zeroing 1 MiB per piece cost the
/// sender about 8 % of its CPU).
#[cfg(target_os = "linux")]
fn read_piece_at(f: &mut File, len: usize, offset: u64) -> io::Result<PieceBuf> {
    let mut buf = Vec::with_capacity(DATA_HEADER_LEN + len);
    buf.resize(DATA_HEADER_LEN, 0);
    while buf.len() < DATA_HEADER_LEN + len {
        let at = offset + (buf.len() - DATA_HEADER_LEN) as u64;
        match rustix::io::pread(&*f, rustix::buffer::spare_capacity(&mut buf), at) {
            Ok(0) => {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "failed to fill whole buffer",
                ))
            }
            Ok(_) => {}
            Err(rustix::io::Errno::INTR) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(PieceBuf::from_frame(buf))
}

/// `len` bytes of `f` at `offset`.
#[cfg(not(target_os = "linux"))]
fn read_piece_at(f: &mut File, len: usize, offset: u64) -> io::Result<PieceBuf> {
    let mut buf = PieceBuf::zeroed(len);
    read_exact_at(f, buf.payload_mut(), offset)?;
    Ok(buf)
}

#[cfg(not(unix))]
fn read_exact_at(f: &mut File, buf: &mut [u8], offset: u64) -> io::Result<()> {
    use std::io::{Read, Seek, SeekFrom};
    f.seek(SeekFrom::Start(offset))?;
    f.read_exact(buf)
}

impl FileIo for SendFiles {
    type Request = IoRequest;
    type Completion = IoCompletion;

    fn run(&mut self, req: IoRequest) -> Option<IoCompletion> {
        match req {
            IoRequest::Read { file, offset, len } => Some(match self.read(file, offset, len) {
                Ok(data) => IoCompletion::Read { file, offset, data },
                Err(e) => IoCompletion::Failed {
                    file,
                    reason: e.to_string(),
                },
            }),
            IoRequest::Close { file } => {
                self.open.remove(&file);
                None
            }
        }
    }

    /// Reading never damages anything: after a failed read the worker goes on, so the
    /// sender can skip the file and send the next (`skip_errors`).
    fn is_failure(_: &IoCompletion) -> bool {
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn listed(path: PathBuf) -> Listed {
        let meta = std::fs::metadata(&path).unwrap();
        Listed {
            path,
            size: meta.len(),
            modified: meta.modified().ok(),
            pipe: None,
        }
    }

    fn read(files: &mut SendFiles, offset: u64, len: usize) -> Result<Vec<u8>, String> {
        match files.run(IoRequest::Read {
            file: 0,
            offset,
            len,
        }) {
            Some(IoCompletion::Read { data, .. }) => Ok(data.payload().to_vec()),
            Some(IoCompletion::Failed { reason, .. }) => Err(reason),
            None => panic!("a read is answered"),
        }
    }

    #[test]
    fn a_file_that_grows_after_listing_is_refused_at_its_last_piece() {
        let t = tempfile::tempdir().unwrap();
        let p = t.path().join("f");
        std::fs::write(&p, b"0123456789").unwrap();
        let mut files = SendFiles::new(vec![listed(p.clone())]);
        assert_eq!(read(&mut files, 0, 4).unwrap(), b"0123");
        let mut grow = std::fs::OpenOptions::new().append(true).open(&p).unwrap();
        std::io::Write::write_all(&mut grow, b"more").unwrap();
        let e = read(&mut files, 4, 6).unwrap_err();
        assert!(e.contains("changed while being sent"), "{e}");
    }

    #[test]
    fn a_file_modified_before_it_is_opened_is_refused_at_once() {
        let t = tempfile::tempdir().unwrap();
        let p = t.path().join("f");
        std::fs::write(&p, b"0123456789").unwrap();
        let mut l = listed(p.clone());
        l.modified = Some(SystemTime::UNIX_EPOCH);
        let mut files = SendFiles::new(vec![l]);
        let e = read(&mut files, 0, 4).unwrap_err();
        assert!(e.contains("modified after it was listed"), "{e}");
    }

    #[test]
    fn a_text_reads_from_memory_and_ends_short() {
        let text = bytes::Bytes::from_static(b"hello there");
        let mut files = SendFiles::new(vec![Listed {
            path: PathBuf::new(),
            size: text.len() as u64,
            modified: None,
            pipe: Some(PipeData::Text(text)),
        }]);
        assert_eq!(read(&mut files, 0, 5).unwrap(), b"hello");
        assert_eq!(read(&mut files, 5, 100).unwrap(), b" there");
        assert_eq!(read(&mut files, 11, 100).unwrap(), b"");
    }

    #[test]
    fn fill_gathers_short_reads_until_full_or_the_end() {
        let mut input = io::Read::chain(&b"abc"[..], &b"defgh"[..]);
        let mut buf = [0u8; 5];
        assert_eq!(fill(&mut input, &mut buf).unwrap(), 5);
        assert_eq!(&buf, b"abcde");
        assert_eq!(fill(&mut input, &mut buf).unwrap(), 3);
        assert_eq!(fill(&mut input, &mut buf).unwrap(), 0);
    }

    #[test]
    fn a_file_cut_short_after_listing_says_so_and_a_large_piece_reads_exactly() {
        let t = tempfile::tempdir().unwrap();
        let p = t.path().join("f");
        let data: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
        std::fs::write(&p, &data).unwrap();
        let mut files = SendFiles::new(vec![listed(p.clone())]);
        let mib = 1 << 20;
        assert_eq!(read(&mut files, 0, mib).unwrap(), &data[..mib]);
        assert_eq!(
            read(&mut files, mib as u64, mib).unwrap(),
            &data[mib..2 * mib]
        );
        std::fs::OpenOptions::new()
            .write(true)
            .open(&p)
            .unwrap()
            .set_len(2 * mib as u64 + 10)
            .unwrap();
        let e = read(&mut files, 2 * mib as u64, 3_000_000 - 2 * mib).unwrap_err();
        assert!(e.contains("it is shorter now"), "{e}");
    }

    #[test]
    fn an_unchanged_file_reads_whole() {
        let t = tempfile::tempdir().unwrap();
        let p = t.path().join("f");
        std::fs::write(&p, b"0123456789").unwrap();
        let mut files = SendFiles::new(vec![listed(p)]);
        assert_eq!(read(&mut files, 0, 10).unwrap(), b"0123456789");
    }
}
