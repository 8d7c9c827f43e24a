//! What the receiver's user is asked before a transfer is accepted (extension
//! [`EXT_CONSENT`](crate::wire::EXT_CONSENT)).
//!
//! With [`ReceiverConfig::consent`](crate::receiver::ReceiverConfig::consent) the
//! receiver stops after a valid manifest, hands out an [`Offer`] through
//! [`Receiver::take_offer`](crate::receiver::Receiver::take_offer), reads nothing more
//! and writes nothing until [`Receiver::consent`](crate::receiver::Receiver::consent)
//! gives the user's answer.

use crate::path::SafePath;

/// The files a sender offers, as checked by the receiver.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Offer {
    entries: Vec<(SafePath, u64)>,
}

/// One top-level name of an [`Offer`] (a file, or a folder with everything below it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopLevel {
    /// The first component of the paths (not escaped).
    pub name: String,
    /// Files at or below it.
    pub files: usize,
    /// Their total size in bytes.
    pub bytes: u64,
    /// True for a folder (the paths go below the name).
    pub folder: bool,
}

impl Offer {
    /// An offer of these checked paths and sizes.
    pub fn new(entries: Vec<(SafePath, u64)>) -> Offer {
        Offer { entries }
    }

    /// The offers of the parallel sessions of one transfer, as one.
    pub fn merge(offers: impl IntoIterator<Item = Offer>) -> Offer {
        Offer {
            entries: offers.into_iter().flat_map(|o| o.entries).collect(),
        }
    }

    /// The paths and sizes, in manifest order.
    pub fn entries(&self) -> &[(SafePath, u64)] {
        &self.entries
    }

    /// How many files.
    pub fn files(&self) -> usize {
        self.entries.len()
    }

    /// Their total size in bytes.
    pub fn bytes(&self) -> u64 {
        self.entries.iter().fold(0u64, |a, e| a.saturating_add(e.1))
    }

    /// The top-level names, sorted, each with its files and bytes.
    pub fn top_level(&self) -> Vec<TopLevel> {
        let mut by_name: std::collections::BTreeMap<&str, TopLevel> = Default::default();
        for (path, size) in &self.entries {
            let first = path.components().next().unwrap_or(path.as_str());
            let t = by_name.entry(first).or_insert_with(|| TopLevel {
                name: first.to_owned(),
                files: 0,
                bytes: 0,
                folder: false,
            });
            t.files += 1;
            t.bytes = t.bytes.saturating_add(*size);
            t.folder |= first.len() < path.as_str().len();
        }
        by_name.into_values().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn offer(entries: &[(&str, u64)]) -> Offer {
        Offer::new(
            entries
                .iter()
                .map(|(p, s)| (SafePath::parse(p).unwrap(), *s))
                .collect(),
        )
    }

    #[test]
    fn top_level_names_group_folders_and_sum_their_files() {
        let o = offer(&[
            ("photos/a.jpg", 10),
            ("notes.txt", 3),
            ("photos/b/c.jpg", 5),
        ]);
        assert_eq!((o.files(), o.bytes()), (3, 18));
        let top = o.top_level();
        assert_eq!(
            top,
            vec![
                TopLevel {
                    name: "notes.txt".into(),
                    files: 1,
                    bytes: 3,
                    folder: false,
                },
                TopLevel {
                    name: "photos".into(),
                    files: 2,
                    bytes: 15,
                    folder: true,
                },
            ]
        );
    }

    #[test]
    fn merged_offers_count_every_session() {
        let o = Offer::merge([offer(&[("d/a", 1)]), offer(&[]), offer(&[("d/b", 2)])]);
        assert_eq!((o.files(), o.bytes(), o.top_level().len()), (2, 3, 1));
    }
}
