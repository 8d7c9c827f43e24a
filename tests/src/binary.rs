//! Locating the `p2p-copy` command-line binary, for tests that run it as a process.
//!
//! Tests of the `p2p-copy` package itself use `env!("CARGO_BIN_EXE_p2p-copy")`; tests in
//! other packages cannot. [`cli_binary`] takes the binary from the target directory of
//! the running test when it is newer than every source it is built from (as it is under
//! `cargo test --workspace`, which builds it), and otherwise builds it with cargo.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::SystemTime;

/// The workspace directories whose files go into the binary.
const SOURCES: [&str; 5] = [
    "cli",
    "core",
    "runtime",
    "runtime-smol",
    "runtime-async-std",
];

/// The path of an up-to-date `p2p-copy` binary.
///
/// `P2P_COPY_BIN` overrides it. Otherwise `<target>/<profile>/p2p-copy` next to the
/// running test is used if it is newer than every file of the crates it is built from,
/// and else `cargo build -p p2p-copy` (smol, the default runtime) runs once per test
/// process, for the same target directory and profile. Panics if the build fails.
pub fn cli_binary() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| match std::env::var_os("P2P_COPY_BIN") {
        Some(p) => PathBuf::from(p),
        None => locate_or_build(),
    })
    .clone()
}

fn workspace() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the tests package sits in the workspace root")
}

fn locate_or_build() -> PathBuf {
    // A test executable lives in <target>/<profile>/deps/.
    let exe = std::env::current_exe().expect("current_exe");
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("test executable in <target>/<profile>/deps")
        .to_path_buf();
    let bin = profile_dir.join(format!("p2p-copy{}", std::env::consts::EXE_SUFFIX));
    if let Ok(built) = fs::metadata(&bin).and_then(|m| m.modified()) {
        if newest_source().is_some_and(|src| src <= built) {
            return bin;
        }
    }
    build(&profile_dir);
    assert!(bin.is_file(), "{} missing after build", bin.display());
    bin
}

/// The newest modification time of the files the binary is built from, or `None` if
/// they cannot be read (then the binary is rebuilt).
fn newest_source() -> Option<SystemTime> {
    let ws = workspace();
    let mut newest = SystemTime::UNIX_EPOCH;
    let mut stack: Vec<PathBuf> = vec![ws.join("Cargo.toml"), ws.join("Cargo.lock")];
    stack.extend(SOURCES.iter().map(|d| ws.join(d)));
    while let Some(path) = stack.pop() {
        let meta = fs::symlink_metadata(&path).ok()?;
        if meta.is_dir() {
            for entry in fs::read_dir(&path).ok()? {
                stack.push(entry.ok()?.path());
            }
        } else {
            newest = newest.max(meta.modified().ok()?);
        }
    }
    Some(newest)
}

fn build(profile_dir: &Path) {
    let target_dir = profile_dir.parent().expect("<target>/<profile>");
    let profile = match profile_dir.file_name().and_then(|n| n.to_str()) {
        Some("debug") => "dev".to_owned(),
        Some(other) => other.to_owned(),
        None => panic!("cannot tell the profile from {}", profile_dir.display()),
    };
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let status = Command::new(cargo)
        .current_dir(workspace())
        .args(["build", "--quiet", "-p", "p2p-copy", "--bin", "p2p-copy"])
        .arg("--profile")
        .arg(&profile)
        .arg("--target-dir")
        .arg(target_dir)
        .status()
        .expect("run cargo build -p p2p-copy");
    assert!(status.success(), "cargo build -p p2p-copy failed: {status}");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cli_binary_is_found_or_built_and_runs() {
        let out = Command::new(cli_binary())
            .arg("--version")
            .output()
            .expect("run p2p-copy --version");
        assert!(out.status.success(), "{out:?}");
        let version = String::from_utf8_lossy(&out.stdout);
        assert_eq!(
            version.trim(),
            concat!("p2p-copy ", env!("CARGO_PKG_VERSION"))
        );
    }
}
