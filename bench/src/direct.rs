//! One session's throughput over the direct path (QUIC between two endpoints on
//! 127.0.0.1) against the relayed path (WebSocket through a relay on 127.0.0.1), in one
//! process, after an untimed 8 MiB warm-up over each, alternating rounds and which path
//! goes first; every output is checked byte for byte.
//!
//! ```text
//! p2p-copy-bench-direct [--mib 256] [--rounds 3] [--dir DIR (target/bench-data/direct)]
//!                       [--only quic|relay]
//! ```
//!
//! `--only` runs one path, for profiling it alone; comparisons need both from one run.
//!
//! Prints one line per transfer and then the medians: `MEDIAN quic=… MB/s relay=… MB/s`.

#![forbid(unsafe_code)]

use std::net::UdpSocket;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use p2p_copy_smol::quic::{self, Identity};
use p2p_copy_smol::{
    receive, receive_direct, send, send_direct, ClientConfig, CompressMode, DirectMode,
    RelayServer, RelayServerConfig, SendOptions, TransferError,
};

const USAGE: &str =
    "usage: p2p-copy-bench-direct [--mib 256] [--rounds 3] [--dir DIR] [--only quic|relay]";
const BLOCK: usize = 1 << 20;

#[path = "noise.rs"]
mod noise;
#[path = "stats.rs"]
mod stats;
use noise::{identical, write_noise};
use stats::median;

struct Args {
    mib: usize,
    rounds: usize,
    dir: PathBuf,
    paths: Vec<&'static str>,
}

fn parse_args() -> Result<Args, String> {
    let (mut mib, mut rounds, mut dir) = (256, 3, PathBuf::from("target/bench-data/direct"));
    let mut paths = vec!["quic", "relay"];
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let value = it.next().ok_or(format!("{flag} needs a value\n{USAGE}"))?;
        match flag.as_str() {
            "--mib" => mib = value.parse().map_err(|e| format!("--mib: {e}"))?,
            "--rounds" => rounds = value.parse().map_err(|e| format!("--rounds: {e}"))?,
            "--dir" => dir = PathBuf::from(value),
            "--only" => {
                paths = match value.as_str() {
                    "quic" => vec!["quic"],
                    "relay" => vec!["relay"],
                    _ => return Err(format!("--only: quic or relay, not {value}")),
                }
            }
            _ => return Err(format!("unknown option {flag}\n{USAGE}")),
        }
    }
    Ok(Args {
        mib,
        rounds: rounds.max(1),
        dir,
        paths,
    })
}

fn options() -> SendOptions {
    SendOptions {
        // The data is random: compression would only cost time on both paths.
        compress: CompressMode::Off,
        ..SendOptions::default()
    }
}

async fn over_quic(file: &Path, out: &Path) -> Result<(), TransferError> {
    let bind = || UdpSocket::bind("127.0.0.1:0").map_err(|e| TransferError::Direct(e.to_string()));
    let a = quic::endpoint(bind()?, Identity::generate()?)?;
    let b = quic::endpoint(bind()?, Identity::generate()?)?;
    let b_addr = b
        .local_addr()
        .map_err(|e| TransferError::Direct(e.to_string()))?;
    let (client, server) = smol::future::zip(
        a.connect(b_addr, b.fingerprint()),
        b.accept(a.fingerprint()),
    )
    .await;
    let (client, server) = (client?, server?);
    // The sender's view of the path, printed after the transfer: what the congestion
    // controller and MTU discovery made of it explains a rate.
    let connection = client.connection().clone();
    let cfg = ClientConfig::new("ws://unused.invalid", "bench direct code");
    let sending = send_direct(cfg.clone(), client, vec![file.into()], options(), |_| {});
    let receiving = receive_direct(cfg, server, out.into(), |_| {});
    let (s, r) = smol::future::zip(sending, receiving).await;
    let stats = connection.stats();
    println!(
        "  quic path: mtu {} rtt {:?} cwnd {} KiB, {} packets sent, {} lost, {} congestion events; {} datagrams in {} sends, {} ACKs back",
        stats.path.current_mtu,
        stats.path.rtt,
        stats.path.cwnd / 1024,
        stats.path.sent_packets,
        stats.path.lost_packets,
        stats.path.congestion_events,
        stats.udp_tx.datagrams,
        stats.udp_tx.ios,
        stats.frame_rx.acks,
    );
    s?;
    r?;
    Ok(())
}

async fn over_relay(file: &Path, out: &Path) -> Result<(), TransferError> {
    let relay = RelayServer::bind(RelayServerConfig {
        host: "127.0.0.1".into(),
        port: 0,
        tls: None,
        relay: Default::default(),
        stun: p2p_copy_smol::StunPorts::Off,
        ops: Default::default(),
    })
    .await
    .map_err(|e| TransferError::Connect(e.to_string()))?;
    let url = format!("ws://{}", relay.local_addr());
    let serving = smol::spawn(relay.run());
    let mut cfg = ClientConfig::new(url, "bench relay code");
    // The relayed path only: both sides would otherwise go direct over this machine's
    // own addresses.
    cfg.direct.mode = DirectMode::RelayOnly;
    let sending = send(cfg.clone(), vec![file.into()], options(), |_| {});
    let receiving = receive(cfg, out.into(), |_| {});
    let (s, r) = smol::future::zip(sending, receiving).await;
    drop(serving);
    s?;
    r?;
    Ok(())
}

/// The CPU time this process has used (user and system, all threads), where Linux
/// tells it: on a shared machine the rate moves with the neighbours' load, the CPU time
/// a transfer costs much less.
fn cpu_seconds() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // The fields after the command name, which is in parentheses and may hold spaces;
    // utime and stime are fields 14 and 15, in clock ticks of (on Linux) 1/100 s.
    let rest = &stat[stat.rfind(')')? + 2..];
    let mut fields = rest.split(' ').skip(11);
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some((utime + stime) as f64 / 100.0)
}

/// The size of the untimed warm-up transfer over each path.
const WARM_MIB: usize = 8;

fn transfer(path: &str, file: &Path, out: &Path) -> Result<(), TransferError> {
    match path {
        "quic" => smol::block_on(over_quic(file, out)),
        _ => smol::block_on(over_relay(file, out)),
    }
}

fn run() -> Result<(), String> {
    let Args {
        mib,
        rounds,
        dir,
        paths,
    } = parse_args()?;
    let src = dir.join("src");
    std::fs::create_dir_all(&src).map_err(|e| format!("{}: {e}", src.display()))?;
    let file = src.join(format!("noise-{mib}MiB.bin"));
    if std::fs::metadata(&file).map(|m| m.len()).ok() != Some((mib * BLOCK) as u64) {
        write_noise(&file, mib).map_err(|e| format!("{}: {e}", file.display()))?;
    }
    // One small untimed transfer over each path first: the first transfer in a process
    // pays for starting executor threads and growing the allocator's arenas, which
    // would otherwise land on whichever path runs first.
    let warm = src.join(format!("noise-{WARM_MIB}MiB.bin"));
    if std::fs::metadata(&warm).map(|m| m.len()).ok() != Some((WARM_MIB * BLOCK) as u64) {
        write_noise(&warm, WARM_MIB).map_err(|e| format!("{}: {e}", warm.display()))?;
    }
    for &path in &paths {
        let out = dir.join(format!("out-{path}"));
        let _ = std::fs::remove_dir_all(&out);
        transfer(path, &warm, &out).map_err(|e| format!("{path} (warm-up): {e}"))?;
        let _ = std::fs::remove_dir_all(&out);
    }
    let bytes = (mib * BLOCK) as f64;
    let (mut quic_rates, mut relay_rates) = (Vec::new(), Vec::new());
    for round in 0..rounds {
        // Alternate which path goes first, so neither always follows the other.
        let order: Vec<&str> = match round % 2 {
            0 => paths.clone(),
            _ => paths.iter().rev().copied().collect(),
        };
        for path in order {
            let out = dir.join(format!("out-{path}"));
            let _ = std::fs::remove_dir_all(&out);
            let (start, cpu_start) = (Instant::now(), cpu_seconds());
            let done = transfer(path, &file, &out);
            let secs = start.elapsed().as_secs_f64();
            let cpu = cpu_seconds().zip(cpu_start).map(|(end, start)| end - start);
            done.map_err(|e| format!("{path}: {e}"))?;
            let got = out.join(file.file_name().expect("a file name"));
            if !identical(&file, &got).map_err(|e| format!("compare: {e}"))? {
                return Err(format!("{path}: the output differs from the input"));
            }
            let rate = bytes / secs / 1e6;
            let cpu = cpu.map_or(String::new(), |c| format!(", {c:.2} s of CPU"));
            println!("round {round} {path:5} {mib} MiB in {secs:.2} s = {rate:.0} MB/s{cpu}");
            match path {
                "quic" => quic_rates.push(rate),
                _ => relay_rates.push(rate),
            }
            let _ = std::fs::remove_dir_all(&out);
        }
    }
    println!(
        "MEDIAN quic={:.0} MB/s relay={:.0} MB/s",
        median(quic_rates).unwrap_or(f64::NAN),
        median(relay_rates).unwrap_or(f64::NAN)
    );
    Ok(())
}

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("p2p-copy-bench-direct: {e}");
            ExitCode::FAILURE
        }
    }
}
