//! Load generator of the p2p-copy benchmark (`bench/run.py`): many sender/receiver pairs
//! at once through one relay, all in this process, each pair moving a file of its own;
//! then every output is checked byte for byte.
//!
//! ```text
//! p2p-copy-bench load --server ws://127.0.0.1:PORT [--pairs 200] [--mib 16] --dir DIR
//! ```
//!
//! The last line of output is machine-readable:
//! `RESULT pairs=N ok=N identical=N bytes=B secs=S` (bytes moved by the pairs that
//! finished, seconds from the first pair's start to the last pair's end). The exit code
//! is 0 only when every pair finished and every output is identical.

#![forbid(unsafe_code)]

use std::fs::File;
use std::io::{self, BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::OnceLock;
use std::time::{Duration, Instant, SystemTime};

use p2p_copy_smol::{receive, send, ClientConfig, DirectMode, SendOptions, Summary, TransferError};

const USAGE: &str =
    "usage: p2p-copy-bench load --server ws://127.0.0.1:PORT [--pairs 200] [--mib 16] --dir DIR [--timeout SECS (120)]";

/// Block size for generating and checking files.
const BLOCK: usize = 1 << 20;

struct Args {
    server: String,
    pairs: usize,
    mib: usize,
    dir: PathBuf,
    timeout: Duration,
}

fn parse_args() -> Result<Args, String> {
    let mut it = std::env::args().skip(1);
    if it.next().as_deref() != Some("load") {
        return Err(USAGE.into());
    }
    let mut server = None;
    let mut pairs = 200;
    let mut mib = 16;
    let mut dir = None;
    let mut timeout = Duration::from_secs(120);
    while let Some(flag) = it.next() {
        let value = it
            .next()
            .ok_or_else(|| format!("{flag} needs a value\n{USAGE}"))?;
        let number = || {
            value
                .parse::<usize>()
                .ok()
                .filter(|n| *n > 0)
                .ok_or_else(|| format!("{flag}: `{value}` is not a positive whole number"))
        };
        match flag.as_str() {
            "--server" => server = Some(value.clone()),
            "--pairs" => pairs = number()?,
            "--mib" => mib = number()?,
            "--dir" => dir = Some(PathBuf::from(&value)),
            "--timeout" => timeout = Duration::from_secs(number()? as u64),
            _ => return Err(format!("unknown option {flag}\n{USAGE}")),
        }
    }
    Ok(Args {
        server: server.ok_or_else(|| format!("--server is required\n{USAGE}"))?,
        pairs,
        mib,
        dir: dir.ok_or_else(|| format!("--dir is required\n{USAGE}"))?,
        timeout,
    })
}

/// The content of one pair's file: an xorshift64* stream seeded by the pair's index, so
/// that files differ between pairs and a mix-up between pairs cannot pass the check.
struct Content(u64);

impl Content {
    fn new(pair: usize) -> Content {
        Content(0x9E37_79B9_7F4A_7C15 ^ (pair as u64 + 1).wrapping_mul(0xD1B5_4A32_D192_ED03))
    }

    fn fill(&mut self, buf: &mut [u8]) {
        for chunk in buf.chunks_mut(8) {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            let v = self.0.wrapping_mul(0x2545_F491_4F6C_DD1D).to_le_bytes();
            chunk.copy_from_slice(&v[..chunk.len()]);
        }
    }
}

fn source_name(pair: usize) -> String {
    format!("pair-{pair:04}.bin")
}

fn write_source(path: &Path, pair: usize, len: usize) -> io::Result<()> {
    let mut content = Content::new(pair);
    let mut out = BufWriter::with_capacity(BLOCK, File::create(path)?);
    let mut buf = vec![0u8; BLOCK];
    let mut left = len;
    while left > 0 {
        let n = left.min(BLOCK);
        content.fill(&mut buf[..n]);
        out.write_all(&buf[..n])?;
        left -= n;
    }
    out.flush()
}

/// Whether `path` holds exactly pair `pair`'s content of `len` bytes.
fn matches(path: &Path, pair: usize, len: usize) -> io::Result<bool> {
    let mut file = File::open(path)?;
    if file.metadata()?.len() != len as u64 {
        return Ok(false);
    }
    let mut content = Content::new(pair);
    let mut want = vec![0u8; BLOCK];
    let mut got = vec![0u8; BLOCK];
    let mut left = len;
    while left > 0 {
        let n = left.min(BLOCK);
        content.fill(&mut want[..n]);
        file.read_exact(&mut got[..n])?;
        if want[..n] != got[..n] {
            return Ok(false);
        }
        left -= n;
    }
    Ok(true)
}

/// Run `work(pair)` for every pair on all cores.
fn for_all_pairs<T: Send>(pairs: usize, work: impl Fn(usize) -> T + Sync) -> Vec<T> {
    let threads = std::thread::available_parallelism().map_or(2, |n| n.get());
    let work = &work;
    let mut out: Vec<(usize, T)> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                s.spawn(move || {
                    (t..pairs)
                        .step_by(threads)
                        .map(|i| (i, work(i)))
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().expect("worker thread panicked"))
            .collect()
    });
    out.sort_by_key(|(i, _)| *i);
    out.into_iter().map(|(_, v)| v).collect()
}

/// When the pairs started, for the failure reports.
static START: OnceLock<Instant> = OnceLock::new();

/// Wait for both sides of one pair. When one side fails, report it at once and stop the
/// other side, which would otherwise wait for its lost peer until the pairing timeout.
async fn pair_outcome(
    i: usize,
    mut sending: smol::Task<Result<Summary, TransferError>>,
    mut receiving: smol::Task<Result<Summary, TransferError>>,
) -> Result<(), String> {
    let first = smol::future::race(async { ("sender", (&mut sending).await) }, async {
        ("receiver", (&mut receiving).await)
    })
    .await;
    let (side, result) = match first {
        ("sender", Ok(_)) => ("receiver", receiving.await),
        ("receiver", Ok(_)) => ("sender", sending.await),
        failed => failed,
    };
    // Dropping the other side's task, if still running, cancels it.
    result.map(|_| ()).map_err(|e| {
        let at = START.get().map_or(0.0, |t| t.elapsed().as_secs_f64());
        let msg = format!("pair {i}: the {side} failed after {at:.1} s: {e}");
        eprintln!("{msg}");
        msg
    })
}

fn main() -> ExitCode {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(2);
        }
    };
    // smol's global executor reads this once, on first use: run the pairs on every core
    // unless the caller chose otherwise.
    if std::env::var_os("SMOL_THREADS").is_none() {
        let n = std::thread::available_parallelism().map_or(2, |n| n.get());
        std::env::set_var("SMOL_THREADS", n.to_string());
    }
    match run(&args) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(2)
        }
    }
}

fn run(args: &Args) -> io::Result<bool> {
    let len = args.mib * BLOCK;
    let src = args.dir.join("src");
    let out = args.dir.join("out");
    std::fs::create_dir_all(&src)?;
    if out.exists() {
        std::fs::remove_dir_all(&out)?;
    }
    std::fs::create_dir_all(&out)?;

    eprintln!("writing {} source files of {} MiB", args.pairs, args.mib);
    for r in for_all_pairs(args.pairs, |i| {
        write_source(&src.join(source_name(i)), i, len)
    }) {
        r?;
    }

    let tag = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos())
        ^ u128::from(std::process::id());
    eprintln!("running {} pairs through {}", args.pairs, args.server);
    let started = *START.get_or_init(Instant::now);
    let outcomes: Vec<Result<(), String>> = smol::block_on(async {
        let pairs: Vec<_> = (0..args.pairs)
            .map(|i| {
                let mut cfg = ClientConfig::new(args.server.clone(), format!("load-{tag:x}-{i}"));
                cfg.pair_timeout = args.timeout;
                cfg.idle_timeout = args.timeout;
                // The relay's load: every byte through it.
                cfg.direct.mode = DirectMode::RelayOnly;
                let receiving = smol::spawn(receive(cfg.clone(), out.join(i.to_string()), |_| {}));
                let sending = smol::spawn(send(
                    cfg,
                    vec![src.join(source_name(i))],
                    SendOptions::default(),
                    |_| {},
                ));
                smol::spawn(pair_outcome(i, sending, receiving))
            })
            .collect();
        let mut outcomes = Vec::with_capacity(pairs.len());
        for pair in pairs {
            outcomes.push(pair.await);
        }
        outcomes
    });
    let secs = started.elapsed().as_secs_f64();

    let ok = outcomes.iter().filter(|o| o.is_ok()).count();
    eprintln!("checking outputs");
    let same = for_all_pairs(args.pairs, |i| {
        let path = out.join(i.to_string()).join(source_name(i));
        matches(&path, i, len).unwrap_or(false)
    });
    let identical = same.iter().filter(|s| **s).count();
    for (i, _) in same.iter().enumerate().filter(|(_, s)| !**s).take(10) {
        eprintln!("pair {i}: output missing or different");
    }
    std::fs::remove_dir_all(&out)?;
    std::fs::remove_dir_all(&src)?;
    println!(
        "RESULT pairs={} ok={ok} identical={identical} bytes={} secs={secs:.3}",
        args.pairs,
        ok * len
    );
    Ok(ok == args.pairs && identical == args.pairs)
}
