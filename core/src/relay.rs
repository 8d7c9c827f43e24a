//! Relay pairing: validate `hello`, let the first client of a code wait, pair it with
//! the other role, refuse a duplicate role, send `ready` to the sender, and close the
//! partner when one side leaves. Connections are keyed by ids the runtime chooses.
//!
//! Once [`RelayOutput::Paired`] is emitted the runtime forwards every message of the two
//! connections unchanged, in both directions, with bounded buffers (a slow reader slows
//! its sender), and reports the end of either with [`Relay::handle_disconnect`].

use std::borrow::Cow;
use std::collections::{HashMap, HashSet, VecDeque};
use std::net::IpAddr;
use std::time::{Duration, Instant};

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
        /// Why.
        reason: Cow<'static, str>,
    },
    /// A pair formed.
    Paired {
        /// The sender's connection.
        sender: ConnId,
        /// The receiver's connection.
        receiver: ConnId,
    },
    /// A pair ended.
    PairEnded {
        /// The sender's connection.
        sender: ConnId,
        /// The receiver's connection.
        receiver: ConnId,
        /// How long it lasted.
        lasted: Duration,
    },
}

#[derive(Debug)]
enum ConnState {
    /// Connected; no hello yet.
    New { deadline: Instant },
    /// Hello received; waiting for a peer under this hash.
    Waiting { hash: String, deadline: Instant },
    /// Paired with `partner`.
    Paired {
        partner: ConnId,
        role: Role,
        since: Instant,
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
    out: VecDeque<RelayOutput>,
    events: VecDeque<RelayEvent>,
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
        refused.into_iter().chain(tracked).min()
    }

    /// A new connection from `addr`. Returns false (and queues a close) when a limit is
    /// reached; the refused connection does not count against the limits and is aborted
    /// after the close grace if it is still there.
    pub fn handle_connect(&mut self, now: Instant, conn: ConnId, addr: IpAddr) -> bool {
        let from_addr = self.per_addr.get(&addr).copied().unwrap_or(0);
        let refusal = if self.conns.contains_key(&conn) || self.refused.contains_key(&conn) {
            Some(Cow::Borrowed("connection id reused"))
        } else if self.conns.len() >= self.config.max_connections {
            Some(Cow::Borrowed("relay is at its connection limit"))
        } else if from_addr >= self.config.max_per_address {
            self.over_limit.insert(conn);
            Some(per_address_refusal(self.config.max_per_address).into())
        } else {
            None
        };
        if let Some(reason) = refusal {
            self.out.push_back(RelayOutput::Close {
                conn,
                code: CLOSE_TRY_AGAIN,
                reason: reason.clone(),
            });
            self.events.push_back(RelayEvent::Refused { conn, reason });
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
                self.refuse(now, conn, CLOSE_PROTOCOL, "message before a peer joined");
                return;
            }
            ConnState::Paired { .. } | ConnState::Closing { .. } => return,
        }
        let hello = match msg {
            WireMessage::Binary(_) => Err("First frame must be hello text"),
            WireMessage::Text(t) => parse_hello(&t),
        };
        match hello {
            Err(reason) => self.refuse(now, conn, CLOSE_PROTOCOL, reason),
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
                self.refuse(now, conn, CLOSE_TRY_AGAIN, "Duplicate role for code");
            }
            Some((other, other_role)) if other_role == role => {
                self.refuse(now, other, CLOSE_TRY_AGAIN, "Duplicate role for code");
                self.refuse(now, conn, CLOSE_TRY_AGAIN, "Duplicate role for code");
            }
            Some((other, _)) => {
                let (sender, receiver) = match role {
                    Role::Sender => (conn, other),
                    Role::Receiver => (other, conn),
                };
                if let Some(c) = self.conns.get_mut(&conn) {
                    c.state = ConnState::Paired {
                        partner: other,
                        role,
                        since: now,
                    };
                }
                if let Some(c) = self.conns.get_mut(&other) {
                    c.state = ConnState::Paired {
                        partner: conn,
                        role: role.other(),
                        since: now,
                    };
                }
                self.out.push_back(RelayOutput::Send {
                    conn: sender,
                    msg: Control::Ready.into(),
                });
                self.out.push_back(RelayOutput::Paired { sender, receiver });
                self.events
                    .push_back(RelayEvent::Paired { sender, receiver });
            }
            None => {
                if let Some(c) = self.conns.get_mut(&conn) {
                    c.state = ConnState::Waiting {
                        hash: hash.clone(),
                        deadline: now + self.config.wait_timeout,
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
                self.refuse(now, peer, CLOSE_TRY_AGAIN, reason);
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
        self.events.push_back(RelayEvent::Refused { conn, reason });
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
            } => {
                let (sender, receiver) = match role {
                    Role::Sender => (conn, partner),
                    Role::Receiver => (partner, conn),
                };
                self.events.push_back(RelayEvent::PairEnded {
                    sender,
                    receiver,
                    lasted: now.saturating_duration_since(since),
                });
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
            let reason = match self.conns.get(&conn).map(|c| &c.state) {
                Some(ConnState::New { .. }) => "no hello in time",
                _ => "no peer joined in time",
            };
            self.refuse(now, conn, CLOSE_POLICY, reason);
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
