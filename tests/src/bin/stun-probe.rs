//! Test helper for the network-namespace lab, run inside a namespace: bind one UDP
//! socket, ask each STUN server in turn for that socket's reflexive address, and print
//! one JSON line: `{"local": ADDR, "results": [{"server": ADDR, "mapped": ADDR} or
//! {"server": ADDR, "error": TEXT}, …]}`.
//!
//! Usage: `stun-probe BIND_ADDR TIMEOUT_MS SERVER…`

use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use serde_json::json;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let parsed = (|| {
        let bind: SocketAddr = args.first()?.parse().ok()?;
        let timeout = Duration::from_millis(args.get(1)?.parse().ok()?);
        let servers = args[2..]
            .iter()
            .map(|s| s.parse().ok())
            .collect::<Option<Vec<SocketAddr>>>()?;
        Some((bind, timeout, servers))
    })();
    let Some((bind, timeout, servers)) = parsed else {
        eprintln!("usage: stun-probe BIND_ADDR TIMEOUT_MS SERVER...");
        return ExitCode::from(2);
    };
    smol::block_on(async {
        let socket = match smol::net::UdpSocket::bind(bind).await {
            Ok(s) => s,
            Err(e) => {
                eprintln!("stun-probe: cannot bind {bind}: {e}");
                return ExitCode::FAILURE;
            }
        };
        let local = socket
            .local_addr()
            .map(|a| a.to_string())
            .unwrap_or_default();
        let mut results = Vec::new();
        for server in servers {
            let deadline = Instant::now() + timeout;
            results.push(
                match p2p_copy_smol::stun_query(&socket, server, deadline).await {
                    Ok(mapped) => {
                        json!({"server": server.to_string(), "mapped": mapped.to_string()})
                    }
                    Err(e) => json!({"server": server.to_string(), "error": e.to_string()}),
                },
            );
        }
        println!("{}", json!({"local": local, "results": results}));
        ExitCode::SUCCESS
    })
}
