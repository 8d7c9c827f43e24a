//! The chained SHA-256 that protects every file's pieces and describes resumable prefixes.

use sha2::{Digest, Sha256};

/// A running chain: c(-1) is empty and c(k) = SHA-256(c(k-1) ‖ P(k)).
#[derive(Debug, Clone, Default)]
pub struct Chain {
    prev: Option<[u8; 32]>,
}

impl Chain {
    /// A chain before its first piece.
    pub fn new() -> Self {
        Self::default()
    }

    /// A chain that stands at `value` (`None`: before its first piece), to fold in the
    /// piece after the one that gave `value`.
    pub fn after(value: Option<[u8; 32]>) -> Self {
        Chain { prev: value }
    }

    /// Fold in the next piece and return the new chain value.
    pub fn next(&mut self, piece: &[u8]) -> [u8; 32] {
        let mut h = Sha256::new();
        if let Some(prev) = &self.prev {
            h.update(prev);
        }
        h.update(piece);
        let out: [u8; 32] = h.finalize().into();
        self.prev = Some(out);
        out
    }

    /// The current value: empty (`None`) before the first piece.
    pub fn value(&self) -> Option<[u8; 32]> {
        self.prev
    }
}

/// The resume chain of a whole byte string: the chain over its 1 MiB pieces.
///
/// An empty input gives the empty chain, `None`.
pub fn resume_chain(data: &[u8]) -> Option<[u8; 32]> {
    let mut c = Chain::new();
    for piece in data.chunks(crate::wire::CHUNK_SIZE) {
        c.next(piece);
    }
    c.value()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_value_is_plain_sha256_of_the_piece() {
        let mut c = Chain::new();
        let expected: [u8; 32] = Sha256::digest(b"abc").into();
        assert_eq!(c.next(b"abc"), expected);
    }

    #[test]
    fn a_chain_resumed_at_a_value_continues_it() {
        let mut c = Chain::new();
        let first = c.next(b"a");
        let second = c.next(b"b");
        assert_eq!(Chain::after(Some(first)).next(b"b"), second);
        assert_eq!(Chain::after(None).next(b"a"), first);
    }

    #[test]
    fn second_value_hashes_previous_and_piece() {
        let mut c = Chain::new();
        let first = c.next(b"a");
        let mut h = Sha256::new();
        h.update(first);
        h.update(b"b");
        let expected: [u8; 32] = h.finalize().into();
        assert_eq!(c.next(b"b"), expected);
    }
}
