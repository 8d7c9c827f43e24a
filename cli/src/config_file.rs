//! The configuration file: defaults for `send` and `receive` that would otherwise be
//! typed every time.
//!
//! A TOML file at the platform's configuration directory (`$XDG_CONFIG_HOME/p2p-copy/
//! config.toml` or `~/.config/p2p-copy/config.toml` on Linux, `~/Library/Application
//! Support/p2p-copy/config.toml` on macOS, `%APPDATA%\p2p-copy\config\config.toml` on
//! Windows), or wherever `P2P_COPY_CONFIG` points. Every key is optional:
//!
//! ```toml
//! relay = "wss://relay.example:443"
//! ca_file = "/etc/ssl/our-relay.pem"
//! proxy = "http://proxy.corp:3128"
//! encrypt = true
//! out = "/data/inbox"
//! relay_token = "…"   # for a relay run with --token-file
//! ```
//!
//! A flag wins over the environment, which wins over the file, which wins over the
//! built-in default. `p2p-copy config` shows the result and where each value came from.

use std::path::{Path, PathBuf};

use serde::Deserialize;

/// The environment variable that names another configuration file.
pub const CONFIG_ENV: &str = "P2P_COPY_CONFIG";

/// What the file may set.
#[derive(Debug, Default, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    /// The default relay URL.
    pub relay: Option<String>,
    /// A CA certificate (PEM) to trust for `wss://`.
    pub ca_file: Option<PathBuf>,
    /// The proxy for the relay connection.
    pub proxy: Option<String>,
    /// Encrypt unless `--no-encrypt` is given.
    pub encrypt: Option<bool>,
    /// The receiver's output directory.
    pub out: Option<PathBuf>,
    /// The access token for a relay run with `--token-file`.
    pub relay_token: Option<String>,
}

/// The configuration file that applies, and what it holds.
#[derive(Debug, Default, Clone)]
pub struct Loaded {
    /// Where the file is looked for (`None` when no configuration directory is known).
    pub path: Option<PathBuf>,
    /// Whether it exists.
    pub found: bool,
    /// Its settings (all unset when it does not exist).
    pub file: FileConfig,
}

/// Where the configuration file is: `P2P_COPY_CONFIG`, or the platform's place.
pub fn path() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os(CONFIG_ENV).filter(|p| !p.is_empty()) {
        return Some(PathBuf::from(p));
    }
    directories::ProjectDirs::from("", "", "p2p-copy").map(|d| d.config_dir().join("config.toml"))
}

/// Read the configuration file, if there is one.
///
/// # Errors
/// A message naming the file and what is wrong in it: it cannot be read, it is not
/// TOML, a key is unknown or has the wrong type. A file named by `P2P_COPY_CONFIG`
/// must exist.
pub fn load() -> Result<Loaded, String> {
    let Some(path) = path() else {
        return Ok(Loaded::default());
    };
    let named = std::env::var_os(CONFIG_ENV).is_some_and(|p| !p.is_empty());
    let text = match std::fs::read_to_string(&path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && !named => {
            return Ok(Loaded {
                path: Some(path),
                found: false,
                file: FileConfig::default(),
            })
        }
        Err(e) => return Err(format!("config file {}: {e}", shown(&path))),
    };
    let file = parse(&text).map_err(|e| format!("config file {}: {e}", shown(&path)))?;
    Ok(Loaded {
        path: Some(path),
        found: true,
        file,
    })
}

/// Parse the file's text.
///
/// # Errors
/// TOML's message, which names the line and the key.
pub fn parse(text: &str) -> Result<FileConfig, String> {
    toml::from_str(text).map_err(|e| e.to_string().trim_end().replace('\n', "\n  "))
}

fn shown(path: &Path) -> String {
    p2p_copy_core::path::escape(&path.display().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_key_is_optional_and_unknown_keys_are_refused() {
        assert_eq!(parse("").unwrap(), FileConfig::default());
        let f = parse(
            "relay = \"wss://r:443\"\nca_file = \"/x.pem\"\nproxy = \"http://p:1\"\n\
             encrypt = true\nout = \"/in\"\nrelay_token = \"t\"\n",
        )
        .unwrap();
        assert_eq!(f.relay.as_deref(), Some("wss://r:443"));
        assert_eq!(f.ca_file, Some(PathBuf::from("/x.pem")));
        assert_eq!(f.encrypt, Some(true));
        assert_eq!(f.out, Some(PathBuf::from("/in")));
        assert_eq!(f.relay_token.as_deref(), Some("t"));
        let e = parse("relays = \"x\"").unwrap_err();
        assert!(e.contains("relays"), "{e}");
        let e = parse("encrypt = \"yes\"").unwrap_err();
        assert!(e.contains("encrypt"), "{e}");
        assert!(parse("relay = ").is_err());
    }
}
