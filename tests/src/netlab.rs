//! A small internet in network namespaces, for tests of direct connections
//! (`shared/NETLAB.md` describes the topology and why each NAT rule is there).
//!
//! ```text
//! {p}-wan:   bridge br0, the "internet"
//! {p}-relay: wan0 100.64.0.1/24 on br0                 the relay host
//! {p}-natN:  wan0 100.64.0.(N+1)/24 on br0, bridge lan0 10.N.0.1/24, forwarding, NAT
//! {p}-hN:    eth0 10.N.0.2/24, default via 10.N.0.1   a host behind NAT N
//! {p}-hNxK:  eth0 10.N.0.K/24 on the same bridge       more hosts on that LAN
//! ```
//!
//! Beyond the topology: links limited with `tc … tbf` ([`Lab::limit_wan_link`],
//! [`Lab::limit_rate`]), UDP cut between two hosts while they talk
//! ([`Lab::block_udp_between`]), a TCP port forwarded through a NAT
//! ([`Lab::forward_tcp_port`]), and processes started in a namespace whose standard error
//! can be watched line by line ([`Lab::spawn`]).
//!
//! Every lab has its own name prefix `{p}` (process id and a counter), so tests run in
//! parallel. Dropping the [`Lab`] kills the processes it started and deletes every
//! namespace it created, also when the test panics. All addresses are the lab's own:
//! nothing is sent outside it. Commands run through `ip netns exec`.
//!
//! Needs root, iproute2 and nftables; without them [`Lab::new`] panics and says why (the
//! tests fail, never skip).

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::Ipv4Addr;
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::process::{ChildGuard, Finished};

/// The relay host's address on the lab's internet.
pub const RELAY_IP: Ipv4Addr = Ipv4Addr::new(100, 64, 0, 1);

/// How long one lab setup command may take.
const COMMAND_LIMIT: Duration = Duration::from_secs(20);

/// How a NAT router treats traffic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Nat {
    /// Endpoint-independent mapping (`masquerade` keeps the source port when it is free),
    /// port-restricted filtering.
    Cone,
    /// Endpoint-dependent mapping: `masquerade random`, a new port per destination.
    Symmetric,
    /// A cone NAT that drops all UDP in both directions; TCP still passes.
    UdpBlocked,
}

impl Nat {
    /// The router's nftables ruleset.
    fn ruleset(self) -> String {
        let masquerade = match self {
            Nat::Symmetric => "masquerade random",
            Nat::Cone | Nat::UdpBlocked => "masquerade",
        };
        let udp_drop = match self {
            Nat::UdpBlocked => "meta l4proto udp drop\n",
            Nat::Cone | Nat::Symmetric => "",
        };
        // The prerouting drop keeps an unsolicited packet's conntrack entry from taking
        // the port our next outgoing packet needs (which would make a cone NAT symmetric).
        format!(
            "table ip lab {{
  chain postrouting {{ type nat hook postrouting priority srcnat; oifname \"wan0\" {masquerade}; }}
  chain prerouting {{ type filter hook prerouting priority filter; iifname \"wan0\" ct state new drop; }}
  chain forward {{
    type filter hook forward priority filter; policy accept;
    {udp_drop}
    iifname \"wan0\" ct state established,related accept
    iifname \"wan0\" drop
  }}
}}
"
        )
    }
}

/// A host behind a NAT router.
#[derive(Debug, Clone)]
pub struct Host {
    /// The host's namespace.
    pub ns: String,
    /// Its address on its LAN (10.N.0.2).
    pub lan_ip: Ipv4Addr,
    /// The router's namespace.
    pub router_ns: String,
    /// The router's address on the lab's internet (100.64.0.N+1): the host's public IP.
    pub public_ip: Ipv4Addr,
}

/// Byte and packet counters of one interface, from `/proc/net/dev`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct IfaceCounters {
    /// Bytes received.
    pub rx_bytes: u64,
    /// Packets received.
    pub rx_packets: u64,
    /// Bytes sent.
    pub tx_bytes: u64,
    /// Packets sent.
    pub tx_packets: u64,
}

impl IfaceCounters {
    /// Bytes in and out together.
    pub fn total_bytes(&self) -> u64 {
        self.rx_bytes + self.tx_bytes
    }
}

/// Parse the text of `/proc/net/dev` into counters per interface name.
///
/// # Panics
/// On a line that is not in the kernel's format.
pub fn parse_proc_net_dev(text: &str) -> BTreeMap<String, IfaceCounters> {
    text.lines()
        .skip(2)
        .filter(|l| !l.trim().is_empty())
        .map(|line| {
            let (name, fields) = line
                .split_once(':')
                .unwrap_or_else(|| panic!("no interface name in {line:?}"));
            let f: Vec<u64> = fields
                .split_whitespace()
                .map(|v| {
                    v.parse()
                        .unwrap_or_else(|_| panic!("bad counter in {line:?}"))
                })
                .collect();
            assert_eq!(f.len(), 16, "not 16 counters in {line:?}");
            let counters = IfaceCounters {
                rx_bytes: f[0],
                rx_packets: f[1],
                tx_bytes: f[8],
                tx_packets: f[9],
            };
            (name.trim().to_owned(), counters)
        })
        .collect()
}

/// A lab: its namespaces and the processes running in them, removed on drop.
#[derive(Debug)]
pub struct Lab {
    prefix: String,
    /// Every namespace created, in order; deleted in reverse.
    namespaces: Vec<String>,
    /// Processes started in the lab; killed before the namespaces go.
    children: Vec<ChildGuard>,
    /// Processes started with [`Lab::spawn`], shared with their [`LabProcess`] handles.
    spawned: Vec<Arc<Mutex<Child>>>,
    /// Namespace attached to the bridge -> its port's name in the wan namespace.
    wan_ports: BTreeMap<String, String>,
    /// NAT number -> the last host address octet handed out on its LAN.
    lan_hosts: BTreeMap<u8, u8>,
    /// The process id of the relay [`Lab::start_relay`] started.
    relay_pid: Option<u32>,
}

impl Lab {
    /// Build the internet (a bridge) and the relay host on it.
    ///
    /// # Panics
    /// When namespaces cannot be created (not root, no iproute2 or nftables), with the
    /// reason.
    pub fn new() -> Lab {
        static COUNTER: AtomicU32 = AtomicU32::new(0);
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let mut lab = Lab {
            prefix: format!("p2pl{}x{n}", std::process::id()),
            namespaces: Vec::new(),
            children: Vec::new(),
            spawned: Vec::new(),
            wan_ports: BTreeMap::new(),
            lan_hosts: BTreeMap::new(),
            relay_pid: None,
        };
        lab.check_tools();
        // Left over by an earlier process with the same id that was killed.
        lab.delete_stale();
        let wan = lab.ns("wan");
        lab.add_ns(&wan);
        lab.run(&wan, &["ip", "link", "add", "br0", "type", "bridge"]);
        lab.run(&wan, &["ip", "link", "set", "br0", "up"]);
        let relay = lab.relay_ns();
        lab.add_ns(&relay);
        lab.attach_to_wan(&relay, RELAY_IP);
        lab
    }

    /// The namespaces created so far, in order.
    pub fn namespaces(&self) -> &[String] {
        &self.namespaces
    }

    /// The relay host's namespace.
    pub fn relay_ns(&self) -> String {
        self.ns("relay")
    }

    /// Add NAT router `n` (1..=200) of kind `nat`, with one host behind it.
    pub fn add_nat(&mut self, n: u8, nat: Nat) -> Host {
        assert!((1..=200).contains(&n), "NAT number {n} out of range");
        let router = self.ns(&format!("nat{n}"));
        let public_ip = Ipv4Addr::new(100, 64, 0, n + 1);
        self.add_ns(&router);
        self.attach_to_wan(&router, public_ip);
        // A bridge, so that more hosts can join the LAN later.
        self.run(&router, &["ip", "link", "add", "lan0", "type", "bridge"]);
        self.run(
            &router,
            &[
                "ip",
                "addr",
                "add",
                &format!("10.{n}.0.1/24"),
                "dev",
                "lan0",
            ],
        );
        self.run(&router, &["ip", "link", "set", "lan0", "up"]);
        self.run(
            &router,
            &["sh", "-c", "echo 1 > /proc/sys/net/ipv4/ip_forward"],
        );
        self.run_with_input(&router, &["nft", "-f", "-"], &nat.ruleset());
        self.lan_hosts.insert(n, 1);
        self.add_lan_host_of(n, &router, public_ip)
    }

    /// Add another host on the LAN of `neighbour`'s NAT router (10.N.0.3, then .4, …), in
    /// namespace `{p}-hNxK`. Traffic between hosts of one LAN stays on its bridge; it never
    /// passes the router's NAT or filters.
    pub fn add_lan_host(&mut self, neighbour: &Host) -> Host {
        let n = neighbour.lan_ip.octets()[1];
        self.add_lan_host_of(n, &neighbour.router_ns.clone(), neighbour.public_ip)
    }

    fn add_lan_host_of(&mut self, n: u8, router: &str, public_ip: Ipv4Addr) -> Host {
        let last = self
            .lan_hosts
            .get_mut(&n)
            .unwrap_or_else(|| panic!("no NAT router {n} in this lab"));
        *last += 1;
        let k = *last;
        assert!(k < 255, "LAN {n} is full");
        let host = if k == 2 {
            self.ns(&format!("h{n}"))
        } else {
            self.ns(&format!("h{n}x{k}"))
        };
        let lan_ip = Ipv4Addr::new(10, n, 0, k);
        let port = format!("v{k}");
        self.add_ns(&host);
        self.run(
            &host,
            &[
                "ip", "link", "add", "eth0", "type", "veth", "peer", "name", &port, "netns", router,
            ],
        );
        self.run(
            router,
            &["ip", "link", "set", &port, "master", "lan0", "up"],
        );
        self.run(
            &host,
            &["ip", "addr", "add", &format!("{lan_ip}/24"), "dev", "eth0"],
        );
        self.run(&host, &["ip", "link", "set", "eth0", "up"]);
        self.run(
            &host,
            &[
                "ip",
                "route",
                "add",
                "default",
                "via",
                &format!("10.{n}.0.1"),
            ],
        );
        Host {
            ns: host,
            lan_ip,
            router_ns: router.to_owned(),
            public_ip,
        }
    }

    /// Limit what `iface` in namespace `ns` sends to `mbit` Mbit/s (`tc qdisc replace …
    /// root tbf`). The burst is a hundredth of a second at that rate (at least 256 KiB,
    /// what held a 100 Mbit/s link to its rate here), and up to 50 ms of packets queue
    /// before the rest are dropped, as at a real bottleneck.
    pub fn limit_rate(&self, ns: &str, iface: &str, mbit: u32) {
        assert!(mbit > 0, "a rate of 0 Mbit/s");
        let burst = (u64::from(mbit) * 1_000_000 / 8 / 100).max(256 * 1024);
        self.run(
            ns,
            &[
                "tc",
                "qdisc",
                "replace",
                "dev",
                iface,
                "root",
                "tbf",
                "rate",
                &format!("{mbit}mbit"),
                "burst",
                &burst.to_string(),
                "latency",
                "50ms",
            ],
        );
    }

    /// Limit the link between namespace `ns` (the relay host or a NAT router) and the
    /// lab's internet to `mbit` Mbit/s in each direction: its `wan0` and the bridge's
    /// port facing it.
    pub fn limit_wan_link(&self, ns: &str, mbit: u32) {
        let port = self
            .wan_ports
            .get(ns)
            .unwrap_or_else(|| panic!("{ns} has no link to the lab's internet"));
        self.limit_rate(ns, "wan0", mbit);
        self.limit_rate(&self.ns("wan"), port, mbit);
    }

    /// Drop, from now on, all UDP between `a` and `b` on their NAT routers (both ways, on
    /// both routers, flows already under way included), while TCP (and so the relay) still
    /// passes. The hosts must sit behind different routers: traffic within one LAN never
    /// reaches its router's filters.
    pub fn block_udp_between(&self, a: &Host, b: &Host) {
        assert_ne!(
            a.router_ns, b.router_ns,
            "hosts on one LAN talk past their router"
        );
        self.block_udp(a, b.public_ip);
        self.block_udp(b, a.public_ip);
    }

    /// Drop, from now on, all UDP between the hosts behind `host`'s NAT router and `peer`
    /// (both ways, flows already under way included).
    pub fn block_udp(&self, host: &Host, peer: Ipv4Addr) {
        let peer = peer.to_string();
        // `insert` puts the drops ahead of the rule that accepts established flows.
        for dir in ["saddr", "daddr"] {
            self.run(
                &host.router_ns,
                &[
                    "nft", "insert", "rule", "ip", "lab", "forward", "ip", dir, &peer, "meta",
                    "l4proto", "udp", "drop",
                ],
            );
        }
    }

    /// Forward TCP `port` on `host`'s public address to the same port on the host, through
    /// its NAT router, so that hosts elsewhere can connect to it.
    pub fn forward_tcp_port(&self, host: &Host, port: u16) {
        let (port, lan_ip) = (port.to_string(), host.lan_ip.to_string());
        let rules = format!(
            "add chain ip lab dstnat {{ type nat hook prerouting priority dstnat; }}
add rule ip lab dstnat iifname \"wan0\" tcp dport {port} dnat to {lan_ip}
insert rule ip lab prerouting iifname \"wan0\" tcp dport {port} accept
insert rule ip lab forward iifname \"wan0\" ip daddr {lan_ip} tcp dport {port} accept
"
        );
        self.run_with_input(&host.router_ns, &["nft", "-f", "-"], &rules);
    }

    /// Start `cmd` (program, arguments, environment and working directory) in namespace
    /// `ns`, with stdin closed and its output collected. Its standard error can be watched
    /// line by line while it runs. The lab kills it (by its PID, which is the program's
    /// own: `ip netns exec` execs it) when dropped, if it still runs then.
    pub fn spawn(&mut self, ns: &str, cmd: &Command) -> LabProcess {
        let mut wrapped = Command::new("ip");
        wrapped
            .args(["netns", "exec", ns])
            .arg(cmd.get_program())
            .args(cmd.get_args());
        for (key, value) in cmd.get_envs() {
            match value {
                Some(v) => wrapped.env(key, v),
                None => wrapped.env_remove(key),
            };
        }
        if let Some(dir) = cmd.get_current_dir() {
            wrapped.current_dir(dir);
        }
        let mut child = wrapped
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {wrapped:?}: {e}"));
        let id = child.id();
        let stdout = child.stdout.take().expect("piped stdout");
        let stderr = child.stderr.take().expect("piped stderr");
        let child = Arc::new(Mutex::new(child));
        self.spawned.push(Arc::clone(&child));
        let stdout = std::thread::spawn(move || {
            let mut buf = Vec::new();
            let _ = BufReader::new(stdout).read_to_end(&mut buf);
            String::from_utf8_lossy(&buf).into_owned()
        });
        let (tx, lines) = mpsc::channel();
        let stderr = std::thread::spawn(move || {
            let mut all = String::new();
            let mut reader = BufReader::new(stderr);
            let mut line = Vec::new();
            while matches!(reader.read_until(b'\n', &mut line), Ok(n) if n > 0) {
                let text = String::from_utf8_lossy(&line).into_owned();
                all.push_str(&text);
                let _ = tx.send(text.trim_end_matches(['\n', '\r']).to_owned());
                line.clear();
            }
            all
        });
        LabProcess {
            id,
            child,
            lines,
            stdout: Some(stdout),
            stderr: Some(stderr),
        }
    }

    /// Run our relay binary `bin` in the relay namespace: `run-relay-server 100.64.0.1
    /// <port> --no-tls <extra>` (`extra` may turn TLS on with `--tls` and its files),
    /// and wait (up to 10 s) until it says it listens. Returns the lines it printed by
    /// then (the URL, then the STUN addresses). The relay is killed when the lab is
    /// dropped.
    pub fn start_relay(&mut self, bin: &Path, port: u16, extra: &[&str]) -> Vec<String> {
        let relay = self.relay_ns();
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &relay])
            .arg(bin)
            .args([
                "run-relay-server",
                &RELAY_IP.to_string(),
                &port.to_string(),
                "--no-tls",
            ])
            .args(extra);
        let (guard, stdout) = ChildGuard::spawn_reading_stdout(&mut cmd);
        // `ip netns exec` execs the relay: this is the relay's own process id.
        self.relay_pid = Some(guard.id());
        self.children.push(guard);
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { return };
                if tx.send(line).is_err() {
                    // Keep draining so the relay never blocks on a full pipe.
                    continue;
                }
            }
        });
        let mut lines = Vec::new();
        // The URL comes first, the STUN lines right after it; collect what comes within a
        // short pause after the URL.
        match rx.recv_timeout(Duration::from_secs(10)) {
            Ok(first) => lines.push(first),
            Err(_) => panic!("the relay in {relay} printed nothing within 10 s"),
        }
        while let Ok(line) = rx.recv_timeout(Duration::from_millis(300)) {
            lines.push(line);
        }
        assert!(
            lines[0].starts_with("relay listening on ws://")
                || lines[0].starts_with("relay listening on wss://"),
            "unexpected output from the relay: {lines:?}"
        );
        lines
    }

    /// The process id of the relay that [`Lab::start_relay`] started, if it did.
    pub fn relay_pid(&self) -> Option<u32> {
        self.relay_pid
    }

    /// Set the MTU of every link in the lab (each veth end, then each bridge) to `mtu`
    /// bytes, for measurements on jumbo-frame paths. Call it after the hosts are added;
    /// hosts added later keep the 1500-byte default.
    pub fn set_mtu(&self, mtu: u32) {
        let mtu = mtu.to_string();
        for kind in ["veth", "bridge"] {
            for ns in &self.namespaces {
                let out = self.run(ns, &["ip", "-o", "link", "show", "type", kind]);
                let listed = String::from_utf8_lossy(&out.stdout).into_owned();
                // `2: eth0@if5: <…>`: the name is the second field, before any `@`.
                for name in listed.lines().filter_map(|l| l.split(": ").nth(1)) {
                    let name = name.split('@').next().unwrap_or(name);
                    self.run(ns, &["ip", "link", "set", "dev", name, "mtu", &mtu]);
                }
            }
        }
    }

    /// Run `program args` in namespace `ns` to completion (panics after `limit`) and
    /// return its exit status and output.
    pub fn exec(
        &self,
        ns: &str,
        program: &Path,
        args: &[&str],
        limit: Duration,
    ) -> crate::process::Finished {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", ns]).arg(program).args(args);
        ChildGuard::spawn(&mut cmd).wait(limit)
    }

    /// The interface counters of namespace `ns`, read from its `/proc/net/dev`.
    pub fn counters(&self, ns: &str) -> BTreeMap<String, IfaceCounters> {
        let out = self.run(ns, &["cat", "/proc/net/dev"]);
        parse_proc_net_dev(&String::from_utf8_lossy(&out.stdout))
    }

    /// Counters of interface `iface` in namespace `ns`.
    ///
    /// # Panics
    /// If there is no such interface.
    pub fn iface(&self, ns: &str, iface: &str) -> IfaceCounters {
        *self
            .counters(ns)
            .get(iface)
            .unwrap_or_else(|| panic!("no interface {iface} in {ns}"))
    }

    fn ns(&self, role: &str) -> String {
        format!("{}-{role}", self.prefix)
    }

    fn check_tools(&self) {
        for (tool, package) in [("ip", "iproute2"), ("nft", "nftables")] {
            let found = Command::new(tool)
                .arg("-V")
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok();
            assert!(
                found,
                "the network-namespace lab needs `{tool}` (Debian package {package}); \
                 .ci/run installs it"
            );
        }
    }

    fn delete_stale(&self) {
        let Ok(out) = Command::new("ip").args(["netns", "list"]).output() else {
            return;
        };
        let listed = String::from_utf8_lossy(&out.stdout).into_owned();
        let own = format!("{}-", self.prefix);
        for name in listed.lines().filter_map(|l| l.split_whitespace().next()) {
            if name.starts_with(&own) {
                let _ = Command::new("ip").args(["netns", "del", name]).status();
            }
        }
    }

    /// Create namespace `ns` (recorded first, so that drop deletes it even if creation
    /// fails halfway) with its loopback up.
    fn add_ns(&mut self, ns: &str) {
        let out = Command::new("ip")
            .args(["netns", "add", ns])
            .output()
            .unwrap_or_else(|e| panic!("cannot run `ip netns add`: {e}"));
        assert!(
            out.status.success(),
            "cannot create network namespace {ns}: {}\
             the lab needs root (or CAP_SYS_ADMIN and CAP_NET_ADMIN) and a kernel with \
             network namespaces",
            String::from_utf8_lossy(&out.stderr)
        );
        self.namespaces.push(ns.to_owned());
        self.run(ns, &["ip", "link", "set", "lo", "up"]);
    }

    /// Give `ns` an interface wan0 with address `ip`/24 on the lab's bridge.
    fn attach_to_wan(&mut self, ns: &str, ip: Ipv4Addr) {
        let wan = self.ns("wan");
        let port = format!("p{}", ip.octets()[3]);
        self.run(
            ns,
            &[
                "ip", "link", "add", "wan0", "type", "veth", "peer", "name", &port, "netns", &wan,
            ],
        );
        self.run(&wan, &["ip", "link", "set", &port, "master", "br0", "up"]);
        self.run(
            ns,
            &["ip", "addr", "add", &format!("{ip}/24"), "dev", "wan0"],
        );
        self.run(ns, &["ip", "link", "set", "wan0", "up"]);
        self.wan_ports.insert(ns.to_owned(), port);
    }

    /// Run a setup command in `ns`; panics with its output if it fails.
    fn run(&self, ns: &str, argv: &[&str]) -> Output {
        self.run_with_input(ns, argv, "")
    }

    fn run_with_input(&self, ns: &str, argv: &[&str], input: &str) -> Output {
        let mut child = Command::new("ip")
            .args(["netns", "exec", ns])
            .args(argv)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run `ip netns exec {ns} {argv:?}`: {e}"));
        let mut stdin = child.stdin.take().expect("piped stdin");
        stdin
            .write_all(input.as_bytes())
            .unwrap_or_else(|e| panic!("{argv:?} in {ns}: writing its input: {e}"));
        drop(stdin);
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let _ = tx.send(child.wait_with_output());
        });
        let out = rx
            .recv_timeout(COMMAND_LIMIT)
            .unwrap_or_else(|_| panic!("{argv:?} in {ns}: still running after {COMMAND_LIMIT:?}"))
            .unwrap_or_else(|e| panic!("{argv:?} in {ns}: {e}"));
        assert!(
            out.status.success(),
            "{argv:?} in {ns} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        out
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        // Processes first: a namespace with a process in it outlives `ip netns del`.
        for child in &mut self.children {
            child.kill();
        }
        self.children.clear();
        for child in self.spawned.drain(..) {
            // A poisoned lock still holds the child; kill it all the same.
            let mut child = child.lock().unwrap_or_else(|e| e.into_inner());
            // Ok also when it has exited and been reaped: std then sends no signal.
            let _ = child.kill();
            let _ = child.wait();
        }
        for ns in self.namespaces.iter().rev() {
            let _ = Command::new("ip")
                .args(["netns", "del", ns])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
    }
}

impl Default for Lab {
    fn default() -> Lab {
        Lab::new()
    }
}

/// A process started in a namespace with [`Lab::spawn`]. Dropping the handle leaves the
/// process running; the [`Lab`] kills it when the lab is dropped.
#[derive(Debug)]
pub struct LabProcess {
    id: u32,
    child: Arc<Mutex<Child>>,
    lines: mpsc::Receiver<String>,
    stdout: Option<JoinHandle<String>>,
    stderr: Option<JoinHandle<String>>,
}

impl LabProcess {
    /// Its process id.
    pub fn id(&self) -> u32 {
        self.id
    }

    /// Has it exited yet?
    pub fn has_exited(&self) -> bool {
        matches!(self.lock().try_wait(), Ok(Some(_)))
    }

    /// Wait up to `limit` for a line of standard error, not seen by an earlier call, that
    /// `wanted` accepts, and return it. `None` when the process closed its standard error
    /// first or the time ran out.
    pub fn wait_for_stderr_line(
        &self,
        limit: Duration,
        wanted: impl Fn(&str) -> bool,
    ) -> Option<String> {
        let deadline = Instant::now() + limit;
        loop {
            let left = deadline.checked_duration_since(Instant::now())?;
            match self.lines.recv_timeout(left) {
                Ok(line) if wanted(&line) => return Some(line),
                Ok(_) => {}
                Err(_) => return None,
            }
        }
    }

    /// Wait until it exits and return how it ended and all it printed; after `limit` it
    /// is killed and this panics with what it wrote to standard error.
    pub fn wait(self, limit: Duration) -> Finished {
        let id = self.id;
        let (finished, killed) = self.wait_or_kill(limit);
        assert!(
            !killed,
            "process {id} still running after {limit:?}; killed. stderr:\n{}",
            finished.stderr
        );
        finished
    }

    /// Wait until it exits, for at most `limit`, then kill it if it still runs. Returns
    /// how it ended with all it printed, and whether it had to be killed.
    pub fn wait_or_kill(mut self, limit: Duration) -> (Finished, bool) {
        let deadline = Instant::now() + limit;
        let mut killed = false;
        let status = loop {
            let mut child = self.lock();
            if let Some(status) = child.try_wait().expect("try_wait") {
                break status;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                killed = true;
                break child.wait().expect("wait for a killed child");
            }
            drop(child);
            std::thread::sleep(Duration::from_millis(20));
        };
        let finished = Finished {
            status,
            stdout: self.stdout.take().map(join).unwrap_or_default(),
            stderr: self.stderr.take().map(join).unwrap_or_default(),
        };
        (finished, killed)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Child> {
        self.child.lock().unwrap_or_else(|e| e.into_inner())
    }
}

fn join(h: JoinHandle<String>) -> String {
    h.join().unwrap_or_default()
}
