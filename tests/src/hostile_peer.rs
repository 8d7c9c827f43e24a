//! A scripted WebSocket peer that breaks the v1 protocol on purpose, a stand-in relay that
//! hands our clients whatever a test scripts, and ways to watch what the relay holds.
//!
//! [`HostilePeer`] connects to a relay (ours, in the tests) and says hello with the code
//! hash of a code, as a real client would, then sends whatever the test scripts: raw
//! text and binary messages, or valid messages built with the core's own encoders
//! ([`pieces`], [`Sealer`]) so that it gets as deep into the receiver as it likes before
//! breaking a rule. [`StandInRelay`] accepts our clients directly, so a test can also
//! send what our relay would refuse to forward (a message over 2 MiB). Every wait is
//! bounded by a limit the caller gives.

use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use async_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use async_tungstenite::tungstenite::protocol::{CloseFrame, WebSocketConfig};
use async_tungstenite::tungstenite::{Bytes, Message};
use async_tungstenite::WebSocketStream;
use futures_lite::future;
use futures_lite::StreamExt;
use p2p_copy_core::chain::Chain;
use p2p_copy_core::crypto::{Cipher, NonceChain, Secrets};
use p2p_copy_core::wire::{self, Compression, Control, DataMessage, FileHeader, Role, CHUNK_SIZE};
use smol::net::{TcpListener, TcpStream};

/// No limits on what the hostile side reads: it must see whatever comes back, and the
/// limits under test are the other side's.
fn unlimited() -> WebSocketConfig {
    WebSocketConfig::default()
        .max_message_size(None)
        .max_frame_size(None)
}

/// How a connection ended, as the hostile side saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ending {
    /// A close frame arrived, with this code and reason.
    Closed {
        /// The close code.
        code: u16,
        /// The close reason.
        reason: String,
    },
    /// A close frame without a code arrived.
    ClosedWithoutCode,
    /// The connection ended without a close frame (EOF, reset or a protocol error).
    Dropped(String),
}

impl Ending {
    /// The close code, if a close frame carried one.
    pub fn code(&self) -> Option<u16> {
        match self {
            Ending::Closed { code, .. } => Some(*code),
            _ => None,
        }
    }
}

/// What one bounded wait for the next message gave.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Received {
    /// A text or binary message.
    Message(Message),
    /// The connection ended.
    Ended(Ending),
    /// Nothing arrived within the limit.
    Nothing,
}

/// The result of a send that may block (see [`HostilePeer::send_within`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SendOutcome {
    /// The message was written to the socket.
    Sent,
    /// The socket did not take it within the limit: the other end applies backpressure.
    Blocked,
    /// The connection failed.
    Failed(String),
}

/// A WebSocket peer that does what a test scripts, and nothing of its own.
///
/// Send methods never panic: once the connection fails they do nothing, and
/// [`HostilePeer::send_error`] tells why, because a receiver that refuses a message
/// usually ends the connection while the script is still sending.
pub struct HostilePeer {
    ws: WebSocketStream<TcpStream>,
    send_error: Option<String>,
}

impl std::fmt::Debug for HostilePeer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HostilePeer")
            .field("send_error", &self.send_error)
            .finish_non_exhaustive()
    }
}

/// The `hello` a client sends for `code_hash` in `role`.
pub fn hello(code_hash: &[u8; 32], role: Role) -> String {
    Control::Hello {
        code_hash_hex: wire::hex(code_hash),
        role,
    }
    .to_json()
}

impl HostilePeer {
    /// Open a WebSocket to `url` (`ws://127.0.0.1:<port>`) and send nothing.
    ///
    /// # Errors
    /// The TCP or WebSocket handshake error (a relay at its limits may refuse early).
    pub async fn connect(url: &str) -> io::Result<HostilePeer> {
        let hostport = url
            .strip_prefix("ws://")
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "ws:// URL expected"))?;
        let tcp = TcpStream::connect(hostport).await?;
        let (ws, _) = async_tungstenite::client_async_with_config(url, tcp, Some(unlimited()))
            .await
            .map_err(io::Error::other)?;
        Ok(HostilePeer {
            ws,
            send_error: None,
        })
    }

    /// Connect to the relay at `url` and say hello in `role` with this code hash.
    ///
    /// # Panics
    /// If the connection cannot be opened.
    pub async fn join(url: &str, code_hash: &[u8; 32], role: Role) -> HostilePeer {
        let mut p = HostilePeer::connect(url)
            .await
            .unwrap_or_else(|e| panic!("hostile peer cannot reach {url}: {e}"));
        p.send_text(hello(code_hash, role)).await;
        p
    }

    /// Join as the sender of a plain (unencrypted) code and wait for the relay's `ready`.
    ///
    /// # Panics
    /// If the connection fails or no `ready` comes within `limit`.
    pub async fn plain_sender(url: &str, code: &str, limit: Duration) -> HostilePeer {
        let hash = p2p_copy_core::crypto::code_hash(code, false).expect("SHA-256 code hash");
        let mut p = HostilePeer::join(url, &hash, Role::Sender).await;
        p.wait_ready(limit).await;
        p
    }

    /// Wait for the relay's `ready`.
    ///
    /// # Panics
    /// If anything else arrives first, or nothing within `limit`.
    pub async fn wait_ready(&mut self, limit: Duration) {
        match self.recv(limit).await {
            Received::Message(Message::Text(t)) if t.as_str() == Control::Ready.to_json() => {}
            other => panic!("hostile sender expected ready, got {other:?}"),
        }
    }

    /// Why sending failed, once it has.
    pub fn send_error(&self) -> Option<&str> {
        self.send_error.as_deref()
    }

    /// Send any WebSocket message, unless the connection already failed.
    pub async fn send_message(&mut self, msg: Message) {
        if self.send_error.is_some() {
            return;
        }
        if let Err(e) = self.ws.send(msg).await {
            self.send_error = Some(e.to_string());
        }
    }

    /// Send a text message, as given (it need not be JSON).
    pub async fn send_text(&mut self, text: impl Into<String>) {
        self.send_message(Message::text(text.into())).await;
    }

    /// Send a binary message, as given.
    pub async fn send_binary(&mut self, data: impl Into<Bytes>) {
        self.send_message(Message::Binary(data.into())).await;
    }

    /// Send a control message as the reference encodes it.
    pub async fn send_control(&mut self, c: &Control) {
        self.send_text(c.to_json()).await;
    }

    /// Send a plain manifest of `(path, size)` entries.
    pub async fn send_manifest(&mut self, entries: &[(&str, u64)], resume: bool) {
        self.send_control(&manifest(entries, resume)).await;
    }

    /// Send one whole, valid file: `file` (not appending), its data messages with a
    /// correct chain, and `file_eof`.
    pub async fn send_file(&mut self, path: &str, content: &[u8], compression: Compression) {
        self.send_control(&file_header(path, content.len() as u64, compression, 0))
            .await;
        for piece in pieces(content, compression) {
            self.send_binary(piece.encode()).await;
        }
        self.send_control(&Control::FileEof).await;
    }

    /// Send `msg`, giving up after `limit` if the socket does not take it.
    pub async fn send_within(&mut self, msg: Message, limit: Duration) -> SendOutcome {
        if let Some(e) = &self.send_error {
            return SendOutcome::Failed(e.clone());
        }
        let sending = async {
            match self.ws.send(msg).await {
                Ok(()) => SendOutcome::Sent,
                Err(e) => SendOutcome::Failed(e.to_string()),
            }
        };
        let blocked = async {
            async_io::Timer::after(limit).await;
            SendOutcome::Blocked
        };
        future::or(sending, blocked).await
    }

    /// The next text or binary message (pings and pongs are skipped), the end of the
    /// connection, or nothing within `limit`.
    pub async fn recv(&mut self, limit: Duration) -> Received {
        let next = async {
            loop {
                let ending = match self.ws.next().await {
                    Some(Ok(m @ (Message::Text(_) | Message::Binary(_)))) => {
                        return Received::Message(m)
                    }
                    Some(Ok(Message::Close(Some(f)))) => Ending::Closed {
                        code: u16::from(f.code),
                        reason: f.reason.as_str().to_owned(),
                    },
                    Some(Ok(Message::Close(None))) => Ending::ClosedWithoutCode,
                    // Pings and pongs.
                    Some(Ok(_)) => continue,
                    Some(Err(e)) => Ending::Dropped(e.to_string()),
                    None => Ending::Dropped("end of stream".into()),
                };
                return Received::Ended(ending);
            }
        };
        let quiet = async {
            async_io::Timer::after(limit).await;
            Received::Nothing
        };
        future::or(next, quiet).await
    }

    /// Read (and drop) messages until the connection ends; `None` if it is still open
    /// after `limit`.
    pub async fn wait_end(&mut self, limit: Duration) -> Option<Ending> {
        let deadline = std::time::Instant::now() + limit;
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match self.recv(left).await {
                Received::Message(_) => continue,
                Received::Ended(e) => return Some(e),
                Received::Nothing => return None,
            }
        }
    }

    /// Every message until the connection ends or `limit` passes, and how it ended.
    pub async fn collect(&mut self, limit: Duration) -> (Vec<Message>, Option<Ending>) {
        let deadline = std::time::Instant::now() + limit;
        let mut got = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match self.recv(left).await {
                Received::Message(m) => got.push(m),
                Received::Ended(e) => return (got, Some(e)),
                Received::Nothing => return (got, None),
            }
        }
    }

    /// Close politely with `code`, then drop the connection.
    pub async fn close(mut self, code: u16) {
        let frame = CloseFrame {
            code: CloseCode::from(code),
            reason: "".into(),
        };
        let _ = self.ws.send(Message::Close(Some(frame))).await;
    }

    /// Vanish: drop the TCP connection without a close frame.
    pub fn vanish(self) {
        drop(self);
    }
}

/// A plain manifest of `(path, size)` entries.
pub fn manifest(entries: &[(&str, u64)], resume: bool) -> Control {
    Control::Manifest {
        resume,
        extensions: Vec::new(),
        reconnect: None,
        parts: None,
        entries: entries
            .iter()
            .map(|(path, size)| wire::ManifestEntry {
                path: (*path).to_owned(),
                size: *size,
                kind: None,
            })
            .collect(),
    }
}

/// A plain `file` message.
pub fn file_header(path: &str, size: u64, compression: Compression, append_from: u64) -> Control {
    Control::File(FileHeader {
        path: path.to_owned(),
        size,
        compression,
        append_from,
        fast: false,
    })
}

/// One data message before encoding: `seq`, the chain after it, and the payload P(k)
/// (compressed when the file is, never encrypted).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Piece {
    /// Index of the piece within the file.
    pub seq: u64,
    /// c(seq), the chain over P(0) … P(seq).
    pub chain: [u8; 32],
    /// P(seq).
    pub payload: Bytes,
}

impl Piece {
    /// The binary message that carries this piece in plain mode.
    pub fn encode(&self) -> Bytes {
        DataMessage::encode(self.seq, &self.chain, &self.payload)
    }

    /// The binary message that carries this piece in encrypted mode: the payload
    /// sealed with the sealer's next nonce, the chain over the plain payload.
    pub fn seal(&self, sealer: &mut Sealer) -> Bytes {
        let sealed = sealer.seal(&self.payload);
        DataMessage::encode(self.seq, &self.chain, &sealed)
    }
}

/// The pieces a correct sender makes of `content`: 1 MiB each (the last shorter, an
/// empty file one empty piece), each compressed on its own with `zstd`, chained.
pub fn pieces(content: &[u8], compression: Compression) -> Vec<Piece> {
    let raw: Vec<&[u8]> = if content.is_empty() {
        vec![&[][..]]
    } else {
        content.chunks(CHUNK_SIZE).collect()
    };
    let payloads = raw.into_iter().map(|r| match compression {
        Compression::Zstd => Bytes::from(p2p_copy_core::compress::compress(r)),
        Compression::None => Bytes::copy_from_slice(r),
    });
    chained(payloads)
}

/// Chain payloads as given (already compressed or not), numbering them from 0.
pub fn chained(payloads: impl IntoIterator<Item = Bytes>) -> Vec<Piece> {
    let mut chain = Chain::new();
    payloads
        .into_iter()
        .enumerate()
        .map(|(seq, payload)| Piece {
            seq: seq as u64,
            chain: chain.next(&payload),
            payload,
        })
        .collect()
}

/// The sending side of end-to-end encryption: the key, the nonce seed and the running
/// nonce chain, used in the order items travel (manifest, answer, then per file its
/// header and each data payload).
pub struct Sealer {
    cipher: Cipher,
    seed: [u8; 32],
    nonces: NonceChain,
}

impl std::fmt::Debug for Sealer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sealer").finish_non_exhaustive()
    }
}

impl Sealer {
    /// A sealer for the key of `secrets` (which must be encrypting) and this seed.
    ///
    /// # Panics
    /// If `secrets` has no cipher.
    pub fn new(secrets: &Secrets, seed: [u8; 32]) -> Sealer {
        let cipher = secrets
            .cipher
            .clone()
            .expect("secrets derived with encrypt = true");
        Sealer {
            cipher,
            seed,
            nonces: NonceChain::new(&seed),
        }
    }

    /// Seal `plain` with the next nonce: ciphertext ‖ tag.
    pub fn seal(&mut self, plain: &[u8]) -> Vec<u8> {
        self.cipher.seal(&self.nonces.next(), plain)
    }

    /// Use up the next nonce without sealing anything (as the receiver does for the
    /// resume answer it sends).
    pub fn skip(&mut self) {
        self.nonces.next();
    }

    /// `enc_manifest` for this manifest (the first item of a session).
    pub fn manifest(&mut self, manifest: &Control) -> Control {
        Control::EncManifest {
            nonce: wire::hex(&self.seed),
            hidden_manifest: wire::hex(&self.seal(manifest.to_json().as_bytes())),
        }
    }

    /// `enc_file` for this `file` message.
    pub fn file(&mut self, header: &Control) -> Control {
        Control::EncFile {
            hidden_file: wire::hex(&self.seal(header.to_json().as_bytes())),
        }
    }
}

/// A relay stand-in that lets a test talk to our client directly: it accepts a
/// connection, reads its hello, and from then on the test scripts both directions with
/// no size limits at all.
#[derive(Debug)]
pub struct StandInRelay {
    listener: TcpListener,
    addr: SocketAddr,
}

impl StandInRelay {
    /// Listen on an ephemeral port of 127.0.0.1.
    ///
    /// # Panics
    /// If it cannot bind.
    pub async fn bind() -> StandInRelay {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind stand-in relay");
        let addr = listener.local_addr().expect("stand-in relay address");
        StandInRelay { listener, addr }
    }

    /// `ws://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("ws://{}", self.addr)
    }

    /// Accept one client within `limit` and return it with the text of its first
    /// message (its hello).
    ///
    /// # Panics
    /// If no client connects and says something within `limit`.
    pub async fn accept(&self, limit: Duration) -> (HostilePeer, String) {
        let accepting = async {
            let (tcp, _) = self.listener.accept().await.expect("accept");
            let ws = async_tungstenite::accept_async_with_config(tcp, Some(unlimited()))
                .await
                .expect("WebSocket handshake with our client");
            let mut peer = HostilePeer {
                ws,
                send_error: None,
            };
            let hello = match peer.recv(limit).await {
                Received::Message(Message::Text(t)) => t.as_str().to_owned(),
                other => panic!("client's first message is not text: {other:?}"),
            };
            (peer, hello)
        };
        let late = async {
            async_io::Timer::after(limit).await;
            panic!("no client reached the stand-in relay within {limit:?}");
        };
        future::or(accepting, late).await
    }
}

/// TCP sockets of this network namespace whose local port is `port` (so accepted by a
/// server listening there), that are not the listening socket and still belong to a
/// process. A server that closed a connection no longer holds its socket, even while
/// the kernel finishes the TCP close, so this counts the connections a relay on `port`
/// still keeps open. Linux only (reads `/proc/net/tcp`).
///
/// # Panics
/// If `/proc/net/tcp` cannot be read.
pub fn sockets_held_on_port(port: u16) -> usize {
    let table = std::fs::read_to_string("/proc/net/tcp").expect("read /proc/net/tcp");
    table
        .lines()
        .skip(1)
        .filter(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            // sl local rem st tx:rx tr:when retrnsmt uid timeout inode ...
            if f.len() < 10 {
                return false;
            }
            let local_port = f[1]
                .rsplit(':')
                .next()
                .and_then(|p| u16::from_str_radix(p, 16).ok());
            const LISTEN: &str = "0A";
            local_port == Some(port) && f[3] != LISTEN && f[9] != "0"
        })
        .count()
}

/// A zstd frame whose header records no content size: one raw block holding `data`
/// (at most 128 KiB), as a streaming compressor would write it.
pub fn zstd_frame_without_content_size(data: &[u8]) -> Vec<u8> {
    assert!(
        data.len() <= 128 * 1024,
        "one raw block holds at most 128 KiB"
    );
    let mut f = Vec::with_capacity(data.len() + 9);
    f.extend_from_slice(&0xFD2F_B528u32.to_le_bytes());
    // Frame header descriptor: no content size, no single segment, no checksum, no
    // dictionary; then a window descriptor of 2^(10+7) = 128 KiB.
    f.push(0x00);
    f.push(7 << 3);
    // Block header (3 bytes, little-endian): last block, raw, size.
    let header = ((data.len() as u32) << 3) | 1;
    f.extend_from_slice(&header.to_le_bytes()[..3]);
    f.extend_from_slice(data);
    f
}

/// A zstd frame that lies: its header records `claimed` bytes (at most 255), but its
/// RLE blocks expand to `real` bytes of `byte`.
pub fn zstd_frame_that_lies(claimed: u8, real: usize, byte: u8) -> Vec<u8> {
    const BLOCK: usize = 128 * 1024;
    let mut f = Vec::new();
    f.extend_from_slice(&0xFD2F_B528u32.to_le_bytes());
    // Single segment, 1-byte content size field.
    f.push(0x20);
    f.push(claimed);
    let mut left = real;
    while left > 0 {
        let n = left.min(BLOCK);
        left -= n;
        let last = u32::from(left == 0);
        // RLE block: type 1, the size is the number of repetitions.
        let header = ((n as u32) << 3) | (1 << 1) | last;
        f.extend_from_slice(&header.to_le_bytes()[..3]);
        f.push(byte);
    }
    f
}

#[cfg(test)]
mod tests {
    use super::*;
    use p2p_copy_core::compress::{decompress_capped, DecompressError};

    #[test]
    fn pieces_chain_like_the_protocol() {
        let content = vec![7u8; CHUNK_SIZE + 3];
        let ps = pieces(&content, Compression::None);
        assert_eq!(ps.len(), 2);
        assert_eq!(ps[1].payload.len(), 3);
        let mut c = Chain::new();
        assert_eq!(ps[0].chain, c.next(&content[..CHUNK_SIZE]));
        assert_eq!(ps[1].chain, c.next(&content[CHUNK_SIZE..]));
        assert_eq!(pieces(b"", Compression::None).len(), 1);
    }

    #[test]
    fn handmade_frames_reach_the_checks_they_are_made_for() {
        let frame = zstd_frame_without_content_size(b"abcabc");
        assert_eq!(
            decompress_capped(&frame, 100),
            Err(DecompressError::NoContentSize)
        );
        let liar = zstd_frame_that_lies(10, 4 << 20, b'x');
        assert!(matches!(
            decompress_capped(&liar, CHUNK_SIZE),
            Err(DecompressError::Corrupt(_))
        ));
    }
}
