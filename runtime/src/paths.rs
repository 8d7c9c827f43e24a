//! The session's connection when the peer may be reached directly (extension
//! [`EXT_DIRECT`]): the relay's WebSocket, the direct-path attempt beside it, and after
//! the switch the QUIC connection to the peer.
//!
//! The session itself never knows which path a message takes. Until the peer answers
//! the offer everything goes through the relay, exactly as in v1. Once both sides
//! agree, this connection gathers candidates (one UDP socket: its interface addresses,
//! and its public address from STUN on that same socket before QUIC takes it over),
//! runs [`DirectPath`] with the peer over the relay, and probes: the sender connects to
//! each receiver candidate, the receiver sends small datagrams to each sender candidate
//! (opening its NAT for the sender's packets) and accepts. At the sender's
//! `direct_ready` the session's messages move to QUIC, kept by [`SenderHandover`] until
//! the receiver acknowledges them; if the direct path fails, they continue on the relay
//! from where the receiver stopped ([`crate::paths`] module docs of the core's
//! `handover`). The receiver's own messages (its answers and report) always use the
//! relay.
//!
//! [`EXT_DIRECT`]: p2p_copy_core::wire::EXT_DIRECT

use std::collections::{HashMap, VecDeque};
use std::io;
use std::net::{IpAddr, SocketAddr, ToSocketAddrs, UdpSocket};
use std::task::{ready, Context, Poll};
use std::time::{Duration, Instant};

use futures_util::future::BoxFuture;
use futures_util::stream::FuturesUnordered;
use futures_util::{FutureExt, StreamExt};
use p2p_copy_core::crypto::Cipher;
use p2p_copy_core::direct::{
    Action, Candidate, DirectAnswer, DirectConfig, DirectEvent, DirectMode, DirectPath,
};
use p2p_copy_core::handover::{ReceiverHandover, SenderHandover};
use p2p_copy_core::wire::{CandidateKind, Control, Role};
use p2p_copy_core::{stun, Error, PathEvent, WireMessage};

use crate::quic::{Fingerprint, Identity, QuicConn, QuicEndpoint};
use crate::rt::Rt;
use crate::transport::{relay_host_port, Incoming, MessageTransport, TransportError};
use crate::DirectOptions;

/// How often the receiver sends a datagram to each sender candidate while it waits.
const PUNCH_EVERY: Duration = Duration::from_millis(100);
/// How long file data waits for the direct path once the peer agreed to try (see
/// [`Paths::hold_until`]).
const SWITCH_HOLD: Duration = Duration::from_secs(1);
/// Bounds of how long file data waits for the receiver's answer to the offer.
const ANSWER_HOLD_MIN: Duration = Duration::from_millis(100);
const ANSWER_HOLD_MAX: Duration = Duration::from_secs(1);
/// What the dial hold adds to the relay's round trip: the relay and the receiver
/// passing our candidates on and punching. In the unshaped lab the receiver punched
/// up to about 1 ms after the sender's first packet reached its NAT.
const DIAL_MARGIN: Duration = Duration::from_millis(5);
/// The longest dial hold: past it, the relay's answer was late (lost and resent), not
/// far away.
const MAX_DIAL_HOLD: Duration = Duration::from_millis(300);
/// How long to wait for STUN answers while gathering.
const STUN_WAIT: Duration = Duration::from_millis(800);
/// What the receiver sends to open its NAT: too short to be a QUIC packet, so the
/// sender's QUIC stack drops it without answering.
const PUNCH: &[u8] = &[0];
/// The reason of the direct connection's close at the end of a session.
const DONE: &[u8] = b"done";

/// What gathering found.
struct Gathered {
    socket: UdpSocket,
    identity: Identity,
    candidates: Vec<Candidate>,
    relay_addrs: Vec<SocketAddr>,
    /// How long the relay's STUN port took to answer, if it did.
    relay_rtt: Option<Duration>,
}

type Connecting = BoxFuture<'static, (SocketAddr, Result<QuicConn, String>)>;
type Accepting = BoxFuture<'static, Result<QuicConn, crate::TransferError>>;

/// The attempt: the machine and the probes it asked for.
struct Attempt {
    machine: DirectPath,
    endpoint: QuicEndpoint,
    /// The same socket as the endpoint's, for the receiver's punching datagrams.
    punch: UdpSocket,
    started: Instant,
    connecting: FuturesUnordered<Connecting>,
    accepting: Option<Accepting>,
    /// Verified connections: the sender's by the candidate it dialled, the receiver's by
    /// the address they came from.
    verified: HashMap<SocketAddr, QuicConn>,
    /// Receiver: the sender candidates the machine asked to probe (punch targets), and
    /// whether the probe was reported.
    asked: Vec<(SocketAddr, bool)>,
    punch_timer: Option<BoxFuture<'static, ()>>,
    timer: Option<(Instant, BoxFuture<'static, ()>)>,
}

/// The direct path after the switch.
struct Link {
    /// Sender: the one connection. Receiver: every verified connection until the
    /// sender's first message shows which one it uses.
    conns: Vec<QuicConn>,
    chosen: Option<usize>,
    /// Receiver: the chosen connection failed; wait for the sender's `direct_lost`.
    broken: bool,
    side: Side,
    /// Receiver: acknowledgements to write.
    acks: VecDeque<WireMessage>,
    acks_dirty: bool,
}

enum Side {
    Sender(SenderHandover),
    Receiver(ReceiverHandover),
}

enum Stage {
    /// No answer to the offer yet, or none will come (a v1 peer).
    Idle,
    Gathering {
        fut: BoxFuture<'static, Result<Gathered, String>>,
        sealing: Option<(Cipher, [u8; 32])>,
        early: Vec<Control>,
        started: Instant,
    },
    Trying(Box<Attempt>),
    Direct(Box<Link>),
    /// Decided: the relay carries the rest.
    Relay,
}

/// The relay connection with the direct path beside it (see the module docs).
pub(crate) struct Paths<R: Rt, T: MessageTransport> {
    rt: R,
    role: Role,
    opts: DirectOptions,
    server: String,
    relay: T,
    relay_done: bool,
    /// What the relay delivered for the session while the session was not reading.
    held: VecDeque<Option<Result<Incoming, TransportError>>>,
    /// Our messages for the relay, sent before anything the session sends next.
    relay_out: VecDeque<WireMessage>,
    /// Sender: kept messages to send again on the relay after the direct path failed.
    resend: VecDeque<WireMessage>,
    stage: Stage,
    events: VecDeque<PathEvent>,
    fatal: Option<Error>,
    /// Session messages passed on so far (a direct-only sender lets `hello` and the
    /// manifest through the relay and holds the rest for the direct path).
    session_sent: u64,
    answer_timer: Option<BoxFuture<'static, ()>>,
    /// How long the sender's file data waits for the receiver's answer: twice the time
    /// the relay connection took to open (a few round trips), within bounds.
    answer_hold: Duration,
    /// When the manifest went out (sender).
    manifest_at: Option<Instant>,
    /// When the peer agreed to an attempt.
    agreed_at: Option<Instant>,
    /// File data went on the relay without waiting: no later wait.
    data_flowed: bool,
    hold_timer: Option<(Instant, BoxFuture<'static, ()>)>,
}

impl<R: Rt, T: MessageTransport> Paths<R, T> {
    /// `opened_in` is how long the relay connection took to open, a measure of the
    /// round trip to the relay.
    pub(crate) fn new(
        rt: R,
        role: Role,
        opts: DirectOptions,
        server: String,
        relay: T,
        opened_in: Duration,
    ) -> Self {
        Paths {
            rt,
            role,
            opts,
            server,
            relay,
            relay_done: false,
            held: VecDeque::new(),
            relay_out: VecDeque::new(),
            resend: VecDeque::new(),
            stage: Stage::Idle,
            events: VecDeque::new(),
            fatal: None,
            session_sent: 0,
            answer_timer: None,
            answer_hold: (opened_in * 2).clamp(ANSWER_HOLD_MIN, ANSWER_HOLD_MAX),
            manifest_at: None,
            agreed_at: None,
            data_flowed: false,
            hold_timer: None,
        }
    }

    fn direct_only(&self) -> bool {
        self.opts.mode == DirectMode::DirectOnly
    }

    fn fail(&mut self, e: Error) {
        if self.fatal.is_none() {
            self.fatal = Some(e);
        }
    }

    /// Stay on the relay for the rest of the session.
    fn give_up(&mut self, reason: String, fatal: bool) {
        log::debug!("direct: staying on the relay: {reason}");
        if let Stage::Trying(a) = &self.stage {
            a.endpoint.close();
        }
        self.stage = Stage::Relay;
        if fatal || self.direct_only() {
            self.fail(Error::NoDirectPath(reason.clone()));
        }
        self.events.push_back(PathEvent::Relay { reason });
    }

    /// A relay message: the direct-path ones are taken here, the session's returned.
    fn on_relay_message(&mut self, msg: WireMessage) -> Option<WireMessage> {
        if matches!(self.stage, Stage::Idle) {
            return Some(msg);
        }
        let WireMessage::Text(text) = &msg else {
            return Some(msg);
        };
        if !(text.contains("direct_") || text.contains("candidates")) {
            return Some(msg);
        }
        let Ok(c) = Control::parse(text) else {
            return Some(msg);
        };
        let now = Instant::now();
        match c {
            c @ (Control::Candidates(_)
            | Control::EncCandidates { .. }
            | Control::DirectReady { .. }
            | Control::DirectFailed { .. }) => match &mut self.stage {
                Stage::Gathering { early, .. } => {
                    if early.len() < 4 {
                        early.push(c);
                    } else {
                        self.fail(Error::peer("too many direct-path messages"));
                    }
                }
                Stage::Trying(a) => {
                    if let Err(e) = a.machine.handle_message(now, c) {
                        self.fail(e);
                    }
                    self.drive_machine();
                }
                // After the decision the attempt's messages change nothing: the sender
                // decides, and both sides already acted on it.
                _ => {}
            },
            Control::DirectLost { attempt } if self.role == Role::Receiver => {
                let Stage::Direct(link) = &mut self.stage else {
                    self.fail(Error::peer("direct_lost without a direct path"));
                    return None;
                };
                let Side::Receiver(h) = &mut link.side else {
                    unreachable!("a receiver's link");
                };
                match h.on_lost(attempt) {
                    Ok(answer) => {
                        log::debug!(
                            "direct: the sender lost the direct path after {} messages; continuing on the relay",
                            h.received()
                        );
                        link.close();
                        self.relay_out.push_back(answer.into());
                        self.stage = Stage::Relay;
                        self.events.push_back(PathEvent::BackToRelay {
                            reason: "the direct connection failed".into(),
                        });
                    }
                    Err(e) => self.fail(e),
                }
            }
            Control::DirectResume { attempt, received } if self.role == Role::Sender => {
                let Stage::Direct(link) = &mut self.stage else {
                    self.fail(Error::peer("direct_resume without a direct path"));
                    return None;
                };
                let Side::Sender(h) = &mut link.side else {
                    unreachable!("a sender's link");
                };
                match h.on_resume(attempt, received) {
                    Ok(again) => {
                        log::debug!(
                            "direct: the receiver took {received} of {} messages from the direct path; sending {} again on the relay",
                            h.sent(),
                            again.len()
                        );
                        self.resend.extend(again);
                        self.stage = Stage::Relay;
                    }
                    Err(e) => self.fail(e),
                }
            }
            _ => return Some(msg),
        }
        None
    }

    /// Read the relay, taking the direct-path messages, until something for the session.
    fn poll_relay(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Incoming, TransportError>>> {
        if self.relay_done {
            return Poll::Ready(None);
        }
        loop {
            let item = ready!(self.relay.poll_recv(cx));
            match item {
                Some(Ok(Incoming::Message(m))) => {
                    if let Some(m) = self.on_relay_message(m) {
                        return Poll::Ready(Some(Ok(Incoming::Message(m))));
                    }
                    // A direct-path message may have changed where the session reads
                    // and writes (a switch, a loss) or queued messages and events: the
                    // session loop must go round again, even if this read ends Pending,
                    // since nothing else would wake it for the new path.
                    cx.waker().wake_by_ref();
                }
                None => {
                    self.relay_done = true;
                    return Poll::Ready(None);
                }
                Some(Err(e)) => {
                    self.relay_done = true;
                    return Poll::Ready(Some(Err(e)));
                }
                other => return Poll::Ready(other),
            }
        }
    }

    /// Send our queued relay messages.
    ///
    /// Never before the session's second message (`hello`, then the sender's manifest
    /// or the receiver's answer to it): the peer must learn that this side accepted the
    /// extension before it sees any of the extension's messages, and the receiver's
    /// answer may still wait in the session's queue when the attempt has its first
    /// message ready.
    fn poll_relay_out(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), TransportError>> {
        if self.session_sent < 2 {
            return Poll::Ready(Ok(()));
        }
        while !self.relay_out.is_empty() {
            ready!(self.relay.poll_ready(cx))?;
            let m = self.relay_out.pop_front().expect("not empty");
            self.relay.start_send(m)?;
        }
        Poll::Ready(Ok(()))
    }

    /// Run the machine's outputs.
    fn drive_machine(&mut self) {
        let Stage::Trying(a) = &mut self.stage else {
            return;
        };
        while let Some(m) = a.machine.poll_transmit() {
            self.relay_out.push_back(m.into());
        }
        while let Some(e) = a.machine.poll_event() {
            log_event(&e);
        }
        if let Some(e) = a.machine.error() {
            let e = e.clone();
            self.fail(e);
            return;
        }
        let mut switch = None;
        let mut gave_up = None;
        while let Some(action) = a.machine.poll_action() {
            match action {
                Action::Probe { addr } => a.probe(addr, self.role),
                Action::Switch { addr } => switch = Some(addr),
                Action::GiveUp { reason, fatal } => gave_up = Some((reason, fatal)),
            }
        }
        if let Some((reason, fatal)) = gave_up {
            self.give_up(reason, fatal);
        } else if let Some(addr) = switch {
            self.switch(addr);
        }
    }

    fn switch(&mut self, addr: SocketAddr) {
        let Stage::Trying(mut a) = std::mem::replace(&mut self.stage, Stage::Relay) else {
            return;
        };
        let punched = a.machine.peer_kind(addr) == Some(CandidateKind::Srflx);
        let setup = a.started.elapsed();
        let link = match self.role {
            Role::Sender => {
                let Some(conn) = a.verified.remove(&addr) else {
                    self.fail(Error::Misuse(
                        "switching to a path that was not verified".into(),
                    ));
                    return;
                };
                Link {
                    conns: vec![conn],
                    chosen: Some(0),
                    broken: false,
                    side: Side::Sender(SenderHandover::new()),
                    acks: VecDeque::new(),
                    acks_dirty: false,
                }
            }
            Role::Receiver => Link {
                // A connection whose accept completed but was not yet taken may be the
                // one the sender chose.
                conns: a
                    .accepting
                    .take()
                    .and_then(|f| f.now_or_never())
                    .and_then(Result::ok)
                    .into_iter()
                    .chain(a.verified.drain().map(|(_, c)| c))
                    .collect(),
                chosen: None,
                broken: false,
                side: Side::Receiver(ReceiverHandover::new()),
                acks: VecDeque::new(),
                acks_dirty: false,
            },
        };
        log::debug!(
            "direct path up after {:.2} s: {addr} ({}; {} verified connection(s))",
            setup.as_secs_f64(),
            if punched { "hole-punched" } else { "LAN" },
            link.conns.len()
        );
        self.stage = Stage::Direct(Box::new(link));
        self.events.push_back(PathEvent::Direct {
            addr,
            punched,
            setup,
        });
    }

    /// Sender: the direct path failed after the switch.
    fn sender_lost(&mut self, why: String) {
        let Stage::Direct(link) = &mut self.stage else {
            return;
        };
        let Side::Sender(h) = &mut link.side else {
            return;
        };
        let reason = link.conns[0].connection().close_reason();
        // The receiver closes the direct connection once its session ended: the report
        // on the relay says how, and nothing here failed.
        let receiver_done = matches!(
            &reason,
            Some(quinn::ConnectionError::ApplicationClosed(c)) if &c.reason[..] == DONE
        );
        let why = match reason {
            Some(r) if !why.contains(&r.to_string()) => format!("{why}: {r}"),
            _ => why,
        };
        if receiver_done {
            log::debug!("direct: the receiver closed the direct connection at its end");
            let _ = h.lost();
            return;
        }
        if self.opts.mode == DirectMode::DirectOnly {
            self.fatal.get_or_insert(Error::NoDirectPath(format!(
                "the direct connection failed: {why}"
            )));
        }
        if let Some(msg) = h.lost() {
            log::debug!(
                "direct: the direct path failed after {} messages ({why}); asking the receiver where to continue on the relay",
                h.sent()
            );
            link.close();
            self.relay_out.push_back(msg.into());
            self.events
                .push_back(PathEvent::BackToRelay { reason: why });
        }
    }

    /// Until when the sender's file data waits, if it does now (`Some(None)`: until the
    /// attempt is decided, however long that takes).
    ///
    /// The sender lets `hello` and the manifest through the relay. A direct-only sender
    /// (or one told to) holds everything after them until the attempt is decided. Any
    /// other sender holds file data briefly, so that a direct path that comes up at once
    /// carries all of it instead of the relay: for the receiver's answer to the offer
    /// (twice the relay connection's opening time, 0.1 to 1 s; a p2p-copy 0.1.x receiver
    /// never answers), then, when the receiver agreed, for up to [`SWITCH_HOLD`] while
    /// the attempt runs. Once file data went on the relay it never waits again.
    fn hold_until(&self) -> Option<Option<Instant>> {
        if self.role != Role::Sender || self.session_sent < 2 {
            return None;
        }
        let undecided = matches!(
            self.stage,
            Stage::Idle | Stage::Gathering { .. } | Stage::Trying(_)
        );
        if !undecided || self.opts.mode == DirectMode::RelayOnly {
            return None;
        }
        if self.direct_only() || self.opts.hold_until_decided {
            return Some(None);
        }
        if self.data_flowed {
            return None;
        }
        let until = match self.stage {
            Stage::Idle => self.manifest_at? + self.answer_hold,
            _ => self.agreed_at? + SWITCH_HOLD,
        };
        (Instant::now() < until).then_some(Some(until))
    }

    fn sender_holds(&self) -> bool {
        self.hold_until().is_some()
    }

    fn poll_gathering(&mut self, cx: &mut Context<'_>) -> bool {
        let Stage::Gathering { fut, .. } = &mut self.stage else {
            return false;
        };
        let Poll::Ready(result) = fut.poll_unpin(cx) else {
            return false;
        };
        let Stage::Gathering {
            sealing,
            early,
            started,
            ..
        } = std::mem::replace(&mut self.stage, Stage::Relay)
        else {
            unreachable!()
        };
        let g = match result {
            Ok(g) => g,
            Err(why) => {
                self.relay_out.push_back(
                    Control::DirectFailed {
                        attempt: p2p_copy_core::direct::ATTEMPT,
                        why: "no socket".into(),
                    }
                    .into(),
                );
                self.give_up(format!("no direct path: {why}"), false);
                return true;
            }
        };
        let config = DirectConfig {
            mode: self.opts.mode,
            attempt_timeout: self.opts.timeout.saturating_sub(started.elapsed()),
            relay_addrs: g.relay_addrs,
            allow_loopback: self.opts.allow_loopback,
            dial_hold: dial_hold(g.relay_rtt),
        };
        if self.role == Role::Sender {
            log::debug!(
                "direct: the relay's STUN answered in {}; dialling {:.1} ms after our candidates go out",
                g.relay_rtt
                    .map_or("-".to_owned(), |r| format!("{:.1} ms", r.as_secs_f64() * 1e3)),
                config.dial_hold.as_secs_f64() * 1e3
            );
        }
        let endpoint = match QuicEndpoint::new(
            match g.socket.try_clone() {
                Ok(s) => s,
                Err(e) => {
                    self.give_up(format!("cannot use the UDP socket: {e}"), false);
                    return true;
                }
            },
            g.identity.clone(),
            self.rt.quinn_runtime(),
        ) {
            Ok(e) => e,
            Err(e) => {
                self.give_up(e.to_string(), false);
                return true;
            }
        };
        log::debug!(
            "direct: our candidates: {}",
            g.candidates
                .iter()
                .map(|c| format!("{} ({:?})", c.addr, c.kind))
                .collect::<Vec<_>>()
                .join(", ")
        );
        let machine = match DirectPath::new(
            Instant::now(),
            config,
            self.role,
            g.identity.fingerprint(),
            &g.candidates,
            sealing,
        ) {
            Ok(m) => m,
            Err(e) => {
                self.give_up(e.to_string(), false);
                return true;
            }
        };
        self.stage = Stage::Trying(Box::new(Attempt {
            machine,
            endpoint,
            punch: g.socket,
            started,
            connecting: FuturesUnordered::new(),
            accepting: None,
            verified: HashMap::new(),
            asked: Vec::new(),
            punch_timer: None,
            timer: None,
        }));
        let now = Instant::now();
        for c in early {
            if let Stage::Trying(a) = &mut self.stage {
                if let Err(e) = a.machine.handle_message(now, c) {
                    self.fail(e);
                }
            }
        }
        self.drive_machine();
        true
    }

    fn poll_trying(&mut self, cx: &mut Context<'_>) -> bool {
        let role = self.role;
        let rt = self.rt.clone();
        let Stage::Trying(a) = &mut self.stage else {
            return false;
        };
        let now = Instant::now();
        let mut progress = false;
        // The sender's probes.
        while let Poll::Ready(Some((addr, result))) = a.connecting.poll_next_unpin(cx) {
            progress = true;
            let reported = match result {
                Ok(conn) => {
                    let fp = a.machine.peer_fingerprint().unwrap_or([0; 32]);
                    a.verified.insert(addr, conn);
                    a.machine.handle_probe_result(now, addr, Ok(fp))
                }
                Err(why) => a.machine.handle_probe_result(now, addr, Err(why)),
            };
            if let Err(e) = reported {
                log::debug!("direct: {e}");
            }
        }
        // The receiver's accepts, once the sender's fingerprint is known.
        if role == Role::Receiver {
            if a.accepting.is_none() {
                if let Some(fp) = a.machine.peer_fingerprint() {
                    a.accepting = Some(accept(a.endpoint.clone(), fp));
                }
            }
            if let Some(acc) = &mut a.accepting {
                if let Poll::Ready(result) = acc.poll_unpin(cx) {
                    progress = true;
                    let fp = a.machine.peer_fingerprint().unwrap_or([0; 32]);
                    a.accepting = Some(accept(a.endpoint.clone(), fp));
                    match result {
                        Ok(conn) => {
                            let from = canonical(conn.remote_address());
                            log::debug!("direct: verified connection from {from}");
                            a.verified.insert(from, conn);
                            a.report_accepted(now);
                        }
                        Err(e) => log::debug!("direct: {e}"),
                    }
                }
            }
            // Punch towards every sender candidate until the decision.
            if !a.asked.is_empty() {
                let due = match &mut a.punch_timer {
                    None => true,
                    Some(t) => t.poll_unpin(cx).is_ready(),
                };
                if due {
                    for (addr, _) in &a.asked {
                        let _ = a.punch.send_to(PUNCH, mapped(&a.punch, *addr));
                    }
                    let mut t = rt.sleep_until(now + PUNCH_EVERY).boxed();
                    let _ = t.poll_unpin(cx);
                    a.punch_timer = Some(t);
                }
            }
        }
        // The attempt's deadline.
        let deadline = a.machine.poll_timeout();
        if a.timer.as_ref().map(|t| t.0) != deadline {
            a.timer = deadline.map(|d| (d, rt.sleep_until(d).boxed()));
        }
        if let Some((_, t)) = &mut a.timer {
            if t.poll_unpin(cx).is_ready() {
                progress = true;
                a.timer = None;
                if let Err(e) = a.machine.handle_timeout(Instant::now()) {
                    log::debug!("direct: {e}");
                }
            }
        }
        self.drive_machine();
        progress
    }

    fn poll_link(&mut self, cx: &mut Context<'_>) -> bool {
        let Stage::Direct(link) = &mut self.stage else {
            return false;
        };
        let mut progress = false;
        match &mut link.side {
            Side::Sender(h) if h.on_direct() => {
                let conn = &mut link.conns[0];
                let mut lost = None;
                loop {
                    match conn.poll_recv(cx) {
                        Poll::Ready(Some(Ok(Incoming::Message(WireMessage::Text(t))))) => {
                            progress = true;
                            match Control::parse(&t) {
                                Ok(Control::DirectAck { received }) => {
                                    if let Err(e) = h.on_ack(received) {
                                        self.fatal.get_or_insert(e);
                                        break;
                                    }
                                }
                                _ => {
                                    self.fatal.get_or_insert(Error::peer(
                                        "the receiver sent something other than direct_ack on the direct path",
                                    ));
                                    break;
                                }
                            }
                        }
                        Poll::Ready(Some(Ok(_))) => {
                            self.fatal.get_or_insert(Error::peer(
                                "the receiver sent something other than direct_ack on the direct path",
                            ));
                            break;
                        }
                        Poll::Ready(Some(Err(e))) => {
                            lost = Some(e.to_string());
                            break;
                        }
                        Poll::Ready(None) => {
                            lost = Some("the peer closed the direct connection".into());
                            break;
                        }
                        Poll::Pending => break,
                    }
                }
                if lost.is_none() {
                    if let Poll::Ready(Err(e)) = conn.poll_flush(cx) {
                        lost = Some(e.to_string());
                    }
                }
                if let Some(why) = lost {
                    progress = true;
                    self.sender_lost(why);
                }
            }
            Side::Receiver(_) if !link.broken => {
                if let Some(i) = link.chosen {
                    let conn = &mut link.conns[i];
                    while !link.acks.is_empty() {
                        match conn.poll_ready(cx) {
                            Poll::Ready(Ok(())) => {
                                let m = link.acks.pop_front().expect("not empty");
                                if conn.start_send(m).is_err() {
                                    link.broken = true;
                                    break;
                                }
                                link.acks_dirty = true;
                                progress = true;
                            }
                            Poll::Ready(Err(_)) => {
                                link.broken = true;
                                break;
                            }
                            Poll::Pending => break,
                        }
                    }
                    if link.acks_dirty && !link.broken {
                        match conn.poll_flush(cx) {
                            Poll::Ready(Ok(())) => link.acks_dirty = false,
                            Poll::Ready(Err(_)) => link.broken = true,
                            Poll::Pending => {}
                        }
                    }
                }
            }
            _ => {}
        }
        progress
    }
}

impl Attempt {
    /// Carry out the machine's request to probe `addr`.
    fn probe(&mut self, addr: SocketAddr, role: Role) {
        match role {
            Role::Sender => {
                let endpoint = self.endpoint.clone();
                let Some(fp) = self.machine.peer_fingerprint() else {
                    return;
                };
                self.connecting.push(
                    async move {
                        let result = endpoint.connect(addr, fp).await.map_err(|e| e.to_string());
                        (addr, result)
                    }
                    .boxed(),
                );
                log::debug!("direct: probing {addr}");
            }
            Role::Receiver => {
                self.asked.push((addr, false));
                self.report_accepted(Instant::now());
            }
        }
    }

    /// Receiver: report verified connections from candidates the machine asked about.
    fn report_accepted(&mut self, now: Instant) {
        let fp = self.machine.peer_fingerprint().unwrap_or([0; 32]);
        for (addr, reported) in &mut self.asked {
            if !*reported && self.verified.contains_key(&canonical(*addr)) {
                *reported = true;
                if let Err(e) = self.machine.handle_probe_result(now, *addr, Ok(fp)) {
                    log::debug!("direct: {e}");
                }
            }
        }
    }
}

impl Drop for Link {
    fn drop(&mut self) {
        let used = self.chosen.unwrap_or(0);
        if let Some(conn) = self.conns.get(used) {
            log::debug!("direct: {}", conn.stats_summary());
        }
    }
}

impl Link {
    fn close(&mut self) {
        for c in &self.conns {
            c.connection().close(0u32.into(), b"closed");
        }
        self.broken = true;
    }
}

fn accept(endpoint: QuicEndpoint, fp: Fingerprint) -> Accepting {
    async move { endpoint.accept(fp).await }.boxed()
}

fn log_event(e: &DirectEvent) {
    match e {
        DirectEvent::CandidatesReceived { usable, ignored } => {
            log::debug!(
                "direct: peer candidates: {}{}",
                usable
                    .iter()
                    .map(|a| a.to_string())
                    .collect::<Vec<_>>()
                    .join(", "),
                if ignored.is_empty() {
                    String::new()
                } else {
                    format!(
                        "; ignored: {}",
                        ignored
                            .iter()
                            .map(|(a, why)| format!("{a} ({why})"))
                            .collect::<Vec<_>>()
                            .join(", ")
                    )
                }
            )
        }
        DirectEvent::ProbeVerified { addr } => log::debug!("direct: {addr} verified"),
        DirectEvent::ProbeFailed { addr, reason } => log::debug!("direct: {addr} failed: {reason}"),
        DirectEvent::ProbeRefused { addr } => {
            log::debug!("direct: {addr} answered with another certificate: refused")
        }
        DirectEvent::Switched { addr } => log::debug!("direct: switching to {addr}"),
        DirectEvent::GaveUp { reason } => log::debug!("direct: gave up: {reason}"),
    }
}

/// An IPv4-mapped IPv6 address as the IPv4 address (what a dual-stack socket reports).
pub(crate) fn canonical(a: SocketAddr) -> SocketAddr {
    SocketAddr::new(a.ip().to_canonical(), a.port())
}

/// The destination as `socket` can send to it: IPv4 as IPv4-mapped on a dual-stack
/// socket.
pub(crate) fn mapped(socket: &UdpSocket, to: SocketAddr) -> SocketAddr {
    match (socket.local_addr(), to.ip()) {
        (Ok(SocketAddr::V6(_)), IpAddr::V4(v4)) => {
            SocketAddr::new(IpAddr::V6(v4.to_ipv6_mapped()), to.port())
        }
        _ => to,
    }
}

/// One UDP socket for IPv6 and IPv4 when the system allows, else IPv4 only.
fn bind_udp() -> io::Result<UdpSocket> {
    use socket2::{Domain, Protocol, Socket, Type};
    let dual = (|| {
        let s = Socket::new(Domain::IPV6, Type::DGRAM, Some(Protocol::UDP))?;
        s.set_only_v6(false)?;
        s.bind(&SocketAddr::from(([0u16; 8], 0)).into())?;
        Ok::<UdpSocket, io::Error>(s.into())
    })();
    match dual {
        Ok(s) => Ok(s),
        Err(_) => UdpSocket::bind(("0.0.0.0", 0)),
    }
}

/// Gather this side's candidates (blocking: DNS, STUN).
fn gather(opts: &DirectOptions, server: &str) -> Result<Gathered, String> {
    let identity = Identity::generate().map_err(|e| e.to_string())?;
    let socket = bind_udp().map_err(|e| format!("cannot open a UDP socket: {e}"))?;
    let local = socket.local_addr().map_err(|e| e.to_string())?;
    let dual = local.is_ipv6();
    let port = local.port();
    let mut candidates: Vec<Candidate> = Vec::new();
    for iface in if_addrs::get_if_addrs().unwrap_or_default() {
        let ip = iface.ip();
        if (ip.is_loopback() && !opts.allow_loopback) || (ip.is_ipv6() && !dual) {
            continue;
        }
        candidates.push(Candidate {
            addr: SocketAddr::new(ip, port),
            kind: CandidateKind::Host,
        });
    }
    // IPv4 first: most paths between two sites are IPv4.
    candidates.sort_by_key(|c| c.addr.is_ipv6());
    let mut servers = Vec::new();
    let mut relay_addrs = Vec::new();
    if let Some((host, relay_port)) = relay_host_port(server) {
        for a in (host.as_str(), relay_port)
            .to_socket_addrs()
            .into_iter()
            .flatten()
        {
            let a = canonical(a);
            relay_addrs.push(a);
            if let Some(next) = relay_port.checked_add(1) {
                relay_addrs.push(SocketAddr::new(a.ip(), next));
            }
            if opts.relay_stun {
                servers.push(a);
            }
        }
    }
    // The relay's second STUN port, asked from the same socket, tells how the NAT maps
    // (for -v); its answer is no candidate of its own.
    let second = servers.first().and_then(|first| {
        let port = first.port().checked_add(1)?;
        Some(SocketAddr::new(first.ip(), port))
    });
    for s in &opts.stun {
        match s.to_socket_addrs() {
            Ok(addrs) => servers.extend(addrs.map(canonical)),
            Err(e) => log::warn!("STUN server {s}: {e}"),
        }
    }
    servers.retain(|s| dual || s.is_ipv4());
    servers.dedup();
    let relay_first = opts.relay_stun && !servers.is_empty();
    let mut asked = servers.clone();
    asked.extend(second.filter(|_| relay_first));
    let found = stun_all(&socket, &asked, STUN_WAIT);
    if relay_first && second.is_some() {
        let mapping = crate::netcheck::Mapping::from_answers(
            found.first().copied().flatten().map(|(a, _)| a),
            found.get(servers.len()).copied().flatten().map(|(a, _)| a),
        );
        log::debug!("netcheck: {}", mapping.verdict());
    }
    // The relay's answer times the round trip our candidate list takes to the peer.
    let relay_rtt = found
        .first()
        .copied()
        .flatten()
        .filter(|_| relay_first)
        .map(|(_, rtt)| rtt);
    let reflexive: Vec<SocketAddr> = found
        .iter()
        .take(servers.len())
        .flatten()
        .map(|(a, _)| *a)
        .collect();
    for addr in reflexive {
        if !candidates.iter().any(|c| c.addr == addr) {
            candidates.push(Candidate {
                addr,
                kind: CandidateKind::Srflx,
            });
        }
    }
    socket
        .set_read_timeout(None)
        .map_err(|e| format!("the UDP socket: {e}"))?;
    Ok(Gathered {
        socket,
        identity,
        candidates,
        relay_addrs,
        relay_rtt,
    })
}

/// How long the sender waits after sending its candidates before it dials the
/// receiver's ([`DirectConfig::dial_hold`]): the relay's round trip, which our list
/// takes to reach the receiver (half of it to the relay, the other half on to a
/// receiver about as far away), plus [`DIAL_MARGIN`] for the relay and the receiver to
/// pass it on and punch. Without the relay's answer (its STUN off), no hold: the
/// handshake's resend covers a lost first packet, later.
fn dial_hold(relay_rtt: Option<Duration>) -> Duration {
    relay_rtt.map_or(Duration::ZERO, |rtt| (rtt + DIAL_MARGIN).min(MAX_DIAL_HOLD))
}

/// Ask every STUN server at once for this socket's reflexive address; each server's
/// answer, if it came within `wait`, with the time from the first request to it (the
/// round trip, or more if a request was lost and sent again).
pub(crate) fn stun_all(
    socket: &UdpSocket,
    servers: &[SocketAddr],
    wait: Duration,
) -> Vec<Option<(SocketAddr, Duration)>> {
    let mut found: Vec<Option<(SocketAddr, Duration)>> = vec![None; servers.len()];
    if servers.is_empty() {
        return Vec::new();
    }
    let mut txids = vec![[0u8; 12]; servers.len()];
    for t in &mut txids {
        if getrandom::getrandom(t).is_err() {
            return Vec::new();
        }
    }
    let start = Instant::now();
    let deadline = start + wait;
    let mut next_send = start;
    let mut rto = Duration::from_millis(100);
    let mut buf = [0u8; 1500];
    loop {
        let now = Instant::now();
        if now >= deadline || found.iter().all(Option::is_some) {
            break;
        }
        if now >= next_send {
            for (i, server) in servers.iter().enumerate() {
                if found[i].is_none() {
                    let _ =
                        socket.send_to(&stun::binding_request(txids[i]), mapped(socket, *server));
                }
            }
            next_send = now + rto;
            rto *= 2;
        }
        let until = next_send.min(deadline);
        let _ = socket.set_read_timeout(Some(
            until
                .saturating_duration_since(now)
                .max(Duration::from_millis(1)),
        ));
        if let Ok((n, from)) = socket.recv_from(&mut buf) {
            let from = canonical(from);
            for (i, server) in servers.iter().enumerate() {
                if *server == from && found[i].is_none() {
                    if let Ok(addr) = stun::parse_binding_response(&buf[..n], &txids[i]) {
                        found[i] = Some((canonical(addr), start.elapsed()));
                    }
                }
            }
        }
    }
    found
}

impl<R: Rt, T: MessageTransport> MessageTransport for Paths<R, T> {
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), TransportError>> {
        loop {
            ready!(self.poll_relay_out(cx))?;
            if self.sender_holds() {
                return Poll::Pending;
            }
            if let Stage::Direct(link) = &mut self.stage {
                if let Side::Sender(h) = &mut link.side {
                    if h.waiting() || !h.can_send() {
                        return Poll::Pending;
                    }
                    match link.conns[0].poll_ready(cx) {
                        Poll::Ready(Ok(())) => return Poll::Ready(Ok(())),
                        Poll::Ready(Err(e)) => {
                            self.sender_lost(e.to_string());
                            continue;
                        }
                        Poll::Pending => return Poll::Pending,
                    }
                }
            }
            while !self.resend.is_empty() {
                ready!(self.relay.poll_ready(cx))?;
                let m = self.resend.pop_front().expect("not empty");
                self.relay.start_send(m)?;
            }
            return self.relay.poll_ready(cx);
        }
    }

    fn start_send(&mut self, msg: WireMessage) -> Result<(), TransportError> {
        self.session_sent += 1;
        match self.session_sent {
            2 => self.manifest_at = Some(Instant::now()),
            n if n > 2 && !matches!(self.stage, Stage::Direct(_)) => self.data_flowed = true,
            _ => {}
        }
        if let Stage::Direct(link) = &mut self.stage {
            if let Side::Sender(h) = &mut link.side {
                if h.on_direct() {
                    h.on_sent(&msg);
                    if self.opts.cut_after == Some(h.sent()) {
                        link.conns[0]
                            .connection()
                            .close(0u32.into(), b"cut for a test");
                    }
                    if let Err(e) = link.conns[0].start_send(msg) {
                        // Kept: it goes again on the relay.
                        self.sender_lost(e.to_string());
                    }
                    return Ok(());
                }
            }
        }
        self.relay.start_send(msg)
    }

    fn poll_flush(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), TransportError>> {
        ready!(self.poll_relay_out(cx))?;
        let mut direct_pending = false;
        if let Stage::Direct(link) = &mut self.stage {
            if let Side::Sender(h) = &link.side {
                if h.on_direct() {
                    match link.conns[0].poll_flush(cx) {
                        Poll::Ready(Ok(())) => {}
                        Poll::Ready(Err(e)) => self.sender_lost(e.to_string()),
                        Poll::Pending => direct_pending = true,
                    }
                }
            }
        }
        ready!(self.relay.poll_flush(cx))?;
        if direct_pending {
            Poll::Pending
        } else {
            Poll::Ready(Ok(()))
        }
    }

    fn start_close(&mut self, code: u16, reason: &str) -> Result<(), TransportError> {
        match std::mem::replace(&mut self.stage, Stage::Relay) {
            Stage::Direct(link) => {
                for c in &link.conns {
                    c.connection().close(0u32.into(), DONE);
                }
            }
            Stage::Trying(a) => a.endpoint.close(),
            _ => {}
        }
        self.relay.start_close(code, reason)
    }

    fn poll_recv(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Incoming, TransportError>>> {
        if let Some(item) = self.held.pop_front() {
            return Poll::Ready(item);
        }
        if let Stage::Direct(link) = &mut self.stage {
            if let Side::Receiver(h) = &mut link.side {
                if !link.broken {
                    let mut i = link.chosen.unwrap_or(0);
                    while i < link.conns.len() {
                        match link.conns[i].poll_recv(cx) {
                            Poll::Ready(Some(Ok(Incoming::Message(m)))) => {
                                if link.chosen.is_none() {
                                    // The sender uses this one: the others go.
                                    let conn = link.conns.swap_remove(i);
                                    for c in &link.conns {
                                        c.connection().close(0u32.into(), b"unused");
                                    }
                                    link.conns = vec![conn];
                                    link.chosen = Some(0);
                                }
                                if let Some(ack) = h.on_received(m.len()) {
                                    link.acks.push_back(ack.into());
                                }
                                return Poll::Ready(Some(Ok(Incoming::Message(m))));
                            }
                            Poll::Ready(other) => {
                                log::debug!("direct: a direct connection ended: {other:?}");
                                if link.chosen.is_some() {
                                    link.broken = true;
                                    break;
                                }
                                link.conns.swap_remove(i);
                            }
                            Poll::Pending => {
                                if link.chosen.is_some() {
                                    break;
                                }
                                i += 1;
                            }
                        }
                    }
                }
                // Otherwise wait for the sender's `direct_lost`, or the relay's end.
                return match self.poll_relay(cx) {
                    Poll::Ready(item) => Poll::Ready(item),
                    Poll::Pending => Poll::Pending,
                };
            }
        }
        self.poll_relay(cx)
    }

    fn direct_answer(&mut self, answer: DirectAnswer) {
        if !matches!(self.stage, Stage::Idle) || self.opts.mode == DirectMode::RelayOnly {
            return;
        }
        match answer {
            DirectAnswer::Declined => {
                let reason = match self.role {
                    Role::Sender => "the receiver does not take direct connections",
                    Role::Receiver => "the sender offers no direct connection",
                };
                self.give_up(reason.into(), false);
            }
            DirectAnswer::Agreed(sealing) => {
                self.agreed_at = Some(Instant::now());
                let opts = self.opts.clone();
                let server = self.server.clone();
                let fut = self
                    .rt
                    .spawn_blocking(move || gather(&opts, &server))
                    .boxed();
                self.stage = Stage::Gathering {
                    fut,
                    sealing,
                    early: Vec::new(),
                    started: Instant::now(),
                };
            }
        }
    }

    fn poll_background(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Error>> {
        let mut progress = false;
        // Before the peer agreed to an attempt the relay carries only the session's
        // messages: the session reads them itself, in its own order (it sends `hello`
        // before it reads, even when the relay has already refused it).
        let attempting = !matches!(self.stage, Stage::Idle);
        if attempting && self.held.is_empty() && !self.relay_done {
            if let Poll::Ready(item) = self.poll_relay(cx) {
                self.held.push_back(item);
                progress = true;
            }
        }
        progress |= self.poll_gathering(cx);
        progress |= self.poll_trying(cx);
        progress |= self.poll_link(cx);
        if !self.relay_out.is_empty() {
            match self.poll_relay_out(cx) {
                Poll::Ready(Ok(())) => {
                    progress = true;
                    let _ = self.relay.poll_flush(cx);
                }
                Poll::Ready(Err(_)) => {} // the session's own writes report it
                Poll::Pending => {}
            }
        }
        // A sender holding its file data: go on when the wait ends.
        match self.hold_until() {
            Some(Some(until)) => {
                if self.hold_timer.as_ref().map(|t| t.0) != Some(until) {
                    self.hold_timer = Some((until, self.rt.sleep_until(until).boxed()));
                }
                if let Some((_, t)) = &mut self.hold_timer {
                    if t.poll_unpin(cx).is_ready() {
                        self.hold_timer = None;
                        progress = true;
                    }
                }
            }
            _ => self.hold_timer = None,
        }
        // A direct-only sender whose receiver never answers the offer (p2p-copy 0.1.x).
        if self.sender_holds() && matches!(self.stage, Stage::Idle) {
            // As long as the attempt itself may take.
            let wait = self.opts.timeout;
            let t = self
                .answer_timer
                .get_or_insert_with(|| self.rt.sleep_until(Instant::now() + wait).boxed());
            if t.poll_unpin(cx).is_ready() {
                let direct_only = self.direct_only();
                self.give_up(
                    "the receiver did not answer the offer of a direct connection (it runs p2p-copy 0.1.x)"
                        .into(),
                    direct_only,
                );
            }
        }
        if let Some(e) = self.fatal.take() {
            return Poll::Ready(Err(e));
        }
        if progress {
            Poll::Ready(Ok(()))
        } else {
            Poll::Pending
        }
    }

    fn poll_path_event(&mut self) -> Option<PathEvent> {
        self.events.pop_front()
    }

    fn finish(&mut self) -> Option<PathEvent> {
        matches!(self.stage, Stage::Gathering { .. } | Stage::Trying(_)).then(|| PathEvent::Relay {
            reason: "the transfer ended before a direct path was up".into(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_dial_hold_is_the_relays_round_trip_and_a_margin_within_a_bound() {
        let ms = Duration::from_millis;
        assert_eq!(dial_hold(None), Duration::ZERO);
        assert_eq!(dial_hold(Some(Duration::ZERO)), DIAL_MARGIN);
        assert_eq!(dial_hold(Some(ms(40))), ms(40) + DIAL_MARGIN);
        assert_eq!(dial_hold(Some(ms(800))), MAX_DIAL_HOLD);
    }
}
