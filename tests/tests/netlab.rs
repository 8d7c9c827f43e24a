//! The network-namespace lab: our relay's STUN answers as seen from hosts behind cone,
//! symmetric and UDP-blocking NATs, and the interface counters later tests measure with.
//!
//! Runs as root with iproute2 and nftables (`.ci/run` installs them). Without them the
//! tests fail with the reason, never skip.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use p2p_copy_tests::binary::cli_binary;
use p2p_copy_tests::netlab::{parse_proc_net_dev, Host, IfaceCounters, Lab, Nat, RELAY_IP};

/// The relay's WebSocket port, so STUN answers on it and the next one.
const PORT: u16 = 8765;

/// What `stun-probe` reported.
#[derive(Debug)]
struct Probe {
    results: Vec<Result<SocketAddr, String>>,
}

/// Run `stun-probe` in `ns`: one UDP socket bound to `bind`, asking each of `ports` on
/// the relay host in turn, `timeout_ms` each.
fn probe(lab: &Lab, ns: &str, bind: &str, timeout_ms: u64, ports: &[u16]) -> Probe {
    let servers: Vec<String> = ports.iter().map(|p| format!("{RELAY_IP}:{p}")).collect();
    let mut args = vec![bind.to_owned(), timeout_ms.to_string()];
    args.extend(servers);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = lab.exec(
        ns,
        Path::new(env!("CARGO_BIN_EXE_stun-probe")),
        &args,
        Duration::from_secs(60),
    );
    assert_eq!(out.code(), 0, "stun-probe failed: {out:?}");
    let json: serde_json::Value = serde_json::from_str(out.stdout.trim())
        .unwrap_or_else(|e| panic!("stun-probe printed {:?}: {e}", out.stdout));
    let results = json["results"]
        .as_array()
        .expect("results")
        .iter()
        .map(|r| match (r["mapped"].as_str(), r["error"].as_str()) {
            (Some(m), None) => Ok(m.parse().expect("mapped address")),
            (None, Some(e)) => Err(e.to_owned()),
            _ => panic!("bad result {r}"),
        })
        .collect();
    Probe { results }
}

/// A lab with our relay running on the relay host and one host behind each NAT given.
fn lab_with_relay(nats: &[(u8, Nat)]) -> (Lab, Vec<Host>, Vec<String>) {
    let mut lab = Lab::new();
    let hosts = nats.iter().map(|&(n, nat)| lab.add_nat(n, nat)).collect();
    let printed = lab.start_relay(&cli_binary(), PORT, &[]);
    (lab, hosts, printed)
}

fn mapped(p: &Probe) -> Vec<SocketAddr> {
    p.results
        .iter()
        .map(|r| {
            r.clone()
                .unwrap_or_else(|e| panic!("no answer: {e}; {p:?}"))
        })
        .collect()
}

#[test]
fn behind_a_cone_nat_both_relay_ports_see_one_public_address() {
    let (lab, hosts, printed) = lab_with_relay(&[(1, Nat::Cone)]);
    assert_eq!(
        printed[1..],
        [
            format!("relay answering STUN on udp {RELAY_IP}:{PORT}"),
            format!("relay answering STUN on udp {RELAY_IP}:{}", PORT + 1),
        ],
        "{printed:?}"
    );
    let host = &hosts[0];
    let seen = mapped(&probe(
        &lab,
        &host.ns,
        "0.0.0.0:40000",
        5000,
        &[PORT, PORT + 1],
    ));
    assert_eq!(
        seen[0], seen[1],
        "a cone NAT maps one socket to one address"
    );
    assert_eq!(seen[0].ip(), host.public_ip);
    // masquerade keeps the source port when it is free.
    assert_eq!(seen[0].port(), 40000);
}

#[test]
fn behind_a_symmetric_nat_the_relay_ports_see_different_ports() {
    let (lab, hosts, _) = lab_with_relay(&[(1, Nat::Symmetric)]);
    let host = &hosts[0];
    let seen = mapped(&probe(
        &lab,
        &host.ns,
        "0.0.0.0:40000",
        5000,
        &[PORT, PORT + 1],
    ));
    assert_eq!(seen[0].ip(), host.public_ip);
    assert_eq!(seen[1].ip(), host.public_ip);
    assert_ne!(
        seen[0].port(),
        seen[1].port(),
        "a symmetric NAT maps each destination to its own port"
    );
}

#[test]
fn behind_a_udp_blocking_nat_the_query_times_out_with_a_clear_error() {
    let (lab, hosts, _) = lab_with_relay(&[(1, Nat::Cone), (2, Nat::UdpBlocked)]);
    // The relay answers a host whose NAT passes UDP...
    mapped(&probe(&lab, &hosts[0].ns, "0.0.0.0:0", 5000, &[PORT]));
    // ...and not one whose NAT drops it.
    let blocked = probe(&lab, &hosts[1].ns, "0.0.0.0:0", 1500, &[PORT, PORT + 1]);
    for (result, port) in blocked.results.iter().zip([PORT, PORT + 1]) {
        let err = result
            .as_ref()
            .expect_err("no answer through a UDP-blocking NAT");
        let expected = format!("no STUN answer from {RELAY_IP}:{port} within");
        assert!(err.starts_with(&expected), "{err}");
    }
}

#[test]
fn stun_port_moves_stun_and_0_turns_it_off() {
    let mut lab = Lab::new();
    let host = lab.add_nat(1, Nat::Cone);
    let off = lab.start_relay(&cli_binary(), PORT, &["--stun-port", "0"]);
    assert_eq!(off.len(), 1, "no STUN lines: {off:?}");
    let moved = lab.start_relay(&cli_binary(), 9000, &["--stun-port", "3478"]);
    assert_eq!(moved.len(), 3, "{moved:?}");
    let p = probe(&lab, &host.ns, "0.0.0.0:0", 1500, &[3478, 3479, PORT]);
    assert_eq!(p.results[0], p.results[1]);
    assert_eq!(
        p.results[0].as_ref().expect("answer on 3478").ip(),
        host.public_ip
    );
    assert!(p.results[2].is_err(), "{p:?}");
}

#[test]
fn relay_interface_counters_see_the_stun_exchange() {
    let (lab, hosts, _) = lab_with_relay(&[(1, Nat::Cone)]);
    let relay = lab.relay_ns();
    let before = lab.iface(&relay, "wan0");
    let router_before = lab.iface(&hosts[0].router_ns, "wan0");
    mapped(&probe(
        &lab,
        &hosts[0].ns,
        "0.0.0.0:0",
        5000,
        &[PORT, PORT + 1],
    ));
    let after = lab.iface(&relay, "wan0");
    // Per request: 20 bytes of STUN, 8 UDP, 20 IPv4, 14 Ethernet; an answer is 12 more.
    let (rx, tx) = (
        after.rx_bytes - before.rx_bytes,
        after.tx_bytes - before.tx_bytes,
    );
    assert!(rx >= 2 * 62, "received {rx} bytes");
    assert!(tx >= 2 * 74, "sent {tx} bytes");
    assert!(after.rx_packets - before.rx_packets >= 2);
    assert!(after.tx_packets - before.tx_packets >= 2);
    // The host's NAT router forwarded the same exchange.
    let router = lab.iface(&hosts[0].router_ns, "wan0");
    let forwarded = router.tx_bytes - router_before.tx_bytes;
    assert!(forwarded >= 2 * 62, "the router sent {forwarded} bytes");
}

#[test]
fn a_failing_test_leaves_no_namespace_behind() {
    let created = std::sync::Mutex::new(Vec::new());
    let outcome = std::panic::catch_unwind(|| {
        let mut lab = Lab::new();
        lab.add_nat(1, Nat::Symmetric);
        created.lock().unwrap().extend_from_slice(lab.namespaces());
        panic!("a test fails with its lab up");
    });
    assert!(outcome.is_err());
    let created = created.into_inner().unwrap();
    assert_eq!(created.len(), 4, "{created:?}");
    let listed = std::process::Command::new("ip")
        .args(["netns", "list"])
        .output()
        .expect("ip netns list");
    let listed = String::from_utf8_lossy(&listed.stdout);
    for ns in &created {
        assert!(
            !listed
                .lines()
                .any(|l| l.split_whitespace().next() == Some(ns)),
            "{ns} still exists"
        );
    }
}

#[test]
fn proc_net_dev_parses_per_interface() {
    let text = "\
Inter-|   Receive                                                |  Transmit
 face |bytes    packets errs drop fifo frame compressed multicast|bytes    packets errs drop fifo colls carrier compressed
    lo:     140       2    0    0    0     0          0         0      140       2    0    0    0     0       0          0
  wan0: 1234567    1000    0    1    0     0          0         3 98765432   70000    0    0    0     0       0          0
";
    let c = parse_proc_net_dev(text);
    assert_eq!(c.len(), 2);
    assert_eq!(
        c["wan0"],
        IfaceCounters {
            rx_bytes: 1_234_567,
            rx_packets: 1000,
            tx_bytes: 98_765_432,
            tx_packets: 70_000,
        }
    );
    assert_eq!(c["wan0"].total_bytes(), 1_234_567 + 98_765_432);
    assert_eq!(c["lo"].rx_bytes, 140);
}

/// `p2p-copy netcheck` run on a host of the lab against our relay.
fn netcheck(lab: &Lab, host: &Host) -> String {
    let url = format!("ws://{RELAY_IP}:{PORT}");
    let out = lab.exec(
        &host.ns,
        &cli_binary(),
        &["netcheck", &url],
        Duration::from_secs(60),
    );
    assert_eq!(out.code(), 0, "netcheck failed: {out:?}");
    out.stdout
}

#[test]
fn netcheck_behind_a_cone_nat_says_direct_connections_are_likely() {
    let (lab, hosts, _) = lab_with_relay(&[(1, Nat::Cone)]);
    let out = netcheck(&lab, &hosts[0]);
    assert!(
        out.contains("relay ws://100.64.0.1:8765: reachable"),
        "{out}"
    );
    // Both STUN ports saw the NAT's public address, not the host's own.
    assert_eq!(
        out.matches("public address 100.64.0.2:").count(),
        2,
        "{out}"
    );
    assert!(out.contains("NAT mapping: endpoint-independent"), "{out}");
    assert!(out.contains("direct connections are likely"), "{out}");
    assert!(out.contains("verdict: direct connections likely"), "{out}");
}

#[test]
fn netcheck_behind_a_symmetric_nat_says_direct_connections_are_unlikely() {
    let (lab, hosts, _) = lab_with_relay(&[(1, Nat::Symmetric)]);
    let out = netcheck(&lab, &hosts[0]);
    assert_eq!(
        out.matches("public address 100.64.0.2:").count(),
        2,
        "{out}"
    );
    assert!(out.contains("NAT mapping: endpoint-dependent"), "{out}");
    assert!(out.contains("direct connections are unlikely"), "{out}");
    assert!(
        out.contains("verdict: symmetric NAT: transfers will use the relay"),
        "{out}"
    );
}

#[test]
fn netcheck_with_udp_blocked_says_only_the_relay_can_be_used() {
    let (lab, hosts, _) = lab_with_relay(&[(1, Nat::UdpBlocked)]);
    let out = netcheck(&lab, &hosts[0]);
    assert!(
        out.contains("relay ws://100.64.0.1:8765: reachable"),
        "{out}"
    );
    assert_eq!(out.matches(": no answer: ").count(), 2, "{out}");
    assert!(out.contains("only the relay can be used"), "{out}");
    assert!(
        out.contains("verdict: UDP blocked: transfers will use the relay"),
        "{out}"
    );
}

#[test]
fn netcheck_with_the_relay_unreachable_exits_2_and_says_so() {
    let mut lab = Lab::new();
    let host = lab.add_nat(1, Nat::Cone);
    // No relay on the relay host: nothing listens there.
    let url = format!("ws://{RELAY_IP}:{PORT}");
    let out = lab.exec(
        &host.ns,
        &cli_binary(),
        &["netcheck", &url],
        Duration::from_secs(60),
    );
    assert_eq!(out.code(), 2, "{out:?}");
    assert!(out.stdout.contains("not reachable"), "{out:?}");
    assert!(
        out.stdout.contains("verdict: the relay cannot be reached"),
        "{out:?}"
    );
}
