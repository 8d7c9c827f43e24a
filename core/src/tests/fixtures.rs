//! What the session tests share: secrets (Argon2id derived once), file contents, the mode
//! matrix, the checks of a clean transfer, and a hand-written sender for transcripts.

use std::collections::BTreeMap;
use std::sync::OnceLock;

use bytes::Bytes;

use crate::chain::{Chain, ChainKind};
use crate::crypto::{Cipher, NonceChain};
use crate::receiver::IoRequest;
use crate::sender::{CompressMode, SenderConfig};
use crate::sim::{Outcome, ReceiverDisk, SimRng, SimSetup};
use crate::wire::{self, Compression, Control, DataMessage, FileHeader, ManifestEntry, CHUNK_SIZE};
use crate::{Event, Secrets, WireMessage};

pub(crate) const MIB: usize = CHUNK_SIZE;

const CODE: &str = "7-sim-session-code";

/// Secrets of a plain session.
pub(crate) fn plain() -> Secrets {
    Secrets::derive(CODE, false).expect("plain secrets")
}

/// Secrets of an encrypted session. Argon2id is slow, so they are derived once for the
/// whole test binary.
pub(crate) fn encrypted() -> Secrets {
    static SECRETS: OnceLock<Secrets> = OnceLock::new();
    SECRETS
        .get_or_init(|| Secrets::derive(CODE, true).expect("encrypted secrets"))
        .clone()
}

/// The code hash of [`encrypted`] (so the relay pairs them) with another key.
pub(crate) fn encrypted_wrong_key() -> Secrets {
    let mut s = encrypted();
    s.cipher = Some(Cipher::new(&[0x42; 32]));
    s
}

/// The key of [`encrypted`].
pub(crate) fn cipher() -> Cipher {
    encrypted().cipher.expect("encrypted secrets hold a cipher")
}

/// One combination of the sender's options.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Mode {
    pub(crate) encrypt: bool,
    pub(crate) compress: CompressMode,
    pub(crate) resume: bool,
}

impl Mode {
    /// Plain/encrypted × compression auto/on/off × resume on/off.
    pub(crate) fn all() -> Vec<Mode> {
        let mut v = Vec::new();
        for encrypt in [false, true] {
            for compress in [CompressMode::Auto, CompressMode::On, CompressMode::Off] {
                for resume in [false, true] {
                    v.push(Mode {
                        encrypt,
                        compress,
                        resume,
                    });
                }
            }
        }
        v
    }

    pub(crate) fn secrets(self) -> Secrets {
        if self.encrypt {
            encrypted()
        } else {
            plain()
        }
    }

    /// A simulated session sending `files` in this mode.
    pub(crate) fn setup(self, files: &[(String, Bytes)]) -> SimSetup {
        let mut s = SimSetup::new(files.to_vec(), &self.secrets());
        s.sender_config = SenderConfig {
            compress: self.compress,
            resume: self.resume,
            ..SenderConfig::default()
        };
        s
    }
}

/// What a file holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Content {
    /// Text that zstd shrinks far below 95 %.
    Text,
    /// Random bytes zstd cannot shrink.
    Random,
    /// Text for the first piece, random bytes after it (auto mode decides on the first
    /// piece only).
    TextThenRandom,
}

/// `len` bytes of `kind`, varied by `seed`.
pub(crate) fn content(kind: Content, len: usize, seed: u64) -> Bytes {
    let mut rng = SimRng::new(seed);
    let mut out = Vec::with_capacity(len);
    let text_len = match kind {
        Content::Text => len,
        Content::Random => 0,
        Content::TextThenRandom => len.min(MIB),
    };
    let mut line = 0u64;
    while out.len() < text_len {
        let s = format!("{seed:x} line {line}: the same words again and again and again\n");
        out.extend_from_slice(s.as_bytes());
        line += 1;
    }
    out.truncate(text_len);
    while out.len() < len {
        out.extend_from_slice(&rng.next_u64().to_le_bytes());
    }
    out.truncate(len);
    Bytes::from(out)
}

/// The files the receiver must end with: what it had, overwritten by what was sent.
pub(crate) fn expected_files(
    before: &ReceiverDisk,
    sent: &[(String, Bytes)],
) -> BTreeMap<String, Vec<u8>> {
    let mut m = before.complete.clone();
    for (p, d) in sent {
        m.insert(p.clone(), d.to_vec());
    }
    m
}

/// Assert that a session succeeded on both sides and left exactly `expected`.
pub(crate) fn assert_clean(out: &Outcome, expected: &BTreeMap<String, Vec<u8>>) {
    assert_eq!(out.sender_error, None, "sender failed");
    assert_eq!(out.receiver_error, None, "receiver failed");
    assert!(
        out.violations.is_empty(),
        "I/O contract broken: {:?}",
        out.violations
    );
    assert!(!out.step_limit_hit, "the session did not end");
    assert!(out.both_finished, "a side did not finish");
    assert_eq!(out.receiver_events.last(), Some(&Event::Done));
    assert!(out.sender_events.contains(&Event::Done));
    let got: Vec<(&String, usize)> = out.files().iter().map(|(p, d)| (p, d.len())).collect();
    let want: Vec<(&String, usize)> = expected.iter().map(|(p, d)| (p, d.len())).collect();
    assert_eq!(got, want, "final files (path, size) differ");
    for (p, d) in expected {
        assert!(out.files()[p] == *d, "{p} has other content than sent");
    }
    assert!(
        out.disk.partial.is_empty(),
        "partial files left: {:?}",
        out.disk.partial.keys()
    );
}

/// The paths named by the receiver's `Open` requests and their `append_from`.
/// The sender's delivery event: whether the receiver confirmed, and how many files.
pub(crate) fn delivery(out: &Outcome) -> Option<(bool, u64)> {
    out.sender_events.iter().find_map(|e| match e {
        Event::Delivery {
            confirmed,
            delivered,
        } => Some((*confirmed, *delivered)),
        _ => None,
    })
}

/// The extensions a receiver accepted, from the messages it sent (empty when it sent no
/// acceptance).
pub(crate) fn accepted(sent: &[WireMessage]) -> Vec<String> {
    sent.iter()
        .find_map(|m| match m {
            WireMessage::Text(t) => match Control::parse(t) {
                Ok(Control::Extensions { accept }) => Some(accept),
                _ => None,
            },
            WireMessage::Binary(_) => None,
        })
        .unwrap_or_default()
}

pub(crate) fn opens(io: &[IoRequest]) -> Vec<(String, u64)> {
    io.iter()
        .filter_map(|r| match r {
            IoRequest::Open {
                path, append_from, ..
            } => Some((path.as_str().to_owned(), *append_from)),
            _ => None,
        })
        .collect()
}

/// Manifest indices the receiver asked to commit (put in place under their final name).
pub(crate) fn committed(io: &[IoRequest]) -> Vec<usize> {
    io.iter()
        .filter_map(|r| match r {
            IoRequest::Commit { file, .. } => Some(*file),
            _ => None,
        })
        .collect()
}

/// True when the request writes to a file or puts one in place.
pub(crate) fn changes_a_file(r: &IoRequest) -> bool {
    matches!(r, IoRequest::Write { .. } | IoRequest::Commit { .. })
}

/// A sender written by hand: builds the messages a correct sender would send, plain or
/// encrypted, with the chain and nonce bookkeeping, and lets a test break any of them.
pub(crate) struct Script {
    cipher: Option<Cipher>,
    nonces: Option<NonceChain>,
    chain: Chain,
    seq: u64,
    /// Pieces go on the fast data path (see [`Script::fast`]).
    fast: bool,
}

/// The nonce seed S every encrypted script announces.
pub(crate) const SCRIPT_SEED: [u8; 32] = [9; 32];

impl Script {
    pub(crate) fn plain() -> Script {
        Script {
            cipher: None,
            nonces: None,
            chain: Chain::new(),
            seq: 0,
            fast: false,
        }
    }

    pub(crate) fn encrypted(cipher: Cipher) -> Script {
        Script {
            cipher: Some(cipher),
            nonces: Some(NonceChain::new(&SCRIPT_SEED)),
            chain: Chain::new(),
            seq: 0,
            fast: false,
        }
    }

    /// From the next file on, build pieces as the fast data path does (BLAKE3 chain;
    /// when encrypting, the fast key and nonce number, and a zero chain field), or as v1
    /// does. The file header is the test's to write (`"fast":true`).
    pub(crate) fn fast(mut self, on: bool) -> Script {
        self.fast = on;
        self
    }

    /// A manifest offering the extensions `offer`.
    pub(crate) fn manifest_offering(
        &mut self,
        entries: &[(&str, u64)],
        offer: &[&str],
    ) -> WireMessage {
        let m = Control::Manifest {
            resume: false,
            extensions: offer.iter().map(|e| (*e).to_owned()).collect(),
            reconnect: None,
            entries: entries
                .iter()
                .map(|(p, s)| ManifestEntry {
                    path: (*p).to_owned(),
                    size: *s,
                    kind: None,
                })
                .collect(),
            parts: None,
        };
        self.manifest_json(&m.to_json())
    }

    /// The next nonce of the shared chain (for items the other side encrypts).
    pub(crate) fn next_nonce(&mut self) -> [u8; 32] {
        self.nonces.as_mut().expect("an encrypted script").next()
    }

    fn seal(&mut self, plain: &[u8]) -> Vec<u8> {
        let nonce = self.next_nonce();
        self.cipher
            .as_ref()
            .expect("an encrypted script")
            .seal(&nonce, plain)
    }

    /// A manifest of `(path, size)` entries.
    pub(crate) fn manifest(&mut self, entries: &[(&str, u64)], resume: bool) -> WireMessage {
        let m = Control::Manifest {
            resume,
            extensions: Vec::new(),
            reconnect: None,
            parts: None,
            entries: entries
                .iter()
                .map(|(p, s)| ManifestEntry {
                    path: (*p).to_owned(),
                    size: *s,
                    kind: None,
                })
                .collect(),
        };
        self.manifest_json(&m.to_json())
    }

    /// A manifest with any JSON inside (encrypted when the script is).
    pub(crate) fn manifest_json(&mut self, json: &str) -> WireMessage {
        if self.cipher.is_none() {
            return WireMessage::Text(json.to_owned());
        }
        let hidden = self.seal(json.as_bytes());
        Control::EncManifest {
            nonce: wire::hex(&SCRIPT_SEED),
            hidden_manifest: wire::hex(&hidden),
        }
        .into()
    }

    /// A file header; starts a new chain.
    pub(crate) fn file(
        &mut self,
        path: &str,
        size: u64,
        compression: Compression,
        append_from: u64,
    ) -> WireMessage {
        let h = Control::File(FileHeader {
            path: path.to_owned(),
            size,
            compression,
            append_from,
            fast: false,
        });
        self.file_json(&h.to_json())
    }

    /// A file header with any JSON inside (encrypted when the script is); starts a new
    /// chain.
    pub(crate) fn file_json(&mut self, json: &str) -> WireMessage {
        self.chain = Chain::of(if self.fast {
            ChainKind::Blake3
        } else {
            ChainKind::Sha256
        });
        self.seq = 0;
        if self.cipher.is_none() {
            return WireMessage::Text(json.to_owned());
        }
        let hidden = self.seal(json.as_bytes());
        Control::EncFile {
            hidden_file: wire::hex(&hidden),
        }
        .into()
    }

    /// The next data message carrying payload P (already compressed if the file is).
    pub(crate) fn piece(&mut self, payload: &[u8]) -> WireMessage {
        let chain = if self.fast && self.cipher.is_some() {
            [0; 32]
        } else {
            self.chain.next(payload)
        };
        let seq = self.seq;
        self.seq += 1;
        self.frame(seq, &chain, payload)
    }

    /// A data message with any header; the payload is encrypted when the script is (with
    /// the fast key when the script is [`fast`](Self::fast)).
    pub(crate) fn frame(&mut self, seq: u64, chain: &[u8; 32], payload: &[u8]) -> WireMessage {
        let body = match &self.cipher {
            Some(c) if self.fast => {
                let fast = c.fast(&SCRIPT_SEED);
                let nonces = self.nonces.as_mut().expect("an encrypted script");
                nonces.next();
                let mut buf = payload.to_vec();
                fast.seal_in_place(nonces.taken(), &mut buf, 0);
                buf
            }
            Some(_) => self.seal(payload),
            None => payload.to_vec(),
        };
        WireMessage::Binary(DataMessage::encode(seq, chain, &body))
    }

    /// `file`, every piece of `data` from `append_from`, `file_eof`.
    pub(crate) fn whole_file(
        &mut self,
        path: &str,
        data: &[u8],
        compression: Compression,
        append_from: usize,
    ) -> Vec<WireMessage> {
        let mut v = vec![self.file(path, data.len() as u64, compression, append_from as u64)];
        let rest = &data[append_from..];
        let mut pieces: Vec<&[u8]> = rest.chunks(CHUNK_SIZE).collect();
        if pieces.is_empty() {
            pieces.push(&[]);
        }
        for p in pieces {
            let payload = match compression {
                Compression::Zstd => crate::compress::compress(p),
                Compression::None => p.to_vec(),
            };
            v.push(self.piece(&payload));
        }
        v.push(file_eof());
        v
    }
}

pub(crate) fn file_eof() -> WireMessage {
    Control::FileEof.into()
}

pub(crate) fn eof() -> WireMessage {
    Control::Eof.into()
}

pub(crate) fn text(s: &str) -> WireMessage {
    WireMessage::Text(s.to_owned())
}
