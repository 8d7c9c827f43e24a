//! Locating the `p2p-copy` command-line binary, for tests that run it as a process.
//!
//! Tests of the `p2p-copy` package itself use `env!("CARGO_BIN_EXE_p2p-copy")`; tests in
//! other packages cannot, so [`cli_binary`] builds it with cargo (a no-op when it is up to
//! date) into the same target directory and profile as the running test.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

/// The path of an up-to-date `p2p-copy` binary (smol runtime, default features).
///
/// `P2P_COPY_BIN` overrides it. Otherwise `cargo build -p p2p-copy` runs once per test
/// process, for the profile the tests were built with. Panics if the build fails.
pub fn cli_binary() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| match std::env::var_os("P2P_COPY_BIN") {
        Some(p) => PathBuf::from(p),
        None => build(),
    })
    .clone()
}

fn build() -> PathBuf {
    // A test executable lives in <target>/<profile>/deps/.
    let exe = std::env::current_exe().expect("current_exe");
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("test executable in <target>/<profile>/deps")
        .to_path_buf();
    let target_dir = profile_dir.parent().expect("<target>/<profile>");
    let profile = match profile_dir.file_name().and_then(|n| n.to_str()) {
        Some("debug") => "dev".to_owned(),
        Some(other) => other.to_owned(),
        None => panic!("cannot tell the profile from {}", profile_dir.display()),
    };
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the tests package sits in the workspace root");
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let status = Command::new(cargo)
        .current_dir(workspace)
        .args(["build", "--quiet", "-p", "p2p-copy", "--bin", "p2p-copy"])
        .arg("--profile")
        .arg(&profile)
        .arg("--target-dir")
        .arg(target_dir)
        .status()
        .expect("run cargo build -p p2p-copy");
    assert!(status.success(), "cargo build -p p2p-copy failed: {status}");
    let bin = profile_dir.join(format!("p2p-copy{}", std::env::consts::EXE_SUFFIX));
    assert!(bin.is_file(), "{} missing after build", bin.display());
    bin
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cli_binary_is_built_and_runs() {
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
