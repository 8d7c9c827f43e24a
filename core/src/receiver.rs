//! The receiving side of a session.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::time::{Duration, Instant};

use bytes::Bytes;

use crate::chain::{Chain, ChainKind};
use crate::consent::Offer;
use crate::crypto::{Cipher, FastCipher, NonceChain, Secrets};
use crate::delivery::{open_report, report_message};
use crate::direct::DirectAnswer;
use crate::event::Event;
use crate::metadata::{self, Attrs};
use crate::parts::{self, Collect};
use crate::path::{windows_name_error, SafePath};
use crate::pipe::ReadPipe;
use crate::reconnect::{ReceiverReconnect, ReconnectStatus, ResumeState};
use crate::wire::{
    self, Compression, Control, DataMessage, EntryKind, FailedFile, FileHeader, ManifestEntry,
    PartsOffer, Report, ResumeEntry, Role, WireMessage, CHUNK_SIZE, MAX_MESSAGE_LEN,
};
use crate::Error;

/// Receiver settings.
#[derive(Debug, Clone)]
pub struct ReceiverConfig {
    /// How long to wait for the sender's manifest after `hello` (no sender with the same
    /// code and mode, or a sender that never starts).
    pub manifest_timeout: Duration,
    /// Longest silence allowed from the sender once the manifest arrived.
    pub idle_timeout: Duration,
    /// Pieces in flight at once (work items and writes together).
    pub window: usize,
    /// Accept a direct connection ([`EXT_DIRECT`](crate::wire::EXT_DIRECT)) when the
    /// sender offers one; [`Receiver::take_direct_start`] then says so. Off by default.
    pub direct: bool,
    /// Ask before accepting: after a valid manifest the receiver hands out an
    /// [`Offer`] ([`Receiver::take_offer`]), reads and writes nothing, and waits for
    /// [`Receiver::consent`]. A sender of this project that offers
    /// [`EXT_CONSENT`](crate::wire::EXT_CONSENT) is told the answer; a p2p-copy 0.1.x
    /// sender is not (on a refusal the connection just closes). Off by default.
    pub consent: bool,
    /// Never replace a file under its final name whose content differs from the one
    /// received (`--no-clobber`): the runtime keeps it, drops the received copy and
    /// answers [`IoCompletion::Kept`]; the file is reported as kept
    /// ([`Event::FileKept`]) and, to a sender that confirms delivery, as not delivered.
    /// Off by default: a received file replaces an older one at the commit, as p2p-copy
    /// 0.1.x replaces it.
    pub keep_existing: bool,
    /// Accept automatic reconnect ([`EXT_RECONNECT`](crate::wire::EXT_RECONNECT)) in the
    /// first session, or, on a reconnect, accept only the sender that proves itself.
    /// `None` by default.
    pub reconnect: Option<ReceiverReconnect>,
    /// Keep the sender's permission bits, modification times and directories
    /// ([`EXT_METADATA`](crate::wire::EXT_METADATA)) when it offers them: after the
    /// commits the receiver asks for [`IoRequest::ApplyMetadata`]. Off by default.
    pub metadata: bool,
    /// Take at most one file (output to standard output): a manifest that lists more
    /// fails the session with [`Error::Unsupported`] before anything is written or
    /// answered. Off by default.
    pub single_file: bool,
    /// Accept the fast data path ([`EXT_FAST`](crate::wire::EXT_FAST)) when the sender
    /// offers it (with `confirm`). Off by default.
    pub fast: bool,
    /// Refuse names that Windows cannot store ([`windows_name_error`]): such a file is
    /// not delivered, with the component and the rule as the reason, and nothing is
    /// created under its name; its data, if the sender sends it anyway, is checked as
    /// the protocol requires and dropped. Every other file is received as usual. Off by
    /// default here; a runtime compiled for Windows turns it on. Ignored with
    /// [`single_file`](Self::single_file) (no name is used) and for texts.
    pub windows_names: bool,
}

impl Default for ReceiverConfig {
    fn default() -> Self {
        ReceiverConfig {
            manifest_timeout: Duration::from_secs(300),
            idle_timeout: Duration::from_secs(120),
            window: 4,
            direct: false,
            consent: false,
            keep_existing: false,
            reconnect: None,
            metadata: false,
            single_file: false,
            fast: false,
            windows_names: false,
        }
    }
}

/// What the runtime found locally for a path (see [`IoRequest::Stat`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LocalCopy {
    /// Its length in bytes.
    pub size: u64,
    /// True for the file under its final name, false for a partial file left by an
    /// earlier, unfinished transfer.
    pub complete: bool,
}

/// File access the receiver asks the runtime for. `file` is the index of the entry in the
/// manifest. Requests for one file must be carried out in the order polled; requests
/// for different files may run concurrently.
///
/// Every received file is written to a partial file beside its final name. A session
/// commits at its end: only after `eof`, with every file verified and closed, does the
/// receiver ask for [`IoRequest::Sync`] and then [`IoRequest::Commit`] of each file, so a
/// failed or tampered session never leaves a file under its final name, and an earlier
/// complete file is never damaged. Partial files stay for a later resume. The runtime must
/// create missing parent directories under the output directory and refuse to follow a
/// symlink in any of them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IoRequest {
    /// Find the resumable local copy of `path`: the partial file if one exists, else the
    /// complete file. Answer with [`IoCompletion::Stat`] (regular files only).
    Stat {
        /// Manifest index.
        file: usize,
        /// The checked path.
        path: SafePath,
    },
    /// Read `len` bytes at `offset` of the copy [`IoRequest::Stat`] found. Answer with
    /// [`IoCompletion::ReadBack`].
    ReadBack {
        /// Manifest index.
        file: usize,
        /// Byte offset.
        offset: u64,
        /// Bytes to read.
        len: usize,
    },
    /// Open the partial file for `path` for writing. With `append_from` = 0 start it
    /// empty; otherwise continue from the copy [`IoRequest::Stat`] found (copying a
    /// complete file to the partial name first), which must be exactly `append_from`
    /// bytes long. Answer with [`IoCompletion::Opened`].
    Open {
        /// Manifest index.
        file: usize,
        /// The checked path.
        path: SafePath,
        /// Bytes kept from the local copy.
        append_from: u64,
        /// The sender's size of the whole file, which the runtime may record on the
        /// partial file (for listings of partial files).
        size: u64,
    },
    /// Write `data` at absolute `offset` of the open partial file. Answer with
    /// [`IoCompletion::Written`].
    Write {
        /// Manifest index.
        file: usize,
        /// Byte offset in the file.
        offset: u64,
        /// The bytes.
        data: Bytes,
    },
    /// All data of this file is written: close the partial file. Answer with
    /// [`IoCompletion::Closed`].
    Close {
        /// Manifest index.
        file: usize,
    },
    /// Make every partial file of this session durable (for example `syncfs` on the
    /// output directory, or `fsync` of each). Issued once, when nothing else is in
    /// flight. Answer with [`IoCompletion::Synced`].
    Sync,
    /// Rename the closed partial file of `path` to its final name, replacing any older
    /// file. Answer with [`IoCompletion::Committed`]. With `keep_existing`, a regular
    /// file already there whose content differs is kept instead: remove the partial
    /// file and answer [`IoCompletion::Kept`].
    Commit {
        /// Manifest index.
        file: usize,
        /// The checked path.
        path: SafePath,
        /// Keep a different file already under the final name
        /// ([`ReceiverConfig::keep_existing`]).
        keep_existing: bool,
    },
    /// Extension [`EXT_METADATA`](crate::wire::EXT_METADATA), once, after every commit,
    /// when nothing else is in flight: give each file of `files` (all in place under
    /// their final names) its permission bits (already limited to `0o777`) and
    /// modification time, without following a symlink; then create each directory of
    /// `dirs` that is missing, with its missing parents, refusing symlinks as for
    /// files; then, last, give the directories their times. Whatever cannot be done is
    /// left as it is and listed in the answer, [`IoCompletion::MetadataApplied`]; this
    /// request never fails.
    ApplyMetadata {
        /// Files in place and what they get.
        files: Vec<(SafePath, Attrs)>,
        /// Directories of the sent tree, parents before children, and their times.
        dirs: Vec<(SafePath, Option<i64>)>,
    },
}

/// The runtime's answer to an [`IoRequest`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IoCompletion {
    /// Answer to [`IoRequest::Stat`].
    Stat {
        /// Manifest index.
        file: usize,
        /// The copy found, if any.
        found: Option<LocalCopy>,
    },
    /// Answer to [`IoRequest::ReadBack`].
    ReadBack {
        /// Manifest index.
        file: usize,
        /// Byte offset.
        offset: u64,
        /// Exactly the requested bytes.
        data: Bytes,
    },
    /// Answer to [`IoRequest::Open`].
    Opened {
        /// Manifest index.
        file: usize,
    },
    /// Answer to [`IoRequest::Write`].
    Written {
        /// Manifest index.
        file: usize,
    },
    /// Answer to [`IoRequest::Close`].
    Closed {
        /// Manifest index.
        file: usize,
    },
    /// Answer to [`IoRequest::Sync`].
    Synced,
    /// Answer to [`IoRequest::Commit`].
    Committed {
        /// Manifest index.
        file: usize,
    },
    /// Answer to [`IoRequest::Commit`] with `keep_existing`: a different file was under
    /// the final name and stays; the received copy is gone.
    Kept {
        /// Manifest index.
        file: usize,
    },
    /// [`IoRequest::Commit`] failed (for example a directory holds the final name).
    /// The file stays under its partial name; the other files are still committed, and
    /// the session then fails naming every file that is not in place.
    CommitFailed {
        /// Manifest index.
        file: usize,
        /// The operating system's message.
        reason: String,
    },
    /// Answer to [`IoRequest::ApplyMetadata`]: what could not be applied.
    MetadataApplied {
        /// Paths (as in the request) and why, the first few of them.
        not_kept: metadata::Notes,
    },
    /// A request failed.
    Failed {
        /// Manifest index (0 for [`IoRequest::Sync`]).
        file: usize,
        /// The operating system's message.
        reason: String,
    },
}

/// Per-piece CPU work (decrypt, hash, decompress) handed out by [`Receiver::poll_job`].
/// Run it anywhere with [`Job::run`] and feed the result to [`Receiver::handle_job`] in
/// any order; the receiver checks the results and writes in order.
///
/// A job hashes its piece onto the chain value that the previous piece's message
/// claimed, so the pieces of a file hash on several cores at once. Checked in order,
/// that is the same check as the running chain: piece 0's claim equals SHA-256(P(0)),
/// and when piece k-1's claim is c(k-1), piece k's claim equals SHA-256(c(k-1) ‖ P(k))
/// exactly when it is c(k).
#[derive(Clone)]
pub struct Job {
    file: usize,
    seq: u64,
    chain: [u8; 32],
    /// The chain value the previous piece's message claimed (`None` for the first).
    prev: Option<[u8; 32]>,
    payload: Bytes,
    open: Option<JobOpen>,
    /// The chain the piece extends: v1's SHA-256 or the fast path's BLAKE3 (`None` on
    /// the encrypted fast path, which carries no chain).
    hash: Option<ChainKind>,
    decompress: bool,
    expect_len: usize,
}

/// How a job decrypts its piece.
#[derive(Clone)]
enum JobOpen {
    /// v1: AES-256-GCM with the 32-byte nonce from the nonce chain.
    V1(Cipher, [u8; 32]),
    /// The fast data path: its own key, the nonce's number in the session's order.
    Fast(FastCipher, u64),
}

impl std::fmt::Debug for Job {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Job")
            .field("seq", &self.seq)
            .field("len", &self.payload.len())
            .field("decrypt", &self.open.is_some())
            .field("decompress", &self.decompress)
            .field("hash", &self.hash)
            .finish()
    }
}

/// A finished receiver [`Job`].
#[derive(Debug, Clone)]
pub struct JobResult {
    file: usize,
    seq: u64,
    /// What the piece's message claimed; the job's own value is in `outcome`.
    chain: [u8; 32],
    /// The piece's bytes for the file and the chain value the job computed (`None` on
    /// the encrypted fast path, which has no chain).
    outcome: Result<(Bytes, Option<[u8; 32]>), String>,
}

/// Largest plain piece whose job runs inline: hashing a few KiB costs less than a trip
/// to another thread.
const LIGHT_PIECE: usize = 64 * 1024;

impl Job {
    /// Whether the job is cheap enough to run inline (a small piece, nothing to decrypt
    /// or decompress).
    pub fn is_light(&self) -> bool {
        self.open.is_none() && !self.decompress && self.payload.len() <= LIGHT_PIECE
    }

    /// Do the work: decrypt, hash onto the previous piece's claim, then decompress
    /// with the cap set to the piece's expected length.
    pub fn run(self) -> JobResult {
        JobResult {
            file: self.file,
            seq: self.seq,
            chain: self.chain,
            outcome: self.work(),
        }
    }

    fn work(&self) -> Result<(Bytes, Option<[u8; 32]>), String> {
        let opened = match &self.open {
            Some(JobOpen::V1(cipher, nonce)) => Some(cipher.open(nonce, &self.payload)),
            Some(JobOpen::Fast(cipher, index)) => Some(cipher.open(*index, &self.payload)),
            None => None,
        };
        let plain = match opened {
            Some(Some(p)) => Bytes::from(p),
            Some(None) => {
                return Err("data does not decrypt (tampered, reordered or wrong key)".into())
            }
            None => self.payload.clone(),
        };
        let chain = self
            .hash
            .map(|kind| Chain::at(kind, self.prev).next(&plain));
        if !self.decompress {
            return Ok((plain, chain));
        }
        match crate::compress::decompress_capped(&plain, self.expect_len) {
            Ok(raw) => Ok((Bytes::from(raw), chain)),
            Err(e) => Err(e.to_string()),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum EntryState {
    Pending,
    Receiving,
    /// Verified (or already whole here) and closed or closing: to be committed at the end.
    Verified,
    /// Already in place under its final name (skipped as complete) or committed.
    Done,
    /// Not delivered: the sender gave it up, never sent it, or it could not be put in
    /// place.
    Failed,
}

#[derive(Debug)]
struct Entry {
    path: SafePath,
    size: u64,
    found: Option<LocalCopy>,
    /// The size and chain sent in the resume answer.
    reported: Option<(u64, [u8; 32])>,
    state: EntryState,
    /// Put in place by this session's commit.
    committed: bool,
    /// A stream or a text (extensions `stream`, `text`), accepted.
    kind: Option<EntryKind>,
    /// Why its name cannot be stored here ([`ReceiverConfig::windows_names`]): nothing
    /// is created for it, and its data, if sent, is dropped.
    refused: Option<String>,
}

/// A manifest arriving in parts.
#[derive(Debug)]
struct ManifestParts {
    resume: bool,
    entries: Vec<ManifestEntry>,
    /// Entries still to come.
    due: u64,
    collect: Collect,
    path_bytes: u64,
}

#[derive(Debug)]
struct Hashing {
    file: usize,
    reads: ReadPipe,
    chain: Chain,
}

#[derive(Debug)]
struct Resuming {
    next_stat: usize,
    stats_out: usize,
    to_hash: VecDeque<usize>,
    hashing: Option<Hashing>,
}

#[derive(Debug)]
enum Phase {
    AwaitManifest,
    /// The manifest's first message arrived; the rest comes in parts
    /// ([`EXT_PARTS`](crate::wire::EXT_PARTS)).
    Parts(Box<ManifestParts>),
    /// The manifest is checked; the user decides (see [`ReceiverConfig::consent`]).
    /// `resume` is the manifest's request for a resume answer.
    Consent {
        resume: bool,
    },
    Resuming(Resuming),
    Streaming,
    /// `eof` arrived; waiting for the last files to be closed, then synced, then
    /// committed.
    Closing(Commit),
    /// Every file is in place and the report went to a sender that agreed on reconnect:
    /// waiting for its [`Control::ReportReceived`] (see
    /// [`Receiver::report_unconfirmed`]).
    Reported,
    Done,
    Failed,
}

/// The kind of a request the runtime has taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Asked {
    Stat,
    ReadBack,
    Open,
    Write,
    Close,
    Commit,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Commit {
    Draining,
    Syncing,
    Renaming,
    /// Extension `metadata`: every file is committed; waiting for the sender's last
    /// metadata part.
    AwaitMeta,
    /// Extension `metadata`: the runtime applies it.
    Applying,
}

#[derive(Debug)]
struct Incoming {
    file: usize,
    append_from: u64,
    pieces: u64,
    compression: Compression,
    next_seq: u64,
    jobs_out: usize,
    results: BTreeMap<u64, JobResult>,
    next_verify: u64,
    /// The chain value the last data message claimed: the next piece's job hashes onto
    /// it (`None` before the first).
    claimed: Option<[u8; 32]>,
    /// The file moves on the fast data path.
    fast: bool,
    done_bytes: u64,
    eof_seen: bool,
    /// A stream of unknown length: every piece but the last holds [`CHUNK_SIZE`] bytes,
    /// and `stream_eof` gives the size.
    stream: bool,
    /// A text, collected here instead of written (at most [`wire::TEXT_MAX`] bytes).
    text: Option<Vec<u8>>,
    /// A file whose name is refused: its pieces are checked and dropped, nothing is
    /// opened or written.
    discard: bool,
}

/// Most messages held back while the receiver waits for its own work to finish; a
/// runtime that honours [`Receiver::wants_input`] never gets near it.
const BACKLOG_LIMIT: usize = 64;

/// The receiver state machine.
///
/// Inputs: [`handle_message`](Self::handle_message), [`handle_io`](Self::handle_io),
/// [`handle_job`](Self::handle_job), [`handle_timeout`](Self::handle_timeout),
/// [`handle_close`](Self::handle_close), [`cancel`](Self::cancel). After every input,
/// drain [`poll_transmit`](Self::poll_transmit), [`poll_io`](Self::poll_io),
/// [`poll_job`](Self::poll_job) and [`poll_event`](Self::poll_event) until `None`, then
/// arm a timer at [`poll_timeout`](Self::poll_timeout). Read the next message from the
/// connection only while [`wants_input`](Self::wants_input) is true.
pub struct Receiver {
    config: ReceiverConfig,
    cipher: Option<Cipher>,
    nonces: Option<NonceChain>,
    phase: Phase,
    deadline: Instant,
    /// The latest `now` given, for deadlines set by work that finishes inside the core.
    last_now: Instant,
    entries: Vec<Entry>,
    by_path: HashMap<String, usize>,
    current: Option<Incoming>,
    io_out: usize,
    /// Requests the runtime has taken and not answered, per file in order (answers for
    /// one file come in request order), so a stray or mismatched answer is refused.
    ledger: HashMap<usize, VecDeque<Asked>>,
    sync_asked: bool,
    writes_out: usize,
    backlog: VecDeque<WireMessage>,
    /// A close reported while messages were still held back: it takes effect after them.
    pending_close: Option<(Option<u16>, String)>,
    transmit: VecDeque<WireMessage>,
    io: VecDeque<IoRequest>,
    jobs: VecDeque<Job>,
    events: VecDeque<Event>,
    error: Option<Error>,
    /// The sender offered delivery confirmation (and was told it is accepted).
    confirm: bool,
    /// The report was queued.
    reported: bool,
    /// This side's answer to the offer of a direct connection (true: accepted), until
    /// the runtime takes it.
    direct_answer: Option<bool>,
    /// This side accepted the direct path: the sender's last messages may travel on it,
    /// so the receiver does not wait for [`Control::ReportReceived`].
    direct_agreed: bool,
    /// The encrypted session's nonce seed S, which also seals the report.
    seed: Option<[u8; 32]>,
    /// Files not delivered, and why.
    failed: Vec<FailedFile>,
    /// The sender offered [`EXT_CONSENT`](crate::wire::EXT_CONSENT) and was told it
    /// is accepted: it waits for the answer.
    consent_told: bool,
    /// The offer for the user, until the runtime takes it.
    offer: Option<Offer>,
    /// Of those, the ones whose rename into place failed (shown escaped, with why).
    uncommitted: Vec<String>,
    /// Automatic reconnect was agreed: what the next attempt needs.
    reconnect_state: Option<ResumeState>,
    /// On a reconnect: the sender proved itself.
    reconnect_verified: bool,
    /// The session ended after the report without the sender saying it arrived.
    report_unconfirmed: bool,
    /// Extension `metadata` was agreed: what arrived of it.
    meta: Option<metadata::Incoming>,
    /// [`IoRequest::ApplyMetadata`] was taken and not answered.
    meta_asked: bool,
    /// The connection ended after `eof`, before the last metadata part.
    closed_after_eof: Option<(Option<u16>, String)>,
    /// The sender offered [`EXT_PARTS`](crate::wire::EXT_PARTS) and was told it is
    /// accepted: long lists go in parts.
    parts_agreed: bool,
    /// Kinds of entries (streams, texts) whose extensions the sender offered and this
    /// side accepted.
    kinds_accepted: Vec<EntryKind>,
    /// This side accepted the fast data path.
    fast_on: bool,
    /// The fast data path's cipher, when encrypting (once the nonce seed is known).
    fast_cipher: Option<FastCipher>,
}

impl std::fmt::Debug for Receiver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Receiver")
            .field("phase", &self.phase)
            .field("entries", &self.entries.len())
            .finish_non_exhaustive()
    }
}

impl Receiver {
    /// Once, after the manifest arrived (with [`ReceiverConfig::direct`]): whether the
    /// sender offered a direct connection, which this side then accepted.
    pub fn take_direct_start(&mut self) -> Option<DirectAnswer> {
        if matches!(self.phase, Phase::Consent { .. }) {
            // Nothing moves before the user accepted.
            return None;
        }
        let agreed = self.direct_answer.take()?;
        if self.error.is_some() {
            return None;
        }
        Some(match agreed {
            true => DirectAnswer::Agreed(match (&self.cipher, &self.seed) {
                (Some(c), Some(seed)) => Some((c.clone(), *seed)),
                _ => None,
            }),
            false => DirectAnswer::Declined,
        })
    }

    /// Where the session stands with automatic reconnect (see [`crate::reconnect`]).
    pub fn reconnect_status(&self) -> ReconnectStatus {
        match (&self.config.reconnect, &self.phase) {
            (None, _) | (_, Phase::AwaitManifest | Phase::Parts(_)) => ReconnectStatus::Off,
            _ if self.reconnect_verified => ReconnectStatus::Verified,
            _ if self.reconnect_state.is_some() => ReconnectStatus::Agreed,
            _ => ReconnectStatus::Unsupported,
        }
    }

    /// True when the session ended well on this side (every file in place, the report
    /// sent) but the connection ended, or the sender went silent, before the sender said
    /// the report arrived. With automatic reconnect agreed, reconnect with
    /// [`next_reconnect`](Self::next_reconnect): the sender, which may have lost the
    /// report, then learns from the resume answer that every file is here, and gets the
    /// report again at once.
    pub fn report_unconfirmed(&self) -> bool {
        self.report_unconfirmed
    }

    /// The configuration for the next attempt after a lost connection, once automatic
    /// reconnect was agreed (and, on a reconnect, the sender proved itself).
    pub fn next_reconnect(&self) -> Option<ReceiverReconnect> {
        self.reconnect_state.clone().map(ReceiverReconnect::Resume)
    }

    /// A receiver, which queues `hello` at once.
    pub fn new(now: Instant, config: ReceiverConfig, secrets: &Secrets) -> Receiver {
        let mut r = Receiver {
            deadline: now + config.manifest_timeout,
            last_now: now,
            config: ReceiverConfig {
                window: config.window.max(1),
                ..config
            },
            cipher: secrets.cipher.clone(),
            nonces: None,
            phase: Phase::AwaitManifest,
            entries: Vec::new(),
            by_path: HashMap::new(),
            current: None,
            io_out: 0,
            ledger: HashMap::new(),
            sync_asked: false,
            writes_out: 0,
            backlog: VecDeque::new(),
            pending_close: None,
            transmit: VecDeque::new(),
            io: VecDeque::new(),
            jobs: VecDeque::new(),
            events: VecDeque::new(),
            error: None,
            confirm: false,
            reported: false,
            direct_answer: None,
            direct_agreed: false,
            seed: None,
            failed: Vec::new(),
            uncommitted: Vec::new(),
            consent_told: false,
            offer: None,
            reconnect_state: None,
            reconnect_verified: false,
            report_unconfirmed: false,
            meta: None,
            meta_asked: false,
            closed_after_eof: None,
            parts_agreed: false,
            kinds_accepted: Vec::new(),
            fast_on: false,
            fast_cipher: None,
        };
        r.transmit.push_back(
            Control::Hello {
                code_hash_hex: wire::hex(&secrets.code_hash),
                role: Role::Receiver,
            }
            .into(),
        );
        r
    }

    // ---- outputs ----

    /// Once, with [`ReceiverConfig::consent`], after a valid manifest: what the sender
    /// offers, for the user to accept or decline; then call
    /// [`consent`](Self::consent). Until then the receiver wants no input.
    pub fn take_offer(&mut self) -> Option<Offer> {
        self.offer.take()
    }

    /// The next message to send (`hello`, then the resume answer when asked; with
    /// delivery confirmation also the acceptance and, at the end or on failure, the
    /// report). Drain it also after the session failed.
    pub fn poll_transmit(&mut self) -> Option<WireMessage> {
        self.transmit.pop_front()
    }

    /// The next file access to carry out.
    pub fn poll_io(&mut self) -> Option<IoRequest> {
        let req = self.io.pop_front()?;
        let (file, asked) = match &req {
            IoRequest::Sync => {
                self.sync_asked = true;
                return Some(req);
            }
            IoRequest::ApplyMetadata { .. } => {
                self.meta_asked = true;
                return Some(req);
            }
            IoRequest::Stat { file, .. } => (*file, Asked::Stat),
            IoRequest::ReadBack { file, .. } => (*file, Asked::ReadBack),
            IoRequest::Open { file, .. } => (*file, Asked::Open),
            IoRequest::Write { file, .. } => (*file, Asked::Write),
            IoRequest::Close { file } => (*file, Asked::Close),
            IoRequest::Commit { file, .. } => (*file, Asked::Commit),
        };
        self.ledger.entry(file).or_default().push_back(asked);
        Some(req)
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
        match self.phase {
            Phase::AwaitManifest | Phase::Parts(_) | Phase::Streaming | Phase::Reported => {
                Some(self.deadline)
            }
            Phase::Closing(Commit::AwaitMeta) if self.meta_waiting() => Some(self.deadline),
            _ => None,
        }
    }

    /// Whether the receiver wants the next message from the connection now. False while
    /// it waits for its own work (I/O, jobs) to catch up: stop reading the socket, so the
    /// sender is slowed by the transport's backpressure.
    pub fn wants_input(&self) -> bool {
        self.backlog.is_empty()
            && match self.phase {
                Phase::AwaitManifest | Phase::Parts(_) | Phase::Reported => true,
                Phase::Streaming => self.in_flight() < self.config.window,
                // The sender's metadata comes after `eof`.
                Phase::Closing(_) => self.meta_waiting(),
                _ => false,
            }
    }

    /// True once the session is complete or failed.
    pub fn is_finished(&self) -> bool {
        matches!(self.phase, Phase::Done | Phase::Failed)
    }

    /// The sticky error, if the session failed.
    pub fn error(&self) -> Option<&Error> {
        self.error.as_ref()
    }

    // ---- inputs ----

    /// The user's answer to the [`Offer`] (see [`ReceiverConfig::consent`]): go on, or
    /// decline. A sender that offered [`EXT_CONSENT`](crate::wire::EXT_CONSENT) is told
    /// either way; nothing has been written.
    ///
    /// # Errors
    /// [`Error::Declined`] when `accept` is false; [`Error::Misuse`] when no offer is
    /// pending. Any earlier fatal error is returned again.
    pub fn consent(&mut self, now: Instant, accept: bool) -> Result<(), Error> {
        self.check()?;
        self.last_now = now;
        let Phase::Consent { resume } = self.phase else {
            return self.settle(Err(Error::misuse("consent given while none was asked")));
        };
        self.offer = None;
        if !accept {
            let e = Error::Declined("the transfer was declined on the receiving side".into());
            self.fail(e.clone());
            return Err(e);
        }
        if self.consent_told {
            self.transmit
                .push_back(Control::Consent { accept: true }.into());
        }
        self.deadline = now + self.config.idle_timeout;
        self.start_after_manifest(resume);
        let r = self.drain_backlog();
        self.settle(r)
    }

    /// A message from the sender (through the relay).
    ///
    /// # Errors
    /// [`Error::Peer`] for a message the protocol does not allow here or an unsafe path;
    /// [`Error::Integrity`] for a wrong `seq`, chain, tag, size or compressed frame;
    /// [`Error::Misuse`] when the runtime ignores [`wants_input`](Self::wants_input)
    /// far too long. Any earlier fatal error is returned again.
    pub fn handle_message(&mut self, now: Instant, msg: WireMessage) -> Result<(), Error> {
        self.check()?;
        self.last_now = now;
        if matches!(self.phase, Phase::Done) {
            return Ok(());
        }
        if msg.len() > MAX_MESSAGE_LEN {
            let e = Error::peer(format!(
                "message of {} bytes exceeds the 2 MiB limit",
                msg.len()
            ));
            return self.settle(Err(e));
        }
        if matches!(
            self.phase,
            Phase::AwaitManifest | Phase::Parts(_) | Phase::Streaming
        ) || (matches!(self.phase, Phase::Closing(_)) && self.meta_waiting())
        {
            self.deadline = now + self.config.idle_timeout;
        }
        if self.backlog.len() >= BACKLOG_LIMIT {
            return self.settle(Err(Error::misuse(
                "messages fed while the receiver did not want input",
            )));
        }
        self.backlog.push_back(msg);
        let r = self.drain_backlog();
        self.settle(r)
    }

    /// A completed file access.
    ///
    /// # Errors
    /// [`Error::Io`] when the access failed; [`Error::Misuse`] for a completion nobody
    /// asked for.
    pub fn handle_io(&mut self, now: Instant, done: IoCompletion) -> Result<(), Error> {
        self.check()?;
        self.last_now = now;
        let r = self.on_io(done).and_then(|()| self.drain_backlog());
        self.settle(r)
    }

    /// A finished [`Job`].
    ///
    /// # Errors
    /// [`Error::Integrity`] when the piece fails decryption, decompression, its size or
    /// its chain; [`Error::Misuse`] for a result nobody asked for.
    pub fn handle_job(&mut self, now: Instant, done: JobResult) -> Result<(), Error> {
        self.check()?;
        self.last_now = now;
        let r = self.on_job(done).and_then(|()| self.drain_backlog());
        self.settle(r)
    }

    /// Time has passed.
    ///
    /// # Errors
    /// [`Error::Timeout`] when no manifest arrived in time or the sender went silent.
    pub fn handle_timeout(&mut self, now: Instant) -> Result<(), Error> {
        self.check()?;
        if now < self.deadline {
            return Ok(());
        }
        let r = match self.phase {
            Phase::AwaitManifest => Err(Error::Timeout(format!(
                "no sender joined within {} s: check that both sides use the same code, the same --encrypt setting and the same relay (--ttl waits longer)",
                self.config.manifest_timeout.as_secs()
            ))),
            Phase::Parts(_) | Phase::Streaming => Err(Error::Timeout(format!(
                "the sender sent nothing for {} s",
                self.config.idle_timeout.as_secs()
            ))),
            Phase::Reported => {
                self.end_unconfirmed();
                Ok(())
            }
            Phase::Closing(Commit::AwaitMeta) if self.meta_waiting() => Err(Error::Timeout(format!(
                "the files are in place, but the sender's permission bits and times did not arrive within {} s",
                self.config.idle_timeout.as_secs()
            ))),
            _ => Ok(()),
        };
        self.settle(r)
    }

    /// The connection ended.
    ///
    /// # Errors
    /// [`Error::Peer`] unless `eof` had arrived.
    pub fn handle_close(
        &mut self,
        _now: Instant,
        code: Option<u16>,
        reason: &str,
    ) -> Result<(), Error> {
        self.check()?;
        if !self.backlog.is_empty() {
            // Messages that arrived before the close are still waiting for room.
            self.pending_close = Some((code, reason.to_owned()));
            return Ok(());
        }
        let r = self.on_close(code, reason);
        self.settle(r)
    }

    fn on_close(&mut self, code: Option<u16>, reason: &str) -> Result<(), Error> {
        if matches!(self.phase, Phase::Reported) {
            self.end_unconfirmed();
            return Ok(());
        }
        if let Phase::Closing(step) = self.phase {
            if !self.meta_waiting() {
                return Ok(());
            }
            // The files are committed first; the session then fails for the close.
            self.closed_after_eof = Some((code, reason.to_owned()));
            if step == Commit::AwaitMeta {
                self.advance_commit();
            }
            return Ok(());
        }
        if matches!(self.phase, Phase::Done) {
            return Ok(());
        }
        let when = match self.current.as_ref() {
            // Nothing was written yet, so there is nothing to resume.
            None if matches!(self.phase, Phase::AwaitManifest) => {
                "while waiting for the sender".to_owned()
            }
            None if matches!(self.phase, Phase::Parts(_)) => {
                "while the file list arrived (nothing was written)".to_owned()
            }
            None if matches!(self.phase, Phase::Consent { .. }) => {
                "before the transfer was accepted (nothing was written)".to_owned()
            }
            Some(c) => format!(
                "in the middle of {} (the sender stopped or the relay dropped the pair; run again with --resume to continue)",
                self.entries[c.file].path
            ),
            None => "before the transfer was complete (run again with --resume to continue)".to_owned(),
        };
        Err(crate::error::closed_error(code, reason, &when))
    }

    /// Fail the session for a reason of the runtime's own (a direct path that was
    /// required and never came up): like any failure, the peer is told why when it
    /// confirms delivery. Nothing happens once the session ended.
    pub fn abort(&mut self, e: Error) {
        if matches!(self.phase, Phase::Reported) {
            self.end_unconfirmed();
        }
        if self.error.is_none() && !matches!(self.phase, Phase::Done) {
            self.fail(e);
        }
    }

    /// Stop the session. Partial files stay for a later `--resume`.
    pub fn cancel(&mut self, reason: &str) {
        if matches!(self.phase, Phase::Reported) {
            // Every file is in place: stopping now loses nothing.
            self.phase = Phase::Done;
        }
        if self.error.is_none() && !matches!(self.phase, Phase::Done) {
            self.fail(Error::Cancelled(reason.to_owned()));
        }
    }

    // ---- internals ----

    /// The session ended in [`Phase::Reported`] without the sender's word.
    fn end_unconfirmed(&mut self) {
        self.phase = Phase::Done;
        self.report_unconfirmed = true;
    }

    /// Extension `metadata` was agreed and its last part has not arrived.
    fn meta_waiting(&self) -> bool {
        self.meta.as_ref().is_some_and(|m| !m.is_complete())
    }

    fn in_flight(&self) -> usize {
        let held = self
            .current
            .as_ref()
            .map_or(0, |c| c.jobs_out + c.results.len());
        held + self.writes_out
    }

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
        self.phase = Phase::Failed;
        self.jobs.clear();
        self.io.clear();
        if !self.reported {
            // A report already queued (files that could not be put in place) still goes,
            // and so does the acceptance a report must follow (a manifest refused after
            // it was answered).
            self.transmit.retain(
                |m| matches!(m, WireMessage::Text(t) if t.starts_with(r#"{"type":"extensions""#)),
            );
        }
        if matches!(e, Error::Declined(_)) && self.consent_told {
            // The answer the sender waits for says it all: no report.
            self.transmit
                .push_back(Control::Consent { accept: false }.into());
            self.reported = true;
        }
        self.backlog.clear();
        self.current = None;
        // Tell a sender that asked for confirmation why nothing (more) is put in place,
        // unless the connection is gone or the failure is the sender's own report.
        if self.confirm
            && !self.reported
            && !matches!(e, Error::ConnectionLost(_) | Error::NotDelivered(_))
        {
            self.queue_report(Some(e.to_string()));
        }
        self.events.push_back(Event::Failed(e.clone()));
        self.error = Some(e);
    }

    /// Queue the report for the sender: `error` for a failed session, else what is in
    /// place and what is not.
    fn queue_report(&mut self, error: Option<String>) {
        let failed = self.send_parts(self.failed.clone());
        let report = Report {
            ok: error.is_none(),
            delivered: self
                .entries
                .iter()
                .filter(|e| e.state == EntryState::Done)
                .count() as u64,
            failed,
            error,
        };
        let sealing = match (&self.cipher, &self.seed) {
            (Some(c), Some(seed)) => Some((c, seed)),
            _ => None,
        };
        let msg = report_message(report, Role::Receiver, sealing);
        self.transmit.push_back(msg.into());
        self.reported = true;
    }

    /// With [`EXT_PARTS`](crate::wire::EXT_PARTS) agreed, queue all but the last
    /// [`PART_BUDGET`](parts::PART_BUDGET) bytes of a list as parts, and return the
    /// rest for the list's head message, which follows them.
    fn send_parts<T: parts::PartItem>(&mut self, items: Vec<T>) -> Vec<T> {
        let len: usize = items.iter().map(parts::item_len).sum();
        if !self.parts_agreed || len <= parts::PART_BUDGET {
            return items;
        }
        let sealing = match (&self.cipher, &self.seed) {
            (Some(c), Some(seed)) => Some((c, seed)),
            _ => None,
        };
        let mut groups = parts::split(items, parts::PART_BUDGET);
        let last = groups.pop().unwrap_or_default();
        for (i, group) in groups.into_iter().enumerate() {
            let msg = parts::part_message(i as u64 + 1, group, sealing);
            self.transmit.push_back(msg.into());
        }
        last
    }

    /// Record that entry `file` is not delivered.
    fn not_delivered(&mut self, file: usize, reason: String) {
        let e = &mut self.entries[file];
        e.state = EntryState::Failed;
        let path = e.path.as_str().to_owned();
        self.events.push_back(Event::FileNotDelivered {
            path: path.clone(),
            reason: reason.clone(),
        });
        self.failed.push(FailedFile { path, reason });
    }

    /// Whether a message may be processed now: control messages wait until the current
    /// file's pieces are all verified, data waits for room in the window.
    fn ready_for(&self, msg: &WireMessage) -> bool {
        match self.phase {
            Phase::AwaitManifest | Phase::Parts(_) => true,
            Phase::Streaming => match msg {
                WireMessage::Binary(_) => self.in_flight() < self.config.window,
                WireMessage::Text(_) => self
                    .current
                    .as_ref()
                    .is_none_or(|c| c.jobs_out == 0 && c.results.is_empty()),
            },
            Phase::Reported | Phase::Done | Phase::Failed => true,
            Phase::Closing(_) => self.meta_waiting(),
            Phase::Consent { .. } | Phase::Resuming(_) => false,
        }
    }

    fn drain_backlog(&mut self) -> Result<(), Error> {
        while let Some(msg) = self.backlog.front() {
            if matches!(self.phase, Phase::Closing(_)) && !self.meta_waiting() {
                // Anything after `eof` is ignored, as the reference does (but for the
                // metadata the sender sends after it, extension `metadata`).
                self.backlog.clear();
                break;
            }
            if !self.ready_for(msg) {
                break;
            }
            // The front exists: checked by the loop condition.
            let msg = self.backlog.pop_front().expect("front exists");
            self.on_message(msg)?;
        }
        if self.backlog.is_empty() {
            if let Some((code, reason)) = self.pending_close.take() {
                return self.on_close(code, &reason);
            }
        }
        Ok(())
    }

    fn on_message(&mut self, msg: WireMessage) -> Result<(), Error> {
        if matches!(self.phase, Phase::Closing(_)) {
            return self.after_eof(msg);
        }
        match msg {
            WireMessage::Binary(b) => self.on_data(b),
            WireMessage::Text(t) => {
                let c = Control::parse(&t)?;
                self.on_control(c)
            }
        }
    }

    /// After `eof`, while the sender's metadata is awaited: its parts and a failure
    /// report are taken, anything else is ignored.
    fn after_eof(&mut self, msg: WireMessage) -> Result<(), Error> {
        let WireMessage::Text(text) = msg else {
            return Ok(());
        };
        match Control::parse(&text)? {
            c @ (Control::Metadata(_) | Control::EncMetadata { .. }) => {
                let sealing = match (&self.cipher, &self.seed) {
                    (Some(c), Some(seed)) => Some((c, seed)),
                    _ => None,
                };
                if let Some(m) = self.meta.as_mut() {
                    m.take(c, sealing, &self.by_path)?;
                }
                self.advance_commit();
                Ok(())
            }
            c @ (Control::Report(_) | Control::EncReport { .. }) => self.on_control(c),
            _ => Ok(()),
        }
    }

    fn open_hidden(&mut self, hex: &str, what: &str) -> Result<String, Error> {
        let sealed = wire::unhex(hex).ok_or_else(|| Error::peer(format!("{what} is not hex")))?;
        let (Some(cipher), Some(nonces)) = (&self.cipher, &mut self.nonces) else {
            return Err(Error::peer(format!("{what} before the encrypted manifest")));
        };
        let plain = cipher.open(&nonces.next(), &sealed).ok_or_else(|| {
            Error::integrity(format!(
                "{what} does not decrypt (tampered, replayed or wrong code)"
            ))
        })?;
        String::from_utf8(plain).map_err(|_| Error::peer(format!("{what} is not UTF-8")))
    }

    fn on_control(&mut self, c: Control) -> Result<(), Error> {
        let encrypted = self.cipher.is_some();
        match (&self.phase, c) {
            (
                Phase::AwaitManifest,
                Control::Manifest {
                    resume,
                    entries,
                    extensions,
                    reconnect,
                    parts,
                },
            ) if !encrypted => self.on_manifest(resume, entries, &extensions, reconnect, parts),
            (
                Phase::AwaitManifest,
                Control::EncManifest {
                    nonce,
                    hidden_manifest,
                },
            ) if encrypted => {
                let seed = wire::unhex(&nonce)
                    .ok_or_else(|| Error::peer("enc_manifest nonce is not hex"))?;
                self.nonces = Some(NonceChain::new(&seed));
                self.seed = <[u8; 32]>::try_from(seed.as_slice()).ok();
                let plain = self.open_hidden(&hidden_manifest, "encrypted manifest")?;
                match Control::parse(&plain)? {
                    Control::Manifest {
                        resume,
                        entries,
                        extensions,
                        reconnect,
                        parts,
                    } => self.on_manifest(resume, entries, &extensions, reconnect, parts),
                    other => Err(Error::peer(format!(
                        "encrypted manifest holds a {} message",
                        other.type_name()
                    ))),
                }
            }
            (Phase::Parts(_), c @ (Control::ManifestMore(_) | Control::EncPart { .. })) => {
                self.on_manifest_part(c)
            }
            (Phase::Parts(_), c) => Err(Error::peer(format!(
                "a {} message before the rest of the file list",
                c.type_name()
            ))),
            (Phase::Streaming, Control::File(h)) if !encrypted => self.on_file(h),
            (Phase::Streaming, Control::EncFile { hidden_file }) if encrypted => {
                let plain = self.open_hidden(&hidden_file, "encrypted file header")?;
                match Control::parse(&plain)? {
                    Control::File(h) => self.on_file(h),
                    other => Err(Error::peer(format!(
                        "encrypted file header holds a {} message",
                        other.type_name()
                    ))),
                }
            }
            (Phase::Reported, Control::ReportReceived) => {
                self.phase = Phase::Done;
                Ok(())
            }
            // Every file is in place and reported: anything else is ignored, as after
            // `eof`.
            (Phase::Reported, _) => Ok(()),
            (Phase::Streaming, Control::FileEof) => self.on_file_eof(),
            (Phase::Streaming, Control::StreamEof { size, hidden_size }) => {
                self.on_stream_eof(size, hidden_size)
            }
            (Phase::Streaming, Control::Eof) => self.on_eof(),
            (
                Phase::Streaming,
                Control::FileAbort {
                    skipped_nonces,
                    why,
                },
            ) if self.confirm => self.on_file_abort(skipped_nonces, &why),
            (_, c @ (Control::Report(_) | Control::EncReport { .. })) if self.confirm => {
                let sealing = match (&self.cipher, &self.seed) {
                    (Some(c), Some(seed)) => Some((c, seed)),
                    _ => None,
                };
                let report = open_report(c, Role::Sender, sealing)?;
                let why = report.error.as_deref().unwrap_or("no reason given");
                Err(Error::NotDelivered(format!(
                    "the sender stopped: {}",
                    crate::path::escape(why)
                )))
            }
            (_, c @ (Control::Manifest { .. } | Control::File(_))) if encrypted => {
                Err(Error::peer(format!(
                    "plain {} message to an encrypting receiver (the sender did not use --encrypt)",
                    c.type_name()
                )))
            }
            (_, c @ (Control::EncManifest { .. } | Control::EncFile { .. })) if !encrypted => {
                Err(Error::peer(format!(
                    "{} message to a receiver without --encrypt (the sender used --encrypt)",
                    c.type_name()
                )))
            }
            (_, c) => Err(Error::peer(format!("unexpected {} message", c.type_name()))),
        }
    }

    fn on_manifest(
        &mut self,
        resume: bool,
        entries: Vec<ManifestEntry>,
        extensions: &[String],
        reconnect: Option<wire::ReconnectOffer>,
        parts: Option<PartsOffer>,
    ) -> Result<(), Error> {
        let offered = |name: &str| extensions.iter().any(|e| e == name);
        // Checked before this side sends or looks at anything: on a reconnect, only the
        // sender that began the transfer learns what this side holds.
        let mut reconnect_proof = None;
        if let Some(r) = &self.config.reconnect {
            let offer = reconnect
                .as_ref()
                .filter(|_| offered(wire::EXT_CONFIRM) && offered(wire::EXT_RECONNECT));
            if let Some((state, proof)) = r.check_offer(offer).map_err(Error::peer)? {
                self.reconnect_state = Some(state);
                self.reconnect_verified = proof.is_some();
                reconnect_proof = proof;
            }
        }
        // The direct path needs the report, which ends the session on both paths.
        let direct = offered(wire::EXT_CONFIRM) && offered(wire::EXT_DIRECT);
        if self.config.direct {
            self.direct_answer = Some(direct);
            self.direct_agreed = direct;
        }
        if extensions.iter().any(|e| e == wire::EXT_CONFIRM) {
            // Answered before anything else this side sends (the resume answer).
            self.confirm = true;
            let mut accept = vec![wire::EXT_CONFIRM.to_owned()];
            if self.config.direct && direct {
                accept.push(wire::EXT_DIRECT.to_owned());
            }
            if self.config.consent && extensions.iter().any(|e| e == wire::EXT_CONSENT) {
                // Accepted only when someone is asked: otherwise the sender has nothing
                // to wait for (and says nothing about waiting).
                self.consent_told = true;
                accept.push(wire::EXT_CONSENT.to_owned());
            }
            if self.reconnect_state.is_some() {
                accept.push(wire::EXT_RECONNECT.to_owned());
            }
            if self.config.metadata && !self.config.single_file && offered(wire::EXT_METADATA) {
                accept.push(wire::EXT_METADATA.to_owned());
                // Sized for the whole manifest once it is in (it may come in parts).
                self.meta = Some(metadata::Incoming::new(entries.len()));
            }
            for kind in [EntryKind::Stream, EntryKind::Text] {
                if offered(kind.extension()) {
                    accept.push(kind.extension().to_owned());
                    self.kinds_accepted.push(kind);
                }
            }
            if offered(wire::EXT_PARTS) {
                self.parts_agreed = true;
                accept.push(wire::EXT_PARTS.to_owned());
            }
            if self.config.fast && offered(wire::EXT_FAST) {
                self.fast_on = true;
                self.fast_cipher = match (&self.cipher, &self.seed) {
                    (Some(c), Some(seed)) => Some(c.fast(seed)),
                    _ => None,
                };
                accept.push(wire::EXT_FAST.to_owned());
            }
            self.transmit
                .push_back(Control::Extensions { accept }.into());
            if let Some(proof) = reconnect_proof {
                self.transmit.push_back(
                    Control::ReconnectProof {
                        proof: wire::hex(&proof),
                    }
                    .into(),
                );
            }
        }
        let due = match parts {
            None => 0,
            Some(PartsOffer { total }) => {
                if !self.parts_agreed {
                    return Err(Error::peer(
                        "the manifest continues in parts, but the sender did not offer them",
                    ));
                }
                if total > parts::MAX_ENTRIES {
                    return Err(Error::peer(format!(
                        "the manifest announces {total} files, more than the {} this receiver takes",
                        parts::MAX_ENTRIES
                    )));
                }
                total.checked_sub(entries.len() as u64).ok_or_else(|| {
                    Error::peer(format!(
                        "the manifest announces {total} files but its first message alone lists {}",
                        entries.len()
                    ))
                })?
            }
        };
        if due > 0 {
            let path_bytes = entries.iter().map(|e| e.path.len() as u64).sum();
            self.phase = Phase::Parts(Box::new(ManifestParts {
                resume,
                entries,
                due,
                collect: Collect::new(due),
                path_bytes,
            }));
            return Ok(());
        }
        self.manifest_complete(resume, entries)
    }

    /// A part of the manifest (extension [`EXT_PARTS`](crate::wire::EXT_PARTS)).
    fn on_manifest_part(&mut self, c: Control) -> Result<(), Error> {
        let Phase::Parts(p) = &mut self.phase else {
            return Err(Error::misuse("a manifest part outside the manifest"));
        };
        let sealing = match (&self.cipher, &self.seed) {
            (Some(c), Some(seed)) => Some((c, seed)),
            _ => None,
        };
        let more = p.collect.take::<ManifestEntry>(c, sealing)?;
        p.path_bytes += more.iter().map(|e| e.path.len() as u64).sum::<u64>();
        if p.path_bytes > parts::MAX_PATH_BYTES {
            return Err(Error::peer(format!(
                "the manifest's paths hold more than the {} MiB this receiver takes",
                parts::MAX_PATH_BYTES >> 20
            )));
        }
        p.entries.extend(more);
        if p.collect.got() < p.due {
            return Ok(());
        }
        let Phase::Parts(p) = std::mem::replace(&mut self.phase, Phase::AwaitManifest) else {
            unreachable!("matched above")
        };
        let ManifestParts {
            resume, entries, ..
        } = *p;
        self.manifest_complete(resume, entries)
    }

    /// The whole manifest is here: check it, then ask the user or go on.
    fn manifest_complete(
        &mut self,
        resume: bool,
        entries: Vec<ManifestEntry>,
    ) -> Result<(), Error> {
        if let Some(state) = &mut self.reconnect_state {
            state.hold_to(&entries).map_err(Error::peer)?;
        }
        if let Some(meta) = self.meta.as_mut() {
            *meta = metadata::Incoming::new(entries.len());
        }
        if self.config.single_file && entries.len() > 1 {
            return Err(Error::Unsupported(format!(
                "the sender offers {} files, and standard output takes one; nothing was written (receive into a directory instead)",
                entries.len()
            )));
        }
        let mut files: HashSet<&str> = HashSet::new();
        for e in &entries {
            if let Some(kind) = e.kind {
                // Accepted with the manifest's head, only with `confirm`.
                if !self.kinds_accepted.contains(&kind) || !self.confirm {
                    return Err(Error::peer_in(
                        &e.path,
                        format!(
                            "an entry of kind {} without the offer of its extension",
                            kind.extension()
                        ),
                    ));
                }
                let size_ok = match kind {
                    EntryKind::Stream => e.size == 0,
                    EntryKind::Text => e.size <= wire::TEXT_MAX,
                };
                if !size_ok {
                    return Err(Error::peer_in(
                        &e.path,
                        format!("a {} entry of {} bytes", kind.extension(), e.size),
                    ));
                }
            }
            if !files.insert(e.path.as_str()) {
                return Err(Error::peer_in(
                    &e.path,
                    "the manifest lists this path twice",
                ));
            }
        }
        let mut checked = Vec::with_capacity(entries.len());
        for (i, e) in entries.iter().enumerate() {
            let path = SafePath::parse(&e.path)
                .map_err(|why| Error::peer_in(&e.path, format!("refused unsafe path: {why}")))?;
            if let Some(dir) = path.ancestors().find(|a| files.contains(a)) {
                return Err(Error::peer_in(
                    &e.path,
                    format!(
                        "the manifest also lists its parent {} as a file",
                        crate::path::escape(dir)
                    ),
                ));
            }
            self.by_path.insert(e.path.clone(), i);
            let named = self.config.windows_names
                && !self.config.single_file
                && e.kind != Some(EntryKind::Text);
            let refused = named.then(|| refused_name(&path)).flatten();
            checked.push(Entry {
                path,
                refused,
                size: e.size,
                found: None,
                reported: None,
                state: EntryState::Pending,
                committed: false,
                kind: e.kind,
            });
        }
        self.entries = checked;
        self.events.push_back(Event::Manifest {
            files: self.entries.len(),
            bytes: self
                .entries
                .iter()
                .fold(0u64, |a, e| a.saturating_add(e.size)),
        });
        if self.config.consent {
            self.offer = Some(Offer::new(
                self.entries
                    .iter()
                    .map(|e| (e.path.clone(), e.size))
                    .collect(),
            ));
            self.phase = Phase::Consent { resume };
            return Ok(());
        }
        if self.consent_told {
            self.transmit
                .push_back(Control::Consent { accept: true }.into());
        }
        self.start_after_manifest(resume);
        Ok(())
    }

    /// Go on after the manifest (and the user's consent): ask for the local copies when
    /// resuming, else take files.
    fn start_after_manifest(&mut self, resume: bool) {
        if resume {
            self.phase = Phase::Resuming(Resuming {
                next_stat: 0,
                stats_out: 0,
                to_hash: VecDeque::new(),
                hashing: None,
            });
            self.pump_resume();
        } else {
            self.phase = Phase::Streaming;
        }
    }

    /// Stat entries, hash what exists, and send the answer when all is known.
    fn pump_resume(&mut self) {
        const STATS_IN_FLIGHT: usize = 32;
        let window = self.config.window;
        let Phase::Resuming(rs) = &mut self.phase else {
            return;
        };
        while rs.stats_out < STATS_IN_FLIGHT && rs.next_stat < self.entries.len() {
            let i = rs.next_stat;
            rs.next_stat += 1;
            if self.entries[i].kind.is_some() || self.entries[i].refused.is_some() {
                // A stream or a text is always sent whole: nothing to look for. A refused
                // name is never looked up, so it is never reported as held.
                continue;
            }
            rs.stats_out += 1;
            self.io_out += 1;
            self.io.push_back(IoRequest::Stat {
                file: i,
                path: self.entries[i].path.clone(),
            });
        }
        loop {
            if rs.hashing.is_none() {
                let Some(i) = rs.to_hash.pop_front() else {
                    break;
                };
                // Only entries with a found copy are queued.
                let size = self.entries[i].found.map_or(0, |f| f.size);
                rs.hashing = Some(Hashing {
                    file: i,
                    reads: ReadPipe::new(0, size),
                    chain: Chain::of(if self.fast_on {
                        ChainKind::Blake3
                    } else {
                        ChainKind::Sha256
                    }),
                });
            }
            let Some(h) = rs.hashing.as_mut() else {
                break;
            };
            while let Some((_, data)) = h.reads.take() {
                h.chain.next(&data);
            }
            if h.reads.is_done() {
                let e = &mut self.entries[h.file];
                let size = e.found.map_or(0, |f| f.size);
                e.reported = h.chain.value().map(|c| (size, c));
                rs.hashing = None;
                continue;
            }
            while h.reads.held() < window {
                match h.reads.next_request() {
                    Some((offset, len)) => {
                        self.io_out += 1;
                        self.io.push_back(IoRequest::ReadBack {
                            file: h.file,
                            offset,
                            len,
                        });
                    }
                    None => break,
                }
            }
            break;
        }
        let all_known = rs.next_stat == self.entries.len()
            && rs.stats_out == 0
            && rs.to_hash.is_empty()
            && rs.hashing.is_none();
        if all_known {
            self.send_answer();
        }
    }

    fn send_answer(&mut self) {
        let entries: Vec<ResumeEntry> = self
            .entries
            .iter()
            .filter_map(|e| {
                let (size, chain) = e.reported?;
                Some(ResumeEntry {
                    path: e.path.as_str().to_owned(),
                    size,
                    chain_hex: wire::hex(&chain),
                })
            })
            .collect();
        let entries = self.send_parts(entries);
        let answer = Control::ReceiverManifest { entries };
        let msg = match (&self.cipher, &mut self.nonces) {
            (Some(cipher), Some(nonces)) => Control::EncReceiverManifest {
                hidden_manifest: wire::hex(
                    &cipher.seal(&nonces.next(), answer.to_json().as_bytes()),
                ),
            },
            _ => answer,
        };
        self.transmit.push_back(msg.into());
        self.phase = Phase::Streaming;
        // Hashing local copies may take long; the sender's silence meanwhile is expected.
        self.deadline = self.last_now + self.config.idle_timeout;
    }

    fn on_file(&mut self, h: FileHeader) -> Result<(), Error> {
        if let Some(c) = &self.current {
            return Err(Error::peer_in(
                self.entries[c.file].path.as_str(),
                format!(
                    "a new file ({}) started before this one ended",
                    crate::path::escape(&h.path)
                ),
            ));
        }
        let Some(&file) = self.by_path.get(&h.path) else {
            return Err(Error::peer_in(&h.path, "file is not in the manifest"));
        };
        let e = &mut self.entries[file];
        if e.state != EntryState::Pending {
            return Err(Error::peer_in(&h.path, "file sent twice"));
        }
        if h.size != e.size {
            return Err(Error::peer_in(
                &h.path,
                format!("size {} differs from the manifest's {}", h.size, e.size),
            ));
        }
        if h.fast && !self.fast_on {
            return Err(Error::peer_in(
                &h.path,
                "the sender announced the fast data path, which this side did not accept",
            ));
        }
        if h.append_from > h.size {
            return Err(Error::peer_in(
                &h.path,
                format!(
                    "append_from {} is beyond the size {}",
                    h.append_from, h.size
                ),
            ));
        }
        if h.append_from > 0 && e.reported.map(|r| r.0) != Some(h.append_from) {
            return Err(Error::peer_in(
                &h.path,
                format!(
                    "the sender asked to append at byte {} but this side has no verified copy of that length",
                    h.append_from
                ),
            ));
        }
        if e.kind.is_some() && h.append_from > 0 {
            return Err(Error::peer_in(
                &h.path,
                "a stream or a text cannot be appended to",
            ));
        }
        let stream = e.kind == Some(EntryKind::Stream);
        let text = (e.kind == Some(EntryKind::Text)).then(Vec::new);
        let remaining = h.size - h.append_from;
        let discard = e.refused.is_some();
        if let Some(why) = e.refused.clone() {
            // Checked piece by piece as any file, so the chain and the nonces stay in
            // step, but never opened: not even a partial file gets the name.
            self.not_delivered(file, why);
        } else {
            self.entries[file].state = EntryState::Receiving;
            self.events.push_back(Event::FileStarted {
                path: h.path,
                size: h.size,
                append_from: h.append_from,
                compression: h.compression,
            });
        }
        let e = &self.entries[file];
        if text.is_none() && !discard {
            self.io_out += 1;
            self.io.push_back(IoRequest::Open {
                file,
                path: e.path.clone(),
                append_from: h.append_from,
                size: h.size,
            });
        }
        self.current = Some(Incoming {
            file,
            append_from: h.append_from,
            pieces: match stream {
                true => u64::MAX,
                false => remaining.div_ceil(CHUNK_SIZE as u64).max(1),
            },
            compression: h.compression,
            next_seq: 0,
            jobs_out: 0,
            results: BTreeMap::new(),
            next_verify: 0,
            claimed: None,
            fast: h.fast,
            done_bytes: h.append_from,
            eof_seen: false,
            stream,
            text,
            discard,
        });
        Ok(())
    }

    fn on_data(&mut self, frame: Bytes) -> Result<(), Error> {
        let Some(cur) = self.current.as_mut() else {
            return Err(Error::peer("data message outside a file"));
        };
        let e = &self.entries[cur.file];
        let d = DataMessage::decode(frame).map_err(|err| match err {
            Error::Peer { reason, .. } => Error::peer_in(e.path.as_str(), reason),
            other => other,
        })?;
        if d.seq != cur.next_seq {
            return Err(Error::integrity_in(
                e.path.as_str(),
                format!(
                    "piece {} arrived where piece {} was expected",
                    d.seq, cur.next_seq
                ),
            ));
        }
        if d.seq >= cur.pieces {
            return Err(Error::integrity_in(
                e.path.as_str(),
                format!("more data than the declared {} bytes", e.size),
            ));
        }
        let expect_len = match cur.stream {
            // At most a piece; the verification checks that only the last is short.
            true => CHUNK_SIZE,
            false => {
                let start = cur.append_from + d.seq * CHUNK_SIZE as u64;
                (e.size - start).min(CHUNK_SIZE as u64) as usize
            }
        };
        let open = match (&self.cipher, &mut self.nonces) {
            (Some(c), Some(n)) => {
                let nonce = n.next();
                Some(match (&self.fast_cipher, cur.fast) {
                    (Some(f), true) => JobOpen::Fast(f.clone(), n.taken()),
                    _ => JobOpen::V1(c.clone(), nonce),
                })
            }
            _ => None,
        };
        cur.next_seq += 1;
        cur.jobs_out += 1;
        let prev = cur.claimed.replace(d.chain);
        self.jobs.push_back(Job {
            file: cur.file,
            seq: d.seq,
            chain: d.chain,
            prev,
            payload: d.payload,
            hash: match (cur.fast, open.is_some()) {
                (false, _) => Some(ChainKind::Sha256),
                (true, false) => Some(ChainKind::Blake3),
                (true, true) => None,
            },
            open,
            decompress: cur.compression == Compression::Zstd,
            expect_len,
        });
        Ok(())
    }

    fn on_job(&mut self, done: JobResult) -> Result<(), Error> {
        let Some(cur) = self.current.as_mut() else {
            return Err(Error::misuse("job result while no file is open"));
        };
        if done.file != cur.file
            || done.seq < cur.next_verify
            || done.seq >= cur.next_seq
            || cur.results.contains_key(&done.seq)
        {
            return Err(Error::misuse(format!(
                "job result for piece {} nobody asked for",
                done.seq
            )));
        }
        cur.jobs_out -= 1;
        cur.results.insert(done.seq, done);
        self.verify_in_order()
    }

    /// Check finished pieces in `seq` order and write the good ones.
    fn verify_in_order(&mut self) -> Result<(), Error> {
        let Some(cur) = self.current.as_mut() else {
            return Ok(());
        };
        let e = &self.entries[cur.file];
        while let Some(r) = cur.results.remove(&cur.next_verify) {
            let (raw, computed) = r
                .outcome
                .map_err(|why| Error::integrity_in(e.path.as_str(), why))?;
            // In order: the previous piece's claim, which this piece was hashed onto,
            // has been checked already. Encrypted on the fast path the tag checked the
            // piece, and the chain field must be zero.
            if computed.unwrap_or([0; 32]) != r.chain {
                return Err(Error::integrity_in(
                    e.path.as_str(),
                    format!("chain mismatch at piece {}", r.seq),
                ));
            }
            let start = cur.append_from + r.seq * CHUNK_SIZE as u64;
            let expect_len = match cur.stream {
                true => stream_piece_len(e.path.as_str(), cur.done_bytes, r.seq, raw.len())?,
                false => (e.size - start).min(CHUNK_SIZE as u64),
            };
            if raw.len() as u64 != expect_len {
                return Err(Error::integrity_in(
                    e.path.as_str(),
                    format!(
                        "piece {} holds {} bytes where {} were expected",
                        r.seq,
                        raw.len(),
                        expect_len
                    ),
                ));
            }
            cur.next_verify += 1;
            cur.done_bytes += expect_len;
            if cur.discard {
                continue;
            }
            if let Some(text) = cur.text.as_mut() {
                text.extend_from_slice(&raw);
            } else if !raw.is_empty() {
                self.io_out += 1;
                self.writes_out += 1;
                self.io.push_back(IoRequest::Write {
                    file: cur.file,
                    offset: start,
                    data: raw,
                });
            }
            self.events.push_back(Event::Progress {
                delta: expect_len,
                file_bytes: cur.done_bytes,
            });
        }
        if cur.eof_seen && cur.jobs_out == 0 && cur.results.is_empty() {
            self.close_current()?;
        }
        Ok(())
    }

    fn on_file_eof(&mut self) -> Result<(), Error> {
        let Some(cur) = self.current.as_mut() else {
            return Err(Error::peer("file_eof outside a file"));
        };
        if cur.stream {
            return Err(Error::peer_in(
                self.entries[cur.file].path.as_str(),
                "a stream ends with stream_eof, not file_eof",
            ));
        }
        if cur.next_seq != cur.pieces {
            let e = &self.entries[cur.file];
            return Err(Error::integrity_in(
                e.path.as_str(),
                format!(
                    "file ended after {} of {} pieces: less data than the declared {} bytes",
                    cur.next_seq, cur.pieces, e.size
                ),
            ));
        }
        cur.eof_seen = true;
        self.verify_in_order()
    }

    /// Extension `stream`: the end of the current stream, with its size (sealed when
    /// encrypting). Every piece is verified by now (control messages wait for that).
    fn on_stream_eof(&mut self, size: Option<u64>, hidden: Option<String>) -> Result<(), Error> {
        let Some(file) = self.current.as_ref().filter(|c| c.stream).map(|c| c.file) else {
            return Err(Error::peer("stream_eof outside a stream"));
        };
        let path = self.entries[file].path.as_str().to_owned();
        let size = match (&self.cipher, size, hidden) {
            (None, Some(size), None) => size,
            (Some(_), None, Some(hidden)) => {
                let plain = self.open_hidden(&hidden, "the stream's size")?;
                plain
                    .parse::<u64>()
                    .map_err(|_| Error::peer_in(&path, "the stream's size is not a number"))?
            }
            _ => {
                return Err(Error::peer_in(
                    &path,
                    "stream_eof without its size (in clear, or sealed when encrypting)",
                ))
            }
        };
        let Some(cur) = self.current.as_mut() else {
            return Err(Error::peer("stream_eof outside a stream"));
        };
        let pieces = size.div_ceil(CHUNK_SIZE as u64).max(1);
        if cur.done_bytes != size || cur.next_seq != pieces {
            return Err(Error::integrity_in(
                &path,
                format!(
                    "the stream ended after {} bytes in {} pieces, but its sender says {size} bytes",
                    cur.done_bytes, cur.next_seq
                ),
            ));
        }
        self.entries[file].size = size;
        cur.eof_seen = true;
        self.verify_in_order()
    }

    fn close_current(&mut self) -> Result<(), Error> {
        let Some(cur) = self.current.take() else {
            return Ok(());
        };
        if cur.discard {
            // Already reported as not delivered; nothing was opened.
            return Ok(());
        }
        let e = &mut self.entries[cur.file];
        if let Some(text) = cur.text {
            let text = String::from_utf8(text)
                .map_err(|_| Error::peer_in(e.path.as_str(), "the text is not UTF-8"))?;
            // Nothing to put in place: the text is shown, and that is its delivery.
            e.state = EntryState::Done;
            let path = e.path.as_str().to_owned();
            self.events.push_back(Event::Text {
                path: path.clone(),
                text,
            });
            self.events
                .push_back(Event::FileDone { path, size: e.size });
            return Ok(());
        }
        e.state = EntryState::Verified;
        self.io_out += 1;
        self.io.push_back(IoRequest::Close { file: cur.file });
        self.events.push_back(Event::FileDone {
            path: e.path.as_str().to_owned(),
            size: e.size,
        });
        Ok(())
    }

    /// Extension `confirm`: the sender gives up the current file, if one is open, and
    /// skips the nonces it spent on pieces that never left.
    fn on_file_abort(&mut self, skipped_nonces: u64, why: &str) -> Result<(), Error> {
        // The sender spends at most a header and its window of pieces ahead of what it
        // sends; anything more is not a sender of this project.
        const MOST_SKIPPED: u64 = 64;
        if skipped_nonces > 0 {
            let Some(nonces) = self.nonces.as_mut() else {
                return Err(Error::peer(
                    "file_abort skips nonces in an unencrypted session",
                ));
            };
            if skipped_nonces > MOST_SKIPPED {
                return Err(Error::peer(format!(
                    "file_abort skips {skipped_nonces} nonces (at most {MOST_SKIPPED})"
                )));
            }
            for _ in 0..skipped_nonces {
                nonces.next();
            }
        }
        if let Some(cur) = self.current.take().filter(|c| !c.discard) {
            self.io_out += 1;
            self.io.push_back(IoRequest::Close { file: cur.file });
            let reason = match why {
                "changed" => "the sender gave it up: it changed while being sent",
                _ => "the sender gave it up: it could not be read",
            };
            self.not_delivered(cur.file, reason.to_owned());
        }
        Ok(())
    }

    fn on_eof(&mut self) -> Result<(), Error> {
        if let Some(c) = &self.current {
            return Err(Error::peer_in(
                self.entries[c.file].path.as_str(),
                "the session ended in the middle of this file",
            ));
        }
        for i in 0..self.entries.len() {
            let e = &mut self.entries[i];
            if e.state != EntryState::Pending {
                continue;
            }
            if let Some(why) = e.refused.clone() {
                // Never sent (a sender of this project that skipped it, or an empty file
                // p2p-copy 0.1.2 does not send when resuming): nothing is created.
                self.not_delivered(i, why);
                continue;
            }
            let complete_here = e.size > 0 && e.reported.map(|r| r.0) == Some(e.size);
            if complete_here {
                self.events.push_back(Event::FileSkipped {
                    path: e.path.as_str().to_owned(),
                    size: e.size,
                });
                // A whole partial file is committed like a received one; a whole file
                // under its final name is already in place.
                let in_place = e.found.is_some_and(|f| f.complete);
                e.state = if in_place {
                    EntryState::Done
                } else {
                    EntryState::Verified
                };
                continue;
            }
            if self.confirm {
                // A sender of this project sends every file it can, empty ones too: one
                // it did not send is one it skipped, and it knows.
                self.not_delivered(i, "the sender did not send it".to_owned());
                continue;
            }
            if e.size > 0 {
                return Err(Error::peer_in(
                    e.path.as_str(),
                    "the sender ended the session without sending this file",
                ));
            }
            // Empty files, which p2p-copy 0.1.2 does not send when resuming.
            e.state = EntryState::Verified;
            self.io_out += 2;
            self.io.push_back(IoRequest::Open {
                file: i,
                path: e.path.clone(),
                append_from: 0,
                size: 0,
            });
            self.io.push_back(IoRequest::Close { file: i });
        }
        self.phase = Phase::Closing(Commit::Draining);
        self.advance_commit();
        Ok(())
    }

    /// After `eof`: once every file is closed, sync; once synced, commit every verified
    /// file; once all are committed, the session is done.
    fn advance_commit(&mut self) {
        let Phase::Closing(step) = self.phase else {
            return;
        };
        if self.io_out > 0 {
            return;
        }
        match step {
            Commit::Draining => {
                self.phase = Phase::Closing(Commit::Syncing);
                self.io_out += 1;
                self.io.push_back(IoRequest::Sync);
            }
            Commit::Syncing => {
                self.phase = Phase::Closing(Commit::Renaming);
                for (i, e) in self.entries.iter().enumerate() {
                    if e.state == EntryState::Verified {
                        self.io_out += 1;
                        self.io.push_back(IoRequest::Commit {
                            file: i,
                            path: e.path.clone(),
                            keep_existing: self.config.keep_existing,
                        });
                    }
                }
                self.advance_commit();
            }
            Commit::Renaming if self.meta.is_some() => {
                self.phase = Phase::Closing(Commit::AwaitMeta);
                // The sender's silence counts from here, not during the commits.
                self.deadline = self.last_now + self.config.idle_timeout;
                self.advance_commit();
            }
            Commit::AwaitMeta => {
                let Some(m) = self.meta.as_mut() else {
                    return;
                };
                if !m.is_complete() {
                    if let Some((code, reason)) = self.closed_after_eof.take() {
                        self.fail(crate::error::closed_error(
                            code,
                            &reason,
                            "after the last file, before the sender's permission bits and times arrived (the files are in place; run again with --resume to apply them)",
                        ));
                    }
                    return;
                }
                if self.config.windows_names {
                    m.refuse_dirs(|d| refused_name(d).map(|why| format!("not created: {why}")));
                }
                // With --no-clobber, a file that was there before keeps what it has.
                let keep = self.config.keep_existing;
                let in_place = self
                    .entries
                    .iter()
                    .enumerate()
                    .filter(|(_, e)| e.state == EntryState::Done && (e.committed || !keep))
                    .map(|(i, e)| (i, &e.path));
                let req = m.request(in_place);
                self.phase = Phase::Closing(Commit::Applying);
                self.io_out += 1;
                self.io.push_back(req);
            }
            Commit::Renaming | Commit::Applying => {
                if let Some(notes) = self.meta.take().map(|m| m.notes) {
                    if !notes.is_empty() {
                        self.events.push_back(Event::MetadataNotKept(notes));
                    }
                }
                if self.confirm {
                    self.queue_report(None);
                }
                let uncommitted = std::mem::take(&mut self.uncommitted);
                if uncommitted.is_empty() {
                    self.events.push_back(Event::Done);
                    if self.confirm && self.reconnect_state.is_some() && !self.direct_agreed {
                        // The sender says when the report arrived; until then it may
                        // have to be told again, on a reconnect.
                        self.phase = Phase::Reported;
                        self.deadline = self.last_now + self.config.idle_timeout;
                    } else {
                        self.phase = Phase::Done;
                    }
                } else {
                    self.fail(Error::Io {
                        file: None,
                        reason: format!(
                            "{} of the received files could not be put in place and stay under their partial names: {}",
                            uncommitted.len(),
                            uncommitted.join(", ")
                        ),
                    });
                }
            }
        }
    }

    fn on_io(&mut self, done: IoCompletion) -> Result<(), Error> {
        let syncing = matches!(self.phase, Phase::Closing(Commit::Syncing));
        let answers = |asked: Asked| match &done {
            IoCompletion::Stat { .. } => asked == Asked::Stat,
            IoCompletion::ReadBack { .. } => asked == Asked::ReadBack,
            IoCompletion::Opened { .. } => asked == Asked::Open,
            IoCompletion::Written { .. } => asked == Asked::Write,
            IoCompletion::Closed { .. } => asked == Asked::Close,
            IoCompletion::Committed { .. }
            | IoCompletion::Kept { .. }
            | IoCompletion::CommitFailed { .. } => asked == Asked::Commit,
            IoCompletion::Failed { .. }
            | IoCompletion::Synced
            | IoCompletion::MetadataApplied { .. } => true,
        };
        let file = match &done {
            IoCompletion::Stat { file, .. }
            | IoCompletion::ReadBack { file, .. }
            | IoCompletion::Opened { file }
            | IoCompletion::Written { file }
            | IoCompletion::Closed { file }
            | IoCompletion::Committed { file }
            | IoCompletion::Kept { file }
            | IoCompletion::CommitFailed { file, .. } => Some(*file),
            IoCompletion::Failed { file, .. } if !(syncing && self.sync_asked) => Some(*file),
            IoCompletion::Failed { .. }
            | IoCompletion::Synced
            | IoCompletion::MetadataApplied { .. } => None,
        };
        let expected = match file {
            None if matches!(done, IoCompletion::MetadataApplied { .. }) => {
                std::mem::take(&mut self.meta_asked)
            }
            None => std::mem::take(&mut self.sync_asked),
            Some(f) => {
                let queue = self.ledger.entry(f).or_default();
                let ok = queue.front().is_some_and(|&a| answers(a));
                if ok {
                    queue.pop_front();
                }
                if queue.is_empty() {
                    // Nothing kept per file once its requests are answered.
                    self.ledger.remove(&f);
                }
                ok
            }
        };
        if !expected {
            let what = file.map_or("the sync".to_owned(), |f| format!("file {f}"));
            return Err(Error::misuse(format!(
                "I/O completion for {what} that nobody asked for (no such request was taken from poll_io)"
            )));
        }
        self.io_out -= 1;
        // Only the sync's completions have no file, and they do not index entries.
        let file = file.unwrap_or_default();
        match done {
            // Sync is issued alone, so a failure while it is out is the sync's.
            IoCompletion::Failed { reason, .. }
                if matches!(self.phase, Phase::Closing(Commit::Syncing)) =>
            {
                Err(Error::Io {
                    file: None,
                    reason: format!("syncing the received files: {reason}"),
                })
            }
            IoCompletion::Failed { reason, .. } => match self.entries.get(file) {
                Some(e) => Err(Error::io_in(e.path.as_str(), reason)),
                None => Err(Error::Io { file: None, reason }),
            },
            IoCompletion::Stat { found, .. } => {
                let Phase::Resuming(rs) = &mut self.phase else {
                    return Err(Error::misuse("stat completion outside resume"));
                };
                rs.stats_out -= 1;
                let e = &mut self.entries[file];
                e.found = found;
                if found.is_some_and(|f| f.size > 0) {
                    rs.to_hash.push_back(file);
                }
                self.pump_resume();
                Ok(())
            }
            IoCompletion::ReadBack { offset, data, .. } => {
                let Phase::Resuming(Resuming {
                    hashing: Some(h), ..
                }) = &mut self.phase
                else {
                    return Err(Error::misuse("read-back completion outside resume"));
                };
                if h.file != file {
                    return Err(Error::misuse("read-back completion for another file"));
                }
                h.reads
                    .complete(offset, data)
                    .map_err(|why| Error::io_in(self.entries[file].path.as_str(), why))?;
                self.pump_resume();
                Ok(())
            }
            IoCompletion::Opened { .. } => {
                self.advance_commit();
                Ok(())
            }
            IoCompletion::Written { .. } => {
                self.writes_out = self.writes_out.saturating_sub(1);
                self.advance_commit();
                Ok(())
            }
            IoCompletion::Closed { .. } | IoCompletion::Synced => {
                self.advance_commit();
                Ok(())
            }
            IoCompletion::Committed { .. } => {
                let e = &mut self.entries[file];
                e.state = EntryState::Done;
                e.committed = true;
                self.advance_commit();
                Ok(())
            }
            IoCompletion::MetadataApplied { not_kept } => {
                if let Some(m) = self.meta.as_mut() {
                    for (path, why) in not_kept.shown {
                        m.notes.push(&path, why);
                    }
                    m.notes.more += not_kept.more;
                }
                self.advance_commit();
                Ok(())
            }
            IoCompletion::Kept { .. } => {
                let e = &mut self.entries[file];
                e.state = EntryState::Failed;
                let path = e.path.as_str().to_owned();
                self.events
                    .push_back(Event::FileKept { path: path.clone() });
                self.failed.push(FailedFile {
                    path,
                    reason: "the receiver kept its own, different file of that name (--no-clobber)"
                        .to_owned(),
                });
                self.advance_commit();
                Ok(())
            }
            IoCompletion::CommitFailed { reason, .. } => {
                let reason = format!("could not be put in place: {reason}");
                self.uncommitted.push(format!(
                    "{} ({reason})",
                    crate::path::escape(self.entries[file].path.as_str())
                ));
                self.not_delivered(file, reason);
                self.advance_commit();
                Ok(())
            }
        }
    }
}

/// Why `path` is not stored with [`ReceiverConfig::windows_names`].
fn refused_name(path: &SafePath) -> Option<String> {
    windows_name_error(path).map(|why| format!("name not allowed on the receiver: {why}"))
}

/// The length a stream's piece `seq` may have, given the bytes verified before it: every
/// piece but the last is whole, and only a first piece may be empty.
fn stream_piece_len(path: &str, before: u64, seq: u64, len: usize) -> Result<u64, Error> {
    if before != seq * CHUNK_SIZE as u64 {
        return Err(Error::integrity_in(
            path,
            format!("piece {seq} follows a short piece: the stream had ended"),
        ));
    }
    if len > CHUNK_SIZE {
        return Err(Error::integrity_in(
            path,
            format!("piece {seq} of the stream holds {len} bytes, more than a piece"),
        ));
    }
    if len == 0 && seq > 0 {
        return Err(Error::integrity_in(
            path,
            format!("piece {seq} of the stream is empty"),
        ));
    }
    Ok(len as u64)
}
