//! Access tokens for the relay: a file of secrets, one per line, and the check of the
//! token a client presents in its WebSocket upgrade request (the URL's `token=` query
//! parameter, which every WebSocket client can send, or an `Authorization: Bearer`
//! header).
//!
//! Only SHA-256 digests of the tokens are kept, so that a lookup's timing tells nothing
//! about a token's bytes, and no token is ever written to a log.

use std::collections::HashSet;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use sha2::{Digest, Sha256};

/// The accepted tokens, as digests.
#[derive(Debug, Default, Clone)]
pub(crate) struct Tokens {
    digests: HashSet<[u8; 32]>,
}

impl Tokens {
    /// Read `path`: one token per line, surrounding white space ignored, empty lines and
    /// lines starting with `#` skipped.
    ///
    /// # Errors
    /// The file cannot be read, or holds no token (a relay nobody could use is a
    /// mistake, not a policy).
    pub(crate) fn load(path: &Path) -> io::Result<Tokens> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| io::Error::new(e.kind(), format!("token file {}: {e}", path.display())))?;
        let digests: HashSet<[u8; 32]> = text
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
            .map(digest)
            .collect();
        if digests.is_empty() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("token file {} holds no token", path.display()),
            ));
        }
        Ok(Tokens { digests })
    }

    /// How many tokens there are.
    pub(crate) fn len(&self) -> usize {
        self.digests.len()
    }

    fn admits(&self, token: &str) -> bool {
        self.digests.contains(&digest(token))
    }
}

fn digest(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

/// The relay's access control: off, or the tokens of a file that SIGHUP re-reads.
#[derive(Debug, Clone, Default)]
pub(crate) struct AccessControl {
    file: Option<PathBuf>,
    tokens: Arc<RwLock<Tokens>>,
}

/// What the check of a request found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// No token needed, or a valid one given.
    Admitted,
    /// A token is needed and none was given.
    Missing,
    /// A token was given that is not in the file.
    Refused,
}

impl AccessControl {
    /// Tokens from `file`, or no access control for `None`.
    ///
    /// # Errors
    /// As [`Tokens::load`].
    pub(crate) fn new(file: Option<&Path>) -> io::Result<AccessControl> {
        let tokens = match file {
            Some(f) => Tokens::load(f)?,
            None => Tokens::default(),
        };
        Ok(AccessControl {
            file: file.map(Path::to_path_buf),
            tokens: Arc::new(RwLock::new(tokens)),
        })
    }

    /// Whether tokens are required.
    pub(crate) fn is_on(&self) -> bool {
        self.file.is_some()
    }

    /// Read the file again; on failure keep the tokens in force and say why.
    ///
    /// # Errors
    /// As [`Tokens::load`]; the tokens in force stay.
    pub(crate) fn reload(&self) -> io::Result<usize> {
        let Some(file) = &self.file else {
            return Ok(0);
        };
        let fresh = Tokens::load(file)?;
        let n = fresh.len();
        *self.tokens.write().unwrap_or_else(|p| p.into_inner()) = fresh;
        Ok(n)
    }

    /// Check the token in a request head (the bytes up to the blank line).
    pub(crate) fn check(&self, head: &[u8]) -> Verdict {
        if !self.is_on() {
            return Verdict::Admitted;
        }
        let Some(token) = presented(head) else {
            return Verdict::Missing;
        };
        let tokens = self.tokens.read().unwrap_or_else(|p| p.into_inner());
        if tokens.admits(&token) {
            Verdict::Admitted
        } else {
            Verdict::Refused
        }
    }
}

/// The token of a request: `Authorization: Bearer …`, else the `token` parameter of the
/// request target's query (percent-decoded).
fn presented(head: &[u8]) -> Option<String> {
    let text = String::from_utf8_lossy(head);
    let mut lines = text.split("\r\n");
    let request_line = lines.next().unwrap_or("");
    for line in lines {
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        if name.trim().eq_ignore_ascii_case("authorization") {
            let value = value.trim();
            if let Some(scheme) = value.get(..7) {
                if scheme.eq_ignore_ascii_case("bearer ") {
                    return Some(value[7..].trim().to_owned());
                }
            }
        }
    }
    let target = request_line.split(' ').nth(1)?;
    let (_, query) = target.split_once('?')?;
    query
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .find(|(k, _)| *k == "token")
        .and_then(|(_, v)| percent_decode(v))
}

fn percent_decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = std::str::from_utf8(bytes.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// `url` with the value of a `token` query parameter replaced by `***`, for messages
/// (still a URL that parses to the same host and port).
pub(crate) fn redact_url(url: &str) -> String {
    let Some((base, query)) = url.split_once('?') else {
        return url.to_owned();
    };
    let (query, fragment) = match query.split_once('#') {
        Some((q, f)) => (q, Some(f)),
        None => (query, None),
    };
    let query: Vec<String> = query
        .split('&')
        .map(|kv| match kv.split_once('=') {
            Some(("token", _)) => "token=***".to_owned(),
            _ => kv.to_owned(),
        })
        .collect();
    let mut shown = format!("{base}?{}", query.join("&"));
    if let Some(f) = fragment {
        shown.push('#');
        shown.push_str(f);
    }
    shown
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(target: &str, headers: &str) -> Vec<u8> {
        format!("GET {target} HTTP/1.1\r\nHost: relay\r\n{headers}\r\n").into_bytes()
    }

    fn control(tokens: &str) -> (tempfile::TempDir, AccessControl) {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("tokens");
        std::fs::write(&file, tokens).unwrap();
        let ac = AccessControl::new(Some(&file)).unwrap();
        (dir, ac)
    }

    #[test]
    fn a_token_is_taken_from_the_query_or_a_bearer_header() {
        let (_d, ac) = control("# staff\n  s3cret  \n\nother%token\n");
        assert_eq!(ac.check(&head("/?token=s3cret", "")), Verdict::Admitted);
        assert_eq!(
            ac.check(&head("/room/x?a=1&token=s3cret", "")),
            Verdict::Admitted
        );
        assert_eq!(
            ac.check(&head("/?token=other%25token", "")),
            Verdict::Admitted
        );
        assert_eq!(
            ac.check(&head("/", "Authorization: bearer s3cret\r\n")),
            Verdict::Admitted
        );
        assert_eq!(ac.check(&head("/", "")), Verdict::Missing);
        assert_eq!(ac.check(&head("/?tokens=s3cret", "")), Verdict::Missing);
        assert_eq!(ac.check(&head("/?token=wrong", "")), Verdict::Refused);
        assert_eq!(ac.check(&head("/?token=%zz", "")), Verdict::Missing);
        assert_eq!(
            ac.check(&head("/", "Authorization: Basic czNjcmV0\r\n")),
            Verdict::Missing
        );
        assert_eq!(ac.check(&head("/?token=%23%20staff", "")), Verdict::Refused);
    }

    #[test]
    fn without_a_file_everyone_is_admitted() {
        let ac = AccessControl::new(None).unwrap();
        assert!(!ac.is_on());
        assert_eq!(ac.check(&head("/", "")), Verdict::Admitted);
    }

    #[test]
    fn a_file_without_tokens_is_refused_and_a_bad_reload_keeps_the_old_tokens() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("tokens");
        std::fs::write(&file, "# nothing\n\n").unwrap();
        let e = AccessControl::new(Some(&file)).unwrap_err();
        assert!(e.to_string().contains("holds no token"), "{e}");
        std::fs::write(&file, "a\nb\n").unwrap();
        let ac = AccessControl::new(Some(&file)).unwrap();
        std::fs::write(&file, "c\n").unwrap();
        assert_eq!(ac.reload().unwrap(), 1);
        assert_eq!(ac.check(&head("/?token=a", "")), Verdict::Refused);
        assert_eq!(ac.check(&head("/?token=c", "")), Verdict::Admitted);
        std::fs::remove_file(&file).unwrap();
        assert!(ac.reload().is_err());
        assert_eq!(ac.check(&head("/?token=c", "")), Verdict::Admitted);
    }

    #[test]
    fn urls_are_shown_without_their_token() {
        assert_eq!(
            redact_url("wss://relay:443/?token=s3cret"),
            "wss://relay:443/?token=***"
        );
        assert_eq!(
            redact_url("ws://h:1/r?a=1&token=x&b=2#f"),
            "ws://h:1/r?a=1&token=***&b=2#f"
        );
        assert_eq!(redact_url("ws://h:1"), "ws://h:1");
    }
}
