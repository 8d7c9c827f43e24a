//! Deterministic source trees, and byte-for-byte comparison of what arrived.

use std::collections::BTreeMap;
use std::fs;
use std::io::{self, Read};
use std::path::{Path, PathBuf};

/// One MiB: the protocol's piece size, so sizes around it hit the chunk boundaries.
pub const MIB: u64 = 1 << 20;

/// What a generated file holds. The same recipe always gives the same bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Content {
    /// Incompressible pseudo-random bytes.
    Random {
        /// Length in bytes.
        size: u64,
        /// Varies the bytes.
        seed: u64,
    },
    /// Compressible text: words from a small vocabulary, in pseudo-random order.
    Text {
        /// Length in bytes.
        size: u64,
        /// Varies the bytes.
        seed: u64,
    },
    /// Exactly these bytes.
    Bytes(Vec<u8>),
}

impl Content {
    /// The bytes this recipe stands for.
    pub fn bytes(&self) -> Vec<u8> {
        match self {
            Content::Random { size, seed } => random_bytes(*size, *seed),
            Content::Text { size, seed } => text_bytes(*size, *seed),
            Content::Bytes(b) => b.clone(),
        }
    }
}

/// A file of a tree: its `/`-separated path relative to the tree's root, and its content.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileSpec {
    /// Relative path, `/`-separated.
    pub path: String,
    /// What it holds.
    pub content: Content,
}

impl FileSpec {
    /// A file of pseudo-random bytes.
    pub fn random(path: &str, size: u64, seed: u64) -> FileSpec {
        FileSpec {
            path: path.to_owned(),
            content: Content::Random { size, seed },
        }
    }

    /// A file of compressible text.
    pub fn text(path: &str, size: u64, seed: u64) -> FileSpec {
        FileSpec {
            path: path.to_owned(),
            content: Content::Text { size, seed },
        }
    }
}

/// A tree that covers what trips transfers up: nested folders, non-ASCII names (accents,
/// CJK, emoji, combining marks, spaces), an empty file, files of exactly 1 MiB and
/// 1 MiB + 1 (chunk boundaries), compressible and incompressible content. About 3.3 MiB.
pub fn standard_tree() -> Vec<FileSpec> {
    vec![
        FileSpec::text("readme.txt", 5_000, 1),
        FileSpec::random("empty", 0, 0),
        FileSpec::random("chunks/exactly-1MiB.bin", MIB, 2),
        FileSpec::random("chunks/1MiB-plus-1.bin", MIB + 1, 3),
        FileSpec::text("chunks/text-1MiB-minus-1.txt", MIB - 1, 4),
        FileSpec::text("ünïcödé/日本語のファイル.txt", 777, 5),
        FileSpec::random("ünïcödé/emoji 🎉 party.bin", 4_321, 6),
        FileSpec::text("ünïcödé/Ωmega/cafe\u{301} combining.txt", 64, 7),
        FileSpec::random("a/b/c/d/e/deep file.dat", 70_000, 8),
        FileSpec::random("a/b/sibling.dat", 1, 9),
        FileSpec::text("a/.hidden", 33, 10),
        FileSpec::text("spaces and 'quotes'/x.txt", 100, 11),
    ]
}

/// `n` small files spread over ten folders, sizes 0 to a few KiB.
pub fn many_files(n: usize) -> Vec<FileSpec> {
    (0..n)
        .map(|i| {
            let size = (i as u64 * 37) % 3_000;
            FileSpec::random(&format!("d{}/f{i:04}.bin", i % 10), size, 1_000 + i as u64)
        })
        .collect()
}

/// Write `files` below `root` (created if missing), creating parent folders.
pub fn write_tree(root: &Path, files: &[FileSpec]) {
    for f in files {
        let path = root.join(&f.path);
        fs::create_dir_all(path.parent().expect("a file path has a parent"))
            .unwrap_or_else(|e| panic!("create parent of {}: {e}", path.display()));
        fs::write(&path, f.content.bytes())
            .unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
    }
}

/// The receiver's partial file for `path` (relative, `/`-separated) below `out`:
/// `.<name>.p2p-copy-part` next to where the finished file goes.
pub fn partial_path(out: &Path, path: &str) -> PathBuf {
    let full = out.join(path);
    let name = full
        .file_name()
        .expect("a file path has a name")
        .to_string_lossy()
        .into_owned();
    full.with_file_name(format!(".{name}.p2p-copy-part"))
}

/// `size` pseudo-random bytes, the same for the same seed (splitmix64).
pub fn random_bytes(size: u64, seed: u64) -> Vec<u8> {
    let mut state = seed ^ 0x9e37_79b9_7f4a_7c15;
    let mut out = Vec::with_capacity(size as usize);
    while (out.len() as u64) < size {
        state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^= z >> 31;
        let take = (size as usize - out.len()).min(8);
        out.extend_from_slice(&z.to_le_bytes()[..take]);
    }
    out
}

/// `size` bytes of text that zstd shrinks well, the same for the same seed.
pub fn text_bytes(size: u64, seed: u64) -> Vec<u8> {
    const WORDS: [&str; 12] = [
        "relay ",
        "sender ",
        "receiver ",
        "chunk ",
        "chain ",
        "manifest ",
        "resume ",
        "zstd ",
        "hello ",
        "ready ",
        "eof ",
        "\n",
    ];
    let picks = random_bytes(size / 4 + 1, seed);
    let mut out = Vec::with_capacity(size as usize);
    for p in picks.iter().cycle() {
        if out.len() as u64 >= size {
            break;
        }
        out.extend_from_slice(WORDS[*p as usize % WORDS.len()].as_bytes());
    }
    out.truncate(size as usize);
    out
}

/// What a path below a root is.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Kind {
    Dir,
    File(u64),
    Other(String),
}

/// Every entry below `root`, by `/`-separated relative path. Symlinks are listed as
/// such, never followed.
fn list(root: &Path) -> io::Result<BTreeMap<String, Kind>> {
    let mut out = BTreeMap::new();
    let mut stack = vec![(root.to_path_buf(), String::new())];
    while let Some((dir, rel)) = stack.pop() {
        for entry in fs::read_dir(&dir)? {
            let entry = entry?;
            let name = entry.file_name().to_string_lossy().into_owned();
            let rel = if rel.is_empty() {
                name
            } else {
                format!("{rel}/{name}")
            };
            let meta = fs::symlink_metadata(entry.path())?;
            let kind = if meta.is_dir() {
                stack.push((entry.path(), rel.clone()));
                Kind::Dir
            } else if meta.is_file() {
                Kind::File(meta.len())
            } else {
                Kind::Other(format!("{:?}", meta.file_type()))
            };
            out.insert(rel, kind);
        }
    }
    Ok(out)
}

/// The first offset at which two files differ, or `None` when they are identical.
fn first_difference(a: &Path, b: &Path) -> io::Result<Option<u64>> {
    let mut fa = io::BufReader::with_capacity(MIB as usize, fs::File::open(a)?);
    let mut fb = io::BufReader::with_capacity(MIB as usize, fs::File::open(b)?);
    let mut ba = vec![0u8; 64 * 1024];
    let mut bb = vec![0u8; 64 * 1024];
    let mut offset = 0u64;
    loop {
        let na = read_full(&mut fa, &mut ba)?;
        let nb = read_full(&mut fb, &mut bb)?;
        if let Some(i) = ba[..na.min(nb)]
            .iter()
            .zip(&bb[..na.min(nb)])
            .position(|(x, y)| x != y)
        {
            return Ok(Some(offset + i as u64));
        }
        if na != nb {
            return Ok(Some(offset + na.min(nb) as u64));
        }
        if na == 0 {
            return Ok(None);
        }
        offset += na as u64;
    }
}

fn read_full(r: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..])? {
            0 => break,
            k => n += k,
        }
    }
    Ok(n)
}

/// Every difference between the trees below `expected` and `actual`: missing or extra
/// entries (leftover partial files count), different kinds, sizes or bytes. Empty when
/// the trees are identical.
pub fn tree_diff(expected: &Path, actual: &Path) -> Vec<String> {
    let want = list(expected).unwrap_or_else(|e| panic!("list {}: {e}", expected.display()));
    let got = list(actual).unwrap_or_else(|e| panic!("list {}: {e}", actual.display()));
    let mut diffs = Vec::new();
    for (path, kind) in &want {
        match got.get(path) {
            None => diffs.push(format!("missing: {path}")),
            Some(k) if k != kind => diffs.push(format!("{path}: expected {kind:?}, got {k:?}")),
            Some(Kind::File(_)) => {
                match first_difference(&expected.join(path), &actual.join(path)) {
                    Ok(None) => {}
                    Ok(Some(at)) => diffs.push(format!("{path}: bytes differ at offset {at}")),
                    Err(e) => diffs.push(format!("{path}: cannot compare: {e}")),
                }
            }
            Some(_) => {}
        }
    }
    for (path, kind) in &got {
        if !want.contains_key(path) {
            diffs.push(format!("unexpected: {path} ({kind:?})"));
        }
    }
    diffs
}

/// Panic with every difference unless the trees below `expected` and `actual` are
/// identical, byte for byte.
pub fn assert_same_tree(expected: &Path, actual: &Path) {
    let diffs = tree_diff(expected, actual);
    assert!(
        diffs.is_empty(),
        "{} differs from {}:\n  {}",
        actual.display(),
        expected.display(),
        diffs.join("\n  ")
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generation_is_deterministic_and_sized() {
        assert_eq!(random_bytes(1_000_003, 7), random_bytes(1_000_003, 7));
        assert_ne!(random_bytes(64, 7), random_bytes(64, 8));
        assert_eq!(random_bytes(13, 1).len(), 13);
        assert_eq!(text_bytes(MIB + 1, 3).len() as u64, MIB + 1);
        assert_eq!(text_bytes(0, 3).len(), 0);
    }

    #[test]
    fn diff_reports_missing_extra_and_changed_bytes() {
        let a = tempfile::tempdir().unwrap();
        let b = tempfile::tempdir().unwrap();
        write_tree(a.path(), &standard_tree());
        write_tree(b.path(), &standard_tree());
        assert!(tree_diff(a.path(), b.path()).is_empty());

        let mut changed = fs::read(b.path().join("chunks/1MiB-plus-1.bin")).unwrap();
        changed[MIB as usize] ^= 1;
        fs::write(b.path().join("chunks/1MiB-plus-1.bin"), changed).unwrap();
        fs::remove_file(b.path().join("empty")).unwrap();
        fs::write(partial_path(b.path(), "a/b/x"), b"").unwrap();

        let diffs = tree_diff(a.path(), b.path());
        assert_eq!(
            diffs,
            [
                format!("chunks/1MiB-plus-1.bin: bytes differ at offset {MIB}"),
                "missing: empty".to_owned(),
                "unexpected: a/b/.x.p2p-copy-part (File(0))".to_owned(),
            ]
        );
    }

    #[test]
    fn diff_reports_a_truncated_file() {
        let a = tempfile::tempdir().unwrap();
        let b = tempfile::tempdir().unwrap();
        write_tree(a.path(), &[FileSpec::random("f", 100, 1)]);
        fs::write(b.path().join("f"), &random_bytes(100, 1)[..60]).unwrap();
        assert_eq!(
            tree_diff(a.path(), b.path()),
            ["f: expected File(100), got File(60)"]
        );
    }
}
