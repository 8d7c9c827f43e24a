//! The relay connection through a proxy: HTTP CONNECT (with basic authentication) or
//! SOCKS5 (without authentication, or with a user name and password).
//!
//! A proxy is named by a URL: `http://[user:pass@]host[:port]` (port 80 by default; the
//! proxy is spoken to in plain HTTP, as every HTTPS proxy of the `HTTPS_PROXY` kind
//! is), `socks5://[user:pass@]host[:port]` or `socks5h://…` (port 1080 by default). Both
//! SOCKS forms hand the relay's host name to the proxy, which resolves it: on the
//! networks proxies serve, the client often cannot resolve outside names itself.
//!
//! Once the proxy has opened the tunnel, TLS (for `wss://`) and the WebSocket handshake
//! run through it exactly as over a direct TCP connection; the proxy sees only the
//! relay's name and port, and with `wss://` nothing but ciphertext after that.

use std::fmt;
use std::io;

use futures_util::io::{AsyncReadExt, AsyncWriteExt};

use crate::rt::Rt;
use crate::transport::Conn;

/// The longest answer head an HTTP proxy may send to a CONNECT request.
const MAX_HEAD: usize = 16 * 1024;

/// How to reach the proxy, and what it speaks.
#[derive(Clone, PartialEq, Eq)]
pub struct Proxy {
    kind: Kind,
    host: String,
    port: u16,
    /// User name and password, percent-decoded.
    auth: Option<(String, String)>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Http,
    Socks5,
}

impl fmt::Debug for Proxy {
    /// Never shows the password.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{self}")
    }
}

impl fmt::Display for Proxy {
    /// The proxy's URL without its credentials, for messages and logs.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let scheme = match self.kind {
            Kind::Http => "http",
            Kind::Socks5 => "socks5",
        };
        let host = if self.host.contains(':') {
            format!("[{}]", self.host)
        } else {
            self.host.clone()
        };
        write!(f, "{scheme}://{host}:{}", self.port)
    }
}

impl Proxy {
    /// Parse a proxy URL.
    ///
    /// # Errors
    /// A message naming what is wrong: an unknown scheme, no host, a bad port.
    pub fn parse(url: &str) -> Result<Proxy, String> {
        let shown = || hide_password(url);
        let (scheme, rest) = url.split_once("://").ok_or_else(|| {
            format!(
                "proxy {}: use http://host:port, socks5://host:port or socks5h://host:port",
                shown()
            )
        })?;
        let (kind, default_port) = match scheme.to_ascii_lowercase().as_str() {
            "http" => (Kind::Http, 80),
            "socks5" | "socks5h" => (Kind::Socks5, 1080),
            "https" => {
                return Err(format!(
                    "proxy {}: TLS to the proxy itself is not supported; most proxies \
                     named in HTTPS_PROXY speak plain HTTP: use http://",
                    shown()
                ))
            }
            other => {
                return Err(format!(
                    "proxy {}: unknown scheme {other}://; use http://, socks5:// or socks5h://",
                    shown()
                ))
            }
        };
        let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
        let (auth, hostport) = match authority.rsplit_once('@') {
            Some((userinfo, hostport)) => {
                let (user, pass) = userinfo.split_once(':').unwrap_or((userinfo, ""));
                (
                    Some((percent_decode(user)?, percent_decode(pass)?)),
                    hostport,
                )
            }
            None => (None, authority),
        };
        let (host, port) = split_host_port(hostport)
            .ok_or_else(|| format!("proxy {}: bad host or port", shown()))?;
        if host.is_empty() {
            return Err(format!("proxy {}: names no host", shown()));
        }
        Ok(Proxy {
            kind,
            host,
            port: port.unwrap_or(default_port),
            auth,
        })
    }

    /// Open a TCP connection to the proxy and have it open a tunnel to `host:port`.
    ///
    /// # Errors
    /// A message for the user: the proxy cannot be reached, or it refused, with its
    /// reason.
    pub(crate) async fn connect<R: Rt>(
        &self,
        rt: &R,
        host: &str,
        port: u16,
    ) -> Result<Box<dyn Conn>, String> {
        let tcp = rt
            .connect(self.host.clone(), self.port)
            .await
            .map_err(|e| format!("cannot reach the proxy {self}: {e}"))?;
        let _ = R::set_nodelay(&tcp);
        match self.kind {
            Kind::Http => self.http_connect(tcp, host, port).await,
            Kind::Socks5 => self.socks5_connect(tcp, host, port).await,
        }
    }

    async fn http_connect<S: Conn + 'static>(
        &self,
        mut tcp: S,
        host: &str,
        port: u16,
    ) -> Result<Box<dyn Conn>, String> {
        let target = if host.contains(':') {
            format!("[{host}]:{port}")
        } else {
            format!("{host}:{port}")
        };
        let mut request = format!("CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n");
        if let Some((user, pass)) = &self.auth {
            use base64::Engine;
            let token = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{pass}"));
            request.push_str(&format!("Proxy-Authorization: Basic {token}\r\n"));
        }
        request.push_str("\r\n");
        let lost = |e: io::Error| format!("the proxy {self} closed the connection: {e}");
        tcp.write_all(request.as_bytes()).await.map_err(lost)?;
        tcp.flush().await.map_err(lost)?;
        // Byte by byte up to the blank line: whatever follows belongs to the tunnel, and
        // the relay speaks only after the client's TLS or WebSocket request anyway.
        let mut head = Vec::with_capacity(256);
        let mut byte = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            if head.len() >= MAX_HEAD {
                return Err(format!("the proxy {self} sent an answer head over 16 KiB"));
            }
            match tcp.read(&mut byte).await.map_err(lost)? {
                0 => {
                    return Err(format!(
                        "the proxy {self} closed the connection without answering CONNECT"
                    ))
                }
                _ => head.push(byte[0]),
            }
        }
        let mut headers = [httparse::EMPTY_HEADER; 64];
        let mut answer = httparse::Response::new(&mut headers);
        match answer.parse(&head) {
            Ok(httparse::Status::Complete(_)) => {}
            _ => {
                return Err(format!(
                    "the proxy {self} answered CONNECT with something that is not HTTP"
                ))
            }
        }
        let code = answer.code.unwrap_or(0);
        if (200..300).contains(&code) {
            return Ok(Box::new(tcp));
        }
        let reason = p2p_copy_core::path::escape(answer.reason.unwrap_or(""));
        let hint = match code {
            // 407 is the standard answer; some proxies (tinyproxy) send 401.
            401 | 407 if self.auth.is_none() => {
                " (it wants a user name and password: http://user:pass@host:port)"
            }
            401 | 407 => " (the user name or password was not accepted)",
            403 => " (its rules do not allow a connection to this relay or port)",
            _ => "",
        };
        Err(format!(
            "the proxy {self} refused the connection to {target}: {code} {reason}{hint}"
        ))
    }

    async fn socks5_connect<S: Conn + 'static>(
        &self,
        tcp: S,
        host: &str,
        port: u16,
    ) -> Result<Box<dyn Conn>, String> {
        use tokio_socks::io::Compat;
        use tokio_socks::tcp::Socks5Stream;
        let socket = Compat::new(tcp);
        let target = (host, port);
        let stream = match &self.auth {
            Some((user, pass)) => {
                Socks5Stream::connect_with_password_and_socket(socket, target, user, pass).await
            }
            None => Socks5Stream::connect_with_socket(socket, target).await,
        }
        .map_err(|e| format!("the proxy {self} refused the connection to {host}:{port}: {e}"))?;
        Ok(Box::new(stream))
    }
}

/// `host[:port]` or `[v6][:port]`.
fn split_host_port(s: &str) -> Option<(String, Option<u16>)> {
    if let Some(rest) = s.strip_prefix('[') {
        let (host, after) = rest.split_once(']')?;
        let port = match after.strip_prefix(':') {
            Some(p) => Some(p.parse().ok()?),
            None if after.is_empty() => None,
            None => return None,
        };
        return Some((host.to_owned(), port));
    }
    match s.rsplit_once(':') {
        Some((host, port)) => Some((host.to_owned(), Some(port.parse().ok()?))),
        None => Some((s.to_owned(), None)),
    }
}

fn percent_decode(s: &str) -> Result<String, String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = s
                .get(i + 1..i + 3)
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .ok_or("proxy credentials: a % not followed by two hex digits")?;
            out.push(hex);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| "proxy credentials: not UTF-8 once decoded".to_owned())
}

/// `url` with any password replaced by `***`, for messages.
pub fn hide_password(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return p2p_copy_core::path::escape(url);
    };
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(end);
    let shown = match authority.rsplit_once('@') {
        Some((userinfo, hostport)) => match userinfo.split_once(':') {
            Some((user, _)) => format!("{user}:***@{hostport}"),
            None => format!("{userinfo}@{hostport}"),
        },
        None => authority.to_owned(),
    };
    p2p_copy_core::path::escape(&format!("{scheme}://{shown}{tail}"))
}

/// The proxy the environment names for a relay URL, as curl reads it: `NO_PROXY`
/// (or `no_proxy`) first, then `HTTPS_PROXY` for `wss://` and `HTTP_PROXY` for `ws://`
/// (lower case first), then `ALL_PROXY`; never for a relay on a loopback address or
/// `localhost`. `get` reads one variable (the environment, or
/// a table in tests). Empty variables count as unset.
pub fn from_env(relay_url: &str, get: impl Fn(&str) -> Option<String>) -> Option<String> {
    from_env_named(relay_url, get).map(|(_, url)| url)
}

/// [`from_env`], with the name of the variable the proxy came from.
pub fn from_env_named(
    relay_url: &str,
    get: impl Fn(&str) -> Option<String>,
) -> Option<(&'static str, String)> {
    from_env_or(relay_url, get, None)
}

/// [`from_env_named`], with `fallback` (a default proxy and the name of its source, such
/// as a configuration file's) used when no variable names one. The fallback obeys the
/// same rules: never for a loopback relay, nor for a host that `NO_PROXY` covers.
pub fn from_env_or(
    relay_url: &str,
    get: impl Fn(&str) -> Option<String>,
    fallback: Option<(&'static str, String)>,
) -> Option<(&'static str, String)> {
    let var = |names: &[&'static str]| {
        names
            .iter()
            .find_map(|n| get(n).filter(|v| !v.trim().is_empty()).map(|v| (*n, v)))
    };
    let (scheme, rest) = relay_url.split_once("://")?;
    let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
    let authority = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    let host = split_host_port(authority).map(|(h, _)| h.to_ascii_lowercase())?;
    // A relay on this machine is never reached through a proxy, as Go's and Python's
    // HTTP clients also decide.
    let loopback = host == "localhost"
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback());
    if loopback {
        return None;
    }
    if let Some((_, no)) = var(&["no_proxy", "NO_PROXY"]) {
        if no_proxy_matches(&no, &host) {
            return None;
        }
    }
    let specific: &[&'static str] = if scheme.eq_ignore_ascii_case("wss") {
        &["https_proxy", "HTTPS_PROXY"]
    } else {
        // Lower case only, as curl does: HTTP_PROXY may be set by a web server's CGI
        // environment from a request header.
        &["http_proxy"]
    };
    var(specific)
        .or_else(|| var(&["all_proxy", "ALL_PROXY"]))
        .or(fallback)
}

/// Whether `NO_PROXY`'s comma-separated list covers `host`: `*` covers everything, a
/// name covers itself and its subdomains (a leading dot is optional), an address
/// covers itself.
fn no_proxy_matches(list: &str, host: &str) -> bool {
    list.split(',')
        .map(str::trim)
        .filter(|e| !e.is_empty())
        .any(|entry| {
            if entry == "*" {
                return true;
            }
            let entry = entry.trim_start_matches('.').to_ascii_lowercase();
            let entry = split_host_port(&entry).map_or(entry.clone(), |(h, _)| h);
            host == entry || host.ends_with(&format!(".{entry}"))
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_fallback_proxy_comes_last_and_obeys_no_proxy_and_loopback() {
        let file = || Some(("config file", "http://file:1".to_owned()));
        let none = |_: &str| None;
        assert_eq!(
            from_env_or("wss://relay.example:443", none, file()),
            Some(("config file", "http://file:1".to_owned()))
        );
        assert_eq!(from_env_or("ws://127.0.0.1:9", none, file()), None);
        assert_eq!(from_env_or("ws://localhost:9", none, file()), None);
        let no = |n: &str| (n == "NO_PROXY").then(|| "example".to_owned());
        assert_eq!(from_env_or("wss://relay.example:443", no, file()), None);
        let all = |n: &str| (n == "ALL_PROXY").then(|| "socks5://s:1".to_owned());
        assert_eq!(
            from_env_or("wss://relay.example:443", all, file()),
            Some(("ALL_PROXY", "socks5://s:1".to_owned()))
        );
    }

    #[test]
    fn proxy_urls_parse_with_defaults_and_hide_their_password() {
        let p = Proxy::parse("http://alice:s%40cret@proxy.example:3128").unwrap();
        assert_eq!(p.kind, Kind::Http);
        assert_eq!((p.host.as_str(), p.port), ("proxy.example", 3128));
        assert_eq!(p.auth, Some(("alice".into(), "s@cret".into())));
        assert_eq!(p.to_string(), "http://proxy.example:3128");
        assert!(!format!("{p:?}").contains("cret"));
        assert_eq!(Proxy::parse("http://p").unwrap().port, 80);
        let p = Proxy::parse("socks5h://[::1]").unwrap();
        assert_eq!(
            (p.kind, p.host.as_str(), p.port),
            (Kind::Socks5, "::1", 1080)
        );
        for (bad, says) in [
            ("proxy:3128", "use http://"),
            ("ftp://p:1", "unknown scheme"),
            ("https://p:1", "not supported"),
            ("http://:3128", "names no host"),
            ("http://p:port", "bad host or port"),
            ("http://u:%zz@p:1", "two hex digits"),
        ] {
            let e = Proxy::parse(bad).unwrap_err();
            assert!(e.contains(says), "{bad}: {e}");
        }
        let e = Proxy::parse("ftp://u:hunter2@p:1").unwrap_err();
        assert!(!e.contains("hunter2"), "{e}");
        assert_eq!(
            hide_password("http://u:hunter2@p:1/x"),
            "http://u:***@p:1/x"
        );
    }

    #[test]
    fn the_environment_names_the_proxy_as_curl_reads_it() {
        let env = |vars: &'static [(&'static str, &'static str)]| {
            move |name: &str| {
                vars.iter()
                    .find(|(n, _)| *n == name)
                    .map(|(_, v)| (*v).to_owned())
            }
        };
        let vars = env(&[
            ("HTTPS_PROXY", "http://secure:1"),
            ("http_proxy", "http://plain:2"),
            ("ALL_PROXY", "socks5://all:3"),
            ("NO_PROXY", "localhost, .internal.example,10.0.0.1"),
        ]);
        assert_eq!(
            from_env("wss://relay.example", vars).as_deref(),
            Some("http://secure:1")
        );
        assert_eq!(
            from_env("ws://relay.example:8765", vars).as_deref(),
            Some("http://plain:2")
        );
        assert_eq!(from_env("ws://localhost:8765", vars), None);
        assert_eq!(
            from_env("ws://127.0.0.1:8765", env(&[("ALL_PROXY", "http://p:1")])),
            None
        );
        assert_eq!(
            from_env("ws://[::1]:8765", env(&[("ALL_PROXY", "http://p:1")])),
            None
        );
        assert_eq!(from_env("wss://relay.internal.example", vars), None);
        assert_eq!(from_env("wss://internal.example", vars), None);
        assert_eq!(from_env("ws://10.0.0.1:1", vars), None);
        assert_eq!(
            from_env(
                "ws://x",
                env(&[
                    ("HTTP_PROXY", "http://cgi:1"),
                    ("all_proxy", "socks5://a:1")
                ])
            )
            .as_deref(),
            Some("socks5://a:1"),
            "upper-case HTTP_PROXY is not read"
        );
        assert_eq!(
            from_env(
                "wss://x",
                env(&[("NO_PROXY", "*"), ("ALL_PROXY", "http://p:1")])
            ),
            None
        );
        assert_eq!(from_env("wss://x", env(&[("HTTPS_PROXY", " ")])), None);
    }
}
