//! Micro-benchmarks of the core's per-byte work: the chain (SHA-256), AES-256-GCM seal and
//! open, zstd compress and decompress, data frame encode and decode, and the sender's
//! per-piece jobs (compress + seal) on one worker thread versus two.
//!
//! `cargo bench -p p2p-copy-core --bench core`; `bench/run.py` runs it and prints each
//! figure next to the machine's per-core ceiling (`openssl speed`, `zstd -b3`).

use std::hint::black_box;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, Arc};
use std::time::Instant;

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use p2p_copy_core::chain::Chain;
use p2p_copy_core::compress::{compress, decompress_capped};
use p2p_copy_core::crypto::{Cipher, Secrets};
use p2p_copy_core::sender::{
    CompressMode, IoCompletion, IoRequest, Job, SendFile, Sender, SenderConfig,
};
use p2p_copy_core::wire::{DataMessage, WireMessage, CHUNK_SIZE};

const MIB: usize = 1 << 20;
/// Pieces per iteration of the pipeline benchmark.
const PIPELINE_PIECES: usize = 8;

/// xorshift64*: fast, deterministic bytes for the benchmark inputs.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    fn pick<'a>(&mut self, items: &[&'a str]) -> &'a str {
        items[self.below(items.len() as u64) as usize]
    }
}

fn random_bytes(len: usize, seed: u64) -> Vec<u8> {
    let mut rng = Rng(seed | 1);
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        out.extend_from_slice(&rng.next().to_le_bytes());
    }
    out.truncate(len);
    out
}

/// Log-like text (timestamps, levels, requests), about 5:1 with zstd -3 per 1 MiB
/// piece, like the end-to-end benchmark's data set.
fn log_text(len: usize) -> Vec<u8> {
    use std::fmt::Write;
    let mut rng = Rng(0x1234_5678_9ABC_DEF1);
    let levels = [
        "INFO", "INFO", "INFO", "INFO", "INFO", "INFO", "DEBUG", "DEBUG", "DEBUG", "WARN", "ERROR",
    ];
    let comps = [
        "http",
        "db",
        "cache",
        "auth",
        "scheduler",
        "storage",
        "mailer",
        "billing",
    ];
    let paths = [
        "/api/v1/items",
        "/api/v1/users",
        "/api/v2/orders",
        "/static/app.js",
        "/healthz",
        "/api/v1/search",
        "/login",
        "/api/v2/cart",
    ];
    let methods = ["GET", "GET", "GET", "GET", "POST", "PUT", "DELETE"];
    let statuses = [
        "200", "200", "200", "200", "200", "201", "304", "404", "500",
    ];
    let msgs = [
        "cache miss for key",
        "slow query on table",
        "connection pool exhausted, waiting",
        "retrying request to upstream",
        "user session refreshed",
        "scheduled job finished",
        "payment authorised for order",
        "object stored in bucket",
    ];
    let mut s = String::with_capacity(len + 256);
    let mut ms: u64 = 45_000_000;
    while s.len() < len {
        ms += rng.below(6);
        let (h, m, sec, milli) = (
            ms / 3_600_000 % 24,
            ms / 60_000 % 60,
            ms / 1000 % 60,
            ms % 1000,
        );
        let lvl = rng.pick(&levels);
        let comp = rng.pick(&comps);
        let w = rng.below(16);
        let _ = write!(
            s,
            "2024-05-17T{h:02}:{m:02}:{sec:02}.{milli:03}Z {lvl:<5} [worker-{w}] {comp}: "
        );
        if comp == "http" {
            let _ = writeln!(
                s,
                "{} {}/{} status={} bytes={} dur_ms={}.{} ip=10.{}.{}.{} req={:012x}",
                rng.pick(&methods),
                rng.pick(&paths),
                rng.below(100_000),
                rng.pick(&statuses),
                100 + rng.below(60_000),
                rng.below(200),
                rng.below(10),
                rng.below(256),
                rng.below(256),
                rng.below(256),
                rng.next() >> 16
            );
        } else {
            let _ = writeln!(
                s,
                "{} id={} user=u{} took {} ms",
                rng.pick(&msgs),
                rng.below(100_000_000),
                rng.below(100_000),
                1 + rng.below(500)
            );
        }
    }
    let mut v = s.into_bytes();
    v.truncate(len);
    v
}

fn chain(c: &mut Criterion) {
    let piece = random_bytes(CHUNK_SIZE, 1);
    let mut g = c.benchmark_group("chain");
    g.throughput(Throughput::Bytes(CHUNK_SIZE as u64));
    g.bench_function("next 1 MiB", |b| {
        let mut chain = Chain::new();
        b.iter(|| black_box(chain.next(black_box(&piece))))
    });
    g.finish();
}

fn seal_open(c: &mut Criterion) {
    let cipher = Cipher::new(&[7; 32]);
    let nonce = [9; 32];
    let piece = random_bytes(CHUNK_SIZE, 2);
    let mut g = c.benchmark_group("seal");
    g.throughput(Throughput::Bytes(CHUNK_SIZE as u64));
    g.bench_function("in place 1 MiB", |b| {
        let mut buf = piece.clone();
        b.iter(|| {
            buf.truncate(CHUNK_SIZE);
            cipher.seal_in_place(&nonce, &mut buf, 0);
            black_box(buf.len())
        })
    });
    g.finish();
    let sealed = cipher.seal(&nonce, &piece);
    let mut g = c.benchmark_group("open");
    g.throughput(Throughput::Bytes(CHUNK_SIZE as u64));
    g.bench_function("1 MiB", |b| {
        b.iter(|| {
            black_box(
                cipher
                    .open(&nonce, black_box(&sealed))
                    .expect("tag verifies"),
            )
        })
    });
    g.finish();
}

fn zstd(c: &mut Criterion) {
    let log = log_text(CHUNK_SIZE);
    let random = random_bytes(CHUNK_SIZE, 3);
    let log_frame = compress(&log);
    let random_frame = compress(&random);
    eprintln!(
        "log text: a 1 MiB piece compresses to {} bytes ({:.2}:1); random: {} bytes",
        log_frame.len(),
        CHUNK_SIZE as f64 / log_frame.len() as f64,
        random_frame.len()
    );
    let mut g = c.benchmark_group("compress");
    g.throughput(Throughput::Bytes(CHUNK_SIZE as u64));
    g.bench_function("log text 1 MiB", |b| {
        b.iter(|| black_box(compress(black_box(&log))))
    });
    g.bench_function("random 1 MiB", |b| {
        b.iter(|| black_box(compress(black_box(&random))))
    });
    g.finish();
    let mut g = c.benchmark_group("decompress");
    g.throughput(Throughput::Bytes(CHUNK_SIZE as u64));
    g.bench_function("log text 1 MiB", |b| {
        b.iter(|| black_box(decompress_capped(black_box(&log_frame), CHUNK_SIZE).expect("valid")))
    });
    g.bench_function("random 1 MiB", |b| {
        b.iter(|| {
            black_box(decompress_capped(black_box(&random_frame), CHUNK_SIZE).expect("valid"))
        })
    });
    g.finish();
}

fn frames(c: &mut Criterion) {
    let piece = random_bytes(CHUNK_SIZE, 4);
    let chain_value = [5; 32];
    let frame = DataMessage::encode(7, &chain_value, &piece);
    let mut g = c.benchmark_group("frame");
    g.throughput(Throughput::Bytes(CHUNK_SIZE as u64));
    g.bench_function("encode 1 MiB", |b| {
        b.iter(|| black_box(DataMessage::encode(7, &chain_value, black_box(&piece))))
    });
    g.bench_function("decode 1 MiB", |b| {
        b.iter(|| black_box(DataMessage::decode(black_box(frame.clone())).expect("valid")))
    });
    g.finish();
}

/// Real jobs from a real [`Sender`]: an encrypting sender with `--compress on` is driven
/// through `ready` and in-memory reads of `data` until it hands out one job per piece.
fn harvest_jobs(data: &Bytes) -> Vec<Job> {
    let now = Instant::now();
    let secrets = Secrets {
        code_hash: [0; 32],
        cipher: Some(Cipher::new(&[7; 32])),
    };
    let pieces = data.len().div_ceil(CHUNK_SIZE);
    let config = SenderConfig {
        compress: CompressMode::On,
        window: pieces,
        ..SenderConfig::default()
    };
    let file = SendFile {
        path: "app.log".into(),
        size: data.len() as u64,
        kind: None,
    };
    let mut sender = Sender::new(now, config, &secrets, vec![file], [1; 32]).expect("valid sender");
    sender
        .handle_message(now, WireMessage::Text(r#"{"type":"ready"}"#.into()))
        .expect("ready accepted");
    while sender.poll_transmit().is_some() {}
    let mut jobs = Vec::new();
    loop {
        let mut moved = false;
        while let Some(req) = sender.poll_io() {
            if let IoRequest::Read { file, offset, len } = req {
                let at = offset as usize;
                sender
                    .handle_io(
                        now,
                        IoCompletion::Read {
                            file,
                            offset,
                            data: data[at..at + len].into(),
                        },
                    )
                    .expect("read accepted");
                moved = true;
            }
        }
        while let Some(job) = sender.poll_job() {
            jobs.push(job);
            moved = true;
        }
        if !moved {
            break;
        }
    }
    assert_eq!(jobs.len(), pieces, "one job per piece");
    assert!(jobs.iter().all(|j| !j.is_light()), "compress+seal jobs");
    jobs
}

/// Long-lived worker threads, as a runtime keeps them: each thread's zstd context and
/// allocator arena stay warm between iterations, so only the work itself is timed.
struct Workers {
    batches: Vec<mpsc::Sender<Arc<Batch>>>,
    done: mpsc::Receiver<()>,
}

/// One iteration's work: run every job once, whichever worker takes it.
struct Batch {
    jobs: Arc<Vec<Job>>,
    next: AtomicUsize,
}

impl Workers {
    fn start(n: usize) -> Workers {
        let (done_tx, done) = mpsc::channel();
        let batches = (0..n)
            .map(|_| {
                let (tx, rx) = mpsc::channel::<Arc<Batch>>();
                let done_tx = done_tx.clone();
                std::thread::spawn(move || {
                    for batch in rx {
                        loop {
                            let i = batch.next.fetch_add(1, Ordering::Relaxed);
                            let Some(job) = batch.jobs.get(i) else { break };
                            black_box(job.clone().run());
                        }
                        if done_tx.send(()).is_err() {
                            return;
                        }
                    }
                });
                tx
            })
            .collect();
        Workers { batches, done }
    }

    /// Run all `jobs` on the workers and wait until every one is done.
    fn run(&self, jobs: &Arc<Vec<Job>>) {
        let batch = Arc::new(Batch {
            jobs: Arc::clone(jobs),
            next: AtomicUsize::new(0),
        });
        for tx in &self.batches {
            tx.send(Arc::clone(&batch)).expect("worker alive");
        }
        for _ in &self.batches {
            self.done.recv().expect("worker alive");
        }
    }
}

fn pipeline(c: &mut Criterion) {
    let data = Bytes::from(log_text(PIPELINE_PIECES * MIB));
    let jobs = Arc::new(harvest_jobs(&data));
    let mut g = c.benchmark_group("pipeline compress+seal");
    g.sample_size(10);
    g.throughput(Throughput::Bytes(data.len() as u64));
    for (n, name) in [(1, "1 worker"), (2, "2 workers")] {
        let workers = Workers::start(n);
        g.bench_function(name, |b| b.iter(|| workers.run(&jobs)));
    }
    g.finish();
}

criterion_group!(benches, chain, seal_open, zstd, frames, pipeline);
criterion_main!(benches);
