//! What the caller configures and what a transfer reports.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use p2p_copy_core::rate::TokenBucket;
pub use p2p_copy_core::reconnect::RetryPolicy;
use p2p_copy_core::relay::RelayConfig;
use p2p_copy_core::sender::{CompressLevel, CompressMode};
use p2p_copy_core::{Event, PathEvent};

/// How a client reaches the relay and which session it joins.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// The relay's URL: `ws://host:port` or `wss://host:port`; any path is accepted.
    pub server: String,
    /// The shared code. A parallel code `n=<N>=n…` runs N sessions over N connections.
    pub code: String,
    /// The code is one people can say out loud (`7-guitar-rocket`,
    /// [`p2p_copy_core::code::PakeCode`]): the two sides meet in the room its number
    /// names (URL path `/r/<room-id>`, and the room id in `hello`), prove with a PAKE that
    /// they hold the same code, and encrypt the session with the key it gives, whatever
    /// [`ClientConfig::encrypt`] says. The caller decides which form a code is; p2p-copy
    /// 0.1.x only knows the other (v1) form.
    pub pake: bool,
    /// End-to-end encryption (both sides must agree, or they never pair).
    pub encrypt: bool,
    /// An extra CA certificate (PEM) to trust for `wss://`, for self-hosted relays. The
    /// webpki roots are always trusted.
    pub ca_file: Option<PathBuf>,
    /// How long to wait for the peer: the sender for a receiver, the receiver for the
    /// sender's manifest.
    pub pair_timeout: Duration,
    /// How long the peer may stay silent (or stop reading) in the middle of a transfer.
    pub idle_timeout: Duration,
    /// Whether and how to try a direct connection with a peer of this project.
    pub direct: DirectOptions,
    /// Reach the relay through this proxy: `http://[user:pass@]host:port` (HTTP
    /// CONNECT) or `socks5://…` / `socks5h://…` (see [`crate::proxy`]). `None`: connect
    /// directly (the environment is the caller's to read, e.g. with
    /// [`crate::proxy::from_env`]).
    pub proxy: Option<String>,
    /// The relay's access token, sent as `Authorization: Bearer …` when connecting (a
    /// token can also be given in the URL, as `?token=…`). Never shown in messages.
    pub relay_token: Option<String>,
    /// Move file data no faster than this (see [`RateLimit`]): the sender holds its
    /// data messages, the receiver reads more slowly. `None`: as fast as the path
    /// allows.
    pub limit_rate: Option<RateLimit>,
    /// Receiver: ask this before accepting a transfer (after the sender's file list,
    /// before anything is written); a refusal ends the transfer with
    /// [`Error::Declined`](p2p_copy_core::Error::Declined), and a sender of this project
    /// learns it. `None` accepts every transfer, as p2p-copy 0.1.x does.
    pub consent: Option<ConsentAsk>,
    /// Receiver: keep a file already under its final name when the received one
    /// differs (`--no-clobber`), instead of replacing it once the new one is verified
    /// (the default, as p2p-copy 0.1.x replaces it). A kept file is reported as
    /// [`Event::FileKept`] and, to a sender of this project, as not delivered.
    pub keep_existing: bool,
    /// Receiver: refuse names that Windows, exFAT or SMB cannot store (`< > : " | ? *`,
    /// control characters, a trailing dot or space, device names such as `CON` or
    /// `aux.txt`): each such file is not delivered, with the name and the rule as the
    /// reason, and nothing is created under its name. On by default when compiled for
    /// Windows.
    pub windows_names: bool,
    /// Automatic reconnect after a lost relay connection, with a peer of this project
    /// (5 attempts, 1 s doubling up to 30 s, by default; `max_retries` 0 turns it off).
    /// The transfer resumes from what the receiver holds.
    pub reconnect: RetryPolicy,
    /// Keep permission bits (never setuid, setgid or sticky), modification times and
    /// empty directories between two peers of this project (extension `metadata`):
    /// the sender offers them, the receiver applies them. Either side turns it off.
    /// Off by default, so files get the receiver's defaults, as with p2p-copy 0.1.x.
    pub metadata: bool,
    /// Receiver: write the one received file to standard output instead of a directory
    /// (`--stdout`), each piece as soon as it is verified. A transfer of more than one
    /// file is refused before anything is written; a parallel code is refused. Bytes
    /// already written cannot be taken back when a later piece fails its check: the
    /// transfer then fails (exit 5) after them. Off by default.
    pub to_stdout: bool,
    /// With a peer of this project, move file data on the fast data path (extension
    /// `fast`: BLAKE3 chain, AES-256-GCM with 96-bit nonces; docs/PROTOCOL.md). On by
    /// default; a p2p-copy 0.1.x peer never sees it. `false` keeps every file on v1's
    /// SHA-256 chain and nonces.
    pub fast_data: bool,
}

/// A limit on the bytes of file data a second, shared by every connection that holds a
/// clone of it (the parallel connections of an `n=<N>=n` code together keep the one
/// rate). The data moves in whole messages of up to 1 MiB, held until the bytes are
/// earned (a token bucket: [`p2p_copy_core::rate::TokenBucket`], with a tenth of a
/// second of burst), so the rate holds over windows of a few messages.
#[derive(Clone)]
pub struct RateLimit(Arc<Mutex<TokenBucket>>);

impl RateLimit {
    /// A limit of `bytes_per_sec` (at least 1).
    pub fn new(bytes_per_sec: u64) -> RateLimit {
        let bucket = TokenBucket::new(Instant::now(), bytes_per_sec, bytes_per_sec / 10);
        RateLimit(Arc::new(Mutex::new(bucket)))
    }

    /// The rate, in bytes a second.
    pub fn rate(&self) -> u64 {
        self.bucket().rate()
    }

    /// Count `n` bytes moved at `now`; how long to hold them.
    pub(crate) fn take(&self, now: Instant, n: usize) -> Duration {
        self.bucket().take(now, n)
    }

    fn bucket(&self) -> std::sync::MutexGuard<'_, TokenBucket> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl std::fmt::Debug for RateLimit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "RateLimit({} B/s)", self.rate())
    }
}

pub use crate::consent::ConsentAsk;
pub use p2p_copy_core::direct::DirectMode;

/// The direct connection's settings (see the crate docs, "Direct connections").
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirectOptions {
    /// [`DirectMode::Auto`] (the default) tries a direct connection when the peer is a
    /// p2p-copy of this project and stays on the relay otherwise;
    /// [`DirectMode::RelayOnly`] never leaves the relay (no UDP at all);
    /// [`DirectMode::DirectOnly`] fails rather than send file data through the relay.
    pub mode: DirectMode,
    /// STUN servers (`host:port`) to learn this side's public address from, besides
    /// the relay's own (its listener's port number, on UDP).
    pub stun: Vec<String>,
    /// Ask the relay's STUN port too (default true).
    pub relay_stun: bool,
    /// How long the attempt may run before the session stays on the relay.
    pub timeout: Duration,
    /// Use loopback addresses as candidates: only for two peers on one machine (tests).
    pub allow_loopback: bool,
    /// Sender: cut the direct connection after this many messages on it, as a failing
    /// network would (tests of the fallback to the relay).
    #[doc(hidden)]
    pub cut_after: Option<u64>,
    /// Sender: hold file data until the attempt decided (switched, or gave up), as
    /// [`DirectMode::DirectOnly`] does, but fall back to the relay when it gives up.
    /// Tests use it to know that the data takes the direct path.
    #[doc(hidden)]
    pub hold_until_decided: bool,
}

impl Default for DirectOptions {
    fn default() -> Self {
        DirectOptions {
            mode: DirectMode::Auto,
            stun: Vec::new(),
            relay_stun: true,
            timeout: Duration::from_secs(10),
            allow_loopback: false,
            cut_after: None,
            hold_until_decided: false,
        }
    }
}

/// The path a session's data took.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum PathTaken {
    /// Through the relay; why, when a direct connection was possible in principle.
    #[default]
    Relay,
    /// Through the relay, although the peer supports direct connections: why.
    RelayBecause(String),
    /// Direct to the peer at `addr`.
    Direct {
        /// The peer's address.
        addr: std::net::SocketAddr,
        /// Through NATs, by an address learned from STUN (hole-punched), rather than
        /// by one of the peer's own interface addresses.
        punched: bool,
    },
    /// Direct at first; the direct connection failed and the rest went through the
    /// relay.
    DirectThenRelay {
        /// The peer's address on the direct path.
        addr: std::net::SocketAddr,
        /// As for [`PathTaken::Direct`].
        punched: bool,
        /// Why the direct path failed.
        reason: String,
    },
}

impl std::fmt::Display for PathTaken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let how = |punched: bool| if punched { "hole-punched" } else { "LAN" };
        match self {
            PathTaken::Relay => f.write_str("relay"),
            PathTaken::RelayBecause(why) => write!(f, "relay ({why})"),
            PathTaken::Direct { addr, punched } => write!(f, "direct ({}) {addr}", how(*punched)),
            PathTaken::DirectThenRelay {
                addr,
                punched,
                reason,
            } => write!(
                f,
                "direct ({}) {addr}, then relay ({reason})",
                how(*punched)
            ),
        }
    }
}

impl ClientConfig {
    /// A configuration with the default timeouts (300 s to pair, 120 s of silence), no
    /// encryption and the webpki roots only.
    ///
    /// ```
    /// let mut cfg = p2p_copy_runtime::ClientConfig::new("ws://127.0.0.1:8765", "my code");
    /// cfg.encrypt = true;
    /// assert_eq!(cfg.pair_timeout.as_secs(), 300);
    /// ```
    pub fn new(server: impl Into<String>, code: impl Into<String>) -> Self {
        ClientConfig {
            server: server.into(),
            code: code.into(),
            pake: false,
            encrypt: false,
            ca_file: None,
            pair_timeout: Duration::from_secs(300),
            idle_timeout: Duration::from_secs(120),
            direct: DirectOptions::default(),
            proxy: None,
            relay_token: None,
            limit_rate: None,
            consent: None,
            keep_existing: false,
            windows_names: cfg!(windows),
            reconnect: RetryPolicy::default(),
            metadata: false,
            to_stdout: false,
            fast_data: true,
        }
    }
}

/// Sender settings.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SendOptions {
    /// Compression mode (default [`CompressMode::Auto`]).
    pub compress: CompressMode,
    /// The zstd level of compressed pieces (default [`CompressLevel::Adaptive`]).
    pub compress_level: CompressLevel,
    /// Ask the receiver what it already has and send only the rest.
    pub resume: bool,
    /// Skip what cannot be sent (a name that is not UTF-8 or too long, a file that
    /// cannot be read or changes while being sent, a missing path) and send the rest;
    /// the summary lists what was skipped. Without it the first such file stops the
    /// transfer.
    pub skip_errors: bool,
    /// Send the content of the files that symbolic links point to. Without it a link
    /// is never followed: it is skipped with a warning.
    pub follow_symlinks: bool,
    /// Leave out what matches these patterns, in the syntax of a `.gitignore` line
    /// (see [`check_exclude`](crate::check_exclude)), matched against the names as
    /// sent (`dir/sub/file`): a pattern without `/` matches a name at any depth, one
    /// with a `/` matches from the top. A directory left out is not walked.
    pub exclude: Vec<String>,
    /// Leave out what the `.gitignore` files found in the sent directories ignore
    /// (each applies to its directory and below, the deepest decides, as in git), and
    /// `.git` directories.
    pub gitignore: bool,
    /// Send standard input or a text instead of the given paths (which are then
    /// ignored). Needs a receiver of this project: a p2p-copy 0.1.x receiver ends the
    /// transfer with [`Error::Unsupported`](p2p_copy_core::Error::Unsupported) before
    /// anything is sent. No automatic reconnect and no resume: standard input is read
    /// once.
    pub pipe: Option<Pipe>,
}

/// Something to send that is not a file on disk ([`SendOptions::pipe`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Pipe {
    /// Standard input, read as it comes and sent in 1 MiB pieces (never held whole),
    /// under `name`; its size is known only at its end (extension `stream`).
    Stdin {
        /// The name the receiver stores it under.
        name: String,
    },
    /// A short text (at most 64 KiB) that the receiver shows instead of writing a file
    /// (extension `text`).
    Text {
        /// A name for it (shown in progress and JSON events).
        name: String,
        /// The text.
        text: String,
    },
}

/// A core [`Event`] and the parallel session it came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionEvent {
    /// Index of the parallel connection (0 for a plain code).
    pub session: usize,
    /// What happened.
    pub event: Event,
}

/// What a finished transfer did, over all its sessions.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Summary {
    /// Files completed (sent, or received and put in place).
    pub files: usize,
    /// Bytes of file data moved by this run (not counting resumed prefixes or skipped
    /// files), over every reconnect: pieces sent again after a lost connection count
    /// twice.
    pub bytes: u64,
    /// Files skipped because the receiver already had them.
    pub skipped: usize,
    /// Wall time of the whole transfer, waiting for the peer included.
    pub elapsed: Duration,
    /// Files not delivered, and why: skipped by the sender (see
    /// [`SendOptions::skip_errors`]), left out of the list (symlinks, special files), or
    /// reported by the receiver as not put in place.
    pub not_delivered: Vec<(String, String)>,
    /// Sender: paths left out by the listing policy (symbolic links without
    /// [`SendOptions::follow_symlinks`], special files), and why.
    pub excluded: Vec<(String, String)>,
    /// Sender: sessions whose receiver confirmed what it put in place.
    pub confirmed: usize,
    /// Sender: sessions whose receiver cannot confirm (p2p-copy 0.1.x): the files were
    /// sent in full, but nothing says they were stored.
    pub unconfirmed: usize,
    /// Time from the first sign of the peer (`Paired` or `Manifest`) to the end: what a
    /// rate should be computed over. The longest over parallel sessions.
    pub transfer_time: Duration,
    /// The path the data took (the first session's, for a parallel code).
    pub path: PathTaken,
}

impl Summary {
    pub(crate) fn count(&mut self, event: &Event) {
        match event {
            Event::FileDone { .. } => self.files += 1,
            Event::FileSkipped { .. } => self.skipped += 1,
            Event::Progress { delta, .. } => self.bytes += delta,
            Event::FileNotDelivered { path, reason } => {
                self.not_delivered.push((path.clone(), reason.clone()));
            }
            Event::Delivery {
                confirmed: true, ..
            } => self.confirmed += 1,
            Event::Delivery {
                confirmed: false, ..
            } => self.unconfirmed += 1,
            Event::Path(p) => {
                self.path = match (p, &self.path) {
                    (PathEvent::Relay { reason }, _) => PathTaken::RelayBecause(reason.clone()),
                    (PathEvent::Direct { addr, punched, .. }, _) => PathTaken::Direct {
                        addr: *addr,
                        punched: *punched,
                    },
                    (PathEvent::BackToRelay { reason }, PathTaken::Direct { addr, punched }) => {
                        PathTaken::DirectThenRelay {
                            addr: *addr,
                            punched: *punched,
                            reason: reason.clone(),
                        }
                    }
                    (PathEvent::BackToRelay { reason }, _) => {
                        PathTaken::RelayBecause(reason.clone())
                    }
                }
            }
            _ => {}
        }
    }

    pub(crate) fn add(&mut self, other: &Summary) {
        self.files += other.files;
        self.bytes += other.bytes;
        self.skipped += other.skipped;
        self.not_delivered
            .extend(other.not_delivered.iter().cloned());
        self.confirmed += other.confirmed;
        self.unconfirmed += other.unconfirmed;
        self.transfer_time = self.transfer_time.max(other.transfer_time);
        if self.path == PathTaken::Relay {
            self.path = other.path.clone();
        }
    }
}

/// A relay server's address, TLS material and limits.
#[derive(Debug, Clone)]
pub struct RelayServerConfig {
    /// Interface to listen on (a name or an address).
    pub host: String,
    /// Port; 0 picks a free one (see `RelayServer::local_addr`).
    pub port: u16,
    /// Certificate chain and private key (PEM files); `Some` serves `wss://`.
    pub tls: Option<(PathBuf, PathBuf)>,
    /// Pairing timeouts and connection limits.
    pub relay: RelayConfig,
    /// Where the relay answers STUN Binding requests.
    pub stun: StunPorts,
    /// Metrics, access tokens, bandwidth limits and the shutdown drain.
    pub ops: RelayOps,
}

/// What an operator adds to a relay: all off by default.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RelayOps {
    /// Serve `/metrics` (Prometheus text format) and `/healthz` over HTTP here.
    pub metrics: Option<std::net::SocketAddr>,
    /// A file of access tokens, one per line: with it, a client must present one (in
    /// the URL's query as `token=…`, or as `Authorization: Bearer …`). Re-read on
    /// SIGHUP.
    pub token_file: Option<PathBuf>,
    /// Most bytes a second forwarded for one pair, and for all connections of one
    /// client address together; a connection over it is read more slowly.
    pub max_rate: Option<u64>,
    /// Most bytes one pair may forward, both directions together; a pair over it is
    /// closed with a reason its clients show.
    pub max_bytes: Option<u64>,
    /// On shutdown, how long pairs still running may go on before they are closed
    /// (clients not yet paired are closed at once).
    pub drain_timeout: Duration,
}

/// The UDP ports on which a relay answers STUN Binding requests. There are always two, a
/// port and the next one, so that a client can compare the mappings its NAT gives it for
/// two destinations.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum StunPorts {
    /// No STUN.
    Off,
    /// The listener's port number and the next one; two free ports when the listener
    /// asked for port 0.
    #[default]
    SameAsListener,
    /// This port and the next one; two free ports for 0.
    Port(u16),
}
