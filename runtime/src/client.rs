//! `send` and `receive`: list or prepare files, derive the secrets, and run one session
//! per connection of the code, all at once.

use std::future::Future;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::future::{select, Either};
use futures_util::stream::FuturesUnordered;
use futures_util::{StreamExt, TryStreamExt};
use p2p_copy_core::code::PakeCode;
use p2p_copy_core::metadata::{Attrs, TreeMetadata};
use p2p_copy_core::parallel::{session_codes, split_by_size};
use p2p_copy_core::receiver::{Receiver, ReceiverConfig};
use p2p_copy_core::reconnect::{ReceiverReconnect, ReconnectStatus, SenderReconnect};
use p2p_copy_core::relay::per_address_limit;
use p2p_copy_core::sender::{SendFile, Sender, SenderConfig};
use p2p_copy_core::Secrets;

use crate::consent::ConsentGate;
use crate::drive::{Driver, EventSink};
use crate::files_receive::ReceiveFiles;
use crate::files_send::{Listed, SendFiles};
use crate::io_worker::IoWorker;
use crate::pake_conn;
use crate::paths::Paths;
use crate::quic_tasks::{OnTasks, QuicTasks};
use crate::reconnect::{self, Attempts};
use crate::rt::Rt;
use crate::source::{self, ListOptions, Source};
use crate::transport::{self, AlreadyPaired, MessageTransport};
use crate::{ClientConfig, SendOptions, SessionEvent, Summary, TransferError};
use p2p_copy_core::wire::Role;

/// Derive each session's secrets on the blocking pool. With encryption every
/// derivation is Argon2id with 32 MiB, so only a few run at once.
async fn derive_all<R: Rt>(
    rt: &R,
    codes: Vec<String>,
    encrypt: bool,
) -> Result<Vec<Secrets>, TransferError> {
    let at_once = match encrypt {
        true => std::thread::available_parallelism()
            .map_or(2, |n| n.get())
            .min(4),
        false => codes.len().max(1),
    };
    futures_util::stream::iter(codes)
        .map(|code| rt.spawn_blocking(move || Secrets::derive(&code, encrypt)))
        .buffered(at_once)
        .try_collect()
        .await
        .map_err(TransferError::Session)
}

/// What to send: the files and directories listed, or standard input or a text.
async fn list<R: Rt>(
    rt: &R,
    paths: Vec<PathBuf>,
    opts: &SendOptions,
) -> Result<source::Listing, TransferError> {
    if let Some(pipe) = &opts.pipe {
        return source::piped(pipe);
    }
    let list_opts = ListOptions::from(opts);
    rt.spawn_blocking(move || source::list(&paths, list_opts))
        .await
}

fn nonce_seed() -> Result<[u8; 32], TransferError> {
    reconnect::random()
}

/// Send files and directories (see the crate docs for naming and ordering).
///
/// # Errors
/// [`TransferError::Source`] for a path that cannot be sent, [`TransferError::Connect`]
/// when the relay cannot be used, [`TransferError::Session`] when a session fails.
pub async fn send<R: Rt>(
    rt: R,
    cfg: ClientConfig,
    paths: Vec<PathBuf>,
    opts: SendOptions,
    on_event: impl FnMut(SessionEvent) + Send + 'static,
) -> Result<Summary, TransferError> {
    let tasks = QuicTasks::default();
    let rt = OnTasks::new(rt, &tasks);
    tasks.run(send_on(rt, cfg, paths, opts, on_event)).await
}

/// [`send`] on a runtime that runs quinn's tasks in this future.
async fn send_on<R: Rt>(
    rt: R,
    cfg: ClientConfig,
    paths: Vec<PathBuf>,
    opts: SendOptions,
    on_event: impl FnMut(SessionEvent) + Send + 'static,
) -> Result<Summary, TransferError> {
    let start = Instant::now();
    let pake = pake_code(&cfg)?;
    let codes = match pake {
        Some(_) => vec![String::new()],
        None => session_codes(&cfg.code).map_err(TransferError::Session)?,
    };
    let n = codes.len();
    let listing = list(&rt, paths, &opts).await?;
    let sources = listing.files;
    if sources.is_empty() {
        return Err(TransferError::Source(
            "nothing to send: the given paths hold no regular files".into(),
        ));
    }
    let sizes: Vec<u64> = sources.iter().map(|s| s.file.size).collect();
    let groups = split_by_size(&sizes, codes.len());
    let events: EventSink = Arc::new(Mutex::new(on_event));
    if let Some(code) = pake {
        let picked: Vec<Source> = sources.clone();
        let meet = Meet::Room(&code);
        let meta = tree_metadata(&cfg, &picked, &listing.dirs);
        let done = send_session(
            rt.clone(),
            &cfg,
            0,
            meet,
            (picked, meta),
            opts.clone(),
            events,
        )
        .await?;
        let mut sum = total(&[done], start);
        sum.excluded = listing.excluded;
        let mut not_delivered = listing.failed;
        not_delivered.append(&mut sum.not_delivered);
        sum.not_delivered = not_delivered;
        return Ok(sum);
    }
    let secrets = derive_all(&rt, codes, cfg.encrypt).await?;
    let sessions = groups
        .into_iter()
        .zip(secrets)
        .enumerate()
        .map(|(i, (group, secrets))| {
            let picked: Vec<Source> = group.into_iter().map(|k| sources[k].clone()).collect();
            // The first session carries the directories.
            let dirs = if i == 0 { &listing.dirs[..] } else { &[] };
            let meta = tree_metadata(&cfg, &picked, dirs);
            send_session(
                rt.clone(),
                &cfg,
                i,
                Meet::Code(secrets),
                (picked, meta),
                opts.clone(),
                events.clone(),
            )
        });
    let done = join_sessions(&rt, sessions)
        .await
        .map_err(|e| explain_limit(e, n))?;
    let mut sum = total(&done, start);
    sum.excluded = listing.excluded;
    let mut not_delivered = listing.failed;
    not_delivered.append(&mut sum.not_delivered);
    sum.not_delivered = not_delivered;
    Ok(sum)
}

/// Where the two sides of a session meet, again on every reconnect.
enum Meet<'a> {
    /// At the relay, by a v1 code: the same secrets on every connection.
    Code(Secrets),
    /// In the room of a code like `7-guitar-rocket`: a fresh PAKE on every connection,
    /// whose key encrypts that connection's session.
    Room(&'a PakeCode),
}

impl Meet<'_> {
    /// The code the reconnect proofs are bound to: the normal form of a PAKE code, so
    /// that both sides agree however the user typed it.
    fn proof_code(&self, cfg: &ClientConfig) -> String {
        match self {
            Meet::Code(_) => cfg.code.clone(),
            Meet::Room(code) => code.to_string(),
        }
    }
}

async fn send_session<R: Rt>(
    rt: R,
    cfg: &ClientConfig,
    index: usize,
    meet: Meet<'_>,
    (picked, metadata): (Vec<Source>, Option<TreeMetadata>),
    opts: SendOptions,
    events: EventSink,
) -> Result<Summary, TransferError> {
    let (files, locals) = split_sources(picked);
    let mut attempts = Attempts::new(&rt, cfg, index, events)?;
    let (ticket, binding) = reconnect::ticket(&meet.proof_code(cfg))?;
    // Standard input is read once: a lost connection cannot be resumed.
    let mut mode = (attempts.enabled() && opts.pipe.is_none()).then(|| SenderReconnect::Offer {
        ticket,
        binding: binding.clone(),
    });
    loop {
        let cfg = attempts.config(cfg);
        let (files, locals) = (files.clone(), locals.clone());
        let run = SendRun {
            index,
            opts: opts.clone(),
            events: attempts.sink(),
            files,
            locals,
            mode: mode.clone(),
            metadata: metadata.clone(),
        };
        let (result, status) = send_attempt(&rt, &cfg, &meet, run).await;
        match result {
            Ok(mut done) => {
                done.bytes = attempts.moved();
                return Ok(done);
            }
            Err(e) => attempts.after_failure(e, status).await?,
        }
        mode = Some(SenderReconnect::Resume {
            binding: binding.clone(),
            attempt: attempts.number(),
            nonce: reconnect::random()?,
        });
    }
}

/// What one attempt of a sending session needs besides its connection and secrets.
struct SendRun {
    index: usize,
    opts: SendOptions,
    events: EventSink,
    files: Vec<SendFile>,
    locals: Vec<Listed>,
    mode: Option<SenderReconnect>,
    metadata: Option<TreeMetadata>,
}

/// Connect (and, in a room, run the PAKE), then run one session on the connection.
async fn send_attempt<R: Rt>(
    rt: &R,
    cfg: &ClientConfig,
    meet: &Meet<'_>,
    a: SendRun,
) -> (Result<Summary, TransferError>, ReconnectStatus) {
    // A fresh nonce seed for every session: with a v1 code the key stays the same.
    let seed = match nonce_seed() {
        Ok(s) => s,
        Err(e) => return (Err(e), ReconnectStatus::Off),
    };
    let run = |secrets| Run {
        index: a.index,
        secrets,
        seed,
        opts: a.opts,
        events: a.events,
        metadata: a.metadata,
    };
    match meet {
        Meet::Code(secrets) => match open_relay(rt, cfg, Role::Sender).await {
            Ok(conn) => {
                let run = run(secrets);
                Box::pin(drive_send(
                    rt.clone(),
                    cfg,
                    run,
                    a.files,
                    a.locals,
                    a.mode,
                    conn,
                ))
                .await
            }
            Err(e) => (Err(e), ReconnectStatus::Off),
        },
        Meet::Room(code) => match open_room(rt, cfg, Role::Sender, code).await {
            Ok((conn, secrets)) => {
                let run = run(&secrets);
                Box::pin(drive_send(
                    rt.clone(),
                    cfg,
                    run,
                    a.files,
                    a.locals,
                    a.mode,
                    conn,
                ))
                .await
            }
            Err(e) => (Err(e), ReconnectStatus::Off),
        },
    }
}

/// What one session run needs besides its connection and files.
struct Run<'a> {
    index: usize,
    secrets: &'a Secrets,
    seed: [u8; 32],
    opts: SendOptions,
    events: EventSink,
    /// What the receiver may keep of the files and directories (extension `metadata`).
    metadata: Option<TreeMetadata>,
}

async fn drive_send<R: Rt, T: MessageTransport>(
    rt: R,
    cfg: &ClientConfig,
    run: Run<'_>,
    files: Vec<SendFile>,
    locals: Vec<Listed>,
    reconnect: Option<SenderReconnect>,
    conn: T,
) -> (Result<Summary, TransferError>, ReconnectStatus) {
    let Run {
        index,
        secrets,
        seed,
        opts,
        events,
        metadata,
    } = run;
    let config = SenderConfig {
        compress: opts.compress,
        compress_level: opts.compress_level,
        resume: opts.resume,
        ready_timeout: cfg.pair_timeout,
        confirm: true,
        consent: true,
        report_timeout: cfg.idle_timeout,
        skip_errors: opts.skip_errors,
        direct: p2p_copy_core::direct::offers(&direct_config(cfg)),
        reconnect,
        metadata,
        fast: cfg.fast_data,
        ..SenderConfig::default()
    };
    let sender =
        match Sender::new(Instant::now(), config, secrets, files, seed).map_err(|e| match e {
            p2p_copy_core::Error::Config(m) => TransferError::Source(m),
            other => TransferError::Session(other),
        }) {
            Ok(s) => s,
            Err(e) => return (Err(e), ReconnectStatus::Off),
        };
    let files = match IoWorker::start(SendFiles::new(locals)).map_err(worker_error) {
        Ok(f) => f,
        Err(e) => return (Err(e), ReconnectStatus::Off),
    };
    let (result, sender) = Driver::new(rt, sender, conn, files, cfg.idle_timeout, index, events)
        .paced(cfg.limit_rate.clone())
        .run()
        .await;
    (result, sender.reconnect_status())
}

/// Receive into `out_dir`, created if missing.
///
/// # Errors
/// [`TransferError::Output`] when the directory cannot be used,
/// [`TransferError::Connect`] when the relay cannot be used, [`TransferError::Session`]
/// when a session fails.
pub async fn receive<R: Rt>(
    rt: R,
    cfg: ClientConfig,
    out_dir: PathBuf,
    on_event: impl FnMut(SessionEvent) + Send + 'static,
) -> Result<Summary, TransferError> {
    let tasks = QuicTasks::default();
    let rt = OnTasks::new(rt, &tasks);
    tasks.run(receive_on(rt, cfg, out_dir, on_event)).await
}

/// [`receive`] on a runtime that runs quinn's tasks in this future.
async fn receive_on<R: Rt>(
    rt: R,
    cfg: ClientConfig,
    out_dir: PathBuf,
    on_event: impl FnMut(SessionEvent) + Send + 'static,
) -> Result<Summary, TransferError> {
    let start = Instant::now();
    let pake = pake_code(&cfg)?;
    let codes = match pake {
        Some(_) => Vec::new(),
        None => session_codes(&cfg.code).map_err(TransferError::Session)?,
    };
    let n = codes.len();
    if cfg.to_stdout && n > 1 {
        return Err(TransferError::Session(p2p_copy_core::Error::Config(
            "standard output takes one file: a parallel code n=<N>=n… cannot write to it".into(),
        )));
    }
    if !cfg.to_stdout {
        let dir = out_dir.clone();
        rt.spawn_blocking(move || prepare_out_dir(&dir)).await?;
    }
    let inbox = Inbox::new(&cfg, out_dir, n);
    if let Some(code) = pake {
        let events: EventSink = Arc::new(Mutex::new(on_event));
        let meet = Meet::Room(&code);
        let done = receive_session(rt, &cfg, 0, meet, inbox, events).await?;
        return Ok(total(&[done], start));
    }
    let secrets = derive_all(&rt, codes, cfg.encrypt).await?;
    let events: EventSink = Arc::new(Mutex::new(on_event));
    let sessions = secrets.into_iter().enumerate().map(|(i, secrets)| {
        let meet = Meet::Code(secrets);
        receive_session(rt.clone(), &cfg, i, meet, inbox.clone(), events.clone())
    });
    let done = join_sessions(&rt, sessions)
        .await
        .map_err(|e| explain_limit(e, n))?;
    Ok(total(&done, start))
}

/// How long the other sessions of a parallel code get, once one failed, to end too.
const SETTLE: Duration = Duration::from_millis(500);

/// Run the sessions together; the first failure ends them all, after [`SETTLE`] for the
/// others to fail too. When they fail together (a refusal ends one session, its peer
/// leaving ends the others), the relay's refusal for its per-address limit is the error
/// reported, whichever arrived first.
async fn join_sessions<R: Rt>(
    rt: &R,
    sessions: impl IntoIterator<Item = impl Future<Output = Result<Summary, TransferError>>>,
) -> Result<Vec<Summary>, TransferError> {
    let mut pending: FuturesUnordered<_> = sessions
        .into_iter()
        .enumerate()
        .map(|(i, f)| async move { (i, f.await) })
        .collect();
    let mut done = vec![Summary::default(); pending.len()];
    let mut errors = Vec::new();
    let mut deadline: Option<Instant> = None;
    loop {
        let next = match deadline {
            None => pending.next().await,
            Some(d) => match select(pending.next(), Box::pin(rt.sleep_until(d))).await {
                Either::Left((next, _)) => next,
                Either::Right(_) => break,
            },
        };
        match next {
            None => break,
            Some((i, Ok(summary))) => done[i] = summary,
            Some((_, Err(e))) => {
                errors.push(e);
                deadline.get_or_insert_with(|| Instant::now() + SETTLE);
            }
        }
    }
    if errors.is_empty() {
        return Ok(done);
    }
    let refusal = errors
        .iter()
        .position(|e| matches!(e, TransferError::Connect(m) if per_address_limit(m).is_some()));
    Err(errors.swap_remove(refusal.unwrap_or(0)))
}

/// A refusal for the relay's per-address limit, with what it means for a parallel code
/// of `n` connections.
fn explain_limit(e: TransferError, n: usize) -> TransferError {
    match e {
        TransferError::Connect(msg) if n > 1 && per_address_limit(&msg).is_some() => {
            TransferError::Connect(format!(
                "{msg}; this code opens {n} connections on each side ({} when both sides \
                 share an address): use a code n=<N>=n… with a smaller N",
                2 * n
            ))
        }
        other => other,
    }
}

async fn receive_session<R: Rt>(
    rt: R,
    cfg: &ClientConfig,
    index: usize,
    meet: Meet<'_>,
    inbox: Inbox,
    events: EventSink,
) -> Result<Summary, TransferError> {
    let mut attempts = Attempts::new(&rt, cfg, index, events)?;
    // What went to standard output cannot be resumed.
    let mut mode = (attempts.enabled() && !cfg.to_stdout).then(|| ReceiverReconnect::Accept {
        code: meet.proof_code(cfg),
    });
    // The user answers once: a reconnect of an accepted transfer is not asked again.
    let mut inbox = inbox;
    // Every file is in place, but the sender may not know: the session's own summary.
    let mut finished: Option<Summary> = None;
    loop {
        let cfg = attempts.config(cfg);
        let (sink, mode_now) = (attempts.sink(), mode.clone());
        let (result, receiver) =
            receive_attempt(&rt, &cfg, index, &meet, inbox.clone(), sink, mode_now).await;
        let status = receiver
            .as_ref()
            .map_or(ReconnectStatus::Off, Receiver::reconnect_status);
        if let Some(next) = receiver.as_ref().and_then(Receiver::next_reconnect) {
            mode = Some(next);
            inbox.gate = None;
        }
        let failure = match result {
            Ok(done) => {
                let done = finished.take().unwrap_or(done);
                if !receiver.as_ref().is_some_and(Receiver::report_unconfirmed) {
                    return Ok(Summary {
                        bytes: attempts.moved(),
                        ..done
                    });
                }
                // The sender may have lost the report: reconnect so that it learns, from
                // the resume answer, that every file is here.
                finished = Some(done);
                TransferError::Session(p2p_copy_core::Error::ConnectionLost(
                    "every file is in place, but the connection ended before the sender \
                     said it got the delivery report"
                        .into(),
                ))
            }
            Err(e) => e,
        };
        if let Err(e) = attempts.after_failure(failure, status).await {
            let Some(done) = finished else {
                return Err(e);
            };
            log::warn!(
                "every file is in place, but the sender may not know it ({}): it may end \
                 with 'connection lost'",
                reconnect::strip_lost(&e)
            );
            return Ok(Summary {
                bytes: attempts.moved(),
                ..done
            });
        }
    }
}

/// Connect (and, in a room, run the PAKE), then run one receiving session on the
/// connection.
async fn receive_attempt<R: Rt>(
    rt: &R,
    cfg: &ClientConfig,
    index: usize,
    meet: &Meet<'_>,
    inbox: Inbox,
    sink: EventSink,
    mode: Option<ReceiverReconnect>,
) -> (Result<Summary, TransferError>, Option<Receiver>) {
    let rt = rt.clone();
    match meet {
        Meet::Code(secrets) => match open_relay(&rt, cfg, Role::Receiver).await {
            Ok(conn) => {
                Box::pin(drive_receive(
                    rt, cfg, index, secrets, inbox, sink, mode, conn,
                ))
                .await
            }
            Err(e) => (Err(e), None),
        },
        Meet::Room(code) => match open_room(&rt, cfg, Role::Receiver, code).await {
            Ok((conn, secrets)) => {
                Box::pin(drive_receive(
                    rt, cfg, index, &secrets, inbox, sink, mode, conn,
                ))
                .await
            }
            Err(e) => (Err(e), None),
        },
    }
}

#[allow(clippy::too_many_arguments)]
async fn drive_receive<R: Rt, T: MessageTransport>(
    rt: R,
    cfg: &ClientConfig,
    index: usize,
    secrets: &Secrets,
    inbox: Inbox,
    events: EventSink,
    reconnect: Option<ReceiverReconnect>,
    conn: T,
) -> (Result<Summary, TransferError>, Option<Receiver>) {
    let config = ReceiverConfig {
        manifest_timeout: cfg.pair_timeout,
        idle_timeout: cfg.idle_timeout,
        direct: p2p_copy_core::direct::offers(&direct_config(cfg)),
        consent: inbox.gate.is_some(),
        keep_existing: cfg.keep_existing,
        windows_names: cfg.windows_names,
        reconnect,
        metadata: cfg.metadata,
        single_file: cfg.to_stdout,
        fast: cfg.fast_data,
        ..ReceiverConfig::default()
    };
    let receiver = Receiver::new(Instant::now(), config, secrets);
    let files = match cfg.to_stdout {
        true => ReceiveFiles::to_stdout(Box::new(std::io::stdout())),
        false => ReceiveFiles::new(inbox.dir),
    };
    let files = match IoWorker::start(files).map_err(worker_error) {
        Ok(f) => f,
        Err(e) => return (Err(e), None),
    };
    let (result, receiver) =
        Driver::new(rt, receiver, conn, files, cfg.idle_timeout, index, events)
            .paced(cfg.limit_rate.clone())
            .with_consent(inbox.gate)
            .run()
            .await;
    (result, Some(receiver))
}

/// Connect to the relay, with the direct path beside it.
async fn open_relay<R: Rt>(
    rt: &R,
    cfg: &ClientConfig,
    role: Role,
) -> Result<Paths<R, transport::WsTransport>, TransferError> {
    let opening = Instant::now();
    let ws = transport::connect(
        rt,
        &cfg.server,
        cfg.ca_file.as_deref(),
        cfg.proxy.as_deref(),
        cfg.relay_token.as_deref(),
        cfg.pair_timeout,
    )
    .await?;
    Ok(with_direct_path(
        rt,
        cfg,
        role,
        transport::WsTransport(ws),
        opening.elapsed(),
    ))
}

/// The relay connection with the direct path beside it. After a PAKE the session is
/// encrypted with its key, so the candidates and fingerprints of the direct path travel
/// sealed under the PAKE-confirmed key.
fn with_direct_path<R: Rt, T: MessageTransport>(
    rt: &R,
    cfg: &ClientConfig,
    role: Role,
    conn: T,
    opened_in: Duration,
) -> Paths<R, T> {
    Paths::new(
        rt.clone(),
        role,
        cfg.direct.clone(),
        cfg.server.clone(),
        conn,
        opened_in,
    )
}

/// The code of a PAKE configuration, read and checked.
fn pake_code(cfg: &ClientConfig) -> Result<Option<PakeCode>, TransferError> {
    if !cfg.pake {
        return Ok(None);
    }
    PakeCode::parse(&cfg.code)
        .map(Some)
        .map_err(|e| TransferError::Session(p2p_copy_core::Error::Config(e.0)))
}

/// Meet in the room of a code like `7-guitar-rocket` and run the PAKE: the connection,
/// with the direct path beside it, and the secrets of the key it gave.
async fn open_room<R: Rt>(
    rt: &R,
    cfg: &ClientConfig,
    role: Role,
    code: &PakeCode,
) -> Result<(Paths<R, AlreadyPaired<transport::WsTransport>>, Secrets), TransferError> {
    let (conn, secrets, opened_in) =
        pake_conn::open_room(rt, cfg, role, code, nonce_seed()?).await?;
    Ok((with_direct_path(rt, cfg, role, conn, opened_in), secrets))
}

fn direct_config(cfg: &ClientConfig) -> p2p_copy_core::direct::DirectConfig {
    p2p_copy_core::direct::DirectConfig {
        mode: cfg.direct.mode,
        ..Default::default()
    }
}

/// The one session of a plain code (a parallel code is refused: its sessions need one
/// connection each).
fn single_code(code: &str) -> Result<String, TransferError> {
    let mut codes = session_codes(code).map_err(TransferError::Session)?;
    if codes.len() != 1 {
        return Err(TransferError::Session(p2p_copy_core::Error::Config(
            "a parallel code needs one connection per session".into(),
        )));
    }
    Ok(codes.remove(0))
}

/// Send over a connection that already reaches the receiver (a direct QUIC stream): one
/// session, with the relay's part (pairing) taken as done. `cfg.server` is not used.
#[doc(hidden)]
pub async fn send_direct<R: Rt, T: MessageTransport>(
    rt: R,
    cfg: ClientConfig,
    conn: T,
    paths: Vec<PathBuf>,
    opts: SendOptions,
    on_event: impl FnMut(SessionEvent) + Send + 'static,
) -> Result<Summary, TransferError> {
    let start = Instant::now();
    let code = single_code(&cfg.code)?;
    let listing = list(&rt, paths, &opts).await?;
    let metadata = tree_metadata(&cfg, &listing.files, &listing.dirs);
    let (files, locals) = split_sources(listing.files);
    let secrets = derive_all(&rt, vec![code], cfg.encrypt).await?.remove(0);
    let seed = nonce_seed()?;
    let events: EventSink = Arc::new(Mutex::new(on_event));
    let conn = AlreadyPaired::sender(conn);
    let run = Run {
        index: 0,
        secrets: &secrets,
        seed,
        opts,
        events,
        metadata,
    };
    let done = drive_send(rt, &cfg, run, files, locals, None, conn)
        .await
        .0?;
    Ok(total(&[done], start))
}

/// Receive over a connection that already reaches the sender (a direct QUIC stream):
/// one session, with the relay's part (pairing) taken as done. `cfg.server` is not used.
#[doc(hidden)]
pub async fn receive_direct<R: Rt, T: MessageTransport>(
    rt: R,
    cfg: ClientConfig,
    conn: T,
    out_dir: PathBuf,
    on_event: impl FnMut(SessionEvent) + Send + 'static,
) -> Result<Summary, TransferError> {
    let start = Instant::now();
    let code = single_code(&cfg.code)?;
    let dir = out_dir.clone();
    rt.spawn_blocking(move || prepare_out_dir(&dir)).await?;
    let secrets = derive_all(&rt, vec![code], cfg.encrypt).await?.remove(0);
    let events: EventSink = Arc::new(Mutex::new(on_event));
    let conn = AlreadyPaired::receiver(conn);
    let inbox = Inbox::new(&cfg, out_dir, 1);
    let done = drive_receive(rt, &cfg, 0, &secrets, inbox, events, None, conn)
        .await
        .0?;
    Ok(total(&[done], start))
}

/// What the sender announces of each listed file, and what its file access checks.
fn split_sources(sources: Vec<Source>) -> (Vec<SendFile>, Vec<Listed>) {
    sources
        .into_iter()
        .map(|s| {
            let listed = Listed {
                path: s.local,
                size: s.file.size,
                modified: s.modified,
                pipe: s.pipe,
            };
            (s.file, listed)
        })
        .unzip()
}

/// With [`ClientConfig::metadata`], what the receiver may keep of `sources` and of the
/// directories `dirs`.
fn tree_metadata(
    cfg: &ClientConfig,
    sources: &[Source],
    dirs: &[(String, Attrs)],
) -> Option<TreeMetadata> {
    // Standard input and texts have no metadata to keep.
    let on = cfg.metadata && sources.iter().all(|s| s.pipe.is_none());
    on.then(|| TreeMetadata {
        files: sources.iter().map(|s| s.attrs).collect(),
        dirs: dirs.to_vec(),
    })
}

/// Where the sessions of one transfer receive, and the question they share.
#[derive(Clone)]
struct Inbox {
    dir: PathBuf,
    gate: Option<Arc<ConsentGate>>,
}

impl Inbox {
    /// For `sessions` sessions into `dir`, asking the user when `cfg` says so.
    fn new(cfg: &ClientConfig, dir: PathBuf, sessions: usize) -> Inbox {
        let gate = cfg
            .consent
            .clone()
            .map(|ask| ConsentGate::new(ask, dir.clone(), sessions.max(1)));
        Inbox { dir, gate }
    }
}

fn prepare_out_dir(dir: &std::path::Path) -> Result<(), TransferError> {
    let shown = dir.display();
    std::fs::create_dir_all(dir).map_err(|e| {
        TransferError::Output(format!("cannot create the output directory {shown}: {e}"))
    })?;
    let meta = std::fs::metadata(dir).map_err(|e| {
        TransferError::Output(format!("cannot use the output directory {shown}: {e}"))
    })?;
    if !meta.is_dir() {
        return Err(TransferError::Output(format!("{shown} is not a directory")));
    }
    Ok(())
}

fn worker_error(e: std::io::Error) -> TransferError {
    TransferError::Session(p2p_copy_core::Error::Io {
        file: None,
        reason: format!("cannot start the file worker thread: {e}"),
    })
}

fn total(parts: &[Summary], start: Instant) -> Summary {
    let mut sum = Summary::default();
    for p in parts {
        sum.add(p);
    }
    sum.elapsed = start.elapsed();
    sum
}
