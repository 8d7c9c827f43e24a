//! Code hashes and keys (Argon2id), AES-256-GCM with 32-byte nonces, the shared nonce
//! chain, and the fast data path's AES-256-GCM with 96-bit nonces ([`FastCipher`]).

use std::sync::Arc;

use aes_gcm::aead::consts::U32;
use aes_gcm::aead::{AeadInOut, KeyInit};
use aes_gcm::aes::Aes256;
use aes_gcm::{AesGcm, Nonce, Tag};
use sha2::{Digest, Sha256};

use crate::Error;

/// Salt of the code hash sent in `hello` when encrypting.
pub const CODE_HASH_SALT: &[u8] = b"code_hash used for hello-match";
/// Salt of the end-to-end key.
pub const KEY_SALT: &[u8] = b"cipher used for E2E-encryption";

type Aes256Gcm32 = AesGcm<Aes256, U32>;

/// Argon2id with the v1 parameters: time cost 3, 32 MiB, 8 lanes, 32-byte output.
///
/// Takes about 0.1–0.3 s and 32 MiB of memory, freed on return: run it off any event loop.
///
/// # Errors
/// [`Error::Config`] if the parameters are refused (they never are for these constants).
pub fn argon2id(code: &str, salt: &[u8]) -> Result<[u8; 32], Error> {
    let params = argon2::Params::new(32 * 1024, 3, 8, Some(32))
        .map_err(|e| Error::Config(format!("argon2 parameters: {e}")))?;
    let a = argon2::Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, params);
    let mut out = [0u8; 32];
    a.hash_password_into(code.as_bytes(), salt, &mut out)
        .map_err(|e| Error::Config(format!("argon2: {e}")))?;
    Ok(out)
}

/// The code hash announced in `hello`: SHA-256 of the code in plain mode, Argon2id with
/// [`CODE_HASH_SALT`] when encrypting.
///
/// # Errors
/// As [`argon2id`].
pub fn code_hash(code: &str, encrypt: bool) -> Result<[u8; 32], Error> {
    if encrypt {
        argon2id(code, CODE_HASH_SALT)
    } else {
        Ok(Sha256::digest(code.as_bytes()).into())
    }
}

/// The secrets a session is built from. Derive them once per code with
/// [`Secrets::derive`] (slow when encrypting) and hand them to the state machine.
#[derive(Clone)]
pub struct Secrets {
    /// The code hash for `hello`.
    pub code_hash: [u8; 32],
    /// The cipher, present when encrypting.
    pub cipher: Option<Cipher>,
}

impl std::fmt::Debug for Secrets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Secrets")
            .field("encrypt", &self.cipher.is_some())
            .finish_non_exhaustive()
    }
}

impl Secrets {
    /// Derive the code hash and (when `encrypt`) the key from a code.
    ///
    /// # Errors
    /// As [`argon2id`].
    pub fn derive(code: &str, encrypt: bool) -> Result<Secrets, Error> {
        let code_hash = code_hash(code, encrypt)?;
        let cipher = if encrypt {
            Some(Cipher::new(&argon2id(code, KEY_SALT)?))
        } else {
            None
        };
        Ok(Secrets { code_hash, cipher })
    }

    /// True when the session is end-to-end encrypted.
    pub fn encrypts(&self) -> bool {
        self.cipher.is_some()
    }
}

/// AES-256-GCM with 32-byte nonces and no associated data. Cheap to clone (shared key
/// schedule), so work items can carry it to other threads.
#[derive(Clone)]
pub struct Cipher(Arc<(Aes256Gcm32, [u8; 32])>);

impl Cipher {
    /// A cipher for a 32-byte key.
    pub fn new(key: &[u8; 32]) -> Cipher {
        Cipher(Arc::new((Aes256Gcm32::new(key.into()), *key)))
    }

    /// The fast data path's cipher for the session whose `enc_manifest` nonce seed is
    /// `seed`: key = HKDF-SHA256(salt = seed, input key = this key, info =
    /// [`FAST_KEY_INFO`]). Every session draws a fresh seed, so every session (each
    /// reconnect included) gets a key of its own.
    pub fn fast(&self, seed: &[u8; 32]) -> FastCipher {
        let mut key = [0u8; 32];
        hkdf::Hkdf::<Sha256>::new(Some(seed), &self.0 .1)
            .expand(FAST_KEY_INFO, &mut key)
            // 32 bytes is far below HKDF-SHA256's limit of 8160.
            .expect("HKDF output within limits");
        FastCipher::new(&key)
    }

    /// Encrypt `buf[start..]` in place and append the 16-byte tag.
    pub fn seal_in_place(&self, nonce: &[u8; 32], buf: &mut Vec<u8>, start: usize) {
        let tag = self
            .0
             .0
            .encrypt_inout_detached(&Nonce::<U32>::from(*nonce), b"", (&mut buf[start..]).into())
            // Only fails for messages over 64 GiB; pieces are at most 1 MiB.
            .expect("AES-GCM input within limits");
        buf.extend_from_slice(&tag);
    }

    /// Encrypt a whole message, returning ciphertext ‖ tag.
    pub fn seal(&self, nonce: &[u8; 32], plain: &[u8]) -> Vec<u8> {
        let mut buf = Vec::with_capacity(plain.len() + crate::wire::TAG_LEN);
        buf.extend_from_slice(plain);
        self.seal_in_place(nonce, &mut buf, 0);
        buf
    }

    /// Decrypt ciphertext ‖ tag. `None` when the tag does not verify or the input is
    /// shorter than a tag.
    pub fn open(&self, nonce: &[u8; 32], sealed: &[u8]) -> Option<Vec<u8>> {
        let body_len = sealed.len().checked_sub(crate::wire::TAG_LEN)?;
        let mut buf = sealed[..body_len].to_vec();
        let tag = Tag::try_from(&sealed[body_len..]).ok()?;
        self.0
             .0
            .decrypt_inout_detached(
                &Nonce::<U32>::from(*nonce),
                b"",
                buf.as_mut_slice().into(),
                &tag,
            )
            .ok()?;
        Some(buf)
    }
}

/// The HKDF `info` of the fast data path's key (see [`Cipher::fast`]).
pub const FAST_KEY_INFO: &[u8] = b"p2p-copy fast data key v1, sender to receiver";

/// AES-256-GCM with 96-bit nonces (ring's, with AES-NI and carry-less multiplication
/// where the CPU has them), for the fast data path's pieces. No associated data, the
/// 16-byte tag appended. The nonce of a piece is its place in the session's nonce order
/// ([`NonceChain::taken`]), so no nonce repeats under one key. Cheap to clone.
#[derive(Clone)]
pub struct FastCipher(Arc<ring::aead::LessSafeKey>);

impl std::fmt::Debug for FastCipher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("FastCipher")
    }
}

impl FastCipher {
    /// A cipher for a 32-byte key.
    pub fn new(key: &[u8; 32]) -> FastCipher {
        let key = ring::aead::UnboundKey::new(&ring::aead::AES_256_GCM, key)
            // Only fails for a key of the wrong length; AES-256 takes 32 bytes.
            .expect("a 32-byte AES-256 key");
        FastCipher(Arc::new(ring::aead::LessSafeKey::new(key)))
    }

    fn nonce(index: u64) -> ring::aead::Nonce {
        let mut n = [0u8; 12];
        n[4..].copy_from_slice(&index.to_be_bytes());
        ring::aead::Nonce::assume_unique_for_key(n)
    }

    /// Encrypt `buf[start..]` in place under nonce number `index` and append the tag.
    pub fn seal_in_place(&self, index: u64, buf: &mut Vec<u8>, start: usize) {
        let tag = self
            .0
            .seal_in_place_separate_tag(
                Self::nonce(index),
                ring::aead::Aad::empty(),
                &mut buf[start..],
            )
            // Only fails for inputs over GCM's limit of 64 GiB; pieces are at most 1 MiB.
            .expect("AES-GCM input within limits");
        buf.extend_from_slice(tag.as_ref());
    }

    /// Decrypt ciphertext ‖ tag sealed under nonce number `index`. `None` when the tag
    /// does not verify or the input is shorter than a tag.
    pub fn open(&self, index: u64, sealed: &[u8]) -> Option<Vec<u8>> {
        if sealed.len() < crate::wire::TAG_LEN {
            return None;
        }
        let mut buf = sealed.to_vec();
        let len = self
            .0
            .open_in_place(Self::nonce(index), ring::aead::Aad::empty(), &mut buf)
            .ok()?
            .len();
        buf.truncate(len);
        Some(buf)
    }
}

/// The running nonce chain both sides share: m = SHA-256(S), then before each encryption
/// or decryption m = SHA-256(m) and m is the nonce.
#[derive(Debug, Clone)]
pub struct NonceChain {
    m: [u8; 32],
    taken: u64,
}

impl NonceChain {
    /// Start from the seed S sent in `enc_manifest`.
    pub fn new(seed: &[u8]) -> NonceChain {
        NonceChain {
            m: Sha256::digest(seed).into(),
            taken: 0,
        }
    }

    /// The next nonce.
    #[allow(clippy::should_implement_trait)]
    pub fn next(&mut self) -> [u8; 32] {
        self.m = Sha256::digest(self.m).into();
        self.taken += 1;
        self.m
    }

    /// How many nonces were taken: after [`next`](Self::next), the number of the nonce
    /// it returned (1 for the first), which the fast data path uses as its 96-bit nonce.
    pub fn taken(&self) -> u64 {
        self.taken
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seal_then_open_round_trips_and_tampering_fails() {
        let c = Cipher::new(&[7; 32]);
        let n = [1; 32];
        let sealed = c.seal(&n, b"hello");
        assert_eq!(sealed.len(), 5 + 16);
        assert_eq!(c.open(&n, &sealed).as_deref(), Some(&b"hello"[..]));
        let mut bad = sealed.clone();
        bad[0] ^= 1;
        assert_eq!(c.open(&n, &bad), None);
        assert_eq!(c.open(&[2; 32], &sealed), None);
        assert_eq!(c.open(&n, &sealed[..15]), None);
    }

    #[test]
    fn fast_cipher_round_trips_and_refuses_another_nonce_or_key() {
        let c = Cipher::new(&[7; 32]);
        let f = c.fast(&[1; 32]);
        let mut buf = b"head".to_vec();
        buf.extend_from_slice(b"hello");
        f.seal_in_place(3, &mut buf, 4);
        assert_eq!(buf.len(), 4 + 5 + 16);
        assert_eq!(f.open(3, &buf[4..]).as_deref(), Some(&b"hello"[..]));
        assert_eq!(f.open(4, &buf[4..]), None);
        assert_eq!(c.fast(&[2; 32]).open(3, &buf[4..]), None);
        assert_eq!(f.open(3, &buf[4..19]), None);
        assert_eq!(f.open(3, &buf[..3]), None);
    }

    #[test]
    fn nonce_chain_counts_what_it_gave() {
        let mut n = NonceChain::new(&[0; 32]);
        assert_eq!(n.taken(), 0);
        n.next();
        n.next();
        assert_eq!(n.taken(), 2);
    }

    #[test]
    fn plain_code_hash_is_sha256() {
        let h = code_hash("abc", false).unwrap();
        assert_eq!(
            crate::wire::hex(&h),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }
}
