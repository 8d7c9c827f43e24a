//! An ordered read pipeline: several piece reads in flight, completed in any order,
//! consumed in offset order.

use std::collections::BTreeMap;

use bytes::Bytes;

use crate::wire::CHUNK_SIZE;

/// Reads `[start, end)` in pieces of [`CHUNK_SIZE`].
#[derive(Debug)]
pub(crate) struct ReadPipe<T = Bytes> {
    next_issue: u64,
    end: u64,
    requested: BTreeMap<u64, usize>,
    arrived: BTreeMap<u64, T>,
    next_take: u64,
}

impl<T: AsRef<[u8]>> ReadPipe<T> {
    pub(crate) fn new(start: u64, end: u64) -> Self {
        ReadPipe {
            next_issue: start,
            end,
            requested: BTreeMap::new(),
            arrived: BTreeMap::new(),
            next_take: start,
        }
    }

    /// The next read to ask for, if any is left.
    pub(crate) fn next_request(&mut self) -> Option<(u64, usize)> {
        if self.next_issue >= self.end {
            return None;
        }
        let offset = self.next_issue;
        let len = (self.end - offset).min(CHUNK_SIZE as u64) as usize;
        self.next_issue += len as u64;
        self.requested.insert(offset, len);
        Some((offset, len))
    }

    /// Record a completed read.
    ///
    /// # Errors
    /// A message when no read of that offset is outstanding or the length differs.
    pub(crate) fn complete(&mut self, offset: u64, data: T) -> Result<(), String> {
        let Some(len) = self.requested.remove(&offset) else {
            return Err(format!(
                "completion for a read at offset {offset} nobody asked for"
            ));
        };
        let got = data.as_ref().len();
        if got != len {
            return Err(format!(
                "read {got} bytes at offset {offset} where {len} were expected (file changed while being read?)"
            ));
        }
        self.arrived.insert(offset, data);
        Ok(())
    }

    /// Record a completed read of a source of unknown length (a pipe): a read that
    /// returns fewer bytes than asked for marks the end, and reads asked for beyond the
    /// end must come back empty.
    ///
    /// # Errors
    /// A message when no read of that offset is outstanding, the read is longer than
    /// asked, or data comes after the end.
    pub(crate) fn complete_stream(&mut self, offset: u64, data: T) -> Result<(), String> {
        let Some(len) = self.requested.remove(&offset) else {
            return Err(format!(
                "completion for a read at offset {offset} nobody asked for"
            ));
        };
        let got = data.as_ref().len();
        if got > len {
            return Err(format!(
                "read {got} bytes at offset {offset} where at most {len} were asked for"
            ));
        }
        if offset >= self.end {
            if got > 0 {
                return Err(format!("{got} more bytes after the end of the input"));
            }
            return Ok(());
        }
        if got < len {
            self.end = offset + got as u64;
            self.next_issue = self.next_issue.min(self.end);
            if self
                .arrived
                .range(self.end..)
                .any(|(_, d)| !d.as_ref().is_empty())
            {
                return Err("more bytes after the end of the input".to_owned());
            }
        }
        if got > 0 {
            self.arrived.insert(offset, data);
        }
        Ok(())
    }

    /// The next piece in order, if it has arrived.
    pub(crate) fn take(&mut self) -> Option<(u64, T)> {
        let data = self.arrived.remove(&self.next_take)?;
        let offset = self.next_take;
        self.next_take += data.as_ref().len() as u64;
        Some((offset, data))
    }

    /// Pieces asked for or arrived but not taken.
    pub(crate) fn held(&self) -> usize {
        self.requested.len() + self.arrived.len()
    }

    /// Whether every piece was taken.
    pub(crate) fn is_done(&self) -> bool {
        self.next_take >= self.end
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn completes_out_of_order_and_takes_in_order() {
        let total = 2 * CHUNK_SIZE as u64 + 5;
        let mut p = ReadPipe::<Bytes>::new(0, total);
        let a = p.next_request().unwrap();
        let b = p.next_request().unwrap();
        let c = p.next_request().unwrap();
        assert_eq!(p.next_request(), None);
        assert_eq!(c, (2 * CHUNK_SIZE as u64, 5));
        p.complete(c.0, Bytes::from(vec![3; 5])).unwrap();
        assert!(p.take().is_none());
        p.complete(a.0, Bytes::from(vec![1; a.1])).unwrap();
        p.complete(b.0, Bytes::from(vec![2; b.1])).unwrap();
        assert_eq!(p.take().unwrap().0, 0);
        assert_eq!(p.take().unwrap().0, CHUNK_SIZE as u64);
        assert_eq!(p.take().unwrap().1.len(), 5);
        assert!(p.is_done());
    }

    #[test]
    fn a_stream_ends_at_its_first_short_read() {
        let mut p = ReadPipe::<Bytes>::new(0, u64::MAX);
        let a = p.next_request().unwrap();
        let b = p.next_request().unwrap();
        let c = p.next_request().unwrap();
        p.complete_stream(a.0, Bytes::from(vec![1; a.1])).unwrap();
        p.complete_stream(b.0, Bytes::from(vec![2; 7])).unwrap();
        assert!(p.complete_stream(c.0, Bytes::new()).is_ok());
        assert_eq!(p.next_request(), None);
        assert_eq!(p.take().unwrap().1.len(), CHUNK_SIZE);
        assert!(!p.is_done());
        assert_eq!(p.take().unwrap().1.len(), 7);
        assert!(p.is_done());
    }

    #[test]
    fn a_stream_refuses_data_after_its_end() {
        let mut p = ReadPipe::<Bytes>::new(0, u64::MAX);
        let a = p.next_request().unwrap();
        let b = p.next_request().unwrap();
        p.complete_stream(a.0, Bytes::from_static(b"end")).unwrap();
        assert!(p.complete_stream(b.0, Bytes::from_static(b"x")).is_err());
        let mut empty = ReadPipe::<Bytes>::new(0, u64::MAX);
        let a = empty.next_request().unwrap();
        empty.complete_stream(a.0, Bytes::new()).unwrap();
        assert!(empty.is_done());
        assert!(empty.take().is_none());
    }

    #[test]
    fn refuses_unasked_and_short_reads() {
        let mut p = ReadPipe::<Bytes>::new(0, 10);
        assert!(p.complete(0, Bytes::new()).is_err());
        let (o, _) = p.next_request().unwrap();
        assert!(p.complete(o, Bytes::from_static(b"short")).is_err());
    }
}
