//! The loop that runs one session: it feeds the state machine every input (messages,
//! file completions, job results, timeouts, the connection's end) and carries out what
//! it asks for, draining its outputs after every input.

use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use futures_util::future::{poll_fn, select, BoxFuture};
use futures_util::stream::FuturesUnordered;
use futures_util::StreamExt;
use p2p_copy_core::relay::{CLOSE_POLICY, CLOSE_PROTOCOL, CLOSE_TRY_AGAIN};
use p2p_copy_core::{Error, Event, WireMessage};

use crate::consent::ConsentGate;
use crate::io_worker::IoWorker;
use crate::machine::Machine;
use crate::rt::Rt;
use crate::transport::{self, Incoming, MessageTransport, TransportError};
use crate::{RateLimit, SessionEvent, Summary, TransferError};

/// The user's event callback, shared by the parallel sessions of one transfer.
pub(crate) type EventSink = Arc<Mutex<dyn FnMut(SessionEvent) + Send>>;

/// The close code of a session that ended well, and of one that failed.
const CLOSE_NORMAL: u16 = 1000;
const CLOSE_ERROR: u16 = 1011;

/// How long a finished session waits for the peer's close frame.
const CLOSE_WAIT: Duration = Duration::from_secs(2);

/// One session's state machine, connection, file worker, jobs and timer.
pub(crate) struct Driver<R: Rt, M: Machine, T: MessageTransport> {
    rt: R,
    machine: M,
    ws: T,
    files: IoWorker<M::Files>,
    jobs: FuturesUnordered<BoxFuture<'static, M::JobResult>>,
    timer: Option<(Instant, BoxFuture<'static, ()>)>,
    reading: bool,
    writing: bool,
    needs_flush: bool,
    /// The close frame received, if any: (code, reason).
    close_frame: Option<(u16, String)>,
    /// Since when the connection has refused to take more data.
    blocked_since: Option<Instant>,
    /// When and why writing failed; the read side then gets a moment to deliver the
    /// close frame that explains it.
    write_failed: Option<(Instant, String)>,
    idle_timeout: Duration,
    /// Whether the peer was seen (sender: `ready`; receiver: the manifest).
    paired: bool,
    /// When the peer was first seen, for [`Summary::transfer_time`].
    paired_at: Option<Instant>,
    session: usize,
    events: EventSink,
    summary: Summary,
    /// `--limit-rate`: file data (binary messages) in and out is held until its bytes
    /// are earned.
    limit: Option<RateLimit>,
    /// A message to send, held by the limit until then.
    held_out: Option<(Instant, WireMessage)>,
    /// No reading until then, by the limit: the message that used up the budget was
    /// handled at once (so the machine's timers see the peer alive), and the connection
    /// slows the sender down meanwhile.
    read_paused: Option<Instant>,
    /// Where the receiver's user is asked (none: every offer is accepted).
    consent: Option<Arc<ConsentGate>>,
    /// The question to the user, while it is open.
    asking: Option<BoxFuture<'static, bool>>,
}

impl<R: Rt, M: Machine, T: MessageTransport> Driver<R, M, T> {
    pub(crate) fn new(
        rt: R,
        machine: M,
        ws: T,
        files: IoWorker<M::Files>,
        idle_timeout: Duration,
        session: usize,
        events: EventSink,
    ) -> Self {
        Driver {
            rt,
            machine,
            ws,
            files,
            jobs: FuturesUnordered::new(),
            timer: None,
            reading: true,
            writing: true,
            needs_flush: false,
            close_frame: None,
            blocked_since: None,
            write_failed: None,
            idle_timeout,
            paired: false,
            paired_at: None,
            session,
            events,
            summary: Summary::default(),
            limit: None,
            held_out: None,
            read_paused: None,
            consent: None,
            asking: None,
        }
    }

    /// Pace file data to `limit` (none: as fast as the connection goes).
    pub(crate) fn paced(mut self, limit: Option<RateLimit>) -> Self {
        self.limit = limit;
        self
    }

    /// When a message may move under the limit: `None` for at once (no limit, not file
    /// data, or the bucket had the bytes).
    fn hold_until(&self, now: Instant, msg: &WireMessage) -> Option<Instant> {
        let (Some(limit), WireMessage::Binary(data)) = (&self.limit, msg) else {
            return None;
        };
        let wait = limit.take(now, data.len());
        (!wait.is_zero()).then(|| now + wait)
    }

    /// Ask the user through `gate` before accepting what the peer offers.
    pub(crate) fn with_consent(mut self, gate: Option<Arc<ConsentGate>>) -> Self {
        self.consent = gate;
        self
    }

    /// Run the session to its end, then close the connection: normally on success,
    /// with an error code on failure. Dropping the future abandons the session: the file
    /// thread finishes the request at hand and stops, and partial files stay for a later
    /// resume.
    ///
    /// The state machine comes back with the result, so the caller can ask it how the
    /// session stood (whether it may reconnect).
    pub(crate) async fn run(mut self) -> (Result<Summary, TransferError>, M) {
        self.drain_outputs();
        let outcome = poll_fn(|cx| self.poll_session(cx)).await;
        let result = match outcome {
            Ok(()) => {
                while let Some(p) = self.ws.poll_path_event() {
                    self.report(Event::Path(p));
                }
                if let Some(p) = self.ws.finish() {
                    self.report(Event::Path(p));
                }
                self.summary.transfer_time =
                    self.paired_at.map(|t| t.elapsed()).unwrap_or_default();
                self.close(CLOSE_NORMAL, "", true).await;
                Ok(std::mem::take(&mut self.summary))
            }
            Err(e) => {
                self.send_rest().await;
                // A refusal by the user is an orderly end, not a failure of the link.
                let code = match e {
                    Error::Declined(_) => CLOSE_NORMAL,
                    _ => CLOSE_ERROR,
                };
                self.close(code, e.kind(), false).await;
                Err(self.classify(e))
            }
        };
        (result, self.machine)
    }

    /// Send what the machine queued after it failed (its report to a peer that confirms
    /// delivery), within the close wait.
    async fn send_rest(&mut self) {
        if !self.writing {
            return;
        }
        if self.machine.awaits_acceptance() && self.reading {
            // The peer's answer to the offer of confirmation may be on its way: give it
            // a moment, so a peer of this project learns why the session stops.
            let deadline = Instant::now() + CLOSE_WAIT;
            let machine = &mut self.machine;
            let ws = &mut self.ws;
            let listening = async move {
                while machine.awaits_acceptance() {
                    match transport::recv(ws).await {
                        Some(Ok(Incoming::Message(wire))) => {
                            let _ = machine.handle_message(Instant::now(), wire);
                        }
                        Some(Ok(Incoming::Close(_))) => {}
                        _ => return,
                    }
                }
            };
            let _ = select(Box::pin(listening), Box::pin(self.rt.sleep_until(deadline))).await;
        }
        let mut rest = Vec::new();
        while let Some(m) = self.machine.poll_transmit() {
            rest.push(m);
        }
        if rest.is_empty() {
            return;
        }
        let deadline = Instant::now() + CLOSE_WAIT;
        let ws = &mut self.ws;
        let sending = async move {
            for m in rest {
                if transport::send(ws, m).await.is_err() {
                    return false;
                }
            }
            true
        };
        let sent = select(Box::pin(sending), Box::pin(self.rt.sleep_until(deadline))).await;
        if !matches!(sent, futures_util::future::Either::Left((true, _))) {
            self.writing = false;
        }
    }

    /// Send a close frame and, after success, wait briefly for the peer's, so the relay
    /// sees an orderly end.
    async fn close(&mut self, code: u16, reason: &str, wait_reply: bool) {
        if !self.writing {
            return;
        }
        let deadline = Instant::now() + CLOSE_WAIT;
        let ws = &mut self.ws;
        let reading = self.reading;
        let closing = async move {
            if transport::close(ws, code, reason).await.is_err() || !wait_reply || !reading {
                return;
            }
            while let Some(Ok(_)) = transport::recv(ws).await {}
        };
        let _ = select(Box::pin(closing), Box::pin(self.rt.sleep_until(deadline))).await;
    }

    /// A failure as the caller sees it: a relay refusal before pairing is a relay
    /// problem, not the peer's.
    fn classify(&self, e: Error) -> TransferError {
        if !self.paired && matches!(e, Error::Peer { .. }) {
            match &self.close_frame {
                // Refused before any peer came: a relay problem.
                Some((CLOSE_TRY_AGAIN | CLOSE_PROTOCOL, _)) => {
                    return TransferError::Connect(match e {
                        Error::Peer { reason, .. } => reason,
                        other => other.to_string(),
                    })
                }
                Some((CLOSE_POLICY, reason)) => {
                    return TransferError::Session(Error::Timeout(format!(
                        "the relay stopped waiting ({}): check that both sides use the same code, the same --encrypt setting and the same relay",
                        p2p_copy_core::path::escape(reason)
                    )))
                }
                _ => {}
            }
        }
        // After pairing only the relay itself closes with 1008: one of its limits
        // (--max-bytes) ended the session, which is not the peer's doing.
        if let (true, Error::Peer { .. }, Some((CLOSE_POLICY, reason))) =
            (self.paired, &e, &self.close_frame)
        {
            return TransferError::Connect(format!(
                "the relay ended the transfer: {}",
                p2p_copy_core::path::escape(reason)
            ));
        }
        TransferError::Session(e)
    }

    /// Take every output the machine has (except messages, which wait for the
    /// connection): queue file requests, run or dispatch jobs, report events.
    fn drain_outputs(&mut self) {
        loop {
            let mut any = false;
            while let Some(req) = self.machine.poll_io() {
                any = true;
                if let Some(done) = self.files.submit(req) {
                    let _ = self.machine.handle_io(Instant::now(), done);
                }
            }
            while let Some(job) = self.machine.poll_job() {
                any = true;
                if M::job_is_light(&job) {
                    // A copy at most: cheaper than a trip to another thread.
                    let done = M::run_job(job);
                    let _ = self.machine.handle_job(Instant::now(), done);
                } else {
                    self.jobs
                        .push(Box::pin(crate::job_pool::run(move || M::run_job(job))));
                }
            }
            while let Some(event) = self.machine.poll_event() {
                any = true;
                self.report(event);
            }
            if let Some(offer) = self.machine.take_offer() {
                any = true;
                match &self.consent {
                    Some(gate) => self.asking = Some(gate.ask(&self.rt, offer)),
                    None => self.machine.consent(Instant::now(), true),
                }
            }
            if let Some(answer) = self.machine.take_direct_start() {
                any = true;
                self.ws.direct_answer(answer);
            }
            while let Some(p) = self.ws.poll_path_event() {
                any = true;
                self.report(Event::Path(p));
            }
            if !any {
                return;
            }
        }
    }

    fn report(&mut self, event: Event) {
        self.summary.count(&event);
        if matches!(event, Event::Paired | Event::Manifest { .. }) {
            self.paired = true;
            self.paired_at.get_or_insert_with(Instant::now);
        }
        let mut sink = self.events.lock().unwrap_or_else(|p| p.into_inner());
        (sink)(SessionEvent {
            session: self.session,
            event,
        });
    }

    /// Writing failed. The peer or relay usually closed the connection, and its close
    /// frame (which says why) may still be waiting on the read side.
    fn write_failed(&mut self, now: Instant, why: String) {
        log::debug!("session {}: write failed: {why}", self.session);
        self.writing = false;
        self.write_failed = Some((now, why));
        if !self.reading {
            self.closed(now, None);
        }
    }

    /// The connection ended: tell the machine, with the close frame's code and reason
    /// if one came, else what failed.
    fn closed(&mut self, now: Instant, failure: Option<String>) {
        self.reading = false;
        self.writing = false;
        let write_failure = self.write_failed.take().map(|(_, why)| why);
        let (code, reason) = match &self.close_frame {
            Some((code, reason)) => (Some(*code), reason.clone()),
            None => (None, failure.or(write_failure).unwrap_or_default()),
        };
        let _ = self.machine.handle_close(now, code, &reason);
        self.drain_outputs();
    }

    /// The connection ended because the other end sent what the protocol does not allow:
    /// tell the machine as a close with `code`.
    fn refused(&mut self, now: Instant, code: u16, why: String) {
        self.close_frame = Some((code, why));
        self.closed(now, None);
    }

    fn poll_session(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Error>> {
        loop {
            let now = Instant::now();
            let mut progress = false;
            if let Some(e) = self.machine.error() {
                return Poll::Ready(Err(e.clone()));
            }
            // The connection's own work (a direct-path attempt beside the session).
            match self.ws.poll_background(cx) {
                Poll::Ready(Ok(())) => {
                    progress = true;
                    self.drain_outputs();
                }
                Poll::Ready(Err(e)) => {
                    self.machine.abort(e);
                    self.drain_outputs();
                    if let Some(e) = self.machine.error() {
                        return Poll::Ready(Err(e.clone()));
                    }
                    continue;
                }
                Poll::Pending => {}
            }

            // Messages out, only as fast as the connection takes them: that is the
            // sender's backpressure.
            let mut drained = false;
            let mut write_blocked = false;
            while self.writing {
                if self.held_out.as_ref().is_some_and(|(at, _)| *at > now) {
                    break;
                }
                match self.ws.poll_ready(cx) {
                    Poll::Ready(Ok(())) => {
                        self.blocked_since = None;
                        let msg = match self.held_out.take() {
                            Some((_, msg)) => msg,
                            None => {
                                let Some(msg) = self.machine.poll_transmit() else {
                                    drained = true;
                                    break;
                                };
                                if let Some(at) = self.hold_until(now, &msg) {
                                    self.held_out = Some((at, msg));
                                    progress = true;
                                    continue;
                                }
                                msg
                            }
                        };
                        progress = true;
                        if let Err(e) = self.ws.start_send(msg) {
                            self.write_failed(now, e.to_string());
                            break;
                        }
                        self.needs_flush = true;
                        self.drain_outputs();
                    }
                    Poll::Ready(Err(e)) => {
                        progress = true;
                        self.write_failed(now, e.to_string());
                        break;
                    }
                    Poll::Pending => {
                        self.blocked_since.get_or_insert(now);
                        write_blocked = true;
                        break;
                    }
                }
            }
            if self.writing && self.needs_flush {
                match self.ws.poll_flush(cx) {
                    Poll::Ready(Ok(())) => {
                        self.needs_flush = false;
                        self.blocked_since = None;
                        // The connection took what blocked it a moment ago: go round
                        // again to send more, since the wake-up registered by the
                        // blocked `poll_ready` may already have been spent.
                        progress |= write_blocked;
                    }
                    Poll::Ready(Err(e)) => {
                        progress = true;
                        self.write_failed(now, e.to_string());
                    }
                    Poll::Pending => {
                        self.blocked_since.get_or_insert(now);
                    }
                }
            }

            // Checked right after writing: `drained` is only true until the next input.
            if self.machine.is_finished() && self.machine.error().is_none() {
                if self.writing && drained && !self.needs_flush {
                    return Poll::Ready(Ok(()));
                }
                if !self.writing {
                    // The connection ended after the machine finished: fine unless
                    // something it queued never left.
                    if self.machine.poll_transmit().is_none() && !self.needs_flush {
                        return Poll::Ready(Ok(()));
                    }
                    return Poll::Ready(Err(Error::Peer {
                        file: None,
                        reason: "the connection closed before everything was sent".into(),
                    }));
                }
            }
            // The user's answer to the offer.
            if let Some(asking) = self.asking.as_mut() {
                if let Poll::Ready(accept) = asking.as_mut().poll(cx) {
                    progress = true;
                    self.asking = None;
                    // The time the user took says nothing about the link.
                    self.paired_at = Some(now);
                    self.machine.consent(now, accept);
                    self.drain_outputs();
                }
            }

            // File work.
            while let Poll::Ready(Some(done)) = self.files.poll_done(cx) {
                progress = true;
                let _ = self.machine.handle_io(now, done);
                self.drain_outputs();
            }

            // Jobs.
            while let Poll::Ready(Some(done)) = self.jobs.poll_next_unpin(cx) {
                progress = true;
                let _ = self.machine.handle_job(now, done);
                self.drain_outputs();
            }

            // Messages in, only while the machine wants them: that is the receiver's
            // backpressure.
            if self.read_paused.is_some_and(|at| at <= now) {
                self.read_paused = None;
            }
            if self.reading && self.read_paused.is_none() && self.machine.wants_input() {
                match self.ws.poll_recv(cx) {
                    Poll::Ready(Some(Ok(Incoming::Close(frame)))) => {
                        progress = true;
                        self.close_frame = frame;
                    }
                    Poll::Ready(Some(Ok(Incoming::Message(wire)))) => {
                        progress = true;
                        self.read_paused = self.hold_until(now, &wire);
                        let _ = self.machine.handle_message(now, wire);
                        self.drain_outputs();
                    }
                    Poll::Ready(Some(Err(e))) => {
                        progress = true;
                        log::debug!("session {}: read failed: {e}", self.session);
                        match e {
                            TransportError::Lost(why) => self.closed(now, Some(why)),
                            TransportError::Violation { code, reason } => {
                                self.refused(now, code, reason)
                            }
                        }
                    }
                    Poll::Ready(None) => {
                        progress = true;
                        self.closed(now, None);
                    }
                    Poll::Pending => {}
                }
            }

            // Deadlines: the machine's, and how long the connection may refuse data.
            // A receiver whose user decides reads nothing: that is no stall.
            if self.machine.awaits_consent() {
                self.blocked_since = None;
            }
            let stall = self.blocked_since.map(|t| t + self.idle_timeout);
            let close_wait = self.write_failed.as_ref().map(|(t, _)| *t + CLOSE_WAIT);
            let held = self.held_out.as_ref().map(|(at, _)| *at);
            let deadline = [
                self.machine.poll_timeout(),
                stall,
                close_wait,
                held,
                self.read_paused,
            ]
            .into_iter()
            .flatten()
            .min();
            if self.timer.as_ref().map(|t| t.0) != deadline {
                self.timer = deadline.map(|d| {
                    (
                        d,
                        Box::pin(self.rt.sleep_until(d)) as BoxFuture<'static, ()>,
                    )
                });
            }
            if let Some((_, sleep)) = self.timer.as_mut() {
                if sleep.as_mut().poll(cx).is_ready() {
                    progress = true;
                    self.timer = None;
                    let now = Instant::now();
                    if stall.is_some_and(|s| now >= s) {
                        return Poll::Ready(Err(Error::Timeout(format!(
                            "the peer took no data for {} s (it stopped reading, or the connection hangs)",
                            self.idle_timeout.as_secs()
                        ))));
                    }
                    if close_wait.is_some_and(|t| now >= t) {
                        self.closed(now, None);
                    }
                    let _ = self.machine.handle_timeout(now);
                    self.drain_outputs();
                }
            }

            if !progress {
                return Poll::Pending;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    //! The loop over a connection that blocks often: a sender must finish even when a
    //! blocked `poll_ready` is followed at once by a flush that gets through (after
    //! which the blocked call's wake-up is never delivered).

    use std::future::Future;
    use std::io;
    use std::net::SocketAddr;
    use std::pin::Pin;
    use std::sync::{Arc, Mutex};
    use std::task::{Context, Poll, Waker};
    use std::time::{Duration, Instant};

    use async_tungstenite::tungstenite::protocol::Role;
    use async_tungstenite::WebSocketStream;
    use futures_io::{AsyncRead, AsyncWrite};
    use p2p_copy_core::crypto::Secrets;
    use p2p_copy_core::sender::{SendFile, Sender, SenderConfig};

    use super::*;
    use crate::files_send::{Listed, SendFiles};
    use crate::transport::{ws_config, Conn, WsTransport};

    #[derive(Clone)]
    struct TestRt;

    #[allow(clippy::manual_async_fn)]
    impl Rt for TestRt {
        type TcpStream = smol::net::TcpStream;
        type TcpListener = smol::net::TcpListener;
        type UdpSocket = smol::net::UdpSocket;
        fn spawn(&self, task: impl Future<Output = ()> + Send + 'static) {
            smol::spawn(task).detach();
        }
        fn spawn_blocking<T: Send + 'static>(
            &self,
            work: impl FnOnce() -> T + Send + 'static,
        ) -> impl Future<Output = T> + Send + 'static {
            smol::unblock(work)
        }
        fn sleep_until(&self, deadline: Instant) -> impl Future<Output = ()> + Send + 'static {
            async move {
                smol::Timer::at(deadline).await;
            }
        }
        fn connect(
            &self,
            _: String,
            _: u16,
        ) -> impl Future<Output = io::Result<Self::TcpStream>> + Send + 'static {
            async { Err(io::Error::other("this test has no network")) }
        }
        fn bind(
            &self,
            _: String,
            _: u16,
        ) -> impl Future<Output = io::Result<Self::TcpListener>> + Send + 'static {
            async { Err(io::Error::other("this test has no network")) }
        }
        fn local_addr(l: &Self::TcpListener) -> io::Result<SocketAddr> {
            l.local_addr()
        }
        fn accept(
            l: &Self::TcpListener,
        ) -> impl Future<Output = io::Result<(Self::TcpStream, SocketAddr)>> + Send + '_ {
            l.accept()
        }
        fn set_nodelay(s: &Self::TcpStream) -> io::Result<()> {
            s.set_nodelay(true)
        }
        fn bind_udp(
            &self,
            _: SocketAddr,
        ) -> impl Future<Output = io::Result<Self::UdpSocket>> + Send + 'static {
            async { Err(io::Error::other("this test has no network")) }
        }
        fn quinn_runtime(&self) -> std::sync::Arc<dyn quinn::Runtime> {
            std::sync::Arc::new(quinn::SmolRuntime)
        }
        fn udp_local_addr(s: &Self::UdpSocket) -> io::Result<SocketAddr> {
            s.local_addr()
        }
        fn send_to<'a>(
            s: &'a Self::UdpSocket,
            d: &'a [u8],
            t: SocketAddr,
        ) -> impl Future<Output = io::Result<usize>> + Send + 'a {
            s.send_to(d, t)
        }
        fn recv_from<'a>(
            s: &'a Self::UdpSocket,
            b: &'a mut [u8],
        ) -> impl Future<Output = io::Result<(usize, SocketAddr)>> + Send + 'a {
            s.recv_from(b)
        }
    }

    /// The relay's side of the connection: it says `ready`, then stays silent, and takes
    /// data like a socket whose buffer is full four times out of five. A blocked write keeps
    /// its waker for a helper thread to wake a little later (the buffer drained); a
    /// write that gets through takes that readiness, and the earlier waker is dropped,
    /// as an edge-triggered reactor's single event is spent by the write that used it.
    struct Choppy {
        inbound: Vec<u8>,
        writes: usize,
        written: Arc<Mutex<usize>>,
        parked: Arc<Mutex<Option<Waker>>>,
        silent: Option<Waker>,
    }

    impl AsyncRead for Choppy {
        fn poll_read(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &mut [u8],
        ) -> Poll<io::Result<usize>> {
            if self.inbound.is_empty() {
                self.silent = Some(cx.waker().clone());
                return Poll::Pending;
            }
            let n = buf.len().min(self.inbound.len());
            buf[..n].copy_from_slice(&self.inbound[..n]);
            self.inbound.drain(..n);
            Poll::Ready(Ok(n))
        }
    }

    impl AsyncWrite for Choppy {
        fn poll_write(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<io::Result<usize>> {
            self.writes += 1;
            if !self.writes.is_multiple_of(5) {
                *self.parked.lock().unwrap() = Some(cx.waker().clone());
                return Poll::Pending;
            }
            self.parked.lock().unwrap().take();
            *self.written.lock().unwrap() += buf.len();
            Poll::Ready(Ok(buf.len()))
        }
        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
        fn poll_close(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    #[test]
    fn a_sender_finishes_over_a_connection_that_blocks_most_writes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        let size = 24 * 1024 * 1024 + 5;
        std::fs::write(&path, vec![7u8; size]).unwrap();

        let ready = br#"{"type":"ready"}"#;
        let mut inbound = vec![0x81, ready.len() as u8];
        inbound.extend_from_slice(ready);
        let parked = Arc::new(Mutex::new(None::<Waker>));
        let written = Arc::new(Mutex::new(0usize));
        let conn = Choppy {
            inbound,
            writes: 0,
            written: Arc::clone(&written),
            parked: Arc::clone(&parked),
            silent: None,
        };
        // The "buffer drains" within 5 ms of a blocked write.
        let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let waker_thread = {
            let (parked, done) = (Arc::clone(&parked), Arc::clone(&done));
            std::thread::spawn(move || {
                while !done.load(std::sync::atomic::Ordering::Relaxed) {
                    std::thread::sleep(Duration::from_millis(5));
                    if let Some(w) = parked.lock().unwrap().take() {
                        w.wake();
                    }
                }
            })
        };

        let outcome = smol::block_on(async {
            let boxed: Box<dyn Conn> = Box::new(conn);
            let ws = WebSocketStream::from_raw_socket(boxed, Role::Client, Some(ws_config())).await;
            let now = Instant::now();
            let secrets = Secrets::derive("code", false).unwrap();
            let files = vec![SendFile {
                path: "f".into(),
                size: size as u64,
                kind: None,
            }];
            let config = SenderConfig {
                compress: p2p_copy_core::sender::CompressMode::Off,
                ..SenderConfig::default()
            };
            let sender = Sender::new(now, config, &secrets, files, [0; 32]).unwrap();
            let listed = Listed {
                path: path.clone(),
                size: size as u64,
                modified: None,
                pipe: None,
            };
            let worker = IoWorker::start(SendFiles::new(vec![listed])).unwrap();
            let events: EventSink = Arc::new(Mutex::new(|_: SessionEvent| {}));
            let driver = Driver::new(
                TestRt,
                sender,
                WsTransport(ws),
                worker,
                Duration::from_secs(60),
                0,
                events,
            );
            smol::future::or(async { Some(driver.run().await.0) }, async {
                smol::Timer::after(Duration::from_secs(20)).await;
                None
            })
            .await
        });
        done.store(true, std::sync::atomic::Ordering::Relaxed);
        waker_thread.join().unwrap();
        let summary = outcome
            .expect("the sender stalled: a wake-up was lost")
            .expect("the session succeeds");
        assert_eq!(summary.bytes, size as u64);
        assert!(
            *written.lock().unwrap() > size,
            "every byte reached the connection: {} of {size}",
            *written.lock().unwrap()
        );
    }
}
