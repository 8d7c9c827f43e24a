//! The temp directory of one transfer test.

use std::fs;
use std::path::PathBuf;

use tempfile::TempDir;

/// A temp directory with `src/` (created, for the test to fill) and `out/` (not created:
/// the receiver makes it). Everything is removed when the scene is dropped.
#[derive(Debug)]
pub struct Scene {
    /// The temp directory itself, for anything else the test needs (certificates…).
    pub dir: TempDir,
    /// What the sender sends from.
    pub src: PathBuf,
    /// Where the receiver writes.
    pub out: PathBuf,
}

impl Scene {
    /// A fresh scene; panics if the temp directory cannot be made.
    pub fn new() -> Scene {
        let dir = tempfile::tempdir().expect("temp dir");
        let src = dir.path().join("src");
        fs::create_dir(&src).expect("create src");
        Scene {
            src,
            out: dir.path().join("out"),
            dir,
        }
    }
}

impl Default for Scene {
    fn default() -> Self {
        Scene::new()
    }
}
