//! STUN on the relay: answer Binding requests on UDP with the sender's own address, within
//! a rate limit per source and a global one.
//!
//! The messages are the core's ([`p2p_copy_core::stun`]): an answer carries nothing but
//! XOR-MAPPED-ADDRESS and is never more than a few bytes larger than its request, and
//! anything that is not a plain Binding request gets no answer. The limits here keep a
//! flood, spoofed or not, from turning the relay into a reflector: a source gets a short
//! burst and then a few answers a second, all sources together a bounded rate, and the
//! table of sources has a fixed size.

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use p2p_copy_core::stun;

use crate::config::StunPorts;
use crate::relay_metrics::RelayMetrics;
use crate::rt::Rt;

/// The relay's limits.
const LIMITS: Limits = Limits {
    source_burst: 16.0,
    source_rate: 8.0,
    // At most 44 bytes each, under 100 KB/s of answers whatever comes in.
    global_rate: 2000.0,
    max_sources: 4096,
};

/// How many answers the relay gives.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Limits {
    /// Answers a source may get at once, after a pause.
    source_burst: f64,
    /// Answers a second a source gets after its burst.
    source_rate: f64,
    /// Answers a second for all sources together, and the burst of the same size.
    global_rate: f64,
    /// Sources remembered at once.
    max_sources: usize,
}
/// How often a full table is swept for sources whose bucket has refilled (they are then
/// no different from a source never seen).
const SWEEP_INTERVAL: Duration = Duration::from_secs(1);
/// Larger datagrams are cut to this, which makes them fail the length check: a Binding
/// request is a few dozen bytes.
const RECV_BUF: usize = 1500;

/// A token bucket.
#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

impl Bucket {
    fn full(now: Instant, burst: f64) -> Bucket {
        Bucket {
            tokens: burst,
            at: now,
        }
    }

    fn refill(&mut self, now: Instant, rate: f64, burst: f64) {
        let elapsed = now.saturating_duration_since(self.at).as_secs_f64();
        self.tokens = (self.tokens + elapsed * rate).min(burst);
        self.at = now;
    }
}

/// Rate limits for STUN answers: a token bucket per source and one for all sources, with
/// a bounded table. Pure: time comes in as `now`.
#[derive(Debug)]
pub(crate) struct RateLimiter {
    limits: Limits,
    sources: HashMap<IpAddr, Bucket>,
    global: Bucket,
    last_sweep: Instant,
}

impl RateLimiter {
    /// A limiter with the relay's limits.
    pub(crate) fn new(now: Instant) -> RateLimiter {
        RateLimiter::with_limits(now, LIMITS)
    }

    fn with_limits(now: Instant, limits: Limits) -> RateLimiter {
        RateLimiter {
            limits,
            sources: HashMap::new(),
            global: Bucket::full(now, limits.global_rate),
            last_sweep: now,
        }
    }

    /// Whether a request from `source` at `now` may be answered; takes a token if so.
    pub(crate) fn allow(&mut self, now: Instant, source: IpAddr) -> bool {
        let Limits {
            source_burst,
            source_rate,
            global_rate,
            max_sources,
        } = self.limits;
        self.global.refill(now, global_rate, global_rate);
        if self.global.tokens < 1.0 {
            return false;
        }
        let key = source_key(source);
        if !self.sources.contains_key(&key) && self.sources.len() >= max_sources {
            // A flood from many (likely spoofed) sources: sweep at most once per interval,
            // and until there is room, new sources get nothing.
            if now.saturating_duration_since(self.last_sweep) < SWEEP_INTERVAL {
                return false;
            }
            self.last_sweep = now;
            self.sources.retain(|_, b| {
                let mut b = *b;
                b.refill(now, source_rate, source_burst);
                b.tokens < source_burst
            });
            if self.sources.len() >= max_sources {
                return false;
            }
        }
        let bucket = self
            .sources
            .entry(key)
            .or_insert_with(|| Bucket::full(now, source_burst));
        bucket.refill(now, source_rate, source_burst);
        if bucket.tokens < 1.0 {
            return false;
        }
        bucket.tokens -= 1.0;
        self.global.tokens -= 1.0;
        true
    }

    #[cfg(test)]
    fn sources(&self) -> usize {
        self.sources.len()
    }
}

/// The key a source is limited under: its IPv4 address, or its IPv6 /64 (one host
/// usually holds a whole /64, and could otherwise take a fresh address per request).
fn source_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let prefix = u128::from(v6) & !((1u128 << 64) - 1);
                IpAddr::V6(Ipv6Addr::from(prefix))
            }
        },
    }
}

/// The address to report: an IPv4 client reaching a dual-stack socket shows up as an
/// IPv4-mapped IPv6 address, but its reflexive address is the IPv4 one.
fn reported(source: SocketAddr) -> SocketAddr {
    SocketAddr::new(source.ip().to_canonical(), source.port())
}

/// Bind the STUN sockets for a relay listening on `listener` that was asked for
/// `asked_port`.
///
/// # Errors
/// A port that leaves no room for the second one, or a bind error, naming the port.
pub(crate) async fn bind<R: Rt>(
    rt: &R,
    listener: SocketAddr,
    asked_port: u16,
    ports: StunPorts,
) -> io::Result<Vec<R::UdpSocket>> {
    let first = match ports {
        StunPorts::Off => return Ok(Vec::new()),
        StunPorts::SameAsListener => asked_port,
        StunPorts::Port(p) => p,
    };
    let pair = if first == 0 {
        [0, 0]
    } else {
        let second = first.checked_add(1).ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                "STUN port 65535 leaves no room for the second STUN port",
            )
        })?;
        [first, second]
    };
    let mut sockets = Vec::with_capacity(2);
    for port in pair {
        let addr = SocketAddr::new(listener.ip(), port);
        let socket = rt
            .bind_udp(addr)
            .await
            .map_err(|e| io::Error::new(e.kind(), format!("STUN on udp {addr}: {e}")))?;
        sockets.push(socket);
    }
    Ok(sockets)
}

/// A shared limiter, so that a flood split over both ports counts once.
pub(crate) type SharedLimiter = Arc<Mutex<RateLimiter>>;

/// Answer Binding requests on `socket` until dropped.
pub(crate) async fn serve<R: Rt>(
    rt: R,
    socket: R::UdpSocket,
    limiter: SharedLimiter,
    metrics: Arc<RelayMetrics>,
) {
    let mut buf = [0u8; RECV_BUF];
    loop {
        let (n, source) = match R::recv_from(&socket, &mut buf).await {
            Ok(got) => got,
            // A receive error (a stray ICMP report on some systems) leaves the socket
            // usable; the pause keeps a persistent one from spinning.
            Err(e) => {
                log::debug!("STUN: receive failed: {e}");
                rt.sleep_until(Instant::now() + Duration::from_millis(10))
                    .await;
                continue;
            }
        };
        let Ok(request) = stun::parse_binding_request(&buf[..n]) else {
            continue;
        };
        let allowed = limiter
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .allow(Instant::now(), source.ip());
        metrics.stun(allowed);
        if !allowed {
            log::trace!("STUN: over the rate limit, not answering {source}");
            continue;
        }
        let answer = request.success_response(reported(source));
        if let Err(e) = R::send_to(&socket, &answer, source).await {
            log::debug!("STUN: answering {source} failed: {e}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    fn ip(last: u8) -> IpAddr {
        IpAddr::V4(Ipv4Addr::new(100, 64, 0, last))
    }

    #[test]
    fn a_source_gets_its_burst_then_its_rate() {
        let t0 = Instant::now();
        let mut l = RateLimiter::new(t0);
        let answered = (0..100).filter(|_| l.allow(t0, ip(2))).count();
        assert_eq!(answered, LIMITS.source_burst as usize);
        // Another source is not held back by the first one's flood.
        assert!(l.allow(t0, ip(3)));
        // One second later, the rate's worth again.
        let t1 = t0 + Duration::from_secs(1);
        let answered = (0..100).filter(|_| l.allow(t1, ip(2))).count();
        assert_eq!(answered, LIMITS.source_rate as usize);
    }

    #[test]
    fn all_sources_together_stay_within_the_global_rate() {
        let t0 = Instant::now();
        let mut l = RateLimiter::new(t0);
        let mut answered = 0;
        for i in 0..10_000u32 {
            let source = IpAddr::V4(Ipv4Addr::from(0x0a00_0000 + i));
            answered += usize::from(l.allow(t0, source));
        }
        assert_eq!(answered, LIMITS.global_rate as usize);
        assert!(l.sources() <= LIMITS.max_sources);
    }

    #[test]
    fn a_full_source_table_refuses_new_sources_until_a_sweep_frees_room() {
        let small = Limits {
            source_burst: 2.0,
            source_rate: 1.0,
            global_rate: 1000.0,
            max_sources: 4,
        };
        let t0 = Instant::now();
        let mut l = RateLimiter::with_limits(t0, small);
        for i in 1..=4 {
            assert!(l.allow(t0, ip(i)));
        }
        // Full, and swept less than a second ago: a new source gets nothing, a known one
        // still gets its burst.
        assert!(!l.allow(t0 + Duration::from_millis(500), ip(5)));
        assert!(l.allow(t0 + Duration::from_millis(500), ip(1)));
        assert_eq!(l.sources(), 4);
        // Later, sources 2..4 have refilled and are forgotten; source 1 is still draining.
        let t1 = t0 + Duration::from_millis(1100);
        assert!(l.allow(t1, ip(5)));
        assert_eq!(l.sources(), 2);
    }

    #[test]
    fn an_ipv6_host_is_limited_per_64() {
        let t0 = Instant::now();
        let mut l = RateLimiter::new(t0);
        let answered = (0..100u16)
            .filter(|&i| {
                let a = Ipv6Addr::new(0x2001, 0xdb8, 1, 2, i, i, i, i);
                l.allow(t0, IpAddr::V6(a))
            })
            .count();
        assert_eq!(answered, LIMITS.source_burst as usize);
    }

    #[test]
    fn an_ipv4_mapped_source_is_reported_as_ipv4() {
        let mapped: SocketAddr = "[::ffff:100.64.0.2]:40000".parse().unwrap();
        assert_eq!(reported(mapped), "100.64.0.2:40000".parse().unwrap());
        let v6: SocketAddr = "[2001:db8::1]:5".parse().unwrap();
        assert_eq!(reported(v6), v6);
    }
}
