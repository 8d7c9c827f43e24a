//! Whole sessions in memory, for tests and fuzzing: a [`Sender`], the [`Relay`] and a
//! [`Receiver`] driven together with in-memory files, a simulated clock that jumps to the
//! next deadline when nothing else can happen, I/O and CPU work completed in an order
//! drawn from a seed, and a hook that may rewrite, drop or insert any message in flight.
//!
//! The simulated runtime keeps the contracts a real one must keep, and no more: requests
//! for one file run in the order polled, different files and jobs interleave freely, the
//! sender is only polled for a message while the link has room, and the receiver is only
//! fed while it wants input. Anything the state machines ask for that breaks the I/O
//! contract (writing to a file that is not open, reading back past the copy that was
//! found, ...) is recorded in [`Outcome::violations`].

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::net::{IpAddr, Ipv4Addr};
use std::time::{Duration, Instant};

use bytes::Bytes;
use sha2::{Digest, Sha256};

use crate::receiver::{self, LocalCopy, Receiver, ReceiverConfig};
use crate::relay::{ConnId, Relay, RelayConfig, RelayOutput};
use crate::sender::{self, SendFile, Sender, SenderConfig};
use crate::{Error, Event, Secrets, WireMessage};

/// A small deterministic generator (SplitMix64): a simulated run must be reproducible
/// from its seed, so no OS randomness.
#[derive(Debug, Clone)]
pub struct SimRng(u64);

impl SimRng {
    /// A generator for `seed`.
    pub fn new(seed: u64) -> SimRng {
        SimRng(seed)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// A number in `0..n` (`n` > 0).
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }
}

/// The receiver's output directory: files under their final names and partial files
/// (keyed by the final name they will get), as a runtime keeps them beside each other.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReceiverDisk {
    /// Files under their final names.
    pub complete: BTreeMap<String, Vec<u8>>,
    /// Partial files left by unfinished transfers, keyed by their final name.
    pub partial: BTreeMap<String, Vec<u8>>,
}

impl ReceiverDisk {
    /// True when `path` is a directory: some file, final or partial, lies below it.
    fn is_dir(&self, path: &str) -> bool {
        let prefix = format!("{path}/");
        self.complete
            .keys()
            .chain(self.partial.keys())
            .any(|k| k.starts_with(&prefix))
    }

    /// The first parent of `path` that is a regular file, if any.
    fn file_in_the_way(&self, path: &str) -> Option<String> {
        path.match_indices('/')
            .map(|(i, _)| &path[..i])
            .find(|a| self.complete.contains_key(*a))
            .map(str::to_owned)
    }
}

/// Lets a test fail chosen receiver file accesses: return `Some(reason)` to answer the
/// request with [`receiver::IoCompletion::Failed`] instead of carrying it out.
pub type IoFault = Box<dyn FnMut(&receiver::IoRequest) -> Option<String>>;

/// Carries out a receiver's [`receiver::IoRequest`]s on a [`ReceiverDisk`] with the
/// semantics documented on the request type.
pub struct ReceiverFs {
    /// The files.
    pub disk: ReceiverDisk,
    /// What each [`receiver::IoRequest::Stat`] found: the path and the copy.
    found: HashMap<usize, (String, Option<LocalCopy>)>,
    /// Partial files open for writing, by manifest index.
    open: HashMap<usize, String>,
    /// Whether [`receiver::IoRequest::Sync`] was carried out.
    synced: bool,
    /// Requests that broke the I/O contract.
    pub violations: Vec<String>,
    /// Optional injected failures.
    pub fault: Option<IoFault>,
}

impl std::fmt::Debug for ReceiverFs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReceiverFs")
            .field("disk", &self.disk)
            .field("violations", &self.violations)
            .finish_non_exhaustive()
    }
}

impl ReceiverFs {
    /// A filesystem holding `disk`.
    pub fn new(disk: ReceiverDisk) -> ReceiverFs {
        ReceiverFs {
            disk,
            found: HashMap::new(),
            open: HashMap::new(),
            synced: false,
            violations: Vec::new(),
            fault: None,
        }
    }

    /// Carry out one request and return the completion a runtime would report.
    pub fn execute(&mut self, req: &receiver::IoRequest) -> receiver::IoCompletion {
        use receiver::{IoCompletion as Done, IoRequest as Req};
        // `Sync` concerns no one file; its failure names file 0, as the contract says.
        let file = request_file(req).unwrap_or(0);
        if let Some(reason) = self.fault.as_mut().and_then(|f| f(req)) {
            // A failed close closes the file all the same (a failed open never opened it).
            if matches!(req, Req::Close { .. }) {
                self.open.remove(&file);
            }
            if matches!(req, Req::Commit { .. }) {
                return Done::CommitFailed { file, reason };
            }
            if let Req::ApplyMetadata { files, .. } = req {
                // This request never fails: what cannot be applied is listed.
                let mut not_kept = crate::metadata::Notes::default();
                for (path, _) in files {
                    not_kept.push(path.as_str(), reason.clone());
                }
                return Done::MetadataApplied { not_kept };
            }
            return Done::Failed { file, reason };
        }
        let failed = |reason: String| Done::Failed { file, reason };
        match req {
            Req::Stat { path, .. } => {
                let p = path.as_str();
                let copy = if let Some(d) = self.disk.partial.get(p) {
                    Some(LocalCopy {
                        size: d.len() as u64,
                        complete: false,
                    })
                } else {
                    self.disk.complete.get(p).map(|d| LocalCopy {
                        size: d.len() as u64,
                        complete: true,
                    })
                };
                self.found.insert(file, (p.to_owned(), copy));
                Done::Stat { file, found: copy }
            }
            Req::ReadBack { offset, len, .. } => {
                let Some((path, Some(copy))) = self.found.get(&file) else {
                    self.violations.push(format!(
                        "read-back of file {file} without a copy found by stat"
                    ));
                    return failed("no such file".into());
                };
                let data = if copy.complete {
                    self.disk.complete.get(path)
                } else {
                    self.disk.partial.get(path)
                };
                let Some(data) = data else {
                    self.violations
                        .push(format!("read-back of {path}, which is gone"));
                    return failed("no such file".into());
                };
                let end = offset.saturating_add(*len as u64);
                if end > copy.size || end > data.len() as u64 {
                    self.violations.push(format!(
                        "read-back of {path} at {offset}+{len}, past the {} bytes found",
                        copy.size
                    ));
                    return failed("unexpected end of file".into());
                }
                Done::ReadBack {
                    file,
                    offset: *offset,
                    data: Bytes::copy_from_slice(&data[*offset as usize..end as usize]),
                }
            }
            Req::Open {
                path, append_from, ..
            } => {
                let p = path.as_str();
                if self.open.contains_key(&file) {
                    self.violations
                        .push(format!("open of file {file} ({p}) while it is open"));
                }
                if let Some(blocker) = self.disk.file_in_the_way(p) {
                    return failed(format!("not a directory: {blocker}"));
                }
                if *append_from == 0 {
                    self.disk.partial.insert(p.to_owned(), Vec::new());
                } else {
                    let copy = self
                        .disk
                        .partial
                        .get(p)
                        .or_else(|| self.disk.complete.get(p))
                        .cloned();
                    match copy {
                        Some(d) if d.len() as u64 == *append_from => {
                            self.disk.partial.insert(p.to_owned(), d);
                        }
                        Some(d) => {
                            return failed(format!(
                                "local copy holds {} bytes, not {append_from}",
                                d.len()
                            ))
                        }
                        None => return failed("no local copy to append to".into()),
                    }
                }
                self.open.insert(file, p.to_owned());
                Done::Opened { file }
            }
            Req::Write { offset, data, .. } => {
                let Some(path) = self.open.get(&file) else {
                    self.violations
                        .push(format!("write to file {file}, which is not open"));
                    return failed("bad file descriptor".into());
                };
                let Some(buf) = self.disk.partial.get_mut(path) else {
                    self.violations
                        .push(format!("write to {path}, whose partial file is gone"));
                    return failed("no such file".into());
                };
                let start = *offset as usize;
                let end = start + data.len();
                if buf.len() < end {
                    // As a real file: writing past the end extends it (with a hole).
                    buf.resize(end, 0);
                }
                buf[start..end].copy_from_slice(data);
                Done::Written { file }
            }
            Req::Close { .. } => match self.open.remove(&file) {
                Some(_) => Done::Closed { file },
                None => {
                    self.violations
                        .push(format!("close of file {file}, which is not open"));
                    failed("bad file descriptor".into())
                }
            },
            Req::Sync => {
                if !self.open.is_empty() {
                    self.violations
                        .push(format!("sync while files are open: {:?}", self.open));
                }
                self.synced = true;
                Done::Synced
            }
            Req::Commit {
                path,
                keep_existing,
                ..
            } => {
                let p = path.as_str();
                if !self.synced {
                    self.violations.push(format!("commit of {p} before sync"));
                }
                if self.open.values().any(|o| o == p) {
                    self.violations
                        .push(format!("commit of {p} while it is open"));
                }
                if let Some(blocker) = self.disk.file_in_the_way(p) {
                    return failed(format!("not a directory: {blocker}"));
                }
                if self.disk.is_dir(p) {
                    return failed(format!("is a directory: {p}"));
                }
                match self.disk.partial.remove(p) {
                    Some(d)
                        if *keep_existing
                            && self.disk.complete.get(p).is_some_and(|old| *old != d) =>
                    {
                        Done::Kept { file }
                    }
                    Some(d) => {
                        self.disk.complete.insert(p.to_owned(), d);
                        Done::Committed { file }
                    }
                    None => {
                        self.violations
                            .push(format!("commit of {p}, which has no partial file"));
                        failed("no such file".into())
                    }
                }
            }
            // The simulated disk keeps contents only: the metadata is taken as applied
            // to files that are in place.
            Req::ApplyMetadata { files, .. } => {
                for (path, _) in files {
                    if !self.disk.complete.contains_key(path.as_str()) {
                        self.violations
                            .push(format!("metadata for {path}, which is not in place"));
                    }
                }
                Done::MetadataApplied {
                    not_kept: crate::metadata::Notes::default(),
                }
            }
        }
    }
}

/// The manifest index a receiver request concerns (`None` for
/// [`receiver::IoRequest::Sync`] and [`receiver::IoRequest::ApplyMetadata`], which
/// concern them all).
pub fn request_file(req: &receiver::IoRequest) -> Option<usize> {
    use receiver::IoRequest as Req;
    match req {
        Req::Stat { file, .. }
        | Req::ReadBack { file, .. }
        | Req::Open { file, .. }
        | Req::Write { file, .. }
        | Req::Close { file }
        | Req::Commit { file, .. } => Some(*file),
        Req::Sync | Req::ApplyMetadata { .. } => None,
    }
}

/// Carries out a sender's [`sender::IoRequest`]s on in-memory files.
#[derive(Debug)]
pub struct SenderFs {
    files: Vec<Bytes>,
    closed: Vec<bool>,
    /// Files read as streams of unknown length (a short read marks the end).
    pub streams: Vec<bool>,
    /// Requests that broke the I/O contract.
    pub violations: Vec<String>,
    /// Optional injected failures.
    pub fault: Option<SenderFault>,
}

impl std::fmt::Debug for SenderFault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SenderFault")
    }
}

/// Fails chosen sender file accesses: given a request, the reason to fail it with.
pub struct SenderFault(pub Box<SenderFaultFn>);

/// The function inside a [`SenderFault`].
pub type SenderFaultFn = dyn FnMut(&sender::IoRequest) -> Option<String>;

impl SenderFs {
    /// Files by index, as given to [`Sender::new`].
    pub fn new(files: Vec<Bytes>) -> SenderFs {
        let closed = vec![false; files.len()];
        SenderFs {
            files,
            closed,
            streams: Vec::new(),
            violations: Vec::new(),
            fault: None,
        }
    }

    /// Carry out one request; `Close` has no completion.
    pub fn execute(&mut self, req: &sender::IoRequest) -> Option<sender::IoCompletion> {
        use sender::{IoCompletion as Done, IoRequest as Req};
        if let (Req::Read { file, .. }, Some(fault)) = (req, self.fault.as_mut()) {
            if let Some(reason) = (fault.0)(req) {
                return Some(Done::Failed {
                    file: *file,
                    reason,
                });
            }
        }
        match *req {
            Req::Read { file, offset, len } => {
                let Some(data) = self.files.get(file) else {
                    self.violations.push(format!("read of unknown file {file}"));
                    return Some(Done::Failed {
                        file,
                        reason: "no such file".into(),
                    });
                };
                if self.closed[file] {
                    self.violations
                        .push(format!("read of file {file} after its close"));
                }
                let start = (offset as usize).min(data.len());
                let end = (start + len).min(data.len());
                let stream = self.streams.get(file).copied().unwrap_or(false);
                if end - start != len && !stream {
                    self.violations.push(format!(
                        "read of file {file} at {offset}+{len}, past its end"
                    ));
                }
                Some(Done::Read {
                    file,
                    offset,
                    data: crate::wire::PieceBuf::from(&data[start..end]),
                })
            }
            Req::Close { file } => {
                match self.closed.get_mut(file) {
                    Some(c) if !*c => *c = true,
                    _ => self
                        .violations
                        .push(format!("close of file {file} twice or unknown")),
                }
                None
            }
        }
    }
}

/// Which way a message travels through the relay.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// From the sender to the receiver.
    ToReceiver,
    /// From the receiver to the sender.
    ToSender,
}

/// Rewrites messages the relay forwards: given the direction, the message's index among
/// the messages forwarded that way (from 0) and the message, returns what to deliver
/// instead. Return nothing to drop it, several to insert; keep state in the closure to
/// reorder.
pub type Tamper = Box<dyn FnMut(Direction, usize, WireMessage) -> Vec<WireMessage>>;

/// Everything a simulated session starts from.
pub struct SimSetup {
    /// The sender's files, in sending order.
    pub files: Vec<(String, Bytes)>,
    /// What each file is sent as when it is not a plain file (extensions `stream` and
    /// `text`), by index into `files`; missing entries are plain files.
    pub kinds: Vec<Option<crate::wire::EntryKind>>,
    /// The receiver's output directory before the session.
    pub disk: ReceiverDisk,
    /// Sender settings.
    pub sender_config: SenderConfig,
    /// Receiver settings.
    pub receiver_config: ReceiverConfig,
    /// Relay settings.
    pub relay_config: RelayConfig,
    /// The sender's secrets.
    pub sender_secrets: Secrets,
    /// The receiver's secrets.
    pub receiver_secrets: Secrets,
    /// The sender's nonce seed S.
    pub nonce_seed: [u8; 32],
    /// Seed of the order in which messages, I/O and jobs complete.
    pub seed: u64,
    /// Messages the relay holds for the receiver before the sender must wait (at least 1).
    pub link_capacity: usize,
    /// Rewrites messages in flight.
    pub tamper: Option<Tamper>,
    /// Fails chosen receiver file accesses.
    pub io_fault: Option<IoFault>,
    /// Fails chosen sender file reads.
    pub sender_fault: Option<SenderFault>,
    /// Simulated time each receiver file access takes (zero: time only moves when
    /// nothing else can happen).
    pub receiver_io_latency: Duration,
    /// Keep the sender's connection open after it finished (so the receiver sees no
    /// close and must time out on its own).
    pub sender_lingers: bool,
    /// The receiver's user's answer when it asks (with
    /// [`ReceiverConfig::consent`](crate::receiver::ReceiverConfig::consent)).
    pub consent: bool,
    /// Give up after this many steps.
    pub max_steps: usize,
}

impl SimSetup {
    /// A session sending `files` with default settings, both sides using `secrets`.
    pub fn new(files: Vec<(String, Bytes)>, secrets: &Secrets) -> SimSetup {
        SimSetup {
            files,
            kinds: Vec::new(),
            disk: ReceiverDisk::default(),
            sender_config: SenderConfig::default(),
            receiver_config: ReceiverConfig::default(),
            relay_config: RelayConfig::default(),
            sender_secrets: secrets.clone(),
            receiver_secrets: secrets.clone(),
            nonce_seed: [0x5a; 32],
            seed: 0,
            link_capacity: 4,
            tamper: None,
            io_fault: None,
            sender_fault: None,
            receiver_io_latency: Duration::ZERO,
            sender_lingers: false,
            consent: true,
            max_steps: 1_000_000,
        }
    }
}

/// What a simulated session ended with.
#[derive(Debug)]
pub struct Outcome {
    /// The receiver's output directory afterwards.
    pub disk: ReceiverDisk,
    /// The sender's error, if it failed.
    pub sender_error: Option<Error>,
    /// The receiver's error, if it failed.
    pub receiver_error: Option<Error>,
    /// Every event the sender reported, in order.
    pub sender_events: Vec<Event>,
    /// Every event the receiver reported, in order.
    pub receiver_events: Vec<Event>,
    /// Every file access the receiver asked for, in the order polled.
    pub receiver_io: Vec<receiver::IoRequest>,
    /// How many of [`receiver_io`](Self::receiver_io) were polled before the receiver
    /// failed (`None` when it did not).
    pub receiver_io_before_error: Option<usize>,
    /// SHA-256 over every message the sender put on the link after pairing, as sent
    /// (before any tampering), each prefixed by its kind and length.
    pub sender_stream_digest: [u8; 32],
    /// How many messages that stream held.
    pub sender_stream_len: usize,
    /// Messages the receiver sent after `hello`, as sent.
    pub receiver_sent: Vec<WireMessage>,
    /// Everything the relay asked the runtime to do.
    pub relay_outputs: Vec<RelayOutput>,
    /// Requests that broke the I/O contract, from either side.
    pub violations: Vec<String>,
    /// Simulated time from start to end.
    pub elapsed: Duration,
    /// True when both state machines finished (successfully or not).
    pub both_finished: bool,
    /// The receiver's [`Receiver::report_unconfirmed`] at the end.
    pub receiver_report_unconfirmed: bool,
    /// True when the step limit stopped the run.
    pub step_limit_hit: bool,
    /// Jobs (of either side) that ran before a job polled earlier: evidence that the run
    /// exercised out-of-order completion.
    pub jobs_out_of_order: usize,
    /// File accesses (of either side) carried out before one polled earlier for another
    /// file.
    pub io_out_of_order: usize,
}

impl Outcome {
    /// The receiver's files under their final names.
    pub fn files(&self) -> &BTreeMap<String, Vec<u8>> {
        &self.disk.complete
    }
}

/// One side's connection, as the simulated runtime sees it.
#[derive(Debug, Default)]
struct Conn {
    /// Messages the relay holds for this client.
    inbox: VecDeque<WireMessage>,
    /// A close frame that follows the inbox.
    close: Option<(Option<u16>, String)>,
    /// The connection ended for this client (it saw the close or closed itself).
    gone: bool,
}

#[derive(Debug, Clone, Copy)]
enum Action {
    SenderTransmit,
    SenderRecv,
    ReceiverRecv,
    SenderIo(usize),
    ReceiverIo(usize),
    SenderJob(usize),
    ReceiverJob(usize),
}

const SENDER: ConnId = ConnId(1);
const RECEIVER: ConnId = ConnId(2);

struct Sim {
    base: Instant,
    elapsed: Duration,
    rng: SimRng,
    link_capacity: usize,
    receiver_io_latency: Duration,
    sender_lingers: bool,
    consent: bool,
    tamper: Option<Tamper>,
    sender: Sender,
    receiver: Receiver,
    relay: Relay,
    sfs: SenderFs,
    rfs: ReceiverFs,
    s_conn: Conn,
    r_conn: Conn,
    forwarding: bool,
    forwarded: [usize; 2],
    sender_may_transmit: bool,
    io_polled: u64,
    sender_io: BTreeMap<usize, VecDeque<(u64, sender::IoRequest)>>,
    receiver_io: BTreeMap<usize, VecDeque<(u64, receiver::IoRequest)>>,
    jobs_out_of_order: usize,
    io_out_of_order: usize,
    sender_jobs: Vec<sender::Job>,
    receiver_jobs: Vec<receiver::Job>,
    stream: Sha256,
    stream_len: usize,
    receiver_sent: Vec<WireMessage>,
    receiver_hello_sent: bool,
    sender_events: Vec<Event>,
    receiver_events: Vec<Event>,
    receiver_log: Vec<receiver::IoRequest>,
    receiver_error_at: Option<usize>,
    relay_outputs: Vec<RelayOutput>,
}

/// Run a whole session and report how it ended.
///
/// # Panics
/// When the sender refuses its file list (a bad test setup).
pub fn run(setup: SimSetup) -> Outcome {
    let base = Instant::now();
    let send_files = setup
        .files
        .iter()
        .enumerate()
        .map(|(i, (p, d))| SendFile {
            path: p.clone(),
            size: d.len() as u64,
            kind: setup.kinds.get(i).copied().flatten(),
        })
        .collect();
    let streams = (0..setup.files.len())
        .map(|i| setup.kinds.get(i).copied().flatten() == Some(crate::wire::EntryKind::Stream))
        .collect();
    let sender = Sender::new(
        base,
        setup.sender_config,
        &setup.sender_secrets,
        send_files,
        setup.nonce_seed,
    )
    .expect("the simulated sender's file list is valid");
    let receiver = Receiver::new(base, setup.receiver_config, &setup.receiver_secrets);
    let mut rfs = ReceiverFs::new(setup.disk);
    rfs.fault = setup.io_fault;
    let mut sim = Sim {
        base,
        elapsed: Duration::ZERO,
        rng: SimRng::new(setup.seed),
        link_capacity: setup.link_capacity.max(1),
        receiver_io_latency: setup.receiver_io_latency,
        sender_lingers: setup.sender_lingers,
        consent: setup.consent,
        tamper: setup.tamper,
        sender,
        receiver,
        relay: Relay::new(setup.relay_config),
        sfs: {
            let mut sfs = SenderFs::new(setup.files.into_iter().map(|(_, d)| d).collect());
            sfs.fault = setup.sender_fault;
            sfs.streams = streams;
            sfs
        },
        rfs,
        s_conn: Conn::default(),
        r_conn: Conn::default(),
        forwarding: false,
        forwarded: [0, 0],
        sender_may_transmit: true,
        io_polled: 0,
        sender_io: BTreeMap::new(),
        receiver_io: BTreeMap::new(),
        jobs_out_of_order: 0,
        io_out_of_order: 0,
        sender_jobs: Vec::new(),
        receiver_jobs: Vec::new(),
        stream: Sha256::new(),
        stream_len: 0,
        receiver_sent: Vec::new(),
        receiver_hello_sent: false,
        sender_events: Vec::new(),
        receiver_events: Vec::new(),
        receiver_log: Vec::new(),
        receiver_error_at: None,
        relay_outputs: Vec::new(),
    };
    let step_limit_hit = sim.run(setup.max_steps);
    let violations = sim
        .sfs
        .violations
        .iter()
        .chain(&sim.rfs.violations)
        .cloned()
        .collect();
    Outcome {
        disk: sim.rfs.disk,
        sender_error: sim.sender.error().cloned(),
        receiver_error: sim.receiver.error().cloned(),
        sender_events: sim.sender_events,
        receiver_events: sim.receiver_events,
        receiver_io: sim.receiver_log,
        receiver_io_before_error: sim.receiver_error_at,
        sender_stream_digest: sim.stream.finalize().into(),
        sender_stream_len: sim.stream_len,
        receiver_sent: sim.receiver_sent,
        relay_outputs: sim.relay_outputs,
        violations,
        elapsed: sim.elapsed,
        both_finished: sim.sender.is_finished() && sim.receiver.is_finished(),
        receiver_report_unconfirmed: sim.receiver.report_unconfirmed(),
        step_limit_hit,
        jobs_out_of_order: sim.jobs_out_of_order,
        io_out_of_order: sim.io_out_of_order,
    }
}

impl Sim {
    fn now(&self) -> Instant {
        self.base + self.elapsed
    }

    /// Returns true when the step limit stopped the run.
    fn run(&mut self, max_steps: usize) -> bool {
        let now = self.now();
        // Connect in a seeded order; each client's hello is then sent as a step.
        let order = if self.rng.below(2) == 0 {
            [SENDER, RECEIVER]
        } else {
            [RECEIVER, SENDER]
        };
        let local = IpAddr::V4(Ipv4Addr::LOCALHOST);
        for conn in order {
            self.relay.handle_connect(now, conn, local);
        }
        self.drain_relay();
        self.drain_sender();
        self.drain_receiver();
        for _ in 0..max_steps {
            let actions = self.enabled();
            if actions.is_empty() {
                if !self.advance_clock() {
                    return false;
                }
                continue;
            }
            let a = actions[self.rng.below(actions.len())];
            self.perform(a);
            self.close_finished();
        }
        true
    }

    fn enabled(&self) -> Vec<Action> {
        let mut v = Vec::new();
        let link_room = !self.forwarding || self.r_conn.inbox.len() < self.link_capacity;
        if self.sender_may_transmit && !self.s_conn.gone && link_room {
            v.push(Action::SenderTransmit);
        }
        if !self.s_conn.gone && (!self.s_conn.inbox.is_empty() || self.s_conn.close.is_some()) {
            v.push(Action::SenderRecv);
        }
        if !self.r_conn.gone {
            let msg = !self.r_conn.inbox.is_empty() && self.receiver.wants_input();
            let close = self.r_conn.inbox.is_empty() && self.r_conn.close.is_some();
            if msg || close {
                v.push(Action::ReceiverRecv);
            }
        }
        v.extend(
            self.sender_io
                .iter()
                .filter(|(_, q)| !q.is_empty())
                .map(|(f, _)| Action::SenderIo(*f)),
        );
        v.extend(
            self.receiver_io
                .iter()
                .filter(|(_, q)| !q.is_empty())
                .map(|(f, _)| Action::ReceiverIo(*f)),
        );
        v.extend((0..self.sender_jobs.len()).map(Action::SenderJob));
        v.extend((0..self.receiver_jobs.len()).map(Action::ReceiverJob));
        v
    }

    /// Nothing can happen now: jump to the next deadline. Returns false when there is
    /// none (the run is over).
    fn advance_clock(&mut self) -> bool {
        let mut next: Option<Instant> = None;
        let mut consider = |t: Option<Instant>| {
            if let Some(t) = t {
                next = Some(next.map_or(t, |n| n.min(t)));
            }
        };
        if !self.s_conn.gone {
            consider(self.sender.poll_timeout());
        }
        if !self.r_conn.gone {
            consider(self.receiver.poll_timeout());
        }
        consider(self.relay.poll_timeout());
        let Some(at) = next else {
            return false;
        };
        if at > self.now() {
            self.elapsed = at - self.base;
        }
        self.fire_due();
        true
    }

    /// Tell every state machine whose deadline has come.
    fn fire_due(&mut self) {
        let now = self.now();
        if !self.s_conn.gone && self.sender.poll_timeout().is_some_and(|t| t <= now) {
            let _ = self.sender.handle_timeout(now);
            self.drain_sender();
        }
        if !self.r_conn.gone && self.receiver.poll_timeout().is_some_and(|t| t <= now) {
            let _ = self.receiver.handle_timeout(now);
            self.drain_receiver();
        }
        if self.relay.poll_timeout().is_some_and(|t| t <= now) {
            self.relay.handle_timeout(now);
            self.drain_relay();
        }
        self.close_finished();
    }

    fn perform(&mut self, a: Action) {
        let now = self.now();
        match a {
            Action::SenderTransmit => match self.sender.poll_transmit() {
                Some(m) => {
                    self.forward_from_sender(m);
                    self.drain_sender();
                }
                None => self.sender_may_transmit = false,
            },
            Action::SenderRecv => {
                if let Some(m) = self.s_conn.inbox.pop_front() {
                    let _ = self.sender.handle_message(now, m);
                } else if let Some((code, reason)) = self.s_conn.close.take() {
                    let _ = self.sender.handle_close(now, code, &reason);
                    self.disconnect(SENDER);
                }
                self.drain_sender();
            }
            Action::ReceiverRecv => {
                if self.receiver.wants_input() {
                    if let Some(m) = self.r_conn.inbox.pop_front() {
                        let _ = self.receiver.handle_message(now, m);
                        self.drain_receiver();
                        return;
                    }
                }
                if let Some((code, reason)) = self.r_conn.close.take() {
                    let _ = self.receiver.handle_close(now, code, &reason);
                    self.disconnect(RECEIVER);
                }
                self.drain_receiver();
            }
            Action::SenderIo(file) => {
                let req = self.sender_io.get_mut(&file).and_then(VecDeque::pop_front);
                if let Some((n, req)) = req {
                    self.count_io_order(n);
                    if let Some(done) = self.sfs.execute(&req) {
                        let _ = self.sender.handle_io(now, done);
                    }
                    self.drain_sender();
                }
            }
            Action::ReceiverIo(file) => {
                let req = self
                    .receiver_io
                    .get_mut(&file)
                    .and_then(VecDeque::pop_front);
                if let Some((n, req)) = req {
                    self.count_io_order(n);
                    let done = self.rfs.execute(&req);
                    if !self.receiver_io_latency.is_zero() {
                        self.elapsed += self.receiver_io_latency;
                        self.fire_due();
                    }
                    let _ = self.receiver.handle_io(self.now(), done);
                    self.drain_receiver();
                }
            }
            Action::SenderJob(i) => {
                // `remove` keeps the rest in polling order, so `i > 0` means out of order.
                let job = self.sender_jobs.remove(i);
                self.jobs_out_of_order += usize::from(i > 0);
                let _ = self.sender.handle_job(now, job.run());
                self.drain_sender();
            }
            Action::ReceiverJob(i) => {
                let job = self.receiver_jobs.remove(i);
                self.jobs_out_of_order += usize::from(i > 0);
                let _ = self.receiver.handle_job(now, job.run());
                self.drain_receiver();
            }
        }
    }

    /// Count a file access carried out while one polled earlier still waits.
    fn count_io_order(&mut self, n: u64) {
        let earlier = self
            .sender_io
            .values()
            .filter_map(|q| q.front().map(|(m, _)| *m))
            .chain(
                self.receiver_io
                    .values()
                    .filter_map(|q| q.front().map(|(m, _)| *m)),
            )
            .any(|m| m < n);
        self.io_out_of_order += usize::from(earlier);
    }

    /// A client whose state machine finished closes its connection (the sender only
    /// once its last message is out).
    fn close_finished(&mut self) {
        if !self.s_conn.gone && self.sender.error().is_some() {
            // A failed sender still sends what it queued after failing (its report),
            // as a runtime does before its close frame.
            while let Some(m) = self.sender.poll_transmit() {
                self.forward_from_sender(m);
            }
        }
        if !self.s_conn.gone
            && self.sender.is_finished()
            && (self.sender.error().is_some() || !self.sender_may_transmit)
            && !(self.sender_lingers && self.sender.error().is_none())
        {
            self.disconnect(SENDER);
        }
        if !self.r_conn.gone && self.receiver.is_finished() {
            self.disconnect(RECEIVER);
        }
    }

    fn disconnect(&mut self, conn: ConnId) {
        let c = if conn == SENDER {
            &mut self.s_conn
        } else {
            &mut self.r_conn
        };
        if c.gone {
            return;
        }
        c.gone = true;
        c.inbox.clear();
        c.close = None;
        self.relay.handle_disconnect(self.now(), conn);
        self.drain_relay();
    }

    fn forward_from_sender(&mut self, m: WireMessage) {
        if !self.forwarding {
            self.relay.handle_message(self.now(), SENDER, m);
            self.drain_relay();
            return;
        }
        let (kind, bytes): (u8, &[u8]) = match &m {
            WireMessage::Text(t) => (b't', t.as_bytes()),
            WireMessage::Binary(b) => (b'b', b),
        };
        self.stream.update([kind]);
        self.stream.update((bytes.len() as u64).to_be_bytes());
        self.stream.update(bytes);
        self.stream_len += 1;
        if self.r_conn.gone {
            return;
        }
        let i = self.forwarded[0];
        self.forwarded[0] += 1;
        let out = match self.tamper.as_mut() {
            Some(t) => t(Direction::ToReceiver, i, m),
            None => vec![m],
        };
        self.r_conn.inbox.extend(out);
    }

    fn forward_from_receiver(&mut self, m: WireMessage) {
        if self.receiver_hello_sent {
            self.receiver_sent.push(m.clone());
        }
        self.receiver_hello_sent = true;
        if !self.forwarding {
            self.relay.handle_message(self.now(), RECEIVER, m);
            self.drain_relay();
            return;
        }
        if self.s_conn.gone {
            return;
        }
        let i = self.forwarded[1];
        self.forwarded[1] += 1;
        let out = match self.tamper.as_mut() {
            Some(t) => t(Direction::ToSender, i, m),
            None => vec![m],
        };
        self.s_conn.inbox.extend(out);
    }

    fn drain_relay(&mut self) {
        while let Some(o) = self.relay.poll_output() {
            self.relay_outputs.push(o.clone());
            match o {
                RelayOutput::Send { conn, msg } => {
                    if let Some(c) = self.conn_mut(conn) {
                        c.inbox.push_back(msg);
                    }
                }
                RelayOutput::Paired { .. } => self.forwarding = true,
                RelayOutput::Close { conn, code, reason } => {
                    if let Some(c) = self.conn_mut(conn) {
                        c.close = Some((Some(code), reason.into_owned()));
                    }
                }
                RelayOutput::Abort { conn } => {
                    if let Some(c) = self.conn_mut(conn) {
                        c.inbox.clear();
                        c.close = Some((None, String::new()));
                    }
                }
            }
        }
        while self.relay.poll_event().is_some() {}
    }

    fn conn_mut(&mut self, conn: ConnId) -> Option<&mut Conn> {
        let c = match conn {
            SENDER => &mut self.s_conn,
            RECEIVER => &mut self.r_conn,
            _ => return None,
        };
        (!c.gone).then_some(c)
    }

    fn drain_sender(&mut self) {
        self.sender_may_transmit = true;
        while let Some(r) = self.sender.poll_io() {
            let file = match r {
                sender::IoRequest::Read { file, .. } | sender::IoRequest::Close { file } => file,
            };
            self.io_polled += 1;
            self.sender_io
                .entry(file)
                .or_default()
                .push_back((self.io_polled, r));
        }
        while let Some(j) = self.sender.poll_job() {
            self.sender_jobs.push(j);
        }
        while let Some(e) = self.sender.poll_event() {
            self.sender_events.push(e);
        }
    }

    fn drain_receiver(&mut self) {
        loop {
            let mut any = false;
            while let Some(m) = self.receiver.poll_transmit() {
                any = true;
                self.forward_from_receiver(m);
            }
            while let Some(r) = self.receiver.poll_io() {
                any = true;
                // `Sync` gets a queue of its own.
                let file = request_file(&r).unwrap_or(usize::MAX);
                self.receiver_log.push(r.clone());
                self.io_polled += 1;
                self.receiver_io
                    .entry(file)
                    .or_default()
                    .push_back((self.io_polled, r));
            }
            while let Some(j) = self.receiver.poll_job() {
                any = true;
                self.receiver_jobs.push(j);
            }
            while let Some(e) = self.receiver.poll_event() {
                any = true;
                self.receiver_events.push(e);
            }
            if self.receiver.take_offer().is_some() {
                any = true;
                let _ = self.receiver.consent(self.now(), self.consent);
            }
            if !any {
                break;
            }
        }
        if self.receiver.error().is_some() && self.receiver_error_at.is_none() {
            self.receiver_error_at = Some(self.receiver_log.len());
        }
    }
}

/// A receiver with an in-memory output directory, for transcripts: feed it messages one
/// at a time and it runs every job and file access to completion (in the order polled)
/// before the next, logging everything it asked for.
pub struct ReceiverDriver {
    /// The state machine.
    pub receiver: Receiver,
    /// Its files.
    pub fs: ReceiverFs,
    /// The simulated clock.
    pub now: Instant,
    /// Every file access it asked for, in order.
    pub io_log: Vec<receiver::IoRequest>,
    /// How many of [`io_log`](Self::io_log) came before it failed.
    pub io_before_error: Option<usize>,
    /// Every event, in order.
    pub events: Vec<Event>,
    /// Every message it sent, `hello` first.
    pub sent: Vec<WireMessage>,
}

impl std::fmt::Debug for ReceiverDriver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReceiverDriver")
            .field("receiver", &self.receiver)
            .field("io_log", &self.io_log)
            .field("events", &self.events)
            .finish_non_exhaustive()
    }
}

impl ReceiverDriver {
    /// A receiver over `disk`.
    pub fn new(config: ReceiverConfig, secrets: &Secrets, disk: ReceiverDisk) -> ReceiverDriver {
        let now = Instant::now();
        let mut d = ReceiverDriver {
            receiver: Receiver::new(now, config, secrets),
            fs: ReceiverFs::new(disk),
            now,
            io_log: Vec::new(),
            io_before_error: None,
            events: Vec::new(),
            sent: Vec::new(),
        };
        d.settle();
        d
    }

    /// Deliver one message, then run everything it caused.
    ///
    /// # Errors
    /// The receiver's sticky error afterwards, if any.
    pub fn feed(&mut self, msg: WireMessage) -> Result<(), Error> {
        let _ = self.receiver.handle_message(self.now, msg);
        self.settle();
        self.result()
    }

    /// Deliver messages in order, stopping at the first error.
    ///
    /// # Errors
    /// The receiver's error.
    pub fn feed_all(&mut self, msgs: impl IntoIterator<Item = WireMessage>) -> Result<(), Error> {
        for m in msgs {
            self.feed(m)?;
        }
        Ok(())
    }

    /// Let `d` pass and tell the receiver.
    ///
    /// # Errors
    /// The receiver's error afterwards.
    pub fn advance(&mut self, d: Duration) -> Result<(), Error> {
        self.now += d;
        let _ = self.receiver.handle_timeout(self.now);
        self.settle();
        self.result()
    }

    /// The connection closed.
    ///
    /// # Errors
    /// The receiver's error afterwards.
    pub fn close(&mut self, code: Option<u16>, reason: &str) -> Result<(), Error> {
        let _ = self.receiver.handle_close(self.now, code, reason);
        self.settle();
        self.result()
    }

    /// The sticky error, as a result.
    ///
    /// # Errors
    /// The receiver's error.
    pub fn result(&self) -> Result<(), Error> {
        self.receiver.error().map_or(Ok(()), |e| Err(e.clone()))
    }

    /// Run jobs and file accesses until the receiver asks for nothing more.
    pub fn settle(&mut self) {
        loop {
            let mut any = false;
            while let Some(m) = self.receiver.poll_transmit() {
                self.sent.push(m);
            }
            while let Some(e) = self.receiver.poll_event() {
                self.events.push(e);
            }
            if let Some(job) = self.receiver.poll_job() {
                any = true;
                let _ = self.receiver.handle_job(self.now, job.run());
            }
            if let Some(req) = self.receiver.poll_io() {
                any = true;
                self.io_log.push(req.clone());
                let done = self.fs.execute(&req);
                let _ = self.receiver.handle_io(self.now, done);
            }
            if self.receiver.error().is_some() && self.io_before_error.is_none() {
                self.io_before_error = Some(self.io_log.len());
            }
            if !any {
                while let Some(e) = self.receiver.poll_event() {
                    self.events.push(e);
                }
                while let Some(m) = self.receiver.poll_transmit() {
                    self.sent.push(m);
                }
                return;
            }
        }
    }
}
