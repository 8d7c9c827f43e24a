//! The WebSocket connection: URL, TCP, optional TLS, handshake, limits, and the
//! conversion between WebSocket messages and the core's [`WireMessage`].

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_tungstenite::tungstenite::http::Uri;
use async_tungstenite::tungstenite::protocol::WebSocketConfig;
use async_tungstenite::tungstenite::Message;
use async_tungstenite::WebSocketStream;
use futures_io::{AsyncRead, AsyncWrite};
use futures_util::future::{select, Either};
use p2p_copy_core::wire::MAX_MESSAGE_LEN;
use p2p_copy_core::WireMessage;
use rustls_pki_types::ServerName;

use crate::rt::Rt;
use crate::tls;
use crate::TransferError;

/// Any byte stream a WebSocket runs over: plain TCP or TLS.
pub(crate) trait Conn: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Conn for T {}

/// A WebSocket over TCP or TLS.
pub(crate) type Ws = WebSocketStream<Box<dyn Conn>>;

/// Longest a connection may take to open (TCP, TLS and the WebSocket handshake).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);

/// Limits for both ends: messages and frames up to 2 MiB, no compression (tungstenite
/// implements no extension, so permessage-deflate is never negotiated).
pub(crate) fn ws_config() -> WebSocketConfig {
    WebSocketConfig::default()
        .max_message_size(Some(MAX_MESSAGE_LEN))
        .max_frame_size(Some(MAX_MESSAGE_LEN))
}

/// A WebSocket message for the core; `None` for control frames.
pub(crate) fn to_wire(msg: Message) -> Option<WireMessage> {
    match msg {
        Message::Text(t) => Some(WireMessage::Text(t.as_str().to_owned())),
        Message::Binary(b) => Some(WireMessage::Binary(b)),
        _ => None,
    }
}

/// A core message for the WebSocket.
pub(crate) fn from_wire(msg: WireMessage) -> Message {
    match msg {
        WireMessage::Text(t) => Message::text(t),
        WireMessage::Binary(b) => Message::Binary(b),
    }
}

/// Where to connect, from a `ws://` or `wss://` URL.
#[derive(Debug, PartialEq, Eq)]
struct Target {
    tls: bool,
    host: String,
    port: u16,
}

fn parse_server(server: &str) -> Result<Target, String> {
    let uri: Uri = server.parse().map_err(|e| {
        format!("{server:?} is not a URL ({e}); use ws://host:port or wss://host:port")
    })?;
    let tls = match uri.scheme_str() {
        Some("ws") => false,
        Some("wss") => true,
        _ => return Err(format!("{server:?} must start with ws:// or wss://")),
    };
    let host = uri
        .host()
        .filter(|h| !h.is_empty())
        .ok_or_else(|| format!("{server:?} names no host"))?;
    let host = host
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_owned();
    let port = uri.port_u16().unwrap_or(if tls { 443 } else { 80 });
    Ok(Target { tls, host, port })
}

/// Open a WebSocket to the relay at `server`.
pub(crate) async fn connect<R: Rt>(
    rt: &R,
    server: &str,
    ca_file: Option<&std::path::Path>,
    timeout: Duration,
) -> Result<Ws, TransferError> {
    let timeout = timeout.min(CONNECT_TIMEOUT);
    let deadline = Instant::now() + timeout;
    let attempt = Box::pin(open(rt, server, ca_file));
    match select(attempt, Box::pin(rt.sleep_until(deadline))).await {
        Either::Left((r, _)) => r,
        Either::Right(_) => Err(TransferError::Connect(format!(
            "{server}: no answer within {} s (is the relay running at this address?)",
            timeout.as_secs()
        ))),
    }
}

async fn open<R: Rt>(
    rt: &R,
    server: &str,
    ca_file: Option<&std::path::Path>,
) -> Result<Ws, TransferError> {
    let target = parse_server(server).map_err(TransferError::Connect)?;
    // TLS settings are checked before connecting: a bad CA file is a local mistake.
    let tls = match target.tls {
        true => Some(tls::client_config(ca_file).map_err(TransferError::Connect)?),
        false => None,
    };
    let tcp = rt
        .connect(target.host.clone(), target.port)
        .await
        .map_err(|e| {
            TransferError::Connect(format!(
                "{server}: {e} (is the relay running at this address?)"
            ))
        })?;
    // Only a latency tweak; the transfer works without it.
    let _ = R::set_nodelay(&tcp);
    let stream: Box<dyn Conn> = match tls {
        Some(config) => {
            let name = ServerName::try_from(target.host.clone()).map_err(|e| {
                TransferError::Connect(format!(
                    "{server}: {:?} is not a valid TLS name: {e}",
                    target.host
                ))
            })?;
            let tls = futures_rustls::TlsConnector::from(Arc::new(config))
                .connect(name, tcp)
                .await
                .map_err(|e| TransferError::Connect(tls::handshake_error(server, &e)))?;
            Box::new(tls)
        }
        None => Box::new(tcp),
    };
    let (ws, _) =
        async_tungstenite::client_async_with_config(server.to_owned(), stream, Some(ws_config()))
            .await
            .map_err(|e| {
                TransferError::Connect(format!(
                    "{server}: WebSocket handshake failed: {e} (is this a p2p-copy relay?)"
                ))
            })?;
    Ok(ws)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_give_scheme_host_and_default_ports() {
        let t = parse_server("wss://relay.example:8443/any/path").unwrap();
        assert_eq!(
            (t.tls, t.host.as_str(), t.port),
            (true, "relay.example", 8443)
        );
        let t = parse_server("ws://127.0.0.1").unwrap();
        assert_eq!((t.tls, t.port), (false, 80));
        assert_eq!(parse_server("wss://[::1]").unwrap().host, "::1");
        assert!(parse_server("http://x").is_err());
        assert!(parse_server("relay:80").is_err());
    }
}
