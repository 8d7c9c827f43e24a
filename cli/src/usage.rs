//! Usage mistakes found before anything connects: a URL that is not ws(s)://, an empty
//! code, a CA file that cannot be read, an output directory that cannot be written. Each
//! is reported in one line with exit code 1, instead of after a connection attempt or
//! after waiting for the peer.

use std::fs::{self, File, OpenOptions};
use std::path::Path;

use p2p_copy_core::parallel::connection_count;

use crate::args::{ClientArgs, Rendezvous, RELAY_ENV};
use crate::shown;

/// What is wrong with the command line, as a message for the user.
#[derive(Debug, PartialEq, Eq)]
pub struct Usage(pub String);

/// Check what `send` and `receive` share: the relay URL, the code and `--ca-file`, and
/// return the relay and the code. `first` is the first positional argument, which names
/// the relay in p2p-copy 0.1.x's form: when no relay was found, a first argument that
/// looks like one (`host:port` without `ws://`) gets its own message.
///
/// # Errors
/// The first mistake found.
pub fn check_client(
    a: &ClientArgs,
    found: Rendezvous,
    first: Option<&str>,
) -> Result<(String, String), Usage> {
    let Some(server) = found.server else {
        if let Some(arg) = first.filter(|f| f.contains(':') && !Path::new(f).exists()) {
            check_url(arg)?;
        }
        return Err(Usage(format!(
            "no relay given: put its URL first (ws://host:port or wss://host:port), \
             or use --relay URL or {RELAY_ENV}"
        )));
    };
    check_url(&server)?;
    let Some(code) = found.code else {
        return Err(Usage(
            "no code given: give both sides the same code, as the argument after the \
             relay URL or with --code (receive also reads P2P_COPY_CODE, and asks on a \
             terminal)"
                .into(),
        ));
    };
    check_code(&code)?;
    if let Some(proxy) = a.proxy_for(&server) {
        crate::backend::proxy::Proxy::parse(&proxy).map_err(Usage)?;
    }
    if let Some(ca) = &a.ca_file() {
        let from = if a.ca_file.is_some() {
            "--ca-file"
        } else {
            "ca_file (config file)"
        };
        check_readable_file(ca, from)?;
    }
    Ok((server, code))
}

/// Check that `server` is a ws:// or wss:// URL with a host.
///
/// # Errors
/// What is wrong with it.
pub fn check_url(server: &str) -> Result<(), Usage> {
    let shown_url = p2p_copy_core::path::escape(server);
    let Some((scheme, rest)) = server.split_once("://") else {
        return Err(Usage(format!(
            "{shown_url} is not a relay URL: use ws://host:port or wss://host:port"
        )));
    };
    if !matches!(scheme.to_ascii_lowercase().as_str(), "ws" | "wss") {
        return Err(Usage(format!(
            "{shown_url}: the relay speaks WebSocket, use ws:// or wss:// \
             (e.g. wss://host:443), not {scheme}://"
        )));
    }
    let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
    let host = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    if host.is_empty() || host.starts_with(':') {
        return Err(Usage(format!(
            "{shown_url} names no host: use ws://host:port or wss://host:port"
        )));
    }
    Ok(())
}

/// Check that a code can be used: not empty, and a parallel code well formed.
///
/// # Errors
/// What is wrong with it.
pub fn check_code(code: &str) -> Result<(), Usage> {
    if code.is_empty() {
        return Err(Usage(
            "the code is empty: give both sides the same non-empty code".into(),
        ));
    }
    connection_count(code).map_err(|e| Usage(e.to_string()))?;
    Ok(())
}

fn check_readable_file(path: &Path, option: &str) -> Result<(), Usage> {
    let cannot = |why: String| Usage(format!("{option} {}: {why}", shown(path)));
    let meta = fs::metadata(path).map_err(|e| cannot(io_reason(&e)))?;
    if !meta.is_file() {
        return Err(cannot("not a file".into()));
    }
    File::open(path).map_err(|e| cannot(io_reason(&e)))?;
    Ok(())
}

/// Make sure files can be created in `out`: create it if missing, then create and remove
/// a probe file, so that a read-only or mistyped `--out` is found before pairing rather
/// than after the sender has started.
///
/// # Errors
/// `out` is not a directory, cannot be created, or refuses new files.
pub fn check_out(out: &Path) -> Result<(), Usage> {
    let cannot = |why: String| Usage(format!("--out {}: {why}", shown(out)));
    match fs::metadata(out) {
        Ok(m) if m.is_dir() => {}
        Ok(_) => return Err(cannot("not a directory".into())),
        // Missing, or under a file: creating it gives the reason either way.
        Err(_) => {
            fs::create_dir_all(out)
                .map_err(|e| cannot(format!("cannot create it: {}", io_reason(&e))))?;
        }
    }
    let probe = out.join(format!(".p2p-copy-write-check-{}", std::process::id()));
    OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&probe)
        .map_err(|e| cannot(format!("cannot create files in it: {}", io_reason(&e))))?;
    let _ = fs::remove_file(&probe);
    Ok(())
}

/// An I/O error as a short phrase, without the "(os error N)" tail.
fn io_reason(e: &std::io::Error) -> String {
    let text = e.to_string();
    let text = match text.rfind(" (os error ") {
        Some(i) => &text[..i],
        None => &text,
    };
    let mut chars = text.chars();
    match chars.next() {
        Some(c) => c.to_lowercase().chain(chars).collect(),
        None => text.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_websocket_urls_with_a_host_pass() {
        for ok in [
            "ws://h:1",
            "wss://relay.example:443/x",
            "WSS://[::1]:8765",
            "ws://h",
        ] {
            assert_eq!(check_url(ok), Ok(()), "{ok}");
        }
        for (bad, says) in [
            ("http://h:1", "use ws:// or wss://"),
            ("https://relay.example", "use ws:// or wss://"),
            ("relay.example:443", "ws://host:port"),
            ("ws://", "names no host"),
            ("wss://:443", "names no host"),
        ] {
            let Err(Usage(msg)) = check_url(bad) else {
                panic!("{bad} accepted")
            };
            assert!(msg.contains(says), "{bad}: {msg}");
        }
    }

    #[test]
    fn empty_and_oversized_parallel_codes_are_refused() {
        assert!(check_code("").is_err());
        assert!(check_code("n=65=nx").is_err());
        assert_eq!(check_code("n=4=nx"), Ok(()));
        assert_eq!(check_code(" "), Ok(()));
    }
}
