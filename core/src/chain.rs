//! The chained hash that protects every file's pieces and describes resumable prefixes.
//!
//! v1 chains SHA-256 over the pieces themselves. The fast data path between two peers of
//! this project (extension [`EXT_FAST`](crate::wire::EXT_FAST)) chains BLAKE3 over each
//! piece's own hash, so that the pieces can be hashed on any thread, in any order
//! ([`piece_hash`]), and only the short link is made in order ([`Chain::link`]).

use sha2::{Digest, Sha256};

/// Which hash a chain uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ChainKind {
    /// v1: c(-1) is empty and c(k) = SHA-256(c(k-1) ‖ P(k)).
    #[default]
    Sha256,
    /// The fast data path: c(-1) is 32 zero bytes and c(k) = BLAKE3(c(k-1) ‖ h(k)),
    /// with h(k) = BLAKE3(P(k)) ([`piece_hash`]).
    Blake3,
}

/// A running chain of one file's pieces.
#[derive(Debug, Clone, Default)]
pub struct Chain {
    kind: ChainKind,
    prev: Option<[u8; 32]>,
}

/// BLAKE3 of one piece: h(k) of the fast chain, the part that may run on any thread.
pub fn piece_hash(piece: &[u8]) -> [u8; 32] {
    blake3::hash(piece).into()
}

impl Chain {
    /// A v1 (SHA-256) chain before its first piece.
    pub fn new() -> Self {
        Self::default()
    }

    /// A chain of the given kind before its first piece.
    pub fn of(kind: ChainKind) -> Self {
        Chain { kind, prev: None }
    }

    /// A chain of the given kind that stands at `value` (`None`: before its first
    /// piece), to fold in the piece after the one that gave `value`.
    pub fn at(kind: ChainKind, value: Option<[u8; 32]>) -> Self {
        Chain { kind, prev: value }
    }

    /// Which hash the chain uses.
    pub fn kind(&self) -> ChainKind {
        self.kind
    }

    /// Fold in the next piece and return the new chain value.
    pub fn next(&mut self, piece: &[u8]) -> [u8; 32] {
        match self.kind {
            ChainKind::Sha256 => {
                let mut h = Sha256::new();
                if let Some(prev) = &self.prev {
                    h.update(prev);
                }
                h.update(piece);
                let out: [u8; 32] = h.finalize().into();
                self.prev = Some(out);
                out
            }
            ChainKind::Blake3 => self.link(&piece_hash(piece)),
        }
    }

    /// Fold in the next piece of a BLAKE3 chain by its [`piece_hash`], computed
    /// elsewhere. (On a SHA-256 chain, which cannot be split so, this treats the hash as
    /// the piece; callers use it only on BLAKE3 chains.)
    pub fn link(&mut self, piece_hash: &[u8; 32]) -> [u8; 32] {
        if self.kind == ChainKind::Sha256 {
            return self.next(piece_hash);
        }
        let mut h = blake3::Hasher::new();
        h.update(&self.prev.unwrap_or([0; 32]));
        h.update(piece_hash);
        let out: [u8; 32] = h.finalize().into();
        self.prev = Some(out);
        out
    }

    /// The current value: empty (`None`) before the first piece.
    pub fn value(&self) -> Option<[u8; 32]> {
        self.prev
    }
}

/// The v1 resume chain of a whole byte string: the chain over its 1 MiB pieces.
///
/// An empty input gives the empty chain, `None`.
pub fn resume_chain(data: &[u8]) -> Option<[u8; 32]> {
    resume_chain_of(ChainKind::Sha256, data)
}

/// The resume chain of a whole byte string with the given hash.
pub fn resume_chain_of(kind: ChainKind, data: &[u8]) -> Option<[u8; 32]> {
    let mut c = Chain::of(kind);
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
        assert_eq!(Chain::at(ChainKind::Sha256, Some(first)).next(b"b"), second);
        assert_eq!(Chain::at(ChainKind::Sha256, None).next(b"a"), first);
        let mut fast = Chain::of(ChainKind::Blake3);
        let first = fast.next(b"a");
        let second = fast.next(b"b");
        assert_eq!(Chain::at(ChainKind::Blake3, Some(first)).next(b"b"), second);
        assert_eq!(Chain::at(ChainKind::Blake3, None).next(b"a"), first);
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

    #[test]
    fn blake3_chain_links_piece_hashes_from_zero() {
        let mut c = Chain::of(ChainKind::Blake3);
        let h0 = piece_hash(b"abc");
        let mut buf = [0u8; 64];
        buf[32..].copy_from_slice(&h0);
        let c0: [u8; 32] = blake3::hash(&buf).into();
        assert_eq!(c.next(b"abc"), c0);
        let h1 = piece_hash(b"");
        buf[..32].copy_from_slice(&c0);
        buf[32..].copy_from_slice(&h1);
        assert_eq!(c.link(&h1), <[u8; 32]>::from(blake3::hash(&buf)));
        assert_eq!(resume_chain_of(ChainKind::Blake3, b"abc"), Some(c0));
    }

    #[test]
    fn blake3_and_sha256_chains_differ() {
        assert_ne!(
            resume_chain_of(ChainKind::Blake3, b"abc"),
            resume_chain_of(ChainKind::Sha256, b"abc")
        );
    }
}
