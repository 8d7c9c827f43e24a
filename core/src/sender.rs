//! The sending side of a session.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::time::{Duration, Instant};

use bytes::Bytes;

use crate::chain::{Chain, ChainKind};
use crate::crypto::{Cipher, FastCipher, NonceChain, Secrets};
use crate::delivery::{open_report, report_message};
use crate::direct::DirectAnswer;
use crate::event::Event;
use crate::metadata::{self, TreeMetadata};
use crate::parts::{self, Collect};
use crate::pipe::ReadPipe;
use crate::reconnect::{ReconnectStatus, SenderReconnect};
use crate::wire::{
    self, Compression, Control, EntryKind, FailedFile, FileHeader, ManifestEntry, PartsOffer,
    PieceBuf, Report, ResumeEntry, Role, WireMessage, CHUNK_SIZE, DATA_HEADER_LEN,
};
use crate::Error;

/// Why a reconnected receiver is refused.
const NOT_THE_RECEIVER: &str = "a receiver that joined after the connection was lost could not prove it is the one that began the transfer; refused (nothing was sent)";

/// How the sender compresses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum CompressMode {
    /// Compress a file when its first piece shrinks below 95 %.
    #[default]
    Auto,
    /// Compress every file.
    On,
    /// Compress nothing.
    Off,
}

/// Which zstd level compressed pieces get. Every level gives frames that any receiver,
/// p2p-copy 0.1.x included, decompresses alike: the level is the sender's own choice.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum CompressLevel {
    /// Follow the bottleneck between level 1 and level 3 (the reference's): start at 1,
    /// go up a level while compressed pieces wait for the connection (the link is the
    /// bottleneck, so a smaller output is worth the CPU), down a level while the
    /// connection waits for compression (the CPU is the bottleneck).
    #[default]
    Adaptive,
    /// Always this level, 1 to 19 (out of range values are clamped).
    Fixed(i32),
}

/// Consecutive votes of the adaptive level's choice (see [`CompressLevel::Adaptive`])
/// that move the level by one.
const LEVEL_VOTES: i32 = 4;

/// The level compression jobs get, and the adaptive choice's state.
#[derive(Debug)]
struct Level {
    adaptive: bool,
    now: i32,
    /// Consecutive votes in one direction: up while pieces wait for the connection, down
    /// while the connection waits for pieces.
    votes: i32,
    /// The connection asked for a message while none was ready and compression jobs
    /// were out, since the last compressed piece went out.
    starved: bool,
}

impl Level {
    fn new(choice: CompressLevel) -> Self {
        let (adaptive, now) = match choice {
            CompressLevel::Adaptive => (true, crate::compress::MIN_LEVEL),
            CompressLevel::Fixed(n) => (
                false,
                n.clamp(crate::compress::MIN_LEVEL, crate::compress::MAX_LEVEL),
            ),
        };
        Level {
            adaptive,
            now,
            votes: 0,
            starved: false,
        }
    }

    /// A compressed piece goes out, with `queued` pieces before it still waiting for
    /// the connection: the vote, and the new level if it moved.
    fn vote(&mut self, queued: usize) -> Option<i32> {
        let starved = std::mem::take(&mut self.starved);
        if !self.adaptive {
            return None;
        }
        let vote: i32 = match (starved, queued) {
            (true, _) => -1,
            (false, 0) => 0,
            (false, _) => 1,
        };
        if vote == 0 || vote.signum() != self.votes.signum() {
            self.votes = vote;
        } else {
            self.votes += vote;
        }
        let moved = match self.votes {
            LEVEL_VOTES => (self.now + 1).min(crate::compress::LEVEL),
            v if v == -LEVEL_VOTES => (self.now - 1).max(crate::compress::MIN_LEVEL),
            _ => return None,
        };
        self.votes = 0;
        (moved != self.now).then(|| {
            self.now = moved;
            moved
        })
    }
}

/// Sender settings.
#[derive(Debug, Clone)]
pub struct SenderConfig {
    /// Compression mode.
    pub compress: CompressMode,
    /// The zstd level of compressed pieces.
    pub compress_level: CompressLevel,
    /// Ask the receiver what it already has and send only the rest.
    pub resume: bool,
    /// How long to wait for the relay's `ready` (a receiver with the same code).
    pub ready_timeout: Duration,
    /// How long to wait for the receiver's resume answer.
    pub answer_timeout: Duration,
    /// Pieces in flight at once (reads, work items and queued messages together). Bounds
    /// memory to about twice this many MiB.
    pub window: usize,
    /// Offer delivery confirmation ([`EXT_CONFIRM`](crate::wire::EXT_CONFIRM)) in the
    /// manifest. A receiver of this project accepts it and reports at the end what it
    /// put in place; a p2p-copy 0.1.x receiver ignores the offer. Off by default, so the
    /// session is exactly v1.
    pub confirm: bool,
    /// How long to wait, after `eof`, for the receiver's report (with `confirm`).
    pub report_timeout: Duration,
    /// Skip a file that cannot be read or changes while being sent (reported as
    /// [`Event::FileNotDelivered`]) instead of failing the session.
    pub skip_errors: bool,
    /// Offer a direct connection ([`EXT_DIRECT`](crate::wire::EXT_DIRECT)) in the
    /// manifest, together with `confirm`. When the receiver accepts,
    /// [`Sender::take_direct_start`] says so and the runtime runs
    /// [`DirectPath`](crate::direct::DirectPath) beside the session. Off by default.
    pub direct: bool,
    /// Offer to wait for the receiver's consent ([`EXT_CONSENT`](crate::wire::EXT_CONSENT))
    /// in the manifest, together with `confirm`. When the receiver accepts, the sender
    /// sends no more file data, and its deadlines stop, until the receiver's answer;
    /// a refusal ends the session with [`Error::Declined`]. Off by default.
    pub consent: bool,
    /// Offer automatic reconnect ([`EXT_RECONNECT`](crate::wire::EXT_RECONNECT)) in the
    /// first session, together with `confirm`; or, on a reconnect, prove this side and
    /// ask for the resume answer. `None` by default.
    pub reconnect: Option<SenderReconnect>,
    /// Offer to keep the files' permission bits and modification times and the tree's
    /// directories ([`EXT_METADATA`](crate::wire::EXT_METADATA)), together with
    /// `confirm`; once the receiver accepted, they are sent after `eof`. `files` holds
    /// one entry per file given to [`Sender::new`], in order. `None` by default.
    pub metadata: Option<TreeMetadata>,
    /// How long to wait for the receiver to accept the rest of a manifest too long for
    /// one message ([`EXT_PARTS`](crate::wire::EXT_PARTS)) before deciding it cannot
    /// (p2p-copy 0.1.x never answers).
    pub parts_timeout: Duration,
    /// Offer the fast data path ([`EXT_FAST`](crate::wire::EXT_FAST)) in the manifest,
    /// together with `confirm`. A first file of at least
    /// [`fast_wait_min`](Self::fast_wait_min) bytes then waits up to
    /// [`fast_wait`](Self::fast_wait) for the receiver's answer (a p2p-copy 0.1.x
    /// receiver never answers), and every file started after an acceptance moves on the
    /// fast path. Off by default.
    pub fast: bool,
    /// How long file data waits for the receiver's answer to the offer of the fast data
    /// path.
    pub fast_wait: Duration,
    /// The size from which the first file waits for that answer (64 MiB by default). A
    /// smaller first file starts at once on v1's data path: its slower hash costs less
    /// than a round trip to the receiver (about 30 ms for 64 MiB), and a p2p-copy 0.1.x
    /// receiver is not kept waiting for an answer that never comes.
    pub fast_wait_min: u64,
}

impl Default for SenderConfig {
    fn default() -> Self {
        SenderConfig {
            compress: CompressMode::Auto,
            compress_level: CompressLevel::Adaptive,
            resume: false,
            ready_timeout: Duration::from_secs(300),
            answer_timeout: Duration::from_secs(30),
            window: 4,
            confirm: false,
            report_timeout: Duration::from_secs(120),
            skip_errors: false,
            direct: false,
            consent: false,
            reconnect: None,
            metadata: None,
            parts_timeout: Duration::from_secs(10),
            fast: false,
            fast_wait: Duration::from_millis(500),
            fast_wait_min: 64 << 20,
        }
    }
}

/// A file to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SendFile {
    /// Relative `/`-separated path the receiver will use.
    pub path: String,
    /// Size in bytes; the runtime must be able to read exactly this many. Ignored for
    /// a [`EntryKind::Stream`] (announced as 0).
    pub size: u64,
    /// A stream of unknown length or a text instead of a plain file (extensions
    /// [`EXT_STREAM`](crate::wire::EXT_STREAM) and [`EXT_TEXT`](crate::wire::EXT_TEXT)):
    /// offered with its extension, with `confirm`; nothing of the transfer is sent
    /// before the receiver accepted the extension, and a receiver that cannot (a
    /// p2p-copy 0.1.x receiver) ends the session with [`Error::Unsupported`]. `None`
    /// for a plain file.
    pub kind: Option<EntryKind>,
}

/// File access the sender asks the runtime for. `file` is the index into the list given
/// to [`Sender::new`]. Requests for one file must be carried out in the order polled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IoRequest {
    /// Read exactly `len` bytes at `offset`; answer with [`IoCompletion::Read`].
    Read {
        /// File index.
        file: usize,
        /// Byte offset.
        offset: u64,
        /// Bytes to read.
        len: usize,
    },
    /// The sender is done with this file; the runtime may close it. No answer.
    Close {
        /// File index.
        file: usize,
    },
}

/// The runtime's answer to an [`IoRequest`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IoCompletion {
    /// The bytes read.
    Read {
        /// File index.
        file: usize,
        /// Byte offset of the read.
        offset: u64,
        /// Exactly the requested length (fewer means the file shrank: an error), read
        /// into a buffer with room for the message header.
        data: PieceBuf,
    },
    /// The request failed.
    Failed {
        /// File index.
        file: usize,
        /// The operating system's message.
        reason: String,
    },
}

/// Whether a job compresses its piece.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum JobCompress {
    No,
    Yes,
    /// Compress, and keep the result only if it is below 95 % (first piece, auto mode).
    Decide,
}

/// How a job encrypts its piece.
#[derive(Clone)]
enum JobSeal {
    /// v1: AES-256-GCM with the 32-byte nonce from the nonce chain.
    V1(Cipher, [u8; 32]),
    /// The fast data path: its own key, the nonce's number in the session's order.
    Fast(FastCipher, u64),
}

/// Per-piece CPU work (compress, hash, encrypt) handed out by [`Sender::poll_job`]. Run
/// it anywhere with [`Job::run`], on any thread, and feed the result back with
/// [`Sender::handle_job`] in any order.
#[derive(Clone)]
pub struct Job {
    file: usize,
    seq: u64,
    work: Work,
}

/// What a [`Job`] does.
#[derive(Clone)]
enum Work {
    /// Make a piece's frame from the data read.
    Piece {
        data: PieceBuf,
        compress: JobCompress,
        /// The zstd level, when compressing.
        level: i32,
        seal: Option<JobSeal>,
        /// Compute the piece's BLAKE3 hash (the fast data path without encryption).
        hash: bool,
    },
    /// v1's chain step for a piece already made: fold it into the chain at this value,
    /// off the session loop.
    Link {
        done: Box<JobResult>,
        prev: Option<[u8; 32]>,
    },
}

impl std::fmt::Debug for Job {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut d = f.debug_struct("Job");
        d.field("seq", &self.seq);
        match &self.work {
            Work::Piece {
                data, seal, hash, ..
            } => d
                .field("len", &data.len())
                .field("compress_level", &self.compress_level())
                .field("encrypt", &seal.is_some())
                .field("hash", hash),
            Work::Link { .. } => d.field("link", &true),
        };
        d.finish()
    }
}

/// A finished [`Job`].
#[derive(Debug, Clone)]
pub struct JobResult {
    file: usize,
    seq: u64,
    /// P(k), the payload before encryption, which the chain covers, when it differs
    /// from the payload of `frame` (that is, when encrypting).
    plain: Option<Bytes>,
    /// 40 bytes of room for the header, then the payload as sent.
    frame: Vec<u8>,
    compressed: bool,
    /// The piece's length as read, before compression.
    raw: u64,
    /// The fast chain's h(k) of the payload, when the job hashed it.
    piece_hash: Option<[u8; 32]>,
    /// v1's chain value c(k), when a chain job made it.
    chain: Option<[u8; 32]>,
}

impl Job {
    /// The zstd level the job compresses at, if it compresses.
    pub fn compress_level(&self) -> Option<i32> {
        match &self.work {
            Work::Piece {
                compress, level, ..
            } if *compress != JobCompress::No => Some(*level),
            _ => None,
        }
    }

    /// Whether the job is cheap enough to run inline on an event loop (no compression,
    /// no hashing, no encryption: only a copy).
    pub fn is_light(&self) -> bool {
        matches!(
            &self.work,
            Work::Piece {
                compress: JobCompress::No,
                seal: None,
                hash: false,
                ..
            }
        )
    }

    /// Do the work.
    pub fn run(self) -> JobResult {
        let (data, compress, level, seal, hash) = match self.work {
            Work::Piece {
                data,
                compress,
                level,
                seal,
                hash,
            } => (data, compress, level, seal, hash),
            Work::Link { done, prev } => {
                let mut done = *done;
                let payload = done
                    .plain
                    .as_deref()
                    .unwrap_or(&done.frame[DATA_HEADER_LEN..]);
                done.chain = Some(Chain::at(ChainKind::Sha256, prev).next(payload));
                return done;
            }
        };
        let raw = data.len() as u64;
        let (frame, compressed) = match compress {
            JobCompress::No => (data.into_frame(), false),
            JobCompress::Yes => (packed_frame(&data, level), true),
            JobCompress::Decide => {
                let packed = packed_frame(&data, level);
                if shrinks_enough(packed.len() - DATA_HEADER_LEN, data.len()) {
                    (packed, true)
                } else {
                    (data.into_frame(), false)
                }
            }
        };
        let piece_hash = hash.then(|| crate::chain::piece_hash(&frame[DATA_HEADER_LEN..]));
        let (frame, plain) = match &seal {
            None => (frame, None),
            Some(JobSeal::Fast(cipher, index)) => {
                // Nothing hashes the plain payload: the tag protects it.
                let mut frame = frame;
                cipher.seal_in_place(*index, &mut frame, DATA_HEADER_LEN);
                (frame, None)
            }
            Some(JobSeal::V1(cipher, nonce)) => {
                let plain = Bytes::from(frame).slice(DATA_HEADER_LEN..);
                let mut sealed = Vec::with_capacity(DATA_HEADER_LEN + plain.len() + wire::TAG_LEN);
                sealed.resize(DATA_HEADER_LEN, 0);
                sealed.extend_from_slice(&plain);
                cipher.seal_in_place(nonce, &mut sealed, DATA_HEADER_LEN);
                (sealed, Some(plain))
            }
        };
        JobResult {
            file: self.file,
            seq: self.seq,
            plain,
            frame,
            compressed,
            raw,
            piece_hash,
            chain: None,
        }
    }
}

/// The smallest piece whose v1 chain step runs as a job of its own: smaller ones are
/// hashed on the session loop, where a trip to a job thread would cost more than it
/// saves.
const LINK_JOB_MIN: usize = 256 * 1024;

/// Header room, then the piece compressed.
fn packed_frame(data: &PieceBuf, level: i32) -> Vec<u8> {
    let mut frame = vec![0; DATA_HEADER_LEN];
    crate::compress::compress_onto(data.payload(), level, &mut frame);
    frame
}

/// The auto-mode rule: compress when compressed / original < 0.95 (an empty piece
/// never compresses).
fn shrinks_enough(packed: usize, original: usize) -> bool {
    original > 0 && (packed as f64) / (original as f64) < 0.95
}

#[derive(Debug)]
enum Phase {
    AwaitReady {
        deadline: Instant,
    },
    /// The manifest went out in part; waiting for the receiver to accept the rest.
    AwaitParts {
        deadline: Instant,
    },
    AwaitAnswer {
        deadline: Instant,
    },
    Sending,
    /// `eof` is queued; waiting for the receiver's report (extension `confirm`).
    AwaitReport {
        deadline: Instant,
    },
    Done,
    Failed,
}

#[derive(Debug)]
struct Streaming {
    /// The file moves on the fast data path.
    fast: bool,
    append_from: u64,
    pieces: u64,
    compression: Option<Compression>,
    file_nonce: Option<[u8; 32]>,
    next_job: u64,
    jobs_out: usize,
    results: BTreeMap<u64, JobResult>,
    next_emit: u64,
    /// A chain job is out for piece `next_emit` (v1's chain, off the session loop).
    linking: bool,
    chain: Chain,
    sent: u64,
    /// A stream of unknown length (extension `stream`): `pieces` is known only once a
    /// read comes back short.
    stream: bool,
}

#[derive(Debug)]
enum Stage {
    Hashing { want: (u64, [u8; 32]), chain: Chain },
    Streaming(Box<Streaming>),
}

#[derive(Debug)]
struct Current {
    index: usize,
    reads: ReadPipe<PieceBuf>,
    stage: Stage,
}

/// The sender state machine.
///
/// Inputs: [`handle_message`](Self::handle_message), [`handle_io`](Self::handle_io),
/// [`handle_job`](Self::handle_job), [`handle_timeout`](Self::handle_timeout),
/// [`handle_close`](Self::handle_close), [`cancel`](Self::cancel). After every input,
/// drain [`poll_transmit`](Self::poll_transmit), [`poll_io`](Self::poll_io),
/// [`poll_job`](Self::poll_job) and [`poll_event`](Self::poll_event) until `None`, then
/// arm a timer at [`poll_timeout`](Self::poll_timeout).
pub struct Sender {
    config: SenderConfig,
    cipher: Option<Cipher>,
    nonces: Option<NonceChain>,
    nonce_seed: [u8; 32],
    files: Vec<SendFile>,
    phase: Phase,
    answers: HashMap<String, (u64, [u8; 32])>,
    next_file: usize,
    current: Option<Current>,
    transmit: VecDeque<WireMessage>,
    frames_queued: usize,
    /// The zstd level new compression jobs get.
    level: Level,
    io: VecDeque<IoRequest>,
    jobs: VecDeque<Job>,
    events: VecDeque<Event>,
    error: Option<Error>,
    /// The latest `now` given, for deadlines set by work that finishes inside the core.
    last_now: Instant,
    /// The receiver accepted delivery confirmation.
    accepted: bool,
    /// The receiver's answer to the offer of a direct connection (true: accepted), until
    /// the runtime takes it.
    direct_answer: Option<bool>,
    /// The receiver accepted the direct path: the session's end may travel on it, so
    /// no [`Control::ReportReceived`] is sent (the receiver does not wait for one).
    direct_agreed: bool,
    /// The session failed after offering confirmation but before the receiver's answer
    /// arrived: the report to send if the answer comes (see
    /// [`awaits_acceptance`](Sender::awaits_acceptance)).
    unsent_report: Option<Report>,
    /// Files given up (`skip_errors`); the receiver's report lists them again.
    skipped: HashSet<String>,
    abandoned: HashSet<usize>,
    /// The receiver accepted [`EXT_CONSENT`](crate::wire::EXT_CONSENT) and its user has
    /// not answered yet: nothing more is sent.
    held: bool,
    /// The receiver accepted automatic reconnect.
    reconnect_agreed: bool,
    /// On a reconnect: the receiver proved itself.
    reconnect_verified: bool,
    /// The receiver accepted the metadata.
    meta_agreed: bool,
    /// After `eof`, with the metadata agreed: the parts still to send.
    meta_out: Option<metadata::Outgoing>,
    /// Extensions the receiver must accept before anything is sent (a stream or a text
    /// is listed, see [`SendFile::kind`]).
    needed: Vec<&'static str>,
    /// The receiver accepted every extension in `needed`.
    needed_accepted: bool,
    /// The rest of a manifest too long for one message, until the receiver accepts
    /// [`EXT_PARTS`](crate::wire::EXT_PARTS).
    parts_pending: Vec<Vec<ManifestEntry>>,
    /// The receiver accepted [`EXT_PARTS`](crate::wire::EXT_PARTS).
    parts_agreed: bool,
    /// The parts of the resume answer and of the report taken so far.
    answer_parts: Option<Collect>,
    report_parts: Option<Collect>,
    /// Files the receiver's report (parts and head) lists as not in place.
    missing: u64,
    /// The paths sent, to check the names in the receiver's report; built when the
    /// report names a file.
    listed: Option<HashSet<String>>,
    /// The fast data path's cipher, when encrypting.
    fast_cipher: Option<FastCipher>,
    /// The receiver accepted the fast data path: files started from now on use it.
    fast_on: bool,
    /// Until when file data waits for the receiver's answer to the offer of the fast data
    /// path; `None` once answered (or when not offered).
    fast_wait_until: Option<Instant>,
}

impl std::fmt::Debug for Sender {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sender")
            .field("phase", &self.phase)
            .field("next_file", &self.next_file)
            .finish_non_exhaustive()
    }
}

impl Sender {
    /// A sender for `files`, which queues `hello` at once.
    ///
    /// `nonce_seed` is the 32 random bytes S of `enc_manifest` (unused without
    /// encryption); the caller draws them from a secure source.
    ///
    /// # Errors
    /// [`Error::Config`] when a path is not a valid relative path or a path repeats.
    pub fn new(
        now: Instant,
        config: SenderConfig,
        secrets: &Secrets,
        files: Vec<SendFile>,
        nonce_seed: [u8; 32],
    ) -> Result<Sender, Error> {
        let mut seen = std::collections::HashSet::new();
        let mut needed: Vec<&'static str> = Vec::new();
        for f in &files {
            if let Some(kind) = f.kind {
                if !config.confirm {
                    return Err(Error::Config(format!(
                        "{:?} needs the extension {}, which is offered only with confirm",
                        f.path,
                        kind.extension()
                    )));
                }
                if kind == EntryKind::Text && f.size > wire::TEXT_MAX {
                    return Err(Error::Config(format!(
                        "a text holds at most {} bytes; this one has {} (send it as a file)",
                        wire::TEXT_MAX,
                        f.size
                    )));
                }
                if !needed.contains(&kind.extension()) {
                    needed.push(kind.extension());
                }
            }
            crate::path::SafePath::parse(&f.path)
                .map_err(|e| Error::Config(format!("cannot send {:?}: {e}", f.path)))?;
            if !seen.insert(f.path.as_str()) {
                return Err(Error::Config(format!("{:?} is listed twice", f.path)));
            }
        }
        let mut s = Sender {
            config: SenderConfig {
                window: config.window.max(1),
                // A reconnect continues from what the receiver holds. With a stream or a
                // text the resume answer is the probe: a p2p-copy 0.1.x receiver sends
                // it at once, without accepting anything first.
                resume: config.resume
                    || !needed.is_empty()
                    || matches!(config.reconnect, Some(SenderReconnect::Resume { .. })),
                ..config
            },
            cipher: secrets.cipher.clone(),
            nonces: None,
            nonce_seed: [0; 32],
            files,
            phase: Phase::AwaitReady {
                deadline: now + config.ready_timeout,
            },
            answers: HashMap::new(),
            next_file: 0,
            current: None,
            transmit: VecDeque::new(),
            frames_queued: 0,
            level: Level::new(config.compress_level),
            io: VecDeque::new(),
            jobs: VecDeque::new(),
            events: VecDeque::new(),
            error: None,
            last_now: now,
            accepted: false,
            direct_answer: None,
            unsent_report: None,
            direct_agreed: false,
            skipped: HashSet::new(),
            abandoned: HashSet::new(),
            held: false,
            reconnect_agreed: false,
            reconnect_verified: false,
            meta_agreed: false,
            meta_out: None,
            needed,
            needed_accepted: false,
            parts_pending: Vec::new(),
            parts_agreed: false,
            answer_parts: None,
            report_parts: None,
            missing: 0,
            listed: None,
            fast_cipher: secrets.cipher.as_ref().map(|c| c.fast(&nonce_seed)),
            fast_on: false,
            fast_wait_until: None,
        };
        s.transmit.push_back(
            Control::Hello {
                code_hash_hex: wire::hex(&secrets.code_hash),
                role: Role::Sender,
            }
            .into(),
        );
        if s.cipher.is_some() {
            s.nonces = Some(NonceChain::new(&nonce_seed));
        }
        s.nonce_seed = nonce_seed;
        Ok(s)
    }

    // ---- outputs ----

    /// The next message to send. Call when the connection can take a message; the sender
    /// reads ahead only while few messages wait here, so draining at the socket's pace is
    /// the backpressure.
    pub fn poll_transmit(&mut self) -> Option<WireMessage> {
        let Some(m) = self.transmit.pop_front() else {
            let part = self.next_meta_part();
            if part.is_none() {
                self.level.starved |= self.compressing();
            }
            return part;
        };
        if matches!(m, WireMessage::Binary(_)) {
            self.frames_queued -= 1;
            self.pump();
        }
        Some(m)
    }

    /// The next file access to carry out.
    pub fn poll_io(&mut self) -> Option<IoRequest> {
        self.io.pop_front()
    }

    /// Extension `metadata`: after `eof`, the next part, made only when the connection
    /// has taken everything before it.
    fn next_meta_part(&mut self) -> Option<WireMessage> {
        let out = self.meta_out.as_mut()?;
        let meta = self.config.metadata.as_ref()?;
        let sealing = self.cipher.as_ref().map(|c| (c, &self.nonce_seed));
        let part = out.next(&self.files, meta, sealing);
        if out.is_done() {
            self.meta_out = None;
            // The receiver applies it before it reports: its wait counts from here.
            if let Phase::AwaitReport { deadline } = &mut self.phase {
                *deadline = self.last_now + self.config.report_timeout;
            }
        }
        part.map(WireMessage::from)
    }

    /// The next piece of CPU work to run (see [`Job`]).
    pub fn poll_job(&mut self) -> Option<Job> {
        self.jobs.pop_front()
    }

    /// The next event for the user.
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// When [`handle_timeout`](Self::handle_timeout) must be called next, if ever.
    pub fn poll_timeout(&self) -> Option<Instant> {
        if self.held {
            // A person decides at the other end: no deadline applies meanwhile.
            return None;
        }
        let phase = match self.phase {
            Phase::AwaitReady { deadline }
            | Phase::AwaitParts { deadline }
            | Phase::AwaitAnswer { deadline }
            | Phase::AwaitReport { deadline } => Some(deadline),
            _ => None,
        };
        match (phase, self.fast_wait_until) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// True once `eof` is queued and, with `confirm`, the receiver's report arrived
    /// (drain [`poll_transmit`](Self::poll_transmit), then close the connection), or
    /// once the session failed (drain [`poll_transmit`](Self::poll_transmit): it may
    /// hold a report for the receiver).
    pub fn is_finished(&self) -> bool {
        matches!(self.phase, Phase::Done | Phase::Failed)
    }

    /// The sticky error, if the session failed.
    pub fn error(&self) -> Option<&Error> {
        self.error.as_ref()
    }

    /// True while the receiver's user decides whether to accept the transfer (extension
    /// [`EXT_CONSENT`](crate::wire::EXT_CONSENT)): the sender produces nothing and no
    /// deadline runs; a runtime should not count a connection that takes no data
    /// meanwhile as stalled.
    pub fn awaits_consent(&self) -> bool {
        self.held && self.error.is_none()
    }

    /// True when the session failed before the receiver answered the offer of delivery
    /// confirmation: a receiver of this project may still answer (its acceptance is on
    /// its way), and then gets the report that says why the sender stopped. Before
    /// closing, keep feeding [`handle_message`](Self::handle_message) for a moment
    /// while this holds, then drain [`poll_transmit`](Self::poll_transmit). A p2p-copy
    /// 0.1.x receiver never answers.
    pub fn awaits_acceptance(&self) -> bool {
        self.unsent_report.is_some()
    }

    /// Where the session stands with automatic reconnect (see
    /// [`crate::reconnect`]): whether a lost connection may be resumed, and on a
    /// reconnect whether the receiver proved itself.
    pub fn reconnect_status(&self) -> ReconnectStatus {
        match (&self.config.reconnect, &self.phase) {
            (None, _) | (_, Phase::AwaitReady { .. }) => ReconnectStatus::Off,
            _ if self.reconnect_verified => ReconnectStatus::Verified,
            (Some(SenderReconnect::Offer { .. }), _) if self.reconnect_agreed => {
                ReconnectStatus::Agreed
            }
            _ => ReconnectStatus::Unsupported,
        }
    }

    // ---- inputs ----

    /// A message from the relay or the receiver.
    ///
    /// # Errors
    /// [`Error::Peer`] for anything but `ready` while waiting for it, and anything but
    /// the resume answer while waiting for that; [`Error::Integrity`] when an encrypted
    /// answer does not decrypt. Any earlier fatal error is returned again.
    pub fn handle_message(&mut self, now: Instant, msg: WireMessage) -> Result<(), Error> {
        if self.unsent_report.is_some() {
            self.late_acceptance(&msg);
        }
        self.check()?;
        self.last_now = now;
        if matches!(self.phase, Phase::Done) {
            return Ok(());
        }
        let r = self.on_message(now, msg);
        self.settle(r)
    }

    /// A completed file access.
    ///
    /// # Errors
    /// [`Error::Io`] when the access failed or returned fewer bytes than the file's
    /// size promised; [`Error::Misuse`] for a completion nobody asked for.
    pub fn handle_io(&mut self, now: Instant, done: IoCompletion) -> Result<(), Error> {
        self.check()?;
        self.last_now = now;
        let r = self.on_io(done);
        self.settle(r)
    }

    /// A finished [`Job`].
    ///
    /// # Errors
    /// [`Error::Misuse`] for a result nobody asked for.
    pub fn handle_job(&mut self, now: Instant, done: JobResult) -> Result<(), Error> {
        self.check()?;
        self.last_now = now;
        let r = self.on_job(done);
        self.settle(r)
    }

    /// Time has passed.
    ///
    /// # Errors
    /// [`Error::Timeout`] when no receiver paired in time or the resume answer is late.
    pub fn handle_timeout(&mut self, now: Instant) -> Result<(), Error> {
        self.check()?;
        if self.fast_wait_until.is_some_and(|t| now >= t) {
            // No answer in time (a p2p-copy 0.1.x receiver never answers): v1 it is, for
            // the files started before an answer comes.
            self.fast_wait_until = None;
            self.last_now = now;
            self.pump();
        }
        let r = match self.phase {
            Phase::AwaitReady { deadline } if now >= deadline => Err(Error::Timeout(format!(
                "no receiver joined within {} s: check that both sides use the same code, the same --encrypt setting and the same relay (--ttl waits longer)",
                self.config.ready_timeout.as_secs()
            ))),
            Phase::AwaitAnswer { deadline } if now >= deadline && !self.needed.is_empty() => {
                Err(Error::Unsupported(format!(
                    "the receiver did not accept {} within {} s; nothing was sent",
                    self.needed_names(),
                    self.config.answer_timeout.as_secs()
                )))
            }
            Phase::AwaitParts { deadline } if now >= deadline => Err(self.parts_refused(
                "did not accept the rest of the file list in parts within the time allowed",
            )),
            Phase::AwaitAnswer { deadline } if now >= deadline => Err(Error::Timeout(format!(
                "the receiver did not answer the resume request within {} s",
                self.config.answer_timeout.as_secs()
            ))),
            // A receiver that never accepted is p2p-copy 0.1.x, which normally closes
            // after `eof`; one that stays open has had everything all the same.
            Phase::AwaitReport { deadline } if now >= deadline && !self.accepted => {
                self.finish(false, 0);
                Ok(())
            }
            Phase::AwaitReport { deadline } if now >= deadline => Err(Error::Timeout(format!(
                "the receiver did not confirm delivery within {} s of the end of the data: the files may not all be in place",
                self.config.report_timeout.as_secs()
            ))),
            _ => Ok(()),
        };
        self.settle(r)
    }

    /// The connection ended (closed by the relay, the peer or the network).
    ///
    /// `code` and `reason` are the close frame's, when there was one.
    ///
    /// After `eof` to a receiver that did not accept delivery confirmation (p2p-copy
    /// 0.1.x closes when it has everything), the close ends the session: done, not
    /// confirmed.
    ///
    /// # Errors
    /// [`Error::ConnectionLost`] (or [`Error::Peer`] for a relay's refusal) unless the
    /// session had already finished.
    pub fn handle_close(
        &mut self,
        _now: Instant,
        code: Option<u16>,
        reason: &str,
    ) -> Result<(), Error> {
        self.check()?;
        match self.phase {
            Phase::Done => return Ok(()),
            Phase::AwaitReport { .. } if !self.accepted => {
                self.finish(false, 0);
                return Ok(());
            }
            _ => {}
        }
        let when = match self.phase {
            Phase::AwaitReport { .. } => {
                "after the last file but before the receiver confirmed delivery (the files may not all be in place: run again with --resume)"
            }
            Phase::AwaitReady { .. } => "while waiting for the receiver",
            _ => "before the transfer was complete",
        };
        let e = crate::error::closed_error(code, reason, when);
        self.settle(Err(e))
    }

    /// Fail the session for a reason of the runtime's own (a direct path that was
    /// required and never came up): like any failure, the peer is told why when it
    /// confirms delivery. Nothing happens once the session ended.
    pub fn abort(&mut self, e: Error) {
        if self.error.is_none() && !matches!(self.phase, Phase::Done) {
            self.fail(e);
        }
    }

    /// Stop the session.
    pub fn cancel(&mut self, reason: &str) {
        if self.error.is_none() && !matches!(self.phase, Phase::Done) {
            self.fail(Error::Cancelled(reason.to_owned()));
        }
    }

    // ---- internals ----

    fn check(&self) -> Result<(), Error> {
        Error::sticky(&self.error)
    }

    fn settle(&mut self, r: Result<(), Error>) -> Result<(), Error> {
        match r {
            Ok(()) => Ok(()),
            Err(e) => {
                self.fail(e.clone());
                Err(e)
            }
        }
    }

    fn fail(&mut self, e: Error) {
        let phase_before = std::mem::replace(&mut self.phase, Phase::Failed);
        self.jobs.clear();
        self.io.clear();
        self.transmit.clear();
        self.frames_queued = 0;
        self.current = None;
        self.meta_out = None;
        // Tell a receiver that confirms why the session ends, unless the connection is
        // gone or the failure is the receiver's own report.
        if self.config.confirm && !matches!(e, Error::ConnectionLost(_) | Error::NotDelivered(_)) {
            let report = Report {
                ok: false,
                error: Some(e.to_string()),
                ..Report::default()
            };
            if self.accepted {
                let msg = report_message(report, Role::Sender, self.sealing());
                self.transmit.push_back(msg.into());
            } else if !matches!(phase_before, Phase::AwaitReady { .. }) {
                self.unsent_report = Some(report);
            }
        }
        self.events.push_back(Event::Failed(e.clone()));
        self.error = Some(e);
    }

    /// After failing: the receiver's acceptance of confirmation releases the report.
    fn late_acceptance(&mut self, msg: &WireMessage) {
        let WireMessage::Text(text) = msg else {
            return;
        };
        if let Ok(Control::Extensions { accept }) = Control::parse(text) {
            if accept.iter().any(|e| e == wire::EXT_CONFIRM) {
                if let Some(report) = self.unsent_report.take() {
                    let msg = report_message(report, Role::Sender, self.sealing());
                    self.transmit.push_back(msg.into());
                }
            }
        }
    }

    /// Once, after the receiver answered the offer of a direct connection: what it
    /// said. A p2p-copy 0.1.x receiver never answers.
    pub fn take_direct_start(&mut self) -> Option<DirectAnswer> {
        let agreed = self.direct_answer.take()?;
        if self.error.is_some() {
            return None;
        }
        Some(match agreed {
            true => DirectAnswer::Agreed(self.sealing().map(|(c, s)| (c.clone(), *s))),
            false => DirectAnswer::Declined,
        })
    }

    /// Compression jobs are out for the file being sent.
    fn compressing(&self) -> bool {
        match self.current.as_ref().map(|c| &c.stage) {
            Some(Stage::Streaming(st)) => {
                st.jobs_out > 0 && st.compression != Some(Compression::None)
            }
            _ => false,
        }
    }

    /// The chain of files started now: BLAKE3 once the fast data path is agreed.
    fn chain_kind(&self) -> ChainKind {
        if self.fast_on {
            ChainKind::Blake3
        } else {
            ChainKind::Sha256
        }
    }

    /// The cipher and nonce seed that seal reports, when encrypting.
    fn sealing(&self) -> Option<(&Cipher, &[u8; 32])> {
        self.cipher.as_ref().map(|c| (c, &self.nonce_seed))
    }

    /// The session is done; report whether the receiver confirmed it.
    fn finish(&mut self, confirmed: bool, delivered: u64) {
        self.phase = Phase::Done;
        self.events.push_back(Event::Delivery {
            confirmed,
            delivered,
        });
        self.events.push_back(Event::Done);
    }

    fn on_message(&mut self, now: Instant, msg: WireMessage) -> Result<(), Error> {
        let WireMessage::Text(text) = msg else {
            return Err(Error::peer("unexpected binary message to the sender"));
        };
        let c = Control::parse(&text)?;
        let after_manifest = matches!(
            self.phase,
            Phase::AwaitParts { .. }
                | Phase::AwaitAnswer { .. }
                | Phase::Sending
                | Phase::AwaitReport { .. }
        );
        match (&self.phase, c) {
            (Phase::AwaitReady { .. }, Control::Ready) => {
                self.events.push_back(Event::Paired);
                self.send_manifest(now)
            }
            (_, Control::Extensions { accept })
                if self.config.confirm && after_manifest && !self.accepted =>
            {
                self.accepted = accept.iter().any(|e| e == wire::EXT_CONFIRM);
                self.fast_on =
                    self.accepted && self.config.fast && accept.iter().any(|e| e == wire::EXT_FAST);
                if self.fast_wait_until.take().is_some() {
                    self.pump();
                }
                if self.config.direct && self.config.confirm {
                    self.direct_agreed = accept.iter().any(|e| e == wire::EXT_DIRECT);
                    self.direct_answer = Some(self.direct_agreed);
                }
                if self.config.consent
                    && self.accepted
                    && accept.iter().any(|e| e == wire::EXT_CONSENT)
                {
                    self.held = true;
                    self.events.push_back(Event::AwaitingConsent);
                }
                self.reconnect_agreed = self.accepted
                    && self.config.reconnect.is_some()
                    && accept.iter().any(|e| e == wire::EXT_RECONNECT);
                if !self.needed.is_empty() {
                    let missing = self.needed.iter().any(|n| !accept.iter().any(|a| a == n));
                    if missing || !self.accepted {
                        return Err(self.unsupported());
                    }
                    self.needed_accepted = true;
                }
                self.meta_agreed = self.accepted
                    && self.config.metadata.is_some()
                    && accept.iter().any(|e| e == wire::EXT_METADATA);
                if self.meta_agreed && matches!(self.phase, Phase::AwaitReport { .. }) {
                    // `eof` went before the acceptance arrived.
                    self.meta_out = Some(metadata::Outgoing::default());
                }
                if matches!(self.config.reconnect, Some(SenderReconnect::Resume { .. }))
                    && !self.reconnect_agreed
                {
                    return Err(Error::peer(NOT_THE_RECEIVER));
                }
                self.parts_agreed = self.accepted && accept.iter().any(|e| e == wire::EXT_PARTS);
                if matches!(self.phase, Phase::AwaitParts { .. }) {
                    if !self.parts_agreed {
                        return Err(self.parts_refused(
                            "runs a p2p-copy that cannot take a file list in parts",
                        ));
                    }
                    self.send_parts();
                    self.after_manifest(now);
                }
                Ok(())
            }
            (Phase::AwaitParts { .. }, c) => Err(self.parts_refused(&format!(
                "answered the file list with a {} message instead of accepting the rest of it",
                c.type_name()
            ))),
            (_, Control::Consent { accept }) if self.held && after_manifest => {
                if !accept {
                    return Err(Error::Declined(
                        "the receiver declined the transfer; nothing was written".into(),
                    ));
                }
                self.held = false;
                if let Phase::AwaitAnswer { deadline } = &mut self.phase {
                    // The receiver looks for its local copies only now.
                    *deadline = now + self.config.answer_timeout;
                }
                self.pump();
                Ok(())
            }
            (Phase::AwaitAnswer { .. }, Control::ReconnectProof { proof })
                if self.reconnect_agreed && !self.reconnect_verified =>
            {
                let proved = self
                    .config
                    .reconnect
                    .as_ref()
                    .is_some_and(|r| r.check_answer(&proof));
                if !proved {
                    return Err(Error::peer(NOT_THE_RECEIVER));
                }
                self.reconnect_verified = true;
                Ok(())
            }
            (_, c @ (Control::Report(_) | Control::EncReport { .. }))
                if self.accepted && after_manifest =>
            {
                let report = open_report(c, Role::Receiver, self.sealing())?;
                self.take_report(report)
            }
            (
                Phase::AwaitAnswer { .. },
                c @ (Control::ReceiverManifestMore(_) | Control::EncPart { .. }),
            ) if self.parts_agreed => {
                let sealing = self.cipher.as_ref().map(|c| (c, &self.nonce_seed));
                let collect = self
                    .answer_parts
                    .get_or_insert_with(|| Collect::new(self.files.len() as u64));
                let entries = collect.take::<ResumeEntry>(c, sealing)?;
                self.add_answers(entries)
            }
            (Phase::AwaitReport { .. }, c @ (Control::ReportMore(_) | Control::EncPart { .. }))
                if self.parts_agreed =>
            {
                let sealing = self.cipher.as_ref().map(|c| (c, &self.nonce_seed));
                let collect = self
                    .report_parts
                    .get_or_insert_with(|| Collect::new(self.files.len() as u64));
                let failed = collect.take::<FailedFile>(c, sealing)?;
                self.note_failed(failed)
            }
            (Phase::AwaitAnswer { .. }, Control::ReceiverManifest { entries })
                if self.cipher.is_none() =>
            {
                self.take_answer(entries)
            }
            (Phase::AwaitAnswer { .. }, Control::EncReceiverManifest { hidden_manifest })
                if self.cipher.is_some() =>
            {
                let plain = self.open_hidden(&hidden_manifest, "resume answer")?;
                match Control::parse(&plain)? {
                    Control::ReceiverManifest { entries } => self.take_answer(entries),
                    other => Err(Error::peer(format!(
                        "encrypted resume answer holds a {} message",
                        other.type_name()
                    ))),
                }
            }
            (_, c) => Err(Error::peer(format!(
                "unexpected {} message to the sender",
                c.type_name()
            ))),
        }
    }

    fn open_hidden(&mut self, hex: &str, what: &str) -> Result<String, Error> {
        let sealed = wire::unhex(hex).ok_or_else(|| Error::peer(format!("{what} is not hex")))?;
        let (Some(cipher), Some(nonces)) = (&self.cipher, &mut self.nonces) else {
            return Err(Error::misuse("decrypting without a key"));
        };
        let plain = cipher
            .open(&nonces.next(), &sealed)
            .ok_or_else(|| Error::integrity(format!("{what} does not decrypt (wrong code?)")))?;
        String::from_utf8(plain).map_err(|_| Error::peer(format!("{what} is not UTF-8")))
    }

    fn send_manifest(&mut self, now: Instant) -> Result<(), Error> {
        let entries: Vec<ManifestEntry> = self
            .files
            .iter()
            .map(|f| ManifestEntry {
                path: f.path.clone(),
                size: announced_size(f),
                kind: f.kind,
            })
            .collect();
        // A list that may not fit in one message (the manifest, or the resume answer or
        // report for as many files) is offered to travel in parts.
        let worst_answer: usize = self.files.iter().map(|f| f.path.len() + 300).sum();
        let offer_parts = self.config.confirm && worst_answer > parts::PART_BUDGET;
        let mut manifest = self.manifest(entries, offer_parts, None);
        if !parts::fits(manifest.to_json().len(), self.cipher.is_some()) {
            if !self.config.confirm {
                return Err(self.parts_refused("cannot take it in parts"));
            }
            let Control::Manifest { entries, .. } = manifest else {
                unreachable!("built as a manifest just above")
            };
            let mut groups = parts::split(entries, parts::PART_BUDGET).into_iter();
            let first = groups.next().unwrap_or_default();
            let total = Some(PartsOffer {
                total: self.files.len() as u64,
            });
            manifest = self.manifest(first, true, total);
            self.parts_pending = groups.collect();
        }
        let msg = match (&self.cipher, &mut self.nonces) {
            (Some(cipher), Some(nonces)) => Control::EncManifest {
                nonce: wire::hex(&self.nonce_seed),
                hidden_manifest: wire::hex(
                    &cipher.seal(&nonces.next(), manifest.to_json().as_bytes()),
                ),
            },
            _ => manifest,
        };
        self.transmit.push_back(msg.into());
        self.events.push_back(Event::Manifest {
            files: self.files.len(),
            bytes: self
                .files
                .iter()
                .fold(0u64, |a, f| a.saturating_add(announced_size(f))),
        });
        let first_is_large = self
            .files
            .first()
            .is_some_and(|f| announced_size(f) >= self.config.fast_wait_min);
        if self.config.confirm && self.config.fast && first_is_large {
            self.fast_wait_until = Some(now + self.config.fast_wait);
        }
        if self.parts_pending.is_empty() {
            self.after_manifest(now);
        } else {
            self.phase = Phase::AwaitParts {
                deadline: now + self.config.parts_timeout,
            };
        }
        Ok(())
    }

    /// The manifest message with `entries`, the extensions offered and, for a manifest
    /// in parts, the number of entries of the whole.
    fn manifest(
        &self,
        entries: Vec<ManifestEntry>,
        offer_parts: bool,
        parts: Option<PartsOffer>,
    ) -> Control {
        let confirm = self.config.confirm;
        Control::Manifest {
            resume: self.config.resume,
            entries,
            // The direct path relies on the receiver's report to know when the session
            // ended, so it is offered only with confirmation.
            extensions: [
                (confirm, wire::EXT_CONFIRM),
                (confirm && self.config.direct, wire::EXT_DIRECT),
                (confirm && self.config.consent, wire::EXT_CONSENT),
                (
                    confirm && self.config.reconnect.is_some(),
                    wire::EXT_RECONNECT,
                ),
                (
                    confirm && self.config.metadata.is_some(),
                    wire::EXT_METADATA,
                ),
                (confirm && offer_parts, wire::EXT_PARTS),
                (confirm && self.config.fast, wire::EXT_FAST),
                (self.needed.contains(&wire::EXT_STREAM), wire::EXT_STREAM),
                (self.needed.contains(&wire::EXT_TEXT), wire::EXT_TEXT),
            ]
            .into_iter()
            .filter(|(on, _)| *on)
            .map(|(_, name)| name.to_owned())
            .collect(),
            reconnect: self
                .config
                .reconnect
                .as_ref()
                .filter(|_| confirm)
                .map(SenderReconnect::offer),
            parts,
        }
    }

    /// The receiver accepted the manifest in parts: send the rest.
    fn send_parts(&mut self) {
        let sealing = self.cipher.as_ref().map(|c| (c, &self.nonce_seed));
        for (i, group) in std::mem::take(&mut self.parts_pending)
            .into_iter()
            .enumerate()
        {
            let msg = parts::part_message(i as u64 + 1, group, sealing);
            self.transmit.push_back(msg.into());
        }
    }

    /// The whole manifest is on its way: wait for the resume answer, or send files.
    fn after_manifest(&mut self, now: Instant) {
        if self.config.resume {
            self.phase = Phase::AwaitAnswer {
                deadline: now + self.config.answer_timeout,
            };
        } else {
            self.phase = Phase::Sending;
            self.pump();
        }
    }

    /// What the receiver must accept, for messages.
    fn needed_names(&self) -> String {
        let mut what: Vec<&str> = Vec::new();
        for name in &self.needed {
            what.push(match *name {
                wire::EXT_STREAM => "a stream of unknown size (standard input)",
                _ => "a text",
            });
        }
        what.join(" and ")
    }

    /// The receiver cannot take a stream or a text.
    fn unsupported(&self) -> Error {
        Error::Unsupported(format!(
            "the receiver cannot take {} (it is p2p-copy 0.1.x or an older p2p-copy); nothing was sent: send a file instead",
            self.needed_names()
        ))
    }

    /// The error for a receiver that cannot take this transfer's file list, which does
    /// not fit in one message: it `why`.
    fn parts_refused(&self, why: &str) -> Error {
        Error::Unsupported(format!(
            "the list of {} files does not fit in one message (2 MiB), and the receiver {why}: p2p-copy 0.1.x can take at most 2 MiB of file names; nothing was sent. Send fewer files at once, or spread them over more connections with a parallel code (n=<N>=n…)",
            self.files.len()
        ))
    }

    fn take_answer(&mut self, entries: Vec<ResumeEntry>) -> Result<(), Error> {
        if !self.needed.is_empty() && !self.needed_accepted {
            // The answer came without the acceptance before it.
            return Err(self.unsupported());
        }
        self.add_answers(entries)?;
        self.phase = Phase::Sending;
        self.pump();
        Ok(())
    }

    /// Entries of the resume answer (a part or its head).
    fn add_answers(&mut self, entries: Vec<ResumeEntry>) -> Result<(), Error> {
        // A receiver of this project answers the offer of the fast data path before it
        // answers this; one that did not is p2p-copy 0.1.x, which never will.
        self.fast_wait_until = None;
        if matches!(self.config.reconnect, Some(SenderReconnect::Resume { .. }))
            && !self.reconnect_verified
        {
            return Err(Error::peer(NOT_THE_RECEIVER));
        }
        for e in entries {
            let chain = wire::unhex32(&e.chain_hex).ok_or_else(|| {
                Error::peer_in(&e.path, "resume answer has a malformed chain_hex")
            })?;
            // An entry for a path never offered is never looked up, so it cannot change
            // what is sent; the parts hold no more entries than files were offered. A
            // stream or a text is always sent whole.
            if self.needed.is_empty()
                || self
                    .files
                    .iter()
                    .any(|f| f.path == e.path && f.kind.is_none())
            {
                self.answers.insert(e.path, (e.size, chain));
            }
        }
        Ok(())
    }

    /// Files the receiver's report (a part or its head) lists as not in place.
    fn note_failed(&mut self, failed: Vec<FailedFile>) -> Result<(), Error> {
        for f in failed {
            self.missing += 1;
            if self.skipped.contains(&f.path) {
                continue;
            }
            let files = &self.files;
            let listed = self
                .listed
                .get_or_insert_with(|| files.iter().map(|f| f.path.clone()).collect());
            if !listed.contains(&f.path) {
                return Err(Error::peer_in(
                    &f.path,
                    "the delivery report names a file that was never sent",
                ));
            }
            self.events.push_back(Event::FileNotDelivered {
                path: f.path,
                reason: f.reason,
            });
        }
        Ok(())
    }

    /// The receiver's report at the end of the session.
    fn take_report(&mut self, report: Report) -> Result<(), Error> {
        if !report.ok {
            let why = report.error.as_deref().unwrap_or("no reason given");
            return Err(Error::NotDelivered(format!(
                "the receiver failed: {}",
                crate::path::escape(why)
            )));
        }
        if !matches!(self.phase, Phase::AwaitReport { .. }) {
            return Err(Error::peer("delivery report before the end of the data"));
        }
        self.note_failed(report.failed)?;
        let missing = self.missing;
        let listed = self.files.len() as u64;
        if report.delivered.saturating_add(missing) != listed {
            return Err(Error::NotDelivered(format!(
                "the receiver reports {} of {listed} files in place and {missing} not",
                report.delivered
            )));
        }
        if self.reconnect_agreed && !self.direct_agreed {
            // The receiver waits for this before it ends: without it, it reconnects to
            // tell a sender that lost the report what it holds.
            self.transmit.push_back(Control::ReportReceived.into());
        }
        self.finish(true, report.delivered);
        Ok(())
    }

    /// Give up the current file (`skip_errors`): tell the receiver when part of it, or a
    /// nonce for it, is already spent, and go on with the next file.
    fn abandon_current(&mut self, file: usize, reason: String) -> Result<(), Error> {
        let path = self.files[file].path.clone();
        let encrypting = self.cipher.is_some();
        let (spent, used) = match self.current.as_ref().map(|c| &c.stage) {
            Some(Stage::Streaming(st)) if encrypting => (
                u64::from(st.file_nonce.is_some()) + st.next_job,
                if st.next_emit > 0 {
                    1 + st.next_emit
                } else {
                    0
                },
            ),
            Some(Stage::Streaming(st)) => (0, u64::from(st.next_emit > 0)),
            _ => (0, 0),
        };
        if spent > 0 || used > 0 {
            if !self.accepted {
                return Err(Error::io_in(
                    &path,
                    format!("{reason}; part of it was already sent, and a p2p-copy 0.1.x receiver cannot abandon a file"),
                ));
            }
            let why = if reason.contains("changed") {
                "changed"
            } else {
                "unreadable"
            };
            self.transmit.push_back(
                Control::FileAbort {
                    skipped_nonces: spent - used.min(spent),
                    why: why.to_owned(),
                }
                .into(),
            );
        }
        self.abandoned.insert(file);
        self.io.push_back(IoRequest::Close { file });
        self.events.push_back(Event::FileNotDelivered {
            path: path.clone(),
            reason,
        });
        self.skipped.insert(path);
        self.current = None;
        self.pump();
        Ok(())
    }

    /// Start files, issue reads and jobs, and emit what is ready, as far as the window
    /// allows.
    fn pump(&mut self) {
        loop {
            if !matches!(self.phase, Phase::Sending) || self.held {
                return;
            }
            if self.current.is_none() {
                if self.next_file == self.files.len() {
                    self.transmit.push_back(Control::Eof.into());
                    if self.config.confirm {
                        self.phase = Phase::AwaitReport {
                            deadline: self.last_now + self.config.report_timeout,
                        };
                        if self.meta_agreed {
                            self.meta_out = Some(metadata::Outgoing::default());
                        }
                    } else {
                        self.phase = Phase::Done;
                        self.events.push_back(Event::Done);
                    }
                    return;
                }
                if self.fast_wait_until.is_some() {
                    return;
                }
                self.start_file();
            }
            let progressed = self.step();
            if !progressed {
                return;
            }
        }
    }

    fn start_file(&mut self) {
        let index = self.next_file;
        self.next_file += 1;
        let f = &self.files[index];
        let answer = self.answers.get(&f.path).copied();
        let stage_reads = match answer {
            Some((s, chain)) if s > 0 && s <= f.size => Some((s, chain)),
            _ => None,
        };
        self.current = Some(match stage_reads {
            Some(want) => Current {
                index,
                reads: ReadPipe::new(0, want.0),
                stage: Stage::Hashing {
                    want,
                    chain: Chain::of(self.chain_kind()),
                },
            },
            None => self.streaming(index, 0),
        });
    }

    fn streaming(&mut self, index: usize, append_from: u64) -> Current {
        let stream = self.files[index].kind == Some(EntryKind::Stream);
        // A stream's end is found by a short read.
        let size = if stream {
            u64::MAX
        } else {
            self.files[index].size
        };
        let remaining = size - append_from;
        let pieces = match stream {
            true => u64::MAX,
            false => remaining.div_ceil(CHUNK_SIZE as u64).max(1),
        };
        let compression = match self.config.compress {
            CompressMode::Off => Some(Compression::None),
            CompressMode::On => Some(Compression::Zstd),
            CompressMode::Auto => None,
        };
        Current {
            index,
            reads: ReadPipe::new(append_from, size),
            stage: Stage::Streaming(Box::new(Streaming {
                fast: self.fast_on,
                append_from,
                pieces,
                compression,
                file_nonce: None,
                next_job: 0,
                jobs_out: 0,
                results: BTreeMap::new(),
                next_emit: 0,
                linking: false,
                chain: Chain::of(self.chain_kind()),
                sent: append_from,
                stream,
            })),
        }
    }

    /// One round of progress on the current file. Returns whether anything moved that
    /// could let the loop go on (a file finished or was skipped).
    fn step(&mut self) -> bool {
        let window = self.config.window;
        let Some(cur) = self.current.as_mut() else {
            return false;
        };
        let index = cur.index;
        match &mut cur.stage {
            Stage::Hashing { want, chain } => {
                while let Some((_, data)) = cur.reads.take() {
                    chain.next(data.payload());
                }
                if cur.reads.is_done() {
                    let (s, c) = *want;
                    let matches = chain.value() == Some(c);
                    let size = self.files[index].size;
                    if matches && s == size {
                        let path = self.files[index].path.clone();
                        self.io.push_back(IoRequest::Close { file: index });
                        self.events.push_back(Event::FileSkipped { path, size });
                        self.current = None;
                        return true;
                    }
                    let append_from = if matches { s } else { 0 };
                    let next = self.streaming(index, append_from);
                    self.current = Some(next);
                    return true;
                }
                while cur.reads.held() < window {
                    match cur.reads.next_request() {
                        Some((offset, len)) => self.io.push_back(IoRequest::Read {
                            file: index,
                            offset,
                            len,
                        }),
                        None => break,
                    }
                }
                false
            }
            Stage::Streaming(st) => {
                // Emit finished pieces in order.
                while let Some(r) = st.results.remove(&st.next_emit) {
                    // v1's chain is sequential, but its SHA-256 need not run on the
                    // session loop: a large piece goes to a chain job, and the loop
                    // writes the pieces before it meanwhile.
                    let payload_len = r
                        .plain
                        .as_ref()
                        .map_or(r.frame.len() - DATA_HEADER_LEN, Bytes::len);
                    if !st.fast && r.chain.is_none() && payload_len >= LINK_JOB_MIN {
                        self.jobs.push_back(Job {
                            file: index,
                            seq: r.seq,
                            work: Work::Link {
                                prev: st.chain.value(),
                                done: Box::new(r),
                            },
                        });
                        st.linking = true;
                        st.jobs_out += 1;
                        break;
                    }
                    if st.next_emit == 0 {
                        let compression = st.compression.unwrap_or(if r.compressed {
                            Compression::Zstd
                        } else {
                            Compression::None
                        });
                        st.compression = Some(compression);
                        let f = &self.files[index];
                        let header = Control::File(FileHeader {
                            path: f.path.clone(),
                            size: announced_size(f),
                            compression,
                            append_from: st.append_from,
                            fast: st.fast,
                        });
                        let msg = match (&self.cipher, st.file_nonce) {
                            (Some(cipher), Some(nonce)) => Control::EncFile {
                                hidden_file: wire::hex(
                                    &cipher.seal(&nonce, header.to_json().as_bytes()),
                                ),
                            },
                            _ => header,
                        };
                        self.transmit.push_back(msg.into());
                        self.events.push_back(Event::FileStarted {
                            path: f.path.clone(),
                            size: announced_size(f),
                            append_from: st.append_from,
                            compression,
                        });
                    }
                    let chain = match (st.fast, r.piece_hash) {
                        (false, _) => match r.chain {
                            Some(c) => {
                                st.chain = Chain::at(ChainKind::Sha256, Some(c));
                                c
                            }
                            None => st
                                .chain
                                .next(r.plain.as_deref().unwrap_or(&r.frame[DATA_HEADER_LEN..])),
                        },
                        (true, Some(h)) => st.chain.link(&h),
                        // Encrypted on the fast path: the tag protects the piece, and
                        // the chain field is zero.
                        (true, None) => [0; 32],
                    };
                    let compressed = r.compressed;
                    let mut frame = r.frame;
                    wire::write_header(&mut frame, st.next_emit, &chain);
                    self.transmit
                        .push_back(WireMessage::Binary(Bytes::from(frame)));
                    st.next_emit += 1;
                    st.sent += r.raw;
                    if compressed {
                        if let Some(level) = self.level.vote(self.frames_queued) {
                            self.events.push_back(Event::CompressLevel { level });
                        }
                    }
                    self.frames_queued += 1;
                    self.events.push_back(Event::Progress {
                        delta: r.raw,
                        file_bytes: st.sent,
                    });
                }
                if st.next_emit == st.pieces {
                    let f = &self.files[index];
                    let end = match (st.stream, &self.cipher, &mut self.nonces) {
                        (false, _, _) => Control::FileEof,
                        (true, Some(cipher), Some(nonces)) => Control::StreamEof {
                            size: None,
                            hidden_size: Some(wire::hex(
                                &cipher.seal(&nonces.next(), st.sent.to_string().as_bytes()),
                            )),
                        },
                        (true, _, _) => Control::StreamEof {
                            size: Some(st.sent),
                            hidden_size: None,
                        },
                    };
                    self.transmit.push_back(end.into());
                    self.io.push_back(IoRequest::Close { file: index });
                    self.events.push_back(Event::FileDone {
                        path: f.path.clone(),
                        size: st.sent,
                    });
                    self.current = None;
                    return true;
                }
                // Turn arrived pieces into jobs (after the first piece only once the
                // compression decision is known).
                loop {
                    if st.next_job > 0 && st.compression.is_none() {
                        break;
                    }
                    let data = if st.next_job == 0
                        && !st.stream
                        && st.append_from == self.files[index].size
                    {
                        // Nothing to read (an empty file): still one, empty, piece.
                        PieceBuf::zeroed(0)
                    } else if st.next_job == st.pieces {
                        break;
                    } else {
                        match cur.reads.take() {
                            Some((_, d)) => d,
                            // A stream's end: every piece read is taken.
                            None if st.stream && cur.reads.is_done() => {
                                if st.next_job > 0 {
                                    st.pieces = st.next_job;
                                    // Its last piece may already be out: end it now.
                                    return true;
                                }
                                // An empty stream: one, empty, piece.
                                st.pieces = 1;
                                PieceBuf::zeroed(0)
                            }
                            None => break,
                        }
                    };
                    let compress = match (st.compression, st.next_job) {
                        (Some(Compression::Zstd), _) => JobCompress::Yes,
                        (Some(Compression::None), _) => JobCompress::No,
                        (None, _) => JobCompress::Decide,
                    };
                    let seal = match (&self.cipher, &mut self.nonces) {
                        (Some(c), Some(n)) => {
                            // The header's nonce comes first, taken only once data for
                            // the file is at hand, so a file skipped before that spends
                            // none.
                            if st.next_job == 0 {
                                st.file_nonce = Some(n.next());
                            }
                            let nonce = n.next();
                            Some(match (&self.fast_cipher, st.fast) {
                                (Some(f), true) => JobSeal::Fast(f.clone(), n.taken()),
                                _ => JobSeal::V1(c.clone(), nonce),
                            })
                        }
                        _ => None,
                    };
                    self.jobs.push_back(Job {
                        file: index,
                        seq: st.next_job,
                        work: Work::Piece {
                            data,
                            compress,
                            level: self.level.now,
                            hash: st.fast && seal.is_none(),
                            seal,
                        },
                    });
                    st.next_job += 1;
                    st.jobs_out += 1;
                }
                // Read ahead within the window.
                loop {
                    let held =
                        cur.reads.held() + st.jobs_out + st.results.len() + self.frames_queued;
                    if held >= window {
                        break;
                    }
                    match cur.reads.next_request() {
                        Some((offset, len)) => self.io.push_back(IoRequest::Read {
                            file: index,
                            offset,
                            len,
                        }),
                        None => break,
                    }
                }
                false
            }
        }
    }

    fn on_io(&mut self, done: IoCompletion) -> Result<(), Error> {
        let file = match &done {
            IoCompletion::Failed { file, .. } | IoCompletion::Read { file, .. } => *file,
        };
        if self.abandoned.contains(&file) {
            return Ok(());
        }
        match done {
            IoCompletion::Failed { file, reason } => {
                let current = self.current.as_ref().is_some_and(|c| c.index == file);
                match self.files.get(file) {
                    Some(_) if current && self.config.skip_errors => {
                        self.abandon_current(file, reason)
                    }
                    Some(f) => Err(Error::io_in(&f.path, reason)),
                    None => Err(Error::misuse(format!(
                        "I/O failure for file {file}, never listed"
                    ))),
                }
            }
            IoCompletion::Read { file, offset, data } => {
                let cur = match self.current.as_mut() {
                    Some(c) if c.index == file => c,
                    // A read ahead past the end of a stream that is already sent.
                    _ if data.is_empty()
                        && file < self.next_file
                        && self.files[file].kind == Some(EntryKind::Stream) =>
                    {
                        return Ok(())
                    }
                    _ => {
                        return Err(Error::misuse(format!(
                            "read completion for file {file}, which is not being read"
                        )))
                    }
                };
                let stream = self.files[file].kind == Some(EntryKind::Stream);
                let done = match stream {
                    true => cur.reads.complete_stream(offset, data),
                    false => cur.reads.complete(offset, data),
                };
                if let Err(reason) = done {
                    let path = &self.files[file].path;
                    return Err(Error::io_in(path, reason));
                }
                self.pump();
                Ok(())
            }
        }
    }

    fn on_job(&mut self, done: JobResult) -> Result<(), Error> {
        if self.abandoned.contains(&done.file) {
            return Ok(());
        }
        let Some(Current {
            index,
            stage: Stage::Streaming(st),
            ..
        }) = self.current.as_mut()
        else {
            return Err(Error::misuse("job result while no file is streaming"));
        };
        // A chain job's result is the one awaited for `next_emit`; any other result
        // for that piece while its chain job is out is one nobody asked for.
        let linked = done.chain.is_some();
        let awaited = linked == (st.linking && done.seq == st.next_emit);
        if done.file != *index
            || !awaited
            || done.seq < st.next_emit
            || done.seq >= st.next_job
            || st.results.contains_key(&done.seq)
        {
            return Err(Error::misuse(format!(
                "job result for piece {} nobody asked for",
                done.seq
            )));
        }
        st.jobs_out -= 1;
        if linked {
            st.linking = false;
        }
        st.results.insert(done.seq, done);
        self.pump();
        Ok(())
    }
}

/// The size the manifest and `file` announce: 0 for a stream, whose size is known only
/// at its end.
fn announced_size(f: &SendFile) -> u64 {
    match f.kind {
        Some(EntryKind::Stream) => 0,
        _ => f.size,
    }
}
