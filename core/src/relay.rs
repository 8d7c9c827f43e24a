//! Relay pairing: validate `hello`, let the first client of a code wait, pair it with
//! the other role, refuse a duplicate role, send `ready` to the sender, and close the
//! partner when one side leaves. Connections are keyed by ids the runtime chooses.
//!
//! Once [`RelayOutput::Paired`] is emitted the runtime forwards every message of the two
//! connections unchanged, in both directions, with bounded buffers (a slow reader slows
//! its sender), and reports the end of either with [`Relay::handle_disconnect`].
//!
//! For operators it also limits how fast one address may open connections
//! ([`RelayConfig::max_new_per_minute`]), ends a pair the runtime found over a limit
//! ([`Relay::close_pair`]), drains on shutdown ([`Relay::handle_shutdown`]: waiting
//! clients go at once, pairs get a deadline), and reports each pair's end with its
//! outcome and a [`RoomTag`] that identifies the room in logs without revealing it.

use std::borrow::Cow;
use std::collections::{HashMap, HashSet, VecDeque};
use std::net::IpAddr;
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

use crate::wire::{Control, Role, WireMessage};

/// A connection id chosen by the runtime, unique while the connection lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConnId(pub u64);

/// Relay limits and timeouts.
#[derive(Debug, Clone)]
pub struct RelayConfig {
    /// How long a new connection may take to send `hello`.
    pub hello_timeout: Duration,
    /// How long a client may wait for its peer.
    pub wait_timeout: Duration,
    /// How long a closing connection gets, once everything queued for it was delivered,
    /// before it is dropped (see [`Relay::handle_flushed`]).
    pub close_grace: Duration,
    /// How long a closing connection may take to take delivery of what is queued for it
    /// (a slow receiver finishing the last pieces) before it is dropped anyway.
    pub drain_timeout: Duration,
    /// Most connections at once.
    pub max_connections: usize,
    /// Most connections at once from one client address.
    pub max_per_address: usize,
    /// Most new connections one client address may open per minute (a burst of this
    /// many, then one every `60 / n` seconds); `None` for no limit.
    pub max_new_per_minute: Option<u32>,
    /// Mixed into every [`RoomTag`], so that a tag cannot be computed from a guessed
    /// code. The runtime fills it with random bytes; the default (zeros) is for tests.
    pub room_salt: [u8; 16],
}

impl Default for RelayConfig {
    fn default() -> Self {
        RelayConfig {
            hello_timeout: Duration::from_secs(5),
            wait_timeout: Duration::from_secs(600),
            close_grace: Duration::from_secs(1),
            drain_timeout: Duration::from_secs(60),
            max_connections: 4096,
            max_per_address: 64,
            max_new_per_minute: None,
            room_salt: [0; 16],
        }
    }
}

/// Close code for a malformed first message (as the reference).
pub const CLOSE_PROTOCOL: u16 = 1002;
/// Close code for a duplicate role, and for refusals when limits are reached.
pub const CLOSE_TRY_AGAIN: u16 = 1013;
/// Close code for an ordinary end.
pub const CLOSE_NORMAL: u16 = 1000;
/// Close code when a deadline passed.
pub const CLOSE_POLICY: u16 = 1008;
/// Close code for every connection of a relay that is shutting down.
pub const CLOSE_GOING_AWAY: u16 = 1001;
/// Close reason for every connection of a relay that is shutting down.
pub const SHUTTING_DOWN: &str = "relay shutting down";

/// Why a connection was refused or closed before pairing: a small fixed set, for
/// counting refusals by reason.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum RefusalKind {
    /// The relay is at `max_connections`.
    ConnectionLimit,
    /// The address is at `max_per_address`, or the peer's connection was refused for it.
    PerAddressLimit,
    /// The address opened more than `max_new_per_minute` connections.
    RateLimit,
    /// A first message that is not a valid `hello`, or a message before pairing.
    Protocol,
    /// A second sender or receiver for one code.
    DuplicateRole,
    /// No `hello` within `hello_timeout`.
    HelloTimeout,
    /// No peer within `wait_timeout`.
    WaitTimeout,
    /// The relay is shutting down.
    ShuttingDown,
    /// The runtime reused a connection id.
    IdReused,
}

impl RefusalKind {
    /// A short name for metrics labels and logs.
    pub fn label(self) -> &'static str {
        match self {
            RefusalKind::ConnectionLimit => "connection_limit",
            RefusalKind::PerAddressLimit => "per_address_limit",
            RefusalKind::RateLimit => "rate_limit",
            RefusalKind::Protocol => "protocol",
            RefusalKind::DuplicateRole => "duplicate_role",
            RefusalKind::HelloTimeout => "hello_timeout",
            RefusalKind::WaitTimeout => "wait_timeout",
            RefusalKind::ShuttingDown => "shutting_down",
            RefusalKind::IdReused => "id_reused",
        }
    }
}

/// A room's name in logs: the first bytes of SHA-256 over the relay's salt and the
/// code's hash, shown as 8 hex digits. Both sides of a pair share it; it tells nothing
/// about the code.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct RoomTag(pub [u8; 4]);

impl RoomTag {
    fn new(salt: &[u8; 16], code_hash: &str) -> RoomTag {
        let mut h = Sha256::new();
        h.update(salt);
        h.update(code_hash.as_bytes());
        let d = h.finalize();
        RoomTag([d[0], d[1], d[2], d[3]])
    }
}

impl std::fmt::Display for RoomTag {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for b in self.0 {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

impl std::fmt::Debug for RoomTag {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "RoomTag({self})")
    }
}

/// How a pair ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum PairOutcome {
    /// The first side to leave closed its connection normally (close code 1000).
    Completed,
    /// The first side to leave went without a normal close (an error close code, a
    /// lost connection).
    Lost,
    /// The relay ended the pair for one of its limits ([`Relay::close_pair`]).
    Limit,
    /// The relay shut down before the pair ended.
    ShuttingDown,
}

impl PairOutcome {
    /// A short name for metrics labels and logs.
    pub fn label(self) -> &'static str {
        match self {
            PairOutcome::Completed => "completed",
            PairOutcome::Lost => "lost",
            PairOutcome::Limit => "limit",
            PairOutcome::ShuttingDown => "shutting_down",
        }
    }

    /// Whether the pair ended well.
    pub fn is_success(self) -> bool {
        self == PairOutcome::Completed
    }
}

/// What the runtime must do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RelayOutput {
    /// Send a message on a connection.
    Send {
        /// The connection.
        conn: ConnId,
        /// The message.
        msg: WireMessage,
    },
    /// Two connections are paired: forward between them from now on. `ready` to the
    /// sender was queued just before.
    Paired {
        /// The sender's connection.
        sender: ConnId,
        /// The receiver's connection.
        receiver: ConnId,
    },
    /// Close a connection: deliver what is already queued for it, then a close frame
    /// with this code and reason. Report its end with [`Relay::handle_disconnect`].
    Close {
        /// The connection.
        conn: ConnId,
        /// WebSocket close code.
        code: u16,
        /// Close reason.
        reason: Cow<'static, str>,
    },
    /// Drop a connection at once, without waiting for anything more.
    Abort {
        /// The connection.
        conn: ConnId,
    },
}

/// A line worth logging; never contains the code or its hash.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum RelayEvent {
    /// A connection was refused or closed before pairing.
    Refused {
        /// The connection.
        conn: ConnId,
        /// Why, as told to the client.
        reason: Cow<'static, str>,
        /// Why, for counting.
        kind: RefusalKind,
    },
    /// A pair formed.
    Paired {
        /// The sender's connection.
        sender: ConnId,
        /// The receiver's connection.
        receiver: ConnId,
        /// The room.
        room: RoomTag,
        /// How long the first side waited for the second.
        waited: Duration,
    },
    /// A pair ended.
    PairEnded {
        /// The sender's connection.
        sender: ConnId,
        /// The receiver's connection.
        receiver: ConnId,
        /// How long it lasted.
        lasted: Duration,
        /// The room.
        room: RoomTag,
        /// How it ended.
        outcome: PairOutcome,
    },
}

#[derive(Debug)]
enum ConnState {
    /// Connected; no hello yet.
    New { deadline: Instant },
    /// Hello received; waiting for a peer under this hash since `since`.
    Waiting {
        hash: String,
        deadline: Instant,
        since: Instant,
    },
    /// Paired with `partner`.
    Paired {
        partner: ConnId,
        role: Role,
        since: Instant,
        room: RoomTag,
        /// The close code this side's client sent, once it did.
        closed_with: Option<u16>,
    },
    /// Told to close; dropped at the deadline if still there.
    Closing { deadline: Instant },
}

#[derive(Debug)]
struct Conn {
    addr: IpAddr,
    state: ConnState,
}

/// The relay's pairing state machine.
///
/// Inputs: [`handle_connect`](Self::handle_connect),
/// [`handle_message`](Self::handle_message), [`handle_disconnect`](Self::handle_disconnect),
/// [`handle_timeout`](Self::handle_timeout). After each, drain
/// [`poll_output`](Self::poll_output) and [`poll_event`](Self::poll_event), then arm a
/// timer at [`poll_timeout`](Self::poll_timeout).
#[derive(Debug)]
pub struct Relay {
    config: RelayConfig,
    conns: HashMap<ConnId, Conn>,
    per_addr: HashMap<IpAddr, usize>,
    waiting: HashMap<String, (ConnId, Role)>,
    /// Connections refused at connect time (not counted against the limits), dropped
    /// after the close grace if they ignore the close.
    refused: HashMap<ConnId, Instant>,
    /// Those of `refused` that were over the per-address limit and have not said hello.
    /// The hello of such a connection closes the peer waiting for it, if any: with a
    /// parallel code the peer would otherwise wait out its timeout for a session that
    /// can never pair.
    over_limit: HashSet<ConnId>,
    /// Recent new connections per address, for `max_new_per_minute`.
    admissions: Admissions,
    /// Pairs formed and not yet ended.
    pairs: usize,
    /// Set once [`Relay::handle_shutdown`] was called.
    shutting_down: bool,
    /// When the pairs still running at shutdown are closed; taken when it passes.
    drain_deadline: Option<Instant>,
    out: VecDeque<RelayOutput>,
    events: VecDeque<RelayEvent>,
}

/// Most addresses remembered for `max_new_per_minute` (about 1 MiB); past it, addresses
/// whose bucket has refilled are forgotten, and while none has, new addresses are
/// refused.
const MAX_ADMISSION_ADDRS: usize = 16_384;

/// A token bucket per address: `burst` connections at once, refilled at `burst` a
/// minute.
#[derive(Debug, Default)]
struct Admissions {
    buckets: HashMap<IpAddr, (f64, Instant)>,
}

impl Admissions {
    fn admit(&mut self, now: Instant, addr: IpAddr, per_minute: u32) -> bool {
        let addr = admission_key(addr);
        let burst = f64::from(per_minute);
        let rate = burst / 60.0;
        let refill = |(tokens, at): (f64, Instant)| {
            let secs = now.saturating_duration_since(at).as_secs_f64();
            (tokens + secs * rate).min(burst)
        };
        if !self.buckets.contains_key(&addr) && self.buckets.len() >= MAX_ADMISSION_ADDRS {
            self.buckets.retain(|_, b| refill(*b) < burst);
            if self.buckets.len() >= MAX_ADMISSION_ADDRS {
                return false;
            }
        }
        let b = self.buckets.entry(addr).or_insert((burst, now));
        let tokens = refill(*b);
        if tokens < 1.0 {
            *b = (tokens, now);
            return false;
        }
        *b = (tokens - 1.0, now);
        true
    }
}

/// The key a client address is rate-limited under: its IPv4 address, or its IPv6 /64
/// (one host usually holds a whole /64, and could otherwise take a fresh address per
/// connection).
fn admission_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(std::net::Ipv6Addr::from(
                u128::from(v6) & !((1u128 << 64) - 1),
            )),
        },
    }
}

impl Relay {
    /// A relay with no connections.
    pub fn new(config: RelayConfig) -> Relay {
        Relay {
            config,
            conns: HashMap::new(),
            per_addr: HashMap::new(),
            waiting: HashMap::new(),
            refused: HashMap::new(),
            over_limit: HashSet::new(),
            admissions: Admissions::default(),
            pairs: 0,
            shutting_down: false,
            drain_deadline: None,
            out: VecDeque::new(),
            events: VecDeque::new(),
        }
    }

    /// Connections currently tracked (for metrics and tests).
    pub fn connection_count(&self) -> usize {
        self.conns.len()
    }

    /// Codes waiting for a peer.
    pub fn waiting_count(&self) -> usize {
        self.waiting.len()
    }

    /// Pairs forwarding data.
    pub fn paired_count(&self) -> usize {
        self.pairs
    }

    /// Whether nothing is left: no connection tracked, none refused and still open.
    pub fn is_empty(&self) -> bool {
        self.conns.is_empty() && self.refused.is_empty()
    }

    /// The next thing to do.
    pub fn poll_output(&mut self) -> Option<RelayOutput> {
        self.out.pop_front()
    }

    /// The next line to log.
    pub fn poll_event(&mut self) -> Option<RelayEvent> {
        self.events.pop_front()
    }

    /// The earliest deadline, if any.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let refused = self.refused.values().copied().min();
        let tracked = self
            .conns
            .values()
            .filter_map(|c| match c.state {
                ConnState::New { deadline }
                | ConnState::Waiting { deadline, .. }
                | ConnState::Closing { deadline } => Some(deadline),
                ConnState::Paired { .. } => None,
            })
            .min();
        refused
            .into_iter()
            .chain(tracked)
            .chain(self.drain_deadline)
            .min()
    }

    /// A new connection from `addr`. Returns false (and queues a close) when a limit is
    /// reached; the refused connection does not count against the limits and is aborted
    /// after the close grace if it is still there.
    pub fn handle_connect(&mut self, now: Instant, conn: ConnId, addr: IpAddr) -> bool {
        let from_addr = self.per_addr.get(&addr).copied().unwrap_or(0);
        let refusal = if self.conns.contains_key(&conn) || self.refused.contains_key(&conn) {
            Some((
                CLOSE_TRY_AGAIN,
                RefusalKind::IdReused,
                Cow::Borrowed("connection id reused"),
            ))
        } else if self.shutting_down {
            Some((
                CLOSE_GOING_AWAY,
                RefusalKind::ShuttingDown,
                Cow::Borrowed(SHUTTING_DOWN),
            ))
        } else if self.conns.len() >= self.config.max_connections {
            Some((
                CLOSE_TRY_AGAIN,
                RefusalKind::ConnectionLimit,
                Cow::Borrowed("relay is at its connection limit"),
            ))
        } else if from_addr >= self.config.max_per_address {
            self.over_limit.insert(conn);
            Some((
                CLOSE_TRY_AGAIN,
                RefusalKind::PerAddressLimit,
                per_address_refusal(self.config.max_per_address).into(),
            ))
        } else {
            // Only a connection that fits every other limit spends a token.
            self.config
                .max_new_per_minute
                .filter(|&n| !self.admissions.admit(now, addr, n))
                .map(|n| {
                    (
                        CLOSE_TRY_AGAIN,
                        RefusalKind::RateLimit,
                        rate_refusal(n).into(),
                    )
                })
        };
        if let Some((code, kind, reason)) = refusal {
            self.out.push_back(RelayOutput::Close {
                conn,
                code,
                reason: reason.clone(),
            });
            self.events
                .push_back(RelayEvent::Refused { conn, reason, kind });
            self.refused
                .entry(conn)
                .or_insert(now + self.config.close_grace);
            return false;
        }
        *self.per_addr.entry(addr).or_insert(0) += 1;
        self.conns.insert(
            conn,
            Conn {
                addr,
                state: ConnState::New {
                    deadline: now + self.config.hello_timeout,
                },
            },
        );
        true
    }

    /// A message from a connection that is not paired yet (its first message must be
    /// `hello`). Messages of paired connections are the runtime's to forward; any given
    /// here are ignored.
    pub fn handle_message(&mut self, now: Instant, conn: ConnId, msg: WireMessage) {
        let Some(c) = self.conns.get(&conn) else {
            if self.over_limit.remove(&conn) {
                self.over_limit_hello(now, &msg);
            }
            return;
        };
        match c.state {
            ConnState::New { .. } => {}
            ConnState::Waiting { .. } => {
                // A waiting client has nobody to talk to; the reference would hold the
                // message until pairing and then drop it. Refuse instead of buffering.
                self.refuse(
                    now,
                    conn,
                    CLOSE_PROTOCOL,
                    RefusalKind::Protocol,
                    "message before a peer joined",
                );
                return;
            }
            ConnState::Paired { .. } | ConnState::Closing { .. } => return,
        }
        let hello = match msg {
            WireMessage::Binary(_) => Err("First frame must be hello text"),
            WireMessage::Text(t) => parse_hello(&t),
        };
        match hello {
            Err(reason) => self.refuse(now, conn, CLOSE_PROTOCOL, RefusalKind::Protocol, reason),
            Ok((hash, role)) => self.on_hello(now, conn, hash, role),
        }
    }

    fn on_hello(&mut self, now: Instant, conn: ConnId, hash: String, role: Role) {
        match self.waiting.remove(&hash) {
            Some((other, other_role)) if other_role == role && crate::code::is_room_id(&hash) => {
                // The room of a code like 7-guitar-rocket: the number is public, so a
                // newcomer (another transfer that drew the same number, or someone
                // guessing) must not end the transfer that waits there.
                self.waiting.insert(hash, (other, other_role));
                self.refuse(
                    now,
                    conn,
                    CLOSE_TRY_AGAIN,
                    RefusalKind::DuplicateRole,
                    "Duplicate role for code",
                );
            }
            Some((other, other_role)) if other_role == role => {
                let dup = RefusalKind::DuplicateRole;
                self.refuse(now, other, CLOSE_TRY_AGAIN, dup, "Duplicate role for code");
                self.refuse(now, conn, CLOSE_TRY_AGAIN, dup, "Duplicate role for code");
            }
            Some((other, _)) => {
                let (sender, receiver) = match role {
                    Role::Sender => (conn, other),
                    Role::Receiver => (other, conn),
                };
                let room = RoomTag::new(&self.config.room_salt, &hash);
                let mut waited = Duration::ZERO;
                if let Some(c) = self.conns.get_mut(&other) {
                    if let ConnState::Waiting { since, .. } = c.state {
                        waited = now.saturating_duration_since(since);
                    }
                    c.state = ConnState::Paired {
                        partner: conn,
                        role: role.other(),
                        since: now,
                        room,
                        closed_with: None,
                    };
                }
                if let Some(c) = self.conns.get_mut(&conn) {
                    c.state = ConnState::Paired {
                        partner: other,
                        role,
                        since: now,
                        room,
                        closed_with: None,
                    };
                }
                self.out.push_back(RelayOutput::Send {
                    conn: sender,
                    msg: Control::Ready.into(),
                });
                self.out.push_back(RelayOutput::Paired { sender, receiver });
                self.pairs += 1;
                self.events.push_back(RelayEvent::Paired {
                    sender,
                    receiver,
                    room,
                    waited,
                });
            }
            None => {
                if let Some(c) = self.conns.get_mut(&conn) {
                    c.state = ConnState::Waiting {
                        hash: hash.clone(),
                        deadline: now + self.config.wait_timeout,
                        since: now,
                    };
                }
                self.waiting.insert(hash, (conn, role));
            }
        }
    }

    /// The hello of a connection refused for the per-address limit: its peer, if already
    /// waiting under the same code, can never pair on it and is closed with the limit.
    fn over_limit_hello(&mut self, now: Instant, msg: &WireMessage) {
        let WireMessage::Text(t) = msg else { return };
        let Ok((hash, role)) = parse_hello(t) else {
            return;
        };
        match self.waiting.get(&hash) {
            Some(&(peer, peer_role)) if peer_role != role => {
                let reason = per_address_peer_refusal(self.config.max_per_address);
                let kind = RefusalKind::PerAddressLimit;
                self.refuse(now, peer, CLOSE_TRY_AGAIN, kind, reason);
            }
            _ => {}
        }
    }

    /// Close a connection that has not paired; it stays tracked until it disconnects or
    /// the grace period ends.
    fn refuse(
        &mut self,
        now: Instant,
        conn: ConnId,
        code: u16,
        kind: RefusalKind,
        reason: impl Into<Cow<'static, str>>,
    ) {
        let reason = reason.into();
        let Some(c) = self.conns.get_mut(&conn) else {
            return;
        };
        if let ConnState::Waiting { hash, .. } = &c.state {
            if self.waiting.get(hash).is_some_and(|(w, _)| *w == conn) {
                self.waiting.remove(hash);
            }
        }
        c.state = ConnState::Closing {
            deadline: now + self.config.close_grace,
        };
        self.out.push_back(RelayOutput::Close {
            conn,
            code,
            reason: reason.clone(),
        });
        self.events
            .push_back(RelayEvent::Refused { conn, reason, kind });
    }

    /// A paired connection's client sent a close frame with `code`: when its side is
    /// the first to leave, the pair's outcome is [`PairOutcome::Completed`] for 1000 and
    /// [`PairOutcome::Lost`] otherwise. Call it before
    /// [`handle_disconnect`](Self::handle_disconnect); other connections ignore it.
    pub fn handle_client_close(&mut self, conn: ConnId, code: u16) {
        if let Some(Conn {
            state: ConnState::Paired { closed_with, .. },
            ..
        }) = self.conns.get_mut(&conn)
        {
            closed_with.get_or_insert(code);
        }
    }

    /// End the pair of `conn` because the runtime found it over a limit (bytes, say):
    /// both sides are closed with [`CLOSE_POLICY`] and `reason`, which their clients
    /// show, after what is already queued for them, and the pair ends with
    /// [`PairOutcome::Limit`]. Nothing happens unless `conn` is paired.
    pub fn close_pair(&mut self, now: Instant, conn: ConnId, reason: impl Into<Cow<'static, str>>) {
        self.end_pair(now, conn, PairOutcome::Limit, CLOSE_POLICY, reason.into());
    }

    /// Close both sides of `conn`'s pair with `code` and `reason`, and report its end.
    fn end_pair(
        &mut self,
        now: Instant,
        conn: ConnId,
        outcome: PairOutcome,
        code: u16,
        reason: Cow<'static, str>,
    ) {
        let Some(Conn {
            state:
                ConnState::Paired {
                    partner,
                    role,
                    since,
                    room,
                    ..
                },
            ..
        }) = self.conns.get(&conn)
        else {
            return;
        };
        let (partner, role, since, room) = (*partner, *role, *since, *room);
        self.report_pair_end(now, (conn, role, partner), since, room, outcome);
        for c in [conn, partner] {
            if let Some(entry) = self.conns.get_mut(&c) {
                entry.state = ConnState::Closing {
                    deadline: now + self.config.drain_timeout,
                };
                self.out.push_back(RelayOutput::Close {
                    conn: c,
                    code,
                    reason: reason.clone(),
                });
            }
        }
    }

    /// Count a pair's end and report it; `side` is one connection, its role, and its
    /// partner.
    fn report_pair_end(
        &mut self,
        now: Instant,
        side: (ConnId, Role, ConnId),
        since: Instant,
        room: RoomTag,
        outcome: PairOutcome,
    ) {
        let (sender, receiver) = match side {
            (conn, Role::Sender, partner) => (conn, partner),
            (conn, Role::Receiver, partner) => (partner, conn),
        };
        self.pairs -= 1;
        self.events.push_back(RelayEvent::PairEnded {
            sender,
            receiver,
            lasted: now.saturating_duration_since(since),
            room,
            outcome,
        });
    }

    /// The relay is shutting down: refuse every new connection, close every connection
    /// that has not paired with [`CLOSE_GOING_AWAY`] at once (its client can go to
    /// another relay), and let the pairs run until `drain` has passed, then close them
    /// the same way. A later call can only bring that deadline closer (a zero `drain`
    /// closes the pairs at once). Watch [`is_empty`](Self::is_empty) to know when all
    /// are gone.
    pub fn handle_shutdown(&mut self, now: Instant, drain: Duration) {
        if !self.shutting_down {
            self.shutting_down = true;
            let mut unpaired: Vec<ConnId> = self
                .conns
                .iter()
                .filter(|(_, c)| {
                    matches!(c.state, ConnState::New { .. } | ConnState::Waiting { .. })
                })
                .map(|(id, _)| *id)
                .collect();
            unpaired.sort();
            for conn in unpaired {
                let kind = RefusalKind::ShuttingDown;
                self.refuse(now, conn, CLOSE_GOING_AWAY, kind, SHUTTING_DOWN);
            }
        }
        if drain.is_zero() {
            self.drain_deadline = None;
            self.close_remaining_pairs(now);
        } else {
            let at = now + drain;
            self.drain_deadline = Some(self.drain_deadline.map_or(at, |d| d.min(at)));
        }
    }

    fn close_remaining_pairs(&mut self, now: Instant) {
        let mut paired: Vec<ConnId> = self
            .conns
            .iter()
            .filter_map(|(id, c)| match c.state {
                ConnState::Paired {
                    role: Role::Sender, ..
                } => Some(*id),
                _ => None,
            })
            .collect();
        paired.sort();
        for conn in paired {
            let outcome = PairOutcome::ShuttingDown;
            self.end_pair(now, conn, outcome, CLOSE_GOING_AWAY, SHUTTING_DOWN.into());
        }
    }

    /// A connection ended (its reader saw the close or an error). Its partner, if any,
    /// is closed after what is already queued for it, and dropped after the grace period.
    pub fn handle_disconnect(&mut self, now: Instant, conn: ConnId) {
        if self.refused.remove(&conn).is_some() {
            self.over_limit.remove(&conn);
            return;
        }
        let Some(c) = self.conns.remove(&conn) else {
            return;
        };
        if let Some(n) = self.per_addr.get_mut(&c.addr) {
            *n -= 1;
            if *n == 0 {
                self.per_addr.remove(&c.addr);
            }
        }
        match c.state {
            ConnState::Waiting { hash, .. } => {
                if self.waiting.get(&hash).is_some_and(|(w, _)| *w == conn) {
                    self.waiting.remove(&hash);
                }
            }
            ConnState::Paired {
                partner,
                role,
                since,
                room,
                closed_with,
            } => {
                let outcome = match closed_with {
                    Some(CLOSE_NORMAL) => PairOutcome::Completed,
                    _ => PairOutcome::Lost,
                };
                self.report_pair_end(now, (conn, role, partner), since, room, outcome);
                if let Some(p) = self.conns.get_mut(&partner) {
                    p.state = ConnState::Closing {
                        deadline: now + self.config.drain_timeout,
                    };
                    self.out.push_back(RelayOutput::Close {
                        conn: partner,
                        code: CLOSE_NORMAL,
                        reason: "peer closed".into(),
                    });
                }
            }
            ConnState::New { .. } | ConnState::Closing { .. } => {}
        }
    }

    /// Everything queued for a closing connection was delivered and its close frame sent:
    /// from now on it only gets the close grace period.
    pub fn handle_flushed(&mut self, now: Instant, conn: ConnId) {
        if let Some(Conn {
            state: ConnState::Closing { deadline },
            ..
        }) = self.conns.get_mut(&conn)
        {
            *deadline = (*deadline).min(now + self.config.close_grace);
        }
    }

    /// Time has passed: close connections whose hello or wait deadline passed, drop
    /// closing connections whose grace ended.
    pub fn handle_timeout(&mut self, now: Instant) {
        if self.drain_deadline.is_some_and(|d| now >= d) {
            self.drain_deadline = None;
            self.close_remaining_pairs(now);
        }
        let mut gone: Vec<ConnId> = self
            .refused
            .iter()
            .filter(|(_, deadline)| now >= **deadline)
            .map(|(id, _)| *id)
            .collect();
        gone.sort();
        for conn in gone {
            self.refused.remove(&conn);
            self.over_limit.remove(&conn);
            self.out.push_back(RelayOutput::Abort { conn });
        }
        let mut due: Vec<(ConnId, bool)> = self
            .conns
            .iter()
            .filter_map(|(id, c)| match c.state {
                ConnState::New { deadline } | ConnState::Waiting { deadline, .. }
                    if now >= deadline =>
                {
                    Some((*id, false))
                }
                ConnState::Closing { deadline } if now >= deadline => Some((*id, true)),
                _ => None,
            })
            .collect();
        due.sort();
        for (conn, closing) in due {
            if closing {
                self.out.push_back(RelayOutput::Abort { conn });
                self.handle_disconnect(now, conn);
                continue;
            }
            let (kind, reason) = match self.conns.get(&conn).map(|c| &c.state) {
                Some(ConnState::New { .. }) => (RefusalKind::HelloTimeout, "no hello in time"),
                _ => (RefusalKind::WaitTimeout, "no peer joined in time"),
            };
            self.refuse(now, conn, CLOSE_POLICY, kind, reason);
        }
    }
}

/// The close reason for a connection over the per-address limit. It names the limit, so
/// that a client of a parallel code `n=<N>=n…` can tell its user how many connections
/// fit; [`per_address_limit`] reads it back.
pub fn per_address_refusal(limit: usize) -> String {
    format!(
        "too many connections from this address{}",
        limit_note(limit)
    )
}

/// The close reason for a client whose peer's connection for the same code was refused
/// for the per-address limit.
pub fn per_address_peer_refusal(limit: usize) -> String {
    format!(
        "the peer's connection for this code was refused: too many connections from its address{}",
        limit_note(limit)
    )
}

/// The close reason for a connection over `max_new_per_minute`.
pub fn rate_refusal(per_minute: u32) -> String {
    format!(
        "too many new connections from this address (the relay allows {per_minute} a minute); try again later"
    )
}

fn limit_note(limit: usize) -> String {
    format!(" (the relay allows {limit} per address)")
}

/// The limit named by a close reason from [`per_address_refusal`] or
/// [`per_address_peer_refusal`], found anywhere in `text`.
pub fn per_address_limit(text: &str) -> Option<usize> {
    let (_, rest) = text.split_once(" (the relay allows ")?;
    let (n, _) = rest.split_once(" per address)")?;
    n.parse().ok()
}

/// Validate a hello exactly as the reference does.
fn parse_hello(text: &str) -> Result<(String, Role), &'static str> {
    let v: serde_json::Value = serde_json::from_str(text).map_err(|_| "Bad hello json")?;
    if v.get("type").and_then(|t| t.as_str()) != Some("hello") {
        return Err("First frame must be hello");
    }
    let hash = v
        .get("code_hash_hex")
        .and_then(|h| h.as_str())
        .unwrap_or("");
    let role = match v.get("role").and_then(|r| r.as_str()) {
        Some("sender") => Some(Role::Sender),
        Some("receiver") => Some(Role::Receiver),
        _ => None,
    };
    match role {
        Some(role) if !hash.is_empty() => Ok((hash.to_owned(), role)),
        _ => Err("Bad hello"),
    }
}
