//! The relay server: accept connections, run one task each, and a timer for the
//! pairing machine's deadlines.

use std::io;
use std::net::SocketAddr;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_rustls::TlsAcceptor;
use futures_util::future::{select, AbortHandle, Abortable, Either};
use futures_util::StreamExt;
use p2p_copy_core::relay::{ConnId, RelayConfig};

use crate::relay_conn::{ConnTask, FORWARD_QUEUE};
use crate::relay_hub::{lock, ByteLimits, Entry, Hub, SharedHub};
use crate::relay_metrics::{self, RelayMetrics};
use crate::relay_tokens::AccessControl;
use crate::rt::Rt;
use crate::stun_server::{self, RateLimiter};
use crate::{tls, RelayServerConfig};

/// A relay server bound to its address, ready to [`run`](RelayServer::run).
pub struct RelayServer<R: Rt> {
    rt: R,
    listener: R::TcpListener,
    addr: SocketAddr,
    tls: Option<TlsAcceptor>,
    config: RelayConfig,
    stun: Vec<R::UdpSocket>,
    stun_addrs: Vec<SocketAddr>,
    metrics_listener: Option<(R::TcpListener, SocketAddr)>,
    access: AccessControl,
    limits: ByteLimits,
    drain: Duration,
}

impl<R: Rt> std::fmt::Debug for RelayServer<R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RelayServer")
            .field("addr", &self.addr)
            .field("tls", &self.tls.is_some())
            .field("stun", &self.stun_addrs)
            .field("metrics", &self.metrics_addr())
            .field("tokens", &self.access.is_on())
            .finish_non_exhaustive()
    }
}

/// Stops every task of a server when its `run` future goes away.
struct Shutdown {
    hub: SharedHub,
    timer: AbortHandle,
    /// The STUN, metrics and SIGHUP tasks.
    tasks: Vec<AbortHandle>,
}

impl Drop for Shutdown {
    fn drop(&mut self) {
        self.timer.abort();
        for s in &self.tasks {
            s.abort();
        }
        lock(&self.hub).abort_all();
    }
}

impl<R: Rt> RelayServer<R> {
    /// Bind to `cfg.host:cfg.port`, bind the STUN ports of `cfg.stun` on the same address
    /// and the metrics listener of `cfg.ops`, and load the TLS certificate and key and
    /// the token file, if any.
    ///
    /// # Errors
    /// A bind error (a STUN one names its port, a metrics one says so), an unreadable
    /// token file or one without tokens, or [`io::ErrorKind::InvalidInput`] for unusable
    /// TLS files or STUN port 65535 (the second port would not exist).
    pub async fn bind(rt: R, cfg: RelayServerConfig) -> io::Result<Self> {
        let tls = match &cfg.tls {
            Some((cert, key)) => Some(TlsAcceptor::from(Arc::new(tls::server_config(cert, key)?))),
            None => None,
        };
        let access = AccessControl::new(cfg.ops.token_file.as_deref())?;
        let metrics_listener = match cfg.ops.metrics {
            Some(at) => {
                let l = rt
                    .bind(at.ip().to_string(), at.port())
                    .await
                    .map_err(|e| io::Error::new(e.kind(), format!("metrics on {at}: {e}")))?;
                let addr = R::local_addr(&l)?;
                Some((l, addr))
            }
            None => None,
        };
        let listener = rt.bind(cfg.host.clone(), cfg.port).await?;
        let addr = R::local_addr(&listener)?;
        let stun = stun_server::bind(&rt, addr, cfg.port, cfg.stun).await?;
        let stun_addrs = stun
            .iter()
            .map(R::udp_local_addr)
            .collect::<io::Result<_>>()?;
        let mut config = cfg.relay;
        // A fresh secret per process: room tags in its logs cannot be computed from a
        // guessed code. Without OS randomness the tags are still unique per room.
        let _ = getrandom::getrandom(&mut config.room_salt);
        Ok(RelayServer {
            rt,
            listener,
            addr,
            tls,
            config,
            stun,
            stun_addrs,
            metrics_listener,
            access,
            limits: ByteLimits {
                max_rate: cfg.ops.max_rate,
                max_bytes: cfg.ops.max_bytes,
            },
            drain: cfg.ops.drain_timeout,
        })
    }

    /// Where `/metrics` and `/healthz` are served, if they are.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics_listener.as_ref().map(|(_, a)| *a)
    }

    /// Whether clients must present a token.
    pub fn requires_token(&self) -> bool {
        self.access.is_on()
    }

    /// The bound address (with the real port when 0 was asked for).
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// The UDP addresses that answer STUN Binding requests: none, or two (a port and the
    /// next one, or two free ports).
    pub fn stun_addrs(&self) -> &[SocketAddr] {
        &self.stun_addrs
    }

    /// Whether the server speaks `wss://`.
    pub fn is_tls(&self) -> bool {
        self.tls.is_some()
    }

    /// Serve until the future is dropped; dropping it drops every connection without a
    /// close frame (see [`run_until`](Self::run_until) for an orderly stop).
    ///
    /// # Errors
    /// None in practice: failed accepts (for example when out of file descriptors) are
    /// logged and retried.
    pub async fn run(self) -> io::Result<()> {
        self.run_until(std::future::pending()).await
    }

    /// Serve until `stop` completes, then shut down as
    /// [`run_draining`](Self::run_draining) does, with no way to hurry it.
    ///
    /// # Errors
    /// As [`run`](Self::run).
    pub async fn run_until(self, stop: impl std::future::Future<Output = ()>) -> io::Result<()> {
        self.run_draining(stop, std::future::pending()).await
    }

    /// Serve until `stop` completes, then shut down: stop accepting at once (the port is
    /// free for a new instance), close every connection that has not paired with close
    /// code 1001 and the reason "relay shutting down", let the pairs still running go on
    /// for the configured drain timeout ([`RelayOps::drain_timeout`]), then close them
    /// the same way, and give the clients the close grace to answer before dropping
    /// what is left. `hurry` completing during the drain closes every pair at once.
    /// Clients tell their users why the connection ended instead of seeing it reset.
    ///
    /// [`RelayOps::drain_timeout`]: crate::RelayOps::drain_timeout
    ///
    /// # Errors
    /// As [`run`](Self::run).
    pub async fn run_draining(
        self,
        stop: impl std::future::Future<Output = ()>,
        hurry: impl std::future::Future<Output = ()>,
    ) -> io::Result<()> {
        let RelayServer {
            rt,
            listener,
            tls,
            config,
            stun,
            metrics_listener,
            access,
            limits,
            drain,
            ..
        } = self;
        let handshake_timeout = config.hello_timeout;
        let close_grace = config.close_grace;
        let metrics = Arc::new(RelayMetrics::new());
        let (wake_tx, wake_rx) = async_channel::bounded(1);
        let hub: SharedHub = Arc::new(Mutex::new(Hub::new(
            config,
            wake_tx,
            metrics.clone(),
            limits,
        )));
        let (timer, timer_reg) = AbortHandle::new_pair();
        let limiter = Arc::new(Mutex::new(RateLimiter::new(Instant::now())));
        let mut tasks = Vec::new();
        let mut spawn_abortable =
            |task: std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>| {
                let (abort, reg) = AbortHandle::new_pair();
                tasks.push(abort);
                rt.spawn(async move {
                    let _ = Abortable::new(task, reg).await;
                });
            };
        for socket in stun {
            let serving = stun_server::serve(rt.clone(), socket, limiter.clone(), metrics.clone());
            spawn_abortable(Box::pin(serving));
        }
        if let Some((l, _)) = metrics_listener {
            spawn_abortable(Box::pin(relay_metrics::serve(
                rt.clone(),
                l,
                metrics.clone(),
            )));
        }
        #[cfg(unix)]
        if access.is_on() {
            spawn_abortable(Box::pin(reload_on_sighup(access.clone())));
        }
        let _shutdown = Shutdown {
            hub: hub.clone(),
            timer,
            tasks,
        };
        rt.spawn(run_timer(rt.clone(), hub.clone(), wake_rx, timer_reg));
        let accepting = accept_loop(
            rt.clone(),
            listener,
            tls,
            hub.clone(),
            access,
            handshake_timeout,
            close_grace,
        );
        // Dropping the accept loop drops the listener: the port is free at once.
        let _ = select(Box::pin(accepting), Box::pin(stop)).await;
        let pairs = {
            let mut h = lock(&hub);
            h.relay.handle_shutdown(Instant::now(), drain);
            h.after_input();
            h.relay.paired_count()
        };
        if pairs > 0 && !drain.is_zero() {
            log::info!(
                "relay stopping: no new connections; {pairs} pairs may finish within {} s",
                drain.as_secs_f64()
            );
        } else {
            log::info!("relay stopping: closing every connection");
        }
        let mut deadline = Instant::now() + drain + close_grace + SHUTDOWN_SLACK;
        let mut hurry = Some(Box::pin(hurry));
        while !lock(&hub).is_empty() && Instant::now() < deadline {
            let tick = Box::pin(rt.sleep_until(Instant::now() + SHUTDOWN_POLL));
            let Some(h) = hurry.as_mut() else {
                tick.await;
                continue;
            };
            if let Either::Right(_) = select(tick, h.as_mut()).await {
                hurry = None;
                let mut h = lock(&hub);
                log::info!(
                    "relay stopping now: closing {} pairs",
                    h.relay.paired_count()
                );
                h.relay.handle_shutdown(Instant::now(), Duration::ZERO);
                h.after_input();
                deadline = deadline.min(Instant::now() + close_grace + SHUTDOWN_SLACK);
            }
        }
        lock(&hub).flush_refusals();
        Ok(())
    }
}

/// Re-read the token file on every SIGHUP; a file that cannot be used leaves the tokens
/// in force.
#[cfg(unix)]
async fn reload_on_sighup(access: AccessControl) {
    let mut signals = match async_signal::Signals::new([async_signal::Signal::Hup]) {
        Ok(s) => s,
        Err(e) => {
            log::warn!("cannot catch SIGHUP ({e}): the token file is read only at start");
            return;
        }
    };
    while signals.next().await.is_some() {
        match access.reload() {
            Ok(n) => log::info!("token file re-read: {n} tokens"),
            Err(e) => log::warn!("{e}; the tokens read before stay in force"),
        }
    }
}

/// Time a stopping relay allows beyond the drain and the close grace, for the last
/// close frames to cross.
const SHUTDOWN_SLACK: Duration = Duration::from_millis(500);

/// How often a stopping relay checks whether its clients have all answered the close.
const SHUTDOWN_POLL: Duration = Duration::from_millis(20);

/// Accept connections and start a task for each, for ever.
async fn accept_loop<R: Rt>(
    rt: R,
    listener: R::TcpListener,
    tls: Option<TlsAcceptor>,
    hub: SharedHub,
    access: AccessControl,
    handshake_timeout: Duration,
    close_grace: Duration,
) {
    let mut next_id = 0u64;
    loop {
        let (tcp, peer) = match R::accept(&listener).await {
            Ok(accepted) => accepted,
            Err(e) => {
                log::warn!("accepting a connection failed: {e}");
                rt.sleep_until(Instant::now() + Duration::from_millis(100))
                    .await;
                continue;
            }
        };
        let accepted = Instant::now();
        next_id += 1;
        let id = ConnId(next_id);
        log::debug!("connection {}: from {peer}", id.0);
        // Only a latency tweak; forwarding works without it.
        let _ = R::set_nodelay(&tcp);
        let (cmd_tx, cmd_rx) = async_channel::unbounded();
        let (fwd_tx, fwd_rx) = async_channel::bounded(FORWARD_QUEUE);
        let forwarded = Arc::new(AtomicU64::new(0));
        let (abort, reg) = AbortHandle::new_pair();
        let task = ConnTask {
            rt: rt.clone(),
            hub: hub.clone(),
            id,
            tcp,
            tls: tls.clone(),
            commands: cmd_rx,
            forward: fwd_rx,
            forwarded: forwarded.clone(),
            access: access.clone(),
            accepted,
            handshake_timeout,
            close_grace,
        };
        lock(&hub).connect(
            Instant::now(),
            id,
            Entry::new(cmd_tx, fwd_tx, forwarded, abort),
            peer.ip(),
        );
        rt.spawn(async move {
            let _ = Abortable::new(task.run(), reg).await;
        });
    }
}

/// Call the pairing machine's `handle_timeout` at its earliest deadline, re-reading the
/// deadline whenever the hub had an input.
async fn run_timer<R: Rt>(
    rt: R,
    hub: SharedHub,
    wake: async_channel::Receiver<()>,
    reg: futures_util::future::AbortRegistration,
) {
    let ticking = async move {
        loop {
            let deadline = lock(&hub).relay.poll_timeout();
            let woken = match deadline {
                Some(d) => match select(Box::pin(rt.sleep_until(d)), Box::pin(wake.recv())).await {
                    Either::Left(_) => true,
                    Either::Right((r, _)) => r.is_ok(),
                },
                None => wake.recv().await.is_ok(),
            };
            if !woken {
                return;
            }
            let mut h = lock(&hub);
            h.relay.handle_timeout(Instant::now());
            h.after_input();
            // The wake after_input just queued is this task's own: the loop re-reads
            // the deadline anyway, and a stale wake would spin it without yielding.
            while wake.try_recv().is_ok() {}
        }
    };
    let _ = Abortable::new(ticking, reg).await;
}

/// Bind and serve until Ctrl-C or SIGTERM, then stop accepting and return.
///
/// # Errors
/// As [`RelayServer::bind`], or when the signal handlers cannot be installed.
pub async fn serve_relay<R: Rt>(rt: R, cfg: RelayServerConfig) -> io::Result<()> {
    // Signals first: once the relay accepts connections, Ctrl-C and SIGTERM stop it.
    #[cfg(unix)]
    let mut signals =
        async_signal::Signals::new([async_signal::Signal::Int, async_signal::Signal::Term])?;
    #[cfg(not(unix))]
    let mut signals = async_signal::Signals::new([async_signal::Signal::Int])?;
    let server = RelayServer::bind(rt, cfg).await?;
    let scheme = if server.is_tls() { "wss" } else { "ws" };
    log::info!("relay listening on {scheme}://{}", server.local_addr());
    for addr in server.stun_addrs() {
        log::info!("relay answering STUN on udp {addr}");
    }
    server
        .run_until(async move {
            let signal = signals.next().await;
            log::info!("relay stopping on {signal:?}");
        })
        .await
}
