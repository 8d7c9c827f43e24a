//! The lab benchmark: one file moved between two hosts behind cone NATs in a small
//! internet of network namespaces (`p2p_copy_tests::netlab`), three ways side by side:
//! p2p-copy in its default (direct) mode, p2p-copy `--relay-only`, and raw TCP.
//!
//! ```text
//! p2p-copy-bench-lab [--mib 1024] [--rounds 1] [--unshaped] [--relay-mbit 100]
//!                    [--host-mbit 1000] [--bin target/release/p2p-copy]
//!                    [--dir target/bench-data/lab] [--only direct|relay-only|tcp]
//!                    [--mtu 1500] [--tls]
//! ```
//!
//! Runs as root (namespaces, nftables, tc). Shaped by default: the relay host's link is
//! held to `--relay-mbit` each way and each NAT router's link (the hosts' way to the lab's
//! internet) to `--host-mbit`, with `tc … tbf`, because on one machine the direct and
//! the relayed path otherwise compete only for the same CPU, while what really differs is
//! that a relay's bandwidth is shared and scarce. `--unshaped` leaves every link as fast
//! as the CPU allows.
//!
//! Each round moves the file over each path in turn, the direct path first in even
//! rounds and the relayed path first in odd ones. Per transfer it prints seconds, MB/s
//! (10^6 bytes of payload per second, from the sender's start to the exit of both
//! sides), the share of the payload that crossed the relay host's interface (its bytes
//! in plus out, from its counters, halved, over the payload), the path p2p-copy
//! reported, and the time from pairing to a working direct path that the sender logs
//! with `-v`. Every output is compared byte for byte. With more than one round it ends
//! with each path's median rate and the direct path's rate over the relayed path's,
//! round by round: their median, range, and how many rounds reach 0.8.
//!
//! It also prints the CPU time each side took per GiB of payload (user and system, from
//! the kernel's accounting of the sender's and the receiver's processes once they are
//! reaped, and of the relay's process before and after), which stays put when other
//! work on the machine moves the rates, and the machine's busy CPU time over the
//! transfer (`/proc/stat`: everyone's, the kernel's forwarding in softirq included).
//! `--mtu N` sets every lab link's MTU (1500 by default, Ethernet's), for jumbo-frame
//! paths. `--tls` has the relay serve `wss://` with a certificate made for the run (the
//! clients trust its CA with `--ca-file`), as a relay on the internet does; by default
//! it serves plain `ws://`, so the relayed path encrypts nothing while the direct path's
//! QUIC always does.
//!
//! Raw TCP goes from host A to TCP port 5201 on NAT B's public address, forwarded by NAT
//! B to host B: the same links as the direct path, bytes only, no hashing. This program
//! is its own TCP copier, run inside the hosts' namespaces (`tcp-recv`, `tcp-send`).

#![forbid(unsafe_code)]

use std::fs::File;
use std::io::{self, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use std::time::{Duration, Instant};

use p2p_copy_tests::netlab::{Host, Lab, LabProcess, Nat, RELAY_IP};
use p2p_copy_tests::process::Finished;
use p2p_copy_tests::tls::TestPki;

const USAGE: &str = "usage: p2p-copy-bench-lab [--mib 1024] [--rounds 1] [--unshaped] \
                     [--relay-mbit 100] [--host-mbit 1000] [--bin PATH] [--dir DIR] \
                     [--only direct|relay-only|tcp] [--mtu 1500] [--tls]";
const BLOCK: usize = 1 << 20;

#[path = "noise.rs"]
mod noise;
#[path = "stats.rs"]
mod stats;
use noise::{identical, write_noise};
use stats::median;
/// The relay's WebSocket port (STUN on it and the next).
const RELAY_PORT: u16 = 8765;
/// The TCP port NAT B forwards to host B for the raw copy.
const TCP_PORT: u16 = 5201;

struct Options {
    mib: usize,
    rounds: usize,
    shaped: bool,
    relay_mbit: u32,
    host_mbit: u32,
    bin: PathBuf,
    dir: PathBuf,
    /// One of the three ways alone (for profiling), or all of them.
    only: Option<String>,
    /// Every lab link's MTU.
    mtu: u32,
    /// The relay serves `wss://` with a certificate made for the run, as relays on the
    /// internet do, instead of plain `ws://`.
    tls: bool,
}

fn parse_args(args: &[String]) -> Result<Options, String> {
    let own_dir = std::env::current_exe()
        .ok()
        .and_then(|p| p.parent().map(Path::to_path_buf))
        .unwrap_or_default();
    let mut o = Options {
        mib: 1024,
        rounds: 1,
        shaped: true,
        relay_mbit: 100,
        host_mbit: 1000,
        bin: own_dir.join("p2p-copy"),
        dir: PathBuf::from("target/bench-data/lab"),
        only: None,
        mtu: 1500,
        tls: false,
    };
    let mut it = args.iter();
    while let Some(flag) = it.next() {
        if flag == "--unshaped" {
            o.shaped = false;
            continue;
        }
        if flag == "--tls" {
            o.tls = true;
            continue;
        }
        let value = it.next().ok_or(format!("{flag} needs a value\n{USAGE}"))?;
        let number = |what: &str| format!("{flag}: not a number: {what}");
        match flag.as_str() {
            "--mib" => o.mib = value.parse().map_err(|_| number(value))?,
            "--rounds" => o.rounds = value.parse().map_err(|_| number(value))?,
            "--relay-mbit" => o.relay_mbit = value.parse().map_err(|_| number(value))?,
            "--host-mbit" => o.host_mbit = value.parse().map_err(|_| number(value))?,
            "--mtu" => o.mtu = value.parse().map_err(|_| number(value))?,
            "--bin" => o.bin = PathBuf::from(value),
            "--dir" => o.dir = PathBuf::from(value),
            "--only" => match value.as_str() {
                "direct" | "relay-only" => o.only = Some(value.clone()),
                "tcp" => o.only = Some("raw TCP".to_owned()),
                _ => return Err(format!("--only: direct, relay-only or tcp\n{USAGE}")),
            },
            _ => return Err(format!("unknown option {flag}\n{USAGE}")),
        }
    }
    if o.mib == 0 || o.rounds == 0 || o.relay_mbit == 0 || o.host_mbit == 0 {
        return Err(format!("sizes, rounds and rates must be above 0\n{USAGE}"));
    }
    if !(1280..=65535).contains(&o.mtu) {
        return Err(format!("--mtu: 1280 to 65535\n{USAGE}"));
    }
    if !o.bin.is_file() {
        return Err(format!(
            "no p2p-copy binary at {} (cargo build --release -p p2p-copy, or --bin)",
            o.bin.display()
        ));
    }
    // Processes in the namespaces may start elsewhere; give them absolute paths.
    o.bin = std::fs::canonicalize(&o.bin).map_err(|e| format!("{}: {e}", o.bin.display()))?;
    std::fs::create_dir_all(&o.dir).map_err(|e| format!("{}: {e}", o.dir.display()))?;
    o.dir = std::fs::canonicalize(&o.dir).map_err(|e| format!("{}: {e}", o.dir.display()))?;
    Ok(o)
}

/// `tcp-recv PORT FILE`: accept one connection on 0.0.0.0:PORT and write what arrives.
fn tcp_recv(port: &str, file: &str) -> io::Result<()> {
    let port: u16 = port.parse().map_err(io::Error::other)?;
    let listener = TcpListener::bind((Ipv4Addr::UNSPECIFIED, port))?;
    eprintln!("tcp-recv listening on {}", listener.local_addr()?);
    let (mut stream, _) = listener.accept()?;
    let mut out = File::create(file)?;
    copy(&mut stream, &mut out)?;
    out.sync_all()
}

/// `tcp-send ADDR FILE`: connect to ADDR and send the file.
fn tcp_send(addr: &str, file: &str) -> io::Result<()> {
    let addr: SocketAddr = addr.parse().map_err(io::Error::other)?;
    let mut stream = TcpStream::connect(addr)?;
    copy(&mut File::open(file)?, &mut stream)?;
    stream.shutdown(std::net::Shutdown::Write)
}

/// A copy with 1 MiB reads and writes, as the relayed transfers use MiB pieces.
fn copy(from: &mut impl Read, to: &mut impl Write) -> io::Result<()> {
    let mut buf = vec![0u8; BLOCK];
    loop {
        let n = from.read(&mut buf)?;
        if n == 0 {
            return to.flush();
        }
        to.write_all(&buf[..n])?;
    }
}

/// The kernel's clock tick for the CPU times in `/proc` (`USER_HZ`, 100 on Linux).
const USER_HZ: f64 = 100.0;

/// Fields of a `/proc/PID/stat` line after the command name, which may hold spaces:
/// index 0 is field 3 (the state).
fn stat_fields(path: &str) -> Option<Vec<u64>> {
    let text = std::fs::read_to_string(path).ok()?;
    let (_, rest) = text.rsplit_once(')')?;
    Some(
        rest.split_whitespace()
            .map(|f| f.parse().unwrap_or(0))
            .collect(),
    )
}

/// User and system CPU seconds of this process's children that have been waited for
/// (fields 16 and 17, `cutime` and `cstime`): read before and after reaping a child, the
/// difference is that child's CPU time.
fn reaped_children_cpu() -> f64 {
    stat_fields("/proc/self/stat").map_or(0.0, |f| (f[13] + f[14]) as f64 / USER_HZ)
}

/// User and system CPU seconds process `pid` has used so far (fields 14 and 15).
fn process_cpu(pid: u32) -> f64 {
    stat_fields(&format!("/proc/{pid}/stat")).map_or(0.0, |f| (f[11] + f[12]) as f64 / USER_HZ)
}

/// The machine's busy CPU seconds so far (`/proc/stat`: user, nice, system, irq,
/// softirq, steal), all processes and the kernel's own work together.
fn machine_busy_cpu() -> f64 {
    let text = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let Some(line) = text.lines().find(|l| l.starts_with("cpu ")) else {
        return 0.0;
    };
    let f: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .map(|v| v.parse().unwrap_or(0))
        .collect();
    let busy = [0, 1, 2, 5, 6, 7]
        .iter()
        .filter_map(|&i| f.get(i))
        .sum::<u64>();
    busy as f64 / USER_HZ
}

/// CPU seconds one transfer took, by whom.
#[derive(Default, Clone, Copy)]
struct Cpu {
    sender: f64,
    receiver: f64,
    relay: f64,
    machine: f64,
}

/// One transfer's figures.
struct Figures {
    secs: f64,
    relay_share: f64,
    direct_up: Option<f64>,
    path: String,
    cpu: Cpu,
}

/// The lab: hosts A (sender) and B (receiver) behind cone NATs, our relay, shaping.
struct Bench {
    lab: Lab,
    a: Host,
    b: Host,
    o: Options,
    file: PathBuf,
    bytes: u64,
    /// The relay's URL: `wss://` with `--tls`, else `ws://`.
    url: String,
    /// With `--tls`: the CA the clients trust (`--ca-file`).
    ca_file: Option<PathBuf>,
}

impl Bench {
    fn relay_bytes(&self) -> u64 {
        self.lab.iface(&self.lab.relay_ns(), "wan0").total_bytes()
    }

    fn out_dir(&self) -> PathBuf {
        self.o.dir.join("out")
    }

    fn relay_cpu(&self) -> f64 {
        self.lab.relay_pid().map_or(0.0, process_cpu)
    }

    /// Wait for both processes, long enough for the slowest link, and fail with their
    /// output if either fails. Also the CPU time each took, into `cpu`.
    fn finish(
        &self,
        what: &str,
        sides: [LabProcess; 2],
        cpu: &mut Cpu,
    ) -> Result<[Finished; 2], String> {
        // The slowest path (the relay's link) at its rate, three times over, and a minute.
        let slowest = self.bytes as f64 * 8.0 / (f64::from(self.o.relay_mbit) * 1e6);
        let limit = Duration::from_secs_f64(60.0 + 3.0 * slowest);
        let [r, s] = sides;
        // Nothing else of this process's children is reaped while these two are.
        let before = reaped_children_cpu();
        let (s, s_killed) = s.wait_or_kill(limit);
        let sender_reaped = reaped_children_cpu();
        let (r, r_killed) = r.wait_or_kill(Duration::from_secs(60));
        cpu.sender = sender_reaped - before;
        cpu.receiver = reaped_children_cpu() - sender_reaped;
        if s_killed || r_killed || !s.status.success() || !r.status.success() {
            return Err(format!(
                "{what} failed (killed at the time limit of {limit:.0?}: sender {s_killed}, \
                 receiver {r_killed})\nsender: {s:?}\nreceiver: {r:?}"
            ));
        }
        Ok([r, s])
    }

    fn check_output(&self, what: &str, got: &Path) -> Result<(), String> {
        match identical(&self.file, got) {
            Ok(true) => Ok(()),
            Ok(false) => Err(format!("{what}: {} differs from the input", got.display())),
            Err(e) => Err(format!("{what}: compare {}: {e}", got.display())),
        }
    }

    /// p2p-copy from A to B with `flags` on both sides.
    fn p2p_copy(&mut self, what: &str, code: &str, flags: &[&str]) -> Result<Figures, String> {
        let out = self.out_dir();
        let _ = std::fs::remove_dir_all(&out);
        let url = self.url.clone();
        let mut flags = flags.to_vec();
        if let Some(ca) = &self.ca_file {
            flags.extend(["--ca-file", ca.to_str().expect("the lab's paths are UTF-8")]);
        }
        let flags = &flags[..];
        let before = self.relay_bytes();
        let mut cpu = Cpu {
            relay: self.relay_cpu(),
            machine: machine_busy_cpu(),
            ..Cpu::default()
        };
        let mut receive = Command::new(&self.o.bin);
        receive
            .args(["-v", "receive", &url, code, "--out"])
            .arg(&out)
            .args(flags);
        let receiver = self.lab.spawn(&self.b.ns, &receive);
        let started = receiver.wait_for_stderr_line(Duration::from_secs(10), |l| {
            l.starts_with("waiting for the sender")
        });
        if started.is_none() {
            let (r, _) = receiver.wait_or_kill(Duration::ZERO);
            return Err(format!("{what}: the receiver did not start: {r:?}"));
        }
        // It says so before it connects; half a second is plenty to reach the relay, so
        // that the time measured starts with a receiver that waits there.
        std::thread::sleep(Duration::from_millis(500));
        let mut send = Command::new(&self.o.bin);
        send.args(["-v", "send", &url, code])
            .arg(&self.file)
            .args(["--compress", "off"])
            .args(flags);
        let start = Instant::now();
        let sender = self.lab.spawn(&self.a.ns, &send);
        let [r, s] = self.finish(what, [receiver, sender], &mut cpu)?;
        let secs = start.elapsed().as_secs_f64();
        cpu.relay = self.relay_cpu() - cpu.relay;
        cpu.machine = machine_busy_cpu() - cpu.machine;
        let relayed = self.relay_bytes() - before;
        let name = self.file.file_name().expect("a file name");
        self.check_output(what, &out.join(name))?;
        let _ = std::fs::remove_dir_all(&out);
        let mut path = s
            .stderr
            .lines()
            .rev()
            .find_map(|l| l.strip_prefix("path: "))
            .unwrap_or("(no path line)")
            .to_owned();
        // The sender's `-v` line on the direct connection's end: "… MTU 1452 bytes, …".
        let mtu = s.stderr.lines().find_map(|l| {
            let (_, rest) = l.split_once("direct: connection with ")?;
            let (_, rest) = rest.split_once("MTU ")?;
            rest.split_whitespace().next().map(str::to_owned)
        });
        if let Some(mtu) = mtu {
            path.push_str(&format!(", QUIC packets of {mtu} bytes"));
        }
        // The whole lines (datagrams, system calls, losses) for the record.
        for (side, out) in [("sender", &s), ("receiver", &r)] {
            if let Some(line) = out
                .stderr
                .lines()
                .find(|l| l.contains("direct: connection with "))
            {
                println!("  {side} {}", line.trim());
            }
        }
        let direct_up = s.stderr.lines().find_map(|l| {
            let (_, rest) = l.split_once("direct path up after ")?;
            rest.split_whitespace().next()?.parse().ok()
        });
        Ok(Figures {
            secs,
            relay_share: relayed as f64 / 2.0 / self.bytes as f64,
            direct_up,
            path,
            cpu,
        })
    }

    /// Raw TCP from A to NAT B's forwarded port.
    fn raw_tcp(&mut self) -> Result<Figures, String> {
        let out = self.out_dir();
        let _ = std::fs::remove_dir_all(&out);
        std::fs::create_dir_all(&out).map_err(|e| format!("{}: {e}", out.display()))?;
        let got = out.join("raw.bin");
        let me = std::env::current_exe().map_err(|e| format!("current_exe: {e}"))?;
        let before = self.relay_bytes();
        let mut cpu = Cpu {
            relay: self.relay_cpu(),
            machine: machine_busy_cpu(),
            ..Cpu::default()
        };
        let mut recv = Command::new(&me);
        recv.arg("tcp-recv").arg(TCP_PORT.to_string()).arg(&got);
        let receiver = self.lab.spawn(&self.b.ns, &recv);
        let listening = receiver.wait_for_stderr_line(Duration::from_secs(10), |l| {
            l.starts_with("tcp-recv listening")
        });
        if listening.is_none() {
            let (r, _) = receiver.wait_or_kill(Duration::ZERO);
            return Err(format!("raw TCP: the receiver did not listen: {r:?}"));
        }
        let target = SocketAddr::from((self.b.public_ip, TCP_PORT));
        let mut send = Command::new(&me);
        send.arg("tcp-send").arg(target.to_string()).arg(&self.file);
        let start = Instant::now();
        let sender = self.lab.spawn(&self.a.ns, &send);
        self.finish("raw TCP", [receiver, sender], &mut cpu)?;
        let secs = start.elapsed().as_secs_f64();
        cpu.relay = self.relay_cpu() - cpu.relay;
        cpu.machine = machine_busy_cpu() - cpu.machine;
        let relayed = self.relay_bytes() - before;
        self.check_output("raw TCP", &got)?;
        let _ = std::fs::remove_dir_all(&out);
        Ok(Figures {
            secs,
            relay_share: relayed as f64 / 2.0 / self.bytes as f64,
            direct_up: None,
            path: format!(
                "TCP to {target}, NAT B's public address, forwarded to host B {}",
                self.b.lan_ip
            ),
            cpu,
        })
    }
}

fn run(o: Options) -> Result<(), String> {
    let file = o.dir.join(format!("lab-{}MiB.bin", o.mib));
    let bytes = (o.mib * BLOCK) as u64;
    if std::fs::metadata(&file).map(|m| m.len()).ok() != Some(bytes) {
        write_noise(&file, o.mib).map_err(|e| format!("{}: {e}", file.display()))?;
    }
    let mut lab = Lab::new();
    let a = lab.add_nat(1, Nat::Cone);
    let b = lab.add_nat(2, Nat::Cone);
    let pki = o
        .tls
        .then(|| TestPki::generate_for(&o.dir, &[&RELAY_IP.to_string()]));
    let tls_args = match &pki {
        Some(pki) => {
            let [cert, key] = [&pki.cert_file, &pki.key_file]
                .map(|f| f.to_str().expect("the lab's paths are UTF-8"));
            vec!["--tls", "--certfile", cert, "--keyfile", key]
        }
        None => Vec::new(),
    };
    lab.start_relay(&o.bin, RELAY_PORT, &tls_args);
    let scheme = if pki.is_some() { "wss" } else { "ws" };
    let url = format!("{scheme}://{RELAY_IP}:{RELAY_PORT}");
    lab.forward_tcp_port(&b, TCP_PORT);
    if o.mtu != 1500 {
        lab.set_mtu(o.mtu);
    }
    let links = if o.shaped {
        lab.limit_wan_link(&lab.relay_ns(), o.relay_mbit);
        for host in [&a, &b] {
            lab.limit_wan_link(&host.router_ns, o.host_mbit);
        }
        format!(
            "shaped (tbf): relay host's link {} Mbit/s, each NAT's link {} Mbit/s, each way",
            o.relay_mbit, o.host_mbit
        )
    } else {
        "unshaped".to_owned()
    };
    println!(
        "lab: {links}; {} MiB of random bytes from host A {} behind cone NAT {} to host B {} \
         behind cone NAT {}; relay {url}; p2p-copy {}",
        o.mib,
        a.lan_ip,
        a.public_ip,
        b.lan_ip,
        b.public_ip,
        o.bin.display()
    );
    println!(
        "links' MTU {} bytes; CPU: seconds per GiB of payload, sender / receiver / relay \
         process, and the whole machine's busy CPU",
        o.mtu
    );
    println!(
        "{:<11} {:>9} {:>9} {:>10} {:>16} {:>20} {:>8}  path",
        "transfer",
        "seconds",
        "MB/s",
        "via relay",
        "direct up after",
        "CPU s/GiB s/r/relay",
        "machine"
    );
    let rounds = o.rounds;
    let mut bench = Bench {
        lab,
        a,
        b,
        o,
        file,
        bytes,
        url,
        ca_file: pki.map(|p| p.ca_file),
    };
    let mut failed = 0;
    let mut rates: Vec<(&str, usize, f64)> = Vec::new();
    for round in 0..rounds {
        // Odd rounds run the relayed path first: neither p2p-copy path always follows
        // the same transfer (and the memory it freed).
        let order = match round % 2 {
            0 => ["direct", "relay-only", "raw TCP"],
            _ => ["relay-only", "direct", "raw TCP"],
        };
        for what in order {
            if bench.o.only.as_deref().is_some_and(|only| only != what) {
                continue;
            }
            let code = format!("bench-lab-{round}-{what}");
            let figures = match what {
                "direct" => bench.p2p_copy(what, &code, &[]),
                "relay-only" => bench.p2p_copy(what, &code, &["--relay-only"]),
                _ => bench.raw_tcp(),
            };
            let figures = match figures {
                Ok(f) => f,
                Err(e) => {
                    // The other transfers still say something; the exit code says this.
                    println!("{what:<11} FAILED: {e}");
                    failed += 1;
                    continue;
                }
            };
            let up = figures
                .direct_up
                .map_or_else(|| "-".to_owned(), |s| format!("{s:.2} s"));
            let gib = bytes as f64 / f64::from(1u32 << 30);
            let c = figures.cpu;
            let sides = format!(
                "{:.2} / {:.2} / {:.2}",
                c.sender / gib,
                c.receiver / gib,
                c.relay / gib
            );
            let rate = bytes as f64 / figures.secs / 1e6;
            rates.push((what, round, rate));
            println!(
                "{what:<11} {:>9.2} {:>9.1} {:>9.1}% {up:>16} {sides:>20} {:>8.2}  {}",
                figures.secs,
                rate,
                figures.relay_share * 100.0,
                c.machine / gib,
                figures.path
            );
        }
    }
    if rounds > 1 {
        print_medians(&rates, rounds);
    }
    if failed > 0 {
        return Err(format!("{failed} transfer(s) failed"));
    }
    Ok(())
}

/// Each path's median rate over the rounds, and the direct path's rate over the relayed
/// path's in each round that ran both: their median, range, and how many reach 0.8.
fn print_medians(rates: &[(&str, usize, f64)], rounds: usize) {
    let of =
        |what: &str| -> Vec<f64> { rates.iter().filter(|r| r.0 == what).map(|r| r.2).collect() };
    let mut line = format!("medians over {rounds} rounds, MB/s:");
    for what in ["direct", "relay-only", "raw TCP"] {
        if let Some(m) = median(of(what)) {
            line.push_str(&format!(" {what} {m:.1},"));
        }
    }
    println!("{}", line.trim_end_matches(','));
    let ratios: Vec<f64> = (0..rounds)
        .filter_map(|round| {
            let rate = |what: &str| rates.iter().find(|r| r.0 == what && r.1 == round);
            Some(rate("direct")?.2 / rate("relay-only")?.2)
        })
        .collect();
    if let Some(m) = median(ratios.clone()) {
        let lo = ratios.iter().copied().fold(f64::INFINITY, f64::min);
        let hi = ratios.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        let reach = ratios.iter().filter(|&&r| r >= 0.8).count();
        println!(
            "direct / relay-only per round: median {m:.2} ({lo:.2} to {hi:.2}), {reach} of {} at 0.8 or more",
            ratios.len()
        );
    }
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let helper = match args.first().map(String::as_str) {
        Some("tcp-recv") if args.len() == 3 => Some(tcp_recv(&args[1], &args[2])),
        Some("tcp-send") if args.len() == 3 => Some(tcp_send(&args[1], &args[2])),
        _ => None,
    };
    if let Some(done) = helper {
        return match done {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("p2p-copy-bench-lab {}: {e}", args[0]);
                ExitCode::FAILURE
            }
        };
    }
    match parse_args(&args).and_then(run) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("p2p-copy-bench-lab: {e}");
            ExitCode::FAILURE
        }
    }
}
