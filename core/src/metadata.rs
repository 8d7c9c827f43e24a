//! Extension [`EXT_METADATA`](crate::wire::EXT_METADATA): the files' permission bits and
//! modification times, and the tree's directories (empty ones included), between two
//! peers of this project.
//!
//! The metadata never rides in the manifest: a p2p-copy 0.1.x receiver gets the v1
//! manifest it always got, no larger. The sender offers the extension in the manifest,
//! together with `confirm`; once the receiver accepted, it sends after `eof`
//! [`Control::Metadata`] parts of at most about [`PART_BYTES`] of JSON each, however
//! large the tree, the last one marked `last`. The receiver checks each part against the
//! manifest as it arrives, commits the files as in v1, and then hands the runtime one
//! [`IoRequest::ApplyMetadata`]: modes and times of the files that are in place (put
//! there now, or already complete there under resume), then the missing directories,
//! then the directories' times.
//!
//! When encrypting, part `n` travels as [`Control::EncMetadata`], sealed under a nonce
//! of its own: SHA-256 of the ASCII label `p2p-copy metadata part` ‖ the session's
//! 32-byte nonce seed S ‖ `n` as 4 bytes big-endian. It cannot meet the running chain of
//! section 8 (whose values hash exactly 32 bytes) nor the reports' nonces (other labels,
//! other lengths) short of a SHA-256 collision, and each part number is used once per
//! session; every session, a reconnect's included, draws a fresh S.

use std::collections::{HashMap, HashSet};

use sha2::{Digest, Sha256};

use crate::crypto::Cipher;
use crate::path::{escape, SafePath};
use crate::receiver::IoRequest;
use crate::sender::SendFile;
use crate::wire::{self, Control, MetaEntry, MetadataPart};
use crate::Error;

/// Parts are closed once their JSON reaches this many bytes; one entry (a path of at
/// most 4096 bytes, escaped) more keeps every part, sealed and in hex, far below the
/// 2 MiB message limit.
pub const PART_BYTES: usize = 256 * 1024;

/// The latest modification time kept: 9999-12-31 23:59:59 UTC. Times further from the
/// epoch, either way, are left out with a note.
pub const MAX_MTIME: i64 = 253_402_300_799;

/// The only permission bits a receiver applies: never setuid, setgid or sticky.
pub const MODE_MASK: u32 = 0o777;

/// Notes kept word for word; more are counted.
const MOST_NOTES: usize = 20;

/// A file's or directory's metadata as the sender lists it. Either part may be unknown.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Attrs {
    /// Unix permission bits (only [`MODE_MASK`] of them are sent).
    pub mode: Option<u32>,
    /// Modification time, whole seconds since the Unix epoch.
    pub mtime: Option<i64>,
}

/// What a sender offers to keep: one [`Attrs`] per file given to the sender, in the same
/// order, and the directories of the sent tree (relative `/`-separated paths, parents
/// before children), whose modes are not sent.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct TreeMetadata {
    /// One per file, in the order of the sender's files.
    pub files: Vec<Attrs>,
    /// Every directory of the sent tree, with its time.
    pub dirs: Vec<(String, Attrs)>,
}

/// Paths whose metadata was not kept, and why: the first few word for word, and how
/// many more.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Notes {
    /// Up to 20 paths (as sent) and the reason for each.
    pub shown: Vec<(String, String)>,
    /// How many more there were.
    pub more: u64,
}

impl Notes {
    /// Record one.
    pub fn push(&mut self, path: &str, reason: impl Into<String>) {
        if self.shown.len() < MOST_NOTES {
            self.shown.push((path.to_owned(), reason.into()));
        } else {
            self.more += 1;
        }
    }

    /// True when nothing was recorded.
    pub fn is_empty(&self) -> bool {
        self.shown.is_empty() && self.more == 0
    }
}

/// The nonce that seals part `part` in the session whose nonce seed is `seed`.
pub(crate) fn part_nonce(seed: &[u8; 32], part: u32) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(b"p2p-copy metadata part");
    h.update(seed);
    h.update(part.to_be_bytes());
    h.finalize().into()
}

fn entry_len(e: &MetaEntry) -> usize {
    // Plain structs of strings and numbers always serialise.
    serde_json::to_string(e).map_or(e.path.len(), |s| s.len()) + 1
}

/// The sender's position in its metadata: parts are made one at a time, as the
/// connection takes them, so a large tree never sits in memory as messages.
#[derive(Debug, Default)]
pub(crate) struct Outgoing {
    file: usize,
    dir: usize,
    part: u32,
    done: bool,
}

impl Outgoing {
    /// The next part, sealed when `sealing` holds the session's cipher and seed; `None`
    /// after the last.
    pub(crate) fn next(
        &mut self,
        files: &[SendFile],
        meta: &TreeMetadata,
        sealing: Option<(&Cipher, &[u8; 32])>,
    ) -> Option<Control> {
        if self.done {
            return None;
        }
        let mut p = MetadataPart {
            part: self.part,
            ..MetadataPart::default()
        };
        let mut bytes = 0;
        while self.file < files.len() && bytes < PART_BYTES {
            let a = meta.files.get(self.file).copied().unwrap_or_default();
            let e = MetaEntry {
                path: files[self.file].path.clone(),
                mode: a.mode.map(|m| m & MODE_MASK),
                mtime: a.mtime,
            };
            bytes += entry_len(&e);
            p.files.push(e);
            self.file += 1;
        }
        while self.dir < meta.dirs.len() && bytes < PART_BYTES {
            let (path, a) = &meta.dirs[self.dir];
            let e = MetaEntry {
                path: path.clone(),
                mode: None,
                mtime: a.mtime,
            };
            bytes += entry_len(&e);
            p.dirs.push(e);
            self.dir += 1;
        }
        p.last = self.file == files.len() && self.dir == meta.dirs.len();
        self.done = p.last;
        self.part += 1;
        let plain = Control::Metadata(p);
        Some(match sealing {
            None => plain,
            Some((cipher, seed)) => Control::EncMetadata {
                part: self.part - 1,
                hidden_metadata: wire::hex(
                    &cipher.seal(&part_nonce(seed, self.part - 1), plain.to_json().as_bytes()),
                ),
            },
        })
    }

    /// True once the last part was made.
    pub(crate) fn is_done(&self) -> bool {
        self.done
    }
}

/// The receiver's collection of the sender's metadata, checked part by part.
#[derive(Debug)]
pub(crate) struct Incoming {
    next_part: u32,
    last: bool,
    /// Per manifest entry.
    files: Vec<Option<Attrs>>,
    dirs: Vec<(SafePath, Option<i64>)>,
    seen_dirs: HashSet<String>,
    max_dirs: usize,
    pub(crate) notes: Notes,
}

impl Incoming {
    /// For a manifest of `entries` files.
    pub(crate) fn new(entries: usize) -> Incoming {
        Incoming {
            next_part: 0,
            last: false,
            files: vec![None; entries],
            dirs: Vec::new(),
            seen_dirs: HashSet::new(),
            // A tree holds rarely more directories than files; empty ones are cheap
            // to list, so a tree of directories alone still gets many.
            max_dirs: entries.saturating_mul(4).max(65_536),
            notes: Notes::default(),
        }
    }

    /// True once the last part arrived.
    pub(crate) fn is_complete(&self) -> bool {
        self.last
    }

    /// Take one part: [`Control::Metadata`] from a plain sender, [`Control::EncMetadata`]
    /// from an encrypting one. `by_path` maps the manifest's paths to their entries.
    ///
    /// # Errors
    /// [`Error::Peer`] for the wrong form, a part out of order or after the last, a file
    /// not in the manifest or named twice, a mode beyond `0o7777`, a directory path
    /// that is unsafe or is (or lies below) a file of the manifest, or too many
    /// directories; [`Error::Integrity`] for a part that does not decrypt.
    pub(crate) fn take(
        &mut self,
        msg: Control,
        sealing: Option<(&Cipher, &[u8; 32])>,
        by_path: &HashMap<String, usize>,
    ) -> Result<(), Error> {
        if self.last {
            return Err(Error::peer("metadata after the last part"));
        }
        let p = self.open(msg, sealing)?;
        if p.part != self.next_part {
            return Err(Error::peer(format!(
                "metadata part {} where part {} was expected",
                p.part, self.next_part
            )));
        }
        self.next_part += 1;
        for f in p.files {
            let Some(&i) = by_path.get(&f.path) else {
                return Err(Error::peer_in(
                    &f.path,
                    "the metadata names a file that is not in the manifest",
                ));
            };
            if self.files[i].is_some() {
                return Err(Error::peer_in(
                    &f.path,
                    "the metadata names this file twice",
                ));
            }
            let mode = match f.mode {
                Some(m) if m > 0o7777 => {
                    return Err(Error::peer_in(
                        &f.path,
                        format!("mode {m:#o} is not a permission mode"),
                    ))
                }
                Some(m) if m & !MODE_MASK != 0 => {
                    self.notes.push(
                        &f.path,
                        "its setuid, setgid or sticky bit was not applied (never is)",
                    );
                    Some(m & MODE_MASK)
                }
                m => m,
            };
            let mtime = self.checked_time(&f.path, f.mtime);
            self.files[i] = Some(Attrs { mode, mtime });
        }
        for d in p.dirs {
            let path = SafePath::parse(&d.path).map_err(|why| {
                Error::peer_in(&d.path, format!("refused unsafe directory path: {why}"))
            })?;
            if let Some(f) = std::iter::once(path.as_str())
                .chain(path.ancestors())
                .find(|a| by_path.contains_key(*a))
            {
                return Err(Error::peer_in(
                    &d.path,
                    format!(
                        "the metadata names a directory where the manifest has the file {}",
                        escape(f)
                    ),
                ));
            }
            if !self.seen_dirs.insert(d.path.clone()) {
                continue;
            }
            if self.dirs.len() == self.max_dirs {
                return Err(Error::peer(format!(
                    "the metadata names more than {} directories",
                    self.max_dirs
                )));
            }
            let mtime = self.checked_time(&d.path, d.mtime);
            self.dirs.push((path, mtime));
        }
        self.last = p.last;
        Ok(())
    }

    fn checked_time(&mut self, path: &str, mtime: Option<i64>) -> Option<i64> {
        match mtime {
            Some(t) if !(-MAX_MTIME..=MAX_MTIME).contains(&t) => {
                self.notes
                    .push(path, format!("its modification time {t} is out of range"));
                None
            }
            t => t,
        }
    }

    fn open(
        &self,
        msg: Control,
        sealing: Option<(&Cipher, &[u8; 32])>,
    ) -> Result<MetadataPart, Error> {
        match (msg, sealing) {
            (Control::Metadata(p), None) => Ok(p),
            (
                Control::EncMetadata {
                    part,
                    hidden_metadata,
                },
                Some((cipher, seed)),
            ) => {
                let sealed = wire::unhex(&hidden_metadata)
                    .ok_or_else(|| Error::peer("enc_metadata is not hex"))?;
                let plain = cipher
                    .open(&part_nonce(seed, part), &sealed)
                    .ok_or_else(|| {
                        Error::integrity(format!(
                            "metadata part {part} does not decrypt (tampered, replayed or wrong code)"
                        ))
                    })?;
                let text = String::from_utf8(plain)
                    .map_err(|_| Error::peer("the metadata is not UTF-8"))?;
                match Control::parse(&text)? {
                    Control::Metadata(p) if p.part == part => Ok(p),
                    Control::Metadata(p) => Err(Error::peer(format!(
                        "sealed metadata part {} travels as part {part}",
                        p.part
                    ))),
                    other => Err(Error::peer(format!(
                        "encrypted metadata holds a {} message",
                        other.type_name()
                    ))),
                }
            }
            (other, _) => Err(Error::peer(format!(
                "{} message where {} metadata was expected",
                other.type_name(),
                if sealing.is_some() {
                    "encrypted"
                } else {
                    "unencrypted"
                }
            ))),
        }
    }

    /// Drop the directories `why` refuses, noting each with its reason.
    pub(crate) fn refuse_dirs(&mut self, why: impl Fn(&SafePath) -> Option<String>) {
        let notes = &mut self.notes;
        self.dirs.retain(|(path, _)| match why(path) {
            Some(reason) => {
                notes.push(path.as_str(), reason);
                false
            }
            None => true,
        });
    }

    /// The request that applies what arrived: to each file of `in_place` (manifest
    /// index and path) that has metadata, then to every directory.
    pub(crate) fn request<'a>(
        &mut self,
        in_place: impl Iterator<Item = (usize, &'a SafePath)>,
    ) -> IoRequest {
        let files = in_place
            .filter_map(|(i, path)| Some((path.clone(), self.files.get(i).copied()??)))
            .collect();
        IoRequest::ApplyMetadata {
            files,
            dirs: std::mem::take(&mut self.dirs),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn files(n: usize) -> Vec<SendFile> {
        (0..n)
            .map(|i| SendFile {
                path: format!("tree/some/deeper/folder/file-number-{i:06}.txt"),
                size: 1,
                kind: None,
            })
            .collect()
    }

    fn tree(n: usize, dirs: usize) -> TreeMetadata {
        TreeMetadata {
            files: (0..n)
                .map(|i| Attrs {
                    mode: Some(0o644),
                    mtime: Some(1_700_000_000 + i as i64),
                })
                .collect(),
            dirs: (0..dirs)
                .map(|i| {
                    (
                        format!("tree/empty-{i}"),
                        Attrs {
                            mode: None,
                            mtime: Some(1_000_000_000),
                        },
                    )
                })
                .collect(),
        }
    }

    fn all_parts(
        files: &[SendFile],
        meta: &TreeMetadata,
        sealing: Option<(&Cipher, &[u8; 32])>,
    ) -> Vec<Control> {
        let mut out = Outgoing::default();
        std::iter::from_fn(|| out.next(files, meta, sealing)).collect()
    }

    #[test]
    fn two_hundred_thousand_files_travel_in_parts_well_under_the_message_limit() {
        let f = files(200_000);
        let meta = tree(f.len(), 1000);
        let cipher = Cipher::new(&[5; 32]);
        let seed = [7; 32];
        let parts = all_parts(&f, &meta, Some((&cipher, &seed)));
        assert!(parts.len() > 10, "{}", parts.len());
        let by_path: HashMap<String, usize> = f
            .iter()
            .enumerate()
            .map(|(i, s)| (s.path.clone(), i))
            .collect();
        let mut rx = Incoming::new(f.len());
        for p in parts {
            let len = p.to_json().len();
            assert!(len < wire::MAX_MESSAGE_LEN / 3, "{len}");
            rx.take(p, Some((&cipher, &seed)), &by_path).unwrap();
        }
        assert!(rx.is_complete());
        assert!(rx.notes.is_empty());
        let paths: Vec<SafePath> = f
            .iter()
            .map(|s| SafePath::parse(&s.path).unwrap())
            .collect();
        let IoRequest::ApplyMetadata { files, dirs } = rx.request(paths.iter().enumerate()) else {
            panic!("not an ApplyMetadata request");
        };
        assert_eq!(files.len(), 200_000);
        assert_eq!(files[7].1.mtime, Some(1_700_000_007));
        assert_eq!(dirs.len(), 1000);
    }

    #[test]
    fn a_tree_without_files_still_sends_one_last_part() {
        let parts = all_parts(&[], &TreeMetadata::default(), None);
        assert_eq!(
            parts,
            [Control::Metadata(MetadataPart {
                last: true,
                ..MetadataPart::default()
            })]
        );
        assert_eq!(
            parts[0].to_json(),
            r#"{"type":"metadata","part":0,"files":[],"dirs":[],"last":true}"#
        );
    }

    #[test]
    fn sealed_parts_open_only_with_their_own_number_and_the_session_seed() {
        let f = files(1);
        let meta = tree(1, 0);
        let cipher = Cipher::new(&[5; 32]);
        let seed = [7; 32];
        let by_path = HashMap::from([(f[0].path.clone(), 0)]);
        let part = all_parts(&f, &meta, Some((&cipher, &seed))).remove(0);
        let Control::EncMetadata {
            hidden_metadata, ..
        } = &part
        else {
            panic!("{part:?}");
        };
        // Moved to another number, it does not decrypt.
        let moved = Control::EncMetadata {
            part: 1,
            hidden_metadata: hidden_metadata.clone(),
        };
        let mut rx = Incoming::new(1);
        let e = rx
            .take(moved, Some((&cipher, &seed)), &by_path)
            .unwrap_err();
        assert_eq!(e.kind(), "integrity");
        let e = Incoming::new(1)
            .take(part.clone(), Some((&cipher, &[8; 32])), &by_path)
            .unwrap_err();
        assert_eq!(e.kind(), "integrity");
        // A plain part to an encrypting receiver is refused, and the other way round.
        let plain = all_parts(&f, &meta, None).remove(0);
        let e = Incoming::new(1)
            .take(plain, Some((&cipher, &seed)), &by_path)
            .unwrap_err();
        assert!(
            e.to_string().contains("encrypted metadata was expected"),
            "{e}"
        );
        let e = Incoming::new(1).take(part, None, &by_path).unwrap_err();
        assert!(e.to_string().contains("unencrypted"), "{e}");
        // The nonces differ from the running chain's and from the reports'.
        let chain_first = crate::crypto::NonceChain::new(&seed).next();
        assert_ne!(part_nonce(&seed, 0), chain_first);
        assert_ne!(part_nonce(&seed, 0), part_nonce(&seed, 1));
    }

    fn take_one(part: MetadataPart, manifest: &[&str]) -> (Result<(), Error>, Incoming) {
        let by_path = manifest
            .iter()
            .enumerate()
            .map(|(i, p)| ((*p).to_owned(), i))
            .collect();
        let mut rx = Incoming::new(manifest.len());
        let r = rx.take(Control::Metadata(part), None, &by_path);
        (r, rx)
    }

    fn file(path: &str, mode: Option<u32>, mtime: Option<i64>) -> MetaEntry {
        MetaEntry {
            path: path.into(),
            mode,
            mtime,
        }
    }

    #[test]
    fn hostile_parts_are_refused_with_a_reason() {
        let cases: Vec<(MetadataPart, &str)> = vec![
            (
                MetadataPart {
                    files: vec![file("elsewhere", Some(0o644), None)],
                    ..MetadataPart::default()
                },
                "not in the manifest",
            ),
            (
                MetadataPart {
                    files: vec![file("../etc/passwd", Some(0o644), None)],
                    ..MetadataPart::default()
                },
                "not in the manifest",
            ),
            (
                MetadataPart {
                    files: vec![file("a", None, None), file("a", None, None)],
                    ..MetadataPart::default()
                },
                "twice",
            ),
            (
                MetadataPart {
                    files: vec![file("a", Some(0o10644), None)],
                    ..MetadataPart::default()
                },
                "not a permission mode",
            ),
            (
                MetadataPart {
                    dirs: vec![file("../outside", None, None)],
                    ..MetadataPart::default()
                },
                "refused unsafe directory path",
            ),
            (
                MetadataPart {
                    dirs: vec![file("/etc", None, None)],
                    ..MetadataPart::default()
                },
                "refused unsafe directory path",
            ),
            (
                MetadataPart {
                    dirs: vec![file("a/below", None, None)],
                    ..MetadataPart::default()
                },
                "where the manifest has the file a",
            ),
            (
                MetadataPart {
                    part: 1,
                    ..MetadataPart::default()
                },
                "part 1 where part 0 was expected",
            ),
        ];
        for (part, why) in cases {
            let (r, _) = take_one(part, &["a", "d/b"]);
            let e = r.unwrap_err();
            assert_eq!(e.kind(), "peer", "{e}");
            assert!(e.to_string().contains(why), "{e} / {why}");
        }
    }

    #[test]
    fn setuid_bits_and_absurd_times_are_dropped_with_a_note() {
        let (r, mut rx) = take_one(
            MetadataPart {
                files: vec![
                    file("a", Some(0o4755), Some(i64::MAX)),
                    file("d/b", Some(0o600), Some(-5)),
                ],
                dirs: vec![
                    file("d", Some(0o7777), Some(MAX_MTIME + 1)),
                    file("d", None, None),
                ],
                last: true,
                ..MetadataPart::default()
            },
            &["a", "d/b"],
        );
        r.unwrap();
        assert_eq!(rx.notes.shown.len(), 3, "{:?}", rx.notes);
        assert!(rx.notes.shown[0].1.contains("setuid"));
        assert!(rx.notes.shown[1].1.contains("out of range"));
        let paths = [
            SafePath::parse("a").unwrap(),
            SafePath::parse("d/b").unwrap(),
        ];
        let IoRequest::ApplyMetadata { files, dirs } = rx.request(paths.iter().enumerate()) else {
            panic!("not an ApplyMetadata request");
        };
        assert_eq!(
            files
                .iter()
                .map(|(p, a)| (p.as_str(), *a))
                .collect::<Vec<_>>(),
            [
                (
                    "a",
                    Attrs {
                        mode: Some(0o755),
                        mtime: None
                    }
                ),
                (
                    "d/b",
                    Attrs {
                        mode: Some(0o600),
                        mtime: Some(-5)
                    }
                ),
            ]
        );
        // The directory named twice is taken once; its absurd time is left out.
        assert_eq!(dirs.len(), 1);
        assert_eq!(dirs[0].1, None);
    }

    #[test]
    fn too_many_directories_end_the_session() {
        let dirs = (0..65_537)
            .map(|i| file(&format!("d{i}"), None, None))
            .collect();
        let (r, _) = take_one(
            MetadataPart {
                dirs,
                ..MetadataPart::default()
            },
            &[],
        );
        assert!(r.unwrap_err().to_string().contains("more than 65536"));
    }
}
