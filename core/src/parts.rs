//! Lists that do not fit in one message, sent in parts (extension
//! [`EXT_PARTS`](crate::wire::EXT_PARTS)).
//!
//! A v1 message holds at most 2 MiB, so a manifest of some 20,000 files with long names,
//! the resume answer for as many, or a report that lists them as not delivered, does not
//! fit. Between two peers of this project such a list travels as a head message (the v1
//! message, with as many items as fit) and parts of at most [`PART_BUDGET`] bytes of
//! items each: `manifest_more` after the manifest, `receiver_manifest_more` before the
//! resume answer, `report_more` before the report.
//!
//! When encrypting, a part travels as `enc_part`, sealed under a nonce of its own:
//! SHA-256 of a label naming the list, the part's number as 8 bytes big-endian, and the
//! session's nonce seed S. It takes no nonce from the session's running chain, so a list
//! in parts leaves the order of every other sealed item exactly as in v1, and the nonce
//! of a part never equals one of the chain (those are SHA-256 of 32 bytes; these hash
//! at least 46) or of another list's part (the labels differ), as long as SHA-256 has
//! no collisions.

use serde::de::DeserializeOwned;
use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::crypto::Cipher;
use crate::wire::{self, Control, FailedFile, ManifestEntry, Part, ResumeEntry, MAX_MESSAGE_LEN};
use crate::Error;

/// Most bytes of JSON items in one part. Sealed (16 bytes of tag) and hex-encoded, a part
/// of this size and its envelope stay below the 2 MiB limit.
pub const PART_BUDGET: usize = 900 * 1024;

/// Most entries a manifest in parts may declare. A receiver keeps every entry until the
/// end of the session (about 150 bytes and the path each), so this bounds its memory.
pub const MAX_ENTRIES: u64 = 4_000_000;

/// Most bytes of paths a manifest in parts may hold, all entries together.
pub const MAX_PATH_BYTES: u64 = 512 * 1024 * 1024;

/// Which list a part belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum List {
    /// The sender's manifest.
    Manifest,
    /// The receiver's resume answer.
    Answer,
    /// The failed files of the receiver's report.
    Report,
}

impl List {
    fn label(self) -> &'static [u8] {
        match self {
            List::Manifest => b"p2p-copy manifest part",
            List::Answer => b"p2p-copy resume answer part",
            List::Report => b"p2p-copy report part",
        }
    }

    /// The list's name, for messages.
    pub(crate) fn name(self) -> &'static str {
        match self {
            List::Manifest => "manifest",
            List::Answer => "resume answer",
            List::Report => "report",
        }
    }
}

/// The nonce that seals part `index` of `list` in the session whose seed is `seed`.
fn nonce(list: List, index: u64, seed: &[u8; 32]) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(list.label());
    h.update(index.to_be_bytes());
    h.update(seed);
    h.finalize().into()
}

/// Bytes `item` takes in a list's JSON, with its separating comma.
pub(crate) fn item_len<T: Serialize>(item: &T) -> usize {
    // Plain data types always serialise (see `Control::to_json`).
    serde_json::to_string(item).map_or(0, |s| s.len()) + 1
}

/// Split `items` into groups of at most `budget` bytes of JSON each (a group holds at
/// least one item, whatever its size).
pub(crate) fn split<T: Serialize>(items: Vec<T>, budget: usize) -> Vec<Vec<T>> {
    let mut groups = Vec::new();
    let mut group = Vec::new();
    let mut used = 0;
    for item in items {
        let len = item_len(&item);
        if !group.is_empty() && used + len > budget {
            groups.push(std::mem::take(&mut group));
            used = 0;
        }
        used += len;
        group.push(item);
    }
    if !group.is_empty() || groups.is_empty() {
        groups.push(group);
    }
    groups
}

/// Whether a message of `len` bytes of JSON, sealed and hex-encoded when `sealed`, fits
/// in one message.
pub(crate) fn fits(len: usize, sealed: bool) -> bool {
    // The envelope of a sealed manifest: its keys and the 64 hex digits of the seed.
    const ENVELOPE: usize = 200;
    let wire_len = if sealed {
        2 * (len + wire::TAG_LEN) + ENVELOPE
    } else {
        len
    };
    wire_len <= MAX_MESSAGE_LEN
}

/// The plain message of part `index` of `list`.
fn plain_part<T: PartItem>(index: u64, entries: Vec<T>) -> Control {
    T::wrap(Part { index, entries })
}

/// The message that carries part `index` of `list`: plain, or sealed as `enc_part`
/// when `sealing` holds the session's cipher and seed.
pub(crate) fn part_message<T: PartItem>(
    index: u64,
    entries: Vec<T>,
    sealing: Option<(&Cipher, &[u8; 32])>,
) -> Control {
    let plain = plain_part(index, entries);
    match sealing {
        None => plain,
        Some((cipher, seed)) => Control::EncPart {
            index,
            hidden_part: wire::hex(
                &cipher.seal(&nonce(T::LIST, index, seed), plain.to_json().as_bytes()),
            ),
        },
    }
}

/// An item of a list that travels in parts.
pub(crate) trait PartItem: Serialize + DeserializeOwned + Sized {
    /// The list.
    const LIST: List;
    /// The part's plain message.
    fn wrap(part: Part<Self>) -> Control;
    /// The part in a plain message of the right type.
    fn unwrap(c: Control) -> Option<Part<Self>>;
}

impl PartItem for ManifestEntry {
    const LIST: List = List::Manifest;
    fn wrap(part: Part<Self>) -> Control {
        Control::ManifestMore(part)
    }
    fn unwrap(c: Control) -> Option<Part<Self>> {
        match c {
            Control::ManifestMore(p) => Some(p),
            _ => None,
        }
    }
}

impl PartItem for ResumeEntry {
    const LIST: List = List::Answer;
    fn wrap(part: Part<Self>) -> Control {
        Control::ReceiverManifestMore(part)
    }
    fn unwrap(c: Control) -> Option<Part<Self>> {
        match c {
            Control::ReceiverManifestMore(p) => Some(p),
            _ => None,
        }
    }
}

impl PartItem for FailedFile {
    const LIST: List = List::Report;
    fn wrap(part: Part<Self>) -> Control {
        Control::ReportMore(part)
    }
    fn unwrap(c: Control) -> Option<Part<Self>> {
        match c {
            Control::ReportMore(p) => Some(p),
            _ => None,
        }
    }
}

/// The receiving end of one list in parts: checks the order of the parts and the number
/// of items against what the list may hold.
#[derive(Debug, Clone)]
pub(crate) struct Collect {
    next: u64,
    got: u64,
    max: u64,
}

impl Collect {
    /// A list that may bring at most `max` more items.
    pub(crate) fn new(max: u64) -> Collect {
        Collect {
            next: 1,
            got: 0,
            max,
        }
    }

    /// Items taken so far.
    pub(crate) fn got(&self) -> u64 {
        self.got
    }

    /// Open the part in `c` (plain, or sealed when `sealing` holds the session's cipher
    /// and seed; an encrypting side accepts only sealed parts, a plain side only plain
    /// ones) and check it: its number is the next one, it holds at least one item, and
    /// the items so far stay within the limit.
    ///
    /// # Errors
    /// [`Error::Peer`] for the wrong form, a part out of order, an empty part or too many
    /// items; [`Error::Integrity`] for a part that does not decrypt.
    pub(crate) fn take<T: PartItem>(
        &mut self,
        c: Control,
        sealing: Option<(&Cipher, &[u8; 32])>,
    ) -> Result<Vec<T>, Error> {
        let what = T::LIST.name();
        let part = match (c, sealing) {
            (Control::EncPart { index, hidden_part }, Some((cipher, seed))) => {
                let sealed = wire::unhex(&hidden_part)
                    .ok_or_else(|| Error::peer(format!("a part of the {what} is not hex")))?;
                let plain = cipher
                    .open(&nonce(T::LIST, index, seed), &sealed)
                    .ok_or_else(|| {
                        Error::integrity(format!(
                            "part {index} of the {what} does not decrypt (tampered, replayed or out of order)"
                        ))
                    })?;
                let text = String::from_utf8(plain)
                    .map_err(|_| Error::peer(format!("a part of the {what} is not UTF-8")))?;
                let part = T::unwrap(Control::parse(&text)?).ok_or_else(|| {
                    Error::peer(format!("a sealed part of the {what} holds another message"))
                })?;
                if part.index != index {
                    return Err(Error::peer(format!(
                        "part {index} of the {what} says it is part {}",
                        part.index
                    )));
                }
                part
            }
            (c @ Control::EncPart { .. }, None) => {
                return Err(Error::peer(format!(
                    "{} message to a side without --encrypt",
                    c.type_name()
                )))
            }
            (c, sealing) => match T::unwrap(c) {
                Some(_) if sealing.is_some() => {
                    return Err(Error::peer(format!(
                        "a plain part of the {what} to an encrypting side"
                    )))
                }
                Some(p) => p,
                None => return Err(Error::misuse("not a part of the expected list")),
            },
        };
        if part.index != self.next {
            return Err(Error::peer(format!(
                "part {} of the {what} where part {} was due",
                part.index, self.next
            )));
        }
        if part.entries.is_empty() {
            return Err(Error::peer(format!(
                "part {} of the {what} is empty",
                part.index
            )));
        }
        let n = part.entries.len() as u64;
        if self.got + n > self.max {
            return Err(Error::peer(format!(
                "the {what} in parts holds more than the {} entries it may have",
                self.max
            )));
        }
        self.next += 1;
        self.got += n;
        Ok(part.entries)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entries(n: usize) -> Vec<ManifestEntry> {
        (0..n)
            .map(|i| ManifestEntry {
                path: format!("d/{i:06}"),
                size: i as u64,
                kind: None,
            })
            .collect()
    }

    #[test]
    fn split_keeps_every_item_in_order_within_the_budget() {
        let all = entries(1000);
        let groups = split(all.clone(), 2000);
        assert!(groups.len() > 1);
        for g in &groups {
            assert!(g.iter().map(item_len).sum::<usize>() <= 2000);
        }
        assert_eq!(groups.concat(), all);
        assert_eq!(split(Vec::<ManifestEntry>::new(), 10), vec![vec![]]);
        // An item larger than the budget still travels, alone.
        assert_eq!(split(entries(2), 1).len(), 2);
    }

    #[test]
    fn sealed_parts_open_only_for_their_list_number_and_seed() {
        let cipher = Cipher::new(&[3; 32]);
        let seed = [9; 32];
        let msg = part_message(1, entries(3), Some((&cipher, &seed)));
        assert!(matches!(msg, Control::EncPart { index: 1, .. }));
        let got: Vec<ManifestEntry> = Collect::new(3)
            .take(msg.clone(), Some((&cipher, &seed)))
            .unwrap();
        assert_eq!(got, entries(3));
        // Another list's label, another seed: no.
        let e = Collect::new(3)
            .take::<ResumeEntry>(msg.clone(), Some((&cipher, &seed)))
            .unwrap_err();
        assert_eq!(e.kind(), "integrity");
        let e = Collect::new(3)
            .take::<ManifestEntry>(msg.clone(), Some((&cipher, &[8; 32])))
            .unwrap_err();
        assert_eq!(e.kind(), "integrity");
        // Renumbered in the envelope: the nonce no longer matches.
        let Control::EncPart { hidden_part, .. } = msg.clone() else {
            unreachable!()
        };
        let moved = Control::EncPart {
            index: 2,
            hidden_part,
        };
        let mut c = Collect::new(9);
        c.next = 2;
        assert_eq!(
            c.take::<ManifestEntry>(moved, Some((&cipher, &seed)))
                .unwrap_err()
                .kind(),
            "integrity"
        );
        // A plain part to an encrypting side, a sealed one to a plain side.
        let plain = part_message(1, entries(1), None);
        assert!(Collect::new(3)
            .take::<ManifestEntry>(plain, Some((&cipher, &seed)))
            .is_err());
        assert!(Collect::new(3).take::<ManifestEntry>(msg, None).is_err());
    }

    #[test]
    fn parts_out_of_order_empty_or_beyond_the_count_are_refused() {
        let mut c = Collect::new(4);
        let first: Vec<ManifestEntry> = c.take(part_message(1, entries(2), None), None).unwrap();
        assert_eq!(first.len(), 2);
        let again = c.take::<ManifestEntry>(part_message(1, entries(1), None), None);
        assert!(again.unwrap_err().to_string().contains("part 2 was due"));
        let empty =
            c.take::<ManifestEntry>(part_message(2, Vec::<ManifestEntry>::new(), None), None);
        assert!(empty.unwrap_err().to_string().contains("empty"));
        let over = c.take::<ManifestEntry>(part_message(2, entries(3), None), None);
        assert!(over.unwrap_err().to_string().contains("more than the 4"));
        assert_eq!(c.got(), 2);
    }

    #[test]
    fn a_part_of_the_budget_fits_in_a_message_sealed() {
        let part = split(entries(100_000), PART_BUDGET).remove(0);
        let cipher = Cipher::new(&[3; 32]);
        let msg = part_message(7, part, Some((&cipher, &[1; 32])));
        assert!(wire::WireMessage::from(msg).len() <= MAX_MESSAGE_LEN);
    }
}
