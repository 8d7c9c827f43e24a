//! What the session loop needs from a connection ([`MessageTransport`]), and the
//! WebSocket connection: URL, TCP, optional TLS, handshake, limits, and the conversion
//! between WebSocket messages and the core's [`WireMessage`].

use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::{Duration, Instant};

use async_tungstenite::tungstenite::http::Uri;
use async_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use async_tungstenite::tungstenite::protocol::{CloseFrame, WebSocketConfig};
use async_tungstenite::tungstenite::Message;
use async_tungstenite::WebSocketStream;
use futures_io::{AsyncRead, AsyncWrite};
use futures_util::future::{poll_fn, select, Either};
use futures_util::{Sink, StreamExt};
use p2p_copy_core::wire::MAX_MESSAGE_LEN;
use p2p_copy_core::WireMessage;
use rustls_pki_types::ServerName;

use crate::relay_tokens::redact_url;
use crate::rt::Rt;
use crate::tls;
use crate::TransferError;

/// Why a connection failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TransportError {
    /// The connection itself failed or ended without a close: it is lost.
    Lost(String),
    /// The other end sent what the protocol does not allow (too large, malformed). The
    /// session ends as if a close with `code` (a WebSocket close code: 1009 too large,
    /// 1007 malformed) had come.
    Violation {
        /// The close code that describes the violation.
        code: u16,
        /// What was wrong.
        reason: String,
    },
}

impl std::fmt::Display for TransportError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TransportError::Lost(why) => f.write_str(why),
            TransportError::Violation { reason, .. } => f.write_str(reason),
        }
    }
}

impl std::error::Error for TransportError {}

/// What a connection delivers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Incoming {
    /// A message for the session.
    Message(WireMessage),
    /// The other end is closing, with a close code and reason if it gave them. The
    /// connection's end (`None` from [`MessageTransport::poll_recv`]) follows.
    Close(Option<(u16, String)>),
}

/// A connection that carries one session's messages in order: a WebSocket to the relay,
/// or a stream of a direct QUIC connection to the peer.
///
/// Writing works like a `Sink`: `poll_ready` says whether the connection takes another
/// message (this is the sender's backpressure), `start_send` queues it, `poll_flush`
/// pushes out what is queued. Reading is polled only while the session wants input (the
/// receiver's backpressure).
pub trait MessageTransport: Send + Unpin {
    /// Whether the connection takes another message now.
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), TransportError>>;
    /// Queue a message; call only after `poll_ready` gave `Ready(Ok)`.
    fn start_send(&mut self, msg: WireMessage) -> Result<(), TransportError>;
    /// Send everything queued.
    fn poll_flush(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), TransportError>>;
    /// Queue the closing message with a close code (1000 done, 1011 failed) and reason;
    /// call only after `poll_ready` gave `Ready(Ok)`, and flush it. Nothing may be sent
    /// after it.
    fn start_close(&mut self, code: u16, reason: &str) -> Result<(), TransportError>;
    /// The next message, the other end's close, an error, or `None` at the end.
    fn poll_recv(&mut self, cx: &mut Context<'_>)
        -> Poll<Option<Result<Incoming, TransportError>>>;

    /// The peer answered the offer of a direct connection (the session machine says
    /// so once): a connection that can run the attempt starts it. Others ignore it.
    fn direct_answer(&mut self, answer: p2p_copy_core::direct::DirectAnswer) {
        let _ = answer;
    }

    /// Work of the connection's own that must go on whether or not the session reads or
    /// writes (a direct-path attempt, acknowledgements): `Ready(Ok)` after progress
    /// (call again), `Pending` when nothing more can be done now, `Ready(Err)` when the
    /// session must fail.
    fn poll_background(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), p2p_copy_core::Error>> {
        let _ = cx;
        Poll::Pending
    }

    /// The next change of the path the session's messages take.
    fn poll_path_event(&mut self) -> Option<p2p_copy_core::PathEvent> {
        None
    }

    /// The session ended well: the last word on its path, if any (an attempt that was
    /// still running).
    fn finish(&mut self) -> Option<p2p_copy_core::PathEvent> {
        None
    }
}

/// Send one message and flush it.
pub(crate) async fn send<T: MessageTransport>(
    t: &mut T,
    msg: WireMessage,
) -> Result<(), TransportError> {
    poll_fn(|cx| t.poll_ready(cx)).await?;
    t.start_send(msg)?;
    poll_fn(|cx| t.poll_flush(cx)).await
}

/// Send the closing message and flush it.
pub(crate) async fn close<T: MessageTransport>(
    t: &mut T,
    code: u16,
    reason: &str,
) -> Result<(), TransportError> {
    poll_fn(|cx| t.poll_ready(cx)).await?;
    t.start_close(code, reason)?;
    poll_fn(|cx| t.poll_flush(cx)).await
}

/// The next thing the connection delivers.
pub(crate) async fn recv<T: MessageTransport>(
    t: &mut T,
) -> Option<Result<Incoming, TransportError>> {
    poll_fn(|cx| t.poll_recv(cx)).await
}

/// A connection that reaches the peer itself, with the relay's part of the v1 protocol
/// played locally: each side's `hello` (the relay's pairing request) stays here, and the
/// sender is told `ready` at once, as the relay would after pairing.
pub(crate) struct AlreadyPaired<T> {
    inner: T,
    /// The first outgoing message, `hello`, is still to come.
    hello_due: bool,
    /// `ready` is still to be delivered (the sender's side only).
    ready_due: bool,
}

impl<T: MessageTransport> AlreadyPaired<T> {
    pub(crate) fn sender(inner: T) -> Self {
        AlreadyPaired {
            inner,
            hello_due: true,
            ready_due: true,
        }
    }

    pub(crate) fn receiver(inner: T) -> Self {
        AlreadyPaired {
            inner,
            hello_due: true,
            ready_due: false,
        }
    }
}

impl<T: MessageTransport> MessageTransport for AlreadyPaired<T> {
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), TransportError>> {
        self.inner.poll_ready(cx)
    }

    fn start_send(&mut self, msg: WireMessage) -> Result<(), TransportError> {
        if std::mem::take(&mut self.hello_due) {
            if let WireMessage::Text(t) = &msg {
                if t.contains(r#""hello""#) {
                    return Ok(());
                }
            }
        }
        self.inner.start_send(msg)
    }

    fn poll_flush(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), TransportError>> {
        self.inner.poll_flush(cx)
    }

    fn start_close(&mut self, code: u16, reason: &str) -> Result<(), TransportError> {
        self.inner.start_close(code, reason)
    }

    fn poll_recv(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Incoming, TransportError>>> {
        if std::mem::take(&mut self.ready_due) {
            let ready = WireMessage::Text(r#"{"type":"ready"}"#.into());
            return Poll::Ready(Some(Ok(Incoming::Message(ready))));
        }
        self.inner.poll_recv(cx)
    }
}

/// The session's messages over a WebSocket.
pub(crate) struct WsTransport(pub(crate) Ws);

impl MessageTransport for WsTransport {
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), TransportError>> {
        Pin::new(&mut self.0)
            .poll_ready(cx)
            .map_err(|e| TransportError::Lost(e.to_string()))
    }

    fn start_send(&mut self, msg: WireMessage) -> Result<(), TransportError> {
        Pin::new(&mut self.0)
            .start_send(from_wire(msg))
            .map_err(|e| TransportError::Lost(e.to_string()))
    }

    fn poll_flush(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), TransportError>> {
        Pin::new(&mut self.0)
            .poll_flush(cx)
            .map_err(|e| TransportError::Lost(e.to_string()))
    }

    fn start_close(&mut self, code: u16, reason: &str) -> Result<(), TransportError> {
        let frame = CloseFrame {
            code: CloseCode::from(code),
            reason: reason.to_owned().into(),
        };
        Pin::new(&mut self.0)
            .start_send(Message::Close(Some(frame)))
            .map_err(|e| TransportError::Lost(e.to_string()))
    }

    fn poll_recv(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Incoming, TransportError>>> {
        use async_tungstenite::tungstenite::error::ProtocolError;
        use async_tungstenite::tungstenite::Error as WsError;
        loop {
            let got = match ready!(self.0.poll_next_unpin(cx)) {
                None => return Poll::Ready(None),
                Some(Ok(Message::Close(frame))) => {
                    Ok(Incoming::Close(frame.map(|f| {
                        (u16::from(f.code), f.reason.as_str().to_owned())
                    })))
                }
                Some(Ok(other)) => match to_wire(other) {
                    Some(wire) => Ok(Incoming::Message(wire)),
                    // Ping and pong: tungstenite answers them itself.
                    None => continue,
                },
                Some(Err(e)) => Err(match e {
                    // The connection itself failed: it is lost.
                    WsError::Io(_)
                    | WsError::ConnectionClosed
                    | WsError::AlreadyClosed
                    | WsError::Tls(_)
                    | WsError::Protocol(ProtocolError::ResetWithoutClosingHandshake) => {
                        TransportError::Lost(e.to_string())
                    }
                    // What came was not acceptable WebSocket traffic (too large,
                    // malformed): the other end broke the protocol, as a close with the
                    // matching code would say.
                    WsError::Capacity(_) => TransportError::Violation {
                        code: 1009,
                        reason: e.to_string(),
                    },
                    other => TransportError::Violation {
                        code: 1007,
                        reason: other.to_string(),
                    },
                }),
            };
            return Poll::Ready(Some(got));
        }
    }
}

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

/// The relay's host and port, from its URL (for its STUN port).
pub(crate) fn relay_host_port(server: &str) -> Option<(String, u16)> {
    parse_server(server).ok().map(|t| (t.host, t.port))
}

/// Open a WebSocket to the relay at `server`, with `token` as a bearer token if given.
/// Messages show the URL without the value of a `token` query parameter.
pub(crate) async fn connect<R: Rt>(
    rt: &R,
    server: &str,
    ca_file: Option<&std::path::Path>,
    proxy: Option<&str>,
    token: Option<&str>,
    timeout: Duration,
) -> Result<Ws, TransferError> {
    let timeout = timeout.min(CONNECT_TIMEOUT);
    let deadline = Instant::now() + timeout;
    let attempt = Box::pin(open(rt, server, ca_file, proxy, token));
    match select(attempt, Box::pin(rt.sleep_until(deadline))).await {
        Either::Left((r, _)) => r,
        Either::Right(_) => Err(TransferError::Connect(format!(
            "{}: no answer within {} s (is the relay running at this address?)",
            redact_url(server),
            timeout.as_secs()
        ))),
    }
}

/// The handshake request: the URL as given, plus the bearer token.
fn request(
    server: &str,
    token: Option<&str>,
) -> Result<async_tungstenite::tungstenite::handshake::client::Request, String> {
    use async_tungstenite::tungstenite::client::IntoClientRequest;
    use async_tungstenite::tungstenite::http::HeaderValue;
    let mut req = server.into_client_request().map_err(|e| e.to_string())?;
    if let Some(token) = token {
        let mut value = HeaderValue::from_str(&format!("Bearer {token}"))
            .map_err(|_| "the relay token holds characters a header cannot carry".to_owned())?;
        value.set_sensitive(true);
        req.headers_mut().insert("authorization", value);
    }
    Ok(req)
}

/// Why the relay's WebSocket handshake failed, for the user.
fn handshake_failure(
    server: &str,
    token_given: bool,
    e: &async_tungstenite::tungstenite::Error,
) -> String {
    use async_tungstenite::tungstenite::Error as WsError;
    if let WsError::Http(resp) = e {
        if resp.status().as_u16() == 401 {
            return if token_given {
                format!(
                    "{server}: the relay requires a token and refused the one given \
                     (check --relay-token or P2P_COPY_RELAY_TOKEN)"
                )
            } else {
                format!(
                    "{server}: the relay requires a token (give it with --relay-token or \
                     P2P_COPY_RELAY_TOKEN)"
                )
            };
        }
    }
    format!("{server}: WebSocket handshake failed: {e} (is this a p2p-copy relay?)")
}

async fn open<R: Rt>(
    rt: &R,
    server_url: &str,
    ca_file: Option<&std::path::Path>,
    proxy: Option<&str>,
    token: Option<&str>,
) -> Result<Ws, TransferError> {
    let shown = redact_url(server_url);
    let server = shown.as_str();
    // The shown URL differs only in the token's value, so it parses the same.
    let target = parse_server(server).map_err(TransferError::Connect)?;
    let token_given = token.is_some() || has_token_param(server_url);
    let req = request(server_url, token)
        .map_err(|e| TransferError::Connect(format!("{server}: {}", redact_url(&e))))?;
    // TLS settings are checked before connecting: a bad CA file is a local mistake.
    let tls = match target.tls {
        true => Some(tls::client_config(ca_file).map_err(TransferError::Connect)?),
        false => None,
    };
    let tcp: Box<dyn Conn> = match proxy {
        Some(proxy) => {
            let proxy = crate::proxy::Proxy::parse(proxy).map_err(TransferError::Connect)?;
            log::debug!("relay connection through the proxy {proxy}");
            proxy
                .connect(rt, &target.host, target.port)
                .await
                .map_err(|e| TransferError::Connect(format!("{server}: {e}")))?
        }
        None => {
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
            Box::new(tcp)
        }
    };
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
    let (ws, _) = async_tungstenite::client_async_with_config(req, stream, Some(ws_config()))
        .await
        .map_err(|e| TransferError::Connect(handshake_failure(server, token_given, &e)))?;
    Ok(ws)
}

/// Whether a URL carries a `token` query parameter.
fn has_token_param(url: &str) -> bool {
    url.split_once('?').is_some_and(|(_, q)| {
        q.split('#')
            .next()
            .unwrap_or("")
            .split('&')
            .any(|kv| kv.starts_with("token="))
    })
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
