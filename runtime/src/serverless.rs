//! Transfers with no server at all: one UDP socket on a known port, a ticket for the
//! peer, hole punching at shared instants, QUIC, the authentication handshake, then the
//! v1 session on the QUIC stream (docs/PROTOCOL.md, "Serverless transfers").
//!
//! The sender is always the QUIC client and the receiver the server, so the two never
//! both dial. A sender that knows the receiver's address dials it at once and at every
//! punching instant (the 10-second boundaries of the clock, corrected by SNTP with
//! `ntp`); a receiver that knows the sender's address sends it a one-byte datagram
//! every 100 ms for [`PUNCH_WINDOW`] from each instant, which opens its NAT for the
//! sender's packets, and accepts. A listening receiver only accepts; a listening sender
//! waits for the receiver's first punching datagram and dials where it came from.

use std::io;
use std::net::{IpAddr, SocketAddr, ToSocketAddrs, UdpSocket};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use futures_util::future::{select, Either};
use futures_util::stream::FuturesUnordered;
use futures_util::StreamExt;
use p2p_copy_core::serverless::{
    punch_instants, rounds_for, AuthError, Handshake, HandshakeConfig,
};
pub use p2p_copy_core::serverless::{PeerSpec, Ticket};
use p2p_copy_core::wire::Role;
use p2p_copy_core::{sntp, Error};

use crate::paths::{canonical, mapped, stun_all};
use crate::quic::{ConnectFailure, Identity, PeerCheck, QuicConn, QuicEndpoint};
use crate::quic_tasks::QuicTasks;
use crate::rt::Rt;
use crate::transport::{self, Incoming};
use crate::{
    ClientConfig, DirectMode, PathTaken, SendOptions, SessionEvent, Summary, TransferError,
};

/// How long a receiver punches from each instant.
pub const PUNCH_WINDOW: Duration = Duration::from_secs(5);
/// Between two punching datagrams.
const PUNCH_EVERY: Duration = Duration::from_millis(100);
/// What the receiver punches with: too short to be a QUIC packet, so the sender's QUIC
/// stack drops it unanswered (as on the relay's direct path).
const PUNCH: &[u8] = &[0];
/// The longest one dial may take: quinn gives a handshake up after 5 s without an
/// answer; the stream's preface follows.
const DIAL_LIMIT: Duration = Duration::from_secs(8);
/// How long the authentication handshake may take once connected.
const HANDSHAKE_LIMIT: Duration = Duration::from_secs(20);
/// How long to wait for STUN answers.
const STUN_WAIT: Duration = Duration::from_millis(1500);
/// How long to wait for an SNTP answer, per request, and how many requests.
const NTP_WAIT: Duration = Duration::from_millis(1000);
const NTP_TRIES: u32 = 3;
/// The TLS exporter label of the handshake's channel binding.
const EXPORTER_LABEL: &[u8] = b"EXPORTER-p2p-copy-serverless";

/// Settings of a serverless transfer.
#[derive(Debug, Clone)]
pub struct ServerlessConfig {
    /// The UDP port to use (0: any free one); the peer's `--peer` names it.
    pub local_port: u16,
    /// Wait for the peer instead of reaching for it: it has this side's address.
    pub listen: bool,
    /// The code both sides give, needed unless both have the other's ticket.
    pub code: Option<String>,
    /// STUN servers (`host:port`) to learn the public address from, for the ticket.
    pub stun: Vec<String>,
    /// An SNTP server (`host` or `host:port`) whose time sets the punching instants.
    pub ntp: Option<String>,
    /// End-to-end encryption of the v1 session (both sides must agree).
    pub encrypt: bool,
    /// How long to try to reach the peer (a punching instant every 10 s).
    pub timeout: Duration,
    /// How long the peer may stay silent in the middle of the transfer.
    pub idle_timeout: Duration,
    /// Move file data no faster than this ([`ClientConfig::limit_rate`]).
    pub limit_rate: Option<crate::RateLimit>,
    /// Receiver: the question before accepting (see [`ClientConfig::consent`]).
    pub consent: Option<crate::ConsentAsk>,
    /// Receiver: keep a different file already there (see
    /// [`ClientConfig::keep_existing`]).
    pub keep_existing: bool,
    /// Receiver: refuse names Windows cannot store (see
    /// [`ClientConfig::windows_names`]).
    pub windows_names: bool,
}

impl Default for ServerlessConfig {
    fn default() -> Self {
        ServerlessConfig {
            local_port: 0,
            listen: false,
            code: None,
            stun: Vec::new(),
            ntp: None,
            encrypt: false,
            timeout: Duration::from_secs(300),
            idle_timeout: Duration::from_secs(120),
            limit_rate: None,
            consent: None,
            keep_existing: false,
            windows_names: cfg!(windows),
        }
    }
}

/// A bound socket with its ticket, before the peer is known (see the module docs).
pub struct Serverless<R: Rt> {
    rt: R,
    cfg: ServerlessConfig,
    socket: UdpSocket,
    identity: Identity,
    ticket: Ticket,
    /// The SNTP server's clock minus ours.
    clock_offset_nanos: i64,
}

impl<R: Rt> std::fmt::Debug for Serverless<R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Serverless")
            .field("ticket", &self.ticket.to_string())
            .finish_non_exhaustive()
    }
}

/// What binding found, from the blocking pool.
struct Bound {
    socket: UdpSocket,
    identity: Identity,
    ticket: Ticket,
    clock_offset_nanos: i64,
}

impl<R: Rt> Serverless<R> {
    /// Bind the UDP socket, make this run's certificate, learn the public address
    /// (with `stun`) and the clock's offset (with `ntp`).
    ///
    /// # Errors
    /// [`TransferError::Direct`] when the port cannot be bound or the time server does
    /// not answer.
    pub async fn bind(rt: R, cfg: ServerlessConfig) -> Result<Self, TransferError> {
        let c = cfg.clone();
        let bound = rt.spawn_blocking(move || bind_blocking(&c)).await?;
        Ok(Serverless {
            rt,
            cfg,
            socket: bound.socket,
            identity: bound.identity,
            ticket: bound.ticket,
            clock_offset_nanos: bound.clock_offset_nanos,
        })
    }

    /// What the peer must be given: this side's address and certificate fingerprint.
    pub fn ticket(&self) -> Ticket {
        self.ticket
    }

    /// The local UDP address.
    ///
    /// # Errors
    /// The socket's error.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.socket.local_addr()
    }

    /// Send `paths` to the peer (`None` when listening).
    ///
    /// # Errors
    /// [`TransferError::Session`] with [`Error::NoDirectPath`] when the peer was never
    /// reached, [`TransferError::Unauthenticated`] when the peer is not who its ticket or
    /// the code says, and the errors of [`crate::send`] for the session itself.
    pub async fn send(
        self,
        peer: Option<PeerSpec>,
        paths: Vec<PathBuf>,
        opts: SendOptions,
        on_event: impl FnMut(SessionEvent) + Send + 'static,
    ) -> Result<Summary, TransferError> {
        self.session(Role::Sender, peer, |rt, cfg, conn| {
            crate::client::send_direct(rt, cfg, conn, paths, opts, on_event)
        })
        .await
    }

    /// Receive into `out_dir` from the peer (`None` when listening).
    ///
    /// # Errors
    /// As for [`Serverless::send`], and those of [`crate::receive`].
    pub async fn receive(
        self,
        peer: Option<PeerSpec>,
        out_dir: PathBuf,
        on_event: impl FnMut(SessionEvent) + Send + 'static,
    ) -> Result<Summary, TransferError> {
        self.session(Role::Receiver, peer, |rt, cfg, conn| {
            crate::client::receive_direct(rt, cfg, conn, out_dir, on_event)
        })
        .await
    }

    /// Reach the peer, then run `session` over the connection, with quinn's tasks in
    /// this future (`quic_tasks`).
    async fn session<F, S>(
        self,
        role: Role,
        peer: Option<PeerSpec>,
        session: S,
    ) -> Result<Summary, TransferError>
    where
        S: FnOnce(R, ClientConfig, QuicConn) -> F,
        F: std::future::Future<Output = Result<Summary, TransferError>>,
    {
        let tasks = QuicTasks::default();
        let quinn = tasks.quinn_runtime(self.rt.quinn_runtime());
        tasks
            .run(async move {
                let rt = self.rt.clone();
                let (conn, cfg, path) = self.connect(role, peer, quinn).await?;
                let mut sum = session(rt, cfg, conn).await?;
                sum.path = path;
                Ok(sum)
            })
            .await
    }

    /// Reach the peer and authenticate it, with quinn's tasks on `quinn`: the
    /// connection, the v1 session's settings and the path it takes.
    async fn connect(
        self,
        role: Role,
        peer: Option<PeerSpec>,
        quinn: Arc<dyn quinn::Runtime>,
    ) -> Result<(QuicConn, ClientConfig, PathTaken), TransferError> {
        let (peer_addr, pinned) = match peer {
            None => (None, None),
            Some(spec) => {
                let (addr, fp) = resolve(&self.rt, spec).await?;
                (Some(addr), fp)
            }
        };
        if peer_addr.is_none() && !self.cfg.listen {
            return Err(TransferError::Direct(
                "no peer given: give its ticket or HOST:PORT, or listen for it".into(),
            ));
        }
        let check = match pinned {
            Some(fingerprint) => PeerCheck::Pinned {
                fingerprint,
                source: "in its ticket",
            },
            None => PeerCheck::Any,
        };
        let wall = wall_now(self.clock_offset_nanos);
        let rounds = rounds_for(self.cfg.timeout);
        let start = Instant::now();
        let instants: Vec<Instant> = punch_instants(wall, rounds)
            .into_iter()
            .map(|at| start + at.saturating_sub(wall))
            .collect();
        for (k, at) in punch_instants(wall, rounds.min(3)).iter().enumerate() {
            log::debug!(
                "serverless: punching instant {} at {:.3} by the {} (local clock {:.3})",
                k + 1,
                at.as_secs_f64(),
                if self.cfg.ntp.is_some() {
                    "time server's clock"
                } else {
                    "local clock"
                },
                local_of(*at, self.clock_offset_nanos)
            );
        }
        let endpoint = QuicEndpoint::new(
            self.socket
                .try_clone()
                .map_err(|e| TransferError::Direct(format!("cannot use the UDP socket: {e}")))?,
            self.identity.clone(),
            quinn,
        )?;
        let reached = async {
            match role {
                Role::Sender => {
                    let addr = match peer_addr {
                        Some(a) => a,
                        None => {
                            let s = self.socket.try_clone().map_err(|e| {
                                TransferError::Direct(format!("cannot use the UDP socket: {e}"))
                            })?;
                            let until = *instants.last().unwrap_or(&start) + PUNCH_WINDOW;
                            self.rt
                                .spawn_blocking(move || wait_for_punch(&s, until))
                                .await?
                        }
                    };
                    let conn = dial(&self.rt, &endpoint, addr, check, &instants).await?;
                    Ok((conn, addr))
                }
                Role::Receiver => {
                    let deadline = *instants.last().unwrap_or(&start) + PUNCH_WINDOW + DIAL_LIMIT;
                    let conn = accept(
                        &self.rt,
                        &endpoint,
                        &self.socket,
                        peer_addr,
                        check,
                        &instants,
                        deadline,
                    )
                    .await?;
                    let addr = canonical(conn.remote_address());
                    Ok((conn, addr))
                }
            }
        };
        let (conn, addr) = match reached.await {
            Ok(r) => r,
            Err(e) => {
                if matches!(e, TransferError::Unauthenticated(_)) {
                    let _ = select(
                        Box::pin(endpoint.close_and_wait()),
                        Box::pin(self.rt.sleep_until(Instant::now() + Duration::from_secs(2))),
                    )
                    .await;
                }
                return Err(e);
            }
        };
        log::debug!(
            "serverless: connected to {addr} after {:.1} s",
            start.elapsed().as_secs_f64()
        );
        let mut conn = conn;
        let code = self.authenticate(role, &mut conn, pinned.is_some()).await?;
        let mut cfg = ClientConfig::new(format!("quic://{addr}"), code);
        cfg.encrypt = self.cfg.encrypt;
        cfg.pair_timeout = self.cfg.idle_timeout;
        cfg.idle_timeout = self.cfg.idle_timeout;
        cfg.limit_rate.clone_from(&self.cfg.limit_rate);
        cfg.consent = self.cfg.consent.clone();
        cfg.keep_existing = self.cfg.keep_existing;
        cfg.windows_names = self.cfg.windows_names;
        // The session already runs on the direct connection: no relay to leave.
        cfg.direct.mode = DirectMode::RelayOnly;
        let path = PathTaken::Direct {
            addr,
            punched: !self.cfg.listen && peer_addr.is_some(),
        };
        Ok((conn, cfg, path))
    }

    /// Run the [`Handshake`] on the connection; the v1 session's code.
    async fn authenticate(
        &self,
        role: Role,
        conn: &mut QuicConn,
        pinned: bool,
    ) -> Result<String, TransferError> {
        let binding = conn.exporter(EXPORTER_LABEL).ok_or_else(|| {
            TransferError::Direct("the QUIC connection gave no TLS exporter".into())
        })?;
        let mut seed = [0u8; 32];
        getrandom::getrandom(&mut seed).map_err(|e| {
            TransferError::Direct(format!("the operating system gave no random bytes: {e}"))
        })?;
        let mut hs = Handshake::new(HandshakeConfig {
            role,
            pinned_peer: pinned,
            code: self.cfg.code.clone(),
            channel_binding: binding,
            seed,
        });
        let run = async {
            loop {
                while let Some(m) = hs.poll_transmit() {
                    transport::send(conn, m)
                        .await
                        .map_err(|e| TransferError::Direct(format!("the peer left: {e}")))?;
                }
                if let Some(outcome) = hs.outcome() {
                    return outcome.cloned().map_err(|e| auth_error(e.clone()));
                }
                match transport::recv(conn).await {
                    Some(Ok(Incoming::Message(m))) => hs.handle_message(m),
                    Some(Ok(Incoming::Close(_))) | None => {
                        return Err(TransferError::Unauthenticated(
                            "the peer closed the connection during authentication (it refused this side: a wrong code, or a ticket that is not this run's)".into(),
                        ))
                    }
                    Some(Err(e)) => {
                        return Err(TransferError::Direct(format!(
                            "the connection failed during authentication: {e}"
                        )))
                    }
                }
            }
        };
        let deadline = Instant::now() + HANDSHAKE_LIMIT;
        let outcome = match select(Box::pin(run), Box::pin(self.rt.sleep_until(deadline))).await {
            Either::Left((r, _)) => r,
            Either::Right(_) => Err(TransferError::Session(Error::Timeout(
                "the peer did not finish authenticating".into(),
            ))),
        };
        match outcome {
            Ok(a) => {
                log::debug!("serverless: peer authenticated by {:?}", a.by);
                Ok(a.session_code)
            }
            Err(e) => {
                // Let our last messages (our confirmation, our role) reach the peer, so
                // that it reports the same cause, then close.
                let _ = select(
                    Box::pin(transport::close(conn, 1008, "not authenticated")),
                    Box::pin(self.rt.sleep_until(Instant::now() + Duration::from_secs(1))),
                )
                .await;
                Err(e)
            }
        }
    }
}

fn auth_error(e: AuthError) -> TransferError {
    match e {
        AuthError::Peer(_) => TransferError::Session(Error::peer(e.to_string())),
        other => TransferError::Unauthenticated(other.to_string()),
    }
}

/// Now by the wall clock, corrected by `offset_nanos`, as time since the Unix epoch.
fn wall_now(offset_nanos: i64) -> Duration {
    let local = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    shift(local, offset_nanos)
}

fn shift(t: Duration, by_nanos: i64) -> Duration {
    let by = Duration::from_nanos(by_nanos.unsigned_abs());
    if by_nanos >= 0 {
        t + by
    } else {
        t.saturating_sub(by)
    }
}

/// A corrected wall-clock instant by the local clock, in seconds since the epoch.
fn local_of(at: Duration, offset_nanos: i64) -> f64 {
    shift(at, -offset_nanos).as_secs_f64()
}

/// The peer's address and, from a ticket, its fingerprint.
async fn resolve<R: Rt>(
    rt: &R,
    spec: PeerSpec,
) -> Result<(SocketAddr, Option<[u8; 32]>), TransferError> {
    match spec {
        PeerSpec::Ticket(t) => Ok((canonical(t.addr), Some(t.fingerprint))),
        PeerSpec::Address { host, port } => {
            let shown = p2p_copy_core::path::escape(&host);
            let found = rt
                .spawn_blocking(move || (host.as_str(), port).to_socket_addrs().map(Vec::from_iter))
                .await
                .map_err(|e| TransferError::Direct(format!("cannot resolve {shown}: {e}")))?;
            // IPv4 first: most NATs that keep ports are IPv4.
            let addr = found
                .iter()
                .find(|a| a.is_ipv4())
                .or(found.first())
                .copied()
                .ok_or_else(|| TransferError::Direct(format!("{shown} has no address")))?;
            Ok((canonical(addr), None))
        }
    }
}

/// Dial `addr` at once and at every instant until a connection is verified.
async fn dial<R: Rt>(
    rt: &R,
    endpoint: &QuicEndpoint,
    addr: SocketAddr,
    check: PeerCheck,
    instants: &[Instant],
) -> Result<QuicConn, TransferError> {
    let rounds = instants.len();
    let times: Vec<Instant> = std::iter::once(Instant::now())
        .chain(instants.iter().copied())
        .collect();
    let mut next = 0;
    let mut attempts = FuturesUnordered::new();
    let mut last = String::from("no answer");
    loop {
        let done = if attempts.is_empty() {
            let Some(&at) = times.get(next) else { break };
            rt.sleep_until(at).await;
            None
        } else if let Some(&at) = times.get(next) {
            match select(Box::pin(rt.sleep_until(at)), attempts.next()).await {
                Either::Left(_) => None,
                Either::Right((r, _)) => r,
            }
        } else {
            attempts.next().await
        };
        let Some(result) = done else {
            log::debug!("serverless: dialling {addr} ({} of {})", next, rounds);
            let endpoint = endpoint.clone();
            let rt2 = rt.clone();
            attempts.push(async move {
                let deadline = Instant::now() + DIAL_LIMIT;
                match select(
                    Box::pin(endpoint.connect_checked(addr, check)),
                    Box::pin(rt2.sleep_until(deadline)),
                )
                .await
                {
                    Either::Left((r, _)) => r,
                    Either::Right(_) => Err(ConnectFailure::Failed("no answer".into())),
                }
            });
            next += 1;
            continue;
        };
        match result {
            Ok(conn) => return Ok(conn),
            Err(ConnectFailure::WrongCertificate(m)) => {
                return Err(TransferError::Unauthenticated(format!(
                    "the peer at {addr} is not the one its ticket names: {m}; nothing was sent (ask the peer for its ticket of this run)"
                )))
            }
            Err(ConnectFailure::Refused(m)) => {
                return Err(TransferError::Unauthenticated(format!(
                    "{m}: the ticket the peer at {addr} was given is not this run's; nothing was sent (give it the ticket printed above)"
                )))
            }
            Err(ConnectFailure::Failed(m)) => {
                log::debug!("serverless: dialling {addr}: {m}");
                last = m;
            }
        }
    }
    Err(no_connection(&format!(
        "{addr} did not answer at any of {rounds} punching instants ({last})"
    )))
}

fn no_connection(what: &str) -> TransferError {
    TransferError::Session(Error::NoDirectPath(format!(
        "{what}: check the address and port, that the peer runs now (one side sends, the other receives), that its clock is right (or use --ntp), and that UDP passes"
    )))
}

/// Accept until a connection is verified; punch towards `peer` at every instant.
async fn accept<R: Rt>(
    rt: &R,
    endpoint: &QuicEndpoint,
    socket: &UdpSocket,
    peer: Option<SocketAddr>,
    check: PeerCheck,
    instants: &[Instant],
    deadline: Instant,
) -> Result<QuicConn, TransferError> {
    let punching = async {
        let Some(peer) = peer else {
            return futures_util::future::pending::<()>().await;
        };
        let to = mapped(socket, peer);
        let times = std::iter::once(Instant::now()).chain(instants.iter().copied());
        for (k, at) in times.enumerate() {
            rt.sleep_until(at).await;
            log::debug!(
                "serverless: punching towards {peer} ({k} of {})",
                instants.len()
            );
            let end = Instant::now() + PUNCH_WINDOW;
            while Instant::now() < end {
                let _ = socket.send_to(PUNCH, to);
                rt.sleep_until(Instant::now() + PUNCH_EVERY).await;
            }
        }
        futures_util::future::pending::<()>().await
    };
    let accepting = async {
        loop {
            match endpoint.accept_checked(check).await {
                Ok(conn) => return Ok(conn),
                Err((from, failure)) => {
                    let from = from.map(canonical);
                    let expected = peer.is_some() && from == peer;
                    log::debug!(
                        "serverless: a connection from {} failed: {failure}",
                        from.map_or("?".into(), |a| a.to_string())
                    );
                    match failure {
                        ConnectFailure::WrongCertificate(m) if expected => {
                            return Err(TransferError::Unauthenticated(format!(
                                "the peer at {} is not the one its ticket names: {m}; nothing was received (ask the peer for its ticket of this run)",
                                from.map_or("?".into(), |a| a.to_string())
                            )))
                        }
                        ConnectFailure::Refused(m) if expected => {
                            return Err(TransferError::Unauthenticated(format!(
                                "{m}: the ticket the peer was given is not this run's; nothing was received"
                            )))
                        }
                        ConnectFailure::Failed(m) if from.is_none() => {
                            return Err(TransferError::Direct(m))
                        }
                        _ => {}
                    }
                }
            }
        }
    };
    let work = select(Box::pin(accepting), Box::pin(punching));
    match select(work, Box::pin(rt.sleep_until(deadline))).await {
        Either::Left((Either::Left((r, _)), _)) => r,
        Either::Left((Either::Right(_), _)) => unreachable!("punching never ends"),
        Either::Right(_) => Err(match peer {
            Some(p) => no_connection(&format!(
                "{p} did not connect at any of {} punching instants",
                instants.len()
            )),
            None => no_connection("no peer connected"),
        }),
    }
}

/// A listening sender: the address of the first punching datagram (blocking).
fn wait_for_punch(socket: &UdpSocket, until: Instant) -> Result<SocketAddr, TransferError> {
    let mut buf = [0u8; 64];
    log::debug!("serverless: waiting for the receiver's first datagram");
    loop {
        let left = until.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(no_connection("no receiver reached this side"));
        }
        socket
            .set_read_timeout(Some(left.min(Duration::from_secs(1))))
            .map_err(|e| TransferError::Direct(format!("the UDP socket: {e}")))?;
        match socket.recv_from(&mut buf) {
            Ok((n, from)) if &buf[..n] == PUNCH => {
                let _ = socket.set_read_timeout(None);
                let from = canonical(from);
                log::debug!("serverless: the receiver punched from {from}");
                return Ok(from);
            }
            Ok(_) => {}
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock
                        | io::ErrorKind::TimedOut
                        | io::ErrorKind::ConnectionRefused
                ) => {}
            Err(e) => return Err(TransferError::Direct(format!("the UDP socket: {e}"))),
        }
    }
}

/// One UDP socket on `port`, for IPv6 and IPv4 when the system allows.
fn bind_port(port: u16) -> io::Result<UdpSocket> {
    use socket2::{Domain, Protocol, Socket, Type};
    let dual = (|| {
        let s = Socket::new(Domain::IPV6, Type::DGRAM, Some(Protocol::UDP))?;
        s.set_only_v6(false)?;
        s.bind(&SocketAddr::from(([0u16; 8], port)).into())?;
        Ok::<UdpSocket, io::Error>(s.into())
    })();
    match dual {
        Ok(s) => Ok(s),
        Err(_) => UdpSocket::bind(("0.0.0.0", port)),
    }
}

/// This machine's own address for the ticket when no STUN server is given: the first
/// interface address that is not loopback or link-local, IPv4 first.
fn local_ip() -> Option<IpAddr> {
    let mut ips: Vec<IpAddr> = if_addrs::get_if_addrs()
        .unwrap_or_default()
        .iter()
        .map(|i| i.ip())
        .filter(|ip| {
            !ip.is_loopback()
                && !ip.is_unspecified()
                && !matches!(ip, IpAddr::V6(v6) if (v6.segments()[0] & 0xffc0) == 0xfe80)
        })
        .collect();
    ips.sort_by_key(IpAddr::is_ipv6);
    ips.first().copied()
}

fn bind_blocking(cfg: &ServerlessConfig) -> Result<Bound, TransferError> {
    let clock_offset_nanos = match &cfg.ntp {
        Some(server) => ntp_offset(server)?,
        None => 0,
    };
    let identity = Identity::generate()?;
    let socket = bind_port(cfg.local_port).map_err(|e| {
        TransferError::Direct(format!("cannot use UDP port {}: {e}", cfg.local_port))
    })?;
    let local = socket
        .local_addr()
        .map_err(|e| TransferError::Direct(format!("the UDP socket: {e}")))?;
    let mut servers = Vec::new();
    for s in &cfg.stun {
        match s.to_socket_addrs() {
            Ok(addrs) => servers.extend(
                addrs
                    .map(canonical)
                    .filter(|a| local.is_ipv6() || a.is_ipv4()),
            ),
            Err(e) => log::warn!("STUN server {}: {e}", p2p_copy_core::path::escape(s)),
        }
    }
    let reflexive = stun_all(&socket, &servers, STUN_WAIT)
        .into_iter()
        .flatten()
        .map(|(a, _)| a)
        .next();
    socket
        .set_read_timeout(None)
        .map_err(|e| TransferError::Direct(format!("the UDP socket: {e}")))?;
    let addr = match reflexive {
        Some(a) => {
            log::debug!("serverless: public address {a} (STUN)");
            a
        }
        None => {
            if !servers.is_empty() {
                log::warn!(
                    "no STUN server answered: the ticket carries this machine's own address"
                );
            }
            let ip = local_ip().ok_or_else(|| {
                TransferError::Direct("this machine has no network address".into())
            })?;
            SocketAddr::new(ip, local.port())
        }
    };
    Ok(Bound {
        ticket: Ticket {
            addr,
            fingerprint: identity.fingerprint(),
        },
        socket,
        identity,
        clock_offset_nanos,
    })
}

/// Ask an SNTP server how far this clock is off (blocking).
fn ntp_offset(server: &str) -> Result<i64, TransferError> {
    let shown = p2p_copy_core::path::escape(server);
    let target = if server.rsplit_once(':').is_some_and(|(h, p)| {
        !h.ends_with(':') && p.parse::<u16>().is_ok() && (!h.contains(':') || h.ends_with(']'))
    }) {
        server.to_owned()
    } else {
        format!("{server}:123")
    };
    let addr = target
        .to_socket_addrs()
        .ok()
        .and_then(|mut a| {
            a.find(SocketAddr::is_ipv4)
                .or_else(|| target.to_socket_addrs().ok()?.next())
        })
        .ok_or_else(|| TransferError::Direct(format!("cannot resolve the time server {shown}")))?;
    let socket = UdpSocket::bind(if addr.is_ipv4() {
        "0.0.0.0:0"
    } else {
        "[::]:0"
    })
    .map_err(|e| TransferError::Direct(format!("cannot open a UDP socket for SNTP: {e}")))?;
    let mut last = String::from("no answer");
    let mut buf = [0u8; 128];
    for _ in 0..NTP_TRIES {
        let sent = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        let _ = socket.send_to(&sntp::request(sent), addr);
        let until = Instant::now() + NTP_WAIT;
        loop {
            let left = until.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            let _ = socket.set_read_timeout(Some(left));
            let Ok((n, from)) = socket.recv_from(&mut buf) else {
                break;
            };
            let received = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap_or_default();
            if canonical(from) != canonical(addr) {
                continue;
            }
            match sntp::parse_response(&buf[..n], sent, received) {
                Ok(s) => {
                    let secs = s.offset_nanos as f64 / 1e9;
                    log::debug!(
                        "ntp: {shown} says this clock is {:.3} s {} (round trip {:.1} ms)",
                        secs.abs(),
                        if secs >= 0.0 { "behind" } else { "ahead" },
                        s.delay.as_secs_f64() * 1000.0
                    );
                    return Ok(s.offset_nanos);
                }
                Err(e) => last = e.to_string(),
            }
        }
    }
    Err(TransferError::Direct(format!(
        "the time server {shown} gave no usable time ({last})"
    )))
}
