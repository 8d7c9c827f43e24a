//! The sender's file access: reads at the offsets the core asks for.

use std::collections::HashMap;
use std::fs::File;
use std::io;
use std::path::PathBuf;

use p2p_copy_core::sender::{IoCompletion, IoRequest};
use p2p_copy_core::wire::PieceBuf;

use crate::machine::FileIo;

/// Open files by index into the list given to the sender, opened on first read.
#[derive(Debug)]
pub(crate) struct SendFiles {
    locals: Vec<PathBuf>,
    open: HashMap<usize, File>,
}

impl SendFiles {
    pub(crate) fn new(locals: Vec<PathBuf>) -> Self {
        SendFiles {
            locals,
            open: HashMap::new(),
        }
    }

    fn read(&mut self, file: usize, offset: u64, len: usize) -> io::Result<PieceBuf> {
        let f = match self.open.entry(file) {
            std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
            std::collections::hash_map::Entry::Vacant(e) => {
                let path = self.locals.get(file).ok_or_else(|| {
                    io::Error::new(io::ErrorKind::InvalidInput, "read of a file never listed")
                })?;
                e.insert(File::open(path)?)
            }
        };
        let mut buf = PieceBuf::zeroed(len);
        read_exact_at(f, buf.payload_mut(), offset).map_err(|e| match e.kind() {
            io::ErrorKind::UnexpectedEof => io::Error::new(
                e.kind(),
                "the file is shorter than when it was listed (did it change while being sent?)",
            ),
            _ => e,
        })?;
        Ok(buf)
    }
}

/// Fill `buf` from `offset` (one positioned read where the platform has it).
#[cfg(unix)]
fn read_exact_at(f: &mut File, buf: &mut [u8], offset: u64) -> io::Result<()> {
    std::os::unix::fs::FileExt::read_exact_at(f, buf, offset)
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

    fn is_failure(done: &IoCompletion) -> bool {
        matches!(done, IoCompletion::Failed { .. })
    }
}
