//! `netcheck`: what this network allows, as the direct path needs it. Whether the relay
//! answers over WebSocket and how fast; whether UDP reaches its STUN ports; this side's
//! public (reflexive) address; how the NAT maps ports, from the addresses the relay's
//! two STUN ports saw for one socket; and whether this host has a global IPv6 address.

use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
use std::time::{Duration, Instant};

use crate::rt::Rt;
use crate::transport::{self, relay_host_port};

/// How long each STUN server gets to answer.
const STUN_WAIT: Duration = Duration::from_millis(1500);

/// One STUN server's answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StunAnswer {
    /// The server asked.
    pub server: SocketAddr,
    /// The reflexive address it saw and the time the answer took, or why none came.
    pub result: Result<(SocketAddr, Duration), String>,
}

/// How the NAT in front of this host maps one local UDP port towards different
/// destinations.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mapping {
    /// The same public address and port towards both STUN ports (a "cone" NAT, or no
    /// NAT at all): hole punching works, direct connections are likely.
    EndpointIndependent,
    /// A different public port towards each (a "symmetric" NAT): the peer cannot
    /// predict the port, direct connections are unlikely and the relay carries the data.
    EndpointDependent,
    /// No STUN answer at all: UDP is blocked (or the relay serves no STUN); only the
    /// relay can be used.
    UdpBlocked,
    /// Only one STUN port answered: the mapping cannot be told.
    Unknown,
}

impl Mapping {
    /// The mapping shown by the public addresses the relay's two STUN ports saw for one
    /// socket (`None`: no answer).
    pub fn from_answers(first: Option<SocketAddr>, second: Option<SocketAddr>) -> Mapping {
        match (first, second) {
            (Some(a), Some(b)) if a == b => Mapping::EndpointIndependent,
            (Some(_), Some(_)) => Mapping::EndpointDependent,
            (None, None) => Mapping::UdpBlocked,
            _ => Mapping::Unknown,
        }
    }

    /// What it means for transfers, in a few words.
    pub fn verdict(&self) -> &'static str {
        match self {
            Mapping::EndpointIndependent => "direct connections likely",
            Mapping::EndpointDependent => {
                "symmetric NAT: transfers will use the relay (unless the peer is reachable)"
            }
            Mapping::UdpBlocked => "UDP blocked: transfers will use the relay",
            Mapping::Unknown => "direct connections possible: only one STUN port answered",
        }
    }

    /// One line for the user.
    pub fn explain(&self) -> &'static str {
        match self {
            Mapping::EndpointIndependent => {
                "endpoint-independent (the same public port towards both STUN ports): direct connections are likely"
            }
            Mapping::EndpointDependent => {
                "endpoint-dependent (a new public port for each destination, a \"symmetric\" NAT): direct connections are unlikely, the relay carries the data"
            }
            Mapping::UdpBlocked => {
                "unknown: no UDP answer (UDP is blocked, or the relay serves no STUN): only the relay can be used"
            }
            Mapping::Unknown => "unknown: only one STUN port answered",
        }
    }
}

impl NetReport {
    /// The one-line verdict: what transfers through this relay will do.
    pub fn verdict(&self) -> &'static str {
        match &self.relay_open {
            Err(_) => "the relay cannot be reached: no transfer through it is possible",
            Ok(_) => self.mapping.verdict(),
        }
    }
}

/// What [`netcheck`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetReport {
    /// The relay's URL.
    pub relay: String,
    /// Time to open a WebSocket to the relay (TCP, TLS for `wss://`, the upgrade), or
    /// why it failed.
    pub relay_open: Result<Duration, String>,
    /// The relay's two STUN ports (its listener's port and the next), then any extra
    /// servers, each with its answer.
    pub stun: Vec<StunAnswer>,
    /// The NAT's mapping, from the relay's two STUN ports.
    pub mapping: Mapping,
    /// A global IPv6 address of this host, if it has one.
    pub ipv6: Option<IpAddr>,
}

/// Check the network towards the relay at `server` (and the STUN servers `extra`).
pub async fn netcheck<R: Rt>(
    rt: R,
    server: &str,
    ca_file: Option<&std::path::Path>,
    extra: &[String],
) -> NetReport {
    let start = Instant::now();
    let relay_open =
        match transport::connect(&rt, server, ca_file, None, None, Duration::from_secs(10)).await {
            Ok(ws) => {
                let took = start.elapsed();
                let mut ws = transport::WsTransport(ws);
                let _ = transport::close(&mut ws, 1000, "netcheck").await;
                Ok(took)
            }
            Err(e) => Err(e.to_string()),
        };
    let mut servers: Vec<SocketAddr> = Vec::new();
    if let Some((host, port)) = relay_host_port(server) {
        if let Some(a) = (host.as_str(), port)
            .to_socket_addrs()
            .ok()
            .and_then(|mut a| a.find(SocketAddr::is_ipv4))
        {
            servers.push(a);
            if let Some(next) = port.checked_add(1) {
                servers.push(SocketAddr::new(a.ip(), next));
            }
        }
    }
    for s in extra {
        if let Some(a) = s
            .to_socket_addrs()
            .ok()
            .and_then(|mut a| a.find(SocketAddr::is_ipv4))
        {
            servers.push(a);
        }
    }
    let mut stun = Vec::new();
    match rt.bind_udp(SocketAddr::from(([0, 0, 0, 0], 0))).await {
        Ok(socket) => {
            for server in servers {
                let asked = Instant::now();
                let result = crate::stun_client::stun_query(
                    &rt,
                    &socket,
                    server,
                    Instant::now() + STUN_WAIT,
                )
                .await
                .map(|a| {
                    (
                        SocketAddr::new(a.ip().to_canonical(), a.port()),
                        asked.elapsed(),
                    )
                })
                .map_err(|e| e.to_string());
                stun.push(StunAnswer { server, result });
            }
        }
        Err(e) => {
            for server in servers {
                stun.push(StunAnswer {
                    server,
                    result: Err(format!("cannot open a UDP socket: {e}")),
                });
            }
        }
    }
    let seen = |i: usize| -> Option<SocketAddr> {
        stun.get(i)
            .and_then(|a| a.result.as_ref().ok().map(|(m, _)| *m))
    };
    let mapping = Mapping::from_answers(seen(0), seen(1));
    let ipv6 = if_addrs::get_if_addrs()
        .unwrap_or_default()
        .into_iter()
        .map(|i| i.ip())
        .find(|ip| match ip {
            IpAddr::V6(v6) => {
                !v6.is_loopback()
                    && !v6.is_unspecified()
                    && v6.segments()[0] & 0xffc0 != 0xfe80
                    && v6.segments()[0] & 0xfe00 != 0xfc00
            }
            IpAddr::V4(_) => false,
        });
    NetReport {
        relay: server.to_owned(),
        relay_open,
        stun,
        mapping,
        ipv6,
    }
}
