//! One relay connection's task: handshake, `hello` to the hub, then forwarding to the
//! partner with a bounded queue, and the close the hub asks for.

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use async_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use async_tungstenite::tungstenite::protocol::CloseFrame;
use async_tungstenite::tungstenite::Message;
use futures_io::{AsyncRead, AsyncWrite};
use futures_rustls::TlsAcceptor;
use futures_util::future::{select, Either};
use futures_util::{AsyncReadExt, AsyncWriteExt, SinkExt, StreamExt};
use p2p_copy_core::relay::ConnId;

use crate::relay_hub::{lock, Command, Forwarding, SharedHub};
use crate::relay_tokens::{AccessControl, Verdict};
use crate::rt::Rt;
use crate::transport::{self, to_wire, Conn, Ws};

/// Messages queued for a connection from its partner. A reader waits while its
/// partner's queue is full, so a slow receiver slows its sender.
pub(crate) const FORWARD_QUEUE: usize = 2;

/// Everything a connection's task needs.
pub(crate) struct ConnTask<R: Rt> {
    pub rt: R,
    pub hub: SharedHub,
    pub id: ConnId,
    pub tcp: R::TcpStream,
    pub tls: Option<TlsAcceptor>,
    pub commands: async_channel::Receiver<Command>,
    pub forward: async_channel::Receiver<Message>,
    pub forwarded: Arc<AtomicU64>,
    /// Who may connect.
    pub access: AccessControl,
    /// When the connection was accepted.
    pub accepted: Instant,
    /// Longest the TLS and WebSocket handshakes may take.
    pub handshake_timeout: Duration,
    /// How long a close may take once asked for (the client may never answer it).
    pub close_grace: Duration,
}

/// Reports the end of the connection to the hub however the task ends (returned,
/// aborted, or dropped with the server).
struct Departure {
    hub: SharedHub,
    id: ConnId,
}

impl Drop for Departure {
    fn drop(&mut self) {
        lock(&self.hub).depart(Instant::now(), self.id);
        log::debug!("connection {}: ended", self.id.0);
    }
}

/// The relay's read buffer, which is also its largest read: 64 KiB, about 15 % fewer
/// relay CPU-seconds per GiB than 16 KiB (docs/BENCHMARKS.md), while a connection that
/// waits for its partner holds no more than that; the buffer grows to a message's size
/// only while one arrives.
fn relay_ws_config() -> async_tungstenite::tungstenite::protocol::WebSocketConfig {
    transport::ws_config().read_buffer_size(64 * 1024)
}

/// Why a handshake failed: the reason for the log, and the kind for the metrics.
type HandshakeError = (String, &'static str);

async fn handshake(
    tcp: Box<dyn Conn>,
    tls: Option<TlsAcceptor>,
    access: &AccessControl,
) -> Result<Ws, HandshakeError> {
    let stream: Box<dyn Conn> = match tls {
        Some(acceptor) => Box::new(
            acceptor
                .accept(tcp)
                .await
                .map_err(|e| (format!("TLS handshake failed: {e}"), "handshake"))?,
        ),
        None => tcp,
    };
    let stream = answer_plain_http(stream, access).await?;
    async_tungstenite::accept_async_with_config(stream, Some(relay_ws_config()))
        .await
        .map_err(|e| (format!("WebSocket handshake failed: {e}"), "handshake"))
}

/// Most bytes of a request head the relay reads before handing the connection to the
/// WebSocket handshake; an upgrade request is a few hundred.
const MAX_REQUEST_HEAD: usize = 8 * 1024;

const UPGRADE_BODY: &str =
    "This is a p2p-copy relay: use p2p-copy send or receive with ws:// or wss:// and this address.\n";

/// The body of the answer to a request without a valid token. Clients of this project
/// recognise the status (401); others show the status line.
const TOKEN_BODY: &str = "the relay requires a token\n";

/// Read the request head. A plain HTTP request (a browser, a health check, curl) gets
/// `426 Upgrade Required` and an explanation instead of an empty reply; an upgrade
/// without a valid token, when tokens are required, gets `401 Unauthorized`; anything
/// else goes on to the WebSocket handshake with the bytes read replayed in front.
async fn answer_plain_http(
    mut stream: Box<dyn Conn>,
    access: &AccessControl,
) -> Result<Box<dyn Conn>, HandshakeError> {
    let mut head = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < MAX_REQUEST_HEAD {
        match stream.read(&mut chunk).await {
            Ok(0) => break,
            Ok(n) => head.extend_from_slice(&chunk[..n]),
            Err(e) => return Err((format!("reading the request failed: {e}"), "handshake")),
        }
    }
    let complete = head.windows(4).any(|w| w == b"\r\n\r\n");
    if complete && !asks_for_websocket(&head) {
        let reply = format!(
            "HTTP/1.1 426 Upgrade Required\r\nUpgrade: websocket\r\nConnection: close\r\n\
             Content-Type: text/plain; charset=utf-8\r\nContent-Length: {}\r\n\r\n{UPGRADE_BODY}",
            UPGRADE_BODY.len()
        );
        let _ = stream.write_all(reply.as_bytes()).await;
        let _ = stream.close().await;
        return Err((
            "a plain HTTP request, answered with 426 Upgrade Required".into(),
            "plain_http",
        ));
    }
    let verdict = access.check(&head);
    if verdict != Verdict::Admitted {
        let reply = format!(
            "HTTP/1.1 401 Unauthorized\r\nWWW-Authenticate: Bearer realm=\"p2p-copy relay\"\r\n\
             Connection: close\r\nContent-Type: text/plain; charset=utf-8\r\n\
             Content-Length: {}\r\n\r\n{TOKEN_BODY}",
            TOKEN_BODY.len()
        );
        let _ = stream.write_all(reply.as_bytes()).await;
        let _ = stream.close().await;
        // Which token was given is never logged.
        let why = match verdict {
            Verdict::Missing => "no token given",
            _ => "a token that is not in the token file",
        };
        return Err((format!("{why}, answered with 401 Unauthorized"), "token"));
    }
    Ok(Box::new(Replay {
        head,
        pos: 0,
        inner: stream,
    }))
}

/// Whether a request head has an `Upgrade` header that names websocket.
fn asks_for_websocket(head: &[u8]) -> bool {
    String::from_utf8_lossy(head).split("\r\n").any(|line| {
        line.split_once(':').is_some_and(|(name, value)| {
            name.trim().eq_ignore_ascii_case("upgrade")
                && value.to_ascii_lowercase().contains("websocket")
        })
    })
}

/// A stream that first gives back bytes already read from it.
struct Replay {
    head: Vec<u8>,
    pos: usize,
    inner: Box<dyn Conn>,
}

impl AsyncRead for Replay {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        if this.pos < this.head.len() {
            let n = buf.len().min(this.head.len() - this.pos);
            buf[..n].copy_from_slice(&this.head[this.pos..this.pos + n]);
            this.pos += n;
            if this.pos == this.head.len() {
                this.head = Vec::new();
                this.pos = 0;
            }
            return Poll::Ready(Ok(n));
        }
        Pin::new(&mut this.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for Replay {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_close(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_close(cx)
    }
}

impl<R: Rt> ConnTask<R> {
    pub(crate) async fn run(self) {
        let ConnTask {
            rt,
            hub,
            id,
            tcp,
            tls,
            commands,
            forward,
            forwarded,
            access,
            accepted,
            handshake_timeout,
            close_grace,
        } = self;
        let _departure = Departure {
            hub: hub.clone(),
            id,
        };
        let deadline = accepted + handshake_timeout;
        let opening = Box::pin(handshake(Box::new(tcp), tls, &access));
        let ws = match select(opening, Box::pin(rt.sleep_until(deadline))).await {
            Either::Left((Ok(ws), _)) => ws,
            Either::Left((Err((e, kind)), _)) => {
                let mut h = lock(&hub);
                h.metrics.refuse(kind);
                h.log_refusal(id, &e);
                return;
            }
            Either::Right(_) => {
                let mut h = lock(&hub);
                h.metrics.refuse("handshake_timeout");
                h.log_refusal(id, "TLS or WebSocket handshake timed out");
                return;
            }
        };
        lock(&hub)
            .metrics
            .handshake_seconds
            .observe(accepted.elapsed().as_secs_f64());
        let (tx, rx) = ws.split();
        let reader = Box::pin(read(rt.clone(), hub, id, rx, forwarded));
        let writer = Box::pin(write(rt, tx, commands, forward, close_grace));
        // Either end finishes the connection: the reader when the client leaves, the
        // writer when its socket fails or the hub asked for a close and the client
        // already went quiet.
        let _ = select(reader, writer).await;
    }
}

/// Read the client's messages: before pairing they go to the hub (`hello`), after it
/// straight to the partner's queue, within the pair's byte limits.
async fn read<R: Rt>(
    rt: R,
    hub: SharedHub,
    id: ConnId,
    mut rx: async_tungstenite::WebSocketReceiver<Box<dyn Conn>>,
    forwarded: Arc<AtomicU64>,
) {
    let mut link: Option<Forwarding> = None;
    let (metrics, limits) = {
        let h = lock(&hub);
        (h.metrics.clone(), h.limits)
    };
    // Set once the pair went over `max_bytes`: nothing more is forwarded.
    let mut over = false;
    while let Some(next) = rx.next().await {
        let msg = match next {
            Ok(m @ (Message::Text(_) | Message::Binary(_))) => m,
            Ok(Message::Close(frame)) => {
                let code = frame.map_or(1005, |f| u16::from(f.code));
                lock(&hub).relay.handle_client_close(id, code);
                continue;
            }
            Ok(_) => continue,
            Err(e) => {
                log::debug!("connection {}: read failed: {e}", id.0);
                break;
            }
        };
        if link.is_none() {
            let mut h = lock(&hub);
            link = h.forwarding(id);
            if link.is_none() {
                if let Some(wire) = to_wire(msg) {
                    h.relay.handle_message(Instant::now(), id, wire);
                    h.after_input();
                }
                continue;
            }
        }
        let (Some(link), false) = (&link, over) else {
            continue;
        };
        let len = match &msg {
            Message::Text(t) => t.len(),
            Message::Binary(b) => b.len(),
            _ => 0,
        };
        let total = link.pair_bytes.fetch_add(len as u64, Ordering::Relaxed) + len as u64;
        if let Some(max) = limits.max_bytes.filter(|&max| total > max) {
            over = true;
            let mut h = lock(&hub);
            h.relay
                .close_pair(Instant::now(), id, max_bytes_reason(max));
            h.after_input();
            continue;
        }
        // A closed queue means the partner is gone; the hub closes this side.
        if link.queue.send(msg).await.is_ok() {
            forwarded.fetch_add(len as u64, Ordering::Relaxed);
            metrics.bytes_forwarded.inc_by(len as u64);
        }
        let now = Instant::now();
        let wait = link
            .buckets
            .iter()
            .map(|b| b.lock().unwrap_or_else(|p| p.into_inner()).take(now, len))
            .max()
            .unwrap_or_default();
        if !wait.is_zero() {
            rt.sleep_until(now + wait).await;
        }
    }
}

/// The close reason for a pair over `max_bytes`; both clients show it.
fn max_bytes_reason(max: u64) -> String {
    format!("the transfer went over the relay's limit of {max} bytes per pair")
}

/// Write to the client: the hub's commands first, then the partner's messages. Ends
/// when the socket fails, or `close_grace` after a close was asked for: the client may
/// never answer it, and a refused connection gets no later abort from the hub.
async fn write<R: Rt>(
    rt: R,
    mut tx: async_tungstenite::WebSocketSender<Box<dyn Conn>>,
    commands: async_channel::Receiver<Command>,
    forward: async_channel::Receiver<Message>,
    close_grace: Duration,
) {
    loop {
        let next = match select(Box::pin(commands.recv()), Box::pin(forward.recv())).await {
            Either::Left((Ok(c), _)) => Either::Left(c),
            Either::Right((Ok(m), _)) => Either::Right(m),
            // The hub dropped this connection's handles: the server is going away.
            Either::Left((Err(_), _)) | Either::Right((Err(_), _)) => return,
        };
        match next {
            Either::Left(Command::Send(m)) | Either::Right(m) => {
                if tx.send(m).await.is_err() {
                    return;
                }
            }
            Either::Left(Command::Close(code, reason)) => {
                let closing = async {
                    while let Ok(m) = forward.try_recv() {
                        if tx.feed(m).await.is_err() {
                            return;
                        }
                    }
                    let frame = CloseFrame {
                        code: CloseCode::from(code),
                        reason: reason.into_owned().into(),
                    };
                    if tx.send(Message::Close(Some(frame))).await.is_ok() {
                        // The reader ends the task when the client answers.
                        std::future::pending::<()>().await;
                    }
                };
                let grace = rt.sleep_until(Instant::now() + close_grace);
                let _ = select(Box::pin(closing), Box::pin(grace)).await;
                return;
            }
        }
    }
}
